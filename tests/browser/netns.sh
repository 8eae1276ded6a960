#!/usr/bin/env bash
# Network namespace for the browser test.
#
# Headless Chromium never gathers loopback ICE candidates and ignores interfaces that have no
# default route, so the browser runs in its own namespace with a veth pair
# (scripts/veth-netns.sh):
#
#   root namespace:  sfu-h0  10.203.0.1/30   (the SFU binds and advertises this address)
#   netns sfu-br:    sfu-n0  10.203.0.2/30   default via 10.203.0.1
#
# Traffic stays between the namespace and this host: forwarding is off on sfu-h0, so nothing
# that enters from the namespace is routed anywhere else, and IPv6 is off inside the namespace.
#
# Usage: netns.sh up | down | status      (needs root; idempotent)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR/../.. source=scripts/veth-netns.sh
. "$HERE/../../scripts/veth-netns.sh"
NS=${SFU_NETNS:-sfu-br}
HOST_IF=sfu-h0
NS_IF=sfu-n0
HOST_ADDR=10.203.0.1
NS_ADDR=10.203.0.2
PREFIX=30

down() {
  veth_netns_down "$NS" "$HOST_IF"
}

up() {
  down
  veth_netns_up "$NS" "$HOST_IF" "$HOST_ADDR" "$NS_IF" "$NS_ADDR" "$PREFIX"

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
