/* The inbox: exactly-once application by watermark. A handler's writes
 * commit with the watermark or not at all (also when the process dies inside
 * the handler); duplicates are recognised; out-of-order messages are refused
 * by prev_seq; gaps the sender vouches for are accepted and logged; a new
 * sender epoch starts over; batches stop at the first refusal; and an
 * outbox-to-inbox round trip with lost acks applies everything once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <ftw.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

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

/* The application's own table, written by the handlers. */
static const struct fy_store_table_def app_tables[] = {{"app.effects", 0}};
static const struct fy_store_schema app_schema = {"app", app_tables, 1, NULL, 0};

struct ctx {
  char root[256]; /* removed at the end */
  char dir[300];  /* the store's */
  struct fy_store *store;
  struct fy_inbox *in;
  char *logbuf;
  size_t loglen;
  FILE *logf;
  struct fy_log log;
  /* handler behaviour */
  int calls;
  uint64_t refuse_seq; /* refuse this one (0: none) */
  bool write_then_refuse;
  bool die_inside;
  size_t big; /* bytes of extra effect to write (to grow the map) */
};

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

/* Records "seq:payload" under the key topic/seq. */
static int effect_handler(struct fy_txn *t, const struct fy_nodeid *sender, const char *topic,
                          const struct fy_inbox_msg *m, void *user) {
  (void)sender;
  struct ctx *c = user;
  c->calls++;
  struct fy_table *tb = fy_txn_table(t, &app_tables[0]);
  char key[96], val[128];
  snprintf(key, sizeof(key), "%s/%08" PRIu64, topic, m->seq);
  snprintf(val, sizeof(val), "%.*s", (int)m->payload.n, m->payload.p);
  if (m->seq == c->refuse_seq && !c->write_then_refuse)
    return fy_err_set(fy_txn_err(t), FY_EINVAL, "handler: not message %" PRIu64, m->seq);
  int rc = fy_store_put(t, tb, fy_bytes_str(key), fy_bytes_str(val));
  if (rc)
    return rc;
  if (c->big) {
    uint8_t *p;
    snprintf(key, sizeof(key), "big/%08" PRIu64, m->seq);
    if ((rc = fy_store_reserve(t, tb, fy_bytes_str(key), c->big, &p)))
      return rc;
    memset(p, 0x5a, c->big);
  }
  if (c->die_inside)
    raise(SIGKILL);
  if (m->seq == c->refuse_seq)
    return fy_err_set(fy_txn_err(t), FY_EINVAL, "handler: wrote, then refused %" PRIu64, m->seq);
  return 0;
}

static void open_all(struct ctx *c, uint64_t initial_map) {
  const struct fy_store_schema *schemas[] = {&fy_outbox_schema, &fy_inbox_schema, &app_schema};
  struct fy_store_opts o = {.initial_map = initial_map};
  struct fy_err err;
  if (fy_store_open(&c->store, c->dir, schemas, 3, &o, &err) != 0)
    fail_msg("store: %s", err.msg);
  assert_int_equal(fy_inbox_open(&c->in, c->store, &c->log, &err), 0);
  assert_int_equal(fy_inbox_register(c->in, "facts", effect_handler, c, &err), 0);
}

static void close_all(struct ctx *c) {
  fy_inbox_close(c->in);
  c->in = NULL;
  fy_store_close(c->store);
  c->store = NULL;
}

static int setup(void **state) {
  struct ctx *c = calloc(1, sizeof(*c));
  const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  snprintf(c->root, sizeof(c->root), "%s/ferry-inbox-XXXXXX", base);
  assert_non_null(mkdtemp(c->root));
  snprintf(c->dir, sizeof(c->dir), "%s", c->root);
  c->logf = open_memstream(&c->logbuf, &c->loglen);
  fy_log_init(&c->log, c->logf, FY_LOG_DEBUG, "test", NULL);
  open_all(c, 0);
  *state = c;
  return 0;
}

static int teardown(void **state) {
  struct ctx *c = *state;
  close_all(c);
  fclose(c->logf);
  free(c->logbuf);
  nftw(c->root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(c);
  return 0;
}

static struct fy_nodeid node(uint8_t b) {
  struct fy_nodeid id;
  memset(id.key, b, sizeof(id.key));
  return id;
}

static struct fy_inbox_msg msg(uint8_t epoch, uint64_t seq, uint64_t prev, const char *payload) {
  struct fy_inbox_msg m = {.seq = seq, .prev_seq = prev, .payload = fy_bytes_str(payload)};
  memset(m.id, epoch, FY_MSGID_EPOCH_LEN);
  fy_be64_put(m.id + FY_MSGID_EPOCH_LEN, seq * 1000 + epoch);
  return m;
}

static int deliver(struct ctx *c, uint8_t sender, struct fy_inbox_msg m, struct fy_err *err) {
  struct fy_nodeid s = node(sender);
  return fy_inbox_deliver(c->in, &s, "facts", &m, err);
}

/* Every effect, "key=value ...". */
static int list_effects(struct fy_txn *t, void *user) {
  char *out = user;
  struct fy_cursor *cur;
  int rc = fy_cursor_open(t, fy_txn_table(t, &app_tables[0]), fy_bytes_str("facts/"), &cur);
  if (rc)
    return rc;
  struct fy_bytes k, v;
  out[0] = '\0';
  while ((rc = fy_cursor_next(cur, &k, &v)) == 1)
    snprintf(out + strlen(out), 1024 - strlen(out), "%.*s=%.*s ", (int)(k.n - 6), k.p + 6, (int)v.n, v.p);
  return rc;
}

static void expect_effects(struct ctx *c, const char *want) {
  char out[1024];
  struct fy_err err;
  assert_int_equal(fy_store_read(c->store, list_effects, out, &err), 0);
  assert_string_equal(out, want);
}

static uint64_t watermark(struct ctx *c, uint8_t sender) {
  struct fy_nodeid s = node(sender);
  struct fy_inbox_mark m;
  struct fy_err err;
  int rc = fy_inbox_watermark(c->in, &s, "facts", &m, &err);
  assert_true(rc >= 0);
  return rc == 1 ? m.seq : 0;
}

/* ---- tests ------------------------------------------------------------------- */

static void applies_once_and_acknowledges_duplicates(void **state) {
  struct ctx *c = *state;
  struct fy_err err;
  assert_int_equal(watermark(c, 1), 0);
  assert_int_equal(deliver(c, 1, msg(1, 1, 0, "a"), &err), FY_INBOX_APPLIED);
  assert_int_equal(deliver(c, 1, msg(1, 1, 0, "a"), &err), FY_INBOX_DUPLICATE);
  assert_int_equal(deliver(c, 1, msg(1, 2, 1, "b"), &err), FY_INBOX_APPLIED);
  assert_int_equal(deliver(c, 1, msg(1, 1, 0, "a"), &err), FY_INBOX_DUPLICATE);
  assert_int_equal(c->calls, 2);
  assert_int_equal(watermark(c, 1), 2);
  /* Another sender has its own watermark. */
  assert_int_equal(deliver(c, 2, msg(9, 1, 0, "z"), &err), FY_INBOX_APPLIED);
  assert_int_equal(watermark(c, 2), 1);
  expect_effects(c, "00000001=z 00000002=b "); /* keyed by topic and seq: z replaced a */
  /* It survives a restart. */
  close_all(c);
  open_all(c, 0);
  assert_int_equal(deliver(c, 1, msg(1, 2, 1, "b"), &err), FY_INBOX_DUPLICATE);
  struct fy_nodeid s = node(1);
  struct fy_inbox_mark m;
  assert_int_equal(fy_inbox_watermark(c->in, &s, "facts", &m, &err), 1);
  uint8_t epoch[FY_MSGID_EPOCH_LEN];
  memset(epoch, 1, sizeof(epoch));
  assert_memory_equal(m.epoch, epoch, FY_MSGID_EPOCH_LEN);
  assert_true(m.updated_at > 1600000000000ull);
}

static void handler_writes_commit_with_the_watermark(void **state) {
  struct ctx *c = *state;
  struct fy_err err;
  c->refuse_seq = 1;
  assert_int_equal(deliver(c, 1, msg(1, 1, 0, "a"), &err), FY_EINVAL);
  assert_string_equal(err.msg, "handler: not message 1");
  c->write_then_refuse = true;
  assert_int_equal(deliver(c, 1, msg(1, 1, 0, "a"), &err), FY_EINVAL);
  assert_string_equal(err.msg, "handler: wrote, then refused 1");
  expect_effects(c, ""); /* the write before the refusal went with it */
  assert_int_equal(watermark(c, 1), 0);
  c->refuse_seq = 0;
  assert_int_equal(deliver(c, 1, msg(1, 1, 0, "a"), &err), FY_INBOX_APPLIED);
  expect_effects(c, "00000001=a ");
  /* Unknown topics and bad numbers apply nothing. */
  struct fy_nodeid s = node(1);
  struct fy_inbox_msg m = msg(1, 2, 1, "x");
  assert_int_equal(fy_inbox_deliver(c->in, &s, "other", &m, &err), FY_ENOENT);
  assert_contains(err.msg, "no handler for topic other");
  assert_int_equal(deliver(c, 1, msg(1, 0, 0, "x"), &err), FY_EINVAL);
  assert_contains(err.msg, "sequence number 0");
  assert_int_equal(watermark(c, 1), 1);
}

static void order_gaps_and_epochs(void **state) {
  struct ctx *c = *state;
  struct fy_err err;
  for (uint64_t i = 1; i <= 3; i++)
    assert_int_equal(deliver(c, 1, msg(1, i, i - 1, "m"), &err), FY_INBOX_APPLIED);
  /* 5 follows 4 in the sender's queue, and 4 was not applied: refused. */
  assert_int_equal(deliver(c, 1, msg(1, 5, 4, "m"), &err), FY_EAGAIN);
  assert_contains(err.msg, "message 5 follows 4, but only up to 3 is applied; resend from the oldest");
  assert_int_equal(watermark(c, 1), 3);
  /* The sender says 4 expired (5 now follows 3): a gap, accepted and logged. */
  assert_int_equal(deliver(c, 1, msg(1, 5, 3, "m"), &err), FY_INBOX_APPLIED);
  assert_int_equal(watermark(c, 1), 5);
  /* prev_seq 0 vouches for everything before. */
  assert_int_equal(deliver(c, 1, msg(1, 9, 0, "m"), &err), FY_INBOX_APPLIED);
  fflush(c->logf);
  char hex[FY_NODEID_HEX_LEN + 1];
  struct fy_nodeid s = node(1);
  fy_nodeid_to_hex(&s, hex);
  char want[256];
  snprintf(want, sizeof(want), "event=inbox.gap sender=%s topic=facts applied=3 seq=5", hex);
  assert_contains(c->logbuf, want);
  snprintf(want, sizeof(want), "event=inbox.gap sender=%s topic=facts applied=5 seq=9", hex);
  assert_contains(c->logbuf, want);
  /* The sender's store was recreated: epoch 2 starts at 1 again. */
  assert_int_equal(deliver(c, 1, msg(2, 1, 0, "new"), &err), FY_INBOX_APPLIED);
  assert_int_equal(deliver(c, 1, msg(2, 1, 0, "new"), &err), FY_INBOX_DUPLICATE);
  assert_int_equal(watermark(c, 1), 1);
  fflush(c->logf);
  snprintf(want, sizeof(want), "event=inbox.new_epoch sender=%s topic=facts old_applied=9 seq=1", hex);
  assert_contains(c->logbuf, want);
  /* A new epoch that does not start at its sender's oldest message is out of order. */
  assert_int_equal(deliver(c, 1, msg(3, 7, 6, "x"), &err), FY_EAGAIN);
  assert_int_equal(watermark(c, 1), 1);
}

static void batches_stop_at_the_first_refusal(void **state) {
  struct ctx *c = *state;
  struct fy_nodeid s = node(1);
  struct fy_inbox_msg m[10];
  char payloads[10][8];
  for (int i = 0; i < 10; i++) {
    snprintf(payloads[i], sizeof(payloads[i]), "p%d", i + 1);
    m[i] = msg(1, (uint64_t)i + 1, (uint64_t)i, payloads[i]);
  }
  int results[10];
  struct fy_err err;
  c->refuse_seq = 7;
  c->write_then_refuse = true;
  assert_int_equal(fy_inbox_deliver_batch(c->in, &s, "facts", m, 10, results, &err), 6);
  for (int i = 0; i < 6; i++)
    assert_int_equal(results[i], FY_INBOX_APPLIED);
  assert_int_equal(results[6], FY_EINVAL);
  assert_string_equal(err.msg, "handler: wrote, then refused 7");
  assert_int_equal(watermark(c, 1), 6);
  expect_effects(c, "00000001=p1 00000002=p2 00000003=p3 00000004=p4 00000005=p5 00000006=p6 ");
  /* Resent from 5: duplicates first, then the rest. */
  c->refuse_seq = 0;
  assert_int_equal(fy_inbox_deliver_batch(c->in, &s, "facts", m + 4, 6, results, &err), 6);
  assert_int_equal(results[0], FY_INBOX_DUPLICATE);
  assert_int_equal(results[1], FY_INBOX_DUPLICATE);
  assert_int_equal(results[2], FY_INBOX_APPLIED);
  assert_int_equal(results[5], FY_INBOX_APPLIED);
  assert_int_equal(watermark(c, 1), 10);
  /* Refused first: nothing handled. */
  struct fy_inbox_msg late = msg(1, 12, 11, "x");
  assert_int_equal(fy_inbox_deliver_batch(c->in, &s, "facts", &late, 1, results, &err), 0);
  assert_int_equal(results[0], FY_EAGAIN);
}

static void a_handler_may_run_again_when_the_map_grows(void **state) {
  struct ctx *c = *state;
  close_all(c);
  snprintf(c->dir + strlen(c->dir), sizeof(c->dir) - strlen(c->dir), "/small");
  open_all(c, 1u << 20); /* a new store, with a 1 MiB map */
  c->big = 3u << 20;
  struct fy_err err;
  assert_int_equal(deliver(c, 1, msg(1, 1, 0, "big"), &err), FY_INBOX_APPLIED);
  assert_true(c->calls >= 2);
  assert_int_equal(watermark(c, 1), 1);
  expect_effects(c, "00000001=big ");
}

static void death_inside_the_handler_applies_nothing(void **state) {
  struct ctx *c = *state;
  struct fy_err err;
  assert_int_equal(deliver(c, 1, msg(1, 1, 0, "a"), &err), FY_INBOX_APPLIED);
  close_all(c);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    open_all(c, 0);
    c->die_inside = true;
    deliver(c, 1, msg(1, 2, 1, "b"), &err);
    _exit(3);
  }
  int status;
  waitpid(pid, &status, 0);
  assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  open_all(c, 0);
  assert_int_equal(watermark(c, 1), 1);
  expect_effects(c, "00000001=a ");
  /* The sender, never acknowledged, sends 2 again: applied once. */
  assert_int_equal(deliver(c, 1, msg(1, 2, 1, "b"), &err), FY_INBOX_APPLIED);
  assert_int_equal(deliver(c, 1, msg(1, 2, 1, "b"), &err), FY_INBOX_DUPLICATE);
  expect_effects(c, "00000001=a 00000002=b ");
}

/* A sender's outbox (its own store) feeding this inbox, with acks lost and
 * one pipelined message arriving after a failure. */
static void outbox_to_inbox_round_trip(void **state) {
  struct ctx *c = *state;
  char sdir[320];
  snprintf(sdir, sizeof(sdir), "%s/sender", c->root);
  const struct fy_store_schema *schemas[] = {&fy_outbox_schema};
  struct fy_store *ss;
  struct fy_outbox *ob;
  struct fy_err err;
  assert_int_equal(fy_store_open(&ss, sdir, schemas, 1, NULL, &err), 0);
  assert_int_equal(fy_outbox_open(&ob, ss, NULL, &err), 0);
  struct fy_nodeid me = node(0x42), sender = node(0x77);
  for (int i = 1; i <= 5; i++) {
    char p[8];
    snprintf(p, sizeof(p), "f%d", i);
    assert_int_equal(fy_outbox_enqueue(ob, &me, "facts", fy_bytes_str(p), 0, NULL, &err), 0);
  }
  struct fy_outbox_query q = {&me, "facts", 0, UINT64_MAX - 1, 3, 0};
  struct fy_outbox_batch b;
  int results[8];
  /* Batch 1..3: the receiver refuses 2 (say, a transient error). */
  assert_int_equal(fy_outbox_next_batch(ob, &q, &b, &err), 0);
  assert_int_equal(b.n, 3);
  struct fy_inbox_msg im[8];
  for (size_t i = 0; i < b.n; i++)
    im[i] = (struct fy_inbox_msg){b.msgs[i].seq, b.msgs[i].prev_seq, {0}, b.msgs[i].payload};
  for (size_t i = 0; i < b.n; i++)
    memcpy(im[i].id, b.msgs[i].id, FY_MSGID_LEN);
  c->refuse_seq = 2;
  assert_int_equal(fy_inbox_deliver_batch(c->in, &sender, "facts", im, 3, results, &err), 1);
  /* A pipelined 3 arriving on its own is refused: 2 is missing. */
  assert_int_equal(fy_inbox_deliver(c->in, &sender, "facts", &im[2], &err), FY_EAGAIN);
  fy_outbox_batch_free(&b);
  /* The ack of 1 is lost. The sender starts again from its oldest. */
  c->refuse_seq = 0;
  for (int round = 0; round < 4; round++) {
    q.after_seq = 0;
    q.max_msgs = 2;
    assert_int_equal(fy_outbox_next_batch(ob, &q, &b, &err), 0);
    if (b.n == 0) {
      fy_outbox_batch_free(&b);
      break;
    }
    for (size_t i = 0; i < b.n; i++) {
      im[i] = (struct fy_inbox_msg){b.msgs[i].seq, b.msgs[i].prev_seq, {0}, b.msgs[i].payload};
      memcpy(im[i].id, b.msgs[i].id, FY_MSGID_LEN);
    }
    int handled = fy_inbox_deliver_batch(c->in, &sender, "facts", im, b.n, results, &err);
    assert_int_equal(handled, (int)b.n);
    /* Acknowledge by the watermark, except in round 1 (lost again). */
    struct fy_inbox_mark m;
    assert_int_equal(fy_inbox_watermark(c->in, &sender, "facts", &m, &err), 1);
    if (round != 1)
      assert_true(fy_outbox_ack(ob, &me, "facts", m.seq, &err) >= 0);
    fy_outbox_batch_free(&b);
  }
  expect_effects(c, "00000001=f1 00000002=f2 00000003=f3 00000004=f4 00000005=f5 ");
  struct fy_outbox_queue_stats s;
  assert_int_equal(fy_outbox_queues(ob, &me, &s, 1, &err), 0);
  fy_outbox_close(ob, NULL, NULL);
  fy_store_close(ss);
}

static void bad_arguments(void **state) {
  struct ctx *c = *state;
  struct fy_err err;
  struct fy_inbox *in;
  struct fy_store *s;
  char dir[320];
  snprintf(dir, sizeof(dir), "%s/other", c->root);
  const struct fy_store_schema *only_outbox[] = {&fy_outbox_schema};
  assert_int_equal(fy_store_open(&s, dir, only_outbox, 1, NULL, &err), 0);
  assert_int_equal(fy_inbox_open(&in, s, NULL, &err), FY_EINVAL);
  assert_contains(err.msg, "without fy_inbox_schema");
  fy_store_close(s);
  assert_int_equal(fy_inbox_register(c->in, "", effect_handler, c, &err), FY_EINVAL);
  assert_int_equal(fy_inbox_register(c->in, "x", NULL, c, &err), FY_EINVAL);
  struct fy_nodeid n = node(1);
  int r;
  assert_int_equal(fy_inbox_deliver_batch(c->in, &n, "facts", NULL, 0, &r, &err), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(applies_once_and_acknowledges_duplicates, setup, teardown),
      cmocka_unit_test_setup_teardown(handler_writes_commit_with_the_watermark, setup, teardown),
      cmocka_unit_test_setup_teardown(order_gaps_and_epochs, setup, teardown),
      cmocka_unit_test_setup_teardown(batches_stop_at_the_first_refusal, setup, teardown),
      cmocka_unit_test_setup_teardown(a_handler_may_run_again_when_the_map_grows, setup, teardown),
      cmocka_unit_test_setup_teardown(death_inside_the_handler_applies_nothing, setup, teardown),
      cmocka_unit_test_setup_teardown(outbox_to_inbox_round_trip, setup, teardown),
      cmocka_unit_test_setup_teardown(bad_arguments, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
