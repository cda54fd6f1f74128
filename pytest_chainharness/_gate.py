"""The pytest side of the gate: stage marks, ``--gate`` selection and the verdict file.

Every process resolves each item's stage (unknown names are usage errors) and carries it
as the ``stage`` user property (so JUnit XML has it). Only the process that owns the run
(the xdist controller, or pytest itself without xdist) tallies reports and writes the one
verdict; under xdist it sees every worker's reports through ``pytest_runtest_logreport``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from ._errors import ChainHarnessError
from ._options import _raw
from .gate import (
    DEFAULT_STAGES,
    KEY_ENV,
    XFAIL_POLICIES,
    GateError,
    Tally,
    artifact_digest,
    build_verdict,
    key_from_env,
    parse_artifact,
    parse_stages,
    seal,
    write_report,
)

__all__ = [
    "GatePlugin",
    "GateSettings",
    "InfraFailed",
    "add_gate_options",
    "claim_report",
    "infra_fail",
    "is_infra",
    "item_stage",
    "read_gate_settings",
    "withhold_key",
]

STAGE_PROPERTY = "stage"
KIND_PROPERTY = "chainharness_failure"


class InfraFailed(pytest.fail.Exception):  # type: ignore[name-defined,misc]
    """A test failed because the harness or its infrastructure did (not the product)."""


# pytest shows outcome exceptions without their module path ("Failed: ..."); so should we.
InfraFailed.__module__ = "builtins"


def infra_fail(message: str) -> NoReturn:
    """Fail the current test as an infrastructure failure (counted apart from product ones)."""
    __tracebackhide__ = True
    raise InfraFailed(msg=f"[infra] {message}", pytrace=False)


def is_infra(exc: BaseException) -> bool:
    """Was this failure caused by the harness or its infrastructure, not by the product?"""
    if isinstance(exc, (InfraFailed, ChainHarnessError)):
        return True
    module = type(exc).__module__ or ""
    # docker-py raises these when the engine refuses; the product is not at fault.
    if module.startswith(("docker.errors", "testcontainers.")):
        return True
    # An engine that vanished mid-call surfaces as a bare transport error from inside
    # docker-py (or testcontainers): infra too, but only when it came through them.
    if module.startswith(("requests.", "urllib3.")):
        tb = exc.__traceback__
        while tb is not None:
            filename = tb.tb_frame.f_code.co_filename.replace("\\", "/")
            if "/docker/" in filename or "/testcontainers/" in filename:
                return True
            tb = tb.tb_next
    return False


@dataclass(frozen=True)
class GateSettings:
    stages: tuple[str, ...]
    default_stage: str
    target: str | None
    report: Path
    max_skip: float
    xfail: str
    artifacts: tuple[tuple[str, str], ...]


def add_gate_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("chainharness-gate", "promotion gate (deploy stages)")
    options: list[tuple[str, str, str]] = [
        ("gate", "--gate", "run the gate for promotion to STAGE and write a verdict"),
        ("gate_report", "--gate-report", "where the verdict JSON goes (default gate-report.json)"),
        (
            "gate_max_skip",
            "--gate-max-skip",
            "largest share of skipped tests a stage may have and still promote, 0..1 or "
            "a percentage (default 0: any skip blocks)",
        ),
        (
            "gate_xfail",
            "--gate-xfail",
            f"how xfailed/xpassed tests count: {'|'.join(XFAIL_POLICIES)} (default block)",
        ),
    ]
    for dest, flag, help_text in options:
        group.addoption(flag, dest=dest, default=None, help=help_text)
        parser.addini(dest, help=help_text, default=None)
    group.addoption(
        "--gate-artifact",
        dest="gate_artifact",
        action="append",
        default=None,
        metavar="NAME=PATH|IMAGE",
        help="record the sha256 of what is being tested (a file or a local image id)",
    )
    parser.addini("gate_artifact", "artifacts to record, NAME=PATH|IMAGE per line", type="linelist")
    parser.addini(
        "chain_stages",
        "ordered deploy stages (default: build, integration, staging, production)",
        default=", ".join(DEFAULT_STAGES),
    )
    parser.addini("chain_default_stage", "stage of tests without a stage mark (default: the first)")


def _report_path(config: pytest.Config) -> Path:
    report_raw, _ = _raw(config, "gate_report")
    report = Path(str(report_raw or "gate-report.json")).expanduser()
    if not report.is_absolute():
        report = config.invocation_params.dir / report
    return report


def claim_report(config: pytest.Config) -> None:
    """With ``--gate``, replace the verdict file by a ``block`` before anything else is
    checked, so no run that stops early (a usage error, a crash) leaves an earlier
    ``promote`` in place for ``gate verify`` to accept. xdist workers write nothing.

    The report's folder must exist (a typo must not make directories and run for an
    hour), and the path must not be a folder.
    """
    if getattr(config, "workerinput", None) is not None or _raw(config, "gate")[0] is None:
        return
    report = _report_path(config)
    cannot = f"--gate-report={report}: cannot write the verdict there"
    if report.is_dir():
        raise pytest.UsageError(f"{cannot}: it is a directory; name a file in it")
    if not report.parent.is_dir():
        raise pytest.UsageError(f"{cannot}: no such directory {report.parent}")
    placeholder = seal(
        {
            "target": str(_raw(config, "gate")[0]),
            "verdict": "block",
            "reasons": ["the gate run has not finished (started, stopped early or killed)"],
        },
        None,
    )
    try:
        write_report(report, placeholder)
    except OSError as exc:
        raise pytest.UsageError(f"{cannot} ({exc.strerror or exc})") from None


def withhold_key(config: pytest.Config) -> bytes | None:
    """Take the signing key out of the environment for the rest of the run.

    Every child the harness starts (geth, the agents, the broker, the watchdog, xdist
    workers, locust) inherits the environment; none of them needs the key, and any of
    them (or a test) could leak or misuse it. Put back when pytest unconfigures, for
    callers that run pytest in-process.
    """
    key = key_from_env()
    value = os.environ.pop(KEY_ENV, None)
    if value is not None:

        def restore() -> None:
            os.environ.setdefault(KEY_ENV, value)

        config.add_cleanup(restore)
    return key


def read_gate_settings(config: pytest.Config) -> GateSettings:
    try:
        stages = parse_stages(str(config.getini("chain_stages")))
    except GateError as exc:
        raise pytest.UsageError(f"ini chain_stages: {exc}") from None
    default = str(config.getini("chain_default_stage") or stages[0]).strip()
    if default not in stages:
        raise pytest.UsageError(
            f"ini chain_default_stage={default!r}: not a stage; stages are {', '.join(stages)}"
        )
    target, where = _raw(config, "gate")
    if target is not None and str(target) not in stages:
        raise pytest.UsageError(
            f"{where}={target}: unknown stage; stages (ini chain_stages) are {', '.join(stages)}"
        )
    report = _report_path(config)
    raw_skip, where = _raw(config, "gate_max_skip")
    max_skip = 0.0
    if raw_skip is not None:
        text = str(raw_skip).strip()
        try:
            max_skip = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
        except ValueError:
            max_skip = -1
        if not 0 <= max_skip <= 1:
            raise pytest.UsageError(f"{where}={raw_skip}: expected a share 0..1 or 0%..100%")
    xfail_raw, where = _raw(config, "gate_xfail")
    xfail = str(xfail_raw or "block")
    if xfail not in XFAIL_POLICIES:
        raise pytest.UsageError(f"{where}={xfail}: choose one of {', '.join(XFAIL_POLICIES)}")
    artifacts_raw, where = _raw(config, "gate_artifact")
    artifacts = []
    for text in artifacts_raw or []:
        try:
            artifacts.append(parse_artifact(str(text)))
        except GateError as exc:
            raise pytest.UsageError(f"{where}: {exc}") from None
    return GateSettings(
        stages=stages,
        default_stage=default,
        target=str(target) if target is not None else None,
        report=report,
        max_skip=max_skip,
        xfail=xfail,
        artifacts=tuple(artifacts),
    )


def stage_of(item: pytest.Item, settings: GateSettings) -> str:
    marks = list(item.iter_markers("stage"))
    if not marks:
        return settings.default_stage
    mark = marks[0]  # the closest one: a test's own mark overrides its class's or module's
    if len(mark.args) != 1 or mark.kwargs or not isinstance(mark.args[0], str):
        raise pytest.UsageError(
            f'{item.nodeid}: @pytest.mark.stage takes one stage name, e.g. stage("staging")'
        )
    name = mark.args[0]
    if name not in settings.stages:
        raise pytest.UsageError(
            f"{item.nodeid}: unknown stage {name!r}; stages (ini chain_stages) are "
            f"{', '.join(settings.stages)}"
        )
    return name


def _property(report: pytest.TestReport | pytest.CollectReport, name: str) -> str | None:
    for entry in getattr(report, "user_properties", ()):
        # xdist sends tuples as lists
        if len(entry) == 2 and entry[0] == name:
            return str(entry[1])
    return None


def _first_line(report: pytest.TestReport | pytest.CollectReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = str(crash.message) if crash is not None else report.longreprtext
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:500]
    return ""


def _outcome(report: pytest.TestReport) -> str | None:
    if report.passed:
        if report.when != "call":
            return None
        return "xpassed" if hasattr(report, "wasxfail") else "passed"
    if report.skipped:
        return "xfailed" if hasattr(report, "wasxfail") else "skipped"
    return "failed" if report.when == "call" else "error"


class GatePlugin:
    """Stage resolution everywhere; the tally and the verdict in the run's owner only."""

    def __init__(
        self,
        config: pytest.Config,
        settings: GateSettings,
        *,
        owner: bool,
        describe_chain: Callable[[], Mapping[str, Any]],
        key: bytes | None = None,
    ) -> None:
        self.config = config
        self.key = key
        self.settings = settings
        self.owner = owner
        self.describe_chain = describe_chain
        self.tally: Tally | None = None
        self.interrupted: str | None = None
        self.verdict: dict[str, Any] | None = None
        self.artifacts: dict[str, dict[str, str]] = {}
        if settings.target is not None and owner:
            self.tally = Tally(
                stages=settings.stages,
                target=settings.target,
                xfail=settings.xfail,
                max_skip=settings.max_skip,
            )
            self._start_report()

    def _start_report(self) -> None:
        """Fail now, not after an hour of tests, when the verdict cannot be written; and
        never leave an earlier run's ``promote`` in place while this one runs."""
        settings = self.settings
        try:
            for name, ref in settings.artifacts:
                self.artifacts[name] = artifact_digest(ref)
        except GateError as exc:
            raise pytest.UsageError(f"--gate-artifact: {exc}") from None
        placeholder = seal(
            {
                "target": settings.target,
                "verdict": "block",
                "reasons": ["the gate run has not finished (started, interrupted or killed)"],
                "artifacts": self.artifacts,
            },
            None,
        )
        try:
            write_report(settings.report, placeholder)
        except OSError as exc:
            raise pytest.UsageError(
                f"--gate-report={settings.report}: cannot write the verdict there ({exc})"
            ) from None

    # -- every process -------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        keep: list[pytest.Item] = []
        dropped: list[pytest.Item] = []
        target = self.settings.target
        limit = self.settings.stages.index(target) if target is not None else None
        for item in items:
            stage = stage_of(item, self.settings)
            item.user_properties.append((STAGE_PROPERTY, stage))
            if limit is None or self.settings.stages.index(stage) <= limit:
                keep.append(item)
            else:
                dropped.append(item)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = keep

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        report = yield
        if report.failed and call.excinfo is not None and is_infra(call.excinfo.value):
            # A new list: the report shares item.user_properties with the item's other phases.
            report.user_properties = [*report.user_properties, (KIND_PROPERTY, "infra")]
        return report

    # -- the owner -----------------------------------------------------------------------

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if self.tally is None:
            return
        for item in session.items:
            self.tally.select(item.nodeid, item_stage(item) or self.settings.default_stage)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        if self.tally is None:
            return
        for nodeid in ids:
            # The stage comes with the item's reports; "" until then.
            self.tally.selected.setdefault(nodeid, "")

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        if self.tally is not None:
            self.tally.deselected += len(items)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if self.tally is not None and report.failed:
            self.tally.collect_error(report.nodeid or "<session>", _first_line(report))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.tally is None:
            return
        outcome = _outcome(report)
        if outcome is None:
            return
        stage = _property(report, STAGE_PROPERTY) or self.settings.default_stage
        if not self.tally.selected.get(report.nodeid):
            self.tally.selected[report.nodeid] = stage
        failed = outcome in ("failed", "error")
        kind = (_property(report, KIND_PROPERTY) or "product") if failed else None
        self.tally.record(
            report.nodeid,
            stage,
            outcome,
            kind=kind,
            message=_first_line(report) if failed or outcome == "xfailed" else "",
            when=report.when or "",
        )

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        self.interrupted = f"interrupted ({excinfo.typename})"

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.tally is None:
            return
        interrupted = self.interrupted
        if exitstatus == pytest.ExitCode.INTERRUPTED and interrupted is None:
            interrupted = "interrupted"
        elif exitstatus == pytest.ExitCode.INTERNAL_ERROR:
            interrupted = "internal error"
        elif (session.shouldstop or session.shouldfail) and interrupted is None:
            interrupted = f"stopped early: {session.shouldstop or session.shouldfail}"
        for nodeid, stage in list(self.tally.selected.items()):
            if not stage:
                self.tally.selected[nodeid] = self.settings.default_stage
        try:
            chain = dict(self.describe_chain())
        except Exception as exc:  # the verdict must be written even if this fails
            chain = {"error": f"{type(exc).__name__}: {exc}"}
        self.verdict = build_verdict(
            self.tally,
            interrupted=interrupted,
            chain=chain,
            artifacts=self.artifacts,
            key=self.key,
        )
        write_report(self.settings.report, self.verdict)
        if self.verdict["verdict"] != "promote" and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        verdict = self.verdict
        if verdict is None:
            return
        tr = terminalreporter
        promote = verdict["verdict"] == "promote"
        tr.section(f"chainharness gate: {verdict['target']}", green=promote, red=not promote)
        for stage, row in verdict["stages"].items():
            tr.write_line(
                f"  {stage:<14} passed {row['passed']:>4}  failed {row['failed']:>3}  "
                f"errors {row['errors']:>3}  skipped {row['skipped']:>3}  "
                f"xfail {row['xfailed'] + row['xpassed']:>3}  infra {row['infra']:>3}"
            )
        for reason in verdict["reasons"]:
            tr.write_line(f"  - {reason}")
        for failure in verdict["failures"][:10]:
            tr.write_line(f"  [{failure['kind']}] {failure['test']}: {failure['message']}")
        word = "PROMOTE" if promote else "BLOCK"
        tr.write_line(
            f"verdict: {word} to {verdict['target']} ({self.settings.report}, "
            f"{verdict['digest'][:19]}…)",
            green=promote,
            red=not promote,
            bold=True,
        )


def item_stage(item: pytest.Item) -> str | None:
    for name, value in item.user_properties:
        if name == STAGE_PROPERTY:
            return str(value)
    return None
