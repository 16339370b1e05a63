/* The coordinator's state in a temporary store, with fixed keys, for the
 * tests of coordinator/ (test_coord_state.c, test_coord_rollout.c): signed
 * commands applied the way the inbox applies them, tickets, enrollment and
 * queries. Include after cmocka.h. */
#ifndef FY_TESTS_COORD_FIXTURE_H
#define FY_TESTS_COORD_FIXTURE_H

#include <ftw.h>
#include <msgpack.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/cleanup.h"
#include "base/mpmap.h"
#include "coordinator/coord_rollout.h"
#include "coordinator/coord_state.h"
#include "fleet/facts.h"
#include "fleet/ticket.h"
#include "fleet/trust.h"
#include "outbox/inbox.h"
#include "outbox/outbox.h"

#define T0 1767225600000ull /* 2026-01-01 */
#define HOUR 3600000ull

enum { K_ROOT, K_OWNER2, K_OPLAB, K_VIEWER, K_STRANGER, K_COORD, K_OTHER_COORD, K_AGENT, K_AGENT2, K_N };

struct fx {
  char dir[64];
  struct fy_store *store;
  struct fy_outbox *outbox;
  struct fy_coord c;
  struct fy_key keys[K_N];
  uint64_t seq[K_N];
  uint64_t now;
};

static inline uint64_t fx_clock(void *user) {
  return ((struct fx *)user)->now;
}

static inline int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st, (void)flag, (void)ftw;
  return remove(path);
}

static inline int setup(void **state) {
  struct fx *f = calloc(1, sizeof(*f));
  assert_non_null(f);
  assert_int_equal(fy_crypto_init(NULL), 0);
  for (int i = 0; i < K_N; i++) {
    uint8_t seed[32];
    memset(seed, 0x10 + i, sizeof(seed));
    assert_int_equal(fy_key_from_seed(&f->keys[i], seed, NULL), 0);
  }
  snprintf(f->dir, sizeof(f->dir), "/tmp/ferry-coord-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  const struct fy_store_schema *schemas[] = {&fy_outbox_schema, &fy_inbox_schema, &fy_coord_schema,
                                             &fy_coord_rollout_schema};
  struct fy_err err = {0};
  assert_int_equal(fy_store_open(&f->store, f->dir, schemas, 4, &(struct fy_store_opts){0}, &err), 0);
  f->now = T0;
  struct fy_outbox_config ocfg = {.clock_ms = fx_clock, .clock_user = f};
  assert_int_equal(fy_outbox_open(&f->outbox, f->store, &ocfg, &err), 0);
  f->c = (struct fy_coord){.id = f->keys[K_COORD].id,
                           .store = f->store,
                           .outbox = f->outbox,
                           .clock_ms = fx_clock,
                           .clock_user = f};
  assert_int_equal(fy_coord_init_store(f->store, &f->c.id, &f->keys[K_ROOT].id, 1, T0, &err), 0);
  assert_int_equal(fy_coord_check_store(&f->c, &err), 0);
  *state = f;
  return 0;
}

static inline int teardown(void **state) {
  struct fx *f = *state;
  fy_outbox_close(f->outbox, NULL, NULL);
  fy_store_close(f->store);
  for (int i = 0; i < K_N; i++)
    fy_key_free(&f->keys[i]);
  nftw(f->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
  free(f);
  return 0;
}

/* ---- making commands ---------------------------------------------------------------- */

struct cmd {
  int signer;        /* whose key signs */
  int issuer;        /* the body's issuer (normally the signer) */
  int coord;         /* K_COORD or another */
  uint64_t seq;      /* 0: the signer's next */
  uint64_t iat, exp; /* 0: now, now + 1 h */
  const char *tenant, *name;
  struct fy_buf args;
};

static inline void seal(struct fx *f, struct cmd *c, struct fy_buf *env) {
  struct fy_cmd_body b = {0};
  b.issuer = f->keys[c->issuer].id;
  b.coordinator = f->keys[c->coord].id;
  b.seq = c->seq ? c->seq : ++f->seq[c->issuer];
  b.issued_at = c->iat ? c->iat : f->now;
  b.expires_at = c->exp ? c->exp : f->now + HOUR;
  snprintf(b.tenant, sizeof(b.tenant), "%s", c->tenant ? c->tenant : "");
  snprintf(b.cmd, sizeof(b.cmd), "%s", c->name);
  b.args = c->args.data;
  b.args_len = c->args.len;
  FY_AUTOBUF struct fy_buf body = FY_BUF_INIT;
  struct fy_err err = {0};
  assert_int_equal(fy_cmd_body_encode(&b, &body, &err), 0);
  env->len = 0;
  assert_int_equal(fy_envelope_seal(&f->keys[c->signer], FY_CTX_COMMAND, body.data, body.len, env, &err), 0);
  fy_buf_free(&c->args);
}

struct apply {
  struct fx *f;
  const uint8_t *env;
  size_t len;
  struct fy_err why;
  int result;
};

static inline int apply_body(struct fy_txn *t, void *user) {
  struct apply *a = user;
  a->result = fy_coord_apply(&a->f->c, t, a->env, a->len, a->f->now, &a->why);
  return a->result < 0 ? a->result : 0;
}

/* Applies and returns the refusal; *why gets the message. */
static inline int run(struct fx *f, struct cmd *c, char *why, size_t size) {
  FY_AUTOBUF struct fy_buf env = FY_BUF_INIT;
  seal(f, c, &env);
  struct apply a = {.f = f, .env = env.data, .len = env.len};
  struct fy_err err = {0};
  assert_int_equal(fy_store_write(f->store, apply_body, &a, &err), 0);
  if (why)
    snprintf(why, size, "%s", a.why.msg);
  return a.result;
}

static inline void args_id(struct fy_buf *b, const char *key, const struct fy_nodeid *id,
                           const char *labels) {
  msgpack_packer pk;
  msgpack_packer_init(&pk, b, fy_mp_buf_write);
  msgpack_pack_map(&pk, labels ? 2 : 1);
  msgpack_pack_str_with_body(&pk, key, strlen(key));
  msgpack_pack_bin_with_body(&pk, id->key, FY_NODEID_LEN);
  if (labels) {
    struct fy_labels l;
    assert_int_equal(fy_labels_parse(labels, &l, NULL), 0);
    msgpack_pack_str_with_body(&pk, "labels", 6);
    fy_labels_pack(&l, &pk);
  }
}

static inline void add_admin(struct fx *f, int signer, int who, enum fy_role role, const char *tenants,
                             int expect) {
  struct fy_admin a = {.key = f->keys[who].id, .role = role};
  assert_int_equal(fy_admin_set_tenants(&a, tenants, NULL), 0);
  struct cmd c = {.signer = signer, .issuer = signer, .coord = K_COORD, .name = "admin.set"};
  assert_int_equal(fy_admin_args_encode(&a, true, &c.args, NULL), 0);
  char why[512];
  int r = run(f, &c, why, sizeof(why));
  if (r != expect)
    fail_msg("admin.set: %s (%s), expected %s", fy_cmd_refusal_name(r), why, fy_cmd_refusal_name(expect));
}

/* Creates a ticket (enroll.create by signer) and returns its secret. */
static inline int make_ticket(struct fx *f, int signer, const char *tenant, const char *labels, uint64_t ttl,
                              uint64_t uses, uint8_t secret[32]) {
  randombytes_buf(secret, 32);
  uint8_t hash[32];
  fy_ticket_secret_hash(secret, hash);
  struct cmd c = {
      .signer = signer, .issuer = signer, .coord = K_COORD, .name = "enroll.create", .tenant = tenant};
  msgpack_packer pk;
  msgpack_packer_init(&pk, &c.args, fy_mp_buf_write);
  msgpack_pack_map(&pk, 4);
  msgpack_pack_str_with_body(&pk, "hash", 4);
  msgpack_pack_bin_with_body(&pk, hash, 32);
  struct fy_labels l;
  assert_int_equal(fy_labels_parse(labels, &l, NULL), 0);
  msgpack_pack_str_with_body(&pk, "labels", 6);
  fy_labels_pack(&l, &pk);
  msgpack_pack_str_with_body(&pk, "expires", 7);
  msgpack_pack_uint64(&pk, f->now + ttl);
  msgpack_pack_str_with_body(&pk, "uses", 4);
  msgpack_pack_uint64(&pk, uses);
  return run(f, &c, NULL, 0);
}

static inline void facts_bytes(const char *host, struct fy_buf *out) {
  struct fy_facts facts;
  memset(&facts, 0, sizeof(facts));
  snprintf(facts.hostname, sizeof(facts.hostname), "%s", host);
  snprintf(facts.version, sizeof(facts.version), "1.0.0");
  assert_int_equal(fy_facts_encode(&facts, out, NULL), 0);
}

/* agent.enroll's request: {secret?, facts}. */
static inline int enroll(struct fx *f, int agent, const uint8_t *secret, struct fy_buf *reply,
                         struct fy_err *err) {
  FY_AUTOBUF struct fy_buf req = FY_BUF_INIT;
  FY_AUTOBUF struct fy_buf facts = FY_BUF_INIT;
  facts_bytes(agent == K_AGENT ? "kiosk-1" : "kiosk-2", &facts);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &req, fy_mp_buf_write);
  msgpack_pack_map(&pk, secret ? 2 : 1);
  if (secret) {
    msgpack_pack_str_with_body(&pk, "secret", 6);
    msgpack_pack_bin_with_body(&pk, secret, 32);
  }
  msgpack_pack_str_with_body(&pk, "facts", 5);
  fy_buf_append(&req, facts.data, facts.len, NULL);
  reply->len = 0;
  return fy_coord_enroll(&f->c, &f->keys[agent].id, req.data, req.len, reply, err);
}

/* The value of key in a msgpack map reply, as a string. */
static inline void reply_str(const struct fy_buf *reply, const char *key, char *out, size_t size) {
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  assert_int_equal(msgpack_unpack_next(&u, (const char *)reply->data, reply->len, &off),
                   MSGPACK_UNPACK_SUCCESS);
  assert_int_equal(u.data.type, MSGPACK_OBJECT_MAP);
  out[0] = '\0';
  for (uint32_t i = 0; i < u.data.via.map.size; i++) {
    msgpack_object k = u.data.via.map.ptr[i].key, v = u.data.via.map.ptr[i].val;
    if (k.type == MSGPACK_OBJECT_STR && k.via.str.size == strlen(key) &&
        memcmp(k.via.str.ptr, key, k.via.str.size) == 0 && v.type == MSGPACK_OBJECT_STR)
      snprintf(out, size, "%.*s", (int)v.via.str.size, v.via.str.ptr);
  }
  msgpack_unpacked_destroy(&u);
}

static inline int query(struct fx *f, int caller, const char *q, const char *id, struct fy_buf *reply,
                        int *code, struct fy_err *err) {
  FY_AUTOBUF struct fy_buf req = FY_BUF_INIT;
  msgpack_packer pk;
  msgpack_packer_init(&pk, &req, fy_mp_buf_write);
  msgpack_pack_map(&pk, id ? 2 : 1);
  msgpack_pack_str_with_body(&pk, "q", 1);
  msgpack_pack_str_with_body(&pk, q, strlen(q));
  if (id) {
    msgpack_pack_str_with_body(&pk, "id", 2);
    msgpack_pack_str_with_body(&pk, id, strlen(id));
  }
  return fy_coord_query(&f->c, &f->keys[caller].id, req.data, req.len, reply, code, err);
}

#endif
