"""Latency faults through toxiproxy, a userspace TCP proxy (no netem needed).

To slow node N down, every peer link of N is moved onto a proxy: N's static peers are
rewritten to one toxiproxy listener per peer, with a ``latency`` toxic on the direction
N → peer (what netem's delay on N's interface would do), the other nodes forget N's
direct address, and N restarts (see ``add_latency`` for why). Clearing removes the proxies,
restores the direct peering and restarts N again. One toxiproxy server per
run serves every process of it (its address is in the run's shared state); it carries
the run marker, so teardown and the watchdog stop it with the nodes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._broker import _CHILDREN
from .._errors import ChainHarnessError, UnsupportedAction
from .._ports import PortAllocator
from .._proc import RUN_MARKER
from .._testnet import Testnet
from ..clients.base import ClientAdapter, Placement
from ..tools import find_toxiproxy
from ._state import RunState
from .base import NodeState

__all__ = ["ToxiproxyLatency"]


def _call(
    api: str, method: str, path: str, body: dict[str, Any] | list[dict[str, Any]] | None = None
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        api + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            text = reply.read()
    except urllib.error.HTTPError as exc:
        raise ChainHarnessError(
            f"toxiproxy {method} {path}: {exc.code} {exc.read().decode(errors='replace')}"
        ) from None
    except OSError as exc:
        raise ChainHarnessError(f"toxiproxy at {api} does not answer: {exc}") from None
    return json.loads(text) if text.strip() else None


class ToxiproxyLatency:
    testnet: Testnet
    adapter: ClientAdapter
    shared: RunState
    run_id: str
    run_dir: Path

    def state(self, index: int) -> NodeState:
        raise NotImplementedError

    def enode(self, index: int) -> str:
        raise NotImplementedError

    def _peer(self, index: int, add: bool, address: str) -> None:
        raise NotImplementedError

    def datadir(self, index: int) -> Path:
        raise NotImplementedError

    def _place(self, index: int) -> Placement:
        raise NotImplementedError

    def stop(self, index: int, *, timeout: float = 10.0) -> None:
        raise NotImplementedError

    def start(self, index: int) -> None:
        raise NotImplementedError

    def resume(self, index: int) -> None:
        raise NotImplementedError

    def _proxy_host(self) -> str:
        """The address proxies listen on: one every node can reach."""
        raise NotImplementedError

    def _upstream(self, index: int, role: str) -> str:
        """host:port where a proxy reaches node ``index``'s listener for port ``role``."""
        raise NotImplementedError

    if TYPE_CHECKING:  # from ProxiedLinks, later in the providers' bases

        def proxied_links(self) -> bool: ...

        def slow_links(self, index: int, latency_ms: int, jitter_ms: int) -> list[str]: ...

        def unslow_links(self, names: Sequence[str]) -> None: ...

    # -- the server ------------------------------------------------------------------------

    def _toxiproxy(self) -> str:
        with self.shared.edit() as data:
            found = data.get("toxiproxy")
            if found:
                with contextlib.suppress(ChainHarnessError):
                    _call(found["api"], "GET", "/version")
                    return str(found["api"])
            binary = find_toxiproxy(self.adapter.root)
            port = PortAllocator().take(1)[0]
            api = f"http://127.0.0.1:{port}"
            log = open(self.run_dir / "logs" / "toxiproxy.log", "ab")  # noqa: SIM115
            with log:
                server = subprocess.Popen(
                    [str(binary), "-host", "127.0.0.1", "-port", str(port)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, RUN_MARKER: self.run_id},
                    start_new_session=True,
                )
            # Held (and reaped after teardown kills it) like the broker and the agents.
            _CHILDREN.append(server)
            deadline = time.monotonic() + 10
            while True:
                try:
                    _call(api, "GET", "/version")
                    break
                except ChainHarnessError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            data["toxiproxy"] = {"api": api}
            return api

    # -- faults ----------------------------------------------------------------------------

    def _set_loss(self, index: int, loss: float) -> None:
        raise UnsupportedAction(
            "packet loss needs a network namespace per node (the docker backend drops a "
            "share of each node's packets with iptables); process-backend nodes share "
            "127.0.0.1, and these kernels have no netem"
        )

    def add_latency(
        self, index: int, latency_ms: int, jitter_ms: int = 0, loss: float = 0.0
    ) -> str:
        if not self.adapter.has_peers:
            raise UnsupportedAction(
                f"client {self.adapter.display_name} has no peer links to slow down"
            )
        if latency_ms < 0 or jitter_ms < 0:
            raise ValueError("latency and jitter are milliseconds >= 0")
        if not 0 <= loss < 1:
            raise ValueError(f"loss={loss}: expected a share of packets, 0 <= loss < 1")
        if loss or index in self._losses():
            self._set_loss(index, loss)
        if latency_ms == 0 and jitter_ms == 0:
            self._record_latency(index, {**self.latencies().get(index, {}), "loss": loss})
            return "iptables" if loss else "none"
        how = self._add_proxies(index, latency_ms, jitter_ms)
        current = self.latencies()[index]
        self._record_latency(index, {**current, "loss": loss})
        return f"{how}+iptables" if loss else how

    def _losses(self) -> dict[int, float]:
        return {int(k): float(v) for k, v in (self.shared.load().get("loss") or {}).items()}

    def _add_proxies(self, index: int, latency_ms: int, jitter_ms: int) -> str:
        if self.proxied_links():
            # Every link is behind a proxy already: add the toxics, nothing restarts.
            links = self.slow_links(index, latency_ms, jitter_ms)
            self._record_latency(index, {"ms": latency_ms, "jitter": jitter_ms, "links": links})
            return "toxiproxy"
        api = self._toxiproxy()
        toxic = {
            "name": "latency",
            "type": "latency",
            # upstream = what the dialling side (the slow node) sends to its peer
            "stream": "upstream",
            "attributes": {"latency": int(latency_ms), "jitter": int(jitter_ms)},
        }
        current = self.latencies().get(index)
        if current is not None and current.get("proxies"):
            # Already behind proxies: change the toxics; connections stay up.
            for name in current["proxies"]:
                _call(api, "POST", f"/proxies/{name}/toxics/latency", toxic)
            self._record_latency(index, {**current, "ms": latency_ms, "jitter": jitter_ms})
            return "toxiproxy"
        target = self.testnet.nodes[index]
        peers: list[str] = []
        names: list[str] = []
        for other in self.testnet.nodes:
            if other.index == index:
                continue
            name = f"{self.run_id}-{target.name}-{other.name}"
            created = _call(
                api,
                "POST",
                "/proxies",
                {
                    "name": name,
                    "listen": f"{self._proxy_host()}:0",
                    "upstream": self._upstream(other.index, "p2p"),
                    "enabled": True,
                },
            )
            _call(api, "POST", f"/proxies/{name}/toxics", toxic)
            names.append(name)
            host, _, port = str(created["listen"]).rpartition(":")
            peers.append(self.adapter.peer_address(other, host, {"p2p": int(port)}))
        self._record_latency(
            index, {"ms": latency_ms, "jitter": jitter_ms, "proxies": names, "peers": peers}
        )
        # The slow node dials every peer through its proxy, and nobody dials it directly.
        # A restart is what makes that immediate: geth waits ~35 s before redialling a node
        # it dialled recently, and only a restart forgets those dials.
        for other in self.testnet.nodes:
            if other.index != index:
                self._peer(other.index, False, self.enode(index))
        self.adapter.update_peers(self.datadir(index), peers)
        self._restart_if_running(index)
        return "toxiproxy"

    def _record_latency(self, index: int, entry: dict[str, Any] | None) -> None:
        with self.shared.edit() as data:
            table = data.setdefault("latency", {})
            if entry is None:
                table.pop(str(index), None)
            else:
                table[str(index)] = entry

    def _restart_if_running(self, index: int) -> None:
        if self.state(index) in (NodeState.RUNNING, NodeState.PAUSED):
            if self.state(index) is NodeState.PAUSED:
                self.resume(index)
            self.stop(index)
            self.start(index)

    def latencies(self) -> dict[int, dict[str, Any]]:
        return {int(k): v for k, v in (self.shared.load().get("latency") or {}).items()}

    def clear_latency(self, index: int | None = None) -> None:
        current = self.latencies()
        chosen = sorted(current) if index is None else [index] if index in current else []
        api = self.shared.load().get("toxiproxy", {}).get("api")
        for slow in chosen:
            if current[slow].get("loss"):
                self._set_loss(slow, 0.0)
            if current[slow].get("links"):
                self.unslow_links(current[slow]["links"])
            if not current[slow].get("proxies"):
                self._record_latency(slow, None)
                continue
            self.adapter.update_peers(self.datadir(slow), self._place(slow).peers)
            if api:
                for name in current[slow]["proxies"]:
                    with contextlib.suppress(ChainHarnessError):
                        _call(api, "DELETE", f"/proxies/{name}")
            self._record_latency(slow, None)
            self._restart_if_running(slow)
            for other in self.testnet.nodes:
                if other.index != slow:
                    self._peer(other.index, True, self.enode(slow))
