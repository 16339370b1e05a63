/* libFuzzer target for fy_nodeid_parse (ids from config files, command lines
 * and tickets). Checks, besides memory safety: failures carry a code and a
 * message; a parsed id prints as 64 hex digits that parse back to it. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/key.h"
#include "crypto/nodeid.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static bool ready;
  if (!ready) {
    if (fy_crypto_init(NULL) != 0)
      abort();
    ready = true;
  }
  char *text = malloc(size + 1);
  if (!text)
    return 0;
  memcpy(text, data, size);
  text[size] = '\0';
  struct fy_nodeid id, again;
  struct fy_err err;
  fy_err_clear(&err);
  int rc = fy_nodeid_parse(text, &id, &err);
  free(text);
  if (rc != 0) {
    if (rc >= 0 || err.code != rc || err.msg[0] == '\0')
      abort();
    return 0;
  }
  char hex[FY_NODEID_HEX_LEN + 1], short_id[FY_NODEID_SHORT_LEN + 1], fp[FY_FINGERPRINT_MAX];
  fy_nodeid_to_hex(&id, hex);
  fy_nodeid_to_short(&id, short_id);
  fy_nodeid_fingerprint(&id, fp);
  if (strlen(hex) != FY_NODEID_HEX_LEN || strncmp(hex, short_id, FY_NODEID_SHORT_LEN) != 0 ||
      strlen(fp) != FY_FINGERPRINT_MAX - 1)
    abort();
  if (fy_nodeid_parse(hex, &again, &err) != 0 || !fy_nodeid_equal(&id, &again))
    abort();
  return 0;
}
