#include "outbox/wire.h"

#include <msgpack.h>
#include <stdio.h>
#include <string.h>

#include "base/mpmap.h"
#include "base/mpshape.h"

static const char *name_of(const struct fy_mpshape_pos *pos, char *out, size_t size, const void *user) {
  const char *what = user;
  if (pos->in_field)
    snprintf(out, size, "%s: element %zu", what, pos->field);
  else
    snprintf(out, size, "%s", what);
  return out;
}

/* Checks the shape, unpacks, and insists on an array of exactly n elements. */
static int unpack_array(const uint8_t *p, size_t len, size_t n, const char *what, msgpack_unpacked *u,
                        struct fy_err *err) {
  int rc = fy_mpshape_check(p, len, 2, 8, "message", name_of, what, err);
  if (rc < 0)
    return rc;
  msgpack_unpacked_init(u);
  size_t off = 0;
  if (msgpack_unpack_next(u, (const char *)p, len, &off) != MSGPACK_UNPACK_SUCCESS) {
    msgpack_unpacked_destroy(u);
    return fy_err_set(err, FY_EINVAL, "%s: not msgpack", what);
  }
  if (u->data.type != MSGPACK_OBJECT_ARRAY || u->data.via.array.size != n) {
    msgpack_unpacked_destroy(u);
    return fy_err_set(err, FY_EINVAL, "%s: not an array of %zu elements", what, n);
  }
  return 0;
}

static int get_uint(const msgpack_object *o, const char *what, const char *field, uint64_t *out,
                    struct fy_err *err) {
  if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
    return fy_err_set(err, FY_EINVAL, "%s: %s is not an unsigned integer", what, field);
  *out = o->via.u64;
  return 0;
}

int fy_outbox_wire_encode_topic(struct fy_buf *out, const char *topic, struct fy_err *err) {
  size_t n = strlen(topic);
  if (n == 0 || n > FY_OUTBOX_TOPIC_MAX)
    return fy_err_set(err, FY_EINVAL, "topic must be 1 to %d bytes", FY_OUTBOX_TOPIC_MAX);
  msgpack_packer pk;
  msgpack_packer_init(&pk, out, fy_mp_buf_write);
  if (msgpack_pack_array(&pk, 1) || msgpack_pack_str_with_body(&pk, topic, n))
    return fy_err_set(err, FY_ENOMEM, "cannot encode the topic");
  return 0;
}

int fy_outbox_wire_decode_topic(const uint8_t *p, size_t len, char topic[FY_OUTBOX_TOPIC_MAX + 1],
                                struct fy_err *err) {
  msgpack_unpacked u;
  int rc = unpack_array(p, len, 1, "outbox.push topic", &u, err);
  if (rc < 0)
    return rc;
  const msgpack_object *o = &u.data.via.array.ptr[0];
  if (o->type != MSGPACK_OBJECT_STR || o->via.str.size == 0 || o->via.str.size > FY_OUTBOX_TOPIC_MAX ||
      memchr(o->via.str.ptr, '\0', o->via.str.size)) {
    msgpack_unpacked_destroy(&u);
    return fy_err_set(err, FY_EINVAL, "outbox.push topic: must be a string of 1 to %d bytes",
                      FY_OUTBOX_TOPIC_MAX);
  }
  memcpy(topic, o->via.str.ptr, o->via.str.size);
  topic[o->via.str.size] = '\0';
  msgpack_unpacked_destroy(&u);
  return 0;
}

int fy_outbox_wire_encode_record(struct fy_buf *out, const struct fy_outbox_wire_record *r,
                                 struct fy_err *err) {
  msgpack_packer pk;
  msgpack_packer_init(&pk, out, fy_mp_buf_write);
  if (msgpack_pack_array(&pk, 4) || msgpack_pack_uint64(&pk, r->seq) ||
      msgpack_pack_uint64(&pk, r->prev_seq) || msgpack_pack_bin_with_body(&pk, r->id, FY_MSGID_LEN) ||
      msgpack_pack_bin_with_body(&pk, r->payload, r->payload_len))
    return fy_err_set(err, FY_ENOMEM, "cannot encode message %llu", (unsigned long long)r->seq);
  return 0;
}

int fy_outbox_wire_decode_record(const uint8_t *p, size_t len, struct fy_outbox_wire_record *out,
                                 struct fy_err *err) {
  msgpack_unpacked u;
  const char *what = "outbox.push message";
  int rc = unpack_array(p, len, 4, what, &u, err);
  if (rc < 0)
    return rc;
  const msgpack_object *e = u.data.via.array.ptr;
  if ((rc = get_uint(&e[0], what, "seq", &out->seq, err)) < 0 ||
      (rc = get_uint(&e[1], what, "prev_seq", &out->prev_seq, err)) < 0) {
    msgpack_unpacked_destroy(&u);
    return rc;
  }
  if (out->seq == 0 || out->prev_seq >= out->seq) {
    msgpack_unpacked_destroy(&u);
    return fy_err_set(err, FY_EINVAL, "%s: seq %llu with prev_seq %llu (seq must be >= 1 and above prev_seq)",
                      what, (unsigned long long)out->seq, (unsigned long long)out->prev_seq);
  }
  if (e[2].type != MSGPACK_OBJECT_BIN || e[2].via.bin.size != FY_MSGID_LEN) {
    msgpack_unpacked_destroy(&u);
    return fy_err_set(err, FY_EINVAL, "%s: id is not %d bytes of bin", what, FY_MSGID_LEN);
  }
  if (e[3].type != MSGPACK_OBJECT_BIN) {
    msgpack_unpacked_destroy(&u);
    return fy_err_set(err, FY_EINVAL, "%s: payload is not bin", what);
  }
  memcpy(out->id, e[2].via.bin.ptr, FY_MSGID_LEN);
  /* msgpack-c's bin points into p (no copy for bin), so the payload outlives u. */
  out->payload = (const uint8_t *)e[3].via.bin.ptr;
  out->payload_len = e[3].via.bin.size;
  msgpack_unpacked_destroy(&u);
  return 0;
}

int fy_outbox_wire_encode_ack(struct fy_buf *out, uint64_t up_to, struct fy_err *err) {
  msgpack_packer pk;
  msgpack_packer_init(&pk, out, fy_mp_buf_write);
  if (msgpack_pack_array(&pk, 1) || msgpack_pack_uint64(&pk, up_to))
    return fy_err_set(err, FY_ENOMEM, "cannot encode an acknowledgement");
  return 0;
}

int fy_outbox_wire_decode_ack(const uint8_t *p, size_t len, uint64_t *up_to, struct fy_err *err) {
  msgpack_unpacked u;
  int rc = unpack_array(p, len, 1, "outbox.push ack", &u, err);
  if (rc < 0)
    return rc;
  rc = get_uint(&u.data.via.array.ptr[0], "outbox.push ack", "applied_up_to", up_to, err);
  msgpack_unpacked_destroy(&u);
  return rc;
}
