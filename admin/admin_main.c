/* `ferry admin`: signs commands and queues them for the coordinator. */
#include "app/applet.h"
#include "base/cleanup.h"

static const struct fy_cfg_key admin_keys[] = {
    {.name = "data_dir",
     .type = FY_CFG_PATH,
     .def = "/var/lib/ferry/admin",
     .help = "directory holding the admin's outbox"},
    {.name = "key_file",
     .type = FY_CFG_PATH,
     .def = "/var/lib/ferry/admin/admin.key",
     .help = "the admin's signing key (ed25519, OpenSSH format)"},
    {.name = "coordinator", .type = FY_CFG_STRING, .help = "the coordinator as NODE_ID@HOST:PORT"},
};

int fy_admin_main(int argc, char **argv, const struct fy_proc *proc) {
  return fy_applet_planned(argc, argv, proc, "admin", admin_keys, FY_ARRAY_LEN(admin_keys),
                           "ferry admin <command> [flags]",
                           "Signs fleet commands (enroll, approve, rollout, abort, ...) and queues\n"
                           "them for the coordinator.",
                           "signed commands need the transport, the outbox and the trust model");
}
