/* `ferry coordinator`: the fleet's memory. `init` creates its key and store
 * and names the first owner; without a subcommand it serves. */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "app/applet.h"
#include "base/cleanup.h"
#include "coordinator/coord_serve.h"
#include "coordinator/coord_state.h"
#include "crypto/key.h"
#include "outbox/inbox.h"
#include "outbox/outbox.h"
#include "store/store.h"

#define COMMON_KEYS                                                                                          \
  {.name = "data_dir",                                                                                       \
   .type = FY_CFG_PATH,                                                                                      \
   .def = "/var/lib/ferry/coordinator",                                                                      \
   .help = "directory holding the coordinator's store"},                                                     \
      {.name = "key_file",                                                                                   \
       .type = FY_CFG_PATH,                                                                                  \
       .help = "the coordinator's ed25519 key (OpenSSH format); default DATA_DIR/node.key"},                 \
  {                                                                                                          \
    .name = "listen", .type = FY_CFG_STRING, .def = "[::]:4433", .help = "UDP address for QUIC"              \
  }

/* init and serve read the same file, which is strict about unknown keys:
 * so both declare every key. */
#define SERVE_KEYS                                                                                           \
  COMMON_KEYS,                                                                                               \
      {.name = "keepalive",                                                                                  \
       .type = FY_CFG_DURATION,                                                                              \
       .def = "0",                                                                                           \
       .min = 0,                                                                                             \
       .max = 3600000,                                                                                       \
       .help = "keep-alive probes on idle connections (0: the agents keep them alive)"},                     \
  {                                                                                                          \
    .name = "idle_timeout", .type = FY_CFG_DURATION, .def = "60s", .min = 1000, .max = 3600000,              \
    .help = "close connections silent for this long"                                                         \
  }

static const struct fy_cfg_key serve_keys[] = {SERVE_KEYS};

static const struct fy_cfg_key init_keys[] = {
    SERVE_KEYS,
    {.name = "owner",
     .type = FY_CFG_STRING,
     .flags = FY_CFG_CLI_ONLY,
     .help = "the first owner: a node id (64 hex) or an `ssh-ed25519 AAAA...` public key line"},
};

static void key_path(const struct fy_cfg *cfg, char *out, size_t size) {
  const char *kf = fy_cfg_str(cfg, "key_file");
  if (kf)
    snprintf(out, size, "%s", kf);
  else
    snprintf(out, size, "%s/node.key", fy_cfg_str(cfg, "data_dir"));
}

static uint64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int init_main(int argc, char **argv, const struct fy_proc *proc) {
  struct fy_cfg cfg;
  struct fy_log lg;
  int st =
      fy_applet_start(&cfg, &lg, proc, "coordinator", "coordinator init", init_keys, FY_ARRAY_LEN(init_keys),
                      argc, argv, "ferry coordinator init --owner ID [flags]",
                      "Creates the coordinator's key (unless key_file exists) and its store in data_dir,\n"
                      "and records the first owner: the root of the fleet's trust, fixed for the\n"
                      "coordinator's life. Run once; then `ferry coordinator` serves.");
  if (st >= 0)
    return st;
  const char *name = "coordinator init";
  const char *owner_text = fy_cfg_str(&cfg, "owner");
  const char *dir = fy_cfg_str(&cfg, "data_dir");
  struct fy_err err = {0};
  struct fy_nodeid owner;
  struct fy_key key = {0};
  struct fy_store *store = NULL;
  char kpath[4096];
  key_path(&cfg, kpath, sizeof(kpath));
  if (cfg.nargs > 0) {
    st = fy_applet_fail(proc, name, FY_EXIT_USAGE, "unexpected argument '%s'", cfg.args[0]);
    goto out;
  }
  if (!owner_text) {
    st = fy_applet_fail(proc, name, FY_EXIT_USAGE,
                        "--owner is required: the admin's node id (`ferry key show --id FILE`) or its "
                        "ssh-ed25519 public key line");
    goto out;
  }
  if (fy_nodeid_parse(owner_text, &owner, &err) < 0) {
    st = fy_applet_fail(proc, name, FY_EXIT_USAGE, "--owner: %s", err.msg);
    goto out;
  }
  if (fy_crypto_init(&err) < 0) {
    st = fy_applet_fail(proc, name, FY_EXIT_FAIL, "%s", err.msg);
    goto out;
  }
  if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
    st = fy_applet_fail(proc, name, FY_EXIT_FAIL, "data_dir %s: %s", dir, strerror(errno));
    goto out;
  }
  bool made_key = false;
  if (fy_key_load(&key, kpath, &err) < 0) {
    if (err.code != FY_ENOENT) {
      st = fy_applet_fail(proc, name, FY_EXIT_FAIL, "%s", err.msg);
      goto out;
    }
    snprintf(key.comment, sizeof(key.comment), "ferry coordinator");
    if (fy_key_generate(&key, &err) < 0 || fy_key_save(&key, kpath, &err) < 0) {
      st = fy_applet_fail(proc, name, FY_EXIT_FAIL, "%s", err.msg);
      goto out;
    }
    made_key = true;
  }
  const struct fy_store_schema *schemas[] = {&fy_outbox_schema, &fy_inbox_schema, &fy_coord_schema};
  if (fy_store_open(&store, dir, schemas, FY_ARRAY_LEN(schemas), &(struct fy_store_opts){.log = &lg}, &err) <
          0 ||
      fy_coord_init_store(store, &key.id, &owner, 1, wall_ms(), &err) < 0) {
    st = fy_applet_fail(proc, name, err.code == FY_EEXIST ? FY_EXIT_USAGE : FY_EXIT_FAIL, "%s: %s", dir,
                        err.msg);
    goto out;
  }
  char hex[FY_NODEID_HEX_LEN + 1], ohex[FY_NODEID_HEX_LEN + 1];
  fy_nodeid_to_hex(&key.id, hex);
  fy_nodeid_to_hex(&owner, ohex);
  fy_info(&lg, "coordinator.init", "data_dir", dir, "key_file", kpath, "node_id", hex, "owner", ohex);
  fprintf(proc->out, "coordinator %s\n", hex);
  fprintf(proc->out, "key: %s (%s)\nstore: %s\nowner: %s\n", kpath, made_key ? "new" : "existing", dir, ohex);
  fprintf(proc->out, "next: `ferry coordinator --data-dir %s` prints the --coordinator value for admins\n",
          dir);
  st = FY_EXIT_OK;
out:
  fy_store_close(store);
  fy_key_free(&key);
  fy_cfg_free(&cfg);
  return st;
}

static int serve_main(int argc, char **argv, const struct fy_proc *proc) {
  struct fy_cfg cfg;
  struct fy_log lg;
  int st = fy_applet_start(&cfg, &lg, proc, "coordinator", "coordinator", serve_keys,
                           FY_ARRAY_LEN(serve_keys), argc, argv, "ferry coordinator [init] [flags]",
                           "Serves the fleet: enrollment, facts and signed admin commands (rollouts come\n"
                           "next). Prints its node id, its addresses and the --coordinator value admins\n"
                           "use. `ferry coordinator init --help` tells how to create one.");
  if (st >= 0)
    return st;
  const char *name = "coordinator";
  struct fy_err err = {0};
  struct fy_key key = {0};
  char kpath[4096];
  key_path(&cfg, kpath, sizeof(kpath));
  if (cfg.nargs > 0) {
    st = fy_applet_fail(proc, name, FY_EXIT_USAGE, "unknown subcommand '%s' (init)", cfg.args[0]);
  } else if (fy_crypto_init(&err) < 0 || fy_key_load(&key, kpath, &err) < 0) {
    if (err.code == FY_ENOENT)
      st = fy_applet_fail(proc, name, FY_EXIT_FAIL, "%s: run `ferry coordinator init --owner ID` first",
                          err.msg);
    else
      st = fy_applet_fail(proc, name, FY_EXIT_FAIL, "%s", err.msg);
  } else {
    struct fy_coord_serve_config scfg = {
        .data_dir = fy_cfg_str(&cfg, "data_dir"),
        .key = &key,
        .listen = fy_cfg_str(&cfg, "listen"),
        .keepalive_ms = (uint64_t)fy_cfg_num(&cfg, "keepalive"),
        .idle_timeout_ms = (uint64_t)fy_cfg_num(&cfg, "idle_timeout"),
        .log = &lg,
        .out = proc->out,
    };
    if (fy_coord_serve(&scfg, &err) < 0)
      st = fy_applet_fail(proc, name, FY_EXIT_FAIL, "%s", err.msg);
    else
      st = FY_EXIT_OK;
  }
  fy_key_free(&key);
  fy_cfg_free(&cfg);
  return st;
}

int fy_coordinator_main(int argc, char **argv, const struct fy_proc *proc) {
  if (argc >= 2 && strcmp(argv[1], "init") == 0)
    return init_main(argc - 1, argv + 1, proc);
  return serve_main(argc, argv, proc);
}
