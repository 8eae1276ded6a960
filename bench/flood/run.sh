#!/usr/bin/env bash
# One bounded load run: `control dev` (one worker) on CPU 0, sfu-load (and, with a flood, the
# flood script) on CPU 1, loopback; everything started here is stopped here.
#
#   bench/flood/run.sh BUILD NAME PORT SUBSCRIBERS DURATION_S [FLOOD_START_S FLOOD_SECS]
#
# BUILD is `old` or `new`: which `control` runs (OLD_BIN / NEW_BIN, the release directories);
# sfu-load is always NEW_BIN's, so both nodes face the same generator. Both nodes get the
# signaling rate limit and the per-identity session cap switched off (README: Limits); for an
# old build that predates those limits (it would refuse the unknown keys), set OLD_LIMITS=none. With FLOOD_START_S, bench/flood/flood.py starts that many seconds after
# sfu-load and sends 200 POST/s for FLOOD_SECS (default 30). Results: bench/results/load/NAME/
# (report.json, summary.txt, flood.json, metrics.txt, threads.txt; node.log is not kept).
# THREADS="DELAY WINDOW" in the environment adds per-thread CPU of the node over that window.
# CONTROL_CPUS (default 0) is control's CPU list: with `0,1` the node pins its one worker to
# CPU 0 and runs signaling and set-up on CPU 1 (node.pin_workers; README: Configuration), so
# they share CPU 1 with sfu-load and the flood instead of sharing CPU 0 with the worker.
# GEN_RT=1 runs sfu-load under SCHED_FIFO (chrt -f 10), so that on a shared CPU the node's
# signaling threads cannot delay the generator's own send and receive timestamps.
set -euo pipefail
cd "$(dirname "$0")/../.."

# Release directories: NEW_BIN defaults to this checkout's; OLD_BIN (a build of the commit to
# compare with, e.g. from a `git worktree`) must be given for `old` runs.
NEW_BIN=${NEW_BIN:-target/release}
OLD_BIN=${OLD_BIN:-}
build=$1 name=$2 port=$3 subs=$4 dur=$5 flood_start=${6:-} flood_secs=${7:-30}
case $build in
  old) bin=${OLD_BIN:?set OLD_BIN to the release directory of the build to compare with} ;;
  new) bin=$NEW_BIN ;;
  *) echo "BUILD must be old or new" >&2; exit 2 ;;
esac
limits=(SFU__LIMITS__SIGNALING_RATE_PER_SEC=0 SFU__LIMITS__MAX_SESSIONS_PER_IDENTITY=0)
[ "$build" = old ] && [ "${OLD_LIMITS:-}" = none ] && limits=()
out=bench/results/load/$name
mkdir -p "$out"

if pgrep -x control >/dev/null || pgrep -x sfu-load >/dev/null; then
  echo "a control or sfu-load process is still running:" >&2; pgrep -a control; pgrep -a sfu-load; exit 1
fi
# Other engineers build on this machine: wait (up to 20 min) until no build runs, and note any
# build that starts during the run in $out/WARNING.txt (such a run is worthless).
builds() { local p; for p in cargo rustc cc1 cc ld rust-lld; do pgrep -x "$p" >/dev/null && return 0; done; return 1; }
for _ in $(seq 240); do builds || break; sleep 5; done
if builds; then echo "WARNING: a build is running at the start of $name" | tee "$out/WARNING.txt" >&2; fi
( while sleep 1; do builds && { echo "WARNING: a build ran during $name at $(date +%T)" >>"$out/WARNING.txt"; }; done ) &
watch=$!
echo "loadavg before $name: $(cat /proc/loadavg)" > "$out/env.txt"

env "${limits[@]}" taskset -c "${CONTROL_CPUS:-0}" "$bin/control" dev --http "127.0.0.1:$port" --workers 1 \
  >"$out/node.log" 2>&1 &
node=$!
cleanup() { kill -TERM "$node" "$watch" 2>/dev/null || true; [ -n "${flood:-}" ] && kill -TERM "$flood" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done

gen_prio=(); [ -n "${GEN_RT:-}" ] && gen_prio=(chrt -f 10)
"${gen_prio[@]}" taskset -c 1 "$NEW_BIN/sfu-load" --url "http://127.0.0.1:$port" --server-pid "$node" -q \
  --rooms 1 --publishers 1 --subscribers "$subs" --media audio-video --video-kbps 1000 \
  --duration "${dur}s" --ramp 100/s --label "$name" --report "$out" >"$out/summary.txt" 2>&1 &
load=$!
# THREADS="DELAY WINDOW": CPU seconds per node thread over that window (bench/flood/threads.py).
if [ -n "${THREADS:-}" ]; then
  taskset -c 1 python3 bench/flood/threads.py "$node" $THREADS >"$out/threads.txt" 2>&1 &
fi
if [ -n "$flood_start" ]; then
  sleep "$flood_start"
  taskset -c 1 python3 bench/flood/flood.py --url "http://127.0.0.1:$port" --control "$bin/control" \
    --rate 200 --duration "$flood_secs" --out "$out/flood.json" >/dev/null 2>"$out/flood.err" &
  flood=$!
fi
rc=0; wait "$load" || rc=$?
if [ -n "$flood_start" ]; then wait "$flood" || true; flood=; fi
curl -fs "http://127.0.0.1:$port/metrics" >"$out/metrics.txt" || true
kill -TERM "$node"; wait "$node" || true
kill -TERM "$watch"; wait "$watch" 2>/dev/null || true
trap - EXIT
echo "loadavg after $name: $(cat /proc/loadavg)" >> "$out/env.txt"
echo "sfu-load exit $rc"
[ -e "$out/WARNING.txt" ] && { echo "RUN DISTURBED:"; sort -u "$out/WARNING.txt" | head -3; }
exit 0
