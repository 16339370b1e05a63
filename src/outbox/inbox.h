/* The inbox: applies each message from another node's outbox exactly once.
 *
 * fy_inbox_deliver runs, in ONE write transaction of the store: the
 * duplicate check, the topic handler's own writes (it gets the transaction,
 * so its effects commit together with the watermark) and the watermark
 * update; it returns FY_INBOX_APPLIED only after that transaction committed
 * (fsync), which is when the caller may acknowledge the message to the
 * sender. A crash before the commit leaves neither the handler's effects
 * nor the watermark: the sender still has the message and sends it again.
 *
 * Dedupe by watermark. Per (sender, topic) the inbox keeps only the highest
 * sequence number applied (plus the sender's outbox epoch): a message at or
 * below it is a duplicate, acknowledged again and not applied. There are no
 * per-message records to prune; the watermark IS the pruned record. That is
 * safe because the sender's outbox (outbox.h) gives sequence numbers that
 * strictly increase per (destination, topic) and are never reused, and
 * delivers each queue in order: it never offers a message before every
 * earlier one has been applied or has expired. So when the receiver has
 * applied N, every message below N was applied or will never be sent, and
 * "seq <= N" is exactly "already applied".
 *
 * The inbox checks that order instead of trusting it: each message carries
 * prev_seq, the message that precedes it in the sender's queue at the time
 * of sending (0 when none does, e.g. the older ones expired). A message
 * whose prev_seq is above the watermark arrived ahead of one not yet
 * applied (a pipelined send after a failure, say): it is refused with
 * FY_EAGAIN, not applied, and the sender starts again from its oldest
 * message. A gap that the sender vouches for (seq > watermark + 1 and
 * prev_seq <= watermark: the messages between expired) is accepted and
 * logged (event inbox.gap).
 *
 * Epochs. The first 8 bytes of a message id are the sender's outbox epoch,
 * made when its store was created. A sender whose store was wiped (same node
 * key, fresh disk) starts its sequence numbers at 1 again, under a new
 * epoch; the inbox then starts that (sender, topic) over at 0 (logged as
 * inbox.new_epoch) instead of dropping everything as duplicates.
 *
 * Handlers may run more than once for one delivery (when the store grows its
 * map, or when a batch is cut short, the transaction runs again); every
 * effect must go through the transaction they get. Register every handler
 * before the first delivery; deliveries may then come from any thread. A
 * delivery waits for a commit: from the loop, run it on the thread pool. */
#ifndef FY_OUTBOX_INBOX_H
#define FY_OUTBOX_INBOX_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "base/log.h"
#include "crypto/nodeid.h"
#include "outbox/outbox.h"
#include "store/store.h"

/* The inbox's table; pass it to fy_store_open with the other schemas. */
extern const struct fy_store_schema fy_inbox_schema;

struct fy_inbox;

struct fy_inbox_msg {
  uint64_t seq;      /* >= 1 */
  uint64_t prev_seq; /* as fy_outbox_msg.prev_seq; 0: nothing before it */
  uint8_t id[FY_MSGID_LEN];
  struct fy_bytes payload;
};

/* Applies one message inside t. Returns 0, or a negative FY_E* code (with a
 * message in fy_txn_err(t)) to refuse it: nothing of the delivery commits. */
typedef int (*fy_inbox_handler_fn)(struct fy_txn *t, const struct fy_nodeid *sender, const char *topic,
                                   const struct fy_inbox_msg *m, void *user);

enum {
  FY_INBOX_APPLIED = 1,   /* handled and committed now: acknowledge it */
  FY_INBOX_DUPLICATE = 2, /* applied before: acknowledge it again, nothing ran */
};

int fy_inbox_open(struct fy_inbox **out, struct fy_store *store, const struct fy_log *log,
                  struct fy_err *err);
void fy_inbox_close(struct fy_inbox *in);

/* Sets the handler of topic (replacing an earlier one). */
int fy_inbox_register(struct fy_inbox *in, const char *topic, fy_inbox_handler_fn fn, void *user,
                      struct fy_err *err);

/* FY_INBOX_APPLIED or FY_INBOX_DUPLICATE, or < 0 and nothing applied:
 * FY_EAGAIN out of order (see above), FY_ENOENT no handler for the topic,
 * FY_EINVAL a bad message (seq 0, topic), the handler's code, or the
 * store's (FY_EIO, FY_ELIMIT). */
int fy_inbox_deliver(struct fy_inbox *in, const struct fy_nodeid *sender, const char *topic,
                     const struct fy_inbox_msg *m, struct fy_err *err);

/* Applies msgs[0..n) of one (sender, topic), in order, in one transaction.
 * Returns how many were handled (applied or duplicate; results[i] says
 * which); when that is less than n, msgs[ret] was refused: results[ret] has
 * its code and err the reason, and the ones after it were not looked at.
 * Returns < 0 (nothing applied) when the store fails. */
int fy_inbox_deliver_batch(struct fy_inbox *in, const struct fy_nodeid *sender, const char *topic,
                           const struct fy_inbox_msg *msgs, size_t n, int *results, struct fy_err *err);

struct fy_inbox_mark {
  uint64_t seq; /* the highest sequence number applied */
  uint8_t epoch[FY_MSGID_EPOCH_LEN];
  uint64_t updated_at; /* ms since the epoch */
};

/* 1 and *out for a (sender, topic) that delivered before, 0 if none did. */
int fy_inbox_watermark(struct fy_inbox *in, const struct fy_nodeid *sender, const char *topic,
                       struct fy_inbox_mark *out, struct fy_err *err);

#endif
