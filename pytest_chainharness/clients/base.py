"""The seam between the harness and a blockchain client.

A ``ClientAdapter`` knows how to lay out a datadir for one node and which command runs it;
it knows nothing about where the node runs. Providers (process, docker) call it with the
paths as the node will see them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from .._testnet import NodeSpec, Testnet

__all__ = ["ClientAdapter"]


@runtime_checkable
class ClientAdapter(Protocol):
    """How to prepare and run one kind of node."""

    #: Name used on the command line (``--chain-client``).
    name: str
    #: Largest network this client can form (anvil: 1).
    max_nodes: int
    #: Blocks carry more than 32 bytes of extraData (Clique); web3 needs the POA middleware.
    poa: bool
    #: The client has peers whose count is part of readiness.
    has_peers: bool

    def find_binary(self, version: str | None = None, *, explicit: str | None = None) -> Path:
        """The binary for ``version`` (default when None); raises ``ToolNotFound``."""
        ...

    def version(self, binary: Path) -> str:
        """The version string the binary reports."""
        ...

    def prepare(self, testnet: Testnet, node: NodeSpec, datadir: Path, binary: Path) -> None:
        """Create ``datadir`` (genesis, keys, config) so that :meth:`command` can start it."""
        ...

    def update_peers(self, testnet: Testnet, node: NodeSpec, datadir: Path) -> None:
        """Rewrite the peer list in ``datadir`` after a port of another node changed."""
        ...

    def command(
        self, testnet: Testnet, node: NodeSpec, datadir: Path, binary: Path, *, seal: bool
    ) -> list[str]:
        """The argv that runs ``node``; with ``seal`` a signer seals blocks from the start."""
        ...

    def start_sealing(self, node: NodeSpec) -> None:
        """Make a running signer start sealing (the first start runs without sealing)."""
        ...

    def ws_url(self, node: NodeSpec) -> str:
        """The node's WebSocket endpoint."""
        ...

    def port_conflict(self, log_text: str) -> bool:
        """Whether a failed start was caused by a port taken by another program."""
        ...
