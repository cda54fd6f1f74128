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
lock = threading.Lock()


def rpc(method: str, params: list[object]) -> object:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    request = urllib.request.Request(RPC_URL, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as reply:
        return json.loads(reply.read())["result"]


def follow() -> None:
    indexed = -1
    while True:
        try:
            latest = int(str(rpc("eth_blockNumber", [])), 16)
            while indexed < latest:
                block = rpc("eth_getBlockByNumber", [hex(indexed + 1), False])
                assert isinstance(block, dict)
                with lock:
                    for tx in block["transactions"]:
                        tx_blocks[tx] = indexed + 1
                    head.update(number=indexed + 1, hash=block["hash"])
                indexed += 1
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
