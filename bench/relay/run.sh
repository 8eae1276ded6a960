#!/usr/bin/env bash
# What relaying a room between two nodes costs (docs/cascade.md): control and two `sfu run`
# nodes on loopback (n1 in region a, n2 in region b, one worker each), one publisher in
# region a and SUBSCRIBERS subscribers, first in region a (all on n1: the local baseline),
# then in region b (on n2, which relays the room from n1). For each phase it samples every
# thread's CPU of both nodes and control's relay counters over the steady middle of the run.
#
#   bench/relay/run.sh NAME [SUBSCRIBERS] [DURATION_S] [VIDEO_KBPS]      (defaults 100 40 1000)
#
# ROOMS=N (default 1) runs N such rooms at once, each with its publisher and SUBSCRIBERS
# subscribers: more packets per second over the same link. MEDIA (default audio-video) is
# sfu-load's --media: `audio` gives the link's cost of an audio track alone.
# Results in bench/results/relay/NAME/: {local,relayed}/report.json (sfu-load),
# {local,relayed}/sample.json (bench/relay/sample.py), logs, and summary.json and summary.txt
# (bench/relay/summary.py): CPU per relayed packet on the origin's and the relay node's relay
# thread, bytes on the link per track and per packet, and latency local vs relayed.
# Binaries from BIN (default target/release: cargo build --release -p control -p sfu-core
# -p tools). Ports: PORT_BASE (default 18600) and the next few.
set -euo pipefail
cd "$(dirname "$0")/../.."

name=${1:?usage: bench/relay/run.sh NAME [SUBSCRIBERS] [DURATION_S] [VIDEO_KBPS]}
subs=${2:-100} dur=${3:-40} kbps=${4:-1000} rooms=${ROOMS:-1} media=${MEDIA:-audio-video}
BIN=${BIN:-target/release}
base=${PORT_BASE:-18600}
http=$base cluster=$((base + 1)) relay1=$((base + 2)) relay2=$((base + 3))
media1=$((base + 10)) media2=$((base + 20))
out=bench/results/relay/$name
rm -rf "$out"
mkdir -p "$out"
for b in control sfu sfu-load; do
  [ -x "$BIN/$b" ] || { echo "no $BIN/$b: cargo build --release -p control -p sfu-core -p tools" >&2; exit 2; }
done
if pgrep -x control >/dev/null || pgrep -x sfu >/dev/null || pgrep -x sfu-load >/dev/null; then
  echo "a control, sfu or sfu-load process is already running" >&2
  exit 2
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
env NO_COLOR=1 SFU__CLUSTER__LISTEN="127.0.0.1:$cluster" SFU__CLUSTER__SECRET="$secret" \
  SFU__CLUSTER__TLS_CERT="$out/control-cert.pem" SFU__CLUSTER__TLS_KEY="$out/control-key.pem" \
  SFU__AUTH__DEV=true SFU__LIMITS__SIGNALING_RATE_PER_SEC=0 SFU__LIMITS__MAX_SESSIONS_PER_IDENTITY=0 \
  SFU__LIMITS__MAX_SESSIONS_PER_ROOM=0 \
  "$BIN/control" serve --http "127.0.0.1:$http" >"$out/control.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$out/control-cert.pem" ] && curl -fs "http://127.0.0.1:$http/healthz" >/dev/null && break; sleep 0.1; done

printf '[node]\npin_workers = false\n' >"$out/node.toml"
node() { # node ID REGION MEDIA_PORT RELAY_PORT
  env NO_COLOR=1 "$BIN/sfu" run --config "$out/node.toml" --control "127.0.0.1:$cluster" --node-id "$1" \
    --cluster-secret "$secret" --control-cert "$out/control-cert.pem" --region "$2" \
    --advertise-ip 127.0.0.1 --media-port-base "$3" --relay-port "$4" --workers 1 >"$out/$1.log" 2>&1 &
  pids+=($!)
}
node n1 a "$media1" "$relay1"
n1=$!
node n2 b "$media2" "$relay2"
n2=$!
up() { [ "$(grep -c 'node registered' "$out/control.log")" -ge 2 ]; }
for _ in $(seq 100); do up && break; sleep 0.2; done
up || { echo "the nodes did not register (see $out/*.log)" >&2; exit 1; }

# Sampling starts once every subscriber is connected (ramp at 100/s, plus set-up time) and
# ends before the run does.
delay=$((rooms * (subs + 1) / 100 + 6))
window=$((dur - delay - 4))
[ "$window" -ge 10 ] || { echo "DURATION_S too short for $subs subscribers" >&2; exit 2; }
phase() { # phase NAME SUBSCRIBER_REGION
  mkdir -p "$out/$1"
  "$BIN/sfu-load" --url "http://127.0.0.1:$http" --threads 1 -q --room-prefix "$1-" --rooms "$rooms" \
    --publishers 1 --subscribers "$subs" --publisher-region a --subscriber-region "$2" \
    --media "$media" --video-kbps "$kbps" --duration "${dur}s" --ramp 100/s \
    --label "$name $1" --report "$out/$1" >"$out/$1/summary.txt" 2>&1 &
  local load=$!
  python3 bench/relay/sample.py "http://127.0.0.1:$http/metrics" "$delay" "$window" \
    n1="$n1" n2="$n2" >"$out/$1/sample.json"
  local rc=0
  wait "$load" || rc=$?
  echo "$1: sfu-load exit $rc"
}
phase local a
phase relayed b
curl -fs "http://127.0.0.1:$http/metrics" >"$out/metrics.txt" || true
{
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "kernel: $(uname -r)"
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- sfu-core sfu-proto control || echo ' (modified)')"
  echo "command: ROOMS=$rooms MEDIA=$media bench/relay/run.sh $name $subs $dur $kbps"
} >"$out/env.txt"
python3 bench/relay/summary.py "$out" | tee "$out/summary.txt"
