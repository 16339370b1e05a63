/* The agent's apply cycle: one update attempt as a persisted state machine
 * (after KubeSolo's update agent) that survives a crash or reboot in any state.
 *
 *   idle --start--> downloading --downloaded + verified--> staged --> activating
 *   activating --applier ok--> verifying --health ok--> success
 *   verifying --health failed / timed out--> rolling_back --> rolled_back
 *   activating --applier failed / timed out--> rolling_back --> rolled_back
 *   rolling_back --rollback failed--> failed
 *   downloading --permanent failure (hash mismatch, 404)--> failed
 *
 * ROLLING_BACK is a state of its own (the diagram's "rolling back"), so a
 * crash during a rollback is seen as one. A nixos artifact has nothing to
 * download (nix-store --realise fetches the closure): it passes through
 * downloading to staged at once.
 *
 * The record. The store keeps ONE record (table "apply.attempt", key
 * "state"): the last attempt (its artifact, state, the version it replaces)
 * and the installed versions. Every transition rewrites it in one store
 * transaction, so after a crash it says either the old state or the new one.
 * Finished attempts (success, rolled_back, failed) are also appended to
 * "apply.history" (big-endian 64-bit n -> record; the last 32 are kept). The
 * action a state stands for is started only AFTER the record naming that
 * state has committed. So on open:
 *
 *   record says    what the engine does
 *   ------------   --------------------------------------------------------
 *   idle, success, nothing: no attempt in progress
 *   rolled_back,
 *   failed
 *   downloading    downloads again (the downloader resumes a partial file)
 *   staged         activates
 *   activating     the applier's outcome is unknown (it may have finished,
 *                  or not started): runs the health check; healthy ->
 *                  success, else rolls back. The applier is NOT run again.
 *                  If it still runs (the agent died, its process group did
 *                  not: agent/childmark.h), the engine first waits for it,
 *                  at most apply_timeout_ms, then kills its group.
 *   verifying      runs the health check again
 *   rolling_back   (after waiting for a rollback still running, as above)
 *                  rolls back again: rollbacks must be idempotent (the nixos
 *                  one skips `nix-env --rollback` when the profile already
 *                  points where it pointed before the activation)
 *
 * The same recovery runs after a failed store write (retry_ms later), since
 * the record then still holds the previous state.
 *
 * Appliers. "script": apply_command runs with FERRY_ACTION=activate (or
 * rollback), FERRY_ARTIFACT (the staged file), FERRY_VERSION,
 * FERRY_PREVIOUS_VERSION and FERRY_PREVIOUS_ARTIFACT added to the agent's
 * environment; exit 0 is success. "nixos": activate runs
 *   nix-store --realise URI; nix-env -p PROFILE --set URI;
 *   URI/bin/switch-to-configuration switch
 * and rollback runs
 *   nix-env -p PROFILE --rollback; PROFILE/bin/switch-to-configuration switch
 * where a failing step fails the whole action. The health check
 * (health_command, FERRY_ACTION=health) passes when any of 1 + health_retries
 * runs, health_interval_ms apart, exits 0.
 *
 * Children run via uv_spawn in their own process group (stdin /dev/null,
 * stdout and stderr into one pipe of which the last 2 KiB are kept for the
 * report). On a timeout the group gets SIGTERM, and SIGKILL 5 s later.
 * Nothing blocks the loop: children and timers are libuv handles, the
 * download's sha256 check runs in the thread pool, and the store writes (one
 * small record per transition) are short enough for the loop thread.
 *
 * Ownership: the engine borrows everything in the config (strings and argv
 * arrays too) until fy_apply_close has called done. Single-threaded: every
 * call from the loop's thread. */
#ifndef FY_AGENT_APPLY_H
#define FY_AGENT_APPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "base/buf.h"
#include "base/err.h"
#include "base/log.h"
#include "store/store.h"

#define FY_APPLY_ID_MAX 64       /* bytes of an attempt id, without the NUL */
#define FY_APPLY_VERSION_MAX 127 /* bytes of a version, without the NUL */
#define FY_APPLY_URI_MAX 2048
#define FY_APPLY_PATH_MAX 1023
#define FY_APPLY_TAIL_MAX 2047 /* bytes of output kept, without the NUL */
#define FY_APPLY_MESSAGE_MAX 511
#define FY_APPLY_HISTORY_MAX 32
#define FY_APPLY_KILL_GRACE_MS 5000

/* Tables "apply.attempt" (the record) and "apply.history". */
extern const struct fy_store_schema fy_apply_schema;

enum fy_apply_state {
  FY_APPLY_IDLE = 0,
  FY_APPLY_DOWNLOADING,
  FY_APPLY_STAGED,
  FY_APPLY_ACTIVATING,
  FY_APPLY_VERIFYING,
  FY_APPLY_SUCCESS,
  FY_APPLY_ROLLING_BACK,
  FY_APPLY_ROLLED_BACK,
  FY_APPLY_FAILED,
};

/* "idle", "downloading", "staged", "activating", "verifying", "success",
 * "rolling_back", "rolled_back", "failed"; "unknown" for anything else. */
const char *fy_apply_state_name(enum fy_apply_state s);
/* 0, or FY_EINVAL for a name that is none of the above. */
int fy_apply_state_parse(const char *name, enum fy_apply_state *out);

/* id: the rollout/attempt id chosen by the caller, [A-Za-z0-9._-] and not
 * starting with '.' (it names the staged file). */
struct fy_apply_artifact {
  char id[FY_APPLY_ID_MAX + 1];
  char kind[16]; /* "script" | "nixos" */
  char version[FY_APPLY_VERSION_MAX + 1];
  char uri[FY_APPLY_URI_MAX + 1]; /* script: for the downloader; nixos: the system's store path */
  uint8_t sha256[32];             /* script: of the downloaded file */
  uint64_t size;                  /* script: bytes of the downloaded file */
};

struct fy_apply_report {
  char attempt_id[FY_APPLY_ID_MAX + 1];
  enum fy_apply_state from, to;
  char version[FY_APPLY_VERSION_MAX + 1];
  char previous_version[FY_APPLY_VERSION_MAX + 1];
  int exit_code;                           /* of the applier / health check / rollback; -1: none, or killed */
  char output_tail[FY_APPLY_TAIL_MAX + 1]; /* last bytes of its stdout + stderr ("" when none) */
  char message[FY_APPLY_MESSAGE_MAX + 1];  /* why, for people */
  uint64_t at;                             /* ms since the Unix epoch */
};

/* What the store holds (see the top). Exposed so tests and tools can read
 * history and write a record as a crash would leave it. */
struct fy_apply_record {
  enum fy_apply_state state; /* of the last attempt; IDLE: none yet */
  struct fy_apply_artifact art;
  char artifact_path[FY_APPLY_PATH_MAX + 1]; /* the staged file (script) or the store path (nixos) */
  /* installed when the attempt started: the rollback target */
  char previous_version[FY_APPLY_VERSION_MAX + 1];
  char previous_artifact[FY_APPLY_PATH_MAX + 1];
  char previous_link[FY_APPLY_PATH_MAX + 1]; /* nixos: the profile's link before activation ("" none) */
  char installed_version[FY_APPLY_VERSION_MAX + 1]; /* of the last success ("" never) */
  char installed_artifact[FY_APPLY_PATH_MAX + 1];
  char installed_previous[FY_APPLY_VERSION_MAX + 1]; /* the version the last success replaced */
  uint64_t started_at, updated_at;                   /* ms since the Unix epoch */
  int exit_code;
  char message[FY_APPLY_MESSAGE_MAX + 1]; /* of the last transition */
};

/* Appends r as one msgpack map; FY_EINVAL for a string that is not
 * NUL-terminated within its field. */
int fy_apply_record_encode(const struct fy_apply_record *r, struct fy_buf *out, struct fy_err *err);
/* Decodes into *out (overwritten). Unknown keys are skipped (a newer agent
 * may add some); a missing "state" or a mistyped or oversized known key is
 * FY_EINVAL naming it ("apply record: version is longer than 127 bytes"). */
int fy_apply_record_decode(const uint8_t *p, size_t len, struct fy_apply_record *out, struct fy_err *err);

/* Inside a transaction on a store opened with fy_apply_schema: 1 and *out
 * when there is a record, 0 when not (*out zeroed: idle), < 0 on error. */
int fy_apply_record_get(struct fy_txn *t, struct fy_apply_record *out);
int fy_apply_record_put(struct fy_txn *t, const struct fy_apply_record *r);
/* Calls fn for each finished attempt, oldest first; a negative return from
 * fn stops and is returned. Returns the count. */
typedef int (*fy_apply_history_fn)(uint64_t n, const struct fy_apply_record *r, void *user);
int fy_apply_history_each(struct fy_txn *t, fy_apply_history_fn fn, void *user);

/* Called by the downloader exactly once per download() call that returned 0,
 * on the loop (even after fy_apply_close: the engine then ignores it). code 0:
 * dest holds the whole file (the engine checks size and sha256 again);
 * < 0: failed, permanent (404, hash mismatch: the attempt fails) or not
 * (retried after retry_ms, doubling up to 5 min). */
typedef void (*fy_apply_download_done)(int code, const char *msg, bool permanent, void *ctx);

struct fy_apply_config {
  uv_loop_t *loop;
  struct fy_store *store; /* opened with fy_apply_schema */
  const struct fy_log *log;
  const char *work_dir; /* artifacts are staged here as <id>.artifact (created 0700 if missing) */
  /* What ran before ferry installed anything (the agent's --version): the
   * previous version of the first attempt. NULL or "": unknown. */
  const char *base_version;
  const char *const *apply_command;  /* script applier: NULL-terminated argv, no shell */
  const char *const *health_command; /* NULL-terminated argv; exit 0 = healthy; NULL: always healthy */
  uint64_t apply_timeout_ms;         /* a whole activate or rollback; 0: 600000 */
  uint64_t health_timeout_ms;        /* one health run; 0: 60000 */
  uint32_t health_retries;           /* runs after the first failing one */
  uint64_t health_interval_ms;       /* between runs */
  uint64_t retry_ms;                 /* first wait after a transient download or store failure; 0: 1000 */
  /* nixos applier: the commands it runs; NULL: "nix-store", "nix-env",
   * "/nix/var/nix/profiles/system" */
  const char *nix_store, *nix_env, *profile;
  /* Every transition, INSIDE the store transaction that records it: a report
   * queued with fy_outbox_enqueue_txn commits together with the state. A
   * negative return aborts the transition (retried like a store failure).
   * May run again for the same transition when the store grows its map. */
  int (*on_transition)(struct fy_txn *t, const struct fy_apply_report *r, void *user);
  void *user;
  /* Fetches a into dest; 0 and a later done(ctx), or < 0 (done is not
   * called; retried like a transient failure). NULL: script artifacts are
   * refused. */
  int (*download)(const struct fy_apply_artifact *a, const char *dest, fy_apply_download_done done, void *ctx,
                  void *user);
};

struct fy_apply;

/* Loads the record and resumes per the table above (on the loop, after this
 * returns). FY_EINVAL for a bad config or a damaged record, naming it. */
int fy_apply_open(struct fy_apply **out, const struct fy_apply_config *cfg, struct fy_err *err);

/* Starts an attempt for art (copied). FY_EEXIST when one is in progress,
 * FY_EINVAL for a bad artifact (naming the field), FY_EUNSUPPORTED for a
 * script artifact without a downloader or apply_command. The work starts on
 * the loop after this returns. */
int fy_apply_start(struct fy_apply *a, const struct fy_apply_artifact *art, struct fy_err *err);

enum fy_apply_state fy_apply_state(const struct fy_apply *a);

/* The version of the last success ("" before the first) and the one it
 * replaced; valid until the next transition. For facts and downgrade checks. */
const char *fy_apply_current_version(const struct fy_apply *a);
const char *fy_apply_previous_version(const struct fy_apply *a);

/* A copy of the record as last committed. */
void fy_apply_record(const struct fy_apply *a, struct fy_apply_record *out);

/* Stops: kills a running child's process group (SIGKILL), waits for it and
 * for a running sha256 check, closes the handles, frees a and calls
 * done(user) (may be NULL) from the loop. Whatever was in progress resumes
 * on the next open. NULL is a no-op. */
void fy_apply_close(struct fy_apply *a, void (*done)(void *user), void *user);

#endif
