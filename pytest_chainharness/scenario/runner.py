"""Running a scenario against a chain: steps, waits, asserts, then the consistency checks.

The runner keeps a timeline (what each step did and how long it took), the transactions
it sent, and the fault schedules that ``random_faults`` drew, so the report can show
exactly what happened and a failure can be replayed with the same seed.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from eth_account.signers.local import LocalAccount

from .._errors import ChainTimeout
from .._rpc import RPCError
from .schema import Scenario, Step

if TYPE_CHECKING:
    from ..bus import SyncBus
    from ..chain import Chain, Node

__all__ = ["Fault", "ScenarioFailed", "ScenarioRun", "draw_schedule"]


class ScenarioFailed(AssertionError):
    """A scenario step or a consistency check did not hold (a product failure)."""


@dataclass(frozen=True)
class Fault:
    """One fault a ``random_faults`` step drew."""

    kind: str
    nodes: tuple[int, ...] = ()
    groups: tuple[tuple[int, ...], ...] = ()
    ms: int = 0
    hold: float = 0.0

    def __str__(self) -> str:
        if self.kind == "partition":
            what = f"partition {[list(g) for g in self.groups]}"
        elif self.kind == "latency":
            what = f"latency {self.ms}ms on node{self.nodes[0]}"
        else:
            what = f"{self.kind} node{self.nodes[0]}"
        return f"{what} for {self.hold:g}s"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "nodes": list(self.nodes),
            "groups": [list(g) for g in self.groups],
            "ms": self.ms,
            "hold": self.hold,
        }


def draw_schedule(seed: int, key: str, nodes: int, args: dict[str, Any]) -> list[Fault]:
    """The faults of one ``random_faults`` step: a pure function of (seed, key, args)."""
    # A string seed hashes the same in every process (unlike hash()); key names the step.
    rng = random.Random(f"chainharness/{seed}/{key}")
    kinds = list(args["kinds"])
    low, high = [*args["latency_ms"], 100, 500][:2]
    faults: list[Fault] = []
    for _ in range(int(args["count"])):
        kind = rng.choice(kinds)
        if kind == "partition" and nodes < 2:
            kind = "pause"
        if kind == "partition":
            order = list(range(nodes))
            rng.shuffle(order)
            cut = rng.randint(1, nodes - 1)
            groups = (tuple(sorted(order[:cut])), tuple(sorted(order[cut:])))
            faults.append(Fault(kind, groups=tuple(sorted(groups)), hold=args["hold"]))
        elif kind == "latency":
            ms = rng.randint(int(low), int(high))
            faults.append(Fault(kind, nodes=(rng.randrange(nodes),), ms=ms, hold=args["hold"]))
        else:
            faults.append(Fault(kind, nodes=(rng.randrange(nodes),), hold=args["hold"]))
    return faults


@dataclass
class ScenarioRun:
    scenario: Scenario
    chain: Chain
    account: Callable[[], LocalAccount]
    bus: SyncBus | None
    seed: int
    key: str
    timeline: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    schedules: list[dict[str, Any]] = field(default_factory=list)
    methods: set[str] = field(default_factory=set)
    consistency: list[str] = field(default_factory=list)
    start_height: int = 0
    _t0: float = 0.0
    _deadline: float = float("inf")
    _sender: LocalAccount | None = None

    # -- driving ---------------------------------------------------------------------------

    def run(self, restore: Callable[[], None]) -> None:
        self._t0 = time.monotonic()
        deadline = self._deadline = self._t0 + self.scenario.timeout
        self.start_height = min(h.number for h in self.chain.heads().values())
        if self.scenario.version:
            self._note(f"setup: every node on version {self.scenario.version}")
            for node in self.chain.nodes:
                node.upgrade(self.scenario.version, timeout=60)
            self.chain.wait_converged(timeout=60)
        for step in self.scenario.steps:
            if time.monotonic() > deadline:
                raise ScenarioFailed(
                    f"the scenario ran past its timeout of {self.scenario.timeout:g}s "
                    f"before {step.where} (line {step.line})"
                )
            started = time.monotonic()
            try:
                outcome = self._step(replace(step, args=self._capped(step.args)))
            except (AssertionError, ChainTimeout) as exc:
                self._note(f"FAILED {step.where} (line {step.line}): {_first(exc)}", started)
                why = f"{self._ran_out(step)}: " if time.monotonic() >= deadline else ""
                raise ScenarioFailed(
                    f"{self.scenario.path}:{step.line}: {step.where} failed: {why}{exc}"
                ) from exc
            if time.monotonic() >= deadline:
                self._note(f"FAILED {step.where} (line {step.line}): out of time", started)
                raise ScenarioFailed(f"{self.scenario.path}:{step.line}: {self._ran_out(step)}")
            self._note(f"{step.where}: {outcome}", started)
        # Consistency: on a healed, whole network.
        started = time.monotonic()
        restore()
        self._note("restored: healed, latency cleared, every node running, converged", started)
        self.check_consistency()

    def _capped(self, args: dict[str, Any]) -> dict[str, Any]:
        """The step's own time limits, cut to what is left of the scenario's timeout: a
        step may never run past it (a 20 s sleep in a 5 s scenario fails at 5 s)."""
        left = max(0.0, self._deadline - time.monotonic())
        capped = dict(args)
        for key in ("timeout", "within", "seconds"):
            value = capped.get(key)
            if isinstance(value, float) and value > left:
                capped[key] = left
        return capped

    def _ran_out(self, step: Step) -> str:
        return (
            f"the scenario's timeout of {self.scenario.timeout:g}s ran out during "
            f"{step.where} (line {step.line})"
        )

    def _hold(self, seconds: float) -> None:
        """Sleep ``seconds``, but never past the scenario's timeout."""
        left = self._deadline - time.monotonic()
        time.sleep(max(0.0, min(seconds, left)))

    def _note(self, text: str, started: float | None = None) -> None:
        at = (started if started is not None else time.monotonic()) - self._t0
        took = f" ({time.monotonic() - started:.1f}s)" if started is not None else ""
        self.timeline.append(f"{at:7.1f}s  {text}{took}")

    def _node(self, index: int) -> Node:
        return self.chain.nodes[index]

    def _step(self, step: Step) -> str:
        a = step.args
        chain = self.chain
        match step.action:
            case "send":
                return self._send(a["txs"], a["value"], a["node"])
            case "kill" | "stop" | "pause" | "resume":
                getattr(self._node(a["node"]), step.action)(part=a["part"])
                return f"node{a['node']}{_part(a)} {step.action}"
            case "start" | "restart":
                getattr(self._node(a["node"]), step.action)(timeout=a["timeout"], part=a["part"])
                return f"node{a['node']}{_part(a)} {step.action}ed"
            case "partition":
                how = chain.cut(*a["groups"])
                self.methods.add(how)
                return f"partition {a['groups']} by {how}"
            case "heal":
                chain.heal()
                return "healed"
            case "latency":
                how = chain.add_latency(a["node"], a["ms"], jitter_ms=a["jitter"], loss=a["loss"])
                self.methods.add(how)
                return f"node{a['node']} +{a['ms']}ms by {how}"
            case "clear_latency":
                chain.clear_latency(a["node"])
                return "latency cleared"
            case "upgrade":
                node = self._node(a["node"])
                node.upgrade(a["version"], timeout=a["timeout"])
                return f"node{a['node']} now runs {node.client_version}"
            case "rolling_upgrade":
                return self._rolling(a)
            case "random_faults":
                return self._random(step)
            case "sleep":
                self._hold(a["seconds"])
                return f"held {a['seconds']:g}s"
            case "wait" | "assert":
                return self._condition(a)
        raise AssertionError(f"unhandled action {step.action}")  # the schema allows no other

    # -- actions ---------------------------------------------------------------------------

    def _send(self, count: int, value: int, node: int | None) -> str:
        if self._sender is None:
            self._sender = self.account()
        sender = self._sender
        for _ in range(count):
            tx = self.chain.transfer(sender, sender.address, value, node=node)
            self.sent.append(tx.to_0x_hex())
        return f"{count} tx sent"

    def _rolling(self, a: dict[str, Any]) -> str:
        result = self.chain.rolling_upgrade(
            a["version"],
            max_unavailable=a["max_unavailable"],
            pause=a["pause"],
            health=_health_check(a["health"]) if a["health"] else None,
            auto_rollback=a["auto_rollback"],
            timeout=a["timeout"],
        )
        outcome = "upgraded" if result.ok else "rolled_back" if result.rolled_back else "failed"
        self.timeline.extend("           " + line for line in str(result).splitlines())
        expect = a["expect"] or "upgraded"
        if outcome != expect:
            raise AssertionError(f"rolling upgrade ended {outcome}, expected {expect}\n{result}")
        return f"rolling upgrade to {a['version']}: {outcome}"

    def _random(self, step: Step) -> str:
        a = step.args
        key = f"{self.key}/steps[{step.index}]"
        faults = draw_schedule(self.seed, key, len(self.chain.nodes), a)
        self.schedules.append(
            {"step": step.where, "seed": self.seed, "faults": [f.to_dict() for f in faults]}
        )
        self.timeline.append(
            f"           random_faults (seed {self.seed}): "
            + "; ".join(f"{i + 1}. {f}" for i, f in enumerate(faults))
        )
        for fault in faults:
            self._apply(fault)
            self._hold(fault.hold)
            self._recover(fault, min(a["timeout"], max(0.0, self._deadline - time.monotonic())))
        return f"{len(faults)} random faults applied and recovered"

    def _apply(self, fault: Fault) -> None:
        chain = self.chain
        if fault.kind == "partition":
            self.methods.add(chain.cut(*fault.groups))
        elif fault.kind == "latency":
            self.methods.add(chain.add_latency(fault.nodes[0], fault.ms))
        elif fault.kind == "restart":
            self._node(fault.nodes[0]).restart()
        else:
            getattr(self._node(fault.nodes[0]), fault.kind)()

    def _recover(self, fault: Fault, timeout: float) -> None:
        chain = self.chain
        node = self._node(fault.nodes[0]) if fault.nodes else None
        if fault.kind == "partition":
            chain.heal()
        elif fault.kind == "latency" and node is not None:
            chain.clear_latency(node)
        elif fault.kind == "kill" and node is not None:
            node.start()
        elif fault.kind == "pause" and node is not None:
            node.resume()
        chain.wait_converged(timeout=timeout)

    # -- waits and asserts -----------------------------------------------------------------

    def _selected(self, nodes: list[int] | None) -> list[Node]:
        return [self._node(i) for i in nodes] if nodes is not None else self.chain.running_nodes()

    def _condition(self, a: dict[str, Any]) -> str:
        chain = self.chain
        kind = a["condition"]
        if kind == "converged":
            head = chain.wait_converged(timeout=a["timeout"])
            return f"converged at {head}"
        if kind == "height":
            goal = self._goal(a["min"])
            chain.wait_for_height(goal, nodes=a["nodes"], timeout=a["timeout"])
            return f"height >= {goal}"
        if kind == "finalized":
            at_least = None if a["min"] is None else self._goal(a["min"])
            head = chain.wait_finalized(at_least=at_least, timeout=a["timeout"])
            return f"finalized {head} or higher on every running node"
        if kind == "no_finality":
            return self._no_finality(a["for"])
        if kind == "tx_included":
            for tx in self.sent:
                chain.wait_for_tx(tx, timeout=a["timeout"])
            return f"all {len(self.sent)} tx on every running node"
        if kind == "stalled":
            return self._stalled(a["nodes"], a["for"], a["within"])
        if kind == "advancing":
            nodes = self._selected(a["nodes"])
            start = {n.name: n.head().number for n in nodes}
            goal = max(start.values()) + a["blocks"]
            chain.wait_for_height(goal, nodes=a["nodes"], timeout=a["timeout"])
            return f"{', '.join(start)} advanced to {goal}"
        if kind == "no_fork":
            return self._no_fork(a["depth"])
        if kind == "version":
            for node in self._selected(a["nodes"]):
                version = node.client_version
                if a["contains"] not in version:
                    raise AssertionError(f"{node.name} runs {version}, expected {a['contains']}")
            return f"version contains {a['contains']}"
        if kind == "peers":
            node = self._node(a["node"])
            count = node.peer_count()
            if count < a["min"]:
                raise AssertionError(f"{node.name} has {count} peers, expected >= {a['min']}")
            return f"{node.name} has {count} peers"
        raise AssertionError(f"unhandled condition {kind}")

    def _goal(self, value: int | str) -> int:
        """A block number, or "+N": N above the highest head now."""
        if isinstance(value, str):
            return max(h.number for h in self.chain.heads().values()) + int(value[1:])
        return value

    def _no_finality(self, hold: float) -> str:
        """For ``hold`` s, no running node finalizes a block above the highest head at the
        start: what is proposed from now on stays unfinalized (a split without two thirds
        of the stake on either side)."""
        chain = self.chain
        top = max(h.number for h in chain.heads().values())
        deadline = time.monotonic() + hold
        while True:
            for node in chain.running_nodes():
                head = chain.adapter.finalized(node._spec)  # UnsupportedAction: at once
                if head is not None and head.number > top:
                    raise AssertionError(
                        f"{node.name} finalized {head}, proposed after #{top}, the highest "
                        f"head when the step began\n{chain.status_table()}"
                    )
            if time.monotonic() >= deadline:
                return f"nothing above #{top} finalized for {hold:g}s"
            time.sleep(min(1.0, hold / 4))

    def _stalled(self, nodes: list[int], hold: float, within: float) -> str:
        """Wait (at most ``within`` s) for a window of ``hold`` s in which none of ``nodes``
        imports a block."""
        chosen = self._selected(nodes)
        deadline = time.monotonic() + within
        window_start = time.monotonic()
        heads = {n.name: n.head() for n in chosen}
        while True:
            time.sleep(min(0.25, hold / 4))
            now = {n.name: n.head() for n in chosen}
            if now != heads:
                heads, window_start = now, time.monotonic()
            elif time.monotonic() - window_start >= hold:
                return "stalled at " + ", ".join(f"{k} #{v.number}" for k, v in now.items())
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{', '.join(heads)} kept producing blocks: no {hold:g}s without a new "
                    f"block within {within:g}s\n{self.chain.status_table()}"
                )

    # -- consistency -----------------------------------------------------------------------

    def _no_fork(self, depth: int) -> str:
        nodes = self.chain.running_nodes()
        common = min(n.head().number for n in nodes)
        # Deeper than ``depth`` below the common head: at the head itself two signers may
        # have sealed the same height a moment ago, which the next block settles.
        last = common - depth - 1
        first = max(1, min(self.start_height, last))
        if last < first:
            return "no blocks deep enough to compare"
        adapter = self.chain.adapter
        found_hashes = {n.name: adapter.block_hashes(n._spec, first, last) for n in nodes}
        if any(found is None for found in found_hashes.values()):
            return (
                f"not checked: client {adapter.display_name} reports its head only, not "
                "the block at each height"
            )
        hashes = {name: found for name, found in found_hashes.items() if found is not None}
        reference = nodes[0].name
        for number in range(first, last + 1):
            seen = {name: found[number] for name, found in hashes.items()}
            if len(set(seen.values())) > 1:
                detail = ", ".join(f"{k}={v[:10]}" for k, v in seen.items())
                raise AssertionError(
                    f"fork at height {number} ({common - number} below the common head "
                    f"{common}, allowed depth {depth}): {detail}"
                )
        return f"heights {first}..{last} identical on {len(nodes)} nodes (ref {reference})"

    def check_consistency(self) -> None:
        depth = self.scenario.fork_depth
        self.consistency.append(f"no lasting fork: {self._no_fork(depth)}")
        included, dropped = self._tx_fates()
        self.consistency.append(
            f"transactions: {len(self.sent)} sent, {included} included exactly once on every "
            f"node, {len(dropped)} dropped" + (f" ({', '.join(dropped)})" if dropped else "")
        )
        reorged = self._reorgs_seen()
        if reorged:
            self.consistency.append(
                f"transient forks seen on the bus (resolved): {reorged} height(s) re-imported"
            )

    def _tx_fates(self) -> tuple[int, list[str]]:
        dropped: list[str] = []
        included = 0
        nodes = self.chain.running_nodes()
        for tx in self.sent:
            try:
                receipts = self.chain.wait_for_tx(
                    tx, timeout=max(5.0, 3 * self.chain.testnet.period)
                )
            except ChainTimeout:
                if all(_receipt(n, tx) is None for n in nodes):
                    dropped.append(tx[:12])
                    continue
                raise
            blocks = {str(r["blockHash"].to_0x_hex()) for r in receipts.values()}
            if len(blocks) != 1:
                raise AssertionError(f"tx {tx} is in different blocks on different nodes: {blocks}")
            number = next(iter(receipts.values()))["blockNumber"]
            canonical = nodes[0]._rpc("eth_getBlockByNumber", [hex(number), False])["hash"]
            if canonical not in blocks:
                raise AssertionError(f"tx {tx} receipt points at a block that is not canonical")
            included += 1
        return included, dropped

    def _reorgs_seen(self) -> int:
        if self.bus is None:
            return 0
        seen: dict[tuple[str | None, int], set[str]] = {}
        for event in self.bus.events("block"):
            number = event.payload.get("number")
            if isinstance(number, int) and number >= self.start_height:
                seen.setdefault((event.node, number), set()).add(str(event.payload.get("hash")))
        return sum(1 for hashes in seen.values() if len(hashes) > 1)

    def report(self) -> str:
        lines = [f"scenario: {self.scenario.title} ({self.scenario.path})", f"seed: {self.seed}"]
        if self.methods:
            lines.append("fault methods: " + ", ".join(sorted(self.methods)))
        lines += ["timeline:", *("  " + t for t in self.timeline)]
        if self.consistency:
            lines += ["consistency:", *("  " + c for c in self.consistency)]
        if self.schedules:
            lines.append(f"random fault schedules (replay with --chain-seed={self.seed}):")
            lines += ["  " + json.dumps(s) for s in self.schedules]
        return "\n".join(lines)


def _first(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _receipt(node: Node, tx: str) -> Any:
    try:
        return node._rpc("eth_getTransactionReceipt", [tx])
    except RPCError:
        return None


def _health_check(spec: dict[str, Any]) -> Callable[[Node], object]:
    from ..upgrade import default_health

    follows = default_health(spec["follows"]) if spec.get("follows") else None

    def check(node: Node) -> object:
        if spec.get("client_version") and spec["client_version"] not in node.client_version:
            raise AssertionError(
                f"{node.name} reports {node.client_version}, health wants {spec['client_version']}"
            )
        rpc = spec.get("rpc")
        if rpc:
            answer = node._rpc(rpc["method"], list(rpc["params"]))
            if rpc.get("equals") is not None and answer != rpc["equals"]:
                raise AssertionError(
                    f"{rpc['method']} = {answer!r}, health wants {rpc['equals']!r}"
                )
            if rpc.get("contains") is not None and rpc["contains"] not in str(answer):
                raise AssertionError(
                    f"{rpc['method']} = {answer!r}, health wants it to contain {rpc['contains']!r}"
                )
        if follows is not None:
            follows(node)
        return True

    return check


def _part(args: dict[str, Any]) -> str:
    """`` geth`` for a step on one part of the node, else nothing."""
    return f" {args['part']}" if args.get("part") else ""
