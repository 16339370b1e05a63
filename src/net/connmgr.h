/* The connection manager: at most one connection per (node id, ALPN), dialled
 * on demand and shared by everyone who asks for that peer.
 *
 * fy_connmgr_get hands out the live connection, or joins the dial in
 * progress, or starts one. A dial tries the peer's addresses in order (the
 * first address first; when one fails, the next) and only when every address
 * failed does the attempt count as failed. Each waiter then learns the
 * outcome: the connection, or why there is none (an fy_qclose: timed out,
 * unreachable, wrong identity, ALPN refused, version, closed by peer...).
 *
 * Backoff. After a failed attempt (or a connection that closed before it was
 * stable) the peer waits before the next dial: base = backoff_min_ms doubled
 * per consecutive failure up to backoff_max_ms, and the wait is drawn
 * uniformly from [base/2, base] (jitter, so a fleet that lost its coordinator
 * does not come back in lock-step). A connection that stays open for
 * stable_ms resets the count. While a peer waits, new callers queue for the
 * next attempt, or, with FY_CONNMGR_FAIL_FAST, hear the last failure at once.
 * A wrong identity is an attack or a misconfiguration, not bad luck: it is
 * logged at warn and the next attempt waits the full backoff_max_ms, so a
 * kept peer never retries a wrong identity faster than that.
 *
 * Kept peers (fy_connmgr_keep) are dialled at once and redialled after every
 * close or failure, with the same backoff; an agent keeps its coordinator.
 * Peers that are not kept are dialled only when someone asks.
 *
 * Callbacks. ready() always runs from the loop, never inside the call that
 * queued it (a uv_idle handle delivers it on the next loop turn), so a caller
 * may call anything from ready(), including fy_connmgr_get. The connection
 * passed to ready() is open at that moment; do not keep the pointer across
 * loop turns (it is freed when the connection closes): ask again, which is
 * cheap while the connection lives. Calls started on it (fy_rpc_start) end
 * with their own status if it closes.
 *
 * Scope. The manager learns of opens and closes through the RPC layer's
 * connection observer, which it takes for itself (fy_rpc_set_conn_observer);
 * so it dials FY_RPC_ALPN only, for now. Others may watch the same opens and
 * closes through fy_connmgr_set_conn_observer.
 *
 * Inbound connections. The manager also learns the RPC connections peers
 * dialled to us (the newest open one per node id; forgotten when it closes).
 * fy_connmgr_get for a peer without a live connection of our own hands out
 * that inbound connection instead of dialling, and needs no address for it:
 * that is how a coordinator reaches agents behind NAT, over the connection
 * they opened. A peer with neither a connection nor an address fails with
 * FY_ENOENT. Inbound connections are never redialled (we may not be able to)
 * and take no part in the backoff. Create the
 * endpoint with the RPC handler first, then the manager (observers are looked
 * up when a connection opens, so the order works). Close the manager before
 * shutting the endpoint down. Everything runs on the loop given to
 * fy_connmgr_new. */
#ifndef FY_NET_CONNMGR_H
#define FY_NET_CONNMGR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "base/err.h"
#include "base/log.h"
#include "crypto/nodeid.h"
#include "net/quic.h"
#include "rpc/rpc.h"

#define FY_CONNMGR_ADDRS_MAX 8

/* fy_connmgr_get flags. */
#define FY_CONNMGR_FAIL_FAST                                                                                 \
  0x1u /* while the peer backs off, fail with its last failure instead of waiting */

struct fy_connmgr;

enum fy_connmgr_state {
  FY_CONNMGR_IDLE,    /* no connection and none wanted right now */
  FY_CONNMGR_DIALING, /* an attempt is under way (one address at a time) */
  FY_CONNMGR_OPEN,    /* a live connection */
  FY_CONNMGR_BACKOFF, /* waiting before the next attempt */
};

/* "idle" | "dialing" | "open" | "backoff" */
const char *fy_connmgr_state_name(enum fy_connmgr_state state);

struct fy_connmgr_config {
  uint64_t backoff_min_ms;  /* first wait after a failure; 0: 250 */
  uint64_t backoff_max_ms;  /* cap of the doubling, and the wait after a wrong identity; 0: 30000 */
  uint64_t stable_ms;       /* open this long resets the failure count; 0: 10000 */
  const struct fy_log *log; /* borrowed, may be NULL */
};

struct fy_connmgr_peer_status {
  enum fy_connmgr_state state;
  const char *state_name;
  bool keep;
  uint32_t attempts;             /* failures since the last stable connection */
  bool has_failure;              /* last_failure is set */
  struct fy_qclose last_failure; /* the latest failed attempt or close: kind, message (with the address) */
  uint64_t retry_in_ms;          /* FY_CONNMGR_BACKOFF: ms until the next attempt, else 0 */
  size_t waiters;                /* callers waiting for a connection */
  size_t naddrs;
  bool inbound; /* the peer has a live connection it dialled to us */
};

/* The ready callback: exactly one of c (open) and failure is non-NULL. */
typedef void (*fy_connmgr_ready_fn)(struct fy_qconn *c, const struct fy_qclose *failure, void *user);

/* Dials through quic; watches connections through rpc (taking its observer
 * slot). quic and rpc are borrowed and must outlive the manager. */
int fy_connmgr_new(struct fy_connmgr **out, uv_loop_t *loop, struct fy_quic *quic, struct fy_rpc *rpc,
                   const struct fy_connmgr_config *cfg, struct fy_err *err);

/* Stops every timer, gives the RPC observer slot back, and calls every
 * waiting ready() with an FY_QCLOSE_ENDPOINT failure ("connection manager
 * closed"); then frees the manager and calls done(user). Connections stay up:
 * the endpoint's shutdown closes them. */
void fy_connmgr_close(struct fy_connmgr *m, void (*done)(void *user), void *user);

/* Asks for a connection to id with alpn (NULL: FY_RPC_ALPN). addrs (up to
 * FY_CONNMGR_ADDRS_MAX, tried in order) replace the peer's known addresses
 * when naddrs > 0; with naddrs 0 the known ones are used. Without a live
 * connection of our own, a live inbound one from id is handed out (no address
 * needed). ready(c, NULL) or ready(NULL, failure) follows on a later loop
 * turn, exactly once. Returns 0, or a negative FY_E* code and then ready is
 * never called: FY_ENOENT when there is no inbound connection and no address
 * is known, FY_EINVAL (bad arguments, closing), FY_EUNSUPPORTED (another
 * ALPN), FY_ELIMIT (too many addresses). */
int fy_connmgr_get(struct fy_connmgr *m, const struct fy_nodeid *id, const struct sockaddr_storage *addrs,
                   size_t naddrs, const char *alpn, unsigned flags, fy_connmgr_ready_fn ready, void *user,
                   struct fy_err *err);

/* Keeps (or stops keeping) a connection to id: a kept peer is dialled now
 * if it has no connection, and redialled after every close, with backoff.
 * addrs as in fy_connmgr_get. */
int fy_connmgr_keep(struct fy_connmgr *m, const struct fy_nodeid *id, const struct sockaddr_storage *addrs,
                    size_t naddrs, const char *alpn, bool keep, struct fy_err *err);

/* Also tells on_open / on_close (either may be NULL) of every RPC connection
 * that opens or closes on the endpoint, dialled by anyone or accepted, after
 * the manager's own bookkeeping (the RPC layer has one observer slot, and the
 * manager holds it). on_close comes only for connections on_open saw. Loop
 * thread; ends with fy_connmgr_close. */
void fy_connmgr_set_conn_observer(struct fy_connmgr *m, void (*on_open)(struct fy_qconn *c, void *user),
                                  void (*on_close)(struct fy_qconn *c, const struct fy_qclose *why,
                                                   void *user),
                                  void *user);

/* What the manager knows of (id, alpn); FY_ENOENT if it never heard of it
 * (a peer known only by its inbound connection reads as idle, inbound). */
int fy_connmgr_status(const struct fy_connmgr *m, const struct fy_nodeid *id, const char *alpn,
                      struct fy_connmgr_peer_status *out);

#endif
