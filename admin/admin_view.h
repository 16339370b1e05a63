/* Rendering the coordinator's replies for `ferry admin` (proto/fleet.md,
 * "Queries"): human tables by default, JSON with --json.
 *
 * Replies come from the network, so every renderer bounds the bytes with
 * fy_mpshape_check before msgpack-c decodes them, and checks the type of each
 * field it reads; a reply that lacks a field or carries the wrong type fails
 * with FY_EINVAL naming the field ("agents reply: agents[2].id is not bin 32"),
 * and nothing is printed. Unknown fields are ignored (newer coordinators).
 *
 * Human form: aligned columns, node ids shortened to their first 12 hex digits
 * (full ids where one item is shown), times relative to v->now_ms ("3m ago",
 * "in 2h") within a week and ISO 8601 UTC beyond; 0 is "-".
 *
 * JSON form: the reply converted as is (fy_admin_json_from_msgpack): bin 32 as
 * 64 lowercase hex digits (node ids, envelope ids), other bin as unpadded
 * URL-safe base64, maps with string keys as objects; one document per line.
 *
 * Nothing here allocates anything the caller must free, except the json_t
 * that fy_admin_json_from_msgpack returns. */
#ifndef FY_ADMIN_VIEW_H
#define FY_ADMIN_VIEW_H

#include <jansson.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "base/err.h"
#include "coordinator/rollout.h"

#define FY_ADMIN_REPLY_MAX (4u << 20) /* bytes of one query reply we decode */

struct fy_admin_view {
  FILE *out;       /* tables, JSON, "applied: ..." */
  FILE *errout;    /* refusals and notes */
  bool json;       /* --json */
  uint64_t now_ms; /* what relative times are measured from */
};

/* A command in the admin's own queue: signed and queued, not yet
 * acknowledged by the coordinator (or acknowledged, result not yet fetched). */
struct fy_admin_pending {
  uint8_t id[32]; /* the envelope id */
  char cmd[64];
  uint64_t seq;
  uint64_t queued_at; /* ms */
};

/* Converts one msgpack object as described above. NULL with err set (FY_EINVAL)
 * for a map key that is neither a string nor an integer, or FY_ENOMEM. The
 * caller owns the result (json_decref). */
json_t *fy_admin_json_from_msgpack(const msgpack_object *o, struct fy_err *err);

/* Bounds-checks and unpacks reply into a zone-backed object. The object lives
 * as long as *zone, which the caller must msgpack_zone_destroy (also on
 * failure: it is always initialised). Exposed for the command code, which
 * reads single fields of replies (an agent's full id). */
int fy_admin_reply_unpack(const uint8_t *reply, size_t len, const char *what, msgpack_zone *zone,
                          msgpack_object *out, struct fy_err *err);

/* The value of key in map o (a string key), or NULL. */
const msgpack_object *fy_admin_map_get(const msgpack_object *o, const char *key);

/* Writes "3m ago", "in 2h", "just now", an ISO 8601 UTC time, or "-" for 0. */
void fy_admin_format_time(uint64_t now_ms, uint64_t at_ms, char *out, size_t size);

/* `ferry admin status`: the coordinator's `status` reply (reply NULL when it
 * was not reachable: then unreachable says why), followed by the local
 * queue. */
int fy_admin_view_status(const struct fy_admin_view *v, const uint8_t *reply, size_t len,
                         const char *unreachable, const struct fy_admin_pending *pending, size_t npending,
                         struct fy_err *err);

/* The `agents` reply: ID STATUS TENANT HOSTNAME VERSION ONLINE LAST SEEN LABELS. */
int fy_admin_view_agents(const struct fy_admin_view *v, const uint8_t *reply, size_t len, struct fy_err *err);

/* The `agent` reply: the agent's fields, its facts as "key: value" lines and
 * its last few facts reports. */
int fy_admin_view_agent(const struct fy_admin_view *v, const uint8_t *reply, size_t len, struct fy_err *err);

/* The `admins` reply: KEY ROLE TENANTS ROOT. */
int fy_admin_view_admins(const struct fy_admin_view *v, const uint8_t *reply, size_t len, struct fy_err *err);

/* The `tickets` reply: ID TENANT LABELS EXPIRES USES USED STATE BY CREATED. */
int fy_admin_view_tickets(const struct fy_admin_view *v, const uint8_t *reply, size_t len,
                          struct fy_err *err);

/* The `result` record of envelope id: "applied: <cmd> <short id>[: message]"
 * on out and 1, or "refused (<code>): <cmd> <short id>: <message>" on errout
 * and 0 (in JSON the record goes to out either way); < 0 for a malformed
 * record. */
int fy_admin_view_result(const struct fy_admin_view *v, const uint8_t id[32], const uint8_t *reply,
                         size_t len, struct fy_err *err);

/* ---- rollouts (proto/rollout.md; replies of coordinator/coord_rollout.c) ---- */

/* The `rollouts` reply: ID TENANT ARTIFACT STATE WAVE REASON, ARTIFACT as
 * name@version, WAVE as "2/3" (the current wave, 1-based; "-" before start). */
int fy_admin_view_rollouts(const struct fy_admin_view *v, const uint8_t *reply, size_t len,
                           struct fy_err *err);

/* The `rollout` reply: the rollout's fields as "key: value" lines, then per
 * wave "wave 2/3: 4 agents: 3 success, 1 rolled_back" (states in the order
 * of enum fy_target_state) and one line per agent: "  <short id>  <state>
 * <message>". */
int fy_admin_view_rollout(const struct fy_admin_view *v, const uint8_t *reply, size_t len,
                          struct fy_err *err);

/* What `rollout watch` needs of a `rollout` reply. */
struct fy_admin_rollout {
  char id[64], name[128], version[160], state[32], reason[256];
  enum fy_rollout_state st; /* parsed state; final tells whether watching is over */
  bool final;               /* completed, partial, failed or aborted */
  uint32_t wave, nwaves;    /* wave is 0-based; nwaves 0 before start */
  struct fy_wave_counts waves[FY_WAVES_MAX];
};

/* Checks and reads a `rollout` reply (as fy_admin_view_rollout checks it);
 * targets in waves beyond nwaves or FY_WAVES_MAX are ignored, unknown target
 * states count as working. */
int fy_admin_rollout_read(const uint8_t *reply, size_t len, struct fy_admin_rollout *out, struct fy_err *err);

#define FY_ADMIN_BAR_WIDTH 12
/* One wave's progress: "wave 1/3 [#########---] 3/4 ok 1 failed" (wave
 * 0-based; the bar is the share of successes), then, when non-zero, "N
 * skipped", "N in progress" (sent or working), "N waiting". failed counts
 * every failure (failed, rolled back, timed out). */
void fy_admin_progress_line(const struct fy_wave_counts *c, uint32_t wave, uint32_t nwaves, char *out,
                            size_t size);

/* One line for a log (watch without a terminal): "rollout ID: STATE, wave
 * 2/3: 3/4 ok 1 failed[ (reason)]"; "rollout ID: draft, no waves yet". */
void fy_admin_rollout_summary(const struct fy_admin_rollout *r, char *out, size_t size);

#define FY_ADMIN_FRAME_LINE_MAX 512
/* The lines a terminal shows while watching: "rollout ID (name version):
 * STATE", a progress line per wave, and "reason: ..." when there is one.
 * Returns how many were written (at most max). */
size_t fy_admin_rollout_frame(const struct fy_admin_rollout *r, char (*lines)[FY_ADMIN_FRAME_LINE_MAX],
                              size_t max);

/* The local queue alone (`sync` before it reaches the coordinator). */
void fy_admin_view_pending(const struct fy_admin_view *v, const struct fy_admin_pending *pending, size_t n);

#endif
