/* The agent's own state: the enrollment record round-trips and bad records
 * are refused naming the key; statements are stored in the order applied,
 * refused ones are left out, and the view rebuilt from the store matches;
 * the agent.enroll request and reply codecs; the status file is replaced
 * atomically and reads back as written. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <ftw.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/agent_state.h"
#include "base/cleanup.h"
#include "base/mpmap.h"
#include "crypto/key.h"
#include "fleet/envelope.h"
#include "fleet/trust.h"
#include "store/store.h"

#define assert_contains(haystack, needle)                                                                    \
  do {                                                                                                       \
    if (!strstr((haystack), (needle)))                                                                       \
      fail_msg("message \"%s\" does not contain \"%s\"", (haystack), (needle));                              \
  } while (0)

struct ctx {
  char dir[256];
  struct fy_store *store;
  struct fy_key root, coord, other;
  char *logbuf;
  size_t loglen;
  FILE *logf;
  struct fy_log log;
};

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static void seed_key(struct fy_key *k, uint8_t first) {
  uint8_t seed[32];
  for (int i = 0; i < 32; i++)
    seed[i] = (uint8_t)(first + i);
  struct fy_err err;
  if (fy_key_from_seed(k, seed, &err) != 0)
    fail_msg("key: %s", err.msg);
}

static int setup(void **state) {
  struct ctx *c = calloc(1, sizeof(*c));
  struct fy_err err;
  assert_int_equal(fy_crypto_init(&err), 0);
  const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  snprintf(c->dir, sizeof(c->dir), "%s/ferry-agent-state-XXXXXX", base);
  assert_non_null(mkdtemp(c->dir));
  const struct fy_store_schema *schemas[] = {&fy_agent_schema};
  if (fy_store_open(&c->store, c->dir, schemas, 1, NULL, &err) != 0)
    fail_msg("store: %s", err.msg);
  seed_key(&c->root, 0x00);
  seed_key(&c->coord, 0x20);
  seed_key(&c->other, 0x40);
  c->logf = open_memstream(&c->logbuf, &c->loglen);
  fy_log_init(&c->log, c->logf, FY_LOG_DEBUG, "test", NULL);
  *state = c;
  return 0;
}

static int teardown(void **state) {
  struct ctx *c = *state;
  fy_store_close(c->store);
  fy_key_free(&c->root);
  fy_key_free(&c->coord);
  fy_key_free(&c->other);
  fclose(c->logf);
  free(c->logbuf);
  nftw(c->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(c);
  return 0;
}

static struct fy_agent_enrollment sample_record(const struct ctx *c) {
  struct fy_agent_enrollment e = {0};
  e.coordinator = c->coord.id;
  snprintf(e.addrs[0], sizeof(e.addrs[0]), "127.0.0.1:4433");
  snprintf(e.addrs[1], sizeof(e.addrs[1]), "coord.example.net:4433");
  e.naddrs = 2;
  snprintf(e.tenant, sizeof(e.tenant), "lab");
  struct fy_err err;
  assert_int_equal(fy_labels_parse("role=kiosk,site=berlin", &e.labels, &err), 0);
  e.roots[0] = c->root.id;
  e.nroots = 1;
  e.enrolled_at = 1767225600000ull;
  return e;
}

static void assert_same_record(const struct fy_agent_enrollment *a, const struct fy_agent_enrollment *b) {
  assert_memory_equal(a->coordinator.key, b->coordinator.key, FY_NODEID_LEN);
  assert_int_equal(a->naddrs, b->naddrs);
  for (size_t i = 0; i < a->naddrs; i++)
    assert_string_equal(a->addrs[i], b->addrs[i]);
  assert_string_equal(a->tenant, b->tenant);
  assert_int_equal(a->labels.n, b->labels.n);
  for (size_t i = 0; i < a->labels.n; i++) {
    assert_string_equal(a->labels.v[i].key, b->labels.v[i].key);
    assert_string_equal(a->labels.v[i].value, b->labels.v[i].value);
  }
  assert_int_equal(a->nroots, b->nroots);
  assert_memory_equal(a->roots, b->roots, a->nroots * sizeof(a->roots[0]));
  assert_int_equal(a->enrolled_at, b->enrolled_at);
}

/* ---- msgpack helpers for crafted input ---------------------------------------------- */

static void pk_str(msgpack_packer *pk, const char *s) {
  msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* ---- the record ------------------------------------------------------------------------ */

static void record_round_trip(void **state) {
  struct ctx *c = *state;
  struct fy_agent_enrollment e = sample_record(c), d;
  struct fy_err err;
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  assert_int_equal(fy_agent_enrollment_encode(&e, &b, &err), 0);
  assert_int_equal(fy_agent_enrollment_decode(b.data, b.len, &d, &err), 0);
  assert_same_record(&e, &d);
}

static void record_bad_input(void **state) {
  struct ctx *c = *state;
  struct fy_agent_enrollment d;
  struct fy_err err;
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  msgpack_packer pk;
  msgpack_packer_init(&pk, &b, fy_mp_buf_write);

  /* missing keys */
  msgpack_pack_map(&pk, 1);
  pk_str(&pk, "coord");
  msgpack_pack_bin_with_body(&pk, c->coord.id.key, 32);
  assert_int_equal(fy_agent_enrollment_decode(b.data, b.len, &d, &err), FY_EINVAL);
  assert_int_equal(err.code, FY_EINVAL);
  assert_contains(err.msg, "missing key 'addrs'");

  /* unknown key */
  b.len = 0;
  msgpack_pack_map(&pk, 1);
  pk_str(&pk, "bogus");
  msgpack_pack_nil(&pk);
  assert_int_equal(fy_agent_enrollment_decode(b.data, b.len, &d, &err), FY_EINVAL);
  assert_contains(err.msg, "unknown key 'bogus'");

  /* duplicate key */
  b.len = 0;
  msgpack_pack_map(&pk, 2);
  pk_str(&pk, "at");
  msgpack_pack_uint64(&pk, 1);
  pk_str(&pk, "at");
  msgpack_pack_uint64(&pk, 2);
  assert_int_equal(fy_agent_enrollment_decode(b.data, b.len, &d, &err), FY_EINVAL);
  assert_contains(err.msg, "duplicate key 'at'");

  /* a short coordinator id */
  b.len = 0;
  msgpack_pack_map(&pk, 1);
  pk_str(&pk, "coord");
  msgpack_pack_bin_with_body(&pk, c->coord.id.key, 31);
  assert_int_equal(fy_agent_enrollment_decode(b.data, b.len, &d, &err), FY_EINVAL);
  assert_contains(err.msg, "enrollment: coord is not 32 bytes of bin");

  /* a bad tenant */
  b.len = 0;
  msgpack_pack_map(&pk, 1);
  pk_str(&pk, "tenant");
  pk_str(&pk, "Lab!");
  assert_int_equal(fy_agent_enrollment_decode(b.data, b.len, &d, &err), FY_EINVAL);
  assert_contains(err.msg, "enrollment: tenant");

  /* not a map; not msgpack at all; truncated */
  b.len = 0;
  msgpack_pack_array(&pk, 0);
  assert_int_equal(fy_agent_enrollment_decode(b.data, b.len, &d, &err), FY_EINVAL);
  assert_contains(err.msg, "enrollment: not a map");
  const uint8_t huge[] = {0xdf, 0xff, 0xff, 0xff, 0xff};
  assert_int_equal(fy_agent_enrollment_decode(huge, sizeof(huge), &d, &err), FY_EINVAL);
  assert_contains(err.msg, "enrollment");
  struct fy_agent_enrollment e = sample_record(c);
  FY_AUTOBUF struct fy_buf good = FY_BUF_INIT;
  assert_int_equal(fy_agent_enrollment_encode(&e, &good, &err), 0);
  assert_int_equal(fy_agent_enrollment_decode(good.data, good.len - 1, &d, &err), FY_EINVAL);

  /* too large */
  uint8_t *big = calloc(1, FY_AGENT_RECORD_MAX + 1);
  assert_int_equal(fy_agent_enrollment_decode(big, FY_AGENT_RECORD_MAX + 1, &d, &err), FY_ELIMIT);
  assert_contains(err.msg, "at most 65536");
  free(big);

  /* the encoder refuses a record without roots */
  e.nroots = 0;
  assert_int_equal(fy_agent_enrollment_encode(&e, &good, &err), FY_EINVAL);
  assert_contains(err.msg, "roots");
}

/* ---- the store ------------------------------------------------------------------------ */

struct stored {
  uint64_t index[8];
  struct fy_buf env[8];
  size_t n;
};

static int collect(uint64_t index, const uint8_t *env, size_t len, void *user) {
  struct stored *s = user;
  if (s->n == 8)
    return FY_ELIMIT;
  s->index[s->n] = index;
  s->env[s->n] = (struct fy_buf)FY_BUF_INIT;
  fy_buf_append(&s->env[s->n], env, len, NULL);
  s->n++;
  return 0;
}

static void stored_free(struct stored *s) {
  for (size_t i = 0; i < s->n; i++)
    fy_buf_free(&s->env[i]);
  s->n = 0;
}

struct txn_args {
  struct ctx *c;
  struct fy_agent_enrollment rec;
  const struct fy_bytes *statements;
  size_t n;
  struct stored out;
  int accepted;
  bool may_sign;
  struct fy_nodeid admin;
};

static int put_and_add(struct fy_txn *t, void *user) {
  struct txn_args *a = user;
  int rc = fy_agent_state_put_enrollment(t, &a->rec);
  for (size_t i = 0; rc == 0 && i < a->n; i++)
    rc = fy_agent_state_add_statement(t, a->statements[i].p, a->statements[i].n);
  return rc;
}

static int read_all(struct fy_txn *t, void *user) {
  struct txn_args *a = user;
  int rc = fy_agent_state_get_enrollment(t, &a->rec);
  if (rc != 1)
    return rc < 0 ? rc : FY_ENOENT;
  return fy_agent_state_each_statement(t, collect, &a->out);
}

static int get_only(struct fy_txn *t, void *user) {
  struct txn_args *a = user;
  return fy_agent_state_get_enrollment(t, &a->rec);
}

static int put_desired(struct fy_txn *t, void *user) {
  return fy_agent_state_put_desired(t, fy_bytes_str(user));
}

static int get_desired(struct fy_txn *t, void *user) {
  struct fy_bytes v;
  int rc = fy_agent_state_get_desired(t, &v);
  if (rc == 1)
    snprintf(user, 32, "%.*s", (int)v.n, (const char *)v.p);
  return rc;
}

static int del_desired(struct fy_txn *t, void *user) {
  (void)user;
  return fy_agent_state_del_desired(t);
}

static void store_keeps_one_desired_state(void **state) {
  struct ctx *c = *state;
  struct fy_err err;
  char got[32] = "";
  assert_int_equal(fy_store_read(c->store, get_desired, got, &err), 0);
  char first[] = "first", second[] = "second";
  assert_int_equal(fy_store_write(c->store, put_desired, first, &err), 0);
  /* a newer one replaces the one still waiting */
  assert_int_equal(fy_store_write(c->store, put_desired, second, &err), 0);
  assert_int_equal(fy_store_read(c->store, get_desired, got, &err), 1);
  assert_string_equal(got, "second");
  assert_int_equal(fy_store_write(c->store, del_desired, NULL, &err), 1);
  assert_int_equal(fy_store_write(c->store, del_desired, NULL, &err), 0);
  assert_int_equal(fy_store_read(c->store, get_desired, got, &err), 0);
}

static void store_keeps_record_and_statements_in_order(void **state) {
  struct ctx *c = *state;
  struct fy_err err;
  struct txn_args a = {.c = c};
  assert_int_equal(fy_store_read(c->store, get_only, &a, &err), 0); /* not enrolled */

  const char *texts[] = {"first", "second", "third"};
  struct fy_bytes st[3];
  for (int i = 0; i < 3; i++)
    st[i] = fy_bytes_str(texts[i]);
  a.rec = sample_record(c);
  a.statements = st;
  a.n = 2;
  assert_int_equal(fy_store_write(c->store, put_and_add, &a, &err), 0);
  a.statements = &st[2];
  a.n = 1;
  assert_int_equal(fy_store_write(c->store, put_and_add, &a, &err), 0);

  struct txn_args r = {.c = c};
  assert_int_equal(fy_store_read(c->store, read_all, &r, &err), 3);
  struct fy_agent_enrollment want = sample_record(c);
  assert_same_record(&want, &r.rec);
  assert_int_equal(r.out.n, 3);
  for (size_t i = 0; i < 3; i++) {
    assert_int_equal(r.out.index[i], i + 1);
    assert_int_equal(r.out.env[i].len, strlen(texts[i]));
    assert_memory_equal(r.out.env[i].data, texts[i], strlen(texts[i]));
  }
  stored_free(&r.out);
}

/* An admin.set (set) or admin.remove statement by signer. */
static void statement(const struct fy_key *signer, const struct ctx *c, uint64_t seq, bool set,
                      const struct fy_nodeid *target, const char *tenants, struct fy_buf *out) {
  struct fy_err err;
  struct fy_admin ad = {.key = *target, .role = FY_ROLE_OWNER};
  assert_int_equal(fy_admin_set_tenants(&ad, tenants, &err), 0);
  FY_AUTOBUF struct fy_buf args = FY_BUF_INIT, body = FY_BUF_INIT;
  if (fy_admin_args_encode(&ad, set, &args, &err) != 0)
    fail_msg("args: %s", err.msg);
  struct fy_cmd_body b = {
      .issuer = signer->id,
      .coordinator = c->coord.id,
      .seq = seq,
      .issued_at = 1767225600000ull,
      .expires_at = 1767229200000ull, /* long past: statements are not checked for expiry */
      .args = args.data,
      .args_len = args.len,
  };
  snprintf(b.cmd, sizeof(b.cmd), "%s", set ? "admin.set" : "admin.remove");
  if (fy_cmd_body_encode(&b, &body, &err) != 0)
    fail_msg("body: %s", err.msg);
  if (fy_envelope_seal(signer, FY_CTX_COMMAND, body.data, body.len, out, &err) != 0)
    fail_msg("seal: %s", err.msg);
}

static int enroll_txn(struct fy_txn *t, void *user) {
  struct txn_args *a = user;
  struct fy_trust view;
  int rc = fy_agent_state_enroll(t, &a->rec, a->statements, a->n, &view, &a->c->log);
  a->may_sign = fy_trust_may_sign_rollout(&view, &a->admin, "lab");
  fy_trust_free(&view);
  if (rc >= 0)
    a->accepted = rc;
  return rc < 0 ? rc : 0;
}

static int reload_txn(struct fy_txn *t, void *user) {
  struct txn_args *a = user;
  struct fy_agent_enrollment rec;
  int rc = fy_agent_state_get_enrollment(t, &rec);
  if (rc != 1)
    return rc < 0 ? rc : FY_ENOENT;
  struct fy_trust view;
  rc = fy_agent_state_load_trust(t, &rec, &view);
  a->may_sign = rc == 0 && fy_trust_may_sign_rollout(&view, &a->admin, "lab");
  fy_trust_free(&view);
  if (rc < 0)
    return rc;
  return fy_agent_state_each_statement(t, collect, &a->out);
}

static void enroll_keeps_the_accepted_statements_in_order(void **state) {
  struct ctx *c = *state;
  struct fy_err err;
  FY_AUTOBUF struct fy_buf s1 = FY_BUF_INIT, s2 = FY_BUF_INIT, s3 = FY_BUF_INIT, s4 = FY_BUF_INIT;
  statement(&c->root, c, 1, true, &c->other.id, "lab", &s1);  /* accepted */
  statement(&c->other, c, 1, true, &c->coord.id, "lab", &s2); /* accepted: other is an owner of lab now */
  statement(&c->root, c, 1, true, &c->coord.id, "*", &s3);    /* refused: root's seq 1 again */
  statement(&c->coord, c, 1, true, &c->coord.id, "*", &s4);   /* refused: an owner of lab grants "*" */
  struct fy_bytes st[] = {fy_bytes_of(s1.data, s1.len), fy_bytes_of(s3.data, s3.len),
                          fy_bytes_of(s2.data, s2.len), fy_bytes_of(s4.data, s4.len)};
  /* An earlier enrollment's statements are replaced. */
  struct txn_args pre = {.c = c, .rec = sample_record(c), .statements = st, .n = 1};
  assert_int_equal(fy_store_write(c->store, put_and_add, &pre, &err), 0);

  struct txn_args a = {.c = c, .rec = sample_record(c), .statements = st, .n = 4, .admin = c->other.id};
  assert_int_equal(fy_store_write(c->store, enroll_txn, &a, &err), 0);
  assert_int_equal(a.accepted, 2);
  assert_true(a.may_sign);
  fflush(c->logf);
  assert_contains(c->logbuf, "event=trust.refused index=1 code=replayed");
  assert_contains(c->logbuf, "index=3 code=forbidden_tenant");

  struct txn_args r = {.c = c, .admin = c->other.id};
  assert_int_equal(fy_store_read(c->store, reload_txn, &r, &err), 2);
  assert_true(r.may_sign);
  assert_int_equal(r.out.n, 2);
  assert_int_equal(r.out.index[0], 1);
  assert_int_equal(r.out.index[1], 2);
  assert_int_equal(r.out.env[0].len, s1.len);
  assert_memory_equal(r.out.env[0].data, s1.data, s1.len);
  assert_int_equal(r.out.env[1].len, s2.len);
  assert_memory_equal(r.out.env[1].data, s2.data, s2.len);
  stored_free(&r.out);
}

static int add_raw(struct fy_txn *t, void *user) {
  struct fy_bytes *b = user;
  return fy_agent_state_add_statement(t, b->p, b->n);
}

static void a_tampered_store_is_refused_on_reload(void **state) {
  struct ctx *c = *state;
  struct fy_err err;
  FY_AUTOBUF struct fy_buf s1 = FY_BUF_INIT;
  statement(&c->other, c, 1, true, &c->other.id, "lab", &s1); /* other is no owner yet */
  struct txn_args a = {.c = c, .rec = sample_record(c), .statements = NULL, .n = 0};
  assert_int_equal(fy_store_write(c->store, enroll_txn, &a, &err), 0);
  struct fy_bytes raw = fy_bytes_of(s1.data, s1.len);
  assert_int_equal(fy_store_write(c->store, add_raw, &raw, &err), 0);
  struct txn_args r = {.c = c, .admin = c->other.id};
  assert_int_equal(fy_store_read(c->store, reload_txn, &r, &err), FY_EINVAL);
  assert_contains(err.msg, "stored statement 1 is refused (unknown_signer)");
}

/* ---- agent.enroll ------------------------------------------------------------------------- */

static void request_with_and_without_a_secret(void **state) {
  (void)state;
  struct fy_err err;
  uint8_t secret[32];
  memset(secret, 0x5a, sizeof(secret));
  const uint8_t facts[] = {0x81, 0xa1, 'a', 0x01}; /* {"a": 1} */
  for (int with = 0; with < 2; with++) {
    FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
    assert_int_equal(fy_agent_enroll_request_encode(with ? secret : NULL, facts, sizeof(facts), &b, &err), 0);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&u, (const char *)b.data, b.len, &off), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, b.len);
    assert_int_equal(u.data.type, MSGPACK_OBJECT_MAP);
    assert_int_equal(u.data.via.map.size, with ? 2 : 1);
    const msgpack_object_kv *kv = u.data.via.map.ptr;
    if (with) {
      assert_int_equal(kv[0].val.type, MSGPACK_OBJECT_BIN);
      assert_memory_equal(kv[0].val.via.bin.ptr, secret, 32);
      kv++;
    }
    assert_int_equal(kv->key.via.str.size, 5);
    assert_memory_equal(kv->key.via.str.ptr, "facts", 5);
    assert_int_equal(kv->val.type, MSGPACK_OBJECT_MAP);
    msgpack_unpacked_destroy(&u);
  }
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  assert_int_equal(fy_agent_enroll_request_encode(NULL, NULL, 0, &b, &err), FY_EINVAL);
  assert_contains(err.msg, "facts are empty");
}

static void pack_reply(msgpack_packer *pk, const struct ctx *c, const char *status, bool roots, bool extra,
                       const struct fy_buf *st, size_t nst) {
  msgpack_pack_map(pk, 4 + (roots ? 1 : 0) + (extra ? 1 : 0));
  pk_str(pk, "status");
  pk_str(pk, status);
  pk_str(pk, "tenant");
  pk_str(pk, strcmp(status, "enrolled") == 0 ? "lab" : "");
  pk_str(pk, "labels");
  msgpack_pack_map(pk, 1);
  pk_str(pk, "site");
  pk_str(pk, "berlin");
  if (extra) {
    pk_str(pk, "motd");
    pk_str(pk, "a newer coordinator says more");
  }
  if (roots) {
    pk_str(pk, "roots");
    msgpack_pack_array(pk, 1);
    msgpack_pack_bin_with_body(pk, c->root.id.key, 32);
  }
  pk_str(pk, "statements");
  msgpack_pack_array(pk, nst);
  for (size_t i = 0; i < nst; i++)
    msgpack_pack_bin_with_body(pk, st[i].data, st[i].len);
}

static void reply_decodes(void **state) {
  struct ctx *c = *state;
  struct fy_err err;
  FY_AUTOBUF struct fy_buf s1 = FY_BUF_INIT, s2 = FY_BUF_INIT;
  statement(&c->root, c, 1, true, &c->other.id, "lab", &s1);
  statement(&c->root, c, 2, false, &c->other.id, "lab", &s2);
  struct fy_buf st[] = {s1, s2};
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  msgpack_packer pk;
  msgpack_packer_init(&pk, &b, fy_mp_buf_write);
  pack_reply(&pk, c, "enrolled", true, true, st, 2);
  struct fy_agent_enroll_reply r;
  assert_int_equal(fy_agent_enroll_reply_decode(b.data, b.len, &r, &err), 0);
  assert_int_equal(r.status, FY_AGENT_ENROLL_ENROLLED);
  assert_string_equal(r.tenant, "lab");
  assert_string_equal(fy_labels_get(&r.labels, "site"), "berlin");
  assert_int_equal(r.nroots, 1);
  assert_memory_equal(r.roots[0].key, c->root.id.key, 32);
  assert_int_equal(r.nstatements, 2);
  assert_int_equal(r.statements[1].n, s2.len);
  assert_memory_equal(r.statements[1].p, s2.data, s2.len);
  fy_agent_enroll_reply_free(&r);

  b.len = 0;
  pack_reply(&pk, c, "pending", false, false, NULL, 0);
  assert_int_equal(fy_agent_enroll_reply_decode(b.data, b.len, &r, &err), 0);
  assert_int_equal(r.status, FY_AGENT_ENROLL_PENDING);
  assert_int_equal(r.nstatements, 0);
  fy_agent_enroll_reply_free(&r);
}

static void reply_bad_input(void **state) {
  struct ctx *c = *state;
  struct fy_err err;
  struct fy_agent_enroll_reply r;
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  msgpack_packer pk;
  msgpack_packer_init(&pk, &b, fy_mp_buf_write);

  pack_reply(&pk, c, "enrolled", false, false, NULL, 0);
  assert_int_equal(fy_agent_enroll_reply_decode(b.data, b.len, &r, &err), FY_EINVAL);
  assert_contains(err.msg, "enroll reply: enrolled without roots");

  b.len = 0;
  pack_reply(&pk, c, "approved", true, false, NULL, 0);
  assert_int_equal(fy_agent_enroll_reply_decode(b.data, b.len, &r, &err), FY_EINVAL);
  assert_contains(err.msg, "status 'approved' is neither enrolled nor pending");

  b.len = 0;
  msgpack_pack_map(&pk, 1);
  pk_str(&pk, "tenant");
  pk_str(&pk, "lab");
  assert_int_equal(fy_agent_enroll_reply_decode(b.data, b.len, &r, &err), FY_EINVAL);
  assert_contains(err.msg, "missing key 'status'");

  b.len = 0;
  msgpack_pack_map(&pk, 2);
  pk_str(&pk, "status");
  pk_str(&pk, "pending");
  pk_str(&pk, "roots");
  msgpack_pack_array(&pk, 2);
  msgpack_pack_bin_with_body(&pk, c->root.id.key, 32);
  msgpack_pack_bin_with_body(&pk, c->root.id.key, 16);
  assert_int_equal(fy_agent_enroll_reply_decode(b.data, b.len, &r, &err), FY_EINVAL);
  assert_contains(err.msg, "enroll reply: roots: element 1 is not 32 bytes of bin");

  b.len = 0;
  msgpack_pack_map(&pk, 2);
  pk_str(&pk, "status");
  pk_str(&pk, "pending");
  pk_str(&pk, "statements");
  msgpack_pack_array(&pk, 2);
  msgpack_pack_bin_with_body(&pk, "x", 1);
  pk_str(&pk, "not bin");
  assert_int_equal(fy_agent_enroll_reply_decode(b.data, b.len, &r, &err), FY_EINVAL);
  assert_contains(err.msg, "statements: element 1 is not bin");
  assert_null(r.statements);

  b.len = 0;
  msgpack_pack_map(&pk, 2);
  pk_str(&pk, "status");
  pk_str(&pk, "pending");
  pk_str(&pk, "status");
  pk_str(&pk, "pending");
  assert_int_equal(fy_agent_enroll_reply_decode(b.data, b.len, &r, &err), FY_EINVAL);
  assert_contains(err.msg, "duplicate key 'status'");

  const uint8_t huge[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
  assert_int_equal(fy_agent_enroll_reply_decode(huge, sizeof(huge), &r, &err), FY_EINVAL);
  assert_contains(err.msg, "enroll reply");
}

/* ---- the status file ------------------------------------------------------------------------ */

static struct fy_agent_status sample_status(const struct ctx *c) {
  struct fy_agent_status s = {
      .state = FY_AGENT_ENROLLED,
      .has_coordinator = true,
      .coordinator = c->coord.id,
      .link_up = true,
      .link_since = 1767225600123ull,
      .queued = 3,
      .facts_sent_at = 1767225601000ull,
      .updated_at = 1767225602000ull,
      .pid = 4242,
  };
  snprintf(s.last_error, sizeof(s.last_error), "timed out \"dialling\" 127.0.0.1:4433\n\xff");
  snprintf(s.tenant, sizeof(s.tenant), "lab");
  snprintf(s.apply_state, sizeof(s.apply_state), "rolled_back");
  snprintf(s.apply_rollout, sizeof(s.apply_rollout), "r-42");
  snprintf(s.apply_version, sizeof(s.apply_version), "1.2.0");
  snprintf(s.apply_previous, sizeof(s.apply_previous), "1.1.0");
  snprintf(s.apply_message, sizeof(s.apply_message), "health check failed\n(exit 1)");
  struct fy_err err;
  assert_int_equal(fy_labels_parse("role=kiosk,site=berlin", &s.labels, &err), 0);
  return s;
}

static void status_round_trip(void **state) {
  struct ctx *c = *state;
  struct fy_err err;
  struct fy_agent_status s = sample_status(c), r;
  struct fy_agent_status first = s;
  first.state = FY_AGENT_PENDING;
  first.has_coordinator = false;
  assert_int_equal(fy_agent_status_write(c->dir, &first, &err), 0);
  assert_int_equal(fy_agent_status_read(c->dir, &r, &err), 0);
  assert_int_equal(r.state, FY_AGENT_PENDING);
  assert_false(r.has_coordinator);

  /* Replaced: the new one reads back, and no temporary is left behind. */
  assert_int_equal(fy_agent_status_write(c->dir, &s, &err), 0);
  char tmp[300];
  snprintf(tmp, sizeof(tmp), "%s/status.tmp", c->dir);
  assert_int_not_equal(access(tmp, F_OK), 0);
  assert_int_equal(fy_agent_status_read(c->dir, &r, &err), 0);
  assert_int_equal(r.state, FY_AGENT_ENROLLED);
  assert_true(r.has_coordinator);
  assert_memory_equal(r.coordinator.key, c->coord.id.key, 32);
  assert_true(r.link_up);
  assert_int_equal(r.link_since, s.link_since);
  /* quotes survive; control and non-ASCII bytes become '?' */
  assert_string_equal(r.last_error, "timed out \"dialling\" 127.0.0.1:4433??");
  assert_string_equal(r.tenant, "lab");
  assert_string_equal(fy_labels_get(&r.labels, "role"), "kiosk");
  assert_int_equal(r.queued, 3);
  assert_int_equal(r.facts_sent_at, s.facts_sent_at);
  assert_int_equal(r.updated_at, s.updated_at);
  assert_int_equal(r.pid, 4242);
  assert_string_equal(r.apply_state, "rolled_back");
  assert_string_equal(r.apply_rollout, "r-42");
  assert_string_equal(r.apply_version, "1.2.0");
  assert_string_equal(r.apply_previous, "1.1.0");
  assert_string_equal(r.apply_message, "health check failed?(exit 1)");

  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  assert_int_equal(fy_agent_status_print(&r, false, f, &err), 0);
  fclose(f);
  assert_contains(text, "state:       enrolled\n");
  assert_contains(text, "link:        up since 2026-01-01T00:00:00Z\n");
  assert_contains(text, "labels:      role=kiosk,site=berlin\n");
  assert_contains(text, "queued:      3\n");
  assert_contains(text, "apply:       rolled_back rollout r-42\n");
  assert_contains(text, "version:     1.2.0\n");
  assert_contains(text, "previous:    1.1.0\n");
  free(text);
  f = open_memstream(&text, &len);
  assert_int_equal(fy_agent_status_print(&r, true, f, &err), 0);
  fclose(f);
  assert_contains(text, "\"state\": \"enrolled\"");
  assert_contains(text, "\"site\": \"berlin\"");
  assert_contains(text, "\"previous\": \"1.1.0\"");
  free(text);
}

static void status_missing_or_damaged(void **state) {
  struct ctx *c = *state;
  struct fy_err err;
  struct fy_agent_status r;
  assert_int_equal(fy_agent_status_read(c->dir, &r, &err), FY_ENOENT);
  assert_contains(err.msg, "no status in");

  char path[300];
  snprintf(path, sizeof(path), "%s/status", c->dir);
  FILE *f = fopen(path, "w");
  fputs("{\"state\": \"dancing\"}", f);
  fclose(f);
  assert_int_equal(fy_agent_status_read(c->dir, &r, &err), FY_EINVAL);
  assert_contains(err.msg, "state 'dancing' is unknown");

  f = fopen(path, "w");
  fputs("{\"state\": ", f);
  fclose(f);
  assert_int_equal(fy_agent_status_read(c->dir, &r, &err), FY_EINVAL);
  assert_contains(err.msg, "status");

  /* an older agent's file has no apply object: it reads as "" */
  f = fopen(path, "w");
  fputs("{\"state\": \"enrolled\", \"coordinator\": null, \"link\": {\"up\": false, \"since\": 0, "
        "\"last_error\": \"\"}, \"tenant\": \"\", \"labels\": {}, \"queued\": 0, \"facts_sent_at\": 0, "
        "\"updated_at\": 0, \"pid\": 1}",
        f);
  fclose(f);
  assert_int_equal(fy_agent_status_read(c->dir, &r, &err), 0);
  assert_string_equal(r.apply_state, "");
  f = fopen(path, "w");
  fputs("{\"state\": \"enrolled\", \"coordinator\": null, \"link\": {\"up\": false, \"since\": 0, "
        "\"last_error\": \"\"}, \"tenant\": \"\", \"labels\": {}, \"queued\": 0, \"facts_sent_at\": 0, "
        "\"updated_at\": 0, \"pid\": 1, \"apply\": {\"state\": 7}}",
        f);
  fclose(f);
  assert_int_equal(fy_agent_status_read(c->dir, &r, &err), FY_EINVAL);
  assert_contains(err.msg, "state is not a string");

  assert_int_equal(fy_agent_status_write("/nonexistent/dir", &r, &err), FY_ENOENT);
  assert_contains(err.msg, "/nonexistent/dir/status.tmp");
}

static void state_names(void **state) {
  (void)state;
  enum fy_agent_state s;
  const char *names[] = {"starting", "enrolling", "pending", "enrolled", "revoked"};
  for (int i = 0; i < 5; i++) {
    assert_string_equal(fy_agent_state_name((enum fy_agent_state)i), names[i]);
    assert_int_equal(fy_agent_state_parse(names[i], &s), 0);
    assert_int_equal(s, i);
  }
  assert_int_equal(fy_agent_state_parse("bored", &s), FY_EINVAL);
  assert_string_equal(fy_agent_state_name((enum fy_agent_state)99), "unknown");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(record_round_trip, setup, teardown),
      cmocka_unit_test_setup_teardown(record_bad_input, setup, teardown),
      cmocka_unit_test_setup_teardown(store_keeps_record_and_statements_in_order, setup, teardown),
      cmocka_unit_test_setup_teardown(store_keeps_one_desired_state, setup, teardown),
      cmocka_unit_test_setup_teardown(enroll_keeps_the_accepted_statements_in_order, setup, teardown),
      cmocka_unit_test_setup_teardown(a_tampered_store_is_refused_on_reload, setup, teardown),
      cmocka_unit_test_setup_teardown(request_with_and_without_a_secret, setup, teardown),
      cmocka_unit_test_setup_teardown(reply_decodes, setup, teardown),
      cmocka_unit_test_setup_teardown(reply_bad_input, setup, teardown),
      cmocka_unit_test_setup_teardown(status_round_trip, setup, teardown),
      cmocka_unit_test_setup_teardown(status_missing_or_damaged, setup, teardown),
      cmocka_unit_test(state_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
