"""The proof-of-stake node supervisor (``clients/pos_node``) on its own: which arguments a
part gets at its first start and after it, and the peers a restarted beacon node is
given through its API. Its parts here are small Python programs; the real ones run in
tests/test_geth_pos.py."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

#: A part that writes the arguments it was started with, then ends (and so the node).
RECORD_ARGV = (
    "import json, sys, time; open(sys.argv[1], 'w').write(json.dumps(sys.argv[2:])); time.sleep(3)"
)


class BeaconAPI:
    """Answers ``POST /prysm/node/trusted_peers`` like prysm, after refusing the first
    ``refuse`` requests (a beacon node that does not serve yet)."""

    def __init__(self, refuse: int) -> None:
        self.refuse = refuse
        self.trusted: list[str] = []
        self.refused = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path != "/prysm/node/trusted_peers":
                    self.send_response(404)
                elif api.refused < api.refuse:
                    api.refused += 1
                    self.send_response(503)
                else:
                    api.trusted.append(json.loads(body)["addr"])
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def beacon_api() -> Iterator[BeaconAPI]:
    api = BeaconAPI(refuse=3)
    thread = threading.Thread(target=api.server.serve_forever, daemon=True)
    thread.start()
    yield api
    api.server.shutdown()
    api.server.server_close()


PEERS = [
    "/ip4/127.0.1.1/tcp/4001/p2p/16Uiu2HAmA",
    "/ip4/127.0.1.2/tcp/4002/p2p/16Uiu2HAmB",
]


def _run_node(tmp_path: Path, api: BeaconAPI) -> tuple[list[str], str]:
    """Start a one-part node whose ``again`` is keyed on ``tmp_path/db``; return the part's
    arguments and the node's output."""
    argv_file = tmp_path / "argv.json"
    plan = {
        "parts": [
            {
                "name": "beacon",
                "argv": [sys.executable, "-c", RECORD_ARGV, str(argv_file), "--always"],
                "first": ["--min-sync-peers", "0", *[x for p in PEERS for x in ("--peer", p)]],
                "again": {
                    "exists": str(tmp_path / "db"),
                    "args": ["--min-sync-peers", "1"],
                    "trust": {"api": api.url, "peers": PEERS},
                },
            }
        ]
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest_chainharness.clients.pos_node", json.dumps(plan)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    argv: list[str] = json.loads(argv_file.read_text())
    return argv, done.stdout.decode()


def test_the_first_start_dials_its_peers_itself(tmp_path: Path, beacon_api: BeaconAPI) -> None:
    argv, out = _run_node(tmp_path, beacon_api)
    assert argv == ["--always", "--min-sync-peers", "0", "--peer", PEERS[0], "--peer", PEERS[1]]
    assert beacon_api.trusted == []
    assert "trusted" not in out


def test_a_restarted_beacon_node_gets_its_peers_through_its_api(
    tmp_path: Path, beacon_api: BeaconAPI
) -> None:
    (tmp_path / "db").mkdir()
    argv, out = _run_node(tmp_path, beacon_api)
    # No --peer: prysm dials those before it can send its status (pos_node._trust_peers).
    assert argv == ["--always", "--min-sync-peers", "1"]
    # Refused while it did not serve, then each peer once.
    assert beacon_api.refused == 3
    assert beacon_api.trusted == PEERS
    assert f"chainharness | beacon trusted its peers ({beacon_api.url})" in out
