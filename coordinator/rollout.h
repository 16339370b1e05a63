/* Staged rollouts: how a rollout's agents are split into waves, and the
 * policy that decides, from a wave's per-agent outcomes, whether to wait,
 * advance or stop (learned from hawkBit's rollout groups and XDP47's
 * policies). Pure functions: the coordinator's store-backed driver feeds
 * them counts and clocks, so every rule is tested here without a fleet.
 *
 * Success means "activated and healthy", never "downloaded": only an
 * agent's success report counts. A wave is over when every one of its
 * agents has a final outcome (success, failed, rolled back, timed out,
 * skipped). The failure threshold is checked as outcomes arrive, so a
 * wave that has already failed too often stops the rollout without
 * waiting for its stragglers, and no later wave starts. */
#ifndef FY_COORDINATOR_ROLLOUT_H
#define FY_COORDINATOR_ROLLOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

#define FY_WAVES_MAX 32
#define FY_PERMILLE 1000

enum fy_rollout_state {
  FY_ROLLOUT_DRAFT,
  FY_ROLLOUT_RUNNING,
  FY_ROLLOUT_PAUSED,
  FY_ROLLOUT_COMPLETED, /* every wave done, every eligible agent succeeded */
  FY_ROLLOUT_PARTIAL,   /* every wave done within the thresholds, some agents did not succeed */
  FY_ROLLOUT_FAILED,    /* a wave broke the policy; later waves never started */
  FY_ROLLOUT_ABORTED,   /* an admin stopped it */
};
const char *fy_rollout_state_name(enum fy_rollout_state s);
int fy_rollout_state_parse(const char *text, enum fy_rollout_state *out);
/* May an admin's command move a rollout from `from` with `cmd` ("start",
 * "pause", "resume", "abort", "retry")? 0 and *to, or FY_EINVAL naming the
 * state it is in. retry is for failed and partial rollouts (failed agents only). */
int fy_rollout_command(enum fy_rollout_state from, const char *cmd, enum fy_rollout_state *to,
                       struct fy_err *err);

/* One agent's outcome within its wave. */
enum fy_target_state {
  FY_TARGET_WAITING,     /* its wave has not started */
  FY_TARGET_SENT,        /* desired state queued to it; no report yet */
  FY_TARGET_WORKING,     /* reported progress (downloading, activating, verifying) */
  FY_TARGET_SUCCESS,     /* activated and healthy */
  FY_TARGET_FAILED,      /* failed and could not roll back, or refused the manifest */
  FY_TARGET_ROLLED_BACK, /* failed its health check or activation and rolled back */
  FY_TARGET_TIMED_OUT,   /* silent past the policy's action timeout */
  FY_TARGET_SKIPPED,     /* offline at wave start (skip_offline), incompatible, or pinned */
};
const char *fy_target_state_name(enum fy_target_state s);
bool fy_target_is_final(enum fy_target_state s);
bool fy_target_is_failure(enum fy_target_state s); /* failed, rolled back, timed out */

/* How agents are split: `count` equal waves, or cumulative percentages
 * ("10,50,100": the first 10 % of agents, then up to 50 %, then the rest). */
struct fy_wave_spec {
  uint32_t count;                 /* > 0: this many waves of (nearly) equal size */
  uint32_t percent[FY_WAVES_MAX]; /* otherwise: cumulative, increasing, the last 100 */
  size_t npercent;
};
/* "3" or "10,50,100" -> spec; errors name the offending part. */
int fy_wave_spec_parse(const char *text, struct fy_wave_spec *out, struct fy_err *err);

/* Splits nagents (in a stable order chosen by the caller) into waves:
 * sizes[i] agents in wave i, returns the number of waves (<= max). No wave
 * is empty: with fewer agents than waves, the waves shrink in number; a
 * percentage that rounds to nothing still gets one agent. 0 agents: 0 waves. */
size_t fy_waves_split(size_t nagents, const struct fy_wave_spec *spec, size_t *sizes, size_t max);

struct fy_rollout_policy {
  uint64_t grace_ms; /* pause between a wave's end and the next wave's start */
  uint32_t
      min_success_permille; /* a wave must reach this success ratio to advance (of its non-skipped agents) */
  uint32_t max_failures;    /* failures a wave tolerates; more fail the rollout; UINT32_MAX: any */
  bool skip_offline;        /* agents offline at wave start are skipped, not waited for */
  bool abort_on_zero_eligible; /* a rollout that selects no agent fails at start instead of completing */
  uint64_t action_timeout_ms;  /* an agent silent this long after its wave started times out; 0: never */
};
/* Defaults: grace 0, min success 100 %, max failures 0, skip offline,
 * abort on zero eligible, action timeout 10 min. */
void fy_rollout_policy_default(struct fy_rollout_policy *p);

struct fy_wave_counts {
  uint32_t total, waiting, sent, working, success, failed, rolled_back, timed_out, skipped;
};
void fy_wave_counts_add(struct fy_wave_counts *c, enum fy_target_state s);

enum fy_wave_verdict {
  FY_WAVE_WAIT,    /* outcomes missing, or inside the grace period */
  FY_WAVE_ADVANCE, /* start the next wave (or finish the rollout) */
  FY_WAVE_FAIL,    /* the policy is broken: the rollout fails */
};
/* The verdict for a wave given its counts. done_at is when its last
 * outcome arrived (0 while outcomes are missing); now the clock. *why
 * (may be NULL) says which rule decided ("3 failures, more than the 1
 * allowed"; "success 60.0 % below the 80.0 % required"). */
enum fy_wave_verdict fy_wave_evaluate(const struct fy_wave_counts *c, const struct fy_rollout_policy *p,
                                      uint64_t done_at, uint64_t now, char *why, size_t why_size);

/* The rollout's final state once its last wave advanced: completed when
 * every non-skipped agent of every wave succeeded, partial otherwise. */
enum fy_rollout_state fy_rollout_final_state(const struct fy_wave_counts *all);

#endif
