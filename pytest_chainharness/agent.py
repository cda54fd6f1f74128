"""The node agent: follows one node and publishes what happens to it on the run's bus.

    python agent.py --run RUN --node NAME --rpc URL --ws URL --broker HOST:PORT
                    [--user U --password P] [--record FILE]

Runs as its own process (a sidecar), imports no web3, and is started by the harness
beside every node. It publishes, on ``chainharness/<run>/events/<kind>/<node>``:

- ``block``  every block the node imports, in order and without gaps (number, hash,
  parent, timestamp, txs), from a ``newHeads`` WebSocket subscription (RPC polling only
  while the subscription is down); the latest is also retained on
  ``chainharness/<run>/last/block/<node>``. After a reorg the new branch is published
  from the fork point, each block with ``replaces`` (the hash published before at its
  height).
- ``peers``  the peer count whenever it changes (count, previous); the latest is retained
  on ``chainharness/<run>/last/peers/<node>``.
- ``health`` every 2 s: whether the node answers and its height.
- ``log``    each log of a watched contract (``Chain.watch``, asked on the retained
  ``chainharness/<run>/control/watch/#`` topics): address, event, args decoded with the
  ABI, block, block_hash, tx, log_index; published with the block that holds it, so a
  log of a block a reorg replaced is published again with the block that stays. Once a
  watch covers everything up to the node's head the agent says so with ``watching``.
- ``beacon_head`` (with ``--beacon URL``, a proof-of-stake node's beacon API) each time
  the beacon node's head changes: slot, root.
- ``finalized`` (with ``--beacon``) each time the execution client's finalized block
  changes: number, hash (the block ``Chain.wait_finalized`` reads).

All at QoS 1, each numbered (``src``: this agent, ``seq``: 1, 2, ...). While the broker
is down paho keeps what is published in its queue and sends it after reconnecting, so a
broker restart loses no event; it may come after newer ones, which the numbers let a
``SyncBus`` tell from a loss (``SyncBus._caught_up``). Every event the agent
publishes is also appended to its own JSON Lines file (``--own``); with ``--record`` it
appends every event of the run it receives (tests' and the harness's too) to another.
``bus.merge_history`` makes the run's ``events.jsonl`` from these files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect as ws_connect

if __package__:
    from ._rpc import RPCError, dig, http_json, rpc_call
else:  # run as a script: the package folder is sys.path[0]
    from _rpc import (  # type: ignore[import-not-found,no-redef]
        RPCError,
        dig,
        http_json,
        rpc_call,
    )

__all__ = ["main", "script_path"]

HEALTH_EVERY = 2.0
# How far back the agent follows a reorg (and how many block hashes it remembers).
REORG_DEPTH = 128
PEERS_EVERY = 0.5
#: How often a node without a head subscription (a client spec's) is asked for its head.
PROBE_EVERY = 0.1
#: How often a proof-of-stake node's beacon head and finalized block are read (a slot is
#: 2 s at least: every head is seen).
BEACON_EVERY = 0.5


def script_path() -> str:
    return os.path.abspath(__file__)


def topic(run: str, kind: str, node: str) -> str:
    return f"chainharness/{run}/events/{kind}/{node}"


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run, self.node = args.run, args.node
        self.stop = threading.Event()
        self.last_number = -1
        #: Height → the hash last published there (kept above a reorg, to name what a
        #: later block at that height ``replaces``).
        self.published: dict[int, str] = {}
        #: The branch as the bus sees it now: each publish at a height takes what was
        #: announced above it out (a reorg onto a shorter branch orphans it), so a block
        #: taken again later is news again.
        self.announced: dict[int, str] = {}
        #: The height of the first head this agent published (-1 before it).
        self.first_number = -1
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{self.run}-agent-{self.node}",
            clean_session=False,
        )
        # paho queues QoS 1 messages published while disconnected and sends them on
        # reconnect; no cap, so a broker restart of any length loses nothing.
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(1000)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        if args.user:
            password = args.password or os.environ.get("CHAINHARNESS_BUS_PASSWORD", "")
            self.client.username_pw_set(args.user, password)
        self.record = open(args.record, "a") if args.record else None  # noqa: SIM115
        self.own = open(args.own, "a")  # noqa: SIM115
        # CHAINHARNESS_AGENT_TRACE=1: every newHeads message as it arrives, beside the
        # events file, to tell a missed block from a late one when diagnosing the bus.
        self.trace = (
            open(args.own.replace("events-", "trace-"), "a")  # noqa: SIM115
            if os.environ.get("CHAINHARNESS_AGENT_TRACE") == "1"
            else None
        )
        self._recorded: set[bytes] = set()
        #: Every event carries this agent's id and its number (``src``, ``seq``): the bus
        #: tells by them an event still on its way from one that never comes. paho sends
        #: what it queued during a reconnect only after it has marked itself connected and
        #: run on_connect, so a block published in between overtook the queued ones (the
        #: soak: node0's 157 to 161 came after 162, after a broker restart).
        self.source = uuid.uuid4().hex[:12]
        self._seq = 0
        self._publish_lock = threading.Lock()
        #: Watched contracts: lower-case address → watch key → the spec from the bus.
        self.watches: dict[str, dict[str, dict[str, Any]]] = {}
        self._new_watches: queue.Queue[dict[str, Any]] = queue.Queue()
        #: (block hash, log index) → block number of each log published (for a while).
        self._published_logs: dict[tuple[str, int], int] = {}
        self._decoders: dict[str, dict[str, Any]] = {}
        # Held while blocks (and their logs) are published, and while a new watch is
        # backfilled: a block is covered by exactly one of the two.
        self._blocks_lock = threading.Lock()
        self.client.on_connect = self._subscribe_all
        self.client.on_message = self._on_message

    # -- bus -------------------------------------------------------------------------------

    def _subscribe_all(self, client: mqtt.Client, *_: Any) -> None:
        if self.record is not None:
            client.subscribe(f"chainharness/{self.run}/events/#", qos=1)
        if self.args.probe is None:  # an Ethereum node: it has logs to watch
            client.subscribe(f"chainharness/{self.run}/control/watch/#", qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if "/control/watch/" in message.topic:
            with contextlib.suppress(ValueError):
                spec = json.loads(message.payload)
                spec["key"] = message.topic.rsplit("/", 1)[1]
                self._new_watches.put(spec)
            return
        if self.record is not None:
            self._write(message)

    def _write(self, message: mqtt.MQTTMessage) -> None:
        assert self.record is not None
        # QoS 1 may deliver an event twice around a reconnect: the history has it once.
        key = bytes(message.payload)
        if key in self._recorded:
            return
        self._recorded.add(key)
        self.record.write(message.payload.decode() + "\n")
        self.record.flush()

    def publish(self, kind: str, payload: dict[str, Any]) -> None:
        # One at a time: the numbers go out in the order they are given.
        with self._publish_lock:
            self._seq += 1
            event = {
                "kind": kind,
                "node": self.node,
                "payload": payload,
                "ts": time.time(),
                "src": self.source,
                "seq": self._seq,
            }
            text = json.dumps(event)
            # Our own events go to our own file first: the run's history stays complete
            # even if the broker drops something while it restarts (bus.merge_history).
            self.own.write(text + "\n")
            self.own.flush()
            self.client.publish(topic(self.run, kind, self.node), text, qos=1)
            if kind in ("block", "peers"):
                # The latest of each is retained, so a bus that connects later knows it.
                self.client.publish(
                    f"chainharness/{self.run}/last/{kind}/{self.node}", text, qos=1, retain=True
                )

    # -- node ------------------------------------------------------------------------------

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        return rpc_call(self.args.rpc, method, params, timeout=2.0)

    def publish_blocks_up_to(self, number: int) -> None:
        with self._blocks_lock:
            self._publish_blocks_up_to(number)

    def _publish_blocks_up_to(self, number: int) -> None:
        """Publish every block of the node's chain after the last one published, up to
        ``number``, in order. After a reorg the new branch is published from the fork
        point on, so a block that replaced one already published (and the txs in it) is
        not missed; its event carries ``replaces``, the hash it took the place of."""
        head = self.rpc("eth_getBlockByNumber", [hex(number), False])
        if head is None:
            return
        branch = [head]
        # Walk back by parent hash (not by number: the node may switch branches while we
        # walk) through any blocks not published yet, until the parent is one we published,
        # or is older than the hashes we remember.
        while True:
            block = branch[-1]
            height = int(block["number"], 16)
            if self.announced.get(height) == block["hash"] and (
                height <= self.last_number
                or self.announced.get(height - 1) in (None, block["parentHash"])
            ):
                # Published before, and so was its parent: nothing new from here on.
                # Also above our last head: a node that rewound to an ancestor (geth
                # restarted after a SIGKILL, its head pointer older than its blocks)
                # imports the same blocks again, which are not news. (A block above
                # the head whose parent another branch replaced since is news again.)
                branch.pop()
                break
            if height == 0 or self.last_number < 0:
                break  # the first block this agent sees
            if height <= self.first_number and height not in self.published:
                # Older than the first head this agent published (a restarted node that
                # rewound further back): history it never announced, not news.
                if len(branch) == 1:
                    return
                branch.pop()
                break
            if height - 1 <= self.last_number:
                below = self.announced.get(height - 1)
                if below is None or below == block["parentHash"]:
                    break
            parent = self.rpc("eth_getBlockByHash", [block["parentHash"], False])
            if parent is None:
                return  # the node moved on while we walked: the next head redoes this
            branch.append(parent)
        for block in reversed(branch):
            height = int(block["number"], 16)
            payload: dict[str, Any] = {
                "number": height,
                "hash": block["hash"],
                "parent": block["parentHash"],
                "timestamp": int(block["timestamp"], 16),
                "txs": [tx.lower() for tx in block["transactions"]],
            }
            replaced = self.published.get(height)
            if replaced is not None and replaced != block["hash"]:
                payload["replaces"] = replaced
            # Asked before the block counts as published: a node that stops answering
            # here has the block (and its logs) done again at the next head, not skipped.
            logs = self.watched_logs({"blockHash": block["hash"]}) if self.watches else []
            self.publish("block", payload)
            self.published[height] = block["hash"]
            self.announced[height] = block["hash"]
            for above in [h for h in self.announced if h > height]:
                del self.announced[above]
            if self.first_number < 0:
                self.first_number = height
            self.publish_logs(logs)
        # The head may be below what we published (a reorg onto a shorter branch, or a
        # rewind to an ancestor). What we published above it is kept only to name what a
        # later block at that height replaces.
        self.last_number = int(head["number"], 16)
        for height in [h for h in self.published if abs(h - self.last_number) > REORG_DEPTH]:
            del self.published[height]
            self.announced.pop(height, None)
        if len(self._published_logs) > 4096:
            old = [k for k, n in self._published_logs.items() if n < self.last_number - REORG_DEPTH]
            for key in old:
                del self._published_logs[key]

    # -- watched contracts ---------------------------------------------------------------

    def watched_logs(self, where: dict[str, Any]) -> list[dict[str, Any]]:
        """The node's logs of watched contracts ``where`` (a block hash or a range)."""
        query = {"address": sorted(self.watches), **where}
        return list(self.rpc("eth_getLogs", [query]) or [])

    def publish_logs(self, logs: list[dict[str, Any]]) -> None:
        """Publish each of ``logs`` not published yet that a watch asks for."""
        for entry in logs:
            key = (str(entry["blockHash"]), int(entry["logIndex"], 16))
            if key in self._published_logs or entry.get("removed"):
                continue
            event, args = self._decode(entry)
            wanted = {
                w.get("only") for w in self.watches.get(entry["address"].lower(), {}).values()
            }
            if None not in wanted and event not in wanted:
                continue
            self._published_logs[key] = int(entry["blockNumber"], 16)
            self.publish(
                "log",
                {"address": _checksum(entry["address"]), "event": event, "args": args,
                 "block": int(entry["blockNumber"], 16), "block_hash": entry["blockHash"],
                 "tx": str(entry["transactionHash"]).lower(), "log_index": key[1]},
            )  # fmt: skip

    def _decode(self, entry: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        """The event's name and arguments, by the watched ABI (None, {} if it has none)."""
        events = self._decoders.get(entry["address"].lower(), {})
        topics = entry.get("topics") or []
        abi = events.get(topics[0].lower()) if topics else None
        if abi is None:
            return None, {}
        # Imported on the first watch only: an agent that watches nothing stays small.
        from eth_abi.abi import decode

        args: dict[str, Any] = {}
        indexed = [i for i in abi["inputs"] if i.get("indexed")]
        plain = [i for i in abi["inputs"] if not i.get("indexed")]
        for item, topic in zip(indexed, topics[1:], strict=False):
            raw = bytes.fromhex(topic[2:])
            dynamic = item["type"] in ("string", "bytes") or item["type"].endswith("]")
            # An indexed dynamic value is only its hash in the topic.
            args[item["name"]] = topic if dynamic else decode([_abi_type(item)], raw)[0]
        data = bytes.fromhex(str(entry.get("data", "0x"))[2:])
        values = decode([_abi_type(i) for i in plain], data) if plain else ()
        args.update({i["name"]: v for i, v in zip(plain, values, strict=True)})
        types = {i["name"]: str(i["type"]) for i in abi["inputs"]}
        return str(abi["name"]), {k: _jsonable(v, types[k]) for k, v in args.items()}

    def add_new_watches(self) -> None:
        """Take on watches the bus asked for: publish the logs up to the head, then say so."""
        while True:
            try:
                spec = self._new_watches.get_nowait()
            except queue.Empty:
                return
            from eth_utils.abi import event_abi_to_log_topic

            address = str(spec["address"]).lower()
            decoders = self._decoders.setdefault(address, {})
            for abi in spec.get("events", []):
                if not abi.get("anonymous"):
                    decoders["0x" + event_abi_to_log_topic(abi).hex()] = abi
            first = int(spec.get("from_block", 0))
            with self._blocks_lock:
                try:
                    earlier = (
                        self.watched_logs(
                            {
                                "address": [address],
                                "fromBlock": hex(first),
                                "toBlock": hex(self.last_number),
                            }
                        )
                        if self.last_number >= first
                        else []
                    )
                except RPCError:
                    # Not "watching" before the earlier logs are out: try again shortly.
                    self._new_watches.put(spec)
                    return
                self.watches.setdefault(address, {})[spec["key"]] = spec
                self.publish_logs(earlier)
                self.publish(
                    "watching",
                    {"address": address, "only": spec.get("only"), "up_to": self.last_number},
                )

    def watch_contracts(self) -> None:
        while not self.stop.is_set():
            self.add_new_watches()
            self.stop.wait(0.05)

    def follow_heads(self) -> None:
        while not self.stop.is_set():
            try:
                with ws_connect(self.args.ws, open_timeout=2, max_size=None) as ws:
                    ws.send(
                        json.dumps(
                            {
                                "jsonrpc": "2.0",
                                "id": 1,
                                "method": "eth_subscribe",
                                "params": ["newHeads"],
                            }
                        )
                    )
                    json.loads(ws.recv(timeout=5))
                    # Blocks imported while we were not subscribed (start, node restart).
                    self.publish_blocks_up_to(int(self.rpc("eth_blockNumber"), 16))
                    while not self.stop.is_set():
                        try:
                            message = json.loads(ws.recv(timeout=1.0))
                        except TimeoutError:
                            continue
                        head = message.get("params", {}).get("result", {})
                        if self.trace is not None:
                            self.trace.write(
                                json.dumps(
                                    {"ts": time.time(), "number": head.get("number"),
                                     "hash": head.get("hash")}
                                ) + "\n"
                            )  # fmt: skip
                            self.trace.flush()
                        if "number" in head:
                            self.publish_blocks_up_to(int(head["number"], 16))
            except (OSError, WebSocketException, RPCError, TimeoutError, ValueError):
                # Node stopped, paused or restarting: poll until the subscription is back.
                with contextlib.suppress(RPCError):
                    self.publish_blocks_up_to(int(self.rpc("eth_blockNumber"), 16))
                self.stop.wait(0.2)

    # -- a client spec's node: its head probe, polled ------------------------------------

    def ask(self, what: str) -> Any:
        probe = self.args.probe[what]
        answer = http_json(probe["url"], method=probe["method"], body=probe["body"])
        return {name: dig(answer, path) for name, path in probe["paths"].items()}

    def follow_probe(self) -> None:
        """Publish the head each time it changes: a probe sees heads, not every block, so
        heights may skip; a new hash at a height published before carries ``replaces``."""
        while not self.stop.is_set():
            try:
                head = self.ask("head")
                number = int(head["height"])
                block_hash = str(head.get("hash", number))
            except (RPCError, KeyError, TypeError, ValueError):
                self.stop.wait(PROBE_EVERY)
                continue
            replaced = self.published.get(number)
            if replaced != block_hash:
                payload: dict[str, Any] = {"number": number, "hash": block_hash, "txs": []}
                if replaced is not None:
                    payload["replaces"] = replaced
                self.publish("block", payload)
                self.published[number] = block_hash
            self.last_number = number
            for height in [h for h in self.published if abs(h - number) > REORG_DEPTH]:
                del self.published[height]
            self.stop.wait(PROBE_EVERY)

    # -- a proof-of-stake node: its beacon head, and finality ---------------------------

    def follow_beacon(self) -> None:
        head_root: str | None = None
        finalized: str | None = None
        while not self.stop.is_set():
            with contextlib.suppress(RPCError, KeyError, TypeError, ValueError):
                data = http_json(f"{self.args.beacon}/eth/v1/beacon/headers/head")["data"]
                if data["root"] != head_root:
                    slot = int(data["header"]["message"]["slot"])
                    self.publish("beacon_head", {"slot": slot, "root": str(data["root"])})
                    head_root = data["root"]
            # Before the first finalized block geth answers "not found" (or the genesis).
            with contextlib.suppress(RPCError, KeyError, TypeError, ValueError):
                block = self.rpc("eth_getBlockByNumber", ["finalized", False])
                number = int(block["number"], 16)
                if number > 0 and block["hash"] != finalized:
                    self.publish("finalized", {"number": number, "hash": str(block["hash"])})
                    finalized = block["hash"]
            self.stop.wait(BEACON_EVERY)

    def peer_count(self) -> int:
        if self.args.probe is not None:
            return int(self.ask("peers")["count"])
        return int(self.rpc("net_peerCount"), 16)

    def watch_peers_and_health(self) -> None:
        previous: int | None = None
        last_health = 0.0
        while not self.stop.is_set():
            try:
                if self.args.probe is not None and not self.args.peers:
                    self.ask("head")  # health: the node answers
                count = self.peer_count() if self.args.peers else 0
                ok = True
            except (RPCError, KeyError, TypeError, ValueError):
                count, ok = previous or 0, False
            if ok and self.args.peers and count != previous:
                self.publish("peers", {"count": count, "previous": previous})
                previous = count
            if time.monotonic() - last_health >= HEALTH_EVERY:
                self.publish("health", {"ok": ok, "height": self.last_number})
                last_health = time.monotonic()
            self.stop.wait(PEERS_EVERY)

    def run_forever(self) -> None:
        self.client.connect_async(self.args.host, self.args.port, keepalive=10)
        self.client.loop_start()
        follow = self.follow_heads if self.args.probe is None else self.follow_probe
        threads = [
            threading.Thread(target=follow, daemon=True),
            threading.Thread(target=self.watch_peers_and_health, daemon=True),
        ]
        if self.args.probe is None:
            threads.append(threading.Thread(target=self.watch_contracts, daemon=True))
        if self.args.beacon:
            threads.append(threading.Thread(target=self.follow_beacon, daemon=True))
        for thread in threads:
            thread.start()
        try:
            while not self.stop.wait(1.0):
                # The run's datadirs go at teardown, whoever does it: a safety net for an
                # agent whose killer never came (e.g. a network left by a failed test).
                if self.args.alive_while and not os.path.exists(self.args.alive_while):
                    self.stop.set()
        finally:
            self.client.loop_stop()


def _abi_type(item: dict[str, Any]) -> str:
    """The canonical type of an ABI input (tuples spelled out)."""
    kind = str(item["type"])
    if kind.startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in item.get("components", []))
        return f"({inner}){kind[5:]}"
    return kind


def _checksum(address: str) -> str:
    from eth_utils.address import to_checksum_address

    return str(to_checksum_address(address))


def _jsonable(value: Any, kind: str = "") -> Any:
    """A decoded ABI value as JSON: bytes as 0x-hex, addresses checksummed as web3 has them."""
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, (list, tuple)):
        inner = kind[: kind.rindex("[")] if kind.endswith("]") else ""
        return [_jsonable(v, inner) for v in value]
    if kind == "address" and isinstance(value, str):
        return _checksum(value)
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="chainharness node agent")
    parser.add_argument("--run", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--rpc", help="Ethereum JSON-RPC URL (with --ws)")
    parser.add_argument("--ws", help="WebSocket URL for the newHeads subscription")
    parser.add_argument(
        "--probe", type=json.loads, help="JSON: the head (and peers) probes of a client spec"
    )
    parser.add_argument("--beacon", help="a proof-of-stake node's beacon API URL (with --rpc)")
    parser.add_argument("--broker", required=True, help="HOST:PORT")
    parser.add_argument("--user")
    parser.add_argument("--password", help="default: $CHAINHARNESS_BUS_PASSWORD")
    parser.add_argument("--record", help="append every event of the run to this JSONL file")
    parser.add_argument("--own", required=True, help="append this agent's events to this file")
    parser.add_argument("--no-peers", dest="peers", action="store_false")
    parser.add_argument("--alive-while", help="exit once this path no longer exists")
    args = parser.parse_args(argv)
    if args.probe is None and not (args.rpc and args.ws):
        parser.error("give --rpc and --ws, or --probe")
    if args.beacon and not args.rpc:
        parser.error("--beacon needs --rpc (the finalized block is the execution client's)")
    if args.probe is not None and "peers" not in args.probe:
        args.peers = False
    args.host, _, port = args.broker.rpartition(":")
    args.port = int(port)
    Agent(args).run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
