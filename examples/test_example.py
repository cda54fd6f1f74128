"""Example tests against a real multi-node chain (run: pytest examples --chain-nodes=4)."""

import pytest

from pytest_chainharness import Chain


def test_transfer_reaches_every_node(chain: Chain, funded_account) -> None:
    recipient = chain.accounts[0].address
    before = chain.nodes[0].w3.eth.get_balance(recipient)
    tx = chain.transfer(funded_account, recipient, 10**18)
    receipts = chain.wait_for_tx(tx)  # in a block on every node
    assert {r["status"] for r in receipts.values()} == {1}
    assert len({r["blockHash"] for r in receipts.values()}) == 1
    chain.wait_converged()
    assert chain.nodes[-1].w3.eth.get_balance(recipient) >= before + 10**18


def test_all_nodes_converge(chain: Chain) -> None:
    head = chain.wait_converged()
    assert set(chain.heads()) == {n.name for n in chain.nodes}
    assert head.number >= 1


@pytest.mark.disruptive
@pytest.mark.chain(min_nodes=4)
def test_crashed_node_catches_up(chain: Chain) -> None:
    last = chain.nodes[-1]
    last.kill()
    height = max(h.number for h in chain.heads().values())
    chain.wait_for_height(height + 2)  # the others keep producing blocks
    last.start()
    head = chain.wait_converged()
    assert head.number >= height + 2
