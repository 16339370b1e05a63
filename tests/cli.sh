#!/usr/bin/env bash
# The ferry binary as a user and a script see it: exit statuses, messages,
# files. Usage: tests/cli.sh path/to/ferry. Ends with "N passed, N failed".
set -uo pipefail
ferry=${1:?usage: cli.sh FERRY}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ferry-cli-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0

# run EXPECTED_STATUS CMD...: runs CMD, keeps stdout in $out and stderr in $err.
run() {
  local want=$1; shift
  out=$("$@" 2>"$tmp/stderr"); status=$?
  err=$(cat "$tmp/stderr")
  if [ "$status" != "$want" ]; then
    echo "  status $status, wanted $want: $*"; echo "  stderr: $err"; return 1
  fi
}
has() { # HAYSTACK NEEDLE
  case $1 in *"$2"*) return 0 ;; esac
  echo "  missing '$2' in: $1"; return 1
}
check() { # NAME CMD...
  local name=$1; shift
  if ( "$@" ); then passed=$((passed + 1)); echo "ok   $name"; else failed=$((failed + 1)); echo "FAIL $name"; fi
}

t_no_args() { run 2 "$ferry" && has "$err" "usage: ferry <applet>"; }
t_help_lists_applets() {
  run 0 "$ferry" --help || return 1
  for a in coordinator agent admin relay key version help; do has "$out" "  $a " || return 1; done
}
t_unknown_applet() { run 2 "$ferry" frobnicate && has "$err" "unknown applet 'frobnicate'"; }
t_unknown_top_flag() { run 2 "$ferry" --frobnicate && has "$err" "unknown flag --frobnicate"; }
t_applet_help() {
  for a in coordinator agent admin relay; do
    run 0 "$ferry" "$a" --help && has "$out" "--log-level" && has "$out" "--print-config" || return 1
  done
  run 0 "$ferry" help agent && has "$out" "--data-dir"
}
t_unknown_flag() { run 2 "$ferry" agent --frobnicate && has "$err" "--frobnicate"; }
t_not_built() { run 69 "$ferry" relay && has "$err" "not built yet"; }
t_coordinator_needs_init() {
  run 1 "$ferry" coordinator --data-dir "$tmp/nocoord" && has "$err" "ferry coordinator init"
}
t_version() {
  run 0 "$ferry" version && has "$out" "ferry 0." || return 1
  run 0 "$ferry" version --libs && has "$out" "wolfssl 5.7.2" && has "$out" "ngtcp2 1.11.0" && has "$out" "nghttp3 1.8.0"
}

t_config_layers() {
  printf 'data_dir = /from/file\nlog_level = warn\n' >"$tmp/agent.conf"
  run 0 env -i FERRY_LOG_LEVEL=debug "$ferry" agent --config "$tmp/agent.conf" --print-config || return 1
  has "$out" "/from/file" && has "$out" "$tmp/agent.conf:1" && has "$out" "FERRY_LOG_LEVEL" || return 1
  run 0 env -i FERRY_DATA_DIR=/from/env "$ferry" agent --config "$tmp/agent.conf" --data-dir /from/flag --print-config || return 1
  has "$out" "/from/flag" && has "$out" "--data-dir"
}
t_config_bad_value() {
  run 2 "$ferry" agent --log-level loud && has "$err" "--log-level" && has "$err" "loud" || return 1
  printf 'data_dir = /x\nbogus = 1\n' >"$tmp/bad.conf"
  run 2 "$ferry" agent --config "$tmp/bad.conf" --print-config && has "$err" "$tmp/bad.conf:2" && has "$err" "bogus" || return 1
  run 2 "$ferry" agent --config "$tmp/missing.conf" && has "$err" "$tmp/missing.conf"
}
# Update modes are checked wherever the agent starts, `agent enroll` too
# (its enrollment request reports them), before anything is written.
t_agent_update_mode_checked() {
  local ticket
  for ticket in "" ferry-ticket1.x; do # `agent`, then `agent enroll TICKET`
    run 2 "$ferry" agent ${ticket:+enroll} --data-dir "$tmp/um" --update-mode assigned $ticket &&
      has "$err" "--update-mode assigned needs --assigned-version" || return 1
    run 2 "$ferry" agent ${ticket:+enroll} --data-dir "$tmp/um" --channel Beta $ticket &&
      has "$err" "--channel 'Beta'" || return 1
  done
  [ ! -e "$tmp/um" ]
}

t_key_generate_and_show() {
  run 0 "$ferry" key generate --out "$tmp/n.key" --log-level warn || return 1
  local id=$out
  [[ $id =~ ^[0-9a-f]{64}$ ]] || { echo "  not a node id: $id"; return 1; }
  [ "$(stat -c %a "$tmp/n.key")" = 600 ] || { echo "  mode $(stat -c %a "$tmp/n.key")"; return 1; }
  run 0 "$ferry" key show --id "$tmp/n.key" && [ "$out" = "$id" ] || { echo "  show --id: $out"; return 1; }
  run 0 "$ferry" key show "$tmp/n.key" && has "$out" "node_id:     $id" && has "$out" "fingerprint: SHA256:"
}
t_key_refuses_overwrite() {
  run 0 "$ferry" key generate --out "$tmp/o.key" --log-level warn || return 1
  local before; before=$(sha256sum <"$tmp/o.key")
  run 1 "$ferry" key generate --out "$tmp/o.key" && has "$err" "$tmp/o.key" || return 1
  [ "$(sha256sum <"$tmp/o.key")" = "$before" ] || { echo "  key file changed"; return 1; }
}
t_key_generate_needs_out() { run 2 "$ferry" key generate && has "$err" "--out"; }

# The acceptance check: the node id of an ssh-keygen key is exactly the public
# key ssh-keygen -y derives (decoded here without ferry: the blob's last 32 bytes).
t_key_openssh_interop() {
  command -v ssh-keygen >/dev/null || { echo "  ssh-keygen missing"; return 1; }
  ssh-keygen -q -t ed25519 -N '' -C interop -f "$tmp/ssh" || return 1
  local want
  want=$(ssh-keygen -y -f "$tmp/ssh" | cut -d' ' -f2 | base64 -d | tail -c 32 | od -An -tx1 | tr -d ' \n')
  run 0 "$ferry" key show --id "$tmp/ssh" && [ "$out" = "$want" ] || { echo "  got $out want $want"; return 1; }
  run 0 "$ferry" key show --id "$tmp/ssh.pub" && [ "$out" = "$want" ] || return 1
  run 0 "$ferry" key show --id "$(cat "$tmp/ssh.pub")" && [ "$out" = "$want" ] || return 1
  run 0 "$ferry" key show "$tmp/ssh" && has "$out" "$(ssh-keygen -l -f "$tmp/ssh" | cut -d' ' -f2)" || return 1
  # and ferry's own key files are OpenSSH keys
  run 0 "$ferry" key generate --out "$tmp/f.key" --log-level warn || return 1
  local fid=$out
  [ "$(ssh-keygen -y -f "$tmp/f.key" | cut -d' ' -f2 | base64 -d | tail -c 32 | od -An -tx1 | tr -d ' \n')" = "$fid" ]
}
t_key_bad_files() {
  ssh-keygen -q -t ed25519 -N '' -f "$tmp/open" || return 1
  chmod 644 "$tmp/open"
  run 1 "$ferry" key show "$tmp/open" && has "$err" "$tmp/open" && has "$err" "644" || return 1
  ssh-keygen -q -t ed25519 -N 'secret' -f "$tmp/enc" || return 1
  run 1 "$ferry" key show "$tmp/enc" && has "$err" "$tmp/enc" && has "$err" "encrypted" || return 1
  ssh-keygen -q -t ecdsa -N '' -f "$tmp/ecdsa" || return 1
  run 1 "$ferry" key show "$tmp/ecdsa" && has "$err" "ecdsa" || return 1
  head -c 100 "$tmp/enc" >"$tmp/trunc"; chmod 600 "$tmp/trunc"
  run 1 "$ferry" key show "$tmp/trunc" && has "$err" "$tmp/trunc" || return 1
  run 1 "$ferry" key show "$tmp/nonexistent" && has "$err" "$tmp/nonexistent" || return 1
  run 1 "$ferry" key show "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ" && has "$err" "ssh-rsa"
}

for t in $(declare -F | awk '$3 ~ /^t_/ { print $3 }'); do check "${t#t_}" "$t"; done
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
