/* Benchmark: a one-wave rollout to many agents, and the coordinator's memory
 * per connected agent (issue 6 §8).
 *
 *  - the coordinator is the real `ferry coordinator` process (its store under
 *    /var/tmp, a real disk, fsync included), started after `coordinator init`;
 *  - the admin is `ferry admin` subprocesses (enroll create, artifact add,
 *    rollout create, rollout start, rollout show --json), as an operator runs
 *    them;
 *  - the agents are simulated in this process, on one libuv loop: each has
 *    its own ed25519 key, its own QUIC endpoint (one UDP socket) and its own
 *    connection to the coordinator. Each enrolls with the ticket through
 *    `agent.enroll` (facts: version 1.0.0), keeps its connection open, serves
 *    the `outbox.push` calls the coordinator makes over it and answers every
 *    `desired` message with ONE apply.report {state: success}, sent as an
 *    outbox.push call of its own (proto/outbox.md: seq 1.., prev_seq, a
 *    16-byte id whose first 8 bytes are the agent's epoch).
 *
 * What a sim agent leaves out, on purpose: it neither downloads nor verifies
 * the artifact, runs no apply script and no health check (that is the agent
 * host's time, not the coordinator's), and its receiving side keeps its
 * watermarks in memory instead of an LMDB inbox, its report queue in memory
 * instead of an outbox: this process never restarts, and durability on the
 * agent side is not what is measured here (bench_delivery measures it). The
 * coordinator side is complete: its inbox commits every report durably before
 * it acknowledges it.
 *
 * rollout.wave_1000_agents_s: from the moment `ferry admin rollout start` is
 * spawned (the command is then signed, delivered and applied; the wave starts
 * at the coordinator's next tick, every 500 ms) until the coordinator has
 * acknowledged the last agent's success report (durably applied). stderr and
 * the JSON line also give the phases: the admin's exit (command applied and
 * its result fetched), the first and last desired message received, and when
 * `rollout show` first says "completed".
 *
 * rollout.coordinator_bytes_per_agent: (VmRSS of the coordinator with every
 * agent enrolled and connected, 1 s after the last enrolled) minus (VmRSS
 * before the first agent dialled, after the ticket was made), over the count.
 * It includes the LMDB pages the enrollments touched (file-backed, mapped);
 * RssAnon is given beside it.
 *
 * Bounded: every phase has a deadline within DEADLINE_S; SIGALRM at
 * DEADLINE_S + 10 kills the coordinator and exits. The scratch directory is
 * removed and the coordinator stopped on every way out.
 *
 * Usage: bench_rollout [--agents N] [--ferry PATH]
 *   N from --agents, else FERRY_BENCH_AGENTS, else 1000 (--quick: 50).
 *   PATH from --ferry, else FERRY_BIN, else ../ferry next to this executable.
 *   FERRY_BENCH_DIR replaces /var/tmp. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <msgpack.h>
#include <poll.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "agent/agent_state.h"
#include "base/buf.h"
#include "base/mpmap.h"
#include "bench_util.h"
#include "crypto/key.h"
#include "fleet/facts.h"
#include "fleet/ticket.h"
#include "net/quic.h"
#include "outbox/wire.h"
#include "rpc/rpc.h"

#define AGENTS_DEFAULT 1000
#define AGENTS_QUICK 50
#define DEADLINE_S 120
#define DIAL_WINDOW 64 /* dials + enrollments in flight at once */
#define TOPICS_MAX 4   /* per sim agent: desired, trust, ... */
#define CALL_DEADLINE_MS 30000
#define GOAL_WAVE_S 5
#define GOAL_BYTES 65536
#define ROLLOUT_ID "bench-wave"

static uv_loop_t loop;
static struct fy_rpc *rpc;
static struct fy_nodeid coord_id;
static struct sockaddr_storage coord_addr;
static socklen_t coord_addr_len;
static char dir[256], ferry_bin[PATH_MAX];
static volatile pid_t coord_pid;
static double t_begin;
static size_t nagents = AGENTS_DEFAULT;
static uint8_t secret[FY_TICKET_SECRET_LEN];

/* ---- the sim agents --------------------------------------------------------------- */

struct mark {
  char topic[FY_OUTBOX_TOPIC_MAX + 1];
  uint64_t seq;
};

struct agent {
  size_t idx;
  struct fy_key key;
  struct fy_quic *q;
  struct fy_qconn *conn;
  bool dialled, open, enrolled, failed, desired, reported;
  struct fy_buf reply;
  struct mark marks[TOPICS_MAX];
  uint8_t epoch[8];
  uint64_t report_seq, report_acked; /* apply.report queue: last given out, last acknowledged */
  char rollout[64];
};

static struct agent *agents;
static size_t next_dial, inflight, nenrolled, nfailed, ndesired, nreported, nreport_errors;
static double t_first_desired, t_last_desired, t_last_report;

__attribute__((format(printf, 1, 2))) static void note(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "bench_rollout: %6.2fs ", bench_now_s() - t_begin);
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
}

static void stop_coordinator(void) {
  pid_t p = coord_pid;
  if (p > 0) {
    kill(p, SIGTERM);
    for (int i = 0; i < 50 && waitpid(p, NULL, WNOHANG) == 0; i++)
      usleep(100000);
    kill(p, SIGKILL);
    waitpid(p, NULL, 0);
    coord_pid = 0;
  }
}

static void cleanup(void) {
  stop_coordinator();
  if (dir[0] && !getenv("FERRY_BENCH_KEEP"))
    nftw(dir, bench_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void print_nulls(void) {
  printf("{\"bench\":\"rollout\",\"name\":\"rollout.wave_1000_agents_s\",\"metric\":\"wave_1000_agents_s\","
         "\"value\":null,\"unit\":\"s\",\"goal\":%d,\"agents\":%zu}\n",
         GOAL_WAVE_S, nagents);
  printf("{\"bench\":\"rollout\",\"name\":\"rollout.coordinator_bytes_per_agent\","
         "\"metric\":\"coordinator_bytes_per_agent\",\"value\":null,\"unit\":\"bytes\",\"goal\":%d,"
         "\"agents\":%zu}\n",
         GOAL_BYTES, nagents);
  fflush(stdout);
}

__attribute__((noreturn, format(printf, 1, 2))) static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "bench_rollout: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  cleanup();
  print_nulls();
  exit(1);
}

static void on_alarm(int sig) {
  (void)sig;
  if (coord_pid > 0)
    kill(coord_pid, SIGKILL);
  static const char msg[] = "bench_rollout: hard time limit reached\n";
  (void)!write(2, msg, sizeof(msg) - 1);
  _exit(1);
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Runs the loop until done() or the deadline (absolute bench_now_s). */
static void wake(uv_timer_t *t) {
  (void)t;
}
static bool run_until(bool (*done)(void), double deadline) {
  uv_timer_t tick;
  uv_timer_init(&loop, &tick);
  uv_timer_start(&tick, wake, 2, 2);
  bool ok;
  while (!(ok = done()) && bench_now_s() < deadline)
    uv_run(&loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&tick, NULL);
  uv_run(&loop, UV_RUN_NOWAIT);
  return ok;
}

/* -- receiving: outbox.push from the coordinator -- */

struct push_in {
  struct agent *a;
  struct mark *m; /* NULL until the topic arrived */
};

static void report_send(struct agent *a);

static void desired_arrived(struct agent *a, const uint8_t *p, size_t len) {
  struct fy_mpmap mm;
  struct fy_err err = {0};
  if (fy_mpmap_decode(&mm, p, len, 8, 1000, "desired", &err) < 0) {
    note("agent %zu: %s", a->idx, err.msg);
    return;
  }
  bool ok = fy_mp_str(mm.map, "rollout", a->rollout, sizeof(a->rollout));
  fy_mpmap_free(&mm);
  if (!ok) {
    note("agent %zu: desired without a rollout", a->idx);
    return;
  }
  double t = bench_now_s();
  if (!ndesired)
    t_first_desired = t;
  t_last_desired = t;
  if (!a->desired) {
    a->desired = true;
    ndesired++;
  }
  a->report_seq++;
  report_send(a);
}

static void push_start(struct fy_rpc_scall *call, void *user) {
  (void)user;
  struct push_in *in = calloc(1, sizeof(*in));
  if (!in) {
    fy_rpc_finish(call, FY_RPC_RESOURCE_EXHAUSTED, "out of memory", true);
    return;
  }
  in->a = fy_rpc_conn_user(fy_rpc_scall_conn(call));
  fy_rpc_scall_set_user(call, in);
}

static void push_msg(struct fy_rpc_scall *call, const uint8_t *p, size_t len, void *user) {
  (void)user;
  struct push_in *in = fy_rpc_scall_user(call);
  struct fy_err err = {0};
  if (!in->m) {
    char topic[FY_OUTBOX_TOPIC_MAX + 1];
    if (fy_outbox_wire_decode_topic(p, len, topic, &err) < 0)
      goto bad;
    for (size_t i = 0; i < TOPICS_MAX && !in->m; i++) {
      struct mark *m = &in->a->marks[i];
      if (!m->topic[0])
        snprintf(m->topic, sizeof(m->topic), "%s", topic);
      if (strcmp(m->topic, topic) == 0)
        in->m = m;
    }
    if (!in->m) {
      fy_err_set(&err, FY_ELIMIT, "too many topics");
      goto bad;
    }
    return;
  }
  struct fy_outbox_wire_record r;
  if (fy_outbox_wire_decode_record(p, len, &r, &err) < 0)
    goto bad;
  if (r.prev_seq > in->m->seq) {
    free(in);
    fy_rpc_scall_set_user(call, NULL);
    fy_rpc_finish(call, FY_RPC_FAILED_PRECONDITION, "ahead of order", true);
    return;
  }
  if (r.seq > in->m->seq) { /* else a duplicate: acknowledged again */
    in->m->seq = r.seq;
    if (strcmp(in->m->topic, "desired") == 0)
      desired_arrived(in->a, r.payload, r.payload_len);
  }
  /* A plain buffer: a cleanup variable must not sit between the gotos and
   * their label (clang refuses the jump). */
  struct fy_buf ack = FY_BUF_INIT;
  if (fy_outbox_wire_encode_ack(&ack, in->m->seq, &err) == 0)
    fy_rpc_reply(call, ack.data, ack.len);
  fy_buf_free(&ack);
  return;
bad:
  free(in);
  fy_rpc_scall_set_user(call, NULL);
  fy_rpc_finish(call, FY_RPC_INVALID_ARGUMENT, err.msg, false);
}

static void push_end(struct fy_rpc_scall *call, void *user) {
  (void)user;
  free(fy_rpc_scall_user(call));
  fy_rpc_scall_set_user(call, NULL);
  fy_rpc_finish(call, FY_RPC_OK, NULL, false);
}

static void push_cancel(struct fy_rpc_scall *call, int code, void *user) {
  (void)code;
  (void)user;
  free(fy_rpc_scall_user(call));
}

/* -- sending: apply.report as an outbox.push call of our own -- */

struct push_out {
  struct agent *a;
  uint64_t seq;
};

static void report_ack(struct fy_rpc_ccall *call, const uint8_t *p, size_t len, void *user) {
  struct push_out *o = user;
  uint64_t up_to;
  if (fy_outbox_wire_decode_ack(p, len, &up_to, NULL) < 0)
    return;
  struct agent *a = o->a;
  if (up_to > a->report_acked)
    a->report_acked = up_to;
  if (up_to >= o->seq) {
    if (!a->reported) {
      a->reported = true;
      nreported++;
      t_last_report = bench_now_s();
    }
    fy_rpc_end(call);
  }
}

static void report_status(struct fy_rpc_ccall *call, const struct fy_rpc_result *res, void *user) {
  (void)call;
  struct push_out *o = user;
  if (o->a->report_acked < o->seq) {
    nreport_errors++;
    note("agent %zu: report %" PRIu64 " not acknowledged: %d %s", o->a->idx, o->seq, res->code,
         res->message ? res->message : "");
  }
  free(o);
}

static const struct fy_rpc_call_cb report_cb = {.on_msg = report_ack, .on_status = report_status};

/* proto/rollout.md: {rollout, state, version, previous, exit, output, message, at}. */
static void report_send(struct agent *a) {
  struct fy_err err = {0};
  FY_AUTOBUF struct fy_buf body = FY_BUF_INIT, topic = FY_BUF_INIT, rec = FY_BUF_INIT;
  msgpack_packer pk;
  msgpack_packer_init(&pk, &body, fy_mp_buf_write);
  msgpack_pack_map(&pk, 8);
  fy_mp_pack_kv_str(&pk, "rollout", a->rollout);
  fy_mp_pack_kv_str(&pk, "state", "success");
  fy_mp_pack_kv_str(&pk, "version", "2.0.0");
  fy_mp_pack_kv_str(&pk, "previous", "1.0.0");
  fy_mp_pack_str(&pk, "exit");
  msgpack_pack_int(&pk, 0);
  fy_mp_pack_kv_str(&pk, "output", "");
  fy_mp_pack_kv_str(&pk, "message", "");
  fy_mp_pack_kv_u64(&pk, "at", now_ms());
  struct fy_outbox_wire_record r = {
      .seq = a->report_seq, .prev_seq = a->report_acked, .payload = body.data, .payload_len = body.len};
  memcpy(r.id, a->epoch, 8);
  randombytes_buf(r.id + 8, 8);
  struct push_out *o = calloc(1, sizeof(*o));
  struct fy_rpc_ccall *call;
  if (!o || !body.data || fy_outbox_wire_encode_topic(&topic, "apply.report", &err) < 0 ||
      fy_outbox_wire_encode_record(&rec, &r, &err) < 0 ||
      fy_rpc_start(rpc, a->conn, FY_OUTBOX_METHOD, CALL_DEADLINE_MS, &report_cb, o, &call, &err) < 0) {
    free(o);
    nreport_errors++;
    note("agent %zu: report: %s", a->idx, err.msg);
    return;
  }
  *o = (struct push_out){.a = a, .seq = r.seq};
  if (fy_rpc_send(call, topic.data, topic.len) < 0 || fy_rpc_send(call, rec.data, rec.len) < 0)
    fy_rpc_cancel(call);
}

/* -- enrolling -- */

static void dial_more(void);

static void agent_failed(struct agent *a, const char *why) {
  if (a->failed)
    return;
  a->failed = true;
  nfailed++;
  if (!a->enrolled)
    inflight--;
  note("agent %zu: %s", a->idx, why);
}

static void enroll_msg(struct fy_rpc_ccall *call, const uint8_t *p, size_t len, void *user) {
  (void)call;
  struct agent *a = user;
  fy_buf_append(&a->reply, p, len, NULL);
}

static void enroll_status(struct fy_rpc_ccall *call, const struct fy_rpc_result *res, void *user) {
  (void)call;
  struct agent *a = user;
  struct fy_err err = {0};
  struct fy_agent_enroll_reply r;
  if (res->code != FY_RPC_OK) {
    char why[300];
    snprintf(why, sizeof(why), "enroll: %d %s", res->code, res->message ? res->message : "");
    agent_failed(a, why);
  } else if (fy_agent_enroll_reply_decode(a->reply.data, a->reply.len, &r, &err) < 0) {
    agent_failed(a, err.msg);
  } else {
    if (r.status != FY_AGENT_ENROLL_ENROLLED) {
      agent_failed(a, "enroll: pending, not enrolled");
    } else if (!a->failed) {
      a->enrolled = true;
      nenrolled++;
      inflight--;
    }
    fy_agent_enroll_reply_free(&r);
  }
  fy_buf_free(&a->reply);
  dial_more();
}

static const struct fy_rpc_call_cb enroll_cb = {.on_msg = enroll_msg, .on_status = enroll_status};

static uint64_t conn_open(struct fy_qconn *c, void *user) {
  (void)user;
  struct agent *a = fy_rpc_conn_user(c);
  a->open = true;
  struct fy_err err = {0};
  struct fy_facts f;
  memset(&f, 0, sizeof(f));
  snprintf(f.hostname, sizeof(f.hostname), "sim-%zu", a->idx);
  snprintf(f.kernel, sizeof(f.kernel), "6.1.0");
  snprintf(f.arch, sizeof(f.arch), "x86_64");
  snprintf(f.os_id, sizeof(f.os_id), "linux");
  snprintf(f.version, sizeof(f.version), "1.0.0");
  snprintf(f.ferry_version, sizeof(f.ferry_version), "bench");
  f.collected_at = now_ms();
  FY_AUTOBUF struct fy_buf facts = FY_BUF_INIT, req = FY_BUF_INIT;
  if (fy_facts_encode(&f, &facts, &err) < 0 ||
      fy_agent_enroll_request_encode(secret, facts.data, facts.len, &req, &err) < 0 ||
      fy_rpc_unary(rpc, c, "agent.enroll", req.data, req.len, CALL_DEADLINE_MS, &enroll_cb, a, &err) < 0)
    agent_failed(a, err.msg);
  return 0;
}

static void conn_close(struct fy_qconn *c, const struct fy_qclose *why, void *user) {
  (void)user;
  struct agent *a = fy_rpc_conn_user(c);
  if (!a || a->conn != c)
    return;
  a->conn = NULL;
  a->open = false;
  char msg[300];
  snprintf(msg, sizeof(msg), "connection closed: %s %s", fy_qclose_kind_name(why->kind), why->msg);
  if (!a->reported || !a->enrolled)
    agent_failed(a, msg);
  dial_more();
}

static void dial_more(void) {
  while (inflight < DIAL_WINDOW && next_dial < nagents) {
    struct agent *a = &agents[next_dial++];
    struct fy_err err = {0};
    a->dialled = true;
    inflight++;
    if (fy_quic_dial(a->q, &coord_id, (const struct sockaddr *)&coord_addr, coord_addr_len, FY_RPC_ALPN, a,
                     &a->conn, &err) < 0)
      agent_failed(a, err.msg);
  }
}

/* ---- processes ------------------------------------------------------------------------- */

/* Forks argv with stdout to out_path (NULL: /dev/null), stderr to err_path
 * (appended); the child dies with us. */
static pid_t spawn(const char *const argv[], const char *out_path, const char *err_path) {
  pid_t parent = getpid();
  pid_t p = fork();
  if (p < 0)
    die("fork: %s", strerror(errno));
  if (p == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
      _exit(127);
    int o = open(out_path ? out_path : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int e = open(err_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (o < 0 || e < 0)
      _exit(127);
    dup2(o, 1);
    dup2(e, 2);
    char *v[32];
    size_t n = 0;
    for (; argv[n] && n < 31; n++)
      v[n] = strdup(argv[n]);
    v[n] = NULL;
    execv(v[0], v);
    _exit(127);
  }
  return p;
}

static pid_t waited_pid;
static int waited_status;
static bool child_done(void) {
  return waitpid(waited_pid, &waited_status, WNOHANG) == waited_pid;
}

/* Runs `ferry admin ARGS...` (the loop keeps turning meanwhile); its stdout
 * goes to out (a file in dir) and is read back into text (may be NULL). */
static void admin(char *text, size_t cap, double timeout_s, ...) {
  const char *argv[24] = {ferry_bin, "admin"};
  size_t n = 2;
  va_list ap;
  va_start(ap, timeout_s);
  for (const char *s; n < 23 && (s = va_arg(ap, const char *));)
    argv[n++] = s;
  va_end(ap);
  argv[n] = NULL;
  char out[300], errp[300];
  snprintf(out, sizeof(out), "%s/admin.out", dir);
  snprintf(errp, sizeof(errp), "%s/admin.err", dir);
  waited_pid = spawn(argv, out, errp);
  if (!run_until(child_done, bench_now_s() + timeout_s)) {
    kill(waited_pid, SIGKILL);
    waitpid(waited_pid, NULL, 0);
    die("ferry admin %s %s: no exit within %.0f s (see %s)", argv[2], argv[3], timeout_s, errp);
  }
  if (!WIFEXITED(waited_status) || WEXITSTATUS(waited_status) != 0) {
    char tail[2048] = "";
    FILE *f = fopen(errp, "r");
    if (f) {
      size_t k = fread(tail, 1, sizeof(tail) - 1, f);
      tail[k] = 0;
      fclose(f);
    }
    die("ferry admin %s %s failed (status %d): %s", argv[2], argv[3], waited_status, tail);
  }
  if (text) {
    FILE *f = fopen(out, "r");
    size_t k = f ? fread(text, 1, cap - 1, f) : 0;
    text[k] = 0;
    if (f)
      fclose(f);
  }
}

/* VmRSS and RssAnon of pid, in bytes. */
static void rss_of(pid_t pid, uint64_t *rss, uint64_t *anon) {
  char path[64], line[256];
  snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  *rss = *anon = 0;
  if (!f)
    die("%s: %s", path, strerror(errno));
  unsigned long long kb;
  while (fgets(line, sizeof(line), f)) {
    if (sscanf(line, "VmRSS: %llu kB", &kb) == 1)
      *rss = kb * 1024;
    else if (sscanf(line, "RssAnon: %llu kB", &kb) == 1)
      *anon = kb * 1024;
  }
  fclose(f);
}

static void write_file(const char *path, const void *p, size_t n) {
  FILE *f = fopen(path, "w");
  if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0)
    die("%s: %s", path, strerror(errno));
}

/* Starts the coordinator and reads its banner: coord_id, coord_addr, spec. */
static void start_coordinator(char *spec, size_t cap) {
  char cdir[300], out[300], errp[300], owner_key[300], hex[FY_NODEID_HEX_LEN + 1];
  snprintf(cdir, sizeof(cdir), "%s/coord", dir);
  snprintf(out, sizeof(out), "%s/coord.out", dir);
  snprintf(errp, sizeof(errp), "%s/coord.log", dir);
  snprintf(owner_key, sizeof(owner_key), "%s/owner.key", dir);
  struct fy_key owner;
  struct fy_err err = {0};
  if (fy_key_generate(&owner, &err) < 0 || fy_key_save(&owner, owner_key, &err) < 0)
    die("owner key: %s", err.msg);
  fy_nodeid_to_hex(&owner.id, hex);
  fy_key_free(&owner);
  const char *init[] = {ferry_bin, "coordinator", "init", "--owner", hex, "--data-dir", cdir, NULL};
  waited_pid = spawn(init, NULL, errp);
  waitpid(waited_pid, &waited_status, 0);
  if (!WIFEXITED(waited_status) || WEXITSTATUS(waited_status) != 0)
    die("coordinator init failed (see %s)", errp);
  const char *run[] = {ferry_bin, "coordinator", "--data-dir", cdir, "--listen", "127.0.0.1:0", NULL};
  coord_pid = spawn(run, out, errp);
  const char *prefix = "admins connect with: --coordinator ";
  for (double until = bench_now_s() + 10; bench_now_s() < until; usleep(20000)) {
    FILE *f = fopen(out, "r");
    char line[1024];
    while (f && fgets(line, sizeof(line), f)) {
      if (strncmp(line, prefix, strlen(prefix)) != 0)
        continue;
      fclose(f);
      snprintf(spec, cap, "%s", line + strlen(prefix));
      spec[strcspn(spec, "\r\n")] = 0;
      char *at = strchr(spec, '@');
      if (!at)
        die("banner without '@': %s", spec);
      *at = 0;
      if (fy_nodeid_parse(spec, &coord_id, &err) < 0)
        die("coordinator id: %s", err.msg);
      *at = '@';
      char addr[128];
      snprintf(addr, sizeof(addr), "%s", at + 1);
      addr[strcspn(addr, ",")] = 0;
      char *colon = strrchr(addr, ':');
      if (!colon)
        die("coordinator address: %s", addr);
      *colon = 0;
      struct sockaddr_in *sin = (struct sockaddr_in *)&coord_addr;
      if (uv_ip4_addr(addr, atoi(colon + 1), sin) != 0)
        die("coordinator address: %s", addr);
      coord_addr_len = sizeof(*sin);
      return;
    }
    if (f)
      fclose(f);
    if (waitpid(coord_pid, NULL, WNOHANG) == coord_pid) {
      coord_pid = 0;
      die("the coordinator exited (see %s)", errp);
    }
  }
  die("no banner from the coordinator within 10 s (see %s)", errp);
}

/* ---- phases ---------------------------------------------------------------------------- */

static bool all_enrolled(void) {
  return nenrolled + nfailed >= nagents;
}
static bool all_reported(void) {
  return nreported + nfailed >= nagents || nreport_errors > 0;
}
static bool admin_done_flag;
static double t_admin_done;
static bool start_admin_or_reported(void) {
  if (!admin_done_flag && child_done()) {
    admin_done_flag = true;
    t_admin_done = bench_now_s();
  }
  return admin_done_flag && all_reported();
}
static double pause_until;
static bool paused(void) {
  return bench_now_s() >= pause_until;
}

static void make_agents(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < nagents + 256) {
    rl.rlim_cur = rl.rlim_max < nagents + 256 ? rl.rlim_max : nagents + 256;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  agents = calloc(nagents, sizeof(*agents));
  if (!agents)
    die("out of memory");
  static const struct fy_rpc_method methods[] = {{.name = FY_OUTBOX_METHOD, /* borrowed by the registry */
                                                  .on_start = push_start,
                                                  .on_msg = push_msg,
                                                  .on_end = push_end,
                                                  .on_cancel = push_cancel}};
  struct fy_rpc_config rcfg = {.methods = methods, .nmethods = 1};
  struct fy_err err = {0};
  if (fy_rpc_new(&rpc, &loop, &rcfg, &err) < 0)
    die("rpc: %s", err.msg);
  fy_rpc_set_conn_observer(rpc, conn_open, conn_close, NULL);
  struct fy_quic_handler h = fy_rpc_quic_handler(rpc);
  for (size_t i = 0; i < nagents; i++) {
    struct agent *a = &agents[i];
    a->idx = i;
    randombytes_buf(a->epoch, sizeof(a->epoch));
    if (fy_key_generate(&a->key, &err) < 0)
      die("key %zu: %s", i, err.msg);
    struct fy_quic_config qc = {.key = &a->key,
                                .listen = "127.0.0.1:0",
                                .handlers = &h,
                                .nhandlers = 1,
                                .keepalive_ms = 5000,
                                .idle_timeout_ms = 60000,
                                .handshake_timeout_ms = 20000};
    if (fy_quic_new(&a->q, &loop, &qc, &err) < 0)
      die("endpoint %zu: %s", i, err.msg);
  }
}

static size_t shut_count;
static void shut_one(void *user) {
  (void)user;
  shut_count++;
}
static bool all_shut(void) {
  return shut_count >= nagents;
}

int main(int argc, char **argv) {
  t_begin = bench_now_s();
  const char *env_n = getenv("FERRY_BENCH_AGENTS");
  if (env_n && *env_n)
    nagents = strtoul(env_n, NULL, 10);
  const char *bin = getenv("FERRY_BIN");
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--agents") == 0 && i + 1 < argc)
      nagents = strtoul(argv[++i], NULL, 10);
    else if (strcmp(argv[i], "--quick") == 0)
      nagents = AGENTS_QUICK;
    else if (strcmp(argv[i], "--ferry") == 0 && i + 1 < argc)
      bin = argv[++i];
    else {
      fprintf(stderr, "usage: bench_rollout [--agents N | --quick] [--ferry PATH]\n");
      return 2;
    }
  }
  if (nagents == 0 || nagents > 20000) {
    fprintf(stderr, "bench_rollout: --agents: 1..20000\n");
    return 2;
  }
  char self[PATH_MAX];
  if (!bin || !*bin) {
    ssize_t k = readlink("/proc/self/exe", self, sizeof(self) - 16);
    if (k <= 0)
      die("no ferry binary: pass --ferry or set FERRY_BIN");
    self[k] = 0;
    char *slash = strrchr(self, '/');
    if (!slash)
      die("no ferry binary: pass --ferry or set FERRY_BIN");
    snprintf(slash, sizeof(self) - (size_t)(slash - self), "/../ferry");
    bin = self;
  }
  if (!realpath(bin, ferry_bin) || access(ferry_bin, X_OK) != 0)
    die("no ferry binary at %s: pass --ferry or set FERRY_BIN", bin);
  signal(SIGALRM, on_alarm);
  signal(SIGPIPE, SIG_IGN);
  alarm(DEADLINE_S + 10);
  double deadline = t_begin + DEADLINE_S;
  struct fy_err err = {0};
  if (fy_crypto_init(&err) < 0)
    die("%s", err.msg);
  const char *base = getenv("FERRY_BENCH_DIR") ? getenv("FERRY_BENCH_DIR") : "/var/tmp";
  snprintf(dir, sizeof(dir), "%s/ferry-bench-rollout-XXXXXX", base);
  if (!mkdtemp(dir))
    die("mkdtemp %s: %s", dir, strerror(errno));
  if (!getenv("FERRY_LOG_LEVEL"))
    setenv("FERRY_LOG_LEVEL", "warn", 1);
  uv_loop_init(&loop);

  char spec[1024];
  start_coordinator(spec, sizeof(spec));
  note("coordinator %d up: %s", (int)coord_pid, spec);

  /* The admin's environment, inherited by every `ferry admin`. */
  char path[300];
  snprintf(path, sizeof(path), "%s/owner.key", dir);
  setenv("FERRY_KEY_FILE", path, 1);
  snprintf(path, sizeof(path), "%s/admin", dir);
  setenv("FERRY_DATA_DIR", path, 1);
  setenv("FERRY_COORDINATOR", spec, 1);
  setenv("FERRY_TIMEOUT", "20s", 1);

  char text[8192], uses[32];
  snprintf(uses, sizeof(uses), "%zu", nagents);
  admin(text, sizeof(text), 30, "enroll", "create", "--tenant", "lab", "--uses", uses, "--ttl", "1h", NULL);
  struct fy_ticket ticket;
  text[strcspn(text, "\r\n")] = 0;
  if (fy_ticket_decode(text, &ticket, &err) < 0)
    die("ticket: %s", err.msg);
  memcpy(secret, ticket.secret, sizeof(secret));

  make_agents();
  pause_until = bench_now_s() + 0.5;
  run_until(paused, deadline);
  uint64_t rss0, anon0;
  rss_of(coord_pid, &rss0, &anon0);

  /* Enroll everyone; connections stay open. */
  double t_enroll = bench_now_s();
  dial_more();
  if (!run_until(all_enrolled, deadline) || nfailed)
    die("%zu of %zu agents enrolled, %zu failed", nenrolled, nagents, nfailed);
  double enroll_s = bench_now_s() - t_enroll;
  note("%zu agents enrolled in %.2f s", nenrolled, enroll_s);
  pause_until = bench_now_s() + 1.0;
  run_until(paused, deadline);
  uint64_t rss1, anon1;
  rss_of(coord_pid, &rss1, &anon1);
  double per_agent = ((double)rss1 - (double)rss0) / (double)nagents;
  double per_agent_anon = ((double)anon1 - (double)anon0) / (double)nagents;
  note("coordinator VmRSS %.1f -> %.1f MiB (RssAnon %.1f -> %.1f MiB): %.0f bytes per agent",
       rss0 / 1048576.0, rss1 / 1048576.0, anon0 / 1048576.0, anon1 / 1048576.0, per_agent);

  /* The artifact and a draft rollout of it, one wave, no failure tolerated. */
  char art[300];
  snprintf(art, sizeof(art), "%s/app-2.0.0", dir);
  uint8_t blob[4096];
  randombytes_buf(blob, sizeof(blob));
  write_file(art, blob, sizeof(blob));
  admin(NULL, 0, 30, "artifact", "add", "--tenant", "lab", "--name", "app", "--version", "2.0.0", "--file",
        art, NULL);
  admin(NULL, 0, 30, "rollout", "create", "--tenant", "lab", "--artifact", "app@2.0.0", "--waves", "1",
        "--max-failures", "0", "--id", ROLLOUT_ID, NULL);

  /* The timed part. */
  const char *start_argv[] = {ferry_bin, "admin", "rollout", "start", ROLLOUT_ID, "--tenant", "lab", NULL};
  char out[300], errp[300];
  snprintf(out, sizeof(out), "%s/admin.out", dir);
  snprintf(errp, sizeof(errp), "%s/admin.err", dir);
  double t0 = bench_now_s();
  waited_pid = spawn(start_argv, out, errp);
  bool ok = run_until(start_admin_or_reported, deadline);
  double t_end = t_last_report;
  if (!admin_done_flag) {
    kill(waited_pid, SIGKILL);
    waitpid(waited_pid, NULL, 0);
  } else if (!WIFEXITED(waited_status) || WEXITSTATUS(waited_status) != 0) {
    die("ferry admin rollout start failed (status %d, see %s)", waited_status, errp);
  }
  if (!ok || nreported < nagents)
    die("%zu of %zu agents got the desired state, %zu reports acknowledged, %zu report errors, %zu failed",
        ndesired, nagents, nreported, nreport_errors, nfailed);
  double wave_s = t_end - t0;
  uint64_t rss2, anon2;
  rss_of(coord_pid, &rss2, &anon2);
  note(
      "rollout start applied (admin exited) after %.3f s; desired state received %.3f .. %.3f s; last report "
      "acknowledged %.3f s",
      t_admin_done - t0, t_first_desired - t0, t_last_desired - t0, wave_s);

  /* What the coordinator says (not timed closely: a poll every 100 ms). */
  double t_completed = -1;
  char state[64] = "";
  for (double until = bench_now_s() + 20; bench_now_s() < until && bench_now_s() < deadline;) {
    admin(text, sizeof(text), 20, "rollout", "show", ROLLOUT_ID, "--json", NULL);
    const char *s = strstr(text, "\"state\"");
    if (s && sscanf(s, "\"state\": \"%63[a-z_]\"", state) != 1)
      sscanf(s, "\"state\":\"%63[a-z_]\"", state);
    if (strcmp(state, "completed") == 0 || strcmp(state, "failed") == 0 || strcmp(state, "partial") == 0 ||
        strcmp(state, "aborted") == 0) {
      t_completed = bench_now_s() - t0;
      break;
    }
    pause_until = bench_now_s() + 0.1;
    run_until(paused, deadline);
  }
  note("rollout state %s (seen %.2f s after start)", state[0] ? state : "?", t_completed);
  if (strcmp(state, "completed") != 0)
    die("rollout %s is '%s', not completed", ROLLOUT_ID, state);

  printf("{\"bench\":\"rollout\",\"name\":\"rollout.wave_%zu_agents_s\",\"metric\":\"wave_%zu_agents_s\","
         "\"value\":%.3f,\"unit\":\"s\",\"goal\":%d,\"agents\":%zu,\"admin_exit_s\":%.3f,"
         "\"first_desired_s\":%.3f,\"last_desired_s\":%.3f,\"completed_seen_s\":%.2f,\"enroll_s\":%.2f}\n",
         nagents, nagents, wave_s, GOAL_WAVE_S, nagents, t_admin_done - t0, t_first_desired - t0,
         t_last_desired - t0, t_completed, enroll_s);
  printf("{\"bench\":\"rollout\",\"name\":\"rollout.coordinator_bytes_per_agent\","
         "\"metric\":\"coordinator_bytes_per_agent\",\"value\":%.0f,\"unit\":\"bytes\",\"goal\":%d,"
         "\"agents\":%zu,\"anon_bytes_per_agent\":%.0f,\"rss_before\":%" PRIu64 ",\"rss_connected\":%" PRIu64
         ",\"rss_after_wave\":%" PRIu64 ",\"anon_after_wave\":%" PRIu64 "}\n",
         per_agent, GOAL_BYTES, nagents, per_agent_anon, rss0, rss1, rss2, anon2);
  fflush(stdout);

  /* Shut down: the coordinator first (it closes the connections), then ours. */
  stop_coordinator();
  for (size_t i = 0; i < nagents; i++)
    fy_quic_shutdown(agents[i].q, shut_one, NULL);
  run_until(all_shut, bench_now_s() + 10);
  fy_rpc_free(rpc);
  for (size_t i = 0; i < nagents; i++)
    fy_key_free(&agents[i].key);
  free(agents);
  uv_run(&loop, UV_RUN_NOWAIT);
  uv_loop_close(&loop);
  cleanup();
  return 0;
}
