/* Helpers the benchmark executables share (tests/bench_*.c): clocks, CPU
 * time, CPU pinning, a bounded read from a control pipe, and removing a
 * scratch directory. Header-only: each benchmark is one translation unit. */
#ifndef FY_TESTS_BENCH_UTIL_H
#define FY_TESTS_BENCH_UTIL_H

#include <errno.h>
#include <ftw.h>
#include <poll.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Monotonic seconds. */
static inline double bench_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU time of this process, user and system. */
struct bench_cpu {
  double user, sys;
};

static inline struct bench_cpu bench_cpu_now(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (struct bench_cpu){(double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6,
                            (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6};
}

/* Whether this process may run on both CPUs (so two sides can be pinned apart). */
static inline bool bench_has_cpus(int a, int b) {
  cpu_set_t set;
  return sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_ISSET(a, &set) && CPU_ISSET(b, &set);
}

static inline void bench_pin_cpu(const char *who, int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof(set), &set) != 0)
    fprintf(stderr, "%s: cannot pin to CPU %d: %s\n", who, cpu, strerror(errno));
}

/* Reads exactly len bytes, waiting at most timeout_ms for each piece. */
static inline bool bench_read_full(int fd, void *buf, size_t len, int timeout_ms) {
  uint8_t *p = buf;
  while (len > 0) {
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    if (poll(&pfd, 1, timeout_ms) <= 0)
      return false;
    ssize_t n = read(fd, p, len);
    if (n <= 0)
      return false;
    p += n;
    len -= (size_t)n;
  }
  return true;
}

/* For nftw(dir, bench_rm_entry, 16, FTW_DEPTH | FTW_PHYS): removes a tree. */
static inline int bench_rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

#endif
