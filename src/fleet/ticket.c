#include "fleet/ticket.h"

#include <msgpack.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "base/buf.h"
#include "base/mpmap.h"
#include "base/mpshape.h"

#define VARIANT sodium_base64_VARIANT_URLSAFE_NO_PADDING
#define PREFIX_LEN (sizeof(FY_TICKET_PREFIX) - 1)
#define BIN_MAX (FY_TICKET_TEXT_MAX / 4 * 3) /* the most msgpack a ticket can carry */
#define SECRET_HASH_CONTEXT "ferry/ticket/v1"

static const char *ticket_part(const struct fy_mpshape_pos *pos, char *out, size_t size, const void *user) {
  (void)pos, (void)user;
  snprintf(out, size, "ticket");
  return out;
}

static const char *quote(const char *s, size_t n, char *out, size_t size) {
  size_t o = 0;
  for (size_t i = 0; i < n && o + 4 < size; i++) {
    unsigned char c = (unsigned char)s[i];
    out[o++] = c >= 0x20 && c < 0x7f && c != '"' ? (char)c : '?';
  }
  if (o + 4 >= size && n > o)
    memcpy(out + o, "...", 3), o += 3;
  out[o] = '\0';
  return out;
}

/* "host:port" or "[v6]:port", port 1..65535; names aren't resolved here. */
static int check_addr(size_t i, const char *a, size_t n, struct fy_err *err) {
  char q[64];
  const char *why = NULL;
  const char *colon = n ? memrchr(a, ':', n) : NULL;
  if (n == 0 || n > FY_TICKET_ADDR_MAX) {
    return fy_err_set(err, FY_EINVAL, "ticket: address %zu is %zu bytes, must be 1 to %d", i + 1, n,
                      FY_TICKET_ADDR_MAX);
  }
  for (size_t k = 0; k < n && !why; k++)
    if ((unsigned char)a[k] <= 0x20 || (unsigned char)a[k] >= 0x7f)
      why = "white space or a non-ASCII byte";
  if (!why && !colon)
    why = "no :port";
  if (!why) {
    size_t pn = n - (size_t)(colon - a) - 1;
    unsigned long port = 0;
    for (size_t k = 0; k < pn && port <= 65535; k++)
      port = colon[1 + k] >= '0' && colon[1 + k] <= '9' ? port * 10 + (unsigned long)(colon[1 + k] - '0')
                                                        : 65536;
    size_t hn = (size_t)(colon - a);
    if (pn == 0 || pn > 5 || port == 0 || port > 65535)
      why = "the port is not a number from 1 to 65535";
    else if (hn == 0)
      why = "no host before the port";
    else if (a[0] == '['
                 ? hn < 3 || a[hn - 1] != ']' || memchr(a + 1, '[', hn - 2) || memchr(a + 1, ']', hn - 2)
                 : memchr(a, ':', hn) || memchr(a, '[', hn) || memchr(a, ']', hn))
      why = "the host must be a name, an IPv4 address or an IPv6 address in brackets";
  }
  if (why)
    return fy_err_set(err, FY_EINVAL, "ticket: address %zu \"%s\": %s", i + 1, quote(a, n, q, sizeof(q)),
                      why);
  return 0;
}

int fy_ticket_encode(const struct fy_ticket *t, char *out, size_t size, struct fy_err *err) {
  int rc;
  if (t->naddrs == 0 || t->naddrs > FY_TICKET_ADDRS_MAX)
    return fy_err_set(err, FY_EINVAL, "ticket: %zu addresses, must be 1 to %d", t->naddrs,
                      FY_TICKET_ADDRS_MAX);
  for (size_t i = 0; i < t->naddrs; i++)
    if ((rc = check_addr(i, t->addrs[i], strnlen(t->addrs[i], sizeof(t->addrs[i])), err)) < 0)
      return rc;
  if ((rc = fy_tenant_check(t->tenant, err)) < 0)
    return fy_err_prefix(err, "ticket");
  struct fy_buf b = FY_BUF_INIT;
  msgpack_packer pk;
  msgpack_packer_init(&pk, &b, fy_mp_buf_write);
  if (msgpack_pack_map(&pk, 6) || msgpack_pack_str_with_body(&pk, "c", 1) ||
      msgpack_pack_bin_with_body(&pk, t->coordinator.key, FY_NODEID_LEN) ||
      msgpack_pack_str_with_body(&pk, "a", 1) || msgpack_pack_array(&pk, t->naddrs))
    rc = FY_ENOMEM;
  for (size_t i = 0; rc == 0 && i < t->naddrs; i++)
    if (msgpack_pack_str_with_body(&pk, t->addrs[i], strlen(t->addrs[i])))
      rc = FY_ENOMEM;
  if (rc == 0 && (msgpack_pack_str_with_body(&pk, "s", 1) ||
                  msgpack_pack_bin_with_body(&pk, t->secret, FY_TICKET_SECRET_LEN) ||
                  msgpack_pack_str_with_body(&pk, "t", 1) ||
                  msgpack_pack_str_with_body(&pk, t->tenant, strlen(t->tenant)) ||
                  msgpack_pack_str_with_body(&pk, "l", 1) || fy_labels_pack(&t->labels, &pk) < 0 ||
                  msgpack_pack_str_with_body(&pk, "e", 1) || msgpack_pack_uint64(&pk, t->expires_at)))
    rc = FY_ENOMEM;
  if (rc < 0) {
    sodium_memzero(b.data, b.cap);
    fy_buf_free(&b);
    return fy_err_set(err, FY_ENOMEM, "ticket: out of memory");
  }
  size_t need = PREFIX_LEN + sodium_base64_ENCODED_LEN(b.len, VARIANT); /* with the NUL */
  if (need - 1 > FY_TICKET_TEXT_MAX)
    rc = fy_err_set(err, FY_ELIMIT, "ticket: would be %zu characters, at most %d (fewer addresses or labels)",
                    need - 1, FY_TICKET_TEXT_MAX);
  else if (need > size)
    rc = fy_err_set(err, FY_ELIMIT, "ticket: needs %zu bytes of buffer, have %zu", need, size);
  else {
    memcpy(out, FY_TICKET_PREFIX, PREFIX_LEN);
    sodium_bin2base64(out + PREFIX_LEN, size - PREFIX_LEN, b.data, b.len, VARIANT);
  }
  sodium_memzero(b.data, b.cap);
  fy_buf_free(&b);
  return rc;
}

enum { K_C, K_A, K_S, K_T, K_L, K_E, K_COUNT };
static const char key_names[K_COUNT] = {'c', 'a', 's', 't', 'l', 'e'};
static const char *const key_meaning[K_COUNT] = {"coordinator", "addresses", "secret",
                                                 "tenant",      "labels",    "expiry"};

static int get_field(int k, const msgpack_object *v, struct fy_ticket *out, struct fy_err *err) {
  char what[32];
  snprintf(what, sizeof(what), "ticket: %c (%s)", key_names[k], key_meaning[k]);
  switch (k) {
  case K_C:
    if (v->type != MSGPACK_OBJECT_BIN || v->via.bin.size != FY_NODEID_LEN)
      return fy_err_set(err, FY_EINVAL, "%s is not 32 bytes of bin", what);
    memcpy(out->coordinator.key, v->via.bin.ptr, FY_NODEID_LEN);
    return 0;
  case K_S:
    if (v->type != MSGPACK_OBJECT_BIN || v->via.bin.size != FY_TICKET_SECRET_LEN)
      return fy_err_set(err, FY_EINVAL, "%s is not 32 bytes of bin", what);
    memcpy(out->secret, v->via.bin.ptr, FY_TICKET_SECRET_LEN);
    return 0;
  case K_E:
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
      return fy_err_set(err, FY_EINVAL, "%s is not an unsigned integer", what);
    out->expires_at = v->via.u64;
    return 0;
  case K_T:
    if (v->type != MSGPACK_OBJECT_STR)
      return fy_err_set(err, FY_EINVAL, "%s is not a string", what);
    if (v->via.str.size > FY_TENANT_MAX || memchr(v->via.str.ptr, '\0', v->via.str.size))
      return fy_err_set(err, FY_EINVAL, "%s is %u bytes, must be 1 to %d", what, (unsigned)v->via.str.size,
                        FY_TENANT_MAX);
    if (v->via.str.size) /* an empty str may have a NULL ptr */
      memcpy(out->tenant, v->via.str.ptr, v->via.str.size);
    out->tenant[v->via.str.size] = '\0';
    return fy_tenant_check(out->tenant, err) < 0 ? fy_err_prefix(err, "ticket") : 0;
  case K_L:
    return fy_labels_unpack(v, &out->labels, err) < 0 ? fy_err_prefix(err, "ticket") : 0;
  default: /* K_A */
    if (v->type != MSGPACK_OBJECT_ARRAY)
      return fy_err_set(err, FY_EINVAL, "%s is not an array", what);
    if (v->via.array.size == 0 || v->via.array.size > FY_TICKET_ADDRS_MAX)
      return fy_err_set(err, FY_EINVAL, "%s: %u addresses, must be 1 to %d", what,
                        (unsigned)v->via.array.size, FY_TICKET_ADDRS_MAX);
    for (size_t i = 0; i < v->via.array.size; i++) {
      const msgpack_object *a = &v->via.array.ptr[i];
      if (a->type != MSGPACK_OBJECT_STR)
        return fy_err_set(err, FY_EINVAL, "ticket: address %zu is not a string", i + 1);
      int rc = check_addr(i, a->via.str.ptr, a->via.str.size, err);
      if (rc < 0)
        return rc;
      memcpy(out->addrs[i], a->via.str.ptr, a->via.str.size);
      out->addrs[i][a->via.str.size] = '\0';
    }
    out->naddrs = v->via.array.size;
    return 0;
  }
}

static int decode_map(const uint8_t *bin, size_t n, struct fy_ticket *out, struct fy_err *err) {
  int rc = fy_mpshape_check(bin, n, 2, 2 * K_COUNT + FY_TICKET_ADDRS_MAX + 2 * FY_LABELS_MAX, "ticket",
                            ticket_part, NULL, err);
  if (rc < 0)
    return rc;
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  if (msgpack_unpack_next(&u, (const char *)bin, n, &off) != MSGPACK_UNPACK_SUCCESS) {
    msgpack_unpacked_destroy(&u);
    return fy_err_set(err, FY_EINVAL, "ticket: not msgpack");
  }
  const msgpack_object *o = &u.data;
  if (o->type != MSGPACK_OBJECT_MAP)
    rc = fy_err_set(err, FY_EINVAL, "ticket: not a msgpack map");
  unsigned seen = 0;
  for (size_t i = 0; rc == 0 && i < o->via.map.size; i++) {
    const msgpack_object *k = &o->via.map.ptr[i].key;
    char q[40];
    if (k->type != MSGPACK_OBJECT_STR) {
      rc = fy_err_set(err, FY_EINVAL, "ticket: key %zu is not a string", i + 1);
      break;
    }
    const char *hit = k->via.str.size == 1 ? memchr(key_names, k->via.str.ptr[0], K_COUNT) : NULL;
    if (!hit) {
      rc = fy_err_set(err, FY_EINVAL, "ticket: unknown key \"%s\"",
                      quote(k->via.str.ptr, k->via.str.size, q, sizeof(q)));
      break;
    }
    int idx = (int)(hit - key_names);
    if (seen & (1u << idx)) {
      rc = fy_err_set(err, FY_EINVAL, "ticket: key \"%c\" appears twice", key_names[idx]);
      break;
    }
    seen |= 1u << idx;
    rc = get_field(idx, &o->via.map.ptr[i].val, out, err);
  }
  for (int k = 0; rc == 0 && k < K_COUNT; k++)
    if (!(seen & (1u << k)))
      rc = fy_err_set(err, FY_EINVAL, "ticket: missing key \"%c\" (%s)", key_names[k], key_meaning[k]);
  msgpack_unpacked_destroy(&u);
  return rc;
}

static bool space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

int fy_ticket_decode(const char *text, struct fy_ticket *out, struct fy_err *err) {
  sodium_memzero(out, sizeof(*out));
  const char *s = text;
  while (space(*s))
    s++;
  size_t n = strlen(s);
  while (n > 0 && space(s[n - 1]))
    n--;
  if (n > FY_TICKET_TEXT_MAX)
    return fy_err_set(err, FY_ELIMIT, "ticket: %zu characters, at most %d", n, FY_TICKET_TEXT_MAX);
  if (n < PREFIX_LEN || memcmp(s, FY_TICKET_PREFIX, PREFIX_LEN) != 0)
    return fy_err_set(err, FY_EINVAL, "ticket: not a ferry ticket: it must start with " FY_TICKET_PREFIX);
  const char *b64 = s + PREFIX_LEN, *end = NULL;
  size_t b64_len = n - PREFIX_LEN, bin_len = 0;
  if (b64_len == 0)
    return fy_err_set(err, FY_EINVAL, "ticket: nothing after " FY_TICKET_PREFIX);
  uint8_t bin[BIN_MAX];
  int rc = sodium_base642bin(bin, sizeof(bin), b64, b64_len, NULL, &bin_len, &end, VARIANT);
  if (end && end < b64 + b64_len)
    rc = fy_err_set(err, FY_EINVAL, "ticket: bad base64 at character %zu (counted from 0)",
                    (size_t)(end - text));
  else if (rc != 0)
    rc = fy_err_set(err, FY_EINVAL,
                    "ticket: bad base64: the text is cut short or its last character is wrong");
  else
    rc = decode_map(bin, bin_len, out, err);
  sodium_memzero(bin, sizeof(bin));
  if (rc < 0)
    sodium_memzero(out, sizeof(*out));
  return rc;
}

void fy_ticket_secret_hash(const uint8_t secret[FY_TICKET_SECRET_LEN], uint8_t out[FY_TICKET_HASH_LEN]) {
  crypto_generichash_state st;
  crypto_generichash_init(&st, NULL, 0, FY_TICKET_HASH_LEN);
  crypto_generichash_update(&st, (const uint8_t *)SECRET_HASH_CONTEXT, sizeof(SECRET_HASH_CONTEXT));
  crypto_generichash_update(&st, secret, FY_TICKET_SECRET_LEN);
  crypto_generichash_final(&st, out, FY_TICKET_HASH_LEN);
  sodium_memzero(&st, sizeof(st));
}
