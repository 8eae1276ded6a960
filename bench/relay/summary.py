#!/usr/bin/env python3
"""Figures of one bench/relay/run.sh result directory.

    python3 bench/relay/summary.py bench/results/relay/NAME

Prints a table and writes summary.json next to it:
- CPU per relayed packet on each end: the `sfu-relay` thread's CPU seconds over the sample
  window divided by the media packets that crossed the link in it (n1 sends, n2 receives).
  QUIC's encryption, the datagram framing and the hop's bookkeeping are all on that thread;
  the workers' share (handing each packet to the relay endpoint on n1, fanning it out on n2)
  shows in the worker rows, local vs relayed.
- bytes on the link: per second (per track: each room has one audio and one video track, or
  one audio track with MEDIA=audio), per
  packet, and as a share of what the publisher sent (sfu-load's bytes over the run).
- latency and loss of the subscribers, local vs relayed (sfu-load's reports).
"""

import json
import re
import sys

SERIES = re.compile(r'^(\w+)\{(.*)\}$')


def labels(series):
    m = SERIES.match(series)
    if not m:
        return series, {}
    return m.group(1), dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))


def metric(sample, name, **want):
    total = 0.0
    for series, v in sample["metrics"].items():
        n, ls = labels(series)
        if n == name and all(ls.get(k) == w for k, w in want.items()):
            total += v
    return total


def cpu(sample, node, prefix, key="cpu_s"):
    return sum(s for g, s in sample.get(key, {}).get(node, {}).items() if g.startswith(prefix))


def main():
    out = sys.argv[1]
    phases = {}
    for phase in ("local", "relayed"):
        sample = json.load(open(f"{out}/{phase}/sample.json"))
        report = json.load(open(f"{out}/{phase}/report.json"))
        window = sample["window_s"]
        phases[phase] = {
            "window_s": round(window, 2),
            "loss_pct": report["packets"]["loss_pct"],
            "latency_p50_ms": report["latency_us"]["p50"] / 1000,
            "latency_p99_ms": report["latency_us"]["p99"] / 1000,
            "publisher_kbit_s": report["packets"]["bytes_sent"] * 8 / 1000 / report["elapsed_s"],
            "n1_cpu_pct": 100 * sum(sample["cpu_s"]["n1"].values()) / window,
            "n2_cpu_pct": 100 * sum(sample["cpu_s"]["n2"].values()) / window,
            "n1_worker_cpu_pct": 100 * cpu(sample, "n1", "sfu-worker") / window,
            "n2_worker_cpu_pct": 100 * cpu(sample, "n2", "sfu-worker") / window,
            "n1_relay_cpu_s": cpu(sample, "n1", "sfu-relay"),
            "n2_relay_cpu_s": cpu(sample, "n2", "sfu-relay"),
            "n1_relay_kernel_s": cpu(sample, "n1", "sfu-relay", "cpu_kernel_s"),
            "n2_relay_kernel_s": cpu(sample, "n2", "sfu-relay", "cpu_kernel_s"),
            "packets_out": metric(sample, "sfu_cluster_relay_packets_total", node="n1", peer="n2", direction="out"),
            "packets_in": metric(sample, "sfu_cluster_relay_packets_total", node="n2", peer="n1", direction="in"),
            "datagrams_out": metric(sample, "sfu_cluster_relay_datagrams_total", node="n1", peer="n2", direction="out"),
            "bytes_out": metric(sample, "sfu_cluster_relay_bytes_total", node="n1", peer="n2", direction="out"),
            "node_packets_in": {
                n: metric(sample, "sfu_cluster_node_packets_in_total", node=n) for n in ("n1", "n2")
            },
        }
    # Each room has one audio and one video track.
    scenario = json.load(open(f"{out}/relayed/report.json"))["scenario"]
    rooms = scenario.get("rooms", 1)
    tracks_per_room = 2 if scenario.get("media") == "audio-video" else 1
    r = phases["relayed"]
    w = r["window_s"]
    figures = {
        "origin_relay_us_per_packet": 1e6 * r["n1_relay_cpu_s"] / r["packets_out"] if r["packets_out"] else None,
        "relay_node_relay_us_per_packet": 1e6 * r["n2_relay_cpu_s"] / r["packets_in"] if r["packets_in"] else None,
        "origin_relay_kernel_share": r["n1_relay_kernel_s"] / r["n1_relay_cpu_s"] if r["n1_relay_cpu_s"] else None,
        "relay_node_relay_kernel_share": r["n2_relay_kernel_s"] / r["n2_relay_cpu_s"] if r["n2_relay_cpu_s"] else None,
        "link_packets_per_s": r["packets_out"] / w,
        "link_kbit_s": r["bytes_out"] * 8 / 1000 / w,
        "link_kbit_s_per_track": r["bytes_out"] * 8 / 1000 / w / (tracks_per_room * rooms),
        "link_bytes_per_packet": r["bytes_out"] / r["packets_out"] if r["packets_out"] else None,
        "datagrams_per_packet": r["datagrams_out"] / r["packets_out"] if r["packets_out"] else None,
        "link_vs_publisher": (r["bytes_out"] * 8 / 1000 / w) / r["publisher_kbit_s"] if r["publisher_kbit_s"] else None,
        "hop_added_p50_ms": r["latency_p50_ms"] - phases["local"]["latency_p50_ms"],
        "hop_added_p99_ms": r["latency_p99_ms"] - phases["local"]["latency_p99_ms"],
    }
    json.dump({"phases": phases, "figures": figures}, open(f"{out}/summary.json", "w"), indent=1)
    print(f"{'':28}{'local':>12}{'relayed':>12}")
    for key in ("loss_pct", "latency_p50_ms", "latency_p99_ms", "n1_cpu_pct", "n1_worker_cpu_pct",
                "n2_cpu_pct", "n2_worker_cpu_pct", "publisher_kbit_s"):
        print(f"{key:28}{phases['local'][key]:>12.2f}{phases['relayed'][key]:>12.2f}")
    for key, v in figures.items():
        print(f"{key:34}{'-' if v is None else format(v, '.3f'):>12}")


if __name__ == "__main__":
    main()
