"""Time to ready and to full teardown of N-node geth networks, per backend.

    .venv/bin/python benchmarks/startup.py [--backend process|docker|both]
                                           [--sizes 1 4 8 16] [--runs 5] [--no-compose]
    .venv/bin/python benchmarks/startup.py --client cometbft [--runs 5]
    .venv/bin/python benchmarks/startup.py --client geth-pos [--runs 3]
    .venv/bin/python benchmarks/startup.py --backend kubernetes [--kubeconfig PATH] [--runs 5]

``--backend kubernetes``: 4 geth nodes as pods of the cluster ``--kubeconfig`` names
(default: the one ``scripts/k8s.sh start`` writes), interleaved run by run with the same
network on the docker backend (the baseline; goal: within 2x of it). The cluster's own
start and build times are ``scripts/k8s.sh``'s, reported apart in docs/benchmarks.md.

``--client cometbft``: 4 CometBFT nodes on processes until every node has 3 peers and a
height >= 2, started by the harness (its spec file) and, interleaved in the same run, by
the hand-written script ``benchmarks/cometbft_by_hand.sh`` (the baseline).

``--client geth-pos``: 4 geth + prysm nodes on processes, started by the harness and,
interleaved in the same run, by the hand-written ``benchmarks/geth_pos_by_hand.sh``:
ready (every node peered, every geth at block >= 1, genesis included), the first
finalized block on every node, and memory per node (geth + beacon + validator).

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
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from pytest_chainharness import build_testnet
from pytest_chainharness._rpc import RPCError, rpc_call
from pytest_chainharness._start import launch
from pytest_chainharness._testnet import NodeSpec
from pytest_chainharness.chain import Chain
from pytest_chainharness.clients import GethAdapter, get_client
from pytest_chainharness.providers import ProcessProvider, default_image
from pytest_chainharness.providers.docker import DockerProvider
from pytest_chainharness.providers.kubernetes import KubernetesProvider

ROOT = Path(__file__).resolve().parent.parent
GOALS = {
    "process": {"ready_4": 2.5, "ready_16": 8.0, "teardown": 1.0, "rss_mb": 150.0},
    "docker": {"ready_4": 4.0, "teardown": 1.0, "compose_ratio_4": 3.0},
    "kubernetes": {"ready_ratio_over_docker_4": 2.0},
}
KUBECONFIG = "/var/lib/chainharness-k8s/admin.kubeconfig"
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


def one_run(nodes: int, seed: int, backend: str, kubeconfig: str = KUBECONFIG) -> dict[str, float]:
    adapter = GethAdapter(root=ROOT)
    with tempfile.TemporaryDirectory(prefix="chainharness-bench-") as tmp:
        testnet = build_testnet(nodes=nodes, client="geth", period=1, seed=seed, accounts=512)
        provider: ProcessProvider | DockerProvider | KubernetesProvider
        if backend == "kubernetes":
            provider = KubernetesProvider(
                testnet,
                adapter,
                run_dir=Path(tmp),
                run_id=f"bench-{seed}",
                image=IMAGE,
                kubeconfig=kubeconfig,
                namespace=f"bench-{seed}",
                owner="bench:0",
            )
        elif backend == "docker":
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
        elif isinstance(provider, KubernetesProvider):
            rss = [rss_mb(pid) for n in testnet.nodes for pid in provider._node_pids(n.index)]
        else:
            rss = [rss_mb(int(e["pid"])) for e in provider.shared.load()["nodes"].values()]
        t1 = time.perf_counter()
        provider.teardown()
        teardown = time.perf_counter() - t1
        if isinstance(provider, KubernetesProvider):
            provider.close()
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


def cometbft_harness_run(nodes: int, seed: int) -> dict[str, float]:
    adapter = get_client("cometbft", root=ROOT)
    with tempfile.TemporaryDirectory(prefix="chainharness-bench-") as tmp:
        testnet = build_testnet(
            nodes=nodes, client="cometbft", period=1, seed=seed, accounts=1,
            adapter=adapter,
        )  # fmt: skip
        provider = ProcessProvider(
            testnet, adapter, run_dir=Path(tmp), run_id=f"bench-{seed}",
            binary=adapter.find_binary(),
        )  # fmt: skip
        chain = Chain(testnet, provider, adapter)
        phases: dict[str, float] = {}
        cpu0 = _children_cpu()
        t0 = time.perf_counter()
        launch(chain, phases=phases, timeout=240 if nodes > 8 else 60)
        chain.wait_for_height(2, timeout=60)
        ready = time.perf_counter() - t0
        t1 = time.perf_counter()
        provider.teardown()
        teardown = time.perf_counter() - t1
        # The nodes are reaped by now: their CPU time says whether a start was CPU-bound.
        cpu = _children_cpu() - cpu0
    return {"ready_s": ready, "teardown_s": teardown, "node_cpu_s": cpu, **phases}


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cometbft_by_hand_run(nodes: int) -> dict[str, float]:
    import signal

    from pytest_chainharness._ports import PortAllocator
    from pytest_chainharness._proc import kill_pids
    from pytest_chainharness._rpc import dig, http_json

    binary = get_client("cometbft", root=ROOT).find_binary()
    ports = PortAllocator().take(2 * nodes)
    with tempfile.TemporaryDirectory(prefix="chainharness-bench-hand-") as tmp:
        t0 = time.perf_counter()
        out = subprocess.run(
            ["bash", str(ROOT / "benchmarks" / "cometbft_by_hand.sh"), str(binary), tmp,
             *map(str, ports)],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        pids = [int(p) for p in out.stdout.split()]
        deadline = time.monotonic() + 60
        pending = set(range(nodes))
        while pending:
            for i in list(pending):
                rpc = f"http://127.0.0.1:{ports[2 * i + 1]}"
                try:
                    height = int(
                        dig(http_json(f"{rpc}/status"), "result.sync_info.latest_block_height")
                    )
                    peers = int(dig(http_json(f"{rpc}/net_info"), "result.n_peers"))
                except RPCError:
                    continue
                if height >= 2 and peers == nodes - 1:
                    pending.discard(i)
            if time.monotonic() > deadline:
                raise TimeoutError(f"by-hand CometBFT network not ready: {sorted(pending)}")
            time.sleep(0.05)
        ready = time.perf_counter() - t0
        t1 = time.perf_counter()
        kill_pids(pids, sig=signal.SIGTERM, timeout=10)
        teardown = time.perf_counter() - t1
    return {"ready_s": ready, "teardown_s": teardown}


def cometbft_main(runs: int, sizes: list[int]) -> int:
    adapter = get_client("cometbft", root=ROOT)
    ours: list[dict[str, float]] = []
    hand: list[dict[str, float]] = []
    for i in range(runs):
        # Interleaved, so both see the same machine.
        ours.append(cometbft_harness_run(4, 9000 + i))
        hand.append(cometbft_by_hand_run(4))
    h = {key: summarize([r[key] for r in ours]) for key in ours[0]}
    b = {key: summarize([r[key] for r in hand]) for key in hand[0]}
    ratio = h["ready_s"]["median"] / b["ready_s"]["median"]
    result: dict[str, object] = {
        "client": f"cometbft {adapter.version(adapter.find_binary())}",
        "runs": runs,
        "goal": "harness ready within 1.2x of the hand-written script",
        "harness_4": h,
        "by_hand_4": b,
        "ratio_harness_over_hand": ratio,
    }
    larger: dict[str, dict[str, dict[str, float]]] = {}
    for n in (n for n in sizes if n != 4):
        rows = [cometbft_harness_run(n, 9100 + i) for i in range(runs)]
        larger[str(n)] = {key: summarize([r[key] for r in rows]) for key in rows[0]}
    if larger:
        result["harness_larger"] = larger
    print(json.dumps(result, indent=2))
    if larger:
        table("larger CometBFT networks on processes (harness only)", larger, runs)
    print(f"\n4 CometBFT nodes on processes, median of {runs} (min-max), peered and height >= 2")
    print(f"{'':>10}  {'ready_s':>18}  {'teardown_s':>18}")
    for name, row in (("harness", h), ("by hand", b)):
        cells = [
            f"{row[k]['median']:.2f} ({row[k]['min']:.2f}-{row[k]['max']:.2f})"
            for k in ("ready_s", "teardown_s")
        ]
        print(f"{name:>10}  {cells[0]:>18}  {cells[1]:>18}")
    print(f"harness / by hand (ready): x{ratio:.2f}")
    return 0


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and all its descendants (a geth-pos node's supervisor and parts)."""
    return sum(rss_mb(p) for p in _descendants(pid))


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            todo += [int(c) for c in task.read_text().split()]
    return found


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) the running processes ``pids`` have used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def _finalized(rpc: str) -> bool:
    try:
        block = rpc_call(rpc, "eth_getBlockByNumber", ["finalized", False], timeout=2.0)
    except RPCError:
        return False
    return bool(block) and int(block["number"], 16) > 0


def _wait_finalized(rpcs: list[str], t0: float, timeout: float = 240.0) -> float:
    pending = set(rpcs)
    while pending:
        pending = {rpc for rpc in pending if not _finalized(rpc)}
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"no finalized block on {sorted(pending)} in {timeout:g}s")
        time.sleep(0.25)
    return time.perf_counter() - t0


def pos_harness_run(nodes: int, seed: int) -> dict[str, float]:
    adapter = get_client("geth-pos", root=ROOT)
    with tempfile.TemporaryDirectory(prefix="chainharness-bench-") as tmp:
        testnet = build_testnet(
            nodes=nodes, client="geth-pos", period=2, seed=seed, accounts=512, adapter=adapter
        )
        provider = ProcessProvider(
            testnet, adapter, run_dir=Path(tmp), run_id=f"bench-{seed}",
            binary=adapter.find_binary(),
        )  # fmt: skip
        phases: dict[str, float] = {}
        try:
            t0 = time.perf_counter()
            setup_cpu = _children_cpu()
            launch(Chain(testnet, provider, adapter), phases=phases, timeout=120)
            ready = time.perf_counter() - t0
            # The CPU the start took: the set-up's tools (waited for: genesis, geth init)
            # and every node's supervisor and parts so far; the 2 cores give 2 s a second.
            supervisors = [int(e["pid"]) for e in provider.shared.load()["nodes"].values()]
            cpu = _children_cpu() - setup_cpu + sum(cpu_s(_descendants(p)) for p in supervisors)
            finalized = _wait_finalized([n.rpc_url for n in testnet.nodes], t0)
            rss = [tree_rss_mb(int(e["pid"])) for e in provider.shared.load()["nodes"].values()]
        finally:
            t1 = time.perf_counter()
            provider.teardown()
            teardown = time.perf_counter() - t1
    return {
        "ready_s": ready, "first_finalized_s": finalized, "teardown_s": teardown,
        "rss_mb_per_node": max(rss), "cpu_s_to_ready": cpu, **phases,
    }  # fmt: skip


def pos_by_hand_run(nodes: int) -> dict[str, float]:
    import signal

    from pytest_chainharness._ports import PortAllocator
    from pytest_chainharness._proc import kill_pids
    from pytest_chainharness.tools import find_prysm

    geth = get_client("geth-pos", root=ROOT).find_binary()
    prysm = find_prysm("beacon-chain", ROOT).parent
    # One free port, then the 20-port block after it per node (the script's layout).
    base = PortAllocator().take(1)[0]
    with tempfile.TemporaryDirectory(prefix="chainharness-bench-hand-") as tmp:
        t0 = time.perf_counter()
        script_cpu = _children_cpu()
        # Its own process group: on a timeout everything it started goes with it.
        script = subprocess.Popen(
            ["bash", str(ROOT / "benchmarks" / "geth_pos_by_hand.sh"), str(geth), str(prysm),
             tmp, str(nodes), str(base)],
            stdout=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            out, _ = script.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(script.pid, signal.SIGKILL)
            raise
        pids = [int(p) for p in out.split()]
        try:
            rpcs = [f"http://127.0.0.1:{base + 20 * i}" for i in range(nodes)]
            beacons = [f"http://127.0.0.1:{base + 20 * i + 6}" for i in range(nodes)]
            deadline = time.monotonic() + 120
            pending = set(range(nodes))
            while pending:
                for i in list(pending):
                    try:
                        height = int(rpc_call(rpcs[i], "eth_blockNumber", timeout=2.0), 16)
                        peers = int(rpc_call(rpcs[i], "net_peerCount", timeout=2.0), 16)
                        with urllib.request.urlopen(
                            f"{beacons[i]}/eth/v1/node/peer_count", timeout=2.0
                        ) as reply:
                            cl_peers = int(json.loads(reply.read())["data"]["connected"])
                    except (RPCError, OSError, ValueError):
                        continue
                    if height >= 1 and min(peers, cl_peers) >= 1:
                        pending.discard(i)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"by-hand geth-pos network not ready: {sorted(pending)}")
                time.sleep(0.05)
            ready = time.perf_counter() - t0
            # The script and what it waited for (genesis, geth init), and the nodes so far.
            cpu = _children_cpu() - script_cpu + cpu_s(pids)
            finalized = _wait_finalized(rpcs, t0)
            # Three processes per node, in the order the script started them.
            rss = [sum(rss_mb(p) for p in pids[3 * i : 3 * i + 3]) for i in range(nodes)]
        finally:
            t1 = time.perf_counter()
            kill_pids(pids, sig=signal.SIGTERM, timeout=15)
            teardown = time.perf_counter() - t1
    return {
        "ready_s": ready, "first_finalized_s": finalized, "teardown_s": teardown,
        "rss_mb_per_node": max(rss), "cpu_s_to_ready": cpu,
    }  # fmt: skip


def pos_main(runs: int) -> int:
    adapter = get_client("geth-pos", root=ROOT)
    ours: list[dict[str, float]] = []
    hand: list[dict[str, float]] = []
    for i in range(runs):
        ours.append(pos_harness_run(4, 9500 + i))
        hand.append(pos_by_hand_run(4))
    h = {key: summarize([r[key] for r in ours]) for key in ours[0]}
    b = {key: summarize([r[key] for r in hand]) for key in hand[0]}
    result = {
        "client": f"geth-pos (geth {adapter.version(adapter.find_binary())}, prysm v7.0.0)",
        "runs": runs,
        "goals": {"ready_s": 15.0, "first_finalized_s": 60.0},
        "harness_4": h,
        "by_hand_4": b,
        "ratio_harness_over_hand": {k: h[k]["median"] / b[k]["median"] for k in b},
    }
    print(json.dumps(result, indent=2))
    keys = ["ready_s", "first_finalized_s", "teardown_s", "rss_mb_per_node", "cpu_s_to_ready"]
    print(f"\n4 geth-pos nodes on processes, 2 s slots, median of {runs} (min-max)")
    print(f"{'':>10}  " + "  ".join(f"{k:>20}" for k in keys))
    for name, row in (("harness", h), ("by hand", b)):
        cells = [f"{row[k]['median']:.1f} ({row[k]['min']:.1f}-{row[k]['max']:.1f})" for k in keys]
        print(f"{name:>10}  " + "  ".join(f"{c:>20}" for c in cells))
    ratios = result["ratio_harness_over_hand"]
    print("harness / by hand: " + ", ".join(f"{k} x{v:.2f}" for k, v in ratios.items()))  # type: ignore[attr-defined]
    return 0


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def table(title: str, sizes: dict[str, dict[str, dict[str, float]]], runs: int) -> None:
    keys = ["ready_s", "setup", "spawn", "peers", "first_block", "teardown_s"]
    keys += [
        k for k in ("rss_mb_per_node", "node_cpu_s") if any(k in row for row in sizes.values())
    ]
    print(f"\n{title}: median of {runs} runs (min-max)")
    print(f"{'N':>3}  " + "  ".join(f"{k:>18}" for k in keys))
    for n, row in sizes.items():
        cells = [
            f"{row[k]['median']:.2f} ({row[k]['min']:.2f}-{row[k]['max']:.2f})" if k in row else "-"
            for k in keys
        ]
        print(f"{n:>3}  " + "  ".join(f"{c:>18}" for c in cells))


def kubernetes_main(runs: int, sizes: list[int], kubeconfig: str) -> int:
    """Pods beside containers: each run on kubernetes is followed by one on docker."""
    results: dict[str, object] = {"image": IMAGE, "runs": runs, "goals": GOALS["kubernetes"]}
    by_backend: dict[str, dict[str, dict[str, dict[str, float]]]] = {
        "kubernetes": {},
        "docker": {},
    }
    for n in sizes:
        done: dict[str, list[dict[str, float]]] = {"kubernetes": [], "docker": []}
        for i in range(runs):
            done["kubernetes"].append(one_run(n, 1000 * n + i, "kubernetes", kubeconfig))
            done["docker"].append(one_run(n, 1000 * n + i, "docker"))
        for backend, rows in done.items():
            by_backend[backend][str(n)] = {k: summarize([r[k] for r in rows]) for k in rows[0]}
    results.update(by_backend)
    results["ratio_kubernetes_over_docker"] = {
        n: {
            key: by_backend["kubernetes"][n][key]["median"] / by_backend["docker"][n][key]["median"]
            for key in ("ready_s", "teardown_s")
        }
        for n in by_backend["kubernetes"]
    }
    print(json.dumps(results, indent=2))
    for backend, table_rows in by_backend.items():
        table(f"{backend} backend", table_rows, runs)
    for n, ratio in results["ratio_kubernetes_over_docker"].items():  # type: ignore[attr-defined]
        print(
            f"\n{n} nodes: kubernetes takes x{ratio['ready_s']:.2f} of docker's time to ready "
            f"(goal <= x{GOALS['kubernetes']['ready_ratio_over_docker_4']:.1f}) and "
            f"x{ratio['teardown_s']:.2f} to tear down"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend", choices=["process", "docker", "both", "kubernetes"], default="both"
    )
    parser.add_argument("--kubeconfig", default=KUBECONFIG, help="for --backend kubernetes")
    parser.add_argument(
        "--sizes", type=int, nargs="+", help="network sizes (geth: 1 4 8 16; cometbft: 4)"
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-compose", action="store_true", help="skip the compose baseline")
    parser.add_argument("--client", choices=["geth", "cometbft", "geth-pos"], default="geth")
    args = parser.parse_args()
    if args.client == "geth-pos":
        return pos_main(args.runs)
    if args.client == "cometbft":
        return cometbft_main(args.runs, args.sizes or [4])
    if args.backend == "kubernetes":
        return kubernetes_main(args.runs, args.sizes or [4], args.kubeconfig)
    args.sizes = args.sizes or [1, 4, 8, 16]
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
