/* The coordinator's memory (proto/fleet.md): admins, the sequence number
 * each issuer last used, command results, trust statements, agents,
 * enrollment tickets and facts, in the coordinator's store.
 *
 * Every change happens inside one store write transaction together with
 * what caused it: a command is checked, applied, its result recorded, its
 * issuer's sequence number consumed, and (for an admin change) the
 * statement forwarded to every enrolled agent's outbox, all in the inbox
 * transaction that also moves the admin's watermark. A crash leaves either
 * all of it or none, and the admin's outbox sends it again.
 *
 * Nothing here touches the loop or the network: inbox handlers run on the
 * thread pool, the RPC glue (coord_serve.c) runs enrollment on the thread
 * pool and queries on the loop (read snapshots never wait). */
#ifndef FY_COORDINATOR_COORD_STATE_H
#define FY_COORDINATOR_COORD_STATE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "base/err.h"
#include "base/log.h"
#include "crypto/nodeid.h"
#include "fleet/envelope.h"
#include "fleet/facts.h"
#include "fleet/labels.h"
#include "outbox/inbox.h"
#include "outbox/outbox.h"
#include "store/store.h"

#define FY_COORD_TOPIC_COMMAND "admin.cmd"
#define FY_COORD_TOPIC_FACTS "facts"
#define FY_COORD_TOPIC_TRUST "trust"
#define FY_COORD_HISTORY_MAX 32
/* facts kept per agent besides the latest */

extern const struct fy_store_schema fy_coord_schema;

enum fy_agent_status {
  FY_AGENT_UNKNOWN = 0,
  FY_AGENT_PENDING = 1,
  FY_AGENT_ENROLLED = 2,
  FY_AGENT_REVOKED = 3,
};
const char *fy_agent_status_name(enum fy_agent_status s);

struct fy_coord {
  struct fy_nodeid id;              /* this coordinator */
  struct fy_store *store;           /* borrowed */
  struct fy_outbox *outbox;         /* borrowed; statements to agents go through it */
  const struct fy_log *log;         /* borrowed, may be NULL */
  uint64_t (*clock_ms)(void *user); /* NULL: CLOCK_REALTIME */
  void *clock_user;
  /* Is the agent connected right now? (queries show it); NULL: never. Loop thread. */
  bool (*online)(const struct fy_nodeid *agent, void *user);
  void *online_user;
  char (*addrs)[64]; /* where agents reach us (status shows them); borrowed */
  size_t naddrs;
  void (*changed)(void *user); /* outbox messages were queued (any thread); NULL: none */
  void *changed_user;
  /* An agent was revoked inside a transaction that is about to commit (any
   * thread; it may also abort or run again): its live connections must go. */
  void (*revoked)(const struct fy_nodeid *agent, void *user);
  void *revoked_user;
  /* Deliveries outside rollouts (coord_rollout.c) look at every agent only
   * when something they depend on changed: an assigned or latest agent's
   * facts, an artifact, a release. Set from any thread; the tick clears it. */
  atomic_bool updates_due;
  uint64_t updates_checked_at; /* the tick's own: the last full look */
};

/* `coordinator init`: records the coordinator's id and its root owners in a
 * new store. FY_EEXIST when the store was initialised before. */
int fy_coord_init_store(struct fy_store *store, const struct fy_nodeid *id, const struct fy_nodeid *owners,
                        size_t nowners, uint64_t now_ms, struct fy_err *err);
/* Checks that the store belongs to c->id (was initialised for this key). */
int fy_coord_check_store(struct fy_coord *c, struct fy_err *err);

/* Registers the inbox handlers for admin.cmd and facts. */
int fy_coord_register(struct fy_coord *c, struct fy_inbox *inbox, struct fy_err *err);

/* Checks and applies one command envelope inside t (an inbox handler's
 * transaction) and records its result. Returns the refusal (FY_CMD_OK when
 * applied); a refusal is not an error of the transaction. < 0 only when the
 * store fails (then t must abort). */
int fy_coord_apply(struct fy_coord *c, struct fy_txn *t, const uint8_t *env, size_t len, uint64_t now_ms,
                   struct fy_err *why);

/* Sets why (may be NULL) to the formatted reason and returns r: how the
 * command handlers refuse. */
enum fy_cmd_refusal fy_coord_refuse(struct fy_err *why, enum fy_cmd_refusal r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* agent.enroll (own write transaction: call it off the loop). On success
 * reply holds the msgpack answer; FY_EPERM with a message for a revoked
 * agent or a bad ticket; FY_EINVAL for a malformed request. */
int fy_coord_enroll(struct fy_coord *c, const struct fy_nodeid *agent, const uint8_t *req, size_t len,
                    struct fy_buf *reply, struct fy_err *err);

/* admin.query (a read snapshot). On success reply holds the msgpack answer;
 * otherwise *rpc_code is the RPC status to answer with and err the message. */
int fy_coord_query(struct fy_coord *c, const struct fy_nodeid *caller, const uint8_t *req, size_t len,
                   struct fy_buf *reply, int *rpc_code, struct fy_err *err);

/* The agent's status (a read snapshot); FY_AGENT_UNKNOWN when never seen. */
enum fy_agent_status fy_coord_agent_status(struct fy_coord *c, const struct fy_nodeid *agent);

/* What other coordinator modules (rollouts) read of an agent. */
struct fy_coord_agent {
  enum fy_agent_status status;
  char tenant[FY_TENANT_MAX + 1];
  struct fy_labels labels;
  char version[FY_FACTS_VERSION_MAX + 1]; /* from its latest facts */
  struct fy_update_prefs update;          /* from its latest facts */
};
/* Calls fn for every agent inside t, in node id order; stops at fn's first
 * non-zero return and returns it. */
int fy_coord_each_agent(struct fy_txn *t,
                        int (*fn)(const struct fy_nodeid *id, const struct fy_coord_agent *a, void *user),
                        void *user);

/* One agent's record inside t: 1 and *out, 0 when unknown. */
int fy_coord_get_agent(struct fy_txn *t, const struct fy_nodeid *id, struct fy_coord_agent *out);

/* Counts for the start-up line and status. */
struct fy_coord_counts {
  uint64_t admins, enrolled, pending, revoked, tickets;
};
int fy_coord_counts(struct fy_coord *c, struct fy_coord_counts *out, struct fy_err *err);

#endif
