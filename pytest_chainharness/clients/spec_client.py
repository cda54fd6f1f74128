"""The adapter for a client spec file: N nodes of a team's own binary, from YAML alone.

What the spec says, in the order the harness does it (process backend)::

    network_init   once, in <run>/network            {nodes} {network_dir} {seed}
    node_init      once per node, in its home         + {index} {name} {home} {host} {bind} {port.X}
    node_id        per node, its output is {id}
    files, start   at every start                     + {id} {peer} {peers} {all_peers}

Heads, peer counts and readiness are the spec's HTTP probes; the node agents follow the
head probe. ``{peers}`` are rendered at each start, so a node restarted after another
one moved ports dials the new address.

On docker every path is the host's: a node's container mounts its home, the network
folder and (without a spec ``image:``) the binary at the paths they have on the host, so
the set-up commands run on the host give what they would in the container. With an
``image:``, which carries the binary, they run in one-off containers of that image.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import NetworkStartError, ToolNotFound, UnsupportedAction
from .._proc import run_bounded
from .._rpc import RPCError, dig, http_json
from .._testnet import NodeSpec, Testnet
from ._files import edit_file
from ._redial import PeerRedial
from .base import Head, Helper, NoAdminPeers, Placement, Repairer, Route
from .spec import ClientSpec, Probe, find_spec_binary, render, request_body

if TYPE_CHECKING:
    from ..chain import Chain

__all__ = ["SpecAdapter"]

#: Longest a network_init, node_init or node_id command may take.
COMMAND_TIMEOUT = 120.0
#: A spec client's ports inside its container: role i listens on CONTAINER_PORT_BASE + i.
CONTAINER_PORT_BASE = 30000
#: Seconds a short node's peer count stands before its spec's ``redial`` is asked.
REDIAL_AFTER = 15.0
_ID_FILE = ".chainharness-id"
_NETWORK_LOCK = threading.Lock()


class SpecAdapter(NoAdminPeers):
    """Runs the nodes a ``ClientSpec`` describes."""

    max_nodes = 32
    # A team's node is not restarted behind its back while it starts: a slow first
    # answer or slow peering (CometBFT's redial backoff, 32 nodes on two cores) is the
    # node's own behaviour, and the start's timeout reports it. Only a spec that says
    # how to redial has its stalled nodes restarted (see __init__).
    hung_restart_after: float | None = None
    dials_when_told = False
    poa = False
    evm = False
    admin_peering = False
    own_host_roles: tuple[str, ...] = ()
    backends: tuple[str, ...] = ("docker", "kubernetes", "process")
    parts: tuple[str, ...] = ()
    main_part: str | None = None
    event_kinds: tuple[str, ...] = ()

    def __init__(self, spec: ClientSpec, root: Path | None = None, name: str = "") -> None:
        self.spec = spec
        self.root = root
        #: What ``--chain-client`` named (a built-in name, or the spec file's path), so an
        #: attached process loads the same spec.
        self.name = name or str(spec.path)
        self.has_peers = spec.peers is not None
        self.port_roles: tuple[str, ...] = spec.ports
        self.api_ports: tuple[str, ...] = spec.ports
        self.stop_signal = spec.stop_signal
        self.peer_roles: tuple[str, ...] = tuple(
            dict.fromkeys(re.findall(r"\{port\.([a-z][a-z0-9_]*)\}", spec.peer or ""))
        )
        self.display_name = spec.client
        self.txpool_metric: str | None = spec.txpool_metric
        #: Without an ``image:`` the node runs the host's binary on the harness base image.
        self.image = spec.image or _base_image()
        self.host_binary = spec.image is None
        #: A spec that says how to redial: once a short node's peer count stood this
        #: long (longer than CometBFT's own redial interval, 5-8 s, so it only catches
        #: a pair that client gave up on).
        self.redial_after: float | None = REDIAL_AFTER if spec.redial is not None else None
        #: At start, a node whose peer count stood this long after a redial is restarted:
        #: CometBFT can keep a connection its peer set has lost (two connections of one
        #: pair, and the wrong one removed), and its peer rejects every redial as a
        #: duplicate until the orphan is gone.
        self.stalled_peering_restart_after: float | None = (
            2 * REDIAL_AFTER if spec.redial is not None else None
        )

    # -- binary ----------------------------------------------------------------------------

    def find_binary(self, version: str | None = None, *, explicit: str | None = None) -> Path:
        if explicit or version:
            # Another version of a spec client is another binary (an upgrade target).
            path = Path(explicit or str(version)).expanduser().resolve()
            if not path.is_file() or not os.access(path, os.X_OK):
                raise ToolNotFound(
                    f"client {self.spec.client}: no executable binary {explicit or version} "
                    "(a spec client's version is the path of its binary)"
                )
            return path
        return find_spec_binary(self.spec, root=self.root)

    def version(self, binary: Path) -> str:
        if self.spec.version is None:
            return "unknown"
        argv = self._argv(self.spec.version, str(binary), {})
        try:
            done = run_bounded(argv, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"
        return _first_line(done) or "unknown"

    def node_version(self, node: NodeSpec, place: Placement) -> str:
        if self.spec.version is None:
            return "unknown"
        if self.host_binary or place.runner is None:
            return self.version(Path(place.binary))  # the host's binary is the one running
        argv = self._argv(self.spec.version, place.binary, {})
        try:
            done = place.runner(argv, Path(place.datadir), {}, 30.0)
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"
        return _first_line(done) or "unknown"

    # -- layout ----------------------------------------------------------------------------

    def write_files(
        self, testnet: Testnet, node: NodeSpec, datadir: Path, place: Placement
    ) -> None:
        datadir.mkdir(parents=True, exist_ok=True)
        network_dir = _network_dir(datadir)
        with _NETWORK_LOCK:
            marker = network_dir / ".chainharness-initialised"
            if not marker.exists():
                network_dir.mkdir(parents=True, exist_ok=True)
                values = self._network_values(testnet, network_dir)
                for command in self.spec.network_init:
                    self._run(command, place, values, network_dir, "network_init")
                marker.touch()
        values = self._node_values(testnet, node, place)
        home = Path(values["home"])
        home.mkdir(parents=True, exist_ok=True)
        initialised = datadir / ".chainharness-node-initialised"
        if not initialised.exists():
            for command in self.spec.node_init:
                self._run(command, place, values, home, f"{node.name}: node_init")
            initialised.touch()
        if self.spec.node_id is not None:
            out = self._run(self.spec.node_id, place, values, home, f"{node.name}: node_id")
            lines = [line.strip() for line in out.splitlines() if line.strip()]
            if not lines:
                argv = self._argv(self.spec.node_id, place.binary, values)
                raise NetworkStartError(
                    f"{node.name}: node_id `{shlex.join(argv)}` printed nothing (its output "
                    "is the node's {id})"
                )
            (datadir / _ID_FILE).write_text(lines[-1])

    def init_command(self, place: Placement) -> list[str]:
        return []  # node_init ran in write_files, where its output is read

    def update_peers(self, datadir: Path, peers: Sequence[str]) -> None:
        return None  # {peers} are rendered at every start

    def container_ports(self) -> dict[str, int]:
        return {role: CONTAINER_PORT_BASE + i for i, role in enumerate(self.port_roles)}

    def container_binary(self, binary: Path | None) -> str:
        if not self.host_binary:
            return self.spec.binary  # on the image's PATH, or an absolute path in it
        return str(binary or self.find_binary())

    def container_mounts(self, datadir: Path, binary: Path | None) -> dict[Path, str]:
        mounts = {_network_dir(datadir): "rw"}
        if self.host_binary:
            mounts[binary or self.find_binary()] = "ro"
        return mounts

    def command(
        self, testnet: Testnet, node: NodeSpec, place: Placement, *, seal: bool
    ) -> list[str]:
        values = self._full_values(testnet, node, place)
        for target, settings in self.spec.files.items():
            rendered = {
                key: render(value, values) if isinstance(value, str) else value
                for key, value in settings.items()
            }
            edit_file(Path(render(target, values)), rendered)
        return self._argv(self.spec.start, place.binary, values)

    def identity(self, seed: int, index: int, *, nodes: int, signers: int | None) -> dict[str, str]:
        return {}  # a spec node makes its own keys (network_init, node_init)

    def peer_address(self, node: NodeSpec, host: str, ports: dict[str, int]) -> str:
        return ""  # the spec renders {peers} at each start

    def environment(self, testnet: Testnet, node: NodeSpec, place: Placement) -> dict[str, str]:
        values = self._full_values(testnet, node, place)
        return {name: render(value, values) for name, value in self.spec.env.items()}

    def agent_args(self, node: NodeSpec) -> list[str]:
        values = self._probe_values(node)
        probes = {"head": _rendered(self.spec.head, values)}
        if self.spec.peers is not None:
            probes["peers"] = _rendered(self.spec.peers, values)
        return ["--probe", json.dumps(probes)]

    def start_sealing(self, node: NodeSpec, admin_url: str) -> None:
        return None  # a spec client produces blocks on its own

    def helpers(self, testnet: Testnet, admin: Path, alive_while: Path) -> list[Helper]:
        return []

    def repairer(self, chain: Chain) -> Repairer | None:
        if self.redial_after is None or not self.has_peers:
            return None
        return PeerRedial(chain, self.redial_after)

    def redial(self, testnet: Testnet, node: NodeSpec, place: Placement) -> None:
        probe = self.spec.redial
        if probe is None:
            return
        values = self._probe_values(node)
        for target in self._peer_list(testnet, node, place):
            values["target"] = target
            body = request_body(probe, values)
            http_json(render(probe.url, values), method=probe.method, body=body)

    def metrics_url(self, node: NodeSpec) -> str | None:
        if self.spec.metrics is None:
            return None
        return render(self.spec.metrics, self._probe_values(node))

    def ws_url(self, node: NodeSpec) -> str:
        port = node.ports.get("ws")
        if port is None:
            raise UnsupportedAction(f"client {self.spec.client} has no port named ws")
        return f"ws://{node.host}:{port}"

    def port_conflict(self, log_text: str) -> bool:
        return "address already in use" in log_text.lower()

    # -- probes ----------------------------------------------------------------------------

    def head(self, node: NodeSpec) -> Head:
        answer = self._ask(self.spec.head, node)
        height = _as_int(
            dig(answer, self.spec.head.paths["height"]), self.spec.head.paths["height"]
        )
        if "hash" in self.spec.head.paths:
            return Head(height, str(dig(answer, self.spec.head.paths["hash"])))
        return Head(height, str(height))

    def catching_up(self, node: NodeSpec) -> str | None:
        # A spec describes one process with one head; the waits compare that head.
        return None

    def peer_count(self, node: NodeSpec) -> int:
        if self.spec.peers is None:
            return 0
        answer = self._ask(self.spec.peers, node)
        return _as_int(dig(answer, self.spec.peers.paths["count"]), self.spec.peers.paths["count"])

    def evm_version(self, node: NodeSpec) -> str:
        raise UnsupportedAction(f"client {self.display_name} is not an Ethereum chain (no EVM)")

    def block_hashes(self, node: NodeSpec, first: int, last: int) -> dict[int, str] | None:
        return None  # a spec's head probe tells the head only

    def check_ready(self, node: NodeSpec) -> None:
        ready = self.spec.ready
        if ready is None:
            self.head(node)
            return
        kind, value = ready
        values = self._probe_values(node)
        if kind == "http":
            http_json(render(value, values), parse=False)
        elif kind == "tcp":
            import socket

            host, _, port = render(value, values).rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=2).close()
            except OSError as exc:
                raise RPCError(f"tcp {host}:{port}: {exc}") from exc
        else:
            argv = self._argv(value, str(self.find_binary()), values)
            done = run_bounded(argv, timeout=10)
            if done.returncode != 0:
                raise RPCError(f"`{shlex.join(argv)}` exited with {done.returncode}")
        self.head(node)

    def _ask(self, probe: Probe, node: NodeSpec) -> Any:
        values = self._probe_values(node)
        body = request_body(probe, values)
        return http_json(render(probe.url, values), method=probe.method, body=body)

    # -- placeholders ----------------------------------------------------------------------

    def _network_values(self, testnet: Testnet, network_dir: Path) -> dict[str, str]:
        return {
            "nodes": str(len(testnet.nodes)),
            "network_dir": str(network_dir),
            "seed": str(testnet.seed),
        }

    def _node_values(self, testnet: Testnet, node: NodeSpec, place: Placement) -> dict[str, str]:
        values = self._network_values(testnet, _network_dir(Path(place.datadir)))
        values.update(index=str(node.index), name=node.name)
        values["home"] = (
            render(self.spec.home, values) if self.spec.home is not None else place.datadir
        )
        values.update(host=node.host, bind=place.listen)
        values.update({f"port.{role}": str(port) for role, port in place.ports.items()})
        return values

    def _probe_values(self, node: NodeSpec) -> dict[str, str]:
        values = {"host": node.host, "index": str(node.index), "name": node.name}
        values.update({f"port.{role}": str(port) for role, port in node.ports.items()})
        return values

    def _full_values(self, testnet: Testnet, node: NodeSpec, place: Placement) -> dict[str, str]:
        own = self._node_values(testnet, node, place)
        peers = self._addresses(testnet, node, place, own)
        own["peers"] = ",".join(p for i, p in enumerate(peers) if i != node.index)
        own["all_peers"] = ",".join(peers)
        return own

    def _peer_list(self, testnet: Testnet, node: NodeSpec, place: Placement) -> list[str]:
        """Where ``node`` dials each other node (its ``{peers}``, one by one)."""
        own = self._node_values(testnet, node, place)
        peers = self._addresses(testnet, node, place, own)
        return [p for i, p in enumerate(peers) if i != node.index and p]

    def _addresses(
        self, testnet: Testnet, node: NodeSpec, place: Placement, own: dict[str, str]
    ) -> list[str]:
        """Every node's ``peer`` address as ``node`` dials it, by index; sets ``own``'s
        ``{peer}`` and ``{id}``."""
        nodes_dir = Path(place.datadir).parent
        peers: list[str] = []
        for other in testnet.nodes:
            theirs = dict(own)
            theirs.update(index=str(other.index), name=other.name)
            # Its container's address, or its link's proxy (partitions, latency).
            route = place.peer_routes.get(other.index, Route(other.host, other.ports))
            theirs["host"] = route.host
            theirs.update({f"port.{role}": str(port) for role, port in route.ports.items()})
            id_file = nodes_dir / other.name / _ID_FILE
            if self.spec.node_id is not None:
                theirs["id"] = id_file.read_text().strip() if id_file.exists() else ""
            peer = render(self.spec.peer, theirs) if self.spec.peer is not None else ""
            peers.append(peer)
            if other.index == node.index:
                own["peer"] = peer
                if "id" in theirs:
                    own["id"] = theirs["id"]
        return peers

    def _argv(self, template: Sequence[str], binary: str, values: dict[str, str]) -> list[str]:
        argv = [render(part, values) for part in template]
        # The spec names its binary by the binary: key (or that path's last part, as in
        # `binary: /opt/x/my-chain` with `[my-chain, init]`); the harness runs the one it
        # found.
        if argv and argv[0] in (self.spec.binary, Path(self.spec.binary).name):
            argv[0] = binary
        return argv

    def _run(
        self,
        template: Sequence[str],
        place: Placement,
        values: dict[str, str],
        cwd: Path,
        what: str,
    ) -> str:
        argv = self._argv(template, place.binary, values)
        env = {name: _render_known(value, values) for name, value in self.spec.env.items()}
        # The host's binary at the host's paths gives what the container would; only an
        # image's own binary needs the image.
        use = _on_host if self.host_binary or place.runner is None else place.runner
        try:
            done = use(argv, cwd, env, COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise NetworkStartError(
                f"{what}: `{shlex.join(argv)}` did not finish within {COMMAND_TIMEOUT:g}s"
            ) from None
        except OSError as exc:
            raise NetworkStartError(f"{what}: `{shlex.join(argv)}` cannot run: {exc}") from None
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:]) or "(no output)"
            raise NetworkStartError(
                f"{what}: `{shlex.join(argv)}` exited with status {done.returncode}; "
                f"its last output:\n{tail}"
            )
        return done.stdout


def _on_host(
    argv: list[str], cwd: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return run_bounded(argv, cwd=cwd, text=True, timeout=timeout, env={**os.environ, **env})


def _first_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return lines[0].strip() if lines and done.returncode == 0 else ""


def _render_known(template: str, values: dict[str, str]) -> str:
    # network_init runs before any node has a {name}: such a variable stays as written.
    try:
        return render(template, values)
    except KeyError:
        return template


def _base_image() -> str:
    from ..images import BASE_IMAGE

    return BASE_IMAGE


def _rendered(probe: Probe, values: dict[str, str]) -> dict[str, Any]:
    return {
        "url": render(probe.url, values),
        "method": probe.method,
        "body": request_body(probe, values),
        "paths": dict(probe.paths),
    }


def _network_dir(datadir: Path) -> Path:
    # <run>/nodes/<name> → <run>/network
    return datadir.parent.parent / "network"


def _as_int(value: Any, path: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise RPCError(f"{path!r} is {value!r}, not a number") from None
