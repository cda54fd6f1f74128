"""The run report: ``DIR/index.html`` and its pictures, drawn from the run's records.

Pictures are PNGs drawn with matplotlib's object API (``Figure``; no pyplot state, no
display). Per test: every node's height and peers over time, faults and heals as
bands named in a legend; per load run: sent and included tx/s, inclusion latency
p50/p95 and each node's txpool. Long runs are downsampled to ``MAX_POINTS`` per line.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MAX_POINTS", "Picture", "TracedTest", "collect", "draw_test", "write_report"]

#: Points per line in a picture: a laptop screen shows no more, and a long soak's
#: hours of samples stay a quick draw.
MAX_POINTS = 1200
WIDTH, HEIGHT, DPI = 10.0, 5.6, 100
#: An action that starts a fault → the actions that end it, on the same node or "*".
_ENDS = {
    "stop": ("start",),
    "kill": ("start",),
    "pause": ("resume",),
    "partition": ("heal",),
    "latency": ("clear latency",),
}
_BAND_COLOURS = ("#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


@dataclass
class TracedTest:
    nodeid: str
    start: float = math.inf
    end: float = 0.0
    outcome: str = "passed"
    phases: dict[str, str] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    loads: list[dict[str, Any]] = field(default_factory=list)

    @property
    def slug(self) -> str:
        digest = hashlib.sha1(self.nodeid.encode()).hexdigest()[:8]
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.nodeid)[-80:].strip("_") + "-" + digest


@dataclass
class Picture:
    path: Path
    title: str


@dataclass
class Record:
    tests: dict[str, TracedTest]
    network: dict[str, Any]


def collect(lines: Iterable[dict[str, Any]]) -> Record:
    tests: dict[str, TracedTest] = {}
    network: dict[str, Any] = {}
    for entry in lines:
        kind = entry.get("kind")
        if kind == "network":
            network = entry
            continue
        nodeid = entry.get("test")
        if not nodeid:
            continue
        test = tests.setdefault(nodeid, TracedTest(nodeid))
        if kind == "phase":
            test.start = min(test.start, entry["t0"])
            test.phases.setdefault(entry["when"], "interrupted")
            test.end = max(test.end, entry["t0"])
        elif kind == "phase_end":
            test.end = max(test.end, entry["t1"])
            test.phases[entry["when"]] = entry["outcome"]
        elif kind == "sample":
            test.samples.append(entry)
            test.end = max(test.end, entry["t"])
        elif kind == "action":
            test.actions.append(entry)
        elif kind == "load":
            test.loads.append(entry)
    for test in tests.values():
        test.outcome = _outcome(test.phases)
        test.samples.sort(key=lambda s: s["t"])
        test.actions.sort(key=lambda a: a["t0"])
    return Record(tests, network)


def _outcome(phases: Mapping[str, str]) -> str:
    if "failed" in phases.values():
        return "failed" if phases.get("call") == "failed" else "error"
    if "interrupted" in phases.values():
        return "interrupted"
    if "skipped" in phases.values():
        return "skipped"
    return "passed"


def read_records(directory: Path) -> Record:
    lines: list[dict[str, Any]] = []
    for path in sorted(directory.glob("record-*.jsonl")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a killed worker
    return collect(lines)


# -- pictures --------------------------------------------------------------------------------


def _thin(values: Sequence[Any]) -> Sequence[Any]:
    if len(values) <= MAX_POINTS:
        return values
    step = math.ceil(len(values) / MAX_POINTS)
    return [*values[::step], values[-1]]


def bands(test: TracedTest) -> tuple[list[tuple[float, float, str]], list[tuple[float, str]]]:
    """(start, end, label) of each fault, and (time, label) of each one-off action."""
    open_: dict[tuple[str, str], tuple[float, str]] = {}
    found: list[tuple[float, float, str]] = []
    marks: list[tuple[float, str]] = []
    for action in test.actions:
        name, node, at = str(action["action"]), str(action["node"]), float(action["t0"])
        where = "" if node == "*" else f" {node}"
        kind = next((k for k in _ENDS if name.startswith(k)), None)
        if kind is not None:
            open_.setdefault((kind, node), (at, f"{name}{where}"))
            continue
        closed = False
        for (kind, on), (since, label) in list(open_.items()):
            if any(name.startswith(end) for end in _ENDS[kind]) and node in (on, "*"):
                found.append((since, float(action["t1"]), label))
                del open_[(kind, on)]
                closed = True
        if not closed and name not in ("heal", "clear latency", "start", "resume"):
            marks.append((at, f"{name}{where}"))
    for since, label in open_.values():
        found.append((since, test.end, label + " (not healed in the test)"))
    return sorted(found), marks


def draw_test(test: TracedTest, network: Mapping[str, Any], folder: Path) -> list[Picture]:
    """The test's pictures in ``folder`` (kept when already drawn, e.g. for allure)."""
    pictures: list[Picture] = []
    if test.samples:
        path = folder / f"{test.slug}-network.png"
        title = "Height and peers per node"
        if not path.exists():
            _draw_network(test, path, title)
        pictures.append(Picture(path, title))
    for i, load in enumerate(test.loads):
        path = folder / f"{test.slug}-load{i}.png"
        title = f"Load run {i + 1}: transactions, inclusion latency, txpool"
        if not path.exists():
            _draw_load(test, load, network, path, title)
        pictures.append(Picture(path, title))
    return pictures


def _figure(rows: int) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(
        figsize=(WIDTH, HEIGHT if rows <= 2 else HEIGHT * 1.35), dpi=DPI, layout="constrained"
    )
    axes = fig.subplots(rows, 1, sharex=True)
    return fig, list(axes) if rows > 1 else [axes]


def _mark_faults(axes: Sequence[Any], test: TracedTest, t0: float) -> list[Any]:
    from matplotlib.patches import Patch

    handles: list[Any] = []
    found, marks = bands(test)
    for i, (since, until, label) in enumerate(found):
        colour = _BAND_COLOURS[i % len(_BAND_COLOURS)]
        for ax in axes:
            ax.axvspan(since - t0, max(until, since + 0.2) - t0, color=colour, alpha=0.18, lw=0)
        handles.append(Patch(color=colour, alpha=0.35, label=label))
    for at, label in marks:
        for ax in axes:
            ax.axvline(at - t0, color="#555555", ls=":", lw=1)
        handles.append(_line_handle("#555555", ":", label))
    return handles


def _fault_legend(fig: Any, handles: list[Any]) -> None:
    if handles:
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncol=min(len(handles), 4),
            fontsize=8,
            title="faults and actions",
            title_fontsize=8,
        )


def _line_handle(colour: str, style: str, label: str) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], color=colour, ls=style, label=label)


def _draw_network(test: TracedTest, path: Path, title: str) -> None:
    samples = _thin(test.samples)
    t0 = test.start
    fig, (height_ax, peers_ax) = _figure(2)
    names = sorted({name for s in samples for name in s["nodes"]}, key=_node_order)
    for name in names:
        xs = [s["t"] - t0 for s in samples]
        heights = [_value(s, name, "height") for s in samples]
        peers = [_value(s, name, "peers") for s in samples]
        (line,) = height_ax.plot(xs, heights, drawstyle="steps-post", lw=1.4, label=name)
        if any(not math.isnan(p) for p in peers):
            peers_ax.plot(xs, peers, drawstyle="steps-post", lw=1.2, color=line.get_color())
    _fault_legend(fig, _mark_faults([height_ax, peers_ax], test, t0))
    height_ax.set_ylabel("height (blocks)")
    peers_ax.set_ylabel("peers")
    peers_ax.set_xlabel("time since the test started (s)")
    height_ax.grid(alpha=0.3)
    peers_ax.grid(alpha=0.3)
    height_ax.legend(loc="upper left", fontsize=8, ncol=min(len(names), 8), title="node")
    fig.suptitle(f"{title}\n{test.nodeid}", fontsize=10)
    fig.savefig(path)


def _draw_load(
    test: TracedTest, load: Mapping[str, Any], network: Mapping[str, Any], path: Path, title: str
) -> None:
    t0 = test.start
    timeline = [(float(s), None if i is None else float(i)) for s, i in load["timeline"]]
    fig, (rate_ax, latency_ax, pool_ax) = _figure(3)
    if timeline:
        first = math.floor(min(s for s, _ in timeline))
        last = math.ceil(max(max(s, i or s) for s, i in timeline))
        seconds = list(range(first, last + 1))
        sent = dict.fromkeys(seconds, 0)
        included = dict.fromkeys(seconds, 0)
        latency: dict[int, list[float]] = {}
        for at, landed in timeline:
            sent[math.floor(at)] += 1
            if landed is not None:
                included[math.floor(landed)] += 1
                latency.setdefault(math.floor(at), []).append((landed - at) * 1000)
        xs = [s - t0 for s in seconds]
        rate_ax.plot(xs, [sent[s] for s in seconds], drawstyle="steps-post", label="sent")
        rate_ax.plot(xs, [included[s] for s in seconds], drawstyle="steps-post", label="included")
        by_second = sorted(latency)
        lx = [s - t0 for s in by_second]
        latency_ax.plot(lx, [_pct(latency[s], 0.5) for s in by_second], marker=".", label="p50")
        latency_ax.plot(lx, [_pct(latency[s], 0.95) for s in by_second], marker=".", label="p95")
        rate_ax.legend(loc="upper right", fontsize=8)
        latency_ax.legend(loc="upper right", fontsize=8)
    else:
        rate_ax.text(
            0.5, 0.5, "no transactions were sent", ha="center", transform=rate_ax.transAxes
        )
    metric = network.get("txpool_metric")
    if metric:
        samples = [
            s for s in _thin(test.samples) if any("txpool" in n for n in s["nodes"].values())
        ]
        names = sorted({n for s in samples for n in s["nodes"]}, key=_node_order)
        for name in names:
            pool_ax.plot(
                [s["t"] - t0 for s in samples],
                [_value(s, name, "txpool") for s in samples],
                drawstyle="steps-post",
                lw=1.2,
                label=name,
            )
        if names:
            pool_ax.legend(loc="upper right", fontsize=8, ncol=min(len(names), 8), title="node")
        pool_ax.set_ylabel(f"txpool ({metric})", fontsize=8)
    else:
        client = network.get("client", "this client")
        pool_ax.text(
            0.5, 0.5, f"{client} serves no txpool metric", ha="center", transform=pool_ax.transAxes
        )
        pool_ax.set_ylabel("txpool (txs)")
    _fault_legend(fig, _mark_faults([rate_ax, latency_ax, pool_ax], test, t0))
    rate_ax.set_ylabel("tx/s")
    latency_ax.set_ylabel("inclusion (ms)")
    pool_ax.set_xlabel("time since the test started (s); latency by send time")
    for ax in (rate_ax, latency_ax, pool_ax):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}\n{test.nodeid}", fontsize=10)
    fig.savefig(path)


def _value(sample: Mapping[str, Any], node: str, key: str) -> float:
    value = sample["nodes"].get(node, {}).get(key)
    return math.nan if value is None else float(value)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def _node_order(name: str) -> tuple[int, str]:
    digits = re.sub(r"\D", "", name)
    return (int(digits) if digits else 0, name)


# -- the page ----------------------------------------------------------------------------------


def write_report(
    directory: Path,
    data_dir: Path,
    summary: Mapping[str, Any],
    *,
    verdict: Mapping[str, Any] | None = None,
) -> Path:
    """Draw every test's pictures and write ``directory/index.html``; returns its path."""
    record = read_records(data_dir) if data_dir.is_dir() else Record({}, {})
    images = directory / "img"
    images.mkdir(parents=True, exist_ok=True)
    sections: list[str] = []
    quiet: list[TracedTest] = []
    for test in sorted(record.tests.values(), key=lambda t: t.start):
        pictures = draw_test(test, record.network, images)
        if not pictures:
            quiet.append(test)
            continue
        sections.append(_section(test, pictures, directory))
    page = _page(summary, record, verdict, sections, quiet)
    index = directory / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def _section(test: TracedTest, pictures: list[Picture], directory: Path) -> str:
    e = html.escape
    seconds = max(0.0, test.end - test.start)
    parts = [
        f'<section class="test {e(test.outcome)}" id="{e(test.slug)}">',
        f'<h2>{e(test.nodeid)} <span class="badge">{e(test.outcome)}</span></h2>',
        f"<p>{seconds:.1f} s; {len(test.samples)} samples, {len(test.actions)} actions</p>",
    ]
    for picture in pictures:
        rel = picture.path.relative_to(directory).as_posix()
        parts.append(
            f'<figure><img src="{e(rel)}" alt="{e(picture.title)}" width="{int(WIDTH * DPI)}">'
            f"<figcaption>{e(picture.title)}</figcaption></figure>"
        )
    for i, load in enumerate(test.loads):
        parts.append(f"<details><summary>Load run {i + 1}: numbers</summary>")
        parts.append(f"<pre>{e(str(load.get('summary', '')))}</pre></details>")
        source = load.get("html")
        if source and Path(source).is_file():
            kept = directory / "load" / f"{test.slug}-load{i}.html"
            kept.parent.mkdir(exist_ok=True)
            shutil.copyfile(source, kept)
            rel = kept.relative_to(directory).as_posix()
            parts.append(f'<p><a href="{e(rel)}">Locust\'s report of load run {i + 1}</a></p>')
    if test.actions:
        parts.append("<details><summary>Actions on the network</summary><table>")
        parts.append("<tr><th>at (s)</th><th>node</th><th>action</th><th>took (s)</th></tr>")
        for action in test.actions:
            parts.append(
                f"<tr><td>{action['t0'] - test.start:.1f}</td><td>{e(str(action['node']))}</td>"
                f"<td>{e(str(action['action']))}</td>"
                f"<td>{action['t1'] - action['t0']:.2f}</td></tr>"
            )
        parts.append("</table></details>")
    parts.append("</section>")
    return "\n".join(parts)


def _page(
    summary: Mapping[str, Any],
    record: Record,
    verdict: Mapping[str, Any] | None,
    sections: list[str],
    quiet: list[TracedTest],
) -> str:
    e = html.escape
    rows = dict(summary)
    if verdict is not None:
        rows["gate"] = f"{verdict.get('verdict', '?')} to {verdict.get('target', '?')}"
        for reason in verdict.get("reasons", [])[:5]:
            rows.setdefault("gate reasons", "")
            rows["gate reasons"] += f"{reason}; "
    outcomes: dict[str, int] = {}
    for test in record.tests.values():
        outcomes[test.outcome] = outcomes.get(test.outcome, 0) + 1
    rows["tests"] = ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())) or "none recorded"
    network = record.network
    if network and not network.get("metrics"):
        rows["metrics"] = f"{network.get('client')} serves no metrics: no txpool pictures"
    elif network and not network.get("txpool_metric"):
        rows["metrics"] = f"{network.get('client')} names no txpool metric: no txpool pictures"
    table = "\n".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in rows.items())
    quiet_rows = "\n".join(f"<tr><td>{e(t.nodeid)}</td><td>{e(t.outcome)}</td></tr>" for t in quiet)
    quiet_html = (
        "<h2>Tests that did not use the network</h2>"
        f"<table><tr><th>test</th><th>outcome</th></tr>{quiet_rows}</table>"
        if quiet
        else ""
    )
    written = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>chainharness run report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1040px;
       padding: 0 1rem; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5rem 0; }}
th, td {{ text-align: left; padding: 0.2rem 0.8rem 0.2rem 0; vertical-align: top; }}
img {{ max-width: 100%; height: auto; border: 1px solid #ddd; }}
section.test {{ border-top: 1px solid #ccc; margin-top: 1.5rem; }}
.badge {{ font-size: 0.8rem; padding: 0.1rem 0.4rem; border-radius: 0.3rem;
          background: #2ca02c; color: white; }}
.failed .badge, .error .badge, .interrupted .badge {{ background: #d62728; }}
.skipped .badge {{ background: #7f7f7f; }}
pre {{ background: #f6f6f6; padding: 0.5rem; overflow-x: auto; }}
</style>
</head>
<body>
<h1>chainharness run report</h1>
<table class="summary">
{table}
<tr><th>written</th><td>{e(written)}</td></tr>
</table>
{"".join(sections) or "<p>No test used the network.</p>"}
{quiet_html}
</body>
</html>
"""
