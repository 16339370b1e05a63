/* Building, signing and queueing admin commands, and talking to the
 * coordinator (proto/fleet.md): what `ferry admin` does below its command
 * line.
 *
 * A command is a body {issuer, seq, iat, exp, coord, tenant, cmd, args}
 * sealed under FY_CTX_COMMAND and queued in the admin's outbox for the
 * coordinator on topic "admin.cmd" (FY_ADMIN_TOPIC). seq is
 * max(last seq + 1, now in µs): it grows across runs, and the last one is
 * kept in the admin's store, written in the same transaction as the enqueue,
 * so a crash can never hand out a seq twice. The same transaction remembers
 * the command (envelope id -> cmd, seq, queued_at) until its result has been
 * fetched, so `status` and `sync` can list it.
 *
 * The coordinator applies a command before it acknowledges it, so an empty
 * outbox queue means every queued command has a result (the `result` query).
 *
 * A session (struct fy_admin_session) is one run of the CLI: a libuv loop, the
 * node (store, outbox, delivery, connections) with accept off, and the
 * coordinator's peerspec. Its calls run the loop until they are done or the
 * session's timeout passes; none may be made from a loop callback. */
#ifndef FY_ADMIN_CMD_H
#define FY_ADMIN_CMD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "admin/admin_view.h"
#include "base/buf.h"
#include "base/err.h"
#include "base/log.h"
#include "coordinator/rollout.h"
#include "crypto/key.h"
#include "fleet/envelope.h"
#include "fleet/labels.h"
#include "node/peerspec.h"
#include "store/store.h"

#define FY_ADMIN_TOPIC "admin.cmd"
#define FY_ADMIN_QUERY_METHOD "admin.query"

/* The admin's own tables (last seq, commands awaiting their result); pass to
 * the node with the outbox's. */
extern const struct fy_store_schema fy_admin_schema;

/* ---- pure building (no I/O) ---------------------------------------------------- */

/* max(last + 1, now_us): strictly above last, and above every seq an earlier
 * store (deleted and made anew) can have used, while the clock goes forward. */
uint64_t fy_admin_next_seq(uint64_t last, uint64_t now_us);

struct fy_admin_cmd {
  const struct fy_key *key; /* the signer: issuer */
  struct fy_nodeid coordinator;
  uint64_t seq, now_ms, ttl_ms; /* iat = now_ms, exp = now_ms + ttl_ms */
  const char *tenant;           /* "" when not tenant-scoped */
  const char *cmd;
  const uint8_t *args; /* one msgpack map */
  size_t args_len;
};

/* Encodes and seals the body, appending the envelope to out and its id to
 * id. FY_EINVAL names a bad field (from fy_cmd_body_encode). */
int fy_admin_cmd_seal(const struct fy_admin_cmd *c, struct fy_buf *out, uint8_t id[FY_ENVELOPE_ID_LEN],
                      struct fy_err *err);

/* Args of agents.approve ({id, labels}) and agents.revoke ({id}: labels NULL). */
int fy_admin_args_agent(const struct fy_nodeid *id, const struct fy_labels *labels, struct fy_buf *out,
                        struct fy_err *err);
/* Args of enroll.create. */
int fy_admin_args_enroll_create(const uint8_t hash[32], const struct fy_labels *labels, uint64_t expires,
                                uint64_t uses, struct fy_buf *out, struct fy_err *err);
/* Args of enroll.revoke: id is the ticket id (16 hex). */
int fy_admin_args_enroll_revoke(const char *id, struct fy_buf *out, struct fy_err *err);

/* Args of artifact.add: {manifest: bin} (env: a signed manifest envelope). */
int fy_admin_args_artifact_add(const uint8_t *env, size_t len, struct fy_buf *out, struct fy_err *err);

/* A rollout id (proto/rollout.md): 1..32 of [a-z0-9._-]. */
#define FY_ADMIN_ROLLOUT_ID_MAX 32
bool fy_admin_rollout_id_ok(const char *id);

/* The id `rollout create` makes when none is given: "<name>-<version>-<hex>"
 * lowercased, every other byte outside [a-z0-9._-] turned into '-', the
 * name-version part cut so the whole fits FY_ADMIN_ROLLOUT_ID_MAX; hex is
 * rnd as 4 hex digits (random, so two rollouts of one artifact differ). */
void fy_admin_rollout_default_id(const char *name, const char *version, const uint8_t rnd[2],
                                 char out[FY_ADMIN_ROLLOUT_ID_MAX + 1]);

/* "NAME@VERSION" -> name, version (both non-empty; FY_EINVAL otherwise,
 * naming the text). */
int fy_admin_artifact_ref_parse(const char *text, char *name, size_t nsize, char *version, size_t vsize,
                                struct fy_err *err);

/* "100%", "99.5%", "80" (percent, at most one decimal) -> permille 0..1000.
 * FY_EINVAL naming the text otherwise. */
int fy_admin_percent_parse(const char *text, uint32_t *permille, struct fy_err *err);

struct fy_admin_rollout_args {
  const char *id, *name, *version;
  const struct fy_labels *selector;
  const char *waves;   /* fy_wave_spec_parse text, checked here */
  const char *channel; /* "" or NULL: none */
  struct fy_rollout_policy policy;
};
/* Args of rollout.create {id, name, version, selector, channel, waves,
 * policy}. FY_EINVAL for a bad id or waves text (fy_wave_spec_parse's
 * message). */
int fy_admin_args_rollout_create(const struct fy_admin_rollout_args *r, struct fy_buf *out,
                                 struct fy_err *err);
/* Args of rollout.start|pause|resume|abort|retry: {id}. FY_EINVAL for a bad id. */
int fy_admin_args_rollout_id(const char *id, struct fy_buf *out, struct fy_err *err);

/* The sha256 and size of a file, read in chunks (artifacts can be large).
 * FY_ENOENT / FY_EIO naming the path. */
int fy_admin_file_sha256(const char *path, uint8_t sha256[32], uint64_t *size, struct fy_err *err);

/* A query request {q, [key: str value]} (key NULL: none), or with a bin 32
 * value ({q: "result", id: bin32}) through fy_admin_query_bin. */
int fy_admin_query_encode(const char *q, const char *key, const char *value, struct fy_buf *out,
                          struct fy_err *err);
int fy_admin_query_bin(const char *q, const char *key, const uint8_t value[32], struct fy_buf *out,
                       struct fy_err *err);

/* ---- a session ------------------------------------------------------------------ */

struct fy_admin_session;

struct fy_admin_session_config {
  const char *data_dir;
  const struct fy_key *key; /* borrowed; outlives the session */
  const struct fy_peerspec *coordinator;
  uint64_t timeout_ms; /* how long a call tries to reach the coordinator */
  bool wait;           /* deliver: no time limit */
  uint64_t cmd_ttl_ms;
  const struct fy_log *log; /* borrowed, may be NULL */
};

/* Resolves the coordinator's addresses, opens the node (store in data_dir,
 * listening on an ephemeral port of the coordinator's address family, accept
 * off, keepalive 1 s). FY_EEXIST when another `ferry admin` holds data_dir. */
int fy_admin_session_open(struct fy_admin_session **out, const struct fy_admin_session_config *cfg,
                          struct fy_err *err);
/* Closes the node (queued commands stay in the store) and frees s. */
void fy_admin_session_close(struct fy_admin_session *s);

/* Signs cmd and queues it (see the top of this file); id gets the envelope id. */
int fy_admin_session_queue(struct fy_admin_session *s, const char *tenant, const char *cmd,
                           const uint8_t *args, size_t args_len, uint8_t id[FY_ENVELOPE_ID_LEN],
                           struct fy_err *err);

/* Commands queued and not yet resolved, oldest first; *out is malloc'd (free it). */
int fy_admin_session_pending(struct fy_admin_session *s, struct fy_admin_pending **out, size_t *n,
                             struct fy_err *err);
/* Messages in the outbox queue to the coordinator (not yet acknowledged). */
int fy_admin_session_unacked(struct fy_admin_session *s, uint64_t *out, struct fy_err *err);

/* Runs delivery until the outbox queue to the coordinator is empty: 0; or
 * FY_EAGAIN when the timeout passed first (err says what the connection
 * manager last heard). With cfg.wait there is no time limit. */
int fy_admin_session_deliver(struct fy_admin_session *s, struct fy_err *err);

/* One admin.query call: 0 and the reply appended to reply; FY_EAGAIN when the
 * coordinator was not reachable within the timeout (err says why); otherwise
 * the server's status: FY_ENOENT for NOT_FOUND, FY_EPERM for
 * PERMISSION_DENIED, FY_EINVAL for the rest, err holding "<CODE>: <message>".
 * rpc_code (may be NULL) gets the RPC status code (-1: not reached). */
int fy_admin_session_query(struct fy_admin_session *s, const uint8_t *req, size_t len, struct fy_buf *reply,
                           int *rpc_code, struct fy_err *err);

/* Runs the loop for ms milliseconds (connections stay alive between polls). */
void fy_admin_session_sleep(struct fy_admin_session *s, uint64_t ms);

/* Fetches the result record of a command: 1 and reply filled, 0 when it has
 * none yet (NOT_FOUND), < 0 as fy_admin_session_query. */
int fy_admin_session_result(struct fy_admin_session *s, const uint8_t id[FY_ENVELOPE_ID_LEN],
                            struct fy_buf *reply, struct fy_err *err);
/* Forgets a command whose result was shown. */
int fy_admin_session_forget(struct fy_admin_session *s, const uint8_t id[FY_ENVELOPE_ID_LEN],
                            struct fy_err *err);

#endif
