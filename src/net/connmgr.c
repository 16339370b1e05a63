#include "net/connmgr.h"

#include <netinet/in.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include <uthash.h>

#include "net/tls.h"
#include "net/udp.h"

#define DEFAULT_BACKOFF_MIN_MS 250
#define DEFAULT_BACKOFF_MAX_MS 30000
#define DEFAULT_STABLE_MS 10000

/* Someone waiting for a peer's connection: first in the peer's queue, then,
 * once the outcome is known, in the manager's delivery queue. */
struct waiter {
  fy_connmgr_ready_fn ready;
  void *user;
  struct fy_qconn *conn; /* resolved: the open connection */
  bool failed;           /* resolved: failure holds why */
  struct fy_qclose failure;
  struct waiter *next;
};

struct waitq {
  struct waiter *head, *tail;
  size_t n;
};

struct peer_key {
  struct fy_nodeid id;
  char alpn[FY_TLS_ALPN_MAX + 1]; /* zero-padded: the key is hashed and compared as bytes */
};

struct peer {
  struct peer_key key;
  struct fy_connmgr *m;
  struct sockaddr_storage addrs[FY_CONNMGR_ADDRS_MAX];
  size_t naddrs;
  enum fy_connmgr_state state;
  bool keep;
  struct fy_qconn *conn;           /* the connection being dialled (DIALING) or open (OPEN) */
  char conn_addr[FY_UDP_ADDR_MAX]; /* the address conn was dialled at */
  size_t addr_idx;                 /* DIALING: the address being tried */
  bool attempt_has_failure;        /* DIALING: attempt_failure holds the most telling failure so far */
  struct fy_qclose attempt_failure;
  uint32_t attempts;
  uint64_t next_retry; /* BACKOFF: loop time (ms) of the next attempt */
  bool has_failure;
  struct fy_qclose last_failure;
  /* One timer, by state: DIALING the next address (0 ms), OPEN the stable
   * mark, BACKOFF the next attempt. */
  uv_timer_t timer;
  struct waitq waiters;
  UT_hash_handle hh;
};

/* A live connection the peer dialled to us (keyed by its node id; the RPC
 * observer only sees FY_RPC_ALPN connections, so the id is enough). */
struct inbound {
  struct fy_nodeid id;
  struct fy_qconn *conn;
  UT_hash_handle hh;
};

struct fy_connmgr {
  uv_loop_t *loop;
  struct fy_quic *quic;
  struct fy_rpc *rpc;
  struct fy_connmgr_config cfg;
  unsigned char hash_key[crypto_shorthash_KEYBYTES];
  struct peer *peers;
  size_t npeers;
  struct inbound *inbound; /* the newest open inbound connection per peer */
  void (*obs_open)(struct fy_qconn *c, void *user);
  void (*obs_close)(struct fy_qconn *c, const struct fy_qclose *why, void *user);
  void *obs_user;
  struct waitq ready; /* resolved waiters, delivered from the idle handle */
  uv_idle_t idle;
  bool closing;      /* fy_connmgr_close was called */
  bool tearing_down; /* the handles are closing */
  size_t closing_handles;
  void (*done)(void *);
  void *done_user;
};

const char *fy_connmgr_state_name(enum fy_connmgr_state state) {
  switch (state) {
  case FY_CONNMGR_IDLE:
    return "idle";
  case FY_CONNMGR_DIALING:
    return "dialing";
  case FY_CONNMGR_OPEN:
    return "open";
  case FY_CONNMGR_BACKOFF:
    return "backoff";
  }
  return "unknown";
}

/* ---- waiter queues ---------------------------------------------------------- */

static void waitq_push(struct waitq *q, struct waiter *w) {
  w->next = NULL;
  if (q->tail)
    q->tail->next = w;
  else
    q->head = w;
  q->tail = w;
  q->n++;
}

static struct waiter *waitq_pop(struct waitq *q) {
  struct waiter *w = q->head;
  if (!w)
    return NULL;
  q->head = w->next;
  if (!q->head)
    q->tail = NULL;
  q->n--;
  w->next = NULL;
  return w;
}

static void on_idle(uv_idle_t *h);
static void teardown(struct fy_connmgr *m);

/* The outcome is known: deliver it on the next loop turn. */
static void waiter_resolve(struct fy_connmgr *m, struct waiter *w, struct fy_qconn *c,
                           const struct fy_qclose *failure) {
  w->conn = failure ? NULL : c;
  w->failed = failure != NULL;
  if (failure)
    w->failure = *failure;
  waitq_push(&m->ready, w);
  uv_idle_start(&m->idle, on_idle);
}

static void peer_resolve_all(struct peer *p, struct fy_qconn *c, const struct fy_qclose *failure) {
  struct waiter *w;
  while ((w = waitq_pop(&p->waiters)))
    waiter_resolve(p->m, w, c, failure);
}

static void on_idle(uv_idle_t *h) {
  struct fy_connmgr *m = h->data;
  /* Only what was queued before this turn: ready() may queue more. */
  for (size_t n = m->ready.n; n > 0; n--) {
    struct waiter *w = waitq_pop(&m->ready);
    if (!w)
      break;
    if (w->failed)
      w->ready(NULL, &w->failure, w->user);
    else
      w->ready(w->conn, NULL, w->user);
    free(w);
  }
  if (m->ready.n > 0)
    return;
  uv_idle_stop(&m->idle);
  if (m->closing && !m->tearing_down)
    teardown(m);
}

/* ---- the peer table ------------------------------------------------------------ */

static unsigned key_hash(const struct fy_connmgr *m, const struct peer_key *k) {
  uint8_t h[crypto_shorthash_BYTES];
  crypto_shorthash(h, (const unsigned char *)k, sizeof(*k), m->hash_key);
  unsigned v;
  memcpy(&v, h, sizeof(v));
  return v;
}

static int key_set(struct peer_key *k, const struct fy_nodeid *id, const char *alpn) {
  memset(k, 0, sizeof(*k));
  if (strlen(alpn) > FY_TLS_ALPN_MAX)
    return FY_EINVAL;
  k->id = *id;
  memcpy(k->alpn, alpn, strlen(alpn));
  return 0;
}

static struct peer *peer_find(const struct fy_connmgr *m, const struct peer_key *k) {
  struct peer *p = NULL;
  HASH_FIND_BYHASHVALUE(hh, m->peers, k, sizeof(*k), key_hash(m, k), p);
  return p;
}

/* Keyed: the ids are chosen by whoever dials us. */
static unsigned id_hash(const struct fy_connmgr *m, const struct fy_nodeid *id) {
  uint8_t h[crypto_shorthash_BYTES];
  crypto_shorthash(h, id->key, sizeof(id->key), m->hash_key);
  unsigned v;
  memcpy(&v, h, sizeof(v));
  return v;
}

static struct inbound *inbound_find(const struct fy_connmgr *m, const struct fy_nodeid *id) {
  struct inbound *in = NULL;
  HASH_FIND_BYHASHVALUE(hh, m->inbound, id, sizeof(*id), id_hash(m, id), in);
  return in;
}

/* The live inbound connection from id, or NULL. */
static struct fy_qconn *inbound_live(const struct fy_connmgr *m, const struct fy_nodeid *id) {
  const struct inbound *in = inbound_find(m, id);
  return in && fy_qconn_is_open(in->conn) ? in->conn : NULL;
}

static void inbound_free_all(struct fy_connmgr *m) {
  while (m->inbound) {
    struct inbound *e = m->inbound;
    HASH_DEL(m->inbound, e); // NOLINT(clang-analyzer-unix.Malloc): uthash unlinks it before the free
    free(e);
  }
}

static void on_peer_timer(uv_timer_t *t);

static struct peer *peer_new(struct fy_connmgr *m, const struct peer_key *k) {
  struct peer *p = calloc(1, sizeof(*p));
  if (!p)
    return NULL;
  p->key = *k;
  p->m = m;
  p->state = FY_CONNMGR_IDLE;
  uv_timer_init(m->loop, &p->timer);
  p->timer.data = p;
  HASH_ADD_BYHASHVALUE(hh, m->peers, key, sizeof(p->key), key_hash(m, &p->key), p);
  m->npeers++;
  return p;
}

static socklen_t addr_len(const struct sockaddr_storage *a) {
  if (a->ss_family == AF_INET)
    return sizeof(struct sockaddr_in);
  if (a->ss_family == AF_INET6)
    return sizeof(struct sockaddr_in6);
  return 0;
}

/* One event about p; up to three more key/value pairs, a NULL key ends them. */
static void log_peer(const struct peer *p, enum fy_log_level level, const char *event, const char *k1,
                     const char *v1, const char *k2, const char *v2, const char *k3, const char *v3) {
  const struct fy_log *lg = p->m->cfg.log;
  if (!lg)
    return;
  char id[FY_NODEID_SHORT_LEN + 1];
  fy_nodeid_to_short(&p->key.id, id);
  fy_log_kv(lg, level, event, "peer", id, "alpn", p->key.alpn, k1, v1, k2, v2, k3, v3, (const char *)NULL);
}

/* ---- dialling and backoff -------------------------------------------------------- */

/* How much a failure tells: when every address of an attempt fails, the
 * attempt reports the most telling one (a peer that answered with the wrong
 * key beats an address that never answered). */
static int failure_rank(enum fy_qclose_kind kind) {
  switch (kind) {
  case FY_QCLOSE_WRONG_ID:
    return 6;
  case FY_QCLOSE_ALPN:
    return 5;
  case FY_QCLOSE_VERSION:
    return 4;
  case FY_QCLOSE_TLS:
    return 3;
  case FY_QCLOSE_TIMEOUT:
    return 1;
  case FY_QCLOSE_UNREACHABLE:
    return 0;
  default:
    return 2;
  }
}

/* Sets a close message, cut to fit. */
static void set_msg(struct fy_qclose *q, const char *text) {
  size_t n = strnlen(text, sizeof(q->msg) - 1);
  memcpy(q->msg, text, n);
  q->msg[n] = '\0';
}

/* why, with the address it happened at in front of the message. */
static void failure_at(struct fy_qclose *out, const struct fy_qclose *why, const char *addr) {
  char text[FY_UDP_ADDR_MAX + sizeof(why->msg) + 2];
  snprintf(text, sizeof(text), "%s: %s", addr, why->msg);
  *out = *why;
  set_msg(out, text);
}

static void note_attempt_failure(struct peer *p, const struct fy_qclose *why, const char *addr) {
  if (p->attempt_has_failure && failure_rank(why->kind) <= failure_rank(p->attempt_failure.kind))
    return;
  failure_at(&p->attempt_failure, why, addr);
  p->attempt_has_failure = true;
}

static uint64_t backoff_delay(const struct fy_connmgr *m, uint32_t failures, enum fy_qclose_kind kind) {
  uint64_t max = m->cfg.backoff_max_ms;
  if (kind == FY_QCLOSE_WRONG_ID)
    return max; /* no jitter below the cap: never faster than backoff_max_ms */
  uint64_t base = m->cfg.backoff_min_ms;
  for (uint32_t i = 1; i < failures && base < max; i++)
    base *= 2;
  if (base > max)
    base = max;
  uint64_t low = base / 2;
  uint64_t span = base - low;
  if (span > UINT32_MAX - 1)
    span = UINT32_MAX - 1;
  return low + randombytes_uniform((uint32_t)span + 1);
}

static void schedule_backoff(struct peer *p) {
  struct fy_connmgr *m = p->m;
  uint64_t delay = backoff_delay(m, p->attempts, p->last_failure.kind);
  p->state = FY_CONNMGR_BACKOFF;
  p->next_retry = uv_now(m->loop) + delay;
  uv_timer_start(&p->timer, on_peer_timer, delay, 0);
  char ms[24], n[16];
  snprintf(ms, sizeof(ms), "%llu", (unsigned long long)delay);
  snprintf(n, sizeof(n), "%u", p->attempts);
  if (p->last_failure.kind == FY_QCLOSE_WRONG_ID)
    log_peer(p, FY_LOG_WARN, "connmgr.wrong_identity", "why", p->last_failure.msg, "attempts", n, "retry_ms",
             ms);
  else
    log_peer(p, FY_LOG_INFO, "connmgr.backoff", "why", p->last_failure.msg, "attempts", n, "retry_ms", ms);
}

static void attempt_failed(struct peer *p) {
  p->attempts++;
  p->last_failure = p->attempt_failure;
  p->has_failure = true;
  p->attempt_has_failure = false;
  schedule_backoff(p);
  peer_resolve_all(p, NULL, &p->last_failure);
}

/* The endpoint is going away: stop without counting or retrying. */
static void peer_stop(struct peer *p, const struct fy_qclose *why) {
  uv_timer_stop(&p->timer);
  p->state = FY_CONNMGR_IDLE;
  p->last_failure = *why;
  p->has_failure = true;
  p->attempt_has_failure = false;
  peer_resolve_all(p, NULL, why);
}

/* Dials the current address, or the next ones if a dial cannot even start. */
static void dial_next(struct peer *p) {
  struct fy_connmgr *m = p->m;
  while (p->addr_idx < p->naddrs) {
    const struct sockaddr_storage *a = &p->addrs[p->addr_idx];
    fy_udp_format_addr((const struct sockaddr *)a, p->conn_addr);
    struct fy_err err = {0};
    struct fy_qconn *c = NULL;
    int rc =
        fy_quic_dial(m->quic, &p->key.id, (const struct sockaddr *)a, addr_len(a), p->key.alpn, m, &c, &err);
    if (rc == 0 && c) {
      p->conn = c;
      log_peer(p, FY_LOG_DEBUG, "connmgr.dial", "addr", p->conn_addr, (const char *)NULL, NULL, NULL, NULL);
      return;
    }
    char text[sizeof(err.msg) + 16];
    snprintf(text, sizeof(text), "cannot dial: %s", err.msg);
    struct fy_qclose why = {.kind = FY_QCLOSE_UNREACHABLE};
    set_msg(&why, text);
    note_attempt_failure(p, &why, p->conn_addr);
    p->addr_idx++;
  }
  attempt_failed(p);
}

static void attempt_start(struct peer *p) {
  uv_timer_stop(&p->timer);
  p->state = FY_CONNMGR_DIALING;
  p->addr_idx = 0;
  p->attempt_has_failure = false;
  dial_next(p);
}

static void on_peer_timer(uv_timer_t *t) {
  struct peer *p = t->data;
  switch (p->state) {
  case FY_CONNMGR_DIALING:
    dial_next(p);
    break;
  case FY_CONNMGR_OPEN:
    p->attempts = 0; /* stable */
    break;
  case FY_CONNMGR_BACKOFF:
    if (p->keep || p->waiters.n > 0)
      attempt_start(p);
    else
      p->state = FY_CONNMGR_IDLE;
    break;
  case FY_CONNMGR_IDLE:
    break;
  }
}

/* ---- what the RPC layer tells us ---------------------------------------------------- */

/* Ours if it is the connection we hold for (peer, ALPN); a live connection's
 * pointer cannot belong to another, so no user pointer needs trusting. */
static struct peer *peer_of_conn(struct fy_connmgr *m, struct fy_qconn *qc) {
  struct peer_key k;
  if (!fy_qconn_is_client(qc) || key_set(&k, fy_qconn_peer(qc), fy_qconn_alpn(qc)) < 0)
    return NULL;
  struct peer *p = peer_find(m, &k);
  return p && p->conn == qc ? p : NULL;
}

/* Waiters told about qc and not yet called hear it is gone. */
static void ready_conn_gone(struct fy_connmgr *m, const struct fy_qconn *qc, const struct fy_qclose *why) {
  for (struct waiter *w = m->ready.head; w; w = w->next) {
    if (!w->failed && w->conn == qc) {
      w->conn = NULL;
      w->failed = true;
      w->failure = *why;
    }
  }
}

/* A peer dialled us: the newest such connection is the one handed out. */
static void inbound_open(struct fy_connmgr *m, struct fy_qconn *qc) {
  const struct fy_nodeid *id = fy_qconn_peer(qc);
  struct inbound *in = inbound_find(m, id);
  if (!in) {
    if (!(in = calloc(1, sizeof(*in))))
      return; /* not fatal: the connection works, we just cannot hand it out */
    in->id = *id;
    HASH_ADD_BYHASHVALUE(hh, m->inbound, id, sizeof(in->id), id_hash(m, id), in);
  }
  in->conn = qc;
  if (m->cfg.log) {
    char hex[FY_NODEID_SHORT_LEN + 1];
    fy_nodeid_to_short(id, hex);
    fy_log_kv(m->cfg.log, FY_LOG_DEBUG, "connmgr.inbound_open", "peer", hex, (const char *)NULL);
  }
}

static void inbound_close(struct fy_connmgr *m, struct fy_qconn *qc, const struct fy_qclose *why) {
  struct inbound *in = inbound_find(m, fy_qconn_peer(qc));
  if (!in || in->conn != qc)
    return; /* an older one, already replaced */
  HASH_DEL(m->inbound, in);
  free(in);
  struct fy_qclose here;
  failure_at(&here, why, "inbound");
  ready_conn_gone(m, qc, &here);
}

static uint64_t obs_open(struct fy_qconn *qc, void *user) {
  struct fy_connmgr *m = user;
  if (!fy_qconn_is_client(qc)) {
    inbound_open(m, qc);
  } else {
    struct peer *p = peer_of_conn(m, qc);
    if (p && p->state == FY_CONNMGR_DIALING) {
      p->state = FY_CONNMGR_OPEN;
      p->attempt_has_failure = false;
      uv_timer_start(&p->timer, on_peer_timer, m->cfg.stable_ms, 0);
      log_peer(p, FY_LOG_INFO, "connmgr.open", "addr", p->conn_addr, (const char *)NULL, NULL, NULL, NULL);
      peer_resolve_all(p, qc, NULL);
    }
  }
  if (m->obs_open)
    m->obs_open(qc, m->obs_user);
  return 0;
}

static void peer_conn_closed(struct peer *p, struct fy_qconn *qc, const struct fy_qclose *why);

static void obs_close(struct fy_qconn *qc, const struct fy_qclose *why, void *user) {
  struct fy_connmgr *m = user;
  if (!fy_qconn_is_client(qc)) {
    if (fy_qconn_was_opened(qc))
      inbound_close(m, qc, why);
  } else {
    struct peer *p = peer_of_conn(m, qc);
    if (p)
      peer_conn_closed(p, qc, why);
  }
  if (m->obs_close && fy_qconn_was_opened(qc))
    m->obs_close(qc, why, m->obs_user);
}

static void peer_conn_closed(struct peer *p, struct fy_qconn *qc, const struct fy_qclose *why) {
  struct fy_connmgr *m = p->m;
  p->conn = NULL;
  struct fy_qclose here;
  failure_at(&here, why, p->conn_addr);
  ready_conn_gone(m, qc, &here);
  if (why->kind == FY_QCLOSE_ENDPOINT) {
    peer_stop(p, &here);
    return;
  }
  if (p->state == FY_CONNMGR_DIALING) {
    note_attempt_failure(p, why, p->conn_addr);
    p->addr_idx++;
    if (p->addr_idx < p->naddrs)
      uv_timer_start(&p->timer, on_peer_timer, 0, 0); /* the next address, outside QUIC's callback */
    else
      attempt_failed(p);
    return;
  }
  /* An open connection ended. It counts as a failure for the backoff (a
   * connection that closes right after opening must not be redialled in a
   * tight loop); the stable timer has reset the count if it lived long. */
  uv_timer_stop(&p->timer);
  p->last_failure = here;
  p->has_failure = true;
  p->attempts++;
  log_peer(p, FY_LOG_INFO, "connmgr.closed", "why", here.msg, (const char *)NULL, NULL, NULL, NULL);
  if (!p->keep && p->waiters.n == 0 && p->attempts == 1) {
    p->state = FY_CONNMGR_IDLE; /* nobody needs it now; the next get dials at once */
    return;
  }
  schedule_backoff(p);
}

/* ---- the API ------------------------------------------------------------------------- */

int fy_connmgr_new(struct fy_connmgr **out, uv_loop_t *loop, struct fy_quic *quic, struct fy_rpc *rpc,
                   const struct fy_connmgr_config *cfg, struct fy_err *err) {
  *out = NULL;
  if (!loop || !quic || !rpc)
    return fy_err_set(err, FY_EINVAL, "a connection manager needs a loop, a QUIC endpoint and an RPC layer");
  struct fy_connmgr_config c = cfg ? *cfg : (struct fy_connmgr_config){0};
  if (!c.backoff_min_ms)
    c.backoff_min_ms = DEFAULT_BACKOFF_MIN_MS;
  if (!c.backoff_max_ms)
    c.backoff_max_ms = DEFAULT_BACKOFF_MAX_MS;
  if (!c.stable_ms)
    c.stable_ms = DEFAULT_STABLE_MS;
  if (c.backoff_min_ms > c.backoff_max_ms)
    return fy_err_set(err, FY_EINVAL, "backoff minimum %llu ms is above the maximum %llu ms",
                      (unsigned long long)c.backoff_min_ms, (unsigned long long)c.backoff_max_ms);
  struct fy_connmgr *m = calloc(1, sizeof(*m));
  if (!m)
    return fy_err_set(err, FY_ENOMEM, "cannot allocate the connection manager");
  m->loop = loop;
  m->quic = quic;
  m->rpc = rpc;
  m->cfg = c;
  crypto_shorthash_keygen(m->hash_key);
  uv_idle_init(loop, &m->idle);
  m->idle.data = m;
  fy_rpc_set_conn_observer(rpc, obs_open, obs_close, m);
  *out = m;
  return 0;
}

static void handle_closed(uv_handle_t *h) {
  struct fy_connmgr *m = h->type == UV_IDLE ? h->data : ((struct peer *)h->data)->m;
  if (--m->closing_handles > 0)
    return;
  while (m->peers) {
    struct peer *p = m->peers;
    HASH_DEL(m->peers, p); // NOLINT(clang-analyzer-unix.Malloc): uthash unlinks p before the free
    free(p);
  }
  void (*done)(void *) = m->done;
  void *user = m->done_user;
  free(m);
  if (done)
    done(user);
}

static void teardown(struct fy_connmgr *m) {
  m->tearing_down = true;
  m->closing_handles = 1 + m->npeers;
  for (struct peer *p = m->peers; p; p = p->hh.next)
    uv_close((uv_handle_t *)&p->timer, handle_closed);
  uv_close((uv_handle_t *)&m->idle, handle_closed);
}

void fy_connmgr_close(struct fy_connmgr *m, void (*done)(void *user), void *user) {
  if (m->closing)
    return;
  m->closing = true;
  m->done = done;
  m->done_user = user;
  fy_rpc_set_conn_observer(m->rpc, NULL, NULL, NULL);
  inbound_free_all(m); /* we no longer hear of their closes */
  struct fy_qclose why = {.kind = FY_QCLOSE_ENDPOINT};
  set_msg(&why, "the connection manager closed");
  /* We no longer hear of closes, so nobody may be handed a connection. */
  for (struct waiter *w = m->ready.head; w; w = w->next) {
    if (!w->failed) {
      w->conn = NULL;
      w->failed = true;
      w->failure = why;
    }
  }
  for (struct peer *p = m->peers; p; p = p->hh.next) {
    uv_timer_stop(&p->timer);
    peer_resolve_all(p, NULL, &why);
  }
  /* The rest happens from the loop, after the last ready(). */
  uv_idle_start(&m->idle, on_idle);
}

/* Checks arguments and finds or makes the peer; every error leaves nothing
 * behind. With inbound_ok, a peer without addresses is no error when it has a
 * live inbound connection: *out may then stay NULL and *inbound is set. */
static int peer_for(struct fy_connmgr *m, const struct fy_nodeid *id, const struct sockaddr_storage *addrs,
                    size_t naddrs, const char *alpn, bool inbound_ok, struct peer **out,
                    struct fy_qconn **inbound, struct fy_err *err) {
  *out = NULL;
  if (inbound)
    *inbound = NULL;
  if (m->closing)
    return fy_err_set(err, FY_EINVAL, "the connection manager is closing");
  if (!id || (naddrs > 0 && !addrs))
    return fy_err_set(err, FY_EINVAL, "a connection needs a node id");
  if (!alpn)
    alpn = FY_RPC_ALPN;
  if (strcmp(alpn, FY_RPC_ALPN) != 0)
    return fy_err_set(err, FY_EUNSUPPORTED, "the connection manager dials only %s, not '%s'", FY_RPC_ALPN,
                      alpn);
  if (naddrs > FY_CONNMGR_ADDRS_MAX)
    return fy_err_set(err, FY_ELIMIT, "%zu addresses given, at most %d are tried", naddrs,
                      FY_CONNMGR_ADDRS_MAX);
  for (size_t i = 0; i < naddrs; i++)
    if (addr_len(&addrs[i]) == 0)
      return fy_err_set(err, FY_EINVAL, "address %zu is not an IPv4 or IPv6 address", i);
  struct peer_key k;
  key_set(&k, id, alpn);
  struct peer *p = peer_find(m, &k);
  if (inbound_ok && inbound)
    *inbound = inbound_live(m, id);
  if (naddrs == 0 && (!p || p->naddrs == 0)) {
    if (inbound_ok && inbound && *inbound) {
      *out = p;
      return 0;
    }
    char hex[FY_NODEID_SHORT_LEN + 1];
    fy_nodeid_to_short(id, hex);
    return fy_err_set(err, FY_ENOENT, "no address known for peer %s", hex);
  }
  if (!p && !(p = peer_new(m, &k)))
    return fy_err_set(err, FY_ENOMEM, "cannot allocate a peer");
  if (naddrs > 0) {
    memcpy(p->addrs, addrs, naddrs * sizeof(addrs[0]));
    p->naddrs = naddrs;
  }
  *out = p;
  return 0;
}

int fy_connmgr_get(struct fy_connmgr *m, const struct fy_nodeid *id, const struct sockaddr_storage *addrs,
                   size_t naddrs, const char *alpn, unsigned flags, fy_connmgr_ready_fn ready, void *user,
                   struct fy_err *err) {
  if (!ready)
    return fy_err_set(err, FY_EINVAL, "fy_connmgr_get needs a ready callback");
  struct peer *p = NULL;
  struct fy_qconn *inbound = NULL;
  int rc = peer_for(m, id, addrs, naddrs, alpn, true, &p, &inbound, err);
  if (rc < 0 || (!p && !inbound))
    return rc < 0 ? rc : FY_EINVAL;
  struct waiter *w = calloc(1, sizeof(*w));
  if (!w)
    return fy_err_set(err, FY_ENOMEM, "cannot allocate a waiter");
  w->ready = ready;
  w->user = user;
  bool dialled_live = p && p->state == FY_CONNMGR_OPEN && p->conn && fy_qconn_is_open(p->conn);
  if (!dialled_live && inbound) {
    /* The peer dialled us: behind NAT this may be the only way to reach it,
     * and when we could dial too, a live connection beats a new handshake. */
    waiter_resolve(m, w, inbound, NULL);
    return 0;
  }
  switch (p->state) {
  case FY_CONNMGR_OPEN:
    if (dialled_live) {
      waiter_resolve(m, w, p->conn, NULL);
      break;
    }
    waitq_push(&p->waiters, w); /* closing: the close handler takes it from here */
    break;
  case FY_CONNMGR_BACKOFF:
    if ((flags & FY_CONNMGR_FAIL_FAST) && p->has_failure)
      waiter_resolve(m, w, NULL, &p->last_failure);
    else
      waitq_push(&p->waiters, w);
    break;
  case FY_CONNMGR_DIALING:
    waitq_push(&p->waiters, w);
    break;
  case FY_CONNMGR_IDLE:
    waitq_push(&p->waiters, w);
    attempt_start(p);
    break;
  }
  return 0;
}

void fy_connmgr_set_conn_observer(struct fy_connmgr *m, void (*on_open)(struct fy_qconn *c, void *user),
                                  void (*on_close)(struct fy_qconn *c, const struct fy_qclose *why,
                                                   void *user),
                                  void *user) {
  m->obs_open = on_open;
  m->obs_close = on_close;
  m->obs_user = user;
}

int fy_connmgr_keep(struct fy_connmgr *m, const struct fy_nodeid *id, const struct sockaddr_storage *addrs,
                    size_t naddrs, const char *alpn, bool keep, struct fy_err *err) {
  struct peer *p = NULL;
  int rc = peer_for(m, id, addrs, naddrs, alpn, false, &p, NULL, err);
  if (rc < 0 || !p)
    return rc < 0 ? rc : FY_EINVAL;
  p->keep = keep;
  if (keep && p->state == FY_CONNMGR_IDLE)
    attempt_start(p);
  return 0;
}

int fy_connmgr_status(const struct fy_connmgr *m, const struct fy_nodeid *id, const char *alpn,
                      struct fy_connmgr_peer_status *out) {
  memset(out, 0, sizeof(*out));
  struct peer_key k;
  if (!id || key_set(&k, id, alpn ? alpn : FY_RPC_ALPN) < 0)
    return FY_EINVAL;
  const struct peer *p = peer_find(m, &k);
  out->inbound = inbound_live(m, id) != NULL;
  if (!p) {
    if (!out->inbound)
      return FY_ENOENT;
    out->state = FY_CONNMGR_IDLE;
    out->state_name = fy_connmgr_state_name(FY_CONNMGR_IDLE);
    return 0;
  }
  out->state = p->state;
  out->state_name = fy_connmgr_state_name(p->state);
  out->keep = p->keep;
  out->attempts = p->attempts;
  out->has_failure = p->has_failure;
  if (p->has_failure)
    out->last_failure = p->last_failure;
  uint64_t now = uv_now(m->loop);
  if (p->state == FY_CONNMGR_BACKOFF && p->next_retry > now)
    out->retry_in_ms = p->next_retry - now;
  out->waiters = p->waiters.n;
  out->naddrs = p->naddrs;
  return 0;
}
