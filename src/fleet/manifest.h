/* Artifact manifests (proto/manifest.md): what an admin signs to say "this
 * artifact, this version, for these machines of this tenant".
 *
 * A manifest body is a msgpack map (issuer, coord, tenant, iat, name,
 * version, kind, uri, sha256, size, compatible, allow_downgrade) sealed in an
 * envelope (src/fleet/envelope.h) under FY_CTX_MANIFEST. It travels from the
 * admin through the coordinator to agents unchanged, and every agent checks
 * it again before it installs anything (fy_manifest_verify): a compromised
 * coordinator can withhold or delay a manifest but not forge or alter one,
 * redirect it to another tenant's machines, or roll a machine back to an old
 * version unless the admin allowed that.
 *
 * Field rules (encode refuses what decode would refuse, so ferry never signs
 * a manifest agents reject as malformed):
 * - tenant: a tenant name (fy_tenant_check), never "";
 * - name: 1..63 bytes of [a-z0-9._-] starting with [a-z0-9] (it may name a
 *   directory, so never "." or "..");
 * - version: semver text (fy_semver_parse, "v" prefix allowed), kept verbatim;
 * - kind "script": uri is file:///<path>, http://<host>... or
 *   https://<host>..., printable ASCII without spaces; sha256 and size are
 *   those of the file the uri names;
 * - kind "nixos": uri is a store path /nix/store/<32 nix-base32>-<name>, no
 *   sub-path; size is 0; sha256 is not checked by ferry (32 zero bytes);
 * - compatible: 0..32 distinct entries "model" or "model/revision", each part
 *   1..63 bytes of [A-Za-z0-9._-]; empty means every machine.
 *
 * A struct fy_manifest is fixed-size and owns nothing (about 6.5 KiB: keep
 * few on the stack). Nothing here keeps state or does I/O. */
#ifndef FY_FLEET_MANIFEST_H
#define FY_FLEET_MANIFEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "base/err.h"
#include "crypto/key.h"
#include "crypto/nodeid.h"
#include "fleet/envelope.h"
#include "fleet/labels.h"
#include "fleet/semver.h"
#include "fleet/trust.h"

#define FY_MANIFEST_NAME_MAX 63
#define FY_MANIFEST_URI_MAX 2048
#define FY_MANIFEST_COMPATIBLE_MAX 32
#define FY_MANIFEST_HW_PART_MAX 63                                         /* a model or a revision */
#define FY_MANIFEST_COMPATIBLE_ENTRY_MAX (2 * FY_MANIFEST_HW_PART_MAX + 1) /* "model/revision" */

enum fy_artifact_kind {
  FY_ARTIFACT_SCRIPT = 1, /* a file an apply script installs */
  FY_ARTIFACT_NIXOS = 2,  /* a NixOS system closure to switch to */
};

/* "script" | "nixos"; "unknown" outside the enum. */
const char *fy_artifact_kind_name(enum fy_artifact_kind k);
int fy_artifact_kind_parse(const char *text, enum fy_artifact_kind *out, struct fy_err *err);

struct fy_manifest {
  struct fy_nodeid issuer, coordinator;
  char tenant[FY_TENANT_MAX + 1];
  uint64_t issued_at; /* ms since the epoch */
  char name[FY_MANIFEST_NAME_MAX + 1];
  /* version_text is what travels; version its parse. Decode fills both;
   * encode writes version_text, or version's canonical text when
   * version_text is "". fy_manifest_set_version sets both. */
  struct fy_semver version;
  char version_text[FY_SEMVER_TEXT_MAX + 1];
  enum fy_artifact_kind kind;
  char uri[FY_MANIFEST_URI_MAX + 1];
  uint8_t sha256[32];
  uint64_t size; /* bytes of the artifact file; 0 for nixos */
  char compatible[FY_MANIFEST_COMPATIBLE_MAX][FY_MANIFEST_COMPATIBLE_ENTRY_MAX + 1];
  size_t ncompatible;
  bool allow_downgrade;
};

/* Parses text into m->version and copies it to m->version_text. FY_EINVAL
 * (fy_semver_parse's message) leaves m unchanged. */
int fy_manifest_set_version(struct fy_manifest *m, const char *text, struct fy_err *err);

/* Appends the body in the canonical key order. FY_EINVAL naming the field
 * that breaks a rule above; FY_ENOMEM. out is unchanged on failure. */
int fy_manifest_encode(const struct fy_manifest *m, struct fy_buf *out, struct fy_err *err);

/* Reads a body with keys in any order into out. FY_EINVAL with a message
 * starting "manifest: " naming the key for unknown, missing, duplicate,
 * mistyped or rule-breaking fields; out is zeroed on failure. Untrusted
 * bytes are fine: the shape is bounded before msgpack-c allocates. */
int fy_manifest_decode(const uint8_t *p, size_t len, struct fy_manifest *out, struct fy_err *err);

/* Encodes m and appends an envelope signed by key under FY_CTX_MANIFEST.
 * key must be m's issuer (FY_EINVAL otherwise: agents would refuse it). */
int fy_manifest_sign(const struct fy_key *key, const struct fy_manifest *m, struct fy_buf *out,
                     struct fy_err *err);

/* The agent's side: what it is and what it runs. coordinator, tenant and
 * trust are required (a NULL or "" tenant, an agent not enrolled yet, accepts
 * nothing). */
struct fy_manifest_target {
  const struct fy_nodeid *coordinator; /* the coordinator the agent enrolled with */
  const char *tenant;                  /* the agent's tenant */
  const struct fy_trust *trust;        /* the agent's view of the admins */
  const char *hw_model, *hw_revision;  /* NULL: unknown -> only manifests without compatible[] pass */
  const char *current_version;         /* installed version; NULL or unparsable: no downgrade check */
};

/* The agent's checks before it installs anything, in this order, the first
 * failure naming the refusal (err says why, with the values):
 *  1. envelope parse and signature under FY_CTX_MANIFEST (MALFORMED,
 *     BAD_SIGNATURE), then body decode (MALFORMED);
 *  2. issuer == the envelope's signer (SIGNER_MISMATCH);
 *  3. coord == t->coordinator (WRONG_COORDINATOR);
 *  4. tenant == t->tenant (FORBIDDEN_TENANT);
 *  5. fy_trust_may_sign_rollout(t->trust, signer, tenant) (FORBIDDEN_ROLE,
 *     "signer X may not sign rollouts for tenant T (...)");
 *  6. fy_manifest_compatible(m, hw_model, hw_revision) (INCOMPATIBLE,
 *     "incompatible: ...");
 *  7. not a downgrade: with a parsable current version, version >= current
 *     (semver precedence: build metadata does not count) or allow_downgrade
 *     (DOWNGRADE, "downgrade from A to B refused"). Equal versions pass: a
 *     reinstall is the applier's business.
 * out may be NULL. It is zeroed when the body does not decode, and filled
 * once it does, also for refusals 2-7 (so they can be logged with the
 * artifact's name and version); only FY_CMD_OK means it may be acted on.
 * Manifests carry no expiry: iat orders them, it is not checked here. */
enum fy_cmd_refusal fy_manifest_verify(const uint8_t *env, size_t len, const struct fy_manifest_target *t,
                                       struct fy_manifest *out, struct fy_err *err);

/* m is for a machine of this model and revision: its compatible list is
 * empty, or names the model alone, or "model/revision". Exact, case-
 * sensitive matches; a NULL or "" model matches only the empty list, a NULL
 * or "" revision only entries without one. */
bool fy_manifest_compatible(const struct fy_manifest *m, const char *hw_model, const char *hw_revision);
/* The same as a check: 0, or FY_EPERM with "incompatible: NAME VERSION is
 * for LIST; this machine is MODEL/REVISION" (the agent's refusal and the
 * coordinator's reason for skipping it). */
int fy_manifest_check_compatible(const struct fy_manifest *m, const char *hw_model, const char *hw_revision,
                                 struct fy_err *err);

#endif
