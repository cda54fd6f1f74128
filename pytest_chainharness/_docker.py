"""The Docker engine as the harness sees it: a client, labels, and removal by run.

Every container and network the harness makes carries ``LABEL_RUN`` (the run id) and
``LABEL_OWNER`` (``host:pid`` of the process that owns the run), so removal never depends
on names and never touches anything else: a run is removed by its label, and a stale run
is one whose owner process is gone.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker.errors

import docker

if __package__:
    from ._proc import every_step, owner_gone
    from ._proc import owner_tag as owner_label
else:  # imported by the watchdog script, which runs outside the package
    from _proc import every_step, owner_gone  # type: ignore[import-not-found,no-redef]
    from _proc import owner_tag as owner_label  # type: ignore[no-redef]

__all__ = [
    "LABEL_OWNER",
    "LABEL_RUN",
    "docker_client",
    "engine_status",
    "image_exists",
    "owner_label",
    "remove_network",
    "remove_run",
    "sweep_stale",
]

LABEL_RUN = "io.chainharness.run"
LABEL_OWNER = "io.chainharness.owner"
LABEL_ROLE = "io.chainharness.role"


def docker_client(timeout: int = 60) -> docker.DockerClient:
    """A client for the engine ``DOCKER_HOST`` (or the default socket) names."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://"):
        # docker-py leaks its socket when a unix connect fails; find out without it.
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(timeout)
            probe.connect(host.removeprefix("unix://"))
        except OSError as exc:
            raise docker.errors.DockerException(
                f"Error while fetching server API version: {exc}"
            ) from None
        finally:
            probe.close()
    return docker.from_env(timeout=timeout)


def engine_status() -> tuple[bool, str]:
    """Whether an engine answers, and a short reason either way."""
    try:
        client = docker_client(timeout=5)
    except docker.errors.DockerException as exc:
        return False, f"no Docker engine answers ({_short(exc)})"
    try:
        version = client.version().get("Version", "?")
    except (docker.errors.DockerException, OSError) as exc:
        return False, f"no Docker engine answers ({_short(exc)})"
    finally:
        client.close()
    return True, f"Docker engine {version}"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def image_exists(tag: str) -> bool:
    client = docker_client(timeout=10)
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    finally:
        client.close()
    return True


def image_id(ref: str) -> str | None:
    """The id of local image ``ref``; None when there is no such image or no engine."""
    try:
        client = docker_client(timeout=10)
    except docker.errors.DockerException:
        return None
    try:
        # A listing, not images.get: a 404 response left in the pool leaks its socket.
        ids = client.api.images(name=ref, quiet=True)
    except (docker.errors.DockerException, OSError):
        return None
    finally:
        client.close()
    return str(ids[0]) if ids else None


def remove_run(run_id: str, client: docker.DockerClient | None = None) -> dict[str, int]:
    """Remove every container, then every network, labelled with ``run_id``. The
    networks go even if a container would not: a network left over outlives the run."""
    own = client is None
    client = client or docker_client()
    removed = {"containers": 0, "networks": 0}
    selector: dict[str, str | list[str] | bool] = {"label": f"{LABEL_RUN}={run_id}"}

    def remove(container: Any) -> int:
        try:
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            return 0
        return 1

    def containers() -> None:
        # sparse: no inspect per container, which races with anyone else removing them.
        found = client.containers.list(all=True, filters=selector, sparse=True)
        # The engine removes containers faster side by side than one after another.
        if found:
            with ThreadPoolExecutor(max_workers=min(16, len(found))) as pool:
                removed["containers"] = sum(pool.map(remove, found))

    def networks() -> None:
        for network in client.networks.list(filters=selector):
            removed["networks"] += remove_network(network)

    try:
        every_step(containers, networks)
    finally:
        if own:
            client.close()
    return removed


#: How long a network's removal is retried while it still has endpoints.
NETWORK_RELEASE_TIMEOUT = 30.0


def remove_network(network: Any, timeout: float = NETWORK_RELEASE_TIMEOUT) -> int:
    """Remove ``network``, forcing off whatever endpoints it still has; 1 if removed, 0
    if it was gone already.

    A container's removal can return before the engine has released its endpoint on
    the network (seen on a loaded machine: "network ... has active endpoints" right after
    every container of the run was removed), and a container the run does not know of
    may have been attached to it. The network is the run's, so each endpoint is
    disconnected with force, and the removal is retried until ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            network.remove()
            return 1
        except docker.errors.NotFound:
            return 0
        except docker.errors.APIError as exc:
            if "active endpoints" not in str(exc) or time.monotonic() > deadline:
                raise
        try:
            network.reload()
        except docker.errors.NotFound:
            return 0
        for endpoint in network.attrs.get("Containers") or {}:
            # Gone meanwhile, or released by the engine itself: the next try shows.
            with contextlib.suppress(docker.errors.APIError):
                network.disconnect(endpoint, force=True)
        time.sleep(0.2)


def runs_on_engine(client: docker.DockerClient) -> dict[str, str]:
    """Run id → owner label for every harness container and network on the engine."""
    found: dict[str, str] = {}
    objects: list[Any] = [
        *client.containers.list(all=True, filters={"label": LABEL_RUN}, sparse=True),
        *client.networks.list(filters={"label": LABEL_RUN}),
    ]
    for obj in objects:
        labels = obj.attrs.get("Config", {}).get("Labels") or obj.attrs.get("Labels") or {}
        if LABEL_RUN in labels:
            found[labels[LABEL_RUN]] = labels.get(LABEL_OWNER, "")
    return found


def sweep_stale() -> list[str]:
    """Remove runs whose owner process on this host is gone; returns their ids."""
    try:
        client = docker_client(timeout=10)
    except docker.errors.DockerException:
        return []
    swept = []
    try:
        for run_id, owner in runs_on_engine(client).items():
            if owner and owner_gone(owner):
                remove_run(run_id, client)
                swept.append(run_id)
    except docker.errors.DockerException:
        pass
    finally:
        client.close()
    return swept
