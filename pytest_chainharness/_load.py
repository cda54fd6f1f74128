"""Load runs: locust in a child process, its numbers and the bus's inclusion times.

Never imports locust: importing it monkeypatches the standard library for gevent, which
must not happen inside pytest. ``run_load`` starts ``python -m locust`` headless with our
user classes (``pytest_chainharness.load``), bounded in time and requests, then reads
locust's final JSON stats and the agents' block events to build a ``LoadResult``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount

from ._ports import PortAllocator

__all__ = [
    "PROFILES",
    "LoadResult",
    "LoadSpec",
    "MethodStats",
    "Slo",
    "check_slos",
    "parse_run_time",
    "parse_slo",
    "run_load",
]

#: profile → locust user classes (weights are on the classes: ReadUser 3, TransferUser 1)
PROFILES: dict[str, tuple[str, ...]] = {
    "transfer": ("TransferUser",),
    "read": ("ReadUser",),
    "mixed": ("TransferUser", "ReadUser"),
}
#: Hard bounds on every run, whatever is asked.
MAX_RUN_TIME = 600.0
MAX_USERS = 2000
DEFAULT_MAX_REQUESTS = 2_000_000
LOCUSTFILE = Path(__file__).with_name("_locustfile.py")


def parse_run_time(text: str | float | int) -> float:
    """``30``, ``"30s"``, ``"2m"``, ``"1m30s"``, ``"1h"`` → seconds; ValueError if malformed."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = re.fullmatch(r"\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", str(text))
        if not match or not any(match.groups()):
            raise ValueError(
                f"run_time={text!r}: expected seconds or a duration such as 20s, 2m, 1m30s"
            )
        h, m, s = match.groups()
        seconds = int(h or 0) * 3600 + int(m or 0) * 60 + float(s or 0)
    if not 0 < seconds <= MAX_RUN_TIME:
        raise ValueError(f"run_time={text!r}: must be more than 0 and at most {MAX_RUN_TIME:g}s")
    return seconds


@dataclass(frozen=True)
class LoadSpec:
    """A checked load run: what to start, bounded."""

    users: int
    spawn_rate: float
    run_time: float
    profile: str
    processes: int = 1
    max_requests: int = DEFAULT_MAX_REQUESTS
    #: Target transfers per second over all users (None: as fast as each user can).
    tx_rate: float | None = None

    @classmethod
    def make(
        cls,
        *,
        users: Any,
        spawn_rate: Any = None,
        run_time: Any = "30s",
        profile: Any = "transfer",
        processes: Any = 1,
        max_requests: Any = DEFAULT_MAX_REQUESTS,
        tx_rate: Any = None,
    ) -> LoadSpec:
        if isinstance(users, bool) or not isinstance(users, int) or not 1 <= users <= MAX_USERS:
            raise ValueError(f"users={users!r}: expected a whole number 1..{MAX_USERS}")
        rate = float(users if spawn_rate is None else spawn_rate)
        if not rate > 0:
            raise ValueError(f"spawn_rate={spawn_rate!r}: expected users per second > 0")
        if profile not in PROFILES:
            raise ValueError(f"profile={profile!r}: choose one of {', '.join(PROFILES)}")
        if (
            isinstance(processes, bool)
            or not isinstance(processes, int)
            or not 1 <= processes <= 64
        ):
            raise ValueError(f"processes={processes!r}: expected a whole number 1..64")
        if processes > users:
            raise ValueError(f"processes={processes} > users={users}: some would have no user")
        if not isinstance(max_requests, int) or max_requests < 1:
            raise ValueError(f"max_requests={max_requests!r}: expected a whole number >= 1")
        if tx_rate is not None and (
            isinstance(tx_rate, bool) or not isinstance(tx_rate, (int, float)) or tx_rate <= 0
        ):
            raise ValueError(f"tx_rate={tx_rate!r}: expected transfers per second > 0")
        return cls(
            users,
            rate,
            parse_run_time(run_time),
            str(profile),
            processes,
            max_requests,
            None if tx_rate is None else float(tx_rate),
        )

    @property
    def accounts_needed(self) -> int:
        # Worker w takes keys w, w+P, w+2P...: enough for the busiest worker.
        if "TransferUser" not in PROFILES[self.profile]:
            return 0
        return math.ceil(self.users / self.processes) * self.processes


@dataclass
class MethodStats:
    requests: int = 0
    failures: int = 0
    #: response time (ms, as locust rounds it) → count
    histogram: dict[float, int] = field(default_factory=dict)

    def percentile(self, q: float) -> float:
        return _percentile(self.histogram, q)


def _percentile(histogram: Mapping[float, int], q: float) -> float:
    total = sum(histogram.values())
    if total == 0:
        return math.nan
    rank = q * total
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return float(value)
    return float(max(histogram))


def _fraction(q: float) -> float:
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q!r}: expected 0 < q <= 1 (or 0 < q <= 100)")
    return q / 100 if q > 1 else q


@dataclass
class LoadResult:
    """What a load run did: locust's numbers per method, and inclusion seen on the bus."""

    requests: int
    failures: int
    rps: float
    tx_sent: int
    tx_included: int
    duration_s: float
    methods: dict[str, MethodStats]
    #: sent → in a block on node0, and → in a block on every node (ms, per included tx)
    inclusion_ms: list[float] = field(default_factory=list)
    inclusion_all_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    #: (sent at, in a block on node0 at or None), Unix seconds, one per sent transaction,
    #: oldest first: the run report's tx/s and inclusion pictures.
    timeline: list[tuple[float, float | None]] = field(default_factory=list)
    #: Locust's own HTML report of the run (in the run's folder).
    html_report: Path | None = None
    #: Locust processes that sent transactions.
    senders: int = 0
    spec: LoadSpec | None = None
    log: str = ""

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 1.0

    @property
    def included_tps(self) -> float:
        return self.tx_included / self.duration_s if self.duration_s else 0.0

    def percentile(self, method: str, q: float) -> float:
        """The ``q`` percentile (0.95 or 95) in ms of ``method``; ``inclusion`` (to node0)
        and ``inclusion_all`` (to every node) are the transaction inclusion times."""
        fraction = _fraction(q)
        if method in ("inclusion", "inclusion_all"):
            values = self.inclusion_ms if method == "inclusion" else self.inclusion_all_ms
            return _percentile(_counts(values), fraction)
        if method not in self.methods:
            raise KeyError(f"no requests of {method!r}; methods: {', '.join(sorted(self.methods))}")
        return self.methods[method].percentile(fraction)

    def to_dict(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "requests": self.requests,
            "failures": self.failures,
            "failure_ratio": self.failure_ratio,
            "rps": self.rps,
            "duration_s": self.duration_s,
            "tx_sent": self.tx_sent,
            "tx_included": self.tx_included,
            "included_tps": self.included_tps,
            "methods": {
                name: {
                    "requests": m.requests,
                    "failures": m.failures,
                    **{f"p{q}_ms": m.percentile(q / 100) for q in (50, 95, 99)},
                }
                for name, m in self.methods.items()
            },
        }
        for name in ("inclusion", "inclusion_all"):
            if self.inclusion_ms:
                summary[f"{name}_ms"] = {
                    f"p{q}": self.percentile(name, q / 100) for q in (50, 95, 99)
                }
        return summary

    def __str__(self) -> str:
        lines = [f"{'method':<26}{'requests':>9}{'fail':>7}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"]
        rows = [(name, stats) for name, stats in sorted(self.methods.items())]
        for name, stats in rows:
            lines.append(
                f"{name:<26}{stats.requests:>9}{stats.failures:>7}"
                f"{stats.percentile(0.5):>9.0f}{stats.percentile(0.95):>9.0f}"
                f"{stats.percentile(0.99):>9.0f}"
            )
        for name in ("inclusion", "inclusion_all"):
            values = self.inclusion_ms if name == "inclusion" else self.inclusion_all_ms
            if values:
                label = "tx included (node0)" if name == "inclusion" else "tx included (all nodes)"
                lines.append(
                    f"{label:<26}{len(values):>9}{'':>7}{self.percentile(name, 0.5):>9.0f}"
                    f"{self.percentile(name, 0.95):>9.0f}{self.percentile(name, 0.99):>9.0f}"
                )
        lines.append(
            f"total: {self.requests} requests, {self.failures} failures "
            f"({self.failure_ratio:.1%}), {self.rps:.1f} req/s over {self.duration_s:.1f}s; "
            f"tx sent {self.tx_sent}, included {self.tx_included} ({self.included_tps:.1f}/s)"
        )
        for error, count in sorted(self.errors.items(), key=lambda kv: -kv[1])[:5]:
            lines.append(f"  error x{count}: {error}")
        return "\n".join(lines)


def _counts(values: Iterable[float]) -> dict[float, int]:
    found: dict[float, int] = {}
    for v in values:
        found[v] = found.get(v, 0) + 1
    return found


# -- SLOs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slo:
    text: str
    metric: str
    op: str
    bound: float
    #: for percentiles: the method and the fraction
    method: str | None = None
    q: float | None = None

    def value(self, result: LoadResult) -> float:
        if self.method is not None and self.q is not None:
            return result.percentile(self.method, self.q)
        return float(getattr(result, self.metric))

    def holds(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return {
            "<": value < self.bound,
            "<=": value <= self.bound,
            ">": value > self.bound,
            ">=": value >= self.bound,
        }[self.op]


_SLO = re.compile(
    r"^\s*(?:p(?P<q>\d+(?:\.\d+)?)\((?P<method>[\w.]+)\)|(?P<metric>failure_ratio|rps|"
    r"included_tps|tx_included|tx_sent|requests|failures))\s*(?P<op><=|>=|<|>)\s*"
    r"(?P<bound>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|%)?\s*$"
)


def parse_slo(text: str) -> Slo:
    """``p95(eth_sendRawTransaction) <= 250ms``, ``failure_ratio < 1%``,
    ``included_tps >= 50``, ``p95(inclusion) <= 2s``."""
    match = _SLO.match(text)
    if not match:
        raise ValueError(
            f"SLO {text!r}: expected e.g. 'p95(eth_sendRawTransaction) <= 250ms', "
            "'failure_ratio <= 1%', 'included_tps >= 50' or 'p95(inclusion) <= 2s'"
        )
    bound = float(match["bound"])
    unit = match["unit"]
    if unit == "s":
        bound *= 1000
    elif unit == "%":
        bound /= 100
    if match["method"]:
        if unit == "%":
            raise ValueError(f"SLO {text!r}: a percentile bound is in ms or s, not %")
        q = float(match["q"])
        return Slo(text.strip(), "percentile", match["op"], bound, match["method"], _fraction(q))
    if unit in ("ms", "s"):
        raise ValueError(f"SLO {text!r}: {match['metric']} has no time unit")
    return Slo(text.strip(), match["metric"], match["op"], bound)


def check_slos(result: LoadResult, slos: Sequence[Slo]) -> list[str]:
    """The SLOs that do not hold, each with the measured value."""
    broken = []
    for slo in slos:
        try:
            value = slo.value(result)
        except KeyError as exc:
            broken.append(f"{slo.text}: {exc.args[0]}")
            continue
        if not slo.holds(value):
            unit = " ms" if slo.method else ""
            broken.append(f"{slo.text}: measured {value:.4g}{unit}")
    return broken


# -- running --------------------------------------------------------------------------------------


def run_load(
    spec: LoadSpec,
    *,
    state: Path,
    accounts: Sequence[LocalAccount],
    events_dir: Path | None,
    period: float,
    workdir: Path | None = None,
) -> LoadResult:
    """Run locust headless in a child process against the network in ``state``."""
    with tempfile.TemporaryDirectory(prefix="chainharness-load-", dir=workdir) as tmp:
        folder = Path(tmp)
        env = {
            **os.environ,
            "CHAINHARNESS_STATE": str(state),
            "CHAINHARNESS_LOAD_SENT": str(folder / "sent"),
            "CHAINHARNESS_LOAD_PROCESSES": str(spec.processes),
            "CHAINHARNESS_LOAD_MAX_REQUESTS": str(max(1, spec.max_requests // spec.processes)),
        }
        if spec.tx_rate is not None:
            transfer_users = spec.users if spec.profile == "transfer" else max(1, spec.users // 4)
            env["CHAINHARNESS_LOAD_USER_RATE"] = f"{spec.tx_rate / transfer_users:.6f}"
        if accounts:
            keys = folder / "keys.json"
            keys.touch(mode=0o600)
            keys.write_text(json.dumps([a.key.hex() for a in accounts]))
            env["CHAINHARNESS_LOAD_KEYS"] = str(keys)
        stats_file = folder / "stats.json"
        argv = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "-u", str(spec.users), "-r", f"{spec.spawn_rate:g}", "-t", f"{spec.run_time:g}s",
            "--stop-timeout", "3", "--only-summary", "--json-file", str(stats_file.with_suffix("")),
            "--exit-code-on-error", "0", "--html", str(folder / "locust.html"),
            *PROFILES[spec.profile],
        ]  # fmt: skip
        if spec.processes > 1:
            # A port of its own for the master and its workers: locust's default (5557)
            # is one per machine, and a second distributed run beside this one (another
            # xdist worker's) failed with "Address already in use" (CI, 2026-12-07).
            (port,) = PortAllocator().take(1)
            argv += [
                "--processes", str(spec.processes),
                "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
                "--master-host", "127.0.0.1", "--master-port", str(port),
            ]  # fmt: skip
        log_path = folder / "locust.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            try:
                # Locust stops itself at run_time; this is the backstop if it does not.
                proc.wait(timeout=spec.run_time + 60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log_text = log_path.read_text(errors="replace")
        if not stats_file.exists():
            raise RuntimeError(
                f"locust exited with {proc.returncode} and wrote no stats; its output:\n"
                + "\n".join(log_text.splitlines()[-40:])
            )
        entries = json.loads(stats_file.read_text())
        sent = _read_sent(folder)
        senders = sum(1 for path in folder.glob("sent.*") if path.stat().st_size)
        html = folder / "locust.html"
        kept: Path | None = None
        if workdir is not None and html.exists():
            kept = workdir / f"locust-{folder.name.removeprefix('chainharness-load-')}.html"
            shutil.copyfile(html, kept)
    result = _result(spec, entries, sent, events_dir, period, log_text)
    result.senders = senders
    result.html_report = kept
    return result


def _read_sent(folder: Path) -> dict[str, float]:
    sent: dict[str, float] = {}
    for path in folder.glob("sent*"):
        for line in path.read_text().splitlines():
            if line.strip():
                tx, at = line.split()
                sent[tx.lower()] = float(at)
    return sent


def _result(
    spec: LoadSpec,
    entries: list[dict[str, Any]],
    sent: dict[str, float],
    events_dir: Path | None,
    period: float,
    log: str,
) -> LoadResult:
    methods: dict[str, MethodStats] = {}
    errors: dict[str, int] = {}
    first, last = math.inf, 0.0
    for entry in entries:
        stats = methods.setdefault(entry["name"], MethodStats())
        stats.requests += int(entry["num_requests"])
        stats.failures += int(entry["num_failures"])
        for ms, count in (entry.get("response_times") or {}).items():
            key = round(float(ms))
            stats.histogram[key] = stats.histogram.get(key, 0) + int(count)
        if entry["num_requests"]:
            first = min(first, float(entry["start_time"]))
            last = max(last, float(entry["last_request_timestamp"]))
    for line in log.splitlines():
        match = re.match(r"^\s*(\d+)\s+(\S+)\s+(\S+)\s+(.+)$", line)
        if match and match[2] in methods:
            errors[f"{match[2]}: {match[4].strip()[:160]}"] = int(match[1])
    requests = sum(s.requests for s in methods.values())
    failures = sum(s.failures for s in methods.values())
    duration = max(last - first, 1e-9) if requests else spec.run_time
    included, inclusion, inclusion_all, node0 = _inclusion(sent, events_dir, period)
    return LoadResult(
        requests=requests,
        failures=failures,
        rps=requests / duration if requests else 0.0,
        tx_sent=len(sent),
        tx_included=included,
        duration_s=duration,
        methods=methods,
        inclusion_ms=inclusion,
        inclusion_all_ms=inclusion_all,
        errors=errors,
        timeline=sorted((at, node0.get(tx)) for tx, at in sent.items()),
        spec=spec,
        log=log,
    )


def _inclusion(
    sent: dict[str, float], events_dir: Path | None, period: float
) -> tuple[int, list[float], list[float], dict[str, float]]:
    """Included count and latencies, from the agents' block events (every node's own
    file), and when each transaction landed on node0."""
    if not sent or events_dir is None:
        return 0, [], [], {}
    files = sorted(events_dir.glob("events-node*.jsonl"))
    if not files:
        return 0, [], [], {}
    # Transactions still in flight when locust stopped: give them a few blocks.
    deadline = time.time() + 3 * period + 3
    while True:
        seen = _seen_in_blocks(files, set(sent))
        node0 = seen.get(files[0].stem.removeprefix("events-"), {})
        if len(node0) >= len(sent) or time.time() > deadline:
            break
        time.sleep(0.25)
    inclusion = sorted((node0[tx] - at) * 1000 for tx, at in sent.items() if tx in node0)
    everywhere: list[float] = []
    for tx, at in sent.items():
        times = [found.get(tx) for found in seen.values()]
        if len(times) == len(files) and all(t is not None for t in times):
            everywhere.append((max(t for t in times if t is not None) - at) * 1000)
    return len(node0), inclusion, sorted(everywhere), node0


def _seen_in_blocks(files: Sequence[Path], wanted: set[str]) -> dict[str, dict[str, float]]:
    """Per node, tx → when the block that holds it on the node's chain was announced.

    A block a reorg displaced does not count: its txs count where they landed after.
    """
    seen: dict[str, dict[str, float]] = {}
    for path in files:
        # height → (announced at, txs), as the node's agent last published it
        chain: dict[int, tuple[float, list[str]]] = {}
        with path.open() as fh:
            for line in fh:
                if '"block"' not in line:
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a line being written right now
                if event.get("kind") != "block":
                    continue
                payload = event.get("payload", {})
                number = int(payload["number"])
                if "replaces" in payload:
                    # The agent republishes the new branch upwards from the fork point.
                    for height in [h for h in chain if h > number]:
                        del chain[height]
                chain[number] = (float(event["ts"]), list(payload.get("txs", ())))
        found = seen.setdefault(path.stem.removeprefix("events-"), {})
        for at, txs in chain.values():
            for tx in txs:
                if tx in wanted:
                    found[tx] = at
    return seen


class LoadTestRunner:
    """What the ``load_test`` fixture returns: call it to run a load test."""

    def __init__(
        self,
        session: Any,
        slos: list[Slo],
        report: Any = None,
        on_result: Callable[[LoadResult], None] | None = None,
    ) -> None:
        self._session = session
        self._slos = list(slos)
        self._report = report
        #: Told every result before its SLOs are checked (the run report, allure).
        self._on_result = on_result
        self.results: list[LoadResult] = []

    def __call__(
        self,
        users: int = 10,
        spawn_rate: float | None = None,
        run_time: str | float = "30s",
        profile: str = "transfer",
        *,
        processes: int = 1,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        tx_rate: float | None = None,
        slo: Sequence[str] | None = None,
    ) -> LoadResult:
        """Run locust against the session's chain; AssertionError when an SLO fails."""
        spec = LoadSpec.make(
            users=users,
            spawn_rate=spawn_rate,
            run_time=run_time,
            profile=profile,
            processes=processes,
            max_requests=max_requests,
            tx_rate=tx_rate,
        )
        slos = [*self._slos, *(parse_slo(text) for text in (slo or ()))]
        session = self._session
        chain = session.chain()
        accounts = [session.funded_account() for _ in range(spec.accounts_needed)]
        result = run_load(
            spec,
            state=session.state_path(),
            accounts=accounts,
            events_dir=session.events_dir(),
            period=float(chain.testnet.period),
            workdir=session.run.run_dir,
        )
        self.results.append(result)
        if self._on_result is not None:
            self._on_result(result)
        if self._report is not None:
            self._report(f"load: {spec.users} users, {spec.profile}, {spec.run_time:g}s\n{result}")
        broken = check_slos(result, slos)
        if broken:
            raise AssertionError(
                "load SLOs not met:\n" + "\n".join(f"  - {b}" for b in broken) + f"\n\n{result}"
            )
        return result
