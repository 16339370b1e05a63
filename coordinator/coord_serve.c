#include "coordinator/coord_serve.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
/* One-at-a-time: uthash's default (Jenkins) falls through its switch, which
 * clang's -Wimplicit-fallthrough reports at every use. */
#define HASH_FUNCTION(keyptr, keylen, hashv) HASH_OAT(keyptr, keylen, hashv)
#include <uthash.h>
#include <uv.h>

#include "base/buf.h"
#include "base/cleanup.h"
#include "coordinator/coord_rollout.h"
#include "coordinator/coord_state.h"
#include "fleet/trust.h"
#include "node/node.h"
#include "rpc/rpc.h"

#define REQUEST_MAX 65536 /* bytes of one request */

#define CONNS_PER_PEER 8 /* connections of one peer we can close at once */
#define REVOKE_RETRY_MS 20
#define REVOKE_TRIES 250 /* 5 s for the revoking transaction to commit */

struct online {
  struct fy_nodeid id;
  unsigned nconns;
  struct fy_qconn *conns[CONNS_PER_PEER];
  UT_hash_handle hh;
};

/* Agents revoked on the thread pool, waiting for the loop to cut them off. */
struct revoked {
  struct fy_nodeid id;
  unsigned tries;
  struct revoked *next;
};

struct server {
  uv_loop_t loop;
  uv_signal_t sigint, sigterm;
  struct fy_node *node;
  struct fy_coord coord;
  struct online *online; /* uthash: peers with open connections */
  char addrs[8][FY_NODE_ADDR_TEXT_MAX];
  uv_mutex_t revoked_lock;
  struct revoked *revoked; /* guarded by revoked_lock */
  uv_async_t revoked_async;
  uv_timer_t revoked_timer;
  /* The rollout tick: on the thread pool, with a snapshot of who is online. */
  uv_timer_t tick_timer;
  uv_work_t tick_work;
  bool ticking;
  uint64_t started_at;           /* uv_now at start */
  bool tick_settled;             /* past SETTLE_MS when the tick was queued */
  struct fy_nodeid *tick_online; /* sorted */
  size_t tick_nonline;
  const struct fy_log *log;
  bool stopping;
  int closing;
};

/* ---- who is connected ---------------------------------------------------------- */

static bool is_online(const struct fy_nodeid *id, void *user) {
  struct server *s = user;
  struct online *o;
  HASH_FIND(hh, s->online, id->key, FY_NODEID_LEN, o);
  return o != NULL;
}

static void on_conn_open(struct fy_qconn *c, void *user) {
  struct server *s = user;
  const struct fy_nodeid *id = fy_qconn_peer(c);
  /* A revoked agent is turned away at the door, not only per call. */
  if (fy_coord_agent_status(&s->coord, id) == FY_AGENT_REVOKED) {
    char hex[FY_NODEID_SHORT_LEN + 1];
    fy_nodeid_to_short(id, hex);
    fy_info(s->log, "conn.refused", "peer", hex, "reason", "agent revoked");
    fy_qconn_close(c, FY_CLOSE_REVOKED, "agent revoked");
    return;
  }
  struct online *o;
  HASH_FIND(hh, s->online, id->key, FY_NODEID_LEN, o);
  if (!o) {
    o = calloc(1, sizeof(*o));
    if (!o)
      return;
    o->id = *id;
    HASH_ADD(hh, s->online, id.key, FY_NODEID_LEN, o);
  }
  if (o->nconns < CONNS_PER_PEER)
    o->conns[o->nconns++] = c;
}

static void on_conn_close(struct fy_qconn *c, const struct fy_qclose *why, void *user) {
  (void)why;
  struct server *s = user;
  struct online *o;
  HASH_FIND(hh, s->online, fy_qconn_peer(c)->key, FY_NODEID_LEN, o);
  if (!o)
    return;
  for (unsigned i = 0; i < o->nconns; i++)
    if (o->conns[i] == c) {
      o->conns[i] = o->conns[--o->nconns];
      break;
    }
  if (o->nconns == 0) {
    HASH_DEL(s->online, o);
    free(o);
  }
}

/* Thread pool: remember the agent; the loop closes its connections once the
 * revocation has committed. */
static void on_revoked(const struct fy_nodeid *agent, void *user) {
  struct server *s = user;
  struct revoked *r = calloc(1, sizeof(*r));
  if (!r)
    return; /* its next connection is refused anyway */
  r->id = *agent;
  uv_mutex_lock(&s->revoked_lock);
  r->next = s->revoked;
  s->revoked = r;
  uv_mutex_unlock(&s->revoked_lock);
  uv_async_send(&s->revoked_async);
}

static void on_revoked_timer(uv_timer_t *t);

static void cut_off_revoked(struct server *s) {
  uv_mutex_lock(&s->revoked_lock);
  struct revoked *list = s->revoked, *keep = NULL;
  s->revoked = NULL;
  uv_mutex_unlock(&s->revoked_lock);
  while (list) {
    struct revoked *r = list;
    list = r->next;
    if (fy_coord_agent_status(&s->coord, &r->id) != FY_AGENT_REVOKED) {
      /* Not committed yet (or it aborted): look again shortly. */
      if (++r->tries < REVOKE_TRIES) {
        r->next = keep;
        keep = r;
      } else {
        free(r);
      }
      continue;
    }
    struct online *o;
    HASH_FIND(hh, s->online, r->id.key, FY_NODEID_LEN, o);
    if (o) {
      char hex[FY_NODEID_SHORT_LEN + 1];
      fy_nodeid_to_short(&r->id, hex);
      fy_info(s->log, "conn.revoked", "peer", hex);
      struct fy_qconn *conns[CONNS_PER_PEER];
      unsigned n = o->nconns;
      /* Closing calls on_conn_close, which edits o->conns (and may free o). */
      memcpy(conns, o->conns, sizeof(conns));
      for (unsigned i = 0; i < n; i++)
        fy_qconn_close(conns[i], FY_CLOSE_REVOKED, "agent revoked");
    }
    free(r);
  }
  if (keep) {
    uv_mutex_lock(&s->revoked_lock);
    struct revoked *tail = keep;
    while (tail->next)
      tail = tail->next;
    tail->next = s->revoked;
    s->revoked = keep;
    uv_mutex_unlock(&s->revoked_lock);
    uv_timer_start(&s->revoked_timer, on_revoked_timer, REVOKE_RETRY_MS, 0);
  }
}

static void on_revoked_async(uv_async_t *a) {
  cut_off_revoked(a->data);
}
static void on_revoked_timer(uv_timer_t *t) {
  cut_off_revoked(t->data);
}

static void changed(void *user) {
  fy_node_kick(user);
}

/* ---- rollouts ---------------------------------------------------------------------- */

#define TICK_MS 500

static int id_cmp(const void *a, const void *b) {
  return memcmp(a, b, FY_NODEID_LEN);
}

/* After a restart, agents come back only when their keep-alive meets the
 * new endpoint's stateless reset (up to twice their keep-alive interval).
 * Until then "not connected" does not mean offline: nobody is skipped as
 * offline during this window (a truly offline agent then times out
 * instead of being skipped). */
#define SETTLE_MS 30000

static bool in_snapshot(const struct fy_nodeid *id, void *user) {
  struct server *s = user;
  if (!s->tick_settled)
    return true;
  return s->tick_nonline && bsearch(id, s->tick_online, s->tick_nonline, sizeof(*id), id_cmp) != NULL;
}

static void tick_work(uv_work_t *w) {
  struct server *s = w->data;
  struct fy_err err = {0};
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
  if (fy_coord_rollout_tick(&s->coord, now, in_snapshot, s, &err) < 0)
    fy_warn(s->log, "rollout.tick", "reason", err.msg);
}

static void tick_done(uv_work_t *w, int status) {
  (void)status;
  struct server *s = w->data;
  free(s->tick_online);
  s->tick_online = NULL;
  s->tick_nonline = 0;
  s->ticking = false;
}

static void on_tick(uv_timer_t *t) {
  struct server *s = t->data;
  if (s->ticking || s->stopping)
    return;
  size_t n = HASH_COUNT(s->online), i = 0;
  s->tick_online = malloc((n ? n : 1) * sizeof(*s->tick_online));
  if (!s->tick_online)
    return;
  struct online *o, *tmp;
  HASH_ITER(hh, s->online, o, tmp) {
    s->tick_online[i++] = o->id;
  }
  if (n)
    qsort(s->tick_online, n, sizeof(*s->tick_online), id_cmp);
  s->tick_nonline = n;
  s->tick_settled = uv_now(&s->loop) >= s->started_at + SETTLE_MS;
  s->ticking = true;
  s->tick_work.data = s;
  if (uv_queue_work(&s->loop, &s->tick_work, tick_work, tick_done) != 0)
    tick_done(&s->tick_work, 0);
}

/* ---- unary calls ------------------------------------------------------------------ */

/* One request message, then END; the answer comes from the handler. */
struct unary {
  struct server *s;
  struct fy_rpc_scall *call; /* NULL once the call is gone */
  struct fy_nodeid peer;
  struct fy_buf req, reply;
  int code;
  struct fy_err err;
  bool working;
  uv_work_t work;
};

static void unary_free(struct unary *u) {
  fy_buf_free(&u->req);
  fy_buf_free(&u->reply);
  free(u);
}

static void unary_answer(struct unary *u) {
  struct fy_rpc_scall *call = u->call;
  u->call = NULL;
  if (call) {
    fy_rpc_scall_set_user(call, NULL);
    if (u->code == FY_RPC_OK)
      fy_rpc_reply(call, u->reply.data, u->reply.len);
    fy_rpc_finish(call, u->code, u->code == FY_RPC_OK ? "" : u->err.msg, u->code == FY_RPC_INTERNAL);
  }
  unary_free(u);
}

static void unary_start(struct fy_rpc_scall *call, void *user) {
  struct unary *u = calloc(1, sizeof(*u));
  if (!u) {
    fy_rpc_finish(call, FY_RPC_RESOURCE_EXHAUSTED, "out of memory", true);
    return;
  }
  u->s = user;
  u->call = call;
  u->peer = *fy_rpc_scall_peer(call);
  fy_rpc_scall_set_user(call, u);
}

static void unary_msg(struct fy_rpc_scall *call, const uint8_t *p, size_t len, void *user) {
  (void)user;
  struct unary *u = fy_rpc_scall_user(call);
  if (!u)
    return;
  if (u->req.len + len > REQUEST_MAX || fy_buf_append(&u->req, p, len, &u->err) < 0) {
    u->code = FY_RPC_RESOURCE_EXHAUSTED;
    fy_err_set(&u->err, FY_ELIMIT, "request larger than %d bytes", REQUEST_MAX);
    unary_answer(u);
  }
}

static void unary_cancel(struct fy_rpc_scall *call, int code, void *user) {
  (void)code;
  (void)user;
  struct unary *u = fy_rpc_scall_user(call);
  if (!u)
    return;
  u->call = NULL;
  if (!u->working)
    unary_free(u);
}

/* agent.enroll writes (and fsyncs): on the thread pool. */
static void enroll_work(uv_work_t *w) {
  struct unary *u = w->data;
  int rc = fy_coord_enroll(&u->s->coord, &u->peer, u->req.data, u->req.len, &u->reply, &u->err);
  u->code = rc == 0           ? FY_RPC_OK
            : rc == FY_EPERM  ? FY_RPC_PERMISSION_DENIED
            : rc == FY_EINVAL ? FY_RPC_INVALID_ARGUMENT
                              : FY_RPC_INTERNAL;
}

static void enroll_done(uv_work_t *w, int status) {
  (void)status;
  struct unary *u = w->data;
  u->working = false;
  if (u->code != FY_RPC_OK) {
    char hex[FY_NODEID_SHORT_LEN + 1];
    fy_nodeid_to_short(&u->peer, hex);
    fy_warn(u->s->log, "enroll.refused", "agent", hex, "reason", u->err.msg);
  }
  unary_answer(u);
}

static void enroll_end(struct fy_rpc_scall *call, void *user) {
  (void)user;
  struct unary *u = fy_rpc_scall_user(call);
  if (!u)
    return;
  u->working = true;
  u->work.data = u;
  if (uv_queue_work(&u->s->loop, &u->work, enroll_work, enroll_done) != 0) {
    u->working = false;
    u->code = FY_RPC_UNAVAILABLE;
    fy_err_set(&u->err, FY_EIO, "coordinator is shutting down");
    unary_answer(u);
  }
}

/* admin.query reads a snapshot: never waits, so on the loop. */
static void query_end(struct fy_rpc_scall *call, void *user) {
  (void)user;
  struct unary *u = fy_rpc_scall_user(call);
  if (!u)
    return;
  int code = FY_RPC_OK;
  if (fy_coord_query(&u->s->coord, &u->peer, u->req.data, u->req.len, &u->reply, &code, &u->err) < 0)
    u->code = code;
  unary_answer(u);
}

/* ---- life cycle ------------------------------------------------------------------ */

static void closed_one(void *user) {
  struct server *s = user;
  s->closing--;
}

static void on_signal(uv_signal_t *h, int signum) {
  struct server *s = h->data;
  if (s->stopping)
    return;
  s->stopping = true;
  fy_info(s->log, "coordinator.stop", "signal", signum == SIGINT ? "SIGINT" : "SIGTERM");
  uv_signal_stop(&s->sigint);
  uv_signal_stop(&s->sigterm);
  uv_timer_stop(&s->tick_timer);
  s->closing++;
  fy_node_close(s->node, closed_one, s);
}

static void print_banner(struct server *s, const struct fy_coord_serve_config *cfg) {
  char hex[FY_NODEID_HEX_LEN + 1], fp[FY_FINGERPRINT_MAX];
  fy_nodeid_to_hex(&s->coord.id, hex);
  fy_nodeid_fingerprint(&s->coord.id, fp);
  char addrs[8][FY_NODE_ADDR_TEXT_MAX];
  size_t n = fy_node_addresses(s->node, addrs, 8);
  char spec[8 * FY_NODE_ADDR_TEXT_MAX + FY_NODEID_HEX_LEN + 2];
  size_t used = (size_t)snprintf(spec, sizeof(spec), "%s@", hex);
  for (size_t i = 0; i < n && used < sizeof(spec); i++)
    used += (size_t)snprintf(spec + used, sizeof(spec) - used, "%s%s", i ? "," : "", addrs[i]);
  struct fy_coord_counts counts;
  if (fy_coord_counts(&s->coord, &counts, NULL) < 0)
    memset(&counts, 0, sizeof(counts));
  FILE *out = cfg->out;
  fprintf(out, "coordinator %s (%s)\n", hex, fp);
  for (size_t i = 0; i < n; i++)
    fprintf(out, "listening on %s\n", addrs[i]);
  fprintf(out, "admins: %llu, agents: %llu enrolled, %llu pending, %llu revoked\n",
          (unsigned long long)counts.admins, (unsigned long long)counts.enrolled,
          (unsigned long long)counts.pending, (unsigned long long)counts.revoked);
  fprintf(out, "admins connect with: --coordinator %s\n", spec);
  fflush(out);
}

int fy_coord_serve(const struct fy_coord_serve_config *cfg, struct fy_err *err) {
  struct server *s = calloc(1, sizeof(*s));
  if (!s)
    return fy_err_set(err, FY_ENOMEM, "out of memory");
  s->log = cfg->log;
  int rc = uv_loop_init(&s->loop);
  if (rc != 0) {
    free(s);
    return fy_err_set(err, FY_EIO, "event loop: %s", uv_strerror(rc));
  }
  uv_mutex_init(&s->revoked_lock);
  uv_async_init(&s->loop, &s->revoked_async, on_revoked_async);
  uv_timer_init(&s->loop, &s->revoked_timer);
  uv_timer_init(&s->loop, &s->tick_timer);
  s->revoked_async.data = s->revoked_timer.data = s->tick_timer.data = s;
  const struct fy_rpc_method methods[] = {
      {.name = "agent.enroll",
       .user = s,
       .on_start = unary_start,
       .on_msg = unary_msg,
       .on_end = enroll_end,
       .on_cancel = unary_cancel},
      {.name = "admin.query",
       .user = s,
       .on_start = unary_start,
       .on_msg = unary_msg,
       .on_end = query_end,
       .on_cancel = unary_cancel},
  };
  const struct fy_store_schema *schemas[] = {&fy_coord_schema, &fy_coord_rollout_schema};
  struct fy_node_config ncfg = {
      .data_dir = cfg->data_dir,
      .key = cfg->key,
      .listen = cfg->listen,
      .accept = true,
      .schemas = schemas,
      .nschemas = FY_ARRAY_LEN(schemas),
      .methods = methods,
      .nmethods = FY_ARRAY_LEN(methods),
      .keepalive_ms = cfg->keepalive_ms,
      .idle_timeout_ms = cfg->idle_timeout_ms,
      .log = cfg->log,
  };
  rc = fy_node_open(&s->node, &s->loop, &ncfg, err);
  if (rc == 0) {
    s->coord = (struct fy_coord){.id = cfg->key->id,
                                 .store = fy_node_store(s->node),
                                 .outbox = fy_node_outbox(s->node),
                                 .log = cfg->log,
                                 .online = is_online,
                                 .online_user = s,
                                 .changed = changed,
                                 .changed_user = s->node};
    s->coord.revoked = on_revoked;
    s->coord.revoked_user = s;
    s->coord.addrs = s->addrs;
    s->coord.naddrs = fy_node_addresses(s->node, s->addrs, FY_ARRAY_LEN(s->addrs));
    rc = fy_coord_check_store(&s->coord, err);
    if (rc == 0)
      rc = fy_coord_register(&s->coord, fy_node_inbox(s->node), err);
    if (rc == 0)
      rc = fy_coord_rollout_register(&s->coord, fy_node_inbox(s->node), err);
    if (rc < 0) {
      s->closing++;
      fy_node_close(s->node, closed_one, s);
    }
  }
  if (rc == 0) {
    fy_node_on_conn(s->node, on_conn_open, on_conn_close, s);
    uv_signal_init(&s->loop, &s->sigint);
    uv_signal_init(&s->loop, &s->sigterm);
    s->sigint.data = s->sigterm.data = s;
    uv_signal_start(&s->sigint, on_signal, SIGINT);
    uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    s->started_at = uv_now(&s->loop);
    uv_timer_start(&s->tick_timer, on_tick, TICK_MS, TICK_MS);
    print_banner(s, cfg);
    fy_info(s->log, "coordinator.ready", "data_dir", cfg->data_dir);
  }
  if (rc == 0) {
    while (!s->stopping || s->closing > 0)
      uv_run(&s->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&s->sigint, NULL);
    uv_close((uv_handle_t *)&s->sigterm, NULL);
  }
  while (s->closing > 0)
    uv_run(&s->loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&s->revoked_async, NULL);
  uv_close((uv_handle_t *)&s->revoked_timer, NULL);
  uv_close((uv_handle_t *)&s->tick_timer, NULL);
  uv_run(&s->loop, UV_RUN_DEFAULT);
  while (s->revoked) {
    struct revoked *r = s->revoked;
    s->revoked = r->next;
    free(r);
  }
  uv_mutex_destroy(&s->revoked_lock);
  struct online *o, *tmp;
  HASH_ITER(hh, s->online, o, tmp) {
    HASH_DEL(s->online, o); // NOLINT(clang-analyzer-unix.Malloc): tmp holds the next; o is unlinked first
    free(o);
  }
  int lrc = uv_loop_close(&s->loop);
  if (lrc != 0 && rc == 0)
    fy_warn(s->log, "coordinator.loop", "reason", uv_strerror(lrc));
  free(s);
  return rc;
}
