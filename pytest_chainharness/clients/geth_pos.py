"""Proof of stake: per node a current geth, a prysm beacon node and a validator client.

The three run under one supervisor (``pos_node``), so for the providers a node is one
process tree, as for every other client: kill, pause and stop reach all of its parts.

The network's genesis is made once, by the tools the chain's own developers use for
devnets: geth's ``--dev`` genesis (its system contracts), then ``prysmctl testnet
generate-genesis``, which writes the beacon state and puts the genesis time into the EL
genesis. Prague/Electra are active from genesis, so contracts from a current solc run as
compiled. Validators are prysm's deterministic interop keys, ``VALIDATORS_PER_NODE`` on
each validating node.

Nodes peer twice: geth with geth (transactions; sync) and beacon node with beacon node
(blocks, attestations). Neither has an admin API the harness could drop a beacon peer
with, so every link goes through the harness's proxies (see ``providers/_links.py``),
both the ``p2p`` and the ``beacon_p2p`` ones.

In a container (the docker backend) the node runs the ``geth-pos`` image's binaries and
its copy of the supervisor, and the genesis tools run in one-off containers of the same
image (``Placement.runner``), so the host needs nothing but the engine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eth_account import Account
from eth_keys.datatypes import PrivateKey

from .._errors import ChainHarnessError, NetworkStartError, UnsupportedAction
from .._proc import run_bounded
from .._rpc import RPCError, http_json, rpc_call
from .._testnet import NodeSpec, Testnet, derive_key
from ..images import GETH_POS_IMAGE
from ..tools import (
    POS_GETH_VERSION,
    binary_version,
    find_geth,
    find_prysm,
)
from .base import CommandRunner, Head, Helper, Placement, Repairer, Route, parts_socket
from .geth import GethEndpoints, geth_flags, node_id, write_config

if TYPE_CHECKING:
    from ..chain import Chain

__all__ = [
    "MIN_SLOT_SECONDS",
    "VALIDATORS_PER_NODE",
    "GethPosAdapter",
    "beacon_peer_id",
    "slot_seconds",
]

#: Interop validators each validating node runs.
VALIDATORS_PER_NODE = 8
#: Slots per epoch: prysm's e2e networks use 6 (mainnet: 32), so finality comes
#: after a few seconds' worth of epochs.
SLOTS_PER_EPOCH = 6
#: prysm v7.0.0's shortest slot: its attestation loop ticks at slot - 2 s, and a 1 s
#: slot makes that offset negative (the beacon node panics, "invalid decreasing offsets").
MIN_SLOT_SECONDS = 2
#: Every block's state on disk as it is imported: a killed geth restarts where it was
#: (the default path scheme keeps recent state in memory, and after a SIGKILL geth
#: rewinds and snap-syncs again, which a small network can take minutes over).
_STATE_FLAGS = ("--state.scheme", "hash")
#: How long a beacon node's initial sync may stand at one slot, with peers, before the
#: repairer starts it again (StuckSync): a sound one waits 5 to 16 s at a time (its
#: peer look every 5 s, a 15 s refresh when no peer has blocks for it).
STUCK_SYNC_AFTER = 40.0
#: How far (blocks) a node's head may stay behind the highest running head, its beacon
#: node in sync with peers and nothing cutting it off, before it counts as stuck on a
#: branch of its own (StuckSync): a node sound but slow (latency) is a block or two behind.
OWN_BRANCH_LAG = 8
#: prysm's default is 2, which leaves its sync fetcher one batch per peer (see command).
_BURST_FACTOR = 10
#: The node supervisor, as this package has it (a container mounts it at the same path).
_SUPERVISOR = Path(__file__).resolve().with_name("pos_node.py")
#: Electra reads deposits from this address's logs (nothing is deployed there).
_DEPOSIT_CONTRACT = "0x4242424242424242424242424242424242424242"
#: Between making the genesis and its time: every node's geth init and start-up.
_GENESIS_LEAD = 6.0
#: Forks after Prague that this prysm does not run; dropped from geth's dev genesis.
_LATER_FORKS = ("osakaTime", "bogotaTime", "amsterdamTime", "verkleTime")


def beacon_peer_id(key_hex: str) -> str:
    """The libp2p peer id of a secp256k1 key: the identity multihash of the protobuf
    ``PublicKey{Type: Secp256k1, Data: compressed key}``, in base58."""
    public = PrivateKey(bytes.fromhex(key_hex)).public_key.to_compressed_bytes()
    proto = bytes([0x08, 0x02, 0x12, len(public)]) + public
    return _base58(bytes([0x00, len(proto)]) + proto)


def _base58(data: bytes) -> str:
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    number = int.from_bytes(data, "big")
    out = ""
    while number:
        number, digit = divmod(number, 58)
        out = alphabet[digit] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def _validators(node: NodeSpec) -> tuple[int, int]:
    """(first index, count) of the node's interop validators; (0, 0) for none."""
    first, _, count = node.identity.get("validators", "0:0").partition(":")
    return int(first), int(count)


class GethPosAdapter(GethEndpoints):
    """geth + prysm nodes of one proof-of-stake network."""

    name = "geth-pos"
    evm = True
    admin_peering = False
    peer_roles: tuple[str, ...] = ("p2p", "beacon_p2p")
    # libp2p tells peers every address a beacon node listens on, and prysm redials its
    # peers at those: past the links, so a partition would heal itself within seconds.
    own_host_roles: tuple[str, ...] = ("beacon_p2p",)
    max_nodes = 16
    poa = False
    has_peers = True
    port_roles: tuple[str, ...] = (
        "rpc", "ws", "p2p", "authrpc", "metrics",
        "beacon_p2p", "beacon_rpc", "beacon_http", "beacon_metrics", "validator_metrics",
    )  # fmt: skip
    api_ports: tuple[str, ...] = ("rpc", "ws", "metrics", "beacon_http")
    txpool_metric: str | None = "txpool_pending"
    image = GETH_POS_IMAGE
    host_binary = False
    # Each a process of its own under the node's supervisor, so a fault can take one
    # down while the others run (a beacon node that loses its geth, a validator that
    # loses its beacon node).
    parts: tuple[str, ...] = ("geth", "beacon", "validator")
    main_part: str | None = "geth"
    backends: tuple[str, ...] = ("docker", "process")
    event_kinds: tuple[str, ...] = ("beacon_head", "finalized")
    # Not restarted while it starts: a beacon node opens its API only after its start-up
    # (KZG set-up, genesis state), which took more than 20 s on a loaded CI machine; a
    # restart then made it a restarted node, waiting for a peer to sync from (CI of
    # ef6ff1b). The start's timeout reports a node that never answers.
    hung_restart_after: float | None = None
    stalled_peering_restart_after: float | None = None  # prysm redials its peers every 5 s
    # geth's dials are the ones told (redial): all four gethes start in the same second,
    # and a dial that reached a peer's link before that peer listened was not made again
    # for 35 s, the longest wait of a start (ready 42.8 s, the last EL link at 42.4 s).
    dials_when_told = True

    def __init__(self, root: Path | None = None) -> None:
        self.root = root
        self._genesis_lock = threading.Lock()
        self._genesis: dict[str, bytes] | None = None

    @property
    def display_name(self) -> str:
        return self.name

    # -- binaries --------------------------------------------------------------------------

    def find_binary(self, version: str | None = None, *, explicit: str | None = None) -> Path:
        for name in ("beacon-chain", "validator", "prysmctl"):
            find_prysm(name, self.root)  # missing prysm names the geth-pos install command
        try:
            return find_geth(version=version or POS_GETH_VERSION, explicit=explicit, root=self.root)
        except ChainHarnessError as exc:
            raise type(exc)(
                f"{exc} (geth-pos: python -m pytest_chainharness.tools install geth-pos)"
            ) from None

    def version(self, binary: Path) -> str:
        return binary_version(binary, ["version"], r"^Version:\s*(\S+)")

    def _prysm(self, name: str, place: Placement) -> str:
        # In a container the image's PATH has them (images.py); on the host, the tools'.
        return name if place.runner is not None else str(find_prysm(name, self.root))

    # -- files -----------------------------------------------------------------------------

    def write_files(
        self, testnet: Testnet, node: NodeSpec, datadir: Path, place: Placement
    ) -> None:
        datadir.mkdir(parents=True, exist_ok=True)
        # Made once per network; a node's files are rewritten (new ports) without it.
        if not (datadir / "genesis.ssz").exists():
            for name, data in self._network_genesis(testnet, place).items():
                (datadir / name).write_bytes(data)
        (datadir / "geth").mkdir(exist_ok=True)
        (datadir / "geth" / "nodekey").write_text(node.identity["node_key"])
        (datadir / "jwt.hex").write_text(node.identity["jwt_secret"])
        (datadir / "beacon.key").write_text(node.identity["beacon_key"])
        # No static peer at the first start (dials_when_told): the start has the node
        # dial them once they listen (redial); a restart dials all of them (before_restart).
        write_config(datadir, f"{place.listen}:{place.ports['p2p']}", [])

    def _network_genesis(self, testnet: Testnet, place: Placement) -> dict[str, bytes]:
        with self._genesis_lock:
            if self._genesis is None:
                self._genesis = self._make_genesis(testnet, place)
            return self._genesis

    def _make_genesis(self, testnet: Testnet, place: Placement) -> dict[str, bytes]:
        import tempfile

        validators = sum(_validators(n)[1] for n in testnet.nodes)
        # In a container the tools see only the node's mounts: work in its datadir.
        parent = None if place.runner is None else place.datadir
        with tempfile.TemporaryDirectory(prefix="chainharness-genesis-", dir=parent) as tmp:
            work = Path(tmp)
            dev = _run(
                [place.binary, "--dev", "dumpgenesis"], "geth --dev dumpgenesis", work, place.runner
            ).stdout
            doc = json.loads(dev)
            config = doc["config"]
            config["chainId"] = testnet.chain_id
            for fork in _LATER_FORKS:
                config.pop(fork, None)
            for fork in ("osaka", "bogota", "amsterdam"):
                config.get("blobSchedule", {}).pop(fork, None)
            config["depositContractAddress"] = _DEPOSIT_CONTRACT
            # Keep the system contracts (code), drop geth's dev account (a balance only).
            alloc = {a: v for a, v in doc["alloc"].items() if v.get("code")}
            for address in testnet.account_addresses():
                alloc[address] = {"balance": hex(testnet.balance_wei)}
            doc["alloc"] = alloc
            doc["gasLimit"] = hex(testnet.gas_limit)
            (work / "dev.json").write_text(json.dumps(doc))
            (work / "config.yml").write_text(_beacon_config(testnet, validators))
            _run(
                [
                    self._prysm("prysmctl", place), "testnet", "generate-genesis",
                    "--fork", "electra",
                    "--num-validators", str(validators),
                    "--genesis-time", str(int(time.time() + _GENESIS_LEAD)),
                    "--chain-config-file", str(work / "config.yml"),
                    "--geth-genesis-json-in", str(work / "dev.json"),
                    "--geth-genesis-json-out", str(work / "genesis.json"),
                    "--output-ssz", str(work / "genesis.ssz"),
                ],
                "prysmctl testnet generate-genesis",
                work,
                place.runner,
            )  # fmt: skip
            return {
                name: (work / name).read_bytes()
                for name in ("genesis.json", "genesis.ssz", "config.yml")
            }

    def init_command(self, place: Placement) -> list[str]:
        return [
            place.binary, "init", "--datadir", place.datadir, *_STATE_FLAGS,
            f"{place.datadir}/genesis.json",
        ]  # fmt: skip

    def update_peers(self, datadir: Path, peers: Sequence[str]) -> None:
        # Peers are dialled at their links' proxies, which keep their ports when a node
        # moves (the proxy is retargeted): nothing to rewrite.
        return None

    # -- running ---------------------------------------------------------------------------

    def command(
        self, testnet: Testnet, node: NodeSpec, place: Placement, *, seal: bool
    ) -> list[str]:
        d, host, ports = place.datadir, place.listen, place.ports
        # The parts reach each other on the node's own host: loopback in a container,
        # whose listeners bind every address.
        near = "127.0.0.1" if host == "0.0.0.0" else host
        geth = [
            *geth_flags(testnet, node, place),
            "--authrpc.jwtsecret", f"{d}/jwt.hex",
            *_STATE_FLAGS,
        ]  # fmt: skip
        beacon = [
            self._prysm("beacon-chain", place),
            "--datadir", f"{d}/beacon",
            "--accept-terms-of-use",
            "--chain-config-file", f"{d}/config.yml",
            "--genesis-state", f"{d}/genesis.ssz",
            "--chain-id", str(testnet.chain_id),
            "--network-id", str(testnet.chain_id),
            "--contract-deployment-block", "0",
            "--execution-endpoint", f"http://{near}:{ports['authrpc']}",
            "--jwt-secret", f"{d}/jwt.hex",
            "--no-discovery", "--bootstrap-node=",
            # quic-go panics under Go 1.26 ("where's my session ticket?").
            "--disable-quic",
            "--p2p-tcp-port", str(ports["beacon_p2p"]),
            "--p2p-local-ip", place.own_host or host,
            "--p2p-host-ip", _host_ip(place.own_host or host),
            "--p2p-priv-key", f"{d}/beacon.key",
            "--subscribe-all-subnets", "--minimum-peers-per-subnet", "0",
            # A syncing node's fetcher counts every slot it asks a peer for, the empty
            # ones too, against one batch (64) per peer per 30 s by default: asking for
            # slots past its peers' head spent that, and the sync stood 10 to 20 s. The peers
            # serve by the same numbers, so every node has the larger burst.
            "--block-batch-limit-burst-factor", str(_BURST_FACTOR),
            "--rpc-host", host, "--rpc-port", str(ports["beacon_rpc"]),
            "--http-host", host, "--http-port", str(ports["beacon_http"]),
            "--monitoring-host", host, "--monitoring-port", str(ports["beacon_metrics"]),
            "--suggested-fee-recipient", _fee_recipient(testnet),
        ]  # fmt: skip
        for cidr in place.refuse:
            beacon += ["--p2p-denylist", cidr]
        peers = _beacon_peers(testnet, node, place)
        beacon_part: dict[str, Any] = {
            "name": "beacon",
            "argv": beacon,
            # Nobody is ahead to sync from yet. No --peer: the start trusts its peers
            # through its API once every node serves (redial).
            "first": ["--min-sync-peers", "0"],
            "wait_for": f"{near}:{ports['authrpc']}",
        }
        if peers:
            # Restarted, it must first sync from a peer: following gossip alone, it would
            # wait for every missed parent one by one. Its peers come through the API
            # once it serves, not as --peer (pos_node._trust_peers says why).
            beacon_part["again"] = {
                "exists": f"{d}/beacon/beaconchaindata",
                "args": ["--min-sync-peers", "1"],
                "trust": {"api": f"http://{near}:{ports['beacon_http']}", "peers": peers},
            }
        parts: list[dict[str, Any]] = [{"name": "geth", "argv": geth}, beacon_part]
        first, count = _validators(node)
        if count:
            validator = [
                self._prysm("validator", place),
                "--datadir", f"{d}/validator",
                "--accept-terms-of-use",
                "--chain-config-file", f"{d}/config.yml",
                "--beacon-rpc-provider", f"{near}:{ports['beacon_rpc']}",
                "--beacon-rest-api-provider", f"http://{near}:{ports['beacon_http']}",
                "--interop-num-validators", str(count),
                "--interop-start-index", str(first),
                "--monitoring-host", host,
                "--monitoring-port", str(ports["validator_metrics"]),
                "--suggested-fee-recipient", _fee_recipient(testnet),
            ]  # fmt: skip
            parts.append(
                {
                    "name": "validator",
                    "argv": validator,
                    "wait_for": f"{near}:{ports['beacon_rpc']}",
                }
            )
        plan = json.dumps({"parts": parts, "control": parts_socket(place.ipc_path)})
        # The supervisor by its path, standard library only: as a module of this package
        # it imported the package first (web3 among it), 1.1 to 1.3 s of CPU per node
        # while the start is short of CPU. A container runs this package's copy, mounted
        # (container_mounts), not the image's: an image built by an older release would
        # not speak the control socket this harness asks.
        python = sys.executable if place.runner is None else "python3"
        return [python, str(_SUPERVISOR), plan]

    def environment(self, testnet: Testnet, node: NodeSpec, place: Placement) -> dict[str, str]:
        return {}

    def container_ports(self) -> dict[str, int]:
        return {
            "rpc": 8545, "ws": 8546, "p2p": 30303, "authrpc": 8551, "metrics": 6060,
            "beacon_p2p": 13000, "beacon_rpc": 4000, "beacon_http": 3500,
            "beacon_metrics": 8080, "validator_metrics": 8081,
        }  # fmt: skip

    def container_binary(self, binary: Path | None) -> str:
        return "geth"

    def container_mounts(self, datadir: Path, binary: Path | None) -> dict[Path, str]:
        return {_SUPERVISOR: "ro"}

    def helpers(self, testnet: Testnet, admin: Path, alive_while: Path) -> list[Helper]:
        return []

    def start_sealing(self, node: NodeSpec, admin_url: str) -> None:
        return None  # validators propose from genesis on

    def seals(self, node: NodeSpec) -> bool:
        return False

    # -- identity and peers ----------------------------------------------------------------

    def identity(self, seed: int, index: int, *, nodes: int, signers: int | None) -> dict[str, str]:
        validating = nodes if signers is None else signers
        if not 1 <= validating <= nodes:
            raise ValueError(
                f"geth-pos splits its validators over 1..{nodes} nodes "
                f"({VALIDATORS_PER_NODE} each), got {validating}"
            )
        beacon_key = derive_key(seed, "beacon", index).hex()
        found = {
            "node_key": derive_key(seed, "node", index).hex(),
            "beacon_key": beacon_key,
            "beacon_peer_id": beacon_peer_id(beacon_key),
            "jwt_secret": derive_key(seed, "jwt", index).hex(),
            "validators": "0:0",
        }
        if index < validating:
            found["validators"] = f"{index * VALIDATORS_PER_NODE}:{VALIDATORS_PER_NODE}"
        return found

    def peer_address(self, node: NodeSpec, host: str, ports: dict[str, int]) -> str:
        return ""  # the node names its peers itself (write_files, command)

    def peer_id(self, node: NodeSpec) -> str:
        return node_id(node)

    def add_peer(self, admin_url: str, address: str) -> None:
        raise UnsupportedAction("client geth-pos peers through its links, not an admin API")

    def remove_peer(self, admin_url: str, address: str) -> None:
        raise UnsupportedAction("client geth-pos peers through its links, not an admin API")

    def before_restart(
        self,
        testnet: Testnet,
        node: NodeSpec,
        datadir: Path,
        place: Placement,
        peer_admin: Mapping[int, str],
    ) -> None:
        # The restarted node takes over the dialling of every pair it is in (see
        # _dialled): it dials all its peers at once, where a peer that used to dial it
        # would only come back on its own redial clock, up to 35 s later. Its peers drop
        # it from their static lists first, so each pair keeps one dialler; a peer that is
        # stopped now does the same for its own pairs when it starts again; one that is
        # paused is told when it resumes (tell_restarted).
        peers = [address for _, address in _peer_enodes(testnet, node, place)]
        write_config(datadir, f"{place.listen}:{place.ports['p2p']}", peers)
        self.tell_restarted(testnet, node, peer_admin)

    def tell_restarted(
        self, testnet: Testnet, node: NodeSpec, peer_admin: Mapping[int, str]
    ) -> None:
        me = f"enode://{node_id(node)}@{node.host}:{node.ports['p2p']}"  # matched by id
        for admin_url in peer_admin.values():
            with contextlib.suppress(RPCError):  # it may stop meanwhile
                rpc_call(admin_url, "admin_removePeer", [me])

    def redial(self, testnet: Testnet, node: NodeSpec, place: Placement) -> None:
        # Only the pairs it dials (_dialled): one more dialler would bring back the race
        # there. Asked once, at the start: geth dials a static peer again on its own clock
        # (35 s after the last dial), and asking again for a known one changes nothing.
        for address in _dialled(testnet, node, place):
            rpc_call(f"ipc://{place.ipc_path}", "admin_addPeer", [address], timeout=5.0)
        # Its beacon node trusts every peer; it dials them on its next reconnect tick
        # (every 5 s), when the others listen and their sync service answers a status.
        # With --peer it dialled them as its p2p service started: a peer not listening
        # yet was put off by libp2p's backoff, and one whose sync service did not run
        # yet dropped the link after 10 s; the last beacon link came 10 s after the
        # last beacon API (pos_node._trust_peers does the same after a restart).
        api = f"http://{node.host}:{node.ports['beacon_http']}/prysm/node/trusted_peers"
        for peer in _beacon_peers(testnet, node, place):
            http_json(api, method="POST", body=json.dumps({"addr": peer}), parse=False)

    # -- queries ---------------------------------------------------------------------------

    def check_ready(self, node: NodeSpec) -> None:
        self.head(node)
        engine = f"engine API on port {node.ports['authrpc']}, JWT in jwt.hex"
        try:
            syncing = self._syncing(node)
        except RPCError as exc:
            raise RPCError(
                f"{node.name}: its beacon node does not answer ({exc}); prysm opens its API "
                f"only once it has reached its geth ({engine}): see the node's 'beacon |' lines"
            ) from exc
        if syncing.get("el_offline"):
            raise RPCError(
                f"{node.name}: its beacon node has not reached its geth ({engine}): "
                "/eth/v1/node/syncing says el_offline; see the node's 'beacon |' lines"
            )

    def catching_up(self, node: NodeSpec) -> str | None:
        # A beacon node in initial sync has no gossip subscriptions yet, though its geth
        # may already be at the others' head: split off with a peer no further ahead, it
        # never ends its sync, and that peer cannot publish a block (no one on the topic).
        syncing = self._syncing(node)
        if not syncing.get("is_syncing"):
            return None
        return (
            f"its beacon node is syncing (head slot {syncing.get('head_slot', '?')}, "
            f"{syncing.get('sync_distance', '?')} slots behind)"
        )

    def peer_count(self, node: NodeSpec) -> int:
        # Both halves must be connected: the smaller count is the node's.
        beacon = self._beacon(node, "/eth/v1/node/peer_count")
        return min(super().peer_count(node), int(beacon["data"]["connected"]))

    def agent_args(self, node: NodeSpec) -> list[str]:
        # The agent also follows the beacon node: beacon_head and finalized events.
        beacon = f"http://{node.host}:{node.ports['beacon_http']}"
        return [*super().agent_args(node), "--beacon", beacon]

    def finalized(self, node: NodeSpec) -> Head | None:
        """The node's finalized block (None before the first one)."""
        try:
            block = rpc_call(
                node.rpc_url, "eth_getBlockByNumber", ["finalized", False], timeout=2.0
            )
        except RPCError as exc:
            if "not found" in str(exc).lower():
                return None
            raise
        if not block or int(block["number"], 16) == 0:
            return None
        return Head(int(block["number"], 16), str(block["hash"]))

    def _syncing(self, node: NodeSpec) -> dict[str, Any]:
        """The beacon node's ``/eth/v1/node/syncing`` data (``is_syncing``, ``head_slot``,
        ``sync_distance``, ``el_offline``)."""
        data = self._beacon(node, "/eth/v1/node/syncing").get("data")
        return data if isinstance(data, dict) else {}

    def _beacon(self, node: NodeSpec, path: str) -> dict[str, Any]:
        url = f"http://{node.host}:{node.ports['beacon_http']}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2.0) as reply:
                found: dict[str, Any] = json.loads(reply.read())
                return found
        except (OSError, ValueError) as exc:
            raise RPCError(f"{node.name} beacon node {url}: {exc}") from exc

    def evm_version(self, node: NodeSpec) -> str:
        return "prague"  # Prague/Electra from genesis, nothing later

    def repairer(self, chain: Chain) -> Repairer | None:
        # Fork choice settles forks by itself; a beacon node's initial sync can stand.
        return StuckSync(chain, self)


class StuckSync:
    """Restart a beacon node that stands still while it has peers: its initial sync stands
    at one slot, or it is in sync and follows a branch of its own far behind the others.

    Seen on docker (a rolling upgrade, 2026-12-07): node2's beacon node, started again,
    synced to slot 110 from the one peer it chose, then had that peer's next block refused
    ("not descendant of finalized checkpoint": a branch the restart before it had made)
    and stood at slot 110 with three peers for 110 s, is_syncing the whole time. Started
    again, it chose its peers afresh and was past the finalized epoch within 30 s.

    Seen in CI (a rolling upgrade on docker, 2026-12-07): node3's beacon node, started
    again last, ended its initial sync at slot 101 with three peers and then received no
    block of theirs: it took only its own proposals (one slot in four), its geth stood at
    #77 while the others went past #93, and its finalized epoch stood. Not syncing, so
    the first look never caught it.

    A node that is alone (a partition) or has no peer ahead is not helped by a restart and
    is left alone: it has no peer, the partition is in force, or its head moves again
    once one is ahead.
    """

    name = "beacon-resync"

    def __init__(self, chain: Chain, adapter: GethPosAdapter) -> None:
        self.chain = chain
        self.adapter = adapter
        #: Node name → (head slot, since when it stands there) while its beacon syncs.
        self._standing: dict[str, tuple[str, float]] = {}
        #: Node name → since when its head is OWN_BRANCH_LAG behind, in sync.
        self._behind: dict[str, float] = {}
        #: Node name → when it was last restarted here.
        self._restarted: dict[str, float] = {}
        self._checked = 0.0

    def tick(self) -> str | None:
        now = time.monotonic()
        if now - self._checked < 1.0:
            return None
        self._checked = now
        done: list[str] = []
        standing: dict[str, tuple[str, float]] = {}
        behind: dict[str, float] = {}
        nodes = [n for n in self.chain.running_nodes() if n.parts.get("beacon") == "running"]
        heights = {name: head.number for name, head in self.chain.heads().items()}
        cut_off = self.chain.provider.partitioned() is not None
        for node in nodes:
            try:
                syncing = self.adapter._syncing(node._spec)
                peers = self.adapter._beacon(node._spec, "/eth/v1/node/peer_count")
                if int(peers["data"]["connected"]) == 0:
                    continue
            except (RPCError, KeyError, TypeError, ValueError):
                continue
            why: str | None = None
            if syncing.get("is_syncing"):
                slot = str(syncing.get("head_slot"))
                seen, since = self._standing.get(node.name, (slot, now))
                since = since if seen == slot else now
                standing[node.name] = (slot, since)
                why = (
                    f"its beacon node's initial sync stood at slot {slot} for "
                    f"{now - since:.0f}s with peers"
                )
            elif (
                not cut_off
                and not syncing.get("is_optimistic")  # its geth catching up: not stuck
                and not syncing.get("el_offline")
                and node.name in heights
                and max(heights.values()) - heights[node.name] >= OWN_BRANCH_LAG
            ):
                since = behind[node.name] = self._behind.get(node.name, now)
                why = (
                    f"its head stood {max(heights.values()) - heights[node.name]} blocks "
                    f"behind the highest (#{heights[node.name]} against "
                    f"#{max(heights.values())}) for {now - since:.0f}s, its beacon node in "
                    "sync with peers: a branch of its own"
                )
            else:
                continue
            if (
                now - since < STUCK_SYNC_AFTER
                or now - self._restarted.get(node.name, -1e9) < STUCK_SYNC_AFTER * 3
            ):
                continue
            node.restart(part="beacon")
            self._restarted[node.name] = now
            standing.pop(node.name, None)
            behind.pop(node.name, None)
            done.append(f"{node.name}: {why}; started it again")
        self._standing, self._behind = standing, behind
        return "; ".join(done) or None


def _dialled(testnet: Testnet, node: NodeSpec, place: Placement) -> list[str]:
    """The enodes of the node's static peers: only those with a higher index.

    One dialler per pair. geth has no tie-break for two connections between the same
    two nodes: when both dial at once, each side keeps the one that finished its
    handshake first, and when those differ both are dropped. Each side then redials 35 s
    after its own dial, so the two stay in step and the pair can miss each other for
    minutes; a partition, which cuts both sides in the same instant, is what puts them
    in step. With one side dialling, the other accepts. A node that starts again takes
    its pairs over (``before_restart``).
    """
    return [address for other, address in _peer_enodes(testnet, node, place) if other > node.index]


def _beacon_peers(testnet: Testnet, node: NodeSpec, place: Placement) -> list[str]:
    """The multiaddr of every other node's beacon node, as ``node`` dials it."""
    return [
        f"/ip4/{route.host}/tcp/{route.ports['beacon_p2p']}/p2p/{other.identity['beacon_peer_id']}"
        for other, route in _routes(testnet, node, place)
    ]


def _peer_enodes(testnet: Testnet, node: NodeSpec, place: Placement) -> list[tuple[int, str]]:
    """(index, enode as ``node`` dials it) of every other node."""
    return [
        (other.index, f"enode://{node_id(other)}@{route.host}:{route.ports['p2p']}")
        for other, route in _routes(testnet, node, place)
    ]


def _routes(testnet: Testnet, node: NodeSpec, place: Placement) -> list[tuple[NodeSpec, Route]]:
    """Every other node and where ``node`` dials it."""
    return [
        (other, place.peer_routes.get(other.index) or Route(other.host, dict(other.ports)))
        for other in testnet.nodes
        if other.index != node.index
    ]


def slot_seconds(testnet: Testnet) -> int:
    """The slot time: ``--chain-period``, at least ``MIN_SLOT_SECONDS``."""
    return max(MIN_SLOT_SECONDS, testnet.period)


def _host_ip(host: str) -> str:
    # The beacon node's advertised address must be an IP (it is one on every backend
    # but a name on docker's network, which is not dialled through it anyway).
    return host if host[:1].isdigit() else "127.0.0.1"


def _fee_recipient(testnet: Testnet) -> str:
    return str(Account.from_key(derive_key(testnet.seed, "fee", 0)).address)


def _beacon_config(testnet: Testnet, validators: int) -> str:
    # Fork versions unique to this chain id: a node of another run cannot join.
    tag = hashlib.sha256(str(testnet.chain_id).encode()).hexdigest()[:6]
    forks = ("GENESIS", "ALTAIR", "BELLATRIX", "CAPELLA", "DENEB", "ELECTRA", "FULU")
    lines = [
        "CONFIG_NAME: chainharness",
        "PRESET_BASE: 'mainnet'",
        f"MIN_GENESIS_ACTIVE_VALIDATOR_COUNT: {validators}",
        "GENESIS_DELAY: 0",
        f"SECONDS_PER_SLOT: {slot_seconds(testnet)}",
        f"SLOTS_PER_EPOCH: {SLOTS_PER_EPOCH}",
        "TERMINAL_TOTAL_DIFFICULTY: 0",
        f"DEPOSIT_CHAIN_ID: {testnet.chain_id}",
        f"DEPOSIT_NETWORK_ID: {testnet.chain_id}",
        f"DEPOSIT_CONTRACT_ADDRESS: {_DEPOSIT_CONTRACT}",
        "ETH1_FOLLOW_DISTANCE: 1",
    ]
    for number, fork in enumerate(forks):
        lines.append(f"{fork}_FORK_VERSION: 0x{number:02x}{tag}")
        if fork == "FULU":
            lines.append(f"{fork}_FORK_EPOCH: 18446744073709551615")
        elif fork != "GENESIS":
            lines.append(f"{fork}_FORK_EPOCH: 0")
    return "\n".join(lines) + "\n"


def _run(
    argv: list[str], what: str, cwd: Path, runner: CommandRunner | None
) -> subprocess.CompletedProcess[str]:
    try:
        if runner is None:
            result = run_bounded(argv, text=True, cwd=cwd, timeout=60)
        else:
            result = runner(argv, cwd, {}, 60.0)
    except subprocess.TimeoutExpired:
        raise NetworkStartError(f"geth-pos genesis: `{what}` did not finish within 60s") from None
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise NetworkStartError(f"geth-pos genesis: `{what}` failed:\n{tail}")
    return result
