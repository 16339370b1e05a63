/* `ferry agent`: runs on each managed machine (agent_run.h); `ferry agent
 * status` prints what the running agent last wrote, `ferry agent enroll`
 * enrolls a newcomer in one command. */
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent/agent_run.h"
#include "agent/agent_state.h"
#include "app/applet.h"
#include "base/cleanup.h"
#include "fleet/facts.h"

/* Every subcommand reads the same file, which is strict about unknown keys:
 * so each declares all of them. */
#define AGENT_KEYS                                                                                           \
  {.name = "data_dir",                                                                                       \
   .type = FY_CFG_PATH,                                                                                      \
   .def = "/var/lib/ferry/agent",                                                                            \
   .help = "directory holding the agent's store, status and apply state"},                                   \
      {.name = "key_file",                                                                                   \
       .type = FY_CFG_PATH,                                                                                  \
       .help = "the agent's ed25519 key, made on first start when missing; default DATA_DIR/node.key "       \
               "(/etc/ssh/ssh_host_ed25519_key works too)"},                                                 \
      {.name = "ticket",                                                                                     \
       .type = FY_CFG_STRING,                                                                                \
       .help = "enrollment ticket from `ferry admin enroll create`",                                         \
       .flags = FY_CFG_SECRET},                                                                              \
      {.name = "ticket_file",                                                                                \
       .type = FY_CFG_PATH,                                                                                  \
       .help = "file holding the enrollment ticket (default: DATA_DIR/ticket when it exists)"},              \
      {.name = "coordinator",                                                                                \
       .type = FY_CFG_STRING,                                                                                \
       .help = "ID@HOST:PORT[,HOST:PORT...]: enroll without a ticket and wait for an admin's approval"},     \
      {.name = "labels",                                                                                     \
       .type = FY_CFG_STRING,                                                                                \
       .def = "",                                                                                            \
       .help = "the agent's own labels, k=v,... (sent in facts)"},                                           \
      {.name = "version",                                                                                    \
       .type = FY_CFG_STRING,                                                                                \
       .def = "unknown",                                                                                     \
       .help = "the deployed version to report",                                                             \
       .min = 1,                                                                                             \
       .max = FY_FACTS_VERSION_MAX},                                                                         \
      {.name = "facts_interval",                                                                             \
       .type = FY_CFG_DURATION,                                                                              \
       .def = "1h",                                                                                          \
       .help = "how often facts are reported even when nothing changed",                                     \
       .min = 1000,                                                                                          \
       .max = 7LL * 24 * 3600 * 1000},                                                                       \
      {.name = "enroll_poll",                                                                                \
       .type = FY_CFG_DURATION,                                                                              \
       .def = "30s",                                                                                         \
       .help = "how often an agent waiting for approval asks again",                                         \
       .min = 100,                                                                                           \
       .max = 24LL * 3600 * 1000},                                                                           \
      {.name = "apply_command",                                                                              \
       .type = FY_CFG_STRING,                                                                                \
       .def = "",                                                                                            \
       .help = "installs a script artifact: a command line split on spaces (no shell), run with "            \
               "FERRY_ACTION=activate|rollback, FERRY_ARTIFACT, FERRY_VERSION, FERRY_PREVIOUS_VERSION, "     \
               "FERRY_PREVIOUS_ARTIFACT; exit 0 is success; empty: script rollouts fail"},                   \
      {.name = "health_command",                                                                             \
       .type = FY_CFG_STRING,                                                                                \
       .def = "",                                                                                            \
       .help = "checks the machine after an update (FERRY_ACTION=health): split on spaces, no shell; "       \
               "exit 0 is healthy, anything else rolls back; empty: always healthy"},                        \
      {.name = "apply_timeout",                                                                              \
       .type = FY_CFG_DURATION,                                                                              \
       .def = "10m",                                                                                         \
       .help = "longest an activation or a rollback may run before it is killed (and counts as failed)",     \
       .min = 1000,                                                                                          \
       .max = 24LL * 3600 * 1000},                                                                           \
      {.name = "health_timeout",                                                                             \
       .type = FY_CFG_DURATION,                                                                              \
       .def = "60s",                                                                                         \
       .help = "longest one health check may run before it is killed (and counts as unhealthy)",             \
       .min = 100,                                                                                           \
       .max = 3600LL * 1000},                                                                                \
      {.name = "health_retries",                                                                             \
       .type = FY_CFG_INT,                                                                                   \
       .def = "0",                                                                                           \
       .help = "health checks run again after a failing one before the update is rolled back",               \
       .min = 0,                                                                                             \
       .max = 1000},                                                                                         \
      {.name = "health_interval",                                                                            \
       .type = FY_CFG_DURATION,                                                                              \
       .def = "2s",                                                                                          \
       .help = "wait between health checks",                                                                 \
       .min = 0,                                                                                             \
       .max = 3600LL * 1000},                                                                                \
      {.name = "update_mode",                                                                                \
       .type = FY_CFG_ENUM,                                                                                  \
       .def = "follow",                                                                                      \
       .help = "follow: install what rollouts send; pinned: install nothing; assigned: run "                 \
               "assigned_version only; latest: also catch up with the channel's newest release",             \
       .choices = fy_update_mode_names},                                                                     \
      {.name = "channel",                                                                                    \
       .type = FY_CFG_STRING,                                                                                \
       .def = FY_CHANNEL_DEFAULT,                                                                            \
       .help = "release channel: rollouts on a channel select only its agents ([a-z0-9._-])",                \
       .min = 1,                                                                                             \
       .max = FY_CHANNEL_MAX},                                                                               \
      {.name = "assigned_version",                                                                           \
       .type = FY_CFG_STRING,                                                                                \
       .def = "",                                                                                            \
       .help = "with update_mode assigned: the version this machine runs, VERSION or NAME@VERSION",          \
       .max = FY_ASSIGNED_MAX},                                                                              \
      {.name = "hw_model",                                                                                   \
       .type = FY_CFG_STRING,                                                                                \
       .def = "",                                                                                            \
       .help = "this machine's hardware model, matched against a manifest's compatible list; empty: "        \
               "only manifests for every machine are installed",                                             \
       .max = 63},                                                                                           \
      {.name = "hw_revision",                                                                                \
       .type = FY_CFG_STRING,                                                                                \
       .def = "",                                                                                            \
       .help =                                                                                               \
           "this machine's hardware revision (with hw_model: matches compatible entries MODEL/REVISION)",    \
       .max = 63},                                                                                           \
      {.name = "keepalive",                                                                                  \
       .type = FY_CFG_DURATION,                                                                              \
       .def = "15s",                                                                                         \
       .help = "QUIC keepalive towards the coordinator (holds NAT bindings)",                                \
       .min = 100,                                                                                           \
       .max = 3600LL * 1000},                                                                                \
  {                                                                                                          \
    .name = "listen", .type = FY_CFG_STRING, .def = "0.0.0.0:0", .help = "local UDP address to dial from",   \
    .min = 1                                                                                                 \
  }

static const struct fy_cfg_key agent_keys[] = {AGENT_KEYS};
static const struct fy_cfg_key status_keys[] = {
    AGENT_KEYS,
    {.name = "json", .type = FY_CFG_BOOL, .def = "false", .help = "print JSON", .flags = FY_CFG_CLI_ONLY},
};

static int mkdir_p(const char *path, struct fy_err *err) {
  char buf[4096];
  if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
    return fy_err_set(err, FY_EINVAL, "%s: path too long", path);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/')
      continue;
    *p = '\0';
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
      return fy_err_errno(err, errno, "mkdir %s", buf);
    *p = '/';
  }
  if (mkdir(buf, 0700) != 0 && errno != EEXIST)
    return fy_err_errno(err, errno, "mkdir %s", buf);
  return 0;
}

static int parent_dir(const char *path, char *out, size_t size) {
  const char *slash = strrchr(path, '/');
  if (!slash)
    return snprintf(out, size, ".") >= (int)size ? -1 : 0;
  if (slash == path)
    return snprintf(out, size, "/") >= (int)size ? -1 : 0;
  return snprintf(out, size, "%.*s", (int)(slash - path), path) >= (int)size ? -1 : 0;
}

/* The agent's key, made (mode 0600) on first start. */
static int load_or_make_key(const char *path, struct fy_key *key, const struct fy_log *lg,
                            struct fy_err *err) {
  int rc = fy_key_load(key, path, err);
  if (rc != FY_ENOENT)
    return rc;
  char dir[4096];
  if (parent_dir(path, dir, sizeof(dir)) < 0)
    return fy_err_set(err, FY_EINVAL, "key file %s: path too long", path);
  if ((rc = mkdir_p(dir, err)) < 0 || (rc = fy_key_generate(key, err)) < 0)
    return rc;
  snprintf(key->comment, sizeof(key->comment), "ferry-agent");
  if ((rc = fy_key_save(key, path, err)) < 0) {
    fy_key_free(key);
    return rc;
  }
  char hex[FY_NODEID_HEX_LEN + 1];
  fy_nodeid_to_hex(&key->id, hex);
  fy_info(lg, "key.generated", "file", path, "node_id", hex);
  return 0;
}

static int read_small_file(const char *path, char *out, size_t cap, struct fy_err *err) {
  FY_AUTOCLOSE int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return fy_err_errno(err, errno, "ticket file %s", path);
  size_t n = 0;
  for (;;) {
    ssize_t r = read(fd, out + n, cap - 1 - n);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return fy_err_errno(err, errno, "ticket file %s", path);
    if (r == 0)
      break;
    n += (size_t)r;
    if (n == cap - 1)
      return fy_err_set(err, FY_ELIMIT, "ticket file %s: larger than %zu bytes", path, cap - 2);
  }
  out[n] = '\0';
  return 0;
}

/* Writes a secret file (mode 0600) atomically: tmp, fsync, rename. */
static int write_secret_file(const char *path, const char *text, struct fy_err *err) {
  char tmp[4200];
  snprintf(tmp, sizeof(tmp), "%s.tmp", path);
  unlink(tmp);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0)
    return fy_err_errno(err, errno, "%s", tmp);
  size_t len = strlen(text);
  bool ok = write(fd, text, len) == (ssize_t)len && write(fd, "\n", 1) == 1 && fsync(fd) == 0;
  int e = errno;
  if (close(fd) != 0 && ok) {
    ok = false;
    e = errno;
  }
  if (!ok || rename(tmp, path) != 0) {
    if (ok)
      e = errno;
    unlink(tmp);
    return fy_err_errno(err, e, "%s", path);
  }
  return 0;
}

static bool file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

#define ARGV_MAX 64

/* Splits text on spaces into argv (NULL-terminated), the words in buf.
 * 0: no words; 1: some; FY_EUSAGE when it does not fit. */
static int split_argv(const char *key, const char *text, char *buf, size_t cap, char **argv,
                      struct fy_err *err) {
  if (!text)
    text = "";
  if (snprintf(buf, cap, "%s", text) >= (int)cap)
    return fy_err_set(err, FY_EUSAGE, "--%s: longer than %zu bytes", key, cap - 1);
  size_t n = 0;
  for (char *save = NULL, *w = strtok_r(buf, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
    if (n == ARGV_MAX)
      return fy_err_set(err, FY_EUSAGE, "--%s: more than %d words", key, ARGV_MAX);
    argv[n++] = w;
  }
  argv[n] = NULL;
  return n > 0 ? 1 : 0;
}

/* The agent's inputs from its configuration; secrets wiped by settings_free. */
struct settings {
  struct fy_key key;
  struct fy_ticket ticket;
  bool has_ticket;
  char ticket_path[4096];
  struct fy_peerspec coordinator;
  bool has_coordinator;
  struct fy_labels labels;
  struct fy_update_prefs update;
  char own_ticket[4096]; /* DATA_DIR/ticket */
  char work_dir[4200];   /* DATA_DIR/artifacts */
  /* The commands split into argv: the words point into the copies. */
  char apply_text[4096], health_text[4096];
  char *apply_argv[ARGV_MAX + 1], *health_argv[ARGV_MAX + 1];
  bool has_apply, has_health;
  char key_file[4096]; /* DATA_DIR/node.key, when key_file is not set */
};

static void settings_free(struct settings *s) {
  fy_key_free(&s->key);
  sodium_memzero(&s->ticket, sizeof(s->ticket));
}

static int decode_ticket_text(const char *text, struct fy_ticket *out, struct fy_err *err) {
  return fy_ticket_decode(text, out, err) < 0 ? FY_EINVAL : 0;
}

static int read_update_prefs(const struct fy_cfg *cfg, struct fy_update_prefs *u, struct fy_err *err) {
  u->mode = (enum fy_update_mode)fy_cfg_num(cfg, "update_mode");
  const char *channel = fy_cfg_str(cfg, "channel"), *assigned = fy_cfg_str(cfg, "assigned_version");
  if (!fy_channel_ok(channel))
    return fy_err_set(err, FY_EUSAGE, "--channel '%s': use 1..%d of [a-z0-9._-]", channel, FY_CHANNEL_MAX);
  snprintf(u->channel, sizeof(u->channel), "%s", channel);
  if (u->mode == FY_UPDATE_ASSIGNED) {
    struct fy_assigned a;
    if (!assigned[0])
      return fy_err_set(err, FY_EUSAGE,
                        "--update-mode assigned needs --assigned-version VERSION or NAME@VERSION");
    if (fy_assigned_parse(assigned, &a, err) < 0) {
      fy_err_prefix(err, "--assigned-version");
      return FY_EUSAGE;
    }
  } else if (assigned[0]) {
    return fy_err_set(err, FY_EUSAGE, "--assigned-version is for --update-mode assigned (this is %s)",
                      fy_update_mode_name(u->mode));
  }
  snprintf(u->assigned, sizeof(u->assigned), "%s", assigned);
  snprintf(u->hw_model, sizeof(u->hw_model), "%s", fy_cfg_str(cfg, "hw_model"));
  snprintf(u->hw_revision, sizeof(u->hw_revision), "%s", fy_cfg_str(cfg, "hw_revision"));
  return 0;
}

/* Reads everything but the key; FY_EUSAGE for bad values. */
static int read_settings(const struct fy_cfg *cfg, struct settings *s, struct fy_err *err) {
  const char *dir = fy_cfg_str(cfg, "data_dir");
  snprintf(s->own_ticket, sizeof(s->own_ticket), "%s/%s", dir, FY_AGENT_TICKET_FILE);
  int words;
  if (fy_labels_parse(fy_cfg_str(cfg, "labels"), &s->labels, err) < 0)
    return fy_err_prefix(err, "--labels");
  if ((words = read_update_prefs(cfg, &s->update, err)) < 0)
    return words;
  words = split_argv("apply-command", fy_cfg_str(cfg, "apply_command"), s->apply_text, sizeof(s->apply_text),
                     s->apply_argv, err);
  if (words < 0)
    return words;
  s->has_apply = words == 1;
  words = split_argv("health-command", fy_cfg_str(cfg, "health_command"), s->health_text,
                     sizeof(s->health_text), s->health_argv, err);
  if (words < 0)
    return words;
  s->has_health = words == 1;
  snprintf(s->work_dir, sizeof(s->work_dir), "%s/artifacts", dir);
  const char *coord = fy_cfg_str(cfg, "coordinator");
  if (coord && *coord) {
    if (fy_peerspec_parse(coord, &s->coordinator, err) < 0)
      return fy_err_prefix(err, "--coordinator");
    s->has_coordinator = true;
  }
  const char *text = fy_cfg_str(cfg, "ticket");
  const char *file = fy_cfg_str(cfg, "ticket_file");
  if (text && *text && file)
    return fy_err_set(err, FY_EUSAGE, "--ticket and --ticket-file: give one of them");
  if (text && *text) {
    if (decode_ticket_text(text, &s->ticket, err) < 0)
      return FY_EUSAGE;
    s->has_ticket = true;
    return 0;
  }
  if (!file && file_exists(s->own_ticket))
    file = s->own_ticket;
  if (file) {
    FY_AUTOFREE char *buf = malloc(FY_TICKET_TEXT_MAX + 2);
    if (!buf)
      return fy_err_set(err, FY_ENOMEM, "out of memory");
    int rc = read_small_file(file, buf, FY_TICKET_TEXT_MAX + 2, err);
    if (rc == 0 && (rc = decode_ticket_text(buf, &s->ticket, err)) < 0)
      fy_err_prefix(err, "%s", file);
    sodium_memzero(buf, FY_TICKET_TEXT_MAX + 2);
    if (rc < 0)
      return rc;
    snprintf(s->ticket_path, sizeof(s->ticket_path), "%s", file);
    s->has_ticket = true;
  }
  return 0;
}

static void fill_options(const struct fy_cfg *cfg, struct settings *s, const struct fy_log *lg,
                         struct fy_agent_options *o) {
  *o = (struct fy_agent_options){
      .data_dir = fy_cfg_str(cfg, "data_dir"),
      .key = &s->key,
      .listen = fy_cfg_str(cfg, "listen"),
      .ticket = s->has_ticket ? &s->ticket : NULL,
      .ticket_path = s->ticket_path[0] ? s->ticket_path : NULL,
      .coordinator = s->has_coordinator ? &s->coordinator : NULL,
      .labels = &s->labels,
      .version = fy_cfg_str(cfg, "version"),
      .facts_interval_ms = (uint64_t)fy_cfg_num(cfg, "facts_interval"),
      .enroll_poll_ms = (uint64_t)fy_cfg_num(cfg, "enroll_poll"),
      .keepalive_ms = (uint64_t)fy_cfg_num(cfg, "keepalive"),
      .work_dir = s->work_dir,
      .apply_command = s->has_apply ? (const char *const *)s->apply_argv : NULL,
      .health_command = s->has_health ? (const char *const *)s->health_argv : NULL,
      .apply_timeout_ms = (uint64_t)fy_cfg_num(cfg, "apply_timeout"),
      .health_timeout_ms = (uint64_t)fy_cfg_num(cfg, "health_timeout"),
      .health_interval_ms = (uint64_t)fy_cfg_num(cfg, "health_interval"),
      .health_retries = (uint32_t)fy_cfg_num(cfg, "health_retries"),
      .update = &s->update,
      .log = lg,
  };
}

static const char *key_path(const struct fy_cfg *cfg, struct settings *s) {
  const char *k = fy_cfg_str(cfg, "key_file");
  if (k)
    return k;
  snprintf(s->key_file, sizeof(s->key_file), "%s/node.key", fy_cfg_str(cfg, "data_dir"));
  return s->key_file;
}

static int start_key(const struct fy_cfg *cfg, struct settings *s, const struct fy_log *lg,
                     struct fy_err *err) {
  int rc = fy_crypto_init(err);
  if (rc == 0)
    rc = load_or_make_key(key_path(cfg, s), &s->key, lg, err);
  if (rc == 0) {
    char hex[FY_NODEID_HEX_LEN + 1];
    fy_nodeid_to_hex(&s->key.id, hex);
    fy_info(lg, "agent.identity", "node_id", hex);
  }
  return rc;
}

static int run_agent(int argc, char **argv, const struct fy_proc *proc) {
  struct fy_cfg cfg;
  struct fy_log lg;
  int st =
      fy_applet_start(&cfg, &lg, proc, "agent", "agent", agent_keys, FY_ARRAY_LEN(agent_keys), argc, argv,
                      "ferry agent [flags]\n       ferry agent enroll [flags] TICKET\n"
                      "       ferry agent status [--json] [flags]",
                      "Dials out to the coordinator, enrolls (with a ticket, or by waiting for an\n"
                      "admin's approval), reports facts, keeps the admins' trust statements and\n"
                      "installs what rollouts send (checked against them), reporting each step.\n"
                      "Runs until SIGINT or SIGTERM. `ferry agent status` shows what it is doing.");
  if (st >= 0)
    return st;
  struct fy_err err = {0};
  struct settings *s = calloc(1, sizeof(*s));
  if (!s) {
    fy_cfg_free(&cfg);
    return fy_applet_fail(proc, "agent", FY_EXIT_FAIL, "out of memory");
  }
  char store_file[4200];
  snprintf(store_file, sizeof(store_file), "%s/store/data.mdb", fy_cfg_str(&cfg, "data_dir"));
  if (cfg.nargs > 0) {
    st = fy_applet_fail(proc, "agent", FY_EXIT_USAGE,
                        "unexpected argument '%s' (subcommands: enroll, status)", cfg.args[0]);
  } else if (read_settings(&cfg, s, &err) < 0) {
    st = fy_applet_fail(proc, "agent",
                        err.code == FY_EUSAGE || err.code == FY_EINVAL ? FY_EXIT_USAGE : FY_EXIT_FAIL, "%s",
                        err.msg);
  } else if (!s->has_ticket && !s->has_coordinator && !file_exists(store_file)) {
    /* Said before anything is created on disk. */
    st =
        fy_applet_fail(proc, "agent", FY_EXIT_USAGE,
                       "no coordinator: not enrolled yet, and neither a ticket (`ferry agent enroll TICKET`, "
                       "--ticket, --ticket-file) nor --coordinator ID@HOST:PORT is given");
  } else if (start_key(&cfg, s, &lg, &err) < 0) {
    st = fy_applet_fail(proc, "agent", FY_EXIT_FAIL, "%s", err.msg);
  } else {
    struct fy_agent_options o;
    fill_options(&cfg, s, &lg, &o);
    st = fy_agent_run(&o, NULL, &err);
    if (st != FY_EXIT_OK)
      fy_applet_fail(proc, "agent", st, "%s", err.msg);
  }
  settings_free(s);
  free(s);
  fy_cfg_free(&cfg);
  return st;
}

static int enroll(int argc, char **argv, const struct fy_proc *proc) {
  struct fy_cfg cfg;
  struct fy_log lg;
  int st = fy_applet_start(&cfg, &lg, proc, "agent", "agent enroll", agent_keys, FY_ARRAY_LEN(agent_keys),
                           argc, argv, "ferry agent enroll [flags] TICKET",
                           "Checks TICKET, keeps it as DATA_DIR/ticket (mode 0600) and runs the agent\n"
                           "until the coordinator enrolled it (exit 0) or refused it (exit 1). Start the\n"
                           "agent's service afterwards.");
  if (st >= 0)
    return st;
  struct fy_err err = {0};
  struct settings *s = calloc(1, sizeof(*s));
  if (!s) {
    fy_cfg_free(&cfg);
    return fy_applet_fail(proc, "agent enroll", FY_EXIT_FAIL, "out of memory");
  }
  const char *dir = fy_cfg_str(&cfg, "data_dir");
  if (cfg.nargs != 1) {
    st = fy_applet_fail(proc, "agent enroll", FY_EXIT_USAGE, "needs exactly one TICKET argument (got %zu)",
                        cfg.nargs);
  } else if (fy_labels_parse(fy_cfg_str(&cfg, "labels"), &s->labels, &err) < 0) {
    st = fy_applet_fail(proc, "agent enroll", FY_EXIT_USAGE, "--labels: %s", err.msg);
  } else if (read_update_prefs(&cfg, &s->update, &err) < 0 || /* the enrollment's facts carry them */
             decode_ticket_text(cfg.args[0], &s->ticket, &err) < 0) {
    st = fy_applet_fail(proc, "agent enroll", FY_EXIT_USAGE, "%s", err.msg);
  } else if (fy_crypto_init(&err) < 0 || mkdir_p(dir, &err) < 0) {
    st = fy_applet_fail(proc, "agent enroll", FY_EXIT_FAIL, "%s", err.msg);
  } else {
    s->has_ticket = true;
    snprintf(s->own_ticket, sizeof(s->own_ticket), "%s/%s", dir, FY_AGENT_TICKET_FILE);
    snprintf(s->ticket_path, sizeof(s->ticket_path), "%s", s->own_ticket);
    struct fy_agent_outcome out;
    if (s->ticket.expires_at <= (uint64_t)time(NULL) * 1000) {
      st = fy_applet_fail(proc, "agent enroll", FY_EXIT_FAIL,
                          "the ticket has expired: ask an admin for a new one");
    } else if (write_secret_file(s->own_ticket, cfg.args[0], &err) < 0 || start_key(&cfg, s, &lg, &err) < 0) {
      st = fy_applet_fail(proc, "agent enroll", FY_EXIT_FAIL, "%s", err.msg);
    } else {
      struct fy_agent_options o;
      fill_options(&cfg, s, &lg, &o);
      o.until_enrolled = true;
      st = fy_agent_run(&o, &out, &err);
      char hex[FY_NODEID_HEX_LEN + 1];
      fy_nodeid_to_hex(&out.coordinator, hex);
      if (st == FY_EXIT_OK && out.already_enrolled) {
        unlink(s->own_ticket);
        if (!fy_nodeid_equal(&out.coordinator, &s->ticket.coordinator))
          st = fy_applet_fail(
              proc, "agent enroll", FY_EXIT_FAIL,
              "already enrolled by coordinator %s, and the ticket is for another one; to move, "
              "stop the agent and remove %s",
              hex, dir);
        else
          fprintf(proc->out, "already enrolled in tenant %s by coordinator %s\n", out.tenant, hex);
      } else if (st == FY_EXIT_OK && out.enrolled) {
        fprintf(proc->out, "enrolled in tenant %s by coordinator %s\n", out.tenant, hex);
      } else if (st == FY_EXIT_OK) {
        st = fy_applet_fail(proc, "agent enroll", FY_EXIT_FAIL, "stopped before the coordinator enrolled it");
      } else {
        fy_applet_fail(proc, "agent enroll", st, "%s", err.msg);
      }
    }
  }
  settings_free(s);
  free(s);
  fy_cfg_free(&cfg);
  return st;
}

static int status(int argc, char **argv, const struct fy_proc *proc) {
  struct fy_cfg cfg;
  struct fy_log lg;
  int st = fy_applet_start(&cfg, &lg, proc, "agent", "agent status", status_keys, FY_ARRAY_LEN(status_keys),
                           argc, argv, "ferry agent status [--json] [flags]",
                           "Prints the state the agent last wrote to DATA_DIR/status: enrollment,\n"
                           "coordinator, link, tenant, labels, queued messages, last facts, and the\n"
                           "apply state (state, rollout, installed and previous version, last message).");
  if (st >= 0)
    return st;
  struct fy_err err = {0};
  struct fy_agent_status s;
  if (cfg.nargs > 0)
    st = fy_applet_fail(proc, "agent status", FY_EXIT_USAGE, "unexpected argument '%s'", cfg.args[0]);
  else if (fy_agent_status_read(fy_cfg_str(&cfg, "data_dir"), &s, &err) < 0 ||
           fy_agent_status_print(&s, fy_cfg_bool(&cfg, "json"), proc->out, &err) < 0)
    st = fy_applet_fail(proc, "agent status", FY_EXIT_FAIL, "%s", err.msg);
  else
    st = FY_EXIT_OK;
  fy_cfg_free(&cfg);
  return st;
}

int fy_agent_main(int argc, char **argv, const struct fy_proc *proc) {
  if (argc >= 2 && strcmp(argv[1], "enroll") == 0)
    return enroll(argc - 1, argv + 1, proc);
  if (argc >= 2 && strcmp(argv[1], "status") == 0)
    return status(argc - 1, argv + 1, proc);
  return run_agent(argc, argv, proc);
}
