#include <stdio.h>

#include "app/applet.h"

extern char **environ;

int main(int argc, char **argv) {
  const struct fy_proc proc = {.envp = environ, .out = stdout, .errout = stderr};
  return fy_main(argc, argv, &proc);
}
