"""Containers beside the chain: declared in YAML, started after the nodes, reached by name.

A services file (``--chain-services=FILE`` or ini ``chain_services``)::

    services:
      mqtt: builtin                        # the harness's own broker (mosquitto)
      indexer:
        image: chainharness/python:3.11
        command: ["python3", "/app/indexer.py"]
        env:
          RPC_URL: "{node0.rpc_url}"       # as seen from inside the run's network
        volumes:
          ./indexer: /app                  # relative to the services file; read-only
        ports: [8080]                      # published on 127.0.0.1
        ready:                             # one of: log, http, command
          http: {port: 8080, path: /health}
        timeout: 30
        depends_on: [mqtt]

Placeholders: ``{nodeN.rpc_url}``, ``{nodeN.ws_url}``, ``{nodeN.host}``, ``{chain_id}``,
``{run_id}`` and ``{SERVICE.host}`` (another service's name on the network).
"""

from __future__ import annotations

import contextlib
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import yaml
from docker.types import EndpointConfig
from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import (
    ExecWaitStrategy,
    HttpWaitStrategy,
    LogMessageWaitStrategy,
)
from testcontainers.core.waiting_utils import WaitStrategy

from ._docker import LABEL_OWNER, LABEL_ROLE, LABEL_RUN, docker_client
from ._errors import ChainHarnessError, NetworkStartError
from ._ports import PortAllocator
from .images import MOSQUITTO_IMAGE
from .providers.docker import ensure_image

__all__ = ["ServiceSpec", "Services", "ServicesError", "load_services", "start_services"]

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_KEYS = {"image", "command", "env", "volumes", "ports", "ready", "timeout", "depends_on"}


class ServicesError(ChainHarnessError):
    """The services file is wrong, or a service did not become ready."""


@dataclass
class ServiceSpec:
    name: str
    image: str
    command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    volumes: dict[str, str] = field(default_factory=dict)
    ports: list[int] = field(default_factory=list)
    #: ("log", text) | ("http", "port:path") | ("command", argv)
    ready: tuple[str, Any] | None = None
    timeout: float = 30.0
    depends_on: list[str] = field(default_factory=list)
    #: Mount ``volumes`` read-write (the built-in broker keeps its persistence there);
    #: a user's services get them read-only.
    writable: bool = False
    #: ``uid:gid`` to run as (None: the image's user).
    user: str | None = None


def builtin_mqtt(image: str = MOSQUITTO_IMAGE) -> ServiceSpec:
    """The bus's broker: mosquitto listening on 1883 for anyone on the run's network."""
    # Both Debian's mosquitto and eclipse-mosquitto:2 listen on localhost only unless
    # told otherwise; the config is written at start so either image works.
    script = (
        "printf 'listener 1883 0.0.0.0\\nallow_anonymous true\\n' > /tmp/chainharness.conf"
        " && exec mosquitto -c /tmp/chainharness.conf"
    )
    return ServiceSpec(
        name="mqtt",
        image=image,
        command=["sh", "-c", script],
        ports=[1883],
        ready=("log", "running"),
        timeout=30.0,
    )


def _fail(path: Path, name: str, message: str) -> ServicesError:
    return ServicesError(f"{path}: service {name!r}: {message}")


def load_services(path: Path) -> list[ServiceSpec]:
    """Parse and check a services file; services come back in start order."""
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ServicesError(f"services file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ServicesError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise ServicesError(f"{path}: expected a top-level 'services:' mapping")
    specs: dict[str, ServiceSpec] = {}
    for name, body in doc["services"].items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise _fail(path, str(name), "names are lower-case letters, digits and '-'")
        if body == "builtin":
            if name != "mqtt":
                raise _fail(path, name, "the only built-in service is 'mqtt'")
            specs[name] = builtin_mqtt()
            continue
        if not isinstance(body, dict):
            raise _fail(path, name, "expected a mapping (or 'builtin')")
        unknown = set(body) - _KEYS
        if unknown:
            raise _fail(path, name, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}")
        if not isinstance(body.get("image"), str):
            raise _fail(path, name, "'image' is required")
        spec = ServiceSpec(name=name, image=body["image"])
        command = body.get("command")
        if command is not None:
            if isinstance(command, str):
                command = ["sh", "-c", command]
            if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
                raise _fail(path, name, "'command' is a string or a list of strings")
            spec.command = command
        env = body.get("env") or {}
        if not isinstance(env, dict):
            raise _fail(path, name, "'env' is a mapping")
        spec.env = {str(k): str(v) for k, v in env.items()}
        volumes = body.get("volumes") or {}
        if not isinstance(volumes, dict):
            raise _fail(path, name, "'volumes' maps host paths to container paths")
        for host, inside in volumes.items():
            source = (path.parent / str(host)).resolve()
            if not source.exists():
                raise _fail(path, name, f"volume source {source} does not exist")
            spec.volumes[str(source)] = str(inside)
        ports = body.get("ports") or []
        if not isinstance(ports, list) or not all(isinstance(p, int) for p in ports):
            raise _fail(path, name, "'ports' is a list of container port numbers")
        spec.ports = ports
        spec.ready = _ready(path, name, body.get("ready"))
        try:
            spec.timeout = float(body.get("timeout", 30))
        except (TypeError, ValueError):
            raise _fail(path, name, "'timeout' is seconds") from None
        depends = body.get("depends_on") or []
        if not isinstance(depends, list):
            raise _fail(path, name, "'depends_on' is a list of service names")
        spec.depends_on = [str(d) for d in depends]
        specs[name] = spec
    for spec in specs.values():
        for dep in spec.depends_on:
            if dep not in specs:
                raise _fail(path, spec.name, f"depends_on {dep!r}, which is not declared")
    return _ordered(path, specs)


def _ready(path: Path, name: str, ready: Any) -> tuple[str, Any] | None:
    if ready is None:
        return None
    if not isinstance(ready, dict) or len(ready) != 1:
        raise _fail(path, name, "'ready' has exactly one of: log, http, command")
    kind, value = next(iter(ready.items()))
    if kind == "log" and isinstance(value, str):
        return ("log", value)
    if kind == "http" and isinstance(value, dict) and isinstance(value.get("port"), int):
        return ("http", (value["port"], str(value.get("path", "/"))))
    if kind == "command" and isinstance(value, list | str):
        return ("command", value if isinstance(value, list) else ["sh", "-c", value])
    raise _fail(
        path,
        name,
        f"'ready: {kind}' is not understood (log: TEXT, http: {{port, path}}, command: ARGV)",
    )


def _ordered(path: Path, specs: dict[str, ServiceSpec]) -> list[ServiceSpec]:
    done: list[ServiceSpec] = []
    visiting: set[str] = set()

    def visit(spec: ServiceSpec) -> None:
        if spec in done:
            return
        if spec.name in visiting:
            raise _fail(path, spec.name, "depends_on forms a cycle")
        visiting.add(spec.name)
        for dep in spec.depends_on:
            visit(specs[dep])
        visiting.discard(spec.name)
        done.append(spec)

    for spec in specs.values():
        visit(spec)
    return done


class _Obj:
    def __init__(self, **attrs: str) -> None:
        self.__dict__.update(attrs)


def placeholders(provider: Any, specs: list[ServiceSpec]) -> dict[str, Any]:
    """The values ``{...}`` in a service's env and command may use."""
    ports = provider.adapter.container_ports()
    values: dict[str, Any] = {"chain_id": provider.testnet.chain_id, "run_id": provider.run_id}
    for node in provider.testnet.nodes:
        values[node.name] = _Obj(
            host=node.name,
            rpc_url=f"http://{node.name}:{ports['rpc']}",
            # A client without a ws port serves WebSocket on its rpc port (anvil).
            ws_url=f"ws://{node.name}:{ports.get('ws', ports['rpc'])}",
        )
    for spec in specs:
        values[spec.name] = _Obj(host=spec.name)
    return values


def _fill(text: str, values: dict[str, Any], service: str) -> str:
    try:
        return string.Formatter().vformat(text, (), values)
    except (KeyError, AttributeError) as exc:
        raise ServicesError(
            f"service {service!r}: unknown placeholder in {text!r}: {exc}"
        ) from None


def _strategy(spec: ServiceSpec) -> WaitStrategy | None:
    if spec.ready is None:
        return None
    kind, value = spec.ready
    strategy: WaitStrategy
    if kind == "log":
        strategy = LogMessageWaitStrategy(value)
    elif kind == "http":
        strategy = HttpWaitStrategy(value[0], value[1])
    else:
        strategy = ExecWaitStrategy(value)
    return strategy.with_startup_timeout(int(spec.timeout)).with_poll_interval(0.1)


@dataclass
class Services:
    """The running services of a run (the ``services`` fixture)."""

    #: service name → container port → published host port on 127.0.0.1.
    published: dict[str, dict[int, int]]
    run_id: str

    @property
    def names(self) -> list[str]:
        return list(self.published)

    def host_port(self, name: str, port: int | None = None) -> int:
        ports = self._ports(name)
        if port is None:
            return next(iter(ports.values()))
        if port not in ports:
            raise ServicesError(f"service {name!r} publishes {sorted(ports)}, not {port}")
        return ports[port]

    def url(self, name: str, port: int | None = None, *, scheme: str = "http") -> str:
        """``scheme://127.0.0.1:PORT`` of a published service port (the first by default)."""
        return f"{scheme}://127.0.0.1:{self.host_port(name, port)}"

    def logs(self, name: str, tail: int = 200) -> str:
        self._ports(name)
        client = docker_client()
        try:
            container = client.containers.get(f"{self.run_id}-svc-{name}")
            return str(container.logs(tail=tail).decode(errors="replace"))
        except docker.errors.NotFound:
            return ""
        finally:
            client.close()

    def _ports(self, name: str) -> dict[int, int]:
        if name not in self.published:
            raise ServicesError(f"no service {name!r}; this run has: {', '.join(self.names)}")
        ports = self.published[name]
        if not ports:
            raise ServicesError(f"service {name!r} publishes no port")
        return ports

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "published": {n: {str(k): v for k, v in p.items()} for n, p in self.published.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Services:
        return cls(
            run_id=data["run_id"],
            published={n: {int(k): v for k, v in p.items()} for n, p in data["published"].items()},
        )


def start_services(provider: Any, specs: list[ServiceSpec]) -> Services:
    """Start ``specs`` in order on the provider's docker network, each waited on.

    A service that fails its readiness check raises ``NetworkStartError`` with its log
    tail; the caller tears the whole run down.
    """
    values = placeholders(provider, specs)
    client = docker_client()
    published: dict[str, dict[int, int]] = {}
    try:
        for spec in specs:
            ensure_image(client, spec.image, f"service {spec.name}'s image")
            published[spec.name] = _start_service(provider, spec, values, client)
    finally:
        client.close()
    return Services(published=published, run_id=provider.run_id)


#: How often a service may be given fresh host ports after another program took one.
PORT_RETRIES = 3


def _start_service(
    provider: Any, spec: ServiceSpec, values: dict[str, Any], client: Any
) -> dict[int, int]:
    # Host ports are chosen here, not left to the engine: an ephemeral one changes when
    # the container restarts, and whoever reached the service there (the agents and
    # buses, for the broker) would lose it for good.
    for attempt in range(PORT_RETRIES):
        hosts = dict(zip(spec.ports, PortAllocator().take(len(spec.ports)), strict=True))
        container = _container(provider, spec, values, client, hosts)
        try:
            container.start()
        except Exception as exc:
            text = str(exc)
            taken = "port is already allocated" in text or "address already in use" in text
            if taken and attempt + 1 < PORT_RETRIES:
                with contextlib.suppress(Exception):
                    container.stop()
                continue
            raise NetworkStartError(
                f"service {spec.name} ({spec.image}) did not become ready "
                f"({spec.ready[0] if spec.ready else 'start'} check, {spec.timeout:g}s): "
                f"{text.splitlines()[0] if text else type(exc).__name__}\n"
                f"last 30 lines of its log:\n{_tail(container)}"
            ) from exc
        return hosts
    raise AssertionError("unreachable")  # the last attempt returns or raises


def _container(
    provider: Any, spec: ServiceSpec, values: dict[str, Any], client: Any, hosts: dict[int, int]
) -> DockerContainer:
    container = (
        DockerContainer(spec.image)
        .with_name(f"{provider.run_id}-svc-{spec.name}")
        .with_kwargs(
            labels={
                LABEL_RUN: provider.run_id,
                LABEL_OWNER: provider.owner,
                LABEL_ROLE: f"service:{spec.name}",
            },
            network=provider.network_name,
            networking_config={
                provider.network_name: EndpointConfig(client.api.api_version, aliases=[spec.name])
            },
            **({"user": spec.user} if spec.user else {}),
        )
    )
    if spec.command:
        container.with_command([_fill(c, values, spec.name) for c in spec.command])
    for key, value in spec.env.items():
        container.with_env(key, _fill(value, values, spec.name))
    for source, inside in spec.volumes.items():
        container.with_volume_mapping(source, inside, mode="rw" if spec.writable else "ro")
    for port, host in hosts.items():
        container.ports[f"{port}/tcp"] = ("127.0.0.1", host)  # type: ignore[assignment]
    strategy = _strategy(spec)
    if strategy is not None:
        container.waiting_for(strategy)
    return container


def _tail(container: DockerContainer) -> str:
    try:
        out, err = container.get_logs()
    except Exception:  # the container may be gone already; the error above says why
        return "(no log)"
    lines = (out + err).decode(errors="replace").splitlines()
    return "\n".join(lines[-30:])
