#!/usr/bin/env bash
# The crash loop (issue 4): a sender and a receiver process (tests/crashpeer.c)
# exchange messages over QUIC on loopback while this script kills one or the
# other with SIGKILL at random points (every 20-300 ms) and starts it again on
# the same data directory, until it has killed at least CRASHLOOP_KILLS
# times and the sender has finished (everything enqueued and acknowledged).
# Afterwards every message must have arrived exactly once, in order per
# sender and topic (the receiver checks the order inside each transaction
# and exits 3 on a violation; `crashpeer check` counts what arrived).
#
# Usage: tests/crashloop.sh path/to/crashpeer. Ends with "N passed, N failed".
# Knobs: CRASHLOOP_TOTAL (messages per topic, 50000), CRASHLOOP_KILLS (100),
# CRASHLOOP_SECONDS (the hard bound, 240), CRASHLOOP_KEEP=1 keeps the
# temporary directory.
set -uo pipefail
crashpeer=${1:?usage: crashloop.sh CRASHPEER}
total=${CRASHLOOP_TOTAL:-50000}
min_kills=${CRASHLOOP_KILLS:-100}
limit=${CRASHLOOP_SECONDS:-240}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ferry-crashloop-XXXXXX")
spid='' rpid=''
passed=0 failed=0

cleanup() {
  for p in $spid $rpid; do kill -KILL "$p" 2>/dev/null; done
  for p in $spid $rpid; do { wait "$p"; } 2>/dev/null; done
  if [ "${CRASHLOOP_KEEP:-0}" = 1 ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 143' TERM INT # so that cleanup runs on a timeout too

pass() { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1"; }
show_logs() {
  for f in recv.log send.log; do
    echo "--- last lines of $f"
    tail -n 25 "$tmp/$f" 2>/dev/null | sed 's/^/  /'
  done
}
finish() {
  echo "$passed passed, $failed failed"
  [ $failed = 0 ]
  exit
}

# A fixed port for the receiver, so its address survives its restarts:
# below the ephemeral range, and free when we look.
port=''
for _ in $(seq 50); do
  p=$((20000 + RANDOM % 12000))
  if ! command -v ss >/dev/null || [ -z "$(ss -Hlun "sport = :$p" 2>/dev/null)" ]; then
    port=$p
    break
  fi
done
[ -n "$port" ] || { fail "no free UDP port found"; finish; }

start_recv() {
  "$crashpeer" recv "$tmp/recv" "$tmp/addr" "$port" >>"$tmp/recv.log" 2>&1 &
  rpid=$!
}
start_send() {
  "$crashpeer" send "$tmp/send" "$tmp/addr" "$total" >>"$tmp/send.log" 2>&1 &
  spid=$!
}
# reap PID: waits for it (already killed or exited); its status in $status.
reap() {
  { wait "$1"; } 2>/dev/null
  status=$?
}

start_recv
for _ in $(seq 300); do
  [ -s "$tmp/addr" ] && break
  kill -0 "$rpid" 2>/dev/null || break
  sleep 0.1
done
if [ -s "$tmp/addr" ]; then
  pass "receiver listens on 127.0.0.1:$port"
else
  fail "receiver did not start"
  show_logs
  finish
fi
start_send

t0=$SECONDS
kills=0 skills=0 rkills=0 sender_done=0 broken=''
while :; do
  if [ $sender_done = 1 ] && [ $kills -ge "$min_kills" ]; then break; fi
  if [ $((SECONDS - t0)) -ge "$limit" ]; then
    broken="not done after ${limit}s: $kills kills, sender finished: $sender_done"
    break
  fi
  sleep "$(printf '0.%03d' $((20 + RANDOM % 281)))"
  if [ $sender_done = 1 ] || [ $((RANDOM % 2)) = 0 ]; then
    kill -KILL "$rpid" 2>/dev/null
    reap "$rpid"
    if [ $status != 137 ]; then
      broken="the receiver exited with status $status before it was killed"
      rpid=''
      break
    fi
    kills=$((kills + 1)) rkills=$((rkills + 1))
    start_recv
  else
    kill -KILL "$spid" 2>/dev/null
    reap "$spid"
    spid=''
    if [ $status = 0 ]; then
      sender_done=1 # it finished just before the kill: no kill to count
      continue
    fi
    if [ $status != 137 ]; then
      broken="the sender exited with status $status"
      break
    fi
    kills=$((kills + 1)) skills=$((skills + 1))
    start_send
  fi
done
elapsed=$((SECONDS - t0))
if [ -n "$rpid" ]; then
  kill -KILL "$rpid" 2>/dev/null
  reap "$rpid"
  rpid=''
  if [ -z "$broken" ] && [ $status != 137 ]; then broken="the receiver exited with status $status"; fi
fi
if [ -n "$spid" ]; then
  kill -KILL "$spid" 2>/dev/null
  reap "$spid"
  spid=''
fi

if [ -z "$broken" ]; then
  pass "$kills kills in ${elapsed}s ($skills sender, $rkills receiver), sender finished"
else
  fail "$broken"
  show_logs
fi
if grep -q VIOLATION "$tmp/recv.log"; then
  fail "order violations seen by the receiver"
  grep VIOLATION "$tmp/recv.log" | head -n 5 | sed 's/^/  /'
else
  pass "no order violation seen by the receiver"
fi

if out=$("$crashpeer" check "$tmp/recv" "$total" 2>&1); then
  pass "every message arrived exactly once"
  echo "$out" | sed 's/^/  /'
else
  fail "messages lost or duplicated"
  echo "$out" | sed 's/^/  /'
fi
if [ $failed = 0 ]; then
  echo "crash loop: survived $kills kills ($skills sender, $rkills receiver), $total messages per topic, 0 lost, 0 duplicated"
fi
finish
