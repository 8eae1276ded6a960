# shellcheck shell=bash
# A network namespace joined to this host by one veth pair, for ICE agents that will not use
# loopback (headless Chromium in tests/browser, Janus's libnice in bench/janus). Sourced, not
# run; the caller needs root and iproute2.
#
#   root namespace:  HOST_IF  HOST_ADDR/PREFIX
#   netns NS:        NS_IF    NS_ADDR/PREFIX    default via HOST_ADDR
#
# Traffic stays between the namespace and this host: IPv4 forwarding is off on HOST_IF, so
# nothing that enters from the namespace is routed anywhere else, and IPv6 is off on both ends.

# veth_netns_up NS HOST_IF HOST_ADDR NS_IF NS_ADDR PREFIX
# Creates the namespace and the pair; fails if either exists already (veth_netns_down first).
veth_netns_up() {
  local ns=$1 host_if=$2 host_addr=$3 ns_if=$4 ns_addr=$5 prefix=$6
  ip netns add "$ns"
  ip link add "$host_if" type veth peer name "$ns_if"
  ip link set "$ns_if" netns "$ns"

  # Host side: our own veth only, no forwarding from it.
  sysctl -qw "net.ipv4.conf.$host_if.forwarding=0"
  if [ -e "/proc/sys/net/ipv6/conf/$host_if/disable_ipv6" ]; then
    sysctl -qw "net.ipv6.conf.$host_if.disable_ipv6=1"
  fi
  ip addr add "$host_addr/$prefix" dev "$host_if"
  ip link set "$host_if" up

  # Namespace side.
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 2>/dev/null || true
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.disable_ipv6=1 2>/dev/null || true
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$ns_addr/$prefix" dev "$ns_if"
  ip -n "$ns" link set "$ns_if" up
  # ICE agents gather only on interfaces that are up and ignore those without a default route;
  # the route also makes the veth the answer to "which source address?" for anything else.
  ip -n "$ns" route add default via "$host_addr" dev "$ns_if"
}

# veth_netns_down NS HOST_IF
# Ends what still runs inside the namespace (a browser whose driver was killed, a Janus whose pid
# file was lost), then removes the namespace and the pair. Quiet if they are already gone.
veth_netns_down() {
  local ns=$1 host_if=$2
  if [ -e "/run/netns/$ns" ]; then
    local pids
    mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null || true)
    if [ "${#pids[@]}" -gt 0 ]; then
      kill -TERM "${pids[@]}" 2>/dev/null || true
      sleep 0.5
      mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null || true)
      [ "${#pids[@]}" -eq 0 ] || kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
  fi
  ip netns del "$ns" 2>/dev/null || true # also destroys the namespace's end and with it its peer
  ip link del "$host_if" 2>/dev/null || true
}
