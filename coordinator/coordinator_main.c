/* `ferry coordinator`: the fleet's memory. Its configuration is real; serving
 * arrives with the transport, store and trust work (issues 3-5). */
#include "app/applet.h"
#include "base/cleanup.h"

static const struct fy_cfg_key coordinator_keys[] = {
    {.name = "data_dir",
     .type = FY_CFG_PATH,
     .def = "/var/lib/ferry/coordinator",
     .help = "directory holding the coordinator's store"},
    {.name = "key_file",
     .type = FY_CFG_PATH,
     .def = "/var/lib/ferry/coordinator/node.key",
     .help = "the coordinator's ed25519 key (OpenSSH format)"},
    {.name = "listen", .type = FY_CFG_STRING, .def = "[::]:4433", .help = "UDP address for QUIC"},
};

int fy_coordinator_main(int argc, char **argv, const struct fy_proc *proc) {
  return fy_applet_planned(argc, argv, proc, "coordinator", coordinator_keys, FY_ARRAY_LEN(coordinator_keys),
                           "ferry coordinator [flags]",
                           "Serves the fleet: enrollment, facts, artifacts and staged rollouts.",
                           "serving the fleet needs the QUIC transport and the store");
}
