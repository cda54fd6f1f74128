"""The ``Provider`` protocol: every action on nodes, faults included, goes through it.

One implementation per infrastructure (``process``; ``docker`` later). Tests, the chain
API and the CLI never signal a process or call a container engine themselves, so the
backends stay interchangeable.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .._testnet import Testnet

__all__ = ["NodeState", "Provider", "admin_dir", "make_admin_dir", "remove_admin_dir"]


def admin_dir(run_id: str) -> Path:
    """The run's folder of admin sockets (one per node), 0700: only the user running the
    harness may open them. Short on purpose: a Unix socket path has at most 107 bytes,
    which a datadir under a pytest tmp_path can exceed."""
    return Path(tempfile.gettempdir()) / f"chainharness-admin-{run_id}"


def make_admin_dir(run_id: str) -> Path:
    path = admin_dir(run_id)
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def remove_admin_dir(run_id: str) -> None:
    shutil.rmtree(admin_dir(run_id), ignore_errors=True)


class NodeState(StrEnum):
    """What a provider knows about one node."""

    #: Started and not frozen.
    RUNNING = "running"
    #: Frozen (SIGSTOP / docker pause); answers nothing until resumed.
    PAUSED = "paused"
    #: Stopped on purpose (stop or kill); datadir kept.
    STOPPED = "stopped"
    #: Gone without being asked to (crash, OOM).
    EXITED = "exited"
    #: Never started.
    NEW = "new"


@runtime_checkable
class Provider(Protocol):
    """Runs the nodes of one ``Testnet`` somewhere."""

    #: ``process`` or ``docker``.
    name: str
    testnet: Testnet
    #: Unique id of this run; part of every process marker, container label and topic.
    run_id: str

    def setup(self, *, timeout: float = 60.0) -> None:
        """Lay out every node's datadir (genesis, keys, config); a step that takes longer
        than ``timeout`` seconds is a ``NetworkStartError`` naming its command."""
        ...

    def start_nodes(self, indexes: Sequence[int] | None = None) -> None:
        """Start the given nodes (all by default) without waiting for readiness."""
        ...

    def ports(self, index: int) -> dict[str, int]:
        """The node's named ports as the test process reaches them (``rpc`` first)."""
        ...

    def admin_url(self, index: int) -> str:
        """Where the harness (and only it) reaches the node's admin APIs (peering,
        sealing, repair): an ``ipc://`` socket in the run's 0700 admin folder. The
        node's HTTP and WebSocket ports offer tests the public APIs only."""
        ...

    def peer_links(self) -> dict[int, set[int] | None]:
        """Running node → the nodes its client reports connected (by the adapter's
        ``connected_peers``); None for a node whose admin channel did not answer."""
        ...

    def start_sealing(self, indexes: Sequence[int] | None = None) -> None:
        """Let the given signers (all by default) seal; nodes always start without sealing."""
        ...

    def start(self, index: int) -> None:
        """Start one stopped node on its existing datadir."""
        ...

    def stop(self, index: int, *, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after ``timeout``); datadir kept."""
        ...

    def kill(self, index: int) -> None:
        """Immediate stop (SIGKILL); datadir kept."""
        ...

    def pause(self, index: int) -> None:
        """Freeze the node."""
        ...

    def resume(self, index: int) -> None:
        """Unfreeze a paused node."""
        ...

    def state(self, index: int) -> NodeState:
        """Current state of one node."""
        ...

    def parts(self, index: int) -> dict[str, NodeState]:
        """Each part's state, for a client whose nodes run several processes
        (``ClientAdapter.parts``); {} for the others."""
        ...

    def serving_state(self, index: int) -> NodeState:
        """The node's state as its RPC and peers see it: its main part's, if it has
        parts (geth-pos: a node whose geth is stopped serves nothing)."""
        ...

    def act_on_part(self, index: int, part: str, action: str) -> None:
        """``stop``, ``kill``, ``start``, ``pause`` or ``resume`` one part of a running
        node, the others left as they are; a part stopped so does not stop the node."""
        ...

    def logs(self, index: int, tail: int = 200) -> str:
        """The last ``tail`` lines of the node's output."""
        ...

    def reassign_ports(self, index: int) -> None:
        """Give a node fresh ports (after another program took one) and rewrite peer lists."""
        ...

    def upgrade(self, index: int, version: str) -> None:
        """Restart a node on another client version (or binary/image), same datadir."""
        ...

    def client_version(self, index: int) -> str:
        """The client version the node runs now."""
        ...

    def check_version(self, version: str) -> str:
        """Resolve an upgrade target (version, binary or image) without touching any node;
        ``ToolNotFound`` naming the install/build command when it is not available."""
        ...

    def version_ref(self, index: int) -> str:
        """What ``upgrade`` takes to put the node back on the version it runs now."""
        ...

    def default_version_ref(self) -> str:
        """The run's own version (binary or image), for restoring after upgrades."""
        ...

    def partition(self, groups: Sequence[Sequence[int]]) -> str:
        """Cut the network into ``groups``; returns how: ``netfilter`` (packets dropped in
        each node's namespace) or ``peers`` (client-level: admin peer removal)."""
        ...

    def heal(self) -> None:
        """Undo any partition."""
        ...

    def partitioned(self) -> list[list[int]] | None:
        """The partition in force, as every process of the run sees it, or None."""
        ...

    def add_latency(
        self, index: int, latency_ms: int, jitter_ms: int = 0, loss: float = 0.0
    ) -> str:
        """Delay what node ``index`` sends to its peers (and drop ``loss`` of its packets);
        returns how (``toxiproxy``, ``iptables`` for loss)."""
        ...

    def clear_latency(self, index: int | None = None) -> None:
        """Remove the latency of one node (all by default) and restore direct links."""
        ...

    def latencies(self) -> dict[int, dict[str, Any]]:
        """Node index → the latency fault on it now."""
        ...

    def enode(self, index: int) -> str:
        """The node's enode URL as its peers dial it."""
        ...

    def add_peers(self, index: int) -> None:
        """Ask a running node to dial every other node now."""
        ...

    def put_file(self, index: int, name: str, data: bytes) -> str:
        """Write ``name`` into the node's datadir; return the path the node reads it at."""
        ...

    def teardown(self) -> None:
        """Stop every node and remove every datadir; safe to call twice."""
        ...

    def release(self) -> None:
        """Drop this process's handles on the network's processes, which keep running:
        another process (the run's owner) stops them."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable state from which another process can attach."""
        ...

    @property
    def artifacts_dir(self) -> Path:
        """Where logs and other run artifacts are kept after teardown."""
        ...
