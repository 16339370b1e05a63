/* Node ids: every ferry node is named by its ed25519 public key.
 *
 * Canonical text form: 64 lowercase hex digits of the 32-byte key (what
 * nix-fleet prints, and what `ferry key show` prints). Parsing also accepts
 * uppercase hex and an OpenSSH public key line `ssh-ed25519 AAAA... [comment]`,
 * so a host's /etc/ssh/ssh_host_ed25519_key.pub works wherever an id is asked.
 *
 * Fingerprint for humans: "SHA256:" + unpadded base64 of SHA-256 over the
 * OpenSSH public key blob, exactly what `ssh-keygen -l` prints for the same
 * key, so an admin can compare ids with tools they already trust.
 * Short form: the first 12 hex digits, for tables and logs. */
#ifndef FY_CRYPTO_NODEID_H
#define FY_CRYPTO_NODEID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

#define FY_NODEID_LEN 32
#define FY_NODEID_HEX_LEN 64   /* without the NUL */
#define FY_NODEID_SHORT_LEN 12 /* without the NUL */
#define FY_FINGERPRINT_MAX 51  /* "SHA256:" + 43 base64 + NUL */

struct fy_nodeid {
  uint8_t key[FY_NODEID_LEN];
};

void fy_nodeid_to_hex(const struct fy_nodeid *id, char out[FY_NODEID_HEX_LEN + 1]);
void fy_nodeid_to_short(const struct fy_nodeid *id, char out[FY_NODEID_SHORT_LEN + 1]);
void fy_nodeid_fingerprint(const struct fy_nodeid *id, char out[FY_FINGERPRINT_MAX]);

/* Parses the canonical hex form or an `ssh-ed25519` public key line (leading
 * and trailing white space ignored). Errors name what is wrong: wrong length,
 * a non-hex character and its position (counted from 0 in text as given),
 * another key type (FY_EUNSUPPORTED), bad base64; all else is FY_EINVAL. */
int fy_nodeid_parse(const char *text, struct fy_nodeid *out, struct fy_err *err);

bool fy_nodeid_equal(const struct fy_nodeid *a, const struct fy_nodeid *b);

#endif
