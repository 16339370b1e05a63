#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/err.h"
#include "base/log.h"

/* A logger writing to memory; fy_log_init sees no journal (fmemopen/open_memstream
 * streams have no file descriptor). */
struct capture {
  char *buf;
  size_t len;
  FILE *f;
  struct fy_log lg;
};

static void capture_open(struct capture *c, enum fy_log_level min, const char *applet) {
  c->buf = NULL;
  c->len = 0;
  c->f = open_memstream(&c->buf, &c->len);
  assert_non_null(c->f);
  fy_log_init(&c->lg, c->f, min, applet, NULL);
  c->lg.timestamps = false;
}

static void capture_close(struct capture *c) {
  fclose(c->f);
  free(c->buf);
}

static void level_filtering(void **state) {
  (void)state;
  struct capture c;
  capture_open(&c, FY_LOG_WARN, NULL);
  fy_debug(&c.lg, "d");
  fy_info(&c.lg, "i");
  fy_warn(&c.lg, "w");
  fy_error(&c.lg, "e");
  assert_string_equal(c.buf, "level=warn event=w\nlevel=error event=e\n");
  capture_close(&c);

  capture_open(&c, FY_LOG_DEBUG, NULL);
  fy_debug(&c.lg, "d");
  assert_string_equal(c.buf, "level=debug event=d\n");
  capture_close(&c);
}

static void exact_line_format(void **state) {
  (void)state;
  struct capture c;
  capture_open(&c, FY_LOG_INFO, "agent");
  fy_info(&c.lg, "dial.ok", "peer", "ab12", "attempt", "3");
  assert_string_equal(c.buf, "level=info applet=agent event=dial.ok peer=ab12 attempt=3\n");
  capture_close(&c);
}

static void null_and_empty_values(void **state) {
  (void)state;
  struct capture c;
  capture_open(&c, FY_LOG_INFO, NULL);
  fy_info(&c.lg, "x", "a", (const char *)NULL, "b", "");
  assert_string_equal(c.buf, "level=info event=x a=\"\" b=\"\"\n");
  capture_close(&c);
}

static void values_are_quoted_in_lines(void **state) {
  (void)state;
  struct capture c;
  capture_open(&c, FY_LOG_INFO, NULL);
  fy_error(&c.lg, "open failed", "path", "/tmp/a b", "why", "x=\"y\"");
  assert_string_equal(c.buf, "level=error event=\"open failed\" path=\"/tmp/a b\" why=\"x=\\\"y\\\"\"\n");
  capture_close(&c);
}

static void bad_keys_do_not_break_the_line(void **state) {
  (void)state;
  struct capture c;
  capture_open(&c, FY_LOG_INFO, NULL);
  fy_info(&c.lg, "e", "a b=c", "1", "", "2");
  assert_string_equal(c.buf, "level=info event=e a_b_c=1 _=2\n");
  capture_close(&c);
}

static void format_value_cases(void **state) {
  (void)state;
  static const struct {
    const char *in;
    const char *out;
  } cases[] = {
      {"plain", "plain"},
      {"", "\"\""},
      {"a b", "\"a b\""},
      {"k=v", "\"k=v\""},
      {"say \"hi\"", "\"say \\\"hi\\\"\""},
      {"back\\slash", "\"back\\\\slash\""},
      {"line\nbreak", "\"line\\nbreak\""},
      {"tab\there", "\"tab\\there\""},
      {"bell\a", "\"bell\\x07\""},
      {"cr\r", "\"cr\\x0d\""},
      {"del\x7f", "\"del\\x7f\""},
      {"caf\xc3\xa9", "caf\xc3\xa9"}, /* UTF-8 passes through */
      {"ab12:\xe2\x80\xa6", "ab12:\xe2\x80\xa6"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char buf[64];
    size_t n = fy_log_format_value(buf, sizeof(buf), cases[i].in);
    assert_string_equal(buf, cases[i].out);
    assert_int_equal(n, strlen(cases[i].out));
  }
  char buf[8];
  assert_int_equal(fy_log_format_value(buf, sizeof(buf), NULL), 2);
  assert_string_equal(buf, "\"\"");
}

static void format_value_truncates_like_snprintf(void **state) {
  (void)state;
  char buf[5];
  memset(buf, 'Z', sizeof(buf));
  assert_int_equal(fy_log_format_value(buf, sizeof(buf), "a b c"), 7);
  assert_string_equal(buf, "\"a b");
  assert_int_equal(fy_log_format_value(NULL, 0, "a\nb"), 6);
  char one[1] = {'Z'};
  assert_int_equal(fy_log_format_value(one, 1, "abc"), 3);
  assert_int_equal(one[0], '\0');
}

static void long_lines_come_out_whole(void **state) {
  (void)state;
  struct capture c;
  capture_open(&c, FY_LOG_INFO, NULL);
  size_t big = 5000;
  char *v = malloc(big + 1);
  assert_non_null(v);
  memset(v, 'x', big);
  v[big] = '\0';
  fy_info(&c.lg, "big", "v", v, "end", "yes");
  assert_int_equal(c.len, strlen("level=info event=big v=") + big + strlen(" end=yes\n"));
  assert_memory_equal(c.buf + c.len - 9, " end=yes\n", 9);
  free(v);
  capture_close(&c);
}

static void timestamps_are_rfc3339_utc_millis(void **state) {
  (void)state;
  struct capture c;
  capture_open(&c, FY_LOG_INFO, "relay");
  c.lg.timestamps = true;
  fy_info(&c.lg, "tick");
  /* ts=YYYY-MM-DDTHH:MM:SS.mmmZ */
  const char *p = c.buf;
  assert_memory_equal(p, "ts=", 3);
  p += 3;
  const char *shape = "dddd-dd-ddTdd:dd:dd.dddZ ";
  for (size_t i = 0; shape[i]; i++) {
    if (shape[i] == 'd')
      assert_true(p[i] >= '0' && p[i] <= '9');
    else
      assert_int_equal(p[i], shape[i]);
  }
  assert_string_equal(p + strlen(shape), "level=info applet=relay event=tick\n");
  capture_close(&c);
}

static void level_parse_and_names(void **state) {
  (void)state;
  enum fy_log_level l = FY_LOG_ERROR;
  assert_int_equal(fy_log_level_parse("debug", &l), 0);
  assert_int_equal(l, FY_LOG_DEBUG);
  assert_int_equal(fy_log_level_parse("info", &l), 0);
  assert_int_equal(l, FY_LOG_INFO);
  assert_int_equal(fy_log_level_parse("warn", &l), 0);
  assert_int_equal(l, FY_LOG_WARN);
  assert_int_equal(fy_log_level_parse("error", &l), 0);
  assert_int_equal(l, FY_LOG_ERROR);
  assert_int_equal(fy_log_level_parse("loud", &l), FY_EINVAL);
  assert_int_equal(fy_log_level_parse("", &l), FY_EINVAL);
  assert_int_equal(fy_log_level_parse("INFO", &l), FY_EINVAL);
  assert_int_equal(fy_log_level_parse(NULL, &l), FY_EINVAL);
  assert_int_equal(l, FY_LOG_ERROR);
  assert_string_equal(fy_log_level_name(FY_LOG_DEBUG), "debug");
  assert_string_equal(fy_log_level_name(FY_LOG_WARN), "warn");
  assert_string_equal(fy_log_level_name((enum fy_log_level)42), "invalid");
}

static void journald_detection(void **state) {
  (void)state;
  char path[] = "/tmp/ferry-test-log-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  FILE *f = fdopen(fd, "w+");
  assert_non_null(f);
  struct stat st;
  assert_int_equal(fstat(fd, &st), 0);

  char same[64], other_ino[64], other_dev[64];
  snprintf(same, sizeof(same), "%ju:%ju", (uintmax_t)st.st_dev, (uintmax_t)st.st_ino);
  snprintf(other_ino, sizeof(other_ino), "%ju:%ju", (uintmax_t)st.st_dev, (uintmax_t)st.st_ino + 1);
  snprintf(other_dev, sizeof(other_dev), "%ju:%ju", (uintmax_t)st.st_dev + 1, (uintmax_t)st.st_ino);

  struct fy_log lg;
  fy_log_init(&lg, f, FY_LOG_INFO, "agent", same);
  assert_false(lg.timestamps);
  assert_ptr_equal(lg.out, f);
  assert_int_equal(lg.min_level, FY_LOG_INFO);
  assert_string_equal(lg.applet, "agent");

  /* Under journald the line has no ts= field. */
  fy_info(&lg, "start");
  rewind(f);
  char line[128] = "";
  assert_non_null(fgets(line, sizeof(line), f));
  assert_string_equal(line, "level=info applet=agent event=start\n");

  fy_log_init(&lg, f, FY_LOG_INFO, "agent", other_ino);
  assert_true(lg.timestamps);
  fy_log_init(&lg, f, FY_LOG_INFO, "agent", other_dev);
  assert_true(lg.timestamps);
  fy_log_init(&lg, f, FY_LOG_INFO, "agent", NULL);
  assert_true(lg.timestamps);
  static const char *const junk[] = {"", ":", "1:", ":1", "x:y", "1:2:3", "1:2x", "-1:2"};
  for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++) {
    fy_log_init(&lg, f, FY_LOG_INFO, "agent", junk[i]);
    assert_true(lg.timestamps);
  }
  /* With trailing junk after a matching pair, still not a match. */
  char trailing[80];
  snprintf(trailing, sizeof(trailing), "%s ", same);
  fy_log_init(&lg, f, FY_LOG_INFO, "agent", trailing);
  assert_true(lg.timestamps);

  fclose(f);
  unlink(path);
}

static void memory_streams_never_match_the_journal(void **state) {
  (void)state;
  char buf[64];
  FILE *f = fmemopen(buf, sizeof(buf), "w");
  assert_non_null(f);
  struct fy_log lg;
  fy_log_init(&lg, f, FY_LOG_DEBUG, NULL, "0:0");
  assert_true(lg.timestamps);
  fclose(f);
}

static void no_stream_is_a_no_op(void **state) {
  (void)state;
  struct fy_log lg;
  fy_log_init(&lg, NULL, FY_LOG_DEBUG, NULL, "1:2");
  fy_error(&lg, "nothing");
  fy_log_kv(NULL, FY_LOG_ERROR, "nothing", (const char *)NULL);
}

struct writer {
  const struct fy_log *lg;
  char tag[2];
};

static void *write_lines(void *arg) {
  const struct writer *w = arg;
  char v[3000];
  memset(v, w->tag[0], sizeof(v) - 1);
  v[sizeof(v) - 1] = '\0';
  for (int i = 0; i < 200; i++)
    fy_info(w->lg, "spam", "v", v);
  return NULL;
}

/* Lines longer than the stack buffer, from four threads: each comes out whole. */
static void threads_do_not_interleave_lines(void **state) {
  (void)state;
  FILE *f = tmpfile();
  assert_non_null(f);
  struct fy_log lg;
  fy_log_init(&lg, f, FY_LOG_INFO, NULL, NULL);
  lg.timestamps = false;
  pthread_t th[4];
  struct writer w[4];
  for (int i = 0; i < 4; i++) {
    w[i] = (struct writer){.lg = &lg, .tag = {(char)('a' + i), 0}};
    assert_int_equal(pthread_create(&th[i], NULL, write_lines, &w[i]), 0);
  }
  for (int i = 0; i < 4; i++)
    assert_int_equal(pthread_join(th[i], NULL), 0);
  rewind(f);
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  int lines = 0;
  while ((n = getline(&line, &cap, f)) > 0) {
    assert_int_equal(n, strlen("level=info event=spam v=") + 2999 + 1);
    const char *v = line + strlen("level=info event=spam v=");
    for (int i = 0; i < 2999; i++)
      assert_int_equal(v[i], v[0]);
    lines++;
  }
  assert_int_equal(lines, 800);
  free(line);
  fclose(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(level_filtering),
      cmocka_unit_test(exact_line_format),
      cmocka_unit_test(null_and_empty_values),
      cmocka_unit_test(values_are_quoted_in_lines),
      cmocka_unit_test(bad_keys_do_not_break_the_line),
      cmocka_unit_test(format_value_cases),
      cmocka_unit_test(format_value_truncates_like_snprintf),
      cmocka_unit_test(long_lines_come_out_whole),
      cmocka_unit_test(timestamps_are_rfc3339_utc_millis),
      cmocka_unit_test(level_parse_and_names),
      cmocka_unit_test(journald_detection),
      cmocka_unit_test(memory_streams_never_match_the_journal),
      cmocka_unit_test(no_stream_is_a_no_op),
      cmocka_unit_test(threads_do_not_interleave_lines),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
