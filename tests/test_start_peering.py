"""The start's peering for a client that dials only when told (geth-pos).

geth does not dial a peer again for 35 s after a failed dial, and the four gethes of a
geth-pos network start in the same second: the last EL link of a 4-node start came at
42.4 s, 34 s after the last geth answered. So such a client's nodes start with no peer
to dial, and the start asks each one once (``Provider.add_peers``), only when every node
answers. Scripted nodes here; every geth-pos start in the suite does it for real.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_chainharness._errors import NetworkStartError
from pytest_chainharness._rpc import RPCError
from pytest_chainharness._start import _await
from pytest_chainharness.providers.base import NodeState


@dataclass
class Network:
    """Node i answers from its ``up_after[i]``-th look on; a told node has its peers."""

    up_after: list[int]
    looks: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    #: (node told, the nodes answering at that moment), in order.
    told: list[tuple[int, set[int]]] = field(default_factory=list)

    def answering(self) -> set[int]:
        return {i for i, after in enumerate(self.up_after) if self.looks[i] >= after}


class Adapter:
    has_peers = True
    admin_peering = False
    hung_restart_after = None
    stalled_peering_restart_after = None

    def __init__(self, network: Network, *, dials_when_told: bool) -> None:
        self.network = network
        self.dials_when_told = dials_when_told

    def check_ready(self, spec: SimpleNamespace) -> None:
        self.network.looks[spec.index] += 1
        if spec.index not in self.network.answering():
            raise RPCError(f"node{spec.index} does not answer yet")

    def port_conflict(self, log_text: str) -> bool:
        return False


class Provider:
    def __init__(self, network: Network) -> None:
        self.network = network

    def state(self, index: int) -> NodeState:
        return NodeState.RUNNING

    def add_peers(self, index: int) -> None:
        self.network.told.append((index, self.network.answering()))


class Node:
    def __init__(self, network: Network, index: int) -> None:
        self.network = network
        self.index = index
        self.name = f"node{index}"
        self._spec = SimpleNamespace(index=index)

    def logs(self, lines: int) -> str:
        return "(log)"

    def peer_count(self) -> int:
        return 3 if any(i == self.index for i, _ in self.network.told) else 0


def _chain(network: Network, *, dials_when_told: bool) -> Any:
    return SimpleNamespace(
        nodes=[Node(network, i) for i in range(4)],
        adapter=Adapter(network, dials_when_told=dials_when_told),
        provider=Provider(network),
        tick_repair=lambda: None,
        status_table=lambda: "(status)",
    )


def test_each_node_is_told_once_and_only_when_every_node_answers() -> None:
    network = Network(up_after=[1, 3, 6, 2])
    _await(_chain(network, dials_when_told=True), time.monotonic() + 20, phase="peers")
    assert sorted(i for i, _ in network.told) == [0, 1, 2, 3]
    assert all(up == {0, 1, 2, 3} for _, up in network.told), network.told


def test_a_client_that_dials_by_itself_is_not_told() -> None:
    network = Network(up_after=[1, 1, 1, 1])
    with pytest.raises(NetworkStartError, match="waiting for peers"):
        _await(_chain(network, dials_when_told=False), time.monotonic() + 1, phase="peers")
    assert network.told == []
