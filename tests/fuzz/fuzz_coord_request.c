/* libFuzzer target for what the coordinator decodes from the network
 * (coordinator/coord_state.h): admin.query requests and admin.cmd
 * envelopes, against a real store made once in a temporary directory.
 * Commands run in a write transaction that is then aborted, so the store
 * stays as it was and every input meets the same state. Checks, besides
 * memory safety, that a failed query names an RPC code and a message, and
 * that a command is either applied or refused with a known refusal. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "coordinator/coord_state.h"
#include "outbox/inbox.h"
#include "outbox/outbox.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct fy_store *store;
static struct fy_outbox *outbox;
static struct fy_coord coord;
static struct fy_key owner;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  char dir[] = "/tmp/ferry-fuzz-coord-XXXXXX";
  struct fy_key ckey;
  uint8_t seed[32];
  if (!mkdtemp(dir) || fy_crypto_init(NULL) < 0)
    abort();
  memset(seed, 1, sizeof(seed));
  if (fy_key_from_seed(&owner, seed, NULL) < 0)
    abort();
  memset(seed, 2, sizeof(seed));
  if (fy_key_from_seed(&ckey, seed, NULL) < 0)
    abort();
  const struct fy_store_schema *schemas[] = {&fy_outbox_schema, &fy_inbox_schema, &fy_coord_schema};
  if (fy_store_open(&store, dir, schemas, 3, &(struct fy_store_opts){0}, NULL) < 0 ||
      fy_outbox_open(&outbox, store, &(struct fy_outbox_config){0}, NULL) < 0 ||
      fy_coord_init_store(store, &ckey.id, &owner.id, 1, 1767225600000ull, NULL) < 0)
    abort();
  coord = (struct fy_coord){.id = ckey.id, .store = store, .outbox = outbox};
  fy_key_free(&ckey);
  return 0;
}

struct apply {
  const uint8_t *data;
  size_t size;
  int result;
};

static int apply_then_abort(struct fy_txn *t, void *user) {
  struct apply *a = user;
  a->result = fy_coord_apply(&coord, t, a->data, a->size, 1767225600000ull, NULL);
  return fy_err_set(fy_txn_err(t), FY_EINVAL, "rolled back on purpose");
}

/* Signatures cannot be fuzzed into validity: an input starting with 'S'
 * is the args map of a command the owner signs here, so the args decoders
 * and the commands' checks see fuzzed bytes too. */
static const char *const commands[] = {"agents.approve", "agents.revoke", "enroll.create",
                                       "enroll.revoke",  "admin.set",     "admin.remove"};

static void signed_command(const uint8_t *data, size_t size) {
  if (size < 2)
    return;
  struct fy_cmd_body b = {.issuer = owner.id,
                          .coordinator = coord.id,
                          .seq = 1,
                          .issued_at = 1767225600000ull,
                          .expires_at = 1767229200000ull,
                          .args = data + 2,
                          .args_len = size - 2};
  snprintf(b.cmd, sizeof(b.cmd), "%s", commands[data[1] % (sizeof(commands) / sizeof(commands[0]))]);
  snprintf(b.tenant, sizeof(b.tenant), "%s", data[1] & 0x80 ? "" : "lab");
  struct fy_buf body = FY_BUF_INIT, env = FY_BUF_INIT;
  if (fy_cmd_body_encode(&b, &body, NULL) == 0 &&
      fy_envelope_seal(&owner, FY_CTX_COMMAND, body.data, body.len, &env, NULL) == 0) {
    struct apply a = {env.data, env.len, 0};
    (void)fy_store_write(store, apply_then_abort, &a, NULL);
    if (a.result < 0 || a.result > FY_CMD_CONFLICT)
      abort();
  }
  fy_buf_free(&body);
  fy_buf_free(&env);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 0 && data[0] == 'S') {
    signed_command(data, size);
    return 0;
  }
  struct fy_buf reply = FY_BUF_INIT;
  struct fy_err err = {0};
  int code = 0;
  int rc = fy_coord_query(&coord, &owner.id, data, size, &reply, &code, &err);
  if (rc < 0 && (code == 0 || err.msg[0] == '\0'))
    abort();
  fy_buf_free(&reply);
  struct apply a = {data, size, 0};
  (void)fy_store_write(store, apply_then_abort, &a, NULL);
  if (a.result > FY_CMD_CONFLICT)
    abort();
  return 0;
}
