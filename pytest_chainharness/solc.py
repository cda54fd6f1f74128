"""Compile Solidity with the pinned solc (npm's solcjs) for a chain's EVM version.

Imports resolve against the source's folder and every ``node_modules`` folder from it up
to the filesystem root, so ``import "@openzeppelin/contracts/…"`` works in a project that
installed the package with npm.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._proc import run_bounded
from .tools import SOLC_VERSION, find_solc

__all__ = ["compile_contract"]

#: solcjs reads the compiler (a few MB of JavaScript) at every start.
TIMEOUT = 180.0


def compile_contract(
    path: Path, name: str | None, *, evm_version: str, root: Path | None = None
) -> dict[str, Any]:
    """``{"name", "abi", "bytecode", "evm_version"}`` of contract ``name`` in ``path``,
    with the solc of ``root``'s tools folder (the project's, as for every tool).

    ``ValueError`` with solc's messages when the source does not compile, or when
    ``name`` is not one of its contracts (or is needed and not given).
    """
    source = path.resolve()
    if not source.is_file():
        raise FileNotFoundError(f"Solidity source {path} does not exist")
    argv = find_solc(root if root is not None else Path.cwd())
    modules = [p / "node_modules" for p in (source.parent, *source.parent.parents)]
    includes = [str(m) for m in modules if m.is_dir()]
    request = {
        "language": "Solidity",
        "sources": {source.name: {"urls": [source.name]}},
        "settings": {
            "evmVersion": evm_version,
            "optimizer": {"enabled": True, "runs": 200},
            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}},
        },
    }
    command = [*argv, "--standard-json", "--base-path", str(source.parent)]
    if includes:
        command += ["--include-path", *includes]
    done = run_bounded(command, input=json.dumps(request), text=True, timeout=TIMEOUT)
    # solcjs may print a note ("Cannot retry compilation with SMT …") before the JSON.
    text = done.stdout[done.stdout.find("{") :] if "{" in done.stdout else ""
    try:
        answer = json.loads(text)
    except ValueError:
        raise ValueError(
            f"solc {SOLC_VERSION} gave no answer for {path} (exit {done.returncode}):\n"
            f"{(done.stdout + done.stderr)[-2000:]}"
        ) from None
    errors = [e for e in answer.get("errors", []) if e.get("severity") == "error"]
    if errors:
        messages = "\n".join(str(e.get("formattedMessage") or e.get("message")) for e in errors)
        raise ValueError(f"{path} does not compile (solc {SOLC_VERSION}):\n{messages}")
    found: dict[str, Any] = answer.get("contracts", {}).get(source.name, {})
    if name is None:
        if len(found) == 1:
            name = next(iter(found))
        elif source.stem in found:
            name = source.stem
        else:
            raise ValueError(f"{path} holds {', '.join(sorted(found)) or 'no contract'}: name one")
    if name not in found:
        raise ValueError(f"{path} has no contract {name!r}; it holds {', '.join(sorted(found))}")
    out = found[name]
    return {
        "name": name,
        "abi": out["abi"],
        "bytecode": "0x" + out["evm"]["bytecode"]["object"],
        "evm_version": evm_version,
    }
