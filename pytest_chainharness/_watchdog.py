"""Removes a run's nodes and datadirs when the pytest process that owns them dies.

Started beside every network (``python _watchdog.py OWNER_PID RUN_ID RUN_DIR BACKEND
ADMIN_DIR``) and run as a script, not as a module, so it imports only the standard
library, ``_proc`` and (for the docker backend, once the owner is gone) docker-py: no web3
in a second process while the nodes start. A normal teardown kills it along with the
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
    owner, run_id, run_dir = int(argv[0]), argv[1], Path(argv[2])
    backend = argv[3] if len(argv) > 3 else "process"
    admin = Path(argv[4]) if len(argv) > 4 else None
    # Leave the terminal's process group: a Ctrl-C meant for pytest must not stop us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while alive(owner):
        time.sleep(0.25)
    me = os.getpid()
    every_step(
        lambda: kill_pids([p for p in find_marked(run_id) if p != me]),
        lambda: _remove_containers(run_id) if backend == "docker" else None,
        lambda: shutil.rmtree(run_dir / "nodes", ignore_errors=True),
        # The nodes' admin sockets live under the system's temp folder, not the run's.
        lambda: shutil.rmtree(admin, ignore_errors=True) if admin else None,
    )
    return 0


def _remove_containers(run_id: str) -> None:
    # Imported only now: the owner is gone and nothing else competes for the CPU.
    if __package__:
        from ._docker import remove_run
    else:
        from _docker import remove_run  # type: ignore[import-not-found,no-redef]
    remove_run(run_id)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
