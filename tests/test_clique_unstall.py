"""geth's Clique stall repair (``clients/clique.py``): when it hands a branch over.

Scripted nodes, so the shape that stood in a CI run is made on demand: two stalled
branches after a 2|2 heal, with the pair node0-node3 not yet redialled. Every node
could reach every other through a third, yet the repair waited for a full mesh that
geth took more than a minute to restore, and the wait around it timed out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_chainharness._rpc import RPCError
from pytest_chainharness.clients import clique
from pytest_chainharness.clients.base import Head
from pytest_chainharness.clients.clique import CliqueUnstall, islands
from pytest_chainharness.providers._peering import AdminPeering
from pytest_chainharness.providers.base import NodeState

BRANCH_A = "0x" + "a" * 64
BRANCH_B = "0x" + "b" * 64
BRANCH_C = "0x" + "c" * 64


@dataclass
class FakeNode:
    index: int
    head_hash: str
    weight: int
    chain: FakeChain
    signer: bool = True

    @property
    def name(self) -> str:
        return f"node{self.index}"

    def head(self) -> Head:
        return Head(10, self.head_hash)

    def peer_count(self) -> int:
        return sum(1 for a, _ in self.chain.links if a == self.index)

    def _rpc(self, method: str, params: list[Any]) -> Any:
        assert method == "eth_getBlockByHash"
        return {"totalDifficulty": hex(self.weight)}


@dataclass
class FakeAdapter:
    chain: FakeChain

    def peer_id(self, spec: SimpleNamespace) -> str:
        return f"id{spec.index}"

    def connected_peers(self, admin_url: str) -> set[str]:
        index = int(admin_url)
        if index in self.chain.silent:
            raise RPCError("down")
        return {f"id{b}" for a, b in self.chain.links if a == index}


@dataclass
class FakeChain:
    links: set[tuple[int, int]]
    silent: set[int] = field(default_factory=set)
    split: list[list[int]] | None = None
    nodes: list[FakeNode] = field(default_factory=list)
    testnet: SimpleNamespace = field(
        default_factory=lambda: SimpleNamespace(
            period=1, nodes=[SimpleNamespace(index=i, name=f"node{i}") for i in range(4)]
        )
    )

    def __post_init__(self) -> None:
        self.adapter = FakeAdapter(self)
        self.provider = FakeProvider(self)

    def heads(self) -> dict[str, Head]:
        return {n.name: n.head() for n in self.nodes}

    def running_nodes(self) -> list[FakeNode]:
        return self.nodes

    def node(self, name: str) -> FakeNode:
        return next(n for n in self.nodes if n.name == name)


class FakeProvider(AdminPeering):
    """The real peer-link reading (``AdminPeering.peer_links``) over scripted nodes."""

    def __init__(self, chain: FakeChain) -> None:
        self.chain = chain
        self.testnet = chain.testnet  # type: ignore[assignment]
        self.adapter = chain.adapter  # type: ignore[assignment]

    def state(self, index: int) -> NodeState:
        return NodeState.RUNNING

    def admin_url(self, index: int) -> str:
        return str(index)

    def partitioned(self) -> list[list[int]] | None:
        return self.chain.split


def both_ways(*pairs: tuple[int, int]) -> set[tuple[int, int]]:
    return {p for a, b in pairs for p in ((a, b), (b, a))}


#: A full mesh of four but the pair 0-3.
ONE_PAIR_APART = both_ways((0, 1), (0, 2), (1, 2), (1, 3), (2, 3))


def stalled(links: set[tuple[int, int]]) -> FakeChain:
    """node0 and node2 on A, node1 and node3 on B (B the heavier), all standing still."""
    return network(links, (BRANCH_A, 20), (BRANCH_B, 21), (BRANCH_A, 20), (BRANCH_B, 21))


def network(
    links: set[tuple[int, int]], *heads: tuple[str, int], split: list[list[int]] | None = None
) -> FakeChain:
    """Node i on ``heads[i]`` (its head's hash, and that branch's total difficulty)."""
    chain = FakeChain(links, split=split)
    chain.nodes = [FakeNode(i, block, weight, chain) for i, (block, weight) in enumerate(heads)]
    return chain


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(clique, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


@pytest.fixture
def adopted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Who took whose branch (the rewind and import themselves run on real networks)."""
    calls: list[tuple[str, str]] = []

    def adopt(self: CliqueUnstall, loser: FakeNode, winner: FakeNode, *_: int) -> None:
        calls.append((loser.name, winner.name))
        loser.head_hash, loser.weight = winner.head_hash, winner.weight

    monkeypatch.setattr(CliqueUnstall, "adopt_branch", adopt)
    return calls


def run(repair: CliqueUnstall, clock: list[float], seconds: int) -> list[str]:
    done = []
    for _ in range(seconds):
        clock[0] += 1.0
        what = repair.tick()
        if what is not None:
            done.append(what)
    return done


def test_a_deadlock_among_joined_nodes_is_repaired_with_a_pair_apart(
    clock: list[float], adopted: list[tuple[str, str]]
) -> None:
    repair = CliqueUnstall(stalled(ONE_PAIR_APART))  # type: ignore[arg-type]
    assert run(repair, clock, 5) == []  # not yet stood still for 6 s
    done = run(repair, clock, 3)
    assert len(done) == 1
    assert done[0].startswith("clique-unstall: node0, node2 took node1's"), done
    assert adopted == [("node0", "node1"), ("node2", "node1")]  # onto the heavier B


def test_islands_are_left_alone(clock: list[float], adopted: list[tuple[str, str]]) -> None:
    # {0, 2} and {1, 3}: a block sealed after a rewind could not reach the other island.
    repair = CliqueUnstall(stalled(both_ways((0, 2), (1, 3))))  # type: ignore[arg-type]
    assert run(repair, clock, 30) == []
    assert adopted == []


def test_the_stall_clock_starts_when_the_nodes_are_joined(
    clock: list[float], adopted: list[tuple[str, str]]
) -> None:
    chain = stalled(both_ways((0, 2), (1, 3)))
    repair = CliqueUnstall(chain)  # type: ignore[arg-type]
    run(repair, clock, 20)
    chain.links |= {(2, 1)}  # one end's word is enough
    assert run(repair, clock, 5) == []
    assert len(run(repair, clock, 3)) == 1


def test_a_silent_node_stops_the_repair(clock: list[float], adopted: list[tuple[str, str]]) -> None:
    chain = stalled(ONE_PAIR_APART)
    chain.silent = {3}
    repair = CliqueUnstall(chain)  # type: ignore[arg-type]
    assert run(repair, clock, 20) == []
    assert adopted == []


def test_siblings_inside_a_partitions_group_are_repaired_there(
    clock: list[float], adopted: list[tuple[str, str]]
) -> None:
    """The CI shape: partition [[0, 1, 2], [3]] at height 2. node0 and node2 stood on one
    block 2 (sealed by node0, then node2's), node1 on its own sibling of equal
    difficulty: on the first only node1 or node3 may seal, on the second only node2 or
    node3, and node3 is cut off. The repair used to stay off for any partition."""
    chain = network(
        both_ways((0, 1), (0, 2), (1, 2)),
        (BRANCH_A, 5),
        (BRANCH_B, 5),
        (BRANCH_A, 5),
        (BRANCH_C, 4),  # node3: alone, and legitimately standing still
        split=[[0, 1, 2], [3]],
    )
    repair = CliqueUnstall(chain)  # type: ignore[arg-type]
    assert run(repair, clock, 5) == []
    done = run(repair, clock, 3)
    assert done == [
        "clique-unstall: node1 took node0's branch at #10 0xaaaaaaaa (heads had stood still 6s)"
    ]
    assert adopted == [("node1", "node0")]  # onto the branch most of its group is on
    assert run(repair, clock, 30) == []  # node3 is never handed a branch across the cut


def test_a_link_that_outlived_the_partition_does_not_join_the_groups(
    clock: list[float], adopted: list[tuple[str, str]]
) -> None:
    chain = stalled(ONE_PAIR_APART)
    chain.split = [[0, 2], [1, 3]]  # each group on one head: nothing to repair
    repair = CliqueUnstall(chain)  # type: ignore[arg-type]
    assert run(repair, clock, 30) == []
    assert adopted == []


def test_one_island_standing_still_is_seen_while_another_moves(
    clock: list[float], adopted: list[tuple[str, str]]
) -> None:
    """The stall clock is per island: a moving majority used to reset it for everyone."""
    chain = network(
        both_ways((0, 1), (2, 3)),
        (BRANCH_A, 5),
        (BRANCH_B, 6),
        (BRANCH_C, 7),
        (BRANCH_C, 7),
        split=[[0, 1], [2, 3]],
    )
    repair = CliqueUnstall(chain)  # type: ignore[arg-type]
    done: list[str] = []
    for step in range(8):
        new = "0x" + f"{step:x}" * 64
        chain.nodes[2].head_hash = chain.nodes[3].head_hash = new
        done += run(repair, clock, 1)
    assert len(done) == 1, done
    assert done[0].startswith("clique-unstall: node0 took node1's"), done


def test_islands() -> None:
    assert islands({"a": {"b"}, "b": set(), "c": {"b"}}) == [frozenset("abc")]
    assert islands({"a": {"b"}, "b": set(), "c": set()}) == [frozenset("ab"), frozenset("c")]
    assert islands({"a": set()}) == [frozenset("a")]
    assert islands({}) == []
    assert islands({"a": {"b"}, "b": {"a"}}, {"a": 0, "b": 1}) == [frozenset("a"), frozenset("b")]
