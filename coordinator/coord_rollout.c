#include "coordinator/coord_rollout.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/cleanup.h"
#include "base/mpmap.h"
#include "fleet/manifest.h"
#include "rpc/frame.h"

/* Tables:
 *   r.artifacts  tenant 0 name 0 version      -> manifest envelope
 *   r.rollouts   id                           -> rollout record
 *   r.targets    id 0 agent(32)               -> {wave, state, at, sent, msg}
 *   r.reports    agent(32) be64 at be32 n     -> a report as the agent sent it
 *   r.updates    agent(32)                    -> {via, name, version, state, at, msg}: the last
 *                                                delivery outside rollouts (assigned, latest) */
enum { T_ARTIFACTS, T_ROLLOUTS, T_TARGETS, T_REPORTS, T_UPDATES, T_N };
static const struct fy_store_table_def tables[T_N] = {
    [T_ARTIFACTS] = {"r.artifacts", 0}, [T_ROLLOUTS] = {"r.rollouts", 0}, [T_TARGETS] = {"r.targets", 0},
    [T_REPORTS] = {"r.reports", 0},     [T_UPDATES] = {"r.updates", 0},
};
const struct fy_store_schema fy_coord_rollout_schema = {"rollouts", tables, T_N, NULL, 0};

#define RECORD_ELEMENTS_MAX 4096
/* Deliveries outside rollouts are looked for when something they depend on
 * changed (fy_coord.updates_due) and, in case a change was missed, at least
 * this often. */
#define UPDATES_RECHECK_MS 30000
#define KEY_MAX 256

static struct fy_table *tb(struct fy_txn *t, int which) {
  return fy_txn_table(t, &tables[which]);
}

struct rollout_rec {
  char id[FY_ROLLOUT_ID_MAX + 1];
  char tenant[FY_TENANT_MAX + 1];
  char name[FY_MANIFEST_NAME_MAX + 1];
  char version[FY_SEMVER_TEXT_MAX + 1];
  struct fy_labels selector;
  char channel[FY_CHANNEL_MAX + 1]; /* "" none */
  char waves[128];
  struct fy_rollout_policy policy;
  enum fy_rollout_state state;
  uint32_t wave, nwaves;
  uint64_t wave_started_at, created_at;
  struct fy_nodeid by;
  char reason[256];
};

/* The wave of agents skipped when the rollout started (pinned, assigned,
 * incompatible): none. Queries show it as nil. */
#define WAVE_NONE UINT32_MAX

struct target_rec {
  uint32_t wave;
  enum fy_target_state state;
  uint64_t at, sent;
  char msg[256];
};

/* ---- keys and records ------------------------------------------------------------ */

static size_t artifact_key(uint8_t *out, const char *tenant, const char *name, const char *version) {
  int n = snprintf((char *)out, KEY_MAX, "%s%c%s%c%s", tenant, 0, name, 0, version);
  return n < 0 ? 0 : (size_t)n;
}

static size_t target_key(uint8_t *out, const char *id, const struct fy_nodeid *agent) {
  size_t n = strlen(id);
  memcpy(out, id, n);
  out[n] = 0;
  memcpy(out + n + 1, agent->key, FY_NODEID_LEN);
  return n + 1 + FY_NODEID_LEN;
}

static int corrupt(struct fy_txn *t, const char *table) {
  return fy_err_set(fy_txn_err(t), FY_EIO, "store: a damaged record in %s", table);
}

static void pack_policy(msgpack_packer *pk, const struct fy_rollout_policy *p) {
  msgpack_pack_map(pk, 6);
  fy_mp_pack_kv_u64(pk, "grace_ms", p->grace_ms);
  fy_mp_pack_kv_u64(pk, "min_success_permille", p->min_success_permille);
  fy_mp_pack_kv_u64(pk, "max_failures", p->max_failures);
  fy_mp_pack_kv_bool(pk, "skip_offline", p->skip_offline);
  fy_mp_pack_kv_bool(pk, "abort_on_zero", p->abort_on_zero_eligible);
  fy_mp_pack_kv_u64(pk, "action_timeout_ms", p->action_timeout_ms);
}

/* Absent keys keep p's values (the defaults). */
static int unpack_policy(const msgpack_object *o, struct fy_rollout_policy *p, struct fy_err *err) {
  if (o->type != MSGPACK_OBJECT_MAP)
    return fy_err_set(err, FY_EINVAL, "policy is not a map");
  uint64_t v;
  bool b;
  if (fy_mp_u64(o, "grace_ms", &v))
    p->grace_ms = v;
  if (fy_mp_u64(o, "min_success_permille", &v)) {
    if (v > FY_PERMILLE)
      return fy_err_set(err, FY_EINVAL, "policy: min_success_permille %" PRIu64 " is above 1000", v);
    p->min_success_permille = (uint32_t)v;
  }
  if (fy_mp_u64(o, "max_failures", &v))
    p->max_failures = v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
  if (fy_mp_bool(o, "skip_offline", &b))
    p->skip_offline = b;
  if (fy_mp_bool(o, "abort_on_zero", &b))
    p->abort_on_zero_eligible = b;
  if (fy_mp_u64(o, "action_timeout_ms", &v))
    p->action_timeout_ms = v;
  return 0;
}

static int put_rollout(struct fy_txn *t, const struct rollout_rec *r) {
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  msgpack_packer pk;
  msgpack_packer_init(&pk, &b, fy_mp_buf_write);
  msgpack_pack_map(&pk, 14);
  fy_mp_pack_kv_str(&pk, "tenant", r->tenant);
  fy_mp_pack_kv_str(&pk, "name", r->name);
  fy_mp_pack_kv_str(&pk, "version", r->version);
  fy_mp_pack_str(&pk, "selector");
  fy_labels_pack(&r->selector, &pk);
  fy_mp_pack_kv_str(&pk, "channel", r->channel);
  fy_mp_pack_kv_str(&pk, "waves", r->waves);
  fy_mp_pack_str(&pk, "policy");
  pack_policy(&pk, &r->policy);
  fy_mp_pack_kv_str(&pk, "state", fy_rollout_state_name(r->state));
  fy_mp_pack_kv_u64(&pk, "wave", r->wave);
  fy_mp_pack_kv_u64(&pk, "nwaves", r->nwaves);
  fy_mp_pack_kv_u64(&pk, "wave_started", r->wave_started_at);
  fy_mp_pack_kv_u64(&pk, "created", r->created_at);
  fy_mp_pack_kv_bin(&pk, "by", r->by.key, FY_NODEID_LEN);
  fy_mp_pack_kv_str(&pk, "reason", r->reason);
  return fy_store_put(t, tb(t, T_ROLLOUTS), fy_bytes_str(r->id), fy_bytes_of(b.data, b.len));
}

static int decode_rollout(struct fy_txn *t, const char *id, struct fy_bytes v, struct rollout_rec *r) {
  memset(r, 0, sizeof(*r));
  snprintf(r->id, sizeof(r->id), "%s", id);
  struct fy_mpmap m;
  if (fy_mpmap_decode(&m, v.p, v.n, 8, RECORD_ELEMENTS_MAX, "rollout record", NULL) < 0)
    return corrupt(t, "r.rollouts");
  char state[32];
  uint64_t wave = 0, nwaves = 0;
  fy_rollout_policy_default(&r->policy);
  const msgpack_object *sel = fy_mp_get(m.map, "selector"), *pol = fy_mp_get(m.map, "policy");
  int rc = 0;
  if (!fy_mp_str(m.map, "tenant", r->tenant, sizeof(r->tenant)) ||
      !fy_mp_str(m.map, "name", r->name, sizeof(r->name)) ||
      !fy_mp_str(m.map, "version", r->version, sizeof(r->version)) ||
      !fy_mp_str(m.map, "state", state, sizeof(state)) || fy_rollout_state_parse(state, &r->state) < 0 ||
      !sel || fy_labels_unpack(sel, &r->selector, NULL) < 0 || !pol ||
      unpack_policy(pol, &r->policy, NULL) < 0)
    rc = corrupt(t, "r.rollouts");
  fy_mp_str(m.map, "waves", r->waves, sizeof(r->waves));
  fy_mp_str(m.map, "channel", r->channel, sizeof(r->channel));
  fy_mp_u64(m.map, "wave", &wave);
  fy_mp_u64(m.map, "nwaves", &nwaves);
  fy_mp_u64(m.map, "wave_started", &r->wave_started_at);
  fy_mp_u64(m.map, "created", &r->created_at);
  fy_mp_bin(m.map, "by", r->by.key, FY_NODEID_LEN);
  fy_mp_str(m.map, "reason", r->reason, sizeof(r->reason));
  r->wave = (uint32_t)wave;
  r->nwaves = (uint32_t)nwaves;
  fy_mpmap_free(&m);
  return rc;
}

static int get_rollout(struct fy_txn *t, const char *id, struct rollout_rec *r) {
  struct fy_bytes v;
  int rc = fy_store_get(t, tb(t, T_ROLLOUTS), fy_bytes_str(id), &v);
  if (rc != 1)
    return rc;
  return decode_rollout(t, id, v, r) < 0 ? FY_EIO : 1;
}

static int put_target(struct fy_txn *t, const char *id, const struct fy_nodeid *agent,
                      const struct target_rec *r) {
  uint8_t key[FY_ROLLOUT_ID_MAX + 1 + FY_NODEID_LEN];
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  msgpack_packer pk;
  msgpack_packer_init(&pk, &b, fy_mp_buf_write);
  msgpack_pack_map(&pk, 5);
  fy_mp_pack_kv_u64(&pk, "wave", r->wave);
  fy_mp_pack_kv_str(&pk, "state", fy_target_state_name(r->state));
  fy_mp_pack_kv_u64(&pk, "at", r->at);
  fy_mp_pack_kv_u64(&pk, "sent", r->sent);
  fy_mp_pack_kv_str(&pk, "msg", r->msg);
  return fy_store_put(t, tb(t, T_TARGETS), fy_bytes_of(key, target_key(key, id, agent)),
                      fy_bytes_of(b.data, b.len));
}

static enum fy_target_state target_state_parse(const char *s) {
  for (int i = FY_TARGET_WAITING; i <= FY_TARGET_SKIPPED; i++)
    if (strcmp(fy_target_state_name((enum fy_target_state)i), s) == 0)
      return (enum fy_target_state)i;
  return FY_TARGET_FAILED;
}

static int decode_target(struct fy_txn *t, struct fy_bytes v, struct target_rec *r) {
  memset(r, 0, sizeof(*r));
  struct fy_mpmap m;
  if (fy_mpmap_decode(&m, v.p, v.n, 4, 64, "target record", NULL) < 0)
    return corrupt(t, "r.targets");
  uint64_t wave;
  char state[32];
  fy_mp_u64(m.map, "wave", &wave);
  fy_mp_str(m.map, "state", state, sizeof(state));
  fy_mp_u64(m.map, "at", &r->at);
  fy_mp_u64(m.map, "sent", &r->sent);
  fy_mp_str(m.map, "msg", r->msg, sizeof(r->msg));
  r->wave = (uint32_t)wave;
  r->state = target_state_parse(state);
  fy_mpmap_free(&m);
  return 0;
}

/* Calls fn for every target of rollout id. */
typedef int (*target_fn)(struct fy_txn *t, const struct fy_nodeid *agent, struct target_rec *r, void *user);

static int each_target(struct fy_txn *t, const char *id, target_fn fn, void *user) {
  uint8_t prefix[FY_ROLLOUT_ID_MAX + 1];
  size_t n = strlen(id);
  memcpy(prefix, id, n);
  prefix[n] = 0;
  struct fy_cursor *cur;
  int rc = fy_cursor_open(t, tb(t, T_TARGETS), fy_bytes_of(prefix, n + 1), &cur);
  if (rc < 0)
    return rc;
  struct fy_bytes k, v;
  /* Collect first: fn may write targets, which would disturb the cursor. */
  struct item {
    struct fy_nodeid agent;
    struct target_rec r;
  };
  struct item *items = NULL;
  size_t nitems = 0, cap = 0;
  while ((rc = fy_cursor_next(cur, &k, &v)) == 1) {
    if (k.n != n + 1 + FY_NODEID_LEN)
      continue;
    if (nitems == cap) {
      cap = cap ? cap * 2 : 64;
      struct item *ni = realloc(items, cap * sizeof(*items));
      if (!ni) {
        rc = fy_err_set(fy_txn_err(t), FY_ENOMEM, "rollout %s: out of memory", id);
        break;
      }
      items = ni;
    }
    memcpy(items[nitems].agent.key, k.p + n + 1, FY_NODEID_LEN);
    if ((rc = decode_target(t, v, &items[nitems].r)) < 0)
      break;
    nitems++;
  }
  fy_cursor_close(cur);
  for (size_t i = 0; rc >= 0 && i < nitems; i++)
    rc = fn(t, &items[i].agent, &items[i].r, user);
  free(items);
  return rc < 0 ? rc : 0;
}

/* ---- commands -------------------------------------------------------------------- */

static bool id_ok(const char *id) {
  size_t n = strlen(id);
  if (n == 0 || n > FY_ROLLOUT_ID_MAX)
    return false;
  for (size_t i = 0; i < n; i++)
    if (!((id[i] >= 'a' && id[i] <= 'z') || (id[i] >= '0' && id[i] <= '9') || strchr("._-", id[i])))
      return false;
  return true;
}

static int artifact_add(struct fy_txn *t, const struct fy_cmd_body *b, const msgpack_object *args,
                        enum fy_cmd_refusal *r, struct fy_err *why) {
  const msgpack_object *env = fy_mp_get(args, "manifest");
  if (!env || env->type != MSGPACK_OBJECT_BIN) {
    *r = fy_coord_refuse(why, FY_CMD_INVALID_ARGS, "args: manifest (bin) is missing");
    return 0;
  }
  struct fy_envelope e;
  struct fy_manifest m;
  const uint8_t *p = (const uint8_t *)env->via.bin.ptr;
  if (fy_envelope_open(p, env->via.bin.size, FY_CTX_MANIFEST, &e, why) < 0 ||
      fy_manifest_decode(e.body, e.body_len, &m, why) < 0) {
    *r = FY_CMD_INVALID_ARGS;
    return 0;
  }
  if (!fy_nodeid_equal(&e.signer, &b->issuer) || !fy_nodeid_equal(&m.issuer, &b->issuer)) {
    *r = fy_coord_refuse(why, FY_CMD_SIGNER_MISMATCH, "the manifest is not signed by the command's issuer");
    return 0;
  }
  if (strcmp(m.tenant, b->tenant) != 0) {
    *r = fy_coord_refuse(why, FY_CMD_FORBIDDEN_TENANT,
                         "the manifest is for tenant '%s', the command names '%s'", m.tenant, b->tenant);
    return 0;
  }
  uint8_t key[KEY_MAX];
  size_t kn = artifact_key(key, m.tenant, m.name, m.version_text);
  struct fy_bytes old;
  int rc = fy_store_get(t, tb(t, T_ARTIFACTS), fy_bytes_of(key, kn), &old);
  if (rc < 0)
    return rc;
  if (rc == 1) {
    *r = fy_coord_refuse(why, FY_CMD_CONFLICT, "artifact %s %s exists already in tenant %s", m.name,
                         m.version_text, m.tenant);
    return 0;
  }
  return fy_store_put(t, tb(t, T_ARTIFACTS), fy_bytes_of(key, kn), fy_bytes_of(p, env->via.bin.size));
}

/* Calls fn for every rollout (decoded) until it returns non-zero. */
static int each_rollout(struct fy_txn *t, int (*fn)(const struct rollout_rec *ro, void *user), void *user) {
  struct fy_cursor *cur;
  int rc = fy_cursor_open(t, tb(t, T_ROLLOUTS), fy_bytes_of(NULL, 0), &cur);
  if (rc < 0)
    return rc;
  struct fy_bytes k, v;
  while ((rc = fy_cursor_next(cur, &k, &v)) == 1) {
    char id[FY_ROLLOUT_ID_MAX + 1];
    struct rollout_rec ro;
    if (k.n > FY_ROLLOUT_ID_MAX)
      continue;
    memcpy(id, k.p, k.n);
    id[k.n] = '\0';
    if ((rc = decode_rollout(t, id, v, &ro)) < 0 || (rc = fn(&ro, user)) != 0)
      break;
  }
  fy_cursor_close(cur);
  return rc;
}

struct channel_find {
  const char *tenant, *channel;
  char *name;
};

static int find_channel_artifact(const struct rollout_rec *ro, void *user) {
  struct channel_find *f = user;
  if (strcmp(ro->tenant, f->tenant) != 0 || strcmp(ro->channel, f->channel) != 0)
    return 0;
  snprintf(f->name, FY_MANIFEST_NAME_MAX + 1, "%s", ro->name);
  return 1;
}

/* A channel is one release train: the artifact its rollouts carry. 1 and
 * name, 0 when no rollout uses the channel yet. */
static int channel_artifact(struct fy_txn *t, const char *tenant, const char *channel,
                            char name[FY_MANIFEST_NAME_MAX + 1]) {
  struct channel_find f = {tenant, channel, name};
  return each_rollout(t, find_channel_artifact, &f);
}

static int rollout_create(struct fy_txn *t, const struct fy_cmd_body *b, const msgpack_object *args,
                          uint64_t now, enum fy_cmd_refusal *r, struct fy_err *why) {
  struct rollout_rec ro = {.state = FY_ROLLOUT_DRAFT, .created_at = now, .by = b->issuer};
  fy_rollout_policy_default(&ro.policy);
  snprintf(ro.tenant, sizeof(ro.tenant), "%s", b->tenant);
  const msgpack_object *sel = fy_mp_get(args, "selector"), *pol = fy_mp_get(args, "policy");
  struct fy_wave_spec spec;
  if (!fy_mp_str(args, "id", ro.id, sizeof(ro.id)) || !id_ok(ro.id)) {
    *r =
        fy_coord_refuse(why, FY_CMD_INVALID_ARGS, "args: id must be 1..%d of [a-z0-9._-]", FY_ROLLOUT_ID_MAX);
    return 0;
  }
  if (!fy_mp_str(args, "name", ro.name, sizeof(ro.name)) ||
      !fy_mp_str(args, "version", ro.version, sizeof(ro.version))) {
    *r = fy_coord_refuse(why, FY_CMD_INVALID_ARGS, "args: name and version of an artifact are required");
    return 0;
  }
  if (!fy_mp_str(args, "waves", ro.waves, sizeof(ro.waves)))
    snprintf(ro.waves, sizeof(ro.waves), "1");
  if (fy_mp_get(args, "channel") && (!fy_mp_str(args, "channel", ro.channel, sizeof(ro.channel)) ||
                                     (ro.channel[0] && !fy_channel_ok(ro.channel)))) {
    *r = fy_coord_refuse(why, FY_CMD_INVALID_ARGS, "args: channel must be empty or 1..%d of [a-z0-9._-]",
                         FY_CHANNEL_MAX);
    return 0;
  }
  if (fy_wave_spec_parse(ro.waves, &spec, why) < 0 || (sel && fy_labels_unpack(sel, &ro.selector, why) < 0) ||
      (pol && unpack_policy(pol, &ro.policy, why) < 0)) {
    *r = FY_CMD_INVALID_ARGS;
    return 0;
  }
  struct rollout_rec old;
  int rc = get_rollout(t, ro.id, &old);
  if (rc < 0)
    return rc;
  if (rc == 1) {
    *r = fy_coord_refuse(why, FY_CMD_CONFLICT, "rollout %s exists already", ro.id);
    return 0;
  }
  uint8_t key[KEY_MAX];
  struct fy_bytes v;
  if ((rc = fy_store_get(t, tb(t, T_ARTIFACTS),
                         fy_bytes_of(key, artifact_key(key, ro.tenant, ro.name, ro.version)), &v)) < 0)
    return rc;
  if (rc == 0) {
    *r = fy_coord_refuse(why, FY_CMD_NOT_FOUND, "no artifact %s %s in tenant %s (ferry admin artifact add)",
                         ro.name, ro.version, ro.tenant);
    return 0;
  }
  char other[FY_MANIFEST_NAME_MAX + 1];
  if (ro.channel[0] && (rc = channel_artifact(t, ro.tenant, ro.channel, other)) != 0) {
    if (rc < 0)
      return rc;
    if (strcmp(other, ro.name) != 0) {
      *r = fy_coord_refuse(why, FY_CMD_CONFLICT, "channel %s of tenant %s carries artifact %s, not %s",
                           ro.channel, ro.tenant, other, ro.name);
      return 0;
    }
  }
  return put_rollout(t, &ro);
}

/* Chooses the rollout's agents (enrolled, its tenant, matching the
 * selector and the channel), in node id order, and writes them as waiting
 * targets; those whose update mode or hardware rule them out are written
 * as skipped, in no wave, with the reason. */
struct selection {
  const struct rollout_rec *ro;
  const struct fy_manifest *m;
  struct fy_txn *t;
  struct fy_nodeid *ids;
  size_t n, cap;
  uint64_t now;
};

static int select_agent(const struct fy_nodeid *id, const struct fy_coord_agent *a, void *user) {
  struct selection *s = user;
  if (a->status != FY_AGENT_ENROLLED || strcmp(a->tenant, s->ro->tenant) != 0 ||
      !fy_labels_match(&a->labels, &s->ro->selector) || !fy_update_in_channel(&a->update, s->ro->channel))
    return 0;
  struct target_rec skip = {.wave = WAVE_NONE, .state = FY_TARGET_SKIPPED, .at = s->now};
  if (fy_update_rollout_skips(&a->update, s->m, skip.msg, sizeof(skip.msg)))
    return put_target(s->t, s->ro->id, id, &skip);
  if (s->n == s->cap) {
    s->cap = s->cap ? s->cap * 2 : 64;
    struct fy_nodeid *ni = realloc(s->ids, s->cap * sizeof(*ni));
    if (!ni)
      return fy_err_set(fy_txn_err(s->t), FY_ENOMEM, "rollout %s: out of memory", s->ro->id);
    s->ids = ni;
  }
  s->ids[s->n++] = *id;
  return 0;
}

/* An artifact's manifest envelope (appended to env) and its body decoded.
 * The store holds what its admin signed; a rollout's artifact must exist. */
static int artifact_manifest(struct fy_txn *t, const char *tenant, const char *name, const char *version,
                             struct fy_buf *env, struct fy_manifest *m) {
  uint8_t key[KEY_MAX];
  struct fy_bytes v;
  int rc =
      fy_store_get(t, tb(t, T_ARTIFACTS), fy_bytes_of(key, artifact_key(key, tenant, name, version)), &v);
  if (rc <= 0)
    return rc < 0 ? rc : corrupt(t, "r.artifacts");
  /* Copied: writes to the store may move the map's pages. */
  if ((rc = fy_buf_append(env, v.p, v.n, fy_txn_err(t))) < 0)
    return rc;
  struct fy_envelope e;
  if (fy_envelope_open(env->data, env->len, FY_CTX_MANIFEST, &e, NULL) < 0 ||
      fy_manifest_decode(e.body, e.body_len, m, NULL) < 0)
    return corrupt(t, "r.artifacts");
  return 0;
}

static int plan_waves(struct fy_txn *t, struct rollout_rec *ro, uint64_t now) {
  FY_AUTOBUF struct fy_buf env = FY_BUF_INIT;
  struct fy_manifest m;
  int rc = artifact_manifest(t, ro->tenant, ro->name, ro->version, &env, &m);
  if (rc < 0)
    return rc;
  struct selection s = {.ro = ro, .m = &m, .t = t, .now = now};
  if ((rc = fy_coord_each_agent(t, select_agent, &s)) < 0) {
    free(s.ids);
    return rc;
  }
  struct fy_wave_spec spec;
  fy_wave_spec_parse(ro->waves, &spec, NULL);
  size_t sizes[FY_WAVES_MAX];
  size_t nwaves = fy_waves_split(s.n, &spec, sizes, FY_WAVES_MAX), at = 0;
  for (size_t w = 0; rc >= 0 && w < nwaves; w++)
    for (size_t i = 0; rc >= 0 && i < sizes[w]; i++, at++) {
      struct target_rec tr = {.wave = (uint32_t)w, .state = FY_TARGET_WAITING, .at = now};
      rc = put_target(t, ro->id, &s.ids[at], &tr);
    }
  free(s.ids);
  ro->nwaves = (uint32_t)nwaves;
  ro->wave = 0;
  ro->wave_started_at = 0;
  return rc;
}

/* retry: the failed targets wait again; the rollout goes back to the
 * first wave that has one (succeeded targets keep their outcome). */
struct retry {
  const char *id;
  uint32_t first_wave;
  size_t n;
};

static int retry_target(struct fy_txn *t, const struct fy_nodeid *agent, struct target_rec *r, void *user) {
  struct retry *rt = user;
  if (!fy_target_is_failure(r->state))
    return 0;
  rt->n++;
  if (r->wave < rt->first_wave)
    rt->first_wave = r->wave;
  r->state = FY_TARGET_WAITING;
  r->msg[0] = '\0';
  return put_target(t, rt->id, agent, r);
}

static int rollout_move(struct fy_txn *t, const struct fy_cmd_body *b, const msgpack_object *args,
                        uint64_t now, enum fy_cmd_refusal *r, struct fy_err *why) {
  char id[FY_ROLLOUT_ID_MAX + 1];
  const char *cmd = b->cmd + strlen("rollout.");
  if (strncmp(b->cmd, "rollout.", 8) != 0 || !fy_mp_str(args, "id", id, sizeof(id))) {
    *r = fy_coord_refuse(why, FY_CMD_INVALID_ARGS, "args: id (the rollout's) is missing");
    return 0;
  }
  struct rollout_rec ro = {0};
  int rc = get_rollout(t, id, &ro);
  if (rc < 0)
    return rc;
  if (rc == 0 || strcmp(ro.tenant, b->tenant) != 0) {
    *r = fy_coord_refuse(why, FY_CMD_NOT_FOUND, "no rollout %s in tenant %s", id, b->tenant);
    return 0;
  }
  enum fy_rollout_state to;
  if (fy_rollout_command(ro.state, cmd, &to, why) < 0) {
    *r = FY_CMD_CONFLICT;
    return 0;
  }
  if (strcmp(cmd, "start") == 0 && (rc = plan_waves(t, &ro, now)) < 0)
    return rc;
  if (strcmp(cmd, "retry") == 0) {
    struct retry rt = {.id = id, .first_wave = UINT32_MAX};
    if ((rc = each_target(t, id, retry_target, &rt)) < 0)
      return rc;
    if (rt.n == 0) {
      *r = fy_coord_refuse(why, FY_CMD_CONFLICT, "rollout %s has no failed agent to retry", id);
      return 0;
    }
    ro.wave = rt.first_wave;
    ro.wave_started_at = 0;
  }
  ro.state = to;
  snprintf(ro.reason, sizeof(ro.reason), "%s", cmd);
  return put_rollout(t, &ro);
}

int fy_coord_rollout_apply(struct fy_coord *c, struct fy_txn *t, const struct fy_cmd_body *b, uint64_t now,
                           enum fy_cmd_refusal *r, struct fy_err *why) {
  *r = FY_CMD_OK;
  struct fy_mpmap m;
  if (fy_mpmap_decode(&m, b->args, b->args_len, 8, RECORD_ELEMENTS_MAX, "args", why) < 0) {
    *r = FY_CMD_INVALID_ARGS;
    return 0;
  }
  int rc;
  if (strcmp(b->cmd, "artifact.add") == 0) {
    rc = artifact_add(t, b, m.map, r, why);
    if (rc == 0 && *r == FY_CMD_OK)
      atomic_store(&c->updates_due, true); /* an assignment may name it */
  } else if (strcmp(b->cmd, "rollout.create") == 0) {
    rc = rollout_create(t, b, m.map, now, r, why);
  } else {
    rc = rollout_move(t, b, m.map, now, r, why);
  }
  fy_mpmap_free(&m);
  return rc;
}

/* ---- the tick ------------------------------------------------------------------------ */

struct wave_pass {
  struct fy_coord *c;
  const struct rollout_rec *ro;
  const uint8_t *manifest;
  size_t manifest_len;
  bool (*online)(const struct fy_nodeid *id, void *user);
  void *online_user;
  uint64_t now;
  bool starting;              /* queue desired state to the wave's waiting targets */
  struct fy_wave_counts wave; /* of the current wave, after this pass */
  struct fy_wave_counts all;  /* of every wave */
  uint64_t last_final_at;
  size_t changed;
};

/* Queues {rollout, manifest} to the agent's outbox inside t. */
static int queue_desired(struct fy_coord *c, struct fy_txn *t, const struct fy_nodeid *agent, const char *id,
                         struct fy_bytes manifest, uint64_t ttl_ms) {
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  msgpack_packer pk;
  msgpack_packer_init(&pk, &b, fy_mp_buf_write);
  msgpack_pack_map(&pk, 2);
  fy_mp_pack_kv_str(&pk, "rollout", id);
  fy_mp_pack_kv_bin(&pk, "manifest", manifest.p, manifest.n);
  struct fy_outbox_item item = {.dest = *agent,
                                .topic = FY_COORD_TOPIC_DESIRED,
                                .payload = fy_bytes_of(b.data, b.len),
                                .ttl_ms = ttl_ms};
  return fy_outbox_enqueue_txn(c->outbox, t, &item, 1, NULL);
}

static int pass_target(struct fy_txn *t, const struct fy_nodeid *agent, struct target_rec *r, void *user) {
  struct wave_pass *w = user;
  bool current = r->wave == w->ro->wave;
  int rc = 0;
  if (current && w->starting && r->state == FY_TARGET_WAITING) {
    if (w->ro->policy.skip_offline && !(w->online && w->online(agent, w->online_user))) {
      r->state = FY_TARGET_SKIPPED;
      snprintf(r->msg, sizeof(r->msg), "offline at wave start");
    } else {
      /* A message outliving the action timeout would be stale. */
      if ((rc = queue_desired(w->c, t, agent, w->ro->id, fy_bytes_of(w->manifest, w->manifest_len),
                              w->ro->policy.action_timeout_ms)) < 0)
        return rc;
      r->state = FY_TARGET_SENT;
      r->sent = w->now;
    }
    r->at = w->now;
    if ((rc = put_target(t, w->ro->id, agent, r)) < 0)
      return rc;
    w->changed++;
  } else if (current && (r->state == FY_TARGET_SENT || r->state == FY_TARGET_WORKING) &&
             w->ro->policy.action_timeout_ms && w->now >= r->sent + w->ro->policy.action_timeout_ms) {
    r->state = FY_TARGET_TIMED_OUT;
    r->at = w->now;
    snprintf(r->msg, sizeof(r->msg), "no outcome within %" PRIu64 " s",
             w->ro->policy.action_timeout_ms / 1000);
    if ((rc = put_target(t, w->ro->id, agent, r)) < 0)
      return rc;
    w->changed++;
  }
  if (current) {
    fy_wave_counts_add(&w->wave, r->state);
    if (fy_target_is_final(r->state) && r->at > w->last_final_at)
      w->last_final_at = r->at;
  }
  fy_wave_counts_add(&w->all, r->state);
  return 0;
}

static int tick_rollout(struct fy_coord *c, struct fy_txn *t, struct rollout_rec *ro, uint64_t now,
                        bool (*online)(const struct fy_nodeid *, void *), void *online_user,
                        size_t *changed) {
  FY_AUTOBUF struct fy_buf mcopy = FY_BUF_INIT;
  struct fy_manifest m;
  int rc = artifact_manifest(t, ro->tenant, ro->name, ro->version, &mcopy, &m);
  if (rc < 0)
    return rc;
  for (int guard = 0; guard <= FY_WAVES_MAX; guard++) {
    if (ro->nwaves == 0) {
      ro->state = ro->policy.abort_on_zero_eligible ? FY_ROLLOUT_FAILED : FY_ROLLOUT_COMPLETED;
      snprintf(ro->reason, sizeof(ro->reason), "no eligible agent");
      (*changed)++;
      return put_rollout(t, ro);
    }
    struct wave_pass w = {.c = c,
                          .ro = ro,
                          .manifest = mcopy.data,
                          .manifest_len = mcopy.len,
                          .online = online,
                          .online_user = online_user,
                          .now = now,
                          .starting = ro->wave_started_at == 0};
    if ((rc = each_target(t, ro->id, pass_target, &w)) < 0)
      return rc;
    bool touched = w.changed > 0;
    if (w.starting) {
      ro->wave_started_at = now;
      touched = true;
    }
    uint32_t open = w.wave.waiting + w.wave.sent + w.wave.working;
    char why[160];
    enum fy_wave_verdict v =
        fy_wave_evaluate(&w.wave, &ro->policy, open ? 0 : w.last_final_at, now, why, sizeof(why));
    if (v == FY_WAVE_WAIT) {
      if (touched) {
        (*changed)++;
        return put_rollout(t, ro);
      }
      return 0;
    }
    (*changed)++;
    if (v == FY_WAVE_FAIL) {
      ro->state = FY_ROLLOUT_FAILED;
      snprintf(ro->reason, sizeof(ro->reason), "wave %u: %s", ro->wave + 1, why);
      return put_rollout(t, ro);
    }
    if (ro->wave + 1 >= ro->nwaves) {
      ro->state = fy_rollout_final_state(&w.all);
      if (ro->channel[0])
        atomic_store(&c->updates_due, true); /* a release: latest agents may be behind */
      snprintf(ro->reason, sizeof(ro->reason), "wave %u: %s", ro->wave + 1, why);
      return put_rollout(t, ro);
    }
    /* Advance and start the next wave in this same transaction. */
    ro->wave++;
    ro->wave_started_at = 0;
    if ((rc = put_rollout(t, ro)) < 0)
      return rc;
  }
  return 0;
}

/* ---- deliveries outside rollouts: update modes assigned and latest ------------------- */

struct update_rec {
  char via[16]; /* FY_DELIVERY_ASSIGNED or FY_DELIVERY_LATEST */
  char name[FY_MANIFEST_NAME_MAX + 1];
  char version[FY_SEMVER_TEXT_MAX + 1];
  char state[24]; /* sent, skipped, or the state the agent last reported for it */
  uint64_t at;
  char msg[256];
};

static int get_update(struct fy_txn *t, const struct fy_nodeid *agent, struct update_rec *r) {
  memset(r, 0, sizeof(*r));
  struct fy_bytes v;
  int rc = fy_store_get(t, tb(t, T_UPDATES), fy_bytes_of(agent->key, FY_NODEID_LEN), &v);
  if (rc != 1)
    return rc;
  struct fy_mpmap m;
  if (fy_mpmap_decode(&m, v.p, v.n, 4, 64, "update record", NULL) < 0)
    return corrupt(t, "r.updates");
  fy_mp_str(m.map, "via", r->via, sizeof(r->via));
  fy_mp_str(m.map, "name", r->name, sizeof(r->name));
  fy_mp_str(m.map, "version", r->version, sizeof(r->version));
  fy_mp_str(m.map, "state", r->state, sizeof(r->state));
  fy_mp_u64(m.map, "at", &r->at);
  fy_mp_str(m.map, "msg", r->msg, sizeof(r->msg));
  fy_mpmap_free(&m);
  return 1;
}

static void pack_update(msgpack_packer *pk, const struct update_rec *r) {
  msgpack_pack_map(pk, 6);
  fy_mp_pack_kv_str(pk, "via", r->via);
  fy_mp_pack_kv_str(pk, "name", r->name);
  fy_mp_pack_kv_str(pk, "version", r->version);
  fy_mp_pack_kv_str(pk, "state", r->state);
  fy_mp_pack_kv_u64(pk, "at", r->at);
  fy_mp_pack_kv_str(pk, "msg", r->msg);
}

static int put_update(struct fy_txn *t, const struct fy_nodeid *agent, const struct update_rec *r) {
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  msgpack_packer pk;
  msgpack_packer_init(&pk, &b, fy_mp_buf_write);
  pack_update(&pk, r);
  return fy_store_put(t, tb(t, T_UPDATES), fy_bytes_of(agent->key, FY_NODEID_LEN),
                      fy_bytes_of(b.data, b.len));
}

/* A channel's releases: its completed or partial rollouts. */
struct release {
  char tenant[FY_TENANT_MAX + 1], channel[FY_CHANNEL_MAX + 1];
  char name[FY_MANIFEST_NAME_MAX + 1], version[FY_SEMVER_TEXT_MAX + 1];
  struct fy_semver v;
};

/* What one tick reads of the rollouts table. */
struct tick {
  struct fy_coord *c;
  struct fy_txn *t;
  uint64_t now;
  bool (*online)(const struct fy_nodeid *, void *);
  void *online_user;
  size_t changed;
  char (*running)[FY_ROLLOUT_ID_MAX + 1];
  size_t nrunning, running_cap;
  struct release *releases;
  size_t nreleases, releases_cap;
  bool updates;      /* look at every agent for assigned / latest deliveries */
  bool updates_more; /* an agent was busy: look again at the next tick */
};

static int grow(struct fy_txn *t, void **v, size_t *cap, size_t n, size_t size) {
  if (n < *cap)
    return 0;
  size_t ncap = *cap ? *cap * 2 : 8;
  void *nv = realloc(*v, ncap * size);
  if (!nv)
    return fy_err_set(fy_txn_err(t), FY_ENOMEM, "rollouts: out of memory");
  *v = nv;
  *cap = ncap;
  return 0;
}

static int read_rollout(const struct rollout_rec *ro, void *user) {
  struct tick *k = user;
  int rc = 0;
  if (ro->state == FY_ROLLOUT_RUNNING) {
    if ((rc = grow(k->t, (void **)&k->running, &k->running_cap, k->nrunning, sizeof(*k->running))) == 0)
      memcpy(k->running[k->nrunning++], ro->id, sizeof(*k->running));
  } else if (ro->channel[0] && (ro->state == FY_ROLLOUT_COMPLETED || ro->state == FY_ROLLOUT_PARTIAL)) {
    struct release r = {0};
    snprintf(r.tenant, sizeof(r.tenant), "%s", ro->tenant);
    snprintf(r.channel, sizeof(r.channel), "%s", ro->channel);
    snprintf(r.name, sizeof(r.name), "%s", ro->name);
    snprintf(r.version, sizeof(r.version), "%s", ro->version);
    if (fy_semver_parse(ro->version, &r.v, NULL) == 0 &&
        (rc = grow(k->t, (void **)&k->releases, &k->releases_cap, k->nreleases, sizeof(r))) == 0)
      k->releases[k->nreleases++] = r;
  }
  return rc;
}

static const struct release *channel_latest(const struct tick *k, const char *tenant, const char *channel) {
  const struct release *best = NULL;
  for (size_t i = 0; i < k->nreleases; i++) {
    const struct release *r = &k->releases[i];
    if (strcmp(r->tenant, tenant) == 0 && strcmp(r->channel, channel) == 0 &&
        (!best || fy_semver_cmp(&r->v, &best->v) > 0))
      best = r;
  }
  return best;
}

/* The artifact an assignment names: 1 and its name when exactly one of the
 * tenant's artifacts has that version (and name, when given); 0 with why. */
static int find_assigned(struct fy_txn *t, const char *tenant, const struct fy_assigned *a,
                         char name[FY_MANIFEST_NAME_MAX + 1], char *why, size_t why_size) {
  uint8_t prefix[FY_TENANT_MAX + 1];
  size_t pn = strlen(tenant) + 1;
  memcpy(prefix, tenant, pn);
  struct fy_cursor *cur;
  int rc = fy_cursor_open(t, tb(t, T_ARTIFACTS), fy_bytes_of(prefix, pn), &cur);
  if (rc < 0)
    return rc;
  struct fy_bytes k;
  size_t found = 0;
  while ((rc = fy_cursor_next(cur, &k, NULL)) == 1) {
    /* tenant 0 name 0 version */
    const char *kname = (const char *)k.p + pn, *end = (const char *)k.p + k.n;
    const char *zero = memchr(kname, 0, (size_t)(end - kname));
    char kversion[FY_SEMVER_TEXT_MAX + 1];
    struct fy_semver v;
    if (!zero || (size_t)(zero - kname) > FY_MANIFEST_NAME_MAX ||
        (size_t)(end - zero - 1) > FY_SEMVER_TEXT_MAX)
      continue;
    memcpy(kversion, zero + 1, (size_t)(end - zero - 1));
    kversion[end - zero - 1] = '\0';
    if (fy_semver_parse(kversion, &v, NULL) < 0 || fy_semver_cmp(&v, &a->v) != 0)
      continue;
    if (a->name[0] &&
        (strlen(a->name) != (size_t)(zero - kname) || memcmp(a->name, kname, (size_t)(zero - kname)) != 0))
      continue;
    if (found++ == 0) {
      memcpy(name, kname, (size_t)(zero - kname));
      name[zero - kname] = '\0';
    }
  }
  fy_cursor_close(cur);
  if (rc < 0)
    return rc;
  if (found == 1)
    return 1;
  if (found == 0)
    snprintf(why, why_size, "no artifact %s%s%s in tenant %s", a->name, a->name[0] ? " " : "", a->version,
             tenant);
  else
    snprintf(why, why_size, "%zu artifacts have version %s in tenant %s: assign NAME@VERSION", found,
             a->version, tenant);
  return 0;
}

/* Is the agent in the middle of a running rollout's wave? */
static int busy_in_rollout(struct tick *k, const struct fy_nodeid *agent) {
  for (size_t i = 0; i < k->nrunning; i++) {
    uint8_t key[FY_ROLLOUT_ID_MAX + 1 + FY_NODEID_LEN];
    struct fy_bytes v;
    struct target_rec tr;
    int rc =
        fy_store_get(k->t, tb(k->t, T_TARGETS), fy_bytes_of(key, target_key(key, k->running[i], agent)), &v);
    if (rc < 0)
      return rc;
    if (rc == 0)
      continue;
    if ((rc = decode_target(k->t, v, &tr)) < 0)
      return rc;
    if (tr.state == FY_TARGET_SENT || tr.state == FY_TARGET_WORKING)
      return 1;
  }
  return 0;
}

/* Brings an assigned or latest agent to its version: one delivery per
 * version (a refusal or failure is not repeated; the next version is sent),
 * never a downgrade for latest, never while a rollout's wave has it. */
static int converge_agent(const struct fy_nodeid *id, const struct fy_coord_agent *a, void *user) {
  struct tick *k = user;
  const struct fy_update_prefs *u = &a->update;
  if (a->status != FY_AGENT_ENROLLED || (u->mode != FY_UPDATE_ASSIGNED && u->mode != FY_UPDATE_LATEST))
    return 0;
  struct update_rec want = {.at = k->now};
  struct fy_semver wv;
  bool latest = u->mode == FY_UPDATE_LATEST;
  snprintf(want.via, sizeof(want.via), "%s", latest ? FY_DELIVERY_LATEST : FY_DELIVERY_ASSIGNED);
  int rc;
  if (latest) {
    const struct release *r = channel_latest(k, a->tenant, u->channel[0] ? u->channel : FY_CHANNEL_DEFAULT);
    if (!r)
      return 0;
    snprintf(want.name, sizeof(want.name), "%s", r->name);
    snprintf(want.version, sizeof(want.version), "%s", r->version);
    wv = r->v;
  } else {
    struct fy_assigned as;
    if (fy_assigned_parse(u->assigned, &as, NULL) < 0)
      return 0; /* the agent refused to start with it; facts of another kind of agent */
    snprintf(want.name, sizeof(want.name), "%s", as.name);
    snprintf(want.version, sizeof(want.version), "%s", as.version);
    wv = as.v;
    if ((rc = find_assigned(k->t, a->tenant, &as, want.name, want.msg, sizeof(want.msg))) < 0)
      return rc;
    if (rc == 0)
      snprintf(want.state, sizeof(want.state), "skipped");
  }
  struct fy_semver have;
  if (fy_semver_parse(a->version, &have, NULL) == 0 &&
      (fy_semver_cmp(&have, &wv) == 0 || (latest && fy_semver_cmp(&have, &wv) > 0)))
    return 0;
  struct update_rec last;
  if ((rc = get_update(k->t, id, &last)) < 0)
    return rc;
  bool same = rc == 1 && strcmp(last.via, want.via) == 0 && strcmp(last.name, want.name) == 0 &&
              strcmp(last.version, want.version) == 0;
  if (same && strcmp(last.state, "skipped") != 0)
    return 0; /* delivered once; what the agent made of it is in last.state */
  FY_AUTOBUF struct fy_buf env = FY_BUF_INIT;
  if (!want.state[0]) {
    if ((rc = busy_in_rollout(k, id)) != 0) {
      k->updates_more = true;
      return rc < 0 ? rc : 0;
    }
    struct fy_manifest m;
    struct fy_err why = {0};
    if ((rc = artifact_manifest(k->t, a->tenant, want.name, want.version, &env, &m)) < 0)
      return rc;
    if (fy_manifest_check_compatible(&m, u->hw_model, u->hw_revision, &why) < 0) {
      snprintf(want.state, sizeof(want.state), "skipped");
      snprintf(want.msg, sizeof(want.msg), "%.255s", why.msg);
    }
  }
  if (want.state[0]) { /* skipped: recorded once, for admins to see */
    if (same && strcmp(last.msg, want.msg) == 0)
      return 0;
  } else {
    if ((rc = queue_desired(k->c, k->t, id, want.via, fy_bytes_of(env.data, env.len), 0)) < 0)
      return rc;
    snprintf(want.state, sizeof(want.state), "sent");
  }
  k->changed++;
  return put_update(k->t, id, &want);
}

static int tick_body(struct fy_txn *t, void *user) {
  struct tick *k = user;
  k->t = t;
  k->changed = 0;
  k->nrunning = k->nreleases = 0;
  k->updates_more = false;
  /* Ids copied first: ticking writes the table. */
  int rc = each_rollout(t, read_rollout, k);
  for (size_t i = 0; rc >= 0 && i < k->nrunning; i++) {
    struct rollout_rec ro;
    if ((rc = get_rollout(t, k->running[i], &ro)) == 1)
      rc = tick_rollout(k->c, t, &ro, k->now, k->online, k->online_user, &k->changed);
  }
  if (rc >= 0 && k->updates)
    rc = fy_coord_each_agent(t, converge_agent, k);
  return rc < 0 ? rc : 0;
}

int fy_coord_rollout_tick(struct fy_coord *c, uint64_t now,
                          bool (*online)(const struct fy_nodeid *id, void *user), void *user,
                          struct fy_err *err) {
  struct tick k = {.c = c, .now = now, .online = online, .online_user = user};
  /* Taken before the transaction, which may run twice; given back if it fails. */
  k.updates = atomic_exchange(&c->updates_due, false) || now >= c->updates_checked_at + UPDATES_RECHECK_MS;
  if (k.updates)
    c->updates_checked_at = now;
  int rc = fy_store_write(c->store, tick_body, &k, err);
  free(k.running);
  free(k.releases);
  if (k.updates && (rc < 0 || k.updates_more))
    atomic_store(&c->updates_due, true);
  if (rc < 0)
    return rc;
  if (k.changed && c->changed)
    c->changed(c->changed_user);
  return (int)k.changed;
}

/* ---- reports ------------------------------------------------------------------------- */

static enum fy_target_state outcome_of(const char *state) {
  if (strcmp(state, "success") == 0)
    return FY_TARGET_SUCCESS;
  if (strcmp(state, "rolled_back") == 0)
    return FY_TARGET_ROLLED_BACK;
  if (strcmp(state, "failed") == 0)
    return FY_TARGET_FAILED;
  return FY_TARGET_WORKING;
}

/* A report on a delivery outside rollouts: the update record follows it
 * while it is about the version last sent. */
static int update_reported(struct fy_txn *t, const struct fy_nodeid *agent, const char *via,
                           const char *version, const char *state, const char *message, uint64_t at) {
  struct update_rec u;
  int rc = get_update(t, agent, &u);
  if (rc <= 0 || strcmp(u.via, via) != 0 || strcmp(u.version, version) != 0)
    return rc < 0 ? rc : 0;
  snprintf(u.state, sizeof(u.state), "%s", state);
  snprintf(u.msg, sizeof(u.msg), "%.255s", message);
  u.at = at;
  return put_update(t, agent, &u);
}

static int on_report(struct fy_txn *t, const struct fy_nodeid *sender, const char *topic,
                     const struct fy_inbox_msg *m, void *user) {
  (void)topic;
  struct fy_coord *c = user;
  char hex[FY_NODEID_SHORT_LEN + 1];
  fy_nodeid_to_short(sender, hex);
  struct fy_mpmap map;
  struct fy_err err = {0};
  char id[FY_ROLLOUT_ID_MAX + 1], state[32], message[1024], version[FY_SEMVER_TEXT_MAX + 1] = "";
  uint64_t at = 0;
  if (fy_mpmap_decode(&map, m->payload.p, m->payload.n, 4, 64, "apply report", &err) < 0) {
    /* A bad report must not block the agent's queue: drop it, loudly. */
    if (c->log)
      fy_warn(c->log, "report.bad", "agent", hex, "reason", err.msg);
    return 0;
  }
  bool ok =
      fy_mp_str(map.map, "rollout", id, sizeof(id)) && fy_mp_str(map.map, "state", state, sizeof(state));
  fy_mp_str(map.map, "message", message, sizeof(message));
  fy_mp_str(map.map, "version", version, sizeof(version));
  fy_mp_u64(map.map, "at", &at);
  fy_mpmap_free(&map);
  if (!ok) {
    if (c->log)
      fy_warn(c->log, "report.bad", "agent", hex, "reason", "rollout or state missing");
    return 0;
  }
  /* Keep it as the agent's update log, bounded. */
  uint8_t rkey[FY_NODEID_LEN + 12];
  memcpy(rkey, sender->key, FY_NODEID_LEN);
  fy_be64_put(rkey + FY_NODEID_LEN, m->seq);
  fy_be32_put(rkey + FY_NODEID_LEN + 8, 0);
  int rc = fy_store_put(t, tb(t, T_REPORTS), fy_bytes_of(rkey, sizeof(rkey)), m->payload);
  if (rc < 0)
    return rc;
  struct fy_cursor *cur;
  if ((rc = fy_cursor_open(t, tb(t, T_REPORTS), fy_bytes_of(sender->key, FY_NODEID_LEN), &cur)) < 0)
    return rc;
  size_t count = 0;
  while ((rc = fy_cursor_prev(cur, NULL, NULL)) == 1)
    if (++count > FY_COORD_REPORTS_MAX && (rc = fy_cursor_del(cur)) < 0)
      break;
  fy_cursor_close(cur);
  if (rc < 0)
    return rc;
  if (strcmp(id, FY_DELIVERY_ASSIGNED) == 0 || strcmp(id, FY_DELIVERY_LATEST) == 0)
    return update_reported(t, sender, id, version, state, message, at);
  /* The target's outcome, if this agent is one of the rollout's. */
  uint8_t tkey[FY_ROLLOUT_ID_MAX + 1 + FY_NODEID_LEN];
  struct fy_bytes v;
  if ((rc = fy_store_get(t, tb(t, T_TARGETS), fy_bytes_of(tkey, target_key(tkey, id, sender)), &v)) <= 0)
    return rc;
  struct target_rec tr;
  if ((rc = decode_target(t, v, &tr)) < 0)
    return rc;
  enum fy_target_state next = outcome_of(state);
  /* Working never overrides an outcome (reports of a retry come in order). */
  if (fy_target_is_final(tr.state) && next == FY_TARGET_WORKING && tr.state != FY_TARGET_TIMED_OUT)
    return 0;
  if (tr.state == FY_TARGET_WAITING || tr.state == FY_TARGET_SKIPPED)
    return 0;
  tr.state = next;
  tr.at = at;
  /* The target keeps the start of the message; the report itself keeps all of it. */
  snprintf(tr.msg, sizeof(tr.msg), "%s%s%.200s", state, message[0] ? ": " : "", message);
  if (c->log)
    fy_info(c->log, "rollout.report", "rollout", id, "agent", hex, "state", state);
  return put_target(t, id, sender, &tr);
}

int fy_coord_rollout_register(struct fy_coord *c, struct fy_inbox *inbox, struct fy_err *err) {
  return fy_inbox_register(inbox, FY_COORD_TOPIC_REPORT, on_report, c, err);
}

int fy_coord_rollout_pack_update(struct fy_txn *t, const struct fy_nodeid *agent, msgpack_packer *pk) {
  struct update_rec u;
  int rc = get_update(t, agent, &u);
  if (rc == 1)
    pack_update(pk, &u);
  else if (rc == 0)
    msgpack_pack_nil(pk);
  return rc < 0 ? rc : 0;
}

/* ---- queries ------------------------------------------------------------------------- */

static void pack_rollout(msgpack_packer *pk, const struct rollout_rec *r) {
  msgpack_pack_map(pk, 13);
  fy_mp_pack_kv_str(pk, "id", r->id);
  fy_mp_pack_kv_str(pk, "tenant", r->tenant);
  fy_mp_pack_kv_str(pk, "name", r->name);
  fy_mp_pack_kv_str(pk, "version", r->version);
  fy_mp_pack_str(pk, "selector");
  fy_labels_pack(&r->selector, pk);
  fy_mp_pack_kv_str(pk, "channel", r->channel);
  fy_mp_pack_kv_str(pk, "waves", r->waves);
  fy_mp_pack_str(pk, "policy");
  pack_policy(pk, &r->policy);
  fy_mp_pack_kv_str(pk, "state", fy_rollout_state_name(r->state));
  fy_mp_pack_kv_u64(pk, "wave", r->wave);
  fy_mp_pack_kv_u64(pk, "nwaves", r->nwaves);
  fy_mp_pack_kv_u64(pk, "created", r->created_at);
  fy_mp_pack_kv_str(pk, "reason", r->reason);
}

struct target_list {
  msgpack_packer *pk;
  bool count_only;
  uint32_t n;
};

static int pack_target(struct fy_txn *t, const struct fy_nodeid *agent, struct target_rec *r, void *user) {
  (void)t;
  struct target_list *l = user;
  l->n++;
  if (l->count_only)
    return 0;
  msgpack_pack_map(l->pk, 5);
  fy_mp_pack_kv_bin(l->pk, "agent", agent->key, FY_NODEID_LEN);
  fy_mp_pack_str(l->pk, "wave");
  if (r->wave == WAVE_NONE)
    msgpack_pack_nil(l->pk);
  else
    msgpack_pack_uint32(l->pk, r->wave);
  fy_mp_pack_kv_str(l->pk, "state", fy_target_state_name(r->state));
  fy_mp_pack_kv_u64(l->pk, "at", r->at);
  fy_mp_pack_kv_str(l->pk, "msg", r->msg);
  return 0;
}

/* An agent's update log: its last reports, oldest first, as it sent them. */
static int query_log(struct fy_txn *t, const struct fy_admin *caller, const char *hex, msgpack_packer *pk,
                     int *rpc_code) {
  struct fy_nodeid agent;
  struct fy_coord_agent a;
  int rc;
  if (fy_nodeid_parse(hex, &agent, NULL) < 0) {
    *rpc_code = FY_RPC_INVALID_ARGUMENT;
    return fy_err_set(fy_txn_err(t), FY_EINVAL, "log: id must be an agent's full node id");
  }
  if ((rc = fy_coord_get_agent(t, &agent, &a)) < 0)
    return rc;
  if (rc == 0 || !fy_admin_covers(caller, a.tenant)) {
    *rpc_code = FY_RPC_NOT_FOUND;
    return fy_err_set(fy_txn_err(t), FY_ENOENT, "no agent %.12s", hex);
  }
  struct fy_cursor *cur;
  struct fy_bytes k, v;
  uint32_t n = 0;
  for (int pass = 0; pass < 2; pass++) {
    if ((rc = fy_cursor_open(t, tb(t, T_REPORTS), fy_bytes_of(agent.key, FY_NODEID_LEN), &cur)) < 0)
      return rc;
    if (pass == 1) {
      msgpack_pack_map(pk, 1);
      fy_mp_pack_str(pk, "log");
      msgpack_pack_array(pk, n);
    }
    while ((rc = fy_cursor_next(cur, &k, &v)) == 1) {
      if (k.n != FY_NODEID_LEN + 12)
        continue;
      if (pass == 0) {
        n++;
        continue;
      }
      msgpack_pack_map(pk, 2);
      fy_mp_pack_kv_u64(pk, "seq", fy_be64_get(k.p + FY_NODEID_LEN));
      fy_mp_pack_str(pk, "report");
      pk->callback(pk->data, (const char *)v.p, v.n); /* one map, as the agent sent it */
    }
    fy_cursor_close(cur);
    if (rc < 0)
      return rc;
  }
  return 1;
}

struct rollout_list {
  const struct fy_admin *caller;
  msgpack_packer *pk; /* NULL: count only */
  uint32_t n;
};

static int list_rollout(const struct rollout_rec *ro, void *user) {
  struct rollout_list *l = user;
  if (!fy_admin_covers(l->caller, ro->tenant))
    return 0;
  if (l->pk)
    pack_rollout(l->pk, ro);
  else
    l->n++;
  return 0;
}

int fy_coord_rollout_query(struct fy_txn *t, const struct fy_admin *caller, const char *q, const char *id,
                           msgpack_packer *pk, int *rpc_code) {
  if (strcmp(q, "log") == 0)
    return query_log(t, caller, id, pk, rpc_code);
  bool list = strcmp(q, "rollouts") == 0;
  if (!list && strcmp(q, "rollout") != 0)
    return 0;
  if (!list) {
    struct rollout_rec ro;
    int rc = get_rollout(t, id, &ro);
    if (rc < 0)
      return rc;
    if (rc == 0 || !fy_admin_covers(caller, ro.tenant)) {
      *rpc_code = FY_RPC_NOT_FOUND;
      return fy_err_set(fy_txn_err(t), FY_ENOENT, "no rollout %s", id);
    }
    struct target_list l = {.pk = pk, .count_only = true};
    if ((rc = each_target(t, ro.id, pack_target, &l)) < 0)
      return rc;
    msgpack_pack_map(pk, 2);
    fy_mp_pack_str(pk, "rollout");
    pack_rollout(pk, &ro);
    fy_mp_pack_str(pk, "targets");
    msgpack_pack_array(pk, l.n);
    l.count_only = false;
    return each_target(t, ro.id, pack_target, &l) < 0 ? FY_EIO : 1;
  }
  /* Two passes: msgpack needs the count first. */
  struct rollout_list l = {.caller = caller};
  int rc = each_rollout(t, list_rollout, &l);
  if (rc < 0)
    return rc;
  msgpack_pack_map(pk, 1);
  fy_mp_pack_str(pk, "rollouts");
  msgpack_pack_array(pk, l.n);
  l.pk = pk;
  rc = each_rollout(t, list_rollout, &l);
  return rc < 0 ? rc : 1;
}
