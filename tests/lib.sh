# shellcheck shell=bash
# What the whole-process tests share (fleet.sh, rollout.sh, rollout_trust.sh, netns_fleet.sh):
# a temporary directory, processes stopped on exit, checks that print
# "ok NAME" / "FAIL NAME" and end with "N passed, N failed".
#
# Source it after setting `ferry` and `test_name`; start background
# processes with `spawn CMD...` so they are stopped at exit.

tmp=$(mktemp -d "/tmp/ferry-$test_name.XXXXXX")
pids=()
passed=0 failed=0
out="" err="" rc=0
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}

cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  sleep 0.3
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  if declare -F cleanup_more >/dev/null; then cleanup_more; fi
  if [ "$failed" = 0 ]; then rm -rf "$tmp"; else echo "logs kept in $tmp"; fi
}
trap cleanup EXIT

# spawn LOG CMD...: runs CMD in the background, output appended to LOG; $! is its pid.
spawn() {
  local log=$1
  shift
  "$@" >>"$log" 2>&1 &
  pids+=("$!")
}

# run EXPECTED_STATUS CMD...: runs CMD, keeps stdout/stderr in $out/$err.
run() {
  local want=$1
  shift
  "$@" >"$tmp/out" 2>"$tmp/err"
  rc=$?
  out=$(cat "$tmp/out") err=$(cat "$tmp/err")
  if [ "$rc" != "$want" ]; then
    echo "  exit $rc, expected $want: $*" >&2
    echo "  stdout: $out" | head -20 >&2
    echo "  stderr: $err" | tail -20 >&2
    return 1
  fi
}

has() {
  case "$1" in *"$2"*) return 0 ;; esac
  echo "  missing '$2' in: $1" | head -20 >&2
  return 1
}

check() {
  local name=$1
  shift
  if "$@"; then passed=$((passed + 1)); echo "ok   $name"; else failed=$((failed + 1)); echo "FAIL $name"; fi
}

# until_ok SECONDS CMD...: retries CMD every 0.2 s until it succeeds or time runs out.
until_ok() {
  local deadline=$((SECONDS + $1))
  shift
  while ! "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { "$@"; return 1; }
    sleep 0.2
  done
}

finish() {
  echo "$passed passed, $failed failed"
  [ "$failed" = 0 ]
}

# ---- a fleet on loopback (rollout.sh, rollout_trust.sh) ------------------------------------

# write_applier: $tmp/apply.sh, the applier the agents run: installs the
# artifact next to the agent's data, or puts the previous version back, and
# appends each completed action to the agent's `activations` file (what the
# tests count). "slow" in the agent's directory makes an activation take 3 s.
write_applier() {
  cat >"$tmp/apply.sh" <<'APPLY'
#!/bin/sh
dir=$(dirname "$FERRY_ARTIFACT")/..
[ "$FERRY_ACTION" = activate ] && [ -e "$dir/slow" ] && sleep 3
case "$FERRY_ACTION" in
activate) cp "$FERRY_ARTIFACT" "$dir/installed" && echo "$FERRY_VERSION" >"$dir/installed.version" ;;
rollback) echo "${FERRY_PREVIOUS_VERSION:-none}" >"$dir/installed.version" ;;
*) exit 2 ;;
esac
echo "$FERRY_ACTION $FERRY_VERSION" >>"$dir/activations"
echo "applied $FERRY_ACTION $FERRY_VERSION"
APPLY
  chmod +x "$tmp/apply.sh"
}

# start_coordinator: serves $tmp/coord on $coord_listen (127.0.0.1:0 at
# first, then the same port again) and sets coord_pid and spec, the
# `--coordinator` value admins and agents use.
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

# The fleet as admins see it; the caller defines `admin` (ferry admin with
# its key, data directory and coordinator). Agent N lives in $tmp/aN.
admin_as() { # KEYNAME ARGS...: ferry admin with $tmp/KEYNAME.key and its own data directory
  local who=$1
  shift
  FERRY_KEY_FILE="$tmp/$who.key" FERRY_DATA_DIR="$tmp/admin-$who" FERRY_COORDINATOR="$spec" \
    FERRY_LOG_LEVEL=warn FERRY_TIMEOUT=10s "$ferry" admin "$@"
}
agent_id() { "$ferry" key show --id "$tmp/a$1/node.key"; }
is_online() { # N: the coordinator sees agent N connected
  local id
  id=$(agent_id "$1")
  admin agents list --json 2>>"$tmp/show.err" | python3 -c "import json,sys
r=json.load(sys.stdin); sys.exit(0 if [a for a in r['agents'] if a['id'] == '$id' and a['online']] else 1)"
}
is_offline() { ! is_online "$1"; }
installed() { cat "$tmp/a$1/installed.version" 2>/dev/null || echo "none"; }
activations() { # N VERSION: completed activations of VERSION by agent N (the applier counts them)
  if [ -e "$tmp/a$1/activations" ]; then grep -cx "activate $2" "$tmp/a$1/activations"; else echo 0; fi
}
rollout_field() { # ID EXPR: EXPR (python, over r = `ferry admin rollout show ID --json`)
  admin rollout show "$1" --json 2>>"$tmp/show.err" | python3 -c "import json,sys; r=json.load(sys.stdin); print($2)"
}
rollout_state() { rollout_field "$1" 'r["rollout"]["state"]'; }
target_field() { # ID AGENT_N KEY (state, wave, msg)
  local id
  id=$(agent_id "$2")
  rollout_field "$1" "[t['$3'] for t in r['targets'] if t['agent'] == '$id'][0]"
}
target_state() { target_field "$1" "$2" state; }
count_targets() { # ID STATE...: how many targets are in one of these states
  local states
  states=$(printf '"%s",' "${@:2}")
  rollout_field "$1" "sum(1 for t in r['targets'] if t['state'] in ($states))"
}
all_answered() { [ "$(count_targets "$1" waiting sent working)" = 0 ]; } # ID: every target has an outcome
is_final() { [[ "$(rollout_state "$1")" =~ ^(completed|partial|failed|aborted)$ ]]; }
wait_final() { until_ok "$2" is_final "$1"; } # ID SECONDS
