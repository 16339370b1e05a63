#!/usr/bin/env bash
# Staged rollouts end to end, with real processes on loopback: a coordinator,
# an admin and five agents, each its own `ferry` process and data directory.
# The agents install a script artifact with an apply script and check it
# with a health command; one agent's health check always fails.
#
#   tests/rollout.sh FERRY_BINARY
#
# Ends with "N passed, N failed"; exit 0 when none failed.
set -uo pipefail

ferry=${1:?usage: rollout.sh FERRY_BINARY}
test_name=rollout
# shellcheck source=tests/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export FERRY_LOG_LEVEL=info
NAGENTS=5
SICK=3 # this agent's health check fails: it rolls back

# ---- the fleet ---------------------------------------------------------------------------

# The applier: installs the artifact next to the agent's data, or puts the
# previous version back. The agent runs it with FERRY_ACTION and friends.
cat >"$tmp/apply.sh" <<'EOF'
#!/bin/sh
dir=$(dirname "$FERRY_ARTIFACT")/..
case "$FERRY_ACTION" in
activate) cp "$FERRY_ARTIFACT" "$dir/installed" && echo "$FERRY_VERSION" >"$dir/installed.version" ;;
rollback) echo "${FERRY_PREVIOUS_VERSION:-none}" >"$dir/installed.version" ;;
*) exit 2 ;;
esac
echo "applied $FERRY_ACTION $FERRY_VERSION"
EOF
chmod +x "$tmp/apply.sh"

"$ferry" key generate --out "$tmp/owner.key" >/dev/null 2>&1 || exit 1
"$ferry" coordinator init --owner "$("$ferry" key show --id "$tmp/owner.key")" --data-dir "$tmp/coord" \
  >/dev/null 2>&1 || exit 1
coord_pid="" coord_listen=127.0.0.1:0 spec=""
start_coordinator() {
  rm -f "$tmp/coord.out"
  "$ferry" coordinator --data-dir "$tmp/coord" --listen "$coord_listen" >"$tmp/coord.out" 2>>"$tmp/coord.log" &
  coord_pid=$!
  pids+=("$coord_pid")
  until_ok 10 grep -q '^admins connect with' "$tmp/coord.out" || return 1
  spec=$(sed -n 's/^admins connect with: --coordinator //p' "$tmp/coord.out")
  coord_listen=${spec#*@}
}
start_coordinator || { echo "coordinator did not start"; exit 1; }

admin() { FERRY_KEY_FILE="$tmp/owner.key" FERRY_DATA_DIR="$tmp/admin" FERRY_COORDINATOR="$spec" \
  FERRY_LOG_LEVEL=warn FERRY_TIMEOUT=10s "$ferry" admin "$@"; }

declare -A agent_pid
start_agent() { # N [flags...]
  local n=$1
  shift
  local health=/bin/true
  [ "$n" = "$SICK" ] && health=/bin/false
  spawn "$tmp/a$n.log" "$ferry" agent --data-dir "$tmp/a$n" --keepalive 500ms --facts-interval 2s \
    --apply-command "$tmp/apply.sh" --health-command "$health" --health-timeout 5s --version 1.0.0 "$@"
  agent_pid[$n]=$!
}
installed() { cat "$tmp/a$1/installed.version" 2>/dev/null || echo "none"; }

# A rollout's JSON as `ferry admin rollout show --json` prints it; field via python.
rollout_field() { # ID EXPR  (EXPR over r = the reply)
  admin rollout show "$1" --json 2>>"$tmp/show.err" | python3 -c "import json,sys; r=json.load(sys.stdin); print($2)"
}
rollout_state() { rollout_field "$1" 'r["rollout"]["state"]'; }
target_state() { # ID AGENT_N
  local id
  id=$("$ferry" key show --id "$tmp/a$2/node.key")
  rollout_field "$1" "[t['state'] for t in r['targets'] if t['agent'] == '$id'][0]"
}
is_final() { [[ "$(rollout_state "$1")" =~ ^(completed|partial|failed|aborted)$ ]]; }
wait_final() { until_ok "$2" is_final "$1"; } # ID SECONDS

# An artifact file per version.
artifact() { # VERSION
  printf 'app %s\n' "$1" >"$tmp/app-$1"
  head -c 20000 /dev/urandom >>"$tmp/app-$1"
  run 0 admin artifact add --tenant lab --name app --version "$1" --file "$tmp/app-$1"
}

t_fleet_enrolls() {
  run 0 admin enroll create --tenant lab --uses "$NAGENTS" --ttl 10m || return 1
  local ticket=$out n
  for n in $(seq 1 $NAGENTS); do
    mkdir -p "$tmp/a$n"
    run 0 "$ferry" agent enroll --data-dir "$tmp/a$n" "$ticket" || return 1
    start_agent "$n"
  done
  until_ok 20 eval 'admin agents list | grep -c "1.0.0.*yes" | grep -qx $NAGENTS'
}

t_waves_with_a_rollback() {
  artifact 2.0.0 || return 1
  run 0 admin rollout create --tenant lab --artifact app@2.0.0 --waves 3 --max-failures 1 --min-success 0 \
    --id r2 || return 1
  run 0 admin rollout start r2 --tenant lab || return 1
  wait_final r2 60 || return 1
  [ "$(rollout_state r2)" = partial ] || return 1
  [ "$(target_state r2 $SICK)" = rolled_back ] || return 1
  local n
  for n in $(seq 1 $NAGENTS); do
    if [ "$n" = "$SICK" ]; then [ "$(installed "$n")" = 1.0.0 ] || [ "$(installed "$n")" = none ] || return 1
    else [ "$(installed "$n")" = 2.0.0 ] || return 1; fi
  done
  run 0 admin rollout show r2 && has "$out" "rolled_back"
}

t_failure_threshold_stops_later_waves() {
  artifact 3.0.0 || return 1
  # one wave per agent; the sick agent's failure ends the rollout there
  run 0 admin rollout create --tenant lab --artifact app@3.0.0 --waves $NAGENTS --max-failures 0 --id r3 || return 1
  run 0 admin rollout start r3 --tenant lab || return 1
  wait_final r3 60 || return 1
  [ "$(rollout_state r3)" = failed ] || return 1
  # every agent after the sick one's wave kept 2.0.0: no later wave started
  local waiting
  waiting=$(rollout_field r3 'sum(1 for t in r["targets"] if t["state"] == "waiting")')
  local sick_wave
  sick_wave=$(rollout_field r3 "[t['wave'] for t in r['targets'] if t['state'] == 'rolled_back'][0]")
  [ "$waiting" = $((NAGENTS - 1 - sick_wave)) ]
}

t_coordinator_killed_mid_rollout() {
  artifact 4.0.0 || return 1
  # every agent but the sick one, in 3 waves with a grace period to kill in
  run 0 admin rollout create --tenant lab --artifact app@4.0.0 --waves 2 --max-failures 1 --min-success 0 \
    --grace 2s --id r4 || return 1
  run 0 admin rollout start r4 --tenant lab || return 1
  until_ok 30 eval '[ "$(rollout_field r4 "r[\"rollout\"][\"wave\"]")" = 0 ] &&
    [ "$(rollout_field r4 "sum(1 for t in r[\"targets\"] if t[\"state\"] in (\"success\",\"rolled_back\"))")" -ge 1 ]' ||
    return 1
  kill -KILL "$coord_pid"
  wait "$coord_pid" 2>/dev/null
  start_coordinator || return 1
  wait_final r4 60 || return 1
  [ "$(rollout_state r4)" = partial ] || return 1
  local n
  for n in $(seq 1 $NAGENTS); do
    [ "$n" = "$SICK" ] || [ "$(installed "$n")" = 4.0.0 ] || return 1
  done
  # nothing applied twice: one activation per agent for 4.0.0 in its log
  for n in $(seq 1 $NAGENTS); do
    [ "$n" = "$SICK" ] && continue
    [ "$(grep -c 'applied activate 4.0.0' "$tmp/a$n.log")" -le 1 ] || return 1
  done
}

t_tampered_artifact_refused() {
  artifact 5.0.0 || return 1
  # the file changes after the admin signed its hash (same size, other bytes)
  printf 'evil' | dd of="$tmp/app-5.0.0" bs=1 seek=0 conv=notrunc status=none
  run 0 admin rollout create --tenant lab --artifact app@5.0.0 --waves 1 --max-failures 0 --id r5 || return 1
  run 0 admin rollout start r5 --tenant lab || return 1
  wait_final r5 60 || return 1
  [ "$(rollout_state r5)" = failed ] || return 1
  run 0 admin rollout show r5 && has "$out" "sha256" || return 1
  local n
  for n in $(seq 1 $NAGENTS); do
    [ "$(installed "$n")" != 5.0.0 ] || return 1
  done
}

check fleet_enrolls t_fleet_enrolls
check waves_with_a_rollback t_waves_with_a_rollback
check failure_threshold_stops_later_waves t_failure_threshold_stops_later_waves
check coordinator_killed_mid_rollout t_coordinator_killed_mid_rollout
check tampered_artifact_refused t_tampered_artifact_refused
finish
