"""Free TCP ports on 127.0.0.1 for node endpoints."""

from __future__ import annotations

import errno
import random
import socket
import threading
from contextlib import ExitStack
from pathlib import Path

__all__ = ["PortAllocator", "ephemeral_range", "port_window"]

#: Every port any allocator of this process handed out (on any host: a listener on
#: 0.0.0.0 in a container and one on 127.0.0.1 share the host's port numbers).
_GIVEN: set[int] = set()
_LOCK = threading.Lock()

#: Where node ports come from: below Linux's default ephemeral range (32768-60999) and
#: below Kubernetes' NodePort range (30000-32767).
WINDOW = (20000, 30000)
#: Candidates tried per port asked for before the allocator gives up on the window.
TRIES_PER_PORT = 50

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for the local port of an outgoing connection (inclusive)."""
    try:
        low, high = (int(part) for part in _RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return (32768, 60999)
    return (low, high)


def port_window() -> range:
    """The ports handed out: ``WINDOW`` less any part the ephemeral range covers.

    Empty when the ephemeral range swallows the window (then the kernel picks).
    """
    low, high = WINDOW
    eph_low, eph_high = ephemeral_range()
    if eph_low <= low and eph_high >= high - 1:
        return range(0)
    if eph_low <= low:
        low = max(low, eph_high + 1)
    elif eph_low < high:
        high = eph_low
    return range(low, high)


class PortAllocator:
    """Hands out ports the kernel reports free, never the same one twice per process.

    Ports come from below the kernel's ephemeral range. A port inside it is taken, while
    its node is stopped, by the local end of any outgoing connection on this host (the
    harness makes thousands: RPC polls, agents, proxies), and the node's restart then
    fails to bind it: Docker said "address already in use" restarting a killed node.

    "Per process", not per allocator: a network's node ports, its link proxies' ports and
    a node's fresh ports after a conflict come from different allocators, and a port
    handed out but not bound yet is free as far as the kernel knows (a 32-node network's
    992 link proxies took node ports that way, and nodes dialled the wrong peer).

    Ports are probed on the wildcard address, so a port handed out is free on every
    address, whatever ``host`` the caller will bind: a docker run's link proxies listen
    on its network's gateway, and a port free only on 127.0.0.1 was given, in another
    xdist worker, to a process node on that same number (the two do not conflict, but a
    port then names two listeners, and the exposure test saw the gateway one).

    A port is only known to be free while we hold it, so another program can still take it
    between our choice and the node's bind; providers detect that from the node's log and
    ask for fresh ports (see ``ClientAdapter.port_conflict``).
    """

    #: A bind here fails while any address holds the port.
    PROBE = "0.0.0.0"

    def __init__(self, host: str = "127.0.0.1", *, window: range | None = None) -> None:
        self.host = host
        self.window = port_window() if window is None else window

    def take(self, count: int) -> list[int]:
        """Return ``count`` distinct ports that were free a moment ago."""
        if count <= 0:
            return []
        with _LOCK, ExitStack() as stack:
            ports = self._from_window(stack, count)
            while len(ports) < count:
                # The window is full (or empty): the kernel's choice is still a free port.
                sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                sock.bind((self.PROBE, 0))
                port = sock.getsockname()[1]
                if port not in _GIVEN and port not in ports:
                    ports.append(port)
            _GIVEN.update(ports)
            return ports

    def _from_window(self, stack: ExitStack, count: int) -> list[int]:
        # Random picks: allocators of other processes (xdist workers, a second run) share
        # the window, and starting from the same end every time would collide at once.
        # Every socket stays bound until the batch is complete.
        ports: list[int] = []
        if not self.window:
            return ports
        for _ in range(count * TRIES_PER_PORT):
            port = random.choice(self.window)
            if port in _GIVEN or port in ports:
                continue
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind((self.PROBE, port))
            except OSError as exc:
                if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                    raise
                continue
            ports.append(port)
            if len(ports) == count:
                break
        return ports
