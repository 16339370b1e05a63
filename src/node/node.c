#include "node/node.h"

#include <netinet/in.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uthash.h>

#include "net/udp.h"
#include "node/peerspec.h"
#include "outbox/delivery.h"
#include "outbox/intake.h"
#include "outbox/wire.h"

#define DRAIN_POLL_MS 2
#define SCHEMAS_MAX (FY_STORE_TABLES_MAX + 2)

/* What fy_node_set_addrs said about one peer. */
struct peer_addrs {
  struct fy_nodeid id;
  struct sockaddr_storage addrs[FY_CONNMGR_ADDRS_MAX];
  size_t n;
  UT_hash_handle hh;
};

struct fy_node {
  uv_loop_t *loop;
  const struct fy_key *key;
  const struct fy_log *log;
  struct fy_store *store;
  struct fy_inbox *inbox;
  struct fy_intake intake;
  struct fy_rpc_method *methods; /* the applet's, then outbox.push */
  struct fy_rpc *rpc;
  struct fy_quic *quic;
  struct fy_outbox *outbox;
  struct fy_connmgr *cm;
  struct fy_delivery *dl;
  struct peer_addrs *addrs;
  unsigned char hash_key[crypto_shorthash_KEYBYTES];
  uv_async_t kick;
  uv_timer_t drain;
  bool handles_init; /* kick and drain exist */
  int open_handles;
  bool closing;
  void (*on_open)(struct fy_qconn *c, void *user);
  void (*on_close)(struct fy_qconn *c, const struct fy_qclose *why, void *user);
  void *conn_user;
  void (*done)(void *user);
  void *done_user;
};

/* ---- accessors ------------------------------------------------------------------- */

struct fy_store *fy_node_store(struct fy_node *n) {
  return n->store;
}
struct fy_outbox *fy_node_outbox(struct fy_node *n) {
  return n->outbox;
}
struct fy_inbox *fy_node_inbox(struct fy_node *n) {
  return n->inbox;
}
struct fy_rpc *fy_node_rpc(struct fy_node *n) {
  return n->rpc;
}
struct fy_connmgr *fy_node_connmgr(struct fy_node *n) {
  return n->cm;
}
struct fy_quic *fy_node_quic(struct fy_node *n) {
  return n->quic;
}
const struct fy_nodeid *fy_node_id(const struct fy_node *n) {
  return &n->key->id;
}

/* ---- addresses ------------------------------------------------------------------- */

static unsigned id_hash(const struct fy_node *n, const struct fy_nodeid *id) {
  uint8_t h[crypto_shorthash_BYTES];
  crypto_shorthash(h, id->key, sizeof(id->key), n->hash_key);
  unsigned v;
  memcpy(&v, h, sizeof(v));
  return v;
}

static struct peer_addrs *addrs_find(const struct fy_node *n, const struct fy_nodeid *id) {
  struct peer_addrs *p = NULL;
  HASH_FIND_BYHASHVALUE(hh, n->addrs, id, sizeof(*id), id_hash(n, id), p);
  return p;
}

static size_t resolve(const struct fy_nodeid *dest, struct sockaddr_storage *addrs, size_t cap, void *user) {
  struct fy_node *n = user;
  const struct peer_addrs *p = addrs_find(n, dest);
  if (!p)
    return 0;
  size_t k = p->n < cap ? p->n : cap;
  memcpy(addrs, p->addrs, k * sizeof(addrs[0]));
  return k;
}

int fy_node_set_addrs(struct fy_node *n, const struct fy_nodeid *peer, const struct sockaddr_storage *addrs,
                      size_t naddrs, struct fy_err *err) {
  if (!peer || (naddrs > 0 && !addrs))
    return fy_err_set(err, FY_EINVAL, "node addresses: no peer or no address list");
  if (naddrs > FY_CONNMGR_ADDRS_MAX)
    return fy_err_set(err, FY_ELIMIT, "node addresses: %zu given, at most %d are kept", naddrs,
                      FY_CONNMGR_ADDRS_MAX);
  for (size_t i = 0; i < naddrs; i++)
    if (addrs[i].ss_family != AF_INET && addrs[i].ss_family != AF_INET6)
      return fy_err_set(err, FY_EINVAL, "node addresses: address %zu is not IPv4 or IPv6", i);
  struct peer_addrs *p = addrs_find(n, peer);
  if (naddrs == 0) {
    if (p) {
      HASH_DEL(n->addrs, p);
      free(p);
    }
    return 0;
  }
  if (!p) {
    if (!(p = calloc(1, sizeof(*p))))
      return fy_err_set(err, FY_ENOMEM, "node addresses: out of memory");
    p->id = *peer;
    HASH_ADD_BYHASHVALUE(hh, n->addrs, id, sizeof(p->id), id_hash(n, peer), p);
  }
  memcpy(p->addrs, addrs, naddrs * sizeof(addrs[0]));
  p->n = naddrs;
  if (n->dl)
    fy_delivery_kick(n->dl);
  return 0;
}

static bool is_wildcard(const struct sockaddr_storage *a) {
  if (a->ss_family == AF_INET)
    return ((const struct sockaddr_in *)a)->sin_addr.s_addr == htonl(INADDR_ANY);
  if (a->ss_family == AF_INET6)
    return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)a)->sin6_addr);
  return false;
}

/* Interface addresses with the bound port: internal ones or the others. */
static size_t interface_addrs(const uv_interface_address_t *ifs, int nifs, int family, uint16_t port,
                              bool internal, char (*out)[FY_NODE_ADDR_TEXT_MAX], size_t cap) {
  size_t k = 0;
  for (int i = 0; i < nifs && k < cap; i++) {
    struct sockaddr_storage a = {0};
    int f = ifs[i].address.address4.sin_family;
    if ((bool)ifs[i].is_internal != internal)
      continue;
    if (f == AF_INET) {
      memcpy(&a, &ifs[i].address.address4, sizeof(ifs[i].address.address4));
      ((struct sockaddr_in *)&a)->sin_port = htons(port);
    } else if (f == AF_INET6 && family == AF_INET6) {
      if (IN6_IS_ADDR_LINKLOCAL(&ifs[i].address.address6.sin6_addr))
        continue;
      memcpy(&a, &ifs[i].address.address6, sizeof(ifs[i].address.address6));
      ((struct sockaddr_in6 *)&a)->sin6_port = htons(port);
      ((struct sockaddr_in6 *)&a)->sin6_scope_id = 0;
    } else {
      continue; /* IPv6 on an IPv4 socket */
    }
    char text[FY_NODE_ADDR_TEXT_MAX];
    fy_addr_format((const struct sockaddr *)&a, text, sizeof(text));
    bool dup = false;
    for (size_t j = 0; j < k && !dup; j++)
      dup = strcmp(out[j], text) == 0;
    if (!dup)
      memcpy(out[k++], text, sizeof(text));
  }
  return k;
}

size_t fy_node_addresses(struct fy_node *n, char (*out)[FY_NODE_ADDR_TEXT_MAX], size_t cap) {
  struct sockaddr_storage local;
  socklen_t len = sizeof(local);
  if (cap == 0 || fy_quic_local_addr(n->quic, &local, &len) != 0)
    return 0;
  if (!is_wildcard(&local)) {
    fy_addr_format((const struct sockaddr *)&local, out[0], FY_NODE_ADDR_TEXT_MAX);
    return 1;
  }
  uint16_t port = ntohs(local.ss_family == AF_INET ? ((const struct sockaddr_in *)&local)->sin_port
                                                   : ((const struct sockaddr_in6 *)&local)->sin6_port);
  uv_interface_address_t *ifs = NULL;
  int nifs = 0;
  if (uv_interface_addresses(&ifs, &nifs) != 0)
    return 0;
  size_t k = interface_addrs(ifs, nifs, local.ss_family, port, false, out, cap);
  if (k == 0)
    k = interface_addrs(ifs, nifs, local.ss_family, port, true, out, cap);
  uv_free_interface_addresses(ifs, nifs);
  return k;
}

/* ---- connections and kicks ----------------------------------------------------------- */

static void conn_open(struct fy_qconn *c, void *user) {
  struct fy_node *n = user;
  /* A peer that dialled us may have messages waiting for it (an agent
   * behind NAT is reachable only now): do not wait for the next scan. */
  if (!fy_qconn_is_client(c) && n->dl && !n->closing)
    fy_delivery_kick(n->dl);
  if (n->on_open)
    n->on_open(c, n->conn_user);
}

static void conn_close(struct fy_qconn *c, const struct fy_qclose *why, void *user) {
  struct fy_node *n = user;
  if (n->on_close)
    n->on_close(c, why, n->conn_user);
}

void fy_node_on_conn(struct fy_node *n, void (*on_open)(struct fy_qconn *c, void *user),
                     void (*on_close)(struct fy_qconn *c, const struct fy_qclose *why, void *user),
                     void *user) {
  n->on_open = on_open;
  n->on_close = on_close;
  n->conn_user = user;
}

static void on_kick(uv_async_t *a) {
  struct fy_node *n = a->data;
  if (n->dl && !n->closing)
    fy_delivery_kick(n->dl);
}

void fy_node_kick(struct fy_node *n) {
  uv_async_send(&n->kick);
}

/* ---- shutdown ------------------------------------------------------------------------ */

/* Each step closes one part and continues from its done callback; the steps
 * skip parts that were never opened, so a failed open uses them too. */
static void close_connmgr(void *user);
static void close_quic(void *user);
static void close_outbox(void *user);
static void close_drain(void *user);

static void finish(struct fy_node *n) {
  fy_rpc_free(n->rpc);
  fy_inbox_close(n->inbox);
  fy_store_close(n->store);
  while (n->addrs) {
    struct peer_addrs *e = n->addrs;
    HASH_DEL(n->addrs, e); // NOLINT(clang-analyzer-unix.Malloc): uthash unlinks it before the free
    free(e);
  }
  free(n->methods);
  void (*done)(void *) = n->done;
  void *user = n->done_user;
  free(n);
  if (done)
    done(user);
}

static void handle_closed(uv_handle_t *h) {
  struct fy_node *n = h->data;
  if (--n->open_handles == 0)
    finish(n);
}

static void close_delivery(struct fy_node *n) {
  struct fy_delivery *dl = n->dl;
  n->dl = NULL;
  if (dl)
    fy_delivery_close(dl, close_connmgr, n);
  else
    close_connmgr(n);
}

static void close_connmgr(void *user) {
  struct fy_node *n = user;
  struct fy_connmgr *cm = n->cm;
  n->cm = NULL;
  if (cm)
    fy_connmgr_close(cm, close_quic, n);
  else
    close_quic(n);
}

static void close_quic(void *user) {
  struct fy_node *n = user;
  struct fy_quic *q = n->quic;
  n->quic = NULL;
  if (q)
    fy_quic_shutdown(q, close_outbox, n);
  else
    close_outbox(n);
}

static void close_outbox(void *user) {
  struct fy_node *n = user;
  struct fy_outbox *ob = n->outbox;
  n->outbox = NULL;
  if (ob)
    fy_outbox_close(ob, close_drain, n);
  else
    close_drain(n);
}

/* The calls are gone, but a commit of theirs may still run on the thread
 * pool, inside the inbox and the store: those go only once no request is
 * pending on the loop (a uv_work_t counts until its completion ran). */
static void on_drain(uv_timer_t *t) {
  struct fy_node *n = t->data;
  if (n->loop->active_reqs.count > 0)
    return;
  uv_timer_stop(t);
  n->open_handles = 2;
  uv_close((uv_handle_t *)&n->kick, handle_closed);
  uv_close((uv_handle_t *)&n->drain, handle_closed);
}

static void close_drain(void *user) {
  struct fy_node *n = user;
  if (!n->handles_init) {
    finish(n); /* a failed open: nothing was queued */
    return;
  }
  uv_timer_start(&n->drain, on_drain, 0, DRAIN_POLL_MS);
}

void fy_node_close(struct fy_node *n, void (*done)(void *user), void *user) {
  if (n->closing)
    return;
  n->closing = true;
  n->done = done;
  n->done_user = user;
  close_delivery(n);
}

/* ---- open ---------------------------------------------------------------------------- */

/* rc, with where it happened in front of err's message (err may be NULL). */
static int prefixed(struct fy_err *err, int rc, const char *what) {
  fy_err_prefix(err, "node: %s", what);
  return rc;
}

static int open_parts(struct fy_node *n, const struct fy_node_config *cfg, struct fy_err *err) {
  const struct fy_store_schema *schemas[SCHEMAS_MAX] = {&fy_outbox_schema, &fy_inbox_schema};
  if (cfg->nschemas > SCHEMAS_MAX - 2 || (cfg->nschemas && !cfg->schemas))
    return fy_err_set(err, FY_EINVAL, "node: %zu schemas given, at most %d", cfg->nschemas, SCHEMAS_MAX - 2);
  for (size_t i = 0; i < cfg->nschemas; i++)
    schemas[2 + i] = cfg->schemas[i];
  int rc = fy_store_open(&n->store, cfg->data_dir, schemas, 2 + cfg->nschemas,
                         &(struct fy_store_opts){.log = cfg->log}, err);
  if (rc < 0)
    return rc;
  if ((rc = fy_inbox_open(&n->inbox, n->store, cfg->log, err)) < 0)
    return prefixed(err, rc, "inbox");

  n->intake = (struct fy_intake){.loop = n->loop, .inbox = n->inbox, .log = cfg->log};
  if (cfg->nmethods && !cfg->methods)
    return fy_err_set(err, FY_EINVAL, "node: %zu methods given without a table", cfg->nmethods);
  n->methods = calloc(cfg->nmethods + 1, sizeof(*n->methods));
  if (!n->methods)
    return fy_err_set(err, FY_ENOMEM, "node: out of memory for the method table");
  for (size_t i = 0; i < cfg->nmethods; i++) {
    if (!cfg->methods[i].name || strcmp(cfg->methods[i].name, FY_OUTBOX_METHOD) == 0)
      return fy_err_set(err, FY_EINVAL, "node: method %zu: %s", i,
                        cfg->methods[i].name ? "outbox.push is the node's own" : "no name");
    n->methods[i] = cfg->methods[i];
  }
  n->methods[cfg->nmethods] = fy_intake_method(&n->intake);
  struct fy_rpc_config rcfg = {.methods = n->methods, .nmethods = cfg->nmethods + 1};
  if ((rc = fy_rpc_new(&n->rpc, n->loop, &rcfg, err)) < 0)
    return prefixed(err, rc, "rpc");

  struct fy_quic_handler h = fy_rpc_quic_handler(n->rpc);
  struct fy_quic_config qcfg = {.key = cfg->key,
                                .listen = cfg->listen,
                                .handlers = &h,
                                .nhandlers = 1,
                                .accept = cfg->accept,
                                .keepalive_ms = cfg->keepalive_ms,
                                .idle_timeout_ms = cfg->idle_timeout_ms,
                                .handshake_timeout_ms = cfg->handshake_timeout_ms,
                                .log = cfg->log};
  if ((rc = fy_quic_new(&n->quic, n->loop, &qcfg, err)) < 0)
    return prefixed(err, rc, "endpoint");

  /* From here on, parts close on the loop. */
  struct fy_outbox_config ocfg = {.backoff_min_ms = cfg->backoff_min_ms,
                                  .backoff_max_ms = cfg->backoff_max_ms,
                                  .loop = n->loop,
                                  .log = cfg->log};
  if ((rc = fy_outbox_open(&n->outbox, n->store, &ocfg, err)) < 0)
    return prefixed(err, rc, "outbox");
  struct fy_connmgr_config ccfg = {
      .backoff_min_ms = cfg->backoff_min_ms, .backoff_max_ms = cfg->backoff_max_ms, .log = cfg->log};
  if ((rc = fy_connmgr_new(&n->cm, n->loop, n->quic, n->rpc, &ccfg, err)) < 0)
    return prefixed(err, rc, "connection manager");
  fy_connmgr_set_conn_observer(n->cm, conn_open, conn_close, n);
  struct fy_delivery_config dcfg = {.outbox = n->outbox,
                                    .connmgr = n->cm,
                                    .rpc = n->rpc,
                                    .resolve = resolve,
                                    .resolve_user = n,
                                    .scan_ms = cfg->scan_ms,
                                    .log = cfg->log};
  if ((rc = fy_delivery_new(&n->dl, n->loop, &dcfg, err)) < 0)
    return prefixed(err, rc, "delivery");
  if ((rc = uv_async_init(n->loop, &n->kick, on_kick)) < 0)
    return fy_err_set(err, FY_EIO, "node: kick handle: %s", uv_strerror(rc));
  n->kick.data = n;
  uv_timer_init(n->loop, &n->drain);
  n->drain.data = n;
  n->handles_init = true;
  return 0;
}

int fy_node_open(struct fy_node **out, uv_loop_t *loop, const struct fy_node_config *cfg,
                 struct fy_err *err) {
  *out = NULL;
  if (!loop || !cfg || !cfg->data_dir || !cfg->key || !cfg->listen)
    return fy_err_set(err, FY_EINVAL,
                      "node: a loop, a data directory, a key and a listen address are needed");
  if (!cfg->key->sk)
    return fy_err_set(err, FY_EINVAL, "node: the key has no secret half");
  struct fy_node *n = calloc(1, sizeof(*n));
  if (!n)
    return fy_err_set(err, FY_ENOMEM, "node: out of memory");
  n->loop = loop;
  n->key = cfg->key;
  crypto_shorthash_keygen(n->hash_key);
  n->log = cfg->log;
  int rc = open_parts(n, cfg, err);
  if (rc < 0) {
    n->closing = true;
    close_delivery(n); /* synchronous unless the endpoint was made */
    return rc;
  }
  *out = n;
  return 0;
}
