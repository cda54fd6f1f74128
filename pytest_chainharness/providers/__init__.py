"""Backends that run a network, one module each, behind the ``Provider`` protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..clients.base import ClientAdapter
from .base import NodeState, Provider
from .process import ProcessProvider
from .registry import Backend, backend_names, get_backend

__all__ = [
    "BACKENDS",
    "Backend",
    "NodeState",
    "ProcessProvider",
    "Provider",
    "attach_provider",
    "default_image",
    "get_backend",
    "resolve_backend",
    "runs_images",
]

#: Values accepted by ``--chain-backend``.
BACKENDS = ("auto", *backend_names())


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
    """(backend, why) for a requested backend name; ``auto`` asks each candidate backend in
    turn (a client whose binary is the host's runs on processes:
    ``ClientAdapter.host_binary``) and falls back to processes."""
    if requested != "auto":
        backend = get_backend(requested)
        how = f"requested with --chain-backend={requested}"
        how = f"{how}, image {image}" if backend.runs_images else how
        return requested, f"{how}, {backend.reach}" if backend.reach else how
    candidates = [n for n in backend_names() if get_backend(n).auto_candidate]
    if adapter is not None:
        candidates = [n for n in candidates if n in adapter.backends]
        if not candidates:
            return "process", f"auto: client {adapter.display_name} runs on processes only"
    reasons = []
    for name in candidates:
        backend = get_backend(name)
        if adapter is not None and adapter.host_binary and backend.runs_images:
            return "process", (
                f"auto: client {adapter.display_name} runs the host's binary "
                f"(--chain-backend={name} runs it in containers)"
            )
        chosen, why = backend.auto_choice(image)
        if chosen:
            return name, why
        reasons.append(why)
    return "process", "; ".join(reasons)


def runs_images(requested: str) -> bool:
    """Whether the backend named by ``--chain-backend`` runs its nodes from images (never
    for ``auto``: the host may have to serve the binary)."""
    return requested != "auto" and get_backend(requested).runs_images


def attach_provider(description: dict[str, Any], adapter: ClientAdapter) -> Provider:
    """A provider for a network another process started, from its ``describe()``."""
    return get_backend(description["provider"]).attach(description, adapter)
