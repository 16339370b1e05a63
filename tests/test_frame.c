/* RPC frames: golden vectors both ways, the incremental reader under every
 * chunking, its limits, every malformed-body case, encoder checks and round
 * trips.
 *
 * Golden vectors: the table in proto/rpc.md, whose bytes were produced by
 * Python's msgpack 1.0.3 (packb(v, use_bin_type=True) behind a ">I" length),
 * an implementation independent of msgpack-c. test_spec_table checks that the
 * spec's table and the one below agree. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/cleanup.h"
#include "rpc/frame.h"

#define assert_contains(haystack, needle)                                                                    \
  do {                                                                                                       \
    if (!strstr((haystack), (needle)))                                                                       \
      fail_msg("message \"%s\" does not contain \"%s\"", (haystack), (needle));                              \
  } while (0)

/* Decodes hex, ignoring spaces, into a malloc'd buffer. */
static uint8_t *unhex(const char *hex, size_t *len) {
  uint8_t *out = malloc(strlen(hex) / 2 + 1);
  assert_non_null(out);
  size_t n = 0;
  int hi = -1;
  for (const char *p = hex; *p; p++) {
    if (*p == ' ')
      continue;
    int v;
    if (*p >= '0' && *p <= '9')
      v = *p - '0';
    else if (*p >= 'a' && *p <= 'f')
      v = *p - 'a' + 10;
    else
      fail_msg("bad hex digit '%c' in %s", *p, hex);
    if (hi < 0) {
      hi = v;
    } else {
      out[n++] = (uint8_t)(hi << 4 | v);
      hi = -1;
    }
  }
  assert_int_equal(hi, -1);
  *len = n;
  return out;
}

static struct fy_rpc_str S(const char *s) {
  return (struct fy_rpc_str){s, strlen(s)};
}

static struct fy_rpc_bin
B(const void *p, size_t n) {
  return (struct fy_rpc_bin){p, n};
}

/* ---- golden vectors (same order as proto/rpc.md) ---- */

static const uint8_t msg_payload[] = {0x81, 0xa2, 'i', 'd', 0x07};
static const uint8_t token[] = {0x00, 0x01};
static const uint8_t cafe[] = {0xca, 0xfe};

struct golden {
  const char *hex;
  struct fy_rpc_frame frame;
};

static struct golden goldens[6];

static void make_goldens(void) {
  memset(goldens, 0, sizeof(goldens));
  goldens[0].hex = "0000002b 94 01 ac666c6565742e7265706f7274 cd1388 82 a874726163652d6964 a437663361 "
                   "a5746f6b656e c4020001";
  goldens[0].frame.type = FY_RPC_CALL;
  goldens[0].frame.call.method = S("fleet.report");
  goldens[0].frame.call.deadline_ms = 5000;
  goldens[0].frame.call.meta_len = 2;
  goldens[0].frame.call.meta[0] = (struct fy_rpc_meta){S("trace-id"), B("7f3a", 4), false};
  goldens[0].frame.call.meta[1] = (struct fy_rpc_meta){S("token"), B(token, 2), true};

  goldens[1].hex = "00000008 94 01 a3612e62 00 80";
  goldens[1].frame.type = FY_RPC_CALL;
  goldens[1].frame.call.method = S("a.b");

  goldens[2].hex = "00000009 92 02 c405 81a2696407";
  goldens[2].frame.type = FY_RPC_MSG;
  goldens[2].frame.msg.payload = B(msg_payload, sizeof(msg_payload));

  goldens[3].hex = "00000002 91 03";
  goldens[3].frame.type = FY_RPC_END;

  goldens[4].hex = "00000005 94 04 00 a0 c2";
  goldens[4].frame.type = FY_RPC_STATUS;
  goldens[4].frame.status.code = FY_RPC_OK;
  goldens[4].frame.status.message = S("");

  goldens[5].hex = "00000011 95 04 0e a8647261696e696e67 c3 c402cafe";
  goldens[5].frame.type = FY_RPC_STATUS;
  goldens[5].frame.status.code = FY_RPC_UNAVAILABLE;
  goldens[5].frame.status.message = S("draining");
  goldens[5].frame.status.retryable = true;
  goldens[5].frame.status.has_details = true;
  goldens[5].frame.status.details = B(cafe, 2);
}

static void assert_bytes(const void *a, size_t alen, const void *b, size_t blen) {
  assert_int_equal(alen, blen);
  if (alen)
    assert_memory_equal(a, b, alen);
}

static void assert_frame_equal(const struct fy_rpc_frame *a, const struct fy_rpc_frame *b) {
  assert_int_equal(a->type, b->type);
  switch (a->type) {
  case FY_RPC_CALL:
    assert_bytes(a->call.method.ptr, a->call.method.len, b->call.method.ptr, b->call.method.len);
    assert_int_equal(a->call.deadline_ms, b->call.deadline_ms);
    assert_int_equal(a->call.meta_len, b->call.meta_len);
    for (size_t i = 0; i < a->call.meta_len; i++) {
      const struct fy_rpc_meta *x = &a->call.meta[i], *y = &b->call.meta[i];
      assert_bytes(x->key.ptr, x->key.len, y->key.ptr, y->key.len);
      assert_bytes(x->value.ptr, x->value.len, y->value.ptr, y->value.len);
      assert_int_equal(x->binary, y->binary);
    }
    break;
  case FY_RPC_MSG:
    assert_bytes(a->msg.payload.ptr, a->msg.payload.len, b->msg.payload.ptr, b->msg.payload.len);
    break;
  case FY_RPC_END:
    break;
  case FY_RPC_STATUS:
    assert_int_equal(a->status.code, b->status.code);
    assert_bytes(a->status.message.ptr, a->status.message.len, b->status.message.ptr, b->status.message.len);
    assert_int_equal(a->status.retryable, b->status.retryable);
    assert_int_equal(a->status.has_details, b->status.has_details);
    if (a->status.has_details)
      assert_bytes(a->status.details.ptr, a->status.details.len, b->status.details.ptr,
                   b->status.details.len);
    break;
  default:
    fail_msg("unexpected frame type %d", a->type);
  }
}

/* The spec's golden table, in order: each row's last `...` cell. */
static void test_spec_table(void **state) {
  (void)state;
  const char *data_dir = getenv("FERRY_TEST_DATA");
  if (!data_dir) {
    skip();
    return;
  }
  char path[4096];
  const char *slash = strrchr(data_dir, '/');
  assert_non_null(slash);
  snprintf(path, sizeof(path), "%.*s/../proto/rpc.md", (int)(slash - data_dir), data_dir);
  FY_AUTOFCLOSE FILE *f = fopen(path, "r");
  if (!f)
    fail_msg("cannot open %s", path);
  char line[1024];
  bool in_section = false;
  size_t row = 0;
  while (fgets(line, sizeof(line), f)) {
    if (strncmp(line, "## ", 3) == 0) {
      in_section = strncmp(line, "## Golden vectors", 17) == 0;
      continue;
    }
    if (!in_section || strncmp(line, "| ", 2) != 0 || strncmp(line, "| frame", 7) == 0 ||
        strncmp(line, "|---", 4) == 0)
      continue;
    char *end = strrchr(line, '`');
    assert_non_null(end);
    *end = '\0';
    char *start = strrchr(line, '`');
    assert_non_null(start);
    assert_true(row < FY_ARRAY_LEN(goldens));
    size_t a_len, b_len;
    FY_AUTOFREE uint8_t *a = unhex(start + 1, &a_len);
    FY_AUTOFREE uint8_t *b = unhex(goldens[row].hex, &b_len);
    assert_bytes(a, a_len, b, b_len);
    row++;
  }
  assert_int_equal(row, FY_ARRAY_LEN(goldens));
}

static void test_golden_encode(void **state) {
  (void)state;
  struct fy_err err;
  FY_AUTOBUF struct fy_buf all = FY_BUF_INIT;
  FY_AUTOBUF struct fy_buf want_all = FY_BUF_INIT;
  for (size_t i = 0; i < FY_ARRAY_LEN(goldens); i++) {
    FY_AUTOBUF struct fy_buf out = FY_BUF_INIT;
    assert_int_equal(fy_frame_encode(&out, &goldens[i].frame, 0, &err), 0);
    size_t want_len;
    FY_AUTOFREE uint8_t *want = unhex(goldens[i].hex, &want_len);
    assert_bytes(out.data, out.len, want, want_len);
    /* Appending keeps what is already there. */
    assert_int_equal(fy_frame_encode(&all, &goldens[i].frame, 0, &err), 0);
    assert_int_equal(fy_buf_append(&want_all, want, want_len, &err), 0);
  }
  assert_bytes(all.data, all.len, want_all.data, want_all.len);

  /* The MSG shortcut writes the same bytes as the general encoder. */
  FY_AUTOBUF struct fy_buf out = FY_BUF_INIT;
  assert_int_equal(fy_frame_encode_msg(&out, msg_payload, sizeof(msg_payload), 0, &err), 0);
  size_t want_len;
  FY_AUTOFREE uint8_t *want = unhex(goldens[2].hex, &want_len);
  assert_bytes(out.data, out.len, want, want_len);
}

static void test_golden_decode(void **state) {
  (void)state;
  struct fy_err err;
  for (size_t i = 0; i < FY_ARRAY_LEN(goldens); i++) {
    size_t len;
    FY_AUTOFREE uint8_t *bytes = unhex(goldens[i].hex, &len);
    struct fy_frame_reader r;
    fy_frame_reader_init(&r, 0);
    size_t used = 0;
    struct fy_rpc_bin body;
    assert_int_equal(fy_frame_reader_feed(&r, bytes, len, &used, &body, &err), 1);
    assert_int_equal(used, len);
    /* A frame that arrives whole is handed out in place. */
    assert_ptr_equal(body.ptr, bytes + FY_RPC_HEADER_LEN);
    assert_int_equal(body.len, len - FY_RPC_HEADER_LEN);
    struct fy_rpc_frame f;
    assert_int_equal(fy_frame_parse(body.ptr, body.len, &f, &err), 0);
    assert_frame_equal(&f, &goldens[i].frame);
    assert_int_equal(fy_frame_reader_finish(&r, &err), 0);
    fy_frame_reader_free(&r);
  }
}

/* ---- reader ---- */

/* A stream of every golden frame plus two larger MSG frames. */
static void make_stream(struct fy_buf *out, struct fy_rpc_frame *frames, size_t *n, uint8_t *big,
                        size_t big_len) {
  struct fy_err err;
  *n = 0;
  for (size_t i = 0; i < FY_ARRAY_LEN(goldens); i++) {
    frames[(*n)++] = goldens[i].frame;
    assert_int_equal(fy_frame_encode(out, &goldens[i].frame, 0, &err), 0);
  }
  for (size_t i = 0; i < big_len; i++)
    big[i] = (uint8_t)(i * 31 + 7);
  for (size_t k = 0; k < 2; k++) {
    struct fy_rpc_frame *f = &frames[(*n)++];
    memset(f, 0, sizeof(*f));
    f->type = FY_RPC_MSG;
    f->msg.payload = B(big + k, big_len - k);
    assert_int_equal(fy_frame_encode(out, f, 0, &err), 0);
  }
}

/* Feeds the stream in chunks of the sizes next_chunk gives and checks that
 * the reader yields exactly `frames`. */
static void run_stream(const struct fy_buf *stream, const struct fy_rpc_frame *frames, size_t n,
                       size_t (*next_chunk)(void *), void *ctx) {
  struct fy_err err;
  static uint8_t scratch[1 << 20];
  assert_true(stream->len <= sizeof(scratch));
  struct fy_frame_reader r;
  fy_frame_reader_init(&r, 0);
  size_t got = 0, pos = 0;
  while (pos < stream->len) {
    size_t chunk = next_chunk(ctx);
    if (chunk > stream->len - pos)
      chunk = stream->len - pos;
    /* A copy of the chunk alone, as QUIC hands it over: reading past it is caught. */
    uint8_t *data = scratch + sizeof(scratch) - chunk;
    memcpy(data, stream->data + pos, chunk);
    size_t off = 0;
    for (;;) {
      size_t used = 0;
      struct fy_rpc_bin body;
      int rc = fy_frame_reader_feed(&r, data + off, chunk - off, &used, &body, &err);
      assert_true(rc == 0 || rc == 1);
      off += used;
      assert_true(off <= chunk);
      assert_true(r.body.cap <= r.max_body);
      if (rc == 0) {
        assert_int_equal(off, chunk);
        break;
      }
      assert_true(got < n);
      struct fy_rpc_frame f;
      assert_int_equal(fy_frame_parse(body.ptr, body.len, &f, &err), 0);
      assert_frame_equal(&f, &frames[got]);
      got++;
      if (off == chunk)
        break;
    }
    pos += chunk;
  }
  assert_int_equal(got, n);
  assert_int_equal(fy_frame_reader_buffered(&r), 0);
  assert_int_equal(fy_frame_reader_finish(&r, &err), 0);
  fy_frame_reader_free(&r);
}

static size_t one(void *ctx) {
  (void)ctx;
  return 1;
}

static size_t random_chunk(void *ctx) {
  uint64_t *s = ctx; /* xorshift64: deterministic, no libc state */
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  switch (*s % 4) {
  case 0:
    return *s >> 8 & 7; /* tiny, including 0 */
  case 1:
    return *s >> 8 & 63;
  case 2:
    return *s >> 8 & 4095;
  default:
    return *s >> 8 & 262143;
  }
}

static void test_reader_one_byte_at_a_time(void **state) {
  (void)state;
  FY_AUTOBUF struct fy_buf stream = FY_BUF_INIT;
  struct fy_rpc_frame frames[16];
  size_t n;
  static uint8_t big[100000];
  make_stream(&stream, frames, &n, big, sizeof(big));
  run_stream(&stream, frames, n, one, NULL);
}

static void test_reader_random_splits(void **state) {
  (void)state;
  FY_AUTOBUF struct fy_buf stream = FY_BUF_INIT;
  struct fy_rpc_frame frames[16];
  size_t n;
  static uint8_t big[300000];
  make_stream(&stream, frames, &n, big, sizeof(big));
  for (uint64_t seed = 1; seed <= 200; seed++) {
    uint64_t s = seed * 0x9e3779b97f4a7c15u;
    run_stream(&stream, frames, n, random_chunk, &s);
  }
}

static void test_reader_oversized_header(void **state) {
  (void)state;
  struct fy_err err;
  struct fy_frame_reader r;
  struct fy_rpc_bin body;
  size_t used;

  /* Refused on the 4 header bytes alone, before any body byte exists. */
  fy_frame_reader_init(&r, 100);
  const uint8_t hdr101[] = {0, 0, 0, 101};
  assert_int_equal(fy_frame_reader_feed(&r, hdr101, 2, &used, &body, &err), 0);
  assert_int_equal(used, 2);
  assert_int_equal(fy_frame_reader_feed(&r, hdr101 + 2, 2, &used, &body, &err), FY_ELIMIT);
  assert_int_equal(err.code, FY_ELIMIT);
  assert_contains(err.msg, "101 bytes");
  assert_contains(err.msg, "limit of 100 bytes");
  assert_int_equal(r.body.cap, 0);
  assert_int_equal(fy_frame_quic_error(FY_ELIMIT), FY_RPC_QUIC_FRAME_TOO_LARGE);
  /* The reader is spent: later calls fail the same way. */
  assert_int_equal(fy_frame_reader_feed(&r, hdr101, 4, &used, &body, &err), FY_ELIMIT);
  assert_int_equal(used, 0);
  assert_contains(err.msg, "already failed");
  assert_int_equal(fy_frame_reader_finish(&r, &err), FY_ELIMIT);
  fy_frame_reader_free(&r);

  /* Header and (part of) the body in one chunk: nothing past the header is taken. */
  fy_frame_reader_init(&r, 100);
  uint8_t chunk[200] = {0, 0, 0, 150};
  assert_int_equal(fy_frame_reader_feed(&r, chunk, sizeof(chunk), &used, &body, &err), FY_ELIMIT);
  assert_true(used <= FY_RPC_HEADER_LEN);
  assert_int_equal(r.body.cap, 0);
  fy_frame_reader_free(&r);

  /* The default limit is 1 MiB: exactly that passes the header check, one more does not. */
  fy_frame_reader_init(&r, 0);
  const uint8_t hdr_max[] = {0x00, 0x10, 0x00, 0x00};
  assert_int_equal(fy_frame_reader_feed(&r, hdr_max, 4, &used, &body, &err), 0);
  assert_int_equal(r.body.cap, 0); /* nothing allocated for a body not yet sent */
  fy_frame_reader_free(&r);
  fy_frame_reader_init(&r, 0);
  const uint8_t hdr_over[] = {0x00, 0x10, 0x00, 0x01};
  assert_int_equal(fy_frame_reader_feed(&r, hdr_over, 4, &used, &body, &err), FY_ELIMIT);
  assert_contains(err.msg, "1048577 bytes exceeds the limit of 1048576 bytes");
  fy_frame_reader_free(&r);

  /* The largest length a header can say. */
  fy_frame_reader_init(&r, 0);
  const uint8_t hdr_huge[] = {0xff, 0xff, 0xff, 0xff};
  assert_int_equal(fy_frame_reader_feed(&r, hdr_huge, 4, &used, &body, &err), FY_ELIMIT);
  assert_contains(err.msg, "4294967295 bytes");
  fy_frame_reader_free(&r);
}

static void test_reader_zero_length(void **state) {
  (void)state;
  struct fy_err err;
  struct fy_frame_reader r;
  struct fy_rpc_bin body;
  size_t used;
  fy_frame_reader_init(&r, 0);
  const uint8_t zero[] = {0, 0, 0, 0, 0x91, 0x03};
  assert_int_equal(fy_frame_reader_feed(&r, zero, sizeof(zero), &used, &body, &err), FY_EINVAL);
  assert_int_equal(err.code, FY_EINVAL);
  assert_contains(err.msg, "length 0");
  assert_int_equal(fy_frame_quic_error(FY_EINVAL), FY_RPC_QUIC_PROTOCOL_VIOLATION);
  fy_frame_reader_free(&r);

  /* After a good frame too. */
  fy_frame_reader_init(&r, 0);
  const uint8_t after[] = {0, 0, 0, 2, 0x91, 0x03, 0, 0, 0, 0};
  assert_int_equal(fy_frame_reader_feed(&r, after, sizeof(after), &used, &body, &err), 1);
  assert_int_equal(used, 6);
  assert_int_equal(fy_frame_reader_feed(&r, after + used, sizeof(after) - used, &used, &body, &err),
                   FY_EINVAL);
  assert_contains(err.msg, "length 0");
  fy_frame_reader_free(&r);
}

static void test_reader_bounded_buffering(void **state) {
  (void)state;
  struct fy_err err;
  struct fy_frame_reader r;
  struct fy_rpc_bin body = {NULL, 0};
  size_t used;
  enum { MAX = 200000 };
  fy_frame_reader_init(&r, MAX);
  FY_AUTOBUF struct fy_buf stream = FY_BUF_INIT;
  static uint8_t payload[MAX - 7]; /* array, type and bin 32 header take 7: the body is MAX */
  memset(payload, 0x5a, sizeof(payload));
  assert_int_equal(fy_frame_encode_msg(&stream, payload, sizeof(payload), MAX, &err), 0);
  assert_int_equal(stream.len, MAX + FY_RPC_HEADER_LEN);

  /* Trickled in: the buffer grows with the bytes that came, never past the body. */
  size_t pos = 0, max_cap = 0;
  int rc = 0;
  while (pos < stream.len) {
    size_t chunk = stream.len - pos < 1000 ? stream.len - pos : 1000;
    rc = fy_frame_reader_feed(&r, stream.data + pos, chunk, &used, &body, &err);
    assert_true(rc == 0 || rc == 1);
    if (pos == 0)
      assert_int_equal(r.body.cap, 4096); /* after the first chunk: not the whole body */
    pos += used;
    if (r.body.cap > max_cap)
      max_cap = r.body.cap;
    assert_true(fy_frame_reader_buffered(&r) <= (size_t)MAX + FY_RPC_HEADER_LEN);
  }
  assert_int_equal(rc, 1);
  assert_int_equal(body.len, stream.len - FY_RPC_HEADER_LEN);
  assert_true(max_cap <= stream.len - FY_RPC_HEADER_LEN);
  assert_ptr_equal(body.ptr, r.body.data); /* assembled in the reader */
  struct fy_rpc_frame f;
  assert_int_equal(fy_frame_parse(body.ptr, body.len, &f, &err), 0);
  assert_int_equal(f.type, FY_RPC_MSG);
  assert_int_equal(f.msg.payload.len, sizeof(payload));

  /* The next call drops the big buffer (64 KiB are kept at most). */
  const uint8_t end[] = {0, 0, 0, 2, 0x91};
  assert_int_equal(fy_frame_reader_feed(&r, end, sizeof(end), &used, &body, &err), 0);
  assert_true(r.body.cap <= (size_t)64 * 1024);
  assert_int_equal(fy_frame_reader_buffered(&r), 5);
  const uint8_t end2[] = {0x03};
  assert_int_equal(fy_frame_reader_feed(&r, end2, 1, &used, &body, &err), 1);
  assert_int_equal(body.len, 2);
  assert_int_equal(fy_frame_parse(body.ptr, body.len, &f, &err), 0);
  assert_int_equal(f.type, FY_RPC_END);
  fy_frame_reader_free(&r);
}

static void test_reader_finish(void **state) {
  (void)state;
  struct fy_err err;
  struct fy_frame_reader r;
  struct fy_rpc_bin body;
  size_t used;

  fy_frame_reader_init(&r, 0);
  assert_int_equal(fy_frame_reader_finish(&r, &err), 0); /* an empty stream ends cleanly */
  const uint8_t part[] = {0, 0, 0, 9, 0x92, 0x02};
  assert_int_equal(fy_frame_reader_feed(&r, part, 2, &used, &body, &err), 0);
  assert_int_equal(fy_frame_reader_buffered(&r), 2);
  assert_int_equal(fy_frame_reader_finish(&r, &err), FY_EINVAL);
  assert_contains(err.msg, "after 2 of 4 frame header bytes");
  fy_frame_reader_free(&r);

  fy_frame_reader_init(&r, 0);
  assert_int_equal(fy_frame_reader_feed(&r, part, sizeof(part), &used, &body, &err), 0);
  assert_int_equal(used, sizeof(part));
  assert_int_equal(fy_frame_reader_buffered(&r), 6);
  assert_int_equal(fy_frame_reader_finish(&r, &err), FY_EINVAL);
  assert_contains(err.msg, "ended 2 bytes into a frame body of 9 bytes");
  fy_frame_reader_free(&r);

  /* Empty chunks are harmless. */
  fy_frame_reader_init(&r, 0);
  assert_int_equal(fy_frame_reader_feed(&r, NULL, 0, &used, &body, &err), 0);
  assert_int_equal(used, 0);
  assert_int_equal(fy_frame_reader_feed(&r, part, 4, &used, &body, &err), 0);
  assert_int_equal(fy_frame_reader_feed(&r, NULL, 0, &used, &body, &err), 0);
  assert_int_equal(fy_frame_reader_buffered(&r), 4);
  fy_frame_reader_free(&r);
}

/* ---- malformed bodies ---- */

struct bad {
  const char *hex;
  const char *want;
};

static const struct bad bad_bodies[] = {
    {"81 a161 01", "RPC frame: body is a msgpack map; expected an array"},
    {"03", "RPC frame: body is a msgpack uint; expected an array"},
    {"90", "empty array"},
    {"91 a131", "RPC frame: type: expected uint, got str"},
    {"91 ff", "RPC frame: type: expected uint, got negative int"},
    {"91 00", "type 0 is not CALL(1), MSG(2), END(3) or STATUS(4)"},
    {"91 05", "type 5 is not"},
    {"91 cf ffffffffffffffff", "type 18446744073709551615 is not"},
    {"92 03 c0", "END frame has 2 elements; expected 1"},
    {"91 02", "MSG frame has 1 elements; expected 2"},
    {"93 02 c400 c0", "MSG frame has 3 elements; expected 2"},
    {"92 02 a178", "MSG frame: payload: expected bin, got str"},
    {"92 02 c0", "MSG frame: payload: expected bin, got nil"},
    {"92 02 d40100", "MSG frame: payload: expected bin, got ext"},
    {"93 01 a3612e62 00", "CALL frame has 3 elements; expected 4"},
    {"95 01 a3612e62 00 80 c0", "CALL frame has 5 elements; expected 4"},
    {"94 01 c403612e62 00 80", "CALL frame: method: expected str, got bin"},
    {"94 01 a0 00 80", "CALL frame: method is empty"},
    {"94 01 a3616263 00 80", "CALL frame: method \"abc\" has no '.'; expected service.method"},
    {"94 01 a3612e2e 00 80", "CALL frame: method has an empty segment at position 2"},
    {"94 01 a32e6162 00 80", "CALL frame: method has an empty segment at position 0"},
    {"94 01 a361622e 00 80", "CALL frame: method has an empty segment at position 2"},
    {"94 01 a3612e2e 00 80", "empty segment"},
    {"94 01 a5612062 2e63 00 80", "CALL frame: method: ' ' at position 1 is not a letter"},
    {"94 01 a4612e62c3 00 80", "CALL frame: method: byte 0xc3 at position 3"},
    {"94 01 a3612f62 00 80", "CALL frame: method: '/' at position 1"},
    {"94 01 a3612e62 ff 80", "CALL frame: deadline_ms: expected uint, got negative int"},
    {"94 01 a3612e62 cb3ff0000000000000 80", "CALL frame: deadline_ms: expected uint, got float"},
    {"94 01 a3612e62 c0 80", "CALL frame: deadline_ms: expected uint, got nil"},
    {"94 01 a3612e62 cf0000000100000000 80", "CALL frame: deadline_ms 4294967296 is more than 4294967295"},
    {"94 01 a3612e62 00 90", "CALL frame: metadata: expected map, got array"},
    {"94 01 a3612e62 00 c0", "CALL frame: metadata: expected map, got nil"},
    {"94 01 a3612e62 00 81 01a178", "CALL frame: metadata key 0: expected str, got uint"},
    {"94 01 a3612e62 00 81 c4016ba178", "CALL frame: metadata key 0: expected str, got bin"},
    {"94 01 a3612e62 00 82 a16ba178 a141a178", "CALL frame: metadata key 1: 'A' at position 0 is not one of"},
    {"94 01 a3612e62 00 81 a0a178", "CALL frame: metadata key 0 is empty"},
    {"94 01 a3612e62 00 81 a16b90", "CALL frame: metadata \"k\": expected str or bin, got array"},
    {"94 01 a3612e62 00 81 a16b01", "CALL frame: metadata \"k\": expected str or bin, got uint"},
    {"94 01 a3612e62 00 82 a16ba178 a16bc400", "CALL frame: metadata key \"k\" appears twice"},
    {"93 04 00 a0", "STATUS frame has 3 elements; expected 4 or 5"},
    {"96 04 00 a0 c2 c0 c0", "STATUS frame has 6 elements; expected 4 or 5"},
    {"94 04 a130 a0 c2", "STATUS frame: code: expected int, got str"},
    {"94 04 0b a0 c2", "STATUS frame: code 11 is not a status code of the spec"},
    {"94 04 0f a0 c2", "STATUS frame: code 15 is not"},
    {"94 04 11 a0 c2", "STATUS frame: code 17 is not"},
    {"94 04 ff a0 c2", "STATUS frame: code -1 is not"},
    {"94 04 d3 8000000000000000 a0 c2", "STATUS frame: code -9223372036854775808 is not"},
    {"94 04 ce 00010000 a0 c2", "STATUS frame: code 65536 is not"},
    {"94 04 cf ffffffffffffffff a0 c2", "STATUS frame: code 18446744073709551615 is not"},
    {"94 04 00 c400 c2", "STATUS frame: message: expected str, got bin"},
    {"94 04 00 a0 00", "STATUS frame: retryable: expected bool, got uint"},
    {"94 04 00 a0 c0", "STATUS frame: retryable: expected bool, got nil"},
    {"95 04 00 a0 c2 a0", "STATUS frame: details: expected bin or nil, got str"},
    {"95 04 00 a0 c2 80", "STATUS frame: details: expected bin or nil, got map"},
    /* Trailing bytes, truncation, bytes that are not msgpack. */
    {"91 03 00", "RPC frame: 1 bytes after the msgpack array"},
    {"91 03 91 03", "RPC frame: 2 bytes after the msgpack array"},
    {"92 02 c405 81", "MSG frame: payload: msgpack value truncated at offset 2"},
    {"92 02 c6 ffffffff", "MSG frame: payload: msgpack value truncated"},
    {"92 02", "MSG frame: payload: msgpack value truncated at offset 2"},
    {"94 01 a3612e", "CALL frame: method: msgpack value truncated"},
    {"dc 00", "RPC frame: msgpack value truncated at offset 0"},
    {"92 02 c1", "MSG frame: payload: byte 0xc1 at offset 2 is not msgpack"},
    {"c1", "RPC frame: byte 0xc1 at offset 0 is not msgpack"},
    /* Nesting and container sizes, checked before msgpack-c allocates. */
    {"94 01 a3612e62 00 81 a16b 91919191919190", "CALL frame: metadata: msgpack nested deeper than 8 levels"},
    {"91 91 91 91 91 91 91 91 91 90", "RPC frame: element 0: msgpack nested deeper than 8 levels"},
    {"94 01 a3612e62 00 dd ffffffff", "CALL frame: metadata: more than 256 array and map elements"},
    {"94 01 a3612e62 00 df ffffffff", "CALL frame: metadata: more than 256 array and map elements"},
    {"dd ffffffff", "RPC frame: more than 256 array and map elements"},
    {"92 02 dc0100", "MSG frame: payload: more than 256 array and map elements"},
};

static void check_bad(const uint8_t *body, size_t len, const char *want, int code) {
  struct fy_err err;
  fy_err_clear(&err);
  struct fy_rpc_frame f;
  f.type = 99;
  int rc = fy_frame_parse(body, len, &f, &err);
  if (rc != code)
    fail_msg("parse returned %d (%s), want %d for \"%s\"", rc, err.msg, code, want);
  assert_int_equal(err.code, code);
  assert_int_equal(f.type, 0);
  assert_contains(err.msg, want);
}

static void test_parse_malformed(void **state) {
  (void)state;
  for (size_t i = 0; i < FY_ARRAY_LEN(bad_bodies); i++) {
    size_t len;
    FY_AUTOFREE uint8_t *body = unhex(bad_bodies[i].hex, &len);
    check_bad(body, len, bad_bodies[i].want, FY_EINVAL);
  }
  check_bad((const uint8_t *)"", 0, "empty body", FY_EINVAL);
}

/* Bodies too long to write out in hex. */
static void test_parse_over_long_fields(void **state) {
  (void)state;
  uint8_t body[2048];
  size_t n;

  /* A 129-byte method (str 8). */
  n = 0;
  body[n++] = 0x94, body[n++] = 0x01, body[n++] = 0xd9, body[n++] = 129;
  memset(body + n, 'a', 129);
  body[n + 1] = '.';
  n += 129;
  body[n++] = 0x00, body[n++] = 0x80;
  check_bad(body, n, "CALL frame: method is 129 bytes; at most 128", FY_EINVAL);
  /* 128 bytes are fine. */
  body[3] = 128;
  memmove(body + 4 + 128, body + 4 + 129, 2);
  struct fy_rpc_frame f;
  struct fy_err err;
  assert_int_equal(fy_frame_parse(body, n - 1, &f, &err), 0);
  assert_int_equal(f.call.method.len, 128);

  /* A 65-byte metadata key. */
  n = 0;
  body[n++] = 0x94, body[n++] = 0x01, body[n++] = 0xa3, body[n++] = 'a', body[n++] = '.', body[n++] = 'b';
  body[n++] = 0x00, body[n++] = 0x81, body[n++] = 0xd9, body[n++] = 65;
  memset(body + n, 'k', 65);
  n += 65;
  body[n++] = 0xa0;
  check_bad(body, n, "CALL frame: metadata key 0 is 65 bytes; at most 64", FY_EINVAL);

  /* 33 metadata entries (map 16). */
  n = 0;
  body[n++] = 0x94, body[n++] = 0x01, body[n++] = 0xa3, body[n++] = 'a', body[n++] = '.', body[n++] = 'b';
  body[n++] = 0x00, body[n++] = 0xde, body[n++] = 0x00, body[n++] = 33;
  for (int i = 0; i < 33; i++) {
    body[n++] = 0xa2, body[n++] = (uint8_t)('a' + i / 26), body[n++] = (uint8_t)('a' + i % 26);
    body[n++] = 0xa0;
  }
  check_bad(body, n, "CALL frame: metadata has 33 entries; at most 32", FY_EINVAL);

  /* A 1025-byte STATUS message (str 16). */
  n = 0;
  body[n++] = 0x94, body[n++] = 0x04, body[n++] = 0x02, body[n++] = 0xda, body[n++] = 0x04, body[n++] = 0x01;
  memset(body + n, 'm', 1025);
  n += 1025;
  body[n++] = 0xc2;
  check_bad(body, n, "STATUS frame: message is 1025 bytes; at most 1024", FY_EINVAL);
}

/* Receivers take any valid encoding, not only the shortest. */
static void test_parse_non_canonical(void **state) {
  (void)state;
  static const char *const ok[] = {
      "dc0001 03",                          /* array 16, END */
      "dd00000001 cc03",                    /* array 32, uint 8 type */
      "94 01 d903612e62 ce00001388 de0000", /* str 8, uint 32, map 16 */
      "92 02 c60000000161",                 /* bin 32 */
      "95 d004 d000 da0000 c3 c0",          /* int 8, str 16, nil details */
  };
  struct fy_err err;
  for (size_t i = 0; i < FY_ARRAY_LEN(ok); i++) {
    size_t len;
    FY_AUTOFREE uint8_t *body = unhex(ok[i], &len);
    struct fy_rpc_frame f;
    if (fy_frame_parse(body, len, &f, &err) != 0)
      fail_msg("%s: %s", ok[i], err.msg);
  }
  size_t len;
  FY_AUTOFREE uint8_t *body = unhex("95 d004 d000 da0000 c3 c0", &len);
  struct fy_rpc_frame f;
  assert_int_equal(fy_frame_parse(body, len, &f, &err), 0);
  assert_int_equal(f.type, FY_RPC_STATUS);
  assert_false(f.status.has_details); /* nil is the same as absent */
  assert_true(f.status.retryable);
}

/* ---- round trips and the encoder's own checks ---- */

static void round_trip(const struct fy_rpc_frame *in) {
  struct fy_err err;
  FY_AUTOBUF struct fy_buf out = FY_BUF_INIT;
  if (fy_frame_encode(&out, in, 0, &err) != 0)
    fail_msg("encode: %s", err.msg);
  struct fy_frame_reader r;
  fy_frame_reader_init(&r, 0);
  size_t used;
  struct fy_rpc_bin body;
  assert_int_equal(fy_frame_reader_feed(&r, out.data, out.len, &used, &body, &err), 1);
  assert_int_equal(used, out.len);
  struct fy_rpc_frame f;
  if (fy_frame_parse(body.ptr, body.len, &f, &err) != 0)
    fail_msg("parse: %s", err.msg);
  assert_frame_equal(&f, in);
  /* And back to the same bytes. */
  FY_AUTOBUF struct fy_buf again = FY_BUF_INIT;
  assert_int_equal(fy_frame_encode(&again, &f, 0, &err), 0);
  assert_bytes(again.data, again.len, out.data, out.len);
  fy_frame_reader_free(&r);
}

static void test_round_trip_each_type(void **state) {
  (void)state;
  static char method[FY_RPC_METHOD_MAX + 1];
  memset(method, 'x', FY_RPC_METHOD_MAX);
  method[5] = '.';
  method[60] = '.';
  static char keys[FY_RPC_META_MAX][FY_RPC_META_KEY_MAX + 1];
  static uint8_t values[FY_RPC_META_MAX][300];

  struct fy_rpc_frame call = {.type = FY_RPC_CALL};
  call.call.method = S(method);
  call.call.deadline_ms = UINT32_MAX;
  call.call.meta_len = FY_RPC_META_MAX;
  for (size_t i = 0; i < FY_RPC_META_MAX; i++) {
    memset(keys[i], 'a' + (int)(i % 26), FY_RPC_META_KEY_MAX);
    keys[i][0] = (char)('0' + i / 10);
    keys[i][1] = (char)('0' + i % 10);
    keys[i][2] = '-', keys[i][3] = '_', keys[i][4] = '.';
    size_t klen = i == 0 ? 1 : FY_RPC_META_KEY_MAX - i;
    keys[i][klen] = '\0';
    if (i == 0)
      keys[i][0] = 'z';
    for (size_t j = 0; j < sizeof(values[i]); j++)
      values[i][j] = (uint8_t)(i % 2 ? i + j : 'a' + (i + j) % 26);
    call.call.meta[i] = (struct fy_rpc_meta){S(keys[i]), B(values[i], i * 9 % 300), i % 2 == 1};
  }
  round_trip(&call);

  call.call.deadline_ms = 0;
  call.call.meta_len = 0;
  call.call.method = S("S_1.m-2");
  round_trip(&call);

  struct fy_rpc_frame msg = {.type = FY_RPC_MSG};
  round_trip(&msg); /* empty payload */
  static uint8_t payload[70000];
  for (size_t i = 0; i < sizeof(payload); i++)
    payload[i] = (uint8_t)(i ^ (i >> 8));
  size_t sizes[] = {1, 31, 32, 255, 256, 65535, 65536, sizeof(payload)};
  for (size_t i = 0; i < FY_ARRAY_LEN(sizes); i++) {
    msg.msg.payload = B(payload, sizes[i]);
    round_trip(&msg);
  }

  struct fy_rpc_frame end = {.type = FY_RPC_END};
  round_trip(&end);

  static const int codes[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 16};
  static char message[FY_RPC_MESSAGE_MAX];
  memset(message, 'e', sizeof(message));
  for (size_t i = 0; i < FY_ARRAY_LEN(codes); i++) {
    struct fy_rpc_frame st = {.type = FY_RPC_STATUS};
    st.status.code = codes[i];
    st.status.message = (struct fy_rpc_str){message, i * 73 % (FY_RPC_MESSAGE_MAX + 1)};
    st.status.retryable = i % 2;
    st.status.has_details = i % 3 != 0;
    st.status.details = B(payload, i * 100);
    round_trip(&st);
  }
  struct fy_rpc_frame st = {.type = FY_RPC_STATUS};
  st.status.code = FY_RPC_INTERNAL;
  st.status.message = (struct fy_rpc_str){message, FY_RPC_MESSAGE_MAX};
  round_trip(&st);
}

static void check_encode_fails(const struct fy_rpc_frame *f, uint32_t max, int code, const char *want) {
  struct fy_err err;
  FY_AUTOBUF struct fy_buf out = FY_BUF_INIT;
  assert_int_equal(fy_buf_append(&out, "keep", 4, &err), 0);
  int rc = fy_frame_encode(&out, f, max, &err);
  if (rc != code)
    fail_msg("encode returned %d (%s), want %d for \"%s\"", rc, err.msg, code, want);
  assert_contains(err.msg, want);
  assert_int_equal(out.len, 4); /* nothing half-written */
  assert_memory_equal(out.data, "keep", 4);
}

static void test_encode_refuses(void **state) {
  (void)state;
  struct fy_rpc_frame f = {.type = FY_RPC_CALL};
  f.call.method = S("nodot");
  check_encode_fails(&f, 0, FY_EINVAL, "CALL frame: method \"nodot\" has no '.'");
  f.call.method = S("a.b");
  f.call.meta_len = FY_RPC_META_MAX + 1;
  check_encode_fails(&f, 0, FY_EINVAL, "metadata has 33 entries; at most 32");
  f.call.meta_len = 2;
  f.call.meta[0] = (struct fy_rpc_meta){S("k"), B("v", 1), false};
  f.call.meta[1] = (struct fy_rpc_meta){S("k"), B("w", 1), true};
  check_encode_fails(&f, 0, FY_EINVAL, "metadata key \"k\" appears twice");
  f.call.meta[1].key = S("Upper");
  check_encode_fails(&f, 0, FY_EINVAL, "metadata key 1: 'U' at position 0");

  struct fy_rpc_frame st = {.type = FY_RPC_STATUS};
  st.status.code = 11;
  check_encode_fails(&st, 0, FY_EINVAL, "code 11 is not a status code");
  st.status.code = -3;
  check_encode_fails(&st, 0, FY_EINVAL, "code -3 is not");
  static char message[FY_RPC_MESSAGE_MAX + 1];
  memset(message, 'm', sizeof(message));
  st.status.code = FY_RPC_INTERNAL;
  st.status.message = (struct fy_rpc_str){message, sizeof(message)};
  check_encode_fails(&st, 0, FY_EINVAL, "message is 1025 bytes; at most 1024");
  st.status.message = S("x");
  st.status.has_details = true;
  static uint8_t big[2000];
  st.status.details = B(big, sizeof(big));
  check_encode_fails(&st, 1000, FY_ELIMIT, "details of 2000 bytes exceed the limit of 1000 bytes");
  check_encode_fails(&st, 2000, FY_ELIMIT,
                     "STATUS frame: body of 2009 bytes exceeds the limit of 2000 bytes");

  struct fy_rpc_frame bad = {.type = 7};
  check_encode_fails(&bad, 0, FY_EINVAL, "type 7 is not");

  /* A payload at the limit leaves no room for the frame's own bytes. */
  struct fy_rpc_frame msg = {.type = FY_RPC_MSG};
  msg.msg.payload = B(big, 1000);
  check_encode_fails(&msg, 999, FY_ELIMIT, "payload of 1000 bytes exceeds the limit of 999 bytes");
  check_encode_fails(&msg, 1000, FY_ELIMIT, "MSG frame: body of 1005 bytes exceeds the limit of 1000 bytes");
  struct fy_err err;
  FY_AUTOBUF struct fy_buf out = FY_BUF_INIT;
  assert_int_equal(fy_frame_encode_msg(&out, big, 1000, 1005, &err), 0);
  assert_int_equal(out.len, 1009);
  assert_int_equal(fy_frame_encode_msg(&out, big, 1000, 1004, &err), FY_ELIMIT);
  assert_int_equal(out.len, 1009);
  assert_int_equal(fy_frame_encode_msg(&out, big, 2000, 1004, NULL), FY_ELIMIT);
}

static void test_names(void **state) {
  (void)state;
  assert_string_equal(fy_rpc_type_name(FY_RPC_CALL), "CALL");
  assert_string_equal(fy_rpc_type_name(FY_RPC_STATUS), "STATUS");
  assert_null(fy_rpc_type_name(0));
  assert_null(fy_rpc_type_name(5));
  assert_string_equal(fy_rpc_code_name(FY_RPC_OK), "OK");
  assert_string_equal(fy_rpc_code_name(12), "UNIMPLEMENTED");
  assert_string_equal(fy_rpc_code_name(16), "UNAUTHENTICATED");
  assert_null(fy_rpc_code_name(11));
  assert_null(fy_rpc_code_name(15));
  assert_null(fy_rpc_code_name(17));
  assert_null(fy_rpc_code_name(-1));
  int known = 0;
  for (int c = -5; c < 40; c++)
    known += fy_rpc_code_name(c) != NULL;
  assert_int_equal(known, 15);
  assert_int_equal(fy_frame_quic_error(FY_ENOMEM), FY_RPC_QUIC_CANCELLED);
  assert_int_equal(FY_RPC_QUIC_CANCELLED, 0x46590001);
  assert_int_equal(FY_RPC_QUIC_FRAME_TOO_LARGE, 0x46590002);
  assert_int_equal(FY_RPC_QUIC_PROTOCOL_VIOLATION, 0x46590003);
}

static int setup(void **state) {
  (void)state;
  make_goldens();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_spec_table),
      cmocka_unit_test(test_golden_encode),
      cmocka_unit_test(test_golden_decode),
      cmocka_unit_test(test_reader_one_byte_at_a_time),
      cmocka_unit_test(test_reader_random_splits),
      cmocka_unit_test(test_reader_oversized_header),
      cmocka_unit_test(test_reader_zero_length),
      cmocka_unit_test(test_reader_bounded_buffering),
      cmocka_unit_test(test_reader_finish),
      cmocka_unit_test(test_parse_malformed),
      cmocka_unit_test(test_parse_over_long_fields),
      cmocka_unit_test(test_parse_non_canonical),
      cmocka_unit_test(test_round_trip_each_type),
      cmocka_unit_test(test_encode_refuses),
      cmocka_unit_test(test_names),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
