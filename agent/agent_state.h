/* The agent's own state: what it keeps in its store besides the outbox and
 * the inbox, the bytes it says and hears in `agent.enroll`, and the status
 * file that `ferry agent status` reads.
 *
 * Store (schema "agent", fy_agent_schema):
 *   agent.meta   "enrollment" -> the enrollment record (msgpack map, below)
 *   agent.meta   "desired" -> the accepted desired state waiting for the apply
 *                engine (bytes the caller encodes; agent_run.c keeps an
 *                fy_apply_record there: rollout id, artifact, received_at)
 *   agent.trust  be64 index -> one trust statement (an admin.set / admin.remove
 *                envelope, exactly as the coordinator forwarded it), in the
 *                order the agent applied them, indexes from 1 without gaps
 * The agent's view of the admins (struct fy_trust) is never stored itself: it
 * is rebuilt at start from the record's roots by replaying agent.trust in
 * order, so the store holds only signed bytes and a bug in the view cannot
 * persist. Only statements the view accepted are stored, so replaying them
 * accepts every one again.
 *
 * Enrollment record (msgpack map, string keys, this order):
 *   coord bin32, addrs [str], tenant str, labels map, roots [bin32], at uint
 * It is read back from the agent's own disk, yet decoded as untrusted bytes
 * (a damaged store must not crash the agent).
 *
 * agent.enroll (proto/fleet.md): the request is {secret bin32 (absent: no
 * ticket), facts map}; the reply {status str, tenant str, labels map,
 * roots [bin32], statements [bin]} comes from the network: untrusted.
 *
 * Status file <data_dir>/status: one JSON object (jansson), replaced
 * atomically (written to status.tmp, fsync'ed, renamed, directory fsync'ed),
 * so a reader sees the old state or the new one, never half of one.
 *
 * Everything here is fixed-size and caller-owned except the enroll reply's
 * statement list (fy_agent_enroll_reply_free). Nothing keeps state. */
#ifndef FY_AGENT_AGENT_STATE_H
#define FY_AGENT_AGENT_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "base/buf.h"
#include "base/err.h"
#include "base/log.h"
#include "crypto/nodeid.h"
#include "fleet/labels.h"
#include "fleet/trust.h"
#include "store/store.h"

#define FY_AGENT_ADDRS_MAX 8
#define FY_AGENT_ADDR_MAX 255 /* bytes of one "host:port", without the NUL */
#define FY_AGENT_ROOTS_MAX 16
#define FY_AGENT_SECRET_LEN 32
#define FY_AGENT_RECORD_MAX 65536     /* bytes of an encoded enrollment record */
#define FY_AGENT_REPLY_MAX 1048576    /* bytes of an agent.enroll reply */
#define FY_AGENT_STATEMENTS_MAX 4096  /* statements in one reply */
#define FY_AGENT_STATUS_FILE "status" /* in data_dir */
#define FY_AGENT_STATUS_MAX 65536     /* bytes of the status file */
#define FY_AGENT_ERROR_MAX 255        /* bytes of a status error line */
#define FY_AGENT_APPLY_TEXT_MAX 127   /* bytes of a status apply id or version */

extern const struct fy_store_schema fy_agent_schema;

/* ---- the enrollment record ------------------------------------------------- */

struct fy_agent_enrollment {
  struct fy_nodeid coordinator;
  char addrs[FY_AGENT_ADDRS_MAX][FY_AGENT_ADDR_MAX + 1]; /* where to dial it, as given */
  size_t naddrs;
  char tenant[FY_TENANT_MAX + 1];
  struct fy_labels labels; /* the coordinator's labels for this agent */
  struct fy_nodeid roots[FY_AGENT_ROOTS_MAX];
  size_t nroots;
  uint64_t enrolled_at; /* ms since the Unix epoch */
};

/* Appends the record; on failure out keeps its old length. FY_EINVAL for a
 * field out of range (naming it). */
int fy_agent_enrollment_encode(const struct fy_agent_enrollment *e, struct fy_buf *out, struct fy_err *err);

/* Decodes into *out (entirely overwritten). FY_ELIMIT over
 * FY_AGENT_RECORD_MAX; FY_EINVAL naming the key for anything wrong
 * ("enrollment: tenant: ..."), unknown, missing or duplicate keys included. */
int fy_agent_enrollment_decode(const uint8_t *p, size_t len, struct fy_agent_enrollment *out,
                               struct fy_err *err);

/* ---- the store (inside a transaction) -------------------------------------- */

/* 1 and *out when the agent is enrolled, 0 when not, < 0 on error (message
 * in fy_txn_err(t)). */
int fy_agent_state_get_enrollment(struct fy_txn *t, struct fy_agent_enrollment *out);
int fy_agent_state_put_enrollment(struct fy_txn *t, const struct fy_agent_enrollment *e);

/* The pending desired state (see the top): 1 and *out (valid until t ends)
 * when there is one, 0 when not. put replaces it; del returns 1 when it was
 * there, 0 when not. */
int fy_agent_state_get_desired(struct fy_txn *t, struct fy_bytes *out);
int fy_agent_state_put_desired(struct fy_txn *t, struct fy_bytes v);
int fy_agent_state_del_desired(struct fy_txn *t);

/* Appends a statement after the last one stored. */
int fy_agent_state_add_statement(struct fy_txn *t, const uint8_t *env, size_t len);

/* Calls fn for each stored statement in order (bytes valid during the call);
 * a negative return from fn stops and is returned. Returns the count. */
typedef int (*fy_agent_statement_fn)(uint64_t index, const uint8_t *env, size_t len, void *user);
int fy_agent_state_each_statement(struct fy_txn *t, fy_agent_statement_fn fn, void *user);

/* Forgets every statement (before a new enrollment stores its own). */
int fy_agent_state_clear_statements(struct fy_txn *t);

/* Rebuilds the trust view: roots of e, then every stored statement in order
 * through fy_trust_apply. A stored statement the view refuses means the
 * store was changed behind the agent's back: FY_EINVAL naming its index.
 * *out is initialised here; free it with fy_trust_free (also on failure). */
int fy_agent_state_load_trust(struct fy_txn *t, const struct fy_agent_enrollment *e, struct fy_trust *out);

/* Enrolls in one transaction: replaces the record with e, starts a view
 * from e's roots, applies statements[0..n) in order and stores the accepted
 * ones (each refused one is logged at warn: event trust.refused, with index
 * and reason). *view (initialised here, free with fy_trust_free, also on
 * failure) is the result. Returns how many were accepted. */
int fy_agent_state_enroll(struct fy_txn *t, const struct fy_agent_enrollment *e,
                          const struct fy_bytes *statements, size_t n, struct fy_trust *view,
                          const struct fy_log *log);

/* ---- agent.enroll ----------------------------------------------------------- */

/* Appends the request. secret NULL: no ticket (the agent asks to be
 * approved). facts: the raw bytes of one msgpack map (fy_facts_encode). */
int fy_agent_enroll_request_encode(const uint8_t *secret, const uint8_t *facts, size_t facts_len,
                                   struct fy_buf *out, struct fy_err *err);

enum fy_agent_enroll_status {
  FY_AGENT_ENROLL_PENDING = 1,
  FY_AGENT_ENROLL_ENROLLED = 2,
};

struct fy_agent_enroll_reply {
  enum fy_agent_enroll_status status;
  char tenant[FY_TENANT_MAX + 1];
  struct fy_labels labels;
  struct fy_nodeid roots[FY_AGENT_ROOTS_MAX];
  size_t nroots;
  struct fy_bytes *statements; /* owned array; the bytes point into the decoded input */
  size_t nstatements;
};

/* Decodes an untrusted reply (statements point into p: keep p alive).
 * Unknown keys are skipped (a newer coordinator may say more); missing,
 * duplicate or mistyped known ones are FY_EINVAL naming the key ("enroll
 * reply: roots: element 2 is not 32 bytes of bin"). An enrolled reply needs
 * a valid tenant and at least one root. FY_ELIMIT over FY_AGENT_REPLY_MAX
 * or FY_AGENT_STATEMENTS_MAX. On failure nothing is left to free. */
int fy_agent_enroll_reply_decode(const uint8_t *p, size_t len, struct fy_agent_enroll_reply *out,
                                 struct fy_err *err);
void fy_agent_enroll_reply_free(struct fy_agent_enroll_reply *r);

/* ---- the status file -------------------------------------------------------- */

enum fy_agent_state {
  FY_AGENT_STARTING = 0,
  FY_AGENT_ENROLLING,
  FY_AGENT_PENDING,
  FY_AGENT_ENROLLED,
  FY_AGENT_REVOKED,
};

/* "starting" | "enrolling" | "pending" | "enrolled" | "revoked" */
const char *fy_agent_state_name(enum fy_agent_state s);
int fy_agent_state_parse(const char *text, enum fy_agent_state *out);

struct fy_agent_status {
  enum fy_agent_state state;
  bool has_coordinator;
  struct fy_nodeid coordinator;
  bool link_up;
  uint64_t link_since;                     /* ms; 0: never changed */
  char last_error[FY_AGENT_ERROR_MAX + 1]; /* the last link failure or refusal; "" none */
  char tenant[FY_TENANT_MAX + 1];
  struct fy_labels labels;
  uint64_t queued;        /* messages in the agent's outbox */
  uint64_t facts_sent_at; /* ms; when facts were last queued; 0: never */
  uint64_t updated_at;    /* ms */
  long pid;               /* the agent that wrote it */
  /* The apply engine (agent/apply.h): "" before it ran. A status file
   * without an "apply" object (an older agent's) reads as all "". */
  char apply_state[16];                             /* fy_apply_state_name */
  char apply_rollout[FY_AGENT_APPLY_TEXT_MAX + 1];  /* the last attempt's id */
  char apply_version[FY_AGENT_APPLY_TEXT_MAX + 1];  /* installed (last success) */
  char apply_previous[FY_AGENT_APPLY_TEXT_MAX + 1]; /* the version it replaced */
  char apply_message[FY_AGENT_ERROR_MAX + 1];       /* of the last transition */
};

/* Writes <dir>/status atomically (see the top). FY_EIO naming the path. */
int fy_agent_status_write(const char *dir, const struct fy_agent_status *s, struct fy_err *err);

/* Reads <dir>/status. FY_ENOENT when there is none ("no status in DIR: has
 * the agent run?"), FY_EINVAL naming the field for a damaged one. */
int fy_agent_status_read(const char *dir, struct fy_agent_status *out, struct fy_err *err);

/* Prints s as "key: value" lines, or (json) as one JSON object, to out. */
int fy_agent_status_print(const struct fy_agent_status *s, bool json, FILE *out, struct fy_err *err);

#endif
