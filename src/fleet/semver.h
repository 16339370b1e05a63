/* Semantic versions (Semantic Versioning 2.0.0, https://semver.org): the
 * versions artifact manifests carry and that downgrade checks compare.
 *
 * Text form: MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD], parsed strictly:
 * - MAJOR, MINOR and PATCH are decimal numbers without leading zeros that fit
 *   in uint64_t;
 * - PRERELEASE and BUILD are dot-separated, non-empty identifiers of
 *   [0-9A-Za-z-]; a numeric prerelease identifier (digits only) has no
 *   leading zero and fits in uint64_t (build identifiers are free-form);
 * - PRERELEASE and BUILD are each at most FY_SEMVER_PART_MAX bytes.
 * One extension to the spec: a single leading "v" ("v1.2.3"), as git tags
 * often carry, is accepted and dropped; fy_semver_format never writes it.
 *
 * Precedence is the spec's §11: build metadata is ignored; a prerelease
 * version is lower than its release; prerelease identifiers compare one by
 * one, numeric ones numerically, others bytewise in ASCII, a numeric one
 * below an alphanumeric one, and a shorter set is lower when all before are
 * equal. So two versions that differ only in build metadata compare equal.
 *
 * Everything is fixed-size and caller-owned; nothing allocates. */
#ifndef FY_FLEET_SEMVER_H
#define FY_FLEET_SEMVER_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

#define FY_SEMVER_PART_MAX 127 /* bytes of PRERELEASE or of BUILD, without the NUL */
/* The longest text fy_semver_parse accepts (without the NUL): "v", three
 * 20-digit numbers, two dots, and both parts at full length with their
 * separators. */
#define FY_SEMVER_TEXT_MAX (1 + 3 * 20 + 2 + 1 + FY_SEMVER_PART_MAX + 1 + FY_SEMVER_PART_MAX)

struct fy_semver {
  uint64_t major, minor, patch;
  char pre[FY_SEMVER_PART_MAX + 1];   /* "" when there is none; without the "-" */
  char build[FY_SEMVER_PART_MAX + 1]; /* "" when there is none; without the "+" */
};

/* Parses text (a NUL-terminated string). 0, or FY_EINVAL with a message
 * starting "version \"<text>\": " that names the offset from 0 and what is
 * wrong there ("minor at offset 2 has a leading zero"); out is zeroed then. */
int fy_semver_parse(const char *text, struct fy_semver *out, struct fy_err *err);

/* -1, 0 or 1 as a has lower, equal or higher precedence than b. */
int fy_semver_cmp(const struct fy_semver *a, const struct fy_semver *b);

/* Writes the canonical text (no "v"), truncated to size - 1 bytes;
 * FY_SEMVER_TEXT_MAX + 1 always suffices. */
void fy_semver_format(const struct fy_semver *v, char *out, size_t size);

#endif
