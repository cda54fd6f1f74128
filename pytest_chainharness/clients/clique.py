"""geth's Clique stall repair: the waits tick it, and it hands a deadlocked side the
branch that stays.

Two branches of equal difficulty where every signer on each branch has signed too
recently (geth's known Clique deadlock, most often after a 2|2 heal, or between
same-height siblings inside one group of a partition) never resolve on their own:
nobody seals and nobody reorgs. This is client knowledge, so it lives here, behind the
adapter's ``repairer``; the chain only ticks it and reports what it did.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING

from .._rpc import RPCError

if TYPE_CHECKING:
    from ..chain import Chain, Node
    from .base import Head

__all__ = ["CliqueUnstall", "islands"]

log = logging.getLogger("pytest_chainharness")


class CliqueUnstall:
    """Rewind the losing side of a Clique fork that no signer can extend."""

    name = "clique-unstall"

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        #: Each island (its nodes' names) → its heads and since when they stood still.
        self._stalls: dict[frozenset[str], tuple[tuple[tuple[str, str], ...], float]] = {}
        self._stall_checked = 0.0

    def tick(self) -> str | None:
        """One look (at most one a second); returns what was repaired, or None.

        The running nodes fall into islands: nodes their peer links join (either end's
        word is enough; a partition's groups never share one). Once an island's heads,
        more than one among them, have stood still for max(6 s, 5 periods), its nodes off
        the heaviest branch (then the most common) go back to where they forked from it
        (debug_setHead) and import it before they seal again. A branch is never handed
        from one island to another: a block sealed after the rewind could not reach it.
        """
        now = time.monotonic()
        if now - self._stall_checked < 1.0:
            return None
        self._stall_checked = now
        heads = self.chain.heads()
        if len({head.hash for head in heads.values()}) < 2:
            self._stalls = {}
            return None  # one head everywhere: no fork to look at (and no peer reads)
        links = self._peer_links()
        if links is None:
            self._stalls = {}
            return None
        done: list[str] = []
        stalls: dict[frozenset[str], tuple[tuple[tuple[str, str], ...], float]] = {}
        for island in islands(links, self._groups()):
            here = {name: head for name, head in heads.items() if name in island}
            if len(here) < 2:
                continue
            key = tuple(sorted((name, head.hash) for name, head in here.items()))
            seen, since = self._stalls.get(island, ((), now))
            if seen != key:
                since = now
            stalls[island] = (key, since)
            if now - since < max(6.0, 5.0 * self.chain.testnet.period):
                continue
            what = self._repair(here, now - since)
            if what is not None:
                done.append(what)
                del stalls[island]
        # An island that changed shape starts its clock again (its old key is dropped).
        self._stalls = stalls
        return "; ".join(done) or None

    def _groups(self) -> dict[str, int] | None:
        groups = self.chain.provider.partitioned()
        if not groups:
            return None
        name = {node.index: node.name for node in self.chain.testnet.nodes}
        return {name[i]: g for g, members in enumerate(groups) for i in members}

    def _repair(self, heads: dict[str, Head], stood: float) -> str | None:
        branches: dict[str, list[str]] = {}
        for name, head in heads.items():
            branches.setdefault(head.hash, []).append(name)
        if len(branches) < 2:
            return None  # one head that does not move: not a fork (sealing stopped elsewhere)
        # The heaviest branch wins, as geth's own fork choice would pick it (a lighter
        # side left alone adopts it only at geth's next forced sync); then the branch
        # most nodes are on; the hash only breaks an exact tie.
        weight = {
            h: _total_difficulty(self.chain.node(names[0]), h) for h, names in branches.items()
        }
        keep = min(branches, key=lambda h: (-weight[h], -len(branches[h]), h))
        log.info(
            "clique-unstall: heads %s stood still %.0fs; keeping %s (total difficulty %s)",
            {n: f"{h.number}:{h.hash[:10]}" for n, h in heads.items()},
            stood,
            keep[:10],
            weight,
        )
        winner = self.chain.node(branches[keep][0])
        top = heads[winner.name].number
        losers = [self.chain.node(name) for name, head in heads.items() if head.hash != keep]
        for loser in losers:
            # A node that went away meanwhile is left alone; the next check retries.
            with contextlib.suppress(RPCError):
                self.adopt_branch(loser, winner, heads[loser.name].number, top)
        return (
            f"clique-unstall: {', '.join(n.name for n in losers)} took {winner.name}'s "
            f"branch at #{top} {keep[:10]} (heads had stood still {stood:.0f}s)"
        )

    def adopt_branch(self, loser: Node, winner: Node, height: int, top: int) -> None:
        """Put ``loser`` on ``winner``'s chain: rewind to the fork point, import the rest.

        geth would not fetch the kept branch by itself: its sync loop, once its forced
        cycle has found nothing to do, waits for a peer event (a new peer, or a block
        announced with more difficulty), and in a deadlock there is none. So the blocks
        are handed over: read from the winner, imported by the loser.
        """
        # Not sealing while it rewinds: a signer back at the fork point could seal a new
        # competing block at once and re-create the deadlock.
        if loser.signer:
            loser._admin("miner_stop")
        try:
            fork = _fork_point(loser, winner, height)
            dropped = _raw_txs(loser, fork + 1, height)
            blocks = b"".join(
                bytes.fromhex(str(winner._admin("debug_getRawBlock", [hex(n)]))[2:])
                for n in range(fork + 1, top + 1)
            )
            # Rewound first, the imported branch is strictly heavier and becomes the head;
            # at equal difficulty geth could keep its own.
            loser._admin("debug_setHead", [hex(fork)])
            path = self.chain.provider.put_file(loser.index, "chainharness-unstall.rlp", blocks)
            loser._admin("admin_importChain", [path], timeout=30.0)
            # A real reorg puts the losing blocks' transactions back in the pool; setHead
            # does not, so hand them to the kept branch ourselves.
            for raw in dropped:
                with contextlib.suppress(RPCError):
                    winner._rpc("eth_sendRawTransaction", [raw])
            log.info(
                "clique-unstall: %s rewound to %d and imported %d..%d from %s",
                loser.name, fork, fork + 1, top, winner.name,
            )  # fmt: skip
        finally:
            if loser.signer:
                with contextlib.suppress(RPCError):
                    self.chain.provider.start_sealing([loser.index])

    def _peer_links(self) -> dict[str, set[str]] | None:
        """Running node → the running nodes it is connected to; None when one does not
        answer."""
        links = self.chain.provider.peer_links()
        if any(peers is None for peers in links.values()):
            return None
        name = {node.index: node.name for node in self.chain.testnet.nodes}
        return {
            name[index]: {name[other] for other in peers if other in links}
            for index, peers in links.items()
            if peers is not None
        }


def islands(
    links: dict[str, set[str]], groups: dict[str, int] | None = None
) -> list[frozenset[str]]:
    """The nodes the peer links join (either end's word is enough), island by island.

    ``groups`` (node → partition group) cuts every link between two groups: a link can
    outlive the partition by a moment.
    """
    both: dict[str, set[str]] = {name: set() for name in links}
    for name, peers in links.items():
        for peer in peers & both.keys():
            if groups is not None and groups.get(name) != groups.get(peer):
                continue
            both[name].add(peer)
            both[peer].add(name)
    found: list[frozenset[str]] = []
    left = set(both)
    while left:
        reached: set[str] = set()
        todo = [min(left)]
        while todo:
            name = todo.pop()
            if name not in reached:
                reached.add(name)
                todo.extend(both[name] - reached)
        found.append(frozenset(reached))
        left -= reached
    return found


def _total_difficulty(node: Node, block_hash: str) -> int:
    with contextlib.suppress(RPCError, TypeError, ValueError):
        block = node._rpc("eth_getBlockByHash", [block_hash, False]) or {}
        return int(block.get("totalDifficulty") or "0x0", 16)
    return 0


def _fork_point(loser: Node, winner: Node, height: int, depth: int = 64) -> int:
    """The highest block the two nodes share, at most ``depth`` below ``height``."""
    for number in range(height, max(0, height - depth) - 1, -1):
        mine = loser._rpc("eth_getBlockByNumber", [hex(number), False])
        theirs = winner._rpc("eth_getBlockByNumber", [hex(number), False])
        if mine and theirs and mine["hash"] == theirs["hash"]:
            return number
    return max(0, height - depth)


def _raw_txs(node: Node, first: int, last: int) -> list[str]:
    found: list[str] = []
    for number in range(max(1, first), last + 1):
        block = node._rpc("eth_getBlockByNumber", [hex(number), False]) or {}
        for tx in block.get("transactions", []):
            raw = node._rpc("eth_getRawTransactionByHash", [tx])
            if raw:
                found.append(str(raw))
    return found
