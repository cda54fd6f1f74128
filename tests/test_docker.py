"""The docker backend: the integration suite in containers, leaks, bad input, CLI, services."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_chainharness import build_testnet
from pytest_chainharness._docker import LABEL_OWNER, LABEL_RUN, docker_client, owner_label
from pytest_chainharness._start import launch
from pytest_chainharness.chain import Chain
from pytest_chainharness.clients import GethAdapter
from pytest_chainharness.providers import default_image
from pytest_chainharness.providers.docker import DockerProvider, image_for_version
from tests.test_lifecycle import admin_dirs_of

ROOT = Path(__file__).resolve().parent.parent
CHAINHARNESS = str(Path(sys.executable).parent / "chainharness")
EXAMPLES = (ROOT / "examples" / "test_example.py").read_text()

pytestmark = pytest.mark.usefixtures("docker_required", "geth_required")


def run_objects(runs_dir: Path) -> list[str]:
    """Containers and networks on the engine that belong to any run under ``runs_dir``."""
    runs = {p.name for p in runs_dir.glob("ch-*")} if runs_dir.exists() else set()
    client = docker_client()
    try:
        # sparse: the listing must not inspect containers a watchdog is removing meanwhile.
        found = [
            f"container {c.attrs['Names'][0]}"
            for c in client.containers.list(all=True, filters={"label": LABEL_RUN}, sparse=True)
            if (c.attrs.get("Labels") or {}).get(LABEL_RUN) in runs
        ]
        found += [
            f"network {n.name}"
            for n in client.networks.list(filters={"label": LABEL_RUN})
            if (n.attrs.get("Labels") or {}).get(LABEL_RUN) in runs
        ]
    finally:
        client.close()
    return found


def assert_nothing_left(runs_dir: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        run_objects(runs_dir) != [] or any(runs_dir.glob("*/nodes")) or admin_dirs_of(runs_dir)
    ):
        time.sleep(0.1)
    assert run_objects(runs_dir) == []
    assert list(runs_dir.glob("*/nodes")) == []
    assert admin_dirs_of(runs_dir) == []


def test_image_for_version() -> None:
    assert image_for_version("chainharness/geth:v1.13.15", "1.13.14") == (
        "chainharness/geth:v1.13.14"
    )
    assert image_for_version("ethereum/client-go:v1.13.15", "v1.13.14") == (
        "ethereum/client-go:v1.13.14"
    )
    assert image_for_version("localhost:5000/geth", "1.2.3") == "localhost:5000/geth:v1.2.3"
    # What follows the version stays: geth-pos's images name prysm's release too.
    assert image_for_version("chainharness/geth-pos:v1.17.10-prysm-v7.0.0", "1.17.9") == (
        "chainharness/geth-pos:v1.17.9-prysm-v7.0.0"
    )
    assert image_for_version("my/node:latest", "2.0") == "my/node:v2.0"
    assert image_for_version("chainharness/geth:v1.13.15", "my/node:dev") == "my/node:dev"


def test_core_suite_passes_on_docker(inner: pytest.Pytester, runs_dir: Path) -> None:
    """The integration suite (tests/test_chain.py and the bus tests) on geth in
    containers; tests/test_matrix.py runs it on CometBFT."""
    inner.makeconftest((ROOT / "conftest.py").read_text())
    inner.makepyfile(
        test_chain=(ROOT / "tests" / "test_chain.py").read_text(),
        test_bus=(ROOT / "tests" / "test_bus.py").read_text(),
    )
    result = inner.runpytest_subprocess(
        "--chain-backend=docker",
        "--chain-nodes=4",
        "-rs",
        # Whole runs of their own (they need this suite's pytester fixtures): not here.
        "-k",
        "not TestWholeRuns and not test_the_bus_has_what_wait_for_tx_returned",
    )
    result.stdout.fnmatch_lines(["*backend docker (requested with --chain-backend=docker*"])
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 40, result.stdout.str()[-3000:]
    assert set(outcomes) <= {"passed", "deselected"}, result.stdout.str()[-3000:]
    assert_nothing_left(runs_dir)
    (run,) = runs_dir.glob("ch-*")
    assert {f"node{i}.log" for i in range(4)} <= {p.name for p in (run / "logs").iterdir()}
    assert (run / "logs" / "events.jsonl").stat().st_size > 0


def test_xdist_workers_share_one_containerised_network(
    inner: pytest.Pytester, runs_dir: Path
) -> None:
    inner.makepyfile(test_example=EXAMPLES)
    result = inner.runpytest_subprocess("-n", "2", "--chain-backend=docker")
    result.assert_outcomes(passed=3)
    assert len(list(runs_dir.glob("ch-*"))) == 1
    assert_nothing_left(runs_dir)


def test_upgrade_and_rollback_swap_the_image(inner: pytest.Pytester, runs_dir: Path) -> None:
    inner.makepyfile(
        """
        import pytest

        @pytest.mark.disruptive
        def test_upgrade(chain):
            node = chain.nodes[1]
            assert "1.13.15" in node.client_version
            node.upgrade("1.13.14")
            assert "1.13.14" in node.client_version
            chain.wait_converged()
            node.upgrade("1.13.15")
            assert "1.13.15" in node.client_version
            chain.wait_converged()
        """
    )
    inner.runpytest_subprocess("--chain-backend=docker", "--chain-nodes=3").assert_outcomes(
        passed=1
    )
    assert_nothing_left(runs_dir)


def test_restart_on_a_port_another_program_took_names_the_port(
    inner: pytest.Pytester, runs_dir: Path
) -> None:
    inner.makepyfile(
        """
        import socket
        import pytest
        from pytest_chainharness import ChainHarnessError

        @pytest.mark.disruptive
        def test_port_taken(chain):
            node = chain.nodes[1]
            node.kill()
            port = int(node.rpc_url.rsplit(":", 1)[1])
            holder = socket.create_server(("127.0.0.1", port))
            try:
                with pytest.raises(ChainHarnessError, match=f"another program bound .*rpc {port}"):
                    node.start()
            finally:
                holder.close()
            node.start()
            chain.wait_converged()
        """
    )
    inner.runpytest_subprocess("--chain-backend=docker", "--chain-nodes=2").assert_outcomes(
        passed=1
    )
    assert_nothing_left(runs_dir)


class TestLeaks:
    @pytest.mark.parametrize(
        ("sig", "code"),
        [
            (signal.SIGKILL, -signal.SIGKILL),
            (signal.SIGTERM, -signal.SIGTERM),
            (signal.SIGINT, pytest.ExitCode.INTERRUPTED),
        ],
        ids=["sigkill", "sigterm", "sigint"],
    )
    def test_interrupted_run_leaves_nothing(
        self,
        interrupt_when_up: Callable[..., tuple[int, str]],
        runs_dir: Path,
        sig: int,
        code: int,
    ) -> None:
        seen, output = interrupt_when_up(
            ["--chain-nodes=2", "--chain-backend=docker"], sig, lambda: run_objects(runs_dir)
        )
        assert seen == code, output[-2000:]
        assert_nothing_left(runs_dir)

    def test_failing_fixture_leaves_nothing(self, inner: pytest.Pytester, runs_dir: Path) -> None:
        inner.makeconftest(
            """
            import pytest

            @pytest.fixture(scope="session")
            def broken(chain):
                chain.wait_converged()
                raise RuntimeError("fixture broke after the chain was up")
            """
        )
        inner.makepyfile("def test_uses_broken(broken):\n    pass\n")
        result = inner.runpytest_subprocess("--chain-backend=docker", "--chain-nodes=2")
        result.assert_outcomes(errors=1)
        assert_nothing_left(runs_dir)

    def test_an_endpoint_left_on_the_run_network_does_not_stop_the_teardown(
        self, inner: pytest.Pytester, runs_dir: Path
    ) -> None:
        """A CI run's teardown once failed with "network ... has active endpoints" right
        after it had removed every container of the run (the engine had not released one
        endpoint yet), and the run's datadirs stayed. Here a container the run does not
        know holds an endpoint on the run's network until the end: the teardown forces
        it off, removes the network, and the run exits 0 with nothing left."""
        stranger = f"chainharness-test-stranger-{os.getpid()}"
        inner.makepyfile(
            f"""
            import docker

            def test_a_stranger_joins_the_run_network(chain):
                client = docker.from_env()
                client.containers.run(
                    {default_image("geth")!r},
                    entrypoint=["sleep", "300"],
                    name={stranger!r},
                    network=chain.provider.describe()["network"],
                    detach=True,
                )
                client.close()
            """
        )
        try:
            result = inner.runpytest_subprocess("--chain-backend=docker", "--chain-nodes=1")
            result.assert_outcomes(passed=1)
            assert result.ret == 0, "\n".join(result.errlines[-30:])
            assert_nothing_left(runs_dir)
            client = docker_client()
            try:
                # Only forced off the network: a container that is not the run's stays.
                assert client.containers.get(stranger).status == "running"
            finally:
                client.close()
        finally:
            subprocess.run(["docker", "rm", "-f", stranger], capture_output=True, check=False)

    def test_stale_run_of_a_dead_owner_is_swept_at_start(
        self, inner: pytest.Pytester, runs_dir: Path
    ) -> None:
        # A run whose owner died without teardown or watchdog (e.g. the machine's OOM
        # killer took both): its containers carry the dead owner's pid.
        dead = subprocess.Popen(["true"])
        dead.wait()
        testnet = build_testnet(nodes=1, client="geth", period=1, seed=3, accounts=4)
        run_dir = runs_dir / "ch-stale001"
        run_dir.mkdir(parents=True)
        (run_dir / "owner").write_text(str(dead.pid))
        adapter = GethAdapter(root=ROOT)
        provider = DockerProvider(
            testnet,
            adapter,
            run_dir=run_dir,
            run_id="ch-stale001",
            image=default_image("geth"),
            owner=owner_label(dead.pid),
        )
        launch(Chain(testnet, provider, adapter), timeout=60)
        assert len(run_objects(runs_dir)) == 2
        inner.makepyfile("def test_up(chain):\n    pass\n")
        inner.runpytest_subprocess("--chain-backend=docker", "--chain-nodes=1").assert_outcomes(
            passed=1
        )
        assert_nothing_left(runs_dir)


class TestBadInput:
    def test_docker_backend_without_an_engine_is_a_usage_error(
        self, inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("DOCKER_HOST", f"unix://{inner.path}/no-engine.sock")
        inner.makepyfile("def test_up(chain):\n    pass\n")
        result = inner.runpytest_subprocess("--chain-backend=docker")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(
            ["*--chain-backend=docker: no Docker engine answers*scripts/docker.sh*"]
        )

    def test_unknown_image_names_the_build_command(
        self, inner: pytest.Pytester, runs_dir: Path
    ) -> None:
        inner.makepyfile("def test_up(chain):\n    pass\n")
        result = inner.runpytest_subprocess(
            "--chain-backend=docker", "--chain-image=chainharness/nosuch:v0"
        )
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(
            [
                "*image chainharness/nosuch:v0 is not on this Docker engine*"
                "chainharness images build*"
            ]
        )
        assert_nothing_left(runs_dir)

    def test_service_failing_its_check_shows_its_log_and_removes_everything(
        self, inner: pytest.Pytester, runs_dir: Path
    ) -> None:
        inner.path.joinpath("services.yaml").write_text(
            "services:\n"
            "  broken:\n"
            "    image: chainharness/python:3.11\n"
            '    command: "echo starting-{node0.host}; echo giving-up; sleep 60"\n'
            "    ports: [8080]\n"
            "    ready:\n"
            "      http: {port: 8080, path: /}\n"
            "    timeout: 3\n"
        )
        inner.makepyfile("def test_up(chain):\n    pass\n")
        result = inner.runpytest_subprocess(
            "--chain-backend=docker", "--chain-nodes=2", "--chain-services=services.yaml"
        )
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(
            [
                "*service broken (chainharness/python:3.11) did not become ready (http check*",
                "*last 30 lines of its log:*",
                "starting-node0",
                "giving-up",
            ]
        )
        assert_nothing_left(runs_dir)

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ("services: [a]\n", "expected a top-level 'services:' mapping"),
            ("services:\n  x:\n    command: [a]\n", "'image' is required"),
            ("services:\n  x:\n    image: i\n    colour: red\n", "unknown key(s) ['colour']"),
            ("services:\n  x:\n    image: i\n    depends_on: [y]\n", "which is not declared"),
            ("services:\n  x:\n    image: i\n    ready: {tcp: 1}\n", "'ready: tcp'"),
            ("services:\n  redis: builtin\n", "the only built-in service is 'mqtt'"),
        ],
    )
    def test_bad_services_files(self, tmp_path: Path, body: str, message: str) -> None:
        from pytest_chainharness.services import ServicesError, load_services

        path = tmp_path / "services.yaml"
        path.write_text(body)
        with pytest.raises(ServicesError) as info:
            load_services(path)
        assert message in str(info.value)
        assert str(path) in str(info.value)

    def test_attach_to_a_missing_state_file(self, inner: pytest.Pytester) -> None:
        inner.makepyfile("def test_up(chain):\n    pass\n")
        result = inner.runpytest_subprocess("--chain-attach=nowhere.json")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*--chain-attach=nowhere.json: no such file*"])

    def test_attach_to_a_dead_network(self, inner: pytest.Pytester, runs_dir: Path) -> None:
        up = subprocess.run(
            [CHAINHARNESS, "up", "--chain-nodes=1", "--chain-backend=docker"],
            cwd=inner.path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert up.returncode == 0, up.stdout + up.stderr
        state = inner.path / ".chainharness" / "state.json"
        saved = state.read_text()
        down = subprocess.run([CHAINHARNESS, "down"], cwd=inner.path, capture_output=True)
        assert down.returncode == 0
        state.write_text(saved)  # a state file left behind by someone else's down
        inner.makepyfile("def test_up(chain):\n    pass\n")
        result = inner.runpytest_subprocess(f"--chain-attach={state}")
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*the network is not running: node0*chainharness up*"])


def test_cli_up_attach_status_logs_down(inner: pytest.Pytester, runs_dir: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CHAINHARNESS, *args], cwd=inner.path, capture_output=True, text=True, timeout=120
        )

    up = cli("up", "--chain-nodes=2", "--chain-backend=docker", "--chain-seed=5")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        _use_and_take_down(cli, up.stdout, inner, runs_dir)
    finally:
        cli("down")  # a failed assertion above must not leave the network running
    assert_nothing_left(runs_dir)


def _use_and_take_down(cli: Any, up_out: str, inner: pytest.Pytester, runs_dir: Path) -> None:
    assert "2 node(s) up on docker" in up_out
    assert "node1: http://127.0.0.1:" in up_out
    state = inner.path / ".chainharness" / "state.json"
    record = json.loads(state.read_text())
    assert record["backend"] == "docker"
    assert len(run_objects(runs_dir)) == 4  # two nodes, the bus broker and the network
    # A kept network: no owner whose death lets another run's stale sweep take it (CI:
    # the label named `up`'s own pid, and a run in the other xdist worker swept it).
    client = docker_client()
    try:
        owners = {
            (c.attrs.get("Labels") or {}).get(LABEL_OWNER, "")
            for c in client.containers.list(all=True, filters={"label": LABEL_RUN}, sparse=True)
            if (c.attrs.get("Labels") or {}).get(LABEL_RUN) == record["provider"]["run_id"]
        }
    finally:
        client.close()
    assert owners == {f"{socket.gethostname()}:kept"}

    again = cli("up", "--chain-backend=docker")
    assert again.returncode == 1
    assert "already describes a network" in again.stdout

    inner.makepyfile(test_example=EXAMPLES)
    # The crash test needs 4 nodes: the attached network has 2, and the marks know it.
    result = inner.runpytest_subprocess(f"--chain-attach={state}", "-rs")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["*attached to the network in*", "*needs at least 4 nodes*"])
    assert len(run_objects(runs_dir)) == 4  # pytest did not take it down

    # Sessions that attach one after another never get an account an earlier one used.
    fresh = inner.path / "fresh"
    fresh.mkdir()
    (fresh / "test_fresh.py").write_text(
        "def test_fresh(chain, funded_account):\n"
        "    assert chain.nodes[0].w3.eth.get_transaction_count(funded_account.address) == 0\n"
        "    chain.wait_for_tx(chain.transfer(funded_account, chain.accounts[0].address, 1))\n"
    )
    for _ in range(2):
        again_run = inner.runpytest_subprocess(str(fresh), f"--chain-attach={state}")
        again_run.assert_outcomes(passed=1)

    status = cli("status")
    assert status.returncode == 0
    assert "node1  running" in status.stdout
    logs = cli("logs", "node0", "--tail", "5")
    assert logs.returncode == 0
    assert len(logs.stdout.strip().splitlines()) == 5

    # Something else of the same engine that down must not touch.
    client = docker_client()
    bystander = client.networks.create(f"bystander-{os.getpid()}")
    try:
        first = cli("down")
        assert first.returncode == 0
        assert "removed" in first.stdout
        second = cli("down")
        assert second.returncode == 0
        assert "nothing to stop" in second.stdout
        client.networks.get(str(bystander.name))  # still there
    finally:
        bystander.remove()
        client.close()


def test_indexer_service_example(inner: pytest.Pytester, runs_dir: Path) -> None:
    example = ROOT / "scenarios" / "indexer"
    result = inner.runpytest_subprocess(
        str(example),
        "--chain-backend=docker",
        "--chain-nodes=2",
        f"--chain-services={example / 'services.yaml'}",
        f"--rootdir={inner.path}",
        "--chain-keep-logs",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*services from*services.yaml*"])
    assert_nothing_left(runs_dir)
    # Kept logs carry what the services said (a run that failed keeps the same).
    (kept,) = (inner.path / ".chainharness" / "failed").glob("ch-*")
    text = (kept / "logs" / "service-indexer.log").read_text()
    assert "indexer: following http://node0:8545, serving on :8080" in text
