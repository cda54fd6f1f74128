"""Locust users for JSON-RPC chains (import only in locust processes: locust patches gevent).

    locust -f scenarios/load/locustfile.py              # web UI, after `chainharness up`
    locust -f scenarios/load/locustfile.py --headless -u 20 -r 10 -t 30s TransferUser

``TransferUser`` sends signed value transfers (one funded account per user, nonces
tracked locally so a user never races itself); ``ReadUser`` calls ``eth_call``,
``eth_getBalance``, ``eth_getBlockByNumber`` and ``eth_blockNumber``. Every JSON-RPC call
is a locust request named after its method. The network comes from a state file
(``$CHAINHARNESS_STATE``, default ``.chainharness/state.json``): only its nodes are used.

Accounts: with ``$CHAINHARNESS_LOAD_KEYS`` (the ``load_test`` fixture writes it) users take
those keys, worker ``w`` of ``P`` processes taking keys ``w, w+P, ...``; otherwise each user
claims the next account of the network, counted beside the state file, the same count
``pytest --chain-attach`` sessions use, so no two users or sessions share an account.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import time
from pathlib import Path
from typing import Any, ClassVar

from eth_account import Account
from eth_account.signers.local import LocalAccount
from locust import User, constant, constant_throughput, task
from locust.contrib.fasthttp import FastHttpSession
from locust.exception import StopUser

from ._accounts import claim_attached
from ._testnet import Testnet

__all__ = ["ChainUser", "ReadUser", "RpcError", "TransferUser"]

#: Seconds before an RPC call counts as failed (a stopped chain must not hang a run).
RPC_TIMEOUT = 5.0


class RpcError(Exception):
    """A JSON-RPC error answer (already reported to locust as a failure)."""


class _Network:
    """The run's nodes and accounts, read once per process from the state file."""

    _loaded: ClassVar[_Network | None] = None

    def __init__(self) -> None:
        self.state = Path(os.environ.get("CHAINHARNESS_STATE", ".chainharness/state.json"))
        try:
            record = json.loads(self.state.read_text())
            self.testnet = Testnet.from_dict(record["provider"]["testnet"])
        except (OSError, ValueError, KeyError) as exc:
            raise RuntimeError(
                f"no chainharness network in {self.state} ({exc}); start one with "
                "'chainharness up' or set CHAINHARNESS_STATE"
            ) from None
        self.urls = [node.rpc_url for node in self.testnet.nodes]
        keys = os.environ.get("CHAINHARNESS_LOAD_KEYS")
        self.keys: list[str] = json.loads(Path(keys).read_text()) if keys else []
        self.processes = int(os.environ.get("CHAINHARNESS_LOAD_PROCESSES", "1"))
        self.max_requests = int(os.environ.get("CHAINHARNESS_LOAD_MAX_REQUESTS", "0")) or None
        self.requests = 0
        sent = os.environ.get("CHAINHARNESS_LOAD_SENT")
        self.sent = open(f"{sent}.{os.getpid()}", "a", buffering=1) if sent else None  # noqa: SIM115
        self.next_user = itertools.count()
        self.next_key = itertools.count()
        self.read_targets = [a.address for a in self.testnet.accounts(0, 16)]

    @classmethod
    def get(cls) -> _Network:
        if cls._loaded is None:
            cls._loaded = cls()
        return cls._loaded

    def account(self, worker: int) -> LocalAccount:
        if self.keys:
            index = next(self.next_key) * self.processes + worker
            if index >= len(self.keys):
                raise RuntimeError(f"no key left for another user ({len(self.keys)} given)")
            found: LocalAccount = Account.from_key(self.keys[index])
            return found
        return claim_attached(self.state, self.testnet, 1)[0]


class ChainUser(User):
    """Base class: a FastHttpSession to one node, JSON-RPC calls reported per method."""

    abstract = True
    wait_time = constant(0)

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.net = _Network.get()
        self.index = next(self.net.next_user)
        url = self.net.urls[self.index % len(self.net.urls)]
        self.client = FastHttpSession(
            base_url=url,
            request_event=environment.events.request,
            user=self,
            network_timeout=RPC_TIMEOUT,
            connection_timeout=RPC_TIMEOUT,
        )
        self._ids = itertools.count(1)

    @property
    def worker(self) -> int:
        return int(getattr(self.environment.runner, "worker_index", 0) or 0)

    def rpc(self, method: str, params: list[Any]) -> Any:
        net = self.net
        net.requests += 1
        if net.max_requests is not None and net.requests > net.max_requests:
            raise StopUser()  # the run's hard request limit (per process)
        payload = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        with self.client.post("", json=payload, name=method, catch_response=True) as reply:
            if reply.status_code != 200:
                reply.failure(f"HTTP {reply.status_code}")
                raise RpcError(f"{method}: HTTP {reply.status_code}")
            try:
                answer = reply.json()
            except ValueError:
                reply.failure("not JSON")
                raise RpcError(f"{method}: not JSON") from None
            if "error" in answer:
                message = str(answer["error"].get("message", answer["error"]))
                reply.failure(message)
                raise RpcError(message)
            reply.success()
            return answer.get("result")


def _transfer_wait() -> Any:
    # $CHAINHARNESS_LOAD_USER_RATE: transfers per second per user (an open-loop target);
    # unset: each user sends as fast as its node answers.
    rate = float(os.environ.get("CHAINHARNESS_LOAD_USER_RATE", "0") or 0)
    return constant_throughput(rate) if rate > 0 else constant(0)


class TransferUser(ChainUser):
    """Signed value transfers from one funded account, nonces tracked locally."""

    weight = 1
    wait_time = _transfer_wait()
    value_wei = 1
    max_fee = 100 * 10**9
    tip = 10**9

    def on_start(self) -> None:
        self.account = self.net.account(self.worker)
        self.nonce = self._pending_nonce()

    def _pending_nonce(self) -> int:
        return int(self.rpc("eth_getTransactionCount", [self.account.address, "pending"]), 16)

    @task
    def transfer(self) -> None:
        tx: dict[str, Any] = {
            "chainId": self.net.testnet.chain_id,
            "nonce": self.nonce,
            "to": self.account.address,
            "value": self.value_wei,
            "gas": 21_000,
            "maxFeePerGas": self.max_fee,
            "maxPriorityFeePerGas": self.tip,
            "type": 2,
        }
        signed = self.account.sign_transaction(tx)
        try:
            tx_hash = self.rpc("eth_sendRawTransaction", ["0x" + signed.raw_transaction.hex()])
        except RpcError as exc:
            text = str(exc).lower()
            if "nonce" in text or "already known" in text or "underpriced" in text:
                self.nonce = self._pending_nonce()  # out of step (a restart, a reorg)
            return
        except Exception:
            return  # transport error: reported by the session; the nonce was not used
        self.nonce += 1
        if self.net.sent is not None:
            self.net.sent.write(f"{tx_hash} {time.time():.6f}\n")


class ReadUser(ChainUser):
    """Reads: the state calls a wallet or an indexer makes."""

    weight = 3

    def _target(self) -> str:
        return random.choice(self.net.read_targets)

    @task(3)
    def balance(self) -> None:
        self._quiet("eth_getBalance", [self._target(), "latest"])

    @task(3)
    def latest_block(self) -> None:
        self._quiet("eth_getBlockByNumber", ["latest", False])

    @task(2)
    def call(self) -> None:
        self._quiet("eth_call", [{"to": self._target(), "data": "0x"}, "latest"])

    @task(1)
    def block_number(self) -> None:
        self._quiet("eth_blockNumber", [])

    def _quiet(self, method: str, params: list[Any]) -> None:
        # A failure is already counted against this method.
        with contextlib.suppress(RpcError):
            self.rpc(method, params)
