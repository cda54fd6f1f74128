"""Removes a run's nodes and datadirs when the pytest process that owns them dies.

Started beside every network (``python _watchdog.py OWNER_PID RUN_ID RUN_DIR ADMIN_DIR
[BACKEND]``) and run as a script, not as a module, so it imports only the standard library
and ``_proc`` while the owner lives: no web3 in a second process while the nodes start.
Once the owner is gone it imports the harness, for BACKEND's sweep (the docker backend's
containers and networks). A normal teardown kills it along with the
nodes (it carries the same run marker).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

if __package__:
    from ._proc import alive, every_step, find_marked, kill_pids
else:  # run as a script: the package folder is sys.path[0]
    from _proc import alive, every_step, find_marked, kill_pids  # type: ignore[no-redef,import-not-found]

__all__ = ["main", "script_path"]


def script_path() -> str:
    return os.path.abspath(__file__)


def main(argv: list[str]) -> int:
    owner, run_id, run_dir, admin = int(argv[0]), argv[1], Path(argv[2]), Path(argv[3])
    # The backend whose runs leave objects outside this host's processes (containers).
    backend = argv[4] if len(argv) > 4 else ""
    # Leave the terminal's process group: a Ctrl-C meant for pytest must not stop us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while alive(owner):
        time.sleep(0.25)
    me = os.getpid()
    every_step(
        lambda: kill_pids([p for p in find_marked(run_id) if p != me]),
        lambda: _sweep(backend, run_id, run_dir) if backend else None,
        lambda: shutil.rmtree(run_dir / "nodes", ignore_errors=True),
        # The nodes' admin sockets live under the system's temp folder, not the run's.
        lambda: shutil.rmtree(admin, ignore_errors=True),
    )
    return 0


def _sweep(backend: str, run_id: str, run_dir: Path) -> None:
    # Imported only now: the owner is gone and nothing else competes for the CPU.
    from pytest_chainharness.providers.registry import get_backend

    get_backend(backend).sweep_run(run_id, run_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
