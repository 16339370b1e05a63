/* libFuzzer target for enrollment tickets (src/fleet/ticket.h: text pasted
 * by whoever sets up a machine). The input, cut at its first NUL, is the
 * ticket text. Checks, besides memory safety:
 * - a failure returns a negative code and sets err to it, with a message,
 *   and leaves the struct zeroed (no secret left behind);
 * - a decoded ticket has 1..8 valid addresses, a valid tenant and labels;
 * - it encodes again, to at most as many characters as the trimmed input; that
 *   text decodes to the same fields and encodes to the same text. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fleet/ticket.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_error(int rc, const struct fy_err *err) {
  if (rc >= 0 || err->code != rc || err->msg[0] == '\0')
    abort();
}

static bool same_ticket(const struct fy_ticket *a, const struct fy_ticket *b) {
  if (!fy_nodeid_equal(&a->coordinator, &b->coordinator) || a->naddrs != b->naddrs ||
      memcmp(a->secret, b->secret, sizeof(a->secret)) != 0 || strcmp(a->tenant, b->tenant) != 0 ||
      a->expires_at != b->expires_at || a->labels.n != b->labels.n)
    return false;
  for (size_t i = 0; i < a->naddrs; i++)
    if (strcmp(a->addrs[i], b->addrs[i]) != 0)
      return false;
  for (size_t i = 0; i < a->labels.n; i++)
    if (strcmp(a->labels.v[i].key, b->labels.v[i].key) != 0 ||
        strcmp(a->labels.v[i].value, b->labels.v[i].value) != 0)
      return false;
  return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = malloc(size + 1);
  if (!text)
    return 0;
  memcpy(text, data, size);
  text[size] = '\0';
  static struct fy_ticket t, again;
  static char once[FY_TICKET_TEXT_MAX + 1], twice[FY_TICKET_TEXT_MAX + 1];
  static const struct fy_ticket zero;
  struct fy_err err;
  fy_err_clear(&err);
  int rc = fy_ticket_decode(text, &t, &err);
  if (rc != 0) {
    check_error(rc, &err);
    if (memcmp(&t, &zero, sizeof(t)) != 0)
      abort();
    free(text);
    return 0;
  }
  if (t.naddrs == 0 || t.naddrs > FY_TICKET_ADDRS_MAX || fy_tenant_check(t.tenant, NULL) != 0 ||
      t.labels.n > FY_LABELS_MAX)
    abort();
  if (fy_ticket_encode(&t, once, sizeof(once), &err) != 0 || strlen(once) > strlen(text))
    abort();
  if (fy_ticket_decode(once, &again, &err) != 0 || !same_ticket(&t, &again))
    abort();
  if (fy_ticket_encode(&again, twice, sizeof(twice), &err) != 0 || strcmp(once, twice) != 0)
    abort();
  free(text);
  return 0;
}
