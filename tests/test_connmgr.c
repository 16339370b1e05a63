/* The connection manager between two endpoints on loopback in one loop:
 * reuse, shared dials, every way a dial fails, the address list, backoff
 * timing, kept peers coming back after a close and after a server restart. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "base/cleanup.h"
#include "crypto/key.h"
#include "net/connmgr.h"
#include "net/quic.h"
#include "net/udp.h"
#include "rpc/rpc.h"

#define OTHER_ALPN "ferry/other/1"

/* What one fy_connmgr_get heard. */
struct result {
  int calls;
  struct fy_qconn *conn;
  bool failed;
  struct fy_qclose failure;
};

struct world {
  uv_loop_t loop;
  uv_timer_t deadline;
  bool timed_out;
  struct fy_key skey, ckey;
  struct fy_rpc *srpc, *crpc;
  struct fy_quic *server, *client;
  struct fy_connmgr *cm;
  struct sockaddr_storage saddr; /* the server */
  int silent_fd;                 /* a UDP socket that never answers */
  struct sockaddr_storage silent;
  struct fy_qconn *server_conn; /* the server's side of the latest connection */
  int server_opens;
  int statuses;
  struct fy_rpc_result last;
};

static struct world *W;

/* ---- the server's one method ---------------------------------------------------- */

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
static const struct fy_rpc_method methods[] = {
    {.name = "test.echo", .on_start = echo_start, .on_msg = echo_msg, .on_end = echo_end},
};

static uint64_t server_open(struct fy_qconn *c, void *user) {
  (void)user;
  W->server_conn = c;
  W->server_opens++;
  return 0;
}
static void server_close(struct fy_qconn *c, const struct fy_qclose *why, void *user) {
  (void)why;
  (void)user;
  if (W->server_conn == c)
    W->server_conn = NULL;
}

static void on_status(struct fy_rpc_ccall *call, const struct fy_rpc_result *res, void *user) {
  (void)call;
  (void)user;
  W->statuses++;
  W->last = *res;
  W->last.message = NULL;
}
static const struct fy_rpc_call_cb call_cb = {.on_status = on_status};

/* ---- plumbing -------------------------------------------------------------------- */

static void on_deadline(uv_timer_t *t) {
  (void)t;
  W->timed_out = true;
}

/* Runs the loop until cond(arg) holds or ms pass; false on time-out. */
static bool run_until(bool (*cond)(const void *arg), const void *arg, uint64_t ms) {
  W->timed_out = false;
  uv_timer_start(&W->deadline, on_deadline, ms, 0);
  while (!cond(arg) && !W->timed_out)
    uv_run(&W->loop, UV_RUN_ONCE);
  uv_timer_stop(&W->deadline);
  return !W->timed_out;
}

static bool got_result(const void *arg) {
  return ((const struct result *)arg)->calls > 0;
}

static void wait_result(struct result *r, uint64_t ms) {
  if (!run_until(got_result, r, ms))
    fail_msg("no ready() within %llu ms", (unsigned long long)ms);
  assert_int_equal(r->calls, 1);
}

static void on_ready(struct fy_qconn *c, const struct fy_qclose *failure, void *user) {
  struct result *r = user;
  r->calls++;
  r->conn = c;
  r->failed = failure != NULL;
  if (failure)
    r->failure = *failure;
  assert_true((c == NULL) != (failure == NULL));
  if (c)
    assert_true(fy_qconn_is_open(c));
}

struct opts {
  const char *server_alpn; /* NULL: FY_RPC_ALPN; "": no server at all */
  uint64_t hs_ms;          /* the client's handshake timeout; 0: 10 s */
  struct fy_connmgr_config cm;
};

static void start_server(const struct fy_key *key, const char *alpn, const char *listen) {
  struct fy_err err = {0};
  struct fy_quic_handler sh = fy_rpc_quic_handler(W->srpc);
  sh.alpn = alpn;
  struct fy_quic_config scfg = {
      .key = key, .listen = listen, .handlers = &sh, .nhandlers = 1, .accept = true, .retry_never = true};
  if (fy_quic_new(&W->server, &W->loop, &scfg, &err) != 0)
    fail_msg("server: %s", err.msg);
  socklen_t len;
  fy_quic_local_addr(W->server, &W->saddr, &len);
}

static void start_world(const struct opts *o) {
  struct fy_err err = {0};
  assert_int_equal(fy_crypto_init(&err), 0);
  W = calloc(1, sizeof(*W));
  W->silent_fd = -1;
  uv_loop_init(&W->loop);
  uv_timer_init(&W->loop, &W->deadline);
  assert_int_equal(fy_key_generate(&W->skey, &err), 0);
  assert_int_equal(fy_key_generate(&W->ckey, &err), 0);
  struct fy_rpc_config rcfg = {.methods = methods, .nmethods = 1};
  assert_int_equal(fy_rpc_new(&W->srpc, &W->loop, &rcfg, &err), 0);
  fy_rpc_set_conn_observer(W->srpc, server_open, server_close, NULL);
  struct fy_rpc_config ccfg = {0};
  assert_int_equal(fy_rpc_new(&W->crpc, &W->loop, &ccfg, &err), 0);
  if (!o->server_alpn || o->server_alpn[0])
    start_server(&W->skey, o->server_alpn ? o->server_alpn : FY_RPC_ALPN, "127.0.0.1:0");
  /* The endpoint first, with the RPC handler; then the manager observes it. */
  struct fy_quic_handler ch = fy_rpc_quic_handler(W->crpc);
  struct fy_quic_config qcfg = {.key = &W->ckey,
                                .listen = "127.0.0.1:0",
                                .handlers = &ch,
                                .nhandlers = 1,
                                .handshake_timeout_ms = o->hs_ms,
                                .idle_timeout_ms = 5000};
  assert_int_equal(fy_quic_new(&W->client, &W->loop, &qcfg, &err), 0);
  if (fy_connmgr_new(&W->cm, &W->loop, W->client, W->crpc, &o->cm, &err) != 0)
    fail_msg("connmgr: %s", err.msg);
  /* A socket that never answers. */
  W->silent_fd = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  assert_int_equal(bind(W->silent_fd, (struct sockaddr *)&a, sizeof(a)), 0);
  socklen_t alen = sizeof(a);
  getsockname(W->silent_fd, (struct sockaddr *)&a, &alen);
  memcpy(&W->silent, &a, sizeof(a));
}

static int done_count;
static void freed(void *user) {
  (void)user;
  done_count++;
}

static void close_manager(void) {
  done_count = 0;
  fy_connmgr_close(W->cm, freed, NULL);
  W->cm = NULL;
  while (done_count < 1)
    uv_run(&W->loop, UV_RUN_ONCE);
}

static void shutdown_server(void) {
  done_count = 0;
  fy_quic_shutdown(W->server, freed, NULL);
  W->server = NULL;
  while (done_count < 1)
    uv_run(&W->loop, UV_RUN_ONCE);
}

static int stop_world(void **state) {
  (void)state;
  /* The manager before the endpoint it dials through. */
  if (W->cm)
    close_manager();
  done_count = 0;
  int want = 1;
  fy_quic_shutdown(W->client, freed, NULL);
  if (W->server) {
    fy_quic_shutdown(W->server, freed, NULL);
    want++;
  }
  while (done_count < want)
    uv_run(&W->loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&W->deadline, NULL);
  uv_run(&W->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&W->loop), 0);
  if (W->silent_fd >= 0)
    close(W->silent_fd);
  fy_rpc_free(W->srpc);
  fy_rpc_free(W->crpc);
  fy_key_free(&W->skey);
  fy_key_free(&W->ckey);
  free(W);
  return 0;
}

static uint64_t server_handshakes(void) {
  struct fy_quic_stats st;
  fy_quic_get_stats(W->server, &st);
  return st.handshakes;
}

static bool server_handshakes_reach(const void *arg) {
  return server_handshakes() >= *(const uint64_t *)arg;
}

/* The client finishes its handshake first; wait for the server's side too. */
static void expect_server_handshakes(uint64_t n) {
  assert_true(run_until(server_handshakes_reach, &n, 5000));
  assert_int_equal(server_handshakes(), n);
}

static void get(const struct fy_nodeid *id, const struct sockaddr_storage *addrs, size_t n, unsigned flags,
                struct result *r) {
  struct fy_err err = {0};
  if (fy_connmgr_get(W->cm, id, addrs, n, NULL, flags, on_ready, r, &err) != 0)
    fail_msg("get: %s", err.msg);
}

static struct fy_connmgr_peer_status status_of(const struct fy_nodeid *id) {
  struct fy_connmgr_peer_status st;
  assert_int_equal(fy_connmgr_status(W->cm, id, NULL, &st), 0);
  return st;
}

static bool peer_in_state(const void *arg) {
  const enum fy_connmgr_state *want = arg;
  return status_of(&W->skey.id).state == *want;
}

static void echo_works(struct fy_qconn *c) {
  struct fy_err err = {0};
  int before = W->statuses;
  assert_int_equal(
      fy_rpc_unary(W->crpc, c, "test.echo", (const uint8_t *)"hi", 2, 5000, &call_cb, NULL, &err), 0);
  while (W->statuses == before)
    uv_run(&W->loop, UV_RUN_ONCE);
  assert_int_equal(W->last.code, FY_RPC_OK);
}

/* ---- tests -------------------------------------------------------------------------- */

static void reuses_live_connection(void **state) {
  (void)state;
  struct opts o = {0};
  start_world(&o);
  struct result a = {0}, b = {0};
  get(&W->skey.id, &W->saddr, 1, 0, &a);
  wait_result(&a, 5000);
  assert_false(a.failed);
  assert_non_null(a.conn);
  /* The second get is answered from the loop, not from inside the call. */
  get(&W->skey.id, NULL, 0, 0, &b);
  assert_int_equal(b.calls, 0);
  wait_result(&b, 5000);
  assert_ptr_equal(b.conn, a.conn);
  expect_server_handshakes(1);
  struct fy_connmgr_peer_status st = status_of(&W->skey.id);
  assert_int_equal(st.state, FY_CONNMGR_OPEN);
  assert_string_equal(st.state_name, "open");
  assert_int_equal(st.attempts, 0);
  assert_false(st.has_failure);
  echo_works(b.conn);
}

static void concurrent_gets_share_one_dial(void **state) {
  (void)state;
  struct opts o = {0};
  start_world(&o);
  struct result r[3] = {0};
  for (int i = 0; i < 3; i++)
    get(&W->skey.id, &W->saddr, 1, 0, &r[i]);
  struct fy_connmgr_peer_status st = status_of(&W->skey.id);
  assert_int_equal(st.state, FY_CONNMGR_DIALING);
  assert_int_equal(st.waiters, 3);
  for (int i = 0; i < 3; i++)
    wait_result(&r[i], 5000);
  for (int i = 0; i < 3; i++) {
    assert_false(r[i].failed);
    assert_ptr_equal(r[i].conn, r[0].conn);
  }
  expect_server_handshakes(1);
  assert_int_equal(W->server_opens, 1);
}

static void wrong_identity_fails(void **state) {
  (void)state;
  struct opts o = {0};
  start_world(&o);
  struct fy_nodeid other;
  randombytes_buf(other.key, sizeof(other.key));
  struct result r = {0};
  get(&other, &W->saddr, 1, 0, &r);
  wait_result(&r, 5000);
  assert_true(r.failed);
  assert_null(r.conn);
  assert_int_equal(r.failure.kind, FY_QCLOSE_WRONG_ID);
  assert_non_null(strstr(r.failure.msg, "wrong identity"));
  assert_non_null(strstr(r.failure.msg, "127.0.0.1:")); /* and where */
  struct fy_connmgr_peer_status st;
  assert_int_equal(fy_connmgr_status(W->cm, &other, NULL, &st), 0);
  assert_int_equal(st.state, FY_CONNMGR_BACKOFF);
  assert_int_equal(st.attempts, 1);
  assert_int_equal(st.last_failure.kind, FY_QCLOSE_WRONG_ID);
}

static void wrong_identity_kept_peer_waits_backoff_max(void **state) {
  (void)state;
  char *logged = NULL;
  size_t logged_len = 0;
  FILE *out = open_memstream(&logged, &logged_len);
  struct fy_log lg;
  fy_log_init(&lg, out, FY_LOG_INFO, "test", NULL);
  struct opts o = {.cm = {.backoff_min_ms = 20, .backoff_max_ms = 5000, .log = &lg}};
  start_world(&o);
  struct fy_nodeid other;
  randombytes_buf(other.key, sizeof(other.key));
  struct fy_err err = {0};
  assert_int_equal(fy_connmgr_keep(W->cm, &other, &W->saddr, 1, NULL, true, &err), 0);
  struct fy_connmgr_peer_status st;
  assert_int_equal(fy_connmgr_status(W->cm, &other, NULL, &st), 0);
  assert_int_equal(st.state, FY_CONNMGR_DIALING); /* kept: dialled at once */
  assert_true(st.keep);
  for (int i = 0; i < 5000 && st.state != FY_CONNMGR_BACKOFF; i++) {
    uv_run(&W->loop, UV_RUN_ONCE);
    assert_int_equal(fy_connmgr_status(W->cm, &other, NULL, &st), 0);
  }
  assert_int_equal(st.state, FY_CONNMGR_BACKOFF);
  assert_int_equal(st.last_failure.kind, FY_QCLOSE_WRONG_ID);
  /* Not the 20 ms a first failure would wait: the full maximum. */
  assert_true(st.retry_in_ms >= 4900 && st.retry_in_ms <= 5000);
  /* And it is logged at warn. */
  close_manager();
  fclose(out);
  assert_non_null(strstr(logged, "level=warn"));
  assert_non_null(strstr(logged, "event=connmgr.wrong_identity"));
  assert_non_null(strstr(logged, "retry_ms=5000"));
  free(logged);
}

static void silent_address_times_out(void **state) {
  (void)state;
  struct opts o = {.hs_ms = 200};
  start_world(&o);
  struct result r = {0};
  get(&W->skey.id, &W->silent, 1, 0, &r);
  wait_result(&r, 5000);
  assert_true(r.failed);
  assert_int_equal(r.failure.kind, FY_QCLOSE_TIMEOUT);
  assert_int_equal(server_handshakes(), 0);
}

static void address_list_falls_through_to_the_next(void **state) {
  (void)state;
  struct opts o = {.hs_ms = 200};
  start_world(&o);
  struct sockaddr_storage addrs[2] = {W->silent, W->saddr};
  struct result r = {0};
  uint64_t t0 = uv_hrtime();
  get(&W->skey.id, addrs, 2, 0, &r);
  wait_result(&r, 5000);
  assert_false(r.failed);
  assert_non_null(r.conn);
  /* The silent address was tried first, for its whole handshake timeout. */
  assert_true((uv_hrtime() - t0) / 1000000 >= 150);
  /* One attempt, not a failure: the count stays clean. */
  struct fy_connmgr_peer_status st = status_of(&W->skey.id);
  assert_int_equal(st.state, FY_CONNMGR_OPEN);
  assert_int_equal(st.attempts, 0);
  assert_int_equal(st.naddrs, 2);
  echo_works(r.conn);
}

static void every_address_failing_reports_the_most_telling(void **state) {
  (void)state;
  struct opts o = {.hs_ms = 200};
  start_world(&o);
  struct fy_nodeid other;
  randombytes_buf(other.key, sizeof(other.key));
  /* The server answers with a key that is not `other`: that beats silence. */
  struct sockaddr_storage addrs[2] = {W->saddr, W->silent};
  struct result r = {0};
  get(&other, addrs, 2, 0, &r);
  wait_result(&r, 5000);
  assert_true(r.failed);
  assert_int_equal(r.failure.kind, FY_QCLOSE_WRONG_ID);
  struct fy_connmgr_peer_status st;
  assert_int_equal(fy_connmgr_status(W->cm, &other, NULL, &st), 0);
  assert_int_equal(st.attempts, 1);
}

static void alpn_refused(void **state) {
  (void)state;
  struct opts o = {.server_alpn = OTHER_ALPN};
  start_world(&o);
  struct result r = {0};
  get(&W->skey.id, &W->saddr, 1, 0, &r);
  wait_result(&r, 5000);
  assert_true(r.failed);
  assert_int_equal(r.failure.kind, FY_QCLOSE_ALPN);
}

static void fail_fast_during_backoff_and_close_fails_waiters(void **state) {
  (void)state;
  struct opts o = {.hs_ms = 100, .cm = {.backoff_min_ms = 10000, .backoff_max_ms = 20000}};
  start_world(&o);
  struct result r = {0};
  get(&W->skey.id, &W->silent, 1, 0, &r);
  wait_result(&r, 5000);
  assert_int_equal(r.failure.kind, FY_QCLOSE_TIMEOUT);
  struct fy_connmgr_peer_status st = status_of(&W->skey.id);
  assert_int_equal(st.state, FY_CONNMGR_BACKOFF);
  assert_true(st.retry_in_ms >= 5000 - 10 && st.retry_in_ms <= 10000);
  /* Fail fast: the last failure, on the next turn. */
  struct result fast = {0};
  get(&W->skey.id, NULL, 0, FY_CONNMGR_FAIL_FAST, &fast);
  assert_int_equal(fast.calls, 0);
  wait_result(&fast, 1000);
  assert_true(fast.failed);
  assert_int_equal(fast.failure.kind, FY_QCLOSE_TIMEOUT);
  /* Without the flag a caller waits for the next attempt... */
  struct result slow = {0};
  get(&W->skey.id, NULL, 0, 0, &slow);
  for (int i = 0; i < 10; i++)
    uv_run(&W->loop, UV_RUN_NOWAIT);
  assert_int_equal(slow.calls, 0);
  assert_int_equal(status_of(&W->skey.id).waiters, 1);
  /* ...and closing the manager tells it so. */
  done_count = 0;
  fy_connmgr_close(W->cm, freed, NULL);
  W->cm = NULL;
  assert_int_equal(slow.calls, 0);
  while (done_count < 1)
    uv_run(&W->loop, UV_RUN_ONCE);
  assert_int_equal(slow.calls, 1);
  assert_true(slow.failed);
  assert_int_equal(slow.failure.kind, FY_QCLOSE_ENDPOINT);
  assert_non_null(strstr(slow.failure.msg, "connection manager closed"));
}

static void close_before_delivery_reports_the_close(void **state) {
  (void)state;
  struct opts o = {0};
  start_world(&o);
  struct result a = {0}, b = {0}, c = {0};
  get(&W->skey.id, &W->saddr, 1, 0, &a);
  wait_result(&a, 5000);
  get(&W->skey.id, NULL, 0, 0, &b); /* resolved, not yet delivered */
  fy_qconn_close(a.conn, 3, "enough");
  wait_result(&b, 5000);
  assert_true(b.failed);
  assert_int_equal(b.failure.kind, FY_QCLOSE_LOCAL);
  /* A peer nobody keeps rests after a close; the next get dials at once. */
  assert_int_equal(status_of(&W->skey.id).state, FY_CONNMGR_IDLE);
  get(&W->skey.id, NULL, 0, 0, &c);
  assert_int_equal(status_of(&W->skey.id).state, FY_CONNMGR_DIALING);
  wait_result(&c, 5000);
  assert_false(c.failed);
  expect_server_handshakes(2);
}

static bool server_has_conn(const void *arg) {
  (void)arg;
  return W->server_conn != NULL;
}

static void kept_peer_reconnects_after_peer_close(void **state) {
  (void)state;
  struct opts o = {.cm = {.backoff_min_ms = 100, .backoff_max_ms = 1000}};
  start_world(&o);
  struct fy_err err = {0};
  assert_int_equal(fy_connmgr_keep(W->cm, &W->skey.id, &W->saddr, 1, NULL, true, &err), 0);
  enum fy_connmgr_state open = FY_CONNMGR_OPEN, backoff = FY_CONNMGR_BACKOFF;
  assert_true(run_until(peer_in_state, &open, 5000));
  assert_true(run_until(server_has_conn, NULL, 5000));
  expect_server_handshakes(1);
  fy_qconn_close(W->server_conn, 7, "go away");
  assert_true(run_until(peer_in_state, &backoff, 5000));
  uint64_t t0 = uv_hrtime();
  struct fy_connmgr_peer_status st = status_of(&W->skey.id);
  assert_int_equal(st.last_failure.kind, FY_QCLOSE_PEER);
  assert_non_null(strstr(st.last_failure.msg, "go away"));
  assert_int_equal(st.attempts, 1);
  assert_true(st.retry_in_ms >= 50 && st.retry_in_ms <= 100);
  assert_true(run_until(peer_in_state, &open, 5000));
  assert_true((uv_hrtime() - t0) / 1000000 >= 40); /* it did wait */
  expect_server_handshakes(2);
  struct result r = {0};
  get(&W->skey.id, NULL, 0, 0, &r);
  wait_result(&r, 5000);
  assert_false(r.failed);
  echo_works(r.conn);
}

/* Full jitter: each wait within [base/2, base], base doubling from 20 ms to
 * the 640 ms cap, measured from the failure to the next dial. */
static void backoff_grows_with_jitter(void **state) {
  (void)state;
  struct opts o = {.hs_ms = 60, .cm = {.backoff_min_ms = 20, .backoff_max_ms = 640}};
  start_world(&o);
  struct fy_err err = {0};
  assert_int_equal(fy_connmgr_keep(W->cm, &W->skey.id, &W->silent, 1, NULL, true, &err), 0);
  enum { WAITS = 7 };
  const uint64_t base[WAITS] = {20, 40, 80, 160, 320, 640, 640};
  uint64_t reported[WAITS] = {0}, measured[WAITS] = {0};
  uint32_t attempts[WAITS] = {0};
  int waits = 0;
  uint64_t backoff_at = 0;
  enum fy_connmgr_state prev = FY_CONNMGR_DIALING;
  W->timed_out = false;
  uv_timer_start(&W->deadline, on_deadline, 10000, 0);
  while (waits < WAITS && !W->timed_out) {
    uv_run(&W->loop, UV_RUN_ONCE);
    struct fy_connmgr_peer_status st = status_of(&W->skey.id);
    if (st.state == prev)
      continue;
    if (st.state == FY_CONNMGR_BACKOFF) {
      backoff_at = uv_hrtime();
      reported[waits] = st.retry_in_ms;
      attempts[waits] = st.attempts;
      assert_int_equal(st.last_failure.kind, FY_QCLOSE_TIMEOUT);
    } else if (st.state == FY_CONNMGR_DIALING && prev == FY_CONNMGR_BACKOFF) {
      measured[waits] = (uv_hrtime() - backoff_at) / 1000000;
      waits++;
    }
    prev = st.state;
  }
  uv_timer_stop(&W->deadline);
  assert_false(W->timed_out);
  for (int i = 0; i < WAITS; i++) {
    print_message("wait %d: base %llu reported %llu measured %llu\n", i, (unsigned long long)base[i],
                  (unsigned long long)reported[i], (unsigned long long)measured[i]);
    assert_int_equal(attempts[i], (uint32_t)i + 1);
    assert_true(reported[i] >= base[i] / 2 && reported[i] <= base[i]);
    /* Timers never fire early (allowing the loop's cached clock a few ms),
     * and a loaded sanitizer build may run late. */
    assert_true(measured[i] + 5 >= base[i] / 2);
    assert_true(measured[i] <= base[i] + 100);
  }
  /* Later waits are longer than early ones whatever the jitter drew. */
  assert_true(measured[4] > measured[0] && measured[5] > measured[1]);
  assert_int_equal(fy_connmgr_keep(W->cm, &W->skey.id, NULL, 0, NULL, false, &err), 0);
}

static bool never(const void *arg) {
  (void)arg;
  return false;
}

static void kept_peer_survives_server_restart(void **state) {
  (void)state;
  struct opts o = {.hs_ms = 300, .cm = {.backoff_min_ms = 20, .backoff_max_ms = 200}};
  start_world(&o);
  struct fy_err err = {0};
  assert_int_equal(fy_connmgr_keep(W->cm, &W->skey.id, &W->saddr, 1, NULL, true, &err), 0);
  enum fy_connmgr_state open = FY_CONNMGR_OPEN;
  assert_true(run_until(peer_in_state, &open, 5000));
  struct result a = {0};
  get(&W->skey.id, NULL, 0, 0, &a);
  wait_result(&a, 5000);
  echo_works(a.conn);

  char listen[FY_UDP_ADDR_MAX];
  fy_udp_format_addr((const struct sockaddr *)&W->saddr, listen);
  shutdown_server();
  /* Down for a while: the close, then attempts that fail and back off. */
  assert_false(run_until(never, NULL, 1000));
  struct fy_connmgr_peer_status down = status_of(&W->skey.id);
  print_message("while down: %s, %u attempts, last: %s\n", down.state_name, down.attempts,
                down.last_failure.msg);
  assert_int_not_equal(down.state, FY_CONNMGR_OPEN);
  assert_true(down.attempts >= 2); /* the close, then at least one failed dial */
  assert_true(down.last_failure.kind == FY_QCLOSE_TIMEOUT || down.last_failure.kind == FY_QCLOSE_UNREACHABLE);

  start_server(&W->skey, FY_RPC_ALPN, listen); /* same key, same port */
  assert_true(run_until(peer_in_state, &open, 10000));
  struct result b = {0};
  get(&W->skey.id, NULL, 0, 0, &b);
  wait_result(&b, 5000);
  assert_false(b.failed);
  echo_works(b.conn);
  expect_server_handshakes(1); /* the new server's first */
}

static void bad_arguments(void **state) {
  (void)state;
  struct opts o = {0};
  start_world(&o);
  struct fy_err err = {0};
  struct result r = {0};
  assert_int_equal(fy_connmgr_get(W->cm, &W->skey.id, &W->saddr, 1, OTHER_ALPN, 0, on_ready, &r, &err),
                   FY_EUNSUPPORTED);
  assert_non_null(strstr(err.msg, OTHER_ALPN));
  assert_int_equal(fy_connmgr_get(W->cm, &W->skey.id, NULL, 0, NULL, 0, on_ready, &r, &err), FY_ENOENT);
  assert_non_null(strstr(err.msg, "no address known"));
  struct sockaddr_storage many[FY_CONNMGR_ADDRS_MAX + 1];
  for (size_t i = 0; i < FY_ARRAY_LEN(many); i++)
    many[i] = W->saddr;
  assert_int_equal(fy_connmgr_get(W->cm, &W->skey.id, many, FY_ARRAY_LEN(many), NULL, 0, on_ready, &r, &err),
                   FY_ELIMIT);
  struct sockaddr_storage unix_addr = {.ss_family = AF_UNIX};
  assert_int_equal(fy_connmgr_get(W->cm, &W->skey.id, &unix_addr, 1, NULL, 0, on_ready, &r, &err), FY_EINVAL);
  assert_int_equal(fy_connmgr_get(W->cm, &W->skey.id, &W->saddr, 1, NULL, 0, NULL, &r, &err), FY_EINVAL);
  struct fy_connmgr_peer_status st;
  assert_int_equal(fy_connmgr_status(W->cm, &W->skey.id, NULL, &st), FY_ENOENT); /* nothing was made */
  for (int i = 0; i < 10; i++)
    uv_run(&W->loop, UV_RUN_NOWAIT);
  assert_int_equal(r.calls, 0);
  struct fy_connmgr_config bad = {.backoff_min_ms = 500, .backoff_max_ms = 100};
  struct fy_connmgr *m = NULL;
  assert_int_equal(fy_connmgr_new(&m, &W->loop, W->client, W->crpc, &bad, &err), FY_EINVAL);
  assert_null(m);
}

/* The server side's manager learns the connections peers dialled to it and
 * hands the newest live one out for a peer it has no address for. */
struct seen {
  int opens, closes;
};
static void scm_open(struct fy_qconn *c, void *user) {
  struct seen *s = user;
  s->opens++;
  server_open(c, NULL); /* the manager took the observer slot the world used */
}
static void scm_close(struct fy_qconn *c, const struct fy_qclose *why, void *user) {
  struct seen *s = user;
  s->closes++;
  server_close(c, why, NULL);
}

static bool server_opens_reach(const void *arg) {
  return W->server_opens >= *(const int *)arg;
}

static void hands_out_inbound_connection(void **state) {
  (void)state;
  struct opts o = {0};
  start_world(&o);
  struct fy_err err = {0};
  struct fy_connmgr *scm = NULL;
  assert_int_equal(fy_connmgr_new(&scm, &W->loop, W->server, W->srpc, NULL, &err), 0);
  struct seen seen = {0};
  fy_connmgr_set_conn_observer(scm, scm_open, scm_close, &seen);

  /* Nothing yet: no connection, no address. */
  struct result r0 = {0};
  assert_int_equal(fy_connmgr_get(scm, &W->ckey.id, NULL, 0, NULL, 0, on_ready, &r0, &err), FY_ENOENT);
  assert_non_null(strstr(err.msg, "no address known"));

  /* The client dials; the server's manager hands out the server's side. */
  struct result a = {0};
  get(&W->skey.id, &W->saddr, 1, 0, &a);
  wait_result(&a, 5000);
  assert_false(a.failed);
  int one = 1;
  assert_true(run_until(server_opens_reach, &one, 5000));
  assert_int_equal(seen.opens, 1);
  struct fy_connmgr_peer_status st;
  assert_int_equal(fy_connmgr_status(scm, &W->ckey.id, NULL, &st), 0);
  assert_true(st.inbound);
  assert_int_equal(st.state, FY_CONNMGR_IDLE);
  struct result b = {0};
  assert_int_equal(fy_connmgr_get(scm, &W->ckey.id, NULL, 0, NULL, 0, on_ready, &b, &err), 0);
  assert_int_equal(b.calls, 0); /* from the loop, as always */
  wait_result(&b, 5000);
  assert_false(b.failed);
  assert_ptr_equal(b.conn, W->server_conn);
  assert_false(fy_qconn_is_client(b.conn));
  assert_true(fy_nodeid_equal(fy_qconn_peer(b.conn), &W->ckey.id));
  expect_server_handshakes(1); /* and nothing was dialled back */

  /* A second connection from the same peer: the newest wins, and the older
   * one closing does not make the manager forget the newer. */
  struct fy_qconn *second = NULL;
  assert_int_equal(fy_quic_dial(W->client, &W->skey.id, (const struct sockaddr *)&W->saddr,
                                sizeof(struct sockaddr_in), FY_RPC_ALPN, NULL, &second, &err),
                   0);
  int two = 2;
  assert_true(run_until(server_opens_reach, &two, 5000));
  struct fy_qconn *newest = W->server_conn;
  assert_ptr_not_equal(newest, b.conn);
  struct result c = {0};
  assert_int_equal(fy_connmgr_get(scm, &W->ckey.id, NULL, 0, NULL, 0, on_ready, &c, &err), 0);
  wait_result(&c, 5000);
  assert_ptr_equal(c.conn, newest);
  fy_qconn_close(a.conn, 0, "the older one");
  while (seen.closes < 1)
    uv_run(&W->loop, UV_RUN_ONCE);
  struct result d = {0};
  assert_int_equal(fy_connmgr_get(scm, &W->ckey.id, NULL, 0, NULL, 0, on_ready, &d, &err), 0);
  wait_result(&d, 5000);
  assert_ptr_equal(d.conn, newest);

  /* The newest closes: forgotten, and with no address the get fails again. */
  fy_qconn_close(second, 0, "the newer one");
  while (seen.closes < 2)
    uv_run(&W->loop, UV_RUN_ONCE);
  assert_int_equal(fy_connmgr_status(scm, &W->ckey.id, NULL, &st), FY_ENOENT);
  struct result e = {0};
  assert_int_equal(fy_connmgr_get(scm, &W->ckey.id, NULL, 0, NULL, 0, on_ready, &e, &err), FY_ENOENT);

  done_count = 0;
  fy_connmgr_close(scm, freed, NULL);
  while (done_count < 1)
    uv_run(&W->loop, UV_RUN_ONCE);
}

/* A handed-out inbound connection that closes before ready() runs is
 * reported as gone, not handed out dead. */
static void inbound_closing_before_delivery_reports_the_close(void **state) {
  (void)state;
  struct opts o = {0};
  start_world(&o);
  struct fy_err err = {0};
  struct fy_connmgr *scm = NULL;
  assert_int_equal(fy_connmgr_new(&scm, &W->loop, W->server, W->srpc, NULL, &err), 0);
  struct seen seen = {0};
  fy_connmgr_set_conn_observer(scm, scm_open, scm_close, &seen);
  struct result a = {0};
  get(&W->skey.id, &W->saddr, 1, 0, &a);
  wait_result(&a, 5000);
  int one = 1;
  assert_true(run_until(server_opens_reach, &one, 5000));
  struct result b = {0};
  assert_int_equal(fy_connmgr_get(scm, &W->ckey.id, NULL, 0, NULL, 0, on_ready, &b, &err), 0);
  fy_qconn_close(W->server_conn, 0, "closing now");
  wait_result(&b, 5000);
  assert_true(b.failed);
  assert_null(b.conn);
  assert_non_null(strstr(b.failure.msg, "inbound"));
  done_count = 0;
  fy_connmgr_close(scm, freed, NULL);
  while (done_count < 1)
    uv_run(&W->loop, UV_RUN_ONCE);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(reuses_live_connection, stop_world),
      cmocka_unit_test_teardown(concurrent_gets_share_one_dial, stop_world),
      cmocka_unit_test_teardown(wrong_identity_fails, stop_world),
      cmocka_unit_test_teardown(wrong_identity_kept_peer_waits_backoff_max, stop_world),
      cmocka_unit_test_teardown(silent_address_times_out, stop_world),
      cmocka_unit_test_teardown(address_list_falls_through_to_the_next, stop_world),
      cmocka_unit_test_teardown(every_address_failing_reports_the_most_telling, stop_world),
      cmocka_unit_test_teardown(alpn_refused, stop_world),
      cmocka_unit_test_teardown(fail_fast_during_backoff_and_close_fails_waiters, stop_world),
      cmocka_unit_test_teardown(close_before_delivery_reports_the_close, stop_world),
      cmocka_unit_test_teardown(kept_peer_reconnects_after_peer_close, stop_world),
      cmocka_unit_test_teardown(backoff_grows_with_jitter, stop_world),
      cmocka_unit_test_teardown(kept_peer_survives_server_restart, stop_world),
      cmocka_unit_test_teardown(bad_arguments, stop_world),
      cmocka_unit_test_teardown(hands_out_inbound_connection, stop_world),
      cmocka_unit_test_teardown(inbound_closing_before_delivery_reports_the_close, stop_world),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
