#!/usr/bin/env bash
# The fleet behind NAT, in network namespaces this script creates and
# removes (the twin of vm-tests/fleet-nat.nix):
#
#   pub  10.77.0.1      the coordinator, on a "public" segment
#   rtr  10.77.0.254    the router: MASQUERADE for the LAN, no way in from pub
#        192.168.77.1   the LAN (a bridge)          10.78.0.254  the admins' segment
#   lan1 192.168.77.2   agent 1 \ behind the NAT: they dial out,
#   lan2 192.168.77.3   agent 2 / the coordinator cannot dial them
#   adm  10.78.0.2      an admin on a third segment
#
#   tests/netns_fleet.sh FERRY_BINARY
#
# Enrollment, facts and an admin query across the NAT, then a rollout of a
# signed artifact to the NAT'ed agents. Needs root (ip netns, iptables);
# exits 77 (skipped) with a message otherwise.
# Ends with "N passed, N failed".
set -uo pipefail

ferry=${1:?usage: netns_fleet.sh FERRY_BINARY}
if [ "$(id -u)" != 0 ]; then
  echo "skipped: network namespaces need root (run the suite as root to include this scenario)"
  exit 77
fi
for tool in ip iptables; do
  command -v $tool >/dev/null || { echo "skipped: $tool is not installed (tools/setup installs it)"; exit 77; }
done

tag=fy$$
ns() { echo "$tag-$1"; }
test_name=netns
# shellcheck source=tests/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cleanup_more() { for n in pub rtr lan1 lan2 adm; do ip netns del "$(ns $n)" 2>/dev/null; done; }
in_ns() { local n=$1; shift; ip netns exec "$(ns "$n")" "$@"; }

# ---- the network ---------------------------------------------------------------------------
build_network() {
  local n
  for n in pub rtr lan1 lan2 adm; do ip netns add "$(ns $n)" || return 1; done
  for n in pub rtr lan1 lan2 adm; do in_ns $n ip link set lo up; done
  # veth pairs: <ns side> in each host namespace, <router side> in rtr
  ip link add "$tag-p" netns "$(ns pub)" type veth peer name r-pub netns "$(ns rtr)" || return 1
  ip link add "$tag-a" netns "$(ns adm)" type veth peer name r-adm netns "$(ns rtr)" || return 1
  ip link add "$tag-l1" netns "$(ns lan1)" type veth peer name r-l1 netns "$(ns rtr)" || return 1
  ip link add "$tag-l2" netns "$(ns lan2)" type veth peer name r-l2 netns "$(ns rtr)" || return 1
  in_ns rtr ip link add br-lan type bridge
  in_ns rtr ip link set r-l1 master br-lan
  in_ns rtr ip link set r-l2 master br-lan
  for n in r-pub r-adm r-l1 r-l2 br-lan; do in_ns rtr ip link set $n up; done
  in_ns rtr ip addr add 10.77.0.254/24 dev r-pub
  in_ns rtr ip addr add 10.78.0.254/24 dev r-adm
  in_ns rtr ip addr add 192.168.77.1/24 dev br-lan
  in_ns rtr sysctl -qw net.ipv4.ip_forward=1
  in_ns rtr iptables -t nat -A POSTROUTING -s 192.168.77.0/24 -o r-pub -j MASQUERADE || return 1
  # a NAT lets answers in, never a new flow from outside
  in_ns rtr iptables -A FORWARD -i r-pub -o br-lan -m conntrack --ctstate NEW -j DROP || return 1
  in_ns pub ip addr add 10.77.0.1/24 dev "$tag-p"
  in_ns pub ip link set "$tag-p" up
  in_ns pub ip route add 10.78.0.0/24 via 10.77.0.254
  in_ns pub ip route add 192.168.77.0/24 via 10.77.0.254
  in_ns adm ip addr add 10.78.0.2/24 dev "$tag-a"
  in_ns adm ip link set "$tag-a" up
  in_ns adm ip route add default via 10.78.0.254
  in_ns lan1 ip addr add 192.168.77.2/24 dev "$tag-l1"
  in_ns lan2 ip addr add 192.168.77.3/24 dev "$tag-l2"
  for n in 1 2; do
    in_ns lan$n ip link set "$tag-l$n" up
    in_ns lan$n ip route add default via 192.168.77.1
  done
}

admin() {
  in_ns adm env FERRY_KEY_FILE="$tmp/owner.key" FERRY_DATA_DIR="$tmp/admin" FERRY_COORDINATOR="$spec" \
    FERRY_LOG_LEVEL=warn FERRY_TIMEOUT=5s "$ferry" admin "$@"
}

t_network() {
  build_network || return 1
  # the LAN reaches the coordinator; the coordinator cannot open a flow into the LAN
  in_ns lan1 ping -c1 -W1 10.77.0.1 >/dev/null || return 1
  ! in_ns pub ping -c1 -W1 192.168.77.2 >/dev/null 2>&1
}

t_coordinator_on_public_segment() {
  write_applier
  "$ferry" key generate --out "$tmp/owner.key" >/dev/null 2>&1 || return 1
  in_ns pub "$ferry" coordinator init --owner "$("$ferry" key show --id "$tmp/owner.key")" \
    --data-dir "$tmp/coord" >/dev/null 2>&1 || return 1
  in_ns pub "$ferry" coordinator --data-dir "$tmp/coord" --listen 10.77.0.1:4433 >"$tmp/coord.out" 2>"$tmp/coord.log" &
  pids+=("$!")
  until_ok 10 grep -q '^admins connect with' "$tmp/coord.out" || return 1
  spec=$(sed -n 's/^admins connect with: --coordinator //p' "$tmp/coord.out")
  case "$spec" in *@10.77.0.1:4433) ;; *) echo "  coordinator advertises $spec" >&2; return 1 ;; esac
}

t_agents_enroll_from_behind_nat() {
  ticket=$(admin enroll create --tenant shop --labels site=lab --uses 2 --ttl 10m) || return 1
  local n
  for n in 1 2; do
    mkdir -p "$tmp/a$n"
    in_ns lan$n "$ferry" agent enroll --data-dir "$tmp/a$n" --key-file "$tmp/a$n/node.key" "$ticket" \
      >"$tmp/a$n.enroll" 2>&1 || { cat "$tmp/a$n.enroll" >&2; return 1; }
    in_ns lan$n "$ferry" agent --data-dir "$tmp/a$n" --key-file "$tmp/a$n/node.key" --keepalive 1s \
      --labels "pos=till$n" --apply-command "$tmp/apply.sh" --health-command /bin/true \
      >"$tmp/a$n.log" 2>&1 &
    pids+=("$!")
  done
}

t_facts_from_both_agents() {
  local n id
  for n in 1 2; do
    id=$("$ferry" key show --id "$tmp/a$n/node.key")
    until_ok 20 eval 'admin agents show "$id" | grep -q "pos=till$n"' || return 1
  done
  admin agents list | grep -c 'enrolled' | grep -q '^2$'
}

t_admin_query_from_third_segment() {
  local out
  out=$(admin status) || return 1
  case "$out" in *"2 enrolled"*"2 online"*) ;; *) echo "  $out" >&2; return 1 ;; esac
}

t_rollout_reaches_agents_behind_nat() {
  # The desired state rides the connections the agents opened through the NAT.
  printf 'till software 2.0.0\n' >"$tmp/app-2.0.0"
  admin artifact add --tenant shop --name till --version 2.0.0 --file "$tmp/app-2.0.0" >/dev/null 2>&1 || return 1
  admin rollout create --tenant shop --artifact till@2.0.0 --waves 2 --id nat >/dev/null 2>&1 || return 1
  admin rollout start nat --tenant shop >/dev/null 2>&1 || return 1
  until_ok 60 eval 'admin rollout show nat | grep -q "^state: *completed"' || return 1
  local n
  for n in 1 2; do [ "$(cat "$tmp/a$n/installed.version" 2>/dev/null)" = 2.0.0 ] || return 1; done
}

t_traffic_went_through_the_nat() {
  # the MASQUERADE rule translated the agents' flows (packet count > 0)
  local pkts
  pkts=$(in_ns rtr iptables -t nat -L POSTROUTING -v -n -x | awk '/MASQUERADE/ { print $1 }')
  [ "${pkts:-0}" -gt 0 ]
}

check network t_network || exit 1
check coordinator_on_public_segment t_coordinator_on_public_segment
check agents_enroll_from_behind_nat t_agents_enroll_from_behind_nat
check facts_from_both_agents t_facts_from_both_agents
check admin_query_from_third_segment t_admin_query_from_third_segment
check rollout_reaches_agents_behind_nat t_rollout_reaches_agents_behind_nat
check traffic_went_through_the_nat t_traffic_went_through_the_nat
finish
