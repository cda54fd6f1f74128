"""Find, install and check the binaries the harness runs (geth, anvil, toxiproxy).

Binaries live in a tools folder, never in the repository; every version is pinned::

    <tools>/geth/<version>/geth          built from the Go module proxy
    <tools>/anvil/node_modules/...       npm package @foundry-rs/anvil (native binary)
    <tools>/toxiproxy/<version>/server   toxiproxy (latency faults), Go module proxy
    <tools>/solc/<version>/node_modules/solc   solc (solcjs) from npm, runs under node
    <tools>/prysm/<version>/beacon-chain|validator|prysmctl   prysm (geth-pos), Go proxy

The tools folder is ``$CHAINHARNESS_TOOLS``, else ``.tools`` in the project root when it
exists, else ``~/.cache/pytest-chainharness/tools``. Install, then check, with::

    python -m pytest_chainharness.tools install geth anvil toxiproxy
    python -m pytest_chainharness.tools doctor

The command line lives in ``__main__.py``, so running it imports this module once (no
runpy warning about a module found in ``sys.modules`` before execution).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .._errors import ToolNotFound
from .._proc import run_bounded

__all__ = [
    "ANVIL_VERSION",
    "COMETBFT_VERSION",
    "DEFAULT_GETH_VERSION",
    "DOCTOR_TOOLS",
    "GETH_VERSIONS",
    "INSTALL_COMMAND",
    "POS_GETH_PREVIOUS",
    "POS_GETH_VERSION",
    "PRYSM_BINARIES",
    "PRYSM_VERSION",
    "SOLC_VERSION",
    "TOXIPROXY_VERSION",
    "anvil_native_path",
    "binary_version",
    "doctor",
    "find_anvil",
    "find_cometbft",
    "find_geth",
    "find_mosquitto",
    "find_prysm",
    "find_solc",
    "find_toxiproxy",
    "geth_versions_installed",
    "install_anvil",
    "install_cometbft",
    "install_geth",
    "install_geth_pos",
    "install_prysm",
    "install_solc",
    "install_toxiproxy",
    "tools_dir",
    "version_key",
]

#: The last geth release that seals Clique (PoA) blocks.
DEFAULT_GETH_VERSION = "1.13.15"
#: Built by default: the default and the "other version" for upgrade/rollback tests.
GETH_VERSIONS = ("1.13.15", "1.13.14")

INSTALL_COMMAND = "python -m pytest_chainharness.tools install"
#: toxiproxy: the userspace TCP proxy behind latency faults where the kernel has no netem.
TOXIPROXY_VERSION = "2.12.0"
#: anvil (Foundry), the single-node development chain; npm package @foundry-rs/anvil.
ANVIL_VERSION = "1.7.1"
#: CometBFT with its built-in kvstore app: the first client that is not geth (a spec file).
COMETBFT_VERSION = "0.38.26"
#: solc, the Solidity compiler, as npm's solcjs (compiles offline; no native build here).
SOLC_VERSION = "0.8.37"
#: geth-pos: a current geth (proof of stake only) and the prysm release it runs beside.
POS_GETH_VERSION = "1.17.10"
#: The geth release before it, installed beside it: what a rolling upgrade of a geth-pos
#: network goes to and back from (``node.upgrade("1.17.9")``).
POS_GETH_PREVIOUS = "1.17.9"
PRYSM_VERSION = "7.0.0"
#: What a geth-pos node runs besides geth, and the genesis tool.
PRYSM_BINARIES = ("beacon-chain", "validator", "prysmctl")
_PRYSM_MODULE = "github.com/OffchainLabs/prysm/v7"


def tools_dir(root: Path | None = None) -> Path:
    """Where client binaries are installed and looked up."""
    env = os.environ.get("CHAINHARNESS_TOOLS")
    if env:
        return Path(env).expanduser().resolve()
    if root is not None and (root / ".tools").is_dir():
        return (root / ".tools").resolve()
    return Path.home() / ".cache" / "pytest-chainharness" / "tools"


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version))


def geth_versions_installed(root: Path | None = None) -> dict[str, Path]:
    """Installed geth versions → binary, newest first."""
    base = tools_dir(root) / "geth"
    found = {
        d.name: d / "geth"
        for d in base.glob("*")
        if (d / "geth").is_file() and os.access(d / "geth", os.X_OK)
    }
    return dict(sorted(found.items(), key=lambda kv: version_key(kv[0]), reverse=True))


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


def _anvil_platform() -> str:
    """The suffix of the npm package that carries anvil's native binary here."""
    system = {"linux": "linux", "darwin": "darwin", "win32": "win32"}.get(
        sys.platform, sys.platform
    )
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        machine, machine
    )
    return f"{system}-{arch}"


def anvil_native_path(prefix: Path) -> Path:
    """Where ``npm install --prefix PREFIX @foundry-rs/anvil`` puts the native binary.

    The package's ``bin`` is a node launcher, and its postinstall script (which npm 11 no
    longer runs unless approved) used to put the binary elsewhere. The platform package
    (an optional dependency, installed without any script) always carries it here, so
    the harness runs it directly: for the process backend and inside the image alike.
    """
    return prefix / "node_modules" / "@foundry-rs" / f"anvil-{_anvil_platform()}" / "bin" / "anvil"


def find_anvil(*, explicit: str | None = None, root: Path | None = None) -> Path:
    """Locate anvil's native binary: explicit path/``$CHAINHARNESS_ANVIL`` > tools folder
    > ``PATH``."""
    explicit = explicit or os.environ.get("CHAINHARNESS_ANVIL")
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path.resolve()
        raise ToolNotFound(f"anvil binary {explicit!r} does not exist or is not executable")
    prefix = tools_dir(root) / "anvil"
    native = anvil_native_path(prefix)
    if native.is_file() and os.access(native, os.X_OK):
        return native
    if prefix.exists():
        raise ToolNotFound(
            f"anvil's native binary is missing or not executable at {native} (a partial or "
            f"older install in {prefix}). Reinstall it with: {INSTALL_COMMAND} anvil"
        )
    on_path = shutil.which("anvil")
    if on_path:
        return Path(on_path)
    raise ToolNotFound(
        f"anvil was not found (looked at $CHAINHARNESS_ANVIL, {native} and PATH). "
        f"Install it with: {INSTALL_COMMAND} anvil   (npm package "
        f"@foundry-rs/anvil@{ANVIL_VERSION}; needs npm)"
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
    base = (dest or tools_dir()) / "geth"
    built = []
    for raw in versions:
        version = raw.lstrip("v")
        built.append(
            _go_install(
                f"github.com/ethereum/go-ethereum/cmd/geth@v{version}",
                base / version / "geth",
                what=f"geth {version}",
                ldflags=_go_ldflags() if shutil.which("go") else "",
                check=["version"],
                expect=f"Version: {version}",
            )
        )
    return built


def _go_install(
    package: str,
    binary: Path,
    *,
    what: str,
    ldflags: str,
    check: Sequence[str],
    expect: str,
) -> Path:
    """``go install package`` into ``binary``'s folder unless ``binary check`` already
    prints ``expect``; the built binary must print it too."""
    if _reports(binary, check, expect):
        print(f"{what}: already installed at {binary}")
        return binary
    if shutil.which("go") is None:
        raise ToolNotFound(f"building {what} needs Go (>= 1.21) on PATH")
    print(f"{what}: building into {binary.parent} (a few minutes the first time)", flush=True)
    binary.parent.mkdir(parents=True, exist_ok=True)
    _run_install(
        ["go", "install", "-trimpath", f"-ldflags={ldflags}", package],
        what=what,
        env={**os.environ, "GOBIN": str(binary.parent)},
    )
    if not _reports(binary, check, expect):
        raise ToolNotFound(f"built {binary} but `{binary.name} {' '.join(check)}` lacks {expect!r}")
    return binary


def find_toxiproxy(root: Path | None = None) -> Path:
    """The toxiproxy server binary: ``$CHAINHARNESS_TOXIPROXY``, the tools folder or PATH."""
    explicit = os.environ.get("CHAINHARNESS_TOXIPROXY")
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise ToolNotFound(f"toxiproxy binary {explicit!r} does not exist or is not executable")
    built = tools_dir(root) / "toxiproxy" / TOXIPROXY_VERSION / "server"
    if built.is_file() and os.access(built, os.X_OK):
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
    return _go_install(
        f"github.com/Shopify/toxiproxy/v2/cmd/server@v{TOXIPROXY_VERSION}",
        (dest or tools_dir()) / "toxiproxy" / TOXIPROXY_VERSION / "server",
        what=f"toxiproxy {TOXIPROXY_VERSION}",
        # `go install` leaves the version variable at its default ("git"): set it, so
        # the binary says what it is (checked here and by doctor).
        ldflags=f"-X github.com/Shopify/toxiproxy/v2.Version={TOXIPROXY_VERSION}",
        check=["-version"],
        expect=TOXIPROXY_VERSION,
    )


def install_cometbft(*, dest: Path | None = None) -> Path:
    """Build CometBFT into ``dest/cometbft/<version>/cometbft`` (the client spec
    ``clients/specs/cometbft.yaml`` finds it there)."""
    return _go_install(
        f"github.com/cometbft/cometbft/cmd/cometbft@v{COMETBFT_VERSION}",
        (dest or tools_dir()) / "cometbft" / COMETBFT_VERSION / "cometbft",
        what=f"cometbft {COMETBFT_VERSION}",
        ldflags="",
        check=["version"],
        expect=COMETBFT_VERSION,
    )


def wrapper_build(
    module: str,
    folder: Path,
    *,
    commands: Sequence[str],
    works: Callable[[Path], bool],
    go_mod: Callable[[Path], str],
    ldflags: str,
    what: str,
) -> list[Path]:
    """Build the ``cmd/<name>`` packages of ``module`` (``path@version``) for each name in
    ``commands`` into ``folder``, unless each binary there already ``works``.

    The build runs inside a small wrapper module that requires ``module``: ``go install
    pkg@version`` refuses a module whose go.mod has ``replace`` lines. ``go_mod(upstream)``
    gives the wrapper's go.mod from the module's own folder; the wrapper starts from the
    module's go.sum (without it, one checksum lookup fails on these machines).
    """
    binaries = [folder / name for name in commands]
    if all(works(b) for b in binaries):
        print(f"{what}: already installed in {folder}")
        return binaries
    if shutil.which("go") is None:
        raise ToolNotFound(f"building {what} needs Go on PATH")
    print(f"{what}: building into {folder} (a few minutes the first time)", flush=True)
    src = folder / "build"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    found = subprocess.run(
        ["go", "mod", "download", "-json", module],
        capture_output=True, text=True, cwd=src, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if found.returncode != 0:
        tail = (found.stdout + found.stderr).strip()[-2000:]
        raise ToolNotFound(f"installing {what} failed: `go mod download {module}`:\n{tail}")
    upstream = Path(json.loads(found.stdout)["Dir"])
    (src / "go.mod").write_text(go_mod(upstream))
    (src / "go.sum").write_bytes((upstream / "go.sum").read_bytes())
    packages = [f"{module.split('@')[0]}/cmd/{name}" for name in commands]
    imports = "".join(f'\t_ "{package}"\n' for package in packages)
    (src / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{imports})\n")
    env = {**os.environ, "GOFLAGS": "-mod=mod"}
    _run_install(["go", "mod", "tidy"], what=what, env=env, cwd=src)
    _run_install(
        ["go", "build", "-trimpath", f"-ldflags={ldflags}", "-o", str(folder) + "/", *packages],
        what=what, env=env, cwd=src,
    )  # fmt: skip
    shutil.rmtree(src, ignore_errors=True)
    broken = [b.name for b in binaries if not works(b)]
    if broken:
        raise ToolNotFound(f"built {what} into {folder} but {', '.join(broken)} does not run")
    return binaries


def install_prysm(*, dest: Path | None = None) -> list[Path]:
    """Build prysm's beacon node, validator client and prysmctl into
    ``dest/prysm/<version>/``, in a wrapper module that repeats prysm's ``replace``."""

    def go_mod(upstream: Path) -> str:
        replaces = [
            line.strip()
            for line in (upstream / "go.mod").read_text().splitlines()
            if line.startswith("replace ")
        ]
        return (
            "module chainharness.local/prysm-build\n\ngo 1.25\n\n"
            f"require {_PRYSM_MODULE} v{PRYSM_VERSION}\n\n" + "\n".join(replaces) + "\n"
        )

    # Without these the binaries call themselves "Prysm/Unknown/Local build".
    stamp = f"{_PRYSM_MODULE}/runtime/version"
    return wrapper_build(
        f"{_PRYSM_MODULE}@v{PRYSM_VERSION}",
        (dest or tools_dir()) / "prysm" / PRYSM_VERSION,
        commands=PRYSM_BINARIES,
        works=_prysm_reports,
        go_mod=go_mod,
        ldflags=f"-X {stamp}.gitTag=v{PRYSM_VERSION} -X {stamp}.gitCommit=v{PRYSM_VERSION}",
        what=f"prysm {PRYSM_VERSION}",
    )


def _prysm_reports(binary: Path) -> bool:
    if binary.name == "prysmctl":  # it has no --version; its help names it
        return _reports(binary, ["--help"], "prysmctl")
    return _reports(binary, ["--version"], f"Prysm/v{PRYSM_VERSION}")


def find_prysm(name: str, root: Path | None = None) -> Path:
    """One of prysm's binaries (``PRYSM_BINARIES``) from the tools folder."""
    built = tools_dir(root) / "prysm" / PRYSM_VERSION / name
    if built.is_file() and os.access(built, os.X_OK):
        return built
    raise ToolNotFound(
        f"prysm {PRYSM_VERSION}'s {name} was not found at {built}. Install geth-pos with: "
        f"{INSTALL_COMMAND} geth-pos   (builds geth {POS_GETH_VERSION} and "
        f"{POS_GETH_PREVIOUS}, and prysm {PRYSM_VERSION}, from the Go module proxy; needs Go)"
    )


def install_geth_pos(*, dest: Path | None = None) -> list[Path]:
    """Everything ``--chain-client=geth-pos`` runs: geth ``POS_GETH_VERSION`` (and
    ``POS_GETH_PREVIOUS``, for upgrades) and prysm."""
    geths = install_geth([POS_GETH_VERSION, POS_GETH_PREVIOUS], dest=dest)
    return geths + install_prysm(dest=dest)


def find_cometbft(root: Path | None = None) -> Path:
    built = tools_dir(root) / "cometbft" / COMETBFT_VERSION / "cometbft"
    if built.is_file() and os.access(built, os.X_OK):
        return built
    raise ToolNotFound(
        f"cometbft {COMETBFT_VERSION} was not found. Install it with: {INSTALL_COMMAND} "
        "cometbft   (builds it from the Go module proxy; needs Go)"
    )


def install_anvil(*, dest: Path | None = None, version: str = ANVIL_VERSION) -> Path:
    """Install anvil ``version`` from npm into ``dest/anvil``; return its native binary.

    No package script runs (``--ignore-scripts``): npm 11 refuses unapproved ones, and
    the binary needs none (see ``anvil_native_path``).
    """
    prefix = (dest or tools_dir()) / "anvil"
    binary = anvil_native_path(prefix)
    if _reports(binary, ["--version"], version):
        print(f"anvil {version}: already installed at {binary}")
        return binary
    if shutil.which("npm") is None:
        raise ToolNotFound("installing anvil needs npm on PATH")
    prefix.mkdir(parents=True, exist_ok=True)
    print(f"anvil {version}: installing @foundry-rs/anvil@{version} into {prefix}", flush=True)
    _run_install(
        [
            "npm",
            "install",
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--prefix",
            str(prefix),
            f"@foundry-rs/anvil@{version}",
        ],
        what=f"anvil {version}",
    )
    if not _reports(binary, ["--version"], version):
        raise ToolNotFound(
            f"npm installed @foundry-rs/anvil@{version} but {binary} is missing or does not "
            f"report version {version} (is @foundry-rs/anvil-{_anvil_platform()} published "
            "for this platform?)"
        )
    return binary


def _solc_script(root: Path | None = None) -> Path:
    return tools_dir(root) / "solc" / SOLC_VERSION / "node_modules" / "solc" / "solc.js"


def find_solc(root: Path | None = None) -> list[str]:
    """The argv that runs the pinned solcjs (``node …/solc.js``)."""
    script = _solc_script(root)
    node = shutil.which("node")
    if script.is_file() and node is not None:
        return [node, str(script)]
    why = "node is not on PATH" if script.is_file() else f"solc {SOLC_VERSION} was not found"
    raise ToolNotFound(
        f"{why}. Install it with: {INSTALL_COMMAND} solc   (npm package solc@{SOLC_VERSION}; "
        "needs npm and node)"
    )


def _solc_node(root: Path | None = None) -> Path:
    return Path(find_solc(root)[0])  # doctor runs node with the script as its argument


def install_solc(*, dest: Path | None = None) -> list[str]:
    """Install solcjs ``SOLC_VERSION`` from npm into ``dest/solc/<version>``."""
    prefix = (dest or tools_dir()) / "solc" / SOLC_VERSION
    script = prefix / "node_modules" / "solc" / "solc.js"
    node = shutil.which("node")
    if node is None:
        raise ToolNotFound("solc (solcjs) needs node on PATH")
    if _reports(Path(node), [str(script), "--version"], f"{SOLC_VERSION}+commit"):
        print(f"solc {SOLC_VERSION}: already installed at {script}")
        return [node, str(script)]
    if shutil.which("npm") is None:
        raise ToolNotFound("installing solc needs npm on PATH")
    prefix.mkdir(parents=True, exist_ok=True)
    print(f"solc {SOLC_VERSION}: installing solc@{SOLC_VERSION} into {prefix}", flush=True)
    _run_install(
        ["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", "--prefix",
         str(prefix), f"solc@{SOLC_VERSION}"],
        what=f"solc {SOLC_VERSION}",
    )  # fmt: skip
    if not _reports(Path(node), [str(script), "--version"], f"{SOLC_VERSION}+commit"):
        raise ToolNotFound(f"npm installed solc@{SOLC_VERSION} but {script} does not run")
    return [node, str(script)]


# -- doctor ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One installed tool, run to prove it works."""

    name: str
    #: Finds the binary; raises ToolNotFound (whose message has the install command).
    find: Callable[[], Path]
    #: Arguments that make it print its version.
    argv: tuple[str, ...]
    #: Text the output must contain.
    expect: str
    install: str


def _checks(root: Path | None) -> list[Check]:
    checks = [
        Check(
            f"geth {version}",
            functools.partial(find_geth, version=version, root=root),
            ("version",),
            f"Version: {version}",
            f"{INSTALL_COMMAND} geth --geth-version {version}",
        )
        for version in GETH_VERSIONS
    ]
    checks.append(
        Check(
            "anvil",
            functools.partial(find_anvil, root=root),
            ("--version",),
            f"Version: {ANVIL_VERSION}",
            f"{INSTALL_COMMAND} anvil",
        )
    )
    checks.append(
        Check(
            "toxiproxy",
            functools.partial(find_toxiproxy, root=root),
            ("-version",),
            TOXIPROXY_VERSION,
            f"{INSTALL_COMMAND} toxiproxy",
        )
    )
    checks.append(
        Check(
            "cometbft",
            functools.partial(find_cometbft, root=root),
            ("version",),
            COMETBFT_VERSION,
            f"{INSTALL_COMMAND} cometbft",
        )
    )
    checks.append(
        Check(
            "solc",
            functools.partial(_solc_node, root=root),
            (str(_solc_script(root)), "--version"),
            f"{SOLC_VERSION}+commit",
            f"{INSTALL_COMMAND} solc",
        )
    )
    checks += [
        Check(
            f"geth-pos geth {version}",
            functools.partial(find_geth, version=version, root=root),
            ("version",),
            f"Version: {version}",
            f"{INSTALL_COMMAND} geth-pos",
        )
        for version in (POS_GETH_VERSION, POS_GETH_PREVIOUS)
    ]
    checks += [
        Check(
            f"geth-pos {name}",
            functools.partial(find_prysm, name, root),
            ("--help",) if name == "prysmctl" else ("--version",),
            "prysmctl" if name == "prysmctl" else f"Prysm/v{PRYSM_VERSION}",
            f"{INSTALL_COMMAND} geth-pos",
        )
        for name in PRYSM_BINARIES
    ]
    from .k8s import KUBE_BINARIES, KUBERNETES_VERSION, find_kube

    checks += [
        Check(
            f"kubernetes {name}",
            functools.partial(find_kube, name, root),
            ("--version",),
            f"Kubernetes v{KUBERNETES_VERSION}",
            f"{INSTALL_COMMAND} kubernetes",
        )
        for name in KUBE_BINARIES
    ]
    checks.append(
        Check(
            "mosquitto",
            find_mosquitto,
            ("-h",),
            "mosquitto version",
            "apt-get install mosquitto",
        )
    )
    return checks


#: What ``doctor`` checks by default: everything scripts/setup.sh installs.
DOCTOR_TOOLS = (
    "geth",
    "anvil",
    "toxiproxy",
    "cometbft",
    "geth-pos",
    "solc",
    "kubernetes",
    "mosquitto",
)


def doctor(
    names: Sequence[str] = DOCTOR_TOOLS,
    *,
    root: Path | None = None,
    say: Callable[[str], None] = print,
    timeout: float = 20.0,
) -> bool:
    """Run every installed tool of ``names``; one line each. True when all work."""
    healthy = True
    for check in _checks(root):
        if check.name.split()[0] not in names:
            continue
        problem, path, first = _diagnose(check, timeout)
        if problem is None:
            say(f"ok    {check.name:16} {first}  ({path})")
        else:
            healthy = False
            say(f"FAIL  {check.name:16} {problem}. Fix: {check.install}")
    return healthy


def _diagnose(check: Check, timeout: float) -> tuple[str | None, Path | None, str]:
    try:
        path = check.find()
    except ToolNotFound as exc:
        return str(exc).split(". ")[0], None, ""
    try:
        text = _output(path, check.argv, timeout)
    except ToolNotFound as exc:
        return str(exc), path, ""
    first = next((line.strip() for line in text.splitlines() if check.expect in line), "")
    if not first:
        tail = " | ".join(text.strip().splitlines()[-3:]) or "no output"
        command = " ".join([str(path), *check.argv])
        return f"`{command}` does not report {check.expect!r} ({tail})", path, ""
    return None, path, first


def find_mosquitto() -> Path:
    """The mosquitto broker binary (Debian puts it in /usr/sbin, often not on PATH)."""
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)),
        None,
    )
    if found is None:
        raise ToolNotFound(
            "mosquitto (the bus's broker on the process backend) was not found on PATH or in "
            "/usr/sbin. Install it with: apt-get install mosquitto"
        )
    return Path(found)


def _output(binary: Path, argv: Sequence[str], timeout: float) -> str:
    """What ``binary argv`` prints (stdout and stderr); a binary that cannot run or does
    not finish within ``timeout`` seconds is a ToolNotFound naming the command."""
    command = " ".join([str(binary), *argv])
    try:
        out = run_bounded([str(binary), *argv], text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ToolNotFound(f"`{command}` did not finish within {timeout:g}s") from None
    except OSError as exc:
        raise ToolNotFound(f"`{command}` cannot run: {exc.strerror or exc}") from None
    return str(out.stdout) + str(out.stderr)


def _reports(binary: Path, argv: Sequence[str], text: str, timeout: float = 30.0) -> bool:
    try:
        return text in _output(binary, argv, timeout)
    except ToolNotFound:
        return False


def _run_install(
    argv: Sequence[str],
    *,
    what: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> None:
    """Run a build or install step; a failure is a ToolNotFound with the output's tail."""
    result = subprocess.run(
        list(argv), env=env, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
        raise ToolNotFound(
            f"installing {what} failed (`{' '.join(argv)}` exited {result.returncode}):\n{tail}"
        )


def binary_version(
    binary: Path, argv: Sequence[str], pattern: str, *, timeout: float = 10.0
) -> str:
    """Run ``binary argv`` and return the first group of ``pattern`` in its output
    (``"unknown"`` when absent). A binary that cannot run, or does not finish within
    ``timeout`` seconds, is a ToolNotFound naming the command."""
    match = re.search(pattern, _output(binary, argv, timeout), re.MULTILINE)
    return match.group(1) if match else "unknown"
