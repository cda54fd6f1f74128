"""The kubernetes backend: every node is a pod in a namespace of the run's own.

- The official ``kubernetes`` client does every API call (namespace, pods, image
  patch for an upgrade, logs of the broker); no ``kubectl``.
- One pod per node for the whole run. Its container runs a small supervisor (pid 1 of
  the pod) that starts the node whenever the harness asks for a new start (a counter in
  the pod's control folder) and notes when it exits. Kill, stop and restart therefore
  keep the pod, its address and its network namespace: peers are written into configs
  before anything starts (geth resolves enode hosts only once), and a partition's packet
  filters in the pod's namespace survive the node's restarts.
- A datadir is a ``hostPath`` volume at the datadir's own path on the host, as docker's
  bind mounts are: the same files, commands and admin sockets on every backend. So the
  cluster's node must be this machine (``scripts/k8s.sh start`` makes such a cluster);
  a pod that runs elsewhere is an error at start, before any node starts.
- Tests reach a node at its pod IP (routed from this host to the pods' bridge), on the
  client's own ports; the header says so.
- Faults act from the host on the pod's processes, which this host sees: kill and stop
  signal the node (the supervisor stays), pause is SIGSTOP, partitions and loss are
  packet filters in the pod's network namespace (``_netfilter``), latency is toxiproxy
  on the pods' gateway address. An upgrade patches the pod's image: the kubelet
  restarts its container in the same pod, on the same volume and address.
- The namespace carries the run's labels; teardown, the watchdog and the next run's
  sweep delete it by them (``_kube``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import ChainHarnessError, NetworkStartError
from .._proc import RUN_MARKER, every_step, find_by_env, inner_pid, kill_pids, pid_state
from .._testnet import Testnet
from ..clients.base import ClientAdapter
from ..images import image_for_version
from ._helpers import HelperHost
from ._latency import ToxiproxyLatency
from ._links import ProxiedLinks
from ._netfilter import PacketFilters
from ._nodes import ImageNodes
from ._parts import NodeParts
from ._peering import AdminPeering
from ._script import node_script
from ._state import RunState
from .base import NodeState, admin_dir, make_admin_dir, remove_admin_dir
from .registry import Backend, NewRun

if TYPE_CHECKING:
    from .._broker import BrokerEndpoint
    from .._kube import Cluster
    from .._options import Settings
    from .base import Provider

__all__ = ["BACKEND", "KubernetesBackend", "KubernetesProvider"]

#: Environment variable of every process in a node's pod: ``<run id>/<node name>/pod``
#: for the supervisor and its own commands, ``.../node`` for the node's processes.
POD_MARKER = "CHAINHARNESS_POD"
#: How long the pods may take to run (scheduling, container creation).
POD_START_TIMEOUT = 90.0
#: How long a running pod's supervisor may take to show among this host's processes.
LOCAL_TIMEOUT = 10.0

#: The pod's pid 1. It starts the node when ``want`` holds a start number it has not
#: started yet (written in ``started`` first), and writes that number into ``exited``
#: when the node ends. A new container (after an image patch or a crash of the
#: supervisor) first marks what ran before as exited: nothing restarts on its own.
_SUPERVISOR = """\
trap 'exit 0' TERM
cd "$CTL"
[ -e started ] && cp started exited
while :; do
  want=$(cat want 2>/dev/null)
  if [ -n "$want" ] && [ "$want" != "$(cat started 2>/dev/null)" ]; then
    echo "$want" > started
    echo "=== chainharness: start $want in pod $HOSTNAME" >> "$LOG"
    CHAINHARNESS_POD="${CHAINHARNESS_POD%/pod}/node" sh ./run.sh >> "$LOG" 2>&1 < /dev/null
    echo "=== chainharness: exit $? of start $want" >> "$LOG"
    echo "$want" > exited
  fi
  sleep 0.1
done
"""

#: Container states in which a pod will not run its supervisor without help.
_STUCK = {
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerError",
    "CreateContainerConfigError",
    "RunContainerError",
    "CrashLoopBackOff",
}


def _route_to(ip: str) -> tuple[str, str]:
    """(this host's address towards ``ip``, the subnet of the interface it leaves by)."""
    done = subprocess.run(
        ["ip", "-j", "route", "get", ip], capture_output=True, text=True, timeout=10
    )
    if done.returncode != 0:
        raise NetworkStartError(
            f"pod address {ip} is not routable from this host: {done.stderr.strip()}"
        )
    route = json.loads(done.stdout)[0]
    source, dev = str(route.get("prefsrc", "")), str(route.get("dev", ""))
    subnet = f"{ip}/32"
    shown = subprocess.run(
        ["ip", "-j", "-4", "addr", "show", "dev", dev], capture_output=True, text=True, timeout=10
    )
    with contextlib.suppress(ValueError, KeyError, IndexError):
        for info in json.loads(shown.stdout)[0]["addr_info"]:
            if info.get("local") == source:
                subnet = str(ipaddress.ip_network(f"{source}/{info['prefixlen']}", strict=False))
    return source, subnet


def _await_pods_gone(run_id: str, timeout: float = 30.0) -> None:
    """Wait until no process of the run's pods is left on this host (the API forgets a
    pod deleted without grace before its kubelet has ended it); SIGKILL what lingers."""
    deadline = time.monotonic() + timeout
    while left := list(find_by_env(POD_MARKER, f"{run_id}/")):
        if time.monotonic() > deadline:
            kill_pids(left, sig=signal.SIGKILL)
            return
        time.sleep(0.05)


class KubernetesProvider(
    ImageNodes, PacketFilters, NodeParts, AdminPeering, ToxiproxyLatency, ProxiedLinks, HelperHost
):
    """Runs a ``Testnet`` as pods of one namespace."""

    name = "kubernetes"

    def __init__(
        self,
        testnet: Testnet,
        adapter: ClientAdapter,
        *,
        run_dir: Path,
        run_id: str,
        image: str,
        kubeconfig: str | None,
        namespace: str,
        owner: str,
        binary: Path | None = None,
    ) -> None:
        self.testnet = testnet
        self.adapter = adapter
        self.run_dir = run_dir
        self.run_id = run_id
        self.image = image
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.owner = owner
        #: The host binary of a client that runs the host's (``host_binary``), else None.
        self.binary = binary
        self.shared = RunState(run_dir / "kubernetes-state.json", testnet)
        self.subnet: str | None = None
        self.gateway: str | None = None
        self._cluster: Cluster | None = None

    # -- the cluster, naming, files --------------------------------------------------------

    @property
    def cluster(self) -> Cluster:
        if self._cluster is None:
            from .._kube import Cluster

            self._cluster = Cluster.connect(self.kubeconfig)
        return self._cluster

    def pod_name(self, index: int) -> str:
        return self.testnet.nodes[index].name

    def labels(self, role: str) -> dict[str, str]:
        from .._kube import LABEL_MANAGED, LABEL_ROLE, LABEL_RUN, MANAGED_BY

        return {LABEL_MANAGED: MANAGED_BY, LABEL_RUN: self.run_id, LABEL_ROLE: role}

    def control_dir(self, index: int) -> Path:
        """The supervisor's folder (start requests, its notes, the node's start script)."""
        return self.run_dir / "nodes" / ".pods" / self.testnet.nodes[index].name

    def _binary_in_node(self, index: int) -> Path | None:
        """Where node ``index`` runs its binary from, for a client that runs the host's: a
        copy in its control folder, which an upgrade replaces (a pod's mounts are fixed
        when it is made; a bind-mounted file would keep the old one)."""
        if self.binary is None:
            return None
        return self.control_dir(index) / "bin" / self.binary.name

    def _install_binary(self, index: int, source: Path) -> None:
        target = self._binary_in_node(index)
        assert target is not None
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_name(f".{target.name}.new")
        shutil.copy2(source, staged)
        os.replace(staged, target)  # never half a binary, never "text file busy"

    def node_image(self, index: int) -> str:
        return str(self.shared.entry(index).get("image") or self.image)

    # -- addresses -------------------------------------------------------------------------

    def ip(self, index: int) -> str:
        found = (self.shared.load().get("ips") or {}).get(str(index))
        if not found:
            raise ChainHarnessError(f"{self.testnet.nodes[index].name} has no pod address yet")
        return str(found)

    # -- pods ------------------------------------------------------------------------------

    def _volumes(self, mounts: dict[Path, str]) -> tuple[list[Any], list[Any]]:
        volumes, volume_mounts = [], []
        for n, (path, mode) in enumerate(mounts.items()):
            # Typed: the kubelet never makes a folder of its own where a run's was removed
            # (a restarted container after the teardown would leave one behind).
            kind = "Directory" if path.is_dir() else "File" if path.is_file() else ""
            volumes.append({"name": f"v{n}", "hostPath": {"path": str(path), "type": kind}})
            volume_mounts.append(
                {"name": f"v{n}", "mountPath": str(path), "readOnly": mode == "ro"}
            )
        return volumes, volume_mounts

    def _pod_body(
        self,
        name: str,
        role: str,
        image: str,
        command: list[str],
        mounts: dict[Path, str],
        env: dict[str, str],
        *,
        restart: str = "Always",
        workdir: Path | None = None,
    ) -> dict[str, Any]:
        volumes, volume_mounts = self._volumes(mounts)
        container: dict[str, Any] = {
            "name": "main",
            "image": image,
            # Never pulled: the backend checks before the run that the cluster has it.
            "imagePullPolicy": "IfNotPresent",
            "command": command,
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "volumeMounts": volume_mounts,
            # Files in the hostPath folders stay removable by whoever runs pytest.
            "securityContext": {"runAsUser": os.getuid(), "runAsGroup": os.getgid()},
        }
        if workdir is not None:
            container["workingDir"] = str(workdir)
        return {
            "metadata": {"name": name, "labels": self.labels(role)},
            "spec": {
                "restartPolicy": restart,
                "terminationGracePeriodSeconds": 1,
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "containers": [container],
                "volumes": volumes,
            },
        }

    def _mounts(self, index: int) -> dict[Path, str]:
        datadir, control = self.datadir(index), self.control_dir(index)
        client = self.adapter.container_mounts(datadir, self._binary_in_node(index))
        return {
            datadir: "rw",
            control: "rw",
            self.run_dir / "logs": "rw",
            admin_dir(self.run_id): "rw",
            # The binary's copy is seen through the control folder's mount.
            **{path: mode for path, mode in client.items() if not path.is_relative_to(control)},
        }

    def _create_node_pod(self, index: int) -> None:
        node = self.testnet.nodes[index]
        self.control_dir(index).mkdir(parents=True, exist_ok=True)
        self.datadir(index).mkdir(parents=True, exist_ok=True)
        if self.binary is not None and not self.shared.entry(index).get("binary"):
            self._install_binary(index, self.binary)
        body = self._pod_body(
            self.pod_name(index),
            f"node-{node.name}",
            self.node_image(index),
            ["sh", "-c", _SUPERVISOR],
            self._mounts(index),
            {
                RUN_MARKER: self.run_id,
                POD_MARKER: f"{self.run_id}/{node.name}/pod",
                "CTL": str(self.control_dir(index)),
                "LOG": str(self.log_path(index)),
            },
        )
        self._create_pod(body)

    def _create_pod(self, body: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        deadline = time.monotonic() + 30.0
        while True:
            try:
                self.cluster.core.create_namespaced_pod(self.namespace, body)  # type: ignore[arg-type]
                return
            except ApiException as exc:
                # A new namespace's default service account comes a moment after it, and
                # no pod is admitted before: wait for it, whatever the pod mounts.
                if exc.status != 403 or "service account" not in str(exc.body):
                    raise
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def _read_pod(self, name: str) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.cluster.core.read_namespaced_pod(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    @staticmethod
    def _stuck(pod: Any, *, replaced: bool = False) -> str | None:
        """Why a pod's container cannot run (a missing image, a crash loop), or None.

        ``replaced``: the harness just had the container replaced (an image patch). The
        kubelet then holds back a restart to an image the pod ran minutes ago (its back-off
        is per container spec, and the image is all that differs): seen in CI as
        "CrashLoopBackOff: back-off 10s" on the fourth image change of a rolling upgrade
        and its rollback. A container that ended as the harness ended it (0, or by
        SIGTERM/SIGKILL) is only waiting then."""
        for status in (pod.status.container_statuses or []) if pod.status else []:
            waiting = status.state.waiting if status.state else None
            last = status.last_state.terminated if status.last_state else None
            if (
                replaced
                and waiting is not None
                and waiting.reason == "CrashLoopBackOff"
                and last is not None
                and last.exit_code in (0, 128 + signal.SIGTERM, 128 + signal.SIGKILL)
            ):
                continue
            if waiting is not None and waiting.reason in _STUCK:
                why = f"{waiting.reason}: {waiting.message or ''}".strip()
                if "Pull" in waiting.reason:
                    why = (
                        f"image {status.image} is not in the cluster and could not be "
                        f"pulled ({why}); `bash scripts/k8s.sh start {status.image}` imports "
                        "a local one"
                    )
                return why
        if pod.status is not None and pod.status.phase == "Failed":
            return f"pod failed: {pod.status.reason or ''} {pod.status.message or ''}".strip()
        return None

    def _wait_running(self, names: Sequence[str], timeout: float) -> dict[str, Any]:
        """Wait until each pod runs and has an address; name → pod."""
        deadline = time.monotonic() + timeout
        pending, ready = list(names), {}
        while pending:
            for name in list(pending):
                pod = self._read_pod(name)
                if pod is None:
                    raise NetworkStartError(f"pod {self.namespace}/{name} is gone")
                why = self._stuck(pod)
                if why is not None:
                    raise NetworkStartError(f"pod {self.namespace}/{name} cannot run: {why}")
                if pod.status.phase == "Running" and pod.status.pod_ip:
                    ready[name] = pod
                    pending.remove(name)
            if not pending:
                break
            if time.monotonic() > deadline:
                raise NetworkStartError(
                    f"pods {', '.join(pending)} in namespace {self.namespace} did not run "
                    f"within {timeout:g}s"
                )
            time.sleep(0.1)
        return ready

    # -- the node processes this host sees -------------------------------------------------

    def _processes(self) -> dict[str, tuple[int | None, list[int]]]:
        """Node name → (its pod's supervisor pid, the node's pids), as this host sees them."""
        found: dict[str, tuple[int | None, list[int]]] = {}
        for pid, value in find_by_env(POD_MARKER, f"{self.run_id}/").items():
            _, name, role = value.split("/", 2)
            supervisor, pids = found.get(name, (None, []))
            if role == "node":
                pids = [*pids, pid]
            elif inner_pid(pid) == 1:
                supervisor = pid
            found[name] = (supervisor, pids)
        return found

    def _node_pids(self, index: int) -> list[int]:
        return self._processes().get(self.testnet.nodes[index].name, (None, []))[1]

    def _pid(self, index: int) -> int | None:
        return self._processes().get(self.testnet.nodes[index].name, (None, []))[0]

    def _control(self, index: int, name: str) -> str:
        try:
            return (self.control_dir(index) / name).read_text().strip()
        except FileNotFoundError:
            return ""

    # -- lifecycle -------------------------------------------------------------------------

    def setup(self, *, timeout: float = 60.0) -> None:
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "nodes").mkdir(parents=True, exist_ok=True, mode=0o700)
        make_admin_dir(self.run_id)
        helpers_ready = self.start_helpers(timeout)
        self.cluster.create_namespace(self.namespace, self.run_id, self.owner)
        with self.shared.edit() as data:
            data["namespace"] = self.namespace
            data["kubeconfig"] = self.kubeconfig
        for node in self.testnet.nodes:
            self._create_node_pod(node.index)
        pods = self._wait_running(
            [self.pod_name(n.index) for n in self.testnet.nodes], POD_START_TIMEOUT
        )
        self._check_local(pods)
        ips = {
            str(n.index): str(pods[self.pod_name(n.index)].status.pod_ip)
            for n in self.testnet.nodes
        }
        self.gateway, self.subnet = _route_to(ips["0"])
        ports = self.adapter.container_ports()
        for node in self.testnet.nodes:
            node.host = ips[str(node.index)]
            node.ports = {role: ports.get(role, port) for role, port in node.ports.items()}
        with self.shared.edit() as data:
            data.update(ips=ips, subnet=self.subnet, gateway=self.gateway)
        self.testnet.accounts()
        for node in self.testnet.nodes:
            self.adapter.write_files(
                self.testnet, node, self.datadir(node.index), self._place(node.index)
            )
        helpers_ready()

    def _check_local(self, pods: dict[str, Any]) -> None:
        """Each running pod's supervisor must be a process of this host (the hostPath
        volumes and the faults need it)."""
        deadline = time.monotonic() + LOCAL_TIMEOUT
        while True:
            seen = {name for name, (sup, _) in self._processes().items() if sup is not None}
            missing = [name for name in pods if name not in seen]
            if not missing:
                return
            if time.monotonic() > deadline:
                pod = pods[missing[0]]
                raise NetworkStartError(
                    f"pod {self.namespace}/{missing[0]} runs on node {pod.spec.node_name} "
                    f"({pod.status.host_ip}), not on this machine: the kubernetes backend "
                    "keeps datadirs in hostPath volumes and acts on the pods' processes, so "
                    "the cluster's node must be this host (`bash scripts/k8s.sh start`)"
                )
            time.sleep(0.1)

    def start_nodes(self, indexes: Sequence[int] | None = None) -> None:
        for index in range(len(self.testnet.nodes)) if indexes is None else indexes:
            self.start(index)

    def start(self, index: int) -> None:
        was = self.state(index)
        if was in (NodeState.RUNNING, NodeState.PAUSED):
            return
        if was is not NodeState.NEW:
            self._before_restart(index)
        node = self.testnet.nodes[index]
        place = self._place(index)
        env = self.adapter.environment(self.testnet, node, place)
        script = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        script += f"cd {shlex.quote(str(self.datadir(index)))}\n"
        script += node_script(self.adapter, self.testnet, node, place) + "\n"
        control = self.control_dir(index)
        (control / "run.sh").write_text(script)
        self.shared.record(index, intent="running")
        number = int(self._control(index, "want") or 0) + 1
        # Replaced whole: the supervisor never reads half a number.
        (control / "want.tmp").write_text(f"{number}\n")
        os.replace(control / "want.tmp", control / "want")
        self._reapply_partition(index)

    def state(self, index: int) -> NodeState:
        pids = self._node_pids(index)
        if pids:
            stopped = all(pid_state(pid) == "T" for pid in pids)
            return NodeState.PAUSED if stopped else NodeState.RUNNING
        want = self._control(index, "want")
        if not want:
            return NodeState.NEW
        if self.shared.entry(index).get("intent") == "stopped":
            return NodeState.STOPPED
        if self._control(index, "exited") == want:
            return NodeState.EXITED
        pod = self._read_pod(self.pod_name(index))
        if pod is None or self._stuck(pod) is not None:
            return NodeState.EXITED
        return NodeState.RUNNING  # asked to start; its supervisor starts it within 0.1 s

    def _signal_node(self, index: int, sig: int, timeout: float) -> list[int]:
        return kill_pids(self._node_pids(index), sig=sig, timeout=timeout)

    def stop(self, index: int, *, timeout: float = 10.0) -> None:
        self.shared.record(index, intent="stopped")
        if self._signal_node(index, signal.SIGTERM, timeout):
            self._signal_node(index, signal.SIGKILL, 10.0)

    def kill(self, index: int) -> None:
        self.shared.record(index, intent="stopped")
        self._signal_node(index, signal.SIGKILL, 10.0)

    def pause(self, index: int) -> None:
        pids = self._require(index, "pause")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        # The signal lands when each process is next scheduled: paused means stopped now.
        deadline = time.monotonic() + 5.0
        while any(pid_state(pid) not in ("T", None) for pid in pids):
            if time.monotonic() > deadline:
                raise ChainHarnessError(f"{self.testnet.nodes[index].name} did not stop")
            time.sleep(0.01)

    def resume(self, index: int) -> None:
        for pid in self._require(index, "resume"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._after_resume(index)

    def _require(self, index: int, action: str) -> list[int]:
        pids = self._node_pids(index)
        if not pids:
            name = self.testnet.nodes[index].name
            raise ChainHarnessError(f"cannot {action} {name}: it is not running")
        return pids

    def logs(self, index: int, tail: int = 200) -> str:
        if tail <= 0:
            return ""
        try:
            lines = self.log_path(index).read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-tail:])

    def reassign_ports(self, index: int) -> None:
        # A pod's ports are its own network namespace's: no other program can take one.
        return None

    def upgrade(self, index: int, version: str) -> None:
        target = self.check_version(version)
        self.stop(index)
        if self.binary is not None:
            self._install_binary(index, Path(target))
            self.shared.record(index, binary=target)
            self.start(index)
            return
        name = self.pod_name(index)
        before, previous = self._pid(index), self.node_image(index)
        self.shared.record(index, image=target)
        # The kubelet replaces the container in the same pod: same address, same volumes.
        patch = {"spec": {"containers": [{"name": "main", "image": target}]}}
        self.cluster.core.patch_namespaced_pod(name, self.namespace, patch)
        deadline = time.monotonic() + POD_START_TIMEOUT
        while True:
            pod = self._read_pod(name)
            statuses = (pod.status.container_statuses or []) if pod and pod.status else []
            running = [s for s in statuses if s.state and s.state.running]
            supervisor = self._pid(index)
            if (
                running
                and supervisor not in (None, before)
                and self._image_matches(running[0].image, target)
            ):
                break
            why = self._stuck(pod, replaced=True) if pod is not None else "the pod is gone"
            if why is not None or time.monotonic() > deadline:
                if pod is not None and target != previous:
                    # Back to the image it ran: the node stays stopped, as a failed
                    # upgrade leaves it, and the caller may start it again.
                    self.shared.record(index, image=previous)
                    back = {"spec": {"containers": [{"name": "main", "image": previous}]}}
                    self.cluster.core.patch_namespaced_pod(name, self.namespace, back)
                raise ChainHarnessError(
                    f"{name}: the upgrade to {target} did not run: "
                    f"{why or f'not running after {POD_START_TIMEOUT:g}s'}"
                )
            time.sleep(0.1)
        self.start(index)

    @staticmethod
    def _image_matches(running: str, target: str) -> bool:
        from .._kube import image_names

        return running in image_names(target) or running == target

    def check_version(self, version: str) -> str:
        if self.binary is not None:
            # Another version of a client that runs the host's binary is another binary.
            return str(self.adapter.find_binary(version))
        image = image_for_version(self.image, version)
        self.cluster.check_image(image, "the upgrade target")
        return image

    def version_ref(self, index: int) -> str:
        if self.binary is not None:
            return str(self.shared.entry(index).get("binary") or self.binary)
        return self.node_image(index)

    def default_version_ref(self) -> str:
        return str(self.binary) if self.binary is not None else self.image

    # -- one-off commands (a client's set-up) in a pod of the node's image ----------------

    def _run_once(
        self, index: int, argv: list[str], cwd: Path, env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        out_dir = self.run_dir / "nodes" / ".pods" / "once"
        out_dir.mkdir(parents=True, exist_ok=True)
        tag = f"once-{index}-{time.monotonic_ns() % 10**9}"
        out, err = out_dir / f"{tag}.out", out_dir / f"{tag}.err"
        line = f"{shlex.join(argv)} > {shlex.quote(str(out))} 2> {shlex.quote(str(err))}"
        mounts = {**self._mounts(index), out_dir: "rw", cwd: "rw"}
        body = self._pod_body(
            tag,
            f"setup-{self.testnet.nodes[index].name}",
            self.node_image(index),
            ["sh", "-c", line],
            mounts,
            {RUN_MARKER: self.run_id, **env},
            restart="Never",
            workdir=cwd,
        )
        core = self.cluster.core
        self._create_pod(body)
        deadline = time.monotonic() + timeout
        try:
            while True:
                pod = self._read_pod(tag)
                phase = pod.status.phase if pod is not None and pod.status else None
                if phase in ("Succeeded", "Failed"):
                    break
                why = self._stuck(pod) if pod is not None else "the pod is gone"
                if why is not None:
                    raise NetworkStartError(f"{shlex.join(argv)}: its pod cannot run: {why}")
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(argv, timeout)
                time.sleep(0.1)
            statuses = pod.status.container_statuses or []
            terminated = statuses[0].state.terminated if statuses and statuses[0].state else None
            code = int(terminated.exit_code) if terminated is not None else 1
            return subprocess.CompletedProcess(
                argv,
                code,
                out.read_text(errors="replace") if out.exists() else "",
                err.read_text(errors="replace") if err.exists() else "",
            )
        finally:
            with contextlib.suppress(Exception):
                core.delete_namespaced_pod(tag, self.namespace, grace_period_seconds=0)
            out.unlink(missing_ok=True)
            err.unlink(missing_ok=True)

    # -- latency: toxiproxy on this host's address towards the pods ------------------------

    def _proxy_host(self) -> str:
        if self.gateway is None:
            self.refresh()
        assert self.gateway is not None, "setup() finds the pods' gateway"
        return self.gateway

    # -- the broker, in a pod ----------------------------------------------------------------

    def start_broker(self, image: str) -> BrokerEndpoint:
        """mosquitto in a pod of the run's namespace, reached at its pod address."""
        from .._broker import BrokerEndpoint, write_config

        conf_dir = self.run_dir / "broker"
        username, password = write_config(
            conf_dir,
            listen="0.0.0.0",
            port=1883,
            data_dir=str(conf_dir),
            run_as="root" if os.getuid() == 0 else None,
        )
        body = self._pod_body(
            "bus",
            "bus",
            image,
            ["mosquitto", "-c", str(conf_dir / "mosquitto.conf")],
            {conf_dir: "rw"},
            {RUN_MARKER: self.run_id},
        )
        self._create_pod(body)
        pod = self._wait_running(["bus"], POD_START_TIMEOUT)["bus"]
        endpoint = BrokerEndpoint(str(pod.status.pod_ip), 1883, username, password, kind="pod")
        deadline = time.monotonic() + 30.0
        while True:
            try:
                with socket.create_connection((endpoint.host, endpoint.port), timeout=0.5):
                    return endpoint
            except OSError:
                if time.monotonic() > deadline:
                    raise ChainHarnessError(
                        f"the broker pod at {endpoint.host}:1883 did not listen within 30s"
                    ) from None
                time.sleep(0.05)

    def _save_broker_log(self) -> None:
        with contextlib.suppress(Exception):
            text = self.cluster.core.read_namespaced_pod_log("bus", self.namespace)
            (self.run_dir / "logs" / "service-bus.log").write_text(str(text))

    # -- teardown and attach ---------------------------------------------------------------

    def _kill_nodes(self) -> None:
        """SIGKILL every node process of the run (not the supervisors), so nothing writes
        to a datadir any more whatever the cluster does next."""
        pids = [pid for _, node in self._processes().values() for pid in node]
        kill_pids(pids, sig=signal.SIGKILL, timeout=10.0)

    def _remove_pods(self) -> None:
        self.cluster.remove_namespace(self.namespace, self.run_id)
        _await_pods_gone(self.run_id)

    def teardown(self) -> None:
        every_step(
            self._kill_nodes,
            self._save_broker_log,
            self._remove_pods,
            lambda: shutil.rmtree(self.run_dir / "nodes", ignore_errors=True),
            self.stop_helpers,
            lambda: remove_admin_dir(self.run_id),
        )

    def refresh(self) -> None:
        """Reload what another process recorded (the pods' addresses, the gateway)."""
        data = self.shared.refresh()
        self.subnet = data.get("subnet", self.subnet)
        self.gateway = data.get("gateway", self.gateway)

    def release(self) -> None:
        self.release_helpers()

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def describe(self) -> dict[str, Any]:
        return {
            "provider": self.name,
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "image": self.image,
            "owner": self.owner,
            "kubeconfig": self.kubeconfig,
            "namespace": self.namespace,
            "binary": str(self.binary) if self.binary else None,
            "testnet": self.testnet.to_dict(),
        }

    @classmethod
    def attach(cls, description: dict[str, Any], adapter: ClientAdapter) -> KubernetesProvider:
        provider = cls(
            Testnet.from_dict(description["testnet"]),
            adapter,
            run_dir=Path(description["run_dir"]),
            run_id=description["run_id"],
            image=description["image"],
            kubeconfig=description["kubeconfig"],
            namespace=description["namespace"],
            owner=description["owner"],
            binary=Path(description["binary"]) if description.get("binary") else None,
        )
        provider.refresh()
        return provider


class KubernetesBackend(Backend):
    """Pods on the Kubernetes cluster a kubeconfig names (``--chain-kubeconfig``)."""

    name = "kubernetes"
    runs_images = True
    leaves_objects = True
    # Routed from this host to the pods' bridge (the cluster's node is this host).
    reach = "nodes at their pod IPs"

    def unusable(self) -> str | None:
        try:
            import kubernetes  # noqa: F401
        except ImportError:
            return (
                "the kubernetes package is not installed "
                "(pip install 'pytest-chainharness[kubernetes]')"
            )
        return None

    def auto_choice(self, image: str) -> tuple[bool, str]:
        return False, "auto: never picks kubernetes"

    def create(self, run: NewRun) -> tuple[KubernetesProvider, str | None]:
        from .._kube import Cluster, owner_annotation

        settings = run.settings
        kubeconfig = str(settings.kubeconfig) if settings.kubeconfig else None
        namespace = settings.namespace or run.run_id
        cluster = Cluster.connect(kubeconfig)
        try:
            # Every check before anything is made: a refusal leaves nothing behind.
            cluster.check_answers()
            cluster.check_rights(namespace)
            cluster.sweep_stale()
            cluster.check_image(settings.image, "--chain-image")
            if settings.bus is None:
                cluster.check_image(settings.bus_image, "the broker image")
            cluster.check_namespace_free(namespace, run.run_id)
        finally:
            cluster.close()
        # A kept run (chainharness up) has no owner whose death makes it stale.
        owner = owner_annotation(run.owner) if run.owner else owner_annotation(kept=True)
        binary, version = None, None
        if run.adapter.host_binary:
            # Mounted into the client's image (a spec without an image of its own).
            binary = run.adapter.find_binary(explicit=settings.binary)
            version = run.adapter.version(binary)
        provider = KubernetesProvider(
            run.testnet,
            run.adapter,
            run_dir=run.run_dir,
            run_id=run.run_id,
            image=settings.image,
            kubeconfig=kubeconfig,
            namespace=namespace,
            owner=owner,
            binary=binary,
        )
        return provider, version

    def attach(self, description: dict[str, Any], adapter: ClientAdapter) -> KubernetesProvider:
        return KubernetesProvider.attach(description, adapter)

    def version_from_settings(self, settings: Settings) -> str | None:
        return settings.image

    def start_broker(self, provider: Provider, settings: Settings) -> BrokerEndpoint | None:
        assert isinstance(provider, KubernetesProvider)
        return provider.start_broker(settings.bus_image)

    def sweep_run(self, run_id: str, run_dir: Path) -> None:
        path = run_dir / "kubernetes-state.json"
        if not path.exists():
            return
        data = json.loads(path.read_text())
        from .._kube import Cluster

        cluster = Cluster.connect(data.get("kubeconfig"))
        try:
            cluster.remove_namespace(data.get("namespace") or run_id, run_id)
        finally:
            cluster.close()
        _await_pods_gone(run_id)
        # A sweep's first step killed the pods' processes while their pods still stood,
        # and the kubelet restarted their containers: what those made goes too.
        every_step(
            lambda: shutil.rmtree(run_dir / "nodes", ignore_errors=True),
            lambda: remove_admin_dir(run_id),
        )


BACKEND = KubernetesBackend()
