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
mapfile -t HEALTHY < <(seq 1 $NAGENTS | grep -vx "$SICK")

# ---- the fleet ---------------------------------------------------------------------------

write_applier

"$ferry" key generate --out "$tmp/owner.key" >/dev/null 2>&1 || exit 1
"$ferry" coordinator init --owner "$("$ferry" key show --id "$tmp/owner.key")" --data-dir "$tmp/coord" \
  >/dev/null 2>&1 || exit 1
start_coordinator || { echo "coordinator did not start"; exit 1; }

admin() { admin_as owner "$@"; }

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
stop_agent() { # N [SIGNAL]
  kill -"${2:-TERM}" "${agent_pid[$1]}"
  wait "${agent_pid[$1]}" 2>/dev/null
  return 0
}
healthy_at() { # VERSION [N...]: every healthy agent but N... has VERSION installed
  local v=$1 n
  shift
  for n in "${HEALTHY[@]}"; do
    [[ " $* " == *" $n "* ]] && continue
    [ "$(installed "$n")" = "$v" ] || { echo "  agent $n has $(installed "$n"), not $v" >&2; return 1; }
  done
}

# An artifact file per version.
artifact() { # VERSION [FLAGS...]
  printf 'app %s\n' "$1" >"$tmp/app-$1"
  head -c 20000 /dev/urandom >>"$tmp/app-$1"
  run 0 admin artifact add --tenant lab --name app --version "$1" --file "$tmp/app-$1" "${@:2}"
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
    # the sick agent's first attempt rolls back to what ran before ferry (--version)
    if [ "$n" = "$SICK" ]; then [ "$(installed "$n")" = 1.0.0 ] || return 1
    else [ "$(installed "$n")" = 2.0.0 ] || return 1; fi
  done
  run 0 admin rollout show r2 && has "$out" "rolled_back" && has "$out" "rolled back to '1.0.0'"
}

t_update_log_of_an_agent() {
  # every step the sick agent reported for r2, with its applier's output
  local id
  id=$("$ferry" key show --id "$tmp/a$SICK/node.key")
  run 0 admin agents log "$id" || return 1
  has "$out" "r2  downloading  2.0.0" && has "$out" "r2  verifying  2.0.0" && has "$out" "r2  rolled_back" || return 1
  has "$out" "| applied activate 2.0.0" || return 1
  run 0 admin agents log "$id" --json && has "$out" '"state":"rolled_back"' || return 1
  # --follow keeps printing until interrupted
  timeout 3 env FERRY_KEY_FILE="$tmp/owner.key" FERRY_DATA_DIR="$tmp/admin-owner" FERRY_COORDINATOR="$spec" \
    FERRY_LOG_LEVEL=warn "$ferry" admin agents log "$id" --follow --interval 200ms >"$tmp/follow.out" 2>&1
  [ $? = 124 ] && grep -q 'rolled_back' "$tmp/follow.out"
}

t_retry_resends_to_the_failed_only() {
  # r2 ended partial: every agent activated 2.0.0 once, the sick one rolled it back
  local n
  for n in $(seq 1 $NAGENTS); do [ "$(activations "$n" 2.0.0)" = 1 ] || return 1; done
  run 0 admin rollout retry r2 --tenant lab || return 1
  wait_final r2 30 || return 1
  [ "$(rollout_state r2)" = partial ] || return 1
  [ "$(target_state r2 $SICK)" = rolled_back ] || return 1
  # the sick agent got it (and rolled it back) a second time; the others did not get it again
  [ "$(activations $SICK 2.0.0)" = 2 ] || return 1
  [ "$(grep -cx 'rollback 2.0.0' "$tmp/a$SICK/activations")" = 2 ] || return 1
  [ "$(grep -c 'desired.accepted.*r2' "$tmp/a$SICK.log")" = 2 ] || return 1
  for n in "${HEALTHY[@]}"; do
    [ "$(target_state r2 "$n")" = success ] && [ "$(activations "$n" 2.0.0)" = 1 ] || return 1
    [ "$(grep -c 'desired\..*r2' "$tmp/a$n.log")" = 1 ] || return 1
  done
  healthy_at 2.0.0
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
  # every agent, in 2 waves with a grace period to kill in; skip-offline (the default) on:
  # the restarted coordinator may start wave 2 before every agent has noticed the restart
  # and dialled again, and must not skip those agents as offline
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
  # nothing applied twice: one activation of 4.0.0 per healthy agent (apply.sh counts them)
  for n in $(seq 1 $NAGENTS); do
    [ "$n" = "$SICK" ] && continue
    [ "$(activations "$n" 4.0.0)" = 1 ] || return 1
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

t_pause_holds_later_waves() {
  artifact 6.0.0 || return 1
  # one wave per agent, 3 s apart; the sick agent's rollback is tolerated
  run 0 admin rollout create --tenant lab --artifact app@6.0.0 --waves $NAGENTS --grace 3s --max-failures 1 \
    --min-success 0 --id r6 || return 1
  local n
  declare -A before
  for n in $(seq 1 $NAGENTS); do before[$n]=$(installed "$n"); done
  run 0 admin rollout start r6 --tenant lab || return 1
  # paused as soon as the first wave is under way (its agent goes on; the next waves wait)
  until_ok 10 eval '[ "$(count_targets r6 waiting)" -lt $NAGENTS ]' || return 1
  run 0 admin rollout pause r6 --tenant lab || return 1
  # longer than a wave and its grace period: running, the second wave would have started
  sleep 5
  [ "$(rollout_state r6)" = paused ] || return 1
  [ "$(count_targets r6 success rolled_back)" = 1 ] || return 1
  [ "$(rollout_field r6 'r["rollout"]["wave"]')" = 0 ] || return 1
  [ "$(rollout_field r6 'sum(1 for t in r["targets"] if t["wave"] > 0 and t["state"] != "waiting")')" = 0 ] ||
    return 1
  for n in $(seq 1 $NAGENTS); do
    [ "$(target_field r6 "$n" wave)" = 0 ] && continue
    [ "$(installed "$n")" = "${before[$n]}" ] && [ "$(activations "$n" 6.0.0)" = 0 ] || return 1
  done
  run 0 admin rollout resume r6 --tenant lab || return 1
  wait_final r6 60 || return 1
  [ "$(rollout_state r6)" = partial ] || return 1
  [ "$(target_state r6 $SICK)" = rolled_back ] || return 1
  healthy_at 6.0.0
}

t_offline_agent_catches_up() {
  local off=${HEALTHY[0]} was
  was=$(installed "$off")
  stop_agent "$off"
  until_ok 15 is_offline "$off" || return 1
  artifact 7.0.0 || return 1
  run 0 admin rollout create --tenant lab --artifact app@7.0.0 --no-skip-offline --action-timeout 60s \
    --max-failures 1 --min-success 0 --id r7 || return 1
  run 0 admin rollout start r7 --tenant lab || return 1
  # the others get to an outcome; the offline agent's target stays sent and the rollout waits for it
  until_ok 30 eval '[ "$(count_targets r7 success rolled_back)" = $((NAGENTS - 1)) ]' || return 1
  [ "$(rollout_state r7)" = running ] && [ "$(target_state r7 "$off")" = sent ] || return 1
  [ "$(installed "$off")" = "$was" ] || return 1
  start_agent "$off"
  wait_final r7 30 || return 1
  [ "$(rollout_state r7)" = partial ] || return 1
  [ "$(target_state r7 "$off")" = success ] || return 1
  [ "$(activations "$off" 7.0.0)" = 1 ] || return 1
  healthy_at 7.0.0
}

t_action_timeout() {
  local off=${HEALTHY[1]} was
  was=$(installed "$off")
  stop_agent "$off"
  until_ok 15 is_offline "$off" || return 1
  artifact 8.0.0 || return 1
  # the sick agent's rollback is one failure (tolerated); the silent agent's time out is the second.
  # (--max-failures 0 would fail the rollout at the rollback, before any time out.)
  run 0 admin rollout create --tenant lab --artifact app@8.0.0 --no-skip-offline --action-timeout 3s \
    --max-failures 1 --min-success 0 --id r8 || return 1
  run 0 admin rollout start r8 --tenant lab || return 1
  wait_final r8 30 || return 1
  [ "$(rollout_state r8)" = failed ] || return 1
  [ "$(target_state r8 "$off")" = timed_out ] || return 1
  has "$(target_field r8 "$off" msg)" "no outcome" || return 1
  # back online, it never gets the stale desired state
  start_agent "$off"
  until_ok 15 is_online "$off" || return 1
  sleep 2
  [ "$(target_state r8 "$off")" = timed_out ] || return 1
  [ "$(installed "$off")" = "$was" ] && [ "$(activations "$off" 8.0.0)" = 0 ] || return 1
  ! grep -q 'desired.*r8' "$tmp/a$off.log" || return 1
  until_ok 10 healthy_at 8.0.0 "$off"
}

t_agent_killed_mid_apply() {
  local k=${HEALTHY[2]}
  : >"$tmp/a$k/slow" # its activations take 3 s
  artifact 9.0.0 || return 1
  run 0 admin rollout create --tenant lab --artifact app@9.0.0 --max-failures 1 --min-success 0 --id r9 || return 1
  run 0 admin rollout start r9 --tenant lab || return 1
  until_ok 20 eval '[ "$(target_state r9 $k)" = working ] && [[ "$(target_field r9 $k msg)" == activating* ]]' ||
    return 1
  [ "$(installed "$k")" != 9.0.0 ] || { echo "  the activation ended before the kill" >&2; return 1; }
  stop_agent "$k" KILL
  start_agent "$k"
  wait_final r9 30 || return 1
  rm -f "$tmp/a$k/slow"
  [ "$(rollout_state r9)" = partial ] || return 1
  [ "$(target_state r9 "$k")" = success ] || return 1
  # recovery from "activating" ran the health check, not the applier
  grep -q 'apply.resume.*activating' "$tmp/a$k.log" || return 1
  # the applier the dead agent left running finishes; no second one ran
  until_ok 10 eval '[ "$(installed $k)" = 9.0.0 ] && [ "$(activations $k 9.0.0)" -ge 1 ]' || return 1
  sleep 1
  [ "$(activations "$k" 9.0.0)" = 1 ] || return 1
  healthy_at 9.0.0
}

t_downgrade_refused() {
  # one step down from 9.0.0, not allowed: every agent at 9.0.0 refuses it
  artifact 8.9.0 || return 1
  run 0 admin rollout create --tenant lab --artifact app@8.9.0 --id rd1 || return 1
  run 0 admin rollout start rd1 --tenant lab || return 1
  wait_final rd1 30 || return 1
  until_ok 20 all_answered rd1 || return 1
  [ "$(rollout_state rd1)" = failed ] || return 1
  local n
  for n in "${HEALTHY[@]}"; do
    [ "$(target_state rd1 "$n")" = failed ] || return 1
    has "$(target_field rd1 "$n" msg)" downgrade || return 1
    [ "$(activations "$n" 8.9.0)" = 0 ] || return 1
  done
  healthy_at 9.0.0 || return 1
  run 0 admin rollout show rd1 && has "$out" downgrade || return 1
  # the same step down signed with --allow-downgrade installs
  artifact 8.9.1 --allow-downgrade || return 1
  run 0 admin rollout create --tenant lab --artifact app@8.9.1 --max-failures 1 --min-success 0 --id rd2 || return 1
  run 0 admin rollout start rd2 --tenant lab || return 1
  wait_final rd2 30 || return 1
  [ "$(rollout_state rd2)" = partial ] || return 1
  for n in "${HEALTHY[@]}"; do [ "$(target_state rd2 "$n")" = success ] || return 1; done
  healthy_at 8.9.1
}

t_pinned_agent_untouched() {
  local p=${HEALTHY[3]} was
  was=$(installed "$p")
  stop_agent "$p"
  until_ok 15 is_offline "$p" || return 1
  start_agent "$p" --update-mode pinned
  until_ok 15 is_online "$p" || return 1
  artifact 10.0.0 || return 1
  run 0 admin rollout create --tenant lab --artifact app@10.0.0 --max-failures 2 --min-success 0 --id r10 || return 1
  run 0 admin rollout start r10 --tenant lab || return 1
  wait_final r10 30 || return 1
  [ "$(rollout_state r10)" = partial ] || return 1 # the sick agent rolled back
  # skipped when the rollout started, in no wave: neither a success nor a failure
  [ "$(target_state r10 "$p")" = skipped ] && [ "$(target_field r10 "$p" wave)" = None ] || return 1
  [ "$(target_field r10 "$p" msg)" = pinned ] || return 1
  run 0 admin rollout show r10 && has "$out" pinned || return 1
  [ "$(installed "$p")" = "$was" ] && [ "$(activations "$p" 10.0.0)" = 0 ] || return 1
  healthy_at 10.0.0 "$p" || return 1
  # following again, as the fleet was
  stop_agent "$p"
  until_ok 15 is_offline "$p" || return 1
  start_agent "$p"
  until_ok 15 is_online "$p"
}

# update_mode latest: an agent that missed its channel's release (offline,
# skipped) gets it by itself when it returns, outside any rollout.
t_latest_agent_catches_up() {
  local p=${HEALTHY[2]} id
  id=$(agent_id "$p")
  stop_agent "$p"
  # (a lost close would leave it online until the idle timeout)
  until_ok 30 is_offline "$p" || return 1
  artifact 11.0.0 || return 1
  run 0 admin rollout create --tenant lab --artifact app@11.0.0 --channel stable --max-failures 2 \
    --min-success 0 --id r11 || return 1
  run 0 admin rollout start r11 --tenant lab || return 1
  wait_final r11 30 || return 1
  [ "$(target_state r11 "$p")" = skipped ] || return 1 # offline at wave start
  healthy_at 11.0.0 "$p" || return 1
  [ "$(installed "$p")" != 11.0.0 ] || return 1
  start_agent "$p" --update-mode latest
  until_ok 20 eval '[ "$(installed "$p")" = 11.0.0 ]' || return 1
  until_ok 10 eval 'admin agents show "$id" | grep -q "^update: *latest app 11.0.0: success"' || {
    admin agents show "$id" >&2
    return 1
  }
  [ "$(activations "$p" 11.0.0)" = 1 ] || return 1
  # the release reached it once: a restart does not send it again
  stop_agent "$p"
  start_agent "$p" --update-mode latest
  until_ok 15 is_online "$p" && sleep 2
  [ "$(activations "$p" 11.0.0)" = 1 ]
}

# update_mode assigned: the agent runs the version its configuration names,
# delivered outside rollouts, and rollouts skip it. A manifest for other
# hardware skips the machines it is not for.
t_assigned_and_incompatible_skipped() {
  local q=${HEALTHY[1]} m=${HEALTHY[0]} n
  artifact 12.0.0 || return 1
  stop_agent "$q"
  start_agent "$q" --update-mode assigned --assigned-version app@12.0.0
  until_ok 20 eval '[ "$(installed "$q")" = 12.0.0 ]' || return 1
  stop_agent "$m"
  start_agent "$m" --hw-model rpi4
  until_ok 15 is_online "$m" || return 1
  artifact 13.0.0 --compatible rpi4 || return 1
  run 0 admin rollout create --tenant lab --artifact app@13.0.0 --id r13 || return 1
  run 0 admin rollout start r13 --tenant lab || return 1
  wait_final r13 30 || return 1
  [ "$(rollout_state r13)" = completed ] || { rollout_field r13 r >&2; return 1; }
  [ "$(target_state r13 "$m")" = success ] && [ "$(installed "$m")" = 13.0.0 ] || return 1
  [ "$(target_field r13 "$q" msg)" = "assigned app@12.0.0" ] && [ "$(installed "$q")" = 12.0.0 ] || return 1
  for n in $(seq 1 $NAGENTS); do
    [ "$n" = "$m" ] || [ "$n" = "$q" ] && continue
    [ "$(target_state r13 "$n")" = skipped ] || return 1
    has "$(target_field r13 "$n" msg)" "incompatible: app 13.0.0 is for rpi4; this machine's model is unknown" ||
      return 1
    [ "$(installed "$n")" != 13.0.0 ] || return 1
  done
  run 0 admin rollout show r13 && has "$out" "not in any wave" || return 1
}

check fleet_enrolls t_fleet_enrolls
check waves_with_a_rollback t_waves_with_a_rollback
check update_log_of_an_agent t_update_log_of_an_agent
check retry_resends_to_the_failed_only t_retry_resends_to_the_failed_only
check failure_threshold_stops_later_waves t_failure_threshold_stops_later_waves
check coordinator_killed_mid_rollout t_coordinator_killed_mid_rollout
check tampered_artifact_refused t_tampered_artifact_refused
check pause_holds_later_waves t_pause_holds_later_waves
check offline_agent_catches_up t_offline_agent_catches_up
check action_timeout t_action_timeout
check agent_killed_mid_apply t_agent_killed_mid_apply
check downgrade_refused t_downgrade_refused
check pinned_agent_untouched t_pinned_agent_untouched
check latest_agent_catches_up t_latest_agent_catches_up
check assigned_and_incompatible_skipped t_assigned_and_incompatible_skipped
finish
