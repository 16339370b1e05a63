/* Hex for the golden-vector tests (test_envelope.c, test_manifest.c):
 * bytes to and from hex with libsodium, and an assertion that prints both
 * sides when they differ. Include after cmocka.h. */
#ifndef FY_TESTS_HEX_UTIL_H
#define FY_TESTS_HEX_UTIL_H

#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Caller frees. */
static inline char *to_hex(const uint8_t *p, size_t n) {
  char *h = malloc(2 * n + 1);
  assert_non_null(h);
  sodium_bin2hex(h, 2 * n + 1, p, n);
  return h;
}

/* Caller frees; *n gets the byte count. */
static inline uint8_t *from_hex(const char *hex, size_t *n) {
  size_t max = strlen(hex) / 2;
  uint8_t *p = malloc(max + 1);
  assert_non_null(p);
  assert_int_equal(sodium_hex2bin(p, max, hex, strlen(hex), NULL, n, NULL), 0);
  return p;
}

static inline void assert_hex(const uint8_t *p, size_t n, const char *hex) {
  char *h = to_hex(p, n);
  int same = strcmp(h, hex) == 0;
  if (!same)
    print_error("got  %s\nwant %s\n", h, hex);
  free(h);
  assert_true(same);
}

#endif
