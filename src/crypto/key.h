/* A node's ed25519 identity: its secret key and its node id.
 *
 * Key files are OpenSSH private keys (see openssh.h), unencrypted, mode 0600.
 * Loading refuses files that group or others can read or write (like ssh
 * does), encrypted keys, other key types and damaged files, each with a message
 * naming the file and the problem. Secrets live in sodium_malloc'd memory
 * (guarded, locked, wiped on free). */
#ifndef FY_CRYPTO_KEY_H
#define FY_CRYPTO_KEY_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "crypto/nodeid.h"

#define FY_SIG_LEN 64

struct fy_key {
  uint8_t *sk; /* crypto_sign_SECRETKEYBYTES (seed || pk), sodium_malloc'd, read-only, owned */
  struct fy_nodeid id;
  char comment[256];
};

/* Calls sodium_init(); must succeed before any other fy_key_* call. */
int fy_crypto_init(struct fy_err *err);

int fy_key_generate(struct fy_key *key, struct fy_err *err);
/* Deterministic key from a 32-byte seed (golden vectors, tests). */
int fy_key_from_seed(struct fy_key *key, const uint8_t seed[32], struct fy_err *err);

/* Reads and checks a key file: must be a regular file, not group/other
 * accessible (mode & 077 == 0), at most 64 KiB, an unencrypted OpenSSH
 * ed25519 private key whose halves agree. Symlinks are followed; the checks
 * apply to the file opened. Errors: FY_ENOENT, FY_EPERM (mode, with the chmod
 * to run), FY_EINVAL (not a regular file, damaged), FY_ELIMIT (too large),
 * FY_EUNSUPPORTED (encrypted, other key type); messages start "key file PATH".
 * On failure key->sk is NULL. */
int fy_key_load(struct fy_key *key, const char *path, struct fy_err *err);

/* Writes the key to path with mode 0600, never replacing an existing file
 * (O_EXCL: FY_EEXIST, the file untouched), fsyncs the file and its
 * directory. On a failure after the file was created, the file is removed. */
int fy_key_save(const struct fy_key *key, const char *path, struct fy_err *err);

int fy_key_sign(const struct fy_key *key, const uint8_t *msg, size_t len, uint8_t sig[FY_SIG_LEN]);
/* fy_key_sign returns 0, or FY_EINVAL for a key without a secret.
 * fy_sig_verify: 0 when sig is a valid signature of msg by id, FY_ECRYPTO otherwise. */
int fy_sig_verify(const struct fy_nodeid *id, const uint8_t *msg, size_t len, const uint8_t sig[FY_SIG_LEN]);

void fy_key_free(struct fy_key *key);

#endif
