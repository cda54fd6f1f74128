"""Find and install the binaries the harness runs (geth, anvil, toxiproxy).

Binaries live in a tools folder, never in the repository::

    <tools>/geth/<version>/geth                     built from the Go module proxy
    <tools>/anvil/node_modules/.bin/anvil            from the npm package @foundry-rs/anvil
    <tools>/toxiproxy/<version>/server               toxiproxy (latency faults), Go proxy

The tools folder is ``$CHAINHARNESS_TOOLS``, else ``.tools`` in the project root when it
exists, else ``~/.cache/pytest-chainharness/tools``. Install with::

    python -m pytest_chainharness.tools install geth anvil toxiproxy
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ._errors import ToolNotFound

__all__ = [
    "DEFAULT_GETH_VERSION",
    "GETH_VERSIONS",
    "find_anvil",
    "find_geth",
    "find_toxiproxy",
    "geth_versions_installed",
    "install_anvil",
    "install_geth",
    "install_toxiproxy",
    "tools_dir",
]

#: The last geth release that seals Clique (PoA) blocks.
DEFAULT_GETH_VERSION = "1.13.15"
#: Built by default: the default and the "other version" for upgrade/rollback tests.
GETH_VERSIONS = ("1.13.15", "1.13.14")

INSTALL_COMMAND = "python -m pytest_chainharness.tools install"
#: toxiproxy: the userspace TCP proxy behind latency faults where the kernel has no netem.
TOXIPROXY_VERSION = "2.12.0"


def tools_dir(root: Path | None = None) -> Path:
    """Where client binaries are installed and looked up."""
    env = os.environ.get("CHAINHARNESS_TOOLS")
    if env:
        return Path(env).expanduser().resolve()
    if root is not None and (root / ".tools").is_dir():
        return (root / ".tools").resolve()
    return Path.home() / ".cache" / "pytest-chainharness" / "tools"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version))


def geth_versions_installed(root: Path | None = None) -> dict[str, Path]:
    """Installed geth versions → binary, newest first."""
    base = tools_dir(root) / "geth"
    found = {
        d.name: d / "geth"
        for d in base.glob("*")
        if (d / "geth").is_file() and os.access(d / "geth", os.X_OK)
    }
    return dict(sorted(found.items(), key=lambda kv: _version_key(kv[0]), reverse=True))


def find_geth(
    *, version: str | None = None, explicit: str | None = None, root: Path | None = None
) -> Path:
    """Locate geth: explicit path/``$CHAINHARNESS_GETH`` > tools folder > ``PATH``.

    With ``version``, only that version from the tools folder (or a path) is accepted.
    """
    if version is not None and ("/" in version or Path(version).is_file()):
        explicit, version = version, None
    explicit = explicit or (None if version else os.environ.get("CHAINHARNESS_GETH"))
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path.resolve()
        found = shutil.which(explicit)
        if found:
            return Path(found)
        raise ToolNotFound(f"geth binary {explicit!r} does not exist or is not executable")
    installed = geth_versions_installed(root)
    if version is not None:
        version = version.lstrip("v")
        if version in installed:
            return installed[version]
        have = ", ".join(installed) or "none"
        raise ToolNotFound(
            f"geth {version} is not installed (installed: {have}). "
            f"Install it with: {INSTALL_COMMAND} geth --geth-version {version}"
        )
    if DEFAULT_GETH_VERSION in installed:
        return installed[DEFAULT_GETH_VERSION]
    if installed:
        return next(iter(installed.values()))
    on_path = shutil.which("geth")
    if on_path:
        return Path(on_path)
    raise ToolNotFound(
        f"geth was not found (looked at --chain-geth, $CHAINHARNESS_GETH, {tools_dir(root)}/geth "
        f"and PATH). Install it with: {INSTALL_COMMAND} geth   "
        f"(builds geth v{DEFAULT_GETH_VERSION} from the Go module proxy; needs Go)"
    )


def find_anvil(*, explicit: str | None = None, root: Path | None = None) -> Path:
    """Locate anvil: explicit path/``$CHAINHARNESS_ANVIL`` > tools folder > ``PATH``."""
    explicit = explicit or os.environ.get("CHAINHARNESS_ANVIL")
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path.resolve()
        raise ToolNotFound(f"anvil binary {explicit!r} does not exist or is not executable")
    candidate = tools_dir(root) / "anvil" / "node_modules" / ".bin" / "anvil"
    if candidate.exists():
        return candidate
    on_path = shutil.which("anvil")
    if on_path:
        return Path(on_path)
    raise ToolNotFound(
        f"anvil was not found (looked at $CHAINHARNESS_ANVIL, {candidate} and PATH). "
        f"Install it with: {INSTALL_COMMAND} anvil   (npm package @foundry-rs/anvil; needs npm)"
    )


def _go_ldflags() -> str:
    # Go >= 1.23 refuses the linkname used by github.com/fjl/memsize (runtime.stopTheWorld),
    # which geth 1.13 imports; -checklinkname=0 is the documented workaround.
    out = subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True, check=True)
    match = re.match(r"go1\.(\d+)", out.stdout.strip())
    return "-checklinkname=0" if match and int(match.group(1)) >= 23 else ""


def install_geth(
    versions: Sequence[str] = GETH_VERSIONS, *, dest: Path | None = None
) -> list[Path]:
    """Build each geth version into ``dest/geth/<version>/geth``; skip ones already built."""
    if shutil.which("go") is None:
        raise ToolNotFound("building geth needs Go (>= 1.21) on PATH")
    base = (dest or tools_dir()) / "geth"
    ldflags = _go_ldflags()
    built = []
    for raw in versions:
        version = raw.lstrip("v")
        target = base / version
        binary = target / "geth"
        if binary.is_file() and _geth_reports(binary, version):
            print(f"geth {version}: already installed at {binary}")
            built.append(binary)
            continue
        print(f"geth {version}: building into {target} (a few minutes the first time)", flush=True)
        target.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GOBIN": str(target)}
        subprocess.run(
            [
                "go",
                "install",
                "-trimpath",
                f"-ldflags={ldflags}",
                f"github.com/ethereum/go-ethereum/cmd/geth@v{version}",
            ],
            env=env,
            check=True,
        )
        if not _geth_reports(binary, version):
            raise ToolNotFound(f"built {binary} but it does not report version {version}")
        built.append(binary)
    return built


def _geth_reports(binary: Path, version: str) -> bool:
    try:
        out = subprocess.run([str(binary), "version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return f"Version: {version}" in out.stdout


def find_toxiproxy(root: Path | None = None) -> Path:
    """The toxiproxy server binary: ``$CHAINHARNESS_TOXIPROXY``, the tools folder or PATH."""
    explicit = os.environ.get("CHAINHARNESS_TOXIPROXY")
    if explicit:
        return Path(explicit)
    built = tools_dir(root) / "toxiproxy" / TOXIPROXY_VERSION / "server"
    if built.is_file():
        return built
    on_path = shutil.which("toxiproxy-server")
    if on_path:
        return Path(on_path)
    raise ToolNotFound(
        "toxiproxy (the TCP proxy behind latency faults; this kernel may lack netem) was "
        f"not found. Install it with: {INSTALL_COMMAND} toxiproxy   (builds it from the Go "
        "module proxy; needs Go)"
    )


def install_toxiproxy(*, dest: Path | None = None) -> Path:
    """Build the toxiproxy server into ``dest/toxiproxy/<version>/server``."""
    target = (dest or tools_dir()) / "toxiproxy" / TOXIPROXY_VERSION
    binary = target / "server"
    if binary.is_file():
        print(f"toxiproxy {TOXIPROXY_VERSION}: already installed at {binary}")
        return binary
    if shutil.which("go") is None:
        raise ToolNotFound("building toxiproxy needs Go on PATH")
    print(f"toxiproxy {TOXIPROXY_VERSION}: building into {target}", flush=True)
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "go",
            "install",
            "-trimpath",
            f"github.com/Shopify/toxiproxy/v2/cmd/server@v{TOXIPROXY_VERSION}",
        ],
        env={**os.environ, "GOBIN": str(target)},
        check=True,
    )
    return binary


def install_anvil(*, dest: Path | None = None, version: str = "latest") -> Path:
    """Install anvil from npm into ``dest/anvil``."""
    if shutil.which("npm") is None:
        raise ToolNotFound("installing anvil needs npm on PATH")
    prefix = (dest or tools_dir()) / "anvil"
    binary = prefix / "node_modules" / ".bin" / "anvil"
    if binary.exists() and version == "latest":
        print(f"anvil: already installed at {binary}")
        return binary
    prefix.mkdir(parents=True, exist_ok=True)
    print(f"anvil: installing @foundry-rs/anvil@{version} into {prefix}", flush=True)
    subprocess.run(
        [
            "npm",
            "install",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(prefix),
            f"@foundry-rs/anvil@{version}",
        ],
        check=True,
    )
    subprocess.run([str(binary), "--version"], check=True, capture_output=True)
    return binary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_chainharness.tools",
        description="Install or locate the client binaries pytest-chainharness runs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="build/install clients into the tools folder")
    inst.add_argument("what", nargs="+", choices=["geth", "anvil", "toxiproxy"])
    inst.add_argument("--dest", type=Path, help="tools folder (default: see module docs)")
    inst.add_argument(
        "--geth-version",
        action="append",
        dest="geth_versions",
        help=f"geth version to build; repeatable (default: {', '.join(GETH_VERSIONS)})",
    )
    sub.add_parser("where", help="print the tools folder and what is installed")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            dest = args.dest.resolve() if args.dest else None
            if "geth" in args.what:
                install_geth(args.geth_versions or GETH_VERSIONS, dest=dest)
            if "anvil" in args.what:
                install_anvil(dest=dest)
            if "toxiproxy" in args.what:
                install_toxiproxy(dest=dest)
        else:
            root = Path.cwd()
            print(f"tools folder: {tools_dir(root)}")
            for version, path in geth_versions_installed(root).items():
                print(f"geth {version}: {path}")
            try:
                print(f"anvil: {find_anvil(root=root)}")
            except ToolNotFound:
                print("anvil: not installed")
    except (ToolNotFound, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
