#include "base/mpmap.h"

#include <string.h>

#include "base/buf.h"
#include "base/mpshape.h"

int fy_mpmap_decode(struct fy_mpmap *m, const uint8_t *p, size_t len, size_t max_depth, size_t max_elements,
                    const char *what, struct fy_err *err) {
  m->map = NULL;
  msgpack_unpacked_init(&m->u);
  int rc = fy_mpshape_check(p, len, max_depth, max_elements, what, NULL, NULL, err);
  if (rc < 0) {
    msgpack_unpacked_destroy(&m->u);
    return rc;
  }
  size_t off = 0;
  if (msgpack_unpack_next(&m->u, (const char *)p, len, &off) != MSGPACK_UNPACK_SUCCESS ||
      m->u.data.type != MSGPACK_OBJECT_MAP) {
    msgpack_unpacked_destroy(&m->u);
    return fy_err_set(err, FY_EINVAL, "%s: not a msgpack map", what);
  }
  m->map = &m->u.data;
  return 0;
}

void fy_mpmap_free(struct fy_mpmap *m) {
  msgpack_unpacked_destroy(&m->u);
  m->map = NULL;
}

const msgpack_object *fy_mp_get(const msgpack_object *map, const char *key) {
  size_t n = strlen(key);
  for (uint32_t i = 0; i < map->via.map.size; i++) {
    const msgpack_object *k = &map->via.map.ptr[i].key;
    if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n && memcmp(k->via.str.ptr, key, n) == 0)
      return &map->via.map.ptr[i].val;
  }
  return NULL;
}

bool fy_mp_str(const msgpack_object *map, const char *key, char *out, size_t size) {
  const msgpack_object *o = fy_mp_get(map, key);
  out[0] = '\0';
  if (!o || o->type != MSGPACK_OBJECT_STR || o->via.str.size >= size ||
      memchr(o->via.str.ptr, '\0', o->via.str.size))
    return false;
  memcpy(out, o->via.str.ptr, o->via.str.size);
  out[o->via.str.size] = '\0';
  return true;
}

bool fy_mp_u64(const msgpack_object *map, const char *key, uint64_t *out) {
  const msgpack_object *o = fy_mp_get(map, key);
  *out = 0;
  if (!o || o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
    return false;
  *out = o->via.u64;
  return true;
}

bool fy_mp_bin(const msgpack_object *map, const char *key, uint8_t *out, size_t n) {
  const msgpack_object *o = fy_mp_get(map, key);
  if (!o || o->type != MSGPACK_OBJECT_BIN || o->via.bin.size != n) {
    memset(out, 0, n);
    return false;
  }
  memcpy(out, o->via.bin.ptr, n);
  return true;
}

bool fy_mp_bool(const msgpack_object *map, const char *key, bool *out) {
  const msgpack_object *o = fy_mp_get(map, key);
  *out = false;
  if (!o || o->type != MSGPACK_OBJECT_BOOLEAN)
    return false;
  *out = o->via.boolean;
  return true;
}

int fy_mp_buf_write(void *buf, const char *p, size_t n) {
  return fy_buf_append(buf, p, n, NULL) < 0 ? -1 : 0;
}

void fy_mp_pack_str(msgpack_packer *pk, const char *s) {
  msgpack_pack_str_with_body(pk, s, strlen(s));
}

void fy_mp_pack_kv_str(msgpack_packer *pk, const char *k, const char *v) {
  fy_mp_pack_str(pk, k);
  fy_mp_pack_str(pk, v);
}

void fy_mp_pack_kv_u64(msgpack_packer *pk, const char *k, uint64_t v) {
  fy_mp_pack_str(pk, k);
  msgpack_pack_uint64(pk, v);
}

void fy_mp_pack_kv_bin(msgpack_packer *pk, const char *k, const uint8_t *p, size_t n) {
  fy_mp_pack_str(pk, k);
  msgpack_pack_bin_with_body(pk, p, n);
}

void fy_mp_pack_kv_bool(msgpack_packer *pk, const char *k, bool v) {
  fy_mp_pack_str(pk, k);
  if (v)
    msgpack_pack_true(pk);
  else
    msgpack_pack_false(pk);
}
