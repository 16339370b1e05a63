/* Resumable, verified artifact downloads.
 *
 * A signed manifest names an artifact by uri, sha256 and size; this module
 * fetches it to a local path and guarantees that the path, once it exists,
 * holds exactly those bytes. libcurl does the transfer (file://, http://,
 * https://) on the libuv thread pool, so the loop never blocks.
 *
 * On disk: the bytes arrive in <dest>.part (mode 0600). A later download of
 * the same request continues from its size with a Range request; a server
 * that ignores Range (200 instead of 206) or answers 416 makes it start over
 * from 0. After the transfer the .part must measure `size` and hash to
 * `sha256` (SHA-256, streamed); then it is fsync'ed and renamed to dest and
 * the directory is fsync'ed, so dest never holds unverified bytes, across
 * crashes included. A dest that already verifies is reused without a request.
 *
 * Failures are transient (connection refused or reset, timeouts, a transfer
 * cut short, HTTP 408, 429 and 5xx: retried with jittered exponential backoff,
 * honouring Retry-After, up to max_attempts) or permanent (any other 4xx, a
 * missing file:// source, more bytes than `size`, a size or hash mismatch: the
 * .part is deleted then, since its bytes can never become the artifact, a
 * local I/O error). Cancellation keeps the .part for a later resume.
 *
 * Threads: the request is copied at start; the worker touches only its own
 * struct. progress() and done() run on the loop thread. Logging happens on
 * the loop too (event=download.progress every ~10% or 5 s, download.retry,
 * download.ok, download.fail).
 *
 * Ownership: the struct fy_download is owned by the module. It stays valid
 * until done() returns and is freed by the loop shortly after; do not touch
 * it after done() has run. The loop must keep running until done() ran. */
#ifndef FY_AGENT_DOWNLOAD_H
#define FY_AGENT_DOWNLOAD_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "base/err.h"
#include "base/log.h"

#define FY_DOWNLOAD_SHA256_LEN 32
#define FY_DOWNLOAD_MESSAGE_MAX 512

struct fy_download_request {
  const char *uri;                         /* file://, http://, https:// */
  const uint8_t *sha256;                   /* 32 bytes: what the finished file must hash to */
  uint64_t size;                           /* what it must measure */
  const char *dest;                        /* final path; the partial download lives at dest + ".part" */
  uint32_t max_attempts;                   /* transient failures before giving up; 0: 8 */
  uint64_t backoff_min_ms, backoff_max_ms; /* between attempts; 0: 1000 / 60000 */
  uint64_t connect_timeout_ms, low_speed_time_ms; /* 0: 15000 / 30000 (abort when < 1 KiB/s that long) */
  const struct fy_log *log;                       /* borrowed, may be NULL; used on the loop only */
  /* Called on the loop, at most ~2/s, and once more before done() (may be NULL). */
  void (*progress)(uint64_t have, uint64_t total, void *user);
  void *progress_user;
};

struct fy_download_result {
  int code;                              /* 0 or FY_E*: FY_EAGAIN cancelled, FY_ENOENT 404 or missing file,
                                            FY_EPERM 401/403, FY_ECRYPTO sha256 mismatch, FY_ELIMIT more than
                                            size bytes, FY_EINVAL size mismatch or bad uri, FY_EIO transient
                                            failures exhausted or a local I/O error, FY_EUNSUPPORTED other
                                            permanent HTTP answers */
  char message[FY_DOWNLOAD_MESSAGE_MAX]; /* one line; "" on success */
  bool permanent;                        /* retrying the same request cannot help */
  uint32_t attempts;                     /* requests made (0: dest or .part already verified) */
  uint64_t resumed_from;                 /* offset the last request started at (0: from scratch) */
};

struct fy_download;

/* Copies *req, starts the download on the libuv thread pool (uv_queue_work)
 * and returns at once; done(result, user) runs on the loop when it is over,
 * whatever the outcome (result is valid during the call only). *out receives
 * the handle for fy_download_cancel (out may be NULL). FY_EINVAL for a bad
 * request (naming the field), FY_ENOMEM, FY_EIO when libcurl or libuv refuse
 * to start; done() does not run then. */
int fy_download_start(struct fy_download **out, uv_loop_t *loop, const struct fy_download_request *req,
                      void (*done)(const struct fy_download_result *r, void *user), void *user,
                      struct fy_err *err);

/* Asks the download to stop (a transfer in flight aborts, a backoff wait ends);
 * the .part stays for a later resume. done() still runs, with FY_EAGAIN unless
 * the download finished first. Loop thread only; no-op after done() began. */
void fy_download_cancel(struct fy_download *d);

/* Checks that path measures size bytes and hashes to sha256 (streamed).
 * FY_ENOENT when it does not exist, FY_EINVAL "size mismatch: expected N
 * bytes, got M", FY_ECRYPTO "sha256 mismatch: expected <hex>, got <hex>",
 * FY_EIO for a read error; every message names the path. Blocks: call it off
 * the loop or for small files. */
int fy_download_verify_file(const char *path, const uint8_t sha256[FY_DOWNLOAD_SHA256_LEN], uint64_t size,
                            struct fy_err *err);

#endif
