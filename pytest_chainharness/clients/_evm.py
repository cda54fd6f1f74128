"""What every Ethereum JSON-RPC client answers the same way: its head and peer count."""

from __future__ import annotations

import json
import re
import signal
import urllib.request

from .._rpc import RPCError, rpc_call
from .._testnet import NodeSpec
from .base import Head, Placement

__all__ = ["EVM_VERSIONS", "EthereumQueries"]

#: solc's EVM version names, oldest first.
EVM_VERSIONS = (
    "homestead", "tangerineWhistle", "spuriousDragon", "byzantium", "constantinople",
    "petersburg", "istanbul", "berlin", "london", "paris", "shanghai", "cancun", "prague",
    "osaka",
)  # fmt: skip


class EthereumQueries:
    """The Ethereum JSON-RPC parts of a ``ClientAdapter``: heads, peers, readiness, how an
    agent follows the node (a newHeads subscription), a graceful stop."""

    stop_signal = signal.SIGTERM

    def ws_url(self, node: NodeSpec) -> str:
        raise NotImplementedError

    def check_ready(self, node: NodeSpec) -> None:
        self.head(node)

    def agent_args(self, node: NodeSpec) -> list[str]:
        return ["--rpc", node.rpc_url, "--ws", self.ws_url(node)]

    def head(self, node: NodeSpec) -> Head:
        block = rpc_call(node.rpc_url, "eth_getBlockByNumber", ["latest", False], timeout=2.0)
        return Head(int(block["number"], 16), str(block["hash"]))

    def catching_up(self, node: NodeSpec) -> str | None:
        # The execution client is the whole node here, and its head is what the waits
        # compare. Not eth_syncing: geth 1.13 reports its transaction indexing there too.
        return None

    def block_hashes(self, node: NodeSpec, first: int, last: int) -> dict[int, str] | None:
        """Block hashes ``first..last`` from one node, in one JSON-RPC batch."""
        batch = [
            {"jsonrpc": "2.0", "id": n, "method": "eth_getBlockByNumber", "params": [hex(n), False]}
            for n in range(first, last + 1)
        ]
        request = urllib.request.Request(
            node.rpc_url,
            data=json.dumps(batch).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                answers = json.loads(reply.read())
        except (OSError, ValueError) as exc:
            raise RPCError(f"eth_getBlockByNumber batch to {node.rpc_url}: {exc}") from exc
        found = {}
        for answer in answers:
            block = answer.get("result")
            if not block:
                raise RPCError(f"{node.name} has no block {answer.get('id')}: {answer}")
            found[int(answer["id"])] = str(block["hash"])
        return found

    def peer_count(self, node: NodeSpec) -> int:
        return int(rpc_call(node.rpc_url, "net_peerCount", timeout=2.0), 16)

    def node_version(self, node: NodeSpec, place: Placement) -> str:
        # "Geth/v1.13.15-stable/linux-amd64/go1.22" → "1.13.15-stable", as the binary says.
        reply = str(rpc_call(node.rpc_url, "web3_clientVersion", timeout=5.0))
        match = re.search(r"/v(\d[^/]*)", reply)
        return match.group(1) if match else reply
