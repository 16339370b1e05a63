#include "agent/childmark.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/cleanup.h"

#define BOOT_ID_PATH "/proc/sys/kernel/random/boot_id"

/* Reads at most size - 1 bytes of path into out (NUL-terminated). */
static int read_small(const char *path, char *out, size_t size) {
  FY_AUTOCLOSE int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  ssize_t n = read(fd, out, size - 1);
  if (n < 0)
    return -errno;
  out[n] = '\0';
  return 0;
}

static void boot_id(char out[64]) {
  if (read_small(BOOT_ID_PATH, out, 64) < 0)
    out[0] = '\0';
  out[strcspn(out, "\n")] = '\0';
}

/* The process's start time (clock ticks after boot, field 22 of
 * /proc/PID/stat) and whether it is a zombie. 0 when it does not exist. */
static uint64_t start_time(pid_t pid, bool *zombie) {
  char path[64], stat[1024];
  snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  *zombie = false;
  if (read_small(path, stat, sizeof(stat)) < 0)
    return 0;
  /* The command name (field 2) may hold spaces and ')': fields restart
   * after its last ')'. */
  const char *p = strrchr(stat, ')');
  if (!p || p[1] != ' ')
    return 0;
  char state = p[2];
  *zombie = state == 'Z' || state == 'X';
  p += 2;
  for (int field = 3; field < 22; field++) {
    p = strchr(p, ' ');
    if (!p)
      return 0;
    p++;
  }
  return strtoull(p, NULL, 10);
}

int fy_childmark_write(const char *path, pid_t pid, struct fy_err *err) {
  bool zombie;
  uint64_t started = start_time(pid, &zombie);
  if (!started)
    return fy_err_set(err, FY_ENOENT, "%s: process %d is gone", path, (int)pid);
  char boot[64], text[160];
  boot_id(boot);
  int n = snprintf(text, sizeof(text), "%d %" PRIu64 " %s\n", (int)pid, started, boot);
  FY_AUTOCLOSE int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    return fy_err_errno(err, errno, "%s", path);
  if (write(fd, text, (size_t)n) != n)
    return fy_err_errno(err, errno ? errno : EIO, "%s", path);
  return 0;
}

void fy_childmark_clear(const char *path) {
  unlink(path);
}

int fy_childmark_running(const char *path, pid_t *pid, struct fy_err *err) {
  char text[160], boot[64], mboot[64];
  int rc = read_small(path, text, sizeof(text));
  if (rc == -ENOENT)
    return 0;
  if (rc < 0)
    return fy_err_errno(err, -rc, "%s", path);
  int mpid;
  uint64_t mstarted;
  bool zombie;
  boot_id(boot);
  if (sscanf(text, "%d %" SCNu64 " %63s", &mpid, &mstarted, mboot) != 3 || mpid <= 0 ||
      strcmp(mboot, boot) != 0 || start_time(mpid, &zombie) != mstarted || zombie) {
    fy_childmark_clear(path);
    return 0;
  }
  *pid = mpid;
  return 1;
}
