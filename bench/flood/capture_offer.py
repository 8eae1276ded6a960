#!/usr/bin/env python3
"""Capture the SDP offers sfu-load's str0m peers send (WHIP publisher, WHEP subscriber).

A tiny HTTP server records the body of the first POST to /whip/... and /whep/... and answers
503, so the peers fail at once; run sfu-load against it with one publisher and one subscriber:

    python3 bench/flood/capture_offer.py --port 18399 --out bench/flood &
    target/release/sfu-load --url http://127.0.0.1:18399 --publishers 1 --subscribers 1 \
        --media audio-video --duration 1s -q
"""

import argparse
import http.server
import os
import threading


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=18399)
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    got = {}
    done = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            endpoint = self.path.strip("/").split("/")[0]
            if endpoint in ("whip", "whep") and endpoint not in got:
                got[endpoint] = body
                with open(os.path.join(args.out, f"offer-{endpoint}.sdp"), "wb") as f:
                    f.write(body)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            if len(got) == 2:
                done.set()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    done.wait(60)
    server.shutdown()
    print("captured:", ", ".join(sorted(got)) or "nothing")


if __name__ == "__main__":
    main()
