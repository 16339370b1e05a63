/* Who may do what: admins, roles and tenant scopes (proto/fleet.md), one
 * policy for the coordinator (which authorises commands) and the agent
 * (which keeps its own view of the admins from owner-signed statements and
 * checks rollout signers against it).
 *
 * The rules are pure functions of admin records, so both sides decide
 * alike. struct fy_trust is the agent's whole view: the roots it pinned at
 * enrollment plus every statement applied since, in order. The coordinator
 * keeps its admins in its store and calls the same checks record by record. */
#ifndef FY_FLEET_TRUST_H
#define FY_FLEET_TRUST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "crypto/nodeid.h"
#include "fleet/envelope.h"

enum fy_role {
  FY_ROLE_VIEWER = 1,
  FY_ROLE_OPERATOR = 2,
  FY_ROLE_OWNER = 3,
};

/* The QUIC application close code a revoked agent's connections get
 * (proto/fleet.md): the agent stops instead of redialling. */
#define FY_CLOSE_REVOKED 0x10

#define FY_ADMIN_TENANTS_MAX 16
#define FY_TENANT_ALL "*"

struct fy_admin {
  struct fy_nodeid key;
  enum fy_role role;
  char tenants[FY_ADMIN_TENANTS_MAX][FY_TENANT_MAX + 1]; /* "*": every tenant */
  size_t ntenants;
  bool root; /* named at coordinator init: fixed */
};

/* "owner" | "operator" | "viewer" */
const char *fy_role_name(enum fy_role role);
int fy_role_parse(const char *text, enum fy_role *out, struct fy_err *err);

/* Parses "lab,prod" or "*" into a's tenants (checked names, no duplicates). */
int fy_admin_set_tenants(struct fy_admin *a, const char *list, struct fy_err *err);
void fy_admin_format_tenants(const struct fy_admin *a, char *out, size_t size);
/* a's scope includes tenant ("" is covered only by "*"). */
bool fy_admin_covers(const struct fy_admin *a, const char *tenant);
/* every tenant of b is within a's scope */
bool fy_admin_covers_all(const struct fy_admin *a, const struct fy_admin *b);

/* The role a command needs; 0 for a command ferry does not know. */
enum fy_role fy_cmd_required_role(const char *cmd);

/* May signer run body->cmd in body->tenant? FY_CMD_OK, FORBIDDEN_ROLE or
 * FORBIDDEN_TENANT (err says what it has and what it needed), INVALID_ARGS
 * for an unknown command. */
enum fy_cmd_refusal fy_trust_authorize(const struct fy_admin *signer, const struct fy_cmd_body *body,
                                       struct fy_err *err);

/* May signer (an owner) set target's record to next (target NULL: a new
 * admin; next NULL: removal)? Roots cannot be changed or removed (CONFLICT),
 * an owner changes only admins within its scope and grants only scope it
 * has (FORBIDDEN_TENANT). */
enum fy_cmd_refusal fy_trust_check_admin_change(const struct fy_admin *signer, const struct fy_admin *target,
                                                const struct fy_admin *next, struct fy_err *err);

/* Decodes the args of admin.set ({key, role, tenants}) or admin.remove
 * ({key}) into out (role and tenants only for set). */
int fy_admin_args_decode(const struct fy_cmd_body *body, struct fy_admin *out, struct fy_err *err);
/* Encodes admin.set's args. */
int fy_admin_args_encode(const struct fy_admin *a, bool set, struct fy_buf *out, struct fy_err *err);

/* ---- an agent's view ------------------------------------------------------------ */

struct fy_trust_issuer {
  struct fy_nodeid key;
  uint64_t seq; /* the last statement applied from it */
};

struct fy_trust {
  struct fy_nodeid coordinator;
  struct fy_admin *admins; /* owned */
  size_t nadmins, cap;
  struct fy_trust_issuer *issuers; /* owned */
  size_t nissuers, icap;
};

/* roots become owners of "*". */
int fy_trust_init(struct fy_trust *t, const struct fy_nodeid *coordinator, const struct fy_nodeid *roots,
                  size_t nroots, struct fy_err *err);
void fy_trust_free(struct fy_trust *t);
const struct fy_admin *fy_trust_find(const struct fy_trust *t, const struct fy_nodeid *key);

/* Applies one statement (an admin.set or admin.remove envelope) as an agent
 * does (proto/fleet.md): signature, coordinator, issuer's sequence, signer
 * an owner here, scope. Expiry is not checked. FY_CMD_OK or the refusal,
 * with err saying why; a refused statement changes nothing. */
enum fy_cmd_refusal fy_trust_apply(struct fy_trust *t, const uint8_t *env, size_t len, struct fy_err *err);

/* An owner or operator covering tenant: may sign that tenant's rollouts. */
bool fy_trust_may_sign_rollout(const struct fy_trust *t, const struct fy_nodeid *key, const char *tenant);

#endif
