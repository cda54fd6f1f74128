from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from pytest_chainharness.tools import tools_dir

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
    """A pytester whose sessions find the tools folder the set-up filled
    (``$CHAINHARNESS_TOOLS``, else this project's ``.tools``).

    Inner sessions run on the process backend unless a test asks for docker, so tests
    of process behaviour do not change with whether an engine happens to answer.
    """
    monkeypatch.setenv("CHAINHARNESS_TOOLS", str(tools_dir(ROOT)))
    pytester.makeini("[pytest]\nchain_backend = process\n")
    return pytester


HOLD_THE_CHAIN = """
import time

def test_hang(chain):
    print("NETWORK-UP", flush=True)
    time.sleep(300)
"""


@pytest.fixture
def interrupt_when_up(inner: pytest.Pytester) -> Callable[..., tuple[int, str]]:
    """Run a child pytest whose one test holds the chain; once the network is up and
    ``is_up()`` agrees, send the child ``sig``. Returns its exit code and output."""

    def run(args: Sequence[str], sig: int, is_up: Callable[[], object]) -> tuple[int, str]:
        inner.makepyfile(HOLD_THE_CHAIN)
        out = inner.path / "out.txt"
        with open(out, "w") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pytest", "-s", "-p", "no:cacheprovider", *args],
                cwd=inner.path,
                stdout=sink,
                stderr=subprocess.STDOUT,
                # A shell running us in the background ignores SIGINT, and children inherit
                # that; Python only turns SIGINT into KeyboardInterrupt when it is default.
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )
        try:
            deadline = time.monotonic() + 60
            while "NETWORK-UP" not in out.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert is_up(), out.read_text()[-2000:]
            proc.send_signal(sig)
            return proc.wait(timeout=30), out.read_text()
        finally:
            proc.kill()
            proc.wait()

    return run
