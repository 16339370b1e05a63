#include "base/config.h"

#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "base/cleanup.h"
#include "fy_config.h"

/* Longest key name a table may use; keeps env and flag names in fixed buffers. */
#define NAME_MAX_LEN 64
/* How much of an offending value an error message quotes. */
#define SHOW_MAX 64

static const char *const log_level_choices[] = {"debug", "info", "warn", "error", NULL};

/* Appended to every applet's table; `config`'s default is filled in per applet. */
static const struct fy_cfg_key builtin_keys[] = {
    {.name = "config", .type = FY_CFG_PATH, .help = "configuration file to read"},
    {.name = "log_level",
     .type = FY_CFG_ENUM,
     .def = "info",
     .help = "least severe log level to print",
     .choices = log_level_choices},
};
#define CONFIG_KEY_OFFSET 0 /* index of `config` among the built-ins */

/* Names that are flags handled here, not keys. */
static const char *const reserved_names[] = {"help", "print_config"};

#define HELP_HINT "(see ferry %s --help)"

__attribute__((noreturn, format(printf, 1, 2))) static void bug(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("ferry: bug: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  abort();
}

/* ---- names ---------------------------------------------------------------- */

static void env_name(const char *key, char *buf, size_t cap) {
  size_t n = (size_t)snprintf(buf, cap, "FERRY_");
  for (const char *p = key; *p && n + 1 < cap; p++)
    buf[n++] = (*p >= 'a' && *p <= 'z') ? (char)(*p - 'a' + 'A') : *p;
  buf[n] = '\0';
}

static void flag_name(const char *key, char *buf, size_t cap) {
  size_t n = (size_t)snprintf(buf, cap, "--");
  for (const char *p = key; *p && n + 1 < cap; p++)
    buf[n++] = *p == '_' ? '-' : *p;
  buf[n] = '\0';
}

static bool valid_name(const char *name) {
  if (!name || !(*name >= 'a' && *name <= 'z') || strlen(name) > NAME_MAX_LEN)
    return false;
  for (const char *p = name; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
      return false;
  return name[strlen(name) - 1] != '_';
}

static ssize_t find_key(const struct fy_cfg *cfg, const char *name) {
  for (size_t i = 0; i < cfg->nkeys; i++)
    if (strcmp(cfg->keys[i].name, name) == 0)
      return (ssize_t)i;
  return -1;
}

/* Matches a flag body ("data-dir", n bytes) against the key names. */
static ssize_t find_flag(const struct fy_cfg *cfg, const char *flag, size_t n) {
  for (size_t i = 0; i < cfg->nkeys; i++) {
    const char *k = cfg->keys[i].name;
    if (strlen(k) != n)
      continue;
    size_t j = 0;
    while (j < n && (k[j] == '_' ? '-' : k[j]) == flag[j])
      j++;
    if (j == n)
      return (ssize_t)i;
  }
  return -1;
}

static bool is_config_key(const struct fy_cfg *cfg, size_t idx) {
  return idx == cfg->nkeys - FY_ARRAY_LEN(builtin_keys) + CONFIG_KEY_OFFSET;
}

/* ---- values --------------------------------------------------------------- */

/* The offending value as an error message shows it: quoted, cut short, control
 * bytes replaced; secrets are never shown. */
static void show(const struct fy_cfg_key *k, const char *text, char *buf, size_t cap) {
  if (k->flags & FY_CFG_SECRET) {
    snprintf(buf, cap, "the value");
    return;
  }
  size_t n = 0;
  buf[n++] = '\'';
  const char *p = text;
  for (; *p && n + 5 < cap && p - text < SHOW_MAX; p++)
    buf[n++] = ((unsigned char)*p < 0x20 || *p == 0x7f) ? '?' : *p;
  if (*p && n + 5 < cap) {
    memcpy(buf + n, "...", 3);
    n += 3;
  }
  buf[n++] = '\'';
  buf[n] = '\0';
}

/* Milliseconds in the largest unit that divides them exactly ("90s", "1d"). */
static void format_ms(long long ms, char *buf, size_t cap) {
  static const struct {
    const char *unit;
    long long ms;
  } units[] = {{"d", 86400000LL}, {"h", 3600000LL}, {"m", 60000LL}, {"s", 1000LL}};
  if (ms != 0) {
    for (size_t i = 0; i < FY_ARRAY_LEN(units); i++) {
      if (ms % units[i].ms == 0) {
        snprintf(buf, cap, "%lld%s", ms / units[i].ms, units[i].unit);
        return;
      }
    }
    snprintf(buf, cap, "%lldms", ms);
    return;
  }
  snprintf(buf, cap, "0s");
}

static int parse_duration(const char *text, long long *ms, bool *too_big) {
  static const struct {
    const char *unit;
    long long ms;
  } units[] = {{"", 1000LL}, {"ms", 1LL}, {"s", 1000LL}, {"m", 60000LL}, {"h", 3600000LL}, {"d", 86400000LL}};
  *too_big = false;
  if (!(*text >= '0' && *text <= '9'))
    return -1;
  char *end;
  errno = 0;
  long long n = strtoll(text, &end, 10);
  for (size_t i = 0; i < FY_ARRAY_LEN(units); i++) {
    if (strcmp(end, units[i].unit) == 0) {
      if (errno == ERANGE || __builtin_mul_overflow(n, units[i].ms, ms)) {
        *too_big = true;
        return -1;
      }
      return 0;
    }
  }
  return -1;
}

static int parse_bool(const char *text, long long *out) {
  static const char *const yes[] = {"true", "yes", "on", "1"};
  static const char *const no[] = {"false", "no", "off", "0"};
  for (size_t i = 0; i < FY_ARRAY_LEN(yes); i++) {
    if (strcasecmp(text, yes[i]) == 0) {
      *out = 1;
      return 0;
    }
    if (strcasecmp(text, no[i]) == 0) {
      *out = 0;
      return 0;
    }
  }
  return -1;
}

static void join_choices(const char *const *choices, char *buf, size_t cap) {
  size_t n = 0;
  buf[0] = '\0';
  for (size_t i = 0; choices && choices[i] && n < cap; i++) {
    int w = snprintf(buf + n, cap - n, "%s%s", i ? ", " : "", choices[i]);
    if (w < 0)
      break;
    n += (size_t)w;
  }
}

/* Parses text as key k wants it. On failure writes what is wrong (without the
 * key's name or source, which the caller puts in front) and returns FY_EINVAL. */
static int parse_value(const struct fy_cfg_key *k, const char *text, long long *num, char *msg, size_t cap) {
  char shown[SHOW_MAX + 16];
  show(k, text, shown, sizeof(shown));
  *num = 0;
  switch (k->type) {
  case FY_CFG_PATH:
  case FY_CFG_STRING: {
    long long len = (long long)strlen(text);
    if (k->type == FY_CFG_PATH && len == 0) {
      snprintf(msg, cap, "must not be empty");
      return FY_EINVAL;
    }
    if (k->min > 0 && len < k->min) {
      snprintf(msg, cap, len ? "must be at least %lld characters long" : "must not be empty", k->min);
      return FY_EINVAL;
    }
    if (k->max > 0 && len > k->max) {
      snprintf(msg, cap, "must be at most %lld characters long", k->max);
      return FY_EINVAL;
    }
    return 0;
  }
  case FY_CFG_INT: {
    const char *d = (*text == '-' || *text == '+') ? text + 1 : text;
    if (!(*d >= '0' && *d <= '9')) {
      snprintf(msg, cap, "%s is not an integer", shown);
      return FY_EINVAL;
    }
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (*end) {
      snprintf(msg, cap, "%s is not an integer", shown);
      return FY_EINVAL;
    }
    if (errno == ERANGE) {
      snprintf(msg, cap, "%s is out of range", shown);
      return FY_EINVAL;
    }
    bool secret = k->flags & FY_CFG_SECRET;
    if ((k->min || k->max) && v < k->min) {
      if (secret)
        snprintf(msg, cap, "the value is below the minimum %lld", k->min);
      else
        snprintf(msg, cap, "%lld is below the minimum %lld", v, k->min);
      return FY_EINVAL;
    }
    if ((k->min || k->max) && v > k->max) {
      if (secret)
        snprintf(msg, cap, "the value is above the maximum %lld", k->max);
      else
        snprintf(msg, cap, "%lld is above the maximum %lld", v, k->max);
      return FY_EINVAL;
    }
    *num = v;
    return 0;
  }
  case FY_CFG_BOOL:
    if (parse_bool(text, num) < 0) {
      snprintf(msg, cap, "%s is not a boolean (use true/false, yes/no, on/off, 1/0)", shown);
      return FY_EINVAL;
    }
    return 0;
  case FY_CFG_DURATION: {
    bool too_big;
    long long ms;
    if (parse_duration(text, &ms, &too_big) < 0) {
      if (too_big)
        snprintf(msg, cap, "%s is too long a duration", shown);
      else
        snprintf(msg, cap, "%s is not a duration (use 500ms, 30s, 5m, 2h, 1d)", shown);
      return FY_EINVAL;
    }
    char lim[32];
    if ((k->min || k->max) && (ms < k->min || ms > k->max)) {
      bool low = ms < k->min;
      format_ms(low ? k->min : k->max, lim, sizeof(lim));
      snprintf(msg, cap, "%s is %s the %s %s", shown, low ? "below" : "above", low ? "minimum" : "maximum",
               lim);
      return FY_EINVAL;
    }
    *num = ms;
    return 0;
  }
  case FY_CFG_ENUM:
    for (size_t i = 0; k->choices && k->choices[i]; i++) {
      if (strcmp(text, k->choices[i]) == 0) {
        *num = (long long)i;
        return 0;
      }
    }
    char list[256];
    join_choices(k->choices, list, sizeof(list));
    snprintf(msg, cap, "%s is not one of %s", shown, list);
    return FY_EINVAL;
  }
  snprintf(msg, cap, "has an unknown type");
  return FY_EINVAL;
}

static int set_value(struct fy_cfg *cfg, size_t idx, const char *text, long long num,
                     enum fy_cfg_source source, const char *where, struct fy_err *err) {
  char *copy = strdup(text);
  if (!copy)
    return fy_err_set(err, FY_ENOMEM, "out of memory");
  struct fy_cfg_value *v = &cfg->values[idx];
  free(v->text);
  v->text = copy;
  v->num = num;
  v->source = source;
  snprintf(v->where, sizeof(v->where), "%s", where);
  return 0;
}

/* ---- the table ------------------------------------------------------------ */

static void check_table(const char *applet, const struct fy_cfg_key *keys, size_t nkeys) {
  for (size_t i = 0; i < nkeys; i++) {
    const struct fy_cfg_key *k = &keys[i];
    if (!valid_name(k->name))
      bug("config table of %s: key %zu: name '%s' is not lower_snake_case of at most %d characters", applet,
          i, k->name ? k->name : "(null)", NAME_MAX_LEN);
    for (size_t j = 0; j < i; j++)
      if (strcmp(keys[j].name, k->name) == 0)
        bug("config table of %s: key '%s' appears twice", applet, k->name);
    for (size_t j = 0; j < FY_ARRAY_LEN(reserved_names); j++)
      if (strcmp(reserved_names[j], k->name) == 0)
        bug("config table of %s: key name '%s' is reserved", applet, k->name);
    if ((unsigned)k->type > FY_CFG_ENUM)
      bug("config table of %s: key '%s' has unknown type %d", applet, k->name, (int)k->type);
    if (k->type == FY_CFG_ENUM && (!k->choices || !k->choices[0]))
      bug("config table of %s: enum key '%s' has no choices", applet, k->name);
    if ((k->type == FY_CFG_INT || k->type == FY_CFG_DURATION) && k->min > k->max)
      bug("config table of %s: key '%s' has min %lld above max %lld", applet, k->name, k->min, k->max);
    if ((k->type == FY_CFG_STRING || k->type == FY_CFG_PATH) &&
        (k->min < 0 || (k->max > 0 && k->min > k->max)))
      bug("config table of %s: key '%s' has bad length limits [%lld, %lld]", applet, k->name, k->min, k->max);
    /* --no-<bool> must not collide with a key of that name. */
    if (strncmp(k->name, "no_", 3) == 0)
      for (size_t j = 0; j < nkeys; j++)
        if (keys[j].type == FY_CFG_BOOL && strcmp(keys[j].name, k->name + 3) == 0)
          bug("config table of %s: key '%s' collides with --no-%s", applet, k->name, keys[j].name);
  }
}

static void apply_defaults(struct fy_cfg *cfg) {
  for (size_t i = 0; i < cfg->nkeys; i++) {
    const struct fy_cfg_key *k = &cfg->keys[i];
    if (!k->def)
      continue;
    char msg[FY_ERR_MSG_MAX];
    long long num;
    if (parse_value(k, k->def, &num, msg, sizeof(msg)) < 0)
      bug("config table of %s: default of '%s': %s", cfg->applet, k->name, msg);
    /* Defaults are borrowed from the table (which cfg owns) until overridden;
     * copied here so that every text is owned and freed the same way. */
    struct fy_err err;
    if (set_value(cfg, i, k->def, num, FY_CFG_SRC_DEFAULT, "default", &err) < 0)
      bug("out of memory while loading defaults");
  }
}

/* ---- the file layer ------------------------------------------------------- */

struct file_ctx {
  struct fy_cfg *cfg;
  struct fy_err *err;
  const char *path;
  FILE *f;
  char line[1024]; /* the current line, without its end */
  int lineno;
  int *first_line;     /* per key: the line that set it, 0 when not yet */
  bool key_in_section; /* a key line was seen since the last [section] */
  int rc;              /* first error, 0 while none */
};

__attribute__((format(printf, 2, 3))) static int file_fail(struct file_ctx *c, const char *fmt, ...) {
  if (c->rc)
    return c->rc;
  char msg[FY_ERR_MSG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  c->rc = fy_err_set(c->err, FY_EINVAL, "%s:%d: %s", c->path, c->lineno, msg);
  return c->rc;
}

static const char *lskip(const char *s) {
  while (*s == ' ' || *s == '\t' || *s == '\v' || *s == '\f' || *s == '\r')
    s++;
  return s;
}

/* The fgets-like reader inih calls once per line. Reading whole lines here
 * (instead of letting inih call fgets) keeps the line numbers exact, refuses
 * lines inih would split or truncate, and sees what inih does not report:
 * section headers and continuation lines. Returning NULL ends the parse. */
static char *file_reader(char *str, int num, void *stream) {
  struct file_ctx *c = stream;
  if (c->rc)
    return NULL;
  /* inih needs room for the line, '\n' and '\0'; one more byte here for a '\r'.
   * Reading stops there, so a file without newlines (say /dev/zero) cannot make
   * this allocate or loop without end. */
  size_t limit = num < 3 ? 0 : (size_t)num - 2;
  if (limit > sizeof(c->line) - 2)
    limit = sizeof(c->line) - 2;
  size_t len = 0;
  bool nul = false;
  int ch;
  errno = 0;
  while ((ch = getc(c->f)) != EOF && ch != '\n') {
    nul |= ch == '\0';
    c->line[len++] = (char)ch;
    if (len > limit)
      break;
  }
  if (ch == EOF && ferror(c->f)) {
    c->rc = fy_err_errno(c->err, errno ? errno : EIO, "config file %s", c->path);
    return NULL;
  }
  if (ch == EOF && len == 0)
    return NULL;
  c->lineno++;
  if (nul) {
    file_fail(c, "line contains a NUL byte");
    return NULL;
  }
  if (ch != '\n' && ch != EOF && c->line[len - 1] == '\r') {
    /* Stopped on the '\r' of a "\r\n" right at the limit. */
    int next = getc(c->f);
    if (next == '\n')
      ch = next;
    else if (next != EOF)
      ungetc(next, c->f);
  }
  if (ch != '\n' && ch != EOF) {
    file_fail(c, "line is longer than %zu characters", limit);
    return NULL;
  }
  if (len && c->line[len - 1] == '\r')
    len--;
  c->line[len] = '\0';

  const char *s = c->line;
  if (c->lineno == 1 && (unsigned char)s[0] == 0xEF && (unsigned char)s[1] == 0xBB &&
      (unsigned char)s[2] == 0xBF)
    s += 3; /* a UTF-8 byte order mark, which inih skips too */
  const char *t = lskip(s);
  if (*t == '\0' || *t == ';' || *t == '#') {
    /* blank or comment */
  } else if (t > s && c->key_in_section) {
    /* inih would append this line to the previous value (configparser's
     * multi-line values); ferry takes one line per value. */
    file_fail(c, "indented line continues the value above; multi-line values are not supported "
                 "(remove the indentation)");
    return NULL;
  } else if (*t == '[') {
    /* Find the ']' the way inih does: an inline comment (" ;") ends the search. */
    const char *e = t + 1;
    bool was_space = false;
    while (*e && *e != ']' && !(was_space && *e == ';')) {
      was_space = *e == ' ' || *e == '\t';
      e++;
    }
    if (*e == ']') {
      size_t slen = (size_t)(e - (t + 1));
      if (strlen(c->cfg->applet) != slen || memcmp(t + 1, c->cfg->applet, slen) != 0) {
        file_fail(c, "unknown section [%.*s] (put keys at the top or under [%s])",
                  (int)(slen > SHOW_MAX ? SHOW_MAX : slen), t + 1, c->cfg->applet);
        return NULL;
      }
      c->key_in_section = false;
    } /* else inih reports the line as malformed */
  }

  memcpy(str, c->line, len);
  str[len] = '\n';
  str[len + 1] = '\0';
  return str;
}

static int unquote(const char *v, char *out) {
  /* v starts with '"'; out has room for strlen(v). */
  size_t len = strlen(v), n = 0;
  if (len < 2 || v[len - 1] != '"')
    return -1;
  for (size_t i = 1; i < len - 1; i++) {
    char ch = v[i];
    if (ch == '"')
      return -1;
    if (ch != '\\') {
      out[n++] = ch;
      continue;
    }
    if (++i >= len - 1)
      return -1;
    switch (v[i]) {
    case '"':
    case '\\':
      out[n++] = v[i];
      break;
    case 'n':
      out[n++] = '\n';
      break;
    case 't':
      out[n++] = '\t';
      break;
    case 'x': {
      unsigned val = 0;
      for (int d = 0; d < 2; d++) {
        char h = (i + 1 < len - 1) ? v[++i] : '\0';
        if (h >= '0' && h <= '9')
          val = val * 16 + (unsigned)(h - '0');
        else if (h >= 'a' && h <= 'f')
          val = val * 16 + (unsigned)(h - 'a' + 10);
        else if (h >= 'A' && h <= 'F')
          val = val * 16 + (unsigned)(h - 'A' + 10);
        else
          return -1;
      }
      if (val == 0)
        return -1;
      out[n++] = (char)val;
      break;
    }
    default:
      return -1;
    }
  }
  out[n] = '\0';
  return 0;
}

static void file_keys_list(const struct fy_cfg *cfg, char *buf, size_t cap) {
  size_t n = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < cfg->nkeys && n < cap; i++) {
    if ((cfg->keys[i].flags & FY_CFG_CLI_ONLY) || is_config_key(cfg, i))
      continue;
    int w = snprintf(buf + n, cap - n, "%s%s", n ? ", " : "", cfg->keys[i].name);
    if (w < 0)
      break;
    n += (size_t)w;
  }
}

static int file_handler(void *user, const char *section, const char *name, const char *value) {
  struct file_ctx *c = user;
  struct fy_cfg *cfg = c->cfg;
  (void)section; /* checked by file_reader, which sees the whole header */
  if (c->rc)
    return 0;
  if (!name)
    return 1; /* a section start, in builds of inih that report them */
  if (!value) {
    file_fail(c, "%.*s needs a value (key = value)", SHOW_MAX, name);
    return 0;
  }
  c->key_in_section = true;

  ssize_t idx = find_key(cfg, name);
  if (idx < 0) {
    char known[FY_ERR_MSG_MAX];
    file_keys_list(cfg, known, sizeof(known));
    file_fail(c, "unknown key '%.*s' (known: %s)", SHOW_MAX, name, known);
    return 0;
  }
  const struct fy_cfg_key *k = &cfg->keys[idx];
  if (is_config_key(cfg, (size_t)idx)) {
    file_fail(c, "config cannot be set in the config file (use --config or FERRY_CONFIG)");
    return 0;
  }
  if (k->flags & FY_CFG_CLI_ONLY) {
    char flag[NAME_MAX_LEN + 3];
    flag_name(k->name, flag, sizeof(flag));
    file_fail(c, "%s can only be given on the command line (%s)", k->name, flag);
    return 0;
  }
  if (c->first_line[idx]) {
    file_fail(c, "%s set twice (first at line %d)", k->name, c->first_line[idx]);
    return 0;
  }
  c->first_line[idx] = c->lineno;

  FY_AUTOFREE char *plain = NULL;
  if (value[0] == '"') {
    plain = malloc(strlen(value) + 1);
    if (!plain) {
      c->rc = fy_err_set(c->err, FY_ENOMEM, "out of memory");
      return 0;
    }
    if (unquote(value, plain) < 0) {
      file_fail(c, "%s: malformed quoted value (escapes are \\\" \\\\ \\n \\t \\xNN)", k->name);
      return 0;
    }
    value = plain;
  }

  char msg[FY_ERR_MSG_MAX];
  long long num;
  if (parse_value(k, value, &num, msg, sizeof(msg)) < 0) {
    file_fail(c, "%s: %s", k->name, msg);
    return 0;
  }
  char where[sizeof(cfg->values[0].where)];
  snprintf(where, sizeof(where), "%s:%d", c->path, c->lineno);
  if (set_value(cfg, (size_t)idx, value, num, FY_CFG_SRC_FILE, where, c->err) < 0) {
    c->rc = FY_ENOMEM;
    return 0;
  }
  return 1;
}

/* Reads the file at path; a missing file is fine only when may_be_missing. */
static int load_file(struct fy_cfg *cfg, const char *path, const char *named_by, bool may_be_missing,
                     struct fy_err *err) {
  FY_AUTOFCLOSE FILE *f = fopen(path, "re");
  if (!f) {
    if (may_be_missing && (errno == ENOENT || errno == ENOTDIR))
      return 0;
    if (named_by)
      return fy_err_errno(err, errno, "config file %s (named by %s)", path, named_by);
    return fy_err_errno(err, errno, "config file %s", path);
  }
  struct stat st;
  if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode))
    return fy_err_set(err, FY_EINVAL, "config file %s is a directory", path);

  FY_AUTOFREE int *first_line = calloc(cfg->nkeys, sizeof(*first_line));
  if (!first_line)
    return fy_err_set(err, FY_ENOMEM, "out of memory");
  struct file_ctx c = {.cfg = cfg, .err = err, .path = path, .f = f, .first_line = first_line};
  int r = ini_parse_stream(file_reader, &c, file_handler, &c);
  if (c.rc)
    return c.rc;
  if (r == -2)
    return fy_err_set(err, FY_ENOMEM, "out of memory");
  if (r > 0) {
    c.lineno = r;
    return file_fail(&c, "expected 'key = value', '[%s]' or a comment", cfg->applet);
  }
  if (r < 0)
    return fy_err_set(err, FY_EIO, "config file %s: cannot be read", path);
  return 0;
}

/* ---- the environment layer ------------------------------------------------ */

static const char *env_get(char *const *envp, const char *name) {
  size_t n = strlen(name);
  for (char *const *e = envp; e && *e; e++)
    if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
      return *e + n + 1;
  return NULL;
}

static int load_env_key(struct fy_cfg *cfg, size_t i, char *const *envp, struct fy_err *err) {
  const struct fy_cfg_key *k = &cfg->keys[i];
  char name[NAME_MAX_LEN + 8];
  env_name(k->name, name, sizeof(name));
  const char *text = env_get(envp, name);
  if (!text)
    return 0;
  char msg[FY_ERR_MSG_MAX];
  long long num;
  if (parse_value(k, text, &num, msg, sizeof(msg)) < 0)
    return fy_err_set(err, FY_EINVAL, "%s: %s", name, msg);
  return set_value(cfg, i, text, num, FY_CFG_SRC_ENV, name, err);
}

static int load_env(struct fy_cfg *cfg, char *const *envp, struct fy_err *err) {
  for (size_t i = 0; i < cfg->nkeys; i++) {
    if (cfg->keys[i].flags & FY_CFG_CLI_ONLY)
      continue;
    int rc = load_env_key(cfg, i, envp, err);
    if (rc < 0)
      return rc;
  }
  return 0;
}

/* ---- the flag layer ------------------------------------------------------- */

struct pending {
  size_t key;
  const char *text; /* borrowed from argv (or a literal) */
  long long num;
  char where[NAME_MAX_LEN + 8];
};

struct scan {
  struct pending *flags;
  size_t nflags;
  int rc; /* first error; the scan goes on so that a later --help still counts */
};

__attribute__((format(printf, 4, 5))) static void scan_fail(struct scan *s, struct fy_err *err, int code,
                                                            const char *fmt, ...) {
  if (s->rc)
    return;
  char msg[FY_ERR_MSG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  s->rc = fy_err_set(err, code, "%s", msg);
}

/* One pass over argv: positionals into cfg->args, flags into s->flags, parsed
 * but not applied (they are the top layer, applied last). */
static int scan_args(struct fy_cfg *cfg, int argc, char *const *argv, struct scan *s, struct fy_err *err) {
  bool flags_done = false;
  for (int i = 1; i < argc && argv[i]; i++) {
    const char *a = argv[i];
    if (flags_done || a[0] != '-' || a[1] == '\0') {
      char *copy = strdup(a);
      if (!copy)
        return fy_err_set(err, FY_ENOMEM, "out of memory");
      cfg->args[cfg->nargs++] = copy;
      continue;
    }
    if (strcmp(a, "--") == 0) {
      flags_done = true;
      continue;
    }
    if (strcmp(a, "-h") == 0) {
      cfg->want_help = true;
      continue;
    }
    if (a[1] != '-') {
      scan_fail(s, err, FY_EUSAGE, "unknown flag %.*s " HELP_HINT, SHOW_MAX, a, cfg->applet);
      continue;
    }
    const char *body = a + 2;
    const char *eq = strchr(body, '=');
    size_t blen = eq ? (size_t)(eq - body) : strlen(body);
    const char *inline_value = eq ? eq + 1 : NULL;
    int shown = blen > SHOW_MAX ? SHOW_MAX : (int)blen;

    if ((blen == 4 && memcmp(body, "help", 4) == 0) ||
        (blen == 12 && memcmp(body, "print-config", 12) == 0)) {
      if (inline_value)
        scan_fail(s, err, FY_EUSAGE, "--%.*s takes no value", shown, body);
      else if (blen == 4)
        cfg->want_help = true;
      else
        cfg->want_print = true;
      continue;
    }

    bool negated = false;
    ssize_t idx = find_flag(cfg, body, blen);
    if (idx < 0 && blen > 3 && memcmp(body, "no-", 3) == 0) {
      ssize_t b = find_flag(cfg, body + 3, blen - 3);
      if (b >= 0 && cfg->keys[b].type == FY_CFG_BOOL) {
        idx = b;
        negated = true;
      } else if (b >= 0) {
        scan_fail(s, err, FY_EUSAGE, "--%.*s: only on/off flags have a --no- form", shown, body);
        continue;
      }
    }
    if (idx < 0) {
      scan_fail(s, err, FY_EUSAGE, "unknown flag --%.*s " HELP_HINT, shown, body, cfg->applet);
      continue;
    }

    const struct fy_cfg_key *k = &cfg->keys[idx];
    struct pending *p = &s->flags[s->nflags];
    p->key = (size_t)idx;
    snprintf(p->where, sizeof(p->where), "--%.*s", (int)blen, body);
    if (negated) {
      if (inline_value) {
        scan_fail(s, err, FY_EUSAGE, "%s takes no value", p->where);
        continue;
      }
      p->text = "false";
    } else if (k->type == FY_CFG_BOOL) {
      /* A bool flag alone is true; its value, if any, only after '=' (so that
       * `--id FILE` keeps FILE as an argument). */
      p->text = inline_value ? inline_value : "true";
    } else if (inline_value) {
      p->text = inline_value;
    } else if (i + 1 < argc && argv[i + 1] && (argv[i + 1][0] != '-' || argv[i + 1][1] == '\0')) {
      p->text = argv[++i];
    } else {
      scan_fail(s, err, FY_EUSAGE, "%s needs a value%s", p->where,
                (i + 1 < argc && argv[i + 1]) ? " (write --flag=VALUE for a value that starts with '-')"
                                              : "");
      continue;
    }
    char msg[FY_ERR_MSG_MAX];
    if (parse_value(k, p->text, &p->num, msg, sizeof(msg)) < 0) {
      scan_fail(s, err, FY_EINVAL, "%s: %s", p->where, msg);
      continue;
    }
    s->nflags++;
  }
  return 0;
}

/* ---- loading -------------------------------------------------------------- */

static int load_layers(struct fy_cfg *cfg, int argc, char *const *argv, char *const *envp,
                       struct pending *flags, struct fy_err *err);

static int load(struct fy_cfg *cfg, const char *applet, const struct fy_cfg_key *keys, size_t nkeys, int argc,
                char *const *argv, char *const *envp, struct fy_err *err) {
  check_table(applet, keys, nkeys);
  for (size_t i = 0; i < nkeys; i++)
    for (size_t j = 0; j < FY_ARRAY_LEN(builtin_keys); j++)
      if (strcmp(keys[i].name, builtin_keys[j].name) == 0)
        bug("config table of %s: key name '%s' is reserved", applet, keys[i].name);

  /* One allocation holds the key table and the default config path. */
  char def_path[PATH_MAX];
  int plen = snprintf(def_path, sizeof(def_path), "%s/%s.conf", FY_SYSCONFDIR, applet);
  if (plen < 0 || (size_t)plen >= sizeof(def_path))
    bug("applet name '%s' is too long", applet);
  size_t total = nkeys + FY_ARRAY_LEN(builtin_keys);
  size_t table_size = total * sizeof(struct fy_cfg_key);
  cfg->keys = malloc(table_size + (size_t)plen + 1);
  if (!cfg->keys)
    return fy_err_set(err, FY_ENOMEM, "out of memory");
  char *path_copy = (char *)cfg->keys + table_size;
  memcpy(path_copy, def_path, (size_t)plen + 1);
  if (nkeys)
    memcpy(cfg->keys, keys, nkeys * sizeof(*keys));
  memcpy(cfg->keys + nkeys, builtin_keys, sizeof(builtin_keys));
  cfg->keys[nkeys + CONFIG_KEY_OFFSET].def = path_copy;
  cfg->nkeys = total;

  cfg->values = calloc(total, sizeof(*cfg->values));
  cfg->args = calloc(argc > 0 ? (size_t)argc : 1, sizeof(*cfg->args));
  if (!cfg->values || !cfg->args)
    return fy_err_set(err, FY_ENOMEM, "out of memory");
  apply_defaults(cfg);

  struct pending *flags = calloc(argc > 0 ? (size_t)argc : 1, sizeof(*flags));
  if (!flags)
    return fy_err_set(err, FY_ENOMEM, "out of memory");
  int rc = load_layers(cfg, argc, argv, envp, flags, err);
  free(flags);
  return rc;
}

/* Flags are scanned first (for --help and --config), then the file, the
 * environment and the flags are applied in that order. */
static int load_layers(struct fy_cfg *cfg, int argc, char *const *argv, char *const *envp,
                       struct pending *flags, struct fy_err *err) {
  size_t config_idx = cfg->nkeys - FY_ARRAY_LEN(builtin_keys) + CONFIG_KEY_OFFSET;
  struct scan s = {.flags = flags};
  int rc = scan_args(cfg, argc, argv, &s, err);
  if (rc < 0)
    return rc;
  if (cfg->want_help) {
    /* Help must work even where the command line or the config is broken. */
    fy_err_clear(err);
    return 0;
  }
  if (s.rc)
    return s.rc;

  /* The file is chosen before it is read: --config > FERRY_CONFIG > default. */
  const struct pending *config_flag = NULL;
  for (size_t i = 0; i < s.nflags; i++)
    if (flags[i].key == config_idx)
      config_flag = &flags[i];
  char env_config[NAME_MAX_LEN + 8];
  env_name("config", env_config, sizeof(env_config));
  if (config_flag) {
    rc = load_file(cfg, config_flag->text, config_flag->where, false, err);
  } else if (env_get(envp, env_config)) {
    rc = load_env_key(cfg, config_idx, envp, err);
    if (rc == 0)
      rc = load_file(cfg, cfg->values[config_idx].text, env_config, false, err);
  } else {
    rc = load_file(cfg, cfg->values[config_idx].text, NULL, true, err);
  }
  if (rc < 0)
    return rc;

  rc = load_env(cfg, envp, err);
  if (rc < 0)
    return rc;

  for (size_t i = 0; i < s.nflags; i++) {
    const struct pending *p = &flags[i];
    rc = set_value(cfg, p->key, p->text, p->num, FY_CFG_SRC_FLAG, p->where, err);
    if (rc < 0)
      return rc;
  }
  return 0;
}

int fy_cfg_load(struct fy_cfg *cfg, const char *applet, const struct fy_cfg_key *keys, size_t nkeys, int argc,
                char *const *argv, char *const *envp, struct fy_err *err) {
  memset(cfg, 0, sizeof(*cfg));
  cfg->applet = applet;
  int rc = load(cfg, applet, keys, nkeys, argc, argv, envp, err);
  if (rc < 0)
    fy_cfg_free(cfg);
  return rc;
}

void fy_cfg_free(struct fy_cfg *cfg) {
  if (!cfg)
    return;
  if (cfg->values)
    for (size_t i = 0; i < cfg->nkeys; i++)
      free(cfg->values[i].text);
  free(cfg->values);
  for (size_t i = 0; cfg->args && i < cfg->nargs; i++)
    free(cfg->args[i]);
  free(cfg->args);
  free(cfg->keys);
  memset(cfg, 0, sizeof(*cfg));
}

/* ---- lookups -------------------------------------------------------------- */

const struct fy_cfg_value *fy_cfg_get(const struct fy_cfg *cfg, const char *name) {
  ssize_t i = find_key(cfg, name);
  if (i < 0)
    bug("config key '%s' is not in the table of %s", name, cfg->applet ? cfg->applet : "(none)");
  return &cfg->values[i];
}

const char *fy_cfg_str(const struct fy_cfg *cfg, const char *name) {
  return fy_cfg_get(cfg, name)->text;
}

long long fy_cfg_num(const struct fy_cfg *cfg, const char *name) {
  return fy_cfg_get(cfg, name)->num;
}

bool fy_cfg_bool(const struct fy_cfg *cfg, const char *name) {
  ssize_t i = find_key(cfg, name);
  if (i >= 0 && cfg->keys[i].type != FY_CFG_BOOL)
    bug("config key '%s' of %s is not a bool", name, cfg->applet);
  return fy_cfg_get(cfg, name)->num != 0;
}

const char *fy_cfg_source_name(enum fy_cfg_source source) {
  switch (source) {
  case FY_CFG_SRC_UNSET:
    return "unset";
  case FY_CFG_SRC_DEFAULT:
    return "default";
  case FY_CFG_SRC_FILE:
    return "file";
  case FY_CFG_SRC_ENV:
    return "env";
  case FY_CFG_SRC_FLAG:
    return "flag";
  }
  return "unknown";
}

/* ---- printing ------------------------------------------------------------- */

/* A value as the config file would take it back: bare when that is
 * unambiguous, else in double quotes with \" \\ \n \t \xNN escapes. */
static void print_value(FILE *out, const char *v) {
  bool quote = *v == '\0';
  for (const unsigned char *p = (const unsigned char *)v; *p && !quote; p++)
    quote = *p == ' ' || *p == '"' || *p == ';' || *p == '#' || *p == '\\' || *p < 0x20 || *p == 0x7f;
  if (!quote) {
    fputs(v, out);
    return;
  }
  fputc('"', out);
  for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
    if (*p == '"' || *p == '\\')
      fprintf(out, "\\%c", *p);
    else if (*p == '\n')
      fputs("\\n", out);
    else if (*p == '\t')
      fputs("\\t", out);
    else if (*p < 0x20 || *p == 0x7f)
      fprintf(out, "\\x%02x", *p);
    else
      fputc(*p, out);
  }
  fputc('"', out);
}

void fy_cfg_print(const struct fy_cfg *cfg, FILE *out) {
  for (size_t i = 0; i < cfg->nkeys; i++) {
    const struct fy_cfg_key *k = &cfg->keys[i];
    const struct fy_cfg_value *v = &cfg->values[i];
    if (!v->text) {
      fprintf(out, "%s =  # unset\n", k->name);
      continue;
    }
    fprintf(out, "%s = ", k->name);
    if (k->flags & FY_CFG_SECRET)
      fputs("<set>", out);
    else
      print_value(out, v->text);
    if (v->source == FY_CFG_SRC_DEFAULT)
      fputs("  # default\n", out);
    else
      fprintf(out, "  # %s %s\n", fy_cfg_source_name(v->source), v->where);
  }
}

static const char *metavar(const struct fy_cfg_key *k) {
  switch (k->type) {
  case FY_CFG_STRING:
    return " VALUE";
  case FY_CFG_PATH:
    return " PATH";
  case FY_CFG_INT:
    return " N";
  case FY_CFG_BOOL:
    return "";
  case FY_CFG_DURATION:
    return " DURATION";
  case FY_CFG_ENUM:
    return " CHOICE";
  }
  return " VALUE";
}

#define HELP_COL_MAX 30

static void flag_column(const struct fy_cfg_key *k, char *buf, size_t cap) {
  char flag[NAME_MAX_LEN + 8];
  flag_name(k->name, flag, sizeof(flag));
  if (k->type == FY_CFG_BOOL)
    snprintf(buf, cap, "--[no-]%s", flag + 2);
  else
    snprintf(buf, cap, "%s%s", flag, metavar(k));
}

static void help_line(FILE *out, int width, const char *left, const char *help) {
  if ((int)strlen(left) > width)
    fprintf(out, "  %s\n  %-*s  %s\n", left, width, "", help);
  else
    fprintf(out, "  %-*s  %s\n", width, left, help);
}

void fy_cfg_print_help(const struct fy_cfg *cfg, const char *synopsis, const char *description, FILE *out) {
  if (synopsis)
    fprintf(out, "usage: %s\n", synopsis);
  else
    fprintf(out, "usage: ferry %s [flags]\n", cfg->applet);
  if (description && *description)
    fprintf(out, "\n%s\n", description);
  fputs("\nflags:\n", out);

  int width = (int)strlen("-h, --help");
  for (size_t i = 0; i < cfg->nkeys; i++) {
    char left[NAME_MAX_LEN * 2 + 16];
    flag_column(&cfg->keys[i], left, sizeof(left));
    int w = (int)strlen(left);
    if (w > width && w <= HELP_COL_MAX)
      width = w;
  }

  for (size_t i = 0; i < cfg->nkeys; i++) {
    const struct fy_cfg_key *k = &cfg->keys[i];
    char left[NAME_MAX_LEN * 2 + 16];
    flag_column(k, left, sizeof(left));

    char text[1024];
    size_t n = (size_t)snprintf(text, sizeof(text), "%s", k->help ? k->help : "");
    const char *sep = n ? " (" : "(";
#define APPEND(...)                                                                                          \
  do {                                                                                                       \
    if (n < sizeof(text)) {                                                                                  \
      int w_ = snprintf(text + n, sizeof(text) - n, __VA_ARGS__);                                            \
      n += w_ > 0 ? (size_t)w_ : 0;                                                                          \
    }                                                                                                        \
  } while (0)
    if (k->type == FY_CFG_ENUM) {
      char list[256];
      join_choices(k->choices, list, sizeof(list));
      APPEND("%sone of %s", sep, list);
      sep = "; ";
    }
    if (k->def && k->type != FY_CFG_BOOL) {
      APPEND("%sdefault: %s", sep, (k->flags & FY_CFG_SECRET) ? "<set>" : k->def);
      sep = "; ";
    } else if (k->def && k->type == FY_CFG_BOOL) {
      long long on = 0;
      parse_bool(k->def, &on);
      APPEND("%sdefault: %s", sep, on ? "on" : "off");
      sep = "; ";
    }
    if (k->flags & FY_CFG_CLI_ONLY) {
      APPEND("%sflag only", sep);
    } else {
      char env[NAME_MAX_LEN + 8];
      env_name(k->name, env, sizeof(env));
      APPEND("%senv %s", sep, env);
    }
    APPEND(")");
#undef APPEND
    help_line(out, width, left, text);
  }
  help_line(out, width, "--print-config", "print each setting with where it came from, then exit");
  help_line(out, width, "-h, --help", "show this help, then exit");

  fprintf(out,
          "\nEvery setting but the flag-only ones can also be set in the config file\n"
          "(key_name = value, at the top or under [%s]) or in the environment\n"
          "(FERRY_KEY_NAME). Flags win over the environment, which wins over the file.\n",
          cfg->applet);
}
