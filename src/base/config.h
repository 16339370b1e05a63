/* Layered configuration, one mechanism for every applet:
 *
 *   built-in default < config file < environment FERRY_<KEY> < command-line flag
 *
 * An applet declares its keys in a table (struct fy_cfg_key). A key named
 * "data_dir" is `data_dir = ...` in the file (INI, read with inih; keys outside
 * any section, or in a section named after the applet), FERRY_DATA_DIR in the
 * environment and --data-dir on the command line. Keys flagged FY_CFG_CLI_ONLY
 * (say --out of `key generate`) come only from flags.
 *
 * Three keys are always present and handled here: `config` (the file to read;
 * default FY_SYSCONFDIR/<applet>.conf, which may be missing, whereas a file
 * named by --config or FERRY_CONFIG must exist), `log_level`, and the flags
 * --print-config and --help.
 *
 * Every value is parsed and range-checked as it is read, so a bad value fails
 * with a message that names the key and its source: "--log-level: 'loud' is
 * not one of debug, info, warn, error" or "/etc/ferry/agent.conf:7: data_dir:
 * must not be empty". */
#ifndef FY_BASE_CONFIG_H
#define FY_BASE_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "base/err.h"

enum fy_cfg_type {
  FY_CFG_STRING,   /* any text (may be empty unless min > 0) */
  FY_CFG_PATH,     /* non-empty text */
  FY_CFG_INT,      /* decimal integer within [min, max] */
  FY_CFG_BOOL,     /* true/false, yes/no, on/off, 1/0 */
  FY_CFG_DURATION, /* 500ms, 30s, 5m, 2h, 1d or plain seconds; stored in ms, within [min, max] ms */
  FY_CFG_ENUM,     /* one of choices (NULL-terminated) */
};

enum fy_cfg_flags {
  FY_CFG_CLI_ONLY = 1 << 0, /* not read from the file or the environment */
  FY_CFG_SECRET = 1 << 1,   /* --print-config shows <set>, and no message quotes the value */
};

/* Tables use designated initializers; the field order is not part of the API
 * (flags sits after type so the struct has no padding). A bad table (bad
 * name, duplicate or reserved name, min > max, a default that does not parse)
 * is a bug and makes fy_cfg_load abort with a message. */
struct fy_cfg_key {
  const char *name; /* lower_snake_case, at most 64 characters */
  enum fy_cfg_type type;
  unsigned flags;  /* enum fy_cfg_flags */
  const char *def; /* default as text; NULL means unset */
  const char *help;
  long long min, max;         /* INT, DURATION (ms): enforced when either is non-zero;
                                 STRING, PATH: length limits when > 0 */
  const char *const *choices; /* FY_CFG_ENUM, NULL-terminated; values match exactly */
};

enum fy_cfg_source {
  FY_CFG_SRC_UNSET = 0,
  FY_CFG_SRC_DEFAULT,
  FY_CFG_SRC_FILE,
  FY_CFG_SRC_ENV,
  FY_CFG_SRC_FLAG,
};

struct fy_cfg_value {
  char *text; /* owned; NULL when unset */
  enum fy_cfg_source source;
  char where[256]; /* "default", "/etc/ferry/agent.conf:7", "FERRY_DATA_DIR", "--data-dir" */
  long long num;   /* INT: the value; DURATION: ms; BOOL: 0/1; ENUM: index */
};

struct fy_cfg {
  const char *applet;      /* borrowed */
  struct fy_cfg_key *keys; /* owned array: the applet's keys, then the built-in ones */
  size_t nkeys;
  struct fy_cfg_value *values; /* owned, nkeys entries */
  char **args;                 /* owned copies of the positional arguments */
  size_t nargs;
  bool want_help;  /* --help or -h was given */
  bool want_print; /* --print-config was given */
};

/* Loads the layers in order. argv holds only this applet's arguments (argv[0]
 * is the applet or subcommand name); envp is the environment (usually environ,
 * NULL means empty), passed in so tests control it. Flags are `--key value` or
 * `--key=value`; a value that starts with '-' needs the `=` form. A bool flag
 * alone means true and takes a value only after '=' (`--id FILE` keeps FILE
 * as an argument); `--no-key` means false; the last of repeated flags wins.
 * `--` ends flags; other words (and a lone `-`) are positional, in cfg->args,
 * and flags may follow them. Unknown flags and a missing value fail with
 * FY_EUSAGE, bad values with FY_EINVAL, a missing named config file with
 * FY_ENOENT, each with a message. On failure cfg holds nothing to free.
 *
 * The file is strict: an unknown key or section, a key set twice, a CLI-only
 * key, an indented (continuation) line or a line longer than inih's buffer is
 * an error naming FILE:LINE. A value may be written in double quotes, with
 * \" \\ \n \t \xNN escapes, as fy_cfg_print writes it. In the environment
 * only FERRY_<KEY> of the table's keys are read; other FERRY_* are ignored.
 *
 * With --help or -h anywhere before `--`, it returns 0 right after the flag
 * scan with want_help set and every value at its default: neither the file nor
 * the environment is read, so help works even where the config is broken. */
int fy_cfg_load(struct fy_cfg *cfg, const char *applet, const struct fy_cfg_key *keys, size_t nkeys, int argc,
                char *const *argv, char *const *envp, struct fy_err *err);

void fy_cfg_free(struct fy_cfg *cfg);

/* Lookups by key name. Asking for a key that is not in the table (or
 * fy_cfg_bool of a key that is not a bool) is a bug in the caller and aborts. */
const char *fy_cfg_str(const struct fy_cfg *cfg, const char *name); /* NULL when unset */
long long fy_cfg_num(const struct fy_cfg *cfg, const char *name);
bool fy_cfg_bool(const struct fy_cfg *cfg, const char *name);
const struct fy_cfg_value *fy_cfg_get(const struct fy_cfg *cfg, const char *name);

/* `key = value  # source where` for every key, in table order ("# default",
 * "# file /etc/ferry/agent.conf:7", "# env FERRY_PORT", "# flag --port");
 * an unset key prints as `key =  # unset`; a set secret as `<set>`. Values are
 * quoted (with the escapes the file accepts) when they are empty or contain
 * spaces, quotes, ';', '#', '\\' or control characters. */
void fy_cfg_print(const struct fy_cfg *cfg, FILE *out);

/* Usage text: the synopsis line given, then one line per flag with its help
 * and default, the env/file names, and the built-in flags. */
void fy_cfg_print_help(const struct fy_cfg *cfg, const char *synopsis, const char *description, FILE *out);

const char *fy_cfg_source_name(enum fy_cfg_source source);

#endif
