/* One side of the crash loop (tests/crashloop.sh): a sender or a receiver
 * process that the driver kills with SIGKILL at random points and starts
 * again, on the same data directory, over and over.
 *
 *   crashpeer recv DIR ADDR_FILE [PORT]   serve outbox.push until killed
 *   crashpeer send DIR PEER_ADDR_FILE TOTAL
 *   crashpeer check DIR TOTAL             after the run, on the receiver's DIR
 *
 * Identities survive restarts: DIR/node.key is made on the first start and
 * loaded afterwards. The receiver binds 127.0.0.1:PORT (a fixed port, so its
 * address survives its restarts) and then writes "<hex node id> <port>" to
 * ADDR_FILE (tmp + rename); the sender reads it.
 *
 * The sender enqueues TOTAL messages on each of the topics "crash" and
 * "crash2" to the receiver, in small batches. The payload of the n-th
 * message of a topic is n (8 bytes, big-endian); the count enqueued so far is
 * kept in an application table updated in the SAME transaction as the
 * enqueue (fy_outbox_enqueue_txn), so after a kill it resumes exactly where
 * the last commit left it. It exits 0 once all is enqueued and its outbox is
 * empty (everything acknowledged).
 *
 * The receiver's handlers check, inside the inbox transaction, that each
 * payload is the last applied one + 1 (and equals the message's sequence
 * number) and that it was never logged before; then they log it. A
 * violation is printed and the process exits 3 at once: nothing of that
 * transaction commits, and the driver sees a status other than SIGKILL's.
 *
 * `check` reads the receiver's log and prints, per topic, how many messages
 * arrived, how many of 1..TOTAL are missing and how many were applied twice;
 * exit 0 when none is missing or duplicated. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "base/log.h"
#include "crypto/key.h"
#include "net/connmgr.h"
#include "net/quic.h"
#include "outbox/delivery.h"
#include "outbox/inbox.h"
#include "outbox/intake.h"
#include "outbox/outbox.h"
#include "rpc/rpc.h"
#include "store/store.h"

#define NTOPICS 2
#define BATCH_MAX 50
static const char *const topics[NTOPICS] = {"crash", "crash2"};

/* The application's tables (one schema for both roles).
 *   crash.next   tlen topic          -> messages enqueued so far (be64)   sender
 *   crash.last   sender tlen topic   -> last payload applied (be64)       receiver
 *   crash.log    tlen topic be64(n)  -> empty, one per applied payload    receiver
 *   crash.count  tlen topic          -> applications in all (be64)        receiver */
enum { T_NEXT, T_LAST, T_LOG, T_COUNT, T_NTABLES };
static const struct fy_store_table_def app_tables[T_NTABLES] = {
    [T_NEXT] = {"crash.next", 0},
    [T_LAST] = {"crash.last", 0},
    [T_LOG] = {"crash.log", 0},
    [T_COUNT] = {"crash.count", 0},
};
static const struct fy_store_schema app_schema = {"crashpeer", app_tables, T_NTABLES, NULL, 0};

static struct fy_log logger;

static void die(const char *what, const struct fy_err *err) {
  fprintf(stderr, "crashpeer[%d]: %s: %s\n", (int)getpid(), what, err ? err->msg : strerror(errno));
  exit(1);
}

static void sleep_ms(unsigned ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

/* tlen topic, the prefix of the per-topic keys. */
static size_t topic_key(uint8_t *out, const char *topic) {
  size_t n = strlen(topic);
  out[0] = (uint8_t)n;
  // NOLINTNEXTLINE(bugprone-not-null-terminated-result): a length-prefixed key, not a C string
  memcpy(out + 1, topic, n);
  return 1 + n;
}

static int get_u64(struct fy_txn *t, int table, struct fy_bytes key, uint64_t *out) {
  struct fy_bytes v;
  int rc = fy_store_get(t, fy_txn_table(t, &app_tables[table]), key, &v);
  if (rc < 0)
    return rc;
  *out = 0;
  if (rc == 1) {
    if (v.n != 8)
      return fy_err_set(fy_txn_err(t), FY_EIO, "%s: a value of %zu bytes", app_tables[table].name, v.n);
    *out = fy_be64_get(v.p);
  }
  return 0;
}

static int put_u64(struct fy_txn *t, int table, struct fy_bytes key, uint64_t value) {
  uint8_t buf[8];
  fy_be64_put(buf, value);
  return fy_store_put(t, fy_txn_table(t, &app_tables[table]), key, fy_bytes_of(buf, 8));
}

/* DIR/node.key: made once (tmp + rename, so a kill never leaves half a key),
 * loaded on every later start. */
static void load_key(const char *dir, struct fy_key *key) {
  struct fy_err err = {0};
  char path[4096], tmp[4200];
  snprintf(path, sizeof(path), "%s/node.key", dir);
  if (fy_key_load(key, path, &err) == 0)
    return;
  if (err.code != FY_ENOENT)
    die("node key", &err);
  snprintf(tmp, sizeof(tmp), "%s.tmp", path);
  unlink(tmp);
  if (fy_key_generate(key, &err) != 0 || fy_key_save(key, tmp, &err) != 0)
    die("node key", &err);
  if (rename(tmp, path) != 0)
    die("rename node key", NULL);
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
}

static struct fy_store *open_store(const char *dir) {
  struct fy_err err = {0};
  const struct fy_store_schema *schemas[] = {&fy_outbox_schema, &fy_inbox_schema, &app_schema};
  struct fy_store *s = NULL;
  if (fy_store_open(&s, dir, schemas, 3, &(struct fy_store_opts){.log = &logger}, &err) != 0)
    die("store", &err);
  return s;
}

/* Binds, retrying a little while the port is still taken (a predecessor
 * that has not quite gone). */
static struct fy_quic *open_quic(uv_loop_t *loop, const struct fy_quic_config *cfg) {
  struct fy_err err = {0};
  struct fy_quic *q = NULL;
  for (int i = 0; i < 100; i++) {
    if (fy_quic_new(&q, loop, cfg, &err) == 0)
      return q;
    uv_run(loop, UV_RUN_NOWAIT);
    sleep_ms(50);
  }
  die("quic", &err);
  return NULL;
}

/* ---- receiver ------------------------------------------------------------------ */

static _Noreturn void violation(const char *topic, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static _Noreturn void violation(const char *topic, const char *fmt, ...) {
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  fprintf(stderr, "crashpeer recv: VIOLATION on topic %s: %s\n", topic, msg);
  fflush(stderr);
  _exit(3);
}

static int apply(struct fy_txn *t, const struct fy_nodeid *sender, const char *topic,
                 const struct fy_inbox_msg *m, void *user) {
  (void)user;
  uint8_t key[FY_NODEID_LEN + 1 + FY_OUTBOX_TOPIC_MAX + 8];
  memcpy(key, sender->key, FY_NODEID_LEN);
  size_t tn = topic_key(key + FY_NODEID_LEN, topic);
  struct fy_bytes last_key = fy_bytes_of(key, FY_NODEID_LEN + tn);
  uint64_t last, count;
  int rc = get_u64(t, T_LAST, last_key, &last);
  if (rc < 0)
    return rc;
  if (m->payload.n != 8)
    violation(topic, "a payload of %zu bytes (seq %" PRIu64 ")", m->payload.n, m->seq);
  uint64_t n = fy_be64_get(m->payload.p);
  if (n != last + 1)
    violation(topic, "payload %" PRIu64 " applied after %" PRIu64, n, last);
  if (n != m->seq)
    violation(topic, "payload %" PRIu64 " came as sequence number %" PRIu64, n, m->seq);
  /* The log key: tlen topic be64(n), after the sender id in key. */
  uint8_t *lk = key + FY_NODEID_LEN;
  fy_be64_put(lk + tn, n);
  struct fy_table *log = fy_txn_table(t, &app_tables[T_LOG]);
  struct fy_bytes v;
  if ((rc = fy_store_get(t, log, fy_bytes_of(lk, tn + 8), &v)) < 0)
    return rc;
  if (rc == 1)
    violation(topic, "payload %" PRIu64 " applied twice (last %" PRIu64 ")", n, last);
  if ((rc = fy_store_put(t, log, fy_bytes_of(lk, tn + 8), fy_bytes_of(NULL, 0))) < 0 ||
      (rc = put_u64(t, T_LAST, last_key, n)) < 0 ||
      (rc = get_u64(t, T_COUNT, fy_bytes_of(lk, tn), &count)) < 0)
    return rc;
  return put_u64(t, T_COUNT, fy_bytes_of(lk, tn), count + 1);
}

static void write_addr_file(const char *path, const struct fy_nodeid *id, unsigned port) {
  char hex[FY_NODEID_HEX_LEN + 1], tmp[4200];
  fy_nodeid_to_hex(id, hex);
  snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid());
  FILE *f = fopen(tmp, "w");
  if (!f)
    die(tmp, NULL);
  fprintf(f, "%s %u\n", hex, port);
  if (fflush(f) != 0 || fsync(fileno(f)) != 0 || fclose(f) != 0)
    die(tmp, NULL);
  if (rename(tmp, path) != 0)
    die("rename address file", NULL);
}

static int run_recv(const char *dir, const char *addr_file, unsigned port) {
  struct fy_err err = {0};
  struct fy_key key = {0};
  load_key(dir, &key);
  struct fy_store *store = open_store(dir);
  uv_loop_t loop;
  uv_loop_init(&loop);
  struct fy_inbox *inbox;
  if (fy_inbox_open(&inbox, store, &logger, &err) != 0)
    die("inbox", &err);
  for (int i = 0; i < NTOPICS; i++)
    if (fy_inbox_register(inbox, topics[i], apply, NULL, &err) != 0)
      die("inbox", &err);
  struct fy_intake intake = {.loop = &loop, .inbox = inbox, .log = &logger};
  struct fy_rpc_method method = fy_intake_method(&intake);
  struct fy_rpc *rpc;
  if (fy_rpc_new(&rpc, &loop, &(struct fy_rpc_config){.methods = &method, .nmethods = 1}, &err) != 0)
    die("rpc", &err);
  struct fy_quic_handler h = fy_rpc_quic_handler(rpc);
  char listen[64];
  snprintf(listen, sizeof(listen), "127.0.0.1:%u", port);
  struct fy_quic_config qcfg = {.key = &key,
                                .listen = listen,
                                .handlers = &h,
                                .nhandlers = 1,
                                .accept = true,
                                .retry_never = true,
                                .handshake_timeout_ms = 1000,
                                .log = &logger};
  struct fy_quic *quic = open_quic(&loop, &qcfg);
  struct sockaddr_storage local;
  socklen_t len = sizeof(local);
  if (fy_quic_local_addr(quic, &local, &len) != 0 || local.ss_family != AF_INET)
    die("local address", NULL);
  write_addr_file(addr_file, &key.id, ntohs(((struct sockaddr_in *)&local)->sin_port));
  fy_info(&logger, "crashpeer.recv_ready", "port", listen);
  uv_run(&loop, UV_RUN_DEFAULT); /* until SIGKILL */
  return 1;
}

/* ---- sender ----------------------------------------------------------------------- */

struct sender {
  uv_loop_t loop;
  struct fy_key key;
  struct fy_nodeid peer;
  struct sockaddr_in peer_addr;
  uint64_t total;
  struct fy_store *store;
  struct fy_outbox *outbox;
  struct fy_rpc *rpc;
  struct fy_quic *quic;
  struct fy_connmgr *cm;
  struct fy_delivery *dl;
  uv_async_t kick;
  uv_timer_t check;
  pthread_t producer;
  atomic_bool produced; /* every topic has TOTAL enqueued */
  atomic_int producer_failed;
  struct fy_err producer_err;
  uint64_t resumed[NTOPICS]; /* counts found at start, for the log */
};

static void read_peer(struct sender *s, const char *path) {
  char hex[FY_NODEID_HEX_LEN + 1];
  unsigned port = 0;
  for (int i = 0;; i++) {
    FILE *f = fopen(path, "r");
    if (f) {
      int n = fscanf(f, "%64s %u", hex, &port);
      fclose(f);
      if (n == 2)
        break;
    }
    if (i > 600)
      die(path, NULL);
    sleep_ms(100);
  }
  struct fy_err err = {0};
  if (fy_nodeid_parse(hex, &s->peer, &err) != 0)
    die(path, &err);
  s->peer_addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  s->peer_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
}

static size_t resolve(const struct fy_nodeid *dest, struct sockaddr_storage *addrs, size_t cap, void *user) {
  struct sender *s = user;
  if (cap == 0 || !fy_nodeid_equal(dest, &s->peer))
    return 0;
  memset(&addrs[0], 0, sizeof(addrs[0]));
  memcpy(&addrs[0], &s->peer_addr, sizeof(s->peer_addr));
  return 1;
}

/* One enqueue transaction: count[i] more messages on topics[i]. */
struct produce {
  struct sender *s;
  uint64_t count[NTOPICS];
  uint64_t start[NTOPICS]; /* out: enqueued before this transaction */
  uint64_t done[NTOPICS];  /* out: enqueued so far, after this transaction */
  struct fy_outbox_item items[BATCH_MAX];
  uint8_t payloads[BATCH_MAX][8];
};

static int produce_body(struct fy_txn *t, void *user) {
  struct produce *p = user;
  for (int i = 0; i < NTOPICS; i++) {
    uint8_t key[1 + FY_OUTBOX_TOPIC_MAX];
    struct fy_bytes k = fy_bytes_of(key, topic_key(key, topics[i]));
    uint64_t next;
    int rc = get_u64(t, T_NEXT, k, &next);
    if (rc < 0)
      return rc;
    uint64_t n = p->count[i];
    if (n > p->s->total - next)
      n = p->s->total - next;
    for (uint64_t j = 0; j < n; j++) {
      fy_be64_put(p->payloads[j], next + 1 + j);
      p->items[j] = (struct fy_outbox_item){
          .dest = p->s->peer, .topic = topics[i], .payload = fy_bytes_of(p->payloads[j], 8)};
    }
    if (n && (rc = fy_outbox_enqueue_txn(p->s->outbox, t, p->items, (size_t)n, NULL)) < 0)
      return rc;
    if ((rc = put_u64(t, T_NEXT, k, next + n)) < 0)
      return rc;
    p->start[i] = next;
    p->done[i] = next + n;
  }
  return 0;
}

static void *producer(void *arg) {
  struct sender *s = arg;
  struct produce *p = calloc(1, sizeof(*p));
  if (!p) {
    atomic_store(&s->producer_failed, 1);
    return NULL;
  }
  p->s = s;
  for (int round = 0;; round++) {
    /* One topic or both, 1..BATCH_MAX messages each. */
    uint32_t which = randombytes_uniform(3);
    for (int i = 0; i < NTOPICS; i++)
      p->count[i] = which == 2 || which == (uint32_t)i ? 1 + randombytes_uniform(BATCH_MAX) : 0;
    if (fy_store_write(s->store, produce_body, p, &s->producer_err) < 0) {
      atomic_store(&s->producer_failed, 1);
      break;
    }
    if (round == 0)
      for (int i = 0; i < NTOPICS; i++)
        s->resumed[i] = p->start[i];
    uv_async_send(&s->kick);
    bool all = true;
    for (int i = 0; i < NTOPICS; i++)
      all = all && p->done[i] >= s->total;
    if (all)
      break;
    sleep_ms(randombytes_uniform(40));
  }
  free(p);
  atomic_store(&s->produced, true);
  uv_async_send(&s->kick);
  return NULL;
}

static void on_kick(uv_async_t *a) {
  struct sender *s = a->data;
  if (s->dl)
    fy_delivery_kick(s->dl);
}

static uint64_t pending(struct sender *s) {
  struct fy_outbox_queue_stats qs[8];
  struct fy_err err = {0};
  int n = fy_outbox_queues(s->outbox, NULL, qs, 8, &err);
  if (n < 0)
    die("outbox queues", &err);
  uint64_t total = 0;
  for (int i = 0; i < n && i < 8; i++)
    total += qs[i].pending;
  return total;
}

static void on_check(uv_timer_t *t) {
  struct sender *s = t->data;
  if (atomic_load(&s->producer_failed))
    die("enqueue", &s->producer_err);
  if (atomic_load(&s->produced) && pending(s) == 0)
    uv_stop(&s->loop);
}

static int closing;
static void closed_one(void *user) {
  (void)user;
  closing--;
}
static void wait_closed(uv_loop_t *loop) {
  while (closing > 0)
    uv_run(loop, UV_RUN_ONCE);
}

static int run_send(const char *dir, const char *peer_file, uint64_t total) {
  struct fy_err err = {0};
  struct sender *s = calloc(1, sizeof(*s));
  if (!s)
    die("out of memory", NULL);
  s->total = total;
  load_key(dir, &s->key);
  read_peer(s, peer_file);
  uv_loop_init(&s->loop);
  s->store = open_store(dir);
  struct fy_outbox_config ocfg = {
      .loop = &s->loop, .backoff_min_ms = 20, .backoff_max_ms = 500, .log = &logger};
  if (fy_outbox_open(&s->outbox, s->store, &ocfg, &err) != 0)
    die("outbox", &err);
  if (fy_rpc_new(&s->rpc, &s->loop, &(struct fy_rpc_config){0}, &err) != 0)
    die("rpc", &err);
  struct fy_quic_handler h = fy_rpc_quic_handler(s->rpc);
  struct fy_quic_config qcfg = {.key = &s->key,
                                .listen = "127.0.0.1:0",
                                .handlers = &h,
                                .nhandlers = 1,
                                .retry_never = true,
                                /* Probes a receiver that died while we only wait for its
                                 * acks: its successor answers with a stateless reset. */
                                .keepalive_ms = 1000,
                                .handshake_timeout_ms = 1000,
                                .log = &logger};
  s->quic = open_quic(&s->loop, &qcfg);
  struct fy_connmgr_config ccfg = {.backoff_min_ms = 20, .backoff_max_ms = 500, .log = &logger};
  if (fy_connmgr_new(&s->cm, &s->loop, s->quic, s->rpc, &ccfg, &err) != 0)
    die("connmgr", &err);
  struct fy_delivery_config dcfg = {.outbox = s->outbox,
                                    .connmgr = s->cm,
                                    .rpc = s->rpc,
                                    .resolve = resolve,
                                    .resolve_user = s,
                                    .scan_ms = 50,
                                    .log = &logger};
  if (fy_delivery_new(&s->dl, &s->loop, &dcfg, &err) != 0)
    die("delivery", &err);
  uv_async_init(&s->loop, &s->kick, on_kick);
  s->kick.data = s;
  uv_timer_init(&s->loop, &s->check);
  s->check.data = s;
  uv_timer_start(&s->check, on_check, 20, 20);
  if (pthread_create(&s->producer, NULL, producer, s) != 0)
    die("producer thread", NULL);

  uv_run(&s->loop, UV_RUN_DEFAULT); /* until on_check saw everything acknowledged */

  pthread_join(s->producer, NULL);
  struct fy_delivery_stats ds;
  fy_delivery_get_stats(s->dl, &ds);
  printf("crashpeer send: done: %" PRIu64 " per topic acknowledged (this run: resumed at %" PRIu64 "/%" PRIu64
         ", sent %" PRIu64 ", acked %" PRIu64 ", refusals %" PRIu64 ")\n",
         total, s->resumed[0], s->resumed[1], ds.sent, ds.acked, ds.refusals);
  fflush(stdout);
  /* Close in order, as a node would. */
  closing = 1;
  fy_delivery_close(s->dl, closed_one, NULL);
  wait_closed(&s->loop);
  closing = 1;
  fy_connmgr_close(s->cm, closed_one, NULL);
  wait_closed(&s->loop);
  closing = 1;
  fy_quic_shutdown(s->quic, closed_one, NULL);
  wait_closed(&s->loop);
  for (int i = 0; i < 100; i++)
    uv_run(&s->loop, UV_RUN_NOWAIT);
  closing = 1;
  fy_outbox_close(s->outbox, closed_one, NULL);
  wait_closed(&s->loop);
  uv_close((uv_handle_t *)&s->kick, NULL);
  uv_close((uv_handle_t *)&s->check, NULL);
  uv_run(&s->loop, UV_RUN_DEFAULT);
  fy_rpc_free(s->rpc);
  fy_store_close(s->store);
  int rc = uv_loop_close(&s->loop);
  fy_key_free(&s->key);
  free(s);
  return rc == 0 ? 0 : 1;
}

/* ---- check ------------------------------------------------------------------------- */

struct check {
  uint64_t total;
  int bad;
};

static int check_body(struct fy_txn *t, void *user) {
  struct check *c = user;
  struct fy_table *log = fy_txn_table(t, &app_tables[T_LOG]);
  for (int i = 0; i < NTOPICS; i++) {
    uint8_t key[1 + FY_OUTBOX_TOPIC_MAX];
    size_t kn = topic_key(key, topics[i]);
    struct fy_cursor *cur;
    int rc = fy_cursor_open(t, log, fy_bytes_of(key, kn), &cur);
    if (rc < 0)
      return rc;
    struct fy_bytes k;
    uint64_t distinct = 0, in_range = 0, stray = 0, applications;
    while ((rc = fy_cursor_next(cur, &k, NULL)) == 1) {
      if (k.n != kn + 8)
        continue;
      uint64_t n = fy_be64_get(k.p + kn);
      distinct++;
      if (n >= 1 && n <= c->total)
        in_range++;
      else
        stray++;
    }
    fy_cursor_close(cur);
    if (rc < 0 || (rc = get_u64(t, T_COUNT, fy_bytes_of(key, kn), &applications)) < 0)
      return rc;
    /* The handler refuses a second application, so these are 0 unless it was bypassed. */
    uint64_t lost = c->total - in_range, duplicated = applications > distinct ? applications - distinct : 0;
    printf("topic %s: %" PRIu64 " messages, %" PRIu64 " lost, %" PRIu64 " duplicated", topics[i], distinct,
           lost, duplicated);
    if (stray)
      printf(", %" PRIu64 " outside 1..%" PRIu64, stray, c->total);
    if (applications != distinct)
      printf(", %" PRIu64 " applications counted", applications);
    printf("\n");
    if (lost || duplicated || stray || applications != distinct)
      c->bad = 1;
  }
  return 0;
}

static int run_check(const char *dir, uint64_t total) {
  struct fy_err err = {0};
  struct fy_store *store = open_store(dir);
  struct check c = {.total = total};
  int rc = fy_store_read(store, check_body, &c, &err);
  fy_store_close(store);
  if (rc < 0)
    die("check", &err);
  return c.bad;
}

/* ---- main -------------------------------------------------------------------------- */

static uint64_t parse_u64(const char *s) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || *end || end == s || v == 0 || v > 10000000ull) {
    fprintf(stderr, "crashpeer: not a count: %s\n", s);
    exit(2);
  }
  return v;
}

static void usage(void) {
  fprintf(stderr, "usage: crashpeer recv DIR ADDR_FILE [PORT]\n"
                  "       crashpeer send DIR PEER_ADDR_FILE TOTAL\n"
                  "       crashpeer check DIR TOTAL\n");
  exit(2);
}

int main(int argc, char **argv) {
  if (argc < 3)
    usage();
  setvbuf(stderr, NULL, _IOLBF, 0);
  enum fy_log_level level = FY_LOG_INFO;
  const char *lv = getenv("CRASHPEER_LOG_LEVEL");
  if (lv && fy_log_level_parse(lv, &level) != 0)
    usage();
  fy_log_init(&logger, stderr, level, argv[1], NULL);
  struct fy_err err = {0};
  if (fy_crypto_init(&err) != 0)
    die("crypto", &err);
  signal(SIGPIPE, SIG_IGN);
  const char *dir = argv[2];
  if (strcmp(argv[1], "check") != 0 && mkdir(dir, 0700) != 0 && errno != EEXIST)
    die(dir, NULL);
  if (strcmp(argv[1], "recv") == 0 && (argc == 4 || argc == 5))
    return run_recv(dir, argv[3], argc == 5 ? (unsigned)parse_u64(argv[4]) : 0);
  if (strcmp(argv[1], "send") == 0 && argc == 5)
    return run_send(dir, argv[3], parse_u64(argv[4]));
  if (strcmp(argv[1], "check") == 0 && argc == 4)
    return run_check(dir, parse_u64(argv[3]));
  usage();
  return 2;
}
