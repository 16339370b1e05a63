/* TLS 1.3 for QUIC, bound to node ids.
 *
 * Both sides present exactly one certificate (net/cert.h) and require exactly
 * one from the peer; only Ed25519 keys and signatures are accepted. A dialer
 * pins the node id it expects and the handshake fails when the peer's key
 * differs; an acceptor learns the peer's id from its verified certificate.
 * wolfSSL still checks the peer's CertificateVerify signature with that key, so
 * the peer proved it holds the private half.
 *
 * We do not use RFC 7250 raw public keys: wolfSSL accepts them unverified
 * unless a verify callback is forced. Self-signed certificates always fail
 * chain validation (no CA is loaded), so our verify callback always runs, and
 * fy_tls_peer_verified re-checks after the handshake in case it did not.
 * The node id is never sent in SNI. */
#ifndef FY_NET_TLS_H
#define FY_NET_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include <wolfssl/options.h>

#include <wolfssl/ssl.h>

#include "base/err.h"
#include "crypto/key.h"
#include "crypto/nodeid.h"
#include "net/cert.h"

#define FY_TLS_ALPN_MAX 32
#define FY_TLS_ALPNS_MAX 8

enum fy_tls_role { FY_TLS_CLIENT, FY_TLS_SERVER };

/* Why a peer was refused, for dial errors and logs. */
enum fy_tls_refusal {
  FY_TLS_OK = 0,
  FY_TLS_NO_CERT,  /* the peer sent no certificate */
  FY_TLS_WRONG_ID, /* its key is not the pinned node id */
  FY_TLS_BAD_KEY,  /* not an Ed25519 certificate, or unparsable */
  FY_TLS_CHAIN,    /* more than one certificate */
};

/* Per-connection peer state, written by the verify callback. */
struct fy_tls_peer {
  bool pinned;
  struct fy_nodeid expected; /* dialer: the id it wants */
  bool verified;
  struct fy_nodeid id; /* the peer's id once verified */
  enum fy_tls_refusal refusal;
  char why[160];
};

struct fy_tls_ctx {
  WOLFSSL_CTX *ctx;
  enum fy_tls_role role;
  struct fy_cert cert;
  /* ALPNs offered (client) or accepted (server), wire format: len-prefixed. */
  unsigned char alpn_wire[FY_TLS_ALPNS_MAX * (FY_TLS_ALPN_MAX + 1)];
  size_t alpn_wire_len;
  char alpn_list[FY_TLS_ALPNS_MAX * (FY_TLS_ALPN_MAX + 1)]; /* comma-separated, for wolfSSL_UseALPN */
};

/* key NULL (clients only) presents no certificate: that is how tests play a
 * peer without one, which every ferry server refuses. */
int fy_tls_ctx_init(struct fy_tls_ctx *t, enum fy_tls_role role, const struct fy_key *key,
                    const char *const *alpns, size_t nalpns, struct fy_err *err);
void fy_tls_ctx_free(struct fy_tls_ctx *t);

/* A session for one QUIC connection. app_data is what ngtcp2's crypto helper
 * needs (a ngtcp2_crypto_conn_ref *); peer must outlive the session. A client
 * offers alpn (one of the context's) and pins peer->expected when pinned. */
WOLFSSL *fy_tls_session_new(struct fy_tls_ctx *t, void *app_data, struct fy_tls_peer *peer, const char *alpn,
                            struct fy_err *err);

/* The negotiated ALPN as a NUL-terminated string in out; false when none. */
bool fy_tls_selected_alpn(WOLFSSL *ssl, char out[FY_TLS_ALPN_MAX + 1]);

/* After the handshake: true when the peer presented a verified Ed25519
 * certificate (and, for a dialer, the pinned one). */
bool fy_tls_peer_verified(WOLFSSL *ssl, struct fy_tls_peer *peer);

const char *fy_tls_refusal_name(enum fy_tls_refusal r);

#endif
