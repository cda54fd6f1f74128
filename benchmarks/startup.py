"""Time to ready and to full teardown of N-node geth networks (process backend).

    .venv/bin/python benchmarks/startup.py [--sizes 1 4 8 16] [--runs 5]

Prints one JSON document and a readable table: per N, the median (and min/max) of
ready time, teardown time and RSS per node over ``--runs`` runs, and where the start
time goes (setup = genesis/init of every datadir, spawn, peers = until every node has
N-1 peers, first_block = until every node has a block above genesis).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pytest_chainharness import build_testnet
from pytest_chainharness._start import launch
from pytest_chainharness.chain import Chain
from pytest_chainharness.clients import GethAdapter
from pytest_chainharness.providers import ProcessProvider

ROOT = Path(__file__).resolve().parent.parent
GOALS = {"ready_4": 2.5, "ready_16": 8.0, "teardown": 1.0, "rss_mb": 150.0}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def one_run(nodes: int, seed: int) -> dict[str, float]:
    adapter = GethAdapter(root=ROOT)
    with tempfile.TemporaryDirectory(prefix="chainharness-bench-") as tmp:
        testnet = build_testnet(nodes=nodes, client="geth", period=1, seed=seed, accounts=512)
        provider = ProcessProvider(
            testnet,
            adapter,
            run_dir=Path(tmp),
            run_id=f"bench-{seed}",
            binary=adapter.find_binary(),
        )
        phases: dict[str, float] = {}
        t0 = time.perf_counter()
        launch(Chain(testnet, provider, adapter), phases=phases)
        ready = time.perf_counter() - t0
        time.sleep(1.0)  # RSS after a block or two, not mid-start
        pids = [int(e["pid"]) for e in provider._load()["nodes"].values()]
        rss = [rss_mb(pid) for pid in pids]
        t1 = time.perf_counter()
        provider.teardown()
        teardown = time.perf_counter() - t1
    return {"ready_s": ready, "teardown_s": teardown, "rss_mb_per_node": max(rss), **phases}


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    adapter = GethAdapter(root=ROOT)
    results: dict[str, object] = {
        "client": f"geth {adapter.version(adapter.find_binary())}",
        "backend": "process",
        "runs": args.runs,
        "goals": GOALS,
        "sizes": {},
    }
    sizes: dict[str, object] = {}
    for n in args.sizes:
        runs = [one_run(n, seed=1000 * n + i) for i in range(args.runs)]
        sizes[str(n)] = {key: summarize([r[key] for r in runs]) for key in runs[0]}
    results["sizes"] = sizes
    print(json.dumps(results, indent=2))
    keys = ["ready_s", "setup", "spawn", "peers", "first_block", "teardown_s", "rss_mb_per_node"]
    print("\nmedian of", args.runs, "runs (min-max)")
    print(f"{'N':>3}  " + "  ".join(f"{k:>18}" for k in keys))
    for n, row in sizes.items():
        cells = [
            f"{row[k]['median']:.2f} ({row[k]['min']:.2f}-{row[k]['max']:.2f})"  # type: ignore[index]
            for k in keys
        ]
        print(f"{n:>3}  " + "  ".join(f"{c:>18}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
