#!/usr/bin/env bash
# The fleet's trust end to end, with real processes on loopback: a
# coordinator, agents and admins, each its own `ferry` process with its own
# data directory, as a user runs them.
#
#   tests/fleet.sh FERRY_BINARY
#
# Prints one line per check and ends with "N passed, N failed"; exit 0 when
# none failed. Every process it starts is stopped on exit.
set -uo pipefail

ferry=${1:?usage: fleet.sh FERRY_BINARY}
test_name=fleet
# shellcheck source=tests/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export FERRY_LOG_LEVEL=info
ticket=""

# ---- the fleet -----------------------------------------------------------------------------

"$ferry" key generate --out "$tmp/owner.key" >/dev/null 2>&1 || exit 1
owner_id=$("$ferry" key show --id "$tmp/owner.key" 2>/dev/null)
"$ferry" coordinator init --owner "$owner_id" --data-dir "$tmp/coord" >/dev/null 2>"$tmp/init.err" || {
  cat "$tmp/init.err"
  exit 1
}

coord_pid=""
coord_listen=127.0.0.1:0
start_coordinator() {
  rm -f "$tmp/coord.out" # the previous run's lines must not count as this one's
  "$ferry" coordinator --data-dir "$tmp/coord" --listen "$coord_listen" >"$tmp/coord.out" 2>>"$tmp/coord.log" &
  coord_pid=$!
  pids+=("$coord_pid")
  until_ok 10 grep -q '^admins connect with' "$tmp/coord.out" || return 1
  spec=$(sed -n 's/^admins connect with: --coordinator //p' "$tmp/coord.out")
  coord_listen=${spec#*@} # restarts keep the port
}
stop_coordinator() { # SIGNAL
  kill -"$1" "$coord_pid" 2>/dev/null
  wait "$coord_pid" 2>/dev/null
}
start_coordinator || { echo "coordinator did not start"; cat "$tmp/coord.log"; exit 1; }
coord_id=${spec%@*}

# admin: the owner, with its own data directory (its outbox).
admin() { FERRY_KEY_FILE="$tmp/owner.key" FERRY_DATA_DIR="$tmp/admin" FERRY_COORDINATOR="$spec" \
  FERRY_LOG_LEVEL=warn FERRY_TIMEOUT=${ADMIN_TIMEOUT:-5s} "$ferry" admin "$@"; }
# admin_as KEYNAME: another admin.
admin_as() {
  local who=$1
  shift
  FERRY_KEY_FILE="$tmp/$who.key" FERRY_DATA_DIR="$tmp/admin-$who" FERRY_COORDINATOR="$spec" \
    FERRY_LOG_LEVEL=warn FERRY_TIMEOUT=5s "$ferry" admin "$@"
}
agent_flags() { # NAME
  echo --data-dir "$tmp/$1" --key-file "$tmp/$1/node.key" --enroll-poll 300ms --keepalive 500ms --facts-interval 2s
}
start_agent() { # NAME [flags...]
  local name=$1
  shift
  mkdir -p "$tmp/$name"
  # shellcheck disable=SC2046
  "$ferry" agent $(agent_flags "$name") "$@" >>"$tmp/$name.log" 2>&1 &
  eval "pid_$name=$!"
  pids+=("$!")
}
agent_id() { "$ferry" key show --id "$tmp/$1/node.key" 2>/dev/null; }
agent_status() { "$ferry" agent status --data-dir "$tmp/$1" 2>/dev/null; }

# ---- checks ---------------------------------------------------------------------------------

t_enroll_by_ticket() {
  run 0 admin enroll create --tenant lab --labels site=berlin,role=kiosk --ttl 1h --uses 2 || return 1
  ticket=$out
  has "$ticket" "ferry-ticket1." || return 1
  mkdir -p "$tmp/a1"
  # shellcheck disable=SC2046
  run 0 "$ferry" agent enroll $(agent_flags a1) "$ticket" || return 1
  has "$out" "enrolled in tenant lab" || return 1
  start_agent a1 --labels rack=3
  local id
  id=$(agent_id a1)
  until_ok 15 eval 'admin agents show "$id" | grep -q "kernel"' || return 1
  run 0 admin agents show "$id" || return 1
  has "$out" "enrolled" && has "$out" "lab" && has "$out" "site=berlin" && has "$out" "$(uname -r)" || return 1
  run 0 admin agents list --json && has "$out" "$id" || return 1
  until_ok 10 eval 'agent_status a1 | grep -q "link.*up"'
}

t_pending_then_approved() {
  start_agent a2 --coordinator "$spec"
  until_ok 10 test -s "$tmp/a2/node.key" || return 1
  local id
  id=$(agent_id a2)
  until_ok 10 eval 'admin agents list | grep "${id:0:12}" | grep -q pending' || return 1
  until_ok 5 eval 'agent_status a2 | grep -q pending' || return 1
  run 0 admin agents approve "$id" --tenant lab --labels site=paris || return 1
  has "$out" "applied: agents.approve" || return 1
  until_ok 10 eval 'agent_status a2 | grep -q enrolled' || return 1
  until_ok 10 eval 'admin agents show "${id:0:8}" | grep -q kernel'
}

t_revoked_agent_refused() {
  local id
  id=$(agent_id a2)
  run 0 admin agents revoke "$id" || return 1
  # its link is cut and every new one refused; the agent says why and stops
  until_ok 15 eval '! kill -0 $pid_a2 2>/dev/null' || return 1
  wait "$pid_a2"
  grep -q "revoked" "$tmp/a2.log" || return 1
  # the same key on a fresh disk, with a good ticket: still refused
  mkdir -p "$tmp/a2b" && cp "$tmp/a2/node.key" "$tmp/a2b/node.key"
  # shellcheck disable=SC2046
  run 1 "$ferry" agent enroll $(agent_flags a2b) "$ticket" && has "$err" "revoked" || return 1
  run 0 admin agents list && has "$out" "revoked"
}

t_ticket_used_up() {
  # a1 took one of two uses; a3 takes the second; a4 finds it used up
  mkdir -p "$tmp/a3" "$tmp/a4"
  # shellcheck disable=SC2046
  run 0 "$ferry" agent enroll $(agent_flags a3) "$ticket" || return 1
  # shellcheck disable=SC2046
  run 1 "$ferry" agent enroll $(agent_flags a4) "$ticket" && has "$err" "used up"
}

t_ticket_expired() {
  run 0 admin enroll create --tenant lab --ttl 1s || return 1
  local t=$out
  sleep 1.5
  mkdir -p "$tmp/a5"
  # shellcheck disable=SC2046
  run 1 "$ferry" agent enroll $(agent_flags a5) "$t" && has "$err" "expired"
}

t_ticket_forged() {
  # the same ticket with one byte of its secret changed
  local forged
  forged=$(python3 - "$ticket" <<'EOF'
import base64, sys
t = sys.argv[1].strip()
prefix = "ferry-ticket1."
raw = bytearray(base64.urlsafe_b64decode(t[len(prefix):] + "=" * (-len(t) % 4)))
i = raw.index(b"\xa1s\xc4\x20") + 4
raw[i] ^= 0xff
print(prefix + base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("="))
EOF
  ) || return 1
  mkdir -p "$tmp/a6"
  # shellcheck disable=SC2046
  run 1 "$ferry" agent enroll $(agent_flags a6) "$forged" && has "$err" "does not know it"
}

t_ticket_for_another_coordinator() {
  # made by an admin of another coordinator, naming this one's address
  "$ferry" key generate --out "$tmp/other.key" >/dev/null 2>&1
  local other
  other=$("$ferry" key show --id "$tmp/other.key" 2>/dev/null)
  FERRY_KEY_FILE="$tmp/owner.key" FERRY_DATA_DIR="$tmp/admin-other" FERRY_COORDINATOR="$other@$coord_listen" \
    FERRY_LOG_LEVEL=warn FERRY_TIMEOUT=1s "$ferry" admin enroll create --tenant lab >"$tmp/other.ticket" 2>/dev/null
  [ -s "$tmp/other.ticket" ] || return 1
  mkdir -p "$tmp/a7"
  # shellcheck disable=SC2046
  run 1 "$ferry" agent enroll $(agent_flags a7) "$(cat "$tmp/other.ticket")" && has "$err" "${other:0:12}"
}

t_revoked_ticket_refused() {
  run 0 admin enroll create --tenant lab --uses 5 || return 1
  local t=$out id
  run 0 admin enroll list --json || return 1
  id=$(python3 -c 'import json,sys; print([x["id"] for x in json.load(sys.stdin)["tickets"] if x["uses"] == 5][0])' <<<"$out") || return 1
  run 0 admin enroll revoke "$id" && has "$out" "applied: enroll.revoke" || return 1
  run 0 admin enroll list && has "$out" "revoked" || return 1
  mkdir -p "$tmp/a9"
  # shellcheck disable=SC2046
  run 1 "$ferry" agent enroll $(agent_flags a9) "$t" && has "$err" "an admin revoked it"
}

t_facts_survive_coordinator_restart() {
  local id
  id=$(agent_id a1)
  kill -TERM "$pid_a1"
  wait "$pid_a1"
  stop_coordinator KILL
  start_coordinator || return 1
  run 0 admin agents show "$id" || return 1
  has "$out" "$(uname -r)" && has "$out" "site=berlin" && has "$out" "online:      no"
}

t_admin_queues_while_coordinator_down() {
  # a pending agent to approve
  start_agent a8 --coordinator "$spec"
  until_ok 10 test -s "$tmp/a8/node.key" || return 1
  local id
  id=$(agent_id a8)
  until_ok 10 eval 'admin agents list | grep "${id:0:12}" | grep -q pending' || return 1
  stop_coordinator TERM
  ADMIN_TIMEOUT=1s run 75 admin agents approve "$id" --tenant lab || return 1
  has "$err" "ferry admin sync" || return 1
  # the same admin, blocking until applied, started while the coordinator is down
  admin admins list >/dev/null 2>&1 && return 1
  "$ferry" key generate --out "$tmp/viewer.key" >/dev/null 2>&1
  (admin admins add "$("$ferry" key show --id "$tmp/viewer.key")" --role viewer --tenants lab --wait \
    >"$tmp/wait.out" 2>"$tmp/wait.err"; echo $? >"$tmp/wait.rc") &
  local waiter=$!
  sleep 1
  kill -0 $waiter || return 1
  start_coordinator || return 1
  run 0 admin sync || return 1
  until_ok 20 test -s "$tmp/wait.rc" || return 1
  [ "$(cat "$tmp/wait.rc")" = 0 ] && has "$(cat "$tmp/wait.out")" "applied: admin.set" || return 1
  until_ok 10 eval 'agent_status a8 | grep -q enrolled' || return 1
  run 0 admin admins list && has "$out" "viewer"
}

t_admin_refusals() {
  # the viewer added above may read but not approve; an operator of lab may not act in prod
  local id
  id=$(agent_id a1)
  run 0 admin_as viewer agents list && has "$out" "${id:0:12}" || return 1
  run 1 admin_as viewer agents approve "$id" --tenant lab && has "$err" "refused (forbidden_role)" || return 1
  "$ferry" key generate --out "$tmp/oplab.key" >/dev/null 2>&1
  run 0 admin admins add "$("$ferry" key show --id "$tmp/oplab.key")" --role operator --tenants lab || return 1
  run 1 admin_as oplab enroll create --tenant prod && has "$err" "refused (forbidden_tenant)" || return 1
  "$ferry" key generate --out "$tmp/nobody.key" >/dev/null 2>&1
  run 1 admin_as nobody agents list && has "$err" "not an admin"
}

check enroll_by_ticket t_enroll_by_ticket
check pending_then_approved t_pending_then_approved
check revoked_agent_refused t_revoked_agent_refused
check ticket_used_up t_ticket_used_up
check ticket_expired t_ticket_expired
check ticket_forged t_ticket_forged
check ticket_for_another_coordinator t_ticket_for_another_coordinator
check revoked_ticket_refused t_revoked_ticket_refused
check facts_survive_coordinator_restart t_facts_survive_coordinator_restart
check admin_queues_while_coordinator_down t_admin_queues_while_coordinator_down
check admin_refusals t_admin_refusals

finish
