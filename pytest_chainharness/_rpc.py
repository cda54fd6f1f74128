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

__all__ = ["RPCError", "dig", "http_json", "rpc_call"]


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


def http_json(
    url: str,
    *,
    method: str = "GET",
    body: str | None = None,
    timeout: float = 2.0,
    parse: bool = True,
) -> Any:
    """The JSON answer of a plain HTTP request (a client spec's probes); ``RPCError`` when
    the node does not answer, answers with an error status, or (with ``parse``) not with
    JSON. Without ``parse`` any 2xx answer will do and None is returned."""
    request = urllib.request.Request(
        url,
        data=body.encode() if body is not None else None,
        method=method,
        headers={"Content-Type": "application/json"} if body is not None else {},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
        return json.loads(text) if parse else None
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise RPCError(f"{method} {url}: {exc}") from exc


def dig(answer: Any, path: str) -> Any:
    """``answer`` at the dotted ``path`` (digits index lists); ``RPCError`` showing the
    answer when the path is not in it."""
    value = answer
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            shown = json.dumps(answer)[:300]
            raise RPCError(f"{path!r} is not in the answer (at {part!r}): {shown}")
    return value
