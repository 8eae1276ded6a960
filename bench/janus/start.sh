#!/usr/bin/env bash
# Runs Janus (Debian package `janus`) in its own network namespace for side-by-side runs of
# `sfu-load --protocol janus`.
#
# Janus never advertises loopback ICE candidates (libnice skips loopback interfaces), so it gets
# a namespace with one veth pair (scripts/veth-netns.sh):
#
#   root namespace:   janus-h0  10.77.0.2/30   synthetic peers bind here (sfu-load --bind 10.77.0.2)
#   netns janus:      janus-n0  10.77.0.1/30   Janus: HTTP API on :8088, ICE only on janus-n0,
#                                              default route via 10.77.0.2
#
# Nothing is forwarded: IPv4 forwarding is off on janus-h0 and IPv6 is off on both ends, so the
# namespace reaches only this host.
#
# Usage (root; idempotent):
#   bench/janus/start.sh [start]   set up the namespace, start Janus, wait for GET /janus/info,
#                                  print the base URL (http://10.77.0.1:8088/janus) on stdout
#   bench/janus/start.sh stop      stop Janus and remove the namespace and the veth pair
#   bench/janus/start.sh status    exit 0 and print the base URL if Janus answers
#
# Environment: JANUS_NETNS (janus), JANUS_ADDR (10.77.0.1), JANUS_PEER_ADDR (10.77.0.2),
# JANUS_RUN_DIR (/run/sfu-janus: pid file and janus.log), JANUS_BIN (janus),
# JANUS_START_TIMEOUT_S (20), JANUS_DEBUG_LEVEL (4). The HTTP port is the one in
# janus.transport.http.jcfg (8088).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR/../.. source=scripts/veth-netns.sh
. "$HERE/../../scripts/veth-netns.sh"
NS=${JANUS_NETNS:-janus}
HOST_IF=janus-h0
NS_IF=janus-n0
ADDR=${JANUS_ADDR:-10.77.0.1}
PEER_ADDR=${JANUS_PEER_ADDR:-10.77.0.2}
PREFIX=30
# The HTTP port has one source of truth: the transport's configuration.
PORT=$(sed -n 's/^[[:space:]]*port[[:space:]]*=[[:space:]]*\([0-9][0-9]*\).*/\1/p' \
  "$HERE/janus.transport.http.jcfg" | head -n 1)
PORT=${PORT:-8088}
RUN_DIR=${JANUS_RUN_DIR:-/run/sfu-janus}
PID_FILE=$RUN_DIR/janus.pid
LOG_FILE=$RUN_DIR/janus.log
JANUS_BIN=${JANUS_BIN:-janus}
START_TIMEOUT_S=${JANUS_START_TIMEOUT_S:-20}
DEBUG_LEVEL=${JANUS_DEBUG_LEVEL:-4}
BASE_URL="http://$ADDR:$PORT/janus"

die() { echo "janus/start.sh: $*" >&2; exit 2; }

janus_pid() {
  local pid
  [ -r "$PID_FILE" ] || return 1
  pid=$(cat "$PID_FILE")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # The pid may have been reused since: it must be a janus process.
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = janus ] || return 1
  echo "$pid"
}

answers() {
  curl -fsS --max-time 2 "$BASE_URL/info" 2>/dev/null | grep -q '"janus": *"server_info"'
}

stop_janus() {
  local pid
  if pid=$(janus_pid); then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PID_FILE"
}

start() {
  [ "$(id -u)" = 0 ] || die "must run as root (it creates a network namespace)"
  command -v ip >/dev/null || die "ip not found: apt-get install iproute2"
  command -v curl >/dev/null || die "curl not found: apt-get install curl"
  command -v "$JANUS_BIN" >/dev/null ||
    die "$JANUS_BIN not found: apt-get install --no-install-recommends janus"

  if janus_pid >/dev/null && answers; then
    echo "$BASE_URL"
    return 0
  fi
  # Whatever is half there (a dead Janus, a namespace without one) is rebuilt from scratch.
  stop_janus
  veth_netns_down "$NS" "$HOST_IF"
  veth_netns_up "$NS" "$HOST_IF" "$PEER_ADDR" "$NS_IF" "$ADDR" "$PREFIX"

  mkdir -p "$RUN_DIR"
  : >"$LOG_FILE"
  # `ip netns exec` execs Janus, so $! is Janus's own pid. setsid: it outlives this shell.
  setsid ip netns exec "$NS" "$JANUS_BIN" \
    --configs-folder="$HERE" \
    --config="$HERE/janus.jcfg" \
    --ice-enforce-list="$NS_IF" \
    --debug-level="$DEBUG_LEVEL" \
    --disable-colors \
    --log-file="$LOG_FILE" \
    --disable-stdout \
    </dev/null >>"$LOG_FILE" 2>&1 &
  echo $! >"$PID_FILE"

  local deadline=$((SECONDS + START_TIMEOUT_S))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if answers; then
      echo "$BASE_URL"
      return 0
    fi
    if ! janus_pid >/dev/null; then
      tail -n 30 "$LOG_FILE" >&2 || true
      stop
      die "janus exited during start-up (log above, full log was $LOG_FILE)"
    fi
    sleep 0.2
  done
  tail -n 30 "$LOG_FILE" >&2 || true
  stop
  die "janus did not answer GET $BASE_URL/info within ${START_TIMEOUT_S}s"
}

stop() {
  stop_janus
  veth_netns_down "$NS" "$HOST_IF"
}

status() {
  if janus_pid >/dev/null && answers; then
    echo "$BASE_URL"
    return 0
  fi
  echo "janus is not running in netns $NS" >&2
  return 1
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
