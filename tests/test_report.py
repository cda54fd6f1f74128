"""The run report (--chain-report) and node metrics: real runs, pictures, a real browser."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_chainharness import Chain
from pytest_chainharness._report import _probe
from pytest_chainharness._report_html import MAX_POINTS, TracedTest, _thin, bands, collect
from pytest_chainharness.tools import tools_dir
from tests.test_lifecycle import assert_nothing_left

CHROMIUM = shutil.which("chromium")
ROOT = Path(__file__).resolve().parent.parent

SPLIT_AND_LOAD = """
import pytest

@pytest.mark.disruptive
def test_split(chain):
    start = max(h.number for h in chain.heads().values())
    # Clique: the side with 3 of 4 signers goes on, the lone node stalls.
    with chain.partition([0, 1, 2], [3]):
        chain.wait_for_height(start + 3, nodes=[0], timeout=30)
    chain.wait_converged(timeout=60)

def test_load(load_test):
    r = load_test(users=4, spawn_rate=4, run_time="6s")
    assert r.tx_included > 0

def test_no_network():
    # Longer than a few samples while the network runs: still not drawn.
    import time
    time.sleep(1.5)
"""


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = struct.unpack(">II", header[16:24])
    return width, height


@pytest.fixture(scope="module")
def four_node_report(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> tuple[Path, str, Path]:
    """One 4-node run (a 2|2 partition test, a short load test, a test without the
    network) with --chain-report and --alluredir, shared by the checks below (a
    pytester is per test): (report dir, output, allure dir)."""
    request.getfixturevalue("geth_required")
    request.getfixturevalue("mosquitto_required")
    work = tmp_path_factory.mktemp("report-run")
    runs = work / "runs"
    (work / "pytest.ini").write_text("[pytest]\nchain_backend = process\n")
    (work / "test_report_run.py").write_text(SPLIT_AND_LOAD)
    report, allure = work / "report", work / "allure"
    env = {**os.environ, "CHAINHARNESS_TOOLS": str(tools_dir(ROOT)), "CHAINHARNESS_RUNS": str(runs)}
    done = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--chain-nodes=4",
            f"--chain-report={report}", f"--alluredir={allure}",
        ],
        cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "3 passed" in out, out[-4000:]
    assert_nothing_left(runs)
    return report, out, allure


@pytest.mark.usefixtures("geth_required", "mosquitto_required")
class TestAFourNodeRun:
    def test_the_report_has_every_picture(self, four_node_report: tuple[Path, str, Path]) -> None:
        report, out, _ = four_node_report
        index = report / "index.html"
        assert f"chainharness: run report: {index}" in out
        page = index.read_text()
        for row in ("client", "version", "nodes", "backend", "seed", "exit status"):
            assert f"<th>{row}</th>" in page, row
        assert "geth" in page
        assert "1.13.15" in page
        split = next(report.glob("img/*test_split*-network.png"))
        load = next(report.glob("img/*test_load*-load0.png"))
        assert not list(report.glob("img/*test_no_network*"))
        assert "Tests that did not use the network" in page
        for picture in (split, load):
            assert picture.relative_to(report).as_posix() in page
            width, height = _png_size(picture)
            # Readable on a laptop screen: about 1000 px wide, not a thumbnail.
            assert 900 <= width <= 1200, (picture, width)
            assert 400 <= height <= 900, (picture, height)
        # The load run links locust's own report, copied beside the page.
        (locust,) = report.glob("load/*.html")
        assert locust.relative_to(report).as_posix() in page
        assert "locust" in locust.read_text().lower()
        assert "partition [[0, 1, 2], [3]]" in page

    def test_the_split_section_holds_samples_and_the_fault(
        self, four_node_report: tuple[Path, str, Path]
    ) -> None:
        """What the split's picture is drawn from: the partition and its heal, and the
        nodes sampled through the test."""
        report, _, _ = four_node_report
        # The run folder is gone after the run; the page's table shows the actions.
        page = (report / "index.html").read_text()
        split = page[page.index("test_report_run.py::test_split") :]
        split = split[: split.index("</section>")]
        assert "<td>partition [[0, 1, 2], [3]]</td>" in split
        assert "<td>heal</td>" in split
        samples = int(re.search(r"; (\d+) samples", split)[1])  # type: ignore[index]
        assert samples >= 6, split[:400]

    def test_allure_results_carry_the_pictures(
        self, four_node_report: tuple[Path, str, Path]
    ) -> None:
        _, _, allure = four_node_report
        attached: dict[str, list[str]] = {}
        for path in allure.glob("*-result.json"):
            result = json.loads(path.read_text())
            found = [a["type"] for a in _attachments(result)]
            attached[result["name"]] = found
        assert "image/png" in attached["test_split"], attached
        assert "image/png" in attached["test_load"], attached
        assert "text/html" in attached["test_load"], attached
        assert "image/png" not in attached["test_no_network"], attached

    @pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed here")
    def test_the_page_renders_in_a_real_browser(
        self, four_node_report: tuple[Path, str, Path], tmp_path: Path
    ) -> None:
        report, _, _ = four_node_report
        shot = render_in_chromium(report / "index.html", tmp_path / "page.png")
        width, height = _png_size(shot)
        assert width >= 1000, width
        assert height > 1500, height


def _attachments(item: dict[str, object]) -> list[dict[str, str]]:
    found: list[dict[str, str]] = list(item.get("attachments", []))  # type: ignore[call-overload]
    for key in ("steps", "befores", "afters"):
        for child in item.get(key, []):  # type: ignore[attr-defined]
            found += _attachments(child)
    return found


def render_in_chromium(index: Path, screenshot: Path) -> Path:
    """Open ``index`` in headless Debian chromium: fail on a console error, a page
    error, a failed request or a picture that did not load; screenshot the whole page."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            # Chromium's own background connections go nowhere on this network.
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on(
                "console",
                lambda m: (
                    problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.goto(index.as_uri(), wait_until="load")
            broken = page.evaluate(
                "() => [...document.images]"
                ".filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"
            )
            count = page.evaluate("() => document.images.length")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert count > 0, "the page shows no picture"
    assert broken == [], f"pictures that did not load: {broken}"
    assert problems == [], problems
    return screenshot


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed here")
def test_the_browser_check_fails_on_a_missing_picture(tmp_path: Path) -> None:
    """The check above can fail: a page whose picture is gone is caught."""
    (tmp_path / "index.html").write_text(
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>x</title></head>'
        '<body><img src="img/gone.png" alt="gone"></body></html>'
    )
    with pytest.raises(AssertionError, match=r"gone\.png"):
        render_in_chromium(tmp_path / "index.html", tmp_path / "shot.png")


# -- metrics ----------------------------------------------------------------------------------


@pytest.mark.chain(client="geth")
def test_geth_metrics(chain: Chain) -> None:
    node = chain.nodes[0]
    metrics = node.metrics()
    for name in ("chain_head_block", "p2p_peers", "txpool_pending"):
        assert name in metrics, sorted(metrics)[:40]
    head = node.head().number
    assert head - 5 <= metrics["chain_head_block"] <= head + 5
    assert metrics["p2p_peers"] == len(chain.nodes) - 1
    assert metrics["txpool_pending"] >= 0


@pytest.mark.chain(client="geth")
def test_a_metrics_endpoint_down_is_a_gap(chain: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sampler's probe of a node whose metrics do not answer: its height and peers
    still come, its txpool is a gap (None), and nothing raises."""
    node = chain.nodes[1]
    monkeypatch.setattr(chain.adapter, "metrics_url", lambda spec: "http://127.0.0.1:9/metrics")
    found = _probe(chain, node, True)
    assert found["height"] is not None
    assert found["peers"] is not None
    assert found["txpool"] is None
    monkeypatch.undo()
    assert _probe(chain, node, True)["txpool"] is not None


@pytest.mark.usefixtures("anvil_required", "mosquitto_required")
def test_a_client_without_metrics_says_so(inner: pytest.Pytester, runs_dir: Path) -> None:
    inner.makepyfile(
        """
        import pytest
        from pytest_chainharness import UnsupportedAction

        def test_height(chain):
            chain.wait_for_height(2)
            with pytest.raises(UnsupportedAction, match="anvil serves no Prometheus metrics"):
                chain.nodes[0].metrics()
        """
    )
    result = inner.runpytest_subprocess(
        "--chain-client=anvil", "--chain-nodes=1", "--chain-report=out"
    )
    result.assert_outcomes(passed=1)
    page = (inner.path / "out" / "index.html").read_text()
    assert "anvil serves no metrics: no txpool pictures" in page
    assert list((inner.path / "out" / "img").glob("*test_height*-network.png"))
    assert_nothing_left(runs_dir)


# -- bad input and interruption ----------------------------------------------------------


def test_an_unwritable_report_dir_is_a_usage_error(inner: pytest.Pytester, runs_dir: Path) -> None:
    (inner.path / "a_file").write_text("")
    inner.makepyfile("def test_x(chain):\n    pass\n")
    result = inner.runpytest_subprocess("--chain-report=a_file/report")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--chain-report=*a_file/report: cannot write the report there*"])
    # Nothing started: no run folder holds a network.
    assert not list(runs_dir.glob("*/network.json"))


@pytest.mark.usefixtures("geth_required", "mosquitto_required")
def test_an_interrupted_run_still_writes_the_report(
    inner: pytest.Pytester,
    runs_dir: Path,
    interrupt_when_up: Callable[..., tuple[int, str]],
) -> None:
    # The sampler's first tick never comes in the test: an interrupt that lands before
    # it (CI once sent it 50 ms after the test began) must still leave the test a
    # picture, the network's state at the interrupt.
    inner.makeconftest("import pytest_chainharness._report as r\nr.SAMPLE_EVERY = 600\n")
    code, out = interrupt_when_up(
        ["--chain-nodes=2", "--chain-report=out"], signal.SIGINT, lambda: True
    )
    assert code == pytest.ExitCode.INTERRUPTED, out[-2000:]
    page = (inner.path / "out" / "index.html").read_text()
    assert "test_hang" in page
    assert "interrupted" in page
    assert list((inner.path / "out" / "img").glob("*test_hang*-network.png")), out[-2000:]
    assert_nothing_left(runs_dir)


# -- drawing -------------------------------------------------------------------------------


def test_faults_become_bands_and_one_offs_marks() -> None:
    actions = [
        ("*", "partition node0 | node1", 10.0),
        ("node1", "kill", 12.0),
        ("node1", "start", 14.0),
        ("*", "heal", 16.0),
        ("node0", "upgrade to 1.13.14", 17.0),
        ("node0", "pause", 18.0),
    ]
    test = TracedTest("t::x", start=0.0, end=20.0)
    test.actions = [
        {"node": n, "action": a, "t0": t, "t1": t + 0.5, "test": "t::x"} for n, a, t in actions
    ]
    found, marks = bands(test)
    assert found == [
        (10.0, 16.5, "partition node0 | node1"),
        (12.0, 14.5, "kill node1"),
        (18.0, 20.0, "pause node0 (not healed in the test)"),
    ]
    assert marks == [(17.0, "upgrade to 1.13.14 node0")]


def test_long_runs_are_downsampled_and_outcomes_read() -> None:
    values = list(range(10 * MAX_POINTS + 7))
    thinned = _thin(values)
    assert len(thinned) <= MAX_POINTS + 1
    assert thinned[-1] == values[-1]
    record = collect(
        [
            {"kind": "phase", "test": "a", "when": "setup", "t0": 1.0},
            {"kind": "phase_end", "test": "a", "when": "setup", "t1": 2.0, "outcome": "failed"},
            {"kind": "phase", "test": "b", "when": "setup", "t0": 1.0},
            {"kind": "phase_end", "test": "b", "when": "setup", "t1": 2.0, "outcome": "passed"},
            {"kind": "phase", "test": "b", "when": "call", "t0": 2.0},
            {"kind": "sample", "test": "b", "phase": "call", "t": 2.5, "nodes": {}},
        ]
    )
    assert record.tests["a"].outcome == "error"
    assert record.tests["b"].outcome == "interrupted"
    assert record.tests["b"].end == 2.5
    assert not math.isinf(record.tests["b"].start)
