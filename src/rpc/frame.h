/* RPC frames: the codec for proto/rpc.md, independent of QUIC.
 *
 * A call rides on one QUIC bidirectional stream as a sequence of frames, each
 * a 4-byte big-endian body length and a body that is exactly one msgpack array
 * whose first element is the frame type:
 *
 *   CALL   [1, method, deadline_ms, metadata]   client -> server, first frame
 *   MSG    [2, payload]                         either way, any number
 *   END    [3]                                  client: no more requests
 *   STATUS [4, code, message, retryable(, details)]  server -> client, last
 *
 * Three pieces, used in this order on received bytes:
 *
 *   fy_frame_reader_feed  cuts stream data (any chunking) into frame bodies,
 *                         refusing an over-limit length from its header alone
 *   fy_frame_parse        checks one body and fills a struct fy_rpc_frame
 *   fy_frame_encode       appends one frame (header + body) to a struct fy_buf
 *
 * Errors: FY_EINVAL for a malformed frame (the message names the field),
 * FY_ELIMIT for a frame over the receiver's size limit. Either ends the call:
 * reset the stream with fy_frame_quic_error(rc).
 *
 * Zero copy: strings and byte fields of a parsed frame point into the body
 * passed to fy_frame_parse, and bodies from the reader point into the data
 * passed to fy_frame_reader_feed or into the reader itself. Nothing in a
 * struct fy_rpc_frame is owned or NUL-terminated. */
#ifndef FY_RPC_FRAME_H
#define FY_RPC_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "base/err.h"

#define FY_RPC_HEADER_LEN 4
#define FY_RPC_MAX_BODY_DEFAULT (1024u * 1024u) /* receivers' default limit on a body */
#define FY_RPC_METHOD_MAX 128                   /* bytes of "service.method" */
#define FY_RPC_MESSAGE_MAX 1024                 /* bytes of a STATUS message */
#define FY_RPC_META_MAX 32                      /* metadata entries in a CALL */
#define FY_RPC_META_KEY_MAX 64                  /* bytes of one metadata key */
#define FY_RPC_MAX_DEPTH 8                      /* msgpack nesting in a body */
#define FY_RPC_MAX_ELEMENTS 256                 /* array + map elements in a body */

/* QUIC application error codes for RESET_STREAM and STOP_SENDING. */
#define FY_RPC_QUIC_CANCELLED UINT64_C(0x46590001)
#define FY_RPC_QUIC_FRAME_TOO_LARGE UINT64_C(0x46590002)
#define FY_RPC_QUIC_PROTOCOL_VIOLATION UINT64_C(0x46590003)

enum fy_rpc_type {
  FY_RPC_CALL = 1,
  FY_RPC_MSG = 2,
  FY_RPC_END = 3,
  FY_RPC_STATUS = 4,
};

/* gRPC's numbering; 11 and 15 (OUT_OF_RANGE, DATA_LOSS) are not used. */
enum fy_rpc_code {
  FY_RPC_OK = 0,
  FY_RPC_CANCELLED = 1,
  FY_RPC_UNKNOWN = 2,
  FY_RPC_INVALID_ARGUMENT = 3,
  FY_RPC_DEADLINE_EXCEEDED = 4,
  FY_RPC_NOT_FOUND = 5,
  FY_RPC_ALREADY_EXISTS = 6,
  FY_RPC_PERMISSION_DENIED = 7,
  FY_RPC_RESOURCE_EXHAUSTED = 8,
  FY_RPC_FAILED_PRECONDITION = 9,
  FY_RPC_ABORTED = 10,
  FY_RPC_UNIMPLEMENTED = 12,
  FY_RPC_INTERNAL = 13,
  FY_RPC_UNAVAILABLE = 14,
  FY_RPC_UNAUTHENTICATED = 16,
};

/* Bytes that are not ours: a msgpack str (text, not NUL-terminated) ... */
struct fy_rpc_str {
  const char *ptr;
  size_t len;
};

/* ... and a msgpack bin. ptr may be NULL when len is 0. */
struct fy_rpc_bin {
  const uint8_t *ptr;
  size_t len;
};

/* One metadata entry: key is 1..64 bytes of [a-z0-9_.-]; the value is sent
 * as a msgpack bin when `binary`, else as a str (then it is text). */
struct fy_rpc_meta {
  struct fy_rpc_str key;
  struct fy_rpc_bin value;
  bool binary;
};

struct fy_rpc_call {
  struct fy_rpc_str method; /* "service.method": segments of [A-Za-z0-9_-] joined by '.' */
  uint32_t deadline_ms;     /* budget from the server's receipt of CALL; 0 = none */
  size_t meta_len;
  struct fy_rpc_meta meta[FY_RPC_META_MAX]; /* keys unique */
};

struct fy_rpc_msg {
  struct fy_rpc_bin payload;
};

struct fy_rpc_status {
  int code; /* enum fy_rpc_code */
  struct fy_rpc_str message;
  bool retryable;
  bool has_details; /* false: details absent (encoded as 4 elements) or nil */
  struct fy_rpc_bin details;
};

struct fy_rpc_frame {
  int type; /* enum fy_rpc_type; END has no fields */
  union {
    struct fy_rpc_call call;
    struct fy_rpc_msg msg;
    struct fy_rpc_status status;
  };
};

/* "CALL", "MSG", ... / "OK", "NOT_FOUND", ...; NULL for a value not in the spec. */
const char *fy_rpc_type_name(int type);
const char *fy_rpc_code_name(int code);

/* The QUIC application error code to reset a stream with after rc, an error
 * from the reader or the parser: FRAME_TOO_LARGE for FY_ELIMIT,
 * PROTOCOL_VIOLATION for FY_EINVAL, CANCELLED for anything else (local
 * failures such as FY_ENOMEM). */
uint64_t fy_frame_quic_error(int rc);

/* Appends one frame, header and body, to out. max_body is the largest body
 * the peer accepts (0: FY_RPC_MAX_BODY_DEFAULT); a larger one is FY_ELIMIT.
 * Fields are checked as fy_frame_parse checks them (FY_EINVAL naming the
 * field), so ferry never sends what it would refuse. On error out keeps its
 * old length. out owns nothing of f afterwards: the bytes are copied. */
int fy_frame_encode(struct fy_buf *out, const struct fy_rpc_frame *f, uint32_t max_body, struct fy_err *err);

/* The same for the common MSG frame, without filling a struct fy_rpc_frame. */
int fy_frame_encode_msg(struct fy_buf *out, const void *payload, size_t len, uint32_t max_body,
                        struct fy_err *err);

/* Checks one frame body (the bytes after the length header) and fills out.
 * Anything but exactly one msgpack array of the spec's shape is FY_EINVAL:
 * wrong frame type, arity, field type, an out-of-range code, an over-long or
 * ill-formed method, a bad or duplicate metadata key, trailing bytes, nesting
 * deeper than FY_RPC_MAX_DEPTH or more than FY_RPC_MAX_ELEMENTS container
 * elements. The message names the frame and field ("CALL frame: method: ...").
 * Lifetime: out points into body and is valid as long as body is. */
int fy_frame_parse(const uint8_t *body, size_t len, struct fy_rpc_frame *out, struct fy_err *err);

/* Cuts a stream's bytes into frame bodies, whatever the chunking.
 *
 * Buffering is bounded: a frame's 4-byte header is checked before any of its
 * body is taken (length 0 is FY_EINVAL, over max_body is FY_ELIMIT, both
 * naming the size), and at most one body, grown as its bytes arrive, is kept.
 * A body that arrives whole in one chunk is not copied at all. After an error
 * the reader is spent: every later call returns the same code. */
struct fy_frame_reader {
  uint32_t max_body;
  uint32_t body_len; /* of the frame being read, once hdr_len is 4 */
  uint8_t hdr[FY_RPC_HEADER_LEN];
  uint8_t hdr_len;
  bool yielded; /* the last body returned lives in `body`: drop it next call */
  int failed;   /* 0, or the error that ended the stream */
  struct fy_buf body;
};

/* max_body 0 means FY_RPC_MAX_BODY_DEFAULT. Allocates nothing. */
void fy_frame_reader_init(struct fy_frame_reader *r, uint32_t max_body);

/* Consumes bytes of data[0..len) up to the end of the next complete frame.
 * Returns 1 when a frame is complete: *body is its body, *used how many bytes
 * of data were consumed; call again with data + *used for the rest. Returns 0
 * when all of data was consumed (*used == len) without completing a frame,
 * and a negative FY_E* code when the stream must be reset.
 *
 * Lifetime of *body: until the next call on r, and (when no partial frame was
 * buffered) no longer than data itself. Copy or parse it before either. */
int fy_frame_reader_feed(struct fy_frame_reader *r, const uint8_t *data, size_t len, size_t *used,
                         struct fy_rpc_bin *body, struct fy_err *err);

/* At the end of the stream (QUIC FIN): 0 when it ended between frames,
 * FY_EINVAL naming how much of a frame was cut off, or the reader's error. */
int fy_frame_reader_finish(struct fy_frame_reader *r, struct fy_err *err);

/* Bytes of an unfinished frame held by r (header and body). */
size_t fy_frame_reader_buffered(const struct fy_frame_reader *r);

/* Frees what r holds; r can be initialised again. */
void fy_frame_reader_free(struct fy_frame_reader *r);

#endif
