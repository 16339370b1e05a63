/* libFuzzer target for the OpenSSH key decoders (untrusted bytes from key
 * files and public key lines). Besides "no crash, no leak, no UB", it checks:
 *  - a failure returns a negative code and writes a message;
 *  - a private key that decodes re-encodes and decodes to the same key;
 *  - a public key that decodes formats and decodes to the same key. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "crypto/key.h"
#include "crypto/openssh.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_failure(int rc, const struct fy_err *err) {
  if (rc >= 0 || err->code != rc || err->msg[0] == '\0')
    abort();
}

static void fuzz_private(const uint8_t *data, size_t size) {
  struct fy_openssh_key key, again;
  struct fy_err err;
  fy_err_clear(&err);
  int rc = fy_openssh_decode_private(data, size, &key, &err);
  if (rc != 0) {
    check_failure(rc, &err);
    return;
  }
  char *text = NULL;
  size_t len = 0;
  if (fy_openssh_encode_private(&key, 0x5eed5eed, &text, &len, &err) != 0)
    abort();
  if (fy_openssh_decode_private((const uint8_t *)text, len, &again, &err) != 0 ||
      memcmp(&key, &again, sizeof(key)) != 0)
    abort();
  sodium_memzero(text, len);
  free(text);
  fy_openssh_key_wipe(&key);
  fy_openssh_key_wipe(&again);
}

static void fuzz_public(const uint8_t *data, size_t size) {
  char *line = malloc(size + 1);
  if (!line)
    return;
  memcpy(line, data, size);
  line[size] = '\0';
  uint8_t pk[FY_ED25519_PK_LEN], pk2[FY_ED25519_PK_LEN];
  struct fy_err err;
  fy_err_clear(&err);
  int rc = fy_openssh_decode_public(line, pk, &err);
  free(line);
  if (rc != 0) {
    check_failure(rc, &err);
    return;
  }
  char *formatted = NULL;
  if (fy_openssh_format_public(pk, NULL, &formatted, &err) != 0)
    abort();
  if (fy_openssh_decode_public(formatted, pk2, &err) != 0 || memcmp(pk, pk2, sizeof(pk)) != 0)
    abort();
  free(formatted);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static bool ready;
  if (!ready) {
    if (fy_crypto_init(NULL) != 0)
      abort();
    ready = true;
  }
  fuzz_private(data, size);
  fuzz_public(data, size);
  return 0;
}
