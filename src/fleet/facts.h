/* Device facts: what an agent tells the coordinator about its machine
 * (proto/facts.md), and what admins read back (`ferry admin agents show`).
 *
 * The agent collects them (fy_facts_collect), encodes them as a msgpack map
 * with string keys (fy_facts_encode) and sends them through its outbox on
 * start, on change (fy_facts_changed) and periodically. The coordinator and
 * the admin decode bytes that came from the network (fy_facts_decode): those
 * are untrusted, so the decoder bounds the input before msgpack-c sees it and
 * checks every known field's type and length.
 *
 * Every string is a NUL-terminated copy in a fixed array, at most *_MAX bytes
 * (not counting the NUL); a struct fy_facts owns nothing and needs no freeing.
 * A source that is missing on the machine (no os-release, no machine-id, not
 * NixOS...) leaves its field empty or 0: collection fails only when the root
 * directory itself cannot be opened, or when the caller's own inputs (version,
 * labels) do not fit.
 *
 * The raw machine id never leaves the machine: machine_id_hash is the hex
 * SHA-256 of "ferry/machine-id/v1", a 0 byte and the trimmed contents of
 * etc/machine-id, as systemd's sd_id128_get_machine_app_specific() advises
 * for ids shown to others. */
#ifndef FY_FLEET_FACTS_H
#define FY_FLEET_FACTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "base/err.h"
#include "fleet/labels.h"
#include "fleet/update_mode.h"

/* Limits in bytes, without the NUL. uname(2) fields are at most 64 bytes on
 * Linux; the others leave room for what real systems carry. */
#define FY_FACTS_HOSTNAME_MAX 64
#define FY_FACTS_KERNEL_MAX 64
#define FY_FACTS_ARCH_MAX 64
#define FY_FACTS_OS_ID_MAX 64
#define FY_FACTS_OS_VERSION_ID_MAX 64
#define FY_FACTS_OS_PRETTY_NAME_MAX 128
#define FY_FACTS_MACHINE_ID_HASH_LEN 64 /* hex of 32 bytes; the field is empty or exactly this long */
#define FY_FACTS_VERSION_MAX 128
#define FY_FACTS_FERRY_VERSION_MAX 64
#define FY_FACTS_NIXOS_SYSTEM_MAX 255

/* The largest encoding fy_facts_decode accepts. */
#define FY_FACTS_WIRE_MAX 16384

/* The domain separator hashed in front of the machine id. */
#define FY_FACTS_MACHINE_ID_CONTEXT "ferry/machine-id/v1"

struct fy_facts {
  char hostname[FY_FACTS_HOSTNAME_MAX + 1];             /* uname nodename */
  char kernel[FY_FACTS_KERNEL_MAX + 1];                 /* uname release */
  char arch[FY_FACTS_ARCH_MAX + 1];                     /* uname machine */
  char os_id[FY_FACTS_OS_ID_MAX + 1];                   /* os-release ID */
  char os_version_id[FY_FACTS_OS_VERSION_ID_MAX + 1];   /* os-release VERSION_ID */
  char os_pretty_name[FY_FACTS_OS_PRETTY_NAME_MAX + 1]; /* os-release PRETTY_NAME */
  char machine_id_hash[FY_FACTS_MACHINE_ID_HASH_LEN + 1];
  char version[FY_FACTS_VERSION_MAX + 1];             /* the managed software's deployed version */
  char ferry_version[FY_FACTS_FERRY_VERSION_MAX + 1]; /* the agent's own FY_VERSION */
  char nixos_system[FY_FACTS_NIXOS_SYSTEM_MAX + 1];   /* target of run/current-system, NixOS only */
  struct fy_labels labels;
  /* How it wants to be updated (fleet/update_mode.h): its configuration. */
  char update_mode[16];
  char channel[FY_CHANNEL_MAX + 1];
  char assigned[FY_ASSIGNED_MAX + 1];
  char hw_model[64], hw_revision[64];
  uint64_t disk_free, disk_total; /* bytes: available to unprivileged users, and in all */
  uint64_t uptime_s;
  uint64_t collected_at; /* ms since the Unix epoch */
};

struct fy_facts_source {
  const char *root;                     /* NULL or "/" for the real system; a fake root directory in tests */
  const char *disk_dir;                 /* statvfs'ed as is (not under root); NULL: disk fields 0 */
  const char *version;                  /* NULL: empty */
  const struct fy_labels *labels;       /* NULL: none */
  const struct fy_update_prefs *update; /* NULL: follow, no channel, hardware unknown */
  uint64_t now_ms;                      /* becomes collected_at */
};

/* Fills *out (entirely: it need not be initialised) from the machine.
 * Strings read from files that exceed their field are cut at a UTF-8
 * character boundary, except nixos_system, which stays empty rather than name
 * a different path. FY_ENOENT/FY_EPERM/FY_EIO when root cannot be opened,
 * FY_EINVAL when version or labels do not fit. */
int fy_facts_collect(const struct fy_facts_source *src, struct fy_facts *out, struct fy_err *err);

/* Appends the msgpack map to out; on failure out keeps its old length. */
int fy_facts_encode(const struct fy_facts *f, struct fy_buf *out, struct fy_err *err);

/* Decodes untrusted bytes into *out (entirely overwritten, also on failure).
 * Keys the decoder does not know are skipped, keys it knows but the bytes
 * lack stay empty/0 (older or newer agents). FY_ELIMIT when len exceeds
 * FY_FACTS_WIRE_MAX or labels holds more than FY_LABELS_MAX entries;
 * FY_EINVAL for anything else wrong, naming the key. */
int fy_facts_decode(const uint8_t *p, size_t len, struct fy_facts *out, struct fy_err *err);

/* True when a and b differ in anything but the volatile fields (uptime_s,
 * disk_free, collected_at): the agent reports at once on change, and the
 * volatile ones only with its periodic report. Labels compare in order. */
bool fy_facts_changed(const struct fy_facts *a, const struct fy_facts *b);

#endif
