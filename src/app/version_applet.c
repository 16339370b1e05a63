/* `ferry version`: ferry's version and the library versions linked into this
 * binary, as the libraries themselves report them at run time (so a bug
 * report shows what really ran, not what the build expected). */
#include <string.h>

#include <wolfssl/options.h>

#include <lmdb.h>
#include <msgpack.h>
#include <nghttp3/nghttp3.h>
#include <ngtcp2/ngtcp2.h>
#include <sodium.h>
#include <uv.h>
#include <wolfssl/ssl.h>

#include "app/applet.h"
#include "fy_config.h"

int fy_version_main(int argc, char **argv, const struct fy_proc *proc) {
  if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
    fprintf(proc->out, "usage: ferry version [--libs]\n\n"
                       "Prints ferry's version; --libs adds the version of each linked library.\n");
    return FY_EXIT_OK;
  }
  int libs = argc == 2 && strcmp(argv[1], "--libs") == 0;
  if (argc > 1 && !libs)
    return fy_applet_fail(proc, "version", FY_EXIT_USAGE, "unknown argument '%s' (only --libs)", argv[1]);
  fprintf(proc->out, "ferry %s\n", FY_VERSION);
  if (libs) {
    fprintf(proc->out, "wolfssl %s\n", wolfSSL_lib_version());
    fprintf(proc->out, "ngtcp2 %s\n", ngtcp2_version(0)->version_str);
    fprintf(proc->out, "nghttp3 %s\n", nghttp3_version(0)->version_str);
    fprintf(proc->out, "libsodium %s\n", sodium_version_string());
    int maj = 0, min = 0, patch = 0;
    mdb_version(&maj, &min, &patch);
    fprintf(proc->out, "lmdb %d.%d.%d\n", maj, min, patch);
    fprintf(proc->out, "libuv %s\n", uv_version_string());
    fprintf(proc->out, "msgpack-c %s\n", msgpack_version());
  }
  return FY_EXIT_OK;
}
