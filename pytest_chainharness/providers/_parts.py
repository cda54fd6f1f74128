"""Faults on one part of a node whose client runs several (``ClientAdapter.parts``;
geth-pos: geth, the beacon node, the validator client).

The node's supervisor (``clients/pos_node``) owns the parts' processes and answers on a
Unix socket in the run's admin folder, which a container sees at the same path, so
this is the same on every backend: the provider asks, the supervisor acts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._errors import ChainHarnessError, UnsupportedAction
from .._testnet import Testnet
from ..clients import pos_node
from ..clients.base import ClientAdapter, parts_socket
from .base import NodeState

__all__ = ["PART_ACTIONS", "NodeParts"]

#: What ``Provider.act_on_part`` does to one part.
PART_ACTIONS = ("stop", "kill", "start", "pause", "resume")

_STATES = {
    "new": NodeState.NEW,  # waiting for the part before it to serve
    "running": NodeState.RUNNING,
    "paused": NodeState.PAUSED,
    "stopped": NodeState.STOPPED,
}


class NodeParts:
    adapter: ClientAdapter
    testnet: Testnet

    def state(self, index: int) -> NodeState:
        raise NotImplementedError

    def admin_url(self, index: int) -> str:
        raise NotImplementedError

    if TYPE_CHECKING:  # AdminPeering's, beside this in every provider's bases

        def _before_restart(self, index: int) -> None: ...

        def _after_resume(self, index: int) -> None: ...

    def _parts_socket(self, index: int) -> str:
        return parts_socket(self.admin_url(index).removeprefix("ipc://"))

    def parts(self, index: int) -> dict[str, NodeState]:
        """Each part's state ({} for a client whose node is one process). The parts of a
        node that is not running are as the node is; while its supervisor has not begun
        to answer, they are ``new``."""
        if not self.adapter.parts:
            return {}
        state = self.state(index)
        if state is not NodeState.RUNNING:
            return dict.fromkeys(self.adapter.parts, state)
        try:
            answer = pos_node.ask(self._parts_socket(index), "state", timeout=5.0)
        except OSError:
            # Starting (or just gone: the node's state says so at the next look).
            return dict.fromkeys(self.adapter.parts, NodeState.NEW)
        return {name: _STATES[answer[name]] for name in self.adapter.parts}

    def serving_state(self, index: int) -> NodeState:
        """The node's state as its RPC and its peers see it: its main part's, when the
        client has parts (a node whose geth is stopped answers nothing)."""
        main = self.adapter.main_part
        return self.parts(index)[main] if main else self.state(index)

    def act_on_part(self, index: int, part: str, action: str) -> None:
        name = self.testnet.nodes[index].name
        client = self.adapter.display_name
        if not self.adapter.parts:
            raise UnsupportedAction(
                f"client {client} runs each node as one process: it has no part {part!r}"
            )
        if part not in self.adapter.parts:
            raise ValueError(
                f"client {client} has no part {part!r}; its parts: {', '.join(self.adapter.parts)}"
            )
        if action not in PART_ACTIONS:
            raise ValueError(f"no part action {action!r}; one of {', '.join(PART_ACTIONS)}")
        state = self.state(index)
        if state is not NodeState.RUNNING:
            raise ChainHarnessError(
                f"cannot {action} {part} of {name}: the node is {state.value} "
                "(a fault on one part needs the rest of the node running)"
            )
        path = self._parts_socket(index)
        if action == "start" and part == self.adapter.main_part:
            now = self.parts(index)[part]
            if now is not NodeState.STOPPED:  # else its peers would drop a running geth
                raise ChainHarnessError(
                    f"cannot start {part} of {name}: {part} is {now.value}, not stopped"
                )
            # To its peers this is a restart like the whole node's (the one-dialler rule).
            self._before_restart(index)
        try:
            pos_node.ask(path, action, part)
        except ValueError as exc:
            raise ChainHarnessError(f"cannot {action} {part} of {name}: {exc}") from None
        except OSError as exc:  # it is starting, or went away meanwhile
            raise ChainHarnessError(
                f"cannot {action} {part} of {name}: "
                f"its supervisor does not answer at {path} ({exc})"
            ) from None
        if action == "resume" and part == self.adapter.main_part:
            self._after_resume(index)
