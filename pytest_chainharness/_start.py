"""The start stage: lay out, launch and wait for a network; never leave half of one behind."""

from __future__ import annotations

import time

from ._errors import ChainTimeout, NetworkStartError
from ._rpc import RPCError
from .chain import POLL_INTERVAL, Chain
from .providers.base import NodeState

__all__ = ["launch"]

#: How often one node may be given fresh ports after another program took one.
PORT_RETRIES = 3
#: A node still short of peers this long after its start (and again after each nudge) is
#: told its peers again (an admin-peering client; see ``ClientAdapter.add_peer``; other
#: clients' repairer may redial, see ``clients/_redial.py``).
NUDGE_AFTER = 2.0
#: Least time the nodes get to agree on one head once each is past genesis: enough to
#: see a stalled fork (6 s) and break it.
CONVERGE_TIMEOUT = 20.0


def launch(chain: Chain, *, timeout: float = 60.0, phases: dict[str, float] | None = None) -> None:
    """Set up and start every node of ``chain``, then wait until the network is ready.

    Ready means: every node answers RPC, is connected to every other node, has a block
    above genesis, and all agree on the head. On any failure every node is torn down
    before ``NetworkStartError`` is raised, with the failing node's last 50 log lines.
    ``phases``, when given, receives the seconds spent in each stage (setup, spawn,
    peers, first_block).
    """
    provider = chain.provider
    spent = phases if phases is not None else {}
    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        spent[name] = now - mark
        mark = now

    try:
        provider.setup(timeout=timeout)
        lap("setup")
        provider.start_nodes()
        lap("spawn")
        deadline = time.monotonic() + timeout
        _await(chain, deadline, phase="peers")
        lap("peers")
        provider.start_sealing()
        _await(chain, deadline, phase="blocks")
        # Past genesis everywhere is not yet one chain: two signers can seal competing
        # first blocks, and with two signers that fork can stand (each too recent on its
        # own branch). The converged wait breaks such a stall (see Chain), so a session
        # never starts on a forked network.
        try:
            chain.wait_converged(timeout=max(CONVERGE_TIMEOUT, deadline - time.monotonic()))
        except ChainTimeout as exc:
            raise NetworkStartError(f"the nodes did not agree on one chain: {exc}") from exc
        lap("first_block")
    except BaseException:
        provider.teardown()
        raise


def _await(chain: Chain, deadline: float, *, phase: str) -> None:
    """Wait for every node to have all peers (``peers``) or a block above genesis (``blocks``).

    Every node is checked on every round, ready or not: a node that exited on a port
    conflict, or hangs without answering, must be restarted even while another node is
    still waiting for it as a peer.
    """
    provider = chain.provider
    expected_peers = len(chain.nodes) - 1 if chain.adapter.has_peers else 0
    stalled_after = chain.adapter.stalled_peering_restart_after
    retries = dict.fromkeys(range(len(chain.nodes)), 0)
    started = dict.fromkeys(range(len(chain.nodes)), time.monotonic())
    answered: set[int] = set()
    #: The last error each node's probe gave: a head path the answer lacks says so here.
    errors: dict[int, str] = {}
    nudged = dict(started)
    #: Each node's last peer count, and when it last changed.
    counts: dict[int, int] = {}
    moved = dict(started)
    # When every node last answered RPC: only then is a missing peer a stalled dial.
    everyone_up_at: float | None = None
    #: Nodes asked to dial their peers (a client that ``dials_when_told``).
    told: set[int] = set()

    def restart_on_fresh_ports(index: int, *, kill: bool) -> None:
        retries[index] += 1
        if kill:
            provider.kill(index)
        provider.reassign_ports(index)
        provider.start(index)
        started[index] = nudged[index] = time.monotonic()
        answered.discard(index)
        told.discard(index)

    def restart_stalled(index: int) -> None:
        retries[index] += 1
        provider.kill(index)
        provider.start(index)
        started[index] = nudged[index] = moved[index] = time.monotonic()
        answered.discard(index)
        told.discard(index)

    while True:
        all_ready = True
        for node in chain.nodes:
            state = provider.state(node.index)
            if state is NodeState.EXITED:
                log = provider.logs(node.index, 200)
                if chain.adapter.port_conflict(log) and retries[node.index] < PORT_RETRIES:
                    # Another program bound one of the ports between our choice and the
                    # node's bind: take fresh ports instead of failing the run.
                    restart_on_fresh_ports(node.index, kill=False)
                    all_ready = False
                    continue
                raise NetworkStartError(
                    f"{node.name} exited while the network was starting; "
                    f"last 50 lines of its log:\n{provider.logs(node.index, 50)}"
                )
            hung_after = chain.adapter.hung_restart_after
            if (
                hung_after is not None
                and node.index not in answered
                and time.monotonic() - started[node.index] > hung_after
                and retries[node.index] < PORT_RETRIES
            ):
                restart_on_fresh_ports(node.index, kill=True)
                all_ready = False
                continue
            try:
                if phase == "peers":
                    chain.adapter.check_ready(node._spec)  # a spec's ready probe first
                    count = node.peer_count()
                    ready = count >= expected_peers
                    answered.add(node.index)
                    now = time.monotonic()
                    if counts.get(node.index) != count:
                        counts[node.index], moved[node.index] = count, now
                    if ready:
                        pass
                    elif (
                        stalled_after is not None
                        and everyone_up_at is not None
                        and now - everyone_up_at > stalled_after
                        # Still gaining peers: its dials are landing, a restart would only
                        # drop them (32 CometBFT nodes take a minute to peer).
                        and now - moved[node.index] > stalled_after
                        and retries[node.index] < PORT_RETRIES
                    ):
                        restart_stalled(node.index)
                        everyone_up_at = None
                    elif chain.adapter.admin_peering and now - nudged[node.index] > NUDGE_AFTER:
                        nudged[node.index] = now
                        provider.add_peers(node.index)
                else:
                    ready = node.head().number >= 1
                    answered.add(node.index)
                errors.pop(node.index, None)
            except RPCError as exc:
                errors[node.index] = str(exc)
                ready = False
            all_ready = all_ready and ready
        if phase == "peers" and not all_ready:
            # A client's repair for peering it cannot finish alone (a spec's redial);
            # the later waits tick it too.
            chain.tick_repair()
        if len(answered) < len(chain.nodes):
            everyone_up_at = None
        elif everyone_up_at is None:
            everyone_up_at = time.monotonic()
        if phase == "peers" and chain.adapter.dials_when_told and everyone_up_at is not None:
            for index in sorted(set(range(len(chain.nodes))) - told):
                told.add(index)
                provider.add_peers(index)
        if all_ready:
            return
        if time.monotonic() >= deadline:
            slow = [n for n in chain.nodes if provider.state(n.index) is NodeState.RUNNING]
            tails = "\n".join(f"--- {n.name} (last 20 lines)\n{n.logs(20)}" for n in slow[:4])
            if errors:
                tails += "\nlast errors:\n" + "\n".join(
                    f"  {chain.nodes[i].name}: {text[:400]}" for i, text in sorted(errors.items())
                )
            raise NetworkStartError(
                f"the network was not ready in time, waiting for {phase} "
                f"(every node needs RPC, {expected_peers} peers and a block above genesis)\n"
                f"{chain.status_table()}\n{tails}"
            )
        time.sleep(POLL_INTERVAL)
