/* A growable byte buffer: what encoders append to and stream readers collect
 * partial input in.
 *
 * `data[0..len)` holds the bytes, `cap` is the allocated size. A zeroed struct
 * (FY_BUF_INIT) is an empty buffer that owns nothing; fy_buf_free returns it to
 * that state. Growing may move `data`, so pointers into it last only until the
 * next call that can grow the buffer. Sizes that would overflow size_t fail
 * with FY_ELIMIT, failed allocations with FY_ENOMEM; either way the buffer is
 * left as it was. */
#ifndef FY_BASE_BUF_H
#define FY_BASE_BUF_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

struct fy_buf {
  uint8_t *data;
  size_t len, cap;
};

#define FY_BUF_INIT                                                                                          \
  { NULL, 0, 0 }

/* Makes room for `extra` more bytes after `len`. Grows to exactly len + extra
 * when it must grow: for a size known in advance (append grows geometrically). */
int fy_buf_reserve(struct fy_buf *b, size_t extra, struct fy_err *err);

/* Appends n bytes (p may be NULL when n is 0), growing by at least doubling. */
int fy_buf_append(struct fy_buf *b, const void *p, size_t n, struct fy_err *err);

/* Drops the first n bytes (all of them when n >= len), keeping the allocation. */
void fy_buf_consume(struct fy_buf *b, size_t n);

/* Releases the allocation; b becomes an empty buffer again. */
void fy_buf_free(struct fy_buf *b);

/* A buffer released on every path out of its block, like FY_AUTOFREE. */
#define FY_AUTOBUF __attribute__((cleanup(fy_buf_free)))

#endif
