/* libFuzzer target for fy_facts_decode (src/fleet/facts.h: an agent's facts,
 * read by the coordinator and by admins). Checks, besides memory safety:
 * - a failure returns a negative code and sets err to it, with a message, and
 *   leaves the struct zeroed;
 * - every decoded string is NUL-terminated within its array, and
 *   machine_id_hash is empty or 64 lowercase hex digits;
 * - what decodes encodes again, that encoding decodes to the same facts
 *   (fy_facts_changed false, volatile fields equal), and encoding the second
 *   decode gives the same bytes. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "fleet/facts.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool terminated(const char *s, size_t cap) {
  return memchr(s, '\0', cap) != NULL;
}

static void check_strings(const struct fy_facts *f) {
  if (!terminated(f->hostname, sizeof(f->hostname)) || !terminated(f->kernel, sizeof(f->kernel)) ||
      !terminated(f->arch, sizeof(f->arch)) || !terminated(f->os_id, sizeof(f->os_id)) ||
      !terminated(f->os_version_id, sizeof(f->os_version_id)) ||
      !terminated(f->os_pretty_name, sizeof(f->os_pretty_name)) ||
      !terminated(f->machine_id_hash, sizeof(f->machine_id_hash)) ||
      !terminated(f->version, sizeof(f->version)) ||
      !terminated(f->ferry_version, sizeof(f->ferry_version)) ||
      !terminated(f->nixos_system, sizeof(f->nixos_system)))
    abort();
  size_t n = strlen(f->machine_id_hash);
  if (n != 0 && (n != FY_FACTS_MACHINE_ID_HASH_LEN || strspn(f->machine_id_hash, "0123456789abcdef") != n))
    abort();
  if (f->labels.n > FY_LABELS_MAX)
    abort();
}

static bool same(const struct fy_facts *a, const struct fy_facts *b) {
  return !fy_facts_changed(a, b) && a->uptime_s == b->uptime_s && a->disk_free == b->disk_free &&
         a->collected_at == b->collected_at;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const struct fy_facts zero;
  struct fy_facts f, g;
  struct fy_err err;
  fy_err_clear(&err);
  int rc = fy_facts_decode(data, size, &f, &err);
  if (rc != 0) {
    if (rc >= 0 || err.code != rc || err.msg[0] == '\0' || memcmp(&f, &zero, sizeof(f)) != 0)
      abort();
    return 0;
  }
  check_strings(&f);
  struct fy_buf once = FY_BUF_INIT, twice = FY_BUF_INIT;
  if (fy_facts_encode(&f, &once, &err) != 0)
    abort();
  if (fy_facts_decode(once.data, once.len, &g, &err) != 0 || !same(&f, &g))
    abort();
  if (fy_facts_encode(&g, &twice, &err) != 0 || once.len != twice.len ||
      memcmp(once.data, twice.data, once.len) != 0)
    abort();
  fy_buf_free(&once);
  fy_buf_free(&twice);
  return 0;
}
