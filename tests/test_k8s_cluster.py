"""The single-node Kubernetes cluster of ``scripts/k8s.sh`` (``tools/k8s.py``): it starts
from the tools folder and Debian's packages, runs a pod from a harness image imported from
the docker engine, which the host reaches at its pod IP and whose log the API serves.
That ``stop`` puts the host back as it found it (processes, mounts, the bridge, cgroups,
the kubelet's sysctls, files) is checked where the suite's cluster stops: the
``kube_cluster`` fixture fails the session otherwise."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from pytest_chainharness._proc import find_marked
from pytest_chainharness.providers import default_image
from pytest_chainharness.tools.k8s import CLUSTER_MARKER, KUBELET_SYSCTLS


def _sysctls() -> dict[str, str]:
    return {n: Path("/proc/sys", *n.split(".")).read_text().strip() for n in KUBELET_SYSCTLS}


def test_a_pod_from_a_harness_image_runs_and_answers_at_its_pod_ip(kube_cluster: Path) -> None:
    from pytest_chainharness._kube import Cluster

    cluster = Cluster.connect(str(kube_cluster))
    api = cluster.core
    namespace = "chainharness-probe"
    image = default_image("geth")
    # Plain dicts: pytester elsewhere in the session drops imported model modules.
    body: Any = {"metadata": {"name": namespace}}
    api.create_namespace(body)
    try:
        pod: Any = {
            "metadata": {"name": "geth"},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "geth",
                        "image": image,
                        "imagePullPolicy": "Never",
                        "command": ["geth"],
                        "args": [
                            "--dev",
                            "--http",
                            "--http.addr",
                            "0.0.0.0",
                            "--http.port",
                            "8545",
                        ],
                    }
                ],
            },
        }
        # The namespace's default service account comes a moment after the namespace.
        deadline = time.monotonic() + 30
        while True:
            try:
                api.create_namespaced_pod(namespace, pod)
                break
            except Exception as exc:
                if getattr(exc, "status", None) != 403 or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        chain_id = None
        deadline = time.monotonic() + 60
        while chain_id is None and time.monotonic() < deadline:
            status = api.read_namespaced_pod("geth", namespace).status
            ip = status.pod_ip if status else None
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
        assert chain_id == 1337, api.read_namespaced_pod("geth", namespace).status
        assert "HTTP server started" in api.read_namespaced_pod_log("geth", namespace)
        assert find_marked(CLUSTER_MARKER)
        # What the kubelet always sets; the cluster's stop puts back what was there.
        assert _sysctls() == {
            "vm.overcommit_memory": "1",
            "kernel.panic": "10",
            "kernel.panic_on_oops": "1",
        }
    finally:
        api.delete_namespace(namespace, grace_period_seconds=0)
        cluster.close()
