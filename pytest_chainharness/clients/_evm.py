"""What every Ethereum JSON-RPC client answers the same way: its head and peer count."""

from __future__ import annotations

import signal

from .._rpc import rpc_call
from .._testnet import NodeSpec
from .base import Head

__all__ = ["EthereumQueries"]


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

    def peer_count(self, node: NodeSpec) -> int:
        return int(rpc_call(node.rpc_url, "net_peerCount", timeout=2.0), 16)
