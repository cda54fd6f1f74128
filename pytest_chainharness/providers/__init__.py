"""Backends that run a network, one module each, behind the ``Provider`` protocol."""

from __future__ import annotations

from pathlib import Path
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


def backend_refused(requested: str, client: str, runs_on: tuple[str, ...]) -> str | None:
    """Why ``client``, whose adapter names the backends it ``runs_on``, cannot run on the
    ``requested`` backend; None when it can (``auto`` always can)."""
    if requested == "auto" or requested in runs_on:
        return None
    plural = "s" if len(runs_on) > 1 else ""
    return f"the {client} client runs on the {' and '.join(runs_on)} backend{plural} only"


def default_image(client: str, root: Path | None = None) -> str:
    """The docker image for ``client`` when ``--chain-image`` names none (its adapter's:
    the local image ``chainharness images build`` makes, or a spec's ``image:``)."""
    from ..clients import get_client

    return get_client(client, root=root).image


def resolve_backend(
    requested: str, image: str, adapter: ClientAdapter | None = None
) -> tuple[str, str]:
    """(backend, why) for a requested backend name; ``auto`` asks the engine (and picks
    processes for a client whose binary is the host's: ``ClientAdapter.host_binary``)."""
    if requested == "process":
        return "process", "requested with --chain-backend=process"
    if requested == "docker":
        return "docker", f"requested with --chain-backend=docker, image {image}"
    if adapter is not None and "docker" not in adapter.backends:
        return "process", f"auto: client {adapter.display_name} runs on processes only"
    if adapter is not None and adapter.host_binary:
        return "process", (
            f"auto: client {adapter.display_name} runs the host's binary "
            "(--chain-backend=docker runs it in containers)"
        )
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
