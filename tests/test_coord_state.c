/* The coordinator's memory: every check a signed command goes through, each
 * refusal with its own code; enrollment by ticket, pending and approval,
 * revocation; facts and their bounded history; what each admin may read. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "coord_fixture.h"
#include "rpc/frame.h"

/* ---- the checks, one refusal each -------------------------------------------------------- */

static void approve_cmd(struct fx *f, struct cmd *c, int signer, const char *tenant) {
  *c = (struct cmd){
      .signer = signer, .issuer = signer, .coord = K_COORD, .name = "agents.approve", .tenant = tenant};
  args_id(&c->args, "id", &f->keys[K_AGENT].id, NULL);
}

static void test_refusals_each_have_their_code(void **state) {
  struct fx *f = *state;
  add_admin(f, K_ROOT, K_OPLAB, FY_ROLE_OPERATOR, "lab", FY_CMD_OK);
  add_admin(f, K_ROOT, K_VIEWER, FY_ROLE_VIEWER, "lab", FY_CMD_OK);
  FY_AUTOBUF struct fy_buf reply = FY_BUF_INIT;
  assert_int_equal(enroll(f, K_AGENT, NULL, &reply, NULL), 0); /* pending */
  struct cmd c;
  char why[512];

  /* forged: one bit of the signature flipped */
  approve_cmd(f, &c, K_OPLAB, "lab");
  FY_AUTOBUF struct fy_buf env = FY_BUF_INIT;
  seal(f, &c, &env);
  env.data[env.len - 1] ^= 1;
  struct apply a = {.f = f, .env = env.data, .len = env.len};
  assert_int_equal(fy_store_write(f->store, apply_body, &a, NULL), 0);
  assert_int_equal(a.result, FY_CMD_BAD_SIGNATURE);

  approve_cmd(f, &c, K_STRANGER, "lab");
  assert_int_equal(run(f, &c, why, sizeof(why)), FY_CMD_UNKNOWN_SIGNER);
  assert_non_null(strstr(why, "not an admin"));

  approve_cmd(f, &c, K_VIEWER, "lab");
  assert_int_equal(run(f, &c, why, sizeof(why)), FY_CMD_FORBIDDEN_ROLE);
  assert_non_null(strstr(why, "needs the operator role"));

  approve_cmd(f, &c, K_OPLAB, "prod");
  assert_int_equal(run(f, &c, why, sizeof(why)), FY_CMD_FORBIDDEN_TENANT);
  assert_non_null(strstr(why, "'prod'"));

  /* replayed: a sequence number at or below the last one consumed */
  approve_cmd(f, &c, K_OPLAB, "lab");
  c.seq = f->seq[K_OPLAB];
  assert_int_equal(run(f, &c, why, sizeof(why)), FY_CMD_REPLAYED);

  approve_cmd(f, &c, K_OPLAB, "lab");
  c.iat = f->now - 2 * HOUR;
  c.exp = f->now - HOUR;
  assert_int_equal(run(f, &c, why, sizeof(why)), FY_CMD_EXPIRED);

  approve_cmd(f, &c, K_OPLAB, "lab");
  c.coord = K_OTHER_COORD;
  assert_int_equal(run(f, &c, why, sizeof(why)), FY_CMD_WRONG_COORDINATOR);

  approve_cmd(f, &c, K_OPLAB, "lab");
  c.issuer = K_ROOT; /* signed by the operator in the root's name */
  assert_int_equal(run(f, &c, why, sizeof(why)), FY_CMD_SIGNER_MISMATCH);

  /* none of that changed the agent; the genuine command applies */
  assert_int_equal(fy_coord_agent_status(&f->c, &f->keys[K_AGENT].id), FY_AGENT_PENDING);
  approve_cmd(f, &c, K_OPLAB, "lab");
  assert_int_equal(run(f, &c, why, sizeof(why)), FY_CMD_OK);
  assert_int_equal(fy_coord_agent_status(&f->c, &f->keys[K_AGENT].id), FY_AGENT_ENROLLED);
}

static void test_refused_command_consumes_its_seq(void **state) {
  struct fx *f = *state;
  add_admin(f, K_ROOT, K_OPLAB, FY_ROLE_VIEWER, "lab", FY_CMD_OK);
  FY_AUTOBUF struct fy_buf reply = FY_BUF_INIT;
  assert_int_equal(enroll(f, K_AGENT, NULL, &reply, NULL), 0);
  struct cmd c;
  approve_cmd(f, &c, K_OPLAB, "lab");
  FY_AUTOBUF struct fy_buf env = FY_BUF_INIT;
  seal(f, &c, &env);
  struct apply a = {.f = f, .env = env.data, .len = env.len};
  assert_int_equal(fy_store_write(f->store, apply_body, &a, NULL), 0);
  assert_int_equal(a.result, FY_CMD_FORBIDDEN_ROLE);
  /* promoted later: the same envelope replayed must not pass now */
  add_admin(f, K_ROOT, K_OPLAB, FY_ROLE_OPERATOR, "lab", FY_CMD_OK);
  assert_int_equal(fy_store_write(f->store, apply_body, &a, NULL), 0);
  assert_int_equal(a.result, FY_CMD_REPLAYED);
}

static void test_admin_changes_follow_scope(void **state) {
  struct fx *f = *state;
  add_admin(f, K_ROOT, K_OWNER2, FY_ROLE_OWNER, "lab", FY_CMD_OK);
  /* a lab owner may add lab admins, not prod ones, nor touch the root */
  add_admin(f, K_OWNER2, K_VIEWER, FY_ROLE_VIEWER, "lab", FY_CMD_OK);
  add_admin(f, K_OWNER2, K_OPLAB, FY_ROLE_OPERATOR, "prod", FY_CMD_FORBIDDEN_TENANT);
  add_admin(f, K_OWNER2, K_ROOT, FY_ROLE_VIEWER, "lab", FY_CMD_CONFLICT);
  add_admin(f, K_VIEWER, K_OPLAB, FY_ROLE_VIEWER, "lab", FY_CMD_FORBIDDEN_ROLE);
  /* removal */
  struct cmd c = {.signer = K_OWNER2, .issuer = K_OWNER2, .coord = K_COORD, .name = "admin.remove"};
  struct fy_admin v = {.key = f->keys[K_VIEWER].id};
  assert_int_equal(fy_admin_args_encode(&v, false, &c.args, NULL), 0);
  assert_int_equal(run(f, &c, NULL, 0), FY_CMD_OK);
  /* removing it again: it is gone */
  struct cmd again = {.signer = K_OWNER2, .issuer = K_OWNER2, .coord = K_COORD, .name = "admin.remove"};
  assert_int_equal(fy_admin_args_encode(&v, false, &again.args, NULL), 0);
  char why[256];
  assert_int_equal(run(f, &again, why, sizeof(why)), FY_CMD_NOT_FOUND);
  assert_non_null(strstr(why, "does not exist"));
  struct cmd c2 = {.signer = K_VIEWER, .issuer = K_VIEWER, .coord = K_COORD, .name = "agents.revoke"};
  args_id(&c2.args, "id", &f->keys[K_AGENT].id, NULL);
  assert_int_equal(run(f, &c2, NULL, 0), FY_CMD_UNKNOWN_SIGNER);
}

/* ---- enrollment -------------------------------------------------------------------- */

static void test_ticket_enrolls_once_per_use(void **state) {
  struct fx *f = *state;
  uint8_t secret[32];
  assert_int_equal(make_ticket(f, K_ROOT, "lab", "site=berlin", HOUR, 1, secret), FY_CMD_OK);
  FY_AUTOBUF struct fy_buf reply = FY_BUF_INIT;
  struct fy_err err = {0};
  assert_int_equal(enroll(f, K_AGENT, secret, &reply, &err), 0);
  char s[64];
  reply_str(&reply, "status", s, sizeof(s));
  assert_string_equal(s, "enrolled");
  reply_str(&reply, "tenant", s, sizeof(s));
  assert_string_equal(s, "lab");
  /* the same agent again: still enrolled, the use is not counted twice */
  assert_int_equal(enroll(f, K_AGENT, secret, &reply, &err), 0);
  /* a second agent: used up */
  assert_int_equal(enroll(f, K_AGENT2, secret, &reply, &err), FY_EPERM);
  assert_non_null(strstr(err.msg, "used up"));
}

static void test_bad_tickets_are_refused(void **state) {
  struct fx *f = *state;
  uint8_t secret[32], forged[32];
  assert_int_equal(make_ticket(f, K_ROOT, "lab", "", HOUR, 0, secret), FY_CMD_OK);
  FY_AUTOBUF struct fy_buf reply = FY_BUF_INIT;
  struct fy_err err = {0};
  randombytes_buf(forged, sizeof(forged));
  assert_int_equal(enroll(f, K_AGENT, forged, &reply, &err), FY_EPERM);
  assert_non_null(strstr(err.msg, "does not know it"));
  f->now += 2 * HOUR;
  assert_int_equal(enroll(f, K_AGENT, secret, &reply, &err), FY_EPERM);
  assert_non_null(strstr(err.msg, "expired"));
  /* neither attempt enrolled anything */
  assert_int_not_equal(fy_coord_agent_status(&f->c, &f->keys[K_AGENT].id), FY_AGENT_ENROLLED);
}

static void test_pending_then_approved_then_revoked(void **state) {
  struct fx *f = *state;
  FY_AUTOBUF struct fy_buf reply = FY_BUF_INIT;
  struct fy_err err = {0};
  char s[64];
  assert_int_equal(enroll(f, K_AGENT, NULL, &reply, &err), 0);
  reply_str(&reply, "status", s, sizeof(s));
  assert_string_equal(s, "pending");
  struct cmd c = {
      .signer = K_ROOT, .issuer = K_ROOT, .coord = K_COORD, .name = "agents.approve", .tenant = "lab"};
  args_id(&c.args, "id", &f->keys[K_AGENT].id, "role=kiosk");
  assert_int_equal(run(f, &c, NULL, 0), FY_CMD_OK);
  assert_int_equal(enroll(f, K_AGENT, NULL, &reply, &err), 0);
  reply_str(&reply, "status", s, sizeof(s));
  assert_string_equal(s, "enrolled");
  c = (struct cmd){
      .signer = K_ROOT, .issuer = K_ROOT, .coord = K_COORD, .name = "agents.revoke", .tenant = "lab"};
  args_id(&c.args, "id", &f->keys[K_AGENT].id, NULL);
  assert_int_equal(run(f, &c, NULL, 0), FY_CMD_OK);
  assert_int_equal(enroll(f, K_AGENT, NULL, &reply, &err), FY_EPERM);
  assert_non_null(strstr(err.msg, "revoked"));
}

/* Admin changes reach enrolled agents as statements, in their outboxes. */
static void test_statements_forwarded_to_agents(void **state) {
  struct fx *f = *state;
  uint8_t secret[32];
  assert_int_equal(make_ticket(f, K_ROOT, "lab", "", HOUR, 0, secret), FY_CMD_OK);
  FY_AUTOBUF struct fy_buf reply = FY_BUF_INIT;
  assert_int_equal(enroll(f, K_AGENT, secret, &reply, NULL), 0);
  add_admin(f, K_ROOT, K_OPLAB, FY_ROLE_OPERATOR, "lab", FY_CMD_OK);
  struct fy_outbox_queue_stats qs[4];
  int n = fy_outbox_queues(f->outbox, &f->keys[K_AGENT].id, qs, 4, NULL);
  assert_int_equal(n, 1);
  assert_string_equal(qs[0].topic, FY_COORD_TOPIC_TRUST);
  assert_int_equal(qs[0].pending, 1);
  /* an agent enrolling later gets it in its reply, and its trust view accepts it */
  assert_int_equal(enroll(f, K_AGENT2, secret, &reply, NULL), 0);
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  assert_int_equal(msgpack_unpack_next(&u, (const char *)reply.data, reply.len, &off),
                   MSGPACK_UNPACK_SUCCESS);
  const msgpack_object *stmts = NULL;
  for (uint32_t i = 0; i < u.data.via.map.size; i++)
    if (u.data.via.map.ptr[i].key.via.str.size == 10 &&
        memcmp(u.data.via.map.ptr[i].key.via.str.ptr, "statements", 10) == 0)
      stmts = &u.data.via.map.ptr[i].val;
  assert_non_null(stmts);
  assert_int_equal(stmts->via.array.size, 1);
  struct fy_trust trust;
  assert_int_equal(fy_trust_init(&trust, &f->c.id, &f->keys[K_ROOT].id, 1, NULL), 0);
  const msgpack_object *s0 = &stmts->via.array.ptr[0];
  struct fy_err err = {0};
  assert_int_equal(fy_trust_apply(&trust, (const uint8_t *)s0->via.bin.ptr, s0->via.bin.size, &err),
                   FY_CMD_OK);
  assert_true(fy_trust_may_sign_rollout(&trust, &f->keys[K_OPLAB].id, "lab"));
  assert_false(fy_trust_may_sign_rollout(&trust, &f->keys[K_OPLAB].id, "prod"));
  /* replaying it is refused */
  assert_int_equal(fy_trust_apply(&trust, (const uint8_t *)s0->via.bin.ptr, s0->via.bin.size, &err),
                   FY_CMD_REPLAYED);
  fy_trust_free(&trust);
  msgpack_unpacked_destroy(&u);
}

/* ---- facts and queries ----------------------------------------------------------------- */

struct deliver {
  struct fx *f;
  struct fy_inbox *in;
  int agent;
  const struct fy_buf *payload;
  uint64_t seq;
};

static void deliver_facts(struct fx *f, struct fy_inbox *in, int agent, const char *host, uint64_t seq,
                          int expect) {
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  facts_bytes(host, &b);
  struct fy_inbox_msg m = {.seq = seq, .prev_seq = seq - 1, .payload = fy_bytes_of(b.data, b.len)};
  memset(m.id, 7, sizeof(m.id));
  struct fy_err err = {0};
  int rc = fy_inbox_deliver(in, &f->keys[agent].id, FY_COORD_TOPIC_FACTS, &m, &err);
  if (rc != expect)
    fail_msg("facts delivery: %d (%s), expected %d", rc, err.msg, expect);
}

static void test_facts_kept_with_bounded_history(void **state) {
  struct fx *f = *state;
  struct fy_inbox *in;
  assert_int_equal(fy_inbox_open(&in, f->store, NULL, NULL), 0);
  assert_int_equal(fy_coord_register(&f->c, in, NULL), 0);
  /* a pending agent's facts are refused: they stay in its outbox */
  FY_AUTOBUF struct fy_buf reply = FY_BUF_INIT;
  assert_int_equal(enroll(f, K_AGENT, NULL, &reply, NULL), 0);
  deliver_facts(f, in, K_AGENT, "kiosk-1", 1, FY_EPERM);
  struct cmd c = {
      .signer = K_ROOT, .issuer = K_ROOT, .coord = K_COORD, .name = "agents.approve", .tenant = "lab"};
  args_id(&c.args, "id", &f->keys[K_AGENT].id, NULL);
  assert_int_equal(run(f, &c, NULL, 0), FY_CMD_OK);
  for (uint64_t i = 1; i <= FY_COORD_HISTORY_MAX + 8; i++) {
    f->now += 1000;
    char host[32];
    snprintf(host, sizeof(host), "kiosk-%llu", (unsigned long long)i);
    deliver_facts(f, in, K_AGENT, host, i, FY_INBOX_APPLIED);
  }
  char hex[FY_NODEID_HEX_LEN + 1];
  fy_nodeid_to_hex(&f->keys[K_AGENT].id, hex);
  hex[8] = '\0';
  int code;
  struct fy_err err = {0};
  assert_int_equal(query(f, K_ROOT, "agent", hex, &reply, &code, &err), 0);
  /* the agent record shows the latest hostname; the history holds exactly the bound */
  assert_non_null(memmem(reply.data, reply.len, "kiosk-40", 8));
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  assert_int_equal(msgpack_unpack_next(&u, (const char *)reply.data, reply.len, &off),
                   MSGPACK_UNPACK_SUCCESS);
  for (uint32_t i = 0; i < u.data.via.map.size; i++)
    if (memcmp(u.data.via.map.ptr[i].key.via.str.ptr, "history", 7) == 0)
      assert_int_equal(u.data.via.map.ptr[i].val.via.array.size, FY_COORD_HISTORY_MAX);
  msgpack_unpacked_destroy(&u);
  fy_inbox_close(in);
}

static void test_queries_respect_roles_and_tenants(void **state) {
  struct fx *f = *state;
  add_admin(f, K_ROOT, K_VIEWER, FY_ROLE_VIEWER, "prod", FY_CMD_OK);
  uint8_t secret[32];
  assert_int_equal(make_ticket(f, K_ROOT, "lab", "", HOUR, 0, secret), FY_CMD_OK);
  FY_AUTOBUF struct fy_buf reply = FY_BUF_INIT;
  assert_int_equal(enroll(f, K_AGENT, secret, &reply, NULL), 0);
  int code = 0;
  struct fy_err err = {0};
  assert_int_equal(query(f, K_ROOT, "agents", NULL, &reply, &code, &err), 0);
  assert_non_null(memmem(reply.data, reply.len, "kiosk-1", 7));
  /* a prod viewer sees no lab agent */
  assert_int_equal(query(f, K_VIEWER, "agents", NULL, &reply, &code, &err), 0);
  assert_null(memmem(reply.data, reply.len, "kiosk-1", 7));
  /* a stranger is not an admin */
  assert_int_equal(query(f, K_STRANGER, "status", NULL, &reply, &code, &err), FY_EPERM);
  assert_int_equal(code, FY_RPC_PERMISSION_DENIED);
  assert_int_equal(query(f, K_ROOT, "nonsense", NULL, &reply, &code, &err), FY_EINVAL);
  assert_int_equal(code, FY_RPC_INVALID_ARGUMENT);
  assert_int_equal(query(f, K_ROOT, "agent", "ffff", &reply, &code, &err), FY_ENOENT);
  assert_int_equal(code, FY_RPC_NOT_FOUND);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_refusals_each_have_their_code, setup, teardown),
      cmocka_unit_test_setup_teardown(test_refused_command_consumes_its_seq, setup, teardown),
      cmocka_unit_test_setup_teardown(test_admin_changes_follow_scope, setup, teardown),
      cmocka_unit_test_setup_teardown(test_ticket_enrolls_once_per_use, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_tickets_are_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pending_then_approved_then_revoked, setup, teardown),
      cmocka_unit_test_setup_teardown(test_statements_forwarded_to_agents, setup, teardown),
      cmocka_unit_test_setup_teardown(test_facts_kept_with_bounded_history, setup, teardown),
      cmocka_unit_test_setup_teardown(test_queries_respect_roles_and_tenants, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
