#include "base/mpshape.h"

#include <stdio.h>

static uint64_t be(const uint8_t *p, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++)
    v = v << 8 | p[i];
  return v;
}

/* Without a naming function, every position is called by the unit's name. */
static const char *name_by_unit(const struct fy_mpshape_pos *pos, char *out, size_t size, const void *user) {
  (void)pos;
  snprintf(out, size, "%s", (const char *)user);
  return out;
}

int fy_mpshape_check(const uint8_t *p, size_t len, size_t max_depth, size_t max_elements, const char *unit,
                     fy_mpshape_name_fn name, const void *user, struct fy_err *err) {
  if (!name) {
    name = name_by_unit;
    user = unit;
  }
  if (max_depth > FY_MPSHAPE_DEPTH_MAX)
    max_depth = FY_MPSHAPE_DEPTH_MAX;
  size_t left[FY_MPSHAPE_DEPTH_MAX]; /* elements still to come in each open container */
  size_t top_count = 0;              /* elements of the top-level array */
  size_t depth = 0, off = 0, elements = 0;
  bool top_is_array = false;
  struct fy_mpshape_pos w = {0};
  char at[64];
  do {
    if (depth >= 1 && top_is_array) {
      w.in_field = true;
      w.field = top_count - left[0];
    }
    if (off >= len)
      return fy_err_set(err, FY_EINVAL, "%s: msgpack value truncated at offset %zu",
                        name(&w, at, sizeof(at), user), off);
    uint8_t b = p[off];
    size_t hdr = 1, count = 0, lenbytes = 0, fixed = 0;
    bool container = false, is_map = false;
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
      /* fixint, nil, bool */
    } else if (b <= 0x8f) {
      container = is_map = true;
      count = b & 0x0f;
    } else if (b <= 0x9f) {
      container = true;
      count = b & 0x0f;
    } else if (b <= 0xbf) {
      fixed = b & 0x1f; /* fixstr */
    } else {
      switch (b) {
      case 0xc4: /* bin 8, 16, 32 */
      case 0xd9: /* str 8, 16, 32 */
        lenbytes = 1;
        break;
      case 0xc5:
      case 0xda:
        lenbytes = 2;
        break;
      case 0xc6:
      case 0xdb:
        lenbytes = 4;
        break;
      case 0xc7: /* ext 8, 16, 32: length, then a type byte */
        lenbytes = 1, fixed = 1;
        break;
      case 0xc8:
        lenbytes = 2, fixed = 1;
        break;
      case 0xc9:
        lenbytes = 4, fixed = 1;
        break;
      case 0xca: /* float 32, 64 */
        fixed = 4;
        break;
      case 0xcb:
        fixed = 8;
        break;
      case 0xcc: /* uint and int 8, 16, 32, 64 */
      case 0xd0:
        fixed = 1;
        break;
      case 0xcd:
      case 0xd1:
        fixed = 2;
        break;
      case 0xce:
      case 0xd2:
        fixed = 4;
        break;
      case 0xcf:
      case 0xd3:
        fixed = 8;
        break;
      case 0xd4: /* fixext 1, 2, 4, 8, 16: a type byte and the data */
        fixed = 2;
        break;
      case 0xd5:
        fixed = 3;
        break;
      case 0xd6:
        fixed = 5;
        break;
      case 0xd7:
        fixed = 9;
        break;
      case 0xd8:
        fixed = 17;
        break;
      case 0xdc: /* array 16, 32 */
        container = true, hdr = 3;
        break;
      case 0xdd:
        container = true, hdr = 5;
        break;
      case 0xde: /* map 16, 32 */
        container = is_map = true, hdr = 3;
        break;
      case 0xdf:
        container = is_map = true, hdr = 5;
        break;
      default: /* 0xc1 */
        return fy_err_set(err, FY_EINVAL, "%s: byte 0x%02x at offset %zu is not msgpack",
                          name(&w, at, sizeof(at), user), b, off);
      }
    }
    if (container) {
      if (len - off < hdr)
        return fy_err_set(err, FY_EINVAL, "%s: msgpack value truncated at offset %zu",
                          name(&w, at, sizeof(at), user), off);
      if (hdr > 1)
        count = be(p + off + 1, hdr - 1);
      if (is_map)
        count *= 2;
      if (depth == max_depth)
        return fy_err_set(err, FY_EINVAL, "%s: msgpack nested deeper than %zu levels",
                          name(&w, at, sizeof(at), user), max_depth);
      if (count > max_elements - elements)
        return fy_err_set(err, FY_EINVAL, "%s: more than %zu array and map elements in one %s",
                          name(&w, at, sizeof(at), user), max_elements, unit);
      elements += count;
      off += hdr;
      if (count > 0) {
        if (depth == 0) {
          top_count = count;
          top_is_array = !is_map;
        }
        left[depth++] = count;
        continue;
      }
    } else {
      hdr += lenbytes;
      if (len - off < hdr)
        return fy_err_set(err, FY_EINVAL, "%s: msgpack value truncated at offset %zu",
                          name(&w, at, sizeof(at), user), off);
      size_t size = fixed + (size_t)be(p + off + 1, lenbytes);
      if (size > len - off - hdr)
        return fy_err_set(err, FY_EINVAL, "%s: msgpack value truncated at offset %zu",
                          name(&w, at, sizeof(at), user), off);
      if (depth == 1 && top_is_array && w.field == 0 && b <= 0x7f)
        w.first_fixint = b; /* e.g. a frame type, to name later fields */
      off += hdr + size;
    }
    /* A value is complete: close the containers it completes. */
    while (depth > 0 && --left[depth - 1] == 0)
      depth--;
  } while (depth > 0);
  if (off < len) {
    struct fy_mpshape_pos whole = {0};
    return fy_err_set(err, FY_EINVAL, "%s: %zu bytes after the msgpack %s",
                      name(&whole, at, sizeof(at), user), len - off, top_is_array ? "array" : "value");
  }
  return 0;
}
