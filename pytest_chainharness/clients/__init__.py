"""Client adapters, one module each; :func:`get_client` picks one by name.

Besides the built-in ones, a package can ship its own adapter class through the entry
point group ``pytest_chainharness.clients`` (name = the ``--chain-client`` value)::

    [project.entry-points."pytest_chainharness.clients"]
    my-chain = "my_chain_testing.adapter:MyChainAdapter"
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from .._errors import ChainHarnessError
from .anvil import AnvilAdapter
from .base import ClientAdapter
from .geth import GethAdapter
from .geth_pos import GethPosAdapter
from .spec import is_spec_path, load_spec

__all__ = [
    "CLIENTS",
    "ENTRY_POINT_GROUP",
    "SPEC_CLIENTS",
    "AnvilAdapter",
    "ClientAdapter",
    "GethAdapter",
    "GethPosAdapter",
    "available_clients",
    "get_client",
]

#: Built-in clients by name.
CLIENTS: dict[str, type[GethAdapter] | type[GethPosAdapter] | type[AnvilAdapter]] = {
    "geth": GethAdapter,
    "geth-pos": GethPosAdapter,
    "anvil": AnvilAdapter,
}
#: Built-in clients that are spec files shipped with the package, and their install command.
SPEC_CLIENTS: dict[str, tuple[Path, str]] = {
    "cometbft": (
        Path(__file__).parent / "specs" / "cometbft.yaml",
        "python -m pytest_chainharness.tools install cometbft",
    ),
}
ENTRY_POINT_GROUP = "pytest_chainharness.clients"


def available_clients() -> dict[str, Any]:
    """Every client by name: the built-in ones, then those packages register (a package
    cannot replace a built-in name). A registered class that does not load is a
    ``ChainHarnessError`` naming the entry point."""
    from .spec_client import SpecAdapter

    found: dict[str, Any] = dict(CLIENTS)
    found.update(dict.fromkeys(SPEC_CLIENTS, SpecAdapter))
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name in found:
            continue
        try:
            found[point.name] = point.load()
        except Exception as exc:  # any import error of a third-party package
            raise ChainHarnessError(
                f"client {point.name!r} ({point.value}, entry point group "
                f"{ENTRY_POINT_GROUP}) does not load: {type(exc).__name__}: {exc}"
            ) from exc
    return found


def get_client(name: str, *, root: Path | None = None) -> ClientAdapter:
    """The adapter for ``name``, or for the client spec file it names; ``ValueError``
    listing the clients when unknown, ``ClientSpecError`` for a spec that does not
    validate."""
    if is_spec_path(name) or name in SPEC_CLIENTS:
        from dataclasses import replace

        from .spec_client import SpecAdapter

        path, install = SPEC_CLIENTS.get(name, (Path(name), ""))
        spec = replace(load_spec(path, root=root, check_binary=False), install=install or None)
        if spec.adapter is None:
            return SpecAdapter(spec, root=root, name=name)
        custom: ClientAdapter = _spec_adapter_class(spec)(spec, root=root, name=name)
        return custom
    clients = available_clients()
    try:
        cls = clients[name]
    except KeyError:
        raise ValueError(f"unknown client {name!r}; choose one of: {', '.join(clients)}") from None
    adapter: ClientAdapter = cls(root=root)
    return adapter


def _spec_adapter_class(spec: Any) -> type[Any]:
    """The ``adapter: module:Class`` a spec names: a ``SpecAdapter`` subclass that adds
    what YAML cannot say. The spec's folder is importable, so the module may sit beside
    the spec file."""
    import importlib
    import sys

    from .spec import ClientSpecError
    from .spec_client import SpecAdapter

    module_name, _, class_name = str(spec.adapter).partition(":")
    where = f"{spec.path}: adapter: {spec.adapter}"
    folder = str(spec.path.parent)
    if folder not in sys.path:
        sys.path.append(folder)
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except Exception as exc:  # any import error of the team's module
        raise ClientSpecError(f"{where} does not load: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, SpecAdapter)):
        raise ClientSpecError(f"{where} is not a subclass of pytest_chainharness SpecAdapter")
    return cls
