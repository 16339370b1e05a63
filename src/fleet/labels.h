/* Labels: the key=value pairs an agent carries ("site=berlin,role/kiosk=true")
 * and that rollouts select agents by; and tenant names.
 *
 * A label key is 1..63 bytes of [a-z0-9._/-] starting with [a-z0-9]; a value
 * is 0..63 bytes of [A-Za-z0-9._-]. A set holds at most FY_LABELS_MAX labels
 * with unique keys, kept sorted by key (bytewise), so two equal sets have equal
 * text and msgpack forms. Every way into a set (parse, unpack, set) validates,
 * so a struct fy_labels filled by these functions is always valid.
 *
 * The text form is "k=v,k2=v2" ("" is the empty set); the msgpack form is a map
 * str -> str, written in key order. A selector is a label set too: it matches
 * a set that holds every one of its pairs (the empty selector matches all).
 *
 * A tenant name is 1..63 bytes of [a-z0-9._-] starting with [a-z0-9].
 *
 * Everything here is fixed-size and caller-owned: nothing allocates. */
#ifndef FY_FLEET_LABELS_H
#define FY_FLEET_LABELS_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>

#include "base/err.h"

#define FY_LABELS_MAX 32
#define FY_LABEL_KEY_MAX 63
#define FY_LABEL_VALUE_MAX 63
/* The longest text form plus its NUL: every label at full length, commas between. */
#define FY_LABELS_TEXT_MAX (FY_LABELS_MAX * (FY_LABEL_KEY_MAX + 1 + FY_LABEL_VALUE_MAX + 1))
#define FY_TENANT_MAX 63

struct fy_label {
  char key[FY_LABEL_KEY_MAX + 1], value[FY_LABEL_VALUE_MAX + 1];
};

struct fy_labels {
  struct fy_label v[FY_LABELS_MAX];
  size_t n; /* v[0..n) sorted by key */
};

/* Parses "k=v,k2=v2" (no white space anywhere; "" is the empty set). On
 * failure (FY_EINVAL, or FY_ELIMIT for more than FY_LABELS_MAX pairs) the
 * message names the pair, its number from 1 and its character offset from 0,
 * and out is left empty. */
int fy_labels_parse(const char *text, struct fy_labels *out, struct fy_err *err);

/* Writes the text form, truncated to size - 1 bytes (size FY_LABELS_TEXT_MAX
 * always suffices). */
void fy_labels_format(const struct fy_labels *l, char *out, size_t size);

/* Packs a map str -> str in key order. 0, or FY_ENOMEM when pk's writer fails. */
int fy_labels_pack(const struct fy_labels *l, msgpack_packer *pk);

/* Reads a map str -> str, validating it as parse does. FY_EINVAL (FY_ELIMIT
 * for too many entries) with a message starting "labels: "; out is left
 * empty on failure. */
int fy_labels_unpack(const msgpack_object *o, struct fy_labels *out, struct fy_err *err);

/* Every pair of sel is in l with the same value. */
bool fy_labels_match(const struct fy_labels *l, const struct fy_labels *sel);

/* Adds key=value, or replaces the value of an existing key. FY_EINVAL for a
 * bad key or value, FY_ELIMIT when adding to a full set; l is unchanged then. */
int fy_labels_set(struct fy_labels *l, const char *key, const char *value, struct fy_err *err);

/* The value for key, or NULL. */
const char *fy_labels_get(const struct fy_labels *l, const char *key);

/* 0 for a valid tenant name, else FY_EINVAL naming the offending character. */
int fy_tenant_check(const char *t, struct fy_err *err);

#endif
