/* Label sets and tenant names: parsing with its error positions, sorting,
 * text and msgpack round trips, unpack validation, selectors, set/get. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <msgpack.h>
#include <stdio.h>
#include <string.h>

#include "base/cleanup.h"
#include "fleet/labels.h"

#define assert_contains(haystack, needle)                                                                    \
  do {                                                                                                       \
    if (!strstr((haystack), (needle)))                                                                       \
      fail_msg("message \"%s\" does not contain \"%s\"", (haystack), (needle));                              \
  } while (0)

static void test_parse_sorts_and_formats(void **state) {
  (void)state;
  struct fy_labels l;
  struct fy_err err;
  assert_int_equal(fy_labels_parse("site=berlin,role/kiosk=true,a.b_c-d=X-1.2_3,empty=", &l, &err), 0);
  assert_int_equal(l.n, 4);
  assert_string_equal(l.v[0].key, "a.b_c-d");
  assert_string_equal(l.v[1].key, "empty");
  assert_string_equal(l.v[1].value, "");
  assert_string_equal(l.v[2].key, "role/kiosk");
  assert_string_equal(l.v[3].key, "site");
  char text[FY_LABELS_TEXT_MAX];
  fy_labels_format(&l, text, sizeof(text));
  assert_string_equal(text, "a.b_c-d=X-1.2_3,empty=,role/kiosk=true,site=berlin");
  assert_string_equal(fy_labels_get(&l, "site"), "berlin");
  assert_null(fy_labels_get(&l, "sit"));
  assert_null(fy_labels_get(&l, "sites"));

  assert_int_equal(fy_labels_parse("", &l, &err), 0);
  assert_int_equal(l.n, 0);
  fy_labels_format(&l, text, sizeof(text));
  assert_string_equal(text, "");

  /* Truncation keeps a NUL. */
  assert_int_equal(fy_labels_parse("abc=def", &l, &err), 0);
  char small[5];
  fy_labels_format(&l, small, sizeof(small));
  assert_string_equal(small, "abc=");
}

static void test_parse_full_set(void **state) {
  (void)state;
  char text[FY_LABELS_TEXT_MAX + 16];
  size_t o = 0;
  char key[FY_LABEL_KEY_MAX + 1], value[FY_LABEL_VALUE_MAX + 1];
  memset(value, 'V', FY_LABEL_VALUE_MAX);
  value[FY_LABEL_VALUE_MAX] = '\0';
  for (int i = 0; i < FY_LABELS_MAX; i++) {
    memset(key, 'k', FY_LABEL_KEY_MAX);
    key[FY_LABEL_KEY_MAX] = '\0';
    key[0] = (char)('a' + i % 26);
    key[1] = (char)('0' + i / 26);
    o += (size_t)snprintf(text + o, sizeof(text) - o, "%s%s=%s", i ? "," : "", key, value);
  }
  struct fy_labels l;
  struct fy_err err;
  assert_int_equal(fy_labels_parse(text, &l, &err), 0);
  assert_int_equal(l.n, FY_LABELS_MAX);
  char out[FY_LABELS_TEXT_MAX];
  fy_labels_format(&l, out, sizeof(out));
  assert_int_equal(strlen(out), strlen(text));
  struct fy_labels again;
  assert_int_equal(fy_labels_parse(out, &again, &err), 0);
  assert_int_equal(again.n, FY_LABELS_MAX);
  char twice[FY_LABELS_TEXT_MAX];
  fy_labels_format(&again, twice, sizeof(twice));
  assert_string_equal(out, twice);

  /* One more is too many. */
  snprintf(text + o, sizeof(text) - o, ",z9=1");
  assert_int_equal(fy_labels_parse(text, &l, &err), FY_ELIMIT);
  assert_contains(err.msg, "labels: pair 33 \"z9=1\"");
  assert_contains(err.msg, "more than 32 labels");
  assert_int_equal(l.n, 0);
}

static void test_parse_errors(void **state) {
  (void)state;
  struct {
    const char *text, *msg;
  } cases[] = {
      {"a=1,b", "labels: pair 2 \"b\" at character 4: no '=' between key and value"},
      {"a=1,,b=2", "labels: pair 2 \"\" at character 4: empty pair"},
      {"a=1,", "labels: pair 2 \"\" at character 4: empty pair"},
      {",a=1", "labels: pair 1 \"\" at character 0: empty pair"},
      {"=1", "labels: pair 1 \"=1\" at character 0: key is 0 bytes, must be 1 to 63"},
      {"a=1,Site=x",
       "labels: pair 2 \"Site=x\" at character 4: key has 'S' at offset 0 (allowed: [a-z0-9._/-])"},
      {"-a=1", "labels: pair 1 \"-a=1\" at character 0: key must start with [a-z0-9]"},
      {"a=b c", "labels: pair 1 \"a=b c\" at character 0: value has ' ' at offset 1"},
      {"a=b=c", "value has '=' at offset 1"},
      {"a=b/c", "value has '/' at offset 1 (allowed: [A-Za-z0-9._-])"},
      {"a=\xc3\xa9", "value has byte 0xc3 at offset 0"},
      {"b=1,a=2,b=3", "labels: pair 3 \"b=3\" at character 8: key appears twice"},
      {"a=0123456789012345678901234567890123456789012345678901234567890123",
       "value is 64 bytes, must be 0 to 63"},
      {"k123456789012345678901234567890123456789012345678901234567890123=1",
       "key is 64 bytes, must be 1 to 63"},
  };
  for (size_t i = 0; i < FY_ARRAY_LEN(cases); i++) {
    struct fy_labels l;
    struct fy_err err;
    fy_err_clear(&err);
    assert_int_equal(fy_labels_parse(cases[i].text, &l, &err), FY_EINVAL);
    assert_int_equal(err.code, FY_EINVAL);
    assert_contains(err.msg, cases[i].msg);
    assert_int_equal(l.n, 0);
  }
}

static int sink(void *data, const char *p, size_t n) {
  msgpack_sbuffer_write(data, p, n);
  return 0;
}

static void test_pack_unpack_round_trip(void **state) {
  (void)state;
  struct fy_labels l, back;
  struct fy_err err;
  assert_int_equal(fy_labels_parse("site=berlin,role=kiosk,empty=", &l, &err), 0);
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, sink);
  assert_int_equal(fy_labels_pack(&l, &pk), 0);
  /* The map is written in key order. */
  static const uint8_t want[] = {0x83, 0xa5, 'e',  'm', 'p', 't', 'y', 0xa0, 0xa4, 'r', 'o',
                                 'l',  'e',  0xa5, 'k', 'i', 'o', 's', 'k',  0xa4, 's', 'i',
                                 't',  'e',  0xa6, 'b', 'e', 'r', 'l', 'i',  'n'};
  assert_int_equal(sb.size, sizeof(want));
  assert_memory_equal(sb.data, want, sizeof(want));
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  assert_int_equal(msgpack_unpack_next(&u, sb.data, sb.size, NULL), MSGPACK_UNPACK_SUCCESS);
  assert_int_equal(fy_labels_unpack(&u.data, &back, &err), 0);
  char a[FY_LABELS_TEXT_MAX], b[FY_LABELS_TEXT_MAX];
  fy_labels_format(&l, a, sizeof(a));
  fy_labels_format(&back, b, sizeof(b));
  assert_string_equal(a, b);
  assert_int_equal(back.n, 3);
  msgpack_unpacked_destroy(&u);
  msgpack_sbuffer_destroy(&sb);
}

/* Unpacks the msgpack given in hex-free byte form and expects an error. */
static void expect_unpack_error(const uint8_t *p, size_t n, int code, const char *msg) {
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  assert_int_equal(msgpack_unpack_next(&u, (const char *)p, n, NULL), MSGPACK_UNPACK_SUCCESS);
  struct fy_labels l;
  struct fy_err err;
  fy_err_clear(&err);
  assert_int_equal(fy_labels_unpack(&u.data, &l, &err), code);
  assert_int_equal(l.n, 0);
  msgpack_unpacked_destroy(&u);
  assert_contains(err.msg, msg);
}

static void test_unpack_errors(void **state) {
  (void)state;
  static const uint8_t array[] = {0x90};
  expect_unpack_error(array, sizeof(array), FY_EINVAL, "labels: not a map");
  static const uint8_t key_int[] = {0x81, 0x01, 0xa1, 'x'};
  expect_unpack_error(key_int, sizeof(key_int), FY_EINVAL, "labels: entry 0: key is not a string");
  static const uint8_t value_bin[] = {0x81, 0xa1, 'a', 0xc4, 0x00};
  expect_unpack_error(value_bin, sizeof(value_bin), FY_EINVAL,
                      "labels: entry 0 \"a\": value is not a string");
  static const uint8_t bad_key[] = {0x82, 0xa1, 'a', 0xa0, 0xa1, 'A', 0xa0};
  expect_unpack_error(bad_key, sizeof(bad_key), FY_EINVAL, "labels: entry 1 \"A\": key has 'A' at offset 0");
  static const uint8_t nul_key[] = {0x81, 0xa2, 'a', 0x00, 0xa0};
  expect_unpack_error(nul_key, sizeof(nul_key), FY_EINVAL, "key has byte 0x00 at offset 1");
  static const uint8_t dup[] = {0x82, 0xa1, 'a', 0xa1, '1', 0xa1, 'a', 0xa1, '2'};
  expect_unpack_error(dup, sizeof(dup), FY_EINVAL, "labels: entry 1 \"a\": key appears twice");
  uint8_t many[3 + 33 * 4];
  many[0] = 0xde, many[1] = 0, many[2] = 33;
  for (int i = 0; i < 33; i++) {
    many[3 + 4 * i] = 0xa2;
    many[4 + 4 * i] = (uint8_t)('a' + i / 10);
    many[5 + 4 * i] = (uint8_t)('0' + i % 10);
    many[6 + 4 * i] = 0xa0;
  }
  expect_unpack_error(many, sizeof(many), FY_ELIMIT, "labels: 33 entries, at most 32");
}

static void test_match(void **state) {
  (void)state;
  struct fy_labels l, sel;
  assert_int_equal(fy_labels_parse("site=berlin,role=kiosk,tier=1", &l, NULL), 0);
  assert_int_equal(fy_labels_parse("", &sel, NULL), 0);
  assert_true(fy_labels_match(&l, &sel));
  assert_int_equal(fy_labels_parse("role=kiosk", &sel, NULL), 0);
  assert_true(fy_labels_match(&l, &sel));
  assert_int_equal(fy_labels_parse("tier=1,site=berlin", &sel, NULL), 0);
  assert_true(fy_labels_match(&l, &sel));
  assert_int_equal(fy_labels_parse("site=paris", &sel, NULL), 0);
  assert_false(fy_labels_match(&l, &sel));
  assert_int_equal(fy_labels_parse("site=berlin,zone=a", &sel, NULL), 0);
  assert_false(fy_labels_match(&l, &sel));
  struct fy_labels none;
  assert_int_equal(fy_labels_parse("", &none, NULL), 0);
  assert_false(fy_labels_match(&none, &sel));
  assert_true(fy_labels_match(&none, &none));
}

static void test_set(void **state) {
  (void)state;
  struct fy_labels l;
  struct fy_err err;
  l.n = 0;
  assert_int_equal(fy_labels_set(&l, "b", "2", &err), 0);
  assert_int_equal(fy_labels_set(&l, "a", "1", &err), 0);
  assert_int_equal(fy_labels_set(&l, "b", "3", &err), 0);
  char text[64];
  fy_labels_format(&l, text, sizeof(text));
  assert_string_equal(text, "a=1,b=3");
  assert_int_equal(fy_labels_set(&l, "B", "1", &err), FY_EINVAL);
  assert_contains(err.msg, "label \"B\": key has 'B' at offset 0");
  assert_int_equal(fy_labels_set(&l, "c", "a,b", &err), FY_EINVAL);
  assert_contains(err.msg, "label \"c\": value has ',' at offset 1");
  assert_int_equal(l.n, 2);
  for (int i = 0; l.n < FY_LABELS_MAX; i++) {
    char k[16];
    snprintf(k, sizeof(k), "k%d", i);
    assert_int_equal(fy_labels_set(&l, k, "", &err), 0);
  }
  assert_int_equal(fy_labels_set(&l, "zzz", "1", &err), FY_ELIMIT);
  assert_contains(err.msg, "at most 32 labels");
  assert_int_equal(fy_labels_set(&l, "a", "replaced", &err), 0); /* replacing still works when full */
  for (size_t i = 1; i < l.n; i++)
    assert_true(strcmp(l.v[i - 1].key, l.v[i].key) < 0);
}

static void test_tenant_check(void **state) {
  (void)state;
  struct fy_err err;
  assert_int_equal(fy_tenant_check("lab", &err), 0);
  assert_int_equal(fy_tenant_check("0a.b_c-d", &err), 0);
  assert_int_equal(fy_tenant_check("", &err), FY_EINVAL);
  assert_contains(err.msg, "tenant is 0 bytes, must be 1 to 63");
  assert_int_equal(fy_tenant_check(".lab", &err), FY_EINVAL);
  assert_contains(err.msg, "tenant must start with [a-z0-9]");
  assert_int_equal(fy_tenant_check("lab/x", &err), FY_EINVAL);
  assert_contains(err.msg, "tenant has '/' at offset 3");
  assert_int_equal(fy_tenant_check("Lab", &err), FY_EINVAL);
  char t[FY_TENANT_MAX + 2];
  memset(t, 'a', sizeof(t));
  t[FY_TENANT_MAX] = '\0';
  assert_int_equal(fy_tenant_check(t, &err), 0);
  t[FY_TENANT_MAX] = 'a';
  t[FY_TENANT_MAX + 1] = '\0';
  assert_int_equal(fy_tenant_check(t, &err), FY_EINVAL);
  assert_contains(err.msg, "tenant is 64 bytes");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse_sorts_and_formats),
      cmocka_unit_test(test_parse_full_set),
      cmocka_unit_test(test_parse_errors),
      cmocka_unit_test(test_pack_unpack_round_trip),
      cmocka_unit_test(test_unpack_errors),
      cmocka_unit_test(test_match),
      cmocka_unit_test(test_set),
      cmocka_unit_test(test_tenant_check),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
