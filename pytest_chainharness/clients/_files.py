"""Setting dotted keys in a node's TOML, JSON or YAML file (a client spec's ``files``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tomlkit
import yaml

__all__ = ["edit_file"]


def edit_file(path: Path, settings: dict[str, Any]) -> None:
    """Set each ``a.b.c`` key of ``settings`` in ``path`` (created when missing); the
    format is the suffix's. TOML keeps its comments and layout (tomlkit)."""
    text = path.read_text() if path.exists() else ""
    suffix = path.suffix.lower()
    doc: Any
    if suffix == ".toml":
        doc = tomlkit.parse(text)
    elif suffix == ".json":
        doc = json.loads(text) if text.strip() else {}
    else:
        doc = yaml.safe_load(text) if text.strip() else {}
    for dotted, value in settings.items():
        *parents, last = dotted.split(".")
        table = doc
        for part in parents:
            if part not in table:
                table[part] = tomlkit.table() if suffix == ".toml" else {}
            table = table[part]
        table[last] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".toml":
        path.write_text(tomlkit.dumps(doc))
    elif suffix == ".json":
        path.write_text(json.dumps(doc, indent=2) + "\n")
    else:
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
