#include "fleet/manifest.h"

#include <msgpack.h>
#include <stdio.h>
#include <string.h>

#include "base/cleanup.h"
#include "base/mpmap.h"
#include "base/mpshape.h"

enum {
  K_ISSUER,
  K_COORD,
  K_TENANT,
  K_IAT,
  K_NAME,
  K_VERSION,
  K_KIND,
  K_URI,
  K_SHA256,
  K_SIZE,
  K_COMPATIBLE,
  K_ALLOW_DOWNGRADE,
  K_COUNT
};
static const char *const keys[K_COUNT] = {"issuer", "coord",   "tenant",     "iat",
                                          "name",   "version", "kind",       "uri",
                                          "sha256", "size",    "compatible", "allow_downgrade"};

/* Room for every key twice (so a duplicate is named, not a size error) plus a
 * full compatible list. */
#define ELEMENTS_MAX (4 * K_COUNT + FY_MANIFEST_COMPATIBLE_MAX)
#define STORE_PREFIX "/nix/store/"
#define NIX_HASH_LEN 32

const char *fy_artifact_kind_name(enum fy_artifact_kind k) {
  switch (k) {
  case FY_ARTIFACT_SCRIPT:
    return "script";
  case FY_ARTIFACT_NIXOS:
    return "nixos";
  }
  return "unknown";
}

int fy_artifact_kind_parse(const char *text, enum fy_artifact_kind *out, struct fy_err *err) {
  if (strcmp(text, "script") == 0)
    *out = FY_ARTIFACT_SCRIPT;
  else if (strcmp(text, "nixos") == 0)
    *out = FY_ARTIFACT_NIXOS;
  else
    return fy_err_set(err, FY_EINVAL, "manifest: kind \"%.32s\" is not one of script, nixos", text);
  return 0;
}

int fy_manifest_set_version(struct fy_manifest *m, const char *text, struct fy_err *err) {
  struct fy_semver v;
  int rc = fy_semver_parse(text, &v, err);
  if (rc < 0)
    return fy_err_prefix(err, "manifest");
  m->version = v;
  snprintf(m->version_text, sizeof(m->version_text), "%s", text);
  return 0;
}

/* ---- field rules, shared by encode and decode ------------------------------ */

static bool lower_name_char(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

static bool hw_char(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
         c == '-';
}

/* Nix's base32 alphabet: digits and lower-case letters without e, o, u, t. */
static bool nix_hash_char(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z' && c != 'e' && c != 'o' && c != 'u' && c != 't');
}

/* What Nix allows in a store path name. */
static bool nix_name_char(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '+' || c == '-' ||
         c == '.' || c == '_' || c == '?' || c == '=';
}

/* s cut to fit a message, with '?' for bytes that could garble a log line. */
static const char *quote(const char *s, char *out, size_t size) {
  size_t n = strlen(s), o = 0;
  for (size_t i = 0; i < n && o + 4 < size; i++) {
    unsigned char c = (unsigned char)s[i];
    out[o++] = c >= 0x20 && c < 0x7f && c != '"' ? (char)c : '?';
  }
  if (o < n)
    memcpy(out + o, "...", 3), o += 3;
  out[o] = '\0';
  return out;
}

static int check_name(const char *s, struct fy_err *err) {
  size_t n = strlen(s);
  if (n == 0 || n > FY_MANIFEST_NAME_MAX)
    return fy_err_set(err, FY_EINVAL, "manifest: name is %zu bytes, must be 1 to %d", n,
                      FY_MANIFEST_NAME_MAX);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!lower_name_char(c) || (i == 0 && (c == '.' || c == '_' || c == '-')))
      return fy_err_set(err, FY_EINVAL,
                        "manifest: name has byte 0x%02x at offset %zu (allowed: [a-z0-9._-], starting with "
                        "[a-z0-9])",
                        c, i);
  }
  return 0;
}

static int check_uri(enum fy_artifact_kind kind, const char *s, struct fy_err *err) {
  size_t n = strlen(s);
  char q[64];
  if (n == 0 || n > FY_MANIFEST_URI_MAX)
    return fy_err_set(err, FY_EINVAL, "manifest: uri is %zu bytes, must be 1 to %d", n, FY_MANIFEST_URI_MAX);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c <= 0x20 || c >= 0x7f)
      return fy_err_set(err, FY_EINVAL, "manifest: uri has byte 0x%02x at offset %zu (printable ASCII only)",
                        c, i);
  }
  if (kind == FY_ARTIFACT_NIXOS) {
    size_t p = strlen(STORE_PREFIX), i = p;
    bool ok = n > p + NIX_HASH_LEN + 1 && memcmp(s, STORE_PREFIX, p) == 0;
    for (; ok && i < p + NIX_HASH_LEN; i++)
      ok = nix_hash_char((unsigned char)s[i]);
    ok = ok && s[i++] == '-' && s[i] != '.';
    for (; ok && i < n; i++)
      ok = nix_name_char((unsigned char)s[i]);
    if (!ok)
      return fy_err_set(
          err, FY_EINVAL,
          "manifest: uri \"%s\" is not a store path /nix/store/<32 nix-base32 characters>-<name> "
          "(kind nixos)",
          quote(s, q, sizeof(q)));
    return 0;
  }
  /* file:// takes an absolute path and no host; http(s) need a host. */
  static const struct {
    const char *scheme;
    char next_must, next_mustnt;
  } schemes[] = {{"file://", '/', 0}, {"http://", 0, '/'}, {"https://", 0, '/'}};
  for (size_t k = 0; k < FY_ARRAY_LEN(schemes); k++) {
    size_t sn = strlen(schemes[k].scheme);
    if (n > sn && memcmp(s, schemes[k].scheme, sn) == 0) {
      char c = s[sn];
      if ((schemes[k].next_must && c != schemes[k].next_must) || c == schemes[k].next_mustnt)
        return fy_err_set(err, FY_EINVAL, "manifest: uri \"%s\": %s", quote(s, q, sizeof(q)),
                          k == 0 ? "file:// takes an absolute path (file:///...)" : "no host after //");
      return 0;
    }
  }
  return fy_err_set(err, FY_EINVAL,
                    "manifest: uri \"%s\" is not file:///..., http://... or https://... (kind script)",
                    quote(s, q, sizeof(q)));
}

static int check_compatible_entry(size_t idx, const char *s, struct fy_err *err) {
  size_t n = strlen(s);
  const char *slash = strchr(s, '/');
  size_t mn = slash ? (size_t)(slash - s) : n;
  char q[64];
  const char *what = NULL;
  if (mn == 0 || mn > FY_MANIFEST_HW_PART_MAX)
    what = "model must be 1 to 63 bytes";
  else if (slash && (n - mn - 1 == 0 || n - mn - 1 > FY_MANIFEST_HW_PART_MAX))
    what = "revision must be 1 to 63 bytes";
  else
    for (size_t i = 0; i < n && !what; i++)
      if (i != mn && !hw_char((unsigned char)s[i]))
        what = "allowed: \"model\" or \"model/revision\", each of [A-Za-z0-9._-]";
  if (what)
    return fy_err_set(err, FY_EINVAL, "manifest: compatible[%zu] \"%s\": %s", idx, quote(s, q, sizeof(q)),
                      what);
  return 0;
}

/* Everything but the version, which each side checks in its own form. */
static int check_fields(const struct fy_manifest *m, struct fy_err *err) {
  int rc;
  if (strnlen(m->tenant, sizeof(m->tenant)) == sizeof(m->tenant) ||
      strnlen(m->name, sizeof(m->name)) == sizeof(m->name) ||
      strnlen(m->uri, sizeof(m->uri)) == sizeof(m->uri))
    return fy_err_set(err, FY_EINVAL, "manifest: a string field is not NUL-terminated");
  if (fy_tenant_check(m->tenant, err) < 0)
    return fy_err_prefix(err, "manifest: tenant");
  if ((rc = check_name(m->name, err)) < 0)
    return rc;
  if (m->kind != FY_ARTIFACT_SCRIPT && m->kind != FY_ARTIFACT_NIXOS)
    return fy_err_set(err, FY_EINVAL, "manifest: kind %d is not script or nixos", (int)m->kind);
  if ((rc = check_uri(m->kind, m->uri, err)) < 0)
    return rc;
  if (m->kind == FY_ARTIFACT_NIXOS && m->size != 0)
    return fy_err_set(err, FY_EINVAL, "manifest: size is %llu, must be 0 for kind nixos",
                      (unsigned long long)m->size);
  if (m->ncompatible > FY_MANIFEST_COMPATIBLE_MAX)
    return fy_err_set(err, FY_EINVAL, "manifest: compatible has %zu entries, at most %d", m->ncompatible,
                      FY_MANIFEST_COMPATIBLE_MAX);
  for (size_t i = 0; i < m->ncompatible; i++) {
    if (strnlen(m->compatible[i], sizeof(m->compatible[i])) == sizeof(m->compatible[i]))
      return fy_err_set(err, FY_EINVAL, "manifest: compatible[%zu] is not NUL-terminated", i);
    if ((rc = check_compatible_entry(i, m->compatible[i], err)) < 0)
      return rc;
    for (size_t j = 0; j < i; j++)
      if (strcmp(m->compatible[i], m->compatible[j]) == 0)
        return fy_err_set(err, FY_EINVAL, "manifest: compatible[%zu] \"%s\" repeats compatible[%zu]", i,
                          m->compatible[i], j);
  }
  return 0;
}

/* ---- encode ------------------------------------------------------------------ */

int fy_manifest_encode(const struct fy_manifest *m, struct fy_buf *out, struct fy_err *err) {
  char version[FY_SEMVER_TEXT_MAX + 1];
  struct fy_semver parsed;
  int rc = check_fields(m, err);
  if (rc < 0)
    return rc;
  if (strnlen(m->version_text, sizeof(m->version_text)) == sizeof(m->version_text))
    return fy_err_set(err, FY_EINVAL, "manifest: version_text is not NUL-terminated");
  if (m->version_text[0])
    memcpy(version, m->version_text, sizeof(version));
  else
    fy_semver_format(&m->version, version, sizeof(version));
  if (fy_semver_parse(version, &parsed, err) < 0)
    return fy_err_prefix(err, "manifest");

  size_t start = out->len;
  msgpack_packer pk;
  msgpack_packer_init(&pk, out, fy_mp_buf_write);
#define KEY(k) msgpack_pack_str_with_body(&pk, k, sizeof(k) - 1)
#define STR(s) msgpack_pack_str_with_body(&pk, s, strlen(s))
  const char *kind = fy_artifact_kind_name(m->kind);
  bool failed =
      msgpack_pack_map(&pk, K_COUNT) || KEY("issuer") ||
      msgpack_pack_bin_with_body(&pk, m->issuer.key, FY_NODEID_LEN) || KEY("coord") ||
      msgpack_pack_bin_with_body(&pk, m->coordinator.key, FY_NODEID_LEN) || KEY("tenant") || STR(m->tenant) ||
      KEY("iat") || msgpack_pack_uint64(&pk, m->issued_at) || KEY("name") || STR(m->name) || KEY("version") ||
      STR(version) || KEY("kind") || STR(kind) || KEY("uri") || STR(m->uri) || KEY("sha256") ||
      msgpack_pack_bin_with_body(&pk, m->sha256, sizeof(m->sha256)) || KEY("size") ||
      msgpack_pack_uint64(&pk, m->size) || KEY("compatible") || msgpack_pack_array(&pk, m->ncompatible);
  for (size_t i = 0; i < m->ncompatible && !failed; i++)
    failed = STR(m->compatible[i]);
  failed = failed || KEY("allow_downgrade") ||
           (m->allow_downgrade ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk));
#undef KEY
#undef STR
  if (failed) {
    out->len = start;
    return fy_err_set(err, FY_ENOMEM, "manifest: out of memory");
  }
  return 0;
}

/* ---- decode ------------------------------------------------------------------ */

static const char *shape_part(const struct fy_mpshape_pos *pos, char *out, size_t size, const void *user) {
  (void)pos, (void)user;
  snprintf(out, size, "manifest");
  return out;
}

/* Copies a str of at most cap - 1 bytes without NULs into out. */
static int get_str(const msgpack_object *v, const char *key, char *out, size_t cap, struct fy_err *err) {
  if (v->type != MSGPACK_OBJECT_STR)
    return fy_err_set(err, FY_EINVAL, "manifest: %s is not a string", key);
  size_t n = v->via.str.size;
  if (n >= cap)
    return fy_err_set(err, FY_EINVAL, "manifest: %s is %zu bytes, at most %zu", key, n, cap - 1);
  if (n && memchr(v->via.str.ptr, '\0', n))
    return fy_err_set(err, FY_EINVAL, "manifest: %s contains a NUL byte", key);
  if (n) /* an empty str may have a NULL ptr */
    memcpy(out, v->via.str.ptr, n);
  out[n] = '\0';
  return 0;
}

static int get_bin32(const msgpack_object *v, const char *key, uint8_t out[32], struct fy_err *err) {
  if (v->type != MSGPACK_OBJECT_BIN || v->via.bin.size != 32)
    return fy_err_set(err, FY_EINVAL, "manifest: %s is not 32 bytes of bin", key);
  memcpy(out, v->via.bin.ptr, 32);
  return 0;
}

static int get_uint(const msgpack_object *v, const char *key, uint64_t *out, struct fy_err *err) {
  if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
    return fy_err_set(err, FY_EINVAL, "manifest: %s is not an unsigned integer", key);
  *out = v->via.u64;
  return 0;
}

static int get_field(int k, const msgpack_object *v, struct fy_manifest *m, struct fy_err *err) {
  char kind[16];
  int rc;
  switch (k) {
  case K_ISSUER:
    return get_bin32(v, keys[k], m->issuer.key, err);
  case K_COORD:
    return get_bin32(v, keys[k], m->coordinator.key, err);
  case K_TENANT:
    return get_str(v, keys[k], m->tenant, sizeof(m->tenant), err);
  case K_IAT:
    return get_uint(v, keys[k], &m->issued_at, err);
  case K_NAME:
    return get_str(v, keys[k], m->name, sizeof(m->name), err);
  case K_VERSION:
    if ((rc = get_str(v, keys[k], m->version_text, sizeof(m->version_text), err)) < 0)
      return rc;
    return fy_semver_parse(m->version_text, &m->version, err) < 0 ? fy_err_prefix(err, "manifest") : 0;
  case K_KIND:
    if ((rc = get_str(v, keys[k], kind, sizeof(kind), err)) < 0)
      return rc;
    return fy_artifact_kind_parse(kind, &m->kind, err);
  case K_URI:
    return get_str(v, keys[k], m->uri, sizeof(m->uri), err);
  case K_SHA256:
    return get_bin32(v, keys[k], m->sha256, err);
  case K_SIZE:
    return get_uint(v, keys[k], &m->size, err);
  case K_COMPATIBLE:
    if (v->type != MSGPACK_OBJECT_ARRAY)
      return fy_err_set(err, FY_EINVAL, "manifest: compatible is not an array");
    if (v->via.array.size > FY_MANIFEST_COMPATIBLE_MAX)
      return fy_err_set(err, FY_EINVAL, "manifest: compatible has %u entries, at most %d", v->via.array.size,
                        FY_MANIFEST_COMPATIBLE_MAX);
    for (uint32_t i = 0; i < v->via.array.size; i++) {
      char what[32];
      snprintf(what, sizeof(what), "compatible[%u]", i);
      if ((rc = get_str(&v->via.array.ptr[i], what, m->compatible[i], sizeof(m->compatible[i]), err)) < 0)
        return rc;
    }
    m->ncompatible = v->via.array.size;
    return 0;
  default: /* K_ALLOW_DOWNGRADE */
    if (v->type != MSGPACK_OBJECT_BOOLEAN)
      return fy_err_set(err, FY_EINVAL, "manifest: allow_downgrade is not a boolean");
    m->allow_downgrade = v->via.boolean;
    return 0;
  }
}

static int decode_map(const msgpack_object *o, struct fy_manifest *m, struct fy_err *err) {
  if (o->type != MSGPACK_OBJECT_MAP)
    return fy_err_set(err, FY_EINVAL, "manifest: not a map");
  unsigned seen = 0;
  int rc;
  for (uint32_t i = 0; i < o->via.map.size; i++) {
    const msgpack_object_kv *kv = &o->via.map.ptr[i];
    char q[48], key[48];
    if (kv->key.type != MSGPACK_OBJECT_STR)
      return fy_err_set(err, FY_EINVAL, "manifest: key %u is not a string", i);
    size_t kn = kv->key.via.str.size;
    int k = 0;
    while (k < K_COUNT && !(strlen(keys[k]) == kn && memcmp(keys[k], kv->key.via.str.ptr, kn) == 0))
      k++;
    if (k == K_COUNT) {
      size_t c = kn < sizeof(key) - 1 ? kn : sizeof(key) - 1;
      if (c)
        memcpy(key, kv->key.via.str.ptr, c);
      key[c] = '\0';
      return fy_err_set(err, FY_EINVAL, "manifest: unknown key \"%s%s\"", quote(key, q, sizeof(q)),
                        c < kn ? "..." : "");
    }
    if (seen & (1u << k))
      return fy_err_set(err, FY_EINVAL, "manifest: key \"%s\" appears twice", keys[k]);
    seen |= 1u << k;
    if ((rc = get_field(k, &kv->val, m, err)) < 0)
      return rc;
  }
  for (int k = 0; k < K_COUNT; k++)
    if (!(seen & (1u << k)))
      return fy_err_set(err, FY_EINVAL, "manifest: missing key \"%s\"", keys[k]);
  return check_fields(m, err);
}

int fy_manifest_decode(const uint8_t *p, size_t len, struct fy_manifest *out, struct fy_err *err) {
  memset(out, 0, sizeof(*out));
  int rc = fy_mpshape_check(p, len, 2, ELEMENTS_MAX, "manifest", shape_part, NULL, err);
  if (rc < 0)
    return rc;
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  if (msgpack_unpack_next(&u, (const char *)p, len, &off) != MSGPACK_UNPACK_SUCCESS)
    rc = fy_err_set(err, FY_EINVAL, "manifest: not msgpack");
  else
    rc = decode_map(&u.data, out, err);
  msgpack_unpacked_destroy(&u);
  if (rc < 0)
    memset(out, 0, sizeof(*out));
  return rc;
}

int fy_manifest_sign(const struct fy_key *key, const struct fy_manifest *m, struct fy_buf *out,
                     struct fy_err *err) {
  if (!fy_nodeid_equal(&key->id, &m->issuer)) {
    char a[FY_NODEID_SHORT_LEN + 1], b[FY_NODEID_SHORT_LEN + 1];
    fy_nodeid_to_short(&m->issuer, a);
    fy_nodeid_to_short(&key->id, b);
    return fy_err_set(err, FY_EINVAL, "manifest: issuer %s is not the signing key %s", a, b);
  }
  FY_AUTOBUF struct fy_buf body = FY_BUF_INIT;
  int rc = fy_manifest_encode(m, &body, err);
  if (rc < 0)
    return rc;
  rc = fy_envelope_seal(key, FY_CTX_MANIFEST, body.data, body.len, out, err);
  return rc < 0 ? fy_err_prefix(err, "manifest") : 0;
}

/* ---- the agent's checks ------------------------------------------------------ */

bool fy_manifest_compatible(const struct fy_manifest *m, const char *hw_model, const char *hw_revision) {
  if (m->ncompatible == 0)
    return true;
  if (!hw_model || !hw_model[0])
    return false;
  size_t mn = strlen(hw_model);
  for (size_t i = 0; i < m->ncompatible && i < FY_MANIFEST_COMPATIBLE_MAX; i++) {
    const char *e = m->compatible[i], *slash = strchr(e, '/');
    if (!slash) {
      if (strcmp(e, hw_model) == 0)
        return true;
    } else if ((size_t)(slash - e) == mn && memcmp(e, hw_model, mn) == 0 && hw_revision &&
               strcmp(slash + 1, hw_revision) == 0) {
      return true;
    }
  }
  return false;
}

/* "rpi4/1.4, rpi5" (the first few, then how many in all). */
static const char *compatible_list(const struct fy_manifest *m, char *out, size_t size) {
  size_t o = 0;
  out[0] = '\0';
  for (size_t i = 0; i < m->ncompatible && o < size; i++) {
    if (i == 4) {
      snprintf(out + o, size - o, ", ... (%zu in all)", m->ncompatible);
      break;
    }
    int n = snprintf(out + o, size - o, "%s%s", i ? ", " : "", m->compatible[i]);
    o += n > 0 ? (size_t)n : 0;
  }
  return out;
}

int fy_manifest_check_compatible(const struct fy_manifest *m, const char *hw_model, const char *hw_revision,
                                 struct fy_err *err) {
  if (fy_manifest_compatible(m, hw_model, hw_revision))
    return 0;
  char list[256];
  compatible_list(m, list, sizeof(list));
  if (!hw_model || !hw_model[0])
    return fy_err_set(err, FY_EPERM, "incompatible: %s %s is for %s; this machine's model is unknown",
                      m->name, m->version_text, list);
  return fy_err_set(err, FY_EPERM, "incompatible: %s %s is for %s; this machine is %.63s%s%.63s", m->name,
                    m->version_text, list, hw_model, hw_revision && hw_revision[0] ? "/" : "",
                    hw_revision ? hw_revision : "");
}

enum fy_cmd_refusal fy_manifest_verify(const uint8_t *env, size_t len, const struct fy_manifest_target *t,
                                       struct fy_manifest *out, struct fy_err *err) {
  struct fy_envelope e;
  struct fy_manifest m;
  char x[FY_NODEID_SHORT_LEN + 1], y[FY_NODEID_SHORT_LEN + 1];
  if (out)
    memset(out, 0, sizeof(*out));
  int rc = fy_envelope_open(env, len, FY_CTX_MANIFEST, &e, err);
  if (rc < 0) {
    fy_err_prefix(err, "manifest");
    return rc == FY_ECRYPTO ? FY_CMD_BAD_SIGNATURE : FY_CMD_MALFORMED;
  }
  if (fy_manifest_decode(e.body, e.body_len, &m, err) < 0)
    return FY_CMD_MALFORMED;
  if (out)
    *out = m;
  if (!fy_nodeid_equal(&m.issuer, &e.signer)) {
    fy_nodeid_to_short(&m.issuer, x);
    fy_nodeid_to_short(&e.signer, y);
    fy_err_set(err, FY_EPERM, "manifest: issuer %s is not the signer %s", x, y);
    return FY_CMD_SIGNER_MISMATCH;
  }
  if (!fy_nodeid_equal(&m.coordinator, t->coordinator)) {
    fy_nodeid_to_short(&m.coordinator, x);
    fy_nodeid_to_short(t->coordinator, y);
    fy_err_set(err, FY_EPERM, "manifest: for coordinator %s, this agent's is %s", x, y);
    return FY_CMD_WRONG_COORDINATOR;
  }
  if (!t->tenant || strcmp(m.tenant, t->tenant) != 0) {
    if (t->tenant && t->tenant[0])
      fy_err_set(err, FY_EPERM, "manifest: for tenant %s, this agent is in tenant %.63s", m.tenant,
                 t->tenant);
    else
      fy_err_set(err, FY_EPERM, "manifest: for tenant %s, this agent has no tenant", m.tenant);
    return FY_CMD_FORBIDDEN_TENANT;
  }
  if (!t->trust || !fy_trust_may_sign_rollout(t->trust, &e.signer, m.tenant)) {
    const struct fy_admin *a = t->trust ? fy_trust_find(t->trust, &e.signer) : NULL;
    char scope[FY_ADMIN_TENANTS_MAX * (FY_TENANT_MAX + 1)];
    fy_nodeid_to_short(&e.signer, x);
    if (a) {
      fy_admin_format_tenants(a, scope, sizeof(scope));
      fy_err_set(err, FY_EPERM,
                 "manifest: signer %s may not sign rollouts for tenant %s (it is %s of %.200s)", x, m.tenant,
                 fy_role_name(a->role), scope);
    } else {
      fy_err_set(err, FY_EPERM, "manifest: signer %s may not sign rollouts for tenant %s (not an admin here)",
                 x, m.tenant);
    }
    return FY_CMD_FORBIDDEN_ROLE;
  }
  if (fy_manifest_check_compatible(&m, t->hw_model, t->hw_revision, err) < 0) {
    fy_err_prefix(err, "manifest");
    return FY_CMD_INCOMPATIBLE;
  }
  struct fy_semver cur;
  if (t->current_version && fy_semver_parse(t->current_version, &cur, NULL) == 0 && !m.allow_downgrade &&
      fy_semver_cmp(&m.version, &cur) < 0) {
    fy_err_set(err, FY_EPERM,
               "manifest: %s: downgrade from %.64s to %s refused (the manifest does not allow downgrades)",
               m.name, t->current_version, m.version_text);
    return FY_CMD_DOWNGRADE;
  }
  return FY_CMD_OK;
}
