"""The run report's cost: per-test time of the integration suite with --chain-report
against without, in the same invocation (goal: at most +5%).

    .venv/bin/python benchmarks/report.py [--pairs 1] [TEST ...]

Each pair is two whole pytest sessions of the suite on the process backend with one
seed, one without and one with ``--chain-report``, in alternating order. Per-test time
is junit's (setup + call + teardown) summed over the tests both sessions passed, and
the median of each test's own ratio (tests of at least 0.5 s), which the few tests
whose repairs swing by seconds between runs do not move; the report's drawing at the
session end shows in the wall times only. Prints JSON, then a table.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TESTS = ["tests/test_chain.py"]


def one_session(tests: list[str], seed: int, report: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="chainharness-reportbench-") as tmp:
        junit = Path(tmp) / "junit.xml"
        argv = [
            sys.executable, "-m", "pytest", *tests, "-q", "-p", "no:cacheprovider",
            "--chain-backend=process", f"--chain-seed={seed}", f"--junitxml={junit}",
        ]  # fmt: skip
        if report:
            argv.append(f"--chain-report={Path(tmp) / 'report'}")
        started = time.perf_counter()
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - started
        times: dict[str, float] = {}
        for case in ET.parse(junit).getroot().iter("testcase"):
            if all(case.find(tag) is None for tag in ("failure", "error", "skipped")):
                times[f"{case.get('classname')}::{case.get('name')}"] = float(case.get("time", 0))
        pictures = len(list((Path(tmp) / "report" / "img").glob("*.png"))) if report else 0
    return {"exit": proc.returncode, "wall_s": wall, "times": times, "pictures": pictures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tests", nargs="*", default=DEFAULT_TESTS)
    parser.add_argument("--pairs", type=int, default=1)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    rng = random.Random()
    for pair in range(args.pairs):
        seed = rng.randrange(2**31)
        order = [False, True] if pair % 2 == 0 else [True, False]
        runs = {report: one_session(args.tests, seed, report) for report in order}
        without, with_ = runs[False], runs[True]
        common = sorted(set(without["times"]) & set(with_["times"]))
        base = sum(without["times"][t] for t in common)
        cost = sum(with_["times"][t] for t in common)
        rows.append(
            {
                "seed": seed,
                "tests": len(common),
                "per_test_without_s": base / len(common) if common else 0.0,
                "per_test_with_s": cost / len(common) if common else 0.0,
                "ratio": cost / base if base else 0.0,
                # Robust to the few tests whose repairs swing by 10-25 s run to run.
                "median_test_ratio": statistics.median(
                    with_["times"][t] / without["times"][t]
                    for t in common
                    if without["times"][t] >= 0.5
                ),
                "wall_without_s": without["wall_s"],
                "wall_with_s": with_["wall_s"],
                "pictures": with_["pictures"],
                "exits": [without["exit"], with_["exit"]],
                # Where the time went: the tests that gained most with the report.
                "most_slower": sorted(
                    ((round(with_["times"][t] - without["times"][t], 2), t) for t in common),
                    reverse=True,
                )[:5],
            }
        )
    summary = {
        "pairs": rows,
        "median_ratio": statistics.median(r["ratio"] for r in rows),
        "median_test_ratio": statistics.median(r["median_test_ratio"] for r in rows),
    }
    print(json.dumps(summary, indent=2))
    print()
    print(f"{'seed':>11} {'tests':>5} {'per test w/o':>12} {'with':>8} {'ratio':>6} "
          f"{'wall w/o':>9} {'with':>7} {'pngs':>5}")  # fmt: skip
    for r in rows:
        print(
            f"{r['seed']:>11} {r['tests']:>5} {r['per_test_without_s']:>11.3f}s "
            f"{r['per_test_with_s']:>7.3f}s {r['ratio']:>6.3f} {r['wall_without_s']:>8.1f}s "
            f"{r['wall_with_s']:>6.1f}s {r['pictures']:>5}"
        )
    print(f"median ratio with/without: {summary['median_ratio']:.3f} (goal <= 1.05)")
    print(f"median per-test ratio (tests >= 0.5 s): {summary['median_test_ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
