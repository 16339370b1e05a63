#include "fleet/update_mode.h"

#include <stdio.h>
#include <string.h>

const char *const fy_update_mode_names[] = {"follow", "pinned", "assigned", "latest", NULL};

const char *fy_update_mode_name(enum fy_update_mode m) {
  return (unsigned)m <= FY_UPDATE_LATEST ? fy_update_mode_names[m] : "?";
}

int fy_update_mode_parse(const char *text, enum fy_update_mode *out, struct fy_err *err) {
  if (!text[0]) {
    *out = FY_UPDATE_FOLLOW;
    return 0;
  }
  for (int i = 0; fy_update_mode_names[i]; i++)
    if (strcmp(text, fy_update_mode_names[i]) == 0) {
      *out = (enum fy_update_mode)i;
      return 0;
    }
  return fy_err_set(err, FY_EINVAL, "update mode '%.32s' is none of follow, pinned, assigned, latest", text);
}

bool fy_channel_ok(const char *channel) {
  size_t n = strlen(channel);
  if (n == 0 || n > FY_CHANNEL_MAX)
    return false;
  for (size_t i = 0; i < n; i++) {
    char ch = channel[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-'))
      return false;
  }
  return true;
}

int fy_assigned_parse(const char *text, struct fy_assigned *out, struct fy_err *err) {
  memset(out, 0, sizeof(*out));
  const char *at = strrchr(text, '@'), *version = at ? at + 1 : text;
  size_t nn = at ? (size_t)(at - text) : 0;
  if (nn > FY_MANIFEST_NAME_MAX)
    return fy_err_set(err, FY_EINVAL, "assigned version: the name is longer than %d bytes",
                      FY_MANIFEST_NAME_MAX);
  if (fy_semver_parse(version, &out->v, err) < 0)
    return fy_err_prefix(err, "assigned version '%.80s'", text);
  memcpy(out->name, text, nn);
  fy_semver_format(&out->v, out->version, sizeof(out->version));
  return 0;
}

bool fy_update_in_channel(const struct fy_update_prefs *p, const char *channel) {
  if (!channel[0])
    return true;
  return strcmp(p->channel[0] ? p->channel : FY_CHANNEL_DEFAULT, channel) == 0;
}

/* Is m the agent's assigned artifact? (An unparseable assignment matches nothing.) */
static bool is_assigned(const struct fy_update_prefs *p, const struct fy_manifest *m) {
  struct fy_assigned a;
  if (fy_assigned_parse(p->assigned, &a, NULL) < 0)
    return false;
  return (!a.name[0] || strcmp(a.name, m->name) == 0) && fy_semver_cmp(&a.v, &m->version) == 0;
}

bool fy_update_rollout_skips(const struct fy_update_prefs *p, const struct fy_manifest *m, char *why,
                             size_t why_size) {
  struct fy_err err = {0};
  if (p->mode == FY_UPDATE_PINNED) {
    snprintf(why, why_size, "pinned");
  } else if (p->mode == FY_UPDATE_ASSIGNED) {
    /* Its assignment brings it there, outside any rollout. */
    snprintf(why, why_size, "assigned %.160s", p->assigned);
  } else if (fy_manifest_check_compatible(m, p->hw_model, p->hw_revision, &err) < 0) {
    snprintf(why, why_size, "%s", err.msg);
  } else {
    return false;
  }
  return true;
}

bool fy_update_refuses(const struct fy_update_prefs *p, const char *delivery, const struct fy_manifest *m,
                       char *why, size_t why_size) {
  bool assigned = strcmp(delivery, FY_DELIVERY_ASSIGNED) == 0,
       latest = strcmp(delivery, FY_DELIVERY_LATEST) == 0;
  const char *mode = fy_update_mode_name(p->mode);
  if (p->mode == FY_UPDATE_PINNED)
    snprintf(why, why_size, "pinned: this agent's update_mode is pinned");
  else if (p->mode == FY_UPDATE_ASSIGNED && !is_assigned(p, m))
    snprintf(why, why_size, "assigned: this agent runs %.160s only, not %s %s", p->assigned, m->name,
             m->version_text);
  else if (assigned && p->mode != FY_UPDATE_ASSIGNED)
    snprintf(why, why_size, "%s: an assignment, but this agent's update_mode is %s", delivery, mode);
  else if (latest && p->mode != FY_UPDATE_LATEST)
    snprintf(why, why_size, "%s: a channel release, but this agent's update_mode is %s", delivery, mode);
  else
    return false;
  return true;
}
