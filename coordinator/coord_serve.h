/* The running coordinator: a node (src/node) that accepts connections, with
 * the coordinator's state (coord_state.h) behind two RPC methods
 * (agent.enroll, admin.query) and two inbox topics (admin.cmd, facts).
 * Runs until SIGINT or SIGTERM, then closes everything in order. */
#ifndef FY_COORDINATOR_COORD_SERVE_H
#define FY_COORDINATOR_COORD_SERVE_H

#include <stdio.h>

#include "base/err.h"
#include "base/log.h"
#include "crypto/key.h"

struct fy_coord_serve_config {
  const char *data_dir;
  const struct fy_key *key; /* borrowed */
  const char *listen;
  uint64_t keepalive_ms, idle_timeout_ms;
  const struct fy_log *log;
  FILE *out; /* the start-up lines (node id, addresses, the admin's peer spec) */
};

/* Serves until a signal; 0 after a clean stop, < 0 (err) when it cannot start. */
int fy_coord_serve(const struct fy_coord_serve_config *cfg, struct fy_err *err);

#endif
