"""Rolling upgrades: batches of at most ``max_unavailable`` nodes, a health check after
each batch, a pause between batches, and an automatic rollback when a batch is unhealthy.

``Chain.rolling_upgrade`` is the entry point; what happened to every node comes back as
an ``UpgradeResult`` (also printed as a table).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._errors import ChainHarnessError, ChainTimeout
from ._rpc import RPCError

if TYPE_CHECKING:
    from .chain import Chain, Node

__all__ = ["NodeUpgrade", "UpgradeResult", "default_health", "rolling_upgrade"]

#: A health check: returns normally when the node is healthy, raises AssertionError (or
#: returns False) when it is not.
Health = Callable[["Node"], object]


@dataclass
class NodeUpgrade:
    name: str
    #: Version the node ran before, and what it was asked to run.
    before: str
    target: str
    #: ``upgraded``, ``rolled_back``, ``failed`` (could not roll back) or ``not_started``.
    status: str = "not_started"
    seconds: float = 0.0
    #: Why the health check failed (for the node whose check failed).
    error: str | None = None
    after: str | None = None


@dataclass
class UpgradeResult:
    target: str
    nodes: dict[str, NodeUpgrade] = field(default_factory=dict)
    rolled_back: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every node upgraded and healthy."""
        return all(n.status == "upgraded" for n in self.nodes.values())

    def __str__(self) -> str:
        lines = [
            f"rolling upgrade to {self.target}: "
            f"{'ok' if self.ok else 'ROLLED BACK' if self.rolled_back else 'FAILED'} "
            f"in {self.seconds:.1f}s"
        ]
        for n in self.nodes.values():
            detail = f"  ({n.error})" if n.error else ""
            lines.append(
                f"  {n.name:<8} {n.status:<12} {n.before} -> {n.after or '-'}  "
                f"{n.seconds:5.1f}s{detail}"
            )
        return "\n".join(lines)


def default_health(timeout: float = 30.0) -> Health:
    """Healthy = answers RPC, has a peer, follows the chain past where it was, and is
    not catching up by a sync of its own (the next node must not go down before this one
    takes its part again: a beacon node in initial sync attests nothing)."""

    def check(node: Node) -> object:
        chain = node._chain
        others = [n for n in chain.running_nodes() if n is not node]
        goal = max((n.head().number for n in others), default=node.head().number) + 1
        deadline = time.monotonic() + timeout
        syncing: str | None = None
        while time.monotonic() < deadline:
            chain.tick_repair()  # as every wait does: a client's stall must not run out the clock
            try:
                if node.head().number >= goal and (node.peer_count() > 0 or not others):
                    syncing = chain.adapter.catching_up(node._spec)
                    if syncing is None:
                        return True
            except RPCError:
                pass
            time.sleep(0.1)
        if syncing is not None:
            raise AssertionError(f"{node.name} is still catching up after {timeout:g}s: {syncing}")
        raise AssertionError(
            f"{node.name} did not follow the chain to height {goal} within {timeout:g}s"
        )

    return check


def _healthy(health: Health, node: Node) -> str | None:
    try:
        verdict = health(node)
    except (AssertionError, ChainHarnessError, RPCError) as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if verdict is False:
        return "health check returned False"
    return None


def rolling_upgrade(
    chain: Chain,
    version: str,
    *,
    max_unavailable: int = 1,
    pause: float = 0.0,
    health: Health | None = None,
    auto_rollback: bool = True,
    timeout: float = 60.0,
) -> UpgradeResult:
    if max_unavailable < 1:
        raise ValueError("max_unavailable must be at least 1")
    if pause < 0:
        raise ValueError("pause must be >= 0 seconds")
    # Resolved before any node is touched: a version that is not installed disturbs nothing.
    chain.provider.check_version(version)
    check = health or default_health(timeout)
    started = time.monotonic()
    result = UpgradeResult(target=version)
    previous: dict[str, str] = {}
    for node in chain.nodes:
        previous[node.name] = chain.provider.version_ref(node.index)
        result.nodes[node.name] = NodeUpgrade(node.name, _version(node), version)
    done: list[Node] = []
    batches = [
        chain.nodes[i : i + max_unavailable] for i in range(0, len(chain.nodes), max_unavailable)
    ]
    for number, batch in enumerate(batches):
        if number and pause:
            time.sleep(pause)
        failure: tuple[Node, str] | None = None
        for node in batch:
            t0 = time.monotonic()
            node.upgrade(version, timeout=timeout)
            result.nodes[node.name].after = _version(node)
            result.nodes[node.name].seconds = time.monotonic() - t0
            done.append(node)
        for node in batch:
            error = _healthy(check, node)
            if error is None:
                result.nodes[node.name].status = "upgraded"
            elif failure is None:
                failure = (node, error)
                result.nodes[node.name].error = error
        if failure is None:
            continue
        for node in batch:
            if result.nodes[node.name].status != "upgraded":
                result.nodes[node.name].status = "unhealthy"
        if not auto_rollback:
            break
        result.rolled_back = True
        for node in reversed(done):
            entry = result.nodes[node.name]
            try:
                node.upgrade(previous[node.name], timeout=timeout)
                entry.status = "rolled_back"
                entry.after = _version(node)
            except (ChainHarnessError, ChainTimeout) as exc:
                entry.status = "failed"
                entry.error = f"rollback failed: {exc}"
        chain.wait_converged(timeout=timeout)
        break
    result.seconds = time.monotonic() - started
    return result


def _version(node: Node) -> str:
    try:
        return node.client_version
    except (ChainHarnessError, RPCError, OSError):
        return "unknown"
