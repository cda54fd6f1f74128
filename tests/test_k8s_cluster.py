"""The single-node Kubernetes cluster of ``scripts/k8s.sh`` (``tools/k8s.py``): it starts
from the tools folder and Debian's packages, runs a pod from a harness image imported from
the docker engine, which the host reaches at its pod IP and whose log the API serves, and
``stop`` puts the host back
as it found it (processes, mounts, the bridge, cgroups, the kubelet's sysctls, files)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_chainharness._errors import ToolNotFound
from pytest_chainharness._proc import find_marked
from pytest_chainharness.providers import default_image
from pytest_chainharness.tools import tools_dir
from pytest_chainharness.tools.k8s import (
    APISERVER_PORT,
    BRIDGE,
    CLUSTER_MARKER,
    KUBE_BINARIES,
    KUBELET_SYSCTLS,
    KubeCluster,
    find_kube,
)

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("docker_required")


def _sysctls() -> dict[str, str]:
    return {n: Path("/proc/sys", *n.split(".")).read_text().strip() for n in KUBELET_SYSCTLS}


def _mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as info:
        return [line.split()[4] for line in info if line.split()[4].startswith(str(root))]


@pytest.fixture
def cluster_root() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("the cluster's kubelet and containerd need root")
    for name in KUBE_BINARIES:
        try:
            find_kube(name, ROOT)
        except ToolNotFound as exc:
            pytest.skip(f"kubernetes is not installed here (scripts/setup.sh builds it): {exc}")
    for tool in ("etcd", "containerd", "runc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed here: scripts/setup.sh installs it (as root)")
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", APISERVER_PORT)) == 0:
            pytest.fail(
                f"port {APISERVER_PORT} answers: another cluster runs (scripts/k8s.sh stop)"
            )
    # Short: containerd's socket path under it must stay below 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="chk8s-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_a_pod_from_a_harness_image_runs_and_stop_puts_the_host_back(cluster_root: Path) -> None:
    from kubernetes import client, config

    before = _sysctls()
    cluster = KubeCluster(root=cluster_root, tools=tools_dir(ROOT))
    image = default_image("geth")
    try:
        cluster.start([image])
        api_client = config.new_client_from_config(str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
        api = client.CoreV1Api(api_client)
        api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="probe")))
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name="geth"),
            spec=client.V1PodSpec(
                restart_policy="Never",
                automount_service_account_token=False,
                containers=[
                    client.V1Container(
                        name="geth",
                        image=image,
                        image_pull_policy="Never",
                        command=["geth"],
                        args=["--dev", "--http", "--http.addr", "0.0.0.0", "--http.port", "8545"],
                    )
                ],
            ),
        )
        # The namespace's default service account comes a moment after the namespace.
        deadline = time.monotonic() + 30
        while True:
            try:
                api.create_namespaced_pod("probe", pod)
                break
            except client.ApiException as exc:
                if exc.status != 403 or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        chain_id = None
        deadline = time.monotonic() + 60
        while chain_id is None and time.monotonic() < deadline:
            ip = (api.read_namespaced_pod("geth", "probe").status or client.V1PodStatus()).pod_ip
            if ip:
                request = urllib.request.Request(
                    f"http://{ip}:8545",
                    data=b'{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}',
                    headers={"Content-Type": "application/json"},
                )
                try:
                    with urllib.request.urlopen(request, timeout=2) as response:
                        chain_id = int(json.loads(response.read())["result"], 16)
                except OSError:
                    time.sleep(0.2)
            else:
                time.sleep(0.2)
        assert chain_id == 1337, api.read_namespaced_pod("geth", "probe").status
        assert "HTTP server started" in api.read_namespaced_pod_log("geth", "probe")
        assert find_marked(CLUSTER_MARKER)
        api_client.close()
        # What the kubelet always sets; stop must put back what was there before.
        assert _sysctls() == {
            "vm.overcommit_memory": "1",
            "kernel.panic": "10",
            "kernel.panic_on_oops": "1",
        }
    finally:
        cluster.stop()
    deadline = time.monotonic() + 5
    while find_marked(CLUSTER_MARKER) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert find_marked(CLUSTER_MARKER) == []
    assert _sysctls() == before
    assert not Path("/sys/class/net", BRIDGE).exists()
    assert _mounts_under(cluster_root) == []
    assert not Path("/sys/fs/cgroup/pids/kubepods").exists()
    assert not cluster_root.exists()
