#include "fleet/semver.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

static bool ident_char(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-';
}

/* "'x'", "the end" or "byte 0x07": what was found where something else was due. */
static const char *describe(char c, char *out, size_t size) {
  unsigned char u = (unsigned char)c;
  if (u == 0)
    snprintf(out, size, "the end");
  else if (u >= 0x20 && u < 0x7f)
    snprintf(out, size, "'%c'", c);
  else
    snprintf(out, size, "byte 0x%02x", u);
  return out;
}

/* Sets err to `version "<text>": <fmt...>`, the text cut short and
 * non-printable bytes shown as '?', so a hostile string cannot garble logs. */
__attribute__((format(printf, 3, 4))) static int fail(struct fy_err *err, const char *text, const char *fmt,
                                                      ...) {
  char q[48], what[FY_ERR_MSG_MAX];
  size_t n = strlen(text), o = 0;
  for (size_t i = 0; i < n && o < 40; i++) {
    unsigned char c = (unsigned char)text[i];
    q[o++] = c >= 0x20 && c < 0x7f && c != '"' ? (char)c : '?';
  }
  if (o < n)
    memcpy(q + o, "...", 3), o += 3;
  q[o] = '\0';
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof(what), fmt, ap);
  va_end(ap);
  return fy_err_set(err, FY_EINVAL, "version \"%s\": %s", q, what);
}

/* Reads the digits at text[*pi] as one number of the version core. */
static int parse_number(const char *text, size_t *pi, const char *name, uint64_t *out, struct fy_err *err) {
  size_t i = *pi, start = i;
  char found[16];
  if (!is_digit(text[i]))
    return fail(err, text, "%s at offset %zu: expected a digit, found %s", name, i,
                describe(text[i], found, sizeof(found)));
  uint64_t v = 0;
  while (is_digit(text[i])) {
    unsigned d = (unsigned)(text[i] - '0');
    if (v > (UINT64_MAX - d) / 10)
      return fail(err, text, "%s at offset %zu does not fit in 64 bits", name, start);
    v = v * 10 + d;
    i++;
  }
  if (i - start > 1 && text[start] == '0')
    return fail(err, text, "%s at offset %zu has a leading zero", name, start);
  *out = v;
  *pi = i;
  return 0;
}

/* Reads the dot-separated identifiers after the '-' or '+' at text[*pi]
 * into out. A prerelease ends at '+' or the end, a build at the end. */
static int parse_idents(const char *text, size_t *pi, bool pre, char *out, struct fy_err *err) {
  const char *part = pre ? "prerelease" : "build";
  size_t i = *pi + 1, start = i;
  char found[16];
  for (;;) {
    size_t id = i;
    bool numeric = true;
    for (; ident_char(text[i]); i++)
      numeric = numeric && is_digit(text[i]);
    char c = text[i];
    if (c != '.' && c != '\0' && !(pre && c == '+'))
      return fail(err, text, "%s at offset %zu is not allowed in %s (allowed: [0-9A-Za-z-] and '.')",
                  describe(c, found, sizeof(found)), i, part);
    if (i == id)
      return fail(err, text, "empty %s identifier at offset %zu", part, id);
    if (pre && numeric) {
      if (i - id > 1 && text[id] == '0')
        return fail(err, text, "prerelease identifier \"%.*s\" at offset %zu has a leading zero",
                    (int)(i - id), text + id, id);
      uint64_t v = 0;
      for (size_t k = id; k < i; k++) {
        unsigned d = (unsigned)(text[k] - '0');
        if (v > (UINT64_MAX - d) / 10)
          return fail(err, text, "prerelease identifier at offset %zu does not fit in 64 bits", id);
        v = v * 10 + d;
      }
    }
    if (c != '.')
      break;
    i++;
  }
  if (i - start > FY_SEMVER_PART_MAX)
    return fail(err, text, "%s at offset %zu is %zu bytes, at most %d", part, start, i - start,
                FY_SEMVER_PART_MAX);
  memcpy(out, text + start, i - start);
  out[i - start] = '\0';
  *pi = i;
  return 0;
}

int fy_semver_parse(const char *text, struct fy_semver *out, struct fy_err *err) {
  memset(out, 0, sizeof(*out));
  if (!text || !text[0])
    return fy_err_set(err, FY_EINVAL, "version \"\": empty");
  static const char *const names[] = {"major", "minor", "patch"};
  uint64_t *nums[] = {&out->major, &out->minor, &out->patch};
  char found[16];
  size_t i = text[0] == 'v' ? 1 : 0;
  int rc = 0;
  for (int k = 0; k < 3 && rc == 0; k++) {
    if (k > 0) {
      if (text[i] != '.') {
        rc = fail(err, text, "expected '.' after %s at offset %zu, found %s", names[k - 1], i,
                  describe(text[i], found, sizeof(found)));
        break;
      }
      i++;
    }
    rc = parse_number(text, &i, names[k], nums[k], err);
  }
  if (rc == 0 && text[i] != '\0' && text[i] != '-' && text[i] != '+')
    rc = fail(err, text, "%s at offset %zu after the patch number (expected '-', '+' or the end)",
              describe(text[i], found, sizeof(found)), i);
  if (rc == 0 && text[i] == '-')
    rc = parse_idents(text, &i, true, out->pre, err);
  if (rc == 0 && text[i] == '+')
    rc = parse_idents(text, &i, false, out->build, err);
  if (rc < 0)
    memset(out, 0, sizeof(*out));
  return rc;
}

static int cmp_u64(uint64_t a, uint64_t b) {
  return a < b ? -1 : a > b;
}

static bool all_digits(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!is_digit(s[i]))
      return false;
  return true;
}

/* Compares two identifiers of [0-9A-Za-z-]: numeric ones (which parse keeps
 * free of leading zeros) by length, then digits, which is numeric order. */
static int cmp_ident(const char *a, size_t an, const char *b, size_t bn) {
  bool na = all_digits(a, an), nb = all_digits(b, bn);
  if (na != nb)
    return na ? -1 : 1;
  if (na && an != bn)
    return an < bn ? -1 : 1;
  int c = memcmp(a, b, an < bn ? an : bn);
  if (c != 0)
    return c < 0 ? -1 : 1;
  return cmp_u64(an, bn);
}

int fy_semver_cmp(const struct fy_semver *a, const struct fy_semver *b) {
  int c;
  if ((c = cmp_u64(a->major, b->major)) || (c = cmp_u64(a->minor, b->minor)) ||
      (c = cmp_u64(a->patch, b->patch)))
    return c;
  if (!a->pre[0] || !b->pre[0]) /* a release is above its prereleases */
    return a->pre[0] ? -1 : b->pre[0] ? 1 : 0;
  const char *pa = a->pre, *pb = b->pre;
  for (;;) {
    size_t an = strcspn(pa, "."), bn = strcspn(pb, ".");
    if ((c = cmp_ident(pa, an, pb, bn)) != 0)
      return c;
    pa += an, pb += bn;
    if (!*pa || !*pb) /* the shorter set is lower */
      return *pa ? 1 : *pb ? -1 : 0;
    pa++, pb++;
  }
}

void fy_semver_format(const struct fy_semver *v, char *out, size_t size) {
  if (size == 0)
    return;
  snprintf(out, size, "%llu.%llu.%llu%s%s%s%s", (unsigned long long)v->major, (unsigned long long)v->minor,
           (unsigned long long)v->patch, v->pre[0] ? "-" : "", v->pre, v->build[0] ? "+" : "", v->build);
}
