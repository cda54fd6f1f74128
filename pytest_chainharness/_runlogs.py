"""Logs kept from failed runs: ``.chainharness/failed/<run>/`` under the project root.

A rare failure can only be diagnosed from what the run left: every node's log, the
agents' logs, ``events.jsonl`` (the bus's history) and the state file. The run folder
itself is pruned as new runs start, so a run in which any test failed (or any run, with
``--chain-keep-logs``) copies them here after teardown::

    .chainharness/failed/<run>/logs/node0.log ... events.jsonl agent-node0.log ...
    .chainharness/failed/<run>/network.json      the state file, secrets redacted

Bounded: the newest ``KEEP`` runs stay, and each file keeps at most its last
``MAX_FILE_BYTES``. Folders are 0700 and files 0600: logs may show addresses and ports
that other local users have no business with.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ._files import STATE_FILES, redact, write_private

__all__ = ["KEEP", "MAX_FILE_BYTES", "keep_run_logs", "kept_logs_dir"]

#: Kept runs, newest first; older ones are removed as new ones are kept.
KEEP = 5
#: The tail of each file that is kept (a node's log on a long run grows to many MiB).
MAX_FILE_BYTES = 4 * 1024 * 1024


def kept_logs_dir(root: Path, run_id: str) -> Path:
    return root / ".chainharness" / "failed" / run_id


def keep_run_logs(run_dir: Path, dest: Path, *, keep: int = KEEP) -> Path | None:
    """Copy ``run_dir``'s logs and state into ``dest``; prune ``dest``'s siblings to the
    newest ``keep``. Returns ``dest``, or None when the run left nothing to keep."""
    logs = run_dir / "logs"
    if not logs.is_dir() or not any(logs.iterdir()):
        return None
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "logs").mkdir(parents=True, mode=0o700)
    os.chmod(dest, 0o700)
    for source in sorted(logs.iterdir()):
        if source.is_file():
            _copy_tail(source, dest / "logs" / source.name)
    for name in STATE_FILES:
        state = run_dir / name
        if state.is_file():
            try:
                data = json.loads(state.read_text())
            except (OSError, ValueError):
                continue
            write_private(dest / name, json.dumps(redact(data), indent=1))
    _prune(dest.parent, keep)
    return dest


def _copy_tail(source: Path, target: Path) -> None:
    size = source.stat().st_size
    with source.open("rb") as handle:
        if size > MAX_FILE_BYTES:
            handle.seek(size - MAX_FILE_BYTES)
            handle.readline()  # start at a whole line
            head = f"[... {size - MAX_FILE_BYTES} earlier bytes not kept ...]\n".encode()
        else:
            head = b""
        write_private(target, head + handle.read())


def _prune(folder: Path, keep: int) -> None:
    runs = sorted(
        (p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for old in runs[keep:]:
        shutil.rmtree(old, ignore_errors=True)
