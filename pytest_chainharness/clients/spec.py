"""Client spec files: a team's own node described in YAML (``--chain-client=PATH``).

The format is the public one (``API.md``, "Client spec files"). :func:`load_spec` reads
and checks a file completely before anything starts; every error names the file, the
line and the key::

    chains/counter.yaml:12: head.height: missing key

What is checked: YAML and duplicate keys; required keys (``client``, ``binary``,
``ports``, ``start``, ``head``) and no unknown ones; the type of every value; every
placeholder exists, is known where it is used (``{id}`` only once ``node_id`` made one,
nothing per-node in ``network_init``) and names a declared port; probes (``ready``,
``head``, ``peers``, ``redial``) have one kind and the paths they read; ``stop_signal`` is a signal;
``files`` are TOML, JSON or YAML; the binary exists and is executable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import _yaml
from .._errors import ChainHarnessError, ToolNotFound

__all__ = [
    "ClientSpec",
    "ClientSpecError",
    "Probe",
    "find_spec_binary",
    "is_spec_path",
    "load_spec",
    "render",
    "request_body",
]

SPEC_SUFFIXES = (".yaml", ".yml")

#: Placeholders by where they can be known.
_NETWORK = frozenset({"nodes", "network_dir", "seed"})
_NAMED = _NETWORK | {"index", "name"}
_NODE = _NAMED | {"home", "host", "bind"}
_PEERING = frozenset({"peer", "peers", "all_peers"})
#: What the probes (ready, head, peers, metrics) know: they are asked from the test
#: process and the agents, which know a node by its address only.
_PROBE = frozenset({"index", "name", "host"})
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)?)\}")
_PORT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_DOTTED = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_FILE_FORMATS = (".toml", ".json", ".yaml", ".yml")
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_ADAPTER = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class ClientSpecError(ChainHarnessError):
    """A spec file that does not validate (``file:line: key: what`` in the text)."""


class SpecBinaryNotFound(ClientSpecError, ToolNotFound):
    """The spec's binary is missing or not executable."""


@dataclass(frozen=True)
class Probe:
    """An HTTP question a node answers: readiness, its head, its peer count."""

    url: str
    method: str = "GET"
    #: Request body given as a string (a template).
    body: str | None = None
    #: Request body given as JSON (a mapping or list; a JSON-RPC call for ``jsonrpc``):
    #: its strings are the templates, so the JSON's own braces stay as they are.
    payload: Any = None
    #: Dotted paths into the JSON answer, by what they read (``height``, ``hash``, ``count``).
    paths: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientSpec:
    path: Path
    client: str
    binary: str
    ports: tuple[str, ...]
    start: tuple[str, ...]
    head: Probe
    image: str | None = None
    version: tuple[str, ...] | None = None
    network_init: tuple[tuple[str, ...], ...] = ()
    home: str | None = None
    node_init: tuple[tuple[str, ...], ...] = ()
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    node_id: tuple[str, ...] | None = None
    peer: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    stop_signal: signal.Signals = signal.SIGTERM
    #: ``("http", url)``, ``("tcp", "host:port")`` or ``("command", argv)``; None: the
    #: node is ready once its head probe answers.
    ready: tuple[str, Any] | None = None
    peers: Probe | None = None
    #: Asked once per peer (``{target}``) of a node that has stayed short of peers: the
    #: client's own redial gave up (CometBFT: both ends of a simultaneous dial dropped).
    redial: Probe | None = None
    #: Where the node serves Prometheus text (``Node.metrics``, the run report).
    metrics: str | None = None
    #: The metric in it that counts the node's pending transactions (``metrics.txpool``).
    txpool_metric: str | None = None
    #: ``module:Class`` of a Python adapter for what YAML cannot say.
    adapter: str | None = None
    #: How to install the binary (a built-in spec's hint; not a spec key).
    install: str | None = None
    #: Where ``binary:`` is, for the errors ``find_spec_binary`` raises.
    binary_line: int = 1


def is_spec_path(value: str) -> bool:
    """Whether a ``--chain-client`` value names a spec file rather than a client."""
    return value.endswith(SPEC_SUFFIXES) or os.sep in value


class _Checker:
    def __init__(self, path: Path, ports: Sequence[str]) -> None:
        self.path = path
        self.ports = set(ports)

    def error(self, line: int, key: str, what: str) -> ClientSpecError:
        return ClientSpecError(f"{self.path}:{line}: {key}: {what}")

    def string(self, value: Any, line: int, key: str, known: frozenset[str]) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.error(line, key, f"expected a string, got {_kind(value)}")
        text = str(value)
        for match in _PLACEHOLDER.finditer(text):
            name = match.group(1)
            if name is None:
                continue  # {{ or }}: a literal brace
            if name.startswith("port."):
                port = name.removeprefix("port.")
                if port not in self.ports:
                    raise self.error(
                        line,
                        key,
                        f"{{{name}}}: no port named {port!r}; ports are "
                        f"{', '.join(sorted(self.ports)) or '(none)'}",
                    )
                if "host" not in known:
                    raise self.error(line, key, f"{{{name}}} is not known here")
                continue
            if name not in known:
                everything = _NODE | {"id"} | _PEERING
                if name in everything:
                    raise self.error(line, key, f"{{{name}}} is not known here{_why(name)}")
                raise self.error(
                    line,
                    key,
                    f"unknown placeholder {{{name}}}; placeholders are "
                    f"{', '.join('{' + p + '}' for p in sorted(everything))}, {{port.NAME}}",
                )
        return text

    def argv(self, value: Any, line: int, key: str, known: frozenset[str]) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self.error(
                line, key, f"expected a command (a non-empty list), got {_kind(value)}"
            )
        lines = _yaml.item_lines(value, line)
        return tuple(
            self.string(item, item_line, f"{key}[{i}]", known)
            for i, (item, item_line) in enumerate(zip(value, lines, strict=True))
        )

    def commands(
        self, value: Any, line: int, key: str, known: frozenset[str]
    ) -> tuple[tuple[str, ...], ...]:
        if not isinstance(value, list):
            raise self.error(line, key, f"expected a list of commands, got {_kind(value)}")
        lines = _yaml.item_lines(value, line)
        return tuple(
            self.argv(item, item_line, f"{key}[{i}]", known)
            for i, (item, item_line) in enumerate(zip(value, lines, strict=True))
        )

    def mapping(self, value: Any, line: int, key: str) -> dict[Any, Any]:
        if not isinstance(value, dict):
            raise self.error(line, key, f"expected a mapping, got {_kind(value)}")
        return value

    def keys(self, value: dict[Any, Any], line: int, key: str, allowed: Sequence[str]) -> None:
        for name in value:
            if name not in allowed:
                raise self.error(
                    _yaml.value_line(value, name, line),
                    f"{key}.{name}" if key else str(name),
                    f"unknown key; allowed: {', '.join(allowed)}",
                )

    def probe(
        self, value: Any, line: int, key: str, known: frozenset[str], reads: Sequence[str]
    ) -> Probe:
        """``reads``: the paths this probe must give (first one required)."""
        data = self.mapping(value, line, key)
        self.keys(data, line, key, ("http", "method", "body", "jsonrpc", "params", *reads))
        if "http" not in data:
            raise self.error(line, f"{key}.http", "missing key (the URL to ask)")
        url = self.string(data["http"], _yaml.value_line(data, "http", line), f"{key}.http", known)
        if not url.startswith(("http://", "https://")):
            raise self.error(
                _yaml.value_line(data, "http", line), f"{key}.http", "not an http(s) URL"
            )
        method = str(data.get("method", "POST" if "jsonrpc" in data else "GET")).upper()
        if method not in ("GET", "POST"):
            raise self.error(_yaml.value_line(data, "method", line), f"{key}.method", "GET or POST")
        body: str | None = None
        payload: Any = None
        if "jsonrpc" in data:
            if "body" in data:
                raise self.error(
                    _yaml.value_line(data, "body", line),
                    f"{key}.body",
                    "give body or jsonrpc, not both",
                )
            rpc = self.string(
                data["jsonrpc"], _yaml.value_line(data, "jsonrpc", line), f"{key}.jsonrpc", known
            )
            params = data.get("params", [])
            if not isinstance(params, list | dict):
                raise self.error(
                    _yaml.value_line(data, "params", line), f"{key}.params", "a list or a mapping"
                )
            self.templates(params, _yaml.value_line(data, "params", line), f"{key}.params", known)
            payload = {"jsonrpc": "2.0", "id": 1, "method": rpc, "params": params}
            method = "POST"
        elif "params" in data:
            raise self.error(
                _yaml.value_line(data, "params", line), f"{key}.params", "only with jsonrpc"
            )
        elif "body" in data:
            raw = data["body"]
            if isinstance(raw, dict | list):
                self.templates(raw, _yaml.value_line(data, "body", line), f"{key}.body", known)
                payload = raw
            else:
                body = self.string(raw, _yaml.value_line(data, "body", line), f"{key}.body", known)
        paths: dict[str, str] = {}
        for i, read in enumerate(reads):
            if read not in data:
                if i == 0:
                    raise self.error(
                        line, f"{key}.{read}", "missing key (a dotted path into the answer)"
                    )
                continue
            path = data[read]
            if not isinstance(path, str) or not _DOTTED.match(path):
                raise self.error(
                    _yaml.value_line(data, read, line),
                    f"{key}.{read}",
                    f"expected a dotted path like result.height, got {path!r}",
                )
            paths[read] = path
        return Probe(url=url, method=method, body=body, payload=payload, paths=paths)

    def templates(self, value: Any, line: int, key: str, known: frozenset[str]) -> None:
        """Check the placeholders of every string in a JSON body."""
        if isinstance(value, str):
            self.string(value, line, key, known)
        elif isinstance(value, dict):
            for name, item in value.items():
                self.templates(item, line, f"{key}.{name}", known)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self.templates(item, line, f"{key}[{i}]", known)


_KEYS = (
    "client", "binary", "image", "version", "ports", "network_init", "home", "node_init",
    "files", "node_id", "peer", "start", "env", "stop_signal", "ready", "head", "peers",
    "metrics", "adapter", "redial",
)  # fmt: skip
_REQUIRED = ("client", "binary", "ports", "start", "head")


def load_spec(path: Path, *, root: Path | None = None, check_binary: bool = True) -> ClientSpec:
    """Read and check the spec at ``path``; ``ClientSpecError`` naming file, line, key.

    ``root``: the project whose tools folder is searched for the binary.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise ClientSpecError(f"{path}: cannot read the client spec: {exc.strerror}") from None
    try:
        data = _yaml.load(text)
    except _yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise ClientSpecError(
            f"{path}:{_yaml.error_line(exc)}: not valid YAML: {problem}"
        ) from None
    if not isinstance(data, dict):
        raise ClientSpecError(
            f"{path}:1: a client spec is a mapping with {', '.join(_REQUIRED)} (got {_kind(data)})"
        )

    def line(key: str) -> int:
        return _yaml.value_line(data, key, 1)

    top = _Checker(path, ())
    top.keys(data, 1, "", _KEYS)
    for key in _REQUIRED:
        if key not in data:
            raise top.error(1, key, "missing key")
    ports = data["ports"]
    if not isinstance(ports, list) or not ports:
        raise top.error(line("ports"), "ports", "expected a non-empty list of port names")
    for i, (name, name_line) in enumerate(
        zip(ports, _yaml.item_lines(ports, line("ports")), strict=True)
    ):
        if not isinstance(name, str) or not _PORT_NAME.match(name):
            raise top.error(
                name_line, f"ports[{i}]", f"{name!r}: a port name is lower case, e.g. rpc"
            )
    if len(set(ports)) != len(ports):
        raise top.error(line("ports"), "ports", "a port is named twice")
    check = _Checker(path, ports)
    has_id = "node_id" in data
    has_peer = "peer" in data
    ident = _NODE | ({"id"} if has_id else set())
    full = ident | (_PEERING if has_peer else set())

    client = check.string(data["client"], line("client"), "client", frozenset())
    if not client.strip():
        raise check.error(line("client"), "client", "must not be empty")
    binary = check.string(data["binary"], line("binary"), "binary", frozenset())
    spec = ClientSpec(
        path=path,
        client=client,
        binary=binary,
        ports=tuple(ports),
        start=check.argv(data["start"], line("start"), "start", frozenset(full)),
        head=check.probe(data["head"], line("head"), "head", _PROBE, ("height", "hash")),
        image=(
            check.string(data["image"], line("image"), "image", frozenset())
            if "image" in data
            else None
        ),
        version=(
            check.argv(data["version"], line("version"), "version", frozenset())
            if "version" in data
            else None
        ),
        network_init=check.commands(
            data.get("network_init", []), line("network_init"), "network_init", _NETWORK
        ),
        home=(check.string(data["home"], line("home"), "home", _NAMED) if "home" in data else None),
        node_init=check.commands(data.get("node_init", []), line("node_init"), "node_init", _NODE),
        files=_files(check, data, line("files"), frozenset(full)),
        node_id=(
            check.argv(data["node_id"], line("node_id"), "node_id", _NODE) if has_id else None
        ),
        peer=(
            check.string(data["peer"], line("peer"), "peer", frozenset(ident)) if has_peer else None
        ),
        env=_env(check, data, line("env"), frozenset(full)),
        stop_signal=_signal(check, data, line("stop_signal")),
        ready=_ready(check, data, line("ready"), _PROBE),
        peers=(
            check.probe(data["peers"], line("peers"), "peers", _PROBE, ("count",))
            if "peers" in data
            else None
        ),
        redial=(
            check.probe(data["redial"], line("redial"), "redial", _PROBE | {"target"}, ())
            if "redial" in data
            else None
        ),
        **_metrics(check, data, line("metrics")),
        adapter=_adapter(check, data, line("adapter")),
        binary_line=line("binary"),
    )
    if spec.redial is not None:
        # The harness redials a node that its peer count shows short, at the address
        # the node dials each peer on: it needs both.
        for needed in ("peer", "peers"):
            if needed not in data:
                raise check.error(line("redial"), "redial", f"needs {needed} too")
    if check_binary:
        find_spec_binary(spec, root=root)
    return spec


def find_spec_binary(spec: ClientSpec, *, root: Path | None = None) -> Path:
    """The spec's binary: absolute, relative to the spec file, in the tools folder
    (``.tools/<binary>/<version>/<binary>``, the newest, or ``.tools/bin/<binary>``), or
    on PATH; ``ClientSpecError`` naming the key when missing or not executable."""
    name = spec.binary
    line = spec.binary_line
    candidates: list[Path] = []
    as_path = Path(name).expanduser()
    if as_path.is_absolute():
        candidates.append(as_path)
    else:
        if "/" in name:
            candidates.append(spec.path.parent / as_path)
        else:
            candidates.append(spec.path.parent / name)
            from ..tools import tools_dir, version_key

            tools = tools_dir(root or Path.cwd())
            versions = sorted(
                (tools / name).glob(f"*/{name}"), key=lambda p: version_key(p.parent.name)
            )
            candidates += reversed(versions)
            candidates.append(tools / "bin" / name)
            found = shutil.which(name)
            if found:
                candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                raise SpecBinaryNotFound(
                    f"{spec.path}:{line}: binary: {candidate} is not executable (chmod +x it)"
                )
            return candidate.resolve()
    hint = f" (install it with: {spec.install})" if spec.install else ""
    raise SpecBinaryNotFound(
        f"{spec.path}:{line}: binary: {name!r} not found (looked relative to the spec, in "
        f"the tools folder and on PATH){hint}"
    )


def render(template: str, values: dict[str, str]) -> str:
    """Fill a checked template; ``{{``/``}}`` are literal braces."""

    def fill(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        return values[match.group(1)]

    return _PLACEHOLDER.sub(fill, template)


def request_body(probe: Probe, values: dict[str, str]) -> str | None:
    """The body ``probe`` sends, filled with ``values`` (None: it sends none)."""
    if probe.payload is not None:
        return json.dumps(_fill_tree(probe.payload, values))
    return render(probe.body, values) if probe.body is not None else None


def _fill_tree(value: Any, values: dict[str, str]) -> Any:
    if isinstance(value, str):
        return render(value, values)
    if isinstance(value, dict):
        return {name: _fill_tree(item, values) for name, item in value.items()}
    if isinstance(value, list):
        return [_fill_tree(item, values) for item in value]
    return value


# -- the keys that are more than a string ----------------------------------------------


def _files(
    check: _Checker, data: dict[str, Any], line: int, known: frozenset[str]
) -> dict[str, dict[str, Any]]:
    if "files" not in data:
        return {}
    files = check.mapping(data["files"], line, "files")
    out: dict[str, dict[str, Any]] = {}
    for name, settings in files.items():
        where = f"files.{name}"
        name_line = _yaml.value_line(files, name, line)
        target = check.string(name, name_line, where, known)
        if not target.endswith(_FILE_FORMATS):
            raise check.error(
                name_line, where, f"only {', '.join(_FILE_FORMATS)} files can be edited"
            )
        keys = check.mapping(settings, name_line, where)
        for key, value in keys.items():
            key_line = _yaml.value_line(keys, key, name_line)
            if not isinstance(key, str) or not _DOTTED.match(key):
                raise check.error(key_line, where, f"{key!r}: expected a dotted key like p2p.seeds")
            if isinstance(value, str):
                check.string(value, key_line, f"{where}.{key}", known)
            elif value is not None and not isinstance(value, bool | int | float | list):
                raise check.error(
                    key_line, f"{where}.{key}", f"expected a value, got {_kind(value)}"
                )
        out[target] = dict(keys)
    return out


def _env(check: _Checker, data: dict[str, Any], line: int, known: frozenset[str]) -> dict[str, str]:
    if "env" not in data:
        return {}
    env = check.mapping(data["env"], line, "env")
    out: dict[str, str] = {}
    for name, value in env.items():
        value_line = _yaml.value_line(env, name, line)
        if not isinstance(name, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise check.error(value_line, "env", f"{name!r} is not a variable name")
        out[name] = check.string(value, value_line, f"env.{name}", known)
    return out


def _signal(check: _Checker, data: dict[str, Any], line: int) -> signal.Signals:
    if "stop_signal" not in data:
        return signal.SIGTERM
    raw = data["stop_signal"]
    name = str(raw).upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    try:
        return signal.Signals[name]
    except KeyError:
        raise check.error(
            line, "stop_signal", f"{raw!r} is not a signal (e.g. SIGTERM, SIGINT)"
        ) from None


def _ready(
    check: _Checker, data: dict[str, Any], line: int, known: frozenset[str]
) -> tuple[str, Any] | None:
    if "ready" not in data:
        return None
    ready = check.mapping(data["ready"], line, "ready")
    check.keys(ready, line, "ready", ("http", "tcp", "command"))
    if len(ready) != 1:
        raise check.error(line, "ready", "one of http, tcp or command")
    ((kind, value),) = ready.items()
    value_line = _yaml.value_line(ready, kind, line)
    if kind == "command":
        return ("command", check.argv(value, value_line, "ready.command", known))
    if kind == "http":
        return ("http", _url(check, value, value_line, "ready.http", known))
    address = check.string(value, value_line, "ready.tcp", known)
    if ":" not in address:
        raise check.error(value_line, "ready.tcp", "expected HOST:PORT, e.g. {host}:{port.p2p}")
    return ("tcp", address)


def _url(check: _Checker, value: Any, line: int, key: str, known: frozenset[str]) -> str:
    url = check.string(value, line, key, known)
    if not url.startswith(("http://", "https://")):
        raise check.error(line, key, "not an http(s) URL")
    return url


def _metrics(check: _Checker, data: dict[str, Any], line: int) -> dict[str, str | None]:
    """``metrics: URL``, or ``metrics: {http: URL, txpool: METRIC}``."""
    if "metrics" not in data:
        return {"metrics": None, "txpool_metric": None}
    value = data["metrics"]
    if not isinstance(value, dict):
        return {"metrics": _url(check, value, line, "metrics", _PROBE), "txpool_metric": None}
    unknown = sorted(set(value) - {"http", "txpool"})
    if unknown or "http" not in value:
        raise check.error(
            line,
            "metrics",
            "expected a URL or {http: URL, txpool: METRIC_NAME}"
            + (f"; unknown key(s): {', '.join(map(str, unknown))}" if unknown else ""),
        )
    txpool = value.get("txpool")
    if txpool is not None and (not isinstance(txpool, str) or not _METRIC_NAME.match(txpool)):
        raise check.error(line, "metrics.txpool", f"not a Prometheus metric name: {txpool!r}")
    return {
        "metrics": _url(check, value["http"], line, "metrics.http", _PROBE),
        "txpool_metric": txpool,
    }


def _adapter(check: _Checker, data: dict[str, Any], line: int) -> str | None:
    if "adapter" not in data:
        return None
    value = data["adapter"]
    if not isinstance(value, str) or not _ADAPTER.match(value):
        raise check.error(line, "adapter", f"expected module:Class, got {value!r}")
    return value


def _why(name: str) -> str:
    if name == "id":
        return " (only with node_id, and not in node_init, node_id or home)"
    if name in _PEERING:
        return " (needs peer:, and is known only in start, files and env)"
    return " (network_init runs once for the whole network; home knows index and name)"


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    return type(value).__name__
