"""A minimal JSON-RPC call for harness-internal requests (readiness, admin peers).

Tests use web3.py through ``Node.w3``; the harness polls many nodes many times a second
while starting and waiting, where a bare keep-alive-free POST is cheaper than building a
Web3 object per call and carries no middleware surprises.

``ipc:///path/to/socket`` URLs go over a Unix socket: the channel for the node APIs that
only the harness may use (admin, debug, miner), which file permissions protect from
other local users where a loopback port would not.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

__all__ = ["RPCError", "rpc_call"]


class RPCError(Exception):
    """The node answered with a JSON-RPC error, or did not answer."""


def rpc_call(
    url: str, method: str, params: list[Any] | None = None, *, timeout: float = 2.0
) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    if url.startswith("ipc://"):
        reply = _ipc_call(url.removeprefix("ipc://"), body, method, timeout)
        if "error" in reply:
            raise RPCError(f"{method} to {url}: {reply['error']}")
        return reply.get("result")
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise RPCError(f"{method} to {url}: {exc}") from exc
    if "error" in reply:
        raise RPCError(f"{method} to {url}: {reply['error']}")
    return reply.get("result")


def _ipc_call(path: str, body: str, method: str, timeout: float) -> dict[str, Any]:
    decoder = json.JSONDecoder()
    buffer = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(body.encode() + b"\n")
            while True:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise RPCError(f"{method} to ipc://{path}: connection closed mid-answer")
                buffer += chunk
                try:
                    reply, _ = decoder.raw_decode(buffer.decode().lstrip())
                except ValueError:
                    continue  # not all of it yet (UnicodeDecodeError is one too)
                if not isinstance(reply, dict):
                    raise RPCError(f"{method} to ipc://{path}: not a JSON-RPC answer")
                return reply
    except OSError as exc:
        raise RPCError(f"{method} to ipc://{path}: {exc}") from exc
