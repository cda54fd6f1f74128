"""A provider's state shared by every process attached to the run.

Pids, images, intents, the current partition and ports changed by a retry live in one JSON
file under a file lock, so an xdist worker that stops a node and the owner that tears the
run down see the same thing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

from .._files import write_private
from .._testnet import Testnet

__all__ = ["RunState"]


class RunState:
    def __init__(self, path: Path, testnet: Testnet) -> None:
        self.path = path
        self.testnet = testnet
        self._lock = FileLock(str(path.with_suffix(".lock")))

    def load(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"nodes": {}, "partition": None}
        return data

    @contextmanager
    def edit(self) -> Iterator[dict[str, Any]]:
        """The state, locked; what the block changes is saved (with the current ports)."""
        with self._lock:
            data = self.load()
            yield data
            data["testnet"] = self.testnet.to_dict()
            write_private(self.path, json.dumps(data))

    def save(self) -> None:
        """Store the current ports (after setup or a port change) for every process."""
        with self.edit():
            pass

    def record(self, index: int, **fields: Any) -> None:
        """Update one node's entry."""
        with self.edit() as data:
            data["nodes"].setdefault(str(index), {}).update(fields)

    def entry(self, index: int) -> dict[str, Any]:
        entry: dict[str, Any] = self.load()["nodes"].get(str(index), {})
        return entry

    def refresh(self) -> dict[str, Any]:
        """Take over the addresses and ports another process changed (after a port retry,
        a pod's address); returns the state."""
        data = self.load()
        if "testnet" in data:
            fresh = Testnet.from_dict(data["testnet"])
            for mine, theirs in zip(self.testnet.nodes, fresh.nodes, strict=True):
                mine.host, mine.ports = theirs.host, dict(theirs.ports)
        return data
