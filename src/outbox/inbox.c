/* The inbox: exactly-once application by watermark (see inbox.h).
 *
 * Table inbox.mark: sender(32) tlen(1) topic -> seq(8) epoch(8) updated_at(8). */
#include "outbox/inbox.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/cleanup.h"

#define KEY_MAX (FY_NODEID_LEN + 1 + FY_OUTBOX_TOPIC_MAX)
#define MARK_LEN 24

static const struct fy_store_table_def tables[] = {{"inbox.mark", 0}};

const struct fy_store_schema fy_inbox_schema = {"inbox", tables, FY_ARRAY_LEN(tables), NULL, 0};

struct handler {
  char topic[FY_OUTBOX_TOPIC_MAX + 1];
  fy_inbox_handler_fn fn;
  void *user;
};

struct fy_inbox {
  struct fy_store *store;
  struct fy_table *marks;
  const struct fy_log *log;
  struct handler *handlers;
  size_t nhandlers;
};

static uint64_t realtime_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int check_topic(const char *topic, struct fy_err *err) {
  size_t n = topic ? strnlen(topic, FY_OUTBOX_TOPIC_MAX + 1) : 0;
  if (n == 0 || n > FY_OUTBOX_TOPIC_MAX)
    return fy_err_set(err, FY_EINVAL, "inbox: a topic is 1 to %d bytes", FY_OUTBOX_TOPIC_MAX);
  return 0;
}

int fy_inbox_open(struct fy_inbox **out, struct fy_store *store, const struct fy_log *log,
                  struct fy_err *err) {
  *out = NULL;
  if (!store)
    return fy_err_set(err, FY_EINVAL, "inbox: no store given");
  struct fy_table *marks = fy_store_table(store, &tables[0]);
  if (!marks)
    return fy_err_set(err, FY_EINVAL, "inbox: the store was opened without fy_inbox_schema");
  struct fy_inbox *in = calloc(1, sizeof(*in));
  if (!in)
    return fy_err_set(err, FY_ENOMEM, "inbox: out of memory");
  in->store = store;
  in->marks = marks;
  in->log = log;
  *out = in;
  return 0;
}

void fy_inbox_close(struct fy_inbox *in) {
  if (!in)
    return;
  free(in->handlers);
  free(in);
}

static struct handler *find_handler(struct fy_inbox *in, const char *topic) {
  for (size_t i = 0; i < in->nhandlers; i++)
    if (strcmp(in->handlers[i].topic, topic) == 0)
      return &in->handlers[i];
  return NULL;
}

int fy_inbox_register(struct fy_inbox *in, const char *topic, fy_inbox_handler_fn fn, void *user,
                      struct fy_err *err) {
  if (!in || !fn)
    return fy_err_set(err, FY_EINVAL, "inbox: no inbox or handler given");
  int rc = check_topic(topic, err);
  if (rc)
    return rc;
  struct handler *h = find_handler(in, topic);
  if (!h) {
    struct handler *hs = realloc(in->handlers, (in->nhandlers + 1) * sizeof(*hs));
    if (!hs)
      return fy_err_set(err, FY_ENOMEM, "inbox: out of memory");
    in->handlers = hs;
    h = &hs[in->nhandlers++];
    snprintf(h->topic, sizeof(h->topic), "%s", topic);
  }
  h->fn = fn;
  h->user = user;
  return 0;
}

static size_t mark_key(uint8_t *out, const struct fy_nodeid *sender, const char *topic) {
  size_t n = strlen(topic);
  memcpy(out, sender->key, FY_NODEID_LEN);
  out[FY_NODEID_LEN] = (uint8_t)n;
  // NOLINTNEXTLINE(bugprone-not-null-terminated-result): a length-prefixed key, not a C string
  memcpy(out + FY_NODEID_LEN + 1, topic, n);
  return FY_NODEID_LEN + 1 + n;
}

/* Something to log once the transaction committed. */
struct note {
  enum { NOTE_GAP, NOTE_EPOCH } kind;
  uint64_t a, b;
};

struct deliver {
  struct fy_inbox *in;
  const struct fy_nodeid *sender;
  const char *topic;
  const struct fy_inbox_msg *msgs;
  size_t n;     /* look at msgs[0..n) */
  int *results; /* per message */
  /* Set by the body when msgs[failed_at] was refused. */
  bool failed;
  size_t failed_at;
  int failed_code;
  struct fy_err failed_err;
  struct note *notes;
  size_t nnotes;
};

static int deliver_body(struct fy_txn *t, void *user) {
  struct deliver *d = user;
  struct fy_inbox *in = d->in;
  d->failed = false;
  d->nnotes = 0;
  uint8_t key[KEY_MAX];
  size_t kn = mark_key(key, d->sender, d->topic);
  struct fy_bytes v;
  int rc = fy_store_get(t, in->marks, fy_bytes_of(key, kn), &v);
  if (rc < 0)
    return rc;
  if (rc == 1 && v.n != MARK_LEN)
    return fy_err_set(fy_txn_err(t), FY_EIO, "inbox: a watermark record is corrupt (%zu bytes)", v.n);
  bool have = rc == 1;
  uint64_t mark = have ? fy_be64_get(v.p) : 0;
  uint8_t epoch[FY_MSGID_EPOCH_LEN] = {0};
  if (have)
    memcpy(epoch, v.p + 8, FY_MSGID_EPOCH_LEN);
  bool changed = false;
  struct handler *h = find_handler(in, d->topic);

  for (size_t i = 0; i < d->n; i++) {
    const struct fy_inbox_msg *m = &d->msgs[i];
    struct fy_err *e = &d->failed_err;
    int code = 0;
    if (have && memcmp(m->id, epoch, FY_MSGID_EPOCH_LEN) != 0) {
      /* The sender's outbox was made anew: its numbers start over. */
      d->notes[d->nnotes++] = (struct note){NOTE_EPOCH, mark, m->seq};
      mark = 0;
    }
    if (m->seq == 0) {
      code = fy_err_set(e, FY_EINVAL, "inbox: message with sequence number 0 (they start at 1)");
    } else if (m->seq <= mark) {
      d->results[i] = FY_INBOX_DUPLICATE;
      continue;
    } else if (!h) {
      code = fy_err_set(e, FY_ENOENT, "inbox: no handler for topic %s", d->topic);
    } else if (m->prev_seq > mark) {
      char id[FY_NODEID_SHORT_LEN + 1];
      fy_nodeid_to_short(d->sender, id);
      code = fy_err_set(e, FY_EAGAIN,
                        "inbox: from %s topic %s: message %" PRIu64 " follows %" PRIu64
                        ", but only up to %" PRIu64 " is applied; resend from the oldest",
                        id, d->topic, m->seq, m->prev_seq, mark);
    } else {
      fy_err_clear(fy_txn_err(t));
      code = h->fn(t, d->sender, d->topic, m, h->user);
      if (code < 0) {
        /* A store failure (map full, disk) is the whole transaction's. */
        *e = *fy_txn_err(t);
        if (!e->msg[0])
          fy_err_set(e, code, "inbox: the %s handler refused message %" PRIu64, d->topic, m->seq);
      }
    }
    if (code < 0) {
      d->failed = true;
      d->failed_at = i;
      d->failed_code = code;
      d->results[i] = code;
      return code;
    }
    if (m->seq > mark + 1)
      d->notes[d->nnotes++] = (struct note){NOTE_GAP, mark, m->seq};
    mark = m->seq;
    memcpy(epoch, m->id, FY_MSGID_EPOCH_LEN);
    have = changed = true;
    d->results[i] = FY_INBOX_APPLIED;
  }
  if (!changed)
    return 0; /* only duplicates: nothing to write, and the commit writes nothing */
  uint8_t val[MARK_LEN];
  fy_be64_put(val, mark);
  memcpy(val + 8, epoch, FY_MSGID_EPOCH_LEN);
  fy_be64_put(val + 16, realtime_ms());
  return fy_store_put(t, in->marks, fy_bytes_of(key, kn), fy_bytes_of(val, MARK_LEN));
}

static void log_notes(const struct deliver *d) {
  char sender[FY_NODEID_HEX_LEN + 1];
  fy_nodeid_to_hex(d->sender, sender);
  for (size_t i = 0; i < d->nnotes; i++) {
    char a[24], b[24];
    snprintf(a, sizeof(a), "%" PRIu64, d->notes[i].a);
    snprintf(b, sizeof(b), "%" PRIu64, d->notes[i].b);
    if (d->notes[i].kind == NOTE_GAP)
      fy_info(d->in->log, "inbox.gap", "sender", sender, "topic", d->topic, "applied", a, "seq", b);
    else
      fy_warn(d->in->log, "inbox.new_epoch", "sender", sender, "topic", d->topic, "old_applied", a, "seq", b);
  }
}

int fy_inbox_deliver_batch(struct fy_inbox *in, const struct fy_nodeid *sender, const char *topic,
                           const struct fy_inbox_msg *msgs, size_t n, int *results, struct fy_err *err) {
  if (!in || !sender || (n && (!msgs || !results)))
    return fy_err_set(err, FY_EINVAL, "inbox: no inbox, sender or messages given");
  int rc = check_topic(topic, err);
  if (rc)
    return rc;
  if (n > INT32_MAX)
    return fy_err_set(err, FY_ELIMIT, "inbox: a batch of %zu messages", n);
  if (n == 0)
    return 0;
  /* Each message adds at most a gap note and an epoch note. */
  FY_AUTOFREE struct note *notes = malloc(2 * n * sizeof(*notes));
  if (!notes)
    return fy_err_set(err, FY_ENOMEM, "inbox: out of memory");
  struct deliver d = {
      .in = in, .sender = sender, .topic = topic, .msgs = msgs, .n = n, .results = results, .notes = notes};
  for (;;) {
    rc = fy_store_write(in->store, deliver_body, &d, err);
    if (rc >= 0)
      break;
    if (!d.failed)
      return rc; /* the store failed: nothing applied */
    /* msgs[failed_at] was refused: commit the ones before it, if any. */
    if (d.failed_at == 0) {
      if (err)
        *err = d.failed_err;
      return 0;
    }
    size_t failed_at = d.failed_at;
    int code = d.failed_code;
    struct fy_err why = d.failed_err;
    d.n = failed_at;
    rc = fy_store_write(in->store, deliver_body, &d, err);
    if (rc >= 0) {
      results[failed_at] = code;
      if (err)
        *err = why;
      log_notes(&d);
      return (int)failed_at;
    }
    if (!d.failed)
      return rc;
    /* A handler refused on the second run what it took on the first: go again with fewer. */
  }
  log_notes(&d);
  return (int)n;
}

int fy_inbox_deliver(struct fy_inbox *in, const struct fy_nodeid *sender, const char *topic,
                     const struct fy_inbox_msg *m, struct fy_err *err) {
  int result = 0;
  int rc = fy_inbox_deliver_batch(in, sender, topic, m, 1, &result, err);
  if (rc < 0)
    return rc;
  return rc == 1 ? result : result < 0 ? result : FY_EIO;
}

struct mark_ctx {
  struct fy_inbox *in;
  const struct fy_nodeid *sender;
  const char *topic;
  struct fy_inbox_mark *out;
};

static int mark_body(struct fy_txn *t, void *user) {
  struct mark_ctx *c = user;
  uint8_t key[KEY_MAX];
  size_t kn = mark_key(key, c->sender, c->topic);
  struct fy_bytes v;
  int rc = fy_store_get(t, c->in->marks, fy_bytes_of(key, kn), &v);
  if (rc != 1)
    return rc;
  if (v.n != MARK_LEN)
    return fy_err_set(fy_txn_err(t), FY_EIO, "inbox: a watermark record is corrupt (%zu bytes)", v.n);
  c->out->seq = fy_be64_get(v.p);
  memcpy(c->out->epoch, v.p + 8, FY_MSGID_EPOCH_LEN);
  c->out->updated_at = fy_be64_get(v.p + 16);
  return 1;
}

int fy_inbox_watermark(struct fy_inbox *in, const struct fy_nodeid *sender, const char *topic,
                       struct fy_inbox_mark *out, struct fy_err *err) {
  if (!in || !sender || !out)
    return fy_err_set(err, FY_EINVAL, "inbox: no inbox, sender or output given");
  int rc = check_topic(topic, err);
  if (rc)
    return rc;
  memset(out, 0, sizeof(*out));
  struct mark_ctx c = {in, sender, topic, out};
  return fy_store_read(in->store, mark_body, &c, err);
}
