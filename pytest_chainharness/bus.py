"""``SyncBus``: tests wait on events instead of sleeping, and processes meet at barriers.

Topics (``<run>`` is the run id, so runs sharing a broker never mix)::

    chainharness/<run>/events/<kind>/<node|->     events (agents, the harness, tests)
    chainharness/<run>/last/<kind>/<node>         the node's latest block and peers (retained)
    chainharness/<run>/barrier/<name>/<party>     one retained message per arrival
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ._broker import BrokerEndpoint
from ._errors import ChainHarnessError, ChainTimeout

__all__ = ["HARNESS_KINDS", "BarrierTimeout", "Event", "SyncBus", "merge_history"]

#: Event kinds the harness itself publishes.
HARNESS_KINDS = frozenset({"block", "tx", "peers", "health", "fault", "repair"})
_KIND = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


class BarrierTimeout(ChainTimeout):
    """Not every party reached a barrier in time."""


@dataclass(frozen=True)
class Event:
    kind: str
    #: Node name, or None for run-wide events.
    node: str | None
    payload: dict[str, Any] = field(default_factory=dict)
    #: Publisher's wall-clock time (seconds since the epoch).
    ts: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "node": self.node, "payload": self.payload, "ts": self.ts}


@dataclass
class _Arrivals:
    """The numbered events (``seq``) of one agent (``src``) as this bus got them."""

    source: str
    #: Every event of this agent up to this number arrived (or came before we listened).
    upto: int
    #: Numbers above ``upto`` that arrived before the ones below them.
    early: set[int] = field(default_factory=set)

    def take(self, seq: int) -> None:
        if seq <= self.upto:
            return
        self.early.add(seq)
        while self.upto + 1 in self.early:
            self.upto += 1
            self.early.remove(self.upto)

    def gap(self) -> str:
        """The numbers still on their way, or "" when none is."""
        if not self.early:
            return ""
        last = min(self.early) - 1
        return str(self.upto + 1) if last == self.upto + 1 else f"{self.upto + 1} to {last}"


class SyncBus:
    """A connection to the run's broker, with the run's event history since it connected
    (and each node's latest block and peer count from before)."""

    def __init__(
        self,
        endpoint: BrokerEndpoint,
        run_id: str,
        nodes: Sequence[str],
        *,
        connect_timeout: float = 10.0,
    ) -> None:
        self.endpoint = endpoint
        self.run_id = run_id
        self.nodes = list(nodes)
        self._events: list[Event] = []
        #: node → hashes of every block it announced, and the lowest height announced.
        self._block_hashes: dict[str, set[str]] = {}
        self._first_block: dict[str, int] = {}
        #: Node → height → the hash of its latest block event there (a reorg's block
        #: carries ``replaces`` and takes the height over).
        self._hash_at: dict[str, dict[int, str]] = {}
        self._arrivals: dict[str, set[str]] = {}
        #: Node → its current agent's numbered events: a wait counts a node's events only
        #: while none of its agent's earlier ones is still on its way (below).
        self._order: dict[str, _Arrivals] = {}
        self._sources: dict[str, set[str]] = {}
        self._kinds: set[str] = set(HARNESS_KINDS)
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        client_id = f"{run_id}-bus-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            # A persistent session: the broker keeps what arrives while we reconnect.
            clean_session=False,
        )
        self._seen: set[tuple[str, str | None, float]] = set()
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.max_queued_messages_set(0)
        if endpoint.username:
            self._client.username_pw_set(endpoint.username, endpoint.password)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.connect_async(endpoint.host, endpoint.port, keepalive=10)
        self._client.loop_start()
        # Publishing on a connection of its own: one connection that both receives every
        # event at QoS 1 and publishes lets acknowledgements queue behind deliveries, and
        # delivery latency grew to seconds at 1,000 events/s.
        self._pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{client_id}-pub")
        self._pub.reconnect_delay_set(min_delay=1, max_delay=2)
        self._pub.max_queued_messages_set(0)
        self._pub.max_inflight_messages_set(1000)
        if endpoint.username:
            self._pub.username_pw_set(endpoint.username, endpoint.password)
        self._pub.connect_async(endpoint.host, endpoint.port, keepalive=10)
        self._pub.loop_start()
        if not self._subscribed.wait(connect_timeout):
            self.close()
            raise ChainHarnessError(f"could not subscribe on the bus at {endpoint.url}")

    # -- paho callbacks (network thread) -----------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        base = f"chainharness/{self.run_id}"
        client.subscribe([(f"{base}/events/#", 1), (f"{base}/barrier/#", 1), (f"{base}/last/#", 1)])

    def _on_subscribe(self, *args: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        parts = message.topic.split("/")
        if len(parts) >= 4 and parts[2] == "barrier":
            with self._cond:
                self._arrivals.setdefault(parts[3], set()).add("/".join(parts[4:]))
                self._cond.notify_all()
            return
        # A live copy on last/ is usually a duplicate of its events/ message (dropped just
        # below), but not while we subscribe: an event the broker handled just before our
        # subscription, whose last/ copy it handled just after, arrives only on last/.
        try:
            data = json.loads(message.payload)
            event = Event(data["kind"], data.get("node"), data.get("payload", {}), data["ts"])
        except (ValueError, KeyError, TypeError):
            return  # not ours: somebody else's payload on our topics is ignored
        with self._cond:
            # QoS 1 may deliver twice around a reconnect; a retained head repeats an event.
            key = (event.kind, event.node, event.ts)
            if key in self._seen:
                return
            self._seen.add(key)
            self._events.append(event)
            self._sequence(event.node, data.get("src"), data.get("seq"), message.retain)
            if event.kind == "block" and event.node is not None:
                self._index_block(event)
            self._kinds.add(event.kind)
            self._cond.notify_all()

    # -- API -------------------------------------------------------------------------------

    def publish(self, kind: str, payload: dict[str, Any], *, node: str | None = None) -> None:
        """Publish an event (QoS 1) for every bus of the run to see."""
        if not _KIND.match(kind):
            raise ValueError(f"event kind {kind!r}: lower-case letters, digits, '_', '.', '-'")
        if node is not None:
            self._check_node(node)
        with self._cond:
            self._kinds.add(kind)
        event = Event(kind, node, dict(payload), time.time())
        topic = f"chainharness/{self.run_id}/events/{kind}/{node or '-'}"
        self._pub.publish(topic, json.dumps(event.to_dict()), qos=1)

    def request_watch(self, key: str, spec: dict[str, Any]) -> None:
        """Ask every node's agent to publish a contract's logs (``Chain.watch``). Retained,
        so an agent that connects later (a restarted node's) watches it too."""
        topic = f"chainharness/{self.run_id}/control/watch/{key}"
        self._pub.publish(topic, json.dumps(spec), qos=1, retain=True)

    def register_kind(self, kind: str) -> None:
        """Declare a custom event kind that another process will publish, so ``wait_for``
        accepts it before the first one arrives."""
        if not _KIND.match(kind):
            raise ValueError(f"event kind {kind!r}: lower-case letters, digits, '_', '.', '-'")
        with self._cond:
            self._kinds.add(kind)

    def events(self, kind: str | None = None, *, node: str | None = None) -> list[Event]:
        """The run's events seen so far, oldest first, optionally of one kind or node."""
        with self._cond:
            return [
                e
                for e in self._events
                if (kind is None or e.kind == kind) and (node is None or e.node == node)
            ]

    def wait_for(
        self,
        kind: str,
        predicate: Callable[[Event], bool] | None = None,
        *,
        nodes: str | Iterable[str] | None = "all",
        timeout: float = 30.0,
    ) -> list[Event]:
        """One matching event per node (``"all"``, or the given names), or the first one
        from anyone with ``nodes=None``. Events already seen count, but not those of a
        block the node has replaced since (a reorg): a log event then counts once the
        agent has published it again with the block that stays."""
        with self._cond:
            if kind not in self._kinds:
                raise ValueError(
                    f"unknown event kind {kind!r}; known: {', '.join(sorted(self._kinds))}"
                )
        wanted: list[str] | None
        if nodes is None:
            wanted = None
        elif nodes == "all":
            wanted = list(self.nodes)
        else:
            wanted = [nodes] if isinstance(nodes, str) else list(nodes)
            for name in wanted:
                self._check_node(name)
        match = predicate or (lambda event: True)

        def found() -> list[Event] | None:
            hits = [
                e
                for e in self._events
                if e.kind == kind and self._stands(e) and self._caught_up(e.node) and match(e)
            ]
            if wanted is None:
                return hits[:1] or None
            first: dict[str, Event] = {}
            for event in hits:
                if event.node in wanted and event.node not in first:
                    first[event.node] = event
            return [first[n] for n in wanted] if len(first) == len(wanted) else None

        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = found()
                if result is not None:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ChainTimeout(
                        f"timed out after {timeout:g}s waiting for {kind!r} events from "
                        f"{'anyone' if wanted is None else ', '.join(wanted)}\n"
                        + self.last_events_table()
                    )
                self._cond.wait(left)

    def barrier(self, name: str, parties: int, *, timeout: float = 60.0) -> None:
        """Block until ``parties`` callers (any process of the run) reached ``name``."""
        if parties < 1:
            raise ValueError("parties must be at least 1")
        party = (
            f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:6]}"
        )
        self._pub.publish(
            f"chainharness/{self.run_id}/barrier/{name}/{party}", b"1", qos=1, retain=True
        )
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._arrivals.get(name, ())) < parties:
                left = deadline - time.monotonic()
                if left <= 0:
                    arrived = sorted(self._arrivals.get(name, ()))
                    raise BarrierTimeout(
                        f"barrier {name!r}: {len(arrived)} of {parties} parties arrived within "
                        f"{timeout:g}s: {', '.join(arrived) or 'nobody'}"
                    )
                self._cond.wait(left)

    def _index_block(self, event: Event) -> None:
        assert event.node is not None
        try:
            number, block = int(event.payload["number"]), str(event.payload["hash"]).lower()
        except (KeyError, TypeError, ValueError):
            return
        self._block_hashes.setdefault(event.node, set()).add(block)
        self._hash_at.setdefault(event.node, {})[number] = block
        first = self._first_block.get(event.node)
        self._first_block[event.node] = number if first is None else min(first, number)

    def _sequence(self, node: str | None, source: Any, seq: Any, retained: bool) -> None:
        """Note a numbered event of a node's agent (events of others carry no number)."""
        if node is None or not isinstance(source, str) or not isinstance(seq, int):
            return
        order = self._order.get(node)
        if order is not None and order.source == source:
            order.take(seq)
        elif not retained and source not in self._sources.setdefault(node, set()):
            # The first live event we hear of this agent (we connected, or the node's
            # agent started again): what it published before is not ours to wait for. A
            # retained copy starts nothing: it is older than our subscription, and what
            # came between is not ours (amqtt also flags a session's backlog retained,
            # which the branch above takes). A late event of a replaced agent counts
            # for nothing.
            self._sources[node].add(source)
            self._order[node] = _Arrivals(source, seq)

    def _caught_up(self, node: str | None) -> bool:
        """No event of the node's agent is still on its way to us: a broker restart's
        backlog may arrive after newer events, and until it has, this bus's history of
        the node has a hole that the chain does not."""
        order = self._order.get(node) if node is not None else None
        return order is None or not order.early

    def _stands(self, event: Event) -> bool:
        """False for an event of a block (a ``block``, or a ``log`` by its ``block_hash``)
        that its node has replaced since: its chain no longer holds it."""
        if event.node is None:
            return True
        payload = event.payload
        if event.kind == "block":
            number, block = payload.get("number"), payload.get("hash")
        else:
            number, block = payload.get("block"), payload.get("block_hash")
        if number is None or block is None:
            return True
        try:
            now = self._hash_at.get(event.node, {}).get(int(number))
        except (TypeError, ValueError):
            return True
        return now is None or now == str(block).lower()

    def has_block(self, node: str, block_hash: str, number: int) -> bool:
        """Whether ``node``'s agent announced block ``block_hash`` (at ``number``) on the
        bus. A block below the first one this bus heard of from that node (it connected
        later) cannot be checked and counts as announced."""
        with self._cond:
            first = self._first_block.get(node)
            if first is None or not self._caught_up(node):
                return False
            return number < first or block_hash.lower() in self._block_hashes[node]

    def wait_change(self, timeout: float) -> bool:
        """Sleep until any new event arrives (True), or ``timeout`` (False); the chain's
        waits use this instead of polling."""
        with self._cond:
            seen = len(self._events)
            return self._cond.wait_for(lambda: len(self._events) != seen, timeout)

    def last_events_table(self, per_node: int = 3) -> str:
        """The last events of each node, for timeout and failure messages."""
        with self._cond:
            events = list(self._events)
        lines = ["last events per node:"]
        for node in [*self.nodes, None]:
            mine = [e for e in events if e.node == node][-per_node:]
            if not mine and node is None:
                continue
            shown = "; ".join(_describe(e) for e in mine) or "(none)"
            lines.append(f"  {node or 'run'}: {shown}")
        with self._cond:
            gaps = {node: order.gap() for node, order in self._order.items() if order.early}
        for node, gap in gaps.items():
            lines.append(
                f"  {node}: its agent's events {gap} have not arrived, and later ones have "
                "(waits hold until they do; if they never come the broker lost them)"
            )
        return "\n".join(lines)

    def close(self) -> None:
        for client in (self._pub, self._client):
            # Disconnect while its loop runs, so the loop sends it and closes the socket.
            client.disconnect()
            client.loop_stop()
            # paho closes its wake-up socket pair only when the client is collected; its
            # callbacks (our methods) made it a cycle with us, left to the garbage
            # collector, which may finalize the sockets first: a ResourceWarning at exit
            # (the soak: a run whose every test passed ended with exit 1).
            client.on_connect = client.on_subscribe = client.on_message = None

    def _check_node(self, name: str) -> None:
        if name not in self.nodes:
            raise ValueError(f"no node named {name!r}; nodes are {', '.join(self.nodes)}")


def merge_history(logs_dir: Path) -> Path:
    """Write ``events.jsonl``: every event of the run once, oldest first.

    Sources: each agent's own file (everything it published, written before publishing)
    and the recording subscription (everything anyone published). Re-run it any time; the
    owner runs it at teardown.
    """
    seen: dict[tuple[str, str | None, float], str] = {}
    for source in sorted(logs_dir.glob("events-*.jsonl")):
        for line in source.read_text().splitlines():
            try:
                data = json.loads(line)
                key = (data["kind"], data.get("node"), float(data["ts"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a kill
            seen.setdefault(key, line)
    target = logs_dir / "events.jsonl"
    tmp = target.with_suffix(".tmp")
    tmp.write_text("".join(seen[k] + "\n" for k in sorted(seen, key=lambda k: k[2])))
    tmp.replace(target)
    return target


def _describe(event: Event) -> str:
    age = time.time() - event.ts
    if event.kind == "block":
        return f"block {event.payload.get('number')} ({age:.1f}s ago)"
    brief = ", ".join(f"{k}={v}" for k, v in list(event.payload.items())[:3])
    return f"{event.kind} {brief} ({age:.1f}s ago)"
