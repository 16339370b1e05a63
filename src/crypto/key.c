/* Node identities: ed25519 keys in OpenSSH private key files (see key.h). */
#include "crypto/key.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "crypto/openssh.h"

#define KEY_FILE_MAX 65536 /* 64 KiB */

_Static_assert(sizeof(((struct fy_key *)0)->comment) == FY_OPENSSH_COMMENT_MAX,
               "key and OpenSSH comment sizes agree");

static void sodium_freep(void *p) {
  void **pp = p;
  sodium_free(*pp);
}
#define FY_SODIUM_AUTOFREE __attribute__((cleanup(sodium_freep)))

int fy_crypto_init(struct fy_err *err) {
  if (sodium_init() < 0)
    return fy_err_set(err, FY_ECRYPTO, "libsodium failed to initialise");
  return 0;
}

/* Fills key from a seed; the secret key ends up read-only in guarded memory. */
static int key_fill(struct fy_key *key, const uint8_t seed[FY_ED25519_SEED_LEN], const char *comment,
                    struct fy_err *err) {
  key->sk = NULL;
  uint8_t *sk = sodium_malloc(crypto_sign_SECRETKEYBYTES);
  if (!sk)
    return fy_err_set(err, FY_ENOMEM, "cannot allocate secure memory for a secret key");
  if (crypto_sign_seed_keypair(key->id.key, sk, seed) != 0) {
    sodium_free(sk);
    return fy_err_set(err, FY_ECRYPTO, "cannot derive an ed25519 key pair from the seed");
  }
  sodium_mprotect_readonly(sk);
  key->sk = sk;
  snprintf(key->comment, sizeof(key->comment), "%s", comment ? comment : "");
  return 0;
}

int fy_key_from_seed(struct fy_key *key, const uint8_t seed[32], struct fy_err *err) {
  if (!key || !seed)
    return fy_err_set(err, FY_EINVAL, "no key or seed given");
  return key_fill(key, seed, "", err);
}

int fy_key_generate(struct fy_key *key, struct fy_err *err) {
  if (!key)
    return fy_err_set(err, FY_EINVAL, "no key given");
  key->sk = NULL;
  FY_SODIUM_AUTOFREE uint8_t *seed = sodium_malloc(FY_ED25519_SEED_LEN);
  if (!seed)
    return fy_err_set(err, FY_ENOMEM, "cannot allocate secure memory for a seed");
  randombytes_buf(seed, FY_ED25519_SEED_LEN);
  return key_fill(key, seed, "", err);
}

/* Reads the whole (regular, small) file behind fd into a sodium_malloc'd buffer. */
static int read_all(int fd, const char *path, size_t size, uint8_t **out, size_t *out_len,
                    struct fy_err *err) {
  /* One byte more than fstat said, to notice a file that grows under us. */
  uint8_t *buf = sodium_malloc(size + 1);
  if (!buf)
    return fy_err_set(err, FY_ENOMEM, "key file %s: cannot allocate %zu bytes", path, size + 1);
  size_t have = 0;
  while (have < size + 1) {
    ssize_t n = read(fd, buf + have, size + 1 - have);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      int e = errno;
      sodium_free(buf);
      return fy_err_errno(err, e, "key file %s: read", path);
    }
    if (n == 0)
      break;
    have += (size_t)n;
  }
  if (have != size) {
    sodium_free(buf);
    return fy_err_set(err, FY_EIO, "key file %s: changed size while being read", path);
  }
  *out = buf;
  *out_len = have;
  return 0;
}

/* "read", "write", "read and write", ... for the group/other bits of mode. */
static void describe_access(mode_t mode, char *who, size_t who_size, char *what, size_t what_size) {
  bool group = mode & 070, other = mode & 007;
  snprintf(who, who_size, "%s", group && other ? "group and others" : group ? "group" : "others");
  const char *verbs[3];
  size_t n = 0;
  if (mode & 044)
    verbs[n++] = "read";
  if (mode & 022)
    verbs[n++] = "write";
  if (mode & 011)
    verbs[n++] = "execute";
  if (n == 0)
    snprintf(what, what_size, "access");
  else if (n == 1)
    snprintf(what, what_size, "%s", verbs[0]);
  else if (n == 2)
    snprintf(what, what_size, "%s and %s", verbs[0], verbs[1]);
  else
    snprintf(what, what_size, "%s, %s and %s", verbs[0], verbs[1], verbs[2]);
}

int fy_key_load(struct fy_key *key, const char *path, struct fy_err *err) {
  if (!key || !path)
    return fy_err_set(err, FY_EINVAL, "no key or path given");
  key->sk = NULL;
  /* Symlinks are followed (NixOS links host keys); the checks below look at
   * the file actually opened. O_NONBLOCK keeps a FIFO from hanging us. */
  FY_AUTOCLOSE int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0)
    return fy_err_errno(err, errno, "key file %s: open", path);
  struct stat st;
  if (fstat(fd, &st) != 0)
    return fy_err_errno(err, errno, "key file %s: stat", path);
  if (!S_ISREG(st.st_mode))
    return fy_err_set(err, FY_EINVAL, "key file %s is not a regular file (it is a %s)", path,
                      S_ISDIR(st.st_mode)    ? "directory"
                      : S_ISFIFO(st.st_mode) ? "FIFO"
                      : S_ISCHR(st.st_mode)  ? "character device"
                      : S_ISBLK(st.st_mode)  ? "block device"
                      : S_ISSOCK(st.st_mode) ? "socket"
                                             : "special file");
  if ((st.st_mode & 077) != 0) {
    char who[32], what[32];
    describe_access(st.st_mode, who, sizeof(who), what, sizeof(what));
    return fy_err_set(err, FY_EPERM, "key file %s: mode %04o lets %s %s it; run chmod 600 %s", path,
                      (unsigned)(st.st_mode & 07777), who, what, path);
  }
  if (st.st_size > KEY_FILE_MAX)
    return fy_err_set(err, FY_ELIMIT, "key file %s is %lld bytes; a key file is at most %d bytes", path,
                      (long long)st.st_size, KEY_FILE_MAX);

  FY_SODIUM_AUTOFREE uint8_t *data = NULL;
  size_t len = 0;
  int rc = read_all(fd, path, (size_t)st.st_size, &data, &len, err);
  if (rc < 0)
    return rc;
  FY_SODIUM_AUTOFREE struct fy_openssh_key *ok = sodium_malloc(sizeof(*ok));
  if (!ok)
    return fy_err_set(err, FY_ENOMEM, "key file %s: cannot allocate secure memory", path);
  rc = fy_openssh_decode_private(data, len, ok, err);
  if (rc < 0)
    return fy_err_prefix(err, "key file %s", path);
  rc = key_fill(key, ok->seed, ok->comment, err);
  if (rc < 0)
    return fy_err_prefix(err, "key file %s", path);
  /* The decoder checked that the seed derives the stored public key. */
  if (memcmp(key->id.key, ok->pk, FY_NODEID_LEN) != 0) {
    fy_key_free(key);
    return fy_err_set(err, FY_EINVAL, "key file %s: seed does not derive the public key", path);
  }
  return 0;
}

static int write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return errno;
    }
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

/* fsyncs the directory that holds path, so the new name survives a crash. */
static int fsync_parent(const char *path, struct fy_err *err) {
  char dir[PATH_MAX];
  const char *slash = strrchr(path, '/');
  if (!slash)
    snprintf(dir, sizeof(dir), ".");
  else if (slash == path)
    snprintf(dir, sizeof(dir), "/");
  else if ((size_t)(slash - path) < sizeof(dir))
    snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
  else
    return fy_err_set(err, FY_ELIMIT, "key file %s: directory name is too long", path);
  FY_AUTOCLOSE int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0)
    return fy_err_errno(err, errno, "key file %s: open directory %s", path, dir);
  /* Some file systems cannot fsync a directory (EINVAL); nothing more to do there. */
  if (fsync(dfd) != 0 && errno != EINVAL)
    return fy_err_errno(err, errno, "key file %s: fsync directory %s", path, dir);
  return 0;
}

int fy_key_save(const struct fy_key *key, const char *path, struct fy_err *err) {
  if (!key || !key->sk || !path)
    return fy_err_set(err, FY_EINVAL, "no key or path given");
  FY_SODIUM_AUTOFREE struct fy_openssh_key *ok = sodium_malloc(sizeof(*ok));
  if (!ok)
    return fy_err_set(err, FY_ENOMEM, "key file %s: cannot allocate secure memory", path);
  memcpy(ok->seed, key->sk, FY_ED25519_SEED_LEN);
  memcpy(ok->pk, key->id.key, FY_ED25519_PK_LEN);
  snprintf(ok->comment, sizeof(ok->comment), "%s", key->comment);
  uint32_t check_int = randombytes_random();
  char *text = NULL;
  size_t text_len = 0;
  int rc = fy_openssh_encode_private(ok, check_int, &text, &text_len, err);
  if (rc < 0)
    return fy_err_prefix(err, "key file %s", path);

  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY, 0600);
  if (fd < 0) {
    int e = errno;
    sodium_memzero(text, text_len);
    free(text);
    if (e == EEXIST)
      return fy_err_set(err, FY_EEXIST, "key file %s already exists; refusing to overwrite it", path);
    return fy_err_errno(err, e, "key file %s: create", path);
  }
  int e = write_all(fd, text, text_len);
  sodium_memzero(text, text_len);
  free(text);
  if (e != 0)
    rc = fy_err_errno(err, e, "key file %s: write", path);
  else if (fsync(fd) != 0)
    rc = fy_err_errno(err, errno, "key file %s: fsync", path);
  if (close(fd) != 0 && rc == 0)
    rc = fy_err_errno(err, errno, "key file %s: close", path);
  if (rc == 0)
    rc = fsync_parent(path, err);
  if (rc < 0)
    unlink(path); /* never leave a partial or unconfirmed key behind */
  return rc;
}

int fy_key_sign(const struct fy_key *key, const uint8_t *msg, size_t len, uint8_t sig[FY_SIG_LEN]) {
  if (!key || !key->sk || !sig || (!msg && len))
    return FY_EINVAL;
  static const uint8_t empty[1] = {0};
  crypto_sign_detached(sig, NULL, msg ? msg : empty, len, key->sk);
  return 0;
}

int fy_sig_verify(const struct fy_nodeid *id, const uint8_t *msg, size_t len, const uint8_t sig[FY_SIG_LEN]) {
  if (!id || !sig || (!msg && len))
    return FY_ECRYPTO;
  static const uint8_t empty[1] = {0};
  if (crypto_sign_verify_detached(sig, msg ? msg : empty, len, id->key) != 0)
    return FY_ECRYPTO;
  return 0;
}

void fy_key_free(struct fy_key *key) {
  if (!key)
    return;
  sodium_free(key->sk); /* makes it writable, wipes, unmaps */
  sodium_memzero(key, sizeof(*key));
}
