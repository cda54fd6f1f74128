"""Time to ready and to full teardown of N-node geth networks, per backend.

    .venv/bin/python benchmarks/startup.py [--backend process|docker|both]
                                           [--sizes 1 4 8 16] [--runs 5] [--no-compose]

With the docker backend, the same run also times the baseline a user would write by
hand: a docker-compose file for the same 4 geth nodes, same image and same datadirs,
brought up with ``docker-compose up -d`` and waited on with the same readiness check
(every node answers RPC, has N-1 peers and a block above genesis), then ``down -v``.

Prints one JSON document and a readable table: per N, the median (and min/max) of
ready time, teardown time and RSS per node over ``--runs`` runs, and where the start
time goes (setup = genesis/init of every datadir, spawn, peers = until every node has
N-1 peers, first_block = until every node has a block above genesis and all agree on
the head).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pytest_chainharness import build_testnet
from pytest_chainharness._rpc import RPCError, rpc_call
from pytest_chainharness._start import launch
from pytest_chainharness._testnet import NodeSpec
from pytest_chainharness.chain import Chain
from pytest_chainharness.clients import GethAdapter
from pytest_chainharness.providers import ProcessProvider, default_image
from pytest_chainharness.providers.docker import DockerProvider

ROOT = Path(__file__).resolve().parent.parent
GOALS = {
    "process": {"ready_4": 2.5, "ready_16": 8.0, "teardown": 1.0, "rss_mb": 150.0},
    "docker": {"ready_4": 4.0, "teardown": 1.0, "compose_ratio_4": 3.0},
}
IMAGE = default_image("geth")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def container_rss_mb(provider: DockerProvider) -> list[float]:
    found = []
    for node in provider.testnet.nodes:
        container = provider._client.containers.get(provider.container_name(node.index))
        found.append(rss_mb(int(container.attrs["State"]["Pid"])))
    return found


def one_run(nodes: int, seed: int, backend: str) -> dict[str, float]:
    adapter = GethAdapter(root=ROOT)
    with tempfile.TemporaryDirectory(prefix="chainharness-bench-") as tmp:
        testnet = build_testnet(nodes=nodes, client="geth", period=1, seed=seed, accounts=512)
        provider: ProcessProvider | DockerProvider
        if backend == "docker":
            provider = DockerProvider(
                testnet, adapter, run_dir=Path(tmp), run_id=f"bench-{seed}", image=IMAGE
            )
        else:
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
        if isinstance(provider, DockerProvider):
            rss = container_rss_mb(provider)
        else:
            rss = [rss_mb(int(e["pid"])) for e in provider.shared.load()["nodes"].values()]
        t1 = time.perf_counter()
        provider.teardown()
        teardown = time.perf_counter() - t1
    return {"ready_s": ready, "teardown_s": teardown, "rss_mb_per_node": max(rss), **phases}


def compose_run(nodes: int, seed: int) -> dict[str, float]:
    """The hand-written baseline: one compose service per node, same image and datadirs."""
    adapter = GethAdapter(root=ROOT)
    with tempfile.TemporaryDirectory(prefix="chainharness-compose-") as tmp:
        run_dir = Path(tmp)
        testnet = build_testnet(nodes=nodes, client="geth", period=1, seed=seed, accounts=512)
        # Only for its addressing and datadir layout; compose makes the network itself.
        layout = DockerProvider(
            testnet,
            adapter,
            run_dir=run_dir,
            run_id=f"compose-{seed}",
            image=IMAGE,
            subnet=f"10.250.{seed % 250}.0/24",
        )
        services = {}
        for node in testnet.nodes:
            place = layout._place(node.index)
            datadir = layout.datadir(node.index)
            adapter.write_files(testnet, node, datadir, place)
            run = shlex.join(adapter.command(testnet, node, place, seal=True))
            init = shlex.join(adapter.init_command(place))
            services[node.name] = {
                "image": IMAGE,
                "entrypoint": ["sh", "-c", f"{init} && exec {run}"],
                "volumes": [f"{datadir}:/data"],
                "ports": [f"127.0.0.1:{node.ports['rpc']}:8545"],
                "networks": {"chain": {"ipv4_address": layout.ip(node.index)}},
            }
        compose = {
            "version": "2.4",
            "services": services,
            "networks": {"chain": {"ipam": {"config": [{"subnet": layout.subnet}]}}},
        }
        compose_file = run_dir / "docker-compose.yml"
        compose_file.write_text(json.dumps(compose))  # YAML is a superset of JSON
        project = ["docker-compose", "-p", f"chbench{seed}", "-f", str(compose_file)]
        t0 = time.perf_counter()
        subprocess.run([*project, "up", "-d"], check=True, capture_output=True)
        wait_ready(testnet.nodes, deadline=time.monotonic() + 120)
        ready = time.perf_counter() - t0
        t1 = time.perf_counter()
        subprocess.run([*project, "down", "-v"], check=True, capture_output=True)
        teardown = time.perf_counter() - t1
        layout.close()
    return {"ready_s": ready, "teardown_s": teardown}


def wait_ready(nodes: list[NodeSpec], deadline: float) -> None:
    """The harness's readiness check: RPC, N-1 peers and a block above genesis everywhere."""
    while time.monotonic() < deadline:
        try:
            if all(
                int(rpc_call(n.rpc_url, "net_peerCount"), 16) >= len(nodes) - 1
                and int(rpc_call(n.rpc_url, "eth_blockNumber"), 16) >= 1
                for n in nodes
            ):
                return
        except RPCError:
            pass
        time.sleep(0.05)
    raise TimeoutError("the compose network was not ready in 120 s")


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def table(title: str, sizes: dict[str, dict[str, dict[str, float]]], runs: int) -> None:
    keys = ["ready_s", "setup", "spawn", "peers", "first_block", "teardown_s", "rss_mb_per_node"]
    print(f"\n{title}: median of {runs} runs (min-max)")
    print(f"{'N':>3}  " + "  ".join(f"{k:>18}" for k in keys))
    for n, row in sizes.items():
        cells = [
            f"{row[k]['median']:.2f} ({row[k]['min']:.2f}-{row[k]['max']:.2f})" if k in row else "-"
            for k in keys
        ]
        print(f"{n:>3}  " + "  ".join(f"{c:>18}" for c in cells))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["process", "docker", "both"], default="both")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-compose", action="store_true", help="skip the compose baseline")
    args = parser.parse_args()
    adapter = GethAdapter(root=ROOT)
    backends = ["process", "docker"] if args.backend == "both" else [args.backend]
    results: dict[str, object] = {
        "client": f"geth {adapter.version(adapter.find_binary())}",
        "image": IMAGE,
        "runs": args.runs,
        "goals": GOALS,
    }
    for backend in backends:
        sizes: dict[str, dict[str, dict[str, float]]] = {}
        for n in args.sizes:
            runs = [one_run(n, 1000 * n + i, backend) for i in range(args.runs)]
            sizes[str(n)] = {key: summarize([r[key] for r in runs]) for key in runs[0]}
        results[backend] = sizes
    if "docker" in backends and not args.no_compose:
        # Interleaved with nothing else: the harness's 4-node docker runs above and these
        # ran on the same engine, minutes apart.
        runs = [compose_run(4, 7000 + i) for i in range(args.runs)]
        compose = {key: summarize([r[key] for r in runs]) for key in runs[0]}
        ours = results["docker"]["4"]  # type: ignore[index]
        results["compose_4"] = compose
        results["ratio_compose_over_harness_4"] = {
            key: compose[key]["median"] / ours[key]["median"] for key in compose
        }
    print(json.dumps(results, indent=2))
    for backend in backends:
        table(f"{backend} backend", results[backend], args.runs)  # type: ignore[arg-type]
    if "docker" in backends and not args.no_compose:
        ours4 = results["docker"]["4"]  # type: ignore[index]
        print(
            f"\n4 nodes, median ready / teardown: harness {ours4['ready_s']['median']:.2f}s / "
            f"{ours4['teardown_s']['median']:.2f}s, compose {compose['ready_s']['median']:.2f}s"
            f" / {compose['teardown_s']['median']:.2f}s; compose takes "
            f"x{compose['ready_s']['median'] / ours4['ready_s']['median']:.2f} to ready and "
            f"x{compose['teardown_s']['median'] / ours4['teardown_s']['median']:.2f} to tear down"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
