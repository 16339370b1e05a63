/* The node's store: one LMDB environment per data directory.
 *
 *   <dir>/lock            flock()ed by the one ferry process using <dir>; holds its pid
 *   <dir>/store/data.mdb  the LMDB data file (tables = LMDB named databases)
 *   <dir>/store/lock.mdb  LMDB's reader table
 *
 * Components (the outbox, the inbox, an applet) each declare a schema: a name,
 * a static list of tables and an array of forward migrations. The schema's
 * version is its number of migrations; the `meta` table records, per
 * component, the version the file was last written with. At open every
 * table is created if missing and the migrations from the recorded version
 * up to the current one run in order, all inside ONE write transaction: a
 * crash leaves the file at the old version, never half-migrated. A file
 * written by a newer version of a component is refused before anything is
 * written. A new store runs every migration from version 0.
 *
 * Transactions are callbacks. fy_store_write runs fn inside a write
 * transaction and commits (with fsync: LMDB's default durability) when fn
 * returns >= 0; a negative return aborts. When the map fills up, the store
 * aborts, doubles the map and runs fn AGAIN from the start, up to max_map; so
 * fn must have no effects outside the transaction (or be idempotent). At
 * max_map the write fails with FY_ELIMIT ("store <dir> is full at ...") and
 * everything committed before is intact. A full disk fails with FY_EIO
 * ("no space left on device") the same way.
 *
 * Values returned by get and the cursors point into the map: they stay valid
 * until the transaction ends (or, in a write transaction, until the next
 * write to the same table). Copy what must outlive the callback.
 *
 * Threads: any thread may run transactions (the environment is MDB_NOTLS).
 * Write transactions are serialised by LMDB. A thread must not start a
 * transaction inside another one (no nesting): growing the map waits for
 * every transaction in the process to end.
 *
 * Corrupt files: before LMDB maps data.mdb, its two meta pages are checked
 * (magic, version, page size) and its length against the last page the
 * newest meta page names. LMDB would initialise an empty file over a 0-byte
 * one and dies of SIGBUS on one cut short; ferry refuses both, without
 * writing to the file, and says how to start empty. */
#ifndef FY_STORE_STORE_H
#define FY_STORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "base/err.h"
#include "base/log.h"

#define FY_STORE_KEY_MAX 511 /* LMDB's limit on key length */
#define FY_STORE_TABLE_NAME_MAX 63
#define FY_STORE_TABLES_MAX 64                     /* over all schemas of one store */
#define FY_STORE_INITIAL_MAP_DEFAULT (64ull << 20) /* 64 MiB */
#define FY_STORE_MAX_MAP_DEFAULT (64ull << 30)     /* 64 GiB */

/* A borrowed run of bytes. */
struct fy_bytes {
  const uint8_t *p;
  size_t n;
};

static inline struct fy_bytes fy_bytes_of(const void *p, size_t n) {
  return (struct fy_bytes){(const uint8_t *)p, n};
}
static inline struct fy_bytes fy_bytes_str(const char *s) {
  return (struct fy_bytes){(const uint8_t *)s, strlen(s)};
}

/* Big-endian integers: keys that sort in numeric order. */
static inline void fy_be64_put(uint8_t *out, uint64_t v) {
  for (int i = 7; i >= 0; i--) {
    out[i] = (uint8_t)v;
    v >>= 8;
  }
}
static inline uint64_t fy_be64_get(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++)
    v = v << 8 | p[i];
  return v;
}
static inline void fy_be32_put(uint8_t *out, uint32_t v) {
  for (int i = 3; i >= 0; i--) {
    out[i] = (uint8_t)v;
    v >>= 8;
  }
}
static inline uint32_t fy_be32_get(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Table flags. */
#define FY_TABLE_DUPSORT 0x1u /* several values per key, kept sorted (LMDB MDB_DUPSORT) */

struct fy_store_table_def {
  const char *name; /* the LMDB database name; unique over the store; "meta" is the store's */
  unsigned flags;   /* FY_TABLE_* */
};

struct fy_store;
struct fy_txn;
struct fy_table;
struct fy_cursor;

/* A transaction body. Returns >= 0 to commit (fy_store_write returns that
 * value) or a negative FY_E* code to abort, with the message in fy_txn_err(t). */
typedef int (*fy_txn_fn)(struct fy_txn *t, void *user);

struct fy_store_schema {
  const char *name; /* component name, e.g. "outbox" */
  const struct fy_store_table_def *tables;
  size_t ntables;
  /* migrations[i] takes the component from version i to i + 1; user is
   * fy_store_opts.migrate_user. The current version is nmigrations. */
  const fy_txn_fn *migrations;
  size_t nmigrations;
};

struct fy_store_opts {
  uint64_t initial_map;     /* map size of a new store; 0: 64 MiB (rounded up to the OS page) */
  uint64_t max_map;         /* the map never grows past this; 0: 64 GiB */
  unsigned max_readers;     /* concurrent read transactions; 0: 126 */
  const struct fy_log *log; /* borrowed, may be NULL */
  void *migrate_user;       /* passed to every migration */
};

/* Locks <dir> (creating it, mode 0700, if missing), checks and opens
 * <dir>/store/data.mdb (creating a new store when there is none), creates the
 * tables of every schema and runs their migrations. Errors: FY_EEXIST when
 * another process holds <dir>; FY_EINVAL for a corrupt, truncated or foreign
 * data file; FY_EUNSUPPORTED for a newer schema or LMDB format; FY_EIO. */
int fy_store_open(struct fy_store **out, const char *dir, const struct fy_store_schema *const *schemas,
                  size_t nschemas, const struct fy_store_opts *opts, struct fy_err *err);

/* Closes the environment and releases the directory lock. Every transaction
 * must have ended. NULL is a no-op. */
void fy_store_close(struct fy_store *s);

/* The handle of a table declared in one of the schemas (by the same
 * pointer, or by name); NULL when it was not declared. Valid until close. */
struct fy_table *fy_store_table(struct fy_store *s, const struct fy_store_table_def *def);
struct fy_table *fy_store_table_named(struct fy_store *s, const char *name);

/* Runs fn in a write transaction and commits; see the top of this file. */
int fy_store_write(struct fy_store *s, fy_txn_fn fn, void *user, struct fy_err *err);

/* Runs fn in a read-only snapshot; the result is fn's. */
int fy_store_read(struct fy_store *s, fy_txn_fn fn, void *user, struct fy_err *err);

struct fy_store_info {
  const char *dir;   /* the data directory */
  uint64_t map_size; /* current map size */
  uint64_t max_map;
  uint64_t used; /* bytes up to the last page in use */
  uint32_t page_size;
  unsigned grows; /* times the map grew since open */
};
void fy_store_info(struct fy_store *s, struct fy_store_info *out);

/* ---- inside a transaction ------------------------------------------------ */

/* Where table operations put their message; bodies use it for their own. */
struct fy_err *fy_txn_err(struct fy_txn *t);
struct fy_store *fy_txn_store(struct fy_txn *t);
bool fy_txn_is_write(const struct fy_txn *t);

/* The handle of a declared table, as fy_store_table (also during migrations). */
struct fy_table *fy_txn_table(struct fy_txn *t, const struct fy_store_table_def *def);

/* 1 and *val set when key is present, 0 when absent, < 0 on error. In a
 * DUPSORT table *val is the first value of key. */
int fy_store_get(struct fy_txn *t, struct fy_table *tb, struct fy_bytes key, struct fy_bytes *val);

/* Stores key -> val, replacing (in a DUPSORT table: adding) a value. */
int fy_store_put(struct fy_txn *t, struct fy_table *tb, struct fy_bytes key, struct fy_bytes val);

/* Stores key -> n bytes the caller fills through *out before the next write
 * to this table (saves a copy of large values). Not for DUPSORT tables. */
int fy_store_reserve(struct fy_txn *t, struct fy_table *tb, struct fy_bytes key, size_t n, uint8_t **out);

/* Deletes key (in a DUPSORT table: all its values). 1 when it was there, 0 when not. */
int fy_store_del(struct fy_txn *t, struct fy_table *tb, struct fy_bytes key);

/* Deletes every entry of the table (keeps the table). */
int fy_store_clear(struct fy_txn *t, struct fy_table *tb);

/* Number of entries. */
int fy_store_count(struct fy_txn *t, struct fy_table *tb, uint64_t *out);

/* ---- cursors ------------------------------------------------------------- */

/* A cursor over the keys of tb that start with prefix (every key when
 * prefix.n is 0), in key order. Closed with fy_cursor_close or at the end of
 * the transaction, whichever comes first. */
int fy_cursor_open(struct fy_txn *t, struct fy_table *tb, struct fy_bytes prefix, struct fy_cursor **out);

/* Each returns 1 and fills k, v (either may be NULL) at an entry, 0 when
 * there is none in that direction, < 0 on error. A new cursor's first next
 * goes to the first entry, its first prev to the last. */
int fy_cursor_next(struct fy_cursor *c, struct fy_bytes *k, struct fy_bytes *v);
int fy_cursor_prev(struct fy_cursor *c, struct fy_bytes *k, struct fy_bytes *v);
/* The first entry whose key is >= key. */
int fy_cursor_seek(struct fy_cursor *c, struct fy_bytes key, struct fy_bytes *k, struct fy_bytes *v);
/* Deletes the entry at the cursor; the next fy_cursor_next goes to the one after it. */
int fy_cursor_del(struct fy_cursor *c);
void fy_cursor_close(struct fy_cursor *c);

#endif
