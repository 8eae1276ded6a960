#!/usr/bin/env bash
# Browser end-to-end tests: Debian's Chromium (driven by playwright-core) against a real
# `control dev` server: test.mjs publishes and watches through the WHIP/WHEP demo page,
# meeting.mjs holds a 4-participant meeting on the meeting page (/meeting, /sdk/room.js),
# voice.mjs takes 8 audio-only participants through a hybrid room's moves between peer to
# peer and the SFU (/sdk/room.js).
#
#   tests/browser/run.sh [path/to/control]     (root; needs iproute2, chromium, `npm ci` done here)
#
# Builds nothing. The control binary defaults to target/release/control, else target/debug/control.
# The server runs in the root namespace on 10.203.0.1 (our own veth); the test and its browser run
# in the network namespace sfu-br (netns.sh), because headless Chromium gathers no loopback ICE
# candidates. Everything is torn down on exit; the exit code is the test's.
# Screenshots, page logs, the server log, the node's metrics after the run (metrics.txt),
# figures.json (demo page) and meeting-figures.json go
# to $OUT_DIR (default: a temp dir).
#
# BROWSER_TESTS picks the test files (default: "test.mjs meeting.mjs voice.mjs"; they run one at a time
# against the same server). TEST_TIMEOUT_S bounds the whole node run: each file takes 20-30 s
# on a 2-core machine, but the default leaves room for both to run into their own deadlines
# (test.mjs 120 s, meeting.mjs 150 + 60 s) and report what they waited for.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
HOST_ADDR=10.203.0.1
NS=${SFU_NETNS:-sfu-br}
export SFU_NETNS=$NS
READY_TIMEOUT_S=${READY_TIMEOUT_S:-20}
TEST_TIMEOUT_S=${TEST_TIMEOUT_S:-360}
BROWSER_TESTS=${BROWSER_TESTS:-test.mjs meeting.mjs voice.mjs}

die() { echo "browser e2e: $*" >&2; exit 2; }

BIN=${1:-}
if [ -z "$BIN" ]; then
  for c in "$ROOT/target/release/control" "$ROOT/target/debug/control"; do
    if [ -x "$c" ]; then BIN=$c; break; fi
  done
  [ -n "$BIN" ] || die "no control binary: build it (cargo build -p control) or pass its path"
fi
[ -x "$BIN" ] || die "$BIN is not an executable"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
[ "$(id -u)" = 0 ] || die "must run as root (it creates a network namespace)"
command -v ip >/dev/null || die "ip not found: apt-get install iproute2"
[ -x "${CHROMIUM_BIN:-/usr/bin/chromium}" ] || die "chromium not found: apt-get install chromium"
[ -d "$HERE/node_modules/playwright-core" ] || die "playwright-core missing: run 'npm ci' in $HERE"
tests=()
for t in $BROWSER_TESTS; do
  [ -f "$HERE/$t" ] || die "no test file $HERE/$t"
  tests+=("$HERE/$t")
done
[ "${#tests[@]}" -gt 0 ] || die "BROWSER_TESTS names no test file"

OUT_DIR=${OUT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/sfu-browser-e2e.XXXXXX")}
mkdir -p "$OUT_DIR"
SERVER_LOG=$OUT_DIR/server.log
server_pid=

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  "$HERE/netns.sh" down || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$HERE/netns.sh" up

# The server picks a free HTTP port and says which on its "SFU ready: http://ADDR/" line.
: >"$SERVER_LOG"
NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} "$BIN" dev --http "$HOST_ADDR:0" --advertise-ip "$HOST_ADDR" \
  </dev/null >"$SERVER_LOG" 2>&1 &
server_pid=$!

url=
deadline=$((SECONDS + READY_TIMEOUT_S))
while [ -z "$url" ]; do
  url=$(sed -n 's|^SFU ready: \(http://[^ ]*\)$|\1|p' "$SERVER_LOG" | head -n1)
  [ -n "$url" ] && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "browser e2e: control exited before it was ready; its log:" >&2
    tail -n 40 "$SERVER_LOG" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "browser e2e: no 'SFU ready:' line from control within ${READY_TIMEOUT_S}s; its log:" >&2
    tail -n 40 "$SERVER_LOG" >&2
    exit 1
  fi
  sleep 0.1
done
url=${url%/}
echo "browser e2e: control ready at $url (log: $SERVER_LOG)"

# One file at a time: each starts its own Chromium, and two at once would starve a small machine.
rc=0
timeout --kill-after=10 "$TEST_TIMEOUT_S" \
  ip netns exec "$NS" env SFU_URL="$url" OUT_DIR="$OUT_DIR" \
  node --test --test-concurrency=1 --test-reporter=spec "${tests[@]}" </dev/null || rc=$?

# The node's counters after the run (drops by reason, keyframe requests, layer switches): what
# to read first when a tile stalled.
curl -fsS --max-time 5 "$url/metrics" >"$OUT_DIR/metrics.txt" 2>&1 || true

if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "browser e2e: the test did not finish within ${TEST_TIMEOUT_S}s" >&2
fi
if [ "$rc" -ne 0 ]; then
  echo "browser e2e: FAILED (exit $rc); last lines of the server log:" >&2
  tail -n 30 "$SERVER_LOG" >&2 || true
fi
echo "browser e2e: screenshots, page logs, server log and figures in $OUT_DIR"
exit "$rc"
