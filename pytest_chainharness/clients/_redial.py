"""Redial for a client whose own redial can give up on a pair of nodes for good.

CometBFT is one: when two nodes dial each other in the same moment, each keeps one
connection as a duplicate and drops the other, the two drops meet, and neither end
redials (the surviving side was an inbound peer, not a persistent one). The waits tick
this repair; it finds a running node whose peer count has stood short of the running
network for a while and asks it (``Provider.add_peers``, the spec's ``redial``) to dial
its peers again. Only one node per pause, so the nodes it dials are not dialling back
in the same moment, which is the race itself.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .._rpc import RPCError
from ..providers.base import NodeState

if TYPE_CHECKING:
    from ..chain import Chain

__all__ = ["PeerRedial"]

#: Least seconds between two looks at the peer counts (each asks every node).
LOOK_EVERY = 2.0
#: Least seconds between two redials anywhere in the network: longer than a dial takes
#: to land (CometBFT waits up to 3 s before an asked-for dial).
REDIAL_GAP = 5.0


class PeerRedial:
    """Ask a node that has stayed short of peers to dial them again."""

    name = "redial"

    def __init__(self, chain: Chain, after: float) -> None:
        self.chain = chain
        self.after = after
        #: Node name → (its short peer count, since when it stands there).
        self._short: dict[str, tuple[int, float]] = {}
        self._looked = 0.0
        self._redialled = 0.0

    def tick(self) -> str | None:
        now = time.monotonic()
        if now - self._looked < LOOK_EVERY:
            return None
        self._looked = now
        provider = self.chain.provider
        if provider.partitioned():
            # Short on purpose; the clock starts again after the heal.
            self._short.clear()
            return None
        running = [
            node for node in self.chain.nodes if provider.state(node.index) is NodeState.RUNNING
        ]
        due = None
        for node in running:
            try:
                count = node.peer_count()
            except RPCError:
                self._short.pop(node.name, None)
                continue
            if count >= len(running) - 1:
                self._short.pop(node.name, None)
                continue
            was = self._short.get(node.name)
            if was is None or was[0] != count:
                self._short[node.name] = (count, now)
            elif due is None and now - was[1] >= self.after:
                due = node, count, now - was[1]
        if due is None or now - self._redialled < REDIAL_GAP:
            return None
        node, count, stood = due
        self._redialled = now
        self._short[node.name] = (count, now)
        provider.add_peers(node.index)
        return (
            f"redial: {node.name} asked to dial its peers again "
            f"({count} of {len(running) - 1} for {stood:.0f}s)"
        )
