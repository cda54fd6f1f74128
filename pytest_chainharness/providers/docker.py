"""The docker backend: every node is a container on one docker network per run.

- testcontainers creates and starts each container; docker-py does the rest (stop, kill,
  pause, logs, removal by label).
- Node datadirs are bind-mounted from ``<run_dir>/nodes/<name>`` so a container can be
  replaced (upgrade to another image, fresh ports) without losing the chain. Every mount
  (datadir, the run's admin folder, what the client adds) has the path it has on the
  host, so a client's files and commands name the same paths on both backends.
- Each node has a fixed address on the run's subnet, so peers are written into the
  config before anything starts (geth resolves enode host names only once, at parse time).
  A client without an admin API dials its peers through per-link proxies on the run
  network's gateway instead (``_links.py``): partitions and latency act there.
- RPC and WebSocket are published on 127.0.0.1 only, on ports chosen like the process
  backend's, so ``NodeSpec.rpc_url`` is the same kind of URL on both backends.
- Every container and the network carry the run's labels (see ``_docker``); teardown,
  the watchdog and the stale sweep remove by label.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import subprocess
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker.errors
from docker.models.containers import Container
from docker.models.networks import Network
from docker.types import EndpointConfig, IPAMConfig, IPAMPool
from testcontainers.core.config import ConnectionMode, testcontainers_config
from testcontainers.core.container import DockerContainer

import docker

from .._docker import (
    LABEL_OWNER,
    LABEL_ROLE,
    LABEL_RUN,
    docker_client,
    engine_status,
    image_exists,
    owner_label,
    remove_run,
    sweep_stale,
)
from .._errors import ChainHarnessError, NetworkStartError, ToolNotFound
from .._ports import PortAllocator
from .._proc import every_step
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
    from .._options import Settings
    from ..services import Services, ServiceSpec
    from .base import Provider

__all__ = ["BACKEND", "DockerBackend", "DockerProvider", "image_for_version"]

# Ryuk reaps a session's containers when the process that made them exits: under xdist
# that is whichever worker happened to start the network, while other workers still use
# it. The harness removes its containers itself (teardown, watchdog, stale sweep).
testcontainers_config.ryuk_disabled = True
# Ports are published on 127.0.0.1 of the engine's host. testcontainers would guess the
# bridge gateway when it finds itself inside a container, which cannot reach them.
if testcontainers_config.connection_mode_override is None:
    testcontainers_config.connection_mode_override = ConnectionMode.docker_host

#: Attempts at a container start whose published port another program took meanwhile.
PORT_RETRIES = 3


def missing_image_error(image: str, option: str) -> ToolNotFound:
    return ToolNotFound(
        f"image {image} is not on this Docker engine and could not be pulled. "
        f"Build the local images with: chainharness images build "
        f"(or point {option} at an image your registry has)"
    )


def ensure_image(client: docker.DockerClient, image: str, option: str) -> None:
    """Have ``image`` locally: present, or pulled; else an error naming the build command."""
    try:
        client.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    try:
        client.images.pull(image)
    except docker.errors.DockerException as exc:
        raise missing_image_error(image, option) from exc


class DockerProvider(
    ImageNodes, PacketFilters, NodeParts, AdminPeering, ToxiproxyLatency, ProxiedLinks, HelperHost
):
    """Runs a ``Testnet`` as containers."""

    name = "docker"

    def __init__(
        self,
        testnet: Testnet,
        adapter: ClientAdapter,
        *,
        run_dir: Path,
        run_id: str,
        image: str,
        owner: str | None = None,
        ports: PortAllocator | None = None,
        network: str | None = None,
        subnet: str | None = None,
    ) -> None:
        self.testnet = testnet
        self.adapter = adapter
        self.run_dir = run_dir
        self.run_id = run_id
        self.image = image
        self.owner = owner or owner_label()
        self._ports = ports or PortAllocator()
        self.network_name = network or f"{run_id}-net"
        self.subnet = subnet
        self._client = docker_client()
        self.shared = RunState(run_dir / "docker-state.json", testnet)

    # -- naming, labels, shared state ------------------------------------------------------

    def container_name(self, index: int) -> str:
        return f"{self.run_id}-{self.testnet.nodes[index].name}"

    def labels(self, role: str) -> dict[str, str]:
        return {LABEL_RUN: self.run_id, LABEL_OWNER: self.owner, LABEL_ROLE: role}

    def node_image(self, index: int) -> str:
        return str(self.shared.entry(index).get("image") or self.image)

    def _container(self, index: int) -> Container | None:
        try:
            return self._client.containers.get(self.container_name(index))
        except docker.errors.NotFound:
            return None

    # -- addresses -------------------------------------------------------------------------

    def ip(self, index: int) -> str:
        assert self.subnet is not None, "setup() picks the subnet"
        net = ipaddress.ip_network(self.subnet)
        return str(net.network_address + 10 + index)

    # -- lifecycle -------------------------------------------------------------------------

    def _create_network(self) -> Network:
        # A fixed subnet is what lets nodes have fixed addresses; try a few until one is
        # free on this engine.
        first = zlib.crc32(self.run_id.encode()) % 200
        last_error: Exception | None = None
        for step in range(40):
            subnet = f"10.{201 + (first + step) // 250 % 50}.{(first + step) % 250}.0/24"
            ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=subnet)])
            try:
                network = self._client.networks.create(
                    self.network_name,
                    driver="bridge",
                    ipam=ipam,
                    labels=self.labels("network"),
                    check_duplicate=True,
                )
            except docker.errors.APIError as exc:
                if "overlap" not in str(exc).lower():
                    raise
                last_error = exc
                continue
            self.subnet = subnet
            return network
        raise NetworkStartError(f"no free subnet for the run's docker network: {last_error}")

    def setup(self, *, timeout: float = 60.0) -> None:
        # The node's own init runs in its container before it starts (see _script); a
        # hang there is a node whose RPC never answers, which launch's deadline covers.
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "nodes").mkdir(parents=True, exist_ok=True, mode=0o700)
        make_admin_dir(self.run_id)
        # The helpers start while the image, network and datadirs are made.
        helpers_ready = self.start_helpers(timeout)
        ensure_image(self._client, self.image, "--chain-image")
        self._create_network()
        self.testnet.accounts()  # derive once here, not once per thread
        with ThreadPoolExecutor(max_workers=min(8, len(self.testnet.nodes))) as pool:
            list(
                pool.map(
                    lambda n: self.adapter.write_files(
                        self.testnet, n, self.datadir(n.index), self._place(n.index)
                    ),
                    self.testnet.nodes,
                )
            )
        with self.shared.edit() as data:
            data["subnet"] = self.subnet
        helpers_ready()

    def start_nodes(self, indexes: Sequence[int] | None = None) -> None:
        chosen = list(range(len(self.testnet.nodes)) if indexes is None else indexes)
        # Container creation is mostly waiting on the engine: start them side by side.
        with ThreadPoolExecutor(max_workers=min(16, max(1, len(chosen)))) as pool:
            list(pool.map(self.start, chosen))

    def _script(self, index: int) -> list[str]:
        node = self.testnet.nodes[index]
        return ["-c", node_script(self.adapter, self.testnet, node, self._place(index))]

    def start(self, index: int) -> None:
        was = self.state(index)
        if was in (NodeState.RUNNING, NodeState.PAUSED):
            return
        if was is not NodeState.NEW:
            self._before_restart(index)
        self.shared.record(index, intent="running")
        existing = self._container(index)
        if existing is not None:
            try:
                existing.start()
            except docker.errors.APIError as exc:
                raise ChainHarnessError(
                    f"{self.testnet.nodes[index].name}: restart failed: {exc}. A port "
                    f"conflict here means another program bound one of the node's ports "
                    f"({', '.join(f'{role} {port}' for role, port in self.ports(index).items())}) "
                    f"while it was stopped"
                ) from exc
            self._reapply_partition(index)
            return
        for attempt in range(PORT_RETRIES + 1):
            try:
                self._run_container(index)
                self._reapply_partition(index)
                return
            except docker.errors.APIError as exc:
                conflict = "address already in use" in str(exc) or "already allocated" in str(exc)
                self._remove_container(index)
                if not conflict or attempt == PORT_RETRIES:
                    raise NetworkStartError(
                        f"{self.testnet.nodes[index].name}: container start failed: {exc}"
                    ) from exc
                self._take_ports(index)

    def _run_container(self, index: int) -> None:
        node = self.testnet.nodes[index]
        ports = self.adapter.container_ports()
        container = (
            DockerContainer(self.node_image(index))
            .with_name(self.container_name(index))
            .with_command(self._script(index))
            .with_kwargs(
                entrypoint=["sh"],
                labels=self.labels(f"node:{node.name}"),
                # Files in the bind-mounted datadir stay removable by whoever runs pytest.
                user=f"{os.getuid()}:{os.getgid()}",
                working_dir=str(self.datadir(index)),
                networking_config={
                    self.network_name: EndpointConfig(
                        self._client.api.api_version,
                        aliases=[node.name],
                        ipv4_address=self.ip(index),
                    )
                },
                network=self.network_name,
            )
        )
        for name, value in self._environment(index).items():
            container.with_env(name, value)
        for host_path, mode in self._mounts(index).items():
            container.with_volume_mapping(str(host_path), str(host_path), mode=mode)
        published: dict[str, Any] = {
            f"{ports[role]}/tcp": ("127.0.0.1", node.ports[role]) for role in self.adapter.api_ports
        }
        # testcontainers' with_bind_ports takes no host address; nodes publish on
        # 127.0.0.1 only, so the mapping is set directly.
        container.ports.update(published)
        container.start()

    def _mounts(self, index: int) -> dict[Path, str]:
        datadir = self.datadir(index)
        return {
            datadir: "rw",
            admin_dir(self.run_id): "rw",
            **self.adapter.container_mounts(datadir, self._binary_in_node(index)),
        }

    def _environment(self, index: int) -> dict[str, str]:
        node = self.testnet.nodes[index]
        place = self._place(index)
        return self.adapter.environment(self.testnet, node, place)

    def _run_once(
        self, index: int, argv: list[str], cwd: Path, env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """A client's set-up command in a one-off container of the node's image."""
        volumes = {
            str(path): {"bind": str(path), "mode": mode}
            for path, mode in self._mounts(index).items()
        }
        container = self._client.containers.create(
            self.node_image(index),
            argv,
            entrypoint=[],
            volumes=volumes,
            user=f"{os.getuid()}:{os.getgid()}",
            working_dir=str(cwd),
            environment=env,
            network_mode="none",
            labels=self.labels(f"setup:{self.testnet.nodes[index].name}"),
        )
        try:
            container.start()
            try:
                status = int(container.wait(timeout=timeout).get("StatusCode", 1))
            except Exception as exc:  # the engine's read timeout
                raise subprocess.TimeoutExpired(argv, timeout) from exc
            out = container.logs(stdout=True, stderr=False).decode(errors="replace")
            err = container.logs(stdout=False, stderr=True).decode(errors="replace")
        finally:
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)
        return subprocess.CompletedProcess(argv, status, out, err)

    def _take_ports(self, index: int) -> None:
        node = self.testnet.nodes[index]
        roles = self.adapter.port_roles
        node.ports = dict(zip(roles, self._ports.take(len(roles)), strict=True))
        self.shared.save()

    def _save_logs(self, index: int) -> None:
        container = self._container(index)
        if container is None:
            return
        try:
            text = container.logs().decode(errors="replace")
        except docker.errors.DockerException:
            return
        path = self.log_path(index)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as out:
            out.write(f"=== chainharness: container {container.name} ({self.node_image(index)})\n")
            out.write(text)

    def _save_service_logs(self) -> None:
        """Each service container's output into ``logs/service-NAME.log``: a failed run's
        kept logs must show what the services beside the chain said, too."""
        try:
            containers = self._client.containers.list(
                all=True, filters={"label": f"{LABEL_RUN}={self.run_id}"}
            )
        except docker.errors.DockerException:
            return
        for container in containers:
            role = (container.labels or {}).get(LABEL_ROLE, "")
            if not role.startswith("service:"):
                continue
            try:
                text = container.logs().decode(errors="replace")
            except docker.errors.DockerException:
                continue
            path = self.run_dir / "logs" / f"service-{role.removeprefix('service:')}.log"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"=== chainharness: container {container.name}\n{text}")

    def _remove_container(self, index: int) -> None:
        container = self._container(index)
        if container is not None:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)

    def state(self, index: int) -> NodeState:
        container = self._container(index)
        if container is None:
            return NodeState.NEW if not self.shared.entry(index) else NodeState.STOPPED
        status = container.status
        if status == "paused":
            return NodeState.PAUSED
        if status in ("running", "restarting"):
            return NodeState.RUNNING
        if status == "created":
            return NodeState.NEW
        return (
            NodeState.STOPPED
            if self.shared.entry(index).get("intent") == "stopped"
            else NodeState.EXITED
        )

    def stop(self, index: int, *, timeout: float = 10.0) -> None:
        self.shared.record(index, intent="stopped")
        container = self._container(index)
        if container is not None:
            container.stop(timeout=max(1, int(timeout)))

    def kill(self, index: int) -> None:
        self.shared.record(index, intent="stopped")
        container = self._container(index)
        if container is not None and container.status in ("running", "paused", "restarting"):
            try:
                container.kill()
            except docker.errors.APIError as exc:
                if "is not running" not in str(exc):
                    raise
            container.wait(timeout=10)

    def pause(self, index: int) -> None:
        self._require(index, "pause").pause()

    def resume(self, index: int) -> None:
        self._require(index, "resume").unpause()
        self._after_resume(index)

    def _require(self, index: int, action: str) -> Container:
        container = self._container(index)
        if container is None or container.status not in ("running", "paused"):
            name = self.testnet.nodes[index].name
            raise ChainHarnessError(f"cannot {action} {name}: it is not running")
        return container

    def logs(self, index: int, tail: int = 200) -> str:
        if tail <= 0:
            return ""
        container = self._container(index)
        if container is None:
            try:
                lines = self.log_path(index).read_text(errors="replace").splitlines()
            except FileNotFoundError:
                return ""
            return "\n".join(lines[-tail:])
        return str(container.logs(tail=tail).decode(errors="replace")).rstrip("\n")

    def reassign_ports(self, index: int) -> None:
        # Published ports are fixed when a container is created: replace the container
        # (the datadir is a bind mount and survives).
        self._save_logs(index)
        self._remove_container(index)
        self._take_ports(index)

    def _binary_in_node(self, index: int) -> Path | None:
        """The host binary node ``index`` was upgraded to (a client that runs the host's
        binary in its container); None: the client's own."""
        found = self.shared.entry(index).get("binary")
        return Path(found) if found else None

    def upgrade(self, index: int, version: str) -> None:
        target = self.check_version(version)
        self.stop(index)
        self._save_logs(index)
        # Mounts and image are fixed when a container is made: a new one, same datadir.
        self._remove_container(index)
        if self.adapter.host_binary:
            self.shared.record(index, binary=target)
        else:
            self.shared.record(index, image=target)
        self.start(index)

    def check_version(self, version: str) -> str:
        if self.adapter.host_binary:
            # Another version of a client that runs the host's binary is another binary.
            return str(self.adapter.find_binary(version))
        image = image_for_version(self.image, version)
        ensure_image(self._client, image, "the upgrade target")
        return image

    def version_ref(self, index: int) -> str:
        if self.adapter.host_binary:
            return str(self._binary_in_node(index) or self.adapter.find_binary())
        return self.node_image(index)

    def default_version_ref(self) -> str:
        return str(self.adapter.find_binary()) if self.adapter.host_binary else self.image

    # -- the container's process, for packet filters in its namespace -----------------

    def _pid(self, index: int) -> int | None:
        container = self._container(index)
        if container is None or container.status not in ("running", "paused"):
            return None
        pid = int(container.attrs.get("State", {}).get("Pid") or 0)
        return pid or None

    # -- latency: toxiproxy on the run network's gateway ---------------------------------

    def _proxy_host(self) -> str:
        network = self._client.networks.get(self.network_name)
        configs = network.attrs.get("IPAM", {}).get("Config") or [{}]
        gateway = configs[0].get("Gateway")
        if not gateway:
            assert self.subnet is not None
            gateway = str(ipaddress.ip_network(self.subnet).network_address + 1)
        return str(gateway)

    def refresh(self) -> None:
        """Reload what another process may have changed (ports after a retry, subnet)."""
        self.subnet = self.shared.refresh().get("subnet", self.subnet)

    # -- teardown and attach ---------------------------------------------------------------

    def teardown(self) -> None:
        every_step(
            self._save_all_logs,
            self._save_service_logs,
            lambda: remove_run(self.run_id, self._client),
            lambda: shutil.rmtree(self.run_dir / "nodes", ignore_errors=True),
            self.stop_helpers,
            lambda: remove_admin_dir(self.run_id),
        )

    def _save_all_logs(self) -> None:
        if self.testnet.nodes:
            with ThreadPoolExecutor(max_workers=min(16, len(self.testnet.nodes))) as pool:
                list(pool.map(self._save_logs, range(len(self.testnet.nodes))))

    def release(self) -> None:
        # The containers need no handle; the host's helpers do.
        self.release_helpers()

    def close(self) -> None:
        self._client.close()

    def describe(self) -> dict[str, Any]:
        return {
            "provider": self.name,
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "image": self.image,
            "owner": self.owner,
            "network": self.network_name,
            "subnet": self.subnet,
            "testnet": self.testnet.to_dict(),
        }

    @classmethod
    def attach(cls, description: dict[str, Any], adapter: ClientAdapter) -> DockerProvider:
        provider = cls(
            Testnet.from_dict(description["testnet"]),
            adapter,
            run_dir=Path(description["run_dir"]),
            run_id=description["run_id"],
            image=description["image"],
            owner=description["owner"],
            network=description["network"],
            subnet=description["subnet"],
        )
        provider.refresh()
        return provider


class DockerBackend(Backend):
    """Containers on the Docker engine ``DOCKER_HOST`` (or the default socket) names."""

    name = "docker"
    runs_images = True
    hosts_services = True
    auto_candidate = True
    leaves_objects = True

    def unusable(self) -> str | None:
        up, why = engine_status()
        if up:
            return None
        return (
            f"{why}. Start one (scripts/docker.sh installs and starts dockerd), set "
            "DOCKER_HOST, or use --chain-backend=process"
        )

    def auto_choice(self, image: str) -> tuple[bool, str]:
        up, why = engine_status()
        if not up:
            return False, f"auto: {why}"
        if not image_exists(image):
            return False, f"auto: {why}, but image {image} is missing (chainharness images build)"
        return True, f"auto: {why} and image {image} present"

    def create(self, run: NewRun) -> tuple[DockerProvider, str | None]:
        owner = owner_label(run.owner) if run.owner else owner_label(kept=True)
        provider = DockerProvider(
            run.testnet,
            run.adapter,
            run_dir=run.run_dir,
            run_id=run.run_id,
            image=run.settings.image,
            owner=owner,
        )
        return provider, None

    def attach(self, description: dict[str, Any], adapter: ClientAdapter) -> DockerProvider:
        return DockerProvider.attach(description, adapter)

    def version_from_settings(self, settings: Settings) -> str | None:
        return settings.image

    def start_broker(self, provider: Provider, settings: Settings) -> BrokerEndpoint | None:
        from .._broker import start_container_broker

        return start_container_broker(provider, settings.bus_image)

    def start_services(self, provider: Provider, specs: list[ServiceSpec]) -> Services:
        from ..services import start_services

        return start_services(provider, specs)

    def sweep_stale(self) -> list[str]:
        return sweep_stale()

    def sweep_run(self, run_id: str, run_dir: Path) -> None:
        if (run_dir / "docker-state.json").exists():
            remove_run(run_id)


BACKEND = DockerBackend()
