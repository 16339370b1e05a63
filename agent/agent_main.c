/* `ferry agent`: runs on each managed machine. */
#include "app/applet.h"
#include "base/cleanup.h"

static const struct fy_cfg_key agent_keys[] = {
    {.name = "data_dir",
     .type = FY_CFG_PATH,
     .def = "/var/lib/ferry/agent",
     .help = "directory holding the agent's store and apply state"},
    {.name = "key_file",
     .type = FY_CFG_PATH,
     .def = "/var/lib/ferry/agent/node.key",
     .help = "the agent's ed25519 key; /etc/ssh/ssh_host_ed25519_key works too"},
    {.name = "ticket",
     .type = FY_CFG_STRING,
     .help = "enrollment ticket from `ferry admin enroll create`",
     .flags = FY_CFG_SECRET},
    {.name = "ticket_file",
     .type = FY_CFG_PATH,
     .help = "file holding the enrollment ticket (keeps it out of the config)"},
};

int fy_agent_main(int argc, char **argv, const struct fy_proc *proc) {
  return fy_applet_planned(argc, argv, proc, "agent", agent_keys, FY_ARRAY_LEN(agent_keys),
                           "ferry agent [flags]",
                           "Dials out to the coordinator, reports facts, applies updates, checks\n"
                           "health and rolls back.",
                           "dialling the coordinator needs the QUIC transport and the outbox");
}
