/* `ferry relay`: forwards QUIC packets between nodes that cannot reach each other. */
#include "app/applet.h"
#include "base/cleanup.h"

static const struct fy_cfg_key relay_keys[] = {
    {.name = "key_file",
     .type = FY_CFG_PATH,
     .def = "/var/lib/ferry/relay/node.key",
     .help = "the relay's ed25519 key (OpenSSH format)"},
    {.name = "listen", .type = FY_CFG_STRING, .def = "[::]:4434", .help = "UDP address to relay on"},
};

int fy_relay_main(int argc, char **argv, const struct fy_proc *proc) {
  return fy_applet_planned(argc, argv, proc, "relay", relay_keys, FY_ARRAY_LEN(relay_keys),
                           "ferry relay [flags]",
                           "Forwards end-to-end encrypted QUIC packets between nodes behind NAT.",
                           "relaying needs the QUIC transport");
}
