"""What the providers whose nodes run in their own network namespace from the node image
(docker's containers, kubernetes' pods) share: each node's datadir on the host at its
own path (mounted at that path), its own address on the run's subnet, peers written by
address before anything starts, set-up commands in the node's image, and only the API
ports offered to tests."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .._testnet import Testnet
from ..clients.base import ClientAdapter, Placement, Route
from .base import admin_dir

__all__ = ["ImageNodes"]


class ImageNodes:
    testnet: Testnet
    adapter: ClientAdapter
    run_id: str
    run_dir: Path
    subnet: str | None

    def ip(self, index: int) -> str:
        """Node ``index``'s own address on the run's subnet."""
        raise NotImplementedError

    def _binary_in_node(self, index: int) -> Path | None:
        """The host binary node ``index`` runs (a client that runs the host's), or None:
        the client's own."""
        raise NotImplementedError

    def _run_once(
        self, index: int, argv: list[str], cwd: Path, env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """A client's set-up command in a one-off container or pod of the node's image."""
        raise NotImplementedError

    if TYPE_CHECKING:  # from ProxiedLinks, later in the providers' bases

        def proxied_links(self) -> bool: ...

        def link_routes(self, index: int) -> dict[int, Route]: ...

    def datadir(self, index: int) -> Path:
        return self.run_dir / "nodes" / self.testnet.nodes[index].name

    def put_file(self, index: int, name: str, data: bytes) -> str:
        path = self.datadir(index) / name
        path.write_bytes(data)
        return str(path)  # mounted at its host path

    def log_path(self, index: int) -> Path:
        return self.run_dir / "logs" / f"{self.testnet.nodes[index].name}.log"

    @property
    def artifacts_dir(self) -> Path:
        return self.run_dir / "logs"

    def enode(self, index: int) -> str:
        node = self.testnet.nodes[index]
        return self.adapter.peer_address(node, self.ip(index), self.adapter.container_ports())

    def _place(self, index: int) -> Placement:
        ports = self.adapter.container_ports()
        node = self.testnet.nodes[index]
        if self.proxied_links():
            routes = self.link_routes(index)
        else:
            routes = {n.index: Route(self.ip(n.index), ports) for n in self.testnet.nodes}
        return Placement(
            datadir=str(self.datadir(index)),
            binary=self.adapter.container_binary(self._binary_in_node(index)),
            listen="0.0.0.0",
            ports=ports,
            netrestrict=str(self.subnet),
            peers=tuple(self.enode(n.index) for n in self.testnet.nodes if n.index != index),
            ipc_path=str(admin_dir(self.run_id) / f"{node.name}.ipc"),
            peer_routes=routes,
            runner=lambda argv, cwd, env, timeout: self._run_once(index, argv, cwd, env, timeout),
            own_host=self.ip(index),
            refuse=tuple(
                f"{self.ip(other.index)}/32"
                for other in self.testnet.nodes
                if self.adapter.own_host_roles and other.index != index
            ),
        )

    def ports(self, index: int) -> dict[str, int]:
        # Only the API ports: p2p stays in the run's network.
        node = self.testnet.nodes[index]
        return {role: node.ports[role] for role in self.adapter.api_ports}

    def admin_url(self, index: int) -> str:
        # The node's socket appears in the host's admin folder through the mount.
        return f"ipc://{admin_dir(self.run_id) / self.testnet.nodes[index].name}.ipc"

    def start_sealing(self, indexes: Sequence[int] | None = None) -> None:
        for index in range(len(self.testnet.nodes)) if indexes is None else indexes:
            self.adapter.start_sealing(self.testnet.nodes[index], self.admin_url(index))

    def client_version(self, index: int) -> str:
        return self.adapter.node_version(self.testnet.nodes[index], self._place(index))

    def _upstream(self, index: int, role: str) -> str:
        """Where a proxy on this host reaches node ``index``'s ``role`` listener."""
        return f"{self.ip(index)}:{self.adapter.container_ports()[role]}"
