#include "fleet/trust.h"

#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "base/cleanup.h"
#include "base/mpmap.h"

#define ARGS_ELEMENTS_MAX 64

const char *fy_role_name(enum fy_role role) {
  switch (role) {
  case FY_ROLE_VIEWER:
    return "viewer";
  case FY_ROLE_OPERATOR:
    return "operator";
  case FY_ROLE_OWNER:
    return "owner";
  }
  return "none";
}

int fy_role_parse(const char *text, enum fy_role *out, struct fy_err *err) {
  static const enum fy_role roles[] = {FY_ROLE_VIEWER, FY_ROLE_OPERATOR, FY_ROLE_OWNER};
  for (size_t i = 0; i < FY_ARRAY_LEN(roles); i++)
    if (strcmp(text, fy_role_name(roles[i])) == 0) {
      *out = roles[i];
      return 0;
    }
  return fy_err_set(err, FY_EINVAL, "role '%.64s' is not one of owner, operator, viewer", text);
}

static int add_tenant(struct fy_admin *a, const char *t, size_t n, struct fy_err *err) {
  char name[FY_TENANT_MAX + 1];
  if (n == 0 || n > FY_TENANT_MAX)
    return fy_err_set(err, FY_EINVAL, "tenants: a name must be 1..%d bytes, not %zu", FY_TENANT_MAX, n);
  memcpy(name, t, n);
  name[n] = '\0';
  if (strcmp(name, FY_TENANT_ALL) != 0) {
    int rc = fy_tenant_check(name, err);
    if (rc < 0)
      return fy_err_prefix(err, "tenants");
  }
  for (size_t i = 0; i < a->ntenants; i++)
    if (strcmp(a->tenants[i], name) == 0)
      return fy_err_set(err, FY_EINVAL, "tenants: '%s' is listed twice", name);
  if (a->ntenants == FY_ADMIN_TENANTS_MAX)
    return fy_err_set(err, FY_ELIMIT, "tenants: more than %d", FY_ADMIN_TENANTS_MAX);
  memcpy(a->tenants[a->ntenants++], name, n + 1);
  return 0;
}

int fy_admin_set_tenants(struct fy_admin *a, const char *list, struct fy_err *err) {
  a->ntenants = 0;
  const char *p = list;
  for (;;) {
    const char *comma = strchr(p, ',');
    size_t n = comma ? (size_t)(comma - p) : strlen(p);
    int rc = add_tenant(a, p, n, err);
    if (rc < 0) {
      a->ntenants = 0;
      return rc;
    }
    if (!comma)
      return 0;
    p = comma + 1;
  }
}

void fy_admin_format_tenants(const struct fy_admin *a, char *out, size_t size) {
  size_t used = 0;
  if (size)
    out[0] = '\0';
  for (size_t i = 0; i < a->ntenants && used + 1 < size; i++) {
    int n = snprintf(out + used, size - used, "%s%s", i ? "," : "", a->tenants[i]);
    if (n < 0)
      break;
    used += (size_t)n;
  }
}

bool fy_admin_covers(const struct fy_admin *a, const char *tenant) {
  for (size_t i = 0; i < a->ntenants; i++)
    if (strcmp(a->tenants[i], FY_TENANT_ALL) == 0 || (tenant[0] && strcmp(a->tenants[i], tenant) == 0))
      return true;
  return false;
}

bool fy_admin_covers_all(const struct fy_admin *a, const struct fy_admin *b) {
  for (size_t i = 0; i < b->ntenants; i++) {
    bool all = strcmp(b->tenants[i], FY_TENANT_ALL) == 0;
    if (all ? !fy_admin_covers(a, "") : !fy_admin_covers(a, b->tenants[i]))
      return false;
  }
  return true;
}

static const struct {
  const char *cmd;
  enum fy_role role;
} command_roles[] = {
    {"admin.set", FY_ROLE_OWNER},         {"admin.remove", FY_ROLE_OWNER},
    {"agents.approve", FY_ROLE_OPERATOR}, {"agents.revoke", FY_ROLE_OPERATOR},
    {"enroll.create", FY_ROLE_OPERATOR},  {"enroll.revoke", FY_ROLE_OPERATOR},
    {"artifact.add", FY_ROLE_OPERATOR},   {"rollout.create", FY_ROLE_OPERATOR},
    {"rollout.start", FY_ROLE_OPERATOR},  {"rollout.pause", FY_ROLE_OPERATOR},
    {"rollout.resume", FY_ROLE_OPERATOR}, {"rollout.abort", FY_ROLE_OPERATOR},
    {"rollout.retry", FY_ROLE_OPERATOR},
};

enum fy_role fy_cmd_required_role(const char *cmd) {
  for (size_t i = 0; i < FY_ARRAY_LEN(command_roles); i++)
    if (strcmp(command_roles[i].cmd, cmd) == 0)
      return command_roles[i].role;
  return 0;
}

enum fy_cmd_refusal fy_trust_authorize(const struct fy_admin *signer, const struct fy_cmd_body *body,
                                       struct fy_err *err) {
  enum fy_role need = fy_cmd_required_role(body->cmd);
  if (!need) {
    fy_err_set(err, FY_EINVAL, "unknown command '%s'", body->cmd);
    return FY_CMD_INVALID_ARGS;
  }
  if (signer->role < need) {
    fy_err_set(err, FY_EPERM, "%s needs the %s role; the signer is %s", body->cmd, fy_role_name(need),
               fy_role_name(signer->role));
    return FY_CMD_FORBIDDEN_ROLE;
  }
  /* A pending agent has no tenant yet; any operator may turn it away. An
   * admin change is scoped by the tenants it touches
   * (fy_trust_check_admin_change), not by the body's tenant. */
  if ((body->tenant[0] == '\0' && strcmp(body->cmd, "agents.revoke") == 0) ||
      strncmp(body->cmd, "admin.", 6) == 0)
    return FY_CMD_OK;
  if (!fy_admin_covers(signer, body->tenant)) {
    char scope[FY_ADMIN_TENANTS_MAX * (FY_TENANT_MAX + 1)];
    fy_admin_format_tenants(signer, scope, sizeof(scope));
    if (body->tenant[0])
      fy_err_set(err, FY_EPERM, "%s in tenant '%s': the signer's scope is %s", body->cmd, body->tenant,
                 scope);
    else
      fy_err_set(err, FY_EPERM, "%s is not tenant-scoped and needs scope '*'; the signer's scope is %s",
                 body->cmd, scope);
    return FY_CMD_FORBIDDEN_TENANT;
  }
  return FY_CMD_OK;
}

enum fy_cmd_refusal fy_trust_check_admin_change(const struct fy_admin *signer, const struct fy_admin *target,
                                                const struct fy_admin *next, struct fy_err *err) {
  if (!target && !next) {
    fy_err_set(err, FY_ENOENT, "no such admin to remove");
    return FY_CMD_NOT_FOUND;
  }
  char id[FY_NODEID_SHORT_LEN + 1];
  fy_nodeid_to_short(next ? &next->key : &target->key, id);
  if (signer->role != FY_ROLE_OWNER) {
    fy_err_set(err, FY_EPERM, "only owners change admins; the signer is %s", fy_role_name(signer->role));
    return FY_CMD_FORBIDDEN_ROLE;
  }
  if (target && target->root) {
    fy_err_set(err, FY_EEXIST, "admin %s is a root owner, fixed at coordinator init", id);
    return FY_CMD_CONFLICT;
  }
  if (target && !fy_admin_covers_all(signer, target)) {
    fy_err_set(err, FY_EPERM, "admin %s has tenants outside the signer's scope", id);
    return FY_CMD_FORBIDDEN_TENANT;
  }
  if (next && !fy_admin_covers_all(signer, next)) {
    fy_err_set(err, FY_EPERM, "admin %s would get tenants outside the signer's scope", id);
    return FY_CMD_FORBIDDEN_TENANT;
  }
  return FY_CMD_OK;
}

/* ---- admin.set / admin.remove args ------------------------------------------------ */

static bool str_is(const msgpack_object *o, const char *s) {
  size_t n = strlen(s);
  return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n && memcmp(o->via.str.ptr, s, n) == 0;
}

static int args_body(const msgpack_object *map, struct fy_admin *out, bool set, struct fy_err *err) {
  bool have_key = false, have_role = false, have_tenants = false;
  for (uint32_t i = 0; i < map->via.map.size; i++) {
    const msgpack_object *k = &map->via.map.ptr[i].key, *v = &map->via.map.ptr[i].val;
    if (str_is(k, "key")) {
      if (v->type != MSGPACK_OBJECT_BIN || v->via.bin.size != FY_NODEID_LEN)
        return fy_err_set(err, FY_EINVAL, "args: key is not 32 bytes of bin");
      memcpy(out->key.key, v->via.bin.ptr, FY_NODEID_LEN);
      have_key = true;
    } else if (set && str_is(k, "role")) {
      char role[16];
      if (v->type != MSGPACK_OBJECT_STR || v->via.str.size >= sizeof(role))
        return fy_err_set(err, FY_EINVAL, "args: role is not a role name");
      memcpy(role, v->via.str.ptr, v->via.str.size);
      role[v->via.str.size] = '\0';
      if (fy_role_parse(role, &out->role, err) < 0)
        return fy_err_prefix(err, "args");
      have_role = true;
    } else if (set && str_is(k, "tenants")) {
      if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size == 0)
        return fy_err_set(err, FY_EINVAL, "args: tenants is not a non-empty array");
      out->ntenants = 0;
      for (uint32_t j = 0; j < v->via.array.size; j++) {
        const msgpack_object *t = &v->via.array.ptr[j];
        if (t->type != MSGPACK_OBJECT_STR)
          return fy_err_set(err, FY_EINVAL, "args: tenants[%u] is not a string", j);
        int rc = add_tenant(out, t->via.str.ptr, t->via.str.size, err);
        if (rc < 0)
          return fy_err_prefix(err, "args");
      }
      have_tenants = true;
    } else {
      return fy_err_set(err, FY_EINVAL, "args: unknown key for %s", set ? "admin.set" : "admin.remove");
    }
  }
  if (!have_key)
    return fy_err_set(err, FY_EINVAL, "args: key is missing");
  if (set && !have_role)
    return fy_err_set(err, FY_EINVAL, "args: role is missing");
  if (set && !have_tenants)
    return fy_err_set(err, FY_EINVAL, "args: tenants is missing");
  return 0;
}

int fy_admin_args_decode(const struct fy_cmd_body *body, struct fy_admin *out, struct fy_err *err) {
  memset(out, 0, sizeof(*out));
  bool set = strcmp(body->cmd, "admin.set") == 0;
  if (!set && strcmp(body->cmd, "admin.remove") != 0)
    return fy_err_set(err, FY_EINVAL, "%s is not an admin change", body->cmd);
  struct fy_mpmap m;
  int rc = fy_mpmap_decode(&m, body->args, body->args_len, 4, ARGS_ELEMENTS_MAX, "args", err);
  if (rc < 0)
    return rc;
  rc = args_body(m.map, out, set, err);
  fy_mpmap_free(&m);
  return rc;
}

int fy_admin_args_encode(const struct fy_admin *a, bool set, struct fy_buf *out, struct fy_err *err) {
  msgpack_packer pk;
  msgpack_packer_init(&pk, out, fy_mp_buf_write);
  int rc = msgpack_pack_map(&pk, set ? 3 : 1);
  rc |= msgpack_pack_str_with_body(&pk, "key", 3);
  rc |= msgpack_pack_bin_with_body(&pk, a->key.key, FY_NODEID_LEN);
  if (set) {
    const char *role = fy_role_name(a->role);
    rc |= msgpack_pack_str_with_body(&pk, "role", 4);
    rc |= msgpack_pack_str_with_body(&pk, role, strlen(role));
    rc |= msgpack_pack_str_with_body(&pk, "tenants", 7);
    rc |= msgpack_pack_array(&pk, a->ntenants);
    for (size_t i = 0; i < a->ntenants; i++)
      rc |= msgpack_pack_str_with_body(&pk, a->tenants[i], strlen(a->tenants[i]));
  }
  return rc ? fy_err_set(err, FY_ENOMEM, "admin args: out of memory") : 0;
}

/* ---- an agent's view -------------------------------------------------------------- */

/* Makes room for one more element of an array of size-byte elements and
 * returns the free slot (NULL, err set, when memory runs out). */
static void *slot_for_one_more(void **p, size_t n, size_t *cap, size_t size, struct fy_err *err) {
  if (n == *cap) {
    size_t ncap = *cap ? *cap * 2 : 8;
    void *np = realloc(*p, ncap * size);
    if (!np) {
      fy_err_set(err, FY_ENOMEM, "trust: out of memory");
      return NULL;
    }
    *p = np;
    *cap = ncap;
  }
  return (char *)*p + n * size;
}

int fy_trust_init(struct fy_trust *t, const struct fy_nodeid *coordinator, const struct fy_nodeid *roots,
                  size_t nroots, struct fy_err *err) {
  memset(t, 0, sizeof(*t));
  t->coordinator = *coordinator;
  if (nroots == 0)
    return fy_err_set(err, FY_EINVAL, "trust: no root owner");
  for (size_t i = 0; i < nroots; i++) {
    struct fy_admin *a = slot_for_one_more((void **)&t->admins, t->nadmins, &t->cap, sizeof(*a), err);
    if (!a) {
      fy_trust_free(t);
      return FY_ENOMEM;
    }
    t->nadmins++;
    memset(a, 0, sizeof(*a));
    a->key = roots[i];
    a->role = FY_ROLE_OWNER;
    a->root = true;
    a->ntenants = 1;
    strcpy(a->tenants[0], FY_TENANT_ALL);
  }
  return 0;
}

void fy_trust_free(struct fy_trust *t) {
  free(t->admins);
  free(t->issuers);
  memset(t, 0, sizeof(*t));
}

static struct fy_admin *find_admin(const struct fy_trust *t, const struct fy_nodeid *key) {
  for (size_t i = 0; i < t->nadmins; i++)
    if (fy_nodeid_equal(&t->admins[i].key, key))
      return &t->admins[i];
  return NULL;
}

const struct fy_admin *fy_trust_find(const struct fy_trust *t, const struct fy_nodeid *key) {
  return find_admin(t, key);
}

static struct fy_trust_issuer *find_issuer(const struct fy_trust *t, const struct fy_nodeid *key) {
  for (size_t i = 0; i < t->nissuers; i++)
    if (fy_nodeid_equal(&t->issuers[i].key, key))
      return &t->issuers[i];
  return NULL;
}

enum fy_cmd_refusal fy_trust_apply(struct fy_trust *t, const uint8_t *env, size_t len, struct fy_err *err) {
  struct fy_envelope e;
  struct fy_cmd_body body;
  /* fy_cmd_check without its clock: expiry is the coordinator's check, made
   * when it applied the statement, which may be long before an agent enrolls. */
  int rc = fy_envelope_open(env, len, FY_CTX_COMMAND, &e, err);
  if (rc < 0)
    return rc == FY_ECRYPTO ? FY_CMD_BAD_SIGNATURE : FY_CMD_MALFORMED;
  if (fy_cmd_body_decode(e.body, e.body_len, &body, err) < 0)
    return FY_CMD_MALFORMED;
  if (!fy_nodeid_equal(&body.issuer, &e.signer)) {
    fy_err_set(err, FY_ECRYPTO, "statement: issuer is not the signer");
    return FY_CMD_SIGNER_MISMATCH;
  }
  if (!fy_nodeid_equal(&body.coordinator, &t->coordinator)) {
    fy_err_set(err, FY_EINVAL, "statement: made for another coordinator");
    return FY_CMD_WRONG_COORDINATOR;
  }
  struct fy_admin *signer = find_admin(t, &body.issuer);
  if (!signer) {
    char id[FY_NODEID_SHORT_LEN + 1];
    fy_nodeid_to_short(&body.issuer, id);
    fy_err_set(err, FY_EPERM, "statement signed by %s, who is not an admin here", id);
    return FY_CMD_UNKNOWN_SIGNER;
  }
  struct fy_trust_issuer *is = find_issuer(t, &body.issuer);
  if (is && body.seq <= is->seq) {
    fy_err_set(err, FY_EINVAL, "statement seq %llu is not above %llu, the last applied from its issuer",
               (unsigned long long)body.seq, (unsigned long long)is->seq);
    return FY_CMD_REPLAYED;
  }
  struct fy_admin next;
  if (fy_admin_args_decode(&body, &next, err) < 0)
    return FY_CMD_INVALID_ARGS;
  bool set = strcmp(body.cmd, "admin.set") == 0;
  struct fy_admin *target = find_admin(t, &next.key);
  enum fy_cmd_refusal r = fy_trust_check_admin_change(signer, target, set ? &next : NULL, err);
  if (r != FY_CMD_OK)
    return r;
  /* Room first, so nothing changes when memory runs out. The admin slot
   * comes last: growing the issuers cannot move the admins. */
  struct fy_trust_issuer *issuer = is;
  if (!issuer &&
      !(issuer = slot_for_one_more((void **)&t->issuers, t->nissuers, &t->icap, sizeof(*issuer), err)))
    return FY_CMD_MALFORMED;
  struct fy_admin *slot = target;
  if (set && !slot &&
      !(slot = slot_for_one_more((void **)&t->admins, t->nadmins, &t->cap, sizeof(*slot), err)))
    return FY_CMD_MALFORMED;
  if (!is) {
    t->nissuers++;
    issuer->key = body.issuer;
  }
  issuer->seq = body.seq;
  if (set) {
    if (!target)
      t->nadmins++;
    *slot = next;
  } else {
    *target = t->admins[--t->nadmins];
  }
  return FY_CMD_OK;
}

bool fy_trust_may_sign_rollout(const struct fy_trust *t, const struct fy_nodeid *key, const char *tenant) {
  const struct fy_admin *a = find_admin(t, key);
  return a && a->role >= FY_ROLE_OPERATOR && fy_admin_covers(a, tenant);
}
