/* Feeds arbitrary bytes to the config loader as the config file, through the
 * same path a user's file takes (--config FILE), with a small table that has
 * every type and flag. It must never crash, leak or read out of bounds, and a
 * load that succeeds must print. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/config.h"
#include "base/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const modes[] = {"fast", "safe", NULL};

static const struct fy_cfg_key keys[] = {
    {.name = "data_dir", .type = FY_CFG_PATH, .def = "/var/lib/ferry", .help = "state"},
    {.name = "port", .type = FY_CFG_INT, .def = "4433", .min = 1, .max = 65535, .help = "port"},
    {.name = "verbose", .type = FY_CFG_BOOL, .def = "false", .help = "more"},
    {.name = "timeout", .type = FY_CFG_DURATION, .def = "30s", .min = 100, .max = 86400000, .help = "wait"},
    {.name = "mode", .type = FY_CFG_ENUM, .def = "safe", .choices = modes, .help = "how"},
    {.name = "label", .type = FY_CFG_STRING, .help = "label"},
    {.name = "token", .type = FY_CFG_STRING, .min = 4, .flags = FY_CFG_SECRET, .help = "secret"},
    {.name = "out", .type = FY_CFG_PATH, .flags = FY_CFG_CLI_ONLY, .help = "cli only"},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int fd = memfd_create("fuzz_config", MFD_CLOEXEC);
  if (fd < 0)
    return 0;
  size_t off = 0;
  while (off < size) {
    ssize_t n = write(fd, data + off, size - off);
    if (n <= 0) {
      close(fd);
      return 0;
    }
    off += (size_t)n;
  }

  char path[64];
  snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
  char arg0[] = "fuzz", flag[] = "--config";
  char *argv[] = {arg0, flag, path, NULL};
  char *envp[] = {NULL};

  struct fy_cfg cfg;
  struct fy_err err = {0};
  if (fy_cfg_load(&cfg, "fuzz", keys, sizeof(keys) / sizeof(keys[0]), 3, argv, envp, &err) == 0) {
    FILE *sink = fopen("/dev/null", "w");
    if (sink) {
      fy_cfg_print(&cfg, sink);
      fclose(sink);
    }
    fy_cfg_free(&cfg);
  } else if (err.msg[0] == '\0' || memchr(err.msg, '\0', sizeof(err.msg)) == NULL) {
    __builtin_trap(); /* every failure says why, in a terminated string */
  }
  close(fd);
  return 0;
}
