/* libFuzzer target for signed envelopes and command bodies
 * (src/fleet/envelope.h: bytes from any admin's outbox). Every input goes to
 * fy_envelope_open (and, as fuzzed bytes almost never carry a valid
 * signature, the body it parsed goes to fy_cmd_body_decode anyway), to
 * fy_cmd_body_decode as a whole, and to fy_cmd_check. Checks, besides memory
 * safety:
 * - a failure returns a negative code and sets err to it, with a message;
 * - a parsed envelope's body, and a decoded body's args, point into the input;
 * - a decoded body has seq >= 1, exp > iat, a valid cmd and tenant, and
 *   encodes again; that encoding decodes to the same fields and encodes to the
 *   same bytes (canonical), never longer than the input;
 * - sealed with a fixed key, the re-encoded body passes fy_cmd_check at its
 *   own iat for its own coordinator exactly when the key is its issuer (and is
 *   refused as signer_mismatch otherwise). */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "crypto/key.h"
#include "fleet/envelope.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_error(int rc, const struct fy_err *err) {
  if (rc >= 0 || err->code != rc || err->msg[0] == '\0')
    abort();
}

static bool inside(const uint8_t *p, size_t n, const uint8_t *data, size_t size) {
  uintptr_t lo = (uintptr_t)data, at = (uintptr_t)p;
  return n <= size && (n == 0 || (at >= lo && at - lo <= size - n));
}

static bool same_body(const struct fy_cmd_body *a, const struct fy_cmd_body *b) {
  return fy_nodeid_equal(&a->issuer, &b->issuer) && fy_nodeid_equal(&a->coordinator, &b->coordinator) &&
         a->seq == b->seq && a->issued_at == b->issued_at && a->expires_at == b->expires_at &&
         strcmp(a->tenant, b->tenant) == 0 && strcmp(a->cmd, b->cmd) == 0 && a->args_len == b->args_len &&
         memcmp(a->args, b->args, a->args_len) == 0;
}

static struct fy_key *signer(void) {
  static struct fy_key key;
  static bool ready;
  if (!ready) {
    uint8_t seed[32];
    for (int i = 0; i < 32; i++)
      seed[i] = (uint8_t)i;
    if (fy_crypto_init(NULL) < 0 || fy_key_from_seed(&key, seed, NULL) < 0)
      abort();
    ready = true;
  }
  return &key;
}

static void check_body(const uint8_t *data, size_t size) {
  struct fy_cmd_body b, again;
  struct fy_err err;
  fy_err_clear(&err);
  int rc = fy_cmd_body_decode(data, size, &b, &err);
  if (rc != 0) {
    check_error(rc, &err);
    return;
  }
  if (b.seq == 0 || b.expires_at <= b.issued_at || b.cmd[0] == '\0' ||
      !inside(b.args, b.args_len, data, size))
    abort();
  if (b.tenant[0] && fy_tenant_check(b.tenant, NULL) != 0)
    abort();
  struct fy_buf once = FY_BUF_INIT, twice = FY_BUF_INIT, env = FY_BUF_INIT;
  if (fy_cmd_body_encode(&b, &once, &err) != 0 || once.len > size)
    abort();
  if (fy_cmd_body_decode(once.data, once.len, &again, &err) != 0 || !same_body(&b, &again))
    abort();
  if (fy_cmd_body_encode(&again, &twice, &err) != 0 || twice.len != once.len ||
      memcmp(once.data, twice.data, once.len) != 0)
    abort();

  const struct fy_key *key = signer();
  if (once.len + 106 > FY_ENVELOPE_MAX) /* the envelope's own bytes */
    goto out;
  if (fy_envelope_seal(key, FY_CTX_COMMAND, once.data, once.len, &env, &err) != 0)
    abort();
  struct fy_envelope e;
  struct fy_cmd_body c;
  enum fy_cmd_refusal r = fy_cmd_check(env.data, env.len, &b.coordinator, b.issued_at, &e, &c, &err);
  if (fy_nodeid_equal(&b.issuer, &key->id) ? r != FY_CMD_OK || !same_body(&b, &c)
                                           : r != FY_CMD_SIGNER_MISMATCH)
    abort();
out:
  fy_buf_free(&once);
  fy_buf_free(&twice);
  fy_buf_free(&env);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct fy_envelope e;
  struct fy_err err;
  fy_err_clear(&err);
  int rc = fy_envelope_open(data, size, FY_CTX_COMMAND, &e, &err);
  if (rc != 0)
    check_error(rc, &err);
  if (rc == 0 || rc == FY_ECRYPTO) {
    if (!inside(e.body, e.body_len, data, size))
      abort();
    check_body(e.body, e.body_len);
  }
  check_body(data, size);

  struct fy_nodeid coord = {{0}};
  struct fy_cmd_body b;
  fy_err_clear(&err);
  enum fy_cmd_refusal r = fy_cmd_check(data, size, &coord, 1767225600000, &e, &b, &err);
  if (r != FY_CMD_OK && err.msg[0] == '\0')
    abort();
  if (strcmp(fy_cmd_refusal_name(r), "unknown") == 0)
    abort();
  return 0;
}
