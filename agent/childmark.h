/* A mark that a spawned process group is running, which outlives the
 * process that spawned it.
 *
 * The apply engine runs appliers in their own process group, so an applier
 * survives an agent that crashed or was killed while it ran. The restarted
 * agent must not run the health check or a rollback beside an activation
 * still in progress. The mark is a small file naming the group leader's
 * pid, its start time and the boot id: a pid reused by another process, or
 * a mark left from before a reboot, is told apart and ignored.
 *
 * The file is written without fsync on purpose: it matters only while the
 * machine stays up, and then the page cache keeps it across the agent's
 * crash. Linux only (/proc). */
#ifndef FY_AGENT_CHILDMARK_H
#define FY_AGENT_CHILDMARK_H

#include <sys/types.h>

#include "base/err.h"

/* Marks pid (a process group leader) as running, replacing any mark at
 * path. FY_EIO/FY_ENOENT... with the path named when the file cannot be
 * written or the process is gone already. */
int fy_childmark_write(const char *path, pid_t pid, struct fy_err *err);

/* 1 and *pid when the marked process is still the one that was marked and
 * is alive (a zombie counts as gone); 0 when there is no mark, or it names a
 * process that is gone, another process or another boot (such a mark is
 * removed); < 0 when the mark cannot be read. A damaged mark counts as gone
 * and is removed. */
int fy_childmark_running(const char *path, pid_t *pid, struct fy_err *err);

/* Removes the mark; a missing one is fine. */
void fy_childmark_clear(const char *path);

#endif
