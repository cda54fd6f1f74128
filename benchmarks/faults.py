"""Fault recovery: 2|2 partition heal → converged, and a 4-node rolling upgrade.

    .venv/bin/python benchmarks/faults.py [--backend process|docker|both] [--runs 5]
                                          [--hold 4] [--no-settled]

Per run: a fresh 4-node geth Clique network; a 2|2 partition held ``--hold`` seconds
(under Clique each half seals at most a block or two, and often only one half can, so
a run notes whether the halves had forked), then the time from ``heal()`` until every
node reports the same head (``wait_converged``). Measured twice per run: right after
start ("fresh": every node dialled every other less than 35 s ago, and geth waits 35 s
before redialling a node) and, with --settled (default), again 36 s later ("settled").
Then a rolling
upgrade of all four nodes v1.13.15 → v1.13.14 (max_unavailable=1, the default health
check: the node follows the chain again) and back.

The backends cut the network differently, which is the comparison this prints: docker
drops packets in each container's namespace (connections stall, and resume on heal);
the process backend removes peers through the admin API (connections close, and must
be redialled on heal). Prints JSON and a table of medians (min-max).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pytest_chainharness import build_testnet
from pytest_chainharness._start import launch
from pytest_chainharness.chain import Chain
from pytest_chainharness.clients import GethAdapter
from pytest_chainharness.providers import ProcessProvider, default_image
from pytest_chainharness.providers.docker import DockerProvider

ROOT = Path(__file__).resolve().parent.parent


def partition_heal(chain: Chain, hold: float) -> tuple[float, bool]:
    """Seconds from heal to converged, and whether the halves had forked by then."""
    with chain.partition([0, 1], [2, 3]):
        time.sleep(hold)
        forked = len({h.hash for h in chain.heads().values()}) > 1
        t0 = time.perf_counter()
    chain.wait_converged(timeout=120)
    return time.perf_counter() - t0, forked


def one_run(backend: str, seed: int, hold: float, settled: bool) -> dict[str, float]:
    adapter = GethAdapter(root=ROOT)
    with tempfile.TemporaryDirectory(prefix="chainharness-bench-") as tmp:
        testnet = build_testnet(nodes=4, client="geth", period=1, seed=seed, accounts=16)
        provider: ProcessProvider | DockerProvider
        if backend == "docker":
            provider = DockerProvider(
                testnet, adapter, run_dir=Path(tmp), run_id=f"bench-{seed}",
                image=default_image("geth"),
            )  # fmt: skip
        else:
            provider = ProcessProvider(
                testnet, adapter, run_dir=Path(tmp), run_id=f"bench-{seed}",
                binary=adapter.find_binary(),
            )  # fmt: skip
        chain = Chain(testnet, provider, adapter)
        try:
            (Path(tmp) / "logs").mkdir(exist_ok=True)
            launch(chain)
            chain.wait_for_height(3, timeout=30)
            took, forked = partition_heal(chain, hold)
            result = {"heal_fresh_s": took, "forked_fresh": float(forked)}
            if settled:
                time.sleep(36)
                took, forked = partition_heal(chain, hold)
                result.update({"heal_settled_s": took, "forked_settled": float(forked)})
            chain.wait_ready(timeout=60)
            t0 = time.perf_counter()
            up = chain.rolling_upgrade("1.13.14", max_unavailable=1)
            result["rolling_upgrade_s"] = time.perf_counter() - t0
            assert up.ok, str(up)
            t0 = time.perf_counter()
            back = chain.rolling_upgrade("1.13.15", max_unavailable=1)
            result["rolling_back_s"] = time.perf_counter() - t0
            assert back.ok, str(back)
            return result
        finally:
            provider.teardown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["process", "docker", "both"], default="both")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--hold", type=float, default=4.0)
    parser.add_argument("--no-settled", dest="settled", action="store_false")
    args = parser.parse_args()
    # The harness logs each Clique unstall it performs: part of what a heal time means.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("pytest_chainharness").setLevel(logging.INFO)
    backends = ["process", "docker"] if args.backend == "both" else [args.backend]
    samples: dict[str, dict[str, list[float]]] = {}
    for backend in backends:
        for run in range(args.runs):
            result = one_run(backend, 9100 + run, args.hold, args.settled)
            rounded = {k: round(v, 2) for k, v in result.items()}
            print(f"{backend} run {run + 1}: {json.dumps(rounded)}", file=sys.stderr)
            for key, value in result.items():
                samples.setdefault(backend, {}).setdefault(key, []).append(value)
    medians = {
        backend: {key: statistics.median(values) for key, values in found.items()}
        for backend, found in samples.items()
    }
    report = {
        "runs": args.runs,
        "hold_s": args.hold,
        "median_s": medians,
        "samples_s": {
            b: {k: [round(v, 3) for v in vs] for k, vs in found.items()}
            for b, found in samples.items()
        },
    }
    print(json.dumps(report, indent=1))
    keys = ["heal_fresh_s", "heal_settled_s", "rolling_upgrade_s", "rolling_back_s"]
    print(f"\n2|2 heal -> converged and 4-node rolling upgrade: median of {args.runs} (min-max)")
    print(f"{'backend':<8}" + "".join(f"{k:>24}" for k in keys))
    for backend, found in samples.items():
        cells = [
            f"{statistics.median(found[k]):.2f} ({min(found[k]):.2f}-{max(found[k]):.2f})"
            if k in found
            else "-"
            for k in keys
        ]
        print(f"{backend:<8}" + "".join(f"{c:>24}" for c in cells))
    for backend, found in samples.items():
        forks = sum(found.get("forked_fresh", [])) + sum(found.get("forked_settled", []))
        cuts = len(found.get("forked_fresh", [])) + len(found.get("forked_settled", []))
        print(f"{backend}: the halves had forked at the heal in {forks:g} of {cuts} partitions")
    if "process" in medians and "docker" in medians:
        ratio = medians["process"]["heal_fresh_s"] / medians["docker"]["heal_fresh_s"]
        print(f"\nfresh heal: process/docker = {ratio:.1f}x (client-level vs packet-level cut)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
