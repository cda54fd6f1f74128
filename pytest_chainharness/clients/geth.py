"""geth with Clique proof-of-authority (v1.13.x: the last line that seals Clique blocks)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from eth_account import Account
from eth_keys.datatypes import PrivateKey

from .._errors import UnsupportedAction
from .._rpc import rpc_call
from .._testnet import NodeSpec, Testnet, derive_key
from ..images import geth_image
from ..tools import DEFAULT_GETH_VERSION, binary_version, find_geth
from . import clique_signer
from ._evm import EthereumQueries
from .base import Head, Helper, Placement, Repairer

if TYPE_CHECKING:
    from ..chain import Chain

__all__ = [
    "GethAdapter",
    "GethEndpoints",
    "genesis",
    "geth_flags",
    "is_signer",
    "node_id",
    "signer_address",
    "signers",
    "write_config",
]

# Everything up to London at block 0 and nothing later: Shanghai and later forks need the
# merge, which a Clique network never reaches (contracts compile for EVM "paris").
_FORKS = (
    "homesteadBlock",
    "eip150Block",
    "eip155Block",
    "eip158Block",
    "byzantiumBlock",
    "constantinopleBlock",
    "petersburgBlock",
    "istanbulBlock",
    "muirGlacierBlock",
    "berlinBlock",
    "londonBlock",
    "arrowGlacierBlock",
    "grayGlacierBlock",
)
#: What the node's HTTP and WebSocket ports offer (any local user can reach a loopback
#: port): the public APIs. admin, debug, miner and clique are on the IPC socket only.
_PUBLIC_APIS = "eth,net,web3,txpool"


# -- a node's identity (NodeSpec.identity): its p2p key and, for a signer, its signer key --


def is_signer(node: NodeSpec) -> bool:
    """Whether the node seals Clique blocks."""
    return bool(node.identity.get("signer_key"))


def signers(testnet: Testnet) -> list[NodeSpec]:
    return [n for n in testnet.nodes if is_signer(n)]


def node_id(node: NodeSpec) -> str:
    """The devp2p node id (uncompressed public key, hex, no 0x)."""
    key = bytes.fromhex(node.identity["node_key"])
    return str(PrivateKey(key).public_key.to_bytes().hex())


def signer_address(node: NodeSpec) -> str:
    """The signer's address ("" for a node that does not seal)."""
    key = node.identity.get("signer_key")
    return str(Account.from_key(bytes.fromhex(key)).address) if key else ""


def genesis(testnet: Testnet) -> dict[str, Any]:
    """The genesis document; every signer is a Clique signer from block 0 (with no
    balance: a signer key signs headers only, see ``clique_signer``)."""
    sealers = "".join(signer_address(n)[2:].lower() for n in signers(testnet))
    alloc = {addr: {"balance": hex(testnet.balance_wei)} for addr in testnet.account_addresses()}
    return {
        "config": {
            "chainId": testnet.chain_id,
            **dict.fromkeys(_FORKS, 0),
            "clique": {"period": testnet.period, "epoch": 30000},
        },
        "nonce": "0x0",
        # An old timestamp lets block 1 be sealed at once instead of one period after init.
        "timestamp": "0x0",
        "difficulty": "0x1",
        "gasLimit": hex(testnet.gas_limit),
        "extradata": "0x" + "00" * 32 + sealers + "00" * 65,
        "alloc": alloc,
    }


class GethEndpoints(EthereumQueries):
    """What every geth answers the same way, Clique or proof of stake: its WebSocket and
    metrics endpoints, its peer list over the admin channel, a taken port in its log."""

    def ws_url(self, node: NodeSpec) -> str:
        return f"ws://{node.host}:{node.ports['ws']}"

    def metrics_url(self, node: NodeSpec) -> str | None:
        return f"http://{node.host}:{node.ports['metrics']}/debug/metrics/prometheus"

    def port_conflict(self, log_text: str) -> bool:
        return "address already in use" in log_text

    def connected_peers(self, admin_url: str) -> set[str]:
        # "enode://<public key>@host:port": the key is the node id (``node_id``).
        peers = rpc_call(admin_url, "admin_peers", []) or []
        return {str(p.get("enode", "")).removeprefix("enode://").split("@")[0] for p in peers}


class GethAdapter(GethEndpoints):
    """Runs geth nodes as Clique signers peered through static nodes."""

    name = "geth"
    evm = True
    admin_peering = True
    peer_roles: tuple[str, ...] = ("p2p",)
    own_host_roles: tuple[str, ...] = ()
    backends: tuple[str, ...] = ("docker", "kubernetes", "process")
    event_kinds: tuple[str, ...] = ()
    max_nodes = 64
    poa = True
    has_peers = True
    port_roles: tuple[str, ...] = ("rpc", "ws", "p2p", "authrpc", "metrics")
    api_ports: tuple[str, ...] = ("rpc", "ws", "metrics")
    txpool_metric: str | None = "txpool_pending"
    image = geth_image(DEFAULT_GETH_VERSION)
    host_binary = False
    parts: tuple[str, ...] = ()
    main_part: str | None = None
    hung_restart_after: float | None = 10.0
    stalled_peering_restart_after: float | None = 4.0
    dials_when_told = False

    def __init__(self, root: Path | None = None, extra_args: list[str] | None = None) -> None:
        self._root = root
        #: Project root: where the tools folder (.tools) is looked up.
        self.root = root
        self.extra_args = list(extra_args or [])

    @property
    def display_name(self) -> str:
        return self.name  # a registered subclass names itself

    def find_binary(self, version: str | None = None, *, explicit: str | None = None) -> Path:
        return find_geth(version=version, explicit=explicit, root=self._root)

    def version(self, binary: Path) -> str:
        return binary_version(binary, ["version"], r"^Version:\s*(\S+)")

    def write_files(
        self, testnet: Testnet, node: NodeSpec, datadir: Path, place: Placement
    ) -> None:
        datadir.mkdir(parents=True, exist_ok=True)
        (datadir / "genesis.json").write_text(json.dumps(genesis(testnet)))
        (datadir / "geth").mkdir(exist_ok=True)
        (datadir / "geth" / "nodekey").write_text(node.identity["node_key"])
        # The p2p listener binds to the node's own address only (geth's --port would
        # bind every address of the host): the config file is where geth takes it from.
        write_config(datadir, f"{place.listen}:{place.ports['p2p']}", place.peers)

    def init_command(self, place: Placement) -> list[str]:
        return [place.binary, "init", "--datadir", place.datadir, f"{place.datadir}/genesis.json"]

    def update_peers(self, datadir: Path, peers: Sequence[str]) -> None:
        # geth >= 1.11 ignores static-nodes.json; the config file is the supported place.
        write_config(datadir, _listen_addr(datadir), peers)

    def container_ports(self) -> dict[str, int]:
        return {"rpc": 8545, "ws": 8546, "p2p": 30303, "authrpc": 8551, "metrics": 6060}

    def container_binary(self, binary: Path | None) -> str:
        return "geth"

    def container_mounts(self, datadir: Path, binary: Path | None) -> dict[Path, str]:
        return {}

    def command(
        self, testnet: Testnet, node: NodeSpec, place: Placement, *, seal: bool
    ) -> list[str]:
        argv = geth_flags(testnet, node, place)
        if is_signer(node):
            argv += [
                "--miner.etherbase",
                signer_address(node),
                # The key is not in geth: see clique_signer (an unlocked keystore key
                # would sign any eth_sendTransaction sent to the public port).
                "--signer",
                str(PurePosixPath(place.ipc_path).with_name(_signer_socket(node))),
                # Re-assemble the block being sealed every second (geth's floor; default
                # 2 s) so transactions that arrive mid-period still make the next block.
                "--miner.recommit",
                "1s",
            ]
        if is_signer(node) and seal:
            argv.append("--mine")
        return argv + self.extra_args

    def peer_address(self, node: NodeSpec, host: str, ports: dict[str, int]) -> str:
        return f"enode://{node_id(node)}@{host}:{ports['p2p']}"

    def peer_id(self, node: NodeSpec) -> str:
        return node_id(node)

    def redial(self, testnet: Testnet, node: NodeSpec, place: Placement) -> None:
        return None  # admin peering: the provider asks add_peer for each peer instead

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
        return None  # peers come back through admin_addPeer (the provider's add_peers)

    def add_peer(self, admin_url: str, address: str) -> None:
        rpc_call(admin_url, "admin_addPeer", [address])

    def remove_peer(self, admin_url: str, address: str) -> None:
        # Also drops the static dial, so the node does not redial it.
        rpc_call(admin_url, "admin_removePeer", [address])

    def identity(self, seed: int, index: int, *, nodes: int, signers: int | None) -> dict[str, str]:
        count = nodes if signers is None else signers
        if not 1 <= count <= nodes:
            raise ValueError(f"signers must be 1..{nodes}, got {count}")
        found = {"node_key": derive_key(seed, "node", index).hex()}
        if index < count:  # the first ones seal
            found["signer_key"] = derive_key(seed, "signer", index).hex()
        return found

    def seals(self, node: NodeSpec) -> bool:
        return is_signer(node)

    def environment(self, testnet: Testnet, node: NodeSpec, place: Placement) -> dict[str, str]:
        return {}

    def start_sealing(self, node: NodeSpec, admin_url: str) -> None:
        # Sealing starts only once every node is connected: signers that seal before their
        # peers are known each build their own block 1, and the equal-weight forks that
        # follow can stall a Clique network for many periods.
        if is_signer(node):
            rpc_call(admin_url, "miner_start", [])

    def helpers(self, testnet: Testnet, admin: Path, alive_while: Path) -> list[Helper]:
        # One process for every signer: N Python start-ups on a busy machine cost more
        # than the whole geth init they overlap with.
        sealing = signers(testnet)
        if not sealing:
            return []
        sockets = [admin / _signer_socket(node) for node in sealing]
        argv = [sys.executable, clique_signer.script_path()]
        for socket in sockets:
            argv += ["--socket", str(socket)]
        keys = ",".join(node.identity["signer_key"] for node in sealing)
        return [
            Helper(
                name="signers",
                argv=[*argv, "--alive-while", str(alive_while)],
                env={clique_signer.KEY_ENV: keys},
                ready=tuple(sockets),
            )
        ]

    def finalized(self, node: NodeSpec) -> Head | None:
        raise UnsupportedAction(
            "client geth (Clique) has no finality to wait for: every block is final once "
            "sealed, and reorgs happen only between signers (proof of stake: "
            "--chain-client=geth-pos)"
        )

    def evm_version(self, node: NodeSpec) -> str:
        # The genesis enables every fork up to London and none after (see _FORKS):
        # solc calls that EVM "paris" (London's opcodes, DIFFICULTY read as PREVRANDAO).
        return "paris"

    def repairer(self, chain: Chain) -> Repairer | None:
        from .clique import CliqueUnstall

        return CliqueUnstall(chain)


def geth_flags(testnet: Testnet, node: NodeSpec, place: Placement) -> list[str]:
    """The argv every geth node of the harness runs with, Clique or proof of stake: its
    datadir and config, full sync with every block's state kept, its listeners (public
    APIs only, loopback vhosts and origins), no discovery, its admin socket."""
    datadir = place.datadir
    return [
        place.binary,
        "--datadir",
        datadir,
        "--config",
        f"{datadir}/config.toml",
        "--networkid",
        str(testnet.chain_id),
        "--syncmode",
        "full",
        "--gcmode",
        "archive",
        "--authrpc.addr",
        place.listen,
        "--authrpc.port",
        str(place.ports["authrpc"]),
        "--http",
        "--http.addr",
        place.listen,
        "--http.port",
        str(place.ports["rpc"]),
        "--http.api",
        _PUBLIC_APIS,
        # Loopback (the published port of a container, too) and the node's own name,
        # by which other containers of the run reach it.
        "--http.vhosts",
        f"localhost,127.0.0.1,{node.name}",
        # Its own listener, beside the RPC ones: /debug/metrics/prometheus.
        "--metrics",
        "--metrics.addr",
        place.listen,
        "--metrics.port",
        str(place.ports["metrics"]),
        "--ws",
        "--ws.addr",
        place.listen,
        "--ws.port",
        str(place.ports["ws"]),
        "--ws.api",
        _PUBLIC_APIS,
        # A browser page of any other site must not drive the node (clients that send
        # no Origin, like the agents, are let in).
        "--ws.origins",
        "http://localhost,http://127.0.0.1",
        # No discovery and no dials outside the run's own network.
        "--nodiscover",
        "--nat",
        "none",
        "--netrestrict",
        place.netrestrict,
        "--ipcpath",
        place.ipc_path,
        "--cache",
        "64",
        "--txpool.globalslots",
        "20000",
        "--txpool.accountslots",
        "64",
        "--txpool.globalqueue",
        "4096",
        "--rpc.txfeecap",
        "0",
        "--verbosity",
        "3",
    ]


def _signer_socket(node: NodeSpec) -> str:
    return f"{node.name}-signer.ipc"


def write_config(datadir: Path, listen: str, peers: Sequence[str]) -> None:
    (datadir / "config.toml").write_text(
        f"[Node.P2P]\nListenAddr = {json.dumps(listen)}\nStaticNodes = {json.dumps(list(peers))}\n"
    )


def _listen_addr(datadir: Path) -> str:
    for line in (datadir / "config.toml").read_text().splitlines():
        if line.startswith("ListenAddr = "):
            return str(json.loads(line.removeprefix("ListenAddr = ")))
    raise ValueError(f"{datadir / 'config.toml'} has no ListenAddr")
