from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Inner pytest sessions keep their run directories here, so tests can inspect them."""
    runs = tmp_path / "runs"
    monkeypatch.setenv("CHAINHARNESS_RUNS", str(runs))
    return runs


@pytest.fixture
def inner(
    pytester: pytest.Pytester, runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> pytest.Pytester:
    """A pytester whose sessions find this project's tools folder.

    Inner sessions run on the process backend unless a test asks for docker, so tests
    of process behaviour do not change with whether an engine happens to answer.
    """
    monkeypatch.setenv("CHAINHARNESS_TOOLS", str(ROOT / ".tools"))
    pytester.makeini("[pytest]\nchain_backend = process\n")
    return pytester
