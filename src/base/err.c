#include "base/err.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int errno_to_code(int errnum) {
  switch (errnum) {
  case ENOENT:
  case ENOTDIR:
    return FY_ENOENT;
  case EEXIST:
    return FY_EEXIST;
  case EACCES:
  case EPERM:
  case EROFS:
    return FY_EPERM;
  case ENOMEM:
    return FY_ENOMEM;
  default:
    return FY_EIO;
  }
}

int fy_err_set(struct fy_err *err, int code, const char *fmt, ...) {
  if (err) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    err->code = code;
  }
  return code;
}

int fy_err_errno(struct fy_err *err, int errnum, const char *fmt, ...) {
  int code = errno_to_code(errnum);
  if (err) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof(err->msg) &&
        snprintf(err->msg + n, sizeof(err->msg) - (size_t)n, ": %s", strerror(errnum)) < 0)
      err->msg[n] = '\0';
    err->code = code;
  }
  return code;
}

int fy_err_prefix(struct fy_err *err, const char *fmt, ...) {
  if (!err)
    return 0;
  char old[FY_ERR_MSG_MAX];
  memcpy(old, err->msg, sizeof(old));
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
  va_end(ap);
  /* A message too long for the buffer is cut, never overrun. */
  if (n >= 0 && (size_t)n < sizeof(err->msg) &&
      snprintf(err->msg + n, sizeof(err->msg) - (size_t)n, ": %s", old) < 0)
    err->msg[n] = '\0';
  return err->code;
}

void fy_err_clear(struct fy_err *err) {
  if (err) {
    err->code = FY_OK;
    err->msg[0] = '\0';
  }
}

const char *fy_strerror(int code) {
  switch (code) {
  case FY_OK:
    return "success";
  case FY_EINVAL:
    return "malformed input";
  case FY_ENOENT:
    return "not found";
  case FY_EEXIST:
    return "already exists";
  case FY_EPERM:
    return "permission problem";
  case FY_EIO:
    return "I/O error";
  case FY_ENOMEM:
    return "out of memory";
  case FY_EUNSUPPORTED:
    return "not supported";
  case FY_ECRYPTO:
    return "cryptographic check failed";
  case FY_EUSAGE:
    return "usage error";
  case FY_ELIMIT:
    return "limit exceeded";
  case FY_ENOTBUILT:
    return "not built yet";
  case FY_EAGAIN:
    return "try again later";
  default:
    return "unknown error";
  }
}
