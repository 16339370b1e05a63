#include "outbox/intake.h"

#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "outbox/wire.h"

struct pending {
  struct fy_inbox_msg msg; /* payload points into data */
  struct pending *next;
  uint8_t data[];
};

/* One outbox.push call. It outlives the RPC call object while a commit is on
 * the thread pool: `call` goes NULL when the call ends, and the commit's
 * completion frees what is left. */
struct push {
  struct fy_intake *in;
  struct fy_rpc_scall *call;
  struct fy_nodeid sender;
  char topic[FY_OUTBOX_TOPIC_MAX + 1];
  bool have_topic, end_seen, committing;
  struct pending *head, *tail;
  size_t npending;
  /* the batch on the thread pool */
  uv_work_t work;
  struct pending *batch;
  size_t nbatch;
  int handled; /* fy_inbox_deliver_batch's result */
  int refusal; /* the refused message's code, when handled < nbatch */
  struct fy_err err;
  uint64_t applied_up_to;
};

static void push_free(struct push *p) {
  struct pending *q = p->head;
  while (q) {
    struct pending *n = q->next;
    free(q);
    q = n;
  }
  free(p);
}

static int rpc_code_of(int rc) {
  switch (rc) {
  case FY_EAGAIN:
    return FY_RPC_FAILED_PRECONDITION;
  case FY_ENOENT:
    return FY_RPC_NOT_FOUND;
  case FY_EINVAL:
    return FY_RPC_INVALID_ARGUMENT;
  case FY_ELIMIT:
    return FY_RPC_RESOURCE_EXHAUSTED;
  default:
    return FY_RPC_INTERNAL;
  }
}

static void send_ack(struct push *p) {
  struct fy_buf b = FY_BUF_INIT;
  if (fy_outbox_wire_encode_ack(&b, p->applied_up_to, NULL) == 0)
    fy_rpc_reply(p->call, b.data, b.len);
  fy_buf_free(&b);
}

/* Ends the call with a STATUS. p is freed here, unless a commit is on the
 * thread pool: then its completion frees it. Do not touch p afterwards. */
static void finish(struct push *p, int code, const char *msg) {
  struct fy_rpc_scall *call = p->call;
  p->call = NULL;
  fy_rpc_scall_set_user(call, NULL);
  fy_rpc_finish(call, code, msg, code == FY_RPC_RESOURCE_EXHAUSTED || code == FY_RPC_FAILED_PRECONDITION);
  if (!p->committing)
    push_free(p);
}

static void commit_work(uv_work_t *w) {
  struct push *p = w->data;
  struct fy_inbox_msg *msgs = calloc(p->nbatch, sizeof(*msgs));
  int *results = calloc(p->nbatch, sizeof(*results));
  fy_err_clear(&p->err);
  if (!msgs || !results) {
    p->handled = fy_err_set(&p->err, FY_ENOMEM, "out of memory for a batch of %zu", p->nbatch);
  } else {
    size_t i = 0;
    for (struct pending *q = p->batch; q; q = q->next)
      msgs[i++] = q->msg;
    p->handled =
        fy_inbox_deliver_batch(p->in->inbox, &p->sender, p->topic, msgs, p->nbatch, results, &p->err);
    if (p->handled >= 0 && (size_t)p->handled < p->nbatch)
      p->refusal = results[p->handled];
    if (p->handled > 0 && (size_t)p->handled <= p->nbatch)
      p->applied_up_to = msgs[p->handled - 1].seq;
  }
  free(msgs);
  free(results);
}

static void start_commit(struct push *p);

static void commit_done(uv_work_t *w, int status) {
  (void)status;
  struct push *p = w->data;
  p->committing = false;
  struct pending *q = p->batch;
  while (q) {
    struct pending *n = q->next;
    free(q);
    q = n;
  }
  p->batch = NULL;
  if (!p->call) { /* the call ended while we committed */
    push_free(p);
    return;
  }
  if (p->handled > 0)
    send_ack(p);
  if (p->handled < 0) {
    fy_log_kv(p->in->log, FY_LOG_WARN, "intake.store_failed", "topic", p->topic, "why", p->err.msg,
              (const char *)NULL);
    finish(p, rpc_code_of(p->handled), p->err.msg);
    return;
  }
  if ((size_t)p->handled < p->nbatch) {
    fy_log_kv(p->in->log, FY_LOG_INFO, "intake.refused", "topic", p->topic, "why", p->err.msg,
              (const char *)NULL);
    finish(p, rpc_code_of(p->refusal), p->err.msg);
    return;
  }
  if (p->npending > 0)
    start_commit(p);
  else if (p->end_seen)
    finish(p, FY_RPC_OK, "");
}

static void start_commit(struct push *p) {
  size_t max = p->in->batch_max ? p->in->batch_max : 1024;
  p->batch = p->head;
  p->nbatch = 0;
  struct pending *last = NULL;
  while (p->head && p->nbatch < max) {
    last = p->head;
    p->head = p->head->next;
    p->nbatch++;
  }
  if (last)
    last->next = NULL;
  if (!p->head)
    p->tail = NULL;
  p->npending -= p->nbatch;
  p->committing = true;
  p->work.data = p;
  uv_queue_work(p->in->loop, &p->work, commit_work, commit_done);
}

static void on_start(struct fy_rpc_scall *call, void *user) {
  struct fy_intake *in = user;
  struct push *p = calloc(1, sizeof(*p));
  if (!p) {
    fy_rpc_finish(call, FY_RPC_RESOURCE_EXHAUSTED, "out of memory", true);
    return;
  }
  p->in = in;
  p->call = call;
  p->sender = *fy_rpc_scall_peer(call);
  fy_rpc_scall_set_user(call, p);
}

static void on_msg(struct fy_rpc_scall *call, const uint8_t *data, size_t len, void *user) {
  (void)user;
  struct push *p = fy_rpc_scall_user(call);
  if (!p || !p->call)
    return;
  struct fy_err err = {0};
  if (!p->have_topic) {
    if (fy_outbox_wire_decode_topic(data, len, p->topic, &err) < 0) {
      finish(p, FY_RPC_INVALID_ARGUMENT, err.msg);
      return;
    }
    p->have_topic = true;
    return;
  }
  struct fy_outbox_wire_record r;
  if (fy_outbox_wire_decode_record(data, len, &r, &err) < 0) {
    finish(p, FY_RPC_INVALID_ARGUMENT, err.msg);
    return;
  }
  struct pending *q = malloc(sizeof(*q) + r.payload_len);
  if (!q) {
    finish(p, FY_RPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  memcpy(q->data, r.payload, r.payload_len);
  q->msg.seq = r.seq;
  q->msg.prev_seq = r.prev_seq;
  memcpy(q->msg.id, r.id, FY_MSGID_LEN);
  q->msg.payload.p = q->data;
  q->msg.payload.n = r.payload_len;
  q->next = NULL;
  if (p->tail)
    p->tail->next = q;
  else
    p->head = q;
  p->tail = q;
  p->npending++;
  if (!p->committing)
    start_commit(p);
}

static void on_end(struct fy_rpc_scall *call, void *user) {
  (void)user;
  struct push *p = fy_rpc_scall_user(call);
  if (!p || !p->call)
    return;
  p->end_seen = true;
  if (!p->have_topic)
    finish(p, FY_RPC_INVALID_ARGUMENT, "outbox.push: no topic");
  else if (!p->committing && p->npending == 0)
    finish(p, FY_RPC_OK, "");
}

static void on_cancel(struct fy_rpc_scall *call, int code, void *user) {
  (void)code;
  (void)user;
  struct push *p = fy_rpc_scall_user(call);
  if (!p)
    return;
  p->call = NULL;
  if (!p->committing)
    push_free(p);
}

struct fy_rpc_method fy_intake_method(struct fy_intake *intake) {
  struct fy_rpc_method m = {
      .name = FY_OUTBOX_METHOD,
      .user = intake,
      .on_start = on_start,
      .on_msg = on_msg,
      .on_end = on_end,
      .on_cancel = on_cancel,
  };
  return m;
}
