/* Structured logging: one line per event, key=value fields (logfmt), to a
 * stream (stderr in the applets), so journald and grep both read it.
 *
 *   ts=2026-11-22T01:46:00.123Z level=info applet=agent event=dial.ok peer=ab12…
 *
 * Under systemd (JOURNAL_STREAM set to the stream's device:inode) the ts field
 * is left out, because journald stamps each line itself. Values that contain
 * spaces, quotes, '=' or control characters are quoted and escaped, so a line
 * always splits back into the same fields. A logger is a plain value owned by
 * its applet: no global state. */
#ifndef FY_BASE_LOG_H
#define FY_BASE_LOG_H

#include <stdbool.h>
#include <stdio.h>

enum fy_log_level {
  FY_LOG_DEBUG = 0,
  FY_LOG_INFO = 1,
  FY_LOG_WARN = 2,
  FY_LOG_ERROR = 3,
};

struct fy_log {
  FILE *out;
  enum fy_log_level min_level;
  const char *applet; /* borrowed; printed as applet=... when not NULL */
  bool timestamps;
};

/* journal_stream is the value of $JOURNAL_STREAM (or NULL); timestamps are
 * turned off when it names the same file as out. */
void fy_log_init(struct fy_log *lg, FILE *out, enum fy_log_level min_level, const char *applet,
                 const char *journal_stream);

/* "debug" | "info" | "warn" | "error" -> 0; anything else -> FY_EINVAL. */
int fy_log_level_parse(const char *text, enum fy_log_level *out);
const char *fy_log_level_name(enum fy_log_level level);

/* Writes one event. The variadic part is key, value, key, value, ..., NULL
 * (all const char *; a NULL value prints as key=""). */
void fy_log_kv(const struct fy_log *lg, enum fy_log_level level, const char *event, ...)
    __attribute__((sentinel));

#define fy_debug(lg, ...) fy_log_kv((lg), FY_LOG_DEBUG, __VA_ARGS__, (const char *)0)
#define fy_info(lg, ...) fy_log_kv((lg), FY_LOG_INFO, __VA_ARGS__, (const char *)0)
#define fy_warn(lg, ...) fy_log_kv((lg), FY_LOG_WARN, __VA_ARGS__, (const char *)0)
#define fy_error(lg, ...) fy_log_kv((lg), FY_LOG_ERROR, __VA_ARGS__, (const char *)0)

/* Writes `value` (NULL reads as "") into buf (size cap, NUL-terminated when cap
 * > 0) as a logfmt value, quoted and escaped when needed; returns the length it
 * needed, not counting the NUL (like snprintf). Exposed for tests and for
 * printing single fields in the same syntax. */
size_t fy_log_format_value(char *buf, size_t cap, const char *value);

#endif
