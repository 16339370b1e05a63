#include "agent/agent_run.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "app/applet.h"
#include "base/cleanup.h"
#include "fleet/facts.h"
#include "fleet/trust.h"
#include "node/node.h"
#include "rpc/frame.h"

#define ENROLL_DEADLINE_MS 30000
#define FACTS_CHECK_MAX_MS 60000
#define TICK_MS 5000

struct agent {
  const struct fy_agent_options *o;
  const struct fy_log *log;
  struct fy_node *node;
  uint8_t *secret;      /* sodium_malloc'd copy of the ticket's, or NULL */
  uint8_t *reply_bytes; /* what decoded points into, owned while committing */
  uv_loop_t loop;
  uv_signal_t sigint, sigterm;
  uv_timer_t poll, facts, tick;
  uv_work_t work;
  struct fy_buf reply;             /* agent.enroll's reply as it arrives */
  struct fy_agent_enrollment rec;  /* the stored record once enrolled */
  struct fy_agent_enrollment next; /* the record being committed */
  struct fy_agent_enroll_reply decoded;
  struct fy_facts sent_facts, queued_facts;
  struct fy_err work_err;
  struct fy_nodeid coord;
  char addrs[FY_PEER_ADDRS_MAX][FY_PEER_ADDR_TEXT_MAX];
  char last_error[FY_AGENT_ERROR_MAX + 1];
  char exit_msg[FY_ERR_MSG_MAX]; /* why the run ended, for the caller */
  size_t naddrs;
  uint64_t link_since, facts_sent_at, queued;
  enum fy_agent_state state;
  int exit, work_rc, accepted;
  bool handles_ready, closing, enrolled, call_inflight, committing, reply_too_big, link_up, have_facts,
      facts_inflight;
};

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void set_error(struct agent *a, const char *msg) {
  snprintf(a->last_error, sizeof(a->last_error), "%s", msg);
}

static void refresh_queued(struct agent *a) {
  struct fy_outbox_queue_stats qs[16];
  int n = fy_outbox_queues(fy_node_outbox(a->node), NULL, qs, FY_ARRAY_LEN(qs), NULL);
  if (n < 0)
    return;
  uint64_t total = 0;
  for (int i = 0; i < n && (size_t)i < FY_ARRAY_LEN(qs); i++)
    total += qs[i].pending;
  a->queued = total;
}

static void write_status(struct agent *a) {
  struct fy_agent_status s = {
      .state = a->state,
      .has_coordinator = true,
      .coordinator = a->coord,
      .link_up = a->link_up,
      .link_since = a->link_since,
      .queued = a->queued,
      .facts_sent_at = a->facts_sent_at,
      .updated_at = now_ms(),
      .pid = (long)getpid(),
  };
  snprintf(s.last_error, sizeof(s.last_error), "%s", a->last_error);
  /* Enrolled: the labels the coordinator gave; before: the agent's own. */
  if (a->enrolled) {
    snprintf(s.tenant, sizeof(s.tenant), "%s", a->rec.tenant);
    s.labels = a->rec.labels;
  } else if (a->o->labels) {
    s.labels = *a->o->labels;
  }
  struct fy_err err = {0};
  if (fy_agent_status_write(a->o->data_dir, &s, &err) < 0)
    fy_warn(a->log, "status.write_failed", "reason", err.msg);
}

static void set_state(struct agent *a, enum fy_agent_state s) {
  if (a->state == s)
    return;
  a->state = s;
  fy_info(a->log, "state", "state", fy_agent_state_name(s));
  write_status(a);
}

static void wipe_secret(struct agent *a) {
  if (a->secret) {
    sodium_free(a->secret); /* wipes before freeing */
    a->secret = NULL;
  }
}

static void on_handle_closed(uv_handle_t *h) {
  (void)h;
}

static void shutdown_agent(struct agent *a, int exit, const char *why) {
  if (a->closing)
    return;
  a->closing = true;
  a->exit = exit;
  snprintf(a->exit_msg, sizeof(a->exit_msg), "%s", why);
  if (a->handles_ready) {
    uv_close((uv_handle_t *)&a->sigint, on_handle_closed);
    uv_close((uv_handle_t *)&a->sigterm, on_handle_closed);
    uv_close((uv_handle_t *)&a->poll, on_handle_closed);
    uv_close((uv_handle_t *)&a->facts, on_handle_closed);
    uv_close((uv_handle_t *)&a->tick, on_handle_closed);
  }
  a->link_up = false;
  set_error(a, exit == FY_EXIT_OK ? "agent stopped" : why);
  write_status(a);
  fy_node_close(a->node, NULL, NULL);
}

/* ---- facts ------------------------------------------------------------------- */

static void facts_queued(int rc, const struct fy_outbox_receipt *receipt, const struct fy_err *err,
                         void *user) {
  struct agent *a = user;
  a->facts_inflight = false;
  if (rc < 0) {
    fy_warn(a->log, "facts.queue_failed", "reason", err ? err->msg : "");
    return;
  }
  a->sent_facts = a->queued_facts;
  a->have_facts = true;
  a->facts_sent_at = a->queued_facts.collected_at;
  char seq[24];
  snprintf(seq, sizeof(seq), "%" PRIu64, receipt->seq);
  fy_debug(a->log, "facts.queued", "seq", seq);
  if (a->closing)
    return;
  fy_node_kick(a->node);
  refresh_queued(a);
  write_status(a);
}

/* Collects (a few small files: quick enough for the loop) and queues the
 * facts when forced, changed, or a full interval after the last ones. */
static void facts_check(struct agent *a, bool force) {
  if (!a->enrolled || a->closing || a->facts_inflight)
    return;
  struct fy_facts f;
  struct fy_facts_source src = {
      .root = "/",
      .disk_dir = a->o->data_dir,
      .version = a->o->version,
      .labels = a->o->labels,
      .now_ms = now_ms(),
  };
  struct fy_err err = {0};
  if (fy_facts_collect(&src, &f, &err) < 0) {
    fy_warn(a->log, "facts.collect_failed", "reason", err.msg);
    return;
  }
  const char *why = force                                                      ? "start"
                    : !a->have_facts                                           ? "first"
                    : fy_facts_changed(&a->sent_facts, &f)                     ? "changed"
                    : src.now_ms - a->facts_sent_at >= a->o->facts_interval_ms ? "periodic"
                                                                               : NULL;
  if (!why)
    return;
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  if (fy_facts_encode(&f, &b, &err) < 0) {
    fy_warn(a->log, "facts.encode_failed", "reason", err.msg);
    return;
  }
  a->queued_facts = f;
  if (fy_outbox_enqueue_async(fy_node_outbox(a->node), &a->coord, FY_AGENT_TOPIC_FACTS,
                              fy_bytes_of(b.data, b.len), 0, facts_queued, a, &err) < 0) {
    fy_warn(a->log, "facts.queue_failed", "reason", err.msg);
    return;
  }
  a->facts_inflight = true;
  fy_info(a->log, "facts.report", "reason", why);
}

static void on_facts_timer(uv_timer_t *t) {
  facts_check(t->data, false);
}

/* ---- enrollment ----------------------------------------------------------------- */

static void start_enrolled(struct agent *a);

static int enroll_txn(struct fy_txn *t, void *user) {
  struct agent *a = user;
  struct fy_trust view;
  int rc = fy_agent_state_enroll(t, &a->next, a->decoded.statements, a->decoded.nstatements, &view, a->log);
  fy_trust_free(&view);
  if (rc < 0)
    return rc;
  a->accepted = rc;
  return 0;
}

static void enroll_work(uv_work_t *w) {
  struct agent *a = w->data;
  a->work_rc = fy_store_write(fy_node_store(a->node), enroll_txn, a, &a->work_err);
}

static void enroll_committed(uv_work_t *w, int status) {
  struct agent *a = w->data;
  a->committing = false;
  size_t nstatements = a->decoded.nstatements;
  fy_agent_enroll_reply_free(&a->decoded);
  free(a->reply_bytes);
  a->reply_bytes = NULL;
  if (a->closing)
    return;
  if (status < 0 || a->work_rc < 0) {
    const char *why = status < 0 ? uv_strerror(status) : a->work_err.msg;
    fy_error(a->log, "enroll.store_failed", "reason", why);
    shutdown_agent(a, FY_EXIT_FAIL, why);
    return;
  }
  a->rec = a->next;
  a->enrolled = true;
  wipe_secret(a);
  char hex[FY_NODEID_HEX_LEN + 1], n[24], acc[24];
  fy_nodeid_to_hex(&a->coord, hex);
  snprintf(n, sizeof(n), "%zu", nstatements);
  snprintf(acc, sizeof(acc), "%d", a->accepted);
  fy_info(a->log, "enrolled", "tenant", a->rec.tenant, "coordinator", hex, "statements", n, "accepted", acc);
  if (a->o->ticket_path) {
    char own[4096];
    snprintf(own, sizeof(own), "%s/%s", a->o->data_dir, FY_AGENT_TICKET_FILE);
    if (strcmp(own, a->o->ticket_path) == 0 && unlink(own) == 0)
      fy_info(a->log, "ticket.removed", "file", own);
  }
  start_enrolled(a);
  if (a->o->until_enrolled)
    shutdown_agent(a, FY_EXIT_OK, "enrolled");
}

static void handle_reply(struct agent *a) {
  struct fy_err err = {0};
  struct fy_agent_enroll_reply r;
  if (a->reply_too_big || fy_agent_enroll_reply_decode(a->reply.data, a->reply.len, &r, &err) < 0) {
    fy_warn(a->log, "enroll.bad_reply", "reason", a->reply_too_big ? "reply too large" : err.msg);
    set_error(a, a->reply_too_big ? "enroll: reply too large" : err.msg);
    write_status(a);
    return;
  }
  if (r.status == FY_AGENT_ENROLL_PENDING) {
    fy_agent_enroll_reply_free(&r);
    if (a->state != FY_AGENT_PENDING)
      fy_info(a->log, "enroll.pending", "hint", "an admin approves it with `ferry admin agents approve`");
    set_state(a, FY_AGENT_PENDING);
    return;
  }
  /* Enrolled: commit record and statements on the thread pool (an fsync). */
  memset(&a->next, 0, sizeof(a->next));
  a->next.coordinator = a->coord;
  for (size_t i = 0; i < a->naddrs; i++)
    snprintf(a->next.addrs[i], sizeof(a->next.addrs[i]), "%s", a->addrs[i]);
  a->next.naddrs = a->naddrs;
  snprintf(a->next.tenant, sizeof(a->next.tenant), "%s", r.tenant);
  a->next.labels = r.labels;
  memcpy(a->next.roots, r.roots, sizeof(r.roots));
  a->next.nroots = r.nroots;
  a->next.enrolled_at = now_ms();
  a->decoded = r;
  a->reply_bytes = FY_TAKE(a->reply.data); /* the statements point into it */
  a->reply.len = a->reply.cap = 0;
  a->work.data = a;
  int rc = uv_queue_work(&a->loop, &a->work, enroll_work, enroll_committed);
  if (rc < 0) {
    fy_agent_enroll_reply_free(&a->decoded);
    free(FY_TAKE(a->reply_bytes));
    fy_error(a->log, "enroll.store_failed", "reason", uv_strerror(rc));
    shutdown_agent(a, FY_EXIT_FAIL, uv_strerror(rc));
    return;
  }
  a->committing = true;
}

static void enroll_on_msg(struct fy_rpc_ccall *call, const uint8_t *payload, size_t len, void *user) {
  (void)call;
  struct agent *a = user;
  if (a->reply.len + len > FY_AGENT_REPLY_MAX || fy_buf_append(&a->reply, payload, len, NULL) < 0)
    a->reply_too_big = true;
}

static void enroll_on_status(struct fy_rpc_ccall *call, const struct fy_rpc_result *res, void *user) {
  (void)call;
  struct agent *a = user;
  a->call_inflight = false;
  if (!a->closing) {
    if (res->code == FY_RPC_OK) {
      handle_reply(a);
    } else if (res->code == FY_RPC_PERMISSION_DENIED && !res->local) {
      /* Neither a refused ticket nor a revocation heals by asking again. */
      const char *msg = res->message ? res->message : "";
      /* proto/fleet.md: "agent ... is revoked"; a ticket refusal may say
       * "revoked" too (of the ticket). */
      bool revoked = strncmp(msg, "agent ", 6) == 0 && strstr(msg, " is revoked") != NULL;
      fy_error(a->log, "enroll.refused", "reason", msg, "hint",
               revoked ? "an admin revoked this agent" : "the ticket is no good: ask an admin for a new one");
      set_error(a, msg);
      if (revoked)
        set_state(a, FY_AGENT_REVOKED);
      shutdown_agent(a, FY_EXIT_FAIL, msg);
    } else {
      const char *msg = res->message ? res->message : "";
      fy_warn(a->log, "enroll.failed", "code", fy_rpc_code_name(res->code), "reason", msg);
      char line[FY_AGENT_ERROR_MAX + 1];
      snprintf(line, sizeof(line), "enroll: %s: %s", fy_rpc_code_name(res->code), msg);
      set_error(a, line);
      write_status(a);
    }
  }
  fy_buf_free(&a->reply);
  a->reply_too_big = false;
}

static const struct fy_rpc_call_cb enroll_cb = {
    .on_msg = enroll_on_msg,
    .on_status = enroll_on_status,
};

static void enroll_ready(struct fy_qconn *c, const struct fy_qclose *failure, void *user) {
  struct agent *a = user;
  if (a->closing || a->enrolled || failure) {
    a->call_inflight = false;
    return;
  }
  struct fy_facts f;
  struct fy_facts_source src = {.root = "/",
                                .disk_dir = a->o->data_dir,
                                .version = a->o->version,
                                .labels = a->o->labels,
                                .now_ms = now_ms()};
  struct fy_err err = {0};
  FY_AUTOBUF struct fy_buf facts = FY_BUF_INIT;
  FY_AUTOBUF struct fy_buf req = FY_BUF_INIT;
  if (fy_facts_collect(&src, &f, &err) < 0 || fy_facts_encode(&f, &facts, &err) < 0 ||
      fy_agent_enroll_request_encode(a->secret, facts.data, facts.len, &req, &err) < 0 ||
      fy_rpc_unary(fy_node_rpc(a->node), c, FY_AGENT_ENROLL_METHOD, req.data, req.len, ENROLL_DEADLINE_MS,
                   &enroll_cb, a, &err) < 0) {
    a->call_inflight = false;
    fy_warn(a->log, "enroll.start_failed", "reason", err.msg);
    return;
  }
  /* The request held the secret: wipe it before the buffer goes. */
  sodium_memzero(req.data, req.len);
  fy_debug(a->log, "enroll.call", "ticket", a->secret ? "yes" : "no");
}

static void enroll_start(struct agent *a) {
  if (a->closing || a->enrolled || a->call_inflight || a->committing)
    return;
  struct fy_err err = {0};
  a->call_inflight = true;
  if (fy_connmgr_get(fy_node_connmgr(a->node), &a->coord, NULL, 0, NULL, FY_CONNMGR_FAIL_FAST, enroll_ready,
                     a, &err) < 0) {
    a->call_inflight = false;
    fy_debug(a->log, "enroll.no_connection", "reason", err.msg);
  }
}

static void on_poll_timer(uv_timer_t *t) {
  enroll_start(t->data);
}

static void start_enrolled(struct agent *a) {
  uv_timer_stop(&a->poll);
  uint64_t every =
      a->o->facts_interval_ms < FACTS_CHECK_MAX_MS ? a->o->facts_interval_ms : FACTS_CHECK_MAX_MS;
  uv_timer_start(&a->facts, on_facts_timer, every, every);
  set_state(a, FY_AGENT_ENROLLED);
  facts_check(a, true);
}

/* ---- the link -------------------------------------------------------------------- */

/* The coordinator closes a revoked agent's connections right after the
 * handshake; redialling cannot heal that. */
static bool revoked_by(struct agent *a, const struct fy_qclose *why) {
  if (!why || why->kind != FY_QCLOSE_PEER || why->app_code != FY_CLOSE_REVOKED)
    return false;
  char line[FY_AGENT_ERROR_MAX + 1];
  snprintf(line, sizeof(line), "the coordinator turned this agent away: %s", why->msg);
  fy_error(a->log, "agent.revoked", "reason", why->msg);
  set_error(a, line);
  set_state(a, FY_AGENT_REVOKED);
  shutdown_agent(a, FY_EXIT_FAIL, line);
  return true;
}

static void on_conn_open(struct fy_qconn *c, void *user) {
  struct agent *a = user;
  const struct fy_nodeid *peer = fy_qconn_peer(c);
  if (a->closing || !peer || !fy_nodeid_equal(peer, &a->coord))
    return;
  a->link_up = true;
  a->link_since = now_ms();
  fy_info(a->log, "link", "state", "up", "reason", "connected");
  write_status(a);
  enroll_start(a);
}

static void on_conn_close(struct fy_qconn *c, const struct fy_qclose *why, void *user) {
  struct agent *a = user;
  const struct fy_nodeid *peer = fy_qconn_peer(c);
  if (a->closing || !peer || !fy_nodeid_equal(peer, &a->coord))
    return;
  a->link_up = false;
  a->link_since = now_ms();
  if (revoked_by(a, why))
    return;
  set_error(a, why ? why->msg : "closed");
  fy_info(a->log, "link", "state", "down", "reason", a->last_error, "kind",
          why ? fy_qclose_kind_name(why->kind) : "");
  write_status(a);
}

/* Failed dials open no connection, so the observer never hears of them:
 * the manager's status says why the link stays down. */
static void on_tick(uv_timer_t *t) {
  struct agent *a = t->data;
  bool changed = false;
  uint64_t before = a->queued;
  refresh_queued(a);
  changed = before != a->queued;
  struct fy_connmgr_peer_status st;
  if (!a->link_up && fy_connmgr_status(fy_node_connmgr(a->node), &a->coord, NULL, &st) == 0 &&
      st.has_failure && strcmp(st.last_failure.msg, a->last_error) != 0) {
    if (revoked_by(a, &st.last_failure))
      return;
    if (st.last_failure.kind == FY_QCLOSE_WRONG_ID && !a->enrolled) {
      /* Enrolling: the ticket names another coordinator than the one at its
       * address. Waiting will not fix that; an enrolled agent keeps trying. */
      char line[FY_AGENT_ERROR_MAX + 1];
      snprintf(line, sizeof(line), "not the coordinator the ticket names: %s", st.last_failure.msg);
      fy_error(a->log, "enroll.failed", "reason", line);
      shutdown_agent(a, FY_EXIT_FAIL, line);
      return;
    }
    set_error(a, st.last_failure.msg);
    fy_info(a->log, "link", "state", "down", "reason", a->last_error, "kind",
            fy_qclose_kind_name(st.last_failure.kind));
    changed = true;
  }
  if (changed)
    write_status(a);
}

static void on_signal(uv_signal_t *s, int signum) {
  struct agent *a = s->data;
  fy_info(a->log, "signal", "signal", signum == SIGINT ? "INT" : "TERM");
  shutdown_agent(a, FY_EXIT_OK, "stopped by a signal");
}

/* ---- trust statements (on the thread pool, inside the inbox's transaction) --------- */

/* The view is rebuilt from the store inside the transaction each time: the
 * handler may run again (the map grows), and a view kept in memory would
 * then have consumed the statement's sequence number already. Statements are
 * rare (admin changes), so replaying them is cheap. */
static int trust_handler(struct fy_txn *t, const struct fy_nodeid *sender, const char *topic,
                         const struct fy_inbox_msg *m, void *user) {
  (void)topic;
  struct agent *a = user;
  struct fy_agent_enrollment rec;
  int rc = fy_agent_state_get_enrollment(t, &rec);
  if (rc < 0)
    return rc;
  if (rc == 0) /* the enrollment is being committed: the sender tries again */
    return fy_err_set(fy_txn_err(t), FY_EAGAIN, "trust: not enrolled yet");
  char seq[24];
  snprintf(seq, sizeof(seq), "%" PRIu64, m->seq);
  if (!fy_nodeid_equal(sender, &rec.coordinator)) {
    char who[FY_NODEID_SHORT_LEN + 1];
    fy_nodeid_to_short(sender, who);
    fy_warn(a->log, "trust.refused", "seq", seq, "reason", "not from the coordinator", "sender", who);
    return 0;
  }
  struct fy_trust view;
  rc = fy_agent_state_load_trust(t, &rec, &view);
  if (rc < 0) {
    fy_trust_free(&view);
    return rc;
  }
  struct fy_err why = {0};
  enum fy_cmd_refusal ref = fy_trust_apply(&view, m->payload.p, m->payload.n, &why);
  fy_trust_free(&view);
  if (ref != FY_CMD_OK) {
    /* Acknowledged all the same: a statement refused now is refused forever.
     * A replayed one is usually a statement the enrollment reply carried. */
    if (ref == FY_CMD_REPLAYED)
      fy_debug(a->log, "trust.duplicate", "seq", seq, "reason", why.msg);
    else
      fy_warn(a->log, "trust.refused", "seq", seq, "code", fy_cmd_refusal_name(ref), "reason", why.msg);
    return 0;
  }
  if ((rc = fy_agent_state_add_statement(t, m->payload.p, m->payload.n)) < 0)
    return rc;
  fy_info(a->log, "trust.applied", "seq", seq);
  return 0;
}

/* ---- start and stop ---------------------------------------------------------------- */

static int read_record(struct fy_txn *t, void *user) {
  struct agent *a = user;
  return fy_agent_state_get_enrollment(t, &a->rec);
}

static void close_unstarted(struct agent *a) {
  fy_node_close(a->node, NULL, NULL);
  uv_run(&a->loop, UV_RUN_DEFAULT);
}

int fy_agent_run(const struct fy_agent_options *o, struct fy_agent_outcome *out, struct fy_err *err) {
  struct fy_agent_outcome ignored;
  if (!out)
    out = &ignored;
  memset(out, 0, sizeof(*out));
  struct agent *a = calloc(1, sizeof(*a));
  if (!a) {
    fy_err_set(err, FY_ENOMEM, "agent: out of memory");
    return FY_EXIT_FAIL;
  }
  a->o = o;
  a->log = o->log;
  a->state = FY_AGENT_STARTING;
  int st = FY_EXIT_FAIL;
  if (uv_loop_init(&a->loop) != 0) {
    free(a);
    fy_err_set(err, FY_EIO, "agent: cannot make an event loop");
    return FY_EXIT_FAIL;
  }
  const struct fy_store_schema *schemas[] = {&fy_agent_schema};
  struct fy_node_config nc = {
      .data_dir = o->data_dir,
      .key = o->key,
      .listen = o->listen,
      .accept = false,
      .schemas = schemas,
      .nschemas = 1,
      .keepalive_ms = o->keepalive_ms,
      .log = o->log,
  };
  if (fy_node_open(&a->node, &a->loop, &nc, err) < 0) {
    uv_run(&a->loop, UV_RUN_DEFAULT);
    goto done;
  }
  if (fy_inbox_register(fy_node_inbox(a->node), FY_AGENT_TOPIC_TRUST, trust_handler, a, err) < 0) {
    close_unstarted(a);
    goto done;
  }
  int rc = fy_store_read(fy_node_store(a->node), read_record, a, err);
  if (rc < 0) {
    close_unstarted(a);
    goto done;
  }
  a->enrolled = rc == 1;
  out->already_enrolled = a->enrolled;
  if (a->enrolled) {
    a->coord = a->rec.coordinator;
    for (size_t i = 0; i < a->rec.naddrs; i++)
      snprintf(a->addrs[i], sizeof(a->addrs[i]), "%s", a->rec.addrs[i]);
    a->naddrs = a->rec.naddrs;
    if (o->ticket)
      fy_info(a->log, "ticket.ignored", "reason", "already enrolled");
  } else if (o->ticket) {
    if (o->ticket->expires_at <= now_ms()) {
      char when[40];
      time_t secs = (time_t)(o->ticket->expires_at / 1000);
      struct tm tm;
      gmtime_r(&secs, &tm);
      strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
      fy_err_set(err, FY_EINVAL, "the ticket expired at %s: ask an admin for a new one", when);
      close_unstarted(a);
      goto done;
    }
    a->coord = o->ticket->coordinator;
    for (size_t i = 0; i < o->ticket->naddrs; i++)
      snprintf(a->addrs[i], sizeof(a->addrs[i]), "%s", o->ticket->addrs[i]);
    a->naddrs = o->ticket->naddrs;
    a->secret = sodium_malloc(FY_TICKET_SECRET_LEN);
    if (!a->secret) {
      fy_err_set(err, FY_ENOMEM, "agent: cannot allocate guarded memory for the ticket");
      close_unstarted(a);
      goto done;
    }
    memcpy(a->secret, o->ticket->secret, FY_TICKET_SECRET_LEN);
  } else if (o->coordinator) {
    a->coord = o->coordinator->id;
    memcpy(a->addrs, o->coordinator->addrs, sizeof(a->addrs));
    a->naddrs = o->coordinator->naddrs;
  } else {
    fy_err_set(
        err, FY_EUSAGE,
        "no coordinator: enroll with a ticket (`ferry agent enroll TICKET`, or --ticket / --ticket-file), "
        "or name one with --coordinator ID@HOST:PORT to wait for approval");
    st = FY_EXIT_USAGE;
    close_unstarted(a);
    goto done;
  }
  out->coordinator = a->coord;
  if (a->enrolled && o->until_enrolled) {
    /* `ferry agent enroll` on an enrolled agent: the caller says so. */
    out->enrolled = true;
    out->state = FY_AGENT_ENROLLED;
    snprintf(out->tenant, sizeof(out->tenant), "%s", a->rec.tenant);
    st = FY_EXIT_OK;
    close_unstarted(a);
    goto done;
  }
  struct sockaddr_storage sa[FY_PEER_ADDRS_MAX];
  rc = fy_addrs_resolve(a->addrs, a->naddrs, sa, err);
  if (rc < 0 || fy_node_set_addrs(a->node, &a->coord, sa, (size_t)rc, err) < 0 ||
      fy_connmgr_keep(fy_node_connmgr(a->node), &a->coord, sa, (size_t)rc, NULL, true, err) < 0) {
    fy_err_prefix(err, "coordinator");
    close_unstarted(a);
    goto done;
  }
  fy_node_on_conn(a->node, on_conn_open, on_conn_close, a);

  uv_signal_init(&a->loop, &a->sigint);
  uv_signal_init(&a->loop, &a->sigterm);
  uv_timer_init(&a->loop, &a->poll);
  uv_timer_init(&a->loop, &a->facts);
  uv_timer_init(&a->loop, &a->tick);
  a->sigint.data = a->sigterm.data = a->poll.data = a->facts.data = a->tick.data = a;
  a->handles_ready = true;
  uv_signal_start(&a->sigint, on_signal, SIGINT);
  uv_signal_start(&a->sigterm, on_signal, SIGTERM);
  uv_timer_start(&a->tick, on_tick, TICK_MS, TICK_MS);
  char hex[FY_NODEID_HEX_LEN + 1];
  fy_nodeid_to_hex(&a->coord, hex);
  fy_info(a->log, "agent.start", "coordinator", hex, "enrolled", a->enrolled ? "yes" : "no", "ticket",
          a->secret ? "yes" : "no");
  if (a->enrolled) {
    start_enrolled(a);
  } else {
    set_state(a, FY_AGENT_ENROLLING);
    uv_timer_start(&a->poll, on_poll_timer, o->enroll_poll_ms, o->enroll_poll_ms);
  }
  refresh_queued(a);
  write_status(a);
  uv_run(&a->loop, UV_RUN_DEFAULT);
  st = a->exit;
  if (st != FY_EXIT_OK)
    fy_err_set(err, FY_EPERM, "%s", a->exit_msg);
  out->state = a->state;
  out->enrolled = a->enrolled;
  snprintf(out->tenant, sizeof(out->tenant), "%s", a->rec.tenant);

done:
  wipe_secret(a);
  fy_buf_free(&a->reply);
  if (uv_loop_close(&a->loop) != 0)
    fy_warn(a->log, "agent.loop_busy", "reason", "handles left open at exit");
  free(a);
  return st;
}
