"""The proof-of-stake node supervisor (``clients/pos_node``) on its own: which arguments a
part gets at its first start and after it, and the peers a restarted beacon node is
given through its API. Its parts here are small Python programs; the real ones run in
tests/test_geth_pos.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pytest_chainharness import ChainHarnessError
from pytest_chainharness._testnet import build_testnet
from pytest_chainharness.clients.geth_pos import GethPosAdapter
from pytest_chainharness.clients.pos_node import ask
from pytest_chainharness.providers._parts import NodeParts
from pytest_chainharness.providers.base import NodeState

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


#: A part that records each start's arguments (one JSON line each) and runs until stopped.
RECORD_AND_RUN = (
    "import json, sys, time\n"
    "with open(sys.argv[1], 'a') as f: f.write(json.dumps(sys.argv[2:]) + '\\n')\n"
    "time.sleep(600)"
)


class TestOnePart:
    """Faults on one part through the control socket: the others run on, and so does the
    node, until the part is started again."""

    @pytest.fixture
    def node(self, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
        control = str(tmp_path / "node0.parts")
        starts = tmp_path / "starts"
        parts = [
            {
                "name": name,
                "argv": [sys.executable, "-c", RECORD_AND_RUN, str(starts / name), name],
                "first": ["--first"],
                "again": {"exists": str(tmp_path / "db"), "args": ["--again"]},
            }
            for name in ("geth", "beacon")
        ]
        starts.mkdir()
        with (tmp_path / "node.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pytest_chainharness.clients.pos_node",
                 json.dumps({"parts": parts, "control": control})],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            # Up once each part has recorded its start (so a kill finds it past that).
            if all((starts / name).exists() for name in ("geth", "beacon")):
                break
            time.sleep(0.05)
        assert ask(control, "state") == {"geth": "running", "beacon": "running"}
        (tmp_path / "db").mkdir()  # from now on a start is a start again
        yield proc, control, starts
        proc.terminate()
        proc.wait(timeout=20)

    def test_a_killed_part_stays_down_while_the_rest_runs_then_starts_again(
        self, node: tuple[subprocess.Popen[bytes], str, Path]
    ) -> None:
        proc, control, starts = node
        assert ask(control, "kill", "geth") == {"geth": "stopped", "beacon": "running"}
        time.sleep(1.0)  # the supervisor looks every 0.2 s for a part that ended
        assert proc.poll() is None, "a part killed on request ended the node"
        assert ask(control, "state") == {"geth": "stopped", "beacon": "running"}
        assert ask(control, "start", "geth") == {"geth": "running", "beacon": "running"}
        deadline = time.monotonic() + 10
        while (starts / "geth").read_text().count("\n") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = (starts / "geth").read_text().splitlines()
        assert [json.loads(line) for line in lines] == [["geth", "--first"], ["geth", "--again"]]
        assert (starts / "beacon").read_text().count("\n") == 1  # never restarted

    def test_a_stopped_part_then_one_that_ends_by_itself_ends_the_node(
        self, node: tuple[subprocess.Popen[bytes], str, Path]
    ) -> None:
        proc, control, starts = node
        ask(control, "stop", "beacon")
        pid = _child_pid(proc.pid, "geth")
        os.kill(pid, signal.SIGKILL)  # not asked: a crash
        assert proc.wait(timeout=10) != 0
        out = (starts.parent / "node.log").read_text()
        assert "chainharness | beacon stopped on request" in out
        assert "chainharness | geth exited with status -9: stopping" in out

    def test_a_paused_part_is_frozen_alone_and_a_node_stop_still_ends_it(
        self, node: tuple[subprocess.Popen[bytes], str, Path]
    ) -> None:
        proc, control, _ = node
        assert ask(control, "pause", "beacon") == {"geth": "running", "beacon": "paused"}
        beacon, geth = _child_pid(proc.pid, "beacon"), _child_pid(proc.pid, "geth")
        assert _letter(beacon) == "T"
        assert _letter(geth) in ("S", "R")
        assert ask(control, "resume", "beacon") == {"geth": "running", "beacon": "running"}
        assert _letter(beacon) in ("S", "R")
        ask(control, "pause", "beacon")
        started = time.monotonic()
        proc.terminate()  # the frozen part must still see its SIGTERM
        proc.wait(timeout=20)
        assert time.monotonic() - started < 5, "the paused part sat out the stop's grace"

    @pytest.mark.parametrize(
        ("op", "part", "why"),
        [
            ("kill", "validator", "no part 'validator'; the parts are geth, beacon"),
            ("start", "geth", "geth is running, not stopped"),
            ("resume", "geth", "geth is running, not paused"),
            ("explode", "geth", "unknown action 'explode'"),
        ],
    )
    def test_what_it_refuses_it_says_and_nothing_changes(
        self, node: tuple[subprocess.Popen[bytes], str, Path], op: str, part: str, why: str
    ) -> None:
        proc, control, _ = node
        with pytest.raises(ValueError, match=re.escape(why)):
            ask(control, op, part)
        assert ask(control, "state") == {"geth": "running", "beacon": "running"}
        assert proc.poll() is None


def _child_pid(parent: int, name: str) -> int:
    """The pid of the supervisor's part whose first argument after the record file is
    ``name``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and name.encode() in argv[4:5]:
            return int(entry.name)
    raise AssertionError(f"no part {name} under {parent}")


def _letter(pid: int) -> str:
    deadline = time.monotonic() + 2
    letter = ""
    while time.monotonic() < deadline:
        letter = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if letter in ("T", "t"):
            return "T"
        time.sleep(0.01)
    return letter


class OneNode(NodeParts):
    """The provider's side of part faults (``providers/_parts.py``) over a real
    supervisor whose parts are sleeping programs named as geth-pos names them."""

    def __init__(self, admin: Path, node_state: NodeState = NodeState.RUNNING) -> None:
        self.adapter = GethPosAdapter()
        self.testnet = build_testnet(nodes=1, client="geth-pos", period=2, seed=1)
        self.admin = admin
        self.node_state = node_state
        self.calls: list[str] = []

    def state(self, index: int) -> NodeState:
        return self.node_state

    def admin_url(self, index: int) -> str:
        return f"ipc://{self.admin / 'node0.ipc'}"

    def _before_restart(self, index: int) -> None:
        self.calls.append("before_restart")

    def _after_resume(self, index: int) -> None:
        self.calls.append("after_resume")


@pytest.fixture
def one_node(tmp_path: Path) -> Iterator[OneNode]:
    provider = OneNode(tmp_path)
    parts = [
        {"name": name, "argv": [sys.executable, "-c", "import time; time.sleep(600)"]}
        for name in provider.adapter.parts
    ]
    plan = {"parts": parts, "control": str(tmp_path / "node0.parts")}
    with (tmp_path / "node.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest_chainharness.clients.pos_node", json.dumps(plan)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and set(provider.parts(0).values()) != {NodeState.RUNNING}:
        time.sleep(0.05)
    yield provider
    proc.terminate()
    proc.wait(timeout=20)


class TestTheProviderSide:
    def test_a_paused_geth_is_what_peers_and_waits_see_and_its_resume_tells_them(
        self, one_node: OneNode
    ) -> None:
        assert one_node.serving_state(0) is NodeState.RUNNING
        one_node.act_on_part(0, "geth", "pause")
        assert one_node.parts(0) == {
            "geth": NodeState.PAUSED,
            "beacon": NodeState.RUNNING,
            "validator": NodeState.RUNNING,
        }
        # What _before_restart asks of the other nodes: this one cannot be told now.
        assert one_node.serving_state(0) is NodeState.PAUSED
        one_node.act_on_part(0, "geth", "resume")
        assert one_node.calls == ["after_resume"]  # told what it missed
        one_node.act_on_part(0, "validator", "kill")
        assert one_node.serving_state(0) is NodeState.RUNNING  # geth still serves
        one_node.act_on_part(0, "validator", "start")
        one_node.act_on_part(0, "geth", "stop")
        assert one_node.serving_state(0) is NodeState.STOPPED
        one_node.act_on_part(0, "geth", "start")
        # A geth started again takes its pairs over, as a restarted node does.
        assert one_node.calls == ["after_resume", "before_restart"]
        assert set(one_node.parts(0).values()) == {NodeState.RUNNING}

    def test_bad_requests_name_what_is_allowed(self, one_node: OneNode) -> None:
        with pytest.raises(ValueError, match="no part 'gteh'; its parts: geth, beacon, validator"):
            one_node.act_on_part(0, "gteh", "kill")
        with pytest.raises(ValueError, match="no part action 'crash'"):
            one_node.act_on_part(0, "geth", "crash")
        with pytest.raises(ChainHarnessError, match="cannot start geth of node0: geth is running"):
            one_node.act_on_part(0, "geth", "start")
        one_node.node_state = NodeState.PAUSED  # the whole node frozen: nothing answers
        assert set(one_node.parts(0).values()) == {NodeState.PAUSED}
        with pytest.raises(ChainHarnessError, match="the node is paused"):
            one_node.act_on_part(0, "geth", "kill")
        one_node.node_state = NodeState.RUNNING
        one_node.admin = one_node.admin / "elsewhere"  # no supervisor there
        with pytest.raises(ChainHarnessError, match="its supervisor does not answer at "):
            one_node.act_on_part(0, "geth", "kill")
        assert one_node.calls == []
