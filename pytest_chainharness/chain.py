"""The running network as tests see it: ``Chain``, ``Node`` and ``Head``.

Every action on a node goes through the provider; every query goes to the node's RPC.
Waits poll at a short interval against a deadline and never sleep a fixed time; when a
deadline passes they raise ``ChainTimeout`` with a table of every node's state.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from eth_account.signers.local import LocalAccount
from eth_typing import HexStr
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import TransactionNotFound
from web3.middleware import ExtraDataToPOAMiddleware
from web3.types import TxReceipt

from ._errors import ChainHarnessError, ChainTimeout, UnsupportedAction
from ._metrics import scrape
from ._rpc import RPCError, rpc_call
from ._testnet import NodeSpec, Testnet
from .clients.base import ClientAdapter, Head
from .providers.base import NodeState, Provider

if TYPE_CHECKING:
    from web3.contract import Contract

    from .bus import SyncBus
    from .upgrade import UpgradeResult

__all__ = ["Chain", "Head", "Node"]

#: How often waits look again. Blocks come every second at most; 50 ms keeps the added
#: detection lag small at a negligible RPC cost on loopback.
POLL_INTERVAL = 0.05

T = TypeVar("T")
log = logging.getLogger("pytest_chainharness")


class Node:
    """One node of the running network."""

    def __init__(self, chain: Chain, spec: NodeSpec) -> None:
        self._chain = chain
        self._spec = spec
        self._w3: Web3 | None = None
        self._w3_url = ""

    def __repr__(self) -> str:
        return f"<Node {self.name} {self.state} {self.rpc_url}>"

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def index(self) -> int:
        return self._spec.index

    @property
    def rpc_url(self) -> str:
        return self._spec.rpc_url

    @property
    def ws_url(self) -> str:
        return self._chain.adapter.ws_url(self._spec)

    @property
    def ports(self) -> dict[str, int]:
        """The node's named ports as reached from the test process (``rpc`` is the main
        API port of every built-in client)."""
        return self._chain.provider.ports(self.index)

    def url(self, port: str = "rpc", scheme: str = "http") -> str:
        """``scheme://host:PORT`` for one of ``ports``, e.g. ``node.url("ws", "ws")``."""
        ports = self.ports
        if port not in ports:
            raise ValueError(
                f"{self.name} has no port named {port!r}; its ports are {', '.join(ports)}"
            )
        return f"{scheme}://{self._spec.host}:{ports[port]}"

    @property
    def signer(self) -> bool:
        """Whether this node produces blocks once told to (geth: a Clique signer)."""
        return self._chain.adapter.seals(self._spec)

    @property
    def w3(self) -> Web3:
        """A web3 client on this node's HTTP endpoint (POA-aware for Clique clients)."""
        self._chain._require_evm("Node.w3")
        if self._w3 is None or self._w3_url != self.rpc_url:
            w3 = Web3(Web3.HTTPProvider(self.rpc_url, request_kwargs={"timeout": 10}))
            if self._chain.adapter.poa:
                w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
            self._w3, self._w3_url = w3, self.rpc_url
        return self._w3

    @property
    def state(self) -> str:
        """``running``, ``paused``, ``stopped``, ``exited`` or ``new``."""
        return self._chain.provider.state(self.index).value

    @property
    def running(self) -> bool:
        """Started and not paused: the node answers RPC (on geth-pos: its geth runs)."""
        return self._chain.provider.serving_state(self.index) is NodeState.RUNNING

    @property
    def parts(self) -> dict[str, str]:
        """Each part's state (``running``, ``paused``, ``stopped``; ``new`` while it waits
        for the part before it to serve) for a client whose node runs several processes
        (geth-pos: ``geth``, ``beacon``, ``validator``); {} for the others. The ``part=``
        of ``kill``, ``stop``, ``start``, ``restart``, ``pause`` and ``resume`` takes one
        of these names."""
        return {name: state.value for name, state in self._chain.provider.parts(self.index).items()}

    # -- actions (all through the provider) -----------------------------------------------

    def _on_part(self, part: str, action: str) -> None:
        self._chain._act(
            self,
            f"{action} {part}",
            lambda: self._chain.provider.act_on_part(self.index, part, action),
        )

    def stop(self, *, part: str | None = None) -> None:
        """Graceful stop; the datadir is kept. With ``part``, that part alone."""
        if part is not None:
            self._on_part(part, "stop")
            return
        self._chain._act(self, "stop", lambda: self._chain.provider.stop(self.index))

    def start(self, *, timeout: float = 30.0, part: str | None = None) -> None:
        """Start a stopped node on its datadir; returns once its RPC answers. With
        ``part``, that stopped part of a running node (its RPC awaited when it serves
        it)."""
        if part is not None:
            self._on_part(part, "start")
            if part == self._chain.adapter.main_part:
                self._chain._wait_rpc([self], timeout=timeout)
            return
        self._chain._act(self, "start", lambda: self._chain.provider.start(self.index))
        self._chain._wait_rpc([self], timeout=timeout)
        self._chain._catch_up_and_seal(self)

    def restart(self, *, timeout: float = 30.0, part: str | None = None) -> None:
        self.stop(part=part)
        self.start(timeout=timeout, part=part)

    def kill(self, *, part: str | None = None) -> None:
        """SIGKILL: no shutdown, the datadir is kept. With ``part``, that part alone: the
        rest of the node runs on without it until ``start(part=...)``."""
        if part is not None:
            self._on_part(part, "kill")
            return
        self._chain._act(self, "kill", lambda: self._chain.provider.kill(self.index))

    def pause(self, *, part: str | None = None) -> None:
        """Freeze the node (SIGSTOP / container pause); with ``part``, that part alone."""
        if part is not None:
            self._on_part(part, "pause")
            return
        self._chain._act(self, "pause", lambda: self._chain.provider.pause(self.index))

    def resume(self, *, part: str | None = None) -> None:
        if part is not None:
            self._on_part(part, "resume")
            return
        self._chain._act(self, "resume", lambda: self._chain.provider.resume(self.index))

    def logs(self, tail: int = 200) -> str:
        """The last ``tail`` lines of the node's output."""
        return self._chain.provider.logs(self.index, tail)

    def upgrade(self, version_or_image: str, *, timeout: float = 30.0) -> None:
        """Restart on another client version (or binary path/image), keeping the datadir."""
        self._chain._act(
            self,
            f"upgrade to {version_or_image}",
            lambda: self._chain.provider.upgrade(self.index, version_or_image),
        )
        self._chain._wait_rpc([self], timeout=timeout)
        self._chain._catch_up_and_seal(self)

    @property
    def client_version(self) -> str:
        return self._chain.provider.client_version(self.index)

    # -- queries ---------------------------------------------------------------------------

    def _rpc(self, method: str, params: list[Any] | None = None, *, timeout: float = 2.0) -> Any:
        return rpc_call(self.rpc_url, method, params, timeout=timeout)

    def _admin(self, method: str, params: list[Any] | None = None, *, timeout: float = 2.0) -> Any:
        """A call on the node's admin channel (the RPC port offers public APIs only)."""
        url = self._chain.provider.admin_url(self.index)
        return rpc_call(url, method, params, timeout=timeout)

    def head(self) -> Head:
        """The node's head, as its client reads it (``RPCError`` when it does not answer)."""
        return self._chain.adapter.head(self._spec)

    def peer_count(self) -> int:
        if not self._chain.adapter.has_peers:
            return 0
        return self._chain.adapter.peer_count(self._spec)

    def metrics(self, *, timeout: float = 2.0) -> dict[str, float]:
        """The node's Prometheus metrics, named as Prometheus writes them (geth:
        ``chain_head_block``, ``p2p_peers``, ``txpool_pending``; a labelled sample as
        ``name{label="value"}``). ``UnsupportedAction`` for a client without metrics,
        ``RPCError`` when the endpoint does not answer."""
        url = self._chain.adapter.metrics_url(self._spec)
        if url is None:
            raise UnsupportedAction(
                f"{self._chain.adapter.display_name} serves no Prometheus metrics"
                " (a client spec names them with metrics:)"
            )
        return scrape(url, timeout=timeout)


class Chain:
    """A running network: its nodes, accounts, waits and faults."""

    def __init__(
        self,
        testnet: Testnet,
        provider: Provider,
        adapter: ClientAdapter,
        *,
        accounts: Sequence[LocalAccount] = (),
        on_action: Callable[[str, str], None] | None = None,
        repair: bool = True,
    ) -> None:
        self.testnet = testnet
        self.provider = provider
        self.adapter = adapter
        #: Genesis-funded accounts reserved for this process (an xdist worker's slice).
        self.accounts: list[LocalAccount] = list(accounts)
        self.nodes = [Node(self, spec) for spec in testnet.nodes]
        #: Told of every fault before it happens (node name or "*", action); a listener
        #: may return a context manager that is held while the action runs (report steps).
        self.action_listeners: list[Callable[[str, str], AbstractContextManager[Any] | None]] = []
        if on_action is not None:
            self.action_listeners.append(on_action)
        #: The run's event bus once ``attach_bus`` was called (None: waits poll RPC only).
        self.bus: SyncBus | None = None
        self._nonces: dict[str, int] = {}
        self._nonce_lock = threading.Lock()
        #: How the last partition was made (``netfilter`` or ``peers``).
        self.partition_method: str | None = None
        #: The client's repair for stalls it cannot leave on its own (geth: the Clique
        #: deadlock), ticked by every wait; None with ``repair=False`` (--chain-repair=off).
        self.repairer = adapter.repairer(self) if repair else None
        #: What the repairer did in this process, oldest first (also on the bus and in
        #: the test's report).
        self.repairs: list[str] = []
        #: Told of every repair (the session appends it to the run's repair log).
        self.repair_listeners: list[Callable[[str], None]] = []
        #: Hands out a fresh funded account (the session's); deploys default to one.
        self.account_source: Callable[[], LocalAccount] | None = None
        #: Contracts ``deploy`` made: lower-case address → the block it is in.
        self.deployed: dict[str, int] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def attach_bus(self, bus: SyncBus) -> None:
        """Make ``bus`` the chain's view of events, so the two never disagree: waits wake
        on its events and return only once every node's agent has announced on it the
        blocks the wait saw; timeouts show its last events; ``transfer`` publishes a
        ``tx`` event; every fault is published as a ``fault`` event."""
        self.bus = bus
        for kind in self.adapter.event_kinds:  # a wait_for may come before the first one
            bus.register_kind(kind)
        self.action_listeners.append(
            lambda node, action: bus.publish(
                "fault", {"action": action}, node=None if node == "*" else node
            )
        )

    def tick_repair(self) -> None:
        """Let the client's repairer look once (every wait does; so does the start)."""
        if self.repairer is None:
            return
        done = self.repairer.tick()
        if done is None:
            return
        log.info("repair: %s", done)
        self.repairs.append(done)
        with self._announce("*", done):
            pass
        if self.bus is not None:
            self.bus.publish("repair", {"client": self.client, "what": done})
        for listener in self.repair_listeners:
            listener(done)

    def _unannounced(self, seen: dict[str, tuple[int, str]]) -> list[str]:
        """Nodes whose block (number, hash) in ``seen`` the bus has not been told of yet.

        The RPC view runs ahead of the bus by the agent's publish and the broker's
        delivery (measured: 10-20 ms, right after the node sealed the block itself), so a
        wait that returned on RPC alone could hand back a block that a test then does
        not find in ``bus.events``.
        """
        if self.bus is None:
            return []
        return [
            name for name, (number, block) in seen.items()
            if not self.bus.has_block(name, block, number)
        ]  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"<Chain {self.client} nodes={len(self.nodes)} backend={self.backend} "
            f"chain_id={self.chain_id} seed={self.seed}>"
        )

    # -- description -----------------------------------------------------------------------

    @property
    def chain_id(self) -> int:
        return self.testnet.chain_id

    @property
    def client(self) -> str:
        return self.adapter.display_name

    def _require_evm(self, what: str) -> None:
        if not self.adapter.evm:
            raise UnsupportedAction(
                f"{what}: client {self.adapter.display_name} is not an Ethereum chain "
                "(no accounts, transactions or web3)"
            )

    @property
    def backend(self) -> str:
        return self.provider.name

    @property
    def seed(self) -> int:
        return self.testnet.seed

    def node(self, ref: int | str | Node) -> Node:
        """A node by index, name or itself."""
        if isinstance(ref, Node):
            return ref
        return self.nodes[self.testnet.node(ref).index]

    def _act(self, node: Node, action: str, run: Callable[[], None]) -> None:
        with self._announce(node.name, action):
            run()

    @contextmanager
    def _announce(self, node: str, action: str) -> Iterator[None]:
        with ExitStack() as stack:
            for listener in self.action_listeners:
                scope = listener(node, action)
                if scope is not None:
                    stack.enter_context(scope)
            yield

    # -- queries ---------------------------------------------------------------------------

    def running_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.running]

    def heads(self) -> dict[str, Head]:
        """Node name → head of every running node (nodes that fail to answer are left out)."""
        return {
            name: head
            for name, head in self._read_heads(self.running_nodes()).items()
            if isinstance(head, Head)
        }

    def _read_heads(self, nodes: Sequence[Node]) -> dict[str, Head | RPCError]:
        """Every node's head, asked of all at once: one after the other, 32 busy nodes
        took longer to answer than a block takes, so no look ever saw them agree."""
        return self._ask_all(nodes, _head_or_error)

    def _catching_up(self, nodes: Sequence[Node]) -> dict[str, str]:
        """The nodes still catching up by a sync of their own, with why (``RPCError``
        when one does not answer)."""
        found = self._ask_all(nodes, lambda node: self.adapter.catching_up(node._spec))
        return {name: why for name, why in found.items() if why is not None}

    def _ask_all(self, nodes: Sequence[Node], ask: Callable[[Node], T]) -> dict[str, T]:
        if len(nodes) < 2:
            return {node.name: ask(node) for node in nodes}
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=len(self.nodes), thread_name_prefix="chainharness-heads"
                )
            pool = self._pool
        return dict(zip((n.name for n in nodes), pool.map(ask, nodes), strict=True))

    def status_table(self) -> str:
        """One line per node: state, height, head hash, peers."""
        rows = [("node", "state", "height", "head", "peers")]
        for node in self.nodes:
            state = node.state
            height = head = peers = "-"
            down = {p: st for p, st in node.parts.items() if st != NodeState.RUNNING.value}
            if state == NodeState.RUNNING.value and down:
                state += " (" + ", ".join(f"{p} {st}" for p, st in down.items()) + ")"
            if node.running:
                try:
                    h = node.head()
                    height, head = str(h.number), h.hash[:18]
                    peers = str(node.peer_count()) if self.adapter.has_peers else "n/a"
                    why = self.adapter.catching_up(node._spec)
                    if why is not None:
                        state += f" (catching up: {why})"
                except RPCError as exc:
                    head = f"rpc error: {str(exc)[-40:]}"
            rows.append((node.name, state, height, head, peers))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows
        )

    # -- waits -----------------------------------------------------------------------------

    def _poll(
        self,
        what: str,
        check: Callable[[], T | None],
        timeout: float,
        *,
        seen: Callable[[], dict[str, tuple[int, str]]] | None = None,
    ) -> T:
        """Call ``check`` until it returns something, at most ``timeout`` seconds.

        ``seen`` gives the blocks (node → number, hash) that the last successful check
        looked at; the result is returned only once the bus has them all, so what a
        wait saw is in ``bus.events`` when it returns.
        """
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        lagging: list[str] = []
        quick = 0
        while True:
            try:
                result = check()
                if result is not None:
                    lagging = self._unannounced(seen()) if seen is not None else []
                    if not lagging:
                        return result
            except RPCError as exc:
                last_error = exc
            self.tick_repair()
            if time.monotonic() >= deadline:
                detail = f"\nlast error: {last_error}" if last_error else ""
                if lagging:
                    detail += (
                        "\nthe chain got there, but the bus has no block event for it from "
                        + ", ".join(lagging)
                        + " (is the node's agent running? see its log in the run's logs)"
                    )
                table = self.status_table()
                if self.bus is not None:
                    table += "\n" + self.bus.last_events_table()
                raise ChainTimeout(
                    f"timed out after {timeout:g}s waiting for {what}{detail}\n{table}"
                )
            if self.bus is not None:
                # Re-check as soon as any node reports something, and at least twice a
                # second. Right after an event, RPC may lag the node's own announcement
                # by a few milliseconds: re-check quickly a few times before sleeping long.
                pause = 0.02 if quick > 0 or lagging else 0.5
                woke = self.bus.wait_change(min(pause, max(0.0, deadline - time.monotonic())))
                quick = 5 if woke else max(0, quick - 1)
            else:
                time.sleep(POLL_INTERVAL)

    def _select(self, nodes: Sequence[int | str | Node] | None) -> list[Node]:
        return self.running_nodes() if nodes is None else [self.node(n) for n in nodes]

    def _some_running(self, what: str) -> None:
        """A wait over the running nodes with none running fails at once: it could only
        wait out its timeout and then say nothing useful."""
        if not self.running_nodes():
            states = ", ".join(f"{n.name} {n.state}" for n in self.nodes)
            raise ChainTimeout(f"cannot wait for {what}: no node is running ({states})")

    def wait_for_height(
        self, height: int, *, nodes: Sequence[int | str | Node] | None = None, timeout: float = 30.0
    ) -> None:
        """Return when every running (or given) node has reached ``height``."""
        if nodes is None:
            self._some_running(f"height {height}")

        heads: dict[str, Head] = {}

        def check() -> bool | None:
            selected = self._select(nodes)
            heads.clear()
            heads.update((n.name, n.head()) for n in selected)
            if not selected:
                return None
            return True if all(h.number >= height for h in heads.values()) else None

        self._poll(f"height {height}", check, timeout, seen=lambda: _blocks(heads))

    def wait_converged(self, *, timeout: float = 30.0) -> Head:
        """Return the head once every running node reports the same one and none is
        still catching up by a sync of its own (a beacon node's initial sync)."""
        self._some_running("the running nodes to converge")

        heads: dict[str, Head] = {}

        def check() -> Head | None:
            running = self.running_nodes()
            heads.clear()
            for name, head in self._read_heads(running).items():
                if isinstance(head, RPCError):
                    raise head
                heads[name] = head
            if not running:
                return None
            distinct = set(heads.values())
            if len(distinct) != 1 or self._catching_up(running):
                return None
            return distinct.pop()

        what = "all running nodes to converge on one head"
        return self._poll(what, check, timeout, seen=lambda: _blocks(heads))

    def wait_for_tx(
        self,
        tx_hash: bytes | str,
        *,
        nodes: Sequence[int | str | Node] | None = None,
        timeout: float = 30.0,
    ) -> dict[str, TxReceipt]:
        """Return node name → receipt once the transaction is in the same block on every
        (given) running node, and the bus has that block from each of them.

        Every receipt is read again on each look: a node that first had the transaction
        in a block of its own that a reorg then replaced (a tip race between signers,
        most often on the node it was sent to) must not hand back that stale receipt.
        """
        self._require_evm("wait_for_tx")
        hex_hash = HexBytes(tx_hash).to_0x_hex()
        if nodes is None:
            self._some_running(f"tx {hex_hash}")
        blocks: dict[str, tuple[int, str]] = {}

        def check() -> dict[str, TxReceipt] | None:
            blocks.clear()
            receipts: dict[str, TxReceipt] = {}
            for node in self._select(nodes):
                try:
                    found = node.w3.eth.get_transaction_receipt(HexStr(hex_hash))
                except TransactionNotFound:
                    # Not yet, or no longer: a reorg can take it out between two looks.
                    return None
                receipt = _canonical_receipt(node, found, hex_hash)
                if receipt is None:
                    return None
                receipts[node.name] = receipt
            for name, receipt in receipts.items():
                blocks[name] = (int(receipt["blockNumber"]), receipt["blockHash"].to_0x_hex())
            if not receipts or len({block for _, block in blocks.values()}) != 1:
                return None
            return receipts

        what = f"tx {hex_hash} in one block on every node"
        return self._poll(what, check, timeout, seen=lambda: dict(blocks))

    def wait_finalized(self, *, at_least: int | None = None, timeout: float = 120.0) -> Head:
        """Return the lowest finalized block once every running node has finalized one,
        numbered ``at_least`` or higher when given (proof of stake; ``UnsupportedAction``
        for a client without finality)."""
        what = "a finalized block" if at_least is None else f"block #{at_least} finalized"
        self._some_running(what)
        found: dict[str, Head] = {}

        def check() -> Head | None:
            found.clear()
            for node in self.running_nodes():
                head = self.adapter.finalized(node._spec)  # UnsupportedAction: at once
                if head is None or (at_least is not None and head.number < at_least):
                    return None
                found[node.name] = head
            return min(found.values(), key=lambda h: h.number) if found else None

        return self._poll(f"{what} on every running node", check, timeout)

    def _wait_rpc(self, nodes: Sequence[Node], *, timeout: float) -> None:
        def check() -> bool | None:
            for node in nodes:
                state = self.provider.state(node.index)
                if state is NodeState.EXITED:
                    raise ChainHarnessError(
                        f"{node.name} exited while starting; last lines of its log:\n"
                        f"{node.logs(50)}"
                    )
                self.adapter.check_ready(node._spec)
            return True

        self._poll("RPC to answer on " + ", ".join(n.name for n in nodes), check, timeout)

    def _catch_up_and_seal(self, node: Node, *, timeout: float = 15.0) -> None:
        """Let a (re)started signer seal once it has caught up with the running nodes.

        Bounded: a node that cannot catch up (it is partitioned off, or alone) starts
        sealing after ``timeout`` all the same, as a real operator's node would.
        """
        if node.signer:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    others = [n.head().number for n in self.running_nodes() if n is not node]
                    synced = node.head().number >= max(others, default=0)
                    if synced and (node.peer_count() > 0 or not others):
                        break
                except RPCError:
                    pass
                time.sleep(POLL_INTERVAL)
        self.provider.start_sealing([node.index])

    # -- transactions ----------------------------------------------------------------------

    def _entry_node(self) -> Node:
        # Node 0 by contract; when a test has stopped it, the first running node instead.
        if self.nodes[0].running:
            return self.nodes[0]
        running = self.running_nodes()
        if not running:
            raise ChainHarnessError("no node is running to send the transaction to")
        return running[0]

    def transfer(
        self,
        sender: LocalAccount,
        to: str,
        value_wei: int,
        *,
        node: int | str | Node | None = None,
    ) -> HexBytes:
        """Sign a value transfer locally, send it to node 0 (or ``node``), return its hash.

        Nonces are tracked per sender across calls, whichever node each one goes to.
        """
        self._require_evm("transfer")
        fields = {"to": Web3.to_checksum_address(to), "value": value_wei, "gas": 21_000}
        return self.send_signed(sender, fields, node=node)

    def send_signed(
        self,
        sender: LocalAccount,
        fields: dict[str, Any],
        *,
        node: int | str | Node | None = None,
    ) -> HexBytes:
        """Sign a type-2 transaction with ``fields`` (``to``, ``value``, ``data``, ``gas``)
        locally, with the next nonce and fees that get it into the next block, and send
        it to node 0 (or ``node``); publish a ``tx`` event; return its hash."""
        self._require_evm("send_signed")
        node = self._entry_node() if node is None else self.node(node)
        w3 = node.w3
        with self._nonce_lock:
            pending = w3.eth.get_transaction_count(sender.address, "pending")
            nonce = max(pending, self._nonces.get(sender.address, 0))
            self._nonces[sender.address] = nonce + 1
        base_fee = int(w3.eth.get_block("latest").get("baseFeePerGas", 0) or 0)
        tip = 10**9
        tx: dict[str, Any] = {
            "chainId": self.chain_id,
            "nonce": nonce,
            "value": 0,
            "maxFeePerGas": 2 * base_fee + tip,
            "maxPriorityFeePerGas": tip,
            "type": 2,
            **fields,
        }
        signed = sender.sign_transaction(tx)
        tx_hash = HexBytes(w3.eth.send_raw_transaction(signed.raw_transaction))
        if self.bus is not None:
            self.bus.publish(
                "tx",
                {"hash": tx_hash.to_0x_hex(), "from": sender.address, "to": tx.get("to"),
                 "nonce": nonce, "value": tx["value"]},
                node=node.name,
            )  # fmt: skip
        return tx_hash

    def fresh_account(self) -> LocalAccount:
        """A funded account no other test of the run has (the session's), else the first
        of this process's genesis accounts."""
        self._require_evm("fresh_account")
        if self.account_source is not None:
            return self.account_source()
        if not self.accounts:
            raise ChainHarnessError("this chain has no funded account to hand out")
        return self.accounts[0]

    # -- contracts -------------------------------------------------------------------------

    def deploy(
        self,
        artifact: str | os.PathLike[str] | Mapping[str, Any],
        *args: Any,
        sender: LocalAccount | None = None,
        node: int | str | Node | None = None,
        timeout: float = 30.0,
    ) -> Contract:
        """Deploy a Foundry or Hardhat artifact (a path) or an ``{abi, bytecode}`` dict
        with constructor ``args``; return web3's ``Contract``, bound to node 0, once its
        code is on every running node. ``sender`` defaults to a fresh funded account.

        Bytecode the chain cannot run, wrong arguments and a reverting constructor are
        errors before anything is sent (see ``contracts``)."""
        from . import contracts

        self._require_evm("deploy")
        entry = self._entry_node() if node is None else self.node(node)
        return contracts.deploy(self, artifact, args, sender=sender, node=entry, timeout=timeout)

    def compile(self, path: str | os.PathLike[str], name: str | None = None) -> dict[str, Any]:
        """Compile a Solidity file with the pinned solc for this chain's EVM version;
        ``{"abi", "bytecode", "name", "evm_version"}`` of contract ``name`` (default: the
        one named like the file, or the file's only contract)."""
        from .solc import compile_contract

        self._require_evm("compile")
        evm = self.adapter.evm_version(self._entry_node()._spec)
        return compile_contract(Path(path), name, evm_version=evm, root=self.adapter.root)

    def watch(self, contract: Contract, event: str | None = None, *, timeout: float = 30.0) -> None:
        """Have every node's agent publish ``contract``'s logs (one ``event``, or all) as
        ``log`` events from its deploy block on (or from now), after reorgs too; return
        once every running node's agent does."""
        from . import contracts

        self._require_evm("watch")
        contracts.watch(self, contract, event, timeout=timeout)

    # -- partitions ------------------------------------------------------------------------

    def _groups(self, groups: Sequence[Sequence[int | str | Node]]) -> list[list[int]]:
        if len(groups) < 2:
            raise ValueError("a partition needs at least two groups")
        resolved = [[self.node(ref).index for ref in group] for group in groups]
        seen: set[int] = set()
        for group in resolved:
            if not group:
                raise ValueError("a partition group is empty")
            for index in group:
                if index in seen:
                    raise ValueError(f"node{index} appears in more than one group")
                seen.add(index)
        missing = sorted(set(range(len(self.nodes))) - seen)
        if missing:
            raise ValueError(
                "every node must be in a group; missing: " + ", ".join(f"node{i}" for i in missing)
            )
        return resolved

    @contextmanager
    def partition(self, *groups: Sequence[int | str | Node]) -> Iterator[str]:
        """Nodes in different groups cannot reach each other until the block is left.

        Yields how the partition was made: ``"netfilter"`` on the docker backend (packets
        between groups dropped inside each container's namespace), ``"peers"`` on the
        process backend (client-level: peers removed through the admin API; nodes that
        share 127.0.0.1 cannot be told apart by a packet filter), or ``"proxies"`` there
        for clients without such an API (every peer link runs through a proxy, and the
        links between groups are closed). Heals on exit, also when the body fails.
        """
        how = self.cut(*groups)
        try:
            yield how
        finally:
            self.heal()

    def cut(self, *groups: Sequence[int | str | Node]) -> str:
        """Partition the network until ``heal()`` (``partition()`` without the block);
        returns how, as ``partition()`` does."""
        resolved = self._groups(groups)
        with self._announce("*", f"partition {resolved}"):
            how = self.provider.partition(resolved)
        self.partition_method = how
        return how

    @contextmanager
    def latency(
        self, node: int | str | Node, ms: int, *, jitter_ms: int = 0, loss: float = 0.0
    ) -> Iterator[str]:
        """Everything ``node`` sends to its peers is delayed by ``ms`` (± ``jitter_ms``),
        and ``loss`` (0..1) of its packets are dropped, until the block is left. Yields
        how: ``"toxiproxy"`` (a userspace TCP proxy on every peer link of the node, as
        this kernel has no netem), with ``"+iptables"`` for loss (docker backend: a
        random-drop rule in the node's namespace; the process backend cannot)."""
        target = self.node(node)
        how = self.add_latency(target, ms, jitter_ms=jitter_ms, loss=loss)
        try:
            yield how
        finally:
            self.clear_latency(target)

    def add_latency(
        self, node: int | str | Node, ms: int, *, jitter_ms: int = 0, loss: float = 0.0
    ) -> str:
        """Delay what ``node`` sends by ``ms`` (± ``jitter_ms``), and drop ``loss`` (0..1)
        of its packets (docker backend), until ``clear_latency``; returns how."""
        target = self.node(node)
        how = ""

        def run() -> None:
            nonlocal how
            how = self.provider.add_latency(target.index, ms, jitter_ms, loss)

        what = f"latency {ms}ms" + (f" ±{jitter_ms}ms" if jitter_ms else "")
        self._act(target, what + (f" loss {loss:.0%}" if loss else ""), run)
        self._rejoined(target)
        return how

    def clear_latency(self, node: int | str | Node | None = None) -> None:
        """Remove the latency of ``node`` (of every node by default)."""
        slow = self.provider.latencies()
        chosen = [self.node(i) for i in slow] if node is None else [self.node(node)]
        for target in chosen:
            if target.index in slow:
                clear = functools.partial(self.provider.clear_latency, target.index)
                self._act(target, "clear latency", clear)
                self._rejoined(target)

    def _rejoined(self, node: Node, timeout: float = 30.0) -> None:
        # Moving a node's links restarts it: wait for its RPC, then let it seal again.
        if node.running:
            self._wait_rpc([node], timeout=timeout)
            self._catch_up_and_seal(node)

    def rolling_upgrade(
        self,
        version: str,
        *,
        max_unavailable: int = 1,
        pause: float = 0.0,
        health: Callable[[Node], object] | None = None,
        auto_rollback: bool = True,
        timeout: float = 60.0,
    ) -> UpgradeResult:
        """Upgrade every node to ``version`` in batches of ``max_unavailable``, checking
        ``health(node)`` after each batch (default: it follows the chain again) and
        pausing ``pause`` seconds between batches. When a batch is unhealthy and
        ``auto_rollback`` is on, every node upgraded so far goes back to its previous
        version. Returns what happened per node (``UpgradeResult``)."""
        from .upgrade import rolling_upgrade

        return rolling_upgrade(
            self,
            version,
            max_unavailable=max_unavailable,
            pause=pause,
            health=health,
            auto_rollback=auto_rollback,
            timeout=timeout,
        )

    def heal(self) -> None:
        """Undo any partition."""
        with self._announce("*", "heal"):
            self.provider.heal()

    # -- readiness -------------------------------------------------------------------------

    def wait_ready(self, *, timeout: float = 60.0) -> None:
        """Every node answers RPC, has all other nodes as peers and is past genesis."""
        expected_peers = len(self.nodes) - 1 if self.adapter.has_peers else 0

        def check() -> bool | None:
            for node in self.nodes:
                if node.peer_count() < expected_peers or node.head().number < 1:
                    return None
            return True

        self._poll(f"{len(self.nodes)} nodes to be ready (peers, height >= 1)", check, timeout)


#: How far from where a stale receipt says, in blocks, the canonical chain is searched.
RECEIPT_SEARCH = 64


def _canonical_receipt(node: Node, receipt: TxReceipt, tx_hash: str) -> TxReceipt | None:
    """``receipt`` if its block is on the node's canonical chain, else the receipt from
    the canonical block that holds the transaction (None: none does yet).

    geth 1.13.11 and later can answer eth_getTransactionReceipt from a block that a
    reorg replaced, for good, when the transaction is in both branches: its lookup cache
    keeps the old entry (go-ethereum#28885, #29261). A wait then never saw one block.
    """
    number = int(receipt["blockNumber"])
    block = node._rpc("eth_getBlockByNumber", [hex(number), False])
    if block is not None and block["hash"] == receipt["blockHash"].to_0x_hex():
        return receipt
    head = node.head().number
    wanted = tx_hash.lower()
    # Nearest heights first: a reorg most often moves a transaction by a block or two.
    around = sorted(
        range(max(1, number - RECEIPT_SEARCH), min(head, number + RECEIPT_SEARCH) + 1),
        key=lambda n: abs(n - number),
    )
    for height in around:
        block = node._rpc("eth_getBlockByNumber", [hex(height), False])
        if block is None or wanted not in (str(t).lower() for t in block["transactions"]):
            continue
        for found in node.w3.eth.get_block_receipts(height):
            if found["transactionHash"].to_0x_hex().lower() == wanted:
                return found
    return None


def _head_or_error(node: Node) -> Head | RPCError:
    try:
        return node.head()
    except RPCError as exc:
        return exc


def _blocks(heads: dict[str, Head]) -> dict[str, tuple[int, str]]:
    return {name: (head.number, head.hash) for name, head in heads.items()}
