"""Event bus speed: delivery latency, and how soon "tx on every node" is noticed.

    .venv/bin/python benchmarks/bus.py [--events 10000] [--rate 1000] [--transfers 10]

1. publish → deliver latency of ``--events`` events between two ``SyncBus`` connections
   on the run's broker (local mosquitto), published at ``--rate`` per second.
2. Detection lag on a 4-node geth network (process backend): for each transfer, the time
   from the last node importing the block (from the node's own log, ms resolution) to
   ``chain.wait_for_tx`` returning, and — for the same transfer, measured side by side —
   to a plain 1-second polling loop over web3 returning (what tests do without a bus).
Prints one JSON document and a readable table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from web3.exceptions import TransactionNotFound

from pytest_chainharness import Chain, SyncBus
from pytest_chainharness._broker import BrokerEndpoint, reap_children, start_local_broker
from pytest_chainharness._options import Settings
from pytest_chainharness._proc import find_marked, kill_pids
from pytest_chainharness._session import start_network
from pytest_chainharness.clients import get_client
from pytest_chainharness.providers import attach_provider

ROOT = Path(__file__).resolve().parent.parent
GOALS = {"p50_ms": 2.0, "p99_ms": 20.0, "lag_ms": 50.0, "lag_ratio_vs_polling": 20.0}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


class TimedBus(SyncBus):
    """A SyncBus that notes when each event arrived."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.arrivals: list[tuple[float, float]] = []
        super().__init__(*args, **kwargs)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        now = time.time()
        super()._on_message(client, userdata, message)
        try:
            sent = json.loads(message.payload)["payload"]["sent"]
        except (ValueError, KeyError, TypeError):
            return
        self.arrivals.append((sent, now))


def delivery_latency(events: int, rate: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="chainharness-bus-") as tmp:
        run_dir = Path(tmp)
        (run_dir / "logs").mkdir()
        endpoint, process = start_local_broker(run_dir, "bench-bus")
        try:
            receiver = TimedBus(endpoint, "bench-bus", ["node0"])
            sender = SyncBus(endpoint, "bench-bus", ["node0"])
            interval = 1.0 / rate
            start = time.perf_counter()
            for i in range(events):
                sender.publish("bench", {"i": i, "sent": time.time()})
                pause = start + (i + 1) * interval - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            deadline = time.monotonic() + 30
            while len(receiver.arrivals) < events and time.monotonic() < deadline:
                time.sleep(0.05)
            latencies = [(got - sent) * 1000 for sent, got in receiver.arrivals]
            sender.close()
            receiver.close()
        finally:
            process.kill()
            process.wait()
            reap_children()
    return {
        "events": events,
        "delivered": len(latencies),
        "rate_per_s": rate,
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
    }


_LOG_TIME = re.compile(r"\[(\d\d)-(\d\d)\|(\d\d):(\d\d):(\d\d)\.(\d{3})\]")


def import_time(log: str, number: int, block_hash: str) -> float | None:
    """When a node's log says it imported (or sealed) block ``number`` with this hash."""
    short = f"{block_hash[2:8]}..{block_hash[-6:]}"
    for line in log.splitlines():
        if f"number={number} " not in line or short not in line:
            continue
        if "Imported new chain segment" not in line and "Successfully sealed" not in line:
            continue
        match = _LOG_TIME.search(line)
        if match:
            month, day, hour, minute, second, ms = (int(g) for g in match.groups())
            year = dt.datetime.now(dt.UTC).year
            stamp = dt.datetime(year, month, day, hour, minute, second, ms * 1000, dt.UTC)
            return stamp.timestamp()
    return None


def polling_loop(chain: Chain, tx: str, done: dict[str, float]) -> None:
    """What a test without a bus does: ask every node over web3, once a second."""
    while not all(_has(node.w3, tx) for node in chain.nodes):
        time.sleep(1.0)
    done["poll"] = time.time()


def _has(w3: Any, tx: str) -> bool:
    try:
        w3.eth.get_transaction_receipt(tx)
    except TransactionNotFound:
        return False
    return True


def detection_lag(transfers: int) -> dict[str, Any]:
    settings = Settings(
        nodes=4, max_nodes=32, client="geth", backend="process", period=1, seed=4242,
        keep=True, binary=None, accounts=64, signers=None, start_timeout=60.0, chain_id=1337,
        image="",
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="chainharness-lag-") as tmp:
        run_dir = Path(tmp) / "ch-benchlag"
        run_dir.mkdir()
        record = start_network(
            settings, run_id="ch-benchlag", run_dir=run_dir, seed=4242, root=ROOT, owner=None
        )
        adapter = get_client("geth", root=ROOT)
        provider = attach_provider(record["provider"], adapter)
        chain = Chain(provider.testnet, provider, adapter, accounts=provider.testnet.accounts(0, 8))
        bus = SyncBus(
            BrokerEndpoint.from_dict(record["bus"]["endpoint"]), "ch-benchlag", chain.testnet.names
        )
        chain.attach_bus(bus)
        rows = []
        try:
            chain.wait_for_height(2)
            sender = chain.testnet.accounts(8, 9)[0]
            for _ in range(transfers):
                tx = chain.transfer(sender, chain.accounts[0].address, 1).to_0x_hex()
                done: dict[str, float] = {}
                poller = threading.Thread(target=polling_loop, args=(chain, tx, done))
                poller.start()
                receipts = chain.wait_for_tx(tx)
                done["bus"] = time.time()
                poller.join(timeout=30)
                number = int(receipts["node0"]["blockNumber"])
                block_hash = receipts["node0"]["blockHash"].to_0x_hex()
                imported = [
                    import_time(provider.logs(n.index, 400), number, block_hash)
                    for n in chain.nodes
                ]
                if None in imported or "poll" not in done:
                    continue
                last = max(t for t in imported if t is not None)
                rows.append(
                    {"bus_ms": (done["bus"] - last) * 1000, "poll_ms": (done["poll"] - last) * 1000}
                )
                time.sleep(0.3)  # land the next transfer at another point of the period
        finally:
            bus.close()
            provider.teardown()
            kill_pids(find_marked("ch-benchlag"))
            reap_children()
    bus_ms = [r["bus_ms"] for r in rows]
    poll_ms = [r["poll_ms"] for r in rows]
    return {
        "transfers": len(rows),
        "bus_lag_ms": {"median": statistics.median(bus_ms), "max": max(bus_ms)},
        "poll_lag_ms": {"median": statistics.median(poll_ms), "max": max(poll_ms)},
        "ratio_poll_over_bus": statistics.median(poll_ms) / max(statistics.median(bus_ms), 1e-3),
        "rows": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--transfers", type=int, default=10)
    args = parser.parse_args()
    results = {
        "goals": GOALS,
        "delivery": delivery_latency(args.events, args.rate),
        "detection": detection_lag(args.transfers),
    }
    print(json.dumps(results, indent=2))
    d, lag = results["delivery"], results["detection"]
    print(
        f"\npublish→deliver, {d['delivered']}/{d['events']} events at {d['rate_per_s']:g}/s: "
        f"p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms, max {d['max_ms']:.2f} ms"
    )
    print(
        f"tx on all 4 nodes noticed after the last import ({lag['transfers']} transfers): "
        f"bus median {lag['bus_lag_ms']['median']:.1f} ms (max {lag['bus_lag_ms']['max']:.1f}), "
        f"1 s polling median {lag['poll_lag_ms']['median']:.1f} ms "
        f"(max {lag['poll_lag_ms']['max']:.1f}); polling/bus x{lag['ratio_poll_over_bus']:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
