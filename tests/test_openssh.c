/* OpenSSH key formats in memory: the openssh-key-v1 encoder and decoder,
 * public key lines, and every way a private key can be malformed.
 *
 * Golden vectors:
 *  - GOLDEN_SEQ: ferry's encoding of seed 00..1f, check-int 0x01020304,
 *    comment "gold". `ssh-keygen -y` and `ssh-keygen -l` (OpenSSH 9.2p1)
 *    accept the file and print the public key and fingerprint that
 *    pyca/cryptography derives independently for that seed.
 *  - PYCA_SEQ: the same seed written by pyca/cryptography 48 (an independent
 *    encoder: empty comment, 76-column lines). */
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
#include "crypto/openssh.h"

#define BEGIN "-----BEGIN OPENSSH PRIVATE KEY-----\n"
#define END "-----END OPENSSH PRIVATE KEY-----\n"

static const char GOLDEN_SEQ[] =
    BEGIN "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
          "QyNTUxOQAAACADoQe/884Qvh1w3RjnS8CZZ+TWMJulDV8d3IZkElUxuAAAAIgBAgMEAQID\n"
          "BAAAAAtzc2gtZWQyNTUxOQAAACADoQe/884Qvh1w3RjnS8CZZ+TWMJulDV8d3IZkElUxuA\n"
          "AAAEAAAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHwOhB7/zzhC+HXDdGOdLwJln\n"
          "5NYwm6UNXx3chmQSVTG4AAAABGdvbGQB\n" END;

static const char PYCA_SEQ[] =
    BEGIN "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZWQyNTUx\n"
          "OQAAACADoQe/884Qvh1w3RjnS8CZZ+TWMJulDV8d3IZkElUxuAAAAIjTxX2f08V9nwAAAAtzc2gt\n"
          "ZWQyNTUxOQAAACADoQe/884Qvh1w3RjnS8CZZ+TWMJulDV8d3IZkElUxuAAAAEAAAQIDBAUGBwgJ\n"
          "CgsMDQ4PEBESExQVFhcYGRobHB0eHwOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4AAAA\n"
          "AAECAwQF\n" END;

static const char SEQ_PK_HEX[] = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8";

#define assert_contains(haystack, needle)                                                                    \
  do {                                                                                                       \
    if (!strstr((haystack), (needle)))                                                                       \
      fail_msg("message \"%s\" does not contain \"%s\"", (haystack), (needle));                              \
  } while (0)

static void seq_seed(uint8_t seed[32]) {
  for (int i = 0; i < 32; i++)
    seed[i] = (uint8_t)i;
}

static void seq_key(struct fy_openssh_key *k, const char *comment) {
  memset(k, 0, sizeof(*k));
  seq_seed(k->seed);
  size_t n = 0;
  assert_int_equal(sodium_hex2bin(k->pk, 32, SEQ_PK_HEX, 64, NULL, &n, NULL), 0);
  snprintf(k->comment, sizeof(k->comment), "%s", comment);
}

static int decode_text(const char *text, struct fy_openssh_key *out, struct fy_err *err) {
  fy_err_clear(err);
  return fy_openssh_decode_private((const uint8_t *)text, strlen(text), out, err);
}

/* Decoding must fail with code, and the message must contain want. */
static void expect_decode_error(const uint8_t *data, size_t len, int code, const char *want) {
  struct fy_err err;
  struct fy_openssh_key k;
  fy_err_clear(&err);
  int rc = fy_openssh_decode_private(data, len, &k, &err);
  if (rc != code)
    fail_msg("decode returned %d (%s), want %d; message: %s", rc, fy_strerror(rc), code, err.msg);
  assert_int_equal(err.code, code);
  if (want)
    assert_contains(err.msg, want);
  /* A failed decode leaves no secret behind. */
  static const struct fy_openssh_key zero;
  assert_memory_equal(&k, &zero, sizeof(k));
}

static void expect_text_error(const char *text, int code, const char *want) {
  expect_decode_error((const uint8_t *)text, strlen(text), code, want);
}

/* ---- a builder for containers with chosen defects ------------------------ */

struct spec {
  const char *cipher, *kdf;
  uint32_t kdfopt_len;
  uint32_t nkeys;
  const char *pub_type;
  uint32_t pub_pk_len;
  uint32_t check1, check2;
  const char *priv_type;
  uint8_t priv_pk[64]; /* room for over-long lengths */
  uint32_t priv_pk_len;
  uint8_t sk[64];
  uint32_t sk_len;
  const char *comment;
  size_t comment_len; /* used when comment has NULs */
  int pad;            /* -1: proper padding; else this many bytes */
  uint8_t pad_fill;   /* 0: 1,2,3...; else every padding byte */
  size_t trailing;    /* bytes after the private section */
  uint8_t pk[64];
};

static void good_spec(struct spec *s) {
  memset(s, 0, sizeof(*s));
  s->cipher = "none";
  s->kdf = "none";
  s->nkeys = 1;
  s->pub_type = "ssh-ed25519";
  s->pub_pk_len = 32;
  s->check1 = s->check2 = 0xdeadbeef;
  s->priv_type = "ssh-ed25519";
  struct fy_openssh_key k;
  seq_key(&k, "");
  memcpy(s->pk, k.pk, 32);
  memcpy(s->priv_pk, k.pk, 32);
  s->priv_pk_len = 32;
  memcpy(s->sk, k.seed, 32);
  memcpy(s->sk + 32, k.pk, 32);
  s->sk_len = 64;
  s->comment = "spec";
  s->comment_len = 4;
  s->pad = -1;
}

struct buf {
  uint8_t b[4096];
  size_t n;
};

static void put(struct buf *b, const void *p, size_t n) {
  assert_true(b->n + n <= sizeof(b->b));
  memcpy(b->b + b->n, p, n);
  b->n += n;
}

static void put_u32(struct buf *b, uint32_t v) {
  uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
  put(b, x, 4);
}

static void put_str(struct buf *b, const void *p, size_t n) {
  put_u32(b, (uint32_t)n);
  put(b, p, n);
}

static void build_container(const struct spec *s, struct buf *out) {
  static const uint8_t zeros[256];
  struct buf pub = {.n = 0}, priv = {.n = 0};
  put_str(&pub, s->pub_type, strlen(s->pub_type));
  put_str(&pub, s->pk, s->pub_pk_len);

  put_u32(&priv, s->check1);
  put_u32(&priv, s->check2);
  put_str(&priv, s->priv_type, strlen(s->priv_type));
  put_str(&priv, s->priv_pk, s->priv_pk_len);
  put_str(&priv, s->sk, s->sk_len);
  put_str(&priv, s->comment, s->comment_len);
  size_t pad = s->pad >= 0 ? (size_t)s->pad : (8 - priv.n % 8) % 8;
  for (size_t i = 1; i <= pad; i++) {
    uint8_t b = s->pad_fill ? s->pad_fill : (uint8_t)i;
    put(&priv, &b, 1);
  }

  out->n = 0;
  put(out, "openssh-key-v1", 15);
  put_str(out, s->cipher, strlen(s->cipher));
  put_str(out, s->kdf, strlen(s->kdf));
  put_str(out, zeros, s->kdfopt_len);
  put_u32(out, s->nkeys);
  put_str(out, pub.b, pub.n);
  put_str(out, priv.b, priv.n);
  for (size_t i = 0; i < s->trailing; i++)
    put(out, "x", 1);
}

/* Armors bytes the way ssh-keygen does; the caller frees the text. */
static char *armor(const uint8_t *bin, size_t len, size_t wrap) {
  size_t b64_size = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_ORIGINAL);
  char *b64 = malloc(b64_size);
  assert_non_null(b64);
  sodium_bin2base64(b64, b64_size, bin, len, sodium_base64_VARIANT_ORIGINAL);
  size_t b64_len = strlen(b64);
  char *text = malloc(sizeof(BEGIN) + b64_len + b64_len / wrap + 2 + sizeof(END));
  assert_non_null(text);
  size_t off = 0;
  memcpy(text, BEGIN, sizeof(BEGIN) - 1);
  off += sizeof(BEGIN) - 1;
  for (size_t i = 0; i < b64_len; i += wrap) {
    size_t n = b64_len - i < wrap ? b64_len - i : wrap;
    memcpy(text + off, b64 + i, n);
    off += n;
    text[off++] = '\n';
  }
  memcpy(text + off, END, sizeof(END));
  free(b64);
  return text;
}

static void expect_spec_error(const struct spec *s, int code, const char *want) {
  struct buf bin;
  build_container(s, &bin);
  char *text = armor(bin.b, bin.n, 70);
  expect_text_error(text, code, want);
  free(text);
}

/* ---- tests ------------------------------------------------------------------ */

static void test_encode_golden(void **state) {
  (void)state;
  struct fy_openssh_key k;
  struct fy_err err;
  seq_key(&k, "gold");
  char *text = NULL;
  size_t len = 0;
  assert_int_equal(fy_openssh_encode_private(&k, 0x01020304, &text, &len, &err), 0);
  assert_int_equal(len, strlen(GOLDEN_SEQ));
  assert_string_equal(text, GOLDEN_SEQ);
  sodium_memzero(text, len);
  free(text);
}

static void test_decode_golden(void **state) {
  (void)state;
  struct fy_openssh_key want, got;
  struct fy_err err;
  seq_key(&want, "gold");
  assert_int_equal(decode_text(GOLDEN_SEQ, &got, &err), 0);
  assert_memory_equal(got.seed, want.seed, 32);
  assert_memory_equal(got.pk, want.pk, 32);
  assert_string_equal(got.comment, "gold");

  /* An independent encoder: other line width, other check-int, no comment. */
  assert_int_equal(decode_text(PYCA_SEQ, &got, &err), 0);
  assert_memory_equal(got.seed, want.seed, 32);
  assert_memory_equal(got.pk, want.pk, 32);
  assert_string_equal(got.comment, "");
  fy_openssh_key_wipe(&got);
  static const struct fy_openssh_key zero;
  assert_memory_equal(&got, &zero, sizeof(got));
}

/* Line breaks are ignored: CRLF, one long line, other widths, blank edges. */
static void test_decode_layouts(void **state) {
  (void)state;
  struct spec s;
  good_spec(&s);
  struct buf bin;
  build_container(&s, &bin);
  struct fy_err err;
  struct fy_openssh_key k;
  size_t widths[] = {1, 4, 63, 64, 70, 76, 1000};
  for (size_t i = 0; i < sizeof(widths) / sizeof(widths[0]); i++) {
    char *text = armor(bin.b, bin.n, widths[i]);
    assert_int_equal(decode_text(text, &k, &err), 0);
    assert_string_equal(k.comment, "spec");
    free(text);
  }

  char crlf[1024], *o = crlf;
  *o++ = '\n'; /* a leading blank line */
  for (const char *p = GOLDEN_SEQ; *p; p++) {
    if (*p == '\n')
      *o++ = '\r';
    *o++ = *p;
  }
  memcpy(o, "\r\n\n", 4); /* trailing blank lines */
  assert_int_equal(decode_text(crlf, &k, &err), 0);
  assert_string_equal(k.comment, "gold");

  /* The final newline is optional. */
  char no_nl[1024];
  snprintf(no_nl, sizeof(no_nl), "%s", GOLDEN_SEQ);
  no_nl[strlen(no_nl) - 1] = '\0';
  assert_int_equal(decode_text(no_nl, &k, &err), 0);
}

/* Every comment length 0..20 walks through all eight padding lengths. */
static void test_round_trip_paddings(void **state) {
  (void)state;
  struct fy_err err;
  for (size_t n = 0; n <= 20; n++) {
    char comment[32];
    memset(comment, 'c', n);
    comment[n] = '\0';
    struct fy_openssh_key k, got;
    seq_key(&k, comment);
    char *text = NULL;
    size_t len = 0;
    uint32_t check = randombytes_random();
    assert_int_equal(fy_openssh_encode_private(&k, check, &text, &len, &err), 0);
    assert_int_equal(len, strlen(text));
    assert_int_equal(text[len - 1], '\n');
    /* Lines are at most 70 columns. */
    for (char *line = text; *line;) {
      char *nl = strchr(line, '\n');
      assert_non_null(nl);
      assert_true(nl - line <= 70 || strncmp(line, "-----", 5) == 0);
      line = nl + 1;
    }
    assert_int_equal(fy_openssh_decode_private((uint8_t *)text, len, &got, &err), 0);
    assert_memory_equal(&got, &k, sizeof(k));
    sodium_memzero(text, len);
    free(text);
  }

  /* The longest comment ferry keeps: 255 bytes. */
  struct fy_openssh_key k, got;
  char comment[256];
  memset(comment, 'm', 255);
  comment[255] = '\0';
  seq_key(&k, comment);
  char *text = NULL;
  size_t len = 0;
  assert_int_equal(fy_openssh_encode_private(&k, 7, &text, &len, &err), 0);
  assert_int_equal(fy_openssh_decode_private((uint8_t *)text, len, &got, &err), 0);
  assert_string_equal(got.comment, comment);
  free(text);
}

static void test_encode_refuses_bad_keys(void **state) {
  (void)state;
  struct fy_openssh_key k;
  struct fy_err err;
  char sentinel[] = "unchanged";
  char *text = sentinel;
  size_t len = 1;
  seq_key(&k, "x");
  k.pk[0] ^= 1;
  assert_int_equal(fy_openssh_encode_private(&k, 1, &text, &len, &err), FY_EINVAL);
  assert_contains(err.msg, "does not match the seed");
  assert_null(text);
  assert_int_equal(len, 0);

  seq_key(&k, "");
  memset(k.comment, 'a', sizeof(k.comment)); /* no NUL */
  assert_int_equal(fy_openssh_encode_private(&k, 1, &text, &len, &err), FY_EINVAL);
  assert_contains(err.msg, "comment");
}

static void test_truncated_text(void **state) {
  (void)state;
  size_t len = strlen(GOLDEN_SEQ);
  /* Every cut fails cleanly; the last byte (final newline) is optional. */
  for (size_t cut = 0; cut + 1 < len; cut++) {
    struct fy_err err;
    struct fy_openssh_key k;
    int rc = fy_openssh_decode_private((const uint8_t *)GOLDEN_SEQ, cut, &k, &err);
    if (rc >= 0)
      fail_msg("a key cut at %zu of %zu bytes decoded", cut, len);
    assert_int_equal(rc, err.code);
    assert_true(err.msg[0] != '\0');
  }
  size_t begin_len = strlen(BEGIN);
  expect_decode_error((const uint8_t *)GOLDEN_SEQ, 0, FY_EINVAL, "empty");
  expect_decode_error((const uint8_t *)GOLDEN_SEQ, 10, FY_EINVAL, "truncated inside the '-----BEGIN");
  expect_decode_error((const uint8_t *)GOLDEN_SEQ, 20, FY_EINVAL, "truncated inside the '-----BEGIN");
  expect_decode_error((const uint8_t *)GOLDEN_SEQ, begin_len - 1, FY_EINVAL,
                      "truncated after the '-----BEGIN");
  expect_decode_error((const uint8_t *)GOLDEN_SEQ, begin_len, FY_EINVAL,
                      "missing '-----END OPENSSH PRIVATE KEY-----'");
  expect_decode_error((const uint8_t *)GOLDEN_SEQ, begin_len + 37, FY_EINVAL, "missing '-----END");
  expect_decode_error((const uint8_t *)GOLDEN_SEQ, len - 10, FY_EINVAL, "missing '-----END");

  /* Lines lost from the middle, armor intact: the container is short. */
  char text[1024];
  const char *second = strchr(GOLDEN_SEQ + begin_len, '\n') + 1;
  const char *last = strstr(GOLDEN_SEQ, "5NYwm6");
  size_t head = (size_t)(second - GOLDEN_SEQ);
  memcpy(text, GOLDEN_SEQ, head);
  snprintf(text + head, sizeof(text) - head, "%s", last);
  expect_text_error(text, FY_EINVAL, NULL); /* base64 quanta no longer line up */
  head = (size_t)(last - GOLDEN_SEQ);
  memcpy(text, GOLDEN_SEQ, head);
  snprintf(text + head, sizeof(text) - head, "%s", END);
  expect_text_error(text, FY_EINVAL, "truncated container: private section at offset 94 claims 136 bytes");
}

/* The container cut at every length, armored properly: a field is named. */
static void test_truncated_container(void **state) {
  (void)state;
  struct spec s;
  good_spec(&s);
  struct buf bin;
  build_container(&s, &bin);
  for (size_t cut = 1; cut < bin.n; cut++) {
    char *text = armor(bin.b, cut, 70);
    struct fy_err err;
    struct fy_openssh_key k;
    int rc = decode_text(text, &k, &err);
    if (rc != FY_EINVAL)
      fail_msg("cut at %zu: rc %d, %s", cut, rc, err.msg);
    free(text);
  }
  char *text = armor(bin.b, 20, 70);
  expect_text_error(text, FY_EINVAL, "truncated container: ciphername at offset 15 claims 4");
  free(text);
  text = armor(bin.b, 33, 70);
  expect_text_error(text, FY_EINVAL,
                    "truncated container: kdfoptions needs 4 bytes at offset 31, only 2 left");
  free(text);
  text = armor(bin.b, 60, 70);
  expect_text_error(text, FY_EINVAL, "truncated container: public key blob at offset 39 claims 51 bytes");
  free(text);
}

static void test_garbage(void **state) {
  (void)state;
  uint8_t noise[512];
  for (int i = 0; i < 64; i++) {
    randombytes_buf(noise, sizeof(noise));
    struct fy_err err;
    struct fy_openssh_key k;
    assert_true(fy_openssh_decode_private(noise, sizeof(noise), &k, &err) < 0);
  }
  expect_text_error("hello, world\n", FY_EINVAL, "missing '-----BEGIN OPENSSH PRIVATE KEY-----'");
  expect_text_error(" \n\t\r\n", FY_EINVAL, "empty");
  expect_decode_error((const uint8_t *)"\0\0\0\0", 4, FY_EINVAL, "missing '-----BEGIN");
  expect_text_error("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4\n",
                    FY_EINVAL, "public key line");
  expect_text_error("-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n",
                    FY_EUNSUPPORTED, "'RSA PRIVATE KEY'");
  expect_text_error("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEI\n-----END EC PRIVATE KEY-----\n",
                    FY_EUNSUPPORTED, "'EC PRIVATE KEY'");
  expect_text_error(BEGIN END, FY_EINVAL, "body between the armor lines is empty");

  /* A valid armor around random base64. */
  for (int i = 0; i < 16; i++) {
    randombytes_buf(noise, 200);
    char *text = armor(noise, 200, 70);
    expect_text_error(text, FY_EINVAL, "not an openssh-key-v1 container");
    free(text);
  }
}

static void test_bad_base64_and_armor(void **state) {
  (void)state;
  char text[1024];
  snprintf(text, sizeof(text), "%s", GOLDEN_SEQ);
  char *third = strchr(strchr(text, '\n') + 1, '\n') + 1; /* line 3 */
  third[5] = '*';
  expect_text_error(text, FY_EINVAL, "bad base64 in the key body at line 3, column 6");

  snprintf(text, sizeof(text), "%s", GOLDEN_SEQ);
  char *pad_char = strstr(text, "dvbGQB") + 2; /* '=' in the middle of the data */
  *pad_char = '=';
  expect_text_error(text, FY_EINVAL, "bad base64");

  snprintf(text, sizeof(text), "%sjunk\n", GOLDEN_SEQ);
  expect_text_error(text, FY_EINVAL,
                    "unexpected data after the '-----END OPENSSH PRIVATE KEY-----' line at line 8");

  snprintf(text, sizeof(text), "-----BEGIN OPENSSH PRIVATE KEY----- x\n%s", GOLDEN_SEQ + strlen(BEGIN));
  expect_text_error(text, FY_EINVAL, "unexpected text after");

  /* END glued to the last base64 line. */
  snprintf(text, sizeof(text), "%s", GOLDEN_SEQ);
  char *end = strstr(text, "\n-----END");
  memmove(end, end + 1, strlen(end));
  expect_text_error(text, FY_EINVAL, "does not start its line");
}

static void test_check_int_mismatch(void **state) {
  (void)state;
  struct spec s;
  good_spec(&s);
  s.check2 = 0xdeadbeee;
  expect_spec_error(&s, FY_EINVAL, "check-int mismatch (0xdeadbeef vs 0xdeadbeee)");
}

static void test_private_half_mismatch(void **state) {
  (void)state;
  struct spec s;

  good_spec(&s); /* the 64-byte secret key's public half is not the key */
  s.sk[63] ^= 0x80;
  expect_spec_error(&s, FY_EINVAL, "secret key's public half differs");

  good_spec(&s); /* the private section repeats another public key */
  s.priv_pk[0] ^= 1;
  expect_spec_error(&s, FY_EINVAL, "private section's public key differs");

  good_spec(&s); /* both copies agree, but the seed derives another key */
  s.sk[0] ^= 1;
  expect_spec_error(&s, FY_EINVAL, "seed does not derive the public key");

  good_spec(&s); /* a consistent file whose public key is someone else's */
  s.pk[5] ^= 4;
  s.priv_pk[5] ^= 4;
  s.sk[37] ^= 4;
  expect_spec_error(&s, FY_EINVAL, "seed does not derive the public key");

  good_spec(&s);
  s.sk_len = 32;
  expect_spec_error(&s, FY_EINVAL, "secret key is 32 bytes");
  good_spec(&s);
  s.priv_pk_len = 31;
  expect_spec_error(&s, FY_EINVAL, "private section's public key is 31 bytes");
  good_spec(&s);
  s.priv_type = "ssh-rsa";
  expect_spec_error(&s, FY_EINVAL, "private key type 'ssh-rsa'");
}

static void test_unsupported(void **state) {
  (void)state;
  struct spec s;
  good_spec(&s);
  s.cipher = "aes256-ctr";
  s.kdf = "bcrypt";
  expect_spec_error(&s, FY_EUNSUPPORTED, "encrypted (cipher 'aes256-ctr', kdf 'bcrypt')");

  good_spec(&s);
  s.kdf = "bcrypt";
  expect_spec_error(&s, FY_EUNSUPPORTED, "kdfname is 'bcrypt'");

  good_spec(&s);
  s.nkeys = 2;
  expect_spec_error(&s, FY_EUNSUPPORTED, "number of keys is 2");
  good_spec(&s);
  s.nkeys = 0;
  expect_spec_error(&s, FY_EINVAL, "number of keys is 0");

  good_spec(&s);
  s.pub_type = "ssh-rsa";
  expect_spec_error(&s, FY_EUNSUPPORTED, "key type 'ssh-rsa' is not supported");
  good_spec(&s);
  s.pub_type = "ecdsa-sha2-nistp256";
  expect_spec_error(&s, FY_EUNSUPPORTED, "'ecdsa-sha2-nistp256'");
  good_spec(&s);
  s.pub_type = "ssh-\x01\xff"; /* untrusted names are shown safely */
  expect_spec_error(&s, FY_EUNSUPPORTED, "'ssh-\?\?'");
  good_spec(&s);
  s.pub_pk_len = 33;
  expect_spec_error(&s, FY_EINVAL, "public key blob holds a 33-byte");
}

static void test_layout_errors(void **state) {
  (void)state;
  struct spec s;
  good_spec(&s);
  s.kdfopt_len = 3;
  expect_spec_error(&s, FY_EINVAL, "kdfoptions is 3 bytes");

  good_spec(&s);
  s.trailing = 2;
  expect_spec_error(&s, FY_EINVAL, "2 unexpected bytes after the private section");

  good_spec(&s); /* "spec": 135 bytes + 1 byte of padding is proper */
  s.pad = 0;
  expect_spec_error(&s, FY_EINVAL,
                    "private section is 135 bytes, not a non-zero multiple of the cipher block size 8");
  good_spec(&s);
  s.pad = 9;
  expect_spec_error(&s, FY_EINVAL, "9 bytes after the comment");
  good_spec(&s);
  s.pad = 1;
  s.pad_fill = 0x07;
  expect_spec_error(&s, FY_EINVAL, "padding byte 1 is 0x07, expected 0x01");
  good_spec(&s);
  s.comment = "spec!!!!"; /* 139 bytes + 5 of padding */
  s.comment_len = 8;
  {
    struct buf bin;
    build_container(&s, &bin);
    bin.b[bin.n - 1] = 0; /* last padding byte 5 -> 0 */
    char *text = armor(bin.b, bin.n, 70);
    expect_text_error(text, FY_EINVAL, "padding byte 5 is 0x00, expected 0x05");
    free(text);
  }

  good_spec(&s);
  char long_comment[300];
  memset(long_comment, 'x', sizeof(long_comment));
  s.comment = long_comment;
  s.comment_len = 256;
  expect_spec_error(&s, FY_ELIMIT, "comment is 256 bytes; ferry accepts at most 255");
  good_spec(&s);
  s.comment = "a\0b";
  s.comment_len = 3;
  expect_spec_error(&s, FY_EINVAL, "comment contains a NUL byte");

  good_spec(&s); /* a length near 2^32 must not wrap */
  struct buf bin;
  build_container(&s, &bin);
  /* sk length field: magic 15 + 8 + 8 + 4 + 4 + 55 + 4 + 8 + 15 + 36 */
  size_t at = 15 + 8 + 8 + 4 + 4 + 55 + 4 + 8 + 15 + 36;
  assert_int_equal(bin.b[at + 3], 64);
  memset(bin.b + at, 0xff, 4);
  char *text = armor(bin.b, bin.n, 70);
  expect_text_error(text, FY_EINVAL, "secret key at offset 59 claims 4294967295 bytes");
  free(text);
}

static void test_public_blob_and_line(void **state) {
  (void)state;
  struct fy_openssh_key k;
  seq_key(&k, "");
  uint8_t blob[FY_OPENSSH_PUBLIC_BLOB_LEN];
  fy_openssh_public_blob(k.pk, blob);
  static const uint8_t head[] = {0,   0,   0,   11,  's', 's', 'h', '-', 'e', 'd',
                                 '2', '5', '5', '1', '9', 0,   0,   0,   32};
  assert_memory_equal(blob, head, sizeof(head));
  assert_memory_equal(blob + sizeof(head), k.pk, 32);

  struct fy_err err;
  char *line = NULL;
  assert_int_equal(fy_openssh_format_public(k.pk, "root@host", &line, &err), 0);
  assert_string_equal(
      line, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4 root@host");
  uint8_t pk[32];
  assert_int_equal(fy_openssh_decode_public(line, pk, &err), 0);
  assert_memory_equal(pk, k.pk, 32);
  free(line);
  assert_int_equal(fy_openssh_format_public(k.pk, NULL, &line, &err), 0);
  assert_string_equal(line,
                      "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4");
  free(line);
  char sentinel[] = "unchanged";
  line = sentinel;
  assert_int_equal(fy_openssh_format_public(k.pk, "two\nlines", &line, &err), FY_EINVAL);
  assert_contains(err.msg, "line break");
  assert_null(line);

  assert_int_equal(fy_openssh_decode_public("", pk, &err), FY_EINVAL);
  assert_contains(err.msg, "empty");
  assert_int_equal(fy_openssh_decode_public("ssh-rsa AAAA", pk, &err), FY_EUNSUPPORTED);
  assert_contains(err.msg, "'ssh-rsa'");
  assert_int_equal(fy_openssh_decode_public("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAOhB7", pk, &err),
                   FY_EINVAL);
}

static void test_null_err(void **state) {
  (void)state;
  struct fy_openssh_key k;
  assert_int_equal(fy_openssh_decode_private((const uint8_t *)"x", 1, &k, NULL), FY_EINVAL);
  assert_int_equal(fy_openssh_decode_private(NULL, 0, &k, NULL), FY_EINVAL);
  assert_int_equal(fy_openssh_decode_private(NULL, 5, &k, NULL), FY_EINVAL);
  uint8_t pk[32];
  assert_int_equal(fy_openssh_decode_public(NULL, pk, NULL), FY_EINVAL);
}

static int group_setup(void **state) {
  (void)state;
  struct fy_err err;
  return fy_crypto_init(&err) == 0 ? 0 : -1;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_encode_golden),
      cmocka_unit_test(test_decode_golden),
      cmocka_unit_test(test_decode_layouts),
      cmocka_unit_test(test_round_trip_paddings),
      cmocka_unit_test(test_encode_refuses_bad_keys),
      cmocka_unit_test(test_truncated_text),
      cmocka_unit_test(test_truncated_container),
      cmocka_unit_test(test_garbage),
      cmocka_unit_test(test_bad_base64_and_armor),
      cmocka_unit_test(test_check_int_mismatch),
      cmocka_unit_test(test_private_half_mismatch),
      cmocka_unit_test(test_unsupported),
      cmocka_unit_test(test_layout_errors),
      cmocka_unit_test(test_public_blob_and_line),
      cmocka_unit_test(test_null_err),
  };
  return cmocka_run_group_tests(tests, group_setup, NULL);
}
