/* A node's TLS certificate is a self-signed X.509 certificate whose subject
 * key is the node's ed25519 key. Nothing in it but the key matters: peers are
 * authenticated by comparing that key with a node id (pinned, or looked up
 * by the application), never by chain, name or date. */
#ifndef FY_NET_CERT_H
#define FY_NET_CERT_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "crypto/key.h"
#include "crypto/nodeid.h"

struct fy_cert {
  uint8_t *cert_der; /* malloc'd, owned */
  size_t cert_len;
  uint8_t *key_der; /* PKCS#8 private key, sodium_malloc'd, owned */
  size_t key_len;
};

/* Makes the certificate and the DER private key for key. */
int fy_cert_make(struct fy_cert *cert, const struct fy_key *key, struct fy_err *err);
void fy_cert_free(struct fy_cert *cert);

/* The node id in a peer's DER certificate: its Ed25519 subject public key.
 * Any other key type is FY_EUNSUPPORTED (the message names the type). */
int fy_cert_peer_id(const uint8_t *der, size_t len, struct fy_nodeid *out, struct fy_err *err);

#endif
