/* Growable byte buffer: append, exact reserve, consume, free, overflow. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "base/buf.h"

static void test_empty(void **state) {
  (void)state;
  struct fy_buf b = FY_BUF_INIT;
  assert_null(b.data);
  assert_int_equal(b.len, 0);
  assert_int_equal(b.cap, 0);
  struct fy_err err;
  assert_int_equal(fy_buf_append(&b, NULL, 0, &err), 0);
  assert_null(b.data);
  fy_buf_consume(&b, 10);
  assert_int_equal(b.len, 0);
  fy_buf_free(&b);
  fy_buf_free(&b);
  assert_null(b.data);
}

static void test_append_grows_and_keeps_bytes(void **state) {
  (void)state;
  struct fy_buf b = FY_BUF_INIT;
  struct fy_err err;
  uint8_t want[10000];
  for (size_t i = 0; i < sizeof(want); i++)
    want[i] = (uint8_t)(i * 7);
  size_t grows = 0, last_cap = 0;
  for (size_t i = 0; i < sizeof(want); i += 100) {
    assert_int_equal(fy_buf_append(&b, want + i, 100, &err), 0);
    assert_true(b.cap >= b.len);
    if (b.cap != last_cap)
      grows++;
    last_cap = b.cap;
  }
  assert_int_equal(b.len, sizeof(want));
  assert_memory_equal(b.data, want, sizeof(want));
  /* Geometric growth: 64 -> 16384 is 9 steps, not one per append. */
  assert_true(grows <= 10);
  fy_buf_free(&b);
  assert_null(b.data);
  assert_int_equal(b.len, 0);
  assert_int_equal(b.cap, 0);
}

static void test_reserve_is_exact(void **state) {
  (void)state;
  struct fy_buf b = FY_BUF_INIT;
  struct fy_err err;
  assert_int_equal(fy_buf_reserve(&b, 1000, &err), 0);
  assert_int_equal(b.cap, 1000);
  assert_int_equal(b.len, 0);
  /* Room already there: nothing moves. */
  uint8_t *before = b.data;
  assert_int_equal(fy_buf_reserve(&b, 999, &err), 0);
  assert_ptr_equal(b.data, before);
  assert_int_equal(fy_buf_append(&b, "abc", 3, &err), 0);
  assert_int_equal(fy_buf_reserve(&b, 1000, &err), 0);
  assert_int_equal(b.cap, 1003);
  assert_memory_equal(b.data, "abc", 3);
  fy_buf_free(&b);
}

static void test_consume(void **state) {
  (void)state;
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  struct fy_err err;
  assert_int_equal(fy_buf_append(&b, "hello world", 11, &err), 0);
  size_t cap = b.cap;
  fy_buf_consume(&b, 6);
  assert_int_equal(b.len, 5);
  assert_memory_equal(b.data, "world", 5);
  fy_buf_consume(&b, 0);
  assert_int_equal(b.len, 5);
  fy_buf_consume(&b, 99);
  assert_int_equal(b.len, 0);
  assert_int_equal(b.cap, cap); /* the allocation stays for reuse */
  assert_int_equal(fy_buf_append(&b, "x", 1, &err), 0);
  assert_memory_equal(b.data, "x", 1);
}

static void test_overflow_leaves_buffer_alone(void **state) {
  (void)state;
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  struct fy_err err;
  assert_int_equal(fy_buf_append(&b, "abcd", 4, &err), 0);
  size_t cap = b.cap;
  assert_int_equal(fy_buf_reserve(&b, SIZE_MAX - 1, &err), FY_ELIMIT);
  assert_int_equal(err.code, FY_ELIMIT);
  assert_non_null(strstr(err.msg, "cannot grow"));
  assert_int_equal(fy_buf_append(&b, "x", SIZE_MAX - 2, &err), FY_ELIMIT);
  assert_int_equal(b.len, 4);
  assert_int_equal(b.cap, cap);
  assert_memory_equal(b.data, "abcd", 4);
  assert_int_equal(fy_buf_reserve(&b, SIZE_MAX - 1, NULL), FY_ELIMIT);
}

static void test_out_of_memory(void **state) {
  (void)state;
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  struct fy_err err;
  /* No overflow, but no machine has this much: realloc fails cleanly. Skipped
   * under ASan, whose allocator aborts on such a request instead. */
#if defined(__SANITIZE_ADDRESS__)
  skip();
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
  skip();
#endif
#endif
  assert_int_equal(fy_buf_reserve(&b, SIZE_MAX / 2, &err), FY_ENOMEM);
  assert_non_null(strstr(err.msg, "out of memory"));
  assert_null(b.data);
  assert_int_equal(b.cap, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_empty),
      cmocka_unit_test(test_append_grows_and_keeps_bytes),
      cmocka_unit_test(test_reserve_is_exact),
      cmocka_unit_test(test_consume),
      cmocka_unit_test(test_overflow_leaves_buffer_alone),
      cmocka_unit_test(test_out_of_memory),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
