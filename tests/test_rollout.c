/* Waves and the rollout policy: how agents split into waves, when a wave
 * advances, waits or fails the rollout, and which admin commands apply in
 * which state. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "coordinator/rollout.h"

static size_t split(size_t n, const char *spec_text, size_t *sizes) {
  struct fy_wave_spec spec;
  assert_int_equal(fy_wave_spec_parse(spec_text, &spec, NULL), 0);
  return fy_waves_split(n, &spec, sizes, FY_WAVES_MAX);
}

static void test_split_by_count(void **state) {
  (void)state;
  size_t s[FY_WAVES_MAX];
  assert_int_equal(split(10, "3", s), 3);
  assert_int_equal(s[0], 4); /* the remainder goes first */
  assert_int_equal(s[1], 3);
  assert_int_equal(s[2], 3);
  assert_int_equal(split(2, "3", s), 2); /* never an empty wave */
  assert_int_equal(s[0] + s[1], 2);
  assert_int_equal(split(0, "3", s), 0);
  assert_int_equal(split(1000, "1", s), 1);
  assert_int_equal(s[0], 1000);
}

static void test_split_by_percentages(void **state) {
  (void)state;
  size_t s[FY_WAVES_MAX];
  assert_int_equal(split(1000, "1,10,100", s), 3);
  assert_int_equal(s[0], 10);
  assert_int_equal(s[1], 90);
  assert_int_equal(s[2], 900);
  /* a canary of 1 % of 5 agents is still one agent */
  assert_int_equal(split(5, "1,50,100", s), 3);
  assert_int_equal(s[0], 1);
  assert_int_equal(s[1], 2);
  assert_int_equal(s[2], 2);
  /* more waves than agents: the waves shrink in number, every agent placed once */
  size_t n = split(2, "10,20,30,100", s), total = 0;
  for (size_t i = 0; i < n; i++) {
    assert_true(s[i] > 0);
    total += s[i];
  }
  assert_int_equal(total, 2);
}

static void test_wave_spec_errors(void **state) {
  (void)state;
  struct fy_wave_spec spec;
  struct fy_err err = {0};
  assert_int_equal(fy_wave_spec_parse("0", &spec, &err), FY_EINVAL);
  assert_int_equal(fy_wave_spec_parse("33", &spec, &err), FY_EINVAL);
  assert_int_equal(fy_wave_spec_parse("50,10,100", &spec, &err), FY_EINVAL);
  assert_non_null(strstr(err.msg, "must increase"));
  assert_int_equal(fy_wave_spec_parse("10,50", &spec, &err), FY_EINVAL);
  assert_non_null(strstr(err.msg, "reach 100"));
  assert_int_equal(fy_wave_spec_parse("10,x,100", &spec, &err), FY_EINVAL);
  assert_non_null(strstr(err.msg, "part 2"));
  assert_int_equal(fy_wave_spec_parse("10%,50%,100%", &spec, &err), 0);
  assert_int_equal(spec.npercent, 3);
}

static struct fy_wave_counts counts(uint32_t open, uint32_t success, uint32_t failed, uint32_t rolled_back,
                                    uint32_t skipped) {
  struct fy_wave_counts c = {0};
  for (uint32_t i = 0; i < open; i++)
    fy_wave_counts_add(&c, FY_TARGET_SENT);
  for (uint32_t i = 0; i < success; i++)
    fy_wave_counts_add(&c, FY_TARGET_SUCCESS);
  for (uint32_t i = 0; i < failed; i++)
    fy_wave_counts_add(&c, FY_TARGET_FAILED);
  for (uint32_t i = 0; i < rolled_back; i++)
    fy_wave_counts_add(&c, FY_TARGET_ROLLED_BACK);
  for (uint32_t i = 0; i < skipped; i++)
    fy_wave_counts_add(&c, FY_TARGET_SKIPPED);
  return c;
}

static void test_wave_waits_then_advances_after_grace(void **state) {
  (void)state;
  struct fy_rollout_policy p;
  fy_rollout_policy_default(&p);
  p.grace_ms = 5000;
  char why[128];
  struct fy_wave_counts c = counts(2, 3, 0, 0, 0);
  assert_int_equal(fy_wave_evaluate(&c, &p, 0, 1000, why, sizeof(why)), FY_WAVE_WAIT);
  assert_non_null(strstr(why, "2 of 5 agents still working"));
  c = counts(0, 5, 0, 0, 0);
  assert_int_equal(fy_wave_evaluate(&c, &p, 1000, 3000, why, sizeof(why)), FY_WAVE_WAIT);
  assert_non_null(strstr(why, "grace"));
  assert_int_equal(fy_wave_evaluate(&c, &p, 1000, 6000, why, sizeof(why)), FY_WAVE_ADVANCE);
}

static void test_failure_threshold_fails_at_once(void **state) {
  (void)state;
  struct fy_rollout_policy p;
  fy_rollout_policy_default(&p);
  p.max_failures = 1;
  p.min_success_permille = 0;
  char why[128];
  /* one failure is tolerated while others still work */
  struct fy_wave_counts c = counts(3, 0, 0, 1, 0);
  assert_int_equal(fy_wave_evaluate(&c, &p, 0, 0, why, sizeof(why)), FY_WAVE_WAIT);
  /* the second fails the rollout without waiting for the stragglers */
  c = counts(2, 0, 1, 1, 0);
  assert_int_equal(fy_wave_evaluate(&c, &p, 0, 0, why, sizeof(why)), FY_WAVE_FAIL);
  assert_non_null(strstr(why, "2 failures, more than the 1 allowed"));
}

static void test_success_ratio(void **state) {
  (void)state;
  struct fy_rollout_policy p;
  fy_rollout_policy_default(&p);
  p.max_failures = UINT32_MAX;
  p.min_success_permille = 800;
  char why[128];
  /* 4 of 5 is 80 %: enough; skipped agents do not count against it */
  struct fy_wave_counts c = counts(0, 4, 1, 0, 3);
  assert_int_equal(fy_wave_evaluate(&c, &p, 1, 1, why, sizeof(why)), FY_WAVE_ADVANCE);
  /* 3 of 5 can never reach 80 %, even before the last one reports */
  c = counts(1, 2, 2, 0, 0);
  assert_int_equal(fy_wave_evaluate(&c, &p, 0, 1, why, sizeof(why)), FY_WAVE_FAIL);
  assert_non_null(strstr(why, "80.0 %"));
  /* a wave whose agents were all skipped (offline) advances */
  c = counts(0, 0, 0, 0, 4);
  assert_int_equal(fy_wave_evaluate(&c, &p, 1, 1, why, sizeof(why)), FY_WAVE_ADVANCE);
}

static void test_final_state(void **state) {
  (void)state;
  struct fy_wave_counts all = counts(0, 5, 0, 0, 2);
  assert_int_equal(fy_rollout_final_state(&all), FY_ROLLOUT_COMPLETED);
  all = counts(0, 5, 0, 1, 0);
  assert_int_equal(fy_rollout_final_state(&all), FY_ROLLOUT_PARTIAL);
}

static void test_commands_by_state(void **state) {
  (void)state;
  enum fy_rollout_state to;
  struct fy_err err = {0};
  assert_int_equal(fy_rollout_command(FY_ROLLOUT_DRAFT, "start", &to, &err), 0);
  assert_int_equal(to, FY_ROLLOUT_RUNNING);
  assert_int_equal(fy_rollout_command(FY_ROLLOUT_RUNNING, "pause", &to, &err), 0);
  assert_int_equal(to, FY_ROLLOUT_PAUSED);
  assert_int_equal(fy_rollout_command(FY_ROLLOUT_PAUSED, "resume", &to, &err), 0);
  assert_int_equal(fy_rollout_command(FY_ROLLOUT_FAILED, "retry", &to, &err), 0);
  assert_int_equal(to, FY_ROLLOUT_RUNNING);
  assert_int_equal(fy_rollout_command(FY_ROLLOUT_COMPLETED, "retry", &to, &err), FY_EINVAL);
  assert_non_null(strstr(err.msg, "cannot retry a rollout that is completed"));
  assert_int_equal(fy_rollout_command(FY_ROLLOUT_ABORTED, "resume", &to, &err), FY_EINVAL);
  assert_int_equal(fy_rollout_command(FY_ROLLOUT_RUNNING, "launch", &to, &err), FY_EINVAL);
  assert_non_null(strstr(err.msg, "unknown rollout command"));
  enum fy_rollout_state parsed;
  assert_int_equal(fy_rollout_state_parse("partial", &parsed), 0);
  assert_int_equal(parsed, FY_ROLLOUT_PARTIAL);
  assert_string_equal(fy_rollout_state_name(FY_ROLLOUT_ABORTED), "aborted");
  assert_string_equal(fy_target_state_name(FY_TARGET_ROLLED_BACK), "rolled_back");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_split_by_count),
      cmocka_unit_test(test_split_by_percentages),
      cmocka_unit_test(test_wave_spec_errors),
      cmocka_unit_test(test_wave_waits_then_advances_after_grace),
      cmocka_unit_test(test_failure_threshold_fails_at_once),
      cmocka_unit_test(test_success_ratio),
      cmocka_unit_test(test_final_state),
      cmocka_unit_test(test_commands_by_state),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
