"""The resolved network: every key, account, port and peer decided before anything runs.

A ``Testnet`` is plain data. It is built from (nodes, client, period, seed) by
:func:`build_testnet`, serialised into the run's state file so that xdist workers and the
CLI can attach to a running network, and handed to a provider, which decides *how* it
runs (local processes, containers). Each node's identity (keys, roles) is the client
adapter's (``ClientAdapter.identity``), carried here without being read. The same seed
always yields the same identities and funded accounts; only the ports differ between
runs.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from ._ports import PortAllocator

if TYPE_CHECKING:
    from .clients.base import ClientAdapter

__all__ = [
    "DEFAULT_BALANCE_WEI",
    "NodeSpec",
    "Testnet",
    "build_testnet",
    "derive_key",
    "random_seed",
]

#: 1,000,000 ether per genesis account: enough for any load test, small enough to read.
DEFAULT_BALANCE_WEI = 10**24

_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def random_seed() -> int:
    """A fresh seed for a run; printed in the header so the run can be replayed."""
    return secrets.randbelow(2**31)


def derive_key(seed: int, purpose: str, index: int) -> bytes:
    """A secp256k1 private key that depends only on (seed, purpose, index)."""
    counter = 0
    while True:
        key = keccak(f"chainharness/{seed}/{purpose}/{index}/{counter}".encode())
        # keccak output is a valid key with overwhelming probability; loop for the rest.
        if 0 < int.from_bytes(key, "big") < _SECP256K1_N:
            return key
        counter += 1


@dataclass
class NodeSpec:
    """One node of the network: name, endpoints, and the client's identity for it."""

    index: int
    #: ``node0``, ``node1``, ...
    name: str
    host: str
    #: Port role → port on ``host``; the roles are the client's (``ClientAdapter.port_roles``),
    #: and every client has ``rpc``, its main API.
    ports: dict[str, int]
    #: What the client adapter derived for this node from the seed (geth: its p2p key and
    #: signer key); secrets among it are redacted from state files by key name.
    identity: dict[str, str] = field(default_factory=dict)

    @property
    def rpc_url(self) -> str:
        return f"http://{self.host}:{self.ports['rpc']}"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass
class Testnet:
    """Everything about a network that does not depend on where it runs."""

    # Its name starts with "Test": keep pytest from collecting it in users' test modules.
    __test__ = False

    #: Seed every key and account is derived from.
    seed: int
    #: Client adapter name (``geth``, ``anvil``, or a spec file path).
    client: str
    chain_id: int
    #: Block period in seconds.
    period: int
    nodes: list[NodeSpec]
    #: Number of genesis-funded accounts (derived from the seed on demand).
    account_count: int
    balance_wei: int = DEFAULT_BALANCE_WEI
    #: Block gas limit of the genesis block.
    gas_limit: int = 30_000_000
    _accounts: list[LocalAccount] | None = field(default=None, repr=False, compare=False)

    # -- lookups -------------------------------------------------------------------------

    def node(self, ref: int | str) -> NodeSpec:
        """The node with this index or name; ``IndexError``/``KeyError`` if there is none."""
        if isinstance(ref, int):
            if not 0 <= ref < len(self.nodes):
                raise IndexError(f"node index {ref} out of range 0..{len(self.nodes) - 1}")
            return self.nodes[ref]
        for node in self.nodes:
            if node.name == ref:
                return node
        raise KeyError(f"no node named {ref!r}; nodes are {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def accounts(self, start: int = 0, stop: int | None = None) -> list[LocalAccount]:
        """Genesis-funded accounts ``start:stop`` (derived once, then cached)."""
        if self._accounts is None:
            self._accounts = [
                Account.from_key(derive_key(self.seed, "account", i))
                for i in range(self.account_count)
            ]
        return self._accounts[start:stop]

    def account_addresses(self) -> list[str]:
        return [a.address for a in self.accounts()]

    # -- checks and (de)serialisation ------------------------------------------------------

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistency."""
        if not self.nodes:
            raise ValueError("a testnet needs at least one node")
        if self.period < 0:
            raise ValueError(f"period must be >= 0, got {self.period}")
        if self.account_count < 1:
            raise ValueError(f"account_count must be >= 1, got {self.account_count}")
        ports = [p for n in self.nodes for p in n.ports.values()]
        if len(set(ports)) != len(ports):
            raise ValueError("two endpoints share a port")
        if [n.index for n in self.nodes] != list(range(len(self.nodes))):
            raise ValueError("node indexes must be 0..N-1 in order")

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "client": self.client,
            "chain_id": self.chain_id,
            "period": self.period,
            "account_count": self.account_count,
            "balance_wei": str(self.balance_wei),
            "gas_limit": self.gas_limit,
            "nodes": [n.to_dict() for n in self.nodes],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Testnet:
        return cls(
            seed=int(data["seed"]),
            client=str(data["client"]),
            chain_id=int(data["chain_id"]),
            period=int(data["period"]),
            account_count=int(data["account_count"]),
            balance_wei=int(data["balance_wei"]),
            gas_limit=int(data["gas_limit"]),
            nodes=[NodeSpec(**n) for n in data["nodes"]],
        )


def build_testnet(
    *,
    nodes: int,
    client: str,
    period: int,
    seed: int,
    chain_id: int = 1337,
    accounts: int = 512,
    signers: int | None = None,
    ports: PortAllocator | None = None,
    host: str = "127.0.0.1",
    adapter: ClientAdapter | None = None,
) -> Testnet:
    """Resolve a network description: identities from ``seed`` (through ``adapter``,
    default: the one ``client`` names), free ports from ``ports``.

    ``signers`` is how many of the nodes produce blocks, for a client that lets some not
    to (geth: Clique signers, the first ones); None: all of them.
    """
    if adapter is None:
        from .clients import get_client

        adapter = get_client(client)
    if nodes < 1:
        raise ValueError(f"nodes must be >= 1, got {nodes}")
    allocator = ports or PortAllocator(host)
    roles = list(adapter.port_roles)
    free = allocator.take(len(roles) * nodes)
    specs = [
        NodeSpec(
            index=i,
            name=f"node{i}",
            host=host,
            ports=dict(zip(roles, free[len(roles) * i : len(roles) * (i + 1)], strict=True)),
            identity=adapter.identity(seed, i, nodes=nodes, signers=signers),
        )
        for i in range(nodes)
    ]
    testnet = Testnet(
        seed=seed,
        client=client,
        chain_id=chain_id,
        period=period,
        nodes=specs,
        account_count=accounts,
    )
    testnet.validate()
    return testnet
