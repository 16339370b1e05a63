/* Semantic versions: parsing (every error with its message), the spec's
 * precedence chain, build metadata and the "v" prefix. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "base/cleanup.h"
#include "fleet/semver.h"

#define assert_contains(haystack, needle)                                                                    \
  do {                                                                                                       \
    if (!strstr((haystack), (needle)))                                                                       \
      fail_msg("message \"%s\" does not contain \"%s\"", (haystack), (needle));                              \
  } while (0)

static struct fy_semver parse_ok(const char *text) {
  struct fy_semver v;
  struct fy_err err = {0};
  if (fy_semver_parse(text, &v, &err) != 0)
    fail_msg("%s: %s", text, err.msg);
  return v;
}

static int cmp(const char *a, const char *b) {
  struct fy_semver x = parse_ok(a), y = parse_ok(b);
  return fy_semver_cmp(&x, &y);
}

static void test_parse(void **state) {
  (void)state;
  struct fy_semver v = parse_ok("1.2.3");
  assert_int_equal(v.major, 1);
  assert_int_equal(v.minor, 2);
  assert_int_equal(v.patch, 3);
  assert_string_equal(v.pre, "");
  assert_string_equal(v.build, "");

  v = parse_ok("0.0.0-alpha.1.x-y.0+build.007.sha-5114f85");
  assert_string_equal(v.pre, "alpha.1.x-y.0");
  assert_string_equal(v.build, "build.007.sha-5114f85"); /* leading zeros are fine in build metadata */

  v = parse_ok("18446744073709551615.18446744073709551615.18446744073709551615-18446744073709551615");
  assert_true(v.major == UINT64_MAX && v.minor == UINT64_MAX && v.patch == UINT64_MAX);

  v = parse_ok("1.0.0+only.build");
  assert_string_equal(v.pre, "");
  assert_string_equal(v.build, "only.build");
  v = parse_ok("1.0.0--"); /* "-" is an identifier character */
  assert_string_equal(v.pre, "-");
}

static void test_v_prefix(void **state) {
  (void)state;
  struct fy_semver v = parse_ok("v1.2.3-rc.1");
  assert_int_equal(v.major, 1);
  assert_string_equal(v.pre, "rc.1");
  assert_int_equal(cmp("v1.2.3", "1.2.3"), 0);
  char text[FY_SEMVER_TEXT_MAX + 1];
  fy_semver_format(&v, text, sizeof(text));
  assert_string_equal(text, "1.2.3-rc.1"); /* never written back */
}

static void test_format(void **state) {
  (void)state;
  const char *const texts[] = {"0.0.0", "1.2.3-alpha.1", "1.2.3+b.1", "10.20.30-rc.1+build.5"};
  for (size_t i = 0; i < FY_ARRAY_LEN(texts); i++) {
    struct fy_semver v = parse_ok(texts[i]);
    char text[FY_SEMVER_TEXT_MAX + 1];
    fy_semver_format(&v, text, sizeof(text));
    assert_string_equal(text, texts[i]);
  }
  /* The longest text fits FY_SEMVER_TEXT_MAX. */
  char longest[FY_SEMVER_TEXT_MAX + 1], out[FY_SEMVER_TEXT_MAX + 1];
  int n = snprintf(longest, sizeof(longest), "v%s.%s.%s-", "18446744073709551615", "18446744073709551615",
                   "18446744073709551615");
  memset(longest + n, 'a', FY_SEMVER_PART_MAX);
  n += FY_SEMVER_PART_MAX;
  longest[n++] = '+';
  memset(longest + n, 'b', FY_SEMVER_PART_MAX);
  n += FY_SEMVER_PART_MAX;
  longest[n] = '\0';
  assert_int_equal(n, FY_SEMVER_TEXT_MAX);
  struct fy_semver v = parse_ok(longest);
  fy_semver_format(&v, out, sizeof(out));
  assert_string_equal(out, longest + 1);
  /* Truncated, still terminated. */
  fy_semver_format(&v, out, 4);
  assert_string_equal(out, "184");
}

/* semver.org §11, example chain. */
static void test_spec_precedence(void **state) {
  (void)state;
  const char *const chain[] = {"1.0.0-alpha",  "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
                               "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1",       "1.0.0"};
  for (size_t i = 0; i < FY_ARRAY_LEN(chain); i++)
    for (size_t j = 0; j < FY_ARRAY_LEN(chain); j++) {
      int want = i < j ? -1 : i > j ? 1 : 0;
      if (cmp(chain[i], chain[j]) != want)
        fail_msg("cmp(%s, %s) = %d, want %d", chain[i], chain[j], cmp(chain[i], chain[j]), want);
    }
  assert_int_equal(cmp("1.0.0", "2.0.0"), -1);
  assert_int_equal(cmp("2.0.0", "2.1.0"), -1);
  assert_int_equal(cmp("2.1.0", "2.1.1"), -1);
  assert_int_equal(cmp("1.10.0", "1.9.0"), 1); /* numbers, not text */
  assert_int_equal(cmp("1.0.0-2", "1.0.0-10"), -1);
  assert_int_equal(cmp("1.0.0-a", "1.0.0-1"), 1);  /* numeric below alphanumeric */
  assert_int_equal(cmp("1.0.0-B", "1.0.0-a"), -1); /* ASCII order */
  assert_int_equal(cmp("1.0.0-alpha", "1.0.0-alpha0"), -1);
  assert_int_equal(cmp("1.0.0-1a", "1.0.0-1"), 1); /* "1a" is alphanumeric */
  assert_int_equal(cmp("18446744073709551615.0.0", "18446744073709551614.0.0"), 1);
}

static void test_build_metadata_ignored(void **state) {
  (void)state;
  assert_int_equal(cmp("1.0.0+a", "1.0.0+b"), 0);
  assert_int_equal(cmp("1.0.0+a", "1.0.0"), 0);
  assert_int_equal(cmp("1.0.0-rc.1+x", "1.0.0-rc.1"), 0);
  assert_int_equal(cmp("1.0.0-rc.1+x", "1.0.0+x"), -1);
}

static void expect_error(const char *text, const char *msg) {
  struct fy_semver v;
  struct fy_err err;
  fy_err_clear(&err);
  memset(&v, 0x55, sizeof(v));
  int rc = fy_semver_parse(text, &v, &err);
  if (rc != FY_EINVAL)
    fail_msg("%s: parsed (rc %d)", text, rc);
  assert_int_equal(err.code, FY_EINVAL);
  assert_contains(err.msg, msg);
  assert_int_equal(v.major, 0); /* out is zeroed on failure */
  assert_string_equal(v.pre, "");
}

static void test_parse_errors(void **state) {
  (void)state;
  expect_error("", "version \"\": empty");
  expect_error("v", "major at offset 1: expected a digit, found the end");
  expect_error("x1.2.3", "major at offset 0: expected a digit, found 'x'");
  expect_error("V1.2.3", "major at offset 0: expected a digit, found 'V'");
  expect_error("vv1.2.3", "major at offset 1: expected a digit, found 'v'");
  expect_error(" 1.2.3", "major at offset 0: expected a digit, found ' '");
  expect_error("1", "expected '.' after major at offset 1, found the end");
  expect_error("1.2", "expected '.' after minor at offset 3, found the end");
  expect_error("1,2.3", "expected '.' after major at offset 1, found ','");
  expect_error("1.2.", "patch at offset 4: expected a digit, found the end");
  expect_error("1..3", "minor at offset 2: expected a digit, found '.'");
  expect_error("1.2.-3", "patch at offset 4: expected a digit, found '-'");
  expect_error("01.2.3", "major at offset 0 has a leading zero");
  expect_error("1.02.3", "minor at offset 2 has a leading zero");
  expect_error("1.2.00", "patch at offset 4 has a leading zero");
  expect_error("18446744073709551616.0.0", "major at offset 0 does not fit in 64 bits");
  expect_error("1.99999999999999999999.0", "minor at offset 2 does not fit in 64 bits");
  expect_error("1.2.3.4", "'.' at offset 5 after the patch number (expected '-', '+' or the end)");
  expect_error("1.2.3 ", "' ' at offset 5 after the patch number");
  expect_error("1.2.3\x01", "byte 0x01 at offset 5 after the patch number");
  expect_error("1.2.3-", "empty prerelease identifier at offset 6");
  expect_error("1.2.3-a..b", "empty prerelease identifier at offset 8");
  expect_error("1.2.3-a.", "empty prerelease identifier at offset 8");
  expect_error("1.2.3-.a", "empty prerelease identifier at offset 6");
  expect_error("1.2.3-+b", "empty prerelease identifier at offset 6");
  expect_error("1.2.3-a_b", "'_' at offset 7 is not allowed in prerelease (allowed: [0-9A-Za-z-] and '.')");
  expect_error("1.2.3-a\xc3\xa9", "byte 0xc3 at offset 7 is not allowed in prerelease");
  expect_error("1.2.3-01", "prerelease identifier \"01\" at offset 6 has a leading zero");
  expect_error("1.2.3-rc.00", "prerelease identifier \"00\" at offset 9 has a leading zero");
  expect_error("1.2.3-18446744073709551616", "prerelease identifier at offset 6 does not fit in 64 bits");
  expect_error("1.2.3+", "empty build identifier at offset 6");
  expect_error("1.2.3+a..b", "empty build identifier at offset 8");
  expect_error("1.2.3+a+b", "'+' at offset 7 is not allowed in build");
  expect_error("1.2.3+a b", "' ' at offset 7 is not allowed in build");
  expect_error("1.2.3-rc+a/b", "'/' at offset 10 is not allowed in build");

  char big[FY_SEMVER_TEXT_MAX + 16];
  memcpy(big, "1.2.3-", 6);
  memset(big + 6, 'a', FY_SEMVER_PART_MAX + 1);
  big[6 + FY_SEMVER_PART_MAX + 1] = '\0';
  expect_error(big, "prerelease at offset 6 is 128 bytes, at most 127");
  big[5] = '+';
  expect_error(big, "build at offset 6 is 128 bytes, at most 127");
  /* The quoted text is cut short and cannot carry control bytes. */
  expect_error(big, "version \"1.2.3+aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\": ");
  expect_error("1.2\n", "version \"1.2?\": expected '.' after minor at offset 3, found byte 0x0a");

  struct fy_semver v;
  assert_int_equal(fy_semver_parse(NULL, &v, NULL), FY_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse),
      cmocka_unit_test(test_v_prefix),
      cmocka_unit_test(test_format),
      cmocka_unit_test(test_spec_precedence),
      cmocka_unit_test(test_build_metadata_ignored),
      cmocka_unit_test(test_parse_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
