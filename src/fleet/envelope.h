/* Signed envelopes and admin command bodies (proto/commands.md).
 *
 * An envelope is the msgpack array [body bin, signer bin(32), sig bin(64)]:
 * an ed25519 signature by signer over `context || 0x00 || body`. The context
 * names what is signed (FY_CTX_COMMAND, FY_CTX_MANIFEST), so a signature made
 * for one purpose never verifies for another. The signature covers the exact
 * body bytes as sent: nobody re-encodes a body to check it, and the body is
 * only parsed after its signature verifies.
 *
 * A command body is a msgpack map (issuer, seq, iat, exp, coord, tenant, cmd,
 * args) saying who orders what, for which coordinator, valid when. fy_cmd_check
 * does every check that needs no state (signature, issuer, coordinator, time);
 * the coordinator then checks the signer's role and tenant scope and that seq
 * grows, and reports refusals with the shared vocabulary enum fy_cmd_refusal.
 *
 * Decoded structs point into the caller's bytes (body, args): they stay valid
 * as long as those bytes do. Nothing here keeps state or does I/O. */
#ifndef FY_FLEET_ENVELOPE_H
#define FY_FLEET_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "base/err.h"
#include "crypto/key.h"
#include "crypto/nodeid.h"
#include "fleet/labels.h"

#define FY_ENVELOPE_MAX 65536 /* bytes of a whole envelope (64 KiB) */
#define FY_CTX_COMMAND "ferry/command/v1"
#define FY_CTX_MANIFEST "ferry/manifest/v1"
#define FY_ENVELOPE_ID_LEN 32

struct fy_envelope {
  const uint8_t *body; /* points into the envelope bytes */
  size_t body_len;
  struct fy_nodeid signer;
  uint8_t sig[FY_SIG_LEN];
};

/* Signs body with key under context (a non-empty C string) and appends the
 * envelope to out. FY_ELIMIT when the envelope would exceed FY_ENVELOPE_MAX,
 * FY_EINVAL for an empty context or a key without a secret, FY_ENOMEM. */
int fy_envelope_seal(const struct fy_key *key, const char *context, const uint8_t *body, size_t len,
                     struct fy_buf *out, struct fy_err *err);

/* Parses bytes (out->body points into them) and verifies the signature under
 * context. FY_ELIMIT over FY_ENVELOPE_MAX; FY_EINVAL when malformed, the
 * message naming the part ("envelope: signer is not 32 bytes of bin");
 * FY_ECRYPTO "envelope: signature does not verify for signer <short id>".
 * With FY_ECRYPTO, out is filled too (to log who claimed to sign what); its
 * body must not be trusted or acted on. */
int fy_envelope_open(const uint8_t *bytes, size_t len, const char *context, struct fy_envelope *out,
                     struct fy_err *err);

/* SHA-256 of the whole envelope bytes: the id commands are looked up by. */
void fy_envelope_id(const uint8_t *bytes, size_t len, uint8_t out[FY_ENVELOPE_ID_LEN]);

#define FY_CMD_NAME_MAX 63
#define FY_CMD_SKEW_MS 300000 /* 5 min: how far iat may be ahead of the checker's clock */

/* Command names are 1..FY_CMD_NAME_MAX bytes of [a-z0-9._-] starting with
 * [a-z0-9] ("agents.approve"); tenant is "" (not tenant-scoped) or a valid
 * tenant name (fy_tenant_check). seq >= 1, exp > iat (ms since the epoch). */
struct fy_cmd_body {
  struct fy_nodeid issuer, coordinator;
  uint64_t seq, issued_at, expires_at;
  char tenant[FY_TENANT_MAX + 1];
  char cmd[FY_CMD_NAME_MAX + 1];
  const uint8_t *args; /* one msgpack map, raw; decode points into the decoded bytes */
  size_t args_len;
};

/* Appends the body in the canonical key order. args: the raw bytes of one
 * msgpack map, or NULL/0 for an empty map. FY_EINVAL names a bad field. */
int fy_cmd_body_encode(const struct fy_cmd_body *b, struct fy_buf *out, struct fy_err *err);

/* Reads a body with keys in any order. FY_EINVAL naming the key for unknown,
 * missing, duplicate, mistyped or out-of-range fields. */
int fy_cmd_body_decode(const uint8_t *p, size_t len, struct fy_cmd_body *out, struct fy_err *err);

/* Why a command was refused; shared by the coordinator, the admin CLI and
 * their logs. The values are stable. */
enum fy_cmd_refusal {
  FY_CMD_OK = 0,
  FY_CMD_MALFORMED,
  FY_CMD_BAD_SIGNATURE,
  FY_CMD_SIGNER_MISMATCH,
  FY_CMD_WRONG_COORDINATOR,
  FY_CMD_NOT_YET_VALID,
  FY_CMD_EXPIRED,
  FY_CMD_UNKNOWN_SIGNER,
  FY_CMD_REPLAYED,
  FY_CMD_FORBIDDEN_ROLE,
  FY_CMD_FORBIDDEN_TENANT,
  FY_CMD_INVALID_ARGS,
  FY_CMD_NOT_FOUND,
  FY_CMD_CONFLICT,
  FY_CMD_INCOMPATIBLE, /* an artifact manifest is not for this machine's hardware (proto/manifest.md) */
  FY_CMD_DOWNGRADE,    /* an artifact manifest would downgrade without allowing it */
};

/* "ok", "malformed", "bad_signature", ...: stable strings for the wire and
 * logs; "unknown" for a value outside the enum. */
const char *fy_cmd_refusal_name(enum fy_cmd_refusal r);

/* The stateless checks, in this order: parse and signature under
 * FY_CTX_COMMAND (MALFORMED, BAD_SIGNATURE), body decode (MALFORMED), issuer
 * == signer (SIGNER_MISMATCH), coord == coordinator (WRONG_COORDINATOR),
 * iat <= now + FY_CMD_SKEW_MS (NOT_YET_VALID), now < exp (EXPIRED). Fills env
 * and body (pointing into bytes) on success; otherwise err says what failed,
 * with the values ("command: expired 12 s ago at 2026-12-02T06:10:00Z"). */
enum fy_cmd_refusal fy_cmd_check(const uint8_t *bytes, size_t len, const struct fy_nodeid *coordinator,
                                 uint64_t now_ms, struct fy_envelope *env, struct fy_cmd_body *body,
                                 struct fy_err *err);

#endif
