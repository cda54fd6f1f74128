"""The tools the set-up installs: pinned, found where npm and go put them, and checked.

The class of break this guards against: an upstream packaging change (npm 11 stopped
running unapproved install scripts) moved anvil's native binary, and the set-up died with
a traceback after minutes of building. These tests install into an empty tools folder, as
a fresh machine would, without rebuilding geth.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_chainharness._errors import ToolNotFound
from pytest_chainharness.tools import (
    ANVIL_VERSION,
    TOXIPROXY_VERSION,
    anvil_native_path,
    binary_version,
    doctor,
    find_anvil,
    install_anvil,
    install_toxiproxy,
)

ROOT = Path(__file__).resolve().parent.parent


def _tools_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_chainharness.tools", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=ROOT,
    )


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


class TestCommandLine:
    def test_no_runpy_warning(self, tmp_path: Path) -> None:
        env = {**os.environ, "CHAINHARNESS_TOOLS": str(tmp_path)}
        result = _tools_cli("where", env={**env, "PYTHONWARNINGS": "error"})
        assert result.returncode == 0, result.stderr
        assert "RuntimeWarning" not in result.stderr
        assert f"tools folder: {tmp_path}" in result.stdout

    def test_doctor_says_one_line_per_broken_tool(self, tmp_path: Path) -> None:
        # geth 1.13.15 answers with the wrong version, 1.13.14 hangs, anvil's launcher
        # exists without its native binary, toxiproxy is missing.
        _script(tmp_path / "geth" / "1.13.15" / "geth", 'echo "Version: 1.12.0-stable"')
        _script(tmp_path / "geth" / "1.13.14" / "geth", "sleep 30")
        (tmp_path / "anvil" / "node_modules" / ".bin").mkdir(parents=True)
        env = {**os.environ, "CHAINHARNESS_TOOLS": str(tmp_path)}
        env.pop("CHAINHARNESS_ANVIL", None)
        env.pop("CHAINHARNESS_TOXIPROXY", None)
        env["PATH"] = "/usr/bin:/bin"
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pytest_chainharness.tools import doctor; "
                "sys.exit(0 if doctor(['geth', 'anvil', 'toxiproxy'], timeout=2) else 1)",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert result.returncode == 1
        lines = result.stdout.splitlines()
        assert len(lines) == 4, result.stdout
        assert all(line.startswith("FAIL") for line in lines), result.stdout
        assert "does not report 'Version: 1.13.15'" in lines[0]
        assert "did not finish within 2s" in lines[1]
        assert "native binary is missing" in lines[2]
        assert "Fix: python -m pytest_chainharness.tools install anvil" in lines[2]
        assert "Fix: python -m pytest_chainharness.tools install toxiproxy" in lines[3]

    def test_doctor_rejects_unknown_tools(self, tmp_path: Path) -> None:
        result = _tools_cli("doctor", "besu", env={**os.environ})
        assert result.returncode == 2
        assert "unknown tool(s) besu" in result.stderr


class TestAnvilLayout:
    def test_launcher_without_native_binary_names_the_install_command(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("CHAINHARNESS_TOOLS", str(tmp_path))
        monkeypatch.delenv("CHAINHARNESS_ANVIL", raising=False)
        launcher = tmp_path / "anvil" / "node_modules" / ".bin" / "anvil"
        _script(launcher, "exec node bin.mjs")
        with pytest.raises(ToolNotFound, match="tools install anvil"):
            find_anvil()

    def test_native_binary_that_is_not_executable(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("CHAINHARNESS_TOOLS", str(tmp_path))
        monkeypatch.delenv("CHAINHARNESS_ANVIL", raising=False)
        native = anvil_native_path(tmp_path / "anvil")
        native.parent.mkdir(parents=True)
        native.write_text("not a program")
        with pytest.raises(ToolNotFound, match="missing or not executable"):
            find_anvil()

    def test_a_binary_that_hangs_on_version_is_tool_not_found(self, tmp_path: Path) -> None:
        hangs = _script(tmp_path / "hangs", "sleep 30")
        with pytest.raises(ToolNotFound, match="did not finish within 1s"):
            binary_version(hangs, ["version"], r"(\S+)", timeout=1)


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed on this machine")
class TestFreshInstall:
    """Install into an empty tools folder as scripts/setup.sh does on a fresh machine."""

    def test_anvil_from_npm_without_install_scripts(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        binary = install_anvil(dest=tmp_path)
        assert binary == anvil_native_path(tmp_path / "anvil")
        monkeypatch.setenv("CHAINHARNESS_TOOLS", str(tmp_path))
        monkeypatch.delenv("CHAINHARNESS_ANVIL", raising=False)
        assert find_anvil() == binary
        assert binary_version(binary, ["--version"], r"Version:\s*(\S+)") == ANVIL_VERSION
        # A second install finds it and does nothing.
        assert install_anvil(dest=tmp_path) == binary

    @pytest.mark.usefixtures("docker_required")
    def test_anvil_image_from_an_empty_tools_folder_runs(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from pytest_chainharness._docker import docker_client
        from pytest_chainharness.images import ANVIL_IMAGE, build_images

        install_anvil(dest=tmp_path)
        monkeypatch.setenv("CHAINHARNESS_TOOLS", str(tmp_path))
        monkeypatch.delenv("CHAINHARNESS_ANVIL", raising=False)
        said: list[str] = []
        built = build_images(only=["anvil"], force=True, say=said.append)
        assert built == [ANVIL_IMAGE], said
        client = docker_client()
        try:
            out = client.containers.run(ANVIL_IMAGE, ["--version"], remove=True)
        finally:
            client.close()
        assert f"Version: {ANVIL_VERSION}" in out.decode()

    @pytest.mark.skipif(shutil.which("go") is None, reason="Go is not installed on this machine")
    def test_toxiproxy_reports_its_pinned_version(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        binary = install_toxiproxy(dest=tmp_path)
        monkeypatch.setenv("CHAINHARNESS_TOOLS", str(tmp_path))
        monkeypatch.delenv("CHAINHARNESS_TOXIPROXY", raising=False)
        lines: list[str] = []
        assert doctor(["toxiproxy"], say=lines.append), lines
        assert lines == [
            f"ok    toxiproxy        toxiproxy-server version {TOXIPROXY_VERSION}  ({binary})"
        ]
