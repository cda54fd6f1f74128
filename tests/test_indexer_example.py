"""The example indexer service (scenarios/indexer/indexer.py) against a scripted node.

A run under load showed the shape: the indexer took an empty block 5, the node then
replaced it with a block 5 holding the test's transfer, and the indexer, which only
counted upwards, never served that transfer (404 for the whole 15 s wait).
"""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import Any

import pytest

from tests.test_docker import ROOT

TX = "0x" + "7" * 64


def block(number: int, tag: str, parent: str, txs: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "number": hex(number),
        "hash": f"0x{tag}{number:02d}".ljust(66, "0"),
        "parentHash": parent,
        "transactions": list(txs),
    }


class ScriptedNode:
    """A canonical chain the test edits; answers the two calls the indexer makes."""

    def __init__(self) -> None:
        self.blocks = [block(0, "a", "0x" + "0" * 64)]

    def grow(self, tag: str, txs: tuple[str, ...] = ()) -> None:
        tip = self.blocks[-1]
        self.blocks.append(block(len(self.blocks), tag, tip["hash"], txs))

    def replace_tip(self, tag: str, txs: tuple[str, ...] = ()) -> None:
        self.blocks.pop()
        self.grow(tag, txs)

    def rpc(self, method: str, params: list[Any]) -> Any:
        if method == "eth_blockNumber":
            return hex(len(self.blocks) - 1)
        assert method == "eth_getBlockByNumber"
        number = int(params[0], 16)
        return self.blocks[number] if number < len(self.blocks) else None


@pytest.fixture
def indexer(monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, ScriptedNode]:
    monkeypatch.setenv("RPC_URL", "http://node0:8545")
    spec = importlib.util.spec_from_file_location(
        "indexer_example", ROOT / "scenarios" / "indexer" / "indexer.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    node = ScriptedNode()
    monkeypatch.setattr(module, "rpc", node.rpc)
    return module, node


def test_a_replaced_tip_is_indexed_again(indexer: tuple[ModuleType, ScriptedNode]) -> None:
    module, node = indexer
    for _ in range(5):
        node.grow("a")
    module.catch_up()
    assert module.head["number"] == 5
    node.replace_tip("b", (TX,))  # the transfer's block took the empty one's place
    node.grow("b")
    module.catch_up()
    assert module.tx_blocks == {TX: 5}
    assert module.head == {"number": 6, "hash": node.blocks[6]["hash"]}
    assert module.indexed == [b["hash"] for b in node.blocks]


def test_a_deeper_reorganisation_drops_what_it_replaced(
    indexer: tuple[ModuleType, ScriptedNode],
) -> None:
    module, node = indexer
    for _ in range(3):
        node.grow("a")
    node.grow("a", (TX,))  # block 4, on the branch that loses
    module.catch_up()
    assert module.tx_blocks == {TX: 4}
    del node.blocks[3:]
    for _ in range(3):  # blocks 3-5 of the other branch, without the transfer
        node.grow("c")
    module.catch_up()
    assert module.tx_blocks == {}
    assert module.indexed == [b["hash"] for b in node.blocks]
