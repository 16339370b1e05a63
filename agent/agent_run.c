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

#include "agent/apply.h"
#include "agent/download.h"
#include "app/applet.h"
#include "base/cleanup.h"
#include "base/mpmap.h"
#include "fleet/facts.h"
#include "fleet/manifest.h"
#include "fleet/trust.h"
#include "node/node.h"
#include "rpc/frame.h"

#define ENROLL_DEADLINE_MS 30000
#define FACTS_CHECK_MAX_MS 60000
#define TICK_MS 5000

struct dl_ctx;

struct agent {
  const struct fy_agent_options *o;
  const struct fy_log *log;
  struct fy_node *node;
  uint8_t *secret;      /* sodium_malloc'd copy of the ticket's, or NULL */
  uint8_t *reply_bytes; /* what decoded points into, owned while committing */
  uv_loop_t loop;
  uv_signal_t sigint, sigterm;
  uv_timer_t poll, facts, tick;
  uv_timer_t after;    /* runs right after an apply transition committed */
  uv_async_t wake;     /* the desired handler (thread pool) wakes the loop */
  unsigned wake_polls; /* looks left for a desired state woken about but not committed yet */
  struct fy_apply *apply;
  struct dl_ctx *dl; /* the engine's download in flight, or NULL */
  char work_dir[4200];
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

/* Copies what fits (snprintf would warn of the truncation it may do). */
static void copy_text(char *out, size_t cap, const char *in) {
  size_t n = strnlen(in, cap - 1);
  memcpy(out, in, n);
  out[n] = '\0';
}

static void set_error(struct agent *a, const char *msg) {
  copy_text(a->last_error, sizeof(a->last_error), msg);
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
  if (a->apply) {
    struct fy_apply_record *r = malloc(sizeof(*r));
    if (r) {
      fy_apply_record(a->apply, r);
      snprintf(s.apply_state, sizeof(s.apply_state), "%s", fy_apply_state_name(r->state));
      snprintf(s.apply_rollout, sizeof(s.apply_rollout), "%s", r->art.id);
      copy_text(s.apply_message, sizeof(s.apply_message), r->message);
      free(r);
    }
    snprintf(s.apply_version, sizeof(s.apply_version), "%s", fy_apply_current_version(a->apply));
    snprintf(s.apply_previous, sizeof(s.apply_previous), "%s", fy_apply_previous_version(a->apply));
  }
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

/* The async handle goes last: inbox handlers may send on it until the
 * node's commits have finished. */
static void node_closed(void *user) {
  struct agent *a = user;
  if (a->handles_ready)
    uv_close((uv_handle_t *)&a->wake, on_handle_closed);
}

/* The engine reads and writes the node's store: it closes first. */
static void apply_closed(void *user) {
  struct agent *a = user;
  fy_node_close(a->node, node_closed, a);
}

static void download_cancel(struct agent *a);

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
    uv_close((uv_handle_t *)&a->after, on_handle_closed);
  }
  a->link_up = false;
  set_error(a, exit == FY_EXIT_OK ? "agent stopped" : why);
  write_status(a);
  download_cancel(a);
  if (a->apply)
    fy_apply_close(FY_TAKE(a->apply), apply_closed, a);
  else
    fy_node_close(a->node, node_closed, a);
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

/* The engine's installed version once it has one, else the configured one. */
static const char *reported_version(const struct agent *a) {
  const char *v = a->apply ? fy_apply_current_version(a->apply) : NULL;
  return v && *v ? v : a->o->version;
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
      .version = reported_version(a),
      .labels = a->o->labels,
      .update = a->o->update,
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
                                .update = a->o->update,
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

static void open_apply(struct agent *a);
static int check_desired(struct agent *a);

static void start_enrolled(struct agent *a) {
  uv_timer_stop(&a->poll);
  if (!a->o->until_enrolled) /* `ferry agent enroll` stops right away */
    open_apply(a);
  uint64_t every =
      a->o->facts_interval_ms < FACTS_CHECK_MAX_MS ? a->o->facts_interval_ms : FACTS_CHECK_MAX_MS;
  uv_timer_start(&a->facts, on_facts_timer, every, every);
  set_state(a, FY_AGENT_ENROLLED);
  facts_check(a, true);
  check_desired(a);
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
  /* A wake-up may come before the handler's transaction committed. */
  check_desired(a);
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

/* ---- rollouts ------------------------------------------------------------------------ */

/* proto/rollout.md: {rollout, state, version, previous, exit, output, message, at}. */
static int queue_report(struct agent *a, struct fy_txn *t, const char *rollout, const char *state,
                        const char *version, const char *previous, int exit_code, const char *output,
                        const char *message, uint64_t at) {
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  msgpack_packer pk;
  msgpack_packer_init(&pk, &b, fy_mp_buf_write);
  msgpack_pack_map(&pk, 8);
  fy_mp_pack_kv_str(&pk, "rollout", rollout);
  fy_mp_pack_kv_str(&pk, "state", state);
  fy_mp_pack_kv_str(&pk, "version", version);
  fy_mp_pack_kv_str(&pk, "previous", previous);
  fy_mp_pack_str(&pk, "exit");
  msgpack_pack_int(&pk, exit_code);
  fy_mp_pack_kv_str(&pk, "output", output);
  fy_mp_pack_kv_str(&pk, "message", message);
  fy_mp_pack_kv_u64(&pk, "at", at);
  if (!b.data)
    return fy_err_set(fy_txn_err(t), FY_ENOMEM, "apply report: out of memory");
  struct fy_outbox_item item = {
      .dest = a->coord, .topic = FY_AGENT_TOPIC_REPORT, .payload = fy_bytes_of(b.data, b.len)};
  return fy_outbox_enqueue_txn(fy_node_outbox(a->node), t, &item, 1, NULL);
}

static void on_after_transition(uv_timer_t *t);

/* On the loop, inside the engine's store transaction. */
static int on_transition(struct fy_txn *t, const struct fy_apply_report *r, void *user) {
  struct agent *a = user;
  int rc = queue_report(a, t, r->attempt_id, fy_apply_state_name(r->to), r->version, r->previous_version,
                        r->exit_code, r->output_tail, r->message, r->at);
  if (rc < 0)
    return rc;
  if (!a->closing)
    uv_timer_start(&a->after, on_after_transition, 0, 0);
  return 0;
}

#define WAKE_POLL_MS 20
#define WAKE_POLLS 50 /* 1 s; the tick catches anything later */

/* The transition has committed by now: deliver its report, show it, and
 * start a desired state that waited for the attempt to end. */
static void on_after_transition(uv_timer_t *t) {
  struct agent *a = t->data;
  if (a->closing)
    return;
  fy_node_kick(a->node);
  refresh_queued(a);
  write_status(a);
  facts_check(a, false);
  if (check_desired(a) == 0 && a->wake_polls > 0) {
    a->wake_polls--;
    uv_timer_start(&a->after, on_after_transition, WAKE_POLL_MS, 0);
  }
}

struct dl_ctx {
  struct agent *a;
  struct fy_download *d;
  fy_apply_download_done done;
  void *ctx;
};

static void download_finished(const struct fy_download_result *r, void *user) {
  struct dl_ctx *d = user;
  if (d->a->dl == d)
    d->a->dl = NULL;
  d->done(r->code, r->message, r->permanent, d->ctx);
  free(d);
}

static int apply_download(const struct fy_apply_artifact *art, const char *dest, fy_apply_download_done done,
                          void *ctx, void *user) {
  struct agent *a = user;
  struct dl_ctx *d = calloc(1, sizeof(*d));
  if (!d)
    return FY_ENOMEM;
  *d = (struct dl_ctx){.a = a, .done = done, .ctx = ctx};
  struct fy_download_request req = {
      .uri = art->uri, .sha256 = art->sha256, .size = art->size, .dest = dest, .log = a->log};
  struct fy_err err = {0};
  int rc = fy_download_start(&d->d, &a->loop, &req, download_finished, d, &err);
  if (rc < 0) {
    fy_warn(a->log, "download.start_failed", "rollout", art->id, "reason", err.msg);
    free(d);
    return rc;
  }
  a->dl = d;
  return 0;
}

/* The .part stays for the next run; done still runs (the engine, closed by
 * then, ignores it). */
static void download_cancel(struct agent *a) {
  if (a->dl)
    fy_download_cancel(a->dl->d);
}

static void open_apply(struct agent *a) {
  if (a->apply)
    return;
  struct fy_apply_config cfg = {
      .loop = &a->loop,
      .store = fy_node_store(a->node),
      .log = a->log,
      .work_dir = a->work_dir,
      .base_version = a->o->version,
      .apply_command = a->o->apply_command,
      .health_command = a->o->health_command,
      .apply_timeout_ms = a->o->apply_timeout_ms,
      .health_timeout_ms = a->o->health_timeout_ms,
      .health_retries = a->o->health_retries,
      .health_interval_ms = a->o->health_interval_ms,
      .on_transition = on_transition,
      .user = a,
      .download = apply_download,
  };
  struct fy_err err = {0};
  if (fy_apply_open(&a->apply, &cfg, &err) < 0) {
    /* The agent stays useful (facts, trust); desired states wait. */
    a->apply = NULL;
    fy_error(a->log, "apply.open_failed", "reason", err.msg);
    char line[FY_AGENT_ERROR_MAX + 1];
    snprintf(line, sizeof(line), "apply engine: %.200s", err.msg);
    set_error(a, line);
  }
}

/* The engine takes an id it can name a file with. */
static bool attempt_id_ok(const char *id) {
  size_t n = strlen(id);
  if (n == 0 || n > FY_APPLY_ID_MAX || id[0] == '.')
    return false;
  for (size_t i = 0; i < n; i++) {
    char c = id[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
          c == '_' || c == '-'))
      return false;
  }
  return true;
}

/* Large: on the heap, not on a thread-pool stack. */
struct desired_work {
  struct fy_manifest m;
  struct fy_apply_record installed, pending;
  struct fy_agent_enrollment rec;
  char rollout[FY_APPLY_ID_MAX + 1];
};

/* On the thread pool, inside the inbox's transaction (see agent_run.h). A
 * refusal is acknowledged: the same bytes would be refused again. */
static int desired_handler(struct fy_txn *t, const struct fy_nodeid *sender, const char *topic,
                           const struct fy_inbox_msg *m, void *user) {
  (void)topic;
  struct agent *a = user;
  char seq[24];
  snprintf(seq, sizeof(seq), "%" PRIu64, m->seq);
  FY_AUTOFREE struct desired_work *w = calloc(1, sizeof(*w));
  if (!w)
    return fy_err_set(fy_txn_err(t), FY_ENOMEM, "desired: out of memory");
  int rc = fy_agent_state_get_enrollment(t, &w->rec);
  if (rc < 0)
    return rc;
  if (rc == 0)
    return fy_err_set(fy_txn_err(t), FY_EAGAIN, "desired: not enrolled yet");
  if (!fy_nodeid_equal(sender, &w->rec.coordinator)) {
    char who[FY_NODEID_SHORT_LEN + 1];
    fy_nodeid_to_short(sender, who);
    fy_warn(a->log, "desired.refused", "seq", seq, "reason", "not from the coordinator", "sender", who);
    return 0;
  }
  struct fy_mpmap map;
  struct fy_err why = {0};
  if (fy_mpmap_decode(&map, m->payload.p, m->payload.n, 2, 16, "desired state", &why) < 0) {
    fy_warn(a->log, "desired.bad", "seq", seq, "reason", why.msg);
    return 0;
  }
  const msgpack_object *man = fy_mp_get(map.map, "manifest");
  if (!fy_mp_str(map.map, "rollout", w->rollout, sizeof(w->rollout)) || !attempt_id_ok(w->rollout)) {
    fy_mpmap_free(&map);
    fy_warn(a->log, "desired.bad", "seq", seq, "reason", "rollout is not an id of [A-Za-z0-9._-]");
    return 0;
  }
  if ((rc = fy_apply_record_get(t, &w->installed)) < 0) {
    fy_mpmap_free(&map);
    return rc;
  }
  const char *current = w->installed.installed_version[0] ? w->installed.installed_version : a->o->version;
  enum fy_cmd_refusal ref = FY_CMD_OK;
  char message[FY_APPLY_MESSAGE_MAX + 1] = "";
  const struct fy_update_prefs *up = a->o->update;
  if (up && up->mode == FY_UPDATE_PINNED) {
    snprintf(message, sizeof(message), "pinned: this agent's update_mode is pinned");
  } else if (!man || man->type != MSGPACK_OBJECT_BIN) {
    snprintf(message, sizeof(message), "%s: desired state: manifest is not bin",
             fy_cmd_refusal_name(FY_CMD_MALFORMED));
  } else {
    struct fy_trust view;
    rc = fy_agent_state_load_trust(t, &w->rec, &view);
    if (rc < 0) {
      fy_trust_free(&view);
      fy_mpmap_free(&map);
      return rc;
    }
    struct fy_manifest_target target = {
        .coordinator = &w->rec.coordinator,
        .tenant = w->rec.tenant,
        .trust = &view,
        .hw_model = up ? up->hw_model : NULL,
        .hw_revision = up ? up->hw_revision : NULL,
        .current_version = current,
    };
    ref = fy_manifest_verify((const uint8_t *)man->via.bin.ptr, man->via.bin.size, &target, &w->m, &why);
    fy_trust_free(&view);
    if (ref != FY_CMD_OK)
      snprintf(message, sizeof(message), "%s: %.400s", fy_cmd_refusal_name(ref), why.msg);
    else if (strlen(w->m.version_text) > FY_APPLY_VERSION_MAX)
      snprintf(message, sizeof(message), "%s: version is longer than %d bytes",
               fy_cmd_refusal_name(FY_CMD_MALFORMED), FY_APPLY_VERSION_MAX);
    else if (up)
      fy_update_refuses(up, w->rollout, &w->m, message, sizeof(message)); /* fills message if it refuses */
  }
  fy_mpmap_free(&map);
  uint64_t now = now_ms();
  if (message[0]) {
    fy_warn(a->log, "desired.refused", "seq", seq, "rollout", w->rollout, "reason", message);
    return queue_report(a, t, w->rollout, fy_apply_state_name(FY_APPLY_FAILED), w->m.version_text, current,
                        -1, "", message, now);
  }
  struct fy_apply_record *p = &w->pending;
  struct fy_apply_artifact *art = &p->art;
  snprintf(art->id, sizeof(art->id), "%s", w->rollout);
  snprintf(art->kind, sizeof(art->kind), "%s", fy_artifact_kind_name(w->m.kind));
  copy_text(art->version, sizeof(art->version), w->m.version_text); /* length checked above */
  snprintf(art->uri, sizeof(art->uri), "%s", w->m.uri);
  memcpy(art->sha256, w->m.sha256, sizeof(art->sha256));
  art->size = w->m.size;
  p->state = FY_APPLY_IDLE;
  p->started_at = now; /* when it arrived: tells a retry from a crash before the delete */
  FY_AUTOBUF struct fy_buf b = FY_BUF_INIT;
  if ((rc = fy_apply_record_encode(p, &b, fy_txn_err(t))) < 0 ||
      (rc = fy_agent_state_put_desired(t, fy_bytes_of(b.data, b.len))) < 0)
    return rc;
  fy_info(a->log, "desired.accepted", "seq", seq, "rollout", w->rollout, "name", w->m.name, "version",
          w->m.version_text);
  uv_async_send(&a->wake);
  return 0;
}

static bool in_attempt(enum fy_apply_state s) {
  return s == FY_APPLY_DOWNLOADING || s == FY_APPLY_STAGED || s == FY_APPLY_ACTIVATING ||
         s == FY_APPLY_VERIFYING || s == FY_APPLY_ROLLING_BACK;
}

struct pending_txn {
  struct agent *a;
  struct fy_apply_record rec; /* the pending desired state read or to drop */
  bool any;                   /* drop: whatever is there (a damaged one) */
  const char *failure;        /* drop: and report the attempt failed with this */
};

static int read_pending(struct fy_txn *t, void *user) {
  struct pending_txn *p = user;
  struct fy_bytes v;
  int rc = fy_agent_state_get_desired(t, &v);
  if (rc <= 0)
    return rc;
  if (fy_apply_record_decode(v.p, v.n, &p->rec, fy_txn_err(t)) < 0)
    return fy_err_prefix(fy_txn_err(t), "desired state");
  return 1;
}

/* Deletes the pending desired state if it is still the one read: one that
 * arrived meanwhile is newer and stays. */
static int drop_pending(struct fy_txn *t, void *user) {
  struct pending_txn *p = user;
  struct fy_bytes v;
  int rc = fy_agent_state_get_desired(t, &v);
  if (rc <= 0)
    return rc;
  if (!p->any) {
    struct fy_apply_record *now = malloc(sizeof(*now));
    if (!now)
      return fy_err_set(fy_txn_err(t), FY_ENOMEM, "desired: out of memory");
    bool same = fy_apply_record_decode(v.p, v.n, now, NULL) == 0 && strcmp(now->art.id, p->rec.art.id) == 0 &&
                now->started_at == p->rec.started_at;
    free(now);
    if (!same)
      return 0;
  }
  if ((rc = fy_agent_state_del_desired(t)) < 0)
    return rc;
  if (p->failure) {
    struct agent *a = p->a;
    rc = queue_report(a, t, p->rec.art.id, fy_apply_state_name(FY_APPLY_FAILED), p->rec.art.version,
                      reported_version(a), -1, "", p->failure, now_ms());
    if (rc < 0)
      return rc;
  }
  return 1;
}

/* On the loop: at start, when woken, after each transition and every tick.
 * 0 when no desired state is pending, 1 when one was handled, -1 when it
 * cannot be now. */
static int check_desired_with(struct agent *a, struct pending_txn *p, struct fy_apply_record *last);

static int check_desired(struct agent *a) {
  if (a->closing || !a->apply || in_attempt(fy_apply_state(a->apply)))
    return -1;
  /* Both are large (a manifest's URI and more): off the stack. */
  struct pending_txn *p = calloc(1, sizeof(*p));
  struct fy_apply_record *last = malloc(sizeof(*last));
  int rc = p && last ? check_desired_with(a, p, last) : -1;
  free(p);
  free(last);
  return rc;
}

static int check_desired_with(struct agent *a, struct pending_txn *p, struct fy_apply_record *last) {
  struct fy_store *st = fy_node_store(a->node);
  p->a = a;
  struct fy_err err = {0};
  int rc = fy_store_read(st, read_pending, p, &err);
  if (rc == 0)
    return 0;
  if (rc < 0) {
    if (err.code != FY_EINVAL) {
      fy_warn(a->log, "desired.read_failed", "reason", err.msg);
      return -1;
    }
    /* Damaged: it would block every later one. */
    fy_error(a->log, "desired.damaged", "reason", err.msg);
    p->any = true;
    if (fy_store_write(st, drop_pending, p, &err) < 0)
      fy_warn(a->log, "desired.drop_failed", "reason", err.msg);
    return 1;
  }
  fy_apply_record(a->apply, last);
  if (last->state != FY_APPLY_IDLE && strcmp(last->art.id, p->rec.art.id) == 0 &&
      last->started_at >= p->rec.started_at) {
    /* Started before a crash kept the delete from committing. */
    fy_info(a->log, "desired.already_started", "rollout", p->rec.art.id);
  } else {
    struct fy_err why = {0};
    rc = fy_apply_start(a->apply, &p->rec.art, &why);
    if (rc == FY_EEXIST)
      return -1;
    if (rc < 0) {
      fy_warn(a->log, "apply.start_failed", "rollout", p->rec.art.id, "reason", why.msg);
      p->failure = why.msg;
    } else {
      fy_info(a->log, "apply.started", "rollout", p->rec.art.id, "version", p->rec.art.version);
    }
  }
  if (fy_store_write(st, drop_pending, p, &err) < 0)
    fy_warn(a->log, "desired.drop_failed", "reason", err.msg);
  if (p->failure)
    fy_node_kick(a->node);
  write_status(a);
  return 1;
}

/* The handler wakes us from inside its transaction, so the commit may not
 * be visible yet: look again a few times shortly after. */
static void on_wake(uv_async_t *h) {
  struct agent *a = h->data;
  if (check_desired(a) == 0 && !a->closing) {
    a->wake_polls = WAKE_POLLS;
    uv_timer_start(&a->after, on_after_transition, WAKE_POLL_MS, 0);
  }
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
  if (o->work_dir)
    snprintf(a->work_dir, sizeof(a->work_dir), "%s", o->work_dir);
  else
    snprintf(a->work_dir, sizeof(a->work_dir), "%s/artifacts", o->data_dir);
  a->state = FY_AGENT_STARTING;
  int st = FY_EXIT_FAIL;
  if (uv_loop_init(&a->loop) != 0) {
    free(a);
    fy_err_set(err, FY_EIO, "agent: cannot make an event loop");
    return FY_EXIT_FAIL;
  }
  const struct fy_store_schema *schemas[] = {&fy_agent_schema, &fy_apply_schema};
  struct fy_node_config nc = {
      .data_dir = o->data_dir,
      .key = o->key,
      .listen = o->listen,
      .accept = false,
      .schemas = schemas,
      .nschemas = FY_ARRAY_LEN(schemas),
      .keepalive_ms = o->keepalive_ms,
      .log = o->log,
  };
  if (fy_node_open(&a->node, &a->loop, &nc, err) < 0) {
    uv_run(&a->loop, UV_RUN_DEFAULT);
    goto done;
  }
  if (fy_inbox_register(fy_node_inbox(a->node), FY_AGENT_TOPIC_TRUST, trust_handler, a, err) < 0 ||
      fy_inbox_register(fy_node_inbox(a->node), FY_AGENT_TOPIC_DESIRED, desired_handler, a, err) < 0) {
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
  uv_timer_init(&a->loop, &a->after);
  uv_async_init(&a->loop, &a->wake, on_wake);
  a->sigint.data = a->sigterm.data = a->poll.data = a->facts.data = a->tick.data = a->after.data = a;
  a->wake.data = a;
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
