/* RPC calls over QUIC (ALPN "ferry/rpc/1"): one bidirectional stream per
 * call, frames as in proto/rpc.md.
 *
 * Every call shape is the same machine: the client sends CALL, any number of
 * MSG, then END; the server sends any number of MSG, then STATUS, and both
 * sides finish their stream. Unary is one MSG each way; server streaming is
 * one in, many out; client streaming many in, one out; bidirectional many
 * both ways.
 *
 * Deadlines: the client's deadline travels in CALL. The client gives up
 * locally (stream reset, DEADLINE_EXCEEDED) when it passes; the server
 * cancels the handler at the same budget measured from its receipt of CALL.
 * Cancellation either way is a stream reset with FY_RPC_QUIC_CANCELLED.
 *
 * Backpressure: sending returns the stream's unacknowledged bytes; a
 * producer stops above its own mark and resumes on on_writable. Past
 * send_buffer_max unacknowledged bytes a send fails with FY_EAGAIN and
 * buffers nothing, so a slow reader bounds what a sender holds. Received
 * bytes open the QUIC flow-control window only once the handler returns.
 *
 * Lifetimes: a call object lives until its final callback (on_status for the
 * client, on_cancel or the return of fy_rpc_finish for the server) and must
 * not be used after it. Everything runs on the loop given to fy_rpc_new. */
#ifndef FY_RPC_RPC_H
#define FY_RPC_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "base/err.h"
#include "crypto/nodeid.h"
#include "net/quic.h"
#include "rpc/frame.h"

#define FY_RPC_ALPN "ferry/rpc/1"

struct fy_rpc;
struct fy_rpc_scall; /* a call as the server sees it */
struct fy_rpc_ccall; /* a call as the client sees it */

struct fy_rpc_method {
  const char *name; /* "service.method" */
  void *user;
  /* CALL arrived. Every other callback is optional. */
  void (*on_start)(struct fy_rpc_scall *call, void *user);
  /* One request message; the bytes are valid during the call only. */
  void (*on_msg)(struct fy_rpc_scall *call, const uint8_t *payload, size_t len, void *user);
  /* The client sent END: no more requests. */
  void (*on_end)(struct fy_rpc_scall *call, void *user);
  /* Unacknowledged response bytes fell below the low-water mark. */
  void (*on_writable)(struct fy_rpc_scall *call, void *user);
  /* The call is over without our STATUS: cancelled by the client, past its
   * deadline, or the connection is gone. The call is freed after this. */
  void (*on_cancel)(struct fy_rpc_scall *call, int code, void *user);
};

/* How a call ended, as the client learns it. */
struct fy_rpc_result {
  int code; /* enum fy_rpc_code */
  const char *message;
  bool retryable;
  bool local; /* decided here (deadline, cancel, connection lost), not by the server */
  const uint8_t *details;
  size_t details_len;
};

struct fy_rpc_call_cb {
  void (*on_msg)(struct fy_rpc_ccall *call, const uint8_t *payload, size_t len, void *user);
  void (*on_writable)(struct fy_rpc_ccall *call, void *user);
  /* The last callback; the call is freed after it returns. */
  void (*on_status)(struct fy_rpc_ccall *call, const struct fy_rpc_result *result, void *user);
};

struct fy_rpc_config {
  const struct fy_rpc_method *methods; /* borrowed */
  size_t nmethods;
  uint32_t max_frame;          /* largest frame body we accept; 0: 1 MiB */
  uint32_t max_calls_per_conn; /* concurrent server calls per connection; 0: 1024 */
  uint64_t send_buffer_max;    /* unacknowledged bytes per call before FY_EAGAIN; 0: 8 MiB */
};

int fy_rpc_new(struct fy_rpc **out, uv_loop_t *loop, const struct fy_rpc_config *cfg, struct fy_err *err);
/* Frees the registry; every connection using it must be closed first. */
void fy_rpc_free(struct fy_rpc *r);

/* The QUIC handler to register for FY_RPC_ALPN. user belongs to the RPC layer. */
struct fy_quic_handler fy_rpc_quic_handler(struct fy_rpc *r);

/* Chains a second handler's on_open/on_close after the RPC layer's own, so a
 * connection manager can watch the connections it dials. */
void fy_rpc_set_conn_observer(struct fy_rpc *r, uint64_t (*on_open)(struct fy_qconn *, void *),
                              void (*on_close)(struct fy_qconn *, const struct fy_qclose *, void *),
                              void *user);

/* The user pointer the dialer gave fy_quic_dial (the RPC layer holds the
 * connection's own user slot once it is open). */
void *fy_rpc_conn_user(const struct fy_qconn *qc);

/* ---- client -------------------------------------------------------------- */

/* Starts a call on an open connection. deadline_ms 0 means none. */
int fy_rpc_start(struct fy_rpc *r, struct fy_qconn *conn, const char *method, uint32_t deadline_ms,
                 const struct fy_rpc_call_cb *cb, void *user, struct fy_rpc_ccall **out, struct fy_err *err);
/* A request message; >= 0 is the call's unacknowledged bytes. */
int64_t fy_rpc_send(struct fy_rpc_ccall *call, const uint8_t *payload, size_t len);
/* No more requests. */
int fy_rpc_end(struct fy_rpc_ccall *call);
/* Gives up: resets the stream both ways; on_status (CANCELLED, local) follows. */
void fy_rpc_cancel(struct fy_rpc_ccall *call);
/* Unary in one go: CALL, one MSG, END. */
int fy_rpc_unary(struct fy_rpc *r, struct fy_qconn *conn, const char *method, const uint8_t *req, size_t len,
                 uint32_t deadline_ms, const struct fy_rpc_call_cb *cb, void *user, struct fy_err *err);

/* ---- server ---------------------------------------------------------------- */

int64_t fy_rpc_reply(struct fy_rpc_scall *call, const uint8_t *payload, size_t len);
/* The final STATUS; the call is freed when this returns. */
int fy_rpc_finish(struct fy_rpc_scall *call, int code, const char *message, bool retryable);
const struct fy_nodeid *fy_rpc_scall_peer(const struct fy_rpc_scall *call);
struct fy_qconn *fy_rpc_scall_conn(const struct fy_rpc_scall *call);
const char *fy_rpc_scall_method(const struct fy_rpc_scall *call);
void *fy_rpc_scall_user(const struct fy_rpc_scall *call);
void fy_rpc_scall_set_user(struct fy_rpc_scall *call, void *user);

#endif
