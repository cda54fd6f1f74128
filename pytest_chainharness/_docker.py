"""The Docker engine as the harness sees it: a client, labels, and removal by run.

Every container and network the harness makes carries ``LABEL_RUN`` (the run id) and
``LABEL_OWNER`` (``host:pid`` of the process that owns the run), so removal never depends
on names and never touches anything else: a run is removed by its label, and a stale run
is one whose owner process is gone.
"""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker.errors

import docker

if __package__:
    from ._proc import alive
else:  # imported by the watchdog script, which runs outside the package
    from _proc import alive  # type: ignore[import-not-found,no-redef]

__all__ = [
    "LABEL_OWNER",
    "LABEL_RUN",
    "docker_client",
    "engine_status",
    "image_exists",
    "owner_label",
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


def owner_label(pid: int | None = None) -> str:
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def _owner_gone(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    # Another host's run (a shared remote engine) is never judged from here.
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return not alive(int(pid))


def remove_run(run_id: str, client: docker.DockerClient | None = None) -> dict[str, int]:
    """Remove every container, then every network, labelled with ``run_id``."""
    own = client is None
    client = client or docker_client()
    removed = {"containers": 0, "networks": 0}
    try:
        selector: dict[str, str | list[str] | bool] = {"label": f"{LABEL_RUN}={run_id}"}
        # sparse: no inspect per container, which races with anyone else removing them.
        containers = client.containers.list(all=True, filters=selector, sparse=True)

        def remove(container: Any) -> int:
            try:
                container.remove(force=True, v=True)
            except docker.errors.NotFound:
                return 0
            return 1

        # The engine removes containers faster side by side than one after another.
        if containers:
            with ThreadPoolExecutor(max_workers=min(16, len(containers))) as pool:
                removed["containers"] = sum(pool.map(remove, containers))
        for network in client.networks.list(filters=selector):
            try:
                network.remove()
                removed["networks"] += 1
            except docker.errors.NotFound:
                pass
    finally:
        if own:
            client.close()
    return removed


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
            if owner and _owner_gone(owner):
                remove_run(run_id, client)
                swept.append(run_id)
    except docker.errors.DockerException:
        pass
    finally:
        client.close()
    return swept
