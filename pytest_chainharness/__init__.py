"""pytest-chainharness: real multi-node blockchain networks as pytest fixtures.

Public names are re-exported here one by one; everything in ``_modules`` is private.
"""

from __future__ import annotations

from ._errors import (
    ChainHarnessError,
    ChainTimeout,
    NetworkStartError,
    ToolNotFound,
    UnsupportedAction,
)
from ._load import LoadResult
from ._testnet import NodeSpec, Testnet, build_testnet
from .bus import BarrierTimeout, Event, SyncBus
from .chain import Chain, Head, Node
from .providers import NodeState, ProcessProvider, Provider
from .upgrade import NodeUpgrade, UpgradeResult

__all__ = [
    "BarrierTimeout",
    "Chain",
    "ChainHarnessError",
    "ChainTimeout",
    "Event",
    "Head",
    "LoadResult",
    "NetworkStartError",
    "Node",
    "NodeSpec",
    "NodeState",
    "NodeUpgrade",
    "ProcessProvider",
    "Provider",
    "SyncBus",
    "Testnet",
    "ToolNotFound",
    "UnsupportedAction",
    "UpgradeResult",
    "build_testnet",
]

__version__ = "0.1.0"
