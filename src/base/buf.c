/* Growable byte buffer (see buf.h). */
#include "base/buf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FY_BUF_MIN_CAP 64

static int grow_to(struct fy_buf *b, size_t cap, struct fy_err *err) {
  uint8_t *p = realloc(b->data, cap);
  if (!p)
    return fy_err_set(err, FY_ENOMEM, "out of memory growing a buffer to %zu bytes", cap);
  b->data = p;
  b->cap = cap;
  return 0;
}

int fy_buf_reserve(struct fy_buf *b, size_t extra, struct fy_err *err) {
  if (extra <= b->cap - b->len)
    return 0;
  if (extra > SIZE_MAX - b->len)
    return fy_err_set(err, FY_ELIMIT, "buffer of %zu bytes cannot grow by %zu more", b->len, extra);
  return grow_to(b, b->len + extra, err);
}

int fy_buf_append(struct fy_buf *b, const void *p, size_t n, struct fy_err *err) {
  if (n == 0)
    return 0;
  if (n > b->cap - b->len) {
    if (n > SIZE_MAX - b->len)
      return fy_err_set(err, FY_ELIMIT, "buffer of %zu bytes cannot grow by %zu more", b->len, n);
    size_t need = b->len + n;
    size_t cap = b->cap < FY_BUF_MIN_CAP ? FY_BUF_MIN_CAP : b->cap;
    while (cap < need)
      cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    int rc = grow_to(b, cap, err);
    if (rc < 0)
      return rc;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

void fy_buf_consume(struct fy_buf *b, size_t n) {
  if (n >= b->len) {
    b->len = 0;
    return;
  }
  memmove(b->data, b->data + n, b->len - n);
  b->len -= n;
}

void fy_buf_free(struct fy_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
}
