/* Enrollment tickets (proto/ticket.md): the one line an admin hands to a new
 * machine so that its agent can find the coordinator and enroll.
 *
 * Text form: "ferry-ticket1." + unpadded URL-safe base64 of a msgpack map
 * {c: coordinator id, a: addresses, s: one-time secret, t: tenant, l: labels,
 * e: expires-at ms}, at most FY_TICKET_TEXT_MAX characters. The agent pins c
 * (the TLS handshake must prove that key) and presents s once; the
 * coordinator stores only fy_ticket_secret_hash(s) and looks tickets up by it.
 *
 * Decoding checks the form only: that the ticket has not expired, was not
 * used and names a reachable address is for the coordinator and agent.
 *
 * A struct fy_ticket holds the secret in plain memory: whoever fills one
 * (fy_ticket_decode, or code that generates a secret) must sodium_memzero
 * the struct, or at least .secret, when done with it. Nothing allocates. */
#ifndef FY_FLEET_TICKET_H
#define FY_FLEET_TICKET_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "crypto/nodeid.h"
#include "fleet/labels.h"

#define FY_TICKET_PREFIX "ferry-ticket1."
#define FY_TICKET_TEXT_MAX 4096 /* characters, without the NUL */
#define FY_TICKET_ADDRS_MAX 8
#define FY_TICKET_ADDR_MAX 255 /* bytes of one address, without the NUL */
#define FY_TICKET_SECRET_LEN 32
#define FY_TICKET_HASH_LEN 32

struct fy_ticket {
  struct fy_nodeid coordinator;
  char addrs[FY_TICKET_ADDRS_MAX][FY_TICKET_ADDR_MAX + 1]; /* "host:port" or "[v6]:port" */
  size_t naddrs;                                           /* 1..FY_TICKET_ADDRS_MAX */
  uint8_t secret[FY_TICKET_SECRET_LEN];                    /* wipe after use, see above */
  char tenant[FY_TENANT_MAX + 1];                          /* fy_tenant_check */
  struct fy_labels labels;
  uint64_t expires_at; /* ms since the epoch */
};

/* Writes the NUL-terminated text into out. FY_EINVAL naming a bad field,
 * FY_ELIMIT when the text would exceed FY_TICKET_TEXT_MAX or size - 1.
 * t->labels is taken as valid (fill it with the labels.h functions). */
int fy_ticket_encode(const struct fy_ticket *t, char *out, size_t size, struct fy_err *err);

/* Parses text, ignoring white space around it. FY_ELIMIT when too long,
 * else FY_EINVAL with a message starting "ticket: " that names the part
 * (prefix, base64 with the character offset in text, msgpack, a key, a
 * field). On failure out is wiped. */
int fy_ticket_decode(const char *text, struct fy_ticket *out, struct fy_err *err);

/* BLAKE2b-256 (crypto_generichash, no key) over "ferry/ticket/v1" 0x00
 * secret: what the coordinator stores instead of the secret. */
void fy_ticket_secret_hash(const uint8_t secret[FY_TICKET_SECRET_LEN], uint8_t out[FY_TICKET_HASH_LEN]);

#endif
