"""anvil (Foundry): a single-node development chain, proof that the adapter seam is real."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .._rpc import rpc_call
from .._testnet import NodeSpec, Testnet
from ..images import ANVIL_IMAGE
from ..tools import binary_version, find_anvil
from ._evm import EVM_VERSIONS, EthereumQueries
from .base import Helper, NoAdminPeers, Placement, Repairer
from .geth import genesis

if TYPE_CHECKING:
    from ..chain import Chain

__all__ = ["AnvilAdapter"]


class AnvilAdapter(EthereumQueries, NoAdminPeers):
    """One anvil node, initialised from the same genesis accounts a geth network has."""

    name = "anvil"
    evm = True
    admin_peering = False
    peer_roles: tuple[str, ...] = ()
    own_host_roles: tuple[str, ...] = ()
    backends: tuple[str, ...] = ("docker", "process")
    event_kinds: tuple[str, ...] = ()
    max_nodes = 1
    poa = False
    has_peers = False
    # One listener: WebSocket is served on the HTTP port.
    port_roles: tuple[str, ...] = ("rpc",)
    api_ports: tuple[str, ...] = ("rpc",)
    txpool_metric: str | None = None
    image = ANVIL_IMAGE
    host_binary = False
    parts: tuple[str, ...] = ()
    main_part: str | None = None
    hung_restart_after: float | None = 10.0
    stalled_peering_restart_after: float | None = None  # one node: no peers
    dials_when_told = False

    def __init__(self, root: Path | None = None) -> None:
        self._root = root
        #: Project root: where the tools folder (.tools) is looked up.
        self.root = root

    @property
    def display_name(self) -> str:
        return self.name

    def find_binary(self, version: str | None = None, *, explicit: str | None = None) -> Path:
        return find_anvil(explicit=explicit or version, root=self._root)

    def version(self, binary: Path) -> str:
        return binary_version(binary, ["--version"], r"Version:\s*(\S+)")

    def write_files(
        self, testnet: Testnet, node: NodeSpec, datadir: Path, place: Placement
    ) -> None:
        datadir.mkdir(parents=True, exist_ok=True)
        doc = genesis(testnet)
        # anvil reads the geth genesis format but has no Clique: plain extraData.
        doc["extradata"] = "0x"
        doc["config"].pop("clique", None)
        (datadir / "genesis.json").write_text(json.dumps(doc))

    def init_command(self, place: Placement) -> list[str]:
        return []

    def update_peers(self, datadir: Path, peers: Sequence[str]) -> None:
        return None

    def container_ports(self) -> dict[str, int]:
        return {"rpc": 8545}

    def container_binary(self, binary: Path | None) -> str:
        return "anvil"

    def container_mounts(self, datadir: Path, binary: Path | None) -> dict[Path, str]:
        return {}

    def command(
        self, testnet: Testnet, node: NodeSpec, place: Placement, *, seal: bool
    ) -> list[str]:
        argv = [
            place.binary,
            "--host",
            place.listen,
            "--port",
            str(place.ports["rpc"]),
            "--chain-id",
            str(testnet.chain_id),
            "--init",
            f"{place.datadir}/genesis.json",
            "--accounts",
            "0",
        ]
        if testnet.period > 0:
            argv += ["--block-time", str(testnet.period)]
        return argv

    def helpers(self, testnet: Testnet, admin: Path, alive_while: Path) -> list[Helper]:
        return []

    def identity(self, seed: int, index: int, *, nodes: int, signers: int | None) -> dict[str, str]:
        return {}  # one node; its accounts are the testnet's

    def peer_address(self, node: NodeSpec, host: str, ports: dict[str, int]) -> str:
        return ""  # one node: no peers

    def environment(self, testnet: Testnet, node: NodeSpec, place: Placement) -> dict[str, str]:
        return {}

    def start_sealing(self, node: NodeSpec, admin_url: str) -> None:
        return None  # anvil mines on its own from the start

    def repairer(self, chain: Chain) -> Repairer | None:
        return None  # one node: nothing to stall against

    def evm_version(self, node: NodeSpec) -> str:
        # anvil runs its newest fork by default; it names it ("Prague", "Osaka", or a
        # blob-parameter fork such as "Bpo1" that changes no opcode after Osaka).
        info = rpc_call(node.rpc_url, "anvil_nodeInfo", timeout=5.0)
        fork = str(info.get("hardFork", "")).lower()
        for name in EVM_VERSIONS:
            if name.lower() == fork:
                return name
        return EVM_VERSIONS[-1]

    def ws_url(self, node: NodeSpec) -> str:
        return f"ws://{node.host}:{node.ports['rpc']}"

    def metrics_url(self, node: NodeSpec) -> str | None:
        return None  # anvil serves no Prometheus metrics

    def port_conflict(self, log_text: str) -> bool:
        return "Address already in use" in log_text or "address already in use" in log_text
