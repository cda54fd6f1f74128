"""Flakiness soak: run the integration and bus tests R times per backend, count failures.

    .venv/bin/python benchmarks/soak.py [--runs 50] [--backend process|docker|both]
                                        [--budget SECONDS] [--parallel N] [TEST ...]

Each run is a whole pytest session (its own 4-node network) on one backend with a fresh
seed, so a failure can be replayed: the seed is printed with it
(``--chain-seed=SEED --chain-backend=BACKEND``), and the run's logs are kept under
``.chainharness/failed/<run>/`` by the plugin itself. Runs alternate between backends.
``--budget`` stops starting new runs after that many seconds (the report says how many
ran). Prints JSON, then a table: runs and failed runs per backend, failures per test.

Default tests: the integration suite (tests/test_chain.py) and the bus tests against the
session network (tests/test_bus.py without its whole-run class, which starts networks of
its own and is covered by the suite).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TESTS = ["tests/test_chain.py", "tests/test_bus.py"]
DEFAULT_DESELECT = "not TestWholeRuns and not test_the_bus_has_what_wait_for_tx_returned"


@dataclass
class RunResult:
    backend: str
    seed: int
    exit: int
    tests: int
    failed: list[str]
    seconds: float
    #: Where the plugin kept the run's logs (a failed run), else None.
    logs: str | None
    #: Test id → the end of its failure text (the assertion and what led to it).
    reasons: dict[str, str]

    @property
    def ok(self) -> bool:
        return not self.failed and self.exit == 0


def one_run(backend: str, seed: int, tests: list[str], select: str) -> RunResult:
    with tempfile.TemporaryDirectory(prefix="chainharness-soak-") as tmp:
        junit = Path(tmp) / "junit.xml"
        argv = [
            sys.executable, "-m", "pytest", *tests, "-q", "-p", "no:cacheprovider",
            f"--chain-backend={backend}", f"--chain-seed={seed}", f"--junitxml={junit}",
        ]  # fmt: skip
        if select:
            argv += ["-k", select]
        started = time.perf_counter()
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1800)
        elapsed = time.perf_counter() - started
        failed: list[str] = []
        reasons: dict[str, str] = {}
        total = 0
        if junit.exists():
            for case in ET.parse(junit).getroot().iter("testcase"):
                total += 1
                problem = case.find("failure")
                if problem is None:
                    problem = case.find("error")
                if problem is not None:
                    name = f"{case.get('classname')}::{case.get('name')}"
                    failed.append(name)
                    # The logs are kept, but the why is only in pytest's report.
                    text = problem.text or problem.get("message") or ""
                    reasons[name] = "\n".join(text.splitlines()[-40:])
        if proc.returncode != 0 and not failed:
            # Every test passed and pytest still failed (an error at session start or
            # end, a warning turned error at exit): only its own output says why.
            name = f"(exit {proc.returncode}, no failed test)"
            failed.append(name)
            output = (proc.stdout + proc.stderr).splitlines()
            reasons[name] = "\n".join(output[-60:])
        kept = [
            line.split(" kept in ", 1)[1].split(" ", 1)[0]
            for line in proc.stdout.splitlines()
            if "this run's logs are kept in" in line
        ]
    return RunResult(
        backend,
        seed,
        proc.returncode,
        total,
        failed,
        round(elapsed, 1),
        kept[0] if kept else None,
        reasons,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tests", nargs="*", default=DEFAULT_TESTS)
    parser.add_argument("--runs", type=int, default=50, help="runs per backend (default 50)")
    parser.add_argument("--backend", choices=["process", "docker", "both"], default="both")
    parser.add_argument("-k", dest="select", default=DEFAULT_DESELECT, help="pytest -k")
    parser.add_argument("--budget", type=float, default=None, help="seconds; then stop")
    parser.add_argument(
        "--parallel", type=int, default=1, help="runs at once, each its own network (default 1)"
    )
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.parallel < 1:
        parser.error("--parallel must be at least 1")
    backends = ["process", "docker"] if args.backend == "both" else [args.backend]
    started = time.monotonic()
    results: list[RunResult] = []
    rng = random.Random()
    jobs = [
        (run, backend, rng.randrange(2**31)) for run in range(args.runs) for backend in backends
    ]
    lock = threading.Lock()

    def run_one(job: tuple[int, str, int]) -> None:
        run, backend, seed = job
        if args.budget is not None and time.monotonic() - started > args.budget:
            return  # out of time: no new run starts
        result = one_run(backend, seed, args.tests, args.select)
        with lock:
            results.append(result)
            print(
                f"{backend} run {run + 1}: {'ok' if result.ok else 'FAILED'} {result.tests} "
                f"tests in {result.seconds}s seed={result.seed} {result.failed or ''}",
                file=sys.stderr,
                flush=True,
            )
            for name, why in result.reasons.items():
                print(f"  {name}:\n    " + why.replace("\n", "\n    "), file=sys.stderr)

    # Runs side by side load the cores as CI's xdist workers do, and a soak of 50 runs
    # per backend fits in an afternoon (each run is mostly waiting on its chain).
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        list(pool.map(run_one, jobs))
    summary = {
        backend: _summary([r for r in results if r.backend == backend]) for backend in backends
    }
    report = {
        "tests": args.tests,
        "select": args.select,
        "summary": summary,
        "runs": [asdict(r) for r in results],
    }
    print(json.dumps(report, indent=1))
    print(f"\nsoak: {' '.join(args.tests)} -k {args.select!r}")
    print(f"{'backend':<8}{'runs':>6}{'failed':>8}{'median run':>12}  failed seeds")
    for backend, row in summary.items():
        median = f"{row['median_run_s']:.0f}s" if row["median_run_s"] is not None else "-"
        seeds = ", ".join(str(s) for s in row["failed_seeds"]) or "-"
        print(f"{backend:<8}{row['runs']:>6}{row['failed_runs']:>8}{median:>12}  {seeds}")
        for name, count in sorted(row["failures_per_test"].items()):
            print(f"    {count} x {name}")
    return 0 if all(row["failed_runs"] == 0 for row in summary.values()) else 1


def _summary(mine: list[RunResult]) -> dict[str, Any]:
    bad = [r for r in mine if not r.ok]
    per_test: dict[str, int] = {}
    for r in bad:
        for name in r.failed:
            per_test[name] = per_test.get(name, 0) + 1
    return {
        "runs": len(mine),
        "failed_runs": len(bad),
        "failures_per_test": per_test,
        "failed_seeds": [r.seed for r in bad],
        "kept_logs": [r.logs for r in bad if r.logs],
        "median_run_s": statistics.median(r.seconds for r in mine) if mine else None,
    }


if __name__ == "__main__":
    sys.exit(main())
