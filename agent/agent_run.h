/* The agent's runtime: one libuv loop running a node (src/node) that only
 * dials, kept connected to the agent's coordinator, through enrollment
 * (proto/fleet.md) to reporting facts and keeping its view of the admins.
 *
 * Coordinator. From the stored enrollment when there is one (a ticket or a
 * `coordinator` given as well is then ignored), else from the ticket, else
 * from the peerspec; with none, fy_agent_run returns FY_EXIT_USAGE at once.
 * Names in the addresses are resolved once, at start (blocking).
 *
 * States (written to <data_dir>/status on every change, agent_state.h):
 *   starting   opening the store and the endpoint
 *   enrolling  not enrolled: `agent.enroll` (with the ticket's secret, if
 *              any) on every new connection to the coordinator
 *   pending    the coordinator recorded the agent without a ticket: asked
 *              again every enroll_poll_ms until an admin approves it
 *   enrolled   the record and the accepted statements are stored (one
 *              transaction); facts flow (on start, on change, periodically)
 *              and `trust` statements from the coordinator are applied
 *
 * Rollouts (proto/rollout.md). Once enrolled the apply engine (apply.h) runs
 * on the node's store. A `desired` message from the coordinator is checked
 * on the thread pool inside the inbox's transaction (fy_manifest_verify
 * against the stored trust view, the tenant, hw_model/hw_revision and the
 * installed version, then the update mode): refused, it is answered with a `failed`
 * report in that transaction; accepted, it is stored as the one pending
 * desired state (a newer one replaces one still waiting) and the loop is
 * woken. The loop starts the pending state when the engine is not in an
 * attempt and then deletes it; the deletion names what was started, so a
 * newer desired state that arrived meanwhile stays. One attempt at a time.
 * Every engine transition queues an `apply.report` in the engine's own
 * transaction. Facts report the engine's installed version once there is
 * one, else `version`.
 *   revoked    the coordinator said so; fy_agent_run returns FY_EXIT_FAIL
 * A refused ticket (unknown, expired, used up) also ends the run with
 * FY_EXIT_FAIL, logging the coordinator's message at error: retrying cannot
 * heal it. A ticket already past its expiry is refused before any dial.
 *
 * The ticket's secret is copied into guarded memory (sodium_malloc) and
 * wiped once enrolled and when the run ends; the caller wipes its own copy.
 * Once enrolled, <data_dir>/ticket (where `ferry agent enroll` keeps it) is
 * removed: a used ticket is no use to the agent and a secret to others.
 *
 * The run ends on SIGINT or SIGTERM (closing the node cleanly), on a refusal,
 * or, with until_enrolled, once enrolled. */
#ifndef FY_AGENT_AGENT_RUN_H
#define FY_AGENT_AGENT_RUN_H

#include <stdbool.h>
#include <stdint.h>

#include "agent/agent_state.h"
#include "base/err.h"
#include "base/log.h"
#include "crypto/key.h"
#include "fleet/labels.h"
#include "fleet/ticket.h"
#include "fleet/update_mode.h"
#include "node/peerspec.h"

#define FY_AGENT_TICKET_FILE "ticket" /* in data_dir, written by `ferry agent enroll` */
#define FY_AGENT_ENROLL_METHOD "agent.enroll"
#define FY_AGENT_TOPIC_FACTS "facts"
#define FY_AGENT_TOPIC_TRUST "trust"
#define FY_AGENT_TOPIC_DESIRED "desired"     /* coordinator -> agent, proto/rollout.md */
#define FY_AGENT_TOPIC_REPORT "apply.report" /* agent -> coordinator */

/* Everything is borrowed for the duration of fy_agent_run. */
struct fy_agent_options {
  const char *data_dir;
  const struct fy_key *key;
  const char *listen;                    /* "0.0.0.0:0" */
  const struct fy_ticket *ticket;        /* NULL: none */
  const char *ticket_path;               /* where the ticket came from (removed once enrolled); may be NULL */
  const struct fy_peerspec *coordinator; /* NULL: none */
  const struct fy_labels *labels;        /* the agent's own, sent in facts; NULL: none */
  const char *version;                   /* the deployed version reported in facts */
  uint64_t facts_interval_ms;            /* periodic facts */
  uint64_t enroll_poll_ms;               /* a pending agent asks again this often */
  uint64_t keepalive_ms;
  /* Rollouts (apply.h): the engine's inputs. work_dir NULL: DATA_DIR/artifacts. */
  const char *work_dir;
  const char *const *apply_command;  /* NULL-terminated argv; NULL: script artifacts fail */
  const char *const *health_command; /* NULL-terminated argv; NULL: always healthy */
  uint64_t apply_timeout_ms, health_timeout_ms, health_interval_ms;
  uint32_t health_retries;
  /* How this machine wants updates (fleet/update_mode.h), its hardware for
   * the manifest's compatible list. NULL: follow, hardware unknown. */
  const struct fy_update_prefs *update;
  bool until_enrolled; /* `ferry agent enroll`: stop once enrolled */
  const struct fy_log *log;
};

/* What the run ended with, for the caller to print. */
struct fy_agent_outcome {
  enum fy_agent_state state;
  bool enrolled;
  bool already_enrolled; /* the store held a record before this run */
  struct fy_nodeid coordinator;
  char tenant[FY_TENANT_MAX + 1];
};

/* Runs the agent (see the top) on a loop of its own. Returns an exit status
 * (enum fy_exit): 0 when stopped by a signal or enrolled with
 * until_enrolled; FY_EXIT_FAIL for a refusal or a failure to start (err says
 * which); FY_EXIT_USAGE when no coordinator is known. out may be NULL. */
int fy_agent_run(const struct fy_agent_options *o, struct fy_agent_outcome *out, struct fy_err *err);

#endif
