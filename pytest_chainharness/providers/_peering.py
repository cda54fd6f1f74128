"""Partitions at the client level: peers dropped and re-added through the client's
admin channel (the adapter's ``add_peer``/``remove_peer``/``connected_peers``; geth:
``admin_addPeer``...).

Needs no root, namespaces or packet filters, so every backend has it; the faults issue's
network-level partitions replace it where those are available.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .._errors import ChainHarnessError, UnsupportedAction
from .._rpc import RPCError
from .._testnet import Testnet
from ..clients.base import ClientAdapter, Placement
from ._state import RunState
from .base import NodeState

__all__ = ["AdminPeering"]

#: How long a client-level partition may take to hold before it is an error.
_PARTITION_TAKES = 10.0
#: How long no link may cross the groups before the partition counts as made (a dial
#: in flight lands within milliseconds on loopback, or within this under load).
_CLEAN_FOR = 1.0


class AdminPeering:
    name: str
    testnet: Testnet
    adapter: ClientAdapter
    shared: RunState

    def state(self, index: int) -> NodeState:
        raise NotImplementedError

    def enode(self, index: int) -> str:
        """The node's enode URL as its peers dial it."""
        raise NotImplementedError

    def admin_url(self, index: int) -> str:
        raise NotImplementedError

    if TYPE_CHECKING:  # NodeParts', beside this in every provider's bases

        def serving_state(self, index: int) -> NodeState: ...

    def datadir(self, index: int) -> Path:
        raise NotImplementedError

    def _place(self, index: int) -> Placement:
        """The node's placement as it is started now (its peers' routes included)."""
        raise NotImplementedError

    def partitioned(self) -> list[list[int]] | None:
        """The partition in force (for every process of the run), or None."""
        groups: list[list[int]] | None = self.shared.load().get("partition")
        return groups or None

    def _save_partition(self, groups: list[list[int]] | None) -> None:
        with self.shared.edit() as data:
            data["partition"] = groups

    def partition(self, groups: Sequence[Sequence[int]]) -> str:
        if not self.adapter.has_peers:
            raise UnsupportedAction(f"client {self.adapter.display_name} has no peers to partition")
        if not self.adapter.admin_peering:
            raise UnsupportedAction(
                f"client {self.adapter.display_name}: a partition on the {self.name} backend "
                "removes peers through the client's admin API, which it has not"
            )
        group_of = {i: g for g, members in enumerate(groups) for i in members}
        self._save_partition([list(g) for g in groups])
        # Both sides drop each other (which also removes the static dial), so nobody redials.
        for a in self.testnet.nodes:
            for b in self.testnet.nodes:
                if a.index != b.index and group_of.get(a.index) != group_of.get(b.index):
                    self._peer(a.index, False, self.enode(b.index))
        # A dial already in flight (from a heal just before) can still land after the
        # removal: drop such connections until every node's answer shows none crossing a
        # group boundary for a while. One clean look was not enough: a node whose admin
        # call timed out under load counted as clean, and a dial could land just after
        # (node3 kept 2 peers through a [[0, 1, 2], [3]] partition, under -n 2 beside
        # a soak).
        deadline = time.monotonic() + _PARTITION_TAKES
        clean_since: float | None = None
        while True:
            crossing, unknown = self._crossing_peers(group_of)
            now = time.monotonic()
            if crossing or unknown:
                clean_since = None
            elif clean_since is None:
                clean_since = now
            elif now - clean_since >= _CLEAN_FOR:
                return "peers"
            if now >= deadline:
                self.heal()
                left = [f"node{x}-node{y}" for x, y in crossing] + [
                    f"node{i} (its admin channel did not answer)" for i in unknown
                ]
                raise ChainHarnessError(
                    f"the partition {[list(g) for g in groups]} did not take within "
                    f"{_PARTITION_TAKES:g}s: {', '.join(left)}; healed again"
                )
            for x, y in crossing:
                self._peer(x, False, self.enode(y))
                self._peer(y, False, self.enode(x))
            time.sleep(0.1)

    def _crossing_peers(self, group_of: dict[int, int]) -> tuple[list[tuple[int, int]], list[int]]:
        """The links that cross a group boundary, and the running nodes whose admin
        channel did not say."""
        links = self.peer_links()
        crossing = [
            (index, other)
            for index, peers in links.items()
            for other in peers or ()
            if group_of.get(other) != group_of.get(index)
        ]
        return crossing, [index for index, peers in links.items() if peers is None]

    def peer_links(self) -> dict[int, set[int] | None]:
        index_of = {self.adapter.peer_id(n): n.index for n in self.testnet.nodes}
        links: dict[int, set[int] | None] = {}
        for node in self.testnet.nodes:
            if self.state(node.index) is not NodeState.RUNNING:
                continue
            try:
                ids = self.adapter.connected_peers(self.admin_url(node.index))
            except RPCError:
                links[node.index] = None
                continue
            links[node.index] = {index_of[key] for key in ids if key in index_of}
        return links

    def heal(self) -> None:
        self._save_partition(None)
        if not self.adapter.admin_peering:
            return  # nothing was cut (partition refuses such clients)
        # One direction: the lower-numbered node of each pair dials the higher. When
        # both dial at once, geth (no tie-break between two connections of one pair) can
        # drop both, and both then redial 35 s after that same moment, in step again.
        for a in self.testnet.nodes:
            for b in self.testnet.nodes:
                if a.index < b.index:
                    self._peer(a.index, True, self.enode(b.index))

    def add_peers(self, index: int) -> None:
        """Ask a node to dial every other node now (adding a known peer does nothing)."""
        if not self.adapter.admin_peering:
            if self.adapter.has_peers and self.state(index) is NodeState.RUNNING:
                # It may stop meanwhile; its next start dials its peers anyway.
                with contextlib.suppress(RPCError):
                    self.adapter.redial(self.testnet, self.testnet.nodes[index], self._place(index))
            return
        for other in self.testnet.nodes:
            if other.index != index:
                self._peer(index, True, self.enode(other.index))

    def _before_restart(self, index: int) -> None:
        """Tell the client that node ``index``, which has run, is about to start again."""
        states = {
            other.index: self.serving_state(other.index)  # a paused geth of geth-pos too
            for other in self.testnet.nodes
            if other.index != index
        }
        others = {i: self.admin_url(i) for i, state in states.items() if state is NodeState.RUNNING}
        with self.shared.edit() as data:
            waiting: dict[str, list[int]] = data.setdefault("tell_on_resume", {})
            # Starting again, it tells every running peer itself.
            waiting.pop(str(index), None)
            # A paused peer cannot be told now, and would go on as before: geth-pos's
            # stayed a second dialler of its pair, and the pair missed each other for
            # more than a minute after the next partition (test_chain's heal test on
            # geth-pos, after test_disruptive_mark_restores_the_network).
            for i, state in states.items():
                if state is NodeState.PAUSED and index not in waiting.setdefault(str(i), []):
                    waiting[str(i)].append(index)
        node = self.testnet.nodes[index]
        self.adapter.before_restart(
            self.testnet, node, self.datadir(index), self._place(index), others
        )

    def _after_resume(self, index: int) -> None:
        """Tell a resumed node what the peers that started again meanwhile told the rest."""
        with self.shared.edit() as data:
            started = (data.get("tell_on_resume") or {}).pop(str(index), [])
        admin = {index: self.admin_url(index)}
        for other in started:
            # One that stopped since tells everyone again at its next start.
            if self.state(other) is NodeState.RUNNING:
                self.adapter.tell_restarted(self.testnet, self.testnet.nodes[other], admin)

    def _peer(self, index: int, add: bool, address: str) -> None:
        """Make node ``index`` add (or drop) the peer at ``address``, if it is running."""
        if self.serving_state(index) is not NodeState.RUNNING:
            return  # a stopped node re-reads its peers when it starts
        # The node may go away meanwhile; its next start reapplies the config.
        with contextlib.suppress(RPCError):
            if add:
                self.adapter.add_peer(self.admin_url(index), address)
            else:
                self.adapter.remove_peer(self.admin_url(index), address)
