#!/usr/bin/env bash
# Multi-host test: control and three `sfu run` media nodes, each host a network namespace on
# one bridge with its own address, and sfu-load as the clients in a fifth namespace.
#
#   tests/cluster/run.sh          (root; needs iproute2, curl, jq; builds nothing)
#
#   10.204.0.1    control   HTTP :8080 (WHIP/WHEP, admin API, /metrics), cluster QUIC :7400
#   10.204.0.11   n1 ┐
#   10.204.0.12   n2 ├ sfu run --workers 1, media on UDP :50000
#   10.204.0.13   n3 ┘
#   10.204.0.100  load generator (sfu-load --bind)
#
# The bridge has no address: nothing here can reach or be reached from the host's networks.
#
# Scenarios (CLUSTER_SCENARIOS, in this order by default; each leaves three nodes up):
#   spread  rooms of one run land on every node; placement of SPREAD_ROOMS rooms counted
#   drain   a drained node gets no new session (not even of its own rooms) and its live
#           sessions keep their media
#   kill    kill -9 a node with rooms: dead within dead_after + 1 s, its rooms re-placed, new
#           WHIP + WHEP sessions for them get media through a survivor; the node restarts
#   link    `ip link set down` a node's bridge port: the same; the link comes back after the
#           node has noticed the loss, and the node registers again
#   blip    the link comes back as soon as control has declared the node dead (before the
#           QUIC link's idle timeout): the node must register again
#   region  a publisher in region a (n1), REGION_SUBS subscribers asking for region b (n2, n3):
#           they land on one node of b, which relays the room from n1 (one copy of each packet
#           crosses the link, docs/cascade.md), with no loss; the same subscribers asking for
#           region a give the local baseline for the hop's added latency; then the origin n1
#           is killed: a publisher posting again lands beside the relayed subscribers, which
#           get its media
#   spill   n1 restarted with room for SPILL_CAP sessions; a publisher and SPILL_SUBS
#           subscribers of one room, all asking for n1's region: once n1 is full the room's
#           next sessions spill to another node, which relays the room from n1 (no loss,
#           one copy of each packet per relay node); n1 then restarts with its usual room
#
# Environment:
#   SFU_BIN_DIR         where control, sfu and sfu-load are (default: target/release)
#   OUT_DIR             logs, sfu-load reports, figures.json (default: a temp dir)
#   CLUSTER_SCENARIOS   default "spread drain kill link blip region spill"
#   SPREAD_ROOMS        rooms of the placement count (default 1000; one audio publisher each)
#   REGION_SUBS         subscribers of the region scenario (default 100, audio + video)
#   SPILL_CAP / SPILL_SUBS  n1's room in sessions and the subscribers of the spill scenario
#                       (default 20 / 60)
#   SUSPECT_AFTER_MS / DEAD_AFTER_MS   control's cluster.suspect_after_ms / dead_after_ms
#                       (default 1500 / 3000)
#   MAX_LOSS            loss criterion of the media checks (default 2%)
#
# Exit status: 0 when every scenario passed, 1 when one failed (the message names it and what
# it expected), 2 when the test could not be set up.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN_DIR=${SFU_BIN_DIR:-$ROOT/target/release}
SCENARIOS=${CLUSTER_SCENARIOS:-spread drain kill link blip region spill}
REGION_SUBS=${REGION_SUBS:-100}
SPILL_CAP=${SPILL_CAP:-20}
SPILL_SUBS=${SPILL_SUBS:-60}
SPREAD_ROOMS=${SPREAD_ROOMS:-1000}
SUSPECT_AFTER_MS=${SUSPECT_AFTER_MS:-1500}
DEAD_AFTER_MS=${DEAD_AFTER_MS:-3000}
MAX_LOSS=${MAX_LOSS:-2%}

# Names carry this shell's pid so that parallel runs never share a namespace or a link.
# Interface names stay within 15 characters (a pid has at most 7 digits).
TAG=sfc
ID=$$
BR=${TAG}${ID}br
NET=10.204.0
CTL_ADDR=$NET.1
LG_ADDR=$NET.100
HTTP_PORT=8080
CLUSTER_PORT=7400
MEDIA_PORT=50000
SECRET=cluster-test-secret-$ID-0123456789
NODES=(n1 n2 n3)
declare -A NODE_ADDR=([n1]=$NET.11 [n2]=$NET.12 [n3]=$NET.13)
URL=http://$CTL_ADDR:$HTTP_PORT

ns_of() { echo "$TAG-$ID-$1"; }     # namespace of host $1 (ctl, lg, n1, ...)
port_of() { echo "$TAG$ID$1"; }     # its link's end on the bridge, in the root namespace

setup_error() { echo "cluster test: $*" >&2; exit 2; }
log() { printf 'cluster test: %s\n' "$*"; }

# The scenario running now, for failure messages.
CURRENT=setup
fail() {
  echo "cluster test: FAIL [$CURRENT]: $*" >&2
  exit 1
}

now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }

# --- preconditions ------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || setup_error "must run as root (it creates network namespaces)"
for tool in ip curl jq; do
  command -v "$tool" >/dev/null || setup_error "$tool not found: apt-get install iproute2 curl jq"
done
for bin in control sfu sfu-load; do
  [ -x "$BIN_DIR/$bin" ] ||
    setup_error "no $BIN_DIR/$bin: cargo build --release -p control -p sfu-core -p tools (or set SFU_BIN_DIR)"
done
BIN_DIR=$(cd "$BIN_DIR" && pwd)

OUT_DIR=${OUT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/sfu-cluster.XXXXXX")}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)

# --- processes ----------------------------------------------------------------------------------
declare -A PID=()     # name -> pid of what this script started (control, n1.., load runs)
declare -A STARTED=() # names started before in this run: a restart appends to the log

# start NAME HOST CMD...   runs CMD in HOST's namespace, output to $OUT_DIR/NAME.log (emptied
# at the first start, so that an OUT_DIR used before holds no stale lines to wait for).
# `ip netns exec` execs CMD, so the pid recorded is CMD's own.
start() {
  local name=$1 host=$2; shift 2
  [ -n "${STARTED[$name]:-}" ] || : >"$OUT_DIR/$name.log"
  STARTED[$name]=1
  ip netns exec "$(ns_of "$host")" "$@" </dev/null >>"$OUT_DIR/$name.log" 2>&1 &
  PID[$name]=$!
}

# stop NAME [TIMEOUT_S]: SIGTERM, up to TIMEOUT_S (10) to exit, then SIGKILL. Returns the
# process's exit status.
stop() {
  local name=$1 pid=${PID[$1]:-} timeout=${2:-10} rc=0
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$(($(now_ms) + timeout * 1000))
  while kill -0 "$pid" 2>/dev/null && [ "$(now_ms)" -lt "$deadline" ]; do sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || rc=$?
  unset "PID[$name]"
  return "$rc"
}

# finish NAME TIMEOUT_S: waits for NAME to exit by itself and returns its status (fails the
# scenario if it is still running after TIMEOUT_S).
finish() {
  local name=$1 timeout=$2 pid=${PID[$1]} rc=0
  local deadline=$(($(now_ms) + timeout * 1000))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$(now_ms)" -ge "$deadline" ]; then
      stop "$name" || true
      fail "$name still running after ${timeout}s (log: $OUT_DIR/$name.log)"
    fi
    sleep 0.1
  done
  wait "$pid" || rc=$?
  unset "PID[$name]"
  return "$rc"
}

# --- network ------------------------------------------------------------------------------------
# remove_hosts TAG_ID: everything a run with that id created (its processes included).
remove_hosts() {
  local id=$1 ns pids
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$TAG-$id-" || true); do
    mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null || true)
    if [ "${#pids[@]}" -gt 0 ]; then kill -KILL "${pids[@]}" 2>/dev/null || true; fi
    ip netns del "$ns" 2>/dev/null || true # takes the veth pair with it
  done
  ip link del "$TAG${id}br" 2>/dev/null || true
}

# Namespaces and bridges of earlier runs whose script is gone (killed before its trap ran).
remove_stale() {
  local ids id
  ids=$( {
    ip netns list 2>/dev/null | awk '{print $1}' | sed -n "s/^$TAG-\([0-9]\{1,\}\)-.*/\1/p"
    ip -o link show type bridge 2>/dev/null | awk -F': ' '{print $2}' | sed -n "s/^$TAG\([0-9]\{1,\}\)br$/\1/p"
  } | sort -u)
  for id in $ids; do
    [ "$id" = "$ID" ] && continue
    if kill -0 "$id" 2>/dev/null && tr '\0' ' ' <"/proc/$id/cmdline" 2>/dev/null | grep -q 'run\.sh'; then
      continue # a parallel run (or a reused pid running some run.sh: leave it alone too)
    fi
    log "removing namespaces left by run $id"
    remove_hosts "$id"
  done
}

# add_host HOST ADDR: a namespace whose eth0 has ADDR/24 and is plugged into the bridge.
add_host() {
  local host=$1 addr=$2 ns port
  ns=$(ns_of "$host")
  port=$(port_of "$host")
  ip netns add "$ns"
  ip link add "$port" type veth peer name eth0 netns "$ns"
  sysctl -qw "net.ipv6.conf.$port.disable_ipv6=1" 2>/dev/null || true
  ip link set "$port" master "$BR"
  ip link set "$port" up
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 2>/dev/null || true
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.disable_ipv6=1 2>/dev/null || true
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
}

network_up() {
  ip link add "$BR" type bridge
  sysctl -qw "net.ipv6.conf.$BR.disable_ipv6=1" 2>/dev/null || true
  ip link set "$BR" up
  add_host ctl "$CTL_ADDR"
  add_host lg "$LG_ADDR"
  local n
  for n in "${NODES[@]}"; do add_host "$n" "${NODE_ADDR[$n]}"; done
  # Bridge ports take a moment to forward; wait until every host answers.
  for n in ctl "${NODES[@]}"; do
    local addr=$CTL_ADDR
    [ "$n" = ctl ] || addr=${NODE_ADDR[$n]}
    wait_for "ping $n ($addr) from the load generator" 10 \
      ip netns exec "$(ns_of lg)" ping -c1 -W1 "$addr"
  done
}

# --- cleanup ------------------------------------------------------------------------------------
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local name
  for name in "${!PID[@]}"; do stop "$name" >/dev/null 2>&1 || true; done
  remove_hosts "$ID"
  if [ "$rc" -ne 0 ]; then
    echo "cluster test: FAILED (exit $rc); logs, reports and figures in $OUT_DIR" >&2
    for name in control n1 n2 n3; do
      [ -s "$OUT_DIR/$name.log" ] || continue
      echo "---- last lines of $name.log (without per-session lines) ----" >&2
      grep -v 'INFO sfu_core::engine\|INFO control::http' "$OUT_DIR/$name.log" | tail -n 12 >&2 || true
    done
  else
    echo "cluster test: logs, reports and figures.json in $OUT_DIR"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- polling ------------------------------------------------------------------------------------
# wait_for WHAT TIMEOUT_S CMD...   runs CMD every 100 ms until it succeeds; fails after TIMEOUT_S.
wait_for() {
  local what=$1 timeout=$2; shift 2
  local deadline=$(($(now_ms) + timeout * 1000))
  until "$@" >/dev/null 2>&1; do
    [ "$(now_ms)" -lt "$deadline" ] || fail "$what: not within ${timeout}s"
    sleep 0.1
  done
}

# --- control's API ------------------------------------------------------------------------------
ADMIN_TOKEN=
api() { # api METHOD PATH
  ip netns exec "$(ns_of lg)" curl -fsS --max-time 5 -X "$1" \
    -H "Authorization: Bearer $ADMIN_TOKEN" "$URL$2"
}
nodes_json() { api GET /api/nodes; }
rooms_json() { api GET /api/rooms; }
node_state() { nodes_json | jq -r --arg n "$1" '.[] | select(.id == $n) | .state'; }
state_is() { [ "$(node_state "$1")" = "$2" ]; }
node_sessions() { nodes_json | jq -r --arg n "$1" '.[] | select(.id == $n) | .sessions'; }
packets_out() { nodes_json | jq -r --arg n "$1" '.[] | select(.id == $n) | .load.packets_out // 0'; }
# rooms_on NODE PREFIX: names of the rooms starting with PREFIX that NODE holds, one a line.
rooms_on() {
  rooms_json | jq -r --arg n "$1" --arg p "$2" \
    '.[] | select((.room | startswith($p)) and (.nodes | index($n))) | .room'
}
room_placed() { [ -n "$(rooms_json | jq -r --arg r "$1" '.[] | select(.room == $r) | .nodes[]')" ]; }
rooms_listed() { [ "$(count_rooms "$1")" -ge "$2" ]; } # rooms_listed PREFIX N
count_rooms() { rooms_json | jq --arg p "$1" '[.[] | select(.room | startswith($p))] | length'; }
metric() { # metric SERIES -> value on control's /metrics
  ip netns exec "$(ns_of lg)" curl -fsS --max-time 5 "$URL/metrics" |
    awk -v s="$1" '$1 == s { print $2; found = 1 } END { exit !found }'
}

# How often the node's log says it lost its link to control.
link_losses() { grep -c 'link to control lost' "$OUT_DIR/$1.log" || true; }
link_losses_above() { [ "$(link_losses "$1")" -gt "$2" ]; }

all_up() {
  local n
  for n in "${NODES[@]}"; do state_is "$n" up || return 1; done
}

# The node's media is flowing: its packets_out (from its 1 s load reports) grew by at least 50.
media_flows() {
  local node=$1 before after deadline
  before=$(packets_out "$node")
  deadline=$(($(now_ms) + 15000))
  while [ "$(now_ms)" -lt "$deadline" ]; do
    sleep 0.2
    after=$(packets_out "$node")
    [ "$after" -ge $((before + 50)) ] && return 0
  done
  return 1
}

# --- starting the cluster -----------------------------------------------------------------------
start_control() {
  start control ctl env NO_COLOR=1 RUST_LOG="${RUST_LOG:-info}" \
    SFU__CLUSTER__LISTEN="$CTL_ADDR:$CLUSTER_PORT" SFU__CLUSTER__SECRET="$SECRET" \
    SFU__CLUSTER__TLS_CERT="$OUT_DIR/control-cert.pem" SFU__CLUSTER__TLS_KEY="$OUT_DIR/control-key.pem" \
    SFU__CLUSTER__SUSPECT_AFTER_MS="$SUSPECT_AFTER_MS" SFU__CLUSTER__DEAD_AFTER_MS="$DEAD_AFTER_MS" \
    SFU__AUTH__DEV=true SFU__LIMITS__SIGNALING_RATE_PER_SEC=0 SFU__LIMITS__MAX_SESSIONS_PER_IDENTITY=0 \
    SFU__LIMITS__MAX_SESSIONS_PER_ROOM=0 \
    "$BIN_DIR/control" serve --http "$CTL_ADDR:$HTTP_PORT"
  local deadline=$(($(now_ms) + 30000))
  until grep -q '^SFU ready: ' "$OUT_DIR/control.log"; do
    kill -0 "${PID[control]}" 2>/dev/null || fail "control exited during start-up"
    [ "$(now_ms)" -lt "$deadline" ] || fail "no 'SFU ready:' line from control within 30s"
    sleep 0.1
  done
  grep -q "^cluster: " "$OUT_DIR/control.log" || fail "control printed no 'cluster:' line"
  [ -s "$OUT_DIR/control-cert.pem" ] || fail "control wrote no certificate at $OUT_DIR/control-cert.pem"
}

# start_node NODE: `sfu run` in NODE's namespace. Workers are not pinned: the three "hosts"
# share this machine's cores, and pinning would put every node's worker on the first one.
# n1 is in region a, n2 and n3 in region b (only the region scenarios ask for regions).
# start_node NODE [CAPACITY]: CAPACITY sessions at most (node.max_sessions_per_worker; one
# worker), else the default.
start_node() {
  local n=$1 region=b capacity=${2:-}
  [ "$n" = n1 ] && region=a
  printf '[node]\npin_workers = false\n' >"$OUT_DIR/node-$n.toml"
  [ -z "$capacity" ] || printf 'max_sessions_per_worker = %d\n' "$capacity" >>"$OUT_DIR/node-$n.toml"
  start "$n" "$n" env NO_COLOR=1 RUST_LOG="${RUST_LOG:-info}" \
    "$BIN_DIR/sfu" run --config "$OUT_DIR/node-$n.toml" --control "$CTL_ADDR:$CLUSTER_PORT" --node-id "$n" \
    --cluster-secret "$SECRET" --control-cert "$OUT_DIR/control-cert.pem" --region "$region" \
    --advertise-ip "${NODE_ADDR[$n]}" --media-port-base "$MEDIA_PORT" --workers 1
}

# --- load ---------------------------------------------------------------------------------------
# load NAME ARGS...   sfu-load from the load generator's namespace, in the background; its
# report goes to $OUT_DIR/NAME/.
load() {
  local name=$1; shift
  rm -f "$OUT_DIR/$name/report.json" "$OUT_DIR/$name/report.html"
  start "$name" lg "$BIN_DIR/sfu-load" --url "$URL" --bind "$LG_ADDR" --threads 1 \
    --report "$OUT_DIR/$name" "$@"
}
report() { jq -r "${@:2}" "$OUT_DIR/$1/report.json"; } # report NAME [JQ-FLAGS] FILTER

# A run that has to carry media: every peer connected, loss within MAX_LOSS.
checked_load() {
  local name=$1; shift
  load "$name" --max-loss "$MAX_LOSS" --min-connected 100% "$@"
}

# --- figures ------------------------------------------------------------------------------------
declare -A FIG=()
figure() { FIG[$1]=$2; log "figure: $1 = $2"; }
write_figures() {
  local k json='{}'
  for k in "${!FIG[@]}"; do
    json=$(jq --arg k "$k" --arg v "${FIG[$k]}" '. + {($k): ($v | fromjson? // $v)}' <<<"$json")
  done
  jq -S . <<<"$json" >"$OUT_DIR/figures.json"
}

# The node holding most rooms with PREFIX (the scenarios' victim), with at least one.
busiest_node() {
  rooms_json | jq -r --arg p "$1" '
    [.[] | select(.room | startswith($p)) | .nodes[]] | group_by(.) |
    map({node: .[0], rooms: length}) | max_by(.rooms) | .node // empty'
}

# Wait until every session of a run exists: ROOMS rooms with PREFIX, PER_ROOM sessions each.
sessions_placed() {
  local prefix=$1 want=$2
  [ "$(nodes_json | jq '[.[] | .sessions] | add')" -ge "$want" ] &&
    [ "$(count_rooms "$prefix")" -ge "$3" ]
}

# Wait until the rooms with PREFIX hold at least N sessions together (GET /api/rooms/{room}).
sessions_in_rooms() {
  local prefix=$1 want=$2 room n total=0
  for room in $(rooms_json | jq -r --arg p "$prefix" '.[] | select(.room | startswith($p)) | .room'); do
    n=$(api GET "/api/rooms/$room" | jq '.sessions | length') || true # 404: the room just emptied
    total=$((total + ${n:-0}))
  done
  [ "$total" -ge "$want" ]
}

# --- scenarios ----------------------------------------------------------------------------------

# Rooms spread over the nodes: SPREAD_ROOMS rooms with one audio publisher each; every node must
# hold some (at least a sixth, a third being the even share) and no room more than one node.
# What is counted is placement (a session exists once its node answered the offer); the run is
# stopped once every room is listed, whether or not every publisher finished connecting (on a
# loaded machine with debug binaries, set-up is the slow part), but no peer may have failed.
scenario_spread() {
  local n=$SPREAD_ROOMS
  load spread --room-prefix sp- --rooms "$n" --publishers 1 --subscribers 0 --media audio --dtx \
    --ramp 250/s --duration 600s --connect-timeout 120s
  local t0
  t0=$(now_ms)
  wait_for "all $n rooms listed by GET /api/rooms" $((n / 4 + 60)) rooms_listed sp- "$n"
  figure spread_placed_s "$(( ($(now_ms) - t0) / 1000 ))"
  rooms_json >"$OUT_DIR/spread-rooms.json"
  # Ending the run deletes its sessions, which takes a while under load.
  stop spread 120 || true
  [ -s "$OUT_DIR/spread/report.json" ] || fail "sfu-load wrote no report ($OUT_DIR/spread.log)"
  local counts
  counts=$(jq -c '[.[] | select(.room | startswith("sp-")) | .nodes[]] | group_by(.) |
    map({(.[0]): length}) | add' "$OUT_DIR/spread-rooms.json")
  figure spread_rooms "$n"
  figure spread_per_node "$counts"
  local failed
  failed=$(report spread .peers.failed)
  [ "$failed" -eq 0 ] ||
    fail "$failed of $n publishers failed: $(report spread -c .peers.failures) ($OUT_DIR/spread.log)"
  local node count min=$((n / 6))
  for node in "${NODES[@]}"; do
    count=$(jq -r --arg n "$node" '.[$n] // 0' <<<"$counts")
    [ "$count" -ge "$min" ] || fail "$node holds $count of $n rooms (want at least $min): $counts"
  done
  local split
  split=$(jq '[.[] | select(.room | startswith("sp-")) | select(.nodes | length > 1)] | length' \
    "$OUT_DIR/spread-rooms.json")
  [ "$split" -eq 0 ] || fail "$split rooms are on more than one node"
}

# Drain: sessions on the drained node keep their media; new rooms avoid it.
scenario_drain() {
  local keep=9 new=30
  # Long enough to outlast the scenario; stopped (SIGTERM: the verdict still counts) below.
  checked_load drain-keep --room-prefix dk- --rooms "$keep" --publishers 1 --subscribers 1 \
    --media audio --ramp 100/s --duration 300s
  wait_for "the drain-keep sessions placed" 60 sessions_placed dk- $((2 * keep)) "$keep"
  local victim
  victim=$(busiest_node dk-)
  [ -n "$victim" ] || fail "no node holds a dk- room"
  wait_for "media through $victim before the drain" 30 media_flows "$victim"
  local held
  held=$(rooms_on "$victim" dk- | wc -l)
  log "drain: draining $victim (holds $held of $keep live rooms)"

  local answer
  answer=$(api POST "/api/nodes/$victim/drain") || fail "POST /api/nodes/$victim/drain failed"
  [ "$(jq -r .state <<<"$answer")" = draining ] || fail "drain answered $answer"
  state_is "$victim" draining || fail "GET /api/nodes does not show $victim draining"

  checked_load drain-new --room-prefix dn- --rooms "$new" --publishers 1 --subscribers 1 \
    --media audio --ramp 200/s --duration 3s
  wait_for "all $new new rooms listed" 60 rooms_listed dn- "$new"
  local landed
  landed=$(rooms_on "$victim" dn- | wc -l)
  [ "$landed" -eq 0 ] || fail "$landed of $new new rooms landed on draining $victim"
  local rc=0
  finish drain-new 60 || rc=$?
  [ "$rc" -eq 0 ] || fail "new rooms beside the draining node lost media (exit $rc; $OUT_DIR/drain-new.log)"
  # Nothing new lands on the draining node, not even a new session of one of its rooms: one
  # more subscriber in every dk- room, and the victim's session count stays as it was. Those
  # of the victim's rooms land beside it and get the room's media through a relay from it
  # (docs/cascade.md).
  local victim_sessions
  victim_sessions=$(node_sessions "$victim")
  checked_load drain-join --room-prefix dk- --rooms "$keep" --publishers 0 --subscribers 1 \
    --media audio --ramp 100/s --duration 300s
  wait_for "the drain-join sessions placed" 60 sessions_in_rooms dk- $((3 * keep))
  [ "$(node_sessions "$victim")" -eq "$victim_sessions" ] ||
    fail "new sessions of $victim's rooms landed on it while it drains: $(nodes_json | jq -c '[.[] | {id, sessions}]')"
  [ "$(rooms_on "$victim" dk- | wc -l)" -eq "$held" ] || fail "$victim's rooms moved during the drain"
  wait_for "media through the relays from $victim" 30 media_flows "$victim"
  rc=0
  stop drain-join || rc=$?
  [ "$rc" -eq 0 ] ||
    fail "subscribers placed beside the draining node lost media (sfu-load exit $rc; $OUT_DIR/drain-join.log)"
  figure drain_join_loss_pct "$(report drain-join .packets.loss_pct)"
  # The rooms already there stay there, with media.
  [ "$(rooms_on "$victim" dk- | wc -l)" -eq "$held" ] || fail "$victim's rooms moved during the drain"
  wait_for "media through draining $victim" 30 media_flows "$victim"
  rc=0
  stop drain-keep || rc=$?
  [ "$rc" -eq 0 ] || fail "sessions of the drained node lost media (sfu-load exit $rc; $OUT_DIR/drain-keep.log)"
  figure drain_keep_loss_pct "$(report drain-keep .packets.loss_pct)"

  answer=$(api POST "/api/nodes/$victim/undrain") || fail "POST /api/nodes/$victim/undrain failed"
  wait_for "$victim up again after undrain" 10 state_is "$victim" up
}

# The value of a series in control's /metrics, summed over the lines that contain every
# MATCH (e.g. 'node="n1"'): metric_sum NAME MATCH...
metric_sum() {
  local name=$1 line; shift
  ip netns exec "$(ns_of lg)" curl -fsS --max-time 5 "$URL/metrics" | { grep "^$name{" || true; } |
    while IFS= read -r line; do
      local m ok=1
      for m in "$@"; do [[ $line == *"$m"* ]] || ok=0; done
      if [ "$ok" = 1 ]; then echo "${line##* }"; fi
    done | awk '{ s += $1 } END { printf "%d", s }'
}

# Region: a publisher asking for region a lands on n1; REGION_SUBS subscribers of its room
# asking for region b land on one node of b (n2 or n3), which relays the room from n1: all get
# media with no loss, and n1 sends each packet over the link once, not once per subscriber.
# The same subscribers asking for region a (local to the publisher) give the baseline for the
# latency the hop adds. sfu-load's report says where each peer landed (X-Sfu-Node) and splits
# its latency by local and relayed packets: both runs must agree with the placement.
scenario_region() {
  local subs=$REGION_SUBS
  local media=(--media audio-video --video-kbps 300 --ramp 50/s --duration 10s --connect-timeout 60s)
  checked_load region-local --room-prefix rl- --rooms 1 --publishers 1 --subscribers "$subs" \
    --publisher-region a --subscriber-region a "${media[@]}"
  finish region-local 180 || fail "local subscribers lost media ($OUT_DIR/region-local.log)"
  # shellcheck disable=SC2016 # $s is jq's
  report region-local -e --argjson s "$subs" '
      (.nodes | keys) == ["n1"] and .nodes.n1.publishers == 1 and .nodes.n1.subscribers == $s
      and .packets_local.subscribers == $s and .packets_relayed.subscribers == 0
      and .latency_us.count > 0 and .latency_local_us.count == .latency_us.count' >/dev/null ||
    fail "region-local: want the publisher and all $subs subscribers on n1, every packet local; the report says nodes $(report region-local -c .nodes), local $(report region-local -c .packets_local), relayed $(report region-local -c .packets_relayed)"
  local before
  before=$(metric_sum sfu_cluster_relay_packets_total 'node="n1"' 'direction="out"')
  checked_load region-relayed --room-prefix rr- --rooms 1 --publishers 1 --subscribers "$subs" \
    --publisher-region a --subscriber-region b "${media[@]}"
  wait_for "the region-relayed sessions placed" 120 sessions_in_rooms rr- $((subs + 1))
  local room
  room=$(api GET /api/rooms/rr-0)
  local on_n1 on_b
  on_n1=$(jq '[.sessions[] | select(.node == "n1")] | length' <<<"$room")
  on_b=$(jq '[.sessions[] | select(.node != "n1")] | map(.node) | unique' <<<"$room")
  [ "$on_n1" -eq 1 ] || fail "rr-0 has $on_n1 sessions on n1 (want the publisher only): $room"
  [ "$(jq length <<<"$on_b")" -eq 1 ] || fail "rr-0's subscribers are spread over $on_b (want one node of region b)"
  finish region-relayed 180 || fail "relayed subscribers lost media ($OUT_DIR/region-relayed.log)"
  # shellcheck disable=SC2016 # $s is jq's
  report region-relayed -e --argjson s "$subs" '
      .nodes.n1.publishers == 1 and .nodes.n1.subscribers == 0
      and ([.nodes[].publishers] | add) == 1
      and ([.nodes | to_entries[] | select(.value.subscribers > 0)]
        | length == 1 and .[0].key != "n1" and .[0].value.subscribers == $s)
      and .packets_relayed.subscribers == $s and .packets_local.subscribers == 0
      and .latency_us.count > 0 and .latency_relayed_us.count == .latency_us.count' >/dev/null ||
    fail "region-relayed: want the publisher on n1 and all $subs subscribers on one other node, every packet relayed; the report says nodes $(report region-relayed -c .nodes), local $(report region-relayed -c .packets_local), relayed $(report region-relayed -c .packets_relayed)"
  local crossed sent
  sent=$(report region-relayed .packets.sent)
  [ "$sent" -gt 0 ] || fail "the publisher sent nothing"
  # Load reports reach control every second: wait until n1's count covers what was published.
  relay_crossed() { echo $(( $(metric_sum sfu_cluster_relay_packets_total 'node="n1"' 'direction="out"') - before )); }
  caught_up() { [ "$(relay_crossed)" -ge $((sent * 9 / 10)) ]; }
  wait_for "n1's relay figures in /metrics" 15 caught_up
  crossed=$(relay_crossed)
  # One copy per packet (plus hop repairs), not one per subscriber.
  [ "$crossed" -le $((sent * 12 / 10)) ] ||
    fail "n1 sent $crossed packets over the relay link for $sent published ($subs subscribers)"
  figure region_relayed_loss_pct "$(report region-relayed .packets.loss_pct)"
  figure region_relay_packets_per_published "$(jq -n "$crossed / $sent * 1000 | round / 1000")"
  figure region_relay_bytes "$(metric_sum sfu_cluster_relay_bytes_total 'node="n1"' 'direction="out"')"
  region_origin_lost
  figure region_local_latency_p50_p99_ms "$(report region-local -c '[.latency_us.p50, .latency_us.p99] | map(. / 1000 | . * 10 | round / 10)')"
  figure region_relayed_latency_p50_p99_ms "$(report region-relayed -c '[.latency_us.p50, .latency_us.p99] | map(. / 1000 | . * 10 | round / 10)')"
}

# The origin of a relayed room dies: the subscribers on the relay node stay, their publisher
# is gone; a publisher posting again (asking for region a, where no node is left) lands beside
# them, and they get its media. n1 comes back as a new incarnation afterwards.
region_origin_lost() {
  load region-watch --room-prefix ro- --rooms 1 --publishers 1 --subscribers 20 \
    --publisher-region a --subscriber-region b --media audio --ramp 50/s --duration 300s
  wait_for "the region-watch sessions placed" 60 sessions_in_rooms ro- 21
  local watchers
  watchers=$(api GET /api/rooms/ro-0 | jq -r '[.sessions[] | select(.node != "n1") | .node] | unique | .[0]')
  [ -n "$watchers" ] && [ "$watchers" != null ] || fail "ro-0 has no subscribers beside n1"
  wait_for "media relayed to $watchers" 30 media_flows "$watchers"
  log "region: kill -9 n1, the origin of ro-0 (its subscribers are on $watchers)"
  kill -KILL "${PID[n1]}"
  wait "${PID[n1]}" 2>/dev/null || true
  unset "PID[n1]"
  wait_for "n1 declared dead" $((DEAD_AFTER_MS / 1000 + 20)) state_is n1 dead
  checked_load region-repost --room-prefix ro- --rooms 1 --publishers 1 --subscribers 0 \
    --publisher-region a --media audio --ramp 50/s --duration 5s
  wait_for "the new publisher placed beside the watchers" 30 sessions_in_rooms ro- 21
  local on
  on=$(api GET /api/rooms/ro-0 | jq -r '[.sessions[] | select(.kind == "publish") | .node] | unique | join(",")')
  [ "$on" = "$watchers" ] || fail "the new publisher of ro-0 landed on $on, not beside its subscribers on $watchers"
  wait_for "the watchers get the new publisher" 30 media_flows "$watchers"
  finish region-repost 60 || fail "the new publisher of ro-0 failed ($OUT_DIR/region-repost.log)"
  start_node n1
  wait_for "n1 up again" 30 state_is n1 up
  # n1 is back, with a new certificate. A publisher asking for region a lands on it, and
  # control has it and $watchers relay ro-0 to each other again: their link opens with the
  # addresses and certificates control gives now.
  checked_load region-back --room-prefix ro- --rooms 1 --publishers 1 --subscribers 0 \
    --publisher-region a --media audio --ramp 50/s --duration 10s
  wait_for "the publisher of region-back placed on n1" 30 publisher_on ro-0 n1
  wait_for "$watchers linked to the restarted n1" 30 relay_up "$watchers" n1
  finish region-back 60 || fail "the publisher on the restarted n1 failed ($OUT_DIR/region-back.log)"
  stop region-watch || true
}
relay_up() { [ "$(metric_sum sfu_cluster_relay_up "node=\"$1\"" "peer=\"$2\"")" = 1 ]; }
publisher_on() { api GET "/api/rooms/$1" | jq -e --arg n "$2" 'any(.sessions[]; .kind == "publish" and .node == $n)' >/dev/null; }

# Spill: the room's node is full (not draining, no other region asked for): the room's next
# sessions land on another node, which relays the room from it.
scenario_spill() {
  local cap=$SPILL_CAP subs=$SPILL_SUBS
  respawn_n1 "$cap"
  local before
  before=$(metric_sum sfu_cluster_relay_packets_total 'node="n1"' 'direction="out"')
  checked_load spill --room-prefix sl- --rooms 1 --publishers 1 --subscribers "$subs" \
    --publisher-region a --subscriber-region a --media audio-video --video-kbps 300 \
    --ramp 50/s --duration 10s --connect-timeout 60s
  wait_for "the spill sessions placed" 120 sessions_in_rooms sl- $((subs + 1))
  local room on_n1 relays
  room=$(api GET /api/rooms/sl-0)
  on_n1=$(jq '[.sessions[] | select(.node == "n1")] | length' <<<"$room")
  relays=$(jq '[.sessions[] | select(.node != "n1") | .node] | unique | length' <<<"$room")
  [ "$on_n1" -eq "$cap" ] || fail "sl-0 has $on_n1 sessions on n1 (want its capacity, $cap): $room"
  [ "$relays" -ge 1 ] || fail "no session of sl-0 spilled off n1: $room"
  jq -e '.sessions[] | select(.kind == "publish") | .node == "n1"' <<<"$room" >/dev/null ||
    fail "the publisher of sl-0 is not on n1: $room"
  finish spill 180 || fail "spilled subscribers lost media ($OUT_DIR/spill.log)"
  # shellcheck disable=SC2016 # $local and $relayed are jq's
  report spill -e --argjson local $((cap - 1)) --argjson relayed $((subs - cap + 1)) '
      .nodes.n1.publishers == 1 and .nodes.n1.subscribers == $local
      and .packets_local.subscribers == $local and .packets_relayed.subscribers == $relayed
      and .packets_relayed.received > 0' >/dev/null ||
    fail "spill: want 1 publisher and $((cap - 1)) subscribers on n1, $((subs - cap + 1)) relayed; the report says nodes $(report spill -c .nodes), local $(report spill -c .packets_local), relayed $(report spill -c .packets_relayed)"
  local sent crossed
  sent=$(report spill .packets.sent)
  relay_crossed() { echo $(( $(metric_sum sfu_cluster_relay_packets_total 'node="n1"' 'direction="out"') - before )); }
  # A relay node gets the room's packets from its first session on: the first relay node
  # gets nearly all of them, a later one fewer (the later the spill reached it, as on a busy
  # machine). So: at least one copy, at most one per relay node (plus hop repairs), never
  # one per relayed subscriber.
  local deadline=$(($(now_ms) + 15000))
  until [ "$(relay_crossed)" -ge $((sent * 9 / 10)) ] || [ "$(now_ms)" -ge "$deadline" ]; do
    sleep 0.2
  done
  crossed=$(relay_crossed)
  [ "$crossed" -ge $((sent * 9 / 10)) ] ||
    fail "n1 sent $crossed packets over relay links for $sent published (want at least one copy; $relays relay node(s))"
  [ "$crossed" -le $((sent * relays * 12 / 10)) ] ||
    fail "n1 sent $crossed packets over relay links for $sent published ($relays relay node(s))"
  figure spill_sessions_on_n1_and_relay_nodes "[$on_n1, $relays]"
  figure spill_relay_packets_per_published "$(jq -n "$crossed / $sent * 1000 | round / 1000")"
  figure spill_local_relayed_loss_pct "$(report spill -c '[.packets_local.loss_pct, .packets_relayed.loss_pct]')"
  figure spill_local_relayed_latency_p50_p99_ms "$(report spill -c '[.latency_local_us, .latency_relayed_us] | map([.p50, .p99] | map(. / 1000 | . * 10 | round / 10))')"
  respawn_n1
}

# respawn_n1 [CAPACITY]: stop n1 (it holds no session by now) and start it again, with room
# for CAPACITY sessions if given.
respawn_n1() {
  stop n1 30 || true
  wait_for "n1 gone" $((DEAD_AFTER_MS / 1000 + 20)) n1_not_up
  start_node n1 "${1:-}"
  wait_for "n1 up again" 30 state_is n1 up
}
n1_not_up() { ! state_is n1 up; }

# After a node is lost (killed or cut off): control must declare it dead within dead_after + 1 s
# of the loss; new WHIP + WHEP sessions for its rooms must land on a survivor and get media.
# Sets LOST_MS (loss -> dead) and REJOIN_MS (loss -> media for every new session).
replaced_rooms() {
  local scenario=$1 victim=$2 prefix=$3 rooms=$4 t_lost=$5
  local victim_rooms
  victim_rooms=$(<"$OUT_DIR/$scenario-victim-rooms.txt")
  wait_for "$victim declared dead" $((DEAD_AFTER_MS / 1000 + 20)) state_is "$victim" dead
  local t_dead
  t_dead=$(now_ms)
  LOST_MS=$((t_dead - t_lost))
  [ "$LOST_MS" -le $((DEAD_AFTER_MS + 1000)) ] ||
    fail "$victim declared dead ${LOST_MS} ms after the loss (want ≤ dead_after $DEAD_AFTER_MS ms + 1 s)"
  [ "$(metric 'sfu_cluster_nodes{state="dead"}')" = 1 ] ||
    fail "sfu_cluster_nodes{state=\"dead\"} is not 1"
  [ "$(rooms_on "$victim" "$prefix" | wc -l)" -eq 0 ] ||
    fail "dead $victim still listed as holding rooms"

  # New publishers and subscribers for the same rooms.
  checked_load "$scenario-rejoin" --room-prefix "$prefix" --rooms "$rooms" --publishers 1 \
    --subscribers 1 --media audio --ramp 500/s --duration 3s
  local room
  for room in $victim_rooms; do
    wait_for "room $room placed again" 30 room_placed "$room"
  done
  rooms_json >"$OUT_DIR/$scenario-rooms-after.json"
  local wrong
  wrong=$(jq -r --arg n "$victim" '.[] | select(.nodes | index($n)) | .room' \
    "$OUT_DIR/$scenario-rooms-after.json")
  [ -z "$wrong" ] || fail "rooms placed on lost $victim: $wrong"
  local rc=0
  finish "$scenario-rejoin" 60 || rc=$?
  [ "$rc" -eq 0 ] ||
    fail "new sessions of $victim's rooms did not all get media (exit $rc; $OUT_DIR/$scenario-rejoin.log)"
  local started join_max
  started=$(report "$scenario-rejoin" .started_at_unix_ms)
  join_max=$(report "$scenario-rejoin" .join_ms.max)
  REJOIN_MS=$(( started - t_lost + ${join_max%.*} ))
}

# A run with rooms on every node, and the node holding most of them.
base_load() {
  local name=$1 prefix=$2 rooms=$3
  load "$name" --room-prefix "$prefix" --rooms "$rooms" --publishers 1 --subscribers 1 \
    --media audio --ramp 100/s --duration 600s
  wait_for "the $name sessions placed" 60 sessions_placed "$prefix" $((2 * rooms)) "$rooms"
  VICTIM=$(busiest_node "$prefix")
  [ -n "$VICTIM" ] || fail "no node holds a $prefix room"
  wait_for "media through $VICTIM" 30 media_flows "$VICTIM"
}

scenario_kill() {
  local rooms=12
  base_load kill-base ki- "$rooms"
  local victim=$VICTIM
  rooms_on "$victim" ki- >"$OUT_DIR/kill-victim-rooms.txt"
  log "kill: kill -9 $victim (holds $(wc -l <"$OUT_DIR/kill-victim-rooms.txt") of $rooms rooms)"
  local t_kill
  t_kill=$(now_ms)
  kill -KILL "${PID[$victim]}"
  wait "${PID[$victim]}" 2>/dev/null || true
  unset "PID[$victim]"
  replaced_rooms kill "$victim" ki- "$rooms" "$t_kill"
  figure kill_to_dead_ms "$LOST_MS"
  figure failover_ms "$REJOIN_MS"
  stop kill-base || true

  # Back to three nodes: the same node id registers again.
  local t_restart
  t_restart=$(now_ms)
  start_node "$victim"
  wait_for "restarted $victim up" 30 state_is "$victim" up
  figure restart_to_registered_ms $(($(now_ms) - t_restart))
}

# cut_link SCENARIO PREFIX: cut the busiest node's bridge port; checks as for kill. Leaves the
# victim's port down; sets VICTIM and T_CUT.
cut_link() {
  local scenario=$1 rooms=12 prefix=$2
  base_load "$scenario-base" "$prefix" "$rooms"
  local victim=$VICTIM
  rooms_on "$victim" "$prefix" >"$OUT_DIR/$scenario-victim-rooms.txt"
  log "$scenario: link of $victim down (holds $(wc -l <"$OUT_DIR/$scenario-victim-rooms.txt") of $rooms rooms)"
  T_CUT=$(now_ms)
  ip link set "$(port_of "$victim")" down
  replaced_rooms "$scenario" "$victim" "$prefix" "$rooms" "$T_CUT"
  stop "$scenario-base" || true
}

# The link comes back after the node has noticed it lost control (its QUIC link idled out);
# it must register again.
scenario_link() {
  cut_link link lk-
  local victim=$VICTIM
  figure link_cut_to_dead_ms "$LOST_MS"
  figure link_cut_failover_ms "$REJOIN_MS"
  local mark
  mark=$(link_losses "$victim")
  wait_for "$victim noticing its lost link" 40 link_losses_above "$victim" "$mark"
  local t_up
  t_up=$(now_ms)
  ip link set "$(port_of "$victim")" up
  wait_for "$victim registered again after its link came back" 30 state_is "$victim" up
  figure link_restore_to_registered_ms $(($(now_ms) - t_up))
  figure link_down_ms $((t_up - T_CUT))
}

# The link comes back as soon as the node is declared dead: its QUIC link has not idled out
# (10 s), so neither side has seen it fail. The node must still get back into service.
scenario_blip() {
  local victim=n3
  wait_for "all nodes up" 30 all_up
  local t_cut
  t_cut=$(now_ms)
  ip link set "$(port_of "$victim")" down
  wait_for "$victim declared dead" $((DEAD_AFTER_MS / 1000 + 20)) state_is "$victim" dead
  local t_up
  t_up=$(now_ms)
  log "blip: link of $victim down for $((t_up - t_cut)) ms (until dead), now up again"
  ip link set "$(port_of "$victim")" up
  local deadline=$(($(now_ms) + 40000))
  until state_is "$victim" up; do
    if [ "$(now_ms)" -ge "$deadline" ]; then
      fail "$victim stayed '$(node_state "$victim")' for 40 s after a $((t_up - t_cut)) ms link cut" \
        "ended; its log shows $(link_losses "$victim") lost link(s): its QUIC link outlived the cut" \
        "(idle timeout 10 s) and control ignores the load reports of a node it declared dead"
    fi
    sleep 0.1
  done
  figure blip_restore_to_registered_ms $(($(now_ms) - t_up))
}

# --- main ---------------------------------------------------------------------------------------
for s in $SCENARIOS; do
  declare -F "scenario_$s" >/dev/null || setup_error "unknown scenario '$s' (CLUSTER_SCENARIOS)"
done

remove_stale
network_up
ADMIN_TOKEN=$("$BIN_DIR/control" token --dev --admin --identity ops --ttl 7200)
start_control
log "control ready at $URL"
for n in "${NODES[@]}"; do start_node "$n"; done
wait_for "three nodes up" 30 all_up
[ "$(metric 'sfu_cluster_nodes{state="up"}')" = 3 ] || fail "sfu_cluster_nodes{state=\"up\"} is not 3"
log "nodes up: ${NODES[*]} (suspect after $SUSPECT_AFTER_MS ms, dead after $DEAD_AFTER_MS ms)"

for s in $SCENARIOS; do
  CURRENT=$s
  log "scenario $s"
  t0=$(now_ms)
  "scenario_$s"
  wait_for "all nodes up after $s" 30 all_up
  log "scenario $s passed in $(( ($(now_ms) - t0) / 1000 ))s"
  write_figures
done
CURRENT=summary
write_figures
log "figures:"
jq -r 'to_entries[] | "  \(.key) = \(.value)"' "$OUT_DIR/figures.json"
log "PASS ($SCENARIOS)"
