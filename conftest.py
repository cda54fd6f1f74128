"""Project-wide test configuration for pytest-chainharness's own suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_chainharness._errors import ToolNotFound
from pytest_chainharness.tools import find_anvil, find_cometbft, find_geth, find_solc


def find_geth_pos(root: Path | None = None) -> Path:
    """geth-pos's binaries, as the adapter looks them up (ToolNotFound names the install),
    and the previous geth the upgrade tests go to (``tools install geth-pos`` builds it)."""
    from pytest_chainharness.clients.geth_pos import GethPosAdapter
    from pytest_chainharness.tools import POS_GETH_PREVIOUS

    adapter = GethPosAdapter(root=root)
    adapter.find_binary(POS_GETH_PREVIOUS)
    return adapter.find_binary()


ROOT = Path(__file__).resolve().parent


def _missing(find: object) -> str | None:
    try:
        find(root=ROOT)  # type: ignore[operator]
    except ToolNotFound as exc:
        return str(exc)
    return None


@pytest.fixture(scope="session")
def geth_required() -> None:
    """Skip, saying how to install it, when no geth binary exists on this machine."""
    missing = _missing(find_geth)
    if missing:
        pytest.skip(f"geth is not installed on this machine: {missing}")


@pytest.fixture(scope="session")
def anvil_required() -> None:
    missing = _missing(find_anvil)
    if missing:
        pytest.skip(f"anvil is not installed on this machine: {missing}")


@pytest.fixture(scope="session")
def cometbft_required() -> None:
    missing = _missing(find_cometbft)
    if missing:
        pytest.skip(f"cometbft is not installed on this machine: {missing}")


@pytest.fixture(scope="session")
def geth_pos_required() -> None:
    missing = _missing(find_geth_pos)
    if missing:
        pytest.skip(f"geth-pos is not installed on this machine: {missing}")


@pytest.fixture(scope="session")
def solc_required() -> None:
    missing = _missing(find_solc)
    if missing:
        pytest.skip(f"solc is not installed on this machine: {missing}")


@pytest.fixture(scope="session")
def client_required(request: pytest.FixtureRequest) -> None:
    """Skip, saying how to install it, when the run's client (``--chain-client``; the
    integration suite runs on geth, geth-pos and CometBFT) is not installed."""
    client = str(request.config.getoption("chain_client") or "geth")
    find = {
        "geth": find_geth,
        "geth-pos": find_geth_pos,
        "anvil": find_anvil,
        "cometbft": find_cometbft,
    }.get(client)
    missing = _missing(find) if find is not None else None
    if missing:
        pytest.skip(f"{client} is not installed on this machine: {missing}")


@pytest.fixture(scope="session")
def docker_required() -> None:
    """Skip, saying what is missing, when no Docker engine answers or the images are absent."""
    from pytest_chainharness._docker import engine_status, image_exists
    from pytest_chainharness.providers import default_image

    up, why = engine_status()
    if not up:
        pytest.skip(f"{why}: scripts/docker.sh installs and starts one")
    image = default_image("geth")
    if not image_exists(image):
        pytest.skip(f"image {image} is missing: chainharness images build")


@pytest.fixture(scope="session")
def geth_pos_image_required(docker_required: None) -> None:
    """Skip when a geth-pos image is absent (they are built when geth-pos is installed):
    the run's and the previous geth's, which the upgrade tests go to."""
    from pytest_chainharness._docker import image_exists
    from pytest_chainharness.images import GETH_POS_IMAGE, geth_pos_image
    from pytest_chainharness.tools import POS_GETH_PREVIOUS

    for image in (GETH_POS_IMAGE, geth_pos_image(POS_GETH_PREVIOUS)):
        if not image_exists(image):
            pytest.skip(f"image {image} is missing: chainharness images build --only geth-pos")


@pytest.fixture(scope="session")
def mosquitto_required() -> None:
    """Skip when no mosquitto binary exists: the process backend's bus broker needs it."""
    import shutil

    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto is not installed: apt-get install mosquitto (scripts/setup.sh)")
