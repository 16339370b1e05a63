/* `ferry admin`: signs commands and queues them for the coordinator, and
 * asks the coordinator about the fleet (proto/fleet.md). */
#include <errno.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "admin/admin_cmd.h"
#include "admin/admin_view.h"
#include "app/applet.h"
#include "base/cleanup.h"
#include "fleet/ticket.h"
#include "fleet/trust.h"

#define EXIT_TEMPFAIL 75 /* EX_TEMPFAIL: queued, the coordinator not reached in time */
#define KEYS_MAX 16

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

static int cmd_agents(struct admin *a, int argc, char **argv) {
  static const char usage[] =
      "usage: ferry admin agents <list|show|approve|revoke> [flags]\n\n"
      "  list                                      every agent you can see\n"
      "  show ID                                   one agent: fields, facts, history\n"
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
  bool approve = strcmp(sub, "approve") == 0;
  if (!approve && strcmp(sub, "revoke") != 0)
    return fy_applet_fail(a->proc, "admin agents", FY_EXIT_USAGE,
                          "unknown subcommand '%s' (list | show | approve | revoke)", sub);
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

int fy_admin_main(int argc, char **argv, const struct fy_proc *proc) {
  static const char usage[] =
      "usage: ferry admin <command> [flags]\n\n"
      "Signs fleet commands and queues them for the coordinator; asks it about the fleet.\n\n"
      "  status                                   the coordinator and this admin's queue\n"
      "  agents list|show|approve|revoke          agents\n"
      "  admins list|add|remove                   admins and their roles\n"
      "  enroll create|list|revoke                enrollment tickets\n"
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
  } else if (strcmp(c, "sync") == 0) {
    a->name = "admin sync";
    st = cmd_sync(a, argc - 1, argv + 1);
  } else {
    st = fy_applet_fail(proc, "admin", FY_EXIT_USAGE,
                        "unknown command '%s' (status | agents | admins | enroll | sync)", c);
  }
  free(a);
  return st;
}
