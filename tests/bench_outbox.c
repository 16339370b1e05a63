/* Micro-benchmark: durable enqueues through the outbox's group commit, the
 * same pattern on SQLite (WAL, synchronous=FULL), and the time to reopen a
 * store holding a million messages after its writer was SIGKILLed.
 *
 *  - outbox.durable_enqueues_per_sec: PRODUCERS threads each call
 *    fy_outbox_enqueue (256-byte payload, fsync on, returns once durable) in a
 *    loop for the run time; messages per second over the run.
 *  - sqlite.wal_enqueues_per_sec: the same producers hand rows to one
 *    committer thread, which inserts everything queued in one transaction
 *    (journal_mode=WAL, synchronous=FULL) and then wakes them.
 *  - outbox.vs_sqlite_ratio: the first over the second.
 *  - outbox.restart_ms_1m_queued: a child process queues 1,000,000 messages
 *    (batches of 10,000), keeps writing, and is SIGKILLed mid-write; then the
 *    time from fy_store_open to the first message from fy_outbox_next_batch,
 *    with data.mdb dropped from the page cache first (cold, as after a
 *    reboot); the warm time goes to stderr.
 *
 * The data directories live under /var/tmp (a real disk, not tmpfs) unless
 * FERRY_BENCH_DIR says otherwise, and are removed afterwards.
 * Prints JSON lines on stdout: {"name":...,"value":N,"unit":...,"goal":...}
 * Usage: bench_outbox [seconds-per-run] [producers] [--skip-restart] */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "outbox/outbox.h"
#include "store/store.h"

#define PAYLOAD 256
#define RESTART_MSGS 1000000
#define RESTART_BATCH 10000
#define RESTART_DESTS 1000
#define CHILD_LIMIT_S 120 /* the child stops itself (alarm) if nobody kills it */

static void die(const char *what, const char *msg) {
  fprintf(stderr, "bench_outbox: %s: %s\n", what, msg);
  exit(1);
}

static void make_dir(char *out, size_t cap, const char *name) {
  const char *base = getenv("FERRY_BENCH_DIR") ? getenv("FERRY_BENCH_DIR") : "/var/tmp";
  snprintf(out, cap, "%s/ferry-bench-%s-XXXXXX", base, name);
  if (!mkdtemp(out))
    die("mkdtemp", strerror(errno));
}

static void remove_dir(const char *dir) {
  nftw(dir, bench_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static struct fy_nodeid node(uint32_t n) {
  struct fy_nodeid id;
  memset(id.key, 0x5a, sizeof(id.key));
  memcpy(id.key, &n, sizeof(n));
  return id;
}

static void result(const char *name, double value, const char *unit, const char *goal) {
  printf("{\"name\":\"%s\",\"value\":%.*f,\"unit\":\"%s\",\"goal\":%s}\n", name, value < 100 ? 2 : 0, value,
         unit, goal);
  fflush(stdout);
}

/* ---- outbox producers -------------------------------------------------------- */

struct run {
  atomic_bool stop;
  atomic_bool counting;
  atomic_ullong count;
  struct fy_outbox *ob;
  /* sqlite */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct row *head, *tail;
  bool sql_stop;
};

struct producer {
  struct run *run;
  uint32_t id;
  pthread_t th;
};

static void *outbox_producer(void *arg) {
  struct producer *p = arg;
  struct fy_nodeid dest = node(p->id % 16);
  uint8_t payload[PAYLOAD];
  memset(payload, (int)p->id, sizeof(payload));
  struct fy_err err;
  while (!atomic_load(&p->run->stop)) {
    if (fy_outbox_enqueue(p->run->ob, &dest, "bench", fy_bytes_of(payload, sizeof(payload)), 0, NULL, &err) !=
        0)
      die("enqueue", err.msg);
    if (atomic_load(&p->run->counting))
      atomic_fetch_add(&p->run->count, 1);
  }
  return NULL;
}

/* Runs producers for warmup + seconds; returns enqueues per second while counting. */
static double timed_run(struct run *run, void *(*fn)(void *), int producers, double seconds) {
  struct producer *p = calloc((size_t)producers, sizeof(*p));
  for (int i = 0; i < producers; i++) {
    p[i] = (struct producer){run, (uint32_t)i, 0};
    pthread_create(&p[i].th, NULL, fn, &p[i]);
  }
  usleep(500000); /* warm up: the map grows, the page cache fills */
  atomic_store(&run->count, 0);
  atomic_store(&run->counting, true);
  double start = bench_now_s();
  usleep((useconds_t)(seconds * 1e6));
  atomic_store(&run->counting, false);
  double elapsed = bench_now_s() - start;
  unsigned long long n = atomic_load(&run->count);
  atomic_store(&run->stop, true);
  for (int i = 0; i < producers; i++)
    pthread_join(p[i].th, NULL);
  free(p);
  return (double)n / elapsed;
}

static double bench_outbox(int producers, double seconds) {
  char dir[256];
  make_dir(dir, sizeof(dir), "outbox");
  const struct fy_store_schema *schemas[] = {&fy_outbox_schema};
  struct fy_store *store;
  struct fy_err err;
  if (fy_store_open(&store, dir, schemas, 1, NULL, &err) != 0)
    die("store", err.msg);
  struct run run = {0};
  if (fy_outbox_open(&run.ob, store, NULL, &err) != 0)
    die("outbox", err.msg);
  double rate = timed_run(&run, outbox_producer, producers, seconds);
  struct fy_outbox_counters c;
  fy_outbox_counters(run.ob, &c);
  fprintf(stderr, "bench_outbox: outbox: %" PRIu64 " messages in %" PRIu64 " commits (%.1f per commit)\n",
          c.messages, c.commits, c.commits ? (double)c.messages / (double)c.commits : 0.0);
  fy_outbox_close(run.ob, NULL, NULL);
  fy_store_close(store);
  remove_dir(dir);
  return rate;
}

/* ---- the same on SQLite --------------------------------------------------------- */

struct row {
  struct row *next;
  uint32_t producer;
  const uint8_t *payload;
  sem_t done;
  int rc;
};

static void *sqlite_producer(void *arg) {
  struct producer *p = arg;
  struct run *run = p->run;
  uint8_t payload[PAYLOAD];
  memset(payload, (int)p->id, sizeof(payload));
  struct row r = {.producer = p->id, .payload = payload};
  sem_init(&r.done, 0, 0);
  while (!atomic_load(&run->stop)) {
    pthread_mutex_lock(&run->mu);
    r.next = NULL;
    if (run->tail)
      run->tail->next = &r;
    else
      run->head = &r;
    run->tail = &r;
    pthread_cond_signal(&run->cv);
    pthread_mutex_unlock(&run->mu);
    while (sem_wait(&r.done) != 0 && errno == EINTR)
      ;
    if (r.rc != SQLITE_DONE)
      die("sqlite insert", sqlite3_errstr(r.rc));
    if (atomic_load(&run->counting))
      atomic_fetch_add(&run->count, 1);
  }
  sem_destroy(&r.done);
  return NULL;
}

struct sql_committer {
  struct run *run;
  sqlite3 *db;
  sqlite3_stmt *ins;
  uint64_t commits, rows;
};

static void sql_exec(sqlite3 *db, const char *sql) {
  char *msg = NULL;
  if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
    die(sql, msg ? msg : "?");
}

static void *sqlite_committer(void *arg) {
  struct sql_committer *c = arg;
  struct run *run = c->run;
  uint64_t seq[64] = {0};
  pthread_mutex_lock(&run->mu);
  for (;;) {
    while (!run->head && !run->sql_stop)
      pthread_cond_wait(&run->cv, &run->mu);
    if (!run->head)
      break;
    struct row *batch = run->head;
    run->head = run->tail = NULL;
    pthread_mutex_unlock(&run->mu);
    sql_exec(c->db, "BEGIN");
    int64_t now = (int64_t)time(NULL) * 1000;
    for (struct row *r = batch; r; r = r->next) {
      struct fy_nodeid dest = node(r->producer % 16);
      uint8_t id[16];
      memset(id, 0, sizeof(id));
      sqlite3_bind_blob(c->ins, 1, dest.key, sizeof(dest.key), SQLITE_STATIC);
      sqlite3_bind_text(c->ins, 2, "bench", -1, SQLITE_STATIC);
      sqlite3_bind_int64(c->ins, 3, (sqlite3_int64)++seq[r->producer % 16]);
      sqlite3_bind_blob(c->ins, 4, id, sizeof(id), SQLITE_STATIC);
      sqlite3_bind_int64(c->ins, 5, now);
      sqlite3_bind_blob(c->ins, 6, r->payload, PAYLOAD, SQLITE_STATIC);
      r->rc = sqlite3_step(c->ins);
      sqlite3_reset(c->ins);
      c->rows++;
    }
    sql_exec(c->db, "COMMIT");
    c->commits++;
    for (struct row *r = batch, *next; r; r = next) {
      next = r->next;
      sem_post(&r->done);
    }
    pthread_mutex_lock(&run->mu);
  }
  pthread_mutex_unlock(&run->mu);
  return NULL;
}

static double bench_sqlite(int producers, double seconds) {
  char dir[256], path[300];
  make_dir(dir, sizeof(dir), "sqlite");
  snprintf(path, sizeof(path), "%s/outbox.db", dir);
  struct sql_committer c = {0};
  if (sqlite3_open(path, &c.db) != SQLITE_OK)
    die("sqlite open", sqlite3_errmsg(c.db));
  sql_exec(c.db, "PRAGMA journal_mode=WAL");
  sql_exec(c.db, "PRAGMA synchronous=FULL");
  sql_exec(c.db, "CREATE TABLE msg(dest BLOB NOT NULL, topic TEXT NOT NULL, seq INTEGER NOT NULL, id BLOB, "
                 "enqueued_at INTEGER, expires_at INTEGER, attempts INTEGER DEFAULT 0, next_attempt_at "
                 "INTEGER DEFAULT 0, payload BLOB, PRIMARY KEY(dest, topic, seq)) WITHOUT ROWID");
  if (sqlite3_prepare_v2(c.db,
                         "INSERT INTO msg(dest, topic, seq, id, enqueued_at, expires_at, payload) "
                         "VALUES(?1, ?2, ?3, ?4, ?5, -1, ?6)",
                         -1, &c.ins, NULL) != SQLITE_OK)
    die("sqlite prepare", sqlite3_errmsg(c.db));
  struct run run = {0};
  pthread_mutex_init(&run.mu, NULL);
  pthread_cond_init(&run.cv, NULL);
  c.run = &run;
  pthread_t committer;
  pthread_create(&committer, NULL, sqlite_committer, &c);
  double rate = timed_run(&run, sqlite_producer, producers, seconds);
  pthread_mutex_lock(&run.mu);
  run.sql_stop = true;
  pthread_cond_signal(&run.cv);
  pthread_mutex_unlock(&run.mu);
  pthread_join(committer, NULL);
  fprintf(stderr, "bench_outbox: sqlite: %" PRIu64 " rows in %" PRIu64 " commits (%.1f per commit)\n", c.rows,
          c.commits, c.commits ? (double)c.rows / (double)c.commits : 0.0);
  sqlite3_finalize(c.ins);
  sqlite3_close(c.db);
  pthread_mutex_destroy(&run.mu);
  pthread_cond_destroy(&run.cv);
  remove_dir(dir);
  return rate;
}

/* ---- restart with a million queued ------------------------------------------------- */

static void fill_and_keep_writing(const char *dir, int ready_fd) {
  alarm(CHILD_LIMIT_S);
  const struct fy_store_schema *schemas[] = {&fy_outbox_schema};
  struct fy_store *store;
  struct fy_outbox *ob = NULL;
  struct fy_err err;
  if (fy_store_open(&store, dir, schemas, 1, NULL, &err) != 0 || fy_outbox_open(&ob, store, NULL, &err) != 0)
    die("child open", err.msg);
  struct fy_outbox_item *items = calloc(RESTART_BATCH, sizeof(*items));
  static uint8_t payload[PAYLOAD];
  memset(payload, 'r', sizeof(payload));
  for (uint64_t n = 0;; n += RESTART_BATCH) {
    for (size_t i = 0; i < RESTART_BATCH; i++)
      items[i] = (struct fy_outbox_item){node((uint32_t)((n + i) % RESTART_DESTS)), "bench",
                                         fy_bytes_of(payload, sizeof(payload)), 0};
    if (fy_outbox_enqueue_batch(ob, items, RESTART_BATCH, NULL, &err) != 0)
      die("child enqueue", err.msg);
    if (n + RESTART_BATCH == RESTART_MSGS && write(ready_fd, "r", 1) != 1)
      die("child", "cannot tell the parent");
  }
}

/* Opens the store and outbox and reads the first batch of one queue: the
 * milliseconds that took. With info: also what the store holds. */
static double reopen_ms(const char *dir, struct fy_store_info *info, uint64_t *total, int *queues) {
  double start = bench_now_s();
  const struct fy_store_schema *schemas[] = {&fy_outbox_schema};
  struct fy_store *store;
  struct fy_outbox *ob = NULL;
  struct fy_err err;
  if (fy_store_open(&store, dir, schemas, 1, NULL, &err) != 0 || fy_outbox_open(&ob, store, NULL, &err) != 0)
    die("reopen", err.msg);
  struct fy_nodeid dest = node(RESTART_DESTS - 1);
  struct fy_outbox_query q = {&dest, "bench", 0, UINT64_MAX - 1, 64, 0};
  struct fy_outbox_batch b;
  if (fy_outbox_next_batch(ob, &q, &b, &err) != 0)
    die("next_batch", err.msg);
  double ms = (bench_now_s() - start) * 1000;
  if (b.n == 0)
    die("restart", "no message after the restart");
  fy_outbox_batch_free(&b);
  if (info) {
    fy_store_info(store, info);
    struct fy_outbox_queue_stats *qs = calloc(RESTART_DESTS, sizeof(*qs));
    *queues = fy_outbox_queues(ob, NULL, qs, RESTART_DESTS, &err);
    for (int i = 0; i < *queues && i < RESTART_DESTS; i++)
      *total += qs[i].pending;
    free(qs);
  }
  fy_outbox_close(ob, NULL, NULL);
  fy_store_close(store);
  return ms;
}

static double bench_restart(void) {
  char dir[256];
  make_dir(dir, sizeof(dir), "restart");
  int pfd[2];
  if (pipe(pfd) != 0)
    die("pipe", strerror(errno));
  double fill_start = bench_now_s();
  pid_t pid = fork();
  if (pid < 0)
    die("fork", strerror(errno));
  if (pid == 0) {
    close(pfd[0]);
    fill_and_keep_writing(dir, pfd[1]);
    _exit(0);
  }
  close(pfd[1]);
  char ch;
  if (read(pfd[0], &ch, 1) != 1) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    die("restart", "the child died before queueing a million messages");
  }
  double filled = bench_now_s() - fill_start;
  usleep(200000); /* it is in the middle of more batches now */
  kill(pid, SIGKILL);
  int status;
  waitpid(pid, &status, 0);
  close(pfd[0]);
  if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
    die("restart", "the child was not killed by SIGKILL");

  /* Cold: the file's pages out of the page cache, as after a reboot. */
  char data[300];
  snprintf(data, sizeof(data), "%s/store/data.mdb", dir);
  int fd = open(data, O_RDONLY);
  if (fd < 0 || fdatasync(fd) != 0 || posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) != 0)
    die("drop the page cache of data.mdb", strerror(errno));
  close(fd);
  struct fy_store_info info;
  uint64_t total = 0;
  int queues = 0;
  double cold = reopen_ms(dir, &info, &total, &queues);
  double warm = reopen_ms(dir, NULL, NULL, NULL);
  fprintf(stderr,
          "bench_outbox: restart: filled 1M in %.1f s; after SIGKILL: %" PRIu64 " messages in %d queues, "
          "%.0f MiB used; open to first batch: %.1f ms cold, %.1f ms warm\n",
          filled, total, queues, (double)info.used / (1 << 20), cold, warm);
  if (total < RESTART_MSGS)
    die("restart", "messages were lost");
  remove_dir(dir);
  return cold;
}

int main(int argc, char **argv) {
  double seconds = 3;
  int producers = 64;
  bool restart = true;
  int pos = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--skip-restart") == 0)
      restart = false;
    else if (pos++ == 0)
      seconds = strtod(argv[i], NULL);
    else
      producers = atoi(argv[i]);
  }
  if (!(seconds > 0) || producers < 1) {
    fprintf(stderr, "usage: bench_outbox [seconds-per-run] [producers] [--skip-restart]\n");
    return 2;
  }
  double ob = bench_outbox(producers, seconds);
  result("outbox.durable_enqueues_per_sec", ob, "msgs/s", "100000");
  double sql = bench_sqlite(producers, seconds);
  result("sqlite.wal_enqueues_per_sec", sql, "msgs/s", "null");
  result("outbox.vs_sqlite_ratio", sql > 0 ? ob / sql : 0, "x", "3");
  if (restart)
    result("outbox.restart_ms_1m_queued", bench_restart(), "ms", "1000");
  return 0;
}
