"""The run's MQTT broker: mosquitto as a local process or a container, or an external one.

Every broker the harness starts listens on loopback only (a container publishes on
127.0.0.1) and accepts only the run's own credentials, generated per run; topics start
with ``chainharness/<run id>/`` so runs sharing an external broker never mix.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ._errors import ChainHarnessError, ToolNotFound
from ._ports import PortAllocator
from ._proc import RUN_MARKER, hand_over

__all__ = [
    "BrokerEndpoint",
    "check_reachable",
    "parse_bus_url",
    "reap_children",
    "release_children",
    "start_local_broker",
]

#: Broker and agent processes this process started: kept referenced until reaped, since a
#: Popen collected while its process runs is a ResourceWarning (an error under -W error).
_CHILDREN: list[subprocess.Popen[bytes]] = []


def release_children() -> None:
    """Drop the handles on brokers and agents that keep running for the run's owner to
    stop (this process is a worker that did not start the run's teardown)."""
    hand_over(_CHILDREN)


def reap_children() -> None:
    """Collect the exit status of brokers and agents that teardown has killed."""
    for child in list(_CHILDREN):
        if child.poll() is not None:
            _CHILDREN.remove(child)


@dataclass(frozen=True)
class BrokerEndpoint:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    #: ``mosquitto`` (local process), ``container``, ``external``.
    kind: str = "external"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BrokerEndpoint:
        return cls(**data)


def parse_bus_url(url: str) -> BrokerEndpoint:
    """``mqtt://[user:password@]host:port`` → endpoint; ``ValueError`` saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt":
        raise ValueError("expected mqtt://[user:password@]HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port is not a number in 1..65535") from None
    if not parts.hostname or port is None:
        raise ValueError("expected mqtt://[user:password@]HOST:PORT (host and port required)")
    return BrokerEndpoint(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        kind="external",
    )


def check_reachable(endpoint: BrokerEndpoint, timeout: float = 3.0) -> None:
    """Connect once over MQTT; ``ChainHarnessError`` naming the URL when that fails."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ch-probe-{os.getpid()}")
    if endpoint.username:
        client.username_pw_set(endpoint.username, endpoint.password)
    try:
        client.connect(endpoint.host, endpoint.port, keepalive=10)
    except OSError as exc:
        raise ChainHarnessError(
            f"the MQTT broker at {endpoint.url} is unreachable: {exc}"
        ) from None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not client.is_connected():
            client.loop(timeout=0.05)
        if not client.is_connected():
            raise ChainHarnessError(
                f"the MQTT broker at {endpoint.url} did not accept a connection within "
                f"{timeout:g}s (wrong credentials, or not an MQTT broker)"
            )
    finally:
        client.disconnect()


def password_line(username: str, password: str) -> str:
    """A mosquitto password-file line (PBKDF2-SHA512, as mosquitto_passwd writes it)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    encoded = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"{username}:$7$101${encoded[0]}${encoded[1]}\n"


def write_config(
    directory: Path, *, listen: str, port: int, data_dir: str, run_as: str | None = None
) -> tuple[str, str]:
    """mosquitto.conf and a password file for fresh per-run credentials; returns them."""
    directory.mkdir(parents=True, exist_ok=True)
    username, password = "chainharness", secrets.token_urlsafe(18)
    (directory / "passwd").write_text(password_line(username, password))
    (directory / "mosquitto.conf").write_text(
        f"listener {port} {listen}\n"
        "allow_anonymous false\n"
        f"password_file {data_dir}/passwd\n"
        # Sessions of subscribers survive a broker restart, so what agents send right after
        # it reaches subscribers that have not reconnected yet.
        "persistence true\n"
        f"persistence_location {data_dir}/\n"
        "autosave_interval 1\n"
        # Agents queue while the broker restarts; the broker itself may drop nothing it
        # accepted, so queues are generous.
        "max_queued_messages 100000\n"
        "max_inflight_messages 0\n"
        # Without it Nagle's algorithm holds small events back for tens of milliseconds.
        "set_tcp_nodelay true\n" + (f"user {run_as}\n" if run_as else "")
        # Started as root, mosquitto would switch to its own user, which cannot read a
        # run directory under a private tmp folder.
    )
    return username, password


def start_local_broker(
    run_dir: Path, run_id: str
) -> tuple[BrokerEndpoint, subprocess.Popen[bytes]]:
    """A broker as a child process on 127.0.0.1: mosquitto, else amqtt (pure Python).

    ``CHAINHARNESS_BROKER=amqtt`` picks amqtt even where mosquitto is installed.
    """
    binary = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if os.environ.get("CHAINHARNESS_BROKER") == "amqtt":
        binary = None
    port = PortAllocator().take(1)[0]
    conf_dir = run_dir / "broker"
    if binary is not None:
        import pwd

        username, password = write_config(
            conf_dir,
            listen="127.0.0.1",
            port=port,
            data_dir=str(conf_dir),
            run_as=pwd.getpwuid(os.getuid()).pw_name,
        )
        argv = [binary, "-c", str(conf_dir / "mosquitto.conf")]
        kind = "mosquitto"
    else:
        amqtt = shutil.which("amqtt") or str(Path(sys.executable).parent / "amqtt")
        if not Path(amqtt).exists():
            raise ToolNotFound(
                "the event bus needs a broker: apt-get install mosquitto (scripts/setup.sh "
                "installs it) or pip install amqtt, or pass --chain-bus=mqtt://HOST:PORT"
            )
        username, password = write_amqtt_config(conf_dir, port=port)
        argv = [amqtt, "-c", str(conf_dir / "amqtt.yaml")]
        kind = "amqtt"
    log = (run_dir / "logs" / "broker.log").open("ab")
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, RUN_MARKER: run_id},
        process_group=0,
    )
    log.close()
    _CHILDREN.append(process)
    endpoint = BrokerEndpoint("127.0.0.1", port, username, password, kind=kind)
    wait_listening(endpoint, process)
    return endpoint, process


def write_amqtt_config(directory: Path, *, port: int) -> tuple[str, str]:
    """amqtt's YAML config and an argon2 password file, for when mosquitto is absent."""
    from pwdlib import PasswordHash  # installed with amqtt
    from pwdlib.hashers.argon2 import Argon2Hasher

    directory.mkdir(parents=True, exist_ok=True)
    username, password = "chainharness", secrets.token_urlsafe(18)
    hashed = PasswordHash((Argon2Hasher(),)).hash(password)
    (directory / "passwd").write_text(f"{username}:{hashed}\n")
    (directory / "amqtt.yaml").write_text(
        "listeners:\n"
        "  default:\n"
        "    type: tcp\n"
        f"    bind: 127.0.0.1:{port}\n"
        "plugins:\n"
        "  amqtt.plugins.authentication.FileAuthPlugin:\n"
        f"    password_file: {directory / 'passwd'}\n"
    )
    return username, password


def wait_listening(
    endpoint: BrokerEndpoint, process: subprocess.Popen[bytes] | None, timeout: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ChainHarnessError(f"the broker exited at start (code {process.returncode})")
        try:
            with socket.create_connection((endpoint.host, endpoint.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise ChainHarnessError(f"the broker at {endpoint.url} did not listen within {timeout:g}s")


def start_container_broker(provider: Any, image: str) -> BrokerEndpoint:
    """mosquitto in a container on the run's network, published on 127.0.0.1."""
    from .services import ServiceSpec, start_services

    conf_dir = provider.run_dir / "broker"
    # Run as the harness's user (below). As root, mosquitto would drop to its own user,
    # which cannot write its sessions into the run's folder: `user root` keeps it.
    username, password = write_config(
        conf_dir,
        listen="0.0.0.0",
        port=1883,
        data_dir="/ch-broker",
        run_as="root" if os.getuid() == 0 else None,
    )
    spec = ServiceSpec(
        name="bus",
        image=image,
        command=["mosquitto", "-c", "/ch-broker/mosquitto.conf"],
        # Read-write: mosquitto saves its sessions there, so a restarted broker still has
        # every subscriber's queue (a read-only mount lost the events published while a
        # subscriber was reconnecting).
        volumes={str(conf_dir): "/ch-broker"},
        writable=True,
        # As the harness's user, who owns the run's folder (0700).
        user=f"{os.getuid()}:{os.getgid()}",
        ports=[1883],
        ready=("log", "running"),
        timeout=30.0,
    )
    services = start_services(provider, [spec])
    return BrokerEndpoint(
        "127.0.0.1", services.host_port("bus", 1883), username, password, kind="container"
    )


def start_agents(
    endpoint: BrokerEndpoint,
    *,
    run_id: str,
    run_dir: Path,
    nodes: list[tuple[str, list[str]]],
    has_peers: bool,
) -> list[subprocess.Popen[bytes]]:
    """One agent process per (name, how it follows the node: ``ClientAdapter.agent_args``);
    the first also records the history."""
    from .agent import script_path

    agents = []
    for i, (name, follow) in enumerate(nodes):
        argv = [
            sys.executable,
            script_path(),
            "--run", run_id,
            "--node", name,
            *follow,
            "--broker", f"{endpoint.host}:{endpoint.port}",
        ]  # fmt: skip
        if endpoint.username:
            argv += ["--user", endpoint.username]
        argv += ["--own", str(run_dir / "logs" / f"events-{name}.jsonl")]
        argv += ["--alive-while", str(run_dir / "nodes")]
        if i == 0:
            argv += ["--record", str(run_dir / "logs" / "events-bus.jsonl")]
        if not has_peers:
            argv.append("--no-peers")
        log = (run_dir / "logs" / f"agent-{name}.log").open("ab")
        agents.append(
            subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # The password stays out of the process list.
                env={
                    **os.environ,
                    RUN_MARKER: run_id,
                    "CHAINHARNESS_BUS_PASSWORD": endpoint.password or "",
                },
                process_group=0,
            )
        )
        log.close()
    _CHILDREN.extend(agents)
    return agents
