"""Exceptions raised by the harness.

::

    Exception
     ├── ChainHarnessError        every harness failure that is not a test assertion
     │    ├── ToolNotFound        a client binary is missing; the message names the install command
     │    ├── NetworkStartError   a node died or never became ready while the network started
     │    └── UnsupportedAction   the backend or client cannot perform the requested action
     └── AssertionError
          └── ChainTimeout        a wait ran out; the message carries the table of every node

``ChainTimeout`` is an ``AssertionError`` so that pytest reports a wait that ran out as a
test failure (the product did not do what the test expected), while ``ChainHarnessError``
marks a problem of the harness or its infrastructure.
"""

from __future__ import annotations

__all__ = [
    "ChainHarnessError",
    "ChainTimeout",
    "NetworkStartError",
    "ToolNotFound",
    "UnsupportedAction",
]


class ChainHarnessError(Exception):
    """Base class of the harness's own (non-assertion) errors."""


class ToolNotFound(ChainHarnessError):
    """A client binary (geth, anvil) could not be found."""


class NetworkStartError(ChainHarnessError):
    """The network could not be started; nothing of it is left running."""


class UnsupportedAction(ChainHarnessError):
    """The chosen backend or client cannot perform this action."""


class ChainTimeout(AssertionError):
    """A wait on the chain ran out of time."""
