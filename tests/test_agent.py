"""The node agent's block following, against a scripted node: gaps, reorgs, rewinds."""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_chainharness._rpc import RPCError
from pytest_chainharness.agent import REORG_DEPTH, Agent


class ScriptedNode:
    """Blocks by hash and a canonical chain the test rewrites, answering as geth does."""

    def __init__(self) -> None:
        self.blocks: dict[str, dict[str, Any]] = {}
        self.canonical: list[str] = []
        self.extend("genesis", 0, 1)

    def extend(
        self, branch: str, parent_height: int, count: int, txs: tuple[str, ...] = ()
    ) -> None:
        """Make the chain: canonical up to ``parent_height``, then ``count`` blocks of
        ``branch`` (the first of them holding ``txs``)."""
        del self.canonical[parent_height + 1 :]
        for i in range(count):
            height = len(self.canonical)
            parent = self.canonical[-1] if self.canonical else "0x" + "00" * 32
            block_hash = f"0x{branch}-{height}"
            self.blocks[block_hash] = {
                "number": hex(height),
                "hash": block_hash,
                "parentHash": parent,
                "timestamp": hex(1000 + height),
                "transactions": list(txs) if i == 0 else [],
            }
            self.canonical.append(block_hash)

    def rewind(self, height: int) -> None:
        del self.canonical[height + 1 :]

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        assert params is not None
        if method == "eth_getBlockByNumber":
            height = int(params[0], 16)
            return self.blocks[self.canonical[height]] if height < len(self.canonical) else None
        if method == "eth_getBlockByHash":
            return self.blocks.get(params[0])
        raise AssertionError(f"unexpected call {method}")

    @property
    def head(self) -> int:
        return len(self.canonical) - 1


@pytest.fixture
def node() -> ScriptedNode:
    return ScriptedNode()


class RecordingAgent(Agent):
    """An agent that asks the scripted node and keeps what it would publish."""

    def __init__(self, args: argparse.Namespace, node: ScriptedNode) -> None:
        super().__init__(args)
        self.node_rpc = node.rpc
        self.events: list[dict[str, Any]] = []

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        return self.node_rpc(method, params)

    def publish(self, kind: str, payload: dict[str, Any]) -> None:
        assert kind == "block"
        self.events.append(payload)


@pytest.fixture
def agent(node: ScriptedNode, tmp_path: Path) -> Iterator[RecordingAgent]:
    args = argparse.Namespace(
        run="r", node="node0", broker="127.0.0.1:1", user=None, password=None,
        record=None, own=str(tmp_path / "own.jsonl"),
    )  # fmt: skip
    made = RecordingAgent(args, node)
    yield made
    made.own.close()


def advance(
    node: ScriptedNode,
    agent: RecordingAgent,
    branch: str,
    parent_height: int,
    count: int,
    txs: tuple[str, ...] = (),
) -> None:
    """The node's chain changes, then a new head reaches the agent."""
    node.extend(branch, parent_height, count, txs)
    agent.publish_blocks_up_to(node.head)


def published(agent: RecordingAgent) -> list[tuple[int, str]]:
    return [(e["number"], e["hash"]) for e in agent.events]


def test_first_head_then_every_block_without_gaps(
    node: ScriptedNode, agent: RecordingAgent
) -> None:
    advance(node, agent, "a", 0, 3)
    advance(node, agent, "a", 3, 4)
    agent.publish_blocks_up_to(node.head)  # the same head again: nothing new
    assert published(agent) == [(h, f"0xa-{h}") for h in range(3, 8)]


def test_a_block_replaced_at_the_same_height_is_published(
    node: ScriptedNode, agent: RecordingAgent
) -> None:
    advance(node, agent, "a", 0, 5)
    # An out-of-turn block 5 loses to an in-turn one holding a tx: the head height stays.
    advance(node, agent, "b", 4, 1, txs=("0xTX",))
    last = agent.events[-1]
    assert (last["number"], last["hash"], last["txs"]) == (5, "0xb-5", ["0xtx"])
    assert last["replaces"] == "0xa-5"
    assert last["parent"] == "0xa-4"


def test_a_deeper_reorg_publishes_the_new_branch_from_the_fork(
    node: ScriptedNode, agent: RecordingAgent
) -> None:
    advance(node, agent, "a", 0, 1)
    advance(node, agent, "a", 1, 5)  # heights 2..6 on branch a
    advance(node, agent, "b", 3, 5, txs=("0xtx",))  # b forks after 3: 4..8
    new = agent.events[6:]
    assert [(e["number"], e["hash"]) for e in new] == [(h, f"0xb-{h}") for h in range(4, 9)]
    assert [e.get("replaces") for e in new] == ["0xa-4", "0xa-5", "0xa-6", None, None]
    assert new[0]["txs"] == ["0xtx"]


def test_a_reorg_onto_a_shorter_branch(node: ScriptedNode, agent: RecordingAgent) -> None:
    agent.publish_blocks_up_to(node.head)
    advance(node, agent, "a", 0, 6)
    advance(node, agent, "b", 2, 2)  # heavier but shorter: head 4
    assert published(agent)[-2:] == [(3, "0xb-3"), (4, "0xb-4")]
    assert agent.last_number == 4
    advance(node, agent, "b", 4, 1)
    assert agent.events[-1]["hash"] == "0xb-5"
    assert agent.events[-1]["replaces"] == "0xa-5"
    # And back onto a: its blocks from the fork on are published again.
    node.canonical[3:] = [f"0xa-{h}" for h in range(3, 7)]
    agent.publish_blocks_up_to(node.head)
    assert published(agent)[-4:] == [(h, f"0xa-{h}") for h in range(3, 7)]


def test_a_branch_left_and_taken_again_is_published_again_from_the_fork(
    node: ScriptedNode, agent: RecordingAgent
) -> None:
    """The bus suite on Clique (processes): node3 published 118 and 119, then a sibling
    118 of its own (a shorter branch), was killed, came back on the first 118 and then
    imported 120. The agent published 118 again but not 119, which the sibling had taken
    out of the bus's view, so node3's history went 118, 120."""
    advance(node, agent, "a", 0, 1)
    advance(node, agent, "a", 1, 4)  # a-2..a-5
    advance(node, agent, "b", 3, 1)  # b-4 replaces a-4; the head is 4
    node.canonical[4:] = ["0xa-4"]  # back onto a, at its 4 first
    agent.publish_blocks_up_to(node.head)
    node.canonical.append("0xa-5")
    advance(node, agent, "a", 5, 1)  # a-6, on a-5
    assert published(agent)[-3:] == [(4, "0xa-4"), (5, "0xa-5"), (6, "0xa-6")]
    for before, after in itertools.pairwise(agent.events):
        assert after["number"] - before["number"] == 1 or "replaces" in after, (before, after)


def test_a_rewind_to_an_ancestor_then_new_blocks(node: ScriptedNode, agent: RecordingAgent) -> None:
    advance(node, agent, "a", 0, 1)
    advance(node, agent, "a", 1, 5)
    node.rewind(3)  # debug_setHead, as the harness does to end a Clique stall
    agent.publish_blocks_up_to(node.head)
    assert len(agent.events) == 6
    assert agent.last_number == 3
    advance(node, agent, "c", 3, 1)
    assert agent.events[-1]["hash"] == "0xc-4"
    assert agent.events[-1]["replaces"] == "0xa-4"


def test_the_same_blocks_again_after_a_rewind_are_not_news(
    node: ScriptedNode, agent: RecordingAgent
) -> None:
    """geth-pos: geth killed at block 10 restarts at 7 (its head pointer was older than its
    blocks) and imports 8..10 again; the agent published a step back to 8 without
    ``replaces``, which looked like a reorg that named nothing."""
    advance(node, agent, "a", 0, 1)
    advance(node, agent, "a", 1, 9)
    node.rewind(7)
    agent.publish_blocks_up_to(node.head)
    assert agent.last_number == 7
    # The same 8..10 again (already published), then one new block.
    node.canonical += [f"0xa-{h}" for h in range(8, 11)]
    agent.publish_blocks_up_to(9)
    agent.publish_blocks_up_to(10)
    advance(node, agent, "a", 10, 1)
    assert published(agent) == [(h, f"0xa-{h}") for h in range(1, 12)]


def test_a_rewind_below_the_first_head_it_saw_is_not_news(
    node: ScriptedNode, agent: RecordingAgent
) -> None:
    """The integration suite on geth-pos: the agent first saw block 2; node3, killed at 7,
    restarted at block 1, and the agent announced block 1 after 7, a step back that named
    nothing."""
    node.extend("a", 0, 2)
    agent.publish_blocks_up_to(node.head)  # its first head: 2
    advance(node, agent, "a", 2, 5)
    node.rewind(1)
    agent.publish_blocks_up_to(node.head)
    node.canonical += [f"0xa-{h}" for h in range(2, 8)]
    for height in range(2, 8):
        agent.publish_blocks_up_to(height)
    advance(node, agent, "a", 7, 1)
    assert published(agent) == [(h, f"0xa-{h}") for h in range(2, 9)]
    # A reorg deeper than the first head still publishes its branch down to there.
    advance(node, agent, "b", 1, 9)
    assert [e["hash"] for e in agent.events[7:]] == [f"0xb-{h}" for h in range(2, 11)]
    assert agent.events[7]["replaces"] == "0xa-2"


def test_a_block_gone_while_walking_back_is_retried_on_the_next_head(
    node: ScriptedNode, agent: RecordingAgent
) -> None:
    agent.publish_blocks_up_to(node.head)
    advance(node, agent, "a", 0, 3)
    node.extend("b", 1, 3)
    real = node.rpc
    gone = {"0xb-2"}

    def flaky(method: str, params: list[Any] | None = None) -> Any:
        if method == "eth_getBlockByHash" and params and params[0] in gone:
            return None
        return real(method, params)

    agent.node_rpc = flaky
    agent.publish_blocks_up_to(node.head)
    assert len(agent.events) == 4
    gone.clear()
    agent.publish_blocks_up_to(node.head)
    assert published(agent)[4:] == [(2, "0xb-2"), (3, "0xb-3"), (4, "0xb-4")]


def test_memory_is_bounded(node: ScriptedNode, agent: RecordingAgent) -> None:
    advance(node, agent, "a", 0, 1)
    for _ in range(3 * REORG_DEPTH):
        node.extend("a", node.head, 1)
        agent.publish_blocks_up_to(node.head)
    assert len(agent.published) <= REORG_DEPTH + 1
    assert [n for n, _ in published(agent)] == list(range(1, 3 * REORG_DEPTH + 2))


class TestTipRace:
    """Two signers seal the same height; the in-turn block wins (measured on a 4-node
    Clique network: most often the node a transfer was sent to sealed its own block first).
    """

    def test_the_winner_replaces_the_own_block_when_only_the_next_head_is_announced(
        self, node: ScriptedNode, agent: RecordingAgent
    ) -> None:
        advance(node, agent, "a", 0, 7)
        advance(node, agent, "own", 7, 1, txs=("0xtx",))  # the sealer's own block 8
        # geth switches to the in-turn block 8 without a newHeads of its own; the next
        # head (9, on top of it) is the first the agent hears of it.
        node.extend("turn", 7, 2, txs=("0xtx",))
        agent.publish_blocks_up_to(node.head)
        assert published(agent)[-3:] == [(8, "0xown-8"), (8, "0xturn-8"), (9, "0xturn-9")]
        assert agent.events[-2]["replaces"] == "0xown-8"
        assert agent.events[-2]["txs"] == ["0xtx"]
        assert "replaces" not in agent.events[-1]

    def test_two_heads_at_one_height_before_the_agent_looked(
        self, node: ScriptedNode, agent: RecordingAgent
    ) -> None:
        advance(node, agent, "a", 0, 7)
        # Both newHeads (own 8, then in-turn 8) are queued before the agent asks; by
        # then the node is on the winner: only it is published, and only once.
        node.extend("own", 7, 1)
        node.extend("turn", 7, 1)
        agent.publish_blocks_up_to(8)
        agent.publish_blocks_up_to(8)
        assert published(agent)[-1:] == [(8, "0xturn-8")]
        assert [n for n, _ in published(agent)].count(8) == 1


class ProbeAgent(Agent):
    """An agent on a client spec's head probe, answered from a script of heads."""

    def __init__(self, args: argparse.Namespace, heads: list[tuple[int, str] | None]) -> None:
        super().__init__(args)
        self.heads = list(heads)
        self.events: list[dict[str, Any]] = []

    def ask(self, what: str) -> Any:
        assert what == "head"
        if not self.heads:
            self.stop.set()
            raise RPCError("script done")
        head = self.heads.pop(0)
        if head is None:
            raise RPCError("the node does not answer")
        return {"height": head[0], "hash": head[1]}

    def publish(self, kind: str, payload: dict[str, Any]) -> None:
        self.events.append(payload)


def test_a_probed_node_publishes_each_new_head_and_what_replaced_what(tmp_path: Path) -> None:
    args = argparse.Namespace(
        run="r", node="node0", broker="127.0.0.1:1", user=None, password=None,
        record=None, own=str(tmp_path / "own.jsonl"), probe={"head": {}},
    )  # fmt: skip
    heads = [(1, "a1"), (1, "a1"), (3, "a3"), None, (3, "b3"), (2, "a2"), (4, "b4")]
    agent = ProbeAgent(args, heads)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("pytest_chainharness.agent.PROBE_EVERY", 0.0)
        agent.follow_probe()
    agent.own.close()
    assert agent.events == [
        {"number": 1, "hash": "a1", "txs": []},
        # A probe sees heads: height 2 was never the head when it looked.
        {"number": 3, "hash": "a3", "txs": []},
        {"number": 3, "hash": "b3", "txs": [], "replaces": "a3"},
        {"number": 2, "hash": "a2", "txs": []},
        {"number": 4, "hash": "b4", "txs": []},
    ]


# -- watched contracts' logs -----------------------------------------------------------------

CONTRACT = "0x" + "c0" * 20
BY = "0x" + "ab" * 20
BUMPED = {
    "type": "event", "name": "Bumped", "anonymous": False,
    "inputs": [{"name": "by", "type": "address", "indexed": True},
               {"name": "count", "type": "uint256", "indexed": False}],
}  # fmt: skip


class LoggingNode(ScriptedNode):
    """A scripted node whose transactions each emit one Bumped(by, 7) log."""

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        if method != "eth_getLogs":
            return super().rpc(method, params)
        from eth_utils.abi import event_abi_to_log_topic

        assert params is not None
        where = params[0]
        assert where["address"] == [CONTRACT]
        if "blockHash" in where:
            hashes = [where["blockHash"]]
        else:
            first, last = int(where["fromBlock"], 16), int(where["toBlock"], 16)
            hashes = self.canonical[first : last + 1]
        topic = "0x" + event_abi_to_log_topic(BUMPED).hex()  # type: ignore[arg-type]
        return [
            {"address": CONTRACT, "topics": [topic, "0x" + "00" * 12 + BY[2:]],
             "data": "0x" + (7).to_bytes(32, "big").hex(), "blockHash": h,
             "blockNumber": self.blocks[h]["number"], "transactionHash": tx, "logIndex": "0x0"}
            for h in hashes
            for tx in self.blocks[h]["transactions"]
        ]  # fmt: skip


class EveryKindAgent(RecordingAgent):
    def publish(self, kind: str, payload: dict[str, Any]) -> None:
        self.events.append({"kind": kind, **payload})


def logging_agent(node: LoggingNode, tmp_path: Path) -> EveryKindAgent:
    args = argparse.Namespace(
        run="r", node="node0", broker="127.0.0.1:1", user=None, password=None,
        record=None, own=str(tmp_path / "own.jsonl"), probe=None,
    )  # fmt: skip
    return EveryKindAgent(args, node)


def test_a_log_of_a_replaced_block_is_published_again_with_the_block_that_stays(
    tmp_path: Path,
) -> None:
    node = LoggingNode()
    agent = logging_agent(node, tmp_path)
    advance(node, agent, "a", 0, 3, txs=("0xbefore",))  # a log before the watch
    agent._new_watches.put(
        {"key": "w", "address": CONTRACT, "events": [BUMPED], "only": None, "from_block": 0}
    )
    agent.add_new_watches()
    advance(node, agent, "a", 3, 2, txs=("0xt1",))
    advance(node, agent, "b", 3, 2, txs=("0xt1",))  # the same tx, in a block of branch b
    logs = [(e["block"], e["block_hash"], e["tx"]) for e in agent.events if e["kind"] == "log"]
    assert logs == [(1, "0xa-1", "0xbefore"), (4, "0xa-4", "0xt1"), (4, "0xb-4", "0xt1")]
    first = next(e for e in agent.events if e["kind"] == "log")
    from eth_utils.address import to_checksum_address

    assert first["event"] == "Bumped"
    assert first["args"] == {"by": to_checksum_address(BY), "count": 7}
    watching = [e for e in agent.events if e["kind"] == "watching"]
    assert watching == [{"kind": "watching", "address": CONTRACT, "only": None, "up_to": 3}]
    agent.own.close()


def test_no_watching_before_the_earlier_logs_are_out(tmp_path: Path) -> None:
    """A node that does not answer the backfill must not get a ``watching`` said for it:
    that would tell the test every earlier log is on the bus."""
    node = LoggingNode()
    agent = logging_agent(node, tmp_path)
    advance(node, agent, "a", 0, 2, txs=("0xearly",))
    answer = node.rpc
    down = True

    def flaky(method: str, params: list[Any] | None = None) -> Any:
        if down and method == "eth_getLogs":
            raise RPCError("node not answering")
        return answer(method, params)

    agent.node_rpc = flaky
    agent._new_watches.put(
        {"key": "w", "address": CONTRACT, "events": [BUMPED], "only": None, "from_block": 0}
    )
    agent.add_new_watches()
    assert [e["kind"] for e in agent.events if e["kind"] != "block"] == []
    down = False
    agent.add_new_watches()
    kinds = [(e["kind"], e.get("tx")) for e in agent.events if e["kind"] != "block"]
    assert kinds == [("log", "0xearly"), ("watching", None)]
    agent.own.close()
