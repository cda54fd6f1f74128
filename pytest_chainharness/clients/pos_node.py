"""One proof-of-stake node as one process: runs its parts (geth, the beacon node, the
validator client) as children and lives exactly as long as all of them.

The harness's providers see a node as one process tree (process backend: one process
group; docker: one container), so every fault — kill, pause, a graceful stop — already
reaches all three parts. What this supervisor adds:

- each part's output goes to the node's log, every line prefixed with the part's name,
  so a failure can say which part it was and show that part's lines;
- a part that exits on its own takes the node down (the others are stopped and this
  process exits with the part's status), so a crashed beacon node is a crashed node, not
  a node that silently stops producing blocks;
- SIGTERM and SIGINT are passed on to every part, as ``docker stop`` sends them to
  the container's first process only;
- the parts die with it even when it is SIGKILLed alone (``PR_SET_PDEATHSIG``);
- faults on one part: with ``"control": PATH`` in the plan it answers on that Unix
  socket (``ask``), and stops, kills, starts again, pauses or resumes one part while the
  others run. A part stopped or killed that way does not end the node; it stays down
  until it is started again (with its ``again`` arguments: its datadir exists by then).

Standard library only: it runs inside the node's container as well.

Usage: ``python -m pytest_chainharness.clients.pos_node PLAN`` where the plan is the
JSON ``{"parts": [{"name": "geth", "argv": [...]}, ...]}``, started in that order. A
part may say:

- ``"again": {"exists": PATH, "args": [...]}``: arguments added when PATH exists, i.e.
  on every start after its first (only the node sees its own datadir);
- ``"first": [...]``: arguments only for the first start (every start without
  ``again``);
- ``"again": {..., "trust": {"api": URL, "peers": [MULTIADDR, ...]}}``: on a start after
  the first, once the beacon API at URL answers, each peer is added to the beacon node's
  trusted peers (``POST /prysm/node/trusted_peers``), which it then dials on its own
  reconnect tick;
- ``"wait_for": "HOST:PORT"``: it starts once that port accepts connections (the part
  before it serves), so it reaches it at its first try instead of at its retry backoff.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import Future
from typing import IO, Any

__all__ = ["Supervisor", "ask", "main"]

_PR_SET_PDEATHSIG = 1
#: How long the parts get to stop after SIGTERM before they are killed.
_STOP_GRACE = 10.0
#: How long a part waits for the port it needs before it starts all the same.
_WAIT_FOR = 60.0


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: the kernel kills it when we die.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _serves(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def _copy(name: str, stream: IO[bytes], out: IO[bytes], lock: threading.Lock) -> None:
    prefix = f"{name} | ".encode()
    for line in iter(stream.readline, b""):
        with lock:
            out.write(prefix + line)
            out.flush()


def _trust_peers(
    name: str,
    api: str,
    peers: list[str],
    stopping: threading.Event,
    *,
    out: IO[bytes],
    lock: threading.Lock,
) -> None:
    """Give a restarted beacon node its peers once it serves its API.

    prysm dials its ``--peer`` list as its p2p service starts, seconds before its sync
    service handles new connections: such a connection never sends its status, its peer
    drops it after 10 s ("did not update"), and the node waits that long, and another
    reconnect tick, before it can sync. Peers trusted through the API are dialled on the
    next tick, by then with the status exchange that sync needs.
    """
    deadline = time.monotonic() + _WAIT_FOR
    pending = list(peers)
    while pending and not stopping.is_set() and time.monotonic() < deadline:
        addr = pending[0]
        request = urllib.request.Request(
            f"{api}/prysm/node/trusted_peers",
            data=json.dumps({"addr": addr}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=2.0):
                pending.pop(0)
        except OSError:  # HTTPError too
            time.sleep(0.2)  # not serving yet
    note = "trusted its peers" if not pending else f"could not trust {len(pending)} peer(s)"
    with lock:
        out.write(f"chainharness | {name} {note} ({api})\n".encode())
        out.flush()


class Supervisor:
    """The node's parts, their output, and what the control socket asks of them."""

    def __init__(self, plan: dict[str, Any], out: IO[bytes]) -> None:
        self.specs: dict[str, dict[str, Any]] = {str(p["name"]): p for p in plan["parts"]}
        self.out = out
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        #: name → its process, in start order (a part not started yet is absent).
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        #: Parts stopped or killed on request: their exit does not end the node.
        self.held: set[str] = set()
        self.paused: set[str] = set()
        self.copiers: list[threading.Thread] = []
        #: Starts asked for on the control socket, for the main thread to carry out.
        self.starts: queue.Queue[tuple[str, Future[None]]] = queue.Queue()

    def say(self, text: str) -> None:
        with self.lock:
            self.out.write(f"chainharness | {text}\n".encode())
            self.out.flush()

    def on_signal(self, signum: int, frame: object) -> None:
        self.stopping.set()
        with self.lock:
            for name, proc in self.procs.items():
                if proc.poll() is None:
                    proc.send_signal(signum)
                    if name in self.paused:
                        proc.send_signal(signal.SIGCONT)  # a frozen part never acts on it

    def start(self, name: str) -> None:
        part = self.specs[name]
        self.say(f"starting {name}")
        argv = [str(a) for a in part["argv"]]
        again = part.get("again")
        trust: dict[str, Any] | None = None
        if again and os.path.exists(again["exists"]):
            argv += [str(a) for a in again.get("args", ())]
            trust = again.get("trust")
        else:
            argv += [str(a) for a in part.get("first", ())]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=part.get("cwd"),
            preexec_fn=_die_with_parent,
        )
        with self.lock:
            self.procs[name] = proc
            self.held.discard(name)
            self.paused.discard(name)
        assert proc.stdout is not None
        copier = threading.Thread(
            target=_copy, args=(name, proc.stdout, self.out, self.lock), daemon=True
        )
        copier.start()
        self.copiers.append(copier)
        if trust:
            threading.Thread(
                target=_trust_peers,
                args=(name, str(trust["api"]), [str(a) for a in trust["peers"]], self.stopping),
                kwargs={"out": self.out, "lock": self.lock},
                daemon=True,
            ).start()

    def start_all(self) -> None:
        for name, part in self.specs.items():
            deadline = time.monotonic() + _WAIT_FOR
            while (
                part.get("wait_for")
                and not self.stopping.is_set()
                and self.ended() is None
                and time.monotonic() < deadline
                and not _serves(str(part["wait_for"]))
            ):
                time.sleep(0.05)
            if self.stopping.is_set() or self.ended() is not None:
                return  # stopped, or an earlier part died: run() ends the node
            self.start(name)

    def ended(self) -> tuple[str, int] | None:
        """A part that exited without being asked to, with its status."""
        with self.lock:
            for name, proc in self.procs.items():
                code = proc.poll()
                if code is not None and name not in self.held:
                    return name, code
        return None

    def states(self) -> dict[str, str]:
        """``new`` (not started yet: it waits for the part before it), ``running``,
        ``paused`` or ``stopped``."""
        with self.lock:
            return {
                name: (
                    "new"
                    if name not in self.procs
                    else "stopped"
                    if self.procs[name].poll() is not None
                    else "paused"
                    if name in self.paused
                    else "running"
                )
                for name in self.specs
            }

    def act(self, op: str, name: str) -> None:
        """One request of the control socket on one part (``ValueError``: refused)."""
        if name not in self.specs:
            raise ValueError(f"no part {name!r}; the parts are {', '.join(self.specs)}")
        state = self.states()[name]
        proc = self.procs.get(name)
        if op == "start":
            if threading.current_thread() is not threading.main_thread():
                # A child's PR_SET_PDEATHSIG fires when the *thread* that forked it ends:
                # started from this short-lived request thread, the part would be killed
                # as soon as the answer went out.
                done: Future[None] = Future()
                self.starts.put((name, done))
                done.result()
                return
            if state != "stopped":
                raise ValueError(f"{name} is {state}, not stopped")
            self.start(name)
            return
        if op not in ("stop", "kill", "pause", "resume"):
            raise ValueError(f"unknown action {op!r}")
        if proc is None or state in ("new", "stopped"):
            raise ValueError(f"{name} is {state}")
        if op in ("pause", "resume"):
            want = "running" if op == "pause" else "paused"
            if state != want:
                raise ValueError(f"{name} is {state}, not {want}")
            with self.lock:
                proc.send_signal(signal.SIGSTOP if op == "pause" else signal.SIGCONT)
                (self.paused.add if op == "pause" else self.paused.discard)(name)
            return
        with self.lock:
            self.held.add(name)  # before the signal: its exit must not end the node
            if op == "kill":
                proc.kill()
            else:
                proc.terminate()
            if name in self.paused:
                proc.send_signal(signal.SIGCONT)
                self.paused.discard(name)
        try:
            proc.wait(timeout=_STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.say(f"{name} {'killed' if op == 'kill' else 'stopped'} on request")

    def serve(self, path: str) -> None:
        """Answer control requests on the Unix socket at ``path`` (see ``ask``)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a socket left by the node's previous run
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        os.chmod(path, 0o600)
        server.listen()
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            conn, _ = server.accept()
            # A stop waits up to its grace: the state questions every wait asks meanwhile
            # must not queue behind it.
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as stream:
            try:
                request = json.loads(stream.readline())
                if request.get("op") != "state":
                    self.act(str(request.get("op")), str(request.get("part")))
                answer: dict[str, Any] = {"parts": self.states()}
            except (ValueError, TypeError, AttributeError) as exc:
                answer = {"error": str(exc)}
            with contextlib.suppress(OSError):  # the asker gave up
                stream.write(json.dumps(answer).encode() + b"\n")

    def run(self) -> int:
        """Wait until the node is stopped or a part ends on its own; stop every part."""
        status = 0
        while not self.stopping.is_set():
            ended = self.ended()
            if ended:
                name, code = ended
                self.say(f"{name} exited with status {code}: stopping")
                status = code if code else 1
                break
            try:
                name, done = self.starts.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.act("start", name)
            except ValueError as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)
        while not self.starts.empty():  # asked while the node stopped
            self.starts.get_nowait()[1].set_exception(ValueError("the node is stopping"))
        with self.lock:
            procs = list(self.procs.items())
        for name, proc in procs:
            if proc.poll() is None:
                proc.terminate()
                if name in self.paused:
                    proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + _STOP_GRACE
        for _, proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for copier in self.copiers:
            copier.join(timeout=2.0)
        return status


def ask(path: str, op: str, part: str = "", *, timeout: float = 30.0) -> dict[str, str]:
    """Ask the supervisor listening at ``path`` to ``op`` (``state``, ``start``, ``stop``,
    ``kill``, ``pause``, ``resume``) one part; returns every part's state afterwards.
    ``ValueError`` with the supervisor's reason when it refuses; ``OSError`` when nothing
    answers there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)  # a stop waits for the part, up to its grace
        conn.connect(path)
        with conn.makefile("rwb") as stream:
            stream.write(json.dumps({"op": op, "part": part}).encode() + b"\n")
            stream.flush()
            line = stream.readline()
    if not line:
        raise OSError(f"the node supervisor at {path} closed the connection")
    answer: dict[str, Any] = json.loads(line)
    if "error" in answer:
        raise ValueError(answer["error"])
    parts: dict[str, str] = answer["parts"]
    return parts


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m pytest_chainharness.clients.pos_node PLAN", file=sys.stderr)
        return 2
    plan: dict[str, Any] = json.loads(args[0])
    node = Supervisor(plan, sys.stdout.buffer)
    signal.signal(signal.SIGTERM, node.on_signal)
    signal.signal(signal.SIGINT, node.on_signal)
    if plan.get("control"):
        node.serve(str(plan["control"]))
    node.start_all()
    return node.run()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
