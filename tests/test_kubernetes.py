"""The kubernetes backend on the single-node cluster of ``scripts/k8s.sh``: the integration
suite and the shipped fault scenarios in pods, xdist, load, the CLI, leaks, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_chainharness import build_testnet
from pytest_chainharness._kube import LABEL_MANAGED, LABEL_RUN, Cluster, owner_annotation
from pytest_chainharness._proc import find_by_env
from pytest_chainharness._start import launch
from pytest_chainharness.chain import Chain
from pytest_chainharness.clients import GethAdapter
from pytest_chainharness.providers import default_image
from pytest_chainharness.providers.kubernetes import POD_MARKER, KubernetesProvider
from tests.test_lifecycle import admin_dirs_of

ROOT = Path(__file__).resolve().parent.parent
CHAINHARNESS = str(Path(sys.executable).parent / "chainharness")
EXAMPLES = (ROOT / "examples" / "test_example.py").read_text()
SHIPPED = ROOT / "scenarios" / "faults"

pytestmark = pytest.mark.usefixtures("geth_required")


@pytest.fixture
def k8s(kube_cluster: Path) -> list[str]:
    """The options that put an inner session on the test cluster."""
    return ["--chain-backend=kubernetes", f"--chain-kubeconfig={kube_cluster}"]


@pytest.fixture
def cluster(kube_cluster: Path) -> Iterator[Cluster]:
    found = Cluster.connect(str(kube_cluster))
    yield found
    found.close()


def _body(data: dict[str, Any]) -> Any:
    # Plain dicts, not the client's models: pytester drops the modules a test imported,
    # and a model class imported again is not the one the API's validator knows.
    return data


def run_objects(cluster: Cluster, runs_dir: Path) -> list[str]:
    """Namespaces, pods and pod processes of any run under ``runs_dir``."""
    runs = {p.name for p in runs_dir.glob("ch-*")} if runs_dir.exists() else set()
    found = [f"namespace {ns}" for run, (ns, _) in cluster.runs().items() if run in runs]
    for run in runs:
        pods = cluster.core.list_pod_for_all_namespaces(label_selector=f"{LABEL_RUN}={run}")
        found += [f"pod {p.metadata.name}" for p in pods.items if p.metadata]
        found += [f"process {pid}" for pid in find_by_env(POD_MARKER, f"{run}/")]
    return found


def assert_nothing_left(cluster: Cluster, runs_dir: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (
        run_objects(cluster, runs_dir) or any(runs_dir.glob("*/nodes")) or admin_dirs_of(runs_dir)
    ):
        time.sleep(0.2)
    assert run_objects(cluster, runs_dir) == []
    assert list(runs_dir.glob("*/nodes")) == []
    assert admin_dirs_of(runs_dir) == []


def test_core_suite_passes_on_kubernetes(
    inner: pytest.Pytester, runs_dir: Path, k8s: list[str], cluster: Cluster
) -> None:
    """The integration suite (tests/test_chain.py and the bus tests) on geth in pods:
    kill, pause, restart, partitions, latency and loss act on the pods."""
    inner.makeconftest((ROOT / "conftest.py").read_text())
    inner.makepyfile(
        test_chain=(ROOT / "tests" / "test_chain.py").read_text(),
        test_bus=(ROOT / "tests" / "test_bus.py").read_text(),
    )
    result = inner.runpytest_subprocess(
        *k8s,
        "--chain-nodes=4",
        "-rs",
        # Whole runs of their own (they need this suite's pytester fixtures): not here.
        "-k",
        "not TestWholeRuns and not test_the_bus_has_what_wait_for_tx_returned",
    )
    result.stdout.fnmatch_lines(
        ["*backend kubernetes (requested with --chain-backend=kubernetes*nodes at their pod IPs*"]
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 40, result.stdout.str()[-3000:]
    assert set(outcomes) <= {"passed", "deselected"}, result.stdout.str()[-3000:]
    assert result.ret == 0
    assert_nothing_left(cluster, runs_dir)
    (run,) = runs_dir.glob("ch-*")
    assert {f"node{i}.log" for i in range(4)} <= {p.name for p in (run / "logs").iterdir()}
    assert (run / "logs" / "events.jsonl").stat().st_size > 0


def test_every_shipped_geth_scenario_on_kubernetes(
    inner: pytest.Pytester, runs_dir: Path, k8s: list[str], cluster: Cluster
) -> None:
    """Partitions, crash and restart, latency, the rolling upgrade and its rollback (an
    image patch of the pod), random faults: each heals and leaves one chain."""
    from pytest_chainharness.scenario import load_scenario

    names = sorted(p.stem for p in SHIPPED.glob("*.yaml") if load_scenario(p).client == "geth")
    assert len(names) >= 7
    folder = inner.path / "scenarios"
    folder.mkdir()
    for name in names:
        (folder / f"{name}.yaml").write_text((SHIPPED / f"{name}.yaml").read_text())
    result = inner.runpytest_subprocess("scenarios", *k8s, "-p", "no:cacheprovider", "-rA")
    assert result.ret == 0, result.stdout.str()[-6000:]
    result.assert_outcomes(passed=len(names))
    result.stdout.fnmatch_lines(["*no lasting fork: heights*identical on 4 nodes*"])
    assert_nothing_left(cluster, runs_dir)


def test_upgrade_keeps_the_pod_its_address_and_its_chain(
    inner: pytest.Pytester, runs_dir: Path, k8s: list[str], cluster: Cluster
) -> None:
    inner.makepyfile(
        """
        import pytest

        @pytest.mark.disruptive
        def test_upgrade(chain):
            node = chain.nodes[1]
            url, height = node.rpc_url, node.head().number
            assert "1.13.15" in node.client_version
            node.upgrade("1.13.14")
            assert "1.13.14" in node.client_version
            assert node.rpc_url == url
            chain.wait_converged()
            assert node.head().number > height
            node.upgrade("1.13.15")
            assert "1.13.15" in node.client_version
            chain.wait_converged()
            # Back and forth again within minutes: the kubelet holds back these restarts
            # ("CrashLoopBackOff", its back-off per image); the upgrade waits it out.
            node.upgrade("1.13.14")
            node.upgrade("1.13.15")
            assert "1.13.15" in node.client_version
            chain.wait_converged()
            with pytest.raises(Exception, match="is not on any node of the cluster"):
                node.upgrade("0.0.1")
        """
    )
    result = inner.runpytest_subprocess(*k8s, "--chain-nodes=3")
    result.assert_outcomes(passed=1)
    assert_nothing_left(cluster, runs_dir)


def test_xdist_workers_and_load_processes_share_one_network_in_the_cluster(
    inner: pytest.Pytester, runs_dir: Path, k8s: list[str], cluster: Cluster
) -> None:
    inner.makepyfile(
        test_example=EXAMPLES,
        test_load="""
        def test_load(load_test):
            result = load_test(users=4, run_time="5s", processes=2)
            assert result.requests > 0, result
            assert result.failures == 0, result
        """,
    )
    result = inner.runpytest_subprocess("-n", "2", *k8s)
    result.assert_outcomes(passed=4)
    assert len(list(runs_dir.glob("ch-*"))) == 1
    assert_nothing_left(cluster, runs_dir)


class TestLeaks:
    @pytest.mark.parametrize(
        ("sig", "code"),
        [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGINT, pytest.ExitCode.INTERRUPTED)],
        ids=["sigkill", "sigint"],
    )
    def test_interrupted_run_leaves_nothing(
        self,
        interrupt_when_up: Callable[..., tuple[int, str]],
        runs_dir: Path,
        k8s: list[str],
        cluster: Cluster,
        sig: int,
        code: int,
    ) -> None:
        seen, output = interrupt_when_up(
            ["--chain-nodes=2", *k8s], sig, lambda: run_objects(cluster, runs_dir)
        )
        assert seen == code, output[-2000:]
        assert_nothing_left(cluster, runs_dir)

    def test_failing_fixture_leaves_nothing(
        self, inner: pytest.Pytester, runs_dir: Path, k8s: list[str], cluster: Cluster
    ) -> None:
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
        result = inner.runpytest_subprocess(*k8s, "--chain-nodes=2")
        result.assert_outcomes(errors=1)
        assert_nothing_left(cluster, runs_dir)

    def test_stale_run_of_a_dead_owner_is_swept_at_start(
        self,
        inner: pytest.Pytester,
        runs_dir: Path,
        k8s: list[str],
        cluster: Cluster,
        kube_cluster: Path,
    ) -> None:
        # A run whose owner died without teardown or watchdog (the OOM killer took both):
        # its namespace carries the dead owner's pid.
        dead = subprocess.Popen(["true"])
        dead.wait()
        testnet = build_testnet(nodes=1, client="geth", period=1, seed=3, accounts=4)
        run_dir = runs_dir / "ch-stale001"
        run_dir.mkdir(parents=True)
        (run_dir / "owner").write_text(str(dead.pid))
        adapter = GethAdapter(root=ROOT)
        provider = KubernetesProvider(
            testnet,
            adapter,
            run_dir=run_dir,
            run_id="ch-stale001",
            image=default_image("geth"),
            kubeconfig=str(kube_cluster),
            namespace="ch-stale001",
            owner=owner_annotation(dead.pid),
        )
        try:
            launch(Chain(testnet, provider, adapter), timeout=60)
        finally:
            provider.close()
        assert "namespace ch-stale001" in run_objects(cluster, runs_dir)
        inner.makepyfile("def test_up(chain):\n    pass\n")
        inner.runpytest_subprocess(*k8s, "--chain-nodes=1").assert_outcomes(passed=1)
        assert_nothing_left(cluster, runs_dir)


class TestBadInput:
    """Each is a clear error before any node starts, and leaves nothing."""

    def _refused(self, inner: pytest.Pytester, *args: str) -> pytest.RunResult:
        inner.makepyfile("def test_up(chain):\n    pass\n")
        result = inner.runpytest_subprocess("--chain-backend=kubernetes", *args)
        result.assert_outcomes(errors=1)
        return result

    def _kubeconfig(self, kube_cluster: Path, path: Path, **change: object) -> Path:
        data = yaml.safe_load(kube_cluster.read_text())
        data["clusters"][0]["cluster"].update(change.get("cluster", {}))
        if "user" in change:
            data["users"][0]["user"] = change["user"]
        path.write_text(yaml.safe_dump(data))
        return path

    def test_no_cluster_answers(
        self, inner: pytest.Pytester, kube_cluster: Path, runs_dir: Path, cluster: Cluster
    ) -> None:
        config = self._kubeconfig(
            kube_cluster, inner.path / "k.yaml", cluster={"server": "https://127.0.0.1:9"}
        )
        result = self._refused(inner, f"--chain-kubeconfig={config}")
        result.stdout.fnmatch_lines(
            ["*no Kubernetes cluster answers at https://127.0.0.1:9*scripts/k8s.sh start*"]
        )
        assert_nothing_left(cluster, runs_dir)

    def test_a_kubeconfig_that_does_not_parse(self, inner: pytest.Pytester) -> None:
        config = inner.path / "k.yaml"
        config.write_text("clusters: [\n")
        result = self._refused(inner, f"--chain-kubeconfig={config}")
        result.stdout.fnmatch_lines([f"*the kubeconfig {config} cannot be used*"])

    def test_no_kubeconfig_at_all(
        self, inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KUBECONFIG", str(inner.path / "none.yaml"))
        result = self._refused(inner)
        result.stdout.fnmatch_lines(["*no kubeconfig at *none.yaml*--chain-kubeconfig*"])

    def test_missing_rbac_rights_name_the_verb_and_resource(
        self, inner: pytest.Pytester, kube_cluster: Path, cluster: Cluster, runs_dir: Path
    ) -> None:
        namespace = f"chainharness-rbac-{os.getpid()}"
        core = cluster.core
        core.create_namespace(_body({"metadata": {"name": namespace}}))
        try:
            core.create_namespaced_service_account(
                namespace,
                _body({"metadata": {"name": "nobody"}}),
            )
            token = core.create_namespaced_service_account_token(
                "nobody",
                namespace,
                _body({"spec": {"audiences": [], "expirationSeconds": 600}}),
            )
            assert token.status is not None
            config = self._kubeconfig(
                kube_cluster, inner.path / "k.yaml", user={"token": token.status.token}
            )
            result = self._refused(inner, f"--chain-kubeconfig={config}")
            result.stdout.fnmatch_lines(["*the kubeconfig's user may not create namespaces (RBAC*"])
        finally:
            core.delete_namespace(namespace)
        assert_nothing_left(cluster, runs_dir)

    def test_an_image_the_cluster_does_not_have(
        self, inner: pytest.Pytester, k8s: list[str], cluster: Cluster, runs_dir: Path
    ) -> None:
        result = self._refused(inner, *k8s[1:], "--chain-image=chainharness/nosuch:v0")
        result.stdout.fnmatch_lines(
            ["*--chain-image chainharness/nosuch:v0 is not on any node of the cluster*k8s.sh*"]
        )
        assert_nothing_left(cluster, runs_dir)

    def test_a_namespace_that_exists_and_is_not_ours(
        self, inner: pytest.Pytester, k8s: list[str], cluster: Cluster, runs_dir: Path
    ) -> None:
        namespace = f"someone-else-{os.getpid()}"
        cluster.core.create_namespace(_body({"metadata": {"name": namespace}}))
        try:
            result = self._refused(inner, *k8s[1:], f"--chain-namespace={namespace}")
            result.stdout.fnmatch_lines(
                [f"*--chain-namespace={namespace}: the namespace exists and is not this run's*"]
            )
            assert cluster.namespace(namespace) is not None  # untouched
        finally:
            cluster.core.delete_namespace(namespace)
        assert_nothing_left(cluster, runs_dir)

    def test_a_namespace_name_kubernetes_refuses_is_a_usage_error(
        self, inner: pytest.Pytester
    ) -> None:
        inner.makepyfile("def test_up(chain):\n    pass\n")
        result = inner.runpytest_subprocess(
            "--chain-backend=kubernetes", "--chain-namespace=Bad_NS"
        )
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*--chain-namespace='Bad_NS': not a namespace name*"])


def test_cli_up_status_logs_down(
    inner: pytest.Pytester, runs_dir: Path, kube_cluster: Path, cluster: Cluster
) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CHAINHARNESS, *args], cwd=inner.path, capture_output=True, text=True, timeout=180
        )

    up = cli(
        "up",
        "--chain-nodes=2",
        "--chain-backend=kubernetes",
        f"--chain-kubeconfig={kube_cluster}",
        "--chain-namespace=chainharness-cli",
    )
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        assert "2 node(s) up on kubernetes" in up.stdout
        state = inner.path / ".chainharness" / "state.json"
        record = json.loads(state.read_text())
        assert record["provider"]["namespace"] == "chainharness-cli"
        namespace = cluster.namespace("chainharness-cli")
        assert namespace is not None
        assert namespace.metadata is not None
        assert (namespace.metadata.labels or {}).get(LABEL_MANAGED) == "chainharness"
        # A kept network: no owner whose death would let a sweep take it.
        assert (namespace.metadata.annotations or {})["chainharness.dev/owner"].endswith(":kept")

        inner.makepyfile(test_example=EXAMPLES)
        result = inner.runpytest_subprocess(f"--chain-attach={state}", "-rs")
        result.assert_outcomes(passed=2, skipped=1)
        assert cluster.namespace("chainharness-cli") is not None  # pytest left it running

        status = cli("status")
        assert status.returncode == 0
        assert "node1  running" in status.stdout
        logs = cli("logs", "node0", "--tail", "5")
        assert logs.returncode == 0
        assert len(logs.stdout.strip().splitlines()) == 5
        down = cli("down")
        assert down.returncode == 0, down.stdout + down.stderr
    finally:
        cli("down")
    assert cluster.namespace("chainharness-cli") is None
    assert_nothing_left(cluster, runs_dir)
