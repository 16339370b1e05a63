/* The LMDB store: table round trips, migrations, map growth and its limit, a
 * full disk (a small tmpfs, when run as root), refusing damaged files without
 * touching them, the directory lock across processes, and a writer killed in
 * the middle of a transaction. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <lmdb.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "store/store.h"

#define assert_contains(haystack, needle)                                                                    \
  do {                                                                                                       \
    if (!strstr((haystack), (needle)))                                                                       \
      fail_msg("message \"%s\" does not contain \"%s\"", (haystack), (needle));                              \
  } while (0)

#define MiB (1ull << 20)

static const struct fy_store_table_def T_DUPS = {"test.dups", FY_TABLE_DUPSORT};

struct ctx {
  char dir[256];
};

/* ---- helpers ------------------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static int setup(void **state) {
  struct ctx *c = calloc(1, sizeof(*c));
  const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  snprintf(c->dir, sizeof(c->dir), "%s/ferry-store-XXXXXX", base);
  assert_non_null(mkdtemp(c->dir));
  *state = c;
  return 0;
}

static int teardown(void **state) {
  struct ctx *c = *state;
  char mnt[300];
  snprintf(mnt, sizeof(mnt), "%s/tmpfs", c->dir);
  umount2(mnt, MNT_DETACH); /* left mounted when the full-disk test failed */
  nftw(c->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(c);
  return 0;
}

/* A single-schema store on tables; the store's tables are named by the defs. */
static const struct fy_store_table_def items_tables[] = {{"test.items", 0}};

static struct fy_store *open_with(const char *dir, const struct fy_store_schema *sc,
                                  const struct fy_store_opts *o) {
  const struct fy_store_schema *schemas[] = {sc};
  struct fy_store *s = NULL;
  struct fy_err err;
  if (fy_store_open(&s, dir, schemas, 1, o, &err) != 0)
    fail_msg("open %s: %s", dir, err.msg);
  return s;
}

static const struct fy_store_schema plain = {"test", items_tables, 1, NULL, 0};

static struct fy_store *open_plain(const char *dir, uint64_t initial, uint64_t max) {
  struct fy_store_opts o = {.initial_map = initial, .max_map = max};
  return open_with(dir, &plain, &o);
}

struct kv {
  const char *key, *val;
};

static int put_pairs(struct fy_txn *t, void *user) {
  const struct kv *kv = user;
  struct fy_table *tb = fy_store_table_named(fy_txn_store(t), "test.items");
  for (; kv->key; kv++) {
    int rc = fy_store_put(t, tb, fy_bytes_str(kv->key), fy_bytes_str(kv->val));
    if (rc)
      return rc;
  }
  return 0;
}

/* ---- round trips ---------------------------------------------------------- */

struct rt {
  char seen[512];
  int rc;
};

static int read_back(struct fy_txn *t, void *user) {
  struct rt *r = user;
  struct fy_table *tb = fy_store_table_named(fy_txn_store(t), "test.items");
  struct fy_bytes v;
  assert_int_equal(fy_store_get(t, tb, fy_bytes_str("b/2"), &v), 1);
  assert_int_equal(v.n, 3);
  assert_memory_equal(v.p, "two", 3);
  assert_int_equal(fy_store_get(t, tb, fy_bytes_str("b/9"), &v), 0);
  uint64_t n;
  assert_int_equal(fy_store_count(t, tb, &n), 0);
  assert_int_equal(n, 5);
  /* Prefix "b/": forwards, backwards, and a seek. */
  struct fy_cursor *c;
  assert_int_equal(fy_cursor_open(t, tb, fy_bytes_str("b/"), &c), 0);
  struct fy_bytes k;
  r->seen[0] = '\0';
  while ((r->rc = fy_cursor_next(c, &k, &v)) == 1)
    snprintf(r->seen + strlen(r->seen), sizeof(r->seen) - strlen(r->seen), "%.*s=%.*s ", (int)k.n, k.p,
             (int)v.n, v.p);
  assert_int_equal(r->rc, 0);
  assert_string_equal(r->seen, "b/1=one b/2=two b/3=three ");
  fy_cursor_close(c);
  assert_int_equal(fy_cursor_open(t, tb, fy_bytes_str("b/"), &c), 0);
  assert_int_equal(fy_cursor_prev(c, &k, NULL), 1);
  assert_memory_equal(k.p, "b/3", 3);
  assert_int_equal(fy_cursor_prev(c, &k, NULL), 1);
  assert_memory_equal(k.p, "b/2", 3);
  assert_int_equal(fy_cursor_seek(c, fy_bytes_str("b/15"), &k, NULL), 1);
  assert_memory_equal(k.p, "b/2", 3);
  assert_int_equal(fy_cursor_seek(c, fy_bytes_str("a"), &k, NULL), 1); /* below the prefix: its start */
  assert_memory_equal(k.p, "b/1", 3);
  assert_int_equal(fy_cursor_seek(c, fy_bytes_str("b/4"), &k, NULL), 0);
  /* Left open: the end of the transaction closes it. */
  /* A prefix whose last byte is 0xff, and one that matches nothing. */
  struct fy_cursor *c2;
  assert_int_equal(fy_cursor_open(t, tb, fy_bytes_of("c\xff", 2), &c2), 0);
  assert_int_equal(fy_cursor_prev(c2, &k, &v), 1);
  assert_memory_equal(k.p, "c\xff\xff", 3);
  assert_int_equal(fy_cursor_open(t, tb, fy_bytes_str("zz"), &c2), 0);
  assert_int_equal(fy_cursor_next(c2, &k, &v), 0);
  assert_int_equal(fy_cursor_prev(c2, &k, &v), 0);
  return 7;
}

static int delete_some(struct fy_txn *t, void *user) {
  (void)user;
  struct fy_table *tb = fy_store_table_named(fy_txn_store(t), "test.items");
  assert_int_equal(fy_store_del(t, tb, fy_bytes_str("a")), 1);
  assert_int_equal(fy_store_del(t, tb, fy_bytes_str("a")), 0);
  /* Delete while iterating: every other entry of b/. */
  struct fy_cursor *c;
  assert_int_equal(fy_cursor_open(t, tb, fy_bytes_str("b/"), &c), 0);
  struct fy_bytes k;
  int i = 0;
  while (fy_cursor_next(c, &k, NULL) == 1)
    if (i++ % 2 == 0)
      assert_int_equal(fy_cursor_del(c), 0);
  assert_int_equal(i, 3);
  uint8_t *p;
  assert_int_equal(fy_store_reserve(t, tb, fy_bytes_str("r"), 4, &p), 0);
  static const uint8_t resv[4] = {'r', 'e', 's', 'v'};
  memcpy(p, resv, sizeof(resv));
  /* Keys must be 1..511 bytes. */
  uint8_t big[600] = {0};
  assert_int_equal(fy_store_put(t, tb, fy_bytes_of(big, sizeof(big)), fy_bytes_str("x")), FY_ELIMIT);
  assert_contains(fy_txn_err(t)->msg, "a key is 1 to 511 bytes");
  return 0;
}

static int after_delete(struct fy_txn *t, void *user) {
  char *out = user;
  struct fy_table *tb = fy_store_table_named(fy_txn_store(t), "test.items");
  struct fy_cursor *c;
  assert_int_equal(fy_cursor_open(t, tb, (struct fy_bytes){0}, &c), 0);
  struct fy_bytes k, v;
  out[0] = '\0';
  while (fy_cursor_next(c, &k, &v) == 1)
    snprintf(out + strlen(out), 256 - strlen(out), "%.*s=%.*s ", (int)k.n, k.p, (int)v.n, v.p);
  /* A write in a read transaction is refused. */
  assert_int_equal(fy_store_put(t, tb, fy_bytes_str("x"), fy_bytes_str("y")), FY_EINVAL);
  return 0;
}

static void put_get_del_iterate(void **state) {
  struct ctx *c = *state;
  struct fy_store *s = open_plain(c->dir, 0, 0);
  struct fy_err err;
  struct kv kv[] = {{"b/2", "two"},   {"a", "A"},          {"b/1", "one"},
                    {"b/3", "three"}, {"c\xff\xff", "ff"}, {NULL, NULL}};
  assert_int_equal(fy_store_write(s, put_pairs, (void *)kv, &err), 0);
  struct rt r;
  assert_int_equal(fy_store_read(s, read_back, &r, &err), 7);
  assert_int_equal(fy_store_write(s, delete_some, NULL, &err), 0);
  char out[256];
  assert_int_equal(fy_store_read(s, after_delete, out, &err), 0);
  assert_string_equal(out, "b/2=two c\xff\xff=ff r=resv ");
  fy_store_close(s);
  /* Still there after a reopen, and the layout is as documented. */
  char path[512];
  snprintf(path, sizeof(path), "%s/store/data.mdb", c->dir);
  assert_int_equal(access(path, F_OK), 0);
  snprintf(path, sizeof(path), "%s/lock", c->dir);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  s = open_plain(c->dir, 0, 0);
  assert_int_equal(fy_store_read(s, after_delete, out, &err), 0);
  assert_string_equal(out, "b/2=two c\xff\xff=ff r=resv ");
  fy_store_close(s);
}

static int dup_body(struct fy_txn *t, void *user) {
  char *out = user;
  struct fy_table *tb = fy_txn_table(t, &T_DUPS);
  assert_non_null(tb);
  assert_int_equal(fy_store_put(t, tb, fy_bytes_str("k"), fy_bytes_str("2")), 0);
  assert_int_equal(fy_store_put(t, tb, fy_bytes_str("k"), fy_bytes_str("1")), 0);
  assert_int_equal(fy_store_put(t, tb, fy_bytes_str("l"), fy_bytes_str("3")), 0);
  struct fy_cursor *c;
  assert_int_equal(fy_cursor_open(t, tb, fy_bytes_str("k"), &c), 0);
  struct fy_bytes k, v;
  out[0] = '\0';
  while (fy_cursor_next(c, &k, &v) == 1)
    snprintf(out + strlen(out), 64 - strlen(out), "%.*s", (int)v.n, v.p);
  assert_int_equal(fy_store_del(t, tb, fy_bytes_str("k")), 1);
  uint64_t n;
  assert_int_equal(fy_store_count(t, tb, &n), 0);
  assert_int_equal(n, 1);
  uint8_t *p;
  assert_int_equal(fy_store_reserve(t, tb, fy_bytes_str("m"), 1, &p), FY_EINVAL);
  assert_int_equal(fy_store_clear(t, tb), 0);
  assert_int_equal(fy_store_count(t, tb, &n), 0);
  assert_int_equal(n, 0);
  return 0;
}

static void dupsort_tables_and_be64_keys(void **state) {
  struct ctx *c = *state;
  const struct fy_store_schema sc = {"test", &T_DUPS, 1, NULL, 0};
  struct fy_store *s = open_with(c->dir, &sc, NULL);
  /* Handles go by the declaration's address (or by name). */
  struct fy_table *tb = fy_store_table(s, &T_DUPS);
  assert_non_null(tb);
  assert_ptr_equal(fy_store_table_named(s, "test.dups"), tb);
  const struct fy_store_table_def other = {"test.dups", FY_TABLE_DUPSORT};
  assert_null(fy_store_table(s, &other));
  struct fy_err err;
  char out[64];
  assert_int_equal(fy_store_write(s, dup_body, out, &err), 0);
  assert_string_equal(out, "12");
  fy_store_close(s);

  /* Big-endian keys sort numerically. */
  uint64_t vals[] = {0, 1, 255, 256, 1ull << 40, UINT64_MAX};
  for (size_t i = 0; i + 1 < FY_ARRAY_LEN(vals); i++) {
    uint8_t a[8], b[8];
    fy_be64_put(a, vals[i]);
    fy_be64_put(b, vals[i + 1]);
    assert_true(memcmp(a, b, 8) < 0);
    assert_int_equal(fy_be64_get(a), vals[i]);
  }
}

/* ---- migrations ------------------------------------------------------------ */

struct mig_log {
  int v1, v2;
  int fail_v2;
};

static int mig_v1(struct fy_txn *t, void *user) {
  struct mig_log *l = user;
  l->v1++;
  return fy_store_put(t, fy_store_table_named(fy_txn_store(t), "test.items"), fy_bytes_str("v1"),
                      fy_bytes_str("yes"));
}

static int mig_v2(struct fy_txn *t, void *user) {
  struct mig_log *l = user;
  l->v2++;
  if (l->fail_v2)
    return fy_err_set(fy_txn_err(t), FY_EINVAL, "refusing on purpose");
  /* v2 adds test.extra and moves v1 into it. */
  struct fy_table *items = fy_store_table_named(fy_txn_store(t), "test.items");
  struct fy_table *extra = fy_store_table_named(fy_txn_store(t), "test.extra");
  struct fy_bytes v;
  int rc = fy_store_get(t, items, fy_bytes_str("v1"), &v);
  if (rc != 1)
    return rc < 0 ? rc : fy_err_set(fy_txn_err(t), FY_ENOENT, "v1 missing");
  uint8_t copy[16];
  memcpy(copy, v.p, v.n);
  if ((rc = fy_store_put(t, extra, fy_bytes_str("moved"), fy_bytes_of(copy, v.n))) < 0)
    return rc;
  return fy_store_del(t, items, fy_bytes_str("v1")) < 0 ? -1 : 0;
}

static int get_items(struct fy_txn *t, void *user) {
  char *out = user;
  out[0] = '\0';
  struct fy_table *tbs[] = {fy_store_table_named(fy_txn_store(t), "test.items"),
                            fy_store_table_named(fy_txn_store(t), "test.extra")};
  for (size_t i = 0; i < 2; i++) {
    if (!tbs[i])
      continue;
    struct fy_cursor *c;
    assert_int_equal(fy_cursor_open(t, tbs[i], (struct fy_bytes){0}, &c), 0);
    struct fy_bytes k, v;
    while (fy_cursor_next(c, &k, &v) == 1)
      snprintf(out + strlen(out), 128 - strlen(out), "%.*s=%.*s ", (int)k.n, k.p, (int)v.n, v.p);
  }
  return 0;
}

static void migration_runs_once_and_persists(void **state) {
  struct ctx *c = *state;
  static const fy_txn_fn migs[] = {mig_v1, mig_v2};
  static const struct fy_store_table_def defs[] = {{"test.items", 0}, {"test.extra", 0}};
  const struct fy_store_schema v1 = {"test", defs, 1, migs, 1};
  const struct fy_store_schema v2 = {"test", defs, 2, migs, 2};
  struct mig_log log = {0};
  struct fy_store_opts o = {.migrate_user = &log};
  fy_store_close(open_with(c->dir, &v1, &o));
  fy_store_close(open_with(c->dir, &v1, &o));
  assert_int_equal(log.v1, 1);
  assert_int_equal(log.v2, 0);

  /* A failing migration leaves the store at v1, with nothing of v2 in it. */
  log.fail_v2 = 1;
  struct fy_store *s;
  struct fy_err err;
  const struct fy_store_schema *schemas[] = {&v2};
  assert_int_equal(fy_store_open(&s, c->dir, schemas, 1, &o, &err), FY_EINVAL);
  assert_contains(err.msg, "schema test: migration to version 2: refusing on purpose");
  assert_null(s);
  char out[128];
  s = open_with(c->dir, &v1, &o);
  assert_null(fy_store_table_named(s, "test.extra"));
  assert_int_equal(fy_store_read(s, get_items, out, &err), 0);
  assert_string_equal(out, "v1=yes ");
  fy_store_close(s);

  log.fail_v2 = 0;
  log.v2 = 0;
  s = open_with(c->dir, &v2, &o);
  assert_int_equal(fy_store_read(s, get_items, out, &err), 0);
  assert_string_equal(out, "moved=yes ");
  fy_store_close(s);
  fy_store_close(open_with(c->dir, &v2, &o));
  assert_int_equal(log.v1, 1);
  assert_int_equal(log.v2, 1);
}

static uint8_t *hash_file(const char *path, uint8_t out[32], off_t *size) {
  int fd = open(path, O_RDONLY);
  assert_true(fd >= 0);
  crypto_generichash_state st;
  crypto_generichash_init(&st, NULL, 0, 32);
  uint8_t buf[65536];
  ssize_t n;
  *size = 0;
  while ((n = read(fd, buf, sizeof(buf))) > 0) {
    crypto_generichash_update(&st, buf, (size_t)n);
    *size += n;
  }
  close(fd);
  crypto_generichash_final(&st, out, 32);
  return out;
}

static void newer_schema_is_refused(void **state) {
  struct ctx *c = *state;
  static const fy_txn_fn migs[] = {mig_v1, mig_v2};
  static const struct fy_store_table_def defs[] = {{"test.items", 0}, {"test.extra", 0}};
  const struct fy_store_schema v2 = {"test", defs, 2, migs, 2};
  const struct fy_store_schema v1 = {"test", defs, 1, migs, 1};
  struct mig_log log = {0};
  struct fy_store_opts o = {.migrate_user = &log};
  fy_store_close(open_with(c->dir, &v2, &o));
  char path[512];
  snprintf(path, sizeof(path), "%s/store/data.mdb", c->dir);
  uint8_t before[32], after[32];
  off_t n1, n2;
  hash_file(path, before, &n1);
  const struct fy_store_schema *schemas[] = {&v1};
  struct fy_store *s;
  struct fy_err err;
  assert_int_equal(fy_store_open(&s, c->dir, schemas, 1, &o, &err), FY_EUNSUPPORTED);
  assert_contains(err.msg, "written by version 2 of the test schema");
  assert_contains(err.msg, "only up to version 1");
  hash_file(path, after, &n2);
  assert_int_equal(n1, n2);
  assert_memory_equal(before, after, 32);
  assert_int_equal(log.v1, 1);
}

/* ---- map growth and its limit ------------------------------------------------ */

struct fill {
  uint32_t first, count; /* value numbers */
  size_t size;           /* bytes per value */
};

static void value_bytes(uint32_t i, uint8_t *p, size_t n) {
  for (size_t j = 0; j < n; j++)
    p[j] = (uint8_t)((size_t)i * 7 + j);
}

static int fill_body(struct fy_txn *t, void *user) {
  const struct fill *f = user;
  struct fy_table *tb = fy_store_table_named(fy_txn_store(t), "test.items");
  for (uint32_t i = f->first; i < f->first + f->count; i++) {
    uint8_t key[8];
    fy_be64_put(key, i);
    uint8_t *p;
    int rc = fy_store_reserve(t, tb, fy_bytes_of(key, 8), f->size, &p);
    if (rc)
      return rc;
    value_bytes(i, p, f->size);
  }
  return 0;
}

struct verify {
  uint32_t count;
  size_t size;
  uint32_t seen;
};

static int verify_body(struct fy_txn *t, void *user) {
  struct verify *v = user;
  struct fy_table *tb = fy_store_table_named(fy_txn_store(t), "test.items");
  struct fy_cursor *c;
  int rc = fy_cursor_open(t, tb, (struct fy_bytes){0}, &c);
  if (rc)
    return rc;
  struct fy_bytes k, val;
  uint8_t *want = malloc(v->size);
  v->seen = 0;
  while ((rc = fy_cursor_next(c, &k, &val)) == 1) {
    assert_int_equal(k.n, 8);
    uint32_t i = (uint32_t)fy_be64_get(k.p);
    assert_int_equal(i, v->seen);
    assert_int_equal(val.n, v->size);
    value_bytes(i, want, v->size);
    assert_memory_equal(val.p, want, v->size);
    v->seen++;
  }
  free(want);
  return rc;
}

static void map_grows_from_a_tiny_map(void **state) {
  struct ctx *c = *state;
  struct fy_store *s = open_plain(c->dir, MiB, 0);
  struct fy_store_info info;
  fy_store_info(s, &info);
  assert_int_equal(info.map_size, MiB);
  struct fy_err err;
  /* 20 MiB in 10 transactions of 2 MiB (512 values of 4 KiB). */
  for (uint32_t i = 0; i < 10; i++) {
    struct fill f = {i * 512, 512, 4096};
    if (fy_store_write(s, fill_body, &f, &err) != 0)
      fail_msg("write %u: %s", i, err.msg);
  }
  fy_store_info(s, &info);
  assert_true(info.grows >= 5);
  assert_true(info.map_size >= 20 * MiB);
  assert_true(info.used >= 20 * MiB);
  fy_store_close(s);
  s = open_plain(c->dir, MiB, 0);
  fy_store_info(s, &info);
  assert_true(info.map_size >= 20 * MiB); /* reopens at the grown size, not the tiny one */
  struct verify v = {5120, 4096, 0};
  assert_int_equal(fy_store_read(s, verify_body, &v, &err), 0);
  assert_int_equal(v.seen, 5120);
  fy_store_close(s);
}

/* Fills until the store refuses; returns how many values were committed. */
static uint32_t fill_until_error(struct fy_store *s, size_t per_txn, size_t size, struct fy_err *err,
                                 int *code) {
  uint32_t next = 0;
  for (int i = 0; i < 1000; i++) {
    struct fill f = {next, (uint32_t)per_txn, size};
    int rc = fy_store_write(s, fill_body, &f, err);
    if (rc) {
      *code = rc;
      return next;
    }
    next += (uint32_t)per_txn;
  }
  fail_msg("the store never filled up");
  return 0;
}

static void map_full_at_the_maximum(void **state) {
  struct ctx *c = *state;
  struct fy_store *s = open_plain(c->dir, MiB, 4 * MiB);
  struct fy_err err;
  int code = 0;
  uint32_t committed = fill_until_error(s, 64, 4000, &err, &code);
  print_message("committed %u values of 4000 bytes in 4 MiB\n", committed);
  assert_int_equal(code, FY_ELIMIT);
  char want[512];
  snprintf(want, sizeof(want), "store %s is full at 4 MiB (max 4 MiB)", c->dir);
  assert_string_equal(err.msg, want);
  assert_true(committed >= 768); /* most of the 4 MiB holds data */
  fy_store_close(s);
  s = open_plain(c->dir, MiB, 4 * MiB);
  struct verify v = {committed, 4000, 0};
  assert_int_equal(fy_store_read(s, verify_body, &v, &err), 0);
  assert_int_equal(v.seen, committed);
  /* Deleting makes room again. */
  fy_store_close(s);
}

static void disk_full_keeps_what_was_committed(void **state) {
  struct ctx *c = *state;
  if (geteuid() != 0) {
    print_message("not root: skipping the full-disk test (it mounts a 4 MiB tmpfs)\n");
    skip();
  }
  char mnt[300];
  snprintf(mnt, sizeof(mnt), "%s/tmpfs", c->dir);
  assert_int_equal(mkdir(mnt, 0700), 0);
  if (mount("tmpfs", mnt, "tmpfs", 0, "size=4m,mode=0700") != 0) {
    print_message("mount tmpfs: %s: skipping the full-disk test\n", strerror(errno));
    skip();
  }
  struct fy_store *s = open_plain(mnt, MiB, 0);
  struct fy_err err;
  int code = 0;
  uint32_t committed = fill_until_error(s, 32, 4000, &err, &code);
  print_message("committed %u values of 4000 bytes on a 4 MiB tmpfs: %s\n", committed, err.msg);
  assert_int_equal(code, FY_EIO);
  assert_contains(err.msg, "commit: no space left on device (");
  assert_contains(err.msg, "free); nothing of this transaction was stored");
  assert_true(committed >= 512);
  fy_store_close(s);
  /* Reopening on the still-full disk works, and every committed value is intact. */
  s = open_plain(mnt, MiB, 0);
  struct verify v = {committed, 4000, 0};
  assert_int_equal(fy_store_read(s, verify_body, &v, &err), 0);
  assert_int_equal(v.seen, committed);
  fy_store_close(s);
  assert_int_equal(umount(mnt), 0);
}

/* Writers in several threads grow the map under each other, with readers. */
struct worker {
  struct fy_store *s;
  uint32_t id;
  int failures;
};

static void *writer_thread(void *arg) {
  struct worker *w = arg;
  struct fy_err err;
  for (uint32_t i = 0; i < 16; i++) {
    struct fill f = {w->id * 1000 + i * 16, 16, 8192};
    if (fy_store_write(w->s, fill_body, &f, &err) != 0)
      w->failures++;
  }
  return NULL;
}

static int count_body(struct fy_txn *t, void *user) {
  uint64_t *n = user;
  return fy_store_count(t, fy_store_table_named(fy_txn_store(t), "test.items"), n);
}

static void *reader_thread(void *arg) {
  struct worker *w = arg;
  struct fy_err err;
  for (int i = 0; i < 200; i++) {
    uint64_t n;
    if (fy_store_read(w->s, count_body, &n, &err) != 0)
      w->failures++;
  }
  return NULL;
}

static void growth_under_concurrent_writers(void **state) {
  struct ctx *c = *state;
  struct fy_store *s = open_plain(c->dir, MiB, 0);
  pthread_t th[6];
  struct worker w[6];
  for (uint32_t i = 0; i < 6; i++) {
    w[i] = (struct worker){s, i, 0};
    assert_int_equal(pthread_create(&th[i], NULL, i < 4 ? writer_thread : reader_thread, &w[i]), 0);
  }
  for (int i = 0; i < 6; i++) {
    pthread_join(th[i], NULL);
    assert_int_equal(w[i].failures, 0);
  }
  uint64_t n = 0;
  struct fy_err err;
  assert_int_equal(fy_store_read(s, count_body, &n, &err), 0);
  assert_int_equal(n, 4 * 16 * 16);
  struct fy_store_info info;
  fy_store_info(s, &info);
  assert_true(info.grows >= 3);
  fy_store_close(s);
}

/* ---- damaged files ---------------------------------------------------------- */

static void expect_refused(const struct ctx *c, const char *want) {
  char path[512];
  snprintf(path, sizeof(path), "%s/store/data.mdb", c->dir);
  uint8_t before[32], after[32];
  off_t n1, n2;
  hash_file(path, before, &n1);
  struct stat st1, st2;
  assert_int_equal(stat(path, &st1), 0);
  struct fy_store *s;
  struct fy_err err;
  const struct fy_store_schema *schemas[] = {&plain};
  int rc = fy_store_open(&s, c->dir, schemas, 1, NULL, &err);
  if (rc == 0)
    fail_msg("a damaged file (%s) was opened", want);
  assert_contains(err.msg, path);
  assert_contains(err.msg, want);
  assert_contains(err.msg, "refusing to open it; move it aside to start with an empty store");
  hash_file(path, after, &n2);
  assert_int_equal(n1, n2);
  assert_memory_equal(before, after, 32);
  assert_int_equal(stat(path, &st2), 0);
  assert_int_equal(st1.st_mtim.tv_sec, st2.st_mtim.tv_sec);
  assert_int_equal(st1.st_mtim.tv_nsec, st2.st_mtim.tv_nsec);
}

static void copy_file(const char *from, const char *to) {
  int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  assert_true(in >= 0 && out >= 0);
  uint8_t buf[65536];
  ssize_t n;
  while ((n = read(in, buf, sizeof(buf))) > 0)
    assert_int_equal(write(out, buf, (size_t)n), n);
  close(in);
  close(out);
}

static void truncated_and_garbage_files_are_refused(void **state) {
  struct ctx *c = *state;
  struct fy_store *s = open_plain(c->dir, MiB, 0);
  struct fy_err err;
  struct fill f = {0, 256, 4096};
  assert_int_equal(fy_store_write(s, fill_body, &f, &err), 0);
  fy_store_close(s);
  char path[512], good[512];
  snprintf(path, sizeof(path), "%s/store/data.mdb", c->dir);
  snprintf(good, sizeof(good), "%s/good.mdb", c->dir);
  copy_file(path, good);
  struct stat st;
  assert_int_equal(stat(good, &st), 0);

  /* What LMDB would do with each: initialise the empty one over (0 bytes),
   * MDB_INVALID (under two pages), SIGBUS on first read (cut after the meta pages). */
  const struct {
    off_t size;
    const char *want;
  } cuts[] = {
      {0, "truncated to 0 bytes"},
      {100, "truncated to 100 bytes"},
      {4096, "truncated to 4096 bytes (an LMDB file is at least two 4096-byte pages)"},
      {6000, "truncated to 6000 bytes (an LMDB file is at least two 4096-byte pages)"},
      {8192, "truncated to 8192 bytes, but its newest meta page"},
      {st.st_size / 2, "but its newest meta page"},
      {st.st_size - 4096, "but its newest meta page"},
  };
  for (size_t i = 0; i < FY_ARRAY_LEN(cuts); i++) {
    copy_file(good, path);
    assert_int_equal(truncate(path, cuts[i].size), 0);
    expect_refused(c, cuts[i].want);
  }

  /* Garbage: random bytes of a plausible size. */
  uint8_t *junk = malloc(1 << 20);
  randombytes_buf(junk, 1 << 20);
  int fd = open(path, O_WRONLY | O_TRUNC);
  assert_int_equal(write(fd, junk, 1 << 20), 1 << 20);
  close(fd);
  free(junk);
  expect_refused(c, "not an LMDB file");

  /* A meta page from a future LMDB format. */
  copy_file(good, path);
  fd = open(path, O_WRONLY);
  uint8_t two = 2;
  assert_int_equal(pwrite(fd, &two, 1, 16 + 4), 1);
  assert_int_equal(pwrite(fd, &two, 1, 4096 + 16 + 4), 1);
  close(fd);
  expect_refused(c, "LMDB data format 2, this ferry reads format 1");

  /* A valid LMDB file that is not a ferry store. */
  unlink(path);
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi dbi;
  char kc[] = "k", vc[] = "v";
  MDB_val k = {1, kc}, v = {1, vc};
  assert_int_equal(mdb_env_create(&env), 0);
  assert_int_equal(mdb_env_open(env, path, MDB_NOSUBDIR, 0600), 0);
  assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
  assert_int_equal(mdb_dbi_open(txn, NULL, 0, &dbi), 0);
  assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
  assert_int_equal(mdb_txn_commit(txn), 0);
  mdb_env_close(env);
  expect_refused(c, "an LMDB file, but not a ferry store");

  /* Moved aside, as the message says: ferry starts empty. */
  char aside[520];
  snprintf(aside, sizeof(aside), "%s.bad", path);
  assert_int_equal(rename(path, aside), 0);
  s = open_plain(c->dir, MiB, 0);
  struct verify vv = {0, 4096, 0};
  assert_int_equal(fy_store_read(s, verify_body, &vv, &err), 0);
  assert_int_equal(vv.seen, 0);
  fy_store_close(s);
  /* And the good copy still opens with everything in it. */
  copy_file(good, path);
  s = open_plain(c->dir, MiB, 0);
  vv = (struct verify){256, 4096, 0};
  assert_int_equal(fy_store_read(s, verify_body, &vv, &err), 0);
  assert_int_equal(vv.seen, 256);
  fy_store_close(s);
}

/* ---- the lock and crashes ------------------------------------------------------ */

static void second_process_gets_the_lock_error(void **state) {
  struct ctx *c = *state;
  struct fy_store *s = open_plain(c->dir, MiB, 0);
  int pipefd[2];
  assert_int_equal(pipe(pipefd), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(pipefd[0]);
    struct fy_store *s2;
    struct fy_err err;
    const struct fy_store_schema *schemas[] = {&plain};
    int rc = fy_store_open(&s2, c->dir, schemas, 1, NULL, &err);
    char out[FY_ERR_MSG_MAX + 16];
    int n = snprintf(out, sizeof(out), "%d %s", rc, err.msg);
    if (write(pipefd[1], out, (size_t)n) != n)
      _exit(2);
    _exit(0);
  }
  close(pipefd[1]);
  char got[FY_ERR_MSG_MAX + 16] = {0};
  ssize_t n = read(pipefd[0], got, sizeof(got) - 1);
  close(pipefd[0]);
  int status;
  waitpid(pid, &status, 0);
  assert_true(n > 0);
  char want[512];
  snprintf(want, sizeof(want), "%d data directory %s is in use by another ferry process (pid %ld)", FY_EEXIST,
           c->dir, (long)getpid());
  assert_string_equal(got, want);
  fy_store_close(s);
  /* Once the holder is gone, the directory opens. */
  s = open_plain(c->dir, MiB, 0);
  fy_store_close(s);
}

static int die_mid_txn(struct fy_txn *t, void *user) {
  struct fill *f = user;
  int rc = fill_body(t, f);
  if (rc == 0)
    raise(SIGKILL);
  return rc;
}

static void writer_killed_mid_transaction(void **state) {
  struct ctx *c = *state;
  struct fy_store *s = open_plain(c->dir, MiB, 0);
  struct fy_err err;
  struct fill f = {0, 100, 1000};
  assert_int_equal(fy_store_write(s, fill_body, &f, &err), 0);
  fy_store_close(s);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    struct fy_store *cs = open_plain(c->dir, MiB, 0);
    struct fill more = {100, 2000, 1000};
    fy_store_write(cs, die_mid_txn, &more, NULL);
    _exit(3);
  }
  int status;
  waitpid(pid, &status, 0);
  assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  /* The lock went with the process; the half-done transaction never happened. */
  s = open_plain(c->dir, MiB, 0);
  struct verify v = {100, 1000, 0};
  assert_int_equal(fy_store_read(s, verify_body, &v, &err), 0);
  assert_int_equal(v.seen, 100);
  struct fill next = {100, 10, 1000};
  assert_int_equal(fy_store_write(s, fill_body, &next, &err), 0);
  fy_store_close(s);
}

static void bad_arguments(void **state) {
  struct ctx *c = *state;
  struct fy_store *s;
  struct fy_err err;
  static const struct fy_store_table_def dup[] = {{"x", 0}, {"x", 0}};
  const struct fy_store_schema sc = {"test", dup, 2, NULL, 0};
  const struct fy_store_schema *schemas[] = {&sc};
  assert_int_equal(fy_store_open(&s, c->dir, schemas, 1, NULL, &err), FY_EINVAL);
  assert_contains(err.msg, "table x is declared twice");
  assert_int_equal(fy_store_open(&s, "", schemas, 1, NULL, &err), FY_EINVAL);
  char file[512];
  snprintf(file, sizeof(file), "%s/plainfile", c->dir);
  int fd = open(file, O_WRONLY | O_CREAT, 0600);
  close(fd);
  const struct fy_store_schema *ok[] = {&plain};
  assert_int_equal(fy_store_open(&s, file, ok, 1, NULL, &err), FY_EINVAL);
  assert_contains(err.msg, "is not a directory");
}

int main(void) {
  if (sodium_init() < 0)
    return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(put_get_del_iterate, setup, teardown),
      cmocka_unit_test_setup_teardown(dupsort_tables_and_be64_keys, setup, teardown),
      cmocka_unit_test_setup_teardown(migration_runs_once_and_persists, setup, teardown),
      cmocka_unit_test_setup_teardown(newer_schema_is_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(map_grows_from_a_tiny_map, setup, teardown),
      cmocka_unit_test_setup_teardown(map_full_at_the_maximum, setup, teardown),
      cmocka_unit_test_setup_teardown(disk_full_keeps_what_was_committed, setup, teardown),
      cmocka_unit_test_setup_teardown(growth_under_concurrent_writers, setup, teardown),
      cmocka_unit_test_setup_teardown(truncated_and_garbage_files_are_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(second_process_gets_the_lock_error, setup, teardown),
      cmocka_unit_test_setup_teardown(writer_killed_mid_transaction, setup, teardown),
      cmocka_unit_test_setup_teardown(bad_arguments, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
