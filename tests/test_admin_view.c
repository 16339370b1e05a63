/* Rendering of admin query replies: the human tables show the columns and
 * short forms an admin reads, --json output parses and carries ids as hex,
 * and malformed replies fail with a message that names the field. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <jansson.h>
#include <msgpack.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "admin/admin_cmd.h"
#include "admin/admin_view.h"
#include "crypto/key.h"
#include "fleet/envelope.h"

#define assert_contains(haystack, needle)                                                                    \
  do {                                                                                                       \
    if (!strstr((haystack), (needle)))                                                                       \
      fail_msg("\"%s\" does not contain \"%s\"", (haystack), (needle));                                      \
  } while (0)

#define NOW 1800000000000ull /* ms */

struct out {
  char *buf, *ebuf;
  size_t len, elen;
  struct fy_admin_view v;
};

static void out_open(struct out *o, bool json) {
  memset(o, 0, sizeof(*o));
  o->v.out = open_memstream(&o->buf, &o->len);
  o->v.errout = open_memstream(&o->ebuf, &o->elen);
  o->v.json = json;
  o->v.now_ms = NOW;
}

static void out_close(struct out *o) {
  fflush(o->v.out);
  fflush(o->v.errout);
}

static void out_free(struct out *o) {
  fclose(o->v.out);
  fclose(o->v.errout);
  free(o->buf);
  free(o->ebuf);
}

static void pk_str(msgpack_packer *pk, const char *s) {
  msgpack_pack_str_with_body(pk, s, strlen(s));
}

static void pk_bin(msgpack_packer *pk, const uint8_t *p, size_t n) {
  msgpack_pack_bin_with_body(pk, p, n);
}

/* mode NULL: a reply of a coordinator older than update modes. */
static void pk_agent(msgpack_packer *pk, uint8_t idbyte, const char *hostname, bool id_ok, const char *mode) {
  uint8_t id[32];
  memset(id, idbyte, sizeof(id));
  msgpack_pack_map(pk, mode ? 12 : 9);
  if (mode) {
    pk_str(pk, "update_mode");
    pk_str(pk, mode);
    pk_str(pk, "channel");
    pk_str(pk, "beta");
    pk_str(pk, "assigned");
    pk_str(pk, "");
  }
  pk_str(pk, "id");
  pk_bin(pk, id, id_ok ? 32 : 31);
  pk_str(pk, "status");
  pk_str(pk, "enrolled");
  pk_str(pk, "tenant");
  pk_str(pk, "lab");
  pk_str(pk, "labels");
  msgpack_pack_map(pk, 2);
  pk_str(pk, "role");
  pk_str(pk, "kiosk");
  pk_str(pk, "site");
  pk_str(pk, "berlin");
  pk_str(pk, "hostname");
  pk_str(pk, hostname);
  pk_str(pk, "version");
  pk_str(pk, "1.2.3");
  pk_str(pk, "online");
  msgpack_pack_true(pk);
  pk_str(pk, "last_seen");
  msgpack_pack_uint64(pk, NOW - 3ull * 60 * 1000);
  pk_str(pk, "enrolled_at");
  msgpack_pack_uint64(pk, NOW - 30ull * 24 * 3600 * 1000);
}

static void agents_reply(msgpack_sbuffer *sb, bool id_ok) {
  msgpack_sbuffer_init(sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
  msgpack_pack_map(&pk, 1);
  pk_str(&pk, "agents");
  msgpack_pack_array(&pk, 2);
  pk_agent(&pk, 0x3f, "kiosk-berlin-17", true, "latest");
  pk_agent(&pk, 0xa0, "pos-1", id_ok, NULL);
}

static void test_agents_table(void **state) {
  (void)state;
  msgpack_sbuffer sb;
  agents_reply(&sb, true);
  struct out o;
  out_open(&o, false);
  struct fy_err err = {0};
  assert_int_equal(fy_admin_view_agents(&o.v, (const uint8_t *)sb.data, sb.size, &err), 0);
  out_close(&o);
  /* Header, then rows with columns aligned under it. */
  assert_contains(
      o.buf,
      "ID            STATUS    TENANT  HOSTNAME         VERSION  UPDATES      ONLINE  LAST SEEN  LABELS\n");
  assert_contains(o.buf,
                  "3f3f3f3f3f3f  enrolled  lab     kiosk-berlin-17  1.2.3    latest beta  yes     3m ago     "
                  "role=kiosk,site=berlin\n");
  assert_contains(o.buf, "1.2.3    -            yes"); /* an older coordinator: no update mode */
  assert_contains(o.buf, "a0a0a0a0a0a0  enrolled  lab     pos-1  ");
  /* Lines carry no trailing blanks. */
  assert_null(strstr(o.buf, " \n"));
  out_free(&o);
  msgpack_sbuffer_destroy(&sb);
}

static void test_agents_json(void **state) {
  (void)state;
  msgpack_sbuffer sb;
  agents_reply(&sb, true);
  struct out o;
  out_open(&o, true);
  struct fy_err err = {0};
  assert_int_equal(fy_admin_view_agents(&o.v, (const uint8_t *)sb.data, sb.size, &err), 0);
  out_close(&o);
  json_error_t jerr;
  json_t *j = json_loads(o.buf, 0, &jerr);
  assert_non_null(j);
  json_t *a0 = json_array_get(json_object_get(j, "agents"), 0);
  assert_string_equal(json_string_value(json_object_get(a0, "id")),
                      "3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f");
  assert_string_equal(json_string_value(json_object_get(json_object_get(a0, "labels"), "site")), "berlin");
  assert_true(json_is_true(json_object_get(a0, "online")));
  assert_int_equal(json_integer_value(json_object_get(a0, "last_seen")),
                   (json_int_t)(NOW - 3ull * 60 * 1000));
  json_decref(j);
  out_free(&o);
  msgpack_sbuffer_destroy(&sb);
}

static void test_agents_bad_id(void **state) {
  (void)state;
  msgpack_sbuffer sb;
  agents_reply(&sb, false);
  struct out o;
  out_open(&o, false);
  struct fy_err err = {0};
  assert_int_equal(fy_admin_view_agents(&o.v, (const uint8_t *)sb.data, sb.size, &err), FY_EINVAL);
  assert_string_equal(err.msg, "agents reply: agents[1]: id is not bin 32");
  out_close(&o);
  assert_int_equal(o.len, 0); /* nothing half-printed */
  out_free(&o);
  msgpack_sbuffer_destroy(&sb);
}

static void test_truncated_and_hostile(void **state) {
  (void)state;
  struct out o;
  out_open(&o, false);
  struct fy_err err = {0};
  /* A map header promising more than arrives. */
  const uint8_t cut[] = {0x81, 0xa6, 'a', 'g', 'e', 'n', 't', 's'};
  assert_int_equal(fy_admin_view_agents(&o.v, cut, sizeof(cut), &err), FY_EINVAL);
  assert_contains(err.msg, "agents reply");
  assert_contains(err.msg, "truncated");
  /* An array header claiming 4 billion elements is refused before msgpack-c
   * would allocate for it. */
  const uint8_t huge[] = {0x81, 0xa6, 'a', 'g', 'e', 'n', 't', 's', 0xdd, 0xff, 0xff, 0xff, 0xff};
  fy_err_clear(&err);
  assert_int_equal(fy_admin_view_agents(&o.v, huge, sizeof(huge), &err), FY_EINVAL);
  assert_contains(err.msg, "agents reply");
  /* Not a map at all. */
  const uint8_t arr[] = {0x90};
  fy_err_clear(&err);
  assert_int_equal(fy_admin_view_agents(&o.v, arr, sizeof(arr), &err), FY_EINVAL);
  assert_string_equal(err.msg, "agents reply: not a map");
  /* A missing list. */
  const uint8_t empty[] = {0x80};
  fy_err_clear(&err);
  assert_int_equal(fy_admin_view_agents(&o.v, empty, sizeof(empty), &err), FY_EINVAL);
  assert_string_equal(err.msg, "agents reply: agents is missing");
  out_free(&o);
}

static void test_status_unreachable(void **state) {
  (void)state;
  struct fy_admin_pending p[2] = {0};
  memset(p[0].id, 0x11, 32);
  snprintf(p[0].cmd, sizeof(p[0].cmd), "agents.approve");
  p[0].seq = 42;
  p[0].queued_at = NOW - 2ull * 3600 * 1000;
  memset(p[1].id, 0x22, 32);
  snprintf(p[1].cmd, sizeof(p[1].cmd), "enroll.create");
  p[1].seq = 43;
  p[1].queued_at = NOW - 10ull * 1000;
  struct out o;
  out_open(&o, false);
  struct fy_err err = {0};
  assert_int_equal(fy_admin_view_status(&o.v, NULL, 0, "timed out after 10 s", p, 2, &err), 0);
  out_close(&o);
  assert_contains(o.buf, "coordinator unreachable: timed out after 10 s\n");
  assert_contains(o.buf, "local queue: 2 commands not yet acknowledged\n");
  assert_contains(o.buf, "ID            CMD             SEQ  QUEUED\n");
  assert_contains(o.buf, "111111111111  agents.approve  42   2h ago\n");
  assert_contains(o.buf, "222222222222  enroll.create   43   10s ago\n");
  out_free(&o);

  out_open(&o, true);
  assert_int_equal(fy_admin_view_status(&o.v, NULL, 0, "timed out", p, 1, &err), 0);
  out_close(&o);
  json_t *j = json_loads(o.buf, 0, NULL);
  assert_non_null(j);
  assert_true(json_is_null(json_object_get(j, "coordinator")));
  assert_string_equal(json_string_value(json_object_get(j, "unreachable")), "timed out");
  json_t *q0 = json_array_get(json_object_get(j, "queue"), 0);
  assert_string_equal(json_string_value(json_object_get(q0, "cmd")), "agents.approve");
  assert_int_equal(strlen(json_string_value(json_object_get(q0, "id"))), 64);
  json_decref(j);
  out_free(&o);
}

static void status_reply(msgpack_sbuffer *sb) {
  msgpack_sbuffer_init(sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
  uint8_t coord[32];
  memset(coord, 0xc0, sizeof(coord));
  msgpack_pack_map(&pk, 6);
  pk_str(&pk, "coordinator");
  pk_bin(&pk, coord, 32);
  pk_str(&pk, "addrs");
  msgpack_pack_array(&pk, 2);
  pk_str(&pk, "192.0.2.1:4433");
  pk_str(&pk, "[2001:db8::1]:4433");
  pk_str(&pk, "version");
  pk_str(&pk, "0.1.0");
  pk_str(&pk, "now");
  msgpack_pack_uint64(&pk, NOW);
  pk_str(&pk, "you");
  msgpack_pack_map(&pk, 2);
  pk_str(&pk, "role");
  pk_str(&pk, "owner");
  pk_str(&pk, "tenants");
  msgpack_pack_array(&pk, 1);
  pk_str(&pk, "*");
  pk_str(&pk, "agents");
  msgpack_pack_map(&pk, 4);
  pk_str(&pk, "enrolled");
  msgpack_pack_uint32(&pk, 12);
  pk_str(&pk, "pending");
  msgpack_pack_uint32(&pk, 1);
  pk_str(&pk, "revoked");
  msgpack_pack_uint32(&pk, 0);
  pk_str(&pk, "online");
  msgpack_pack_uint32(&pk, 9);
}

static void test_status_reachable(void **state) {
  (void)state;
  msgpack_sbuffer sb;
  status_reply(&sb);
  struct out o;
  out_open(&o, false);
  struct fy_err err = {0};
  assert_int_equal(fy_admin_view_status(&o.v, (const uint8_t *)sb.data, sb.size, NULL, NULL, 0, &err), 0);
  out_close(&o);
  assert_contains(o.buf, "coordinator: c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0\n");
  assert_contains(o.buf, "addrs:       192.0.2.1:4433,[2001:db8::1]:4433\n");
  assert_contains(o.buf, "you:         owner of *\n");
  assert_contains(o.buf, "agents:      12 enrolled, 1 pending, 0 revoked, 9 online\n");
  assert_contains(o.buf, "local queue: empty\n");
  out_free(&o);

  out_open(&o, true);
  assert_int_equal(fy_admin_view_status(&o.v, (const uint8_t *)sb.data, sb.size, NULL, NULL, 0, &err), 0);
  out_close(&o);
  json_t *j = json_loads(o.buf, 0, NULL);
  assert_non_null(j);
  json_t *c = json_object_get(j, "coordinator");
  assert_int_equal(json_integer_value(json_object_get(json_object_get(c, "agents"), "enrolled")), 12);
  assert_true(json_is_null(json_object_get(j, "unreachable")));
  json_decref(j);
  out_free(&o);
  msgpack_sbuffer_destroy(&sb);
}

static void result_reply(msgpack_sbuffer *sb, bool ok) {
  msgpack_sbuffer_init(sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
  uint8_t issuer[32] = {0};
  msgpack_pack_map(&pk, 7);
  pk_str(&pk, "ok");
  if (ok)
    msgpack_pack_true(&pk);
  else
    msgpack_pack_false(&pk);
  pk_str(&pk, "code");
  pk_str(&pk, ok ? "ok" : "forbidden_tenant");
  pk_str(&pk, "message");
  pk_str(&pk, ok ? "" : "operator of lab may not act in prod");
  pk_str(&pk, "cmd");
  pk_str(&pk, "agents.approve");
  pk_str(&pk, "issuer");
  pk_bin(&pk, issuer, 32);
  pk_str(&pk, "seq");
  msgpack_pack_uint64(&pk, 7);
  pk_str(&pk, "at");
  msgpack_pack_uint64(&pk, NOW);
}

static void test_result(void **state) {
  (void)state;
  uint8_t id[32];
  memset(id, 0x3f, sizeof(id));
  msgpack_sbuffer sb;
  struct out o;
  struct fy_err err = {0};

  result_reply(&sb, true);
  out_open(&o, false);
  assert_int_equal(fy_admin_view_result(&o.v, id, (const uint8_t *)sb.data, sb.size, &err), 1);
  out_close(&o);
  assert_string_equal(o.buf, "applied: agents.approve 3f3f3f3f3f3f\n");
  assert_int_equal(o.elen, 0);
  out_free(&o);
  msgpack_sbuffer_destroy(&sb);

  result_reply(&sb, false);
  out_open(&o, false);
  assert_int_equal(fy_admin_view_result(&o.v, id, (const uint8_t *)sb.data, sb.size, &err), 0);
  out_close(&o);
  assert_int_equal(o.len, 0);
  assert_string_equal(
      o.ebuf,
      "refused (forbidden_tenant): agents.approve 3f3f3f3f3f3f: operator of lab may not act in prod\n");
  out_free(&o);

  out_open(&o, true);
  assert_int_equal(fy_admin_view_result(&o.v, id, (const uint8_t *)sb.data, sb.size, &err), 0);
  out_close(&o);
  json_t *j = json_loads(o.buf, 0, NULL);
  assert_non_null(j);
  assert_string_equal(json_string_value(json_object_get(j, "code")), "forbidden_tenant");
  assert_string_equal(json_string_value(json_object_get(j, "issuer")),
                      "0000000000000000000000000000000000000000000000000000000000000000");
  json_decref(j);
  out_free(&o);
  msgpack_sbuffer_destroy(&sb);
}

static void pk_facts(msgpack_packer *pk, const char *version, uint64_t uptime) {
  msgpack_pack_map(pk, 3);
  pk_str(pk, "hostname");
  pk_str(pk, "kiosk-berlin-17");
  pk_str(pk, "version");
  pk_str(pk, version);
  pk_str(pk, "uptime_s");
  msgpack_pack_uint64(pk, uptime);
}

static void test_agent_show(void **state) {
  (void)state;
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  msgpack_pack_map(&pk, 5);
  pk_str(&pk, "agent");
  pk_agent(&pk, 0x3f, "kiosk-berlin-17", true, "pinned");
  pk_str(&pk, "update"); /* update mode latest: the channel's release, delivered outside rollouts */
  msgpack_pack_map(&pk, 6);
  pk_str(&pk, "via");
  pk_str(&pk, "LATEST");
  pk_str(&pk, "name");
  pk_str(&pk, "app");
  pk_str(&pk, "version");
  pk_str(&pk, "1.2.3");
  pk_str(&pk, "state");
  pk_str(&pk, "success");
  pk_str(&pk, "at");
  msgpack_pack_uint64(&pk, NOW - 120ull * 1000);
  pk_str(&pk, "msg");
  pk_str(&pk, "healthy at '1.2.3'");
  pk_str(&pk, "facts");
  pk_facts(&pk, "1.2.3", 500);
  pk_str(&pk, "facts_at");
  msgpack_pack_uint64(&pk, NOW - 60ull * 1000);
  pk_str(&pk, "history");
  msgpack_pack_array(&pk, 3);
  const char *versions[] = {"1.2.2", "1.2.2", "1.2.3"};
  for (int i = 0; i < 3; i++) {
    msgpack_pack_map(&pk, 2);
    pk_str(&pk, "at");
    msgpack_pack_uint64(&pk, NOW - (uint64_t)(3 - i) * 3600 * 1000);
    pk_str(&pk, "facts");
    pk_facts(&pk, versions[i], (uint64_t)i * 100);
  }
  struct out o;
  out_open(&o, false);
  struct fy_err err = {0};
  assert_int_equal(fy_admin_view_agent(&o.v, (const uint8_t *)sb.data, sb.size, &err), 0);
  out_close(&o);
  assert_contains(o.buf, "id:          3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f\n");
  assert_contains(o.buf, "labels:      role=kiosk,site=berlin\n");
  assert_contains(o.buf, "version:     1.2.3\nupdates:     pinned\nonline:      yes\n");
  assert_contains(o.buf, "update:      latest app 1.2.3: success (2m ago): healthy at '1.2.3'\n");
  assert_contains(o.buf, "facts (1m ago):\n  hostname: kiosk-berlin-17\n  version: 1.2.3\n  uptime_s: 500\n");
  assert_contains(o.buf, "history (3 reports):\n");
  /* The first report lists everything but the volatile fields; later ones
   * only what changed. */
  assert_contains(o.buf, "  3h ago       hostname=kiosk-berlin-17 version=1.2.2\n");
  assert_contains(o.buf, "  2h ago       (no change)\n");
  assert_contains(o.buf, "  1h ago       version=1.2.3\n");
  out_free(&o);
  msgpack_sbuffer_destroy(&sb);
}

static void test_admins_and_tickets(void **state) {
  (void)state;
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  uint8_t key[32];
  memset(key, 0xab, sizeof(key));
  msgpack_pack_map(&pk, 1);
  pk_str(&pk, "admins");
  msgpack_pack_array(&pk, 1);
  msgpack_pack_map(&pk, 4);
  pk_str(&pk, "key");
  pk_bin(&pk, key, 32);
  pk_str(&pk, "role");
  pk_str(&pk, "operator");
  pk_str(&pk, "tenants");
  msgpack_pack_array(&pk, 2);
  pk_str(&pk, "lab");
  pk_str(&pk, "prod");
  pk_str(&pk, "root");
  msgpack_pack_false(&pk);
  struct out o;
  out_open(&o, false);
  struct fy_err err = {0};
  assert_int_equal(fy_admin_view_admins(&o.v, (const uint8_t *)sb.data, sb.size, &err), 0);
  out_close(&o);
  assert_string_equal(o.buf, "KEY           ROLE      TENANTS   ROOT\n"
                             "abababababab  operator  lab,prod  no\n");
  out_free(&o);
  msgpack_sbuffer_destroy(&sb);

  msgpack_sbuffer_init(&sb);
  msgpack_pack_map(&pk, 1);
  pk_str(&pk, "tickets");
  msgpack_pack_array(&pk, 1);
  msgpack_pack_map(&pk, 9);
  pk_str(&pk, "id");
  pk_str(&pk, "0123456789abcdef");
  pk_str(&pk, "tenant");
  pk_str(&pk, "lab");
  pk_str(&pk, "labels");
  msgpack_pack_map(&pk, 0);
  pk_str(&pk, "expires");
  msgpack_pack_uint64(&pk, NOW + 3600ull * 1000);
  pk_str(&pk, "uses");
  msgpack_pack_uint64(&pk, 0);
  pk_str(&pk, "used");
  msgpack_pack_uint64(&pk, 3);
  pk_str(&pk, "revoked");
  msgpack_pack_false(&pk);
  pk_str(&pk, "by");
  pk_bin(&pk, key, 32);
  pk_str(&pk, "at");
  msgpack_pack_uint64(&pk, NOW - 60ull * 1000);
  out_open(&o, false);
  assert_int_equal(fy_admin_view_tickets(&o.v, (const uint8_t *)sb.data, sb.size, &err), 0);
  out_close(&o);
  assert_contains(
      o.buf, "ID                TENANT  LABELS  EXPIRES  USES       USED  STATE   BY            CREATED\n");
  assert_contains(
      o.buf, "0123456789abcdef  lab             in 1h    unlimited  3     active  abababababab  1m ago\n");
  out_free(&o);
  msgpack_sbuffer_destroy(&sb);
}

static void test_json_conversion(void **state) {
  (void)state;
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  const uint8_t four[] = {0xfb, 0xff, 0x00, 0x01};
  msgpack_pack_map(&pk, 4);
  pk_str(&pk, "bin");
  pk_bin(&pk, four, sizeof(four));
  pk_str(&pk, "big");
  msgpack_pack_uint64(&pk, UINT64_MAX);
  pk_str(&pk, "neg");
  msgpack_pack_int64(&pk, -5);
  msgpack_pack_array(&pk, 0); /* a key that is not a string */
  msgpack_pack_nil(&pk);
  msgpack_zone zone;
  msgpack_object obj;
  struct fy_err err = {0};
  assert_int_equal(fy_admin_reply_unpack((const uint8_t *)sb.data, sb.size, "test", &zone, &obj, &err), 0);
  json_t *j = fy_admin_json_from_msgpack(&obj, &err);
  assert_null(j);
  assert_int_equal(err.code, FY_EINVAL);
  assert_string_equal(err.msg, "json: map key 3 is neither a string nor an integer");
  /* Without the bad key: URL-safe base64 for short bin, big numbers as text. */
  obj.via.map.size = 3;
  fy_err_clear(&err);
  j = fy_admin_json_from_msgpack(&obj, &err);
  assert_non_null(j);
  assert_string_equal(json_string_value(json_object_get(j, "bin")), "-_8AAQ");
  assert_string_equal(json_string_value(json_object_get(j, "big")), "18446744073709551615");
  assert_int_equal(json_integer_value(json_object_get(j, "neg")), -5);
  json_decref(j);
  msgpack_zone_destroy(&zone);
  msgpack_sbuffer_destroy(&sb);
}

static void test_format_time(void **state) {
  (void)state;
  char s[40];
  fy_admin_format_time(NOW, 0, s, sizeof(s));
  assert_string_equal(s, "-");
  fy_admin_format_time(NOW, NOW - 1000, s, sizeof(s));
  assert_string_equal(s, "just now");
  fy_admin_format_time(NOW, NOW - 45ull * 1000, s, sizeof(s));
  assert_string_equal(s, "45s ago");
  fy_admin_format_time(NOW, NOW - 3ull * 60 * 1000 - 59ull * 1000, s, sizeof(s));
  assert_string_equal(s, "3m ago");
  fy_admin_format_time(NOW, NOW + 2ull * 86400 * 1000, s, sizeof(s));
  assert_string_equal(s, "in 2d");
  /* Beyond a week: ISO 8601 UTC. 1800000000 s is 2027-01-15T08:00:00Z. */
  fy_admin_format_time(NOW + 30ull * 86400 * 1000, NOW, s, sizeof(s));
  assert_string_equal(s, "2027-01-15T08:00:00Z");
}

/* ---- command building (admin_cmd) ------------------------------------------------ */

static void test_next_seq(void **state) {
  (void)state;
  /* The clock (µs) when it is ahead; one more than the last when it is not
   * (a clock stepped back, or two commands in the same µs). */
  assert_int_equal(fy_admin_next_seq(0, 1800000000000000ull), 1800000000000000ull);
  assert_int_equal(fy_admin_next_seq(1800000000000000ull, 1800000000000000ull), 1800000000000001ull);
  assert_int_equal(fy_admin_next_seq(1900000000000000ull, 1800000000000000ull), 1900000000000001ull);
}

static void test_cmd_seal_roundtrip(void **state) {
  (void)state;
  struct fy_err err = {0};
  assert_int_equal(fy_crypto_init(&err), 0);
  uint8_t seed[32];
  for (int i = 0; i < 32; i++)
    seed[i] = (uint8_t)i;
  struct fy_key key = {0};
  assert_int_equal(fy_key_from_seed(&key, seed, &err), 0);
  struct fy_nodeid coord, agent;
  memset(coord.key, 0xc0, 32);
  memset(agent.key, 0x3f, 32);
  struct fy_labels labels;
  assert_int_equal(fy_labels_parse("site=berlin", &labels, &err), 0);
  struct fy_buf args = FY_BUF_INIT, env = FY_BUF_INIT;
  assert_int_equal(fy_admin_args_agent(&agent, &labels, &args, &err), 0);
  struct fy_admin_cmd c = {
      .key = &key,
      .coordinator = coord,
      .seq = 1800000000000001ull,
      .now_ms = NOW,
      .ttl_ms = 24ull * 3600 * 1000,
      .tenant = "lab",
      .cmd = "agents.approve",
      .args = args.data,
      .args_len = args.len,
  };
  uint8_t id[32], want[32];
  assert_int_equal(fy_admin_cmd_seal(&c, &env, id, &err), 0);
  fy_envelope_id(env.data, env.len, want);
  assert_memory_equal(id, want, 32);

  /* What the coordinator does with it: every stateless check passes. */
  struct fy_envelope e;
  struct fy_cmd_body b;
  assert_int_equal(fy_cmd_check(env.data, env.len, &coord, NOW + 1000, &e, &b, &err), FY_CMD_OK);
  assert_true(fy_nodeid_equal(&e.signer, &key.id));
  assert_true(fy_nodeid_equal(&b.issuer, &key.id));
  assert_true(fy_nodeid_equal(&b.coordinator, &coord));
  assert_int_equal(b.seq, 1800000000000001ull);
  assert_int_equal(b.issued_at, NOW);
  assert_int_equal(b.expires_at, NOW + 24ull * 3600 * 1000);
  assert_string_equal(b.tenant, "lab");
  assert_string_equal(b.cmd, "agents.approve");
  assert_int_equal(b.args_len, args.len);
  assert_memory_equal(b.args, args.data, args.len);

  /* The args: {id bin32, labels map}. */
  msgpack_zone zone;
  msgpack_object o;
  assert_int_equal(fy_admin_reply_unpack(b.args, b.args_len, "args", &zone, &o, &err), 0);
  const msgpack_object *ido = fy_admin_map_get(&o, "id");
  assert_non_null(ido);
  assert_int_equal(ido->type, MSGPACK_OBJECT_BIN);
  assert_int_equal(ido->via.bin.size, 32);
  assert_memory_equal(ido->via.bin.ptr, agent.key, 32);
  struct fy_labels back;
  assert_int_equal(fy_labels_unpack(fy_admin_map_get(&o, "labels"), &back, &err), 0);
  assert_string_equal(fy_labels_get(&back, "site"), "berlin");
  msgpack_zone_destroy(&zone);

  /* Another coordinator refuses it; so does anyone after expiry. */
  struct fy_nodeid other;
  memset(other.key, 0x01, 32);
  assert_int_equal(fy_cmd_check(env.data, env.len, &other, NOW, &e, &b, &err), FY_CMD_WRONG_COORDINATOR);
  assert_int_equal(fy_cmd_check(env.data, env.len, &coord, NOW + 25ull * 3600 * 1000, &e, &b, &err),
                   FY_CMD_EXPIRED);

  /* A bad command name fails at encoding, naming the field. */
  c.cmd = "Agents Approve";
  fy_err_clear(&err);
  size_t before = env.len;
  assert_int_equal(fy_admin_cmd_seal(&c, &env, id, &err), FY_EINVAL);
  assert_int_equal(env.len, before);
  assert_contains(err.msg, "cmd");
  fy_buf_free(&args);
  fy_buf_free(&env);
  fy_key_free(&key);
}

static void test_args_enroll(void **state) {
  (void)state;
  struct fy_err err = {0};
  struct fy_buf b = FY_BUF_INIT;
  uint8_t hash[32];
  memset(hash, 0x5a, sizeof(hash));
  struct fy_labels labels = {0};
  assert_int_equal(fy_admin_args_enroll_create(hash, &labels, NOW + 3600ull * 1000, 3, &b, &err), 0);
  msgpack_zone zone;
  msgpack_object o;
  assert_int_equal(fy_admin_reply_unpack(b.data, b.len, "args", &zone, &o, &err), 0);
  assert_int_equal(fy_admin_map_get(&o, "hash")->via.bin.size, 32);
  assert_int_equal(fy_admin_map_get(&o, "expires")->via.u64, NOW + 3600ull * 1000);
  assert_int_equal(fy_admin_map_get(&o, "uses")->via.u64, 3);
  assert_int_equal(fy_admin_map_get(&o, "labels")->via.map.size, 0);
  msgpack_zone_destroy(&zone);
  fy_buf_free(&b);

  assert_int_equal(fy_admin_args_enroll_revoke("0123456789abcdef", &b, &err), 0);
  fy_buf_free(&b);
  assert_int_equal(fy_admin_args_enroll_revoke("0123456789ABCDEF", &b, &err), FY_EINVAL);
  assert_string_equal(err.msg, "ticket id '0123456789ABCDEF' is not 16 lowercase hex digits");
  assert_int_equal(fy_admin_args_enroll_revoke("0123", &b, &err), FY_EINVAL);
  assert_int_equal(b.len, 0);

  /* Queries: {q, id: str} and {q: result, id: bin32}. */
  assert_int_equal(fy_admin_query_encode("agent", "id", "3f2a", &b, &err), 0);
  assert_int_equal(fy_admin_reply_unpack(b.data, b.len, "query", &zone, &o, &err), 0);
  assert_int_equal(fy_admin_map_get(&o, "id")->type, MSGPACK_OBJECT_STR);
  msgpack_zone_destroy(&zone);
  fy_buf_free(&b);
  assert_int_equal(fy_admin_query_bin("result", "id", hash, &b, &err), 0);
  assert_int_equal(fy_admin_reply_unpack(b.data, b.len, "query", &zone, &o, &err), 0);
  assert_int_equal(fy_admin_map_get(&o, "id")->via.bin.size, 32);
  msgpack_zone_destroy(&zone);
  fy_buf_free(&b);
}

/* ---- rollouts ------------------------------------------------------------------- */

static void pk_rollout(msgpack_packer *pk, const char *id, const char *state, uint64_t wave, uint64_t nwaves,
                       const char *reason) {
  msgpack_pack_map(pk, 13);
  pk_str(pk, "id");
  pk_str(pk, id);
  pk_str(pk, "tenant");
  pk_str(pk, "lab");
  pk_str(pk, "name");
  pk_str(pk, "web");
  pk_str(pk, "version");
  pk_str(pk, "1.2.0");
  pk_str(pk, "selector");
  msgpack_pack_map(pk, 1);
  pk_str(pk, "role");
  pk_str(pk, "kiosk");
  pk_str(pk, "channel");
  pk_str(pk, "stable");
  pk_str(pk, "waves");
  pk_str(pk, "10,50,100");
  pk_str(pk, "policy");
  msgpack_pack_map(pk, 6);
  pk_str(pk, "grace_ms");
  msgpack_pack_uint64(pk, 30000);
  pk_str(pk, "min_success_permille");
  msgpack_pack_uint64(pk, 995);
  pk_str(pk, "max_failures");
  msgpack_pack_uint64(pk, 1);
  pk_str(pk, "skip_offline");
  msgpack_pack_true(pk);
  pk_str(pk, "abort_on_zero");
  msgpack_pack_false(pk);
  pk_str(pk, "action_timeout_ms");
  msgpack_pack_uint64(pk, 600000);
  pk_str(pk, "state");
  pk_str(pk, state);
  pk_str(pk, "wave");
  msgpack_pack_uint64(pk, wave);
  pk_str(pk, "nwaves");
  msgpack_pack_uint64(pk, nwaves);
  pk_str(pk, "created");
  msgpack_pack_uint64(pk, NOW - 5ull * 60 * 1000);
  pk_str(pk, "reason");
  pk_str(pk, reason);
}

#define NIL_WAVE UINT64_MAX /* skipped when the rollout started: in no wave */

static void pk_target(msgpack_packer *pk, uint8_t idbyte, uint64_t wave, const char *state, const char *msg,
                      size_t idlen) {
  uint8_t id[32];
  memset(id, idbyte, sizeof(id));
  msgpack_pack_map(pk, 5);
  pk_str(pk, "agent");
  pk_bin(pk, id, idlen);
  pk_str(pk, "wave");
  if (wave == NIL_WAVE)
    msgpack_pack_nil(pk);
  else
    msgpack_pack_uint64(pk, wave);
  pk_str(pk, "state");
  pk_str(pk, state);
  pk_str(pk, "at");
  msgpack_pack_uint64(pk, NOW - 1000);
  pk_str(pk, "msg");
  pk_str(pk, msg);
}

/* A rollout in its second of three waves: wave 1 done (1 agent), wave 2 with
 * 3 successes and a rollback among 4, wave 3 waiting (1 agent). The targets
 * come by agent id, not by wave, as the coordinator lists them. */
static void rollout_reply(msgpack_sbuffer *sb, const char *state, size_t bad_idlen) {
  msgpack_sbuffer_init(sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
  msgpack_pack_map(&pk, 2);
  pk_str(&pk, "rollout");
  pk_rollout(&pk, "web-1.2.0-ab12", state, 1, 3, "");
  pk_str(&pk, "targets");
  msgpack_pack_array(&pk, 7);
  pk_target(&pk, 0x11, 1, "success", "success", 32);
  pk_target(&pk, 0x1a, NIL_WAVE, "skipped", "pinned", 32);
  pk_target(&pk, 0x22, 0, "success", "success", 32);
  pk_target(&pk, 0x33, 1, "rolled_back", "rolled_back: health check failed", bad_idlen);
  pk_target(&pk, 0x44, 1, "success", "", 32);
  pk_target(&pk, 0x55, 2, "waiting", "", 32);
  pk_target(&pk, 0x66, 1, "success", "success", 32);
}

static void test_rollouts_table(void **state) {
  (void)state;
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  msgpack_pack_map(&pk, 1);
  pk_str(&pk, "rollouts");
  msgpack_pack_array(&pk, 2);
  pk_rollout(&pk, "web-1.2.0-ab12", "running", 1, 3, "");
  pk_rollout(&pk, "r2", "failed", 0, 2, "wave 1: 2 failures, more than the 1 allowed");
  struct out o;
  out_open(&o, false);
  struct fy_err err = {0};
  assert_int_equal(fy_admin_view_rollouts(&o.v, (const uint8_t *)sb.data, sb.size, &err), 0);
  out_close(&o);
  assert_string_equal(o.buf,
                      "ID              TENANT  ARTIFACT   STATE    WAVE  REASON\n"
                      "web-1.2.0-ab12  lab     web@1.2.0  running  2/3   -\n"
                      "r2              lab     web@1.2.0  failed   1/2   wave 1: 2 failures, more than the 1 "
                      "allowed\n");
  out_free(&o);

  /* JSON: the reply as is. */
  out_open(&o, true);
  assert_int_equal(fy_admin_view_rollouts(&o.v, (const uint8_t *)sb.data, sb.size, &err), 0);
  out_close(&o);
  json_error_t je;
  json_t *j = json_loads(o.buf, 0, &je);
  assert_non_null(j);
  assert_string_equal(
      json_string_value(json_object_get(json_array_get(json_object_get(j, "rollouts"), 1), "state")),
      "failed");
  json_decref(j);
  out_free(&o);
  msgpack_sbuffer_destroy(&sb);

  /* Empty list. */
  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  msgpack_pack_map(&pk, 1);
  pk_str(&pk, "rollouts");
  msgpack_pack_array(&pk, 0);
  out_open(&o, false);
  assert_int_equal(fy_admin_view_rollouts(&o.v, (const uint8_t *)sb.data, sb.size, &err), 0);
  out_close(&o);
  assert_string_equal(o.buf, "no rollouts\n");
  out_free(&o);
  msgpack_sbuffer_destroy(&sb);
}

static void test_rollout_show(void **state) {
  (void)state;
  msgpack_sbuffer sb;
  rollout_reply(&sb, "running", 32);
  struct out o;
  out_open(&o, false);
  struct fy_err err = {0};
  assert_int_equal(fy_admin_view_rollout(&o.v, (const uint8_t *)sb.data, sb.size, &err), 0);
  out_close(&o);
  assert_string_equal(o.buf, "id:        web-1.2.0-ab12\n"
                             "tenant:    lab\n"
                             "artifact:  web 1.2.0\n"
                             "selector:  role=kiosk\n"
                             "channel:   stable\n"
                             "waves:     10,50,100\n"
                             "policy:    grace 30s, min success 99.5%, max failures 1, skip offline agents, "
                             "complete when no agent is eligible, action timeout 10m\n"
                             "state:     running\n"
                             "wave:      2/3\n"
                             "created:   5m ago\n"
                             "reason:    -\n"
                             "\n"
                             "wave 1/3: 1 agent: 1 success\n"
                             "  222222222222  success      success\n"
                             "\n"
                             "wave 2/3: 4 agents: 3 success, 1 rolled_back\n"
                             "  111111111111  success      success\n"
                             "  333333333333  rolled_back  rolled_back: health check failed\n"
                             "  444444444444  success\n"
                             "  666666666666  success      success\n"
                             "\n"
                             "wave 3/3: 1 agent: 1 waiting\n"
                             "  555555555555  waiting\n"
                             "\n"
                             "not in any wave: 1 agent: 1 skipped\n"
                             "  1a1a1a1a1a1a  skipped      pinned\n");
  out_free(&o);
  msgpack_sbuffer_destroy(&sb);

  /* A malformed target: the field is named, nothing is printed. */
  rollout_reply(&sb, "running", 31);
  out_open(&o, false);
  assert_int_equal(fy_admin_view_rollout(&o.v, (const uint8_t *)sb.data, sb.size, &err), FY_EINVAL);
  out_close(&o);
  assert_string_equal(err.msg, "rollout reply: targets[3]: agent is not bin 32");
  assert_int_equal(o.len, 0);
  struct fy_admin_rollout r;
  assert_int_equal(fy_admin_rollout_read((const uint8_t *)sb.data, sb.size, &r, &err), FY_EINVAL);
  out_free(&o);
  msgpack_sbuffer_destroy(&sb);

  /* A draft has no waves yet. */
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  msgpack_pack_map(&pk, 2);
  pk_str(&pk, "rollout");
  pk_rollout(&pk, "r1", "draft", 0, 0, "");
  pk_str(&pk, "targets");
  msgpack_pack_array(&pk, 0);
  out_open(&o, false);
  assert_int_equal(fy_admin_view_rollout(&o.v, (const uint8_t *)sb.data, sb.size, &err), 0);
  out_close(&o);
  assert_contains(o.buf, "wave:      -\n");
  assert_contains(o.buf, "\nno agents yet: they are chosen when the rollout starts\n");
  out_free(&o);
  msgpack_sbuffer_destroy(&sb);

  /* An unknown rollout state is refused by the watcher's reader. */
  rollout_reply(&sb, "exploded", 32);
  assert_int_equal(fy_admin_rollout_read((const uint8_t *)sb.data, sb.size, &r, &err), FY_EINVAL);
  assert_string_equal(err.msg, "rollout reply: rollout: state 'exploded' is unknown");
  msgpack_sbuffer_destroy(&sb);
}

static void test_rollout_progress(void **state) {
  (void)state;
  char line[256];
  struct fy_wave_counts c = {.total = 4, .success = 3, .failed = 1};
  fy_admin_progress_line(&c, 0, 3, line, sizeof(line));
  assert_string_equal(line, "wave 1/3 [#########---] 3/4 ok 1 failed");
  c = (struct fy_wave_counts){
      .total = 6, .success = 1, .rolled_back = 1, .timed_out = 1, .skipped = 1, .sent = 1, .working = 1};
  fy_admin_progress_line(&c, 1, 2, line, sizeof(line));
  assert_string_equal(line, "wave 2/2 [##----------] 1/6 ok 2 failed 1 skipped 2 in progress");
  c = (struct fy_wave_counts){.total = 2, .waiting = 2};
  fy_admin_progress_line(&c, 2, 3, line, sizeof(line));
  assert_string_equal(line, "wave 3/3 [------------] 0/2 ok 2 waiting");
  c = (struct fy_wave_counts){0};
  fy_admin_progress_line(&c, 0, 1, line, sizeof(line));
  assert_string_equal(line, "wave 1/1 [------------] 0/0 ok");

  /* From a reply: per-wave counts, the one-line summary and the frame. */
  msgpack_sbuffer sb;
  rollout_reply(&sb, "running", 32);
  struct fy_admin_rollout r;
  struct fy_err err = {0};
  assert_int_equal(fy_admin_rollout_read((const uint8_t *)sb.data, sb.size, &r, &err), 0);
  assert_false(r.final);
  assert_int_equal(r.wave, 1);
  assert_int_equal(r.nwaves, 3);
  assert_int_equal(r.waves[1].total, 4);
  assert_int_equal(r.waves[1].rolled_back, 1);
  fy_admin_rollout_summary(&r, line, sizeof(line));
  assert_string_equal(line, "rollout web-1.2.0-ab12: running, wave 2/3: 3/4 ok 1 failed");
  char lines[8][FY_ADMIN_FRAME_LINE_MAX];
  assert_int_equal(fy_admin_rollout_frame(&r, lines, 8), 4);
  assert_string_equal(lines[0], "rollout web-1.2.0-ab12 (web 1.2.0): running");
  assert_string_equal(lines[1], "wave 1/3 [############] 1/1 ok");
  assert_string_equal(lines[2], "wave 2/3 [#########---] 3/4 ok 1 failed");
  assert_string_equal(lines[3], "wave 3/3 [------------] 0/1 ok 1 waiting");
  msgpack_sbuffer_destroy(&sb);

  rollout_reply(&sb, "partial", 32);
  assert_int_equal(fy_admin_rollout_read((const uint8_t *)sb.data, sb.size, &r, &err), 0);
  assert_true(r.final);
  assert_int_equal(r.st, FY_ROLLOUT_PARTIAL);
  snprintf(r.reason, sizeof(r.reason), "wave 3: done");
  fy_admin_rollout_summary(&r, line, sizeof(line));
  assert_string_equal(line, "rollout web-1.2.0-ab12: partial, wave 2/3: 3/4 ok 1 failed (wave 3: done)");
  assert_int_equal(fy_admin_rollout_frame(&r, lines, 8), 5);
  assert_string_equal(lines[4], "reason: wave 3: done");
  msgpack_sbuffer_destroy(&sb);
}

static void test_rollout_args(void **state) {
  (void)state;
  /* The default id: name-version-hex, lowercased, other bytes as '-'. */
  char id[FY_ADMIN_ROLLOUT_ID_MAX + 1];
  const uint8_t rnd[2] = {0xab, 0x12};
  fy_admin_rollout_default_id("web", "1.2.0", rnd, id);
  assert_string_equal(id, "web-1.2.0-ab12");
  fy_admin_rollout_default_id("Web", "V2.0.0+Build/5", rnd, id);
  assert_string_equal(id, "web-v2.0.0-build-5-ab12");
  assert_true(fy_admin_rollout_id_ok(id));
  fy_admin_rollout_default_id("a-very-long-artifact-name-indeed", "10.20.30-rc.1", rnd, id);
  assert_int_equal(strlen(id), FY_ADMIN_ROLLOUT_ID_MAX);
  assert_string_equal(id, "a-very-long-artifact-name-i-ab12");
  assert_true(fy_admin_rollout_id_ok(id));
  assert_false(fy_admin_rollout_id_ok(""));
  assert_false(fy_admin_rollout_id_ok("Web"));
  assert_false(fy_admin_rollout_id_ok("a-very-long-artifact-name-indeed-x"));

  struct fy_err err = {0};
  char name[64], version[64];
  assert_int_equal(
      fy_admin_artifact_ref_parse("web@1.2.0+b1", name, sizeof(name), version, sizeof(version), &err), 0);
  assert_string_equal(name, "web");
  assert_string_equal(version, "1.2.0+b1");
  assert_int_equal(fy_admin_artifact_ref_parse("web", name, sizeof(name), version, sizeof(version), &err),
                   FY_EINVAL);
  assert_string_equal(err.msg, "artifact 'web' is not NAME@VERSION");
  assert_int_equal(fy_admin_artifact_ref_parse("@1.0", name, sizeof(name), version, sizeof(version), &err),
                   FY_EINVAL);

  uint32_t pm = 0;
  assert_int_equal(fy_admin_percent_parse("100%", &pm, &err), 0);
  assert_int_equal(pm, 1000);
  assert_int_equal(fy_admin_percent_parse("99.5%", &pm, &err), 0);
  assert_int_equal(pm, 995);
  assert_int_equal(fy_admin_percent_parse("80", &pm, &err), 0);
  assert_int_equal(pm, 800);
  assert_int_equal(fy_admin_percent_parse("101%", &pm, &err), FY_EINVAL);
  assert_contains(err.msg, "'101%' is not a percentage");
  assert_int_equal(fy_admin_percent_parse("%", &pm, &err), FY_EINVAL);
  assert_int_equal(fy_admin_percent_parse("50.55%", &pm, &err), FY_EINVAL);

  /* rollout.create args as proto/rollout.md has them. */
  struct fy_labels sel = {0};
  assert_int_equal(fy_labels_parse("role=kiosk", &sel, &err), 0);
  struct fy_admin_rollout_args ra = {
      .id = "r1", .name = "web", .version = "1.2.0", .selector = &sel, .waves = "10,50,100"};
  fy_rollout_policy_default(&ra.policy);
  ra.policy.grace_ms = 30000;
  ra.policy.max_failures = UINT32_MAX;
  struct fy_buf b = FY_BUF_INIT;
  assert_int_equal(fy_admin_args_rollout_create(&ra, &b, &err), 0);
  msgpack_zone zone;
  msgpack_object o;
  assert_int_equal(fy_admin_reply_unpack(b.data, b.len, "args", &zone, &o, &err), 0);
  assert_int_equal(o.via.map.size, 7);
  assert_memory_equal(fy_admin_map_get(&o, "id")->via.str.ptr, "r1", 2);
  assert_memory_equal(fy_admin_map_get(&o, "waves")->via.str.ptr, "10,50,100", 9);
  assert_int_equal(fy_admin_map_get(&o, "channel")->via.str.size, 0);
  assert_int_equal(fy_admin_map_get(&o, "selector")->via.map.size, 1);
  const msgpack_object *pol = fy_admin_map_get(&o, "policy");
  assert_int_equal(fy_admin_map_get(pol, "grace_ms")->via.u64, 30000);
  assert_int_equal(fy_admin_map_get(pol, "min_success_permille")->via.u64, 1000);
  assert_int_equal(fy_admin_map_get(pol, "max_failures")->via.u64, UINT32_MAX);
  assert_true(fy_admin_map_get(pol, "skip_offline")->via.boolean);
  assert_true(fy_admin_map_get(pol, "abort_on_zero")->via.boolean);
  assert_int_equal(fy_admin_map_get(pol, "action_timeout_ms")->via.u64, 600000);
  msgpack_zone_destroy(&zone);
  fy_buf_free(&b);

  ra.waves = "50,10";
  assert_int_equal(fy_admin_args_rollout_create(&ra, &b, &err), FY_EINVAL);
  assert_int_equal(b.len, 0);
  ra.waves = "3";
  ra.id = "Bad Id";
  assert_int_equal(fy_admin_args_rollout_create(&ra, &b, &err), FY_EINVAL);
  assert_string_equal(err.msg, "rollout id 'Bad Id' must be 1..32 of [a-z0-9._-]");
  assert_int_equal(fy_admin_args_rollout_id("r1", &b, &err), 0);
  assert_int_equal(fy_admin_reply_unpack(b.data, b.len, "args", &zone, &o, &err), 0);
  assert_int_equal(o.via.map.size, 1);
  msgpack_zone_destroy(&zone);
  fy_buf_free(&b);
  assert_int_equal(fy_admin_args_rollout_id("", &b, &err), FY_EINVAL);

  uint8_t env[3] = {1, 2, 3};
  assert_int_equal(fy_admin_args_artifact_add(env, sizeof(env), &b, &err), 0);
  assert_int_equal(fy_admin_reply_unpack(b.data, b.len, "args", &zone, &o, &err), 0);
  assert_int_equal(fy_admin_map_get(&o, "manifest")->via.bin.size, 3);
  msgpack_zone_destroy(&zone);
  fy_buf_free(&b);
}

static void test_file_sha256(void **state) {
  (void)state;
  char path[] = "/tmp/test_admin_view.XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  /* More than one read chunk: the hash is streamed. */
  static uint8_t data[200000];
  for (size_t i = 0; i < sizeof(data); i++)
    data[i] = (uint8_t)(i * 7);
  assert_int_equal(write(fd, data, sizeof(data)), (ssize_t)sizeof(data));
  close(fd);
  uint8_t got[32], want[32];
  uint64_t size = 0;
  struct fy_err err = {0};
  assert_int_equal(fy_admin_file_sha256(path, got, &size, &err), 0);
  crypto_hash_sha256(want, data, sizeof(data));
  assert_memory_equal(got, want, 32);
  assert_int_equal(size, sizeof(data));
  unlink(path);
  assert_int_equal(fy_admin_file_sha256(path, got, &size, &err), FY_ENOENT);
  assert_contains(err.msg, path);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_agents_table),
      cmocka_unit_test(test_agents_json),
      cmocka_unit_test(test_agents_bad_id),
      cmocka_unit_test(test_truncated_and_hostile),
      cmocka_unit_test(test_status_unreachable),
      cmocka_unit_test(test_status_reachable),
      cmocka_unit_test(test_result),
      cmocka_unit_test(test_agent_show),
      cmocka_unit_test(test_admins_and_tickets),
      cmocka_unit_test(test_json_conversion),
      cmocka_unit_test(test_format_time),
      cmocka_unit_test(test_next_seq),
      cmocka_unit_test(test_cmd_seal_roundtrip),
      cmocka_unit_test(test_args_enroll),
      cmocka_unit_test(test_rollouts_table),
      cmocka_unit_test(test_rollout_show),
      cmocka_unit_test(test_rollout_progress),
      cmocka_unit_test(test_rollout_args),
      cmocka_unit_test(test_file_sha256),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
