"""Packet-level partitions for containers: iptables rules inside each node's namespace.

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

from .._errors import UnsupportedAction

__all__ = ["netfilter_missing", "rules_for", "set_rules"]


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
