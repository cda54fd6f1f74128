"""The shell line a node runs by in a container or pod of its image."""

from __future__ import annotations

import shlex

from .._testnet import NodeSpec, Testnet
from ..clients.base import ClientAdapter, Placement

__all__ = ["node_script"]


def node_script(adapter: ClientAdapter, testnet: Testnet, node: NodeSpec, place: Placement) -> str:
    """``sh -c`` text that initialises the node's datadir once (the client's
    ``init_command``) and then replaces the shell with the node, so signals reach it."""
    run = shlex.join(adapter.command(testnet, node, place, seal=False))
    init = adapter.init_command(place)
    if not init:
        return f"exec {run}"
    marker = f"{place.datadir}/.chainharness-initialised"
    return f"[ -e {marker} ] || {{ {shlex.join(init)} && touch {marker}; }} && exec {run}"
