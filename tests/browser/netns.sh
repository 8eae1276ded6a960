#!/usr/bin/env bash
# Network namespace for the browser test.
#
# Headless Chromium never gathers loopback ICE candidates and ignores interfaces that have no
# default route, so the browser runs in its own namespace with a veth pair:
#
#   root namespace:  sfu-h0  10.203.0.1/30   (the SFU binds and advertises this address)
#   netns sfu-br:    sfu-n0  10.203.0.2/30   default via 10.203.0.1
#
# Traffic stays between the namespace and this host: forwarding is off on sfu-h0, so nothing
# that enters from the namespace is routed anywhere else, and IPv6 is off inside the namespace.
#
# Usage: netns.sh up | down | status      (needs root; idempotent)
set -euo pipefail

NS=${SFU_NETNS:-sfu-br}
HOST_IF=sfu-h0
NS_IF=sfu-n0
HOST_ADDR=10.203.0.1
NS_ADDR=10.203.0.2
PREFIX=30

down() {
  if [ -e "/run/netns/$NS" ]; then
    # Processes this test left inside the namespace (a browser whose driver was killed).
    local pids
    pids=$(ip netns pids "$NS" 2>/dev/null || true)
    if [ -n "$pids" ]; then
      kill -TERM $pids 2>/dev/null || true
      sleep 0.5
      pids=$(ip netns pids "$NS" 2>/dev/null || true)
      [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    fi
  fi
  ip netns del "$NS" 2>/dev/null || true          # also destroys sfu-n0 and with it its peer
  ip link del "$HOST_IF" 2>/dev/null || true
}

up() {
  down
  ip netns add "$NS"
  ip link add "$HOST_IF" type veth peer name "$NS_IF"
  ip link set "$NS_IF" netns "$NS"

  # Host side: our own veth only, no forwarding from it.
  sysctl -qw "net.ipv4.conf.$HOST_IF.forwarding=0"
  if [ -e "/proc/sys/net/ipv6/conf/$HOST_IF/disable_ipv6" ]; then
    sysctl -qw "net.ipv6.conf.$HOST_IF.disable_ipv6=1"
  fi
  ip addr add "$HOST_ADDR/$PREFIX" dev "$HOST_IF"
  ip link set "$HOST_IF" up

  # Namespace side.
  ip netns exec "$NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 2>/dev/null || true
  ip netns exec "$NS" sysctl -qw net.ipv6.conf.default.disable_ipv6=1 2>/dev/null || true
  ip -n "$NS" link set lo up
  ip -n "$NS" addr add "$NS_ADDR/$PREFIX" dev "$NS_IF"
  ip -n "$NS" link set "$NS_IF" up
  ip -n "$NS" route add default via "$HOST_ADDR" dev "$NS_IF"

  # Wait (bounded) until the link answers.
  if ! command -v ping >/dev/null 2>&1; then sleep 0.3; return 0; fi
  for _ in $(seq 1 30); do
    if ip netns exec "$NS" ping -c1 -W1 "$HOST_ADDR" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "netns.sh: $NS cannot reach $HOST_ADDR" >&2
  return 1
}

status() {
  ip netns list | grep -w "$NS" || { echo "no netns $NS"; return 1; }
  ip -br addr show dev "$HOST_IF"
  ip -n "$NS" -br addr
  ip -n "$NS" route
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
