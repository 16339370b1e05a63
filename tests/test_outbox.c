/* The outbox: sequence numbers and ids, in-order batches with prev_seq,
 * acks, backoff with head-of-line waiting, expiry (and its log lines),
 * quotas (all or nothing, also inside a shared group commit), group commit
 * under many threads, the async calls on a libuv loop, and no loss of any
 * acknowledged enqueue when the writer is SIGKILLed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "outbox/inbox.h"
#include "outbox/outbox.h"
#include "store/store.h"

#define assert_contains(haystack, needle)                                                                    \
  do {                                                                                                       \
    if (!strstr((haystack), (needle)))                                                                       \
      fail_msg("message \"%s\" does not contain \"%s\"", (haystack), (needle));                              \
  } while (0)

#define T0 1700000000000ull /* the test clock's start, ms */

struct ctx {
  char dir[256];
  struct fy_store *store;
  struct fy_outbox *ob;
  /* the clock: fixed, or blocking once (to line requests up behind a group) */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  uint64_t now;
  bool hold, held;
  /* logging into memory */
  char *logbuf;
  size_t loglen;
  FILE *logf;
  struct fy_log log;
};

static uint64_t test_clock(void *user) {
  struct ctx *c = user;
  pthread_mutex_lock(&c->mu);
  if (c->hold) {
    c->held = true;
    pthread_cond_broadcast(&c->cv);
    while (c->hold)
      pthread_cond_wait(&c->cv, &c->mu);
  }
  uint64_t now = c->now;
  pthread_mutex_unlock(&c->mu);
  return now;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static void open_store(struct ctx *c) {
  const struct fy_store_schema *schemas[] = {&fy_outbox_schema, &fy_inbox_schema};
  struct fy_err err;
  if (fy_store_open(&c->store, c->dir, schemas, 2, NULL, &err) != 0)
    fail_msg("store: %s", err.msg);
}

static void open_outbox(struct ctx *c, const struct fy_outbox_config *extra) {
  struct fy_outbox_config cfg = extra ? *extra : (struct fy_outbox_config){0};
  cfg.clock_ms = test_clock;
  cfg.clock_user = c;
  cfg.log = &c->log;
  struct fy_err err;
  if (fy_outbox_open(&c->ob, c->store, &cfg, &err) != 0)
    fail_msg("outbox: %s", err.msg);
}

static void close_all(struct ctx *c) {
  fy_outbox_close(c->ob, NULL, NULL);
  c->ob = NULL;
  fy_store_close(c->store);
  c->store = NULL;
}

static int setup(void **state) {
  struct ctx *c = calloc(1, sizeof(*c));
  const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  snprintf(c->dir, sizeof(c->dir), "%s/ferry-outbox-XXXXXX", base);
  assert_non_null(mkdtemp(c->dir));
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);
  c->now = T0;
  c->logf = open_memstream(&c->logbuf, &c->loglen);
  fy_log_init(&c->log, c->logf, FY_LOG_DEBUG, "test", NULL);
  open_store(c);
  open_outbox(c, NULL);
  *state = c;
  return 0;
}

static int teardown(void **state) {
  struct ctx *c = *state;
  close_all(c);
  fclose(c->logf);
  free(c->logbuf);
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->cv);
  nftw(c->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(c);
  return 0;
}

static struct fy_nodeid node(uint8_t b) {
  struct fy_nodeid id;
  memset(id.key, b, sizeof(id.key));
  return id;
}

static void enqueue(struct ctx *c, uint8_t dest, const char *topic, const char *payload, uint64_t ttl,
                    struct fy_outbox_receipt *r) {
  struct fy_nodeid d = node(dest);
  struct fy_err err;
  if (fy_outbox_enqueue(c->ob, &d, topic, fy_bytes_str(payload), ttl, r, &err) != 0)
    fail_msg("enqueue: %s", err.msg);
}

static void batch(struct ctx *c, uint8_t dest, const char *topic, uint64_t after, size_t max,
                  struct fy_outbox_batch *b) {
  struct fy_nodeid d = node(dest);
  struct fy_outbox_query q = {&d, topic, after, c->now, max, 0};
  struct fy_err err;
  if (fy_outbox_next_batch(c->ob, &q, b, &err) != 0)
    fail_msg("next_batch: %s", err.msg);
}

/* "seq/prev:payload ..." of a batch */
static void describe(const struct fy_outbox_batch *b, char *out, size_t cap) {
  out[0] = '\0';
  for (size_t i = 0; i < b->n; i++)
    snprintf(out + strlen(out), cap - strlen(out), "%" PRIu64 "/%" PRIu64 ":%.*s ", b->msgs[i].seq,
             b->msgs[i].prev_seq, (int)b->msgs[i].payload.n, b->msgs[i].payload.p);
}

static void expect_batch(struct ctx *c, uint8_t dest, const char *topic, uint64_t after, size_t max,
                         const char *want) {
  struct fy_outbox_batch b;
  batch(c, dest, topic, after, max, &b);
  char got[1024];
  describe(&b, got, sizeof(got));
  fy_outbox_batch_free(&b);
  assert_string_equal(got, want);
}

/* ---- tests --------------------------------------------------------------------- */

static void sequence_ids_batches_and_acks(void **state) {
  struct ctx *c = *state;
  struct fy_outbox_receipt r[4];
  enqueue(c, 0xa1, "facts", "one", 0, &r[0]);
  enqueue(c, 0xa1, "facts", "two", 0, &r[1]);
  enqueue(c, 0xa1, "facts", "three", 0, &r[2]);
  enqueue(c, 0xb2, "facts", "other", 0, &r[3]);
  assert_int_equal(r[0].seq, 1);
  assert_int_equal(r[2].seq, 3);
  assert_int_equal(r[3].seq, 1); /* per (destination, topic) */
  assert_int_equal(r[0].enqueued_at, T0);
  uint8_t epoch[FY_MSGID_EPOCH_LEN];
  fy_outbox_epoch(c->ob, epoch);
  assert_memory_equal(r[0].id, epoch, FY_MSGID_EPOCH_LEN);
  assert_memory_equal(r[3].id, epoch, FY_MSGID_EPOCH_LEN);
  assert_memory_not_equal(r[0].id, r[1].id, FY_MSGID_LEN);

  expect_batch(c, 0xa1, "facts", 0, 0, "1/0:one 2/1:two 3/2:three ");
  expect_batch(c, 0xa1, "facts", 0, 2, "1/0:one 2/1:two ");
  expect_batch(c, 0xa1, "facts", 1, 0, "2/1:two 3/2:three "); /* after the one in flight */
  expect_batch(c, 0xa1, "facts", 3, 0, "");
  expect_batch(c, 0xa1, "status", 0, 0, "");

  struct fy_nodeid ids[4];
  struct fy_err err;
  assert_int_equal(fy_outbox_destinations(c->ob, ids, 4, &err), 2);
  assert_memory_equal(ids[0].key, node(0xa1).key, FY_NODEID_LEN);
  assert_memory_equal(ids[1].key, node(0xb2).key, FY_NODEID_LEN);

  struct fy_nodeid a = node(0xa1);
  assert_int_equal(fy_outbox_ack(c->ob, &a, "facts", 2, &err), 2);
  assert_int_equal(fy_outbox_ack(c->ob, &a, "facts", 2, &err), 0); /* acks are idempotent */
  expect_batch(c, 0xa1, "facts", 0, 0, "3/0:three ");
  assert_int_equal(fy_outbox_ack(c->ob, &a, "facts", 3, &err), 1);
  assert_int_equal(fy_outbox_destinations(c->ob, ids, 4, &err), 1);
  assert_memory_equal(ids[0].key, node(0xb2).key, FY_NODEID_LEN);

  /* Numbers are never reused, also across a restart. */
  enqueue(c, 0xa1, "facts", "four", 0, &r[0]);
  assert_int_equal(r[0].seq, 4);
  close_all(c);
  open_store(c);
  open_outbox(c, NULL);
  expect_batch(c, 0xa1, "facts", 0, 0, "4/0:four ");
  expect_batch(c, 0xb2, "facts", 0, 0, "1/0:other ");
  enqueue(c, 0xa1, "facts", "five", 0, &r[0]);
  assert_int_equal(r[0].seq, 5);
  uint8_t epoch2[FY_MSGID_EPOCH_LEN];
  fy_outbox_epoch(c->ob, epoch2);
  assert_memory_equal(epoch, epoch2, FY_MSGID_EPOCH_LEN);

  struct fy_outbox_queue_stats qs[4];
  assert_int_equal(fy_outbox_queues(c->ob, NULL, qs, 4, &err), 2);
  assert_string_equal(qs[0].topic, "facts");
  assert_int_equal(qs[0].pending, 2);
  assert_int_equal(qs[0].bytes, 8);
  assert_int_equal(qs[0].last_seq, 5);
  assert_int_equal(fy_outbox_queues(c->ob, &a, qs, 0, &err), 1); /* counted, none filled */
}

static void batches_respect_byte_limits(void **state) {
  struct ctx *c = *state;
  char big[3000];
  memset(big, 'x', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  for (int i = 0; i < 5; i++)
    enqueue(c, 1, "t", big, 0, NULL);
  struct fy_nodeid d = node(1);
  struct fy_outbox_query q = {&d, "t", 0, T0, 10, 7000};
  struct fy_outbox_batch b;
  struct fy_err err;
  assert_int_equal(fy_outbox_next_batch(c->ob, &q, &b, &err), 0);
  assert_int_equal(b.n, 2);
  assert_int_equal(b.msgs[1].payload.n, 2999);
  assert_memory_equal(b.msgs[1].payload.p, big, 2999);
  fy_outbox_batch_free(&b);
  q.max_bytes = 10; /* the first message always goes */
  assert_int_equal(fy_outbox_next_batch(c->ob, &q, &b, &err), 0);
  assert_int_equal(b.n, 1);
  fy_outbox_batch_free(&b);
  /* An empty payload is a message too. */
  assert_int_equal(fy_outbox_enqueue(c->ob, &d, "empty", (struct fy_bytes){0}, 0, NULL, &err), 0);
  expect_batch(c, 1, "empty", 0, 0, "1/0: ");
}

static void failures_back_off_in_order(void **state) {
  struct ctx *c = *state;
  struct fy_outbox_config cfg = {.backoff_min_ms = 1000, .backoff_max_ms = 4000};
  fy_outbox_close(c->ob, NULL, NULL);
  open_outbox(c, &cfg);
  enqueue(c, 7, "cmd", "a", 0, NULL);
  enqueue(c, 7, "cmd", "b", 0, NULL);
  struct fy_nodeid d = node(7);
  struct fy_err err;
  uint64_t next;
  assert_int_equal(fy_outbox_fail(c->ob, &d, "cmd", 1, T0, &next, &err), 0);
  assert_true(next >= T0 + 500 && next <= T0 + 1000);
  /* The head waits, so nothing after it goes either; the batch says until when. */
  struct fy_outbox_batch b;
  batch(c, 7, "cmd", 0, 0, &b);
  assert_int_equal(b.n, 0);
  assert_int_equal(b.next_due, next);
  fy_outbox_batch_free(&b);
  c->now = next;
  batch(c, 7, "cmd", 0, 0, &b);
  assert_int_equal(b.n, 2);
  assert_int_equal(b.msgs[0].attempts, 1);
  assert_int_equal(b.next_due, 0);
  fy_outbox_batch_free(&b);
  /* Doubling up to the cap: attempts 2, 3, 4, 5 wait [1000,2000], [2000,4000], then [2000,4000]. */
  uint64_t lo[] = {1000, 2000, 2000, 2000}, hi[] = {2000, 4000, 4000, 4000};
  for (int i = 0; i < 4; i++) {
    assert_int_equal(fy_outbox_fail(c->ob, &d, "cmd", 1, T0, &next, &err), 0);
    assert_true(next >= T0 + lo[i] && next <= T0 + hi[i]);
  }
  /* A later message can wait too; the batch stops before it. */
  c->now = T0 + 10000;
  assert_int_equal(fy_outbox_fail(c->ob, &d, "cmd", 2, c->now, &next, &err), 0);
  expect_batch(c, 7, "cmd", 0, 0, "1/0:a ");
  assert_int_equal(fy_outbox_fail(c->ob, &d, "cmd", 9, T0, &next, &err), FY_ENOENT);
  assert_contains(err.msg, "no message 9 in queue 070707070707/cmd");

  struct fy_outbox_queue_stats s;
  assert_int_equal(fy_outbox_stats(c->ob, &d, T0 + 60000, &s, 1, &err), 1);
  assert_int_equal(s.pending, 2);
  assert_int_equal(s.bytes, 2);
  assert_int_equal(s.max_attempts, 5);
  assert_int_equal(s.oldest_age_ms, 60000);
}

static void expiry_deletes_and_logs(void **state) {
  struct ctx *c = *state;
  enqueue(c, 3, "facts", "keep", 0, NULL);
  enqueue(c, 3, "facts", "short", 1000, NULL);
  enqueue(c, 3, "facts", "long", 5000, NULL);
  enqueue(c, 3, "facts", "last", 0, NULL);
  struct fy_err err;
  assert_int_equal(fy_outbox_expire(c->ob, T0 + 999, &err), 0);
  /* Expired but not yet deleted: left out, and out of the prev_seq chain. */
  c->now = T0 + 1000;
  expect_batch(c, 3, "facts", 0, 0, "1/0:keep 3/1:long 4/3:last ");
  assert_int_equal(fy_outbox_expire(c->ob, T0 + 1000, &err), 1);
  fflush(c->logf);
  char want[256];
  char hex[FY_NODEID_HEX_LEN + 1];
  struct fy_nodeid d = node(3);
  fy_nodeid_to_hex(&d, hex);
  snprintf(want, sizeof(want), "event=outbox.expire dest=%s topic=facts seq=2 age_ms=1000", hex);
  assert_contains(c->logbuf, want);
  /* Ack removes the expiry index entry with the message. */
  assert_int_equal(fy_outbox_ack(c->ob, &d, "facts", 3, &err), 2);
  assert_int_equal(fy_outbox_expire(c->ob, T0 + 100000, &err), 0);
  c->now = T0 + 100000;
  expect_batch(c, 3, "facts", 0, 0, "4/0:last ");
  struct fy_outbox_queue_stats s;
  assert_int_equal(fy_outbox_queues(c->ob, &d, &s, 1, &err), 1);
  assert_int_equal(s.pending, 1);
  assert_int_equal(s.bytes, 4);

  /* Many at once: more than one expiry transaction. */
  struct fy_outbox_config cfg = {.expire_max = 7};
  fy_outbox_close(c->ob, NULL, NULL);
  open_outbox(c, &cfg);
  for (int i = 0; i < 20; i++)
    enqueue(c, 4, "x", "y", 10, NULL);
  assert_int_equal(fy_outbox_expire(c->ob, c->now + 10, &err), 20);
  struct fy_nodeid e = node(4);
  assert_int_equal(fy_outbox_queues(c->ob, &e, &s, 1, &err), 0);
}

static void quotas_refuse_whole_requests(void **state) {
  struct ctx *c = *state;
  struct fy_outbox_config cfg = {.dest_max_msgs = 3, .total_max_bytes = 100, .max_payload = 60};
  fy_outbox_close(c->ob, NULL, NULL);
  open_outbox(c, &cfg);
  struct fy_nodeid d = node(5), e = node(6);
  struct fy_err err;
  for (int i = 0; i < 3; i++)
    enqueue(c, 5, "t", "x", 0, NULL);
  assert_int_equal(fy_outbox_enqueue(c->ob, &d, "t", fy_bytes_str("x"), 0, NULL, &err), FY_ELIMIT);
  assert_string_equal(err.msg,
                      "outbox quota: destination 050505050505 already has 3 messages queued; the limit "
                      "is 3 (dest_max_msgs)");
  /* Another topic to the same destination counts against the same quota. */
  assert_int_equal(fy_outbox_enqueue(c->ob, &d, "u", fy_bytes_str("x"), 0, NULL, &err), FY_ELIMIT);
  char p50[51];
  memset(p50, 'p', 50);
  p50[50] = '\0';
  enqueue(c, 6, "t", p50, 0, NULL);
  /* A batch that crosses the byte quota at its second item: none of it is queued. */
  struct fy_outbox_item items[2] = {{e, "t", fy_bytes_str("ok"), 0}, {e, "t", fy_bytes_str(p50), 0}};
  assert_int_equal(fy_outbox_enqueue_batch(c->ob, items, 2, NULL, &err), FY_ELIMIT);
  assert_contains(err.msg, "bytes are queued in all; 50 more would pass the limit of 100 (total_max_bytes); "
                           "nothing of this batch was queued");
  char want[80];
  snprintf(want, sizeof(want), "1/0:%s ", p50);
  expect_batch(c, 6, "t", 0, 0, want);
  /* Size limits. */
  char p61[62];
  memset(p61, 'q', 61);
  p61[61] = '\0';
  assert_int_equal(fy_outbox_enqueue(c->ob, &e, "t", fy_bytes_str(p61), 0, NULL, &err), FY_ELIMIT);
  assert_contains(err.msg, "a payload of 61 bytes is over the limit of 60 (max_payload)");
  char topic[80];
  memset(topic, 'a', 65);
  topic[65] = '\0';
  assert_int_equal(fy_outbox_enqueue(c->ob, &e, topic, fy_bytes_str("x"), 0, NULL, &err), FY_EINVAL);
  assert_contains(err.msg, "a topic is 1 to 64 bytes");
  assert_int_equal(fy_outbox_enqueue(c->ob, &e, "", fy_bytes_str("x"), 0, NULL, &err), FY_EINVAL);
  /* Acking frees quota. */
  assert_int_equal(fy_outbox_ack(c->ob, &d, "t", 1, &err), 1);
  enqueue(c, 5, "t", "x", 0, NULL);
}

/* Requests that share a group: one over quota (after writing its first
 * item), the others fine. The clock holds the committer inside the first
 * group while the rest line up behind it. */
struct producer {
  struct ctx *c;
  struct fy_outbox_item items[2];
  size_t n;
  int rc;
  struct fy_err err;
  pthread_t th;
};

static void *produce(void *arg) {
  struct producer *p = arg;
  p->rc = fy_outbox_enqueue_batch(p->c->ob, p->items, p->n, NULL, &p->err);
  return NULL;
}

static void quota_inside_a_shared_group(void **state) {
  struct ctx *c = *state;
  struct fy_outbox_config cfg = {.dest_max_msgs = 2};
  fy_outbox_close(c->ob, NULL, NULL);
  open_outbox(c, &cfg);
  struct fy_nodeid a = node(0x11), b = node(0x22);
  struct producer p[4] = {
      {.c = c, .items = {{b, "t", fy_bytes_str("first"), 0}}, .n = 1},
      {.c = c, .items = {{a, "t", fy_bytes_str("a1"), 0}}, .n = 1},
      {.c = c, .items = {{b, "t", fy_bytes_str("b2"), 0}, {b, "t", fy_bytes_str("b3"), 0}}, .n = 2},
      {.c = c, .items = {{a, "t", fy_bytes_str("a2"), 0}}, .n = 1},
  };
  pthread_mutex_lock(&c->mu);
  c->hold = true;
  pthread_mutex_unlock(&c->mu);
  pthread_create(&p[0].th, NULL, produce, &p[0]);
  pthread_mutex_lock(&c->mu);
  while (!c->held)
    pthread_cond_wait(&c->cv, &c->mu);
  pthread_mutex_unlock(&c->mu);
  for (int i = 1; i < 4; i++) {
    pthread_create(&p[i].th, NULL, produce, &p[i]);
    usleep(20000); /* in this order behind the held group */
  }
  pthread_mutex_lock(&c->mu);
  c->hold = false;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
  for (int i = 0; i < 4; i++)
    pthread_join(p[i].th, NULL);
  assert_int_equal(p[0].rc, 0);
  assert_int_equal(p[1].rc, 0);
  assert_int_equal(p[2].rc, FY_ELIMIT); /* b2 fits (2 of 2), b3 does not: neither is queued */
  assert_contains(p[2].err.msg, "the limit is 2 (dest_max_msgs); nothing of this batch was queued");
  assert_int_equal(p[3].rc, 0);
  expect_batch(c, 0x11, "t", 0, 0, "1/0:a1 2/1:a2 ");
  expect_batch(c, 0x22, "t", 0, 0, "1/0:first ");
  struct fy_outbox_counters n;
  fy_outbox_counters(c->ob, &n);
  assert_int_equal(n.commits, 2); /* {first}, then {a1, b2+b3 (refused), a2} */
  assert_int_equal(n.messages, 3);
}

/* Many threads: every message gets a distinct number, and commits are shared. */
struct hammer {
  struct ctx *c;
  int id, count;
  uint64_t *seqs;
  int failures;
};

static void *hammer_thread(void *arg) {
  struct hammer *h = arg;
  struct fy_nodeid d = node((uint8_t)(h->id % 4));
  for (int i = 0; i < h->count; i++) {
    struct fy_outbox_receipt r;
    char payload[64];
    snprintf(payload, sizeof(payload), "%d-%d", h->id, i);
    if (fy_outbox_enqueue(h->c->ob, &d, "bulk", fy_bytes_str(payload), 0, &r, NULL) != 0)
      h->failures++;
    h->seqs[i] = r.seq;
  }
  return NULL;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static void group_commit_under_many_threads(void **state) {
  struct ctx *c = *state;
  enum { THREADS = 16, EACH = 100 };
  struct hammer h[THREADS];
  pthread_t th[THREADS];
  for (int i = 0; i < THREADS; i++) {
    h[i] = (struct hammer){c, i, EACH, calloc(EACH, sizeof(uint64_t)), 0};
    pthread_create(&th[i], NULL, hammer_thread, &h[i]);
  }
  for (int i = 0; i < THREADS; i++)
    pthread_join(th[i], NULL);
  /* Per destination (4 threads each): numbers 1..400, each once. */
  for (int d = 0; d < 4; d++) {
    uint64_t all[4 * EACH];
    size_t n = 0;
    for (int i = d; i < THREADS; i += 4) {
      assert_int_equal(h[i].failures, 0);
      memcpy(all + n, h[i].seqs, EACH * sizeof(uint64_t));
      n += EACH;
    }
    qsort(all, n, sizeof(all[0]), cmp_u64);
    for (size_t i = 0; i < n; i++)
      assert_int_equal(all[i], i + 1);
  }
  for (int i = 0; i < THREADS; i++)
    free(h[i].seqs);
  struct fy_outbox_counters n;
  fy_outbox_counters(c->ob, &n);
  assert_int_equal(n.messages, THREADS * EACH);
  print_message("%d enqueues in %" PRIu64 " commits\n", THREADS * EACH, n.commits);
  assert_true(n.commits < (uint64_t)THREADS * EACH);
  struct fy_outbox_queue_stats s[8];
  assert_int_equal(fy_outbox_queues(c->ob, NULL, s, 8, NULL), 4);
  for (int i = 0; i < 4; i++)
    assert_int_equal(s[i].pending, 4 * EACH);
}

/* Enqueued inside an application transaction: with it, or not at all. */
struct txn_enqueue {
  struct fy_outbox *ob;
  bool fail_after;
  struct fy_outbox_receipt r[2];
};

static const struct fy_store_table_def app_table = {"app.state", 0};
static const struct fy_store_schema app_schema = {"app", &app_table, 1, NULL, 0};

static int enqueue_in_txn(struct fy_txn *t, void *user) {
  struct txn_enqueue *te = user;
  struct fy_outbox_item items[2] = {{node(8), "reply", fy_bytes_str("r1"), 0},
                                    {node(8), "reply", fy_bytes_str("r2"), 0}};
  int rc = fy_outbox_enqueue_txn(te->ob, t, items, 2, te->r);
  if (rc)
    return rc;
  if ((rc = fy_store_put(t, fy_txn_table(t, &app_table), fy_bytes_str("k"), fy_bytes_str("v"))))
    return rc;
  return te->fail_after ? fy_err_set(fy_txn_err(t), FY_EINVAL, "the application changed its mind") : 0;
}

static void enqueue_inside_a_transaction(void **state) {
  struct ctx *c = *state;
  close_all(c);
  const struct fy_store_schema *schemas[] = {&fy_outbox_schema, &app_schema};
  struct fy_err err;
  assert_int_equal(fy_store_open(&c->store, c->dir, schemas, 2, NULL, &err), 0);
  struct fy_outbox_config cfg = {.dest_max_msgs = 4};
  open_outbox(c, &cfg);
  enqueue(c, 8, "reply", "r0", 0, NULL);
  struct txn_enqueue te = {.ob = c->ob, .fail_after = true};
  assert_int_equal(fy_store_write(c->store, enqueue_in_txn, &te, &err), FY_EINVAL);
  expect_batch(c, 8, "reply", 0, 0, "1/0:r0 ");
  te.fail_after = false;
  assert_int_equal(fy_store_write(c->store, enqueue_in_txn, &te, &err), 0);
  assert_int_equal(te.r[0].seq, 2); /* the aborted one used no numbers */
  assert_int_equal(te.r[1].seq, 3);
  enqueue(c, 8, "reply", "r3", 0, NULL);
  expect_batch(c, 8, "reply", 0, 0, "1/0:r0 2/1:r1 3/2:r2 4/3:r3 ");
  /* Over the quota: refused, and the caller's transaction goes with it. */
  assert_int_equal(fy_store_write(c->store, enqueue_in_txn, &te, &err), FY_ELIMIT);
  assert_contains(err.msg, "the limit is 4 (dest_max_msgs)");
  struct fy_outbox_queue_stats s;
  struct fy_nodeid d = node(8);
  assert_int_equal(fy_outbox_queues(c->ob, &d, &s, 1, &err), 1);
  assert_int_equal(s.pending, 4);
  /* Not in a read transaction. */
  assert_int_equal(fy_store_read(c->store, enqueue_in_txn, &te, &err), FY_EINVAL);
  assert_contains(err.msg, "needs a write transaction");
}

/* ---- async calls on a loop -------------------------------------------------------- */

struct loop_state {
  struct ctx *c;
  uv_loop_t loop;
  uv_thread_t loop_thread;
  int enqueued, acked;
  uint64_t acked_count, last_seq;
  bool closed;
};

static void on_enqueued(int rc, const struct fy_outbox_receipt *r, const struct fy_err *err, void *user) {
  struct loop_state *ls = user;
  assert_true(uv_thread_equal(&ls->loop_thread, &(uv_thread_t){uv_thread_self()}));
  if (rc != 0)
    fail_msg("async enqueue: %s", err->msg);
  ls->enqueued++;
  if (r->seq > ls->last_seq)
    ls->last_seq = r->seq;
}

static void on_acked(int rc, uint64_t value, const struct fy_err *err, void *user) {
  struct loop_state *ls = user;
  if (rc != 0)
    fail_msg("async ack: %s", err->msg);
  ls->acked++;
  ls->acked_count += value;
}

static void on_closed(void *user) {
  struct loop_state *ls = user;
  ls->closed = true;
}

static void async_calls_complete_on_the_loop(void **state) {
  struct ctx *c = *state;
  struct loop_state ls = {.c = c};
  assert_int_equal(uv_loop_init(&ls.loop), 0);
  ls.loop_thread = uv_thread_self();
  fy_outbox_close(c->ob, NULL, NULL);
  struct fy_outbox_config cfg = {.loop = &ls.loop};
  open_outbox(c, &cfg);
  struct fy_nodeid d = node(9);
  struct fy_err err;
  for (int i = 0; i < 50; i++) {
    char payload[16];
    snprintf(payload, sizeof(payload), "m%d", i);
    assert_int_equal(
        fy_outbox_enqueue_async(c->ob, &d, "async", fy_bytes_str(payload), 0, on_enqueued, &ls, &err), 0);
  }
  /* The payload was copied: the caller's buffer is gone already. */
  while (ls.enqueued < 50)
    uv_run(&ls.loop, UV_RUN_ONCE);
  assert_int_equal(ls.last_seq, 50);
  assert_int_equal(fy_outbox_ack_async(c->ob, &d, "async", 20, on_acked, &ls, &err), 0);
  while (ls.acked < 1)
    uv_run(&ls.loop, UV_RUN_ONCE);
  assert_int_equal(ls.acked_count, 20);
  expect_batch(c, 9, "async", 0, 1, "21/0:m20 ");
  /* Bad arguments fail at once, and the callback never runs. */
  assert_int_equal(fy_outbox_enqueue_async(c->ob, &d, "", fy_bytes_str("x"), 0, on_enqueued, &ls, &err),
                   FY_EINVAL);
  /* Requests still queued at close finish first, on the loop. */
  for (int i = 0; i < 10; i++)
    assert_int_equal(
        fy_outbox_enqueue_async(c->ob, &d, "async", fy_bytes_str("late"), 0, on_enqueued, &ls, &err), 0);
  fy_outbox_close(c->ob, on_closed, &ls);
  c->ob = NULL;
  assert_int_equal(ls.enqueued, 60);
  while (!ls.closed)
    uv_run(&ls.loop, UV_RUN_ONCE);
  assert_int_equal(uv_loop_close(&ls.loop), 0);
  open_outbox(c, NULL);
  struct fy_outbox_queue_stats s;
  assert_int_equal(fy_outbox_queues(c->ob, &d, &s, 1, &err), 1);
  assert_int_equal(s.pending, 40);
  /* Without a loop there are no async calls. */
  assert_int_equal(fy_outbox_enqueue_async(c->ob, &d, "async", fy_bytes_str("x"), 0, on_enqueued, &ls, &err),
                   FY_EINVAL);
  assert_contains(err.msg, "async calls need one");
}

/* ---- a writer killed while enqueuing ----------------------------------------------- */

struct child_writer {
  struct fy_outbox *ob;
  int fd, id;
  pthread_mutex_t *mu;
};

static void *child_enqueue(void *arg) {
  struct child_writer *w = arg;
  struct fy_nodeid d = node((uint8_t)w->id);
  for (uint32_t i = 0;; i++) {
    char payload[256];
    memset(payload, 'a' + w->id, sizeof(payload));
    snprintf(payload, 16, "%u", i);
    struct fy_outbox_receipt r;
    if (fy_outbox_enqueue(w->ob, &d, "crash", fy_bytes_of(payload, sizeof(payload)), 0, &r, NULL) != 0)
      _exit(4);
    /* Only now is it promised: report it. */
    uint8_t rec[9];
    rec[0] = (uint8_t)w->id;
    fy_be64_put(rec + 1, r.seq);
    pthread_mutex_lock(w->mu);
    if (write(w->fd, rec, sizeof(rec)) != (ssize_t)sizeof(rec))
      _exit(5);
    pthread_mutex_unlock(w->mu);
  }
  return NULL;
}

static void no_acknowledged_enqueue_is_lost_to_sigkill(void **state) {
  struct ctx *c = *state;
  close_all(c);
  int pfd[2];
  assert_int_equal(pipe(pfd), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(pfd[0]);
    open_store(c);
    struct fy_err err;
    if (fy_outbox_open(&c->ob, c->store, NULL, &err) != 0)
      _exit(3);
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    struct child_writer w[8];
    pthread_t th[8];
    for (int i = 0; i < 8; i++) {
      w[i] = (struct child_writer){c->ob, pfd[1], i, &mu};
      pthread_create(&th[i], NULL, child_enqueue, &w[i]);
    }
    pause();
    _exit(0);
  }
  close(pfd[1]);
  /* Let it run until 2000 enqueues were promised, then kill it mid-write. */
  static uint64_t last[8];
  memset(last, 0, sizeof(last));
  size_t got = 0;
  uint8_t rec[9];
  size_t have = 0;
  for (;;) {
    ssize_t n = read(pfd[0], rec + have, sizeof(rec) - have);
    if (n <= 0)
      break;
    have += (size_t)n;
    if (have < sizeof(rec))
      continue;
    have = 0;
    uint64_t seq = fy_be64_get(rec + 1);
    assert_true(rec[0] < 8);
    if (seq > last[rec[0]])
      last[rec[0]] = seq;
    if (++got == 2000)
      kill(pid, SIGKILL);
  }
  close(pfd[0]);
  int status;
  waitpid(pid, &status, 0);
  assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  open_store(c);
  open_outbox(c, NULL);
  struct fy_err err;
  for (int i = 0; i < 8; i++) {
    struct fy_nodeid d = node((uint8_t)i);
    struct fy_outbox_queue_stats s;
    assert_int_equal(fy_outbox_queues(c->ob, &d, &s, 1, &err), 1);
    /* Every promised message is there, numbered 1..last without holes. */
    assert_true(s.last_seq >= last[i]);
    assert_int_equal(s.pending, s.last_seq);
    struct fy_outbox_query q = {&d, "crash", 0, T0, 100000, SIZE_MAX};
    struct fy_outbox_batch b;
    assert_int_equal(fy_outbox_next_batch(c->ob, &q, &b, &err), 0);
    assert_int_equal(b.n, s.pending);
    for (size_t j = 0; j < b.n; j++) {
      assert_int_equal(b.msgs[j].seq, j + 1);
      char want[24];
      snprintf(want, sizeof(want), "%u", (unsigned)j);
      assert_int_equal(b.msgs[j].payload.n, 256);
      assert_string_equal((const char *)b.msgs[j].payload.p, want);
    }
    fy_outbox_batch_free(&b);
  }
  /* And it goes on from there. */
  struct fy_outbox_receipt r;
  enqueue(c, 0, "crash", "after", 0, &r);
  assert_true(r.seq > last[0]);
}

static void bad_arguments(void **state) {
  struct ctx *c = *state;
  struct fy_err err;
  struct fy_outbox *ob;
  struct fy_store *s;
  char dir[300];
  snprintf(dir, sizeof(dir), "%s/other", c->dir);
  const struct fy_store_schema *only_inbox[] = {&fy_inbox_schema};
  assert_int_equal(fy_store_open(&s, dir, only_inbox, 1, NULL, &err), 0);
  assert_int_equal(fy_outbox_open(&ob, s, NULL, &err), FY_EINVAL);
  assert_contains(err.msg, "without fy_outbox_schema");
  fy_store_close(s);
  struct fy_nodeid d = node(1);
  struct fy_outbox_query q = {&d, NULL, 0, 0, 0, 0};
  struct fy_outbox_batch b;
  assert_int_equal(fy_outbox_next_batch(c->ob, &q, &b, &err), FY_EINVAL);
  assert_int_equal(fy_outbox_enqueue_batch(c->ob, NULL, FY_OUTBOX_BATCH_MAX + 1, NULL, &err), FY_EINVAL);
  struct fy_outbox_item it = {d, "t", fy_bytes_str("x"), 0};
  assert_int_equal(fy_outbox_enqueue_batch(c->ob, &it, FY_OUTBOX_BATCH_MAX + 1, NULL, &err), FY_ELIMIT);
  assert_int_equal(fy_outbox_enqueue_batch(c->ob, &it, 0, NULL, &err), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(sequence_ids_batches_and_acks, setup, teardown),
      cmocka_unit_test_setup_teardown(batches_respect_byte_limits, setup, teardown),
      cmocka_unit_test_setup_teardown(failures_back_off_in_order, setup, teardown),
      cmocka_unit_test_setup_teardown(expiry_deletes_and_logs, setup, teardown),
      cmocka_unit_test_setup_teardown(quotas_refuse_whole_requests, setup, teardown),
      cmocka_unit_test_setup_teardown(quota_inside_a_shared_group, setup, teardown),
      cmocka_unit_test_setup_teardown(group_commit_under_many_threads, setup, teardown),
      cmocka_unit_test_setup_teardown(enqueue_inside_a_transaction, setup, teardown),
      cmocka_unit_test_setup_teardown(async_calls_complete_on_the_loop, setup, teardown),
      cmocka_unit_test_setup_teardown(no_acknowledged_enqueue_is_lost_to_sigkill, setup, teardown),
      cmocka_unit_test_setup_teardown(bad_arguments, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
