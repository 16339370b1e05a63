#include "agent/apply.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <msgpack.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent/childmark.h"
#include "base/cleanup.h"
#include "base/mpmap.h"
#include "base/mpshape.h"

static const struct fy_store_table_def tables[] = {{"apply.attempt", 0}, {"apply.history", 0}};
const struct fy_store_schema fy_apply_schema = {"apply", tables, FY_ARRAY_LEN(tables), NULL, 0};

#define ATTEMPT (&tables[0])
#define HISTORY (&tables[1])
#define RECORD_KEY "state"
#define RECORD_MAX 65536
#define RETRY_MAX_MS 300000u
#define ORPHAN_POLL_MS 200u
#define DEFAULT_APPLY_TIMEOUT_MS 600000u
#define DEFAULT_HEALTH_TIMEOUT_MS 60000u
#define DEFAULT_RETRY_MS 1000u

static const char *const state_names[] = {
    [FY_APPLY_IDLE] = "idle",
    [FY_APPLY_DOWNLOADING] = "downloading",
    [FY_APPLY_STAGED] = "staged",
    [FY_APPLY_ACTIVATING] = "activating",
    [FY_APPLY_VERIFYING] = "verifying",
    [FY_APPLY_SUCCESS] = "success",
    [FY_APPLY_ROLLING_BACK] = "rolling_back",
    [FY_APPLY_ROLLED_BACK] = "rolled_back",
    [FY_APPLY_FAILED] = "failed",
};

const char *fy_apply_state_name(enum fy_apply_state s) {
  if ((unsigned)s >= FY_ARRAY_LEN(state_names))
    return "unknown";
  return state_names[s];
}

int fy_apply_state_parse(const char *name, enum fy_apply_state *out) {
  for (size_t i = 0; i < FY_ARRAY_LEN(state_names); i++)
    if (strcmp(name, state_names[i]) == 0) {
      *out = (enum fy_apply_state)i;
      return 0;
    }
  return FY_EINVAL;
}

static bool is_resting(enum fy_apply_state s) {
  return s == FY_APPLY_IDLE || s == FY_APPLY_SUCCESS || s == FY_APPLY_ROLLED_BACK || s == FY_APPLY_FAILED;
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void copy_str(char *dst, size_t cap, const char *src) {
  snprintf(dst, cap, "%s", src ? src : "");
}

/* ---- the record ---------------------------------------------------------------- */

enum ftype { F_STR, F_U64, F_INT, F_SHA, F_STATE };

struct field {
  const char *name;
  enum ftype type;
  size_t off, cap;
};

#define STR(n, m)                                                                                            \
  { n, F_STR, offsetof(struct fy_apply_record, m), sizeof(((struct fy_apply_record *)0)->m) }
static const struct field fields[] = {
    {"state", F_STATE, offsetof(struct fy_apply_record, state), 0},
    STR("id", art.id),
    STR("kind", art.kind),
    STR("version", art.version),
    STR("uri", art.uri),
    {"sha256", F_SHA, offsetof(struct fy_apply_record, art.sha256), 32},
    {"size", F_U64, offsetof(struct fy_apply_record, art.size), 0},
    STR("path", artifact_path),
    STR("prev_version", previous_version),
    STR("prev_artifact", previous_artifact),
    STR("prev_link", previous_link),
    STR("inst_version", installed_version),
    STR("inst_artifact", installed_artifact),
    STR("inst_prev", installed_previous),
    {"started", F_U64, offsetof(struct fy_apply_record, started_at), 0},
    {"updated", F_U64, offsetof(struct fy_apply_record, updated_at), 0},
    {"exit", F_INT, offsetof(struct fy_apply_record, exit_code), 0},
    STR("msg", message),
};
#undef STR

int fy_apply_record_encode(const struct fy_apply_record *r, struct fy_buf *out, struct fy_err *err) {
  const uint8_t *base = (const uint8_t *)r;
  for (size_t i = 0; i < FY_ARRAY_LEN(fields); i++)
    if (fields[i].type == F_STR && !memchr(base + fields[i].off, '\0', fields[i].cap))
      return fy_err_set(err, FY_EINVAL, "apply record: %s is not NUL-terminated", fields[i].name);
  size_t old = out->len;
  msgpack_packer pk;
  msgpack_packer_init(&pk, out, fy_mp_buf_write);
  int bad = msgpack_pack_map(&pk, FY_ARRAY_LEN(fields));
  for (size_t i = 0; !bad && i < FY_ARRAY_LEN(fields); i++) {
    const struct field *f = &fields[i];
    const void *p = base + f->off;
    bad = msgpack_pack_str_with_body(&pk, f->name, strlen(f->name));
    if (bad)
      break;
    switch (f->type) {
    case F_STR:
      bad = msgpack_pack_str_with_body(&pk, p, strlen(p));
      break;
    case F_U64: {
      uint64_t v;
      memcpy(&v, p, sizeof(v));
      bad = msgpack_pack_uint64(&pk, v);
      break;
    }
    case F_INT: {
      int v;
      memcpy(&v, p, sizeof(v));
      bad = msgpack_pack_int64(&pk, v);
      break;
    }
    case F_SHA:
      bad = msgpack_pack_bin_with_body(&pk, p, 32);
      break;
    case F_STATE: {
      const char *name = fy_apply_state_name(r->state);
      bad = msgpack_pack_str_with_body(&pk, name, strlen(name));
      break;
    }
    }
  }
  if (bad) {
    out->len = old;
    return fy_err_set(err, FY_ENOMEM, "apply record: cannot encode");
  }
  return 0;
}

static const char *name_of(const struct fy_mpshape_pos *pos, char *out, size_t size, const void *user) {
  (void)user;
  if (pos->in_field)
    snprintf(out, size, "apply record: element %zu", pos->field);
  else
    snprintf(out, size, "apply record");
  return out;
}

static int decode_field(const struct field *f, const msgpack_object *v, struct fy_apply_record *r,
                        struct fy_err *err) {
  uint8_t *p = (uint8_t *)r + f->off;
  switch (f->type) {
  case F_STR:
    if (v->type != MSGPACK_OBJECT_STR)
      return fy_err_set(err, FY_EINVAL, "apply record: %s is not a string", f->name);
    if (v->via.str.size >= f->cap)
      return fy_err_set(err, FY_EINVAL, "apply record: %s is longer than %zu bytes", f->name, f->cap - 1);
    if (memchr(v->via.str.ptr, '\0', v->via.str.size))
      return fy_err_set(err, FY_EINVAL, "apply record: %s contains a NUL byte", f->name);
    memcpy(p, v->via.str.ptr, v->via.str.size);
    p[v->via.str.size] = '\0';
    return 0;
  case F_U64:
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
      return fy_err_set(err, FY_EINVAL, "apply record: %s is not an unsigned integer", f->name);
    memcpy(p, &v->via.u64, sizeof(uint64_t));
    return 0;
  case F_INT: {
    int64_t x;
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= INT32_MAX)
      x = (int64_t)v->via.u64;
    else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && v->via.i64 >= INT32_MIN)
      x = v->via.i64;
    else
      return fy_err_set(err, FY_EINVAL, "apply record: %s is not a 32-bit integer", f->name);
    int i = (int)x;
    memcpy(p, &i, sizeof(i));
    return 0;
  }
  case F_SHA:
    if (v->type != MSGPACK_OBJECT_BIN || v->via.bin.size != 32)
      return fy_err_set(err, FY_EINVAL, "apply record: %s is not 32 bytes of bin", f->name);
    memcpy(p, v->via.bin.ptr, 32);
    return 0;
  case F_STATE: {
    char name[32];
    if (v->type != MSGPACK_OBJECT_STR || v->via.str.size >= sizeof(name))
      return fy_err_set(err, FY_EINVAL, "apply record: state is not a state name");
    memcpy(name, v->via.str.ptr, v->via.str.size);
    name[v->via.str.size] = '\0';
    if (fy_apply_state_parse(name, &r->state) < 0)
      return fy_err_set(err, FY_EINVAL, "apply record: state '%s' is unknown", name);
    return 0;
  }
  }
  return FY_EINVAL;
}

int fy_apply_record_decode(const uint8_t *p, size_t len, struct fy_apply_record *out, struct fy_err *err) {
  memset(out, 0, sizeof(*out));
  if (len > RECORD_MAX)
    return fy_err_set(err, FY_EINVAL, "apply record: %zu bytes, at most %d", len, RECORD_MAX);
  int rc = fy_mpshape_check(p, len, 2, 64, "record", name_of, NULL, err);
  if (rc < 0)
    return rc;
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  if (msgpack_unpack_next(&u, (const char *)p, len, &off) != MSGPACK_UNPACK_SUCCESS) {
    msgpack_unpacked_destroy(&u);
    return fy_err_set(err, FY_EINVAL, "apply record: not msgpack");
  }
  rc = 0;
  uint32_t seen = 0;
  if (u.data.type != MSGPACK_OBJECT_MAP) {
    rc = fy_err_set(err, FY_EINVAL, "apply record: not a map");
    goto out;
  }
  for (uint32_t i = 0; i < u.data.via.map.size; i++) {
    const msgpack_object *k = &u.data.via.map.ptr[i].key;
    const msgpack_object *v = &u.data.via.map.ptr[i].val;
    if (k->type != MSGPACK_OBJECT_STR) {
      rc = fy_err_set(err, FY_EINVAL, "apply record: a key is not a string");
      goto out;
    }
    for (size_t j = 0; j < FY_ARRAY_LEN(fields); j++) {
      if (strlen(fields[j].name) != k->via.str.size ||
          memcmp(fields[j].name, k->via.str.ptr, k->via.str.size) != 0)
        continue;
      if (seen & (1u << j)) {
        rc = fy_err_set(err, FY_EINVAL, "apply record: duplicate key '%s'", fields[j].name);
        goto out;
      }
      seen |= 1u << j;
      rc = decode_field(&fields[j], v, out, err);
      if (rc < 0)
        goto out;
    }
  }
  if (!(seen & 1u))
    rc = fy_err_set(err, FY_EINVAL, "apply record: state is missing");
out:
  msgpack_unpacked_destroy(&u);
  return rc;
}

int fy_apply_record_get(struct fy_txn *t, struct fy_apply_record *out) {
  struct fy_bytes v;
  int rc = fy_store_get(t, fy_txn_table(t, ATTEMPT), fy_bytes_str(RECORD_KEY), &v);
  if (rc <= 0) {
    memset(out, 0, sizeof(*out));
    return rc;
  }
  rc = fy_apply_record_decode(v.p, v.n, out, fy_txn_err(t));
  return rc < 0 ? rc : 1;
}

int fy_apply_record_put(struct fy_txn *t, const struct fy_apply_record *r) {
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  int rc = fy_apply_record_encode(r, &b, fy_txn_err(t));
  if (rc < 0)
    return rc;
  return fy_store_put(t, fy_txn_table(t, ATTEMPT), fy_bytes_str(RECORD_KEY), fy_bytes_of(b.data, b.len));
}

/* Appends r after the last finished attempt and drops the oldest beyond
 * FY_APPLY_HISTORY_MAX. */
static int history_append(struct fy_txn *t, const struct fy_apply_record *r) {
  struct fy_table *tb = fy_txn_table(t, HISTORY);
  struct fy_cursor *c;
  int rc = fy_cursor_open(t, tb, fy_bytes_of(NULL, 0), &c);
  if (rc < 0)
    return rc;
  struct fy_bytes k, v;
  uint64_t next = 1;
  rc = fy_cursor_prev(c, &k, &v);
  if (rc == 1 && k.n == 8)
    next = fy_be64_get(k.p) + 1;
  fy_cursor_close(c);
  if (rc < 0)
    return rc;
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  rc = fy_apply_record_encode(r, &b, fy_txn_err(t));
  if (rc < 0)
    return rc;
  uint8_t key[8];
  fy_be64_put(key, next);
  rc = fy_store_put(t, tb, fy_bytes_of(key, 8), fy_bytes_of(b.data, b.len));
  if (rc < 0)
    return rc;
  uint64_t n;
  rc = fy_store_count(t, tb, &n);
  if (rc < 0 || n <= FY_APPLY_HISTORY_MAX)
    return rc;
  rc = fy_cursor_open(t, tb, fy_bytes_of(NULL, 0), &c);
  if (rc < 0)
    return rc;
  for (uint64_t i = 0; i < n - FY_APPLY_HISTORY_MAX && rc >= 0; i++) {
    rc = fy_cursor_next(c, &k, &v);
    if (rc == 1)
      rc = fy_cursor_del(c);
  }
  fy_cursor_close(c);
  return rc < 0 ? rc : 0;
}

int fy_apply_history_each(struct fy_txn *t, fy_apply_history_fn fn, void *user) {
  struct fy_cursor *c;
  int rc = fy_cursor_open(t, fy_txn_table(t, HISTORY), fy_bytes_of(NULL, 0), &c);
  if (rc < 0)
    return rc;
  struct fy_bytes k, v;
  int count = 0;
  struct fy_apply_record *r = malloc(sizeof(*r));
  if (!r) {
    fy_cursor_close(c);
    return fy_err_set(fy_txn_err(t), FY_ENOMEM, "apply history: out of memory");
  }
  while ((rc = fy_cursor_next(c, &k, &v)) == 1) {
    if (k.n != 8) {
      rc = fy_err_set(fy_txn_err(t), FY_EINVAL, "apply history: a key is not 8 bytes");
      break;
    }
    rc = fy_apply_record_decode(v.p, v.n, r, fy_txn_err(t));
    if (rc < 0)
      break;
    rc = fn(fy_be64_get(k.p), r, user);
    if (rc < 0)
      break;
    count++;
  }
  free(r);
  fy_cursor_close(c);
  return rc < 0 ? rc : count;
}

/* ---- the engine ------------------------------------------------------------------ */

enum job_kind { JOB_ACTIVATE, JOB_ROLLBACK, JOB_HEALTH };

struct child {
  struct fy_apply *a;
  uv_process_t proc;
  uv_pipe_t pipe;
  int open_handles;
  char rbuf[4096];
};

struct dl_token {
  struct fy_apply *a; /* NULL once the engine closed: the late done() only frees this */
};

typedef void (*step_fn)(struct fy_apply *a);
typedef void (*job_done_fn)(struct fy_apply *a, bool ok, int exit_code, const char *msg);

struct fy_apply {
  struct fy_apply_config cfg;
  const char *nix_store, *nix_env, *profile;
  uint64_t apply_timeout, health_timeout, retry_ms, retry_cur;
  struct fy_apply_record rec; /* as last committed */

  uv_timer_t step, deadline, killer;
  step_fn step_fn;

  /* the job: steps run one after the other under one deadline */
  enum job_kind job;
  const char *const *steps[3];
  size_t nsteps, cur;
  uint64_t job_timeout;
  bool timed_out;
  job_done_fn job_done;
  struct child *child;
  int pid;
  char tail[FY_APPLY_TAIL_MAX + 1];
  size_t tail_len;
  uint32_t health_left;

  /* the nixos applier's argv */
  const char *nixv[3][6];
  char nix_switch[FY_APPLY_URI_MAX + 64];

  struct dl_token *dl;
  uv_work_t work;
  char vpath[FY_APPLY_PATH_MAX + 1];
  uint64_t vsize;
  uint8_t vsha[32];
  int vcode; /* 0 ok, FY_EINVAL mismatch (permanent), FY_EIO/FY_ENOENT (retry) */
  char vmsg[FY_APPLY_MESSAGE_MAX + 1];

  /* an applier a previous run of the agent left running (childmark.h) */
  char mark_path[FY_APPLY_PATH_MAX + 1];
  pid_t orphan;
  uint64_t orphan_deadline;

  int live; /* outstanding handles, children and work that reference a */
  bool closing;
  void (*close_done)(void *user);
  void *close_user;
};

static void resume(struct fy_apply *a);
static void begin_activate(struct fy_apply *a);
static void begin_health(struct fy_apply *a);
static void begin_rollback(struct fy_apply *a);

static void maybe_free(struct fy_apply *a) {
  if (!a->closing || a->live > 0)
    return;
  void (*done)(void *) = a->close_done;
  void *user = a->close_user;
  free(a);
  if (done)
    done(user);
}

static void step_cb(uv_timer_t *t) {
  struct fy_apply *a = t->data;
  step_fn fn = a->step_fn;
  a->step_fn = NULL;
  if (fn && !a->closing)
    fn(a);
}

static void schedule(struct fy_apply *a, step_fn fn, uint64_t delay_ms) {
  a->step_fn = fn;
  uv_timer_start(&a->step, step_cb, delay_ms, 0);
}

static void schedule_retry(struct fy_apply *a) {
  uint64_t d = a->retry_cur;
  a->retry_cur = a->retry_cur * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : a->retry_cur * 2;
  schedule(a, resume, d);
}

/* ---- transitions ---- */

struct commit_ctx {
  const struct fy_apply *a;
  const struct fy_apply_record *next;
  const struct fy_apply_report *report;
};

static int commit_txn(struct fy_txn *t, void *user) {
  const struct commit_ctx *c = user;
  int rc = fy_apply_record_put(t, c->next);
  if (rc >= 0 && !is_resting(c->report->from) && is_resting(c->next->state))
    rc = history_append(t, c->next);
  if (rc >= 0 && c->a->cfg.on_transition)
    rc = c->a->cfg.on_transition(t, c->report, c->a->cfg.user);
  return rc < 0 ? rc : 0;
}

/* Deletes the staged files no longer needed: every *.artifact in work_dir
 * but the installed one. */
static void prune_artifacts(struct fy_apply *a) {
  DIR *d = opendir(a->cfg.work_dir);
  if (!d)
    return;
  struct dirent *e;
  while ((e = readdir(d))) {
    size_t n = strlen(e->d_name);
    if (n < 9 || strcmp(e->d_name + n - 9, ".artifact") != 0)
      continue;
    char path[FY_APPLY_PATH_MAX + 256 + 2];
    snprintf(path, sizeof(path), "%s/%s", a->cfg.work_dir, e->d_name);
    if (strcmp(path, a->rec.installed_artifact) != 0 && unlink(path) == 0)
      fy_debug(a->cfg.log, "apply.prune", "path", path);
  }
  closedir(d);
}

/* Records next (state next->state) coming from `from`, with the report. */
static int commit(struct fy_apply *a, struct fy_apply_record *next, enum fy_apply_state from, int exit_code,
                  const char *tail, const char *msg, struct fy_err *err) {
  next->updated_at = now_ms();
  next->exit_code = exit_code;
  copy_str(next->message, sizeof(next->message), msg);
  if (next->state == FY_APPLY_SUCCESS) {
    copy_str(next->installed_previous, sizeof(next->installed_previous), a->rec.installed_version);
    copy_str(next->installed_version, sizeof(next->installed_version), next->art.version);
    copy_str(next->installed_artifact, sizeof(next->installed_artifact), next->artifact_path);
  }
  struct fy_apply_report *r = calloc(1, sizeof(*r));
  if (!r)
    return fy_err_set(err, FY_ENOMEM, "apply: out of memory");
  copy_str(r->attempt_id, sizeof(r->attempt_id), next->art.id);
  r->from = from;
  r->to = next->state;
  copy_str(r->version, sizeof(r->version), next->art.version);
  copy_str(r->previous_version, sizeof(r->previous_version), next->previous_version);
  r->exit_code = exit_code;
  copy_str(r->output_tail, sizeof(r->output_tail), tail);
  copy_str(r->message, sizeof(r->message), msg);
  r->at = next->updated_at;
  struct commit_ctx c = {a, next, r};
  int rc = fy_store_write(a->cfg.store, commit_txn, &c, err);
  free(r);
  if (rc < 0)
    return rc;
  fy_info(a->cfg.log, "apply.transition", "attempt", next->art.id, "from", fy_apply_state_name(from), "to",
          fy_apply_state_name(next->state), "version", next->art.version, "message", next->message);
  a->rec = *next;
  a->retry_cur = a->retry_ms;
  if (is_resting(next->state))
    prune_artifacts(a);
  return 0;
}

/* As commit from the current state; on failure logs it and resumes from the
 * record (still the previous state) later. Returns < 0 then: stop. */
static int transition_rec(struct fy_apply *a, struct fy_apply_record *next, int exit_code, const char *tail,
                          const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static int transition_rec(struct fy_apply *a, struct fy_apply_record *next, int exit_code, const char *tail,
                          const char *fmt, ...) {
  char msg[FY_APPLY_MESSAGE_MAX + 1];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  struct fy_err err = {0};
  int rc = commit(a, next, a->rec.state, exit_code, tail, msg, &err);
  if (rc < 0) {
    fy_error(a->cfg.log, "apply.record_failed", "attempt", a->rec.art.id, "from",
             fy_apply_state_name(a->rec.state), "to", fy_apply_state_name(next->state), "error", err.msg);
    schedule_retry(a);
  }
  return rc;
}

#define transition(a, to, code, tail, ...)                                                                   \
  ({                                                                                                         \
    struct fy_apply_record *next_ = malloc(sizeof(*next_));                                                  \
    int trc_ = FY_ENOMEM;                                                                                    \
    if (next_) {                                                                                             \
      *next_ = (a)->rec;                                                                                     \
      next_->state = (to);                                                                                   \
      trc_ = transition_rec((a), next_, (code), (tail), __VA_ARGS__);                                        \
      free(next_);                                                                                           \
    } else {                                                                                                 \
      schedule_retry(a);                                                                                     \
    }                                                                                                        \
    trc_;                                                                                                    \
  })

/* ---- children ---- */

static void tail_append(struct fy_apply *a, const char *p, size_t n) {
  const size_t cap = FY_APPLY_TAIL_MAX;
  if (n >= cap) {
    p += n - cap;
    n = cap;
    a->tail_len = 0;
  } else if (a->tail_len + n > cap) {
    size_t drop = a->tail_len + n - cap;
    memmove(a->tail, a->tail + drop, a->tail_len - drop);
    a->tail_len -= drop;
  }
  for (size_t i = 0; i < n; i++) /* the tail travels as a string */
    a->tail[a->tail_len + i] = p[i] ? p[i] : '?';
  a->tail_len += n;
  a->tail[a->tail_len] = '\0';
}

static void child_closed(uv_handle_t *h) {
  struct child *c = h->data;
  if (--c->open_handles > 0)
    return;
  struct fy_apply *a = c->a;
  free(c);
  a->live--;
  maybe_free(a);
}

static void child_close(struct child *c) {
  uv_close((uv_handle_t *)&c->pipe, child_closed);
  uv_close((uv_handle_t *)&c->proc, child_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  struct child *c = h->data;
  *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  struct child *c = s->data;
  if (n > 0)
    tail_append(c->a, buf->base, (size_t)n);
  else if (n < 0)
    uv_read_stop(s);
}

static const char *step_name(const struct fy_apply *a) {
  return a->steps[a->cur][0];
}

static const char *job_name(enum job_kind k) {
  return k == JOB_ACTIVATE ? "applier" : k == JOB_ROLLBACK ? "rollback" : "health check";
}

static void job_finish(struct fy_apply *a, bool ok, int exit_code, const char *msg) {
  uv_timer_stop(&a->deadline);
  uv_timer_stop(&a->killer);
  a->job_done(a, ok, exit_code, msg);
}

static void spawn_step(struct fy_apply *a);

static void on_exit_cb(uv_process_t *p, int64_t status, int sig) {
  struct child *c = p->data;
  struct fy_apply *a = c->a;
  /* Output still in the pipe when the child exits: read it now rather than
   * wait for EOF, which a grandchild holding the pipe could delay forever. */
  uv_read_stop((uv_stream_t *)&c->pipe);
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)&c->pipe, &fd) == 0) {
    ssize_t n;
    while ((n = read(fd, c->rbuf, sizeof(c->rbuf))) > 0)
      tail_append(a, c->rbuf, (size_t)n);
  }
  a->child = NULL;
  child_close(c);
  if (a->timed_out || a->closing)
    kill(-a->pid, SIGKILL); /* what is left of its process group */
  fy_childmark_clear(a->mark_path);
  if (a->closing)
    return;
  char msg[FY_APPLY_MESSAGE_MAX + 1];
  if (a->timed_out) {
    snprintf(msg, sizeof(msg), "%s: %s timed out after %" PRIu64 " ms", job_name(a->job), step_name(a),
             a->job_timeout);
    job_finish(a, false, -1, msg);
  } else if (sig) {
    snprintf(msg, sizeof(msg), "%s: %s was killed by signal %d", job_name(a->job), step_name(a), sig);
    job_finish(a, false, -1, msg);
  } else if (status != 0) {
    snprintf(msg, sizeof(msg), "%s: %s exited with %" PRId64, job_name(a->job), step_name(a), status);
    job_finish(a, false, (int)status, msg);
  } else if (++a->cur < a->nsteps) {
    spawn_step(a);
  } else {
    job_finish(a, true, 0, "");
  }
}

static bool is_ours(const char *entry) {
  static const char *const names[] = {
      "FERRY_ACTION=",           "FERRY_ARTIFACT=",          "FERRY_VERSION=",
      "FERRY_PREVIOUS_VERSION=", "FERRY_PREVIOUS_ARTIFACT=", "FERRY_ATTEMPT_ID="};
  for (size_t i = 0; i < FY_ARRAY_LEN(names); i++)
    if (strncmp(entry, names[i], strlen(names[i])) == 0)
      return true;
  return false;
}

/* The agent's environment with the FERRY_* variables of this job; one
 * allocation, freed by the caller. */
static char **make_env(const struct fy_apply *a) {
  static const char *const actions[] = {
      [JOB_ACTIVATE] = "activate", [JOB_ROLLBACK] = "rollback", [JOB_HEALTH] = "health"};
  const char *ours[][2] = {
      {"FERRY_ACTION", actions[a->job]},
      {"FERRY_ARTIFACT", a->rec.artifact_path},
      {"FERRY_VERSION", a->rec.art.version},
      {"FERRY_PREVIOUS_VERSION", a->rec.previous_version},
      {"FERRY_PREVIOUS_ARTIFACT", a->rec.previous_artifact},
      {"FERRY_ATTEMPT_ID", a->rec.art.id},
  };
  size_t n = 0, bytes = 0;
  for (char **e = environ; e && *e; e++)
    if (!is_ours(*e)) {
      n++;
      bytes += strlen(*e) + 1;
    }
  for (size_t i = 0; i < FY_ARRAY_LEN(ours); i++)
    bytes += strlen(ours[i][0]) + strlen(ours[i][1]) + 2;
  size_t slots = n + FY_ARRAY_LEN(ours) + 1;
  char **env = malloc(slots * sizeof(char *) + bytes);
  if (!env)
    return NULL;
  char *p = (char *)(env + slots);
  size_t k = 0;
  for (char **e = environ; e && *e; e++)
    if (!is_ours(*e)) {
      size_t len = strlen(*e) + 1;
      memcpy(p, *e, len);
      env[k++] = p;
      p += len;
    }
  for (size_t i = 0; i < FY_ARRAY_LEN(ours); i++) {
    int len = sprintf(p, "%s=%s", ours[i][0], ours[i][1]);
    env[k++] = p;
    p += len + 1;
  }
  env[k] = NULL;
  return env;
}

static void ensure_work_dir(const struct fy_apply *a) {
  if (mkdir(a->cfg.work_dir, 0700) < 0 && errno != EEXIST)
    fy_warn(a->cfg.log, "apply.work_dir", "path", a->cfg.work_dir, "error", strerror(errno));
}

static void spawn_step(struct fy_apply *a) {
  char msg[FY_APPLY_MESSAGE_MAX + 1];
  const char *const *argv = a->steps[a->cur];
  struct child *c = calloc(1, sizeof(*c));
  char **env = make_env(a);
  uv_file fds[2] = {-1, -1};
  int rc = !c || !env ? UV_ENOMEM : uv_pipe(fds, UV_NONBLOCK_PIPE, 0);
  if (rc < 0) {
    free(c);
    free(env);
    snprintf(msg, sizeof(msg), "%s: cannot run %s: %s", job_name(a->job), argv[0], uv_strerror(rc));
    job_finish(a, false, -1, msg);
    return;
  }
  c->a = a;
  c->proc.data = c;
  c->pipe.data = c;
  uv_pipe_init(a->cfg.loop, &c->pipe, 0);
  uv_pipe_open(&c->pipe, fds[0]);
  char **args; /* libuv's type; it does not write through it */
  memcpy(&args, &argv, sizeof(args));
  uv_stdio_container_t stdio[3] = {
      {.flags = UV_IGNORE},
      {.flags = UV_INHERIT_FD, .data.fd = fds[1]},
      {.flags = UV_INHERIT_FD, .data.fd = fds[1]},
  };
  uv_process_options_t opts = {
      .exit_cb = on_exit_cb,
      .file = argv[0],
      .args = args,
      .env = env,
      .flags = UV_PROCESS_DETACHED, /* its own process group: a timeout kills its children too */
      .stdio_count = 3,
      .stdio = stdio,
  };
  rc = uv_spawn(a->cfg.loop, &c->proc, &opts);
  close(fds[1]);
  free(env);
  c->open_handles = 2;
  a->live++;
  if (rc < 0) {
    child_close(c);
    snprintf(msg, sizeof(msg), "%s: cannot run %s: %s", job_name(a->job), argv[0], uv_strerror(rc));
    fy_warn(a->cfg.log, "apply.spawn_failed", "command", argv[0], "error", uv_strerror(rc));
    job_finish(a, false, -1, msg);
    return;
  }
  a->child = c;
  a->pid = c->proc.pid;
  ensure_work_dir(a);
  struct fy_err err = {0};
  if (fy_childmark_write(a->mark_path, a->pid, &err) < 0)
    fy_warn(a->cfg.log, "apply.mark_failed", "reason", err.msg);
  uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

static void killer_cb(uv_timer_t *t) {
  struct fy_apply *a = t->data;
  if (a->child)
    kill(-a->pid, SIGKILL);
}

static void deadline_cb(uv_timer_t *t) {
  struct fy_apply *a = t->data;
  if (!a->child)
    return;
  a->timed_out = true;
  fy_warn(a->cfg.log, "apply.timeout", "job", job_name(a->job), "command", step_name(a));
  kill(-a->pid, SIGTERM);
  uv_timer_start(&a->killer, killer_cb, FY_APPLY_KILL_GRACE_MS, 0);
}

static void run_job(struct fy_apply *a, enum job_kind kind, size_t nsteps, uint64_t timeout,
                    job_done_fn done) {
  a->job = kind;
  a->nsteps = nsteps;
  a->cur = 0;
  a->job_timeout = timeout;
  a->timed_out = false;
  a->job_done = done;
  a->tail_len = 0;
  a->tail[0] = '\0';
  uv_timer_start(&a->deadline, deadline_cb, timeout, 0);
  spawn_step(a);
}

/* ---- the states ---- */

static void rollback_done(struct fy_apply *a, bool ok, int exit_code, const char *msg) {
  if (ok && a->rec.previous_version[0])
    transition(a, FY_APPLY_ROLLED_BACK, exit_code, a->tail, "rolled back to '%s'", a->rec.previous_version);
  else if (ok)
    transition(a, FY_APPLY_ROLLED_BACK, exit_code, a->tail, "rolled back (no earlier version known)");
  else
    transition(a, FY_APPLY_FAILED, exit_code, a->tail, "%s", msg);
}

static void begin_rollback(struct fy_apply *a) {
  if (strcmp(a->rec.art.kind, "nixos") == 0) {
    size_t n = 0;
    char link[FY_APPLY_PATH_MAX + 1] = "";
    ssize_t len = readlink(a->profile, link, sizeof(link) - 1);
    if (len >= 0)
      link[len] = '\0';
    /* Rolling back twice would go one generation too far: only when the
     * profile moved since the activation began. */
    if (strcmp(link, a->rec.previous_link) != 0) {
      a->nixv[0][0] = a->nix_env;
      a->nixv[0][1] = "-p";
      a->nixv[0][2] = a->profile;
      a->nixv[0][3] = "--rollback";
      a->nixv[0][4] = NULL;
      a->steps[n++] = a->nixv[0];
    }
    snprintf(a->nix_switch, sizeof(a->nix_switch), "%s/bin/switch-to-configuration", a->profile);
    a->nixv[1][0] = a->nix_switch;
    a->nixv[1][1] = "switch";
    a->nixv[1][2] = NULL;
    a->steps[n++] = a->nixv[1];
    run_job(a, JOB_ROLLBACK, n, a->apply_timeout, rollback_done);
  } else {
    a->steps[0] = a->cfg.apply_command;
    run_job(a, JOB_ROLLBACK, 1, a->apply_timeout, rollback_done);
  }
}

static void run_health(struct fy_apply *a);

static void health_done(struct fy_apply *a, bool ok, int exit_code, const char *msg) {
  if (ok) {
    transition(a, FY_APPLY_SUCCESS, exit_code, a->tail, "healthy at '%s'", a->rec.art.version);
    return;
  }
  if (a->health_left > 0) {
    a->health_left--;
    fy_info(a->cfg.log, "apply.health_retry", "attempt", a->rec.art.id, "error", msg);
    schedule(a, run_health, a->cfg.health_interval_ms);
    return;
  }
  if (transition(a, FY_APPLY_ROLLING_BACK, exit_code, a->tail, "%s", msg) == 0)
    begin_rollback(a);
}

static void run_health(struct fy_apply *a) {
  if (!a->cfg.health_command) {
    a->tail[0] = '\0';
    health_done(a, true, 0, "");
    return;
  }
  a->steps[0] = a->cfg.health_command;
  run_job(a, JOB_HEALTH, 1, a->health_timeout, health_done);
}

static void begin_health(struct fy_apply *a) {
  a->health_left = a->cfg.health_retries;
  run_health(a);
}

static void activate_done(struct fy_apply *a, bool ok, int exit_code, const char *msg) {
  if (ok) {
    if (transition(a, FY_APPLY_VERIFYING, exit_code, a->tail, "activated '%s'", a->rec.art.version) == 0)
      begin_health(a);
  } else if (transition(a, FY_APPLY_ROLLING_BACK, exit_code, a->tail, "%s", msg) == 0) {
    begin_rollback(a);
  }
}

static void begin_activate(struct fy_apply *a) {
  struct fy_apply_record *next = malloc(sizeof(*next));
  if (!next) {
    schedule_retry(a);
    return;
  }
  *next = a->rec;
  next->state = FY_APPLY_ACTIVATING;
  bool nixos = strcmp(a->rec.art.kind, "nixos") == 0;
  next->previous_link[0] = '\0';
  if (nixos) {
    ssize_t len = readlink(a->profile, next->previous_link, sizeof(next->previous_link) - 1);
    next->previous_link[len >= 0 ? len : 0] = '\0';
  }
  int rc = transition_rec(a, next, -1, "", "activating '%s'", a->rec.art.version);
  free(next);
  if (rc < 0)
    return;
  if (nixos) {
    const char *uri = a->rec.art.uri;
    snprintf(a->nix_switch, sizeof(a->nix_switch), "%s/bin/switch-to-configuration", uri);
    const char *v[3][6] = {{a->nix_store, "--realise", uri, NULL},
                           {a->nix_env, "-p", a->profile, "--set", uri, NULL},
                           {a->nix_switch, "switch", NULL}};
    memcpy(a->nixv, v, sizeof(v));
    for (size_t i = 0; i < 3; i++)
      a->steps[i] = a->nixv[i];
    run_job(a, JOB_ACTIVATE, 3, a->apply_timeout, activate_done);
  } else {
    a->steps[0] = a->cfg.apply_command;
    run_job(a, JOB_ACTIVATE, 1, a->apply_timeout, activate_done);
  }
}

static void verify_work(uv_work_t *w) {
  struct fy_apply *a = w->data;
  a->vcode = 0;
  int fd = open(a->vpath, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    a->vcode = errno == ENOENT ? FY_ENOENT : FY_EIO;
    snprintf(a->vmsg, sizeof(a->vmsg), "downloaded file %.300s: %s", a->vpath, strerror(errno));
    return;
  }
  crypto_hash_sha256_state st;
  crypto_hash_sha256_init(&st);
  uint64_t total = 0;
  uint8_t buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) {
    crypto_hash_sha256_update(&st, buf, (unsigned long long)n);
    total += (uint64_t)n;
  }
  int saved = errno;
  close(fd);
  if (n < 0) {
    a->vcode = FY_EIO;
    snprintf(a->vmsg, sizeof(a->vmsg), "downloaded file %.300s: %s", a->vpath, strerror(saved));
    return;
  }
  uint8_t got[32];
  crypto_hash_sha256_final(&st, got);
  if (total != a->vsize) {
    a->vcode = FY_EINVAL;
    snprintf(a->vmsg, sizeof(a->vmsg),
             "downloaded file %.300s: %" PRIu64 " bytes, the manifest says %" PRIu64, a->vpath, total,
             a->vsize);
  } else if (sodium_memcmp(got, a->vsha, 32) != 0) {
    a->vcode = FY_EINVAL;
    snprintf(a->vmsg, sizeof(a->vmsg), "downloaded file %.300s: sha256 mismatch", a->vpath);
  }
}

static void verify_after(uv_work_t *w, int status) {
  (void)status;
  struct fy_apply *a = w->data;
  a->live--;
  if (a->closing) {
    maybe_free(a);
    return;
  }
  if (a->vcode == FY_EINVAL) {
    unlink(a->vpath);
    transition(a, FY_APPLY_FAILED, -1, "", "%s", a->vmsg);
  } else if (a->vcode < 0) {
    fy_warn(a->cfg.log, "apply.download_retry", "attempt", a->rec.art.id, "error", a->vmsg);
    schedule_retry(a);
  } else if (transition(a, FY_APPLY_STAGED, -1, "", "downloaded and verified '%s'", a->rec.art.version) ==
             0) {
    begin_activate(a);
  }
}

static void download_done(int code, const char *msg, bool permanent, void *ctx) {
  struct dl_token *tok = ctx;
  struct fy_apply *a = tok->a;
  free(tok);
  if (!a)
    return;
  a->dl = NULL;
  if (code < 0 && permanent) {
    transition(a, FY_APPLY_FAILED, -1, "", "download: %s", msg ? msg : fy_strerror(code));
  } else if (code < 0) {
    fy_warn(a->cfg.log, "apply.download_retry", "attempt", a->rec.art.id, "error",
            msg ? msg : fy_strerror(code));
    schedule_retry(a);
  } else {
    copy_str(a->vpath, sizeof(a->vpath), a->rec.artifact_path);
    a->vsize = a->rec.art.size;
    memcpy(a->vsha, a->rec.art.sha256, 32);
    a->work.data = a;
    int rc = uv_queue_work(a->cfg.loop, &a->work, verify_work, verify_after);
    if (rc < 0) {
      fy_warn(a->cfg.log, "apply.download_retry", "attempt", a->rec.art.id, "error", uv_strerror(rc));
      schedule_retry(a);
      return;
    }
    a->live++;
  }
}

static void begin_download(struct fy_apply *a) {
  if (strcmp(a->rec.art.kind, "nixos") == 0) {
    if (transition(a, FY_APPLY_STAGED, -1, "", "nixos: nix-store --realise fetches the closure") == 0)
      begin_activate(a);
    return;
  }
  if (!a->cfg.download) {
    transition(a, FY_APPLY_FAILED, -1, "", "download: no downloader configured");
    return;
  }
  ensure_work_dir(a);
  struct dl_token *tok = calloc(1, sizeof(*tok));
  if (!tok) {
    schedule_retry(a);
    return;
  }
  tok->a = a;
  a->dl = tok;
  int rc = a->cfg.download(&a->rec.art, a->rec.artifact_path, download_done, tok, a->cfg.user);
  if (rc < 0) {
    if (a->dl == tok) {
      a->dl = NULL;
      free(tok);
    }
    fy_warn(a->cfg.log, "apply.download_retry", "attempt", a->rec.art.id, "error", fy_strerror(rc));
    schedule_retry(a);
  }
}

/* An applier that a previous run of the agent started may still be running
 * (its own process group outlives the agent): true while recovery must wait
 * for it, polling. It may finish the activation; past the apply timeout its
 * group is killed. */
static bool wait_for_orphan(struct fy_apply *a) {
  if (a->child)
    return false; /* ours: this run started it */
  pid_t pid = 0;
  struct fy_err err = {0};
  int rc = fy_childmark_running(a->mark_path, &pid, &err);
  if (rc < 0)
    fy_warn(a->cfg.log, "apply.mark_unreadable", "reason", err.msg);
  if (rc <= 0) {
    a->orphan = 0;
    return false;
  }
  char pids[24];
  snprintf(pids, sizeof(pids), "%d", (int)pid);
  if (a->orphan != pid) {
    a->orphan = pid;
    a->orphan_deadline = now_ms() + a->apply_timeout;
    fy_warn(a->cfg.log, "apply.waiting_for_applier", "attempt", a->rec.art.id, "pid", pids, "state",
            fy_apply_state_name(a->rec.state));
  } else if (now_ms() >= a->orphan_deadline) {
    fy_warn(a->cfg.log, "apply.killing_applier", "attempt", a->rec.art.id, "pid", pids);
    kill(-pid, SIGKILL);
  }
  schedule(a, resume, ORPHAN_POLL_MS);
  return true;
}

/* What the record's state asks for (the table in apply.h). */
static void resume(struct fy_apply *a) {
  if ((a->rec.state == FY_APPLY_ACTIVATING || a->rec.state == FY_APPLY_ROLLING_BACK) && wait_for_orphan(a))
    return;
  switch (a->rec.state) {
  case FY_APPLY_DOWNLOADING:
    begin_download(a);
    break;
  case FY_APPLY_STAGED:
    begin_activate(a);
    break;
  case FY_APPLY_ACTIVATING:
  case FY_APPLY_VERIFYING:
    begin_health(a);
    break;
  case FY_APPLY_ROLLING_BACK:
    begin_rollback(a);
    break;
  case FY_APPLY_IDLE:
  case FY_APPLY_SUCCESS:
  case FY_APPLY_ROLLED_BACK:
  case FY_APPLY_FAILED:
    break;
  }
}

/* ---- the API ---- */

static int load_txn(struct fy_txn *t, void *user) {
  return fy_apply_record_get(t, user);
}

int fy_apply_open(struct fy_apply **out, const struct fy_apply_config *cfg, struct fy_err *err) {
  *out = NULL;
  if (!cfg->loop || !cfg->store || !cfg->work_dir || !cfg->work_dir[0])
    return fy_err_set(err, FY_EINVAL, "apply: config needs a loop, a store and a work_dir");
  if (strlen(cfg->work_dir) + 1 + FY_APPLY_ID_MAX + strlen(".artifact") > FY_APPLY_PATH_MAX)
    return fy_err_set(err, FY_EINVAL, "apply: work_dir %s is longer than %d bytes", cfg->work_dir,
                      FY_APPLY_PATH_MAX - 1 - FY_APPLY_ID_MAX - 9);
  if (cfg->apply_command && !cfg->apply_command[0])
    return fy_err_set(err, FY_EINVAL, "apply: apply_command is empty");
  if (cfg->health_command && !cfg->health_command[0])
    return fy_err_set(err, FY_EINVAL, "apply: health_command is empty");
  if (!fy_store_table(cfg->store, ATTEMPT))
    return fy_err_set(err, FY_EINVAL, "apply: the store was opened without fy_apply_schema");
  struct fy_apply *a = calloc(1, sizeof(*a));
  if (!a)
    return fy_err_set(err, FY_ENOMEM, "apply: out of memory");
  a->cfg = *cfg;
  snprintf(a->mark_path, sizeof(a->mark_path), "%s/applier.pid", cfg->work_dir);
  a->nix_store = cfg->nix_store ? cfg->nix_store : "nix-store";
  a->nix_env = cfg->nix_env ? cfg->nix_env : "nix-env";
  a->profile = cfg->profile ? cfg->profile : "/nix/var/nix/profiles/system";
  if (strlen(a->profile) > FY_APPLY_PATH_MAX - 40) {
    free(a);
    return fy_err_set(err, FY_EINVAL, "apply: profile is longer than %d bytes", FY_APPLY_PATH_MAX - 40);
  }
  a->apply_timeout = cfg->apply_timeout_ms ? cfg->apply_timeout_ms : DEFAULT_APPLY_TIMEOUT_MS;
  a->health_timeout = cfg->health_timeout_ms ? cfg->health_timeout_ms : DEFAULT_HEALTH_TIMEOUT_MS;
  a->retry_ms = a->retry_cur = cfg->retry_ms ? cfg->retry_ms : DEFAULT_RETRY_MS;
  int rc = fy_store_read(cfg->store, load_txn, &a->rec, err);
  if (rc < 0) {
    free(a);
    return rc;
  }
  if (rc == 1 && !is_resting(a->rec.state) && strcmp(a->rec.art.kind, "script") != 0 &&
      strcmp(a->rec.art.kind, "nixos") != 0) {
    rc = fy_err_set(err, FY_EINVAL, "apply record: kind '%s' is neither script nor nixos", a->rec.art.kind);
    free(a);
    return rc;
  }
  uv_timer_t *timers[] = {&a->step, &a->deadline, &a->killer};
  for (size_t i = 0; i < FY_ARRAY_LEN(timers); i++) {
    uv_timer_init(cfg->loop, timers[i]);
    timers[i]->data = a;
  }
  if (!is_resting(a->rec.state))
    fy_info(a->cfg.log, "apply.resume", "attempt", a->rec.art.id, "state", fy_apply_state_name(a->rec.state),
            "version", a->rec.art.version);
  schedule(a, resume, 0);
  *out = a;
  return 0;
}

static int check_str(const char *s, size_t cap, const char *what, bool need, struct fy_err *err) {
  if (!memchr(s, '\0', cap))
    return fy_err_set(err, FY_EINVAL, "apply: artifact %s is not NUL-terminated", what);
  if (need && !s[0])
    return fy_err_set(err, FY_EINVAL, "apply: artifact %s is empty", what);
  return 0;
}

int fy_apply_start(struct fy_apply *a, const struct fy_apply_artifact *art, struct fy_err *err) {
  if (a->closing)
    return fy_err_set(err, FY_EINVAL, "apply: closing");
  if (!is_resting(a->rec.state))
    return fy_err_set(err, FY_EEXIST, "apply: attempt '%s' (version '%s') is in progress: %s", a->rec.art.id,
                      a->rec.art.version, fy_apply_state_name(a->rec.state));
  int rc = check_str(art->id, sizeof(art->id), "id", true, err);
  rc = rc < 0 ? rc : check_str(art->kind, sizeof(art->kind), "kind", true, err);
  rc = rc < 0 ? rc : check_str(art->version, sizeof(art->version), "version", true, err);
  rc = rc < 0 ? rc : check_str(art->uri, sizeof(art->uri), "uri", true, err);
  if (rc < 0)
    return rc;
  if (art->id[0] == '.' ||
      strspn(art->id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") != strlen(art->id))
    return fy_err_set(err, FY_EINVAL, "apply: artifact id '%s' is not [A-Za-z0-9._-] (nor starts with '.')",
                      art->id);
  bool nixos = strcmp(art->kind, "nixos") == 0;
  if (!nixos && strcmp(art->kind, "script") != 0)
    return fy_err_set(err, FY_EINVAL, "apply: artifact kind '%s' is neither script nor nixos", art->kind);
  if (nixos && (art->uri[0] != '/' || strlen(art->uri) > FY_APPLY_PATH_MAX))
    return fy_err_set(err, FY_EINVAL, "apply: artifact uri '%s' is not an absolute store path", art->uri);
  if (!nixos && !a->cfg.download)
    return fy_err_set(err, FY_EUNSUPPORTED, "apply: script artifact '%s' but no downloader", art->id);
  if (!nixos && !a->cfg.apply_command)
    return fy_err_set(err, FY_EUNSUPPORTED, "apply: script artifact '%s' but no apply_command", art->id);

  struct fy_apply_record *next = calloc(1, sizeof(*next));
  if (!next)
    return fy_err_set(err, FY_ENOMEM, "apply: out of memory");
  next->state = FY_APPLY_DOWNLOADING;
  next->art = *art;
  if (nixos)
    copy_str(next->artifact_path, sizeof(next->artifact_path), art->uri);
  else
    snprintf(next->artifact_path, sizeof(next->artifact_path), "%s/%s.artifact", a->cfg.work_dir, art->id);
  copy_str(next->previous_version, sizeof(next->previous_version),
           a->rec.installed_version[0] || !a->cfg.base_version ? a->rec.installed_version
                                                               : a->cfg.base_version);
  copy_str(next->previous_artifact, sizeof(next->previous_artifact), a->rec.installed_artifact);
  copy_str(next->installed_version, sizeof(next->installed_version), a->rec.installed_version);
  copy_str(next->installed_artifact, sizeof(next->installed_artifact), a->rec.installed_artifact);
  copy_str(next->installed_previous, sizeof(next->installed_previous), a->rec.installed_previous);
  next->started_at = now_ms();
  char msg[FY_APPLY_MESSAGE_MAX + 1];
  snprintf(msg, sizeof(msg), "update to '%s'", art->version);
  rc = commit(a, next, FY_APPLY_IDLE, -1, "", msg, err);
  free(next);
  if (rc < 0)
    return rc;
  schedule(a, resume, 0);
  return 0;
}

enum fy_apply_state fy_apply_state(const struct fy_apply *a) {
  return a->rec.state;
}

const char *fy_apply_current_version(const struct fy_apply *a) {
  return a->rec.installed_version;
}

const char *fy_apply_previous_version(const struct fy_apply *a) {
  return a->rec.installed_previous;
}

void fy_apply_record(const struct fy_apply *a, struct fy_apply_record *out) {
  *out = a->rec;
}

static void timer_closed(uv_handle_t *h) {
  struct fy_apply *a = h->data;
  a->live--;
  maybe_free(a);
}

void fy_apply_close(struct fy_apply *a, void (*done)(void *user), void *user) {
  if (!a)
    return;
  a->closing = true;
  a->close_done = done;
  a->close_user = user;
  if (a->dl) {
    a->dl->a = NULL;
    a->dl = NULL;
  }
  if (a->child)
    kill(-a->pid, SIGKILL);
  uv_timer_t *timers[] = {&a->step, &a->deadline, &a->killer};
  for (size_t i = 0; i < FY_ARRAY_LEN(timers); i++) {
    a->live++;
    uv_close((uv_handle_t *)timers[i], timer_closed);
  }
}
