/* A bounds check for msgpack bytes from the network, before msgpack-c sees them.
 *
 * msgpack-c allocates count * sizeof(msgpack_object) for an array or map as
 * soon as it reads the header, before any element arrives: 5 bytes
 * `dd ff ff ff ff` would make it ask for 96 GiB. So every decoder of untrusted
 * msgpack first walks the bytes here, reading only type bytes and lengths (it
 * decodes no values; that stays msgpack-c's job), and checks that they are
 * exactly one value, nested at most max_depth deep, whose arrays and maps hold
 * at most max_elements elements together. */
#ifndef FY_BASE_MPSHAPE_H
#define FY_BASE_MPSHAPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

#define FY_MPSHAPE_DEPTH_MAX 16

/* Where a problem is: the top-level value itself, or its field-th element. */
struct fy_mpshape_pos {
  bool in_field;
  size_t field;
  int first_fixint; /* the top-level array's element 0 when it is a positive fixint (a type tag), else 0 */
};

/* Names a position for error messages ("CALL frame: method"). */
typedef const char *(*fy_mpshape_name_fn)(const struct fy_mpshape_pos *pos, char *out, size_t size,
                                          const void *user);

/* 0, or FY_EINVAL with a message that starts with name(position) (or unit,
 * when name is NULL) and names the offset. unit names the whole in the element-count message ("frame"). */
int fy_mpshape_check(const uint8_t *p, size_t len, size_t max_depth, size_t max_elements, const char *unit,
                     fy_mpshape_name_fn name, const void *user, struct fy_err *err);

#endif
