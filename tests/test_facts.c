/* Device facts: collection from a fake root (every field, os-release quoting
 * and escapes, the usr/lib fallback, missing sources, the machine-id hash
 * against a vector from Python's hashlib), the encode/decode round trip,
 * every decoder refusal with its message, unknown keys skipped, and change
 * detection that ignores only the volatile fields. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <fcntl.h>
#include <ftw.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/mpmap.h"
#include "fleet/facts.h"
#include "fleet/labels.h"
#include "fy_config.h"

#define assert_contains(haystack, needle)                                                                    \
  do {                                                                                                       \
    if (!strstr((haystack), (needle)))                                                                       \
      fail_msg("message \"%s\" does not contain \"%s\"", (haystack), (needle));                              \
  } while (0)

/* hashlib.sha256(b"ferry/machine-id/v1\0" + b"0123456789abcdef0123456789abcdef").hexdigest() */
#define MACHINE_ID "0123456789abcdef0123456789abcdef"
#define MACHINE_ID_HASH "2117b7f37192ba8661eb05fdc4c972a3183db3ea3351ac60860cdf0d60ee98e2"

struct ctx {
  char root[64];
};

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static int setup(void **state) {
  struct ctx *c = calloc(1, sizeof(*c));
  assert_non_null(c);
  snprintf(c->root, sizeof(c->root), "/tmp/ferry-facts-XXXXXX");
  assert_non_null(mkdtemp(c->root));
  *state = c;
  return 0;
}

static int teardown(void **state) {
  struct ctx *c = *state;
  nftw(c->root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(c);
  return 0;
}

/* Writes text to root/rel, making the directories on the way. */
static void put(const struct ctx *c, const char *rel, const char *text) {
  char path[512];
  snprintf(path, sizeof(path), "%s/%s", c->root, rel);
  for (char *s = path + strlen(c->root) + 1; (s = strchr(s, '/')); s++) {
    *s = '\0';
    mkdir(path, 0755);
    *s = '/';
  }
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static void rm(const struct ctx *c, const char *rel) {
  char path[512];
  snprintf(path, sizeof(path), "%s/%s", c->root, rel);
  assert_int_equal(unlink(path), 0);
}

static void collect(const struct ctx *c, struct fy_facts *f) {
  struct fy_facts_source src = {.root = c->root};
  struct fy_err err = {0};
  assert_int_equal(fy_facts_collect(&src, f, &err), 0);
}

static void collect_every_field(void **state) {
  struct ctx *c = *state;
  put(c, "etc/os-release",
      "# the fake OS\n"
      "\n"
      "NAME=\"Fake OS\"\n"
      "  ID=fakeos\n"
      "VERSION_ID='24.05'\n"
      "PRETTY_NAME=\"Fake \\\"OS\\\" \\$5 \\\\ \\x 24.05\"\n");
  put(c, "etc/machine-id", MACHINE_ID "\n");
  put(c, "proc/uptime", "12345.67 54321.00\n");
  char link[128];
  snprintf(link, sizeof(link), "%s/run", c->root);
  assert_int_equal(mkdir(link, 0755), 0);
  snprintf(link, sizeof(link), "%s/run/current-system", c->root);
  assert_int_equal(symlink("/nix/store/0abc-nixos-system-kiosk-24.05", link), 0);

  struct fy_labels labels;
  struct fy_err err = {0};
  assert_int_equal(fy_labels_parse("site=berlin,role=kiosk", &labels, &err), 0);
  struct fy_facts_source src = {
      .root = c->root, .disk_dir = c->root, .version = "2.4.1", .labels = &labels, .now_ms = 1700000000123};
  struct fy_facts f;
  assert_int_equal(fy_facts_collect(&src, &f, &err), 0);

  struct utsname u;
  assert_int_equal(uname(&u), 0);
  assert_string_equal(f.hostname, u.nodename);
  assert_string_equal(f.kernel, u.release);
  assert_string_equal(f.arch, u.machine);
  assert_string_equal(f.os_id, "fakeos");
  assert_string_equal(f.os_version_id, "24.05");
  assert_string_equal(f.os_pretty_name, "Fake \"OS\" $5 \\ \\x 24.05");
  assert_string_equal(f.machine_id_hash, MACHINE_ID_HASH);
  assert_string_equal(f.version, "2.4.1");
  assert_string_equal(f.ferry_version, FY_VERSION);
  assert_string_equal(f.nixos_system, "/nix/store/0abc-nixos-system-kiosk-24.05");
  assert_int_equal(f.labels.n, 2);
  assert_string_equal(f.labels.v[0].key, "role");
  assert_string_equal(f.labels.v[1].value, "berlin");
  assert_int_equal(f.uptime_s, 12345);
  assert_int_equal(f.collected_at, 1700000000123);

  struct statvfs sv;
  assert_int_equal(statvfs(c->root, &sv), 0);
  assert_int_equal(f.disk_total, (uint64_t)sv.f_blocks * sv.f_frsize);
  assert_true(f.disk_total > 0);
  assert_true(f.disk_free <= f.disk_total);
}

/* os-release(5) syntax, one file per case, checked through the three keys read. */
static void os_release_syntax(void **state) {
  struct ctx *c = *state;
  static const struct {
    const char *text, *id, *version_id, *pretty;
  } cases[] = {
      {"ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n", "debian", "12",
       "Debian GNU/Linux 12 (bookworm)"},
      /* shell quoting: 'It' \' 's ...' concatenate; no escapes inside '' */
      {"PRETTY_NAME='It'\\''s \"fine\" \\n'\n", "", "", "It's \"fine\" \\n"},
      /* unquoted: \ escapes, trailing blanks dropped, blanks around = allowed */
      {"ID = my\\ os   \n", "my os", "", ""},
      /* comments, blank and garbage lines; the last assignment wins; no final newline */
      {"#ID=wrong\n\n   \nthis is not an assignment\n=x\nID=a\nID=b\nVERSION_ID=7", "b", "7", ""},
      /* an unterminated quote ends at the end of the file */
      {"PRETTY_NAME=\"open", "", "", "open"},
      /* \ newline continues a double-quoted value */
      {"PRETTY_NAME=\"two \\\nlines\"\nID=x\n", "x", "", "two lines"},
      /* empty values; CRLF line ends */
      {"ID=\r\nVERSION_ID=\"\"\r\n", "", "", ""},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    put(c, "etc/os-release", cases[i].text);
    struct fy_facts f;
    collect(c, &f);
    if (strcmp(f.os_id, cases[i].id) != 0 || strcmp(f.os_version_id, cases[i].version_id) != 0 ||
        strcmp(f.os_pretty_name, cases[i].pretty) != 0)
      fail_msg("case %zu: got ID=[%s] VERSION_ID=[%s] PRETTY_NAME=[%s]", i, f.os_id, f.os_version_id,
               f.os_pretty_name);
  }
}

static void os_release_fallback_and_cut(void **state) {
  struct ctx *c = *state;
  struct fy_facts f;
  put(c, "usr/lib/os-release", "ID=vendor\n");
  collect(c, &f);
  assert_string_equal(f.os_id, "vendor");
  put(c, "etc/os-release", "ID=local\n");
  collect(c, &f);
  assert_string_equal(f.os_id, "local");

  /* "a" and 100 two-byte characters: cut to 127 bytes, not into a character. */
  char text[512] = "PRETTY_NAME=\"a";
  size_t n = strlen(text);
  for (int i = 0; i < 100; i++) {
    text[n++] = '\xc3'; /* U+00E9 */
    text[n++] = '\xa9';
  }
  memcpy(text + n, "\"\n", 3);
  put(c, "etc/os-release", text);
  collect(c, &f);
  assert_int_equal(strlen(f.os_pretty_name), 127);
  assert_memory_equal(f.os_pretty_name, text + 13, 127);
}

static void missing_sources_leave_fields_empty(void **state) {
  struct ctx *c = *state;
  struct fy_facts f;
  collect(c, &f);
  assert_string_equal(f.os_id, "");
  assert_string_equal(f.os_pretty_name, "");
  assert_string_equal(f.machine_id_hash, "");
  assert_string_equal(f.nixos_system, "");
  assert_string_equal(f.version, "");
  assert_int_equal(f.labels.n, 0);
  assert_int_equal(f.uptime_s, 0);
  assert_int_equal(f.disk_total, 0);
  assert_int_equal(f.disk_free, 0);
  assert_string_equal(f.ferry_version, FY_VERSION);
  assert_true(f.hostname[0] != '\0');

  /* No id yet: empty, whitespace, systemd's first-boot placeholder. */
  put(c, "etc/machine-id", " \n");
  collect(c, &f);
  assert_string_equal(f.machine_id_hash, "");
  put(c, "etc/machine-id", "uninitialized\n");
  collect(c, &f);
  assert_string_equal(f.machine_id_hash, "");
  put(c, "etc/machine-id", "  " MACHINE_ID "  \n\n");
  collect(c, &f);
  assert_string_equal(f.machine_id_hash, MACHINE_ID_HASH);
  rm(c, "etc/machine-id");

  put(c, "proc/uptime", "garbage\n");
  collect(c, &f);
  assert_int_equal(f.uptime_s, 0);
}

static void collect_refusals(void **state) {
  struct ctx *c = *state;
  struct fy_facts f;
  struct fy_err err = {0};
  char missing[128];
  snprintf(missing, sizeof(missing), "%s/nope", c->root);
  struct fy_facts_source src = {.root = missing};
  assert_int_equal(fy_facts_collect(&src, &f, &err), FY_ENOENT);
  assert_int_equal(err.code, FY_ENOENT);
  assert_contains(err.msg, "facts: root directory");
  assert_contains(err.msg, "/nope");

  char version[FY_FACTS_VERSION_MAX + 2];
  memset(version, 'v', sizeof(version) - 1);
  version[sizeof(version) - 1] = '\0';
  src = (struct fy_facts_source){.root = c->root, .version = version};
  assert_int_equal(fy_facts_collect(&src, &f, &err), FY_EINVAL);
  assert_contains(err.msg, "facts: version is longer than 128 bytes");
  version[FY_FACTS_VERSION_MAX] = '\0';
  assert_int_equal(fy_facts_collect(&src, &f, &err), 0);
  assert_string_equal(f.version, version);

  /* Labels filled by hand go through validation and come out sorted. */
  struct fy_labels labels = {.n = 2};
  strcpy(labels.v[0].key, "zone");
  strcpy(labels.v[0].value, "b");
  strcpy(labels.v[1].key, "app");
  strcpy(labels.v[1].value, "a");
  src = (struct fy_facts_source){.root = c->root, .labels = &labels};
  assert_int_equal(fy_facts_collect(&src, &f, &err), 0);
  assert_string_equal(f.labels.v[0].key, "app");
  strcpy(labels.v[1].key, "Bad Key");
  assert_int_equal(fy_facts_collect(&src, &f, &err), FY_EINVAL);
  assert_contains(err.msg, "facts: labels");
  labels.n = FY_LABELS_MAX + 1;
  assert_int_equal(fy_facts_collect(&src, &f, &err), FY_EINVAL);
  assert_contains(err.msg, "facts: 33 labels, at most 32");
}

static void full_facts(struct fy_facts *f) {
  memset(f, 0, sizeof(*f));
  strcpy(f->hostname, "kiosk-17");
  strcpy(f->kernel, "6.1.0-18-amd64");
  strcpy(f->arch, "x86_64");
  strcpy(f->os_id, "nixos");
  strcpy(f->os_version_id, "24.05");
  strcpy(f->os_pretty_name, "NixOS 24.05 (Uakari)");
  strcpy(f->machine_id_hash, MACHINE_ID_HASH);
  strcpy(f->version, "2.4.1");
  strcpy(f->ferry_version, FY_VERSION);
  strcpy(f->nixos_system, "/nix/store/0abc-nixos-system-kiosk-24.05");
  assert_int_equal(fy_labels_parse("role=kiosk,site=berlin", &f->labels, NULL), 0);
  f->disk_free = 1ull << 33;
  f->disk_total = 1ull << 35;
  f->uptime_s = 86400;
  f->collected_at = UINT64_MAX;
}

static void round_trip(void **state) {
  struct ctx *c = *state;
  struct fy_facts f, g;
  struct fy_err err = {0};
  full_facts(&f);
  struct fy_buf b = FY_BUF_INIT;
  assert_int_equal(fy_buf_append(&b, "x", 1, NULL), 0); /* encode appends */
  assert_int_equal(fy_facts_encode(&f, &b, &err), 0);
  assert_int_equal(b.data[0], 'x');
  assert_int_equal(fy_facts_decode(b.data + 1, b.len - 1, &g, &err), 0);
  assert_false(fy_facts_changed(&f, &g));
  assert_memory_equal(&f, &g, sizeof(f));
  fy_buf_free(&b);

  /* Collected facts too, and an all-empty struct. */
  put(c, "etc/os-release", "ID=x\n");
  struct fy_facts_source src = {.root = c->root, .disk_dir = c->root, .now_ms = 5};
  assert_int_equal(fy_facts_collect(&src, &f, &err), 0);
  assert_int_equal(fy_facts_encode(&f, &b, &err), 0);
  assert_int_equal(fy_facts_decode(b.data, b.len, &g, &err), 0);
  assert_memory_equal(&f, &g, sizeof(f));
  fy_buf_free(&b);
  memset(&f, 0, sizeof(f));
  assert_int_equal(fy_facts_encode(&f, &b, &err), 0);
  assert_int_equal(fy_facts_decode(b.data, b.len, &g, &err), 0);
  assert_memory_equal(&f, &g, sizeof(f));
  fy_buf_free(&b);
}

static void pack_str(msgpack_packer *pk, const char *s) {
  msgpack_pack_str_with_body(pk, s, strlen(s));
}

static void expect_refused(const struct fy_buf *b, int code, const char *msg) {
  struct fy_facts f;
  struct fy_err err = {0};
  memset(&f, 0x55, sizeof(f));
  int rc = fy_facts_decode(b->data, b->len, &f, &err);
  if (rc != code)
    fail_msg("expected %d, got %d (%s)", code, rc, err.msg);
  assert_int_equal(err.code, code);
  assert_contains(err.msg, msg);
  assert_string_equal(f.hostname, ""); /* nothing half-decoded */
}

/* {"hostname": "h", key: <value from fn>} */
#define ONE_BAD(stmt, code, msg)                                                                             \
  do {                                                                                                       \
    struct fy_buf b_ = FY_BUF_INIT;                                                                          \
    msgpack_packer pk_;                                                                                      \
    msgpack_packer_init(&pk_, &b_, fy_mp_buf_write);                                                         \
    msgpack_pack_map(&pk_, 2);                                                                               \
    pack_str(&pk_, "hostname");                                                                              \
    pack_str(&pk_, "h");                                                                                     \
    msgpack_packer *pk = &pk_;                                                                               \
    stmt;                                                                                                    \
    expect_refused(&b_, (code), (msg));                                                                      \
    fy_buf_free(&b_);                                                                                        \
  } while (0)

static void decode_refusals(void **state) {
  (void)state;
  char long_name[FY_FACTS_HOSTNAME_MAX + 2];
  memset(long_name, 'a', sizeof(long_name) - 1);
  long_name[sizeof(long_name) - 1] = '\0';

  ONE_BAD((pack_str(pk, "kernel"), msgpack_pack_int(pk, 5)), FY_EINVAL, "facts: kernel is not a string");
  ONE_BAD((pack_str(pk, "uptime_s"), pack_str(pk, "1")), FY_EINVAL,
          "facts: uptime_s is not an unsigned integer");
  ONE_BAD((pack_str(pk, "disk_free"), msgpack_pack_int(pk, -1)), FY_EINVAL,
          "facts: disk_free is not an unsigned integer");
  ONE_BAD((pack_str(pk, "collected_at"), msgpack_pack_double(pk, 1.5)), FY_EINVAL,
          "facts: collected_at is not an unsigned integer");
  ONE_BAD((pack_str(pk, "os_id"), msgpack_pack_bin_with_body(pk, "x", 1)), FY_EINVAL,
          "facts: os_id is not a string");
  ONE_BAD((pack_str(pk, "arch"), msgpack_pack_str_with_body(pk, "x\0y", 3)), FY_EINVAL,
          "facts: arch contains a NUL byte");
  ONE_BAD((pack_str(pk, "arch"), pack_str(pk, long_name)), FY_EINVAL, "facts: arch is 65 bytes, at most 64");
  ONE_BAD((pack_str(pk, "hostname"), pack_str(pk, "again")), FY_EINVAL, "facts: hostname appears twice");
  ONE_BAD((msgpack_pack_int(pk, 7), pack_str(pk, "x")), FY_EINVAL, "facts: key 1 is not a string");
  ONE_BAD((pack_str(pk, "labels"), pack_str(pk, "site=berlin")), FY_EINVAL, "facts: labels: ");
  ONE_BAD((pack_str(pk, "labels"), msgpack_pack_map(pk, 1), pack_str(pk, "Bad Key"), pack_str(pk, "v")),
          FY_EINVAL, "facts: labels: ");
  ONE_BAD((pack_str(pk, "machine_id_hash"), pack_str(pk, "abc")), FY_EINVAL,
          "facts: machine_id_hash is 3 characters, not 64");
  ONE_BAD((pack_str(pk, "machine_id_hash"), pack_str(pk, "2117B7F37192BA8661EB05FDC4C972A3183DB3EA3351AC6086"
                                                         "0CDF0D60EE98E2")),
          FY_EINVAL, "facts: machine_id_hash is not lowercase hex (offset 4)");
  /* msgpack-level: shapes the bounds walk refuses before msgpack-c runs */
  ONE_BAD((pack_str(pk, "x"), msgpack_pack_array(pk, 3)), FY_EINVAL, "truncated");
  ONE_BAD((pack_str(pk, "x"), msgpack_pack_nil(pk), msgpack_pack_nil(pk)), FY_EINVAL,
          "1 bytes after the msgpack value");

  struct fy_buf b = FY_BUF_INIT;
  msgpack_packer pk;
  msgpack_packer_init(&pk, &b, fy_mp_buf_write);
  msgpack_pack_array(&pk, 1);
  pack_str(&pk, "hostname");
  expect_refused(&b, FY_EINVAL, "facts: not a map");
  fy_buf_free(&b);

  static uint8_t huge_map[] = {0xdf, 0xff, 0xff, 0xff, 0xff};
  expect_refused(&(struct fy_buf){huge_map, 0, 0}, FY_EINVAL, "truncated");
  /* map32 claiming 2^32-1 pairs: refused before msgpack-c allocates for it */
  expect_refused(&(struct fy_buf){huge_map, sizeof(huge_map), 0}, FY_EINVAL,
                 "more than 1024 array and map elements");
}

/* {"hostname": "h", "padding": <str of n bytes>} is exactly total bytes long. */
static void padded(struct fy_buf *b, size_t total) {
  msgpack_packer pk;
  msgpack_packer_init(&pk, b, fy_mp_buf_write);
  size_t head = 1 + 9 + 2 + 8 + 3; /* fixmap, "hostname", "h", "padding", str16 header */
  char *pad = malloc(total - head);
  assert_non_null(pad);
  memset(pad, 'p', total - head);
  msgpack_pack_map(&pk, 2);
  pack_str(&pk, "hostname");
  pack_str(&pk, "h");
  pack_str(&pk, "padding");
  msgpack_pack_str_with_body(&pk, pad, total - head);
  free(pad);
  assert_int_equal(b->len, total);
}

static void size_limit_and_unknown_keys(void **state) {
  (void)state;
  struct fy_facts f;
  struct fy_err err = {0};
  struct fy_buf b = FY_BUF_INIT;
  padded(&b, FY_FACTS_WIRE_MAX);
  assert_int_equal(fy_facts_decode(b.data, b.len, &f, &err), 0);
  assert_string_equal(f.hostname, "h");
  fy_buf_free(&b);
  padded(&b, FY_FACTS_WIRE_MAX + 1);
  expect_refused(&b, FY_ELIMIT, "facts: 16385 bytes, at most 16384");
  fy_buf_free(&b);

  /* A newer agent's keys, of any type, are skipped; absent known keys stay empty. */
  msgpack_packer pk;
  msgpack_packer_init(&pk, &b, fy_mp_buf_write);
  msgpack_pack_map(&pk, 4);
  pack_str(&pk, "future_map");
  msgpack_pack_map(&pk, 1);
  pack_str(&pk, "gpu");
  msgpack_pack_array(&pk, 2);
  msgpack_pack_int(&pk, -3);
  msgpack_pack_nil(&pk);
  pack_str(&pk, "hostname");
  pack_str(&pk, "h");
  pack_str(&pk, "uptime_s ");
  pack_str(&pk, "not ours");
  pack_str(&pk, "uptime_s");
  msgpack_pack_uint64(&pk, 42);
  memset(&f, 0x55, sizeof(f));
  assert_int_equal(fy_facts_decode(b.data, b.len, &f, &err), 0);
  assert_string_equal(f.hostname, "h");
  assert_int_equal(f.uptime_s, 42);
  assert_string_equal(f.kernel, "");
  assert_int_equal(f.labels.n, 0);
  assert_int_equal(f.collected_at, 0);
  fy_buf_free(&b);
}

static void changed_ignores_only_volatile_fields(void **state) {
  (void)state;
  struct fy_facts a, b;
  full_facts(&a);
  b = a;
  assert_false(fy_facts_changed(&a, &b));
  b.uptime_s++;
  b.disk_free--;
  b.collected_at = 1;
  assert_false(fy_facts_changed(&a, &b));
  /* Bytes after a string's NUL are not part of it. */
  b.hostname[sizeof(b.hostname) - 1] = 'z';
  assert_false(fy_facts_changed(&a, &b));

  char *strings[] = {b.hostname,       b.kernel,  b.arch,          b.os_id,        b.os_version_id,
                     b.os_pretty_name, b.version, b.ferry_version, b.nixos_system, b.machine_id_hash};
  for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++) {
    b = a;
    strings[i][0] ^= 1;
    if (!fy_facts_changed(&a, &b))
      fail_msg("string %zu changed unnoticed", i);
  }
  b = a;
  b.disk_total++;
  assert_true(fy_facts_changed(&a, &b));
  b = a;
  strcpy(b.labels.v[1].value, "paris");
  assert_true(fy_facts_changed(&a, &b));
  b = a;
  b.labels.n--;
  assert_true(fy_facts_changed(&a, &b));
  b = a;
  b.labels.v[0].key[0] = 'x';
  assert_true(fy_facts_changed(&a, &b));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(collect_every_field, setup, teardown),
      cmocka_unit_test_setup_teardown(os_release_syntax, setup, teardown),
      cmocka_unit_test_setup_teardown(os_release_fallback_and_cut, setup, teardown),
      cmocka_unit_test_setup_teardown(missing_sources_leave_fields_empty, setup, teardown),
      cmocka_unit_test_setup_teardown(collect_refusals, setup, teardown),
      cmocka_unit_test_setup_teardown(round_trip, setup, teardown),
      cmocka_unit_test(decode_refusals),
      cmocka_unit_test(size_limit_and_unknown_keys),
      cmocka_unit_test(changed_ignores_only_volatile_fields),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
