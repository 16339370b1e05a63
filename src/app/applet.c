#include "app/applet.h"

#include <stdarg.h>
#include <string.h>

#include "base/cleanup.h"
#include "fy_config.h"

static int help_main(int argc, char **argv, const struct fy_proc *proc);

const struct fy_applet fy_applets[] = {
    {"coordinator", "the fleet's memory: enrolled agents, facts, artifacts, rollouts", fy_coordinator_main},
    {"agent", "runs on each managed machine: dials out, reports facts, applies updates", fy_agent_main},
    {"admin", "signs commands (enroll, approve, rollout, ...) and queues them", fy_admin_main},
    {"relay", "forwards end-to-end encrypted packets between nodes behind NAT", fy_relay_main},
    {"key", "generates and shows node keys (ed25519, OpenSSH format)", fy_key_main},
    {"version", "prints the version and the pinned library versions", fy_version_main},
    {"help", "lists the applets, or shows one applet's help", help_main},
};
const size_t fy_applets_count = FY_ARRAY_LEN(fy_applets);

const struct fy_applet *fy_applet_find(const char *name) {
  for (size_t i = 0; i < fy_applets_count; i++)
    if (strcmp(fy_applets[i].name, name) == 0)
      return &fy_applets[i];
  return NULL;
}

static void print_overview(FILE *out) {
  fprintf(out, "usage: ferry <applet> [flags] [args]\n\n"
               "ferry rolls software out to fleets of machines in staged waves.\n\n"
               "applets:\n");
  for (size_t i = 0; i < fy_applets_count; i++)
    fprintf(out, "  %-12s %s\n", fy_applets[i].name, fy_applets[i].summary);
  fprintf(out, "\n`ferry <applet> --help` shows an applet's flags; "
               "`ferry <applet> --print-config` its effective configuration.\n");
}

static int help_main(int argc, char **argv, const struct fy_proc *proc) {
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    print_overview(proc->out);
    return FY_EXIT_OK;
  }
  const struct fy_applet *a = fy_applet_find(argv[1]);
  if (!a)
    return fy_applet_fail(proc, "help", FY_EXIT_USAGE, "unknown applet '%s' (see ferry help)", argv[1]);
  char help_flag[] = "--help";
  char *help_argv[] = {argv[1], help_flag, NULL};
  return a->run(2, help_argv, proc);
}

int fy_main(int argc, char **argv, const struct fy_proc *proc) {
  if (argc < 2) {
    print_overview(proc->errout);
    return FY_EXIT_USAGE;
  }
  const char *name = argv[1];
  if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0)
    name = "help";
  else if (strcmp(name, "--version") == 0)
    name = "version";
  else if (name[0] == '-')
    return fy_applet_fail(proc, "ferry", FY_EXIT_USAGE, "unknown flag %s (see ferry help)", name);
  const struct fy_applet *a = fy_applet_find(name);
  if (!a)
    return fy_applet_fail(proc, "ferry", FY_EXIT_USAGE, "unknown applet '%s' (see ferry help)", name);
  return a->run(argc - 1, argv + 1, proc);
}

int fy_applet_fail(const struct fy_proc *proc, const char *name, int status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  if (strcmp(name, "ferry") == 0)
    fputs("ferry: ", proc->errout);
  else
    fprintf(proc->errout, "ferry %s: ", name);
  vfprintf(proc->errout, fmt, ap);
  fputc('\n', proc->errout);
  va_end(ap);
  return status;
}

int fy_applet_not_built(const struct fy_proc *proc, const char *name, const char *what) {
  return fy_applet_fail(proc, name, FY_EXIT_NOTBUILT,
                        "not built yet: %s. Its configuration is checked (--print-config) "
                        "but it does not run in this version.",
                        what);
}

int fy_applet_start(struct fy_cfg *cfg, struct fy_log *lg, const struct fy_proc *proc, const char *applet,
                    const char *name, const struct fy_cfg_key *keys, size_t nkeys, int argc, char **argv,
                    const char *synopsis, const char *description) {
  struct fy_err err = {0};
  int rc = fy_cfg_load(cfg, applet, keys, nkeys, argc, argv, proc->envp, &err);
  if (rc < 0)
    return fy_applet_fail(proc, name, FY_EXIT_USAGE, "%s", err.msg);
  if (cfg->want_help) {
    fy_cfg_print_help(cfg, synopsis, description, proc->out);
    fy_cfg_free(cfg);
    return FY_EXIT_OK;
  }
  if (cfg->want_print) {
    fy_cfg_print(cfg, proc->out);
    fy_cfg_free(cfg);
    return FY_EXIT_OK;
  }
  enum fy_log_level level = (enum fy_log_level)fy_cfg_num(cfg, "log_level");
  const char *journal = NULL;
  for (char *const *e = proc->envp; e && *e; e++)
    if (strncmp(*e, "JOURNAL_STREAM=", 15) == 0)
      journal = *e + 15;
  fy_log_init(lg, proc->errout, level, applet, journal);
  return -1;
}

int fy_applet_planned(int argc, char **argv, const struct fy_proc *proc, const char *applet,
                      const struct fy_cfg_key *keys, size_t nkeys, const char *synopsis,
                      const char *description, const char *missing) {
  struct fy_cfg cfg;
  struct fy_log lg;
  int st = fy_applet_start(&cfg, &lg, proc, applet, applet, keys, nkeys, argc, argv, synopsis, description);
  if (st >= 0)
    return st;
  fy_cfg_free(&cfg);
  return fy_applet_not_built(proc, applet, missing);
}
