/* How an agent wants to be updated (proto/rollout.md, "Update modes"): the
 * agent's own setting, reported in its facts, and the rules both sides
 * apply to it. The coordinator applies them when it chooses a rollout's
 * agents and when it brings assigned/latest agents to their version; the
 * agent applies them again to every desired state it receives, so a
 * coordinator that gets them wrong cannot move a pinned machine.
 *
 *   follow    installs what rollouts that select it deliver (the default)
 *   pinned    installs nothing; rollouts skip it
 *   assigned  runs one version, named in its own configuration; rollouts
 *             skip it, the coordinator delivers that version to it directly
 *   latest    takes part in rollouts of its channel and, whenever it is
 *             behind, gets its channel's newest released version directly
 *             (an agent enrolled after a rollout catches up at once)
 *
 * A channel is a release train within a tenant ("stable", "beta"): a
 * rollout on a channel selects only that channel's agents, and once it is
 * completed (or partial) its version is the channel's release. */
#ifndef FY_FLEET_UPDATE_MODE_H
#define FY_FLEET_UPDATE_MODE_H

#include <stdbool.h>
#include <stddef.h>

#include "base/err.h"
#include "fleet/manifest.h"
#include "fleet/semver.h"

#define FY_CHANNEL_MAX 32 /* bytes of [a-z0-9._-] */
#define FY_CHANNEL_DEFAULT "stable"
/* "NAME@VERSION" or "VERSION" */
#define FY_ASSIGNED_MAX (FY_MANIFEST_NAME_MAX + 1 + FY_SEMVER_TEXT_MAX)

/* The rollout ids of deliveries outside rollouts. Rollout ids are lower
 * case (coordinator/coord_rollout.c), so these can never name one. */
#define FY_DELIVERY_ASSIGNED "ASSIGNED"
#define FY_DELIVERY_LATEST "LATEST"

enum fy_update_mode {
  FY_UPDATE_FOLLOW,
  FY_UPDATE_PINNED,
  FY_UPDATE_ASSIGNED,
  FY_UPDATE_LATEST,
};
/* NULL-terminated, in enum order (the agent's config choices). */
extern const char *const fy_update_mode_names[];
const char *fy_update_mode_name(enum fy_update_mode m);
/* "" is follow (facts of agents older than update modes). FY_EINVAL names the text. */
int fy_update_mode_parse(const char *text, enum fy_update_mode *out, struct fy_err *err);

/* 1..FY_CHANNEL_MAX of [a-z0-9._-]. */
bool fy_channel_ok(const char *channel);

/* An assigned version: "NAME@VERSION" (name may be empty: any artifact
 * with that version). name gets "" or the name, v the semantic version and
 * version its text. FY_EINVAL naming what is wrong. */
struct fy_assigned {
  char name[FY_MANIFEST_NAME_MAX + 1];
  struct fy_semver v;
  char version[FY_SEMVER_TEXT_MAX + 1];
};
int fy_assigned_parse(const char *text, struct fy_assigned *out, struct fy_err *err);

/* What the rules read of an agent. Strings are NUL-terminated copies. */
struct fy_update_prefs {
  enum fy_update_mode mode;
  char channel[FY_CHANNEL_MAX + 1];
  char assigned[FY_ASSIGNED_MAX + 1]; /* mode assigned only */
  char hw_model[64], hw_revision[64]; /* "" unknown */
};

/* Does a rollout on `channel` ("" none) select this agent at all? A
 * rollout on a channel selects that channel's agents; one without a
 * channel selects every agent its labels match. */
bool fy_update_in_channel(const struct fy_update_prefs *p, const char *channel);

/* Rollout start, for an agent the rollout selects: false when it takes
 * part; true when it is skipped, with the reason in why ("pinned",
 * "assigned app@1.2.0", "incompatible: ..."). m is the rollout's manifest. */
bool fy_update_rollout_skips(const struct fy_update_prefs *p, const struct fy_manifest *m, char *why,
                             size_t why_size);

/* The agent, on a desired state with rollout id `delivery` of manifest m:
 * false when its mode takes it; true with the refusal in why otherwise. */
bool fy_update_refuses(const struct fy_update_prefs *p, const char *delivery, const struct fy_manifest *m,
                       char *why, size_t why_size);

#endif
