/* libFuzzer target for the agent's decoders of bytes it did not write
 * itself (agent/agent_state.h): the coordinator's agent.enroll reply and
 * the enrollment record read back from the store. Checks, besides memory
 * safety, that a failure returns a negative code with a message, and that
 * a record that decodes encodes again and decodes to the same record. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent_state.h"
#include "base/buf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_error(int rc, const struct fy_err *err) {
  if (rc >= 0 || err->code != rc || err->msg[0] == '\0')
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct fy_err err = {0};
  struct fy_agent_enroll_reply reply;
  int rc = fy_agent_enroll_reply_decode(data, size, &reply, &err);
  if (rc < 0)
    check_error(rc, &err);
  else
    fy_agent_enroll_reply_free(&reply);

  fy_err_clear(&err);
  struct fy_agent_enrollment rec, again;
  rc = fy_agent_enrollment_decode(data, size, &rec, &err);
  if (rc < 0) {
    check_error(rc, &err);
    return 0;
  }
  struct fy_buf b = FY_BUF_INIT;
  if (fy_agent_enrollment_encode(&rec, &b, &err) != 0 ||
      fy_agent_enrollment_decode(b.data, b.len, &again, &err) != 0)
    abort();
  if (!fy_nodeid_equal(&rec.coordinator, &again.coordinator) || rec.naddrs != again.naddrs ||
      rec.nroots != again.nroots || strcmp(rec.tenant, again.tenant) != 0 ||
      rec.enrolled_at != again.enrolled_at)
    abort();
  fy_buf_free(&b);
  return 0;
}
