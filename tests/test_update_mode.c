/* Update modes (fleet/update_mode.h): the rules the coordinator applies
 * when it chooses a rollout's agents and the agent applies again to what
 * it receives, and the parsing of their configuration. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "fleet/update_mode.h"

static void manifest(struct fy_manifest *m, const char *name, const char *version, const char *compatible) {
  memset(m, 0, sizeof(*m));
  snprintf(m->name, sizeof(m->name), "%s", name);
  assert_int_equal(fy_manifest_set_version(m, version, NULL), 0);
  if (compatible) {
    snprintf(m->compatible[0], sizeof(m->compatible[0]), "%s", compatible);
    m->ncompatible = 1;
  }
}

static struct fy_update_prefs prefs(enum fy_update_mode mode, const char *channel, const char *assigned,
                                    const char *hw) {
  struct fy_update_prefs p = {.mode = mode};
  snprintf(p.channel, sizeof(p.channel), "%s", channel);
  snprintf(p.assigned, sizeof(p.assigned), "%s", assigned);
  snprintf(p.hw_model, sizeof(p.hw_model), "%s", hw);
  return p;
}

static void test_parse(void **state) {
  (void)state;
  enum fy_update_mode m;
  struct fy_err err = {0};
  assert_int_equal(fy_update_mode_parse("latest", &m, &err), 0);
  assert_int_equal(m, FY_UPDATE_LATEST);
  assert_int_equal(fy_update_mode_parse("", &m, &err), 0); /* an agent older than update modes */
  assert_int_equal(m, FY_UPDATE_FOLLOW);
  assert_int_equal(fy_update_mode_parse("frozen", &m, &err), FY_EINVAL);
  assert_string_equal(err.msg, "update mode 'frozen' is none of follow, pinned, assigned, latest");
  for (int i = 0; fy_update_mode_names[i]; i++)
    assert_string_equal(fy_update_mode_name((enum fy_update_mode)i), fy_update_mode_names[i]);

  assert_true(fy_channel_ok("stable"));
  assert_true(fy_channel_ok("edge-2.x_1"));
  assert_false(fy_channel_ok(""));
  assert_false(fy_channel_ok("Beta"));
  assert_false(fy_channel_ok("a b"));
  assert_false(fy_channel_ok("012345678901234567890123456789012")); /* 33 */

  struct fy_assigned a;
  assert_int_equal(fy_assigned_parse("app@1.2.0", &a, &err), 0);
  assert_string_equal(a.name, "app");
  assert_string_equal(a.version, "1.2.0");
  assert_int_equal(fy_assigned_parse("2.0.0-rc.1", &a, &err), 0);
  assert_string_equal(a.name, "");
  assert_string_equal(a.version, "2.0.0-rc.1");
  assert_int_equal(fy_assigned_parse("app@latest", &a, &err), FY_EINVAL);
  assert_non_null(strstr(err.msg, "assigned version 'app@latest'"));
}

static void test_channels(void **state) {
  (void)state;
  struct fy_update_prefs stable = prefs(FY_UPDATE_FOLLOW, "", "", ""),
                         beta = prefs(FY_UPDATE_LATEST, "beta", "", "");
  assert_true(fy_update_in_channel(&stable, ""));
  assert_true(fy_update_in_channel(&stable, "stable")); /* "" is the default channel */
  assert_false(fy_update_in_channel(&stable, "beta"));
  assert_true(fy_update_in_channel(&beta, "beta"));
  assert_true(fy_update_in_channel(&beta, ""));
  assert_false(fy_update_in_channel(&beta, "stable"));
}

static void test_rollout_skips(void **state) {
  (void)state;
  struct fy_manifest m, rpi;
  manifest(&m, "app", "2.0.0", NULL);
  manifest(&rpi, "app", "2.0.0", "rpi4");
  char why[256];
  struct fy_update_prefs p = prefs(FY_UPDATE_FOLLOW, "", "", "");
  assert_false(fy_update_rollout_skips(&p, &m, why, sizeof(why)));
  p = prefs(FY_UPDATE_LATEST, "", "", "rpi4");
  assert_false(fy_update_rollout_skips(&p, &rpi, why, sizeof(why)));
  p = prefs(FY_UPDATE_PINNED, "", "", "");
  assert_true(fy_update_rollout_skips(&p, &m, why, sizeof(why)));
  assert_string_equal(why, "pinned");
  /* assigned agents are brought to their version outside rollouts, even one of the same version */
  p = prefs(FY_UPDATE_ASSIGNED, "", "app@2.0.0", "");
  assert_true(fy_update_rollout_skips(&p, &m, why, sizeof(why)));
  assert_string_equal(why, "assigned app@2.0.0");
  p = prefs(FY_UPDATE_FOLLOW, "", "", "rpi5");
  assert_true(fy_update_rollout_skips(&p, &rpi, why, sizeof(why)));
  assert_string_equal(why, "incompatible: app 2.0.0 is for rpi4; this machine is rpi5");
}

static void test_agent_refuses(void **state) {
  (void)state;
  struct fy_manifest m;
  manifest(&m, "app", "2.0.0", NULL);
  char why[256];
  struct fy_update_prefs follow = prefs(FY_UPDATE_FOLLOW, "", "", "");
  assert_false(fy_update_refuses(&follow, "r1", &m, why, sizeof(why)));
  assert_true(fy_update_refuses(&follow, FY_DELIVERY_LATEST, &m, why, sizeof(why)));
  assert_string_equal(why, "LATEST: a channel release, but this agent's update_mode is follow");
  assert_true(fy_update_refuses(&follow, FY_DELIVERY_ASSIGNED, &m, why, sizeof(why)));
  assert_string_equal(why, "ASSIGNED: an assignment, but this agent's update_mode is follow");

  struct fy_update_prefs pinned = prefs(FY_UPDATE_PINNED, "", "", "");
  assert_true(fy_update_refuses(&pinned, "r1", &m, why, sizeof(why)));
  assert_string_equal(why, "pinned: this agent's update_mode is pinned");

  struct fy_update_prefs latest = prefs(FY_UPDATE_LATEST, "", "", "");
  assert_false(fy_update_refuses(&latest, FY_DELIVERY_LATEST, &m, why, sizeof(why)));
  assert_false(fy_update_refuses(&latest, "r1", &m, why, sizeof(why)));

  struct fy_update_prefs assigned = prefs(FY_UPDATE_ASSIGNED, "", "app@2.0.0", "");
  assert_false(fy_update_refuses(&assigned, FY_DELIVERY_ASSIGNED, &m, why, sizeof(why)));
  assigned = prefs(FY_UPDATE_ASSIGNED, "", "2.0.0", ""); /* any name */
  assert_false(fy_update_refuses(&assigned, FY_DELIVERY_ASSIGNED, &m, why, sizeof(why)));
  assigned = prefs(FY_UPDATE_ASSIGNED, "", "app@1.9.0", "");
  assert_true(fy_update_refuses(&assigned, FY_DELIVERY_ASSIGNED, &m, why, sizeof(why)));
  assert_string_equal(why, "assigned: this agent runs app@1.9.0 only, not app 2.0.0");
  assigned = prefs(FY_UPDATE_ASSIGNED, "", "tool@2.0.0", "");
  assert_true(fy_update_refuses(&assigned, "r1", &m, why, sizeof(why)));
  assert_string_equal(why, "assigned: this agent runs tool@2.0.0 only, not app 2.0.0");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse),
      cmocka_unit_test(test_channels),
      cmocka_unit_test(test_rollout_skips),
      cmocka_unit_test(test_agent_refuses),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
