/* Roles, scopes and an agent's view of the admins built from statements. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "base/buf.h"
#include "base/cleanup.h"
#include "fleet/envelope.h"
#include "fleet/trust.h"

enum { ROOT, OWNER_LAB, OPERATOR, COORD, OTHER, NKEYS };

static struct fy_key keys[NKEYS];
static uint64_t seqs[NKEYS];

static int setup(void **state) {
  (void)state;
  assert_int_equal(fy_crypto_init(NULL), 0);
  for (int i = 0; i < NKEYS; i++) {
    uint8_t seed[32];
    memset(seed, 0x60 + i, sizeof(seed));
    assert_int_equal(fy_key_from_seed(&keys[i], seed, NULL), 0);
  }
  return 0;
}

static int teardown(void **state) {
  (void)state;
  for (int i = 0; i < NKEYS; i++)
    fy_key_free(&keys[i]);
  return 0;
}

static void admin(struct fy_admin *a, int who, enum fy_role role, const char *tenants) {
  memset(a, 0, sizeof(*a));
  a->key = keys[who].id;
  a->role = role;
  assert_int_equal(fy_admin_set_tenants(a, tenants, NULL), 0);
}

/* A statement signed by signer for coordinator coord. */
static void statement(struct fy_buf *env, int signer, int coord, const struct fy_admin *target, bool set) {
  FY_AUTOBUF struct fy_buf args = FY_BUF_INIT;
  assert_int_equal(fy_admin_args_encode(target, set, &args, NULL), 0);
  struct fy_cmd_body b = {.issuer = keys[signer].id,
                          .coordinator = keys[coord].id,
                          .seq = ++seqs[signer],
                          .issued_at = 1000,
                          .expires_at = 2000, /* long expired: agents replay statements */
                          .args = args.data,
                          .args_len = args.len};
  snprintf(b.cmd, sizeof(b.cmd), "%s", set ? "admin.set" : "admin.remove");
  FY_AUTOBUF struct fy_buf body = FY_BUF_INIT;
  assert_int_equal(fy_cmd_body_encode(&b, &body, NULL), 0);
  env->len = 0;
  assert_int_equal(fy_envelope_seal(&keys[signer], FY_CTX_COMMAND, body.data, body.len, env, NULL), 0);
}

static void test_roles_and_tenants_parse(void **state) {
  (void)state;
  enum fy_role r;
  struct fy_err err = {0};
  assert_int_equal(fy_role_parse("operator", &r, &err), 0);
  assert_int_equal(r, FY_ROLE_OPERATOR);
  assert_int_equal(fy_role_parse("root", &r, &err), FY_EINVAL);
  assert_non_null(strstr(err.msg, "'root' is not one of owner, operator, viewer"));
  struct fy_admin a = {0};
  assert_int_equal(fy_admin_set_tenants(&a, "lab,prod", &err), 0);
  assert_int_equal(a.ntenants, 2);
  char text[64];
  fy_admin_format_tenants(&a, text, sizeof(text));
  assert_string_equal(text, "lab,prod");
  assert_int_equal(fy_admin_set_tenants(&a, "lab,lab", &err), FY_EINVAL);
  assert_non_null(strstr(err.msg, "twice"));
  assert_int_equal(fy_admin_set_tenants(&a, "lab,", &err), FY_EINVAL);
  assert_int_equal(fy_admin_set_tenants(&a, "Lab", &err), FY_EINVAL);
  assert_int_equal(a.ntenants, 0);
}

static void test_scope(void **state) {
  (void)state;
  struct fy_admin all, lab, labprod;
  admin(&all, ROOT, FY_ROLE_OWNER, "*");
  admin(&lab, OWNER_LAB, FY_ROLE_OWNER, "lab");
  admin(&labprod, OPERATOR, FY_ROLE_OPERATOR, "lab,prod");
  assert_true(fy_admin_covers(&all, "anything"));
  assert_true(fy_admin_covers(&all, ""));
  assert_true(fy_admin_covers(&lab, "lab"));
  assert_false(fy_admin_covers(&lab, "prod"));
  assert_false(fy_admin_covers(&lab, ""));
  assert_true(fy_admin_covers_all(&all, &labprod));
  assert_false(fy_admin_covers_all(&lab, &labprod));
  assert_false(fy_admin_covers_all(&lab, &all));
}

static void test_authorize(void **state) {
  (void)state;
  struct fy_admin op;
  admin(&op, OPERATOR, FY_ROLE_OPERATOR, "lab");
  struct fy_cmd_body b = {.tenant = "lab", .cmd = "agents.approve"};
  struct fy_err err = {0};
  assert_int_equal(fy_trust_authorize(&op, &b, &err), FY_CMD_OK);
  snprintf(b.tenant, sizeof(b.tenant), "prod");
  assert_int_equal(fy_trust_authorize(&op, &b, &err), FY_CMD_FORBIDDEN_TENANT);
  snprintf(b.cmd, sizeof(b.cmd), "admin.set");
  assert_int_equal(fy_trust_authorize(&op, &b, &err), FY_CMD_FORBIDDEN_ROLE);
  struct fy_admin owner;
  admin(&owner, ROOT, FY_ROLE_OWNER, "*");
  assert_int_equal(fy_trust_check_admin_change(&owner, NULL, NULL, &err), FY_CMD_NOT_FOUND);
  snprintf(b.cmd, sizeof(b.cmd), "reboot.everything");
  assert_int_equal(fy_trust_authorize(&op, &b, &err), FY_CMD_INVALID_ARGS);
  assert_non_null(strstr(err.msg, "unknown command"));
}

static void test_agent_view_follows_statements(void **state) {
  (void)state;
  struct fy_trust t;
  struct fy_err err = {0};
  assert_int_equal(fy_trust_init(&t, &keys[COORD].id, &keys[ROOT].id, 1, &err), 0);
  FY_AUTOBUF struct fy_buf env = FY_BUF_INIT;
  struct fy_admin lab_owner, op;
  admin(&lab_owner, OWNER_LAB, FY_ROLE_OWNER, "lab");
  admin(&op, OPERATOR, FY_ROLE_OPERATOR, "lab");

  /* an operator cannot add itself; nothing changes */
  statement(&env, OPERATOR, COORD, &op, true);
  assert_int_equal(fy_trust_apply(&t, env.data, env.len, &err), FY_CMD_UNKNOWN_SIGNER);
  assert_false(fy_trust_may_sign_rollout(&t, &keys[OPERATOR].id, "lab"));

  /* root -> lab owner -> lab operator: the chain holds */
  statement(&env, ROOT, COORD, &lab_owner, true);
  assert_int_equal(fy_trust_apply(&t, env.data, env.len, &err), FY_CMD_OK);
  statement(&env, OWNER_LAB, COORD, &op, true);
  assert_int_equal(fy_trust_apply(&t, env.data, env.len, &err), FY_CMD_OK);
  assert_true(fy_trust_may_sign_rollout(&t, &keys[OPERATOR].id, "lab"));
  assert_false(fy_trust_may_sign_rollout(&t, &keys[OPERATOR].id, "prod"));

  /* the same statement again is a replay */
  assert_int_equal(fy_trust_apply(&t, env.data, env.len, &err), FY_CMD_REPLAYED);

  /* a statement made for another coordinator, or tampered with, is refused */
  statement(&env, ROOT, OTHER, &op, false);
  assert_int_equal(fy_trust_apply(&t, env.data, env.len, &err), FY_CMD_WRONG_COORDINATOR);
  statement(&env, ROOT, COORD, &op, false);
  env.data[env.len - 3] ^= 0x40;
  assert_int_equal(fy_trust_apply(&t, env.data, env.len, &err), FY_CMD_BAD_SIGNATURE);

  /* the lab owner cannot widen its operator to prod, nor remove the root */
  struct fy_admin wide, root;
  admin(&wide, OPERATOR, FY_ROLE_OPERATOR, "lab,prod");
  statement(&env, OWNER_LAB, COORD, &wide, true);
  assert_int_equal(fy_trust_apply(&t, env.data, env.len, &err), FY_CMD_FORBIDDEN_TENANT);
  admin(&root, ROOT, FY_ROLE_OWNER, "*");
  statement(&env, OWNER_LAB, COORD, &root, false);
  assert_int_equal(fy_trust_apply(&t, env.data, env.len, &err), FY_CMD_CONFLICT);

  /* removal takes the right away */
  statement(&env, ROOT, COORD, &op, false);
  assert_int_equal(fy_trust_apply(&t, env.data, env.len, &err), FY_CMD_OK);
  assert_false(fy_trust_may_sign_rollout(&t, &keys[OPERATOR].id, "lab"));
  assert_true(fy_trust_may_sign_rollout(&t, &keys[ROOT].id, "lab"));
  fy_trust_free(&t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_roles_and_tenants_parse),
      cmocka_unit_test(test_scope),
      cmocka_unit_test(test_authorize),
      cmocka_unit_test(test_agent_view_follows_statements),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
