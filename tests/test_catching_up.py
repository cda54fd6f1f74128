"""A node still catching up by a sync of its own has not converged, whatever its head.

Found in CI (stop 33, geth-pos on processes): the rolling upgrade's last node had its
geth at the others' head while its beacon node was still in initial sync, which holds no
gossip subscriptions. ``wait_converged`` returned on the heads alone; the 2|2 split that
followed left that node with one peer no further ahead than itself, so its sync never
ended, and that peer could not publish a block to anyone: both stood at #94 for the
whole split. Here the nodes are scripted HTTP servers that answer what geth and prysm
answer, and the real ``GethPosAdapter`` and ``Chain`` read them.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pytest_chainharness import Chain, ChainTimeout
from pytest_chainharness._testnet import build_testnet
from pytest_chainharness.clients import geth_pos
from pytest_chainharness.clients.geth_pos import GethPosAdapter
from pytest_chainharness.providers.base import NodeState
from pytest_chainharness.upgrade import default_health

HEAD = "0x" + "ab" * 32


@dataclass
class Script:
    """What one scripted node answers."""

    height: int = 141
    syncing: bool = False
    head_slot: int = 138
    beacon_peers: int = 3


class _Node(BaseHTTPRequestHandler):
    script: Script

    def do_POST(self) -> None:  # geth's JSON-RPC
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        result: Any = {
            "eth_getBlockByNumber": {"number": hex(self.script.height), "hash": HEAD},
            "net_peerCount": "0x3",
        }[body["method"]]
        self._send({"jsonrpc": "2.0", "id": body["id"], "result": result})

    def do_GET(self) -> None:  # prysm's beacon API
        data = {
            "/eth/v1/node/syncing": {
                "head_slot": str(self.script.head_slot),
                "sync_distance": "4",
                "is_syncing": self.script.syncing,
                "is_optimistic": False,
                "el_offline": False,
            },
            "/eth/v1/node/peer_count": {"connected": str(self.script.beacon_peers)},
        }[self.path]
        self._send({"data": data})

    def _send(self, answer: dict[str, Any]) -> None:
        raw = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class AllRunning:
    """The provider side the waits read: every node and part running; the part actions
    it was asked for, in order."""

    def __init__(self) -> None:
        self.actions: list[tuple[int, str, str]] = []

    def state(self, index: int) -> NodeState:
        return NodeState.RUNNING

    serving_state = state

    def parts(self, index: int) -> dict[str, NodeState]:
        return dict.fromkeys(("geth", "beacon", "validator"), NodeState.RUNNING)

    def act_on_part(self, index: int, part: str, action: str) -> None:
        self.actions.append((index, part, action))

    def partitioned(self) -> list[list[int]] | None:
        return self.partition

    partition: list[list[int]] | None = None


@pytest.fixture
def scripts() -> list[Script]:
    return [Script() for _ in range(4)]


@pytest.fixture
def chain(scripts: list[Script]) -> Iterator[Chain]:
    adapter = GethPosAdapter()
    testnet = build_testnet(
        nodes=4, client="geth-pos", period=1, seed=7, accounts=4, adapter=adapter
    )
    servers = []
    for spec, script in zip(testnet.nodes, scripts, strict=True):
        handler = type("Handler", (_Node,), {"script": script})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        spec.host = "127.0.0.1"
        spec.ports["rpc"] = spec.ports["beacon_http"] = server.server_port
    made = Chain(testnet, AllRunning(), adapter, repair=False)  # type: ignore[arg-type]
    yield made
    for server in servers:
        server.shutdown()
        server.server_close()


def _stops_syncing(script: Script, after: float) -> threading.Timer:
    timer = threading.Timer(after, lambda: setattr(script, "syncing", False))
    timer.start()
    return timer


def test_converged_waits_for_a_beacon_node_in_initial_sync(
    chain: Chain, scripts: list[Script]
) -> None:
    scripts[3].syncing = True
    timer = _stops_syncing(scripts[3], 1.5)
    t0 = time.monotonic()
    head = chain.wait_converged(timeout=20)
    elapsed = time.monotonic() - t0
    timer.join()
    assert (head.number, head.hash) == (141, HEAD)
    assert elapsed >= 1.4, f"returned after {elapsed:.2f}s, while node3 was still syncing"


def test_a_node_that_never_ends_its_sync_is_named_when_the_wait_times_out(
    chain: Chain, scripts: list[Script]
) -> None:
    scripts[3].syncing = True
    with pytest.raises(ChainTimeout) as caught:
        chain.wait_converged(timeout=1)
    lines = [line for line in str(caught.value).splitlines() if "catching up" in line]
    assert [line.split()[0] for line in lines] == ["node3"], str(caught.value)
    assert "its beacon node is syncing (head slot 138, 4 slots behind)" in lines[0]


def test_the_upgrade_health_check_waits_for_the_sync_and_says_why_it_gave_up(
    chain: Chain, scripts: list[Script]
) -> None:
    # Past the others' head already: only the sync holds the check.
    scripts[2].height = 142
    scripts[2].syncing = True
    with pytest.raises(AssertionError, match="node2 is still catching up after 1s: its beacon"):
        default_health(timeout=1)(chain.nodes[2])
    timer = _stops_syncing(scripts[2], 1.0)
    t0 = time.monotonic()
    assert default_health(timeout=20)(chain.nodes[2]) is True
    timer.join()
    assert time.monotonic() - t0 >= 0.9


def test_a_synced_network_converges_at_once(chain: Chain) -> None:
    t0 = time.monotonic()
    assert chain.wait_converged(timeout=20).number == 141
    assert time.monotonic() - t0 < 1.0


def test_a_beacon_node_whose_initial_sync_stands_with_peers_is_started_again(
    chain: Chain, scripts: list[Script], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen on docker: a restarted beacon node stood at slot 110, syncing, with three
    peers, for 110 s; started again it chose its peers afresh and synced."""
    monkeypatch.setattr(geth_pos, "STUCK_SYNC_AFTER", 1.0)
    provider: AllRunning = chain.provider  # type: ignore[assignment]
    scripts[1].syncing = True  # standing, with peers: the one to restart
    scripts[2].syncing = True  # alone (a partition): a restart would not help
    scripts[2].beacon_peers = 0
    scripts[3].syncing = True  # moving: a sound sync
    repair = geth_pos.StuckSync(chain, chain.adapter)  # type: ignore[arg-type]
    done: list[str] = []
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline:
        scripts[3].head_slot += 1
        what = repair.tick()
        if what is not None:
            done.append(what)
            # Looks for the next 2 s go on: standing again, it is not started again so
            # soon (3 x STUCK_SYNC_AFTER).
            deadline = min(deadline, time.monotonic() + 2.0)
        time.sleep(0.3)
    assert provider.actions == [(1, "beacon", "stop"), (1, "beacon", "start")]
    assert len(done) == 1
    assert done[0].startswith("node1: its beacon node's initial sync stood at slot 138 for ")
    assert re.findall(r"node\d", done[0]) == ["node1"]


def test_a_synced_network_is_left_alone(chain: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(geth_pos, "STUCK_SYNC_AFTER", 0.0)
    repair = geth_pos.StuckSync(chain, chain.adapter)  # type: ignore[arg-type]
    assert repair.tick() is None
    assert chain.provider.actions == []  # type: ignore[attr-defined]


def test_a_node_in_sync_on_a_branch_of_its_own_far_behind_is_started_again(
    chain: Chain, scripts: list[Script], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen in CI: a restarted beacon node ended its sync and then took only its own
    proposals; its geth stood at #77 with three beacon peers while the others passed #93."""
    monkeypatch.setattr(geth_pos, "STUCK_SYNC_AFTER", 1.0)
    provider: AllRunning = chain.provider  # type: ignore[assignment]
    scripts[3].height = 141 - geth_pos.OWN_BRANCH_LAG  # far behind, in sync, with peers
    scripts[2].height = 140  # a block behind: slow, not stuck
    repair = geth_pos.StuckSync(chain, chain.adapter)  # type: ignore[arg-type]
    # While a partition is in force a node behind is expected: nothing is done.
    provider.partition = [[0, 1, 2], [3]]
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert repair.tick() is None
        time.sleep(0.3)
    provider.partition = None
    done: list[str] = []
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline and not done:
        what = repair.tick()
        if what is not None:
            done.append(what)
        time.sleep(0.3)
    assert provider.actions == [(3, "beacon", "stop"), (3, "beacon", "start")]
    assert done == [done[0]]
    assert done[0].startswith("node3: its head stood 8 blocks behind the highest (#133 against")
    assert re.findall(r"node\d", done[0]) == ["node3"]
