/* Micro-benchmark: 200k 1200-byte datagrams over loopback between two ferry
 * UDP sockets on one loop in one thread (the sender's cost and the receiver's
 * cost add up), GSO on unless --no-gso. The sender keeps at most WINDOW
 * datagrams in flight so the receive buffer never overflows; a datagram lost
 * anyway is counted and reported on stderr, not waited for.
 *
 * Prints JSON lines on stdout:
 *   {"name":"udp.loopback_pps","value":N,"unit":"datagrams/s","goal":null}
 *   {"name":"udp.loopback_throughput","value":N,"unit":"MB/s","goal":null}
 * Usage: bench_udp [--no-gso] [--v6] [count] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "net/udp.h"

#define DGRAM 1200
#define WINDOW 2048
#define RUN_MAX 54 /* datagrams per send call: one UDP_SEGMENT call of 64800 bytes */

struct counter {
  size_t count;
};

static void on_pkt(void *user, const struct fy_udp_pkt *pkt) {
  struct counter *c = user;
  if (pkt->len == DGRAM)
    c->count++;
}

static void on_closed(struct fy_udp *u) {
  (void)u;
}

int main(int argc, char **argv) {
  bool gso = true;
  const char *bind_addr = "127.0.0.1:0";
  size_t total = 200000;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--no-gso") == 0)
      gso = false;
    else if (strcmp(argv[i], "--v6") == 0)
      bind_addr = "[::1]:0";
    else
      total = strtoul(argv[i], NULL, 10);
  }
  if (total == 0) {
    fprintf(stderr, "usage: bench_udp [--no-gso] [--v6] [count]\n");
    return 2;
  }

  uv_loop_t loop;
  uv_loop_init(&loop);
  struct counter rx = {0}, unused = {0};
  struct fy_udp a, b;
  struct fy_err err = {0};
  if (fy_udp_open(&a, &loop, bind_addr, on_pkt, &unused, &err) != 0 ||
      fy_udp_open(&b, &loop, bind_addr, on_pkt, &rx, &err) != 0) {
    fprintf(stderr, "bench_udp: %s\n", err.msg);
    return 1;
  }
  if (!gso)
    a.gso = false;
  struct sockaddr_storage to;
  socklen_t to_len;
  fy_udp_local_addr(&b, &to, &to_len);

  static uint8_t buf[RUN_MAX * DGRAM];
  for (size_t i = 0; i < sizeof(buf); i++)
    buf[i] = (uint8_t)i;

  size_t sent = 0, lost = 0, eagain = 0, last_rx = 0;
  double start = bench_now_s(), last_progress = start;
  while (rx.count + lost < total && bench_now_s() - start < 60) {
    while (sent < total && sent - rx.count - lost < WINDOW) {
      size_t n = total - sent;
      size_t room = WINDOW - (sent - rx.count - lost);
      if (n > room)
        n = room;
      if (n > RUN_MAX)
        n = RUN_MAX;
      size_t done = 0;
      int rc =
          fy_udp_send_some(&a, (const struct sockaddr *)&to, to_len, buf, n * DGRAM, DGRAM, 0, &done, &err);
      sent += done / DGRAM;
      if (rc == FY_EAGAIN) {
        eagain++;
        break;
      }
      if (rc < 0) {
        fprintf(stderr, "bench_udp: %s\n", err.msg);
        return 1;
      }
    }
    uv_run(&loop, UV_RUN_NOWAIT);
    double t = bench_now_s();
    if (rx.count != last_rx) {
      last_rx = rx.count;
      last_progress = t;
    } else if (t - last_progress > 0.05) {
      lost = sent - rx.count; /* nothing moved for 50 ms: what is in flight is gone */
      last_progress = t;
    }
  }
  double elapsed = bench_now_s() - start;

  const struct fy_udp_stats *st = fy_udp_stats(&b);
  double pps = (double)rx.count / elapsed;
  double mbs = (double)rx.count * DGRAM / elapsed / 1e6;
  printf("{\"name\":\"udp.loopback_pps\",\"value\":%.0f,\"unit\":\"datagrams/s\",\"goal\":null}\n", pps);
  printf("{\"name\":\"udp.loopback_throughput\",\"value\":%.1f,\"unit\":\"MB/s\",\"goal\":null}\n", mbs);
  fprintf(stderr,
          "bench_udp: %s %s, %zu sent, %zu received, %zu lost, %zu EAGAIN, %.3f s, %llu send calls with "
          "UDP_SEGMENT, %llu receive wakeups (%llu hit the budget), SO_RCVBUF %d\n",
          bind_addr, a.gso ? "GSO" : "no GSO", sent, rx.count, lost, eagain, elapsed,
          (unsigned long long)fy_udp_stats(&a)->tx_gso_calls, (unsigned long long)st->rx_wakeups,
          (unsigned long long)st->rx_budget_hits, b.rcvbuf);

  fy_udp_close(&a, on_closed);
  fy_udp_close(&b, on_closed);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  return rx.count + lost == total && rx.count > 0 ? 0 : 1;
}
