"""Backends that run a network, one module each, behind the ``Provider`` protocol."""

from __future__ import annotations

from .base import NodeState, Provider
from .process import ProcessProvider

__all__ = ["BACKENDS", "NodeState", "ProcessProvider", "Provider", "resolve_backend"]

#: Values accepted by ``--chain-backend``.
BACKENDS = ("auto", "docker", "process")


def resolve_backend(requested: str) -> tuple[str, str]:
    """(backend, why) for a requested backend name."""
    if requested == "process":
        return "process", "requested with --chain-backend=process"
    if requested == "docker":
        return "docker", "requested with --chain-backend=docker"
    return "process", "auto: this version runs nodes as local processes"
