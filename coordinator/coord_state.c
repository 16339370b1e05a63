#include "coordinator/coord_state.h"

#include <inttypes.h>
#include <msgpack.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "base/cleanup.h"
#include "base/mpmap.h"
#include "coordinator/coord_rollout.h"
#include "fleet/facts.h"
#include "fleet/labels.h"
#include "fleet/ticket.h"
#include "fleet/trust.h"
#include "fy_config.h"
#include "rpc/frame.h"

/* Tables (keys -> values; values are msgpack maps unless said otherwise):
 *   c.meta        "id" -> bin 32 (the coordinator's node id)
 *   c.admins      key(32) -> {role, tenants, root, at, by}
 *   c.seq         issuer(32) -> be64 last sequence number consumed
 *   c.results     envelope id(32) -> result record (proto/fleet.md)
 *   c.statements  be64 n -> an applied admin.set / admin.remove envelope
 *   c.agents      id(32) -> {status, tenant, labels, first, seen, enrolled, host, version}
 *   c.tickets     secret hash(32) -> {tenant, labels, exp, uses, used, revoked, by, at}
 *   c.facts       id(32) -> be64 received_at || facts bytes
 *   c.history     id(32) be64 received_at -> facts bytes */
enum { T_META, T_ADMINS, T_SEQ, T_RESULTS, T_STATEMENTS, T_AGENTS, T_TICKETS, T_FACTS, T_HISTORY, T_N };
static const struct fy_store_table_def tables[T_N] = {
    [T_META] = {"c.meta", 0},       [T_ADMINS] = {"c.admins", 0},         [T_SEQ] = {"c.seq", 0},
    [T_RESULTS] = {"c.results", 0}, [T_STATEMENTS] = {"c.statements", 0}, [T_AGENTS] = {"c.agents", 0},
    [T_TICKETS] = {"c.tickets", 0}, [T_FACTS] = {"c.facts", 0},           [T_HISTORY] = {"c.history", 0},
};
const struct fy_store_schema fy_coord_schema = {"coordinator", tables, T_N, NULL, 0};

#define REQ_ELEMENTS_MAX 4096
#define ID_KEY(id) fy_bytes_of((id)->key, FY_NODEID_LEN)

static struct fy_table *tb(struct fy_txn *t, int which) {
  return fy_txn_table(t, &tables[which]);
}

static uint64_t now_of(const struct fy_coord *c) {
  if (c->clock_ms)
    return c->clock_ms(c->clock_user);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

const char *fy_agent_status_name(enum fy_agent_status s) {
  switch (s) {
  case FY_AGENT_PENDING:
    return "pending";
  case FY_AGENT_ENROLLED:
    return "enrolled";
  case FY_AGENT_REVOKED:
    return "revoked";
  case FY_AGENT_UNKNOWN:
    break;
  }
  return "unknown";
}

/* ---- msgpack helpers ------------------------------------------------------------ */

/* Requests come from the network, records from our own store; both are
 * bounded the same way before msgpack-c sees them. */
static int mp_map(struct fy_mpmap *m, const uint8_t *p, size_t n, const char *what, struct fy_err *err) {
  return fy_mpmap_decode(m, p, n, 8, REQ_ELEMENTS_MAX, what, err);
}

static bool mp_flag(const msgpack_object *map, const char *key) {
  bool v;
  return fy_mp_bool(map, key, &v) && v;
}

static int mp_labels(const msgpack_object *map, const char *key, struct fy_labels *out, struct fy_err *err) {
  const msgpack_object *o = fy_mp_get(map, key);
  out->n = 0;
  if (!o)
    return 0;
  return fy_labels_unpack(o, out, err);
}

/* ---- records ------------------------------------------------------------------- */

struct agent_rec {
  enum fy_agent_status status;
  char tenant[FY_TENANT_MAX + 1];
  struct fy_labels labels;
  uint64_t first_seen, last_seen, enrolled_at;
  char hostname[FY_FACTS_HOSTNAME_MAX + 1];
  char version[FY_FACTS_VERSION_MAX + 1];
  struct fy_update_prefs update; /* from its latest facts */
};

struct ticket_rec {
  char tenant[FY_TENANT_MAX + 1];
  struct fy_labels labels;
  uint64_t expires, uses, used, at;
  bool revoked;
  struct fy_nodeid by;
};

static int corrupt(struct fy_txn *t, const char *table) {
  return fy_err_set(fy_txn_err(t), FY_EIO, "store: a damaged record in %s", table);
}

static int get_admin(struct fy_txn *t, const struct fy_nodeid *key_in, struct fy_admin *out) {
  struct fy_nodeid key_copy = *key_in; /* key_in may be &out->key */
  const struct fy_nodeid *key = &key_copy;
  memset(out, 0, sizeof(*out));
  struct fy_bytes v;
  int rc = fy_store_get(t, tb(t, T_ADMINS), ID_KEY(key), &v);
  if (rc != 1)
    return rc;
  struct fy_mpmap m;
  if (mp_map(&m, v.p, v.n, "admin record", NULL) < 0)
    return corrupt(t, "c.admins");
  memset(out, 0, sizeof(*out));
  out->key = *key;
  char role[16];
  const msgpack_object *ts = fy_mp_get(m.map, "tenants");
  rc = 1;
  if (!fy_mp_str(m.map, "role", role, sizeof(role)) || fy_role_parse(role, &out->role, NULL) < 0 || !ts ||
      ts->type != MSGPACK_OBJECT_ARRAY || ts->via.array.size > FY_ADMIN_TENANTS_MAX) {
    fy_mpmap_free(&m);
    return corrupt(t, "c.admins");
  }
  for (uint32_t i = 0; rc == 1 && i < ts->via.array.size; i++) {
    const msgpack_object *s = &ts->via.array.ptr[i];
    if (s->type != MSGPACK_OBJECT_STR || s->via.str.size > FY_TENANT_MAX) {
      rc = corrupt(t, "c.admins");
      break;
    }
    memcpy(out->tenants[i], s->via.str.ptr, s->via.str.size);
    out->tenants[i][s->via.str.size] = '\0';
    out->ntenants++;
  }
  out->root = mp_flag(m.map, "root");
  fy_mpmap_free(&m);
  return rc;
}

static int put_admin(struct fy_txn *t, const struct fy_admin *a, uint64_t at, const struct fy_nodeid *by) {
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  msgpack_packer pk;
  msgpack_packer_init(&pk, &b, fy_mp_buf_write);
  msgpack_pack_map(&pk, 5);
  fy_mp_pack_kv_str(&pk, "role", fy_role_name(a->role));
  fy_mp_pack_str(&pk, "tenants");
  msgpack_pack_array(&pk, a->ntenants);
  for (size_t i = 0; i < a->ntenants; i++)
    fy_mp_pack_str(&pk, a->tenants[i]);
  fy_mp_pack_kv_bool(&pk, "root", a->root);
  fy_mp_pack_kv_u64(&pk, "at", at);
  fy_mp_pack_kv_bin(&pk, "by", by->key, FY_NODEID_LEN);
  return fy_store_put(t, tb(t, T_ADMINS), ID_KEY(&a->key), fy_bytes_of(b.data, b.len));
}

static int get_agent(struct fy_txn *t, const struct fy_nodeid *id, struct agent_rec *out) {
  memset(out, 0, sizeof(*out));
  struct fy_bytes v;
  int rc = fy_store_get(t, tb(t, T_AGENTS), ID_KEY(id), &v);
  if (rc != 1)
    return rc;
  struct fy_mpmap m;
  if (mp_map(&m, v.p, v.n, "agent record", NULL) < 0)
    return corrupt(t, "c.agents");
  uint64_t st;
  if (!fy_mp_u64(m.map, "status", &st) || st < FY_AGENT_PENDING || st > FY_AGENT_REVOKED ||
      mp_labels(m.map, "labels", &out->labels, NULL) < 0) {
    fy_mpmap_free(&m);
    return corrupt(t, "c.agents");
  }
  out->status = (enum fy_agent_status)st;
  fy_mp_str(m.map, "tenant", out->tenant, sizeof(out->tenant));
  fy_mp_str(m.map, "host", out->hostname, sizeof(out->hostname));
  fy_mp_str(m.map, "version", out->version, sizeof(out->version));
  char mode[16] = "";
  fy_mp_str(m.map, "mode", mode, sizeof(mode));
  fy_update_mode_parse(mode, &out->update.mode, NULL);
  fy_mp_str(m.map, "channel", out->update.channel, sizeof(out->update.channel));
  fy_mp_str(m.map, "assigned", out->update.assigned, sizeof(out->update.assigned));
  fy_mp_str(m.map, "hw_model", out->update.hw_model, sizeof(out->update.hw_model));
  fy_mp_str(m.map, "hw_revision", out->update.hw_revision, sizeof(out->update.hw_revision));
  fy_mp_u64(m.map, "first", &out->first_seen);
  fy_mp_u64(m.map, "seen", &out->last_seen);
  fy_mp_u64(m.map, "enrolled", &out->enrolled_at);
  fy_mpmap_free(&m);
  return 1;
}

static int put_agent(struct fy_txn *t, const struct fy_nodeid *id, const struct agent_rec *a) {
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  msgpack_packer pk;
  msgpack_packer_init(&pk, &b, fy_mp_buf_write);
  msgpack_pack_map(&pk, 13);
  fy_mp_pack_kv_u64(&pk, "status", (uint64_t)a->status);
  fy_mp_pack_kv_str(&pk, "tenant", a->tenant);
  fy_mp_pack_str(&pk, "labels");
  fy_labels_pack(&a->labels, &pk);
  fy_mp_pack_kv_u64(&pk, "first", a->first_seen);
  fy_mp_pack_kv_u64(&pk, "seen", a->last_seen);
  fy_mp_pack_kv_u64(&pk, "enrolled", a->enrolled_at);
  fy_mp_pack_kv_str(&pk, "host", a->hostname);
  fy_mp_pack_kv_str(&pk, "version", a->version);
  fy_mp_pack_kv_str(&pk, "mode", fy_update_mode_name(a->update.mode));
  fy_mp_pack_kv_str(&pk, "channel", a->update.channel);
  fy_mp_pack_kv_str(&pk, "assigned", a->update.assigned);
  fy_mp_pack_kv_str(&pk, "hw_model", a->update.hw_model);
  fy_mp_pack_kv_str(&pk, "hw_revision", a->update.hw_revision);
  return fy_store_put(t, tb(t, T_AGENTS), ID_KEY(id), fy_bytes_of(b.data, b.len));
}

/* An assigned or latest agent reported (or enrolled): the tick looks
 * whether it needs a delivery. Set before the transaction commits, which
 * at worst makes the tick look once for nothing. */
static void note_update_prefs(struct fy_coord *c, const struct agent_rec *rec) {
  if (rec->update.mode == FY_UPDATE_ASSIGNED || rec->update.mode == FY_UPDATE_LATEST)
    atomic_store(&c->updates_due, true);
}

/* What the agent record keeps of its facts. A mode this coordinator does
 * not know (a newer agent) counts as pinned: it is never sent anything it
 * might not want. */
static void rec_from_facts(struct agent_rec *rec, const struct fy_facts *f) {
  snprintf(rec->hostname, sizeof(rec->hostname), "%s", f->hostname);
  snprintf(rec->version, sizeof(rec->version), "%s", f->version);
  struct fy_update_prefs *u = &rec->update;
  if (fy_update_mode_parse(f->update_mode, &u->mode, NULL) < 0)
    u->mode = FY_UPDATE_PINNED;
  snprintf(u->channel, sizeof(u->channel), "%s", f->channel);
  snprintf(u->assigned, sizeof(u->assigned), "%s", f->assigned);
  snprintf(u->hw_model, sizeof(u->hw_model), "%s", f->hw_model);
  snprintf(u->hw_revision, sizeof(u->hw_revision), "%s", f->hw_revision);
}

static int get_ticket(struct fy_txn *t, const uint8_t hash[32], struct ticket_rec *out) {
  memset(out, 0, sizeof(*out));
  struct fy_bytes v;
  int rc = fy_store_get(t, tb(t, T_TICKETS), fy_bytes_of(hash, 32), &v);
  if (rc != 1)
    return rc;
  struct fy_mpmap m;
  if (mp_map(&m, v.p, v.n, "ticket record", NULL) < 0)
    return corrupt(t, "c.tickets");
  if (!fy_mp_str(m.map, "tenant", out->tenant, sizeof(out->tenant)) ||
      mp_labels(m.map, "labels", &out->labels, NULL) < 0) {
    fy_mpmap_free(&m);
    return corrupt(t, "c.tickets");
  }
  fy_mp_u64(m.map, "exp", &out->expires);
  fy_mp_u64(m.map, "uses", &out->uses);
  fy_mp_u64(m.map, "used", &out->used);
  fy_mp_u64(m.map, "at", &out->at);
  fy_mp_bin(m.map, "by", out->by.key, FY_NODEID_LEN);
  out->revoked = mp_flag(m.map, "revoked");
  fy_mpmap_free(&m);
  return 1;
}

static void pack_ticket(msgpack_packer *pk, const struct ticket_rec *r) {
  msgpack_pack_map(pk, 8);
  fy_mp_pack_kv_str(pk, "tenant", r->tenant);
  fy_mp_pack_str(pk, "labels");
  fy_labels_pack(&r->labels, pk);
  fy_mp_pack_kv_u64(pk, "exp", r->expires);
  fy_mp_pack_kv_u64(pk, "uses", r->uses);
  fy_mp_pack_kv_u64(pk, "used", r->used);
  fy_mp_pack_kv_bool(pk, "revoked", r->revoked);
  fy_mp_pack_kv_bin(pk, "by", r->by.key, FY_NODEID_LEN);
  fy_mp_pack_kv_u64(pk, "at", r->at);
}

static int put_ticket(struct fy_txn *t, const uint8_t hash[32], const struct ticket_rec *r) {
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  msgpack_packer pk;
  msgpack_packer_init(&pk, &b, fy_mp_buf_write);
  pack_ticket(&pk, r);
  return fy_store_put(t, tb(t, T_TICKETS), fy_bytes_of(hash, 32), fy_bytes_of(b.data, b.len));
}

/* ---- init ------------------------------------------------------------------------ */

struct init_args {
  const struct fy_nodeid *id, *owners;
  size_t nowners;
  uint64_t now;
};

static int init_body(struct fy_txn *t, void *user) {
  struct init_args *a = user;
  struct fy_bytes v;
  int rc = fy_store_get(t, tb(t, T_META), fy_bytes_str("id"), &v);
  if (rc < 0)
    return rc;
  if (rc == 1)
    return fy_err_set(fy_txn_err(t), FY_EEXIST, "the coordinator store is initialised already");
  if ((rc = fy_store_put(t, tb(t, T_META), fy_bytes_str("id"), ID_KEY(a->id))) < 0)
    return rc;
  for (size_t i = 0; i < a->nowners; i++) {
    struct fy_admin ad = {.key = a->owners[i], .role = FY_ROLE_OWNER, .root = true, .ntenants = 1};
    strcpy(ad.tenants[0], FY_TENANT_ALL);
    if ((rc = put_admin(t, &ad, a->now, a->id)) < 0)
      return rc;
  }
  return 0;
}

int fy_coord_init_store(struct fy_store *store, const struct fy_nodeid *id, const struct fy_nodeid *owners,
                        size_t nowners, uint64_t now_ms, struct fy_err *err) {
  if (nowners == 0)
    return fy_err_set(err, FY_EINVAL, "a coordinator needs at least one owner");
  struct init_args a = {id, owners, nowners, now_ms};
  return fy_store_write(store, init_body, &a, err);
}

static int check_body(struct fy_txn *t, void *user) {
  struct fy_coord *c = user;
  struct fy_bytes v;
  int rc = fy_store_get(t, tb(t, T_META), fy_bytes_str("id"), &v);
  if (rc < 0)
    return rc;
  if (rc == 0)
    return fy_err_set(fy_txn_err(t), FY_ENOENT,
                      "the coordinator is not initialised: run `ferry coordinator init --owner <admin id>`");
  if (v.n != FY_NODEID_LEN || memcmp(v.p, c->id.key, FY_NODEID_LEN) != 0) {
    char hex[FY_NODEID_SHORT_LEN + 1];
    fy_nodeid_to_short(&c->id, hex);
    return fy_err_set(fy_txn_err(t), FY_EINVAL,
                      "the store belongs to another coordinator key (this key is %s): wrong key_file?", hex);
  }
  return 0;
}

int fy_coord_check_store(struct fy_coord *c, struct fy_err *err) {
  return fy_store_read(c->store, check_body, c, err);
}

/* ---- commands ------------------------------------------------------------------- */

enum fy_cmd_refusal fy_coord_refuse(struct fy_err *why, enum fy_cmd_refusal r, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  if (why) {
    why->code = FY_EINVAL;
    vsnprintf(why->msg, sizeof(why->msg), fmt, ap);
  }
  va_end(ap);
  return r;
}

/* The args of every non-admin command, one decoder: absent fields stay zero. */
struct cmd_args {
  bool has_id, has_hash, has_labels, has_ticket_id;
  struct fy_nodeid id;
  uint8_t hash[32];
  struct fy_labels labels;
  uint64_t expires, uses;
  char ticket_id[17];
};

static int decode_args(const struct fy_cmd_body *b, struct cmd_args *out, struct fy_err *why) {
  memset(out, 0, sizeof(*out));
  struct fy_mpmap m;
  if (mp_map(&m, b->args, b->args_len, "args", why) < 0)
    return FY_EINVAL;
  const msgpack_object *map = m.map;
  int rc = 0;
  out->has_id = fy_mp_bin(map, "id", out->id.key, FY_NODEID_LEN);
  out->has_hash = fy_mp_bin(map, "hash", out->hash, 32);
  out->has_ticket_id = fy_mp_str(map, "id", out->ticket_id, sizeof(out->ticket_id));
  out->has_labels = fy_mp_get(map, "labels") != NULL;
  if (out->has_labels && mp_labels(map, "labels", &out->labels, why) < 0)
    rc = FY_EINVAL;
  fy_mp_u64(map, "expires", &out->expires);
  fy_mp_u64(map, "uses", &out->uses);
  fy_mpmap_free(&m);
  return rc;
}

/* Queues an applied admin change to every enrolled agent (inside t). */
static int forward_statement(struct fy_coord *c, struct fy_txn *t, const uint8_t *env, size_t len) {
  uint64_t n;
  int rc = fy_store_count(t, tb(t, T_STATEMENTS), &n);
  if (rc < 0)
    return rc;
  uint8_t key[8];
  fy_be64_put(key, n + 1);
  if ((rc = fy_store_put(t, tb(t, T_STATEMENTS), fy_bytes_of(key, 8), fy_bytes_of(env, len))) < 0)
    return rc;
  struct fy_cursor *cur;
  if ((rc = fy_cursor_open(t, tb(t, T_AGENTS), fy_bytes_of(NULL, 0), &cur)) < 0)
    return rc;
  struct fy_bytes k;
  struct fy_nodeid ids[64];
  size_t nids = 0;
  for (;;) {
    int more = fy_cursor_next(cur, &k, NULL);
    if (more < 0) {
      fy_cursor_close(cur);
      return more;
    }
    if (more == 1 && k.n == FY_NODEID_LEN)
      memcpy(ids[nids++].key, k.p, FY_NODEID_LEN);
    /* Enqueueing writes the outbox's tables, not c.agents; batches keep the
     * id list small whatever the fleet's size. */
    if (nids == FY_ARRAY_LEN(ids) || (more == 0 && nids)) {
      struct fy_outbox_item items[FY_ARRAY_LEN(ids)];
      size_t ni = 0;
      for (size_t i = 0; i < nids; i++) {
        struct agent_rec a;
        if ((rc = get_agent(t, &ids[i], &a)) < 0) {
          fy_cursor_close(cur);
          return rc;
        }
        if (a.status == FY_AGENT_ENROLLED)
          items[ni++] = (struct fy_outbox_item){
              .dest = ids[i], .topic = FY_COORD_TOPIC_TRUST, .payload = fy_bytes_of(env, len)};
      }
      if (ni && (rc = fy_outbox_enqueue_txn(c->outbox, t, items, ni, NULL)) < 0) {
        fy_cursor_close(cur);
        return rc;
      }
      nids = 0;
    }
    if (more == 0)
      break;
  }
  fy_cursor_close(cur);
  return 0;
}

static int apply_admin(struct fy_coord *c, struct fy_txn *t, const struct fy_admin *signer,
                       const struct fy_cmd_body *b, const uint8_t *env, size_t len, uint64_t now,
                       enum fy_cmd_refusal *r, struct fy_err *why) {
  struct fy_admin next = {0}, target = {0};
  if (fy_admin_args_decode(b, &next, why) < 0) {
    *r = FY_CMD_INVALID_ARGS;
    return 0;
  }
  bool set = strcmp(b->cmd, "admin.set") == 0;
  int rc = get_admin(t, &next.key, &target);
  if (rc < 0)
    return rc;
  if (rc == 0 && !set) {
    char hex[FY_NODEID_SHORT_LEN + 1];
    fy_nodeid_to_short(&next.key, hex);
    *r = fy_coord_refuse(why, FY_CMD_NOT_FOUND, "admin %s does not exist", hex);
    return 0;
  }
  *r = fy_trust_check_admin_change(signer, rc == 1 ? &target : NULL, set ? &next : NULL, why);
  if (*r != FY_CMD_OK)
    return 0;
  if (set)
    rc = put_admin(t, &next, now, &b->issuer);
  else
    rc = fy_store_del(t, tb(t, T_ADMINS), ID_KEY(&next.key));
  if (rc < 0)
    return rc;
  return forward_statement(c, t, env, len);
}

static int apply_agents(struct fy_coord *c, struct fy_txn *t, const struct fy_cmd_body *b,
                        const struct cmd_args *a, uint64_t now, enum fy_cmd_refusal *r, struct fy_err *why) {
  char hex[FY_NODEID_SHORT_LEN + 1];
  if (!a->has_id) {
    *r = fy_coord_refuse(why, FY_CMD_INVALID_ARGS, "args: id (bin 32) is missing");
    return 0;
  }
  fy_nodeid_to_short(&a->id, hex);
  struct agent_rec rec;
  int rc = get_agent(t, &a->id, &rec);
  if (rc < 0)
    return rc;
  if (rc == 0) {
    *r = fy_coord_refuse(why, FY_CMD_NOT_FOUND, "agent %s has never connected", hex);
    return 0;
  }
  if (strcmp(b->cmd, "agents.approve") == 0) {
    if (rec.status == FY_AGENT_REVOKED) {
      *r = fy_coord_refuse(why, FY_CMD_CONFLICT, "agent %s is revoked", hex);
      return 0;
    }
    if (rec.status == FY_AGENT_ENROLLED && strcmp(rec.tenant, b->tenant) != 0) {
      *r = fy_coord_refuse(why, FY_CMD_CONFLICT, "agent %s is enrolled in tenant '%s' already", hex,
                           rec.tenant);
      return 0;
    }
    if (b->tenant[0] == '\0') {
      *r = fy_coord_refuse(why, FY_CMD_INVALID_ARGS, "approving needs a tenant");
      return 0;
    }
    if (rec.status != FY_AGENT_ENROLLED)
      rec.enrolled_at = now;
    rec.status = FY_AGENT_ENROLLED;
    snprintf(rec.tenant, sizeof(rec.tenant), "%s", b->tenant);
    if (a->has_labels)
      rec.labels = a->labels;
  } else {
    if (strcmp(rec.tenant, b->tenant) != 0) {
      *r = fy_coord_refuse(why, FY_CMD_FORBIDDEN_TENANT, "agent %s is in tenant '%s', the command names '%s'",
                           hex, rec.tenant, b->tenant);
      return 0;
    }
    rec.status = FY_AGENT_REVOKED;
    if (c->revoked)
      c->revoked(&a->id, c->revoked_user);
  }
  return put_agent(t, &a->id, &rec);
}

static int find_ticket_by_id(struct fy_txn *t, const char *id, uint8_t hash[32]) {
  struct fy_cursor *cur;
  int rc = fy_cursor_open(t, tb(t, T_TICKETS), fy_bytes_of(NULL, 0), &cur);
  if (rc < 0)
    return rc;
  struct fy_bytes k;
  int found = 0;
  while ((rc = fy_cursor_next(cur, &k, NULL)) == 1) {
    char hex[17];
    sodium_bin2hex(hex, sizeof(hex), k.p, 8);
    if (k.n == 32 && strcmp(hex, id) == 0) {
      memcpy(hash, k.p, 32);
      found = 1;
      break;
    }
  }
  fy_cursor_close(cur);
  return rc < 0 ? rc : found;
}

static int apply_enroll(struct fy_txn *t, const struct fy_cmd_body *b, const struct cmd_args *a, uint64_t now,
                        enum fy_cmd_refusal *r, struct fy_err *why) {
  struct ticket_rec rec;
  int rc;
  if (strcmp(b->cmd, "enroll.create") == 0) {
    if (!a->has_hash || a->expires <= now || b->tenant[0] == '\0') {
      *r = fy_coord_refuse(why, FY_CMD_INVALID_ARGS,
                           "args: enroll.create needs hash (bin 32), a future expires and a tenant");
      return 0;
    }
    if ((rc = get_ticket(t, a->hash, &rec)) != 0) {
      if (rc == 1)
        *r = fy_coord_refuse(why, FY_CMD_CONFLICT, "a ticket with this secret exists already");
      return rc < 0 ? rc : 0;
    }
    rec = (struct ticket_rec){.expires = a->expires, .uses = a->uses, .at = now, .by = b->issuer};
    snprintf(rec.tenant, sizeof(rec.tenant), "%s", b->tenant);
    rec.labels = a->labels;
    return put_ticket(t, a->hash, &rec);
  }
  uint8_t hash[32];
  if (!a->has_ticket_id || strlen(a->ticket_id) != 16) {
    *r = fy_coord_refuse(why, FY_CMD_INVALID_ARGS, "args: id (16 hex digits of a ticket) is missing");
    return 0;
  }
  if ((rc = find_ticket_by_id(t, a->ticket_id, hash)) <= 0) {
    if (rc == 0)
      *r = fy_coord_refuse(why, FY_CMD_NOT_FOUND, "no ticket %s", a->ticket_id);
    return rc;
  }
  if ((rc = get_ticket(t, hash, &rec)) < 0)
    return rc;
  if (strcmp(rec.tenant, b->tenant) != 0) {
    *r = fy_coord_refuse(why, FY_CMD_FORBIDDEN_TENANT, "ticket %s is for tenant '%s', the command names '%s'",
                         a->ticket_id, rec.tenant, b->tenant);
    return 0;
  }
  rec.revoked = true;
  return put_ticket(t, hash, &rec);
}

static int record_result(struct fy_txn *t, const uint8_t *env, size_t len, const struct fy_cmd_body *b,
                         bool decoded, enum fy_cmd_refusal r, const char *message, uint64_t now) {
  uint8_t id[FY_ENVELOPE_ID_LEN];
  fy_envelope_id(env, len, id);
  FY_AUTOBUF struct fy_buf buf = FY_BUF_INIT;
  msgpack_packer pk;
  msgpack_packer_init(&pk, &buf, fy_mp_buf_write);
  msgpack_pack_map(&pk, decoded ? 7 : 4);
  fy_mp_pack_kv_bool(&pk, "ok", r == FY_CMD_OK);
  fy_mp_pack_kv_str(&pk, "code", fy_cmd_refusal_name(r));
  fy_mp_pack_kv_str(&pk, "message", message);
  fy_mp_pack_kv_u64(&pk, "at", now);
  if (decoded) {
    fy_mp_pack_kv_str(&pk, "cmd", b->cmd);
    fy_mp_pack_kv_bin(&pk, "issuer", b->issuer.key, FY_NODEID_LEN);
    fy_mp_pack_kv_u64(&pk, "seq", b->seq);
  }
  return fy_store_put(t, tb(t, T_RESULTS), fy_bytes_of(id, sizeof(id)), fy_bytes_of(buf.data, buf.len));
}

int fy_coord_apply(struct fy_coord *c, struct fy_txn *t, const uint8_t *env, size_t len, uint64_t now_ms,
                   struct fy_err *why) {
  struct fy_err local = {0};
  if (!why)
    why = &local;
  fy_err_clear(why);
  struct fy_envelope e;
  struct fy_cmd_body b;
  memset(&b, 0, sizeof(b));
  enum fy_cmd_refusal r = fy_cmd_check(env, len, &c->id, now_ms, &e, &b, why);
  /* Past these two the body decoded and its signature verified. */
  bool decoded = r != FY_CMD_MALFORMED && r != FY_CMD_BAD_SIGNATURE;
  int rc = 0;
  struct fy_admin signer;
  if (r == FY_CMD_OK) {
    if ((rc = get_admin(t, &b.issuer, &signer)) < 0)
      return rc;
    if (rc == 0) {
      char hex[FY_NODEID_SHORT_LEN + 1];
      fy_nodeid_to_short(&b.issuer, hex);
      r = fy_coord_refuse(why, FY_CMD_UNKNOWN_SIGNER, "signer %s is not an admin of this coordinator", hex);
    }
  }
  if (r == FY_CMD_OK) {
    struct fy_bytes v;
    if ((rc = fy_store_get(t, tb(t, T_SEQ), ID_KEY(&b.issuer), &v)) < 0)
      return rc;
    uint64_t last = rc == 1 && v.n == 8 ? fy_be64_get(v.p) : 0;
    if (b.seq <= last) {
      r = fy_coord_refuse(why, FY_CMD_REPLAYED, "seq %" PRIu64 " is not above %" PRIu64 ", the issuer's last",
                          b.seq, last);
    } else {
      /* Consumed from here on, whatever the later checks say. */
      uint8_t seq[8];
      fy_be64_put(seq, b.seq);
      if ((rc = fy_store_put(t, tb(t, T_SEQ), ID_KEY(&b.issuer), fy_bytes_of(seq, 8))) < 0)
        return rc;
      r = fy_trust_authorize(&signer, &b, why);
    }
  }
  if (r == FY_CMD_OK) {
    if (strncmp(b.cmd, "admin.", 6) == 0) {
      rc = apply_admin(c, t, &signer, &b, env, len, now_ms, &r, why);
    } else {
      struct cmd_args a;
      if (decode_args(&b, &a, why) < 0)
        r = FY_CMD_INVALID_ARGS;
      else if (strncmp(b.cmd, "agents.", 7) == 0)
        rc = apply_agents(c, t, &b, &a, now_ms, &r, why);
      else if (strncmp(b.cmd, "enroll.", 7) == 0)
        rc = apply_enroll(t, &b, &a, now_ms, &r, why);
      else
        rc = fy_coord_rollout_apply(c, t, &b, now_ms, &r, why);
    }
    if (rc < 0)
      return rc;
  }
  if ((rc = record_result(t, env, len, &b, decoded, r, r == FY_CMD_OK ? "" : why->msg, now_ms)) < 0)
    return rc;
  if (c->log) {
    char hex[FY_NODEID_SHORT_LEN + 1], seq[24];
    fy_nodeid_to_short(&b.issuer, hex);
    snprintf(seq, sizeof(seq), "%" PRIu64, b.seq);
    if (r == FY_CMD_OK)
      fy_info(c->log, "command.applied", "cmd", b.cmd, "issuer", hex, "seq", seq, "tenant", b.tenant);
    else
      fy_warn(c->log, "command.refused", "cmd", decoded ? b.cmd : "?", "issuer", decoded ? hex : "?", "code",
              fy_cmd_refusal_name(r), "reason", why->msg);
  }
  return (int)r;
}

/* ---- inbox handlers ----------------------------------------------------------- */

static int on_command(struct fy_txn *t, const struct fy_nodeid *sender, const char *topic,
                      const struct fy_inbox_msg *m, void *user) {
  (void)sender;
  (void)topic;
  struct fy_coord *c = user;
  int rc = fy_coord_apply(c, t, m->payload.p, m->payload.n, now_of(c), NULL);
  if (rc > 0)
    rc = 0;
  if (rc == 0 && c->changed)
    c->changed(c->changed_user);
  return rc;
}

static int on_facts(struct fy_txn *t, const struct fy_nodeid *sender, const char *topic,
                    const struct fy_inbox_msg *m, void *user) {
  (void)topic;
  struct fy_coord *c = user;
  char hex[FY_NODEID_SHORT_LEN + 1];
  fy_nodeid_to_short(sender, hex);
  struct agent_rec rec;
  int rc = get_agent(t, sender, &rec);
  if (rc < 0)
    return rc;
  if (rec.status != FY_AGENT_ENROLLED)
    return fy_err_set(fy_txn_err(t), FY_EPERM, "facts from %s, which is %s", hex,
                      fy_agent_status_name(rec.status));
  struct fy_facts f;
  struct fy_err ferr = {0};
  if (fy_facts_decode(m->payload.p, m->payload.n, &f, &ferr) < 0) {
    /* A bad message must not block the agent's queue forever: drop it, loudly. */
    if (c->log)
      fy_warn(c->log, "facts.bad", "agent", hex, "reason", ferr.msg);
    return 0;
  }
  uint64_t now = now_of(c);
  rec_from_facts(&rec, &f);
  note_update_prefs(c, &rec);
  rec.last_seen = now;
  if ((rc = put_agent(t, sender, &rec)) < 0)
    return rc;
  uint8_t *latest;
  if ((rc = fy_store_reserve(t, tb(t, T_FACTS), ID_KEY(sender), 8 + m->payload.n, &latest)) < 0)
    return rc;
  fy_be64_put(latest, now);
  memcpy(latest + 8, m->payload.p, m->payload.n);
  uint8_t hkey[FY_NODEID_LEN + 8];
  memcpy(hkey, sender->key, FY_NODEID_LEN);
  fy_be64_put(hkey + FY_NODEID_LEN, now);
  if ((rc = fy_store_put(t, tb(t, T_HISTORY), fy_bytes_of(hkey, sizeof(hkey)), m->payload)) < 0)
    return rc;
  /* Bound the history: drop the oldest beyond FY_COORD_HISTORY_MAX. */
  struct fy_cursor *cur;
  if ((rc = fy_cursor_open(t, tb(t, T_HISTORY), ID_KEY(sender), &cur)) < 0)
    return rc;
  size_t count = 0;
  while ((rc = fy_cursor_prev(cur, NULL, NULL)) == 1)
    if (++count > FY_COORD_HISTORY_MAX && (rc = fy_cursor_del(cur)) < 0)
      break;
  fy_cursor_close(cur);
  if (rc < 0)
    return rc;
  if (c->log)
    fy_debug(c->log, "facts.stored", "agent", hex, "host", f.hostname);
  return 0;
}

int fy_coord_register(struct fy_coord *c, struct fy_inbox *inbox, struct fy_err *err) {
  int rc = fy_inbox_register(inbox, FY_COORD_TOPIC_COMMAND, on_command, c, err);
  if (rc == 0)
    rc = fy_inbox_register(inbox, FY_COORD_TOPIC_FACTS, on_facts, c, err);
  return rc;
}

/* ---- enrollment ---------------------------------------------------------------- */

struct enroll {
  struct fy_coord *c;
  const struct fy_nodeid *agent;
  bool has_secret;
  uint8_t secret[32];
  const uint8_t *facts;
  size_t facts_len;
  struct fy_facts f;
  bool has_facts;
  struct fy_buf *reply;
  uint64_t now;
};

static int pack_roots_and_statements(struct fy_txn *t, msgpack_packer *pk) {
  struct fy_cursor *cur;
  int rc = fy_cursor_open(t, tb(t, T_ADMINS), fy_bytes_of(NULL, 0), &cur);
  if (rc < 0)
    return rc;
  struct fy_nodeid roots[64];
  size_t nroots = 0;
  struct fy_bytes k;
  while ((rc = fy_cursor_next(cur, &k, NULL)) == 1 && nroots < FY_ARRAY_LEN(roots)) {
    struct fy_admin a;
    struct fy_nodeid id;
    memcpy(id.key, k.p, FY_NODEID_LEN);
    int got = get_admin(t, &id, &a);
    if (got < 0) {
      rc = got;
      break;
    }
    if (a.root)
      roots[nroots++] = id;
  }
  fy_cursor_close(cur);
  if (rc < 0)
    return rc;
  fy_mp_pack_str(pk, "roots");
  msgpack_pack_array(pk, nroots);
  for (size_t i = 0; i < nroots; i++)
    msgpack_pack_bin_with_body(pk, roots[i].key, FY_NODEID_LEN);
  uint64_t n;
  if ((rc = fy_store_count(t, tb(t, T_STATEMENTS), &n)) < 0)
    return rc;
  fy_mp_pack_str(pk, "statements");
  msgpack_pack_array(pk, (uint32_t)n);
  if ((rc = fy_cursor_open(t, tb(t, T_STATEMENTS), fy_bytes_of(NULL, 0), &cur)) < 0)
    return rc;
  struct fy_bytes v;
  uint64_t written = 0;
  while (written < n && (rc = fy_cursor_next(cur, NULL, &v)) == 1) {
    msgpack_pack_bin_with_body(pk, v.p, v.n);
    written++;
  }
  fy_cursor_close(cur);
  return rc < 0 ? rc : 0;
}

static int enroll_body(struct fy_txn *t, void *user) {
  struct enroll *e = user;
  e->reply->len = 0; /* the body may run again when the map grows */
  struct fy_err *err = fy_txn_err(t);
  char hex[FY_NODEID_SHORT_LEN + 1];
  fy_nodeid_to_short(e->agent, hex);
  struct agent_rec rec;
  int rc = get_agent(t, e->agent, &rec);
  if (rc < 0)
    return rc;
  bool known = rc == 1;
  if (rec.status == FY_AGENT_REVOKED)
    return fy_err_set(err, FY_EPERM, "agent %s is revoked", hex);
  if (!known)
    rec.first_seen = e->now;
  rec.last_seen = e->now;
  if (e->has_facts) {
    rec_from_facts(&rec, &e->f);
    note_update_prefs(e->c, &rec);
  }
  if (rec.status != FY_AGENT_ENROLLED && e->has_secret) {
    uint8_t hash[32];
    fy_ticket_secret_hash(e->secret, hash);
    struct ticket_rec tk;
    if ((rc = get_ticket(t, hash, &tk)) < 0)
      return rc;
    if (rc == 0)
      return fy_err_set(err, FY_EPERM,
                        "ticket refused: the coordinator does not know it (forged, or made for another "
                        "coordinator)");
    if (tk.revoked)
      return fy_err_set(err, FY_EPERM, "ticket refused: an admin revoked it");
    if (tk.expires <= e->now)
      return fy_err_set(err, FY_EPERM, "ticket expired %" PRIu64 " s ago", (e->now - tk.expires) / 1000);
    if (tk.uses && tk.used >= tk.uses)
      return fy_err_set(err, FY_EPERM, "ticket used up (%" PRIu64 " of %" PRIu64 " uses)", tk.used, tk.uses);
    tk.used++;
    if ((rc = put_ticket(t, hash, &tk)) < 0)
      return rc;
    rec.status = FY_AGENT_ENROLLED;
    rec.enrolled_at = e->now;
    snprintf(rec.tenant, sizeof(rec.tenant), "%s", tk.tenant);
    rec.labels = tk.labels;
  } else if (rec.status != FY_AGENT_ENROLLED) {
    rec.status = FY_AGENT_PENDING;
  }
  if ((rc = put_agent(t, e->agent, &rec)) < 0)
    return rc;
  if (e->has_facts) {
    uint8_t *latest;
    if ((rc = fy_store_reserve(t, tb(t, T_FACTS), ID_KEY(e->agent), 8 + e->facts_len, &latest)) < 0)
      return rc;
    fy_be64_put(latest, e->now);
    memcpy(latest + 8, e->facts, e->facts_len);
  }
  msgpack_packer pk;
  msgpack_packer_init(&pk, e->reply, fy_mp_buf_write);
  bool enrolled = rec.status == FY_AGENT_ENROLLED;
  msgpack_pack_map(&pk, enrolled ? 5 : 1);
  fy_mp_pack_kv_str(&pk, "status", fy_agent_status_name(rec.status));
  if (enrolled) {
    fy_mp_pack_kv_str(&pk, "tenant", rec.tenant);
    fy_mp_pack_str(&pk, "labels");
    fy_labels_pack(&rec.labels, &pk);
    if ((rc = pack_roots_and_statements(t, &pk)) < 0)
      return rc;
  }
  return 0;
}

int fy_coord_enroll(struct fy_coord *c, const struct fy_nodeid *agent, const uint8_t *req, size_t len,
                    struct fy_buf *reply, struct fy_err *err) {
  struct enroll e = {.c = c, .agent = agent, .reply = reply, .now = now_of(c)};
  struct fy_mpmap m;
  int rc = mp_map(&m, req, len, "enroll request", err);
  if (rc < 0)
    return rc;
  const msgpack_object *s = fy_mp_get(m.map, "secret"), *facts = fy_mp_get(m.map, "facts");
  if (s && (s->type != MSGPACK_OBJECT_BIN || s->via.bin.size != 32)) {
    fy_mpmap_free(&m);
    return fy_err_set(err, FY_EINVAL, "enroll request: secret is not 32 bytes of bin");
  }
  if (s) {
    e.has_secret = true;
    memcpy(e.secret, s->via.bin.ptr, 32);
  }
  /* What is stored is what the decoder checked, encoded again by us. */
  FY_AUTOBUF struct fy_buf fb = FY_BUF_INIT;
  if (facts) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_object(&pk, *facts);
    rc = fy_facts_decode((const uint8_t *)sb.data, sb.size, &e.f, err);
    if (rc == 0)
      rc = fy_facts_encode(&e.f, &fb, err);
    msgpack_sbuffer_destroy(&sb);
    if (rc < 0) {
      fy_mpmap_free(&m);
      sodium_memzero(e.secret, sizeof(e.secret));
      return fy_err_prefix(err, "enroll request: facts");
    }
    e.has_facts = true;
    e.facts = fb.data;
    e.facts_len = fb.len;
  }
  fy_mpmap_free(&m);
  rc = fy_store_write(c->store, enroll_body, &e, err);
  sodium_memzero(e.secret, sizeof(e.secret));
  return rc < 0 ? rc : 0;
}

/* ---- queries ------------------------------------------------------------------- */

struct query {
  struct fy_coord *c;
  struct fy_admin caller;
  char q[16];
  char id_prefix[FY_NODEID_HEX_LEN + 1];
  uint8_t result_id[32];
  bool has_result_id;
  msgpack_packer pk;
  int rpc_code;
};

static bool visible_agent(const struct fy_admin *caller, const struct agent_rec *a) {
  if (a->status == FY_AGENT_PENDING || a->tenant[0] == '\0')
    return caller->role >= FY_ROLE_OPERATOR || fy_admin_covers(caller, "");
  return fy_admin_covers(caller, a->tenant);
}

static void pack_agent(struct query *q, const struct fy_nodeid *id, const struct agent_rec *a) {
  msgpack_packer *pk = &q->pk;
  msgpack_pack_map(pk, 12);
  fy_mp_pack_kv_bin(pk, "id", id->key, FY_NODEID_LEN);
  fy_mp_pack_kv_str(pk, "status", fy_agent_status_name(a->status));
  fy_mp_pack_kv_str(pk, "tenant", a->tenant);
  fy_mp_pack_str(pk, "labels");
  fy_labels_pack(&a->labels, pk);
  fy_mp_pack_kv_str(pk, "hostname", a->hostname);
  fy_mp_pack_kv_str(pk, "version", a->version);
  fy_mp_pack_kv_bool(pk, "online", q->c->online && q->c->online(id, q->c->online_user));
  fy_mp_pack_kv_u64(pk, "last_seen", a->last_seen);
  fy_mp_pack_kv_u64(pk, "enrolled_at", a->enrolled_at);
  fy_mp_pack_kv_str(pk, "update_mode", fy_update_mode_name(a->update.mode));
  fy_mp_pack_kv_str(pk, "channel", a->update.channel[0] ? a->update.channel : FY_CHANNEL_DEFAULT);
  fy_mp_pack_kv_str(pk, "assigned", a->update.assigned);
}

static int q_agents(struct fy_txn *t, struct query *q) {
  struct fy_cursor *cur;
  int rc = fy_cursor_open(t, tb(t, T_AGENTS), fy_bytes_of(NULL, 0), &cur);
  if (rc < 0)
    return rc;
  /* Two passes: msgpack needs the count first. */
  uint32_t n = 0;
  struct fy_bytes k;
  struct agent_rec a;
  struct fy_nodeid id;
  while ((rc = fy_cursor_next(cur, &k, NULL)) == 1) {
    memcpy(id.key, k.p, FY_NODEID_LEN);
    if ((rc = get_agent(t, &id, &a)) < 0)
      break;
    n += visible_agent(&q->caller, &a);
  }
  fy_cursor_close(cur);
  if (rc < 0 || (rc = fy_cursor_open(t, tb(t, T_AGENTS), fy_bytes_of(NULL, 0), &cur)) < 0)
    return rc;
  msgpack_pack_map(&q->pk, 1);
  fy_mp_pack_str(&q->pk, "agents");
  msgpack_pack_array(&q->pk, n);
  while (n && (rc = fy_cursor_next(cur, &k, NULL)) == 1) {
    memcpy(id.key, k.p, FY_NODEID_LEN);
    if ((rc = get_agent(t, &id, &a)) < 0)
      break;
    if (visible_agent(&q->caller, &a)) {
      pack_agent(q, &id, &a);
      n--;
    }
  }
  fy_cursor_close(cur);
  return rc < 0 ? rc : 0;
}

static int q_agent(struct fy_txn *t, struct query *q) {
  size_t plen = strlen(q->id_prefix);
  uint8_t prefix[FY_NODEID_LEN];
  size_t bin_len = 0;
  if (plen < 4 ||
      sodium_hex2bin(prefix, sizeof(prefix), q->id_prefix, plen & ~(size_t)1, NULL, &bin_len, NULL) != 0) {
    q->rpc_code = FY_RPC_INVALID_ARGUMENT;
    return fy_err_set(fy_txn_err(t), FY_EINVAL, "agent id '%s': give at least 4 hex digits", q->id_prefix);
  }
  struct fy_cursor *cur;
  int rc = fy_cursor_open(t, tb(t, T_AGENTS), fy_bytes_of(prefix, bin_len), &cur);
  if (rc < 0)
    return rc;
  struct fy_bytes k;
  struct fy_nodeid id, match;
  int found = 0;
  while ((rc = fy_cursor_next(cur, &k, NULL)) == 1) {
    char hex[FY_NODEID_HEX_LEN + 1];
    memcpy(id.key, k.p, FY_NODEID_LEN);
    fy_nodeid_to_hex(&id, hex);
    if (strncmp(hex, q->id_prefix, plen) != 0)
      continue;
    match = id;
    if (++found > 1)
      break;
  }
  fy_cursor_close(cur);
  if (rc < 0)
    return rc;
  if (found > 1) {
    q->rpc_code = FY_RPC_INVALID_ARGUMENT;
    return fy_err_set(fy_txn_err(t), FY_EINVAL, "agent id '%s' is ambiguous: give more digits", q->id_prefix);
  }
  struct agent_rec a;
  if (found == 1 && (rc = get_agent(t, &match, &a)) < 0)
    return rc;
  if (found == 0 || !visible_agent(&q->caller, &a)) {
    q->rpc_code = FY_RPC_NOT_FOUND;
    return fy_err_set(fy_txn_err(t), FY_ENOENT, "no agent %s", q->id_prefix);
  }
  msgpack_pack_map(&q->pk, 5);
  fy_mp_pack_str(&q->pk, "agent");
  pack_agent(q, &match, &a);
  fy_mp_pack_str(&q->pk, "update");
  if ((rc = fy_coord_rollout_pack_update(t, &match, &q->pk)) < 0)
    return rc;
  struct fy_bytes v;
  if ((rc = fy_store_get(t, tb(t, T_FACTS), ID_KEY(&match), &v)) < 0)
    return rc;
  fy_mp_pack_str(&q->pk, "facts");
  /* The stored facts are one msgpack map: write them as they are. */
  if (rc == 1 && v.n > 8) {
    q->pk.callback(q->pk.data, (const char *)v.p + 8, v.n - 8);
  } else {
    msgpack_pack_map(&q->pk, 0);
  }
  fy_mp_pack_kv_u64(&q->pk, "facts_at", rc == 1 && v.n >= 8 ? fy_be64_get(v.p) : 0);
  if ((rc = fy_cursor_open(t, tb(t, T_HISTORY), ID_KEY(&match), &cur)) < 0)
    return rc;
  uint32_t n = 0;
  while ((rc = fy_cursor_next(cur, NULL, NULL)) == 1)
    n++;
  fy_cursor_close(cur);
  if (rc < 0 || (rc = fy_cursor_open(t, tb(t, T_HISTORY), ID_KEY(&match), &cur)) < 0)
    return rc;
  fy_mp_pack_str(&q->pk, "history");
  msgpack_pack_array(&q->pk, n);
  while (n-- && (rc = fy_cursor_next(cur, &k, &v)) == 1) {
    msgpack_pack_map(&q->pk, 2);
    fy_mp_pack_kv_u64(&q->pk, "at", k.n == FY_NODEID_LEN + 8 ? fy_be64_get(k.p + FY_NODEID_LEN) : 0);
    fy_mp_pack_str(&q->pk, "facts");
    q->pk.callback(q->pk.data, (const char *)v.p, v.n);
  }
  fy_cursor_close(cur);
  return rc < 0 ? rc : 0;
}

static int q_admins(struct fy_txn *t, struct query *q) {
  uint64_t n;
  int rc = fy_store_count(t, tb(t, T_ADMINS), &n);
  if (rc < 0)
    return rc;
  struct fy_cursor *cur;
  if ((rc = fy_cursor_open(t, tb(t, T_ADMINS), fy_bytes_of(NULL, 0), &cur)) < 0)
    return rc;
  msgpack_pack_map(&q->pk, 1);
  fy_mp_pack_str(&q->pk, "admins");
  msgpack_pack_array(&q->pk, (uint32_t)n);
  struct fy_bytes k;
  while (n-- && (rc = fy_cursor_next(cur, &k, NULL)) == 1) {
    struct fy_nodeid id;
    struct fy_admin a;
    memcpy(id.key, k.p, FY_NODEID_LEN);
    if ((rc = get_admin(t, &id, &a)) < 0)
      break;
    msgpack_pack_map(&q->pk, 4);
    fy_mp_pack_kv_bin(&q->pk, "key", id.key, FY_NODEID_LEN);
    fy_mp_pack_kv_str(&q->pk, "role", fy_role_name(a.role));
    fy_mp_pack_str(&q->pk, "tenants");
    msgpack_pack_array(&q->pk, a.ntenants);
    for (size_t i = 0; i < a.ntenants; i++)
      fy_mp_pack_str(&q->pk, a.tenants[i]);
    fy_mp_pack_kv_bool(&q->pk, "root", a.root);
  }
  fy_cursor_close(cur);
  return rc < 0 ? rc : 0;
}

static int q_tickets(struct fy_txn *t, struct query *q) {
  struct fy_cursor *cur;
  struct fy_bytes k;
  struct ticket_rec r;
  uint32_t n = 0;
  int rc;
  for (int pass = 0; pass < 2; pass++) {
    if ((rc = fy_cursor_open(t, tb(t, T_TICKETS), fy_bytes_of(NULL, 0), &cur)) < 0)
      return rc;
    if (pass == 1) {
      msgpack_pack_map(&q->pk, 1);
      fy_mp_pack_str(&q->pk, "tickets");
      msgpack_pack_array(&q->pk, n);
    }
    while ((rc = fy_cursor_next(cur, &k, NULL)) == 1) {
      if (k.n != 32 || (rc = get_ticket(t, k.p, &r)) < 0)
        break;
      if (!fy_admin_covers(&q->caller, r.tenant))
        continue;
      if (pass == 0) {
        n++;
        continue;
      }
      char id[17];
      sodium_bin2hex(id, sizeof(id), k.p, 8);
      msgpack_pack_map(&q->pk, 9);
      fy_mp_pack_kv_str(&q->pk, "id", id);
      fy_mp_pack_kv_str(&q->pk, "tenant", r.tenant);
      fy_mp_pack_str(&q->pk, "labels");
      fy_labels_pack(&r.labels, &q->pk);
      fy_mp_pack_kv_u64(&q->pk, "expires", r.expires);
      fy_mp_pack_kv_u64(&q->pk, "uses", r.uses);
      fy_mp_pack_kv_u64(&q->pk, "used", r.used);
      fy_mp_pack_kv_bool(&q->pk, "revoked", r.revoked);
      fy_mp_pack_kv_bin(&q->pk, "by", r.by.key, FY_NODEID_LEN);
      fy_mp_pack_kv_u64(&q->pk, "at", r.at);
    }
    fy_cursor_close(cur);
    if (rc < 0)
      return rc;
  }
  return 0;
}

static int q_status(struct fy_txn *t, struct query *q) {
  struct fy_coord_counts n = {0};
  struct fy_cursor *cur;
  int rc = fy_cursor_open(t, tb(t, T_AGENTS), fy_bytes_of(NULL, 0), &cur);
  if (rc < 0)
    return rc;
  struct fy_bytes k;
  uint64_t online = 0;
  while ((rc = fy_cursor_next(cur, &k, NULL)) == 1) {
    struct fy_nodeid id;
    struct agent_rec a;
    memcpy(id.key, k.p, FY_NODEID_LEN);
    if ((rc = get_agent(t, &id, &a)) < 0)
      break;
    if (!visible_agent(&q->caller, &a))
      continue;
    n.enrolled += a.status == FY_AGENT_ENROLLED;
    n.pending += a.status == FY_AGENT_PENDING;
    n.revoked += a.status == FY_AGENT_REVOKED;
    online += q->c->online && q->c->online(&id, q->c->online_user);
  }
  fy_cursor_close(cur);
  if (rc < 0)
    return rc;
  msgpack_packer *pk = &q->pk;
  msgpack_pack_map(pk, 6);
  fy_mp_pack_kv_bin(pk, "coordinator", q->c->id.key, FY_NODEID_LEN);
  fy_mp_pack_str(pk, "addrs");
  msgpack_pack_array(pk, q->c->naddrs);
  for (size_t i = 0; i < q->c->naddrs; i++)
    fy_mp_pack_str(pk, q->c->addrs[i]);
  fy_mp_pack_kv_str(pk, "version", FY_VERSION);
  fy_mp_pack_kv_u64(pk, "now", now_of(q->c));
  fy_mp_pack_str(pk, "you");
  msgpack_pack_map(pk, 2);
  fy_mp_pack_kv_str(pk, "role", fy_role_name(q->caller.role));
  fy_mp_pack_str(pk, "tenants");
  msgpack_pack_array(pk, q->caller.ntenants);
  for (size_t i = 0; i < q->caller.ntenants; i++)
    fy_mp_pack_str(pk, q->caller.tenants[i]);
  fy_mp_pack_str(pk, "agents");
  msgpack_pack_map(pk, 4);
  fy_mp_pack_kv_u64(pk, "enrolled", n.enrolled);
  fy_mp_pack_kv_u64(pk, "pending", n.pending);
  fy_mp_pack_kv_u64(pk, "revoked", n.revoked);
  fy_mp_pack_kv_u64(pk, "online", online);
  return 0;
}

static int q_result(struct fy_txn *t, struct query *q) {
  struct fy_bytes v;
  int rc = fy_store_get(t, tb(t, T_RESULTS), fy_bytes_of(q->result_id, 32), &v);
  if (rc < 0)
    return rc;
  if (rc == 0) {
    q->rpc_code = FY_RPC_NOT_FOUND;
    return fy_err_set(fy_txn_err(t), FY_ENOENT, "no result for that command (not applied yet)");
  }
  q->pk.callback(q->pk.data, (const char *)v.p, v.n);
  return 0;
}

static int query_body(struct fy_txn *t, void *user) {
  struct query *q = user;
  int rc = get_admin(t, &q->caller.key, &q->caller);
  if (rc < 0)
    return rc;
  if (rc == 0) {
    char hex[FY_NODEID_SHORT_LEN + 1];
    fy_nodeid_to_short(&q->caller.key, hex);
    q->rpc_code = FY_RPC_PERMISSION_DENIED;
    return fy_err_set(fy_txn_err(t), FY_EPERM, "%s is not an admin of this coordinator", hex);
  }
  if (strcmp(q->q, "status") == 0)
    return q_status(t, q);
  if (strcmp(q->q, "agents") == 0)
    return q_agents(t, q);
  if (strcmp(q->q, "agent") == 0)
    return q_agent(t, q);
  if (strcmp(q->q, "admins") == 0)
    return q_admins(t, q);
  if (strcmp(q->q, "tickets") == 0)
    return q_tickets(t, q);
  if ((rc = fy_coord_rollout_query(t, &q->caller, q->q, q->id_prefix, &q->pk, &q->rpc_code)) != 0)
    return rc < 0 ? rc : 0;
  if (strcmp(q->q, "result") == 0) {
    if (!q->has_result_id) {
      q->rpc_code = FY_RPC_INVALID_ARGUMENT;
      return fy_err_set(fy_txn_err(t), FY_EINVAL, "query result: id (bin 32) is missing");
    }
    return q_result(t, q);
  }
  q->rpc_code = FY_RPC_INVALID_ARGUMENT;
  return fy_err_set(fy_txn_err(t), FY_EINVAL, "unknown query '%s'", q->q);
}

int fy_coord_query(struct fy_coord *c, const struct fy_nodeid *caller, const uint8_t *req, size_t len,
                   struct fy_buf *reply, int *rpc_code, struct fy_err *err) {
  struct query q = {.c = c, .rpc_code = FY_RPC_INTERNAL};
  q.caller.key = *caller;
  *rpc_code = FY_RPC_INVALID_ARGUMENT;
  struct fy_mpmap m;
  int rc = mp_map(&m, req, len, "query", err);
  if (rc < 0)
    return rc;
  if (!fy_mp_str(m.map, "q", q.q, sizeof(q.q))) {
    fy_mpmap_free(&m);
    return fy_err_set(err, FY_EINVAL, "query: q (a string) is missing");
  }
  fy_mp_str(m.map, "id", q.id_prefix, sizeof(q.id_prefix));
  q.has_result_id = fy_mp_bin(m.map, "id", q.result_id, 32);
  fy_mpmap_free(&m);
  reply->len = 0;
  msgpack_packer_init(&q.pk, reply, fy_mp_buf_write);
  rc = fy_store_read(c->store, query_body, &q, err);
  if (rc < 0)
    *rpc_code = q.rpc_code;
  return rc < 0 ? rc : 0;
}

struct status_q {
  const struct fy_nodeid *id;
  struct agent_rec a;
};

static int status_body(struct fy_txn *t, void *user) {
  struct status_q *s = user;
  return get_agent(t, s->id, &s->a);
}

enum fy_agent_status fy_coord_agent_status(struct fy_coord *c, const struct fy_nodeid *agent) {
  struct status_q s = {.id = agent};
  if (fy_store_read(c->store, status_body, &s, NULL) < 0)
    return FY_AGENT_UNKNOWN;
  return s.a.status;
}

static int counts_body(struct fy_txn *t, void *user) {
  struct fy_coord_counts *n = user;
  int rc = fy_store_count(t, tb(t, T_ADMINS), &n->admins);
  if (rc < 0 || (rc = fy_store_count(t, tb(t, T_TICKETS), &n->tickets)) < 0)
    return rc;
  struct fy_cursor *cur;
  if ((rc = fy_cursor_open(t, tb(t, T_AGENTS), fy_bytes_of(NULL, 0), &cur)) < 0)
    return rc;
  struct fy_bytes k;
  while ((rc = fy_cursor_next(cur, &k, NULL)) == 1) {
    struct fy_nodeid id;
    struct agent_rec a;
    memcpy(id.key, k.p, FY_NODEID_LEN);
    if ((rc = get_agent(t, &id, &a)) < 0)
      break;
    n->enrolled += a.status == FY_AGENT_ENROLLED;
    n->pending += a.status == FY_AGENT_PENDING;
    n->revoked += a.status == FY_AGENT_REVOKED;
  }
  fy_cursor_close(cur);
  return rc < 0 ? rc : 0;
}

int fy_coord_get_agent(struct fy_txn *t, const struct fy_nodeid *id, struct fy_coord_agent *out) {
  struct agent_rec r;
  int rc = get_agent(t, id, &r);
  memset(out, 0, sizeof(*out));
  if (rc != 1)
    return rc;
  out->status = r.status;
  out->labels = r.labels;
  snprintf(out->tenant, sizeof(out->tenant), "%s", r.tenant);
  snprintf(out->version, sizeof(out->version), "%s", r.version);
  out->update = r.update;
  return 1;
}

int fy_coord_each_agent(struct fy_txn *t,
                        int (*fn)(const struct fy_nodeid *id, const struct fy_coord_agent *a, void *user),
                        void *user) {
  struct fy_cursor *cur;
  int rc = fy_cursor_open(t, tb(t, T_AGENTS), fy_bytes_of(NULL, 0), &cur);
  if (rc < 0)
    return rc;
  struct fy_bytes k;
  while ((rc = fy_cursor_next(cur, &k, NULL)) == 1) {
    struct fy_nodeid id;
    struct agent_rec r;
    memcpy(id.key, k.p, FY_NODEID_LEN);
    if ((rc = get_agent(t, &id, &r)) < 0)
      break;
    struct fy_coord_agent a = {.status = r.status, .labels = r.labels, .update = r.update};
    snprintf(a.tenant, sizeof(a.tenant), "%s", r.tenant);
    snprintf(a.version, sizeof(a.version), "%s", r.version);
    if ((rc = fn(&id, &a, user)) != 0)
      break;
  }
  fy_cursor_close(cur);
  return rc;
}

int fy_coord_counts(struct fy_coord *c, struct fy_coord_counts *out, struct fy_err *err) {
  memset(out, 0, sizeof(*out));
  return fy_store_read(c->store, counts_body, out, err);
}
