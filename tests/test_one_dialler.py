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
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest

from pytest_chainharness._ports import PortAllocator
from pytest_chainharness._testnet import Testnet, build_testnet
from pytest_chainharness.clients.base import Placement
from pytest_chainharness.clients.geth import GethAdapter, node_id, write_config
from pytest_chainharness.clients.geth_pos import GethPosAdapter, _dialled
from pytest_chainharness.providers._peering import AdminPeering


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
    """Two recording admin endpoints, and the calls they received."""
    calls: list[tuple[int, str, list[Any]]] = []
    handler = type("Handler", (_Admin,), {"calls": calls})
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), handler) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield [f"http://127.0.0.1:{s.server_address[1]}" for s in servers], calls
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_every_pair_has_exactly_one_dialler(testnet: Testnet, tmp_path: Path) -> None:
    dials: dict[str, set[str]] = {}
    for node in testnet.nodes:
        datadir = tmp_path / node.name
        datadir.mkdir()
        # write_files' peer list (the rest of write_files needs the binaries)
        write_config(
            datadir, "127.0.0.1:1", _dialled(testnet, node, _place(testnet, node.index, datadir))
        )
        dials[node_id(node)] = _static_ids(datadir)
    for a, b in combinations(testnet.nodes, 2):
        one, other = node_id(a), node_id(b)
        assert (other in dials[one]) != (one in dials[other]), (a.name, b.name)


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
    assert {port for port, _, _ in calls} == {int(u.rsplit(":", 1)[1]) for u in urls}


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
