/* Node keys: signing, key files on disk (permissions, damage, refusal to
 * overwrite) and interoperability with OpenSSH's ssh-keygen, run at test time.
 *
 * The ssh-keygen tests skip (with a message) only when ssh-keygen is missing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "crypto/key.h"
#include "crypto/nodeid.h"
#include "crypto/openssh.h"

#define assert_contains(haystack, needle)                                                                    \
  do {                                                                                                       \
    if (!strstr((haystack), (needle)))                                                                       \
      fail_msg("message \"%s\" does not contain \"%s\"", (haystack), (needle));                              \
  } while (0)

/* RFC 8032 section 7.1, test 1: secret key, public key, signature of "". */
static const char RFC_SECRET[] = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
static const char RFC_PUBLIC[] = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
static const char RFC_SIG[] = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555f"
                              "b8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";

struct ctx {
  char dir[256];
};

/* ---- helpers ------------------------------------------------------------- */

static void hex(uint8_t *out, size_t len, const char *text) {
  size_t n = 0;
  assert_int_equal(sodium_hex2bin(out, len, text, strlen(text), NULL, &n, NULL), 0);
  assert_int_equal(n, len);
}

static void path_in(const struct ctx *c, const char *name, char out[512]) {
  snprintf(out, 512, "%s/%s", c->dir, name);
}

static void write_file(const char *path, const void *data, size_t len, mode_t mode) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, data, len), (ssize_t)len);
  assert_int_equal(fchmod(fd, mode), 0);
  assert_int_equal(close(fd), 0);
}

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  char *buf = malloc(70000);
  assert_non_null(buf);
  *len = fread(buf, 1, 69999, f);
  buf[*len] = '\0';
  fclose(f);
  return buf;
}

/* Runs a shell command; its stdout goes to out. Returns the exit status. */
static int run(const char *cmd, char *out, size_t out_size) {
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  size_t n = fread(out, 1, out_size - 1, p);
  out[n] = '\0';
  int status = pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static bool have_ssh_keygen(void) {
  char out[512];
  return run("command -v ssh-keygen 2>/dev/null", out, sizeof(out)) == 0 && out[0] == '/';
}

#define REQUIRE_SSH_KEYGEN()                                                                                 \
  do {                                                                                                       \
    if (!have_ssh_keygen()) {                                                                                \
      print_message("ssh-keygen not found in PATH: skipping OpenSSH interop\n");                             \
      skip();                                                                                                \
    }                                                                                                        \
  } while (0)

static void ssh_keygen(const struct ctx *c, const char *name, const char *args) {
  char cmd[1024], out[4096];
  snprintf(cmd, sizeof(cmd), "ssh-keygen -q %s -f '%s/%s' </dev/null 2>&1", args, c->dir, name);
  int rc = run(cmd, out, sizeof(out));
  if (rc != 0)
    fail_msg("%s failed (%d): %s", cmd, rc, out);
}

static void save_seeded(const struct ctx *c, const char *name, const char *comment, struct fy_key *key,
                        char path[512]) {
  uint8_t seed[32];
  for (int i = 0; i < 32; i++)
    seed[i] = (uint8_t)(0xa0 + i);
  struct fy_err err;
  assert_int_equal(fy_key_from_seed(key, seed, &err), 0);
  snprintf(key->comment, sizeof(key->comment), "%s", comment);
  path_in(c, name, path);
  if (fy_key_save(key, path, &err) != 0)
    fail_msg("save: %s", err.msg);
}

static void expect_load_error(const char *path, int code, const char *want) {
  struct fy_err err;
  struct fy_key key;
  fy_err_clear(&err);
  int rc = fy_key_load(&key, path, &err);
  if (rc != code)
    fail_msg("load %s returned %d (%s), want %d; message: %s", path, rc, fy_strerror(rc), code, err.msg);
  assert_int_equal(err.code, code);
  assert_contains(err.msg, path);
  if (want)
    assert_contains(err.msg, want);
  assert_null(key.sk);
}

/* Base64 body of a private key file <-> its container bytes. */
static size_t unarmor(const char *text, uint8_t *bin, size_t bin_size) {
  const char *body = strchr(text, '\n') + 1;
  const char *end = strstr(body, "-----END");
  assert_non_null(end);
  size_t n = 0;
  assert_int_equal(sodium_base642bin(bin, bin_size, body, (size_t)(end - body), "\n", &n, NULL,
                                     sodium_base64_VARIANT_ORIGINAL),
                   0);
  return n;
}

static void write_armored(const char *path, const uint8_t *bin, size_t len) {
  char b64[2048], text[4096];
  sodium_bin2base64(b64, sizeof(b64), bin, len, sodium_base64_VARIANT_ORIGINAL);
  size_t off = (size_t)snprintf(text, sizeof(text), "-----BEGIN OPENSSH PRIVATE KEY-----\n");
  for (size_t i = 0; i < strlen(b64); i += 70)
    off += (size_t)snprintf(text + off, sizeof(text) - off, "%.70s\n", b64 + i);
  off += (size_t)snprintf(text + off, sizeof(text) - off, "-----END OPENSSH PRIVATE KEY-----\n");
  write_file(path, text, off, 0600);
}

/* The container offsets of an unencrypted ed25519 key. */
#define OFF_CHECK_INT 98 /* 15 magic + 8 + 8 + 4 kdfoptions + 4 nkeys + 55 blob + 4 */
#define OFF_SK (OFF_CHECK_INT + 8 + 15 + 36 + 4)

/* ---- fixtures -------------------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static int setup(void **state) {
  struct ctx *c = calloc(1, sizeof(*c));
  if (!c)
    return -1;
  const char *tmp = getenv("TMPDIR");
  snprintf(c->dir, sizeof(c->dir), "%s/ferry-test-key-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(c->dir)) {
    free(c);
    return -1;
  }
  *state = c;
  return 0;
}

static int teardown(void **state) {
  struct ctx *c = *state;
  nftw(c->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(c);
  return 0;
}

static int group_setup(void **state) {
  (void)state;
  struct fy_err err;
  umask(022);
  return fy_crypto_init(&err) == 0 ? 0 : -1;
}

/* ---- signatures ------------------------------------------------------------- */

static void test_rfc8032_signature(void **state) {
  (void)state;
  uint8_t seed[32], want_pk[32], want_sig[64], sig[FY_SIG_LEN];
  hex(seed, 32, RFC_SECRET);
  hex(want_pk, 32, RFC_PUBLIC);
  hex(want_sig, 64, RFC_SIG);
  struct fy_err err;
  struct fy_key key;
  assert_int_equal(fy_key_from_seed(&key, seed, &err), 0);
  assert_memory_equal(key.id.key, want_pk, 32);
  assert_int_equal(fy_key_sign(&key, NULL, 0, sig), 0);
  assert_memory_equal(sig, want_sig, 64);
  assert_int_equal(fy_sig_verify(&key.id, NULL, 0, sig), 0);
  fy_key_free(&key);
  assert_null(key.sk);
}

static void test_sign_verify(void **state) {
  (void)state;
  struct fy_err err;
  struct fy_key a, b;
  assert_int_equal(fy_key_generate(&a, &err), 0);
  assert_int_equal(fy_key_generate(&b, &err), 0);
  assert_false(fy_nodeid_equal(&a.id, &b.id));
  assert_memory_equal(a.sk + 32, a.id.key, 32); /* sk = seed || pk */

  uint8_t msg[100], sig[FY_SIG_LEN];
  randombytes_buf(msg, sizeof(msg));
  assert_int_equal(fy_key_sign(&a, msg, sizeof(msg), sig), 0);
  assert_int_equal(fy_sig_verify(&a.id, msg, sizeof(msg), sig), 0);
  assert_int_equal(fy_sig_verify(&b.id, msg, sizeof(msg), sig), FY_ECRYPTO);

  for (size_t bit = 0; bit < sizeof(msg) * 8; bit += 37) {
    msg[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    assert_int_equal(fy_sig_verify(&a.id, msg, sizeof(msg), sig), FY_ECRYPTO);
    msg[bit / 8] ^= (uint8_t)(1u << (bit % 8));
  }
  for (size_t bit = 0; bit < (size_t)FY_SIG_LEN * 8; bit += 11) {
    sig[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    assert_int_equal(fy_sig_verify(&a.id, msg, sizeof(msg), sig), FY_ECRYPTO);
    sig[bit / 8] ^= (uint8_t)(1u << (bit % 8));
  }
  assert_int_equal(fy_sig_verify(&a.id, msg, sizeof(msg), sig), 0);
  assert_int_equal(fy_sig_verify(&a.id, msg, sizeof(msg) - 1, sig), FY_ECRYPTO);

  struct fy_key none = {.sk = NULL};
  assert_int_equal(fy_key_sign(&none, msg, sizeof(msg), sig), FY_EINVAL);
  fy_key_free(&a);
  fy_key_free(&b);
  fy_key_free(&none);
}

/* ---- key files ----------------------------------------------------------------- */

static void test_save_load_round_trip(void **state) {
  struct ctx *c = *state;
  struct fy_key key, got;
  char path[512];
  save_seeded(c, "node.key", "node-a", &key, path);

  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_true(S_ISREG(st.st_mode));
  assert_int_equal(st.st_mode & 07777, 0600);

  struct fy_err err;
  if (fy_key_load(&got, path, &err) != 0)
    fail_msg("load: %s", err.msg);
  assert_true(fy_nodeid_equal(&got.id, &key.id));
  assert_memory_equal(got.sk, key.sk, 64);
  assert_string_equal(got.comment, "node-a");

  /* Signatures by the loaded key verify under the saved id. */
  uint8_t sig[FY_SIG_LEN];
  assert_int_equal(fy_key_sign(&got, (const uint8_t *)"hi", 2, sig), 0);
  assert_int_equal(fy_sig_verify(&key.id, (const uint8_t *)"hi", 2, sig), 0);

  /* Mode 0400 and 0700 keep group and others out, so they load too. */
  fy_key_free(&got);
  assert_int_equal(chmod(path, 0400), 0);
  assert_int_equal(fy_key_load(&got, path, &err), 0);
  fy_key_free(&got);
  assert_int_equal(chmod(path, 0700), 0);
  assert_int_equal(fy_key_load(&got, path, &err), 0);
  fy_key_free(&got);
  fy_key_free(&key);
}

static void test_save_refuses_to_overwrite(void **state) {
  struct ctx *c = *state;
  char path[512];
  path_in(c, "existing.key", path);
  static const char precious[] = "precious bytes\n";
  write_file(path, precious, sizeof(precious) - 1, 0644);

  struct fy_err err;
  struct fy_key key;
  assert_int_equal(fy_key_generate(&key, &err), 0);
  assert_int_equal(fy_key_save(&key, path, &err), FY_EEXIST);
  assert_int_equal(err.code, FY_EEXIST);
  assert_contains(err.msg, path);
  assert_contains(err.msg, "refusing to overwrite");

  size_t len;
  char *now = read_file(path, &len);
  assert_string_equal(now, precious);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 07777, 0644);
  free(now);

  /* A dangling symlink is not followed either. */
  char link[512], target[512];
  path_in(c, "dangling.key", link);
  path_in(c, "nowhere", target);
  assert_int_equal(symlink(target, link), 0);
  assert_int_equal(fy_key_save(&key, link, &err), FY_EEXIST);
  assert_int_equal(access(target, F_OK), -1);

  /* A missing directory: nothing is created, the message names the path. */
  char missing[512];
  path_in(c, "no/such/dir.key", missing);
  assert_int_equal(fy_key_save(&key, missing, &err), FY_ENOENT);
  assert_contains(err.msg, missing);
  fy_key_free(&key);
}

static void test_load_modes(void **state) {
  struct ctx *c = *state;
  struct fy_key key;
  char path[512];
  save_seeded(c, "mode.key", "", &key, path);
  fy_key_free(&key);

  struct {
    mode_t mode;
    const char *want;
  } cases[] = {
      {0640, "mode 0640 lets group read it; run chmod 600"},
      {0604, "mode 0604 lets others read it; run chmod 600"},
      {0644, "mode 0644 lets group and others read it"},
      {0660, "mode 0660 lets group read and write it"},
      {0602, "mode 0602 lets others write it"},
      {0610, "mode 0610 lets group execute it"},
      {0777, "mode 0777 lets group and others read, write and execute it"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    assert_int_equal(chmod(path, cases[i].mode), 0);
    expect_load_error(path, FY_EPERM, cases[i].want);
  }
  struct fy_err err;
  struct fy_key k;
  assert_int_equal(chmod(path, 0640), 0);
  assert_int_equal(fy_key_load(&k, path, &err), FY_EPERM);
  char want[1100];
  snprintf(want, sizeof(want), "key file %s: mode 0640 lets group read it; run chmod 600 %s", path, path);
  assert_string_equal(err.msg, want);
}

static void test_load_not_a_file(void **state) {
  struct ctx *c = *state;
  expect_load_error(c->dir, FY_EINVAL, "is not a regular file (it is a directory)");

  char fifo[512];
  path_in(c, "fifo", fifo);
  assert_int_equal(mkfifo(fifo, 0600), 0);
  expect_load_error(fifo, FY_EINVAL, "(it is a FIFO)"); /* and does not hang */

  char missing[512];
  path_in(c, "missing.key", missing);
  expect_load_error(missing, FY_ENOENT, "No such file");
}

static void test_load_symlinks(void **state) {
  struct ctx *c = *state;
  struct fy_key key, got;
  char path[512], link[512];
  save_seeded(c, "real.key", "linked", &key, path);
  path_in(c, "link.key", link);
  assert_int_equal(symlink(path, link), 0);

  /* Followed, as NixOS links host keys... */
  struct fy_err err;
  assert_int_equal(fy_key_load(&got, link, &err), 0);
  assert_true(fy_nodeid_equal(&got.id, &key.id));
  fy_key_free(&got);

  /* ...but the permission check is on the file itself, not the link. */
  assert_int_equal(chmod(path, 0644), 0);
  expect_load_error(link, FY_EPERM, "mode 0644");
  fy_key_free(&key);
}

static void test_load_bad_contents(void **state) {
  struct ctx *c = *state;
  char path[512];
  path_in(c, "bad.key", path);

  write_file(path, "", 0, 0600);
  expect_load_error(path, FY_EINVAL, "empty");

  uint8_t noise[1000];
  randombytes_buf(noise, sizeof(noise));
  noise[0] = 'x';
  write_file(path, noise, sizeof(noise), 0600);
  expect_load_error(path, FY_EINVAL, "missing '-----BEGIN OPENSSH PRIVATE KEY-----'");

  /* The caller's file name comes first, then what was wrong. */
  struct fy_err err;
  struct fy_key key;
  assert_int_equal(fy_key_load(&key, path, &err), FY_EINVAL);
  char prefix[600];
  snprintf(prefix, sizeof(prefix), "key file %s: ", path);
  assert_int_equal(strncmp(err.msg, prefix, strlen(prefix)), 0);

  /* Valid armor around random base64. */
  write_armored(path, noise, 300);
  expect_load_error(path, FY_EINVAL, "not an openssh-key-v1 container");

  /* Larger than a key file can be. */
  char *big = malloc(65537);
  assert_non_null(big);
  memset(big, 'A', 65537);
  write_file(path, big, 65537, 0600);
  expect_load_error(path, FY_ELIMIT, "is 65537 bytes; a key file is at most 65536");
  free(big);
}

static void test_load_truncated(void **state) {
  struct ctx *c = *state;
  struct fy_key key;
  char good[512], path[512];
  save_seeded(c, "good.key", "trunc", &key, good);
  fy_key_free(&key);
  size_t len;
  char *text = read_file(good, &len);
  size_t begin = strlen("-----BEGIN OPENSSH PRIVATE KEY-----\n");
  path_in(c, "cut.key", path);

  struct {
    size_t cut;
    const char *want;
  } cases[] = {
      {begin, "missing '-----END OPENSSH PRIVATE KEY-----' armor line"}, /* after the armor */
      {begin - 1, "truncated after the '-----BEGIN"},                    /* inside the newline */
      {begin + 33, "missing '-----END"},                                 /* mid-base64 */
      {begin + 70, "missing '-----END"},                                 /* a line end */
      {len - 20, "missing '-----END"},                                   /* in the END line */
      {12, "truncated inside the '-----BEGIN"},                          /* in the BEGIN line */
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    write_file(path, text, cases[i].cut, 0600);
    expect_load_error(path, FY_EINVAL, cases[i].want);
  }
  /* Every other cut fails too. */
  for (size_t cut = 0; cut + 1 < len; cut += 7) {
    write_file(path, text, cut, 0600);
    struct fy_err err;
    assert_true(fy_key_load(&key, path, &err) < 0);
  }
  free(text);
}

static void test_load_edited(void **state) {
  struct ctx *c = *state;
  struct fy_key key;
  char good[512], path[512];
  save_seeded(c, "good.key", "edit", &key, good);
  fy_key_free(&key);
  size_t len;
  char *text = read_file(good, &len);
  uint8_t bin[1024], copy[1024];
  size_t n = unarmor(text, bin, sizeof(bin));
  free(text);
  path_in(c, "edited.key", path);

  /* Re-armoring the unedited bytes loads: the edit is what breaks it. */
  write_armored(path, bin, n);
  struct fy_err err;
  assert_int_equal(fy_key_load(&key, path, &err), 0);
  fy_key_free(&key);

  memcpy(copy, bin, n);
  copy[OFF_CHECK_INT + 7] ^= 0x01; /* second check-int */
  write_armored(path, copy, n);
  expect_load_error(path, FY_EINVAL, "check-int mismatch");

  memcpy(copy, bin, n);
  copy[OFF_SK + 40] ^= 0x01; /* the public half of the 64-byte secret key */
  write_armored(path, copy, n);
  expect_load_error(path, FY_EINVAL, "secret key's public half differs from the public key");

  memcpy(copy, bin, n);
  copy[OFF_SK + 3] ^= 0x01; /* the seed */
  write_armored(path, copy, n);
  expect_load_error(path, FY_EINVAL, "seed does not derive the public key");

  memcpy(copy, bin, n);
  copy[n - 1] ^= 0x40; /* the last padding byte */
  write_armored(path, copy, n);
  expect_load_error(path, FY_EINVAL, "padding byte");
}

/* ---- OpenSSH interop ----------------------------------------------------------- */

static void test_ssh_keygen_key_loads(void **state) {
  REQUIRE_SSH_KEYGEN();
  struct ctx *c = *state;
  ssh_keygen(c, "k", "-t ed25519 -N '' -C test");
  char path[512], pub_path[512];
  path_in(c, "k", path);
  path_in(c, "k.pub", pub_path);

  struct fy_err err;
  struct fy_key key;
  if (fy_key_load(&key, path, &err) != 0)
    fail_msg("load: %s", err.msg);
  assert_string_equal(key.comment, "test");

  /* The id equals the .pub file's key... */
  size_t len;
  char *pub = read_file(pub_path, &len);
  struct fy_nodeid id;
  if (fy_nodeid_parse(pub, &id, &err) != 0)
    fail_msg("parse %s: %s", pub, err.msg);
  assert_true(fy_nodeid_equal(&id, &key.id));
  free(pub);

  /* ...and what ssh-keygen derives from the private key file. */
  char cmd[1024], out[4096];
  snprintf(cmd, sizeof(cmd), "ssh-keygen -y -f '%s' 2>&1", path);
  assert_int_equal(run(cmd, out, sizeof(out)), 0);
  assert_int_equal(fy_nodeid_parse(out, &id, &err), 0);
  assert_true(fy_nodeid_equal(&id, &key.id));

  /* The fingerprint is the SHA256:... field of ssh-keygen -l. */
  snprintf(cmd, sizeof(cmd), "ssh-keygen -l -f '%s' 2>&1", path);
  assert_int_equal(run(cmd, out, sizeof(out)), 0);
  char theirs[128] = "";
  assert_int_equal(sscanf(out, "%*d %127s", theirs), 1);
  char ours[FY_FINGERPRINT_MAX];
  fy_nodeid_fingerprint(&key.id, ours);
  assert_string_equal(ours, theirs);

  /* Re-encoding with the file's check-int gives ssh-keygen's bytes exactly. */
  char *file = read_file(path, &len);
  uint8_t bin[1024];
  size_t n = unarmor(file, bin, sizeof(bin));
  assert_true(n > OFF_CHECK_INT + 4);
  uint32_t check = (uint32_t)bin[OFF_CHECK_INT] << 24 | (uint32_t)bin[OFF_CHECK_INT + 1] << 16 |
                   (uint32_t)bin[OFF_CHECK_INT + 2] << 8 | bin[OFF_CHECK_INT + 3];
  struct fy_openssh_key ok;
  memcpy(ok.seed, key.sk, 32);
  memcpy(ok.pk, key.id.key, 32);
  snprintf(ok.comment, sizeof(ok.comment), "%s", key.comment);
  char *mine = NULL;
  size_t mine_len = 0;
  assert_int_equal(fy_openssh_encode_private(&ok, check, &mine, &mine_len, &err), 0);
  assert_int_equal(mine_len, len);
  assert_string_equal(mine, file);
  fy_openssh_key_wipe(&ok);
  sodium_memzero(mine, mine_len);
  free(mine);
  free(file);
  fy_key_free(&key);
}

static void test_ssh_keygen_reads_ferry_key(void **state) {
  REQUIRE_SSH_KEYGEN();
  struct ctx *c = *state;
  struct fy_err err;
  struct fy_key key;
  char path[512];
  assert_int_equal(fy_key_generate(&key, &err), 0);
  snprintf(key.comment, sizeof(key.comment), "ferry@test");
  path_in(c, "ferry.key", path);
  assert_int_equal(fy_key_save(&key, path, &err), 0);

  char cmd[1024], out[4096];
  snprintf(cmd, sizeof(cmd), "ssh-keygen -y -f '%s' 2>&1", path);
  int rc = run(cmd, out, sizeof(out));
  if (rc != 0)
    fail_msg("ssh-keygen -y refused ferry's key: %s", out);
  char *line = NULL;
  assert_int_equal(fy_openssh_format_public(key.id.key, "ferry@test", &line, &err), 0);
  out[strcspn(out, "\n")] = '\0';
  assert_string_equal(out, line);
  free(line);
  struct fy_nodeid id;
  assert_int_equal(fy_nodeid_parse(out, &id, &err), 0);
  assert_true(fy_nodeid_equal(&id, &key.id));

  snprintf(cmd, sizeof(cmd), "ssh-keygen -l -f '%s' 2>&1", path);
  assert_int_equal(run(cmd, out, sizeof(out)), 0);
  char theirs[128] = "", ours[FY_FINGERPRINT_MAX];
  assert_int_equal(sscanf(out, "%*d %127s", theirs), 1);
  fy_nodeid_fingerprint(&key.id, ours);
  assert_string_equal(ours, theirs);
  fy_key_free(&key);
}

static void test_ssh_keygen_refused_keys(void **state) {
  REQUIRE_SSH_KEYGEN();
  struct ctx *c = *state;
  char path[512];

  ssh_keygen(c, "enc", "-t ed25519 -N secret -C enc");
  path_in(c, "enc", path);
  expect_load_error(path, FY_EUNSUPPORTED, "encrypted (cipher 'aes256-ctr', kdf 'bcrypt')");
  expect_load_error(path, FY_EUNSUPPORTED, "ssh-keygen -p");

  ssh_keygen(c, "rsa", "-t rsa -b 2048 -N '' -C rsa");
  path_in(c, "rsa", path);
  expect_load_error(path, FY_EUNSUPPORTED, "key type 'ssh-rsa' is not supported");

  ssh_keygen(c, "ecdsa", "-t ecdsa -N '' -C ecdsa");
  path_in(c, "ecdsa", path);
  expect_load_error(path, FY_EUNSUPPORTED, "key type 'ecdsa-sha2-nistp256' is not supported");

  ssh_keygen(c, "pem", "-t ecdsa -m PEM -N '' -C pem");
  path_in(c, "pem", path);
  expect_load_error(path, FY_EUNSUPPORTED, "'EC PRIVATE KEY'");

  /* The public half is not a key file. */
  path_in(c, "ecdsa.pub", path);
  assert_int_equal(chmod(path, 0600), 0);
  expect_load_error(path, FY_EINVAL, "public key line");
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(test_rfc8032_signature),
      T(test_sign_verify),
      T(test_save_load_round_trip),
      T(test_save_refuses_to_overwrite),
      T(test_load_modes),
      T(test_load_not_a_file),
      T(test_load_symlinks),
      T(test_load_bad_contents),
      T(test_load_truncated),
      T(test_load_edited),
      T(test_ssh_keygen_key_loads),
      T(test_ssh_keygen_reads_ferry_key),
      T(test_ssh_keygen_refused_keys),
  };
  return cmocka_run_group_tests(tests, group_setup, NULL);
}
