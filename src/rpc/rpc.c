#include "rpc/rpc.h"

#include <stdlib.h>
#include <string.h>

#include "base/buf.h"

#define DEFAULT_MAX_CALLS 1024
#define DEFAULT_SEND_MAX (UINT64_C(8) * 1024 * 1024)

struct fy_rpc {
  uv_loop_t *loop;
  struct fy_rpc_config cfg;
  struct fy_buf scratch; /* frames are encoded here, then copied into the stream */
  uint64_t (*obs_open)(struct fy_qconn *, void *);
  void (*obs_close)(struct fy_qconn *, const struct fy_qclose *, void *);
  void *obs_user;
};

/* What the RPC layer keeps per connection (the connection's user slot). */
struct rpc_conn {
  struct fy_rpc *r;
  struct fy_qconn *qc;
  struct rpc_stream *streams; /* every live call on this connection */
  uint32_t server_calls;
  bool closed;
  void *observer_user; /* what the dialer put in the connection's user slot */
};

enum stream_role { ROLE_SERVER, ROLE_CLIENT };

/* One call's stream; embedded state for either side. */
struct rpc_stream {
  struct rpc_conn *rc;
  int64_t sid;
  enum stream_role role;
  struct fy_frame_reader reader;
  struct rpc_stream *prev, *next;
  uv_timer_t deadline;
  bool deadline_armed;
  bool done;     /* final callback delivered; only waiting for the stream to close */
  bool got_call; /* server: CALL seen */
  bool got_end;  /* server: END seen */
  bool sent_end; /* client: END sent */
  bool in_callback;
  bool free_after_callback;
  bool stream_closed;
  /* server */
  const struct fy_rpc_method *method;
  char method_name[FY_RPC_METHOD_MAX + 1];
  void *scall_user;
  /* client */
  struct fy_rpc_call_cb cb;
  void *user;
};

struct fy_rpc_scall {
  struct rpc_stream s;
};
struct fy_rpc_ccall {
  struct rpc_stream s;
};

/* ---- stream bookkeeping --------------------------------------------------- */

static void stream_link(struct rpc_conn *rc, struct rpc_stream *s) {
  s->next = rc->streams;
  if (rc->streams)
    rc->streams->prev = s;
  rc->streams = s;
}

static void stream_unlink(struct rpc_stream *s) {
  if (s->prev)
    s->prev->next = s->next;
  else if (s->rc)
    s->rc->streams = s->next;
  if (s->next)
    s->next->prev = s->prev;
  s->prev = s->next = NULL;
}

static void stream_timer_closed(uv_handle_t *h) {
  free(h->data);
}

/* Frees the call once its final callback ran and QUIC forgot the stream (or
 * the connection is gone). The deadline timer's close callback does the free. */
static void stream_release(struct rpc_stream *s) {
  if (!s->done || (!s->stream_closed && !s->rc->closed))
    return;
  if (s->in_callback) {
    s->free_after_callback = true;
    return;
  }
  stream_unlink(s);
  if (s->role == ROLE_SERVER && s->got_call && s->rc->server_calls > 0)
    s->rc->server_calls--;
  fy_frame_reader_free(&s->reader);
  uv_timer_stop(&s->deadline);
  uv_close((uv_handle_t *)&s->deadline, stream_timer_closed);
}

static struct rpc_stream *stream_new(struct rpc_conn *rc, int64_t sid, enum stream_role role) {
  size_t size = role == ROLE_SERVER ? sizeof(struct fy_rpc_scall) : sizeof(struct fy_rpc_ccall);
  struct rpc_stream *s = calloc(1, size);
  if (!s)
    return NULL;
  s->rc = rc;
  s->sid = sid;
  s->role = role;
  fy_frame_reader_init(&s->reader, rc->r->cfg.max_frame);
  uv_timer_init(rc->r->loop, &s->deadline);
  s->deadline.data = s;
  stream_link(rc, s);
  return s;
}

/* Encodes one frame into the scratch buffer and queues it on the stream. */
static int64_t write_frame(struct rpc_stream *s, const struct fy_rpc_frame *f, const uint8_t *msg,
                           size_t msg_len, bool fin) {
  struct fy_rpc *r = s->rc->r;
  if (s->rc->closed)
    return FY_EINVAL;
  r->scratch.len = 0;
  int rc =
      f ? fy_frame_encode(&r->scratch, f, 0, NULL) : fy_frame_encode_msg(&r->scratch, msg, msg_len, 0, NULL);
  if (rc < 0)
    return rc;
  return fy_qconn_write(s->rc->qc, s->sid, r->scratch.data, r->scratch.len, fin);
}

static int64_t send_msg(struct rpc_stream *s, const uint8_t *payload, size_t len) {
  if (s->done)
    return FY_EINVAL;
  /* Refuse before buffering: the bound on what a slow reader makes us hold. */
  if (s->rc->closed)
    return FY_EINVAL;
  if (fy_qconn_stream_unacked(s->rc->qc, s->sid) + len > s->rc->r->cfg.send_buffer_max)
    return FY_EAGAIN;
  return write_frame(s, NULL, payload, len, false);
}

/* ---- client side -------------------------------------------------------------- */

static void client_finish(struct rpc_stream *s, const struct fy_rpc_result *res) {
  if (s->done)
    return;
  s->done = true;
  uv_timer_stop(&s->deadline);
  s->in_callback = true;
  if (s->cb.on_status)
    s->cb.on_status((struct fy_rpc_ccall *)s, res, s->user);
  s->in_callback = false;
  s->free_after_callback = false;
  stream_release(s);
}

static void client_local_status(struct rpc_stream *s, int code, const char *message, bool retryable) {
  struct fy_rpc_result res = {.code = code, .message = message, .retryable = retryable, .local = true};
  client_finish(s, &res);
}

static void on_client_deadline(uv_timer_t *t) {
  struct rpc_stream *s = t->data;
  if (s->done)
    return;
  fy_qconn_reset_stream(s->rc->qc, s->sid, FY_RPC_QUIC_CANCELLED);
  client_local_status(s, FY_RPC_DEADLINE_EXCEEDED, "deadline exceeded", true);
}

int fy_rpc_start(struct fy_rpc *r, struct fy_qconn *conn, const char *method, uint32_t deadline_ms,
                 const struct fy_rpc_call_cb *cb, void *user, struct fy_rpc_ccall **out, struct fy_err *err) {
  *out = NULL;
  if (!fy_qconn_was_opened(conn) || !fy_qconn_is_open(conn))
    return fy_err_set(err, FY_EAGAIN, "the connection is not open for RPC");
  struct rpc_conn *rc = fy_qconn_user(conn);
  if (!rc || rc->r != r)
    return fy_err_set(err, FY_EINVAL, "the connection does not speak %s", FY_RPC_ALPN);
  int64_t sid;
  int rv = fy_qconn_open_stream(conn, &sid, NULL);
  if (rv == FY_ELIMIT)
    return fy_err_set(err, FY_ELIMIT, "the peer allows no more concurrent calls right now");
  if (rv < 0)
    return fy_err_set(err, rv, "cannot open a stream for the call");
  struct rpc_stream *s = stream_new(rc, sid, ROLE_CLIENT);
  if (!s) {
    fy_qconn_reset_stream(conn, sid, FY_RPC_QUIC_CANCELLED);
    return fy_err_set(err, FY_ENOMEM, "cannot allocate a call");
  }
  fy_qconn_set_stream_user(conn, sid, s);
  s->cb = *cb;
  s->user = user;
  struct fy_rpc_frame f = {.type = FY_RPC_CALL};
  f.call.method.ptr = method;
  f.call.method.len = strlen(method);
  f.call.deadline_ms = deadline_ms;
  int64_t wr = write_frame(s, &f, NULL, 0, false);
  if (wr < 0) {
    fy_qconn_reset_stream(conn, sid, FY_RPC_QUIC_CANCELLED);
    s->done = true;
    s->stream_closed = true; /* nobody else will hear of it */
    stream_release(s);
    return fy_err_set(err, (int)wr, "cannot encode the call to '%s' (a valid method is service.method)",
                      method);
  }
  if (deadline_ms) {
    uv_timer_start(&s->deadline, on_client_deadline, deadline_ms, 0);
    s->deadline_armed = true;
  }
  *out = (struct fy_rpc_ccall *)s;
  return 0;
}

int64_t fy_rpc_send(struct fy_rpc_ccall *call, const uint8_t *payload, size_t len) {
  struct rpc_stream *s = &call->s;
  if (s->sent_end)
    return FY_EINVAL;
  return send_msg(s, payload, len);
}

int fy_rpc_end(struct fy_rpc_ccall *call) {
  struct rpc_stream *s = &call->s;
  if (s->sent_end || s->done)
    return FY_EINVAL;
  s->sent_end = true;
  struct fy_rpc_frame f = {.type = FY_RPC_END};
  int64_t rc = write_frame(s, &f, NULL, 0, true);
  return rc < 0 ? (int)rc : 0;
}

void fy_rpc_cancel(struct fy_rpc_ccall *call) {
  struct rpc_stream *s = &call->s;
  if (s->done)
    return;
  fy_qconn_reset_stream(s->rc->qc, s->sid, FY_RPC_QUIC_CANCELLED);
  client_local_status(s, FY_RPC_CANCELLED, "cancelled by the caller", false);
}

int fy_rpc_unary(struct fy_rpc *r, struct fy_qconn *conn, const char *method, const uint8_t *req, size_t len,
                 uint32_t deadline_ms, const struct fy_rpc_call_cb *cb, void *user, struct fy_err *err) {
  struct fy_rpc_ccall *call = NULL;
  int rc = fy_rpc_start(r, conn, method, deadline_ms, cb, user, &call, err);
  if (rc < 0 || !call)
    return rc < 0 ? rc : FY_EINVAL;
  int64_t sent = fy_rpc_send(call, req, len);
  if (sent < 0 || fy_rpc_end(call) < 0) {
    fy_rpc_cancel(call);
    return fy_err_set(err, sent < 0 ? (int)sent : FY_EINVAL, "cannot send the request of '%s'", method);
  }
  return 0;
}

static void client_frame(struct rpc_stream *s, const struct fy_rpc_frame *f) {
  switch (f->type) {
  case FY_RPC_MSG:
    if (s->cb.on_msg) {
      s->in_callback = true;
      s->cb.on_msg((struct fy_rpc_ccall *)s, f->msg.payload.ptr, f->msg.payload.len, s->user);
      s->in_callback = false;
    }
    break;
  case FY_RPC_STATUS: {
    char msg[FY_RPC_MESSAGE_MAX + 1];
    memcpy(msg, f->status.message.ptr ? f->status.message.ptr : "", f->status.message.len);
    msg[f->status.message.len] = '\0';
    struct fy_rpc_result res = {.code = f->status.code,
                                .message = msg,
                                .retryable = f->status.retryable,
                                .details = f->status.details.ptr,
                                .details_len = f->status.has_details ? f->status.details.len : 0};
    client_finish(s, &res);
    break;
  }
  default:
    fy_qconn_reset_stream(s->rc->qc, s->sid, FY_RPC_QUIC_PROTOCOL_VIOLATION);
    client_local_status(s, FY_RPC_INTERNAL, "the server sent a frame a client never receives", false);
  }
}

/* ---- server side ------------------------------------------------------------------ */

static void server_cancel(struct rpc_stream *s, int code) {
  if (s->done)
    return;
  s->done = true;
  uv_timer_stop(&s->deadline);
  if (s->method && s->method->on_cancel && s->got_call) {
    s->in_callback = true;
    s->method->on_cancel((struct fy_rpc_scall *)s, code, s->method->user);
    s->in_callback = false;
  }
  s->free_after_callback = false;
  stream_release(s);
}

static void on_server_deadline(uv_timer_t *t) {
  struct rpc_stream *s = t->data;
  if (s->done)
    return;
  /* Tell the client why, then stop the handler. */
  struct fy_rpc_frame f = {.type = FY_RPC_STATUS};
  f.status.code = FY_RPC_DEADLINE_EXCEEDED;
  f.status.message.ptr = "deadline exceeded";
  f.status.message.len = strlen(f.status.message.ptr);
  f.status.retryable = true;
  write_frame(s, &f, NULL, 0, true);
  server_cancel(s, FY_RPC_DEADLINE_EXCEEDED);
}

/* Ends a call that never reached a handler (unknown method, limits). */
static void server_refuse(struct rpc_stream *s, int code, const char *message) {
  struct fy_rpc_frame f = {.type = FY_RPC_STATUS};
  f.status.code = code;
  f.status.message.ptr = message;
  f.status.message.len = strlen(message);
  f.status.retryable = code == FY_RPC_RESOURCE_EXHAUSTED || code == FY_RPC_UNAVAILABLE;
  write_frame(s, &f, NULL, 0, true);
  fy_qconn_stop_reading(s->rc->qc, s->sid, FY_RPC_QUIC_CANCELLED);
  s->done = true;
  stream_release(s);
}

static const struct fy_rpc_method *find_method(const struct fy_rpc *r, const char *name, size_t len) {
  for (size_t i = 0; i < r->cfg.nmethods; i++)
    if (strlen(r->cfg.methods[i].name) == len && memcmp(r->cfg.methods[i].name, name, len) == 0)
      return &r->cfg.methods[i];
  return NULL;
}

static void server_frame(struct rpc_stream *s, const struct fy_rpc_frame *f) {
  struct fy_rpc *r = s->rc->r;
  if (!s->got_call) {
    if (f->type != FY_RPC_CALL) {
      fy_qconn_reset_stream(s->rc->qc, s->sid, FY_RPC_QUIC_PROTOCOL_VIOLATION);
      s->done = true;
      stream_release(s);
      return;
    }
    s->got_call = true;
    s->rc->server_calls++;
    memcpy(s->method_name, f->call.method.ptr, f->call.method.len);
    s->method_name[f->call.method.len] = '\0';
    if (s->rc->server_calls > r->cfg.max_calls_per_conn) {
      char msg[128];
      snprintf(msg, sizeof(msg), "too many concurrent calls on this connection (limit %u)",
               r->cfg.max_calls_per_conn);
      server_refuse(s, FY_RPC_RESOURCE_EXHAUSTED, msg);
      return;
    }
    s->method = find_method(r, f->call.method.ptr, f->call.method.len);
    if (!s->method) {
      char msg[FY_RPC_METHOD_MAX + 32];
      snprintf(msg, sizeof(msg), "no method '%s'", s->method_name);
      server_refuse(s, FY_RPC_UNIMPLEMENTED, msg);
      return;
    }
    if (f->call.deadline_ms) {
      uv_timer_start(&s->deadline, on_server_deadline, f->call.deadline_ms, 0);
      s->deadline_armed = true;
    }
    if (s->method->on_start) {
      s->in_callback = true;
      s->method->on_start((struct fy_rpc_scall *)s, s->method->user);
      s->in_callback = false;
    }
    return;
  }
  if (s->done)
    return;
  if (f->type == FY_RPC_MSG && !s->got_end) {
    if (s->method->on_msg) {
      s->in_callback = true;
      s->method->on_msg((struct fy_rpc_scall *)s, f->msg.payload.ptr, f->msg.payload.len, s->method->user);
      s->in_callback = false;
    }
  } else if (f->type == FY_RPC_END && !s->got_end) {
    s->got_end = true;
    if (s->method->on_end) {
      s->in_callback = true;
      s->method->on_end((struct fy_rpc_scall *)s, s->method->user);
      s->in_callback = false;
    }
  } else {
    fy_qconn_reset_stream(s->rc->qc, s->sid, FY_RPC_QUIC_PROTOCOL_VIOLATION);
    server_cancel(s, FY_RPC_INTERNAL);
  }
}

int64_t fy_rpc_reply(struct fy_rpc_scall *call, const uint8_t *payload, size_t len) {
  return send_msg(&call->s, payload, len);
}

int fy_rpc_finish(struct fy_rpc_scall *call, int code, const char *message, bool retryable) {
  struct rpc_stream *s = &call->s;
  if (s->done)
    return FY_EINVAL;
  struct fy_rpc_frame f = {.type = FY_RPC_STATUS};
  f.status.code = code;
  f.status.message.ptr = message ? message : "";
  f.status.message.len = strlen(f.status.message.ptr);
  if (f.status.message.len > FY_RPC_MESSAGE_MAX)
    f.status.message.len = FY_RPC_MESSAGE_MAX;
  f.status.retryable = code != FY_RPC_OK && retryable;
  int64_t rc = write_frame(s, &f, NULL, 0, true);
  s->done = true;
  uv_timer_stop(&s->deadline);
  /* The client may still be sending: we no longer read, so stop it. */
  if (!s->got_end)
    fy_qconn_stop_reading(s->rc->qc, s->sid, FY_RPC_QUIC_CANCELLED);
  stream_release(s);
  return rc < 0 ? (int)rc : 0;
}

const struct fy_nodeid *fy_rpc_scall_peer(const struct fy_rpc_scall *call) {
  return fy_qconn_peer(call->s.rc->qc);
}
struct fy_qconn *fy_rpc_scall_conn(const struct fy_rpc_scall *call) {
  return call->s.rc->qc;
}
const char *fy_rpc_scall_method(const struct fy_rpc_scall *call) {
  return call->s.method_name;
}
void *fy_rpc_conn_user(const struct fy_qconn *qc) {
  const struct rpc_conn *rc = fy_qconn_was_opened(qc) ? fy_qconn_user(qc) : NULL;
  return rc ? rc->observer_user : fy_qconn_user(qc);
}

void *fy_rpc_scall_user(const struct fy_rpc_scall *call) {
  return call->s.scall_user;
}
void fy_rpc_scall_set_user(struct fy_rpc_scall *call, void *user) {
  call->s.scall_user = user;
}

/* ---- the QUIC handler ----------------------------------------------------------------- */

static uint64_t rpc_on_open(struct fy_qconn *qc, void *user) {
  struct fy_rpc *r = user;
  struct rpc_conn *rc = calloc(1, sizeof(*rc));
  if (!rc)
    return FY_RPC_QUIC_CANCELLED;
  rc->r = r;
  rc->qc = qc;
  rc->observer_user = fy_qconn_user(qc);
  fy_qconn_set_user(qc, rc);
  return r->obs_open ? r->obs_open(qc, r->obs_user) : 0;
}

static void rpc_on_stream_data(struct fy_qconn *qc, int64_t sid, const uint8_t *data, size_t len, bool fin,
                               void *user) {
  (void)user;
  struct rpc_conn *rc = fy_qconn_user(qc);
  struct rpc_stream *s = fy_qconn_stream_user(qc, sid);
  if (!s) {
    /* A new stream from the peer is a new server call. Our own client streams
     * always have their state set. */
    s = stream_new(rc, sid, ROLE_SERVER);
    if (!s) {
      fy_qconn_reset_stream(qc, sid, FY_RPC_QUIC_CANCELLED);
      return;
    }
    fy_qconn_set_stream_user(qc, sid, s);
  }
  size_t off = 0;
  while (off < len && !s->done) {
    size_t used = 0;
    struct fy_rpc_bin body;
    struct fy_err err = {0};
    int got = fy_frame_reader_feed(&s->reader, data + off, len - off, &used, &body, &err);
    off += used;
    if (got < 0) {
      fy_qconn_reset_stream(qc, sid, fy_frame_quic_error(got));
      if (s->role == ROLE_CLIENT)
        client_local_status(s, FY_RPC_INTERNAL, err.msg, false);
      else
        server_cancel(s, FY_RPC_INTERNAL);
      break;
    }
    if (got == 0)
      break;
    struct fy_rpc_frame f;
    int parsed = fy_frame_parse(body.ptr, body.len, &f, &err);
    if (parsed < 0) {
      fy_qconn_reset_stream(qc, sid, fy_frame_quic_error(parsed));
      if (s->role == ROLE_CLIENT)
        client_local_status(s, FY_RPC_INTERNAL, err.msg, false);
      else
        server_cancel(s, FY_RPC_INTERNAL);
      break;
    }
    if (s->role == ROLE_CLIENT)
      client_frame(s, &f);
    else
      server_frame(s, &f);
  }
  if (fin && !s->done) {
    struct fy_err err = {0};
    if (fy_frame_reader_finish(&s->reader, &err) < 0) {
      /* The peer's side ended inside a frame. */
      fy_qconn_reset_stream(qc, sid, FY_RPC_QUIC_PROTOCOL_VIOLATION);
      if (s->role == ROLE_CLIENT)
        client_local_status(s, FY_RPC_INTERNAL, err.msg, false);
      else
        server_cancel(s, FY_RPC_INTERNAL);
    } else if (s->role == ROLE_CLIENT) {
      client_local_status(s, FY_RPC_INTERNAL, "the server ended the stream without a STATUS", false);
    }
  }
  fy_qconn_consume(qc, sid, len);
  if (s->free_after_callback) {
    s->free_after_callback = false;
    stream_release(s);
  }
}

static void rpc_on_stream_reset(struct fy_qconn *qc, int64_t sid, uint64_t app_code, void *user) {
  (void)user;
  struct rpc_stream *s = fy_qconn_stream_user(qc, sid);
  if (!s || s->done)
    return;
  if (s->role == ROLE_SERVER) {
    server_cancel(s, FY_RPC_CANCELLED);
    return;
  }
  if (app_code == FY_RPC_QUIC_FRAME_TOO_LARGE)
    client_local_status(s, FY_RPC_RESOURCE_EXHAUSTED, "the server refused a frame over its size limit",
                        false);
  else if (app_code == FY_RPC_QUIC_PROTOCOL_VIOLATION)
    client_local_status(s, FY_RPC_INTERNAL, "the server saw a protocol violation on this call", false);
  else
    client_local_status(s, FY_RPC_CANCELLED, "the server cancelled the call", true);
}

static void rpc_on_stream_close(struct fy_qconn *qc, int64_t sid, void *user) {
  (void)user;
  struct rpc_stream *s = fy_qconn_stream_user(qc, sid);
  if (!s)
    return;
  s->stream_closed = true;
  if (!s->done) {
    if (s->role == ROLE_CLIENT)
      client_local_status(s, FY_RPC_INTERNAL, "the stream closed before a STATUS", false);
    else
      server_cancel(s, FY_RPC_CANCELLED);
  }
  stream_release(s);
}

static void rpc_on_stream_writable(struct fy_qconn *qc, int64_t sid, void *user) {
  (void)user;
  struct rpc_stream *s = fy_qconn_stream_user(qc, sid);
  if (!s || s->done)
    return;
  if (s->role == ROLE_CLIENT && s->cb.on_writable)
    s->cb.on_writable((struct fy_rpc_ccall *)s, s->user);
  else if (s->role == ROLE_SERVER && s->method && s->method->on_writable)
    s->method->on_writable((struct fy_rpc_scall *)s, s->method->user);
}

static void rpc_on_close(struct fy_qconn *qc, const struct fy_qclose *why, void *user) {
  struct fy_rpc *r = user;
  struct rpc_conn *rc = fy_qconn_was_opened(qc) ? fy_qconn_user(qc) : NULL;
  if (rc) {
    rc->closed = true;
    char msg[sizeof(why->msg) + 32];
    snprintf(msg, sizeof(msg), "connection lost: %s", why->msg);
    while (rc->streams) {
      struct rpc_stream *s = rc->streams;
      if (s->done) {
        stream_release(s);
        continue;
      }
      if (s->role == ROLE_CLIENT)
        client_local_status(s, FY_RPC_UNAVAILABLE, msg, true);
      else
        server_cancel(s, FY_RPC_UNAVAILABLE);
    }
  }
  /* The observer runs while our state is intact, so fy_rpc_conn_user works in it. */
  if (r->obs_close)
    r->obs_close(qc, why, r->obs_user);
  if (rc) {
    fy_qconn_set_user(qc, rc->observer_user);
    free(rc);
  }
}

struct fy_quic_handler fy_rpc_quic_handler(struct fy_rpc *r) {
  struct fy_quic_handler h = {
      .alpn = FY_RPC_ALPN,
      .user = r,
      .on_open = rpc_on_open,
      .on_stream_data = rpc_on_stream_data,
      .on_stream_reset = rpc_on_stream_reset,
      .on_stream_close = rpc_on_stream_close,
      .on_stream_writable = rpc_on_stream_writable,
      .on_close = rpc_on_close,
  };
  return h;
}

void fy_rpc_set_conn_observer(struct fy_rpc *r, uint64_t (*on_open)(struct fy_qconn *, void *),
                              void (*on_close)(struct fy_qconn *, const struct fy_qclose *, void *),
                              void *user) {
  r->obs_open = on_open;
  r->obs_close = on_close;
  r->obs_user = user;
}

int fy_rpc_new(struct fy_rpc **out, uv_loop_t *loop, const struct fy_rpc_config *cfg, struct fy_err *err) {
  struct fy_rpc *r = calloc(1, sizeof(*r));
  if (!r)
    return fy_err_set(err, FY_ENOMEM, "cannot allocate the RPC layer");
  r->loop = loop;
  r->cfg = *cfg;
  if (!r->cfg.max_frame)
    r->cfg.max_frame = FY_RPC_MAX_BODY_DEFAULT;
  if (!r->cfg.max_calls_per_conn)
    r->cfg.max_calls_per_conn = DEFAULT_MAX_CALLS;
  if (!r->cfg.send_buffer_max)
    r->cfg.send_buffer_max = DEFAULT_SEND_MAX;
  for (size_t i = 0; i < cfg->nmethods; i++) {
    if (!cfg->methods[i].name || !cfg->methods[i].on_start) {
      free(r);
      return fy_err_set(err, FY_EINVAL, "method %zu needs a name and on_start", i);
    }
  }
  *out = r;
  return 0;
}

void fy_rpc_free(struct fy_rpc *r) {
  if (!r)
    return;
  fy_buf_free(&r->scratch);
  free(r);
}
