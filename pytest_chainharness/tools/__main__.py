"""``python -m pytest_chainharness.tools``: install, locate and check the binaries."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .._errors import ToolNotFound
from . import (
    ANVIL_VERSION,
    DOCTOR_TOOLS,
    GETH_VERSIONS,
    TOXIPROXY_VERSION,
    doctor,
    find_anvil,
    find_toxiproxy,
    geth_versions_installed,
    install_anvil,
    install_cometbft,
    install_geth,
    install_geth_pos,
    install_solc,
    install_toxiproxy,
    tools_dir,
)

INSTALLABLE = ("geth", "anvil", "toxiproxy", "cometbft", "solc", "geth-pos", "kubernetes")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_chainharness.tools",
        description="Install, locate or check the binaries pytest-chainharness runs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="build/install pinned tools into the tools folder")
    inst.add_argument("what", nargs="+", choices=INSTALLABLE)
    inst.add_argument("--dest", type=Path, help="tools folder (default: see module docs)")
    inst.add_argument(
        "--geth-version",
        action="append",
        dest="geth_versions",
        help=f"geth version to build; repeatable (default: {', '.join(GETH_VERSIONS)})",
    )
    inst.add_argument("--anvil-version", default=ANVIL_VERSION, help=f"default: {ANVIL_VERSION}")
    check = sub.add_parser(
        "doctor", help="run every installed tool and say, one line each, which are broken"
    )
    # No argparse choices: with nargs="*" Python 3.11 rejects the empty default.
    check.add_argument(
        "what", nargs="*", help=f"tools to check (default: {' '.join(DOCTOR_TOOLS)})"
    )
    where = sub.add_parser("where", help="print the tools folder and what is installed")
    where.add_argument("--check", action="store_true", help="also run doctor")
    args = parser.parse_args(argv)
    root = Path.cwd()
    try:
        if args.command == "install":
            dest = args.dest.resolve() if args.dest else None
            if "geth" in args.what:
                install_geth(args.geth_versions or GETH_VERSIONS, dest=dest)
            if "anvil" in args.what:
                install_anvil(dest=dest, version=args.anvil_version)
            if "toxiproxy" in args.what:
                install_toxiproxy(dest=dest)
            if "cometbft" in args.what:
                install_cometbft(dest=dest)
            if "solc" in args.what:
                install_solc(dest=dest)
            if "geth-pos" in args.what:
                install_geth_pos(dest=dest)
            if "kubernetes" in args.what:
                from .k8s import install_kubernetes

                install_kubernetes(dest=dest)
            return 0
        if args.command == "doctor":
            unknown = sorted(set(args.what) - set(DOCTOR_TOOLS))
            if unknown:
                parser.error(
                    f"doctor: unknown tool(s) {', '.join(unknown)}; "
                    f"known: {', '.join(DOCTOR_TOOLS)}"
                )
            return 0 if doctor(args.what or DOCTOR_TOOLS, root=root) else 1
        print(f"tools folder: {tools_dir(root)}")
        for version, path in geth_versions_installed(root).items():
            print(f"geth {version}: {path}")
        for name, find in (("anvil", find_anvil), ("toxiproxy", find_toxiproxy)):
            try:
                print(f"{name}: {find(root=root)}")
            except ToolNotFound:
                pinned = ANVIL_VERSION if name == "anvil" else TOXIPROXY_VERSION
                print(f"{name}: not installed (pinned: {pinned})")
        if args.check:
            return 0 if doctor(DOCTOR_TOOLS, root=root) else 1
    except ToolNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
