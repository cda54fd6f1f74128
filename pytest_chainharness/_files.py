"""Files that hold secrets: written 0600 and atomically; redacted once they are done with.

The run's state (``network.json``, the providers' state files, ``chainharness up``'s
state file) names the bus password and every node and signer key. Other local users
(a shared CI runner) must not read it, and what stays behind after a run must not hold
the keys.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["SECRET_KEYS", "STATE_FILES", "redact", "redact_file", "write_private"]

#: Keys of the state files whose values are secrets.
SECRET_KEYS = frozenset(
    {"node_key", "signer_key", "beacon_key", "jwt_secret", "password", "private_key", "key"}
)
#: A run folder's state files (the session's, then each provider's).
STATE_FILES = ("network.json", "process-state.json", "docker-state.json")


def write_private(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically (a reader never sees half)."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def redact(value: Any) -> Any:
    """``value`` with every secret (by key name, at any depth) replaced."""
    if isinstance(value, dict):
        return {k: "<redacted>" if k in SECRET_KEYS and v else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def redact_file(path: Path) -> None:
    """Rewrite a JSON state file without its secrets (a missing or broken one is left)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    write_private(path, json.dumps(redact(data), indent=1))
