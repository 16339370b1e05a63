#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/config.h"
#include "base/err.h"
#include "fy_config.h"

/* An applet name no machine has a config file for, so the default file is
 * always missing unless a test names one. */
#define APPLET "cfgtest"

static const char *const modes[] = {"fast", "safe", NULL};

static const struct fy_cfg_key keys[] = {
    {.name = "data_dir", .type = FY_CFG_PATH, .def = "/var/lib/ferry", .help = "where state lives"},
    {.name = "port", .type = FY_CFG_INT, .def = "4433", .min = 1, .max = 65535, .help = "UDP port"},
    {.name = "verbose", .type = FY_CFG_BOOL, .def = "false", .help = "say more"},
    {.name = "timeout",
     .type = FY_CFG_DURATION,
     .def = "30s",
     .min = 100,
     .max = 86400000,
     .help = "how long to wait"},
    {.name = "mode", .type = FY_CFG_ENUM, .def = "safe", .choices = modes, .help = "how to apply"},
    {.name = "label", .type = FY_CFG_STRING, .help = "a free-form label"},
    {.name = "token", .type = FY_CFG_STRING, .min = 4, .flags = FY_CFG_SECRET, .help = "secret token"},
    {.name = "out", .type = FY_CFG_PATH, .flags = FY_CFG_CLI_ONLY, .help = "where to write"},
};
#define NKEYS (sizeof(keys) / sizeof(keys[0]))

/* ---- helpers -------------------------------------------------------------- */

static char **dup_list(const char *const *list, int *count) {
  int n = 0;
  while (list && list[n])
    n++;
  char **out = calloc((size_t)n + 1, sizeof(*out));
  assert_non_null(out);
  for (int i = 0; i < n; i++) {
    out[i] = strdup(list[i]);
    assert_non_null(out[i]);
  }
  if (count)
    *count = n;
  return out;
}

static void free_list(char **list) {
  for (size_t i = 0; list[i]; i++)
    free(list[i]);
  free(list);
}

/* fy_cfg_load with argv and envp given as string literals (argv[0] is added). */
static int load_keys(struct fy_cfg *cfg, const struct fy_cfg_key *k, size_t nk, const char *const *args,
                     const char *const *env, struct fy_err *err) {
  int nargs = 0;
  while (args && args[nargs])
    nargs++;
  const char **full = calloc((size_t)nargs + 2, sizeof(*full));
  assert_non_null(full);
  full[0] = APPLET;
  for (int i = 0; i < nargs; i++)
    full[i + 1] = args[i];
  int argc;
  char **argv = dup_list(full, &argc);
  free(full);
  char **envp = dup_list(env, NULL);
  fy_err_clear(err);
  int rc = fy_cfg_load(cfg, APPLET, k, nk, argc, argv, envp, err);
  free_list(argv);
  free_list(envp);
  if (rc < 0) {
    /* On failure nothing is left to free. */
    assert_null(cfg->keys);
    assert_null(cfg->values);
    assert_null(cfg->args);
    assert_int_equal(cfg->nargs, 0);
    assert_int_equal(err->code, rc);
    assert_true(err->msg[0] != '\0');
  }
  return rc;
}

static int load(struct fy_cfg *cfg, const char *const *args, const char *const *env, struct fy_err *err) {
  return load_keys(cfg, keys, NKEYS, args, env, err);
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})
#define NOARGS ((const char *const[]){NULL})

struct conf {
  char path[64];
};

static void conf_write(struct conf *c, const char *text, size_t len) {
  snprintf(c->path, sizeof(c->path), "/tmp/ferry-test-config-XXXXXX");
  int fd = mkstemp(c->path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, len), (ssize_t)len);
  close(fd);
}

static void conf(struct conf *c, const char *text) {
  conf_write(c, text, strlen(text));
}

static void conf_done(struct conf *c) {
  unlink(c->path);
}

/* Loads a config file with --config and expects failure with a message that
 * is "<path>:<rest>". */
static void expect_file_error(const char *text, const char *rest) {
  struct conf c = {0};
  conf(&c, text);
  struct fy_cfg cfg;
  struct fy_err err;
  assert_int_equal(load(&cfg, ARGS("--config", c.path), NOARGS, &err), FY_EINVAL);
  char want[FY_ERR_MSG_MAX];
  snprintf(want, sizeof(want), "%s:%s", c.path, rest);
  assert_string_equal(err.msg, want);
  conf_done(&c);
}

static void expect_error(const char *const *args, const char *const *env, int code, const char *msg) {
  struct fy_cfg cfg;
  struct fy_err err;
  assert_int_equal(load(&cfg, args, env, &err), code);
  assert_string_equal(err.msg, msg);
}

static char *print_to_string(const struct fy_cfg *cfg) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  assert_non_null(f);
  fy_cfg_print(cfg, f);
  fclose(f);
  return buf;
}

static void check_value(const struct fy_cfg *cfg, const char *name, const char *text, enum fy_cfg_source src,
                        const char *where) {
  const struct fy_cfg_value *v = fy_cfg_get(cfg, name);
  if (text)
    assert_string_equal(v->text, text);
  else
    assert_null(v->text);
  assert_int_equal(v->source, src);
  assert_string_equal(v->where, where);
}

/* ---- defaults and layers -------------------------------------------------- */

static void defaults(void **state) {
  (void)state;
  struct fy_cfg cfg;
  struct fy_err err;
  assert_int_equal(load(&cfg, NOARGS, NOARGS, &err), 0);
  assert_string_equal(cfg.applet, APPLET);
  assert_int_equal(cfg.nkeys, NKEYS + 2);
  assert_string_equal(cfg.keys[NKEYS].name, "config");
  assert_string_equal(cfg.keys[NKEYS + 1].name, "log_level");
  check_value(&cfg, "data_dir", "/var/lib/ferry", FY_CFG_SRC_DEFAULT, "default");
  check_value(&cfg, "label", NULL, FY_CFG_SRC_UNSET, "");
  check_value(&cfg, "config", FY_SYSCONFDIR "/" APPLET ".conf", FY_CFG_SRC_DEFAULT, "default");
  check_value(&cfg, "log_level", "info", FY_CFG_SRC_DEFAULT, "default");
  assert_int_equal(fy_cfg_num(&cfg, "port"), 4433);
  assert_int_equal(fy_cfg_num(&cfg, "timeout"), 30000);
  assert_int_equal(fy_cfg_num(&cfg, "mode"), 1);
  assert_int_equal(fy_cfg_num(&cfg, "log_level"), 1);
  assert_false(fy_cfg_bool(&cfg, "verbose"));
  assert_null(fy_cfg_str(&cfg, "label"));
  assert_string_equal(fy_cfg_str(&cfg, "mode"), "safe");
  assert_int_equal(cfg.nargs, 0);
  assert_false(cfg.want_help);
  assert_false(cfg.want_print);
  fy_cfg_free(&cfg);
  fy_cfg_free(&cfg); /* freeing twice is harmless: free zeroes */
}

static void precedence_default_file_env_flag(void **state) {
  (void)state;
  struct conf c = {0};
  conf(&c, "; a comment\n"
           "data_dir = /from/file\n"
           "port = 1000\n"
           "[" APPLET "]\n"
           "mode = fast\n"
           "log_level = warn\n"
           "label = from file\n");
  char cfgenv[128];
  snprintf(cfgenv, sizeof(cfgenv), "FERRY_CONFIG=%s", c.path);
  const char *const env[] = {cfgenv, "FERRY_PORT=2000", "FERRY_MODE=safe", "FERRY_LABEL=", "PATH=/bin", NULL};
  struct fy_cfg cfg;
  struct fy_err err;
  assert_int_equal(load(&cfg, ARGS("--mode", "fast", "--verbose"), env, &err), 0);

  char at[128];
  check_value(&cfg, "config", c.path, FY_CFG_SRC_ENV, "FERRY_CONFIG");
  snprintf(at, sizeof(at), "%s:2", c.path);
  check_value(&cfg, "data_dir", "/from/file", FY_CFG_SRC_FILE, at);
  check_value(&cfg, "port", "2000", FY_CFG_SRC_ENV, "FERRY_PORT");
  check_value(&cfg, "mode", "fast", FY_CFG_SRC_FLAG, "--mode");
  check_value(&cfg, "label", "", FY_CFG_SRC_ENV, "FERRY_LABEL");
  check_value(&cfg, "verbose", "true", FY_CFG_SRC_FLAG, "--verbose");
  snprintf(at, sizeof(at), "%s:6", c.path);
  check_value(&cfg, "log_level", "warn", FY_CFG_SRC_FILE, at);
  assert_int_equal(fy_cfg_num(&cfg, "port"), 2000);
  assert_int_equal(fy_cfg_num(&cfg, "mode"), 0);
  assert_true(fy_cfg_bool(&cfg, "verbose"));

  char *out = print_to_string(&cfg);
  char want[2048];
  snprintf(want, sizeof(want),
           "data_dir = /from/file  # file %s:2\n"
           "port = 2000  # env FERRY_PORT\n"
           "verbose = true  # flag --verbose\n"
           "timeout = 30s  # default\n"
           "mode = fast  # flag --mode\n"
           "label = \"\"  # env FERRY_LABEL\n"
           "token =  # unset\n"
           "out =  # unset\n"
           "config = %s  # env FERRY_CONFIG\n"
           "log_level = warn  # file %s:6\n",
           c.path, c.path, c.path);
  assert_string_equal(out, want);
  free(out);
  fy_cfg_free(&cfg);

  /* --config beats FERRY_CONFIG, and a flag beats the same key in the env. */
  assert_int_equal(load(&cfg, ARGS("--config", c.path, "--port=3000"), env, &err), 0);
  check_value(&cfg, "config", c.path, FY_CFG_SRC_FLAG, "--config");
  check_value(&cfg, "port", "3000", FY_CFG_SRC_FLAG, "--port");
  fy_cfg_free(&cfg);

  /* Without env and flags the file wins over the defaults. */
  assert_int_equal(load(&cfg, ARGS("--config", c.path), NOARGS, &err), 0);
  snprintf(at, sizeof(at), "%s:3", c.path);
  check_value(&cfg, "port", "1000", FY_CFG_SRC_FILE, at);
  snprintf(at, sizeof(at), "%s:7", c.path);
  check_value(&cfg, "label", "from file", FY_CFG_SRC_FILE, at);
  fy_cfg_free(&cfg);
  conf_done(&c);
}

static void print_quotes_and_masks(void **state) {
  (void)state;
  const char *const env[] = {"FERRY_TOKEN=hunter2", "FERRY_LABEL=a \"b\"\tc\\d\x01", NULL};
  struct fy_cfg cfg;
  struct fy_err err;
  assert_int_equal(load(&cfg, ARGS("--data-dir", "/with space"), env, &err), 0);
  char *out = print_to_string(&cfg);
  assert_non_null(strstr(out, "data_dir = \"/with space\"  # flag --data-dir\n"));
  assert_non_null(strstr(out, "label = \"a \\\"b\\\"\\tc\\\\d\\x01\"  # env FERRY_LABEL\n"));
  assert_non_null(strstr(out, "token = <set>  # env FERRY_TOKEN\n"));
  assert_null(strstr(out, "hunter2"));
  free(out);
  fy_cfg_free(&cfg);
}

static void printed_values_read_back(void **state) {
  (void)state;
  struct conf c = {0};
  conf(&c, "label = \"  a \\\"b\\\" \\\\ \\x41\\tz  \"\n");
  struct fy_cfg cfg;
  struct fy_err err;
  assert_int_equal(load(&cfg, ARGS("--config", c.path), NOARGS, &err), 0);
  assert_string_equal(fy_cfg_str(&cfg, "label"), "  a \"b\" \\ A\tz  ");
  char *out = print_to_string(&cfg);
  char want[256];
  snprintf(want, sizeof(want), "label = \"  a \\\"b\\\" \\\\ A\\tz  \"  # file %s:1\n", c.path);
  assert_non_null(strstr(out, want));
  free(out);
  fy_cfg_free(&cfg);
  conf_done(&c);

  expect_file_error("label = \"abc\n",
                    "1: label: malformed quoted value (escapes are \\\" \\\\ \\n \\t \\xNN)");
  expect_file_error("label = \"a\"b\"\n",
                    "1: label: malformed quoted value (escapes are \\\" \\\\ \\n \\t \\xNN)");
  expect_file_error("label = \"\\q\"\n",
                    "1: label: malformed quoted value (escapes are \\\" \\\\ \\n \\t \\xNN)");
  expect_file_error("label = \"\\x0\"\n",
                    "1: label: malformed quoted value (escapes are \\\" \\\\ \\n \\t \\xNN)");
  expect_file_error("label = \"\\x00\"\n",
                    "1: label: malformed quoted value (escapes are \\\" \\\\ \\n \\t \\xNN)");
  expect_file_error("label = \"\\\"\n",
                    "1: label: malformed quoted value (escapes are \\\" \\\\ \\n \\t \\xNN)");
}

/* ---- value parsing, with key and source in every message ------------------ */

static void int_values(void **state) {
  (void)state;
  struct fy_cfg cfg;
  struct fy_err err;
  assert_int_equal(load(&cfg, ARGS("--port", "65535"), NOARGS, &err), 0);
  assert_int_equal(fy_cfg_num(&cfg, "port"), 65535);
  fy_cfg_free(&cfg);
  assert_int_equal(load(&cfg, ARGS("--port=+1"), NOARGS, &err), 0);
  assert_int_equal(fy_cfg_num(&cfg, "port"), 1);
  fy_cfg_free(&cfg);

  expect_error(ARGS("--port", "70000"), NOARGS, FY_EINVAL, "--port: 70000 is above the maximum 65535");
  expect_error(ARGS("--port=0"), NOARGS, FY_EINVAL, "--port: 0 is below the minimum 1");
  expect_error(ARGS("--port=-5"), NOARGS, FY_EINVAL, "--port: -5 is below the minimum 1");
  expect_error(NOARGS, ARGS("FERRY_PORT=80x"), FY_EINVAL, "FERRY_PORT: '80x' is not an integer");
  expect_error(NOARGS, ARGS("FERRY_PORT= 80"), FY_EINVAL, "FERRY_PORT: ' 80' is not an integer");
  expect_error(NOARGS, ARGS("FERRY_PORT="), FY_EINVAL, "FERRY_PORT: '' is not an integer");
  expect_error(NOARGS, ARGS("FERRY_PORT=0x10"), FY_EINVAL, "FERRY_PORT: '0x10' is not an integer");
  expect_error(ARGS("--port=99999999999999999999"), NOARGS, FY_EINVAL,
               "--port: '99999999999999999999' is out of range");
  expect_file_error("port = 1.5\n", "1: port: '1.5' is not an integer");
}

static void unbounded_int(void **state) {
  (void)state;
  static const struct fy_cfg_key k[] = {{.name = "n", .type = FY_CFG_INT, .def = "-9223372036854775808"}};
  struct fy_cfg cfg;
  struct fy_err err;
  assert_int_equal(load_keys(&cfg, k, 1, NOARGS, NOARGS, &err), 0);
  assert_int_equal(fy_cfg_num(&cfg, "n"), INT64_MIN);
  fy_cfg_free(&cfg);
  assert_int_equal(load_keys(&cfg, k, 1, ARGS("--n=9223372036854775807"), NOARGS, &err), 0);
  assert_int_equal(fy_cfg_num(&cfg, "n"), INT64_MAX);
  fy_cfg_free(&cfg);
  assert_int_equal(load_keys(&cfg, k, 1, ARGS("--n=9223372036854775808"), NOARGS, &err), FY_EINVAL);
  assert_string_equal(err.msg, "--n: '9223372036854775808' is out of range");
}

static void bool_values(void **state) {
  (void)state;
  static const struct {
    const char *text;
    bool want;
  } cases[] = {{"true", true},   {"TRUE", true}, {"yes", true},  {"On", true}, {"1", true},
               {"false", false}, {"No", false},  {"off", false}, {"0", false}, {"FALSE", false}};
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char env[64];
    snprintf(env, sizeof(env), "FERRY_VERBOSE=%s", cases[i].text);
    struct fy_cfg cfg;
    struct fy_err err;
    assert_int_equal(load(&cfg, NOARGS, ARGS(env), &err), 0);
    assert_int_equal(fy_cfg_bool(&cfg, "verbose"), cases[i].want);
    fy_cfg_free(&cfg);
  }
  expect_error(NOARGS, ARGS("FERRY_VERBOSE=maybe"), FY_EINVAL,
               "FERRY_VERBOSE: 'maybe' is not a boolean (use true/false, yes/no, on/off, 1/0)");
  expect_error(ARGS("--verbose=2"), NOARGS, FY_EINVAL,
               "--verbose: '2' is not a boolean (use true/false, yes/no, on/off, 1/0)");
  expect_file_error("verbose = yep\n",
                    "1: verbose: 'yep' is not a boolean (use true/false, yes/no, on/off, 1/0)");
}

static void bool_flags(void **state) {
  (void)state;
  struct fy_cfg cfg;
  struct fy_err err;
  assert_int_equal(load(&cfg, ARGS("--verbose"), ARGS("FERRY_VERBOSE=no"), &err), 0);
  assert_true(fy_cfg_bool(&cfg, "verbose"));
  fy_cfg_free(&cfg);

  assert_int_equal(load(&cfg, ARGS("--no-verbose"), ARGS("FERRY_VERBOSE=yes"), &err), 0);
  assert_false(fy_cfg_bool(&cfg, "verbose"));
  check_value(&cfg, "verbose", "false", FY_CFG_SRC_FLAG, "--no-verbose");
  fy_cfg_free(&cfg);

  assert_int_equal(load(&cfg, ARGS("--verbose=off"), NOARGS, &err), 0);
  assert_false(fy_cfg_bool(&cfg, "verbose"));
  fy_cfg_free(&cfg);

  /* A bool flag takes its value only after '=': the next word stays positional. */
  assert_int_equal(load(&cfg, ARGS("--verbose", "false"), NOARGS, &err), 0);
  assert_true(fy_cfg_bool(&cfg, "verbose"));
  assert_int_equal(cfg.nargs, 1);
  assert_string_equal(cfg.args[0], "false");
  fy_cfg_free(&cfg);

  /* The last of repeated flags wins. */
  assert_int_equal(load(&cfg, ARGS("--verbose", "--no-verbose", "--port", "1", "--port", "2"), NOARGS, &err),
                   0);
  assert_false(fy_cfg_bool(&cfg, "verbose"));
  assert_int_equal(fy_cfg_num(&cfg, "port"), 2);
  fy_cfg_free(&cfg);

  expect_error(ARGS("--no-verbose=1"), NOARGS, FY_EUSAGE, "--no-verbose takes no value");
  expect_error(ARGS("--no-port"), NOARGS, FY_EUSAGE, "--no-port: only on/off flags have a --no- form");
  expect_error(ARGS("--no-such"), NOARGS, FY_EUSAGE, "unknown flag --no-such (see ferry " APPLET " --help)");
}

static void duration_values(void **state) {
  (void)state;
  static const struct {
    const char *text;
    long long ms;
  } cases[] = {{"500ms", 500},   {"30s", 30000}, {"5m", 300000}, {"2h", 7200000},
               {"1d", 86400000}, {"7", 7000},    {"100ms", 100}, {"0d", -1}};
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char arg[64];
    snprintf(arg, sizeof(arg), "--timeout=%s", cases[i].text);
    struct fy_cfg cfg;
    struct fy_err err;
    int rc = load(&cfg, ARGS(arg), NOARGS, &err);
    if (cases[i].ms < 0) {
      assert_int_equal(rc, FY_EINVAL);
      continue;
    }
    assert_int_equal(rc, 0);
    assert_int_equal(fy_cfg_num(&cfg, "timeout"), cases[i].ms);
    fy_cfg_free(&cfg);
  }
  expect_file_error("\n\ntimeout = 5x\n", "3: timeout: '5x' is not a duration (use 500ms, 30s, 5m, 2h, 1d)");
  expect_error(NOARGS, ARGS("FERRY_TIMEOUT=-5s"), FY_EINVAL,
               "FERRY_TIMEOUT: '-5s' is not a duration (use 500ms, 30s, 5m, 2h, 1d)");
  expect_error(NOARGS, ARGS("FERRY_TIMEOUT=5 s"), FY_EINVAL,
               "FERRY_TIMEOUT: '5 s' is not a duration (use 500ms, 30s, 5m, 2h, 1d)");
  expect_error(NOARGS, ARGS("FERRY_TIMEOUT=1.5s"), FY_EINVAL,
               "FERRY_TIMEOUT: '1.5s' is not a duration (use 500ms, 30s, 5m, 2h, 1d)");
  expect_error(NOARGS, ARGS("FERRY_TIMEOUT=ms"), FY_EINVAL,
               "FERRY_TIMEOUT: 'ms' is not a duration (use 500ms, 30s, 5m, 2h, 1d)");
  expect_error(ARGS("--timeout", "2d"), NOARGS, FY_EINVAL, "--timeout: '2d' is above the maximum 1d");
  expect_error(ARGS("--timeout", "99ms"), NOARGS, FY_EINVAL, "--timeout: '99ms' is below the minimum 100ms");
  expect_error(ARGS("--timeout", "9999999999999d"), NOARGS, FY_EINVAL,
               "--timeout: '9999999999999d' is too long a duration");
  expect_error(ARGS("--timeout", "99999999999999999999"), NOARGS, FY_EINVAL,
               "--timeout: '99999999999999999999' is too long a duration");
}

static void enum_values(void **state) {
  (void)state;
  struct fy_cfg cfg;
  struct fy_err err;
  assert_int_equal(load(&cfg, ARGS("--log-level", "debug"), NOARGS, &err), 0);
  assert_int_equal(fy_cfg_num(&cfg, "log_level"), 0);
  check_value(&cfg, "log_level", "debug", FY_CFG_SRC_FLAG, "--log-level");
  fy_cfg_free(&cfg);
  expect_error(NOARGS, ARGS("FERRY_LOG_LEVEL=loud"), FY_EINVAL,
               "FERRY_LOG_LEVEL: 'loud' is not one of debug, info, warn, error");
  expect_error(ARGS("--log-level=loud"), NOARGS, FY_EINVAL,
               "--log-level: 'loud' is not one of debug, info, warn, error");
  expect_file_error("mode = Fast\n", "1: mode: 'Fast' is not one of fast, safe");
}

static void string_and_path_values(void **state) {
  (void)state;
  expect_error(NOARGS, ARGS("FERRY_DATA_DIR="), FY_EINVAL, "FERRY_DATA_DIR: must not be empty");
  expect_error(ARGS("--data-dir="), NOARGS, FY_EINVAL, "--data-dir: must not be empty");
  expect_file_error("data_dir =\n", "1: data_dir: must not be empty");
  expect_file_error("data_dir = \"\"\n", "1: data_dir: must not be empty");
  /* token is a secret with at least 4 characters: the value is never echoed. */
  expect_error(NOARGS, ARGS("FERRY_TOKEN=abc"), FY_EINVAL, "FERRY_TOKEN: must be at least 4 characters long");
  expect_error(NOARGS, ARGS("FERRY_TOKEN="), FY_EINVAL, "FERRY_TOKEN: must not be empty");

  struct fy_cfg cfg;
  struct fy_err err;
  assert_int_equal(load(&cfg, ARGS("--label="), NOARGS, &err), 0);
  check_value(&cfg, "label", "", FY_CFG_SRC_FLAG, "--label");
  fy_cfg_free(&cfg);
}

static void long_values_are_cut_in_messages(void **state) {
  (void)state;
  char arg[300] = "--port=";
  memset(arg + 7, '9', 200);
  arg[207] = 'x';
  arg[208] = '\0';
  struct fy_cfg cfg;
  struct fy_err err;
  assert_int_equal(load(&cfg, ARGS(arg), NOARGS, &err), FY_EINVAL);
  assert_non_null(strstr(err.msg, "9999...' is not an integer"));
  assert_true(strlen(err.msg) < 120);
  /* Control bytes do not reach the terminal. */
  expect_error(ARGS("--port=1\x1b[2J"), NOARGS, FY_EINVAL, "--port: '1?[2J' is not an integer");
}

/* ---- the file layer ------------------------------------------------------- */

static void file_unknown_key(void **state) {
  (void)state;
  expect_file_error("data_dir = /x\nbogus = 1\n",
                    "2: unknown key 'bogus' (known: data_dir, port, verbose, timeout, mode, label, token, "
                    "log_level)");
  expect_file_error("Data_Dir = /x\n", "1: unknown key 'Data_Dir' (known: data_dir, port, verbose, timeout, "
                                       "mode, label, token, log_level)");
}

static void file_sections(void **state) {
  (void)state;
  expect_file_error("port = 1\n[other]\nport = 2\n",
                    "2: unknown section [other] (put keys at the top or under [" APPLET "])");
  /* Strict even when the section is empty. */
  expect_file_error("[other]\n", "1: unknown section [other] (put keys at the top or under [" APPLET "])");
  expect_file_error("[]\n", "1: unknown section [] (put keys at the top or under [" APPLET "])");
  expect_file_error("[" APPLET "x]\n",
                    "1: unknown section [" APPLET "x] (put keys at the top or under [" APPLET "])");
  expect_file_error("[" APPLET "\n", "1: expected 'key = value', '[" APPLET "]' or a comment");

  struct conf c = {0};
  conf(&c, "[" APPLET "] ; the applet's own section\nport = 7\n[" APPLET "]\nmode = fast\n");
  struct fy_cfg cfg;
  struct fy_err err;
  assert_int_equal(load(&cfg, ARGS("--config", c.path), NOARGS, &err), 0);
  assert_int_equal(fy_cfg_num(&cfg, "port"), 7);
  assert_int_equal(fy_cfg_num(&cfg, "mode"), 0);
  fy_cfg_free(&cfg);
  conf_done(&c);
}

static void file_duplicate_key(void **state) {
  (void)state;
  expect_file_error("port = 1\nmode = fast\nport = 2\n", "3: port set twice (first at line 1)");
  /* Also across the top and the applet's section. */
  expect_file_error("port = 1\n[" APPLET "]\nport = 1\n", "3: port set twice (first at line 1)");
}

static void file_refuses_cli_only_and_config(void **state) {
  (void)state;
  expect_file_error("out = /tmp/x\n", "1: out can only be given on the command line (--out)");
  expect_file_error("config = /etc/other.conf\n",
                    "1: config cannot be set in the config file (use --config or FERRY_CONFIG)");

  /* The environment does not set CLI-only keys either; the flag does. */
  struct fy_cfg cfg;
  struct fy_err err;
  assert_int_equal(load(&cfg, NOARGS, ARGS("FERRY_OUT=/tmp/x"), &err), 0);
  assert_null(fy_cfg_str(&cfg, "out"));
  fy_cfg_free(&cfg);
  assert_int_equal(load(&cfg, ARGS("--out", "/tmp/y"), NOARGS, &err), 0);
  check_value(&cfg, "out", "/tmp/y", FY_CFG_SRC_FLAG, "--out");
  fy_cfg_free(&cfg);
}

static void file_syntax(void **state) {
  (void)state;
  expect_file_error("port = 1\njust words\n", "2: expected 'key = value', '[" APPLET "]' or a comment");
  expect_file_error("port = 1\n  mode = fast\n",
                    "2: indented line continues the value above; multi-line values are not supported "
                    "(remove the indentation)");
  char longline[400];
  snprintf(longline, sizeof(longline), "label = %0300d\n", 0);
  expect_file_error(longline, "1: line is longer than 198 characters");

  /* Exactly at the limit is fine, with either line end. */
  char atlimit[512];
  snprintf(atlimit, sizeof(atlimit), "label = %0190d\r\nport = 2\nlabel2 = %0189d", 0, 0);
  expect_file_error(atlimit, "3: unknown key 'label2' (known: data_dir, port, verbose, timeout, mode, label, "
                             "token, log_level)");
  snprintf(atlimit, sizeof(atlimit), "label = %0191d\r\n", 0);
  expect_file_error(atlimit, "1: line is longer than 198 characters");

  /* An endless line ends the read instead of eating memory. */
  struct fy_cfg zero;
  struct fy_err zerr;
  assert_int_equal(load(&zero, ARGS("--config", "/dev/zero"), NOARGS, &zerr), FY_EINVAL);
  assert_string_equal(zerr.msg, "/dev/zero:1: line contains a NUL byte");

  struct conf c = {0};
  conf_write(&c, "port = 1\nlabel = a\0b\n", 21);
  struct fy_cfg cfg;
  struct fy_err err;
  assert_int_equal(load(&cfg, ARGS("--config", c.path), NOARGS, &err), FY_EINVAL);
  char want[128];
  snprintf(want, sizeof(want), "%s:2: line contains a NUL byte", c.path);
  assert_string_equal(err.msg, want);
  conf_done(&c);
}

static void file_forms_that_work(void **state) {
  (void)state;
  struct conf c = {0};
  /* BOM, CRLF, comments, an indented first key, ':' as separator, inline
   * comments, '=' in values, a last line without '\n'. */
  conf(&c, "\xEF\xBB\xBF# comment\r\n"
           "  port = 12 ; inline comment\r\n"
           "\n"
           "; another\n"
           "label: a=b;c\n"
           "\t\n"
           "mode=fast");
  struct fy_cfg cfg;
  struct fy_err err;
  assert_int_equal(load(&cfg, ARGS("--config", c.path), NOARGS, &err), 0);
  assert_int_equal(fy_cfg_num(&cfg, "port"), 12);
  assert_string_equal(fy_cfg_str(&cfg, "label"), "a=b;c");
  assert_int_equal(fy_cfg_num(&cfg, "mode"), 0);
  char at[128];
  snprintf(at, sizeof(at), "%s:7", c.path);
  check_value(&cfg, "mode", "fast", FY_CFG_SRC_FILE, at);
  fy_cfg_free(&cfg);
  conf_done(&c);

  /* An empty file is fine. */
  conf(&c, "");
  assert_int_equal(load(&cfg, ARGS("--config", c.path), NOARGS, &err), 0);
  fy_cfg_free(&cfg);
  conf_done(&c);
}

static void missing_config_files(void **state) {
  (void)state;
  /* The default file may be missing... */
  struct fy_cfg cfg;
  struct fy_err err;
  assert_int_equal(load(&cfg, NOARGS, NOARGS, &err), 0);
  fy_cfg_free(&cfg);
  /* ...a named one must exist, and the message says who named it. */
  expect_error(ARGS("--config", "/nonexistent/ferry.conf"), NOARGS, FY_ENOENT,
               "config file /nonexistent/ferry.conf (named by --config): No such file or directory");
  expect_error(ARGS("--config=/nonexistent/ferry.conf"), NOARGS, FY_ENOENT,
               "config file /nonexistent/ferry.conf (named by --config): No such file or directory");
  expect_error(NOARGS, ARGS("FERRY_CONFIG=/nonexistent/ferry.conf"), FY_ENOENT,
               "config file /nonexistent/ferry.conf (named by FERRY_CONFIG): No such file or directory");
  expect_error(NOARGS, ARGS("FERRY_CONFIG="), FY_EINVAL, "FERRY_CONFIG: must not be empty");
  expect_error(ARGS("--config", "/tmp"), NOARGS, FY_EINVAL, "config file /tmp is a directory");
}

/* ---- the environment ------------------------------------------------------ */

static void env_ignores_other_variables(void **state) {
  (void)state;
  const char *const env[] = {"FERRY_SOMETHING_ELSE=1", "FERRY_PORTX=1", "FERRY_PORT", "ferry_port=9",
                             "FERRY_PORT=81",          "FERRY_PORT=82", NULL};
  struct fy_cfg cfg;
  struct fy_err err;
  assert_int_equal(load(&cfg, NOARGS, env, &err), 0);
  assert_int_equal(fy_cfg_num(&cfg, "port"), 81); /* the first, as getenv */
  fy_cfg_free(&cfg);
  /* A NULL err is allowed: the code still comes back. */
  char bad[] = "--port=x";
  char arg1[] = APPLET;
  char *badv[] = {arg1, bad, NULL};
  assert_int_equal(fy_cfg_load(&cfg, APPLET, keys, NKEYS, 2, badv, NULL, NULL), FY_EINVAL);
  assert_null(cfg.keys);
  /* A NULL environment is an empty one. */
  int argc = 1;
  char arg0[] = APPLET;
  char *argv[] = {arg0, NULL};
  assert_int_equal(fy_cfg_load(&cfg, APPLET, keys, NKEYS, argc, argv, NULL, &err), 0);
  fy_cfg_free(&cfg);
}

/* ---- the command line ----------------------------------------------------- */

static void positionals_and_double_dash(void **state) {
  (void)state;
  struct fy_cfg cfg;
  struct fy_err err;
  assert_int_equal(load(&cfg, ARGS("a", "--port", "80", "-", "b", "--", "--port", "-h", "c"), NOARGS, &err),
                   0);
  assert_int_equal(fy_cfg_num(&cfg, "port"), 80);
  assert_false(cfg.want_help);
  assert_int_equal(cfg.nargs, 6);
  const char *want[] = {"a", "-", "b", "--port", "-h", "c"};
  for (size_t i = 0; i < 6; i++)
    assert_string_equal(cfg.args[i], want[i]);
  fy_cfg_free(&cfg);
}

static void flag_errors(void **state) {
  (void)state;
  expect_error(ARGS("--bogus"), NOARGS, FY_EUSAGE, "unknown flag --bogus (see ferry " APPLET " --help)");
  expect_error(ARGS("--bogus=1"), NOARGS, FY_EUSAGE, "unknown flag --bogus (see ferry " APPLET " --help)");
  expect_error(ARGS("-x"), NOARGS, FY_EUSAGE, "unknown flag -x (see ferry " APPLET " --help)");
  expect_error(ARGS("---port"), NOARGS, FY_EUSAGE, "unknown flag ---port (see ferry " APPLET " --help)");
  expect_error(ARGS("--data_dir", "/x"), NOARGS, FY_EUSAGE,
               "unknown flag --data_dir (see ferry " APPLET " --help)");
  expect_error(ARGS("--data-dir"), NOARGS, FY_EUSAGE, "--data-dir needs a value");
  expect_error(ARGS("--data-dir", "--verbose"), NOARGS, FY_EUSAGE,
               "--data-dir needs a value (write --flag=VALUE for a value that starts with '-')");
  expect_error(ARGS("--help=yes"), NOARGS, FY_EUSAGE, "--help takes no value");
  expect_error(ARGS("--print-config=1"), NOARGS, FY_EUSAGE, "--print-config takes no value");
  /* The first problem is the one reported. */
  expect_error(ARGS("--port=x", "--bogus"), NOARGS, FY_EINVAL, "--port: 'x' is not an integer");

  /* A value that starts with '-' goes after '='. */
  struct fy_cfg cfg;
  struct fy_err err;
  assert_int_equal(load(&cfg, ARGS("--label=-x", "--data-dir", "-"), NOARGS, &err), 0);
  assert_string_equal(fy_cfg_str(&cfg, "label"), "-x");
  assert_string_equal(fy_cfg_str(&cfg, "data_dir"), "-");
  fy_cfg_free(&cfg);
}

static void help_short_circuits(void **state) {
  (void)state;
  const char *const broken_env[] = {"FERRY_CONFIG=/nonexistent/ferry.conf", "FERRY_PORT=oops", NULL};
  const char *const *argsets[] = {
      ARGS("--help"),
      ARGS("-h"),
      ARGS("--bogus", "--port", "x", "-h"),
      ARGS("--port=99999", "--help", "--data-dir"),
      ARGS("--data-dir", "-h"),
  };
  for (size_t i = 0; i < sizeof(argsets) / sizeof(argsets[0]); i++) {
    struct fy_cfg cfg;
    struct fy_err err;
    assert_int_equal(load(&cfg, argsets[i], broken_env, &err), 0);
    assert_true(cfg.want_help);
    assert_int_equal(err.code, 0);
    assert_string_equal(err.msg, "");
    check_value(&cfg, "port", "4433", FY_CFG_SRC_DEFAULT, "default");
    check_value(&cfg, "config", FY_SYSCONFDIR "/" APPLET ".conf", FY_CFG_SRC_DEFAULT, "default");
    fy_cfg_free(&cfg);
  }
  /* After `--` it is an argument. */
  struct fy_cfg cfg;
  struct fy_err err;
  assert_int_equal(load(&cfg, ARGS("--", "--help"), NOARGS, &err), 0);
  assert_false(cfg.want_help);
  fy_cfg_free(&cfg);
}

static void print_config_flag(void **state) {
  (void)state;
  struct fy_cfg cfg;
  struct fy_err err;
  assert_int_equal(load(&cfg, ARGS("--print-config"), NOARGS, &err), 0);
  assert_true(cfg.want_print);
  assert_false(cfg.want_help);
  fy_cfg_free(&cfg);
}

static void help_text(void **state) {
  (void)state;
  struct fy_cfg cfg;
  struct fy_err err;
  assert_int_equal(load(&cfg, ARGS("-h"), NOARGS, &err), 0);
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  assert_non_null(f);
  fy_cfg_print_help(&cfg, "ferry " APPLET " [flags] FILE...", "Tests the config loader.", f);
  fclose(f);
  char want[4096];
  snprintf(want, sizeof(want),
           "usage: ferry " APPLET " [flags] FILE...\n"
           "\n"
           "Tests the config loader.\n"
           "\n"
           "flags:\n"
           "  --data-dir PATH     where state lives (default: /var/lib/ferry; env FERRY_DATA_DIR)\n"
           "  --port N            UDP port (default: 4433; env FERRY_PORT)\n"
           "  --[no-]verbose      say more (default: off; env FERRY_VERBOSE)\n"
           "  --timeout DURATION  how long to wait (default: 30s; env FERRY_TIMEOUT)\n"
           "  --mode CHOICE       how to apply (one of fast, safe; default: safe; env FERRY_MODE)\n"
           "  --label VALUE       a free-form label (env FERRY_LABEL)\n"
           "  --token VALUE       secret token (env FERRY_TOKEN)\n"
           "  --out PATH          where to write (flag only)\n"
           "  --config PATH       configuration file to read (default: %s; env FERRY_CONFIG)\n"
           "  --log-level CHOICE  least severe log level to print (one of debug, info, warn, error; "
           "default: info; env FERRY_LOG_LEVEL)\n"
           "  --print-config      print each setting with where it came from, then exit\n"
           "  -h, --help          show this help, then exit\n"
           "\n"
           "Every setting but the flag-only ones can also be set in the config file\n"
           "(key_name = value, at the top or under [" APPLET "]) or in the environment\n"
           "(FERRY_KEY_NAME). Flags win over the environment, which wins over the file.\n",
           FY_SYSCONFDIR "/" APPLET ".conf");
  assert_string_equal(buf, want);
  free(buf);
  fy_cfg_free(&cfg);
}

/* ---- lookups, sources, programming errors --------------------------------- */

static void source_names(void **state) {
  (void)state;
  assert_string_equal(fy_cfg_source_name(FY_CFG_SRC_UNSET), "unset");
  assert_string_equal(fy_cfg_source_name(FY_CFG_SRC_DEFAULT), "default");
  assert_string_equal(fy_cfg_source_name(FY_CFG_SRC_FILE), "file");
  assert_string_equal(fy_cfg_source_name(FY_CFG_SRC_ENV), "env");
  assert_string_equal(fy_cfg_source_name(FY_CFG_SRC_FLAG), "flag");
}

/* Runs fn in a child and expects it to abort. */
static void expect_abort(void (*fn)(void)) {
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    /* The child's message is expected; keep the test output clean. */
    if (!freopen("/dev/null", "w", stderr))
      _exit(3);
    fn();
    _exit(0);
  }
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFSIGNALED(status));
  assert_int_equal(WTERMSIG(status), SIGABRT);
}

static void lookup_unknown_key(void) {
  struct fy_cfg cfg;
  struct fy_err err;
  if (load(&cfg, NOARGS, NOARGS, &err) == 0)
    fy_cfg_str(&cfg, "no_such_key");
}

static void bool_of_non_bool(void) {
  struct fy_cfg cfg;
  struct fy_err err;
  if (load(&cfg, NOARGS, NOARGS, &err) == 0)
    fy_cfg_bool(&cfg, "port");
}

static void table_with_bad_default(void) {
  static const struct fy_cfg_key k[] = {{.name = "n", .type = FY_CFG_INT, .def = "ten"}};
  struct fy_cfg cfg;
  struct fy_err err;
  load_keys(&cfg, k, 1, NOARGS, NOARGS, &err);
}

static void table_with_reserved_name(void) {
  static const struct fy_cfg_key k[] = {{.name = "log_level", .type = FY_CFG_STRING}};
  struct fy_cfg cfg;
  struct fy_err err;
  load_keys(&cfg, k, 1, NOARGS, NOARGS, &err);
}

static void table_with_bad_name(void) {
  static const struct fy_cfg_key k[] = {{.name = "Data-Dir", .type = FY_CFG_STRING}};
  struct fy_cfg cfg;
  struct fy_err err;
  load_keys(&cfg, k, 1, NOARGS, NOARGS, &err);
}

static void table_with_twice_the_same_key(void) {
  static const struct fy_cfg_key k[] = {{.name = "a", .type = FY_CFG_STRING},
                                        {.name = "a", .type = FY_CFG_INT}};
  struct fy_cfg cfg;
  struct fy_err err;
  load_keys(&cfg, k, 2, NOARGS, NOARGS, &err);
}

static void table_with_min_above_max(void) {
  static const struct fy_cfg_key k[] = {{.name = "n", .type = FY_CFG_INT, .min = 5}};
  struct fy_cfg cfg;
  struct fy_err err;
  load_keys(&cfg, k, 1, NOARGS, NOARGS, &err);
}

static void programming_errors_abort(void **state) {
  (void)state;
  expect_abort(lookup_unknown_key);
  expect_abort(bool_of_non_bool);
  expect_abort(table_with_bad_default);
  expect_abort(table_with_reserved_name);
  expect_abort(table_with_bad_name);
  expect_abort(table_with_twice_the_same_key);
  expect_abort(table_with_min_above_max);
}

static void empty_table(void **state) {
  (void)state;
  struct fy_cfg cfg;
  struct fy_err err;
  assert_int_equal(load_keys(&cfg, NULL, 0, ARGS("--log-level", "error", "x"), NOARGS, &err), 0);
  assert_int_equal(cfg.nkeys, 2);
  assert_int_equal(fy_cfg_num(&cfg, "log_level"), 3);
  assert_int_equal(cfg.nargs, 1);
  fy_cfg_free(&cfg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(defaults),
      cmocka_unit_test(precedence_default_file_env_flag),
      cmocka_unit_test(print_quotes_and_masks),
      cmocka_unit_test(printed_values_read_back),
      cmocka_unit_test(int_values),
      cmocka_unit_test(unbounded_int),
      cmocka_unit_test(bool_values),
      cmocka_unit_test(bool_flags),
      cmocka_unit_test(duration_values),
      cmocka_unit_test(enum_values),
      cmocka_unit_test(string_and_path_values),
      cmocka_unit_test(long_values_are_cut_in_messages),
      cmocka_unit_test(file_unknown_key),
      cmocka_unit_test(file_sections),
      cmocka_unit_test(file_duplicate_key),
      cmocka_unit_test(file_refuses_cli_only_and_config),
      cmocka_unit_test(file_syntax),
      cmocka_unit_test(file_forms_that_work),
      cmocka_unit_test(missing_config_files),
      cmocka_unit_test(env_ignores_other_variables),
      cmocka_unit_test(positionals_and_double_dash),
      cmocka_unit_test(flag_errors),
      cmocka_unit_test(help_short_circuits),
      cmocka_unit_test(print_config_flag),
      cmocka_unit_test(help_text),
      cmocka_unit_test(source_names),
      cmocka_unit_test(programming_errors_abort),
      cmocka_unit_test(empty_table),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
