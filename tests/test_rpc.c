/* RPC over QUIC between two endpoints in one loop: every call shape,
 * deadlines, cancellation, errors, limits, 1,000 concurrent calls, and a
 * lossy, reordering relay between the two for loss and a vanishing peer. */
#include <arpa/inet.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "crypto/key.h"
#include "net/quic.h"
#include "net/udp.h"
#include "rpc/rpc.h"

/* ---- the lossy relay: client <-> relay <-> server ------------------------ */

struct held {
  uint8_t data[FY_UDP_RECV_MAX];
  size_t len;
  bool to_server;
};

struct relay {
  struct fy_udp sock;
  struct sockaddr_storage server, client;
  socklen_t server_len, client_len;
  bool have_client;
  uint32_t loss_pct;    /* drop this share of datagrams */
  uint32_t reorder_pct; /* hold this share back and send it after the next one */
  bool blackhole;       /* drop everything (the peer vanished) */
  struct held held;
  bool holding;
  uint64_t dropped, forwarded;
};

static void relay_send(struct relay *r, const uint8_t *data, size_t len, bool to_server) {
  struct fy_err err;
  if (to_server)
    fy_udp_send(&r->sock, (struct sockaddr *)&r->server, r->server_len, data, len, 0, 0, &err);
  else
    fy_udp_send(&r->sock, (struct sockaddr *)&r->client, r->client_len, data, len, 0, 0, &err);
  r->forwarded++;
}

static void relay_recv(void *user, const struct fy_udp_pkt *pkt) {
  struct relay *r = user;
  bool from_server = pkt->remote_len == r->server_len && memcmp(pkt->remote, &r->server, r->server_len) == 0;
  if (!from_server && !r->have_client) {
    memcpy(&r->client, pkt->remote, pkt->remote_len);
    r->client_len = pkt->remote_len;
    r->have_client = true;
  }
  if (r->blackhole || randombytes_uniform(100) < r->loss_pct) {
    r->dropped++;
    return;
  }
  if (!r->holding && randombytes_uniform(100) < r->reorder_pct) {
    memcpy(r->held.data, pkt->data, pkt->len);
    r->held.len = pkt->len;
    r->held.to_server = !from_server;
    r->holding = true;
    return;
  }
  relay_send(r, pkt->data, pkt->len, !from_server);
  if (r->holding) {
    r->holding = false;
    relay_send(r, r->held.data, r->held.len, r->held.to_server);
  }
}

/* ---- the world ------------------------------------------------------------ */

struct world {
  uv_loop_t loop;
  uv_timer_t deadline;
  bool timed_out;
  struct fy_key skey, ckey;
  struct fy_rpc *srpc, *crpc;
  struct fy_quic *server, *client;
  struct fy_qconn *conn;
  struct relay relay;
  bool use_relay;
  /* results */
  int statuses;
  struct fy_rpc_result last;
  char last_msg[1100];
  size_t msgs_seen;
  uint64_t sum_seen;
  int cancels_seen;
  int cancel_code;
  struct fy_nodeid server_saw_peer;
  struct fy_qclose close_why;
  void *close_user;
  int conns_closed;
};

static struct world *W;

/* ---- server methods -------------------------------------------------------- */

static void echo_start(struct fy_rpc_scall *call, void *user) {
  (void)user;
  W->server_saw_peer = *fy_rpc_scall_peer(call);
}
static void echo_msg(struct fy_rpc_scall *call, const uint8_t *p, size_t len, void *user) {
  (void)user;
  assert_true(fy_rpc_reply(call, p, len) >= 0);
}
static void finish_ok(struct fy_rpc_scall *call, void *user) {
  (void)user;
  assert_int_equal(fy_rpc_finish(call, FY_RPC_OK, "", false), 0);
}

/* count: request is a u32 n; replies n messages holding 0..n-1. */
static void count_msg(struct fy_rpc_scall *call, const uint8_t *p, size_t len, void *user) {
  (void)user;
  uint32_t n;
  assert_int_equal(len, 4);
  memcpy(&n, p, 4);
  for (uint32_t i = 0; i < n; i++)
    assert_true(fy_rpc_reply(call, (const uint8_t *)&i, 4) >= 0);
}

/* sum: adds u32s until END, replies the u64 total. */
static void sum_start(struct fy_rpc_scall *call, void *user) {
  (void)user;
  fy_rpc_scall_set_user(call, calloc(1, sizeof(uint64_t)));
}
static void sum_msg(struct fy_rpc_scall *call, const uint8_t *p, size_t len, void *user) {
  (void)user;
  uint32_t v;
  assert_int_equal(len, 4);
  memcpy(&v, p, 4);
  *(uint64_t *)fy_rpc_scall_user(call) += v;
}
static void sum_end(struct fy_rpc_scall *call, void *user) {
  (void)user;
  uint64_t *total = fy_rpc_scall_user(call);
  assert_true(fy_rpc_reply(call, (const uint8_t *)total, 8) >= 0);
  free(total);
  assert_int_equal(fy_rpc_finish(call, FY_RPC_OK, "", false), 0);
}

static void fail_start(struct fy_rpc_scall *call, void *user) {
  (void)user;
  assert_int_equal(fy_rpc_finish(call, FY_RPC_NOT_FOUND, "no agent with that id", false), 0);
}

static void hang_start(struct fy_rpc_scall *call, void *user) {
  (void)call;
  (void)user;
}
static void note_cancel(struct fy_rpc_scall *call, int code, void *user) {
  (void)call;
  (void)user;
  W->cancels_seen++;
  W->cancel_code = code;
}

static const struct fy_rpc_method methods[] = {
    {.name = "test.echo", .on_start = echo_start, .on_msg = echo_msg, .on_end = finish_ok},
    {.name = "test.count", .on_start = hang_start, .on_msg = count_msg, .on_end = finish_ok},
    {.name = "test.sum", .on_start = sum_start, .on_msg = sum_msg, .on_end = sum_end},
    {.name = "test.fail", .on_start = fail_start},
    {.name = "test.hang", .on_start = hang_start, .on_cancel = note_cancel},
};

/* ---- client callbacks ------------------------------------------------------------ */

static void on_msg(struct fy_rpc_ccall *call, const uint8_t *p, size_t len, void *user) {
  (void)call;
  (void)user;
  W->msgs_seen++;
  if (len == 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    W->sum_seen = v;
  }
}
static void on_status(struct fy_rpc_ccall *call, const struct fy_rpc_result *res, void *user) {
  (void)call;
  (void)user;
  W->statuses++;
  W->last = *res;
  snprintf(W->last_msg, sizeof(W->last_msg), "%s", res->message);
  W->last.message = W->last_msg;
}
static const struct fy_rpc_call_cb cb = {.on_msg = on_msg, .on_status = on_status};

/* ---- plumbing ---------------------------------------------------------------------- */

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

static bool conn_open(void) {
  return W->conn && fy_qconn_is_open(W->conn);
}

static uint64_t idle_ms = 0;

static void start_world(uint32_t max_frame, bool relay) {
  struct fy_err err = {0};
  assert_int_equal(fy_crypto_init(&err), 0);
  W = calloc(1, sizeof(*W));
  uv_loop_init(&W->loop);
  uv_timer_init(&W->loop, &W->deadline);
  assert_int_equal(fy_key_generate(&W->skey, &err), 0);
  assert_int_equal(fy_key_generate(&W->ckey, &err), 0);
  struct fy_rpc_config rcfg = {
      .methods = methods, .nmethods = sizeof(methods) / sizeof(methods[0]), .max_frame = max_frame};
  assert_int_equal(fy_rpc_new(&W->srpc, &W->loop, &rcfg, &err), 0);
  struct fy_rpc_config ccfg = {0};
  assert_int_equal(fy_rpc_new(&W->crpc, &W->loop, &ccfg, &err), 0);
  struct fy_quic_handler sh = fy_rpc_quic_handler(W->srpc), ch = fy_rpc_quic_handler(W->crpc);
  struct fy_quic_config scfg = {.key = &W->skey,
                                .listen = "127.0.0.1:0",
                                .handlers = &sh,
                                .nhandlers = 1,
                                .accept = true,
                                .retry_never = true,
                                .idle_timeout_ms = idle_ms};
  struct fy_quic_config ccfg2 = {
      .key = &W->ckey, .listen = "127.0.0.1:0", .handlers = &ch, .nhandlers = 1, .idle_timeout_ms = idle_ms};
  assert_int_equal(fy_quic_new(&W->server, &W->loop, &scfg, &err), 0);
  assert_int_equal(fy_quic_new(&W->client, &W->loop, &ccfg2, &err), 0);
  struct sockaddr_storage addr;
  socklen_t len;
  fy_quic_local_addr(W->server, &addr, &len);
  if (relay) {
    W->use_relay = true;
    memcpy(&W->relay.server, &addr, len);
    W->relay.server_len = len;
    assert_int_equal(fy_udp_open(&W->relay.sock, &W->loop, "127.0.0.1:0", relay_recv, &W->relay, &err), 0);
    fy_udp_local_addr(&W->relay.sock, &addr, &len);
  }
  assert_int_equal(
      fy_quic_dial(W->client, &W->skey.id, (struct sockaddr *)&addr, len, FY_RPC_ALPN, NULL, &W->conn, &err),
      0);
  assert_true(run_until(conn_open, 10000));
}

static int done_count;
static void freed(void *user) {
  (void)user;
  done_count++;
}
static void relay_closed(struct fy_udp *u) {
  (void)u;
  done_count++;
}

static int stop_world(void **state) {
  (void)state;
  done_count = 0;
  int want = 0;
  fy_quic_shutdown(W->client, freed, NULL);
  want++;
  if (W->server) {
    fy_quic_shutdown(W->server, freed, NULL);
    want++;
  }
  if (W->use_relay) {
    fy_udp_close(&W->relay.sock, relay_closed);
    want++;
  }
  while (done_count < want)
    uv_run(&W->loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&W->deadline, NULL);
  uv_run(&W->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&W->loop), 0);
  if (W->srpc)
    fy_rpc_free(W->srpc);
  fy_rpc_free(W->crpc);
  fy_key_free(&W->skey);
  fy_key_free(&W->ckey);
  free(W);
  idle_ms = 0;
  return 0;
}

static int statuses_target;
static bool enough_statuses(void) {
  return W->statuses >= statuses_target;
}
static void wait_statuses(int n, uint64_t ms) {
  statuses_target = n;
  assert_true(run_until(enough_statuses, ms));
}

/* ---- tests ------------------------------------------------------------------------------ */

static void unary(void **state) {
  (void)state;
  start_world(0, false);
  struct fy_err err = {0};
  assert_int_equal(
      fy_rpc_unary(W->crpc, W->conn, "test.echo", (const uint8_t *)"ping", 4, 0, &cb, NULL, &err), 0);
  wait_statuses(1, 5000);
  assert_int_equal(W->last.code, FY_RPC_OK);
  assert_int_equal(W->msgs_seen, 1);
  assert_true(fy_nodeid_equal(&W->server_saw_peer, &W->ckey.id));
}

static void server_streaming(void **state) {
  (void)state;
  start_world(0, false);
  struct fy_err err = {0};
  uint32_t n = 500;
  assert_int_equal(fy_rpc_unary(W->crpc, W->conn, "test.count", (const uint8_t *)&n, 4, 0, &cb, NULL, &err),
                   0);
  wait_statuses(1, 5000);
  assert_int_equal(W->last.code, FY_RPC_OK);
  assert_int_equal(W->msgs_seen, 500);
}

static void client_streaming(void **state) {
  (void)state;
  start_world(0, false);
  struct fy_err err = {0};
  struct fy_rpc_ccall *call;
  assert_int_equal(fy_rpc_start(W->crpc, W->conn, "test.sum", 0, &cb, NULL, &call, &err), 0);
  for (uint32_t i = 1; i <= 1000; i++)
    assert_true(fy_rpc_send(call, (const uint8_t *)&i, 4) >= 0);
  assert_int_equal(fy_rpc_end(call), 0);
  wait_statuses(1, 5000);
  assert_int_equal(W->last.code, FY_RPC_OK);
  assert_int_equal(W->sum_seen, 500500);
}

static void bidirectional(void **state) {
  (void)state;
  start_world(0, false);
  struct fy_err err = {0};
  struct fy_rpc_ccall *call;
  assert_int_equal(fy_rpc_start(W->crpc, W->conn, "test.echo", 0, &cb, NULL, &call, &err), 0);
  for (int round = 0; round < 20; round++) {
    size_t before = W->msgs_seen;
    assert_true(fy_rpc_send(call, (const uint8_t *)"x", 1) >= 0);
    /* Each reply arrives while the call stays open: truly interleaved. */
    while (W->msgs_seen == before)
      uv_run(&W->loop, UV_RUN_ONCE);
  }
  assert_int_equal(W->statuses, 0);
  assert_int_equal(fy_rpc_end(call), 0);
  wait_statuses(1, 5000);
  assert_int_equal(W->msgs_seen, 20);
}

static void unknown_method_and_errors(void **state) {
  (void)state;
  start_world(0, false);
  struct fy_err err = {0};
  assert_int_equal(fy_rpc_unary(W->crpc, W->conn, "test.nothing", NULL, 0, 0, &cb, NULL, &err), 0);
  wait_statuses(1, 5000);
  assert_int_equal(W->last.code, FY_RPC_UNIMPLEMENTED);
  assert_non_null(strstr(W->last.message, "test.nothing"));
  assert_false(W->last.local);
  assert_int_equal(fy_rpc_unary(W->crpc, W->conn, "test.fail", NULL, 0, 0, &cb, NULL, &err), 0);
  wait_statuses(2, 5000);
  assert_int_equal(W->last.code, FY_RPC_NOT_FOUND);
  assert_string_equal(W->last.message, "no agent with that id");
  assert_false(W->last.retryable);
  /* A method name outside the grammar never leaves this process. */
  assert_true(fy_rpc_unary(W->crpc, W->conn, "bad name", NULL, 0, 0, &cb, NULL, &err) < 0);
  assert_non_null(strstr(err.msg, "bad name"));
}

static bool server_saw_cancel(void) {
  return W->cancels_seen > 0;
}

static void deadline_exceeded(void **state) {
  (void)state;
  start_world(0, false);
  struct fy_err err = {0};
  assert_int_equal(fy_rpc_unary(W->crpc, W->conn, "test.hang", NULL, 0, 100, &cb, NULL, &err), 0);
  wait_statuses(1, 5000);
  assert_int_equal(W->last.code, FY_RPC_DEADLINE_EXCEEDED);
  assert_true(W->last.local);
  assert_true(run_until(server_saw_cancel, 5000));
}

static void cancel_reaches_server(void **state) {
  (void)state;
  start_world(0, false);
  struct fy_err err = {0};
  struct fy_rpc_ccall *call;
  assert_int_equal(fy_rpc_start(W->crpc, W->conn, "test.hang", 0, &cb, NULL, &call, &err), 0);
  for (int i = 0; i < 50; i++)
    uv_run(&W->loop, UV_RUN_NOWAIT);
  fy_rpc_cancel(call);
  assert_int_equal(W->statuses, 1);
  assert_int_equal(W->last.code, FY_RPC_CANCELLED);
  assert_true(run_until(server_saw_cancel, 5000));
  assert_int_equal(W->cancel_code, FY_RPC_CANCELLED);
}

static void oversized_frame_refused(void **state) {
  (void)state;
  start_world(64 * 1024, false); /* the server accepts frames up to 64 KiB */
  struct fy_err err = {0};
  struct fy_rpc_ccall *call;
  assert_int_equal(fy_rpc_start(W->crpc, W->conn, "test.echo", 0, &cb, NULL, &call, &err), 0);
  size_t big_len = (size_t)100 * 1024;
  uint8_t *big = calloc(1, big_len);
  assert_true(fy_rpc_send(call, big, big_len) >= 0);
  free(big);
  wait_statuses(1, 5000);
  assert_int_equal(W->last.code, FY_RPC_RESOURCE_EXHAUSTED);
  assert_non_null(strstr(W->last.message, "size limit"));
  /* The connection survives; the next call works. */
  assert_int_equal(fy_rpc_unary(W->crpc, W->conn, "test.echo", (const uint8_t *)"ok", 2, 0, &cb, NULL, &err),
                   0);
  wait_statuses(2, 5000);
  assert_int_equal(W->last.code, FY_RPC_OK);
}

static void thousand_concurrent_calls(void **state) {
  (void)state;
  start_world(0, false);
  struct fy_err err = {0};
  int started = 0;
  for (uint32_t i = 0; i < 1000; i++) {
    int rc = fy_rpc_unary(W->crpc, W->conn, "test.echo", (const uint8_t *)&i, 4, 0, &cb, NULL, &err);
    if (rc == 0)
      started++;
    else
      fail_msg("call %u: %s", i, err.msg);
  }
  assert_int_equal(started, 1000);
  wait_statuses(1000, 20000);
  assert_int_equal(W->msgs_seen, 1000);
  assert_int_equal(W->last.code, FY_RPC_OK);
}

/* The stream limit bounds calls in flight, not a connection's lifetime. */
static void more_calls_than_the_stream_limit_over_time(void **state) {
  (void)state;
  start_world(0, false);
  struct fy_err err = {0};
  for (int round = 1; round <= 3; round++) {
    for (uint32_t i = 0; i < 1000; i++) {
      int rc;
      /* At the limit, wait for the peer to grant more streams (MAX_STREAMS). */
      for (int spins = 0; (rc = fy_rpc_unary(W->crpc, W->conn, "test.echo", (const uint8_t *)&i, 4, 0, &cb,
                                             NULL, &err)) == FY_ELIMIT &&
                          spins < 10000;
           spins++)
        uv_run(&W->loop, UV_RUN_ONCE);
      if (rc != 0)
        fail_msg("round %d call %u: %s", round, i, err.msg);
    }
    wait_statuses(1000 * round, 20000);
  }
  assert_int_equal(W->msgs_seen, 3000);
  assert_int_equal(W->last.code, FY_RPC_OK);
}

static void lossy_reordering_path(void **state) {
  (void)state;
  start_world(0, true);
  W->relay.loss_pct = 10;
  W->relay.reorder_pct = 10;
  struct fy_err err = {0};
  uint32_t n = 3000;
  assert_int_equal(fy_rpc_unary(W->crpc, W->conn, "test.count", (const uint8_t *)&n, 4, 0, &cb, NULL, &err),
                   0);
  struct fy_rpc_ccall *call;
  assert_int_equal(fy_rpc_start(W->crpc, W->conn, "test.sum", 0, &cb, NULL, &call, &err), 0);
  for (uint32_t i = 1; i <= 3000; i++)
    assert_true(fy_rpc_send(call, (const uint8_t *)&i, 4) >= 0);
  assert_int_equal(fy_rpc_end(call), 0);
  wait_statuses(2, 30000);
  assert_int_equal(W->last.code, FY_RPC_OK);
  assert_int_equal(W->msgs_seen, 3001); /* 3000 counts + the sum */
  assert_int_equal(W->sum_seen, 4501500);
  assert_true(W->relay.dropped > 0);
}

static void peer_vanishes_mid_call(void **state) {
  (void)state;
  idle_ms = 1000;
  start_world(0, true);
  struct fy_err err = {0};
  assert_int_equal(fy_rpc_unary(W->crpc, W->conn, "test.hang", NULL, 0, 0, &cb, NULL, &err), 0);
  for (int i = 0; i < 50; i++)
    uv_run(&W->loop, UV_RUN_NOWAIT);
  W->relay.blackhole = true;
  wait_statuses(1, 10000);
  assert_int_equal(W->last.code, FY_RPC_UNAVAILABLE);
  assert_true(W->last.local);
  assert_true(W->last.retryable);
  assert_non_null(strstr(W->last.message, "connection lost"));
}

/* ---- two processes ------------------------------------------------------------------ */

/* The server side in a child process of its own: its own loop, key and
 * endpoint. It writes its port to `fd` and serves until killed. */
static const char *child_listen = "127.0.0.1:0";

static void serve_in_child(int fd, const uint8_t seed[32]) {
  W = calloc(1, sizeof(*W)); /* the methods note what they see here */
  uv_loop_t loop;
  uv_loop_init(&loop);
  struct fy_err err = {0};
  struct fy_key key = {0};
  struct fy_rpc *rpc = NULL;
  struct fy_quic *q = NULL;
  struct fy_rpc_config rcfg = {.methods = methods, .nmethods = sizeof(methods) / sizeof(methods[0])};
  if (fy_crypto_init(&err) < 0 || fy_key_from_seed(&key, seed, &err) < 0 ||
      fy_rpc_new(&rpc, &loop, &rcfg, &err) < 0)
    _exit(2);
  struct fy_quic_handler h = fy_rpc_quic_handler(rpc);
  struct fy_quic_config cfg = {
      .key = &key, .listen = child_listen, .handlers = &h, .nhandlers = 1, .accept = true};
  if (fy_quic_new(&q, &loop, &cfg, &err) < 0)
    _exit(3);
  struct sockaddr_storage addr;
  socklen_t len;
  fy_quic_local_addr(q, &addr, &len);
  uint16_t port = ntohs(((struct sockaddr_in *)&addr)->sin_port);
  if (write(fd, &port, sizeof(port)) != sizeof(port))
    _exit(4);
  close(fd);
  uv_run(&loop, UV_RUN_DEFAULT);
  _exit(0);
}

static pid_t spawn_server(const uint8_t seed[32], uint16_t *port) {
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(fds[0]);
    serve_in_child(fds[1], seed);
  }
  close(fds[1]);
  assert_int_equal(read(fds[0], port, sizeof(*port)), sizeof(*port));
  close(fds[0]);
  return pid;
}

static void note_conn_close(struct fy_qconn *c, const struct fy_qclose *why, void *user) {
  (void)user;
  W->close_why = *why;
  W->close_user = fy_rpc_conn_user(c);
  W->conns_closed++;
}
static bool conn_closed(void) {
  return W->conns_closed > 0;
}
static bool two_conns_closed(void) {
  return W->conns_closed > 1;
}

/* The dialing side of a two-process test: the world, a client key, and the
 * server's key from its seed. */
static void client_world(const uint8_t seed[32], struct fy_key *server_key) {
  struct fy_err err = {0};
  assert_int_equal(fy_crypto_init(&err), 0);
  W = calloc(1, sizeof(*W));
  uv_loop_init(&W->loop);
  uv_timer_init(&W->loop, &W->deadline);
  assert_int_equal(fy_key_generate(&W->ckey, &err), 0);
  assert_int_equal(fy_key_from_seed(server_key, seed, &err), 0);
  struct fy_rpc_config ccfg = {0};
  assert_int_equal(fy_rpc_new(&W->crpc, &W->loop, &ccfg, &err), 0);
}

static void two_processes_every_shape(void **state) {
  (void)state;
  uint8_t seed[32];
  randombytes_buf(seed, sizeof(seed));
  uint16_t port = 0;
  pid_t pid = spawn_server(seed, &port);

  struct fy_err err = {0};
  struct fy_key server_key = {0};
  client_world(seed, &server_key);
  struct fy_quic_handler ch = fy_rpc_quic_handler(W->crpc);
  struct fy_quic_config cfg = {.key = &W->ckey, .listen = "127.0.0.1:0", .handlers = &ch, .nhandlers = 1};
  assert_int_equal(fy_quic_new(&W->client, &W->loop, &cfg, &err), 0);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

  /* Pinning the wrong key fails, and says so. */
  struct fy_nodeid wrong;
  randombytes_buf(wrong.key, sizeof(wrong.key));
  struct fy_qconn *bad = NULL;
  assert_int_equal(
      fy_quic_dial(W->client, &wrong, (struct sockaddr *)&addr, sizeof(addr), FY_RPC_ALPN, NULL, &bad, &err),
      0);
  fy_rpc_set_conn_observer(W->crpc, NULL, note_conn_close, NULL);
  assert_true(run_until(conn_closed, 5000));
  assert_int_equal(W->close_why.kind, FY_QCLOSE_WRONG_ID);
  assert_non_null(strstr(W->close_why.msg, "wrong identity"));

  static int marker;
  assert_int_equal(fy_quic_dial(W->client, &server_key.id, (struct sockaddr *)&addr, sizeof(addr),
                                FY_RPC_ALPN, &marker, &W->conn, &err),
                   0);
  assert_true(run_until(conn_open, 10000));
  assert_true(fy_nodeid_equal(fy_qconn_peer(W->conn), &server_key.id));

  /* unary */
  assert_int_equal(
      fy_rpc_unary(W->crpc, W->conn, "test.echo", (const uint8_t *)"ping", 4, 0, &cb, NULL, &err), 0);
  wait_statuses(1, 5000);
  assert_int_equal(W->last.code, FY_RPC_OK);
  assert_int_equal(W->msgs_seen, 1);
  /* server streaming */
  uint32_t n = 100;
  assert_int_equal(fy_rpc_unary(W->crpc, W->conn, "test.count", (const uint8_t *)&n, 4, 0, &cb, NULL, &err),
                   0);
  wait_statuses(2, 5000);
  assert_int_equal(W->msgs_seen, 101);
  /* client streaming */
  struct fy_rpc_ccall *call;
  assert_int_equal(fy_rpc_start(W->crpc, W->conn, "test.sum", 0, &cb, NULL, &call, &err), 0);
  for (uint32_t i = 1; i <= 100; i++)
    assert_true(fy_rpc_send(call, (const uint8_t *)&i, 4) >= 0);
  assert_int_equal(fy_rpc_end(call), 0);
  wait_statuses(3, 5000);
  assert_int_equal(W->sum_seen, 5050);
  /* bidirectional */
  assert_int_equal(fy_rpc_start(W->crpc, W->conn, "test.echo", 0, &cb, NULL, &call, &err), 0);
  for (int i = 0; i < 10; i++) {
    size_t before = W->msgs_seen;
    assert_true(fy_rpc_send(call, (const uint8_t *)"x", 1) >= 0);
    while (W->msgs_seen == before)
      uv_run(&W->loop, UV_RUN_ONCE);
  }
  assert_int_equal(fy_rpc_end(call), 0);
  wait_statuses(4, 5000);
  /* a typed error from the other process */
  assert_int_equal(fy_rpc_unary(W->crpc, W->conn, "test.fail", NULL, 0, 0, &cb, NULL, &err), 0);
  wait_statuses(5, 5000);
  assert_int_equal(W->last.code, FY_RPC_NOT_FOUND);

  /* The dialer's pointer is still there for the observer when the connection closes. */
  fy_qconn_close(W->conn, 0, "done");
  assert_true(run_until(two_conns_closed, 5000));
  assert_ptr_equal(W->close_user, &marker);
  assert_int_equal(W->close_why.kind, FY_QCLOSE_LOCAL);

  kill(pid, SIGKILL);
  int status;
  waitpid(pid, &status, 0);
  fy_key_free(&server_key);
  W->server = NULL;
}

/* A peer that crashes and comes back on the same address with the same key
 * answers our packets for the lost connection with a stateless reset we
 * accept: the dialer notices at once, not after the idle timeout. */
static void restarted_peer_resets_old_connection(void **state) {
  (void)state;
  uint8_t seed[32];
  randombytes_buf(seed, sizeof(seed));
  uint16_t port = 0;
  pid_t pid = spawn_server(seed, &port);

  struct fy_err err = {0};
  struct fy_key server_key = {0};
  client_world(seed, &server_key);
  fy_rpc_set_conn_observer(W->crpc, NULL, note_conn_close, NULL);
  struct fy_quic_handler ch = fy_rpc_quic_handler(W->crpc);
  /* Idle timeout 30 s; keep-alive pings give the restarted peer something to answer. */
  struct fy_quic_config cfg = {
      .key = &W->ckey, .listen = "127.0.0.1:0", .handlers = &ch, .nhandlers = 1, .keepalive_ms = 100};
  assert_int_equal(fy_quic_new(&W->client, &W->loop, &cfg, &err), 0);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(fy_quic_dial(W->client, &server_key.id, (struct sockaddr *)&addr, sizeof(addr),
                                FY_RPC_ALPN, NULL, &W->conn, &err),
                   0);
  assert_true(run_until(conn_open, 10000));

  kill(pid, SIGKILL);
  int status;
  waitpid(pid, &status, 0);
  char listen[32];
  snprintf(listen, sizeof(listen), "127.0.0.1:%u", port);
  child_listen = listen;
  pid = spawn_server(seed, &port);
  child_listen = "127.0.0.1:0";

  assert_true(run_until(conn_closed, 5000)); /* far below the 30 s idle timeout */
  assert_int_equal(W->close_why.kind, FY_QCLOSE_RESET);
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  fy_key_free(&server_key);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(unary, stop_world),
      cmocka_unit_test_teardown(server_streaming, stop_world),
      cmocka_unit_test_teardown(client_streaming, stop_world),
      cmocka_unit_test_teardown(bidirectional, stop_world),
      cmocka_unit_test_teardown(unknown_method_and_errors, stop_world),
      cmocka_unit_test_teardown(deadline_exceeded, stop_world),
      cmocka_unit_test_teardown(cancel_reaches_server, stop_world),
      cmocka_unit_test_teardown(oversized_frame_refused, stop_world),
      cmocka_unit_test_teardown(thousand_concurrent_calls, stop_world),
      cmocka_unit_test_teardown(more_calls_than_the_stream_limit_over_time, stop_world),
      cmocka_unit_test_teardown(lossy_reordering_path, stop_world),
      cmocka_unit_test_teardown(peer_vanishes_mid_call, stop_world),
      cmocka_unit_test_teardown(two_processes_every_shape, stop_world),
      cmocka_unit_test_teardown(restarted_peer_resets_old_connection, stop_world),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
