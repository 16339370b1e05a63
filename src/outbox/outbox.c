/* The outbox: durable queues with group commit (see outbox.h).
 *
 * Tables (keys are bytes; numbers big-endian so they sort):
 *   outbox.msg     dest(32) tlen(1) topic seq(8)          -> header(48) payload
 *   outbox.queue   dest(32) tlen(1) topic                 -> last_seq(8) count(8) bytes(8)
 *   outbox.dest    dest(32)                               -> count(8) bytes(8)
 *                  "*"                                    -> count(8) bytes(8), over all destinations
 *   outbox.expiry  expires_at(8) dest(32) tlen(1) topic seq(8) -> (empty)
 *   outbox.meta    "epoch"                                -> 8 random bytes
 * The header: format(1)=1, pad(3), attempts(4), id(16), enqueued_at(8),
 * expires_at(8), next_attempt_at(8). A queue row stays when its queue
 * empties: it holds the last sequence number given out. */
#include "outbox/outbox.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <semaphore.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/buf.h"
#include "base/cleanup.h"

#define DEF_MAX_PAYLOAD (1ull << 20)
#define DEF_DEST_MSGS 1000000ull
#define DEF_DEST_BYTES (1ull << 30)
#define DEF_TOTAL_MSGS 10000000ull
#define DEF_TOTAL_BYTES (16ull << 30)
#define DEF_BACKOFF_MIN 1000ull
#define DEF_BACKOFF_MAX 3600000ull
#define DEF_GROUP_MSGS 4096
#define DEF_GROUP_BYTES (16u << 20)
#define DEF_EXPIRE_MAX 10000
#define DEF_BATCH_MSGS 64
#define DEF_BATCH_BYTES (4u << 20)

#define HDR 48
#define HDR_FORMAT 1
#define QKEY_MAX (FY_NODEID_LEN + 1 + FY_OUTBOX_TOPIC_MAX)
#define MKEY_MAX (QKEY_MAX + 8)
#define XKEY_MAX (8 + MKEY_MAX)
#define TOTAL_KEY "*"

enum { T_MSG, T_QUEUE, T_DEST, T_EXPIRY, T_META, T_COUNT };

static const struct fy_store_table_def tables[T_COUNT] = {
    [T_MSG] = {"outbox.msg", 0},       [T_QUEUE] = {"outbox.queue", 0}, [T_DEST] = {"outbox.dest", 0},
    [T_EXPIRY] = {"outbox.expiry", 0}, [T_META] = {"outbox.meta", 0},
};

/* v1: the epoch that starts every message id. */
static int migrate_v1(struct fy_txn *t, void *user) {
  (void)user;
  uint8_t epoch[FY_MSGID_EPOCH_LEN];
  randombytes_buf(epoch, sizeof(epoch));
  return fy_store_put(t, fy_txn_table(t, &tables[T_META]), fy_bytes_str("epoch"), fy_bytes_of(epoch, 8));
}

static const fy_txn_fn migrations[] = {migrate_v1};

const struct fy_store_schema fy_outbox_schema = {"outbox", tables, T_COUNT, migrations,
                                                 FY_ARRAY_LEN(migrations)};

/* ---- rows and keys ------------------------------------------------------------ */

struct hdr {
  uint32_t attempts;
  uint8_t id[FY_MSGID_LEN];
  uint64_t enqueued_at, expires_at, next_attempt_at;
};

static void hdr_put(uint8_t *p, const struct hdr *h) {
  memset(p, 0, 4);
  p[0] = HDR_FORMAT;
  fy_be32_put(p + 4, h->attempts);
  memcpy(p + 8, h->id, FY_MSGID_LEN);
  fy_be64_put(p + 24, h->enqueued_at);
  fy_be64_put(p + 32, h->expires_at);
  fy_be64_put(p + 40, h->next_attempt_at);
}

static int hdr_get(struct fy_txn *t, struct fy_bytes v, struct hdr *h) {
  memset(h, 0, sizeof(*h));
  if (v.n < HDR || v.p[0] != HDR_FORMAT)
    return fy_err_set(fy_txn_err(t), FY_EIO, "outbox: a message record is corrupt (%zu bytes, format %u)",
                      v.n, v.n ? v.p[0] : 0);
  h->attempts = fy_be32_get(v.p + 4);
  memcpy(h->id, v.p + 8, FY_MSGID_LEN);
  h->enqueued_at = fy_be64_get(v.p + 24);
  h->expires_at = fy_be64_get(v.p + 32);
  h->next_attempt_at = fy_be64_get(v.p + 40);
  return 0;
}

static size_t qkey(uint8_t *out, const struct fy_nodeid *dest, const char *topic, size_t tlen) {
  memcpy(out, dest->key, FY_NODEID_LEN);
  out[FY_NODEID_LEN] = (uint8_t)tlen;
  memcpy(out + FY_NODEID_LEN + 1, topic, tlen);
  return FY_NODEID_LEN + 1 + tlen;
}

/* Splits a queue key back into destination and topic. */
static bool qkey_parse(const uint8_t *k, size_t n, struct fy_nodeid *dest,
                       char topic[FY_OUTBOX_TOPIC_MAX + 1]) {
  if (n < FY_NODEID_LEN + 2 || k[FY_NODEID_LEN] > FY_OUTBOX_TOPIC_MAX ||
      n < FY_NODEID_LEN + 1u + k[FY_NODEID_LEN])
    return false;
  memcpy(dest->key, k, FY_NODEID_LEN);
  memcpy(topic, k + FY_NODEID_LEN + 1, k[FY_NODEID_LEN]);
  topic[k[FY_NODEID_LEN]] = '\0';
  return true;
}

static void short_id(const struct fy_nodeid *id, char out[FY_NODEID_SHORT_LEN + 1]) {
  fy_nodeid_to_short(id, out);
}

/* ---- the counter cache of one group transaction -------------------------------- */

/* Queue, destination and total counters a group touches, read once and
 * written once at the end of the transaction. */
struct row {
  uint8_t key[QKEY_MAX];
  uint8_t klen, used, dirty, table;
  uint64_t last_seq, count, bytes;
};

struct cache {
  struct row *rows;
  size_t cap, n;
};

static uint64_t hash_key(const uint8_t *k, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++)
    h = (h ^ k[i]) * 1099511628211ull;
  return h;
}

static struct row *cache_slot(struct row *rows, size_t cap, const uint8_t *k, size_t n) {
  size_t i = (size_t)hash_key(k, n) & (cap - 1);
  while (rows[i].used && !(rows[i].klen == n && memcmp(rows[i].key, k, n) == 0))
    i = (i + 1) & (cap - 1);
  return &rows[i];
}

/* Makes room for `more` rows without moving existing ones while they are in use. */
static int cache_reserve(struct cache *c, size_t more) {
  if ((c->n + more) * 2 <= c->cap)
    return 0;
  size_t cap = c->cap ? c->cap : 64;
  while ((c->n + more) * 2 > cap)
    cap *= 2;
  struct row *rows = calloc(cap, sizeof(*rows));
  if (!rows)
    return FY_ENOMEM;
  for (size_t i = 0; i < c->cap; i++)
    if (c->rows[i].used)
      *cache_slot(rows, cap, c->rows[i].key, c->rows[i].klen) = c->rows[i];
  free(c->rows);
  c->rows = rows;
  c->cap = cap;
  return 0;
}

static void cache_reset(struct cache *c) {
  if (c->cap > 4096) {
    free(c->rows);
    *c = (struct cache){0};
    return;
  }
  if (c->rows)
    memset(c->rows, 0, c->cap * sizeof(*c->rows));
  c->n = 0;
}

struct fy_outbox;
static int cache_get(struct fy_txn *t, struct fy_outbox *ob, struct cache *c, int table, const uint8_t *k,
                     size_t n, struct row **out);

/* ---- the outbox ------------------------------------------------------------------ */

enum kind { K_ENQUEUE, K_ACK, K_FAIL, K_EXPIRE };

struct expired {
  struct fy_nodeid dest;
  char topic[FY_OUTBOX_TOPIC_MAX + 1];
  uint64_t seq, age_ms;
};

struct req {
  struct req *next;
  enum kind kind;
  const struct fy_outbox_item *items; /* K_ENQUEUE */
  size_t n, bytes;
  struct fy_outbox_receipt *receipts;
  struct fy_nodeid dest; /* K_ACK, K_FAIL */
  char topic[FY_OUTBOX_TOPIC_MAX + 1];
  uint64_t seq, now;
  /* results */
  int rc;
  uint64_t value;
  struct fy_err err;
  bool excluded;
  struct expired *expired;
  size_t nexpired, expired_cap;
  /* completion: a waiting thread, or a callback on the loop */
  sem_t sem;
  bool sync;
  fy_outbox_enqueue_fn enq_done;
  fy_outbox_result_fn res_done;
  void *user;
  struct fy_outbox_item item; /* async enqueue: a copy, with the payload after the struct */
  struct fy_outbox_receipt receipt;
};

struct fy_outbox {
  struct fy_store *store;
  struct fy_table *t[T_COUNT];
  uint64_t max_payload, dest_max_msgs, dest_max_bytes, total_max_msgs, total_max_bytes;
  uint64_t backoff_min, backoff_max;
  size_t group_msgs, group_bytes, expire_max;
  uint64_t (*clock)(void *);
  void *clock_user;
  const struct fy_log *log;
  uint8_t epoch[FY_MSGID_EPOCH_LEN];

  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct req *head, *tail; /* waiting for the committer */
  bool stopping;
  pthread_t thread;
  bool started;
  struct cache cache;                 /* the committer's */
  struct fy_outbox_counters counters; /* under mu */

  uv_loop_t *loop;
  uv_async_t async;
  struct req *done_head, *done_tail; /* async results for the loop, under mu */
  void (*close_done)(void *);
  void *close_user;
};

static uint64_t realtime_ms(void *user) {
  (void)user;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int cache_get(struct fy_txn *t, struct fy_outbox *ob, struct cache *c, int table, const uint8_t *k,
                     size_t n, struct row **out) {
  struct row *r = cache_slot(c->rows, c->cap, k, n);
  if (!r->used) {
    struct fy_bytes v;
    int rc = fy_store_get(t, ob->t[table], fy_bytes_of(k, n), &v);
    if (rc < 0)
      return rc;
    memset(r, 0, sizeof(*r));
    memcpy(r->key, k, n);
    r->klen = (uint8_t)n;
    r->used = 1;
    r->table = (uint8_t)table;
    if (rc == 1) {
      if (table == T_QUEUE && v.n == 24) {
        r->last_seq = fy_be64_get(v.p);
        r->count = fy_be64_get(v.p + 8);
        r->bytes = fy_be64_get(v.p + 16);
      } else if (table != T_QUEUE && v.n == 16) {
        r->count = fy_be64_get(v.p);
        r->bytes = fy_be64_get(v.p + 8);
      } else {
        fy_err_set(fy_txn_err(t), FY_EIO, "outbox: a counter record in %s is corrupt (%zu bytes)",
                   tables[table].name, v.n);
        return FY_EIO;
      }
    }
    c->n++;
  }
  *out = r;
  return 0;
}

static int cache_flush(struct fy_txn *t, struct fy_outbox *ob, struct cache *c) {
  for (size_t i = 0; i < c->cap; i++) {
    struct row *r = &c->rows[i];
    if (!r->used || !r->dirty)
      continue;
    uint8_t v[24];
    int rc;
    struct fy_bytes key = fy_bytes_of(r->key, r->klen);
    if (r->table == T_QUEUE) {
      fy_be64_put(v, r->last_seq);
      fy_be64_put(v + 8, r->count);
      fy_be64_put(v + 16, r->bytes);
      rc = fy_store_put(t, ob->t[T_QUEUE], key, fy_bytes_of(v, 24));
    } else if (r->count == 0 && r->klen == FY_NODEID_LEN) {
      rc = fy_store_del(t, ob->t[T_DEST], key);
    } else {
      fy_be64_put(v, r->count);
      fy_be64_put(v + 8, r->bytes);
      rc = fy_store_put(t, ob->t[T_DEST], key, fy_bytes_of(v, 16));
    }
    if (rc < 0)
      return rc;
  }
  return 0;
}

struct group {
  struct fy_outbox *ob;
  struct cache *cache; /* the committer's, or one for fy_outbox_enqueue_txn */
  struct req *reqs;
  uint64_t now;
  uint64_t id_next; /* the random half of the next message id: one draw per group, then counted up */
  bool retry;       /* a request was excluded after writing: run the group again without it */
};

/* The queue, destination and total rows of one queue key. */
struct rows {
  struct row *q, *d, *all;
};

static int rows_get(struct fy_txn *t, struct group *g, const uint8_t *qk, size_t qn, struct rows *out) {
  struct fy_outbox *ob = g->ob;
  int rc;
  if (cache_reserve(g->cache, 3) != 0) {
    fy_err_set(fy_txn_err(t), FY_ENOMEM, "outbox: out of memory");
    return FY_ENOMEM;
  }
  if ((rc = cache_get(t, ob, g->cache, T_QUEUE, qk, qn, &out->q)) ||
      (rc = cache_get(t, ob, g->cache, T_DEST, qk, FY_NODEID_LEN, &out->d)) ||
      (rc = cache_get(t, ob, g->cache, T_DEST, (const uint8_t *)TOTAL_KEY, 1, &out->all)))
    return rc;
  return 0;
}

static uint64_t sub_clamp(uint64_t a, uint64_t b) {
  return a > b ? a - b : 0;
}

/* Removes count messages of bytes payload from a queue's counters. */
static void rows_remove(struct rows *r, uint64_t count, uint64_t bytes) {
  struct row *all[3] = {r->q, r->d, r->all};
  for (int i = 0; i < 3; i++) {
    all[i]->count = sub_clamp(all[i]->count, count);
    all[i]->bytes = sub_clamp(all[i]->bytes, bytes);
    all[i]->dirty = 1;
  }
}

/* ---- the committer's work ----------------------------------------------------- */

static int quota(struct req *r, size_t item, struct group *g, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int quota(struct req *r, size_t item, struct group *g, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char msg[FY_ERR_MSG_MAX];
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  r->rc = fy_err_set(&r->err, FY_ELIMIT, "outbox quota: %s%s", msg,
                     r->n > 1 ? "; nothing of this batch was queued" : "");
  if (item == 0)
    return 0; /* nothing written for it: the rest of the group goes on */
  r->excluded = true;
  g->retry = true;
  return FY_EAGAIN;
}

static int apply_enqueue(struct fy_txn *t, struct group *g, struct req *r) {
  struct fy_outbox *ob = g->ob;
  for (size_t i = 0; i < r->n; i++) {
    const struct fy_outbox_item *it = &r->items[i];
    size_t tlen = strlen(it->topic);
    uint8_t key[XKEY_MAX];
    uint8_t *mk = key + 8; /* the message key, after room for the expiry prefix */
    size_t qn = qkey(mk, &it->dest, it->topic, tlen);
    struct rows rw;
    int rc = rows_get(t, g, mk, qn, &rw);
    if (rc)
      return rc;
    uint64_t plen = it->payload.n;
    char id[FY_NODEID_SHORT_LEN + 1];
    if (rw.d->count + 1 > ob->dest_max_msgs || rw.d->bytes + plen > ob->dest_max_bytes)
      short_id(&it->dest, id);
    if (rw.d->count + 1 > ob->dest_max_msgs)
      return quota(r, i, g,
                   "destination %s already has %" PRIu64 " messages queued; the limit is %" PRIu64
                   " (dest_max_msgs)",
                   id, rw.d->count, ob->dest_max_msgs);
    if (rw.d->bytes + plen > ob->dest_max_bytes)
      return quota(r, i, g,
                   "destination %s has %" PRIu64 " bytes queued; %" PRIu64 " more would pass the "
                   "limit of %" PRIu64 " (dest_max_bytes)",
                   id, rw.d->bytes, plen, ob->dest_max_bytes);
    if (rw.all->count + 1 > ob->total_max_msgs)
      return quota(r, i, g,
                   "%" PRIu64 " messages are queued in all; the limit is %" PRIu64 " (total_max_msgs)",
                   rw.all->count, ob->total_max_msgs);
    if (rw.all->bytes + plen > ob->total_max_bytes)
      return quota(r, i, g,
                   "%" PRIu64 " bytes are queued in all; %" PRIu64 " more would pass the limit of %" PRIu64
                   " (total_max_bytes)",
                   rw.all->bytes, plen, ob->total_max_bytes);

    uint64_t seq = rw.q->last_seq + 1;
    fy_be64_put(mk + qn, seq);
    struct hdr h = {.enqueued_at = g->now, .expires_at = FY_OUTBOX_NEVER};
    if (it->ttl_ms)
      h.expires_at = it->ttl_ms >= FY_OUTBOX_NEVER - g->now ? FY_OUTBOX_NEVER - 1 : g->now + it->ttl_ms;
    memcpy(h.id, ob->epoch, FY_MSGID_EPOCH_LEN);
    fy_be64_put(h.id + FY_MSGID_EPOCH_LEN, g->id_next++);
    uint8_t *p;
    if ((rc = fy_store_reserve(t, ob->t[T_MSG], fy_bytes_of(mk, qn + 8), HDR + plen, &p)))
      return rc;
    hdr_put(p, &h);
    if (plen)
      memcpy(p + HDR, it->payload.p, plen);
    if (h.expires_at != FY_OUTBOX_NEVER) {
      fy_be64_put(key, h.expires_at);
      if ((rc = fy_store_put(t, ob->t[T_EXPIRY], fy_bytes_of(key, 8 + qn + 8), fy_bytes_of(NULL, 0))))
        return rc;
    }
    rw.q->last_seq = seq;
    struct row *all[3] = {rw.q, rw.d, rw.all};
    for (int j = 0; j < 3; j++) {
      all[j]->count++;
      all[j]->bytes += plen;
      all[j]->dirty = 1;
    }
    if (r->receipts) {
      r->receipts[i].seq = seq;
      memcpy(r->receipts[i].id, h.id, FY_MSGID_LEN);
      r->receipts[i].enqueued_at = g->now;
    }
  }
  return 0;
}

static int apply_ack(struct fy_txn *t, struct group *g, struct req *r) {
  struct fy_outbox *ob = g->ob;
  uint8_t key[XKEY_MAX];
  uint8_t *mk = key + 8;
  size_t qn = qkey(mk, &r->dest, r->topic, strlen(r->topic));
  struct fy_cursor *c;
  int rc = fy_cursor_open(t, ob->t[T_MSG], fy_bytes_of(mk, qn), &c);
  if (rc)
    return rc;
  uint64_t count = 0, bytes = 0;
  struct fy_bytes k, v;
  while ((rc = fy_cursor_next(c, &k, &v)) == 1) {
    if (k.n != qn + 8)
      continue;
    if (fy_be64_get(k.p + qn) > r->seq)
      break;
    struct hdr h;
    if ((rc = hdr_get(t, v, &h)))
      return rc;
    bytes += v.n - HDR;
    if (h.expires_at != FY_OUTBOX_NEVER) {
      fy_be64_put(key, h.expires_at);
      memcpy(mk + qn, k.p + qn, 8);
      if ((rc = fy_store_del(t, ob->t[T_EXPIRY], fy_bytes_of(key, 8 + qn + 8))) < 0)
        return rc;
    }
    if ((rc = fy_cursor_del(c)))
      return rc;
    count++;
  }
  if (rc < 0)
    return rc;
  fy_cursor_close(c);
  if (count) {
    struct rows rw;
    if ((rc = rows_get(t, g, mk, qn, &rw)))
      return rc;
    rows_remove(&rw, count, bytes);
  }
  r->value = count;
  return 0;
}

static uint64_t backoff(const struct fy_outbox *ob, uint32_t attempts) {
  uint64_t base = ob->backoff_min;
  for (uint32_t i = 1; i < attempts && base < ob->backoff_max; i++)
    base = base > ob->backoff_max / 2 ? ob->backoff_max : base * 2;
  if (base > ob->backoff_max)
    base = ob->backoff_max;
  uint64_t low = base / 2, span = base - low;
  return low +
         (span >= UINT32_MAX ? randombytes_random() % (span + 1) : randombytes_uniform((uint32_t)span + 1));
}

static int apply_fail(struct fy_txn *t, struct group *g, struct req *r) {
  struct fy_outbox *ob = g->ob;
  uint8_t key[MKEY_MAX];
  size_t qn = qkey(key, &r->dest, r->topic, strlen(r->topic));
  fy_be64_put(key + qn, r->seq);
  struct fy_bytes v;
  int rc = fy_store_get(t, ob->t[T_MSG], fy_bytes_of(key, qn + 8), &v);
  if (rc < 0)
    return rc;
  if (rc == 0) {
    char id[FY_NODEID_SHORT_LEN + 1];
    short_id(&r->dest, id);
    r->rc = fy_err_set(&r->err, FY_ENOENT, "outbox: no message %" PRIu64 " in queue %s/%s (acked or expired)",
                       r->seq, id, r->topic);
    return 0;
  }
  struct hdr h;
  if ((rc = hdr_get(t, v, &h)))
    return rc;
  FY_AUTOFREE uint8_t *copy = malloc(v.n);
  if (!copy)
    return fy_err_set(fy_txn_err(t), FY_ENOMEM, "outbox: out of memory");
  memcpy(copy, v.p, v.n);
  if (h.attempts < UINT32_MAX)
    h.attempts++;
  uint64_t wait = backoff(ob, h.attempts);
  h.next_attempt_at = r->now > UINT64_MAX - wait ? UINT64_MAX : r->now + wait;
  hdr_put(copy, &h);
  if ((rc = fy_store_put(t, ob->t[T_MSG], fy_bytes_of(key, qn + 8), fy_bytes_of(copy, v.n))))
    return rc;
  r->value = h.next_attempt_at;
  return 0;
}

static int apply_expire(struct fy_txn *t, struct group *g, struct req *r) {
  struct fy_outbox *ob = g->ob;
  struct fy_cursor *c;
  int rc = fy_cursor_open(t, ob->t[T_EXPIRY], (struct fy_bytes){0}, &c);
  if (rc)
    return rc;
  struct fy_bytes k;
  uint64_t n = 0;
  while (n < ob->expire_max && (rc = fy_cursor_next(c, &k, NULL)) == 1) {
    if (k.n < 8 + FY_NODEID_LEN + 2 + 8 || fy_be64_get(k.p) > r->now)
      break;
    uint8_t mk[MKEY_MAX];
    size_t mn = k.n - 8, qn = mn - 8;
    if (mn > MKEY_MAX)
      return fy_err_set(fy_txn_err(t), FY_EIO, "outbox: an expiry record is corrupt (%zu bytes)", k.n);
    memcpy(mk, k.p + 8, mn);
    uint64_t seq = fy_be64_get(mk + qn);
    if ((rc = fy_cursor_del(c)))
      return rc;
    struct fy_bytes v;
    if ((rc = fy_store_get(t, ob->t[T_MSG], fy_bytes_of(mk, mn), &v)) < 0)
      return rc;
    if (rc == 0)
      continue; /* acked meanwhile; the index row was stale */
    struct hdr h;
    if ((rc = hdr_get(t, v, &h)))
      return rc;
    uint64_t plen = v.n - HDR;
    if ((rc = fy_store_del(t, ob->t[T_MSG], fy_bytes_of(mk, mn))) < 0)
      return rc;
    struct rows rw;
    if ((rc = rows_get(t, g, mk, qn, &rw)))
      return rc;
    rows_remove(&rw, 1, plen);
    n++;
    if (r->nexpired == r->expired_cap) {
      size_t cap = r->expired_cap ? r->expired_cap * 2 : 64;
      struct expired *e = realloc(r->expired, cap * sizeof(*e));
      if (!e)
        return fy_err_set(fy_txn_err(t), FY_ENOMEM, "outbox: out of memory");
      r->expired = e;
      r->expired_cap = cap;
    }
    struct expired *e = &r->expired[r->nexpired++];
    if (!qkey_parse(mk, qn, &e->dest, e->topic))
      return fy_err_set(fy_txn_err(t), FY_EIO, "outbox: an expiry record is corrupt");
    e->seq = seq;
    e->age_ms = sub_clamp(r->now, h.enqueued_at);
  }
  if (rc < 0)
    return rc;
  r->value = n;
  return 0;
}

static int group_body(struct fy_txn *t, void *user) {
  struct group *g = user;
  g->retry = false;
  g->now = g->ob->clock(g->ob->clock_user);
  randombytes_buf(&g->id_next, sizeof(g->id_next));
  cache_reset(g->cache);
  for (struct req *r = g->reqs; r; r = r->next) {
    if (r->excluded)
      continue;
    r->rc = 0;
    r->value = 0;
    r->nexpired = 0;
    fy_err_clear(&r->err);
    int rc;
    switch (r->kind) {
    case K_ENQUEUE:
      rc = apply_enqueue(t, g, r);
      break;
    case K_ACK:
      rc = apply_ack(t, g, r);
      break;
    case K_FAIL:
      rc = apply_fail(t, g, r);
      break;
    default:
      rc = apply_expire(t, g, r);
      break;
    }
    if (rc < 0)
      return rc;
  }
  return cache_flush(t, g->ob, g->cache);
}

static void log_expired(struct fy_outbox *ob, const struct req *r) {
  for (size_t i = 0; i < r->nexpired; i++) {
    const struct expired *e = &r->expired[i];
    char dest[FY_NODEID_HEX_LEN + 1], seq[24], age[24];
    fy_nodeid_to_hex(&e->dest, dest);
    snprintf(seq, sizeof(seq), "%" PRIu64, e->seq);
    snprintf(age, sizeof(age), "%" PRIu64, e->age_ms);
    fy_warn(ob->log, "outbox.expire", "dest", dest, "topic", e->topic, "seq", seq, "age_ms", age);
  }
}

/* Writes a group in one transaction, then tells every caller in it. */
static void run_group(struct fy_outbox *ob, struct req *reqs) {
  struct group g = {.ob = ob, .cache = &ob->cache, .reqs = reqs};
  struct fy_err err;
  int rc;
  do
    rc = fy_store_write(ob->store, group_body, &g, &err);
  while (rc < 0 && g.retry);
  if (rc >= 0) {
    uint64_t nreq = 0, nmsg = 0;
    for (struct req *r = reqs; r; r = r->next)
      if (r->rc >= 0) {
        nreq++;
        nmsg += r->kind == K_ENQUEUE ? r->n : 0;
      }
    pthread_mutex_lock(&ob->mu);
    ob->counters.commits++;
    ob->counters.requests += nreq;
    ob->counters.messages += nmsg;
    pthread_mutex_unlock(&ob->mu);
  }
  bool wake_loop = false;
  for (struct req *r = reqs, *next; r; r = next) {
    next = r->next;
    if (rc < 0 && !r->excluded) {
      r->rc = rc;
      r->err = err;
      r->nexpired = 0;
    }
    if (r->rc >= 0)
      log_expired(ob, r);
    if (r->sync) {
      sem_post(&r->sem); /* r may be gone after this */
      continue;
    }
    r->next = NULL;
    pthread_mutex_lock(&ob->mu);
    if (ob->done_tail)
      ob->done_tail->next = r;
    else
      ob->done_head = r;
    ob->done_tail = r;
    pthread_mutex_unlock(&ob->mu);
    wake_loop = true;
  }
  if (wake_loop)
    uv_async_send(&ob->async);
}

static void *committer(void *arg) {
  struct fy_outbox *ob = arg;
  pthread_mutex_lock(&ob->mu);
  for (;;) {
    while (!ob->head && !ob->stopping)
      pthread_cond_wait(&ob->cv, &ob->mu);
    if (!ob->head)
      break;
    /* Everything queued, up to the group limits (the first always goes). */
    struct req *first = ob->head, *last = first;
    size_t msgs = first->n, bytes = first->bytes;
    while (last->next && msgs + last->next->n <= ob->group_msgs &&
           bytes + last->next->bytes <= ob->group_bytes) {
      last = last->next;
      msgs += last->n;
      bytes += last->bytes;
    }
    ob->head = last->next;
    if (!ob->head)
      ob->tail = NULL;
    last->next = NULL;
    pthread_mutex_unlock(&ob->mu);
    run_group(ob, first);
    pthread_mutex_lock(&ob->mu);
  }
  pthread_mutex_unlock(&ob->mu);
  return NULL;
}

/* ---- callers' side ------------------------------------------------------------ */

static int submit(struct fy_outbox *ob, struct req *r, struct fy_err *err) {
  pthread_mutex_lock(&ob->mu);
  if (ob->stopping) {
    pthread_mutex_unlock(&ob->mu);
    fy_err_set(err, FY_EINVAL, "outbox: closing; no new requests");
    return FY_EINVAL;
  }
  r->next = NULL;
  if (ob->tail)
    ob->tail->next = r;
  else
    ob->head = r;
  ob->tail = r;
  pthread_cond_signal(&ob->cv);
  pthread_mutex_unlock(&ob->mu);
  return 0;
}

/* Queues r and waits for its group to commit. */
static int run_sync(struct fy_outbox *ob, struct req *r, struct fy_err *err) {
  r->sync = true;
  sem_init(&r->sem, 0, 0);
  int rc = submit(ob, r, err);
  if (rc == 0) {
    while (sem_wait(&r->sem) != 0 && errno == EINTR)
      ;
    rc = r->rc;
    if (rc < 0 && err)
      *err = r->err;
  }
  sem_destroy(&r->sem);
  free(r->expired);
  return rc;
}

static int check_topic(const char *topic, struct fy_err *err) {
  if (!topic)
    return fy_err_set(err, FY_EINVAL, "outbox: no topic given");
  size_t n = strnlen(topic, FY_OUTBOX_TOPIC_MAX + 1);
  if (n == 0 || n > FY_OUTBOX_TOPIC_MAX)
    return fy_err_set(err, FY_EINVAL, "outbox: topic \"%.*s%s\" is %s; a topic is 1 to %d bytes", 32, topic,
                      n > 32 ? "..." : "", n == 0 ? "empty" : "too long", FY_OUTBOX_TOPIC_MAX);
  return 0;
}

static int check_item(const struct fy_outbox *ob, const struct fy_outbox_item *it, struct fy_err *err) {
  int rc = check_topic(it->topic, err);
  if (rc)
    return rc;
  if (it->payload.n && !it->payload.p)
    return fy_err_set(err, FY_EINVAL, "outbox: payload of %zu bytes without data", it->payload.n);
  if (it->payload.n > ob->max_payload)
    return fy_err_set(err, FY_ELIMIT,
                      "outbox: a payload of %zu bytes is over the limit of %" PRIu64 " (max_payload)",
                      it->payload.n, ob->max_payload);
  return 0;
}

int fy_outbox_enqueue_batch(struct fy_outbox *ob, const struct fy_outbox_item *items, size_t n,
                            struct fy_outbox_receipt *receipts, struct fy_err *err) {
  if (!ob || (n && !items))
    return fy_err_set(err, FY_EINVAL, "outbox: no outbox or items given");
  if (n > FY_OUTBOX_BATCH_MAX)
    return fy_err_set(err, FY_ELIMIT, "outbox: a batch of %zu messages; a batch is at most %d", n,
                      FY_OUTBOX_BATCH_MAX);
  if (n == 0)
    return 0;
  struct req r = {.kind = K_ENQUEUE, .items = items, .n = n, .receipts = receipts};
  for (size_t i = 0; i < n; i++) {
    int rc = check_item(ob, &items[i], err);
    if (rc)
      return n > 1 ? fy_err_prefix(err, "batch item %zu", i) : rc;
    r.bytes += items[i].payload.n;
  }
  return run_sync(ob, &r, err);
}

int fy_outbox_enqueue(struct fy_outbox *ob, const struct fy_nodeid *dest, const char *topic,
                      struct fy_bytes payload, uint64_t ttl_ms, struct fy_outbox_receipt *receipt,
                      struct fy_err *err) {
  if (!dest)
    return fy_err_set(err, FY_EINVAL, "outbox: no destination given");
  struct fy_outbox_item it = {*dest, topic, payload, ttl_ms};
  return fy_outbox_enqueue_batch(ob, &it, 1, receipt, err);
}

int fy_outbox_enqueue_txn(struct fy_outbox *ob, struct fy_txn *t, const struct fy_outbox_item *items,
                          size_t n, struct fy_outbox_receipt *receipts) {
  if (!t)
    return FY_EINVAL;
  struct fy_err *err = fy_txn_err(t);
  if (!ob || (n && !items))
    return fy_err_set(err, FY_EINVAL, "outbox: no outbox or items given");
  if (!fy_txn_is_write(t) || fy_txn_store(t) != ob->store)
    return fy_err_set(err, FY_EINVAL, "outbox: enqueue needs a write transaction of the outbox's store");
  if (n > FY_OUTBOX_BATCH_MAX)
    return fy_err_set(err, FY_ELIMIT, "outbox: a batch of %zu messages; a batch is at most %d", n,
                      FY_OUTBOX_BATCH_MAX);
  for (size_t i = 0; i < n; i++) {
    int rc = check_item(ob, &items[i], err);
    if (rc)
      return n > 1 ? fy_err_prefix(err, "batch item %zu", i) : rc;
  }
  struct cache cache = {0};
  struct req r = {.kind = K_ENQUEUE, .items = items, .n = n, .receipts = receipts};
  struct group g = {.ob = ob, .cache = &cache, .reqs = &r, .now = ob->clock(ob->clock_user)};
  randombytes_buf(&g.id_next, sizeof(g.id_next));
  int rc = apply_enqueue(t, &g, &r);
  if (r.rc < 0) { /* over a quota: the caller aborts t (some of the batch may be written) */
    *err = r.err;
    rc = r.rc;
  }
  if (rc == 0)
    rc = cache_flush(t, ob, &cache);
  free(cache.rows);
  return rc;
}

static struct req *async_req(struct fy_outbox *ob, size_t extra, struct fy_err *err) {
  if (!ob->loop) {
    fy_err_set(err, FY_EINVAL, "outbox: opened without a loop; async calls need one");
    return NULL;
  }
  struct req *r = calloc(1, sizeof(*r) + extra);
  if (!r)
    fy_err_set(err, FY_ENOMEM, "outbox: out of memory");
  return r;
}

int fy_outbox_enqueue_async(struct fy_outbox *ob, const struct fy_nodeid *dest, const char *topic,
                            struct fy_bytes payload, uint64_t ttl_ms, fy_outbox_enqueue_fn done, void *user,
                            struct fy_err *err) {
  if (!ob || !dest || !done)
    return fy_err_set(err, FY_EINVAL, "outbox: no outbox, destination or callback given");
  struct fy_outbox_item it = {*dest, topic, payload, ttl_ms};
  int rc = check_item(ob, &it, err);
  if (rc)
    return rc;
  struct req *r = async_req(ob, payload.n, err);
  if (!r)
    return err ? err->code : FY_ENOMEM;
  uint8_t *copy = (uint8_t *)(r + 1);
  if (payload.n)
    memcpy(copy, payload.p, payload.n);
  snprintf(r->topic, sizeof(r->topic), "%s", topic);
  r->item = (struct fy_outbox_item){*dest, r->topic, fy_bytes_of(copy, payload.n), ttl_ms};
  r->kind = K_ENQUEUE;
  r->items = &r->item;
  r->n = 1;
  r->bytes = payload.n;
  r->receipts = &r->receipt;
  r->enq_done = done;
  r->user = user;
  if ((rc = submit(ob, r, err)))
    free(r);
  return rc;
}

static int fill_req(struct req *r, enum kind kind, const struct fy_nodeid *dest, const char *topic,
                    uint64_t seq, uint64_t now, struct fy_err *err) {
  if (kind != K_EXPIRE) {
    if (!dest)
      return fy_err_set(err, FY_EINVAL, "outbox: no destination given");
    int rc = check_topic(topic, err);
    if (rc)
      return rc;
    r->dest = *dest;
    snprintf(r->topic, sizeof(r->topic), "%s", topic);
  }
  r->kind = kind;
  r->seq = seq;
  r->now = now;
  return 0;
}

static int sync_op(struct fy_outbox *ob, enum kind kind, const struct fy_nodeid *dest, const char *topic,
                   uint64_t seq, uint64_t now, uint64_t *value, struct fy_err *err) {
  if (!ob)
    return fy_err_set(err, FY_EINVAL, "outbox: no outbox given");
  struct req r = {0};
  int rc = fill_req(&r, kind, dest, topic, seq, now, err);
  if (rc || (rc = run_sync(ob, &r, err)) < 0)
    return rc;
  if (value)
    *value = r.value;
  return 0;
}

static int async_op(struct fy_outbox *ob, enum kind kind, const struct fy_nodeid *dest, const char *topic,
                    uint64_t seq, uint64_t now, fy_outbox_result_fn done, void *user, struct fy_err *err) {
  if (!ob || !done)
    return fy_err_set(err, FY_EINVAL, "outbox: no outbox or callback given");
  struct req *r = async_req(ob, 0, err);
  if (!r)
    return err ? err->code : FY_ENOMEM;
  int rc = fill_req(r, kind, dest, topic, seq, now, err);
  r->res_done = done;
  r->user = user;
  if (rc || (rc = submit(ob, r, err)))
    free(r);
  return rc;
}

static int count_result(int rc, uint64_t n) {
  if (rc < 0)
    return rc;
  return n > INT32_MAX ? INT32_MAX : (int)n;
}

int fy_outbox_ack(struct fy_outbox *ob, const struct fy_nodeid *dest, const char *topic, uint64_t up_to_seq,
                  struct fy_err *err) {
  uint64_t n = 0;
  int rc = sync_op(ob, K_ACK, dest, topic, up_to_seq, 0, &n, err);
  return count_result(rc, n);
}

int fy_outbox_fail(struct fy_outbox *ob, const struct fy_nodeid *dest, const char *topic, uint64_t seq,
                   uint64_t now_ms, uint64_t *next_at, struct fy_err *err) {
  return sync_op(ob, K_FAIL, dest, topic, seq, now_ms, next_at, err);
}

int fy_outbox_expire(struct fy_outbox *ob, uint64_t now_ms, struct fy_err *err) {
  uint64_t total = 0;
  for (;;) {
    uint64_t n = 0;
    int rc = sync_op(ob, K_EXPIRE, NULL, NULL, 0, now_ms, &n, err);
    if (rc < 0)
      return rc;
    total += n;
    if (n < ob->expire_max)
      return count_result(0, total);
  }
}

int fy_outbox_ack_async(struct fy_outbox *ob, const struct fy_nodeid *dest, const char *topic,
                        uint64_t up_to_seq, fy_outbox_result_fn done, void *user, struct fy_err *err) {
  return async_op(ob, K_ACK, dest, topic, up_to_seq, 0, done, user, err);
}

int fy_outbox_fail_async(struct fy_outbox *ob, const struct fy_nodeid *dest, const char *topic, uint64_t seq,
                         uint64_t now_ms, fy_outbox_result_fn done, void *user, struct fy_err *err) {
  return async_op(ob, K_FAIL, dest, topic, seq, now_ms, done, user, err);
}

int fy_outbox_expire_async(struct fy_outbox *ob, uint64_t now_ms, fy_outbox_result_fn done, void *user,
                           struct fy_err *err) {
  return async_op(ob, K_EXPIRE, NULL, NULL, 0, now_ms, done, user, err);
}

/* ---- results on the loop ---------------------------------------------------------- */

static void deliver_done(struct fy_outbox *ob) {
  pthread_mutex_lock(&ob->mu);
  struct req *r = ob->done_head;
  ob->done_head = ob->done_tail = NULL;
  pthread_mutex_unlock(&ob->mu);
  while (r) {
    struct req *next = r->next;
    const struct fy_err *e = r->rc < 0 ? &r->err : NULL;
    if (r->enq_done)
      r->enq_done(r->rc, r->rc < 0 ? NULL : &r->receipt, e, r->user);
    else if (r->res_done)
      r->res_done(r->rc, r->value, e, r->user);
    free(r->expired);
    free(r);
    r = next;
  }
}

static void on_async(uv_async_t *h) {
  deliver_done(h->data);
}

/* ---- open and close -------------------------------------------------------------- */

static int read_epoch(struct fy_txn *t, void *user) {
  struct fy_outbox *ob = user;
  struct fy_bytes v;
  int rc = fy_store_get(t, ob->t[T_META], fy_bytes_str("epoch"), &v);
  if (rc < 0)
    return rc;
  if (rc == 0 || v.n != FY_MSGID_EPOCH_LEN)
    return fy_err_set(fy_txn_err(t), FY_EIO, "outbox: the epoch record is missing or corrupt");
  memcpy(ob->epoch, v.p, FY_MSGID_EPOCH_LEN);
  return 0;
}

static void free_outbox(struct fy_outbox *ob) {
  pthread_mutex_destroy(&ob->mu);
  pthread_cond_destroy(&ob->cv);
  free(ob->cache.rows);
  free(ob);
}

int fy_outbox_open(struct fy_outbox **out, struct fy_store *store, const struct fy_outbox_config *cfg,
                   struct fy_err *err) {
  *out = NULL;
  if (!store)
    return fy_err_set(err, FY_EINVAL, "outbox: no store given");
  if (sodium_init() < 0)
    return fy_err_set(err, FY_ECRYPTO, "libsodium failed to initialise");
  const struct fy_outbox_config none = {0};
  const struct fy_outbox_config *c = cfg ? cfg : &none;
  struct fy_outbox *ob = calloc(1, sizeof(*ob));
  if (!ob)
    return fy_err_set(err, FY_ENOMEM, "outbox: out of memory");
  ob->store = store;
  for (int i = 0; i < T_COUNT; i++)
    if (!(ob->t[i] = fy_store_table(store, &tables[i]))) {
      free(ob);
      return fy_err_set(err, FY_EINVAL, "outbox: the store was opened without fy_outbox_schema");
    }
#define DEF(field, value) ((field) ? (field) : (value))
  ob->max_payload = DEF(c->max_payload, DEF_MAX_PAYLOAD);
  ob->dest_max_msgs = DEF(c->dest_max_msgs, DEF_DEST_MSGS);
  ob->dest_max_bytes = DEF(c->dest_max_bytes, DEF_DEST_BYTES);
  ob->total_max_msgs = DEF(c->total_max_msgs, DEF_TOTAL_MSGS);
  ob->total_max_bytes = DEF(c->total_max_bytes, DEF_TOTAL_BYTES);
  ob->backoff_min = DEF(c->backoff_min_ms, DEF_BACKOFF_MIN);
  ob->backoff_max = DEF(c->backoff_max_ms, DEF_BACKOFF_MAX);
  ob->group_msgs = DEF(c->group_max_msgs, DEF_GROUP_MSGS);
  ob->group_bytes = DEF(c->group_max_bytes, DEF_GROUP_BYTES);
  ob->expire_max = DEF(c->expire_max, DEF_EXPIRE_MAX);
#undef DEF
  if (ob->backoff_max < ob->backoff_min)
    ob->backoff_max = ob->backoff_min;
  ob->clock = c->clock_ms ? c->clock_ms : realtime_ms;
  ob->clock_user = c->clock_user;
  ob->log = c->log;
  ob->loop = c->loop;
  pthread_mutex_init(&ob->mu, NULL);
  pthread_cond_init(&ob->cv, NULL);
  int rc = fy_store_read(store, read_epoch, ob, err);
  if (rc) {
    free_outbox(ob);
    return rc;
  }
  if (ob->loop) {
    if ((rc = uv_async_init(ob->loop, &ob->async, on_async)) != 0) {
      free_outbox(ob);
      return fy_err_set(err, FY_EIO, "outbox: uv_async_init: %s", uv_strerror(rc));
    }
    ob->async.data = ob;
  }
  if ((rc = pthread_create(&ob->thread, NULL, committer, ob)) != 0) {
    fy_err_errno(err, rc, "outbox: start the committer thread");
    if (ob->loop) {
      /* The handle must close on the loop; without a thread there is nothing to wait for. */
      ob->stopping = true;
      fy_outbox_close(ob, NULL, NULL);
      return FY_EIO;
    }
    free_outbox(ob);
    return FY_EIO;
  }
  ob->started = true;
  *out = ob;
  return 0;
}

static void on_closed(uv_handle_t *h) {
  struct fy_outbox *ob = h->data;
  void (*done)(void *) = ob->close_done;
  void *user = ob->close_user;
  free_outbox(ob);
  if (done)
    done(user);
}

void fy_outbox_close(struct fy_outbox *ob, void (*done)(void *user), void *user) {
  if (!ob) {
    if (done)
      done(user);
    return;
  }
  pthread_mutex_lock(&ob->mu);
  ob->stopping = true;
  pthread_cond_signal(&ob->cv);
  pthread_mutex_unlock(&ob->mu);
  if (ob->started)
    pthread_join(ob->thread, NULL);
  if (!ob->loop) {
    free_outbox(ob);
    if (done)
      done(user);
    return;
  }
  deliver_done(ob);
  ob->close_done = done;
  ob->close_user = user;
  uv_close((uv_handle_t *)&ob->async, on_closed);
}

void fy_outbox_counters(struct fy_outbox *ob, struct fy_outbox_counters *out) {
  pthread_mutex_lock(&ob->mu);
  *out = ob->counters;
  pthread_mutex_unlock(&ob->mu);
}

void fy_outbox_epoch(const struct fy_outbox *ob, uint8_t out[FY_MSGID_EPOCH_LEN]) {
  memcpy(out, ob->epoch, FY_MSGID_EPOCH_LEN);
}

/* ---- reading: next batch, destinations, queues ---------------------------------- */

struct batch_ctx {
  struct fy_outbox *ob;
  const struct fy_outbox_query *q;
  struct fy_outbox_batch *out;
  struct fy_buf payloads;
  size_t *offsets; /* of each payload in payloads, which may move as it grows */
  size_t max_msgs, max_bytes;
};

static int batch_body(struct fy_txn *t, void *user) {
  struct batch_ctx *b = user;
  const struct fy_outbox_query *q = b->q;
  uint8_t key[MKEY_MAX];
  size_t qn = qkey(key, q->dest, q->topic, strlen(q->topic));
  struct fy_cursor *c;
  int rc = fy_cursor_open(t, b->ob->t[T_MSG], fy_bytes_of(key, qn), &c);
  if (rc)
    return rc;
  struct fy_bytes k, v;
  if (q->after_seq) {
    if (q->after_seq == UINT64_MAX)
      return 0;
    fy_be64_put(key + qn, q->after_seq + 1);
    rc = fy_cursor_seek(c, fy_bytes_of(key, qn + 8), &k, &v);
  } else {
    rc = fy_cursor_next(c, &k, &v);
  }
  uint64_t prev = q->after_seq;
  size_t bytes = 0;
  for (; rc == 1; rc = fy_cursor_next(c, &k, &v)) {
    if (k.n != qn + 8)
      continue;
    struct hdr h;
    if ((rc = hdr_get(t, v, &h)))
      return rc;
    if (h.expires_at <= q->now_ms)
      continue; /* expired: never delivered, left out of the prev_seq chain */
    if (h.next_attempt_at > q->now_ms) {
      b->out->next_due = h.next_attempt_at; /* in order: nothing after it goes first */
      break;
    }
    size_t plen = v.n - HDR;
    if (b->out->n == b->max_msgs || (b->out->n > 0 && bytes + plen > b->max_bytes))
      break;
    struct fy_outbox_msg *m = &b->out->msgs[b->out->n++];
    *m = (struct fy_outbox_msg){
        .seq = fy_be64_get(k.p + qn),
        .prev_seq = prev,
        .enqueued_at = h.enqueued_at,
        .expires_at = h.expires_at,
        .next_attempt_at = h.next_attempt_at,
        .attempts = h.attempts,
        .payload = {NULL, plen},
    };
    b->offsets[b->out->n - 1] = b->payloads.len;
    memcpy(m->id, h.id, FY_MSGID_LEN);
    if ((rc = fy_buf_append(&b->payloads, v.p + HDR, plen, fy_txn_err(t))))
      return rc;
    bytes += plen;
    prev = m->seq;
  }
  return rc < 0 ? rc : 0;
}

int fy_outbox_next_batch(struct fy_outbox *ob, const struct fy_outbox_query *q, struct fy_outbox_batch *out,
                         struct fy_err *err) {
  memset(out, 0, sizeof(*out));
  if (!ob || !q || !q->dest)
    return fy_err_set(err, FY_EINVAL, "outbox: no outbox, query or destination given");
  int rc = check_topic(q->topic, err);
  if (rc)
    return rc;
  struct batch_ctx b = {.ob = ob, .q = q, .out = out};
  b.max_msgs = q->max_msgs ? q->max_msgs : DEF_BATCH_MSGS;
  b.max_bytes = q->max_bytes ? q->max_bytes : DEF_BATCH_BYTES;
  out->msgs = calloc(b.max_msgs, sizeof(*out->msgs));
  size_t *offsets = calloc(b.max_msgs, sizeof(size_t));
  if (!out->msgs || !offsets) {
    free(offsets);
    fy_outbox_batch_free(out);
    return fy_err_set(err, FY_ENOMEM, "outbox: out of memory");
  }
  b.offsets = offsets;
  rc = fy_store_read(ob->store, batch_body, &b, err);
  if (rc < 0) {
    free(offsets);
    fy_buf_free(&b.payloads);
    fy_outbox_batch_free(out);
    return rc;
  }
  out->mem = b.payloads.data;
  for (size_t i = 0; i < out->n; i++)
    out->msgs[i].payload.p = out->mem ? out->mem + offsets[i] : NULL;
  free(offsets);
  return 0;
}

void fy_outbox_batch_free(struct fy_outbox_batch *b) {
  if (!b)
    return;
  free(b->msgs);
  free(b->mem);
  memset(b, 0, sizeof(*b));
}

struct list_ctx {
  struct fy_outbox *ob;
  const struct fy_nodeid *dest;
  void *out;
  size_t cap, total;
  bool deep;
  uint64_t now;
};

static int dest_body(struct fy_txn *t, void *user) {
  struct list_ctx *l = user;
  struct fy_cursor *c;
  int rc = fy_cursor_open(t, l->ob->t[T_DEST], (struct fy_bytes){0}, &c);
  if (rc)
    return rc;
  struct fy_bytes k;
  struct fy_nodeid *out = l->out;
  while ((rc = fy_cursor_next(c, &k, NULL)) == 1) {
    if (k.n != FY_NODEID_LEN)
      continue; /* the total row */
    if (l->total < l->cap)
      memcpy(out[l->total].key, k.p, FY_NODEID_LEN);
    l->total++;
  }
  return rc;
}

int fy_outbox_destinations(struct fy_outbox *ob, struct fy_nodeid *out, size_t cap, struct fy_err *err) {
  if (!ob || (cap && !out))
    return fy_err_set(err, FY_EINVAL, "outbox: no outbox or output given");
  struct list_ctx l = {.ob = ob, .out = out, .cap = cap};
  int rc = fy_store_read(ob->store, dest_body, &l, err);
  return rc < 0 ? rc : count_result(0, l.total);
}

/* Reads every message of one queue for its oldest age and most attempts. */
static int deep_stats(struct fy_txn *t, struct list_ctx *l, struct fy_bytes qk,
                      struct fy_outbox_queue_stats *s) {
  struct fy_cursor *c;
  int rc = fy_cursor_open(t, l->ob->t[T_MSG], qk, &c);
  if (rc)
    return rc;
  struct fy_bytes k, v;
  bool first = true;
  while ((rc = fy_cursor_next(c, &k, &v)) == 1) {
    if (k.n != qk.n + 8)
      continue;
    struct hdr h;
    if ((rc = hdr_get(t, v, &h)))
      return rc;
    if (first)
      s->oldest_age_ms = sub_clamp(l->now, h.enqueued_at);
    first = false;
    if (h.attempts > s->max_attempts)
      s->max_attempts = h.attempts;
  }
  fy_cursor_close(c);
  return rc;
}

static int queues_body(struct fy_txn *t, void *user) {
  struct list_ctx *l = user;
  struct fy_cursor *c;
  struct fy_bytes prefix = l->dest ? fy_bytes_of(l->dest->key, FY_NODEID_LEN) : (struct fy_bytes){0};
  int rc = fy_cursor_open(t, l->ob->t[T_QUEUE], prefix, &c);
  if (rc)
    return rc;
  struct fy_bytes k, v;
  struct fy_outbox_queue_stats *out = l->out;
  while ((rc = fy_cursor_next(c, &k, &v)) == 1) {
    if (v.n != 24 || fy_be64_get(v.p + 8) == 0)
      continue;
    if (l->total < l->cap) {
      struct fy_outbox_queue_stats *s = &out[l->total];
      memset(s, 0, sizeof(*s));
      if (!qkey_parse(k.p, k.n, &s->dest, s->topic))
        return fy_err_set(fy_txn_err(t), FY_EIO, "outbox: a queue record is corrupt");
      s->last_seq = fy_be64_get(v.p);
      s->pending = fy_be64_get(v.p + 8);
      s->bytes = fy_be64_get(v.p + 16);
      if (l->deep && (rc = deep_stats(t, l, k, s)) < 0)
        return rc;
    }
    l->total++;
  }
  return rc;
}

static int list_queues(struct fy_outbox *ob, const struct fy_nodeid *dest, bool deep, uint64_t now,
                       struct fy_outbox_queue_stats *out, size_t cap, struct fy_err *err) {
  if (!ob || (cap && !out))
    return fy_err_set(err, FY_EINVAL, "outbox: no outbox or output given");
  struct list_ctx l = {.ob = ob, .dest = dest, .out = out, .cap = cap, .deep = deep, .now = now};
  int rc = fy_store_read(ob->store, queues_body, &l, err);
  return rc < 0 ? rc : count_result(0, l.total);
}

int fy_outbox_queues(struct fy_outbox *ob, const struct fy_nodeid *dest, struct fy_outbox_queue_stats *out,
                     size_t cap, struct fy_err *err) {
  return list_queues(ob, dest, false, 0, out, cap, err);
}

int fy_outbox_stats(struct fy_outbox *ob, const struct fy_nodeid *dest, uint64_t now_ms,
                    struct fy_outbox_queue_stats *out, size_t cap, struct fy_err *err) {
  return list_queues(ob, dest, true, now_ms, out, cap, err);
}
