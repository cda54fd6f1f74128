"""Sustained signed transfers per second from one load process, and inclusion latency.

    .venv/bin/python benchmarks/load.py [--runs 3] [--seconds 20] [--users 32]
                                        [--backend process|docker] [--period 1]

Against one 4-node geth Clique network (``--period`` s blocks, 1 by default) per run:

- harness: ``run_load`` (the ``load_test`` fixture's runner): locust in one child
  process, ``--users`` TransferUsers, each with its own funded account and local nonces;
- baseline: the naive loop a test would write with web3.py: one account, sign one
  transaction, ``send_raw_transaction``, wait for the hash, repeat.

Accepted tx/s = transactions the node answered with a hash, per second of the run;
inclusion = sent → in a block on node0 (and on every node), from the agents' block
events. Also measured, to say where the ceiling is: signing alone (eth-account, one
core), and the block gas limit (30M gas / 21000 per transfer per block period).
Prints JSON and a table of medians over ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import Web3

from pytest_chainharness._load import LoadSpec, _inclusion, run_load
from pytest_chainharness._options import Settings
from pytest_chainharness._session import start_network
from pytest_chainharness._testnet import Testnet
from pytest_chainharness.clients import GethAdapter
from pytest_chainharness.providers import attach_provider, default_image

ROOT = Path(__file__).resolve().parent.parent
GOAL_TPS = 500


def settings(backend: str, seed: int, period: int) -> Settings:
    return Settings(
        nodes=4, max_nodes=32, client="geth", backend=backend, period=period, seed=seed,
        keep=False, binary=None, accounts=512, signers=None, start_timeout=60.0,
        chain_id=1337, image=default_image("geth"),
    )  # fmt: skip


def naive_loop(url: str, key: bytes, chain_id: int, seconds: float) -> dict[str, float]:
    w3 = Web3(Web3.HTTPProvider(url))
    account = Account.from_key(key)
    nonce = int(w3.eth.get_transaction_count(account.address, "pending"))
    sent: dict[str, float] = {}
    end = time.time() + seconds
    start = time.time()
    while time.time() < end:
        tx = {
            "chainId": chain_id, "nonce": nonce, "to": account.address, "value": 1,
            "gas": 21_000, "maxFeePerGas": 100 * 10**9, "maxPriorityFeePerGas": 10**9,
            "type": 2,
        }  # fmt: skip
        signed = account.sign_transaction(tx)
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
        sent[tx_hash.to_0x_hex()] = time.time()
        nonce += 1
    return {"sent": len(sent), "seconds": time.time() - start, "hashes": sent}  # type: ignore[dict-item]


def signing_rate(seconds: float = 3.0) -> float:
    account = Account.create()
    count, end = 0, time.time() + seconds
    while time.time() < end:
        account.sign_transaction(
            {"chainId": 1337, "nonce": count, "to": account.address, "value": 1, "gas": 21_000,
             "maxFeePerGas": 10**11, "maxPriorityFeePerGas": 10**9, "type": 2}
        )  # fmt: skip
        count += 1
    return count / seconds


def one_run(backend: str, seed: int, seconds: float, users: int, period: int) -> dict[str, float]:
    adapter = GethAdapter(root=ROOT)
    with tempfile.TemporaryDirectory(prefix="chainharness-bench-") as tmp:
        run_dir = Path(tmp)
        record = start_network(
            settings(backend, seed, period), run_id=f"bench-load-{seed}", run_dir=run_dir,
            seed=seed, root=ROOT, owner=None,
        )  # fmt: skip
        state = run_dir / "network.json"
        state.write_text(json.dumps(record))
        provider = attach_provider(record["provider"], adapter)
        try:
            testnet = Testnet.from_dict(record["provider"]["testnet"])
            accounts = testnet.accounts(100, 100 + users)
            spec = LoadSpec.make(users=users, run_time=seconds, profile="transfer")
            result = run_load(
                spec, state=state, accounts=accounts, events_dir=run_dir / "logs", period=period
            )
            time.sleep(5)  # let the pool drain between phases
            paced_spec = LoadSpec.make(
                users=users, run_time=seconds, profile="transfer", tx_rate=GOAL_TPS
            )
            paced = run_load(
                paced_spec,
                state=state,
                accounts=testnet.accounts(200, 200 + users),
                events_dir=run_dir / "logs",
                period=period,
            )
            time.sleep(5)
            base = naive_loop(
                testnet.nodes[0].rpc_url, testnet.accounts(5, 6)[0].key, testnet.chain_id, seconds
            )
            hashes: dict[str, float] = base.pop("hashes")  # type: ignore[assignment]
            included, incl, _, _ = _inclusion(
                {h.lower(): t for h, t in hashes.items()}, run_dir / "logs", period
            )
            return {
                "harness_accepted_tps": result.tx_sent / result.duration_s,
                "harness_included_tps": result.included_tps,
                "harness_send_p95_ms": result.percentile("eth_sendRawTransaction", 0.95),
                "harness_inclusion_p50_ms": result.percentile("inclusion", 0.5),
                "harness_inclusion_p95_ms": result.percentile("inclusion", 0.95),
                "harness_inclusion_all_p95_ms": result.percentile("inclusion_all", 0.95),
                "harness_failures": float(result.failures),
                "paced_accepted_tps": paced.tx_sent / paced.duration_s,
                "paced_inclusion_p50_ms": paced.percentile("inclusion", 0.5),
                "paced_inclusion_p95_ms": paced.percentile("inclusion", 0.95),
                "paced_inclusion_all_p95_ms": paced.percentile("inclusion_all", 0.95),
                "baseline_accepted_tps": base["sent"] / base["seconds"],
                "baseline_included": float(included),
                "baseline_inclusion_p50_ms": statistics.median(incl) if incl else float("nan"),
                "baseline_inclusion_p95_ms": (
                    sorted(incl)[int(0.95 * (len(incl) - 1))] if incl else float("nan")
                ),
            }
        finally:
            provider.teardown()
            from pytest_chainharness._broker import reap_children
            from pytest_chainharness._proc import find_marked, kill_pids

            kill_pids(find_marked(f"bench-load-{seed}"))
            reap_children()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--backend", choices=["process", "docker"], default="process")
    parser.add_argument("--period", type=int, default=1, help="Clique block period, seconds")
    args = parser.parse_args()
    gas_tps = 30_000_000 // 21_000 / args.period
    goal_ms = 2 * args.period * 1000
    samples: dict[str, list[float]] = {}
    for run in range(args.runs):
        result = one_run(args.backend, 7700 + run, args.seconds, args.users, args.period)
        print(f"run {run + 1}: " + json.dumps({k: round(v, 1) for k, v in result.items()}),
              file=sys.stderr)  # fmt: skip
        for key, value in result.items():
            samples.setdefault(key, []).append(value)
    medians = {k: statistics.median(v) for k, v in samples.items()}
    sign = signing_rate()
    report: dict[str, Any] = {
        "backend": args.backend,
        "runs": args.runs,
        "seconds": args.seconds,
        "users": args.users,
        "period_s": args.period,
        "median": medians,
        "samples": {k: [round(x, 2) for x in v] for k, v in samples.items()},
        "ceilings_tps": {"signing_one_core": sign, "block_gas": gas_tps},
    }
    print(json.dumps(report, indent=1))
    ratio = medians["harness_accepted_tps"] / medians["baseline_accepted_tps"]
    print(
        f"\n{args.backend}, 4 nodes, {args.period} s blocks: "
        f"median of {args.runs} runs of {args.seconds:g}s"
    )
    head = f"{'':<30}{'harness, flat out':>19}{'harness @500/s':>16}{'naive web3 loop':>17}"
    print(head)
    rows = [
        ("accepted tx/s", "harness_accepted_tps", "paced_accepted_tps", "baseline_accepted_tps"),
        ("inclusion p50 ms (node0)", "harness_inclusion_p50_ms", "paced_inclusion_p50_ms",
         "baseline_inclusion_p50_ms"),
        ("inclusion p95 ms (node0)", "harness_inclusion_p95_ms", "paced_inclusion_p95_ms",
         "baseline_inclusion_p95_ms"),
    ]  # fmt: skip
    for label, a, p, b in rows:
        print(f"{label:<30}{medians[a]:>19.1f}{medians[p]:>16.1f}{medians[b]:>17.1f}")
    print(
        f"{'inclusion p95 ms (every node)':<30}{medians['harness_inclusion_all_p95_ms']:>19.1f}"
        f"{medians['paced_inclusion_all_p95_ms']:>16.1f}"
    )
    print(f"{'included tx/s':<30}{medians['harness_included_tps']:>19.1f}")
    tps_ok = "met" if medians["harness_accepted_tps"] >= GOAL_TPS else "NOT met"
    p95_ok = "met" if medians["paced_inclusion_p95_ms"] <= goal_ms else "NOT met"
    print(
        f"harness / baseline accepted: {ratio:.1f}x; goal >= {GOAL_TPS} tx/s: {tps_ok}; "
        f"p95 inclusion <= 2 periods ({goal_ms} ms) at {GOAL_TPS}/s: {p95_ok}"
    )
    print(f"ceilings: signing {sign:.0f} tx/s on one core; block gas {gas_tps:.0f} tx/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
