/* The mark an applier's process group leaves (agent/childmark.h): a later
 * agent sees it running while it runs, and not once it is gone, reaped or
 * replaced; damaged marks and marks from another boot are ignored. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/childmark.h"

struct fx {
  char dir[64], path[128];
};

static int setup(void **state) {
  struct fx *f = calloc(1, sizeof(*f));
  assert_non_null(f);
  snprintf(f->dir, sizeof(f->dir), "/tmp/ferry-childmark-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->path, sizeof(f->path), "%s/applier.pid", f->dir);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  struct fx *f = *state;
  unlink(f->path);
  rmdir(f->dir);
  free(f);
  return 0;
}

/* A child in its own process group that sleeps until killed. */
static pid_t sleeper(void) {
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    setpgid(0, 0);
    execlp("sleep", "sleep", "30", (char *)NULL);
    _exit(127);
  }
  setpgid(pid, pid);
  usleep(20000); /* past the exec */
  return pid;
}

static void write_text(const char *path, const char *text) {
  FILE *fp = fopen(path, "w");
  assert_non_null(fp);
  fputs(text, fp);
  fclose(fp);
}

static void running_until_gone(void **state) {
  struct fx *f = *state;
  pid_t pid = sleeper(), seen = 0;
  struct fy_err err = {0};
  assert_int_equal(fy_childmark_running(f->path, &seen, &err), 0); /* no mark */
  assert_int_equal(fy_childmark_write(f->path, pid, &err), 0);
  assert_int_equal(fy_childmark_running(f->path, &seen, &err), 1);
  assert_int_equal(seen, pid);
  /* a zombie (exited, not reaped yet) is gone */
  kill(-pid, SIGKILL);
  usleep(50000);
  assert_int_equal(fy_childmark_running(f->path, &seen, &err), 0);
  assert_int_equal(access(f->path, F_OK), -1); /* the stale mark is removed */
  waitpid(pid, NULL, 0);
  /* a process that is gone cannot be marked */
  assert_int_equal(fy_childmark_write(f->path, pid, &err), FY_ENOENT);
  assert_non_null(strstr(err.msg, "is gone"));
}

static void other_process_boot_or_damage_is_not_running(void **state) {
  struct fx *f = *state;
  pid_t self = getpid(), seen = 0;
  struct fy_err err = {0};
  char text[256];
  assert_int_equal(fy_childmark_write(f->path, self, &err), 0);
  assert_int_equal(fy_childmark_running(f->path, &seen, &err), 1);
  FILE *fp = fopen(f->path, "r");
  assert_non_null(fp);
  char line[256];
  assert_non_null(fgets(line, sizeof(line), fp));
  fclose(fp);
  int pid;
  unsigned long long started;
  char boot[64];
  assert_int_equal(sscanf(line, "%d %llu %63s", &pid, &started, boot), 3);
  /* our own pid, but another start time: a reused pid */
  snprintf(text, sizeof(text), "%d %llu %s\n", pid, started + 1, boot);
  write_text(f->path, text);
  assert_int_equal(fy_childmark_running(f->path, &seen, &err), 0);
  /* the same process, another boot */
  snprintf(text, sizeof(text), "%d %llu %s\n", pid, started, "00000000-0000-0000-0000-000000000000");
  write_text(f->path, text);
  assert_int_equal(fy_childmark_running(f->path, &seen, &err), 0);
  /* damaged */
  write_text(f->path, "not a mark");
  assert_int_equal(fy_childmark_running(f->path, &seen, &err), 0);
  write_text(f->path, "");
  assert_int_equal(fy_childmark_running(f->path, &seen, &err), 0);
  assert_int_equal(access(f->path, F_OK), -1);
  fy_childmark_clear(f->path); /* missing: fine */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(running_until_gone, setup, teardown),
      cmocka_unit_test_setup_teardown(other_process_boot_or_damage_is_not_running, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
