"""Command-line options and ini keys, resolved and checked once into ``Settings``.

Every option has an ini key with the same name in snake case (``--chain-nodes`` →
``chain_nodes``); the command line wins. Bad values raise ``pytest.UsageError`` (exit 4)
naming the option and what is allowed, before anything is started.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ._errors import ChainHarnessError
from .clients import CLIENTS, SPEC_CLIENTS, available_clients, get_client
from .clients.spec import ClientSpec, ClientSpecError, find_spec_binary, is_spec_path, load_spec
from .providers import BACKENDS, backend_refused, default_image, get_backend, runs_images

__all__ = ["Settings", "add_options", "read_settings"]

DEFAULT_NODES = 4
DEFAULT_MAX_NODES = 32
DEFAULT_ACCOUNTS = 512


@dataclass(frozen=True)
class Settings:
    """The resolved chain options of one pytest run."""

    nodes: int
    max_nodes: int
    client: str
    backend: str
    period: int
    #: None: draw a fresh random seed for this run.
    seed: int | None
    keep: bool
    #: The client binary to run on the process backend (``--chain-binary``; for geth also
    #: ``--chain-geth``); None: the client finds its own.
    binary: str | None
    accounts: int
    signers: int | None
    start_timeout: float
    chain_id: int
    #: Node image for the docker and kubernetes backends (a local build or a registry
    #: reference).
    image: str
    #: State file of a network started by ``chainharness up`` to use instead of starting one.
    attach: Path | None = None
    #: Services file (containers started beside the chain).
    services: Path | None = None
    #: External MQTT broker URL; None: the harness starts one.
    bus: str | None = None
    #: Broker image on the docker backend.
    bus_image: str = "chainharness/mosquitto:2"
    #: Keep the run's logs under .chainharness/failed/ even when every test passed.
    keep_logs: bool = False
    #: Let the client's repair act on stalls it cannot leave alone (--chain-repair).
    repair: bool = True
    #: Where the run report goes (--chain-report); None: no report.
    report: Path | None = None
    #: The kubernetes backend's kubeconfig; None: the usual lookup.
    kubeconfig: Path | None = None
    #: The kubernetes backend's namespace; None: one per run.
    namespace: str | None = None


# (dest/ini name, flag, help, ini type, default)
_OPTIONS: list[tuple[str, str, str, str, Any]] = [
    (
        "chain_nodes",
        "--chain-nodes",
        "nodes in the network, 1..chain_max_nodes (default 4)",
        "string",
        None,
    ),
    (
        "chain_client",
        "--chain-client",
        f"client adapter: {', '.join(CLIENTS)} (default geth)",
        "string",
        None,
    ),
    (
        "chain_backend",
        "--chain-backend",
        f"where nodes run: {'|'.join(BACKENDS)} (default auto)",
        "string",
        None,
    ),
    ("chain_period", "--chain-period", "block period in seconds (default 1)", "string", None),
    (
        "chain_seed",
        "--chain-seed",
        "seed for keys, accounts and fault schedules (default: random, printed in the header)",
        "string",
        None,
    ),
    (
        "chain_image",
        "--chain-image",
        "node image for the docker and kubernetes backends (default: the local "
        "chainharness/<client> image; e.g. ethereum/client-go:v1.13.15)",
        "string",
        None,
    ),
    (
        "chain_kubeconfig",
        "--chain-kubeconfig",
        "kubeconfig of the cluster the kubernetes backend runs on (default: $KUBECONFIG, "
        "else ~/.kube/config)",
        "string",
        None,
    ),
    (
        "chain_namespace",
        "--chain-namespace",
        "namespace of the kubernetes backend's pods (default: one per run, made and removed "
        "by the run)",
        "string",
        None,
    ),
    (
        "chain_attach",
        "--chain-attach",
        "state file written by 'chainharness up': use that network instead of starting one",
        "string",
        None,
    ),
    (
        "chain_services",
        "--chain-services",
        "YAML file of containers to start beside the chain (see docs)",
        "string",
        None,
    ),
    (
        "chain_bus",
        "--chain-bus",
        "use this MQTT broker (mqtt://[user:password@]HOST:PORT) instead of starting one",
        "string",
        None,
    ),
    (
        "chain_repair",
        "--chain-repair",
        "on|off: let the client's repair break stalls it cannot leave on its own (geth: the "
        "Clique deadlock after a heal); off shows the raw behaviour (default on)",
        "string",
        None,
    ),
    (
        "chain_report",
        "--chain-report",
        "write the run report to DIR: index.html with every test's pictures (heights, "
        "peers and faults over time; load tx/s, inclusion latency, txpool)",
        "string",
        None,
    ),
    (
        "chain_binary",
        "--chain-binary",
        "the client binary for the process backend (default: the client finds it, e.g. "
        "geth: $CHAINHARNESS_GETH, the tools folder, PATH)",
        "string",
        None,
    ),
    (
        "chain_geth",
        "--chain-geth",
        "the geth binary (kept name of --chain-binary for the geth client)",
        "string",
        None,
    ),
]


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("chainharness", "multi-node blockchain networks")
    for dest, flag, help_text, ini_type, default in _OPTIONS:
        group.addoption(flag, dest=dest, default=default, help=help_text)
        parser.addini(dest, help=help_text, type=ini_type, default=default)  # type: ignore[arg-type]
    group.addoption(
        "--chain-keep",
        dest="chain_keep",
        action="store_true",
        default=None,
        help="leave the network running after the session and print how to reach it",
    )
    parser.addini(
        "chain_keep", "leave the network running after the session", type="bool", default=False
    )
    group.addoption(
        "--chain-keep-logs",
        dest="chain_keep_logs",
        action="store_true",
        default=None,
        help="keep the run's node logs, events and state under .chainharness/failed/<run>/ "
        "even when every test passed (a run with a failure always keeps them)",
    )
    parser.addini(
        "chain_keep_logs",
        "keep the run's logs under .chainharness/failed/ for passing runs too",
        type="bool",
        default=False,
    )
    parser.addini(
        "chain_max_nodes",
        f"largest allowed --chain-nodes (default {DEFAULT_MAX_NODES})",
        default=str(DEFAULT_MAX_NODES),
    )
    parser.addini(
        "chain_accounts",
        f"genesis-funded accounts shared by all workers (default {DEFAULT_ACCOUNTS})",
        default=str(DEFAULT_ACCOUNTS),
    )
    parser.addini("chain_signers", "how many nodes are Clique signers (default: all)", default="")
    parser.addini(
        "chain_start_timeout", "seconds the network may take to be ready (default 60)", default="60"
    )
    parser.addini("chain_id", "chain id of the network (default 1337)", default="1337")


def _raw(config: pytest.Config, name: str) -> Any:
    cli = config.getoption(name, default=None)
    if cli is not None:
        return cli, f"--{name.replace('_', '-')}"
    value = config.getini(name)
    return (value if value not in ("", None, []) else None), f"ini {name}"


def _int(config: pytest.Config, name: str, default: int, low: int, high: int | None) -> int:
    value, where = _raw(config, name)
    if value is None:
        return default
    allowed = f"{low}..{high}" if high is not None else f">= {low}"
    try:
        number = int(str(value).strip())
    except ValueError:
        raise pytest.UsageError(f"{where}={value!r}: expected a whole number {allowed}") from None
    if number < low or (high is not None and number > high):
        raise pytest.UsageError(f"{where}={number}: out of range, allowed {allowed}")
    return number


def read_settings(config: pytest.Config) -> Settings:
    """Resolve and check every chain option; ``pytest.UsageError`` on a bad value."""
    max_nodes = _int(config, "chain_max_nodes", DEFAULT_MAX_NODES, 1, 256)
    nodes = _int(config, "chain_nodes", DEFAULT_NODES, 1, max_nodes)

    client, where = _raw(config, "chain_client")
    client = str(client or "geth")
    try:
        clients = available_clients()
    except ChainHarnessError as exc:
        raise pytest.UsageError(f"{where}: {exc}") from None
    spec: ClientSpec | None = None
    if is_spec_path(client):
        from .clients.spec_client import SpecAdapter

        path = Path(client).expanduser()
        if not path.is_absolute():
            path = (config.invocation_params.dir / path).resolve()
        try:
            spec = load_spec(path, root=config.rootpath, check_binary=False)
            get_client(str(path), root=config.rootpath)  # its adapter: class, if it names one
        except ClientSpecError as exc:
            raise pytest.UsageError(f"{where}: {exc}") from None
        client = str(path)
        max_for_client = SpecAdapter.max_nodes
    elif client not in clients and client not in SPEC_CLIENTS:
        raise pytest.UsageError(
            f"{where}={client!r}: unknown client; choose one of: {', '.join(clients)} "
            "or the path of a client spec file (.yaml)"
        )
    else:
        max_for_client = clients[client].max_nodes
    if nodes > max_for_client:
        raise pytest.UsageError(
            f"--chain-nodes={nodes}: the {client} client runs at most {max_for_client} "
            f"node{'s' if max_for_client > 1 else ''}"
        )

    backend, where = _raw(config, "chain_backend")
    backend = str(backend or "auto")
    if backend not in BACKENDS:
        raise pytest.UsageError(f"{where}={backend!r}: choose one of: {', '.join(BACKENDS)}")
    adapter_class = clients.get(client)
    refused = backend_refused(backend, client, adapter_class.backends) if adapter_class else None
    if refused is not None:
        raise pytest.UsageError(f"{where}={backend}: {refused}")
    if backend != "auto" and not _attaching(config):
        unusable = get_backend(backend).unusable()
        if unusable is not None:
            raise pytest.UsageError(f"{where}={backend}: {unusable}")
    if spec is not None and not (spec.image and runs_images(backend)):
        # Only a spec's own image carries its binary; everywhere else it is the host's.
        try:
            find_spec_binary(spec, root=config.rootpath)
        except ClientSpecError as exc:
            raise pytest.UsageError(f"--chain-client: {exc}") from None
    image, _ = _raw(config, "chain_image")
    attach = _path(config, "chain_attach", must_exist=True)
    bus = _bus(config)
    if attach is not None:
        # Marks and the header describe the network that is there, not the options' defaults.
        nodes, client = _attached_shape(attach)
    services = _path(config, "chain_services", must_exist=True)
    if services is not None:
        _check_services(services)

    seed_value, _ = _raw(config, "chain_seed")
    seed = None if seed_value is None else _int(config, "chain_seed", 0, 0, 2**63 - 1)

    keep = _flag(config, "chain_keep")

    binary, where = _raw(config, "chain_binary")
    geth, geth_where = _raw(config, "chain_geth")
    if geth:
        if binary:
            raise pytest.UsageError(f"{geth_where} and {where}: give one of them")
        if client != "geth":
            raise pytest.UsageError(
                f"{geth_where}: only for the geth client; this run uses {client} "
                "(use --chain-binary)"
            )
        binary, where = geth, geth_where
    if binary:
        _check_binary(str(binary), where)
    signers_raw, _ = _raw(config, "chain_signers")
    signers = None if signers_raw is None else _int(config, "chain_signers", nodes, 1, nodes)
    timeout_raw, _ = _raw(config, "chain_start_timeout")
    try:
        start_timeout = float(timeout_raw) if timeout_raw is not None else 60.0
    except ValueError:
        raise pytest.UsageError(
            f"ini chain_start_timeout={timeout_raw!r}: expected seconds"
        ) from None
    return Settings(
        nodes=nodes,
        max_nodes=max_nodes,
        client=client,
        backend=backend,
        period=_int(config, "chain_period", 1, 1, 3600),
        seed=seed,
        keep=keep,
        binary=str(binary) if binary else None,
        accounts=_int(config, "chain_accounts", DEFAULT_ACCOUNTS, 1, 100_000),
        signers=signers,
        start_timeout=start_timeout,
        chain_id=_int(config, "chain_id", 1337, 1, 2**32),
        image=str(image) if image else default_image(client, config.rootpath),
        attach=attach,
        services=services,
        bus=bus,
        keep_logs=_flag(config, "chain_keep_logs"),
        repair=_on_off(config, "chain_repair", default=True),
        report=_report_dir(config),
        kubeconfig=_path(config, "chain_kubeconfig", must_exist=True),
        namespace=_namespace(config),
    )


def _report_dir(config: pytest.Config) -> Path | None:
    """The report's folder, checked now: a report that cannot be written is a usage
    error before any node starts, not a loss found after an hour of tests."""
    path = _path(config, "chain_report", must_exist=False)
    if path is None:
        return None
    _, where = _raw(config, "chain_report")
    from ._report import check_report_dir

    try:
        check_report_dir(path)
    except OSError as exc:
        raise pytest.UsageError(f"{where}={path}: cannot write the report there: {exc}") from None
    return path


def _check_binary(value: str, where: str) -> None:
    import os
    import shutil

    path = Path(value).expanduser()
    if path.is_file() and os.access(path, os.X_OK):
        return
    if "/" not in value and shutil.which(value):
        return
    raise pytest.UsageError(f"{where}={value}: no such executable file")


def _check_services(path: Path) -> None:
    """The services file is read now, not after the nodes started: a typo in it is a
    usage error that starts nothing."""
    from .services import ServicesError, load_services

    try:
        load_services(path)
    except ServicesError as exc:
        raise pytest.UsageError(f"--chain-services={path}: {exc}") from None


def _on_off(config: pytest.Config, name: str, *, default: bool) -> bool:
    value, where = _raw(config, name)
    if value is None:
        return default
    text = str(value).strip().lower()
    if text not in ("on", "off"):
        raise pytest.UsageError(f"{where}={value}: choose on or off")
    return text == "on"


def _flag(config: pytest.Config, name: str) -> bool:
    cli = config.getoption(name, default=None)
    return bool(cli) if cli is not None else bool(config.getini(name))


def _bus(config: pytest.Config) -> str | None:
    value, where = _raw(config, "chain_bus")
    if value is None:
        return None
    from ._broker import check_reachable, parse_bus_url

    try:
        endpoint = parse_bus_url(str(value))
    except ValueError as exc:
        raise pytest.UsageError(f"{where}={value}: {exc}") from None
    if getattr(config, "workerinput", None) is None:
        from ._errors import ChainHarnessError

        try:
            check_reachable(endpoint)
        except ChainHarnessError as exc:
            raise pytest.UsageError(f"{where}={value}: {exc}") from None
    return str(value)


def _attached_shape(path: Path) -> tuple[int, str]:
    import json

    try:
        testnet = json.loads(path.read_text())["provider"]["testnet"]
        return len(testnet["nodes"]), str(testnet["client"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise pytest.UsageError(
            f"--chain-attach={path}: not a chainharness state file ({exc})"
        ) from None


def _attaching(config: pytest.Config) -> bool:
    return _raw(config, "chain_attach")[0] is not None


#: A Kubernetes namespace name (an RFC 1123 label).
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _namespace(config: pytest.Config) -> str | None:
    value, where = _raw(config, "chain_namespace")
    if value is None:
        return None
    if not _NAMESPACE.match(str(value)):
        raise pytest.UsageError(
            f"{where}={value!r}: not a namespace name (lower-case letters, digits and '-', "
            "at most 63, starting and ending with a letter or digit)"
        )
    return str(value)


def _path(config: pytest.Config, name: str, *, must_exist: bool) -> Path | None:
    value, where = _raw(config, name)
    if value is None:
        return None
    path = Path(str(value)).expanduser()
    if not path.is_absolute():
        path = (config.invocation_params.dir / path).resolve()
    if must_exist and not path.is_file():
        raise pytest.UsageError(f"{where}={value}: no such file ({path})")
    return path
