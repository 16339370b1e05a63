/* The outbox: durable store-and-forward queues, one per (destination node
 * id, topic), kept in the node's store until the destination has durably
 * applied each message (see inbox.h) or the message expires.
 *
 * Every message gets a sequence number, strictly increasing per
 * (destination, topic) and never reused (the counter outlives an empty
 * queue), and a 16-byte id: the outbox's epoch (8 random bytes made with the
 * store) followed by 8 random bytes. A receiver that sees a new epoch knows
 * the sender's store was recreated and its sequence numbers started over.
 *
 * Durability. fy_outbox_enqueue returns 0 only once the message is committed
 * and fsync'ed. Group commit keeps that cheap: one committer thread owns
 * every write; callers (any thread) queue requests and wait; the committer
 * takes everything queued, writes it in ONE transaction, commits (one
 * fsync), then wakes every caller in that group. Concurrent enqueues share
 * an fsync; none returns before its own message is on disk. Acks, failures
 * and expiry go through the same committer, so the libuv loop never waits for
 * a disk (use the *_async calls there). The blocking calls must not be made
 * inside a store transaction (fy_outbox_enqueue_txn is for that).
 *
 * Quotas (per destination and in all: messages and payload bytes) are
 * checked in the transaction that would add the message; a request over a
 * quota fails with FY_ELIMIT naming the quota and its value, and writes
 * nothing (a batch is all or nothing), while the rest of its group commits.
 *
 * Delivery (for the delivery loop). fy_outbox_next_batch hands out a queue's
 * messages oldest first. It never skips past a message that waits for a
 * retry: a queue is delivered strictly in order, which is what lets the
 * receiver keep one watermark per (sender, topic) instead of a record per
 * message (inbox.h). Each message carries prev_seq, the sequence number of
 * the message the receiver must have applied first (0: none); expired
 * messages are left out of that chain. The loop sends a batch, in order, on
 * one stream; when the receiver has applied up to N, fy_outbox_ack(N)
 * deletes 1..N; when a send fails, fy_outbox_fail pushes the message's next
 * attempt back (jittered exponential backoff) and the queue waits for it.
 * After a refusal of order (FAILED_PRECONDITION) start again with after_seq 0;
 * after any other refusal or a reconnect, after the last acknowledged seq.
 *
 * Times are milliseconds since the Unix epoch (they must survive restarts);
 * the clock can be replaced for tests. */
#ifndef FY_OUTBOX_OUTBOX_H
#define FY_OUTBOX_OUTBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "base/err.h"
#include "base/log.h"
#include "crypto/nodeid.h"
#include "store/store.h"

#define FY_OUTBOX_TOPIC_MAX 64 /* bytes, without the NUL */
#define FY_MSGID_LEN 16
#define FY_MSGID_EPOCH_LEN 8       /* the first bytes of an id: the sender's outbox epoch */
#define FY_OUTBOX_BATCH_MAX 65536  /* messages in one fy_outbox_enqueue_batch */
#define FY_OUTBOX_NEVER UINT64_MAX /* expires_at of a message without a ttl */

/* The outbox's tables; pass it to fy_store_open with the other schemas. */
extern const struct fy_store_schema fy_outbox_schema;

struct fy_outbox;

struct fy_outbox_config {
  uint64_t max_payload;             /* bytes per message; 0: 1 MiB */
  uint64_t dest_max_msgs;           /* queued for one destination; 0: 1,000,000 */
  uint64_t dest_max_bytes;          /* payload bytes queued for one destination; 0: 1 GiB */
  uint64_t total_max_msgs;          /* queued in all; 0: 10,000,000 */
  uint64_t total_max_bytes;         /* payload bytes queued in all; 0: 16 GiB */
  uint64_t backoff_min_ms;          /* wait after a first failure; 0: 1000 */
  uint64_t backoff_max_ms;          /* cap of the doubling; 0: 3600000 (1 h) */
  size_t group_max_msgs;            /* messages one group commit takes at most; 0: 4096 */
  size_t group_max_bytes;           /* payload bytes one group commit takes at most; 0: 16 MiB */
  size_t expire_max;                /* messages one expiry transaction deletes at most; 0: 10000 */
  uint64_t (*clock_ms)(void *user); /* NULL: CLOCK_REALTIME */
  void *clock_user;
  uv_loop_t *loop;          /* where *_async callbacks run; NULL: no async calls */
  const struct fy_log *log; /* borrowed, may be NULL */
};

/* Starts the committer thread on a store opened with fy_outbox_schema. With
 * a loop, call from the loop's thread. */
int fy_outbox_open(struct fy_outbox **out, struct fy_store *store, const struct fy_outbox_config *cfg,
                   struct fy_err *err);

/* Finishes every queued request (their callers hear the result), joins the
 * committer, then frees the outbox and calls done(user) (may be NULL): at
 * once without a loop, from the loop (after uv_close) with one; run the loop
 * until then. No call may start once close has. */
void fy_outbox_close(struct fy_outbox *ob, void (*done)(void *user), void *user);

/* ---- enqueue ------------------------------------------------------------- */

struct fy_outbox_item {
  struct fy_nodeid dest;
  const char *topic;       /* 1..FY_OUTBOX_TOPIC_MAX bytes */
  struct fy_bytes payload; /* up to max_payload bytes */
  uint64_t ttl_ms;         /* expires this long after enqueue; 0: never */
};

struct fy_outbox_receipt {
  uint64_t seq;
  uint8_t id[FY_MSGID_LEN];
  uint64_t enqueued_at;
};

/* Queues one message; returns 0 once it is durable (receipt, may be NULL,
 * says its sequence number and id). FY_ELIMIT over a quota or a size limit,
 * FY_EINVAL for a bad topic, FY_EIO (and the store's message) when the store
 * cannot take it. Blocks for one group commit: not for the loop thread. */
int fy_outbox_enqueue(struct fy_outbox *ob, const struct fy_nodeid *dest, const char *topic,
                      struct fy_bytes payload, uint64_t ttl_ms, struct fy_outbox_receipt *receipt,
                      struct fy_err *err);

/* Queues n (<= FY_OUTBOX_BATCH_MAX) messages atomically: all are durable, or
 * none is queued. receipts (may be NULL) has room for n. */
int fy_outbox_enqueue_batch(struct fy_outbox *ob, const struct fy_outbox_item *items, size_t n,
                            struct fy_outbox_receipt *receipts, struct fy_err *err);

/* Queues n messages inside t, a write transaction on the outbox's store (an
 * inbox handler's, say): they are durable when t commits and never existed
 * if it aborts, so a reply commits together with what it answers. On an
 * error (message in fy_txn_err(t)) return it from the transaction body so t
 * aborts: part of the batch may be written. Inside a transaction use only
 * this: the blocking calls wait for the committer, which waits for t's
 * write lock (a deadlock). */
int fy_outbox_enqueue_txn(struct fy_outbox *ob, struct fy_txn *t, const struct fy_outbox_item *items,
                          size_t n, struct fy_outbox_receipt *receipts);

/* The result of an async enqueue: rc 0 and receipt, or rc < 0 and err. */
typedef void (*fy_outbox_enqueue_fn)(int rc, const struct fy_outbox_receipt *receipt,
                                     const struct fy_err *err, void *user);

/* As fy_outbox_enqueue, but returns at once (the payload is copied) and
 * calls done on the loop once the message is durable (or failed). Bad
 * arguments fail here, and then done is never called. Any thread. */
int fy_outbox_enqueue_async(struct fy_outbox *ob, const struct fy_nodeid *dest, const char *topic,
                            struct fy_bytes payload, uint64_t ttl_ms, fy_outbox_enqueue_fn done, void *user,
                            struct fy_err *err);

/* ---- delivery ------------------------------------------------------------ */

struct fy_outbox_msg {
  uint64_t seq;
  uint64_t prev_seq; /* the receiver must have applied this one first; 0: nothing */
  uint8_t id[FY_MSGID_LEN];
  uint64_t enqueued_at, expires_at, next_attempt_at;
  uint32_t attempts;       /* failed attempts so far */
  struct fy_bytes payload; /* owned by the batch */
};

struct fy_outbox_batch {
  struct fy_outbox_msg *msgs;
  size_t n;
  /* When the queue has a message waiting for a retry where this batch
   * stopped: that message's next attempt time (set a timer); else 0. */
  uint64_t next_due;
  uint8_t *mem;
};

struct fy_outbox_query {
  const struct fy_nodeid *dest;
  const char *topic;
  uint64_t after_seq; /* messages after this one (those in flight); 0: from the oldest */
  uint64_t now_ms;    /* expired messages are left out; later next attempts stop the batch */
  size_t max_msgs;    /* 0: 64 */
  size_t max_bytes;   /* payload bytes; the first message always fits; 0: 4 MiB */
};

/* Fills out with the queue's next deliverable messages, oldest first (a
 * read snapshot: any thread, never blocks on the committer). Free with
 * fy_outbox_batch_free. */
int fy_outbox_next_batch(struct fy_outbox *ob, const struct fy_outbox_query *q, struct fy_outbox_batch *out,
                         struct fy_err *err);
void fy_outbox_batch_free(struct fy_outbox_batch *b);

/* The receiver applied everything up to up_to_seq: deletes those messages
 * (one transaction). Returns how many it deleted (0 when already acked). */
int fy_outbox_ack(struct fy_outbox *ob, const struct fy_nodeid *dest, const char *topic, uint64_t up_to_seq,
                  struct fy_err *err);

/* Delivering seq failed at now_ms: counts the attempt and moves its next
 * attempt to now + backoff(attempts), drawn from [base/2, base], base =
 * backoff_min doubled per attempt up to backoff_max. *next_at (may be NULL)
 * gets that time. FY_ENOENT when the message is gone (acked or expired). */
int fy_outbox_fail(struct fy_outbox *ob, const struct fy_nodeid *dest, const char *topic, uint64_t seq,
                   uint64_t now_ms, uint64_t *next_at, struct fy_err *err);

/* Deletes every message whose expiry is at or before now_ms, logging each
 * (event outbox.expire: dest, topic, seq, age_ms); returns how many. */
int fy_outbox_expire(struct fy_outbox *ob, uint64_t now_ms, struct fy_err *err);

/* The async forms, for the loop: done(rc, value) runs on the loop; value is
 * the count (ack, expire) or the next attempt time (fail). */
typedef void (*fy_outbox_result_fn)(int rc, uint64_t value, const struct fy_err *err, void *user);
int fy_outbox_ack_async(struct fy_outbox *ob, const struct fy_nodeid *dest, const char *topic,
                        uint64_t up_to_seq, fy_outbox_result_fn done, void *user, struct fy_err *err);
int fy_outbox_fail_async(struct fy_outbox *ob, const struct fy_nodeid *dest, const char *topic, uint64_t seq,
                         uint64_t now_ms, fy_outbox_result_fn done, void *user, struct fy_err *err);
int fy_outbox_expire_async(struct fy_outbox *ob, uint64_t now_ms, fy_outbox_result_fn done, void *user,
                           struct fy_err *err);

/* ---- inspection ------------------------------------------------------------ */

/* Destinations with messages pending, in node id order: fills up to cap,
 * returns how many there are in all. */
int fy_outbox_destinations(struct fy_outbox *ob, struct fy_nodeid *out, size_t cap, struct fy_err *err);

struct fy_outbox_queue_stats {
  struct fy_nodeid dest;
  uint64_t pending;       /* messages queued */
  uint64_t bytes;         /* their payload bytes */
  uint64_t last_seq;      /* the last sequence number given out */
  uint64_t oldest_age_ms; /* now - enqueue time of the oldest (fy_outbox_stats only) */
  uint32_t max_attempts;  /* the most failed attempts of any of them (fy_outbox_stats only) */
  char topic[FY_OUTBOX_TOPIC_MAX + 1];
};

/* The queues with messages pending, of dest (NULL: of every destination):
 * fills up to cap, returns how many there are. Reads only the counters. */
int fy_outbox_queues(struct fy_outbox *ob, const struct fy_nodeid *dest, struct fy_outbox_queue_stats *out,
                     size_t cap, struct fy_err *err);

/* As fy_outbox_queues, plus oldest_age_ms and max_attempts, which read
 * every message of the listed queues (for inspection, not for a hot path). */
int fy_outbox_stats(struct fy_outbox *ob, const struct fy_nodeid *dest, uint64_t now_ms,
                    struct fy_outbox_queue_stats *out, size_t cap, struct fy_err *err);

struct fy_outbox_counters {
  uint64_t commits;  /* group transactions committed */
  uint64_t requests; /* requests they carried (enqueue, ack, fail, expire) */
  uint64_t messages; /* messages enqueued by them */
};
void fy_outbox_counters(struct fy_outbox *ob, struct fy_outbox_counters *out);

/* The epoch in this outbox's message ids. */
void fy_outbox_epoch(const struct fy_outbox *ob, uint8_t out[FY_MSGID_EPOCH_LEN]);

#endif
