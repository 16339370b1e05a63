/* Rendering of admin query replies; see admin_view.h. */
#include "admin/admin_view.h"

#include <ctype.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/cleanup.h"
#include "base/mpmap.h"
#include "base/mpshape.h"

#define REPLY_DEPTH_MAX 8
#define REPLY_ELEMENTS_MAX 1000000
#define HISTORY_SHOWN 5
#define WEEK_MS (7ull * 24 * 3600 * 1000)

/* ---- msgpack access --------------------------------------------------------- */

static const char *reply_where(const struct fy_mpshape_pos *pos, char *out, size_t size, const void *user) {
  (void)pos;
  snprintf(out, size, "%s", (const char *)user);
  return out;
}

int fy_admin_reply_unpack(const uint8_t *reply, size_t len, const char *what, msgpack_zone *zone,
                          msgpack_object *out, struct fy_err *err) {
  msgpack_zone_init(zone, 2048);
  *out = (msgpack_object){.type = MSGPACK_OBJECT_NIL}; /* defined on every path, errors included */
  if (len > FY_ADMIN_REPLY_MAX)
    return fy_err_set(err, FY_ELIMIT, "%s: %zu bytes, more than the %u a reply may have", what, len,
                      FY_ADMIN_REPLY_MAX);
  int rc = fy_mpshape_check(reply, len, REPLY_DEPTH_MAX, REPLY_ELEMENTS_MAX, what, reply_where, what, err);
  if (rc < 0)
    return rc;
  size_t off = 0;
  if (msgpack_unpack((const char *)reply, len, &off, zone, out) != MSGPACK_UNPACK_SUCCESS)
    return fy_err_set(err, FY_EINVAL, "%s: msgpack does not decode", what);
  if (out->type != MSGPACK_OBJECT_MAP)
    return fy_err_set(err, FY_EINVAL, "%s: not a map", what);
  return 0;
}

const msgpack_object *fy_admin_map_get(const msgpack_object *o, const char *key) {
  return o && o->type == MSGPACK_OBJECT_MAP ? fy_mp_get(o, key) : NULL;
}

/* Each getter reads a required field of map o; where names o in messages. */
static int get_str(const msgpack_object *o, const char *key, char *out, size_t size, const char *where,
                   struct fy_err *err) {
  const msgpack_object *v = fy_admin_map_get(o, key);
  if (!v)
    return fy_err_set(err, FY_EINVAL, "%s: %s is missing", where, key);
  if (v->type != MSGPACK_OBJECT_STR)
    return fy_err_set(err, FY_EINVAL, "%s: %s is not a string", where, key);
  size_t n = v->via.str.size < size - 1 ? v->via.str.size : size - 1;
  memcpy(out, v->via.str.ptr, n);
  out[n] = '\0';
  /* Control characters from the network would be terminal escapes. */
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)out[i] < 0x20 || out[i] == 0x7f)
      out[i] = '?';
  return 0;
}

static int get_uint(const msgpack_object *o, const char *key, uint64_t *out, const char *where,
                    struct fy_err *err) {
  const msgpack_object *v = fy_admin_map_get(o, key);
  if (!v)
    return fy_err_set(err, FY_EINVAL, "%s: %s is missing", where, key);
  if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
    return fy_err_set(err, FY_EINVAL, "%s: %s is not an unsigned integer", where, key);
  *out = v->via.u64;
  return 0;
}

static int get_bool(const msgpack_object *o, const char *key, bool *out, const char *where,
                    struct fy_err *err) {
  const msgpack_object *v = fy_admin_map_get(o, key);
  if (!v)
    return fy_err_set(err, FY_EINVAL, "%s: %s is missing", where, key);
  if (v->type != MSGPACK_OBJECT_BOOLEAN)
    return fy_err_set(err, FY_EINVAL, "%s: %s is not a bool", where, key);
  *out = v->via.boolean;
  return 0;
}

static int get_bin32(const msgpack_object *o, const char *key, uint8_t out[32], const char *where,
                     struct fy_err *err) {
  const msgpack_object *v = fy_admin_map_get(o, key);
  if (!v)
    return fy_err_set(err, FY_EINVAL, "%s: %s is missing", where, key);
  if (v->type != MSGPACK_OBJECT_BIN || v->via.bin.size != 32)
    return fy_err_set(err, FY_EINVAL, "%s: %s is not bin 32", where, key);
  memcpy(out, v->via.bin.ptr, 32);
  return 0;
}

static const msgpack_object *get_typed(const msgpack_object *o, const char *key, msgpack_object_type type,
                                       const char *tname, const char *where, struct fy_err *err) {
  const msgpack_object *v = fy_admin_map_get(o, key);
  if (!v) {
    fy_err_set(err, FY_EINVAL, "%s: %s is missing", where, key);
    return NULL;
  }
  if (v->type != type) {
    fy_err_set(err, FY_EINVAL, "%s: %s is not %s", where, key, tname);
    return NULL;
  }
  return v;
}

/* A map str -> str as "k=v,k2=v2". */
static int labels_text(const msgpack_object *o, const char *key, char *out, size_t size, const char *where,
                       struct fy_err *err) {
  const msgpack_object *m = get_typed(o, key, MSGPACK_OBJECT_MAP, "a map", where, err);
  if (!m)
    return FY_EINVAL;
  size_t at = 0;
  out[0] = '\0';
  for (uint32_t i = 0; i < m->via.map.size; i++) {
    const msgpack_object *k = &m->via.map.ptr[i].key, *v = &m->via.map.ptr[i].val;
    if (k->type != MSGPACK_OBJECT_STR || v->type != MSGPACK_OBJECT_STR)
      return fy_err_set(err, FY_EINVAL, "%s: %s: entry %" PRIu32 " is not string to string", where, key, i);
    int n = snprintf(out + at, size - at, "%s%.*s=%.*s", i ? "," : "", (int)k->via.str.size, k->via.str.ptr,
                     (int)v->via.str.size, v->via.str.ptr);
    if (n < 0 || (size_t)n >= size - at)
      break;
    at += (size_t)n;
  }
  return 0;
}

/* An array of str as "a,b". */
static int strlist_text(const msgpack_object *o, const char *key, char *out, size_t size, const char *where,
                        struct fy_err *err) {
  const msgpack_object *a = get_typed(o, key, MSGPACK_OBJECT_ARRAY, "an array", where, err);
  if (!a)
    return FY_EINVAL;
  size_t at = 0;
  out[0] = '\0';
  for (uint32_t i = 0; i < a->via.array.size; i++) {
    const msgpack_object *s = &a->via.array.ptr[i];
    if (s->type != MSGPACK_OBJECT_STR)
      return fy_err_set(err, FY_EINVAL, "%s: %s[%" PRIu32 "] is not a string", where, key, i);
    int n = snprintf(out + at, size - at, "%s%.*s", i ? "," : "", (int)s->via.str.size, s->via.str.ptr);
    if (n < 0 || (size_t)n >= size - at)
      break;
    at += (size_t)n;
  }
  return 0;
}

static void hex_of(const uint8_t *p, size_t n, char *out) {
  sodium_bin2hex(out, 2 * n + 1, p, n);
}

static void short_of(const uint8_t id[32], char out[13]) {
  hex_of(id, 6, out);
}

/* ---- times -------------------------------------------------------------------- */

void fy_admin_format_time(uint64_t now_ms, uint64_t at_ms, char *out, size_t size) {
  if (at_ms == 0) {
    snprintf(out, size, "-");
    return;
  }
  bool past = at_ms <= now_ms;
  uint64_t d = past ? now_ms - at_ms : at_ms - now_ms;
  if (d >= WEEK_MS) {
    time_t t = (time_t)(at_ms / 1000);
    struct tm tm;
    if (!gmtime_r(&t, &tm) || strftime(out, size, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
      snprintf(out, size, "%" PRIu64, at_ms);
    return;
  }
  uint64_t s = d / 1000;
  if (s < 5) {
    snprintf(out, size, "just now");
    return;
  }
  uint64_t n;
  char unit;
  if (s < 60) {
    n = s, unit = 's';
  } else if (s < 3600) {
    n = s / 60, unit = 'm';
  } else if (s < 86400) {
    n = s / 3600, unit = 'h';
  } else {
    n = s / 86400, unit = 'd';
  }
  if (past)
    snprintf(out, size, "%" PRIu64 "%c ago", n, unit);
  else
    snprintf(out, size, "in %" PRIu64 "%c", n, unit);
}

/* ---- tables ------------------------------------------------------------------- */

#define TABLE_COLS_MAX 10

struct table {
  size_t ncols;
  const char *const *head;
  char **cells; /* nrows * ncols, owned */
  size_t nrows, cap;
};

static int table_row(struct table *t, struct fy_err *err, ...) {
  if (t->nrows == t->cap) {
    size_t cap = t->cap ? 2 * t->cap : 16;
    char **cells = realloc(t->cells, cap * t->ncols * sizeof(*cells));
    if (!cells)
      return fy_err_set(err, FY_ENOMEM, "table: out of memory");
    t->cells = cells;
    t->cap = cap;
  }
  va_list ap;
  va_start(ap, err);
  char **row = t->cells + t->nrows * t->ncols;
  int rc = 0;
  for (size_t c = 0; c < t->ncols; c++) {
    const char *s = va_arg(ap, const char *);
    row[c] = rc == 0 ? strdup(s ? s : "") : NULL;
    if (!row[c])
      rc = fy_err_set(err, FY_ENOMEM, "table: out of memory");
  }
  va_end(ap);
  t->nrows++; /* even when incomplete: table_free frees what is there */
  return rc;
}

static void table_free(struct table *t) {
  for (size_t i = 0; i < t->nrows * t->ncols; i++)
    free(t->cells[i]);
  free(t->cells);
  t->cells = NULL;
  t->nrows = t->cap = 0;
}

/* Columns padded to their widest cell; the last is not padded, so lines carry
 * no trailing blanks. */
static void table_print(const struct table *t, FILE *out) {
  size_t w[TABLE_COLS_MAX] = {0};
  for (size_t c = 0; c < t->ncols; c++) {
    w[c] = strlen(t->head[c]);
    for (size_t r = 0; r < t->nrows; r++) {
      size_t n = strlen(t->cells[r * t->ncols + c]);
      w[c] = n > w[c] ? n : w[c];
    }
  }
  for (size_t r = 0; r <= t->nrows; r++) {
    for (size_t c = 0; c < t->ncols; c++) {
      const char *s = r == 0 ? t->head[c] : t->cells[(r - 1) * t->ncols + c];
      if (c + 1 < t->ncols)
        fprintf(out, "%-*s  ", (int)w[c], s);
      else
        fprintf(out, "%s\n", s);
    }
  }
}

/* ---- JSON --------------------------------------------------------------------- */

static json_t *bin_json(const uint8_t *p, size_t n) {
  if (n == 32) {
    char hex[65];
    hex_of(p, n, hex);
    return json_string(hex);
  }
  size_t cap = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
  char *b64 = malloc(cap);
  if (!b64)
    return NULL;
  sodium_bin2base64(b64, cap, p, n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
  json_t *j = json_string(b64);
  free(b64);
  return j;
}

json_t *fy_admin_json_from_msgpack(const msgpack_object *o, struct fy_err *err) {
  json_t *j = NULL;
  switch (o->type) {
  case MSGPACK_OBJECT_NIL:
    j = json_null();
    break;
  case MSGPACK_OBJECT_BOOLEAN:
    j = json_boolean(o->via.boolean);
    break;
  case MSGPACK_OBJECT_POSITIVE_INTEGER:
    if (o->via.u64 <= (uint64_t)INT64_MAX) {
      j = json_integer((json_int_t)o->via.u64);
    } else {
      char num[24];
      snprintf(num, sizeof(num), "%" PRIu64, o->via.u64);
      j = json_string(num); /* beyond what JSON readers hold exactly */
    }
    break;
  case MSGPACK_OBJECT_NEGATIVE_INTEGER:
    j = json_integer((json_int_t)o->via.i64);
    break;
  case MSGPACK_OBJECT_FLOAT32:
  case MSGPACK_OBJECT_FLOAT64:
    j = json_real(o->via.f64);
    break;
  case MSGPACK_OBJECT_STR:
    j = json_stringn_nocheck(o->via.str.ptr, o->via.str.size);
    break;
  case MSGPACK_OBJECT_BIN:
    j = bin_json((const uint8_t *)o->via.bin.ptr, o->via.bin.size);
    break;
  case MSGPACK_OBJECT_EXT:
    j = bin_json((const uint8_t *)o->via.ext.ptr, o->via.ext.size);
    break;
  case MSGPACK_OBJECT_ARRAY:
    j = json_array();
    for (uint32_t i = 0; j && i < o->via.array.size; i++) {
      json_t *e = fy_admin_json_from_msgpack(&o->via.array.ptr[i], err);
      if (!e || json_array_append_new(j, e) < 0) {
        json_decref(j);
        return NULL;
      }
    }
    break;
  case MSGPACK_OBJECT_MAP:
    j = json_object();
    for (uint32_t i = 0; j && i < o->via.map.size; i++) {
      const msgpack_object *k = &o->via.map.ptr[i].key;
      char key[1024];
      if (k->type == MSGPACK_OBJECT_STR) {
        snprintf(key, sizeof(key), "%.*s", (int)k->via.str.size, k->via.str.ptr);
      } else if (k->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        snprintf(key, sizeof(key), "%" PRIu64, k->via.u64);
      } else if (k->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        snprintf(key, sizeof(key), "%" PRId64, k->via.i64);
      } else {
        json_decref(j);
        fy_err_set(err, FY_EINVAL, "json: map key %" PRIu32 " is neither a string nor an integer", i);
        return NULL;
      }
      json_t *e = fy_admin_json_from_msgpack(&o->via.map.ptr[i].val, err);
      if (!e || json_object_set_new_nocheck(j, key, e) < 0) {
        json_decref(j);
        return NULL;
      }
    }
    break;
  }
  if (!j && err && err->code == 0)
    fy_err_set(err, FY_ENOMEM, "json: out of memory");
  return j;
}

/* One JSON document on a line. */
static int print_json(const struct fy_admin_view *v, json_t *j, struct fy_err *err) {
  if (!j)
    return err && err->code ? err->code : FY_ENOMEM;
  int rc = json_dumpf(j, v->out, JSON_COMPACT | JSON_ENSURE_ASCII);
  json_decref(j);
  if (rc < 0)
    return fy_err_set(err, FY_EIO, "json: cannot write the output");
  fputc('\n', v->out);
  return 0;
}

static json_t *pending_json(const struct fy_admin_pending *p, size_t n) {
  json_t *a = json_array();
  for (size_t i = 0; a && i < n; i++) {
    char hex[65];
    hex_of(p[i].id, 32, hex);
    json_t *e = json_pack("{s:s, s:s, s:I, s:I}", "id", hex, "cmd", p[i].cmd, "seq", (json_int_t)p[i].seq,
                          "queued_at", (json_int_t)p[i].queued_at);
    if (!e || json_array_append_new(a, e) < 0) {
      json_decref(a);
      return NULL;
    }
  }
  return a;
}

/* ---- views -------------------------------------------------------------------- */

void fy_admin_view_pending(const struct fy_admin_view *v, const struct fy_admin_pending *p, size_t n) {
  if (v->json) {
    print_json(v, pending_json(p, n), NULL);
    return;
  }
  if (n == 0) {
    fprintf(v->out, "local queue: empty\n");
    return;
  }
  fprintf(v->out, "local queue: %zu command%s not yet acknowledged\n", n, n == 1 ? "" : "s");
  static const char *const head[] = {"ID", "CMD", "SEQ", "QUEUED"};
  struct table t = {.ncols = 4, .head = head};
  for (size_t i = 0; i < n; i++) {
    char id[13], seq[24], at[40];
    short_of(p[i].id, id);
    snprintf(seq, sizeof(seq), "%" PRIu64, p[i].seq);
    fy_admin_format_time(v->now_ms, p[i].queued_at, at, sizeof(at));
    if (table_row(&t, NULL, id, p[i].cmd, seq, at) < 0)
      break;
  }
  table_print(&t, v->out);
  table_free(&t);
}

int fy_admin_view_status(const struct fy_admin_view *v, const uint8_t *reply, size_t len,
                         const char *unreachable, const struct fy_admin_pending *pending, size_t npending,
                         struct fy_err *err) {
  msgpack_zone zone;
  msgpack_object o = {0};
  int rc = 0;
  if (reply)
    rc = fy_admin_reply_unpack(reply, len, "status reply", &zone, &o, err);
  else
    msgpack_zone_init(&zone, 64);
  if (rc < 0)
    goto out;
  if (v->json) {
    json_t *j = json_object(), *c = reply ? fy_admin_json_from_msgpack(&o, err) : json_null();
    json_t *q = pending_json(pending, npending);
    if (!j || !c || !q || json_object_set_new(j, "coordinator", c) < 0 ||
        json_object_set_new(j, "unreachable",
                            reply ? json_null() : json_string(unreachable ? unreachable : "")) < 0 ||
        json_object_set_new(j, "queue", q) < 0) {
      json_decref(j);
      rc = fy_err_set(err, FY_ENOMEM, "json: out of memory");
      goto out;
    }
    rc = print_json(v, j, err);
    goto out;
  }
  if (reply) {
    const char *w = "status reply";
    uint8_t coord[32];
    char hex[65], addrs[2048], version[128], role[32], tenants[1024], now[40];
    uint64_t now_ms = 0, enrolled = 0, pend = 0, revoked = 0, online = 0;
    const msgpack_object *you, *agents;
    if ((rc = get_bin32(&o, "coordinator", coord, w, err)) < 0 ||
        (rc = strlist_text(&o, "addrs", addrs, sizeof(addrs), w, err)) < 0 ||
        (rc = get_str(&o, "version", version, sizeof(version), w, err)) < 0 ||
        (rc = get_uint(&o, "now", &now_ms, w, err)) < 0)
      goto out;
    if (!(you = get_typed(&o, "you", MSGPACK_OBJECT_MAP, "a map", w, err)) ||
        !(agents = get_typed(&o, "agents", MSGPACK_OBJECT_MAP, "a map", w, err))) {
      rc = FY_EINVAL;
      goto out;
    }
    if ((rc = get_str(you, "role", role, sizeof(role), "status reply: you", err)) < 0 ||
        (rc = strlist_text(you, "tenants", tenants, sizeof(tenants), "status reply: you", err)) < 0 ||
        (rc = get_uint(agents, "enrolled", &enrolled, "status reply: agents", err)) < 0 ||
        (rc = get_uint(agents, "pending", &pend, "status reply: agents", err)) < 0 ||
        (rc = get_uint(agents, "revoked", &revoked, "status reply: agents", err)) < 0 ||
        (rc = get_uint(agents, "online", &online, "status reply: agents", err)) < 0)
      goto out;
    hex_of(coord, 32, hex);
    /* The coordinator's clock next to ours shows skew, which expiry depends on. */
    fy_admin_format_time(v->now_ms, now_ms, now, sizeof(now));
    fprintf(v->out,
            "coordinator: %s\naddrs:       %s\nversion:     %s\nclock:       %s\nyou:         %s of %s\n"
            "agents:      %" PRIu64 " enrolled, %" PRIu64 " pending, %" PRIu64 " revoked, %" PRIu64
            " online\n",
            hex, addrs[0] ? addrs : "-", version, now, role, tenants[0] ? tenants : "-", enrolled, pend,
            revoked, online);
  } else {
    fprintf(v->out, "coordinator unreachable: %s\n", unreachable ? unreachable : "unknown reason");
  }
  fy_admin_view_pending(v, pending, npending);
out:
  msgpack_zone_destroy(&zone);
  return rc;
}

/* Reads a list reply {<key> [map]}, checks it, and renders either JSON or
 * one row per element through row(). */
typedef int (*row_fn)(const struct fy_admin_view *v, struct table *t, const msgpack_object *e,
                      const char *where, struct fy_err *err);

static int view_list(const struct fy_admin_view *v, const uint8_t *reply, size_t len, const char *key,
                     const char *what, const char *const *head, size_t ncols, row_fn row,
                     struct fy_err *err) {
  msgpack_zone zone;
  msgpack_object o;
  int rc = fy_admin_reply_unpack(reply, len, what, &zone, &o, err);
  const msgpack_object *a = NULL;
  if (rc == 0 && !(a = get_typed(&o, key, MSGPACK_OBJECT_ARRAY, "an array", what, err)))
    rc = FY_EINVAL;
  if (rc < 0) {
    msgpack_zone_destroy(&zone);
    return rc;
  }
  struct table t = {.ncols = ncols, .head = head};
  for (uint32_t i = 0; rc == 0 && i < a->via.array.size; i++) {
    const msgpack_object *e = &a->via.array.ptr[i];
    char where[96];
    snprintf(where, sizeof(where), "%s: %s[%" PRIu32 "]", what, key, i);
    if (e->type != MSGPACK_OBJECT_MAP)
      rc = fy_err_set(err, FY_EINVAL, "%s is not a map", where);
    else
      rc = row(v, &t, e, where, err);
  }
  if (rc == 0) {
    if (v->json)
      rc = print_json(v, fy_admin_json_from_msgpack(&o, err), err);
    else if (t.nrows == 0)
      fprintf(v->out, "no %s\n", key);
    else
      table_print(&t, v->out);
  }
  table_free(&t);
  msgpack_zone_destroy(&zone);
  return rc;
}

struct agent_fields {
  uint8_t id[32];
  char status[16], tenant[80], labels[2048], hostname[128], version[160];
  char updates[448]; /* "latest beta", "assigned app@1.2.0"; "" from older coordinators */
  bool online;
  uint64_t last_seen, enrolled_at;
};

static int agent_read(const msgpack_object *e, struct agent_fields *a, const char *w, struct fy_err *err) {
  int rc;
  if ((rc = get_bin32(e, "id", a->id, w, err)) < 0 ||
      (rc = get_str(e, "status", a->status, sizeof(a->status), w, err)) < 0 ||
      (rc = get_str(e, "tenant", a->tenant, sizeof(a->tenant), w, err)) < 0 ||
      (rc = labels_text(e, "labels", a->labels, sizeof(a->labels), w, err)) < 0 ||
      (rc = get_str(e, "hostname", a->hostname, sizeof(a->hostname), w, err)) < 0 ||
      (rc = get_str(e, "version", a->version, sizeof(a->version), w, err)) < 0 ||
      (rc = get_bool(e, "online", &a->online, w, err)) < 0 ||
      (rc = get_uint(e, "last_seen", &a->last_seen, w, err)) < 0 ||
      (rc = get_uint(e, "enrolled_at", &a->enrolled_at, w, err)) < 0)
    return rc;
  /* How it takes updates: its mode, and what the mode depends on. */
  char mode[16] = "", channel[40] = "", assigned[400] = "";
  a->updates[0] = '\0';
  if (fy_admin_map_get(e, "update_mode") &&
      ((rc = get_str(e, "update_mode", mode, sizeof(mode), w, err)) < 0 ||
       (rc = get_str(e, "channel", channel, sizeof(channel), w, err)) < 0 ||
       (rc = get_str(e, "assigned", assigned, sizeof(assigned), w, err)) < 0))
    return rc;
  bool on_channel =
      strcmp(mode, "latest") == 0 || (strcmp(mode, "follow") == 0 && strcmp(channel, "stable") != 0);
  snprintf(a->updates, sizeof(a->updates), "%s%s%s", mode,
           strcmp(mode, "assigned") == 0 || on_channel ? " " : "",
           strcmp(mode, "assigned") == 0 ? assigned
           : on_channel                  ? channel
                                         : "");
  return 0;
}

static int agent_row(const struct fy_admin_view *v, struct table *t, const msgpack_object *e, const char *w,
                     struct fy_err *err) {
  struct agent_fields a;
  int rc = agent_read(e, &a, w, err);
  if (rc < 0)
    return rc;
  char id[13], seen[40];
  short_of(a.id, id);
  fy_admin_format_time(v->now_ms, a.last_seen, seen, sizeof(seen));
  return table_row(t, err, id, a.status, a.tenant[0] ? a.tenant : "-", a.hostname, a.version,
                   a.updates[0] ? a.updates : "-", a.online ? "yes" : "no", seen, a.labels);
}

int fy_admin_view_agents(const struct fy_admin_view *v, const uint8_t *reply, size_t len,
                         struct fy_err *err) {
  static const char *const head[] = {"ID",      "STATUS", "TENANT",    "HOSTNAME", "VERSION",
                                     "UPDATES", "ONLINE", "LAST SEEN", "LABELS"};
  return view_list(v, reply, len, "agents", "agents reply", head, FY_ARRAY_LEN(head), agent_row, err);
}

static int admin_row(const struct fy_admin_view *v, struct table *t, const msgpack_object *e, const char *w,
                     struct fy_err *err) {
  (void)v;
  uint8_t key[32];
  char role[32], tenants[1024], id[13];
  bool root = false;
  int rc;
  if ((rc = get_bin32(e, "key", key, w, err)) < 0 ||
      (rc = get_str(e, "role", role, sizeof(role), w, err)) < 0 ||
      (rc = strlist_text(e, "tenants", tenants, sizeof(tenants), w, err)) < 0 ||
      (rc = get_bool(e, "root", &root, w, err)) < 0)
    return rc;
  short_of(key, id);
  return table_row(t, err, id, role, tenants, root ? "yes" : "no");
}

int fy_admin_view_admins(const struct fy_admin_view *v, const uint8_t *reply, size_t len,
                         struct fy_err *err) {
  static const char *const head[] = {"KEY", "ROLE", "TENANTS", "ROOT"};
  return view_list(v, reply, len, "admins", "admins reply", head, FY_ARRAY_LEN(head), admin_row, err);
}

static int ticket_row(const struct fy_admin_view *v, struct table *t, const msgpack_object *e, const char *w,
                      struct fy_err *err) {
  char id[40], tenant[80], labels[2048], expires[40], uses[24], used[24], by[13], at[40];
  uint64_t exp_ms = 0, nuses = 0, nused = 0, at_ms = 0;
  uint8_t by_key[32] = {0};
  bool revoked = false;
  int rc;
  if ((rc = get_str(e, "id", id, sizeof(id), w, err)) < 0 ||
      (rc = get_str(e, "tenant", tenant, sizeof(tenant), w, err)) < 0 ||
      (rc = labels_text(e, "labels", labels, sizeof(labels), w, err)) < 0 ||
      (rc = get_uint(e, "expires", &exp_ms, w, err)) < 0 || (rc = get_uint(e, "uses", &nuses, w, err)) < 0 ||
      (rc = get_uint(e, "used", &nused, w, err)) < 0 || (rc = get_bool(e, "revoked", &revoked, w, err)) < 0 ||
      (rc = get_bin32(e, "by", by_key, w, err)) < 0 || (rc = get_uint(e, "at", &at_ms, w, err)) < 0)
    return rc;
  fy_admin_format_time(v->now_ms, exp_ms, expires, sizeof(expires));
  if (nuses)
    snprintf(uses, sizeof(uses), "%" PRIu64, nuses);
  else
    snprintf(uses, sizeof(uses), "unlimited");
  snprintf(used, sizeof(used), "%" PRIu64, nused);
  short_of(by_key, by);
  fy_admin_format_time(v->now_ms, at_ms, at, sizeof(at));
  const char *state = revoked                     ? "revoked"
                      : exp_ms <= v->now_ms       ? "expired"
                      : (nuses && nused >= nuses) ? "used up"
                                                  : "active";
  return table_row(t, err, id, tenant, labels, expires, uses, used, state, by, at);
}

int fy_admin_view_tickets(const struct fy_admin_view *v, const uint8_t *reply, size_t len,
                          struct fy_err *err) {
  static const char *const head[] = {"ID",   "TENANT", "LABELS", "EXPIRES", "USES",
                                     "USED", "STATE",  "BY",     "CREATED"};
  return view_list(v, reply, len, "tickets", "tickets reply", head, FY_ARRAY_LEN(head), ticket_row, err);
}

/* A scalar fact as text; maps (labels) as k=v, arrays joined by commas. */
static void fact_text(const msgpack_object *o, char *out, size_t size) {
  switch (o->type) {
  case MSGPACK_OBJECT_STR:
    snprintf(out, size, "%.*s", (int)o->via.str.size, o->via.str.ptr);
    break;
  case MSGPACK_OBJECT_POSITIVE_INTEGER:
    snprintf(out, size, "%" PRIu64, o->via.u64);
    break;
  case MSGPACK_OBJECT_NEGATIVE_INTEGER:
    snprintf(out, size, "%" PRId64, o->via.i64);
    break;
  case MSGPACK_OBJECT_BOOLEAN:
    snprintf(out, size, "%s", o->via.boolean ? "true" : "false");
    break;
  case MSGPACK_OBJECT_NIL:
    snprintf(out, size, "-");
    break;
  case MSGPACK_OBJECT_MAP: {
    size_t at = 0;
    out[0] = '\0';
    for (uint32_t i = 0; i < o->via.map.size && at < size; i++) {
      char k[128], val[256];
      fact_text(&o->via.map.ptr[i].key, k, sizeof(k));
      fact_text(&o->via.map.ptr[i].val, val, sizeof(val));
      int n = snprintf(out + at, size - at, "%s%s=%s", i ? "," : "", k, val);
      at += n > 0 ? (size_t)n : 0;
    }
    break;
  }
  case MSGPACK_OBJECT_ARRAY: {
    size_t at = 0;
    out[0] = '\0';
    for (uint32_t i = 0; i < o->via.array.size && at < size; i++) {
      char val[256];
      fact_text(&o->via.array.ptr[i], val, sizeof(val));
      int n = snprintf(out + at, size - at, "%s%s", i ? "," : "", val);
      at += n > 0 ? (size_t)n : 0;
    }
    break;
  }
  default:
    snprintf(out, size, "<%s>", o->type == MSGPACK_OBJECT_BIN ? "bin" : "value");
    break;
  }
  for (char *c = out; *c; c++)
    if ((unsigned char)*c < 0x20 || *c == 0x7f)
      *c = '?';
}

static int print_facts(FILE *out, const msgpack_object *facts, const char *indent) {
  for (uint32_t i = 0; i < facts->via.map.size; i++) {
    const msgpack_object *k = &facts->via.map.ptr[i].key;
    if (k->type != MSGPACK_OBJECT_STR)
      return FY_EINVAL;
    char val[2048];
    fact_text(&facts->via.map.ptr[i].val, val, sizeof(val));
    fprintf(out, "%s%.*s: %s\n", indent, (int)k->via.str.size, k->via.str.ptr, val);
  }
  return 0;
}

/* Facts that change with every report, so left out of the history diff. */
static bool volatile_fact(const char *key) {
  return strcmp(key, "uptime_s") == 0 || strcmp(key, "disk_free") == 0 || strcmp(key, "collected_at") == 0;
}

/* What changed from one report to the next, as "key=value" pairs. */
static void facts_diff(const msgpack_object *prev, const msgpack_object *cur, char *out, size_t size) {
  size_t at = 0;
  out[0] = '\0';
  for (uint32_t i = 0; i < cur->via.map.size && at < size; i++) {
    const msgpack_object *k = &cur->via.map.ptr[i].key, *val = &cur->via.map.ptr[i].val;
    if (k->type != MSGPACK_OBJECT_STR)
      continue;
    char key[128], now_text[512], was_text[512] = "";
    snprintf(key, sizeof(key), "%.*s", (int)k->via.str.size, k->via.str.ptr);
    if (volatile_fact(key))
      continue;
    fact_text(val, now_text, sizeof(now_text));
    const msgpack_object *was = prev ? fy_admin_map_get(prev, key) : NULL;
    if (was)
      fact_text(was, was_text, sizeof(was_text));
    if (prev && was && strcmp(was_text, now_text) == 0)
      continue;
    int n = snprintf(out + at, size - at, "%s%s=%s", at ? " " : "", key, now_text);
    at += n > 0 ? (size_t)n : 0;
  }
}

/* The last delivery outside rollouts (update modes assigned and latest). */
static void print_update(const struct fy_admin_view *v, const msgpack_object *u) {
  char via[16] = "", name[128] = "", version[160] = "", state[32] = "", msg[512] = "", at[40];
  uint64_t at_ms = 0;
  if (!u || u->type != MSGPACK_OBJECT_MAP || get_str(u, "via", via, sizeof(via), "", NULL) < 0 ||
      get_str(u, "name", name, sizeof(name), "", NULL) < 0 ||
      get_str(u, "version", version, sizeof(version), "", NULL) < 0 ||
      get_str(u, "state", state, sizeof(state), "", NULL) < 0 || get_uint(u, "at", &at_ms, "", NULL) < 0)
    return;
  get_str(u, "msg", msg, sizeof(msg), "", NULL);
  fy_admin_format_time(v->now_ms, at_ms, at, sizeof(at));
  for (char *p = via; *p; p++)
    *p = (char)tolower((unsigned char)*p);
  fprintf(v->out, "update:      %s %s%s%s: %s (%s)%s%s\n", via, name, name[0] ? " " : "", version, state, at,
          msg[0] ? ": " : "", msg);
}

int fy_admin_view_agent(const struct fy_admin_view *v, const uint8_t *reply, size_t len, struct fy_err *err) {
  const char *w = "agent reply";
  msgpack_zone zone;
  msgpack_object o;
  int rc = fy_admin_reply_unpack(reply, len, w, &zone, &o, err);
  const msgpack_object *agent = NULL, *facts = NULL, *history = NULL;
  struct agent_fields a;
  uint64_t facts_at = 0;
  if (rc == 0 && (!(agent = get_typed(&o, "agent", MSGPACK_OBJECT_MAP, "a map", w, err)) ||
                  !(facts = get_typed(&o, "facts", MSGPACK_OBJECT_MAP, "a map", w, err)) ||
                  !(history = get_typed(&o, "history", MSGPACK_OBJECT_ARRAY, "an array", w, err))))
    rc = FY_EINVAL;
  if (rc == 0)
    rc = agent_read(agent, &a, "agent reply: agent", err);
  if (rc == 0)
    rc = get_uint(&o, "facts_at", &facts_at, w, err);
  for (uint32_t i = 0; rc == 0 && history && i < history->via.array.size; i++) {
    const msgpack_object *h = &history->via.array.ptr[i];
    uint64_t at;
    char hw[64];
    snprintf(hw, sizeof(hw), "agent reply: history[%" PRIu32 "]", i);
    if (h->type != MSGPACK_OBJECT_MAP)
      rc = fy_err_set(err, FY_EINVAL, "%s is not a map", hw);
    else if ((rc = get_uint(h, "at", &at, hw, err)) == 0 &&
             !get_typed(h, "facts", MSGPACK_OBJECT_MAP, "a map", hw, err))
      rc = FY_EINVAL;
  }
  if (rc == 0) {
    for (uint32_t i = 0; i < facts->via.map.size; i++)
      if (facts->via.map.ptr[i].key.type != MSGPACK_OBJECT_STR)
        rc = fy_err_set(err, FY_EINVAL, "agent reply: facts: key %" PRIu32 " is not a string", i);
  }
  if (rc != 0 || v->json) {
    if (rc == 0)
      rc = print_json(v, fy_admin_json_from_msgpack(&o, err), err);
    msgpack_zone_destroy(&zone);
    return rc;
  }
  char hex[65], seen[40], enrolled[40], fat[40];
  hex_of(a.id, 32, hex);
  fy_admin_format_time(v->now_ms, a.last_seen, seen, sizeof(seen));
  fy_admin_format_time(v->now_ms, a.enrolled_at, enrolled, sizeof(enrolled));
  fy_admin_format_time(v->now_ms, facts_at, fat, sizeof(fat));
  fprintf(v->out,
          "id:          %s\nstatus:      %s\ntenant:      %s\nlabels:      %s\nhostname:    %s\n"
          "version:     %s\nupdates:     %s\nonline:      %s\nlast seen:   %s\nenrolled at: %s\n",
          hex, a.status, a.tenant[0] ? a.tenant : "-", a.labels[0] ? a.labels : "-", a.hostname, a.version,
          a.updates[0] ? a.updates : "-", a.online ? "yes" : "no", seen, enrolled);
  print_update(v, fy_admin_map_get(&o, "update"));
  fprintf(v->out, "\nfacts (%s):\n", fat);
  if (facts->via.map.size == 0)
    fprintf(v->out, "  none reported\n");
  print_facts(v->out, facts, "  ");
  /* History: the newest few, each with what changed since the report before. */
  uint32_t n = history->via.array.size;
  fprintf(v->out, "\nhistory (%" PRIu32 " report%s):\n", n, n == 1 ? "" : "s");
  if (n == 0)
    fprintf(v->out, "  none\n");
  uint32_t first = n > HISTORY_SHOWN ? n - HISTORY_SHOWN : 0;
  for (uint32_t i = first; i < n; i++) {
    const msgpack_object *h = &history->via.array.ptr[i];
    const msgpack_object *hf = fy_admin_map_get(h, "facts");
    const msgpack_object *pf = i > 0 ? fy_admin_map_get(&history->via.array.ptr[i - 1], "facts") : NULL;
    char at[40], diff[1024];
    fy_admin_format_time(v->now_ms, fy_admin_map_get(h, "at")->via.u64, at, sizeof(at));
    facts_diff(pf, hf, diff, sizeof(diff));
    fprintf(v->out, "  %-12s %s\n", at, diff[0] ? diff : "(no change)");
  }
  msgpack_zone_destroy(&zone);
  return 0;
}

int fy_admin_view_result(const struct fy_admin_view *v, const uint8_t id[32], const uint8_t *reply,
                         size_t len, struct fy_err *err) {
  const char *w = "result";
  msgpack_zone zone;
  msgpack_object o;
  int rc = fy_admin_reply_unpack(reply, len, w, &zone, &o, err);
  bool ok = false;
  char code[64] = "", message[512] = "", cmd[80];
  uint8_t issuer[32];
  uint64_t seq, at;
  if (rc == 0 && (rc = get_bool(&o, "ok", &ok, w, err)) == 0 &&
      (rc = get_str(&o, "code", code, sizeof(code), w, err)) == 0 &&
      (rc = get_str(&o, "message", message, sizeof(message), w, err)) == 0)
    rc = get_uint(&o, "at", &at, w, err);
  /* A command that did not decode (malformed, bad signature) has no cmd,
   * issuer or seq in its result. */
  snprintf(cmd, sizeof(cmd), "command");
  if (rc == 0 && fy_admin_map_get(&o, "cmd") &&
      ((rc = get_str(&o, "cmd", cmd, sizeof(cmd), w, err)) < 0 ||
       (rc = get_bin32(&o, "issuer", issuer, w, err)) < 0 || (rc = get_uint(&o, "seq", &seq, w, err)) < 0))
    cmd[0] = '\0';
  if (rc == 0 && v->json)
    rc = print_json(v, fy_admin_json_from_msgpack(&o, err), err);
  msgpack_zone_destroy(&zone);
  if (rc < 0)
    return rc;
  if (!v->json) {
    char sid[13];
    short_of(id, sid);
    if (ok)
      fprintf(v->out, "applied: %s %s%s%s\n", cmd, sid, message[0] ? ": " : "", message);
    else
      fprintf(v->errout, "refused (%s): %s %s: %s\n", code, cmd, sid, message);
  }
  return ok ? 1 : 0;
}

/* ---- rollouts ------------------------------------------------------------------- */

struct rollout_fields {
  char id[64], tenant[80], name[128], version[160], waves[128], state[32], reason[256], selector[2048];
  char channel[40];
  uint64_t wave, nwaves, created;
  struct fy_rollout_policy policy;
};

static int policy_read(const msgpack_object *e, struct fy_rollout_policy *p, const char *w,
                       struct fy_err *err) {
  char pw[128];
  snprintf(pw, sizeof(pw), "%s: policy", w);
  const msgpack_object *m = get_typed(e, "policy", MSGPACK_OBJECT_MAP, "a map", w, err);
  uint64_t min_success = 0, max_failures = 0;
  int rc;
  if (!m)
    return FY_EINVAL;
  if ((rc = get_uint(m, "grace_ms", &p->grace_ms, pw, err)) < 0 ||
      (rc = get_uint(m, "min_success_permille", &min_success, pw, err)) < 0 ||
      (rc = get_uint(m, "max_failures", &max_failures, pw, err)) < 0 ||
      (rc = get_bool(m, "skip_offline", &p->skip_offline, pw, err)) < 0 ||
      (rc = get_bool(m, "abort_on_zero", &p->abort_on_zero_eligible, pw, err)) < 0 ||
      (rc = get_uint(m, "action_timeout_ms", &p->action_timeout_ms, pw, err)) < 0)
    return rc;
  p->min_success_permille = min_success > FY_PERMILLE ? FY_PERMILLE : (uint32_t)min_success;
  p->max_failures = max_failures > UINT32_MAX ? UINT32_MAX : (uint32_t)max_failures;
  return 0;
}

static int rollout_fields_read(const msgpack_object *e, struct rollout_fields *r, const char *w,
                               struct fy_err *err) {
  int rc;
  if ((rc = get_str(e, "id", r->id, sizeof(r->id), w, err)) < 0 ||
      (rc = get_str(e, "tenant", r->tenant, sizeof(r->tenant), w, err)) < 0 ||
      (rc = get_str(e, "name", r->name, sizeof(r->name), w, err)) < 0 ||
      (rc = get_str(e, "version", r->version, sizeof(r->version), w, err)) < 0 ||
      (rc = labels_text(e, "selector", r->selector, sizeof(r->selector), w, err)) < 0 ||
      (fy_admin_map_get(e, "channel") &&
       (rc = get_str(e, "channel", r->channel, sizeof(r->channel), w, err)) < 0) ||
      (rc = get_str(e, "waves", r->waves, sizeof(r->waves), w, err)) < 0 ||
      (rc = policy_read(e, &r->policy, w, err)) < 0 ||
      (rc = get_str(e, "state", r->state, sizeof(r->state), w, err)) < 0 ||
      (rc = get_uint(e, "wave", &r->wave, w, err)) < 0 ||
      (rc = get_uint(e, "nwaves", &r->nwaves, w, err)) < 0 ||
      (rc = get_uint(e, "created", &r->created, w, err)) < 0 ||
      (rc = get_str(e, "reason", r->reason, sizeof(r->reason), w, err)) < 0)
    return rc;
  return 0;
}

/* "2/3": the current wave 1-based; "-" before the waves are planned. */
static void wave_text(uint64_t wave, uint64_t nwaves, char *out, size_t size) {
  if (nwaves == 0)
    snprintf(out, size, "-");
  else
    snprintf(out, size, "%" PRIu64 "/%" PRIu64, wave + 1 < nwaves ? wave + 1 : nwaves, nwaves);
}

static int rollout_row(const struct fy_admin_view *v, struct table *t, const msgpack_object *e, const char *w,
                       struct fy_err *err) {
  (void)v;
  struct rollout_fields r;
  int rc = rollout_fields_read(e, &r, w, err);
  if (rc < 0)
    return rc;
  char artifact[300], wave[48];
  snprintf(artifact, sizeof(artifact), "%s@%s", r.name, r.version);
  wave_text(r.wave, r.nwaves, wave, sizeof(wave));
  return table_row(t, err, r.id, r.tenant, artifact, r.state, wave, r.reason[0] ? r.reason : "-");
}

int fy_admin_view_rollouts(const struct fy_admin_view *v, const uint8_t *reply, size_t len,
                           struct fy_err *err) {
  static const char *const head[] = {"ID", "TENANT", "ARTIFACT", "STATE", "WAVE", "REASON"};
  return view_list(v, reply, len, "rollouts", "rollouts reply", head, FY_ARRAY_LEN(head), rollout_row, err);
}

#define NO_WAVE UINT64_MAX

struct target_fields {
  uint8_t agent[32];
  uint64_t wave, at;
  char state[32], msg[512];
};

static int target_read(const msgpack_object *e, struct target_fields *t, const char *w, struct fy_err *err) {
  int rc;
  if (e->type != MSGPACK_OBJECT_MAP)
    return fy_err_set(err, FY_EINVAL, "%s is not a map", w);
  const msgpack_object *wave = fy_admin_map_get(e, "wave");
  t->wave = NO_WAVE; /* nil: skipped when the rollout started, in no wave */
  if ((rc = get_bin32(e, "agent", t->agent, w, err)) < 0 ||
      ((!wave || wave->type != MSGPACK_OBJECT_NIL) && (rc = get_uint(e, "wave", &t->wave, w, err)) < 0) ||
      (rc = get_str(e, "state", t->state, sizeof(t->state), w, err)) < 0 ||
      (rc = get_uint(e, "at", &t->at, w, err)) < 0 ||
      (rc = get_str(e, "msg", t->msg, sizeof(t->msg), w, err)) < 0)
    return rc;
  return 0;
}

/* Target states by name; a name this admin does not know (a newer
 * coordinator's) counts as work in progress. */
static enum fy_target_state target_state_of(const char *name) {
  for (int s = FY_TARGET_WAITING; s <= FY_TARGET_SKIPPED; s++)
    if (strcmp(fy_target_state_name((enum fy_target_state)s), name) == 0)
      return (enum fy_target_state)s;
  return FY_TARGET_WORKING;
}

/* Reads the {rollout, targets} reply; *ro and *targets point into the zone. */
static int rollout_reply(const uint8_t *reply, size_t len, msgpack_zone *zone, msgpack_object *o,
                         struct rollout_fields *r, const msgpack_object **targets, struct fy_err *err) {
  const char *w = "rollout reply";
  int rc = fy_admin_reply_unpack(reply, len, w, zone, o, err);
  const msgpack_object *ro = NULL;
  if (rc == 0 && (!(ro = get_typed(o, "rollout", MSGPACK_OBJECT_MAP, "a map", w, err)) ||
                  !(*targets = get_typed(o, "targets", MSGPACK_OBJECT_ARRAY, "an array", w, err))))
    rc = FY_EINVAL;
  if (rc == 0)
    rc = rollout_fields_read(ro, r, "rollout reply: rollout", err);
  for (uint32_t i = 0; rc == 0 && i < (*targets)->via.array.size; i++) {
    struct target_fields t;
    char tw[64];
    snprintf(tw, sizeof(tw), "rollout reply: targets[%" PRIu32 "]", i);
    rc = target_read(&(*targets)->via.array.ptr[i], &t, tw, err);
  }
  return rc;
}

static void duration_text(uint64_t ms, char *out, size_t size) {
  if (ms == 0)
    snprintf(out, size, "0s");
  else if (ms % 3600000 == 0)
    snprintf(out, size, "%" PRIu64 "h", ms / 3600000);
  else if (ms % 60000 == 0)
    snprintf(out, size, "%" PRIu64 "m", ms / 60000);
  else if (ms % 1000 == 0)
    snprintf(out, size, "%" PRIu64 "s", ms / 1000);
  else
    snprintf(out, size, "%" PRIu64 "ms", ms);
}

static void permille_text(uint32_t pm, char *out, size_t size) {
  if (pm % 10 == 0)
    snprintf(out, size, "%u%%", pm / 10);
  else
    snprintf(out, size, "%u.%u%%", pm / 10, pm % 10);
}

static void policy_text(const struct fy_rollout_policy *p, char *out, size_t size) {
  char grace[32], timeout[32], success[16], failures[24];
  duration_text(p->grace_ms, grace, sizeof(grace));
  if (p->action_timeout_ms)
    duration_text(p->action_timeout_ms, timeout, sizeof(timeout));
  else
    snprintf(timeout, sizeof(timeout), "never");
  permille_text(p->min_success_permille, success, sizeof(success));
  if (p->max_failures == UINT32_MAX)
    snprintf(failures, sizeof(failures), "any");
  else
    snprintf(failures, sizeof(failures), "%" PRIu32, p->max_failures);
  snprintf(out, size,
           "grace %s, min success %s, max failures %s, %s offline agents, %s when no agent is eligible, "
           "action timeout %s",
           grace, success, failures, p->skip_offline ? "skip" : "wait for",
           p->abort_on_zero_eligible ? "fail" : "complete", timeout);
}

int fy_admin_view_rollout(const struct fy_admin_view *v, const uint8_t *reply, size_t len,
                          struct fy_err *err) {
  msgpack_zone zone;
  msgpack_object o;
  struct rollout_fields r;
  const msgpack_object *targets = NULL;
  int rc = rollout_reply(reply, len, &zone, &o, &r, &targets, err);
  if (rc == 0 && !targets)
    rc = FY_EINVAL;
  if (rc != 0 || v->json) {
    if (rc == 0)
      rc = print_json(v, fy_admin_json_from_msgpack(&o, err), err);
    msgpack_zone_destroy(&zone);
    return rc;
  }
  char wave[48], created[40], policy[512];
  wave_text(r.wave, r.nwaves, wave, sizeof(wave));
  fy_admin_format_time(v->now_ms, r.created, created, sizeof(created));
  policy_text(&r.policy, policy, sizeof(policy));
  fprintf(v->out,
          "id:        %s\ntenant:    %s\nartifact:  %s %s\nselector:  %s\nchannel:   %s\nwaves:     %s\n"
          "policy:    %s\nstate:     %s\nwave:      %s\ncreated:   %s\nreason:    %s\n",
          r.id, r.tenant, r.name, r.version, r.selector[0] ? r.selector : "(every agent)",
          r.channel[0] ? r.channel : "-", r.waves, policy, r.state, wave, created,
          r.reason[0] ? r.reason : "-");
  uint32_t n = targets->via.array.size;
  if (n == 0)
    fprintf(v->out, "\nno agents yet: they are chosen when the rollout starts\n");
  /* Waves in order, then the agents skipped at start (in no wave); the
   * coordinator lists targets by agent id. */
  for (uint64_t w = 0; n && w <= r.nwaves; w++) {
    uint32_t count[FY_TARGET_SKIPPED + 1] = {0}, total = 0;
    for (uint32_t i = 0; i < n; i++) {
      struct target_fields t = {0};
      target_read(&targets->via.array.ptr[i], &t, "", NULL); /* checked by rollout_reply */
      if (t.wave == w || (w == r.nwaves && t.wave > r.nwaves)) {
        count[target_state_of(t.state)]++;
        total++;
      }
    }
    if (total == 0)
      continue;
    char summary[512];
    size_t at = 0;
    summary[0] = '\0';
    for (int s = FY_TARGET_WAITING; s <= FY_TARGET_SKIPPED && at < sizeof(summary); s++) {
      if (!count[s])
        continue;
      int k = snprintf(summary + at, sizeof(summary) - at, "%s%u %s", at ? ", " : ": ", count[s],
                       fy_target_state_name((enum fy_target_state)s));
      at += k > 0 ? (size_t)k : 0;
    }
    if (w < r.nwaves)
      fprintf(v->out, "\nwave %" PRIu64 "/%" PRIu64 ": %u agent%s%s\n", w + 1, r.nwaves, total,
              total == 1 ? "" : "s", summary);
    else
      fprintf(v->out, "\nnot in any wave: %u agent%s%s\n", total, total == 1 ? "" : "s", summary);
    for (uint32_t i = 0; i < n; i++) {
      struct target_fields t = {0};
      target_read(&targets->via.array.ptr[i], &t, "", NULL); /* checked by rollout_reply */
      if (!(t.wave == w || (w == r.nwaves && t.wave > r.nwaves)))
        continue;
      char id[13];
      short_of(t.agent, id);
      if (t.msg[0])
        fprintf(v->out, "  %s  %-11s  %s\n", id, t.state, t.msg);
      else
        fprintf(v->out, "  %s  %s\n", id, t.state);
    }
  }
  msgpack_zone_destroy(&zone);
  return 0;
}

int fy_admin_rollout_read(const uint8_t *reply, size_t len, struct fy_admin_rollout *out,
                          struct fy_err *err) {
  memset(out, 0, sizeof(*out));
  msgpack_zone zone;
  msgpack_object o;
  struct rollout_fields r;
  const msgpack_object *targets = NULL;
  int rc = rollout_reply(reply, len, &zone, &o, &r, &targets, err);
  if (rc == 0 && !targets)
    rc = FY_EINVAL;
  if (rc == 0 && fy_rollout_state_parse(r.state, &out->st) < 0)
    rc = fy_err_set(err, FY_EINVAL, "rollout reply: rollout: state '%s' is unknown", r.state);
  if (rc != 0 || !targets) {
    msgpack_zone_destroy(&zone);
    return rc;
  }
  snprintf(out->id, sizeof(out->id), "%s", r.id);
  snprintf(out->name, sizeof(out->name), "%s", r.name);
  snprintf(out->version, sizeof(out->version), "%s", r.version);
  snprintf(out->state, sizeof(out->state), "%s", r.state);
  snprintf(out->reason, sizeof(out->reason), "%s", r.reason);
  out->final = out->st == FY_ROLLOUT_COMPLETED || out->st == FY_ROLLOUT_PARTIAL ||
               out->st == FY_ROLLOUT_FAILED || out->st == FY_ROLLOUT_ABORTED;
  out->nwaves = r.nwaves > FY_WAVES_MAX ? FY_WAVES_MAX : (uint32_t)r.nwaves;
  out->wave = r.wave >= out->nwaves ? (out->nwaves ? out->nwaves - 1 : 0) : (uint32_t)r.wave;
  for (uint32_t i = 0; i < targets->via.array.size; i++) {
    struct target_fields t = {0};
    target_read(&targets->via.array.ptr[i], &t, "", NULL);
    if (t.wave < out->nwaves)
      fy_wave_counts_add(&out->waves[t.wave], target_state_of(t.state));
  }
  msgpack_zone_destroy(&zone);
  return 0;
}

/* "3/4 ok 1 failed 2 in progress" */
static void counts_text(const struct fy_wave_counts *c, char *out, size_t size) {
  uint32_t failed = c->failed + c->rolled_back + c->timed_out, busy = c->sent + c->working;
  int n = snprintf(out, size, "%" PRIu32 "/%" PRIu32 " ok", c->success, c->total);
  size_t at = n > 0 ? (size_t)n : 0;
  const struct {
    uint32_t n;
    const char *what;
  } extra[] = {{failed, "failed"}, {c->skipped, "skipped"}, {busy, "in progress"}, {c->waiting, "waiting"}};
  for (size_t i = 0; i < FY_ARRAY_LEN(extra) && at < size; i++) {
    if (!extra[i].n)
      continue;
    n = snprintf(out + at, size - at, " %" PRIu32 " %s", extra[i].n, extra[i].what);
    at += n > 0 ? (size_t)n : 0;
  }
}

void fy_admin_progress_line(const struct fy_wave_counts *c, uint32_t wave, uint32_t nwaves, char *out,
                            size_t size) {
  char bar[FY_ADMIN_BAR_WIDTH + 1], counts[160];
  uint32_t filled = c->total ? (uint32_t)((uint64_t)c->success * FY_ADMIN_BAR_WIDTH / c->total) : 0;
  for (uint32_t i = 0; i < FY_ADMIN_BAR_WIDTH; i++)
    bar[i] = i < filled ? '#' : '-';
  bar[FY_ADMIN_BAR_WIDTH] = '\0';
  counts_text(c, counts, sizeof(counts));
  snprintf(out, size, "wave %" PRIu32 "/%" PRIu32 " [%s] %s", wave + 1, nwaves, bar, counts);
}

void fy_admin_rollout_summary(const struct fy_admin_rollout *r, char *out, size_t size) {
  char counts[160] = "";
  if (r->nwaves)
    counts_text(&r->waves[r->wave], counts, sizeof(counts));
  if (r->nwaves == 0)
    snprintf(out, size, "rollout %s: %s, no waves yet%s%s%s", r->id, r->state, r->reason[0] ? " (" : "",
             r->reason, r->reason[0] ? ")" : "");
  else
    snprintf(out, size, "rollout %s: %s, wave %" PRIu32 "/%" PRIu32 ": %s%s%s%s", r->id, r->state,
             r->wave + 1, r->nwaves, counts, r->reason[0] ? " (" : "", r->reason, r->reason[0] ? ")" : "");
}

size_t fy_admin_rollout_frame(const struct fy_admin_rollout *r, char (*lines)[FY_ADMIN_FRAME_LINE_MAX],
                              size_t max) {
  size_t n = 0;
  if (n < max)
    snprintf(lines[n++], FY_ADMIN_FRAME_LINE_MAX, "rollout %s (%s %s): %s", r->id, r->name, r->version,
             r->state);
  if (r->nwaves == 0 && n < max)
    snprintf(lines[n++], FY_ADMIN_FRAME_LINE_MAX, "no waves yet");
  for (uint32_t w = 0; w < r->nwaves && n < max; w++)
    fy_admin_progress_line(&r->waves[w], w, r->nwaves, lines[n++], FY_ADMIN_FRAME_LINE_MAX);
  if (r->reason[0] && n < max)
    snprintf(lines[n++], FY_ADMIN_FRAME_LINE_MAX, "reason: %s", r->reason);
  return n;
}
