/* The coordinator's rollouts (proto/rollout.md): artifacts, rollouts and
 * their per-agent targets in the store, the commands that change them, the
 * agents' reports, and the tick that starts waves, times out silent agents
 * and applies the policy (coordinator/rollout.h).
 *
 * Like every coordinator change, each step is one store transaction with
 * what it causes: a wave's start writes its targets' state and queues the
 * desired state to each agent's outbox together, so a crash between the two
 * cannot happen; a restarted coordinator resumes from the store at the next
 * tick. Nothing here runs on the loop: commands and reports come through
 * inbox handlers (thread pool), the tick from coord_serve.c on the thread
 * pool with a snapshot of who is online. */
#ifndef FY_COORDINATOR_COORD_ROLLOUT_H
#define FY_COORDINATOR_COORD_ROLLOUT_H

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>

#include "coordinator/coord_state.h"
#include "coordinator/rollout.h"
#include "fleet/trust.h"

#define FY_COORD_TOPIC_DESIRED "desired"
#define FY_COORD_TOPIC_REPORT "apply.report"
#define FY_ROLLOUT_ID_MAX 32
#define FY_COORD_REPORTS_MAX 64 /* reports kept per agent */

extern const struct fy_store_schema fy_coord_rollout_schema;

/* Applies artifact.* and rollout.* commands inside t (called by
 * fy_coord_apply after the signature, sequence and role checks). *r gets the
 * refusal (FY_CMD_OK when applied), why its reason; < 0 only when the store
 * fails. */
int fy_coord_rollout_apply(struct fy_coord *c, struct fy_txn *t, const struct fy_cmd_body *b, uint64_t now,
                           enum fy_cmd_refusal *r, struct fy_err *why);

/* Inbox handler for apply.report (register with fy_coord_rollout_register). */
int fy_coord_rollout_register(struct fy_coord *c, struct fy_inbox *inbox, struct fy_err *err);

/* One pass over the running rollouts (its own write transaction): starts
 * due waves, times out silent agents, applies the policy. online(id) says
 * whether an agent is connected now (a snapshot: any thread). Returns how
 * many rollouts changed, < 0 when the store fails. */
int fy_coord_rollout_tick(struct fy_coord *c, uint64_t now,
                          bool (*online)(const struct fy_nodeid *id, void *user), void *user,
                          struct fy_err *err);

/* The agent's last delivery outside rollouts (update modes assigned and
 * latest) as a map {via, name, version, state, at, msg}, or nil when it had
 * none: one value packed into pk. */
int fy_coord_rollout_pack_update(struct fy_txn *t, const struct fy_nodeid *agent, msgpack_packer *pk);

/* admin.query "rollouts" (list) and "rollout" (one, with its waves and
 * targets): 1 when q was one of them (the reply is packed), 0 when it is
 * not a rollout query, < 0 with *rpc_code and err set on failure. */
int fy_coord_rollout_query(struct fy_txn *t, const struct fy_admin *caller, const char *q, const char *id,
                           msgpack_packer *pk, int *rpc_code);

#endif
