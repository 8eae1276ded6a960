#!/usr/bin/env python3
"""CPU per thread of several processes and control's relay counters over one window.

    python3 bench/relay/sample.py METRICS_URL DELAY_S WINDOW_S NAME=PID... > sample.json

After DELAY_S, snapshots each process's threads (/proc/PID/task/*/stat) and control's
/metrics, waits WINDOW_S, snapshots again, and prints one JSON object: the window's length,
per process the CPU seconds of each thread group (threads grouped by name; `cpu_kernel_s`:
the part spent in the kernel), and the change of
every `sfu_cluster_relay_*` and `sfu_cluster_node_*` series over the window. Control learns
the nodes' counters from their load reports (every second), so a counter's change covers the
window to within a report interval on each end.
"""

import json
import os
import sys
import time
import urllib.request

TICK = os.sysconf("SC_CLK_TCK")


def threads(pid):
    """Per thread name: (user + system ticks, system ticks)."""
    groups = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            raw = open(f"/proc/{pid}/task/{tid}/stat").read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        rest = raw[raw.rindex(")") + 2:].split()
        # utime and stime: fields 14 and 15 of the line, 12th and 13th after the name.
        user, system = int(rest[11]), int(rest[12])
        total, kernel = groups.get(name, (0, 0))
        groups[name] = (total + user + system, kernel + system)
    return groups


def metrics(url):
    out = {}
    with urllib.request.urlopen(url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(("sfu_cluster_relay_", "sfu_cluster_node_")):
                series, _, value = line.rpartition(" ")
                out[series] = float(value)
    return out


def main():
    url, delay, window = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    pids = dict(arg.split("=", 1) for arg in sys.argv[4:])
    time.sleep(delay)
    t0 = time.monotonic()
    cpu0 = {name: threads(pid) for name, pid in pids.items()}
    m0 = metrics(url)
    time.sleep(window)
    cpu1 = {name: threads(pid) for name, pid in pids.items()}
    m1 = metrics(url)
    dt = time.monotonic() - t0
    def spent(name, i):
        return {
            group: (ticks[i] - cpu0[name].get(group, (0, 0))[i]) / TICK
            for group, ticks in cpu1[name].items()
        }
    cpu = {name: spent(name, 0) for name in pids}
    kernel = {name: spent(name, 1) for name in pids}
    delta = {k: v - m0.get(k, 0.0) for k, v in m1.items()}
    json.dump({"window_s": dt, "cpu_s": cpu, "cpu_kernel_s": kernel, "metrics": delta},
              sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
