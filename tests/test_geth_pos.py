"""geth-pos: current geth and prysm, proof of stake.

One inner 4-node run per backend carries the checks that need a network (a Prague
contract on every node, finality, a killed node's return, and the shipped 2|2 split
scenario); the bad-input runs each start (or refuse to start) their own.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_chainharness.images import GETH_POS_IMAGE
from tests.test_docker import run_objects as docker_objects
from tests.test_lifecycle import assert_nothing_left

pytestmark = pytest.mark.usefixtures("geth_pos_required", "mosquitto_required")

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests" / "contracts" / "Transient.sol"
SPLIT = ROOT / "scenarios" / "faults" / "geth-pos-split-2-2.yaml"

RUN = f"""
import pytest

from pytest_chainharness.contracts import unsupported_opcodes
from pytest_chainharness.tools import POS_GETH_PREVIOUS, POS_GETH_VERSION

SOURCE = {str(SOURCE)!r}


def test_a_prague_contract_runs_on_every_node(chain, bus, funded_account):
    assert chain.client == "geth-pos"
    built = chain.compile(SOURCE, "Transient")
    assert built["evm_version"] == "prague"
    code = bytes.fromhex(built["bytecode"].removeprefix("0x"))
    # What the Clique chain (paris) cannot run, this one does.
    assert {{"PUSH0", "TSTORE", "TLOAD"}} <= {{n for _, n, _ in unsupported_opcodes(code, "paris")}}
    contract = chain.deploy(built, sender=funded_account)
    chain.watch(contract, "Stored")
    data = contract.encode_abi("bump", args=[41])
    tx = chain.send_signed(funded_account, {{"to": contract.address, "data": data, "gas": 200000}})
    receipts = chain.wait_for_tx(tx)
    assert {{r["status"] for r in receipts.values()}} == {{1}}
    for node in chain.nodes:
        on_node = node.w3.eth.contract(address=contract.address, abi=contract.abi)
        assert on_node.functions.stored().call() == 42, node.name
    logs = bus.wait_for("log", lambda e: e.payload["tx"] == tx.to_0x_hex(), nodes="all")
    assert [e.payload["args"]["value"] for e in logs] == [42] * len(chain.nodes)


def test_blocks_are_finalized_on_every_node(chain, bus):
    head = chain.wait_finalized(timeout=120)
    assert head.number >= 1
    for node in chain.nodes:
        assert node.w3.eth.get_block(head.number)["hash"].to_0x_hex() == head.hash, node.name
    # Every agent announces it, and its beacon node's head.
    final = bus.wait_for(
        "finalized", lambda e: e.payload["number"] >= head.number, nodes="all", timeout=10
    )
    for event in final:
        block = chain.node(event.node).w3.eth.get_block(event.payload["number"])
        assert block["hash"].to_0x_hex() == event.payload["hash"], event
    beacon = bus.wait_for("beacon_head", nodes="all", timeout=10)
    assert all(e.payload["slot"] > 0 and e.payload["root"].startswith("0x") for e in beacon)


def test_a_killed_node_comes_back_and_converges(chain):
    node = chain.nodes[3]
    before = node.head().number
    node.kill()
    assert node.state == "stopped"
    node.start()
    # Back from its own datadir (geth keeps every block's state), then in step again.
    head = chain.wait_converged(timeout=120)
    assert head.number > before
    assert node.w3.eth.get_block(before)["hash"] == chain.nodes[0].w3.eth.get_block(before)["hash"]


@pytest.mark.disruptive
def test_geth_alone_killed_and_the_beacon_node_alone_paused(chain):
    node = chain.nodes[3]
    assert node.parts == {{"geth": "running", "beacon": "running", "validator": "running"}}
    node.kill(part="geth")
    # The node runs on without its geth: not a node the waits read, and back by itself
    # only once asked.
    assert node.state == "running"
    assert node.parts == {{"geth": "stopped", "beacon": "running", "validator": "running"}}
    assert not node.running and node not in chain.running_nodes()
    assert "geth stopped" in chain.status_table()
    top = max(h.number for h in chain.heads().values())
    chain.wait_for_height(top + 2, timeout=60)  # the other three go on
    node.start(part="geth")
    assert node.running
    assert chain.wait_converged(timeout=120).number > top
    # Without its beacon node, geth is told of no new head (no block import by gossip
    # since the merge): it stands while the others go on.
    node.pause(part="beacon")
    assert node.parts["beacon"] == "paused" and node.running
    stood = node.head().number
    chain.wait_for_height(stood + 3, nodes=[0, 1, 2], timeout=60)
    assert node.head().number <= stood + 1  # one may have been on its way
    node.resume(part="beacon")
    assert chain.wait_converged(timeout=120).number >= stood + 3


@pytest.mark.disruptive
def test_parts_left_down_by_a_disruptive_test(chain):
    chain.nodes[2].kill(part="validator")
    chain.nodes[1].pause(part="beacon")
    chain.nodes[0].stop(part="geth")


def test_are_running_again_in_the_next_test(chain, bus):
    for node in chain.nodes:
        assert set(node.parts.values()) == {{"running"}}, (node.name, node.parts)
    head = chain.wait_converged(timeout=60)
    bus.wait_for("block", lambda e: e.payload["number"] > head.number, nodes="all", timeout=60)
    # Each fault on a part was published as such.
    faults = {{(e.node, e.payload["action"]) for e in bus.events("fault")}}
    for action in ("kill validator", "start validator"):
        assert ("node2", action) in faults
    for action in ("pause beacon", "resume beacon"):
        assert ("node1", action) in faults
    for action in ("stop geth", "start geth"):
        assert ("node0", action) in faults


@pytest.mark.disruptive
def test_latency_on_one_node_through_its_links(chain, funded_account):
    before = chain.wait_converged(timeout=60).number
    with chain.latency(3, 250) as how:
        # Every link of node3 (geth's and the beacon node's) through a delaying proxy.
        assert how == "toxiproxy"
        assert chain.provider.latencies()[3]["ms"] == 250
        tx = chain.transfer(funded_account, funded_account.address, 1)
        assert {{r["status"] for r in chain.wait_for_tx(tx, timeout=60).values()}} == {{1}}
        chain.wait_for_height(before + 3, timeout=60)  # node3 keeps up
    assert chain.provider.latencies() == {{}}
    chain.wait_converged(timeout=60)


def test_a_rolling_upgrade_to_the_previous_geth_and_back(chain):
    # geth is swapped (a binary on processes, an image on docker); the datadir and the
    # beacon node's stay. One node at a time both ways, with finality caught up in
    # between: a restarted beacon node syncs again from its finalized state (docs/pos.md),
    # and going back two at a time took half the stake away, finality stood, and node2
    # had 200 slots to sync at 0.8 blocks/s (CI of f9b7d7a).
    assert all(n.client_version.startswith(POS_GETH_VERSION) for n in chain.nodes)
    before = chain.wait_converged(timeout=60).number
    down = chain.rolling_upgrade(POS_GETH_PREVIOUS, timeout=120)
    assert down.ok, str(down)
    assert all(n.client_version.startswith(POS_GETH_PREVIOUS) for n in chain.nodes)
    middle = chain.wait_converged(timeout=60).number
    assert middle > before
    chain.wait_finalized(at_least=middle, timeout=180)  # finality went on, and caught up
    up = chain.rolling_upgrade(POS_GETH_VERSION, timeout=120)
    assert up.ok, str(up)
    assert all(n.client_version.startswith(POS_GETH_VERSION) for n in chain.nodes)
    assert chain.wait_converged(timeout=120).number > middle
"""


@pytest.mark.parametrize("backend", ["process", "docker"])
def test_a_four_node_network_with_finality_and_a_split(
    inner: pytest.Pytester, runs_dir: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """The split is the shipped scenario, scenarios/faults/geth-pos-split-2-2.yaml, in the
    same run. The rolling upgrade needs the previous geth (and, on docker, its image)."""
    if backend == "docker":
        request.getfixturevalue("geth_pos_image_required")
    inner.makepyfile(test_pos=RUN)
    (inner.path / "scenarios").mkdir()
    (inner.path / "scenarios" / SPLIT.name).write_text(SPLIT.read_text())
    result = inner.runpytest_subprocess(
        "--chain-client=geth-pos",
        "--chain-nodes=4",
        f"--chain-backend={backend}",
        "-x",
        "-rA",
        "test_pos.py",
        "scenarios",
    )
    result.assert_outcomes(passed=9)
    out = result.stdout.str()
    if backend == "docker":
        assert f"client geth-pos (image {GETH_POS_IMAGE})" in out
        assert (
            f"backend docker (requested with --chain-backend=docker, image {GETH_POS_IMAGE})" in out
        )
    else:
        assert "client geth-pos 1.17.10" in out
        assert "backend process (requested with --chain-backend=process)" in out
    result.stdout.fnmatch_lines(
        [
            "*finalized #* or higher on every running node*",
            "*partition [[][[]0, 1], [[]2, 3]] by proxies*",
            "*nothing above #* finalized for 30s*",
            "*node0, node1 advanced to*",
            "*node2, node3 advanced to*",
            "*converged at*",
            "*finalized #* or higher on every running node*",
            "*no lasting fork: heights *identical on 4 nodes*",
        ]
    )
    assert_nothing_left(runs_dir)
    assert docker_objects(runs_dir) == []


def _cli(cwd: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    chainharness = str(Path(sys.executable).parent / "chainharness")
    return subprocess.run(
        [chainharness, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_chainharness_up_attach_status_and_down(inner: pytest.Pytester, runs_dir: Path) -> None:
    """A network brought up outside pytest (for a load test or by hand), attached to by a
    session, then taken down: nothing of it is left."""
    up = _cli(
        inner.path, "up", "--chain-client=geth-pos", "--chain-nodes=2", "--chain-backend=process"
    )
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        assert "2 node(s) up on process" in up.stdout
        state = inner.path / ".chainharness" / "state.json"
        inner.makepyfile(
            """
            def test_attached(chain):
                assert chain.client == "geth-pos"
                assert len(chain.nodes) == 2
                head = chain.wait_finalized(timeout=120)
                chain.wait_for_height(head.number + 2, timeout=30)
            """
        )
        result = inner.runpytest_subprocess(f"--chain-attach={state}")
        result.assert_outcomes(passed=1)
        status = _cli(inner.path, "status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "node1  running" in status.stdout
    finally:
        down = _cli(inner.path, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert_nothing_left(runs_dir)


class TestBadInput:
    def test_missing_binaries_name_the_install_command(
        self,
        inner: pytest.Pytester,
        runs_dir: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        empty = tmp_path / "no-tools"
        empty.mkdir()
        monkeypatch.setenv("CHAINHARNESS_TOOLS", str(empty))
        inner.makepyfile("def test_x(chain):\n    pass\n")
        result = inner.runpytest_subprocess("--chain-client=geth-pos")
        result.assert_outcomes(errors=1)
        out = result.stdout.str()
        assert "python -m pytest_chainharness.tools install geth-pos" in out
        assert "beacon-chain was not found" in out
        assert_nothing_left(runs_dir)

    def test_more_nodes_than_the_validator_split_serves_is_a_usage_error(
        self, inner: pytest.Pytester, runs_dir: Path
    ) -> None:
        inner.makepyfile("def test_x(chain):\n    pass\n")
        result = inner.runpytest_subprocess("--chain-client=geth-pos", "--chain-nodes=17")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert "--chain-nodes=17: the geth-pos client runs at most 16 nodes" in result.stderr.str()
        assert not runs_dir.exists() or list(runs_dir.iterdir()) == []

    @pytest.mark.usefixtures("docker_required")
    def test_a_missing_image_names_the_build_command(
        self, inner: pytest.Pytester, runs_dir: Path
    ) -> None:
        inner.makepyfile("def test_x(chain):\n    pass\n")
        missing = "chainharness/geth-pos:v0.0.0-absent"
        result = inner.runpytest_subprocess(
            "--chain-client=geth-pos", "--chain-backend=docker", f"--chain-image={missing}"
        )
        result.assert_outcomes(errors=1)
        out = result.stdout.str()
        assert missing in out
        assert "chainharness images build" in out
        assert_nothing_left(runs_dir)
        assert docker_objects(runs_dir) == []

    def test_a_beacon_node_that_never_reaches_its_geth_is_named(
        self, inner: pytest.Pytester, runs_dir: Path
    ) -> None:
        # node1's beacon node is pointed at a port nothing listens on.
        inner.makeconftest(
            """
            from pytest_chainharness.clients.geth_pos import GethPosAdapter

            command = GethPosAdapter.command

            def broken(self, testnet, node, place, *, seal):
                argv = command(self, testnet, node, place, seal=seal)
                if node.index == 1:
                    argv[-1] = argv[-1].replace(
                        f":{place.ports['authrpc']}\\"", ":9\\"", 1
                    )
                return argv

            GethPosAdapter.command = broken
            """
        )
        inner.makeini("[pytest]\nchain_backend = process\nchain_start_timeout = 45\n")
        inner.makepyfile("def test_x(chain):\n    pass\n")
        result = inner.runpytest_subprocess("--chain-client=geth-pos", "--chain-nodes=2")
        result.assert_outcomes(errors=1)
        out = result.stdout.str()
        # prysm opens its API either not at all before it has reached its geth, or at
        # once and says el_offline (both seen): either way the start names node1's engine.
        assert re.search(
            r"node1: its beacon node (does not answer .*only once it has reached its geth"
            r"|has not reached its geth) \(engine API on port \d+, JWT in jwt.hex\)",
            out,
        ), out[-4000:]
        assert "node0: its beacon node" not in out
        assert "beacon | " in out
        assert_nothing_left(runs_dir)
