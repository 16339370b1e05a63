/* Node ids: text forms, fingerprints and parsing (see nodeid.h). */
#include "crypto/nodeid.h"

#include <sodium.h>
#include <string.h>

#include "crypto/openssh.h"

_Static_assert(FY_NODEID_LEN == FY_ED25519_PK_LEN, "a node id is an ed25519 public key");
_Static_assert(FY_FINGERPRINT_MAX == sizeof("SHA256:") - 1 +
                                         sodium_base64_ENCODED_LEN(crypto_hash_sha256_BYTES,
                                                                   sodium_base64_VARIANT_ORIGINAL_NO_PADDING),
               "fingerprint buffer size");

void fy_nodeid_to_hex(const struct fy_nodeid *id, char out[FY_NODEID_HEX_LEN + 1]) {
  sodium_bin2hex(out, FY_NODEID_HEX_LEN + 1, id->key, FY_NODEID_LEN);
}

void fy_nodeid_to_short(const struct fy_nodeid *id, char out[FY_NODEID_SHORT_LEN + 1]) {
  sodium_bin2hex(out, FY_NODEID_SHORT_LEN + 1, id->key, FY_NODEID_SHORT_LEN / 2);
}

void fy_nodeid_fingerprint(const struct fy_nodeid *id, char out[FY_FINGERPRINT_MAX]) {
  uint8_t blob[FY_OPENSSH_PUBLIC_BLOB_LEN];
  uint8_t digest[crypto_hash_sha256_BYTES];
  static const char prefix[] = "SHA256:";
  fy_openssh_public_blob(id->key, blob);
  crypto_hash_sha256(digest, blob, sizeof(blob));
  memcpy(out, prefix, sizeof(prefix) - 1);
  sodium_bin2base64(out + sizeof(prefix) - 1, FY_FINGERPRINT_MAX - (sizeof(prefix) - 1), digest,
                    sizeof(digest), sodium_base64_VARIANT_ORIGINAL_NO_PADDING);
}

static bool is_blank(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static bool is_hex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

int fy_nodeid_parse(const char *text, struct fy_nodeid *out, struct fy_err *err) {
  if (!text || !out)
    return fy_err_set(err, FY_EINVAL, "no node id given");
  const char *start = text;
  while (is_blank(*start))
    start++;
  const char *end = start + strlen(start);
  while (end > start && is_blank(end[-1]))
    end--;
  size_t len = (size_t)(end - start);
  if (len == 0)
    return fy_err_set(err, FY_EINVAL, "empty node id");

  /* An OpenSSH public key line: "type base64 [comment]". */
  if (memchr(start, ' ', len) || memchr(start, '\t', len) || (len >= 4 && memcmp(start, "ssh-", 4) == 0))
    return fy_openssh_decode_public(start, out->key, err);

  static const char fp[] = "SHA256:";
  if (len >= sizeof(fp) - 1 && memcmp(start, fp, sizeof(fp) - 1) == 0)
    return fy_err_set(err, FY_EINVAL,
                      "a fingerprint cannot be turned back into a node id; give the %d hex "
                      "digits or the ssh-ed25519 public key line",
                      FY_NODEID_HEX_LEN);

  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)start[i];
    if (is_hex((char)c))
      continue;
    size_t pos = (size_t)(start - text) + i;
    if (c >= 0x20 && c < 0x7f)
      return fy_err_set(err, FY_EINVAL, "node id: '%c' at position %zu is not a hex digit", c, pos);
    return fy_err_set(err, FY_EINVAL, "node id: byte 0x%02x at position %zu is not a hex digit", c, pos);
  }
  if (len != FY_NODEID_HEX_LEN)
    return fy_err_set(err, FY_EINVAL, "node id has %zu hex digits; expected %d", len, FY_NODEID_HEX_LEN);
  size_t bin_len = 0;
  if (sodium_hex2bin(out->key, FY_NODEID_LEN, start, len, NULL, &bin_len, NULL) != 0 ||
      bin_len != FY_NODEID_LEN)
    return fy_err_set(err, FY_EINVAL, "node id: cannot decode the hex digits");
  return 0;
}

bool fy_nodeid_equal(const struct fy_nodeid *a, const struct fy_nodeid *b) {
  return memcmp(a->key, b->key, FY_NODEID_LEN) == 0;
}
