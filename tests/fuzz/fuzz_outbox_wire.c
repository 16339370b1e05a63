/* libFuzzer target for the outbox.push message decoders (src/outbox/wire.h:
 * bytes from any peer's RPC call). Every input goes to all three decoders,
 * fy_outbox_wire_decode_topic, _decode_record and _decode_ack. Checks,
 * besides memory safety:
 * - a failure returns a negative code and sets err to it, with a message;
 * - a decoded topic is 1..FY_OUTBOX_TOPIC_MAX bytes without a NUL inside, and
 *   a decoded record has seq >= 1 and prev_seq < seq;
 * - what decodes encodes again, and that encoding decodes to the same fields;
 * - the encoding is canonical: encoding the second decode gives the same
 *   bytes, and it is never longer than the input. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "outbox/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_error(int rc, const struct fy_err *err) {
  if (rc >= 0 || err->code != rc || err->msg[0] == '\0')
    abort();
}

static bool same_bytes(const void *a, size_t alen, const void *b, size_t blen) {
  return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

static bool same_record(const struct fy_outbox_wire_record *a, const struct fy_outbox_wire_record *b) {
  return a->seq == b->seq && a->prev_seq == b->prev_seq && memcmp(a->id, b->id, FY_MSGID_LEN) == 0 &&
         same_bytes(a->payload, a->payload_len, b->payload, b->payload_len);
}

static void check_topic(const uint8_t *data, size_t size) {
  char topic[FY_OUTBOX_TOPIC_MAX + 1];
  struct fy_err err;
  fy_err_clear(&err);
  int rc = fy_outbox_wire_decode_topic(data, size, topic, &err);
  if (rc != 0) {
    check_error(rc, &err);
    return;
  }
  size_t n = strnlen(topic, sizeof(topic));
  if (n == 0 || n > FY_OUTBOX_TOPIC_MAX)
    abort();
  struct fy_buf once = FY_BUF_INIT, twice = FY_BUF_INIT;
  char again[FY_OUTBOX_TOPIC_MAX + 1];
  if (fy_outbox_wire_encode_topic(&once, topic, &err) != 0 || once.len > size)
    abort();
  if (fy_outbox_wire_decode_topic(once.data, once.len, again, &err) != 0 || strcmp(topic, again) != 0)
    abort();
  if (fy_outbox_wire_encode_topic(&twice, again, &err) != 0 ||
      !same_bytes(once.data, once.len, twice.data, twice.len))
    abort();
  fy_buf_free(&once);
  fy_buf_free(&twice);
}

static void check_record(const uint8_t *data, size_t size) {
  struct fy_outbox_wire_record r, s;
  struct fy_err err;
  fy_err_clear(&err);
  int rc = fy_outbox_wire_decode_record(data, size, &r, &err);
  if (rc != 0) {
    check_error(rc, &err);
    return;
  }
  if (r.seq == 0 || r.prev_seq >= r.seq)
    abort();
  /* The payload points into the input. */
  uintptr_t lo = (uintptr_t)data, at = (uintptr_t)r.payload;
  if (r.payload_len > size || (r.payload_len > 0 && (at < lo || at - lo > size - r.payload_len)))
    abort();
  struct fy_buf once = FY_BUF_INIT, twice = FY_BUF_INIT;
  if (fy_outbox_wire_encode_record(&once, &r, &err) != 0 || once.len > size)
    abort();
  if (fy_outbox_wire_decode_record(once.data, once.len, &s, &err) != 0 || !same_record(&r, &s))
    abort();
  if (fy_outbox_wire_encode_record(&twice, &s, &err) != 0 ||
      !same_bytes(once.data, once.len, twice.data, twice.len))
    abort();
  fy_buf_free(&once);
  fy_buf_free(&twice);
}

static void check_ack(const uint8_t *data, size_t size) {
  uint64_t up_to = 0, again = 0;
  struct fy_err err;
  fy_err_clear(&err);
  int rc = fy_outbox_wire_decode_ack(data, size, &up_to, &err);
  if (rc != 0) {
    check_error(rc, &err);
    return;
  }
  struct fy_buf once = FY_BUF_INIT, twice = FY_BUF_INIT;
  if (fy_outbox_wire_encode_ack(&once, up_to, &err) != 0 || once.len > size)
    abort();
  if (fy_outbox_wire_decode_ack(once.data, once.len, &again, &err) != 0 || again != up_to)
    abort();
  if (fy_outbox_wire_encode_ack(&twice, again, &err) != 0 ||
      !same_bytes(once.data, once.len, twice.data, twice.len))
    abort();
  fy_buf_free(&once);
  fy_buf_free(&twice);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  check_topic(data, size);
  check_record(data, size);
  check_ack(data, size);
  return 0;
}
