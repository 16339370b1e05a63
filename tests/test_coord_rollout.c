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
  uint64_t report_seq[NAGENTS], facts_seq[NAGENTS];
};

static bool online(const struct fy_nodeid *id, void *user) {
  struct rfx *r = user;
  for (int i = 0; i < NAGENTS; i++)
    if (fy_nodeid_equal(id, &r->agents[i].id))
      return !r->offline[i];
  return false;
}

/* artifact.add of NAME VERSION, signed by the root for tenant lab;
 * compatible: NULL or one hardware model. */
static void add_artifact(struct rfx *r, const char *name, const char *version, const char *compatible) {
  struct fx *f = r->f;
  struct fy_manifest m = {.issuer = f->keys[K_ROOT].id,
                          .coordinator = f->c.id,
                          .kind = FY_ARTIFACT_SCRIPT,
                          .size = 3,
                          .issued_at = T0};
  snprintf(m.tenant, sizeof(m.tenant), "lab");
  snprintf(m.name, sizeof(m.name), "%s", name);
  snprintf(m.uri, sizeof(m.uri), "file:///srv/%s-%s", name, version);
  if (compatible) {
    snprintf(m.compatible[0], sizeof(m.compatible[0]), "%s", compatible);
    m.ncompatible = 1;
  }
  assert_int_equal(fy_manifest_set_version(&m, version, NULL), 0);
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
  assert_int_equal(fy_coord_register(&f->c, r->inbox, NULL), 0);
  add_artifact(r, "app", "2.0.0", NULL);
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

static void report_on(struct rfx *r, int agent, const char *rollout, const char *version, const char *state);

/* An agent's report on rollout r1 (of app 2.0.0). */
static void report(struct rfx *r, int agent, const char *state) {
  report_on(r, agent, "r1", "2.0.0", state);
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

/* ---- update modes and channels ------------------------------------------------------- */

/* The agent's facts: how it wants updates, its hardware and its version. */
static void prefs(struct rfx *r, int agent, const char *mode, const char *channel, const char *assigned,
                  const char *hw_model, const char *version) {
  struct fy_facts facts;
  memset(&facts, 0, sizeof(facts));
  snprintf(facts.hostname, sizeof(facts.hostname), "a%d", agent);
  snprintf(facts.version, sizeof(facts.version), "%s", version);
  snprintf(facts.update_mode, sizeof(facts.update_mode), "%s", mode);
  snprintf(facts.channel, sizeof(facts.channel), "%s", channel);
  snprintf(facts.assigned, sizeof(facts.assigned), "%s", assigned);
  snprintf(facts.hw_model, sizeof(facts.hw_model), "%s", hw_model);
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  assert_int_equal(fy_facts_encode(&facts, &b, NULL), 0);
  uint64_t seq = ++r->facts_seq[agent];
  struct fy_inbox_msg m = {.seq = seq, .prev_seq = seq - 1, .payload = fy_bytes_of(b.data, b.len)};
  memset(m.id, 2, sizeof(m.id));
  struct fy_err err = {0};
  if (fy_inbox_deliver(r->inbox, &r->agents[agent].id, FY_COORD_TOPIC_FACTS, &m, &err) != FY_INBOX_APPLIED)
    fail_msg("facts: %s", err.msg);
}

/* rollout.create of id: NAME@VERSION on channel, one wave, tolerant policy. */
static int create(struct rfx *r, const char *id, const char *name, const char *version, const char *channel,
                  char *why) {
  struct cmd c = {
      .signer = K_ROOT, .issuer = K_ROOT, .coord = K_COORD, .name = "rollout.create", .tenant = "lab"};
  msgpack_packer pk;
  msgpack_packer_init(&pk, &c.args, fy_mp_buf_write);
  msgpack_pack_map(&pk, 6);
  fy_mp_pack_kv_str(&pk, "id", id);
  fy_mp_pack_kv_str(&pk, "name", name);
  fy_mp_pack_kv_str(&pk, "version", version);
  fy_mp_pack_kv_str(&pk, "channel", channel);
  fy_mp_pack_kv_str(&pk, "waves", "1");
  fy_mp_pack_str(&pk, "policy");
  msgpack_pack_map(&pk, 2);
  fy_mp_pack_kv_u64(&pk, "max_failures", UINT32_MAX);
  fy_mp_pack_kv_u64(&pk, "min_success_permille", 0);
  return run(r->f, &c, why, 512);
}

static int start(struct rfx *r, const char *id, char *why) {
  struct cmd c = {
      .signer = K_ROOT, .issuer = K_ROOT, .coord = K_COORD, .name = "rollout.start", .tenant = "lab"};
  msgpack_packer pk;
  msgpack_packer_init(&pk, &c.args, fy_mp_buf_write);
  msgpack_pack_map(&pk, 1);
  fy_mp_pack_kv_str(&pk, "id", id);
  return run(r->f, &c, why, 512);
}

/* One agent's target in rollout id: 1 with its state, msg and whether it
 * is in a wave; 0 when the rollout did not select it. */
static int target_of(struct rfx *r, const char *id, int agent, char *state, char *msg, bool *in_wave) {
  FY_AUTOBUF struct fy_buf reply = FY_BUF_INIT;
  int code, found = 0;
  struct fy_err err = {0};
  if (query(r->f, K_ROOT, "rollout", id, &reply, &code, &err) < 0)
    fail_msg("query: %s", err.msg);
  struct fy_mpmap m;
  assert_int_equal(fy_mpmap_decode(&m, reply.data, reply.len, 8, 100000, "reply", NULL), 0);
  const msgpack_object *ts = fy_mp_get(m.map, "targets");
  for (uint32_t i = 0; i < ts->via.array.size; i++) {
    const msgpack_object *t = &ts->via.array.ptr[i];
    uint8_t a[32];
    fy_mp_bin(t, "agent", a, 32);
    if (memcmp(a, r->agents[agent].id.key, 32) != 0)
      continue;
    found = 1;
    fy_mp_str(t, "state", state, 32);
    fy_mp_str(t, "msg", msg, 256);
    *in_wave = fy_mp_get(t, "wave")->type != MSGPACK_OBJECT_NIL;
  }
  fy_mpmap_free(&m);
  return found;
}

/* The agent's last delivery outside rollouts, from admin.query agent: its
 * via and state ("" when none) and msg. */
static void update_of(struct rfx *r, int agent, char *via, char *state, char *msg) {
  char hex[FY_NODEID_HEX_LEN + 1];
  fy_nodeid_to_hex(&r->agents[agent].id, hex);
  FY_AUTOBUF struct fy_buf reply = FY_BUF_INIT;
  int code;
  struct fy_err err = {0};
  if (query(r->f, K_ROOT, "agent", hex, &reply, &code, &err) < 0)
    fail_msg("query: %s", err.msg);
  struct fy_mpmap m;
  assert_int_equal(fy_mpmap_decode(&m, reply.data, reply.len, 8, 100000, "reply", NULL), 0);
  const msgpack_object *u = fy_mp_get(m.map, "update");
  assert_non_null(u);
  via[0] = state[0] = msg[0] = '\0';
  if (u->type == MSGPACK_OBJECT_MAP) {
    fy_mp_str(u, "via", via, 16);
    fy_mp_str(u, "state", state, 32);
    fy_mp_str(u, "msg", msg, 256);
  }
  fy_mpmap_free(&m);
}

static void report_on(struct rfx *r, int agent, const char *rollout, const char *version, const char *state) {
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  msgpack_packer pk;
  msgpack_packer_init(&pk, &b, fy_mp_buf_write);
  msgpack_pack_map(&pk, 4);
  fy_mp_pack_kv_str(&pk, "rollout", rollout);
  fy_mp_pack_kv_str(&pk, "state", state);
  fy_mp_pack_kv_str(&pk, "version", version);
  fy_mp_pack_kv_u64(&pk, "at", r->f->now);
  uint64_t seq = ++r->report_seq[agent];
  struct fy_inbox_msg m = {.seq = seq, .prev_seq = seq - 1, .payload = fy_bytes_of(b.data, b.len)};
  memset(m.id, 1, sizeof(m.id));
  struct fy_err err = {0};
  if (fy_inbox_deliver(r->inbox, &r->agents[agent].id, FY_COORD_TOPIC_REPORT, &m, &err) != FY_INBOX_APPLIED)
    fail_msg("report: %s", err.msg);
}

static void test_rollout_start_skips_by_update_mode_channel_and_hardware(void **state) {
  struct rfx *r = *state;
  char why[512], st[32], msg[256];
  bool in_wave;
  prefs(r, 0, "pinned", "", "", "", "1.0.0");
  prefs(r, 1, "assigned", "", "app@1.5.0", "", "1.0.0");
  prefs(r, 2, "latest", "beta", "", "", "1.0.0");
  prefs(r, 3, "follow", "beta", "", "rpi4", "1.0.0");
  prefs(r, 4, "follow", "beta", "", "rpi5", "1.0.0");
  prefs(r, 5, "follow", "", "", "", "1.0.0");
  /* no channel: every agent the labels match, but the pinned and the assigned are skipped */
  assert_int_equal(create(r, "x1", "app", "2.0.0", "", why), FY_CMD_OK);
  assert_int_equal(start(r, "x1", why), FY_CMD_OK);
  tick(r);
  assert_int_equal(target_of(r, "x1", 0, st, msg, &in_wave), 1);
  assert_string_equal(st, "skipped");
  assert_string_equal(msg, "pinned");
  assert_false(in_wave);
  assert_int_equal(target_of(r, "x1", 1, st, msg, &in_wave), 1);
  assert_string_equal(msg, "assigned app@1.5.0");
  assert_false(in_wave);
  for (int i = 2; i < NAGENTS; i++) {
    assert_int_equal(target_of(r, "x1", i, st, msg, &in_wave), 1);
    assert_string_equal(st, "sent");
    assert_true(in_wave);
  }
  assert_int_equal(desired(r, 0) + desired(r, 1), 0);
  /* the skipped count neither as success nor as failure */
  for (int i = 2; i < NAGENTS; i++)
    report(r, i, "success");
  for (int i = 2; i < NAGENTS; i++)
    report_on(r, i, "x1", "2.0.0", "success");
  tick(r);
  assert_int_equal(target_of(r, "x1", 5, st, msg, &in_wave), 1);
  assert_string_equal(st, "success");

  /* channel beta, an artifact for rpi4 only: agents 2-4 are on beta; 2 has no model, 4 is an rpi5 */
  add_artifact(r, "app", "3.0.0", "rpi4");
  assert_int_equal(create(r, "x2", "app", "3.0.0", "beta", why), FY_CMD_OK);
  assert_int_equal(start(r, "x2", why), FY_CMD_OK);
  tick(r);
  for (int i = 0; i < NAGENTS; i++)
    if (i < 2 || i == 5)
      assert_int_equal(target_of(r, "x2", i, st, msg, &in_wave), 0);
  assert_int_equal(target_of(r, "x2", 2, st, msg, &in_wave), 1);
  assert_string_equal(st, "skipped");
  assert_string_equal(msg, "incompatible: app 3.0.0 is for rpi4; this machine's model is unknown");
  assert_int_equal(target_of(r, "x2", 4, st, msg, &in_wave), 1);
  assert_string_equal(msg, "incompatible: app 3.0.0 is for rpi4; this machine is rpi5");
  assert_int_equal(target_of(r, "x2", 3, st, msg, &in_wave), 1);
  assert_string_equal(st, "sent");

  /* a channel is one release train: another artifact on beta is refused */
  add_artifact(r, "tool", "1.0.0", NULL);
  assert_int_equal(create(r, "x3", "tool", "1.0.0", "beta", why), FY_CMD_CONFLICT);
  assert_string_equal(why, "channel beta of tenant lab carries artifact app, not tool");
  assert_int_equal(create(r, "x3", "tool", "1.0.0", "Beta!", why), FY_CMD_INVALID_ARGS);
  assert_non_null(strstr(why, "channel must be empty or 1..32 of [a-z0-9._-]"));
}

static void test_latest_agents_catch_up_with_their_channel(void **state) {
  struct rfx *r = *state;
  char why[512], via[16], st[32], msg[256];
  for (int i = 0; i < NAGENTS; i++)
    prefs(r, i, "pinned", "", "", "", "1.0.0");
  prefs(r, 5, "follow", "", "", "", "1.0.0");
  /* nothing released on stable yet: a latest agent waits */
  prefs(r, 0, "latest", "", "", "", "1.0.0");
  tick(r);
  assert_int_equal(desired(r, 0), 0);
  update_of(r, 0, via, st, msg);
  assert_string_equal(via, "");
  /* a rollout on stable of 2.0.0 completes with agent 5 */
  prefs(r, 0, "pinned", "", "", "", "1.0.0"); /* pinned while it runs */
  assert_int_equal(create(r, "s1", "app", "2.0.0", "stable", why), FY_CMD_OK);
  assert_int_equal(start(r, "s1", why), FY_CMD_OK);
  tick(r);
  assert_int_equal(desired(r, 5), 1);
  report_on(r, 5, "s1", "2.0.0", "success");
  tick(r);
  /* now behind on stable: 0 gets 2.0.0 once; 1 (already 2.0.0) and 2 (3.0.0, newer) get nothing */
  prefs(r, 0, "latest", "stable", "", "", "1.0.0");
  prefs(r, 1, "latest", "stable", "", "", "2.0.0");
  prefs(r, 2, "latest", "stable", "", "", "3.0.0");
  prefs(r, 3, "latest", "beta", "", "", "1.0.0"); /* nothing released on beta */
  tick(r);
  tick(r);
  assert_int_equal(desired(r, 0), 1);
  assert_int_equal(desired(r, 1) + desired(r, 2) + desired(r, 3), 0);
  update_of(r, 0, via, st, msg);
  assert_string_equal(via, FY_DELIVERY_LATEST);
  assert_string_equal(st, "sent");
  /* the agent's reports move the record; a failure is not resent */
  report_on(r, 0, FY_DELIVERY_LATEST, "2.0.0", "rolled_back");
  tick(r);
  update_of(r, 0, via, st, msg);
  assert_string_equal(st, "rolled_back");
  assert_int_equal(desired(r, 0), 1);
  /* an agent in a running rollout's wave is left to it: no release beside it */
  add_artifact(r, "app", "3.0.0", NULL);
  prefs(r, 4, "follow", "stable", "", "", "1.0.0");
  assert_int_equal(create(r, "s2", "app", "3.0.0", "stable", why), FY_CMD_OK);
  assert_int_equal(start(r, "s2", why), FY_CMD_OK);
  tick(r);
  assert_int_equal(desired(r, 4), 1);
  prefs(r, 4, "latest", "stable", "", "", "1.0.0");
  tick(r);
  assert_int_equal(desired(r, 4), 1);
  update_of(r, 4, via, st, msg);
  assert_string_equal(via, "");
  report_on(r, 4, "s2", "3.0.0", "success");
  prefs(r, 4, "latest", "stable", "", "", "3.0.0");
  tick(r);
  assert_int_equal(desired(r, 4), 1); /* ahead of the release: nothing */
}

static void test_assigned_agents_get_their_version(void **state) {
  struct rfx *r = *state;
  char via[16], st[32], msg[256];
  for (int i = 0; i < NAGENTS; i++)
    prefs(r, i, "pinned", "", "", "", "1.0.0");
  prefs(r, 0, "assigned", "", "app@1.5.0", "", "1.0.0");
  prefs(r, 1, "assigned", "", "2.0.0", "", "2.0.0"); /* there already */
  prefs(r, 2, "assigned", "", "3.0.0", "", "1.0.0");
  tick(r);
  /* 1.5.0 does not exist yet: recorded as skipped, nothing sent */
  assert_int_equal(desired(r, 0), 0);
  update_of(r, 0, via, st, msg);
  assert_string_equal(via, FY_DELIVERY_ASSIGNED);
  assert_string_equal(st, "skipped");
  assert_string_equal(msg, "no artifact app 1.5.0 in tenant lab");
  update_of(r, 2, via, st, msg);
  assert_string_equal(msg, "no artifact 3.0.0 in tenant lab");
  add_artifact(r, "app", "1.5.0", NULL);
  add_artifact(r, "app", "3.0.0", "rpi4");
  tick(r);
  tick(r);
  assert_int_equal(desired(r, 0), 1); /* once */
  assert_int_equal(desired(r, 1), 0);
  update_of(r, 0, via, st, msg);
  assert_string_equal(st, "sent");
  /* the artifact for 3.0.0 is for rpi4 only */
  assert_int_equal(desired(r, 2), 0);
  update_of(r, 2, via, st, msg);
  assert_string_equal(st, "skipped");
  assert_string_equal(msg, "incompatible: app 3.0.0 is for rpi4; this machine's model is unknown");
  /* two artifacts with one version: the assignment must name one */
  add_artifact(r, "tool", "1.5.0", NULL);
  prefs(r, 3, "assigned", "", "1.5.0", "", "1.0.0");
  tick(r);
  update_of(r, 3, via, st, msg);
  assert_string_equal(msg, "2 artifacts have version 1.5.0 in tenant lab: assign NAME@VERSION");
  assert_int_equal(desired(r, 3), 0);
}

/* The ids "rollouts" lists for caller, comma-separated. */
static void listed(struct rfx *r, int caller, char *out, size_t size) {
  FY_AUTOBUF struct fy_buf reply = FY_BUF_INIT;
  int code;
  struct fy_err err = {0};
  if (query(r->f, caller, "rollouts", NULL, &reply, &code, &err) < 0)
    fail_msg("query: %s", err.msg);
  struct fy_mpmap m;
  assert_int_equal(fy_mpmap_decode(&m, reply.data, reply.len, 8, 100000, "reply", NULL), 0);
  const msgpack_object *l = fy_mp_get(m.map, "rollouts");
  assert_non_null(l);
  assert_int_equal(l->type, MSGPACK_OBJECT_ARRAY);
  out[0] = '\0';
  for (uint32_t i = 0; i < l->via.array.size; i++) {
    char id[40];
    assert_true(fy_mp_str(&l->via.array.ptr[i], "id", id, sizeof(id)));
    snprintf(out + strlen(out), size - strlen(out), "%s%s", i ? "," : "", id);
  }
  fy_mpmap_free(&m);
}

/* The list holds every rollout in the caller's tenants, in id order, and
 * nothing of other tenants. */
static void test_list_is_scoped_to_the_callers_tenants(void **state) {
  struct rfx *r = *state;
  char why[512], ids[256];
  listed(r, K_ROOT, ids, sizeof(ids));
  assert_string_equal(ids, "");
  assert_int_equal(create(r, "b2", "app", "2.0.0", "", why), FY_CMD_OK);
  assert_int_equal(create(r, "a1", "app", "2.0.0", "stable", why), FY_CMD_OK);
  listed(r, K_ROOT, ids, sizeof(ids));
  assert_string_equal(ids, "a1,b2");
  add_admin(r->f, K_ROOT, K_VIEWER, FY_ROLE_VIEWER, "prod", FY_CMD_OK);
  listed(r, K_VIEWER, ids, sizeof(ids));
  assert_string_equal(ids, "");
  add_admin(r->f, K_ROOT, K_OPLAB, FY_ROLE_VIEWER, "lab", FY_CMD_OK);
  listed(r, K_OPLAB, ids, sizeof(ids));
  assert_string_equal(ids, "a1,b2");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_waves_advance_on_success_only, rsetup, rteardown),
      cmocka_unit_test_setup_teardown(test_failure_stops_later_waves_and_retry_resends_failed_only, rsetup,
                                      rteardown),
      cmocka_unit_test_setup_teardown(test_pause_holds_the_next_wave, rsetup, rteardown),
      cmocka_unit_test_setup_teardown(test_offline_skipped_and_silent_timed_out, rsetup, rteardown),
      cmocka_unit_test_setup_teardown(test_zero_eligible_and_bad_commands, rsetup, rteardown),
      cmocka_unit_test_setup_teardown(test_rollout_start_skips_by_update_mode_channel_and_hardware, rsetup,
                                      rteardown),
      cmocka_unit_test_setup_teardown(test_latest_agents_catch_up_with_their_channel, rsetup, rteardown),
      cmocka_unit_test_setup_teardown(test_assigned_agents_get_their_version, rsetup, rteardown),
      cmocka_unit_test_setup_teardown(test_list_is_scoped_to_the_callers_tenants, rsetup, rteardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
