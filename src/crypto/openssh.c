/* OpenSSH ed25519 key formats: public key lines and the openssh-key-v1
 * private key container (OpenSSH's PROTOCOL.key).
 *
 * Container, after base64 between the armor lines:
 *
 *   byte[15] "openssh-key-v1\0"
 *   string   ciphername           "none" (anything else: encrypted)
 *   string   kdfname              "none"
 *   string   kdfoptions           "" for "none"
 *   uint32   number of keys       1
 *   string   public key blob      string "ssh-ed25519", string pk[32]
 *   string   private section      length a multiple of the block size (8):
 *     uint32 checkint, uint32 checkint (equal)
 *     string "ssh-ed25519", string pk[32], string sk[64] = seed || pk
 *     string comment
 *     byte   1, 2, 3, ... up to the block size
 *
 * Integers are big endian; a string is a uint32 length and that many bytes.
 * The decoder reads untrusted bytes: every length is checked against what is
 * left before it is used, and every field that ferry does not accept is
 * named in the message. */
#include "crypto/openssh.h"

#include <inttypes.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARMOR_BEGIN "-----BEGIN OPENSSH PRIVATE KEY-----"
#define ARMOR_END "-----END OPENSSH PRIVATE KEY-----"
#define ARMOR_BEGIN_LEN (sizeof(ARMOR_BEGIN) - 1)
#define ARMOR_END_LEN (sizeof(ARMOR_END) - 1)
#define AUTH_MAGIC "openssh-key-v1" /* followed by its NUL in the container */
#define AUTH_MAGIC_LEN sizeof(AUTH_MAGIC)
#define KEY_TYPE "ssh-ed25519"
#define KEY_TYPE_LEN (sizeof(KEY_TYPE) - 1)
#define CIPHER_NONE "none"
#define BLOCK_SIZE 8    /* cipher block size of "none" */
#define WRAP_COLUMNS 70 /* ssh-keygen's base64 line length */
#define ED25519_SK_LEN 64
#define NAME_MAX_SHOWN 48 /* untrusted names are shown at most this long */
#define B64_IGNORE " \t\r\n"
#define PUBLIC_B64_MAX 1024 /* longest base64 public key blob looked into */

static void sodium_freep(void *p) {
  void **pp = p;
  sodium_free(*pp); /* wipes before freeing; NULL is fine */
}
#define FY_SODIUM_AUTOFREE __attribute__((cleanup(sodium_freep)))

/* Copies an untrusted name for a message: printable ASCII only, shortened. */
static void shown_name(char out[NAME_MAX_SHOWN], const uint8_t *s, size_t n) {
  size_t max = NAME_MAX_SHOWN - 4; /* room for "..." and the NUL */
  size_t i = 0;
  for (; i < n && i < max; i++)
    out[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? (char)s[i] : '?';
  if (i < n) {
    memcpy(out + i, "...", 3);
    i += 3;
  }
  out[i] = '\0';
}

static bool bytes_eq(const uint8_t *s, size_t n, const char *lit) {
  size_t m = strlen(lit);
  return n == m && memcmp(s, lit, m) == 0;
}

/* ---- bounded reader ---------------------------------------------------- */

struct rd {
  const uint8_t *p;
  size_t len;
  size_t off;
  const char *what; /* "container", "private section", "public key blob" */
};

static int rd_u32(struct rd *r, const char *field, uint32_t *v, struct fy_err *err) {
  size_t left = r->len - r->off;
  *v = 0;
  if (left < 4)
    return fy_err_set(err, FY_EINVAL, "truncated %s: %s needs 4 bytes at offset %zu, only %zu left", r->what,
                      field, r->off, left);
  const uint8_t *b = r->p + r->off;
  *v = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | (uint32_t)b[3];
  r->off += 4;
  return 0;
}

static int rd_string(struct rd *r, const char *field, const uint8_t **s, size_t *n, struct fy_err *err) {
  size_t at = r->off;
  uint32_t slen;
  *s = NULL;
  *n = 0;
  int rc = rd_u32(r, field, &slen, err);
  if (rc < 0)
    return rc;
  size_t left = r->len - r->off;
  if (slen > left)
    return fy_err_set(err, FY_EINVAL,
                      "truncated %s: %s at offset %zu claims %" PRIu32 " bytes, only %zu left", r->what,
                      field, at, slen, left);
  *s = r->p + r->off;
  *n = slen;
  r->off += slen;
  return 0;
}

/* ---- writer (sizes are computed up front, so it never overflows) -------- */

struct wr {
  uint8_t *p;
  size_t off;
};

static void wr_bytes(struct wr *w, const void *b, size_t n) {
  if (n)
    memcpy(w->p + w->off, b, n);
  w->off += n;
}

static void wr_u32(struct wr *w, uint32_t v) {
  uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
  wr_bytes(w, b, 4);
}

static void wr_string(struct wr *w, const void *b, size_t n) {
  wr_u32(w, (uint32_t)n);
  wr_bytes(w, b, n);
}

/* ---- public key blob ------------------------------------------------------ */

void fy_openssh_public_blob(const uint8_t pk[FY_ED25519_PK_LEN], uint8_t out[FY_OPENSSH_PUBLIC_BLOB_LEN]) {
  struct wr w = {out, 0};
  wr_string(&w, KEY_TYPE, KEY_TYPE_LEN);
  wr_string(&w, pk, FY_ED25519_PK_LEN);
}

/* Parses a public key blob. A type other than ssh-ed25519 is FY_EUNSUPPORTED
 * (named); anything malformed is FY_EINVAL. */
static int parse_public_blob(const uint8_t *blob, size_t len, const char *what, uint8_t pk[FY_ED25519_PK_LEN],
                             struct fy_err *err) {
  struct rd r = {blob, len, 0, what};
  const uint8_t *type, *key;
  size_t type_len, key_len;
  int rc = rd_string(&r, "key type", &type, &type_len, err);
  if (rc < 0)
    return rc;
  if (!bytes_eq(type, type_len, KEY_TYPE)) {
    char name[NAME_MAX_SHOWN];
    shown_name(name, type, type_len);
    return fy_err_set(err, FY_EUNSUPPORTED, "key type '%s' is not supported; ferry uses " KEY_TYPE " keys",
                      name);
  }
  rc = rd_string(&r, "public key", &key, &key_len, err);
  if (rc < 0)
    return rc;
  if (key_len != FY_ED25519_PK_LEN)
    return fy_err_set(err, FY_EINVAL,
                      "%s holds a %zu-byte " KEY_TYPE " key; ed25519 public keys are %d bytes", what, key_len,
                      FY_ED25519_PK_LEN);
  if (r.off != r.len)
    return fy_err_set(err, FY_EINVAL, "%s has %zu unexpected bytes after the key", what, r.len - r.off);
  memcpy(pk, key, FY_ED25519_PK_LEN);
  return 0;
}

/* ---- private key: armor ----------------------------------------------------- */

static bool is_space(uint8_t c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* 1-based line and column of data[pos], for messages about the text. */
static void line_col(const uint8_t *data, size_t pos, size_t *line, size_t *col) {
  size_t l = 1, c = 1;
  for (size_t i = 0; i < pos; i++) {
    if (data[i] == '\n') {
      l++;
      c = 1;
    } else {
      c++;
    }
  }
  *line = l;
  *col = c;
}

/* Says what the data is when it is not an OpenSSH private key. */
static int not_armored(const uint8_t *p, size_t n, struct fy_err *err) {
  static const char pem[] = "-----BEGIN ";
  if (n >= sizeof(pem) - 1 && memcmp(p, pem, sizeof(pem) - 1) == 0) {
    const uint8_t *label = p + sizeof(pem) - 1;
    size_t left = n - (sizeof(pem) - 1), label_len = 0;
    while (label_len < left && label[label_len] != '-' && label[label_len] != '\n')
      label_len++;
    if (left - label_len < 5 || memcmp(label + label_len, "-----", 5) != 0)
      return fy_err_set(err, FY_EINVAL, "missing '" ARMOR_BEGIN "' armor line at the start");
    char name[NAME_MAX_SHOWN];
    shown_name(name, label, label_len);
    return fy_err_set(err, FY_EUNSUPPORTED,
                      "found a PEM '%s' block, not an OpenSSH private key; ferry reads "
                      "'" ARMOR_BEGIN "' " KEY_TYPE " keys (ssh-keygen -t ed25519)",
                      name);
  }
  /* "type AAAA...": a public key line (every blob starts with a small length). */
  size_t sp = 0;
  while (sp < n && sp < 64 && p[sp] > 0x20 && p[sp] < 0x7f)
    sp++;
  if (sp > 0 && sp < n && p[sp] == ' ' && n - sp - 1 >= 4 && memcmp(p + sp + 1, "AAAA", 4) == 0)
    return fy_err_set(err, FY_EINVAL, "this is an OpenSSH public key line, not a private key file");
  return fy_err_set(err, FY_EINVAL, "missing '" ARMOR_BEGIN "' armor line at the start");
}

/* Finds the base64 body between the armor lines and decodes it into a
 * sodium_malloc'd buffer. */
static int unarmor(const uint8_t *data, size_t len, uint8_t **bin, size_t *bin_len, struct fy_err *err) {
  size_t pos = 0;
  while (pos < len && is_space(data[pos]))
    pos++;
  if (pos == len)
    return fy_err_set(err, FY_EINVAL, "empty: no '" ARMOR_BEGIN "' armor line");
  if (len - pos < ARMOR_BEGIN_LEN && memcmp(data + pos, ARMOR_BEGIN, len - pos) == 0)
    return fy_err_set(err, FY_EINVAL, "truncated inside the '" ARMOR_BEGIN "' armor line");
  if (len - pos < ARMOR_BEGIN_LEN || memcmp(data + pos, ARMOR_BEGIN, ARMOR_BEGIN_LEN) != 0)
    return not_armored(data + pos, len - pos, err);
  pos += ARMOR_BEGIN_LEN;
  if (pos < len && data[pos] == '\r')
    pos++;
  if (pos >= len || data[pos] != '\n')
    return fy_err_set(err, FY_EINVAL,
                      pos >= len ? "truncated after the '" ARMOR_BEGIN "' armor line"
                                 : "unexpected text after '" ARMOR_BEGIN "' on its line");
  pos++;

  const uint8_t *body = data + pos;
  const uint8_t *end = memmem(body, len - pos, ARMOR_END, ARMOR_END_LEN);
  if (!end)
    return fy_err_set(err, FY_EINVAL, "missing '" ARMOR_END "' armor line (truncated file?)");
  size_t body_len = (size_t)(end - body);
  if (body_len > 0 && body[body_len - 1] != '\n') {
    size_t line, col;
    line_col(data, (size_t)(end - data), &line, &col);
    return fy_err_set(err, FY_EINVAL, "'" ARMOR_END "' does not start its line (line %zu)", line);
  }
  for (size_t i = (size_t)(end - data) + ARMOR_END_LEN; i < len; i++) {
    if (!is_space(data[i])) {
      size_t line, col;
      line_col(data, i, &line, &col);
      return fy_err_set(err, FY_EINVAL,
                        "unexpected data after the '" ARMOR_END "' line at line %zu, "
                        "column %zu",
                        line, col);
    }
  }

  size_t max = body_len / 4 * 3 + 3;
  FY_SODIUM_AUTOFREE uint8_t *buf = sodium_malloc(max);
  if (!buf)
    return fy_err_set(err, FY_ENOMEM, "cannot allocate %zu bytes for the key body", max);
  size_t n = 0;
  const char *stop = NULL;
  const char *b64 = (const char *)body;
  int rc = sodium_base642bin(buf, max, b64, body_len, B64_IGNORE, &n, &stop, sodium_base64_VARIANT_ORIGINAL);
  if (rc != 0 || stop != b64 + body_len) {
    size_t at = (stop ? (size_t)(stop - b64) : 0) + pos;
    size_t line, col;
    line_col(data, at, &line, &col);
    return fy_err_set(err, FY_EINVAL, "bad base64 in the key body at line %zu, column %zu", line, col);
  }
  if (n == 0)
    return fy_err_set(err, FY_EINVAL, "the key body between the armor lines is empty");
  *bin = buf;
  buf = NULL;
  *bin_len = n;
  return 0;
}

/* ---- private key: container -------------------------------------------------- */

static int parse_private_section(const uint8_t *sec, size_t sec_len, const uint8_t pk[FY_ED25519_PK_LEN],
                                 struct fy_openssh_key *out, struct fy_err *err) {
  if (sec_len < BLOCK_SIZE || sec_len % BLOCK_SIZE != 0)
    return fy_err_set(err, FY_EINVAL,
                      "private section is %zu bytes, not a non-zero multiple of the "
                      "cipher block size %d",
                      sec_len, BLOCK_SIZE);
  struct rd r = {sec, sec_len, 0, "private section"};
  uint32_t check1, check2;
  int rc;
  if ((rc = rd_u32(&r, "check-int 1", &check1, err)) < 0 ||
      (rc = rd_u32(&r, "check-int 2", &check2, err)) < 0)
    return rc;
  if (check1 != check2)
    return fy_err_set(err, FY_EINVAL,
                      "check-int mismatch (0x%08" PRIx32 " vs 0x%08" PRIx32
                      "): the private section is damaged",
                      check1, check2);

  const uint8_t *type, *ppk, *sk, *comment;
  size_t type_len, ppk_len, sk_len, comment_len;
  if ((rc = rd_string(&r, "private key type", &type, &type_len, err)) < 0)
    return rc;
  if (!bytes_eq(type, type_len, KEY_TYPE)) {
    char name[NAME_MAX_SHOWN];
    shown_name(name, type, type_len);
    return fy_err_set(err, FY_EINVAL, "private key type '%s' differs from the public key type '" KEY_TYPE "'",
                      name);
  }
  if ((rc = rd_string(&r, "private section's public key", &ppk, &ppk_len, err)) < 0)
    return rc;
  if (ppk_len != FY_ED25519_PK_LEN)
    return fy_err_set(err, FY_EINVAL,
                      "private section's public key is %zu bytes; ed25519 public keys "
                      "are %d bytes",
                      ppk_len, FY_ED25519_PK_LEN);
  if (memcmp(ppk, pk, FY_ED25519_PK_LEN) != 0)
    return fy_err_set(err, FY_EINVAL, "private section's public key differs from the file's public key");
  if ((rc = rd_string(&r, "secret key", &sk, &sk_len, err)) < 0)
    return rc;
  if (sk_len != ED25519_SK_LEN)
    return fy_err_set(err, FY_EINVAL,
                      "secret key is %zu bytes; ed25519 secret keys are %d (seed || "
                      "public key)",
                      sk_len, ED25519_SK_LEN);
  if (memcmp(sk + FY_ED25519_SEED_LEN, pk, FY_ED25519_PK_LEN) != 0)
    return fy_err_set(err, FY_EINVAL, "secret key's public half differs from the public key");

  /* The seed must derive the public key, or signatures would not verify. */
  uint8_t derived_pk[crypto_sign_PUBLICKEYBYTES];
  FY_SODIUM_AUTOFREE uint8_t *derived_sk = sodium_malloc(crypto_sign_SECRETKEYBYTES);
  if (!derived_sk)
    return fy_err_set(err, FY_ENOMEM, "cannot allocate a secret key buffer");
  if (crypto_sign_seed_keypair(derived_pk, derived_sk, sk) != 0)
    return fy_err_set(err, FY_ECRYPTO, "cannot derive the key pair from the seed");
  if (memcmp(derived_pk, pk, FY_ED25519_PK_LEN) != 0)
    return fy_err_set(err, FY_EINVAL,
                      "secret key's seed does not derive the public key: the private "
                      "half does not match");

  if ((rc = rd_string(&r, "comment", &comment, &comment_len, err)) < 0)
    return rc;
  if (comment_len >= FY_OPENSSH_COMMENT_MAX)
    return fy_err_set(err, FY_ELIMIT, "comment is %zu bytes; ferry accepts at most %d", comment_len,
                      FY_OPENSSH_COMMENT_MAX - 1);
  if (comment_len && memchr(comment, '\0', comment_len))
    return fy_err_set(err, FY_EINVAL, "comment contains a NUL byte");

  size_t pad = r.len - r.off;
  if (pad >= BLOCK_SIZE)
    return fy_err_set(err, FY_EINVAL,
                      "%zu bytes after the comment; padding to the block size %d is at "
                      "most %d bytes",
                      pad, BLOCK_SIZE, BLOCK_SIZE - 1);
  for (size_t i = 0; i < pad; i++) {
    uint8_t got = sec[r.off + i];
    if (got != (uint8_t)(i + 1))
      return fy_err_set(err, FY_EINVAL, "padding byte %zu is 0x%02x, expected 0x%02x", i + 1, got,
                        (unsigned)(i + 1));
  }

  memcpy(out->seed, sk, FY_ED25519_SEED_LEN);
  memcpy(out->pk, pk, FY_ED25519_PK_LEN);
  if (comment_len)
    memcpy(out->comment, comment, comment_len);
  out->comment[comment_len] = '\0';
  return 0;
}

static int parse_container(const uint8_t *bin, size_t len, struct fy_openssh_key *out, struct fy_err *err) {
  if (len < AUTH_MAGIC_LEN || memcmp(bin, AUTH_MAGIC, AUTH_MAGIC_LEN) != 0)
    return fy_err_set(err, FY_EINVAL,
                      "not an openssh-key-v1 container (the magic \"" AUTH_MAGIC "\\0\" is missing)");
  struct rd r = {bin, len, AUTH_MAGIC_LEN, "container"};
  const uint8_t *cipher, *kdf, *kdfopt, *pub, *priv;
  size_t cipher_len, kdf_len, kdfopt_len, pub_len, priv_len;
  uint32_t nkeys;
  char name[NAME_MAX_SHOWN];
  int rc;

  if ((rc = rd_string(&r, "ciphername", &cipher, &cipher_len, err)) < 0)
    return rc;
  if ((rc = rd_string(&r, "kdfname", &kdf, &kdf_len, err)) < 0)
    return rc;
  if (!bytes_eq(cipher, cipher_len, CIPHER_NONE)) {
    char kdf_name[NAME_MAX_SHOWN];
    shown_name(name, cipher, cipher_len);
    shown_name(kdf_name, kdf, kdf_len);
    return fy_err_set(err, FY_EUNSUPPORTED,
                      "key is encrypted (cipher '%s', kdf '%s'); ferry needs an "
                      "unencrypted key: remove the passphrase with ssh-keygen -p",
                      name, kdf_name);
  }
  if (!bytes_eq(kdf, kdf_len, CIPHER_NONE)) {
    shown_name(name, kdf, kdf_len);
    return fy_err_set(err, FY_EUNSUPPORTED,
                      "kdfname is '%s' but the cipher is 'none'; ferry reads only "
                      "unencrypted keys (kdf 'none')",
                      name);
  }
  if ((rc = rd_string(&r, "kdfoptions", &kdfopt, &kdfopt_len, err)) < 0)
    return rc;
  if (kdfopt_len != 0)
    return fy_err_set(err, FY_EINVAL, "kdfoptions is %zu bytes; it must be empty for kdf 'none'", kdfopt_len);
  if ((rc = rd_u32(&r, "number of keys", &nkeys, err)) < 0)
    return rc;
  if (nkeys == 0)
    return fy_err_set(err, FY_EINVAL, "number of keys is 0");
  if (nkeys != 1)
    return fy_err_set(err, FY_EUNSUPPORTED,
                      "number of keys is %" PRIu32 "; ferry reads files with exactly one key", nkeys);
  if ((rc = rd_string(&r, "public key blob", &pub, &pub_len, err)) < 0)
    return rc;
  uint8_t pk[FY_ED25519_PK_LEN];
  if ((rc = parse_public_blob(pub, pub_len, "public key blob", pk, err)) < 0)
    return rc;
  if ((rc = rd_string(&r, "private section", &priv, &priv_len, err)) < 0)
    return rc;
  if (r.off != r.len)
    return fy_err_set(err, FY_EINVAL, "%zu unexpected bytes after the private section", r.len - r.off);
  return parse_private_section(priv, priv_len, pk, out, err);
}

int fy_openssh_decode_private(const uint8_t *data, size_t len, struct fy_openssh_key *out,
                              struct fy_err *err) {
  if (!out || (!data && len))
    return fy_err_set(err, FY_EINVAL, "no key data");
  sodium_memzero(out, sizeof(*out));
  FY_SODIUM_AUTOFREE uint8_t *bin = NULL;
  size_t bin_len = 0;
  int rc = unarmor(data ? data : (const uint8_t *)"", len, &bin, &bin_len, err);
  if (rc == 0)
    rc = parse_container(bin, bin_len, out, err);
  if (rc < 0)
    fy_openssh_key_wipe(out);
  return rc;
}

/* ---- private key: encoder ---------------------------------------------------- */

int fy_openssh_encode_private(const struct fy_openssh_key *key, uint32_t check_int, char **out,
                              size_t *out_len, struct fy_err *err) {
  if (!key || !out || !out_len)
    return fy_err_set(err, FY_EINVAL, "no key to encode");
  *out = NULL;
  *out_len = 0;
  size_t comment_len = strnlen(key->comment, FY_OPENSSH_COMMENT_MAX);
  if (comment_len == FY_OPENSSH_COMMENT_MAX)
    return fy_err_set(err, FY_EINVAL, "comment is not NUL-terminated within %d bytes",
                      FY_OPENSSH_COMMENT_MAX);

  FY_SODIUM_AUTOFREE uint8_t *sk = sodium_malloc(crypto_sign_SECRETKEYBYTES);
  if (!sk)
    return fy_err_set(err, FY_ENOMEM, "cannot allocate a secret key buffer");
  uint8_t pk[crypto_sign_PUBLICKEYBYTES];
  if (crypto_sign_seed_keypair(pk, sk, key->seed) != 0)
    return fy_err_set(err, FY_ECRYPTO, "cannot derive the key pair from the seed");
  if (memcmp(pk, key->pk, FY_ED25519_PK_LEN) != 0)
    return fy_err_set(err, FY_EINVAL, "public key does not match the seed");

  size_t sec_len =
      4 + 4 + (4 + KEY_TYPE_LEN) + (4 + FY_ED25519_PK_LEN) + (4 + ED25519_SK_LEN) + (4 + comment_len);
  size_t pad = (BLOCK_SIZE - sec_len % BLOCK_SIZE) % BLOCK_SIZE;
  sec_len += pad;
  size_t bin_len =
      AUTH_MAGIC_LEN + (4 + 4) + (4 + 4) + 4 + 4 + (4 + FY_OPENSSH_PUBLIC_BLOB_LEN) + (4 + sec_len);
  FY_SODIUM_AUTOFREE uint8_t *bin = sodium_malloc(bin_len);
  if (!bin)
    return fy_err_set(err, FY_ENOMEM, "cannot allocate %zu bytes for the key", bin_len);

  uint8_t blob[FY_OPENSSH_PUBLIC_BLOB_LEN];
  fy_openssh_public_blob(key->pk, blob);
  struct wr w = {bin, 0};
  wr_bytes(&w, AUTH_MAGIC, AUTH_MAGIC_LEN);
  wr_string(&w, CIPHER_NONE, 4);
  wr_string(&w, CIPHER_NONE, 4);
  wr_string(&w, "", 0);
  wr_u32(&w, 1);
  wr_string(&w, blob, sizeof(blob));
  wr_u32(&w, (uint32_t)sec_len);
  wr_u32(&w, check_int);
  wr_u32(&w, check_int);
  wr_string(&w, KEY_TYPE, KEY_TYPE_LEN);
  wr_string(&w, key->pk, FY_ED25519_PK_LEN);
  wr_string(&w, sk, ED25519_SK_LEN);
  wr_string(&w, key->comment, comment_len);
  for (size_t i = 1; i <= pad; i++) {
    uint8_t b = (uint8_t)i;
    wr_bytes(&w, &b, 1);
  }

  size_t b64_size = sodium_base64_ENCODED_LEN(bin_len, sodium_base64_VARIANT_ORIGINAL);
  FY_SODIUM_AUTOFREE char *b64 = sodium_malloc(b64_size);
  if (!b64)
    return fy_err_set(err, FY_ENOMEM, "cannot allocate %zu bytes for base64", b64_size);
  sodium_bin2base64(b64, b64_size, bin, bin_len, sodium_base64_VARIANT_ORIGINAL);
  size_t b64_len = strlen(b64);
  size_t lines = (b64_len + WRAP_COLUMNS - 1) / WRAP_COLUMNS;

  size_t text_size = ARMOR_BEGIN_LEN + 1 + b64_len + lines + ARMOR_END_LEN + 1 + 1;
  char *text = malloc(text_size);
  if (!text)
    return fy_err_set(err, FY_ENOMEM, "cannot allocate %zu bytes for the key file", text_size);
  size_t off = 0;
  memcpy(text + off, ARMOR_BEGIN "\n", ARMOR_BEGIN_LEN + 1);
  off += ARMOR_BEGIN_LEN + 1;
  for (size_t i = 0; i < b64_len; i += WRAP_COLUMNS) {
    size_t n = b64_len - i < WRAP_COLUMNS ? b64_len - i : WRAP_COLUMNS;
    memcpy(text + off, b64 + i, n);
    off += n;
    text[off++] = '\n';
  }
  memcpy(text + off, ARMOR_END "\n", ARMOR_END_LEN + 1);
  off += ARMOR_END_LEN + 1;
  text[off] = '\0';
  sodium_memzero(blob, sizeof(blob));
  *out = text;
  *out_len = off;
  return 0;
}

/* ---- public key lines -------------------------------------------------------- */

static bool is_blank(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

int fy_openssh_decode_public(const char *line, uint8_t pk[FY_ED25519_PK_LEN], struct fy_err *err) {
  if (!line)
    return fy_err_set(err, FY_EINVAL, "no public key line");
  const char *p = line;
  while (is_blank(*p))
    p++;
  const char *type = p;
  while (*p && !is_blank(*p))
    p++;
  size_t type_len = (size_t)(p - type);
  if (type_len == 0)
    return fy_err_set(err, FY_EINVAL, "empty public key line");
  if (!bytes_eq((const uint8_t *)type, type_len, KEY_TYPE)) {
    char name[NAME_MAX_SHOWN];
    shown_name(name, (const uint8_t *)type, type_len);
    return fy_err_set(err, FY_EUNSUPPORTED, "key type '%s' is not supported; ferry uses " KEY_TYPE " keys",
                      name);
  }
  while (*p == ' ' || *p == '\t')
    p++;
  const char *b64 = p;
  while (*p && !is_blank(*p))
    p++;
  size_t b64_len = (size_t)(p - b64);
  if (b64_len == 0)
    return fy_err_set(err, FY_EINVAL, "missing the base64 key after '" KEY_TYPE "'");

  /* An ed25519 blob is 68 base64 characters; room for some slack so that
   * wrong inner lengths are reported as such, not as "too long". */
  uint8_t blob[PUBLIC_B64_MAX / 4 * 3];
  if (b64_len > PUBLIC_B64_MAX)
    return fy_err_set(
        err, FY_EINVAL, "public key is %zu base64 characters; an " KEY_TYPE " key is %zu", b64_len,
        (size_t)sodium_base64_ENCODED_LEN(FY_OPENSSH_PUBLIC_BLOB_LEN, sodium_base64_VARIANT_ORIGINAL) - 1);
  size_t blob_len = 0;
  const char *stop = NULL;
  if (sodium_base642bin(blob, sizeof(blob), b64, b64_len, NULL, &blob_len, &stop,
                        sodium_base64_VARIANT_ORIGINAL) != 0 ||
      stop != b64 + b64_len)
    return fy_err_set(err, FY_EINVAL, "bad base64 in the public key at position %zu",
                      (size_t)((stop ? stop : b64) - line));

  struct fy_err inner;
  fy_err_clear(&inner);
  int rc = parse_public_blob(blob, blob_len, "public key blob", pk, &inner);
  if (rc == FY_EUNSUPPORTED) /* the line says ed25519, the blob something else */
    return fy_err_set(err, FY_EINVAL, "the line says '" KEY_TYPE "' but its blob does not (%s)", inner.msg);
  if (rc < 0)
    return fy_err_set(err, rc, "%s", inner.msg);
  return 0;
}

int fy_openssh_format_public(const uint8_t pk[FY_ED25519_PK_LEN], const char *comment, char **out,
                             struct fy_err *err) {
  if (!out)
    return fy_err_set(err, FY_EINVAL, "no output for the public key line");
  *out = NULL;
  size_t comment_len = comment ? strlen(comment) : 0;
  if (comment_len && strpbrk(comment, "\r\n"))
    return fy_err_set(err, FY_EINVAL, "comment contains a line break; a public key is one line");
  uint8_t blob[FY_OPENSSH_PUBLIC_BLOB_LEN];
  fy_openssh_public_blob(pk, blob);
  char b64[sodium_base64_ENCODED_LEN(FY_OPENSSH_PUBLIC_BLOB_LEN, sodium_base64_VARIANT_ORIGINAL)];
  sodium_bin2base64(b64, sizeof(b64), blob, sizeof(blob), sodium_base64_VARIANT_ORIGINAL);
  size_t size = KEY_TYPE_LEN + 1 + strlen(b64) + (comment_len ? 1 + comment_len : 0) + 1;
  char *line = malloc(size);
  if (!line)
    return fy_err_set(err, FY_ENOMEM, "cannot allocate %zu bytes for the public key line", size);
  snprintf(line, size, "%s %s%s%s", KEY_TYPE, b64, comment_len ? " " : "", comment_len ? comment : "");
  *out = line;
  return 0;
}

void fy_openssh_key_wipe(struct fy_openssh_key *key) {
  if (key)
    sodium_memzero(key, sizeof(*key));
}
