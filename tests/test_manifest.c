/* Artifact manifests: the golden vector of proto/manifest.md, round trips,
 * decode and encode errors with their messages, and every refusal of
 * fy_manifest_verify from a crafted envelope, in the documented order.
 *
 * The golden hex was produced independently of ferry's code (Python: a
 * hand-written shortest-form msgpack encoder and pyca/cryptography's
 * Ed25519); test_spec_vectors checks that proto/manifest.md carries the same
 * strings. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <msgpack.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/cleanup.h"
#include "base/mpmap.h"
#include "crypto/key.h"
#include "fleet/envelope.h"
#include "fleet/manifest.h"
#include "fleet/trust.h"
#include "hex_util.h"

/* Copies a C string into a char array, cut to fit. */
#define SET(dst, src) snprintf((dst), sizeof(dst), "%s", (src))

#define assert_contains(haystack, needle)                                                                    \
  do {                                                                                                       \
    if (!strstr((haystack), (needle)))                                                                       \
      fail_msg("message \"%s\" does not contain \"%s\"", (haystack), (needle));                              \
  } while (0)

/* ---- golden vector (proto/manifest.md) ------------------------------------------ */

static const char GOLDEN_ISSUER[] = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8";
static const char GOLDEN_COORD[] = "29acbae141bccaf0b22e1a94d34d0bc7361e526d0bfe12c89794bc9322966dd7";
static const char GOLDEN_SHA256[] = "e91c030f673800fe01cbf0ebaedc3e01cdedc05a277ebfdd040b194e7e1933c2";
static const char GOLDEN_BODY[] =
    "8ca6697373756572c42003a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8a5636f6f7264c420"
    "29acbae141bccaf0b22e1a94d34d0bc7361e526d0bfe12c89794bc9322966dd7a674656e616e74a36c6162a3696174cf0000"
    "019b76daa800a46e616d65a96b696f736b2d617070a776657273696f6ea5312e322e30a46b696e64a6736372697074a37572"
    "69d93c68747470733a2f2f757064617465732e6578616d706c652e636f6d2f6b696f736b2d6170702f312e322e302f6b696f"
    "736b2d6170702e7461722e677aa6736861323536c420e91c030f673800fe01cbf0ebaedc3e01cdedc05a277ebfdd040b194e"
    "7e1933c2a473697a65ce00100000aa636f6d70617469626c6592a8727069342f312e34a472706935af616c6c6f775f646f77"
    "6e6772616465c2";
static const char GOLDEN_PREFIX[] = "66657272792f6d616e69666573742f763100";
static const char GOLDEN_SIG[] = "77b2d307fb47e15354d42c111ecb1e1ba483f0378186d2be15fe100b63731d81"
                                 "7366cc1c3693ac9a76340b7a22037b467df773c20c2670819c1b61a8a3b2fa01";
static const char GOLDEN_ENVELOPE[] =
    "93c501338ca6697373756572c42003a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8a5636f6f"
    "7264c42029acbae141bccaf0b22e1a94d34d0bc7361e526d0bfe12c89794bc9322966dd7a674656e616e74a36c6162a36961"
    "74cf0000019b76daa800a46e616d65a96b696f736b2d617070a776657273696f6ea5312e322e30a46b696e64a67363726970"
    "74a3757269d93c68747470733a2f2f757064617465732e6578616d706c652e636f6d2f6b696f736b2d6170702f312e322e30"
    "2f6b696f736b2d6170702e7461722e677aa6736861323536c420e91c030f673800fe01cbf0ebaedc3e01cdedc05a277ebfdd"
    "040b194e7e1933c2a473697a65ce00100000aa636f6d70617469626c6592a8727069342f312e34a472706935af616c6c6f77"
    "5f646f776e6772616465c2c42003a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8c44077b2d3"
    "07fb47e15354d42c111ecb1e1ba483f0378186d2be15fe100b63731d817366cc1c3693ac9a76340b7a22037b467df773c20c"
    "2670819c1b61a8a3b2fa01";
static const char GOLDEN_ID[] = "8bca5f99a4a1ec3bf06aedd2a8e72b23a30eb960ebe00bfdd4a32ce74683e771";
static const char GOLDEN_URI[] = "https://updates.example.com/kiosk-app/1.2.0/kiosk-app.tar.gz";
static const uint64_t IAT = 1767225600000; /* 2026-01-01T00:00:00Z */
static const char NIX_PATH[] = "/nix/store/0c0bqbqy3dkh9d0xjgdzlgzxvpcs0f5w-nixos-system-kiosk-24.05";

enum { ADMIN, COORD, OTHER, VIEWER, OPERATOR_PROD, NKEYS }; /* seeds 0x00.., 0x20.., 0x40.., ... */

struct ctx {
  struct fy_key keys[NKEYS];
  struct fy_trust trust; /* root: ADMIN; VIEWER a viewer of "*", OPERATOR_PROD an operator of "prod" */
  uint64_t seq;
};

/* An admin.set statement by ADMIN (the root), applied to the agent's view. */
static void grant(struct ctx *c, int who, enum fy_role role, const char *tenants) {
  struct fy_admin a;
  memset(&a, 0, sizeof(a));
  a.key = c->keys[who].id;
  a.role = role;
  assert_int_equal(fy_admin_set_tenants(&a, tenants, NULL), 0);
  FY_AUTOBUF struct fy_buf args = FY_BUF_INIT, body = FY_BUF_INIT, env = FY_BUF_INIT;
  assert_int_equal(fy_admin_args_encode(&a, true, &args, NULL), 0);
  struct fy_cmd_body b = {.issuer = c->keys[ADMIN].id,
                          .coordinator = c->keys[COORD].id,
                          .seq = ++c->seq,
                          .issued_at = IAT,
                          .expires_at = IAT + 1,
                          .cmd = "admin.set",
                          .args = args.data,
                          .args_len = args.len};
  assert_int_equal(fy_cmd_body_encode(&b, &body, NULL), 0);
  assert_int_equal(fy_envelope_seal(&c->keys[ADMIN], FY_CTX_COMMAND, body.data, body.len, &env, NULL), 0);
  struct fy_err err = {0};
  if (fy_trust_apply(&c->trust, env.data, env.len, &err) != FY_CMD_OK)
    fail_msg("grant: %s", err.msg);
}

static int setup(void **state) {
  struct ctx *c = calloc(1, sizeof(*c));
  assert_non_null(c);
  for (int k = 0; k < NKEYS; k++) {
    uint8_t seed[32];
    for (int i = 0; i < 32; i++)
      seed[i] = (uint8_t)(0x20 * k + i);
    assert_int_equal(fy_key_from_seed(&c->keys[k], seed, NULL), 0);
  }
  assert_int_equal(fy_trust_init(&c->trust, &c->keys[COORD].id, &c->keys[ADMIN].id, 1, NULL), 0);
  grant(c, VIEWER, FY_ROLE_VIEWER, "*");
  grant(c, OPERATOR_PROD, FY_ROLE_OPERATOR, "prod");
  *state = c;
  return 0;
}

static int teardown(void **state) {
  struct ctx *c = *state;
  for (int k = 0; k < NKEYS; k++)
    fy_key_free(&c->keys[k]);
  fy_trust_free(&c->trust);
  free(c);
  return 0;
}

static void golden_manifest(const struct ctx *c, struct fy_manifest *m) {
  memset(m, 0, sizeof(*m));
  m->issuer = c->keys[ADMIN].id;
  m->coordinator = c->keys[COORD].id;
  SET(m->tenant, "lab");
  m->issued_at = IAT;
  SET(m->name, "kiosk-app");
  assert_int_equal(fy_manifest_set_version(m, "1.2.0", NULL), 0);
  m->kind = FY_ARTIFACT_SCRIPT;
  SET(m->uri, GOLDEN_URI);
  crypto_hash_sha256(m->sha256, (const uint8_t *)"kiosk-app 1.2.0\n", 16);
  m->size = 1048576;
  SET(m->compatible[0], "rpi4/1.4");
  SET(m->compatible[1], "rpi5");
  m->ncompatible = 2;
  m->allow_downgrade = false;
}

/* The agent of the golden vector: tenant lab, an rpi5, nothing installed. */
static struct fy_manifest_target golden_target(const struct ctx *c) {
  struct fy_manifest_target t = {.coordinator = &c->keys[COORD].id,
                                 .tenant = "lab",
                                 .trust = &c->trust,
                                 .hw_model = "rpi5",
                                 .hw_revision = "1.0",
                                 .current_version = NULL};
  return t;
}

static void assert_same(const struct fy_manifest *a, const struct fy_manifest *b) {
  assert_true(fy_nodeid_equal(&a->issuer, &b->issuer));
  assert_true(fy_nodeid_equal(&a->coordinator, &b->coordinator));
  assert_string_equal(a->tenant, b->tenant);
  assert_int_equal(a->issued_at, b->issued_at);
  assert_string_equal(a->name, b->name);
  assert_int_equal(fy_semver_cmp(&a->version, &b->version), 0);
  assert_string_equal(a->version.build, b->version.build);
  assert_int_equal(a->kind, b->kind);
  assert_string_equal(a->uri, b->uri);
  assert_memory_equal(a->sha256, b->sha256, 32);
  assert_int_equal(a->size, b->size);
  assert_int_equal(a->ncompatible, b->ncompatible);
  for (size_t i = 0; i < a->ncompatible; i++)
    assert_string_equal(a->compatible[i], b->compatible[i]);
  assert_int_equal(a->allow_downgrade, b->allow_downgrade);
}

static void test_golden(void **state) {
  struct ctx *c = *state;
  char hex[FY_NODEID_HEX_LEN + 1];
  fy_nodeid_to_hex(&c->keys[ADMIN].id, hex);
  assert_string_equal(hex, GOLDEN_ISSUER);
  fy_nodeid_to_hex(&c->keys[COORD].id, hex);
  assert_string_equal(hex, GOLDEN_COORD);

  struct fy_manifest m;
  golden_manifest(c, &m);
  assert_hex(m.sha256, 32, GOLDEN_SHA256);
  FY_AUTOBUF struct fy_buf body = FY_BUF_INIT, env = FY_BUF_INIT;
  struct fy_err err = {0};
  assert_int_equal(fy_manifest_encode(&m, &body, &err), 0);
  assert_hex(body.data, body.len, GOLDEN_BODY);
  assert_hex((const uint8_t *)FY_CTX_MANIFEST, sizeof(FY_CTX_MANIFEST), GOLDEN_PREFIX);
  assert_int_equal(fy_manifest_sign(&c->keys[ADMIN], &m, &env, &err), 0);
  assert_hex(env.data, env.len, GOLDEN_ENVELOPE);

  struct fy_envelope e;
  assert_int_equal(fy_envelope_open(env.data, env.len, FY_CTX_MANIFEST, &e, &err), 0);
  assert_hex(e.sig, sizeof(e.sig), GOLDEN_SIG);
  uint8_t id[FY_ENVELOPE_ID_LEN];
  fy_envelope_id(env.data, env.len, id);
  assert_hex(id, sizeof(id), GOLDEN_ID);
}

/* The spec's envelope bytes, verified as an agent does. */
static void test_golden_verify(void **state) {
  struct ctx *c = *state;
  size_t n;
  uint8_t *env = from_hex(GOLDEN_ENVELOPE, &n);
  struct fy_manifest_target t = golden_target(c);
  struct fy_manifest got, want;
  struct fy_err err = {0};
  assert_int_equal(fy_manifest_verify(env, n, &t, &got, &err), FY_CMD_OK);
  golden_manifest(c, &want);
  assert_same(&got, &want);
  assert_string_equal(got.version_text, "1.2.0");
  assert_int_equal(got.version.minor, 2);
  /* out is optional. */
  assert_int_equal(fy_manifest_verify(env, n, &t, NULL, NULL), FY_CMD_OK);
  free(env);
}

static void test_spec_vectors(void **state) {
  (void)state;
  const char *data_dir = getenv("FERRY_TEST_DATA");
  if (!data_dir) {
    skip();
    return;
  }
  char path[4096];
  const char *slash = strrchr(data_dir, '/');
  assert_non_null(slash);
  snprintf(path, sizeof(path), "%.*s/../proto/manifest.md", (int)(slash - data_dir), data_dir);
  FY_AUTOFCLOSE FILE *f = fopen(path, "r");
  if (!f)
    fail_msg("cannot open %s", path);
  /* Hex in the spec is wrapped: compare with white space removed. */
  static char text[1 << 16];
  size_t n = 0;
  int ch;
  while ((ch = fgetc(f)) != EOF && n < sizeof(text) - 1)
    if (ch != ' ' && ch != '\n' && ch != '\r' && ch != '\t')
      text[n++] = (char)ch;
  text[n] = '\0';
  const char *const vectors[] = {GOLDEN_ISSUER, GOLDEN_COORD,    GOLDEN_SHA256, GOLDEN_BODY, GOLDEN_PREFIX,
                                 GOLDEN_SIG,    GOLDEN_ENVELOPE, GOLDEN_ID,     GOLDEN_URI};
  for (size_t i = 0; i < FY_ARRAY_LEN(vectors); i++)
    if (!strstr(text, vectors[i]))
      fail_msg("proto/manifest.md lacks golden vector %zu: %s", i, vectors[i]);
}

/* ---- round trips ------------------------------------------------------------------ */

static void round_trip(const struct fy_manifest *m, struct fy_manifest *out) {
  FY_AUTOBUF struct fy_buf body = FY_BUF_INIT, again = FY_BUF_INIT;
  struct fy_err err = {0};
  if (fy_manifest_encode(m, &body, &err) != 0)
    fail_msg("encode: %s", err.msg);
  if (fy_manifest_decode(body.data, body.len, out, &err) != 0)
    fail_msg("decode: %s", err.msg);
  assert_same(m, out);
  /* Canonical: what decodes encodes to the same bytes. */
  assert_int_equal(fy_manifest_encode(out, &again, &err), 0);
  assert_int_equal(again.len, body.len);
  assert_memory_equal(again.data, body.data, body.len);
}

static void test_round_trip_nixos(void **state) {
  struct ctx *c = *state;
  struct fy_manifest m, d;
  golden_manifest(c, &m);
  m.kind = FY_ARTIFACT_NIXOS;
  SET(m.uri, NIX_PATH);
  memset(m.sha256, 0, 32);
  m.size = 0;
  m.ncompatible = 0;
  m.allow_downgrade = true;
  m.issued_at = UINT64_MAX;
  assert_int_equal(fy_manifest_set_version(&m, "v24.5.1-beta.2+git.abc", NULL), 0);
  round_trip(&m, &d);
  assert_string_equal(d.version_text, "v24.5.1-beta.2+git.abc"); /* travels verbatim */
  assert_string_equal(d.version.pre, "beta.2");
  assert_int_equal(d.kind, FY_ARTIFACT_NIXOS);
  assert_true(d.allow_downgrade);
}

static void test_round_trip_limits(void **state) {
  struct ctx *c = *state;
  struct fy_manifest *m = calloc(1, sizeof(*m)), *d = calloc(1, sizeof(*d));
  assert_non_null(m);
  assert_non_null(d);
  golden_manifest(c, m);
  memset(m->name, 'a', FY_MANIFEST_NAME_MAX);
  m->name[FY_MANIFEST_NAME_MAX] = '\0';
  memset(m->tenant, 't', FY_TENANT_MAX);
  m->tenant[FY_TENANT_MAX] = '\0';
  SET(m->uri, "file:///");
  memset(m->uri + 8, 'u', FY_MANIFEST_URI_MAX - 8);
  m->uri[FY_MANIFEST_URI_MAX] = '\0';
  m->size = UINT64_MAX;
  for (size_t i = 0; i < FY_MANIFEST_COMPATIBLE_MAX; i++) {
    memset(m->compatible[i], 'M', FY_MANIFEST_HW_PART_MAX);
    m->compatible[i][FY_MANIFEST_HW_PART_MAX] = '/';
    memset(m->compatible[i] + FY_MANIFEST_HW_PART_MAX + 1, 'r', FY_MANIFEST_HW_PART_MAX);
    snprintf(m->compatible[i] + FY_MANIFEST_COMPATIBLE_ENTRY_MAX - 2, 3, "%02zu", i); /* distinct */
  }
  m->ncompatible = FY_MANIFEST_COMPATIBLE_MAX;
  round_trip(m, d);
  assert_int_equal(strlen(d->compatible[31]), FY_MANIFEST_COMPATIBLE_ENTRY_MAX);
  free(m);
  free(d);
}

/* version_text "" encodes version's canonical text. */
static void test_encode_version_from_struct(void **state) {
  struct ctx *c = *state;
  struct fy_manifest m, d;
  golden_manifest(c, &m);
  m.version_text[0] = '\0';
  m.version.major = 3;
  SET(m.version.pre, "rc.1");
  FY_AUTOBUF struct fy_buf body = FY_BUF_INIT;
  assert_int_equal(fy_manifest_encode(&m, &body, NULL), 0);
  assert_int_equal(fy_manifest_decode(body.data, body.len, &d, NULL), 0);
  assert_string_equal(d.version_text, "3.2.0-rc.1");
}

static void test_kind_names(void **state) {
  (void)state;
  enum fy_artifact_kind k;
  struct fy_err err = {0};
  assert_string_equal(fy_artifact_kind_name(FY_ARTIFACT_SCRIPT), "script");
  assert_string_equal(fy_artifact_kind_name(FY_ARTIFACT_NIXOS), "nixos");
  assert_string_equal(fy_artifact_kind_name((enum fy_artifact_kind)0), "unknown");
  assert_int_equal(fy_artifact_kind_parse("nixos", &k, &err), 0);
  assert_int_equal(k, FY_ARTIFACT_NIXOS);
  assert_int_equal(fy_artifact_kind_parse("Script", &k, &err), FY_EINVAL);
  assert_contains(err.msg, "kind \"Script\" is not one of script, nixos");
  assert_string_equal(fy_cmd_refusal_name(FY_CMD_INCOMPATIBLE), "incompatible");
  assert_string_equal(fy_cmd_refusal_name(FY_CMD_DOWNGRADE), "downgrade");
}

/* ---- decode errors ---------------------------------------------------------------- */

/* A golden body packed field by field, without the encoder's checks. */
struct raw {
  const char *omit, *dup, *extra; /* a key to leave out, to write twice, an unknown key to add */
  const char *key;                /* the key whose value is replaced by... */
  const char *str;                /* ...this str, or */
  const char *hex;                /* ...these raw msgpack bytes */
  bool reverse;
};

static const char *const KEYS[] = {"issuer", "coord", "tenant", "iat",  "name",       "version",
                                   "kind",   "uri",   "sha256", "size", "compatible", "allow_downgrade"};

static void pack_value(msgpack_packer *pk, const struct ctx *c, const struct raw *r, const char *k) {
  if (r->key && !strcmp(k, r->key)) {
    if (r->str) {
      msgpack_pack_str_with_body(pk, r->str, strlen(r->str));
    } else {
      size_t n;
      FY_AUTOFREE uint8_t *b = from_hex(r->hex, &n);
      fy_buf_append(pk->data, b, n, NULL);
    }
    return;
  }
  if (!strcmp(k, "issuer"))
    msgpack_pack_bin_with_body(pk, c->keys[ADMIN].id.key, 32);
  else if (!strcmp(k, "coord"))
    msgpack_pack_bin_with_body(pk, c->keys[COORD].id.key, 32);
  else if (!strcmp(k, "tenant"))
    msgpack_pack_str_with_body(pk, "lab", 3);
  else if (!strcmp(k, "iat"))
    msgpack_pack_uint64(pk, IAT);
  else if (!strcmp(k, "name"))
    msgpack_pack_str_with_body(pk, "kiosk-app", 9);
  else if (!strcmp(k, "version"))
    msgpack_pack_str_with_body(pk, "1.2.0", 5);
  else if (!strcmp(k, "kind"))
    msgpack_pack_str_with_body(pk, "script", 6);
  else if (!strcmp(k, "uri"))
    msgpack_pack_str_with_body(pk, GOLDEN_URI, strlen(GOLDEN_URI));
  else if (!strcmp(k, "sha256"))
    msgpack_pack_bin_with_body(pk, "0123456789abcdef0123456789abcdef", 32);
  else if (!strcmp(k, "size"))
    msgpack_pack_uint64(pk, 1048576);
  else if (!strcmp(k, "compatible"))
    msgpack_pack_array(pk, 0);
  else
    msgpack_pack_false(pk);
}

static void pack_raw(const struct ctx *c, const struct raw *r, struct fy_buf *out) {
  msgpack_packer pk;
  msgpack_packer_init(&pk, out, fy_mp_buf_write);
  size_t n = FY_ARRAY_LEN(KEYS) - (r->omit ? 1 : 0) + (r->dup ? 1 : 0) + (r->extra ? 1 : 0);
  msgpack_pack_map(&pk, n);
  for (size_t i = 0; i < FY_ARRAY_LEN(KEYS); i++) {
    const char *k = KEYS[r->reverse ? FY_ARRAY_LEN(KEYS) - 1 - i : i];
    if (r->omit && !strcmp(k, r->omit))
      continue;
    msgpack_pack_str_with_body(&pk, k, strlen(k));
    pack_value(&pk, c, r, k);
    if (r->dup && !strcmp(k, r->dup)) {
      msgpack_pack_str_with_body(&pk, k, strlen(k));
      pack_value(&pk, c, r, k);
    }
  }
  if (r->extra) {
    msgpack_pack_str_with_body(&pk, r->extra, strlen(r->extra));
    msgpack_pack_nil(&pk);
  }
}

static void test_any_key_order(void **state) {
  struct ctx *c = *state;
  struct raw r = {.reverse = true};
  FY_AUTOBUF struct fy_buf out = FY_BUF_INIT;
  pack_raw(c, &r, &out);
  struct fy_manifest d;
  struct fy_err err = {0};
  if (fy_manifest_decode(out.data, out.len, &d, &err) != 0)
    fail_msg("%s", err.msg);
  assert_string_equal(d.name, "kiosk-app");
  assert_int_equal(d.size, 1048576);
  assert_true(fy_nodeid_equal(&d.issuer, &c->keys[ADMIN].id));
}

static void expect_decode_error(const struct ctx *c, struct raw r, const char *msg) {
  FY_AUTOBUF struct fy_buf out = FY_BUF_INIT;
  pack_raw(c, &r, &out);
  struct fy_manifest d;
  struct fy_err err;
  fy_err_clear(&err);
  memset(&d, 0x55, sizeof(d));
  int rc = fy_manifest_decode(out.data, out.len, &d, &err);
  if (rc != FY_EINVAL)
    fail_msg("expected \"%s\", got rc %d", msg, rc);
  assert_int_equal(err.code, FY_EINVAL);
  assert_contains(err.msg, msg);
  assert_int_equal(d.name[0], 0); /* zeroed on failure */
  assert_int_equal(d.size, 0);
}

static void test_decode_key_errors(void **state) {
  struct ctx *c = *state;
  for (size_t i = 0; i < FY_ARRAY_LEN(KEYS); i++) {
    char want[64];
    snprintf(want, sizeof(want), "manifest: missing key \"%s\"", KEYS[i]);
    expect_decode_error(c, (struct raw){.omit = KEYS[i]}, want);
    snprintf(want, sizeof(want), "manifest: key \"%s\" appears twice", KEYS[i]);
    expect_decode_error(c, (struct raw){.dup = KEYS[i]}, want);
  }
  expect_decode_error(c, (struct raw){.extra = "channel"}, "manifest: unknown key \"channel\"");
  expect_decode_error(c, (struct raw){.extra = "x\ny"}, "manifest: unknown key \"x?y\"");
  expect_decode_error(c, (struct raw){.extra = "Issuer"}, "unknown key \"Issuer\"");
}

static void test_decode_type_errors(void **state) {
  struct ctx *c = *state;
  static const struct {
    const char *key, *hex, *msg;
  } cases[] = {
      {"issuer",
       "c41f"
       "00000000000000000000000000000000000000000000000000000000000000",
       "manifest: issuer is not 32 bytes of bin"},
      {"issuer", "a3616263", "manifest: issuer is not 32 bytes of bin"},
      {"coord", "c0", "manifest: coord is not 32 bytes of bin"},
      {"sha256",
       "c421"
       "000000000000000000000000000000000000000000000000000000000000000000",
       "manifest: sha256 is not 32 bytes of bin"},
      {"tenant", "c403616263", "manifest: tenant is not a string"},
      {"iat", "ff", "manifest: iat is not an unsigned integer"},
      {"iat", "cb3ff0000000000000", "manifest: iat is not an unsigned integer"},
      {"size", "a131", "manifest: size is not an unsigned integer"},
      {"name", "01", "manifest: name is not a string"},
      {"version", "93010200", "manifest: version is not a string"},
      {"kind", "c3", "manifest: kind is not a string"},
      {"uri", "80", "manifest: uri is not a string"},
      {"compatible", "a472706935", "manifest: compatible is not an array"},
      {"compatible", "91c0", "manifest: compatible[0] is not a string"},
      {"compatible",
       "92a472706935"
       "01",
       "manifest: compatible[1] is not a string"},
      {"allow_downgrade", "00", "manifest: allow_downgrade is not a boolean"},
      {"allow_downgrade", "c0", "manifest: allow_downgrade is not a boolean"},
      {"name",
       "a4"
       "6b00"
       "6f73",
       "manifest: name contains a NUL byte"},
  };
  for (size_t i = 0; i < FY_ARRAY_LEN(cases); i++)
    expect_decode_error(c, (struct raw){.key = cases[i].key, .hex = cases[i].hex}, cases[i].msg);
}

static void test_decode_value_errors(void **state) {
  struct ctx *c = *state;
  static const struct {
    const char *key, *str, *msg;
  } cases[] = {
      {"tenant", "", "manifest: tenant"},
      {"tenant", "Lab", "manifest: tenant"},
      {"name", "", "manifest: name is 0 bytes, must be 1 to 63"},
      {"name", "Kiosk", "manifest: name has byte 0x4b at offset 0"},
      {"name", "..", "manifest: name has byte 0x2e at offset 0"},
      {"name", "-x", "name has byte 0x2d at offset 0 (allowed: [a-z0-9._-], starting with [a-z0-9])"},
      {"name", "kiosk/app", "manifest: name has byte 0x2f at offset 5"},
      {"name", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
       "manifest: name is 64 bytes, at most 63"},
      {"version", "1.2", "manifest: version \"1.2\": expected '.' after minor at offset 3"},
      {"version", "1.02.0", "manifest: version \"1.02.0\": minor at offset 2 has a leading zero"},
      {"kind", "docker", "manifest: kind \"docker\" is not one of script, nixos"},
      {"kind", "scriptscriptscriptscript", "manifest: kind is 24 bytes, at most 15"},
      {"uri", "", "manifest: uri is 0 bytes, must be 1 to 2048"},
      {"uri", "ftp://host/x", "manifest: uri \"ftp://host/x\" is not file:///..., http://... or https://..."},
      {"uri", "https://", "is not file:///..., http://... or https://..."},
      {"uri", "https:///x", "manifest: uri \"https:///x\": no host after //"},
      {"uri", "file://host/x", "manifest: uri \"file://host/x\": file:// takes an absolute path"},
      {"uri", "https://a b", "manifest: uri has byte 0x20 at offset 9 (printable ASCII only)"},
      {"uri", "https://a\x7f", "manifest: uri has byte 0x7f at offset 9"},
      {"uri", NIX_PATH, "is not file:///..., http://... or https://... (kind script)"},
  };
  for (size_t i = 0; i < FY_ARRAY_LEN(cases); i++)
    expect_decode_error(c, (struct raw){.key = cases[i].key, .str = cases[i].str}, cases[i].msg);

  /* compatible entries (array of str, as hex) */
  static const struct {
    const char *hex, *msg;
  } compat[] = {
      {"91a0", "manifest: compatible[0] \"\": model must be 1 to 63 bytes"},
      {"91a12f", "compatible[0] \"/\": model must be 1 to 63 bytes"},
      {"91a2612f", "manifest: compatible[0] \"a/\": revision must be 1 to 63 bytes"},
      {"91a5612f622f63",
       "compatible[0] \"a/b/c\": allowed: \"model\" or \"model/revision\", each of [A-Za-z0-9._-]"},
      {"91a3612062", "compatible[0] \"a b\": allowed:"},
      {"92a3727069a3727069", "manifest: compatible[1] \"rpi\" repeats compatible[0]"},
      {"dc0021" /* 33 entries */, "manifest: compatible has 33 entries, at most 32"},
  };
  for (size_t i = 0; i < FY_ARRAY_LEN(compat); i++) {
    char hex[512];
    snprintf(hex, sizeof(hex), "%s", compat[i].hex);
    if (!strncmp(hex, "dc0021", 6))
      for (int k = 0; k < 33; k++)
        snprintf(hex + strlen(hex), sizeof(hex) - strlen(hex), "a1%02x", 'a' + k % 26);
    expect_decode_error(c, (struct raw){.key = "compatible", .hex = hex}, compat[i].msg);
  }
  char hex[256] = "91d940"; /* one str8 of 64 bytes */
  for (int k = 0; k < 64; k++)
    snprintf(hex + strlen(hex), sizeof(hex) - strlen(hex), "6d");
  expect_decode_error(c, (struct raw){.key = "compatible", .hex = hex}, "model must be 1 to 63 bytes");

  /* nixos wants a store path and size 0 */
  FY_AUTOBUF struct fy_buf out = FY_BUF_INIT;
  struct fy_manifest m, d;
  struct fy_err err;
  golden_manifest(c, &m);
  m.kind = FY_ARTIFACT_NIXOS;
  m.size = 0;
  static const char *const bad_paths[] = {
      "/nix/store/0c0bqbqy3dkh9d0xjgdzlgzxvpcs0f5w",          /* no name */
      "/nix/store/0c0bqbqy3dkh9d0xjgdzlgzxvpcs0f5w-",         /* empty name */
      "/nix/store/0c0bqbqy3dkh9d0xjgdzlgzxvpcs0f5w-x/bin/sh", /* sub-path */
      "/nix/store/0c0bqbqy3dkh9d0xjgdzlgzxvpcs0f5e-x",        /* 'e' is not nix-base32 */
      "/nix/store/0c0bqbqy3dkh9d0xjgdzlgzxvpcs0f5-xx",        /* 31-character hash */
      "/nix/store/0c0bqbqy3dkh9d0xjgdzlgzxvpcs0f5w-.x",       /* hidden name */
      "/gnu/store/0c0bqbqy3dkh9d0xjgdzlgzxvpcs0f5w-x",
      "https://cache.example.com/0c0bqbqy3dkh9d0xjgdzlgzxvpcs0f5w.narinfo",
  };
  for (size_t i = 0; i < FY_ARRAY_LEN(bad_paths); i++) {
    snprintf(m.uri, sizeof(m.uri), "%s", bad_paths[i]);
    fy_err_clear(&err);
    out.len = 0;
    assert_int_equal(fy_manifest_encode(&m, &out, &err), FY_EINVAL);
    assert_contains(err.msg, "is not a store path /nix/store/<32 nix-base32 characters>-<name> (kind nixos)");
  }
  snprintf(m.uri, sizeof(m.uri), "%s", NIX_PATH);
  m.size = 5;
  assert_int_equal(fy_manifest_encode(&m, &out, &err), FY_EINVAL);
  assert_contains(err.msg, "manifest: size is 5, must be 0 for kind nixos");
  /* the same from the wire */
  m.size = 0;
  out.len = 0;
  assert_int_equal(fy_manifest_encode(&m, &out, &err), 0);
  assert_int_equal(fy_manifest_decode(out.data, out.len, &d, &err), 0);
  /* size is the 3 bytes after "size" */
  uint8_t *at = memmem(out.data, out.len, "\xa4size\x00", 6);
  assert_non_null(at);
  at[5] = 0x07;
  fy_err_clear(&err);
  assert_int_equal(fy_manifest_decode(out.data, out.len, &d, &err), FY_EINVAL);
  assert_contains(err.msg, "manifest: size is 7, must be 0 for kind nixos");
}

static void test_decode_bytes_errors(void **state) {
  struct ctx *c = *state;
  struct fy_manifest d;
  struct fy_err err;
  static const struct {
    const char *hex, *msg;
  } cases[] = {
      {"93010203", "manifest: not a map"},
      {"a3616263", "manifest: not a map"},
      {"8101c0", "manifest: key 0 is not a string"},
      {"8ca6697373756572", "manifest"},     /* truncated */
      {"81a16181a16181a161c0", "manifest"}, /* nested too deep */
      {"dfffffffff", "manifest"},           /* huge map header */
      {"80c0", "manifest"},                 /* trailing bytes */
  };
  for (size_t i = 0; i < FY_ARRAY_LEN(cases); i++) {
    size_t n;
    FY_AUTOFREE uint8_t *p = from_hex(cases[i].hex, &n);
    fy_err_clear(&err);
    int rc = fy_manifest_decode(p, n, &d, &err);
    if (rc != FY_EINVAL)
      fail_msg("%s: rc %d", cases[i].hex, rc);
    assert_int_equal(err.code, FY_EINVAL);
    assert_contains(err.msg, cases[i].msg);
  }
  fy_err_clear(&err);
  assert_int_equal(fy_manifest_decode(NULL, 0, &d, &err), FY_EINVAL);
  assert_contains(err.msg, "manifest");
  /* an empty map names the first missing key */
  static const uint8_t empty[] = {0x80};
  assert_int_equal(fy_manifest_decode(empty, 1, &d, &err), FY_EINVAL);
  assert_contains(err.msg, "manifest: missing key \"issuer\"");
  (void)c;
}

/* ---- encode errors ------------------------------------------------------------------ */

static void expect_encode_error(const struct fy_manifest *m, const char *msg) {
  struct fy_buf out = FY_BUF_INIT;
  struct fy_err err;
  fy_err_clear(&err);
  assert_int_equal(fy_buf_append(&out, "xy", 2, NULL), 0);
  int rc = fy_manifest_encode(m, &out, &err);
  if (rc != FY_EINVAL)
    fail_msg("expected \"%s\", got rc %d", msg, rc);
  assert_contains(err.msg, msg);
  assert_int_equal(out.len, 2); /* unchanged */
  fy_buf_free(&out);
}

static void test_encode_errors(void **state) {
  struct ctx *c = *state;
  struct fy_manifest m;
  golden_manifest(c, &m);
  m.tenant[0] = '\0';
  expect_encode_error(&m, "manifest: tenant");
  golden_manifest(c, &m);
  SET(m.name, "Kiosk");
  expect_encode_error(&m, "manifest: name has byte 0x4b at offset 0");
  golden_manifest(c, &m);
  m.kind = (enum fy_artifact_kind)7;
  expect_encode_error(&m, "manifest: kind 7 is not script or nixos");
  golden_manifest(c, &m);
  SET(m.version_text, "1.2.x");
  expect_encode_error(&m, "manifest: version \"1.2.x\": patch at offset 4: expected a digit");
  golden_manifest(c, &m);
  m.version_text[0] = '\0';
  SET(m.version.pre, "01");
  expect_encode_error(&m, "manifest: version \"1.2.0-01\": prerelease identifier \"01\"");
  golden_manifest(c, &m);
  m.ncompatible = 33;
  expect_encode_error(&m, "manifest: compatible has 33 entries, at most 32");
  golden_manifest(c, &m);
  SET(m.compatible[1], "rpi4/1.4");
  expect_encode_error(&m, "manifest: compatible[1] \"rpi4/1.4\" repeats compatible[0]");
  golden_manifest(c, &m);
  SET(m.uri, "http://x y");
  expect_encode_error(&m, "manifest: uri has byte 0x20 at offset 8");
  golden_manifest(c, &m);
  memset(m.name, 'a', sizeof(m.name)); /* no NUL */
  expect_encode_error(&m, "manifest: a string field is not NUL-terminated");

  struct fy_err err = {0};
  assert_int_equal(fy_manifest_set_version(&m, "1.2.3.4", &err), FY_EINVAL);
  assert_contains(err.msg, "manifest: version \"1.2.3.4\"");
}

static void test_sign_wrong_key(void **state) {
  struct ctx *c = *state;
  struct fy_manifest m;
  golden_manifest(c, &m);
  FY_AUTOBUF struct fy_buf out = FY_BUF_INIT;
  struct fy_err err = {0};
  assert_int_equal(fy_manifest_sign(&c->keys[OTHER], &m, &out, &err), FY_EINVAL);
  assert_contains(err.msg, "is not the signing key");
  assert_int_equal(out.len, 0);
  m.name[0] = '\0';
  assert_int_equal(fy_manifest_sign(&c->keys[ADMIN], &m, &out, &err), FY_EINVAL);
  assert_contains(err.msg, "manifest: name is 0 bytes");
}

/* ---- the agent's checks -------------------------------------------------------------- */

/* m encoded and sealed by key under context, without fy_manifest_sign's issuer check. */
static void seal(const struct fy_key *key, const char *context, const struct fy_manifest *m,
                 struct fy_buf *out) {
  FY_AUTOBUF struct fy_buf body = FY_BUF_INIT;
  struct fy_err err = {0};
  if (fy_manifest_encode(m, &body, &err) != 0)
    fail_msg("encode: %s", err.msg);
  out->len = 0;
  assert_int_equal(fy_envelope_seal(key, context, body.data, body.len, out, &err), 0);
}

static void expect_refusal(const uint8_t *env, size_t len, const struct fy_manifest_target *t,
                           enum fy_cmd_refusal want, const char *msg) {
  struct fy_manifest out;
  struct fy_err err;
  fy_err_clear(&err);
  enum fy_cmd_refusal r = fy_manifest_verify(env, len, t, &out, &err);
  if (r != want)
    fail_msg("got %s (%s), want %s", fy_cmd_refusal_name(r), err.msg, fy_cmd_refusal_name(want));
  if (msg)
    assert_contains(err.msg, msg);
  assert_true(err.code < 0);
  /* out names what was refused once the body decoded */
  if (want >= FY_CMD_SIGNER_MISMATCH)
    assert_string_equal(out.name, "kiosk-app");
  else
    assert_string_equal(out.name, "");
}

static void test_verify_malformed(void **state) {
  struct ctx *c = *state;
  struct fy_manifest_target t = golden_target(c);
  static const uint8_t junk[] = {0x93, 0x01, 0x02};
  expect_refusal(junk, sizeof(junk), &t, FY_CMD_MALFORMED, "manifest: envelope");
  expect_refusal(NULL, 0, &t, FY_CMD_MALFORMED, "manifest: envelope");
  /* a valid envelope whose body is a command, not a manifest */
  FY_AUTOBUF struct fy_buf env = FY_BUF_INIT;
  static const uint8_t body[] = {0x81, 0xa3, 'c', 'm', 'd', 0xa1, 'x'};
  assert_int_equal(fy_envelope_seal(&c->keys[ADMIN], FY_CTX_MANIFEST, body, sizeof(body), &env, NULL), 0);
  expect_refusal(env.data, env.len, &t, FY_CMD_MALFORMED, "manifest: unknown key \"cmd\"");
  /* over the envelope limit */
  uint8_t *big = calloc(1, FY_ENVELOPE_MAX + 1);
  assert_non_null(big);
  expect_refusal(big, FY_ENVELOPE_MAX + 1, &t, FY_CMD_MALFORMED, "manifest: envelope: 65537 bytes");
  free(big);
}

static void test_verify_bad_signature(void **state) {
  struct ctx *c = *state;
  struct fy_manifest_target t = golden_target(c);
  struct fy_manifest m;
  golden_manifest(c, &m);
  FY_AUTOBUF struct fy_buf env = FY_BUF_INIT;
  seal(&c->keys[ADMIN], FY_CTX_MANIFEST, &m, &env);
  env.data[env.len - 1] ^= 1;
  expect_refusal(env.data, env.len, &t, FY_CMD_BAD_SIGNATURE,
                 "manifest: envelope: signature does not verify");
  /* a body byte changed after signing */
  env.data[env.len - 1] ^= 1;
  uint8_t *at = memmem(env.data, env.len, "kiosk-app", 9);
  assert_non_null(at);
  at[0] = 'x';
  expect_refusal(env.data, env.len, &t, FY_CMD_BAD_SIGNATURE, "signature does not verify");
  /* signed as a command: the context differs */
  seal(&c->keys[ADMIN], FY_CTX_COMMAND, &m, &env);
  expect_refusal(env.data, env.len, &t, FY_CMD_BAD_SIGNATURE, "signature does not verify");
}

static void test_verify_signer_mismatch(void **state) {
  struct ctx *c = *state;
  struct fy_manifest_target t = golden_target(c);
  struct fy_manifest m;
  golden_manifest(c, &m); /* issuer ADMIN */
  FY_AUTOBUF struct fy_buf env = FY_BUF_INIT;
  seal(&c->keys[OPERATOR_PROD], FY_CTX_MANIFEST, &m, &env);
  char a[FY_NODEID_SHORT_LEN + 1], b[FY_NODEID_SHORT_LEN + 1], want[128];
  fy_nodeid_to_short(&c->keys[ADMIN].id, a);
  fy_nodeid_to_short(&c->keys[OPERATOR_PROD].id, b);
  snprintf(want, sizeof(want), "manifest: issuer %s is not the signer %s", a, b);
  expect_refusal(env.data, env.len, &t, FY_CMD_SIGNER_MISMATCH, want);
}

static void test_verify_wrong_coordinator(void **state) {
  struct ctx *c = *state;
  struct fy_manifest_target t = golden_target(c);
  struct fy_manifest m;
  golden_manifest(c, &m);
  m.coordinator = c->keys[OTHER].id;
  FY_AUTOBUF struct fy_buf env = FY_BUF_INIT;
  assert_int_equal(fy_manifest_sign(&c->keys[ADMIN], &m, &env, NULL), 0);
  char a[FY_NODEID_SHORT_LEN + 1], b[FY_NODEID_SHORT_LEN + 1], want[128];
  fy_nodeid_to_short(&c->keys[OTHER].id, a);
  fy_nodeid_to_short(&c->keys[COORD].id, b);
  snprintf(want, sizeof(want), "manifest: for coordinator %s, this agent's is %s", a, b);
  expect_refusal(env.data, env.len, &t, FY_CMD_WRONG_COORDINATOR, want);
}

static void test_verify_tenant(void **state) {
  struct ctx *c = *state;
  struct fy_manifest_target t = golden_target(c);
  struct fy_manifest m;
  golden_manifest(c, &m);
  FY_AUTOBUF struct fy_buf env = FY_BUF_INIT;
  assert_int_equal(fy_manifest_sign(&c->keys[ADMIN], &m, &env, NULL), 0);
  t.tenant = "prod";
  expect_refusal(env.data, env.len, &t, FY_CMD_FORBIDDEN_TENANT,
                 "manifest: for tenant lab, this agent is in tenant prod");
  t.tenant = NULL;
  expect_refusal(env.data, env.len, &t, FY_CMD_FORBIDDEN_TENANT,
                 "manifest: for tenant lab, this agent has no tenant");
  t.tenant = "";
  expect_refusal(env.data, env.len, &t, FY_CMD_FORBIDDEN_TENANT, "this agent has no tenant");
}

static void test_verify_role(void **state) {
  struct ctx *c = *state;
  struct fy_manifest_target t = golden_target(c);
  struct fy_manifest m;
  char who[FY_NODEID_SHORT_LEN + 1], want[160];
  FY_AUTOBUF struct fy_buf env = FY_BUF_INIT;

  /* not an admin at all */
  golden_manifest(c, &m);
  m.issuer = c->keys[OTHER].id;
  assert_int_equal(fy_manifest_sign(&c->keys[OTHER], &m, &env, NULL), 0);
  fy_nodeid_to_short(&c->keys[OTHER].id, who);
  snprintf(want, sizeof(want), "manifest: signer %s may not sign rollouts for tenant lab (not an admin here)",
           who);
  expect_refusal(env.data, env.len, &t, FY_CMD_FORBIDDEN_ROLE, want);

  /* a viewer of every tenant */
  m.issuer = c->keys[VIEWER].id;
  env.len = 0;
  assert_int_equal(fy_manifest_sign(&c->keys[VIEWER], &m, &env, NULL), 0);
  fy_nodeid_to_short(&c->keys[VIEWER].id, who);
  snprintf(want, sizeof(want), "manifest: signer %s may not sign rollouts for tenant lab (it is viewer of *)",
           who);
  expect_refusal(env.data, env.len, &t, FY_CMD_FORBIDDEN_ROLE, want);

  /* an operator of another tenant */
  m.issuer = c->keys[OPERATOR_PROD].id;
  env.len = 0;
  assert_int_equal(fy_manifest_sign(&c->keys[OPERATOR_PROD], &m, &env, NULL), 0);
  fy_nodeid_to_short(&c->keys[OPERATOR_PROD].id, who);
  snprintf(want, sizeof(want), "signer %s may not sign rollouts for tenant lab (it is operator of prod)",
           who);
  expect_refusal(env.data, env.len, &t, FY_CMD_FORBIDDEN_ROLE, want);

  /* ...who may sign for its own tenant */
  SET(m.tenant, "prod");
  env.len = 0;
  assert_int_equal(fy_manifest_sign(&c->keys[OPERATOR_PROD], &m, &env, NULL), 0);
  t.tenant = "prod";
  struct fy_err err = {0};
  assert_int_equal(fy_manifest_verify(env.data, env.len, &t, NULL, &err), FY_CMD_OK);

  /* no trust view: nobody may sign */
  t.trust = NULL;
  expect_refusal(env.data, env.len, &t, FY_CMD_FORBIDDEN_ROLE, "not an admin here");
}

static void test_verify_compatible(void **state) {
  struct ctx *c = *state;
  struct fy_manifest_target t = golden_target(c);
  struct fy_manifest m;
  golden_manifest(c, &m); /* rpi4/1.4, rpi5 */
  FY_AUTOBUF struct fy_buf env = FY_BUF_INIT;
  assert_int_equal(fy_manifest_sign(&c->keys[ADMIN], &m, &env, NULL), 0);
  struct fy_err err = {0};

  t.hw_model = "rpi4";
  t.hw_revision = "1.4";
  assert_int_equal(fy_manifest_verify(env.data, env.len, &t, NULL, &err), FY_CMD_OK);
  t.hw_revision = "1.2";
  expect_refusal(env.data, env.len, &t, FY_CMD_INCOMPATIBLE,
                 "manifest: incompatible: kiosk-app 1.2.0 is for rpi4/1.4, rpi5; this machine is rpi4/1.2");
  t.hw_revision = NULL;
  expect_refusal(env.data, env.len, &t, FY_CMD_INCOMPATIBLE, "this machine is rpi4");
  t.hw_model = "RPI5"; /* case-sensitive */
  expect_refusal(env.data, env.len, &t, FY_CMD_INCOMPATIBLE, "this machine is RPI5");
  t.hw_model = NULL;
  expect_refusal(env.data, env.len, &t, FY_CMD_INCOMPATIBLE,
                 "incompatible: kiosk-app 1.2.0 is for rpi4/1.4, rpi5; this machine's model is unknown");

  /* an empty list is for every machine, known or not */
  m.ncompatible = 0;
  env.len = 0;
  assert_int_equal(fy_manifest_sign(&c->keys[ADMIN], &m, &env, NULL), 0);
  assert_int_equal(fy_manifest_verify(env.data, env.len, &t, NULL, &err), FY_CMD_OK);

  /* a long list is cut short in the message */
  for (size_t i = 0; i < 6; i++)
    snprintf(m.compatible[i], sizeof(m.compatible[i]), "m%zu", i);
  m.ncompatible = 6;
  env.len = 0;
  assert_int_equal(fy_manifest_sign(&c->keys[ADMIN], &m, &env, NULL), 0);
  t.hw_model = "x";
  expect_refusal(env.data, env.len, &t, FY_CMD_INCOMPATIBLE,
                 "is for m0, m1, m2, m3, ... (6 in all); this machine is x");
}

static void test_compatible_rules(void **state) {
  struct ctx *c = *state;
  struct fy_manifest m;
  golden_manifest(c, &m);
  SET(m.compatible[0], "pi");
  SET(m.compatible[1], "pos/b");
  m.ncompatible = 2;
  assert_true(fy_manifest_compatible(&m, "pi", NULL));
  assert_true(fy_manifest_compatible(&m, "pi", "anything"));
  assert_true(fy_manifest_compatible(&m, "pos", "b"));
  assert_false(fy_manifest_compatible(&m, "pos", "bb"));
  assert_false(fy_manifest_compatible(&m, "pos", NULL));
  assert_false(fy_manifest_compatible(&m, "pos", ""));
  assert_false(fy_manifest_compatible(&m, "po", "b"));
  assert_false(fy_manifest_compatible(&m, "pi/", NULL));
  assert_false(fy_manifest_compatible(&m, "", NULL));
  assert_false(fy_manifest_compatible(&m, NULL, NULL));
  m.ncompatible = 0;
  assert_true(fy_manifest_compatible(&m, NULL, NULL));
}

static void test_verify_downgrade(void **state) {
  struct ctx *c = *state;
  struct fy_manifest_target t = golden_target(c);
  struct fy_manifest m;
  golden_manifest(c, &m); /* 1.2.0 */
  FY_AUTOBUF struct fy_buf env = FY_BUF_INIT;
  assert_int_equal(fy_manifest_sign(&c->keys[ADMIN], &m, &env, NULL), 0);
  struct fy_err err = {0};

  t.current_version = "1.3.0";
  expect_refusal(
      env.data, env.len, &t, FY_CMD_DOWNGRADE,
      "manifest: kiosk-app: downgrade from 1.3.0 to 1.2.0 refused (the manifest does not allow downgrades)");
  t.current_version = "1.2.1-rc.1";
  expect_refusal(env.data, env.len, &t, FY_CMD_DOWNGRADE, "downgrade from 1.2.1-rc.1 to 1.2.0 refused");
  static const char *const fine[] = {"1.2.0", "1.2.0+other.build", "v1.2.0", "1.2.0-rc.1", "1.1.9",
                                     "0.9.0", "not a version",     "",       "1.2"};
  for (size_t i = 0; i < FY_ARRAY_LEN(fine); i++) {
    t.current_version = fine[i];
    if (fy_manifest_verify(env.data, env.len, &t, NULL, &err) != FY_CMD_OK)
      fail_msg("current %s: %s", fine[i], err.msg);
  }

  /* allowed by the manifest */
  m.allow_downgrade = true;
  env.len = 0;
  assert_int_equal(fy_manifest_sign(&c->keys[ADMIN], &m, &env, NULL), 0);
  t.current_version = "9.0.0";
  assert_int_equal(fy_manifest_verify(env.data, env.len, &t, NULL, &err), FY_CMD_OK);
}

/* The first failing check names the refusal. */
static void test_verify_order(void **state) {
  struct ctx *c = *state;
  struct fy_manifest_target t = golden_target(c);
  t.hw_model = "nope";
  t.current_version = "9.9.9";
  struct fy_manifest m;
  golden_manifest(c, &m);
  FY_AUTOBUF struct fy_buf env = FY_BUF_INIT;

  /* wrong coordinator, wrong tenant, unknown signer, incompatible, downgrade, signed by another key */
  m.coordinator = c->keys[OTHER].id;
  SET(m.tenant, "prod");
  seal(&c->keys[OTHER], FY_CTX_MANIFEST, &m, &env);
  expect_refusal(env.data, env.len, &t, FY_CMD_SIGNER_MISMATCH, NULL);
  m.issuer = c->keys[OTHER].id;
  seal(&c->keys[OTHER], FY_CTX_MANIFEST, &m, &env);
  expect_refusal(env.data, env.len, &t, FY_CMD_WRONG_COORDINATOR, NULL);
  m.coordinator = c->keys[COORD].id;
  seal(&c->keys[OTHER], FY_CTX_MANIFEST, &m, &env);
  expect_refusal(env.data, env.len, &t, FY_CMD_FORBIDDEN_TENANT, NULL);
  SET(m.tenant, "lab");
  seal(&c->keys[OTHER], FY_CTX_MANIFEST, &m, &env);
  expect_refusal(env.data, env.len, &t, FY_CMD_FORBIDDEN_ROLE, NULL);
  m.issuer = c->keys[ADMIN].id;
  seal(&c->keys[ADMIN], FY_CTX_MANIFEST, &m, &env);
  expect_refusal(env.data, env.len, &t, FY_CMD_INCOMPATIBLE, NULL);
  t.hw_model = "rpi5";
  expect_refusal(env.data, env.len, &t, FY_CMD_DOWNGRADE, NULL);
  t.current_version = NULL;
  assert_int_equal(fy_manifest_verify(env.data, env.len, &t, NULL, NULL), FY_CMD_OK);
}

int main(void) {
  if (fy_crypto_init(NULL) < 0)
    return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_golden),
      cmocka_unit_test(test_golden_verify),
      cmocka_unit_test(test_spec_vectors),
      cmocka_unit_test(test_round_trip_nixos),
      cmocka_unit_test(test_round_trip_limits),
      cmocka_unit_test(test_encode_version_from_struct),
      cmocka_unit_test(test_kind_names),
      cmocka_unit_test(test_any_key_order),
      cmocka_unit_test(test_decode_key_errors),
      cmocka_unit_test(test_decode_type_errors),
      cmocka_unit_test(test_decode_value_errors),
      cmocka_unit_test(test_decode_bytes_errors),
      cmocka_unit_test(test_encode_errors),
      cmocka_unit_test(test_sign_wrong_key),
      cmocka_unit_test(test_verify_malformed),
      cmocka_unit_test(test_verify_bad_signature),
      cmocka_unit_test(test_verify_signer_mismatch),
      cmocka_unit_test(test_verify_wrong_coordinator),
      cmocka_unit_test(test_verify_tenant),
      cmocka_unit_test(test_verify_role),
      cmocka_unit_test(test_verify_compatible),
      cmocka_unit_test(test_compatible_rules),
      cmocka_unit_test(test_verify_downgrade),
      cmocka_unit_test(test_verify_order),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
