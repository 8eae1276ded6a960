#!/usr/bin/env python3
"""Markdown table rows from bench/results/load/NAME/{report.json,metrics.txt,flood.json}.

    python3 bench/flood/table.py bench/results/load/ab-old-1 bench/results/load/ab-new-1 ...
"""

import json
import os
import re
import sys


def metric_sum(text, name):
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return int(total) if found else None


def ms(us):
    return f"{us / 1000:.1f}" if us < 100_000 else f"{us / 1000:.0f}"


def thousands(n):
    return f"{n:,}".replace(",", " ")


def main():
    print("| run | connected | received / expected | loss | latency p50 / p99 / max (ms) | "
          "join p50 / p99 (ms) | node CPU mean / max | generator CPU mean / max | "
          "RTP forwarded (node) | flood: achieved req/s, status counts |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for d in sys.argv[1:]:
        r = json.load(open(os.path.join(d, "report.json")))
        p, l, j = r["packets"], r["latency_us"], r["join_ms"]
        peers, s, g = r["peers"], r["server"], r["generator"]
        fwd = None
        mpath = os.path.join(d, "metrics.txt")
        if os.path.exists(mpath):
            fwd = metric_sum(open(mpath).read(), "sfu_rtp_forwarded_total")
        flood = ""
        fpath = os.path.join(d, "flood.json")
        if os.path.exists(fpath):
            f = json.load(open(fpath))
            st = {}
            for kind, counts in f["status"].items():
                for code, n in counts.items():
                    st[f"{kind} {code}"] = n
            flood = f"{f['achieved_rate']}/s ({f['completed']} in {f['elapsed_s']:.1f} s, " \
                    f"late {f['late_gt_50ms']}): " + ", ".join(f"{k}: {v}" for k, v in st.items())
        print(
            f"| `{os.path.basename(d.rstrip('/'))}` "
            f"| {peers['connected']}/{peers['planned']} "
            f"| {thousands(p['received'])} / {thousands(p['expected'])} "
            f"| {p['loss_pct']:.3g} % ({p['lost']}) "
            f"| {ms(l['p50'])} / {ms(l['p99'])} / {ms(l['max'])} "
            f"| {j['p50']:.0f} / {j['p99']:.0f} "
            f"| {s['cpu_pct_mean']:.1f} % / {s['cpu_pct_max']:.0f} % "
            f"| {g['cpu_pct_mean']:.1f} % / {g['cpu_pct_max']:.0f} % "
            f"| {thousands(fwd) if fwd is not None else '—'} "
            f"| {flood} |"
        )


if __name__ == "__main__":
    main()
