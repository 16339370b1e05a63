/* The coordinator's rollouts in its store: artifacts, waves started by the
 * tick (desired state queued in the same transaction), agents' reports,
 * the failure threshold stopping later waves, pause and resume, retry of
 * the failed agents only, offline agents skipped, silent agents timed out. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "base/mpmap.h"
#include "coord_fixture.h"
#include "fleet/manifest.h"

#define NAGENTS 6

struct rfx {
  struct fx *f;
  struct fy_key agents[NAGENTS];
  bool offline[NAGENTS];
  struct fy_inbox *inbox;
  uint64_t report_seq[NAGENTS];
};

static bool online(const struct fy_nodeid *id, void *user) {
  struct rfx *r = user;
  for (int i = 0; i < NAGENTS; i++)
    if (fy_nodeid_equal(id, &r->agents[i].id))
      return !r->offline[i];
  return false;
}

static int rsetup(void **state) {
  setup(state);
  struct fx *f = *state;
  struct rfx *r = calloc(1, sizeof(*r));
  assert_non_null(r);
  r->f = f;
  uint8_t secret[32];
  assert_int_equal(make_ticket(f, K_ROOT, "lab", "site=a", HOUR, 0, secret), FY_CMD_OK);
  for (int i = 0; i < NAGENTS; i++) {
    uint8_t seed[32];
    memset(seed, 0x80 + i, sizeof(seed));
    assert_int_equal(fy_key_from_seed(&r->agents[i], seed, NULL), 0);
    FY_AUTOBUF struct fy_buf req = FY_BUF_INIT, reply = FY_BUF_INIT;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &req, fy_mp_buf_write);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str_with_body(&pk, "secret", 6);
    msgpack_pack_bin_with_body(&pk, secret, 32);
    assert_int_equal(fy_coord_enroll(&f->c, &r->agents[i].id, req.data, req.len, &reply, NULL), 0);
  }
  assert_int_equal(fy_inbox_open(&r->inbox, f->store, NULL, NULL), 0);
  assert_int_equal(fy_coord_rollout_register(&f->c, r->inbox, NULL), 0);
  /* the artifact, signed by the root for tenant lab */
  struct fy_manifest m = {.issuer = f->keys[K_ROOT].id,
                          .coordinator = f->c.id,
                          .kind = FY_ARTIFACT_SCRIPT,
                          .size = 3,
                          .issued_at = T0};
  snprintf(m.tenant, sizeof(m.tenant), "lab");
  snprintf(m.name, sizeof(m.name), "app");
  snprintf(m.uri, sizeof(m.uri), "file:///srv/app-2.0.0");
  assert_int_equal(fy_manifest_set_version(&m, "2.0.0", NULL), 0);
  FY_AUTOBUF struct fy_buf env = FY_BUF_INIT;
  assert_int_equal(fy_manifest_sign(&f->keys[K_ROOT], &m, &env, NULL), 0);
  struct cmd c = {
      .signer = K_ROOT, .issuer = K_ROOT, .coord = K_COORD, .name = "artifact.add", .tenant = "lab"};
  msgpack_packer pk;
  msgpack_packer_init(&pk, &c.args, fy_mp_buf_write);
  msgpack_pack_map(&pk, 1);
  msgpack_pack_str_with_body(&pk, "manifest", 8);
  msgpack_pack_bin_with_body(&pk, env.data, env.len);
  char why[512];
  int rc = run(f, &c, why, sizeof(why));
  if (rc != FY_CMD_OK)
    fail_msg("artifact.add: %s", why);
  *state = r;
  return 0;
}

static int rteardown(void **state) {
  struct rfx *r = *state;
  fy_inbox_close(r->inbox);
  for (int i = 0; i < NAGENTS; i++)
    fy_key_free(&r->agents[i]);
  void *f = r->f;
  free(r);
  return teardown(&f);
}

/* rollout.<cmd> of rollout "r1", or its creation with waves and policy. */
static int rollout_cmd(struct rfx *r, const char *cmd, const char *waves, uint64_t max_failures,
                       uint64_t timeout_ms, char *why) {
  char name[64];
  snprintf(name, sizeof(name), "rollout.%s", cmd);
  struct cmd c = {.signer = K_ROOT, .issuer = K_ROOT, .coord = K_COORD, .name = name, .tenant = "lab"};
  msgpack_packer pk;
  msgpack_packer_init(&pk, &c.args, fy_mp_buf_write);
  bool create = strcmp(cmd, "create") == 0;
  msgpack_pack_map(&pk, create ? 5 : 1);
  fy_mp_pack_kv_str(&pk, "id", "r1");
  if (create) {
    fy_mp_pack_kv_str(&pk, "name", "app");
    fy_mp_pack_kv_str(&pk, "version", "2.0.0");
    fy_mp_pack_kv_str(&pk, "waves", waves);
    fy_mp_pack_str(&pk, "policy");
    msgpack_pack_map(&pk, 3);
    fy_mp_pack_kv_u64(&pk, "max_failures", max_failures);
    fy_mp_pack_kv_u64(&pk, "min_success_permille", 0);
    fy_mp_pack_kv_u64(&pk, "action_timeout_ms", timeout_ms);
  }
  return run(r->f, &c, why, 512);
}

static void tick(struct rfx *r) {
  struct fy_err err = {0};
  if (fy_coord_rollout_tick(&r->f->c, r->f->now, online, r, &err) < 0)
    fail_msg("tick: %s", err.msg);
}

static void report(struct rfx *r, int agent, const char *state) {
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  msgpack_packer pk;
  msgpack_packer_init(&pk, &b, fy_mp_buf_write);
  msgpack_pack_map(&pk, 3);
  fy_mp_pack_kv_str(&pk, "rollout", "r1");
  fy_mp_pack_kv_str(&pk, "state", state);
  fy_mp_pack_kv_u64(&pk, "at", r->f->now);
  uint64_t seq = ++r->report_seq[agent];
  struct fy_inbox_msg m = {.seq = seq, .prev_seq = seq - 1, .payload = fy_bytes_of(b.data, b.len)};
  memset(m.id, 1, sizeof(m.id));
  struct fy_err err = {0};
  if (fy_inbox_deliver(r->inbox, &r->agents[agent].id, FY_COORD_TOPIC_REPORT, &m, &err) != FY_INBOX_APPLIED)
    fail_msg("report: %s", err.msg);
}

/* Desired-state messages queued to an agent. */
static uint64_t desired(struct rfx *r, int agent) {
  struct fy_outbox_queue_stats qs[4];
  int n = fy_outbox_queues(r->f->outbox, &r->agents[agent].id, qs, 4, NULL);
  for (int i = 0; i < n && i < 4; i++)
    if (strcmp(qs[i].topic, FY_COORD_TOPIC_DESIRED) == 0)
      return qs[i].pending;
  return 0;
}

/* The rollout's state and wave, and one agent's target state, from the query. */
static void show(struct rfx *r, char *state, uint64_t *wave, int agent, char *target) {
  FY_AUTOBUF struct fy_buf reply = FY_BUF_INIT;
  int code;
  struct fy_err err = {0};
  if (query(r->f, K_ROOT, "rollout", "r1", &reply, &code, &err) < 0)
    fail_msg("query: %s", err.msg);
  struct fy_mpmap m;
  assert_int_equal(fy_mpmap_decode(&m, reply.data, reply.len, 8, 100000, "reply", NULL), 0);
  const msgpack_object *ro = fy_mp_get(m.map, "rollout"), *ts = fy_mp_get(m.map, "targets");
  assert_true(fy_mp_str(ro, "state", state, 32));
  assert_true(fy_mp_u64(ro, "wave", wave));
  target[0] = '\0';
  for (uint32_t i = 0; agent >= 0 && i < ts->via.array.size; i++) {
    uint8_t id[32];
    fy_mp_bin(&ts->via.array.ptr[i], "agent", id, 32);
    if (memcmp(id, r->agents[agent].id.key, 32) == 0)
      fy_mp_str(&ts->via.array.ptr[i], "state", target, 32);
  }
  fy_mpmap_free(&m);
}

/* Agents are in node id order; which of ours is in which wave is found
 * from what the tick queued. */
static int sent_count(struct rfx *r) {
  int n = 0;
  for (int i = 0; i < NAGENTS; i++)
    n += desired(r, i) > 0;
  return n;
}

static void test_waves_advance_on_success_only(void **state) {
  struct rfx *r = *state;
  char why[512], st[32], target[32];
  uint64_t wave;
  assert_int_equal(rollout_cmd(r, "create", "3", 0, 60000, why), FY_CMD_OK);
  tick(r);
  assert_int_equal(sent_count(r), 0); /* a draft does nothing */
  assert_int_equal(rollout_cmd(r, "start", NULL, 0, 0, why), FY_CMD_OK);
  tick(r);
  assert_int_equal(sent_count(r), 2); /* wave 1 of 3: two agents */
  bool first[NAGENTS];
  for (int i = 0; i < NAGENTS; i++)
    first[i] = desired(r, i) > 0;
  /* downloading is not success: the wave waits */
  for (int i = 0; i < NAGENTS; i++)
    if (first[i])
      report(r, i, "downloading");
  tick(r);
  assert_int_equal(sent_count(r), 2);
  for (int i = 0; i < NAGENTS; i++)
    if (first[i])
      report(r, i, "success");
  tick(r);
  assert_int_equal(sent_count(r), 4);
  show(r, st, &wave, -1, target);
  assert_string_equal(st, "running");
  assert_int_equal(wave, 1);
  for (int i = 0; i < NAGENTS; i++)
    if (desired(r, i))
      report(r, i, "success");
  tick(r); /* wave 2 done: wave 3 starts */
  for (int i = 0; i < NAGENTS; i++)
    report(r, i, "success");
  tick(r);
  show(r, st, &wave, 0, target);
  assert_string_equal(st, "completed");
  assert_string_equal(target, "success");
}

static void test_failure_stops_later_waves_and_retry_resends_failed_only(void **state) {
  struct rfx *r = *state;
  char why[512], st[32], target[32];
  uint64_t wave;
  assert_int_equal(rollout_cmd(r, "create", "2", 0, 60000, why), FY_CMD_OK);
  assert_int_equal(rollout_cmd(r, "start", NULL, 0, 0, why), FY_CMD_OK);
  tick(r);
  int failing = -1;
  for (int i = 0; i < NAGENTS; i++)
    if (desired(r, i)) {
      report(r, i, failing < 0 ? "rolled_back" : "success");
      if (failing < 0)
        failing = i;
    }
  tick(r);
  show(r, st, &wave, failing, target);
  assert_string_equal(st, "failed");
  assert_string_equal(target, "rolled_back");
  assert_int_equal(sent_count(r), 3); /* the second wave never started */
  /* retry: only the failed agent gets the desired state again */
  uint64_t before = desired(r, failing);
  assert_int_equal(rollout_cmd(r, "retry", NULL, 0, 0, why), FY_CMD_OK);
  tick(r);
  assert_int_equal(desired(r, failing), before + 1);
  assert_int_equal(sent_count(r), 3);
  report(r, failing, "success");
  tick(r);
  show(r, st, &wave, failing, target);
  assert_string_equal(st, "running");
  assert_int_equal(wave, 1);
  assert_int_equal(sent_count(r), NAGENTS);
  /* retry is refused while running */
  assert_int_equal(rollout_cmd(r, "retry", NULL, 0, 0, why), FY_CMD_CONFLICT);
  assert_non_null(strstr(why, "cannot retry a rollout that is running"));
}

static void test_pause_holds_the_next_wave(void **state) {
  struct rfx *r = *state;
  char why[512], st[32], target[32];
  uint64_t wave;
  assert_int_equal(rollout_cmd(r, "create", "2", 0, 60000, why), FY_CMD_OK);
  assert_int_equal(rollout_cmd(r, "start", NULL, 0, 0, why), FY_CMD_OK);
  tick(r);
  assert_int_equal(rollout_cmd(r, "pause", NULL, 0, 0, why), FY_CMD_OK);
  for (int i = 0; i < NAGENTS; i++)
    if (desired(r, i))
      report(r, i, "success");
  tick(r);
  assert_int_equal(sent_count(r), 3);
  show(r, st, &wave, -1, target);
  assert_string_equal(st, "paused");
  assert_int_equal(rollout_cmd(r, "resume", NULL, 0, 0, why), FY_CMD_OK);
  tick(r);
  assert_int_equal(sent_count(r), NAGENTS);
}

static void test_offline_skipped_and_silent_timed_out(void **state) {
  struct rfx *r = *state;
  char why[512], st[32], target[32];
  uint64_t wave;
  for (int i = 0; i < NAGENTS; i++)
    r->offline[i] = i == 0;
  assert_int_equal(rollout_cmd(r, "create", "1", 0, 1000, why), FY_CMD_OK);
  assert_int_equal(rollout_cmd(r, "start", NULL, 0, 0, why), FY_CMD_OK);
  tick(r);
  assert_int_equal(desired(r, 0), 0); /* offline: skipped, nothing queued */
  show(r, st, &wave, 0, target);
  assert_string_equal(target, "skipped");
  for (int i = 2; i < NAGENTS; i++)
    report(r, i, "success");
  /* agent 1 stays silent past the action timeout */
  r->f->now += 2000;
  tick(r);
  show(r, st, &wave, 1, target);
  assert_string_equal(target, "timed_out");
  assert_string_equal(st, "failed");
}

static void test_zero_eligible_and_bad_commands(void **state) {
  struct rfx *r = *state;
  char why[512], st[32], target[32];
  uint64_t wave;
  struct cmd c = {
      .signer = K_ROOT, .issuer = K_ROOT, .coord = K_COORD, .name = "rollout.create", .tenant = "lab"};
  msgpack_packer pk;
  msgpack_packer_init(&pk, &c.args, fy_mp_buf_write);
  msgpack_pack_map(&pk, 4);
  fy_mp_pack_kv_str(&pk, "id", "r1");
  fy_mp_pack_kv_str(&pk, "name", "app");
  fy_mp_pack_kv_str(&pk, "version", "2.0.0");
  fy_mp_pack_str(&pk, "selector");
  msgpack_pack_map(&pk, 1);
  fy_mp_pack_kv_str(&pk, "site", "nowhere");
  assert_int_equal(run(r->f, &c, why, sizeof(why)), FY_CMD_OK);
  assert_int_equal(rollout_cmd(r, "start", NULL, 0, 0, why), FY_CMD_OK);
  tick(r);
  show(r, st, &wave, -1, target);
  assert_string_equal(st, "failed");
  /* the same id twice, an unknown artifact, an unknown rollout */
  assert_int_equal(rollout_cmd(r, "create", "1", 0, 0, why), FY_CMD_CONFLICT);
  struct cmd c2 = {
      .signer = K_ROOT, .issuer = K_ROOT, .coord = K_COORD, .name = "rollout.create", .tenant = "lab"};
  msgpack_packer_init(&pk, &c2.args, fy_mp_buf_write);
  msgpack_pack_map(&pk, 3);
  fy_mp_pack_kv_str(&pk, "id", "r2");
  fy_mp_pack_kv_str(&pk, "name", "app");
  fy_mp_pack_kv_str(&pk, "version", "9.9.9");
  assert_int_equal(run(r->f, &c2, why, sizeof(why)), FY_CMD_NOT_FOUND);
  assert_non_null(strstr(why, "no artifact app 9.9.9"));
  struct cmd c3 = {
      .signer = K_ROOT, .issuer = K_ROOT, .coord = K_COORD, .name = "rollout.start", .tenant = "lab"};
  msgpack_packer_init(&pk, &c3.args, fy_mp_buf_write);
  msgpack_pack_map(&pk, 1);
  fy_mp_pack_kv_str(&pk, "id", "nope");
  assert_int_equal(run(r->f, &c3, why, sizeof(why)), FY_CMD_NOT_FOUND);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_waves_advance_on_success_only, rsetup, rteardown),
      cmocka_unit_test_setup_teardown(test_failure_stops_later_waves_and_retry_resends_failed_only, rsetup,
                                      rteardown),
      cmocka_unit_test_setup_teardown(test_pause_holds_the_next_wave, rsetup, rteardown),
      cmocka_unit_test_setup_teardown(test_offline_skipped_and_silent_timed_out, rsetup, rteardown),
      cmocka_unit_test_setup_teardown(test_zero_eligible_and_bad_commands, rsetup, rteardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
