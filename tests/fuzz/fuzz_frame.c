/* libFuzzer target for the RPC frame reader and parser (bytes from any peer's
 * QUIC stream). The first input byte picks the chunk size the stream arrives
 * in (0: all at once) and, with its top bit, a small size limit; the rest is
 * the stream. Checks, besides memory safety:
 * - the reader consumes what it says, buffers at most one body, and cuts the
 *   same frames (or fails with the same code) as when fed everything at once;
 * - failures carry a code and a message;
 * - a parsed frame encodes, and the encoding parses back to the same fields. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "rpc/frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool same_bytes(const void *a, size_t alen, const void *b, size_t blen) {
  return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

static bool same_frame(const struct fy_rpc_frame *a, const struct fy_rpc_frame *b) {
  if (a->type != b->type)
    return false;
  switch (a->type) {
  case FY_RPC_CALL:
    if (!same_bytes(a->call.method.ptr, a->call.method.len, b->call.method.ptr, b->call.method.len) ||
        a->call.deadline_ms != b->call.deadline_ms || a->call.meta_len != b->call.meta_len)
      return false;
    for (size_t i = 0; i < a->call.meta_len; i++) {
      const struct fy_rpc_meta *x = &a->call.meta[i], *y = &b->call.meta[i];
      if (!same_bytes(x->key.ptr, x->key.len, y->key.ptr, y->key.len) ||
          !same_bytes(x->value.ptr, x->value.len, y->value.ptr, y->value.len) || x->binary != y->binary)
        return false;
    }
    return true;
  case FY_RPC_MSG:
    return same_bytes(a->msg.payload.ptr, a->msg.payload.len, b->msg.payload.ptr, b->msg.payload.len);
  case FY_RPC_END:
    return true;
  case FY_RPC_STATUS:
    return a->status.code == b->status.code && a->status.retryable == b->status.retryable &&
           a->status.has_details == b->status.has_details &&
           same_bytes(a->status.message.ptr, a->status.message.len, b->status.message.ptr,
                      b->status.message.len) &&
           (!a->status.has_details || same_bytes(a->status.details.ptr, a->status.details.len,
                                                 b->status.details.ptr, b->status.details.len));
  default:
    return false;
  }
}

static void check_error(int rc, const struct fy_err *err) {
  if (rc >= 0 || err->code != rc || err->msg[0] == '\0')
    abort();
}

/* Parses one body; when it is a frame, re-encodes and re-parses it. */
static void check_body(struct fy_rpc_bin body, uint32_t max) {
  struct fy_rpc_frame f, g;
  struct fy_err err;
  fy_err_clear(&err);
  int rc = fy_frame_parse(body.ptr, body.len, &f, &err);
  if (rc != 0) {
    check_error(rc, &err);
    return;
  }
  struct fy_buf out = FY_BUF_INIT;
  /* The shortest encoding is never longer than what was parsed. */
  if (fy_frame_encode(&out, &f, max, &err) != 0 || out.len > body.len + FY_RPC_HEADER_LEN)
    abort();
  struct fy_frame_reader r;
  fy_frame_reader_init(&r, max);
  size_t used;
  struct fy_rpc_bin again;
  if (fy_frame_reader_feed(&r, out.data, out.len, &used, &again, &err) != 1 || used != out.len)
    abort();
  if (fy_frame_parse(again.ptr, again.len, &g, &err) != 0 || !same_frame(&f, &g))
    abort();
  fy_frame_reader_free(&r);
  fy_buf_free(&out);
}

/* Feeds data in chunks of `chunk` bytes (0: all at once); appends each body,
 * behind its length, to bodies. Returns 0 at a clean end, or the error. */
static int run(const uint8_t *data, size_t size, size_t chunk, uint32_t max, struct fy_buf *bodies,
               bool parse) {
  struct fy_frame_reader r;
  fy_frame_reader_init(&r, max);
  struct fy_err err;
  fy_err_clear(&err);
  int rc = 0;
  size_t pos = 0;
  while (pos < size && rc >= 0) {
    size_t n = chunk == 0 || chunk > size - pos ? size - pos : chunk;
    size_t off = 0;
    while (off < n) {
      size_t used = 0;
      struct fy_rpc_bin body;
      rc = fy_frame_reader_feed(&r, data + pos + off, n - off, &used, &body, &err);
      if (used > n - off || r.body.cap > max)
        abort();
      off += used;
      if (rc < 0) {
        check_error(rc, &err);
        break;
      }
      if (rc == 0) {
        if (off != n)
          abort();
        break;
      }
      if (body.len == 0 || body.len > max)
        abort();
      uint32_t len32 = (uint32_t)body.len;
      if (fy_buf_append(bodies, &len32, sizeof(len32), NULL) != 0 ||
          fy_buf_append(bodies, body.ptr, body.len, NULL) != 0)
        abort();
      if (parse)
        check_body(body, max);
    }
    pos += n;
  }
  if (rc >= 0) {
    rc = fy_frame_reader_finish(&r, &err);
    if (rc < 0)
      check_error(rc, &err);
  }
  fy_frame_reader_free(&r);
  return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0)
    return 0;
  size_t chunk = data[0] & 0x7f;
  uint32_t max = data[0] & 0x80 ? 64 : FY_RPC_MAX_BODY_DEFAULT;
  data++, size--;
  struct fy_buf a = FY_BUF_INIT, b = FY_BUF_INIT;
  int rc_a = run(data, size, chunk, max, &a, true);
  int rc_b = run(data, size, 0, max, &b, false);
  if (rc_a != rc_b || !same_bytes(a.data, a.len, b.data, b.len))
    abort();
  fy_buf_free(&a);
  fy_buf_free(&b);
  return 0;
}
