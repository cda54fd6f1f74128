"""Free TCP ports on 127.0.0.1 for node endpoints."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack

__all__ = ["PortAllocator"]

#: Every port any allocator of this process handed out (on any host: a listener on
#: 0.0.0.0 in a container and one on 127.0.0.1 share the host's port numbers).
_GIVEN: set[int] = set()
_LOCK = threading.Lock()


class PortAllocator:
    """Hands out ports the kernel reports free, never the same one twice per process.

    "Per process", not per allocator: a network's node ports, its link proxies' ports and
    a node's fresh ports after a conflict come from different allocators, and a port
    handed out but not bound yet is free as far as the kernel knows (a 32-node network's
    992 link proxies took node ports that way, and nodes dialled the wrong peer).

    A port is only known to be free while we hold it, so another program can still take it
    between our choice and the node's bind; providers detect that from the node's log and
    ask for fresh ports (see ``ClientAdapter.port_conflict``).
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host

    def take(self, count: int) -> list[int]:
        """Return ``count`` distinct ports that were free a moment ago."""
        if count <= 0:
            return []  # the loop below stops only on a port taken (a 1-node network has no links)
        with _LOCK, ExitStack() as stack:
            ports: list[int] = []
            for sock in self._sockets(stack):
                port = sock.getsockname()[1]
                if port in _GIVEN:
                    continue
                ports.append(port)
                if len(ports) == count:
                    break
            _GIVEN.update(ports)
            return ports

    def _sockets(self, stack: ExitStack) -> Iterator[socket.socket]:
        # All sockets stay open until the batch is complete so the kernel cannot hand the
        # same ephemeral port out twice within one batch.
        while True:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((self.host, 0))
            yield sock
