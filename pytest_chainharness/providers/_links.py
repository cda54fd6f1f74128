"""Partitions and latency for any client: every peer link through a proxy.

A client without an admin API (a spec client) cannot be told to drop a peer or to dial
one somewhere else, and nodes on one host share 127.0.0.1, so no packet filter can tell
their links apart. Instead each node dials each peer through its own toxiproxy listener
from the start (node i's ``{peers}`` name the proxy of link i → j, not j itself), on
both backends:

- a partition disables the links that cross groups (toxiproxy closes their connections
  and refuses new ones); healing enables them again;
- latency on node N is a ``latency`` toxic on every link of N, on the direction N sends
  (upstream of N → j, downstream of j → N): what netem's delay on N's interface does.
  No node restarts.

The links live in the run's one toxiproxy server, so every process of the run (xdist
workers) sees the same state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._errors import ChainHarnessError
from .._ports import PortAllocator
from .._testnet import Testnet
from ..clients.base import ClientAdapter, Route
from ._latency import _call
from ._state import RunState

__all__ = ["ProxiedLinks"]


class ProxiedLinks:
    testnet: Testnet
    adapter: ClientAdapter
    shared: RunState

    if TYPE_CHECKING:  # from ToxiproxyLatency and the provider

        def _toxiproxy(self) -> str: ...

        def _proxy_host(self) -> str: ...

        def _upstream(self, index: int, role: str) -> str: ...

    def proxied_links(self) -> bool:
        """Whether this run's peer links go through proxies (clients with peers and no
        admin API to drop them)."""
        return self.adapter.has_peers and not self.adapter.admin_peering

    @staticmethod
    def _link(source: int, target: int, role: str) -> str:
        return f"link-{source}-{target}-{role}"

    def link_routes(self, index: int) -> dict[int, Route]:
        """Peer index → where node ``index`` dials it (its links' listeners)."""
        links = self._ensure_links()
        host = self._proxy_host()
        return {
            other.index: Route(
                host,
                {
                    role: links[self._link(index, other.index, role)]
                    for role in self.adapter.peer_roles
                },
            )
            for other in self.testnet.nodes
            if other.index != index
        }

    def _ensure_links(self) -> dict[str, int]:
        """Create the run's link proxies once (any process may be first); name → port."""
        known: dict[str, int] = self.shared.load().get("links") or {}
        if known:
            return known
        api = self._toxiproxy()  # before the edit below: it edits the shared state too
        with self.shared.edit() as data:
            links: dict[str, int] = data.get("links") or {}
            if links:
                return links
            wanted = [
                (a.index, b.index, role)
                for a in self.testnet.nodes
                for b in self.testnet.nodes
                if a.index != b.index
                for role in self.adapter.peer_roles
            ]
            ports = PortAllocator(self._proxy_host()).take(len(wanted))
            bodies = []
            for (source, target, role), port in zip(wanted, ports, strict=True):
                name = self._link(source, target, role)
                bodies.append(self._proxy(name, port, target, role))
                links[name] = port
            # One request for all n·(n-1) links: for 32 nodes' 992, 0.07 s instead of
            # 0.9 s one by one.
            _call(api, "POST", "/populate", bodies)
            data["links"] = links
            return links

    def _proxy(self, name: str, port: int, target: int, role: str) -> dict[str, Any]:
        return {
            "name": name,
            "listen": f"{self._proxy_host()}:{port}",
            "upstream": self._upstream(target, role),
            "enabled": True,
        }

    def retarget_links(self, index: int) -> None:
        """Point the links into node ``index`` at its current ports (after a port retry)."""
        links = self.shared.load().get("links") or {}
        if not links:
            return
        api = self._toxiproxy()
        for name, port in links.items():
            _, _, target, role = name.split("-", 3)
            if int(target) == index:
                body = self._proxy(name, port, index, role)
                _call(api, "POST", f"/proxies/{name}", {"upstream": body["upstream"]})

    def cut_links(self, groups: Sequence[Sequence[int]] | None) -> None:
        """Enable exactly the links within one group (all of them for None)."""
        links = self._ensure_links()
        group_of = {i: g for g, members in enumerate(groups or []) for i in members}
        api = self._toxiproxy()
        now = {
            name: bool(p["enabled"]) for name, p in (_call(api, "GET", "/proxies") or {}).items()
        }
        for name in links:
            _, source, target, _ = name.split("-", 3)
            a, b = int(source), int(target)
            enabled = groups is None or group_of.get(a) == group_of.get(b)
            if now.get(name) is enabled:
                continue
            try:
                _call(api, "POST", f"/proxies/{name}", {"enabled": enabled})
            except ChainHarnessError as exc:
                what = "heal" if enabled else "cut"
                raise ChainHarnessError(f"cannot {what} {name}: {exc}") from None

    def slow_links(self, index: int, latency_ms: int, jitter_ms: int) -> list[str]:
        """Delay what node ``index`` sends on each of its links; the links' names."""
        links = self._ensure_links()
        api = self._toxiproxy()
        slowed: list[str] = []
        for name in links:
            _, source, target, _ = name.split("-", 3)
            if index not in (int(source), int(target)):
                continue
            toxic = {
                "name": "latency",
                "type": "latency",
                # upstream: what the dialling side (the link's source) sends
                "stream": "upstream" if int(source) == index else "downstream",
                "attributes": {"latency": int(latency_ms), "jitter": int(jitter_ms)},
            }
            try:
                _call(api, "POST", f"/proxies/{name}/toxics/latency", toxic)
            except ChainHarnessError:
                _call(api, "POST", f"/proxies/{name}/toxics", toxic)  # not there yet
            slowed.append(name)
        return slowed

    def unslow_links(self, names: Sequence[str]) -> None:
        api = self._toxiproxy()
        for name in names:
            try:
                _call(api, "DELETE", f"/proxies/{name}/toxics/latency")
            except ChainHarnessError as exc:
                if "404" not in str(exc):
                    raise
