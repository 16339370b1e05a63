/* Admin commands and the admin's session with the coordinator; see admin_cmd.h. */
#include "admin/admin_cmd.h"

#include <errno.h>
#include <inttypes.h>
#include <msgpack.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "base/cleanup.h"
#include "base/mpmap.h"
#include "node/node.h"
#include "outbox/outbox.h"
#include "rpc/rpc.h"

/* ---- the admin's tables ------------------------------------------------------- */

/* admin.meta: "seq" -> be64 last seq. admin.sent: envelope id -> be64 seq,
 * be64 queued_at, cmd (the rest). */
static const struct fy_store_table_def admin_tables[] = {{"admin.meta", 0}, {"admin.sent", 0}};
const struct fy_store_schema fy_admin_schema = {"admin", admin_tables, FY_ARRAY_LEN(admin_tables), NULL, 0};

#define SENT_FIXED 16

static uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t fy_admin_next_seq(uint64_t last, uint64_t now) {
  return last + 1 > now ? last + 1 : now;
}

/* ---- building ------------------------------------------------------------------- */

int fy_admin_cmd_seal(const struct fy_admin_cmd *c, struct fy_buf *out, uint8_t id[FY_ENVELOPE_ID_LEN],
                      struct fy_err *err) {
  struct fy_cmd_body b = {
      .issuer = c->key->id,
      .coordinator = c->coordinator,
      .seq = c->seq,
      .issued_at = c->now_ms,
      .expires_at = c->now_ms + c->ttl_ms,
      .args = c->args,
      .args_len = c->args_len,
  };
  if (strlen(c->tenant) > FY_TENANT_MAX || strlen(c->cmd) > FY_CMD_NAME_MAX)
    return fy_err_set(err, FY_EINVAL, "command: tenant or command name too long");
  snprintf(b.tenant, sizeof(b.tenant), "%s", c->tenant);
  snprintf(b.cmd, sizeof(b.cmd), "%s", c->cmd);
  FY_AUTOBUF struct fy_buf body = FY_BUF_INIT;
  int rc = fy_cmd_body_encode(&b, &body, err);
  if (rc < 0)
    return rc;
  size_t start = out->len;
  rc = fy_envelope_seal(c->key, FY_CTX_COMMAND, body.data, body.len, out, err);
  if (rc < 0)
    return rc;
  fy_envelope_id(out->data + start, out->len - start, id);
  return 0;
}

static int pk_str(msgpack_packer *pk, const char *s) {
  return msgpack_pack_str_with_body(pk, s, strlen(s));
}

int fy_admin_args_agent(const struct fy_nodeid *id, const struct fy_labels *labels, struct fy_buf *out,
                        struct fy_err *err) {
  msgpack_packer pk;
  msgpack_packer_init(&pk, out, fy_mp_buf_write);
  int rc = msgpack_pack_map(&pk, labels ? 2 : 1);
  rc |= pk_str(&pk, "id");
  rc |= msgpack_pack_bin_with_body(&pk, id->key, FY_NODEID_LEN);
  if (labels) {
    rc |= pk_str(&pk, "labels");
    rc |= fy_labels_pack(labels, &pk);
  }
  return rc ? fy_err_set(err, FY_ENOMEM, "agent args: out of memory") : 0;
}

int fy_admin_args_enroll_create(const uint8_t hash[32], const struct fy_labels *labels, uint64_t expires,
                                uint64_t uses, struct fy_buf *out, struct fy_err *err) {
  msgpack_packer pk;
  msgpack_packer_init(&pk, out, fy_mp_buf_write);
  int rc = msgpack_pack_map(&pk, 4);
  rc |= pk_str(&pk, "hash");
  rc |= msgpack_pack_bin_with_body(&pk, hash, 32);
  rc |= pk_str(&pk, "labels");
  rc |= fy_labels_pack(labels, &pk);
  rc |= pk_str(&pk, "expires");
  rc |= msgpack_pack_uint64(&pk, expires);
  rc |= pk_str(&pk, "uses");
  rc |= msgpack_pack_uint64(&pk, uses);
  return rc ? fy_err_set(err, FY_ENOMEM, "enroll args: out of memory") : 0;
}

int fy_admin_args_enroll_revoke(const char *id, struct fy_buf *out, struct fy_err *err) {
  size_t n = strlen(id);
  if (n != 16 || strspn(id, "0123456789abcdef") != 16)
    return fy_err_set(err, FY_EINVAL, "ticket id '%.40s' is not 16 lowercase hex digits", id);
  msgpack_packer pk;
  msgpack_packer_init(&pk, out, fy_mp_buf_write);
  int rc = msgpack_pack_map(&pk, 1);
  rc |= pk_str(&pk, "id");
  rc |= pk_str(&pk, id);
  return rc ? fy_err_set(err, FY_ENOMEM, "enroll args: out of memory") : 0;
}

int fy_admin_args_artifact_add(const uint8_t *env, size_t len, struct fy_buf *out, struct fy_err *err) {
  msgpack_packer pk;
  msgpack_packer_init(&pk, out, fy_mp_buf_write);
  int rc = msgpack_pack_map(&pk, 1);
  rc |= pk_str(&pk, "manifest");
  rc |= msgpack_pack_bin_with_body(&pk, env, len);
  return rc ? fy_err_set(err, FY_ENOMEM, "artifact args: out of memory") : 0;
}

static bool id_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

bool fy_admin_rollout_id_ok(const char *id) {
  size_t n = strlen(id);
  if (n == 0 || n > FY_ADMIN_ROLLOUT_ID_MAX)
    return false;
  for (size_t i = 0; i < n; i++)
    if (!id_char(id[i]))
      return false;
  return true;
}

void fy_admin_rollout_default_id(const char *name, const char *version, const uint8_t rnd[2],
                                 char out[FY_ADMIN_ROLLOUT_ID_MAX + 1]) {
  char hex[5];
  sodium_bin2hex(hex, sizeof(hex), rnd, 2);
  /* "-" and the 4 hex digits always fit: the cut falls on name and version. */
  size_t keep = FY_ADMIN_ROLLOUT_ID_MAX - 5;
  char head[FY_ADMIN_ROLLOUT_ID_MAX + 1];
  snprintf(head, keep + 1, "%s-%s", name, version);
  for (char *c = head; *c; c++) {
    if (*c >= 'A' && *c <= 'Z')
      *c = (char)(*c - 'A' + 'a');
    else if (!id_char(*c))
      *c = '-';
  }
  size_t n = strlen(head);
  memcpy(out, head, n + 1);
  out[n] = '-';
  memcpy(out + n + 1, hex, sizeof(hex)); /* n <= keep: fits with its NUL */
}

int fy_admin_artifact_ref_parse(const char *text, char *name, size_t nsize, char *version, size_t vsize,
                                struct fy_err *err) {
  const char *at = strchr(text, '@');
  size_t nn = at ? (size_t)(at - text) : 0;
  if (!at || nn == 0 || at[1] == '\0')
    return fy_err_set(err, FY_EINVAL, "artifact '%.80s' is not NAME@VERSION", text);
  if (nn >= nsize || strlen(at + 1) >= vsize)
    return fy_err_set(err, FY_EINVAL, "artifact '%.80s': name or version too long", text);
  memcpy(name, text, nn);
  name[nn] = '\0';
  snprintf(version, vsize, "%s", at + 1);
  return 0;
}

int fy_admin_percent_parse(const char *text, uint32_t *permille, struct fy_err *err) {
  const char *p = text;
  uint32_t v = 0;
  size_t digits = 0;
  for (; *p >= '0' && *p <= '9' && digits < 5; p++, digits++)
    v = v * 10 + (uint32_t)(*p - '0');
  v *= 10;
  if (digits > 0 && *p == '.' && p[1] >= '0' && p[1] <= '9') {
    v += (uint32_t)(p[1] - '0');
    p += 2;
  }
  if (*p == '%')
    p++;
  if (digits == 0 || *p != '\0' || v > FY_PERMILLE)
    return fy_err_set(err, FY_EINVAL, "'%.40s' is not a percentage from 0%% to 100%% (like 95%% or 99.5%%)",
                      text);
  *permille = v;
  return 0;
}

static void pack_policy(msgpack_packer *pk, const struct fy_rollout_policy *p, int *rc) {
  *rc |= msgpack_pack_map(pk, 6);
  *rc |= pk_str(pk, "grace_ms");
  *rc |= msgpack_pack_uint64(pk, p->grace_ms);
  *rc |= pk_str(pk, "min_success_permille");
  *rc |= msgpack_pack_uint32(pk, p->min_success_permille);
  *rc |= pk_str(pk, "max_failures");
  *rc |= msgpack_pack_uint32(pk, p->max_failures);
  *rc |= pk_str(pk, "skip_offline");
  *rc |= p->skip_offline ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
  *rc |= pk_str(pk, "abort_on_zero");
  *rc |= p->abort_on_zero_eligible ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
  *rc |= pk_str(pk, "action_timeout_ms");
  *rc |= msgpack_pack_uint64(pk, p->action_timeout_ms);
}

int fy_admin_args_rollout_create(const struct fy_admin_rollout_args *r, struct fy_buf *out,
                                 struct fy_err *err) {
  if (!fy_admin_rollout_id_ok(r->id))
    return fy_err_set(err, FY_EINVAL, "rollout id '%.40s' must be 1..%d of [a-z0-9._-]", r->id,
                      FY_ADMIN_ROLLOUT_ID_MAX);
  struct fy_wave_spec spec;
  if (fy_wave_spec_parse(r->waves, &spec, err) < 0)
    return FY_EINVAL;
  static const struct fy_labels none = {0};
  msgpack_packer pk;
  msgpack_packer_init(&pk, out, fy_mp_buf_write);
  int rc = msgpack_pack_map(&pk, 7);
  rc |= pk_str(&pk, "id");
  rc |= pk_str(&pk, r->id);
  rc |= pk_str(&pk, "name");
  rc |= pk_str(&pk, r->name);
  rc |= pk_str(&pk, "version");
  rc |= pk_str(&pk, r->version);
  rc |= pk_str(&pk, "selector");
  rc |= fy_labels_pack(r->selector ? r->selector : &none, &pk);
  rc |= pk_str(&pk, "channel");
  rc |= pk_str(&pk, r->channel ? r->channel : "");
  rc |= pk_str(&pk, "waves");
  rc |= pk_str(&pk, r->waves);
  rc |= pk_str(&pk, "policy");
  pack_policy(&pk, &r->policy, &rc);
  return rc ? fy_err_set(err, FY_ENOMEM, "rollout args: out of memory") : 0;
}

int fy_admin_args_rollout_id(const char *id, struct fy_buf *out, struct fy_err *err) {
  if (!fy_admin_rollout_id_ok(id))
    return fy_err_set(err, FY_EINVAL, "rollout id '%.40s' must be 1..%d of [a-z0-9._-]", id,
                      FY_ADMIN_ROLLOUT_ID_MAX);
  msgpack_packer pk;
  msgpack_packer_init(&pk, out, fy_mp_buf_write);
  int rc = msgpack_pack_map(&pk, 1);
  rc |= pk_str(&pk, "id");
  rc |= pk_str(&pk, id);
  return rc ? fy_err_set(err, FY_ENOMEM, "rollout args: out of memory") : 0;
}

int fy_admin_file_sha256(const char *path, uint8_t sha256[32], uint64_t *size, struct fy_err *err) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return fy_err_errno(err, errno, "artifact file %s", path);
  crypto_hash_sha256_state st;
  crypto_hash_sha256_init(&st);
  uint8_t chunk[64 * 1024];
  uint64_t total = 0;
  size_t n;
  while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
    crypto_hash_sha256_update(&st, chunk, n);
    total += n;
  }
  int rc = ferror(f) ? fy_err_errno(err, errno ? errno : EIO, "artifact file %s: read", path) : 0;
  fclose(f);
  if (rc < 0)
    return rc;
  crypto_hash_sha256_final(&st, sha256);
  *size = total;
  return 0;
}

int fy_admin_query_encode(const char *q, const char *key, const char *value, struct fy_buf *out,
                          struct fy_err *err) {
  msgpack_packer pk;
  msgpack_packer_init(&pk, out, fy_mp_buf_write);
  int rc = msgpack_pack_map(&pk, key ? 2 : 1);
  rc |= pk_str(&pk, "q");
  rc |= pk_str(&pk, q);
  if (key) {
    rc |= pk_str(&pk, key);
    rc |= pk_str(&pk, value);
  }
  return rc ? fy_err_set(err, FY_ENOMEM, "query: out of memory") : 0;
}

int fy_admin_query_bin(const char *q, const char *key, const uint8_t value[32], struct fy_buf *out,
                       struct fy_err *err) {
  msgpack_packer pk;
  msgpack_packer_init(&pk, out, fy_mp_buf_write);
  int rc = msgpack_pack_map(&pk, 2);
  rc |= pk_str(&pk, "q");
  rc |= pk_str(&pk, q);
  rc |= pk_str(&pk, key);
  rc |= msgpack_pack_bin_with_body(&pk, value, 32);
  return rc ? fy_err_set(err, FY_ENOMEM, "query: out of memory") : 0;
}

/* ---- the session ------------------------------------------------------------------ */

/* A query in flight. Callbacks may come after the caller gave up (timeout):
 * the session owns every call and frees them only after the node closed. */
struct qcall {
  struct qcall *next;
  struct fy_admin_session *s;
  bool done, abandoned;
  int rpc_code; /* -1: not reached */
  char message[FY_ERR_MSG_MAX];
  struct fy_buf reply;
  uint8_t *req;
  size_t req_len;
};

struct fy_admin_session {
  uv_loop_t loop;
  struct fy_node *node;
  struct fy_admin_session_config cfg;
  struct fy_peerspec coord;
  struct sockaddr_storage addrs[FY_PEER_ADDRS_MAX];
  size_t naddrs;
  struct qcall *calls;
  uv_timer_t timer; /* deadline of the current call */
  uv_timer_t poll;  /* delivery progress; the pause of fy_admin_session_sleep */
  bool timed_out, closed, slept;
  uint64_t poll_pending;
};

static void on_closed(void *user) {
  struct fy_admin_session *s = user;
  s->closed = true;
}

int fy_admin_session_open(struct fy_admin_session **out, const struct fy_admin_session_config *cfg,
                          struct fy_err *err) {
  *out = NULL;
  struct fy_admin_session *s = calloc(1, sizeof(*s));
  if (!s)
    return fy_err_set(err, FY_ENOMEM, "admin: out of memory");
  s->cfg = *cfg;
  s->coord = *cfg->coordinator;
  int rc = fy_addrs_resolve(s->coord.addrs, s->coord.naddrs, s->addrs, err);
  if (rc < 0) {
    free(s);
    return fy_err_prefix(err, "coordinator");
  }
  s->naddrs = (size_t)rc;
  int urc = uv_loop_init(&s->loop);
  if (urc < 0) {
    free(s);
    return fy_err_set(err, FY_EIO, "event loop: %s", uv_strerror(urc));
  }
  uv_timer_init(&s->loop, &s->timer);
  uv_timer_init(&s->loop, &s->poll);
  static const struct fy_store_schema *const schemas[] = {&fy_admin_schema};
  struct fy_node_config nc = {
      .data_dir = cfg->data_dir,
      .key = cfg->key,
      .listen = s->addrs[0].ss_family == AF_INET6 ? "[::]:0" : "0.0.0.0:0",
      .accept = false,
      .schemas = schemas,
      .nschemas = 1,
      .keepalive_ms = 1000,
      .log = cfg->log,
  };
  rc = fy_node_open(&s->node, &s->loop, &nc, err);
  if (rc == 0)
    rc = fy_node_set_addrs(s->node, &s->coord.id, s->addrs, s->naddrs, err);
  if (rc < 0) {
    fy_admin_session_close(s);
    return rc;
  }
  *out = s;
  return 0;
}

static void close_handle(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

void fy_admin_session_close(struct fy_admin_session *s) {
  if (!s)
    return;
  if (s->node) {
    fy_node_close(s->node, on_closed, s);
    while (!s->closed && uv_run(&s->loop, UV_RUN_ONCE))
      ;
  }
  uv_walk(&s->loop, close_handle, NULL);
  uv_run(&s->loop, UV_RUN_DEFAULT);
  uv_loop_close(&s->loop);
  while (s->calls) {
    struct qcall *c = s->calls;
    s->calls = c->next;
    fy_buf_free(&c->reply);
    free(c->req);
    free(c);
  }
  free(s);
}

/* ---- queueing ------------------------------------------------------------------ */

struct queue_txn {
  struct fy_admin_session *s;
  const char *tenant, *cmd;
  const uint8_t *args;
  size_t args_len;
  uint8_t *id;
};

static int queue_fn(struct fy_txn *t, void *user) {
  struct queue_txn *q = user;
  struct fy_admin_session *s = q->s;
  struct fy_table *meta = fy_txn_table(t, &admin_tables[0]), *sent = fy_txn_table(t, &admin_tables[1]);
  struct fy_bytes v;
  uint64_t last = 0;
  int rc = fy_store_get(t, meta, fy_bytes_str("seq"), &v);
  if (rc < 0)
    return rc;
  if (rc == 1 && v.n == 8)
    last = fy_be64_get(v.p);
  uint64_t now_ms = now_us() / 1000;
  struct fy_admin_cmd c = {
      .key = s->cfg.key,
      .coordinator = s->coord.id,
      .seq = fy_admin_next_seq(last, now_us()),
      .now_ms = now_ms,
      .ttl_ms = s->cfg.cmd_ttl_ms,
      .tenant = q->tenant,
      .cmd = q->cmd,
      .args = q->args,
      .args_len = q->args_len,
  };
  FY_AUTOBUF struct fy_buf env = FY_BUF_INIT;
  rc = fy_admin_cmd_seal(&c, &env, q->id, fy_txn_err(t));
  if (rc < 0)
    return rc;
  uint8_t seqb[8];
  fy_be64_put(seqb, c.seq);
  if ((rc = fy_store_put(t, meta, fy_bytes_str("seq"), fy_bytes_of(seqb, 8))) < 0)
    return rc;
  uint8_t rec[SENT_FIXED + FY_CMD_NAME_MAX];
  size_t cl = strlen(q->cmd);
  fy_be64_put(rec, c.seq);
  fy_be64_put(rec + 8, now_ms);
  memcpy(rec + SENT_FIXED, q->cmd, cl);
  if ((rc = fy_store_put(t, sent, fy_bytes_of(q->id, FY_ENVELOPE_ID_LEN),
                         fy_bytes_of(rec, SENT_FIXED + cl))) < 0)
    return rc;
  struct fy_outbox_item item = {
      .dest = s->coord.id,
      .topic = FY_ADMIN_TOPIC,
      .payload = fy_bytes_of(env.data, env.len),
      .ttl_ms = s->cfg.cmd_ttl_ms,
  };
  return fy_outbox_enqueue_txn(fy_node_outbox(s->node), t, &item, 1, NULL);
}

int fy_admin_session_queue(struct fy_admin_session *s, const char *tenant, const char *cmd,
                           const uint8_t *args, size_t args_len, uint8_t id[FY_ENVELOPE_ID_LEN],
                           struct fy_err *err) {
  struct queue_txn q = {s, tenant, cmd, args, args_len, id};
  int rc = fy_store_write(fy_node_store(s->node), queue_fn, &q, err);
  if (rc < 0)
    return fy_err_prefix(err, "queueing %s", cmd);
  fy_node_kick(s->node);
  return 0;
}

struct pending_txn {
  struct fy_admin_pending *v;
  size_t n, cap;
};

static int pending_fn(struct fy_txn *t, void *user) {
  struct pending_txn *p = user;
  struct fy_cursor *c;
  int rc = fy_cursor_open(t, fy_txn_table(t, &admin_tables[1]), fy_bytes_of(NULL, 0), &c);
  if (rc < 0)
    return rc;
  struct fy_bytes k, v;
  while ((rc = fy_cursor_next(c, &k, &v)) == 1) {
    if (k.n != FY_ENVELOPE_ID_LEN || v.n < SENT_FIXED)
      continue;
    if (p->n == p->cap) {
      size_t cap = p->cap ? 2 * p->cap : 8;
      struct fy_admin_pending *nv = realloc(p->v, cap * sizeof(*nv));
      if (!nv) {
        rc = fy_err_set(fy_txn_err(t), FY_ENOMEM, "admin: out of memory");
        break;
      }
      p->v = nv;
      p->cap = cap;
    }
    struct fy_admin_pending *e = &p->v[p->n++];
    memcpy(e->id, k.p, FY_ENVELOPE_ID_LEN);
    e->seq = fy_be64_get(v.p);
    e->queued_at = fy_be64_get(v.p + 8);
    size_t cl = v.n - SENT_FIXED < sizeof(e->cmd) - 1 ? v.n - SENT_FIXED : sizeof(e->cmd) - 1;
    memcpy(e->cmd, v.p + SENT_FIXED, cl);
    e->cmd[cl] = '\0';
  }
  fy_cursor_close(c);
  return rc < 0 ? rc : 0;
}

static int by_seq(const void *a, const void *b) {
  const struct fy_admin_pending *x = a, *y = b;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

int fy_admin_session_pending(struct fy_admin_session *s, struct fy_admin_pending **out, size_t *n,
                             struct fy_err *err) {
  struct pending_txn p = {0};
  int rc = fy_store_read(fy_node_store(s->node), pending_fn, &p, err);
  if (rc < 0) {
    free(p.v);
    return rc;
  }
  if (p.n > 1)
    qsort(p.v, p.n, sizeof(*p.v), by_seq);
  *out = p.v;
  *n = p.n;
  return 0;
}

static int forget_fn(struct fy_txn *t, void *user) {
  return fy_store_del(t, fy_txn_table(t, &admin_tables[1]), fy_bytes_of(user, FY_ENVELOPE_ID_LEN));
}

int fy_admin_session_forget(struct fy_admin_session *s, const uint8_t id[FY_ENVELOPE_ID_LEN],
                            struct fy_err *err) {
  /* The store hands user on as void *: pass a copy rather than cast const away. */
  uint8_t key[FY_ENVELOPE_ID_LEN];
  memcpy(key, id, sizeof(key));
  int rc = fy_store_write(fy_node_store(s->node), forget_fn, key, err);
  return rc < 0 ? rc : 0;
}

int fy_admin_session_unacked(struct fy_admin_session *s, uint64_t *out, struct fy_err *err) {
  struct fy_outbox_queue_stats st[8];
  int rc = fy_outbox_queues(fy_node_outbox(s->node), &s->coord.id, st, FY_ARRAY_LEN(st), err);
  if (rc < 0)
    return rc;
  *out = 0;
  for (size_t i = 0; i < (size_t)rc && i < FY_ARRAY_LEN(st); i++)
    if (strcmp(st[i].topic, FY_ADMIN_TOPIC) == 0)
      *out += st[i].pending;
  return 0;
}

/* ---- running the loop ------------------------------------------------------------ */

static void on_deadline(uv_timer_t *t) {
  struct fy_admin_session *s = t->data;
  s->timed_out = true;
  uv_stop(&s->loop);
}

static void arm_deadline(struct fy_admin_session *s, bool unlimited) {
  s->timed_out = false;
  s->timer.data = s;
  if (!unlimited)
    uv_timer_start(&s->timer, on_deadline, s->cfg.timeout_ms, 0);
}

/* What the connection manager last heard from the coordinator, for messages. */
static void unreachable_reason(struct fy_admin_session *s, char *out, size_t size) {
  struct fy_connmgr_peer_status st;
  if (fy_connmgr_status(fy_node_connmgr(s->node), &s->coord.id, NULL, &st) == 0 && st.has_failure)
    snprintf(out, size, "%s", st.last_failure.msg);
  else
    snprintf(out, size, "no connection within %" PRIu64 " ms", s->cfg.timeout_ms);
}

static void on_poll(uv_timer_t *t) {
  struct fy_admin_session *s = t->data;
  uint64_t n = 0;
  if (fy_admin_session_unacked(s, &n, NULL) == 0 && n == 0) {
    s->poll_pending = 0;
    uv_stop(&s->loop);
  }
}

int fy_admin_session_deliver(struct fy_admin_session *s, struct fy_err *err) {
  uint64_t n = 0;
  int rc = fy_admin_session_unacked(s, &n, err);
  if (rc < 0 || n == 0)
    return rc;
  fy_node_kick(s->node);
  arm_deadline(s, s->cfg.wait);
  s->poll.data = s;
  s->poll_pending = n;
  uv_timer_start(&s->poll, on_poll, 50, 50);
  while (s->poll_pending && !s->timed_out)
    uv_run(&s->loop, UV_RUN_DEFAULT);
  uv_timer_stop(&s->poll);
  uv_timer_stop(&s->timer);
  if (s->poll_pending) {
    char why[256];
    unreachable_reason(s, why, sizeof(why));
    return fy_err_set(err, FY_EAGAIN, "%s", why);
  }
  return 0;
}

static void q_on_msg(struct fy_rpc_ccall *call, const uint8_t *p, size_t len, void *user) {
  (void)call;
  struct qcall *c = user;
  if (c->reply.len + len <= FY_ADMIN_REPLY_MAX)
    fy_buf_append(&c->reply, p, len, NULL);
}

static void q_on_status(struct fy_rpc_ccall *call, const struct fy_rpc_result *r, void *user) {
  (void)call;
  struct qcall *c = user;
  c->done = true;
  c->rpc_code = r->local && r->code != FY_RPC_OK ? -1 : r->code;
  snprintf(c->message, sizeof(c->message), "%s", r->message ? r->message : "");
  if (!c->abandoned)
    uv_stop(&c->s->loop);
}

static void q_ready(struct fy_qconn *conn, const struct fy_qclose *failure, void *user) {
  struct qcall *c = user;
  if (c->abandoned) {
    c->done = true;
    return;
  }
  if (!conn) {
    c->done = true;
    c->rpc_code = -1;
    snprintf(c->message, sizeof(c->message), "%s", failure->msg);
    uv_stop(&c->s->loop);
    return;
  }
  static const struct fy_rpc_call_cb cb = {.on_msg = q_on_msg, .on_status = q_on_status};
  struct fy_err err = {0};
  uint32_t deadline = c->s->cfg.timeout_ms > UINT32_MAX ? UINT32_MAX : (uint32_t)c->s->cfg.timeout_ms;
  if (fy_rpc_unary(fy_node_rpc(c->s->node), conn, FY_ADMIN_QUERY_METHOD, c->req, c->req_len, deadline, &cb, c,
                   &err) < 0) {
    c->done = true;
    c->rpc_code = -1;
    snprintf(c->message, sizeof(c->message), "%s", err.msg);
    uv_stop(&c->s->loop);
  }
}

static void on_slept(uv_timer_t *t) {
  struct fy_admin_session *s = t->data;
  s->slept = true;
  uv_stop(&s->loop);
}

void fy_admin_session_sleep(struct fy_admin_session *s, uint64_t ms) {
  s->slept = false;
  s->poll.data = s;
  uv_timer_start(&s->poll, on_slept, ms, 0);
  while (!s->slept)
    uv_run(&s->loop, UV_RUN_DEFAULT);
}

int fy_admin_session_query(struct fy_admin_session *s, const uint8_t *req, size_t len, struct fy_buf *reply,
                           int *rpc_code, struct fy_err *err) {
  if (rpc_code)
    *rpc_code = -1;
  struct qcall *c = calloc(1, sizeof(*c));
  uint8_t *copy = malloc(len ? len : 1);
  if (!c || !copy) {
    free(c);
    free(copy);
    return fy_err_set(err, FY_ENOMEM, "admin: out of memory");
  }
  memcpy(copy, req, len);
  c->s = s;
  c->req = copy;
  c->req_len = len;
  c->rpc_code = -1;
  c->next = s->calls;
  s->calls = c;
  int rc =
      fy_connmgr_get(fy_node_connmgr(s->node), &s->coord.id, s->addrs, s->naddrs, NULL, 0, q_ready, c, err);
  if (rc < 0) {
    c->done = true;
    return fy_err_prefix(err, "coordinator");
  }
  arm_deadline(s, false);
  while (!c->done && !s->timed_out)
    uv_run(&s->loop, UV_RUN_DEFAULT);
  uv_timer_stop(&s->timer);
  if (!c->done) {
    c->abandoned = true;
    char why[256];
    unreachable_reason(s, why, sizeof(why));
    return fy_err_set(err, FY_EAGAIN, "timed out after %" PRIu64 " ms (%s)", s->cfg.timeout_ms, why);
  }
  c->abandoned = true;
  if (rpc_code)
    *rpc_code = c->rpc_code;
  if (c->rpc_code < 0)
    return fy_err_set(err, FY_EAGAIN, "%s", c->message);
  if (c->rpc_code != FY_RPC_OK) {
    int code = c->rpc_code == FY_RPC_NOT_FOUND           ? FY_ENOENT
               : c->rpc_code == FY_RPC_PERMISSION_DENIED ? FY_EPERM
                                                         : FY_EINVAL;
    return fy_err_set(err, code, "%s: %s", fy_rpc_code_name(c->rpc_code), c->message);
  }
  return fy_buf_append(reply, c->reply.data, c->reply.len, err);
}

int fy_admin_session_result(struct fy_admin_session *s, const uint8_t id[FY_ENVELOPE_ID_LEN],
                            struct fy_buf *reply, struct fy_err *err) {
  FY_AUTOBUF struct fy_buf req = FY_BUF_INIT;
  int rc = fy_admin_query_bin("result", "id", id, &req, err);
  if (rc < 0)
    return rc;
  int code;
  rc = fy_admin_session_query(s, req.data, req.len, reply, &code, err);
  if (rc == FY_ENOENT)
    return 0;
  return rc < 0 ? rc : 1;
}
