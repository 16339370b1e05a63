/* Micro-benchmark: the RPC frame codec on MSG frames with a 64-byte payload.
 * One round = encode a batch of frames into one buffer (as a sender fills a
 * stream), then cut it with the reader and parse every frame (as a receiver
 * does with the stream's data). Reports the best of several timed runs.
 *
 * Prints one JSON line on stdout:
 *   {"name":"rpc.frame_codec_64B","value":N,"unit":"frames/s","goal":null}
 * Usage: bench_frame [seconds-per-run] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/buf.h"
#include "bench_util.h"
#include "rpc/frame.h"

#define PAYLOAD 64
#define BATCH 256
#define RUNS 5

/* Encodes and decodes one batch; returns a checksum so nothing is optimised away. */
static size_t round_trip(struct fy_buf *stream, struct fy_frame_reader *r, const uint8_t *payload) {
  struct fy_err err;
  stream->len = 0;
  for (int i = 0; i < BATCH; i++)
    if (fy_frame_encode_msg(stream, payload, PAYLOAD, 0, &err) != 0) {
      fprintf(stderr, "bench_frame: encode: %s\n", err.msg);
      exit(1);
    }
  size_t sum = 0, off = 0, frames = 0;
  while (off < stream->len) {
    size_t used;
    struct fy_rpc_bin body;
    struct fy_rpc_frame f;
    if (fy_frame_reader_feed(r, stream->data + off, stream->len - off, &used, &body, &err) != 1 ||
        fy_frame_parse(body.ptr, body.len, &f, &err) != 0 || f.type != FY_RPC_MSG) {
      fprintf(stderr, "bench_frame: decode: %s\n", err.msg);
      exit(1);
    }
    off += used;
    sum += f.msg.payload.len + f.msg.payload.ptr[PAYLOAD - 1];
    frames++;
  }
  if (frames != BATCH)
    exit(1);
  return sum;
}

int main(int argc, char **argv) {
  double seconds = argc > 1 ? strtod(argv[1], NULL) : 0.5;
  if (!(seconds > 0)) {
    fprintf(stderr, "usage: bench_frame [seconds-per-run]\n");
    return 2;
  }
  uint8_t payload[PAYLOAD];
  for (int i = 0; i < PAYLOAD; i++)
    payload[i] = (uint8_t)(i * 13);
  struct fy_buf stream = FY_BUF_INIT;
  struct fy_frame_reader r;
  fy_frame_reader_init(&r, 0);
  volatile size_t sink = 0;
  for (int i = 0; i < 100; i++) /* warm up the allocator and caches */
    sink += round_trip(&stream, &r, payload);

  double best = 0;
  for (int run = 0; run < RUNS; run++) {
    size_t frames = 0;
    double start = bench_now_s(), elapsed;
    do {
      for (int i = 0; i < 64; i++)
        sink += round_trip(&stream, &r, payload);
      frames += (size_t)64 * BATCH;
      elapsed = bench_now_s() - start;
    } while (elapsed < seconds);
    double rate = (double)frames / elapsed;
    fprintf(stderr, "bench_frame: run %d: %zu frames in %.3f s = %.0f frames/s\n", run + 1, frames, elapsed,
            rate);
    if (rate > best)
      best = rate;
  }
  printf("{\"name\":\"rpc.frame_codec_64B\",\"value\":%.0f,\"unit\":\"frames/s\",\"goal\":null}\n", best);
  fy_frame_reader_free(&r);
  fy_buf_free(&stream);
  return sink == 0 ? 1 : 0;
}
