#!/usr/bin/env bash
# A compromised coordinator cannot forge an update (issue 6), with real
# processes on loopback: a coordinator, the owner's admin and two agents.
# After a normal rollout, the coordinator's store is altered behind its back
# (tamper_coord) so that it believes a fresh key, mallory, is an operator of
# tenant lab. The coordinator then accepts and forwards mallory's artifact and
# rollout; the agents, which learned their admins only from owner-signed
# statements, refuse her manifest, report failed and install nothing.
#
#   tests/rollout_trust.sh FERRY_BINARY TAMPER_COORD_BINARY
#
# Ends with "N passed, N failed"; exit 0 when none failed.
set -uo pipefail

ferry=${1:?usage: rollout_trust.sh FERRY_BINARY TAMPER_COORD_BINARY}
tamper=${2:?usage: rollout_trust.sh FERRY_BINARY TAMPER_COORD_BINARY}
test_name=rollout_trust
# shellcheck source=tests/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export FERRY_LOG_LEVEL=info
NAGENTS=2

# ---- the fleet ---------------------------------------------------------------------------

write_applier

"$ferry" key generate --out "$tmp/owner.key" >/dev/null 2>&1 || exit 1
"$ferry" key generate --out "$tmp/mallory.key" >/dev/null 2>&1 || exit 1
mallory_id=$("$ferry" key show --id "$tmp/mallory.key") || exit 1
# what agent/agent_run.c reports for a manifest signer the owners never named
# (src/fleet/manifest.c, fy_manifest_verify; the signer's short id is its first 12 hex digits)
REFUSAL="signer ${mallory_id:0:12} may not sign rollouts for tenant lab (not an admin here)"
"$ferry" coordinator init --owner "$("$ferry" key show --id "$tmp/owner.key")" --data-dir "$tmp/coord" \
  >/dev/null 2>&1 || exit 1
start_coordinator || { echo "coordinator did not start"; exit 1; }

admin() { admin_as owner "$@"; }
# mallory: her own key and admin data directory, the same coordinator
mallory() { admin_as mallory "$@"; }

start_agent() { # N
  spawn "$tmp/a$1.log" "$ferry" agent --data-dir "$tmp/a$1" --keepalive 500ms --facts-interval 2s \
    --apply-command "$tmp/apply.sh" --health-command /bin/true --health-timeout 5s --version 1.0.0
}
all_enrolled_online() { admin agents list | grep -c "1.0.0.*yes" | grep -qx "$NAGENTS"; }
all_online() { local n; for n in $(seq 1 $NAGENTS); do is_online "$n" || return 1; done; }

# An artifact file per version, added by WHO (admin or mallory).
artifact() { # WHO VERSION
  printf 'app %s\n' "$2" >"$tmp/app-$2"
  head -c 20000 /dev/urandom >>"$tmp/app-$2"
  run 0 "$1" artifact add --tenant lab --name app --version "$2" --file "$tmp/app-$2"
}

t_fleet_enrolls() {
  run 0 admin enroll create --tenant lab --uses "$NAGENTS" --ttl 10m || return 1
  local ticket=$out n
  for n in $(seq 1 $NAGENTS); do
    mkdir -p "$tmp/a$n"
    run 0 "$ferry" agent enroll --data-dir "$tmp/a$n" "$ticket" || return 1
    start_agent "$n"
  done
  until_ok 20 all_enrolled_online
}

# The path works: the owner's own artifact and rollout install everywhere.
t_owner_rollout_installs() {
  artifact admin 2.0.0 || return 1
  run 0 admin rollout create --tenant lab --artifact app@2.0.0 --waves 1 --max-failures 0 --id r2 || return 1
  run 0 admin rollout start r2 --tenant lab || return 1
  wait_final r2 30 || return 1
  [ "$(rollout_state r2)" = completed ] || return 1
  local n
  for n in $(seq 1 $NAGENTS); do
    [ "$(target_state r2 "$n")" = success ] && [ "$(installed "$n")" = 2.0.0 ] || return 1
    [ "$(activations "$n" 2.0.0)" = 1 ] || return 1
  done
}

# The compromise: mallory becomes an operator of lab in the coordinator's
# store only; no owner signed anything.
t_store_tampered() {
  # before: the coordinator refuses her as an unknown signer
  printf 'app 2.5.0\n' >"$tmp/app-2.5.0"
  run 1 mallory artifact add --tenant lab --name app --version 2.5.0 --file "$tmp/app-2.5.0" || return 1
  has "$err" "not an admin of this coordinator" || return 1
  # tamper_coord refuses a running coordinator's store
  run 1 "$tamper" "$tmp/coord" add-operator "$mallory_id" lab && has "$err" "cannot be opened" || return 1
  kill -TERM "$coord_pid"
  wait "$coord_pid" 2>/dev/null
  run 0 "$tamper" "$tmp/coord" add-operator "$mallory_id" lab || return 1
  start_coordinator || return 1
  until_ok 15 all_online
}

# The compromised coordinator accepts and forwards mallory's commands.
t_coordinator_accepts_mallory() {
  artifact mallory 3.0.0 || return 1
  run 0 mallory rollout create --tenant lab --artifact app@3.0.0 --waves 1 --max-failures 0 --id r3 || return 1
  run 0 mallory rollout start r3 --tenant lab
}

# The agents refuse her manifest: failed, with the reason, nothing installed.
t_agents_refuse_mallory() {
  wait_final r3 30 || return 1
  until_ok 20 all_answered r3 || return 1
  [ "$(rollout_state r3)" = failed ] || return 1
  local n id
  for n in $(seq 1 $NAGENTS); do
    [ "$(target_state r3 "$n")" = failed ] || return 1
    has "$(target_field r3 "$n" msg)" "forbidden_role" || return 1
    has "$(target_field r3 "$n" msg)" "$REFUSAL" || return 1
    [ "$(installed "$n")" = 2.0.0 ] || { echo "  agent $n has $(installed "$n"), not 2.0.0" >&2; return 1; }
    ! grep -qx "activate 3.0.0" "$tmp/a$n/activations" || return 1
    # refused before any download: no attempt was started
    ! grep -q 'desired.accepted.*r3' "$tmp/a$n.log" || return 1
    grep -q 'desired.refused.*r3' "$tmp/a$n.log" || return 1
    id=$(agent_id "$n")
    run 0 admin agents log "$id" && has "$out" "r3  failed" && has "$out" "$REFUSAL" || return 1
  done
  run 0 admin rollout show r3 && has "$out" "$REFUSAL"
}

check fleet_enrolls t_fleet_enrolls
check owner_rollout_installs t_owner_rollout_installs
check store_tampered t_store_tampered
check coordinator_accepts_mallory t_coordinator_accepts_mallory
check agents_refuse_mallory t_agents_refuse_mallory
finish
