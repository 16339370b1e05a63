#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "net/sendbuf.h"

static size_t gather(const struct fy_sendbuf *b, uint8_t *out, size_t cap) {
  struct iovec iov[64];
  size_t n = fy_sendbuf_unsent(b, iov, 64), len = 0;
  for (size_t i = 0; i < n; i++) {
    assert_true(len + iov[i].iov_len <= cap);
    memcpy(out + len, iov[i].iov_base, iov[i].iov_len);
    len += iov[i].iov_len;
  }
  return len;
}

static void unsent_is_what_was_appended(void **state) {
  (void)state;
  struct fy_sendbuf b;
  fy_sendbuf_init(&b);
  static uint8_t data[100000], out[100000];
  for (size_t i = 0; i < sizeof(data); i++)
    data[i] = (uint8_t)(i * 31);
  /* Small and large appends mixed: chunks of the minimum size and larger ones. */
  assert_int_equal(fy_sendbuf_append(&b, data, 10), 0);
  assert_int_equal(fy_sendbuf_append(&b, data + 10, 50000), 0);
  assert_int_equal(fy_sendbuf_append(&b, data + 50010, 49990), 0);
  assert_int_equal(gather(&b, out, sizeof(out)), sizeof(data));
  assert_memory_equal(out, data, sizeof(data));
  fy_sendbuf_mark_sent(&b, 12345);
  assert_int_equal(fy_sendbuf_unsent_len(&b), sizeof(data) - 12345);
  assert_int_equal(gather(&b, out, sizeof(out)), sizeof(data) - 12345);
  assert_memory_equal(out, data + 12345, sizeof(data) - 12345);
  fy_sendbuf_free(&b);
}

static void sent_bytes_stay_put_until_acked(void **state) {
  (void)state;
  struct fy_sendbuf b;
  fy_sendbuf_init(&b);
  uint8_t block[4000];
  memset(block, 0xab, sizeof(block));
  for (int i = 0; i < 10; i++)
    assert_int_equal(fy_sendbuf_append(&b, block, sizeof(block)), 0);
  struct iovec iov[8];
  assert_true(fy_sendbuf_unsent(&b, iov, 8) >= 1);
  const void *first = iov[0].iov_base;
  fy_sendbuf_mark_sent(&b, 40000);
  /* ngtcp2 may retransmit from `first` until it is acknowledged: appending
   * more must not move it. */
  for (int i = 0; i < 10; i++)
    assert_int_equal(fy_sendbuf_append(&b, block, sizeof(block)), 0);
  assert_memory_equal(first, block, 16);
  assert_int_equal(fy_sendbuf_unacked(&b), 80000);
  fy_sendbuf_ack(&b, 20000);
  assert_int_equal(fy_sendbuf_unacked(&b), 60000);
  /* Acknowledging beyond what was sent is clamped. */
  fy_sendbuf_ack(&b, 1000000);
  assert_int_equal(b.acked, 40000);
  /* Acks never go backwards. */
  fy_sendbuf_ack(&b, 100);
  assert_int_equal(b.acked, 40000);
  fy_sendbuf_mark_sent(&b, 40000);
  fy_sendbuf_ack(&b, 80000);
  assert_int_equal(fy_sendbuf_unacked(&b), 0);
  assert_int_equal(fy_sendbuf_unsent_len(&b), 0);
  fy_sendbuf_free(&b);
}

static void fully_acked_buffers_release_memory(void **state) {
  (void)state;
  struct fy_sendbuf b;
  fy_sendbuf_init(&b);
  uint8_t big[70000] = {0};
  for (int round = 0; round < 50; round++) {
    assert_int_equal(fy_sendbuf_append(&b, big, sizeof(big)), 0);
    fy_sendbuf_mark_sent(&b, sizeof(big));
    fy_sendbuf_ack(&b, b.sent);
  }
  /* Everything acknowledged: at most the chunk being filled is held. */
  size_t chunks = 0;
  struct iovec iov[4];
  chunks = fy_sendbuf_unsent(&b, iov, 4);
  assert_int_equal(chunks, 0);
  assert_true(b.head == NULL || b.head == b.tail);
  fy_sendbuf_free(&b);
}

/* A stream that carries one short call holds about that call, not a
 * bulk-sized buffer; a bulk stream's chunks grow to 16 KiB and no further
 * (few iovecs per packet), and a write larger than that gets its own. */
static void chunks_fit_small_calls_and_grow_for_bulk(void **state) {
  (void)state;
  struct fy_sendbuf b;
  fy_sendbuf_init(&b);
  uint8_t call[600] = {0};
  assert_int_equal(fy_sendbuf_append(&b, call, sizeof(call)), 0);
  assert_true(fy_sendbuf_allocated(&b) <= 1100);
  for (int i = 0; i < 200; i++)
    assert_int_equal(fy_sendbuf_append(&b, call, sizeof(call)), 0);
  size_t held = fy_sendbuf_allocated(&b), used = 201 * sizeof(call);
  assert_true(held >= used && held < used + 16384 + 256);
  struct iovec iov[64];
  size_t n = fy_sendbuf_unsent(&b, iov, 64);
  for (size_t i = 0; i < n; i++)
    assert_true(iov[i].iov_len <= 16384);
  assert_true(n <= 13); /* 1, 2, 4, 8 KiB, then 16 KiB chunks */
  static uint8_t big[100000];
  assert_int_equal(fy_sendbuf_append(&b, big, sizeof(big)), 0);
  n = fy_sendbuf_unsent(&b, iov, 64);
  assert_true(iov[n - 1].iov_len <= sizeof(big));
  assert_int_equal(fy_sendbuf_unsent_len(&b), used + sizeof(big));
  fy_sendbuf_free(&b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(unsent_is_what_was_appended),
      cmocka_unit_test(sent_bytes_stay_put_until_acked),
      cmocka_unit_test(fully_acked_buffers_release_memory),
      cmocka_unit_test(chunks_fit_small_calls_and_grow_for_bulk),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
