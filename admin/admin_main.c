/* `ferry admin`: signs commands and queues them for the coordinator, and
 * asks the coordinator about the fleet (proto/fleet.md). */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "admin/admin_cmd.h"
#include "admin/admin_view.h"
#include "app/applet.h"
#include "base/cleanup.h"
#include "fleet/manifest.h"
#include "fleet/ticket.h"
#include "fleet/trust.h"
#include "fleet/update_mode.h"

#define EXIT_TEMPFAIL 75 /* EX_TEMPFAIL: queued, the coordinator not reached in time */
#define KEYS_MAX 24

static const struct fy_cfg_key common_keys[] = {
    {.name = "key_file",
     .type = FY_CFG_PATH,
     .help =
         "the admin's signing key (ed25519, OpenSSH format; make one with `ferry key generate --out FILE`)"},
    {.name = "data_dir",
     .type = FY_CFG_PATH,
     .help = "directory holding the admin's outbox (queued commands) and its last sequence number"},
    {.name = "coordinator",
     .type = FY_CFG_STRING,
     .help = "the coordinator as NODE_ID@HOST:PORT[,HOST:PORT] (`ferry coordinator` prints it at start)"},
    {.name = "timeout",
     .type = FY_CFG_DURATION,
     .def = "10s",
     .min = 1,
     .max = 365ll * 24 * 3600 * 1000,
     .help = "how long to try to reach the coordinator"},
    {.name = "wait",
     .type = FY_CFG_BOOL,
     .def = "false",
     .help = "block until queued commands are applied, with no time limit"},
    {.name = "json",
     .type = FY_CFG_BOOL,
     .def = "false",
     .help = "print replies as JSON (one document per line)"},
    {.name = "cmd_ttl",
     .type = FY_CFG_DURATION,
     .def = "24h",
     .min = 1000,
     .max = 365ll * 24 * 3600 * 1000,
     .help = "signed commands expire this long after they are made"},
};

static const struct fy_cfg_key approve_keys[] = {
    {.name = "tenant", .type = FY_CFG_STRING, .flags = FY_CFG_CLI_ONLY, .help = "the tenant the agent joins"},
    {.name = "labels",
     .type = FY_CFG_STRING,
     .def = "",
     .flags = FY_CFG_CLI_ONLY,
     .help = "labels k=v,k2=v2"},
};
static const struct fy_cfg_key revoke_keys[] = {
    {.name = "tenant",
     .type = FY_CFG_STRING,
     .flags = FY_CFG_CLI_ONLY,
     .help = "the agent's tenant (\"\" for a pending one); needed only when the coordinator is unreachable"},
};
static const struct fy_cfg_key admins_add_keys[] = {
    {.name = "role", .type = FY_CFG_STRING, .flags = FY_CFG_CLI_ONLY, .help = "owner | operator | viewer"},
    {.name = "tenants",
     .type = FY_CFG_STRING,
     .flags = FY_CFG_CLI_ONLY,
     .help = "the admin's scope: lab,prod or * (every tenant)"},
};
static const struct fy_cfg_key enroll_create_keys[] = {
    {.name = "tenant", .type = FY_CFG_STRING, .flags = FY_CFG_CLI_ONLY, .help = "the tenant agents join"},
    {.name = "labels",
     .type = FY_CFG_STRING,
     .def = "",
     .flags = FY_CFG_CLI_ONLY,
     .help = "labels given to agents k=v,k2=v2"},
    {.name = "ttl",
     .type = FY_CFG_DURATION,
     .def = "1h",
     .min = 1000,
     .max = 365ll * 24 * 3600 * 1000,
     .flags = FY_CFG_CLI_ONLY,
     .help = "how long the ticket works"},
    {.name = "uses",
     .type = FY_CFG_INT,
     .def = "1",
     .min = 0,
     .max = 1000000,
     .flags = FY_CFG_CLI_ONLY,
     .help = "how many agents may enroll with it (0: unlimited)"},
};
static const struct fy_cfg_key enroll_revoke_keys[] = {
    {.name = "tenant",
     .type = FY_CFG_STRING,
     .flags = FY_CFG_CLI_ONLY,
     .help = "the ticket's tenant; needed only when the coordinator is unreachable"},
};

static const struct fy_cfg_key artifact_add_keys[] = {
    {.name = "tenant", .type = FY_CFG_STRING, .flags = FY_CFG_CLI_ONLY, .help = "the artifact's tenant"},
    {.name = "name",
     .type = FY_CFG_STRING,
     .flags = FY_CFG_CLI_ONLY,
     .help = "the artifact's name ([a-z0-9._-])"},
    {.name = "version", .type = FY_CFG_STRING, .flags = FY_CFG_CLI_ONLY, .help = "its version (semver)"},
    {.name = "file",
     .type = FY_CFG_PATH,
     .flags = FY_CFG_CLI_ONLY,
     .help = "hash this file for sha256 and size; the uri becomes file://<absolute path>, which the agents "
             "must be able to read (for a fleet, use --uri http(s)://... with --sha256 and --size)"},
    {.name = "uri",
     .type = FY_CFG_STRING,
     .flags = FY_CFG_CLI_ONLY,
     .help = "where agents fetch it: http(s)://..., file:///path, or a /nix/store path (--kind nixos)"},
    {.name = "sha256", .type = FY_CFG_STRING, .flags = FY_CFG_CLI_ONLY, .help = "with --uri: 64 hex digits"},
    {.name = "size",
     .type = FY_CFG_INT,
     .flags = FY_CFG_CLI_ONLY,
     .min = 0,
     .max = (1ll << 53),
     .help = "with --uri: the file's size in bytes"},
    {.name = "kind",
     .type = FY_CFG_STRING,
     .def = "script",
     .flags = FY_CFG_CLI_ONLY,
     .help = "script | nixos"},
    {.name = "compatible",
     .type = FY_CFG_STRING,
     .def = "",
     .flags = FY_CFG_CLI_ONLY,
     .help = "hardware it is for: model[/revision],... (empty: every machine)"},
    {.name = "allow_downgrade",
     .type = FY_CFG_BOOL,
     .def = "false",
     .flags = FY_CFG_CLI_ONLY,
     .help = "agents may install it over a newer version"},
};
static const struct fy_cfg_key rollout_create_keys[] = {
    {.name = "tenant", .type = FY_CFG_STRING, .flags = FY_CFG_CLI_ONLY, .help = "the rollout's tenant"},
    {.name = "artifact",
     .type = FY_CFG_STRING,
     .flags = FY_CFG_CLI_ONLY,
     .help = "NAME@VERSION (artifact add)"},
    {.name = "selector",
     .type = FY_CFG_STRING,
     .def = "",
     .flags = FY_CFG_CLI_ONLY,
     .help = "agents whose labels match k=v,... (empty: every agent of the tenant)"},
    {.name = "channel",
     .type = FY_CFG_STRING,
     .def = "",
     .flags = FY_CFG_CLI_ONLY,
     .help = "release channel: only agents on it take part; once completed, agents in update mode "
             "latest on it catch up (empty: no channel)"},
    {.name = "waves",
     .type = FY_CFG_STRING,
     .def = "1",
     .flags = FY_CFG_CLI_ONLY,
     .help = "N equal waves, or cumulative percentages like 10,50,100"},
    {.name = "grace",
     .type = FY_CFG_DURATION,
     .def = "0s",
     .max = 365ll * 24 * 3600 * 1000,
     .flags = FY_CFG_CLI_ONLY,
     .help = "pause between a wave's end and the next wave"},
    {.name = "min_success",
     .type = FY_CFG_STRING,
     .def = "100%",
     .flags = FY_CFG_CLI_ONLY,
     .help = "share of a wave's agents that must succeed for the next wave to start"},
    {.name = "max_failures",
     .type = FY_CFG_STRING,
     .def = "0",
     .flags = FY_CFG_CLI_ONLY,
     .help = "failures a wave tolerates before the rollout fails (a number, or 'any')"},
    {.name = "skip_offline",
     .type = FY_CFG_BOOL,
     .def = "true",
     .flags = FY_CFG_CLI_ONLY,
     .help = "skip agents offline when their wave starts (--no-skip-offline: wait for them)"},
    {.name = "abort_on_zero",
     .type = FY_CFG_BOOL,
     .def = "true",
     .flags = FY_CFG_CLI_ONLY,
     .help = "fail the rollout at start when it selects no agent (--no-abort-on-zero: complete)"},
    {.name = "action_timeout",
     .type = FY_CFG_DURATION,
     .def = "10m",
     .max = 365ll * 24 * 3600 * 1000,
     .flags = FY_CFG_CLI_ONLY,
     .help = "an agent silent this long after its wave started times out (0: never)"},
    {.name = "id",
     .type = FY_CFG_STRING,
     .flags = FY_CFG_CLI_ONLY,
     .help = "the rollout's id, 1..32 of [a-z0-9._-] (default: NAME-VERSION-<4 random hex>)"},
};
static const struct fy_cfg_key rollout_move_keys[] = {
    {.name = "tenant",
     .type = FY_CFG_STRING,
     .flags = FY_CFG_CLI_ONLY,
     .help = "the rollout's tenant; looked up on the coordinator when omitted"},
};
static const struct fy_cfg_key agents_log_keys[] = {
    {.name = "follow",
     .type = FY_CFG_BOOL,
     .def = "false",
     .flags = FY_CFG_CLI_ONLY,
     .help = "keep printing new reports as they arrive (until interrupted)"},
    {.name = "interval",
     .type = FY_CFG_DURATION,
     .def = "1s",
     .min = 50,
     .max = 3600ll * 1000,
     .flags = FY_CFG_CLI_ONLY,
     .help = "with --follow: how often to ask the coordinator"},
};
static const struct fy_cfg_key rollout_watch_keys[] = {
    {.name = "interval",
     .type = FY_CFG_DURATION,
     .def = "1s",
     .min = 50,
     .max = 3600ll * 1000,
     .flags = FY_CFG_CLI_ONLY,
     .help = "how often to ask the coordinator"},
};

struct admin {
  const struct fy_proc *proc;
  const char *name; /* "admin agents approve" */
  struct fy_cfg cfg;
  struct fy_log lg;
  struct fy_key key;
  struct fy_peerspec coord;
  struct fy_admin_session *s;
  struct fy_admin_view v;
  char def_key[4096], def_data[4096];
  bool loaded; /* cfg holds a configuration to free */
};

static const char *env_get(char *const *envp, const char *name) {
  size_t n = strlen(name);
  for (; envp && *envp; envp++)
    if (strncmp(*envp, name, n) == 0 && (*envp)[n] == '=')
      return *envp + n + 1;
  return NULL;
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The XDG defaults: $XDG_CONFIG_HOME/ferry/admin.key, $XDG_STATE_HOME/ferry/admin. */
static void defaults(struct admin *a) {
  const char *home = env_get(a->proc->envp, "HOME");
  const char *cfg = env_get(a->proc->envp, "XDG_CONFIG_HOME");
  const char *st = env_get(a->proc->envp, "XDG_STATE_HOME");
  if (cfg && *cfg)
    snprintf(a->def_key, sizeof(a->def_key), "%s/ferry/admin.key", cfg);
  else
    snprintf(a->def_key, sizeof(a->def_key), "%s/.config/ferry/admin.key", home ? home : ".");
  if (st && *st)
    snprintf(a->def_data, sizeof(a->def_data), "%s/ferry/admin", st);
  else
    snprintf(a->def_data, sizeof(a->def_data), "%s/.local/state/ferry/admin", home ? home : ".");
}

/* Loads configuration (common keys + extra); -1 to go on, else an exit status. */
static int start(struct admin *a, const struct fy_cfg_key *extra, size_t nextra, int argc, char **argv,
                 const char *synopsis, const char *description) {
  defaults(a);
  struct fy_cfg_key keys[KEYS_MAX];
  size_t n = 0;
  for (size_t i = 0; i < FY_ARRAY_LEN(common_keys); i++)
    keys[n++] = common_keys[i];
  keys[0].def = a->def_key;
  keys[1].def = a->def_data;
  for (size_t i = 0; i < nextra && n < KEYS_MAX; i++)
    keys[n++] = extra[i];
  int st = fy_applet_start(&a->cfg, &a->lg, a->proc, "admin", a->name + strlen("admin "), keys, n, argc, argv,
                           synopsis, description);
  if (st >= 0)
    return st;
  a->loaded = true;
  a->v = (struct fy_admin_view){.out = a->proc->out,
                                .errout = a->proc->errout,
                                .json = fy_cfg_bool(&a->cfg, "json"),
                                .now_ms = now_ms()};
  return -1;
}

__attribute__((format(printf, 3, 4))) static int fail(struct admin *a, int status, const char *fmt, ...) {
  char msg[2 * FY_ERR_MSG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  return fy_applet_fail(a->proc, a->name, status, "%s", msg);
}

static int need_args(struct admin *a, size_t n, const char *what) {
  if (a->cfg.nargs == n)
    return -1;
  return fy_applet_fail(a->proc, a->name, FY_EXIT_USAGE, "needs %s (got %zu argument%s)", what, a->cfg.nargs,
                        a->cfg.nargs == 1 ? "" : "s");
}

/* The store creates its own directory, not the parents: ~/.local/state may
 * not exist yet on a fresh laptop or CI runner. */
static int make_parents(const char *path, struct fy_err *err) {
  char p[4096];
  snprintf(p, sizeof(p), "%s", path);
  for (char *c = p + 1; *c; c++) {
    if (*c != '/')
      continue;
    *c = '\0';
    if (mkdir(p, 0700) != 0 && errno != EEXIST)
      return fy_err_errno(err, errno, "create directory %s", p);
    *c = '/';
  }
  return 0;
}

/* Parses the coordinator, loads the key, opens the session; -1 or an exit status. */
static int open_session(struct admin *a) {
  struct fy_err err = {0};
  const char *coord = fy_cfg_str(&a->cfg, "coordinator");
  if (!coord || !*coord)
    return fail(
        a, FY_EXIT_USAGE, "%s",
        "no coordinator: pass --coordinator NODE_ID@HOST:PORT (or set FERRY_COORDINATOR, or coordinator = "
        "in the config file); `ferry coordinator` prints it when it starts");
  if (fy_peerspec_parse(coord, &a->coord, &err) < 0)
    return fail(a, FY_EXIT_USAGE, "--coordinator: %s", err.msg);
  if (fy_crypto_init(&err) < 0)
    return fail(a, FY_EXIT_FAIL, "%s", err.msg);
  const char *key_file = fy_cfg_str(&a->cfg, "key_file");
  if (fy_key_load(&a->key, key_file, &err) < 0) {
    if (err.code == FY_ENOENT)
      return fy_applet_fail(
          a->proc, a->name, FY_EXIT_FAIL,
          "%s (make a key with `ferry key generate --out %s`, then have an owner add it with "
          "`ferry admin admins add`)",
          err.msg, key_file);
    return fail(a, FY_EXIT_FAIL, "%s", err.msg);
  }
  struct fy_admin_session_config sc = {
      .data_dir = fy_cfg_str(&a->cfg, "data_dir"),
      .key = &a->key,
      .coordinator = &a->coord,
      .timeout_ms = (uint64_t)fy_cfg_num(&a->cfg, "timeout"),
      .wait = fy_cfg_bool(&a->cfg, "wait"),
      .cmd_ttl_ms = (uint64_t)fy_cfg_num(&a->cfg, "cmd_ttl"),
      .log = &a->lg,
  };
  if (make_parents(sc.data_dir, &err) < 0 || fy_admin_session_open(&a->s, &sc, &err) < 0)
    return fail(a, FY_EXIT_FAIL, "%s", err.msg);
  return -1;
}

static int finish(struct admin *a, int st) {
  fy_admin_session_close(a->s);
  a->s = NULL;
  fy_key_free(&a->key);
  if (a->loaded)
    fy_cfg_free(&a->cfg);
  a->loaded = false;
  return st;
}

/* Runs one query; renders the reply with view. */
typedef int (*view_fn)(const struct fy_admin_view *v, const uint8_t *reply, size_t len, struct fy_err *err);

static int query(struct admin *a, const char *q, const char *key, const char *value, view_fn view) {
  struct fy_err err = {0};
  FY_AUTOBUF struct fy_buf req = FY_BUF_INIT, reply = FY_BUF_INIT;
  if (fy_admin_query_encode(q, key, value, &req, &err) < 0)
    return fail(a, FY_EXIT_FAIL, "%s", err.msg);
  int rc = fy_admin_session_query(a->s, req.data, req.len, &reply, NULL, &err);
  if (rc == FY_EAGAIN)
    return fail(a, FY_EXIT_FAIL, "coordinator unreachable: %s", err.msg);
  if (rc < 0)
    return fail(a, FY_EXIT_FAIL, "%s", err.msg);
  a->v.now_ms = now_ms();
  if (view(&a->v, reply.data, reply.len, &err) < 0)
    return fail(a, FY_EXIT_FAIL, "%s", err.msg);
  return FY_EXIT_OK;
}

/* Delivers what is queued and prints the results of the commands in ids
 * (all pending ones when n is 0). */
static int deliver_and_report(struct admin *a, const uint8_t (*ids)[32], size_t n,
                              const struct fy_admin_view *v) {
  struct fy_err err = {0};
  char tmo[32];
  snprintf(tmo, sizeof(tmo), "%.1f s", (double)fy_cfg_num(&a->cfg, "timeout") / 1000.0);
  if (fy_admin_session_deliver(a->s, &err) < 0) {
    if (err.code == FY_EAGAIN) {
      fprintf(a->proc->errout,
              "ferry %s: queued, but the coordinator was not reachable within %s (%s).\n"
              "`ferry admin sync` (or any later admin command) sends it.\n",
              a->name, tmo, err.msg);
      return EXIT_TEMPFAIL;
    }
    return fail(a, FY_EXIT_FAIL, "%s", err.msg);
  }
  FY_AUTOFREE struct fy_admin_pending *p = NULL;
  size_t np = 0;
  if (fy_admin_session_pending(a->s, &p, &np, &err) < 0)
    return fail(a, FY_EXIT_FAIL, "%s", err.msg);
  int st = FY_EXIT_OK;
  for (size_t i = 0; i < np; i++) {
    bool wanted = n == 0;
    for (size_t j = 0; j < n && !wanted; j++)
      wanted = memcmp(ids[j], p[i].id, 32) == 0;
    if (!wanted)
      continue;
    FY_AUTOBUF struct fy_buf reply = FY_BUF_INIT;
    int rc = fy_admin_session_result(a->s, p[i].id, &reply, &err);
    if (rc == 0) {
      char sid[13];
      sodium_bin2hex(sid, sizeof(sid), p[i].id, 6);
      fprintf(a->proc->errout,
              "ferry %s: %s %s was delivered but has no result yet; `ferry admin sync` shows it\n", a->name,
              p[i].cmd, sid);
      st = st == FY_EXIT_OK ? EXIT_TEMPFAIL : st;
      continue;
    }
    if (rc < 0) {
      fail(a, FY_EXIT_FAIL, "result: %s", err.msg);
      st = err.code == FY_EAGAIN ? EXIT_TEMPFAIL : FY_EXIT_FAIL;
      continue;
    }
    rc = fy_admin_view_result(v, p[i].id, reply.data, reply.len, &err);
    if (rc < 0) {
      fail(a, FY_EXIT_FAIL, "%s", err.msg);
      st = FY_EXIT_FAIL;
      continue;
    }
    fy_admin_session_forget(a->s, p[i].id, NULL);
    if (rc == 0)
      st = FY_EXIT_FAIL;
  }
  return st;
}

/* Signs, queues, delivers and reports one command. */
static int command(struct admin *a, const char *tenant, const char *cmd, const struct fy_buf *args,
                   const struct fy_admin_view *v) {
  struct fy_err err = {0};
  uint8_t id[32];
  if (fy_admin_session_queue(a->s, tenant, cmd, args->data, args->len, id, &err) < 0)
    return fail(a, FY_EXIT_FAIL, "%s", err.msg);
  return deliver_and_report(a, (const uint8_t(*)[32])id, 1, v);
}

/* An agent's full id (and tenant) from an id or a prefix: asks the coordinator
 * when it is reachable; else only a full id works. */
static int resolve_agent(struct admin *a, const char *arg, struct fy_nodeid *id, char *tenant, size_t tsize,
                         bool *have_tenant) {
  struct fy_err err = {0};
  *have_tenant = false;
  FY_AUTOBUF struct fy_buf req = FY_BUF_INIT, reply = FY_BUF_INIT;
  if (fy_admin_query_encode("agent", "id", arg, &req, &err) < 0)
    return fail(a, FY_EXIT_FAIL, "%s", err.msg);
  int rc = fy_admin_session_query(a->s, req.data, req.len, &reply, NULL, &err);
  if (rc == FY_EAGAIN) {
    if (strlen(arg) == FY_NODEID_HEX_LEN && fy_nodeid_parse(arg, id, NULL) == 0)
      return -1;
    return fy_applet_fail(
        a->proc, a->name, FY_EXIT_USAGE,
        "the coordinator is unreachable (%s), so '%s' cannot be resolved: give the full 64-hex id", err.msg,
        arg);
  }
  if (rc < 0)
    return fail(a, FY_EXIT_FAIL, "%s", err.msg);
  msgpack_zone zone;
  msgpack_object o;
  rc = fy_admin_reply_unpack(reply.data, reply.len, "agent reply", &zone, &o, &err);
  const msgpack_object *ag = rc == 0 ? fy_admin_map_get(&o, "agent") : NULL;
  const msgpack_object *ido = fy_admin_map_get(ag, "id"), *to = fy_admin_map_get(ag, "tenant");
  if (rc == 0 && (!ido || ido->type != MSGPACK_OBJECT_BIN || ido->via.bin.size != 32)) {
    rc = fy_err_set(&err, FY_EINVAL, "agent reply: agent.id is not bin 32");
  } else if (rc == 0) {
    memcpy(id->key, ido->via.bin.ptr, 32);
    if (to && to->type == MSGPACK_OBJECT_STR && to->via.str.size < tsize) {
      memcpy(tenant, to->via.str.ptr, to->via.str.size);
      tenant[to->via.str.size] = '\0';
      *have_tenant = true;
    }
  }
  msgpack_zone_destroy(&zone);
  return rc < 0 ? fail(a, FY_EXIT_FAIL, "%s", err.msg) : -1;
}

/* ---- subcommands ---------------------------------------------------------------------- */

static int cmd_status(struct admin *a, int argc, char **argv) {
  int st = start(a, NULL, 0, argc, argv, "ferry admin status [flags]",
                 "Shows the coordinator's status (who you are to it, agent counts) and this\n"
                 "admin's local queue: commands signed and queued whose results were not yet\n"
                 "fetched. Works when the coordinator is down: then it says why and exits 1.");
  if (st >= 0 || (st = need_args(a, 0, "no arguments")) >= 0 || (st = open_session(a)) >= 0)
    return finish(a, st);
  struct fy_err err = {0};
  FY_AUTOBUF struct fy_buf req = FY_BUF_INIT, reply = FY_BUF_INIT;
  fy_admin_query_encode("status", NULL, NULL, &req, &err);
  int rc = fy_admin_session_query(a->s, req.data, req.len, &reply, NULL, &err);
  char why[FY_ERR_MSG_MAX + 1];
  snprintf(why, sizeof(why), "%s", err.msg);
  FY_AUTOFREE struct fy_admin_pending *p = NULL;
  size_t np = 0;
  if (fy_admin_session_pending(a->s, &p, &np, &err) < 0)
    return finish(a, fail(a, FY_EXIT_FAIL, "%s", err.msg));
  a->v.now_ms = now_ms();
  if (fy_admin_view_status(&a->v, rc == 0 ? reply.data : NULL, reply.len, why, p, np, &err) < 0)
    return finish(a, fail(a, FY_EXIT_FAIL, "%s", err.msg));
  return finish(a, rc == 0 ? FY_EXIT_OK : FY_EXIT_FAIL);
}

/* The start of a command group (agents, admins, enroll): prints usage when no
 * subcommand is given (to stderr, exit 2) or on --help/-h (to stdout, exit 0).
 * Otherwise sets *sub, drops the group's own argv[0] so the subcommand's name
 * becomes argv[0], and returns -1 to go on. */
static int subcommand(struct admin *a, const char *usage, int *argc, char ***argv, const char **sub) {
  if (*argc < 2) {
    fputs(usage, a->proc->errout);
    return FY_EXIT_USAGE;
  }
  *sub = (*argv)[1];
  if (strcmp(*sub, "--help") == 0 || strcmp(*sub, "-h") == 0) {
    fputs(usage, a->proc->out);
    return FY_EXIT_OK;
  }
  (*argc)--, (*argv)++;
  return -1;
}

/* Prints the entries of a log reply after seq *last (one line each, the
 * output tail indented under it; a JSON line each with --json). */
static int print_log(struct admin *a, const struct fy_buf *reply, uint64_t *last, struct fy_err *err) {
  msgpack_zone zone;
  msgpack_object o;
  int rc = fy_admin_reply_unpack(reply->data, reply->len, "log reply", &zone, &o, err);
  const msgpack_object *log = rc == 0 ? fy_admin_map_get(&o, "log") : NULL;
  uint32_t count = 0;
  if (log && log->type == MSGPACK_OBJECT_ARRAY)
    count = log->via.array.size;
  else if (rc == 0)
    rc = fy_err_set(err, FY_EINVAL, "log reply: log is not an array");
  for (uint32_t i = 0; rc == 0 && i < count; i++) {
    const msgpack_object *e = &log->via.array.ptr[i], *seq = fy_admin_map_get(e, "seq"),
                         *rep = fy_admin_map_get(e, "report");
    if (!seq || seq->type != MSGPACK_OBJECT_POSITIVE_INTEGER || !rep || rep->type != MSGPACK_OBJECT_MAP) {
      rc = fy_err_set(err, FY_EINVAL, "log reply: entry %u is not {seq, report}", i);
      break;
    }
    if (seq->via.u64 <= *last)
      continue;
    *last = seq->via.u64;
    if (a->v.json) {
      json_t *j = fy_admin_json_from_msgpack(rep, err);
      if (!j) {
        rc = FY_EINVAL;
        break;
      }
      char *text = json_dumps(j, JSON_COMPACT);
      json_decref(j);
      if (text)
        fprintf(a->proc->out, "%s\n", text);
      free(text);
      continue;
    }
    char at_text[40] = "-";
    const msgpack_object *at = fy_admin_map_get(rep, "at");
    if (at && at->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
      fy_admin_format_time(now_ms(), at->via.u64, at_text, sizeof(at_text));
    static const char *const fields[] = {"rollout", "state", "version", "message"};
    fprintf(a->proc->out, "%-10s", at_text);
    for (size_t f = 0; f < FY_ARRAY_LEN(fields); f++) {
      const msgpack_object *v = fy_admin_map_get(rep, fields[f]);
      if (v && v->type == MSGPACK_OBJECT_STR)
        fprintf(a->proc->out, "  %.*s", (int)(v->via.str.size > 300 ? 300 : v->via.str.size), v->via.str.ptr);
    }
    fputc('\n', a->proc->out);
    const msgpack_object *output = fy_admin_map_get(rep, "output");
    if (output && output->type == MSGPACK_OBJECT_STR && output->via.str.size) {
      const char *p = output->via.str.ptr, *end = p + output->via.str.size;
      while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        fprintf(a->proc->out, "            | %.*s\n", (int)n, p);
        p += n + (nl != NULL);
      }
    }
  }
  fflush(a->proc->out);
  msgpack_zone_destroy(&zone);
  return rc;
}

/* agents log: the agent's update log (its last reports), optionally followed. */
static int agents_log(struct admin *a) {
  struct fy_nodeid id;
  char tenant[FY_TENANT_MAX + 1];
  bool have_tenant;
  int st = resolve_agent(a, a->cfg.args[0], &id, tenant, sizeof(tenant), &have_tenant);
  if (st >= 0)
    return st;
  char hex[FY_NODEID_HEX_LEN + 1];
  fy_nodeid_to_hex(&id, hex);
  struct fy_err err = {0};
  FY_AUTOBUF struct fy_buf req = FY_BUF_INIT;
  if (fy_admin_query_encode("log", "id", hex, &req, &err) < 0)
    return fail(a, FY_EXIT_FAIL, "%s", err.msg);
  bool follow = fy_cfg_bool(&a->cfg, "follow");
  uint64_t interval = (uint64_t)fy_cfg_num(&a->cfg, "interval"), last = 0;
  for (;;) {
    FY_AUTOBUF struct fy_buf reply = FY_BUF_INIT;
    int rc = fy_admin_session_query(a->s, req.data, req.len, &reply, NULL, &err);
    if (rc == FY_EAGAIN)
      return fail(a, FY_EXIT_FAIL, "coordinator unreachable: %s", err.msg);
    if (rc < 0 || print_log(a, &reply, &last, &err) < 0)
      return fail(a, FY_EXIT_FAIL, "%s", err.msg);
    if (!follow)
      return FY_EXIT_OK;
    fy_admin_session_sleep(a->s, interval);
  }
}

static int cmd_agents(struct admin *a, int argc, char **argv) {
  static const char usage[] =
      "usage: ferry admin agents <list|show|approve|revoke> [flags]\n\n"
      "  list                                      every agent you can see\n"
      "  show ID                                   one agent: fields, facts, history\n"
      "  log ID [--follow]                         its update log: every apply step it reported\n"
      "  approve ID --tenant T [--labels k=v,..]   enroll a pending agent\n"
      "  revoke ID                                 shut an agent out\n";
  const char *sub = NULL;
  int st = subcommand(a, usage, &argc, &argv, &sub);
  if (st >= 0)
    return st;
  if (strcmp(sub, "list") == 0) {
    a->name = "admin agents list";
    st = start(a, NULL, 0, argc, argv, "ferry admin agents list [flags]",
               "Lists the agents within your tenants (and pending ones, for operators and owners).");
    if (st >= 0 || (st = need_args(a, 0, "no arguments")) >= 0 || (st = open_session(a)) >= 0)
      return finish(a, st);
    return finish(a, query(a, "agents", NULL, NULL, fy_admin_view_agents));
  }
  if (strcmp(sub, "show") == 0) {
    a->name = "admin agents show";
    st = start(a, NULL, 0, argc, argv, "ferry admin agents show ID [flags]",
               "Shows one agent (ID: its id or a unique prefix of at least 4 hex digits): its\n"
               "fields, its latest facts as 'key: value' lines, and its last facts reports.");
    if (st >= 0 || (st = need_args(a, 1, "one agent ID")) >= 0 || (st = open_session(a)) >= 0)
      return finish(a, st);
    return finish(a, query(a, "agent", "id", a->cfg.args[0], fy_admin_view_agent));
  }
  if (strcmp(sub, "log") == 0) {
    a->name = "admin agents log";
    st = start(a, agents_log_keys, FY_ARRAY_LEN(agents_log_keys), argc, argv,
               "ferry admin agents log ID [--follow] [flags]",
               "Prints the agent's update log: every step of its apply cycle it reported\n"
               "(downloading, activating, verifying, success, rolled_back...), with the tail of\n"
               "the applier's or health check's output. --follow keeps printing new ones.");
    if (st >= 0 || (st = need_args(a, 1, "one agent ID")) >= 0 || (st = open_session(a)) >= 0)
      return finish(a, st);
    return finish(a, agents_log(a));
  }
  bool approve = strcmp(sub, "approve") == 0;
  if (!approve && strcmp(sub, "revoke") != 0)
    return fy_applet_fail(a->proc, "admin agents", FY_EXIT_USAGE,
                          "unknown subcommand '%s' (list | show | log | approve | revoke)", sub);
  a->name = approve ? "admin agents approve" : "admin agents revoke";
  if (approve)
    st = start(a, approve_keys, FY_ARRAY_LEN(approve_keys), argc, argv,
               "ferry admin agents approve ID --tenant T [--labels k=v,..] [flags]",
               "Signs and queues agents.approve: the agent (a full id, or a prefix the coordinator\n"
               "resolves) is enrolled into tenant T with the labels. Waits up to --timeout for\n"
               "the result; exit 75 when the coordinator was not reached (the command stays queued).");
  else
    st = start(a, revoke_keys, FY_ARRAY_LEN(revoke_keys), argc, argv, "ferry admin agents revoke ID [flags]",
               "Signs and queues agents.revoke: the agent is refused from then on. ID is a full\n"
               "id or a prefix the coordinator resolves. Exit 75 when the coordinator was not\n"
               "reached (the command stays queued).");
  if (st >= 0 || (st = need_args(a, 1, "one agent ID")) >= 0)
    return finish(a, st);
  struct fy_err err = {0};
  struct fy_labels labels = {0};
  const char *tenant_flag = fy_cfg_str(&a->cfg, "tenant");
  if (approve) {
    if (!tenant_flag)
      return finish(a, fail(a, FY_EXIT_USAGE, "%s", "--tenant T is required"));
    if (fy_tenant_check(tenant_flag, &err) < 0 ||
        fy_labels_parse(fy_cfg_str(&a->cfg, "labels"), &labels, &err) < 0)
      return finish(a, fail(a, FY_EXIT_USAGE, "%s", err.msg));
  }
  if ((st = open_session(a)) >= 0)
    return finish(a, st);
  struct fy_nodeid id;
  char tenant[FY_TENANT_MAX + 1] = "";
  bool have_tenant;
  if ((st = resolve_agent(a, a->cfg.args[0], &id, tenant, sizeof(tenant), &have_tenant)) >= 0)
    return finish(a, st);
  if (approve) {
    snprintf(tenant, sizeof(tenant), "%s", tenant_flag);
  } else if (!have_tenant) {
    if (!tenant_flag)
      return finish(a, fail(a, FY_EXIT_USAGE, "%s",
                            "the coordinator is unreachable: give the agent's tenant with --tenant T "
                            "(--tenant= for a pending agent)"));
    snprintf(tenant, sizeof(tenant), "%s", tenant_flag);
  }
  FY_AUTOBUF struct fy_buf args = FY_BUF_INIT;
  if (fy_admin_args_agent(&id, approve ? &labels : NULL, &args, &err) < 0)
    return finish(a, fail(a, FY_EXIT_FAIL, "%s", err.msg));
  return finish(a, command(a, tenant, approve ? "agents.approve" : "agents.revoke", &args, &a->v));
}

static int cmd_admins(struct admin *a, int argc, char **argv) {
  static const char usage[] =
      "usage: ferry admin admins <list|add|remove> [flags]\n\n"
      "  list                                          every admin you can see\n"
      "  add KEY --role R --tenants a,b|*              add an admin or change one (admin.set)\n"
      "  remove KEY                                    remove an admin\n"
      "KEY is a node id or an 'ssh-ed25519 AAAA...' line.\n";
  const char *sub = NULL;
  int st = subcommand(a, usage, &argc, &argv, &sub);
  if (st >= 0)
    return st;
  if (strcmp(sub, "list") == 0) {
    a->name = "admin admins list";
    st = start(a, NULL, 0, argc, argv, "ferry admin admins list [flags]",
               "Lists the admins: key, role, tenants, and whether it is a root (fixed at init).");
    if (st >= 0 || (st = need_args(a, 0, "no arguments")) >= 0 || (st = open_session(a)) >= 0)
      return finish(a, st);
    return finish(a, query(a, "admins", NULL, NULL, fy_admin_view_admins));
  }
  bool add = strcmp(sub, "add") == 0;
  if (!add && strcmp(sub, "remove") != 0)
    return fy_applet_fail(a->proc, "admin admins", FY_EXIT_USAGE,
                          "unknown subcommand '%s' (list | add | remove)", sub);
  a->name = add ? "admin admins add" : "admin admins remove";
  if (add)
    st = start(a, admins_add_keys, FY_ARRAY_LEN(admins_add_keys), argc, argv,
               "ferry admin admins add KEY --role R --tenants a,b|* [flags]",
               "Signs and queues admin.set (owners only): KEY gets role R (owner, operator,\n"
               "viewer) over the tenants; an existing admin is changed. Exit 75 when the\n"
               "coordinator was not reached (the command stays queued).");
  else
    st = start(a, NULL, 0, argc, argv, "ferry admin admins remove KEY [flags]",
               "Signs and queues admin.remove (owners only). Roots cannot be removed. Exit 75\n"
               "when the coordinator was not reached (the command stays queued).");
  if (st >= 0 || (st = need_args(a, 1, "one KEY")) >= 0)
    return finish(a, st);
  struct fy_err err = {0};
  struct fy_admin rec = {0};
  if (fy_nodeid_parse(a->cfg.args[0], &rec.key, &err) < 0)
    return finish(a, fail(a, FY_EXIT_USAGE, "KEY: %s", err.msg));
  if (add) {
    const char *role = fy_cfg_str(&a->cfg, "role"), *tenants = fy_cfg_str(&a->cfg, "tenants");
    if (!role || !tenants)
      return finish(a, fail(a, FY_EXIT_USAGE, "%s", "--role R and --tenants a,b|* are required"));
    if (fy_role_parse(role, &rec.role, &err) < 0 || fy_admin_set_tenants(&rec, tenants, &err) < 0)
      return finish(a, fail(a, FY_EXIT_USAGE, "%s", err.msg));
  }
  if ((st = open_session(a)) >= 0)
    return finish(a, st);
  FY_AUTOBUF struct fy_buf args = FY_BUF_INIT;
  if (fy_admin_args_encode(&rec, add, &args, &err) < 0)
    return finish(a, fail(a, FY_EXIT_FAIL, "%s", err.msg));
  return finish(a, command(a, "", add ? "admin.set" : "admin.remove", &args, &a->v));
}

static int enroll_create(struct admin *a, int argc, char **argv) {
  a->name = "admin enroll create";
  int st = start(a, enroll_create_keys, FY_ARRAY_LEN(enroll_create_keys), argc, argv,
                 "ferry admin enroll create --tenant T [--labels k=v,..] [--ttl 1h] [--uses N] [flags]",
                 "Makes an enrollment ticket: a fresh secret, whose hash goes to the coordinator in\n"
                 "a signed enroll.create. Prints ONE line on stdout, the ticket (coordinator id and\n"
                 "addresses, secret, tenant, labels, expiry) for `ferry agent --ticket`; notes and\n"
                 "the result go to stderr. The ticket works once the command is applied; exit 75\n"
                 "when the coordinator was not reached (the command stays queued).");
  if (st >= 0 || (st = need_args(a, 0, "no arguments")) >= 0)
    return finish(a, st);
  struct fy_err err = {0};
  struct fy_ticket t = {0};
  const char *tenant = fy_cfg_str(&a->cfg, "tenant");
  if (!tenant)
    return finish(a, fail(a, FY_EXIT_USAGE, "%s", "--tenant T is required"));
  if (fy_tenant_check(tenant, &err) < 0 ||
      fy_labels_parse(fy_cfg_str(&a->cfg, "labels"), &t.labels, &err) < 0)
    return finish(a, fail(a, FY_EXIT_USAGE, "%s", err.msg));
  if ((st = open_session(a)) >= 0)
    return finish(a, st);
  t.coordinator = a->coord.id;
  for (size_t i = 0; i < a->coord.naddrs && i < FY_TICKET_ADDRS_MAX; i++)
    snprintf(t.addrs[t.naddrs++], sizeof(t.addrs[0]), "%s", a->coord.addrs[i]);
  snprintf(t.tenant, sizeof(t.tenant), "%s", tenant);
  t.expires_at = now_ms() + (uint64_t)fy_cfg_num(&a->cfg, "ttl");
  randombytes_buf(t.secret, sizeof(t.secret));
  uint8_t hash[FY_TICKET_HASH_LEN];
  fy_ticket_secret_hash(t.secret, hash);
  char text[FY_TICKET_TEXT_MAX + 1];
  FY_AUTOBUF struct fy_buf args = FY_BUF_INIT;
  int rc = fy_ticket_encode(&t, text, sizeof(text), &err);
  sodium_memzero(t.secret, sizeof(t.secret));
  if (rc < 0 || fy_admin_args_enroll_create(hash, &t.labels, t.expires_at,
                                            (uint64_t)fy_cfg_num(&a->cfg, "uses"), &args, &err) < 0)
    return finish(a, fail(a, FY_EXIT_FAIL, "%s", err.msg));
  uint8_t id[32];
  if (fy_admin_session_queue(a->s, tenant, "enroll.create", args.data, args.len, id, &err) < 0) {
    sodium_memzero(text, sizeof(text));
    return finish(a, fail(a, FY_EXIT_FAIL, "%s", err.msg));
  }
  /* Queued durably: the ticket is good once the coordinator applies it. */
  fprintf(a->proc->out, "%s\n", text);
  fflush(a->proc->out);
  sodium_memzero(text, sizeof(text));
  char hid[17];
  sodium_bin2hex(hid, sizeof(hid), hash, 8);
  fprintf(a->proc->errout, "ticket %s for tenant %s, %" PRId64 " use(s), expires in %s\n", hid, tenant,
          (int64_t)fy_cfg_num(&a->cfg, "uses"), fy_cfg_str(&a->cfg, "ttl"));
  struct fy_admin_view v = a->v;
  v.out = a->proc->errout; /* stdout carries only the ticket */
  return finish(a, deliver_and_report(a, (const uint8_t(*)[32])id, 1, &v));
}

static int enroll_revoke(struct admin *a, int argc, char **argv) {
  a->name = "admin enroll revoke";
  int st = start(a, enroll_revoke_keys, FY_ARRAY_LEN(enroll_revoke_keys), argc, argv,
                 "ferry admin enroll revoke TICKET_ID [--tenant T] [flags]",
                 "Signs and queues enroll.revoke for a ticket (TICKET_ID: 16 hex, as `enroll list`\n"
                 "shows). Its tenant is looked up on the coordinator, or taken from --tenant when\n"
                 "the coordinator is unreachable. Exit 75 when it was not reached.");
  if (st >= 0 || (st = need_args(a, 1, "one TICKET_ID")) >= 0)
    return finish(a, st);
  struct fy_err err = {0};
  FY_AUTOBUF struct fy_buf args = FY_BUF_INIT, req = FY_BUF_INIT, reply = FY_BUF_INIT;
  if (fy_admin_args_enroll_revoke(a->cfg.args[0], &args, &err) < 0)
    return finish(a, fail(a, FY_EXIT_USAGE, "%s", err.msg));
  if ((st = open_session(a)) >= 0)
    return finish(a, st);
  char tenant[FY_TENANT_MAX + 1] = "";
  bool found = false;
  fy_admin_query_encode("tickets", NULL, NULL, &req, &err);
  if (fy_admin_session_query(a->s, req.data, req.len, &reply, NULL, &err) == 0) {
    msgpack_zone zone;
    msgpack_object o;
    if (fy_admin_reply_unpack(reply.data, reply.len, "tickets reply", &zone, &o, &err) == 0) {
      const msgpack_object *list = fy_admin_map_get(&o, "tickets");
      for (uint32_t i = 0; list && list->type == MSGPACK_OBJECT_ARRAY && i < list->via.array.size; i++) {
        const msgpack_object *e = &list->via.array.ptr[i];
        const msgpack_object *tid = fy_admin_map_get(e, "id"), *tt = fy_admin_map_get(e, "tenant");
        if (tid && tid->type == MSGPACK_OBJECT_STR && tid->via.str.size == 16 &&
            memcmp(tid->via.str.ptr, a->cfg.args[0], 16) == 0 && tt && tt->type == MSGPACK_OBJECT_STR &&
            tt->via.str.size < sizeof(tenant)) {
          memcpy(tenant, tt->via.str.ptr, tt->via.str.size);
          tenant[tt->via.str.size] = '\0';
          found = true;
        }
      }
    }
    msgpack_zone_destroy(&zone);
    if (!found && !fy_cfg_str(&a->cfg, "tenant"))
      return finish(a, fail(a, FY_EXIT_FAIL, "no ticket %s among the tickets you can see", a->cfg.args[0]));
  }
  if (!found) {
    const char *tf = fy_cfg_str(&a->cfg, "tenant");
    if (!tf)
      return finish(a, fail(a, FY_EXIT_USAGE,
                            "the coordinator is unreachable (%s): give the ticket's --tenant T", err.msg));
    snprintf(tenant, sizeof(tenant), "%s", tf);
  }
  return finish(a, command(a, tenant, "enroll.revoke", &args, &a->v));
}

static int cmd_enroll(struct admin *a, int argc, char **argv) {
  static const char usage[] =
      "usage: ferry admin enroll <create|list|revoke> [flags]\n\n"
      "  create --tenant T [--labels k=v,..] [--ttl 1h] [--uses N]   print a new ticket\n"
      "  list                                                       the tickets\n"
      "  revoke TICKET_ID                                           stop a ticket\n";
  const char *sub = NULL;
  int st = subcommand(a, usage, &argc, &argv, &sub);
  if (st >= 0)
    return st;
  if (strcmp(sub, "create") == 0)
    return enroll_create(a, argc, argv);
  if (strcmp(sub, "revoke") == 0)
    return enroll_revoke(a, argc, argv);
  if (strcmp(sub, "list") != 0)
    return fy_applet_fail(a->proc, "admin enroll", FY_EXIT_USAGE,
                          "unknown subcommand '%s' (create | list | revoke)", sub);
  a->name = "admin enroll list";
  st = start(a, NULL, 0, argc, argv, "ferry admin enroll list [flags]",
             "Lists the enrollment tickets within your tenants: id, tenant, labels, expiry,\n"
             "uses, state, who made it and when.");
  if (st >= 0 || (st = need_args(a, 0, "no arguments")) >= 0 || (st = open_session(a)) >= 0)
    return finish(a, st);
  return finish(a, query(a, "tickets", NULL, NULL, fy_admin_view_tickets));
}

static int cmd_sync(struct admin *a, int argc, char **argv) {
  int st = start(a, NULL, 0, argc, argv, "ferry admin sync [--wait] [flags]",
                 "Delivers the queued commands now (up to --timeout; with --wait until all are\n"
                 "applied) and prints their results. Exit 0 when all applied, 1 when one was\n"
                 "refused, 75 when the coordinator was not reached.");
  if (st >= 0 || (st = need_args(a, 0, "no arguments")) >= 0 || (st = open_session(a)) >= 0)
    return finish(a, st);
  struct fy_err err = {0};
  FY_AUTOFREE struct fy_admin_pending *p = NULL;
  size_t np = 0;
  if (fy_admin_session_pending(a->s, &p, &np, &err) < 0)
    return finish(a, fail(a, FY_EXIT_FAIL, "%s", err.msg));
  if (np == 0) {
    if (!a->v.json)
      fprintf(a->proc->out, "nothing queued\n");
    return finish(a, FY_EXIT_OK);
  }
  if (!a->v.json)
    fy_admin_view_pending(&a->v, p, np);
  return finish(a, deliver_and_report(a, NULL, 0, &a->v));
}

/* ---- artifacts and rollouts -------------------------------------------------------------- */

/* Splits "a,b" into the manifest's compatible list (the manifest's encoder
 * checks each entry). */
static int compatible_parse(const char *text, struct fy_manifest *m, struct fy_err *err) {
  m->ncompatible = 0;
  for (const char *p = text; *p;) {
    const char *end = strchr(p, ',');
    size_t n = end ? (size_t)(end - p) : strlen(p);
    if (n == 0 || n > FY_MANIFEST_COMPATIBLE_ENTRY_MAX)
      return fy_err_set(err, FY_EINVAL, "--compatible: entry %zu is empty or too long", m->ncompatible + 1);
    if (m->ncompatible == FY_MANIFEST_COMPATIBLE_MAX)
      return fy_err_set(err, FY_EINVAL, "--compatible: more than %d entries", FY_MANIFEST_COMPATIBLE_MAX);
    memcpy(m->compatible[m->ncompatible], p, n);
    m->compatible[m->ncompatible++][n] = '\0';
    p += n;
    if (*p == ',')
      p++;
  }
  return 0;
}

/* The manifest's fields from the flags (all but issuer, coordinator and
 * issued_at); -1 or an exit status. */
static int artifact_fields(struct admin *a, struct fy_manifest *m) {
  struct fy_err err = {0};
  const char *tenant = fy_cfg_str(&a->cfg, "tenant"), *name = fy_cfg_str(&a->cfg, "name"),
             *version = fy_cfg_str(&a->cfg, "version"), *file = fy_cfg_str(&a->cfg, "file"),
             *uri = fy_cfg_str(&a->cfg, "uri"), *sha = fy_cfg_str(&a->cfg, "sha256"),
             *size = fy_cfg_str(&a->cfg, "size");
  if (!tenant || !name || !version)
    return fail(a, FY_EXIT_USAGE, "%s", "--tenant T, --name N and --version V are required");
  if (fy_tenant_check(tenant, &err) < 0 || fy_manifest_set_version(m, version, &err) < 0 ||
      fy_artifact_kind_parse(fy_cfg_str(&a->cfg, "kind"), &m->kind, &err) < 0 ||
      compatible_parse(fy_cfg_str(&a->cfg, "compatible"), m, &err) < 0)
    return fail(a, FY_EXIT_USAGE, "%s", err.msg);
  if (strlen(name) > FY_MANIFEST_NAME_MAX)
    return fail(a, FY_EXIT_USAGE, "--name: longer than %d bytes", FY_MANIFEST_NAME_MAX);
  snprintf(m->tenant, sizeof(m->tenant), "%s", tenant);
  snprintf(m->name, sizeof(m->name), "%s", name);
  m->allow_downgrade = fy_cfg_bool(&a->cfg, "allow_downgrade");
  if (!file == !uri)
    return fail(a, FY_EXIT_USAGE, "%s", "give either --file PATH or --uri URI (with --sha256 and --size)");
  if (file) {
    if (m->kind == FY_ARTIFACT_NIXOS)
      return fail(a, FY_EXIT_USAGE, "%s", "--kind nixos takes --uri /nix/store/..., not --file");
    if (sha || size)
      return fail(a, FY_EXIT_USAGE, "%s", "--sha256 and --size come from --file: give them only with --uri");
    char abs[PATH_MAX];
    if (!realpath(file, abs))
      return fail(a, FY_EXIT_FAIL, "--file %s: %s", file, strerror(errno));
    if (fy_admin_file_sha256(abs, m->sha256, &m->size, &err) < 0)
      return fail(a, FY_EXIT_FAIL, "%s", err.msg);
    if (strlen(abs) + strlen("file://") > FY_MANIFEST_URI_MAX)
      return fail(a, FY_EXIT_USAGE, "--file: the path is longer than a uri may be");
    memcpy(m->uri, "file://", 7);
    memcpy(m->uri + 7, abs, strlen(abs) + 1);
    return -1;
  }
  if (strlen(uri) > FY_MANIFEST_URI_MAX)
    return fail(a, FY_EXIT_USAGE, "--uri: longer than %d bytes", FY_MANIFEST_URI_MAX);
  snprintf(m->uri, sizeof(m->uri), "%s", uri);
  if (m->kind == FY_ARTIFACT_NIXOS) {
    if (sha || (size && fy_cfg_num(&a->cfg, "size") != 0))
      return fail(a, FY_EXIT_USAGE, "%s", "--kind nixos has no --sha256 or --size (the store path names it)");
    return -1;
  }
  size_t bin_len = 0;
  if (!sha || !size)
    return fail(a, FY_EXIT_USAGE, "%s", "--uri needs --sha256 HEX and --size N of the file it names");
  if (strlen(sha) != 64 || sodium_hex2bin(m->sha256, 32, sha, 64, NULL, &bin_len, NULL) != 0 || bin_len != 32)
    return fail(a, FY_EXIT_USAGE, "--sha256: '%.80s' is not 64 hex digits", sha);
  m->size = (uint64_t)fy_cfg_num(&a->cfg, "size");
  return -1;
}

static int artifact_add(struct admin *a, int argc, char **argv) {
  a->name = "admin artifact add";
  int st = start(a, artifact_add_keys, FY_ARRAY_LEN(artifact_add_keys), argc, argv,
                 "ferry admin artifact add --tenant T --name N --version V (--file PATH | --uri URI "
                 "--sha256 HEX --size N) [--kind script|nixos] [--compatible hw[/rev],...] "
                 "[--allow-downgrade] [flags]",
                 "Signs an artifact manifest (name, version, where to fetch it, its sha256 and\n"
                 "size, the hardware it is for) with your key and queues artifact.add. Agents\n"
                 "verify that signature again before they install anything.\n"
                 "With --file the file is hashed here and the uri is file://<absolute path>:\n"
                 "every agent must be able to read that path (fine for a test or one machine).\n"
                 "For a fleet, publish the file and give --uri http(s)://... --sha256 --size.\n"
                 "Exit 0 applied, 1 refused, 75 when the coordinator was not reached (queued).");
  if (st >= 0 || (st = need_args(a, 0, "no arguments")) >= 0)
    return finish(a, st);
  struct fy_manifest *m = calloc(1, sizeof(*m));
  if (!m)
    return finish(a, fail(a, FY_EXIT_FAIL, "%s", "out of memory"));
  if ((st = artifact_fields(a, m)) >= 0 || (st = open_session(a)) >= 0) {
    free(m);
    return finish(a, st);
  }
  struct fy_err err = {0};
  m->issuer = a->key.id;
  m->coordinator = a->coord.id;
  m->issued_at = now_ms();
  FY_AUTOBUF struct fy_buf env = FY_BUF_INIT, args = FY_BUF_INIT;
  if (fy_manifest_sign(&a->key, m, &env, &err) < 0 ||
      fy_admin_args_artifact_add(env.data, env.len, &args, &err) < 0) {
    free(m);
    return finish(a, fail(a, FY_EXIT_USAGE, "%s", err.msg));
  }
  char sha[65];
  sodium_bin2hex(sha, sizeof(sha), m->sha256, 32);
  if (a->v.json) {
    json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:I}", "tenant", m->tenant, "name", m->name,
                          "version", m->version_text, "kind", fy_artifact_kind_name(m->kind), "uri", m->uri,
                          "sha256", sha, "size", (json_int_t)m->size);
    if (j) {
      json_dumpf(j, a->proc->out, JSON_COMPACT | JSON_ENSURE_ASCII);
      fputc('\n', a->proc->out);
      json_decref(j);
    }
  } else {
    sha[12] = '\0';
    fprintf(a->proc->out, "artifact %s %s (%s): sha256 %s, %" PRIu64 " bytes, %s\n", m->name, m->version_text,
            m->tenant, sha, m->size, m->uri);
  }
  fflush(a->proc->out);
  char tenant[FY_TENANT_MAX + 1];
  snprintf(tenant, sizeof(tenant), "%s", m->tenant);
  free(m);
  return finish(a, command(a, tenant, "artifact.add", &args, &a->v));
}

static int cmd_artifact(struct admin *a, int argc, char **argv) {
  static const char usage[] =
      "usage: ferry admin artifact <add> [flags]\n\n"
      "  add --tenant T --name N --version V (--file PATH | --uri URI --sha256 HEX --size N)\n"
      "      [--kind script|nixos] [--compatible hw[/rev],...] [--allow-downgrade]\n"
      "                                   sign an artifact manifest and register it\n";
  const char *sub = NULL;
  int st = subcommand(a, usage, &argc, &argv, &sub);
  if (st >= 0)
    return st;
  if (strcmp(sub, "add") == 0)
    return artifact_add(a, argc, argv);
  return fy_applet_fail(a->proc, "admin artifact", FY_EXIT_USAGE, "unknown subcommand '%s' (add)", sub);
}

/* The rollout's policy from the flags; -1 or an exit status. */
static int policy_flags(struct admin *a, struct fy_rollout_policy *p) {
  struct fy_err err = {0};
  fy_rollout_policy_default(p);
  p->grace_ms = (uint64_t)fy_cfg_num(&a->cfg, "grace");
  p->action_timeout_ms = (uint64_t)fy_cfg_num(&a->cfg, "action_timeout");
  p->skip_offline = fy_cfg_bool(&a->cfg, "skip_offline");
  p->abort_on_zero_eligible = fy_cfg_bool(&a->cfg, "abort_on_zero");
  if (fy_admin_percent_parse(fy_cfg_str(&a->cfg, "min_success"), &p->min_success_permille, &err) < 0)
    return fail(a, FY_EXIT_USAGE, "--min-success: %s", err.msg);
  const char *mf = fy_cfg_str(&a->cfg, "max_failures");
  if (strcmp(mf, "any") == 0) {
    p->max_failures = UINT32_MAX;
  } else {
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(mf, &end, 10);
    if (!*mf || *mf == '-' || *end || errno || v >= UINT32_MAX)
      return fail(a, FY_EXIT_USAGE, "--max-failures: '%.40s' is not a count (or 'any')", mf);
    p->max_failures = (uint32_t)v;
  }
  return -1;
}

static int rollout_create(struct admin *a, int argc, char **argv) {
  a->name = "admin rollout create";
  int st = start(
      a, rollout_create_keys, FY_ARRAY_LEN(rollout_create_keys), argc, argv,
      "ferry admin rollout create --tenant T --artifact NAME@VERSION [--selector k=v,...] "
      "[--channel C] [--waves 3 | --waves 10,50,100] [--grace 30s] [--min-success 100%] [--max-failures 0] "
      "[--no-skip-offline] [--no-abort-on-zero] [--action-timeout 10m] [--id ID] [flags]",
      "Signs and queues rollout.create: a draft rollout of an artifact (see `artifact\n"
      "add`) to the tenant's agents whose labels match the selector (and, with\n"
      "--channel, that are on the channel). The agents are chosen and split into\n"
      "waves at `rollout start`; pinned, assigned and incompatible agents are skipped\n"
      "then, with the reason. Prints the rollout's id on stdout (notes and the result go\n"
      "to stderr). Exit 0 applied, 1 refused, 75 when the coordinator was not reached\n"
      "(the command stays queued).");
  if (st >= 0 || (st = need_args(a, 0, "no arguments")) >= 0)
    return finish(a, st);
  struct fy_err err = {0};
  const char *tenant = fy_cfg_str(&a->cfg, "tenant"), *ref = fy_cfg_str(&a->cfg, "artifact"),
             *id_flag = fy_cfg_str(&a->cfg, "id");
  if (!tenant || !ref)
    return finish(a, fail(a, FY_EXIT_USAGE, "%s", "--tenant T and --artifact NAME@VERSION are required"));
  char name[FY_MANIFEST_NAME_MAX + 1], version[FY_SEMVER_TEXT_MAX + 1], id[FY_ADMIN_ROLLOUT_ID_MAX + 1];
  struct fy_labels selector = {0};
  struct fy_admin_rollout_args ra = {.name = name, .version = version, .selector = &selector, .id = id};
  if (fy_tenant_check(tenant, &err) < 0 ||
      fy_admin_artifact_ref_parse(ref, name, sizeof(name), version, sizeof(version), &err) < 0 ||
      fy_labels_parse(fy_cfg_str(&a->cfg, "selector"), &selector, &err) < 0)
    return finish(a, fail(a, FY_EXIT_USAGE, "%s", err.msg));
  if ((st = policy_flags(a, &ra.policy)) >= 0)
    return finish(a, st);
  if (id_flag) {
    if (!fy_admin_rollout_id_ok(id_flag))
      return finish(a, fail(a, FY_EXIT_USAGE, "--id: '%.40s' must be 1..%d of [a-z0-9._-]", id_flag,
                            FY_ADMIN_ROLLOUT_ID_MAX));
    snprintf(id, sizeof(id), "%s", id_flag);
  } else {
    uint8_t rnd[2];
    randombytes_buf(rnd, sizeof(rnd));
    fy_admin_rollout_default_id(name, version, rnd, id);
  }
  ra.waves = fy_cfg_str(&a->cfg, "waves");
  ra.channel = fy_cfg_str(&a->cfg, "channel");
  if (ra.channel[0] && !fy_channel_ok(ra.channel))
    return finish(
        a, fail(a, FY_EXIT_USAGE, "--channel '%.40s': use 1..%d of [a-z0-9._-]", ra.channel, FY_CHANNEL_MAX));
  FY_AUTOBUF struct fy_buf args = FY_BUF_INIT;
  if (fy_admin_args_rollout_create(&ra, &args, &err) < 0)
    return finish(a, fail(a, FY_EXIT_USAGE, "--waves: %s", err.msg));
  if ((st = open_session(a)) >= 0)
    return finish(a, st);
  uint8_t eid[32];
  if (fy_admin_session_queue(a->s, tenant, "rollout.create", args.data, args.len, eid, &err) < 0)
    return finish(a, fail(a, FY_EXIT_FAIL, "%s", err.msg));
  fprintf(a->proc->out, "%s\n", id);
  fflush(a->proc->out);
  fprintf(a->proc->errout,
          "rollout %s: %s %s to %s in tenant %s, waves %s (start it with `ferry admin rollout start %s`)\n",
          id, name, version, selector.n ? fy_cfg_str(&a->cfg, "selector") : "every agent", tenant, ra.waves,
          id);
  struct fy_admin_view v = a->v;
  v.out = a->proc->errout; /* stdout carries only the id */
  return finish(a, deliver_and_report(a, (const uint8_t(*)[32])eid, 1, &v));
}

/* The rollout's tenant from the coordinator: -1 and tenant filled, or an exit status. */
static int rollout_tenant(struct admin *a, const char *id, char *tenant, size_t tsize) {
  struct fy_err err = {0};
  FY_AUTOBUF struct fy_buf req = FY_BUF_INIT, reply = FY_BUF_INIT;
  if (fy_admin_query_encode("rollout", "id", id, &req, &err) < 0)
    return fail(a, FY_EXIT_FAIL, "%s", err.msg);
  int rc = fy_admin_session_query(a->s, req.data, req.len, &reply, NULL, &err);
  if (rc == FY_EAGAIN)
    return fail(a, FY_EXIT_USAGE, "the coordinator is unreachable (%s): give the rollout's --tenant T",
                err.msg);
  if (rc < 0)
    return fail(a, FY_EXIT_FAIL, "%s", err.msg);
  msgpack_zone zone;
  msgpack_object o;
  rc = fy_admin_reply_unpack(reply.data, reply.len, "rollout reply", &zone, &o, &err);
  const msgpack_object *t = fy_admin_map_get(fy_admin_map_get(&o, "rollout"), "tenant");
  if (rc == 0 && t && t->type == MSGPACK_OBJECT_STR && t->via.str.size < tsize) {
    memcpy(tenant, t->via.str.ptr, t->via.str.size);
    tenant[t->via.str.size] = '\0';
  } else if (rc == 0) {
    rc = fy_err_set(&err, FY_EINVAL, "rollout reply: rollout.tenant is not a tenant");
  }
  msgpack_zone_destroy(&zone);
  return rc < 0 ? fail(a, FY_EXIT_FAIL, "%s", err.msg) : -1;
}

static int rollout_move(struct admin *a, const char *sub, int argc, char **argv) {
  static const char *const what[][2] = {
      {"start", "chooses the agents (tenant, selector, channel; pinned, assigned and incompatible\n"
                "agents are skipped with the reason), splits them into waves and starts the first wave"},
      {"pause", "holds the rollout: no new wave starts (agents already told go on)"},
      {"resume", "lets a paused rollout go on"},
      {"abort", "stops the rollout for good: no new wave starts"},
      {"retry", "sends the artifact again to the agents that failed (of a failed or partial\n"
                "rollout), starting from the first wave that has one"},
  };
  const char *help = NULL;
  for (size_t i = 0; i < FY_ARRAY_LEN(what); i++)
    if (strcmp(what[i][0], sub) == 0)
      help = what[i][1];
  char name[64], synopsis[128], description[512], cmd[32];
  snprintf(name, sizeof(name), "admin rollout %s", sub);
  a->name = name;
  snprintf(synopsis, sizeof(synopsis), "ferry admin rollout %s ID [--tenant T] [flags]", sub);
  snprintf(description, sizeof(description),
           "Signs and queues rollout.%s:\n%s.\n"
           "The rollout's tenant is looked up on the coordinator unless --tenant is given.\n"
           "Exit 0 applied, 1 refused, 75 when the coordinator was not reached (queued).",
           sub, help ? help : "");
  int st = start(a, rollout_move_keys, FY_ARRAY_LEN(rollout_move_keys), argc, argv, synopsis, description);
  if (st >= 0 || (st = need_args(a, 1, "one rollout ID")) >= 0)
    return finish(a, st);
  struct fy_err err = {0};
  const char *id = a->cfg.args[0], *tenant_flag = fy_cfg_str(&a->cfg, "tenant");
  FY_AUTOBUF struct fy_buf args = FY_BUF_INIT;
  if (fy_admin_args_rollout_id(id, &args, &err) < 0)
    return finish(a, fail(a, FY_EXIT_USAGE, "%s", err.msg));
  if (tenant_flag && fy_tenant_check(tenant_flag, &err) < 0)
    return finish(a, fail(a, FY_EXIT_USAGE, "--tenant: %s", err.msg));
  if ((st = open_session(a)) >= 0)
    return finish(a, st);
  char tenant[FY_TENANT_MAX + 1];
  if (tenant_flag)
    snprintf(tenant, sizeof(tenant), "%s", tenant_flag);
  else if ((st = rollout_tenant(a, id, tenant, sizeof(tenant))) >= 0)
    return finish(a, st);
  snprintf(cmd, sizeof(cmd), "rollout.%s", sub);
  return finish(a, command(a, tenant, cmd, &args, &a->v));
}

/* Polls the rollout until it is final: bars redrawn in place on a terminal,
 * a line (or a JSON document) per change otherwise. */
static int rollout_watch(struct admin *a, int argc, char **argv) {
  a->name = "admin rollout watch";
  int st = start(a, rollout_watch_keys, FY_ARRAY_LEN(rollout_watch_keys), argc, argv,
                 "ferry admin rollout watch ID [--interval 1s] [flags]",
                 "Follows a rollout until it is completed, partial, failed or aborted: on a\n"
                 "terminal a progress bar per wave, redrawn in place; otherwise one line per\n"
                 "change (with --json one JSON document per change). Exit 0 when it completed,\n"
                 "1 when it ended partial, failed or aborted (or cannot be followed).");
  if (st >= 0 || (st = need_args(a, 1, "one rollout ID")) >= 0 || (st = open_session(a)) >= 0)
    return finish(a, st);
  struct fy_err err = {0};
  const char *id = a->cfg.args[0];
  uint64_t interval = (uint64_t)fy_cfg_num(&a->cfg, "interval");
  bool tty = !a->v.json && isatty(fileno(a->proc->out));
  FY_AUTOBUF struct fy_buf req = FY_BUF_INIT, last = FY_BUF_INIT;
  if (fy_admin_query_encode("rollout", "id", id, &req, &err) < 0)
    return finish(a, fail(a, FY_EXIT_FAIL, "%s", err.msg));
  struct fy_admin_rollout *r = malloc(sizeof(*r));
  char(*lines)[FY_ADMIN_FRAME_LINE_MAX] = calloc(FY_WAVES_MAX + 3, sizeof(*lines));
  if (!r || !lines) {
    free(r);
    free(lines);
    return finish(a, fail(a, FY_EXIT_FAIL, "%s", "out of memory"));
  }
  size_t drawn = 0;
  bool reached = false, noted = false;
  st = -1;
  while (st < 0) {
    FY_AUTOBUF struct fy_buf reply = FY_BUF_INIT;
    int rc = fy_admin_session_query(a->s, req.data, req.len, &reply, NULL, &err);
    if (rc == FY_EAGAIN && reached) {
      /* A coordinator restarting mid-rollout: keep asking. */
      if (!noted)
        fprintf(a->proc->errout, "ferry %s: coordinator unreachable (%s); still trying\n", a->name, err.msg);
      noted = true;
      fy_admin_session_sleep(a->s, interval);
      continue;
    }
    if (rc == FY_EAGAIN) {
      st = fail(a, FY_EXIT_FAIL, "coordinator unreachable: %s", err.msg);
      break;
    }
    if (rc < 0 || fy_admin_rollout_read(reply.data, reply.len, r, &err) < 0) {
      st = fail(a, FY_EXIT_FAIL, "%s", err.msg);
      break;
    }
    reached = true;
    noted = false;
    /* What counts as a change: the rendering for people, the reply for JSON. */
    FY_AUTOBUF struct fy_buf shown = FY_BUF_INIT;
    size_t n = 0;
    if (a->v.json) {
      fy_buf_append(&shown, reply.data, reply.len, NULL);
    } else if (tty) {
      n = fy_admin_rollout_frame(r, lines, FY_WAVES_MAX + 3);
      for (size_t i = 0; i < n; i++)
        fy_buf_append(&shown, lines[i], strlen(lines[i]) + 1, NULL);
    } else {
      fy_admin_rollout_summary(r, lines[0], FY_ADMIN_FRAME_LINE_MAX);
      fy_buf_append(&shown, lines[0], strlen(lines[0]) + 1, NULL);
    }
    if (shown.len != last.len || (shown.len && memcmp(shown.data, last.data, shown.len) != 0)) {
      if (a->v.json) {
        a->v.now_ms = now_ms();
        if (fy_admin_view_rollout(&a->v, reply.data, reply.len, &err) < 0) {
          st = fail(a, FY_EXIT_FAIL, "%s", err.msg);
          break;
        }
      } else if (tty) {
        if (drawn)
          fprintf(a->proc->out, "\x1b[%zuA\x1b[J", drawn); /* up over the last frame, clear below */
        for (size_t i = 0; i < n; i++)
          fprintf(a->proc->out, "\x1b[2K%s\n", lines[i]);
        drawn = n;
      } else {
        fprintf(a->proc->out, "%s\n", lines[0]);
      }
      fflush(a->proc->out);
      last.len = 0;
      fy_buf_append(&last, shown.data, shown.len, NULL);
    }
    if (r->final)
      st = r->st == FY_ROLLOUT_COMPLETED ? FY_EXIT_OK : FY_EXIT_FAIL;
    else
      fy_admin_session_sleep(a->s, interval);
  }
  free(r);
  free(lines);
  return finish(a, st);
}

static int cmd_rollout(struct admin *a, int argc, char **argv) {
  static const char usage[] =
      "usage: ferry admin rollout <command> [flags]\n\n"
      "  create --tenant T --artifact NAME@VERSION [--selector k=v,..] [--waves 3|10,50,100]\n"
      "         [--grace 30s] [--min-success 100%] [--max-failures 0] [--no-skip-offline]\n"
      "         [--no-abort-on-zero] [--action-timeout 10m] [--id ID]   a draft rollout; prints its id\n"
      "  start|pause|resume|abort|retry ID [--tenant T]                 move a rollout\n"
      "  list                                                           the rollouts\n"
      "  show ID                                                        one rollout, wave by wave\n"
      "  watch ID [--interval 1s]                                       follow it until it ends\n";
  const char *sub = NULL;
  int st = subcommand(a, usage, &argc, &argv, &sub);
  if (st >= 0)
    return st;
  if (strcmp(sub, "create") == 0)
    return rollout_create(a, argc, argv);
  if (strcmp(sub, "watch") == 0)
    return rollout_watch(a, argc, argv);
  static const char *const moves[] = {"start", "pause", "resume", "abort", "retry"};
  for (size_t i = 0; i < FY_ARRAY_LEN(moves); i++)
    if (strcmp(sub, moves[i]) == 0)
      return rollout_move(a, moves[i], argc, argv);
  if (strcmp(sub, "list") == 0) {
    a->name = "admin rollout list";
    st = start(a, NULL, 0, argc, argv, "ferry admin rollout list [flags]",
               "Lists the rollouts within your tenants: id, tenant, artifact, state, current\n"
               "wave, and why it stopped.");
    if (st >= 0 || (st = need_args(a, 0, "no arguments")) >= 0 || (st = open_session(a)) >= 0)
      return finish(a, st);
    return finish(a, query(a, "rollouts", NULL, NULL, fy_admin_view_rollouts));
  }
  if (strcmp(sub, "show") == 0) {
    a->name = "admin rollout show";
    st = start(a, NULL, 0, argc, argv, "ferry admin rollout show ID [flags]",
               "Shows one rollout: its fields and policy, then wave by wave the agents with\n"
               "their state and last message.");
    if (st >= 0 || (st = need_args(a, 1, "one rollout ID")) >= 0 || (st = open_session(a)) >= 0)
      return finish(a, st);
    return finish(a, query(a, "rollout", "id", a->cfg.args[0], fy_admin_view_rollout));
  }
  return fy_applet_fail(a->proc, "admin rollout", FY_EXIT_USAGE,
                        "unknown subcommand '%s' (create | start | pause | resume | abort | retry | list | "
                        "show | watch)",
                        sub);
}

int fy_admin_main(int argc, char **argv, const struct fy_proc *proc) {
  static const char usage[] =
      "usage: ferry admin <command> [flags]\n\n"
      "Signs fleet commands and queues them for the coordinator; asks it about the fleet.\n\n"
      "  status                                   the coordinator and this admin's queue\n"
      "  agents list|show|log|approve|revoke      agents\n"
      "  admins list|add|remove                   admins and their roles\n"
      "  enroll create|list|revoke                enrollment tickets\n"
      "  artifact add                             sign and register an artifact\n"
      "  rollout create|start|pause|resume|abort|retry|list|show|watch\n"
      "                                           staged rollouts of an artifact\n"
      "  sync                                     deliver queued commands now, print results\n\n"
      "Every command takes --coordinator ID@HOST:PORT (or FERRY_COORDINATOR), --key-file,\n"
      "--data-dir, --timeout, --wait, --json, --cmd-ttl, and the built-in --config FILE,\n"
      "--log-level LEVEL, --print-config; `ferry admin <command> --help` says more.\n";
  if (argc < 2) {
    fputs(usage, proc->errout);
    return FY_EXIT_USAGE;
  }
  const char *c = argv[1];
  if (strcmp(c, "--help") == 0 || strcmp(c, "-h") == 0) {
    fputs(usage, proc->out);
    return FY_EXIT_OK;
  }
  struct admin *a = calloc(1, sizeof(*a));
  if (!a)
    return fy_applet_fail(proc, "admin", FY_EXIT_FAIL, "out of memory");
  a->proc = proc;
  int st;
  if (strcmp(c, "status") == 0) {
    a->name = "admin status";
    st = cmd_status(a, argc - 1, argv + 1);
  } else if (strcmp(c, "agents") == 0) {
    a->name = "admin agents";
    st = cmd_agents(a, argc - 1, argv + 1);
  } else if (strcmp(c, "admins") == 0) {
    a->name = "admin admins";
    st = cmd_admins(a, argc - 1, argv + 1);
  } else if (strcmp(c, "enroll") == 0) {
    a->name = "admin enroll";
    st = cmd_enroll(a, argc - 1, argv + 1);
  } else if (strcmp(c, "artifact") == 0) {
    a->name = "admin artifact";
    st = cmd_artifact(a, argc - 1, argv + 1);
  } else if (strcmp(c, "rollout") == 0) {
    a->name = "admin rollout";
    st = cmd_rollout(a, argc - 1, argv + 1);
  } else if (strcmp(c, "sync") == 0) {
    a->name = "admin sync";
    st = cmd_sync(a, argc - 1, argv + 1);
  } else {
    st = fy_applet_fail(
        proc, "admin", FY_EXIT_USAGE,
        "unknown command '%s' (status | agents | admins | enroll | artifact | rollout | sync)", c);
  }
  free(a);
  return st;
}
