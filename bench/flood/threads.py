#!/usr/bin/env python3
"""CPU seconds per thread of a process over a window, from /proc/PID/task/*/stat.

    python3 bench/flood/threads.py PID START_DELAY_S WINDOW_S > threads.txt

Threads are grouped by name (tokio's runtime threads share one); printed as CPU seconds and
percent of one core over the window, with each group's nice value.
"""

import os
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def snapshot(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            raw = open(f"/proc/{pid}/task/{tid}/stat").read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        rest = raw[raw.rindex(")") + 2:].split()
        # fields after the name: state(3) ... utime(14) stime(15) ... nice(19), 1-based overall
        utime, stime, nice = int(rest[11]), int(rest[12]), int(rest[16])
        out[tid] = (name, utime + stime, nice)
    return out


def main():
    pid, delay, window = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    time.sleep(delay)
    a = snapshot(pid)
    t0 = time.monotonic()
    time.sleep(window)
    b = snapshot(pid)
    dt = time.monotonic() - t0
    groups = {}
    for tid, (name, ticks, nice) in b.items():
        used = ticks - a.get(tid, (name, 0, nice))[1]
        g = groups.setdefault((name, nice), [0, 0])
        g[0] += used
        g[1] += 1
    total = sum(v[0] for v in groups.values())
    print(f"window {dt:.1f} s, process total {total / TICK:.2f} CPU-s = {100 * total / TICK / dt:.1f} % of a core")
    for (name, nice), (ticks, n) in sorted(groups.items(), key=lambda x: -x[1][0]):
        print(f"{name:<20} threads {n:>3}  nice {nice:>3}  {ticks / TICK:7.2f} CPU-s  {100 * ticks / TICK / dt:5.1f} %")


if __name__ == "__main__":
    main()
