/* Resumable, verified artifact downloads: libcurl on the libuv thread pool.
 *
 * The worker owns the transfer state (curl handle, .part descriptor, byte
 * count). What the loop needs while it runs (bytes so far, the last retry)
 * crosses over under `mu` and is announced with a uv_async_t, rate-limited in
 * the worker; the final result is read in the after-work callback, when the
 * worker is done with it. Cancellation is an atomic flag (checked by curl's
 * progress callback) plus a condition variable that cuts a backoff wait short. */
#include "agent/download.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "fy_config.h"

#define DEFAULT_ATTEMPTS 8
#define DEFAULT_BACKOFF_MIN_MS 1000
#define DEFAULT_BACKOFF_MAX_MS 60000
#define DEFAULT_CONNECT_TIMEOUT_MS 15000
#define DEFAULT_LOW_SPEED_TIME_MS 30000
#define LOW_SPEED_BYTES 1024
#define NOTIFY_EVERY_MS 500 /* progress crosses to the loop at most this often */
#define LOG_EVERY_MS 5000
#define HASH_CHUNK 65536
#define MAX_REDIRECTS 10

enum outcome {
  OUT_DONE,      /* the transfer ended well: verify and commit */
  OUT_TRANSIENT, /* back off and try again */
  OUT_PERMANENT, /* give up now; result already filled */
  OUT_RESTART,   /* the server cannot resume from here: truncate, go again at once */
  OUT_CANCELLED,
};

struct fy_download {
  /* Set at start, read-only afterwards (both threads read them). */
  uv_loop_t *loop;
  char *uri, *dest, *part, *dir;
  uint64_t size;
  uint64_t backoff_min_ms, backoff_max_ms, connect_timeout_ms, low_speed_time_ms;
  const struct fy_log *log;
  void (*progress)(uint64_t have, uint64_t total, void *user);
  void *progress_user;
  void (*done)(const struct fy_download_result *r, void *user);
  void *done_user;

  uv_work_t work;
  uv_async_t async;

  /* Shared, under mu. */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  uint64_t shared_have;
  uint64_t retry_delay_ms;

  /* Worker only (the loop reads `result` after the work callback returned). */
  CURL *curl;
  uint64_t have; /* bytes in the .part */
  uint64_t last_notify_ms;
  struct fy_download_result result;

  /* Loop only. */
  uint64_t logged_decile, logged_at_ms;

  uint32_t max_attempts;                   /* read-only */
  uint32_t retry_seq, retry_attempt;       /* shared, under mu */
  int fd;                                  /* worker */
  uint32_t seen_retry_seq;                 /* loop */
  atomic_bool cancel_flag;                 /* shared without a lock: curl polls it */
  bool cancelled;                          /* shared, under mu */
  bool local_failed;                       /* worker: the write callback refused, result holds why */
  bool done_began;                         /* loop */
  uint8_t sha256[FY_DOWNLOAD_SHA256_LEN];  /* read-only */
  char curl_errbuf[CURL_ERROR_SIZE];       /* worker */
  char retry_msg[FY_DOWNLOAD_MESSAGE_MAX]; /* shared, under mu */
};

/* ---- verification ----------------------------------------------------------- */

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Hashes the whole of fd from offset 0 and compares with want; `what` names
 * the file in messages. */
static int check_fd(int fd, const char *what, const uint8_t want[FY_DOWNLOAD_SHA256_LEN], uint64_t size,
                    struct fy_err *err) {
  struct stat st;
  if (fstat(fd, &st) != 0)
    return fy_err_errno(err, errno, "stat %s", what);
  if ((uint64_t)st.st_size != size)
    return fy_err_set(err, FY_EINVAL, "size mismatch: expected %" PRIu64 " bytes, got %" PRIu64 " (%s)", size,
                      (uint64_t)st.st_size, what);
  crypto_hash_sha256_state h;
  crypto_hash_sha256_init(&h);
  FY_AUTOFREE uint8_t *chunk = malloc(HASH_CHUNK);
  if (!chunk)
    return fy_err_set(err, FY_ENOMEM, "hash %s: out of memory", what);
  uint64_t off = 0;
  for (;;) {
    ssize_t n = pread(fd, chunk, HASH_CHUNK, (off_t)off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return fy_err_errno(err, errno, "read %s", what);
    if (n == 0)
      break;
    crypto_hash_sha256_update(&h, chunk, (unsigned long long)n);
    off += (uint64_t)n;
  }
  /* The file may have changed between fstat and the last read. */
  if (off != size)
    return fy_err_set(err, FY_EINVAL, "size mismatch: expected %" PRIu64 " bytes, got %" PRIu64 " (%s)", size,
                      off, what);
  uint8_t got[FY_DOWNLOAD_SHA256_LEN];
  crypto_hash_sha256_final(&h, got);
  if (sodium_memcmp(got, want, sizeof(got)) != 0) {
    char want_hex[2 * FY_DOWNLOAD_SHA256_LEN + 1], got_hex[2 * FY_DOWNLOAD_SHA256_LEN + 1];
    sodium_bin2hex(want_hex, sizeof(want_hex), want, FY_DOWNLOAD_SHA256_LEN);
    sodium_bin2hex(got_hex, sizeof(got_hex), got, sizeof(got));
    return fy_err_set(err, FY_ECRYPTO, "sha256 mismatch: expected %s, got %s (%s)", want_hex, got_hex, what);
  }
  return 0;
}

int fy_download_verify_file(const char *path, const uint8_t sha256[FY_DOWNLOAD_SHA256_LEN], uint64_t size,
                            struct fy_err *err) {
  if (!path || !sha256)
    return fy_err_set(err, FY_EINVAL, "verify: path and sha256 are required");
  if (sodium_init() < 0)
    return fy_err_set(err, FY_EIO, "verify %s: libsodium failed to initialise", path);
  FY_AUTOCLOSE int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return fy_err_errno(err, errno, "open %s", path);
  return check_fd(fd, path, sha256, size, err);
}

/* ---- worker ----------------------------------------------------------------- */

static void fail(struct fy_download *d, int code, bool permanent, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void fail(struct fy_download *d, int code, bool permanent, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(d->result.message, sizeof(d->result.message), fmt, ap);
  va_end(ap);
  d->result.code = code;
  d->result.permanent = permanent;
}

static void fail_err(struct fy_download *d, const struct fy_err *err, bool permanent) {
  fail(d, err->code, permanent, "%s", err->msg);
}

/* Hands the byte count to the loop; without force at most every NOTIFY_EVERY_MS. */
static void notify(struct fy_download *d, bool force) {
  uint64_t now = mono_ms();
  if (!force && d->last_notify_ms != 0 && now - d->last_notify_ms < NOTIFY_EVERY_MS)
    return;
  d->last_notify_ms = now;
  pthread_mutex_lock(&d->mu);
  d->shared_have = d->have;
  pthread_mutex_unlock(&d->mu);
  uv_async_send(&d->async);
}

static size_t on_write(char *p, size_t sz, size_t n, void *user) {
  struct fy_download *d = user;
  size_t len = sz * n;
  long status = 0;
  curl_easy_getinfo(d->curl, CURLINFO_RESPONSE_CODE, &status);
  /* An error page or a redirect body is not artifact bytes (file:// has no status). */
  if (status != 0 && status != 200 && status != 206)
    return len;
  if (len > d->size - d->have) {
    fail(d, FY_ELIMIT, true, "server sent more than %" PRIu64 " bytes for %s", d->size, d->uri);
    d->local_failed = true;
    return 0; /* CURLE_WRITE_ERROR */
  }
  size_t off = 0;
  while (off < len) {
    ssize_t w = pwrite(d->fd, p + off, len - off, (off_t)(d->have + off));
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0) {
      struct fy_err err;
      fy_err_errno(&err, errno, "write %s", d->part);
      fail_err(d, &err, true);
      d->local_failed = true;
      return 0;
    }
    off += (size_t)w;
  }
  d->have += len;
  notify(d, false);
  return len;
}

static int on_xferinfo(void *user, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow) {
  (void)dltotal;
  (void)dlnow;
  (void)ultotal;
  (void)ulnow;
  struct fy_download *d = user;
  if (atomic_load(&d->cancel_flag))
    return 1; /* CURLE_ABORTED_BY_CALLBACK */
  notify(d, false);
  return 0;
}

static int truncate_part(struct fy_download *d) {
  if (ftruncate(d->fd, 0) != 0) {
    struct fy_err err;
    fy_err_errno(&err, errno, "truncate %s", d->part);
    fail_err(d, &err, true);
    return -1;
  }
  d->have = 0;
  return 0;
}

static int setup_curl(struct fy_download *d) {
  CURL *c = d->curl;
  long low_speed_s = (long)((d->low_speed_time_ms + 999) / 1000);
  int bad = 0;
  bad |= curl_easy_setopt(c, CURLOPT_URL, d->uri) != CURLE_OK;
  bad |= curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "file,http,https") != CURLE_OK;
  bad |= curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https") != CURLE_OK;
  bad |= curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L) != CURLE_OK;
  bad |= curl_easy_setopt(c, CURLOPT_MAXREDIRS, (long)MAX_REDIRECTS) != CURLE_OK;
  /* Signals are process-wide; this runs on a pool thread. */
  bad |= curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L) != CURLE_OK;
  bad |= curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)d->connect_timeout_ms) != CURLE_OK;
  bad |= curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, (long)LOW_SPEED_BYTES) != CURLE_OK;
  bad |= curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, low_speed_s > 0 ? low_speed_s : 1L) != CURLE_OK;
  bad |= curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L) != CURLE_OK;
  bad |= curl_easy_setopt(c, CURLOPT_USERAGENT, "ferry/" FY_VERSION) != CURLE_OK;
  bad |= curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write) != CURLE_OK;
  bad |= curl_easy_setopt(c, CURLOPT_WRITEDATA, d) != CURLE_OK;
  bad |= curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L) != CURLE_OK;
  bad |= curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_xferinfo) != CURLE_OK;
  bad |= curl_easy_setopt(c, CURLOPT_XFERINFODATA, d) != CURLE_OK;
  bad |= curl_easy_setopt(c, CURLOPT_ERRORBUFFER, d->curl_errbuf) != CURLE_OK;
  /* No CURLOPT_ACCEPT_ENCODING: the bytes on disk must be the artifact's, and
   * Range offsets count encoded bytes. */
  return bad ? -1 : 0;
}

static const char *curl_message(const struct fy_download *d, CURLcode cc) {
  return d->curl_errbuf[0] ? d->curl_errbuf : curl_easy_strerror(cc);
}

/* One request from d->have on. */
static enum outcome attempt(struct fy_download *d, uint64_t *retry_after_ms) {
  *retry_after_ms = 0;
  d->local_failed = false;
  d->curl_errbuf[0] = '\0';
  d->result.attempts++;
  d->result.resumed_from = d->have;
  curl_easy_setopt(d->curl, CURLOPT_RESUME_FROM_LARGE, (curl_off_t)d->have);
  CURLcode cc = curl_easy_perform(d->curl);
  long status = 0;
  curl_easy_getinfo(d->curl, CURLINFO_RESPONSE_CODE, &status);

  if (d->local_failed)
    return OUT_PERMANENT;
  if (atomic_load(&d->cancel_flag))
    return OUT_CANCELLED;
  switch (cc) {
  case CURLE_OK:
    break;
  case CURLE_RANGE_ERROR:         /* HTTP 200 to a Range request */
  case CURLE_BAD_DOWNLOAD_RESUME: /* file:// shorter than the .part */
    if (d->have > 0)
      return OUT_RESTART;
    fail(d, FY_EIO, false, "%s: %s", d->uri, curl_message(d, cc));
    return OUT_TRANSIENT;
  case CURLE_FILE_COULDNT_READ_FILE:
    fail(d, FY_ENOENT, true, "%s: %s", d->uri, curl_message(d, cc));
    return OUT_PERMANENT;
  case CURLE_UNSUPPORTED_PROTOCOL:
  case CURLE_URL_MALFORMAT:
    fail(d, FY_EINVAL, true, "%s: %s", d->uri, curl_message(d, cc));
    return OUT_PERMANENT;
  case CURLE_TOO_MANY_REDIRECTS:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_LOGIN_DENIED:
  case CURLE_REMOTE_ACCESS_DENIED:
    fail(d, FY_EUNSUPPORTED, true, "%s: %s", d->uri, curl_message(d, cc));
    return OUT_PERMANENT;
  default:
    /* Connection refused or reset, timeouts, a transfer cut short (PARTIAL_FILE),
     * name resolution: the network's weather, worth another try. */
    fail(d, FY_EIO, false, "%s: %s", d->uri, curl_message(d, cc));
    return OUT_TRANSIENT;
  }

  if (status == 0 || status == 200 || status == 206)
    return OUT_DONE;
  if (status == 416 && d->have > 0)
    return OUT_RESTART; /* curl reports a 416 to a resume as success */
  if (status == 408 || status == 429 || (status >= 500 && status <= 599)) {
    curl_off_t ra = 0;
    if (curl_easy_getinfo(d->curl, CURLINFO_RETRY_AFTER, &ra) == CURLE_OK && ra > 0)
      *retry_after_ms = (uint64_t)ra * 1000u;
    fail(d, FY_EIO, false, "HTTP %ld from %s", status, d->uri);
    return OUT_TRANSIENT;
  }
  int code = status == 404 || status == 410   ? FY_ENOENT
             : status == 401 || status == 403 ? FY_EPERM
                                              : FY_EUNSUPPORTED;
  fail(d, code, true, "HTTP %ld from %s", status, d->uri);
  return OUT_PERMANENT;
}

/* The n-th wait lasts between half of and all of min * 2^(n-1), capped at
 * max; a server's Retry-After lengthens it (within max). The jitter keeps a
 * fleet that lost its server at once from coming back at once. */
static uint64_t backoff_ms(const struct fy_download *d, uint32_t failures, uint64_t retry_after_ms) {
  uint64_t base = d->backoff_min_ms;
  for (uint32_t i = 1; i < failures && base < d->backoff_max_ms && base <= UINT64_MAX / 2; i++)
    base *= 2;
  if (base > d->backoff_max_ms)
    base = d->backoff_max_ms;
  uint64_t span = base - base / 2;
  uint64_t delay = base / 2 + (span < UINT32_MAX ? randombytes_uniform((uint32_t)span + 1) : span);
  if (retry_after_ms > delay)
    delay = retry_after_ms;
  return delay < d->backoff_max_ms ? delay : d->backoff_max_ms;
}

/* Sleeps ms unless cancelled first; true when cancelled. */
static bool wait_or_cancel(struct fy_download *d, uint64_t ms) {
  struct timespec until;
  clock_gettime(CLOCK_MONOTONIC, &until);
  until.tv_sec += (time_t)(ms / 1000);
  until.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&d->mu);
  while (!d->cancelled && pthread_cond_timedwait(&d->cv, &d->mu, &until) != ETIMEDOUT) {
  }
  bool cancelled = d->cancelled;
  pthread_mutex_unlock(&d->mu);
  return cancelled;
}

static void announce_retry(struct fy_download *d, uint32_t failures, uint64_t delay_ms) {
  pthread_mutex_lock(&d->mu);
  d->retry_seq++;
  d->retry_attempt = failures;
  d->retry_delay_ms = delay_ms;
  snprintf(d->retry_msg, sizeof(d->retry_msg), "%s", d->result.message);
  pthread_mutex_unlock(&d->mu);
  uv_async_send(&d->async);
}

static int fsync_dir(const char *dir) {
  FY_AUTOCLOSE int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0 || fsync(fd) != 0)
    return -1;
  return 0;
}

/* Verifies the .part and moves it into place. Bytes that fail verification
 * can never become the artifact, so they go. */
static void commit(struct fy_download *d) {
  struct fy_err err;
  if (check_fd(d->fd, d->uri, d->sha256, d->size, &err) != 0) {
    unlink(d->part);
    fail_err(d, &err, true);
    return;
  }
  if (fsync(d->fd) != 0) {
    fy_err_errno(&err, errno, "fsync %s", d->part);
    fail_err(d, &err, true);
    return;
  }
  close(d->fd);
  d->fd = -1;
  if (rename(d->part, d->dest) != 0) {
    fy_err_errno(&err, errno, "rename %s to %s", d->part, d->dest);
    fail_err(d, &err, true);
    return;
  }
  if (fsync_dir(d->dir) != 0) {
    fy_err_errno(&err, errno, "fsync %s", d->dir);
    fail_err(d, &err, true);
    return;
  }
  d->result.code = 0;
  d->result.message[0] = '\0';
  d->result.permanent = false;
}

static void transfer(struct fy_download *d) {
  struct fy_err err;
  if (fy_download_verify_file(d->dest, d->sha256, d->size, NULL) == 0) {
    d->have = d->size;
    return; /* a crash after the rename: nothing left to do */
  }
  d->fd = open(d->part, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (d->fd < 0) {
    fy_err_errno(&err, errno, "open %s", d->part);
    fail_err(d, &err, true);
    return;
  }
  struct stat st;
  if (fstat(d->fd, &st) != 0) {
    fy_err_errno(&err, errno, "stat %s", d->part);
    fail_err(d, &err, true);
    return;
  }
  d->have = (uint64_t)st.st_size;
  d->result.resumed_from = d->have;
  if (d->have > d->size && truncate_part(d) != 0)
    return;
  if (d->have == d->size) {
    /* Complete but never renamed (a crash in between), or stale bytes. */
    if (check_fd(d->fd, d->part, d->sha256, d->size, NULL) == 0) {
      commit(d);
      return;
    }
    if (truncate_part(d) != 0)
      return;
  }

  d->curl = curl_easy_init();
  if (!d->curl || setup_curl(d) != 0) {
    fail(d, FY_EIO, true, "libcurl: cannot set up a transfer for %s", d->uri);
    return;
  }
  uint32_t failures = 0;
  for (;;) {
    if (atomic_load(&d->cancel_flag)) {
      fail(d, FY_EAGAIN, false, "download of %s cancelled", d->uri);
      return;
    }
    uint64_t retry_after_ms;
    switch (attempt(d, &retry_after_ms)) {
    case OUT_DONE:
      commit(d);
      return;
    case OUT_PERMANENT:
      if (d->result.code == FY_ELIMIT)
        unlink(d->part); /* not the artifact's bytes */
      return;
    case OUT_CANCELLED:
      fail(d, FY_EAGAIN, false, "download of %s cancelled", d->uri);
      return;
    case OUT_RESTART:
      /* After truncation no Range goes out, so this cannot repeat. */
      if (truncate_part(d) != 0)
        return;
      continue;
    case OUT_TRANSIENT:
      break;
    }
    failures++;
    if (failures >= d->max_attempts) {
      char last[FY_DOWNLOAD_MESSAGE_MAX];
      snprintf(last, sizeof(last), "%s", d->result.message);
      fail(d, FY_EIO, false, "giving up after %" PRIu32 " failed attempts: %s", failures, last);
      return;
    }
    uint64_t delay = backoff_ms(d, failures, retry_after_ms);
    announce_retry(d, failures, delay);
    if (wait_or_cancel(d, delay)) {
      fail(d, FY_EAGAIN, false, "download of %s cancelled", d->uri);
      return;
    }
  }
}

static void on_work(uv_work_t *w) {
  struct fy_download *d = w->data;
  transfer(d);
  if (d->curl) {
    curl_easy_cleanup(d->curl);
    d->curl = NULL;
  }
  if (d->fd >= 0) {
    close(d->fd);
    d->fd = -1;
  }
  notify(d, true);
}

/* ---- loop ------------------------------------------------------------------- */

static void report(struct fy_download *d, bool final) {
  pthread_mutex_lock(&d->mu);
  uint64_t have = d->shared_have;
  bool retried = d->retry_seq != d->seen_retry_seq;
  d->seen_retry_seq = d->retry_seq;
  uint32_t retry_attempt = d->retry_attempt;
  uint64_t retry_delay = d->retry_delay_ms;
  char retry_msg[FY_DOWNLOAD_MESSAGE_MAX];
  snprintf(retry_msg, sizeof(retry_msg), "%s", d->retry_msg);
  pthread_mutex_unlock(&d->mu);

  char a[24], b[24];
  if (retried) {
    snprintf(a, sizeof(a), "%" PRIu32, retry_attempt);
    snprintf(b, sizeof(b), "%" PRIu64, retry_delay);
    fy_warn(d->log, "download.retry", "uri", d->uri, "failures", a, "delay_ms", b, "error", retry_msg);
  }
  if (d->progress)
    d->progress(have, d->size, d->progress_user);
  if (final)
    return;
  uint64_t decile = d->size ? have * 10 / d->size : 10;
  uint64_t now = uv_now(d->loop);
  if (decile > d->logged_decile || now - d->logged_at_ms >= LOG_EVERY_MS) {
    d->logged_decile = decile;
    d->logged_at_ms = now;
    snprintf(a, sizeof(a), "%" PRIu64, have);
    snprintf(b, sizeof(b), "%" PRIu64, d->size);
    fy_info(d->log, "download.progress", "uri", d->uri, "have", a, "total", b);
  }
}

static void on_async(uv_async_t *h) {
  report(h->data, false);
}

static void free_fields(struct fy_download *d) {
  free(d->uri);
  free(d->dest);
  free(d->part);
  free(d->dir);
  free(d);
  curl_global_cleanup();
}

static void download_free(struct fy_download *d) {
  pthread_cond_destroy(&d->cv);
  pthread_mutex_destroy(&d->mu);
  free_fields(d);
}

static void on_closed(uv_handle_t *h) {
  download_free(h->data);
}

static void on_after_work(uv_work_t *w, int status) {
  struct fy_download *d = w->data;
  if (status != 0)
    fail(d, FY_EAGAIN, false, "download of %s cancelled before it started", d->uri);
  report(d, true);
  char a[24], b[24];
  snprintf(a, sizeof(a), "%" PRIu32, d->result.attempts);
  snprintf(b, sizeof(b), "%" PRIu64, d->result.resumed_from);
  if (d->result.code == 0)
    fy_info(d->log, "download.ok", "uri", d->uri, "dest", d->dest, "attempts", a, "resumed_from", b);
  else
    fy_log_kv(d->log, d->result.code == FY_EAGAIN ? FY_LOG_INFO : FY_LOG_ERROR, "download.fail", "uri",
              d->uri, "attempts", a, "permanent", d->result.permanent ? "true" : "false", "error",
              d->result.message, (const char *)0);
  d->done_began = true;
  d->done(&d->result, d->done_user);
  uv_close((uv_handle_t *)&d->async, on_closed);
}

static char *dir_of(const char *path) {
  const char *slash = strrchr(path, '/');
  if (!slash)
    return strdup(".");
  if (slash == path)
    return strdup("/");
  return strndup(path, (size_t)(slash - path));
}

static int init_sync(struct fy_download *d) {
  pthread_condattr_t ca;
  if (pthread_condattr_init(&ca) != 0)
    return -1;
  int rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  if (rc == 0)
    rc = pthread_cond_init(&d->cv, &ca);
  pthread_condattr_destroy(&ca);
  if (rc != 0)
    return -1;
  if (pthread_mutex_init(&d->mu, NULL) != 0) {
    pthread_cond_destroy(&d->cv);
    return -1;
  }
  return 0;
}

int fy_download_start(struct fy_download **out, uv_loop_t *loop, const struct fy_download_request *req,
                      void (*done)(const struct fy_download_result *r, void *user), void *user,
                      struct fy_err *err) {
  if (out)
    *out = NULL;
  if (!loop || !req || !done)
    return fy_err_set(err, FY_EINVAL, "download: loop, request and done callback are required");
  if (!req->uri || !req->uri[0])
    return fy_err_set(err, FY_EINVAL, "download: uri is required");
  if (!req->dest || !req->dest[0])
    return fy_err_set(err, FY_EINVAL, "download %s: dest is required", req->uri);
  if (!req->sha256)
    return fy_err_set(err, FY_EINVAL, "download %s: sha256 is required", req->uri);
  uint64_t bmin = req->backoff_min_ms ? req->backoff_min_ms : DEFAULT_BACKOFF_MIN_MS;
  uint64_t bmax = req->backoff_max_ms ? req->backoff_max_ms : DEFAULT_BACKOFF_MAX_MS;
  if (bmin > bmax)
    return fy_err_set(err, FY_EINVAL,
                      "download %s: backoff_min_ms %" PRIu64 " is greater than backoff_max_ms %" PRIu64,
                      req->uri, bmin, bmax);
  uint64_t connect_ms = req->connect_timeout_ms ? req->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
  uint64_t low_ms = req->low_speed_time_ms ? req->low_speed_time_ms : DEFAULT_LOW_SPEED_TIME_MS;
  if (connect_ms > LONG_MAX || low_ms / 1000 > LONG_MAX)
    return fy_err_set(err, FY_EINVAL, "download %s: timeout out of range", req->uri);
  if (sodium_init() < 0)
    return fy_err_set(err, FY_EIO, "download %s: libsodium failed to initialise", req->uri);
  /* Reference-counted; called on the loop thread, never concurrently with a
   * worker's first use. Released in download_free. */
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
    return fy_err_set(err, FY_EIO, "download %s: libcurl failed to initialise", req->uri);

  struct fy_download *d = calloc(1, sizeof(*d));
  if (!d) {
    curl_global_cleanup();
    return fy_err_set(err, FY_ENOMEM, "download %s: out of memory", req->uri);
  }
  d->fd = -1;
  d->loop = loop;
  d->uri = strdup(req->uri);
  d->dest = strdup(req->dest);
  d->dir = dir_of(req->dest);
  size_t dl = strlen(req->dest);
  d->part = malloc(dl + sizeof(".part"));
  if (d->part) {
    memcpy(d->part, req->dest, dl);
    memcpy(d->part + dl, ".part", sizeof(".part"));
  }
  if (!d->uri || !d->dest || !d->dir || !d->part) {
    free_fields(d);
    return fy_err_set(err, FY_ENOMEM, "download %s: out of memory", req->uri);
  }
  memcpy(d->sha256, req->sha256, FY_DOWNLOAD_SHA256_LEN);
  d->size = req->size;
  d->max_attempts = req->max_attempts ? req->max_attempts : DEFAULT_ATTEMPTS;
  d->backoff_min_ms = bmin;
  d->backoff_max_ms = bmax;
  d->connect_timeout_ms = connect_ms;
  d->low_speed_time_ms = low_ms;
  d->log = req->log;
  d->progress = req->progress;
  d->progress_user = req->progress_user;
  d->done = done;
  d->done_user = user;
  atomic_init(&d->cancel_flag, false);
  if (init_sync(d) != 0) {
    free_fields(d);
    return fy_err_set(err, FY_EIO, "download %s: cannot initialise a mutex", req->uri);
  }
  int rc = uv_async_init(loop, &d->async, on_async);
  if (rc != 0) {
    download_free(d);
    return fy_err_set(err, FY_EIO, "download %s: uv_async_init: %s", req->uri, uv_strerror(rc));
  }
  d->async.data = d;
  d->work.data = d;
  rc = uv_queue_work(loop, &d->work, on_work, on_after_work);
  if (rc != 0) {
    uv_close((uv_handle_t *)&d->async, on_closed);
    return fy_err_set(err, FY_EIO, "download %s: uv_queue_work: %s", req->uri, uv_strerror(rc));
  }
  char sz[24];
  snprintf(sz, sizeof(sz), "%" PRIu64, d->size);
  fy_info(d->log, "download.start", "uri", d->uri, "dest", d->dest, "size", sz);
  if (out)
    *out = d;
  return 0;
}

void fy_download_cancel(struct fy_download *d) {
  if (!d || d->done_began)
    return;
  pthread_mutex_lock(&d->mu);
  d->cancelled = true;
  atomic_store(&d->cancel_flag, true);
  pthread_cond_signal(&d->cv);
  pthread_mutex_unlock(&d->mu);
}
