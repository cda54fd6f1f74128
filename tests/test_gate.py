"""The promotion gate: stage marks, --gate selection, verdicts, verify, reports (pytester)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_chainharness.gate import DEFAULT_STAGES, content_digest

STAGES = list(DEFAULT_STAGES)


def _verdict(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_chainharness.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


STAGED = """
import os
import pytest

def test_build():
    pass

@pytest.mark.stage("integration")
def test_integration():
    pass

@pytest.mark.stage("staging")
def test_staging():
    pass

@pytest.mark.stage("production")
def test_production():
    pass
"""

# STAGED, plus a test per stage that fails in the stage $FAIL_STAGE names.
PER_STAGE = (
    STAGED
    + """
STAGES = ["build", "integration", "staging", "production"]

@pytest.mark.parametrize("stage", [pytest.param(s, marks=pytest.mark.stage(s)) for s in STAGES])
def test_fails_in(stage):
    assert os.environ.get("FAIL_STAGE") != stage, f"broken in {stage}"
"""
)


class TestSelectionAndVerdict:
    @pytest.mark.parametrize("target", STAGES)
    def test_promote_when_every_stage_up_to_target_passes(
        self, inner: pytest.Pytester, target: str
    ) -> None:
        inner.makepyfile(STAGED)
        result = inner.runpytest(f"--gate={target}", "--gate-report=v.json")
        upto = STAGES[: STAGES.index(target) + 1]
        assert result.ret == 0, result.stdout.str()
        result.assert_outcomes(passed=len(upto), deselected=len(STAGES) - len(upto))
        verdict = _verdict(inner.path / "v.json")
        assert verdict["verdict"] == "promote"
        assert verdict["target"] == target
        assert set(verdict["stages"]) == set(upto)
        assert verdict["stage_order"] == STAGES
        assert all(row["passed"] == 1 for row in verdict["stages"].values())
        result.stdout.fnmatch_lines([f"*verdict: PROMOTE to {target}*"])

    @pytest.mark.parametrize("target", STAGES)
    @pytest.mark.parametrize("fail_stage", STAGES)
    def test_a_failure_blocks_its_stage_and_every_later_target(
        self, inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, target: str, fail_stage: str
    ) -> None:
        monkeypatch.setenv("FAIL_STAGE", fail_stage)
        # One file per stage, marked at module level.
        for stage in STAGES:
            inner.makepyfile(
                **{
                    f"test_{stage}": (
                        f"import os, pytest\npytestmark = pytest.mark.stage({stage!r})\n"
                        "def test_ok():\n    pass\n"
                        f"def test_maybe():\n    assert os.environ['FAIL_STAGE'] != {stage!r}, "
                        f"'broken in {stage}'\n"
                    )
                }
            )
        result = inner.runpytest(f"--gate={target}", "--gate-report=v.json")
        verdict = _verdict(inner.path / "v.json")
        blocked = STAGES.index(fail_stage) <= STAGES.index(target)
        assert verdict["verdict"] == ("block" if blocked else "promote")
        assert (result.ret != 0) is blocked
        if blocked:
            assert verdict["failures"] == [
                {
                    "test": f"test_{fail_stage}.py::test_maybe",
                    "stage": fail_stage,
                    "kind": "product",
                    "outcome": "failed",
                    "when": "call",
                    "message": f"AssertionError: broken in {fail_stage}",
                }
            ]
            assert verdict["stages"][fail_stage]["failed"] == 1
            result.stdout.fnmatch_lines([f"*verdict: BLOCK to {target}*"])

    def test_stage_with_no_executed_test_blocks(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(
            """
            import pytest

            def test_build():
                pass

            @pytest.mark.stage("staging")
            def test_staging():
                pass
            """
        )
        result = inner.runpytest("--gate=staging", "--gate-report=v.json")
        verdict = _verdict(inner.path / "v.json")
        assert verdict["verdict"] == "block"
        assert "stage integration: no test executed (0 skipped)" in verdict["reasons"]
        # Every test passed, yet the run must not look green to CI.
        result.assert_outcomes(passed=2)
        assert result.ret == pytest.ExitCode.TESTS_FAILED

    def test_stage_whose_tests_all_skip_blocks(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(
            """
            import pytest

            def test_build():
                pass

            @pytest.mark.stage("integration")
            @pytest.mark.skip(reason="not today")
            def test_integration():
                pass
            """
        )
        result = inner.runpytest("--gate=integration", "--gate-report=v.json")
        verdict = _verdict(inner.path / "v.json")
        assert verdict["verdict"] == "block"
        assert "stage integration: no test executed (1 skipped)" in verdict["reasons"]
        assert result.ret != 0

    SKIPS = """
        import pytest

        def test_a():
            pass

        def test_b():
            pass

        def test_c():
            pytest.skip("needs hardware")
        """

    def test_skips_block_by_default(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(self.SKIPS)
        inner.runpytest("--gate=build", "--gate-report=v.json")
        verdict = _verdict(inner.path / "v.json")
        assert verdict["verdict"] == "block"
        assert verdict["reasons"] == ["stage build: 1 of 3 skipped (33%), above gate_max_skip 0%"]

    @pytest.mark.parametrize(("share", "expected"), [("0.5", "promote"), ("20%", "block")])
    def test_skip_share_is_configurable(
        self, inner: pytest.Pytester, share: str, expected: str
    ) -> None:
        inner.makeini(f"[pytest]\nchain_backend = process\ngate_max_skip = {share}\n")
        inner.makepyfile(self.SKIPS)
        inner.runpytest("--gate=build", "--gate-report=v.json")
        assert _verdict(inner.path / "v.json")["verdict"] == expected

    XFAIL = """
        import pytest

        def test_ok():
            pass

        @pytest.mark.xfail(reason="known bug 12", strict=False)
        def test_known_bug():
            assert False
        """

    @pytest.mark.parametrize(
        ("policy", "expected"), [(None, "block"), ("pass", "promote"), ("skip", "block")]
    )
    def test_xfail_policy(self, inner: pytest.Pytester, policy: str | None, expected: str) -> None:
        inner.makepyfile(self.XFAIL)
        args = ["--gate=build", "--gate-report=v.json"]
        if policy:
            args.append(f"--gate-xfail={policy}")
        inner.runpytest(*args)
        verdict = _verdict(inner.path / "v.json")
        assert verdict["verdict"] == expected
        assert verdict["stages"]["build"]["xfailed"] == 1
        if policy is None:
            assert verdict["failures"][0]["outcome"] == "xfailed"

    def test_collection_error_blocks(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(test_ok="def test_ok():\n    pass\n", test_bad="import nonexistent_mod\n")
        inner.runpytest("--gate=build", "--gate-report=v.json")
        verdict = _verdict(inner.path / "v.json")
        assert verdict["verdict"] == "block"
        assert verdict["failures"][0]["test"] == "test_bad.py"
        assert verdict["failures"][0]["when"] == "collect"

    def test_maxfail_stop_blocks_even_without_failures_in_the_rest(
        self, inner: pytest.Pytester
    ) -> None:
        inner.makepyfile(
            """
            import pytest

            @pytest.mark.xfail(strict=True)
            def test_strict_xpass():
                pass

            def test_never_runs():
                pass
            """
        )
        inner.runpytest("--gate=build", "--gate-report=v.json", "-x")
        verdict = _verdict(inner.path / "v.json")
        assert verdict["verdict"] == "block"
        assert any("did not finish" in r for r in verdict["reasons"])
        assert any("never reported" in r for r in verdict["reasons"])

    def test_without_gate_no_verdict_but_stages_are_checked(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(STAGED)
        result = inner.runpytest()
        result.assert_outcomes(passed=4)
        assert not (inner.path / "gate-report.json").exists()

    def test_default_report_path_and_chain_description(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(STAGED)
        inner.runpytest("--gate=production", "--chain-seed=77", "--chain-nodes=3")
        verdict = _verdict(inner.path / "gate-report.json")
        assert verdict["verdict"] == "promote"
        chain = verdict["chain"]
        assert chain["client"] == "geth"
        assert chain["nodes"] == 3
        assert chain["seed"] == 77
        assert chain["backend"] == "process"
        assert "version" in chain
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", verdict["created"])
        assert verdict["digest"] == content_digest(verdict)

    def test_unmarked_tests_go_to_the_configured_stage(self, inner: pytest.Pytester) -> None:
        inner.makeini("[pytest]\nchain_backend = process\nchain_default_stage = staging\n")
        inner.makepyfile("def test_plain():\n    pass\n")
        result = inner.runpytest("--gate=integration", "--gate-report=v.json")
        result.assert_outcomes(deselected=1)
        verdict = _verdict(inner.path / "v.json")
        assert verdict["verdict"] == "block"
        assert verdict["deselected"] == 1

    def test_custom_stage_list(self, inner: pytest.Pytester) -> None:
        inner.makeini("[pytest]\nchain_backend = process\nchain_stages = unit, canary\n")
        inner.makepyfile(
            """
            import pytest

            def test_unit():
                pass

            @pytest.mark.stage("canary")
            def test_canary():
                pass
            """
        )
        inner.runpytest("--gate=canary", "--gate-report=v.json")
        verdict = _verdict(inner.path / "v.json")
        assert verdict["verdict"] == "promote"
        assert verdict["stage_order"] == ["unit", "canary"]

    def test_class_mark_is_overridden_by_the_test_mark(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(
            """
            import pytest

            def test_build():
                pass

            @pytest.mark.stage("production")
            class TestLate:
                def test_late(self):
                    pass

                @pytest.mark.stage("integration")
                def test_early(self):
                    pass
            """
        )
        result = inner.runpytest("--gate=integration", "--gate-report=v.json")
        result.assert_outcomes(passed=2, deselected=1)
        assert _verdict(inner.path / "v.json")["verdict"] == "promote"


class TestInfraAndInterrupts:
    def test_infra_failure_is_not_a_product_failure(
        self, inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A geth named by the environment that is gone by the time the chain starts (an
        # option naming a missing binary is a usage error before anything runs).
        monkeypatch.setenv("CHAINHARNESS_GETH", "/nonexistent/geth")
        inner.makepyfile(
            """
            from pytest_chainharness import ChainHarnessError

            def test_needs_chain(chain):
                pass

            def test_harness_breaks():
                raise ChainHarnessError("docker went away")

            def test_product_bug():
                assert 2 + 2 == 5
            """
        )
        result = inner.runpytest("--gate=build", "--gate-report=v.json")
        verdict = _verdict(inner.path / "v.json")
        assert verdict["verdict"] == "block"
        kinds = {f["test"].split("::")[1]: f["kind"] for f in verdict["failures"]}
        assert kinds == {
            "test_needs_chain": "infra",
            "test_harness_breaks": "infra",
            "test_product_bug": "product",
        }
        assert verdict["infra_failures"] == 2
        assert verdict["stages"]["build"]["infra"] == 2
        assert "stage build: 3 failed, 2 of them infra" in verdict["reasons"]
        result.stdout.fnmatch_lines(["*[[]infra[]] test_*.py::test_needs_chain: *[[]infra[]]*"])

    def test_engine_gone_is_infra_but_a_bare_http_error_is_not(
        self, inner: pytest.Pytester
    ) -> None:
        inner.makepyfile(
            """
            import docker
            import requests

            def test_engine_gone():
                # docker-py against a socket nobody listens on: what a vanished engine does.
                client = docker.DockerClient(base_url="unix:///nonexistent.sock", version="1.41")
                try:
                    client.containers.list()
                finally:
                    client.close()

            def test_product_http_error():
                raise requests.exceptions.ConnectionError("the product's API is down")
            """
        )
        # In a child: docker-py leaks the socket of a failed connect (a ResourceWarning).
        inner.runpytest_subprocess("--gate=build", "--gate-report=v.json")
        verdict = _verdict(inner.path / "v.json")
        kinds = {f["test"].split("::")[1]: f["kind"] for f in verdict["failures"]}
        assert kinds == {"test_engine_gone": "infra", "test_product_http_error": "product"}

    def test_keyboard_interrupt_never_promotes(self, inner: pytest.Pytester) -> None:
        # An earlier run's promote must not survive a run that is interrupted.
        inner.makepyfile("def test_ok():\n    pass\n")
        inner.runpytest("--gate=build", "--gate-report=v.json")
        assert _verdict(inner.path / "v.json")["verdict"] == "promote"
        inner.makepyfile(
            """
            def test_ok():
                pass

            def test_interrupt():
                raise KeyboardInterrupt
            """
        )
        result = inner.runpytest_subprocess("--gate=build", "--gate-report=v.json")
        assert result.ret == pytest.ExitCode.INTERRUPTED
        verdict = _verdict(inner.path / "v.json")
        assert verdict["verdict"] == "block"
        assert "the run did not finish: interrupted (KeyboardInterrupt)" in verdict["reasons"]

    def test_report_says_block_while_the_run_is_in_progress(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(
            """
            import json
            from pathlib import Path

            def test_look_at_report():
                verdict = json.loads(Path("v.json").read_text())
                assert verdict["verdict"] == "block"
                assert "has not finished" in verdict["reasons"][0]
            """
        )
        inner.runpytest("--gate=build", "--gate-report=v.json").assert_outcomes(passed=1)

    @pytest.mark.parametrize("fail", [False, True])
    def test_same_verdict_with_xdist(
        self, inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, fail: bool
    ) -> None:
        monkeypatch.setenv("FAIL_STAGE", "integration" if fail else "none")
        inner.makepyfile(PER_STAGE)
        inner.runpytest_subprocess("--gate=staging", "--gate-report=serial.json")
        inner.runpytest_subprocess("--gate=staging", "--gate-report=xdist.json", "-n", "2")
        serial = _verdict(inner.path / "serial.json")
        parallel = _verdict(inner.path / "xdist.json")
        assert parallel["verdict"] == serial["verdict"] == ("block" if fail else "promote")
        assert parallel["stages"] == serial["stages"]
        assert parallel["failures"] == serial["failures"]
        assert parallel["reasons"] == serial["reasons"]


class TestBadInput:
    PASS = "def test_ok():\n    pass\n"

    def test_unknown_gate_stage(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(self.PASS)
        result = inner.runpytest("--gate=prod")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(
            ["*--gate=prod: unknown stage*build, integration, staging, production*"]
        )

    @pytest.mark.parametrize(
        ("value", "pattern"),
        [
            ("build, build", "*stage 'build' is listed twice*"),
            ("build, 2fast", "*bad stage name '2fast'*"),
            ("build, sta/ging", "*bad stage name 'sta/ging'*"),
        ],
    )
    def test_malformed_chain_stages(self, inner: pytest.Pytester, value: str, pattern: str) -> None:
        inner.makeini(f"[pytest]\nchain_stages = {value}\n")
        inner.makepyfile(self.PASS)
        result = inner.runpytest()
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"*ini chain_stages*{pattern}"])

    def test_unknown_stage_mark(self, inner: pytest.Pytester) -> None:
        inner.makepyfile('import pytest\n\n@pytest.mark.stage("qa")\ndef test_x():\n    pass\n')
        result = inner.runpytest()
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*test_x*unknown stage 'qa'*build, integration*"])

    def test_stage_mark_without_a_name(self, inner: pytest.Pytester) -> None:
        inner.makepyfile("import pytest\n\n@pytest.mark.stage\ndef test_x():\n    pass\n")
        result = inner.runpytest()
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*stage takes one stage name*"])

    def test_unwritable_report_fails_at_start(self, inner: pytest.Pytester) -> None:
        (inner.path / "afile").write_text("")
        inner.makepyfile("def test_ok():\n    open('ran', 'w').close()\n")
        result = inner.runpytest("--gate=build", "--gate-report=afile/v.json")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*--gate-report=*afile/v.json: cannot write the verdict*"])
        assert not (inner.path / "ran").exists()

    @pytest.mark.parametrize(
        ("args", "pattern"),
        [
            (["--gate-max-skip=2"], "*--gate-max-skip=2: expected a share*"),
            (["--gate-xfail=maybe"], "*--gate-xfail=maybe: choose one of block, skip, pass*"),
            (["--gate-artifact=nonsense"], "*expected NAME=PATH or NAME=IMAGE*"),
            (["--gate-artifact=app=missing.bin"], "*artifact missing.bin: no such file*"),
        ],
    )
    def test_bad_gate_options(self, inner: pytest.Pytester, args: list[str], pattern: str) -> None:
        inner.makepyfile(self.PASS)
        result = inner.runpytest("--gate=build", *args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([pattern])


class TestVerify:
    @pytest.fixture
    def promoted(self, inner: pytest.Pytester) -> Path:
        (inner.path / "app.bin").write_bytes(b"release 1")
        inner.makepyfile("def test_ok():\n    pass\n")
        inner.runpytest("--gate=build", "--gate-report=v.json", "--gate-artifact=app=app.bin")
        return inner.path

    def test_verify_accepts_the_tested_artifact(self, promoted: Path) -> None:
        verdict = _verdict(promoted / "v.json")
        assert verdict["artifacts"]["app"]["kind"] == "file"
        done = _cli("gate", "verify", str(promoted / "v.json"), "--artifact",
                    f"app={promoted / 'app.bin'}")  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "OK: promote to build" in done.stdout

    def test_verify_rejects_another_artifact(self, promoted: Path) -> None:
        (promoted / "app.bin").write_bytes(b"release 2")
        done = _cli("gate", "verify", str(promoted / "v.json"), "--artifact",
                    f"app={promoted / 'app.bin'}")  # fmt: skip
        assert done.returncode == 1
        assert "is not what was tested" in done.stderr

    @pytest.mark.usefixtures("docker_required")
    def test_image_artifact_is_recorded_by_id(self, inner: pytest.Pytester) -> None:
        inner.makepyfile("def test_ok():\n    pass\n")
        tested = "chainharness/geth:v1.13.15"
        inner.runpytest("--gate=build", "--gate-report=v.json", f"--gate-artifact=node={tested}")
        recorded = _verdict(inner.path / "v.json")["artifacts"]["node"]
        assert recorded["kind"] == "image"
        assert len(recorded["sha256"]) == 64
        report = str(inner.path / "v.json")
        assert _cli("gate", "verify", report, "--artifact", f"node={tested}").returncode == 0
        other = _cli("gate", "verify", report, "--artifact", "node=chainharness/geth:v1.13.14")
        assert other.returncode == 1
        assert "is not what was tested" in other.stderr

    def test_verify_rejects_missing_report(self, tmp_path: Path) -> None:
        done = _cli("gate", "verify", str(tmp_path / "nope.json"))
        assert done.returncode == 1
        assert "no such report" in done.stderr

    def test_verify_rejects_block(self, inner: pytest.Pytester) -> None:
        inner.makepyfile("def test_bad():\n    assert 0\n")
        inner.runpytest("--gate=build", "--gate-report=v.json")
        done = _cli("gate", "verify", str(inner.path / "v.json"))
        assert done.returncode == 1
        assert "verdict is 'block', not promote: stage build: 1 failed" in done.stderr

    def test_verify_rejects_an_earlier_target(self, promoted: Path) -> None:
        done = _cli("gate", "verify", str(promoted / "v.json"), "--target", "production")
        assert done.returncode == 1
        assert "promotes to 'build' only" in done.stderr

    @pytest.mark.parametrize(
        "field",
        ["target", "verdict", "stages", "failures", "chain", "created", "artifacts", "reasons"],
    )
    def test_editing_any_field_breaks_the_digest(self, promoted: Path, field: str) -> None:
        path = promoted / "v.json"
        verdict = _verdict(path)
        original = content_digest(verdict)
        edited = dict(verdict)
        edited[field] = {"edited": True}
        assert content_digest(edited) != original
        path.write_text(json.dumps(edited))
        done = _cli("gate", "verify", str(path))
        assert done.returncode == 1
        assert "digest mismatch" in done.stderr

    def test_hmac_signature(self, inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CHAINHARNESS_GATE_KEY", "s3cret")
        inner.makepyfile("def test_ok():\n    pass\n")
        inner.runpytest("--gate=build", "--gate-report=v.json")
        path = str(inner.path / "v.json")
        assert _verdict(inner.path / "v.json")["signature"].startswith("hmac-sha256:")
        env = {**_env(), "CHAINHARNESS_GATE_KEY": "s3cret"}
        assert _cli("gate", "verify", path, env=env).returncode == 0
        wrong = _cli("gate", "verify", path, env={**env, "CHAINHARNESS_GATE_KEY": "guess"})
        assert wrong.returncode == 1
        assert "bad signature" in wrong.stderr
        # A forger who recomputes the digest still cannot produce the signature.
        verdict = _verdict(inner.path / "v.json")
        verdict["target"] = "production"
        verdict["digest"] = content_digest(verdict)
        Path(path).write_text(json.dumps(verdict))
        forged = _cli("gate", "verify", path, env=env)
        assert forged.returncode == 1
        assert "bad signature" in forged.stderr
        unsigned = _cli("gate", "verify", path, "--require-signature", env=_env())
        assert unsigned.returncode == 1


class TestNoStaleOrForgedPromote:
    """A gate run that stops early never leaves an earlier promote to be verified, and
    verify never calls a report it could not check 'signed'."""

    @pytest.mark.parametrize(
        "args",
        [
            ["--chain-nodes=0"],
            ["--chain-bus=mqtt://127.0.0.1:1"],
            ["--gate-artifact=app=missing.bin"],
            ["--gate-xfail=maybe"],
            ["--chain-period=0"],
        ],
    )
    def test_a_usage_error_replaces_an_earlier_promote(
        self, inner: pytest.Pytester, args: list[str]
    ) -> None:
        inner.makepyfile("def test_ok():\n    pass\n")
        first = inner.runpytest("--gate=build", "--gate-report=v.json")
        assert first.ret == 0
        assert _verdict(inner.path / "v.json")["verdict"] == "promote"
        again = inner.runpytest("--gate=build", "--gate-report=v.json", *args)
        assert again.ret == pytest.ExitCode.USAGE_ERROR
        assert _verdict(inner.path / "v.json")["verdict"] == "block"
        done = _cli("gate", "verify", str(inner.path / "v.json"), env=_env())
        assert done.returncode == 1
        assert "verdict is 'block'" in done.stderr

    def test_report_folder_must_exist_and_no_temporary_file_is_left(
        self, inner: pytest.Pytester
    ) -> None:
        inner.makepyfile("def test_ok():\n    open('ran', 'w').close()\n")
        result = inner.runpytest("--gate=build", "--gate-report=nonexistent/dir/r.json")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*cannot write the verdict there: no such directory*"])
        assert not (inner.path / "nonexistent").exists()
        (inner.path / "reports").mkdir()
        result = inner.runpytest("--gate=build", "--gate-report=reports")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*reports: cannot write the verdict there: it is a dir*"])
        assert list((inner.path / "reports").iterdir()) == []
        assert not (inner.path / "ran").exists()

    def test_verify_without_a_key_says_the_signature_was_not_checked(
        self, inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("CHAINHARNESS_GATE_KEY", "s3cret")
        inner.makepyfile("def test_ok():\n    pass\n")
        inner.runpytest("--gate=build", "--gate-report=v.json")
        path = inner.path / "v.json"
        # Forged: edited to promote to production, digest recomputed, signature zeroed.
        verdict = _verdict(path)
        verdict["target"] = "production"
        verdict["signature"] = "hmac-sha256:" + "0" * 64
        verdict["digest"] = content_digest(verdict)
        path.write_text(json.dumps(verdict))
        done = _cli("gate", "verify", str(path), env=_env())
        assert "signature NOT checked" in done.stdout
        assert ", signed," not in done.stdout
        required = _cli("gate", "verify", str(path), "--require-signature", env=_env())
        assert required.returncode == 1
        assert "signature required" in required.stderr
        keyed = _cli("gate", "verify", str(path), env={**_env(), "CHAINHARNESS_GATE_KEY": "s3cret"})
        assert keyed.returncode == 1
        assert "bad signature" in keyed.stderr

    def test_the_key_is_not_in_any_child_environment(
        self, inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("CHAINHARNESS_GATE_KEY", "s3cret")
        inner.makepyfile(
            """
            import os, subprocess, sys
            from pytest_chainharness._proc import find_marked

            def test_children(chain):
                chain.wait_for_height(1)
                assert "CHAINHARNESS_GATE_KEY" not in os.environ
                child = subprocess.run([sys.executable, "-c", "import os; print(dict(os.environ))"],
                                       capture_output=True, text=True)
                assert "s3cret" not in child.stdout
                pids = find_marked(chain.provider.run_id)
                assert len(pids) >= 2 * len(chain.nodes)  # nodes and agents at least
                for pid in pids:
                    with open(f"/proc/{pid}/environ", "rb") as handle:
                        assert b"s3cret" not in handle.read(), pid
            """
        )
        result = inner.runpytest_subprocess(
            "--gate=build", "--gate-report=v.json", "--chain-nodes=2"
        )
        result.assert_outcomes(passed=1)
        assert _verdict(inner.path / "v.json")["signature"].startswith("hmac-sha256:")


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "CHAINHARNESS_GATE_KEY"}


class TestReports:
    def test_junit_xml_carries_the_stage(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(STAGED)
        inner.runpytest("--junitxml=junit.xml")
        xml = (inner.path / "junit.xml").read_text()
        assert '<property name="stage" value="build" />' in xml
        assert '<property name="stage" value="production" />' in xml

    def test_without_allure_nothing_breaks(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(STAGED)
        inner.runpytest("-p", "no:allure_pytest", "--gate=build").assert_outcomes(
            passed=1, deselected=3
        )

    @pytest.mark.usefixtures("geth_required", "mosquitto_required")
    def test_allure_results_on_a_failing_chain_test(self, inner: pytest.Pytester) -> None:
        pytest.importorskip("allure", reason="allure-pytest is an optional dependency")
        inner.makepyfile(
            """
            import pytest

            @pytest.mark.stage("integration")
            def test_chain_breaks(chain):
                chain.nodes[1].stop()
                chain.nodes[1].start()
                assert chain.heads()["node0"].number < 0, "head went negative"

            def test_infra(chain):
                from pytest_chainharness import ChainHarnessError
                raise ChainHarnessError("docker went away")
            """
        )
        result = inner.runpytest_subprocess(
            "--alluredir=allure", "--chain-nodes=2", "--gate=integration", "--gate-report=v.json"
        )
        result.assert_outcomes(failed=2)
        allure_dir = inner.path / "allure"
        env = (allure_dir / "environment.properties").read_text()
        for line in ("chain.client=geth", "chain.nodes=2", "chain.backend=process"):
            assert line in env
        assert "chain.version=1.13" in env
        assert "gate.stage=integration" in env
        categories = json.loads((allure_dir / "categories.json").read_text())
        infra, product = categories[0], categories[1]
        results = [json.loads(p.read_text()) for p in allure_dir.glob("*-result.json")]
        by_name = {r["name"]: r for r in results}
        broken = by_name["test_chain_breaks"]
        assert broken["status"] == "failed"
        names = {a["name"] for a in broken["attachments"]}
        assert {"chainharness heads", "chainharness events", "node0 log (last 80 lines)"} <= names
        assert "node1 log (last 80 lines)" in names
        assert {"name": "stage", "value": "integration"} in broken["labels"]
        steps = [s["name"] for s in broken.get("steps", [])]
        assert "fault: stop (node1)" in steps
        assert "fault: start (node1)" in steps
        message = broken["statusDetails"]["message"]
        assert re.match(product["messageRegex"], message)
        assert not re.match(infra["messageRegex"], message)
        infra_message = by_name["test_infra"]["statusDetails"]["message"]
        assert re.match(infra["messageRegex"], infra_message)
        assert not re.match(product["messageRegex"], infra_message)
        containers = [json.loads(p.read_text()) for p in allure_dir.glob("*-container.json")]
        befores = [b for c in containers for b in c.get("befores", []) if b["name"] == "chain"]
        assert any(
            s["name"] == "chainharness: start 2-node geth network"
            for b in befores
            for s in b.get("steps", [])
        )
