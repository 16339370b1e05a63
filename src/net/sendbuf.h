/* Outgoing bytes of one QUIC stream, kept until the peer acknowledges them.
 *
 * ngtcp2 does not copy stream data: the bytes handed to it must stay at the
 * same address until acknowledged, because it may retransmit from them. So
 * data lives in a list of chunks that never move, and a chunk is freed only
 * once every byte in it is acknowledged. Acknowledgements arrive in stream
 * order (ngtcp2 reports a growing acked offset).
 *
 *   [ acked | sent, in flight | unsent ]
 *   ^ freed  ^ acked           ^ sent    ^ total
 */
#ifndef FY_NET_SENDBUF_H
#define FY_NET_SENDBUF_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

struct fy_sendbuf_chunk;

struct fy_sendbuf {
  struct fy_sendbuf_chunk *head; /* oldest chunk with unacked bytes */
  struct fy_sendbuf_chunk *tail;
  uint64_t head_off; /* stream offset of head's first byte */
  uint64_t acked;    /* stream offset up to which the peer acknowledged */
  uint64_t sent;     /* stream offset up to which data went to ngtcp2 */
  uint64_t total;    /* stream offset after the last appended byte */
};

void fy_sendbuf_init(struct fy_sendbuf *b);
void fy_sendbuf_free(struct fy_sendbuf *b);

/* Copies len bytes to the end; FY_ENOMEM on allocation failure. */
int fy_sendbuf_append(struct fy_sendbuf *b, const uint8_t *data, size_t len);

/* Fills iov (up to iovmax entries) with the unsent bytes, in order; returns the
 * count. The memory stays valid until fy_sendbuf_ack covers it. */
size_t fy_sendbuf_unsent(const struct fy_sendbuf *b, struct iovec *iov, size_t iovmax);

/* ngtcp2 took n more unsent bytes. */
void fy_sendbuf_mark_sent(struct fy_sendbuf *b, size_t n);

/* The peer acknowledged everything before offset; frees whole chunks. */
void fy_sendbuf_ack(struct fy_sendbuf *b, uint64_t offset);

/* Bytes the chunks hold (allocated, not only used): what a stream costs. */
size_t fy_sendbuf_allocated(const struct fy_sendbuf *b);

/* Bytes appended but not yet acknowledged: what backpressure is measured in. */
static inline uint64_t fy_sendbuf_unacked(const struct fy_sendbuf *b) {
  return b->total - b->acked;
}
static inline uint64_t fy_sendbuf_unsent_len(const struct fy_sendbuf *b) {
  return b->total - b->sent;
}

#endif
