#include "outbox/delivery.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/buf.h"
#include "outbox/wire.h"

#define DEFAULT_WINDOW 1024
#define DEFAULT_SCAN_MS 1000
#define DEFAULT_EXPIRE_MS 60000
#define SCAN_QUEUES_MAX 4096

enum lane_state { LANE_IDLE, LANE_CONNECTING, LANE_STREAMING, LANE_ENDING };

struct lane {
  struct fy_delivery *d; /* NULL once the delivery closed while we waited for a connection */
  struct fy_nodeid dest;
  char topic[FY_OUTBOX_TOPIC_MAX + 1];
  enum lane_state state;
  struct fy_rpc_ccall *call;
  uint64_t last_sent; /* the highest seq sent on this call */
  uint64_t acked;     /* the highest seq the receiver acknowledged: applied durably */
  uint64_t *ring;     /* seqs sent and not yet acknowledged, oldest first */
  size_t ring_head, ring_len, ring_cap;
  uint64_t due_at; /* ms: do not start before (a message waits for its retry) */
  struct lane *next;
};

struct fy_delivery {
  uv_loop_t *loop;
  struct fy_delivery_config cfg;
  struct lane *lanes;
  uv_timer_t scan_timer, expire_timer, kick_timer;
  int open_handles;
  bool closing;
  struct fy_delivery_stats stats;
  struct fy_buf scratch;
  void (*done)(void *);
  void *done_user;
};

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void lane_log(const struct lane *l, enum fy_log_level level, const char *event, const char *why) {
  if (!l->d || !l->d->cfg.log)
    return;
  char dest[FY_NODEID_SHORT_LEN + 1];
  fy_nodeid_to_short(&l->dest, dest);
  fy_log_kv(l->d->cfg.log, level, event, "dest", dest, "topic", l->topic, "why", why ? why : "",
            (const char *)NULL);
}

/* ---- the ring of unacknowledged seqs --------------------------------------- */

static bool ring_push(struct lane *l, uint64_t seq) {
  if (l->ring_len == l->ring_cap) {
    size_t cap = l->ring_cap ? l->ring_cap * 2 : 64;
    uint64_t *r = malloc(cap * sizeof(*r));
    if (!r)
      return false;
    for (size_t i = 0; i < l->ring_len; i++)
      r[i] = l->ring[(l->ring_head + i) % l->ring_cap];
    free(l->ring);
    l->ring = r;
    l->ring_cap = cap;
    l->ring_head = 0;
  }
  l->ring[(l->ring_head + l->ring_len) % l->ring_cap] = seq;
  l->ring_len++;
  return true;
}

static uint64_t ring_front(const struct lane *l) {
  return l->ring[l->ring_head];
}

static void ring_pop(struct lane *l) {
  l->ring_head = (l->ring_head + 1) % l->ring_cap;
  l->ring_len--;
}

/* ---- lanes --------------------------------------------------------------------- */

static struct lane *lane_find(struct fy_delivery *d, const struct fy_nodeid *dest, const char *topic) {
  for (struct lane *l = d->lanes; l; l = l->next)
    if (fy_nodeid_equal(&l->dest, dest) && strcmp(l->topic, topic) == 0)
      return l;
  return NULL;
}

static void ignore_result(int rc, uint64_t value, const struct fy_err *err, void *user) {
  (void)rc;
  (void)value;
  (void)err;
  (void)user;
}

static void lane_fill(struct lane *l);

static void lane_end_call(struct lane *l) {
  if (l->state != LANE_STREAMING)
    return;
  l->state = LANE_ENDING;
  if (fy_rpc_end(l->call) < 0) {
    struct fy_rpc_ccall *call = l->call;
    fy_rpc_cancel(call);
  }
}

/* Sends queued messages until the window is full, the call's send buffer
 * is, or the queue is empty (then the call ends once all is acknowledged). */
static void lane_fill(struct lane *l) {
  struct fy_delivery *d = l->d;
  size_t window = d->cfg.window;
  while (l->state == LANE_STREAMING && l->ring_len < window) {
    struct fy_outbox_query q = {
        .dest = &l->dest,
        .topic = l->topic,
        .after_seq = l->last_sent,
        .now_ms = now_ms(),
        .max_msgs = window - l->ring_len,
    };
    struct fy_outbox_batch b = {0};
    struct fy_err err = {0};
    if (fy_outbox_next_batch(d->cfg.outbox, &q, &b, &err) < 0) {
      lane_log(l, FY_LOG_WARN, "delivery.read_failed", err.msg);
      fy_rpc_cancel(l->call);
      return;
    }
    if (b.n == 0) {
      l->due_at = b.next_due;
      fy_outbox_batch_free(&b);
      if (l->ring_len == 0)
        lane_end_call(l);
      return;
    }
    bool blocked = false;
    for (size_t i = 0; i < b.n && !blocked; i++) {
      const struct fy_outbox_msg *m = &b.msgs[i];
      struct fy_outbox_wire_record r = {
          .seq = m->seq, .prev_seq = m->prev_seq, .payload = m->payload.p, .payload_len = m->payload.n};
      memcpy(r.id, m->id, FY_MSGID_LEN);
      d->scratch.len = 0;
      int64_t sent = fy_outbox_wire_encode_record(&d->scratch, &r, &err) < 0
                         ? FY_ENOMEM
                         : fy_rpc_send(l->call, d->scratch.data, d->scratch.len);
      if (sent == FY_EAGAIN) {
        blocked = true; /* on_writable resumes after last_sent */
      } else if (sent < 0 || !ring_push(l, m->seq)) {
        fy_outbox_batch_free(&b);
        fy_rpc_cancel(l->call);
        return;
      } else {
        l->last_sent = m->seq;
        d->stats.sent++;
      }
    }
    fy_outbox_batch_free(&b);
    if (blocked)
      return;
  }
}

static void lane_on_msg(struct fy_rpc_ccall *call, const uint8_t *p, size_t len, void *user) {
  struct lane *l = user;
  uint64_t up_to;
  struct fy_err err = {0};
  if (fy_outbox_wire_decode_ack(p, len, &up_to, &err) < 0) {
    lane_log(l, FY_LOG_WARN, "delivery.bad_ack", err.msg);
    fy_rpc_cancel(call);
    return;
  }
  size_t n = 0;
  while (l->ring_len > 0 && ring_front(l) <= up_to) {
    ring_pop(l);
    n++;
  }
  if (n == 0)
    return;
  l->d->stats.acked += n;
  if (up_to > l->acked)
    l->acked = up_to;
  /* Deleting goes through the committer; the receiver has the messages durably. */
  if (fy_outbox_ack_async(l->d->cfg.outbox, &l->dest, l->topic, up_to, ignore_result, NULL, &err) < 0)
    lane_log(l, FY_LOG_WARN, "delivery.ack_failed", err.msg);
  lane_fill(l);
}

static void lane_on_writable(struct fy_rpc_ccall *call, void *user) {
  (void)call;
  lane_fill(user);
}

static void schedule_kick(struct fy_delivery *d);

static void lane_on_status(struct fy_rpc_ccall *call, const struct fy_rpc_result *res, void *user) {
  (void)call;
  struct lane *l = user;
  struct fy_delivery *d = l->d;
  l->call = NULL;
  l->state = LANE_IDLE;
  if (res->code != FY_RPC_OK && d && !d->closing) {
    d->stats.refusals++;
    lane_log(l, FY_LOG_INFO, "delivery.refused", res->message);
    if (res->code != FY_RPC_FAILED_PRECONDITION && l->ring_len > 0) {
      /* The oldest unacknowledged message waits for its backoff; the queue with it. */
      struct fy_err err = {0};
      fy_outbox_fail_async(d->cfg.outbox, &l->dest, l->topic, ring_front(l), now_ms(), ignore_result, NULL,
                           &err);
      l->due_at = now_ms() + 1; /* the batch query reports the real due time */
    }
  }
  l->ring_len = 0;
  l->ring_head = 0;
  /* The next call starts after what the receiver acknowledged (its deletion
   * may still be on its way through the committer), unless the receiver said
   * the order broke: then from the oldest message. */
  if (res->code == FY_RPC_FAILED_PRECONDITION)
    l->acked = 0;
  l->last_sent = l->acked;
  if (d && !d->closing)
    schedule_kick(d); /* more may have been queued meanwhile */
}

static const struct fy_rpc_call_cb lane_cb = {
    .on_msg = lane_on_msg,
    .on_writable = lane_on_writable,
    .on_status = lane_on_status,
};

static void lane_free(struct lane *l) {
  free(l->ring);
  free(l);
}

static void lane_ready(struct fy_qconn *c, const struct fy_qclose *failure, void *user) {
  struct lane *l = user;
  struct fy_delivery *d = l->d;
  if (!d) { /* the delivery closed while we waited */
    lane_free(l);
    return;
  }
  l->state = LANE_IDLE;
  if (d->closing)
    return;
  if (failure) {
    lane_log(l, FY_LOG_DEBUG, "delivery.unreachable", failure->msg);
    return; /* the connection manager backs off; the next scan asks again */
  }
  struct fy_err err = {0};
  if (fy_rpc_start(d->cfg.rpc, c, FY_OUTBOX_METHOD, 0, &lane_cb, l, &l->call, &err) < 0) {
    lane_log(l, FY_LOG_INFO, "delivery.call_failed", err.msg);
    return;
  }
  d->scratch.len = 0;
  if (fy_outbox_wire_encode_topic(&d->scratch, l->topic, &err) < 0 ||
      fy_rpc_send(l->call, d->scratch.data, d->scratch.len) < 0) {
    fy_rpc_cancel(l->call);
    return;
  }
  l->state = LANE_STREAMING;
  l->last_sent = l->acked;
  d->stats.lanes_started++;
  lane_fill(l);
}

static void lane_start(struct fy_delivery *d, struct lane *l) {
  struct sockaddr_storage addrs[FY_CONNMGR_ADDRS_MAX];
  size_t n = d->cfg.resolve(&l->dest, addrs, FY_CONNMGR_ADDRS_MAX, d->cfg.resolve_user);
  if (n > FY_CONNMGR_ADDRS_MAX)
    n = FY_CONNMGR_ADDRS_MAX;
  /* Even without an address: the destination may have dialled us (an agent
   * behind NAT), and the connection manager knows its connection. */
  struct fy_err err = {0};
  l->state = LANE_CONNECTING;
  int rc = fy_connmgr_get(d->cfg.connmgr, &l->dest, n ? addrs : NULL, n, FY_RPC_ALPN, 0, lane_ready, l, &err);
  if (rc < 0) {
    l->state = LANE_IDLE;
    if (rc == FY_ENOENT)
      lane_log(l, FY_LOG_DEBUG, "delivery.no_address", err.msg); /* the next scan asks again */
    else
      lane_log(l, FY_LOG_INFO, "delivery.connect_failed", err.msg);
  }
}

/* ---- scanning ----------------------------------------------------------------- */

static void scan(struct fy_delivery *d) {
  if (d->closing)
    return;
  struct fy_outbox_queue_stats *qs = malloc(SCAN_QUEUES_MAX * sizeof(*qs));
  if (!qs)
    return;
  struct fy_err err = {0};
  int n = fy_outbox_queues(d->cfg.outbox, NULL, qs, SCAN_QUEUES_MAX, &err);
  if (n < 0) {
    if (d->cfg.log)
      fy_log_kv(d->cfg.log, FY_LOG_WARN, "delivery.scan_failed", "why", err.msg, (const char *)NULL);
    free(qs);
    return;
  }
  uint64_t now = now_ms();
  for (int i = 0; i < n && i < SCAN_QUEUES_MAX; i++) {
    if (qs[i].pending == 0)
      continue;
    struct lane *l = lane_find(d, &qs[i].dest, qs[i].topic);
    if (!l) {
      l = calloc(1, sizeof(*l));
      if (!l)
        break;
      l->d = d;
      l->dest = qs[i].dest;
      memcpy(l->topic, qs[i].topic, sizeof(l->topic));
      l->next = d->lanes;
      d->lanes = l;
    }
    if (l->state == LANE_IDLE && l->due_at <= now) {
      l->due_at = 0;
      lane_start(d, l);
    }
  }
  free(qs);
}

static void on_scan_timer(uv_timer_t *t) {
  scan(t->data);
}

static void on_kick_timer(uv_timer_t *t) {
  scan(t->data);
}

static void schedule_kick(struct fy_delivery *d) {
  if (!uv_is_active((uv_handle_t *)&d->kick_timer))
    uv_timer_start(&d->kick_timer, on_kick_timer, 0, 0);
}

void fy_delivery_kick(struct fy_delivery *d) {
  if (!d->closing)
    schedule_kick(d);
}

static void on_expire_timer(uv_timer_t *t) {
  struct fy_delivery *d = t->data;
  struct fy_err err = {0};
  fy_outbox_expire_async(d->cfg.outbox, now_ms(), ignore_result, NULL, &err);
}

/* ---- lifecycle --------------------------------------------------------------------- */

int fy_delivery_new(struct fy_delivery **out, uv_loop_t *loop, const struct fy_delivery_config *cfg,
                    struct fy_err *err) {
  *out = NULL;
  if (!cfg->outbox || !cfg->connmgr || !cfg->rpc || !cfg->resolve)
    return fy_err_set(err, FY_EINVAL, "delivery needs an outbox, a connection manager, RPC and a resolver");
  struct fy_delivery *d = calloc(1, sizeof(*d));
  if (!d)
    return fy_err_set(err, FY_ENOMEM, "cannot allocate the delivery loop");
  d->loop = loop;
  d->cfg = *cfg;
  if (!d->cfg.window)
    d->cfg.window = DEFAULT_WINDOW;
  if (!d->cfg.scan_ms)
    d->cfg.scan_ms = DEFAULT_SCAN_MS;
  if (!d->cfg.expire_ms)
    d->cfg.expire_ms = DEFAULT_EXPIRE_MS;
  uv_timer_t *timers[] = {&d->scan_timer, &d->expire_timer, &d->kick_timer};
  for (size_t i = 0; i < 3; i++) {
    uv_timer_init(loop, timers[i]);
    timers[i]->data = d;
  }
  d->open_handles = 3;
  uv_timer_start(&d->scan_timer, on_scan_timer, 0, d->cfg.scan_ms);
  uv_timer_start(&d->expire_timer, on_expire_timer, d->cfg.expire_ms, d->cfg.expire_ms);
  *out = d;
  return 0;
}

static void timer_closed(uv_handle_t *h) {
  struct fy_delivery *d = h->data;
  if (--d->open_handles > 0)
    return;
  void (*done)(void *) = d->done;
  void *user = d->done_user;
  fy_buf_free(&d->scratch);
  free(d);
  if (done)
    done(user);
}

void fy_delivery_close(struct fy_delivery *d, void (*done)(void *user), void *user) {
  d->closing = true;
  d->done = done;
  d->done_user = user;
  struct lane *l = d->lanes;
  while (l) {
    struct lane *next = l->next;
    if (l->call)
      fy_rpc_cancel(l->call); /* on_status runs now; the messages stay queued */
    if (l->state == LANE_CONNECTING)
      l->d = NULL; /* lane_ready frees it when the connection manager answers */
    else
      lane_free(l);
    l = next;
  }
  d->lanes = NULL;
  uv_close((uv_handle_t *)&d->scan_timer, timer_closed);
  uv_close((uv_handle_t *)&d->expire_timer, timer_closed);
  uv_close((uv_handle_t *)&d->kick_timer, timer_closed);
}

void fy_delivery_get_stats(const struct fy_delivery *d, struct fy_delivery_stats *out) {
  *out = d->stats;
}
