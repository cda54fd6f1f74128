"""Load tests: locust in a child process against real networks, SLOs, bad input, the CLI."""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_chainharness import LoadResult
from pytest_chainharness._load import (
    LoadSpec,
    MethodStats,
    _seen_in_blocks,
    check_slos,
    parse_run_time,
    parse_slo,
)
from pytest_chainharness.tools import tools_dir

ROOT = Path(__file__).resolve().parent.parent


class TestBadInput:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"users": 0}, "users=0: expected a whole number 1..2000"),
            ({"users": -3}, "users=-3"),
            ({"users": 2.5}, "users=2.5"),
            ({"users": 5, "run_time": "soon"}, "run_time='soon': expected seconds or a duration"),
            ({"users": 5, "run_time": "-5s"}, "run_time='-5s'"),
            ({"users": 5, "run_time": "2h"}, "at most 600s"),
            ({"users": 5, "profile": "stampede"}, "profile='stampede': choose one of transfer"),
            ({"users": 5, "spawn_rate": 0}, "spawn_rate=0"),
            ({"users": 2, "processes": 3}, "processes=3 > users=2"),
        ],
    )
    def test_bad_arguments(self, kwargs: dict[str, object], message: str) -> None:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
            LoadSpec.make(**kwargs)

    @pytest.mark.parametrize(
        ("text", "seconds"), [("20s", 20), ("2m", 120), ("1m30s", 90), (15, 15), ("7", 7)]
    )
    def test_run_times(self, text: str | int, seconds: float) -> None:
        assert parse_run_time(text) == seconds

    @pytest.mark.parametrize(
        "text", ["p95 < 3", "p95(x) <= 10%", "failure_ratio <= 5ms", "latency < 3", "rps >> 4"]
    )
    def test_bad_slo(self, text: str) -> None:
        with pytest.raises(ValueError, match="SLO"):
            parse_slo(text)

    def test_bad_ini_slo_is_a_usage_error(self, inner: pytest.Pytester) -> None:
        inner.makeini("[pytest]\nchain_load_slo =\n    p95(eth_call) < fast\n")
        inner.makepyfile("def test_x():\n    pass\n")
        result = inner.runpytest()
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*ini chain_load_slo: SLO 'p95(eth_call) < fast'*"])


class TestSlos:
    RESULT = LoadResult(
        requests=1000,
        failures=20,
        rps=100.0,
        tx_sent=500,
        tx_included=480,
        duration_s=10.0,
        methods={"eth_call": MethodStats(1000, 20, {5: 900, 40: 90, 300: 10})},
        inclusion_ms=[900.0, 1100.0, 1500.0, 2500.0],
    )

    def test_values(self) -> None:
        r = self.RESULT
        assert r.percentile("eth_call", 0.5) == 5
        assert r.percentile("eth_call", 95) == 40
        assert r.percentile("eth_call", 0.995) == 300
        assert r.percentile("inclusion", 0.5) == 1100
        assert r.failure_ratio == pytest.approx(0.02)
        assert r.included_tps == pytest.approx(48.0)
        assert math.isnan(r.percentile("inclusion_all", 0.5))

    def test_check(self) -> None:
        slos = [
            parse_slo("p95(eth_call) <= 50ms"),
            parse_slo("failure_ratio <= 1%"),
            parse_slo("included_tps >= 40"),
            parse_slo("p50(inclusion) < 1s"),
            parse_slo("p99(eth_getLogs) < 10ms"),
        ]
        assert check_slos(self.RESULT, slos) == [
            "failure_ratio <= 1%: measured 0.02",
            "p50(inclusion) < 1s: measured 1100 ms",
            "p99(eth_getLogs) < 10ms: no requests of 'eth_getLogs'; methods: eth_call",
        ]


def test_inclusion_counts_the_block_that_stayed(tmp_path: Path) -> None:
    def block(ts: float, number: int, txs: list[str], replaces: str | None = None) -> str:
        payload: dict[str, object] = {"number": number, "hash": f"h{number}-{ts}", "txs": txs}
        if replaces:
            payload["replaces"] = replaces
        return json.dumps({"kind": "block", "node": "node0", "ts": ts, "payload": payload})

    lines = [
        block(1.0, 5, ["0xa"]),
        block(2.0, 6, ["0xb"]),
        '{"kind": "health", "node": "node0", "ts": 2.5, "payload": {"ok": true}}',
        # A reorg onto a shorter branch: 5 is replaced, 6 is gone; 0xa lands again at 5,
        # 0xb only later, at 7 after the new 6.
        block(3.0, 5, ["0xa"], replaces="h5-1.0"),
        block(4.0, 6, []),
        block(5.0, 7, ["0xb", "0xnot-sent"]),
        '{"kind": "block", "node": "node0", "ts": 6.0, "pay',  # cut short by a kill
    ]
    (tmp_path / "events-node0.jsonl").write_text("\n".join(lines) + "\n")
    seen = _seen_in_blocks([tmp_path / "events-node0.jsonl"], {"0xa", "0xb", "0xc"})
    assert seen == {"node0": {"0xa": 3.0, "0xb": 5.0}}


@pytest.mark.usefixtures("geth_required", "mosquitto_required")
class TestAgainstANetwork:
    def test_short_run_includes_transactions_on_every_node(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(
            """
            import math

            def test_load(load_test):
                r = load_test(users=10, spawn_rate=10, run_time="8s", profile="mixed")
                print(r)
                assert r.requests > 100
                assert r.failures == 0
                assert r.tx_sent > 20
                assert r.tx_included >= 0.9 * r.tx_sent
                for method in ("eth_sendRawTransaction", "eth_call", "eth_getBalance"):
                    p50, p95, p99 = (r.percentile(method, q) for q in (0.5, 0.95, 0.99))
                    assert 0 <= p50 <= p95 <= p99 < 5000, (method, p50, p95, p99)
                p50, p95 = r.percentile("inclusion", 0.5), r.percentile("inclusion", 0.95)
                # sent -> in a block takes at least part of a period, at most a few
                assert 50 < p50 <= p95 < 10_000
                assert r.percentile("inclusion_all", 0.5) >= p50
                assert 0 < r.rps
                assert r.duration_s < 12
            """
        )
        result = inner.runpytest_subprocess("--chain-nodes=4", "-s")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(["*eth_sendRawTransaction*", "*tx included (node0)*"])

    def test_slo_pass_and_fail(self, inner: pytest.Pytester) -> None:
        inner.makeini(
            "[pytest]\nchain_backend = process\nchain_load_slo =\n    failure_ratio <= 5%\n"
        )
        inner.makepyfile(
            """
            import pytest

            def test_meets(load_test):
                load_test(users=4, run_time="4s", slo=["included_tps >= 1"])

            @pytest.mark.stage("production")
            def test_misses(load_test):
                load_test(users=4, run_time="4s", slo=["p95(eth_sendRawTransaction) < 0.001ms"])
            """
        )
        result = inner.runpytest_subprocess(
            "--chain-nodes=2", "--gate=production", "--gate-report=v.json", "--gate-max-skip=1"
        )
        result.assert_outcomes(passed=1, failed=1)
        result.stdout.fnmatch_lines(
            [
                "*load SLOs not met:*",
                "*p95(eth_sendRawTransaction) < 0.001ms: measured * ms*",
                "*eth_sendRawTransaction*",
            ]
        )
        report = (inner.path / "v.json").read_text()
        assert '"verdict": "block"' in report
        assert "test_misses" in report

    def test_distributed_run_with_two_processes(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(
            """
            def test_load(load_test):
                r = load_test(users=6, run_time="6s", processes=2)
                assert r.senders == 2, r.log[-3000:]
                assert r.failures == 0, str(r)
                assert r.tx_included >= 0.9 * r.tx_sent > 0
            """
        )
        # Locust's default master port held by someone else (in CI: another xdist
        # worker's distributed run): this run's master and workers use a port of their own.
        with contextlib.ExitStack() as held:
            with contextlib.suppress(OSError):
                held.enter_context(socket.create_server(("0.0.0.0", 5557)))
            inner.runpytest_subprocess("--chain-nodes=2").assert_outcomes(passed=1)

    def test_chain_stopping_mid_run_is_reported_and_nothing_hangs(
        self, inner: pytest.Pytester
    ) -> None:
        inner.makepyfile(
            """
            import threading
            import time

            import pytest

            @pytest.mark.disruptive
            def test_load(chain, bus, load_test):
                def stop_all():
                    # Once the load is under way (its first transfer is in a block), not
                    # at a fixed time: on a busy machine locust may take longer than that
                    # to start, and then no request at all would succeed.
                    bus.wait_for("block", lambda e: e.payload["txs"], nodes=None, timeout=60)
                    for node in chain.nodes:
                        node.stop()

                threading.Thread(target=stop_all, daemon=True).start()
                start = time.monotonic()
                try:
                    load_test(users=4, run_time="8s", slo=["failure_ratio <= 1%"])
                finally:
                    print(f"ELAPSED {time.monotonic() - start:.1f}")

            def test_restored(chain):
                chain.wait_converged()
            """
        )
        result = inner.runpytest_subprocess("--chain-nodes=2", "-s")
        result.assert_outcomes(passed=1, failed=1)
        result.stdout.fnmatch_lines(["*ELAPSED*", "*failure_ratio <= 1%: measured 0.*"])
        elapsed = float(result.stdout.str().split("ELAPSED ")[1].split()[0])
        assert elapsed < 40


@pytest.mark.usefixtures("geth_required", "mosquitto_required")
def test_standalone_cli_and_locustfile(tmp_path: Path) -> None:
    env = {**os.environ, "CHAINHARNESS_TOOLS": str(tools_dir(ROOT))}
    state = tmp_path / "state.json"
    cli = [sys.executable, "-m", "pytest_chainharness.cli"]

    def run(*args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=120,
            env={**env, **(extra or {})},
            cwd=tmp_path,
        )

    up = run(*cli, "up", "--chain-nodes=2", "--chain-backend=process", "--state", str(state))
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        load = run(*cli, "load", "--state", str(state), "-u", "4", "-t", "4s", "--processes", "2",
                   "--slo", "failure_ratio <= 1%")  # fmt: skip
        assert load.returncode == 0, load.stdout + load.stderr
        assert "eth_sendRawTransaction" in load.stdout
        assert "tx included (node0)" in load.stdout
        missed = run(*cli, "load", "--state", str(state), "-u", "2", "-t", "2s",
                     "--slo", "p99(eth_sendRawTransaction) < 0.001ms")  # fmt: skip
        assert missed.returncode == 1
        assert "SLO not met: p99(eth_sendRawTransaction) < 0.001ms: measured" in missed.stdout
        bad = run(*cli, "load", "--state", str(state), "-u", "0")
        assert bad.returncode == 2
        assert "users=0" in bad.stderr
        # Plain locust with the shipped locustfile reads the same state file.
        plain = run(
            sys.executable, "-m", "locust", "-f", str(ROOT / "scenarios/load/locustfile.py"),
            "--headless", "-u", "3", "-r", "3", "-t", "3s", "--only-summary", "ReadUser",
            "TransferUser", extra={"CHAINHARNESS_STATE": str(state)},
        )  # fmt: skip
        assert plain.returncode == 0, plain.stderr[-3000:]
        assert "eth_getBalance" in plain.stderr + plain.stdout
    finally:
        run(*cli, "down", "--state", str(state))
