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
