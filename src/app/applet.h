/* The applet table and the start-up every applet shares.
 *
 * `ferry <applet> [args]` dispatches through one table (as BusyBox does). Each
 * applet loads its configuration through fy_applet_start, which handles
 * --help, --print-config and --log-level the same way everywhere. */
#ifndef FY_APP_APPLET_H
#define FY_APP_APPLET_H

#include <stdio.h>

#include "base/config.h"
#include "base/log.h"

/* Exit statuses scripts can rely on (sysexits-style where one fits). */
enum fy_exit {
  FY_EXIT_OK = 0,
  FY_EXIT_FAIL = 1,      /* the operation failed; stderr says why */
  FY_EXIT_USAGE = 2,     /* bad command line or configuration */
  FY_EXIT_NOTBUILT = 69, /* EX_UNAVAILABLE: the applet is designed but not built yet */
};

/* What the process hands to an applet; applets use these instead of the
 * process globals, so tests can drive them. */
struct fy_proc {
  char *const *envp;
  FILE *out;
  FILE *errout;
};

struct fy_applet {
  const char *name;
  const char *summary;
  int (*run)(int argc, char **argv, const struct fy_proc *proc);
};

/* The applets in `ferry help` order. */
extern const struct fy_applet fy_applets[];
extern const size_t fy_applets_count;

const struct fy_applet *fy_applet_find(const char *name);

/* Runs argv[1..] as an applet, or prints top-level help; returns an exit status. */
int fy_main(int argc, char **argv, const struct fy_proc *proc);

/* Loads configuration for an applet or subcommand and sets up its logger.
 * Returns -1 when the applet should go on, otherwise the exit status to return
 * right away (help or config printed: 0; bad usage: 2, message printed).
 * `name` is what help and errors show ("key generate"). */
int fy_applet_start(struct fy_cfg *cfg, struct fy_log *lg, const struct fy_proc *proc, const char *applet,
                    const char *name, const struct fy_cfg_key *keys, size_t nkeys, int argc, char **argv,
                    const char *synopsis, const char *description);

/* One line "ferry <name>: <message>" on errout; returns status. */
int fy_applet_fail(const struct fy_proc *proc, const char *name, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* For applets that exist in the design but not yet in code: a plain statement
 * on stderr and FY_EXIT_NOTBUILT. */
int fy_applet_not_built(const struct fy_proc *proc, const char *name, const char *what);

/* The whole body of an applet that is designed but not built: its
 * configuration loads and checks (so --help and --print-config are true),
 * then it says plainly that it does not run yet. */
int fy_applet_planned(int argc, char **argv, const struct fy_proc *proc, const char *applet,
                      const struct fy_cfg_key *keys, size_t nkeys, const char *synopsis,
                      const char *description, const char *missing);

/* Applet entry points (one per applet file). */
int fy_coordinator_main(int argc, char **argv, const struct fy_proc *proc);
int fy_agent_main(int argc, char **argv, const struct fy_proc *proc);
int fy_admin_main(int argc, char **argv, const struct fy_proc *proc);
int fy_relay_main(int argc, char **argv, const struct fy_proc *proc);
int fy_key_main(int argc, char **argv, const struct fy_proc *proc);
int fy_version_main(int argc, char **argv, const struct fy_proc *proc);

#endif
