"""geth's Clique stall repair: the waits tick it, and it hands a deadlocked side the
branch that stays.

Two branches of equal difficulty where every signer on each branch has signed too
recently (geth's known Clique deadlock, most often after a 2|2 heal) never resolve on
their own: nobody seals and nobody reorgs. This is client knowledge, so it lives here,
behind the adapter's ``repairer``; the chain only ticks it and reports what it did.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING

from .._rpc import RPCError

if TYPE_CHECKING:
    from ..chain import Chain, Node

__all__ = ["CliqueUnstall"]

log = logging.getLogger("pytest_chainharness")


class CliqueUnstall:
    """Rewind the losing side of a Clique fork that no signer can extend."""

    name = "clique-unstall"

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self._stall_key: tuple[tuple[str, str], ...] = ()
        self._stall_since = 0.0
        self._stall_checked = 0.0

    def tick(self) -> str | None:
        """One look (at most one a second); returns what was repaired, or None.

        Once the running nodes' peer links join them all and their heads, more than one
        among them, have stood still for max(6 s, 5 periods), the nodes off the heaviest
        branch (then the most common) go back to where they forked from it
        (debug_setHead) and import it before they seal again. Never while the network is
        partitioned.
        """
        now = time.monotonic()
        if now - self._stall_checked < 1.0 or self.chain.provider.partitioned():
            return None
        self._stall_checked = now
        heads = self.chain.heads()
        if len(heads) < 2:
            return None
        if not joined(self._peer_links()):
            # Nodes cut off from the others stand still for another reason (a heal waits
            # for geth's redial), and what the losers sealed after a rewind could not
            # reach them yet. Joined is enough, though: a block travels on through a
            # third node, and a pair that stays apart after a heal (geth can take a
            # minute to redial one) must not keep a deadlock standing.
            self._stall_key = ()
            return None
        key = tuple(sorted((name, head.hash) for name, head in heads.items()))
        if key != self._stall_key:
            self._stall_key, self._stall_since = key, now
            return None
        if now - self._stall_since < max(6.0, 5.0 * self.chain.testnet.period):
            return None
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
            now - self._stall_since,
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
        self._stall_key = ()
        return (
            f"clique-unstall: {', '.join(n.name for n in losers)} took {winner.name}'s "
            f"branch at #{top} {keep[:10]} (heads had stood still "
            f"{now - self._stall_since:.0f}s)"
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


def joined(links: dict[str, set[str]] | None) -> bool:
    """Whether the peer links (either end's word is enough) reach every node from any."""
    if not links:
        return False
    both: dict[str, set[str]] = {name: set() for name in links}
    for name, peers in links.items():
        for peer in peers & both.keys():
            both[name].add(peer)
            both[peer].add(name)
    reached, todo = set(), [next(iter(both))]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(both[name] - reached)
    return reached == both.keys()


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
