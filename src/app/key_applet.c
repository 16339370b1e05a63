/* `ferry key`: make and inspect node identities. */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "app/applet.h"
#include "base/cleanup.h"
#include "crypto/key.h"
#include "crypto/openssh.h"

static const struct fy_cfg_key generate_keys[] = {
    {.name = "out",
     .type = FY_CFG_PATH,
     .help = "where to write the private key (mode 0600; never overwritten)",
     .flags = FY_CFG_CLI_ONLY},
    {.name = "comment",
     .type = FY_CFG_STRING,
     .def = "ferry",
     .help = "comment stored in the key file",
     .flags = FY_CFG_CLI_ONLY},
};

static const struct fy_cfg_key show_keys[] = {
    {.name = "id",
     .type = FY_CFG_BOOL,
     .def = "false",
     .help = "print only the node id (for scripts)",
     .flags = FY_CFG_CLI_ONLY},
};

static int generate(int argc, char **argv, const struct fy_proc *proc) {
  struct fy_cfg cfg;
  struct fy_log lg;
  int st = fy_applet_start(&cfg, &lg, proc, "key", "key generate", generate_keys, FY_ARRAY_LEN(generate_keys),
                           argc, argv, "ferry key generate --out FILE",
                           "Generates an ed25519 node key, writes it as an unencrypted OpenSSH private key\n"
                           "with mode 0600 (ssh-keygen -y reads it), and prints the node id.");
  if (st >= 0)
    return st;
  struct fy_err err = {0};
  const char *out = fy_cfg_str(&cfg, "out");
  if (!out) {
    st = fy_applet_fail(proc, "key generate", FY_EXIT_USAGE, "--out FILE is required");
  } else if (cfg.nargs > 0) {
    st = fy_applet_fail(proc, "key generate", FY_EXIT_USAGE, "unexpected argument '%s'", cfg.args[0]);
  } else {
    struct fy_key key = {0};
    if (fy_crypto_init(&err) < 0 || fy_key_generate(&key, &err) < 0) {
      st = fy_applet_fail(proc, "key generate", FY_EXIT_FAIL, "%s", err.msg);
    } else {
      snprintf(key.comment, sizeof(key.comment), "%s", fy_cfg_str(&cfg, "comment"));
      if (fy_key_save(&key, out, &err) < 0) {
        st = fy_applet_fail(proc, "key generate", FY_EXIT_FAIL, "%s", err.msg);
      } else {
        char hex[FY_NODEID_HEX_LEN + 1];
        fy_nodeid_to_hex(&key.id, hex);
        fy_info(&lg, "key.generated", "file", out, "node_id", hex);
        fprintf(proc->out, "%s\n", hex);
        st = FY_EXIT_OK;
      }
    }
    fy_key_free(&key);
  }
  fy_cfg_free(&cfg);
  return st;
}

/* A key argument may be a private key file, a public key file (one line), or
 * a node id / ssh-ed25519 line given directly. */
static int resolve_identity(const char *arg, struct fy_nodeid *id, char *comment, size_t comment_cap,
                            struct fy_err *err) {
  struct stat st;
  if (stat(arg, &st) != 0) {
    int saved = errno;
    /* Not a file: it may name a key directly. A path-like argument that is
     * not a key line gets the file error, which is what its author meant. */
    if (saved != ENOENT)
      return fy_err_errno(err, saved, "%s", arg);
    if (fy_nodeid_parse(arg, id, err) == 0)
      return 0;
    if (strchr(arg, '/') && strncmp(arg, "ssh-", 4) != 0)
      return fy_err_errno(err, saved, "%s", arg);
    return fy_err_prefix(err, "'%.80s' is neither a file nor a node id", arg);
  }
  FY_AUTOFCLOSE FILE *f = fopen(arg, "r");
  if (!f)
    return fy_err_errno(err, errno, "%s", arg);
  char head[40] = {0};
  size_t n = fread(head, 1, sizeof(head) - 1, f);
  if (n >= 10 && strncmp(head, "-----BEGIN", 10) == 0) {
    struct fy_key key = {0};
    int rc = fy_key_load(&key, arg, err);
    if (rc == 0) {
      *id = key.id;
      snprintf(comment, comment_cap, "%s", key.comment);
    }
    fy_key_free(&key);
    return rc;
  }
  /* A public key file: the first line holds the key. */
  char line[4096];
  rewind(f);
  if (!fgets(line, sizeof(line), f))
    return fy_err_set(err, FY_EINVAL, "%s: empty file", arg);
  line[strcspn(line, "\n")] = '\0';
  int rc = fy_nodeid_parse(line, id, err);
  if (rc < 0)
    return fy_err_prefix(err, "%s", arg);
  /* Keep the comment of an `ssh-ed25519 AAAA... comment` line. */
  const char *sp = strchr(line, ' ');
  sp = sp ? strchr(sp + 1, ' ') : NULL;
  snprintf(comment, comment_cap, "%s", sp ? sp + 1 : "");
  return 0;
}

static int show(int argc, char **argv, const struct fy_proc *proc) {
  struct fy_cfg cfg;
  struct fy_log lg;
  int st = fy_applet_start(&cfg, &lg, proc, "key", "key show", show_keys, FY_ARRAY_LEN(show_keys), argc, argv,
                           "ferry key show [--id] KEY",
                           "Prints the node id, the fingerprint (as ssh-keygen -l shows it) and the\n"
                           "OpenSSH public key of KEY: a private key file (ferry's or OpenSSH's\n"
                           "ed25519 key, e.g. /etc/ssh/ssh_host_ed25519_key), a .pub file, a node id,\n"
                           "or an 'ssh-ed25519 AAAA...' line.");
  if (st >= 0)
    return st;
  struct fy_err err = {0};
  if (cfg.nargs != 1) {
    st = fy_applet_fail(proc, "key show", FY_EXIT_USAGE, "needs exactly one KEY argument (got %zu)",
                        cfg.nargs);
    fy_cfg_free(&cfg);
    return st;
  }
  struct fy_nodeid id;
  char comment[256] = "";
  if (fy_crypto_init(&err) < 0 || resolve_identity(cfg.args[0], &id, comment, sizeof(comment), &err) < 0) {
    st = fy_applet_fail(proc, "key show", FY_EXIT_FAIL, "%s", err.msg);
    fy_cfg_free(&cfg);
    return st;
  }
  char hex[FY_NODEID_HEX_LEN + 1], fpr[FY_FINGERPRINT_MAX];
  fy_nodeid_to_hex(&id, hex);
  if (fy_cfg_bool(&cfg, "id")) {
    fprintf(proc->out, "%s\n", hex);
  } else {
    fy_nodeid_fingerprint(&id, fpr);
    FY_AUTOFREE char *pub = NULL;
    if (fy_openssh_format_public(id.key, comment, &pub, &err) < 0) {
      st = fy_applet_fail(proc, "key show", FY_EXIT_FAIL, "%s", err.msg);
      fy_cfg_free(&cfg);
      return st;
    }
    fprintf(proc->out, "node_id:     %s\nfingerprint: %s\npublic_key:  %s\n", hex, fpr, pub);
  }
  fy_cfg_free(&cfg);
  return FY_EXIT_OK;
}

int fy_key_main(int argc, char **argv, const struct fy_proc *proc) {
  static const char usage[] = "usage: ferry key <generate|show> [flags]\n\n"
                              "  generate --out FILE   make a new node key (prints its node id)\n"
                              "  show [--id] KEY       print a key's node id, fingerprint and public key\n";
  if (argc < 2) {
    fputs(usage, proc->errout);
    return FY_EXIT_USAGE;
  }
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    fputs(usage, proc->out);
    return FY_EXIT_OK;
  }
  if (strcmp(argv[1], "generate") == 0)
    return generate(argc - 1, argv + 1, proc);
  if (strcmp(argv[1], "show") == 0)
    return show(argc - 1, argv + 1, proc);
  return fy_applet_fail(proc, "key", FY_EXIT_USAGE, "unknown subcommand '%s' (generate | show)", argv[1]);
}
