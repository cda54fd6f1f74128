"""Partitions at the client level: peers dropped and re-added over the admin API.

Needs no root, namespaces or packet filters, so every backend has it; the faults issue's
network-level partitions replace it where those are available.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from .._errors import UnsupportedAction
from .._rpc import RPCError, rpc_call
from .._testnet import Testnet
from ..clients.base import ClientAdapter
from .base import NodeState

__all__ = ["AdminPeering"]


class AdminPeering:
    testnet: Testnet
    adapter: ClientAdapter

    def state(self, index: int) -> NodeState:
        raise NotImplementedError

    def enode(self, index: int) -> str:
        """The node's enode URL as its peers dial it."""
        raise NotImplementedError

    def _save_partition(self, groups: list[list[int]] | None) -> None:
        raise NotImplementedError

    def partition(self, groups: Sequence[Sequence[int]]) -> str:
        if not self.adapter.has_peers:
            raise UnsupportedAction(f"client {self.adapter.name} has no peers to partition")
        group_of = {i: g for g, members in enumerate(groups) for i in members}
        self._save_partition([list(g) for g in groups])
        # Both sides drop each other (which also removes the static dial), so nobody redials.
        for a in self.testnet.nodes:
            for b in self.testnet.nodes:
                if a.index != b.index and group_of.get(a.index) != group_of.get(b.index):
                    self._admin(a.index, "admin_removePeer", self.enode(b.index))
        return "peers"

    def heal(self) -> None:
        self._save_partition(None)
        for a in self.testnet.nodes:
            for b in self.testnet.nodes:
                if a.index < b.index:
                    self._admin(a.index, "admin_addPeer", self.enode(b.index))

    def add_peers(self, index: int) -> None:
        """Ask a node to dial every other node now (admin_addPeer is idempotent)."""
        for other in self.testnet.nodes:
            if other.index != index:
                self._admin(index, "admin_addPeer", self.enode(other.index))

    def _admin(self, index: int, method: str, enode: str) -> None:
        if self.state(index) is not NodeState.RUNNING:
            return  # a stopped node re-reads its peers when it starts
        # The node may go away meanwhile; its next start reapplies the config.
        with contextlib.suppress(RPCError):
            rpc_call(self.testnet.nodes[index].rpc_url, method, [enode])
