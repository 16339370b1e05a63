/* The node runtime: the stack every ferry process that talks to others runs,
 * wired once. An applet (coordinator, agent, admin) opens a node on its
 * libuv loop and gets, ready to use:
 *
 *   the store      <data_dir>, with the outbox and inbox schemas plus the applet's
 *   the outbox     async calls on the loop; its queues drained by delivery
 *   the inbox      the applet registers its topic handlers (fy_inbox_register)
 *   RPC            outbox.push (the intake feeding the inbox) plus the applet's methods
 *   the endpoint   one QUIC socket on `listen`, dialling, and accepting when cfg.accept
 *   the connmgr    one connection per peer, dialled on demand, or the one the peer opened
 *   delivery       every outbox queue to its destination, at the addresses
 *                  fy_node_set_addrs gave, or over the connection the destination
 *                  opened to us (an agent behind NAT)
 *
 * Keys are not made here: the applet loads its key and lends it.
 *
 * Threads. Everything runs on the loop given to fy_node_open, except: inbox
 * handlers run on the libuv thread pool (inside the intake's commit), so they
 * must not touch the loop; from there (or any thread) fy_node_kick makes
 * delivery look for work, e.g. after a handler queued replies with
 * fy_outbox_enqueue_txn. The blocking outbox calls are not for the loop
 * thread (use the *_async ones there).
 *
 * Register inbox handlers right after fy_node_open, before the loop runs:
 * messages may arrive on the first loop turn.
 *
 * Shutdown. fy_node_close closes delivery, the connection manager, the
 * endpoint (peers see their connections close) and the outbox, in that order;
 * then waits for the inbox's commits still on the thread pool, frees RPC and
 * the inbox, closes the store (releasing <data_dir>) and calls done(user) on
 * the loop. Queued messages stay in the store for the next open. While the
 * node closes, the loop waits for every request pending on it (uv_work,
 * uv_fs...), not only the node's, because the intake does not say which
 * commits are its own. */
#ifndef FY_NODE_NODE_H
#define FY_NODE_NODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "base/err.h"
#include "base/log.h"
#include "crypto/key.h"
#include "crypto/nodeid.h"
#include "net/connmgr.h"
#include "net/quic.h"
#include "outbox/inbox.h"
#include "outbox/outbox.h"
#include "rpc/rpc.h"
#include "store/store.h"

#define FY_NODE_ADDR_TEXT_MAX 64 /* one formatted address of fy_node_addresses, with the NUL */

struct fy_node;

struct fy_node_config {
  const char *data_dir;     /* the store directory (fy_store_open) */
  const struct fy_key *key; /* borrowed, outlives the node */
  const char *listen;       /* "127.0.0.1:0", "[::]:4433" */
  bool accept;              /* serve inbound connections (coordinator) */
  /* the applet's own, besides outbox + inbox; borrowed for fy_node_open only */
  const struct fy_store_schema *const *schemas;
  size_t nschemas;
  /* the applet's own, besides outbox.push; copied (the user pointers they
   * carry must outlive the node) */
  const struct fy_rpc_method *methods;
  size_t nmethods;
  uint64_t keepalive_ms, idle_timeout_ms, handshake_timeout_ms; /* 0: defaults as in fy_quic_config */
  /* for both the outbox's retries and the connmgr's redials; 0: their defaults */
  uint64_t backoff_min_ms, backoff_max_ms;
  uint64_t scan_ms;         /* delivery scan; 0: delivery's default */
  const struct fy_log *log; /* borrowed, may be NULL */
};

/* Opens everything (see the top of this file). cfg is read during the call;
 * what it points to follows the notes above. On failure *out is NULL, err
 * says which part failed, and what was already open is released: at once
 * when the endpoint could not be made (a taken port, a bad listen address),
 * else on the loop's next turns (run it before opening data_dir again).
 * Loop thread, not inside a callback of another node's shutdown. */
int fy_node_open(struct fy_node **out, uv_loop_t *loop, const struct fy_node_config *cfg, struct fy_err *err);

/* The parts, owned by the node: valid until fy_node_close; do not close them. */
struct fy_store *fy_node_store(struct fy_node *n);
struct fy_outbox *fy_node_outbox(struct fy_node *n);
struct fy_inbox *fy_node_inbox(struct fy_node *n);
struct fy_rpc *fy_node_rpc(struct fy_node *n);
struct fy_connmgr *fy_node_connmgr(struct fy_node *n);
struct fy_quic *fy_node_quic(struct fy_node *n);
const struct fy_nodeid *fy_node_id(const struct fy_node *n);

/* Where delivery finds peer (replacing what was known); naddrs 0 forgets.
 * Up to FY_CONNMGR_ADDRS_MAX IPv4 / IPv6 addresses, tried in order (copied).
 * Also kicks delivery. Loop thread. Forgetting only stops handing the
 * addresses to the connection manager; a connection that is open stays. */
int fy_node_set_addrs(struct fy_node *n, const struct fy_nodeid *peer, const struct sockaddr_storage *addrs,
                      size_t naddrs, struct fy_err *err);

/* Look for outbox work now. ANY thread (a uv_async), e.g. from an inbox
 * handler on the thread pool after it queued replies (safe even while the
 * node closes: its handles go only after every commit finished). Other
 * threads must stop calling it before fy_node_close. */
void fy_node_kick(struct fy_node *n);

/* The addresses peers can use: the bound one, or, when bound to a wildcard
 * address, every non-internal interface address (of the socket's families;
 * IPv6 link-local ones left out, they need a scope a peer cannot know) with
 * the bound port, loopback only when nothing else exists. Formats
 * "1.2.3.4:4433", "[fd00::1]:4433". Returns the count written (up to cap). */
size_t fy_node_addresses(struct fy_node *n, char (*out)[FY_NODE_ADDR_TEXT_MAX], size_t cap);

/* An optional observer of the node's RPC connections, dialled and accepted
 * (the agent logs its link state from it): on_open when one opened, on_close
 * when one that opened closed. Either may be NULL; a second call replaces
 * the first. Loop thread; the callbacks run on it. */
void fy_node_on_conn(struct fy_node *n, void (*on_open)(struct fy_qconn *c, void *user),
                     void (*on_close)(struct fy_qconn *c, const struct fy_qclose *why, void *user),
                     void *user);

/* Closes everything (see the top of this file), frees n, then done(user) (may
 * be NULL) on the loop: run the loop until then. Loop thread. */
void fy_node_close(struct fy_node *n, void (*done)(void *user), void *user);

#endif
