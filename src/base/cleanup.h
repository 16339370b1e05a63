/* Scope-bound release, after systemd's src/basic: a variable declared with one
 * of these is released on every path out of its block, so error paths stay one
 * `return` long. Ownership moves out with FY_TAKE(p), which nulls the source. */
#ifndef FY_BASE_CLEANUP_H
#define FY_BASE_CLEANUP_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static inline void fy_freep(void *p) {
  free(*(void **)p);
}
static inline void fy_closep(const int *fd) {
  if (*fd >= 0)
    close(*fd);
}
static inline void fy_fclosep(FILE **f) {
  if (*f)
    fclose(*f);
}

#define FY_AUTOFREE __attribute__((cleanup(fy_freep)))
#define FY_AUTOCLOSE __attribute__((cleanup(fy_closep)))
#define FY_AUTOFCLOSE __attribute__((cleanup(fy_fclosep)))

#define FY_TAKE(p)                                                                                           \
  ({                                                                                                         \
    __typeof__(p) fy_take_tmp_ = (p);                                                                        \
    (p) = NULL;                                                                                              \
    fy_take_tmp_;                                                                                            \
  })

#define FY_TAKE_FD(fd)                                                                                       \
  ({                                                                                                         \
    int fy_take_fd_ = (fd);                                                                                  \
    (fd) = -1;                                                                                               \
    fy_take_fd_;                                                                                             \
  })

#define FY_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
