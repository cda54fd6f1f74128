"""A tiny block indexer, run as a service container beside the chain.

It follows one node over JSON-RPC and serves what it has indexed:

    GET /health            200 once the node answered
    GET /head              {"number": N, "hash": "0x..."}
    GET /tx/<hash>         {"block": N} when the transaction is indexed, else 404

Standard library only, so it runs on a bare python image.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RPC_URL = os.environ["RPC_URL"]
PORT = int(os.environ.get("PORT", "8080"))

head: dict[str, object] = {}
tx_blocks: dict[str, int] = {}
#: number → hash of every block indexed, so a replaced block is noticed.
indexed: list[str] = []
lock = threading.Lock()


def rpc(method: str, params: list[object]) -> object:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    request = urllib.request.Request(RPC_URL, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as reply:
        return json.loads(reply.read())["result"]


def catch_up() -> None:
    """Index every block up to the node's head, following reorganisations.

    A block at the tip can be replaced by another of the same height (two signers sealed
    at once, or a fork healed): the next block's parent then is not the one indexed, and
    the replaced blocks are dropped and indexed again from the node's canonical chain.
    """
    latest = int(str(rpc("eth_blockNumber", [])), 16)
    while len(indexed) <= latest:
        number = len(indexed)
        block = rpc("eth_getBlockByNumber", [hex(number), False])
        if not isinstance(block, dict):
            return  # the head moved back under us; the next round starts from there
        with lock:
            if number and block["parentHash"] != indexed[-1]:
                dropped = indexed.pop()
                print(f"indexer: block {number - 1} {dropped[:10]} was replaced", flush=True)
                for tx in [t for t, n in tx_blocks.items() if n == number - 1]:
                    del tx_blocks[tx]
                continue
            for tx in block["transactions"]:
                tx_blocks[tx] = number
            indexed.append(block["hash"])
            head.update(number=number, hash=block["hash"])


def follow() -> None:
    while True:
        try:
            catch_up()
        except OSError as exc:
            print(f"indexer: node unreachable: {exc}", flush=True)
        except Exception as exc:  # a half-read or odd answer must not end the follow loop
            print(f"indexer: {type(exc).__name__}: {exc}", flush=True)
        time.sleep(0.2)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        with lock:
            if self.path == "/health":
                status, body = (200, {"ok": True}) if head else (503, {"ok": False})
            elif self.path == "/head":
                status, body = 200, dict(head)
            elif self.path.startswith("/tx/"):
                block = tx_blocks.get(self.path[4:].lower())
                status, body = (200, {"block": block}) if block is not None else (404, {})
            else:
                status, body = 404, {}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return  # one line per poll would drown the container log


if __name__ == "__main__":
    threading.Thread(target=follow, daemon=True).start()
    print(f"indexer: following {RPC_URL}, serving on :{PORT}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
