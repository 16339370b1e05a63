#include "agent/agent_state.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <msgpack.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/mpmap.h"
#include "base/mpshape.h"

static const struct fy_store_table_def tables[] = {{"agent.meta", 0}, {"agent.trust", 0}};
const struct fy_store_schema fy_agent_schema = {"agent", tables, FY_ARRAY_LEN(tables), NULL, 0};

#define META (&tables[0])
#define TRUST (&tables[1])
#define ENROLLMENT_KEY "enrollment"

static const char *name_of(const struct fy_mpshape_pos *pos, char *out, size_t size, const void *user) {
  const char *what = user;
  if (pos->in_field)
    snprintf(out, size, "%s: element %zu", what, pos->field);
  else
    snprintf(out, size, "%s", what);
  return out;
}

static bool key_is(const msgpack_object *k, const char *name) {
  size_t n = strlen(name);
  return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n && memcmp(k->via.str.ptr, name, n) == 0;
}

/* A bounded copy of a msgpack string without NULs inside. */
static int get_str(const msgpack_object *o, char *out, size_t cap, const char *what, const char *field,
                   struct fy_err *err) {
  if (o->type != MSGPACK_OBJECT_STR)
    return fy_err_set(err, FY_EINVAL, "%s: %s is not a string", what, field);
  if (o->via.str.size >= cap)
    return fy_err_set(err, FY_EINVAL, "%s: %s is longer than %zu bytes", what, field, cap - 1);
  if (memchr(o->via.str.ptr, '\0', o->via.str.size))
    return fy_err_set(err, FY_EINVAL, "%s: %s contains a NUL byte", what, field);
  memcpy(out, o->via.str.ptr, o->via.str.size);
  out[o->via.str.size] = '\0';
  return 0;
}

static int get_id(const msgpack_object *o, struct fy_nodeid *out, const char *what, const char *field,
                  struct fy_err *err) {
  if (o->type != MSGPACK_OBJECT_BIN || o->via.bin.size != FY_NODEID_LEN)
    return fy_err_set(err, FY_EINVAL, "%s: %s is not %d bytes of bin", what, field, FY_NODEID_LEN);
  memcpy(out->key, o->via.bin.ptr, FY_NODEID_LEN);
  return 0;
}

static int get_roots(const msgpack_object *o, struct fy_nodeid *roots, size_t *nroots, const char *what,
                     struct fy_err *err) {
  if (o->type != MSGPACK_OBJECT_ARRAY)
    return fy_err_set(err, FY_EINVAL, "%s: roots is not an array", what);
  if (o->via.array.size > FY_AGENT_ROOTS_MAX)
    return fy_err_set(err, FY_ELIMIT, "%s: roots: %u of them, at most %d", what, o->via.array.size,
                      FY_AGENT_ROOTS_MAX);
  for (uint32_t i = 0; i < o->via.array.size; i++) {
    char field[32];
    snprintf(field, sizeof(field), "roots: element %u", i);
    int rc = get_id(&o->via.array.ptr[i], &roots[i], what, field, err);
    if (rc < 0)
      return rc;
  }
  *nroots = o->via.array.size;
  return 0;
}

static int get_labels(const msgpack_object *o, struct fy_labels *out, const char *what, struct fy_err *err) {
  int rc = fy_labels_unpack(o, out, err);
  return rc < 0 ? fy_err_prefix(err, "%s", what) : 0;
}

static int get_tenant(const msgpack_object *o, char *out, const char *what, struct fy_err *err) {
  int rc = get_str(o, out, FY_TENANT_MAX + 1, what, "tenant", err);
  if (rc < 0)
    return rc;
  if (out[0] && fy_tenant_check(out, err) < 0)
    return fy_err_prefix(err, "%s: tenant", what);
  return 0;
}

/* Checks the shape, unpacks, and insists on a map. u is live on success. */
static int unpack_map(const uint8_t *p, size_t len, size_t max_elements, const char *what,
                      msgpack_unpacked *u, struct fy_err *err) {
  int rc = fy_mpshape_check(p, len, 4, max_elements, "message", name_of, what, err);
  if (rc < 0)
    return rc;
  msgpack_unpacked_init(u);
  size_t off = 0;
  if (msgpack_unpack_next(u, (const char *)p, len, &off) != MSGPACK_UNPACK_SUCCESS) {
    msgpack_unpacked_destroy(u);
    return fy_err_set(err, FY_EINVAL, "%s: not msgpack", what);
  }
  if (u->data.type != MSGPACK_OBJECT_MAP) {
    msgpack_unpacked_destroy(u);
    return fy_err_set(err, FY_EINVAL, "%s: not a map", what);
  }
  return 0;
}

/* ---- the enrollment record ----------------------------------------------------- */

int fy_agent_enrollment_encode(const struct fy_agent_enrollment *e, struct fy_buf *out, struct fy_err *err) {
  if (e->naddrs > FY_AGENT_ADDRS_MAX)
    return fy_err_set(err, FY_EINVAL, "enrollment: %zu addresses, at most %d", e->naddrs, FY_AGENT_ADDRS_MAX);
  if (e->nroots == 0 || e->nroots > FY_AGENT_ROOTS_MAX)
    return fy_err_set(err, FY_EINVAL, "enrollment: %zu roots, need 1 to %d", e->nroots, FY_AGENT_ROOTS_MAX);
  for (size_t i = 0; i < e->naddrs; i++)
    if (!memchr(e->addrs[i], '\0', sizeof(e->addrs[i])) || e->addrs[i][0] == '\0')
      return fy_err_set(err, FY_EINVAL, "enrollment: address %zu is empty or not NUL-terminated", i);
  if (!memchr(e->tenant, '\0', sizeof(e->tenant)) || (e->tenant[0] && fy_tenant_check(e->tenant, err) < 0))
    return fy_err_set(err, FY_EINVAL, "enrollment: bad tenant");
  size_t old = out->len;
  msgpack_packer pk;
  msgpack_packer_init(&pk, out, fy_mp_buf_write);
  int bad = msgpack_pack_map(&pk, 6);
  bad = bad || msgpack_pack_str_with_body(&pk, "coord", 5) ||
        msgpack_pack_bin_with_body(&pk, e->coordinator.key, FY_NODEID_LEN);
  bad = bad || msgpack_pack_str_with_body(&pk, "addrs", 5) || msgpack_pack_array(&pk, e->naddrs);
  for (size_t i = 0; !bad && i < e->naddrs; i++)
    bad = msgpack_pack_str_with_body(&pk, e->addrs[i], strlen(e->addrs[i]));
  bad = bad || msgpack_pack_str_with_body(&pk, "tenant", 6) ||
        msgpack_pack_str_with_body(&pk, e->tenant, strlen(e->tenant));
  bad = bad || msgpack_pack_str_with_body(&pk, "labels", 6) || fy_labels_pack(&e->labels, &pk);
  bad = bad || msgpack_pack_str_with_body(&pk, "roots", 5) || msgpack_pack_array(&pk, e->nroots);
  for (size_t i = 0; !bad && i < e->nroots; i++)
    bad = msgpack_pack_bin_with_body(&pk, e->roots[i].key, FY_NODEID_LEN);
  bad = bad || msgpack_pack_str_with_body(&pk, "at", 2) || msgpack_pack_uint64(&pk, e->enrolled_at);
  if (bad) {
    out->len = old;
    return fy_err_set(err, FY_ENOMEM, "enrollment: cannot encode the record");
  }
  return 0;
}

enum { R_COORD = 1, R_ADDRS = 2, R_TENANT = 4, R_LABELS = 8, R_ROOTS = 16, R_AT = 32, R_ALL = 63 };

static int record_field(const msgpack_object *k, const msgpack_object *v, struct fy_agent_enrollment *out,
                        unsigned *seen, struct fy_err *err) {
  static const char *const names[] = {"coord", "addrs", "tenant", "labels", "roots", "at"};
  const char *what = "enrollment";
  unsigned bit = 0;
  const char *name = NULL;
  for (size_t i = 0; i < FY_ARRAY_LEN(names); i++)
    if (key_is(k, names[i])) {
      bit = 1u << i;
      name = names[i];
    }
  if (!bit) {
    if (k->type != MSGPACK_OBJECT_STR)
      return fy_err_set(err, FY_EINVAL, "%s: a key is not a string", what);
    return fy_err_set(err, FY_EINVAL, "%s: unknown key '%.*s'", what,
                      (int)(k->via.str.size > 64 ? 64 : k->via.str.size), k->via.str.ptr);
  }
  if (*seen & bit)
    return fy_err_set(err, FY_EINVAL, "%s: duplicate key '%s'", what, name);
  *seen |= bit;
  switch (bit) {
  case R_COORD:
    return get_id(v, &out->coordinator, what, "coord", err);
  case R_ADDRS:
    if (v->type != MSGPACK_OBJECT_ARRAY)
      return fy_err_set(err, FY_EINVAL, "%s: addrs is not an array", what);
    if (v->via.array.size > FY_AGENT_ADDRS_MAX)
      return fy_err_set(err, FY_EINVAL, "%s: addrs: %u of them, at most %d", what, v->via.array.size,
                        FY_AGENT_ADDRS_MAX);
    for (uint32_t i = 0; i < v->via.array.size; i++) {
      char field[32];
      snprintf(field, sizeof(field), "addrs: element %u", i);
      int rc = get_str(&v->via.array.ptr[i], out->addrs[i], sizeof(out->addrs[i]), what, field, err);
      if (rc < 0)
        return rc;
      if (out->addrs[i][0] == '\0')
        return fy_err_set(err, FY_EINVAL, "%s: %s is empty", what, field);
    }
    out->naddrs = v->via.array.size;
    return 0;
  case R_TENANT:
    return get_tenant(v, out->tenant, what, err);
  case R_LABELS:
    return get_labels(v, &out->labels, what, err);
  case R_ROOTS: {
    int rc = get_roots(v, out->roots, &out->nroots, what, err);
    if (rc < 0)
      return rc == FY_ELIMIT ? FY_EINVAL : rc;
    if (out->nroots == 0)
      return fy_err_set(err, FY_EINVAL, "%s: roots is empty", what);
    return 0;
  }
  default:
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
      return fy_err_set(err, FY_EINVAL, "%s: at is not an unsigned integer", what);
    out->enrolled_at = v->via.u64;
    return 0;
  }
}

int fy_agent_enrollment_decode(const uint8_t *p, size_t len, struct fy_agent_enrollment *out,
                               struct fy_err *err) {
  memset(out, 0, sizeof(*out));
  if (len > FY_AGENT_RECORD_MAX)
    return fy_err_set(err, FY_ELIMIT, "enrollment: %zu bytes, at most %d", len, FY_AGENT_RECORD_MAX);
  msgpack_unpacked u;
  int rc = unpack_map(p, len, 256, "enrollment", &u, err);
  if (rc < 0)
    return rc;
  unsigned seen = 0;
  const msgpack_object_map *m = &u.data.via.map;
  for (uint32_t i = 0; rc == 0 && i < m->size; i++)
    rc = record_field(&m->ptr[i].key, &m->ptr[i].val, out, &seen, err);
  msgpack_unpacked_destroy(&u);
  if (rc == 0 && seen != R_ALL) {
    static const char *const names[] = {"coord", "addrs", "tenant", "labels", "roots", "at"};
    for (size_t i = 0; i < FY_ARRAY_LEN(names); i++)
      if (!(seen & (1u << i))) {
        rc = fy_err_set(err, FY_EINVAL, "enrollment: missing key '%s'", names[i]);
        break;
      }
  }
  if (rc < 0)
    memset(out, 0, sizeof(*out));
  return rc;
}

/* ---- the store ----------------------------------------------------------------- */

int fy_agent_state_get_enrollment(struct fy_txn *t, struct fy_agent_enrollment *out) {
  struct fy_table *tb = fy_txn_table(t, META);
  if (!tb)
    return fy_err_set(fy_txn_err(t), FY_EINVAL, "agent: the store was opened without fy_agent_schema");
  struct fy_bytes v;
  int rc = fy_store_get(t, tb, fy_bytes_str(ENROLLMENT_KEY), &v);
  if (rc <= 0)
    return rc;
  rc = fy_agent_enrollment_decode(v.p, v.n, out, fy_txn_err(t));
  if (rc < 0)
    return fy_err_prefix(fy_txn_err(t), "agent store");
  return 1;
}

int fy_agent_state_put_enrollment(struct fy_txn *t, const struct fy_agent_enrollment *e) {
  struct fy_table *tb = fy_txn_table(t, META);
  if (!tb)
    return fy_err_set(fy_txn_err(t), FY_EINVAL, "agent: the store was opened without fy_agent_schema");
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  int rc = fy_agent_enrollment_encode(e, &b, fy_txn_err(t));
  if (rc < 0)
    return rc;
  return fy_store_put(t, tb, fy_bytes_str(ENROLLMENT_KEY), fy_bytes_of(b.data, b.len));
}

#define DESIRED_KEY "desired"

int fy_agent_state_get_desired(struct fy_txn *t, struct fy_bytes *out) {
  struct fy_table *tb = fy_txn_table(t, META);
  if (!tb)
    return fy_err_set(fy_txn_err(t), FY_EINVAL, "agent: the store was opened without fy_agent_schema");
  return fy_store_get(t, tb, fy_bytes_str(DESIRED_KEY), out);
}

int fy_agent_state_put_desired(struct fy_txn *t, struct fy_bytes v) {
  struct fy_table *tb = fy_txn_table(t, META);
  if (!tb)
    return fy_err_set(fy_txn_err(t), FY_EINVAL, "agent: the store was opened without fy_agent_schema");
  return fy_store_put(t, tb, fy_bytes_str(DESIRED_KEY), v);
}

int fy_agent_state_del_desired(struct fy_txn *t) {
  struct fy_table *tb = fy_txn_table(t, META);
  if (!tb)
    return fy_err_set(fy_txn_err(t), FY_EINVAL, "agent: the store was opened without fy_agent_schema");
  return fy_store_del(t, tb, fy_bytes_str(DESIRED_KEY));
}

int fy_agent_state_add_statement(struct fy_txn *t, const uint8_t *env, size_t len) {
  struct fy_table *tb = fy_txn_table(t, TRUST);
  if (!tb)
    return fy_err_set(fy_txn_err(t), FY_EINVAL, "agent: the store was opened without fy_agent_schema");
  if (len == 0 || len > FY_ENVELOPE_MAX)
    return fy_err_set(fy_txn_err(t), FY_EINVAL, "agent: a statement of %zu bytes (1 to %d)", len,
                      FY_ENVELOPE_MAX);
  struct fy_cursor *c;
  int rc = fy_cursor_open(t, tb, fy_bytes_of(NULL, 0), &c);
  if (rc < 0)
    return rc;
  struct fy_bytes k;
  uint64_t last = 0;
  rc = fy_cursor_prev(c, &k, NULL);
  if (rc == 1 && k.n == 8)
    last = fy_be64_get(k.p);
  fy_cursor_close(c);
  if (rc < 0)
    return rc;
  uint8_t key[8];
  fy_be64_put(key, last + 1);
  return fy_store_put(t, tb, fy_bytes_of(key, sizeof(key)), fy_bytes_of(env, len));
}

int fy_agent_state_each_statement(struct fy_txn *t, fy_agent_statement_fn fn, void *user) {
  struct fy_table *tb = fy_txn_table(t, TRUST);
  if (!tb)
    return fy_err_set(fy_txn_err(t), FY_EINVAL, "agent: the store was opened without fy_agent_schema");
  struct fy_cursor *c;
  int rc = fy_cursor_open(t, tb, fy_bytes_of(NULL, 0), &c);
  if (rc < 0)
    return rc;
  struct fy_bytes k, v;
  int count = 0;
  while ((rc = fy_cursor_next(c, &k, &v)) == 1) {
    if (k.n != 8) {
      rc = fy_err_set(fy_txn_err(t), FY_EINVAL, "agent store: agent.trust has a key of %zu bytes", k.n);
      break;
    }
    if (fn && (rc = fn(fy_be64_get(k.p), v.p, v.n, user)) < 0)
      break;
    count++;
  }
  fy_cursor_close(c);
  return rc < 0 ? rc : count;
}

int fy_agent_state_clear_statements(struct fy_txn *t) {
  struct fy_table *tb = fy_txn_table(t, TRUST);
  if (!tb)
    return fy_err_set(fy_txn_err(t), FY_EINVAL, "agent: the store was opened without fy_agent_schema");
  return fy_store_clear(t, tb);
}

struct replay {
  struct fy_trust *view;
  struct fy_err *err;
};

static int replay_one(uint64_t index, const uint8_t *env, size_t len, void *user) {
  struct replay *r = user;
  struct fy_err why = {0};
  enum fy_cmd_refusal ref = fy_trust_apply(r->view, env, len, &why);
  if (ref != FY_CMD_OK)
    return fy_err_set(r->err, FY_EINVAL, "agent store: stored statement %llu is refused (%s): %s",
                      (unsigned long long)index, fy_cmd_refusal_name(ref), why.msg);
  return 0;
}

int fy_agent_state_load_trust(struct fy_txn *t, const struct fy_agent_enrollment *e, struct fy_trust *out) {
  int rc = fy_trust_init(out, &e->coordinator, e->roots, e->nroots, fy_txn_err(t));
  if (rc < 0)
    return rc;
  struct replay r = {out, fy_txn_err(t)};
  rc = fy_agent_state_each_statement(t, replay_one, &r);
  return rc < 0 ? rc : 0;
}

int fy_agent_state_enroll(struct fy_txn *t, const struct fy_agent_enrollment *e,
                          const struct fy_bytes *statements, size_t n, struct fy_trust *view,
                          const struct fy_log *log) {
  int rc = fy_trust_init(view, &e->coordinator, e->roots, e->nroots, fy_txn_err(t));
  if (rc < 0)
    return rc;
  if ((rc = fy_agent_state_put_enrollment(t, e)) < 0 || (rc = fy_agent_state_clear_statements(t)) < 0)
    return rc;
  int accepted = 0;
  for (size_t i = 0; i < n; i++) {
    struct fy_err why = {0};
    enum fy_cmd_refusal ref = fy_trust_apply(view, statements[i].p, statements[i].n, &why);
    if (ref != FY_CMD_OK) {
      char idx[24];
      snprintf(idx, sizeof(idx), "%zu", i);
      if (log)
        fy_warn(log, "trust.refused", "index", idx, "code", fy_cmd_refusal_name(ref), "reason", why.msg);
      continue;
    }
    if ((rc = fy_agent_state_add_statement(t, statements[i].p, statements[i].n)) < 0)
      return rc;
    accepted++;
  }
  return accepted;
}

/* ---- agent.enroll ------------------------------------------------------------------ */

int fy_agent_enroll_request_encode(const uint8_t *secret, const uint8_t *facts, size_t facts_len,
                                   struct fy_buf *out, struct fy_err *err) {
  if (!facts || facts_len == 0)
    return fy_err_set(err, FY_EINVAL, "enroll request: facts are empty");
  size_t old = out->len;
  msgpack_packer pk;
  msgpack_packer_init(&pk, out, fy_mp_buf_write);
  int bad = msgpack_pack_map(&pk, secret ? 2 : 1);
  if (secret)
    bad = bad || msgpack_pack_str_with_body(&pk, "secret", 6) ||
          msgpack_pack_bin_with_body(&pk, secret, FY_AGENT_SECRET_LEN);
  bad = bad || msgpack_pack_str_with_body(&pk, "facts", 5);
  /* The facts are one msgpack value already: appended as they are. */
  if (bad || fy_buf_append(out, facts, facts_len, NULL) < 0) {
    out->len = old;
    return fy_err_set(err, FY_ENOMEM, "enroll request: cannot encode");
  }
  return 0;
}

void fy_agent_enroll_reply_free(struct fy_agent_enroll_reply *r) {
  free(r->statements);
  r->statements = NULL;
  r->nstatements = 0;
}

enum { E_STATUS = 1, E_TENANT = 2, E_LABELS = 4, E_ROOTS = 8, E_STATEMENTS = 16, E_ALL = 31 };

static int reply_field(const msgpack_object *k, const msgpack_object *v, struct fy_agent_enroll_reply *out,
                       unsigned *seen, struct fy_err *err) {
  static const char *const names[] = {"status", "tenant", "labels", "roots", "statements"};
  const char *what = "enroll reply";
  if (k->type != MSGPACK_OBJECT_STR)
    return fy_err_set(err, FY_EINVAL, "%s: a key is not a string", what);
  unsigned bit = 0;
  const char *name = NULL;
  for (size_t i = 0; i < FY_ARRAY_LEN(names); i++)
    if (key_is(k, names[i])) {
      bit = 1u << i;
      name = names[i];
    }
  if (!bit)
    return 0; /* a newer coordinator's addition */
  if (*seen & bit)
    return fy_err_set(err, FY_EINVAL, "%s: duplicate key '%s'", what, name);
  *seen |= bit;
  switch (bit) {
  case E_STATUS: {
    char status[16];
    int rc = get_str(v, status, sizeof(status), what, "status", err);
    if (rc < 0)
      return rc;
    if (strcmp(status, "enrolled") == 0)
      out->status = FY_AGENT_ENROLL_ENROLLED;
    else if (strcmp(status, "pending") == 0)
      out->status = FY_AGENT_ENROLL_PENDING;
    else
      return fy_err_set(err, FY_EINVAL, "%s: status '%s' is neither enrolled nor pending", what, status);
    return 0;
  }
  case E_TENANT:
    return get_tenant(v, out->tenant, what, err);
  case E_LABELS:
    return get_labels(v, &out->labels, what, err);
  case E_ROOTS:
    return get_roots(v, out->roots, &out->nroots, what, err);
  default:
    if (v->type != MSGPACK_OBJECT_ARRAY)
      return fy_err_set(err, FY_EINVAL, "%s: statements is not an array", what);
    if (v->via.array.size > FY_AGENT_STATEMENTS_MAX)
      return fy_err_set(err, FY_ELIMIT, "%s: statements: %u of them, at most %d", what, v->via.array.size,
                        FY_AGENT_STATEMENTS_MAX);
    if (v->via.array.size == 0)
      return 0;
    out->statements = calloc(v->via.array.size, sizeof(*out->statements));
    if (!out->statements)
      return fy_err_set(err, FY_ENOMEM, "%s: statements: out of memory", what);
    for (uint32_t i = 0; i < v->via.array.size; i++) {
      const msgpack_object *s = &v->via.array.ptr[i];
      if (s->type != MSGPACK_OBJECT_BIN || s->via.bin.size == 0 || s->via.bin.size > FY_ENVELOPE_MAX)
        return fy_err_set(err, FY_EINVAL, "%s: statements: element %u is not bin of 1 to %d bytes", what, i,
                          FY_ENVELOPE_MAX);
      /* msgpack-c's bin points into the input (no copy), so it outlives u. */
      out->statements[i] = fy_bytes_of(s->via.bin.ptr, s->via.bin.size);
      out->nstatements = i + 1;
    }
    return 0;
  }
}

int fy_agent_enroll_reply_decode(const uint8_t *p, size_t len, struct fy_agent_enroll_reply *out,
                                 struct fy_err *err) {
  memset(out, 0, sizeof(*out));
  if (len > FY_AGENT_REPLY_MAX)
    return fy_err_set(err, FY_ELIMIT, "enroll reply: %zu bytes, at most %d", len, FY_AGENT_REPLY_MAX);
  msgpack_unpacked u;
  int rc = unpack_map(p, len, FY_AGENT_STATEMENTS_MAX + 256, "enroll reply", &u, err);
  if (rc < 0)
    return rc;
  unsigned seen = 0;
  const msgpack_object_map *m = &u.data.via.map;
  for (uint32_t i = 0; rc == 0 && i < m->size; i++)
    rc = reply_field(&m->ptr[i].key, &m->ptr[i].val, out, &seen, err);
  msgpack_unpacked_destroy(&u);
  if (rc == 0 && !(seen & E_STATUS))
    rc = fy_err_set(err, FY_EINVAL, "enroll reply: missing key 'status'");
  if (rc == 0 && out->status == FY_AGENT_ENROLL_ENROLLED) {
    if (!(seen & E_TENANT) || out->tenant[0] == '\0')
      rc = fy_err_set(err, FY_EINVAL, "enroll reply: enrolled without a tenant");
    else if (!(seen & E_ROOTS) || out->nroots == 0)
      rc = fy_err_set(err, FY_EINVAL, "enroll reply: enrolled without roots");
  }
  if (rc < 0) {
    fy_agent_enroll_reply_free(out);
    memset(out, 0, sizeof(*out));
  }
  return rc;
}

/* ---- the status file ------------------------------------------------------------------ */

static const char *const state_names[] = {"starting", "enrolling", "pending", "enrolled", "revoked"};

const char *fy_agent_state_name(enum fy_agent_state s) {
  return (size_t)s < FY_ARRAY_LEN(state_names) ? state_names[s] : "unknown";
}

int fy_agent_state_parse(const char *text, enum fy_agent_state *out) {
  for (size_t i = 0; i < FY_ARRAY_LEN(state_names); i++)
    if (strcmp(text, state_names[i]) == 0) {
      *out = (enum fy_agent_state)i;
      return 0;
    }
  return FY_EINVAL;
}

/* Errors may quote a peer's bytes; JSON strings must be UTF-8. */
static void printable(const char *in, size_t max, char *out) {
  size_t n = strnlen(in, max);
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)in[i];
    out[i] = ch < 0x20 || ch >= 0x7f ? '?' : (char)ch;
  }
  out[n] = '\0';
}

static json_t *status_json(const struct fy_agent_status *s) {
  char hex[FY_NODEID_HEX_LEN + 1] = "";
  char last_error[FY_AGENT_ERROR_MAX + 1], apply_message[FY_AGENT_ERROR_MAX + 1];
  char apply_state[sizeof(s->apply_state)], rollout[FY_AGENT_APPLY_TEXT_MAX + 1],
      version[FY_AGENT_APPLY_TEXT_MAX + 1], previous[FY_AGENT_APPLY_TEXT_MAX + 1];
  printable(s->last_error, FY_AGENT_ERROR_MAX, last_error);
  printable(s->apply_message, FY_AGENT_ERROR_MAX, apply_message);
  printable(s->apply_state, sizeof(apply_state) - 1, apply_state);
  printable(s->apply_rollout, FY_AGENT_APPLY_TEXT_MAX, rollout);
  printable(s->apply_version, FY_AGENT_APPLY_TEXT_MAX, version);
  printable(s->apply_previous, FY_AGENT_APPLY_TEXT_MAX, previous);
  if (s->has_coordinator)
    fy_nodeid_to_hex(&s->coordinator, hex);
  json_t *labels = json_object();
  if (!labels)
    return NULL;
  for (size_t i = 0; i < s->labels.n; i++)
    json_object_set_new(labels, s->labels.v[i].key, json_string(s->labels.v[i].value));
  return json_pack("{s:s, s:o, s:{s:b, s:I, s:s}, s:s, s:o, s:I, s:I, s:I, s:I, s:{s:s, s:s, s:s, s:s, s:s}}",
                   "state", fy_agent_state_name(s->state), "coordinator",
                   s->has_coordinator ? json_string(hex) : json_null(), "link", "up", s->link_up, "since",
                   (json_int_t)s->link_since, "last_error", last_error, "tenant", s->tenant, "labels", labels,
                   "queued", (json_int_t)s->queued, "facts_sent_at", (json_int_t)s->facts_sent_at,
                   "updated_at", (json_int_t)s->updated_at, "pid", (json_int_t)s->pid, "apply", "state",
                   apply_state, "rollout", rollout, "version", version, "previous", previous, "message",
                   apply_message);
}

static int fsync_dir(const char *dir) {
  FY_AUTOCLOSE int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0 || fsync(fd) != 0)
    return -1;
  return 0;
}

int fy_agent_status_write(const char *dir, const struct fy_agent_status *s, struct fy_err *err) {
  json_t *j = status_json(s);
  if (!j)
    return fy_err_set(err, FY_ENOMEM, "status: cannot build the JSON object");
  FY_AUTOFREE char *text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  json_decref(j);
  if (!text)
    return fy_err_set(err, FY_ENOMEM, "status: cannot format the JSON object");
  char path[4096], tmp[4096];
  if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, FY_AGENT_STATUS_FILE) >= sizeof(path) ||
      (size_t)snprintf(tmp, sizeof(tmp), "%s/%s.tmp", dir, FY_AGENT_STATUS_FILE) >= sizeof(tmp))
    return fy_err_set(err, FY_EINVAL, "status: directory name too long");
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0)
    return fy_err_errno(err, errno, "status: %s", tmp);
  size_t len = strlen(text), off = 0;
  while (off < len) {
    ssize_t w = write(fd, text + off, len - off);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0) {
      int e = errno;
      close(fd);
      unlink(tmp);
      return fy_err_errno(err, e, "status: write %s", tmp);
    }
    off += (size_t)w;
  }
  if (write(fd, "\n", 1) != 1 || fsync(fd) != 0) {
    int e = errno;
    close(fd);
    unlink(tmp);
    return fy_err_errno(err, e, "status: write %s", tmp);
  }
  if (close(fd) != 0) {
    int e = errno;
    unlink(tmp);
    return fy_err_errno(err, e, "status: close %s", tmp);
  }
  if (rename(tmp, path) != 0) {
    int e = errno;
    unlink(tmp);
    return fy_err_errno(err, e, "status: rename %s to %s", tmp, path);
  }
  if (fsync_dir(dir) != 0)
    return fy_err_errno(err, errno, "status: fsync %s", dir);
  return 0;
}

static int json_uint(json_t *o, const char *key, uint64_t *out, const char *path, struct fy_err *err) {
  json_t *v = json_object_get(o, key);
  if (!json_is_integer(v) || json_integer_value(v) < 0)
    return fy_err_set(err, FY_EINVAL, "status %s: %s is not an unsigned integer", path, key);
  *out = (uint64_t)json_integer_value(v);
  return 0;
}

static int json_text(json_t *o, const char *key, char *out, size_t cap, const char *path,
                     struct fy_err *err) {
  json_t *v = json_object_get(o, key);
  if (!json_is_string(v) || json_string_length(v) >= cap)
    return fy_err_set(err, FY_EINVAL, "status %s: %s is not a string of at most %zu bytes", path, key,
                      cap - 1);
  memcpy(out, json_string_value(v), json_string_length(v) + 1);
  return 0;
}

static int status_from_json(json_t *j, struct fy_agent_status *out, const char *path, struct fy_err *err) {
  char buf[FY_NODEID_HEX_LEN + 1];
  int rc;
  if (!json_is_object(j))
    return fy_err_set(err, FY_EINVAL, "status %s: not a JSON object", path);
  if ((rc = json_text(j, "state", buf, 16, path, err)) < 0)
    return rc;
  if (fy_agent_state_parse(buf, &out->state) < 0)
    return fy_err_set(err, FY_EINVAL, "status %s: state '%s' is unknown", path, buf);
  json_t *c = json_object_get(j, "coordinator");
  if (json_is_string(c)) {
    if (fy_nodeid_parse(json_string_value(c), &out->coordinator, err) < 0)
      return fy_err_prefix(err, "status %s: coordinator", path);
    out->has_coordinator = true;
  } else if (!json_is_null(c)) {
    return fy_err_set(err, FY_EINVAL, "status %s: coordinator is neither a node id nor null", path);
  }
  json_t *link = json_object_get(j, "link");
  json_t *up = json_object_get(link, "up");
  if (!json_is_object(link) || !json_is_boolean(up))
    return fy_err_set(err, FY_EINVAL, "status %s: link is not an object with a boolean 'up'", path);
  out->link_up = json_is_true(up);
  uint64_t pid = 0;
  if ((rc = json_uint(link, "since", &out->link_since, path, err)) < 0 ||
      (rc = json_text(link, "last_error", out->last_error, sizeof(out->last_error), path, err)) < 0 ||
      (rc = json_text(j, "tenant", out->tenant, sizeof(out->tenant), path, err)) < 0 ||
      (rc = json_uint(j, "queued", &out->queued, path, err)) < 0 ||
      (rc = json_uint(j, "facts_sent_at", &out->facts_sent_at, path, err)) < 0 ||
      (rc = json_uint(j, "updated_at", &out->updated_at, path, err)) < 0 ||
      (rc = json_uint(j, "pid", &pid, path, err)) < 0)
    return rc;
  out->pid = (long)pid;
  json_t *apply = json_object_get(j, "apply");
  if (apply && !json_is_object(apply))
    return fy_err_set(err, FY_EINVAL, "status %s: apply is not an object", path);
  if (apply &&
      ((rc = json_text(apply, "state", out->apply_state, sizeof(out->apply_state), path, err)) < 0 ||
       (rc = json_text(apply, "rollout", out->apply_rollout, sizeof(out->apply_rollout), path, err)) < 0 ||
       (rc = json_text(apply, "version", out->apply_version, sizeof(out->apply_version), path, err)) < 0 ||
       (rc = json_text(apply, "previous", out->apply_previous, sizeof(out->apply_previous), path, err)) < 0 ||
       (rc = json_text(apply, "message", out->apply_message, sizeof(out->apply_message), path, err)) < 0))
    return rc;
  json_t *labels = json_object_get(j, "labels");
  if (!json_is_object(labels))
    return fy_err_set(err, FY_EINVAL, "status %s: labels is not an object", path);
  const char *k;
  json_t *v;
  json_object_foreach(labels, k, v) {
    if (!json_is_string(v))
      return fy_err_set(err, FY_EINVAL, "status %s: label %s is not a string", path, k);
    if (fy_labels_set(&out->labels, k, json_string_value(v), err) < 0)
      return fy_err_prefix(err, "status %s: labels", path);
  }
  return 0;
}

int fy_agent_status_read(const char *dir, struct fy_agent_status *out, struct fy_err *err) {
  memset(out, 0, sizeof(*out));
  char path[4096];
  if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, FY_AGENT_STATUS_FILE) >= sizeof(path))
    return fy_err_set(err, FY_EINVAL, "status: directory name too long");
  FY_AUTOFCLOSE FILE *f = fopen(path, "re");
  if (!f) {
    if (errno == ENOENT)
      return fy_err_set(err, FY_ENOENT, "no status in %s: has the agent run there?", dir);
    return fy_err_errno(err, errno, "status %s", path);
  }
  char *text = malloc(FY_AGENT_STATUS_MAX + 1);
  if (!text)
    return fy_err_set(err, FY_ENOMEM, "status %s: out of memory", path);
  size_t n = fread(text, 1, FY_AGENT_STATUS_MAX + 1, f);
  if (n > FY_AGENT_STATUS_MAX) {
    free(text);
    return fy_err_set(err, FY_ELIMIT, "status %s: larger than %d bytes", path, FY_AGENT_STATUS_MAX);
  }
  json_error_t jerr;
  json_t *j = json_loadb(text, n, JSON_REJECT_DUPLICATES, &jerr);
  free(text);
  if (!j)
    return fy_err_set(err, FY_EINVAL, "status %s:%d: %s", path, jerr.line, jerr.text);
  int rc = status_from_json(j, out, path, err);
  json_decref(j);
  if (rc < 0)
    memset(out, 0, sizeof(*out));
  return rc;
}

static void format_time(uint64_t ms, char *out, size_t size) {
  if (ms == 0) {
    snprintf(out, size, "never");
    return;
  }
  time_t secs = (time_t)(ms / 1000);
  struct tm tm;
  if (!gmtime_r(&secs, &tm) || strftime(out, size, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
    snprintf(out, size, "%llu ms", (unsigned long long)ms);
}

int fy_agent_status_print(const struct fy_agent_status *s, bool json, FILE *out, struct fy_err *err) {
  if (json) {
    json_t *j = status_json(s);
    if (!j)
      return fy_err_set(err, FY_ENOMEM, "status: cannot build the JSON object");
    int rc = json_dumpf(j, out, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (rc != 0)
      return fy_err_set(err, FY_EIO, "status: cannot write JSON");
    fputc('\n', out);
    return 0;
  }
  char hex[FY_NODEID_HEX_LEN + 1] = "(none)", since[40], sent[40], updated[40];
  FY_AUTOFREE char *labels = malloc((size_t)(FY_LABELS_TEXT_MAX));
  if (!labels)
    return fy_err_set(err, FY_ENOMEM, "status: out of memory");
  if (s->has_coordinator)
    fy_nodeid_to_hex(&s->coordinator, hex);
  fy_labels_format(&s->labels, labels, (size_t)(FY_LABELS_TEXT_MAX));
  format_time(s->link_since, since, sizeof(since));
  format_time(s->facts_sent_at, sent, sizeof(sent));
  format_time(s->updated_at, updated, sizeof(updated));
  fprintf(out,
          "state:       %s\ncoordinator: %s\nlink:        %s since %s\nlast_error:  %s\ntenant:      %s\n"
          "labels:      %s\nqueued:      %llu\nfacts_sent:  %s\nupdated:     %s (pid %ld)\n"
          "apply:       %s%s%s\nversion:     %s\nprevious:    %s\napply_msg:   %s\n",
          fy_agent_state_name(s->state), hex, s->link_up ? "up" : "down", since,
          s->last_error[0] ? s->last_error : "(none)", s->tenant[0] ? s->tenant : "(none)", labels,
          (unsigned long long)s->queued, sent, updated, s->pid, s->apply_state[0] ? s->apply_state : "(none)",
          s->apply_rollout[0] ? " rollout " : "", s->apply_rollout,
          s->apply_version[0] ? s->apply_version : "(none)",
          s->apply_previous[0] ? s->apply_previous : "(none)",
          s->apply_message[0] ? s->apply_message : "(none)");
  return 0;
}
