/* Reading msgpack maps: bounds first, then typed getters that refuse the
 * wrong type, an over-long string or one holding a NUL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "base/buf.h"
#include "base/cleanup.h"
#include "base/mpmap.h"

static void test_getters(void **state) {
  (void)state;
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  msgpack_packer pk;
  msgpack_packer_init(&pk, &b, fy_mp_buf_write);
  msgpack_pack_map(&pk, 5);
  fy_mp_pack_kv_str(&pk, "name", "kiosk");
  fy_mp_pack_kv_u64(&pk, "n", 42);
  uint8_t id[4] = {1, 2, 3, 4};
  fy_mp_pack_kv_bin(&pk, "id", id, 4);
  fy_mp_pack_kv_bool(&pk, "on", true);
  fy_mp_pack_str(&pk, "nul");
  msgpack_pack_str_with_body(&pk, "a\0b", 3);
  struct fy_mpmap m;
  assert_int_equal(fy_mpmap_decode(&m, b.data, b.len, 4, 64, "test", NULL), 0);
  char s[8];
  uint64_t n;
  uint8_t got[4];
  bool on;
  assert_true(fy_mp_str(m.map, "name", s, sizeof(s)));
  assert_string_equal(s, "kiosk");
  assert_false(fy_mp_str(m.map, "name", s, 5)); /* does not fit with its NUL */
  assert_string_equal(s, "");
  assert_false(fy_mp_str(m.map, "nul", s, sizeof(s)));
  assert_false(fy_mp_str(m.map, "n", s, sizeof(s))); /* wrong type */
  assert_true(fy_mp_u64(m.map, "n", &n));
  assert_int_equal(n, 42);
  assert_false(fy_mp_u64(m.map, "missing", &n));
  assert_int_equal(n, 0);
  assert_true(fy_mp_bin(m.map, "id", got, 4));
  assert_memory_equal(got, id, 4);
  assert_false(fy_mp_bin(m.map, "id", got, 3));
  assert_true(fy_mp_bool(m.map, "on", &on));
  assert_true(on);
  assert_null(fy_mp_get(m.map, "nam"));
  fy_mpmap_free(&m);
}

static void test_refuses_what_is_not_one_bounded_map(void **state) {
  (void)state;
  struct fy_mpmap m;
  struct fy_err err = {0};
  const uint8_t array[] = {0x91, 0x01};
  assert_int_equal(fy_mpmap_decode(&m, array, sizeof(array), 4, 64, "request", &err), FY_EINVAL);
  assert_non_null(strstr(err.msg, "request: not a msgpack map"));
  /* a map header that claims 2^32-1 entries never reaches msgpack-c */
  const uint8_t huge[] = {0xdf, 0xff, 0xff, 0xff, 0xff};
  assert_int_equal(fy_mpmap_decode(&m, huge, sizeof(huge), 4, 64, "request", &err), FY_EINVAL);
  assert_int_equal(fy_mpmap_decode(&m, NULL, 0, 4, 64, "request", &err), FY_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_getters),
      cmocka_unit_test(test_refuses_what_is_not_one_bounded_map),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
