"""``chainharness``: run a network outside pytest (for locust, debugging, a long session).

    chainharness up [--chain-nodes=4 --chain-backend=auto ...] [--state FILE]
    chainharness status [--state FILE]
    chainharness logs NODE [--tail N] [--state FILE]
    chainharness down [--state FILE]
    chainharness images build|list
    chainharness load [--users 10 --run-time 30s --profile transfer --slo ...] [--state FILE]
    chainharness gate verify REPORT [--artifact NAME=PATH|IMAGE ...]

``up`` takes the plugin's chain options, starts the network, writes the state file
(default ``.chainharness/state.json``) and prints the endpoints; ``pytest
--chain-attach=FILE`` then uses that network. ``down`` removes exactly what ``up`` made
and is a no-op when it is already gone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ._errors import ChainHarnessError
from ._files import write_private
from ._options import DEFAULT_ACCOUNTS, DEFAULT_MAX_NODES, DEFAULT_NODES, Settings
from ._session import events_dir, read_state, runs_root, start_network, sweep_run
from ._testnet import random_seed
from .chain import Chain
from .clients import available_clients, get_client
from .clients.spec import find_spec_binary, is_spec_path, load_spec
from .providers import BACKENDS, attach_provider, backend_refused, default_image, runs_images

__all__ = ["main"]

DEFAULT_STATE = Path(".chainharness/state.json")


def _bounded(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number {low}..{high}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range, allowed {low}..{high}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chainharness", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    state_help = f"state file (default {DEFAULT_STATE})"

    up = sub.add_parser("up", help="start a network and write its state file")
    up.add_argument("--chain-nodes", type=_bounded(1, DEFAULT_MAX_NODES), default=DEFAULT_NODES)
    up.add_argument(
        "--chain-client",
        default="geth",
        help=f"{', '.join(sorted(available_clients()))}, or the path of a client spec file",
    )
    up.add_argument("--chain-backend", choices=BACKENDS, default="auto")
    up.add_argument("--chain-period", type=_bounded(1, 3600), default=1)
    up.add_argument("--chain-seed", type=_bounded(0, 2**63 - 1), default=None)
    up.add_argument(
        "--chain-image", default=None, help="node image for the docker and kubernetes backends"
    )
    up.add_argument(
        "--chain-kubeconfig",
        type=Path,
        default=None,
        help="the kubernetes backend's kubeconfig (default: $KUBECONFIG, else ~/.kube/config)",
    )
    up.add_argument("--chain-namespace", default=None, help="the kubernetes backend's namespace")
    up.add_argument(
        "--chain-binary",
        "--chain-geth",
        dest="chain_binary",
        default=None,
        help="the client binary for the process backend",
    )
    up.add_argument("--chain-services", type=Path, default=None, help="services YAML file")
    up.add_argument("--chain-accounts", type=_bounded(1, 100_000), default=DEFAULT_ACCOUNTS)
    up.add_argument("--start-timeout", type=float, default=60.0)
    up.add_argument("--state", type=Path, default=DEFAULT_STATE, help=state_help)

    for name, text in (
        ("down", "stop the network and remove everything up made"),
        ("status", "show every node's height, head, peers and state"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--state", type=Path, default=DEFAULT_STATE, help=state_help)

    logs = sub.add_parser("logs", help="print a node's log")
    logs.add_argument("node", help="node name (node0) or index")
    logs.add_argument("--tail", type=int, default=200)
    logs.add_argument("--state", type=Path, default=DEFAULT_STATE, help=state_help)

    images = sub.add_parser("images", help="build or list the local images (no registry)")
    images.add_argument("images_args", nargs=argparse.REMAINDER)

    load = sub.add_parser("load", help="run a headless locust load test against the network")
    load.add_argument("--state", type=Path, default=DEFAULT_STATE, help=state_help)
    load.add_argument("--users", "-u", type=int, default=10)
    load.add_argument("--spawn-rate", "-r", type=float, default=None)
    load.add_argument("--run-time", "-t", default="30s", help="e.g. 20s, 2m, 1m30s")
    load.add_argument("--profile", default="transfer", help="transfer, read or mixed")
    load.add_argument("--processes", type=int, default=1, help="locust worker processes")
    load.add_argument("--max-requests", type=int, default=2_000_000)
    load.add_argument(
        "--tx-rate", type=float, default=None, help="target transfers per second (all users)"
    )
    load.add_argument(
        "--slo", action="append", default=[], help="e.g. 'p95(eth_sendRawTransaction) <= 250ms'"
    )
    load.add_argument("--json", action="store_true", help="print the result as JSON too")

    gate = sub.add_parser("gate", help="check a gate verdict before a deploy")
    gate_sub = gate.add_subparsers(dest="gate_command", required=True)
    verify = gate_sub.add_parser(
        "verify",
        help="exit 0 only if REPORT promotes, is unedited and tested these artifacts",
    )
    verify.add_argument("report", type=Path)
    verify.add_argument(
        "--artifact",
        action="append",
        default=[],
        metavar="NAME=PATH|IMAGE",
        help="the artifact about to be deployed; must be the one that was tested",
    )
    verify.add_argument("--target", default=None, help="require a promote to this stage or later")
    verify.add_argument(
        "--key-env",
        default="CHAINHARNESS_GATE_KEY",
        help="environment variable with the HMAC key; when set, the report must carry a "
        "valid signature",
    )
    verify.add_argument(
        "--require-signature",
        action="store_true",
        help="fail unless the signature is checked (a key is set and the report is signed)",
    )
    return parser


def _load(args: argparse.Namespace) -> int:
    from ._load import LoadSpec, check_slos, parse_slo, run_load

    try:
        spec = LoadSpec.make(
            users=args.users,
            spawn_rate=args.spawn_rate,
            run_time=args.run_time,
            profile=args.profile,
            processes=args.processes,
            max_requests=args.max_requests,
            tx_rate=args.tx_rate,
        )
        slos = [parse_slo(text) for text in args.slo]
    except ValueError as exc:
        print(f"chainharness load: {exc}", file=sys.stderr)
        return 2
    state: Path = args.state.resolve()
    try:
        record = read_state(state)
        chain = _chain(state)
    except ChainHarnessError as exc:
        print(f"chainharness load: {exc}", file=sys.stderr)
        return 1
    from ._accounts import claim_attached

    accounts = (
        claim_attached(state, chain.testnet, spec.accounts_needed) if spec.accounts_needed else []
    )
    events = events_dir(record)
    print(
        f"chainharness load: {spec.users} users ({spec.profile}), {spec.run_time:g}s, "
        f"{spec.processes} process(es) against {len(chain.nodes)} nodes",
        flush=True,
    )
    result = run_load(
        spec, state=state, accounts=accounts, events_dir=events, period=chain.testnet.period
    )
    print(result)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    broken = check_slos(result, slos)
    for line in broken:
        print(f"SLO not met: {line}")
    return 1 if broken else 0


def _gate_verify(args: argparse.Namespace) -> int:
    from .gate import GateError, key_from_env, parse_artifact, verify

    try:
        artifacts = [parse_artifact(text) for text in args.artifact]
        content = verify(
            args.report,
            artifacts=artifacts,
            key=key_from_env(args.key_env),
            require_signature=args.require_signature,
            target=args.target,
        )
    except GateError as exc:
        print(f"chainharness gate verify: REJECTED: {exc}", file=sys.stderr)
        return 1
    key_set = key_from_env(args.key_env) is not None
    if key_set:
        signed = "signature checked"
    elif "signature" in content:
        signed = f"signature NOT checked: no key in ${args.key_env}, anyone could have written it"
    else:
        signed = f"unsigned; NOT checked: no key in ${args.key_env}"
    print(
        f"chainharness gate verify: OK: promote to {content['target']} "
        f"({content['created']}, {signed}, {len(artifacts)} artifact(s) match)"
    )
    return 0


def _up(args: argparse.Namespace) -> int:
    state: Path = args.state.resolve()
    if state.exists():
        try:
            read_state(state)
        except ChainHarnessError:
            pass  # a stale or broken file: replaced below
        else:
            print(f"chainharness: {state} already describes a network; run 'down' first")
            return 1
    client = str(args.chain_client)
    backend = args.chain_backend
    if is_spec_path(client):
        client = str(Path(client).resolve())
    try:
        adapter = get_client(client, root=Path.cwd())
        if is_spec_path(client):
            spec = load_spec(Path(client), root=Path.cwd(), check_binary=False)
            if not (spec.image and runs_images(backend)):  # else the image carries it
                find_spec_binary(spec, root=Path.cwd())
    except (ValueError, ChainHarnessError) as exc:
        print(f"chainharness: --chain-client={args.chain_client}: {exc}")
        return 2
    refused = backend_refused(backend, adapter.display_name, adapter.backends)
    if refused is not None:
        print(f"chainharness: --chain-backend={backend}: {refused}")
        return 2
    if args.chain_nodes > adapter.max_nodes:
        plural = "s" if adapter.max_nodes > 1 else ""
        print(
            f"chainharness: the {adapter.display_name} client runs at most "
            f"{adapter.max_nodes} node{plural}"
        )
        return 2
    services = args.chain_services.resolve() if args.chain_services else None
    if services is not None and not services.is_file():
        print(f"chainharness: --chain-services={args.chain_services}: no such file")
        return 2
    kubeconfig = args.chain_kubeconfig.resolve() if args.chain_kubeconfig else None
    if kubeconfig is not None and not kubeconfig.is_file():
        print(f"chainharness: --chain-kubeconfig={args.chain_kubeconfig}: no such file")
        return 2
    settings = Settings(
        nodes=args.chain_nodes,
        max_nodes=DEFAULT_MAX_NODES,
        client=client,
        backend=backend,
        period=args.chain_period,
        seed=args.chain_seed,
        keep=True,
        binary=args.chain_binary,
        accounts=args.chain_accounts,
        signers=None,
        start_timeout=args.start_timeout,
        chain_id=1337,
        image=args.chain_image or default_image(client, Path.cwd()),
        services=services,
        kubeconfig=kubeconfig,
        namespace=args.chain_namespace,
    )
    run_id = f"ch-{secrets.token_hex(4)}"
    run_dir = runs_root() / run_id
    run_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    run_dir.mkdir(mode=0o700)
    seed = settings.seed if settings.seed is not None else random_seed()
    try:
        with _interrupted_by_signals():
            record = start_network(
                settings, run_id=run_id, run_dir=run_dir, seed=seed, root=Path.cwd(), owner=None
            )
    except ChainHarnessError as exc:
        print(f"chainharness: {type(exc).__name__}: {exc}")
        return 1
    except KeyboardInterrupt:
        print("chainharness: interrupted while starting; everything started is removed")
        return 130
    record["seed"] = seed
    state.parent.mkdir(parents=True, exist_ok=True)
    write_private(state, json.dumps(record, indent=1))
    print(
        f"chainharness: {settings.nodes} node(s) up on {record['backend']} "
        f"({record.get('client_version', '?')}), seed {seed}"
    )
    for node in record["provider"]["testnet"]["nodes"]:
        print(f"  {node['name']}: http://{node['host']}:{node['ports']['rpc']}")
    for name, ports in record.get("services", {}).get("published", {}).items():
        for inside, outside in ports.items():
            print(f"  service {name}: {inside} -> 127.0.0.1:{outside}")
    print(f"  state: {state}")
    print(f"  use it: pytest --chain-attach={state}")
    print(f"  stop it: chainharness down --state {state}")
    return 0


@contextlib.contextmanager
def _interrupted_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP (a CI timeout, a closed terminal) interrupt like Ctrl-C while
    a network starts: a kept network has no watchdog until its state file exists, so
    the start's own clean-up is all that stands between a killed ``up`` and leaked
    nodes."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _chain(state: Path) -> Chain:
    record = read_state(state)
    adapter = get_client(record["provider"]["testnet"]["client"], root=Path.cwd())
    provider = attach_provider(record["provider"], adapter)
    return Chain(provider.testnet, provider, adapter)


def _down(args: argparse.Namespace) -> int:
    state: Path = args.state.resolve()
    if not state.exists():
        print(f"chainharness: nothing to stop ({state} does not exist)")
        return 0
    try:
        record = read_state(state)
    except ChainHarnessError as exc:
        print(f"chainharness: {exc}")
        return 1
    provider = record["provider"]
    adapter = get_client(provider["testnet"]["client"], root=Path.cwd())
    attach_provider(provider, adapter).teardown()
    # Also whatever a half-finished start or a crashed node left under the run's label.
    sweep_run(provider["run_id"], Path(provider["run_dir"]), adapter)
    state.unlink(missing_ok=True)
    for extra in (
        state.with_name(state.name + ".accounts"),
        state.with_name(state.name + ".accounts.lock"),
    ):
        extra.unlink(missing_ok=True)
    print(
        f"chainharness: run {provider['run_id']} removed; logs kept in {provider['run_dir']}/logs"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "images":
        from .images import main as images_main

        return images_main(args.images_args)
    if args.command == "gate":
        return _gate_verify(args)
    if args.command == "load":
        return _load(args)
    if args.command == "up":
        return _up(args)
    if args.command == "down":
        return _down(args)
    try:
        chain = _chain(args.state.resolve())
    except ChainHarnessError as exc:
        print(f"chainharness: {exc}")
        return 1
    if args.command == "status":
        print(chain.status_table())
        return 0
    try:
        node = chain.node(int(args.node) if args.node.isdigit() else args.node)
    except (IndexError, KeyError) as exc:
        print(f"chainharness: {exc}")
        return 2
    print(node.logs(args.tail))
    return 0


if __name__ == "__main__":
    sys.exit(main())
