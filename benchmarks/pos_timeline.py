"""When each thing of a geth-pos start happens: one harness start of 4 nodes on processes,
with a poller that notes the first time each node's geth API, beacon API, EL and beacon
peer counts (>= 1, 2, 3) and block 1 are seen.

    .venv/bin/python benchmarks/pos_timeline.py [--seed N]

Prints the start's phases as JSON, then one line per event, in seconds from the start
(genesis included). docs/benchmarks.md ("geth-pos") reads these.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from pytest_chainharness import build_testnet
from pytest_chainharness._rpc import RPCError, rpc_call
from pytest_chainharness._start import launch
from pytest_chainharness._testnet import Testnet
from pytest_chainharness.chain import Chain
from pytest_chainharness.clients import get_client
from pytest_chainharness.providers import ProcessProvider

ROOT = Path(__file__).resolve().parent.parent


def _poll(testnet: Testnet, t0: float, seen: dict[str, float], stop: threading.Event) -> None:
    def note(key: str) -> None:
        seen.setdefault(key, time.perf_counter() - t0)

    while not stop.is_set():
        for n in testnet.nodes:
            try:
                height = int(rpc_call(n.rpc_url, "eth_blockNumber", timeout=1.0), 16)
                note(f"{n.name} el-api")
                for k in range(1, int(rpc_call(n.rpc_url, "net_peerCount", timeout=1.0), 16) + 1):
                    note(f"{n.name} el-peers>={k}")
                if height >= 1:
                    note(f"{n.name} block1")
            except RPCError:
                pass
            url = f"http://{n.host}:{n.ports['beacon_http']}/eth/v1/node/peer_count"
            try:
                with urllib.request.urlopen(url, timeout=1.0) as reply:
                    count = int(json.loads(reply.read())["data"]["connected"])
            except (OSError, ValueError, KeyError):
                continue
            note(f"{n.name} cl-api")
            for k in range(1, count + 1):
                note(f"{n.name} cl-peers>={k}")
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    adapter = get_client("geth-pos", root=ROOT)
    testnet = build_testnet(
        nodes=4, client="geth-pos", period=2, seed=args.seed, accounts=512, adapter=adapter
    )
    seen: dict[str, float] = {}
    phases: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="chainharness-timeline-") as tmp:
        provider = ProcessProvider(
            testnet, adapter, run_dir=Path(tmp), run_id=f"timeline-{args.seed}",
            binary=adapter.find_binary(),
        )  # fmt: skip
        stop = threading.Event()
        t0 = time.perf_counter()
        poller = threading.Thread(target=_poll, args=(testnet, t0, seen, stop), daemon=True)
        poller.start()
        try:
            launch(Chain(testnet, provider, adapter), phases=phases, timeout=120)
            phases["ready"] = time.perf_counter() - t0
        finally:
            stop.set()
            poller.join()
            provider.teardown()
    print(json.dumps(phases, indent=1))
    for key, at in sorted(seen.items(), key=lambda kv: kv[1]):
        print(f"{at:6.2f}  {key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
