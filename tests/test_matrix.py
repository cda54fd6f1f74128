"""The integration suite (tests/test_chain.py and the bus tests) on CometBFT, on both
backends, and on geth-pos on processes: the same modules the session runs on geth, as a
whole inner run each.

Tests that need what only geth (Clique) has are marked ``geth_only`` in those modules,
the Ethereum ones ``ethereum``; they are skipped with that reason where the client lacks
it, and every other test must pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_lifecycle import assert_nothing_left

ROOT = Path(__file__).resolve().parent.parent
#: Client-neutral tests of the two modules (27 when this was written); fewer passing
#: means a test was newly skipped or lost.
AT_LEAST = 27
#: The client-neutral and the Ethereum tests (36 when this was written).
AT_LEAST_ETHEREUM = 36


def run_the_suite(inner: pytest.Pytester, client: str, backend: str) -> pytest.RunResult:
    inner.makeconftest((ROOT / "conftest.py").read_text())
    inner.makepyfile(
        test_chain=(ROOT / "tests" / "test_chain.py").read_text(),
        test_bus=(ROOT / "tests" / "test_bus.py").read_text(),
    )
    return inner.runpytest_subprocess(
        f"--chain-client={client}", f"--chain-backend={backend}", "--chain-nodes=4", "-rs"
    )


def assert_only_geth_skipped(result: pytest.RunResult, client: str, at_least: int) -> None:
    out = result.stdout.str()
    outcomes = result.parseoutcomes()
    assert set(outcomes) <= {"passed", "skipped"}, out[-4000:]
    assert outcomes["passed"] >= at_least, out[-4000:]
    skips = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    assert skips, out[-4000:]
    for line in skips:
        assert "needs client geth" in line, line
        assert f"this run uses {client}" in line, line


@pytest.mark.usefixtures("cometbft_required", "mosquitto_required")
@pytest.mark.parametrize("backend", ["process", "docker"])
def test_the_integration_suite_on_cometbft(
    inner: pytest.Pytester, runs_dir: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "docker":
        request.getfixturevalue("docker_required")
    result = run_the_suite(inner, "cometbft", backend)
    assert_only_geth_skipped(result, "cometbft", AT_LEAST)
    assert_nothing_left(runs_dir)


@pytest.mark.usefixtures("geth_pos_required", "mosquitto_required")
def test_the_integration_suite_on_geth_pos(inner: pytest.Pytester, runs_dir: Path) -> None:
    result = run_the_suite(inner, "geth-pos", "process")
    assert_only_geth_skipped(result, "geth-pos", AT_LEAST_ETHEREUM)
    assert_nothing_left(runs_dir)
