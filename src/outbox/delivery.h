/* The sending side of outbox delivery: a loop that drains every queue of the
 * outbox to its destination over outbox.push calls (proto/outbox.md).
 *
 * One lane per (destination, topic): it asks the connection manager for the
 * destination, opens a call, sends the queue oldest first with up to
 * `window` messages unacknowledged, deletes messages as the receiver
 * acknowledges them, and ends the call when the queue is empty. A refusal
 * or a lost connection counts a failed attempt on the oldest unacknowledged
 * message (the outbox backs it off); the lane comes back when that message
 * is due. Nothing is deleted before the receiver has durably applied it, so
 * a crash of either side at any point loses nothing; the receiver's
 * watermark makes the resend after a crash harmless.
 *
 * Work is found by fy_delivery_kick (call it after an enqueue) and by a
 * periodic scan, so messages queued by another process or before a restart
 * are found too. Everything runs on the loop. */
#ifndef FY_OUTBOX_DELIVERY_H
#define FY_OUTBOX_DELIVERY_H

#include <sys/socket.h>
#include <uv.h>

#include "base/log.h"
#include "net/connmgr.h"
#include "outbox/outbox.h"
#include "rpc/rpc.h"

struct fy_delivery;

/* Where dest can be reached: fills up to cap addresses, returns how many. 0
 * (unknown) still delivers over a connection dest opened to us, if the
 * connection manager knows one; else the lane tries again at the next scan. */
typedef size_t (*fy_delivery_resolve_fn)(const struct fy_nodeid *dest, struct sockaddr_storage *addrs,
                                         size_t cap, void *user);

struct fy_delivery_config {
  struct fy_outbox *outbox;
  struct fy_connmgr *connmgr;
  struct fy_rpc *rpc;
  fy_delivery_resolve_fn resolve;
  void *resolve_user;
  size_t window;      /* unacknowledged messages per lane; 0: 1024 */
  uint64_t scan_ms;   /* how often to look for queues without a kick; 0: 1000 */
  uint64_t expire_ms; /* how often to drop expired messages; 0: 60000 */
  const struct fy_log *log;
};

int fy_delivery_new(struct fy_delivery **out, uv_loop_t *loop, const struct fy_delivery_config *cfg,
                    struct fy_err *err);
/* Messages were queued: look for work now (on the next loop turn). */
void fy_delivery_kick(struct fy_delivery *d);
/* Cancels calls in flight (their messages stay queued), stops the timers,
 * frees everything, then done(user). */
void fy_delivery_close(struct fy_delivery *d, void (*done)(void *user), void *user);

struct fy_delivery_stats {
  uint64_t sent, acked, refusals, lanes_started;
};
void fy_delivery_get_stats(const struct fy_delivery *d, struct fy_delivery_stats *out);

#endif
