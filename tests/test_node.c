/* The node runtime: two nodes in one loop on loopback, a "server" that
 * accepts and a dialler that does not (an agent behind NAT). Messages flow
 * both ways, the server's over the connection the dialler opened; an applet
 * method answers; the observer sees the connections; nodes close cleanly and
 * a restarted node still has its queue. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>
#include <sodium.h>

#include "base/cleanup.h"
#include "crypto/key.h"
#include "net/connmgr.h"
#include "node/node.h"
#include "node/peerspec.h"
#include "outbox/inbox.h"
#include "outbox/outbox.h"
#include "rpc/rpc.h"
#include "store/store.h"

static const struct fy_store_table_def app_tables[] = {{"test.got", 0}};
static const struct fy_store_schema app_schema = {"test", app_tables, 1, NULL, 0};
static const struct fy_store_schema *const app_schemas[] = {&app_schema};

struct conn_seen {
  int opens, closes;
  int inbound_opens; /* opens of connections the peer dialled */
};

struct world {
  uv_loop_t loop;
  uv_timer_t deadline;
  bool timed_out;
  char root[128];
  struct fy_key skey, dkey;
  struct fy_node *server, *dialler;
  struct conn_seen server_seen, dialler_seen;
  int statuses;
  int last_code;
  char echoed[64];
};
static struct world *W;
static struct fy_log test_log;

static const struct fy_log *logger(void) {
  return getenv("FERRY_TEST_LOG") ? &test_log : NULL;
}

/* ---- the applet's parts ------------------------------------------------------------- */

/* Thread pool: everything through the transaction. */
static int got(struct fy_txn *t, const struct fy_nodeid *sender, const char *topic,
               const struct fy_inbox_msg *m, void *user) {
  (void)sender;
  (void)topic;
  (void)user;
  return fy_store_put(t, fy_txn_table(t, &app_tables[0]), m->payload, fy_bytes_of(NULL, 0));
}

static void echo_start(struct fy_rpc_scall *call, void *user) {
  (void)call;
  (void)user;
}
static void echo_msg(struct fy_rpc_scall *call, const uint8_t *p, size_t len, void *user) {
  (void)user;
  assert_true(fy_rpc_reply(call, p, len) >= 0);
}
static void echo_end(struct fy_rpc_scall *call, void *user) {
  (void)user;
  assert_int_equal(fy_rpc_finish(call, FY_RPC_OK, "", false), 0);
}
static const struct fy_rpc_method app_methods[] = {
    {.name = "test.echo", .on_start = echo_start, .on_msg = echo_msg, .on_end = echo_end},
};

static void seen_open(struct fy_qconn *c, void *user) {
  struct conn_seen *s = user;
  s->opens++;
  if (!fy_qconn_is_client(c))
    s->inbound_opens++;
}
static void seen_close(struct fy_qconn *c, const struct fy_qclose *why, void *user) {
  (void)c;
  (void)why;
  struct conn_seen *s = user;
  s->closes++;
}

/* ---- plumbing ------------------------------------------------------------------------ */

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

static bool never(void) {
  return false;
}

static struct fy_node_config node_cfg(const char *name, const struct fy_key *key, bool accept,
                                      uint64_t scan_ms, char *dir, size_t dirlen) {
  snprintf(dir, dirlen, "%s/%s", W->root, name);
  return (struct fy_node_config){.data_dir = dir,
                                 .key = key,
                                 .listen = "127.0.0.1:0",
                                 .accept = accept,
                                 .schemas = app_schemas,
                                 .nschemas = 1,
                                 .methods = app_methods,
                                 .nmethods = 1,
                                 .handshake_timeout_ms = 2000,
                                 .backoff_min_ms = 20,
                                 .backoff_max_ms = 200,
                                 .scan_ms = scan_ms,
                                 .log = logger()};
}

static struct fy_node *open_node(const char *name, const struct fy_key *key, bool accept, uint64_t scan_ms) {
  char dir[256];
  struct fy_node_config cfg = node_cfg(name, key, accept, scan_ms, dir, sizeof(dir));
  struct fy_node *n = NULL;
  struct fy_err err = {0};
  if (fy_node_open(&n, &W->loop, &cfg, &err) != 0)
    fail_msg("node %s: %s", name, err.msg);
  if (fy_inbox_register(fy_node_inbox(n), "hello", got, NULL, &err) != 0)
    fail_msg("register: %s", err.msg);
  return n;
}

static int closed;
static void on_closed(void *user) {
  (void)user;
  closed++;
}

static void close_node(struct fy_node **n) {
  if (!*n)
    return;
  closed = 0;
  fy_node_close(*n, on_closed, NULL);
  *n = NULL;
  while (closed == 0)
    uv_run(&W->loop, UV_RUN_ONCE);
  assert_int_equal(closed, 1);
}

static int setup(void **state) {
  (void)state;
  struct fy_err err = {0};
  assert_int_equal(fy_crypto_init(&err), 0);
  fy_log_init(&test_log, stderr, FY_LOG_DEBUG, "test", NULL);
  W = calloc(1, sizeof(*W));
  uv_loop_init(&W->loop);
  uv_timer_init(&W->loop, &W->deadline);
  snprintf(W->root, sizeof(W->root), "/tmp/ferry-node-XXXXXX");
  assert_non_null(mkdtemp(W->root));
  assert_int_equal(fy_key_generate(&W->skey, &err), 0);
  assert_int_equal(fy_key_generate(&W->dkey, &err), 0);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  close_node(&W->dialler);
  close_node(&W->server);
  uv_close((uv_handle_t *)&W->deadline, NULL);
  uv_run(&W->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&W->loop), 0);
  fy_key_free(&W->skey);
  fy_key_free(&W->dkey);
  char cmd[200];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", W->root);
  assert_int_equal(system(cmd), 0);
  free(W);
  return 0;
}

static void enqueue(struct fy_node *n, const struct fy_nodeid *dest, const char *payload) {
  struct fy_err err = {0};
  if (fy_outbox_enqueue(fy_node_outbox(n), dest, "hello", fy_bytes_str(payload), 0, NULL, &err) != 0)
    fail_msg("enqueue: %s", err.msg);
  fy_node_kick(n); /* as an applet would, from any thread */
}

static uint64_t pending(struct fy_node *n) {
  struct fy_outbox_queue_stats qs[8];
  struct fy_err err = {0};
  int k = fy_outbox_queues(fy_node_outbox(n), NULL, qs, 8, &err);
  assert_true(k >= 0);
  uint64_t total = 0;
  for (int i = 0; i < k && i < 8; i++)
    total += qs[i].pending;
  return total;
}

static uint64_t applied(struct fy_node *n, const struct fy_nodeid *from) {
  struct fy_inbox_mark mark;
  struct fy_err err = {0};
  return fy_inbox_watermark(fy_node_inbox(n), from, "hello", &mark, &err) == 1 ? mark.seq : 0;
}

struct has {
  const char *key;
  int found;
};
static int has_body(struct fy_txn *t, void *user) {
  struct has *h = user;
  struct fy_bytes v;
  h->found = fy_store_get(t, fy_txn_table(t, &app_tables[0]), fy_bytes_str(h->key), &v);
  return 0;
}
static bool store_has(struct fy_node *n, const char *key) {
  struct has h = {.key = key};
  struct fy_err err = {0};
  assert_int_equal(fy_store_read(fy_node_store(n), has_body, &h, &err), 0);
  return h.found == 1;
}

static bool both_applied(void) {
  return applied(W->server, &W->dkey.id) >= 1 && applied(W->dialler, &W->skey.id) >= 1;
}
static bool server_drained(void) {
  return pending(W->server) == 0 && pending(W->dialler) == 0;
}

/* ---- an applet call --------------------------------------------------------------------- */

struct got_conn {
  int calls;
  struct fy_qconn *c;
};
static void conn_ready(struct fy_qconn *c, const struct fy_qclose *failure, void *user) {
  struct got_conn *g = user;
  g->calls++;
  g->c = failure ? NULL : c;
}
static void call_msg(struct fy_rpc_ccall *call, const uint8_t *p, size_t len, void *user) {
  (void)call;
  (void)user;
  snprintf(W->echoed, sizeof(W->echoed), "%.*s", (int)len, (const char *)p);
}
static void call_status(struct fy_rpc_ccall *call, const struct fy_rpc_result *res, void *user) {
  (void)call;
  (void)user;
  W->statuses++;
  W->last_code = res->code;
}
static const struct fy_rpc_call_cb call_cb = {.on_msg = call_msg, .on_status = call_status};
static bool call_done(void) {
  return W->statuses > 0;
}

static struct got_conn *pending_get;
static bool got_answer(void) {
  return pending_get->calls > 0;
}

static struct fy_qconn *conn_to_server(void) {
  struct got_conn g = {0};
  struct fy_err err = {0};
  if (fy_connmgr_get(fy_node_connmgr(W->dialler), &W->skey.id, NULL, 0, NULL, 0, conn_ready, &g, &err) != 0)
    fail_msg("get: %s", err.msg);
  pending_get = &g;
  assert_true(run_until(got_answer, 5000));
  assert_non_null(g.c);
  return g.c;
}

static bool server_saw_close(void) {
  return W->server_seen.closes > 0;
}

/* ---- tests ---------------------------------------------------------------------------- */

static void two_nodes_both_ways(void **state) {
  (void)state;
  /* The server scans rarely: what it sends to the dialler must go because
   * the dialler's connection opening kicked it. */
  W->server = open_node("server", &W->skey, true, 600000);
  W->dialler = open_node("dialler", &W->dkey, false, 50);
  fy_node_on_conn(W->server, seen_open, seen_close, &W->server_seen);
  fy_node_on_conn(W->dialler, seen_open, seen_close, &W->dialler_seen);
  assert_true(fy_nodeid_equal(fy_node_id(W->server), &W->skey.id));
  assert_non_null(fy_node_quic(W->server));
  assert_false(run_until(never, 100)); /* the first scans find nothing */

  /* The server knows no address of the dialler: its message waits. */
  enqueue(W->server, &W->dkey.id, "pong");
  assert_false(run_until(never, 200));
  assert_int_equal(pending(W->server), 1);

  /* The dialler learns where the server is, from the server's own list. */
  char addrs[4][FY_NODE_ADDR_TEXT_MAX];
  assert_int_equal(fy_node_addresses(W->server, addrs, 4), 1);
  assert_non_null(strstr(addrs[0], "127.0.0.1:"));
  struct sockaddr_storage sa;
  struct fy_err err = {0};
  assert_int_equal(fy_addr_resolve(addrs[0], &sa, &err), 0);
  assert_int_equal(fy_node_set_addrs(W->dialler, &W->skey.id, &sa, 1, &err), 0);
  enqueue(W->dialler, &W->skey.id, "ping");

  assert_true(run_until(both_applied, 10000));
  assert_true(run_until(server_drained, 10000));
  assert_true(store_has(W->server, "ping"));
  assert_true(store_has(W->dialler, "pong"));
  assert_false(store_has(W->server, "pong"));
  /* One connection, dialled by the dialler, carried both. */
  assert_int_equal(W->server_seen.inbound_opens, 1);
  assert_int_equal(W->dialler_seen.opens, 1);
  assert_int_equal(W->dialler_seen.inbound_opens, 0);
  struct fy_connmgr_peer_status st;
  assert_int_equal(fy_connmgr_status(fy_node_connmgr(W->server), &W->dkey.id, NULL, &st), 0);
  assert_true(st.inbound);

  /* The applet's method answers a unary call. */
  struct fy_qconn *c = conn_to_server();
  assert_int_equal(fy_rpc_unary(fy_node_rpc(W->dialler), c, "test.echo", (const uint8_t *)"abc", 3, 5000,
                                &call_cb, NULL, &err),
                   0);
  assert_true(run_until(call_done, 5000));
  assert_int_equal(W->last_code, FY_RPC_OK);
  assert_string_equal(W->echoed, "abc");

  /* The dialler hangs up: both observers hear it, and the server forgets
   * the connection (and so has no way to reach the dialler). */
  fy_qconn_close(c, 0, "bye");
  assert_true(run_until(server_saw_close, 5000));
  assert_int_equal(W->dialler_seen.closes, 1);
  assert_int_equal(fy_connmgr_status(fy_node_connmgr(W->server), &W->dkey.id, NULL, &st), FY_ENOENT);
}

static void restart_keeps_queued_messages(void **state) {
  (void)state;
  W->dialler = open_node("dialler", &W->dkey, false, 50);
  struct fy_nodeid nowhere;
  randombytes_buf(nowhere.key, sizeof(nowhere.key));
  for (int i = 0; i < 3; i++)
    enqueue(W->dialler, &nowhere, i == 0 ? "a" : i == 1 ? "b" : "c");
  assert_false(run_until(never, 150));
  assert_int_equal(pending(W->dialler), 3);
  close_node(&W->dialler);
  W->dialler = open_node("dialler", &W->dkey, false, 50);
  assert_int_equal(pending(W->dialler), 3);
}

static void addresses_of_wildcard_binds(void **state) {
  (void)state;
  char dir[256];
  struct fy_node_config cfg = node_cfg("wild", &W->skey, true, 0, dir, sizeof(dir));
  cfg.listen = "0.0.0.0:0";
  struct fy_err err = {0};
  assert_int_equal(fy_node_open(&W->server, &W->loop, &cfg, &err), 0);
  struct sockaddr_storage local;
  socklen_t len = sizeof(local);
  assert_int_equal(fy_quic_local_addr(fy_node_quic(W->server), &local, &len), 0);
  char port[16];
  snprintf(port, sizeof(port), ":%u", ntohs(((struct sockaddr_in *)&local)->sin_port));
  char addrs[16][FY_NODE_ADDR_TEXT_MAX];
  size_t n = fy_node_addresses(W->server, addrs, 16);
  assert_true(n >= 1);
  for (size_t i = 0; i < n; i++) {
    print_message("address %zu: %s\n", i, addrs[i]);
    assert_null(strstr(addrs[i], "0.0.0.0"));
    assert_non_null(strstr(addrs[i], port));
    assert_int_equal(strcmp(addrs[i] + strlen(addrs[i]) - strlen(port), port), 0);
    struct sockaddr_storage sa;
    assert_int_equal(fy_addr_resolve(addrs[i], &sa, &err), 0);
    assert_int_equal(sa.ss_family, AF_INET); /* an IPv4 socket offers IPv4 only */
  }
  assert_int_equal(fy_node_addresses(W->server, addrs, 0), 0);
  assert_int_equal(fy_node_addresses(W->server, addrs, 1), 1);
}

static void bad_configuration(void **state) {
  (void)state;
  char dir[256];
  struct fy_node_config cfg = node_cfg("bad", &W->skey, true, 0, dir, sizeof(dir));
  struct fy_node *n = NULL;
  struct fy_err err = {0};

  struct fy_node_config c = cfg;
  c.data_dir = NULL;
  assert_int_equal(fy_node_open(&n, &W->loop, &c, &err), FY_EINVAL);
  assert_non_null(strstr(err.msg, "data directory"));
  assert_null(n);

  /* A bad listen address fails at once and leaves the directory free. */
  c = cfg;
  c.listen = "nonsense";
  assert_int_equal(fy_node_open(&n, &W->loop, &c, &err), FY_EINVAL);
  assert_non_null(strstr(err.msg, "node: endpoint"));
  assert_non_null(strstr(err.msg, "nonsense"));
  assert_null(n);

  /* outbox.push is the node's. */
  struct fy_rpc_method clash[] = {{.name = "outbox.push"}};
  c = cfg;
  c.methods = clash;
  assert_int_equal(fy_node_open(&n, &W->loop, &c, &err), FY_EINVAL);
  assert_non_null(strstr(err.msg, "outbox.push is the node's own"));

  /* The directory is locked while a node has it. */
  assert_int_equal(fy_node_open(&W->server, &W->loop, &cfg, &err), 0);
  assert_int_equal(fy_node_open(&n, &W->loop, &cfg, &err), FY_EEXIST);
  assert_null(n);

  /* Address lists. */
  struct sockaddr_storage many[FY_CONNMGR_ADDRS_MAX + 1] = {0};
  for (size_t i = 0; i < FY_ARRAY_LEN(many); i++)
    assert_int_equal(fy_addr_resolve("127.0.0.1:9", &many[i], &err), 0);
  assert_int_equal(fy_node_set_addrs(W->server, &W->dkey.id, many, FY_ARRAY_LEN(many), &err), FY_ELIMIT);
  assert_non_null(strstr(err.msg, "at most 8"));
  struct sockaddr_storage unix_addr = {.ss_family = AF_UNIX};
  assert_int_equal(fy_node_set_addrs(W->server, &W->dkey.id, &unix_addr, 1, &err), FY_EINVAL);
  assert_non_null(strstr(err.msg, "address 0 is not IPv4 or IPv6"));
  assert_int_equal(fy_node_set_addrs(W->server, &W->dkey.id, many, 2, &err), 0);
  assert_int_equal(fy_node_set_addrs(W->server, &W->dkey.id, NULL, 0, &err), 0); /* forgets */
  assert_int_equal(fy_node_set_addrs(W->server, &W->dkey.id, NULL, 0, &err), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(two_nodes_both_ways, setup, teardown),
      cmocka_unit_test_setup_teardown(restart_keeps_queued_messages, setup, teardown),
      cmocka_unit_test_setup_teardown(addresses_of_wildcard_binds, setup, teardown),
      cmocka_unit_test_setup_teardown(bad_configuration, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
