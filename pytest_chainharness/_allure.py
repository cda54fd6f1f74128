"""Allure reports: environment, failure categories, steps and attachments.

Active only when allure-pytest is installed and ``--alluredir`` is given; without it the
harness reports through pytest alone. Written by the run's owner (the xdist controller):
``environment.properties`` and ``categories.json`` at session end; every process adds
steps (network start, each fault) and, on a failing test, the tail of every node's log,
the heads table and the last bus events.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ._load import LoadResult
    from ._session import ChainSession
    from .chain import Chain

__all__ = ["CATEGORIES", "INFRA_PATTERN", "AllurePlugin", "allure_dir"]

#: Matches the status message of an infrastructure failure (see ``_gate.is_infra``).
INFRA_PATTERN = r"(?s).*(\[infra\]|InfraFailed|pytest_chainharness\._errors\.|docker\.errors\.).*"
CATEGORIES: list[dict[str, Any]] = [
    {
        "name": "Infrastructure failures (harness, nodes did not start, Docker)",
        "matchedStatuses": ["failed", "broken"],
        "messageRegex": INFRA_PATTERN,
    },
    {
        "name": "Product failures",
        "matchedStatuses": ["failed"],
        "messageRegex": r"(?s)(?!.*(\[infra\]|InfraFailed|pytest_chainharness\._errors\.|"
        r"docker\.errors\.)).*",
    },
    {"name": "Test errors (broken tests)", "matchedStatuses": ["broken"]},
]
LOG_TAIL = 80


def allure_dir(config: pytest.Config) -> Path | None:
    value = getattr(config.option, "allure_report_dir", None)
    if not value:
        return None
    try:
        import allure  # noqa: F401
    except ImportError:
        return None
    return Path(value)


class AllurePlugin:
    def __init__(
        self,
        config: pytest.Config,
        session: ChainSession,
        *,
        owner: bool,
        stage_of: Callable[[pytest.Item], str | None],
        target: str | None,
    ) -> None:
        self.config = config
        self.session = session
        self.owner = owner
        self.stage_of = stage_of
        self.target = target
        directory = allure_dir(config)
        assert directory is not None
        self.directory = directory

    # -- steps -----------------------------------------------------------------------------

    def network_step(self) -> AbstractContextManager[Any]:
        import allure

        s = self.session.settings
        if self.session.started:
            return nullcontext()
        return allure.step(f"chainharness: start {s.nodes}-node {s.client} network")

    def watch(self, chain: Chain) -> None:
        """Make every fault on ``chain`` an allure step of the test that caused it."""
        import allure

        def step(node: str, action: str) -> AbstractContextManager[Any]:
            where = "network" if node == "*" else node
            return allure.step(f"fault: {action} ({where})")

        if step not in chain.action_listeners:
            chain.action_listeners.append(step)

    def attach_load(self, result: LoadResult) -> None:
        """Locust's own HTML report of a load run, on the test that ran it."""
        import allure

        if result.html_report is not None and result.html_report.is_file():
            allure.attach.file(  # type: ignore[no-untyped-call]
                str(result.html_report),
                name="locust report",
                attachment_type=allure.attachment_type.HTML,
            )

    # -- hooks -----------------------------------------------------------------------------

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Iterator[None]:
        outcome = yield
        report = outcome.get_result()  # type: ignore[attr-defined]
        if report.failed:
            self._attach_state()
        stage = self.stage_of(item)
        if stage and call.when == "setup":
            import allure

            allure.dynamic.label("stage", stage)  # type: ignore[no-untyped-call]

    def _attach_state(self) -> None:
        import allure

        TEXT = allure.attachment_type.TEXT
        chain = self.session.current_chain
        if chain is None:
            return
        try:
            allure.attach(chain.status_table(), "chainharness heads", allure.attachment_type.TEXT)
        except Exception as exc:  # a report must not fail because a node is gone
            allure.attach(f"unavailable: {exc}", "chainharness heads", TEXT)
        for node in chain.nodes:
            try:
                text = node.logs(tail=LOG_TAIL)
            except Exception as exc:
                text = f"unavailable: {exc}"
            allure.attach(text, f"{node.name} log (last {LOG_TAIL} lines)", TEXT)
        bus = self.session.bus
        if bus is not None:
            allure.attach(bus.last_events_table(20), "chainharness events", TEXT)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.owner:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        info = self.session.describe()
        write_environment(self.directory, info, self.target)
        (self.directory / "categories.json").write_text(json.dumps(CATEGORIES, indent=2))


def write_environment(directory: Path, info: Mapping[str, Any], target: str | None) -> None:
    rows = {
        "chain.client": info.get("client"),
        "chain.version": info.get("version"),
        "chain.nodes": info.get("nodes"),
        "chain.backend": info.get("backend"),
        "chain.seed": info.get("seed"),
        "chain.image": info.get("image"),
        "gate.stage": target or "(no gate)",
    }
    lines = [f"{key}={_escape(value)}" for key, value in rows.items() if value is not None]
    (directory / "environment.properties").write_text("\n".join(lines) + "\n")


def _escape(value: Any) -> str:
    # Java properties: backslash escapes, and ':'/'=' in values are fine unescaped except
    # leading whitespace; keep values on one line.
    return str(value).replace("\\", "\\\\").replace("\n", " ")
