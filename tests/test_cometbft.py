"""CometBFT (kvstore) as a network: the first client that is not geth, from its spec file
alone (``pytest_chainharness/clients/specs/cometbft.yaml``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_lifecycle import assert_nothing_left

pytestmark = pytest.mark.usefixtures("cometbft_required", "mosquitto_required")

ROOT = Path(__file__).resolve().parent.parent

RUN = """
import pytest
from pytest_chainharness import ToolNotFound, UnsupportedAction


def test_heads_waits_bus_and_faults(chain, bus):
    assert chain.client == "cometbft"
    chain.wait_for_height(3)
    head = chain.wait_converged()
    assert len(head.hash) == 64  # CometBFT block hashes: hex, no 0x
    # The spec's metrics port is reached like the RPC (published on docker); the start
    # waited for every peer.
    metrics = chain.nodes[0].metrics()
    assert [v for k, v in metrics.items() if k.startswith("cometbft_p2p_peers{")] == [3.0]
    events = bus.wait_for("block", lambda e: e.payload["number"] >= head.number, nodes="all")
    assert {e.node for e in events} == {"node0", "node1", "node2", "node3"}
    assert {e.payload["count"] for e in bus.wait_for("peers", nodes="all")} == {3}
    node3 = chain.nodes[3]
    node3.kill()
    # Three of four validators hold more than 2/3 of the power: they keep committing.
    chain.wait_for_height(head.number + 3, nodes=[0, 1, 2])
    node3.start()
    again = chain.wait_converged(timeout=60)
    assert again.number >= head.number + 3
    node3.restart()
    chain.wait_converged(timeout=60)
    assert set(chain.nodes[0].ports) == {"p2p", "rpc", "metrics"}
    assert "0.38.26" in chain.nodes[0].client_version


def test_a_3_1_split_through_the_link_proxies(chain):
    before = chain.wait_converged().number
    with chain.partition([0, 1, 2], [3]) as how:
        assert how == "proxies"
        chain.wait_for_height(before + 3, nodes=[0, 1, 2])
        stuck = chain.nodes[3].head().number
        chain.wait_for_height(before + 5, nodes=[0, 1, 2])
        # Cut off, node3 has no 2/3 of the votes: it commits nothing.
        assert chain.nodes[3].head().number == stuck
    assert chain.wait_converged(timeout=60).number >= before + 5


def test_latency_on_one_node_through_its_links(chain):
    before = chain.wait_converged().number
    with chain.latency(3, 150) as how:
        assert how == "toxiproxy"
        # 150 ms each way on node3's links: the network still commits, node3 too.
        chain.wait_for_height(before + 3, timeout=60)
    chain.wait_converged(timeout=60)


def test_pause_and_resume(chain):
    node = chain.nodes[1]
    before = chain.wait_converged().number
    node.pause()
    chain.wait_for_height(before + 2, nodes=[0, 2, 3])
    node.resume()
    chain.wait_converged(timeout=60)


@pytest.mark.disruptive
def test_rolling_upgrade_to_another_binary_and_back(chain, tmp_path):
    import shutil

    first = chain.provider.version_ref(0)
    other = tmp_path / "cometbft-next"
    shutil.copy2(first, other)
    result = chain.rolling_upgrade(str(other), max_unavailable=2)
    assert result.ok, result
    assert {chain.provider.version_ref(n.index) for n in chain.nodes} == {str(other)}
    head = chain.wait_converged(timeout=60)
    # A batch that fails its health check goes back to the binary it ran.
    failed = chain.rolling_upgrade(first, health=lambda node: False, max_unavailable=1)
    assert failed.rolled_back and not failed.ok
    assert {chain.provider.version_ref(n.index) for n in chain.nodes} == {str(other)}
    chain.wait_for_height(head.number + 2, timeout=60)  # and the network commits again
    chain.wait_converged(timeout=60)
    with pytest.raises(ToolNotFound, match="no executable binary"):
        chain.nodes[0].upgrade(str(tmp_path / "missing"))


def test_the_spec_redial_is_one_the_node_accepts(chain):
    # What the redial repair sends (clients/_redial.py): dial_peers, on the unsafe RPC.
    node = chain.nodes[0]
    chain.adapter.redial(chain.testnet, node._spec, chain.provider._place(0))
    chain.wait_ready(timeout=30)
    assert node.peer_count() == 3


def test_ethereum_calls_name_the_client(chain):
    with pytest.raises(UnsupportedAction, match="client cometbft is not an Ethereum chain"):
        chain.nodes[0].w3
"""


@pytest.fixture(params=["process", "docker", "kubernetes"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "docker":
        request.getfixturevalue("docker_required")
    if request.param == "kubernetes":
        # The inner session finds the test cluster by the usual lookup.
        monkeypatch.setenv("KUBECONFIG", str(request.getfixturevalue("kube_cluster")))
    return str(request.param)


def test_a_four_node_cometbft_network(inner: pytest.Pytester, runs_dir: Path, backend: str) -> None:
    inner.makepyfile(test_cometbft=RUN)
    result = inner.runpytest_subprocess(
        "--chain-client=cometbft", "--chain-nodes=4", f"--chain-backend={backend}"
    )
    # Before the start the header names what runs: the host binary's version, and on
    # docker the image it is mounted into.
    on = " on image chainharness/base:bookworm)" if backend != "process" else ")"
    result.stdout.fnmatch_lines([f"chainharness: 4 node(s), client cometbft 0.38.26 (/*{on}"])
    result.assert_outcomes(passed=len(RUN.split("def test_")) - 1)
    assert_nothing_left(runs_dir)


ONE = """
def test_one_node_makes_blocks_alone(chain, bus):
    chain.wait_for_height(3)
    # The spec's metrics: CometBFT labels each one with the chain id.
    metrics = chain.nodes[0].metrics()
    heights = [v for k, v in metrics.items() if k.startswith("cometbft_consensus_height{")]
    assert heights and heights[0] >= 3, sorted(metrics)[:20]
    assert any(k.startswith("cometbft_mempool_size{") for k in metrics)
    bus.wait_for("block", lambda e: e.payload["number"] >= 3, nodes="all")
    height = chain.heads()["node0"].number
    chain.nodes[0].restart()
    chain.wait_for_height(height + 2)
"""


LOST_PAIR = """
from pytest_chainharness.clients.spec_client import SpecAdapter


class LostPair(SpecAdapter):
    \"\"\"node0 and node1 are not told of each other: where CometBFT leaves a pair whose
    simultaneous dials it dropped at both ends (neither redials).\"\"\"

    def _full_values(self, testnet, node, place):
        values = super()._full_values(testnet, node, place)
        if node.index in (0, 1):
            other = self._addresses(testnet, node, place, dict(values))[1 - node.index]
            values["peers"] = ",".join(p for p in values["peers"].split(",") if p != other)
        return values
"""

REDIALLED = """
import json


def test_the_lost_pair_was_redialled(chain):
    assert chain.nodes[0].peer_count() == 3 and chain.nodes[1].peer_count() == 3
    # The start's repairs are the run's like any other (the verdict counts them).
    log = chain.provider.run_dir / "repairs.jsonl"
    (repair,) = [json.loads(line)["what"] for line in log.read_text().splitlines()]
    assert repair.startswith("redial: node") and "(2 of 3 for " in repair, repair
"""


def test_a_pair_cometbft_gave_up_on_is_redialled_at_start(
    inner: pytest.Pytester, runs_dir: Path
) -> None:
    spec = inner.path / "lost-pair.yaml"
    shipped = ROOT / "pytest_chainharness" / "clients" / "specs" / "cometbft.yaml"
    spec.write_text(shipped.read_text() + "adapter: lost_pair:LostPair\n")
    (inner.path / "lost_pair.py").write_text(LOST_PAIR)
    inner.makepyfile(test_redial=REDIALLED)
    result = inner.runpytest_subprocess(
        f"--chain-client={spec}", "--chain-nodes=4", "--gate=build", "--gate-report=v.json"
    )
    result.assert_outcomes(passed=1)
    assert json.loads((inner.path / "v.json").read_text())["chain"]["repairs"] == 1
    assert_nothing_left(runs_dir)


def test_a_single_node_network(inner: pytest.Pytester, runs_dir: Path) -> None:
    """The 1 of 1..32: no peers, so no peer links either."""
    inner.makepyfile(test_one=ONE)
    result = inner.runpytest_subprocess("--chain-client=cometbft", "--chain-nodes=1")
    result.assert_outcomes(passed=1)
    assert_nothing_left(runs_dir)


def test_the_shipped_split_scenario(inner: pytest.Pytester, runs_dir: Path, backend: str) -> None:
    """scenarios/faults/cometbft-split-3-1.yaml: the majority commits while node3 is cut
    off through the link proxies, and node3 catches up after the heal."""
    scenarios = inner.path / "scenarios"
    scenarios.mkdir()
    shipped = ROOT / "scenarios" / "faults" / "cometbft-split-3-1.yaml"
    (scenarios / shipped.name).write_text(shipped.read_text())
    result = inner.runpytest_subprocess(
        "--chain-client=cometbft",
        "--chain-nodes=4",
        f"--chain-backend={backend}",
        "scenarios",
        "-rA",
    )
    result.assert_outcomes(passed=1)
    # A teardown that raises comes after the outcomes line: only the exit status shows it.
    assert result.ret == 0, "\n".join(result.errlines[-30:])
    result.stdout.fnmatch_lines(
        [
            "fault methods: proxies",
            "*partition * by proxies*",
            "*node0, node1, node2 advanced to*",
            "*stalled at node3*",
            "*converged at*",
            "*no lasting fork: not checked: client cometbft reports its head only*",
        ]
    )
    assert_nothing_left(runs_dir)


def test_allure_results_of_a_failing_cometbft_test(inner: pytest.Pytester, runs_dir: Path) -> None:
    """What a failing geth test attaches, a CometBFT one attaches too: the heads, the bus
    events, every node's log, the fault steps, and the client in the environment."""
    pytest.importorskip("allure", reason="allure-pytest is an optional dependency")
    inner.makepyfile(
        """
        def test_height_breaks(chain):
            chain.nodes[1].stop()
            chain.nodes[1].start()
            chain.wait_for_height(2)
            assert chain.heads()["node0"].number < 0, "head went negative"
        """
    )
    result = inner.runpytest_subprocess(
        "--chain-client=cometbft", "--chain-nodes=2", "--alluredir=allure"
    )
    result.assert_outcomes(failed=1)
    allure_dir = inner.path / "allure"
    env = (allure_dir / "environment.properties").read_text()
    assert "chain.client=cometbft" in env
    assert "chain.version=0.38.26" in env
    [failed] = [json.loads(p.read_text()) for p in allure_dir.glob("*-result.json")]
    assert failed["status"] == "failed"
    attached = {a["name"]: a["source"] for a in failed["attachments"]}
    assert {"chainharness heads", "chainharness events"} <= set(attached)
    for node in ("node0", "node1"):
        log = (allure_dir / attached[f"{node} log (last 80 lines)"]).read_text()
        assert "cometbft" in log or "consensus" in log, log[-500:]
    heads = (allure_dir / attached["chainharness heads"]).read_text()
    assert "node0" in heads
    assert "node1" in heads
    steps = [s["name"] for s in failed.get("steps", [])]
    assert steps[:2] == ["fault: stop (node1)", "fault: start (node1)"], steps
    assert_nothing_left(runs_dir)


def test_cometbft_not_installed_says_how(
    inner: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "no-tools"
    empty.mkdir()
    monkeypatch.setenv("CHAINHARNESS_TOOLS", str(empty))
    inner.makepyfile("def test_it(chain):\n    pass\n")
    result = inner.runpytest_subprocess("--chain-client=cometbft")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "chainharness: * client cometbft NOT FOUND: *",
            "*python -m pytest_chainharness.tools install cometbft*",
        ]
    )
