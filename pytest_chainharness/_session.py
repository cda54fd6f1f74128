"""One network per pytest run, started on first use and shared by every xdist worker.

The process that owns the run (plain pytest, or the xdist controller) creates a shared run
directory and passes it to workers through ``workerinput``. The first process that needs
the chain starts it under a file lock and writes ``network.json``; the others attach.
Only the owner tears down, at the very end, after every worker has finished; a watchdog
process removes everything if the owner is killed before it can.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from filelock import FileLock

from ._accounts import ATTACHED_FIXED_SLOTS, FIXED_ACCOUNTS, claim, claim_attached
from ._errors import ChainHarnessError, NetworkStartError, ToolNotFound, UnsupportedAction
from ._files import STATE_FILES, redact_file, write_private
from ._options import Settings
from ._proc import (
    RUN_MARKER,
    alive,
    become_subreaper,
    every_step,
    find_marked,
    hand_over,
    kill_pids,
)
from ._rpc import RPCError
from ._start import launch
from ._testnet import Testnet, build_testnet, random_seed
from ._watchdog import script_path
from .chain import Chain
from .clients import get_client
from .clients.base import ClientAdapter
from .providers import attach_provider, resolve_backend
from .providers.base import NodeState, Provider, admin_dir
from .providers.process import ProcessProvider
from .providers.registry import Backend, NewRun, backend_names, get_backend

__all__ = ["ChainSession", "RunInfo", "runs_root"]

#: Finished runs whose logs are kept under the runs folder.
KEEP_RUNS = 5


#: Where each pytest process keeps its ``ChainSession`` (plugin hooks, scenario items).
SESSION_KEY = pytest.StashKey["ChainSession"]()


#: Every repair of the run, one JSON line each, from any of its processes.
REPAIR_LOG = "repairs.jsonl"


def log_repair(run_dir: Path, what: str) -> None:
    # Appends of one short line are atomic, so every process of the run (and the start)
    # writes here, and the owner counts them for the verdict.
    with (run_dir / REPAIR_LOG).open("a") as log:
        log.write(json.dumps({"ts": time.time(), "pid": os.getpid(), "what": what}) + "\n")


def runs_root() -> Path:
    """``$CHAINHARNESS_RUNS``, else a folder per user in the temp folder (one shared by
    all users would be writable by all of them, or by its first user only)."""
    default = Path(tempfile.gettempdir()) / f"chainharness-{os.getuid()}"
    return Path(os.environ.get("CHAINHARNESS_RUNS", default))


@dataclass(frozen=True)
class RunInfo:
    """What every process of one pytest run agrees on (sent to xdist workers)."""

    run_id: str
    run_dir: Path
    seed: int
    owner_pid: int
    worker_index: int = 0
    worker_count: int = 1

    @classmethod
    def new(cls, settings: Settings) -> RunInfo:
        run_id = f"ch-{secrets.token_hex(4)}"
        root = runs_root()
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        _prune(root)
        run_dir = root / run_id
        run_dir.mkdir(mode=0o700)
        seed = settings.seed if settings.seed is not None else random_seed()
        return cls(run_id=run_id, run_dir=run_dir, seed=seed, owner_pid=os.getpid())

    def to_workerinput(self) -> dict[str, Any]:
        return {
            "chainharness_run_id": self.run_id,
            "chainharness_run_dir": str(self.run_dir),
            "chainharness_seed": self.seed,
            "chainharness_owner_pid": self.owner_pid,
        }

    @classmethod
    def from_workerinput(cls, data: dict[str, Any]) -> RunInfo:
        worker = str(data.get("workerid", "gw0"))
        return cls(
            run_id=data["chainharness_run_id"],
            run_dir=Path(data["chainharness_run_dir"]),
            seed=int(data["chainharness_seed"]),
            owner_pid=int(data["chainharness_owner_pid"]),
            worker_index=int(worker.lstrip("gw") or 0),
            worker_count=int(data.get("workercount", 1)),
        )


def _prune(root: Path) -> None:
    """Drop the logs of old runs, keeping the newest ``KEEP_RUNS``."""
    runs = sorted(
        (p for p in root.glob("ch-*") if p.is_dir() and not (p / "nodes").exists()),
        key=lambda p: p.stat().st_mtime,
    )
    for old in runs[:-KEEP_RUNS]:
        shutil.rmtree(old, ignore_errors=True)


class NetworkLock:
    """Shared for tests that use the network, exclusive for disruptive ones: under xdist a
    disruptive test never runs while another worker uses the same network.

    A readers-writer lock over ``flock`` (filelock has no shared mode). A writer first
    takes the turnstile, so a steady stream of readers cannot starve it.
    """

    def __init__(self, directory: Path) -> None:
        self._main = directory / "network.rw"
        self._turnstile = directory / "network.turnstile"
        self._fd: int | None = None

    def acquire(self, *, exclusive: bool, timeout: float = 1800.0) -> None:
        import fcntl

        if self._fd is not None:
            return
        deadline = time.monotonic() + timeout
        gate = os.open(self._turnstile, os.O_RDWR | os.O_CREAT, 0o600)
        fd = os.open(self._main, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self._flock(gate, fcntl.LOCK_EX, deadline)
            try:
                if not exclusive:
                    fcntl.flock(gate, fcntl.LOCK_UN)
                self._flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, deadline)
            finally:
                os.close(gate)  # closing releases the turnstile
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    @staticmethod
    def _flock(fd: int, mode: int, deadline: float) -> None:
        import fcntl

        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ChainHarnessError(
                        "waited too long for the network: another worker's test holds it"
                    ) from None
                time.sleep(0.02)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ChainSession:
    """The chain of one pytest process: lazily started or attached, then torn down."""

    def __init__(self, settings: Settings, run: RunInfo, *, owner: bool, root: Path) -> None:
        self.settings = settings
        self.run = run
        self.owner = owner
        self.root = root
        self._chain: Chain | None = None
        self._provider: Provider | None = None
        self.services: Any = None
        self.bus: Any = None
        self.bus_error = "the chain has not been started"
        #: Set at session finish (owner): a test failed or the run was interrupted.
        self.any_failed = False
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._network_file = run.run_dir / "network.json"
        self._lock = FileLock(str(run.run_dir / "network.lock"))
        lock_dir = settings.attach.parent if settings.attach is not None else run.run_dir
        self.network_lock = NetworkLock(lock_dir)
        if owner:
            # Nodes started by xdist workers are re-parented to us when the worker exits;
            # becoming a subreaper lets teardown reap them (see _proc.become_subreaper).
            become_subreaper()

    # -- the chain -------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._chain is not None

    @property
    def current_chain(self) -> Chain | None:
        """The chain if this process has it already (never starts one)."""
        return self._chain

    def adapter(self) -> ClientAdapter:
        adapter = get_client(self.settings.client, root=self.root)
        return adapter

    def chain(self) -> Chain:
        """The run's chain: started by the first caller in any process, attached by the rest."""
        if self._chain is not None:
            return self._chain
        record: dict[str, Any] | None
        if self.settings.attach is not None:
            record = read_state(self.settings.attach)
        else:
            with self._lock:
                record = self._read()
                if record is None:
                    record = self._start()
                elif record["status"] == "failed":
                    raise NetworkStartError(
                        "the network of this run failed to start in another worker:\n"
                        f"{record['error']}"
                    )
        # The process that launched the nodes keeps its provider: it holds their Popen handles.
        provider = self._provider or attach_provider(record["provider"], self.adapter())
        self._provider = provider
        if record.get("services"):
            from .services import Services

            self.services = Services.from_dict(record["services"])
        chain = Chain(
            provider.testnet,
            provider,
            self.adapter(),
            accounts=self._fixed_accounts(record),
            repair=self.settings.repair,
        )
        chain.repair_listeners.append(self._log_repair)
        chain.account_source = self.funded_account
        if self.settings.attach is not None:
            _check_alive(chain, self.settings.attach)
        self._connect_bus(record, chain)
        self._chain = chain
        return chain

    def _connect_bus(self, record: dict[str, Any], chain: Chain) -> None:
        bus_record = record.get("bus") or {}
        if "endpoint" not in bus_record:
            self.bus_error = bus_record.get("error", "this network was started without a bus")
            return
        from ._broker import BrokerEndpoint
        from .bus import SyncBus

        bus = SyncBus(
            BrokerEndpoint.from_dict(bus_record["endpoint"]),
            record["provider"]["run_id"],
            [n.name for n in chain.nodes],
        )
        self.bus = bus
        chain.attach_bus(bus)

    def close(self) -> None:
        """Disconnect this process from the bus (every process, at the end of its session)."""
        if self.bus is not None:
            self.bus.close()
            self.bus = None

    def _read(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self._network_file.read_text())
            return data
        except FileNotFoundError:
            return None

    def _write(self, record: dict[str, Any]) -> None:
        write_private(self._network_file, json.dumps(record, indent=1))

    def _start(self) -> dict[str, Any]:
        settings = self.settings
        try:
            record = start_network(
                settings,
                run_id=self.run.run_id,
                run_dir=self.run.run_dir,
                seed=self.run.seed,
                root=self.root,
                owner=None if settings.keep else self.run.owner_pid,
                before_launch=None if settings.keep else self._start_watchdog,
                keep_provider=self._keep_provider,
            )
        except ChainHarnessError as exc:
            self._write({"status": "failed", "error": str(exc)})
            raise
        self._write(record)
        return record

    def _keep_provider(self, provider: Provider) -> None:
        self._provider = provider

    def _start_watchdog(self, provider: Provider) -> None:
        self._watchdog = subprocess.Popen(
            [
                sys.executable,
                script_path(),
                str(self.run.owner_pid),
                self.run.run_id,
                str(self.run.run_dir),
                str(admin_dir(self.run.run_id)),
                provider.name if get_backend(provider.name).leaves_objects else "",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, RUN_MARKER: self.run.run_id},
            process_group=0,
        )

    # -- accounts --------------------------------------------------------------------------

    def _fixed_accounts(self, record: dict[str, Any]) -> list[LocalAccount]:
        if self.settings.attach is None:
            testnet = Testnet.from_dict(record["provider"]["testnet"])
            return self._claim(testnet, FIXED_ACCOUNTS)
        # Attached sessions come and go with any worker count: the first
        # ATTACHED_FIXED_SLOTS slices of 8 are the fixed accounts, the rest are handed out.
        testnet = Testnet.from_dict(record["provider"]["testnet"])
        slot = self.run.worker_index % ATTACHED_FIXED_SLOTS
        return testnet.accounts(slot * FIXED_ACCOUNTS, (slot + 1) * FIXED_ACCOUNTS)

    def _claim(self, testnet: Testnet, count: int) -> list[LocalAccount]:
        # From one counter for every process of the run: a worker that replaces a crashed
        # one (xdist names it gw2 in a 2-worker run) still gets accounts of its own.
        return claim(
            self.run.run_dir / "accounts.claimed",
            testnet,
            count,
            advice=f"raise the ini value chain_accounts (now {self.settings.accounts})",
        )

    def _testnet_for_accounts(self) -> Testnet:
        if self._chain is not None:
            return self._chain.testnet
        record = self._read()
        if self.settings.attach is not None:
            record = read_state(self.settings.attach)
        if record is None or record["status"] != "up":
            raise ChainHarnessError("the chain has not been started")
        return Testnet.from_dict(record["provider"]["testnet"])

    def funded_account(self) -> LocalAccount:
        """A genesis-funded account no other test of this run has been given."""
        adapter = self.adapter()
        if not adapter.evm:
            raise UnsupportedAction(
                f"funded_account: client {adapter.display_name} is not an Ethereum chain"
            )
        if self.settings.attach is not None:
            return self._attached_account(self.settings.attach)
        return self._claim(self._testnet_for_accounts(), 1)[0]

    def _attached_account(self, state: Path) -> LocalAccount:
        # A network from 'chainharness up' outlives many sessions: hand out accounts in
        # order across all of them (and their workers and load users).
        return claim_attached(state, self._testnet_for_accounts(), 1)[0]

    # -- restoring and tearing down --------------------------------------------------------

    def restore(self) -> None:
        """Bring a disturbed network back: heal, clear latency, put every node back on the
        run's version, restart/resume every node and every part of one, converge."""
        chain = self._chain
        if chain is None:
            return
        chain.heal()
        chain.clear_latency()
        default = chain.provider.default_version_ref()
        for node in chain.nodes:
            state = chain.provider.state(node.index)
            if state is NodeState.PAUSED:
                node.resume()
            elif state is not NodeState.RUNNING:
                node.start()
            for part, part_state in node.parts.items():  # in start order: geth first
                if part_state == NodeState.PAUSED.value:
                    node.resume(part=part)
                elif part_state == NodeState.STOPPED.value:  # a new one starts by itself
                    node.start(part=part)
            if chain.provider.version_ref(node.index) != default:
                node.upgrade(default)
        chain.wait_converged(timeout=60)
        chain.wait_ready(timeout=60)

    def network_record(self) -> dict[str, Any] | None:
        return self._read()

    def _log_repair(self, what: str) -> None:
        log_repair(self.run.run_dir, what)

    def repairs(self) -> list[str]:
        """Every repair any process of the run made, oldest first (the start's too)."""
        try:
            lines = (self.run.run_dir / REPAIR_LOG).read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line)["what"] for line in lines if line.strip()]

    def state_path(self) -> Path:
        """The file a separate process (locust) reads the network from."""
        return self.settings.attach if self.settings.attach is not None else self._network_file

    def events_dir(self) -> Path | None:
        """Where the node agents write their events (None: this run has no bus)."""
        record = read_state(self.settings.attach) if self.settings.attach else self._read()
        return events_dir(record) if record else None

    def describe(self) -> dict[str, Any]:
        """What the run tested against: client, version, nodes, backend, seed (for reports)."""
        s = self.settings
        record = read_state(s.attach) if s.attach is not None else self._read()
        info: dict[str, Any] = {
            "client": self.adapter().display_name,
            "nodes": s.nodes,
            "seed": self.run.seed,
        }
        if record is not None and record.get("status") == "up":
            info["backend"] = record.get("backend", record["provider"].get("provider"))
            info["nodes"] = len(record["provider"]["testnet"]["nodes"])
            info["version"] = record.get("client_version", "unknown")
            info["seed"] = record["provider"]["testnet"].get("seed", self.run.seed)
            info["started"] = True
        else:
            name, _ = resolve_backend(s.backend, s.image, self.adapter())
            info["backend"] = name
            info["version"] = get_backend(name).version_from_settings(s) or _binary_version(self, s)
            info["started"] = False
        if get_backend(info["backend"]).runs_images:
            info["image"] = s.image
        if s.attach is not None:
            info["attached"] = str(s.attach)
        info["repair"] = "on" if s.repair else "off"
        info["repairs"] = len(self.repairs())
        return info

    def teardown(self) -> None:
        """Stop everything this run started (owner only; never an attached network)."""
        self.close()
        if not self.owner or self.settings.attach is not None:
            self._release()
            return
        record = self._read()
        if record is not None and record.get("status") == "up":
            provider = self._provider or attach_provider(record["provider"], self.adapter())
            every_step(
                provider.teardown,
                # The broker and agents are marked processes on every backend.
                lambda: kill_pids(find_marked(self.run.run_id)),
                lambda: self._end_history(provider),
                self._end_watchdog,
                self._redact,
            )
        else:
            # A start that failed half-way tore itself down; sweep anyway in case a
            # worker died in the middle of it.
            every_step(
                lambda: sweep_run(self.run.run_id, self.run.run_dir, self.adapter()),
                self._end_watchdog,
                self._redact,
            )

    def _end_history(self, provider: Provider) -> None:
        from ._broker import reap_children
        from .bus import merge_history

        reap_children()
        if (provider.artifacts_dir / "events-bus.jsonl").exists():
            merge_history(provider.artifacts_dir)

    def _end_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.poll()  # killed with the nodes (same run marker); collect its status

    def _redact(self) -> None:
        # The logs stay for a few runs; the keys and the bus password do not.
        for name in STATE_FILES:
            redact_file(self.run.run_dir / name)

    def leave(self) -> None:
        """The end of a session that does not own the network (an xdist worker): close,
        and leave what this process started running for the owner to stop."""
        self.close()
        self._release()

    def _release(self) -> None:
        # Dropped without waiting: an attached run's own owner, or this run's, stops them.
        from ._broker import release_children

        release_children()
        if self._provider is not None:
            self._provider.release()
        held = [self._watchdog]
        self._watchdog = None
        hand_over(held)


def _binary_version(session: ChainSession, s: Settings) -> str:
    adapter = session.adapter()
    try:
        return adapter.version(adapter.find_binary(explicit=s.binary))
    except (ToolNotFound, OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({type(exc).__name__})"


def sweep_run(run_id: str, run_dir: Path, adapter: ClientAdapter) -> None:
    """Remove whatever a run may have left: marked processes, containers, datadirs."""
    ProcessProvider(
        Testnet(seed=0, client="", chain_id=0, period=0, nodes=[], account_count=0),
        adapter,
        run_dir=run_dir,
        run_id=run_id,
        binary=Path(),
    ).teardown()
    for name in backend_names():
        get_backend(name).sweep_run(run_id, run_dir)


def sweep_stale_runs(root: Path, adapter: ClientAdapter) -> list[str]:
    """Remove runs under ``root`` whose owner process is gone (killed before teardown)."""
    swept = []
    for run_dir in root.glob("ch-*"):
        owner_file = run_dir / "owner"
        if not (run_dir / "nodes").exists() or not owner_file.exists():
            continue
        owner = owner_file.read_text().strip()
        if owner.isdigit() and not alive(int(owner)):
            sweep_run(run_dir.name, run_dir, adapter)
            swept.append(run_dir.name)
    return swept


def start_network(
    settings: Settings,
    *,
    run_id: str,
    run_dir: Path,
    seed: int,
    root: Path,
    owner: int | None,
    before_launch: Callable[[Provider], None] | None = None,
    keep_provider: Callable[[Provider], None] | None = None,
) -> dict[str, Any]:
    """Start the network (and its services) that ``settings`` describe; return its record.

    ``owner`` is the pid whose death makes the run stale (None: the network is meant to
    outlive its starter, as with ``--chain-keep`` and ``chainharness up``). On failure
    everything started is removed before the error propagates.
    """
    adapter = get_client(settings.client, root=root)
    # Leftovers of runs whose pytest was killed before its watchdog could act.
    sweep_stale_runs(run_dir.parent, adapter)
    name, _ = resolve_backend(settings.backend, settings.image, adapter)
    backend = get_backend(name)
    backend.sweep_stale()
    if settings.services is not None and not backend.hosts_services:
        hosts = [n for n in backend_names() if get_backend(n).hosts_services]
        raise NetworkStartError(
            f"services ({settings.services}) run beside a containerised chain; this run uses "
            f"the {name} backend: use --chain-backend={' or '.join(hosts)}"
        )
    (run_dir / "owner").write_text(str(owner) if owner else "kept")
    testnet = build_testnet(
        nodes=settings.nodes,
        client=settings.client,
        period=settings.period,
        seed=seed,
        chain_id=settings.chain_id,
        accounts=settings.accounts,
        signers=settings.signers,
        adapter=adapter,
    )
    provider, client_version = backend.create(
        NewRun(testnet, adapter, run_dir, run_id, settings, owner)
    )
    if keep_provider is not None:
        keep_provider(provider)
    if before_launch is not None:
        before_launch(provider)
    chain = Chain(testnet, provider, adapter, repair=settings.repair)
    chain.repair_listeners.append(lambda what: log_repair(run_dir, what))
    launch(chain, timeout=settings.start_timeout)
    record: dict[str, Any] = {"status": "up", "backend": provider.name}
    try:
        if settings.services is not None:
            from .services import load_services

            specs = load_services(settings.services)
            record["services"] = backend.start_services(provider, specs).to_dict()
        record["bus"] = _start_bus(settings, provider, adapter, backend, run_dir, run_id)
        record["client_version"] = (
            client_version if client_version is not None else provider.client_version(0)
        )
    except BaseException:
        provider.teardown()
        raise
    record["provider"] = provider.describe()
    return record


def _start_bus(
    settings: Settings,
    provider: Provider,
    adapter: ClientAdapter,
    backend: Backend,
    run_dir: Path,
    run_id: str,
) -> dict[str, Any]:
    """The run's broker and one agent per node; ``{"error": ...}`` when no broker can run
    here (the chain then works without a bus and the ``bus`` fixture says why)."""
    from ._broker import parse_bus_url, start_agents, start_local_broker

    if settings.bus is not None:
        endpoint = parse_bus_url(settings.bus)
    elif (beside := backend.start_broker(provider, settings)) is not None:
        endpoint = beside
    else:
        try:
            endpoint, _ = start_local_broker(run_dir, run_id)
        except ToolNotFound as exc:
            return {"error": str(exc)}
    testnet = provider.testnet
    start_agents(
        endpoint,
        run_id=run_id,
        run_dir=run_dir,
        nodes=[(n.name, adapter.agent_args(n)) for n in testnet.nodes],
        has_peers=adapter.has_peers,
    )
    return {"endpoint": endpoint.to_dict()}


def events_dir(record: dict[str, Any]) -> Path | None:
    """Where a network's node agents write their events (None: it has no bus)."""
    if not (record.get("bus") or {}).get("endpoint"):
        return None
    return Path(record["provider"]["run_dir"]) / "logs"


def read_state(path: Path) -> dict[str, Any]:
    """The network record in a ``chainharness up`` state file."""
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ChainHarnessError(
            f"--chain-attach={path}: the state file is gone (was the network taken down "
            "with 'chainharness down'?)"
        ) from None
    except ValueError as exc:
        raise ChainHarnessError(
            f"--chain-attach={path}: not a chainharness state file: {exc}"
        ) from None
    if record.get("status") != "up" or "provider" not in record:
        raise ChainHarnessError(f"--chain-attach={path}: not a running network's state file")
    return record


def _check_alive(chain: Chain, path: Path) -> None:
    dead = []
    for node in chain.nodes:
        try:
            node.head()
        except RPCError:
            dead.append(f"{node.name} ({node.rpc_url})")
    if dead:
        raise ChainHarnessError(
            f"--chain-attach={path}: the network is not running: {', '.join(dead)} "
            "do not answer. Start it again with 'chainharness up'."
        )
