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
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from filelock import FileLock

from ._errors import ChainHarnessError, NetworkStartError
from ._options import Settings
from ._proc import RUN_MARKER, become_subreaper
from ._start import launch
from ._testnet import Testnet, build_testnet, random_seed
from ._watchdog import script_path
from .chain import Chain
from .clients import get_client
from .clients.base import ClientAdapter
from .providers.base import NodeState
from .providers.process import ProcessProvider

__all__ = ["ChainSession", "RunInfo", "runs_root"]

#: Genesis accounts of each worker's slice exposed as ``chain.accounts``; the rest of the
#: slice feeds ``funded_account``.
FIXED_ACCOUNTS = 8
#: Finished runs whose logs are kept under the runs folder.
KEEP_RUNS = 5


def runs_root() -> Path:
    return Path(os.environ.get("CHAINHARNESS_RUNS", Path(tempfile.gettempdir()) / "chainharness"))


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
        root.mkdir(parents=True, exist_ok=True)
        _prune(root)
        run_dir = root / run_id
        run_dir.mkdir()
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


class ChainSession:
    """The chain of one pytest process: lazily started or attached, then torn down."""

    def __init__(self, settings: Settings, run: RunInfo, *, owner: bool, root: Path) -> None:
        self.settings = settings
        self.run = run
        self.owner = owner
        self.root = root
        self._chain: Chain | None = None
        self._provider: ProcessProvider | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._accounts: Iterator[LocalAccount] | None = None
        self._accounts_lock = threading.Lock()
        self._network_file = run.run_dir / "network.json"
        self._lock = FileLock(str(run.run_dir / "network.lock"))
        if owner:
            # Nodes started by xdist workers are re-parented to us when the worker exits;
            # becoming a subreaper lets teardown reap them (see _proc.become_subreaper).
            become_subreaper()

    # -- the chain -------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._chain is not None

    def adapter(self) -> ClientAdapter:
        adapter = get_client(self.settings.client, root=self.root)
        return adapter

    def chain(self) -> Chain:
        """The run's chain: started by the first caller in any process, attached by the rest."""
        if self._chain is not None:
            return self._chain
        with self._lock:
            record = self._read()
            if record is None:
                record = self._start()
            elif record["status"] == "failed":
                raise NetworkStartError(
                    f"the network of this run failed to start in another worker:\n{record['error']}"
                )
        # The process that launched the nodes keeps its provider: it holds their Popen handles.
        provider = self._provider or ProcessProvider.attach(record["provider"], self.adapter())
        self._provider = provider
        chain = Chain(
            provider.testnet,
            provider,
            self.adapter(),
            accounts=self._slice()[:FIXED_ACCOUNTS],
        )
        self._chain = chain
        return chain

    def _read(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self._network_file.read_text())
            return data
        except FileNotFoundError:
            return None

    def _write(self, record: dict[str, Any]) -> None:
        tmp = self._network_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, self._network_file)

    def _start(self) -> dict[str, Any]:
        settings = self.settings
        try:
            adapter = self.adapter()
            binary = adapter.find_binary(
                explicit=settings.geth if settings.client == "geth" else None
            )
            testnet = build_testnet(
                nodes=settings.nodes,
                client=settings.client,
                period=settings.period,
                seed=self.run.seed,
                chain_id=settings.chain_id,
                accounts=settings.accounts,
                signers=settings.signers,
            )
            provider = ProcessProvider(
                testnet, adapter, run_dir=self.run.run_dir, run_id=self.run.run_id, binary=binary
            )
            self._provider = provider
            if not settings.keep:
                self._start_watchdog()
            launch(Chain(testnet, provider, adapter), timeout=settings.start_timeout)
        except ChainHarnessError as exc:
            self._write({"status": "failed", "error": str(exc)})
            raise
        record = {
            "status": "up",
            "provider": provider.describe(),
            "client_version": adapter.version(binary),
            "backend": provider.name,
        }
        self._write(record)
        return record

    def _start_watchdog(self) -> None:
        self._watchdog = subprocess.Popen(
            [
                sys.executable,
                script_path(),
                str(self.run.owner_pid),
                self.run.run_id,
                str(self.run.run_dir),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, RUN_MARKER: self.run.run_id},
            process_group=0,
        )

    # -- accounts --------------------------------------------------------------------------

    def _slice(self) -> list[LocalAccount]:
        testnet = self._testnet_for_accounts()
        size = testnet.account_count // self.run.worker_count
        start = self.run.worker_index * size
        return testnet.accounts(start, start + size)

    def _testnet_for_accounts(self) -> Testnet:
        if self._chain is not None:
            return self._chain.testnet
        record = self._read()
        if record is None or record["status"] != "up":
            raise ChainHarnessError("the chain has not been started")
        return Testnet.from_dict(record["provider"]["testnet"])

    def funded_account(self) -> LocalAccount:
        """A genesis-funded account no other test of this run has been given."""
        with self._accounts_lock:
            if self._accounts is None:
                self._accounts = iter(self._slice()[FIXED_ACCOUNTS:])
            try:
                return next(self._accounts)
            except StopIteration:
                per_worker = self.settings.accounts // self.run.worker_count - FIXED_ACCOUNTS
                raise ChainHarnessError(
                    f"funded_account ran out: {per_worker} accounts per worker were handed out; "
                    f"raise the ini value chain_accounts (now {self.settings.accounts})"
                ) from None

    # -- restoring and tearing down --------------------------------------------------------

    def restore(self) -> None:
        """Bring a disturbed network back: heal, restart/resume every node, converge."""
        chain = self._chain
        if chain is None:
            return
        chain.heal()
        for node in chain.nodes:
            state = chain.provider.state(node.index)
            if state is NodeState.PAUSED:
                node.resume()
            elif state is not NodeState.RUNNING:
                node.start()
        chain.wait_converged(timeout=60)
        chain.wait_ready(timeout=60)

    def network_record(self) -> dict[str, Any] | None:
        return self._read()

    def teardown(self) -> None:
        """Stop everything this run started (owner only)."""
        if not self.owner:
            return
        record = self._read()
        if record is not None and record.get("status") == "up":
            provider = self._provider or ProcessProvider.attach(record["provider"], self.adapter())
            provider.teardown()
        else:
            # A start that failed half-way tore itself down; sweep anyway in case a
            # worker died in the middle of it.
            ProcessProvider(
                Testnet(seed=0, client="", chain_id=0, period=0, nodes=[], account_count=0),
                self.adapter(),
                run_dir=self.run.run_dir,
                run_id=self.run.run_id,
                binary=Path(),
            ).teardown()
        if self._watchdog is not None:
            self._watchdog.poll()  # killed with the nodes (same run marker); collect its status
