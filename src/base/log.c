#include "base/log.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "base/err.h"

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int fy_log_level_parse(const char *text, enum fy_log_level *out) {
  if (!text)
    return FY_EINVAL;
  for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
    if (strcmp(text, level_names[i]) == 0) {
      if (out)
        *out = (enum fy_log_level)i;
      return 0;
    }
  }
  return FY_EINVAL;
}

const char *fy_log_level_name(enum fy_log_level level) {
  if ((unsigned)level < sizeof(level_names) / sizeof(level_names[0]))
    return level_names[level];
  return "invalid";
}

/* "DEV:INODE" as systemd writes it (both decimal). */
static bool parse_journal_stream(const char *text, uintmax_t *dev, uintmax_t *ino) {
  char *end;
  if (!text || *text < '0' || *text > '9')
    return false;
  *dev = strtoumax(text, &end, 10);
  if (*end != ':' || end[1] < '0' || end[1] > '9')
    return false;
  *ino = strtoumax(end + 1, &end, 10);
  return *end == '\0';
}

void fy_log_init(struct fy_log *lg, FILE *out, enum fy_log_level min_level, const char *applet,
                 const char *journal_stream) {
  lg->out = out;
  lg->min_level = min_level;
  lg->applet = applet;
  lg->timestamps = true;

  uintmax_t dev, ino;
  if (out && parse_journal_stream(journal_stream, &dev, &ino)) {
    int fd = fileno(out);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && (uintmax_t)st.st_dev == dev && (uintmax_t)st.st_ino == ino)
      lg->timestamps = false;
  }
}

/* A bounded output buffer that keeps counting past its end, so one pass can
 * both write what fits and learn how much was needed. */
struct lbuf {
  char *p;
  size_t cap; /* bytes usable, not counting the final NUL */
  size_t len; /* bytes needed so far */
};

static void put(struct lbuf *b, const char *s, size_t n) {
  if (b->len < b->cap) {
    size_t room = b->cap - b->len;
    memcpy(b->p + b->len, s, n < room ? n : room);
  }
  b->len += n;
}

static void putc_(struct lbuf *b, char c) {
  put(b, &c, 1);
}

static void puts_(struct lbuf *b, const char *s) {
  put(b, s, strlen(s));
}

static bool needs_quotes(const char *v) {
  if (!*v)
    return true;
  for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
    if (*p == ' ' || *p == '"' || *p == '=' || *p == '\\' || *p < 0x20 || *p == 0x7f)
      return true;
  }
  return false;
}

static void put_value(struct lbuf *b, const char *v) {
  if (!v)
    v = "";
  if (!needs_quotes(v)) {
    puts_(b, v);
    return;
  }
  static const char hex[] = "0123456789abcdef";
  putc_(b, '"');
  for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
    switch (*p) {
    case '"':
      put(b, "\\\"", 2);
      break;
    case '\\':
      put(b, "\\\\", 2);
      break;
    case '\n':
      put(b, "\\n", 2);
      break;
    case '\t':
      put(b, "\\t", 2);
      break;
    default:
      if (*p < 0x20 || *p == 0x7f) {
        char esc[4] = {'\\', 'x', hex[*p >> 4], hex[*p & 0xf]};
        put(b, esc, sizeof(esc));
      } else {
        putc_(b, (char)*p);
      }
    }
  }
  putc_(b, '"');
}

/* Keys come from code, not from input, but a bad one must still not break the
 * line's syntax: anything outside [A-Za-z0-9_.-] becomes '_'. */
static void put_key(struct lbuf *b, const char *k) {
  if (!k || !*k) {
    putc_(b, '_');
    return;
  }
  for (const char *p = k; *p; p++) {
    char c = *p;
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '.' || c == '-';
    putc_(b, ok ? c : '_');
  }
}

size_t fy_log_format_value(char *buf, size_t cap, const char *value) {
  struct lbuf b = {.p = buf, .cap = cap ? cap - 1 : 0, .len = 0};
  put_value(&b, value);
  if (cap)
    buf[b.len < b.cap ? b.len : b.cap] = '\0';
  return b.len;
}

static void put_timestamp(struct lbuf *b) {
  struct timespec ts;
  struct tm tm;
  char text[64];
  if (clock_gettime(CLOCK_REALTIME, &ts) != 0 || !gmtime_r(&ts.tv_sec, &tm)) {
    puts_(b, "ts=unknown ");
    return;
  }
  size_t n = strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(text + n, sizeof(text) - n, ".%03ldZ", ts.tv_nsec / 1000000L);
  puts_(b, "ts=");
  puts_(b, text);
  putc_(b, ' ');
}

static void format_line(struct lbuf *b, const struct fy_log *lg, enum fy_log_level level, const char *event,
                        va_list ap) {
  if (lg->timestamps)
    put_timestamp(b);
  puts_(b, "level=");
  puts_(b, fy_log_level_name(level));
  if (lg->applet) {
    puts_(b, " applet=");
    put_value(b, lg->applet);
  }
  puts_(b, " event=");
  put_value(b, event);
  for (;;) {
    const char *k = va_arg(ap, const char *);
    if (!k)
      break;
    const char *v = va_arg(ap, const char *);
    putc_(b, ' ');
    put_key(b, k);
    putc_(b, '=');
    put_value(b, v);
  }
  putc_(b, '\n');
}

void fy_log_kv(const struct fy_log *lg, enum fy_log_level level, const char *event, ...) {
  if (!lg || !lg->out || level < lg->min_level)
    return;

  char stack[1024];
  struct lbuf b = {.p = stack, .cap = sizeof(stack), .len = 0};
  va_list ap;
  va_start(ap, event);
  format_line(&b, lg, level, event, ap);
  va_end(ap);

  char *heap = NULL;
  if (b.len > b.cap) {
    /* Too long for the stack buffer: format again into one of the exact size,
     * so the line still goes out in one write. */
    heap = malloc(b.len);
    if (heap) {
      b = (struct lbuf){.p = heap, .cap = b.len, .len = 0};
      va_start(ap, event);
      format_line(&b, lg, level, event, ap);
      va_end(ap);
    }
    if (b.len > b.cap) {
      /* Out of memory (or the second pass came out longer): send what fit,
       * still ending the line. */
      b.len = b.cap;
      b.p[b.cap - 1] = '\n';
    }
  }
  fwrite(b.p, 1, b.len, lg->out);
  fflush(lg->out);
  free(heap);
}
