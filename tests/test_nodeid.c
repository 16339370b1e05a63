/* Node ids: text forms, fingerprints, parsing and its errors.
 *
 * Golden values. Seed 00 01 02 ... 1f: the public key, the OpenSSH line and
 * the fingerprint were computed three ways and agree: ferry (libsodium),
 * pyca/cryptography (OpenSSL) + hashlib, and `ssh-keygen -y` / `ssh-keygen -l`
 * run on the key file ferry's encoder wrote for that seed. RFC 8032 section
 * 7.1 test 1 gives the public key of its secret authoritatively; its OpenSSH
 * line and fingerprint come from ssh-keygen as above. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/key.h"
#include "crypto/nodeid.h"
#include "crypto/openssh.h"

struct golden {
  const char *seed_hex;
  const char *id_hex;
  const char *short_id;
  const char *fingerprint;
  const char *pub_line; /* `ssh-keygen -y` output without the comment */
};

static const struct golden seq_vector = {
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8",
    "03a107bff3ce",
    "SHA256:lbmsoA0yIEcEiVDRnMWuzm+nV+3ZEEpVIURqFoeSspg",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4",
};

static const struct golden rfc8032_test1 = {
    "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
    "d75a980182b1",
    "SHA256:bbXpuKG6zhzdmnxq256TlqzFBzRl2f6OOg722cYNbU8",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINdamAGCsQq31Uv+08lkBzoO4XLz2qYjJa8CGmj3B1Ea",
};

#define assert_contains(haystack, needle)                                                                    \
  do {                                                                                                       \
    if (!strstr((haystack), (needle)))                                                                       \
      fail_msg("message \"%s\" does not contain \"%s\"", (haystack), (needle));                              \
  } while (0)

static void check_golden(const struct golden *g) {
  uint8_t seed[32];
  size_t n = 0;
  assert_int_equal(sodium_hex2bin(seed, sizeof(seed), g->seed_hex, 64, NULL, &n, NULL), 0);
  assert_int_equal(n, 32);

  struct fy_err err;
  struct fy_key key;
  assert_int_equal(fy_key_from_seed(&key, seed, &err), 0);

  char hex[FY_NODEID_HEX_LEN + 1], short_id[FY_NODEID_SHORT_LEN + 1], fp[FY_FINGERPRINT_MAX];
  fy_nodeid_to_hex(&key.id, hex);
  fy_nodeid_to_short(&key.id, short_id);
  fy_nodeid_fingerprint(&key.id, fp);
  assert_string_equal(hex, g->id_hex);
  assert_string_equal(short_id, g->short_id);
  assert_string_equal(fp, g->fingerprint);

  char *line = NULL;
  assert_int_equal(fy_openssh_format_public(key.id.key, "", &line, &err), 0);
  assert_string_equal(line, g->pub_line);
  free(line);

  /* Both text forms parse back to the same id. */
  struct fy_nodeid id;
  assert_int_equal(fy_nodeid_parse(g->id_hex, &id, &err), 0);
  assert_true(fy_nodeid_equal(&id, &key.id));
  assert_int_equal(fy_nodeid_parse(g->pub_line, &id, &err), 0);
  assert_true(fy_nodeid_equal(&id, &key.id));
  fy_key_free(&key);
}

static void test_golden_seq_seed(void **state) {
  (void)state;
  check_golden(&seq_vector);
}

static void test_golden_rfc8032_test1(void **state) {
  (void)state;
  check_golden(&rfc8032_test1);
}

static void test_hex_round_trip(void **state) {
  (void)state;
  struct fy_err err;
  for (int i = 0; i < 16; i++) {
    struct fy_nodeid a, b;
    randombytes_buf(a.key, sizeof(a.key));
    char hex[FY_NODEID_HEX_LEN + 1];
    fy_nodeid_to_hex(&a, hex);
    assert_int_equal(strlen(hex), FY_NODEID_HEX_LEN);
    assert_int_equal(fy_nodeid_parse(hex, &b, &err), 0);
    assert_true(fy_nodeid_equal(&a, &b));
    char fp[FY_FINGERPRINT_MAX];
    fy_nodeid_fingerprint(&a, fp);
    assert_int_equal(strlen(fp), FY_FINGERPRINT_MAX - 1);
    assert_int_equal(strncmp(fp, "SHA256:", 7), 0);
  }
}

static void test_parse_uppercase_and_white_space(void **state) {
  (void)state;
  struct fy_err err;
  struct fy_nodeid id, want;
  assert_int_equal(fy_nodeid_parse(seq_vector.id_hex, &want, &err), 0);
  assert_int_equal(
      fy_nodeid_parse("03A107BFF3CE10BE1D70DD18E74BC09967E4D6309BA50D5F1DDC8664125531B8", &id, &err), 0);
  assert_true(fy_nodeid_equal(&id, &want));
  assert_int_equal(
      fy_nodeid_parse(" \t03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8\n", &id, &err), 0);
  assert_true(fy_nodeid_equal(&id, &want));
}

static void test_parse_wrong_length(void **state) {
  (void)state;
  struct fy_err err;
  struct fy_nodeid id;
  char text[80];
  memcpy(text, seq_vector.id_hex, 64);
  text[63] = '\0';
  assert_int_equal(fy_nodeid_parse(text, &id, &err), FY_EINVAL);
  assert_int_equal(err.code, FY_EINVAL);
  assert_contains(err.msg, "63 hex digits");
  assert_contains(err.msg, "expected 64");

  memcpy(text, seq_vector.id_hex, 64);
  text[64] = 'a';
  text[65] = '\0';
  assert_int_equal(fy_nodeid_parse(text, &id, &err), FY_EINVAL);
  assert_contains(err.msg, "65 hex digits");

  assert_int_equal(fy_nodeid_parse("", &id, &err), FY_EINVAL);
  assert_contains(err.msg, "empty");
  assert_int_equal(fy_nodeid_parse(" \n ", &id, &err), FY_EINVAL);
  assert_contains(err.msg, "empty");
}

static void test_parse_non_hex_position(void **state) {
  (void)state;
  struct fy_err err;
  struct fy_nodeid id;
  char text[80];
  memcpy(text, seq_vector.id_hex, 65);
  text[10] = 'g';
  assert_int_equal(fy_nodeid_parse(text, &id, &err), FY_EINVAL);
  assert_contains(err.msg, "'g' at position 10");
  assert_contains(err.msg, "not a hex digit");

  /* Odd positions too (libsodium's hex decoder reports those one early). */
  memcpy(text, seq_vector.id_hex, 65);
  text[11] = 'z';
  assert_int_equal(fy_nodeid_parse(text, &id, &err), FY_EINVAL);
  assert_contains(err.msg, "'z' at position 11");

  /* Non-printable bytes are shown as hex, never raw. */
  memcpy(text, seq_vector.id_hex, 65);
  text[63] = '\x01';
  assert_int_equal(fy_nodeid_parse(text, &id, &err), FY_EINVAL);
  assert_contains(err.msg, "0x01 at position 63");

  /* A fingerprint is not an id, and the message says so. */
  assert_int_equal(fy_nodeid_parse(seq_vector.fingerprint, &id, &err), FY_EINVAL);
  assert_contains(err.msg, "fingerprint");
}

static void test_parse_openssh_line(void **state) {
  (void)state;
  struct fy_err err;
  struct fy_nodeid id, want;
  assert_int_equal(fy_nodeid_parse(seq_vector.id_hex, &want, &err), 0);
  const char *lines[] = {
      "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4",
      "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4 root@host\n",
      "  ssh-ed25519\tAAAAC3NzaC1lZDI1NTE5AAAAIAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4 a b c ",
  };
  for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
    memset(&id, 0, sizeof(id));
    assert_int_equal(fy_nodeid_parse(lines[i], &id, &err), 0);
    assert_true(fy_nodeid_equal(&id, &want));
  }
}

static void test_parse_other_key_types(void **state) {
  (void)state;
  struct fy_err err;
  struct fy_nodeid id;
  assert_int_equal(fy_nodeid_parse("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 user@laptop", &id, &err),
                   FY_EUNSUPPORTED);
  assert_int_equal(err.code, FY_EUNSUPPORTED);
  assert_contains(err.msg, "ssh-rsa");
  assert_int_equal(
      fy_nodeid_parse("ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY=", &id, &err),
      FY_EUNSUPPORTED);
  assert_contains(err.msg, "ecdsa-sha2-nistp256");
}

/* Base64 of an arbitrary blob, as a public key line. */
static char *line_with_blob(const uint8_t *blob, size_t len) {
  size_t b64_size = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_ORIGINAL);
  char *line = malloc(b64_size + 16);
  assert_non_null(line);
  snprintf(line, b64_size + 16, "ssh-ed25519 ");
  sodium_bin2base64(line + 12, b64_size, blob, len, sodium_base64_VARIANT_ORIGINAL);
  return line;
}

static void put_string(uint8_t *out, size_t *off, const void *s, uint32_t n) {
  out[(*off)++] = (uint8_t)(n >> 24);
  out[(*off)++] = (uint8_t)(n >> 16);
  out[(*off)++] = (uint8_t)(n >> 8);
  out[(*off)++] = (uint8_t)n;
  memcpy(out + *off, s, n);
  *off += n;
}

static void test_parse_bad_blobs(void **state) {
  (void)state;
  struct fy_err err;
  struct fy_nodeid id;
  uint8_t key[40] = {0};

  assert_int_equal(fy_nodeid_parse("ssh-ed25519 AAAA!C3NzaC1lZDI1", &id, &err), FY_EINVAL);
  assert_contains(err.msg, "bad base64");
  assert_contains(err.msg, "position 16");
  assert_int_equal(fy_nodeid_parse("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAOhB7/zzhC+HXDd=", &id, &err),
                   FY_EINVAL);
  assert_contains(err.msg, "bad base64");
  assert_int_equal(fy_nodeid_parse("ssh-ed25519", &id, &err), FY_EINVAL);
  assert_contains(err.msg, "missing the base64 key");

  /* 31- and 33-byte keys inside an ed25519 blob. */
  for (uint32_t n = 31; n <= 33; n += 2) {
    uint8_t blob[64];
    size_t off = 0;
    put_string(blob, &off, "ssh-ed25519", 11);
    put_string(blob, &off, key, n);
    char *line = line_with_blob(blob, off);
    assert_int_equal(fy_nodeid_parse(line, &id, &err), FY_EINVAL);
    char want[32];
    snprintf(want, sizeof(want), "%u-byte", n);
    assert_contains(err.msg, want);
    free(line);
  }

  /* A blob whose inner type disagrees with the line. */
  uint8_t blob[64];
  size_t off = 0;
  put_string(blob, &off, "ssh-rsa", 7);
  put_string(blob, &off, key, 32);
  char *line = line_with_blob(blob, off);
  assert_int_equal(fy_nodeid_parse(line, &id, &err), FY_EINVAL);
  assert_contains(err.msg, "ssh-rsa");
  free(line);

  /* Trailing bytes after the key. */
  off = 0;
  put_string(blob, &off, "ssh-ed25519", 11);
  put_string(blob, &off, key, 32);
  blob[off++] = 0;
  line = line_with_blob(blob, off);
  assert_int_equal(fy_nodeid_parse(line, &id, &err), FY_EINVAL);
  assert_contains(err.msg, "1 unexpected bytes");
  free(line);

  /* A truncated blob. */
  off = 0;
  put_string(blob, &off, "ssh-ed25519", 11);
  put_string(blob, &off, key, 32);
  line = line_with_blob(blob, off - 5);
  assert_int_equal(fy_nodeid_parse(line, &id, &err), FY_EINVAL);
  assert_contains(err.msg, "truncated");
  free(line);
}

static void test_parse_without_err(void **state) {
  (void)state;
  struct fy_nodeid id;
  assert_int_equal(fy_nodeid_parse("xyz", &id, NULL), FY_EINVAL);
  assert_int_equal(fy_nodeid_parse("ssh-dss AAAA", &id, NULL), FY_EUNSUPPORTED);
}

static void test_equal(void **state) {
  (void)state;
  struct fy_err err;
  struct fy_nodeid a, b;
  assert_int_equal(fy_nodeid_parse(seq_vector.id_hex, &a, &err), 0);
  assert_int_equal(fy_nodeid_parse(rfc8032_test1.id_hex, &b, &err), 0);
  assert_false(fy_nodeid_equal(&a, &b));
  b = a;
  b.key[31] ^= 1;
  assert_false(fy_nodeid_equal(&a, &b));
  b.key[31] ^= 1;
  assert_true(fy_nodeid_equal(&a, &b));
}

static int group_setup(void **state) {
  (void)state;
  struct fy_err err;
  return fy_crypto_init(&err) == 0 ? 0 : -1;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_golden_seq_seed),
      cmocka_unit_test(test_golden_rfc8032_test1),
      cmocka_unit_test(test_hex_round_trip),
      cmocka_unit_test(test_parse_uppercase_and_white_space),
      cmocka_unit_test(test_parse_wrong_length),
      cmocka_unit_test(test_parse_non_hex_position),
      cmocka_unit_test(test_parse_openssh_line),
      cmocka_unit_test(test_parse_other_key_types),
      cmocka_unit_test(test_parse_bad_blobs),
      cmocka_unit_test(test_parse_without_err),
      cmocka_unit_test(test_equal),
  };
  return cmocka_run_group_tests(tests, group_setup, NULL);
}
