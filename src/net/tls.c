#include "net/tls.h"

#include <string.h>

#include <ngtcp2/ngtcp2_crypto_wolfssl.h>

/* ex_data slot 0 is wolfSSL's app_data, which ngtcp2's crypto helper owns; a
 * fixed second slot avoids wolfSSL_get_ex_new_index's process-global counter. */
#define PEER_SLOT 1

const char *fy_tls_refusal_name(enum fy_tls_refusal r) {
  switch (r) {
  case FY_TLS_OK:
    return "ok";
  case FY_TLS_NO_CERT:
    return "no certificate";
  case FY_TLS_WRONG_ID:
    return "wrong identity";
  case FY_TLS_BAD_KEY:
    return "unacceptable key";
  case FY_TLS_CHAIN:
    return "certificate chain";
  }
  return "unknown";
}

static int refuse(struct fy_tls_peer *peer, enum fy_tls_refusal r, const char *why) {
  if (peer && peer->refusal == FY_TLS_OK) {
    peer->refusal = r;
    /* A reason longer than the buffer is cut (the return value says so; fine). */
    if (snprintf(peer->why, sizeof(peer->why), "%s", why) < 0)
      peer->why[0] = '\0';
  }
  return 0;
}

/* Decides on the peer's certificate; replaces chain validation entirely. */
static int check_cert(WOLFSSL_X509 *x509, struct fy_tls_peer *peer) {
  if (!x509)
    return refuse(peer, FY_TLS_NO_CERT, "peer presented no certificate");
  int der_len = 0;
  const unsigned char *der = wolfSSL_X509_get_der(x509, &der_len);
  if (!der || der_len <= 0)
    return refuse(peer, FY_TLS_BAD_KEY, "peer certificate has no DER form");
  struct fy_nodeid id;
  struct fy_err err = {0};
  if (fy_cert_peer_id(der, (size_t)der_len, &id, &err) < 0)
    return refuse(peer, FY_TLS_BAD_KEY, err.msg);
  if (peer->pinned && !fy_nodeid_equal(&id, &peer->expected)) {
    char got[FY_NODEID_HEX_LEN + 1], want[FY_NODEID_HEX_LEN + 1], why[sizeof(peer->why)];
    fy_nodeid_to_hex(&id, got);
    fy_nodeid_to_hex(&peer->expected, want);
    snprintf(why, sizeof(why), "peer is %.12s…, expected %.12s…", got, want);
    return refuse(peer, FY_TLS_WRONG_ID, why);
  }
  peer->id = id;
  peer->verified = true;
  return 1;
}

static int verify_cb(int preverify, WOLFSSL_X509_STORE_CTX *store) {
  (void)preverify; /* always 0 for self-signed certificates; our check decides */
  WOLFSSL *ssl = wolfSSL_X509_STORE_CTX_get_ex_data(store, wolfSSL_get_ex_data_X509_STORE_CTX_idx());
  struct fy_tls_peer *peer = ssl ? wolfSSL_get_ex_data(ssl, PEER_SLOT) : NULL;
  if (!peer)
    return 0;
  if (wolfSSL_X509_STORE_CTX_get_error_depth(store) != 0)
    return refuse(peer, FY_TLS_CHAIN, "peer sent more than one certificate");
  return check_cert(wolfSSL_X509_STORE_CTX_get_current_cert(store), peer);
}

int fy_tls_ctx_init(struct fy_tls_ctx *t, enum fy_tls_role role, const struct fy_key *key,
                    const char *const *alpns, size_t nalpns, struct fy_err *err) {
  memset(t, 0, sizeof(*t));
  t->role = role;
  if (nalpns == 0 || nalpns > FY_TLS_ALPNS_MAX)
    return fy_err_set(err, FY_EINVAL, "between 1 and %d ALPNs, not %zu", FY_TLS_ALPNS_MAX, nalpns);
  for (size_t i = 0; i < nalpns; i++) {
    size_t n = strlen(alpns[i]);
    if (n == 0 || n > FY_TLS_ALPN_MAX)
      return fy_err_set(err, FY_EINVAL, "ALPN '%s' must be 1 to %d bytes", alpns[i], FY_TLS_ALPN_MAX);
    if (strchr(alpns[i], ','))
      return fy_err_set(err, FY_EINVAL, "ALPN '%s' must not contain a comma", alpns[i]);
    size_t used = strlen(t->alpn_list);
    snprintf(t->alpn_list + used, sizeof(t->alpn_list) - used, "%s%s", used ? "," : "", alpns[i]);
    t->alpn_wire[t->alpn_wire_len++] = (unsigned char)n;
    memcpy(&t->alpn_wire[t->alpn_wire_len], alpns[i], n);
    t->alpn_wire_len += n;
  }
  if (!key && role == FY_TLS_SERVER)
    return fy_err_set(err, FY_EINVAL, "a TLS server needs a key");
  int rc = key ? fy_cert_make(&t->cert, key, err) : 0;
  if (rc < 0)
    return rc;
  t->ctx = wolfSSL_CTX_new(role == FY_TLS_SERVER ? wolfTLSv1_3_server_method() : wolfTLSv1_3_client_method());
  if (!t->ctx) {
    fy_cert_free(&t->cert);
    return fy_err_set(err, FY_ENOMEM, "cannot create the TLS context");
  }
  const char *step = NULL;
  if ((role == FY_TLS_SERVER ? ngtcp2_crypto_wolfssl_configure_server_context(t->ctx)
                             : ngtcp2_crypto_wolfssl_configure_client_context(t->ctx)) != 0)
    step = "configure for QUIC";
  else if (key && wolfSSL_CTX_use_certificate_buffer(t->ctx, t->cert.cert_der, (long)t->cert.cert_len,
                                                     WOLFSSL_FILETYPE_ASN1) != WOLFSSL_SUCCESS)
    step = "load the certificate";
  else if (key && wolfSSL_CTX_use_PrivateKey_buffer(t->ctx, t->cert.key_der, (long)t->cert.key_len,
                                                    WOLFSSL_FILETYPE_ASN1) != WOLFSSL_SUCCESS)
    step = "load the private key";
  else if (wolfSSL_CTX_set1_sigalgs_list(t->ctx, "ED25519") != WOLFSSL_SUCCESS)
    step = "restrict signatures to Ed25519";
  else if (wolfSSL_CTX_set_cipher_list(t->ctx, "TLS13-AES128-GCM-SHA256:TLS13-CHACHA20-POLY1305-SHA256:"
                                               "TLS13-AES256-GCM-SHA384") != WOLFSSL_SUCCESS)
    step = "set the cipher suites";
  if (step) {
    wolfSSL_CTX_free(t->ctx);
    fy_cert_free(&t->cert);
    t->ctx = NULL;
    return fy_err_set(err, FY_ECRYPTO, "TLS context: cannot %s", step);
  }
  wolfSSL_CTX_set_verify(t->ctx, WOLFSSL_VERIFY_PEER | WOLFSSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_cb);
  return 0;
}

void fy_tls_ctx_free(struct fy_tls_ctx *t) {
  if (t->ctx)
    wolfSSL_CTX_free(t->ctx);
  fy_cert_free(&t->cert);
  memset(t, 0, sizeof(*t));
}

WOLFSSL *fy_tls_session_new(struct fy_tls_ctx *t, void *app_data, struct fy_tls_peer *peer, const char *alpn,
                            struct fy_err *err) {
  WOLFSSL *ssl = wolfSSL_new(t->ctx);
  if (!ssl) {
    fy_err_set(err, FY_ENOMEM, "cannot create a TLS session");
    return NULL;
  }
  wolfSSL_set_app_data(ssl, app_data);
  wolfSSL_set_ex_data(ssl, PEER_SLOT, peer);
  if (t->role == FY_TLS_CLIENT) {
    wolfSSL_set_connect_state(ssl);
    unsigned char wire[FY_TLS_ALPN_MAX + 1];
    size_t n = alpn ? strlen(alpn) : 0;
    if (n == 0 || n > FY_TLS_ALPN_MAX) {
      wolfSSL_free(ssl);
      fy_err_set(err, FY_EINVAL, "a dial needs an ALPN of 1 to %d bytes", FY_TLS_ALPN_MAX);
      return NULL;
    }
    wire[0] = (unsigned char)n;
    memcpy(&wire[1], alpn, n); // NOLINT(bugprone-not-null-terminated-result): length-prefixed, not a C string
    if (wolfSSL_set_alpn_protos(ssl, wire, (unsigned int)(n + 1)) != WOLFSSL_SUCCESS) {
      wolfSSL_free(ssl);
      fy_err_set(err, FY_ECRYPTO, "cannot set ALPN '%s'", alpn);
      return NULL;
    }
  } else {
    wolfSSL_set_accept_state(ssl);
    /* wolfSSL (without OPENSSL_ALL) ignores the OpenSSL-style ALPN select
     * callback; a server list with FAILED_ON_MISMATCH makes an unknown ALPN
     * fail the handshake with no_application_protocol. */
    if (wolfSSL_UseALPN(ssl, t->alpn_list, (unsigned)strlen(t->alpn_list), WOLFSSL_ALPN_FAILED_ON_MISMATCH) !=
        WOLFSSL_SUCCESS) {
      wolfSSL_free(ssl);
      fy_err_set(err, FY_ECRYPTO, "cannot set the server's ALPN list");
      return NULL;
    }
  }
  wolfSSL_set_quic_use_legacy_codepoint(ssl, 0);
  return ssl;
}

bool fy_tls_selected_alpn(WOLFSSL *ssl, char out[FY_TLS_ALPN_MAX + 1]) {
  const unsigned char *p = NULL;
  unsigned int n = 0;
  wolfSSL_get0_alpn_selected(ssl, &p, &n);
  if (!p || n == 0 || n > FY_TLS_ALPN_MAX)
    return false;
  memcpy(out, p, n);
  out[n] = '\0';
  return true;
}

bool fy_tls_peer_verified(WOLFSSL *ssl, struct fy_tls_peer *peer) {
  if (!peer->verified)
    return false;
  /* Belt and braces: the certificate the session kept must be the one we checked. */
  WOLFSSL_X509 *x509 = wolfSSL_get_peer_certificate(ssl);
  if (!x509)
    return false;
  int der_len = 0;
  const unsigned char *der = wolfSSL_X509_get_der(x509, &der_len);
  struct fy_nodeid id;
  bool same = der && der_len > 0 && fy_cert_peer_id(der, (size_t)der_len, &id, NULL) == 0 &&
              fy_nodeid_equal(&id, &peer->id);
  wolfSSL_X509_free(x509);
  return same;
}
