"""Client adapters, one module each; :func:`get_client` picks one by name."""

from __future__ import annotations

from pathlib import Path

from .anvil import AnvilAdapter
from .base import ClientAdapter
from .geth import GethAdapter

__all__ = ["CLIENTS", "AnvilAdapter", "ClientAdapter", "GethAdapter", "get_client"]

#: Built-in clients by name.
CLIENTS: dict[str, type[GethAdapter] | type[AnvilAdapter]] = {
    "geth": GethAdapter,
    "anvil": AnvilAdapter,
}


def get_client(name: str, *, root: Path | None = None) -> ClientAdapter:
    """The adapter for ``name``; ``ValueError`` listing the clients when unknown."""
    try:
        cls = CLIENTS[name]
    except KeyError:
        raise ValueError(f"unknown client {name!r}; choose one of: {', '.join(CLIENTS)}") from None
    return cls(root=root)
