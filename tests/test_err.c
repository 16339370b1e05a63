#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "base/err.h"

static void set_returns_code_and_formats(void **state) {
  (void)state;
  struct fy_err err = {0};
  assert_int_equal(fy_err_set(&err, FY_EINVAL, "field %s at %d", "len", 7), FY_EINVAL);
  assert_int_equal(err.code, FY_EINVAL);
  assert_string_equal(err.msg, "field len at 7");
}

static void null_err_is_allowed(void **state) {
  (void)state;
  assert_int_equal(fy_err_set(NULL, FY_EIO, "x"), FY_EIO);
  assert_int_equal(fy_err_errno(NULL, ENOENT, "x"), FY_ENOENT);
  assert_int_equal(fy_err_prefix(NULL, "x"), 0);
}

static void errno_maps_and_appends_strerror(void **state) {
  (void)state;
  struct fy_err err = {0};
  assert_int_equal(fy_err_errno(&err, ENOENT, "open %s", "/x"), FY_ENOENT);
  assert_string_equal(err.msg, "open /x: No such file or directory");
  assert_int_equal(fy_err_errno(&err, EACCES, "y"), FY_EPERM);
  assert_int_equal(fy_err_errno(&err, EEXIST, "y"), FY_EEXIST);
  assert_int_equal(fy_err_errno(&err, EPIPE, "y"), FY_EIO);
}

static void prefix_keeps_code(void **state) {
  (void)state;
  struct fy_err err = {0};
  fy_err_set(&err, FY_EPERM, "mode 0644");
  assert_int_equal(fy_err_prefix(&err, "key file %s", "/k"), FY_EPERM);
  assert_string_equal(err.msg, "key file /k: mode 0644");
}

static void long_messages_truncate_safely(void **state) {
  (void)state;
  struct fy_err err = {0};
  char big[2 * FY_ERR_MSG_MAX];
  memset(big, 'a', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  fy_err_set(&err, FY_EINVAL, "%s", big);
  assert_int_equal(strlen(err.msg), FY_ERR_MSG_MAX - 1);
  fy_err_prefix(&err, "%s", big);
  assert_int_equal(strlen(err.msg), FY_ERR_MSG_MAX - 1);
  fy_err_errno(&err, ENOENT, "%s", big);
  assert_int_equal(strlen(err.msg), FY_ERR_MSG_MAX - 1);
}

static void every_code_has_a_name(void **state) {
  (void)state;
  for (int c = FY_OK; c >= FY_ENOTBUILT; c--)
    assert_string_not_equal(fy_strerror(c), "unknown error");
  assert_string_equal(fy_strerror(-999), "unknown error");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(set_returns_code_and_formats),    cmocka_unit_test(null_err_is_allowed),
      cmocka_unit_test(errno_maps_and_appends_strerror), cmocka_unit_test(prefix_keeps_code),
      cmocka_unit_test(long_messages_truncate_safely),   cmocka_unit_test(every_code_has_a_name),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
