/* The receiving side of outbox delivery: the RPC method outbox.push
 * (proto/outbox.md), feeding an inbox.
 *
 * Messages of one call are applied in arrival order, in batches: while one
 * batch commits (on the libuv thread pool, since a commit waits for fsync),
 * the next ones gather, so a busy sender gets group commit for free. After
 * each commit the call acknowledges everything applied so far; only then may
 * the sender delete those messages. */
#ifndef FY_OUTBOX_INTAKE_H
#define FY_OUTBOX_INTAKE_H

#include <uv.h>

#include "base/log.h"
#include "outbox/inbox.h"
#include "rpc/rpc.h"

struct fy_intake {
  uv_loop_t *loop;
  struct fy_inbox *inbox;
  const struct fy_log *log;
  size_t batch_max; /* messages per transaction; 0: 1024 */
};

/* The method to put in the RPC layer's table; intake must outlive it. */
struct fy_rpc_method fy_intake_method(struct fy_intake *intake);

#endif
