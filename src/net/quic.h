/* The QUIC endpoint: one UDP socket per node that both dials and accepts,
 * carrying many ngtcp2 connections authenticated by node id (net/tls.h).
 *
 * Connections are routed by the connection IDs we issue; every CID this
 * endpoint issues has the same length (FY_QUIC_SCID_LEN), so a short-header
 * packet's DCID can be found without knowing which side made the connection.
 * The endpoint answers unknown versions with Version Negotiation, packets for
 * unknown connections with a stateless reset, and asks for address
 * validation (Retry) once new handshakes arrive faster than
 * retry_above_per_sec, so spoofed Initials cost us one small packet.
 *
 * Applications register one handler per ALPN; a connection whose ALPN has no
 * handler fails the handshake (no_application_protocol). Handlers see a
 * connection only once its handshake finished and the peer's node id is
 * verified.
 *
 * The path seam. ngtcp2 sees one fixed path per peer. Each connection sends
 * through its fy_quic_path; today that writes UDP datagrams directly, and a
 * relay (a later issue) plugs in by giving the connection a path whose send
 * function wraps datagrams for the relay, without touching connection logic.
 * See docs/transport.md.
 *
 * Threading: everything runs on the endpoint's libuv loop. Handler callbacks
 * may call any fy_qconn_* function, including close; the connection is freed
 * only after the callback returns. */
#ifndef FY_NET_QUIC_H
#define FY_NET_QUIC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "base/err.h"
#include "base/log.h"
#include "crypto/key.h"
#include "crypto/nodeid.h"

#define FY_QUIC_SCID_LEN 16

struct fy_quic;
struct fy_qconn;

/* Why a connection ended (or a dial failed). */
enum fy_qclose_kind {
  FY_QCLOSE_LOCAL,       /* we closed it */
  FY_QCLOSE_PEER,        /* the peer closed it (app_code / transport error) */
  FY_QCLOSE_IDLE,        /* idle timeout */
  FY_QCLOSE_TIMEOUT,     /* handshake did not complete in time: unreachable or not answering */
  FY_QCLOSE_WRONG_ID,    /* the peer's key is not the node id we dialled */
  FY_QCLOSE_ALPN,        /* no common application protocol */
  FY_QCLOSE_TLS,         /* another TLS failure (no certificate, bad key, alert) */
  FY_QCLOSE_VERSION,     /* no common QUIC version */
  FY_QCLOSE_RESET,       /* stateless reset: the peer lost the connection's state */
  FY_QCLOSE_UNREACHABLE, /* the network refused our packets */
  FY_QCLOSE_ENDPOINT,    /* the endpoint shut down */
  FY_QCLOSE_PROTOCOL,    /* any other QUIC error */
};

struct fy_qclose {
  enum fy_qclose_kind kind;
  uint64_t app_code; /* FY_QCLOSE_PEER/LOCAL: the application or transport code */
  char msg[192];     /* one line for logs and dial errors */
};

const char *fy_qclose_kind_name(enum fy_qclose_kind kind);

struct fy_quic_handler {
  const char *alpn; /* e.g. "ferry/rpc/1" */
  void *user;
  /* The handshake finished and fy_qconn_peer is verified. Return 0 to keep the
   * connection, or non-zero to close it with that application code (an
   * acceptor that does not know the peer, for instance). */
  uint64_t (*on_open)(struct fy_qconn *c, void *user);
  /* Bytes arrived on a stream, in order; fin means the peer finished sending.
   * The bytes are valid during the call only; call fy_qconn_consume when the
   * application has taken them (that is what opens the flow-control window). */
  void (*on_stream_data)(struct fy_qconn *c, int64_t sid, const uint8_t *data, size_t len, bool fin,
                         void *user);
  /* The peer reset its sending side (RESET_STREAM) or asked us to stop sending
   * (STOP_SENDING), with its application code. */
  void (*on_stream_reset)(struct fy_qconn *c, int64_t sid, uint64_t app_code, void *user);
  /* The stream is gone in both directions; release what hangs on it. */
  void (*on_stream_close)(struct fy_qconn *c, int64_t sid, void *user);
  /* Unacknowledged bytes on the stream dropped below the low-water mark. */
  void (*on_stream_writable)(struct fy_qconn *c, int64_t sid, void *user);
  /* The peer raised our stream limit: fy_qconn_open_stream may work again. */
  void (*on_streams_available)(struct fy_qconn *c, void *user);
  /* Last call for this connection, also for dials that never opened. */
  void (*on_close)(struct fy_qconn *c, const struct fy_qclose *why, void *user);
};

struct fy_quic_config {
  /* borrowed; must outlive the endpoint. NULL only in tests: a dialer
   * without a certificate, which every server refuses */
  const struct fy_key *key;
  const char *listen;                     /* "127.0.0.1:0", "[::]:4433" */
  const struct fy_quic_handler *handlers; /* copied by fy_quic_new */
  size_t nhandlers;
  bool accept;                   /* accept inbound connections (a pure dialer leaves it false) */
  uint64_t idle_timeout_ms;      /* 0: 30 s */
  uint64_t keepalive_ms;         /* 0: off; dialers use it to hold NAT bindings */
  uint64_t handshake_timeout_ms; /* 0: 10 s */
  uint32_t retry_above_per_sec;  /* new handshakes/s before Retry is required; 0: always */
  bool retry_never;              /* never send Retry (tests, benchmarks) */
  uint64_t max_streams_bidi;     /* concurrent peer-opened streams; 0: 1024 */
  uint64_t stream_window;        /* per-stream flow-control window; 0: 256 KiB */
  uint64_t conn_window;          /* per-connection window; 0: 4 MiB */
  uint64_t stream_low_water;     /* on_stream_writable below this many unacked bytes; 0: 64 KiB */
  size_t max_conns;              /* 0: 100000 */
  const struct fy_log *log;      /* borrowed, may be NULL */
};

struct fy_quic_stats {
  uint64_t conns_open, handshakes, handshakes_failed, retries_sent, vn_sent, resets_sent, pkts_dropped;
};

int fy_quic_new(struct fy_quic **out, uv_loop_t *loop, const struct fy_quic_config *cfg, struct fy_err *err);
/* Closes every connection (peers see an application close) and the socket;
 * done(user) runs once everything is released. */
void fy_quic_shutdown(struct fy_quic *q, void (*done)(void *user), void *user);
/* The bound address, for ":0" listeners. */
int fy_quic_local_addr(const struct fy_quic *q, struct sockaddr_storage *out, socklen_t *len);
void fy_quic_get_stats(const struct fy_quic *q, struct fy_quic_stats *out);

/* Dials peer at addr with alpn. The connection exists at once (write to it
 * and streams queue up), and on_open or on_close reports how it went. */
int fy_quic_dial(struct fy_quic *q, const struct fy_nodeid *peer, const struct sockaddr *addr,
                 socklen_t addrlen, const char *alpn, void *conn_user, struct fy_qconn **out,
                 struct fy_err *err);

const struct fy_nodeid *fy_qconn_peer(const struct fy_qconn *c);
const char *fy_qconn_alpn(const struct fy_qconn *c);
bool fy_qconn_is_open(const struct fy_qconn *c);
bool fy_qconn_is_client(const struct fy_qconn *c);
/* True once on_open ran for this connection (it stays true while closing). */
bool fy_qconn_was_opened(const struct fy_qconn *c);
void *fy_qconn_user(const struct fy_qconn *c);
void fy_qconn_set_user(struct fy_qconn *c, void *user);

/* Opens a bidirectional stream; FY_ELIMIT when the peer's stream limit is
 * reached (wait for on_streams_available). Before the handshake completes,
 * streams up to the peer's initial limit can still be opened. */
int fy_qconn_open_stream(struct fy_qconn *c, int64_t *sid, void *stream_user);
void *fy_qconn_stream_user(struct fy_qconn *c, int64_t sid);
void fy_qconn_set_stream_user(struct fy_qconn *c, int64_t sid, void *stream_user);

/* Queues bytes (copied) and, with fin, the end of our side of the stream.
 * Returns the stream's unacknowledged byte count afterwards (>= 0), so a
 * producer can stop above its own high-water mark and wait for
 * on_stream_writable; or a negative error. */
int64_t fy_qconn_write(struct fy_qconn *c, int64_t sid, const uint8_t *data, size_t len, bool fin);

/* Bytes written to sid and not yet acknowledged by the peer. */
uint64_t fy_qconn_stream_unacked(struct fy_qconn *c, int64_t sid);

/* We will read no more of sid: the peer is asked to stop sending (STOP_SENDING). */
void fy_qconn_stop_reading(struct fy_qconn *c, int64_t sid, uint64_t app_code);

/* The application took n bytes of sid: extend the flow-control windows. */
void fy_qconn_consume(struct fy_qconn *c, int64_t sid, size_t n);

/* Abandons a stream in both directions with an application code. */
void fy_qconn_reset_stream(struct fy_qconn *c, int64_t sid, uint64_t app_code);

/* Closes with an application code and reason; on_close follows. */
void fy_qconn_close(struct fy_qconn *c, uint64_t app_code, const char *reason);

#endif
