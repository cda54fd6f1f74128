"""Scenario files: YAML with line numbers, checked against the schema before anything runs.

A scenario is a mapping with a top-level ``scenario:`` key (its title), the network it is
written for (``nodes``, ``client``, ``period``), its deploy ``stage``, an optional
starting ``version`` and ``timeout``, and ``steps``. Every step is a one-key mapping
``{action: argument}`` (or a bare action name when it takes no argument). Every error
names the file, the line and the field, e.g.::

    scenarios/faults/split.yaml:14: steps[2].partition: node3 appears in two groups
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import _yaml

__all__ = [
    "ACTIONS",
    "Scenario",
    "ScenarioError",
    "Step",
    "is_scenario",
    "load_scenario",
    "looks_like_scenario",
]


class ScenarioError(Exception):
    """A scenario file that does not follow the schema (file, line, field in the text)."""


def is_scenario(path: Path) -> bool:
    """Cheap test (no YAML parse) whether a file declares a top-level ``scenario:``."""
    try:
        with path.open(errors="replace") as fh:
            return any(line.startswith("scenario:") for line in fh)
    except OSError:
        return False


_LOOKS_LIKE = re.compile(r"^(scenarios?|steps)\s*:", re.IGNORECASE | re.MULTILINE)


def looks_like_scenario(path: Path) -> bool:
    """A YAML file under a ``scenarios`` folder that is empty, or has a top-level key
    close to ``scenario:`` (``Scenario:``, ``scenarios:``) or a ``steps:`` list, but is
    not a scenario: collected anyway, so its mistake is an error instead of a test that
    silently never runs."""
    if "scenarios" not in path.parent.parts or is_scenario(path):
        return False
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    return not text.strip() or _LOOKS_LIKE.search(text) is not None


@dataclass
class Step:
    action: str
    args: dict[str, Any]
    line: int
    index: int

    @property
    def where(self) -> str:
        return f"steps[{self.index}].{self.action}"


@dataclass
class Scenario:
    path: Path
    title: str
    nodes: int = 4
    client: str = "geth"
    period: int | None = None
    stage: str | None = None
    version: str | None = None
    timeout: float = 300.0
    description: str = ""
    fork_depth: int = 0
    steps: list[Step] = field(default_factory=list)
    line: int = 1

    def versions(self) -> list[tuple[Step | None, str]]:
        """Every client version the scenario will ask for (checked before it starts)."""
        found: list[tuple[Step | None, str]] = []
        if self.version:
            found.append((None, self.version))
        for step in self.steps:
            if step.action in ("upgrade", "rolling_upgrade"):
                found.append((step, str(step.args["version"])))
        return found


class _Ctx:
    def __init__(self, path: Path, nodes: int) -> None:
        self.path = path
        self.nodes = nodes

    def error(self, line: int, where: str, message: str) -> ScenarioError:
        return ScenarioError(f"{self.path}:{line}: {where}: {message}")


# -- argument checkers ------------------------------------------------------------------------


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "a whole number", float: "a number", str: "text", bool: "true/false",
             list: "a list", dict: "a mapping"}  # fmt: skip
    return " or ".join(names.get(k, k.__name__) for k in kinds)


#: Largest number of seconds any field takes (a day), and largest count.
MAX_SECONDS = 86_400.0
MAX_COUNT = 1_000_000
# PyYAML reads `1e300` (no dot) as text; a number is meant.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _check_type(ctx: _Ctx, value: Any, kind: type | tuple[type, ...], line: int, where: str) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, bool) and bool not in kinds:
        raise ctx.error(line, where, f"expected {_type_name(kind)}, got {value!r}")
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kinds):
        raise ctx.error(line, where, f"expected {_type_name(kind)}, got {value!r}")
    return value


def _node(ctx: _Ctx, value: Any, line: int, where: str) -> int:
    if isinstance(value, str) and value.startswith("node") and value[4:].isdigit():
        value = int(value[4:])
    index = _check_type(ctx, value, int, line, where)
    if not 0 <= index < ctx.nodes:
        raise ctx.error(
            line,
            where,
            f"node {index} is out of range (the scenario has {ctx.nodes} nodes: "
            f"0..{ctx.nodes - 1})",
        )
    return int(index)


def _nodes(ctx: _Ctx, value: Any, line: int, where: str) -> list[int]:
    if value == "all":
        return list(range(ctx.nodes))
    items = _check_type(ctx, value, list, line, where)
    lines = getattr(items, "item_lines", [line] * len(items))
    return [
        _node(ctx, v, ln, f"{where}[{i}]")
        for i, (v, ln) in enumerate(zip(items, lines, strict=True))
    ]


def _groups(ctx: _Ctx, value: Any, line: int, where: str) -> list[list[int]]:
    groups = _check_type(ctx, value, list, line, where)
    if len(groups) < 2:
        raise ctx.error(line, where, "a partition needs at least two groups, e.g. [[0, 1], [2, 3]]")
    lines = getattr(groups, "item_lines", [line] * len(groups))
    resolved: list[list[int]] = []
    seen: dict[int, int] = {}
    for g, (group, gline) in enumerate(zip(groups, lines, strict=True)):
        members = _nodes(ctx, group, gline, f"{where}[{g}]")
        if not members:
            raise ctx.error(gline, f"{where}[{g}]", "a group is empty")
        for index in members:
            if index in seen:
                raise ctx.error(gline, where, f"node{index} appears in two groups")
            seen[index] = g
        resolved.append(members)
    missing = [i for i in range(ctx.nodes) if i not in seen]
    if missing:
        raise ctx.error(
            line,
            where,
            "every node must be in a group; missing: " + ", ".join(f"node{i}" for i in missing),
        )
    return resolved


@dataclass
class _Field:
    kind: type | tuple[type, ...] | str
    required: bool = False
    default: Any = None
    #: Largest value (default: MAX_SECONDS for numbers, MAX_COUNT for whole numbers).
    most: float | None = None


def _fields(
    ctx: _Ctx, value: Any, line: int, where: str, spec: dict[str, _Field], *, short: str | None
) -> dict[str, Any]:
    """Check a mapping argument against ``spec``; a bare value fills the ``short`` field."""
    if not isinstance(value, dict):
        if short is None or value is None:
            if value is None and not any(f.required for f in spec.values()):
                value = {}
            else:
                raise ctx.error(line, where, f"expected a mapping with {', '.join(spec)}")
        else:
            value = {short: value}
    value_lines = getattr(value, "value_lines", {})
    unknown = sorted(set(value) - set(spec))
    if unknown:
        raise ctx.error(
            value_lines.get(unknown[0], line),
            f"{where}.{unknown[0]}",
            f"unknown field; allowed: {', '.join(spec)}",
        )
    out: dict[str, Any] = {}
    for name, fspec in spec.items():
        fline = value_lines.get(name, line)
        fwhere = f"{where}.{name}"
        if name not in value:
            if fspec.required:
                raise ctx.error(line, fwhere, "missing field")
            out[name] = fspec.default
            continue
        raw = value[name]
        if fspec.kind == "node":
            out[name] = _node(ctx, raw, fline, fwhere)
        elif fspec.kind == "nodes":
            out[name] = _nodes(ctx, raw, fline, fwhere)
        elif fspec.kind == "groups":
            out[name] = _groups(ctx, raw, fline, fwhere)
        elif fspec.kind == "version":
            out[name] = str(_check_type(ctx, raw, (str, int, float), fline, fwhere))
        elif isinstance(fspec.kind, str):
            out[name] = raw
        else:
            checked = _check_type(ctx, raw, fspec.kind, fline, fwhere)
            if isinstance(checked, (int, float)) and not isinstance(checked, bool):
                _check_number(ctx, checked, fspec, fline, fwhere)
            out[name] = checked
    return out


def _check_number(ctx: _Ctx, value: float, fspec: _Field, line: int, where: str) -> None:
    if not math.isfinite(value):
        raise ctx.error(line, where, f"must be a finite number, got {value}")
    if value < 0:
        raise ctx.error(line, where, f"must be >= 0, got {value}")
    most = fspec.most
    if most is None:
        most = MAX_SECONDS if isinstance(value, float) else MAX_COUNT
    if value > most:
        raise ctx.error(line, where, f"must be at most {most:g}, got {value:g}")


# -- actions ------------------------------------------------------------------------------------

Checker = Callable[[_Ctx, Any, int, str], dict[str, Any]]


def _with(spec: dict[str, _Field], short: str | None) -> Checker:
    return lambda ctx, value, line, where: _fields(ctx, value, line, where, spec, short=short)


_NODE = {
    "node": _Field("node", required=True),
    "timeout": _Field(float, default=30.0),
    # One part of a node whose client runs several (geth-pos: geth, beacon, validator).
    "part": _Field(str, default=None),
}
_HEALTH = {
    "follows": _Field(float, default=None),
    "rpc": _Field(dict, default=None),
    "client_version": _Field(str, default=None),
}
_FAULT_KINDS = ("kill", "pause", "restart", "partition", "latency")


def _health(ctx: _Ctx, value: Any, line: int, where: str) -> dict[str, Any]:
    checked = _fields(ctx, value, line, where, _HEALTH, short=None)
    if checked["rpc"] is not None:
        rpc_line = getattr(value, "value_lines", {}).get("rpc", line)
        checked["rpc"] = _fields(
            ctx,
            checked["rpc"],
            rpc_line,
            f"{where}.rpc",
            {
                "method": _Field(str, required=True),
                "params": _Field(list, default=[]),
                "equals": _Field("any", default=None),
                "contains": _Field(str, default=None),
            },
            short=None,
        )
    return checked


def _rolling(ctx: _Ctx, value: Any, line: int, where: str) -> dict[str, Any]:
    checked = _fields(
        ctx,
        value,
        line,
        where,
        {
            "version": _Field("version", required=True),
            "max_unavailable": _Field(int, default=1),
            "pause": _Field(float, default=0.0),
            "health": _Field(dict, default=None),
            "auto_rollback": _Field(bool, default=True),
            "expect": _Field(str, default=None),
            "timeout": _Field(float, default=60.0),
        },
        short="version",
    )
    lines = getattr(value, "value_lines", {}) if isinstance(value, dict) else {}
    if checked["max_unavailable"] < 1:
        raise ctx.error(
            lines.get("max_unavailable", line), f"{where}.max_unavailable", "must be >= 1"
        )
    if checked["expect"] not in (None, "upgraded", "rolled_back"):
        raise ctx.error(
            lines.get("expect", line), f"{where}.expect", "expected upgraded or rolled_back"
        )
    if checked["health"] is not None:
        checked["health"] = _health(
            ctx, checked["health"], lines.get("health", line), f"{where}.health"
        )
    return checked


def _random(ctx: _Ctx, value: Any, line: int, where: str) -> dict[str, Any]:
    checked = _fields(
        ctx,
        value,
        line,
        where,
        {
            "count": _Field(int, required=True),
            "kinds": _Field(list, default=list(_FAULT_KINDS)),
            "hold": _Field(float, default=3.0),
            "latency_ms": _Field(list, default=[100, 500]),
            "timeout": _Field(float, default=60.0),
        },
        short="count",
    )
    lines = getattr(value, "value_lines", {}) if isinstance(value, dict) else {}
    bad = [k for k in checked["kinds"] if k not in _FAULT_KINDS]
    if bad:
        raise ctx.error(
            lines.get("kinds", line),
            f"{where}.kinds",
            f"unknown fault {bad[0]!r}; choose from {', '.join(_FAULT_KINDS)}",
        )
    if not 1 <= checked["count"] <= 100:
        raise ctx.error(lines.get("count", line), f"{where}.count", "must be 1..100")
    return checked


def _wait_or_assert(kind: str) -> Checker:
    conditions: dict[str, Checker] = {
        "converged": _with({"timeout": _Field(float, default=30.0)}, "timeout"),
        "height": _with(
            {
                "min": _Field((int, str), required=True),
                "nodes": _Field("nodes", default=None),
                "timeout": _Field(float, default=30.0),
            },
            "min",
        ),
        "tx_included": _with({"timeout": _Field(float, default=30.0)}, None),
        "stalled": _with(
            {
                "nodes": _Field("nodes", required=True),
                "for": _Field(float, default=4.0),
                "within": _Field(float, default=20.0),
            },
            "nodes",
        ),
        "advancing": _with(
            {
                "nodes": _Field("nodes", required=True),
                "blocks": _Field(int, default=2),
                "timeout": _Field(float, default=30.0),
            },
            "nodes",
        ),
        "no_fork": _with({"depth": _Field(int, default=0)}, "depth"),
        "finalized": _with(
            {"min": _Field((int, str), default=None), "timeout": _Field(float, default=120.0)},
            "min",
        ),
        "no_finality": _with({"for": _Field(float, default=12.0)}, "for"),
        "version": _with(
            {"nodes": _Field("nodes", default=None), "contains": _Field(str, required=True)},
            "contains",
        ),
        "peers": _with(
            {"node": _Field("node", required=True), "min": _Field(int, default=1)}, "node"
        ),
    }

    def check(ctx: _Ctx, value: Any, line: int, where: str) -> dict[str, Any]:
        if isinstance(value, str):
            value = {value: None}
        if not isinstance(value, dict) or len(value) != 1:
            raise ctx.error(line, where, f"expected one condition: {', '.join(conditions)}")
        ((name, arg),) = value.items()
        if name not in conditions:
            raise ctx.error(
                line, f"{where}.{name}", f"unknown condition; choose from {', '.join(conditions)}"
            )
        arg_line = getattr(value, "value_lines", {}).get(name, line)
        args = conditions[name](ctx, arg, arg_line, f"{where}.{name}")
        if name in ("height", "finalized") and isinstance(args["min"], str):
            text = args["min"]
            if not (text.startswith("+") and text[1:].isdigit()):
                raise ctx.error(arg_line, f"{where}.{name}.min", "expected N or +N (relative)")
        return {"condition": name, **args}

    check.__name__ = kind
    return check


ACTIONS: dict[str, Checker] = {
    "send": _with(
        {
            "txs": _Field(int, default=1),
            "node": _Field("node", default=None),
            "value": _Field(int, default=1),
        },
        "txs",
    ),
    "kill": _with(_NODE, "node"),
    "stop": _with(_NODE, "node"),
    "start": _with(_NODE, "node"),
    "restart": _with(_NODE, "node"),
    "pause": _with(_NODE, "node"),
    "resume": _with(_NODE, "node"),
    "partition": _with({"groups": _Field("groups", required=True)}, "groups"),
    "heal": _with({}, None),
    "latency": _with(
        {
            "node": _Field("node", required=True),
            "ms": _Field(int, required=True),
            "jitter": _Field(int, default=0),
            "loss": _Field(float, default=0.0, most=1.0),
        },
        None,
    ),
    "clear_latency": _with({"node": _Field("node", default=None)}, "node"),
    "upgrade": _with(
        {
            "node": _Field("node", required=True),
            "version": _Field("version", required=True),
            "timeout": _Field(float, default=60.0),
        },
        None,
    ),
    "rolling_upgrade": _rolling,
    "random_faults": _random,
    "sleep": _with({"seconds": _Field(float, required=True)}, "seconds"),
    "wait": _wait_or_assert("wait"),
    "assert": _wait_or_assert("assert"),
}

_TOP = {
    "scenario": _Field(str, required=True),
    "description": _Field(str, default=""),
    "nodes": _Field(int, default=4),
    "client": _Field(str, default="geth"),
    "period": _Field(int, default=None),
    "stage": _Field(str, default=None),
    "version": _Field("version", default=None),
    "timeout": _Field(float, default=300.0),
    "fork_depth": _Field(int, default=0),
    "steps": _Field(list, required=True),
}


def load_scenario(path: Path, *, max_nodes: int = 256) -> Scenario:
    """Parse and check ``path``; ``ScenarioError`` naming file, line and field."""
    try:
        data = _yaml.load(path.read_text())
    except yaml.MarkedYAMLError as exc:
        raise ScenarioError(
            f"{path}:{_yaml.error_line(exc)}: not valid YAML: {exc.problem}"
        ) from None
    if data is None:
        raise ScenarioError(f"{path}:1: empty file: a scenario needs a top-level 'scenario:' key")
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}:1: a scenario is a mapping with a 'scenario:' key")
    if "scenario" not in data:
        near = next((k for k in data if str(k).lower().rstrip("s") == "scenario"), None)
        hint = f" (found {near!r}: keys are case-sensitive)" if near is not None else ""
        raise ScenarioError(f"{path}:1: scenario: missing top-level key 'scenario:'{hint}")
    nodes_raw = data.get("nodes", 4)
    ctx = _Ctx(
        path, nodes_raw if isinstance(nodes_raw, int) and not isinstance(nodes_raw, bool) else 4
    )
    top = _fields(ctx, data, 1, "scenario file", _TOP, short=None)
    lines = getattr(data, "value_lines", {})
    if not 1 <= top["nodes"] <= max_nodes:
        raise ctx.error(lines.get("nodes", 1), "nodes", f"must be 1..{max_nodes}")
    if top["period"] is not None and top["period"] < 1:
        raise ctx.error(lines.get("period", 1), "period", "must be >= 1 second")
    ctx.nodes = top["nodes"]
    raw_steps = top["steps"]
    if not raw_steps:
        raise ctx.error(lines.get("steps", 1), "steps", "a scenario needs at least one step")
    step_lines = getattr(raw_steps, "item_lines", [1] * len(raw_steps))
    steps: list[Step] = []
    for i, (raw, line) in enumerate(zip(raw_steps, step_lines, strict=True)):
        if isinstance(raw, str):
            raw = {raw: None}
        if not isinstance(raw, dict) or len(raw) != 1:
            raise ctx.error(line, f"steps[{i}]", "a step is one action, e.g. '- kill: 2'")
        ((action, arg),) = raw.items()
        if action not in ACTIONS:
            raise ctx.error(
                line, f"steps[{i}].{action}", f"unknown action; choose from {', '.join(ACTIONS)}"
            )
        arg_line = getattr(raw, "value_lines", {}).get(action, line)
        args = ACTIONS[action](ctx, arg, arg_line, f"steps[{i}].{action}")
        steps.append(Step(action=str(action), args=args, line=line, index=i))
    return Scenario(
        path=path,
        title=top["scenario"],
        nodes=top["nodes"],
        client=top["client"],
        period=top["period"],
        stage=top["stage"],
        version=top["version"],
        timeout=top["timeout"],
        description=top["description"],
        fork_depth=top["fork_depth"],
        steps=steps,
    )
