"""Starting and stopping the host processes a client's nodes need (``Helper``).

Both backends run them on the harness's host, beside the run's admin folder, before any
node starts; the pids go into the provider's shared state so any attached process can
stop them at teardown (they also carry the run marker, and exit once the run's nodes
folder is gone).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .._errors import NetworkStartError
from .._proc import RUN_MARKER, find_marked, hand_over, kill_pids
from .._testnet import Testnet
from ..clients.base import ClientAdapter
from ._state import RunState
from .base import admin_dir

__all__ = ["HelperHost", "start_helpers", "stop_helpers"]

#: Helpers this process started: kept so they are not collected while they run, and
#: polled at teardown to collect their exit status.
_STARTED: list[subprocess.Popen[bytes]] = []


def start_helpers(
    adapter: ClientAdapter,
    testnet: Testnet,
    *,
    run_id: str,
    run_dir: Path,
    shared: RunState,
    timeout: float,
) -> Callable[[], None]:
    """Start every node's helpers; returns the wait until each serves (call it before
    any node starts, after what can overlap). A helper that exits or is not ready within
    ``timeout`` is a ``NetworkStartError`` naming its command."""
    helpers = adapter.helpers(testnet, admin_dir(run_id), run_dir / "nodes")
    started: list[tuple[subprocess.Popen[bytes], Path]] = []
    for helper in helpers:
        log_path = run_dir / "logs" / f"{helper.name}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                helper.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, RUN_MARKER: run_id, **helper.env},
                process_group=0,
            )
        started.append((proc, log_path))
        _STARTED.append(proc)
        with shared.edit() as data:
            data.setdefault("helpers", []).append(proc.pid)
    deadline = time.monotonic() + timeout

    def wait() -> None:
        for helper, (proc, log_path) in zip(helpers, started, strict=True):
            while not all(path.exists() for path in helper.ready):
                if proc.poll() is not None or time.monotonic() > deadline:
                    what = (
                        f"exited with status {proc.returncode}"
                        if proc.returncode is not None
                        else f"did not serve within {timeout:g}s (ini chain_start_timeout)"
                    )
                    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
                    raise NetworkStartError(
                        f"{helper.name}: `{shlex.join(helper.argv)}` {what}; its log "
                        f"({log_path}):\n{tail or '(empty)'}"
                    )
                time.sleep(0.01)

    return wait


def stop_helpers(shared: RunState, run_id: str) -> None:
    # Only pids that still carry the run's marker: a recorded pid may be reused by now.
    marked = set(find_marked(run_id))
    kill_pids(pid for pid in map(int, shared.load().get("helpers", [])) if pid in marked)
    for proc in list(_STARTED):
        if proc.poll() is not None:
            _STARTED.remove(proc)


class HelperHost:
    """Mixin for providers: the client's helpers, started in ``setup``."""

    adapter: ClientAdapter
    testnet: Testnet
    run_id: str
    run_dir: Path
    shared: RunState

    def start_helpers(self, timeout: float) -> Callable[[], None]:
        return start_helpers(
            self.adapter,
            self.testnet,
            run_id=self.run_id,
            run_dir=self.run_dir,
            shared=self.shared,
            timeout=timeout,
        )

    def stop_helpers(self) -> None:
        stop_helpers(self.shared, self.run_id)

    def release_helpers(self) -> None:
        """Drop this process's handles on helpers that keep running for another to stop."""
        hand_over(_STARTED)
