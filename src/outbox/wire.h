/* The outbox.push messages (proto/outbox.md): encoders and decoders shared by
 * the sending side (delivery.c) and the receiving side (intake.c). Decoders
 * see untrusted bytes: each runs the msgpack bounds walk (base/mpshape.h)
 * before msgpack-c, and tests/fuzz/fuzz_outbox_wire.c feeds them. */
#ifndef FY_OUTBOX_WIRE_H
#define FY_OUTBOX_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "base/err.h"
#include "outbox/outbox.h"

#define FY_OUTBOX_METHOD "outbox.push"

/* [topic] */
int fy_outbox_wire_encode_topic(struct fy_buf *out, const char *topic, struct fy_err *err);
/* topic receives a NUL-terminated copy (1..FY_OUTBOX_TOPIC_MAX bytes, no NUL inside). */
int fy_outbox_wire_decode_topic(const uint8_t *p, size_t len, char topic[FY_OUTBOX_TOPIC_MAX + 1],
                                struct fy_err *err);

/* [seq, prev_seq, id, payload] */
struct fy_outbox_wire_record {
  uint64_t seq, prev_seq;
  uint8_t id[FY_MSGID_LEN];
  const uint8_t *payload; /* points into the decoded bytes */
  size_t payload_len;
};
int fy_outbox_wire_encode_record(struct fy_buf *out, const struct fy_outbox_wire_record *r,
                                 struct fy_err *err);
int fy_outbox_wire_decode_record(const uint8_t *p, size_t len, struct fy_outbox_wire_record *out,
                                 struct fy_err *err);

/* [applied_up_to] */
int fy_outbox_wire_encode_ack(struct fy_buf *out, uint64_t up_to, struct fy_err *err);
int fy_outbox_wire_decode_ack(const uint8_t *p, size_t len, uint64_t *up_to, struct fy_err *err);

#endif
