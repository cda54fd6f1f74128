"""The indexer service follows the chain: a transfer shows up in its index.

Run with: pytest scenarios/indexer --chain-backend=docker \
              --chain-services=scenarios/indexer/services.yaml
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from eth_account.signers.local import LocalAccount

from pytest_chainharness import Chain
from pytest_chainharness.services import Services


def get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def test_indexer_sees_a_transfer(
    chain: Chain, services: Services, funded_account: LocalAccount
) -> None:
    tx = chain.transfer(funded_account, chain.accounts[0].address, 1)
    receipts = chain.wait_for_tx(tx)
    block = receipts["node0"]["blockNumber"]
    deadline = time.monotonic() + 15
    status, body = get(f"{services.url('indexer')}/tx/{tx.to_0x_hex()}")
    while status != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        status, body = get(f"{services.url('indexer')}/tx/{tx.to_0x_hex()}")
    assert (status, body) == (200, {"block": block})


def test_broker_is_published(services: Services) -> None:
    assert services.host_port("mqtt", 1883) > 0
    assert "mqtt" in services.names
