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
- the parts die with it even when it is SIGKILLed alone (``PR_SET_PDEATHSIG``).

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

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from typing import IO, Any

__all__ = ["main"]

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


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m pytest_chainharness.clients.pos_node PLAN", file=sys.stderr)
        return 2
    plan: dict[str, Any] = json.loads(args[0])
    out = sys.stdout.buffer
    lock = threading.Lock()
    stopping = threading.Event()
    parts: list[tuple[str, subprocess.Popen[bytes]]] = []

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()
        for _, proc in parts:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    copiers = []
    for part in plan["parts"]:
        name = str(part["name"])
        deadline = time.monotonic() + _WAIT_FOR
        while (
            part.get("wait_for")
            and not stopping.is_set()
            and all(p.poll() is None for _, p in parts)
            and time.monotonic() < deadline
            and not _serves(str(part["wait_for"]))
        ):
            time.sleep(0.05)
        if stopping.is_set() or any(p.poll() is not None for _, p in parts):
            break  # stopped, or an earlier part died: the loop below ends the node
        with lock:
            out.write(f"chainharness | starting {name}\n".encode())
            out.flush()
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
        parts.append((name, proc))
        assert proc.stdout is not None
        copier = threading.Thread(target=_copy, args=(name, proc.stdout, out, lock), daemon=True)
        copier.start()
        copiers.append(copier)
        if trust:
            threading.Thread(
                target=_trust_peers,
                args=(name, str(trust["api"]), [str(a) for a in trust["peers"]], stopping),
                kwargs={"out": out, "lock": lock},
                daemon=True,
            ).start()
    status = 0
    while not stopping.is_set():
        ended = [(name, proc.returncode) for name, proc in parts if proc.poll() is not None]
        if ended:
            name, code = ended[0]
            with lock:
                out.write(f"chainharness | {name} exited with status {code}: stopping\n".encode())
                out.flush()
            status = code if code else 1
            break
        time.sleep(0.2)
    for _, proc in parts:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + _STOP_GRACE
    for _, proc in parts:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for copier in copiers:
        copier.join(timeout=2.0)
    return status


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
