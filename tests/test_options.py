"""Options, ini keys, marks and usage errors, driven end to end through pytester."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pytest_chainharness._proc import alive, run_bounded

PASSING = """
def test_nothing():
    assert True
"""


class TestUsageErrors:
    @pytest.mark.parametrize("value", ["0", "-1", "abc", "33", "1.5"])
    def test_bad_node_count(self, inner: pytest.Pytester, runs_dir: Path, value: str) -> None:
        inner.makepyfile(PASSING)
        result = inner.runpytest(f"--chain-nodes={value}")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"*--chain-nodes*{value}*1..32*"])
        assert not runs_dir.exists() or not any(runs_dir.iterdir())  # nothing started

    def test_max_nodes_comes_from_ini(self, inner: pytest.Pytester) -> None:
        inner.makeini("[pytest]\nchain_max_nodes = 8\n")
        inner.makepyfile(PASSING)
        result = inner.runpytest("--chain-nodes=9")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*--chain-nodes=9*allowed 1..8*"])

    def test_bad_ini_value_names_the_key(self, inner: pytest.Pytester) -> None:
        inner.makeini("[pytest]\nchain_nodes = many\n")
        inner.makepyfile(PASSING)
        result = inner.runpytest()
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*ini chain_nodes='many'*whole number*"])

    def test_unknown_client_lists_clients(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(PASSING)
        result = inner.runpytest("--chain-client=besu")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(
            ["*--chain-client='besu'*unknown client*geth, geth-pos, anvil*"]
        )

    def test_anvil_is_single_node(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(PASSING)
        result = inner.runpytest("--chain-client=anvil", "--chain-nodes=2")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*anvil client runs at most 1 node*"])

    @pytest.mark.parametrize(
        ("args", "pattern"),
        [
            (["--chain-backend=cloud"], "*--chain-backend='cloud'*auto, docker, process*"),
            (["--chain-attach=missing.json"], "*--chain-attach=missing.json: no such file*"),
            (["--chain-services=missing.yaml"], "*--chain-services=missing.yaml: no such file*"),
            (["--chain-period=0"], "*--chain-period=0*allowed 1..3600*"),
            (["--chain-seed=-5"], "*--chain-seed=-5*"),
        ],
    )
    def test_other_bad_values(self, inner: pytest.Pytester, args: list[str], pattern: str) -> None:
        inner.makepyfile(PASSING)
        result = inner.runpytest(*args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([pattern])


class TestCheckedBeforeAnythingStarts:
    @pytest.mark.parametrize(
        ("content", "pattern"),
        [
            ("services: [unclosed\n", "*not valid YAML*"),
            ("other: {}\n", "*expected a top-level 'services:' mapping*"),
            ("services:\n  Bad_Name: {image: x}\n", "*names are lower-case letters*"),
        ],
    )
    def test_services_file_content(
        self, inner: pytest.Pytester, runs_dir: Path, content: str, pattern: str
    ) -> None:
        (inner.path / "svc.yaml").write_text(content)
        inner.makepyfile(PASSING)
        result = inner.runpytest("--chain-services=svc.yaml")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"*--chain-services=*svc.yaml: {pattern}"])
        assert not runs_dir.exists() or not any(runs_dir.glob("*/nodes"))

    def test_chain_geth_must_be_an_executable(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(PASSING)
        result = inner.runpytest("--chain-geth=/nonexistent/geth")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*--chain-geth=/nonexistent/geth: no such executable file*"])

    def test_chain_geth_is_for_geth_and_chain_binary_for_any_client(
        self, inner: pytest.Pytester
    ) -> None:
        inner.makepyfile(PASSING)
        result = inner.runpytest("--chain-client=anvil", "--chain-nodes=1", "--chain-geth=/bin/sh")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*--chain-geth: only for the geth client*--chain-binary*"])
        both = inner.runpytest("--chain-binary=/bin/sh", "--chain-geth=/bin/sh")
        assert both.ret == pytest.ExitCode.USAGE_ERROR
        both.stderr.fnmatch_lines(["*--chain-geth and --chain-binary: give one of them*"])

    @pytest.mark.usefixtures("anvil_required")
    def test_chain_binary_runs_that_binary(self, inner: pytest.Pytester) -> None:
        from pytest_chainharness.tools import find_anvil

        inner.makepyfile("def test_one(chain):\n    chain.wait_for_height(1)\n")
        anvil = find_anvil()
        result = inner.runpytest_subprocess(
            "--chain-client=anvil", "--chain-nodes=1", f"--chain-binary={anvil}"
        )
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines([f"*client anvil 1.7.1 ({anvil})*"])

    def test_a_geth_that_hangs_is_a_clear_error_not_an_internal_error(
        self, inner: pytest.Pytester
    ) -> None:
        hangs = inner.path / "geth"
        # A wrapper whose own child hangs: that child holds the output pipes open.
        hangs.write_text(f"#!/bin/sh\nsleep 60 &\necho $! >> {inner.path}/children\nwait\n")
        hangs.chmod(0o755)
        inner.makepyfile(
            """
            def test_no_chain():
                pass

            def test_chain(chain):
                pass
            """
        )
        result = inner.runpytest_subprocess(f"--chain-geth={hangs}", "--chain-nodes=1")
        out = result.stdout.str()
        assert "INTERNALERROR" not in out + result.stderr.str()
        result.stdout.fnmatch_lines(["*client geth NOT FOUND: `*geth version` did not finish*"])
        result.assert_outcomes(passed=1, errors=1)
        # The session's error is the same check, made before any node is laid out.
        result.stdout.fnmatch_lines(["*ToolNotFound: `*geth version` did not finish within 10s"])
        assert " init " not in out
        children = [int(p) for p in (inner.path / "children").read_text().split()]
        assert children
        assert [pid for pid in children if alive(pid)] == []

    def test_an_init_that_hangs_is_infra_within_the_start_timeout(
        self, inner: pytest.Pytester
    ) -> None:
        from pytest_chainharness.tools import find_geth

        real = find_geth()
        wrapper = inner.path / "geth"
        # Answers `version` like the real one; hangs in `init`.
        wrapper.write_text(
            f'#!/bin/sh\nfor a in "$@"; do [ "$a" = init ] && exec sleep 60; done\n'
            f'exec {real} "$@"\n'
        )
        wrapper.chmod(0o755)
        inner.makeini("[pytest]\nchain_backend = process\nchain_start_timeout = 3\n")
        inner.makepyfile("def test_chain(chain):\n    pass\n")
        result = inner.runpytest_subprocess(f"--chain-geth={wrapper}", "--chain-nodes=1")
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(
            ["*[[]infra[]] NetworkStartError: node0: `*geth*init*` did not finish within 3s*"]
        )


class TestHeaderAndIni:
    def test_header_shows_seed_client_and_backend(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(PASSING)
        result = inner.runpytest("--chain-seed=42", "--chain-nodes=3")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(
            [
                "chainharness: 3 node(s), client geth*",
                "chainharness: backend process (*), period 1s, seed 42 (replay: --chain-seed=42)*",
            ]
        )

    def test_random_seed_differs_between_runs(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(PASSING)
        seeds = set()
        for _ in range(2):
            out = inner.runpytest().stdout.str()
            seeds.add(out.split("seed ", 1)[1].split(" ", 1)[0])
        assert len(seeds) == 2

    def test_ini_is_used_and_command_line_wins(self, inner: pytest.Pytester) -> None:
        inner.makeini("[pytest]\nchain_nodes = 2\nchain_seed = 7\n")
        inner.makepyfile(PASSING)
        inner.runpytest().stdout.fnmatch_lines(["chainharness: 2 node(s)*", "*seed 7 *"])
        inner.runpytest("--chain-nodes=5").stdout.fnmatch_lines(["chainharness: 5 node(s)*"])

    def test_a_run_without_chain_starts_nothing(
        self, inner: pytest.Pytester, runs_dir: Path
    ) -> None:
        inner.makepyfile(PASSING)
        inner.runpytest().assert_outcomes(passed=1)
        assert not list(runs_dir.glob("*/network.json"))
        assert not list(runs_dir.glob("*/nodes"))


class TestMarks:
    def test_chain_mark_skips_with_reason(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(
            """
            import pytest

            @pytest.mark.chain(min_nodes=8)
            def test_big():
                pass

            @pytest.mark.chain(client="anvil")
            def test_anvil_only():
                pass

            @pytest.mark.chain(min_nodes=2, client="geth")
            def test_fits():
                pass
            """
        )
        result = inner.runpytest("-rs", "--chain-nodes=4")
        result.assert_outcomes(passed=1, skipped=2)
        result.stdout.fnmatch_lines(
            [
                "*needs at least 8 nodes; this run has 4 (--chain-nodes=4)*",
                "*needs client anvil; this run uses geth (--chain-client=geth)*",
            ]
        )

    def test_chain_mark_with_unknown_argument_is_a_usage_error(
        self, inner: pytest.Pytester
    ) -> None:
        inner.makepyfile(
            """
            import pytest

            @pytest.mark.chain(nodes=8)
            def test_big():
                pass
            """
        )
        result = inner.runpytest()
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*mark.chain takes only min_nodes= and client=*nodes*"])

    def test_marks_are_registered(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(
            """
            import pytest

            @pytest.mark.stage("staging")
            @pytest.mark.disruptive
            @pytest.mark.chain(min_nodes=1)
            def test_marked():
                pass
            """
        )
        inner.runpytest("--strict-markers").assert_outcomes(passed=1)


class TestMissingTools:
    def test_missing_geth_names_the_install_command(
        self, inner: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        empty = tmp_path / "no-tools"
        empty.mkdir()
        monkeypatch.setenv("CHAINHARNESS_TOOLS", str(empty))
        monkeypatch.delenv("CHAINHARNESS_GETH", raising=False)
        monkeypatch.setenv("PATH", "/usr/bin:/bin")
        inner.makepyfile(
            """
            def test_needs_chain(chain):
                pass
            """
        )
        result = inner.runpytest()
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(
            [
                "*client geth NOT FOUND*",
                "[[]infra[]] ToolNotFound: geth was not found*"
                "Install it with: python -m pytest_chainharness.tools install geth*",
            ]
        )
        # Said once, not again as a chained exception.
        assert result.stdout.str().count("During handling") == 0


class TestClientEntryPoints:
    """A team ships its own adapter class in a package (entry point group
    pytest_chainharness.clients) and names it with --chain-client."""

    def _package(self, inner: pytest.Pytester, target: str) -> None:
        site = inner.path / "site"
        info = site / "my_adapter-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-adapter\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(
            f"[pytest_chainharness.clients]\nmygeth = {target}\n"
        )
        (site / "my_adapter.py").write_text(
            "from pytest_chainharness.clients import GethAdapter\n\n"
            "class MyGeth(GethAdapter):\n"
            "    name = 'mygeth'\n"
        )

    @pytest.mark.usefixtures("geth_required")
    def test_a_registered_adapter_runs_a_network(
        self, inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        self._package(inner, "my_adapter:MyGeth")
        monkeypatch.setenv("PYTHONPATH", str(inner.path / "site"))
        inner.makepyfile(
            """
            def test_mine(chain):
                assert type(chain.adapter).__name__ == "MyGeth"
                assert chain.client == "mygeth"
                chain.wait_for_height(1)
            """
        )
        result = inner.runpytest_subprocess("--chain-client=mygeth", "--chain-nodes=1")
        result.assert_outcomes(passed=1)

    def test_an_adapter_that_does_not_load_is_a_usage_error(
        self, inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        self._package(inner, "no_such_module:Adapter")
        monkeypatch.setenv("PYTHONPATH", str(inner.path / "site"))
        inner.makepyfile(PASSING)
        result = inner.runpytest_subprocess("--chain-client=mygeth")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(
            ["*client 'mygeth' (no_such_module:Adapter, entry point group*does not load*"]
        )


def test_a_bounded_command_ends_at_its_timeout_with_its_whole_group(tmp_path: Path) -> None:
    """subprocess.run's timeout kills the child only, then waits for the pipes: behind a
    wrapper script that was the hanging grandchild's whole lifetime."""
    script = tmp_path / "wrapper"
    script.write_text(f"#!/bin/sh\necho started\nsleep 30 &\necho $! > {tmp_path}/child\nwait\n")
    script.chmod(0o755)
    with pytest.raises(subprocess.TimeoutExpired) as caught:
        run_bounded([str(script)], text=True, timeout=1)
    assert "started" in str(caught.value.stdout)
    assert not alive(int((tmp_path / "child").read_text()))
    done = run_bounded(["sh", "-c", "cat; echo err >&2; exit 3"], input="in", text=True, timeout=5)
    assert (done.returncode, done.stdout, done.stderr) == (3, "in", "err\n")


def test_a_bounded_command_returns_only_once_its_group_is_gone(tmp_path: Path) -> None:
    """A grandchild that let go of the pipes: SIGKILL reaches it when it is next scheduled,
    and returning once the pipes closed left it running (about 1 in 10 on this machine)."""
    script = tmp_path / "wrapper"
    script.write_text(
        f"#!/bin/sh\nsleep 30 >/dev/null 2>&1 &\necho $! > {tmp_path}/child\necho started\nwait\n"
    )
    script.chmod(0o755)
    survivors = []
    for _ in range(20):
        (tmp_path / "child").unlink(missing_ok=True)
        with pytest.raises(subprocess.TimeoutExpired):
            run_bounded([str(script)], timeout=0.2)
        child = int((tmp_path / "child").read_text())
        if alive(child):
            survivors.append(child)
    assert survivors == []
