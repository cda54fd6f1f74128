"""Backends by name: what the options, the session, the CLI and the watchdog need of a
backend besides its ``Provider``.

A backend is one module (``providers/<name>.py``) that defines a ``Backend`` subclass and
its ``Provider``, plus one line in ``_REGISTERED``. Nothing outside that module tests a
backend's name: each question the rest of the harness asks (may ``auto`` pick it, does it
run images, who removes what a run left) is a method here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._broker import BrokerEndpoint
    from .._options import Settings
    from .._testnet import Testnet
    from ..clients.base import ClientAdapter
    from ..services import Services, ServiceSpec
    from .base import Provider

__all__ = ["Backend", "NewRun", "backend_names", "get_backend"]

#: name → module (under ``pytest_chainharness.providers``) that defines ``BACKEND``. Imported
#: on first use: docker-py is not loaded by a run on processes. The order is ``auto``'s.
_REGISTERED: dict[str, str] = {
    "docker": "docker",
    "process": "process",
    "kubernetes": "kubernetes",
}


@dataclass(frozen=True)
class NewRun:
    """What a backend is given to create a run's provider."""

    testnet: Testnet
    adapter: ClientAdapter
    run_dir: Path
    run_id: str
    settings: Settings
    #: The pid whose death makes the run stale (None: the network outlives its starter).
    owner: int | None


class Backend:
    """One backend. Subclasses set the class attributes and implement ``create`` and
    ``attach``; the rest have the answers of a backend that runs host processes."""

    name: str = ""
    #: Its nodes run from images (``--chain-image``): the header names the image, and a
    #: spec client with an image of its own needs no binary on the host.
    runs_images: bool = False
    #: It can run ``--chain-services`` beside the chain.
    hosts_services: bool = False
    #: ``--chain-backend=auto`` may pick it (when ``auto_choice`` says it can run).
    auto_candidate: bool = False
    #: Its runs leave objects outside this host's processes and the run folder (containers,
    #: networks), which ``sweep_run`` removes: the watchdog of a run calls it.
    leaves_objects: bool = False
    #: How tests reach the nodes, for the header when it is not 127.0.0.1 ("" there).
    reach: str = ""

    def unusable(self) -> str | None:
        """Why this backend cannot run anything here now (a usage error that says what to
        do), or None."""
        return None

    def auto_choice(self, image: str) -> tuple[bool, str]:
        """Whether ``auto`` picks this backend (its nodes from ``image``), and why: the
        header shows it."""
        return True, f"auto: {self.name}"

    def create(self, run: NewRun) -> tuple[Provider, str | None]:
        """A provider for a new run, and the client's version when the backend learned it
        on the way (None: the started node is asked). Raises before anything starts when
        the run cannot start (a binary that is missing or cannot say its version)."""
        raise NotImplementedError

    def attach(self, description: dict[str, Any], adapter: ClientAdapter) -> Provider:
        """A provider for a network another process started, from its ``describe()``."""
        raise NotImplementedError

    def version_from_settings(self, settings: Settings) -> str | None:
        """The client's version as the options name it before anything starts (an image
        tag), or None: ask the binary."""
        return None

    def start_broker(self, provider: Provider, settings: Settings) -> BrokerEndpoint | None:
        """Start the run's MQTT broker where its nodes run; None: a broker on this host."""
        return None

    def start_services(self, provider: Provider, specs: list[ServiceSpec]) -> Services:
        """Start ``--chain-services`` beside the nodes (only where ``hosts_services``)."""
        raise NotImplementedError

    def sweep_stale(self) -> list[str]:
        """Remove what runs of owners that are gone left outside their run folders (a
        start does this first); the run ids swept."""
        return []

    def sweep_run(self, run_id: str, run_dir: Path) -> None:
        """Remove what run ``run_id`` may have left outside this host's processes and its
        run folder (containers, networks). Called for every backend; one that did not run
        ``run_id`` finds nothing of it."""
        return None


def backend_names() -> tuple[str, ...]:
    return tuple(_REGISTERED)


def get_backend(name: str) -> Backend:
    """The backend called ``name``; ``KeyError`` for a name that is not registered."""
    module = importlib.import_module(f".{_REGISTERED[name]}", __package__)
    backend: Backend = module.BACKEND
    return backend
