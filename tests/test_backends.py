"""The backend registry: ``--chain-backend`` choices, ``auto``'s pick and why, and what each
registered backend answers for the session, the options and the watchdog."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_chainharness.clients import GethAdapter
from pytest_chainharness.providers import (
    BACKENDS,
    attach_provider,
    get_backend,
    resolve_backend,
    runs_images,
)
from pytest_chainharness.providers.registry import Backend, backend_names

ROOT = Path(__file__).resolve().parent.parent


def test_the_options_offer_auto_and_every_registered_backend() -> None:
    assert ("auto", *backend_names()) == BACKENDS
    assert {"docker", "process"} <= set(backend_names())
    for name in backend_names():
        backend = get_backend(name)
        assert isinstance(backend, Backend)
        assert backend.name == name
        # Each one creates and attaches its own providers (the base class cannot).
        assert type(backend).create is not Backend.create
        assert type(backend).attach is not Backend.attach
        assert not backend.hosts_services or type(backend).start_services is not (
            Backend.start_services
        )
    with pytest.raises(KeyError):
        get_backend("auto")


def test_a_backend_asked_for_by_name_is_the_one_used() -> None:
    assert resolve_backend("process", "img:1") == (
        "process",
        "requested with --chain-backend=process",
    )
    assert resolve_backend("docker", "img:1") == (
        "docker",
        "requested with --chain-backend=docker, image img:1",
    )
    assert runs_images("docker")
    assert not runs_images("process")
    assert not runs_images("auto")


def test_auto_without_an_engine_picks_processes_and_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    backend, why = resolve_backend("auto", "img:1", GethAdapter(root=ROOT))
    assert backend == "process"
    assert why.startswith("auto: no Docker engine answers")
    assert get_backend("docker").unusable() is not None
    assert "scripts/docker.sh" in str(get_backend("docker").unusable())


def test_auto_keeps_a_processes_only_client_on_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = GethAdapter(root=ROOT)
    monkeypatch.setattr(adapter, "backends", ("process",))
    assert resolve_backend("auto", "img:1", adapter) == (
        "process",
        "auto: client geth runs on processes only",
    )


def test_a_description_attaches_to_its_own_backend(tmp_path: Path) -> None:
    from pytest_chainharness import build_testnet

    testnet = build_testnet(nodes=1, client="geth", period=1, seed=1, accounts=2)
    description = {
        "provider": "process",
        "run_dir": str(tmp_path),
        "run_id": "ch-attach01",
        "binary": "/bin/true",
        "testnet": testnet.to_dict(),
    }
    provider = attach_provider(description, GethAdapter(root=ROOT))
    assert provider.name == "process"
    assert provider.run_id == "ch-attach01"
