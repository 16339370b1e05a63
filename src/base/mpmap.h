/* Reading msgpack maps with string keys: the shape every ferry message and
 * stored record has. fy_mpmap_decode bounds untrusted bytes first
 * (mpshape.h), then unpacks them with msgpack-c; the getters find a key and
 * check its type, so a caller says what it needs in one line per field.
 *
 * A decoded map owns its msgpack zone: free it with fy_mpmap_free (the
 * objects point into it and into nothing else). */
#ifndef FY_BASE_MPMAP_H
#define FY_BASE_MPMAP_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

struct fy_mpmap {
  msgpack_unpacked u;
  const msgpack_object *map; /* NULL until decoded */
};

/* Decodes bytes that must be exactly one map, nested at most max_depth
 * deep, with at most max_elements elements in all. what names the bytes in
 * errors ("enroll request"). FY_EINVAL (message in err) when they are not;
 * then there is nothing to free. */
int fy_mpmap_decode(struct fy_mpmap *m, const uint8_t *p, size_t len, size_t max_depth, size_t max_elements,
                    const char *what, struct fy_err *err);
void fy_mpmap_free(struct fy_mpmap *m);

/* The value of key in map, or NULL. */
const msgpack_object *fy_mp_get(const msgpack_object *map, const char *key);
/* Each copies the value of key when it is there with the right type (and,
 * for strings, fits with its NUL and holds no NUL); false otherwise, with
 * out emptied / zeroed. */
bool fy_mp_str(const msgpack_object *map, const char *key, char *out, size_t size);
bool fy_mp_u64(const msgpack_object *map, const char *key, uint64_t *out);
bool fy_mp_bin(const msgpack_object *map, const char *key, uint8_t *out, size_t n);
bool fy_mp_bool(const msgpack_object *map, const char *key, bool *out);

/* Packing into a struct fy_buf (msgpack_packer_init(&pk, &buf, fy_mp_buf_write)). */
int fy_mp_buf_write(void *buf, const char *p, size_t n);
void fy_mp_pack_str(msgpack_packer *pk, const char *s);
void fy_mp_pack_kv_str(msgpack_packer *pk, const char *k, const char *v);
void fy_mp_pack_kv_u64(msgpack_packer *pk, const char *k, uint64_t v);
void fy_mp_pack_kv_bin(msgpack_packer *pk, const char *k, const uint8_t *p, size_t n);
void fy_mp_pack_kv_bool(msgpack_packer *pk, const char *k, bool v);

#endif
