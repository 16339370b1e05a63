/* Benchmark: outbox delivery end to end, over one loopback QUIC connection
 * between two processes (the structure of tests/test_delivery.c, split in
 * two the way tests/bench_transport.c splits server and client).
 *
 *  - the receiver is a forked process pinned to CPU 0: its own libuv loop,
 *    its own store (under /var/tmp, a real disk), an inbox whose handler
 *    checks that payloads arrive as 1, 2, 3, ... (one get and one put in the
 *    delivery's transaction), and the outbox.push intake;
 *  - the sender is this process, pinned to CPU 1: its own store with N
 *    messages of 256 bytes queued for the receiver BEFORE the clock starts
 *    (fy_outbox_enqueue_batch, 8192 a batch, one topic), a connection manager
 *    that has already dialled the receiver, and the delivery loop.
 *
 * outbox.e2e_msgs_per_sec is N over the time from fy_delivery_new until the
 * sender's outbox is empty: every message sent, durably applied by the
 * receiver (the inbox commit, fsync included), acknowledged, and deleted on
 * the sender (its own group commit). The sender checks for emptiness every
 * millisecond. Afterwards the receiver's watermark must be N.
 *
 * Both processes' threads (the receiver's thread pool that commits, the
 * sender's outbox committer) run on their process's CPU. stderr gets the CPU
 * use of each side during the timed part: a side near 100% is the limit;
 * if neither is, the time goes to waiting (disk, round trips).
 *
 * Bounded: the run gives up after DEADLINE_S (value null, exit 1); the
 * receiver exits by itself after RECEIVER_MAX_S or when this process dies.
 * Both data directories are removed at the end.
 *
 * Usage: bench_delivery [--quick] [--msgs N] [--window N] [--batch-max N]
 *   --quick      20,000 messages instead of 200,000 (CI smoke)
 *   --window     the delivery window (fy_delivery_config.window; 0: default)
 *   --batch-max  the receiver's messages per transaction (fy_intake.batch_max; 0: default)
 * FERRY_BENCH_DIR replaces /var/tmp. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "crypto/key.h"
#include "net/connmgr.h"
#include "net/quic.h"
#include "outbox/delivery.h"
#include "outbox/inbox.h"
#include "outbox/intake.h"
#include "outbox/outbox.h"
#include "rpc/rpc.h"
#include "store/store.h"

#define RECEIVER_CPU 0
#define SENDER_CPU 1
#define PAYLOAD 256
#define TOPIC "bench"
#define MSGS_FULL 200000
#define MSGS_QUICK 20000
#define ENQUEUE_CHUNK 8192
#define DEADLINE_S 120     /* the timed part gives up after this */
#define RECEIVER_MAX_S 300 /* a forgotten receiver exits by itself */
#define REPLY_TIMEOUT_MS 10000

static const struct fy_store_table_def app_tables[] = {{"bench.last", 0}};
static const struct fy_store_schema app_schema = {"bench", app_tables, 1, NULL, 0};

static struct fy_key rkey, skey; /* receiver, sender */
static uint64_t nmsgs = MSGS_FULL;
static size_t window_opt, batch_opt;
static char rdir[256], sdir[256];

static void remove_dirs(void) {
  if (rdir[0])
    nftw(rdir, bench_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  if (sdir[0])
    nftw(sdir, bench_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static bool in_receiver;
static pid_t receiver_pid;

/* In the sender: stops the receiver and removes both directories first. */
__attribute__((noreturn, format(printf, 1, 2))) static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "bench_delivery: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  if (in_receiver)
    _exit(1);
  if (receiver_pid > 0) {
    kill(receiver_pid, SIGKILL);
    waitpid(receiver_pid, NULL, 0);
  }
  remove_dirs();
  printf("{\"name\":\"outbox.e2e_msgs_per_sec\",\"value\":null,\"unit\":\"msgs/s\",\"goal\":50000}\n");
  exit(1);
}

static void make_dir(char *out, size_t cap, const char *name) {
  const char *base = getenv("FERRY_BENCH_DIR") ? getenv("FERRY_BENCH_DIR") : "/var/tmp";
  snprintf(out, cap, "%s/ferry-bench-e2e-%s-XXXXXX", base, name);
  if (!mkdtemp(out))
    die("mkdtemp %s: %s", out, strerror(errno));
}

/* ==== the receiver process ================================================= */

/* What the receiver says when asked ('S'), and when told to quit ('Q'). */
struct rcv_report {
  struct bench_cpu cpu;
  uint64_t mark;    /* its watermark for (sender, TOPIC) */
  uint64_t handled; /* handler runs (a transaction that runs again counts again) */
  uint64_t refused; /* payloads out of order */
};

static struct {
  int ctl, rep;
  struct fy_inbox *inbox;
  atomic_ullong handled, refused;
} R;

/* The application: payload's first 8 bytes must be the last one + 1. */
static int rcv_apply(struct fy_txn *t, const struct fy_nodeid *sender, const char *topic,
                     const struct fy_inbox_msg *m, void *user) {
  (void)sender;
  (void)topic;
  (void)user;
  atomic_fetch_add(&R.handled, 1);
  struct fy_table *tb = fy_txn_table(t, &app_tables[0]);
  struct fy_bytes v;
  uint64_t last = 0;
  if (fy_store_get(t, tb, fy_bytes_str("last"), &v) == 1 && v.n == 8)
    last = fy_be64_get(v.p);
  if (m->payload.n != PAYLOAD || fy_be64_get(m->payload.p) != last + 1) {
    atomic_fetch_add(&R.refused, 1);
    return fy_err_set(fy_txn_err(t), FY_EINVAL, "payload out of order after %llu", (unsigned long long)last);
  }
  uint8_t buf[8];
  fy_be64_put(buf, last + 1);
  return fy_store_put(t, tb, fy_bytes_str("last"), fy_bytes_of(buf, 8));
}

static void rcv_on_ctl(uv_poll_t *p, int status, int events) {
  (void)p;
  (void)events;
  char cmd = 0;
  if (status < 0 || read(R.ctl, &cmd, 1) != 1)
    _exit(0); /* the parent went away */
  struct rcv_report r = {
      .cpu = bench_cpu_now(), .handled = atomic_load(&R.handled), .refused = atomic_load(&R.refused)};
  struct fy_inbox_mark mark;
  struct fy_err err = {0};
  if (fy_inbox_watermark(R.inbox, &skey.id, TOPIC, &mark, &err) == 1)
    r.mark = mark.seq;
  if (write(R.rep, &r, sizeof(r)) != (ssize_t)sizeof(r))
    _exit(2);
  if (cmd == 'Q')
    _exit(0); /* everything is committed; the parent removes the directory */
}

static void rcv_on_too_long(uv_timer_t *t) {
  (void)t;
  fprintf(stderr, "bench_delivery: receiver: no quit after %d s, exiting\n", RECEIVER_MAX_S);
  _exit(3);
}

__attribute__((noreturn)) static void receiver_main(bool pinning) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (pinning)
    bench_pin_cpu("bench_delivery", RECEIVER_CPU); /* before the thread pool exists: its threads inherit it */
  uv_loop_t loop;
  uv_loop_init(&loop);
  struct fy_err err = {0};
  struct fy_store *store;
  const struct fy_store_schema *schemas[] = {&fy_inbox_schema, &app_schema};
  if (fy_store_open(&store, rdir, schemas, 2, NULL, &err) != 0)
    die("receiver: store: %s", err.msg);
  if (fy_inbox_open(&R.inbox, store, NULL, &err) != 0 ||
      fy_inbox_register(R.inbox, TOPIC, rcv_apply, NULL, &err) != 0)
    die("receiver: inbox: %s", err.msg);
  struct fy_intake intake = {.loop = &loop, .inbox = R.inbox, .batch_max = batch_opt};
  struct fy_rpc_method method = fy_intake_method(&intake);
  struct fy_rpc *rpc;
  struct fy_rpc_config rcfg = {.methods = &method, .nmethods = 1};
  if (fy_rpc_new(&rpc, &loop, &rcfg, &err) < 0)
    die("receiver: rpc: %s", err.msg);
  struct fy_quic_handler h = fy_rpc_quic_handler(rpc);
  struct fy_quic_config qcfg = {.key = &rkey,
                                .listen = "127.0.0.1:0",
                                .handlers = &h,
                                .nhandlers = 1,
                                .accept = true,
                                .retry_never = true};
  struct fy_quic *q;
  if (fy_quic_new(&q, &loop, &qcfg, &err) < 0)
    die("receiver: quic: %s", err.msg);
  struct sockaddr_storage addr;
  socklen_t len = sizeof(addr);
  fy_quic_local_addr(q, &addr, &len);
  if (write(R.rep, &len, sizeof(len)) != (ssize_t)sizeof(len) || write(R.rep, &addr, len) != (ssize_t)len)
    _exit(2);
  uv_poll_t ctl;
  uv_poll_init(&loop, &ctl, R.ctl);
  uv_poll_start(&ctl, UV_READABLE, rcv_on_ctl);
  uv_timer_t too_long;
  uv_timer_init(&loop, &too_long);
  uv_timer_start(&too_long, rcv_on_too_long, (uint64_t)RECEIVER_MAX_S * 1000, 0);
  uv_unref((uv_handle_t *)&too_long);
  uv_run(&loop, UV_RUN_DEFAULT);
  _exit(0);
}

struct receiver {
  pid_t pid;
  int ctl, rep;
  struct sockaddr_storage addr;
  socklen_t addr_len;
};

static void receiver_start(struct receiver *rc, bool pinning) {
  int ctl[2], rep[2];
  if (pipe2(ctl, O_CLOEXEC) != 0 || pipe2(rep, O_CLOEXEC) != 0)
    die("pipe: %s", strerror(errno));
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0)
    die("fork: %s", strerror(errno));
  if (pid == 0) {
    in_receiver = true;
    close(ctl[1]);
    close(rep[0]);
    R.ctl = ctl[0];
    R.rep = rep[1];
    receiver_main(pinning);
  }
  close(ctl[0]);
  close(rep[1]);
  rc->pid = pid;
  receiver_pid = pid;
  rc->ctl = ctl[1];
  rc->rep = rep[0];
  if (!bench_read_full(rc->rep, &rc->addr_len, sizeof(rc->addr_len), REPLY_TIMEOUT_MS) ||
      rc->addr_len > sizeof(rc->addr) || !bench_read_full(rc->rep, &rc->addr, rc->addr_len, REPLY_TIMEOUT_MS))
    die("the receiver did not start");
}

static bool receiver_ask(struct receiver *rc, char cmd, struct rcv_report *r) {
  return write(rc->ctl, &cmd, 1) == 1 && bench_read_full(rc->rep, r, sizeof(*r), REPLY_TIMEOUT_MS);
}

static void receiver_stop(struct receiver *rc) {
  struct rcv_report unused;
  receiver_ask(rc, 'Q', &unused);
  close(rc->ctl);
  close(rc->rep);
  for (int i = 0; i < 200; i++) { /* 2 s, then kill it */
    if (waitpid(rc->pid, NULL, WNOHANG) == rc->pid) {
      receiver_pid = 0;
      return;
    }
    usleep(10000);
  }
  kill(rc->pid, SIGKILL);
  waitpid(rc->pid, NULL, 0);
  receiver_pid = 0;
}

/* ==== the sender (this process) ============================================ */

static struct {
  uv_loop_t loop;
  uv_timer_t deadline, poll;
  bool timed_out, connected, drained;
  double drained_at;
  struct receiver *rc;
  struct fy_store *store;
  struct fy_outbox *outbox;
  struct fy_rpc *rpc;
  struct fy_quic *quic;
  struct fy_connmgr *cm;
  struct fy_delivery *dl;
  int closing;
} S;

static size_t snd_resolve(const struct fy_nodeid *dest, struct sockaddr_storage *addrs, size_t cap,
                          void *user) {
  (void)dest;
  (void)user;
  if (cap == 0)
    return 0;
  memcpy(&addrs[0], &S.rc->addr, S.rc->addr_len);
  return 1;
}

static uint64_t snd_pending(void) {
  struct fy_outbox_queue_stats qs[4];
  struct fy_err err = {0};
  int n = fy_outbox_queues(S.outbox, NULL, qs, 4, &err);
  if (n < 0)
    die("sender: queues: %s", err.msg);
  uint64_t total = 0;
  for (int i = 0; i < n && i < 4; i++)
    total += qs[i].pending;
  return total;
}

static void snd_enqueue_all(void) {
  struct fy_outbox_item *items = calloc(ENQUEUE_CHUNK, sizeof(*items));
  uint8_t *bufs = calloc(ENQUEUE_CHUNK, PAYLOAD);
  if (!items || !bufs)
    die("sender: out of memory");
  struct fy_err err = {0};
  for (uint64_t from = 1; from <= nmsgs; from += ENQUEUE_CHUNK) {
    size_t n = nmsgs - from + 1 < ENQUEUE_CHUNK ? (size_t)(nmsgs - from + 1) : ENQUEUE_CHUNK;
    for (size_t i = 0; i < n; i++) {
      uint8_t *p = bufs + i * PAYLOAD;
      memset(p, 'a' + (int)(i % 26), PAYLOAD);
      fy_be64_put(p, from + i);
      items[i] = (struct fy_outbox_item){.dest = rkey.id, .topic = TOPIC, .payload = fy_bytes_of(p, PAYLOAD)};
    }
    if (fy_outbox_enqueue_batch(S.outbox, items, n, NULL, &err) != 0)
      die("sender: enqueue: %s", err.msg);
  }
  free(items);
  free(bufs);
}

static void on_deadline(uv_timer_t *t) {
  (void)t;
  S.timed_out = true;
}

static void on_poll(uv_timer_t *t) {
  if (snd_pending() == 0) {
    S.drained_at = bench_now_s();
    S.drained = true;
    uv_timer_stop(t);
  }
}

static void on_connected(struct fy_qconn *c, const struct fy_qclose *failure, void *user) {
  (void)c;
  (void)user;
  if (failure)
    die("sender: cannot reach the receiver: %s", failure->msg);
  S.connected = true;
}

static bool run_until(const bool *flag, double seconds) {
  S.timed_out = false;
  uv_timer_start(&S.deadline, on_deadline, (uint64_t)(seconds * 1000), 0);
  while (!*flag && !S.timed_out)
    uv_run(&S.loop, UV_RUN_ONCE);
  uv_timer_stop(&S.deadline);
  return *flag;
}

static void closed_one(void *user) {
  (void)user;
  S.closing--;
}

static void wait_closed(void) {
  while (S.closing > 0)
    uv_run(&S.loop, UV_RUN_ONCE);
}

static void sender_open(void) {
  struct fy_err err = {0};
  uv_loop_init(&S.loop);
  uv_timer_init(&S.loop, &S.deadline);
  uv_timer_init(&S.loop, &S.poll);
  const struct fy_store_schema *schemas[] = {&fy_outbox_schema};
  if (fy_store_open(&S.store, sdir, schemas, 1, NULL, &err) != 0)
    die("sender: store: %s", err.msg);
  struct fy_outbox_config ocfg = {.loop = &S.loop};
  if (fy_outbox_open(&S.outbox, S.store, &ocfg, &err) != 0)
    die("sender: outbox: %s", err.msg);
  struct fy_rpc_config rcfg = {0};
  if (fy_rpc_new(&S.rpc, &S.loop, &rcfg, &err) < 0)
    die("sender: rpc: %s", err.msg);
  struct fy_quic_handler h = fy_rpc_quic_handler(S.rpc);
  struct fy_quic_config qcfg = {.key = &skey, .listen = "127.0.0.1:0", .handlers = &h, .nhandlers = 1};
  if (fy_quic_new(&S.quic, &S.loop, &qcfg, &err) < 0)
    die("sender: quic: %s", err.msg);
  struct fy_connmgr_config ccfg = {0};
  if (fy_connmgr_new(&S.cm, &S.loop, S.quic, S.rpc, &ccfg, &err) < 0)
    die("sender: connmgr: %s", err.msg);
}

static void sender_close(void) {
  if (S.dl) {
    S.closing = 1;
    fy_delivery_close(S.dl, closed_one, NULL);
    wait_closed();
  }
  S.closing = 1;
  fy_connmgr_close(S.cm, closed_one, NULL);
  wait_closed();
  S.closing = 1;
  fy_quic_shutdown(S.quic, closed_one, NULL);
  wait_closed();
  S.closing = 1;
  fy_outbox_close(S.outbox, closed_one, NULL);
  wait_closed();
  fy_rpc_free(S.rpc);
  fy_store_close(S.store);
  uv_close((uv_handle_t *)&S.deadline, NULL);
  uv_close((uv_handle_t *)&S.poll, NULL);
  uv_run(&S.loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&S.loop) != 0)
    fprintf(stderr, "bench_delivery: sender: the loop still has handles\n");
}

/* Returns messages per second, or -1 when the run failed. */
static double bench_e2e(bool pinning) {
  struct receiver rc;
  receiver_start(&rc, pinning);
  S.rc = &rc;
  sender_open();

  double t0 = bench_now_s();
  snd_enqueue_all();
  double enq = bench_now_s() - t0;
  fprintf(stderr, "bench_delivery: queued %" PRIu64 " messages of %d bytes in %.2f s (before the clock)\n",
          nmsgs, PAYLOAD, enq);

  /* The connection is up before the clock starts. */
  struct fy_err err = {0};
  if (fy_connmgr_get(S.cm, &rkey.id, &rc.addr, 1, NULL, 0, on_connected, NULL, &err) < 0)
    die("sender: connmgr_get: %s", err.msg);
  if (!run_until(&S.connected, 10))
    die("sender: no connection to the receiver after 10 s");

  struct fy_outbox_counters oc0, oc1;
  fy_outbox_counters(S.outbox, &oc0);
  struct rcv_report r0, r1;
  if (!receiver_ask(&rc, 'S', &r0))
    die("the receiver does not answer");
  struct bench_cpu c0 = bench_cpu_now();
  double start = bench_now_s();
  struct fy_delivery_config dcfg = {
      .outbox = S.outbox, .connmgr = S.cm, .rpc = S.rpc, .resolve = snd_resolve, .window = window_opt};
  if (fy_delivery_new(&S.dl, &S.loop, &dcfg, &err) < 0)
    die("sender: delivery: %s", err.msg);
  uv_timer_start(&S.poll, on_poll, 1, 1);
  bool ok = run_until(&S.drained, DEADLINE_S);
  double elapsed = (ok ? S.drained_at : bench_now_s()) - start;
  struct bench_cpu c1 = bench_cpu_now();
  fy_outbox_counters(S.outbox, &oc1);
  if (!receiver_ask(&rc, 'S', &r1))
    die("the receiver does not answer");

  struct fy_delivery_stats ds;
  fy_delivery_get_stats(S.dl, &ds);
  uint64_t acks = oc1.requests - oc0.requests; /* one ack request per acknowledgement received */
  double rcv_cpu = (r1.cpu.user + r1.cpu.sys) - (r0.cpu.user + r0.cpu.sys);
  double snd_cpu = (c1.user + c1.sys) - (c0.user + c0.sys);
  fprintf(stderr,
          "bench_delivery: %s in %.3f s: sent %" PRIu64 ", acked %" PRIu64 ", refusals %" PRIu64
          ", lanes %" PRIu64 "; receiver watermark %" PRIu64 ", handler runs %" PRIu64 "\n",
          ok ? "drained" : "NOT drained", elapsed, ds.sent, ds.acked, ds.refusals, ds.lanes_started, r1.mark,
          r1.handled - r0.handled);
  fprintf(stderr,
          "bench_delivery: %" PRIu64
          " acknowledgements (about one per receiver commit), %.1f messages each; sender: %" PRIu64
          " delete commits\n",
          acks, acks ? (double)nmsgs / (double)acks : 0.0, oc1.commits - oc0.commits);
  fprintf(
      stderr,
      "bench_delivery: CPU: receiver %.0f%% (user %.2f s, sys %.2f s), sender %.0f%% (user %.2f s, sys %.2f "
      "s)\n",
      100 * rcv_cpu / elapsed, r1.cpu.user - r0.cpu.user, r1.cpu.sys - r0.cpu.sys, 100 * snd_cpu / elapsed,
      c1.user - c0.user, c1.sys - c0.sys);

  sender_close();
  receiver_stop(&rc);
  if (!ok) {
    fprintf(stderr, "bench_delivery: %" PRIu64 " messages still queued after %d s\n", nmsgs - r1.mark,
            DEADLINE_S);
    return -1;
  }
  if (r1.mark != nmsgs || r1.refused != 0) {
    fprintf(stderr,
            "bench_delivery: the receiver applied up to %" PRIu64 " of %" PRIu64 " (%" PRIu64 " refused)\n",
            r1.mark, nmsgs, r1.refused);
    return -1;
  }
  return (double)nmsgs / elapsed;
}

int main(int argc, char **argv) {
  bool quick = false;
  bool msgs_given = false;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else if (strcmp(argv[i], "--msgs") == 0 && i + 1 < argc) {
      nmsgs = strtoull(argv[++i], NULL, 10);
      msgs_given = true;
    } else if (strcmp(argv[i], "--window") == 0 && i + 1 < argc) {
      window_opt = (size_t)strtoull(argv[++i], NULL, 10);
    } else if (strcmp(argv[i], "--batch-max") == 0 && i + 1 < argc) {
      batch_opt = (size_t)strtoull(argv[++i], NULL, 10);
    } else {
      fprintf(stderr, "usage: bench_delivery [--quick] [--msgs N] [--window N] [--batch-max N]\n");
      return 2;
    }
  }
  if (quick && !msgs_given)
    nmsgs = MSGS_QUICK;
  if (nmsgs == 0) {
    fprintf(stderr, "bench_delivery: --msgs must be at least 1\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  struct fy_err err = {0};
  if (fy_crypto_init(&err) < 0 || fy_key_generate(&rkey, &err) < 0 || fy_key_generate(&skey, &err) < 0)
    die("keys: %s", err.msg);
  bool pinning = bench_has_cpus(RECEIVER_CPU, SENDER_CPU);
  if (pinning)
    bench_pin_cpu("bench_delivery", SENDER_CPU);
  else
    fprintf(stderr, "bench_delivery: CPUs %d and %d are not both available: not pinning\n", RECEIVER_CPU,
            SENDER_CPU);
  make_dir(rdir, sizeof(rdir), "recv");
  make_dir(sdir, sizeof(sdir), "send");
  double rate = bench_e2e(pinning);
  remove_dirs();
  fy_key_free(&rkey);
  fy_key_free(&skey);
  if (rate < 0) {
    printf("{\"name\":\"outbox.e2e_msgs_per_sec\",\"value\":null,\"unit\":\"msgs/s\",\"goal\":50000}\n");
    return 1;
  }
  printf("{\"name\":\"outbox.e2e_msgs_per_sec\",\"value\":%.0f,\"unit\":\"msgs/s\",\"goal\":50000}\n", rate);
  return 0;
}
