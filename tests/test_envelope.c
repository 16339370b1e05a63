/* Signed envelopes and command bodies: the golden vectors of
 * proto/commands.md, round trips, every refusal of fy_cmd_check from a
 * crafted input, and body decode errors with their messages.
 *
 * The golden hex below was produced independently of ferry's code (Python:
 * a hand-written shortest-form msgpack encoder and pyca/cryptography's
 * Ed25519); test_spec_vectors checks that proto/commands.md carries the same
 * strings, so the spec and the code cannot drift apart. */
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
#include "hex_util.h"

#define assert_contains(haystack, needle)                                                                    \
  do {                                                                                                       \
    if (!strstr((haystack), (needle)))                                                                       \
      fail_msg("message \"%s\" does not contain \"%s\"", (haystack), (needle));                              \
  } while (0)

/* ---- golden vectors (proto/commands.md) ---------------------------------- */

static const char GOLDEN_ISSUER[] = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8";
static const char GOLDEN_COORD[] = "29acbae141bccaf0b22e1a94d34d0bc7361e526d0bfe12c89794bc9322966dd7";
static const char GOLDEN_BODY[] =
    "88a6697373756572c42003a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8a373657101a3696174"
    "cf0000019b76daa800a3657870cf0000019b77119680a5636f6f7264c42029acbae141bccaf0b22e1a94d34d0bc7361e526d0b"
    "fe12c89794bc9322966dd7a674656e616e74a36c6162a3636d64ae6167656e74732e617070726f7665a46172677381a26964c4"
    "204242424242424242424242424242424242424242424242424242424242424242";
static const char GOLDEN_PREFIX[] = "66657272792f636f6d6d616e642f763100";
static const char GOLDEN_SIG[] = "df03f824db3818ab6e23ec02576ae150fc084bd3d136ad6887698d3fecc32aca"
                                 "69783369c00a3f09bd31755b9f99bde413d895a1c354a813ba5c31d1a3d30905";
static const char GOLDEN_ENVELOPE[] =
    "93c4ba88a6697373756572c42003a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8a37365710"
    "1a3696174cf0000019b76daa800a3657870cf0000019b77119680a5636f6f7264c42029acbae141bccaf0b22e1a94d34d0bc7"
    "361e526d0bfe12c89794bc9322966dd7a674656e616e74a36c6162a3636d64ae6167656e74732e617070726f7665a4617267"
    "7381a26964c4204242424242424242424242424242424242424242424242424242424242424242c42003a107bff3ce10be1d"
    "70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8c440df03f824db3818ab6e23ec02576ae150fc084bd3d136ad6887"
    "698d3fecc32aca69783369c00a3f09bd31755b9f99bde413d895a1c354a813ba5c31d1a3d30905";
static const char GOLDEN_ID[] = "c94ab67e34a5fc902dd1ef1e17a373b827ed2083ebda3387b8ad46b04cd79452";
static const uint64_t IAT = 1767225600000; /* 2026-01-01T00:00:00Z */
static const uint64_t EXP = 1767229200000; /* 2026-01-01T01:00:00Z */

struct ctx {
  struct fy_key admin, coord, other; /* seeds 0x00.., 0x20.., 0x40.. */
};

static int setup(void **state) {
  struct ctx *c = calloc(1, sizeof(*c));
  uint8_t seed[32];
  for (int i = 0; i < 32; i++)
    seed[i] = (uint8_t)i;
  assert_int_equal(fy_key_from_seed(&c->admin, seed, NULL), 0);
  for (int i = 0; i < 32; i++)
    seed[i] = (uint8_t)(0x20 + i);
  assert_int_equal(fy_key_from_seed(&c->coord, seed, NULL), 0);
  for (int i = 0; i < 32; i++)
    seed[i] = (uint8_t)(0x40 + i);
  assert_int_equal(fy_key_from_seed(&c->other, seed, NULL), 0);
  *state = c;
  return 0;
}

static int teardown(void **state) {
  struct ctx *c = *state;
  fy_key_free(&c->admin);
  fy_key_free(&c->coord);
  fy_key_free(&c->other);
  free(c);
  return 0;
}

/* {"id": bin 32 of 0x42} */
static const uint8_t golden_args[38] = {0x81, 0xa2, 'i',  'd',  0xc4, 0x20, 0x42, 0x42, 0x42, 0x42,
                                        0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42,
                                        0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42,
                                        0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42};

static struct fy_cmd_body golden_body(const struct ctx *c) {
  struct fy_cmd_body b;
  memset(&b, 0, sizeof(b));
  b.issuer = c->admin.id;
  b.coordinator = c->coord.id;
  b.seq = 1;
  b.issued_at = IAT;
  b.expires_at = EXP;
  strcpy(b.tenant, "lab");
  strcpy(b.cmd, "agents.approve");
  b.args = golden_args;
  b.args_len = sizeof(golden_args);
  return b;
}

/* Encodes b and seals it with key: a complete command envelope. */
static void make_command(const struct fy_key *key, const struct fy_cmd_body *b, struct fy_buf *out) {
  FY_AUTOBUF struct fy_buf body = FY_BUF_INIT;
  struct fy_err err;
  assert_int_equal(fy_cmd_body_encode(b, &body, &err), 0);
  assert_int_equal(fy_envelope_seal(key, FY_CTX_COMMAND, body.data, body.len, out, &err), 0);
}

static void test_golden(void **state) {
  struct ctx *c = *state;
  char hex[FY_NODEID_HEX_LEN + 1];
  fy_nodeid_to_hex(&c->admin.id, hex);
  assert_string_equal(hex, GOLDEN_ISSUER);
  fy_nodeid_to_hex(&c->coord.id, hex);
  assert_string_equal(hex, GOLDEN_COORD);

  struct fy_cmd_body b = golden_body(c);
  FY_AUTOBUF struct fy_buf body = FY_BUF_INIT, env = FY_BUF_INIT;
  struct fy_err err;
  assert_int_equal(fy_cmd_body_encode(&b, &body, &err), 0);
  assert_hex(body.data, body.len, GOLDEN_BODY);
  assert_hex((const uint8_t *)FY_CTX_COMMAND, sizeof(FY_CTX_COMMAND), GOLDEN_PREFIX);
  assert_int_equal(fy_envelope_seal(&c->admin, FY_CTX_COMMAND, body.data, body.len, &env, &err), 0);
  assert_hex(env.data, env.len, GOLDEN_ENVELOPE);

  struct fy_envelope e;
  assert_int_equal(fy_envelope_open(env.data, env.len, FY_CTX_COMMAND, &e, &err), 0);
  assert_hex(e.sig, sizeof(e.sig), GOLDEN_SIG);
  assert_hex(e.body, e.body_len, GOLDEN_BODY);
  assert_true(fy_nodeid_equal(&e.signer, &c->admin.id));
  uint8_t id[FY_ENVELOPE_ID_LEN];
  fy_envelope_id(env.data, env.len, id);
  assert_hex(id, sizeof(id), GOLDEN_ID);
}

/* The golden envelope, decoded from the spec's bytes rather than made here. */
static void test_golden_check(void **state) {
  struct ctx *c = *state;
  size_t n;
  FY_AUTOFREE uint8_t *env = from_hex(GOLDEN_ENVELOPE, &n);
  struct fy_envelope e;
  struct fy_cmd_body b;
  struct fy_err err;
  fy_err_clear(&err);
  assert_int_equal(fy_cmd_check(env, n, &c->coord.id, IAT, &e, &b, &err), FY_CMD_OK);
  assert_true(fy_nodeid_equal(&b.issuer, &c->admin.id));
  assert_true(fy_nodeid_equal(&b.coordinator, &c->coord.id));
  assert_int_equal(b.seq, 1);
  assert_int_equal(b.issued_at, IAT);
  assert_int_equal(b.expires_at, EXP);
  assert_string_equal(b.tenant, "lab");
  assert_string_equal(b.cmd, "agents.approve");
  assert_int_equal(b.args_len, sizeof(golden_args));
  assert_memory_equal(b.args, golden_args, sizeof(golden_args));
  /* args and body point into the caller's bytes. */
  assert_true(b.args > e.body && b.args + b.args_len <= e.body + e.body_len);
  assert_true(e.body > env && e.body + e.body_len <= env + n);
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
  snprintf(path, sizeof(path), "%.*s/../proto/commands.md", (int)(slash - data_dir), data_dir);
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
  const char *const vectors[] = {GOLDEN_ISSUER, GOLDEN_COORD,    GOLDEN_BODY, GOLDEN_PREFIX,
                                 GOLDEN_SIG,    GOLDEN_ENVELOPE, GOLDEN_ID};
  for (size_t i = 0; i < FY_ARRAY_LEN(vectors); i++)
    if (!strstr(text, vectors[i]))
      fail_msg("proto/commands.md lacks golden vector %zu: %s", i, vectors[i]);
}

/* ---- round trips ---------------------------------------------------------- */

static void test_body_round_trip_empty_args(void **state) {
  struct ctx *c = *state;
  struct fy_cmd_body b = golden_body(c), d;
  b.args = NULL;
  b.args_len = 0;
  b.tenant[0] = '\0';
  b.seq = UINT64_MAX;
  b.issued_at = 0;
  b.expires_at = UINT64_MAX;
  FY_AUTOBUF struct fy_buf out = FY_BUF_INIT;
  struct fy_err err;
  assert_int_equal(fy_cmd_body_encode(&b, &out, &err), 0);
  assert_int_equal(fy_cmd_body_decode(out.data, out.len, &d, &err), 0);
  assert_int_equal(d.seq, UINT64_MAX);
  assert_int_equal(d.issued_at, 0);
  assert_int_equal(d.expires_at, UINT64_MAX);
  assert_string_equal(d.tenant, "");
  assert_int_equal(d.args_len, 1);
  assert_int_equal(d.args[0], 0x80);
}

/* Packs a body field by field, without the encoder's checks: for bad input. */
struct raw_body {
  const char *omit, *dup, *extra; /* a key to leave out, to write twice, an unknown key to add */
  const char *tenant;             /* NULL: the golden "lab" */
  bool seq_zero;                  /* else seq 1 */
  int issuer_len;                 /* 0: 32 */
  bool args_not_map, reverse;
};

static void pack_field(msgpack_packer *pk, const struct ctx *c, const struct raw_body *r, const char *k) {
  msgpack_pack_str_with_body(pk, k, strlen(k));
  if (!strcmp(k, "issuer"))
    msgpack_pack_bin_with_body(pk, c->admin.id.key, r->issuer_len ? (size_t)r->issuer_len : 32);
  else if (!strcmp(k, "seq"))
    msgpack_pack_uint64(pk, r->seq_zero ? 0 : 1);
  else if (!strcmp(k, "iat"))
    msgpack_pack_uint64(pk, IAT);
  else if (!strcmp(k, "exp"))
    msgpack_pack_uint64(pk, EXP);
  else if (!strcmp(k, "coord"))
    msgpack_pack_bin_with_body(pk, c->coord.id.key, 32);
  else if (!strcmp(k, "tenant"))
    msgpack_pack_str_with_body(pk, r->tenant ? r->tenant : "lab", strlen(r->tenant ? r->tenant : "lab"));
  else if (!strcmp(k, "cmd"))
    msgpack_pack_str_with_body(pk, "agents.approve", 14);
  else if (!strcmp(k, "args") && r->args_not_map)
    msgpack_pack_array(pk, 0);
  else
    msgpack_pack_map(pk, 0);
}

static void pack_raw(const struct ctx *c, const struct raw_body *r, struct fy_buf *out) {
  static const char *const keys[] = {"issuer", "seq", "iat", "exp", "coord", "tenant", "cmd", "args"};
  msgpack_packer pk;
  msgpack_packer_init(&pk, out, fy_mp_buf_write);
  size_t n = 8 - (r->omit ? 1 : 0) + (r->dup ? 1 : 0) + (r->extra ? 1 : 0);
  msgpack_pack_map(&pk, n);
  for (size_t i = 0; i < 8; i++) {
    const char *k = keys[r->reverse ? 7 - i : i];
    if (r->omit && !strcmp(k, r->omit))
      continue;
    pack_field(&pk, c, r, k);
    if (r->dup && !strcmp(k, r->dup))
      pack_field(&pk, c, r, k);
  }
  if (r->extra) {
    msgpack_pack_str_with_body(&pk, r->extra, strlen(r->extra));
    msgpack_pack_nil(&pk);
  }
}

static void test_body_any_key_order(void **state) {
  struct ctx *c = *state;
  struct raw_body r = {.reverse = true};
  FY_AUTOBUF struct fy_buf out = FY_BUF_INIT;
  pack_raw(c, &r, &out);
  struct fy_cmd_body d;
  struct fy_err err;
  assert_int_equal(fy_cmd_body_decode(out.data, out.len, &d, &err), 0);
  assert_int_equal(d.seq, 1);
  assert_string_equal(d.cmd, "agents.approve");
  assert_true(fy_nodeid_equal(&d.issuer, &c->admin.id));
}

static void expect_body_error(const struct ctx *c, struct raw_body r, const char *msg) {
  FY_AUTOBUF struct fy_buf out = FY_BUF_INIT;
  pack_raw(c, &r, &out);
  struct fy_cmd_body d;
  struct fy_err err;
  fy_err_clear(&err);
  assert_int_equal(fy_cmd_body_decode(out.data, out.len, &d, &err), FY_EINVAL);
  assert_int_equal(err.code, FY_EINVAL);
  assert_contains(err.msg, msg);
}

static void test_body_decode_errors(void **state) {
  struct ctx *c = *state;
  expect_body_error(c, (struct raw_body){.extra = "color"}, "command body: unknown key \"color\"");
  expect_body_error(c, (struct raw_body){.omit = "exp"}, "command body: missing key \"exp\"");
  expect_body_error(c, (struct raw_body){.omit = "args"}, "command body: missing key \"args\"");
  expect_body_error(c, (struct raw_body){.dup = "seq"}, "command body: key \"seq\" appears twice");
  expect_body_error(
      c, (struct raw_body){.tenant = "a-tenant-name-that-is-much-too-long-to-be-accepted-by-ferry-at-all"},
      "command body: tenant is 66 bytes, must be 0 to 63");
  expect_body_error(c, (struct raw_body){.tenant = "Lab"}, "command body: tenant has 'L' at offset 0");
  expect_body_error(c, (struct raw_body){.seq_zero = true}, "command body: seq must be at least 1");
  expect_body_error(c, (struct raw_body){.issuer_len = 31}, "command body: issuer is not 32 bytes of bin");
  expect_body_error(c, (struct raw_body){.args_not_map = true}, "command body: args is not a map");

  struct fy_cmd_body d;
  struct fy_err err;
  static const uint8_t array[] = {0x90};
  assert_int_equal(fy_cmd_body_decode(array, sizeof(array), &d, &err), FY_EINVAL);
  assert_contains(err.msg, "command body: not a map");
  static const uint8_t truncated[] = {0x81, 0xa3, 's', 'e'};
  assert_int_equal(fy_cmd_body_decode(truncated, sizeof(truncated), &d, &err), FY_EINVAL);
  assert_contains(err.msg, "command body: msgpack value truncated");
  static const uint8_t key_not_str[] = {0x81, 0x01, 0x02};
  assert_int_equal(fy_cmd_body_decode(key_not_str, sizeof(key_not_str), &d, &err), FY_EINVAL);
  assert_contains(err.msg, "command body: key 0 is not a string");
  static const uint8_t seq_negative[] = {0x81, 0xa3, 's', 'e', 'q', 0xff};
  assert_int_equal(fy_cmd_body_decode(seq_negative, sizeof(seq_negative), &d, &err), FY_EINVAL);
  assert_contains(err.msg, "command body: seq is not an unsigned integer");
}

static void test_body_encode_errors(void **state) {
  struct ctx *c = *state;
  FY_AUTOBUF struct fy_buf out = FY_BUF_INIT;
  struct fy_err err;
  struct fy_cmd_body b = golden_body(c);
  b.expires_at = b.issued_at;
  assert_int_equal(fy_cmd_body_encode(&b, &out, &err), FY_EINVAL);
  assert_contains(err.msg, "exp 1767225600000 is not after iat 1767225600000");
  b = golden_body(c);
  strcpy(b.cmd, "Agents.approve");
  assert_int_equal(fy_cmd_body_encode(&b, &out, &err), FY_EINVAL);
  assert_contains(err.msg, "cmd has byte 0x41 at offset 0");
  b = golden_body(c);
  b.cmd[0] = '\0';
  assert_int_equal(fy_cmd_body_encode(&b, &out, &err), FY_EINVAL);
  assert_contains(err.msg, "cmd is 0 bytes");
  b = golden_body(c);
  static const uint8_t not_map[] = {0x90};
  b.args = not_map;
  b.args_len = 1;
  assert_int_equal(fy_cmd_body_encode(&b, &out, &err), FY_EINVAL);
  assert_contains(err.msg, "args is not a map");
  static const uint8_t two_maps[] = {0x80, 0x80};
  b.args = two_maps;
  b.args_len = 2;
  assert_int_equal(fy_cmd_body_encode(&b, &out, &err), FY_EINVAL);
  assert_contains(err.msg, "command body: args: 1 bytes after the msgpack value");
  assert_int_equal(out.len, 0);
}

/* ---- fy_cmd_check: every refusal ------------------------------------------- */

static enum fy_cmd_refusal check(const struct ctx *c, const struct fy_buf *env, uint64_t now,
                                 struct fy_err *err) {
  struct fy_envelope e;
  struct fy_cmd_body b;
  fy_err_clear(err);
  return fy_cmd_check(env->data, env->len, &c->coord.id, now, &e, &b, err);
}

static void test_check_bad_signature(void **state) {
  struct ctx *c = *state;
  struct fy_cmd_body b = golden_body(c);
  FY_AUTOBUF struct fy_buf env = FY_BUF_INIT;
  make_command(&c->admin, &b, &env);
  struct fy_err err;
  /* Each body byte: a flipped one never verifies. */
  for (size_t i = 3; i < 3 + 0xba; i++) {
    env.data[i] ^= 0x01;
    assert_int_equal(check(c, &env, IAT, &err), FY_CMD_BAD_SIGNATURE);
    env.data[i] ^= 0x01;
  }
  assert_int_equal(err.code, FY_ECRYPTO);
  assert_string_equal(err.msg, "command: envelope: signature does not verify for signer 03a107bff3ce");
  env.data[env.len - 1] ^= 0x80; /* the signature itself */
  assert_int_equal(check(c, &env, IAT, &err), FY_CMD_BAD_SIGNATURE);
  env.data[env.len - 1] ^= 0x80;
  assert_int_equal(check(c, &env, IAT, &err), FY_CMD_OK);

  /* A valid signature under another context is no command. */
  FY_AUTOBUF struct fy_buf body = FY_BUF_INIT, manifest = FY_BUF_INIT;
  assert_int_equal(fy_cmd_body_encode(&b, &body, &err), 0);
  assert_int_equal(fy_envelope_seal(&c->admin, FY_CTX_MANIFEST, body.data, body.len, &manifest, &err), 0);
  assert_int_equal(check(c, &manifest, IAT, &err), FY_CMD_BAD_SIGNATURE);
  struct fy_envelope e;
  assert_int_equal(fy_envelope_open(manifest.data, manifest.len, FY_CTX_MANIFEST, &e, &err), 0);
}

static void test_check_signer_mismatch(void **state) {
  struct ctx *c = *state;
  struct fy_cmd_body b = golden_body(c);
  FY_AUTOBUF struct fy_buf env = FY_BUF_INIT;
  make_command(&c->other, &b, &env); /* issuer says admin, other signs */
  struct fy_err err;
  assert_int_equal(check(c, &env, IAT, &err), FY_CMD_SIGNER_MISMATCH);
  assert_contains(err.msg, "command: issuer 03a107bff3ce is not the signer");
}

static void test_check_wrong_coordinator(void **state) {
  struct ctx *c = *state;
  struct fy_cmd_body b = golden_body(c);
  b.coordinator = c->other.id;
  FY_AUTOBUF struct fy_buf env = FY_BUF_INIT;
  make_command(&c->admin, &b, &env);
  struct fy_err err;
  assert_int_equal(check(c, &env, IAT, &err), FY_CMD_WRONG_COORDINATOR);
  assert_contains(err.msg, "this is 29acbae141bc");
}

static void test_check_time(void **state) {
  struct ctx *c = *state;
  struct fy_cmd_body b = golden_body(c);
  FY_AUTOBUF struct fy_buf env = FY_BUF_INIT;
  make_command(&c->admin, &b, &env);
  struct fy_err err;
  /* Up to 5 minutes of clock skew is tolerated. */
  assert_int_equal(check(c, &env, IAT - FY_CMD_SKEW_MS, &err), FY_CMD_OK);
  assert_int_equal(check(c, &env, IAT - FY_CMD_SKEW_MS - 1, &err), FY_CMD_NOT_YET_VALID);
  assert_int_equal(check(c, &env, IAT - 420000 /* 7 min */, &err), FY_CMD_NOT_YET_VALID);
  assert_contains(err.msg, "command: not yet valid: issued 7 min in the future at 2026-01-01T00:00:00Z");
  assert_int_equal(check(c, &env, EXP - 1, &err), FY_CMD_OK);
  assert_int_equal(check(c, &env, EXP, &err), FY_CMD_EXPIRED);
  assert_string_equal(err.msg, "command: expired 0 ms ago at 2026-01-01T01:00:00Z");
  assert_int_equal(check(c, &env, EXP + 12000, &err), FY_CMD_EXPIRED);
  assert_string_equal(err.msg, "command: expired 12 s ago at 2026-01-01T01:00:00Z");
  assert_int_equal(check(c, &env, UINT64_MAX, &err), FY_CMD_EXPIRED);
  assert_int_equal(check(c, &env, 0, &err), FY_CMD_NOT_YET_VALID);
}

static void test_check_malformed(void **state) {
  struct ctx *c = *state;
  struct fy_err err;
  struct fy_envelope e;
  struct fy_cmd_body b;
  size_t n;
  FY_AUTOFREE uint8_t *env = from_hex(GOLDEN_ENVELOPE, &n);
  /* Truncated at every length. */
  for (size_t k = 0; k < n; k++)
    assert_int_equal(fy_cmd_check(env, k, &c->coord.id, IAT, &e, &b, &err), FY_CMD_MALFORMED);
  assert_contains(err.msg, "command: envelope: sig: msgpack value truncated");

  /* An array of 2. */
  env[0] = 0x92;
  assert_int_equal(fy_cmd_check(env, n, &c->coord.id, IAT, &e, &b, &err), FY_CMD_MALFORMED);
  env[0] = 0x93;
  /* Extra bytes after the envelope. */
  FY_AUTOFREE uint8_t *longer = malloc(n + 1);
  memcpy(longer, env, n);
  longer[n] = 0xc0;
  assert_int_equal(fy_cmd_check(longer, n + 1, &c->coord.id, IAT, &e, &b, &err), FY_CMD_MALFORMED);
  assert_contains(err.msg, "1 bytes after the msgpack array");

  struct {
    const char *hex, *msg;
  } cases[] = {
      {"92c400c400", "envelope: not an array of 3 elements"},
      {"93a0c400c400", "envelope: body is not bin"},
      {"93c400c41f00000000000000000000000000000000000000000000000000000000000000c400",
       "envelope: signer is not 32 bytes of bin"},
      {"93c400a0c400", "envelope: signer is not 32 bytes of bin"},
      {"93c400c4200000000000000000000000000000000000000000000000000000000000000000c400",
       "envelope: sig is not 64 bytes of bin"},
      {"c0", "envelope: not an array of 3 elements"},
      {"", "envelope: msgpack value truncated at offset 0"},
      {"939393939393", "envelope: body: msgpack nested deeper than 1 levels"},
  };
  for (size_t i = 0; i < FY_ARRAY_LEN(cases); i++) {
    size_t m;
    FY_AUTOFREE uint8_t *p = from_hex(cases[i].hex, &m);
    assert_int_equal(fy_cmd_check(p, m, &c->coord.id, IAT, &e, &b, &err), FY_CMD_MALFORMED);
    assert_int_equal(err.code, FY_EINVAL);
    assert_contains(err.msg, cases[i].msg);
  }

  /* A well-signed body that is no command body. */
  FY_AUTOBUF struct fy_buf sealed = FY_BUF_INIT;
  static const uint8_t not_body[] = {0x81, 0xa3, 'f', 'o', 'o', 0x01};
  assert_int_equal(fy_envelope_seal(&c->admin, FY_CTX_COMMAND, not_body, sizeof(not_body), &sealed, &err), 0);
  assert_int_equal(fy_cmd_check(sealed.data, sealed.len, &c->coord.id, IAT, &e, &b, &err), FY_CMD_MALFORMED);
  assert_string_equal(err.msg, "command: command body: unknown key \"foo\"");

  /* Too large to be an envelope. */
  FY_AUTOFREE uint8_t *big = calloc(1, FY_ENVELOPE_MAX + 1);
  assert_int_equal(fy_cmd_check(big, FY_ENVELOPE_MAX + 1, &c->coord.id, IAT, &e, &b, &err), FY_CMD_MALFORMED);
  assert_int_equal(err.code, FY_ELIMIT);
}

static void test_seal_limits(void **state) {
  struct ctx *c = *state;
  struct fy_err err;
  FY_AUTOBUF struct fy_buf out = FY_BUF_INIT;
  size_t fits = FY_ENVELOPE_MAX - 1 - 3 - 34 - 66; /* array, bin 16 header, signer, sig */
  static uint8_t body[FY_ENVELOPE_MAX];
  assert_int_equal(fy_envelope_seal(&c->admin, FY_CTX_COMMAND, body, fits + 1, &out, &err), FY_ELIMIT);
  assert_int_equal(out.len, 0);
  assert_int_equal(fy_envelope_seal(&c->admin, FY_CTX_COMMAND, body, fits, &out, &err), 0);
  assert_int_equal(out.len, FY_ENVELOPE_MAX);
  struct fy_envelope e;
  assert_int_equal(fy_envelope_open(out.data, out.len, FY_CTX_COMMAND, &e, &err), 0);
  assert_int_equal(e.body_len, fits);
  assert_int_equal(fy_envelope_seal(&c->admin, "", body, 1, &out, &err), FY_EINVAL);
  /* An empty body is a valid envelope (not a valid command). */
  fy_buf_free(&out);
  assert_int_equal(fy_envelope_seal(&c->admin, FY_CTX_MANIFEST, NULL, 0, &out, &err), 0);
  assert_int_equal(fy_envelope_open(out.data, out.len, FY_CTX_MANIFEST, &e, &err), 0);
  assert_int_equal(e.body_len, 0);
}

static void test_refusal_names(void **state) {
  (void)state;
  static const char *const names[] = {
      "ok",        "malformed",      "bad_signature", "signer_mismatch", "wrong_coordinator", "not_yet_valid",
      "expired",   "unknown_signer", "replayed",      "forbidden_role",  "forbidden_tenant",  "invalid_args",
      "not_found", "conflict"};
  for (size_t i = 0; i < FY_ARRAY_LEN(names); i++)
    assert_string_equal(fy_cmd_refusal_name((enum fy_cmd_refusal)i), names[i]);
  assert_int_equal(FY_CMD_CONFLICT, 13);
  assert_string_equal(fy_cmd_refusal_name((enum fy_cmd_refusal)99), "unknown");
}

int main(void) {
  if (fy_crypto_init(NULL) < 0)
    return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_golden),
      cmocka_unit_test(test_golden_check),
      cmocka_unit_test(test_spec_vectors),
      cmocka_unit_test(test_body_round_trip_empty_args),
      cmocka_unit_test(test_body_any_key_order),
      cmocka_unit_test(test_body_decode_errors),
      cmocka_unit_test(test_body_encode_errors),
      cmocka_unit_test(test_check_bad_signature),
      cmocka_unit_test(test_check_signer_mismatch),
      cmocka_unit_test(test_check_wrong_coordinator),
      cmocka_unit_test(test_check_time),
      cmocka_unit_test(test_check_malformed),
      cmocka_unit_test(test_seal_limits),
      cmocka_unit_test(test_refusal_names),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
