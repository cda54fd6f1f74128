"""A minimal JSON-RPC call for harness-internal requests (readiness, admin peers).

Tests use web3.py through ``Node.w3``; the harness polls many nodes many times a second
while starting and waiting, where a bare keep-alive-free POST is cheaper than building a
Web3 object per call and carries no middleware surprises.
"""

from __future__ import annotations

import json
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
