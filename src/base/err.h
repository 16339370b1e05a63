/* Error codes and messages.
 *
 * Every fallible function returns 0 (or a non-negative count) on success and a
 * negative FY_E* code on failure. When the caller passes a struct fy_err, the
 * callee also writes one line saying what was wrong and where ("key file
 * /etc/x: mode 0644 lets group or others read it"). The code is for programs,
 * the message is for people; both come from the place that knows the most. */
#ifndef FY_BASE_ERR_H
#define FY_BASE_ERR_H

#include <stddef.h>

enum fy_code {
  FY_OK = 0,
  FY_EINVAL = -1,       /* malformed input: a file, a frame, a flag value */
  FY_ENOENT = -2,       /* a named thing does not exist */
  FY_EEXIST = -3,       /* refusing to replace something that exists */
  FY_EPERM = -4,        /* permissions are wrong or too open */
  FY_EIO = -5,          /* the operating system failed an I/O call */
  FY_ENOMEM = -6,       /* allocation failed */
  FY_EUNSUPPORTED = -7, /* well-formed but not something ferry accepts */
  FY_ECRYPTO = -8,      /* a signature or key check failed */
  FY_EUSAGE = -9,       /* wrong command-line usage */
  FY_ELIMIT = -10,      /* a size or count limit was exceeded */
  FY_ENOTBUILT = -11,   /* the feature exists in the design, not yet in code */
  FY_EAGAIN = -12,      /* not now: a socket buffer is full; retry when it drains */
};

#define FY_ERR_MSG_MAX 512

struct fy_err {
  int code;
  char msg[FY_ERR_MSG_MAX];
};

/* Records code and a printf-style message in err (which may be NULL) and
 * returns code, so callers can write `return fy_err_set(err, FY_EINVAL, ...)`. */
int fy_err_set(struct fy_err *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* As fy_err_set, then appends ": <strerror(errnum)>" and picks the code that
 * best matches errnum (ENOENT -> FY_ENOENT, EACCES -> FY_EPERM, else FY_EIO). */
int fy_err_errno(struct fy_err *err, int errnum, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Puts `fmt...: ` in front of the message already in err; keeps the code. */
int fy_err_prefix(struct fy_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void fy_err_clear(struct fy_err *err);

/* A short, static description of a code ("malformed input"). */
const char *fy_strerror(int code);

#endif
