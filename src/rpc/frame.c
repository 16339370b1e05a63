/* RPC frames: reader, parser and encoder (see frame.h and proto/rpc.md). */
#include "rpc/frame.h"

#include <inttypes.h>
#include <msgpack.h>
#include <stdio.h>
#include <string.h>

#include "base/cleanup.h"
#include "base/mpshape.h"

/* A reader keeps a body buffer this large between frames; larger ones are
 * freed once their frame has been handed out. */
#define FY_FRAME_READER_KEEP ((size_t)64 * 1024)
#define FY_FRAME_READER_MIN_GROW 4096u

static const char *const type_names[] = {
    [FY_RPC_CALL] = "CALL",
    [FY_RPC_MSG] = "MSG",
    [FY_RPC_END] = "END",
    [FY_RPC_STATUS] = "STATUS",
};

/* Field names by position in each frame type's array, for error messages. */
static const char *const call_fields[] = {"type", "method", "deadline_ms", "metadata"};
static const char *const msg_fields[] = {"type", "payload"};
static const char *const end_fields[] = {"type"};
static const char *const status_fields[] = {"type", "code", "message", "retryable", "details"};

static const struct {
  const char *const *names;
  size_t len;
} fields[] = {
    [FY_RPC_CALL] = {call_fields, FY_ARRAY_LEN(call_fields)},
    [FY_RPC_MSG] = {msg_fields, FY_ARRAY_LEN(msg_fields)},
    [FY_RPC_END] = {end_fields, FY_ARRAY_LEN(end_fields)},
    [FY_RPC_STATUS] = {status_fields, FY_ARRAY_LEN(status_fields)},
};

const char *fy_rpc_type_name(int type) {
  if (type < FY_RPC_CALL || type > FY_RPC_STATUS)
    return NULL;
  return type_names[type];
}

const char *fy_rpc_code_name(int code) {
  switch (code) {
  case FY_RPC_OK:
    return "OK";
  case FY_RPC_CANCELLED:
    return "CANCELLED";
  case FY_RPC_UNKNOWN:
    return "UNKNOWN";
  case FY_RPC_INVALID_ARGUMENT:
    return "INVALID_ARGUMENT";
  case FY_RPC_DEADLINE_EXCEEDED:
    return "DEADLINE_EXCEEDED";
  case FY_RPC_NOT_FOUND:
    return "NOT_FOUND";
  case FY_RPC_ALREADY_EXISTS:
    return "ALREADY_EXISTS";
  case FY_RPC_PERMISSION_DENIED:
    return "PERMISSION_DENIED";
  case FY_RPC_RESOURCE_EXHAUSTED:
    return "RESOURCE_EXHAUSTED";
  case FY_RPC_FAILED_PRECONDITION:
    return "FAILED_PRECONDITION";
  case FY_RPC_ABORTED:
    return "ABORTED";
  case FY_RPC_UNIMPLEMENTED:
    return "UNIMPLEMENTED";
  case FY_RPC_INTERNAL:
    return "INTERNAL";
  case FY_RPC_UNAVAILABLE:
    return "UNAVAILABLE";
  case FY_RPC_UNAUTHENTICATED:
    return "UNAUTHENTICATED";
  default:
    return NULL;
  }
}

uint64_t fy_frame_quic_error(int rc) {
  if (rc == FY_ELIMIT)
    return FY_RPC_QUIC_FRAME_TOO_LARGE;
  if (rc == FY_EINVAL)
    return FY_RPC_QUIC_PROTOCOL_VIOLATION;
  return FY_RPC_QUIC_CANCELLED;
}

static uint32_t effective_max(uint32_t max_body) {
  return max_body ? max_body : FY_RPC_MAX_BODY_DEFAULT;
}

/* ---- field rules, shared by the parser and the encoder ---- */

static bool method_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

static bool key_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
}

/* Writes "'c'" or "byte 0xNN" for c into out. */
static const char *show_char(char c, char out[16]) {
  unsigned char u = (unsigned char)c;
  if (u >= 0x20 && u < 0x7f && u != '\'')
    snprintf(out, 16, "'%c'", c);
  else
    snprintf(out, 16, "byte 0x%02x", u);
  return out;
}

static int check_method(struct fy_rpc_str m, struct fy_err *err) {
  if (m.len == 0)
    return fy_err_set(err, FY_EINVAL, "CALL frame: method is empty");
  if (m.len > FY_RPC_METHOD_MAX)
    return fy_err_set(err, FY_EINVAL, "CALL frame: method is %zu bytes; at most %d", m.len,
                      FY_RPC_METHOD_MAX);
  size_t dots = 0;
  char shown[16];
  for (size_t i = 0; i < m.len; i++) {
    char c = m.ptr[i];
    if (c == '.') {
      if (i == 0 || i + 1 == m.len || m.ptr[i - 1] == '.')
        return fy_err_set(err, FY_EINVAL, "CALL frame: method has an empty segment at position %zu", i);
      dots++;
    } else if (!method_char(c)) {
      return fy_err_set(err, FY_EINVAL,
                        "CALL frame: method: %s at position %zu is not a letter, digit, '_', '-' or '.'",
                        show_char(c, shown), i);
    }
  }
  if (dots == 0)
    return fy_err_set(err, FY_EINVAL, "CALL frame: method \"%.*s\" has no '.'; expected service.method",
                      (int)m.len, m.ptr);
  return 0;
}

static int check_meta_key(struct fy_rpc_str k, size_t index, struct fy_err *err) {
  if (k.len == 0)
    return fy_err_set(err, FY_EINVAL, "CALL frame: metadata key %zu is empty", index);
  if (k.len > FY_RPC_META_KEY_MAX)
    return fy_err_set(err, FY_EINVAL, "CALL frame: metadata key %zu is %zu bytes; at most %d", index, k.len,
                      FY_RPC_META_KEY_MAX);
  char shown[16];
  for (size_t i = 0; i < k.len; i++)
    if (!key_char(k.ptr[i]))
      return fy_err_set(err, FY_EINVAL,
                        "CALL frame: metadata key %zu: %s at position %zu is not one of a-z 0-9 _ - .", index,
                        show_char(k.ptr[i], shown), i);
  return 0;
}

static int check_meta_unique(const struct fy_rpc_meta *meta, size_t n, struct fy_err *err) {
  for (size_t i = 1; i < n; i++)
    for (size_t j = 0; j < i; j++)
      if (meta[i].key.len == meta[j].key.len &&
          memcmp(meta[i].key.ptr, meta[j].key.ptr, meta[i].key.len) == 0)
        return fy_err_set(err, FY_EINVAL, "CALL frame: metadata key \"%.*s\" appears twice",
                          (int)meta[i].key.len, meta[i].key.ptr);
  return 0;
}

static int check_code(int64_t code, struct fy_err *err) {
  if (code < INT32_MIN || code > INT32_MAX || !fy_rpc_code_name((int)code))
    return fy_err_set(err, FY_EINVAL, "STATUS frame: code %" PRId64 " is not a status code of the spec",
                      code);
  return 0;
}

static int check_message(struct fy_rpc_str m, struct fy_err *err) {
  if (m.len > FY_RPC_MESSAGE_MAX)
    return fy_err_set(err, FY_EINVAL, "STATUS frame: message is %zu bytes; at most %d", m.len,
                      FY_RPC_MESSAGE_MAX);
  return 0;
}

/* ---- reader ---- */

void fy_frame_reader_init(struct fy_frame_reader *r, uint32_t max_body) {
  memset(r, 0, sizeof(*r));
  r->max_body = effective_max(max_body);
}

void fy_frame_reader_free(struct fy_frame_reader *r) {
  fy_buf_free(&r->body);
  r->hdr_len = 0;
  r->yielded = false;
}

size_t fy_frame_reader_buffered(const struct fy_frame_reader *r) {
  return r->yielded ? 0 : r->hdr_len + r->body.len;
}

static int reader_fail(struct fy_frame_reader *r, int rc) {
  r->failed = rc;
  fy_buf_free(&r->body);
  return rc;
}

/* Forgets the frame handed out last time, keeping a modest buffer for reuse. */
static void reader_release(struct fy_frame_reader *r) {
  if (!r->yielded)
    return;
  r->yielded = false;
  r->body.len = 0;
  if (r->body.cap > FY_FRAME_READER_KEEP)
    fy_buf_free(&r->body);
}

static int reader_spent(const struct fy_frame_reader *r, struct fy_err *err) {
  return fy_err_set(err, r->failed, "RPC stream: already failed (%s)", fy_strerror(r->failed));
}

/* The header is complete: check the length before taking any of the body. */
static int reader_check_header(struct fy_frame_reader *r, struct fy_err *err) {
  uint32_t n = (uint32_t)r->hdr[0] << 24 | (uint32_t)r->hdr[1] << 16 | (uint32_t)r->hdr[2] << 8 | r->hdr[3];
  if (n == 0)
    return reader_fail(r, fy_err_set(err, FY_EINVAL, "RPC frame: length 0; a body is one msgpack array"));
  if (n > r->max_body)
    return reader_fail(r, fy_err_set(err, FY_ELIMIT,
                                     "RPC frame: body of %" PRIu32 " bytes exceeds the limit of %" PRIu32
                                     " bytes",
                                     n, r->max_body));
  r->body_len = n;
  return 0;
}

int fy_frame_reader_feed(struct fy_frame_reader *r, const uint8_t *data, size_t len, size_t *used,
                         struct fy_rpc_bin *body, struct fy_err *err) {
  *used = 0;
  if (r->failed)
    return reader_spent(r, err);
  reader_release(r);
  size_t off = 0;
  if (r->hdr_len < FY_RPC_HEADER_LEN) {
    while (r->hdr_len < FY_RPC_HEADER_LEN && off < len)
      r->hdr[r->hdr_len++] = data[off++];
    *used = off;
    if (r->hdr_len < FY_RPC_HEADER_LEN)
      return 0;
    int rc = reader_check_header(r, err);
    if (rc < 0)
      return rc;
  }
  size_t avail = len - off;
  if (r->body.len == 0 && avail >= r->body_len) {
    /* The whole body is in this chunk: hand it out in place. */
    body->ptr = data + off;
    body->len = r->body_len;
    *used = off + r->body_len;
    r->hdr_len = 0;
    return 1;
  }
  if (avail == 0)
    return 0;
  size_t want = r->body_len - r->body.len;
  size_t take = avail < want ? avail : want;
  if (take > r->body.cap - r->body.len) {
    /* Grow with the bytes that came, never past this frame's body. */
    size_t cap = r->body.cap * 2;
    if (cap < r->body.len + take)
      cap = r->body.len + take;
    if (cap < FY_FRAME_READER_MIN_GROW)
      cap = FY_FRAME_READER_MIN_GROW;
    if (cap > r->body_len)
      cap = r->body_len;
    int rc = fy_buf_reserve(&r->body, cap - r->body.len, err);
    if (rc < 0) {
      fy_err_prefix(err, "RPC frame body of %" PRIu32 " bytes", r->body_len);
      return reader_fail(r, rc);
    }
  }
  memcpy(r->body.data + r->body.len, data + off, take);
  r->body.len += take;
  *used = off + take;
  if (r->body.len < r->body_len)
    return 0;
  body->ptr = r->body.data;
  body->len = r->body.len;
  r->hdr_len = 0;
  r->yielded = true;
  return 1;
}

int fy_frame_reader_finish(struct fy_frame_reader *r, struct fy_err *err) {
  if (r->failed)
    return reader_spent(r, err);
  reader_release(r);
  if (r->hdr_len == 0)
    return 0;
  if (r->hdr_len < FY_RPC_HEADER_LEN)
    return reader_fail(r, fy_err_set(err, FY_EINVAL, "RPC stream: ended after %u of %d frame header bytes",
                                     (unsigned)r->hdr_len, FY_RPC_HEADER_LEN));
  return reader_fail(r, fy_err_set(err, FY_EINVAL,
                                   "RPC stream: ended %zu bytes into a frame body of %" PRIu32 " bytes",
                                   r->body.len, r->body_len));
}

/* ---- parser ---- */

/* Where an error is, for messages: "CALL frame: metadata" or "RPC frame". */
struct where {
  int type; /* frame type once known, else 0 */
  size_t field;
  bool in_field; /* false: the body's top-level value itself */
};

static const char *where_str(const struct where *w, char *out, size_t size) {
  const char *tname = fy_rpc_type_name(w->type);
  if (!w->in_field)
    snprintf(out, size, "RPC frame");
  else if (tname && w->field < fields[w->type].len)
    snprintf(out, size, "%s frame: %s", tname, fields[w->type].names[w->field]);
  else if (tname)
    snprintf(out, size, "%s frame: element %zu", tname, w->field);
  else
    snprintf(out, size, "RPC frame: element %zu", w->field);
  return out;
}

/* Names a position for the shape check's messages, as fy_frame_parse does. */
static const char *shape_where(const struct fy_mpshape_pos *pos, char *out, size_t size, const void *user) {
  (void)user;
  struct where w = {.type = pos->first_fixint, .field = pos->field, .in_field = pos->in_field};
  return where_str(&w, out, size);
}

/* Bounds check before msgpack-c sees a body (see base/mpshape.h). */
static int check_shape(const uint8_t *p, size_t len, struct fy_err *err) {
  return fy_mpshape_check(p, len, FY_RPC_MAX_DEPTH, FY_RPC_MAX_ELEMENTS, "frame", shape_where, NULL, err);
}

static const char *kind(const msgpack_object *o) {
  switch (o->type) {
  case MSGPACK_OBJECT_NIL:
    return "nil";
  case MSGPACK_OBJECT_BOOLEAN:
    return "bool";
  case MSGPACK_OBJECT_POSITIVE_INTEGER:
    return "uint";
  case MSGPACK_OBJECT_NEGATIVE_INTEGER:
    return "negative int";
  case MSGPACK_OBJECT_FLOAT32:
  case MSGPACK_OBJECT_FLOAT64:
    return "float";
  case MSGPACK_OBJECT_STR:
    return "str";
  case MSGPACK_OBJECT_BIN:
    return "bin";
  case MSGPACK_OBJECT_ARRAY:
    return "array";
  case MSGPACK_OBJECT_MAP:
    return "map";
  case MSGPACK_OBJECT_EXT:
    return "ext";
  default:
    return "unknown";
  }
}

static int wrong_type(const char *frame, const char *field, const char *want, const msgpack_object *o,
                      struct fy_err *err) {
  return fy_err_set(err, FY_EINVAL, "%s frame: %s: expected %s, got %s", frame, field, want, kind(o));
}

static struct fy_rpc_str str_of(const msgpack_object *o) {
  return (struct fy_rpc_str){o->via.str.ptr, o->via.str.size};
}

static struct fy_rpc_bin bin_of(const msgpack_object *o) {
  return (struct fy_rpc_bin){(const uint8_t *)o->via.bin.ptr, o->via.bin.size};
}

static int parse_call(const msgpack_object_array *a, struct fy_rpc_call *c, struct fy_err *err) {
  if (a->size != 4)
    return fy_err_set(err, FY_EINVAL, "CALL frame has %" PRIu32 " elements; expected 4", a->size);
  const msgpack_object *method = &a->ptr[1], *deadline = &a->ptr[2], *meta = &a->ptr[3];
  if (method->type != MSGPACK_OBJECT_STR)
    return wrong_type("CALL", "method", "str", method, err);
  c->method = str_of(method);
  int rc = check_method(c->method, err);
  if (rc < 0)
    return rc;
  if (deadline->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
    return wrong_type("CALL", "deadline_ms", "uint", deadline, err);
  if (deadline->via.u64 > UINT32_MAX)
    return fy_err_set(err, FY_EINVAL, "CALL frame: deadline_ms %" PRIu64 " is more than %" PRIu32,
                      deadline->via.u64, UINT32_MAX);
  c->deadline_ms = (uint32_t)deadline->via.u64;
  if (meta->type != MSGPACK_OBJECT_MAP)
    return wrong_type("CALL", "metadata", "map", meta, err);
  if (meta->via.map.size > FY_RPC_META_MAX)
    return fy_err_set(err, FY_EINVAL, "CALL frame: metadata has %" PRIu32 " entries; at most %d",
                      meta->via.map.size, FY_RPC_META_MAX);
  c->meta_len = meta->via.map.size;
  for (size_t i = 0; i < c->meta_len; i++) {
    const msgpack_object *k = &meta->via.map.ptr[i].key, *v = &meta->via.map.ptr[i].val;
    if (k->type != MSGPACK_OBJECT_STR)
      return fy_err_set(err, FY_EINVAL, "CALL frame: metadata key %zu: expected str, got %s", i, kind(k));
    struct fy_rpc_meta *m = &c->meta[i];
    m->key = str_of(k);
    rc = check_meta_key(m->key, i, err);
    if (rc < 0)
      return rc;
    if (v->type == MSGPACK_OBJECT_STR) {
      m->value = (struct fy_rpc_bin){(const uint8_t *)v->via.str.ptr, v->via.str.size};
      m->binary = false;
    } else if (v->type == MSGPACK_OBJECT_BIN) {
      m->value = bin_of(v);
      m->binary = true;
    } else {
      return fy_err_set(err, FY_EINVAL, "CALL frame: metadata \"%.*s\": expected str or bin, got %s",
                        (int)m->key.len, m->key.ptr, kind(v));
    }
  }
  return check_meta_unique(c->meta, c->meta_len, err);
}

static int parse_msg(const msgpack_object_array *a, struct fy_rpc_msg *m, struct fy_err *err) {
  if (a->size != 2)
    return fy_err_set(err, FY_EINVAL, "MSG frame has %" PRIu32 " elements; expected 2", a->size);
  if (a->ptr[1].type != MSGPACK_OBJECT_BIN)
    return wrong_type("MSG", "payload", "bin", &a->ptr[1], err);
  m->payload = bin_of(&a->ptr[1]);
  return 0;
}

static int parse_status(const msgpack_object_array *a, struct fy_rpc_status *s, struct fy_err *err) {
  if (a->size != 4 && a->size != 5)
    return fy_err_set(err, FY_EINVAL, "STATUS frame has %" PRIu32 " elements; expected 4 or 5", a->size);
  const msgpack_object *code = &a->ptr[1], *message = &a->ptr[2], *retryable = &a->ptr[3];
  int64_t c;
  if (code->type == MSGPACK_OBJECT_POSITIVE_INTEGER && code->via.u64 > INT32_MAX)
    return fy_err_set(err, FY_EINVAL, "STATUS frame: code %" PRIu64 " is not a status code of the spec",
                      code->via.u64);
  if (code->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
    c = (int64_t)code->via.u64;
  else if (code->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
    c = code->via.i64;
  else
    return wrong_type("STATUS", "code", "int", code, err);
  int rc = check_code(c, err);
  if (rc < 0)
    return rc;
  s->code = (int)c;
  if (message->type != MSGPACK_OBJECT_STR)
    return wrong_type("STATUS", "message", "str", message, err);
  s->message = str_of(message);
  rc = check_message(s->message, err);
  if (rc < 0)
    return rc;
  if (retryable->type != MSGPACK_OBJECT_BOOLEAN)
    return wrong_type("STATUS", "retryable", "bool", retryable, err);
  s->retryable = retryable->via.boolean;
  s->has_details = false;
  s->details = (struct fy_rpc_bin){NULL, 0};
  if (a->size == 5) {
    const msgpack_object *details = &a->ptr[4];
    if (details->type == MSGPACK_OBJECT_BIN) {
      s->has_details = true;
      s->details = bin_of(details);
    } else if (details->type != MSGPACK_OBJECT_NIL) {
      return wrong_type("STATUS", "details", "bin or nil", details, err);
    }
  }
  return 0;
}

static int parse_object(const msgpack_object *o, struct fy_rpc_frame *out, struct fy_err *err) {
  if (o->type != MSGPACK_OBJECT_ARRAY)
    return fy_err_set(err, FY_EINVAL, "RPC frame: body is a msgpack %s; expected an array", kind(o));
  const msgpack_object_array *a = &o->via.array;
  if (a->size == 0)
    return fy_err_set(err, FY_EINVAL, "RPC frame: empty array; the first element is the frame type");
  const msgpack_object *t = &a->ptr[0];
  if (t->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
    return fy_err_set(err, FY_EINVAL, "RPC frame: type: expected uint, got %s", kind(t));
  if (t->via.u64 < FY_RPC_CALL || t->via.u64 > FY_RPC_STATUS)
    return fy_err_set(err, FY_EINVAL,
                      "RPC frame: type %" PRIu64 " is not CALL(1), MSG(2), END(3) or STATUS(4)", t->via.u64);
  out->type = (int)t->via.u64;
  switch (out->type) {
  case FY_RPC_CALL:
    return parse_call(a, &out->call, err);
  case FY_RPC_MSG:
    return parse_msg(a, &out->msg, err);
  case FY_RPC_END:
    if (a->size != 1)
      return fy_err_set(err, FY_EINVAL, "END frame has %" PRIu32 " elements; expected 1", a->size);
    return 0;
  default:
    return parse_status(a, &out->status, err);
  }
}

int fy_frame_parse(const uint8_t *body, size_t len, struct fy_rpc_frame *out, struct fy_err *err) {
  out->type = 0;
  if (len == 0)
    return fy_err_set(err, FY_EINVAL, "RPC frame: empty body");
  int rc = check_shape(body, len, err);
  if (rc < 0)
    return rc;
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  msgpack_unpack_return ur = msgpack_unpack_next(&u, (const char *)body, len, &off);
  if (ur == MSGPACK_UNPACK_NOMEM_ERROR)
    rc = fy_err_set(err, FY_ENOMEM, "RPC frame: out of memory decoding msgpack");
  else if (ur != MSGPACK_UNPACK_SUCCESS)
    rc = fy_err_set(err, FY_EINVAL, "RPC frame: body is not valid msgpack");
  else if (off != len)
    rc = fy_err_set(err, FY_EINVAL, "RPC frame: %zu bytes after the msgpack array", len - off);
  else
    rc = parse_object(&u.data, out, err);
  /* Strings and bins point into body, not into the zone freed here. */
  msgpack_unpacked_destroy(&u);
  if (rc < 0)
    out->type = 0;
  return rc;
}

/* ---- encoder ---- */

struct sink {
  struct fy_buf *out;
  struct fy_err *err;
  int rc;
};

static int sink_write(void *data, const char *p, size_t n) {
  struct sink *s = data;
  if (s->rc < 0)
    return -1;
  s->rc = fy_buf_append(s->out, p, n, s->err);
  return s->rc < 0 ? -1 : 0;
}

static void pack_str(msgpack_packer *pk, const char *p, size_t n) {
  msgpack_pack_str(pk, n);
  msgpack_pack_str_body(pk, p, n);
}

static void pack_bin(msgpack_packer *pk, const void *p, size_t n) {
  msgpack_pack_bin(pk, n);
  msgpack_pack_bin_body(pk, p, n);
}

static void pack_msg(msgpack_packer *pk, const void *arg) {
  const struct fy_rpc_bin *payload = arg;
  msgpack_pack_array(pk, 2);
  msgpack_pack_int(pk, FY_RPC_MSG);
  pack_bin(pk, payload->ptr, payload->len);
}

static int check_call(const struct fy_rpc_call *c, struct fy_err *err) {
  int rc = check_method(c->method, err);
  if (rc < 0)
    return rc;
  if (c->meta_len > FY_RPC_META_MAX)
    return fy_err_set(err, FY_EINVAL, "CALL frame: metadata has %zu entries; at most %d", c->meta_len,
                      FY_RPC_META_MAX);
  for (size_t i = 0; i < c->meta_len; i++) {
    rc = check_meta_key(c->meta[i].key, i, err);
    if (rc < 0)
      return rc;
  }
  return check_meta_unique(c->meta, c->meta_len, err);
}

static int check_frame(const struct fy_rpc_frame *f, uint32_t max, struct fy_err *err) {
  int rc;
  switch (f->type) {
  case FY_RPC_CALL:
    return check_call(&f->call, err);
  case FY_RPC_MSG:
    if (f->msg.payload.len > max)
      return fy_err_set(err, FY_ELIMIT,
                        "MSG frame: payload of %zu bytes exceeds the limit of %" PRIu32 " bytes",
                        f->msg.payload.len, max);
    return 0;
  case FY_RPC_END:
    return 0;
  case FY_RPC_STATUS:
    rc = check_code(f->status.code, err);
    if (rc < 0)
      return rc;
    rc = check_message(f->status.message, err);
    if (rc < 0)
      return rc;
    if (f->status.has_details && f->status.details.len > max)
      return fy_err_set(err, FY_ELIMIT,
                        "STATUS frame: details of %zu bytes exceed the limit of %" PRIu32 " bytes",
                        f->status.details.len, max);
    return 0;
  default:
    return fy_err_set(err, FY_EINVAL, "RPC frame: type %d is not CALL(1), MSG(2), END(3) or STATUS(4)",
                      f->type);
  }
}

static void pack_body(msgpack_packer *pk, const struct fy_rpc_frame *f) {
  switch (f->type) {
  case FY_RPC_CALL: {
    const struct fy_rpc_call *c = &f->call;
    msgpack_pack_array(pk, 4);
    msgpack_pack_int(pk, FY_RPC_CALL);
    pack_str(pk, c->method.ptr, c->method.len);
    msgpack_pack_uint32(pk, c->deadline_ms);
    msgpack_pack_map(pk, c->meta_len);
    for (size_t i = 0; i < c->meta_len; i++) {
      const struct fy_rpc_meta *m = &c->meta[i];
      pack_str(pk, m->key.ptr, m->key.len);
      if (m->binary)
        pack_bin(pk, m->value.ptr, m->value.len);
      else
        pack_str(pk, (const char *)m->value.ptr, m->value.len);
    }
    break;
  }
  case FY_RPC_MSG:
    pack_msg(pk, &f->msg.payload);
    break;
  case FY_RPC_END:
    msgpack_pack_array(pk, 1);
    msgpack_pack_int(pk, FY_RPC_END);
    break;
  default: {
    const struct fy_rpc_status *s = &f->status;
    msgpack_pack_array(pk, s->has_details ? 5 : 4);
    msgpack_pack_int(pk, FY_RPC_STATUS);
    msgpack_pack_int(pk, s->code);
    pack_str(pk, s->message.ptr, s->message.len);
    if (s->retryable)
      msgpack_pack_true(pk);
    else
      msgpack_pack_false(pk);
    if (s->has_details)
      pack_bin(pk, s->details.ptr, s->details.len);
    break;
  }
  }
}

/* Appends a header placeholder, packs the body with pack(pk, arg), then fills
 * in the length; on any failure out keeps its old length. */
static int encode_with(struct fy_buf *out, uint32_t max, int type,
                       void (*pack)(msgpack_packer *, const void *), const void *arg, struct fy_err *err) {
  size_t start = out->len;
  static const uint8_t placeholder[FY_RPC_HEADER_LEN] = {0};
  int rc = fy_buf_append(out, placeholder, sizeof(placeholder), err);
  if (rc < 0)
    return rc;
  struct sink s = {out, err, 0};
  msgpack_packer pk;
  msgpack_packer_init(&pk, &s, sink_write);
  pack(&pk, arg);
  if (s.rc < 0) {
    out->len = start;
    return s.rc;
  }
  size_t n = out->len - start - FY_RPC_HEADER_LEN;
  if (n > max) {
    out->len = start;
    return fy_err_set(err, FY_ELIMIT, "%s frame: body of %zu bytes exceeds the limit of %" PRIu32 " bytes",
                      fy_rpc_type_name(type), n, max);
  }
  uint8_t *h = out->data + start;
  h[0] = (uint8_t)(n >> 24);
  h[1] = (uint8_t)(n >> 16);
  h[2] = (uint8_t)(n >> 8);
  h[3] = (uint8_t)n;
  return 0;
}

static void pack_frame(msgpack_packer *pk, const void *arg) {
  pack_body(pk, arg);
}

int fy_frame_encode(struct fy_buf *out, const struct fy_rpc_frame *f, uint32_t max_body, struct fy_err *err) {
  uint32_t max = effective_max(max_body);
  int rc = check_frame(f, max, err);
  if (rc < 0)
    return rc;
  return encode_with(out, max, f->type, pack_frame, f, err);
}

int fy_frame_encode_msg(struct fy_buf *out, const void *payload, size_t len, uint32_t max_body,
                        struct fy_err *err) {
  uint32_t max = effective_max(max_body);
  if (len > max)
    return fy_err_set(err, FY_ELIMIT,
                      "MSG frame: payload of %zu bytes exceeds the limit of %" PRIu32 " bytes", len, max);
  struct fy_rpc_bin p = {payload, len};
  return encode_with(out, max, FY_RPC_MSG, pack_msg, &p, err);
}
