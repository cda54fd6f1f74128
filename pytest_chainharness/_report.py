"""What the run report (``--chain-report``) is drawn from, recorded while the tests run.

Every process that runs tests (the xdist workers, or the one pytest process) appends
to its own ``record-<pid>.jsonl`` in the run's ``report/`` folder: each test phase's
start and end, every action on the network (faults, heals, repairs) with its time, a
sample of every node's height, peers and txpool a couple of times a second while a test
runs, and each load run's per-transaction timeline. The run's owner draws the report
from all of them at the end (``_report_html``), so no test waits on a picture.

Lines are flushed as they are written: a worker killed by an interrupt leaves what it
had, and the report shows it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ._errors import ChainHarnessError
from ._rpc import RPCError

if TYPE_CHECKING:
    from ._load import LoadResult
    from ._session import ChainSession
    from .chain import Chain, Node

__all__ = ["METRICS_EVERY", "SAMPLE_EVERY", "ReportPlugin", "ReportRecorder", "check_report_dir"]

#: Heights and peers: twice a second is finer than a block (1 s at the fastest).
SAMPLE_EVERY = 0.5
#: A metrics scrape is a few hundred kB of text to parse per geth node: once a second
#: while a load test runs (the txpool picture), once per phase otherwise.
METRICS_EVERY = 1.0
#: A node's probe must not hold the sampler: a paused node answers nothing at all.
PROBE_TIMEOUT = 1.0


def check_report_dir(path: Path) -> None:
    """Create ``path`` and prove a file can be written there; ``OSError`` says why not."""
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".chainharness-write-check-{os.getpid()}"
    probe.write_text("")
    probe.unlink()


class ReportRecorder:
    """One process's record for the run report."""

    def __init__(self, directory: Path, chain_of: Any) -> None:
        #: ``chain_of()`` → the process's running ``Chain`` or None (not started yet).
        self._chain_of = chain_of
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._file = (directory / f"record-{os.getpid()}.jsonl").open(
            "a", buffering=1, encoding="utf-8"
        )
        self._lock = threading.Lock()
        self._watch_lock = threading.Lock()
        self._test: str | None = None
        self._phase = ""
        self._sampled = False
        self._load = False
        self._phase_scraped = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watched: Chain | None = None
        self._pool: ThreadPoolExecutor | None = None
        #: node name → its probe still running (a node that answers slowly is skipped).
        self._busy: dict[str, Future[dict[str, Any]]] = {}
        self._last_metrics = 0.0
        #: The running test's own lines (its allure pictures are drawn from them).
        self.current: list[dict[str, Any]] = []
        self.network: dict[str, Any] = {}

    # -- what the hooks tell -------------------------------------------------------------

    def phase_started(
        self, nodeid: str, when: str, *, sampled: bool = True, load: bool = False
    ) -> None:
        """``sampled``: the test uses the network (a test that does not is listed in the
        report, not drawn, however long it runs beside a running network). ``load``: it
        runs load, so the txpool is scraped every ``METRICS_EVERY``, not once a phase."""
        with self._lock:
            if when == "setup":
                self.current = []
            self._test, self._phase = nodeid, when
            self._sampled = sampled
            self._load = load
            self._phase_scraped = False
        self._write({"kind": "phase", "test": nodeid, "when": when, "t0": time.time()})
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="chainharness-report", daemon=True
            )
            self._thread.start()

    def phase_finished(self, nodeid: str, when: str, outcome: str) -> None:
        self._write(
            {
                "kind": "phase_end",
                "test": nodeid,
                "when": when,
                "t1": time.time(),
                "outcome": outcome,
            }
        )
        with self._lock:
            if when == "teardown":
                self._test = None

    @contextmanager
    def action(self, node: str, action: str) -> Iterator[None]:
        """An action on the network (``Chain.action_listeners``): its start and end."""
        t0 = time.time()
        try:
            yield
        finally:
            self._write(
                {
                    "kind": "action",
                    "test": self._test,
                    "node": node,
                    "action": action,
                    "t0": t0,
                    "t1": time.time(),
                }
            )

    def load(self, result: LoadResult, html: Path | None) -> None:
        self._write(
            {
                "kind": "load",
                "test": self._test,
                "timeline": result.timeline,
                "summary": str(result),
                "html": str(html) if html is not None else None,
            }
        )

    def sample_now(self) -> None:
        """One sample of the running phase (the sampler's tick; also at an interrupt, which
        can end a test before the first tick: its picture is then the network's last state)."""
        with self._lock:
            test, phase, sampled = self._test, self._phase, self._sampled
        chain = self._chain_of()
        if test is None or not sampled or chain is None:
            return
        try:
            self._sample(chain, test, phase)
        except Exception as exc:  # a sample lost must never fail the run
            self._write({"kind": "sample_error", "test": test, "error": repr(exc)})

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._file.close()

    # -- sampling --------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            self.sample_now()

    def _sample(self, chain: Chain, test: str, phase: str) -> None:
        self.watch(chain)
        now = time.time()
        with self._lock:
            # Only load tests draw the txpool over time; scraping every node each second
            # in every test made the suite slower (benchmarks/report.py).
            if self._load:
                scrape = now - self._last_metrics >= METRICS_EVERY
            else:
                scrape = not self._phase_scraped
            if scrape:
                self._last_metrics = now
                self._phase_scraped = True
        assert self._pool is not None
        futures: dict[str, Future[dict[str, Any]]] = {}
        for node in chain.nodes:
            busy = self._busy.get(node.name)
            if busy is not None and not busy.done():
                continue  # its last probe still waits: leave a gap, not a stalled sampler
            futures[node.name] = self._busy[node.name] = self._pool.submit(
                _probe, chain, node, scrape
            )
        nodes: dict[str, dict[str, Any]] = {}
        deadline = now + PROBE_TIMEOUT + 0.5
        for name, future in futures.items():
            try:
                nodes[name] = future.result(timeout=max(0.0, deadline - time.time()))
            except Exception:
                continue
        self._write({"kind": "sample", "test": test, "phase": phase, "t": now, "nodes": nodes})

    def watch(self, chain: Chain) -> None:
        """Record ``chain``'s actions, and sample its nodes from now on."""
        with self._watch_lock:
            if chain is not self._watched:
                self._start_watching(chain)

    def _start_watching(self, chain: Chain) -> None:
        self._watched = chain
        if self.action not in chain.action_listeners:
            chain.action_listeners.append(self.action)
        adapter = chain.adapter
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        self._pool = ThreadPoolExecutor(
            max_workers=len(chain.nodes), thread_name_prefix="chainharness-report"
        )
        has_metrics = adapter.metrics_url(chain.testnet.nodes[0]) is not None
        self.network = {
            "kind": "network",
            "client": adapter.display_name,
            "nodes": [n.name for n in chain.nodes],
            "metrics": has_metrics,
            "txpool_metric": adapter.txpool_metric if has_metrics else None,
        }
        self._write(self.network)

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"))
        with self._lock:
            if record.get("test"):
                self.current.append(record)
            if not self._file.closed:
                self._file.write(line + "\n")


def _probe(chain: Chain, node: Node, scrape: bool) -> dict[str, Any]:
    """One node's height and peers, and its txpool when ``scrape``; None where it did
    not answer (a stopped node, a metrics endpoint down): a gap in the picture."""
    adapter = chain.adapter
    spec = chain.testnet.nodes[node.index]
    found: dict[str, Any] = {"height": None, "peers": None}
    try:
        found["height"] = adapter.head(spec).number
        if adapter.has_peers:
            found["peers"] = adapter.peer_count(spec)
    except (RPCError, ChainHarnessError, OSError):
        return found
    if scrape and adapter.txpool_metric is not None:
        try:
            metrics = node.metrics(timeout=PROBE_TIMEOUT)
        except (RPCError, ChainHarnessError, OSError):
            found["txpool"] = None
        else:
            found["txpool"] = _family_total(metrics, adapter.txpool_metric)
    return found


def _family_total(metrics: dict[str, float], name: str) -> float | None:
    """The value of ``name``, summed over its labelled samples (CometBFT labels every
    metric with the chain id)."""
    values = [v for k, v in metrics.items() if k == name or k.startswith(name + "{")]
    return sum(values) if values else None


class ReportPlugin:
    """``--chain-report``: records in every process that runs tests; the run's owner
    writes the report at the very end of the session, after the gate's verdict."""

    def __init__(
        self,
        config: pytest.Config,
        session: ChainSession,
        directory: Path,
        *,
        attach: bool,
        uses_network: Callable[[pytest.Item], bool],
    ) -> None:
        self.config = config
        #: Whether a test uses the network: only those are sampled and drawn.
        self.uses_network = uses_network
        self.session = session
        self.directory = directory
        #: Attach each test's pictures to its allure result (drawn as it ends).
        self.attach = attach
        self.data_dir = session.run.run_dir / "report"
        self.recorder = ReportRecorder(self.data_dir, lambda: session.current_chain)

    def _started(self, item: pytest.Item, when: str) -> None:
        load = "load_test" in getattr(item, "fixturenames", ())
        self.recorder.phase_started(item.nodeid, when, sampled=self.uses_network(item), load=load)

    def on_load(self, result: LoadResult) -> None:
        self.recorder.load(result, result.html_report)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Any:
        self._started(item, "setup")
        return (yield)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Any:
        self._started(item, "call")
        return (yield)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Any:
        self._started(item, "teardown")
        return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        report: pytest.TestReport = yield
        self.recorder.phase_finished(item.nodeid, call.when, report.outcome)
        if self.attach and call.when == "teardown":
            self._attach(item.nodeid)
        return report

    def _attach(self, nodeid: str) -> None:
        import allure

        from ._report_html import collect, draw_test

        record = collect(self.recorder.current)
        test = record.tests.get(nodeid)
        if test is None:
            return
        folder = self.directory / "img"
        folder.mkdir(parents=True, exist_ok=True)
        for picture in draw_test(test, self.recorder.network, folder):
            allure.attach.file(  # type: ignore[no-untyped-call]
                str(picture.path), name=picture.title, attachment_type=allure.attachment_type.PNG
            )

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        # Before the session's teardown: the network still answers.
        self.recorder.sample_now()

    @pytest.hookimpl(wrapper=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> Any:
        try:
            return (yield)
        finally:
            # After every other plugin's sessionfinish: the gate's verdict is out.
            self.recorder.close()
            if self.session.owner:
                self._write(session)

    def _write(self, session: pytest.Session) -> None:
        from ._report_html import write_report

        try:
            info = dict(self.session.describe())
        except Exception as exc:  # the report must be written even if this fails
            info = {"error": f"{type(exc).__name__}: {exc}"}
        summary = {key: info[key] for key in SUMMARY_KEYS if key in info}
        summary["run"] = self.session.run.run_id
        summary["exit status"] = f"{int(session.exitstatus)} ({_exit_name(session.exitstatus)})"
        gate = self.config.pluginmanager.get_plugin("chainharness-gate")
        verdict = getattr(gate, "verdict", None)
        try:
            write_report(self.directory, self.data_dir, summary, verdict=verdict)
        except Exception as exc:  # a report that fails must not hide the run's outcome
            print(
                f"chainharness: the run report was not written: {type(exc).__name__}: {exc}",
                file=sys.stderr,
            )

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        # The page is written after this summary (after the verdict): name where it goes.
        if self.session.owner:
            terminalreporter.write_line(
                f"chainharness: run report: {self.directory / 'index.html'}"
            )


SUMMARY_KEYS = ("client", "version", "nodes", "backend", "image", "seed", "repair", "repairs")


def _exit_name(status: int) -> str:
    try:
        return pytest.ExitCode(status).name.lower()
    except ValueError:
        return "other"
