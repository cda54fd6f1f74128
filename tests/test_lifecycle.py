"""Start, failure and teardown of whole runs, in child pytest sessions."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from pytest_chainharness import NetworkStartError, Testnet, build_testnet
from pytest_chainharness._proc import RUN_MARKER, alive
from pytest_chainharness._rpc import rpc_call
from pytest_chainharness._start import launch
from pytest_chainharness.chain import Chain
from pytest_chainharness.clients import GethAdapter
from pytest_chainharness.providers import ProcessProvider
from pytest_chainharness.providers.base import admin_dir
from pytest_chainharness.tools import find_geth

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = (ROOT / "examples" / "test_example.py").read_text()

pytestmark = pytest.mark.usefixtures("geth_required")


def processes_under(path: Path) -> list[int]:
    """Live pids whose command line mentions ``path`` (datadirs live below it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(path) in cmdline and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def admin_dirs_of(runs_dir: Path) -> list[Path]:
    """The admin socket folders (under the system's temp folder) of the runs under ``runs_dir``."""
    runs = runs_dir.glob("ch-*") if runs_dir.exists() else []
    return [admin_dir(run.name) for run in runs if admin_dir(run.name).exists()]


def assert_nothing_left(runs_dir: Path) -> None:
    deadline = time.monotonic() + 5
    while (processes_under(runs_dir) or admin_dirs_of(runs_dir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_under(runs_dir) == []
    assert list(runs_dir.glob("*/nodes")) == []
    assert admin_dirs_of(runs_dir) == []


class TestWholeRuns:
    def test_examples_pass_and_leave_nothing(self, inner: pytest.Pytester, runs_dir: Path) -> None:
        inner.makepyfile(test_example=EXAMPLES)
        result = inner.runpytest_subprocess("--chain-nodes=4", "-p", "no:cacheprovider")
        result.assert_outcomes(passed=3)
        assert_nothing_left(runs_dir)
        (run,) = runs_dir.iterdir()
        assert {p.name for p in (run / "logs").iterdir()} == {
            *(f"node{i}.log" for i in range(4)),
            *(f"agent-node{i}.log" for i in range(4)),
            *(f"events-node{i}.jsonl" for i in range(4)),
            "signers.log",
            "events-bus.jsonl",
            "broker.log",
            "events.jsonl",
        }

    def test_same_suite_under_xdist_shares_one_network(
        self, inner: pytest.Pytester, runs_dir: Path
    ) -> None:
        inner.makepyfile(test_example=EXAMPLES)
        result = inner.runpytest_subprocess(
            "-n", "2", "--chain-nodes=4", "-p", "no:cacheprovider", "-W", "error::ResourceWarning"
        )
        result.assert_outcomes(passed=3)
        (_run,) = runs_dir.iterdir()  # one run directory: one network for both workers
        assert_nothing_left(runs_dir)
        # A worker leaves the network it started to the run's owner: it drops its
        # handles on those processes without a warning that they still run.
        out = result.stdout.str() + result.stderr.str()
        assert "is still running" not in out, out[-3000:]

    def test_workers_get_disjoint_accounts(self, inner: pytest.Pytester, runs_dir: Path) -> None:
        inner.makepyfile(
            """
            import os, pytest

            @pytest.mark.parametrize("i", range(8))
            def test_account(chain, funded_account, i):
                worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
                out = os.path.join(os.environ["CHAINHARNESS_RUNS"], "accounts.txt")
                with open(out, "a") as fh:
                    fh.write(f"{worker} {funded_account.address} {chain.accounts[0].address}\\n")
                chain.wait_for_tx(chain.transfer(funded_account, chain.accounts[0].address, 1))
            """
        )
        inner.runpytest_subprocess("-n", "2", "--chain-nodes=2").assert_outcomes(passed=8)
        rows = [line.split() for line in (runs_dir / "accounts.txt").read_text().splitlines()]
        funded = [r[1] for r in rows]
        assert len(set(funded)) == 8
        fixed = {r[0]: r[2] for r in rows}
        assert len(set(fixed.values())) == len(fixed) == 2
        assert not set(funded) & set(fixed.values())
        assert_nothing_left(runs_dir)

    @pytest.mark.parametrize(
        ("sig", "code"),
        [
            (signal.SIGKILL, -signal.SIGKILL),
            (signal.SIGTERM, -signal.SIGTERM),
            (signal.SIGINT, pytest.ExitCode.INTERRUPTED),
        ],
        ids=["sigkill-watchdog", "sigterm-watchdog", "sigint-teardown"],
    )
    def test_interrupted_run_leaves_nothing(
        self,
        interrupt_when_up: Callable[..., tuple[int, str]],
        runs_dir: Path,
        sig: int,
        code: int,
    ) -> None:
        seen, output = interrupt_when_up(
            ["--chain-nodes=2"], sig, lambda: processes_under(runs_dir)
        )
        assert seen == code, output[-2000:]
        assert_nothing_left(runs_dir)

    def test_a_teardown_step_that_fails_skips_none_of_the_others(
        self, inner: pytest.Pytester, runs_dir: Path
    ) -> None:
        """Each teardown step runs whatever failed before it: a step skipped leaks what
        it would have removed (a CI run once kept its datadirs and keys when the docker
        network's removal raised). The failure still fails the run, and says what failed."""
        inner.makeconftest(
            """
            from pytest_chainharness.providers.process import ProcessProvider

            def refuse(self):
                raise RuntimeError("the helpers would not stop")

            ProcessProvider.stop_helpers = refuse
            """
        )
        inner.makepyfile("def test_up(chain):\n    chain.wait_for_height(1)\n")
        result = inner.runpytest_subprocess("--chain-nodes=2")
        result.assert_outcomes(passed=1)
        assert result.ret != 0
        assert "RuntimeError: the helpers would not stop" in result.stderr.str()
        assert_nothing_left(runs_dir)
        (run,) = runs_dir.iterdir()
        assert '"password": "<redacted>"' in (run / "network.json").read_text()


def two_node_chain(
    testnet: Testnet,
    adapter: GethAdapter,
    tmp_path: Path,
    *,
    provider_class: type[ProcessProvider] = ProcessProvider,
    binary: Path | None = None,
) -> Chain:
    """A chain on the process backend, launched by the test itself, with its run under tmp_path."""
    provider = provider_class(
        testnet,
        adapter,
        run_dir=tmp_path / "run",
        run_id=f"t-{os.getpid()}-{testnet.seed}",
        binary=binary or adapter.find_binary(),
    )
    return Chain(testnet, provider, adapter)


class TestKeptLogs:
    """A run in which a test failed keeps its logs under .chainharness/failed/<run>/."""

    def test_a_failed_run_keeps_its_logs_and_says_where(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(
            """
            def test_fails(chain):
                chain.wait_for_height(1)
                assert False, "the product broke"
            """
        )
        result = inner.runpytest_subprocess("--chain-nodes=2")
        result.assert_outcomes(failed=1)
        kept = list((inner.path / ".chainharness" / "failed").glob("ch-*"))
        assert len(kept) == 1
        result.stdout.fnmatch_lines([f"chainharness: this run's logs are kept in {kept[0]} *"])
        logs = {p.name for p in (kept[0] / "logs").iterdir()}
        assert {"node0.log", "node1.log", "events.jsonl", "agent-node0.log"} <= logs
        assert "Starting peer-to-peer node" in (kept[0] / "logs" / "node0.log").read_text()
        blocks = [
            json.loads(line)
            for line in (kept[0] / "logs" / "events.jsonl").read_text().splitlines()
        ]
        assert any(e["kind"] == "block" for e in blocks)
        state = kept[0] / "network.json"
        assert stat_mode(state) == 0o600
        assert stat_mode(kept[0]) == 0o700
        text = state.read_text()
        assert '"signer_key": "<redacted>"' in text
        assert '"password": "<redacted>"' in text

    def test_a_passing_run_keeps_nothing_unless_asked(self, inner: pytest.Pytester) -> None:
        inner.makepyfile("def test_ok(chain):\n    chain.wait_for_height(1)\n")
        result = inner.runpytest_subprocess("--chain-nodes=1")
        result.assert_outcomes(passed=1)
        assert not (inner.path / ".chainharness").exists()
        assert "logs are kept" not in result.stdout.str()
        result = inner.runpytest_subprocess("--chain-nodes=1", "--chain-keep-logs")
        result.assert_outcomes(passed=1)
        (kept,) = (inner.path / ".chainharness" / "failed").glob("ch-*")
        assert (kept / "logs" / "node0.log").is_file()

    def test_only_the_newest_runs_are_kept(self, tmp_path: Path) -> None:
        from pytest_chainharness._runlogs import keep_run_logs

        run = tmp_path / "run"
        (run / "logs").mkdir(parents=True)
        (run / "logs" / "node0.log").write_bytes(b"x" * 10 + b"\n" + b"tail\n")
        dest = tmp_path / "kept"
        for i in range(4):
            keep_run_logs(run, dest / f"ch-{i}", keep=2)
            os.utime(dest / f"ch-{i}", (1000 + i, 1000 + i))
        assert sorted(p.name for p in dest.iterdir()) == ["ch-2", "ch-3"]


def test_a_replacement_xdist_worker_gets_accounts_of_its_own(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import os
        import time
        import pytest

        @pytest.mark.parametrize("i", range(6))
        def test_accounts(chain, funded_account, worker_id, i):
            fixed = ",".join(a.address for a in chain.accounts)
            with open("seen.txt", "a") as seen:
                seen.write(f"{worker_id} {funded_account.address} {fixed}\\n")
            if worker_id == "gw0" and not os.path.exists("crashed"):
                open("crashed", "w").close()
                os._exit(1)  # the worker dies; xdist starts gw2 in its place
            # gw1 holds its first tests until gw2 ran one, so the rest stay queued for
            # gw2 (on a busy machine gw1 otherwise finished them all before gw2 started).
            deadline = time.monotonic() + 120
            while worker_id == "gw1" and time.monotonic() < deadline:
                if "gw2 " in open("seen.txt").read():
                    break
                time.sleep(0.1)
        """
    )
    result = inner.runpytest_subprocess("-n", "2", "--chain-nodes=1")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 1, result.stdout.str()[-3000:]
    assert outcomes.get("passed") == 5
    rows = [line.split() for line in (inner.path / "seen.txt").read_text().splitlines()]
    workers = {row[0] for row in rows}
    assert "gw2" in workers, rows
    handed = [row[1] for row in rows]
    assert len(handed) == len(set(handed)), rows
    fixed = {row[0]: row[2].split(",") for row in rows}
    assert all(len(accounts) == 8 for accounts in fixed.values())
    every_fixed = [a for accounts in fixed.values() for a in accounts]
    assert len(every_fixed) == len(set(every_fixed))
    assert not set(every_fixed) & set(handed)


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_stale_run_of_a_dead_owner_is_swept_at_start(
    inner: pytest.Pytester, runs_dir: Path
) -> None:
    # What a run leaves when its owner and its watchdog both died: a marked process and
    # a datadir, with the dead owner's pid in the run directory.
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = runs_dir / "ch-stale002"
    (stale / "nodes" / "node0").mkdir(parents=True)
    (stale / "owner").write_text(str(dead.pid))
    leftover = subprocess.Popen(
        ["sleep", "300"], env={**os.environ, RUN_MARKER: "ch-stale002"}, process_group=0
    )
    try:
        inner.makepyfile("def test_up(chain):\n    pass\n")
        inner.runpytest_subprocess("--chain-nodes=1").assert_outcomes(passed=1)
        assert leftover.wait(timeout=10) == -signal.SIGKILL
        assert not (stale / "nodes").exists()
    finally:
        leftover.kill()
        leftover.wait()
    assert_nothing_left(runs_dir)


class TestStartFailures:
    def test_node_dying_at_start_shows_its_log_and_stops_the_rest(
        self, inner: pytest.Pytester, runs_dir: Path, tmp_path: Path
    ) -> None:
        real = find_geth(root=ROOT)
        wrapper = tmp_path / "geth"
        # node2 fails after 60 numbered lines; every other call runs the real geth.
        wrapper.write_text(
            "#!/bin/sh\n"
            'case "$*" in *"--datadir"*"/node2 "*"--networkid"*)\n'
            '  for i in $(seq 1 60); do echo "broken-line-$i"; done; exit 1;;\n'
            "esac\n"
            f'exec {real} "$@"\n'
        )
        wrapper.chmod(0o755)
        inner.makepyfile("def test_needs_chain(chain):\n    pass\n")
        result = inner.runpytest_subprocess("--chain-nodes=4", f"--chain-geth={wrapper}")
        result.assert_outcomes(errors=1)
        out = result.stdout.str()
        assert "NetworkStartError: node2 exited while the network was starting" in out
        assert "broken-line-60" in out
        assert "broken-line-11" in out
        assert "broken-line-10\n" not in out  # exactly the last 50 lines
        assert_nothing_left(runs_dir)

    def test_port_taken_before_bind_is_retried(self, tmp_path: Path) -> None:
        testnet = build_testnet(nodes=2, client="geth", period=1, seed=11, accounts=4)
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        testnet.nodes[1].ports["rpc"] = taken  # as if another program bound it in between
        chain = two_node_chain(testnet, GethAdapter(root=ROOT), tmp_path)
        provider = chain.provider
        try:
            launch(chain, timeout=60)
            assert testnet.nodes[1].ports["rpc"] != taken
            chain.wait_converged()
        finally:
            provider.teardown()
            blocker.close()
        assert processes_under(tmp_path) == []

    def test_node_hanging_at_start_is_restarted_on_fresh_ports(self, tmp_path: Path) -> None:
        real = find_geth(root=ROOT)
        wrapper = tmp_path / "geth"
        hung_once = tmp_path / "hung-once"
        # node1's first start never answers RPC (as geth does when it stalls on a taken
        # port); every later call runs the real geth.
        wrapper.write_text(
            "#!/bin/sh\n"
            f'case "$*" in *"--datadir"*"/node1 "*"--networkid"*)\n'
            f"  if [ ! -e {hung_once} ]; then touch {hung_once}; exec sleep 300; fi;;\n"
            "esac\n"
            f'exec {real} "$@"\n'
        )
        wrapper.chmod(0o755)
        testnet = build_testnet(nodes=2, client="geth", period=1, seed=13, accounts=4)
        first_port = testnet.nodes[1].ports["rpc"]
        adapter = GethAdapter(root=ROOT)
        chain = two_node_chain(testnet, adapter, tmp_path, binary=wrapper)
        provider = chain.provider
        try:
            launch(chain, timeout=60)
            assert hung_once.exists()
            assert testnet.nodes[1].ports["rpc"] != first_port
            chain.wait_converged()
        finally:
            provider.teardown()
        assert processes_under(tmp_path) == []

    def test_node_stuck_without_peers_is_restarted(self, tmp_path: Path) -> None:
        testnet = build_testnet(nodes=2, client="geth", period=1, seed=14, accounts=4)
        adapter = GethAdapter(root=ROOT)

        class StalledDials(ProcessProvider):
            """Both nodes drop each other right after start, and nudges do nothing: what
            a failed early dial looks like while it sits in geth's dial history."""

            def start_nodes(self, indexes: Sequence[int] | None = None) -> None:
                super().start_nodes(indexes)
                chain._wait_rpc(chain.nodes, timeout=30)
                for a, b in ((0, 1), (1, 0)):
                    rpc_call(self.admin_url(a), "admin_removePeer", [self.enode(b)])

            def add_peers(self, index: int) -> None:
                return None

        chain = two_node_chain(testnet, adapter, tmp_path, provider_class=StalledDials)
        provider = chain.provider
        try:
            launch(chain, timeout=60)
            assert chain.nodes[0].peer_count() == 1
            starts = [provider.logs(i, 10_000).count("=== chainharness: starting") for i in (0, 1)]
            assert sorted(starts) == [1, 2]  # exactly one node was restarted
        finally:
            provider.teardown()
        assert processes_under(tmp_path) == []

    def test_failed_start_raises_and_cleans(self, tmp_path: Path) -> None:
        testnet = build_testnet(nodes=2, client="geth", period=1, seed=12, accounts=4)
        adapter = GethAdapter(root=ROOT, extra_args=["--no-such-flag"])
        chain = two_node_chain(testnet, adapter, tmp_path)
        with pytest.raises(NetworkStartError, match="flag provided but not defined"):
            launch(chain, timeout=30)
        assert processes_under(tmp_path) == []
        assert not (tmp_path / "run" / "nodes").exists()


@pytest.mark.usefixtures("anvil_required")
def test_anvil_client_runs_the_examples(inner: pytest.Pytester, runs_dir: Path) -> None:
    inner.makepyfile(test_example=EXAMPLES)
    result = inner.runpytest_subprocess("--chain-client=anvil", "--chain-nodes=1", "-rs")
    # The crash test needs 4 nodes: skipped with the mark's reason on a 1-node chain.
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["*client anvil*", "*needs at least 4 nodes*"])
    assert_nothing_left(runs_dir)


def test_keep_leaves_the_network_and_says_how_to_stop_it(
    inner: pytest.Pytester, runs_dir: Path
) -> None:
    inner.makepyfile("def test_up(chain):\n    chain.wait_converged()\n")
    result = inner.runpytest_subprocess("--chain-nodes=2", "--chain-keep")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*--chain-keep: the network is still running*", "*node1: http*"])
    stop = next(line for line in result.stdout.lines if "stop it:" in line)
    assert processes_under(runs_dir)
    subprocess.run(stop.split("stop it:", 1)[1], shell=True, check=True)
    assert_nothing_left(runs_dir)


OVERLAP = """
import json
import time
from pathlib import Path

import pytest

LOG = Path(__file__).parent / "intervals.jsonl"


def _log(kind, start):
    with LOG.open("a") as out:
        out.write(json.dumps({"kind": kind, "start": start, "end": time.time()}) + "\\n")


@pytest.mark.disruptive
@pytest.mark.parametrize("i", range(3))
def test_disruptive(chain, i):
    start = time.time()
    chain.nodes[1].pause()
    time.sleep(0.5)
    chain.nodes[1].resume()
    _log("disruptive", start)


@pytest.mark.parametrize("i", range(8))
def test_normal(chain, i):
    start = time.time()
    time.sleep(0.3)
    chain.heads()
    _log("normal", start)
"""


@pytest.mark.usefixtures("geth_required", "mosquitto_required")
def test_disruptive_tests_run_alone_under_xdist(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_overlap=OVERLAP)
    result = inner.runpytest_subprocess("-n", "2", "--chain-nodes=2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=11)
    rows = [json.loads(line) for line in (inner.path / "intervals.jsonl").read_text().splitlines()]
    disruptive = [r for r in rows if r["kind"] == "disruptive"]
    assert len(disruptive) == 3
    for d in disruptive:
        for other in rows:
            if other is d:
                continue
            overlap = min(d["end"], other["end"]) - max(d["start"], other["start"])
            assert overlap <= 0, f"{d} overlapped {other}"


class TestRepair:
    """The client's stall repair is ticked by the waits, reported, and can be turned off."""

    def test_a_repair_is_reported_on_the_bus_in_the_test_and_in_the_verdict(
        self, inner: pytest.Pytester
    ) -> None:
        inner.makepyfile(
            """
            class OneRepair:
                name = "test-repair"
                done = False

                def tick(self):
                    if self.done:
                        return None
                    self.done = True
                    return "test-repair: node1 put back on node0's branch"

            def test_waits_tick_the_repair(chain, bus):
                assert type(chain.repairer).__name__ == "CliqueUnstall"
                chain.repairer = OneRepair()
                # A wait that cannot return on its first look: the repair is ticked
                # between looks.
                chain.wait_for_height(chain.nodes[0].head().number + 2)
                (event,) = bus.wait_for("repair", nodes=None, timeout=10)
                assert event.payload == {
                    "client": "geth", "what": "test-repair: node1 put back on node0's branch"
                }
                assert chain.repairs == [event.payload["what"]]
            """
        )
        result = inner.runpytest_subprocess(
            "--chain-nodes=2", "-rA", "--gate=build", "--gate-report=v.json"
        )
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(
            ["*chainharness repairs*", "test-repair: node1 put back on node0's branch"]
        )
        verdict = json.loads((inner.path / "v.json").read_text())
        assert verdict["chain"]["repairs"] == 1
        assert verdict["chain"]["repair"] == "on"

    def test_repair_off_leaves_the_client_alone(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(
            """
            def test_raw(chain):
                assert chain.repairer is None
                chain.wait_converged()
            """
        )
        inner.runpytest_subprocess("--chain-nodes=2", "--chain-repair=off").assert_outcomes(
            passed=1
        )
        bad = inner.runpytest("--chain-repair=maybe")
        assert bad.ret == pytest.ExitCode.USAGE_ERROR
        bad.stderr.fnmatch_lines(["*--chain-repair=maybe: choose on or off*"])
