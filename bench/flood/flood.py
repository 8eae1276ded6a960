#!/usr/bin/env python3
"""Signaling flood: a steady stream of WHIP/WHEP POSTs against a WHIP/WHEP server.

Half the requests are malformed offers (a body that starts with `v=0` and is no SDP), half
are valid offers (captured from sfu-load's str0m peers, see capture_offer.py) whose sessions
never connect: no ICE, no DTLS follow, and they are never DELETEd, so the server keeps each
until its connect timeout. Requests go round robin to WHIP and WHEP of `--rooms` rooms
(`{prefix}0..N-1`), one token per room (`control token --dev`, identity `flood-<i>`).

Pacing is open loop: request n is due at start + n / rate; `--connections` threads, each on
its own keep-alive connection, take the next due request. A request sent more than 50 ms after
its due time counts as `late` (the pool could not keep up); the achieved rate is completed
requests over the flood's wall time. Standard library only.

    python3 bench/flood/flood.py --url http://127.0.0.1:18301 --control target/release/control \
        --rate 200 --duration 30 --out flood.json
"""

import argparse
import http.client
import json
import os
import random
import string
import subprocess
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
MALFORMED = "v=0\r\ngarbage\r\n"


def mint_tokens(control, rooms):
    tokens = []
    for i, room in enumerate(rooms):
        out = subprocess.run(
            [control, "token", "--dev", "--room", room, "--identity", f"flood-{i}",
             "--publish", "--subscribe", "--ttl", "7200"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        tokens.append(out.splitlines()[-1].strip())
    return tokens


def fresh_ice(sdp, rnd):
    """The captured offer with a new ICE ufrag and password (as every new browser offer has);
    the ufrag is replaced wherever it occurs (candidate lines name it too)."""
    ufrag = "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(16))
    pwd = "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(22))
    old_ufrag = old_pwd = None
    for line in sdp.split("\r\n"):
        if line.startswith("a=ice-ufrag:"):
            old_ufrag = line.split(":", 1)[1]
        elif line.startswith("a=ice-pwd:"):
            old_pwd = line.split(":", 1)[1]
    if old_ufrag:
        sdp = sdp.replace(old_ufrag, ufrag)
    if old_pwd:
        sdp = sdp.replace(old_pwd, pwd)
    return sdp


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, int(round(p / 100.0 * (len(sorted_values) - 1))))
    return sorted_values[k]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--control", required=True, help="control binary, to mint dev tokens")
    ap.add_argument("--rate", type=float, default=200.0, help="POSTs per second")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--rooms", type=int, default=10)
    ap.add_argument("--room-prefix", default="flood-")
    ap.add_argument("--offer-whip", default=os.path.join(HERE, "offer-whip.sdp"))
    ap.add_argument("--offer-whep", default=os.path.join(HERE, "offer-whep.sdp"))
    ap.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", help="write the summary JSON here too")
    args = ap.parse_args()

    url = urllib.parse.urlsplit(args.url)
    host, port = url.hostname, url.port or 80
    rooms = [f"{args.room_prefix}{i}" for i in range(args.rooms)]
    tokens = mint_tokens(args.control, rooms)
    offers = {
        "whip": open(args.offer_whip, newline="").read(),
        "whep": open(args.offer_whep, newline="").read(),
    }
    total = int(args.rate * args.duration)

    lock = threading.Lock()
    state = {"next": 0}
    # (kind, status) -> count; kind is "malformed" or "valid"; status an int or an error name
    counts = {}
    latencies = {"malformed": [], "valid": []}
    late = [0]
    max_lag = [0.0]

    start = time.monotonic() + 0.2

    def worker(wid):
        rnd = random.Random(args.seed * 1000 + wid)
        conn = None
        while True:
            with lock:
                n = state["next"]
                if n >= total:
                    return
                state["next"] = n + 1
            due = start + n / args.rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            else:
                lag = now - due
                with lock:
                    if lag > 0.05:
                        late[0] += 1
                    max_lag[0] = max(max_lag[0], lag)
            endpoint = "whip" if n % 4 < 2 else "whep"
            kind = "malformed" if n % 2 == 0 else "valid"
            r = (n // 4) % len(rooms)
            body = MALFORMED if kind == "malformed" else fresh_ice(offers[endpoint], rnd)
            headers = {
                "Content-Type": "application/sdp",
                "Authorization": "Bearer " + tokens[r],
            }
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
                conn.request("POST", f"/{endpoint}/{rooms[r]}", body=body.encode(), headers=headers)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001 - counted, the flood goes on
                status = type(e).__name__
                try:
                    if conn is not None:
                        conn.close()
                finally:
                    conn = None
            dt = time.monotonic() - t0
            with lock:
                counts[(kind, status)] = counts.get((kind, status), 0) + 1
                latencies[kind].append(dt)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True)
               for i in range(args.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start

    done = sum(counts.values())
    summary = {
        "url": args.url,
        "planned": total,
        "rate_target": args.rate,
        "duration_target_s": args.duration,
        "completed": done,
        "elapsed_s": round(elapsed, 3),
        "achieved_rate": round(done / elapsed, 1),
        "late_gt_50ms": late[0],
        "max_lag_s": round(max_lag[0], 3),
        "connections": args.connections,
        "status": {
            kind: {str(s): c for (k, s), c in sorted(counts.items(), key=lambda x: str(x[0])) if k == kind}
            for kind in ("malformed", "valid")
        },
        "latency_ms": {
            kind: {
                "p50": round(1000 * percentile(sorted(v), 50), 2) if v else None,
                "p99": round(1000 * percentile(sorted(v), 99), 2) if v else None,
                "max": round(1000 * max(v), 2) if v else None,
            }
            for kind, v in latencies.items()
        },
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
