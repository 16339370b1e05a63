/* The apply cycle with real processes: shell scripts in a temp dir are the
 * applier, the health check and the nix stand-ins; a fake downloader copies
 * a local file. Every transition is reported in order from inside the
 * transaction that records it; failures roll back (or fail when the
 * rollback fails too); a record left in any in-progress state (written
 * directly, or by closing the engine mid-state) finishes correctly after a
 * reopen without running the applier twice; history keeps the last 32. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <ftw.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "agent/apply.h"
#include "agent/childmark.h"
#include "base/buf.h"
#include "store/store.h"

#define assert_contains(haystack, needle)                                                                    \
  do {                                                                                                       \
    if (!strstr((haystack), (needle)))                                                                       \
      fail_msg("\"%s\" does not contain \"%s\"", (haystack), (needle));                                      \
  } while (0)

struct rep {
  enum fy_apply_state from, to;
  int exit_code;
  char version[128], previous_version[128];
  char message[512];
  char tail[2048];
};

struct ctx {
  char dir[256];
  char path[16][512]; /* scratch paths, see P_* */
  uv_loop_t loop;
  struct fy_store *store;
  struct fy_apply *a;
  struct fy_apply_config cfg;
  const char *apply_argv[2], *health_argv[2];
  struct rep reps[64];
  size_t nreps;
  bool txn_bad;
  int downloads;
  enum { DL_COPY, DL_404, DL_HANG, DL_FLAKY } dl_mode;
  fy_apply_download_done held_done;
  void *held_ctx;
};

enum {
  P_STORE,
  P_WORK,
  P_APPLY,
  P_HEALTH,
  P_SRC,
  P_BAD,
  P_APPLY_LOG,
  P_HEALTH_LOG,
  P_NIX_LOG,
  P_PROFILE,
  P_NEW,
  P_OLD,
  P_NIX_STORE,
  P_NIX_ENV
};

static const char *SRC_CONTENT = "#!/bin/sh\necho payload\n";

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static void write_file(const char *path, const char *content, mode_t mode) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(content, f);
  fclose(f);
  assert_int_equal(chmod(path, mode), 0);
}

static char *read_all(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f)
    return strdup("");
  char *buf = NULL;
  size_t cap = 0;
  ssize_t n = getdelim(&buf, &cap, '\0', f);
  fclose(f);
  if (n < 0) {
    free(buf);
    return strdup("");
  }
  return buf;
}

static int count_of(const char *path, const char *needle) {
  char *s = read_all(path);
  int n = 0;
  for (const char *p = s; (p = strstr(p, needle)); p += strlen(needle))
    n++;
  free(s);
  return n;
}

static void touch(struct ctx *c, const char *name) {
  char p[600];
  snprintf(p, sizeof(p), "%s/%s", c->dir, name);
  write_file(p, "", 0644);
}

static int on_transition(struct fy_txn *t, const struct fy_apply_report *r, void *user) {
  struct ctx *c = user;
  /* Inside the transaction that records it: the record already says r->to. */
  struct fy_apply_record rec;
  if (!fy_txn_is_write(t) || fy_apply_record_get(t, &rec) != 1 || rec.state != r->to)
    c->txn_bad = true;
  if (c->nreps < 64) {
    struct rep *p = &c->reps[c->nreps++];
    p->from = r->from;
    p->to = r->to;
    p->exit_code = r->exit_code;
    snprintf(p->version, sizeof(p->version), "%s", r->version);
    snprintf(p->previous_version, sizeof(p->previous_version), "%s", r->previous_version);
    snprintf(p->message, sizeof(p->message), "%s", r->message);
    snprintf(p->tail, sizeof(p->tail), "%s", r->output_tail);
  }
  return 0;
}

static int fake_download(const struct fy_apply_artifact *art, const char *dest, fy_apply_download_done done,
                         void *dctx, void *user) {
  struct ctx *c = user;
  (void)art;
  c->downloads++;
  if (c->dl_mode == DL_HANG) {
    c->held_done = done;
    c->held_ctx = dctx;
    return 0;
  }
  if (c->dl_mode == DL_FLAKY) {
    c->dl_mode = DL_COPY;
    done(FY_EIO, "connection reset", false, dctx);
    return 0;
  }
  if (c->dl_mode == DL_404) {
    done(FY_ENOENT, "GET http://127.0.0.1/a: 404 Not Found", true, dctx);
    return 0;
  }
  char *s = read_all(c->path[P_SRC]);
  write_file(dest, s, 0644);
  free(s);
  done(0, NULL, false, dctx);
  return 0;
}

static int setup(void **state) {
  struct ctx *c = calloc(1, sizeof(*c));
  const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  snprintf(c->dir, sizeof(c->dir), "%s/ferry-apply-XXXXXX", base);
  assert_non_null(mkdtemp(c->dir));
  static const char *const names[] = {
      [P_STORE] = "data",
      [P_WORK] = "work",
      [P_APPLY] = "apply.sh",
      [P_HEALTH] = "health.sh",
      [P_SRC] = "src",
      [P_BAD] = "bad",
      [P_APPLY_LOG] = "apply.log",
      [P_HEALTH_LOG] = "health.log",
      [P_NIX_LOG] = "nix.log",
      [P_PROFILE] = "profile",
      [P_NEW] = "system-new",
      [P_OLD] = "system-old",
      [P_NIX_STORE] = "nix-store",
      [P_NIX_ENV] = "nix-env",
  };
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
    snprintf(c->path[i], sizeof(c->path[i]), "%s/%s", c->dir, names[i]);

  char script[4096];
  snprintf(script, sizeof(script),
           "#!/bin/sh\n"
           "D=%s\n"
           "echo \"$FERRY_ACTION v=$FERRY_VERSION prev=$FERRY_PREVIOUS_VERSION art=$FERRY_ARTIFACT "
           "prevart=$FERRY_PREVIOUS_ARTIFACT\" >> $D/apply.log\n"
           "if [ \"$FERRY_ACTION\" = activate ]; then\n"
           "  [ -e $D/sleep_activate ] && sleep 60\n"
           "  [ -e $D/fail_activate ] && { echo boom >&2; exit 3; }\n"
           "  [ -r \"$FERRY_ARTIFACT\" ] || { echo no artifact; exit 9; }\n"
           "fi\n"
           "if [ \"$FERRY_ACTION\" = rollback ]; then\n"
           "  [ -e $D/fail_rollback ] && { echo rollback broke; exit 4; }\n"
           "fi\n"
           "echo done $FERRY_ACTION\n",
           c->dir);
  write_file(c->path[P_APPLY], script, 0755);
  snprintf(script, sizeof(script),
           "#!/bin/sh\n"
           "D=%s\n"
           "echo \"health v=$FERRY_VERSION\" >> $D/health.log\n"
           "[ -e $D/unhealthy ] && { echo sick; exit 1; }\n"
           "exit 0\n",
           c->dir);
  write_file(c->path[P_HEALTH], script, 0755);
  write_file(c->path[P_SRC], SRC_CONTENT, 0644);

  assert_int_equal(uv_loop_init(&c->loop), 0);
  struct fy_err err;
  const struct fy_store_schema *schemas[] = {&fy_apply_schema};
  if (fy_store_open(&c->store, c->path[P_STORE], schemas, 1, NULL, &err) != 0)
    fail_msg("store: %s", err.msg);
  c->apply_argv[0] = c->path[P_APPLY];
  c->health_argv[0] = c->path[P_HEALTH];
  c->cfg = (struct fy_apply_config){
      .loop = &c->loop,
      .store = c->store,
      .work_dir = c->path[P_WORK],
      .apply_command = c->apply_argv,
      .health_command = c->health_argv,
      .retry_ms = 50,
      .on_transition = on_transition,
      .user = c,
      .download = fake_download,
  };
  *state = c;
  return 0;
}

static void closed(void *user) {
  *(bool *)user = true;
}

static void close_engine(struct ctx *c) {
  if (!c->a)
    return;
  bool done = false;
  fy_apply_close(c->a, closed, &done);
  c->a = NULL;
  while (!done)
    uv_run(&c->loop, UV_RUN_ONCE);
}

static int teardown(void **state) {
  struct ctx *c = *state;
  close_engine(c);
  if (c->held_done) /* a downloader answering after the close: ignored */
    c->held_done(0, NULL, false, c->held_ctx);
  uv_run(&c->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&c->loop), 0);
  fy_store_close(c->store);
  nftw(c->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(c);
  return 0;
}

static void open_engine(struct ctx *c) {
  struct fy_err err;
  if (fy_apply_open(&c->a, &c->cfg, &err) != 0)
    fail_msg("open: %s", err.msg);
}

static bool resting(enum fy_apply_state s) {
  return s == FY_APPLY_IDLE || s == FY_APPLY_SUCCESS || s == FY_APPLY_ROLLED_BACK || s == FY_APPLY_FAILED;
}

static void guard_cb(uv_timer_t *t) {
  *(bool *)t->data = true;
}

/* Runs the loop until the engine rests (the first tick included: open and
 * start defer their work to the loop). */
static void wait_rest(struct ctx *c) {
  uv_timer_t guard;
  bool fired = false;
  uv_timer_init(&c->loop, &guard);
  guard.data = &fired;
  uv_timer_start(&guard, guard_cb, 30000, 0);
  uv_run(&c->loop, UV_RUN_NOWAIT);
  while (!resting(fy_apply_state(c->a)) && !fired)
    uv_run(&c->loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&guard, NULL);
  uv_run(&c->loop, UV_RUN_NOWAIT);
  if (fired)
    fail_msg("still %s after 30 s", fy_apply_state_name(fy_apply_state(c->a)));
}

/* Runs the loop until the engine reaches s. */
static void wait_state(struct ctx *c, enum fy_apply_state s) {
  for (int i = 0; i < 3000 && fy_apply_state(c->a) != s; i++)
    uv_run(&c->loop, UV_RUN_NOWAIT), usleep(10000);
  assert_string_equal(fy_apply_state_name(fy_apply_state(c->a)), fy_apply_state_name(s));
}

static struct fy_apply_artifact script_artifact(const char *id, const char *version) {
  struct fy_apply_artifact art = {0};
  snprintf(art.id, sizeof(art.id), "%s", id);
  snprintf(art.kind, sizeof(art.kind), "script");
  snprintf(art.version, sizeof(art.version), "%s", version);
  snprintf(art.uri, sizeof(art.uri), "http://127.0.0.1:1/%s", id);
  crypto_hash_sha256(art.sha256, (const uint8_t *)SRC_CONTENT, strlen(SRC_CONTENT));
  art.size = strlen(SRC_CONTENT);
  return art;
}

static void start(struct ctx *c, const struct fy_apply_artifact *art) {
  struct fy_err err;
  if (fy_apply_start(c->a, art, &err) != 0)
    fail_msg("start: %s", err.msg);
}

/* Installs version 1.0 (id "a1") so later attempts have something to roll back to. */
static void install_v1(struct ctx *c) {
  struct fy_apply_artifact art = script_artifact("a1", "1.0");
  start(c, &art);
  wait_rest(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_SUCCESS);
  c->nreps = 0;
  unlink(c->path[P_APPLY_LOG]);
  unlink(c->path[P_HEALTH_LOG]);
}

static void expect(const struct ctx *c, size_t i, enum fy_apply_state from, enum fy_apply_state to) {
  if (i >= c->nreps)
    fail_msg("report %zu missing (%zu reports)", i, c->nreps);
  if (c->reps[i].from != from || c->reps[i].to != to)
    fail_msg("report %zu: %s -> %s, expected %s -> %s", i, fy_apply_state_name(c->reps[i].from),
             fy_apply_state_name(c->reps[i].to), fy_apply_state_name(from), fy_apply_state_name(to));
}

/* ---- the cycle ------------------------------------------------------------------ */

static void happy_path(void **state) {
  struct ctx *c = *state;
  open_engine(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_IDLE);
  assert_string_equal(fy_apply_current_version(c->a), "");
  struct fy_apply_artifact art = script_artifact("a1", "1.0");
  start(c, &art);
  struct fy_err err;
  assert_int_equal(fy_apply_start(c->a, &art, &err), FY_EEXIST);
  assert_contains(err.msg, "in progress");
  wait_rest(c);
  assert_int_equal(c->nreps, 5);
  expect(c, 0, FY_APPLY_IDLE, FY_APPLY_DOWNLOADING);
  expect(c, 1, FY_APPLY_DOWNLOADING, FY_APPLY_STAGED);
  expect(c, 2, FY_APPLY_STAGED, FY_APPLY_ACTIVATING);
  expect(c, 3, FY_APPLY_ACTIVATING, FY_APPLY_VERIFYING);
  expect(c, 4, FY_APPLY_VERIFYING, FY_APPLY_SUCCESS);
  assert_false(c->txn_bad);
  assert_contains(c->reps[3].tail, "done activate");
  assert_int_equal(c->reps[3].exit_code, 0);
  assert_string_equal(c->reps[4].version, "1.0");
  assert_string_equal(fy_apply_current_version(c->a), "1.0");
  assert_int_equal(c->downloads, 1);
  assert_int_equal(count_of(c->path[P_APPLY_LOG], "activate v=1.0 prev= "), 1);
  assert_int_equal(count_of(c->path[P_HEALTH_LOG], "health v=1.0"), 1);

  /* The next attempt knows what it replaces. */
  art = script_artifact("a2", "2.0");
  start(c, &art);
  wait_rest(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_SUCCESS);
  assert_string_equal(fy_apply_current_version(c->a), "2.0");
  assert_string_equal(fy_apply_previous_version(c->a), "1.0");
  char line[1200];
  snprintf(line, sizeof(line), "activate v=2.0 prev=1.0 art=%s/a2.artifact prevart=%s/a1.artifact",
           c->path[P_WORK], c->path[P_WORK]);
  assert_int_equal(count_of(c->path[P_APPLY_LOG], line), 1);
  assert_string_equal(c->reps[9].previous_version, "1.0");
  /* Only the installed artifact stays staged. */
  snprintf(line, sizeof(line), "%s/a1.artifact", c->path[P_WORK]);
  assert_int_equal(access(line, F_OK), -1);
  snprintf(line, sizeof(line), "%s/a2.artifact", c->path[P_WORK]);
  assert_int_equal(access(line, F_OK), 0);

  /* The state survives a reopen. */
  close_engine(c);
  open_engine(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_SUCCESS);
  assert_string_equal(fy_apply_current_version(c->a), "2.0");
}

static void health_failure_rolls_back(void **state) {
  struct ctx *c = *state;
  open_engine(c);
  install_v1(c);
  touch(c, "unhealthy");
  struct fy_apply_artifact art = script_artifact("a2", "2.0");
  start(c, &art);
  wait_rest(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_ROLLED_BACK);
  assert_int_equal(c->nreps, 6);
  expect(c, 3, FY_APPLY_ACTIVATING, FY_APPLY_VERIFYING);
  expect(c, 4, FY_APPLY_VERIFYING, FY_APPLY_ROLLING_BACK);
  expect(c, 5, FY_APPLY_ROLLING_BACK, FY_APPLY_ROLLED_BACK);
  assert_int_equal(c->reps[4].exit_code, 1);
  assert_contains(c->reps[4].tail, "sick");
  assert_contains(c->reps[4].message, "health check");
  assert_contains(c->reps[5].tail, "done rollback");
  assert_string_equal(fy_apply_current_version(c->a), "1.0");
  assert_int_equal(count_of(c->path[P_APPLY_LOG], "rollback v=2.0 prev=1.0"), 1);
}

/* The first attempt rolls back to what ran before ferry (the agent's
 * --version), and says so; without one it says none is known. */
static void first_rollback_names_the_base_version(void **state) {
  struct ctx *c = *state;
  c->cfg.base_version = "0.9";
  open_engine(c);
  touch(c, "unhealthy");
  struct fy_apply_artifact art = script_artifact("a1", "1.0");
  start(c, &art);
  wait_rest(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_ROLLED_BACK);
  assert_string_equal(c->reps[c->nreps - 1].message, "rolled back to '0.9'");
  assert_string_equal(c->reps[c->nreps - 1].previous_version, "0.9");
  assert_int_equal(count_of(c->path[P_APPLY_LOG], "rollback v=1.0 prev=0.9"), 1);
  assert_string_equal(fy_apply_current_version(c->a), "");

  c->cfg.base_version = NULL;
  close_engine(c);
  open_engine(c);
  art = script_artifact("a2", "1.1");
  start(c, &art);
  wait_rest(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_ROLLED_BACK);
  assert_string_equal(c->reps[c->nreps - 1].message, "rolled back (no earlier version known)");
}

static void applier_failure_rolls_back(void **state) {
  struct ctx *c = *state;
  open_engine(c);
  install_v1(c);
  touch(c, "fail_activate");
  struct fy_apply_artifact art = script_artifact("a2", "2.0");
  start(c, &art);
  wait_rest(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_ROLLED_BACK);
  assert_int_equal(c->nreps, 5);
  expect(c, 2, FY_APPLY_STAGED, FY_APPLY_ACTIVATING);
  expect(c, 3, FY_APPLY_ACTIVATING, FY_APPLY_ROLLING_BACK);
  expect(c, 4, FY_APPLY_ROLLING_BACK, FY_APPLY_ROLLED_BACK);
  assert_int_equal(c->reps[3].exit_code, 3);
  assert_contains(c->reps[3].tail, "boom");
  assert_contains(c->reps[3].message, "exited with 3");
  assert_string_equal(fy_apply_current_version(c->a), "1.0");
  assert_int_equal(count_of(c->path[P_HEALTH_LOG], "health"), 0);
  assert_int_equal(count_of(c->path[P_APPLY_LOG], "rollback v=2.0 prev=1.0"), 1);
}

static void applier_timeout_is_killed_and_rolled_back(void **state) {
  struct ctx *c = *state;
  c->cfg.apply_timeout_ms = 300;
  open_engine(c);
  install_v1(c);
  touch(c, "sleep_activate");
  struct fy_apply_artifact art = script_artifact("a2", "2.0");
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  start(c, &art);
  wait_rest(c);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  assert_true(secs < 4.0);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_ROLLED_BACK);
  expect(c, 3, FY_APPLY_ACTIVATING, FY_APPLY_ROLLING_BACK);
  assert_contains(c->reps[3].message, "timed out after 300 ms");
  assert_int_equal(c->reps[3].exit_code, -1);
  expect(c, 4, FY_APPLY_ROLLING_BACK, FY_APPLY_ROLLED_BACK);
}

static void rollback_failure_fails(void **state) {
  struct ctx *c = *state;
  open_engine(c);
  install_v1(c);
  touch(c, "fail_activate");
  touch(c, "fail_rollback");
  struct fy_apply_artifact art = script_artifact("a2", "2.0");
  start(c, &art);
  wait_rest(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_FAILED);
  expect(c, 3, FY_APPLY_ACTIVATING, FY_APPLY_ROLLING_BACK);
  expect(c, 4, FY_APPLY_ROLLING_BACK, FY_APPLY_FAILED);
  assert_int_equal(c->reps[4].exit_code, 4);
  assert_contains(c->reps[4].tail, "rollback broke");
  assert_contains(c->reps[4].message, "rollback");
  assert_string_equal(fy_apply_current_version(c->a), "1.0");
}

static void permanent_download_failure_fails(void **state) {
  struct ctx *c = *state;
  open_engine(c);
  c->dl_mode = DL_404;
  struct fy_apply_artifact art = script_artifact("a1", "1.0");
  start(c, &art);
  wait_rest(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_FAILED);
  assert_int_equal(c->nreps, 2);
  expect(c, 1, FY_APPLY_DOWNLOADING, FY_APPLY_FAILED);
  assert_contains(c->reps[1].message, "404 Not Found");
  assert_int_equal(count_of(c->path[P_APPLY_LOG], "activate"), 0);

  /* A file that does not match the manifest fails the same way. */
  c->dl_mode = DL_COPY;
  c->nreps = 0;
  art = script_artifact("a2", "2.0");
  art.sha256[0] ^= 1;
  start(c, &art);
  wait_rest(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_FAILED);
  expect(c, 1, FY_APPLY_DOWNLOADING, FY_APPLY_FAILED);
  assert_contains(c->reps[1].message, "sha256 mismatch");
  assert_int_equal(count_of(c->path[P_APPLY_LOG], "activate"), 0);
}

/* Health passes when any of 1 + retries runs passes; a transient download
 * failure is retried. */
static void health_retries_and_download_retry(void **state) {
  struct ctx *c = *state;
  char s[2048];
  snprintf(s, sizeof(s),
           "#!/bin/sh\necho health >> %s\n[ $(wc -l < %s) -ge 3 ] || { echo not yet; exit 1; }\n",
           c->path[P_HEALTH_LOG], c->path[P_HEALTH_LOG]);
  write_file(c->path[P_HEALTH], s, 0755);
  c->cfg.health_retries = 2;
  c->cfg.health_interval_ms = 20;
  c->dl_mode = DL_FLAKY;
  open_engine(c);
  struct fy_apply_artifact art = script_artifact("a1", "1.0");
  start(c, &art);
  wait_rest(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_SUCCESS);
  assert_int_equal(c->downloads, 2);
  assert_int_equal(count_of(c->path[P_HEALTH_LOG], "health"), 3);
  assert_int_equal(c->nreps, 5);

  /* One retry fewer than it needs: rolled back. */
  unlink(c->path[P_HEALTH_LOG]);
  c->cfg.health_retries = 1;
  close_engine(c);
  open_engine(c);
  c->nreps = 0;
  art = script_artifact("a2", "2.0");
  start(c, &art);
  wait_rest(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_ROLLED_BACK);
  assert_int_equal(count_of(c->path[P_HEALTH_LOG], "health"), 2);
  expect(c, 4, FY_APPLY_VERIFYING, FY_APPLY_ROLLING_BACK);
  assert_contains(c->reps[4].tail, "not yet");
}

static void bad_start_is_refused(void **state) {
  struct ctx *c = *state;
  open_engine(c);
  struct fy_err err;
  struct fy_apply_artifact art = script_artifact("../x", "1.0");
  assert_int_equal(fy_apply_start(c->a, &art, &err), FY_EINVAL);
  assert_contains(err.msg, "artifact id '../x'");
  art = script_artifact("a1", "1.0");
  snprintf(art.kind, sizeof(art.kind), "rpm");
  assert_int_equal(fy_apply_start(c->a, &art, &err), FY_EINVAL);
  assert_contains(err.msg, "kind 'rpm' is neither script nor nixos");
  art = script_artifact("a1", "");
  assert_int_equal(fy_apply_start(c->a, &art, &err), FY_EINVAL);
  assert_contains(err.msg, "version is empty");
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_IDLE);
  assert_int_equal(c->nreps, 0);
}

/* ---- crash recovery ------------------------------------------------------------- */

static int put_txn(struct fy_txn *t, void *user) {
  return fy_apply_record_put(t, user);
}

/* The record as a crash in state s would leave it, with 1.0 installed. */
static void write_record(struct ctx *c, enum fy_apply_state s, const char *id, const char *version) {
  struct fy_apply_record r = {0};
  r.state = s;
  r.art = script_artifact(id, version);
  snprintf(r.artifact_path, sizeof(r.artifact_path), "%s/%s.artifact", c->path[P_WORK], id);
  snprintf(r.previous_version, sizeof(r.previous_version), "1.0");
  snprintf(r.installed_version, sizeof(r.installed_version), "1.0");
  r.exit_code = -1;
  mkdir(c->path[P_WORK], 0700);
  if (s != FY_APPLY_DOWNLOADING) {
    char *src = read_all(c->path[P_SRC]);
    write_file(r.artifact_path, src, 0644);
    free(src);
  }
  struct fy_err err;
  if (fy_store_write(c->store, put_txn, &r, &err) < 0)
    fail_msg("put: %s", err.msg);
}

static void recover_downloading(void **state) {
  struct ctx *c = *state;
  write_record(c, FY_APPLY_DOWNLOADING, "a2", "2.0");
  open_engine(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_DOWNLOADING);
  wait_rest(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_SUCCESS);
  assert_int_equal(c->downloads, 1);
  expect(c, 0, FY_APPLY_DOWNLOADING, FY_APPLY_STAGED);
  assert_string_equal(fy_apply_current_version(c->a), "2.0");
  assert_string_equal(fy_apply_previous_version(c->a), "1.0");
}

static void recover_staged(void **state) {
  struct ctx *c = *state;
  write_record(c, FY_APPLY_STAGED, "a2", "2.0");
  open_engine(c);
  wait_rest(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_SUCCESS);
  assert_int_equal(c->downloads, 0);
  expect(c, 0, FY_APPLY_STAGED, FY_APPLY_ACTIVATING);
  assert_int_equal(count_of(c->path[P_APPLY_LOG], "activate v=2.0"), 1);
}

static void recover_activating_healthy(void **state) {
  struct ctx *c = *state;
  write_record(c, FY_APPLY_ACTIVATING, "a2", "2.0");
  open_engine(c);
  wait_rest(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_SUCCESS);
  assert_int_equal(c->nreps, 1);
  expect(c, 0, FY_APPLY_ACTIVATING, FY_APPLY_SUCCESS);
  assert_int_equal(count_of(c->path[P_APPLY_LOG], "activate"), 0);
  assert_int_equal(count_of(c->path[P_HEALTH_LOG], "health v=2.0"), 1);
  assert_string_equal(fy_apply_current_version(c->a), "2.0");
}

/* The agent died while its applier ran; the applier, in its own process
 * group, did not: the restarted engine waits for it before the health
 * check, so the two never run side by side. */
static void recover_activating_waits_for_a_running_applier(void **state) {
  struct ctx *c = *state;
  write_record(c, FY_APPLY_ACTIVATING, "a2", "2.0");
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    setpgid(0, 0);
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "sleep 0.6; echo orphan finished >> %s", c->path[P_HEALTH_LOG]);
    execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
    _exit(127);
  }
  setpgid(pid, pid);
  usleep(20000);
  char mark[600];
  snprintf(mark, sizeof(mark), "%s/applier.pid", c->path[P_WORK]);
  assert_int_equal(fy_childmark_write(mark, pid, NULL), 0);
  open_engine(c);
  /* reap it as init would have, so that it is not left a zombie */
  while (waitpid(pid, NULL, WNOHANG) == 0) {
    uv_run(&c->loop, UV_RUN_NOWAIT);
    usleep(10000);
  }
  wait_rest(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_SUCCESS);
  char *log = read_all(c->path[P_HEALTH_LOG]);
  assert_non_null(log);
  const char *orphan = strstr(log, "orphan finished"), *health = strstr(log, "health v=2.0");
  assert_non_null(orphan);
  assert_non_null(health);
  assert_true(orphan < health);
  free(log);
  assert_int_equal(access(mark, F_OK), -1);
}

static void recover_activating_unhealthy(void **state) {
  struct ctx *c = *state;
  touch(c, "unhealthy");
  write_record(c, FY_APPLY_ACTIVATING, "a2", "2.0");
  open_engine(c);
  wait_rest(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_ROLLED_BACK);
  expect(c, 0, FY_APPLY_ACTIVATING, FY_APPLY_ROLLING_BACK);
  expect(c, 1, FY_APPLY_ROLLING_BACK, FY_APPLY_ROLLED_BACK);
  assert_int_equal(count_of(c->path[P_APPLY_LOG], "activate"), 0);
  assert_int_equal(count_of(c->path[P_APPLY_LOG], "rollback v=2.0 prev=1.0"), 1);
  assert_string_equal(fy_apply_current_version(c->a), "1.0");
}

static void recover_verifying(void **state) {
  struct ctx *c = *state;
  write_record(c, FY_APPLY_VERIFYING, "a2", "2.0");
  open_engine(c);
  wait_rest(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_SUCCESS);
  expect(c, 0, FY_APPLY_VERIFYING, FY_APPLY_SUCCESS);
  assert_int_equal(count_of(c->path[P_APPLY_LOG], "activate"), 0);
}

static void recover_rolling_back(void **state) {
  struct ctx *c = *state;
  write_record(c, FY_APPLY_ROLLING_BACK, "a2", "2.0");
  open_engine(c);
  wait_rest(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_ROLLED_BACK);
  assert_int_equal(c->nreps, 1);
  expect(c, 0, FY_APPLY_ROLLING_BACK, FY_APPLY_ROLLED_BACK);
  assert_int_equal(count_of(c->path[P_APPLY_LOG], "rollback v=2.0 prev=1.0"), 1);
  assert_int_equal(count_of(c->path[P_APPLY_LOG], "activate"), 0);
}

static void resting_records_do_nothing(void **state) {
  struct ctx *c = *state;
  write_record(c, FY_APPLY_FAILED, "a2", "2.0");
  open_engine(c);
  for (int i = 0; i < 5; i++)
    uv_run(&c->loop, UV_RUN_NOWAIT);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_FAILED);
  assert_int_equal(c->nreps, 0);
  assert_int_equal(c->downloads, 0);
}

/* Closing the engine while the applier runs kills it; the reopened engine
 * does not run it again but checks health. */
static void close_mid_activation_resumes(void **state) {
  struct ctx *c = *state;
  open_engine(c);
  install_v1(c);
  touch(c, "sleep_activate");
  struct fy_apply_artifact art = script_artifact("a2", "2.0");
  start(c, &art);
  wait_state(c, FY_APPLY_ACTIVATING);
  for (int i = 0; i < 50 && count_of(c->path[P_APPLY_LOG], "activate v=2.0") == 0; i++)
    uv_run(&c->loop, UV_RUN_NOWAIT), usleep(10000);
  close_engine(c);
  c->nreps = 0;
  open_engine(c);
  wait_rest(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_SUCCESS);
  expect(c, 0, FY_APPLY_ACTIVATING, FY_APPLY_SUCCESS);
  assert_int_equal(count_of(c->path[P_APPLY_LOG], "activate v=2.0"), 1);
  assert_string_equal(fy_apply_current_version(c->a), "2.0");
}

/* Closing during a download: the late answer of the old download is
 * ignored, the reopened engine downloads again. */
static void close_mid_download_resumes(void **state) {
  struct ctx *c = *state;
  open_engine(c);
  c->dl_mode = DL_HANG;
  struct fy_apply_artifact art = script_artifact("a1", "1.0");
  start(c, &art);
  for (int i = 0; i < 100 && c->downloads == 0; i++)
    uv_run(&c->loop, UV_RUN_NOWAIT);
  assert_int_equal(c->downloads, 1);
  close_engine(c);
  fy_apply_download_done late = c->held_done;
  void *late_ctx = c->held_ctx;
  c->held_done = NULL;
  late(FY_EIO, "connection reset", false, late_ctx);
  c->dl_mode = DL_COPY;
  c->nreps = 0;
  open_engine(c);
  wait_rest(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_SUCCESS);
  assert_int_equal(c->downloads, 2);
  expect(c, 0, FY_APPLY_DOWNLOADING, FY_APPLY_STAGED);
}

/* ---- nixos ------------------------------------------------------------------- */

static void nix_setup(struct ctx *c) {
  char s[4096];
  snprintf(s, sizeof(s), "#!/bin/sh\necho \"nix-store $*\" >> %s\n", c->path[P_NIX_LOG]);
  write_file(c->path[P_NIX_STORE], s, 0755);
  snprintf(s, sizeof(s),
           "#!/bin/sh\necho \"nix-env $*\" >> %s\n"
           "case \"$3\" in\n"
           "  --set) readlink \"$2\" > \"$2.prev\"; ln -sfn \"$4\" \"$2\";;\n"
           "  --rollback) ln -sfn \"$(cat \"$2.prev\")\" \"$2\";;\n"
           "esac\n",
           c->path[P_NIX_LOG]);
  write_file(c->path[P_NIX_ENV], s, 0755);
  const char *which[] = {c->path[P_NEW], c->path[P_OLD]};
  const char *names[] = {"new", "old"};
  for (int i = 0; i < 2; i++) {
    char p[700];
    assert_int_equal(mkdir(which[i], 0755), 0);
    snprintf(p, sizeof(p), "%s/bin", which[i]);
    assert_int_equal(mkdir(p, 0755), 0);
    snprintf(p, sizeof(p), "%s/bin/switch-to-configuration", which[i]);
    snprintf(s, sizeof(s), "#!/bin/sh\necho \"%s-switch $*\" >> %s\n", names[i], c->path[P_NIX_LOG]);
    write_file(p, s, 0755);
  }
  assert_int_equal(symlink(c->path[P_OLD], c->path[P_PROFILE]), 0);
  c->cfg.nix_store = c->path[P_NIX_STORE];
  c->cfg.nix_env = c->path[P_NIX_ENV];
  c->cfg.profile = c->path[P_PROFILE];
  c->cfg.apply_command = NULL;
}

static struct fy_apply_artifact nix_artifact(const struct ctx *c, const char *id, const char *version) {
  struct fy_apply_artifact art = {0};
  snprintf(art.id, sizeof(art.id), "%s", id);
  snprintf(art.kind, sizeof(art.kind), "nixos");
  snprintf(art.version, sizeof(art.version), "%s", version);
  snprintf(art.uri, sizeof(art.uri), "%s", c->path[P_NEW]);
  return art;
}

static void nixos_applier(void **state) {
  struct ctx *c = *state;
  nix_setup(c);
  c->cfg.download = NULL; /* nothing to download */
  open_engine(c);
  struct fy_apply_artifact art = nix_artifact(c, "n1", "24.11.1");
  start(c, &art);
  wait_rest(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_SUCCESS);
  expect(c, 1, FY_APPLY_DOWNLOADING, FY_APPLY_STAGED);
  char want[4096];
  snprintf(want, sizeof(want),
           "nix-store --realise %s\n"
           "nix-env -p %s --set %s\n"
           "new-switch switch\n",
           c->path[P_NEW], c->path[P_PROFILE], c->path[P_NEW]);
  char *got = read_all(c->path[P_NIX_LOG]);
  assert_string_equal(got, want);
  free(got);
  assert_string_equal(fy_apply_current_version(c->a), "24.11.1");
}

static void nixos_rollback_is_idempotent(void **state) {
  struct ctx *c = *state;
  nix_setup(c);
  c->cfg.download = NULL;
  touch(c, "unhealthy");
  open_engine(c);
  struct fy_apply_artifact art = nix_artifact(c, "n1", "24.11.1");
  start(c, &art);
  wait_rest(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_ROLLED_BACK);
  char want[4096];
  snprintf(want, sizeof(want),
           "nix-store --realise %s\n"
           "nix-env -p %s --set %s\n"
           "new-switch switch\n"
           "nix-env -p %s --rollback\n"
           "old-switch switch\n",
           c->path[P_NEW], c->path[P_PROFILE], c->path[P_NEW], c->path[P_PROFILE]);
  char *got = read_all(c->path[P_NIX_LOG]);
  assert_string_equal(got, want);
  free(got);

  /* A crash after the profile moved back: rolling back again only switches. */
  close_engine(c);
  struct fy_apply_record r;
  struct fy_err err;
  open_engine(c);
  fy_apply_record(c->a, &r);
  close_engine(c);
  assert_string_equal(r.previous_link, c->path[P_OLD]);
  r.state = FY_APPLY_ROLLING_BACK;
  assert_int_equal(fy_store_write(c->store, put_txn, &r, &err), 0);
  unlink(c->path[P_NIX_LOG]);
  c->nreps = 0;
  open_engine(c);
  wait_rest(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_ROLLED_BACK);
  got = read_all(c->path[P_NIX_LOG]);
  assert_string_equal(got, "old-switch switch\n");
  free(got);
}

static void nixos_failing_step_fails_activation(void **state) {
  struct ctx *c = *state;
  nix_setup(c);
  char s[1024];
  snprintf(s, sizeof(s), "#!/bin/sh\necho \"nix-store $*\" >> %s\necho 'path is not valid' >&2\nexit 1\n",
           c->path[P_NIX_LOG]);
  write_file(c->path[P_NIX_STORE], s, 0755);
  open_engine(c);
  struct fy_apply_artifact art = nix_artifact(c, "n1", "24.11.1");
  start(c, &art);
  wait_rest(c);
  assert_int_equal(fy_apply_state(c->a), FY_APPLY_ROLLED_BACK);
  expect(c, 3, FY_APPLY_ACTIVATING, FY_APPLY_ROLLING_BACK);
  assert_contains(c->reps[3].tail, "path is not valid");
  assert_contains(c->reps[3].message, "nix-store exited with 1");
  /* The profile never moved: no nix-env --rollback. */
  char want[4096];
  snprintf(want, sizeof(want), "nix-store --realise %s\nold-switch switch\n", c->path[P_NEW]);
  char *got = read_all(c->path[P_NIX_LOG]);
  assert_string_equal(got, want);
  free(got);
}

/* ---- history and the record ------------------------------------------------------- */

static int hist_fn(uint64_t n, const struct fy_apply_record *r, void *user) {
  uint64_t *seen = user;
  if (seen[0] == 0)
    seen[1] = n;
  seen[0]++;
  seen[2] = n;
  (void)r;
  return 0;
}

static int hist_txn(struct fy_txn *t, void *user) {
  return fy_apply_history_each(t, hist_fn, user);
}

static void history_keeps_the_last_32(void **state) {
  struct ctx *c = *state;
  c->dl_mode = DL_404; /* quick attempts, no processes */
  open_engine(c);
  for (int i = 1; i <= 34; i++) {
    char id[16];
    snprintf(id, sizeof(id), "a%d", i);
    struct fy_apply_artifact art = script_artifact(id, "1.0");
    start(c, &art);
    wait_rest(c);
  }
  uint64_t seen[3] = {0};
  struct fy_err err;
  assert_int_equal(fy_store_read(c->store, hist_txn, seen, &err), 32);
  assert_int_equal(seen[0], 32);
  assert_int_equal(seen[1], 3);
  assert_int_equal(seen[2], 34);
}

static void record_round_trip_and_bad_input(void **state) {
  (void)state;
  struct fy_apply_record r = {0}, back;
  r.state = FY_APPLY_VERIFYING;
  r.art = script_artifact("a9", "9.9");
  snprintf(r.previous_version, sizeof(r.previous_version), "9.8");
  r.exit_code = -7;
  r.started_at = 1767225600000ull;
  struct fy_buf b = FY_BUF_INIT;
  struct fy_err err;
  assert_int_equal(fy_apply_record_encode(&r, &b, &err), 0);
  assert_int_equal(fy_apply_record_decode(b.data, b.len, &back, &err), 0);
  assert_memory_equal(&r, &back, sizeof(r));
  fy_buf_free(&b);

  /* {"version": "x"}: no state */
  const uint8_t no_state[] = {0x81, 0xa7, 'v', 'e', 'r', 's', 'i', 'o', 'n', 0xa1, 'x'};
  assert_int_equal(fy_apply_record_decode(no_state, sizeof(no_state), &back, &err), FY_EINVAL);
  assert_contains(err.msg, "state is missing");
  /* {"state": "bored"} */
  const uint8_t bad_state[] = {0x81, 0xa5, 's', 't', 'a', 't', 'e', 0xa5, 'b', 'o', 'r', 'e', 'd'};
  assert_int_equal(fy_apply_record_decode(bad_state, sizeof(bad_state), &back, &err), FY_EINVAL);
  assert_contains(err.msg, "state 'bored' is unknown");
  /* {"size": "x"} */
  const uint8_t bad_size[] = {0x81, 0xa4, 's', 'i', 'z', 'e', 0xa1, 'x'};
  assert_int_equal(fy_apply_record_decode(bad_size, sizeof(bad_size), &back, &err), FY_EINVAL);
  assert_contains(err.msg, "size is not an unsigned integer");
  const uint8_t truncated[] = {0x82, 0xa4, 's'};
  assert_int_equal(fy_apply_record_decode(truncated, sizeof(truncated), &back, &err), FY_EINVAL);
  assert_contains(err.msg, "apply record");

  enum fy_apply_state s;
  assert_int_equal(fy_apply_state_parse("rolling_back", &s), 0);
  assert_int_equal(s, FY_APPLY_ROLLING_BACK);
  assert_int_equal(fy_apply_state_parse("bored", &s), FY_EINVAL);
  assert_string_equal(fy_apply_state_name((enum fy_apply_state)99), "unknown");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(happy_path, setup, teardown),
      cmocka_unit_test_setup_teardown(health_failure_rolls_back, setup, teardown),
      cmocka_unit_test_setup_teardown(first_rollback_names_the_base_version, setup, teardown),
      cmocka_unit_test_setup_teardown(applier_failure_rolls_back, setup, teardown),
      cmocka_unit_test_setup_teardown(applier_timeout_is_killed_and_rolled_back, setup, teardown),
      cmocka_unit_test_setup_teardown(rollback_failure_fails, setup, teardown),
      cmocka_unit_test_setup_teardown(permanent_download_failure_fails, setup, teardown),
      cmocka_unit_test_setup_teardown(health_retries_and_download_retry, setup, teardown),
      cmocka_unit_test_setup_teardown(bad_start_is_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(recover_downloading, setup, teardown),
      cmocka_unit_test_setup_teardown(recover_staged, setup, teardown),
      cmocka_unit_test_setup_teardown(recover_activating_healthy, setup, teardown),
      cmocka_unit_test_setup_teardown(recover_activating_waits_for_a_running_applier, setup, teardown),
      cmocka_unit_test_setup_teardown(recover_activating_unhealthy, setup, teardown),
      cmocka_unit_test_setup_teardown(recover_verifying, setup, teardown),
      cmocka_unit_test_setup_teardown(recover_rolling_back, setup, teardown),
      cmocka_unit_test_setup_teardown(resting_records_do_nothing, setup, teardown),
      cmocka_unit_test_setup_teardown(close_mid_activation_resumes, setup, teardown),
      cmocka_unit_test_setup_teardown(close_mid_download_resumes, setup, teardown),
      cmocka_unit_test_setup_teardown(nixos_applier, setup, teardown),
      cmocka_unit_test_setup_teardown(nixos_rollback_is_idempotent, setup, teardown),
      cmocka_unit_test_setup_teardown(nixos_failing_step_fails_activation, setup, teardown),
      cmocka_unit_test_setup_teardown(history_keeps_the_last_32, setup, teardown),
      cmocka_unit_test_setup_teardown(record_round_trip_and_bad_input, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
