/* The node's LMDB store (see store.h). */
#include "store/store.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "base/cleanup.h"

#define STORE_FORMAT "ferry-store 1"
#define META_TABLE "meta"
#define MIN_MAP (256u << 10) /* 256 KiB */
#define DEFAULT_READERS 126
#define DISK_FULL_BELOW (1u << 20) /* an EIO from a commit with less free space than this is a full disk */

/* LMDB's on-disk meta page (mdb.c, MDB_DATA_VERSION 1, 64-bit builds):
 * a 16-byte page header, then MDB_meta. Read here, never written. */
#define LMDB_MAGIC 0xBEEFC0DEu
#define LMDB_DATA_VERSION 1u
#define LMDB_P_META 0x08u
#define PAGE_HDR 16
#define META_MAGIC (PAGE_HDR + 0)
#define META_VERSION (PAGE_HDR + 4)
#define META_MAPSIZE (PAGE_HDR + 16)
#define META_PSIZE (PAGE_HDR + 24) /* mm_dbs[FREE_DBI].md_pad */
#define META_LAST_PG (PAGE_HDR + 120)
#define META_TXNID (PAGE_HDR + 128)
#define META_END (PAGE_HDR + 136)
_Static_assert(sizeof(size_t) == 8, "the meta page layout checked here is LMDB's on 64-bit hosts");

struct fy_table {
  MDB_dbi dbi;
  unsigned mdb_flags;
  const struct fy_store_table_def *def; /* NULL for meta */
  const char *name;
};

struct fy_store {
  char dir[PATH_MAX], store_dir[PATH_MAX], data_path[PATH_MAX], lock_path[PATH_MAX];
  char tmp_path[PATH_MAX], tmp_lock_path[PATH_MAX]; /* where a new store is made */
  int lock_fd;
  MDB_env *env;
  /* Every transaction holds the gate shared; growing the map takes it
   * exclusively, since LMDB may resize only while no transaction is open. */
  pthread_rwlock_t gate;
  uint64_t map_size, max_map; /* written only under the exclusive gate */
  uint32_t page_size;
  unsigned grows;
  const struct fy_log *log;
  void *migrate_user;
  const struct fy_store_schema *const *schemas;
  size_t nschemas;
  struct fy_table tables[FY_STORE_TABLES_MAX + 1]; /* [0] is meta */
  size_t ntables;
};

struct fy_txn {
  struct fy_store *s;
  MDB_txn *txn;
  struct fy_err *err;
  bool write;
  bool map_full;
  struct fy_cursor *cursors;
};

struct fy_cursor {
  struct fy_cursor *next;
  struct fy_txn *t;
  struct fy_table *tb;
  MDB_cursor *mc;
  bool started;
  size_t prefix_n;
  uint8_t prefix[FY_STORE_KEY_MAX];
};

/* ---- small helpers -------------------------------------------------------- */

static void fmt_size(char *buf, size_t cap, uint64_t n) {
  if (n >= (1ull << 30) && n % (1ull << 30) == 0)
    snprintf(buf, cap, "%" PRIu64 " GiB", n >> 30);
  else if (n >= (1ull << 20) && n % (1ull << 20) == 0)
    snprintf(buf, cap, "%" PRIu64 " MiB", n >> 20);
  else if (n >= (1ull << 10) && n % (1ull << 10) == 0)
    snprintf(buf, cap, "%" PRIu64 " KiB", n >> 10);
  else
    snprintf(buf, cap, "%" PRIu64 " bytes", n);
}

static uint64_t round_page(uint64_t n) {
  uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE);
  return (n + pg - 1) / pg * pg;
}

static uint64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int fsync_dir(const char *path, struct fy_err *err) {
  FY_AUTOCLOSE int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0 || fsync(fd) != 0)
    return fy_err_errno(err, errno, "store: sync directory %s", path);
  return 0;
}

/* Says what an LMDB (or errno) code means for the store at path. */
static int mdb_fail(struct fy_store *s, int rc, struct fy_err *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int mdb_fail(struct fy_store *s, int rc, struct fy_err *err, const char *fmt, ...) {
  char what[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof(what), fmt, ap);
  va_end(ap);
  const char *path = s->data_path;
  switch (rc) {
  case MDB_MAP_FULL: {
    char size[32], max[32];
    fmt_size(size, sizeof(size), s->map_size);
    fmt_size(max, sizeof(max), s->max_map);
    return fy_err_set(err, FY_ELIMIT, "store %s is full at %s (max %s)", s->dir, size, max);
  }
  case MDB_TXN_FULL:
    return fy_err_set(err, FY_ELIMIT, "store %s: %s: one transaction changes too many pages", path, what);
  case MDB_BAD_VALSIZE:
    return fy_err_set(err, FY_ELIMIT, "store %s: %s: key or value too large", path, what);
  case MDB_CORRUPTED:
  case MDB_PAGE_NOTFOUND:
    return fy_err_set(err, FY_EIO, "store %s: %s: the file is corrupt (%s)", path, what, mdb_strerror(rc));
  case MDB_PANIC:
    return fy_err_set(err, FY_EIO, "store %s: %s: an earlier write failed fatally; restart ferry", path,
                      what);
  case ENOSPC:
  case EIO: {
    /* LMDB turns a short write (what a full disk gives) into EIO. */
    struct statvfs fs;
    if (statvfs(s->store_dir, &fs) == 0) {
      uint64_t avail = (uint64_t)(geteuid() == 0 ? fs.f_bfree : fs.f_bavail) * fs.f_frsize;
      if (rc == ENOSPC || avail < DISK_FULL_BELOW) {
        char free_s[32];
        fmt_size(free_s, sizeof(free_s), avail);
        return fy_err_set(err, FY_EIO,
                          "store %s: %s: no space left on device (%s free); nothing of this transaction was "
                          "stored",
                          path, what, free_s);
      }
    }
    return fy_err_errno(err, rc, "store %s: %s", path, what);
  }
  default:
    if (rc > 0)
      return fy_err_errno(err, rc, "store %s: %s", path, what);
    return fy_err_set(err, FY_EIO, "store %s: %s: %s", path, what, mdb_strerror(rc));
  }
}

static int txn_fail(struct fy_txn *t, int rc, const struct fy_table *tb, const char *op) {
  if (rc == MDB_MAP_FULL)
    t->map_full = true;
  return mdb_fail(t->s, rc, t->err, "table %s: %s", tb->name, op);
}

static MDB_val to_val(struct fy_bytes b) {
  /* LMDB takes non-const pointers for keys and values it only reads. */
  union {
    const uint8_t *c;
    void *m;
  } u = {.c = b.p};
  return (MDB_val){b.n, u.m};
}
static MDB_val str_val(const char *s) {
  return to_val(fy_bytes_str(s));
}
static struct fy_bytes from_val(MDB_val v) {
  return (struct fy_bytes){v.mv_data, v.mv_size};
}

/* ---- the data directory lock --------------------------------------------- */

static int lock_dir(struct fy_store *s, struct fy_err *err) {
  const char *path = s->lock_path;
  FY_AUTOCLOSE int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0)
    return fy_err_errno(err, errno, "data directory %s: open %s", s->dir, path);
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK)
      return fy_err_errno(err, errno, "data directory %s: lock %s", s->dir, path);
    char pid[32] = {0};
    ssize_t n = pread(fd, pid, sizeof(pid) - 1, 0);
    pid[n > 0 ? (size_t)n : 0] = '\0';
    pid[strcspn(pid, "\n")] = '\0';
    return fy_err_set(err, FY_EEXIST, "data directory %s is in use by another ferry process (pid %s)", s->dir,
                      pid[0] ? pid : "unknown");
  }
  char pid[32];
  int len = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len)
    return fy_err_errno(err, errno, "data directory %s: write pid to %s", s->dir, path);
  s->lock_fd = FY_TAKE_FD(fd);
  return 0;
}

/* ---- checking data.mdb before LMDB maps it -------------------------------- */

struct header {
  uint64_t file_size, map_size, last_pg, txnid;
  uint32_t page_size;
};

static uint32_t le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t le64(const uint8_t *p) {
  return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static int refuse(struct fy_err *err, int code, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int refuse(struct fy_err *err, int code, const char *path, const char *fmt, ...) {
  char what[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof(what), fmt, ap);
  va_end(ap);
  return fy_err_set(err, code, "%s: %s; refusing to open it; move it aside to start with an empty store",
                    path, what);
}

/* Reads meta page i (at offset off) into m; 0 or the refusal. */
static int read_meta(int fd, const char *path, uint64_t size, int i, uint64_t off, uint8_t m[META_END],
                     struct fy_err *err) {
  if (size < off + META_END)
    return refuse(err, FY_EINVAL, path, "truncated to %" PRIu64 " bytes (an LMDB file is at least two pages)",
                  size);
  ssize_t n = pread(fd, m, META_END, (off_t)off);
  if (n < 0)
    return fy_err_errno(err, errno, "store %s: read", path);
  if (n != META_END)
    return refuse(err, FY_EINVAL, path, "truncated to %" PRIu64 " bytes", size);
  uint16_t flags = (uint16_t)(m[10] | m[11] << 8);
  if (le32(m + META_MAGIC) != LMDB_MAGIC || !(flags & LMDB_P_META))
    return refuse(err, FY_EINVAL, path, "not an LMDB file (no LMDB meta page %d)", i);
  if (le32(m + META_VERSION) != LMDB_DATA_VERSION)
    return refuse(err, FY_EUNSUPPORTED, path, "LMDB data format %" PRIu32 ", this ferry reads format %u",
                  le32(m + META_VERSION), LMDB_DATA_VERSION);
  return 0;
}

static int check_header(const char *path, struct header *h, struct fy_err *err) {
  FY_AUTOCLOSE int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0)
    return fy_err_errno(err, errno, "store %s: open", path);
  struct stat st;
  if (fstat(fd, &st) != 0)
    return fy_err_errno(err, errno, "store %s: stat", path);
  if (!S_ISREG(st.st_mode))
    return refuse(err, FY_EINVAL, path, "not a regular file");
  uint64_t size = (uint64_t)st.st_size;
  uint8_t m0[META_END] = {0}, m1[META_END] = {0};
  int rc = read_meta(fd, path, size, 0, 0, m0, err);
  if (rc)
    return rc;
  uint32_t psize = le32(m0 + META_PSIZE);
  if (psize < 512 || psize > 65536 || (psize & (psize - 1)) != 0)
    return refuse(err, FY_EINVAL, path, "corrupt (page size %" PRIu32 " in meta page 0)", psize);
  if (size < 2ull * psize)
    return refuse(err, FY_EINVAL, path,
                  "truncated to %" PRIu64 " bytes (an LMDB file is at least two %" PRIu32 "-byte pages)",
                  size, psize);
  if ((rc = read_meta(fd, path, size, 1, psize, m1, err)))
    return rc;
  if (le32(m1 + META_PSIZE) != psize)
    return refuse(err, FY_EINVAL, path, "corrupt (the meta pages disagree on the page size)");
  /* LMDB uses the meta page with the newer transaction id. */
  const uint8_t *m = le64(m1 + META_TXNID) > le64(m0 + META_TXNID) ? m1 : m0;
  h->file_size = size;
  h->page_size = psize;
  h->map_size = le64(m + META_MAPSIZE);
  h->last_pg = le64(m + META_LAST_PG);
  h->txnid = le64(m + META_TXNID);
  if (h->last_pg > UINT64_MAX / psize - 1)
    return refuse(err, FY_EINVAL, path, "corrupt (last page %" PRIu64 ")", h->last_pg);
  uint64_t need = (h->last_pg + 1) * psize;
  if (size < need)
    return refuse(err, FY_EINVAL, path,
                  "truncated to %" PRIu64 " bytes, but its newest meta page (transaction %" PRIu64
                  ") uses %" PRIu64 " bytes",
                  size, h->txnid, need);
  return 0;
}

/* Opens the file read-only (no lock file either: <dir>/lock keeps others
 * out) to see that LMDB accepts it, that it is a ferry store, and that no
 * schema in it is newer than ours. Writes nothing. */
static int check_readonly(struct fy_store *s, const struct header *h, struct fy_err *err) {
  MDB_env *env = NULL;
  int rc = mdb_env_create(&env);
  if (rc)
    return mdb_fail(s, rc, err, "create environment");
  MDB_txn *txn = NULL;
  int ret = 0;
  uint64_t map = h->map_size > h->file_size ? h->map_size : h->file_size;
  if ((rc = mdb_env_set_maxdbs(env, FY_STORE_TABLES_MAX + 1)) ||
      (rc = mdb_env_set_mapsize(env, (size_t)round_page(map)))) {
    ret = mdb_fail(s, rc, err, "configure environment");
    goto out;
  }
  rc = mdb_env_open(env, s->store_dir, MDB_RDONLY | MDB_NOLOCK | MDB_NOTLS | MDB_NORDAHEAD, 0600);
  if (rc == MDB_VERSION_MISMATCH) {
    ret = refuse(err, FY_EUNSUPPORTED, s->data_path, "LMDB: %s", mdb_strerror(rc));
    goto out;
  }
  if (rc) {
    ret = rc == MDB_INVALID || rc == MDB_CORRUPTED || rc == MDB_PAGE_NOTFOUND || rc == EINVAL
              ? refuse(err, FY_EINVAL, s->data_path, "corrupt (LMDB: %s)", mdb_strerror(rc))
              : mdb_fail(s, rc, err, "open read-only");
    goto out;
  }
  if ((rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn))) {
    ret = mdb_fail(s, rc, err, "begin read-only transaction");
    goto out;
  }
  MDB_dbi meta;
  rc = mdb_dbi_open(txn, META_TABLE, 0, &meta);
  if (rc) {
    ret = rc == MDB_NOTFOUND || rc == MDB_INCOMPATIBLE
              ? refuse(err, FY_EINVAL, s->data_path, "an LMDB file, but not a ferry store (no meta table)")
              : refuse(err, FY_EINVAL, s->data_path, "corrupt (LMDB: %s)", mdb_strerror(rc));
    goto out;
  }
  MDB_val k = str_val("format"), v;
  rc = mdb_get(txn, meta, &k, &v);
  if (rc) {
    ret = rc == MDB_NOTFOUND
              ? refuse(err, FY_EINVAL, s->data_path, "an LMDB file, but not a ferry store (no format record)")
              : refuse(err, FY_EINVAL, s->data_path, "corrupt (LMDB: %s)", mdb_strerror(rc));
    goto out;
  }
  if (v.mv_size != strlen(STORE_FORMAT) || memcmp(v.mv_data, STORE_FORMAT, v.mv_size) != 0) {
    ret = refuse(err, FY_EUNSUPPORTED, s->data_path, "store format \"%.*s\", this ferry reads \"%s\"",
                 (int)(v.mv_size > 64 ? 64 : v.mv_size), (const char *)v.mv_data, STORE_FORMAT);
    goto out;
  }
  for (size_t i = 0; i < s->nschemas; i++) {
    const struct fy_store_schema *sc = s->schemas[i];
    char key[96];
    snprintf(key, sizeof(key), "schema.%s", sc->name);
    k = str_val(key);
    rc = mdb_get(txn, meta, &k, &v);
    if (rc == MDB_NOTFOUND)
      continue;
    if (rc || v.mv_size != 4) {
      ret = refuse(err, FY_EINVAL, s->data_path, "corrupt (schema version of %s)", sc->name);
      goto out;
    }
    uint32_t have = fy_be32_get(v.mv_data);
    if (have > sc->nmigrations) {
      ret = fy_err_set(err, FY_EUNSUPPORTED,
                       "store %s was written by version %" PRIu32 " of the %s schema, and this ferry knows "
                       "only up to version %zu; refusing to open it (run a newer ferry)",
                       s->data_path, have, sc->name, sc->nmigrations);
      goto out;
    }
  }
  /* Opening each existing table reads its root: a first check of the trees. */
  for (size_t i = 1; i < s->ntables; i++) {
    MDB_dbi dbi;
    rc = mdb_dbi_open(txn, s->tables[i].name, s->tables[i].mdb_flags, &dbi);
    if (rc == MDB_INCOMPATIBLE) {
      ret = refuse(err, FY_EINVAL, s->data_path, "table %s exists with other flags", s->tables[i].name);
      goto out;
    }
    if (rc && rc != MDB_NOTFOUND) {
      ret =
          refuse(err, FY_EINVAL, s->data_path, "corrupt (table %s: %s)", s->tables[i].name, mdb_strerror(rc));
      goto out;
    }
  }
out:
  if (txn)
    mdb_txn_abort(txn);
  mdb_env_close(env);
  return ret;
}

/* ---- a new store ---------------------------------------------------------- */

/* Builds data.mdb.new (a valid, empty ferry store), then renames it into
 * place, so a crash never leaves a half-made data.mdb behind. */
static int create_store(struct fy_store *s, uint64_t map, struct fy_err *err) {
  const char *tmp = s->tmp_path, *tmp_lock = s->tmp_lock_path;
  unlink(tmp);
  unlink(tmp_lock);
  MDB_env *env = NULL;
  int rc = mdb_env_create(&env);
  if (rc)
    return mdb_fail(s, rc, err, "create environment");
  MDB_txn *txn = NULL;
  MDB_dbi meta;
  uint8_t now[8];
  fy_be64_put(now, wall_ms());
  MDB_val fk = str_val("format"), fv = str_val(STORE_FORMAT);
  MDB_val ck = str_val("created_ms"), cv = to_val(fy_bytes_of(now, 8));
  if ((rc = mdb_env_set_maxdbs(env, 2)) || (rc = mdb_env_set_mapsize(env, (size_t)map)) ||
      (rc = mdb_env_open(env, tmp, MDB_NOSUBDIR | MDB_NOTLS, 0600)) ||
      (rc = mdb_txn_begin(env, NULL, 0, &txn)) || (rc = mdb_dbi_open(txn, META_TABLE, MDB_CREATE, &meta)) ||
      (rc = mdb_put(txn, meta, &fk, &fv, 0)) || (rc = mdb_put(txn, meta, &ck, &cv, 0))) {
    if (txn)
      mdb_txn_abort(txn);
    mdb_env_close(env);
    unlink(tmp);
    unlink(tmp_lock);
    return mdb_fail(s, rc, err, "create %s", tmp);
  }
  rc = mdb_txn_commit(txn);
  mdb_env_close(env);
  unlink(tmp_lock);
  if (rc) {
    unlink(tmp);
    return mdb_fail(s, rc, err, "create %s", tmp);
  }
  if (rename(tmp, s->data_path) != 0) {
    int e = errno;
    unlink(tmp);
    return fy_err_errno(err, e, "store: rename %s to %s", tmp, s->data_path);
  }
  if ((rc = fsync_dir(s->store_dir, err)) || (rc = fsync_dir(s->dir, err)))
    return rc;
  fy_info(s->log, "store.create", "path", s->data_path);
  return 0;
}

/* ---- transactions ---------------------------------------------------------- */

static void close_cursors(struct fy_txn *t) {
  while (t->cursors) {
    struct fy_cursor *c = t->cursors;
    t->cursors = c->next;
    mdb_cursor_close(c->mc);
    free(c);
  }
}

/* Doubles the map (up to max_map) unless another thread already grew it past
 * `seen`, the size the failed transaction ran with. */
static int grow(struct fy_store *s, uint64_t seen, struct fy_err *err) {
  pthread_rwlock_wrlock(&s->gate);
  int rc = 0;
  if (s->map_size == seen) {
    if (seen >= s->max_map) {
      rc = mdb_fail(s, MDB_MAP_FULL, err, "grow");
    } else {
      uint64_t next = seen > s->max_map / 2 ? s->max_map : round_page(seen * 2);
      int mrc = mdb_env_set_mapsize(s->env, (size_t)next);
      if (mrc) {
        rc = mdb_fail(s, mrc, err, "grow the map to %" PRIu64 " bytes", next);
      } else {
        char from[32], to[32];
        fmt_size(from, sizeof(from), seen);
        fmt_size(to, sizeof(to), next);
        fy_info(s->log, "store.grow", "dir", s->dir, "from", from, "to", to);
        s->map_size = next;
        s->grows++;
      }
    }
  }
  pthread_rwlock_unlock(&s->gate);
  return rc;
}

int fy_store_write(struct fy_store *s, fy_txn_fn fn, void *user, struct fy_err *err) {
  struct fy_err local;
  if (!err)
    err = &local;
  for (;;) {
    fy_err_clear(err);
    pthread_rwlock_rdlock(&s->gate);
    uint64_t seen = s->map_size;
    struct fy_txn t = {.s = s, .err = err, .write = true};
    int rc = mdb_txn_begin(s->env, NULL, 0, &t.txn);
    if (rc) {
      pthread_rwlock_unlock(&s->gate);
      return mdb_fail(s, rc, err, "begin write transaction");
    }
    int ret = fn(&t, user);
    close_cursors(&t);
    if (t.map_full) {
      mdb_txn_abort(t.txn);
      pthread_rwlock_unlock(&s->gate);
      if ((rc = grow(s, seen, err)))
        return rc;
      continue;
    }
    if (ret < 0) {
      mdb_txn_abort(t.txn);
      pthread_rwlock_unlock(&s->gate);
      if (!err->msg[0])
        fy_err_set(err, ret, "store %s: transaction failed: %s", s->dir, fy_strerror(ret));
      return ret;
    }
    rc = mdb_txn_commit(t.txn);
    pthread_rwlock_unlock(&s->gate);
    if (rc == MDB_MAP_FULL) {
      if ((rc = grow(s, seen, err)))
        return rc;
      continue;
    }
    if (rc)
      return mdb_fail(s, rc, err, "commit");
    return ret;
  }
}

int fy_store_read(struct fy_store *s, fy_txn_fn fn, void *user, struct fy_err *err) {
  struct fy_err local;
  if (!err)
    err = &local;
  fy_err_clear(err);
  pthread_rwlock_rdlock(&s->gate);
  struct fy_txn t = {.s = s, .err = err};
  int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &t.txn);
  if (rc) {
    pthread_rwlock_unlock(&s->gate);
    return mdb_fail(s, rc, err, "begin read transaction");
  }
  int ret = fn(&t, user);
  close_cursors(&t);
  mdb_txn_abort(t.txn);
  pthread_rwlock_unlock(&s->gate);
  if (ret < 0 && !err->msg[0])
    fy_err_set(err, ret, "store %s: read failed: %s", s->dir, fy_strerror(ret));
  return ret;
}

struct fy_err *fy_txn_err(struct fy_txn *t) {
  return t->err;
}
struct fy_store *fy_txn_store(struct fy_txn *t) {
  return t->s;
}
bool fy_txn_is_write(const struct fy_txn *t) {
  return t->write;
}

struct fy_table *fy_store_table(struct fy_store *s, const struct fy_store_table_def *def) {
  for (size_t i = 1; i < s->ntables; i++)
    if (s->tables[i].def == def)
      return &s->tables[i];
  return NULL;
}

struct fy_table *fy_store_table_named(struct fy_store *s, const char *name) {
  for (size_t i = 0; i < s->ntables; i++)
    if (strcmp(s->tables[i].name, name) == 0)
      return &s->tables[i];
  return NULL;
}

struct fy_table *fy_txn_table(struct fy_txn *t, const struct fy_store_table_def *def) {
  return fy_store_table(t->s, def);
}

static int check_key(struct fy_txn *t, const struct fy_table *tb, struct fy_bytes key) {
  if (key.n == 0 || key.n > FY_STORE_KEY_MAX)
    return fy_err_set(t->err, FY_ELIMIT, "store %s: table %s: a key is 1 to %d bytes, not %zu", t->s->dir,
                      tb->name, FY_STORE_KEY_MAX, key.n);
  return 0;
}

static int check_write(struct fy_txn *t, const struct fy_table *tb) {
  if (!t->write)
    return fy_err_set(t->err, FY_EINVAL, "store %s: table %s: write in a read-only transaction", t->s->dir,
                      tb->name);
  return 0;
}

int fy_store_get(struct fy_txn *t, struct fy_table *tb, struct fy_bytes key, struct fy_bytes *val) {
  int rc = check_key(t, tb, key);
  if (rc)
    return rc;
  MDB_val k = to_val(key), v;
  rc = mdb_get(t->txn, tb->dbi, &k, &v);
  if (rc == MDB_NOTFOUND)
    return 0;
  if (rc)
    return txn_fail(t, rc, tb, "get");
  if (val)
    *val = from_val(v);
  return 1;
}

int fy_store_put(struct fy_txn *t, struct fy_table *tb, struct fy_bytes key, struct fy_bytes val) {
  int rc = check_key(t, tb, key);
  if (rc || (rc = check_write(t, tb)))
    return rc;
  MDB_val k = to_val(key), v = to_val(val);
  rc = mdb_put(t->txn, tb->dbi, &k, &v, 0);
  return rc ? txn_fail(t, rc, tb, "put") : 0;
}

int fy_store_reserve(struct fy_txn *t, struct fy_table *tb, struct fy_bytes key, size_t n, uint8_t **out) {
  int rc = check_key(t, tb, key);
  if (rc || (rc = check_write(t, tb)))
    return rc;
  if (tb->mdb_flags & MDB_DUPSORT)
    return fy_err_set(t->err, FY_EINVAL, "store %s: table %s: reserve in a DUPSORT table", t->s->dir,
                      tb->name);
  MDB_val k = to_val(key), v = {n, NULL};
  rc = mdb_put(t->txn, tb->dbi, &k, &v, MDB_RESERVE);
  if (rc)
    return txn_fail(t, rc, tb, "put");
  *out = v.mv_data;
  return 0;
}

int fy_store_del(struct fy_txn *t, struct fy_table *tb, struct fy_bytes key) {
  int rc = check_key(t, tb, key);
  if (rc || (rc = check_write(t, tb)))
    return rc;
  MDB_val k = to_val(key);
  rc = mdb_del(t->txn, tb->dbi, &k, NULL);
  if (rc == MDB_NOTFOUND)
    return 0;
  return rc ? txn_fail(t, rc, tb, "del") : 1;
}

int fy_store_clear(struct fy_txn *t, struct fy_table *tb) {
  int rc = check_write(t, tb);
  if (rc)
    return rc;
  rc = mdb_drop(t->txn, tb->dbi, 0);
  return rc ? txn_fail(t, rc, tb, "clear") : 0;
}

int fy_store_count(struct fy_txn *t, struct fy_table *tb, uint64_t *out) {
  MDB_stat st;
  int rc = mdb_stat(t->txn, tb->dbi, &st);
  if (rc)
    return txn_fail(t, rc, tb, "stat");
  *out = st.ms_entries;
  return 0;
}

/* ---- cursors ---------------------------------------------------------------- */

int fy_cursor_open(struct fy_txn *t, struct fy_table *tb, struct fy_bytes prefix, struct fy_cursor **out) {
  if (prefix.n > FY_STORE_KEY_MAX)
    return fy_err_set(t->err, FY_ELIMIT, "store %s: table %s: prefix of %zu bytes", t->s->dir, tb->name,
                      prefix.n);
  struct fy_cursor *c = calloc(1, sizeof(*c));
  if (!c)
    return fy_err_set(t->err, FY_ENOMEM, "store: out of memory");
  int rc = mdb_cursor_open(t->txn, tb->dbi, &c->mc);
  if (rc) {
    free(c);
    return txn_fail(t, rc, tb, "open cursor");
  }
  c->t = t;
  c->tb = tb;
  if (prefix.n)
    memcpy(c->prefix, prefix.p, prefix.n);
  c->prefix_n = prefix.n;
  c->next = t->cursors;
  t->cursors = c;
  *out = c;
  return 0;
}

void fy_cursor_close(struct fy_cursor *c) {
  if (!c)
    return;
  for (struct fy_cursor **pp = &c->t->cursors; *pp; pp = &(*pp)->next)
    if (*pp == c) {
      *pp = c->next;
      break;
    }
  mdb_cursor_close(c->mc);
  free(c);
}

/* Turns the result of an mdb_cursor_get into 1 / 0 / error, 0 also when the
 * entry lies outside the prefix. */
static int cursor_result(struct fy_cursor *c, int rc, MDB_val k, MDB_val v, struct fy_bytes *ko,
                         struct fy_bytes *vo, const char *op) {
  c->started = true;
  if (rc == MDB_NOTFOUND)
    return 0;
  if (rc)
    return txn_fail(c->t, rc, c->tb, op);
  if (k.mv_size < c->prefix_n || memcmp(k.mv_data, c->prefix, c->prefix_n) != 0)
    return 0;
  if (ko)
    *ko = from_val(k);
  if (vo)
    *vo = from_val(v);
  return 1;
}

int fy_cursor_next(struct fy_cursor *c, struct fy_bytes *k, struct fy_bytes *v) {
  MDB_val mk = {c->prefix_n, c->prefix}, mv;
  int rc;
  if (c->started)
    rc = mdb_cursor_get(c->mc, &mk, &mv, MDB_NEXT);
  else if (c->prefix_n)
    rc = mdb_cursor_get(c->mc, &mk, &mv, MDB_SET_RANGE);
  else
    rc = mdb_cursor_get(c->mc, &mk, &mv, MDB_FIRST);
  return cursor_result(c, rc, mk, mv, k, v, "cursor next");
}

int fy_cursor_prev(struct fy_cursor *c, struct fy_bytes *k, struct fy_bytes *v) {
  MDB_val mk, mv;
  int rc;
  if (c->started) {
    rc = mdb_cursor_get(c->mc, &mk, &mv, MDB_PREV);
    return cursor_result(c, rc, mk, mv, k, v, "cursor prev");
  }
  /* The last key with the prefix sits just before the prefix's successor
   * (the prefix + 1 as a big-endian number, trailing 0xff bytes dropped). */
  uint8_t succ[FY_STORE_KEY_MAX];
  size_t n = c->prefix_n;
  memcpy(succ, c->prefix, n);
  while (n > 0 && succ[n - 1] == 0xff)
    n--;
  if (n == 0) {
    rc = mdb_cursor_get(c->mc, &mk, &mv, MDB_LAST);
    return cursor_result(c, rc, mk, mv, k, v, "cursor last");
  }
  succ[n - 1]++;
  mk = (MDB_val){n, succ};
  rc = mdb_cursor_get(c->mc, &mk, &mv, MDB_SET_RANGE);
  if (rc == MDB_NOTFOUND)
    rc = mdb_cursor_get(c->mc, &mk, &mv, MDB_LAST);
  else if (rc == 0)
    rc = mdb_cursor_get(c->mc, &mk, &mv, MDB_PREV);
  return cursor_result(c, rc, mk, mv, k, v, "cursor last");
}

int fy_cursor_seek(struct fy_cursor *c, struct fy_bytes key, struct fy_bytes *k, struct fy_bytes *v) {
  if (key.n > FY_STORE_KEY_MAX)
    return check_key(c->t, c->tb, key);
  /* Below the prefix: start at the prefix. */
  size_t cmp_n = key.n < c->prefix_n ? key.n : c->prefix_n;
  int cmp = cmp_n ? memcmp(key.p, c->prefix, cmp_n) : 0;
  if (cmp < 0 || (cmp == 0 && key.n < c->prefix_n)) {
    c->started = false;
    return fy_cursor_next(c, k, v);
  }
  MDB_val mk = to_val(key), mv;
  int rc = mdb_cursor_get(c->mc, &mk, &mv, MDB_SET_RANGE);
  return cursor_result(c, rc, mk, mv, k, v, "cursor seek");
}

int fy_cursor_del(struct fy_cursor *c) {
  int rc = check_write(c->t, c->tb);
  if (rc)
    return rc;
  rc = mdb_cursor_del(c->mc, 0);
  return rc ? txn_fail(c->t, rc, c->tb, "cursor del") : 0;
}

/* ---- open and close ----------------------------------------------------------- */

static int put_u32(struct fy_txn *t, struct fy_table *tb, const char *key, uint32_t v) {
  uint8_t b[4];
  fy_be32_put(b, v);
  return fy_store_put(t, tb, fy_bytes_str(key), fy_bytes_of(b, 4));
}

/* Opens (creating) every table, then migrates each schema, in one write
 * transaction (and again from the start if the map has to grow). */
static int init_txn(struct fy_txn *t, void *user) {
  (void)user;
  struct fy_store *s = t->s;
  for (size_t i = 0; i < s->ntables; i++) {
    int rc = mdb_dbi_open(t->txn, s->tables[i].name, s->tables[i].mdb_flags | MDB_CREATE, &s->tables[i].dbi);
    if (rc)
      return txn_fail(t, rc, &s->tables[i], "open");
  }
  struct fy_table *meta = &s->tables[0];
  for (size_t i = 0; i < s->nschemas; i++) {
    const struct fy_store_schema *sc = s->schemas[i];
    char key[96];
    snprintf(key, sizeof(key), "schema.%s", sc->name);
    struct fy_bytes v = {0};
    int rc = fy_store_get(t, meta, fy_bytes_str(key), &v);
    if (rc < 0)
      return rc;
    uint32_t have = rc == 1 && v.n == 4 ? fy_be32_get(v.p) : 0;
    if (have >= sc->nmigrations) /* newer ones were refused by check_readonly */
      continue;
    for (uint32_t from = have; from < sc->nmigrations; from++) {
      if (sc->migrations[from](t, s->migrate_user) < 0)
        return fy_err_prefix(t->err, "store %s: schema %s: migration to version %" PRIu32, s->dir, sc->name,
                             from + 1);
    }
    if ((rc = put_u32(t, meta, key, (uint32_t)sc->nmigrations)))
      return rc;
    char from_s[16], to_s[16];
    snprintf(from_s, sizeof(from_s), "%" PRIu32, have);
    snprintf(to_s, sizeof(to_s), "%zu", sc->nmigrations);
    fy_info(s->log, "store.migrate", "dir", s->dir, "schema", sc->name, "from", from_s, "to", to_s);
  }
  return 0;
}

static int declare_tables(struct fy_store *s, struct fy_err *err) {
  s->tables[0] = (struct fy_table){.name = META_TABLE};
  s->ntables = 1;
  for (size_t i = 0; i < s->nschemas; i++) {
    const struct fy_store_schema *sc = s->schemas[i];
    if (!sc || !sc->name || !sc->name[0] || strlen(sc->name) > 64 || (sc->nmigrations && !sc->migrations))
      return fy_err_set(err, FY_EINVAL, "store: schema %zu is malformed", i);
    for (size_t j = 0; j < sc->ntables; j++) {
      const struct fy_store_table_def *d = &sc->tables[j];
      if (!d->name || !d->name[0] || strlen(d->name) > FY_STORE_TABLE_NAME_MAX ||
          (d->flags & ~FY_TABLE_DUPSORT))
        return fy_err_set(err, FY_EINVAL, "store: schema %s: table %zu is malformed", sc->name, j);
      if (fy_store_table_named(s, d->name))
        return fy_err_set(err, FY_EINVAL, "store: table %s is declared twice", d->name);
      if (s->ntables == FY_ARRAY_LEN(s->tables))
        return fy_err_set(err, FY_ELIMIT, "store: more than %d tables", FY_STORE_TABLES_MAX);
      s->tables[s->ntables++] = (struct fy_table){
          .def = d, .name = d->name, .mdb_flags = (d->flags & FY_TABLE_DUPSORT) ? MDB_DUPSORT : 0};
    }
  }
  return 0;
}

static int ensure_dir(const char *path, struct fy_err *err) {
  if (mkdir(path, 0700) == 0)
    return 0;
  if (errno != EEXIST)
    return fy_err_errno(err, errno, "store: create directory %s", path);
  struct stat st;
  if (stat(path, &st) != 0)
    return fy_err_errno(err, errno, "store: %s", path);
  if (!S_ISDIR(st.st_mode))
    return fy_err_set(err, FY_EINVAL, "store: %s is not a directory", path);
  return 0;
}

static int open_env(struct fy_store *s, const struct fy_store_opts *o, struct fy_err *err) {
  uint64_t initial = o->initial_map ? o->initial_map : FY_STORE_INITIAL_MAP_DEFAULT;
  s->max_map = round_page(o->max_map ? o->max_map : FY_STORE_MAX_MAP_DEFAULT);
  if (initial < MIN_MAP)
    initial = MIN_MAP;
  if (s->max_map < MIN_MAP)
    s->max_map = MIN_MAP;
  initial = round_page(initial > s->max_map ? s->max_map : initial);

  int rc;
  if ((rc = ensure_dir(s->dir, err)) || (rc = lock_dir(s, err)) || (rc = ensure_dir(s->store_dir, err)))
    return rc;
  /* Left over from a crash while creating a store. */
  unlink(s->tmp_path);
  unlink(s->tmp_lock_path);

  struct stat st;
  if (lstat(s->data_path, &st) != 0) {
    if (errno != ENOENT)
      return fy_err_errno(err, errno, "store: %s", s->data_path);
    if ((rc = create_store(s, initial, err)))
      return rc;
  }
  struct header h = {0};
  if ((rc = check_header(s->data_path, &h, err)) || (rc = check_readonly(s, &h, err)))
    return rc;

  uint64_t map = initial;
  if (h.map_size > map)
    map = h.map_size;
  if (h.file_size > map)
    map = h.file_size;
  map = round_page(map);
  if (map > s->max_map)
    s->max_map = map; /* a file already larger than the limit still opens; it just does not grow */
  if ((rc = mdb_env_create(&s->env)))
    return mdb_fail(s, rc, err, "create environment");
  if ((rc = mdb_env_set_maxdbs(s->env, FY_STORE_TABLES_MAX + 1)) ||
      (rc = mdb_env_set_maxreaders(s->env, o->max_readers ? o->max_readers : DEFAULT_READERS)) ||
      (rc = mdb_env_set_mapsize(s->env, (size_t)map)))
    return mdb_fail(s, rc, err, "configure environment");
  if ((rc = mdb_env_open(s->env, s->store_dir, MDB_NOTLS | MDB_NOMEMINIT | MDB_NORDAHEAD, 0600)))
    return mdb_fail(s, rc, err, "open");
  int dead = 0;
  if ((rc = mdb_reader_check(s->env, &dead)))
    return mdb_fail(s, rc, err, "check readers");
  if (dead > 0) {
    char n[16];
    snprintf(n, sizeof(n), "%d", dead);
    fy_info(s->log, "store.stale_readers", "dir", s->dir, "cleared", n);
  }
  MDB_envinfo info;
  MDB_stat est;
  mdb_env_info(s->env, &info);
  mdb_env_stat(s->env, &est);
  s->map_size = info.me_mapsize;
  s->page_size = est.ms_psize;
  return fy_store_write(s, init_txn, NULL, err);
}

int fy_store_open(struct fy_store **out, const char *dir, const struct fy_store_schema *const *schemas,
                  size_t nschemas, const struct fy_store_opts *opts, struct fy_err *err) {
  *out = NULL;
  if (!dir || !dir[0] || (nschemas && !schemas))
    return fy_err_set(err, FY_EINVAL, "store: no data directory given");
  if (strlen(dir) > PATH_MAX - 64)
    return fy_err_set(err, FY_ELIMIT, "store: the data directory's path is too long");
  const struct fy_store_opts none = {0};
  const struct fy_store_opts *o = opts ? opts : &none;
  struct fy_store *s = calloc(1, sizeof(*s));
  if (!s)
    return fy_err_set(err, FY_ENOMEM, "store: out of memory");
  s->lock_fd = -1;
  s->log = o->log;
  s->migrate_user = o->migrate_user;
  s->schemas = schemas;
  s->nschemas = nschemas;
  pthread_rwlockattr_t attr;
  pthread_rwlockattr_init(&attr);
  pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init(&s->gate, &attr);
  pthread_rwlockattr_destroy(&attr);
  snprintf(s->dir, sizeof(s->dir), "%s", dir);
  snprintf(s->lock_path, sizeof(s->lock_path), "%s/lock", dir);
  snprintf(s->store_dir, sizeof(s->store_dir), "%s/store", dir);
  snprintf(s->data_path, sizeof(s->data_path), "%s/store/data.mdb", dir);
  snprintf(s->tmp_path, sizeof(s->tmp_path), "%s/store/data.mdb.new", dir);
  snprintf(s->tmp_lock_path, sizeof(s->tmp_lock_path), "%s/store/data.mdb.new-lock", dir);
  int rc = declare_tables(s, err);
  if (!rc)
    rc = open_env(s, o, err);
  if (rc) {
    fy_store_close(s);
    return rc;
  }
  char map[32];
  fmt_size(map, sizeof(map), s->map_size);
  fy_debug(s->log, "store.open", "dir", s->dir, "map", map);
  *out = s;
  return 0;
}

void fy_store_close(struct fy_store *s) {
  if (!s)
    return;
  if (s->env)
    mdb_env_close(s->env);
  if (s->lock_fd >= 0)
    close(s->lock_fd);
  pthread_rwlock_destroy(&s->gate);
  free(s);
}

void fy_store_info(struct fy_store *s, struct fy_store_info *out) {
  pthread_rwlock_rdlock(&s->gate);
  MDB_envinfo info;
  mdb_env_info(s->env, &info);
  *out = (struct fy_store_info){
      .dir = s->dir,
      .map_size = s->map_size,
      .max_map = s->max_map,
      .used = ((uint64_t)info.me_last_pgno + 1) * s->page_size,
      .page_size = s->page_size,
      .grows = s->grows,
  };
  pthread_rwlock_unlock(&s->gate);
}
