#include "net/quic.h"

#include <errno.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>
#include <ngtcp2/ngtcp2_crypto_wolfssl.h>
#include <uthash.h>

#include "net/sendbuf.h"
#include "net/tls.h"
#include "net/udp.h"

#define SECRET_LEN 32
#define TXBUF_LEN ((size_t)64 * 1024)
#define GSO_MAX_PKTS 32
#define RETRY_TOKEN_TIMEOUT (10 * NGTCP2_SECONDS)
#define RESETS_PER_SEC 100

/* A CID we issued (or the client's original DCID) -> its connection. */
struct cid_key {
  uint8_t len;
  uint8_t data[NGTCP2_MAX_CIDLEN];
};

struct cid_entry {
  struct cid_key key;
  struct fy_qconn *conn;
  struct cid_entry *conn_next; /* the connection's own list, for freeing */
  UT_hash_handle hh;
};

struct qstream {
  int64_t sid;
  struct fy_sendbuf sb;
  bool fin_queued, fin_sent;
  bool queued;    /* in the connection's send queue */
  bool above_low; /* unacked went above the low-water mark since the last on_stream_writable */
  void *user;
  struct qstream *qnext;
  UT_hash_handle hh;
};

enum conn_state { CONN_HANDSHAKE, CONN_OPEN, CONN_CLOSING, CONN_DRAINING, CONN_DEAD };

struct fy_qconn {
  struct fy_quic *q;
  ngtcp2_crypto_conn_ref conn_ref;
  ngtcp2_conn *conn;
  WOLFSSL *ssl;
  struct fy_tls_peer peer;
  const struct fy_quic_handler *handler;
  char alpn[FY_TLS_ALPN_MAX + 1];
  bool client;
  enum conn_state state;
  bool notified_close;
  bool opened_once;
  bool kill_pending;  /* conn_kill was asked for inside an ngtcp2 call */
  bool write_pending; /* in the endpoint's flush list */
  int in_ngtcp2;      /* inside ngtcp2_conn_* that may call back: defer close */
  bool close_pending;
  uint64_t close_pending_code;
  char close_pending_reason[64];
  struct fy_qclose why;
  ngtcp2_ccerr ccerr;
  struct sockaddr_storage remote;
  socklen_t remote_len;
  uv_timer_t timer;
  struct qstream *streams; /* hash by sid */
  struct qstream *sendq_head, *sendq_tail;
  struct cid_entry *cids;
  uint8_t *close_pkt; /* CONNECTION_CLOSE resent during the closing period */
  size_t close_pkt_len;
  void *user;
  struct fy_qconn *prev, *next; /* all connections */
  struct fy_qconn *flush_next;  /* flush list */
};

struct fy_quic {
  uv_loop_t *loop;
  struct fy_udp udp;
  struct fy_quic_config cfg;
  struct fy_quic_handler handlers[FY_TLS_ALPNS_MAX]; /* copied: cfg.handlers points here */
  char alpns[FY_TLS_ALPNS_MAX][FY_TLS_ALPN_MAX + 1];
  struct fy_tls_ctx tls_server, tls_client;
  bool have_server_tls;
  uint8_t secret[SECRET_LEN];
  uint8_t cid_hash_key[crypto_shorthash_KEYBYTES];
  struct sockaddr_storage local;
  socklen_t local_len;
  struct cid_entry *cids;
  struct fy_qconn *conns;
  size_t nconns;
  struct fy_qconn *flush_head;
  uv_prepare_t flush;
  uint64_t hs_window_start;
  uint32_t hs_in_window;
  uint64_t reset_window_start;
  uint32_t resets_in_window;
  uint64_t reset_check_window_start;
  uint32_t reset_checks_in_window;
  struct fy_quic_stats stats;
  bool shutting_down;
  int open_handles; /* udp + flush + every connection's timer */
  void (*done)(void *);
  void *done_user;
  uint8_t txbuf[TXBUF_LEN];
};

static uint64_t now_ns(void) {
  return uv_hrtime();
}

const char *fy_qclose_kind_name(enum fy_qclose_kind kind) {
  static const char *const names[] = {
      [FY_QCLOSE_LOCAL] = "closed locally",
      [FY_QCLOSE_PEER] = "closed by peer",
      [FY_QCLOSE_IDLE] = "idle timeout",
      [FY_QCLOSE_TIMEOUT] = "timed out",
      [FY_QCLOSE_WRONG_ID] = "wrong identity",
      [FY_QCLOSE_ALPN] = "ALPN refused",
      [FY_QCLOSE_TLS] = "TLS failure",
      [FY_QCLOSE_VERSION] = "no common QUIC version",
      [FY_QCLOSE_RESET] = "reset by peer",
      [FY_QCLOSE_UNREACHABLE] = "unreachable",
      [FY_QCLOSE_ENDPOINT] = "endpoint shut down",
      [FY_QCLOSE_PROTOCOL] = "protocol error",
  };
  return (size_t)kind < sizeof(names) / sizeof(names[0]) && names[kind] ? names[kind] : "unknown";
}

static void qlog(const struct fy_quic *q, enum fy_log_level level, const char *event,
                 const struct fy_qconn *c, const char *k, const char *v) {
  if (!q->cfg.log)
    return;
  char peer[FY_NODEID_SHORT_LEN + 1] = "-";
  if (c && c->peer.verified)
    fy_nodeid_to_short(&c->peer.id, peer);
  fy_log_kv(q->cfg.log, level, event, "peer", peer, k, v, (const char *)NULL);
}

/* ---- connection IDs ------------------------------------------------------ */

static void cid_key_set(struct cid_key *k, const uint8_t *data, size_t len) {
  memset(k, 0, sizeof(*k));
  k->len = (uint8_t)len;
  memcpy(k->data, data, len);
}

/* Clients choose their first DCID, so the table is keyed with SipHash under a
 * per-endpoint secret: nobody can aim many CIDs at one bucket. (We hash
 * ourselves and use uthash's *_BYHASHVALUE forms, which also keeps uthash's
 * own hash function, and its unannotated switch fall-throughs, out of the build.) */
static unsigned cid_hash(const struct fy_quic *q, const struct cid_key *k) {
  uint8_t h[crypto_shorthash_BYTES];
  crypto_shorthash(h, k->data, k->len, q->cid_hash_key);
  unsigned v;
  memcpy(&v, h, sizeof(v));
  return v;
}

static struct fy_qconn *cid_find(struct fy_quic *q, const uint8_t *data, size_t len) {
  if (len > NGTCP2_MAX_CIDLEN)
    return NULL;
  struct cid_key k;
  cid_key_set(&k, data, len);
  struct cid_entry *e = NULL;
  HASH_FIND_BYHASHVALUE(hh, q->cids, &k, sizeof(k), cid_hash(q, &k), e);
  return e ? e->conn : NULL;
}

static int cid_add(struct fy_qconn *c, const ngtcp2_cid *cid) {
  struct fy_quic *q = c->q;
  if (cid_find(q, cid->data, cid->datalen))
    return 0;
  struct cid_entry *e = calloc(1, sizeof(*e));
  if (!e)
    return FY_ENOMEM;
  cid_key_set(&e->key, cid->data, cid->datalen);
  e->conn = c;
  e->conn_next = c->cids;
  c->cids = e;
  HASH_ADD_BYHASHVALUE(hh, q->cids, key, sizeof(e->key), cid_hash(q, &e->key), e);
  return 0;
}

static void cid_remove(struct fy_qconn *c, const ngtcp2_cid *cid) {
  for (struct cid_entry **pp = &c->cids; *pp; pp = &(*pp)->conn_next) {
    struct cid_entry *e = *pp;
    if (e->key.len == cid->datalen && memcmp(e->key.data, cid->data, cid->datalen) == 0) {
      *pp = e->conn_next;
      HASH_DEL(c->q->cids, e);
      free(e);
      return;
    }
  }
}

/* ---- streams ------------------------------------------------------------- */

static struct qstream *stream_find(struct fy_qconn *c, int64_t sid) {
  struct qstream *s = NULL;
  /* Stream ids are dense and bounded by our stream limit: they hash as themselves. */
  HASH_FIND_BYHASHVALUE(hh, c->streams, &sid, sizeof(sid), (unsigned)(sid >> 2), s);
  return s;
}

static struct qstream *stream_new(struct fy_qconn *c, int64_t sid) {
  struct qstream *s = calloc(1, sizeof(*s));
  if (!s)
    return NULL;
  s->sid = sid;
  fy_sendbuf_init(&s->sb);
  HASH_ADD_BYHASHVALUE(hh, c->streams, sid, sizeof(s->sid), (unsigned)(sid >> 2), s);
  return s;
}

static void sendq_push(struct fy_qconn *c, struct qstream *s) {
  if (s->queued)
    return;
  s->queued = true;
  s->qnext = NULL;
  if (c->sendq_tail)
    c->sendq_tail->qnext = s;
  else
    c->sendq_head = s;
  c->sendq_tail = s;
}

static void sendq_remove(struct fy_qconn *c, struct qstream *s) {
  if (!s->queued)
    return;
  struct qstream **pp = &c->sendq_head, *prev = NULL;
  while (*pp && *pp != s) {
    prev = *pp;
    pp = &(*pp)->qnext;
  }
  if (*pp) {
    *pp = s->qnext;
    if (c->sendq_tail == s)
      c->sendq_tail = prev;
  }
  s->queued = false;
  s->qnext = NULL;
}

static bool stream_has_output(const struct qstream *s) {
  return fy_sendbuf_unsent_len(&s->sb) > 0 || (s->fin_queued && !s->fin_sent);
}

static void stream_free(struct fy_qconn *c, struct qstream *s) {
  sendq_remove(c, s);
  HASH_DEL(c->streams, s);
  fy_sendbuf_free(&s->sb);
  free(s);
}

/* ---- sending ------------------------------------------------------------- */

/* The path seam: every datagram of a connection leaves here. Today that is a
 * direct UDP send; a relayed path wraps the same bytes for the relay. */
static int path_send(struct fy_qconn *c, const uint8_t *data, size_t len, size_t gso, uint8_t ecn) {
  struct fy_err err;
  int rc =
      fy_udp_send(&c->q->udp, (const struct sockaddr *)&c->remote, c->remote_len, data, len, gso, ecn, &err);
  if (rc == FY_EAGAIN) {
    /* The socket buffer is full: QUIC treats the packets as lost and recovers. */
    c->q->stats.pkts_dropped++;
    return 0;
  }
  return rc;
}

static void conn_schedule_flush(struct fy_qconn *c);
static void conn_arm_timer(struct fy_qconn *c);
static void conn_fail(struct fy_qconn *c, int liberr);
static void conn_enter_closing(struct fy_qconn *c);
static void conn_notify_close(struct fy_qconn *c);
static void conn_kill(struct fy_qconn *c);

static void conn_write(struct fy_qconn *c) {
  if (c->state >= CONN_CLOSING)
    return;
  struct fy_quic *q = c->q;
  ngtcp2_tstamp ts = now_ns();
  size_t max_udp = ngtcp2_conn_get_max_tx_udp_payload_size(c->conn);
  size_t quantum = ngtcp2_conn_get_send_quantum(c->conn);
  size_t max_pkts = quantum / max_udp;
  if (max_pkts < 1)
    max_pkts = 1;
  if (max_pkts > GSO_MAX_PKTS)
    max_pkts = GSO_MAX_PKTS;
  if (max_pkts * max_udp > TXBUF_LEN)
    max_pkts = TXBUF_LEN / max_udp;
  ngtcp2_path_storage ps;
  ngtcp2_path_storage_zero(&ps);
  ngtcp2_pkt_info pi = {0};
  size_t off = 0, npkts = 0, gso = 0;
  uint8_t ecn = 0;
  struct iovec iov[16];
  for (;;) {
    struct qstream *s = c->sendq_head;
    int64_t sid = -1;
    size_t niov = 0;
    uint32_t flags = NGTCP2_WRITE_STREAM_FLAG_MORE;
    if (s) {
      sid = s->sid;
      niov = fy_sendbuf_unsent(&s->sb, iov, 16);
      size_t total = 0;
      for (size_t i = 0; i < niov; i++)
        total += iov[i].iov_len;
      if (s->fin_queued && !s->fin_sent && total == fy_sendbuf_unsent_len(&s->sb))
        flags |= NGTCP2_WRITE_STREAM_FLAG_FIN;
    }
    size_t room = gso ? gso : max_udp;
    ngtcp2_ssize ndatalen = -1;
    c->in_ngtcp2++;
    ngtcp2_ssize n = ngtcp2_conn_writev_stream(c->conn, &ps.path, &pi, q->txbuf + off, room, &ndatalen, flags,
                                               sid, (const ngtcp2_vec *)iov, niov, ts);
    c->in_ngtcp2--;
    if (s && ndatalen >= 0) {
      fy_sendbuf_mark_sent(&s->sb, (size_t)ndatalen);
      if ((flags & NGTCP2_WRITE_STREAM_FLAG_FIN) && fy_sendbuf_unsent_len(&s->sb) == 0)
        s->fin_sent = true;
      if (!stream_has_output(s))
        sendq_remove(c, s);
    }
    if (n < 0) {
      if (n == NGTCP2_ERR_WRITE_MORE)
        continue;
      if (s && (n == NGTCP2_ERR_STREAM_DATA_BLOCKED || n == NGTCP2_ERR_STREAM_SHUT_WR ||
                n == NGTCP2_ERR_STREAM_NOT_FOUND)) {
        /* Blocked streams come back through extend_max_stream_data. */
        sendq_remove(c, s);
        continue;
      }
      conn_fail(c, (int)n);
      return;
    }
    if (n == 0)
      break;
    if (npkts == 0) {
      gso = (size_t)n;
      ecn = pi.ecn;
    }
    off += (size_t)n;
    npkts++;
    if (npkts == max_pkts || (size_t)n < gso || pi.ecn != ecn) {
      bool full = npkts == max_pkts;
      if (path_send(c, q->txbuf, off, npkts > 1 ? gso : 0, ecn) < 0) {
        c->why.kind = FY_QCLOSE_UNREACHABLE;
        snprintf(c->why.msg, sizeof(c->why.msg), "cannot send to the peer's address");
        conn_kill(c);
        return;
      }
      off = npkts = gso = 0;
      if (full)
        break; /* the send quantum is used up: pacing resumes on the timer */
    }
  }
  if (off > 0 && path_send(c, q->txbuf, off, npkts > 1 ? gso : 0, ecn) < 0) {
    c->why.kind = FY_QCLOSE_UNREACHABLE;
    snprintf(c->why.msg, sizeof(c->why.msg), "cannot send to the peer's address");
    conn_kill(c);
    return;
  }
  ngtcp2_conn_update_pkt_tx_time(c->conn, ts);
  conn_arm_timer(c);
}

/* ---- closing ------------------------------------------------------------- */

static void classify_peer_close(struct fy_qconn *c) {
  const ngtcp2_ccerr *cc = ngtcp2_conn_get_ccerr(c->conn);
  c->why.app_code = cc->error_code;
  if (cc->type == NGTCP2_CCERR_TYPE_APPLICATION) {
    c->why.kind = FY_QCLOSE_PEER;
    snprintf(c->why.msg, sizeof(c->why.msg), "closed by peer with code %llu%s%.*s",
             (unsigned long long)cc->error_code, cc->reasonlen ? ": " : "", (int)cc->reasonlen,
             cc->reason ? (const char *)cc->reason : "");
  } else if (cc->error_code == (NGTCP2_CRYPTO_ERROR | 120)) {
    c->why.kind = FY_QCLOSE_ALPN;
    snprintf(c->why.msg, sizeof(c->why.msg), "peer refused ALPN '%s'", c->alpn);
  } else if ((cc->error_code & ~(uint64_t)0xff) == NGTCP2_CRYPTO_ERROR) {
    c->why.kind = FY_QCLOSE_TLS;
    snprintf(c->why.msg, sizeof(c->why.msg), "peer ended the TLS handshake with alert %u",
             (unsigned)(cc->error_code & 0xff));
  } else if (cc->type == NGTCP2_CCERR_TYPE_IDLE_CLOSE) {
    c->why.kind = FY_QCLOSE_IDLE;
    snprintf(c->why.msg, sizeof(c->why.msg), "idle timeout");
  } else {
    c->why.kind = c->state == CONN_HANDSHAKE ? FY_QCLOSE_TLS : FY_QCLOSE_PEER;
    if (c->why.kind == FY_QCLOSE_PEER && cc->error_code == NGTCP2_NO_ERROR)
      snprintf(c->why.msg, sizeof(c->why.msg), "closed by peer");
    else
      snprintf(c->why.msg, sizeof(c->why.msg), "closed by peer with transport error 0x%llx",
               (unsigned long long)cc->error_code);
  }
}

/* A library error from ngtcp2: decide what it means and end the connection. */
static void conn_fail(struct fy_qconn *c, int liberr) {
  if (c->state >= CONN_CLOSING)
    return;
  switch (liberr) {
  case NGTCP2_ERR_DRAINING:
    if (c->why.kind != FY_QCLOSE_RESET)
      classify_peer_close(c);
    c->state = CONN_DRAINING;
    conn_notify_close(c);
    conn_arm_timer(c);
    return;
  case NGTCP2_ERR_IDLE_CLOSE:
    c->why.kind = FY_QCLOSE_IDLE;
    snprintf(c->why.msg, sizeof(c->why.msg), "no packets for the idle timeout");
    conn_kill(c);
    return;
  case NGTCP2_ERR_HANDSHAKE_TIMEOUT:
    c->why.kind = FY_QCLOSE_TIMEOUT;
    snprintf(c->why.msg, sizeof(c->why.msg),
             "no handshake within the timeout (peer unreachable or not answering)");
    conn_kill(c);
    return;
  case NGTCP2_ERR_RECV_VERSION_NEGOTIATION:
    c->why.kind = FY_QCLOSE_VERSION;
    snprintf(c->why.msg, sizeof(c->why.msg), "peer supports no QUIC version we speak");
    conn_kill(c);
    return;
  case NGTCP2_ERR_DROP_CONN:
    c->why.kind = FY_QCLOSE_PROTOCOL;
    snprintf(c->why.msg, sizeof(c->why.msg), "connection dropped");
    conn_kill(c);
    return;
  case NGTCP2_ERR_CRYPTO:
  case NGTCP2_ERR_CALLBACK_FAILURE:
    if (c->peer.refusal == FY_TLS_WRONG_ID) {
      c->why.kind = FY_QCLOSE_WRONG_ID;
      snprintf(c->why.msg, sizeof(c->why.msg), "wrong identity: %s", c->peer.why);
    } else if (c->peer.refusal != FY_TLS_OK) {
      c->why.kind = FY_QCLOSE_TLS;
      snprintf(c->why.msg, sizeof(c->why.msg), "%s", c->peer.why);
    } else if (liberr == NGTCP2_ERR_CRYPTO && ngtcp2_conn_get_tls_alert(c->conn) == 120) {
      c->why.kind = FY_QCLOSE_ALPN;
      snprintf(c->why.msg, sizeof(c->why.msg), "no common application protocol");
    } else if (c->why.kind == FY_QCLOSE_LOCAL && c->why.msg[0] == '\0') {
      c->why.kind = FY_QCLOSE_TLS;
      snprintf(c->why.msg, sizeof(c->why.msg), "TLS handshake failed (alert %u)",
               (unsigned)ngtcp2_conn_get_tls_alert(c->conn));
    }
    if (liberr == NGTCP2_ERR_CRYPTO)
      ngtcp2_ccerr_set_tls_alert(&c->ccerr, ngtcp2_conn_get_tls_alert(c->conn), NULL, 0);
    else
      ngtcp2_ccerr_set_liberr(&c->ccerr, liberr, NULL, 0);
    break;
  default:
    c->why.kind = FY_QCLOSE_PROTOCOL;
    snprintf(c->why.msg, sizeof(c->why.msg), "QUIC error: %s", ngtcp2_strerror(liberr));
    ngtcp2_ccerr_set_liberr(&c->ccerr, liberr, NULL, 0);
    break;
  }
  conn_enter_closing(c);
}

/* Sends CONNECTION_CLOSE (c->ccerr) and keeps the connection for the closing period. */
static void conn_enter_closing(struct fy_qconn *c) {
  if (c->state >= CONN_CLOSING)
    return;
  struct fy_quic *q = c->q;
  ngtcp2_path_storage ps;
  ngtcp2_path_storage_zero(&ps);
  ngtcp2_pkt_info pi = {0};
  ngtcp2_ssize n =
      ngtcp2_conn_write_connection_close(c->conn, &ps.path, &pi, q->txbuf, TXBUF_LEN, &c->ccerr, now_ns());
  c->state = CONN_CLOSING;
  conn_notify_close(c);
  if (n > 0) {
    c->close_pkt = malloc((size_t)n);
    if (c->close_pkt) {
      memcpy(c->close_pkt, q->txbuf, (size_t)n);
      c->close_pkt_len = (size_t)n;
    }
    uint64_t dropped = q->stats.pkts_dropped;
    if (path_send(c, q->txbuf, (size_t)n, 0, pi.ecn) < 0 || q->stats.pkts_dropped != dropped)
      n = NGTCP2_ERR_NOBUF;
  }
  /* Without it the peer learns of the close only at its idle timeout. */
  if (n <= 0)
    qlog(q, FY_LOG_WARN, "quic.close_unsent", c, "why", n < 0 ? ngtcp2_strerror((int)n) : "nothing to send");
  conn_arm_timer(c);
}

static void conn_notify_close(struct fy_qconn *c) {
  if (c->notified_close)
    return;
  c->notified_close = true;
  if (c->state == CONN_HANDSHAKE || !c->handler)
    c->q->stats.handshakes_failed += c->client ? 0 : 1;
  if (c->why.msg[0] == '\0')
    snprintf(c->why.msg, sizeof(c->why.msg), "%s", fy_qclose_kind_name(c->why.kind));
  qlog(c->q, c->why.kind == FY_QCLOSE_LOCAL || c->why.kind == FY_QCLOSE_PEER ? FY_LOG_DEBUG : FY_LOG_INFO,
       "quic.closed", c, "why", c->why.msg);
  /* Dialers hear about every outcome; acceptors only about connections they saw open. */
  const struct fy_quic_handler *h = c->handler;
  if (h && h->on_close && (c->client || c->state != CONN_HANDSHAKE || c->opened_once))
    h->on_close(c, &c->why, h->user);
}

static void conn_timer_closed(uv_handle_t *h);

/* Releases everything; the memory goes when the timer handle has closed. */
static void conn_kill(struct fy_qconn *c) {
  if (c->state == CONN_DEAD)
    return;
  conn_notify_close(c);
  if (c->in_ngtcp2 > 0) {
    /* Inside an ngtcp2 call: finish when it returns (see conn_after_ngtcp2). */
    c->kill_pending = true;
    return;
  }
  c->state = CONN_DEAD;
  struct fy_quic *q = c->q;
  while (c->cids) {
    struct cid_entry *e = c->cids;
    c->cids = e->conn_next;
    /* uthash's unlink confuses the analyzer; e is in the table. */
    HASH_DEL(q->cids, e); // NOLINT(clang-analyzer-core.NullDereference)
    free(e);
  }
  while (c->streams)
    stream_free(c, c->streams);
  if (c->prev)
    c->prev->next = c->next;
  else
    q->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  q->nconns--;
  if (c->write_pending) {
    for (struct fy_qconn **pp = &q->flush_head; *pp; pp = &(*pp)->flush_next)
      if (*pp == c) {
        *pp = c->flush_next;
        break;
      }
    c->write_pending = false;
  }
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, conn_timer_closed);
}

static void endpoint_maybe_done(struct fy_quic *q);

static void conn_timer_closed(uv_handle_t *h) {
  struct fy_qconn *c = h->data;
  struct fy_quic *q = c->q;
  if (c->conn)
    ngtcp2_conn_del(c->conn);
  if (c->ssl)
    wolfSSL_free(c->ssl);
  free(c->close_pkt);
  free(c);
  q->open_handles--;
  endpoint_maybe_done(q);
}

/* ---- timers and flushing -------------------------------------------------- */

static void on_conn_timer(uv_timer_t *t) {
  struct fy_qconn *c = t->data;
  if (c->state == CONN_CLOSING || c->state == CONN_DRAINING) {
    conn_kill(c);
    return;
  }
  if (c->state == CONN_DEAD)
    return;
  c->in_ngtcp2++;
  int rv = ngtcp2_conn_handle_expiry(c->conn, now_ns());
  c->in_ngtcp2--;
  if (rv != 0) {
    conn_fail(c, rv);
    return;
  }
  conn_write(c);
}

static void conn_arm_timer(struct fy_qconn *c) {
  if (c->state == CONN_DEAD)
    return;
  uint64_t delay_ms;
  if (c->state == CONN_CLOSING || c->state == CONN_DRAINING) {
    delay_ms = 3 * ngtcp2_conn_get_pto(c->conn) / NGTCP2_MILLISECONDS + 1;
  } else {
    ngtcp2_tstamp expiry = ngtcp2_conn_get_expiry(c->conn), now = now_ns();
    if (expiry == UINT64_MAX) {
      uv_timer_stop(&c->timer);
      return;
    }
    delay_ms = expiry > now ? (expiry - now + NGTCP2_MILLISECONDS - 1) / NGTCP2_MILLISECONDS : 0;
  }
  uv_timer_start(&c->timer, on_conn_timer, delay_ms, 0);
}

static void flush_all(struct fy_quic *q) {
  while (q->flush_head) {
    struct fy_qconn *c = q->flush_head;
    q->flush_head = c->flush_next;
    c->write_pending = false;
    conn_write(c);
  }
}

static void on_flush(uv_prepare_t *p) {
  struct fy_quic *q = p->data;
  flush_all(q);
  uv_prepare_stop(&q->flush);
}

/* Answer each receive batch before reading the next: with one flush per loop
 * iteration, replies to a burst waited for the whole burst and both sides of
 * a busy connection fell into step, each idle half the time. */
static void on_batch_end(void *user) {
  flush_all(user);
}

static void conn_schedule_flush(struct fy_qconn *c) {
  struct fy_quic *q = c->q;
  if (c->write_pending || c->state >= CONN_CLOSING)
    return;
  c->write_pending = true;
  c->flush_next = q->flush_head;
  q->flush_head = c;
  uv_prepare_start(&q->flush, on_flush);
}

/* After every ngtcp2 call that may have called back into the application. */
static void conn_after_ngtcp2(struct fy_qconn *c) {
  if (c->in_ngtcp2 > 0)
    return;
  if (c->kill_pending) {
    c->kill_pending = false;
    conn_kill(c);
    return;
  }
  if (c->close_pending && c->state < CONN_CLOSING) {
    c->close_pending = false;
    ngtcp2_ccerr_set_application_error(&c->ccerr, c->close_pending_code,
                                       (const uint8_t *)c->close_pending_reason,
                                       strlen(c->close_pending_reason));
    c->why.kind = FY_QCLOSE_LOCAL;
    c->why.app_code = c->close_pending_code;
    snprintf(c->why.msg, sizeof(c->why.msg), "closed locally with code %llu%s%s",
             (unsigned long long)c->close_pending_code, c->close_pending_reason[0] ? ": " : "",
             c->close_pending_reason);
    conn_enter_closing(c);
  }
}

/* ---- ngtcp2 callbacks ------------------------------------------------------ */

static ngtcp2_conn *get_conn(ngtcp2_crypto_conn_ref *ref) {
  struct fy_qconn *c = ref->user_data;
  return c->conn;
}

static void rand_cb(uint8_t *dest, size_t len, const ngtcp2_rand_ctx *ctx) {
  (void)ctx;
  randombytes_buf(dest, len);
}

static int get_new_cid_cb(ngtcp2_conn *conn, ngtcp2_cid *cid, uint8_t *token, size_t cidlen, void *user) {
  (void)conn;
  struct fy_qconn *c = user;
  randombytes_buf(cid->data, cidlen);
  cid->datalen = cidlen;
  if (ngtcp2_crypto_generate_stateless_reset_token(token, c->q->secret, SECRET_LEN, cid) != 0)
    return NGTCP2_ERR_CALLBACK_FAILURE;
  return cid_add(c, cid) < 0 ? NGTCP2_ERR_CALLBACK_FAILURE : 0;
}

static int remove_cid_cb(ngtcp2_conn *conn, const ngtcp2_cid *cid, void *user) {
  (void)conn;
  cid_remove(user, cid);
  return 0;
}

static const struct fy_quic_handler *find_handler(const struct fy_quic *q, const char *alpn) {
  for (size_t i = 0; i < q->cfg.nhandlers; i++)
    if (strcmp(q->cfg.handlers[i].alpn, alpn) == 0)
      return &q->cfg.handlers[i];
  return NULL;
}

static int handshake_completed_cb(ngtcp2_conn *conn, void *user) {
  (void)conn;
  struct fy_qconn *c = user;
  if (!fy_tls_peer_verified(c->ssl, &c->peer)) {
    if (c->peer.refusal == FY_TLS_OK) {
      c->peer.refusal = FY_TLS_NO_CERT;
      snprintf(c->peer.why, sizeof(c->peer.why), "peer identity was not verified");
    }
    return NGTCP2_ERR_CALLBACK_FAILURE;
  }
  char alpn[FY_TLS_ALPN_MAX + 1];
  const struct fy_quic_handler *h = fy_tls_selected_alpn(c->ssl, alpn) ? find_handler(c->q, alpn) : NULL;
  if (!h || (c->client && strcmp(alpn, c->alpn) != 0)) {
    c->peer.refusal = FY_TLS_BAD_KEY;
    snprintf(c->peer.why, sizeof(c->peer.why), "no common application protocol");
    c->why.kind = FY_QCLOSE_ALPN;
    return NGTCP2_ERR_CALLBACK_FAILURE;
  }
  memcpy(c->alpn, alpn, sizeof(alpn));
  c->handler = h;
  c->state = CONN_OPEN;
  c->opened_once = true;
  c->q->stats.handshakes++;
  qlog(c->q, FY_LOG_DEBUG, "quic.open", c, "alpn", c->alpn);
  if (h->on_open) {
    uint64_t code = h->on_open(c, h->user);
    if (code != 0)
      fy_qconn_close(c, code, "refused");
  }
  return 0;
}

static int recv_stream_data_cb(ngtcp2_conn *conn, uint32_t flags, int64_t sid, uint64_t offset,
                               const uint8_t *data, size_t len, void *user, void *stream_user) {
  (void)conn;
  (void)offset;
  (void)stream_user;
  struct fy_qconn *c = user;
  if (!stream_find(c, sid) && !stream_new(c, sid))
    return NGTCP2_ERR_CALLBACK_FAILURE;
  if (c->handler && c->handler->on_stream_data && c->state == CONN_OPEN)
    c->handler->on_stream_data(c, sid, data, len, (flags & NGTCP2_STREAM_DATA_FLAG_FIN) != 0,
                               c->handler->user);
  else
    fy_qconn_consume(c, sid, len);
  return 0;
}

static int acked_cb(ngtcp2_conn *conn, int64_t sid, uint64_t offset, uint64_t len, void *user,
                    void *stream_user) {
  (void)conn;
  (void)stream_user;
  struct fy_qconn *c = user;
  struct qstream *s = stream_find(c, sid);
  if (!s)
    return 0;
  fy_sendbuf_ack(&s->sb, offset + len);
  uint64_t low = c->q->cfg.stream_low_water;
  if (s->above_low && fy_sendbuf_unacked(&s->sb) < low) {
    s->above_low = false;
    if (c->handler && c->handler->on_stream_writable)
      c->handler->on_stream_writable(c, sid, c->handler->user);
  }
  return 0;
}

static int stream_close_cb(ngtcp2_conn *conn, uint32_t flags, int64_t sid, uint64_t app_code, void *user,
                           void *stream_user) {
  (void)flags;
  (void)app_code;
  (void)stream_user;
  struct fy_qconn *c = user;
  struct qstream *s = stream_find(c, sid);
  if (c->handler && c->handler->on_stream_close && c->state == CONN_OPEN)
    c->handler->on_stream_close(c, sid, c->handler->user);
  if (s)
    stream_free(c, s);
  /* max_streams_bidi bounds concurrent streams, not a connection's lifetime:
   * each stream the peer opened and that is now gone lets it open another. */
  if (ngtcp2_conn_is_local_stream(conn, sid) == 0 && (sid & 0x2) == 0) {
    ngtcp2_conn_extend_max_streams_bidi(conn, 1);
    conn_schedule_flush(c);
  }
  return 0;
}

static int stream_reset_cb(ngtcp2_conn *conn, int64_t sid, uint64_t final_size, uint64_t app_code, void *user,
                           void *stream_user) {
  (void)conn;
  (void)final_size;
  (void)stream_user;
  struct fy_qconn *c = user;
  if (c->handler && c->handler->on_stream_reset && c->state == CONN_OPEN)
    c->handler->on_stream_reset(c, sid, app_code, c->handler->user);
  return 0;
}

static int stop_sending_cb(ngtcp2_conn *conn, int64_t sid, uint64_t app_code, void *user, void *stream_user) {
  return stream_reset_cb(conn, sid, 0, app_code, user, stream_user);
}

static int extend_streams_cb(ngtcp2_conn *conn, uint64_t max_streams, void *user) {
  (void)conn;
  (void)max_streams;
  struct fy_qconn *c = user;
  if (c->handler && c->handler->on_streams_available && c->state == CONN_OPEN)
    c->handler->on_streams_available(c, c->handler->user);
  return 0;
}

static int extend_stream_data_cb(ngtcp2_conn *conn, int64_t sid, uint64_t max_data, void *user,
                                 void *stream_user) {
  (void)conn;
  (void)max_data;
  (void)stream_user;
  struct fy_qconn *c = user;
  struct qstream *s = stream_find(c, sid);
  if (s && stream_has_output(s))
    sendq_push(c, s);
  return 0;
}

static int stateless_reset_cb(ngtcp2_conn *conn, const ngtcp2_pkt_stateless_reset *sr, void *user) {
  (void)conn;
  (void)sr;
  struct fy_qconn *c = user;
  c->why.kind = FY_QCLOSE_RESET;
  snprintf(c->why.msg, sizeof(c->why.msg), "peer no longer knows this connection (stateless reset)");
  return 0;
}

static void set_callbacks(ngtcp2_callbacks *cb, bool client) {
  memset(cb, 0, sizeof(*cb));
  if (client) {
    cb->client_initial = ngtcp2_crypto_client_initial_cb;
    cb->recv_retry = ngtcp2_crypto_recv_retry_cb;
  } else {
    cb->recv_client_initial = ngtcp2_crypto_recv_client_initial_cb;
  }
  cb->recv_crypto_data = ngtcp2_crypto_recv_crypto_data_cb;
  cb->encrypt = ngtcp2_crypto_encrypt_cb;
  cb->decrypt = ngtcp2_crypto_decrypt_cb;
  cb->hp_mask = ngtcp2_crypto_hp_mask_cb;
  cb->update_key = ngtcp2_crypto_update_key_cb;
  cb->delete_crypto_aead_ctx = ngtcp2_crypto_delete_crypto_aead_ctx_cb;
  cb->delete_crypto_cipher_ctx = ngtcp2_crypto_delete_crypto_cipher_ctx_cb;
  cb->get_path_challenge_data = ngtcp2_crypto_get_path_challenge_data_cb;
  cb->version_negotiation = ngtcp2_crypto_version_negotiation_cb;
  cb->rand = rand_cb;
  cb->get_new_connection_id = get_new_cid_cb;
  cb->remove_connection_id = remove_cid_cb;
  cb->handshake_completed = handshake_completed_cb;
  cb->recv_stream_data = recv_stream_data_cb;
  cb->acked_stream_data_offset = acked_cb;
  cb->stream_close = stream_close_cb;
  cb->stream_reset = stream_reset_cb;
  cb->stream_stop_sending = stop_sending_cb;
  cb->extend_max_local_streams_bidi = extend_streams_cb;
  cb->extend_max_stream_data = extend_stream_data_cb;
  cb->recv_stateless_reset = stateless_reset_cb;
}

static void set_settings(const struct fy_quic *q, ngtcp2_settings *s, ngtcp2_transport_params *p) {
  ngtcp2_settings_default(s);
  s->initial_ts = now_ns();
  s->handshake_timeout = q->cfg.handshake_timeout_ms * NGTCP2_MILLISECONDS;
  s->max_stream_window = q->cfg.stream_window * 4;
  s->max_window = q->cfg.conn_window * 4;
  ngtcp2_transport_params_default(p);
  p->initial_max_streams_bidi = q->cfg.max_streams_bidi;
  p->initial_max_streams_uni = 0;
  p->initial_max_stream_data_bidi_local = q->cfg.stream_window;
  p->initial_max_stream_data_bidi_remote = q->cfg.stream_window;
  p->initial_max_data = q->cfg.conn_window;
  p->max_idle_timeout = q->cfg.idle_timeout_ms * NGTCP2_MILLISECONDS;
  p->active_connection_id_limit = 4;
}

/* ---- connections ------------------------------------------------------------ */

static struct fy_qconn *conn_alloc(struct fy_quic *q, bool client, const struct sockaddr *remote,
                                   socklen_t remote_len) {
  struct fy_qconn *c = calloc(1, sizeof(*c));
  if (!c)
    return NULL;
  c->q = q;
  c->client = client;
  c->conn_ref.get_conn = get_conn;
  c->conn_ref.user_data = c;
  memcpy(&c->remote, remote, remote_len);
  c->remote_len = remote_len;
  c->why.kind = FY_QCLOSE_LOCAL;
  uv_timer_init(q->loop, &c->timer);
  c->timer.data = c;
  q->open_handles++;
  c->next = q->conns;
  if (q->conns)
    q->conns->prev = c;
  q->conns = c;
  q->nconns++;
  return c;
}

static void conn_path(struct fy_qconn *c, ngtcp2_path *path) {
  path->local.addr = (ngtcp2_sockaddr *)&c->q->local;
  path->local.addrlen = c->q->local_len;
  path->remote.addr = (ngtcp2_sockaddr *)&c->remote;
  path->remote.addrlen = c->remote_len;
  path->user_data = NULL;
}

/* Reads one datagram into a connection, then acts on what happened. */
static void conn_read(struct fy_qconn *c, const struct fy_udp_pkt *pkt) {
  if (c->state == CONN_DEAD)
    return;
  if (c->state == CONN_CLOSING) {
    /* Closing period: repeat our CONNECTION_CLOSE, nothing else (RFC 9000 10.2.1). */
    if (c->close_pkt)
      path_send(c, c->close_pkt, c->close_pkt_len, 0, 0);
    return;
  }
  if (c->state == CONN_DRAINING)
    return;
  ngtcp2_path path;
  conn_path(c, &path);
  ngtcp2_pkt_info pi = {.ecn = pkt->ecn};
  c->in_ngtcp2++;
  int rv = ngtcp2_conn_read_pkt(c->conn, &path, &pi, pkt->data, pkt->len, now_ns());
  c->in_ngtcp2--;
  if (rv != 0)
    conn_fail(c, rv);
  conn_after_ngtcp2(c);
  if (c->state < CONN_CLOSING)
    conn_schedule_flush(c);
}

static int make_cid(ngtcp2_cid *cid) {
  cid->datalen = FY_QUIC_SCID_LEN;
  randombytes_buf(cid->data, cid->datalen);
  return 0;
}

/* Dual-stack sockets see IPv4 peers as ::ffff:a.b.c.d; keep one form per
 * socket so ngtcp2 sees the same path on every packet. */
static int normalize_remote(const struct fy_quic *q, const struct sockaddr *in, socklen_t inlen,
                            struct sockaddr_storage *out, socklen_t *outlen, struct fy_err *err) {
  if (in->sa_family == AF_INET && q->local.ss_family == AF_INET6) {
    const struct sockaddr_in *v4 = (const struct sockaddr_in *)in;
    struct sockaddr_in6 v6 = {.sin6_family = AF_INET6, .sin6_port = v4->sin_port};
    v6.sin6_addr.s6_addr[10] = 0xff;
    v6.sin6_addr.s6_addr[11] = 0xff;
    memcpy(&v6.sin6_addr.s6_addr[12], &v4->sin_addr, 4);
    memcpy(out, &v6, sizeof(v6));
    *outlen = sizeof(v6);
    return 0;
  }
  if (in->sa_family == AF_INET6 && q->local.ss_family == AF_INET)
    return fy_err_set(err, FY_EUNSUPPORTED, "cannot dial an IPv6 address from an IPv4-only endpoint");
  if (inlen > sizeof(*out) || (in->sa_family != AF_INET && in->sa_family != AF_INET6))
    return fy_err_set(err, FY_EINVAL, "not an IP address");
  memcpy(out, in, inlen);
  *outlen = inlen;
  return 0;
}

int fy_quic_dial(struct fy_quic *q, const struct fy_nodeid *peer, const struct sockaddr *addr,
                 socklen_t addrlen, const char *alpn, void *conn_user, struct fy_qconn **out,
                 struct fy_err *err) {
  *out = NULL;
  if (q->shutting_down)
    return fy_err_set(err, FY_EINVAL, "the endpoint is shutting down");
  const struct fy_quic_handler *h = alpn ? find_handler(q, alpn) : NULL;
  if (!h)
    return fy_err_set(err, FY_EINVAL, "no handler registered for ALPN '%s'", alpn ? alpn : "(none)");
  if (q->nconns >= q->cfg.max_conns)
    return fy_err_set(err, FY_ELIMIT, "connection limit %zu reached", q->cfg.max_conns);
  struct sockaddr_storage remote;
  socklen_t remote_len = 0;
  int rc = normalize_remote(q, addr, addrlen, &remote, &remote_len, err);
  if (rc < 0)
    return rc;
  struct fy_qconn *c = conn_alloc(q, true, (const struct sockaddr *)&remote, remote_len);
  if (!c)
    return fy_err_set(err, FY_ENOMEM, "cannot allocate a connection");
  c->peer.pinned = true;
  c->peer.expected = *peer;
  c->handler = h;
  c->user = conn_user;
  snprintf(c->alpn, sizeof(c->alpn), "%s", alpn);
  ngtcp2_cid dcid, scid;
  make_cid(&dcid);
  make_cid(&scid);
  ngtcp2_path path;
  conn_path(c, &path);
  ngtcp2_callbacks cb;
  set_callbacks(&cb, true);
  ngtcp2_settings settings;
  ngtcp2_transport_params params;
  set_settings(q, &settings, &params);
  int rv = ngtcp2_conn_client_new(&c->conn, &dcid, &scid, &path, NGTCP2_PROTO_VER_V1, &cb, &settings, &params,
                                  NULL, c);
  if (rv != 0) {
    c->handler = NULL;
    conn_kill(c);
    return fy_err_set(err, FY_ENOMEM, "cannot create a QUIC connection: %s", ngtcp2_strerror(rv));
  }
  c->ssl = fy_tls_session_new(&q->tls_client, &c->conn_ref, &c->peer, alpn, err);
  if (!c->ssl || cid_add(c, &scid) < 0) {
    c->handler = NULL;
    conn_kill(c);
    return err && err->code ? err->code : fy_err_set(err, FY_ENOMEM, "cannot set up the connection");
  }
  ngtcp2_conn_set_tls_native_handle(c->conn, c->ssl);
  if (q->cfg.keepalive_ms)
    ngtcp2_conn_set_keep_alive_timeout(c->conn, q->cfg.keepalive_ms * NGTCP2_MILLISECONDS);
  *out = c;
  conn_schedule_flush(c);
  return 0;
}

/* ---- the endpoint's receive path -------------------------------------------- */

static void send_raw(struct fy_quic *q, const struct fy_udp_pkt *pkt, const uint8_t *data, size_t len) {
  struct fy_err err;
  (void)fy_udp_send(&q->udp, pkt->remote, pkt->remote_len, data, len, 0, 0, &err);
}

static void send_version_negotiation(struct fy_quic *q, const struct fy_udp_pkt *pkt,
                                     const ngtcp2_version_cid *vc) {
  uint8_t buf[NGTCP2_MAX_UDP_PAYLOAD_SIZE];
  const uint32_t versions[] = {NGTCP2_PROTO_VER_V1};
  uint8_t r;
  randombytes_buf(&r, 1);
  ngtcp2_ssize n = ngtcp2_pkt_write_version_negotiation(buf, sizeof(buf), r, vc->scid, vc->scidlen, vc->dcid,
                                                        vc->dcidlen, versions, 1);
  if (n > 0) {
    send_raw(q, pkt, buf, (size_t)n);
    q->stats.vn_sent++;
  }
}

static bool allow_per_second(uint64_t *window_start, uint32_t *count, uint32_t limit) {
  uint64_t now = now_ns();
  if (now - *window_start >= NGTCP2_SECONDS) {
    *window_start = now;
    *count = 0;
  }
  if (*count >= limit)
    return false;
  (*count)++;
  return true;
}

static void send_stateless_reset(struct fy_quic *q, const struct fy_udp_pkt *pkt, const uint8_t *dcid,
                                 size_t dcidlen) {
  /* Smaller than what provoked it, so two endpoints cannot loop (RFC 9000 10.3.3). */
  if (pkt->len <= NGTCP2_MIN_STATELESS_RESET_RANDLEN + NGTCP2_STATELESS_RESET_TOKENLEN + 1 ||
      dcidlen != FY_QUIC_SCID_LEN)
    return;
  if (!allow_per_second(&q->reset_window_start, &q->resets_in_window, RESETS_PER_SEC))
    return;
  ngtcp2_cid cid;
  ngtcp2_cid_init(&cid, dcid, dcidlen);
  uint8_t token[NGTCP2_STATELESS_RESET_TOKENLEN];
  if (ngtcp2_crypto_generate_stateless_reset_token(token, q->secret, SECRET_LEN, &cid) != 0)
    return;
  uint8_t rand[NGTCP2_MAX_UDP_PAYLOAD_SIZE];
  size_t randlen = pkt->len - 1 - NGTCP2_STATELESS_RESET_TOKENLEN;
  if (randlen > 1200)
    randlen = 1200;
  randombytes_buf(rand, randlen);
  uint8_t buf[NGTCP2_MAX_UDP_PAYLOAD_SIZE];
  ngtcp2_ssize n = ngtcp2_pkt_write_stateless_reset(buf, sizeof(buf), token, rand, randlen);
  if (n > 0) {
    send_raw(q, pkt, buf, (size_t)n);
    q->stats.resets_sent++;
  }
}

/* A stateless reset carries no CID of ours: a peer that lost a connection
 * (it crashed and restarted, say) answers our packets with a datagram that
 * ends in the reset token it gave us for the CID we sent to (RFC 9000
 * 10.3.1). So a short-header datagram for no CID we know may be one: find
 * the connection that holds its last 16 bytes as a token, and let ngtcp2
 * verify it there. Rate-limited like our own resets, since it looks at
 * every connection. */
static struct fy_qconn *reset_target(struct fy_quic *q, const struct fy_udp_pkt *pkt) {
  if (pkt->len < NGTCP2_MIN_STATELESS_RESET_RANDLEN + NGTCP2_STATELESS_RESET_TOKENLEN ||
      !allow_per_second(&q->reset_check_window_start, &q->reset_checks_in_window, RESETS_PER_SEC))
    return NULL;
  const uint8_t *token = pkt->data + pkt->len - NGTCP2_STATELESS_RESET_TOKENLEN;
  for (struct fy_qconn *c = q->conns; c; c = c->next) {
    ngtcp2_cid_token dcids[8];
    if (c->state >= CONN_CLOSING || !c->conn ||
        ngtcp2_conn_get_active_dcid(c->conn, NULL) > sizeof(dcids) / sizeof(dcids[0]))
      continue;
    size_t n = ngtcp2_conn_get_active_dcid(c->conn, dcids);
    for (size_t i = 0; i < n; i++)
      if (dcids[i].token_present &&
          sodium_memcmp(dcids[i].token, token, NGTCP2_STATELESS_RESET_TOKENLEN) == 0)
        return c;
  }
  return NULL;
}

static void send_retry(struct fy_quic *q, const struct fy_udp_pkt *pkt, const ngtcp2_pkt_hd *hd) {
  ngtcp2_cid retry_scid;
  make_cid(&retry_scid);
  uint8_t token[NGTCP2_CRYPTO_MAX_RETRY_TOKENLEN];
  ngtcp2_ssize tl = ngtcp2_crypto_generate_retry_token(token, q->secret, SECRET_LEN, hd->version,
                                                       (const ngtcp2_sockaddr *)pkt->remote, pkt->remote_len,
                                                       &retry_scid, &hd->dcid, now_ns());
  if (tl < 0)
    return;
  uint8_t buf[NGTCP2_MAX_UDP_PAYLOAD_SIZE];
  ngtcp2_ssize n = ngtcp2_crypto_write_retry(buf, sizeof(buf), hd->version, &hd->scid, &retry_scid, &hd->dcid,
                                             token, (size_t)tl);
  if (n > 0) {
    send_raw(q, pkt, buf, (size_t)n);
    q->stats.retries_sent++;
  }
}

static void accept_conn(struct fy_quic *q, const struct fy_udp_pkt *pkt) {
  ngtcp2_pkt_hd hd;
  if (ngtcp2_accept(&hd, pkt->data, pkt->len) != 0) {
    q->stats.pkts_dropped++;
    return;
  }
  if (q->nconns >= q->cfg.max_conns || q->shutting_down) {
    q->stats.pkts_dropped++;
    return;
  }
  ngtcp2_cid odcid;
  bool retried = false;
  ngtcp2_token_type token_type = NGTCP2_TOKEN_TYPE_UNKNOWN;
  if (hd.tokenlen > 0 && hd.token[0] == NGTCP2_CRYPTO_TOKEN_MAGIC_RETRY) {
    if (ngtcp2_crypto_verify_retry_token(&odcid, hd.token, hd.tokenlen, q->secret, SECRET_LEN, hd.version,
                                         (const ngtcp2_sockaddr *)pkt->remote, pkt->remote_len, &hd.dcid,
                                         RETRY_TOKEN_TIMEOUT, now_ns()) != 0) {
      q->stats.pkts_dropped++; /* forged, stale or from another address */
      return;
    }
    retried = true;
    token_type = NGTCP2_TOKEN_TYPE_RETRY;
  } else if (!q->cfg.retry_never &&
             !allow_per_second(&q->hs_window_start, &q->hs_in_window, q->cfg.retry_above_per_sec)) {
    send_retry(q, pkt, &hd);
    return;
  }
  struct fy_qconn *c = conn_alloc(q, false, pkt->remote, pkt->remote_len);
  if (!c)
    return;
  ngtcp2_cid scid;
  make_cid(&scid);
  ngtcp2_path path;
  conn_path(c, &path);
  ngtcp2_callbacks cb;
  set_callbacks(&cb, false);
  ngtcp2_settings settings;
  ngtcp2_transport_params params;
  set_settings(q, &settings, &params);
  settings.token = hd.token;
  settings.tokenlen = hd.tokenlen;
  settings.token_type = token_type;
  params.original_dcid = retried ? odcid : hd.dcid;
  params.original_dcid_present = 1;
  if (retried) {
    params.retry_scid = hd.dcid;
    params.retry_scid_present = 1;
  }
  params.stateless_reset_token_present = 1;
  struct fy_err err = {0};
  if (ngtcp2_crypto_generate_stateless_reset_token(params.stateless_reset_token, q->secret, SECRET_LEN,
                                                   &scid) != 0 ||
      ngtcp2_conn_server_new(&c->conn, &hd.scid, &scid, &path, hd.version, &cb, &settings, &params, NULL,
                             c) != 0 ||
      !(c->ssl = fy_tls_session_new(&q->tls_server, &c->conn_ref, &c->peer, NULL, &err)) ||
      cid_add(c, &scid) < 0 || cid_add(c, &hd.dcid) < 0) {
    conn_kill(c);
    return;
  }
  ngtcp2_conn_set_tls_native_handle(c->conn, c->ssl);
  conn_read(c, pkt);
}

static void on_datagram(void *user, const struct fy_udp_pkt *pkt) {
  struct fy_quic *q = user;
  ngtcp2_version_cid vc;
  int rv = ngtcp2_pkt_decode_version_cid(&vc, pkt->data, pkt->len, FY_QUIC_SCID_LEN);
  if (rv == NGTCP2_ERR_VERSION_NEGOTIATION) {
    if (q->cfg.accept)
      send_version_negotiation(q, pkt, &vc);
    return;
  }
  if (rv != 0) {
    q->stats.pkts_dropped++;
    return;
  }
  struct fy_qconn *c = cid_find(q, vc.dcid, vc.dcidlen);
  if (c) {
    conn_read(c, pkt);
    return;
  }
  if (vc.version == 0) { /* short header: a connection we do not know */
    if ((c = reset_target(q, pkt)))
      conn_read(c, pkt); /* ngtcp2 checks the token and drains the connection */
    else
      send_stateless_reset(q, pkt, vc.dcid, vc.dcidlen);
    return;
  }
  if (q->cfg.accept)
    accept_conn(q, pkt);
  else
    q->stats.pkts_dropped++;
}

/* ---- the endpoint ------------------------------------------------------------ */

static void apply_defaults(struct fy_quic_config *cfg) {
  if (!cfg->idle_timeout_ms)
    cfg->idle_timeout_ms = 30000;
  if (!cfg->handshake_timeout_ms)
    cfg->handshake_timeout_ms = 10000;
  if (!cfg->max_streams_bidi)
    cfg->max_streams_bidi = 1024;
  if (!cfg->stream_window)
    cfg->stream_window = UINT64_C(256) * 1024;
  if (!cfg->conn_window)
    cfg->conn_window = UINT64_C(4) * 1024 * 1024;
  if (!cfg->stream_low_water)
    cfg->stream_low_water = UINT64_C(64) * 1024;
  if (!cfg->max_conns)
    cfg->max_conns = 100000;
}

int fy_quic_new(struct fy_quic **out, uv_loop_t *loop, const struct fy_quic_config *cfg, struct fy_err *err) {
  *out = NULL;
  if ((!cfg->key && cfg->accept) || !cfg->listen || cfg->nhandlers == 0 || cfg->nhandlers > FY_TLS_ALPNS_MAX)
    return fy_err_set(err, FY_EINVAL, "an endpoint needs a key, a listen address and 1 to %d handlers",
                      FY_TLS_ALPNS_MAX);
  struct fy_quic *q = calloc(1, sizeof(*q));
  if (!q)
    return fy_err_set(err, FY_ENOMEM, "cannot allocate the endpoint");
  q->loop = loop;
  q->cfg = *cfg;
  for (size_t i = 0; i < cfg->nhandlers; i++) {
    q->handlers[i] = cfg->handlers[i];
    snprintf(q->alpns[i], sizeof(q->alpns[i]), "%s", cfg->handlers[i].alpn ? cfg->handlers[i].alpn : "");
    q->handlers[i].alpn = q->alpns[i];
  }
  q->cfg.handlers = q->handlers;
  apply_defaults(&q->cfg);
  /* The stateless reset (and retry token) secret is derived from the node
   * key, so it survives a restart: a node that crashed and came back answers
   * its peers' packets for the lost connections with resets they accept,
   * and they reconnect at once instead of waiting out the idle timeout
   * (RFC 9000 10.3.2: a static key). Only a keyless dialer draws one. */
  static const char label[] = "ferry quic endpoint secret v1";
  if (!cfg->key || !cfg->key->sk ||
      crypto_generichash(q->secret, sizeof(q->secret), (const uint8_t *)label, sizeof(label) - 1,
                         cfg->key->sk, crypto_sign_SEEDBYTES) != 0)
    randombytes_buf(q->secret, sizeof(q->secret));
  crypto_shorthash_keygen(q->cid_hash_key);
  const char *alpns[FY_TLS_ALPNS_MAX];
  for (size_t i = 0; i < cfg->nhandlers; i++)
    alpns[i] = cfg->handlers[i].alpn;
  int rc = fy_tls_ctx_init(&q->tls_client, FY_TLS_CLIENT, cfg->key, alpns, cfg->nhandlers, err);
  if (rc == 0 && cfg->accept) {
    rc = fy_tls_ctx_init(&q->tls_server, FY_TLS_SERVER, cfg->key, alpns, cfg->nhandlers, err);
    q->have_server_tls = rc == 0;
  }
  if (rc == 0)
    rc = fy_udp_open(&q->udp, loop, cfg->listen, on_datagram, q, err);
  if (rc == 0)
    fy_udp_on_batch_end(&q->udp, on_batch_end);
  if (rc < 0) {
    if (q->have_server_tls)
      fy_tls_ctx_free(&q->tls_server);
    fy_tls_ctx_free(&q->tls_client);
    free(q);
    return rc;
  }
  q->local_len = sizeof(q->local);
  fy_udp_local_addr(&q->udp, &q->local, &q->local_len);
  uv_prepare_init(loop, &q->flush);
  q->flush.data = q;
  q->open_handles = 2; /* udp + flush */
  *out = q;
  return 0;
}

static void endpoint_maybe_done(struct fy_quic *q) {
  if (!q->shutting_down || q->open_handles > 0)
    return;
  while (q->cids) {
    struct cid_entry *e = q->cids;
    HASH_DEL(q->cids, e); // NOLINT(clang-analyzer-unix.Malloc): uthash unlinks e before the free
    free(e);
  }
  if (q->have_server_tls)
    fy_tls_ctx_free(&q->tls_server);
  fy_tls_ctx_free(&q->tls_client);
  void (*done)(void *) = q->done;
  void *user = q->done_user;
  sodium_memzero(q->secret, sizeof(q->secret));
  free(q);
  if (done)
    done(user);
}

static void udp_closed(struct fy_udp *u) {
  struct fy_quic *q = (struct fy_quic *)((char *)u - offsetof(struct fy_quic, udp));
  q->open_handles--;
  endpoint_maybe_done(q);
}

static void flush_closed(uv_handle_t *h) {
  struct fy_quic *q = h->data;
  q->open_handles--;
  endpoint_maybe_done(q);
}

void fy_quic_shutdown(struct fy_quic *q, void (*done)(void *user), void *user) {
  q->shutting_down = true;
  q->done = done;
  q->done_user = user;
  while (q->conns) {
    struct fy_qconn *c = q->conns;
    if (c->state < CONN_CLOSING) {
      ngtcp2_ccerr_set_application_error(&c->ccerr, 0, (const uint8_t *)"shutdown", 8);
      c->why.kind = FY_QCLOSE_ENDPOINT;
      snprintf(c->why.msg, sizeof(c->why.msg), "the local endpoint shut down");
      conn_enter_closing(c);
    }
    conn_kill(c);
  }
  uv_close((uv_handle_t *)&q->flush, flush_closed);
  fy_udp_close(&q->udp, udp_closed);
}

int fy_quic_local_addr(const struct fy_quic *q, struct sockaddr_storage *out, socklen_t *len) {
  memcpy(out, &q->local, q->local_len);
  *len = q->local_len;
  return 0;
}

void fy_quic_get_stats(const struct fy_quic *q, struct fy_quic_stats *out) {
  *out = q->stats;
  out->conns_open = q->nconns;
}

/* ---- the connection API ---------------------------------------------------------- */

const struct fy_nodeid *fy_qconn_peer(const struct fy_qconn *c) {
  return c->client ? &c->peer.expected : &c->peer.id;
}

const char *fy_qconn_alpn(const struct fy_qconn *c) {
  return c->alpn;
}

bool fy_qconn_is_open(const struct fy_qconn *c) {
  return c->state == CONN_OPEN;
}

bool fy_qconn_is_client(const struct fy_qconn *c) {
  return c->client;
}

bool fy_qconn_was_opened(const struct fy_qconn *c) {
  return c->opened_once;
}

uint64_t fy_qconn_stream_unacked(struct fy_qconn *c, int64_t sid) {
  struct qstream *s = stream_find(c, sid);
  return s ? fy_sendbuf_unacked(&s->sb) : 0;
}

void fy_qconn_stop_reading(struct fy_qconn *c, int64_t sid, uint64_t app_code) {
  if (c->state >= CONN_CLOSING)
    return;
  ngtcp2_conn_shutdown_stream_read(c->conn, 0, sid, app_code);
  conn_schedule_flush(c);
}

void *fy_qconn_user(const struct fy_qconn *c) {
  return c->user;
}

void fy_qconn_set_user(struct fy_qconn *c, void *user) {
  c->user = user;
}

int fy_qconn_open_stream(struct fy_qconn *c, int64_t *sid, void *stream_user) {
  if (c->state >= CONN_CLOSING)
    return FY_EINVAL;
  int rv = ngtcp2_conn_open_bidi_stream(c->conn, sid, NULL);
  if (rv == NGTCP2_ERR_STREAM_ID_BLOCKED)
    return FY_ELIMIT;
  if (rv != 0)
    return FY_EINVAL;
  struct qstream *s = stream_new(c, *sid);
  if (!s) {
    ngtcp2_conn_shutdown_stream(c->conn, 0, *sid, 0);
    return FY_ENOMEM;
  }
  s->user = stream_user;
  return 0;
}

void *fy_qconn_stream_user(struct fy_qconn *c, int64_t sid) {
  struct qstream *s = stream_find(c, sid);
  return s ? s->user : NULL;
}

void fy_qconn_set_stream_user(struct fy_qconn *c, int64_t sid, void *stream_user) {
  struct qstream *s = stream_find(c, sid);
  if (s)
    s->user = stream_user;
}

int64_t fy_qconn_write(struct fy_qconn *c, int64_t sid, const uint8_t *data, size_t len, bool fin) {
  if (c->state >= CONN_CLOSING)
    return FY_EINVAL;
  struct qstream *s = stream_find(c, sid);
  if (!s || s->fin_queued)
    return FY_EINVAL;
  if (len > 0 && fy_sendbuf_append(&s->sb, data, len) < 0)
    return FY_ENOMEM;
  if (fin)
    s->fin_queued = true;
  if (fy_sendbuf_unacked(&s->sb) >= c->q->cfg.stream_low_water)
    s->above_low = true;
  sendq_push(c, s);
  conn_schedule_flush(c);
  return (int64_t)fy_sendbuf_unacked(&s->sb);
}

void fy_qconn_consume(struct fy_qconn *c, int64_t sid, size_t n) {
  if (c->state >= CONN_CLOSING || n == 0)
    return;
  ngtcp2_conn_extend_max_stream_offset(c->conn, sid, n);
  ngtcp2_conn_extend_max_offset(c->conn, n);
  conn_schedule_flush(c);
}

void fy_qconn_reset_stream(struct fy_qconn *c, int64_t sid, uint64_t app_code) {
  if (c->state >= CONN_CLOSING)
    return;
  struct qstream *s = stream_find(c, sid);
  if (s)
    sendq_remove(c, s);
  ngtcp2_conn_shutdown_stream(c->conn, 0, sid, app_code);
  conn_schedule_flush(c);
}

void fy_qconn_close(struct fy_qconn *c, uint64_t app_code, const char *reason) {
  if (c->state >= CONN_CLOSING || c->close_pending)
    return;
  c->close_pending = true;
  c->close_pending_code = app_code;
  snprintf(c->close_pending_reason, sizeof(c->close_pending_reason), "%s", reason ? reason : "");
  conn_after_ngtcp2(c);
}
