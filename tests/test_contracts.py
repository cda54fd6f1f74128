"""Contract CI: artifacts, the opcode check, compile, deploy and watched logs, against
the session's 4-node geth network, anvil, and the docker backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3.exceptions import ContractLogicError

from pytest_chainharness import Chain, SyncBus
from pytest_chainharness.contracts import load_artifact, unsupported_opcodes
from pytest_chainharness.solc import compile_contract
from tests.test_lifecycle import assert_nothing_left

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests" / "contracts" / "Counter.sol"
on_geth = pytest.mark.chain(client="geth")

# -- the opcode scan (no chain) ---------------------------------------------------------------


def test_a_push_argument_is_not_an_opcode() -> None:
    assert unsupported_opcodes(bytes.fromhex("605f00"), "paris") == []  # PUSH1 0x5f; STOP
    assert unsupported_opcodes(bytes.fromhex("5f00"), "paris") == [(0, "PUSH0", "shanghai")]
    push32 = "7f" + "5f" * 32  # PUSH32 of 0x5f bytes, then a real PUSH0
    assert unsupported_opcodes(bytes.fromhex(push32 + "5f"), "paris") == [(33, "PUSH0", "shanghai")]
    assert unsupported_opcodes(bytes.fromhex("5f"), "shanghai") == []


def test_cancun_opcodes_are_named() -> None:
    code = bytes.fromhex("5e5c5d00")  # MCOPY TLOAD TSTORE STOP
    assert [name for _, name, _ in unsupported_opcodes(code, "shanghai")] == [
        "MCOPY", "TLOAD", "TSTORE",
    ]  # fmt: skip
    assert unsupported_opcodes(code, "cancun") == []


def test_solc_metadata_is_data() -> None:
    # The CBOR trailer solc appends: {"ipfs": 34 bytes, "solc": 3 bytes} + its length.
    cbor = bytes.fromhex("a264697066735822") + b"\x5f" * 34 + bytes.fromhex("64736f6c6343000825")
    code = bytes.fromhex("6080604052fe") + cbor + len(cbor).to_bytes(2, "big")
    assert unsupported_opcodes(code, "paris") == []
    assert unsupported_opcodes(code + b"\x5f", "paris") == [(len(code), "PUSH0", "shanghai")]


# -- artifacts (no chain) -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled(solc_required: None) -> dict[str, Any]:
    return compile_contract(SOURCE, "Counter", evm_version="paris")


def artifact_files(tmp_path: Path, compiled: dict[str, Any]) -> dict[str, Any]:
    foundry = tmp_path / "out" / "Counter.sol" / "Counter.json"
    foundry.parent.mkdir(parents=True)
    foundry.write_text(
        json.dumps(
            {"abi": compiled["abi"],
             "bytecode": {"object": compiled["bytecode"], "linkReferences": {}},
             "deployedBytecode": {"object": "0x"}}
        )
    )  # fmt: skip
    hardhat = tmp_path / "artifacts" / "contracts" / "Counter.sol" / "Counter.json"
    hardhat.parent.mkdir(parents=True)
    hardhat.write_text(
        json.dumps(
            {"_format": "hh-sol-artifact-1", "contractName": "Counter",
             "sourceName": "contracts/Counter.sol", "abi": compiled["abi"],
             "bytecode": compiled["bytecode"], "deployedBytecode": "0x",
             "linkReferences": {}, "deployedLinkReferences": {}}
        )
    )  # fmt: skip
    return {"foundry": foundry, "hardhat": hardhat, "dict": dict(compiled)}


def test_every_format_loads_the_same(tmp_path: Path, compiled: dict[str, Any]) -> None:
    loaded = [load_artifact(a) for a in artifact_files(tmp_path, compiled).values()]
    assert len({a.bytecode for a in loaded}) == 1
    assert all(a.abi == compiled["abi"] for a in loaded)
    assert [a.name for a in loaded] == ["Counter", "Counter", "Counter"]


def test_bad_artifacts_say_what_is_wrong(tmp_path: Path, solc_required: None) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_artifact(tmp_path / "missing.json")
    (tmp_path / "text.json").write_text("not json")
    with pytest.raises(ValueError, match="is not JSON"):
        load_artifact(tmp_path / "text.json")
    (tmp_path / "odd.json").write_text('{"contract": {}}')
    with pytest.raises(ValueError, match="unknown format; expected a Foundry artifact"):
        load_artifact(tmp_path / "odd.json")
    base = compile_contract(SOURCE, "Base", evm_version="paris")
    with pytest.raises(ValueError, match=r"Base .* has no bytecode: an abstract contract"):
        load_artifact({**base, "contractName": "Base"})
    with pytest.raises(ValueError, match="unlinked library references"):
        load_artifact({"abi": [], "bytecode": "0x60__$1234$__00"})


def test_compile_errors_are_solcs(tmp_path: Path, solc_required: None) -> None:
    broken = tmp_path / "Broken.sol"
    broken.write_text("pragma solidity ^0.8.20; contract Broken { uint x = ; }")
    with pytest.raises(ValueError, match=r"(?s)does not compile.*Broken.sol"):
        compile_contract(broken, None, evm_version="paris")
    several = tmp_path / "Several.sol"
    several.write_text(SOURCE.read_text())
    with pytest.raises(ValueError, match="holds Base, Counter, Reverter: name one"):
        compile_contract(several, None, evm_version="paris")
    # The contract named like its file is the default.
    assert compile_contract(SOURCE, None, evm_version="paris")["name"] == "Counter"
    with pytest.raises(ValueError, match="has no contract 'Nope'"):
        compile_contract(SOURCE, "Nope", evm_version="paris")


# -- on the session's 4-node geth network ----------------------------------------------------


def bump(chain: Chain, contract: Any, sender: LocalAccount, note: str) -> str:
    data = contract.encode_abi("bump", args=[note])
    tx = chain.send_signed(sender, {"to": contract.address, "data": data, "gas": 200_000})
    return tx.to_0x_hex()


@on_geth
@pytest.mark.parametrize("form", ["foundry", "hardhat", "dict"])
def test_deploy_each_format_on_every_node(
    chain: Chain, tmp_path: Path, compiled: dict[str, Any], form: str
) -> None:
    artifact = artifact_files(tmp_path, compiled)[form]
    counter = chain.deploy(artifact, 7)
    for node in chain.nodes:
        assert node.w3.eth.get_code(counter.address), node.name
    assert counter.functions.count().call() == 7


@on_geth
def test_compile_deploy_and_call(chain: Chain, funded_account: LocalAccount) -> None:
    built = chain.compile(SOURCE, "Counter")
    assert built["evm_version"] == "paris"
    counter = chain.deploy(built, 41, sender=funded_account)
    tx = bump(chain, counter, funded_account, "one more")
    chain.wait_for_tx(tx)
    assert counter.functions.count().call() == 42


@on_geth
def test_code_for_a_later_evm_is_refused_before_anything_is_sent(
    chain: Chain, funded_account: LocalAccount
) -> None:
    cancun = compile_contract(SOURCE, "Counter", evm_version="cancun")
    nonce = chain.nodes[0].w3.eth.get_transaction_count(funded_account.address)
    with pytest.raises(ValueError, match=r"Counter uses PUSH0 .*needs EVM shanghai.* runs paris"):
        chain.deploy(cancun, 1, sender=funded_account)
    assert chain.nodes[0].w3.eth.get_transaction_count(funded_account.address) == nonce


@on_geth
def test_wrong_arguments_and_reverts_are_errors_before_sending(
    chain: Chain, funded_account: LocalAccount
) -> None:
    nonce = chain.nodes[0].w3.eth.get_transaction_count(funded_account.address)
    counter = chain.compile(SOURCE, "Counter")
    with pytest.raises(TypeError, match=r"constructor\(uint256 start\) does not take \['x', 2\]"):
        chain.deploy(counter, "x", 2, sender=funded_account)
    reverter = chain.compile(SOURCE, "Reverter")
    with pytest.raises(ContractLogicError, match=r"Reverter's constructor reverts: .*not ok"):
        chain.deploy(reverter, False, sender=funded_account)
    assert chain.nodes[0].w3.eth.get_transaction_count(funded_account.address) == nonce
    assert chain.deploy(reverter, True, sender=funded_account).address


@on_geth
def test_watched_events_are_seen_on_every_node_across_a_restart(
    chain: Chain, bus: SyncBus, funded_account: LocalAccount
) -> None:
    counter = chain.deploy(chain.compile(SOURCE, "Counter"), 0, sender=funded_account)
    with pytest.raises(ValueError, match="has no event 'Missing' in its ABI; its events: Bumped"):
        chain.watch(counter, "Missing")
    first = bump(chain, counter, funded_account, "before the watch")
    chain.wait_for_tx(first)
    chain.watch(counter, "Bumped")
    # A log from before the watch is published too (from the deploy block on).
    seen = bus.wait_for("log", lambda e: e.payload["tx"] == first, nodes="all")
    assert {e.payload["args"]["note"] for e in seen} == {"before the watch"}
    assert {e.payload["event"] for e in seen} == {"Bumped"}
    assert seen[0].payload["args"]["by"] == funded_account.address
    assert seen[0].payload["address"] == counter.address
    chain.nodes[2].kill()
    while_down = bump(chain, counter, funded_account, "while node2 is down")
    chain.wait_for_tx(while_down)
    chain.nodes[2].start()
    logs = bus.wait_for("log", lambda e: e.payload["tx"] == while_down, nodes="all", timeout=60)
    assert {e.payload["args"]["count"] for e in logs} == {2}
    receipt = chain.wait_for_tx(while_down)["node2"]
    # Asked again once the chain wait returned: a log of a block some node replaced since
    # (CI: node1 took an empty sibling of the block it had sealed the bump in) no longer
    # counts, and the bus agrees with the receipts the wait saw.
    logs = bus.wait_for("log", lambda e: e.payload["tx"] == while_down, nodes="all", timeout=10)
    assert {e.payload["block_hash"] for e in logs} == {receipt["blockHash"].to_0x_hex()}


# -- other clients and the docker backend ------------------------------------------------------

INNER = f"""
import json
from pathlib import Path

SOURCE = Path({str(SOURCE)!r})

def test_compile_deploy_call_and_watch(chain, bus, funded_account):
    built = chain.compile(SOURCE, "Counter")
    print("EVM", built["evm_version"])
    counter = chain.deploy(built, 1)
    chain.watch(counter)
    data = counter.encode_abi("bump", args=["hello"])
    tx = chain.send_signed(funded_account, {{"to": counter.address, "data": data, "gas": 200000}})
    logs = bus.wait_for("log", lambda e: e.payload["tx"] == tx.to_0x_hex(), nodes="all")
    assert [e.payload["args"]["count"] for e in logs] == [2] * len(chain.nodes)
    assert counter.functions.count().call() == 2

def test_every_artifact_format_on_every_node(chain, tmp_path):
    built = chain.compile(SOURCE, "Counter")
    foundry = tmp_path / "foundry.json"
    code = {{"object": built["bytecode"]}}
    foundry.write_text(json.dumps({{"abi": built["abi"], "bytecode": code}}))
    hardhat = tmp_path / "hardhat.json"
    hardhat.write_text(json.dumps({{"_format": "hh-sol-artifact-1", "contractName": "Counter",
                                    "abi": built["abi"], "bytecode": built["bytecode"]}}))
    for artifact in (foundry, hardhat, built):
        counter = chain.deploy(artifact, 5)
        assert all(node.w3.eth.get_code(counter.address) for node in chain.nodes)
        assert counter.functions.count().call() == 5
"""


@pytest.mark.usefixtures("solc_required", "mosquitto_required")
@pytest.mark.parametrize(
    ("where", "options", "evm"),
    [
        # anvil runs its newest fork: compile targets it.
        ("anvil", ["--chain-client=anvil", "--chain-nodes=1"], "osaka"),
        ("docker", ["--chain-backend=docker", "--chain-nodes=4"], "paris"),
    ],
)
def test_deploy_and_watch_on_anvil_and_docker(
    inner: pytest.Pytester,
    runs_dir: Path,
    request: pytest.FixtureRequest,
    where: str,
    options: list[str],
    evm: str,
) -> None:
    request.getfixturevalue("anvil_required" if where == "anvil" else "docker_required")
    inner.makepyfile(test_it=INNER)
    result = inner.runpytest_subprocess(*options, "-s")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"*EVM {evm}*"])
    assert_nothing_left(runs_dir)


@pytest.mark.usefixtures("geth_required", "solc_required", "mosquitto_required")
def test_the_erc20_example_promotes_the_integration_stage(
    inner: pytest.Pytester, runs_dir: Path
) -> None:
    """examples/contracts: an OpenZeppelin ERC20 compiled at set-up, deployed in a
    stage("integration") test, its Transfer event asserted on every node."""
    example = ROOT / "examples" / "contracts"
    modules = example / "node_modules" / "@openzeppelin" / "contracts"
    if not modules.is_dir():
        pytest.skip("npm is not installed here: scripts/setup.sh puts OpenZeppelin in place")
    (inner.path / "contracts").mkdir()
    (inner.path / "contracts" / "Token.sol").write_text(
        (example / "contracts" / "Token.sol").read_text()
    )
    (inner.path / "node_modules").symlink_to(example / "node_modules")
    inner.makepyfile(test_token=(example / "test_token.py").read_text())
    result = inner.runpytest_subprocess(
        "--chain-nodes=4", "--gate=integration", "--gate-report=v.json"
    )
    result.assert_outcomes(passed=2)
    verdict = json.loads((inner.path / "v.json").read_text())
    assert verdict["verdict"] == "promote", verdict
    assert_nothing_left(runs_dir)
