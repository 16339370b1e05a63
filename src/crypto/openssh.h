/* The OpenSSH key formats ferry reads and writes, for ed25519 only:
 *
 *  - public key lines: `ssh-ed25519 <base64 blob> [comment]`, where the blob is
 *    string "ssh-ed25519" + string pk(32) (RFC 8709 / PROTOCOL.key);
 *  - private key files: "-----BEGIN OPENSSH PRIVATE KEY-----", base64 of the
 *    "openssh-key-v1\0" container (OpenSSH's PROTOCOL.key).
 *
 * ferry's own key files use the same private format (unencrypted), so
 * `ssh-keygen -y -f` works on them and ssh host keys work as node keys.
 * Decoders here see untrusted bytes: every length is checked before use, and
 * tests/fuzz/fuzz_openssh.c runs them under libFuzzer. */
#ifndef FY_CRYPTO_OPENSSH_H
#define FY_CRYPTO_OPENSSH_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

#define FY_ED25519_SEED_LEN 32
#define FY_ED25519_PK_LEN 32
#define FY_OPENSSH_COMMENT_MAX 256

struct fy_openssh_key {
  uint8_t seed[FY_ED25519_SEED_LEN]; /* private; wiped by fy_openssh_key_wipe */
  uint8_t pk[FY_ED25519_PK_LEN];
  char comment[FY_OPENSSH_COMMENT_MAX];
};

/* Decodes an armored private key (the whole file's bytes). Fails with
 *  FY_EUNSUPPORTED: encrypted (cipher/kdf other than "none": says which),
 *                   a key type other than ssh-ed25519 (names it), more than one key,
 *                   a PEM block of another kind ("RSA PRIVATE KEY": names it);
 *  FY_EINVAL:       missing armor, bad base64 (line and column), truncated or
 *                   inconsistent fields (names the field and offset), check-int
 *                   mismatch, wrong padding, a private half that does not match
 *                   the public key (including a seed that derives another key);
 *  FY_ELIMIT:       a comment of FY_OPENSSH_COMMENT_MAX bytes or more.
 * The message does not name the file; the caller prefixes it. On failure
 * *out is zeroed. */
int fy_openssh_decode_private(const uint8_t *data, size_t len, struct fy_openssh_key *out,
                              struct fy_err *err);

/* Writes the armored, unencrypted private key (with a trailing newline) into
 * a malloc'd buffer that the caller owns and must wipe (sodium_memzero) and
 * free; the text is also NUL-terminated (*out_len does not count the NUL).
 * check_int is the container's random check value. The output is byte for
 * byte what ssh-keygen writes (block size 8 padding, 70-column base64).
 * FY_EINVAL when key->pk is not the seed's public key or the comment is not
 * NUL-terminated. */
int fy_openssh_encode_private(const struct fy_openssh_key *key, uint32_t check_int, char **out,
                              size_t *out_len, struct fy_err *err);

/* Parses `ssh-ed25519 <base64> [comment]`; pk receives the 32-byte key. */
int fy_openssh_decode_public(const char *line, uint8_t pk[FY_ED25519_PK_LEN], struct fy_err *err);

/* The wire blob: string "ssh-ed25519", string pk. Always 51 bytes. */
#define FY_OPENSSH_PUBLIC_BLOB_LEN 51
void fy_openssh_public_blob(const uint8_t pk[FY_ED25519_PK_LEN], uint8_t out[FY_OPENSSH_PUBLIC_BLOB_LEN]);

/* `ssh-ed25519 <base64>` plus " comment" when comment is non-empty; malloc'd.
 * FY_EINVAL when the comment holds a line break. */
int fy_openssh_format_public(const uint8_t pk[FY_ED25519_PK_LEN], const char *comment, char **out,
                             struct fy_err *err);

void fy_openssh_key_wipe(struct fy_openssh_key *key);

#endif
