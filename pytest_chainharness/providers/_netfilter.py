"""Packet-level partitions for nodes with a network namespace of their own (containers,
pods): iptables rules inside each node's namespace.

``nsenter -t <pid> -n iptables-restore`` runs the host's iptables in the container's
network namespace, so node images need no iptables or capabilities of their own. Each
node's filter table is replaced as a whole: applying a partition and healing it are one
call per container, and nothing else in the container's namespace is touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._errors import UnsupportedAction
from .._testnet import Testnet
from ..clients.base import ClientAdapter
from ._peering import AdminPeering
from ._state import RunState

__all__ = ["PacketFilters", "netfilter_missing", "rules_for", "set_rules"]


def netfilter_missing() -> str | None:
    """Why packet-level partitions cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "entering a container's network namespace needs root"
    for tool in ("nsenter", "iptables-restore"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def rules_for(
    index: int,
    groups: Sequence[Sequence[int]],
    ip_of: dict[int, str],
    *,
    loss: float = 0.0,
    subnet: str | None = None,
    keep_ports: Sequence[int] = (),
) -> str:
    """The filter table of node ``index``: drop everything to and from other groups, and
    (with ``loss``) that share of the packets it sends into ``subnet``, at random."""
    # No partition: every node is in the one group.
    mine = next((set(g) for g in groups if index in g), {index}) if groups else set(ip_of)
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    for other, ip in sorted(ip_of.items()):
        if other not in mine:
            # DROP, not REJECT: a partition is silence, as when a link goes down; open
            # connections stall instead of closing, and resume if healed soon enough.
            lines.append(f"-A INPUT -s {ip}/32 -j DROP")
            lines.append(f"-A OUTPUT -d {ip}/32 -j DROP")
    if loss > 0 and subnet is not None:
        # The statistic match is per packet, as netem's loss is; RPC answers (to the
        # harness, through the gateway) are spared so the test can still see the node.
        spare = f"-m multiport ! --sports {','.join(map(str, keep_ports))} " if keep_ports else ""
        lines.append(
            f"-A OUTPUT -p tcp -d {subnet} {spare}-m statistic --mode random "
            f"--probability {loss:.6f} -j DROP"
        )
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def set_rules(pid: int, table: str) -> None:
    """Replace the filter table in the network namespace of process ``pid``."""
    done = subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "iptables-restore"],
        input=table,
        capture_output=True,
        text=True,
        timeout=20,
    )
    if done.returncode != 0:
        raise UnsupportedAction(
            f"iptables-restore in the namespace of pid {pid} failed: {done.stderr.strip()}"
        )


class PacketFilters:
    """Partitions and packet loss for a provider whose nodes each have a network namespace
    with an address of its own on the run's subnet. Listed before ``AdminPeering`` in a
    provider's bases: it falls back to that (client-level) where no filter can run, and
    to the link proxies for a client without an admin API."""

    testnet: Testnet
    adapter: ClientAdapter
    shared: RunState
    subnet: str | None

    def ip(self, index: int) -> str:
        raise NotImplementedError

    def _pid(self, index: int) -> int | None:
        """A process in node ``index``'s network namespace (None: the node is not up)."""
        raise NotImplementedError

    if TYPE_CHECKING:  # from ProxiedLinks and AdminPeering, later in the providers' bases

        def proxied_links(self) -> bool: ...

        def cut_links(self, groups: Sequence[Sequence[int]] | None) -> None: ...

        def _save_partition(self, groups: list[list[int]] | None) -> None: ...

    def _ips(self) -> dict[int, str]:
        return {n.index: self.ip(n.index) for n in self.testnet.nodes}

    def _table(self, index: int, data: dict[str, Any]) -> str:
        loss = float((data.get("loss") or {}).get(str(index), 0.0))
        ports = self.adapter.container_ports()
        return rules_for(
            index,
            data.get("partition") or [],
            self._ips(),
            loss=loss,
            subnet=self.subnet,
            keep_ports=sorted({ports[role] for role in self.adapter.api_ports}),
        )

    def _apply_filters(self, indexes: Sequence[int] | None = None) -> None:
        data = self.shared.load()
        for index in range(len(self.testnet.nodes)) if indexes is None else indexes:
            pid = self._pid(index)
            if pid is not None:
                set_rules(pid, self._table(index, data))

    def partition(self, groups: Sequence[Sequence[int]]) -> str:
        if self.proxied_links():
            # The peers' traffic comes from the proxies on the gateway, not from their
            # addresses: a packet filter cannot tell the links apart.
            self._save_partition([list(g) for g in groups])
            self.cut_links(groups)
            return "proxies"
        missing = netfilter_missing()
        if missing is not None:
            # Client-level instead (admin peer removal); the caller is told which ran.
            how = AdminPeering.partition(self, groups)  # type: ignore[arg-type]
            return f"{how} (packet filters unavailable: {missing})"
        self._save_partition([list(g) for g in groups])
        self._apply_filters()
        return "netfilter"

    def _reapply_partition(self, index: int) -> None:
        if self.proxied_links():
            return  # the links keep their state across restarts
        data = self.shared.load()
        if (data.get("partition") or data.get("loss")) and netfilter_missing() is None:
            self._apply_filters([index])

    def heal(self) -> None:
        if self.proxied_links():
            self._save_partition(None)
            self.cut_links(None)
            return
        if netfilter_missing() is None:
            self._save_partition(None)
            self._apply_filters()  # loss, if any, stays until the latency is cleared
        # Re-adding every peer also restores links a client-level partition dropped, and
        # prompts nodes whose connections timed out during the partition to redial now.
        AdminPeering.heal(self)  # type: ignore[arg-type]

    def _set_loss(self, index: int, loss: float) -> None:
        missing = netfilter_missing()
        if missing is not None:
            raise UnsupportedAction(f"packet loss needs packet filters: {missing}")
        with self.shared.edit() as data:
            table = data.setdefault("loss", {})
            if loss > 0:
                table[str(index)] = loss
            else:
                table.pop(str(index), None)
        self._apply_filters([index])
