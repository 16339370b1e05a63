#include "coordinator/rollout.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/cleanup.h"

static const char *const rollout_names[] = {
    [FY_ROLLOUT_DRAFT] = "draft",         [FY_ROLLOUT_RUNNING] = "running", [FY_ROLLOUT_PAUSED] = "paused",
    [FY_ROLLOUT_COMPLETED] = "completed", [FY_ROLLOUT_PARTIAL] = "partial", [FY_ROLLOUT_FAILED] = "failed",
    [FY_ROLLOUT_ABORTED] = "aborted",
};

const char *fy_rollout_state_name(enum fy_rollout_state s) {
  return (size_t)s < FY_ARRAY_LEN(rollout_names) ? rollout_names[s] : "unknown";
}

int fy_rollout_state_parse(const char *text, enum fy_rollout_state *out) {
  for (size_t i = 0; i < FY_ARRAY_LEN(rollout_names); i++)
    if (strcmp(text, rollout_names[i]) == 0) {
      *out = (enum fy_rollout_state)i;
      return 0;
    }
  return FY_EINVAL;
}

int fy_rollout_command(enum fy_rollout_state from, const char *cmd, enum fy_rollout_state *to,
                       struct fy_err *err) {
  static const struct {
    const char *cmd;
    enum fy_rollout_state from, to;
  } moves[] = {
      {"start", FY_ROLLOUT_DRAFT, FY_ROLLOUT_RUNNING},   {"pause", FY_ROLLOUT_RUNNING, FY_ROLLOUT_PAUSED},
      {"resume", FY_ROLLOUT_PAUSED, FY_ROLLOUT_RUNNING}, {"abort", FY_ROLLOUT_DRAFT, FY_ROLLOUT_ABORTED},
      {"abort", FY_ROLLOUT_RUNNING, FY_ROLLOUT_ABORTED}, {"abort", FY_ROLLOUT_PAUSED, FY_ROLLOUT_ABORTED},
      {"retry", FY_ROLLOUT_FAILED, FY_ROLLOUT_RUNNING},  {"retry", FY_ROLLOUT_PARTIAL, FY_ROLLOUT_RUNNING},
  };
  bool known = false;
  for (size_t i = 0; i < FY_ARRAY_LEN(moves); i++) {
    if (strcmp(moves[i].cmd, cmd) != 0)
      continue;
    known = true;
    if (moves[i].from == from) {
      *to = moves[i].to;
      return 0;
    }
  }
  if (!known)
    return fy_err_set(err, FY_EINVAL, "unknown rollout command '%.32s' (start, pause, resume, abort, retry)",
                      cmd);
  return fy_err_set(err, FY_EINVAL, "cannot %s a rollout that is %s", cmd, fy_rollout_state_name(from));
}

static const char *const target_names[] = {
    [FY_TARGET_WAITING] = "waiting",     [FY_TARGET_SENT] = "sent",
    [FY_TARGET_WORKING] = "working",     [FY_TARGET_SUCCESS] = "success",
    [FY_TARGET_FAILED] = "failed",       [FY_TARGET_ROLLED_BACK] = "rolled_back",
    [FY_TARGET_TIMED_OUT] = "timed_out", [FY_TARGET_SKIPPED] = "skipped",
};

const char *fy_target_state_name(enum fy_target_state s) {
  return (size_t)s < FY_ARRAY_LEN(target_names) ? target_names[s] : "unknown";
}

bool fy_target_is_final(enum fy_target_state s) {
  return s >= FY_TARGET_SUCCESS;
}

bool fy_target_is_failure(enum fy_target_state s) {
  return s == FY_TARGET_FAILED || s == FY_TARGET_ROLLED_BACK || s == FY_TARGET_TIMED_OUT;
}

int fy_wave_spec_parse(const char *text, struct fy_wave_spec *out, struct fy_err *err) {
  memset(out, 0, sizeof(*out));
  if (!strchr(text, ',') && !strchr(text, '%')) {
    char *end;
    errno = 0;
    unsigned long n = strtoul(text, &end, 10);
    if (errno || end == text || *end || n == 0 || n > FY_WAVES_MAX || text[0] == '-')
      return fy_err_set(err, FY_EINVAL,
                        "waves '%.64s': give a count from 1 to %d, or cumulative percentages "
                        "like 10,50,100",
                        text, FY_WAVES_MAX);
    out->count = (uint32_t)n;
    return 0;
  }
  const char *p = text;
  uint32_t last = 0;
  for (;;) {
    char *end;
    errno = 0;
    unsigned long v = strtoul(p, &end, 10);
    if (errno || end == p || *p == '-' || v == 0 || v > 100)
      return fy_err_set(err, FY_EINVAL, "waves '%.64s': part %zu is not a percentage from 1 to 100", text,
                        out->npercent + 1);
    if (*end == '%')
      end++;
    if (v <= last)
      return fy_err_set(err, FY_EINVAL, "waves '%.64s': percentages must increase (%lu after %u)", text, v,
                        last);
    if (out->npercent == FY_WAVES_MAX)
      return fy_err_set(err, FY_EINVAL, "waves '%.64s': more than %d waves", text, FY_WAVES_MAX);
    out->percent[out->npercent++] = (uint32_t)v;
    last = (uint32_t)v;
    if (*end == '\0')
      break;
    if (*end != ',')
      return fy_err_set(err, FY_EINVAL, "waves '%.64s': unexpected '%c' after part %zu", text, *end,
                        out->npercent);
    p = end + 1;
  }
  if (last != 100)
    return fy_err_set(err, FY_EINVAL, "waves '%.64s': the last wave must reach 100 %%, not %u %%", text,
                      last);
  return 0;
}

size_t fy_waves_split(size_t nagents, const struct fy_wave_spec *spec, size_t *sizes, size_t max) {
  size_t nwaves = 0, given = 0;
  if (nagents == 0 || max == 0)
    return 0;
  if (spec->count) {
    size_t waves = spec->count < max ? spec->count : max;
    if (waves > nagents)
      waves = nagents;
    /* The first waves take the remainder: the canaries are never smaller. */
    for (size_t i = 0; i < waves; i++)
      sizes[i] = nagents / waves + (i < nagents % waves);
    return waves;
  }
  for (size_t i = 0; i < spec->npercent && nwaves < max && given < nagents; i++) {
    /* Cumulative target, rounded up so a small first percentage still gets one agent. */
    size_t upto = (nagents * spec->percent[i] + 99) / 100;
    if (upto <= given)
      upto = given + 1;
    if (upto > nagents || i + 1 == spec->npercent || nwaves + 1 == max)
      upto = nagents;
    sizes[nwaves++] = upto - given;
    given = upto;
  }
  return nwaves;
}

void fy_rollout_policy_default(struct fy_rollout_policy *p) {
  *p = (struct fy_rollout_policy){.grace_ms = 0,
                                  .min_success_permille = FY_PERMILLE,
                                  .max_failures = 0,
                                  .skip_offline = true,
                                  .abort_on_zero_eligible = true,
                                  .action_timeout_ms = 600000};
}

void fy_wave_counts_add(struct fy_wave_counts *c, enum fy_target_state s) {
  c->total++;
  switch (s) {
  case FY_TARGET_WAITING:
    c->waiting++;
    break;
  case FY_TARGET_SENT:
    c->sent++;
    break;
  case FY_TARGET_WORKING:
    c->working++;
    break;
  case FY_TARGET_SUCCESS:
    c->success++;
    break;
  case FY_TARGET_FAILED:
    c->failed++;
    break;
  case FY_TARGET_ROLLED_BACK:
    c->rolled_back++;
    break;
  case FY_TARGET_TIMED_OUT:
    c->timed_out++;
    break;
  case FY_TARGET_SKIPPED:
    c->skipped++;
    break;
  }
}

enum fy_wave_verdict fy_wave_evaluate(const struct fy_wave_counts *c, const struct fy_rollout_policy *p,
                                      uint64_t done_at, uint64_t now, char *why, size_t why_size) {
  char scratch[1];
  if (!why) {
    why = scratch;
    why_size = sizeof(scratch);
  }
  why[0] = '\0';
  uint32_t failures = c->failed + c->rolled_back + c->timed_out;
  if (p->max_failures != UINT32_MAX && failures > p->max_failures) {
    snprintf(why, why_size, "%u failure%s, more than the %u allowed", failures, failures == 1 ? "" : "s",
             p->max_failures);
    return FY_WAVE_FAIL;
  }
  uint32_t open = c->waiting + c->sent + c->working;
  uint32_t eligible = c->total - c->skipped;
  /* Fail early when the ratio is out of reach even if every open agent succeeds. */
  uint64_t best = (uint64_t)(c->success + open) * FY_PERMILLE;
  if (eligible && best < (uint64_t)p->min_success_permille * eligible) {
    snprintf(why, why_size, "success cannot reach %u.%u %% (%u of %u at best)", p->min_success_permille / 10,
             p->min_success_permille % 10, c->success + open, eligible);
    return FY_WAVE_FAIL;
  }
  if (open) {
    snprintf(why, why_size, "%u of %u agents still working", open, c->total);
    return FY_WAVE_WAIT;
  }
  if (now < done_at + p->grace_ms) {
    snprintf(why, why_size, "grace period: %llu ms left", (unsigned long long)(done_at + p->grace_ms - now));
    return FY_WAVE_WAIT;
  }
  snprintf(why, why_size, "%u of %u succeeded", c->success, eligible);
  return FY_WAVE_ADVANCE;
}

enum fy_rollout_state fy_rollout_final_state(const struct fy_wave_counts *all) {
  return all->success == all->total - all->skipped ? FY_ROLLOUT_COMPLETED : FY_ROLLOUT_PARTIAL;
}
