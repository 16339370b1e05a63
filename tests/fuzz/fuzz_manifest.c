/* libFuzzer target for artifact manifests (src/fleet/manifest.h: bytes an
 * agent gets from its coordinator). Every input goes to fy_manifest_decode
 * as a body, to the envelope parser (whose body, parsed even when the
 * signature fails, is decoded too), and to fy_manifest_verify with a fixed
 * agent. Checks, besides memory safety:
 * - a failure returns a negative code and sets err to it, with a message,
 *   and leaves the output zeroed;
 * - a decoded manifest obeys the field rules: it encodes again, that
 *   encoding decodes to the same fields and encodes to the same bytes
 *   (canonical), never longer than the input;
 * - signed with a fixed root key, the re-encoded body passes
 *   fy_manifest_verify for an agent of its own coordinator, tenant and
 *   hardware exactly when the key is its issuer (signer_mismatch otherwise),
 *   is incompatible for a machine of unknown model when it has a compatible
 *   list, and is a downgrade from a higher installed version unless allowed;
 * - verify never returns a refusal without a message or outside the enum. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "crypto/key.h"
#include "fleet/envelope.h"
#include "fleet/manifest.h"
#include "fleet/trust.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct fixture {
  struct fy_key root; /* seed 00..1f, as the golden vector's admin */
  struct fy_nodeid coordinator;
  struct fy_trust trust; /* root: owner of every tenant */
};

static struct fixture *fixture(void) {
  static struct fixture f;
  static bool ready;
  if (!ready) {
    uint8_t seed[32];
    for (int i = 0; i < 32; i++)
      seed[i] = (uint8_t)i;
    if (fy_crypto_init(NULL) < 0 || fy_key_from_seed(&f.root, seed, NULL) < 0)
      abort();
    struct fy_key coord;
    for (int i = 0; i < 32; i++)
      seed[i] = (uint8_t)(0x20 + i);
    if (fy_key_from_seed(&coord, seed, NULL) < 0)
      abort();
    f.coordinator = coord.id;
    fy_key_free(&coord);
    if (fy_trust_init(&f.trust, &f.coordinator, &f.root.id, 1, NULL) < 0)
      abort();
    ready = true;
  }
  return &f;
}

static void check_error(int rc, const struct fy_err *err) {
  if (rc >= 0 || err->code != rc || err->msg[0] == '\0')
    abort();
}

static bool zeroed(const void *p, size_t n) {
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++)
    if (b[i])
      return false;
  return true;
}

static bool same(const struct fy_manifest *a, const struct fy_manifest *b) {
  if (a->ncompatible != b->ncompatible)
    return false;
  for (size_t i = 0; i < a->ncompatible; i++)
    if (strcmp(a->compatible[i], b->compatible[i]) != 0)
      return false;
  return fy_nodeid_equal(&a->issuer, &b->issuer) && fy_nodeid_equal(&a->coordinator, &b->coordinator) &&
         strcmp(a->tenant, b->tenant) == 0 && a->issued_at == b->issued_at && strcmp(a->name, b->name) == 0 &&
         strcmp(a->version_text, b->version_text) == 0 && fy_semver_cmp(&a->version, &b->version) == 0 &&
         strcmp(a->version.build, b->version.build) == 0 && a->kind == b->kind &&
         strcmp(a->uri, b->uri) == 0 && memcmp(a->sha256, b->sha256, 32) == 0 && a->size == b->size &&
         a->allow_downgrade == b->allow_downgrade;
}

static enum fy_cmd_refusal verify(const struct fy_buf *env, const struct fy_manifest_target *t,
                                  struct fy_manifest *out) {
  struct fy_err err;
  fy_err_clear(&err);
  enum fy_cmd_refusal r = fy_manifest_verify(env->data, env->len, t, out, &err);
  if (r != FY_CMD_OK && err.msg[0] == '\0')
    abort();
  return r;
}

/* The re-encoded manifest, signed by the fixed root, as its own agents see it. */
static void check_signed(const struct fy_manifest *m, const struct fy_buf *body) {
  struct fixture *f = fixture();
  struct fy_buf env = FY_BUF_INIT;
  struct fy_err err;
  if (body->len + 106 > FY_ENVELOPE_MAX)
    return;
  if (fy_envelope_seal(&f->root, FY_CTX_MANIFEST, body->data, body->len, &env, &err) != 0)
    abort();
  char model[FY_MANIFEST_COMPATIBLE_ENTRY_MAX + 1] = "", *revision = NULL;
  if (m->ncompatible) {
    memcpy(model, m->compatible[0], sizeof(model));
    if ((revision = strchr(model, '/')) != NULL)
      *revision++ = '\0';
  }
  struct fy_nodeid coord = m->coordinator;
  struct fy_trust trust = f->trust;
  trust.coordinator = coord;
  struct fy_manifest_target t = {.coordinator = &coord,
                                 .tenant = m->tenant,
                                 .trust = &trust,
                                 .hw_model = model,
                                 .hw_revision = revision,
                                 .current_version = NULL};
  struct fy_manifest got;
  bool mine = fy_nodeid_equal(&m->issuer, &f->root.id);
  enum fy_cmd_refusal r = verify(&env, &t, &got);
  if (mine ? r != FY_CMD_OK || !same(m, &got) : r != FY_CMD_SIGNER_MISMATCH)
    abort();
  if (mine && m->ncompatible) {
    t.hw_model = NULL;
    if (verify(&env, &t, &got) != FY_CMD_INCOMPATIBLE)
      abort();
    t.hw_model = model;
  }
  if (mine && m->version.major < UINT64_MAX) {
    char higher[32];
    snprintf(higher, sizeof(higher), "%llu.0.0", (unsigned long long)m->version.major + 1);
    t.current_version = higher;
    if (verify(&env, &t, &got) != (m->allow_downgrade ? FY_CMD_OK : FY_CMD_DOWNGRADE))
      abort();
  }
  fy_buf_free(&env);
}

static void check_body(const uint8_t *data, size_t size) {
  struct fy_manifest *m = malloc(sizeof(*m)), *again = malloc(sizeof(*again));
  struct fy_buf once = FY_BUF_INIT, twice = FY_BUF_INIT;
  struct fy_err err;
  if (!m || !again)
    abort();
  fy_err_clear(&err);
  int rc = fy_manifest_decode(data, size, m, &err);
  if (rc != 0) {
    check_error(rc, &err);
    if (!zeroed(m, sizeof(*m)))
      abort();
    goto out;
  }
  if (fy_tenant_check(m->tenant, NULL) != 0 || m->name[0] == '\0' || m->uri[0] == '\0' ||
      m->ncompatible > FY_MANIFEST_COMPATIBLE_MAX || (m->kind == FY_ARTIFACT_NIXOS && m->size != 0))
    abort();
  if (fy_manifest_encode(m, &once, &err) != 0 || once.len > size)
    abort();
  if (fy_manifest_decode(once.data, once.len, again, &err) != 0 || !same(m, again))
    abort();
  if (fy_manifest_encode(again, &twice, &err) != 0 || twice.len != once.len ||
      memcmp(once.data, twice.data, once.len) != 0)
    abort();
  check_signed(m, &once);
out:
  fy_buf_free(&once);
  fy_buf_free(&twice);
  free(m);
  free(again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct fixture *f = fixture();
  struct fy_envelope e;
  struct fy_err err;
  fy_err_clear(&err);
  int rc = fy_envelope_open(data, size, FY_CTX_MANIFEST, &e, &err);
  if (rc != 0)
    check_error(rc, &err);
  if (rc == 0 || rc == FY_ECRYPTO)
    check_body(e.body, e.body_len);
  check_body(data, size);

  struct fy_manifest_target t = {.coordinator = &f->coordinator,
                                 .tenant = "lab",
                                 .trust = &f->trust,
                                 .hw_model = "rpi5",
                                 .hw_revision = "1.0",
                                 .current_version = "1.0.0"};
  struct fy_manifest out;
  fy_err_clear(&err);
  enum fy_cmd_refusal r = fy_manifest_verify(data, size, &t, &out, &err);
  if ((r != FY_CMD_OK && err.msg[0] == '\0') || strcmp(fy_cmd_refusal_name(r), "unknown") == 0)
    abort();
  if ((r == FY_CMD_MALFORMED || r == FY_CMD_BAD_SIGNATURE) && !zeroed(&out, sizeof(out)))
    abort();
  return 0;
}
