/* libFuzzer target for fy_peerspec_parse (peer specs from command lines,
 * config files and tickets). Checks, besides memory safety: failures carry a
 * code and a message and leave no address behind; a parsed spec formats to
 * text that parses back to the same spec. Resolution is not fuzzed: names
 * would reach the system resolver. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/key.h"
#include "node/peerspec.h"

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
  struct fy_peerspec p, again;
  struct fy_err err;
  fy_err_clear(&err);
  int rc = fy_peerspec_parse(text, &p, &err);
  free(text);
  if (rc != 0) {
    if (rc >= 0 || err.code != rc || err.msg[0] == '\0' || p.naddrs != 0)
      abort();
    return 0;
  }
  if (p.naddrs < 1 || p.naddrs > FY_PEER_ADDRS_MAX)
    abort();
  char out[FY_NODEID_HEX_LEN + 2 + FY_PEER_ADDRS_MAX * FY_PEER_ADDR_TEXT_MAX];
  fy_peerspec_format(&p, out, sizeof(out));
  if (fy_peerspec_parse(out, &again, &err) != 0 || memcmp(&p, &again, sizeof(p)) != 0)
    abort();
  return 0;
}
