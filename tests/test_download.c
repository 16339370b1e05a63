/* Artifact downloads against a real HTTP server on loopback
 * (tests/data/http_range_server.py, found through FERRY_TEST_DATA) and
 * through file://: a full download; resume after a dropped connection and of a
 * pre-existing .part (the second request carries Range); a server that ignores
 * Range; 503 then success, and giving up when 503 never ends; 404 fails at
 * once; a refused connection is transient; hash mismatch and oversize are
 * permanent and leave nothing behind; cancel keeps the .part and a later
 * download resumes it; a verified dest is reused without a request; bad
 * requests; fy_download_verify_file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <sodium.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "agent/download.h"
#include "base/cleanup.h"

#define assert_contains(haystack, needle)                                                                    \
  do {                                                                                                       \
    if (!strstr((haystack), (needle)))                                                                       \
      fail_msg("message \"%s\" does not contain \"%s\"", (haystack), (needle));                              \
  } while (0)

#define ART_SIZE 300000u

extern char **environ;

/* Shared by the whole group: the server and the directory it serves. */
struct server {
  pid_t pid;
  int port;
  char root[256];
  char art[320]; /* root/a.bin */
  uint8_t *data;
  uint8_t sha[32];
};

struct ctx {
  struct server *srv;
  char dir[256];
  char dest[320];
  char part[330];
  char *logbuf;
  size_t loglen;
  FILE *logf;
  struct fy_log log;
};

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static void write_file(const char *path, const uint8_t *p, size_t n) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(p, 1, n, f), n);
  assert_int_equal(fclose(f), 0);
}

static uint8_t *read_file(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *p = malloc((size_t)len + 1);
  assert_non_null(p);
  assert_int_equal(fread(p, 1, (size_t)len, f), (size_t)len);
  fclose(f);
  *n = (size_t)len;
  return p;
}

static bool exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

static int group_setup(void **state) {
  if (sodium_init() < 0)
    return -1;
  const char *data_dir = getenv("FERRY_TEST_DATA");
  if (!data_dir) {
    fprintf(stderr, "FERRY_TEST_DATA is not set (meson test sets it)\n");
    return -1;
  }
  struct server *s = calloc(1, sizeof(*s));
  const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  snprintf(s->root, sizeof(s->root), "%s/ferry-download-srv-XXXXXX", base);
  if (!mkdtemp(s->root))
    return -1;
  s->data = malloc(ART_SIZE);
  randombytes_buf(s->data, ART_SIZE);
  crypto_hash_sha256(s->sha, s->data, ART_SIZE);
  snprintf(s->art, sizeof(s->art), "%s/a.bin", s->root);
  FILE *f = fopen(s->art, "wb");
  if (!f || fwrite(s->data, 1, ART_SIZE, f) != ART_SIZE || fclose(f) != 0)
    return -1;

  char script[512];
  snprintf(script, sizeof(script), "%s/http_range_server.py", data_dir);
  int fds[2];
  if (pipe(fds) != 0)
    return -1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  char python[] = "python3";
  char *argv[] = {python, script, s->root, NULL};
  int rc = posix_spawnp(&s->pid, "python3", &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc != 0) {
    fprintf(stderr, "cannot start python3 %s: %s\n", script, strerror(rc));
    return -1;
  }
  FILE *out = fdopen(fds[0], "r");
  char line[32];
  if (!out || !fgets(line, sizeof(line), out) || (s->port = atoi(line)) <= 0) {
    fprintf(stderr, "%s did not print a port\n", script);
    return -1;
  }
  fclose(out);
  *state = s;
  return 0;
}

static int group_teardown(void **state) {
  struct server *s = *state;
  if (!s)
    return 0;
  if (s->pid > 0) {
    kill(s->pid, SIGTERM);
    waitpid(s->pid, NULL, 0);
  }
  nftw(s->root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(s->data);
  free(s);
  return 0;
}

static int setup(void **state) {
  struct ctx *c = calloc(1, sizeof(*c));
  c->srv = *state;
  const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  snprintf(c->dir, sizeof(c->dir), "%s/ferry-download-XXXXXX", base);
  assert_non_null(mkdtemp(c->dir));
  snprintf(c->dest, sizeof(c->dest), "%s/artifact", c->dir);
  snprintf(c->part, sizeof(c->part), "%s.part", c->dest);
  c->logf = open_memstream(&c->logbuf, &c->loglen);
  fy_log_init(&c->log, c->logf, FY_LOG_DEBUG, "test", NULL);
  *state = c;
  return 0;
}

static int teardown(void **state) {
  struct ctx *c = *state;
  fclose(c->logf);
  free(c->logbuf);
  nftw(c->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  struct server *s = c->srv;
  free(c);
  *state = s;
  return 0;
}

/* ---- running one download ---------------------------------------------------- */

struct run {
  struct fy_download *d;
  struct fy_download_result res;
  int done_calls;
  uint64_t last_have, last_total;
  int progress_calls;
  bool cancel_on_progress;
};

static void on_done(const struct fy_download_result *r, void *user) {
  struct run *run = user;
  run->res = *r;
  run->done_calls++;
}

static void on_progress(uint64_t have, uint64_t total, void *user) {
  struct run *run = user;
  run->progress_calls++;
  run->last_have = have;
  run->last_total = total;
  if (run->cancel_on_progress && have > 0 && have < total)
    fy_download_cancel(run->d);
}

static struct fy_download_request request(struct ctx *c, const char *uri) {
  struct fy_download_request req = {
      .uri = uri,
      .sha256 = c->srv->sha,
      .size = ART_SIZE,
      .dest = c->dest,
      .backoff_min_ms = 5,
      .backoff_max_ms = 20,
      .connect_timeout_ms = 2000,
      .low_speed_time_ms = 5000,
      .log = &c->log,
      .progress = on_progress,
  };
  return req;
}

static void run_download(struct fy_download_request *req, struct run *run) {
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  req->progress_user = run;
  struct fy_err err;
  if (fy_download_start(&run->d, &loop, req, on_done, run, &err) != 0)
    fail_msg("start: %s", err.msg);
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(run->done_calls, 1);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static char *url(const struct ctx *c, const char *path_and_query) {
  static char buf[512]; /* test-only: one URL at a time */
  snprintf(buf, sizeof(buf), "http://127.0.0.1:%d%s", c->srv->port, path_and_query);
  return buf;
}

/* The server's view of a tag: "requests=N\nranges=...\n" (caller frees). */
static char *stats(const struct ctx *c, const char *tag) {
  char cmd[256];
  snprintf(cmd, sizeof(cmd), "/_stats?tag=%s", tag);
  /* Fetched with the module itself would be circular; use a raw socket. */
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->srv->port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  char q[400];
  int n = snprintf(q, sizeof(q), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", cmd);
  assert_int_equal(write(fd, q, (size_t)n), n);
  char *resp = calloc(1, 4096);
  size_t len = 0;
  ssize_t r;
  while (len < 4095 && (r = read(fd, resp + len, 4095 - len)) > 0)
    len += (size_t)r;
  close(fd);
  char *body = strstr(resp, "\r\n\r\n");
  assert_non_null(body);
  char *out = strdup(body + 4);
  free(resp);
  return out;
}

static void assert_dest_is_artifact(const struct ctx *c) {
  size_t n = 0;
  FY_AUTOFREE uint8_t *got = read_file(c->dest, &n);
  assert_non_null(got);
  assert_int_equal(n, ART_SIZE);
  assert_memory_equal(got, c->srv->data, ART_SIZE);
  assert_false(exists(c->part));
}

/* ---- tests ------------------------------------------------------------------- */

static void full_download(void **state) {
  struct ctx *c = *state;
  struct fy_download_request req = request(c, url(c, "/a.bin?tag=full"));
  struct run run = {0};
  run_download(&req, &run);
  assert_int_equal(run.res.code, 0);
  assert_string_equal(run.res.message, "");
  assert_int_equal(run.res.attempts, 1);
  assert_int_equal(run.res.resumed_from, 0);
  assert_dest_is_artifact(c);
  assert_true(run.progress_calls >= 1);
  assert_int_equal(run.last_have, ART_SIZE);
  assert_int_equal(run.last_total, ART_SIZE);
  fflush(c->logf);
  assert_contains(c->logbuf, "event=download.start");
  assert_contains(c->logbuf, "event=download.ok");
  assert_contains(c->logbuf, "event=download.progress");
  assert_contains(c->logbuf, "total=300000");
  FY_AUTOFREE char *st = stats(c, "full");
  assert_string_equal(st, "requests=1\nranges=-\n");
}

/* 5000 bytes that are not the artifact's, left in the .part file. */
static void write_junk_part(struct ctx *c) {
  uint8_t junk[5000];
  memset(junk, 0xee, sizeof(junk));
  write_file(c->part, junk, sizeof(junk));
}

/* Downloads path, which must succeed after `attempts` attempts, resuming
 * from `resumed`; the server's log for tag must read want_stats. */
static void expect_success(struct ctx *c, const char *path, int attempts, uint64_t resumed, const char *tag,
                           const char *want_stats) {
  struct fy_download_request req = request(c, url(c, path));
  struct run run = {0};
  run_download(&req, &run);
  assert_int_equal(run.res.code, 0);
  assert_int_equal(run.res.attempts, attempts);
  assert_int_equal(run.res.resumed_from, resumed);
  assert_dest_is_artifact(c);
  FY_AUTOFREE char *st = stats(c, tag);
  assert_string_equal(st, want_stats);
}

static void resume_after_dropped_connection(void **state) {
  struct ctx *c = *state;
  expect_success(c, "/a.bin?tag=drop&drop=100000", 2, 100000, "drop", "requests=2\nranges=-,bytes=100000-\n");
  fflush(c->logf);
  assert_contains(c->logbuf, "event=download.retry");
}

static void resume_of_an_existing_part(void **state) {
  struct ctx *c = *state;
  write_file(c->part, c->srv->data, 123456);
  expect_success(c, "/a.bin?tag=prepart", 1, 123456, "prepart", "requests=1\nranges=bytes=123456-\n");
}

static void server_ignoring_range_restarts_from_zero(void **state) {
  struct ctx *c = *state;
  /* Garbage in the .part must not survive a restart. */
  write_junk_part(c);
  expect_success(c, "/a.bin?tag=norange&norange=1", 2, 0, "norange", "requests=2\nranges=bytes=5000-,-\n");
}

static void range_not_satisfiable_restarts_from_zero(void **state) {
  struct ctx *c = *state;
  write_junk_part(c);
  expect_success(c, "/a.bin?tag=r416&n416=1", 2, 0, "r416", "requests=2\nranges=bytes=5000-,-\n");
}

static void service_unavailable_twice_then_success(void **state) {
  struct ctx *c = *state;
  struct fy_download_request req = request(c, url(c, "/a.bin?tag=s503&n503=2"));
  struct run run = {0};
  run_download(&req, &run);
  assert_int_equal(run.res.code, 0);
  assert_int_equal(run.res.attempts, 3);
  assert_dest_is_artifact(c);
  fflush(c->logf);
  assert_contains(c->logbuf, "HTTP 503 from http://127.0.0.1:");
}

static void endless_503_gives_up_after_max_attempts(void **state) {
  struct ctx *c = *state;
  struct fy_download_request req = request(c, url(c, "/a.bin?tag=s503x&n503=1000"));
  req.max_attempts = 3;
  struct run run = {0};
  run_download(&req, &run);
  assert_int_equal(run.res.code, FY_EIO);
  assert_false(run.res.permanent);
  assert_int_equal(run.res.attempts, 3);
  assert_contains(run.res.message, "giving up after 3 failed attempts: HTTP 503 from http://127.0.0.1:");
  assert_false(exists(c->dest));
}

static void not_found_fails_at_once(void **state) {
  struct ctx *c = *state;
  struct fy_download_request req = request(c, url(c, "/missing.bin?tag=nf"));
  struct run run = {0};
  run_download(&req, &run);
  assert_int_equal(run.res.code, FY_ENOENT);
  assert_true(run.res.permanent);
  assert_int_equal(run.res.attempts, 1);
  assert_contains(run.res.message, "HTTP 404 from http://127.0.0.1:");
  assert_contains(run.res.message, "/missing.bin?tag=nf");
  assert_false(exists(c->dest));
  fflush(c->logf);
  assert_contains(c->logbuf, "event=download.fail");
}

static void forbidden_and_teapot_are_permanent(void **state) {
  struct ctx *c = *state;
  struct fy_download_request req = request(c, url(c, "/a.bin?tag=s403&status=403"));
  struct run run = {0};
  run_download(&req, &run);
  assert_int_equal(run.res.code, FY_EPERM);
  assert_true(run.res.permanent);
  assert_int_equal(run.res.attempts, 1);
  assert_contains(run.res.message, "HTTP 403 from");

  req = request(c, url(c, "/a.bin?tag=s418&status=418"));
  struct run run2 = {0};
  run_download(&req, &run2);
  assert_int_equal(run2.res.code, FY_EUNSUPPORTED);
  assert_true(run2.res.permanent);
  assert_int_equal(run2.res.attempts, 1);
  assert_contains(run2.res.message, "HTTP 418 from");

  /* 429 and 408 are the server asking for patience. */
  req = request(c, url(c, "/a.bin?tag=s429&status=429"));
  req.max_attempts = 2;
  struct run run3 = {0};
  run_download(&req, &run3);
  assert_int_equal(run3.res.code, FY_EIO);
  assert_false(run3.res.permanent);
  assert_int_equal(run3.res.attempts, 2);
  assert_contains(run3.res.message, "HTTP 429 from");
}

static void refused_connection_is_transient(void **state) {
  struct ctx *c = *state;
  /* A port that was free a moment ago: nothing listens there. */
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t sl = sizeof(sa);
  assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
  close(fd);
  char uri[128];
  snprintf(uri, sizeof(uri), "http://127.0.0.1:%d/a.bin", ntohs(sa.sin_port));
  struct fy_download_request req = request(c, uri);
  req.max_attempts = 2;
  struct run run = {0};
  run_download(&req, &run);
  assert_int_equal(run.res.code, FY_EIO);
  assert_false(run.res.permanent);
  assert_int_equal(run.res.attempts, 2);
  assert_contains(run.res.message, "giving up after 2 failed attempts: http://127.0.0.1:");
}

static void hash_mismatch_is_permanent_and_leaves_nothing(void **state) {
  struct ctx *c = *state;
  struct fy_download_request req = request(c, url(c, "/a.bin?tag=badhash"));
  uint8_t wrong[32];
  memcpy(wrong, c->srv->sha, 32);
  wrong[0] ^= 1;
  req.sha256 = wrong;
  struct run run = {0};
  run_download(&req, &run);
  assert_int_equal(run.res.code, FY_ECRYPTO);
  assert_true(run.res.permanent);
  assert_int_equal(run.res.attempts, 1);
  char want_hex[65], got_hex[65], expect[200];
  sodium_bin2hex(want_hex, sizeof(want_hex), wrong, 32);
  sodium_bin2hex(got_hex, sizeof(got_hex), c->srv->sha, 32);
  snprintf(expect, sizeof(expect), "sha256 mismatch: expected %s, got %s", want_hex, got_hex);
  assert_contains(run.res.message, expect);
  assert_false(exists(c->part));
  assert_false(exists(c->dest));
}

static void short_file_is_a_permanent_size_mismatch(void **state) {
  struct ctx *c = *state;
  struct fy_download_request req = request(c, url(c, "/a.bin?tag=short"));
  req.size = ART_SIZE + 10;
  struct run run = {0};
  run_download(&req, &run);
  assert_int_equal(run.res.code, FY_EINVAL);
  assert_true(run.res.permanent);
  assert_contains(run.res.message, "size mismatch: expected 300010 bytes, got 300000");
  assert_false(exists(c->part));
  assert_false(exists(c->dest));
}

static void oversize_is_permanent(void **state) {
  struct ctx *c = *state;
  struct fy_download_request req = request(c, url(c, "/a.bin?tag=big&extra=1000"));
  struct run run = {0};
  run_download(&req, &run);
  assert_int_equal(run.res.code, FY_ELIMIT);
  assert_true(run.res.permanent);
  assert_int_equal(run.res.attempts, 1);
  assert_contains(run.res.message, "server sent more than 300000 bytes for http://127.0.0.1:");
  assert_false(exists(c->part));
  assert_false(exists(c->dest));
}

static void file_uri_full_and_resumed(void **state) {
  struct ctx *c = *state;
  char uri[400];
  snprintf(uri, sizeof(uri), "file://%s", c->srv->art);
  struct fy_download_request req = request(c, uri);
  struct run run = {0};
  run_download(&req, &run);
  assert_int_equal(run.res.code, 0);
  assert_int_equal(run.res.attempts, 1);
  assert_int_equal(run.res.resumed_from, 0);
  assert_dest_is_artifact(c);

  assert_int_equal(unlink(c->dest), 0);
  write_file(c->part, c->srv->data, 77777);
  struct run run2 = {0};
  run_download(&req, &run2);
  assert_int_equal(run2.res.code, 0);
  assert_int_equal(run2.res.attempts, 1);
  assert_int_equal(run2.res.resumed_from, 77777);
  assert_dest_is_artifact(c);
}

static void file_uri_missing_is_permanent(void **state) {
  struct ctx *c = *state;
  char uri[400];
  snprintf(uri, sizeof(uri), "file://%s/nope.bin", c->srv->root);
  struct fy_download_request req = request(c, uri);
  struct run run = {0};
  run_download(&req, &run);
  assert_int_equal(run.res.code, FY_ENOENT);
  assert_true(run.res.permanent);
  assert_int_equal(run.res.attempts, 1);
  assert_contains(run.res.message, uri);
  assert_false(exists(c->dest));
}

static void cancel_keeps_the_part_for_a_later_resume(void **state) {
  struct ctx *c = *state;
  struct fy_download_request req = request(c, url(c, "/a.bin?tag=slow&chunk=4096&delay_ms=20"));
  struct run run = {.cancel_on_progress = true};
  run_download(&req, &run);
  assert_int_equal(run.res.code, FY_EAGAIN);
  assert_false(run.res.permanent);
  assert_contains(run.res.message, "cancelled");
  assert_false(exists(c->dest));
  struct stat st;
  assert_int_equal(stat(c->part, &st), 0);
  assert_true(st.st_size > 0 && st.st_size < (off_t)ART_SIZE);

  req = request(c, url(c, "/a.bin?tag=afterslow"));
  struct run run2 = {0};
  run_download(&req, &run2);
  assert_int_equal(run2.res.code, 0);
  assert_int_equal(run2.res.resumed_from, (uint64_t)st.st_size);
  assert_dest_is_artifact(c);
}

static void on_cancel_timer(uv_timer_t *t) {
  struct run *run = t->data;
  fy_download_cancel(run->d);
  uv_close((uv_handle_t *)t, NULL);
}

static void cancel_cuts_a_backoff_wait_short(void **state) {
  struct ctx *c = *state;
  struct fy_download_request req = request(c, url(c, "/a.bin?tag=cancelwait&n503=1000"));
  req.backoff_min_ms = 60000;
  req.backoff_max_ms = 60000;
  struct run run = {0};
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  req.progress_user = &run;
  struct fy_err err;
  assert_int_equal(fy_download_start(&run.d, &loop, &req, on_done, &run, &err), 0);
  uv_timer_t t;
  assert_int_equal(uv_timer_init(&loop, &t), 0);
  t.data = &run;
  assert_int_equal(uv_timer_start(&t, on_cancel_timer, 300, 0), 0);
  uint64_t t0 = uv_hrtime();
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  assert_true(uv_hrtime() - t0 < 10ull * 1000 * 1000 * 1000);
  assert_int_equal(uv_loop_close(&loop), 0);
  assert_int_equal(run.done_calls, 1);
  assert_int_equal(run.res.code, FY_EAGAIN);
  assert_int_equal(run.res.attempts, 1);
  fflush(c->logf);
  assert_contains(c->logbuf, "event=download.retry");
  assert_contains(c->logbuf, "delay_ms=");
}

static void verified_dest_is_reused_without_a_request(void **state) {
  struct ctx *c = *state;
  write_file(c->dest, c->srv->data, ART_SIZE);
  struct fy_download_request req = request(c, url(c, "/missing.bin?tag=reuse"));
  struct run run = {0};
  run_download(&req, &run);
  assert_int_equal(run.res.code, 0);
  assert_int_equal(run.res.attempts, 0);
  char *st = stats(c, "reuse");
  bool untouched = strcmp(st, "requests=0\nranges=\n") == 0;
  free(st);
  assert_true(untouched);

  /* A complete, verified .part (a crash before the rename) is moved into place. */
  assert_int_equal(unlink(c->dest), 0);
  write_file(c->part, c->srv->data, ART_SIZE);
  struct run run2 = {0};
  run_download(&req, &run2);
  assert_int_equal(run2.res.code, 0);
  assert_int_equal(run2.res.attempts, 0);
  assert_dest_is_artifact(c);
}

static void bad_requests_are_refused(void **state) {
  struct ctx *c = *state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  struct fy_err err;
  struct fy_download *d = (struct fy_download *)1;
  struct fy_download_request req = request(c, NULL);
  assert_int_equal(fy_download_start(&d, &loop, &req, on_done, NULL, &err), FY_EINVAL);
  assert_null(d);
  assert_contains(err.msg, "uri is required");

  req = request(c, "http://127.0.0.1:1/x");
  req.dest = NULL;
  assert_int_equal(fy_download_start(&d, &loop, &req, on_done, NULL, &err), FY_EINVAL);
  assert_contains(err.msg, "dest is required");

  req = request(c, "http://127.0.0.1:1/x");
  req.sha256 = NULL;
  assert_int_equal(fy_download_start(&d, &loop, &req, on_done, NULL, &err), FY_EINVAL);
  assert_contains(err.msg, "sha256 is required");

  req = request(c, "http://127.0.0.1:1/x");
  req.backoff_min_ms = 100;
  req.backoff_max_ms = 10;
  assert_int_equal(fy_download_start(&d, &loop, &req, on_done, NULL, &err), FY_EINVAL);
  assert_contains(err.msg, "backoff_min_ms 100 is greater than backoff_max_ms 10");

  req = request(c, "gopher://127.0.0.1:1/x");
  struct run run = {0};
  run_download(&req, &run);
  assert_int_equal(run.res.code, FY_EINVAL);
  assert_true(run.res.permanent);
  assert_contains(run.res.message, "gopher://127.0.0.1:1/x");
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void verify_file_checks_size_and_hash(void **state) {
  struct ctx *c = *state;
  struct fy_err err;
  assert_int_equal(fy_download_verify_file(c->srv->art, c->srv->sha, ART_SIZE, &err), 0);

  assert_int_equal(fy_download_verify_file(c->srv->art, c->srv->sha, ART_SIZE - 1, &err), FY_EINVAL);
  assert_contains(err.msg, "size mismatch: expected 299999 bytes, got 300000");
  assert_contains(err.msg, c->srv->art);

  uint8_t wrong[32];
  memcpy(wrong, c->srv->sha, 32);
  wrong[31] ^= 0x80;
  assert_int_equal(fy_download_verify_file(c->srv->art, wrong, ART_SIZE, &err), FY_ECRYPTO);
  assert_contains(err.msg, "sha256 mismatch: expected ");
  assert_contains(err.msg, c->srv->art);

  char missing[400];
  snprintf(missing, sizeof(missing), "%s/none", c->dir);
  assert_int_equal(fy_download_verify_file(missing, c->srv->sha, ART_SIZE, &err), FY_ENOENT);
  assert_contains(err.msg, missing);

  /* The empty file has a hash too. */
  uint8_t empty[32];
  crypto_hash_sha256(empty, (const uint8_t *)"", 0);
  write_file(c->dest, (const uint8_t *)"", 0);
  assert_int_equal(fy_download_verify_file(c->dest, empty, 0, &err), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(full_download, setup, teardown),
      cmocka_unit_test_setup_teardown(resume_after_dropped_connection, setup, teardown),
      cmocka_unit_test_setup_teardown(resume_of_an_existing_part, setup, teardown),
      cmocka_unit_test_setup_teardown(server_ignoring_range_restarts_from_zero, setup, teardown),
      cmocka_unit_test_setup_teardown(range_not_satisfiable_restarts_from_zero, setup, teardown),
      cmocka_unit_test_setup_teardown(service_unavailable_twice_then_success, setup, teardown),
      cmocka_unit_test_setup_teardown(endless_503_gives_up_after_max_attempts, setup, teardown),
      cmocka_unit_test_setup_teardown(not_found_fails_at_once, setup, teardown),
      cmocka_unit_test_setup_teardown(forbidden_and_teapot_are_permanent, setup, teardown),
      cmocka_unit_test_setup_teardown(refused_connection_is_transient, setup, teardown),
      cmocka_unit_test_setup_teardown(hash_mismatch_is_permanent_and_leaves_nothing, setup, teardown),
      cmocka_unit_test_setup_teardown(short_file_is_a_permanent_size_mismatch, setup, teardown),
      cmocka_unit_test_setup_teardown(oversize_is_permanent, setup, teardown),
      cmocka_unit_test_setup_teardown(file_uri_full_and_resumed, setup, teardown),
      cmocka_unit_test_setup_teardown(file_uri_missing_is_permanent, setup, teardown),
      cmocka_unit_test_setup_teardown(cancel_keeps_the_part_for_a_later_resume, setup, teardown),
      cmocka_unit_test_setup_teardown(cancel_cuts_a_backoff_wait_short, setup, teardown),
      cmocka_unit_test_setup_teardown(verified_dest_is_reused_without_a_request, setup, teardown),
      cmocka_unit_test_setup_teardown(bad_requests_are_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(verify_file_checks_size_and_hash, setup, teardown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
