"""pytest-chainharness: real multi-node blockchain networks as pytest fixtures.

Public names are re-exported here one by one; everything in ``_modules`` is private.
"""

from __future__ import annotations

from ._errors import ChainHarnessError, ChainTimeout, NetworkStartError, ToolNotFound
from ._testnet import NodeSpec, Testnet, build_testnet
from .bus import BarrierTimeout, Event, SyncBus
from .chain import Chain, Head, Node
from .providers import NodeState, ProcessProvider, Provider

__all__ = [
    "BarrierTimeout",
    "Chain",
    "ChainHarnessError",
    "ChainTimeout",
    "Event",
    "Head",
    "NetworkStartError",
    "Node",
    "NodeSpec",
    "NodeState",
    "ProcessProvider",
    "Provider",
    "SyncBus",
    "Testnet",
    "ToolNotFound",
    "build_testnet",
]

__version__ = "0.1.0"
