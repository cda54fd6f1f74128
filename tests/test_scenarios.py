"""Scenario files: schema errors, collection, replayable random faults, shipped scenarios."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from pytest_chainharness import Head
from pytest_chainharness.scenario import ScenarioError, draw_schedule, load_scenario, runner

SHIPPED = Path(__file__).resolve().parent.parent / "scenarios" / "faults"


def _write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


GOOD = """
scenario: good
nodes: 4
steps:
  - send: 2
  - partition: [[0, 1], [2, 3]]
  - heal
  - wait: converged
"""


class TestSchema:
    def test_shipped_scenarios_are_valid(self) -> None:
        files = sorted(SHIPPED.glob("*.yaml"))
        assert len(files) >= 6
        for path in files:
            scenario = load_scenario(path)
            assert scenario.steps
            assert scenario.nodes == 4

    def test_good_file(self, tmp_path: Path) -> None:
        scenario = load_scenario(_write(tmp_path, GOOD))
        assert [s.action for s in scenario.steps] == ["send", "partition", "heal", "wait"]
        assert scenario.steps[1].args == {"groups": [[0, 1], [2, 3]]}
        assert scenario.steps[1].line == 5

    @pytest.mark.parametrize(
        ("steps", "pattern"),
        [
            # unknown action
            ("  - explode: 2\n", r"s.yaml:3: steps\[0\].explode: unknown action; choose from send"),
            # missing field
            ("  - latency: {node: 1}\n", r"s.yaml:3: steps\[0\].latency.ms: missing field"),
            # wrong type
            (
                "  - sleep: soon\n",
                r"s.yaml:3: steps\[0\].sleep.seconds: expected a number, got 'soon'",
            ),
            ("  - send: {txs: true}\n", r"s.yaml:3: steps\[0\].send.txs: expected a whole number"),
            # node index out of range
            ("  - kill: 4\n", r"s.yaml:3: steps\[0\].kill.node: node 4 is out of range .*0..3"),
            # a partition that names a node twice / leaves one out
            (
                "  - partition: [[0, 1], [1, 2, 3]]\n",
                r"s.yaml:3: steps\[0\].partition.groups: node1 appears in two groups",
            ),
            (
                "  - partition: [[0, 1], [2]]\n",
                r"s.yaml:3: steps\[0\].partition.groups: every node must be in a group; "
                r"missing: node3",
            ),
            ("  - partition: [[0, 1, 2, 3]]\n", r"needs at least two groups"),
            # unknown field, unknown condition, bad random fault kind
            (
                "  - kill: {node: 1, force: true}\n",
                r"s.yaml:3: steps\[0\].kill.force: unknown field",
            ),
            ("  - wait: sunrise\n", r"steps\[0\].wait.sunrise: unknown condition"),
            (
                "  - random_faults: {count: 2, kinds: [meteor]}\n",
                r"steps\[0\].random_faults.kinds: unknown fault 'meteor'",
            ),
            ("  - send: 1\n  - 42\n", r"s.yaml:4: steps\[1\]: a step is one action"),
            ("  - sleep: -1\n", r"steps\[0\].sleep.seconds: must be >= 0"),
            # proof-of-stake conditions
            (
                "  - wait: {finalized: {min: soon}}\n",
                r"s.yaml:3: steps\[0\].wait.finalized.min: expected N or \+N \(relative\)",
            ),
            (
                "  - assert: {no_finality: {for: later}}\n",
                r"steps\[0\].assert.no_finality.for: expected a number, got 'later'",
            ),
        ],
    )
    def test_bad_steps_name_file_line_and_field(
        self, tmp_path: Path, steps: str, pattern: str
    ) -> None:
        path = _write(tmp_path, "scenario: bad\nsteps:\n" + steps)
        with pytest.raises(ScenarioError, match=pattern):
            load_scenario(path)

    @pytest.mark.parametrize(
        ("text", "pattern"),
        [
            ("scenario: x\n", r"s.yaml:1: scenario file.steps: missing field"),
            ("scenario: x\nnodes: many\nsteps: [heal]\n", r"s.yaml:2: scenario file.nodes"),
            ("scenario: x\nsteps: []\n", r"s.yaml:2: steps: a scenario needs at least one step"),
            ("scenario: x\ncolour: red\nsteps: [heal]\n", r"s.yaml:2: scenario file.colour"),
            ("scenario: [x\n", r"s.yaml:\d+: not valid YAML"),
            ("scenario: x\nnodes: 0\nsteps: [heal]\n", r"s.yaml:2: nodes: must be 1..256"),
        ],
    )
    def test_bad_top_level(self, tmp_path: Path, text: str, pattern: str) -> None:
        with pytest.raises(ScenarioError, match=pattern):
            load_scenario(_write(tmp_path, text))

    def test_a_duplicate_key_is_an_error_not_a_dropped_list(self, tmp_path: Path) -> None:
        # The first `steps:` (with its kill) used to vanish, and the scenario passed.
        text = "scenario: x\nsteps:\n  - kill: 2\nsteps:\n  - wait: converged\n"
        with pytest.raises(
            ScenarioError, match=r"s.yaml:4: .*duplicate key 'steps' \(first at line 2\)"
        ):
            load_scenario(_write(tmp_path, text))
        nested = "scenario: x\nsteps:\n  - latency: {node: 1, ms: 100, ms: 900}\n"
        with pytest.raises(ScenarioError, match=r"s.yaml:3: .*duplicate key 'ms'"):
            load_scenario(_write(tmp_path, nested))

    @pytest.mark.parametrize(
        ("text", "pattern"),
        [
            ("steps:\n  - sleep: .inf\n", r"s.yaml:3: steps\[0\].sleep.seconds: must be a finite"),
            ("steps:\n  - sleep: 99999999999\n", r"sleep.seconds: must be at most 86400"),
            ("timeout: .nan\nsteps: [heal]\n", r"s.yaml:2: scenario file.timeout: must be a fin"),
            ("timeout: 1e300\nsteps: [heal]\n", r"scenario file.timeout: must be at most 86400"),
            ("timeout: 1e2\nsteps: [heal]\n", None),
            ("steps:\n  - send: 10000000000\n", r"steps\[0\].send.txs: must be at most 1e\+06"),
            ("steps:\n  - latency: {node: 1, ms: 10, loss: 2}\n", r"loss: must be at most 1"),
        ],
    )
    def test_numbers_must_be_finite_and_sane(
        self, tmp_path: Path, text: str, pattern: str | None
    ) -> None:
        path = _write(tmp_path, "scenario: x\n" + text)
        if pattern is None:
            assert load_scenario(path).timeout == 100.0
            return
        with pytest.raises(ScenarioError, match=pattern):
            load_scenario(path)

    @pytest.mark.parametrize(
        ("text", "pattern"),
        [
            ("", r"s.yaml:1: empty file"),
            ("Scenario: x\nsteps: [heal]\n", r"missing top-level key 'scenario:' \(found 'Scen"),
        ],
    )
    def test_not_quite_a_scenario(self, tmp_path: Path, text: str, pattern: str) -> None:
        with pytest.raises(ScenarioError, match=pattern):
            load_scenario(_write(tmp_path, text))

    def test_node_range_follows_the_scenario_size(self, tmp_path: Path) -> None:
        path = _write(tmp_path, "scenario: x\nnodes: 2\nsteps:\n  - kill: 2\n")
        with pytest.raises(ScenarioError, match=r"node 2 is out of range \(the scenario has 2"):
            load_scenario(path)


class TestRandomFaults:
    ARGS: ClassVar[dict[str, Any]] = {
        "count": 6,
        "kinds": ["kill", "pause", "restart", "partition", "latency"],
        "hold": 1.0,
        "latency_ms": [100, 500],
    }

    def test_same_seed_same_schedule(self) -> None:
        first = draw_schedule(42, "a.yaml::a/steps[1]", 4, self.ARGS)
        again = draw_schedule(42, "a.yaml::a/steps[1]", 4, self.ARGS)
        assert first == again
        assert len(first) == 6

    def test_other_seed_or_step_other_schedule(self) -> None:
        base = draw_schedule(42, "k", 4, self.ARGS)
        assert draw_schedule(43, "k", 4, self.ARGS) != base
        assert draw_schedule(42, "k2", 4, self.ARGS) != base

    def test_drawn_partitions_cover_every_node_once(self) -> None:
        args = {**self.ARGS, "kinds": ["partition"], "count": 50}
        for fault in draw_schedule(7, "k", 5, args):
            members = sorted(i for g in fault.groups for i in g)
            assert members == [0, 1, 2, 3, 4]
            assert all(fault.groups)


class TestNoFinality:
    """``no_finality``: no block above the highest head at the step's start is finalized
    while it holds (scripted finality, so both outcomes are made on demand)."""

    def check(self, finalized: list[int | None], hold: float = 0.2) -> str:
        nodes = [SimpleNamespace(name=f"node{i}", _spec=i) for i in range(len(finalized))]

        def final(spec: int) -> Head | None:
            number = finalized[spec]
            return None if number is None else Head(number, f"0x{number:064x}")

        chain: Any = SimpleNamespace(
            running_nodes=lambda: nodes,
            heads=lambda: {"node0": Head(20, "0x20"), "node1": Head(21, "0x21")},
            adapter=SimpleNamespace(finalized=final),
            status_table=lambda: "(table)",
        )
        unused: Any = None
        run = runner.ScenarioRun(
            scenario=unused, chain=chain, account=unused, bus=None, seed=0, key="k"
        )
        return run._no_finality(hold)

    def test_finality_below_the_start_is_allowed(self) -> None:
        # A checkpoint justified before the split may still be finalized during it.
        assert self.check([21, None]) == "nothing above #21 finalized for 0.2s"

    def test_a_block_above_the_start_finalized_fails_naming_the_node(self) -> None:
        with pytest.raises(AssertionError, match=r"node1 finalized #22 0x0000.*after #21"):
            self.check([12, 22])


class TestNoFork:
    """The lasting-fork check compares heights deeper than k below the lowest head."""

    class Node:
        def __init__(self, name: str, hashes: dict[int, str]) -> None:
            self.name, self.rpc_url, self.hashes = name, name, hashes
            self._spec = self  # what the adapter is asked about

        def head(self) -> Head:
            top = max(self.hashes)
            return Head(top, self.hashes[top])

    def check(self, depth: int, *chains: dict[int, str], heads_only: bool = False) -> str:
        nodes = [self.Node(f"node{i}", c) for i, c in enumerate(chains)]

        def block_hashes(node: Any, first: int, last: int) -> dict[int, str] | None:
            if heads_only:
                return None
            return {n: node.hashes[n] for n in range(first, last + 1)}

        adapter = SimpleNamespace(block_hashes=block_hashes, display_name="counter")
        chain: Any = SimpleNamespace(running_nodes=lambda: nodes, adapter=adapter)
        unused: Any = None  # the check reads only the chain and the start height
        run = runner.ScenarioRun(
            scenario=unused, chain=chain, account=unused, bus=None, seed=0, key="k", start_height=2
        )
        return run._no_fork(depth)

    SHARED: ClassVar[dict[int, str]] = {n: f"0x{n:02x}" for n in range(1, 10)}

    def test_a_client_that_tells_only_its_head_is_not_checked_and_says_so(self) -> None:
        other = {**self.SHARED, 5: "0xother"}
        said = self.check(0, self.SHARED, other, heads_only=True)
        assert said == (
            "not checked: client counter reports its head only, not the block at each height"
        )

    def test_the_head_itself_may_differ(self) -> None:
        other = {**self.SHARED, 9: "0xother"}
        assert self.check(0, self.SHARED, other).startswith("heights 2..8 ")

    def test_a_fork_below_the_head_fails_with_the_hashes(self) -> None:
        other = {**self.SHARED, 8: "0xother", 9: "0xother9"}
        with pytest.raises(AssertionError, match=r"fork at height 8 \(1 below the common head 9"):
            self.check(0, self.SHARED, other)
        # Within the allowed depth it passes.
        assert self.check(1, self.SHARED, other).startswith("heights 2..7 ")

    def test_the_lowest_head_is_the_common_one(self) -> None:
        behind = {n: h for n, h in self.SHARED.items() if n <= 6}
        behind[6] = "0xbehind"
        assert self.check(0, self.SHARED, behind).startswith("heights 2..5 ")
        with pytest.raises(AssertionError, match="fork at height 5"):
            self.check(0, self.SHARED, {**behind, 5: "0xx"})


class TestCollection:
    def test_scenario_files_become_items_and_other_yaml_is_ignored(
        self, inner: pytest.Pytester
    ) -> None:
        (inner.path / "scenarios").mkdir()
        (inner.path / "scenarios" / "split.yaml").write_text(GOOD)
        (inner.path / "scenarios" / "services.yaml").write_text("services:\n  db: {}\n")
        result = inner.runpytest("--collect-only", "-q", "scenarios")
        result.stdout.fnmatch_lines(["scenarios/split.yaml::split"])
        assert "services" not in result.stdout.str()
        assert result.ret == 0

    def test_a_file_under_scenarios_that_is_almost_one_is_reported(
        self, inner: pytest.Pytester
    ) -> None:
        (inner.path / "scenarios").mkdir()
        (inner.path / "scenarios" / "empty.yaml").write_text("")
        (inner.path / "scenarios" / "typo.yaml").write_text("Scenario: x\nsteps: [heal]\n")
        (inner.path / "scenarios" / "services.yaml").write_text("services:\n  db: {}\n")
        result = inner.runpytest("--collect-only", "-q", "scenarios")
        assert result.ret == pytest.ExitCode.INTERRUPTED
        result.stdout.fnmatch_lines_random(
            [
                "*scenarios/empty.yaml:1: empty file*",
                "*scenarios/typo.yaml:1: scenario: missing top-level key 'scenario:'*",
            ]
        )
        assert "services.yaml" not in result.stdout.str()

    def test_schema_error_is_a_collection_error(self, inner: pytest.Pytester) -> None:
        (inner.path / "bad.yaml").write_text("scenario: bad\nsteps:\n  - kill: 9\n")
        result = inner.runpytest("bad.yaml")
        assert result.ret == pytest.ExitCode.INTERRUPTED  # collection errors stop the run
        result.stdout.fnmatch_lines(
            ["*bad.yaml:3: steps[[]0[]].kill.node: node 9 is out of range*"]
        )
        assert "Traceback" not in result.stdout.str()

    def test_stage_key_works_with_the_gate(self, inner: pytest.Pytester) -> None:
        (inner.path / "late.yaml").write_text("scenario: late\nstage: production\nsteps: [heal]\n")
        inner.makepyfile("def test_build():\n    pass\n")
        result = inner.runpytest("--gate=build", "--gate-report=v.json", ".")
        result.assert_outcomes(passed=1, deselected=1)

    def test_unknown_stage_key_is_a_collection_error(self, inner: pytest.Pytester) -> None:
        (inner.path / "s.yaml").write_text("scenario: x\nstage: qa\nsteps: [heal]\n")
        result = inner.runpytest("s.yaml")
        result.stdout.fnmatch_lines(["*s.yaml: stage: unknown stage 'qa'*"])


@pytest.mark.usefixtures("geth_required", "mosquitto_required")
class TestRunning:
    def test_missing_version_fails_before_any_step(self, inner: pytest.Pytester) -> None:
        (inner.path / "s.yaml").write_text(
            "scenario: upgrade to nowhere\nsteps:\n  - kill: 1\n"
            "  - upgrade: {node: 0, version: '9.9.9'}\n"
        )
        inner.makepyfile(
            test_after="""
            def test_nothing_was_killed(bus):
                actions = [e.payload["action"] for e in bus.events("fault")]
                assert "kill" not in actions, actions
            """
        )
        result = inner.runpytest_subprocess("-p", "no:randomly", "s.yaml", "test_after.py")
        result.assert_outcomes(failed=1, passed=1)
        result.stdout.fnmatch_lines(
            ["*[[]infra[]] *s.yaml:4: steps[[]1[]].upgrade: version 9.9.9 is not available*"]
        )

    def test_random_faults_report_replays_from_the_seed(self, inner: pytest.Pytester) -> None:
        (inner.path / "r.yaml").write_text(
            "scenario: random\nsteps:\n"
            "  - random_faults: {count: 2, kinds: [pause, kill], hold: 0.5}\n"
        )
        result = inner.runpytest_subprocess("r.yaml", "--chain-seed=1234", "-rA")
        result.assert_outcomes(passed=1)
        out = result.stdout.str()
        match = re.search(r'^  (\{"step": "steps\[0\]\.random_faults".*)$', out, re.MULTILINE)
        assert match, out
        reported = json.loads(match.group(1))
        assert reported["seed"] == 1234
        args = {"count": 2, "kinds": ["pause", "kill"], "hold": 0.5, "latency_ms": [100, 500]}
        expected = draw_schedule(1234, "r.yaml::r/steps[0]", 4, args)
        assert reported["faults"] == [f.to_dict() for f in expected]
        assert "replay with --chain-seed=1234" in out

    def test_the_timeout_holds_during_a_step(self, inner: pytest.Pytester) -> None:
        (inner.path / "t.yaml").write_text(
            "scenario: too slow\nnodes: 2\ntimeout: 3\nsteps:\n  - sleep: 60\n  - heal\n"
        )
        result = inner.runpytest_subprocess("t.yaml", "--chain-nodes=2", "--durations=1")
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(
            ["*t.yaml:5: the scenario's timeout of 3s ran out during steps[[]0[]].sleep (line 5)*"]
        )
        # It failed at the 3 s mark, not after the whole sleep. The call also starts the
        # network (7.5 s of a CI run's 11.5 s), so the bound is the sleep itself: a
        # timeout that did not hold makes the call last at least that long.
        took = re.search(r"([\d.]+)s call .*t.yaml", result.stdout.str())
        assert took is not None, result.stdout.str()
        assert float(took.group(1)) < 60

    def test_failing_assert_reports_the_line_and_the_timeline(self, inner: pytest.Pytester) -> None:
        (inner.path / "f.yaml").write_text(
            "scenario: wrong expectation\nsteps:\n"
            "  - send: 1\n"
            "  - assert: {stalled: {nodes: all, for: 3, within: 4}}\n"
        )
        result = inner.runpytest_subprocess("f.yaml")
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(
            [
                "*f.yaml:4: steps[[]1[]].assert failed: node0, node1, node2, node3 kept "
                "producing blocks*",
                "*steps[[]0[]].send: 1 tx sent*",
            ]
        )


def _run_shipped(inner: pytest.Pytester, backend: str, names: list[str]) -> None:
    folder = inner.path / "scenarios"
    folder.mkdir()
    for name in names:
        shutil.copy(SHIPPED / f"{name}.yaml", folder)
    result = inner.runpytest_subprocess(
        "scenarios", f"--chain-backend={backend}", "-p", "no:cacheprovider", "-rA"
    )
    assert result.ret == 0, result.stdout.str()[-6000:]
    result.assert_outcomes(passed=len(names))
    result.stdout.fnmatch_lines(["*no lasting fork: heights*identical on 4 nodes*"])


@pytest.mark.usefixtures("geth_required", "mosquitto_required")
def test_partition_and_crash_scenarios_on_the_process_backend(inner: pytest.Pytester) -> None:
    _run_shipped(inner, "process", ["partition-2-2", "partition-3-1", "crash-restart"])


@pytest.mark.usefixtures("docker_required")
def test_every_shipped_geth_scenario_on_the_docker_backend(inner: pytest.Pytester) -> None:
    # The CometBFT ones run on processes, in tests/test_cometbft.py.
    names = sorted(p.stem for p in SHIPPED.glob("*.yaml") if load_scenario(p).client == "geth")
    assert len(names) >= 7
    _run_shipped(inner, "docker", names)
