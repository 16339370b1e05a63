#include "fleet/envelope.h"

#include <msgpack.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/cleanup.h"
#include "base/mpmap.h"
#include "base/mpshape.h"

/* A body's args may hold a list of agents, not a database: this bounds what
 * msgpack-c allocates for one body (about 24 bytes per element). */
#define ARGS_ELEMENTS_MAX 4096

static const char *envelope_part(const struct fy_mpshape_pos *pos, char *out, size_t size, const void *user) {
  static const char *const parts[] = {"body", "signer", "sig"};
  (void)user;
  if (pos->in_field && pos->field < FY_ARRAY_LEN(parts))
    snprintf(out, size, "envelope: %s", parts[pos->field]);
  else
    snprintf(out, size, "envelope");
  return out;
}

static const char *body_part(const struct fy_mpshape_pos *pos, char *out, size_t size, const void *user) {
  (void)pos, (void)user;
  snprintf(out, size, "command body");
  return out;
}

static const char *args_part(const struct fy_mpshape_pos *pos, char *out, size_t size, const void *user) {
  (void)pos, (void)user;
  snprintf(out, size, "command body: args");
  return out;
}

/* context || 0x00 || body, malloc'd: what is signed. */
static uint8_t *signed_message(const char *context, const uint8_t *body, size_t len, size_t *out_len) {
  size_t cn = strlen(context);
  uint8_t *m = malloc(cn + 1 + len);
  if (!m)
    return NULL;
  memcpy(m, context, cn + 1);
  if (len)
    memcpy(m + cn + 1, body, len);
  *out_len = cn + 1 + len;
  return m;
}

static size_t bin_header_len(size_t n) {
  return n <= 0xff ? 2 : n <= 0xffff ? 3 : 5;
}

int fy_envelope_seal(const struct fy_key *key, const char *context, const uint8_t *body, size_t len,
                     struct fy_buf *out, struct fy_err *err) {
  if (!context || !context[0])
    return fy_err_set(err, FY_EINVAL, "envelope: empty signing context");
  size_t total = 1 + bin_header_len(len) + len + 2 + FY_NODEID_LEN + 2 + FY_SIG_LEN;
  if (len > FY_ENVELOPE_MAX || total > FY_ENVELOPE_MAX)
    return fy_err_set(err, FY_ELIMIT, "envelope: a %zu-byte body makes an envelope over %d bytes", len,
                      FY_ENVELOPE_MAX);
  size_t mlen;
  uint8_t *m = signed_message(context, body, len, &mlen);
  if (!m)
    return fy_err_set(err, FY_ENOMEM, "envelope: out of memory");
  uint8_t sig[FY_SIG_LEN];
  int rc = fy_key_sign(key, m, mlen, sig);
  free(m);
  if (rc < 0)
    return fy_err_set(err, FY_EINVAL, "envelope: the signing key has no secret");
  size_t start = out->len;
  msgpack_packer pk;
  msgpack_packer_init(&pk, out, fy_mp_buf_write);
  if (msgpack_pack_array(&pk, 3) || msgpack_pack_bin_with_body(&pk, body, len) ||
      msgpack_pack_bin_with_body(&pk, key->id.key, FY_NODEID_LEN) ||
      msgpack_pack_bin_with_body(&pk, sig, FY_SIG_LEN)) {
    out->len = start;
    return fy_err_set(err, FY_ENOMEM, "envelope: out of memory");
  }
  return 0;
}

int fy_envelope_open(const uint8_t *bytes, size_t len, const char *context, struct fy_envelope *out,
                     struct fy_err *err) {
  if (len > FY_ENVELOPE_MAX)
    return fy_err_set(err, FY_ELIMIT, "envelope: %zu bytes, at most %d", len, FY_ENVELOPE_MAX);
  if (!context || !context[0])
    return fy_err_set(err, FY_EINVAL, "envelope: empty signing context");
  int rc = fy_mpshape_check(bytes, len, 1, 3, "envelope", envelope_part, NULL, err);
  if (rc < 0)
    return rc;
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  if (msgpack_unpack_next(&u, (const char *)bytes, len, &off) != MSGPACK_UNPACK_SUCCESS) {
    msgpack_unpacked_destroy(&u);
    return fy_err_set(err, FY_EINVAL, "envelope: not msgpack");
  }
  const msgpack_object *o = &u.data;
  const char *bad = NULL;
  if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 3)
    bad = "envelope: not an array of 3 elements [body, signer, sig]";
  else if (o->via.array.ptr[0].type != MSGPACK_OBJECT_BIN)
    bad = "envelope: body is not bin";
  else if (o->via.array.ptr[1].type != MSGPACK_OBJECT_BIN ||
           o->via.array.ptr[1].via.bin.size != FY_NODEID_LEN)
    bad = "envelope: signer is not 32 bytes of bin";
  else if (o->via.array.ptr[2].type != MSGPACK_OBJECT_BIN || o->via.array.ptr[2].via.bin.size != FY_SIG_LEN)
    bad = "envelope: sig is not 64 bytes of bin";
  if (bad) {
    msgpack_unpacked_destroy(&u);
    return fy_err_set(err, FY_EINVAL, "%s", bad);
  }
  const msgpack_object *e = o->via.array.ptr;
  /* msgpack_unpack_next leaves bin pointing into bytes, so body outlives u. */
  out->body = (const uint8_t *)e[0].via.bin.ptr;
  out->body_len = e[0].via.bin.size;
  memcpy(out->signer.key, e[1].via.bin.ptr, FY_NODEID_LEN);
  memcpy(out->sig, e[2].via.bin.ptr, FY_SIG_LEN);
  msgpack_unpacked_destroy(&u);

  size_t mlen;
  uint8_t *m = signed_message(context, out->body, out->body_len, &mlen);
  if (!m)
    return fy_err_set(err, FY_ENOMEM, "envelope: out of memory");
  rc = fy_sig_verify(&out->signer, m, mlen, out->sig);
  free(m);
  if (rc != 0) {
    char s[FY_NODEID_SHORT_LEN + 1];
    fy_nodeid_to_short(&out->signer, s);
    return fy_err_set(err, FY_ECRYPTO, "envelope: signature does not verify for signer %s", s);
  }
  return 0;
}

void fy_envelope_id(const uint8_t *bytes, size_t len, uint8_t out[FY_ENVELOPE_ID_LEN]) {
  crypto_hash_sha256(out, bytes, len);
}

/* ---- command bodies ---------------------------------------------------- */

static bool name_char(int c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

/* 0 when s[0..n) is a valid command name. */
static int check_cmd(const char *s, size_t n, struct fy_err *err) {
  if (n == 0 || n > FY_CMD_NAME_MAX)
    return fy_err_set(err, FY_EINVAL, "command body: cmd is %zu bytes, must be 1 to %d", n, FY_CMD_NAME_MAX);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!name_char(c) || (i == 0 && (c == '.' || c == '_' || c == '-')))
      return fy_err_set(err, FY_EINVAL,
                        "command body: cmd has byte 0x%02x at offset %zu (allowed: [a-z0-9._-], "
                        "starting with [a-z0-9])",
                        c, i);
  }
  return 0;
}

static int check_tenant(const char *s, size_t n, struct fy_err *err) {
  char t[FY_TENANT_MAX + 1];
  if (n == 0)
    return 0;
  if (n > FY_TENANT_MAX || memchr(s, '\0', n))
    return fy_err_set(err, FY_EINVAL, "command body: tenant is %zu bytes, must be 0 to %d", n, FY_TENANT_MAX);
  memcpy(t, s, n);
  t[n] = '\0';
  int rc = fy_tenant_check(t, err);
  return rc < 0 ? fy_err_prefix(err, "command body") : 0;
}

/* 0 when p[0..len) is exactly one msgpack map of bounded size. */
static int check_args(const uint8_t *p, size_t len, struct fy_err *err) {
  int rc =
      fy_mpshape_check(p, len, FY_MPSHAPE_DEPTH_MAX - 1, ARGS_ELEMENTS_MAX, "args", args_part, NULL, err);
  if (rc < 0)
    return rc;
  if (!((p[0] >= 0x80 && p[0] <= 0x8f) || p[0] == 0xde || p[0] == 0xdf))
    return fy_err_set(err, FY_EINVAL, "command body: args is not a map");
  return 0;
}

int fy_cmd_body_encode(const struct fy_cmd_body *b, struct fy_buf *out, struct fy_err *err) {
  static const uint8_t empty_map = 0x80;
  const uint8_t *args = b->args ? b->args : &empty_map;
  size_t args_len = b->args ? b->args_len : 1;
  int rc;
  if (b->seq == 0)
    return fy_err_set(err, FY_EINVAL, "command body: seq must be at least 1");
  if (b->expires_at <= b->issued_at)
    return fy_err_set(err, FY_EINVAL, "command body: exp %llu is not after iat %llu",
                      (unsigned long long)b->expires_at, (unsigned long long)b->issued_at);
  size_t tn = strnlen(b->tenant, sizeof(b->tenant)), cn = strnlen(b->cmd, sizeof(b->cmd));
  if ((rc = check_tenant(b->tenant, tn, err)) < 0 || (rc = check_cmd(b->cmd, cn, err)) < 0 ||
      (rc = check_args(args, args_len, err)) < 0)
    return rc;
  size_t start = out->len;
  msgpack_packer pk;
  msgpack_packer_init(&pk, out, fy_mp_buf_write);
#define KEY(k) msgpack_pack_str_with_body(&pk, k, sizeof(k) - 1)
  if (msgpack_pack_map(&pk, 8) || KEY("issuer") || msgpack_pack_bin_with_body(&pk, b->issuer.key, 32) ||
      KEY("seq") || msgpack_pack_uint64(&pk, b->seq) || KEY("iat") ||
      msgpack_pack_uint64(&pk, b->issued_at) || KEY("exp") || msgpack_pack_uint64(&pk, b->expires_at) ||
      KEY("coord") || msgpack_pack_bin_with_body(&pk, b->coordinator.key, 32) || KEY("tenant") ||
      msgpack_pack_str_with_body(&pk, b->tenant, tn) || KEY("cmd") ||
      msgpack_pack_str_with_body(&pk, b->cmd, cn) || KEY("args") ||
      fy_buf_append(out, args, args_len, NULL) < 0) {
    out->len = start;
    return fy_err_set(err, FY_ENOMEM, "command body: out of memory");
  }
#undef KEY
  return 0;
}

enum { K_ISSUER, K_SEQ, K_IAT, K_EXP, K_COORD, K_TENANT, K_CMD, K_ARGS, K_COUNT };
static const char *const body_keys[K_COUNT] = {"issuer", "seq",    "iat", "exp",
                                               "coord",  "tenant", "cmd", "args"};

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

static int get_uint(const msgpack_object *o, const char *key, uint64_t *v, struct fy_err *err) {
  if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
    return fy_err_set(err, FY_EINVAL, "command body: %s is not an unsigned integer", key);
  *v = o->via.u64;
  return 0;
}

static int get_id(const msgpack_object *o, const char *key, struct fy_nodeid *id, struct fy_err *err) {
  if (o->type != MSGPACK_OBJECT_BIN || o->via.bin.size != FY_NODEID_LEN)
    return fy_err_set(err, FY_EINVAL, "command body: %s is not 32 bytes of bin", key);
  memcpy(id->key, o->via.bin.ptr, FY_NODEID_LEN);
  return 0;
}

static int get_field(int k, const msgpack_object *v, const uint8_t *raw, size_t raw_len,
                     struct fy_cmd_body *out, struct fy_err *err) {
  switch (k) {
  case K_ISSUER:
    return get_id(v, "issuer", &out->issuer, err);
  case K_COORD:
    return get_id(v, "coord", &out->coordinator, err);
  case K_SEQ:
    if (get_uint(v, "seq", &out->seq, err) < 0)
      return FY_EINVAL;
    return out->seq == 0 ? fy_err_set(err, FY_EINVAL, "command body: seq must be at least 1") : 0;
  case K_IAT:
    return get_uint(v, "iat", &out->issued_at, err);
  case K_EXP:
    return get_uint(v, "exp", &out->expires_at, err);
  case K_TENANT:
    if (v->type != MSGPACK_OBJECT_STR)
      return fy_err_set(err, FY_EINVAL, "command body: tenant is not a string");
    if (check_tenant(v->via.str.ptr, v->via.str.size, err) < 0)
      return FY_EINVAL;
    if (v->via.str.size) /* an empty str may have a NULL ptr */
      memcpy(out->tenant, v->via.str.ptr, v->via.str.size);
    out->tenant[v->via.str.size] = '\0';
    return 0;
  case K_CMD:
    if (v->type != MSGPACK_OBJECT_STR)
      return fy_err_set(err, FY_EINVAL, "command body: cmd is not a string");
    if (check_cmd(v->via.str.ptr, v->via.str.size, err) < 0)
      return FY_EINVAL;
    memcpy(out->cmd, v->via.str.ptr, v->via.str.size);
    out->cmd[v->via.str.size] = '\0';
    return 0;
  default: /* K_ARGS */
    if (v->type != MSGPACK_OBJECT_MAP)
      return fy_err_set(err, FY_EINVAL, "command body: args is not a map");
    out->args = raw;
    out->args_len = raw_len;
    return 0;
  }
}

int fy_cmd_body_decode(const uint8_t *p, size_t len, struct fy_cmd_body *out, struct fy_err *err) {
  memset(out, 0, sizeof(*out));
  int rc = fy_mpshape_check(p, len, FY_MPSHAPE_DEPTH_MAX, ARGS_ELEMENTS_MAX + 2 * K_COUNT, "command body",
                            body_part, NULL, err);
  if (rc < 0)
    return rc;
  if (len == 0) /* mpshape refuses it; this tells the analyzer */
    return fy_err_set(err, FY_EINVAL, "command body: empty");
  /* The map header by hand, then one msgpack_unpack_next per key and value:
   * that way the raw bytes of args are known without re-encoding them. */
  size_t n, off;
  if (p[0] >= 0x80 && p[0] <= 0x8f)
    n = p[0] & 0x0f, off = 1;
  else if (p[0] == 0xde)
    n = (size_t)p[1] << 8 | p[2], off = 3;
  else if (p[0] == 0xdf)
    n = (size_t)p[1] << 24 | (size_t)p[2] << 16 | (size_t)p[3] << 8 | p[4], off = 5;
  else
    return fy_err_set(err, FY_EINVAL, "command body: not a map");
  unsigned seen = 0;
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++) {
    char q[48];
    if (msgpack_unpack_next(&u, (const char *)p, len, &off) != MSGPACK_UNPACK_SUCCESS) {
      rc = fy_err_set(err, FY_EINVAL, "command body: not msgpack");
      break;
    }
    if (u.data.type != MSGPACK_OBJECT_STR) {
      rc = fy_err_set(err, FY_EINVAL, "command body: key %zu is not a string", i);
      break;
    }
    const char *ks = u.data.via.str.ptr; /* points into p, survives the next unpack */
    size_t kn = u.data.via.str.size;
    int k = 0;
    while (k < K_COUNT && !(strlen(body_keys[k]) == kn && memcmp(body_keys[k], ks, kn) == 0))
      k++;
    if (k == K_COUNT) {
      rc = fy_err_set(err, FY_EINVAL, "command body: unknown key \"%s\"", quote(ks, kn, q, sizeof(q)));
      break;
    }
    if (seen & (1u << k)) {
      rc = fy_err_set(err, FY_EINVAL, "command body: key \"%s\" appears twice", body_keys[k]);
      break;
    }
    seen |= 1u << k;
    size_t vstart = off;
    if (msgpack_unpack_next(&u, (const char *)p, len, &off) != MSGPACK_UNPACK_SUCCESS) {
      rc = fy_err_set(err, FY_EINVAL, "command body: %s: not msgpack", body_keys[k]);
      break;
    }
    rc = get_field(k, &u.data, p + vstart, off - vstart, out, err);
  }
  msgpack_unpacked_destroy(&u);
  if (rc == 0) {
    for (int k = 0; k < K_COUNT; k++)
      if (!(seen & (1u << k))) {
        rc = fy_err_set(err, FY_EINVAL, "command body: missing key \"%s\"", body_keys[k]);
        break;
      }
  }
  if (rc == 0 && out->expires_at <= out->issued_at)
    rc = fy_err_set(err, FY_EINVAL, "command body: exp %llu is not after iat %llu",
                    (unsigned long long)out->expires_at, (unsigned long long)out->issued_at);
  if (rc < 0)
    memset(out, 0, sizeof(*out));
  return rc;
}

/* ---- refusals and the stateless checks ---------------------------------- */

const char *fy_cmd_refusal_name(enum fy_cmd_refusal r) {
  static const char *const names[] = {
      [FY_CMD_OK] = "ok",
      [FY_CMD_MALFORMED] = "malformed",
      [FY_CMD_BAD_SIGNATURE] = "bad_signature",
      [FY_CMD_SIGNER_MISMATCH] = "signer_mismatch",
      [FY_CMD_WRONG_COORDINATOR] = "wrong_coordinator",
      [FY_CMD_NOT_YET_VALID] = "not_yet_valid",
      [FY_CMD_EXPIRED] = "expired",
      [FY_CMD_UNKNOWN_SIGNER] = "unknown_signer",
      [FY_CMD_REPLAYED] = "replayed",
      [FY_CMD_FORBIDDEN_ROLE] = "forbidden_role",
      [FY_CMD_FORBIDDEN_TENANT] = "forbidden_tenant",
      [FY_CMD_INVALID_ARGS] = "invalid_args",
      [FY_CMD_NOT_FOUND] = "not_found",
      [FY_CMD_CONFLICT] = "conflict",
      [FY_CMD_INCOMPATIBLE] = "incompatible",
      [FY_CMD_DOWNGRADE] = "downgrade",
  };
  if ((unsigned)r >= FY_ARRAY_LEN(names))
    return "unknown";
  return names[r];
}

/* "2026-12-02T06:10:00Z" (".123" before the Z when there are milliseconds). */
static const char *format_time(uint64_t ms, char *out, size_t size) {
  time_t s = (time_t)(ms / 1000);
  struct tm tm;
  if (ms / 1000 > (uint64_t)253402300799 || !gmtime_r(&s, &tm)) { /* past 9999-12-31 */
    snprintf(out, size, "%llu ms since the epoch", (unsigned long long)ms);
    return out;
  }
  char date[32];
  strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm);
  if (ms % 1000)
    snprintf(out, size, "%s.%03uZ", date, (unsigned)(ms % 1000));
  else
    snprintf(out, size, "%sZ", date);
  return out;
}

static const char *format_duration(uint64_t ms, char *out, size_t size) {
  unsigned long long s = ms / 1000;
  if (ms < 1000)
    snprintf(out, size, "%llu ms", (unsigned long long)ms);
  else if (s < 120)
    snprintf(out, size, "%llu s", s);
  else if (s < 7200)
    snprintf(out, size, "%llu min", s / 60);
  else if (s < 172800) /* 48 h */
    snprintf(out, size, "%llu h", s / 3600);
  else
    snprintf(out, size, "%llu d", s / 86400);
  return out;
}

enum fy_cmd_refusal fy_cmd_check(const uint8_t *bytes, size_t len, const struct fy_nodeid *coordinator,
                                 uint64_t now_ms, struct fy_envelope *env, struct fy_cmd_body *body,
                                 struct fy_err *err) {
  struct fy_envelope e;
  struct fy_cmd_body b;
  memset(&e, 0, sizeof(e));
  char x[FY_NODEID_SHORT_LEN + 1], y[FY_NODEID_SHORT_LEN + 1], when[48], ago[32];
  int rc = fy_envelope_open(bytes, len, FY_CTX_COMMAND, &e, err);
  if (rc < 0) {
    fy_err_prefix(err, "command");
    return rc == FY_ECRYPTO ? FY_CMD_BAD_SIGNATURE : FY_CMD_MALFORMED;
  }
  if (fy_cmd_body_decode(e.body, e.body_len, &b, err) < 0) {
    fy_err_prefix(err, "command");
    return FY_CMD_MALFORMED;
  }
  if (!fy_nodeid_equal(&b.issuer, &e.signer)) {
    fy_nodeid_to_short(&b.issuer, x);
    fy_nodeid_to_short(&e.signer, y);
    fy_err_set(err, FY_EPERM, "command: issuer %s is not the signer %s", x, y);
    return FY_CMD_SIGNER_MISMATCH;
  }
  if (!fy_nodeid_equal(&b.coordinator, coordinator)) {
    fy_nodeid_to_short(&b.coordinator, x);
    fy_nodeid_to_short(coordinator, y);
    fy_err_set(err, FY_EPERM, "command: addressed to coordinator %s, this is %s", x, y);
    return FY_CMD_WRONG_COORDINATOR;
  }
  if (b.issued_at > now_ms && b.issued_at - now_ms > FY_CMD_SKEW_MS) {
    fy_err_set(err, FY_EPERM,
               "command: not yet valid: issued %s in the future at %s (clock skew allowed: 5 min)",
               format_duration(b.issued_at - now_ms, ago, sizeof(ago)),
               format_time(b.issued_at, when, sizeof(when)));
    return FY_CMD_NOT_YET_VALID;
  }
  if (now_ms >= b.expires_at) {
    fy_err_set(err, FY_EPERM, "command: expired %s ago at %s",
               format_duration(now_ms - b.expires_at, ago, sizeof(ago)),
               format_time(b.expires_at, when, sizeof(when)));
    return FY_CMD_EXPIRED;
  }
  if (env)
    *env = e;
  if (body)
    *body = b;
  return FY_CMD_OK;
}
