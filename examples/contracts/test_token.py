"""The deploy stage of a pipeline: compile an OpenZeppelin ERC20 at set-up, deploy it on
the network, and assert its Transfer event on every node.

    npm install --prefix examples/contracts          # @openzeppelin/contracts
    python -m pytest_chainharness.tools install solc
    pytest examples/contracts --chain-nodes=4 --gate=integration
"""

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def token_artifact(chain):
    # Compiled for the chain's EVM version (geth Clique: paris); nothing is committed.
    return chain.compile(HERE / "contracts" / "Token.sol")


@pytest.mark.stage("build")
def test_the_token_compiles_for_the_chain(chain, token_artifact):
    assert token_artifact["name"] == "Token"
    assert len(token_artifact["bytecode"]) > 2
    assert {e["name"] for e in token_artifact["abi"] if e["type"] == "event"} >= {"Transfer"}


@pytest.mark.stage("integration")
def test_transfer_event_is_seen_on_every_node(chain, bus, funded_account, token_artifact):
    token = chain.deploy(token_artifact, 10**24, sender=funded_account)
    chain.watch(token, "Transfer")
    to = chain.accounts[1].address
    data = token.encode_abi("transfer", args=[to, 5])
    tx = chain.send_signed(funded_account, {"to": token.address, "data": data, "gas": 100_000})
    logs = bus.wait_for("log", lambda e: e.payload["tx"] == tx.to_0x_hex(), nodes="all")
    for event in logs:
        assert event.payload["event"] == "Transfer"
        assert event.payload["args"] == {"from": funded_account.address, "to": to, "value": 5}
    assert token.functions.balanceOf(to).call() == 5
