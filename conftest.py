"""Project-wide test configuration for pytest-chainharness's own suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_chainharness._errors import ToolNotFound
from pytest_chainharness.tools import find_anvil, find_cometbft, find_geth, find_solc


def find_geth_pos(root: Path | None = None) -> Path:
    """geth-pos's binaries, as the adapter looks them up (ToolNotFound names the install),
    and the previous geth the upgrade tests go to (``tools install geth-pos`` builds it)."""
    from pytest_chainharness.clients.geth_pos import GethPosAdapter
    from pytest_chainharness.tools import POS_GETH_PREVIOUS

    adapter = GethPosAdapter(root=root)
    adapter.find_binary(POS_GETH_PREVIOUS)
    return adapter.find_binary()


ROOT = Path(__file__).resolve().parent


def _missing(find: object) -> str | None:
    try:
        find(root=ROOT)  # type: ignore[operator]
    except ToolNotFound as exc:
        return str(exc)
    return None


@pytest.fixture(scope="session")
def geth_required() -> None:
    """Skip, saying how to install it, when no geth binary exists on this machine."""
    missing = _missing(find_geth)
    if missing:
        pytest.skip(f"geth is not installed on this machine: {missing}")


@pytest.fixture(scope="session")
def anvil_required() -> None:
    missing = _missing(find_anvil)
    if missing:
        pytest.skip(f"anvil is not installed on this machine: {missing}")


@pytest.fixture(scope="session")
def cometbft_required() -> None:
    missing = _missing(find_cometbft)
    if missing:
        pytest.skip(f"cometbft is not installed on this machine: {missing}")


@pytest.fixture(scope="session")
def geth_pos_required() -> None:
    missing = _missing(find_geth_pos)
    if missing:
        pytest.skip(f"geth-pos is not installed on this machine: {missing}")


@pytest.fixture(scope="session")
def solc_required() -> None:
    missing = _missing(find_solc)
    if missing:
        pytest.skip(f"solc is not installed on this machine: {missing}")


@pytest.fixture(scope="session")
def client_required(request: pytest.FixtureRequest) -> None:
    """Skip, saying how to install it, when the run's client (``--chain-client``; the
    integration suite runs on geth, geth-pos and CometBFT) is not installed."""
    client = str(request.config.getoption("chain_client") or "geth")
    find = {
        "geth": find_geth,
        "geth-pos": find_geth_pos,
        "anvil": find_anvil,
        "cometbft": find_cometbft,
    }.get(client)
    missing = _missing(find) if find is not None else None
    if missing:
        pytest.skip(f"{client} is not installed on this machine: {missing}")


@pytest.fixture(scope="session")
def docker_required() -> None:
    """Skip, saying what is missing, when no Docker engine answers or the images are absent."""
    from pytest_chainharness._docker import engine_status, image_exists
    from pytest_chainharness.providers import default_image

    up, why = engine_status()
    if not up:
        pytest.skip(f"{why}: scripts/docker.sh installs and starts one")
    image = default_image("geth")
    if not image_exists(image):
        pytest.skip(f"image {image} is missing: chainharness images build")


@pytest.fixture(scope="session")
def geth_pos_image_required(docker_required: None) -> None:
    """Skip when a geth-pos image is absent (they are built when geth-pos is installed):
    the run's and the previous geth's, which the upgrade tests go to."""
    from pytest_chainharness._docker import image_exists
    from pytest_chainharness.images import GETH_POS_IMAGE, geth_pos_image
    from pytest_chainharness.tools import POS_GETH_PREVIOUS

    for image in (GETH_POS_IMAGE, geth_pos_image(POS_GETH_PREVIOUS)):
        if not image_exists(image):
            pytest.skip(f"image {image} is missing: chainharness images build --only geth-pos")


@pytest.fixture(scope="session")
def mosquitto_required() -> None:
    """Skip when no mosquitto binary exists: the process backend's bus broker needs it."""
    import shutil

    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto is not installed: apt-get install mosquitto (scripts/setup.sh)")


def _k8s_missing() -> str | None:
    """Why this machine cannot run the single-node cluster (None: it can)."""
    import os
    import shutil

    from pytest_chainharness.tools.k8s import KUBE_BINARIES, find_kube

    if os.geteuid() != 0:
        return "the cluster's kubelet and containerd need root"
    for name in KUBE_BINARIES:
        try:
            find_kube(name, ROOT)
        except ToolNotFound as exc:
            return f"kubernetes is not installed here (scripts/setup.sh builds it): {exc}"
    for tool in ("etcd", "containerd", "runc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed here: scripts/setup.sh installs it (as root)"
    return None


@pytest.fixture(scope="session")
def kube_cluster(docker_required: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The kubeconfig of a single-node cluster on this machine (``scripts/k8s.sh``'s).

    A cluster already started with ``scripts/k8s.sh start`` is used as it is. Otherwise
    the first xdist worker that needs one starts it (where ``k8s.sh`` keeps it) and the
    last one done with it stops it; that stop must put the host back as it was
    (no process, bridge, mount or cgroup left, the kubelet's sysctls restored), or the
    session fails at its end with what was left.
    """
    import json
    import os

    from filelock import FileLock

    from pytest_chainharness.tools import tools_dir
    from pytest_chainharness.tools.k8s import KubeCluster

    missing = _k8s_missing()
    if missing:
        pytest.skip(missing)
    # Where scripts/k8s.sh keeps it: `k8s.sh stop` (.ci/run's exit trap) removes it
    # whatever became of this session.
    cluster = KubeCluster(tools=tools_dir(ROOT))
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    users = shared / "k8s-users.json"
    with FileLock(str(shared / "k8s.lock")):
        count = json.loads(users.read_text())["users"] if users.exists() else 0
        borrowed = count == 0 and cluster.answers()
        if borrowed:
            pass  # one `k8s.sh start` left running: used, not ours to stop
        elif count == 0:
            before = _kubelet_sysctls()
            cluster.start(_k8s_images())
            users.write_text(json.dumps({"users": 1, "sysctls": before}))
        else:
            users.write_text(json.dumps({**json.loads(users.read_text()), "users": count + 1}))
    if borrowed:
        yield cluster.kubeconfig
        return
    try:
        yield cluster.kubeconfig
    finally:
        with FileLock(str(shared / "k8s.lock")):
            data = json.loads(users.read_text())
            data["users"] -= 1
            users.write_text(json.dumps(data))
            if data["users"] == 0:
                cluster.stop(quiet=True)
                _assert_host_restored(cluster, data["sysctls"])


def _k8s_images() -> list[str]:
    from pytest_chainharness.images import BASE_IMAGE, MOSQUITTO_IMAGE, geth_image
    from pytest_chainharness.providers import default_image

    return [default_image("geth"), geth_image("1.13.14"), MOSQUITTO_IMAGE, BASE_IMAGE]


def _kubelet_sysctls() -> dict[str, str]:
    from pytest_chainharness.tools.k8s import KUBELET_SYSCTLS

    return {n: Path("/proc/sys", *n.split(".")).read_text().strip() for n in KUBELET_SYSCTLS}


def _assert_host_restored(cluster: object, sysctls: dict[str, str]) -> None:
    import time

    from pytest_chainharness._proc import find_marked
    from pytest_chainharness.tools.k8s import BRIDGE, CLUSTER_MARKER

    root: Path = cluster.root  # type: ignore[attr-defined]
    deadline = time.monotonic() + 5
    while find_marked(CLUSTER_MARKER) and time.monotonic() < deadline:
        time.sleep(0.1)
    with open("/proc/self/mountinfo") as info:
        mounts = [line.split()[4] for line in info if line.split()[4].startswith(str(root))]
    left = {
        "processes": find_marked(CLUSTER_MARKER),
        "sysctls changed": _kubelet_sysctls() != sysctls,
        "bridge": Path("/sys/class/net", BRIDGE).exists(),
        "mounts": mounts,
        "kubepods cgroup": Path("/sys/fs/cgroup/pids/kubepods").exists(),
        "folder": root.exists(),
    }
    assert not any(left.values()), f"the cluster's stop left: {left}"
