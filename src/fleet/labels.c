#include "fleet/labels.h"

#include <stdio.h>
#include <string.h>

static bool is_lower_digit(int c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}
static bool key_char(int c) {
  return is_lower_digit(c) || c == '.' || c == '_' || c == '/' || c == '-';
}
static bool value_char(int c) {
  return is_lower_digit(c) || (c >= 'A' && c <= 'Z') || c == '.' || c == '_' || c == '-';
}
static bool tenant_char(int c) {
  return is_lower_digit(c) || c == '.' || c == '_' || c == '-';
}

/* Untrusted bytes, made safe to quote in a one-line message. */
static const char *quote(const char *s, size_t n, char *out, size_t size) {
  size_t o = 0, max = size - 4;
  for (size_t i = 0; i < n && o < size - 1; i++) {
    if (o == max && i + 1 < n) {
      memcpy(out + o, "...", 3);
      o += 3;
      break;
    }
    unsigned char c = (unsigned char)s[i];
    out[o++] = c >= 0x20 && c < 0x7f && c != '"' ? (char)c : '?';
  }
  out[o] = '\0';
  return out;
}

/* Describes in why what is wrong with s[0..n) as a `what`, or returns 0. */
static int check_token(const char *what, const char *s, size_t n, size_t min, size_t max, bool (*ok)(int),
                       bool (*first)(int), const char *allowed, char *why, size_t size) {
  if (n < min || n > max) {
    snprintf(why, size, "%s is %zu bytes, must be %zu to %zu", what, n, min, max);
    return -1;
  }
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!ok(c)) {
      if (c >= 0x20 && c < 0x7f)
        snprintf(why, size, "%s has '%c' at offset %zu (allowed: %s)", what, c, i, allowed);
      else
        snprintf(why, size, "%s has byte 0x%02x at offset %zu (allowed: %s)", what, c, i, allowed);
      return -1;
    }
  }
  if (n > 0 && first && !first((unsigned char)s[0])) {
    snprintf(why, size, "%s must start with [a-z0-9]", what);
    return -1;
  }
  return 0;
}

static int check_key(const char *k, size_t n, char *why, size_t size) {
  return check_token("key", k, n, 1, FY_LABEL_KEY_MAX, key_char, is_lower_digit, "[a-z0-9._/-]", why, size);
}

static int check_value(const char *v, size_t n, char *why, size_t size) {
  return check_token("value", v, n, 0, FY_LABEL_VALUE_MAX, value_char, NULL, "[A-Za-z0-9._-]", why, size);
}

int fy_tenant_check(const char *t, struct fy_err *err) {
  char why[160];
  if (check_token("tenant", t, strlen(t), 1, FY_TENANT_MAX, tenant_char, is_lower_digit, "[a-z0-9._-]", why,
                  sizeof(why)) < 0)
    return fy_err_set(err, FY_EINVAL, "%s", why);
  return 0;
}

/* Where key goes in l (or is), and whether it is there. */
static size_t find(const struct fy_labels *l, const char *key, size_t n, bool *found) {
  size_t i = 0;
  *found = false;
  for (; i < l->n; i++) {
    int c = strncmp(l->v[i].key, key, n);
    if (c == 0 && l->v[i].key[n] == '\0') {
      *found = true;
      return i;
    }
    if (c > 0 || (c == 0 && l->v[i].key[n] != '\0'))
      return i;
  }
  return i;
}

/* Inserts a validated pair. -1 when key is already there, -2 when full. */
static int insert(struct fy_labels *l, const char *k, size_t kn, const char *v, size_t vn, bool replace) {
  bool found;
  size_t i = find(l, k, kn, &found);
  if (found && !replace)
    return -1;
  if (!found) {
    if (l->n == FY_LABELS_MAX)
      return -2;
    memmove(&l->v[i + 1], &l->v[i], (l->n - i) * sizeof(l->v[0]));
    l->n++;
    memcpy(l->v[i].key, k, kn);
    l->v[i].key[kn] = '\0';
  }
  if (vn) /* an empty msgpack str may have a NULL ptr */
    memcpy(l->v[i].value, v, vn);
  l->v[i].value[vn] = '\0';
  return 0;
}

int fy_labels_set(struct fy_labels *l, const char *key, const char *value, struct fy_err *err) {
  char why[160], q[48];
  size_t kn = strlen(key), vn = strlen(value);
  if (check_key(key, kn, why, sizeof(why)) < 0 || check_value(value, vn, why, sizeof(why)) < 0)
    return fy_err_set(err, FY_EINVAL, "label \"%s\": %s", quote(key, kn, q, sizeof(q)), why);
  if (insert(l, key, kn, value, vn, true) < 0)
    return fy_err_set(err, FY_ELIMIT, "label \"%s\": a node has at most %d labels", key, FY_LABELS_MAX);
  return 0;
}

const char *fy_labels_get(const struct fy_labels *l, const char *key) {
  bool found;
  size_t i = find(l, key, strlen(key), &found);
  return found ? l->v[i].value : NULL;
}

int fy_labels_parse(const char *text, struct fy_labels *out, struct fy_err *err) {
  out->n = 0;
  if (text[0] == '\0')
    return 0;
  const char *p = text;
  for (size_t pair = 1;; pair++) {
    size_t n = strcspn(p, ",");
    const char *eq = memchr(p, '=', n);
    char why[160], q[48];
    size_t at = (size_t)(p - text);
    int code = FY_EINVAL;
    if (!eq) {
      snprintf(why, sizeof(why), "%s", n == 0 ? "empty pair" : "no '=' between key and value");
    } else if (check_key(p, (size_t)(eq - p), why, sizeof(why)) == 0 &&
               check_value(eq + 1, n - (size_t)(eq - p) - 1, why, sizeof(why)) == 0) {
      int rc = insert(out, p, (size_t)(eq - p), eq + 1, n - (size_t)(eq - p) - 1, false);
      if (rc == 0) {
        if (p[n] == '\0')
          return 0;
        p += n + 1;
        continue;
      }
      if (rc == -1) {
        snprintf(why, sizeof(why), "key appears twice");
      } else {
        snprintf(why, sizeof(why), "more than %d labels", FY_LABELS_MAX);
        code = FY_ELIMIT;
      }
    }
    out->n = 0;
    return fy_err_set(err, code, "labels: pair %zu \"%s\" at character %zu: %s", pair,
                      quote(p, n, q, sizeof(q)), at, why);
  }
}

void fy_labels_format(const struct fy_labels *l, char *out, size_t size) {
  if (size == 0)
    return;
  size_t o = 0;
  out[0] = '\0';
  for (size_t i = 0; i < l->n && o < size - 1; i++) {
    int w = snprintf(out + o, size - o, "%s%s=%s", i ? "," : "", l->v[i].key, l->v[i].value);
    if (w < 0)
      return;
    o += (size_t)w;
  }
}

int fy_labels_pack(const struct fy_labels *l, msgpack_packer *pk) {
  if (msgpack_pack_map(pk, l->n))
    return FY_ENOMEM;
  for (size_t i = 0; i < l->n; i++) {
    const char *k = l->v[i].key, *v = l->v[i].value;
    if (msgpack_pack_str_with_body(pk, k, strlen(k)) || msgpack_pack_str_with_body(pk, v, strlen(v)))
      return FY_ENOMEM;
  }
  return 0;
}

int fy_labels_unpack(const msgpack_object *o, struct fy_labels *out, struct fy_err *err) {
  out->n = 0;
  if (o->type != MSGPACK_OBJECT_MAP)
    return fy_err_set(err, FY_EINVAL, "labels: not a map");
  if (o->via.map.size > FY_LABELS_MAX)
    return fy_err_set(err, FY_ELIMIT, "labels: %u entries, at most %d", (unsigned)o->via.map.size,
                      FY_LABELS_MAX);
  for (size_t i = 0; i < o->via.map.size; i++) {
    const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
    char why[160], q[48];
    if (k->type != MSGPACK_OBJECT_STR) {
      out->n = 0;
      return fy_err_set(err, FY_EINVAL, "labels: entry %zu: key is not a string", i);
    }
    const char *ks = k->via.str.ptr;
    size_t kn = k->via.str.size;
    if (v->type != MSGPACK_OBJECT_STR) {
      out->n = 0;
      return fy_err_set(err, FY_EINVAL, "labels: entry %zu \"%s\": value is not a string", i,
                        quote(ks, kn, q, sizeof(q)));
    }
    if (check_key(ks, kn, why, sizeof(why)) < 0 ||
        check_value(v->via.str.ptr, v->via.str.size, why, sizeof(why)) < 0) {
      out->n = 0;
      return fy_err_set(err, FY_EINVAL, "labels: entry %zu \"%s\": %s", i, quote(ks, kn, q, sizeof(q)), why);
    }
    if (insert(out, ks, kn, v->via.str.ptr, v->via.str.size, false) < 0) {
      out->n = 0;
      return fy_err_set(err, FY_EINVAL, "labels: entry %zu \"%s\": key appears twice", i,
                        quote(ks, kn, q, sizeof(q)));
    }
  }
  return 0;
}

bool fy_labels_match(const struct fy_labels *l, const struct fy_labels *sel) {
  for (size_t i = 0; i < sel->n; i++) {
    const char *v = fy_labels_get(l, sel->v[i].key);
    if (!v || strcmp(v, sel->v[i].value) != 0)
      return false;
  }
  return true;
}
