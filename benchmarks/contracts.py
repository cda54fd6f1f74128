"""Deploy a contract until its code is on every one of 4 geth nodes: ``chain.deploy``
against a plain web3.py deploy-and-poll loop, interleaved in the same run.

    .venv/bin/python benchmarks/contracts.py [--runs 20] [--period 1]

Both send the same creation bytecode (tests/contracts/Counter.sol, compiled once with
the pinned solc for paris) to node 0 of one 4-node network on processes, signed by
their own genesis account. The baseline signs the transaction by hand and polls
``eth_getCode`` on every node every 50 ms (the harness's own poll interval) until all
four have the code; ``chain.deploy`` also checks the artifact, the opcodes and the
constructor (one ``eth_estimateGas``) first, and waits for the receipt in one block on
every node. Each deploy starts at a moment of the block period drawn at random (the
same for both sides): geth's Clique worker assembles a block when the previous one
arrives and re-assembles it at most once a second (``--miner.recommit`` 1 s), so a
transaction sent mid-period at a 1 s period makes the block after next, and the time
depends on the phase. No bus is attached (the session's waits also wait for the agents' block
events, measured at 10-20 ms).

Goal (issue 16): the harness's median at most 1.5 block periods. Prints one JSON
document and a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from web3.exceptions import TransactionNotFound

from pytest_chainharness import build_testnet
from pytest_chainharness._start import launch
from pytest_chainharness.chain import Chain
from pytest_chainharness.clients import GethAdapter
from pytest_chainharness.providers import ProcessProvider
from pytest_chainharness.solc import compile_contract

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests" / "contracts" / "Counter.sol"


def by_hand(chain: Chain, account: LocalAccount, built: dict[str, Any]) -> float:
    w3 = chain.nodes[0].w3
    t0 = time.perf_counter()
    data = w3.eth.contract(abi=built["abi"], bytecode=built["bytecode"]).constructor(1)
    tx = data.build_transaction(
        {"from": account.address, "nonce": w3.eth.get_transaction_count(account.address),
         "gas": 300_000, "chainId": chain.chain_id}
    )  # fmt: skip
    sent = w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
    address = None
    while True:
        if address is None:
            with contextlib.suppress(TransactionNotFound):
                address = w3.eth.get_transaction_receipt(sent)["contractAddress"]
        if address is not None and all(n.w3.eth.get_code(address) for n in chain.nodes):
            return time.perf_counter() - t0
        time.sleep(0.05)


def after_next_head(chain: Chain, delay: float) -> None:
    """Return ``delay`` seconds after node 0's next block."""
    start = chain.nodes[0].head().number
    while chain.nodes[0].head().number == start:
        time.sleep(0.01)
    time.sleep(delay)


def harness(chain: Chain, account: LocalAccount, built: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    chain.deploy(built, 1, sender=account)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--period", type=int, default=1, help="block period (s)")
    args = parser.parse_args()
    built = compile_contract(SOURCE, "Counter", evm_version="paris")
    adapter = GethAdapter(root=ROOT)
    testnet = build_testnet(nodes=4, client="geth", period=args.period, seed=16, accounts=8)
    with tempfile.TemporaryDirectory(prefix="chainharness-bench-") as tmp:
        provider = ProcessProvider(
            testnet, adapter, run_dir=Path(tmp), run_id="bench-contracts",
            binary=adapter.find_binary(),
        )  # fmt: skip
        accounts = testnet.accounts(0, 2)
        chain = Chain(testnet, provider, adapter, accounts=accounts)
        launch(chain)
        try:
            ours, hand = [], []
            # A test deploys at any moment of a block period: each pair starts at the same
            # drawn moment after a new head, so neither side gets the kinder phase.
            phases = random.Random(16)
            for _ in range(args.runs):
                phase = phases.uniform(0, args.period)
                after_next_head(chain, phase)
                ours.append(harness(chain, accounts[0], built))
                after_next_head(chain, phase)
                hand.append(by_hand(chain, accounts[1], built))
        finally:
            provider.teardown()
    h, b = statistics.median(ours), statistics.median(hand)
    result = {
        "nodes": 4,
        "period_s": args.period,
        "runs": args.runs,
        "goal": "chain.deploy median <= 1.5 block periods",
        "harness_s": {"median": h, "min": min(ours), "max": max(ours)},
        "by_hand_s": {"median": b, "min": min(hand), "max": max(hand)},
        "harness_in_periods": h / args.period,
        "ratio_harness_over_hand": h / b,
    }
    print(json.dumps(result, indent=2))
    print(f"\ndeploy until the code is on all 4 nodes, median of {args.runs} (min-max)")
    for name, values in (("chain.deploy", ours), ("web3 by hand", hand)):
        med = statistics.median(values)
        print(f"{name:>14}  {med:.3f} s ({min(values):.3f}-{max(values):.3f})")
    print(f"harness: {h / args.period:.2f} block periods; harness / by hand: x{h / b:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
