"""The seam between the harness and a blockchain client.

A ``ClientAdapter`` knows how to lay out a datadir for one node and which command runs it;
it knows nothing about where the node runs. Providers (process, docker) call it with the
paths as the node will see them.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .._errors import UnsupportedAction
from .._testnet import NodeSpec, Testnet

if TYPE_CHECKING:
    from ..chain import Chain

__all__ = [
    "ClientAdapter",
    "CommandRunner",
    "Head",
    "Helper",
    "NoAdminPeers",
    "Placement",
    "Repairer",
    "Route",
    "parts_socket",
]


@dataclass(frozen=True)
class Head:
    """The head block of one node (for a client without block hashes, ``hash`` is what
    its head probe gives, or the height)."""

    number: int
    hash: str

    def __str__(self) -> str:
        return f"#{self.number} {self.hash[:10]}"


@dataclass(frozen=True)
class Helper:
    """A process on the harness's host that a node needs for the whole run (geth: the
    signer that holds a Clique key). The provider starts it before any node, marked as
    the run's, and stops it at teardown."""

    #: Log name (``<run>/logs/<name>.log``) and what errors call it.
    name: str
    argv: list[str]
    #: Added to its environment: secrets go here, never into argv (the process list).
    env: dict[str, str]
    #: Paths that exist once the helper serves (sockets).
    ready: tuple[Path, ...]


class Repairer(Protocol):
    """A client's repair for a stall it cannot leave on its own; every wait ticks it."""

    #: Short name, as in ``--chain-repair`` reports and the ``repair`` bus event.
    name: str

    def tick(self) -> str | None:
        """Look (cheaply; rate-limit inside); repair if needed; return what was done."""
        ...


@dataclass(frozen=True)
class Route:
    """Where a node dials one peer: the peer itself, or the proxy of their link."""

    host: str
    #: Port role → port (the roles ``ClientAdapter.peer_roles`` names).
    ports: dict[str, int]


#: Runs one set-up command (argv, working directory, extra environment, timeout) where the
#: node runs, with the output captured: a host process, or a one-off container of the
#: node's image.
CommandRunner = Callable[
    [list[str], Path, dict[str, str], float], "subprocess.CompletedProcess[str]"
]


def parts_socket(ipc_path: str) -> str:
    """Where a node's supervisor answers faults on one part (``pos_node.ask``): beside
    the node's admin socket, in the run's admin folder, which a container sees at the
    same path, so the host reaches it there on every backend."""
    return str(PurePosixPath(ipc_path).with_suffix(".parts"))


@dataclass(frozen=True)
class Placement:
    """A node's paths, ports and peers as the node itself sees them.

    For a local process these are the host's (``Placement.local``); in a container the
    datadir is a mount point, the ports are the container's own and peers are dialled on
    the run's docker network.
    """

    datadir: str
    binary: str
    #: Address the node's RPC and p2p listeners bind to.
    listen: str
    #: Port role → the port the node listens on (``ClientAdapter.port_roles``).
    ports: dict[str, int]
    #: CIDR the node may dial peers in.
    netrestrict: str
    #: enode URLs the node dials at start.
    peers: tuple[str, ...]
    #: The admin socket the node listens on (see ``Provider.admin_url``).
    ipc_path: str = ""
    #: Peer index → where this node dials that peer, when that is not the peer's own
    #: ``NodeSpec`` address: its container address, or its link's proxy
    #: (``providers/_links.py``).
    peer_routes: dict[int, Route] = field(default_factory=dict)
    #: Runs the client's set-up commands; None: on this host.
    runner: CommandRunner | None = None
    #: The address the listeners of ``ClientAdapter.own_host_roles`` bind to: one this
    #: node alone has (on a shared host, a loopback address of its own), else ``listen``.
    own_host: str = ""
    #: CIDRs of the other nodes' own addresses. A client that learns its peers'
    #: addresses by itself (libp2p's identify) must refuse to dial them, so it reaches
    #: its peers only through ``peer_routes`` (links a partition can cut).
    refuse: tuple[str, ...] = ()

    @classmethod
    def local(
        cls,
        testnet: Testnet,
        node: NodeSpec,
        datadir: Path,
        binary: Path,
        ipc_path: str = "",
        peers: tuple[str, ...] = (),
        peer_routes: dict[int, Route] | None = None,
        own_host: str = "",
        refuse: tuple[str, ...] = (),
    ) -> Placement:
        return cls(
            datadir=str(datadir),
            binary=str(binary),
            listen=node.host,
            ports=dict(node.ports),
            netrestrict="127.0.0.0/8",
            peers=peers,
            peer_routes=dict(peer_routes or {}),
            ipc_path=ipc_path,
            own_host=own_host or node.host,
            refuse=refuse,
        )


class NoAdminPeers:
    """The peer part of a ``ClientAdapter`` for a client without an admin API for peers
    (``admin_peering = False``): the harness never asks it to add or drop one, and no
    node waits to be told to produce blocks."""

    def peer_id(self, node: NodeSpec) -> str:
        return ""

    def add_peer(self, admin_url: str, address: str) -> None:
        raise self._no_admin_api()

    def remove_peer(self, admin_url: str, address: str) -> None:
        raise self._no_admin_api()

    def redial(self, testnet: Testnet, node: NodeSpec, place: Placement) -> None:
        return None  # it dials the peers its command line names, or has none

    def before_restart(
        self,
        testnet: Testnet,
        node: NodeSpec,
        datadir: Path,
        place: Placement,
        peer_admin: Mapping[int, str],
    ) -> None:
        return None

    def tell_restarted(
        self, testnet: Testnet, node: NodeSpec, peer_admin: Mapping[int, str]
    ) -> None:
        return None

    def _no_admin_api(self) -> UnsupportedAction:
        name = getattr(self, "display_name", type(self).__name__)
        return UnsupportedAction(f"client {name} has no admin API for peers")

    def connected_peers(self, admin_url: str) -> set[str]:
        return set()

    def seals(self, node: NodeSpec) -> bool:
        return False  # it produces blocks on its own, from the start

    def finalized(self, node: NodeSpec) -> Head | None:
        name = getattr(self, "display_name", type(self).__name__)
        raise UnsupportedAction(
            f"client {name} has no finality to wait for (geth-pos has: --chain-client=geth-pos)"
        )


@runtime_checkable
class ClientAdapter(Protocol):
    """How to prepare and run one kind of node."""

    #: Name used on the command line (``--chain-client``; a spec file's path).
    name: str
    #: An Ethereum chain: accounts, transfers, ``w3`` (others raise ``UnsupportedAction``).
    evm: bool
    #: Peers are added and removed through the admin channel (``admin_addPeer``): what
    #: partitions and latency use on the process backend.
    admin_peering: bool
    #: Largest network this client can form (anvil: 1).
    max_nodes: int
    #: Blocks carry more than 32 bytes of extraData (Clique); web3 needs the POA middleware.
    poa: bool
    #: The client has peers whose count is part of readiness.
    has_peers: bool
    #: One port per role per node; ``rpc`` (the main API) first, every client has it.
    port_roles: tuple[str, ...]
    #: The roles the test process reaches (the ones docker publishes); the others are
    #: only between nodes.
    api_ports: tuple[str, ...]
    #: What a graceful stop sends.
    stop_signal: signal.Signals
    #: The port roles a peer address names (what a link proxy must carry).
    peer_roles: tuple[str, ...]
    #: Roles whose listener binds ``Placement.own_host`` (the link proxies' upstream
    #: there too): a client whose nodes would otherwise dial each other directly at the
    #: addresses they learn, past the links. () for most clients.
    own_host_roles: tuple[str, ...]
    #: Project root: where the tools folder (``.tools``) is looked up; None: the default.
    root: Path | None
    #: At start, a node whose API has not answered this many seconds is restarted on
    #: fresh ports (geth can hang instead of exiting when a port is taken); None: never,
    #: the start's timeout reports it.
    hung_restart_after: float | None
    #: At start, a node still short of peers this many seconds after every node answered,
    #: its peer count unchanged as long, is restarted, so it dials afresh (geth keeps a
    #: failed dial for ~35 s); None: never (a client that redials on its own: a restart
    #: would only drop its peers' links).
    stalled_peering_restart_after: float | None
    #: The node dials no peer at its first start: once every node answers, the start
    #: asks each one to (``redial``), so no dial goes to a peer not listening yet (geth
    #: does not dial a peer again for 35 s after a failed dial). False: it dials its
    #: peers by itself from the start.
    dials_when_told: bool
    #: The docker backend's image when ``--chain-image`` names none.
    image: str
    #: Event kinds its nodes' agents publish beyond the harness's (``block``, ``peers``,
    #: ``health``): geth-pos's ``beacon_head`` and ``finalized``.
    event_kinds: tuple[str, ...]
    #: The backends its nodes run on (of "docker", "process"): another one asked for is
    #: a usage error, and ``--chain-backend=auto`` picks among these.
    backends: tuple[str, ...]
    #: The metric (as ``metrics_url`` names it) counting a node's pending transactions:
    #: the run report's txpool picture; None: the client has no such metric.
    txpool_metric: str | None
    #: Its containers run the host's binary, mounted (a spec without ``image:``): an
    #: upgrade on docker swaps that binary, not the image, and ``--chain-backend=auto``
    #: leaves the client on the host.
    host_binary: bool
    #: The processes a node runs under the node supervisor (``clients/pos_node``), each
    #: of which a fault can reach alone (``Node.kill(part=...)``); () for a node that is
    #: one process.
    parts: tuple[str, ...]
    #: The part that serves the node's RPC and dials its peers (geth-pos: geth): while
    #: it is down the node is not running for the waits, and its start is a restart for
    #: the peering (``before_restart``). None when ``parts`` is empty.
    main_part: str | None

    @property
    def display_name(self) -> str:
        """Name in the header, reports and the gate verdict."""
        ...

    def find_binary(self, version: str | None = None, *, explicit: str | None = None) -> Path:
        """The binary for ``version`` (default when None); raises ``ToolNotFound``."""
        ...

    def version(self, binary: Path) -> str:
        """The version string the binary reports."""
        ...

    def node_version(self, node: NodeSpec, place: Placement) -> str:
        """The version a running node (in a container: its image's binary) reports."""
        ...

    def write_files(
        self, testnet: Testnet, node: NodeSpec, datadir: Path, place: Placement
    ) -> None:
        """Write what the node reads at start (genesis, keys, peer config) into ``datadir``."""
        ...

    def init_command(self, place: Placement) -> list[str]:
        """The argv that initialises the datadir once before the first start ([] if none)."""
        ...

    def update_peers(self, datadir: Path, peers: Sequence[str]) -> None:
        """Rewrite the peer list in ``datadir`` (read at the node's next start)."""
        ...

    def command(
        self, testnet: Testnet, node: NodeSpec, place: Placement, *, seal: bool
    ) -> list[str]:
        """The argv that runs ``node``; with ``seal`` a signer seals blocks from the start."""
        ...

    def container_ports(self) -> dict[str, int]:
        """Fixed in-container ports, one per role of ``port_roles``."""
        ...

    def container_binary(self, binary: Path | None) -> str:
        """The binary as a container of ``image`` runs it: a name on its PATH, or (for a
        ``host_binary`` client) the host's ``binary``, default its own, that
        ``container_mounts`` brings in."""
        ...

    def container_mounts(self, datadir: Path, binary: Path | None) -> dict[Path, str]:
        """Host paths a node's container needs besides its datadir and the admin folder,
        each mounted at the same path, with its mode (``ro``/``rw``)."""
        ...

    def helpers(self, testnet: Testnet, admin: Path, alive_while: Path) -> list[Helper]:
        """Host processes the network's nodes need, serving in ``admin`` (the run's 0700
        admin folder, which a container sees at the parent of ``Placement.ipc_path``);
        each exits once ``alive_while`` is gone. [] for most clients."""
        ...

    def start_sealing(self, node: NodeSpec, admin_url: str) -> None:
        """Make a running signer start sealing (the first start runs without sealing),
        through its admin channel ``admin_url``."""
        ...

    def ws_url(self, node: NodeSpec) -> str:
        """The node's WebSocket endpoint."""
        ...

    def identity(self, seed: int, index: int, *, nodes: int, signers: int | None) -> dict[str, str]:
        """Node ``index``'s identity (keys, roles), derived from ``seed`` only; the harness
        stores it in ``NodeSpec.identity`` and never reads it. ``signers``: how many
        nodes produce blocks (``--chain-signers``; None: all); ``ValueError`` when the
        client cannot do with that many."""
        ...

    def peer_id(self, node: NodeSpec) -> str:
        """The id the client's admin API names ``node`` by in a peer list ("" if none)."""
        ...

    def seals(self, node: NodeSpec) -> bool:
        """Whether ``node`` produces blocks once told to (``start_sealing``): the chain
        lets a restarted one catch up first. False for a client that produces blocks on
        its own."""
        ...

    def add_peer(self, admin_url: str, address: str) -> None:
        """Make the node behind ``admin_url`` dial the peer at ``address`` (a
        ``peer_address``) and keep it; only asked when ``admin_peering``."""
        ...

    def remove_peer(self, admin_url: str, address: str) -> None:
        """Make the node drop that peer and not redial it (``admin_peering`` only)."""
        ...

    def redial(self, testnet: Testnet, node: NodeSpec, place: Placement) -> None:
        """Make a running node dial every peer it was started with (``place``: as it
        was started), for a client without ``admin_peering``; ``RPCError`` when it does
        not answer."""
        ...

    def before_restart(
        self,
        testnet: Testnet,
        node: NodeSpec,
        datadir: Path,
        place: Placement,
        peer_admin: Mapping[int, str],
    ) -> None:
        """Called just before a node that has run starts again (a restart, an upgrade,
        a retry on fresh ports), with the admin URL of every other running node: for a
        client whose peers must change what they know of it. Nothing for most clients."""
        ...

    def tell_restarted(
        self, testnet: Testnet, node: NodeSpec, peer_admin: Mapping[int, str]
    ) -> None:
        """What ``before_restart`` tells the running peers of ``node``, told to the
        peers in ``peer_admin`` only: the provider calls it for a peer that was paused
        when ``node`` started again, once that peer resumes. Nothing for most clients."""
        ...

    def connected_peers(self, admin_url: str) -> set[str]:
        """The ``peer_id`` of every peer the node is connected to (``admin_peering``
        only; ``RPCError`` when it does not answer)."""
        ...

    def peer_address(self, node: NodeSpec, host: str, ports: dict[str, int]) -> str:
        """How the other nodes dial ``node`` at ``host`` with ``ports`` (geth: its enode
        URL); "" for a client that names its peers itself (a spec's ``{peers}``)."""
        ...

    def environment(self, testnet: Testnet, node: NodeSpec, place: Placement) -> dict[str, str]:
        """Variables the node's process gets besides the harness's environment."""
        ...

    def agent_args(self, node: NodeSpec) -> list[str]:
        """How the node's agent follows it: ``--rpc URL --ws URL`` (Ethereum JSON-RPC and
        a newHeads subscription) or ``--probe JSON`` (the head and peer probes, polled)."""
        ...

    def check_ready(self, node: NodeSpec) -> None:
        """Return when the node serves (``RPCError`` while it does not)."""
        ...

    def head(self, node: NodeSpec) -> Head:
        """The node's head; ``RPCError`` when it does not answer (every wait, readiness
        and the status table read heads through this)."""
        ...

    def catching_up(self, node: NodeSpec) -> str | None:
        """Why the node, though it answers, is still catching up by a sync of its own
        (a beacon node's initial sync), or None when it follows its peers. Such a node
        has not converged even when its head matches: a fault then can strand it.
        ``RPCError`` when it does not answer."""
        ...

    def peer_count(self, node: NodeSpec) -> int:
        """How many peers the node has (asked only when ``has_peers``)."""
        ...

    def metrics_url(self, node: NodeSpec) -> str | None:
        """Where the node serves Prometheus text, as the test process reaches it (the
        node's published ``ports``); None: the client serves no metrics."""
        ...

    def finalized(self, node: NodeSpec) -> Head | None:
        """The node's finalized block, None before its first one; ``UnsupportedAction``
        for a client without finality (``chain.wait_finalized``)."""
        ...

    def evm_version(self, node: NodeSpec) -> str:
        """The EVM version (solc's name) the chain runs: what ``compile`` targets and
        ``deploy`` checks bytecode against (``UnsupportedAction`` for a non-EVM client)."""
        ...

    def block_hashes(self, node: NodeSpec, first: int, last: int) -> dict[int, str] | None:
        """The hash of each block ``first..last`` on the node (scenarios' fork check);
        None when the client tells only its head."""
        ...

    def repairer(self, chain: Chain) -> Repairer | None:
        """The repair the chain's waits tick (None: this client needs none)."""
        ...

    def port_conflict(self, log_text: str) -> bool:
        """Whether a failed start was caused by a port taken by another program."""
        ...
