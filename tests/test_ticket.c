/* Enrollment tickets: the golden ticket of proto/ticket.md (made
 * independently in Python), round trips, and every refusal of the decoder:
 * prefix, base64, length, msgpack, and each field.
 *
 * Bad tickets are made here by packing a map field by field (some field
 * replaced, left out, doubled, or an unknown one added) and base64-encoding
 * it, so each test varies exactly one thing. */
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
#include "fleet/ticket.h"

#define assert_contains(haystack, needle)                                                                    \
  do {                                                                                                       \
    if (!strstr((haystack), (needle)))                                                                       \
      fail_msg("message \"%s\" does not contain \"%s\"", (haystack), (needle));                              \
  } while (0)

static const char GOLDEN_TICKET[] = "ferry-ticket1.hqFjxCAprLrhQbzK8LIuGpTTTQvHNh5SbQv-"
                                    "EsiXlLyTIpZt16FhkrZjb29yZC5leGFtcGxlLm5ldDo0NDMzslsyMDAxOm"
                                    "RiODo6MV06NDQzM6FzxCCgoaKjpKWmp6ipqqusra6vsLGys7S1tre4ubq7vL2-"
                                    "v6F0o2xhYqFsgqRyb2xlpWtpb3NrpHNpdGWmYmVybGluoW"
                                    "XPAAABm3wBBAA";
static const char GOLDEN_COORD[] = "29acbae141bccaf0b22e1a94d34d0bc7361e526d0bfe12c89794bc9322966dd7";
static const char GOLDEN_SECRET_HASH[] = "0e2692d0de974cf5f09efe1129748650ee57434b3922b2ac8492999ed64c4a16";
static const uint64_t GOLDEN_EXPIRES = 1767312000000; /* 2026-01-02T00:00:00Z */

static struct fy_ticket golden(void) {
  struct fy_ticket t;
  memset(&t, 0, sizeof(t));
  size_t n;
  assert_int_equal(sodium_hex2bin(t.coordinator.key, 32, GOLDEN_COORD, 64, NULL, &n, NULL), 0);
  strcpy(t.addrs[0], "coord.example.net:4433");
  strcpy(t.addrs[1], "[2001:db8::1]:4433");
  t.naddrs = 2;
  for (int i = 0; i < 32; i++)
    t.secret[i] = (uint8_t)(0xa0 + i);
  strcpy(t.tenant, "lab");
  assert_int_equal(fy_labels_parse("site=berlin,role=kiosk", &t.labels, NULL), 0);
  t.expires_at = GOLDEN_EXPIRES;
  return t;
}

static void test_golden(void **state) {
  (void)state;
  struct fy_ticket t = golden(), d;
  char text[FY_TICKET_TEXT_MAX + 1];
  struct fy_err err;
  assert_int_equal(fy_ticket_encode(&t, text, sizeof(text), &err), 0);
  assert_string_equal(text, GOLDEN_TICKET);
  assert_int_equal(fy_ticket_decode(GOLDEN_TICKET, &d, &err), 0);
  assert_memory_equal(d.coordinator.key, t.coordinator.key, 32);
  assert_int_equal(d.naddrs, 2);
  assert_string_equal(d.addrs[0], "coord.example.net:4433");
  assert_string_equal(d.addrs[1], "[2001:db8::1]:4433");
  assert_memory_equal(d.secret, t.secret, 32);
  assert_string_equal(d.tenant, "lab");
  char labels[FY_LABELS_TEXT_MAX];
  fy_labels_format(&d.labels, labels, sizeof(labels));
  assert_string_equal(labels, "role=kiosk,site=berlin");
  assert_int_equal(d.expires_at, GOLDEN_EXPIRES);

  uint8_t h[FY_TICKET_HASH_LEN];
  char hex[2 * FY_TICKET_HASH_LEN + 1];
  fy_ticket_secret_hash(d.secret, h);
  sodium_bin2hex(hex, sizeof(hex), h, sizeof(h));
  assert_string_equal(hex, GOLDEN_SECRET_HASH);
  sodium_memzero(&d, sizeof(d));
  sodium_memzero(&t, sizeof(t));
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
  snprintf(path, sizeof(path), "%.*s/../proto/ticket.md", (int)(slash - data_dir), data_dir);
  FY_AUTOFCLOSE FILE *f = fopen(path, "r");
  if (!f)
    fail_msg("cannot open %s", path);
  static char text[1 << 16];
  size_t n = fread(text, 1, sizeof(text) - 1, f);
  text[n] = '\0';
  assert_contains(text, GOLDEN_TICKET);
  assert_contains(text, GOLDEN_SECRET_HASH);
}

static void test_round_trip_white_space(void **state) {
  (void)state;
  struct fy_ticket t = golden(), d;
  t.naddrs = 8;
  for (int i = 0; i < 8; i++)
    snprintf(t.addrs[i], sizeof(t.addrs[i]), "10.0.0.%d:%d", i, 1 + i * 9000);
  t.labels.n = 0;
  t.expires_at = UINT64_MAX;
  char text[FY_TICKET_TEXT_MAX + 8];
  struct fy_err err;
  text[0] = ' ', text[1] = '\n';
  assert_int_equal(fy_ticket_encode(&t, text + 2, sizeof(text) - 4, &err), 0);
  memcpy(text + strlen(text), "\r\n", 3);
  assert_int_equal(fy_ticket_decode(text, &d, &err), 0);
  assert_int_equal(d.naddrs, 8);
  assert_string_equal(d.addrs[7], "10.0.0.7:63001");
  assert_int_equal(d.labels.n, 0);
  assert_int_equal(d.expires_at, UINT64_MAX);
}

static void test_encode_errors(void **state) {
  (void)state;
  char text[FY_TICKET_TEXT_MAX + 1];
  struct fy_err err;
  struct fy_ticket t = golden();
  t.naddrs = 0;
  assert_int_equal(fy_ticket_encode(&t, text, sizeof(text), &err), FY_EINVAL);
  assert_contains(err.msg, "ticket: 0 addresses, must be 1 to 8");
  t = golden();
  strcpy(t.addrs[1], "coord.example.net");
  assert_int_equal(fy_ticket_encode(&t, text, sizeof(text), &err), FY_EINVAL);
  assert_contains(err.msg, "ticket: address 2 \"coord.example.net\": no :port");
  t = golden();
  t.tenant[0] = '\0';
  assert_int_equal(fy_ticket_encode(&t, text, sizeof(text), &err), FY_EINVAL);
  assert_contains(err.msg, "ticket: tenant is 0 bytes");
  t = golden();
  assert_int_equal(fy_ticket_encode(&t, text, 100, &err), FY_ELIMIT);
  assert_contains(err.msg, "ticket: needs 230 bytes of buffer, have 100");
  /* Long addresses and many labels do not fit in 4096 characters. */
  t.naddrs = 8;
  for (int i = 0; i < 8; i++) {
    memset(t.addrs[i], 'h', 250);
    snprintf(t.addrs[i] + 250, 6, ":%d", 1000 + i);
  }
  for (int i = 0; t.labels.n < FY_LABELS_MAX; i++) {
    char k[FY_LABEL_KEY_MAX + 1];
    snprintf(k, sizeof(k), "%02d%s", i, "-a-long-label-key-to-fill-the-ticket-up-to-its-limit");
    assert_int_equal(fy_labels_set(&t.labels, k, "some-value", &err), 0);
  }
  assert_int_equal(fy_ticket_encode(&t, text, sizeof(text), &err), FY_ELIMIT);
  assert_contains(err.msg, "characters, at most 4096");
}

static void expect_text_error(const char *text, int code, const char *msg) {
  struct fy_ticket d;
  struct fy_err err;
  fy_err_clear(&err);
  memset(&d, 0x5a, sizeof(d));
  assert_int_equal(fy_ticket_decode(text, &d, &err), code);
  assert_int_equal(err.code, code);
  assert_contains(err.msg, msg);
  /* Nothing of a refused ticket (the secret least of all) is left behind. */
  static const uint8_t zero[sizeof(d)];
  assert_memory_equal(&d, zero, sizeof(d));
}

static void test_text_errors(void **state) {
  (void)state;
  expect_text_error("", FY_EINVAL, "ticket: not a ferry ticket: it must start with ferry-ticket1.");
  expect_text_error("ferry-ticket2.hqFj", FY_EINVAL, "not a ferry ticket");
  expect_text_error("FERRY-TICKET1.hqFj", FY_EINVAL, "not a ferry ticket");
  expect_text_error("  ferry-ticket1.  ", FY_EINVAL, "ticket: nothing after ferry-ticket1.");
  expect_text_error("ferry-ticket1.hqFj*CAp", FY_EINVAL, "ticket: bad base64 at character 18");
  expect_text_error("  ferry-ticket1.hqFj CAp", FY_EINVAL, "ticket: bad base64 at character 20");
  expect_text_error("ferry-ticket1.hqFj+CAp", FY_EINVAL, "bad base64 at character 18"); /* not URL-safe */
  expect_text_error("ferry-ticket1.kA==", FY_EINVAL, "bad base64 at character 16");     /* padding */
  expect_text_error("ferry-ticket1.h", FY_EINVAL, "ticket: bad base64: the text is cut short");
  expect_text_error("ferry-ticket1.kB", FY_EINVAL,
                    "ticket: bad base64: the text is cut short");                /* bits left */
  expect_text_error("ferry-ticket1.kA", FY_EINVAL, "ticket: not a msgpack map"); /* 0x90 */
  expect_text_error("ferry-ticket1.wQ", FY_EINVAL, "ticket: byte 0xc1 at offset 0 is not msgpack");

  /* Every cut of the golden ticket is refused (none is a shorter ticket). */
  char cut[sizeof(GOLDEN_TICKET)];
  for (size_t n = 0; n < sizeof(GOLDEN_TICKET) - 1; n++) {
    memcpy(cut, GOLDEN_TICKET, n);
    cut[n] = '\0';
    struct fy_ticket d;
    struct fy_err err;
    int rc = fy_ticket_decode(cut, &d, &err);
    assert_int_equal(rc, FY_EINVAL);
  }

  char *big = malloc(FY_TICKET_TEXT_MAX + 3);
  assert_non_null(big);
  memcpy(big, "ferry-ticket1.", 14);
  memset(big + 14, 'A', FY_TICKET_TEXT_MAX + 1 - 14);
  big[FY_TICKET_TEXT_MAX + 1] = '\0';
  expect_text_error(big, FY_ELIMIT, "ticket: 4097 characters, at most 4096");
  free(big);
}

/* ---- bad fields ------------------------------------------------------------- */

typedef void (*packfn)(msgpack_packer *pk);

struct variant {
  char omit, dup, bad; /* a key to leave out, to write twice, to write with `value` */
  packfn value;
  const char *extra; /* an unknown key to add */
};

static void pack_str(msgpack_packer *pk, const char *s) {
  msgpack_pack_str_with_body(pk, s, strlen(s));
}

static void pack_default(msgpack_packer *pk, char k) {
  static const uint8_t id[32] = {1};
  switch (k) {
  case 'c':
  case 's':
    msgpack_pack_bin_with_body(pk, id, 32);
    break;
  case 'a':
    msgpack_pack_array(pk, 1);
    pack_str(pk, "127.0.0.1:4433");
    break;
  case 't':
    pack_str(pk, "lab");
    break;
  case 'l':
    msgpack_pack_map(pk, 0);
    break;
  default:
    msgpack_pack_uint64(pk, GOLDEN_EXPIRES);
  }
}

static void make_text(const struct variant *v, char *out, size_t size) {
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  msgpack_packer pk;
  msgpack_packer_init(&pk, &b, fy_mp_buf_write);
  static const char keys[] = "castle";
  size_t n = 6 - (v->omit ? 1 : 0) + (v->dup ? 1 : 0) + (v->extra ? 1 : 0);
  msgpack_pack_map(&pk, n);
  for (int i = 0; keys[i]; i++) {
    char k = keys[i];
    if (k == v->omit)
      continue;
    for (int times = k == v->dup ? 2 : 1; times > 0; times--) {
      msgpack_pack_str_with_body(&pk, &k, 1);
      if (k == v->bad)
        v->value(&pk);
      else
        pack_default(&pk, k);
    }
  }
  if (v->extra) {
    pack_str(&pk, v->extra);
    msgpack_pack_nil(&pk);
  }
  assert_true(14 + sodium_base64_ENCODED_LEN(b.len, sodium_base64_VARIANT_URLSAFE_NO_PADDING) <= size);
  snprintf(out, size, "%s", FY_TICKET_PREFIX);
  sodium_bin2base64(out + 14, size - 14, b.data, b.len, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

static void expect_field_error(struct variant v, const char *msg) {
  char text[FY_TICKET_TEXT_MAX + 1];
  make_text(&v, text, sizeof(text));
  expect_text_error(text, FY_EINVAL, msg);
}

static void bin31(msgpack_packer *pk) {
  static const uint8_t b[31];
  msgpack_pack_bin_with_body(pk, b, sizeof(b));
}
static void str32(msgpack_packer *pk) {
  pack_str(pk, "0123456789abcdef0123456789abcdef");
}
static void no_addrs(msgpack_packer *pk) {
  msgpack_pack_array(pk, 0);
}
static void nine_addrs(msgpack_packer *pk) {
  msgpack_pack_array(pk, 9);
  for (int i = 0; i < 9; i++)
    pack_str(pk, "h:1");
}
static void addr_not_str(msgpack_packer *pk) {
  msgpack_pack_array(pk, 2);
  pack_str(pk, "h:1");
  msgpack_pack_uint8(pk, 1);
}
static void addr_str(msgpack_packer *pk) {
  pack_str(pk, "h:1");
}
static const char *bad_addr;
static void one_addr(msgpack_packer *pk) {
  msgpack_pack_array(pk, 1);
  pack_str(pk, bad_addr);
}
static void long_addr(msgpack_packer *pk) {
  char a[257];
  memset(a, 'h', 256);
  a[256] = '\0';
  snprintf(a + 250, sizeof(a) - 250, ":4433");
  a[255] = 'h'; /* 256 bytes with the port at 250 */
  msgpack_pack_array(pk, 1);
  pack_str(pk, a);
}
static void empty_str(msgpack_packer *pk) {
  pack_str(pk, "");
}
static void upper_tenant(msgpack_packer *pk) {
  pack_str(pk, "Lab");
}
static void long_tenant(msgpack_packer *pk) {
  pack_str(pk, "0123456789012345678901234567890123456789012345678901234567890123");
}
static void bad_labels(msgpack_packer *pk) {
  msgpack_pack_map(pk, 1);
  pack_str(pk, "site");
  pack_str(pk, "two words");
}
static void negative(msgpack_packer *pk) {
  msgpack_pack_int8(pk, -1);
}

static void test_field_errors(void **state) {
  (void)state;
  expect_field_error((struct variant){.bad = 'c', .value = bin31},
                     "ticket: c (coordinator) is not 32 bytes of bin");
  expect_field_error((struct variant){.bad = 'c', .value = str32},
                     "ticket: c (coordinator) is not 32 bytes of bin");
  expect_field_error((struct variant){.bad = 's', .value = bin31},
                     "ticket: s (secret) is not 32 bytes of bin");
  expect_field_error((struct variant){.bad = 'a', .value = no_addrs},
                     "ticket: a (addresses): 0 addresses, must be 1 to 8");
  expect_field_error((struct variant){.bad = 'a', .value = nine_addrs},
                     "ticket: a (addresses): 9 addresses, must be 1 to 8");
  expect_field_error((struct variant){.bad = 'a', .value = addr_str},
                     "ticket: a (addresses) is not an array");
  expect_field_error((struct variant){.bad = 'a', .value = addr_not_str},
                     "ticket: address 2 is not a string");
  expect_field_error((struct variant){.bad = 'a', .value = long_addr},
                     "ticket: address 1 is 256 bytes, must be 1 to 255");
  static const struct {
    const char *addr, *msg;
  } addrs[] = {
      {"", "address 1 is 0 bytes"},
      {"host", "address 1 \"host\": no :port"},
      {"host:", "the port is not a number from 1 to 65535"},
      {"host:0", "the port is not a number from 1 to 65535"},
      {"host:65536", "the port is not a number from 1 to 65535"},
      {"host:44x", "the port is not a number from 1 to 65535"},
      {":4433", "no host before the port"},
      {"host name:1", "white space or a non-ASCII byte"},
      {"::1:4433", "the host must be a name, an IPv4 address or an IPv6 address in brackets"},
      {"[::1:4433", "the host must be"},
      {"[]:4433", "the host must be"},
      {"[::1]]:4433", "the host must be"},
  };
  for (size_t i = 0; i < FY_ARRAY_LEN(addrs); i++) {
    bad_addr = addrs[i].addr;
    expect_field_error((struct variant){.bad = 'a', .value = one_addr}, addrs[i].msg);
  }
  expect_field_error((struct variant){.bad = 't', .value = empty_str},
                     "ticket: tenant is 0 bytes, must be 1 to 63");
  expect_field_error((struct variant){.bad = 't', .value = upper_tenant},
                     "ticket: tenant has 'L' at offset 0");
  expect_field_error((struct variant){.bad = 't', .value = long_tenant}, "ticket: t (tenant) is 64 bytes");
  expect_field_error((struct variant){.bad = 't', .value = bin31}, "ticket: t (tenant) is not a string");
  expect_field_error((struct variant){.bad = 'l', .value = bad_labels},
                     "ticket: labels: entry 0 \"site\": value has ' ' at offset 3");
  expect_field_error((struct variant){.bad = 'l', .value = no_addrs}, "ticket: labels: not a map");
  expect_field_error((struct variant){.bad = 'e', .value = negative},
                     "ticket: e (expiry) is not an unsigned integer");
  expect_field_error((struct variant){.omit = 'e'}, "ticket: missing key \"e\" (expiry)");
  expect_field_error((struct variant){.omit = 'c'}, "ticket: missing key \"c\" (coordinator)");
  expect_field_error((struct variant){.dup = 's'}, "ticket: key \"s\" appears twice");
  expect_field_error((struct variant){.extra = "x"}, "ticket: unknown key \"x\"");
  expect_field_error((struct variant){.extra = "coordinator"}, "ticket: unknown key \"coordinator\"");
}

static void test_secret_hash(void **state) {
  (void)state;
  uint8_t secret[32] = {0}, a[32], b[32];
  fy_ticket_secret_hash(secret, a);
  secret[31] = 1;
  fy_ticket_secret_hash(secret, b);
  assert_memory_not_equal(a, b, 32);
  /* Domain separated: not the plain BLAKE2b-256 of the secret. */
  crypto_generichash(b, 32, secret, 32, NULL, 0);
  fy_ticket_secret_hash(secret, a);
  assert_memory_not_equal(a, b, 32);
}

int main(void) {
  if (sodium_init() < 0)
    return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_golden),
      cmocka_unit_test(test_spec_vectors),
      cmocka_unit_test(test_round_trip_white_space),
      cmocka_unit_test(test_encode_errors),
      cmocka_unit_test(test_text_errors),
      cmocka_unit_test(test_field_errors),
      cmocka_unit_test(test_secret_hash),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
