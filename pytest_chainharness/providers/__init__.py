"""Backends that run a network, one module each, behind the ``Provider`` protocol."""

from __future__ import annotations

from typing import Any

from ..clients.base import ClientAdapter
from .base import NodeState, Provider
from .process import ProcessProvider

__all__ = [
    "BACKENDS",
    "NodeState",
    "ProcessProvider",
    "Provider",
    "attach_provider",
    "default_image",
    "resolve_backend",
]

#: Values accepted by ``--chain-backend``.
BACKENDS = ("auto", "docker", "process")


def default_image(client: str) -> str:
    """The local image ``chainharness images build`` makes for ``client``."""
    from ..images import ANVIL_IMAGE, geth_image
    from ..tools import DEFAULT_GETH_VERSION

    return ANVIL_IMAGE if client == "anvil" else geth_image(DEFAULT_GETH_VERSION)


def resolve_backend(requested: str, image: str) -> tuple[str, str]:
    """(backend, why) for a requested backend name; ``auto`` asks the engine."""
    if requested == "process":
        return "process", "requested with --chain-backend=process"
    if requested == "docker":
        return "docker", f"requested with --chain-backend=docker, image {image}"
    from .._docker import engine_status, image_exists

    up, why = engine_status()
    if not up:
        return "process", f"auto: {why}"
    if not image_exists(image):
        return "process", f"auto: {why}, but image {image} is missing (chainharness images build)"
    return "docker", f"auto: {why} and image {image} present"


def attach_provider(description: dict[str, Any], adapter: ClientAdapter) -> Provider:
    """A provider for a network another process started, from its ``describe()``."""
    if description["provider"] == "docker":
        from .docker import DockerProvider

        return DockerProvider.attach(description, adapter)
    return ProcessProvider.attach(description, adapter)
