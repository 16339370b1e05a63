/* Two QUIC endpoints on loopback in one libuv loop: handshakes bound to node
 * ids, streams, and the ways a connection can fail. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "crypto/key.h"
#include "net/quic.h"

#define ALPN "ferry/test/1"

struct side {
  struct fy_quic *q;
  struct fy_key key;
  int opened, closed;
  struct fy_qclose why;
  struct fy_nodeid peer_seen;
  uint8_t *got;
  size_t got_len, got_cap;
  bool got_fin;
  bool echo;           /* server: echo every stream back */
  uint64_t close_with; /* server: close each connection on open with this code */
  struct fy_quic_handler handler;
};

struct world {
  uv_loop_t loop;
  struct side server, client;
  uv_timer_t deadline;
  bool timed_out;
  size_t send_len; /* client: bytes to send on open */
};

static struct world *W;

static uint64_t on_open(struct fy_qconn *c, void *user) {
  struct side *s = user;
  s->opened++;
  s->peer_seen = *fy_qconn_peer(c);
  if (s->close_with)
    return s->close_with;
  if (s == &W->client && W->send_len) {
    int64_t sid;
    assert_int_equal(fy_qconn_open_stream(c, &sid, NULL), 0);
    uint8_t *data = malloc(W->send_len);
    for (size_t i = 0; i < W->send_len; i++)
      data[i] = (uint8_t)(i * 7 + 3);
    assert_true(fy_qconn_write(c, sid, data, W->send_len, true) >= 0);
    free(data);
  }
  return 0;
}

static void on_data(struct fy_qconn *c, int64_t sid, const uint8_t *data, size_t len, bool fin, void *user) {
  struct side *s = user;
  if (s->got_len + len > s->got_cap) {
    s->got_cap = (s->got_len + len) * 2;
    s->got = realloc(s->got, s->got_cap);
  }
  memcpy(s->got + s->got_len, data, len);
  s->got_len += len;
  fy_qconn_consume(c, sid, len);
  if (s->echo)
    assert_true(fy_qconn_write(c, sid, data, len, fin) >= 0);
  if (fin)
    s->got_fin = true;
}

static void on_close(struct fy_qconn *c, const struct fy_qclose *why, void *user) {
  (void)c;
  struct side *s = user;
  s->closed++;
  s->why = *why;
}

static const struct fy_quic_handler server_handlers[] = {
    {.alpn = ALPN, .user = NULL, .on_open = on_open, .on_stream_data = on_data, .on_close = on_close},
};

static bool anonymous_client;
static const char *listen_addr = "127.0.0.1:0";
static uint64_t idle_ms, keepalive_ms;

static void make_side(struct side *s, bool server, const char *alpn, uint32_t retry_above, uint64_t hs_ms) {
  struct fy_err err = {0};
  assert_int_equal(fy_key_generate(&s->key, &err), 0);
  struct fy_quic_handler *h = &s->handler;
  *h = server_handlers[0];
  h->alpn = alpn;
  h->user = s;
  struct fy_quic_config cfg = {
      .key = !server && anonymous_client ? NULL : &s->key,
      .listen = listen_addr,
      .handlers = h,
      .nhandlers = 1,
      .accept = server,
      .retry_above_per_sec = retry_above,
      .retry_never = server && retry_above == UINT32_MAX,
      .handshake_timeout_ms = hs_ms,
      .idle_timeout_ms = idle_ms,
      .keepalive_ms = server ? 0 : keepalive_ms,
  };
  int rc = fy_quic_new(&s->q, &W->loop, &cfg, &err);
  if (rc != 0)
    fail_msg("fy_quic_new: %s", err.msg);
}

static void on_deadline(uv_timer_t *t) {
  (void)t;
  W->timed_out = true;
  uv_stop(&W->loop);
}

/* Runs the loop until cond() holds or ms pass. */
static void run_until(bool (*cond)(void), uint64_t ms) {
  W->timed_out = false;
  uv_timer_start(&W->deadline, on_deadline, ms, 0);
  while (!cond() && !W->timed_out)
    uv_run(&W->loop, UV_RUN_ONCE);
  uv_timer_stop(&W->deadline);
}

static int setup(void **state) {
  (void)state;
  struct fy_err err = {0};
  assert_int_equal(fy_crypto_init(&err), 0);
  W = calloc(1, sizeof(*W));
  uv_loop_init(&W->loop);
  uv_timer_init(&W->loop, &W->deadline);
  return 0;
}

static void freed(void *user) {
  (*(int *)user)++;
}

static int teardown(void **state) {
  (void)state;
  int done = 0, want = 0;
  struct side *sides[] = {&W->server, &W->client};
  for (size_t i = 0; i < 2; i++) {
    if (sides[i]->q) {
      fy_quic_shutdown(sides[i]->q, freed, &done);
      want++;
    }
  }
  while (done < want)
    uv_run(&W->loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&W->deadline, NULL);
  uv_run(&W->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&W->loop), 0);
  for (size_t i = 0; i < 2; i++) {
    fy_key_free(&sides[i]->key);
    free(sides[i]->got);
  }
  free(W);
  return 0;
}

static struct fy_qconn *dial(const struct fy_nodeid *id) {
  struct sockaddr_storage addr;
  socklen_t len;
  fy_quic_local_addr(W->server.q, &addr, &len);
  struct fy_qconn *c = NULL;
  struct fy_err err = {0};
  int rc = fy_quic_dial(W->client.q, id, (struct sockaddr *)&addr, len, ALPN, NULL, &c, &err);
  if (rc != 0)
    fail_msg("dial: %s", err.msg);
  return c;
}

static bool client_got_fin(void) {
  return W->client.got_fin;
}
static bool client_closed(void) {
  return W->client.closed > 0;
}

static void handshake_and_echo(void **state) {
  (void)state;
  make_side(&W->server, true, ALPN, UINT32_MAX, 0);
  make_side(&W->client, false, ALPN, 0, 0);
  W->server.echo = true;
  W->send_len = 5;
  dial(&W->server.key.id);
  run_until(client_got_fin, 5000);
  assert_false(W->timed_out);
  assert_int_equal(W->client.opened, 1);
  assert_int_equal(W->server.opened, 1);
  /* Each side knows the other by its key. */
  assert_true(fy_nodeid_equal(&W->client.peer_seen, &W->server.key.id));
  assert_true(fy_nodeid_equal(&W->server.peer_seen, &W->client.key.id));
  assert_int_equal(W->client.got_len, 5);
  assert_int_equal(W->client.got[0], 3);
}

/* The same over IPv6 loopback, and from a dual-stack socket. */
static void handshake_and_echo_ipv6(void **state) {
  (void)state;
  listen_addr = "[::1]:0";
  make_side(&W->server, true, ALPN, UINT32_MAX, 0);
  listen_addr = "[::]:0";
  make_side(&W->client, false, ALPN, 0, 0);
  listen_addr = "127.0.0.1:0";
  W->server.echo = true;
  W->send_len = 5000;
  dial(&W->server.key.id);
  run_until(client_got_fin, 5000);
  assert_false(W->timed_out);
  assert_int_equal(W->client.got_len, 5000);
  assert_true(fy_nodeid_equal(&W->server.peer_seen, &W->client.key.id));
}

static void bulk_echo_keeps_every_byte(void **state) {
  (void)state;
  make_side(&W->server, true, ALPN, UINT32_MAX, 0);
  make_side(&W->client, false, ALPN, 0, 0);
  W->server.echo = true;
  W->send_len = (size_t)4 * 1024 * 1024;
  dial(&W->server.key.id);
  run_until(client_got_fin, 20000);
  assert_false(W->timed_out);
  assert_int_equal(W->client.got_len, W->send_len);
  for (size_t i = 0; i < W->send_len; i++)
    if (W->client.got[i] != (uint8_t)(i * 7 + 3))
      fail_msg("byte %zu differs", i);
}

static void wrong_expected_key_fails(void **state) {
  (void)state;
  make_side(&W->server, true, ALPN, UINT32_MAX, 0);
  make_side(&W->client, false, ALPN, 0, 0);
  struct fy_nodeid other;
  randombytes_buf(other.key, sizeof(other.key));
  dial(&other);
  run_until(client_closed, 5000);
  assert_false(W->timed_out);
  assert_int_equal(W->client.opened, 0);
  assert_int_equal(W->client.why.kind, FY_QCLOSE_WRONG_ID);
  assert_non_null(strstr(W->client.why.msg, "wrong identity"));
  assert_int_equal(W->server.opened, 0);
}

static void unknown_alpn_fails(void **state) {
  (void)state;
  make_side(&W->server, true, "ferry/other/1", UINT32_MAX, 0);
  make_side(&W->client, false, ALPN, 0, 0);
  dial(&W->server.key.id);
  run_until(client_closed, 5000);
  assert_false(W->timed_out);
  assert_int_equal(W->client.why.kind, FY_QCLOSE_ALPN);
  assert_int_equal(W->server.opened, 0);
}

static bool server_refused(void) {
  struct fy_quic_stats st;
  fy_quic_get_stats(W->server.q, &st);
  return W->client.closed > 0 && st.handshakes_failed > 0;
}

static void peer_without_certificate_refused(void **state) {
  (void)state;
  make_side(&W->server, true, ALPN, UINT32_MAX, 0);
  anonymous_client = true;
  make_side(&W->client, false, ALPN, 0, 0);
  anonymous_client = false;
  dial(&W->server.key.id);
  run_until(server_refused, 5000);
  assert_false(W->timed_out);
  /* TLS 1.3 lets a client finish before the server judges its certificate,
   * so the client may see "open" briefly; the server never does. */
  assert_int_equal(W->server.opened, 0);
  assert_int_equal(W->client.why.kind, FY_QCLOSE_TLS);
  assert_non_null(strstr(W->client.why.msg, "alert"));
}

static bool never(void) {
  return false;
}

/* Idle connections close after the idle timeout unless the dialer keeps them alive. */
static void idle_timeout_and_keepalive(void **state) {
  (void)state;
  idle_ms = 300;
  keepalive_ms = 100;
  make_side(&W->server, true, ALPN, UINT32_MAX, 0);
  make_side(&W->client, false, ALPN, 0, 0);
  dial(&W->server.key.id);
  run_until(never, 1200);
  assert_int_equal(W->client.opened, 1);
  assert_int_equal(W->client.closed, 0); /* kept alive for 4 idle periods */

  keepalive_ms = 0;
  struct side quiet = {0};
  make_side(&quiet, false, ALPN, 0, 0);
  struct sockaddr_storage addr;
  socklen_t len;
  fy_quic_local_addr(W->server.q, &addr, &len);
  struct fy_qconn *c = NULL;
  struct fy_err err = {0};
  assert_int_equal(
      fy_quic_dial(quiet.q, &W->server.key.id, (struct sockaddr *)&addr, len, ALPN, NULL, &c, &err), 0);
  run_until(never, 1200);
  assert_int_equal(quiet.opened, 1);
  assert_int_equal(quiet.closed, 1);
  assert_int_equal(quiet.why.kind, FY_QCLOSE_IDLE);
  int done = 0;
  fy_quic_shutdown(quiet.q, freed, &done);
  while (!done)
    uv_run(&W->loop, UV_RUN_ONCE);
  fy_key_free(&quiet.key);
  idle_ms = 0;
}

static void retry_then_handshake(void **state) {
  (void)state;
  make_side(&W->server, true, ALPN, 0, 0); /* every handshake must validate its address */
  make_side(&W->client, false, ALPN, 0, 0);
  W->server.echo = true;
  W->send_len = 100;
  dial(&W->server.key.id);
  run_until(client_got_fin, 5000);
  assert_false(W->timed_out);
  struct fy_quic_stats st;
  fy_quic_get_stats(W->server.q, &st);
  assert_true(st.retries_sent >= 1);
  assert_int_equal(W->client.got_len, 100);
}

static void silent_peer_times_out(void **state) {
  (void)state;
  make_side(&W->client, false, ALPN, 0, 300);
  /* A socket that never answers. */
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  socklen_t alen = sizeof(a);
  getsockname(fd, (struct sockaddr *)&a, &alen);
  struct fy_qconn *c = NULL;
  struct fy_err err = {0};
  struct fy_nodeid id;
  randombytes_buf(id.key, sizeof(id.key));
  assert_int_equal(fy_quic_dial(W->client.q, &id, (struct sockaddr *)&a, alen, ALPN, NULL, &c, &err), 0);
  run_until(client_closed, 5000);
  close(fd);
  assert_false(W->timed_out);
  assert_int_equal(W->client.why.kind, FY_QCLOSE_TIMEOUT);
}

static void peer_close_code_arrives(void **state) {
  (void)state;
  make_side(&W->server, true, ALPN, UINT32_MAX, 0);
  make_side(&W->client, false, ALPN, 0, 0);
  W->server.close_with = 7;
  dial(&W->server.key.id);
  run_until(client_closed, 5000);
  assert_false(W->timed_out);
  assert_int_equal(W->client.why.kind, FY_QCLOSE_PEER);
  assert_int_equal(W->client.why.app_code, 7);
}

static bool vn_seen;
static void garbage_and_unknown_versions_leave_connections_working(void **state) {
  (void)state;
  make_side(&W->server, true, ALPN, UINT32_MAX, 0);
  make_side(&W->client, false, ALPN, 0, 0);
  W->server.echo = true;
  W->send_len = 10;
  struct fy_qconn *c = dial(&W->server.key.id);
  run_until(client_got_fin, 5000);
  assert_false(W->timed_out);

  struct sockaddr_storage addr;
  socklen_t len;
  fy_quic_local_addr(W->server.q, &addr, &len);
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  uint8_t junk[1200];
  for (int i = 0; i < 500; i++) {
    size_t n = 1 + (size_t)randombytes_uniform(sizeof(junk));
    randombytes_buf(junk, n);
    sendto(fd, junk, n, 0, (struct sockaddr *)&addr, len);
  }
  /* A long-header Initial for a version nobody speaks, padded to 1200 bytes. */
  memset(junk, 0, sizeof(junk));
  junk[0] = 0xc0;
  junk[1] = 0x1a, junk[2] = 0x2a, junk[3] = 0x3a, junk[4] = 0x4a;
  junk[5] = 8;  /* dcid len */
  junk[14] = 8; /* scid len */
  sendto(fd, junk, sizeof(junk), 0, (struct sockaddr *)&addr, len);
  for (int i = 0; i < 100; i++)
    uv_run(&W->loop, UV_RUN_NOWAIT);
  uint8_t in[1500];
  vn_seen = false;
  for (int i = 0; i < 600 && !vn_seen; i++) {
    ssize_t n = recv(fd, in, sizeof(in), MSG_DONTWAIT);
    if (n >= 5 && (in[0] & 0x80) && in[1] == 0 && in[2] == 0 && in[3] == 0 && in[4] == 0)
      vn_seen = true;
    if (n < 0)
      uv_run(&W->loop, UV_RUN_NOWAIT);
  }
  close(fd);
  assert_true(vn_seen);

  /* The old connection still works. */
  W->client.got_fin = false;
  W->client.got_len = 0;
  int64_t sid;
  assert_int_equal(fy_qconn_open_stream(c, &sid, NULL), 0);
  assert_true(fy_qconn_write(c, sid, (const uint8_t *)"again", 5, true) >= 0);
  run_until(client_got_fin, 5000);
  assert_false(W->timed_out);
  assert_int_equal(W->client.got_len, 5);
  assert_memory_equal(W->client.got, "again", 5);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(handshake_and_echo, setup, teardown),
      cmocka_unit_test_setup_teardown(handshake_and_echo_ipv6, setup, teardown),
      cmocka_unit_test_setup_teardown(bulk_echo_keeps_every_byte, setup, teardown),
      cmocka_unit_test_setup_teardown(wrong_expected_key_fails, setup, teardown),
      cmocka_unit_test_setup_teardown(unknown_alpn_fails, setup, teardown),
      cmocka_unit_test_setup_teardown(peer_without_certificate_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(retry_then_handshake, setup, teardown),
      cmocka_unit_test_setup_teardown(idle_timeout_and_keepalive, setup, teardown),
      cmocka_unit_test_setup_teardown(silent_peer_times_out, setup, teardown),
      cmocka_unit_test_setup_teardown(peer_close_code_arrives, setup, teardown),
      cmocka_unit_test_setup_teardown(garbage_and_unknown_versions_leave_connections_working, setup,
                                      teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
