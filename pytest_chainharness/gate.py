"""The promotion gate: deploy stages, the verdict and its verification.

Nothing here needs pytest or a chain: the pytest side (``_gate.py``) feeds outcomes into a
``Tally`` and writes what ``build_verdict`` returns; ``chainharness gate verify`` reads it
back with ``verify``. The verdict is deliberately hard to get wrong in the dangerous
direction: every doubt (a stage with nothing executed, too many skips, an interrupted run,
tests that were selected but never reported) is a ``block``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_STAGES",
    "KEY_ENV",
    "XFAIL_POLICIES",
    "GateError",
    "Outcome",
    "Tally",
    "artifact_digest",
    "build_verdict",
    "content_digest",
    "parse_artifact",
    "parse_stages",
    "verify",
]

DEFAULT_STAGES = ("build", "integration", "staging", "production")
#: Environment variable holding the HMAC key that signs (and verifies) verdicts.
KEY_ENV = "CHAINHARNESS_GATE_KEY"
#: How an xfailed or xpassed test counts: a failure, a skip, or a pass.
XFAIL_POLICIES = ("block", "skip", "pass")
FORMAT = 1

_STAGE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
# Worse outcomes win when an item reports several phases (a passing call, a failing teardown).
_RANK = {"passed": 0, "skipped": 1, "xfailed": 2, "xpassed": 3, "failed": 4, "error": 5}


class GateError(Exception):
    """Bad gate configuration, or a report that does not verify."""


def parse_stages(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"build, integration"`` or a list of names → the ordered stages; ``GateError`` if bad."""
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    names = [str(item).strip().strip(",") for item in items if str(item).strip().strip(",")]
    if not names:
        raise GateError("no stages given; expected names such as 'build, integration, staging'")
    bad = [name for name in names if not _STAGE_NAME.match(name)]
    if bad:
        raise GateError(
            f"bad stage name {bad[0]!r}: a stage is a letter followed by letters, digits, "
            "'_', '-' or '.'"
        )
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise GateError(f"stage {name!r} is listed twice")
        seen.add(name)
    return tuple(names)


def parse_artifact(text: str) -> tuple[str, str]:
    """``NAME=PATH|IMAGE`` → (name, reference)."""
    name, sep, ref = text.partition("=")
    if not sep or not name.strip() or not ref.strip():
        raise GateError(f"{text!r}: expected NAME=PATH or NAME=IMAGE")
    return name.strip(), ref.strip()


def artifact_digest(ref: str) -> dict[str, str]:
    """What was tested: the sha256 of a file, or the id of a local Docker image."""
    path = Path(ref).expanduser()
    if path.is_file():
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return {"ref": ref, "kind": "file", "sha256": digest.hexdigest()}
    if path.exists():
        raise GateError(f"artifact {ref}: a directory; give a file (binary, archive) or an image")
    from ._docker import image_id

    found = image_id(ref)
    if found is None:
        raise GateError(f"artifact {ref}: no such file, and not a local Docker image")
    return {"ref": ref, "kind": "image", "sha256": found.removeprefix("sha256:")}


# -- outcomes ----------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one test item did, folded over its setup, call and teardown reports."""

    nodeid: str
    stage: str
    outcome: str = "passed"
    #: "product" or "infra" for failures and errors.
    kind: str | None = None
    message: str = ""
    when: str = ""

    def add(self, outcome: str, *, kind: str | None, message: str, when: str) -> None:
        if _RANK[outcome] > _RANK[self.outcome]:
            self.outcome, self.kind, self.message, self.when = outcome, kind, message, when
        elif outcome in ("failed", "error") and kind == "infra" and self.kind != "infra":
            # A product failure in the call and an infra error in teardown: infra is the
            # cause worth naming (the product result is not trustworthy).
            self.kind = "infra"


@dataclass
class Tally:
    """Outcomes of the tests selected for one gate run."""

    stages: tuple[str, ...]
    target: str
    xfail: str = "block"
    max_skip: float = 0.0
    selected: dict[str, str] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    collect_errors: list[dict[str, str]] = field(default_factory=list)
    deselected: int = 0

    def select(self, nodeid: str, stage: str) -> None:
        self.selected[nodeid] = stage

    def record(
        self, nodeid: str, stage: str, outcome: str, *, kind: str | None, message: str, when: str
    ) -> None:
        found = self.outcomes.setdefault(nodeid, Outcome(nodeid, stage))
        found.add(outcome, kind=kind, message=message, when=when)

    def collect_error(self, where: str, message: str, *, kind: str = "product") -> None:
        self.collect_errors.append({"test": where, "message": message, "kind": kind})

    def counts(self) -> dict[str, dict[str, int]]:
        upto = self.stages[: self.stages.index(self.target) + 1]
        table = {
            stage: {
                "selected": 0,
                "passed": 0,
                "failed": 0,
                "errors": 0,
                "skipped": 0,
                "xfailed": 0,
                "xpassed": 0,
                "infra": 0,
            }
            for stage in upto
        }
        for stage in self.selected.values():
            if stage in table:
                table[stage]["selected"] += 1
        for found in self.outcomes.values():
            row = table.get(found.stage)
            if row is None:
                continue
            key = {"error": "errors"}.get(found.outcome, found.outcome)
            row[key] += 1
            if found.kind == "infra":
                row["infra"] += 1
        return table


def _xfail_as(policy: str, outcome: str) -> str:
    if outcome not in ("xfailed", "xpassed") or policy == "block":
        return outcome
    return "skipped" if policy == "skip" else "passed"


def build_verdict(
    tally: Tally,
    *,
    interrupted: str | None,
    chain: Mapping[str, Any],
    artifacts: Mapping[str, Mapping[str, str]],
    key: bytes | None = None,
) -> dict[str, Any]:
    """The verdict document (digest and, with ``key``, an HMAC signature included)."""
    stages = tally.counts()
    reasons: list[str] = []
    if interrupted:
        reasons.append(f"the run did not finish: {interrupted}")
    if tally.collect_errors:
        reasons.append(f"{len(tally.collect_errors)} collection error(s)")
    failures: list[dict[str, Any]] = [
        {"test": e["test"], "stage": None, "kind": e["kind"], "when": "collect"}
        | {"message": e["message"]}
        for e in tally.collect_errors
    ]
    for found in sorted(tally.outcomes.values(), key=lambda o: o.nodeid):
        outcome = _xfail_as(tally.xfail, found.outcome)
        if outcome in ("failed", "error", "xfailed", "xpassed"):
            failures.append(
                {
                    "test": found.nodeid,
                    "stage": found.stage,
                    "kind": found.kind or "product",
                    "outcome": found.outcome,
                    "when": found.when,
                    "message": found.message,
                }
            )
    missing = sorted(set(tally.selected) - set(tally.outcomes))
    if missing:
        reasons.append(f"{len(missing)} selected test(s) never reported, e.g. {missing[0]}")
    for stage, row in stages.items():
        executed = sum(row[k] for k in ("passed", "failed", "errors", "xfailed", "xpassed"))
        if tally.xfail == "skip":
            executed -= row["xfailed"] + row["xpassed"]
        if executed == 0:
            reasons.append(f"stage {stage}: no test executed ({row['skipped']} skipped)")
            continue
        bad = row["failed"] + row["errors"]
        if tally.xfail == "block":
            bad += row["xfailed"] + row["xpassed"]
        if bad:
            infra = f", {row['infra']} of them infra" if row["infra"] else ""
            reasons.append(f"stage {stage}: {bad} failed{infra}")
        skipped = row["skipped"] + (row["xfailed"] + row["xpassed"] if tally.xfail == "skip" else 0)
        ran = executed + skipped
        if ran and skipped / ran > tally.max_skip:
            reasons.append(
                f"stage {stage}: {skipped} of {ran} skipped ({skipped / ran:.0%}), above "
                f"gate_max_skip {tally.max_skip:.0%}"
            )
    verdict: dict[str, Any] = {
        "format": FORMAT,
        "target": tally.target,
        "verdict": "block" if reasons else "promote",
        "reasons": reasons,
        "stage_order": list(tally.stages),
        "stages": stages,
        "failures": failures,
        "infra_failures": sum(1 for f in failures if f["kind"] == "infra"),
        "deselected": tally.deselected,
        "policy": {"xfail": tally.xfail, "max_skip": tally.max_skip},
        "chain": dict(chain),
        "artifacts": {name: dict(value) for name, value in artifacts.items()},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return seal(verdict, key)


def _canonical(content: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in content.items() if k not in ("digest", "signature")}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def content_digest(content: Mapping[str, Any]) -> str:
    """sha256 over every field except ``digest`` and ``signature`` (canonical JSON)."""
    return "sha256:" + hashlib.sha256(_canonical(content)).hexdigest()


def _signature(content: Mapping[str, Any], key: bytes) -> str:
    return "hmac-sha256:" + hmac.new(key, _canonical(content), hashlib.sha256).hexdigest()


def seal(content: dict[str, Any], key: bytes | None) -> dict[str, Any]:
    content = {k: v for k, v in content.items() if k not in ("digest", "signature")}
    content["digest"] = content_digest(content)
    if key:
        content["signature"] = _signature(content, key)
    return content


def key_from_env(name: str = KEY_ENV) -> bytes | None:
    value = os.environ.get(name, "")
    return value.encode() if value else None


def write_report(path: Path, content: Mapping[str, Any]) -> None:
    """Write atomically: a reader never sees half a verdict, and a failed write leaves
    no temporary file behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def verify(
    path: Path,
    *,
    artifacts: Iterable[tuple[str, str]] = (),
    key: bytes | None = None,
    require_signature: bool = False,
    target: str | None = None,
) -> dict[str, Any]:
    """Check a verdict report; return it, or raise ``GateError`` saying what is wrong."""
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise GateError(f"{path}: no such report") from None
    except (OSError, ValueError) as exc:
        raise GateError(f"{path}: not a readable verdict report ({exc})") from None
    if not isinstance(content, dict) or "digest" not in content:
        raise GateError(f"{path}: not a verdict report (no digest)")
    if content["digest"] != content_digest(content):
        raise GateError(f"{path}: digest mismatch: the report was edited after it was written")
    if key is not None:
        signature = content.get("signature")
        if signature is None:
            raise GateError(f"{path}: not signed, but a key was given")
        if not hmac.compare_digest(str(signature), _signature(content, key)):
            raise GateError(f"{path}: bad signature: not signed with this key, or edited")
    elif require_signature:
        raise GateError(f"signature required but no key in ${KEY_ENV}")
    if content.get("verdict") != "promote":
        reasons = "; ".join(content.get("reasons") or []) or "no reason recorded"
        raise GateError(f"{path}: verdict is {content.get('verdict')!r}, not promote: {reasons}")
    if target is not None and content.get("target") != target:
        order = content.get("stage_order") or []
        if target not in order or content.get("target") not in order:
            raise GateError(f"{path}: gate target is {content.get('target')!r}, not {target!r}")
        if order.index(content["target"]) < order.index(target):
            raise GateError(
                f"{path}: promotes to {content['target']!r} only, which is before {target!r}"
            )
    recorded = content.get("artifacts") or {}
    for name, ref in artifacts:
        if name not in recorded:
            raise GateError(f"artifact {name}: not recorded in {path} (has: {sorted(recorded)})")
        now = artifact_digest(ref)
        if now["sha256"] != recorded[name]["sha256"]:
            raise GateError(
                f"artifact {name}: {ref} is not what was tested "
                f"(sha256 {now['sha256'][:16]}… != tested {recorded[name]['sha256'][:16]}…)"
            )
    return dict(content)
