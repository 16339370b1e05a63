#include "net/sendbuf.h"

#include <stdlib.h>
#include <string.h>

#include "base/err.h"

/* Small writes share chunks; a large write gets a chunk of its own size.
 * Chunks start small and double up to CHUNK_MAX: most streams carry one
 * short call, and a 16 KiB chunk for each of them was most of what a
 * coordinator's heap grew by while it pushed a wave to its agents (freed
 * afterwards, but kept by malloc between long-lived allocations). */
#define CHUNK_FIRST 1024
#define CHUNK_MAX 16384

struct fy_sendbuf_chunk {
  struct fy_sendbuf_chunk *next;
  size_t len, cap;
  uint8_t data[];
};

void fy_sendbuf_init(struct fy_sendbuf *b) {
  memset(b, 0, sizeof(*b));
}

void fy_sendbuf_free(struct fy_sendbuf *b) {
  struct fy_sendbuf_chunk *c = b->head;
  while (c) {
    struct fy_sendbuf_chunk *next = c->next;
    free(c);
    c = next;
  }
  memset(b, 0, sizeof(*b));
}

int fy_sendbuf_append(struct fy_sendbuf *b, const uint8_t *data, size_t len) {
  while (len > 0) {
    struct fy_sendbuf_chunk *t = b->tail;
    if (!t || t->len == t->cap) {
      size_t cap = !t ? CHUNK_FIRST : t->cap >= CHUNK_MAX ? CHUNK_MAX : t->cap * 2;
      if (cap < len)
        cap = len;
      struct fy_sendbuf_chunk *c = malloc(sizeof(*c) + cap);
      if (!c)
        return FY_ENOMEM;
      c->next = NULL;
      c->len = 0;
      c->cap = cap;
      if (t)
        t->next = c;
      else
        b->head = c;
      b->tail = t = c;
    }
    size_t n = t->cap - t->len < len ? t->cap - t->len : len;
    memcpy(t->data + t->len, data, n);
    t->len += n;
    data += n;
    len -= n;
    b->total += n;
  }
  return 0;
}

size_t fy_sendbuf_allocated(const struct fy_sendbuf *b) {
  size_t n = 0;
  for (const struct fy_sendbuf_chunk *c = b->head; c; c = c->next)
    n += sizeof(*c) + c->cap;
  return n;
}

size_t fy_sendbuf_unsent(const struct fy_sendbuf *b, struct iovec *iov, size_t iovmax) {
  size_t count = 0;
  uint64_t off = b->head_off;
  for (struct fy_sendbuf_chunk *c = b->head; c && count < iovmax; c = c->next) {
    uint64_t end = off + c->len;
    if (end > b->sent) {
      size_t skip = b->sent > off ? (size_t)(b->sent - off) : 0;
      iov[count].iov_base = c->data + skip;
      iov[count].iov_len = c->len - skip;
      count++;
    }
    off = end;
  }
  return count;
}

void fy_sendbuf_mark_sent(struct fy_sendbuf *b, size_t n) {
  b->sent += n;
  if (b->sent > b->total)
    b->sent = b->total;
}

void fy_sendbuf_ack(struct fy_sendbuf *b, uint64_t offset) {
  if (offset > b->sent)
    offset = b->sent;
  if (offset <= b->acked)
    return;
  b->acked = offset;
  /* A chunk still being filled stays, even when fully acknowledged. */
  while (b->head && b->head != b->tail && b->head_off + b->head->len <= b->acked) {
    struct fy_sendbuf_chunk *c = b->head;
    b->head_off += c->len;
    b->head = c->next;
    free(c);
  }
  if (b->head && b->head == b->tail && b->head_off + b->head->len <= b->acked &&
      b->head->len == b->head->cap) {
    b->head_off += b->head->len;
    free(b->head);
    b->head = b->tail = NULL;
  }
}
