"""One dialler per pair of geth nodes, without a network.

geth keeps no tie-break between two connections of one pair: when both nodes dial each
other at once it can drop both, and both redial 35 s after that same moment, in step
again (docs/pos.md). So geth-pos's static lists name each pair once and a node that
starts again takes its pairs over (``before_restart``), and a client-level heal asks
only one node of each pair to dial. The real networks that showed it: the 2|2 splits of
tests/test_geth_pos.py and tests/test_chain.py.
"""

from __future__ import annotations

import json
import shutil
import socketserver
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest

from pytest_chainharness import ChainHarnessError
from pytest_chainharness._ports import PortAllocator
from pytest_chainharness._testnet import Testnet, build_testnet
from pytest_chainharness.clients.base import Placement
from pytest_chainharness.clients.geth import GethAdapter, node_id
from pytest_chainharness.clients.geth_pos import GethPosAdapter
from pytest_chainharness.providers._peering import AdminPeering
from pytest_chainharness.providers._state import RunState
from pytest_chainharness.providers.base import NodeState


@pytest.fixture
def testnet() -> Testnet:
    adapter = GethPosAdapter()
    return build_testnet(nodes=4, client="geth-pos", period=1, seed=7, accounts=4, adapter=adapter)


def _place(testnet: Testnet, index: int, datadir: Path) -> Placement:
    node = testnet.nodes[index]
    return Placement.local(testnet, node, datadir, Path("geth"))


def _static_ids(datadir: Path) -> set[str]:
    for line in (datadir / "config.toml").read_text().splitlines():
        if line.startswith("StaticNodes = "):
            urls = json.loads(line.removeprefix("StaticNodes = "))
            return {url.removeprefix("enode://").split("@")[0] for url in urls}
    raise AssertionError("config.toml has no StaticNodes")


class _Admin(BaseHTTPRequestHandler):
    calls: list[tuple[int, str, list[Any]]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert isinstance(self.server, ThreadingHTTPServer)
        port = self.server.server_port
        self.calls.append((port, body["method"], body["params"]))
        reply = json.dumps({"jsonrpc": "2.0", "id": body["id"], "result": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def admins() -> Iterator[tuple[list[str], list[tuple[int, str, list[Any]]]]]:
    """Four recording admin endpoints, and the calls they received."""
    calls: list[tuple[int, str, list[Any]]] = []
    handler = type("Handler", (_Admin,), {"calls": calls})
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), handler) for _ in range(4)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield [f"http://127.0.0.1:{s.server_address[1]}" for s in servers], calls
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


class _Ipc(socketserver.BaseRequestHandler):
    """A node's admin IPC endpoint, recording (node, method, params)."""

    calls: list[tuple[int, str, list[Any]]]
    index: int

    def handle(self) -> None:
        body = json.loads(self.request.makefile().readline())
        self.calls.append((self.index, body["method"], body["params"]))
        answer = {"jsonrpc": "2.0", "id": body["id"], "result": True}
        self.request.sendall(json.dumps(answer).encode() + b"\n")


class _TrustedPeers(BaseHTTPRequestHandler):
    """A beacon node's API, recording (node, path, body) of every POST."""

    posts: list[tuple[int, str, dict[str, Any]]]
    index: int

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.posts.append((self.index, self.path, body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


def test_the_first_start_dials_nobody_until_told_then_one_dialler_per_pair(
    testnet: Testnet, tmp_path: Path
) -> None:
    """All four gethes start in the same second: a dial that reached a peer's link
    before that peer listened was not made again for 35 s, the longest wait of a start.
    So no static peer at the first start, and ``redial`` (the start's, once every node
    answers) asks the one dialler of each pair, and has every beacon node trust the
    other three."""
    calls: list[tuple[int, str, list[Any]]] = []
    posts: list[tuple[int, str, dict[str, Any]]] = []
    servers: list[socketserver.BaseServer] = []
    short = Path(tempfile.mkdtemp(prefix="ch-ipc-", dir="/tmp"))  # socket paths <= 108
    adapter = GethPosAdapter()
    try:
        places = []
        for node in testnet.nodes:
            ipc = type("Ipc", (_Ipc,), {"calls": calls, "index": node.index})
            unix = socketserver.ThreadingUnixStreamServer(str(short / f"{node.name}.ipc"), ipc)
            api = type("Api", (_TrustedPeers,), {"posts": posts, "index": node.index})
            http = ThreadingHTTPServer(("127.0.0.1", 0), api)
            for each in (unix, http):
                threading.Thread(target=each.serve_forever, daemon=True).start()
                servers.append(each)
            node.ports["beacon_http"] = http.server_port
            datadir = tmp_path / node.name
            datadir.mkdir()
            (datadir / "genesis.ssz").write_bytes(b"")  # the network's, made already
            place = Placement.local(
                testnet, node, datadir, Path("geth"), ipc_path=str(short / f"{node.name}.ipc")
            )
            adapter.write_files(testnet, node, datadir, place)
            assert _static_ids(datadir) == set(), node.name
            places.append(place)
        assert calls == []
        assert posts == []
        for node, place in zip(testnet.nodes, places, strict=True):
            adapter.redial(testnet, node, place)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        shutil.rmtree(short)
    assert {method for _, method, _ in calls} == {"admin_addPeer"}
    dials = {(i, params[0].split("@")[0].removeprefix("enode://")) for i, _, params in calls}
    assert len(dials) == len(calls)  # each asked once
    ids = [node_id(n) for n in testnet.nodes]
    for a, b in combinations(range(4), 2):
        assert ((a, ids[b]) in dials) != ((b, ids[a]) in dials), (a, b)
    for node in testnet.nodes:
        trusted = {
            body["addr"].rsplit("/", 1)[1]
            for i, path, body in posts
            if i == node.index and path == "/prysm/node/trusted_peers"
        }
        others = {n.identity["beacon_peer_id"] for n in testnet.nodes if n is not node}
        assert trusted == others, node.name


def test_a_restarted_node_dials_every_peer_and_its_peers_stop_dialling_it(
    testnet: Testnet,
    tmp_path: Path,
    admins: tuple[list[str], list[tuple[int, str, list[Any]]]],
) -> None:
    urls, calls = admins
    node = testnet.nodes[3]  # the last one: at the first start it dials nobody
    place = _place(testnet, 3, tmp_path)
    down = f"http://127.0.0.1:{PortAllocator('127.0.0.1').take(1)[0]}"  # a peer that stopped
    GethPosAdapter().before_restart(
        testnet, node, tmp_path, place, {0: urls[0], 1: urls[1], 2: down}
    )
    assert _static_ids(tmp_path) == {node_id(n) for n in testnet.nodes[:3]}
    assert sorted((method, params[0].split("@")[0]) for _, method, params in calls) == [
        ("admin_removePeer", f"enode://{node_id(node)}"),
        ("admin_removePeer", f"enode://{node_id(node)}"),
    ]
    assert {port for port, _, _ in calls} == {int(u.rsplit(":", 1)[1]) for u in urls[:2]}


class Restarts(AdminPeering):
    """AdminPeering's restart and resume bookkeeping over node states a test sets."""

    def __init__(self, testnet: Testnet, tmp_path: Path, urls: list[str]) -> None:
        self.testnet = testnet
        self.adapter = GethPosAdapter()
        self.shared = RunState(tmp_path / "state.json", testnet)
        self.states = dict.fromkeys(range(len(testnet.nodes)), NodeState.RUNNING)
        self.urls = urls
        self.root = tmp_path

    def state(self, index: int) -> NodeState:
        return self.states[index]

    def serving_state(self, index: int) -> NodeState:
        return self.states[index]  # geth's, as its peers see it (a paused geth alone too)

    def admin_url(self, index: int) -> str:
        return self.urls[index]

    def datadir(self, index: int) -> Path:
        path = self.root / f"node{index}"
        path.mkdir(exist_ok=True)
        return path

    def _place(self, index: int) -> Placement:
        return _place(self.testnet, index, self.datadir(index))


def test_a_peer_paused_while_a_node_starts_again_is_told_when_it_resumes(
    testnet: Testnet,
    tmp_path: Path,
    admins: tuple[list[str], list[tuple[int, str, list[Any]]]],
) -> None:
    """The sequence of test_chain's disruptive restore on geth-pos: node2 stopped and
    node3 paused, node2 started first. node3 never heard that node2 took their pair
    over, both dialled it, and after the next partition the pair stayed apart for more
    than the minute the heal test waits."""
    urls, calls = admins
    port = [int(u.rsplit(":", 1)[1]) for u in urls]
    node2 = f"enode://{node_id(testnet.nodes[2])}@"
    provider = Restarts(testnet, tmp_path, urls)
    provider.states[2] = NodeState.STOPPED
    provider.states[3] = NodeState.PAUSED
    provider._before_restart(2)
    # Sorted on both sides: the endpoints' ports are the kernel's, in no order (CI of
    # c5111e8 had node0's above node1's).
    assert sorted(
        (p, method, params[0].split("@")[0] + "@") for p, method, params in calls
    ) == sorted([(port[0], "admin_removePeer", node2), (port[1], "admin_removePeer", node2)])
    calls.clear()
    provider.states[2] = provider.states[3] = NodeState.RUNNING
    provider._after_resume(3)
    assert [(p, method, params[0].split("@")[0] + "@") for p, method, params in calls] == [
        (port[3], "admin_removePeer", node2)
    ]
    calls.clear()
    provider._after_resume(3)  # told once
    assert calls == []


def test_a_paused_peer_is_not_told_of_a_node_that_stopped_again(
    testnet: Testnet,
    tmp_path: Path,
    admins: tuple[list[str], list[tuple[int, str, list[Any]]]],
) -> None:
    """Stopped again, node2 tells every running peer itself at its next start."""
    urls, calls = admins
    provider = Restarts(testnet, tmp_path, urls)
    provider.states[2] = NodeState.STOPPED
    provider.states[3] = NodeState.PAUSED
    provider._before_restart(2)
    calls.clear()
    provider.states[3] = NodeState.RUNNING  # node2 stays stopped
    provider._after_resume(3)
    assert calls == []


class HealOnly(AdminPeering):
    """AdminPeering's heal over recorded admin calls."""

    def __init__(self, testnet: Testnet) -> None:
        self.testnet = testnet
        self.adapter = GethAdapter()  # Clique: partitions through admin_removePeer
        self.calls: list[tuple[int, bool, str]] = []

    def _save_partition(self, groups: list[list[int]] | None) -> None:
        return None

    def enode(self, index: int) -> str:
        return f"node{index}"

    def _peer(self, index: int, add: bool, address: str) -> None:
        self.calls.append((index, add, address))


def test_a_heal_asks_one_node_of_each_pair_to_dial(testnet: Testnet) -> None:
    provider = HealOnly(testnet)
    provider.heal()
    assert sorted(provider.calls) == [(a, True, f"node{b}") for a, b in combinations(range(4), 2)]


#: Node → the nodes it is linked to (None: its admin channel did not answer).
Links = dict[int, set[int] | None]


class PartitionOnly(HealOnly):
    """AdminPeering's client-level partition over scripted peer lists: each look at the
    links takes the next of ``looks`` (the last one repeats)."""

    def __init__(self, testnet: Testnet, looks: list[Links]) -> None:
        super().__init__(testnet)
        self.looks = looks

    def peer_links(self) -> dict[int, set[int] | None]:
        return self.looks.pop(0) if len(self.looks) > 1 else self.looks[0]


CUT: Links = {0: {1, 2}, 1: {0, 2}, 2: {0, 1}, 3: set()}


def test_a_partition_holds_only_once_every_node_says_so_for_a_while(testnet: Testnet) -> None:
    """Under -n 2 beside a soak, node3 kept 2 peers through a [[0, 1, 2], [3]] partition:
    its admin call timed out on the one look taken, which counted as no link, and a dial
    in flight could land after that look."""
    landed: Links = {**CUT, 2: {0, 1, 3}, 3: {2}}
    provider = PartitionOnly(testnet, [{**CUT, 3: None}, landed, CUT])
    started = time.monotonic()
    assert provider.partition([[0, 1, 2], [3]]) == "peers"
    assert time.monotonic() - started >= 1.0  # clean for a while, not at one look
    assert (2, False, "node3") in provider.calls
    assert (3, False, "node2") in provider.calls


def test_a_partition_that_does_not_take_is_an_error_and_is_healed(
    testnet: Testnet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pytest_chainharness.providers._peering._PARTITION_TAKES", 1.5)
    stuck: Links = {**CUT, 2: {0, 1, 3}, 3: {2}}
    provider = PartitionOnly(testnet, [stuck])
    with pytest.raises(ChainHarnessError, match=r"did not take within 1\.5s: node2-node3, node3-"):
        provider.partition([[0, 1, 2], [3]])
    # Healed again: each pair asked to dial, the lower-numbered node of it.
    assert [c for c in provider.calls if c[1]] == [
        (a, True, f"node{b}") for a, b in combinations(range(4), 2)
    ]
