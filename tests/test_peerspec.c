/* Peer address specs: parse / format round trips, every refusal with its
 * code and the part it names, and resolving numeric addresses and names. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "base/cleanup.h"
#include "node/peerspec.h"

#define ID "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"

static void round_trips(void **state) {
  (void)state;
  const char *specs[] = {
      ID "@127.0.0.1:4433",
      ID "@[::1]:4433",
      ID "@coord.example.net:4433",
      ID "@10.0.0.1:1,[fd00::1]:65535,coord-1.example.net:4433",
      ID "@a:1,b:2,c:3,d:4,e:5,f:6,g:7,h:8",
      ID "@[fe80::1%lo]:4433",
  };
  for (size_t i = 0; i < FY_ARRAY_LEN(specs); i++) {
    struct fy_peerspec p;
    struct fy_err err = {0};
    if (fy_peerspec_parse(specs[i], &p, &err) != 0)
      fail_msg("%s: %s", specs[i], err.msg);
    char out[4096];
    fy_peerspec_format(&p, out, sizeof(out));
    assert_string_equal(out, specs[i]);
    struct fy_peerspec again;
    assert_int_equal(fy_peerspec_parse(out, &again, &err), 0);
    assert_memory_equal(&again, &p, sizeof(p));
  }
  struct fy_peerspec p;
  assert_int_equal(fy_peerspec_parse(ID "@10.0.0.1:1,[fd00::1]:65535,h:9", &p, NULL), 0);
  assert_int_equal(p.naddrs, 3);
  assert_string_equal(p.addrs[0], "10.0.0.1:1");
  assert_string_equal(p.addrs[1], "[fd00::1]:65535");
  assert_string_equal(p.addrs[2], "h:9");
  assert_int_equal(p.id.key[0], 0x03);
  assert_int_equal(p.id.key[31], 0xb8);
  /* Upper-case hex is the same id; the canonical form is lower case. */
  char upper[200];
  snprintf(upper, sizeof(upper), "%s", ID "@h:1");
  for (char *c = upper; *c != '@'; c++)
    if (*c >= 'a' && *c <= 'f')
      *c = (char)(*c - 'a' + 'A');
  assert_int_equal(fy_peerspec_parse(upper, &p, NULL), 0);
  char out[200];
  fy_peerspec_format(&p, out, sizeof(out));
  assert_string_equal(out, ID "@h:1");
  /* Cut to size, always terminated. */
  char small[20];
  fy_peerspec_format(&p, small, sizeof(small));
  assert_int_equal(strlen(small), sizeof(small) - 1);
  assert_memory_equal(small, ID, sizeof(small) - 1);
}

struct bad {
  const char *text;
  int code;
  const char *msg; /* a substring of the message */
};

static void refusals(void **state) {
  (void)state;
  char long_addr[400];
  snprintf(long_addr, sizeof(long_addr), "%s@%0300d:1", ID, 0);
  const struct bad cases[] = {
      {"", FY_EINVAL, "no '@'"},
      {ID, FY_EINVAL, "no '@'"},
      {"@1.2.3.4:1", FY_EINVAL, "no node id before '@'"},
      {"abc@1.2.3.4:1", FY_EINVAL, "node id"},
      {ID "00@1.2.3.4:1", FY_EINVAL, "66 characters"},
      {"03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531bx@1.2.3.4:1", FY_EINVAL, "node id"},
      {ID "@", FY_EINVAL, "no address after '@'"},
      {ID "@1.2.3.4:1,", FY_EINVAL, "address 2 is empty"},
      {ID "@,1.2.3.4:1", FY_EINVAL, "address 1 is empty"},
      {ID "@1.2.3.4", FY_EINVAL, "address 1: address \"1.2.3.4\" has no port"},
      {ID "@1.2.3.4:", FY_EINVAL, "port \"\" is not a number from 1 to 65535"},
      {ID "@1.2.3.4:0", FY_EINVAL, "port \"0\""},
      {ID "@1.2.3.4:65536", FY_EINVAL, "port \"65536\""},
      {ID "@1.2.3.4:44x", FY_EINVAL, "port \"44x\""},
      {ID "@1.2.3.4:-1", FY_EINVAL, "port \"-1\""},
      {ID "@:4433", FY_EINVAL, "has no host"},
      {ID "@1.2.3.400:4433", FY_EINVAL, "not a numeric IPv4 address"},
      {ID "@fd00::1:4433", FY_EINVAL, "needs brackets"},
      {ID "@[fd00::1:4433", FY_EINVAL, "without a closing ']'"},
      {ID "@[fd00::1]4433", FY_EINVAL, "expected ':port' after ']'"},
      {ID "@[fd00::zz]:4433", FY_EINVAL, "not a numeric IPv6 address"},
      {ID "@[]:4433", FY_EINVAL, "has no host"},
      {ID "@bad host:4433", FY_EINVAL, "bad character at 3"},
      {ID "@bad/host:4433", FY_EINVAL, "bad character at 3"},
      {ID "@-host:4433", FY_EINVAL, "is not a host name"},
      {ID "@h:1,1.2.3.4", FY_EINVAL, "address 2:"},
      {ID "@a:1,b:2,c:3,d:4,e:5,f:6,g:7,h:8,i:9", FY_ELIMIT, "more than 8 addresses"},
      {long_addr, FY_ELIMIT, "address 1 is longer than 255 characters"},
  };
  for (size_t i = 0; i < FY_ARRAY_LEN(cases); i++) {
    struct fy_peerspec p;
    struct fy_err err = {0};
    int rc = fy_peerspec_parse(cases[i].text, &p, &err);
    if (rc != cases[i].code || !strstr(err.msg, cases[i].msg))
      fail_msg("\"%.100s\": got %d \"%s\", want %d with \"%s\"", cases[i].text, rc, err.msg, cases[i].code,
               cases[i].msg);
    assert_int_equal(p.naddrs, 0); /* nothing half-parsed */
    if (cases[i].text[0] == '0')
      assert_non_null(strstr(err.msg, "peer \""));
  }
  struct fy_peerspec p;
  struct fy_err err = {0};
  assert_int_equal(fy_peerspec_parse(NULL, &p, &err), FY_EINVAL);
  assert_non_null(strstr(err.msg, "nothing given"));
}

static void resolves_numeric_and_names(void **state) {
  (void)state;
  struct sockaddr_storage sa;
  struct fy_err err = {0};
  assert_int_equal(fy_addr_resolve("127.0.0.1:4433", &sa, &err), 0);
  assert_int_equal(sa.ss_family, AF_INET);
  assert_int_equal(ntohs(((struct sockaddr_in *)&sa)->sin_port), 4433);
  char text[64];
  fy_addr_format((struct sockaddr *)&sa, text, sizeof(text));
  assert_string_equal(text, "127.0.0.1:4433");

  assert_int_equal(fy_addr_resolve("[fd00::1]:9", &sa, &err), 0);
  assert_int_equal(sa.ss_family, AF_INET6);
  fy_addr_format((struct sockaddr *)&sa, text, sizeof(text));
  assert_string_equal(text, "[fd00::1]:9");
  char tiny[6];
  fy_addr_format((struct sockaddr *)&sa, tiny, sizeof(tiny));
  assert_string_equal(tiny, "[fd00");

  /* A name goes through the resolver; localhost is in every hosts file. */
  if (fy_addr_resolve("localhost:4433", &sa, &err) != 0)
    fail_msg("localhost: %s", err.msg);
  assert_true(sa.ss_family == AF_INET || sa.ss_family == AF_INET6);
  fy_addr_format((struct sockaddr *)&sa, text, sizeof(text));
  assert_non_null(strstr(text, ":4433"));

  /* .invalid never resolves (RFC 6761). */
  int rc = fy_addr_resolve("nowhere.invalid:4433", &sa, &err);
  assert_true(rc == FY_ENOENT || rc == FY_EIO);
  assert_non_null(strstr(err.msg, "cannot resolve \"nowhere.invalid\""));

  assert_int_equal(fy_addr_resolve("1.2.3.4", &sa, &err), FY_EINVAL);
  assert_non_null(strstr(err.msg, "has no port"));
  assert_int_equal(fy_addr_resolve(NULL, &sa, &err), FY_EINVAL);
}

static void resolves_lists_skipping_failures(void **state) {
  (void)state;
  char texts[4][FY_PEER_ADDR_TEXT_MAX] = {"nowhere.invalid:1", "127.0.0.1:1", "1.2.3.4", "[::1]:2"};
  struct sockaddr_storage out[4];
  struct fy_err err = {0};
  assert_int_equal(fy_addrs_resolve(texts, 4, out, &err), 2);
  assert_int_equal(out[0].ss_family, AF_INET);
  assert_int_equal(out[1].ss_family, AF_INET6);
  assert_int_equal(fy_addrs_resolve(texts, 1, out, &err), FY_ENOENT);
  assert_non_null(strstr(err.msg, "none of 1 addresses resolves"));
  assert_non_null(strstr(err.msg, "nowhere.invalid"));
  assert_int_equal(fy_addrs_resolve(texts, 0, out, &err), FY_ENOENT);
  /* A parsed spec feeds the resolver as it is. */
  struct fy_peerspec p;
  assert_int_equal(fy_peerspec_parse(ID "@127.0.0.1:7,[::1]:8", &p, &err), 0);
  assert_int_equal(fy_addrs_resolve(p.addrs, p.naddrs, out, &err), 2);
  assert_int_equal(ntohs(((struct sockaddr_in6 *)&out[1])->sin6_port), 8);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(round_trips),
      cmocka_unit_test(refusals),
      cmocka_unit_test(resolves_numeric_and_names),
      cmocka_unit_test(resolves_lists_skipping_failures),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
