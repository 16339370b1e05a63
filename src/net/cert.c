#include "net/cert.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include <wolfssl/options.h>

#include <wolfssl/wolfcrypt/asn.h>
#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/ed25519.h>
#include <wolfssl/wolfcrypt/random.h>

/* An Ed25519 certificate with a short subject is about 300 bytes. */
#define CERT_MAX 1024
#define KEY_DER_MAX 128

static int import_key(ed25519_key *k, const struct fy_key *key, struct fy_err *err) {
  if (wc_ed25519_init(k) != 0)
    return fy_err_set(err, FY_ECRYPTO, "cannot initialise an ed25519 key");
  /* libsodium's secret key is seed || public key. */
  if (wc_ed25519_import_private_key(key->sk, ED25519_KEY_SIZE, key->id.key, ED25519_PUB_KEY_SIZE, k) != 0) {
    wc_ed25519_free(k);
    return fy_err_set(err, FY_ECRYPTO, "wolfSSL refused the node's ed25519 key");
  }
  return 0;
}

int fy_cert_make(struct fy_cert *cert, const struct fy_key *key, struct fy_err *err) {
  memset(cert, 0, sizeof(*cert));
  ed25519_key k;
  int rc = import_key(&k, key, err);
  if (rc < 0)
    return rc;
  WC_RNG rng;
  if (wc_InitRng(&rng) != 0) {
    wc_ed25519_free(&k);
    return fy_err_set(err, FY_ECRYPTO, "cannot initialise wolfSSL's random generator");
  }
  Cert c;
  uint8_t *der = malloc(CERT_MAX);
  uint8_t *kder = sodium_malloc(KEY_DER_MAX);
  int der_len = -1, key_len = -1;
  if (der && kder && wc_InitCert(&c) == 0) {
    /* The subject says whose key this is, for people reading a capture. */
    char hex[FY_NODEID_HEX_LEN + 1];
    fy_nodeid_to_hex(&key->id, hex);
    snprintf(c.subject.commonName, sizeof(c.subject.commonName), "ferry %.*s", FY_NODEID_SHORT_LEN, hex);
    snprintf(c.subject.org, sizeof(c.subject.org), "ferry");
    c.sigType = CTC_ED25519;
    c.isCA = 0;
    c.daysValid = 36500; /* dates are not checked; devices without clocks exist */
    der_len = wc_MakeCert_ex(&c, der, CERT_MAX, ED25519_TYPE, &k, &rng);
    if (der_len > 0)
      der_len = wc_SignCert_ex(c.bodySz, c.sigType, der, CERT_MAX, ED25519_TYPE, &k, &rng);
    if (der_len > 0)
      key_len = wc_Ed25519PrivateKeyToDer(&k, kder, KEY_DER_MAX);
  }
  wc_FreeRng(&rng);
  wc_ed25519_free(&k);
  if (der_len <= 0 || key_len <= 0) {
    free(der);
    sodium_free(kder);
    if (!der || !kder)
      return fy_err_set(err, FY_ENOMEM, "cannot allocate the certificate");
    return fy_err_set(err, FY_ECRYPTO, "wolfSSL could not make the node certificate (%d)",
                      der_len <= 0 ? der_len : key_len);
  }
  cert->cert_der = der;
  cert->cert_len = (size_t)der_len;
  cert->key_der = kder;
  cert->key_len = (size_t)key_len;
  return 0;
}

void fy_cert_free(struct fy_cert *cert) {
  free(cert->cert_der);
  sodium_free(cert->key_der);
  memset(cert, 0, sizeof(*cert));
}

static const char *key_oid_name(word32 oid) {
  switch (oid) {
  case RSAk:
    return "RSA";
  case ECDSAk:
    return "ECDSA";
  case ED448k:
    return "Ed448";
  default:
    return "unknown";
  }
}

int fy_cert_peer_id(const uint8_t *der, size_t len, struct fy_nodeid *out, struct fy_err *err) {
  if (len == 0 || len > 16384)
    return fy_err_set(err, FY_EINVAL, "peer certificate of %zu bytes", len);
  DecodedCert dc;
  wc_InitDecodedCert(&dc, der, (word32)len, NULL);
  int rc = wc_ParseCert(&dc, CERT_TYPE, NO_VERIFY, NULL);
  if (rc != 0) {
    wc_FreeDecodedCert(&dc);
    return fy_err_set(err, FY_EINVAL, "peer certificate does not parse (wolfSSL error %d)", rc);
  }
  if (dc.keyOID != ED25519k) {
    const char *name = key_oid_name(dc.keyOID);
    wc_FreeDecodedCert(&dc);
    return fy_err_set(err, FY_EUNSUPPORTED, "peer certificate holds an %s key; ferry nodes use Ed25519",
                      name);
  }
  if (dc.pubKeySize != FY_NODEID_LEN) {
    wc_FreeDecodedCert(&dc);
    return fy_err_set(err, FY_EINVAL, "peer Ed25519 key is %u bytes, not 32", dc.pubKeySize);
  }
  memcpy(out->key, dc.publicKey, FY_NODEID_LEN);
  wc_FreeDecodedCert(&dc);
  return 0;
}
