"""Scenario files as pytest items (pytest's non-python collection).

Each ``*.yaml`` file with a top-level ``scenario:`` key becomes one item, marked
``disruptive`` (it runs alone on the network and the network is restored afterwards),
with the file's ``stage`` as its stage mark and its ``client`` as a ``chain`` mark.
Schema errors are collection errors that name file, line and field.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .._errors import ChainHarnessError
from .._gate import infra_fail
from .._session import SESSION_KEY
from ..gate import GateError, parse_stages
from .runner import ScenarioFailed, ScenarioRun
from .schema import Scenario, ScenarioError, load_scenario

__all__ = ["ScenarioFile", "ScenarioItem"]


class ScenarioFile(pytest.File):
    def collect(self) -> Iterator[ScenarioItem]:
        scenario = load_scenario(self.path)
        if scenario.stage is not None:
            try:
                stages = parse_stages(str(self.config.getini("chain_stages")))
            except GateError:
                stages = ()  # reported as a usage error by the gate itself
            if stages and scenario.stage not in stages:
                raise ScenarioError(
                    f"{self.path}: stage: unknown stage {scenario.stage!r}; stages (ini "
                    f"chain_stages) are {', '.join(stages)}"
                )
        item = ScenarioItem.from_parent(self, name=self.path.stem, scenario=scenario)
        item.add_marker(pytest.mark.disruptive)
        item.add_marker(pytest.mark.chain(client=scenario.client))
        if scenario.stage is not None:
            item.add_marker(pytest.mark.stage(scenario.stage))
        yield item

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, ScenarioError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)


class ScenarioItem(pytest.Item):
    def __init__(self, *, scenario: Scenario, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario
        self.run: ScenarioRun | None = None

    def runtest(self) -> None:
        scenario = self.scenario
        session = self.config.stash[SESSION_KEY]
        try:
            chain = session.chain()
        except ChainHarnessError as exc:
            infra_fail(f"{type(exc).__name__}: {exc}")
        if len(chain.nodes) != scenario.nodes:
            pytest.skip(
                f"scenario written for {scenario.nodes} nodes; this run has {len(chain.nodes)} "
                f"(run it with --chain-nodes={scenario.nodes})"
            )
        if scenario.period is not None and chain.testnet.period != scenario.period:
            pytest.skip(
                f"scenario written for a {scenario.period}s block period; this run has "
                f"{chain.testnet.period}s (--chain-period={scenario.period})"
            )
        # Every version the scenario needs must exist before the first step disturbs anything.
        for step, version in scenario.versions():
            try:
                chain.provider.check_version(version)
            except ChainHarnessError as exc:
                where = f"{scenario.path}:{step.line}: {step.where}" if step else "version"
                infra_fail(f"{where}: version {version} is not available: {exc}")
        self.run = ScenarioRun(
            scenario=scenario,
            chain=chain,
            account=session.funded_account,
            bus=session.bus,
            seed=chain.seed,
            key=self.nodeid,
        )
        try:
            self.run.run(restore=session.restore)
        finally:
            self.user_properties.append(("chain_seed", chain.seed))
            if self.run.schedules:
                self.user_properties.append(("fault_schedule", repr(self.run.schedules)))
            self.add_report_section("call", "scenario", self.run.report())

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, ScenarioFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, 0, f"scenario: {self.scenario.title}"
