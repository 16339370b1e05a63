/* A test tool, not part of ferry: it simulates an attacker who has write
 * access to a coordinator's store (tests/rollout_trust.sh).
 *
 *   tamper_coord DATA_DIR add-operator NODEID_HEX TENANT
 *
 * With the coordinator STOPPED (the store's directory lock refuses a running
 * one), it writes into c.admins a record that makes NODEID an operator of
 * TENANT, in the format coordinator/coord_state.c's put_admin writes:
 * {role str, tenants [str], root bool, at uint, by bin(32)}. There is no
 * owner's signature and no statement behind it: that is the point. The
 * coordinator then believes the key may run commands for TENANT, while the
 * agents, which learn their admins only from owner-signed statements, must
 * not.
 *
 * Exit 0 when the record is written, 1 when the store cannot be opened or
 * written (not a coordinator's store, in use, damaged), 2 for usage errors. */
#include <errno.h>
#include <msgpack.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "base/buf.h"
#include "base/cleanup.h"
#include "base/mpmap.h"
#include "coordinator/coord_rollout.h"
#include "coordinator/coord_state.h"
#include "crypto/nodeid.h"
#include "fleet/labels.h"
#include "fleet/trust.h"
#include "outbox/inbox.h"
#include "outbox/outbox.h"
#include "store/store.h"

#define USAGE "usage: tamper_coord DATA_DIR add-operator NODEID_HEX TENANT\n"

struct tamper {
  struct fy_table *meta, *admins;
  struct fy_nodeid id;
  const char *tenant;
};

static uint64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int add_operator(struct fy_txn *t, void *user) {
  struct tamper *tp = user;
  struct fy_bytes v;
  /* fy_store_open would have made an empty store of any directory: only
   * a store `coordinator init` wrote has its id. */
  int rc = fy_store_get(t, tp->meta, fy_bytes_str("id"), &v);
  if (rc < 0)
    return rc;
  if (rc == 0 || v.n != FY_NODEID_LEN)
    return fy_err_set(fy_txn_err(t), FY_ENOENT, "not an initialised coordinator store (c.meta has no id)");
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  msgpack_packer pk;
  msgpack_packer_init(&pk, &b, fy_mp_buf_write);
  msgpack_pack_map(&pk, 5);
  fy_mp_pack_kv_str(&pk, "role", fy_role_name(FY_ROLE_OPERATOR));
  fy_mp_pack_str(&pk, "tenants");
  msgpack_pack_array(&pk, 1);
  fy_mp_pack_str(&pk, tp->tenant);
  fy_mp_pack_kv_bool(&pk, "root", false);
  fy_mp_pack_kv_u64(&pk, "at", wall_ms());
  /* Nobody granted it: the key names itself as the granter. */
  fy_mp_pack_kv_bin(&pk, "by", tp->id.key, FY_NODEID_LEN);
  return fy_store_put(t, tp->admins, fy_bytes_of(tp->id.key, FY_NODEID_LEN), fy_bytes_of(b.data, b.len));
}

int main(int argc, char **argv) {
  if (argc != 5 || strcmp(argv[2], "add-operator") != 0) {
    fputs(USAGE, stderr);
    return 2;
  }
  const char *dir = argv[1];
  struct fy_err err = {0};
  struct tamper tp = {.tenant = argv[4]};
  if (fy_nodeid_parse(argv[3], &tp.id, &err) < 0) {
    fprintf(stderr, "tamper_coord: %s\n" USAGE, err.msg);
    return 2;
  }
  if (fy_tenant_check(tp.tenant, &err) < 0) {
    fprintf(stderr, "tamper_coord: tenant: %s\n" USAGE, err.msg);
    return 2;
  }
  char path[4096];
  struct stat st;
  snprintf(path, sizeof(path), "%s/store/data.mdb", dir);
  if (stat(path, &st) != 0) {
    fprintf(stderr, "tamper_coord: %s: %s (not a coordinator's data directory?)\n", path, strerror(errno));
    return 1;
  }
  /* The schemas the coordinator opens its store with (src/node/node.c adds
   * the outbox's and the inbox's), so nothing is migrated differently. */
  const struct fy_store_schema *schemas[] = {&fy_outbox_schema, &fy_inbox_schema, &fy_coord_schema,
                                             &fy_coord_rollout_schema};
  struct fy_store *store = NULL;
  if (fy_store_open(&store, dir, schemas, FY_ARRAY_LEN(schemas), &(struct fy_store_opts){0}, &err) < 0) {
    fprintf(stderr, "tamper_coord: store %s cannot be opened: %s%s\n", dir, err.msg,
            err.code == FY_EEXIST ? " (stop the coordinator first)" : "");
    return 1;
  }
  tp.meta = fy_store_table_named(store, "c.meta");
  tp.admins = fy_store_table_named(store, "c.admins");
  int rc = fy_store_write(store, add_operator, &tp, &err);
  fy_store_close(store);
  if (rc < 0) {
    fprintf(stderr, "tamper_coord: %s: %s\n", dir, err.msg);
    return 1;
  }
  char hex[FY_NODEID_HEX_LEN + 1];
  fy_nodeid_to_hex(&tp.id, hex);
  printf("%s is now an operator of %s in %s (no statement, no signature)\n", hex, tp.tenant, dir);
  return 0;
}
