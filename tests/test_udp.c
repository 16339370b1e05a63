/* The UDP layer over loopback only (127.0.0.1, ::1, ::ffff:127.0.0.1): payloads,
 * addresses, pktinfo, ECN, GSO and its fallback, batches, truncation, bad
 * address strings, dual-stack, closing. Every test ends with uv_loop_close
 * succeeding, which proves every handle went through its close callback. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/cleanup.h"
#include "net/udp.h"

#define assert_contains(haystack, needle)                                                                    \
  do {                                                                                                       \
    if (!strstr((haystack), (needle)))                                                                       \
      fail_msg("message \"%s\" does not contain \"%s\"", (haystack), (needle));                              \
  } while (0)

#define KEEP 16 /* packets whose details a sink keeps */

struct kept {
  uint8_t data[FY_UDP_RECV_MAX];
  size_t len;
  struct sockaddr_storage remote, local;
  socklen_t remote_len, local_len;
  uint8_t ecn;
};

struct sink {
  size_t count, bytes;
  struct kept kept[KEEP];
  uint8_t *seen; /* for numbered datagrams: seen[n] counts arrivals of n */
  size_t seen_len;
  struct fy_udp *close_me; /* closes this socket from the callback */
};

static void on_pkt(void *user, const struct fy_udp_pkt *pkt) {
  struct sink *s = user;
  if (s->count < KEEP) {
    struct kept *k = &s->kept[s->count];
    assert_true(pkt->len <= sizeof(k->data));
    memcpy(k->data, pkt->data, pkt->len);
    k->len = pkt->len;
    assert_true(pkt->remote_len <= sizeof(k->remote));
    assert_true(pkt->local_len <= sizeof(k->local));
    memcpy(&k->remote, pkt->remote, pkt->remote_len);
    memcpy(&k->local, pkt->local, pkt->local_len);
    k->remote_len = pkt->remote_len;
    k->local_len = pkt->local_len;
    k->ecn = pkt->ecn;
  }
  if (s->seen && pkt->len >= 4) {
    uint32_t n;
    memcpy(&n, pkt->data, 4);
    if (n < s->seen_len)
      s->seen[n]++;
  }
  s->count++;
  s->bytes += pkt->len;
  if (s->close_me)
    fy_udp_close(s->close_me, NULL);
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Runs the loop without blocking until *count reaches want or ms pass. */
static void run_until(uv_loop_t *loop, const size_t *count, size_t want, unsigned ms) {
  uint64_t end = now_ms() + ms;
  while (*count < want && now_ms() < end) {
    uv_run(loop, UV_RUN_NOWAIT);
    if (*count < want) {
      struct timespec pause = {0, 200000L};
      nanosleep(&pause, NULL);
    }
  }
}

/* A little longer, to catch datagrams that should not come. */
static void run_a_while(uv_loop_t *loop, unsigned ms) {
  size_t never = 0;
  run_until(loop, &never, 1, ms);
}

static size_t closed_count;

static void on_closed(struct fy_udp *u) {
  (void)u;
  closed_count++;
}

static void close_all(uv_loop_t *loop, struct fy_udp **us, size_t n) {
  size_t before = closed_count;
  for (size_t i = 0; i < n; i++)
    fy_udp_close(us[i], on_closed);
  size_t want = before + n;
  run_until(loop, &closed_count, want, 2000);
  assert_int_equal(closed_count, want);
  assert_int_equal(uv_loop_close(loop), 0);
}

static void open_ok(struct fy_udp *u, uv_loop_t *loop, const char *addr, struct sink *s) {
  struct fy_err err = {0};
  int rc = fy_udp_open(u, loop, addr, on_pkt, s, &err);
  if (rc != 0)
    fail_msg("fy_udp_open(%s): %s", addr, err.msg);
}

static void local_of(const struct fy_udp *u, struct sockaddr_storage *ss, socklen_t *len) {
  assert_int_equal(fy_udp_local_addr(u, ss, len), 0);
}

static uint16_t port_of(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET)
    return ntohs(((const struct sockaddr_in *)(const void *)sa)->sin_port);
  return ntohs(((const struct sockaddr_in6 *)(const void *)sa)->sin6_port);
}

static void assert_addr(const struct sockaddr_storage *ss, const char *want) {
  char text[FY_UDP_ADDR_MAX];
  fy_udp_format_addr((const struct sockaddr *)ss, text);
  assert_string_equal(text, want);
}

static void send_ok(struct fy_udp *u, const struct sockaddr_storage *to, socklen_t to_len, const void *data,
                    size_t len, size_t gso, uint8_t ecn) {
  struct fy_err err = {0};
  int rc = fy_udp_send(u, (const struct sockaddr *)to, to_len, data, len, gso, ecn, &err);
  if (rc != 0)
    fail_msg("fy_udp_send: %s", err.msg);
}

/* a sends "hello ferry" to b; b sees the payload, a's address, its own
 * address from pktinfo and the ECN bits; then b answers to pkt->remote. */
static void round_trip(const char *bind_addr, const char *ip_text, bool v6) {
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  struct sink sa = {0}, sb = {0};
  struct fy_udp a, b;
  open_ok(&a, &loop, bind_addr, &sa);
  open_ok(&b, &loop, bind_addr, &sb);
  assert_int_equal(a.family, v6 ? AF_INET6 : AF_INET);
  struct sockaddr_storage la, lb;
  socklen_t la_len, lb_len;
  local_of(&a, &la, &la_len);
  local_of(&b, &lb, &lb_len);
  assert_int_not_equal(port_of((struct sockaddr *)&la), 0);
  assert_int_not_equal(port_of((struct sockaddr *)&lb), 0);

  static const char msg[] = "hello ferry";
  send_ok(&a, &lb, lb_len, msg, sizeof(msg) - 1, 0, 0);
  run_until(&loop, &sb.count, 1, 2000);
  assert_int_equal(sb.count, 1);
  struct kept *k = &sb.kept[0];
  assert_int_equal(k->len, sizeof(msg) - 1);
  assert_memory_equal(k->data, msg, sizeof(msg) - 1);
  char want[FY_UDP_ADDR_MAX];
  snprintf(want, sizeof(want), v6 ? "[%s]:%u" : "%s:%u", ip_text, port_of((struct sockaddr *)&la));
  assert_addr(&k->remote, want);
  assert_int_equal(k->remote_len, la_len);
  snprintf(want, sizeof(want), v6 ? "[%s]:%u" : "%s:%u", ip_text, port_of((struct sockaddr *)&lb));
  assert_addr(&k->local, want);
  assert_int_equal(k->local_len, lb_len);
  assert_int_equal(k->ecn, 0);

  /* The remote address as received is good for answering. */
  send_ok(&b, &k->remote, k->remote_len, "pong", 4, 0, 0);
  run_until(&loop, &sa.count, 1, 2000);
  assert_int_equal(sa.count, 1);
  assert_memory_equal(sa.kept[0].data, "pong", 4);

  const struct fy_udp_stats *st = fy_udp_stats(&a);
  assert_int_equal(st->tx_datagrams, 1);
  assert_int_equal(st->tx_bytes, sizeof(msg) - 1);
  assert_int_equal(st->rx_datagrams, 1);
  assert_int_equal(st->rx_bytes, 4);
  assert_int_equal(fy_udp_stats(&b)->rx_datagrams, 1);
  assert_int_equal(fy_udp_stats(&b)->rx_bytes, sizeof(msg) - 1);
  assert_true(a.rcvbuf > 0 && a.sndbuf > 0);

  close_all(&loop, (struct fy_udp *[]){&a, &b}, 2);
}

static void test_round_trip_v4(void **state) {
  (void)state;
  round_trip("127.0.0.1:0", "127.0.0.1", false);
}

static void test_round_trip_v6(void **state) {
  (void)state;
  round_trip("[::1]:0", "::1", true);
}

static void ecn_round_trip(const char *bind_addr) {
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  struct sink sa = {0}, sb = {0};
  struct fy_udp a, b;
  open_ok(&a, &loop, bind_addr, &sa);
  open_ok(&b, &loop, bind_addr, &sb);
  struct sockaddr_storage lb;
  socklen_t lb_len;
  local_of(&b, &lb, &lb_len);
  /* ECT(0) first, the one QUIC uses, then the others. */
  static const uint8_t ecns[] = {FY_UDP_ECT_0, FY_UDP_ECT_1, FY_UDP_ECN_CE, FY_UDP_ECN_NOT_ECT, FY_UDP_ECT_0};
  for (size_t i = 0; i < FY_ARRAY_LEN(ecns); i++) {
    send_ok(&a, &lb, lb_len, "ecn", 3, 0, ecns[i]);
    run_until(&loop, &sb.count, i + 1, 2000);
    assert_int_equal(sb.count, i + 1);
    assert_int_equal(sb.kept[i].ecn, ecns[i]);
  }
  close_all(&loop, (struct fy_udp *[]){&a, &b}, 2);
}

static void test_ecn_v4(void **state) {
  (void)state;
  ecn_round_trip("127.0.0.1:0");
}

static void test_ecn_v6(void **state) {
  (void)state;
  ecn_round_trip("[::1]:0");
}

/* 10 x 1200 bytes in one call arrive as 10 datagrams; so do 9 x 1200 + 1000
 * (the last one shorter), with UDP_SEGMENT and with the fallback. */
static void gso_run(const char *bind_addr, bool force_fallback) {
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  struct sink sa = {0}, sb = {0};
  struct fy_udp a, b;
  open_ok(&a, &loop, bind_addr, &sa);
  open_ok(&b, &loop, bind_addr, &sb);
  if (force_fallback)
    a.gso = false;
  bool gso = a.gso;
  struct sockaddr_storage lb;
  socklen_t lb_len;
  local_of(&b, &lb, &lb_len);

  uint8_t buf[10 * 1200];
  for (size_t i = 0; i < sizeof(buf); i++)
    buf[i] = (uint8_t)(i / 1200 * 16 + i % 7);
  send_ok(&a, &lb, lb_len, buf, sizeof(buf), 1200, FY_UDP_ECT_0);
  run_until(&loop, &sb.count, 10, 2000);
  run_a_while(&loop, 20);
  assert_int_equal(sb.count, 10);
  for (size_t i = 0; i < 10; i++) {
    assert_int_equal(sb.kept[i].len, 1200);
    assert_memory_equal(sb.kept[i].data, buf + i * 1200, 1200);
    assert_int_equal(sb.kept[i].ecn, FY_UDP_ECT_0);
  }
  const struct fy_udp_stats *st = fy_udp_stats(&a);
  assert_int_equal(st->tx_datagrams, 10);
  assert_int_equal(st->tx_bytes, sizeof(buf));
  assert_int_equal(st->tx_gso_calls, gso ? 1 : 0);

  send_ok(&a, &lb, lb_len, buf, 9 * 1200 + 1000, 1200, 0);
  run_until(&loop, &sb.count, 20, 2000);
  run_a_while(&loop, 20);
  assert_int_equal(sb.count, 20);
  assert_int_equal(sb.bytes, sizeof(buf) + (size_t)9 * 1200 + 1000);
  assert_int_equal(st->tx_datagrams, 20);
  assert_int_equal(st->tx_gso_calls, gso ? 2 : 0);
  close_all(&loop, (struct fy_udp *[]){&a, &b}, 2);
}

static void test_gso_v4(void **state) {
  (void)state;
  struct fy_udp probe;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  struct sink s = {0};
  open_ok(&probe, &loop, "127.0.0.1:0", &s);
  if (!probe.gso)
    print_message("UDP_SEGMENT is not supported here; testing the sendmmsg fallback only\n");
  close_all(&loop, (struct fy_udp *[]){&probe}, 1);
  gso_run("127.0.0.1:0", false);
}

static void test_gso_v6(void **state) {
  (void)state;
  gso_run("[::1]:0", false);
}

static void test_gso_fallback(void **state) {
  (void)state;
  gso_run("127.0.0.1:0", true);
  gso_run("[::1]:0", true);
}

/* A run longer than one UDP_SEGMENT call takes (64 segments, 65507 bytes) is
 * split; 200 x 1200 bytes is four calls. */
static void test_gso_long_run(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  struct sink sa = {0}, sb = {0};
  struct fy_udp a, b;
  open_ok(&a, &loop, "127.0.0.1:0", &sa);
  open_ok(&b, &loop, "127.0.0.1:0", &sb);
  uint8_t seen[200] = {0};
  sb.seen = seen;
  sb.seen_len = sizeof(seen);
  struct sockaddr_storage lb;
  socklen_t lb_len;
  local_of(&b, &lb, &lb_len);
  uint8_t *buf = calloc(200, 1200);
  assert_non_null(buf);
  for (uint32_t i = 0; i < 200; i++)
    memcpy(buf + (size_t)i * 1200, &i, 4);
  send_ok(&a, &lb, lb_len, buf, (size_t)200 * 1200, 1200, 0);
  free(buf);
  run_until(&loop, &sb.count, 200, 3000);
  assert_int_equal(sb.count, 200);
  for (size_t i = 0; i < 200; i++)
    assert_int_equal(seen[i], 1);
  if (a.gso)
    assert_int_equal(fy_udp_stats(&a)->tx_gso_calls, 4); /* 54 segments of 1200 fit in 65507 bytes */
  close_all(&loop, (struct fy_udp *[]){&a, &b}, 2);
}

/* 1000 numbered datagrams, all sent before the loop runs: every one arrives
 * exactly once, and the receive budget splits the work over wakeups. */
static void test_batch_1000(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  struct sink sa = {0}, sb = {0};
  struct fy_udp a, b;
  open_ok(&a, &loop, "127.0.0.1:0", &sa);
  open_ok(&b, &loop, "127.0.0.1:0", &sb);
  uint8_t seen[1000] = {0};
  sb.seen = seen;
  sb.seen_len = sizeof(seen);
  struct sockaddr_storage lb;
  socklen_t lb_len;
  local_of(&b, &lb, &lb_len);
  uint8_t msg[100] = {0};
  for (uint32_t i = 0; i < 1000; i++) {
    memcpy(msg, &i, 4);
    send_ok(&a, &lb, lb_len, msg, sizeof(msg), 0, 0);
  }
  uint64_t start = now_ms();
  run_until(&loop, &sb.count, 1000, 5000);
  assert_int_equal(sb.count, 1000);
  assert_true(now_ms() - start < 5000);
  for (size_t i = 0; i < 1000; i++)
    assert_int_equal(seen[i], 1);
  const struct fy_udp_stats *st = fy_udp_stats(&b);
  assert_int_equal(st->rx_datagrams, 1000);
  assert_int_equal(st->rx_bytes, 1000 * sizeof(msg));
  assert_true(st->rx_wakeups >= 1000 / FY_UDP_RECV_BUDGET);
  assert_true(st->rx_budget_hits >= 1);
  assert_int_equal(st->rx_truncated, 0);
  close_all(&loop, (struct fy_udp *[]){&a, &b}, 2);
}

/* A datagram above FY_UDP_RECV_MAX is dropped and counted; the ones around
 * it arrive; FY_UDP_RECV_MAX itself still fits. */
static void test_truncated_dropped(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  struct sink sa = {0}, sb = {0};
  struct fy_udp a, b;
  open_ok(&a, &loop, "[::1]:0", &sa);
  open_ok(&b, &loop, "[::1]:0", &sb);
  struct sockaddr_storage lb;
  socklen_t lb_len;
  local_of(&b, &lb, &lb_len);
  static uint8_t big[3000];
  memset(big, 0xab, sizeof(big));
  send_ok(&a, &lb, lb_len, "before", 6, 0, 0);
  send_ok(&a, &lb, lb_len, big, sizeof(big), 0, 0);
  send_ok(&a, &lb, lb_len, big, FY_UDP_RECV_MAX + 1, 0, 0);
  send_ok(&a, &lb, lb_len, big, FY_UDP_RECV_MAX, 0, 0);
  send_ok(&a, &lb, lb_len, "after", 5, 0, 0);
  run_until(&loop, &sb.count, 3, 2000);
  run_a_while(&loop, 20);
  assert_int_equal(sb.count, 3);
  assert_memory_equal(sb.kept[0].data, "before", 6);
  assert_int_equal(sb.kept[1].len, FY_UDP_RECV_MAX);
  assert_memory_equal(sb.kept[2].data, "after", 5);
  assert_int_equal(fy_udp_stats(&b)->rx_truncated, 2);
  assert_int_equal(fy_udp_stats(&b)->rx_datagrams, 3);
  close_all(&loop, (struct fy_udp *[]){&a, &b}, 2);
}

/* A dual-stack socket (bound to the IPv4-mapped loopback, which only works
 * with IPV6_V6ONLY off) receives from an IPv4 socket: remote and local are
 * IPv4-mapped IPv6 addresses, ECN comes through, and answers reach the IPv4
 * socket with their ECN bits, to a mapped or a plain IPv4 address. */
static void test_dual_stack_from_v4(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  struct sink s4 = {0}, s6 = {0};
  struct fy_udp v4, dual;
  open_ok(&v4, &loop, "127.0.0.1:0", &s4);
  open_ok(&dual, &loop, "[::ffff:127.0.0.1]:0", &s6);
  assert_int_equal(dual.family, AF_INET6);
  struct sockaddr_storage l4, l6;
  socklen_t l4_len, l6_len;
  local_of(&v4, &l4, &l4_len);
  local_of(&dual, &l6, &l6_len);

  /* The IPv4 sender addresses the dual-stack socket as plain 127.0.0.1. */
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port_of((struct sockaddr *)&l6))};
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  struct fy_err err = {0};
  assert_int_equal(fy_udp_send(&v4, (const struct sockaddr *)&to, sizeof(to), (const uint8_t *)"v4", 2, 0,
                               FY_UDP_ECT_0, &err),
                   0);
  run_until(&loop, &s6.count, 1, 2000);
  assert_int_equal(s6.count, 1);
  struct kept *k = &s6.kept[0];
  char want[FY_UDP_ADDR_MAX];
  assert_int_equal(k->remote.ss_family, AF_INET6);
  assert_int_equal(k->remote_len, sizeof(struct sockaddr_in6));
  snprintf(want, sizeof(want), "[::ffff:127.0.0.1]:%u", port_of((struct sockaddr *)&l4));
  assert_addr(&k->remote, want);
  snprintf(want, sizeof(want), "[::ffff:127.0.0.1]:%u", port_of((struct sockaddr *)&l6));
  assert_addr(&k->local, want);
  assert_int_equal(k->ecn, FY_UDP_ECT_0);

  /* Answer to the mapped address as received, then to the AF_INET form. */
  send_ok(&dual, &k->remote, k->remote_len, "re1", 3, 0, FY_UDP_ECT_0);
  send_ok(&dual, &l4, l4_len, "re2", 3, 0, FY_UDP_ECN_CE);
  run_until(&loop, &s4.count, 2, 2000);
  assert_int_equal(s4.count, 2);
  assert_memory_equal(s4.kept[0].data, "re1", 3);
  assert_int_equal(s4.kept[0].ecn, FY_UDP_ECT_0);
  assert_memory_equal(s4.kept[1].data, "re2", 3);
  assert_int_equal(s4.kept[1].ecn, FY_UDP_ECN_CE);
  snprintf(want, sizeof(want), "127.0.0.1:%u", port_of((struct sockaddr *)&l6));
  assert_addr(&s4.kept[0].remote, want);

  /* An IPv4 socket takes a mapped destination too. */
  send_ok(&v4, &k->local, k->local_len, "mapped", 6, 0, 0);
  run_until(&loop, &s6.count, 2, 2000);
  assert_int_equal(s6.count, 2);
  assert_memory_equal(s6.kept[1].data, "mapped", 6);

  /* GSO through the mapped path. */
  uint8_t buf[4 * 1200] = {0};
  send_ok(&dual, &k->remote, k->remote_len, buf, sizeof(buf), 1200, 0);
  run_until(&loop, &s4.count, 6, 2000);
  assert_int_equal(s4.count, 6);
  close_all(&loop, (struct fy_udp *[]){&v4, &dual}, 2);
}

struct bad_addr {
  const char *text;
  const char *msg;
};

static const struct bad_addr bad_addrs[] = {
    {"", "empty address"},
    {"4433", "\"4433\" has no port"},
    {"127.0.0.1", "\"127.0.0.1\" has no port"},
    {"127.0.0.1:", "port \"\" is not a number"},
    {"127.0.0.1:65536", "port \"65536\" is not a number from 0 to 65535"},
    {"127.0.0.1:-1", "port \"-1\" is not a number"},
    {"127.0.0.1:44x", "port \"44x\" is not a number"},
    {"127.0.0.1:+80", "port \"+80\" is not a number"},
    {":4433", "\":4433\" has no host"},
    {"[]:4433", "\"[]:4433\" has no host"},
    {"::1:4433", "\"::1:4433\": an IPv6 address needs brackets"},
    {"[::1]4433", "\"[::1]4433\": expected ':port' after ']'"},
    {"[::1:4433", "\"[::1:4433\": '[' without a closing ']'"},
    {"localhost:4433", "\"localhost\" is not a numeric IPv4 address (host names are not resolved"},
    {"300.1.1.1:1", "\"300.1.1.1\" is not a numeric IPv4 address"},
    {"1.2.3:1", "\"1.2.3\" is not a numeric IPv4 address"},
    {"[127.0.0.1]:1", "\"127.0.0.1\" is not a numeric IPv6 address"},
    {"[::g]:1", "\"::g\" is not a numeric IPv6 address"},
    {"[fe80::1%nosuchif0]:1", "no network interface \"nosuchif0\""},
    {"[::1]:4433x", "port \"4433x\" is not a number"},
    {"01234567890123456789012345678901234567890123456789012345678901234567890123456789:1", "is too long"},
};

static void test_bad_addresses(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  struct sink s = {0};
  for (size_t i = 0; i < FY_ARRAY_LEN(bad_addrs); i++) {
    struct fy_err err = {0};
    struct sockaddr_storage ss;
    socklen_t len;
    if (fy_udp_parse_addr(bad_addrs[i].text, &ss, &len, &err) != FY_EINVAL)
      fail_msg("\"%s\" parsed", bad_addrs[i].text);
    assert_contains(err.msg, bad_addrs[i].msg);
    /* fy_udp_open says the same, leaves nothing open, and close is a no-op. */
    struct fy_udp u;
    struct fy_err err2 = {0};
    assert_int_equal(fy_udp_open(&u, &loop, bad_addrs[i].text, on_pkt, &s, &err2), FY_EINVAL);
    assert_string_equal(err2.msg, err.msg);
    fy_udp_close(&u, on_closed);
  }
  struct fy_err err = {0};
  struct sockaddr_storage ss;
  socklen_t len;
  assert_int_equal(fy_udp_parse_addr(NULL, &ss, &len, &err), FY_EINVAL);
  assert_contains(err.msg, "no address given");
  assert_int_equal(fy_udp_parse_addr("nope", &ss, &len, NULL), FY_EINVAL);
  assert_int_equal(uv_run(&loop, UV_RUN_NOWAIT), 0);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_good_addresses(void **state) {
  (void)state;
  struct fy_err err = {0};
  struct sockaddr_storage ss;
  socklen_t len;

  assert_int_equal(fy_udp_parse_addr("[::]:4433", &ss, &len, &err), 0);
  const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&ss;
  assert_int_equal(ss.ss_family, AF_INET6);
  assert_int_equal(len, sizeof(struct sockaddr_in6));
  assert_true(IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr));
  assert_int_equal(ntohs(sin6->sin6_port), 4433);
  assert_addr(&ss, "[::]:4433");

  assert_int_equal(fy_udp_parse_addr("0.0.0.0:0", &ss, &len, &err), 0);
  assert_int_equal(ss.ss_family, AF_INET);
  assert_int_equal(len, sizeof(struct sockaddr_in));
  assert_addr(&ss, "0.0.0.0:0");

  assert_int_equal(fy_udp_parse_addr("127.0.0.1:65535", &ss, &len, &err), 0);
  assert_addr(&ss, "127.0.0.1:65535");
  assert_int_equal(fy_udp_parse_addr("[::1]:00080", &ss, &len, &err), 0);
  assert_addr(&ss, "[::1]:80");
  assert_int_equal(fy_udp_parse_addr("[::ffff:127.0.0.1]:1", &ss, &len, &err), 0);
  assert_addr(&ss, "[::ffff:127.0.0.1]:1");

  /* A link-local address names its interface; lo always exists. */
  assert_int_equal(fy_udp_parse_addr("[fe80::1%lo]:4433", &ss, &len, &err), 0);
  assert_int_equal(sin6->sin6_scope_id, if_nametoindex("lo"));
  assert_addr(&ss, "[fe80::1%lo]:4433");

  struct sockaddr_storage junk = {.ss_family = AF_UNIX};
  assert_addr(&junk, "?");
}

static void test_send_errors(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  struct sink s4 = {0}, s6 = {0};
  struct fy_udp v4, v6;
  open_ok(&v4, &loop, "127.0.0.1:0", &s4);
  open_ok(&v6, &loop, "[::1]:0", &s6);
  struct sockaddr_storage l4, l6;
  socklen_t l4_len, l6_len;
  local_of(&v4, &l4, &l4_len);
  local_of(&v6, &l6, &l6_len);
  struct fy_err err = {0};
  const struct sockaddr *to4 = (const struct sockaddr *)&l4;
  const struct sockaddr *to6 = (const struct sockaddr *)&l6;
  static uint8_t buf[70000];

  /* An IPv4 socket cannot reach ::1. */
  assert_int_equal(fy_udp_send(&v4, to6, l6_len, buf, 10, 0, 0, &err), FY_EINVAL);
  assert_contains(err.msg, "an IPv4 socket cannot reach an IPv6 address");
  char text[FY_UDP_ADDR_MAX];
  fy_udp_format_addr(to6, text);
  assert_contains(err.msg, text);

  assert_int_equal(fy_udp_send(&v4, to4, l4_len, buf, 10, 0, 4, &err), FY_EINVAL);
  assert_contains(err.msg, "ECN value 4");
  assert_int_equal(fy_udp_send(&v4, NULL, 0, buf, 10, 0, 0, &err), FY_EINVAL);
  assert_contains(err.msg, "no destination");
  assert_int_equal(fy_udp_send(&v4, to4, 4, buf, 10, 0, 0, &err), FY_EINVAL); /* short sockaddr */
  assert_int_equal(fy_udp_send(&v4, to4, l4_len, NULL, 10, 0, 0, &err), FY_EINVAL);
  assert_int_equal(fy_udp_send(&v4, to4, l4_len, buf, sizeof(buf), 70000, 0, &err), FY_ELIMIT);
  assert_contains(err.msg, "segment size 70000");

  /* A datagram above the UDP maximum. */
  assert_int_equal(fy_udp_send(&v4, to4, l4_len, buf, sizeof(buf), 0, 0, &err), FY_ELIMIT);
  assert_contains(err.msg, "70000-byte datagram is larger than the path takes");
  assert_int_equal(fy_udp_stats(&v4)->tx_errors, 1);

  /* An empty datagram is a datagram. */
  assert_int_equal(fy_udp_send(&v6, to6, l6_len, NULL, 0, 0, 0, &err), 0);
  run_until(&loop, &s6.count, 1, 2000);
  assert_int_equal(s6.count, 1);
  assert_int_equal(s6.kept[0].len, 0);

  /* fy_udp_send_some reports whole runs. */
  size_t sent = 99;
  assert_int_equal(fy_udp_send_some(&v6, to6, l6_len, buf, 3000, 1000, 0, &sent, &err), 0);
  assert_int_equal(sent, 3000);
  run_until(&loop, &s6.count, 4, 2000);
  assert_int_equal(s6.count, 4);

  close_all(&loop, (struct fy_udp *[]){&v4, &v6}, 2);
  /* After close: sending is refused, not a crash. */
  assert_int_equal(fy_udp_send(&v4, to4, l4_len, buf, 10, 0, 0, &err), FY_EINVAL);
  assert_contains(err.msg, "closed");
  struct sockaddr_storage ss;
  socklen_t len;
  assert_int_equal(fy_udp_local_addr(&v4, &ss, &len), FY_EINVAL);
}

/* Closing from inside the receive callback: no further callback for the
 * datagrams already read in that batch, and the close callback still runs. */
static void test_close_from_callback(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  struct sink sa = {0}, sb = {0};
  struct fy_udp a, b;
  open_ok(&a, &loop, "127.0.0.1:0", &sa);
  open_ok(&b, &loop, "127.0.0.1:0", &sb);
  struct sockaddr_storage lb;
  socklen_t lb_len;
  local_of(&b, &lb, &lb_len);
  for (int i = 0; i < 5; i++)
    send_ok(&a, &lb, lb_len, "x", 1, 0, 0);
  sb.close_me = &b;
  run_until(&loop, &sb.count, 1, 2000);
  run_a_while(&loop, 20);
  assert_int_equal(sb.count, 1);
  assert_true(b.closing);
  fy_udp_close(&b, on_closed); /* a second close is a no-op */
  close_all(&loop, (struct fy_udp *[]){&a}, 1);
}

/* The kernel grants buffers; report them so a run shows what it got. */
static void test_buffers_and_features(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  struct sink s = {0};
  struct fy_udp u;
  open_ok(&u, &loop, "[::1]:0", &s);
  print_message("SO_RCVBUF %d, SO_SNDBUF %d (asked %d), UDP_SEGMENT %s\n", u.rcvbuf, u.sndbuf,
                FY_UDP_BUF_WANT, u.gso ? "yes" : "no");
  assert_true(u.rcvbuf > 0);
  assert_true(u.sndbuf > 0);
  close_all(&loop, (struct fy_udp *[]){&u}, 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip_v4),
      cmocka_unit_test(test_round_trip_v6),
      cmocka_unit_test(test_ecn_v4),
      cmocka_unit_test(test_ecn_v6),
      cmocka_unit_test(test_gso_v4),
      cmocka_unit_test(test_gso_v6),
      cmocka_unit_test(test_gso_fallback),
      cmocka_unit_test(test_gso_long_run),
      cmocka_unit_test(test_batch_1000),
      cmocka_unit_test(test_truncated_dropped),
      cmocka_unit_test(test_dual_stack_from_v4),
      cmocka_unit_test(test_bad_addresses),
      cmocka_unit_test(test_good_addresses),
      cmocka_unit_test(test_send_errors),
      cmocka_unit_test(test_close_from_callback),
      cmocka_unit_test(test_buffers_and_features),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
