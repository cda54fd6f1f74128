#!/usr/bin/env python3
"""A replicated counter: a few lines of a multi-node system that is not a blockchain.

node0 counts up every 0.3 s; every node asks its peers for their count every 0.1 s and
takes the highest. Its /status answers {"height", "hash", "peers", "id"}; the count is
kept in <home>/state.json, so a killed node resumes where it was and catches up.
"""

import argparse
import hashlib
import json
import os
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", required=True)
    parser.add_argument("--init", action="store_true")
    parser.add_argument("--id", action="store_true")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--peers", default="")
    args = parser.parse_args()
    state_file = os.path.join(args.home, "state.json")
    if args.init:
        with open(state_file, "w") as out:
            json.dump({"height": 0, "hash": "genesis"}, out)
        with open(os.path.join(args.home, "id"), "w") as out:
            out.write(os.urandom(8).hex())
        return
    if args.id:
        with open(os.path.join(args.home, "id")) as ids:
            print(ids.read().strip())
        return
    with open(state_file) as saved:
        state = json.load(saved)
    state["peers"] = 0
    lock = threading.Lock()

    def save() -> None:
        with open(state_file + ".tmp", "w") as out:
            json.dump({"height": state["height"], "hash": state["hash"]}, out)
        os.replace(state_file + ".tmp", state_file)

    class Status(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with lock:
                body = json.dumps(state).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    def replicate() -> None:
        peers = [p for p in args.peers.split(",") if p]
        last_count = 0.0
        while True:
            answered = 0
            for peer in peers:
                try:
                    with urllib.request.urlopen(f"http://{peer}/status", timeout=0.5) as r:
                        theirs = json.loads(r.read())
                except OSError:
                    continue
                answered += 1
                with lock:
                    if theirs["height"] > state["height"]:
                        state["height"], state["hash"] = theirs["height"], theirs["hash"]
                        save()
            with lock:
                state["peers"] = answered
                if args.index == 0 and time.monotonic() - last_count >= 0.3:
                    last_count = time.monotonic()
                    state["height"] += 1
                    seed = f"{state['hash']}/{state['height']}".encode()
                    state["hash"] = "0x" + hashlib.sha256(seed).hexdigest()
                    save()
            time.sleep(0.1)

    threading.Thread(target=replicate, daemon=True).start()
    ThreadingHTTPServer((args.bind, args.port), Status).serve_forever()


if __name__ == "__main__":
    main()
