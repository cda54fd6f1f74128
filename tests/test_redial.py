"""The redial repair (``clients/_redial.py``): which node it asks, and when."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from pytest_chainharness._rpc import RPCError
from pytest_chainharness.clients import _redial
from pytest_chainharness.clients._redial import PeerRedial
from pytest_chainharness.providers.base import NodeState


@dataclass
class FakeNode:
    index: int
    peers: int | None  # None: does not answer

    @property
    def name(self) -> str:
        return f"node{self.index}"

    def peer_count(self) -> int:
        if self.peers is None:
            raise RPCError("down")
        return self.peers


@dataclass
class FakeProvider:
    stopped: set[int] = field(default_factory=set)
    split: list[list[int]] | None = None
    asked: list[int] = field(default_factory=list)

    def state(self, index: int) -> NodeState:
        return NodeState.STOPPED if index in self.stopped else NodeState.RUNNING

    def partitioned(self) -> list[list[int]] | None:
        return self.split

    def add_peers(self, index: int) -> None:
        self.asked.append(index)


@dataclass
class FakeChain:
    nodes: list[FakeNode]
    provider: FakeProvider = field(default_factory=FakeProvider)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(_redial, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def run(repair: PeerRedial, clock: list[float], seconds: float) -> list[str]:
    """Tick every second for ``seconds``; what it did."""
    done = []
    for _ in range(int(seconds)):
        clock[0] += 1.0
        what = repair.tick()
        if what is not None:
            done.append(what)
    return done


def four(*peers: int | None) -> FakeChain:
    return FakeChain([FakeNode(i, p) for i, p in enumerate(peers)])


def test_a_node_short_for_the_whole_pause_is_asked_once(clock: list[float]) -> None:
    chain = four(3, 2, 2, 3)  # node1 and node2 lost each other
    repair = PeerRedial(chain, after=15.0)  # type: ignore[arg-type]
    assert run(repair, clock, 14) == []
    done = run(repair, clock, 3)
    # One node only: the other end must not dial back in the same moment.
    assert chain.provider.asked == [1]
    assert done == ["redial: node1 asked to dial its peers again (2 of 3 for 16s)"]


def test_each_short_node_waits_its_own_pause_and_the_gap_between_redials(
    clock: list[float],
) -> None:
    chain = four(3, 2, 2, 3)
    repair = PeerRedial(chain, after=15.0)  # type: ignore[arg-type]
    run(repair, clock, 17)
    assert chain.provider.asked == [1]
    run(repair, clock, 6)  # the gap is over, node2 stood short all along
    assert chain.provider.asked == [1, 2]
    # Still short: node1's own clock began again at its redial.
    run(repair, clock, 8)
    assert chain.provider.asked == [1, 2]
    run(repair, clock, 4)
    assert chain.provider.asked == [1, 2, 1]


def test_a_count_that_moves_is_left_alone(clock: list[float]) -> None:
    chain = four(3, 1, 3, 3)
    repair = PeerRedial(chain, after=15.0)  # type: ignore[arg-type]
    for peers in (1, 2, 2, 2, 2, 2, 2, 2, 2):
        chain.nodes[1].peers = peers
        run(repair, clock, 2)
    assert chain.provider.asked == []  # 2 peers for 16 s only now
    run(repair, clock, 2)
    assert chain.provider.asked == [1]


def test_stopped_nodes_partitions_and_silent_nodes_are_not_short(clock: list[float]) -> None:
    chain = four(2, 2, 2, None)
    chain.provider.stopped = {3}  # the others miss only a stopped node
    repair = PeerRedial(chain, after=15.0)  # type: ignore[arg-type]
    assert run(repair, clock, 40) == []
    chain.provider.stopped = set()
    chain.nodes[3].peers = None  # it runs but does not answer: nobody is asked of it
    assert run(repair, clock, 10) == []
    chain.nodes[3].peers = 3
    chain.provider.split = [[0, 1, 2], [3]]
    assert run(repair, clock, 40) == []
    chain.provider.split = None
    run(repair, clock, 17)  # the clock starts at the heal
    assert chain.provider.asked == [0]
