"""The local-process backend: every node is a child process on 127.0.0.1.

Layout of a run directory::

    <run_dir>/nodes/<name>/        datadir (removed at teardown)
    <run_dir>/logs/<name>.log      node output (kept as a run artifact)
    <run_dir>/process-state.json   pids, binaries and intent, shared by every attached process

Each node runs in its own process group with ``CHAINHARNESS_RUN=<run id>`` in its
environment. Any process that attaches (an xdist worker) may stop or restart nodes; the
shared state file, guarded by a file lock, keeps their view consistent, and teardown also
sweeps by the environment marker so a node started by anyone is never left behind.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import ChainHarnessError, NetworkStartError
from .._ports import PortAllocator
from .._proc import (
    RUN_MARKER,
    alive,
    every_step,
    find_marked,
    hand_over,
    kill_pids,
    pid_state,
    run_bounded,
)
from .._testnet import Testnet
from ..clients.base import ClientAdapter, Placement
from ._helpers import HelperHost
from ._latency import ToxiproxyLatency
from ._links import ProxiedLinks
from ._parts import NodeParts
from ._peering import AdminPeering
from ._state import RunState
from .base import NodeState, admin_dir, make_admin_dir, remove_admin_dir
from .registry import Backend, NewRun

if TYPE_CHECKING:
    pass

__all__ = ["BACKEND", "ProcessBackend", "ProcessProvider"]


class ProcessProvider(NodeParts, AdminPeering, ToxiproxyLatency, ProxiedLinks, HelperHost):
    """Runs a ``Testnet`` as local processes."""

    name = "process"

    def __init__(
        self,
        testnet: Testnet,
        adapter: ClientAdapter,
        *,
        run_dir: Path,
        run_id: str,
        binary: Path,
        ports: PortAllocator | None = None,
    ) -> None:
        self.testnet = testnet
        self.adapter = adapter
        self.run_dir = run_dir
        self.run_id = run_id
        self.default_binary = binary
        self._ports = ports or PortAllocator()
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self.shared = RunState(run_dir / "process-state.json", testnet)

    # -- paths and shared state ------------------------------------------------------------

    def datadir(self, index: int) -> Path:
        return self.run_dir / "nodes" / self.testnet.nodes[index].name

    def put_file(self, index: int, name: str, data: bytes) -> str:
        path = self.datadir(index) / name
        path.write_bytes(data)
        return str(path)

    def log_path(self, index: int) -> Path:
        return self.run_dir / "logs" / f"{self.testnet.nodes[index].name}.log"

    @property
    def artifacts_dir(self) -> Path:
        return self.run_dir / "logs"

    def _binary(self, index: int) -> Path:
        return Path(self.shared.entry(index).get("binary") or self.default_binary)

    # -- lifecycle -------------------------------------------------------------------------

    def setup(self, *, timeout: float = 60.0) -> None:
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "nodes").mkdir(parents=True, exist_ok=True, mode=0o700)
        make_admin_dir(self.run_id)
        # The helpers start while the datadirs are made; nodes start once they serve.
        helpers_ready = self.start_helpers(timeout)
        self.testnet.accounts()  # derive once here, not once per thread
        with ThreadPoolExecutor(max_workers=min(8, len(self.testnet.nodes))) as pool:
            list(pool.map(lambda n: self._prepare(n.index, timeout), self.testnet.nodes))
        self.shared.save()
        helpers_ready()

    def _place(self, index: int, binary: Path | None = None) -> Placement:
        node = self.testnet.nodes[index]
        return Placement.local(
            self.testnet,
            node,
            self.datadir(index),
            binary or self.default_binary,
            ipc_path=str(admin_dir(self.run_id) / f"{node.name}.ipc"),
            peers=tuple(self.enode(n.index) for n in self.testnet.nodes if n.index != index),
            peer_routes=self.link_routes(index) if self.proxied_links() else {},
            own_host=_own_host(index) if self.adapter.own_host_roles else "",
            refuse=tuple(
                f"{_own_host(other.index)}/32"
                for other in self.testnet.nodes
                if self.adapter.own_host_roles and other.index != index
            ),
        )

    def ports(self, index: int) -> dict[str, int]:
        return dict(self.testnet.nodes[index].ports)

    def admin_url(self, index: int) -> str:
        return f"ipc://{admin_dir(self.run_id) / self.testnet.nodes[index].name}.ipc"

    def _prepare(self, index: int, timeout: float) -> None:
        node = self.testnet.nodes[index]
        place = self._place(index)
        self.adapter.write_files(self.testnet, node, self.datadir(index), place)
        init = self.adapter.init_command(place)
        if not init:
            return
        try:
            result = run_bounded(init, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"") + (exc.stderr or b"")
            text = out.decode(errors="replace") if isinstance(out, bytes) else str(out)
            tail = "\n".join(text.splitlines()[-20:]) or "(no output)"
            raise NetworkStartError(
                f"{node.name}: `{shlex.join(init)}` did not finish within {timeout:g}s "
                f"(ini chain_start_timeout); its last output:\n{tail}"
            ) from None
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-50:])
            raise NetworkStartError(f"{node.name}: {self.adapter.name} init failed:\n{tail}")

    def start_nodes(self, indexes: Sequence[int] | None = None) -> None:
        # Popen is cheap; readiness is awaited by the caller, for all nodes at once.
        for index in range(len(self.testnet.nodes)) if indexes is None else indexes:
            self.start(index)

    def start(self, index: int) -> None:
        was = self.state(index)
        if was in (NodeState.RUNNING, NodeState.PAUSED):
            return
        if was is not NodeState.NEW:
            self._before_restart(index)
        node = self.testnet.nodes[index]
        binary = self._binary(index)
        # Never seal from the first moment: a signer that seals on a stale head forks the
        # chain. The chain layer starts sealing once the node has caught up.
        place = self._place(index, binary)
        argv = self.adapter.command(self.testnet, node, place, seal=False)
        extra_env = self.adapter.environment(self.testnet, node, place)
        previous = self._children.pop(index, None)
        if previous is not None:
            previous.poll()  # it crashed or was killed elsewhere: collect its exit status
        log = self.log_path(index)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            out.write(f"\n=== chainharness: starting {node.name}: {shlex.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.datadir(index),
                env={**os.environ, **extra_env, RUN_MARKER: self.run_id},
                process_group=0,
            )
        self._children[index] = proc
        with self.shared.edit() as data:
            data["nodes"].setdefault(str(index), {}).update(
                pid=proc.pid, intent="running", binary=str(binary)
            )
            # Every pid ever started: a node killed by another xdist worker is re-parented
            # to the owner when its starter exits, and only the owner can reap it then.
            data.setdefault("started", []).append(proc.pid)

    def start_sealing(self, indexes: Sequence[int] | None = None) -> None:
        for index in range(len(self.testnet.nodes)) if indexes is None else indexes:
            self.adapter.start_sealing(self.testnet.nodes[index], self.admin_url(index))

    def _pid(self, index: int) -> int | None:
        pid = self.shared.entry(index).get("pid")
        return int(pid) if pid else None

    def state(self, index: int) -> NodeState:
        entry = self.shared.entry(index)
        pid = entry.get("pid")
        child = self._children.get(index)
        if child is not None and child.pid == pid:
            child.poll()  # reap our own child so it does not linger as a zombie
        if not pid:
            return NodeState.NEW if not entry else NodeState.STOPPED
        letter = pid_state(int(pid))
        if letter is None or letter in ("Z", "X"):
            return NodeState.STOPPED if entry.get("intent") == "stopped" else NodeState.EXITED
        if letter in ("T", "t"):
            return NodeState.PAUSED
        return NodeState.RUNNING

    def _signal_and_wait(self, index: int, sig: int, timeout: float) -> None:
        pid = self._pid(index)
        self.shared.record(index, intent="stopped")
        if pid is None:
            return
        left = kill_pids([pid], sig=sig, timeout=timeout)
        if left:
            kill_pids(left, sig=signal.SIGKILL)
        child = self._children.pop(index, None)
        if child is not None:
            child.wait(timeout=5)

    def stop(self, index: int, *, timeout: float = 10.0) -> None:
        self._signal_and_wait(index, self.adapter.stop_signal, timeout)

    def kill(self, index: int) -> None:
        self._signal_and_wait(index, signal.SIGKILL, 5.0)

    def pause(self, index: int) -> None:
        pid = self._require_pid(index, "pause")
        os.killpg(pid, signal.SIGSTOP)
        # SIGSTOP is asynchronous; callers expect the node frozen when pause() returns.
        self._wait_letter(pid, ("T", "t"))

    def resume(self, index: int) -> None:
        pid = self._require_pid(index, "resume")
        os.killpg(pid, signal.SIGCONT)
        self._wait_letter(pid, ("R", "S", "D"))
        self._after_resume(index)

    def _wait_letter(self, pid: int, letters: tuple[str, ...]) -> None:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and pid_state(pid) not in letters:
            time.sleep(0.002)

    def _require_pid(self, index: int, action: str) -> int:
        pid = self._pid(index)
        if pid is None or not alive(pid):
            name = self.testnet.nodes[index].name
            raise ChainHarnessError(f"cannot {action} {name}: it is not running")
        return pid

    def logs(self, index: int, tail: int = 200) -> str:
        try:
            lines = self.log_path(index).read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-tail:]) if tail > 0 else ""

    def reassign_ports(self, index: int) -> None:
        node = self.testnet.nodes[index]
        roles = self.adapter.port_roles
        node.ports = dict(zip(roles, self._ports.take(len(roles)), strict=True))
        # The node's own files name its listen address; the others' name it as a peer.
        self.adapter.write_files(self.testnet, node, self.datadir(index), self._place(index))
        for other in self.testnet.nodes:
            if other.index != index:
                self.adapter.update_peers(self.datadir(other.index), self._place(other.index).peers)
        self.shared.save()
        if self.proxied_links():
            self.retarget_links(index)

    def check_version(self, version: str) -> str:
        return str(self.adapter.find_binary(version))

    def version_ref(self, index: int) -> str:
        return str(self._binary(index))

    def default_version_ref(self) -> str:
        return str(self.default_binary)

    def upgrade(self, index: int, version: str) -> None:
        binary = self.check_version(version)
        self.stop(index)
        self.shared.record(index, binary=str(binary))
        self.start(index)

    def client_version(self, index: int) -> str:
        return self.adapter.version(self._binary(index))

    # -- partitions (client-level, from AdminPeering; link proxies for other clients) ---

    def partition(self, groups: Sequence[Sequence[int]]) -> str:
        if not self.proxied_links():
            return super().partition(groups)
        self._save_partition([list(g) for g in groups])
        self.cut_links(groups)
        return "proxies"

    def heal(self) -> None:
        if not self.proxied_links():
            super().heal()
            return
        self._save_partition(None)
        self.cut_links(None)

    def enode(self, index: int) -> str:
        node = self.testnet.nodes[index]
        return self.adapter.peer_address(node, node.host, node.ports)

    def _proxy_host(self) -> str:
        return "127.0.0.1"

    def _upstream(self, index: int, role: str) -> str:
        node = self.testnet.nodes[index]
        host = _own_host(index) if role in self.adapter.own_host_roles else node.host
        return f"{host}:{node.ports[role]}"

    # -- teardown and attach ---------------------------------------------------------------

    def teardown(self) -> None:
        every_step(
            self._kill_nodes,
            lambda: shutil.rmtree(self.run_dir / "nodes", ignore_errors=True),
            self.stop_helpers,
            lambda: remove_admin_dir(self.run_id),
        )

    def _kill_nodes(self) -> None:
        data = self.shared.load()
        pids = {int(e["pid"]) for e in data["nodes"].values() if e.get("pid")}
        pids.update(int(p) for p in data.get("started", []))
        pids.update(find_marked(self.run_id))
        kill_pids(sorted(pids), sig=signal.SIGKILL)
        for child in self._children.values():
            child.poll()
        self._children.clear()

    def release(self) -> None:
        hand_over(self._children)
        self.release_helpers()

    def describe(self) -> dict[str, Any]:
        return {
            "provider": self.name,
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "binary": str(self.default_binary),
            "testnet": self.testnet.to_dict(),
        }

    @classmethod
    def attach(cls, description: dict[str, Any], adapter: ClientAdapter) -> ProcessProvider:
        """A provider for a network another process started."""
        provider = cls(
            Testnet.from_dict(description["testnet"]),
            adapter,
            run_dir=Path(description["run_dir"]),
            run_id=description["run_id"],
            binary=Path(description["binary"]),
        )
        provider.shared.refresh()
        return provider


def _own_host(index: int) -> str:
    """Node ``index``'s own loopback address (Linux answers on all of 127.0.0.0/8)."""
    return f"127.0.1.{index + 1}"


class ProcessBackend(Backend):
    """Processes on this host, each node on its own loopback address."""

    name = "process"

    def create(self, run: NewRun) -> tuple[ProcessProvider, str | None]:
        binary = run.adapter.find_binary(explicit=run.settings.binary)
        # Before anything starts: a binary that cannot say its version (a wrapper that
        # hangs, the wrong file) is ToolNotFound naming the command, not a node that
        # later hangs in its init until the start timeout.
        version = run.adapter.version(binary)
        provider = ProcessProvider(
            run.testnet, run.adapter, run_dir=run.run_dir, run_id=run.run_id, binary=binary
        )
        return provider, version

    def attach(self, description: dict[str, Any], adapter: ClientAdapter) -> ProcessProvider:
        return ProcessProvider.attach(description, adapter)


BACKEND = ProcessBackend()
