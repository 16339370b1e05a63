#include "fleet/facts.h"

#include <errno.h>
#include <fcntl.h>
#include <msgpack.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/mpmap.h"
#include "base/mpshape.h"
#include "fy_config.h"

/* Facts files are a few hundred bytes; more than this is not one. */
#define SMALL_FILE_MAX 65536
/* The map's known keys plus room for what newer agents add. */
#define WIRE_ELEMENTS_MAX 1024
#define WIRE_DEPTH_MAX 8

/* ---- collection ---------------------------------------------------------- */

/* Copies n bytes of s into dst (size cap), cut at a UTF-8 character boundary
 * when they do not fit, so a truncated name never ends in half a character. */
static void copy_cut(char *dst, size_t cap, const char *s, size_t n) {
  if (n > cap - 1) {
    n = cap - 1;
    while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
      n--;
  }
  memcpy(dst, s, n);
  dst[n] = '\0';
}

#define COPY_CUT(field, s) copy_cut((field), sizeof(field), (s), strlen(s))

/* Reads at most SMALL_FILE_MAX bytes of path under dirfd into a NUL-terminated
 * heap copy (NULs inside become spaces). NULL when the file is missing or
 * unreadable: every facts source is optional. */
static char *read_small(int dirfd, const char *path, size_t *len) {
  FY_AUTOCLOSE int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0)
    return NULL;
  FY_AUTOFREE char *buf = malloc(SMALL_FILE_MAX + 1);
  if (!buf)
    return NULL;
  size_t n = 0;
  while (n < SMALL_FILE_MAX) {
    ssize_t r = read(fd, buf + n, SMALL_FILE_MAX - n);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return NULL;
    if (r == 0)
      break;
    n += (size_t)r;
  }
  for (size_t i = 0; i < n; i++)
    if (buf[i] == '\0')
      buf[i] = ' ';
  buf[n] = '\0';
  *len = n;
  return FY_TAKE(buf);
}

/* os-release(5) is a shell-compatible KEY=value file without a library. This
 * follows systemd's own reader (parse_env_file): values may be unquoted,
 * '...' (literal) or "..." (where \ escapes " \ ` $ and a newline, and stays
 * literal before anything else); unquoted, \ escapes any character and \ at
 * the end of a line continues the value; unquoted trailing blanks are
 * dropped; # starts a comment line; lines that are not KEY=value are skipped.
 * The last assignment of a key wins, as in a shell. */
struct os_release {
  char id[FY_FACTS_OS_ID_MAX + 1];
  char version_id[FY_FACTS_OS_VERSION_ID_MAX + 1];
  char pretty_name[FY_FACTS_OS_PRETTY_NAME_MAX + 1];
};

/* Values beyond this are cut (the longest field is 128 bytes). */
#define OS_VALUE_MAX 512

static void os_release_assign(struct os_release *r, const char *key, const char *value, size_t n) {
  if (strcmp(key, "ID") == 0)
    copy_cut(r->id, sizeof(r->id), value, n);
  else if (strcmp(key, "VERSION_ID") == 0)
    copy_cut(r->version_id, sizeof(r->version_id), value, n);
  else if (strcmp(key, "PRETTY_NAME") == 0)
    copy_cut(r->pretty_name, sizeof(r->pretty_name), value, n);
}

static bool is_key_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
}

static bool is_blank(char c) {
  return c == ' ' || c == '\t' || c == '\r';
}

static size_t append(char *value, size_t *vlen, char ch) {
  value[(*vlen)++] = ch;
  return *vlen;
}

static void os_release_parse(const char *s, struct os_release *r) {
  enum { PRE_KEY, KEY, POST_KEY, PRE_VALUE, VALUE, VALUE_ESC, SQ, DQ, DQ_ESC, COMMENT, SKIP } st = PRE_KEY;
  char key[64];
  size_t klen = 0;
  char value[OS_VALUE_MAX];
  size_t vlen = 0, keep = 0; /* keep: length without unquoted trailing blanks */
  for (const char *c = s;; c++) {
    char ch = *c;
    if (ch == '\0') {
      /* A last line without newline, or an unterminated quote, ends the value. */
      if (st == PRE_VALUE) {
        key[klen] = '\0';
        os_release_assign(r, key, "", 0);
      } else if (st == VALUE || st == VALUE_ESC || st == SQ || st == DQ || st == DQ_ESC) {
        os_release_assign(r, key, value, keep);
      }
      return;
    }
    switch (st) {
    case PRE_KEY:
      if (is_key_char(ch)) {
        key[0] = ch;
        klen = 1;
        st = KEY;
      } else if (ch == '#' || ch == ';') {
        st = COMMENT;
      } else if (ch != '\n' && !is_blank(ch)) {
        st = SKIP;
      }
      break;
    case KEY:
      if (is_key_char(ch) && klen < sizeof(key) - 1)
        key[klen++] = ch;
      else if (ch == '=')
        st = PRE_VALUE;
      else if (is_blank(ch))
        st = POST_KEY;
      else
        st = ch == '\n' ? PRE_KEY : SKIP; /* a key too long for any we want is skipped too */
      break;
    case POST_KEY:
      if (ch == '=')
        st = PRE_VALUE;
      else if (!is_blank(ch))
        st = ch == '\n' ? PRE_KEY : SKIP;
      break;
    case PRE_VALUE:
      if (is_blank(ch))
        break;
      key[klen] = '\0';
      vlen = keep = 0;
      st = VALUE;
      __attribute__((fallthrough)); /* ch is the value's first character */
    case VALUE:
      if (ch == '\n') {
        os_release_assign(r, key, value, keep);
        st = PRE_KEY;
      } else if (ch == '\'') {
        st = SQ;
      } else if (ch == '"') {
        st = DQ;
      } else if (ch == '\\') {
        st = VALUE_ESC;
      } else if (vlen < sizeof(value)) {
        value[vlen++] = ch;
        if (!is_blank(ch))
          keep = vlen;
      }
      break;
    case VALUE_ESC:
      st = VALUE;
      if (ch != '\n' && vlen < sizeof(value)) {
        value[vlen++] = ch;
        keep = vlen;
      }
      break;
    case SQ:
      if (ch == '\'')
        st = VALUE;
      else if (vlen < sizeof(value))
        keep = append(value, &vlen, ch);
      break;
    case DQ:
      if (ch == '"')
        st = VALUE;
      else if (ch == '\\')
        st = DQ_ESC;
      else if (vlen < sizeof(value))
        keep = append(value, &vlen, ch);
      break;
    case DQ_ESC:
      st = DQ;
      if (ch == '\n')
        break;
      if (!strchr("\"\\`$", ch) && vlen < sizeof(value))
        value[vlen++] = '\\';
      if (vlen < sizeof(value))
        value[vlen++] = ch;
      keep = vlen;
      break;
    case COMMENT:
    case SKIP:
      if (ch == '\n')
        st = PRE_KEY;
      break;
    }
  }
}

/* etc/os-release, or usr/lib/os-release when etc has none (os-release(5)). */
static void collect_os(int rootfd, struct fy_facts *out) {
  size_t n;
  FY_AUTOFREE char *text = read_small(rootfd, "etc/os-release", &n);
  if (!text)
    text = read_small(rootfd, "usr/lib/os-release", &n);
  if (!text)
    return;
  struct os_release r = {0};
  os_release_parse(text, &r);
  memcpy(out->os_id, r.id, sizeof(r.id));
  memcpy(out->os_version_id, r.version_id, sizeof(r.version_id));
  memcpy(out->os_pretty_name, r.pretty_name, sizeof(r.pretty_name));
}

static void collect_machine_id(int rootfd, struct fy_facts *out) {
  size_t n;
  FY_AUTOFREE char *text = read_small(rootfd, "etc/machine-id", &n);
  if (!text)
    return;
  const char *p = text;
  while (n > 0 && (is_blank(*p) || *p == '\n'))
    p++, n--;
  while (n > 0 && (is_blank(p[n - 1]) || p[n - 1] == '\n'))
    n--;
  /* Empty, or systemd's placeholder during first boot: no id yet. */
  if (n == 0 || (n == 13 && memcmp(p, "uninitialized", 13) == 0))
    return;
  static const char ctx[] = FY_FACTS_MACHINE_ID_CONTEXT; /* hashed with its NUL */
  uint8_t h[crypto_hash_sha256_BYTES];
  crypto_hash_sha256_state st;
  crypto_hash_sha256_init(&st);
  crypto_hash_sha256_update(&st, (const uint8_t *)ctx, sizeof(ctx));
  crypto_hash_sha256_update(&st, (const uint8_t *)p, n);
  crypto_hash_sha256_final(&st, h);
  sodium_bin2hex(out->machine_id_hash, sizeof(out->machine_id_hash), h, sizeof(h));
}

static void collect_uptime(int rootfd, struct fy_facts *out) {
  size_t n;
  FY_AUTOFREE char *text = read_small(rootfd, "proc/uptime", &n);
  if (!text)
    return;
  uint64_t v = 0;
  for (const char *p = text; *p >= '0' && *p <= '9'; p++) {
    if (v > (UINT64_MAX - 9) / 10)
      return; /* not an uptime */
    v = v * 10 + (uint64_t)(*p - '0');
  }
  out->uptime_s = v;
}

static void collect_nixos(int rootfd, struct fy_facts *out) {
  char buf[sizeof(out->nixos_system)];
  ssize_t n = readlinkat(rootfd, "run/current-system", buf, sizeof(buf));
  /* A link that fills buf may be longer: a cut store path would name another. */
  if (n <= 0 || (size_t)n >= sizeof(buf) || memchr(buf, '\0', (size_t)n))
    return;
  memcpy(out->nixos_system, buf, (size_t)n);
  out->nixos_system[n] = '\0';
}

static uint64_t mul_sat(uint64_t a, uint64_t b) {
  uint64_t r;
  return __builtin_mul_overflow(a, b, &r) ? UINT64_MAX : r;
}

static void collect_disk(const char *dir, struct fy_facts *out) {
  struct statvfs sv;
  if (!dir || statvfs(dir, &sv) != 0)
    return;
  out->disk_total = mul_sat(sv.f_blocks, sv.f_frsize);
  out->disk_free = mul_sat(sv.f_bavail, sv.f_frsize);
}

int fy_facts_collect(const struct fy_facts_source *src, struct fy_facts *out, struct fy_err *err) {
  memset(out, 0, sizeof(*out));
  const char *root = src->root ? src->root : "/";
  if (src->version && strlen(src->version) > FY_FACTS_VERSION_MAX)
    return fy_err_set(err, FY_EINVAL, "facts: version is longer than %d bytes", FY_FACTS_VERSION_MAX);
  if (src->labels) {
    if (src->labels->n > FY_LABELS_MAX)
      return fy_err_set(err, FY_EINVAL, "facts: %zu labels, at most %d", src->labels->n, FY_LABELS_MAX);
    /* Through fy_labels_set, so what goes out is valid and in key order
     * even when the caller filled the struct by hand: the coordinator's
     * decoder would refuse anything else. */
    for (size_t i = 0; i < src->labels->n; i++) {
      const struct fy_label *l = &src->labels->v[i];
      if (!memchr(l->key, '\0', sizeof(l->key)) || !memchr(l->value, '\0', sizeof(l->value)))
        return fy_err_set(err, FY_EINVAL, "facts: label %zu is not NUL-terminated", i);
      int rc = fy_labels_set(&out->labels, l->key, l->value, err);
      if (rc < 0) {
        memset(out, 0, sizeof(*out));
        fy_err_prefix(err, "facts: labels");
        return rc;
      }
    }
  }
  FY_AUTOCLOSE int rootfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (rootfd < 0) {
    int e = errno;
    memset(out, 0, sizeof(*out));
    return fy_err_errno(err, e, "facts: root directory %s", root);
  }
  if (sodium_init() < 0) {
    memset(out, 0, sizeof(*out));
    return fy_err_set(err, FY_ECRYPTO, "facts: libsodium failed to initialise");
  }

  struct utsname u;
  if (uname(&u) == 0) {
    COPY_CUT(out->hostname, u.nodename);
    COPY_CUT(out->kernel, u.release);
    COPY_CUT(out->arch, u.machine);
  }
  collect_os(rootfd, out);
  collect_machine_id(rootfd, out);
  collect_uptime(rootfd, out);
  collect_nixos(rootfd, out);
  collect_disk(src->disk_dir, out);
  if (src->version)
    COPY_CUT(out->version, src->version);
  const struct fy_update_prefs *up = src->update;
  snprintf(out->update_mode, sizeof(out->update_mode), "%s",
           fy_update_mode_name(up ? up->mode : FY_UPDATE_FOLLOW));
  if (up) {
    COPY_CUT(out->channel, up->channel);
    COPY_CUT(out->assigned, up->assigned);
    COPY_CUT(out->hw_model, up->hw_model);
    COPY_CUT(out->hw_revision, up->hw_revision);
  }
  snprintf(out->ferry_version, sizeof(out->ferry_version), "%s", FY_VERSION);
  out->collected_at = src->now_ms;
  return 0;
}

/* ---- the wire ------------------------------------------------------------ */

enum kind { STR, UINT, LABELS };

/* One row per key, in encoding order: the table proto/facts.md describes. */
struct field {
  const char *key;
  enum kind kind;
  size_t off, size; /* size of the char array for STR */
};

#define STR_FIELD(name)                                                                                      \
  { #name, STR, offsetof(struct fy_facts, name), sizeof(((struct fy_facts *)0)->name) }
#define UINT_FIELD(name)                                                                                     \
  { #name, UINT, offsetof(struct fy_facts, name), sizeof(uint64_t) }

static const struct field fields[] = {
    STR_FIELD(hostname),
    STR_FIELD(kernel),
    STR_FIELD(arch),
    STR_FIELD(os_id),
    STR_FIELD(os_version_id),
    STR_FIELD(os_pretty_name),
    STR_FIELD(machine_id_hash),
    STR_FIELD(version),
    STR_FIELD(ferry_version),
    STR_FIELD(nixos_system),
    {"labels", LABELS, offsetof(struct fy_facts, labels), sizeof(struct fy_labels)},
    STR_FIELD(update_mode),
    STR_FIELD(channel),
    STR_FIELD(assigned),
    STR_FIELD(hw_model),
    STR_FIELD(hw_revision),
    UINT_FIELD(disk_free),
    UINT_FIELD(disk_total),
    UINT_FIELD(uptime_s),
    UINT_FIELD(collected_at),
};

int fy_facts_encode(const struct fy_facts *f, struct fy_buf *out, struct fy_err *err) {
  size_t start = out->len;
  msgpack_packer pk;
  msgpack_packer_init(&pk, out, fy_mp_buf_write);
  int bad = msgpack_pack_map(&pk, FY_ARRAY_LEN(fields));
  for (size_t i = 0; i < FY_ARRAY_LEN(fields) && !bad; i++) {
    const struct field *d = &fields[i];
    const char *at = (const char *)f + d->off;
    bad = msgpack_pack_str_with_body(&pk, d->key, strlen(d->key));
    if (bad)
      break;
    switch (d->kind) {
    case STR: {
      /* strnlen: a field without its NUL is cut at its array, never overread. */
      size_t n = strnlen(at, d->size - 1);
      bad = msgpack_pack_str_with_body(&pk, at, n);
      break;
    }
    case UINT: {
      uint64_t v;
      memcpy(&v, at, sizeof(v));
      bad = msgpack_pack_uint64(&pk, v);
      break;
    }
    case LABELS:
      bad = fy_labels_pack(&f->labels, &pk) < 0;
      break;
    }
  }
  if (bad) {
    out->len = start;
    return fy_err_set(err, FY_ENOMEM, "facts: cannot encode");
  }
  return 0;
}

static const char *name_of(const struct fy_mpshape_pos *pos, char *out, size_t size, const void *user) {
  (void)pos;
  (void)user;
  snprintf(out, size, "facts");
  return out;
}

static int decode_field(const struct field *d, const msgpack_object *v, struct fy_facts *out,
                        struct fy_err *err) {
  char *at = (char *)out + d->off;
  switch (d->kind) {
  case STR:
    if (v->type != MSGPACK_OBJECT_STR)
      return fy_err_set(err, FY_EINVAL, "facts: %s is not a string", d->key);
    if (v->via.str.size > d->size - 1)
      return fy_err_set(err, FY_EINVAL, "facts: %s is %u bytes, at most %zu", d->key, v->via.str.size,
                        d->size - 1);
    if (v->via.str.size > 0 && memchr(v->via.str.ptr, '\0', v->via.str.size))
      return fy_err_set(err, FY_EINVAL, "facts: %s contains a NUL byte", d->key);
    if (v->via.str.size > 0)
      memcpy(at, v->via.str.ptr, v->via.str.size);
    at[v->via.str.size] = '\0';
    return 0;
  case UINT:
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
      return fy_err_set(err, FY_EINVAL, "facts: %s is not an unsigned integer", d->key);
    memcpy(at, &v->via.u64, sizeof(uint64_t));
    return 0;
  case LABELS: {
    int rc = fy_labels_unpack(v, &out->labels, err);
    if (rc < 0)
      fy_err_prefix(err, "facts");
    return rc;
  }
  }
  return fy_err_set(err, FY_EINVAL, "facts: %s has no decoder", d->key);
}

/* machine_id_hash is ours to check: the coordinator groups and compares by it. */
static int check_hash(const char *h, struct fy_err *err) {
  size_t n = strlen(h);
  if (n == 0)
    return 0;
  if (n != FY_FACTS_MACHINE_ID_HASH_LEN)
    return fy_err_set(err, FY_EINVAL, "facts: machine_id_hash is %zu characters, not %d", n,
                      FY_FACTS_MACHINE_ID_HASH_LEN);
  for (size_t i = 0; i < n; i++)
    if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f')))
      return fy_err_set(err, FY_EINVAL, "facts: machine_id_hash is not lowercase hex (offset %zu)", i);
  return 0;
}

static int decode_map(const msgpack_object *m, struct fy_facts *out, struct fy_err *err) {
  bool seen[FY_ARRAY_LEN(fields)] = {0};
  for (uint32_t i = 0; i < m->via.map.size; i++) {
    const msgpack_object *k = &m->via.map.ptr[i].key;
    if (k->type != MSGPACK_OBJECT_STR)
      return fy_err_set(err, FY_EINVAL, "facts: key %u is not a string", i);
    for (size_t j = 0; j < FY_ARRAY_LEN(fields); j++) {
      const struct field *d = &fields[j];
      if (k->via.str.size != strlen(d->key) || memcmp(k->via.str.ptr, d->key, k->via.str.size) != 0)
        continue;
      /* Two values for one key would let two readers see different facts. */
      if (seen[j])
        return fy_err_set(err, FY_EINVAL, "facts: %s appears twice", d->key);
      seen[j] = true;
      int rc = decode_field(d, &m->via.map.ptr[i].val, out, err);
      if (rc < 0)
        return rc;
      break;
    }
    /* Not ours: a newer agent's key, skipped. */
  }
  return check_hash(out->machine_id_hash, err);
}

int fy_facts_decode(const uint8_t *p, size_t len, struct fy_facts *out, struct fy_err *err) {
  memset(out, 0, sizeof(*out));
  if (len > FY_FACTS_WIRE_MAX)
    return fy_err_set(err, FY_ELIMIT, "facts: %zu bytes, at most %d", len, FY_FACTS_WIRE_MAX);
  int rc = fy_mpshape_check(p, len, WIRE_DEPTH_MAX, WIRE_ELEMENTS_MAX, "facts message", name_of, NULL, err);
  if (rc < 0)
    return rc;
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  if (msgpack_unpack_next(&u, (const char *)p, len, &off) != MSGPACK_UNPACK_SUCCESS) {
    msgpack_unpacked_destroy(&u);
    return fy_err_set(err, FY_EINVAL, "facts: not msgpack");
  }
  if (u.data.type != MSGPACK_OBJECT_MAP)
    rc = fy_err_set(err, FY_EINVAL, "facts: not a map");
  else
    rc = decode_map(&u.data, out, err);
  msgpack_unpacked_destroy(&u);
  if (rc < 0)
    memset(out, 0, sizeof(*out));
  return rc;
}

/* ---- change detection ---------------------------------------------------- */

static bool labels_differ(const struct fy_labels *a, const struct fy_labels *b) {
  if (a->n != b->n)
    return true;
  for (size_t i = 0; i < a->n && i < FY_LABELS_MAX; i++)
    if (strncmp(a->v[i].key, b->v[i].key, sizeof(a->v[i].key)) != 0 ||
        strncmp(a->v[i].value, b->v[i].value, sizeof(a->v[i].value)) != 0)
      return true;
  return false;
}

bool fy_facts_changed(const struct fy_facts *a, const struct fy_facts *b) {
  for (size_t i = 0; i < FY_ARRAY_LEN(fields); i++) {
    const struct field *d = &fields[i];
    const char *x = (const char *)a + d->off, *y = (const char *)b + d->off;
    switch (d->kind) {
    case STR:
      if (strncmp(x, y, d->size) != 0)
        return true;
      break;
    case UINT:
      /* The volatile ones move all the time; a report for each would be noise. */
      if (d->off == offsetof(struct fy_facts, disk_free) || d->off == offsetof(struct fy_facts, uptime_s) ||
          d->off == offsetof(struct fy_facts, collected_at))
        break;
      if (memcmp(x, y, sizeof(uint64_t)) != 0)
        return true;
      break;
    case LABELS:
      if (labels_differ(&a->labels, &b->labels))
        return true;
      break;
    }
  }
  return false;
}
