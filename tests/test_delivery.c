/* Outbox to inbox over QUIC, in one loop: two nodes with their own stores.
 * The receiving handler checks, inside its transaction, that payloads arrive
 * as 1, 2, 3, ... exactly once; the test checks that every message arrived
 * and that the sender's queue is empty. */
#include <arpa/inet.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "crypto/key.h"
#include "net/connmgr.h"
#include "net/quic.h"
#include "outbox/delivery.h"
#include "outbox/inbox.h"
#include "outbox/intake.h"
#include "outbox/outbox.h"
#include "rpc/rpc.h"
#include "store/store.h"

static const struct fy_store_table_def app_tables[] = {{"test.last", 0}};
static const struct fy_store_schema app_schema = {"test", app_tables, 1, NULL, 0};

struct node {
  char dir[256];
  struct fy_key key;
  struct fy_store *store;
  struct fy_outbox *outbox;
  struct fy_inbox *inbox;
  struct fy_intake intake;
  struct fy_rpc_method method;
  struct fy_rpc *rpc;
  struct fy_quic *quic;
  struct fy_connmgr *cm;
  struct fy_delivery *dl;
};

struct world {
  uv_loop_t loop;
  uv_timer_t deadline;
  bool timed_out;
  char root[128];
  struct node sender, receiver;
  struct sockaddr_storage receiver_addr;
  socklen_t receiver_addr_len;
  bool receiver_up;
  bool no_address; /* resolve knows nothing: the receiver sits behind NAT */
};
static struct world *W;
static struct fy_log test_log; /* FERRY_TEST_LOG=1 shows what the nodes do */

static const struct fy_log *logger(void) {
  return getenv("FERRY_TEST_LOG") ? &test_log : NULL;
}

/* The application's effect: payload must be the last one + 1. */
static int apply(struct fy_txn *t, const struct fy_nodeid *sender, const char *topic,
                 const struct fy_inbox_msg *m, void *user) {
  (void)sender;
  (void)topic;
  (void)user;
  struct fy_table *tb = fy_txn_table(t, &app_tables[0]);
  struct fy_bytes v;
  uint64_t last = 0;
  if (fy_store_get(t, tb, fy_bytes_str("last"), &v) == 1 && v.n == 8)
    last = fy_be64_get(v.p);
  if (m->payload.n != 8 || fy_be64_get(m->payload.p) != last + 1)
    return fy_err_set(fy_txn_err(t), FY_EINVAL, "payload %llu after %llu",
                      m->payload.n == 8 ? (unsigned long long)fy_be64_get(m->payload.p) : 0ull,
                      (unsigned long long)last);
  uint8_t buf[8];
  fy_be64_put(buf, last + 1);
  return fy_store_put(t, tb, fy_bytes_str("last"), fy_bytes_of(buf, 8));
}

static size_t resolve(const struct fy_nodeid *dest, struct sockaddr_storage *addrs, size_t cap, void *user) {
  (void)dest;
  (void)user;
  if (cap == 0 || W->no_address)
    return 0;
  memcpy(&addrs[0], &W->receiver_addr, W->receiver_addr_len);
  return 1;
}

static void node_open_accepting(struct node *n, const char *name, bool receiving, bool sending, bool accept,
                                const char *listen) {
  struct fy_err err = {0};
  snprintf(n->dir, sizeof(n->dir), "%s/%s", W->root, name);
  const struct fy_store_schema *schemas[] = {&fy_outbox_schema, &fy_inbox_schema, &app_schema};
  if (fy_store_open(&n->store, n->dir, schemas, 3, NULL, &err) != 0)
    fail_msg("store: %s", err.msg);
  struct fy_outbox_config ocfg = {.loop = &W->loop, .backoff_min_ms = 50, .backoff_max_ms = 200};
  assert_int_equal(fy_outbox_open(&n->outbox, n->store, &ocfg, &err), 0);
  assert_int_equal(fy_inbox_open(&n->inbox, n->store, logger(), &err), 0);
  assert_int_equal(fy_inbox_register(n->inbox, "facts", apply, NULL, &err), 0);
  n->intake = (struct fy_intake){.loop = &W->loop, .inbox = n->inbox, .log = logger()};
  n->method = fy_intake_method(&n->intake);
  struct fy_rpc_config rcfg = {.methods = &n->method, .nmethods = receiving ? 1 : 0};
  assert_int_equal(fy_rpc_new(&n->rpc, &W->loop, &rcfg, &err), 0);
  struct fy_quic_handler h = fy_rpc_quic_handler(n->rpc);
  struct fy_quic_config qcfg = {.key = &n->key,
                                .listen = listen,
                                .handlers = &h,
                                .nhandlers = 1,
                                .accept = accept,
                                .retry_never = true,
                                .handshake_timeout_ms = 1000};
  if (fy_quic_new(&n->quic, &W->loop, &qcfg, &err) != 0)
    fail_msg("quic: %s", err.msg);
  struct fy_connmgr_config ccfg = {.backoff_min_ms = 50, .backoff_max_ms = 200, .log = logger()};
  assert_int_equal(fy_connmgr_new(&n->cm, &W->loop, n->quic, n->rpc, &ccfg, &err), 0);
  if (sending) {
    struct fy_delivery_config dcfg = {.outbox = n->outbox,
                                      .connmgr = n->cm,
                                      .rpc = n->rpc,
                                      .resolve = resolve,
                                      .scan_ms = 50,
                                      .log = logger()};
    assert_int_equal(fy_delivery_new(&n->dl, &W->loop, &dcfg, &err), 0);
  }
}

static void node_open(struct node *n, const char *name, bool receiving, bool sending, const char *listen) {
  node_open_accepting(n, name, receiving, sending, receiving, listen);
}

static int pending_closes;
static void closed_one(void *user) {
  (void)user;
  pending_closes--;
}

/* Closes a node's runtime in order; the store stays on disk. */
static void node_close(struct node *n) {
  pending_closes = 0;
  if (n->dl) {
    pending_closes++;
    fy_delivery_close(n->dl, closed_one, NULL);
    n->dl = NULL;
  }
  while (pending_closes > 0)
    uv_run(&W->loop, UV_RUN_ONCE);
  pending_closes = 1;
  fy_connmgr_close(n->cm, closed_one, NULL);
  while (pending_closes > 0)
    uv_run(&W->loop, UV_RUN_ONCE);
  pending_closes = 1;
  fy_quic_shutdown(n->quic, closed_one, NULL);
  while (pending_closes > 0)
    uv_run(&W->loop, UV_RUN_ONCE);
  /* Work queued on the thread pool finishes before the store goes. */
  for (int i = 0; i < 100; i++)
    uv_run(&W->loop, UV_RUN_NOWAIT);
  pending_closes = 1;
  fy_outbox_close(n->outbox, closed_one, NULL);
  while (pending_closes > 0)
    uv_run(&W->loop, UV_RUN_ONCE);
  fy_inbox_close(n->inbox);
  fy_rpc_free(n->rpc);
  fy_store_close(n->store);
}

static void on_deadline(uv_timer_t *t) {
  (void)t;
  W->timed_out = true;
}

static bool run_until(bool (*cond)(void), uint64_t ms) {
  W->timed_out = false;
  uv_timer_start(&W->deadline, on_deadline, ms, 0);
  while (!cond() && !W->timed_out)
    uv_run(&W->loop, UV_RUN_ONCE);
  uv_timer_stop(&W->deadline);
  return !W->timed_out;
}

static uint64_t target;
static bool all_applied(void) {
  struct fy_inbox_mark mark;
  struct fy_err err;
  return fy_inbox_watermark(W->receiver.inbox, &W->sender.key.id, "facts", &mark, &err) == 1 &&
         mark.seq >= target;
}

static uint64_t sender_pending(void) {
  struct fy_outbox_queue_stats qs[4];
  struct fy_err err;
  int n = fy_outbox_queues(W->sender.outbox, NULL, qs, 4, &err);
  uint64_t total = 0;
  for (int i = 0; i < n && i < 4; i++)
    total += qs[i].pending;
  return total;
}
static bool sender_drained(void) {
  return sender_pending() == 0;
}

static void enqueue_range(uint64_t from, uint64_t to) {
  struct fy_err err = {0};
  size_t n = (size_t)(to - from + 1);
  struct fy_outbox_item *items = calloc(n, sizeof(*items));
  uint8_t *bufs = calloc(n, 8);
  for (size_t i = 0; i < n; i++) {
    fy_be64_put(bufs + 8 * i, from + i);
    items[i] = (struct fy_outbox_item){
        .dest = W->receiver.key.id, .topic = "facts", .payload = fy_bytes_of(bufs + 8 * i, 8)};
  }
  if (fy_outbox_enqueue_batch(W->sender.outbox, items, n, NULL, &err) != 0)
    fail_msg("enqueue: %s", err.msg);
  free(items);
  free(bufs);
  fy_delivery_kick(W->sender.dl);
}

static int setup(void **state) {
  (void)state;
  struct fy_err err = {0};
  assert_int_equal(fy_crypto_init(&err), 0);
  W = calloc(1, sizeof(*W));
  uv_loop_init(&W->loop);
  uv_timer_init(&W->loop, &W->deadline);
  snprintf(W->root, sizeof(W->root), "/tmp/ferry-delivery-XXXXXX");
  assert_non_null(mkdtemp(W->root));
  assert_int_equal(fy_key_generate(&W->sender.key, &err), 0);
  assert_int_equal(fy_key_generate(&W->receiver.key, &err), 0);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  if (W->sender.store)
    node_close(&W->sender);
  if (W->receiver_up)
    node_close(&W->receiver);
  uv_close((uv_handle_t *)&W->deadline, NULL);
  uv_run(&W->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&W->loop), 0);
  fy_key_free(&W->sender.key);
  fy_key_free(&W->receiver.key);
  char cmd[200];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", W->root);
  assert_int_equal(system(cmd), 0);
  free(W);
  return 0;
}

static void start_receiver(const char *listen) {
  node_open(&W->receiver, "receiver", true, false, listen);
  W->receiver_addr_len = sizeof(W->receiver_addr);
  fy_quic_local_addr(W->receiver.quic, &W->receiver_addr, &W->receiver_addr_len);
  W->receiver_up = true;
}

static void delivers_in_order_exactly_once(void **state) {
  (void)state;
  start_receiver("127.0.0.1:0");
  node_open(&W->sender, "sender", false, true, "127.0.0.1:0");
  enqueue_range(1, 2000);
  target = 2000;
  assert_true(run_until(all_applied, 20000));
  assert_true(run_until(sender_drained, 10000));
  /* More later, on the same lanes. */
  enqueue_range(2001, 2500);
  target = 2500;
  assert_true(run_until(all_applied, 20000));
  assert_true(run_until(sender_drained, 10000));
}

/* The destination is down while messages queue up; they wait and arrive
 * once it is back, and both sides restart in between with messages queued. */
static void destination_offline_then_back(void **state) {
  (void)state;
  /* Reserve a port by binding it once, then leave it unanswered. */
  start_receiver("127.0.0.1:0");
  char listen[64];
  uint16_t port = ntohs(((struct sockaddr_in *)&W->receiver_addr)->sin_port);
  snprintf(listen, sizeof(listen), "127.0.0.1:%u", port);
  node_close(&W->receiver);
  W->receiver_up = false;

  node_open(&W->sender, "sender", false, true, "127.0.0.1:0");
  enqueue_range(1, 300);
  /* Nobody answers for a while: everything stays queued. */
  for (int i = 0; i < 40; i++) {
    uv_timer_start(&W->deadline, on_deadline, 50, 0);
    uv_run(&W->loop, UV_RUN_ONCE);
  }
  assert_int_equal(sender_pending(), 300);

  /* The sender restarts with its queue on disk. */
  node_close(&W->sender);
  node_open(&W->sender, "sender", false, true, "127.0.0.1:0");
  assert_int_equal(sender_pending(), 300);

  /* The destination comes back on its address. */
  start_receiver(listen);
  target = 300;
  assert_true(run_until(all_applied, 20000));
  assert_true(run_until(sender_drained, 10000));

  /* The receiver restarts; new messages still arrive once, in order. */
  node_close(&W->receiver);
  W->receiver_up = false;
  enqueue_range(301, 400);
  start_receiver(listen);
  target = 400;
  assert_true(run_until(all_applied, 20000));
  assert_true(run_until(sender_drained, 10000));
}

static bool never(void) {
  return false;
}

struct dialled {
  int calls;
  bool ok;
};
static void receiver_dialled(struct fy_qconn *c, const struct fy_qclose *failure, void *user) {
  (void)c;
  struct dialled *d = user;
  d->calls++;
  d->ok = failure == NULL;
}

/* The receiver cannot be dialled and the sender knows no address for it:
 * messages wait until the receiver dials the sender, then flow over that
 * connection. */
static void delivers_over_inbound_connection(void **state) {
  (void)state;
  W->no_address = true;
  node_open_accepting(&W->sender, "sender", false, true, true, "127.0.0.1:0");
  node_open_accepting(&W->receiver, "receiver", true, false, false, "127.0.0.1:0");
  W->receiver_up = true;
  enqueue_range(1, 50);
  assert_false(run_until(never, 300));
  assert_int_equal(sender_pending(), 50);

  struct sockaddr_storage sender_addr;
  socklen_t len = sizeof(sender_addr);
  assert_int_equal(fy_quic_local_addr(W->sender.quic, &sender_addr, &len), 0);
  struct dialled d = {0};
  struct fy_err err = {0};
  assert_int_equal(
      fy_connmgr_get(W->receiver.cm, &W->sender.key.id, &sender_addr, 1, NULL, 0, receiver_dialled, &d, &err),
      0);
  target = 50;
  assert_true(run_until(all_applied, 10000));
  assert_true(run_until(sender_drained, 10000));
  assert_int_equal(d.calls, 1);
  assert_true(d.ok);
  /* The sender never dialled: it has no peer of its own for the receiver. */
  struct fy_connmgr_peer_status st;
  assert_int_equal(fy_connmgr_status(W->sender.cm, &W->receiver.key.id, NULL, &st), 0);
  assert_true(st.inbound);
  assert_int_equal(st.naddrs, 0);
  struct fy_quic_stats qs;
  fy_quic_get_stats(W->receiver.quic, &qs);
  assert_int_equal(qs.handshakes, 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(delivers_in_order_exactly_once, setup, teardown),
      cmocka_unit_test_setup_teardown(destination_offline_then_back, setup, teardown),
      cmocka_unit_test_setup_teardown(delivers_over_inbound_connection, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
