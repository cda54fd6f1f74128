"""Linux process helpers: state of any pid, run markers, and reaping orphans."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "RUN_MARKER",
    "become_subreaper",
    "every_step",
    "find_by_env",
    "find_marked",
    "hand_over",
    "inner_pid",
    "kill_pids",
    "owner_gone",
    "owner_tag",
    "pid_state",
    "run_bounded",
]

#: Environment variable set on every process the harness starts; its value is the run id,
#: so a teardown (or a later stale sweep) can find processes no handle is left for.
RUN_MARKER = "CHAINHARNESS_RUN"

_PR_SET_CHILD_SUBREAPER = 36


def every_step(*steps: Callable[[], object]) -> None:
    """Run each teardown step in order, whether or not one before it failed, then raise
    the first failure (the later ones as its notes). A step skipped because an earlier
    one raised leaks whatever it would have removed."""
    failures: list[BaseException] = []
    for step in steps:
        try:
            step()
        except Exception as exc:
            failures.append(exc)
    if failures:
        first = failures[0]
        for later in failures[1:]:
            first.add_note(f"later teardown step also failed: {type(later).__name__}: {later}")
        raise first


def hand_over(*handles: list[Any] | dict[Any, Any]) -> None:
    """Drop this process's ``Popen`` handles (the lists and dicts that hold them) on
    children that keep running for the run's owner to stop, e.g. at an xdist worker's
    end. A ``Popen`` collected before it was waited for warns that its process is still
    running (an error under ``-W error``); here that is the point, and the interpreter
    still reaps each one that exits while it lives."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        for held in handles:
            held.clear()


def pid_state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid`` (``R``, ``S``, ``T``, ``Z``...), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    return stat[stat.rindex(")") + 2]


def alive(pid: int) -> bool:
    state = pid_state(pid)
    return state is not None and state not in ("Z", "X")


def find_marked(run_id: str) -> list[int]:
    """Pids of live processes whose environment carries ``RUN_MARKER=run_id``."""
    needle = f"{RUN_MARKER}={run_id}".encode()
    return [pid for pid, env in _read_each("environ") if needle in env.split(b"\0") and alive(pid)]


def owner_tag(pid: int | None = None, *, kept: bool = False) -> str:
    """``host:pid`` of the process that owns a run, as its containers' labels and its
    namespace's annotation carry it; ``host:kept`` for a network meant to outlive its
    starter (``chainharness up``), which no sweep takes for stale."""
    return f"{socket.gethostname()}:{'kept' if kept else pid or os.getpid()}"


def owner_gone(owner: str) -> bool:
    """Whether the owner in an ``owner_tag`` is a process of this host that is gone."""
    host, _, pid = owner.rpartition(":")
    # Another host's run (a shared remote engine or cluster) is never judged from here.
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return not alive(int(pid))


def find_by_env(name: str, prefix: str) -> dict[int, str]:
    """Live processes whose environment sets ``name`` to a value that starts with
    ``prefix``: pid → that value."""
    key, want = f"{name}=".encode(), prefix.encode()
    found = {}
    for pid, env in _read_each("environ"):
        for entry in env.split(b"\0"):
            if entry.startswith(key) and entry[len(key) :].startswith(want):
                if alive(pid):
                    found[pid] = entry[len(key) :].decode(errors="replace")
                break
    return found


def inner_pid(pid: int) -> int | None:
    """``pid``'s number in its innermost pid namespace (1: a container's init)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return None


def _read_each(name: str) -> Iterator[tuple[int, bytes]]:
    """``/proc/<pid>/<name>`` of every process that can be read, with its pid."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                yield int(entry.name), (entry / name).read_bytes()


def become_subreaper() -> bool:
    """Make this process adopt orphaned descendants so it can reap them.

    Nodes started by an xdist worker outlive that worker; without a subreaper they would be
    re-parented to pid 1, which on some machines never reaps them (they stay zombies).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _reaped(pid: int) -> bool:
    """Whether a dead ``pid`` is out of the process table as far as we can tell."""
    try:
        # A multi-threaded process (geth) shows as a zombie while its other threads still
        # exit, and cannot be reaped until they have: keep trying until waitpid says so.
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return True  # not our child: its parent (or the subreaper) reaps it


def _live_groups() -> set[int]:
    """The process groups that have a member which is not a zombie."""
    groups = set()
    for _, stat in _read_each("stat"):
        # After the parenthesised command name: state, ppid, pgrp.
        fields = stat[stat.rindex(b")") + 2 :].split()
        if fields[0] not in (b"Z", b"X"):
            groups.add(int(fields[2]))
    return groups


def kill_pids(pids: Iterable[int], *, sig: int = signal.SIGKILL, timeout: float = 5.0) -> list[int]:
    """Signal each pid's process group (or the pid) and wait until all are gone, the
    other members of its group too.

    A signal takes effect when each member is next scheduled: a member that let go of
    the pipes (or one between closing its files and becoming a zombie) could still run
    when the pid itself was gone. Returns the pids of which something still runs after
    ``timeout``.
    """
    pending = set(pids)
    for pid in pending:
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        if sig != signal.SIGKILL:
            # A paused process cannot act on SIGTERM until it runs again.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGCONT)
    deadline = time.monotonic() + timeout
    while pending:
        groups = _live_groups()
        for pid in list(pending):
            # Reap only once it is dead: WNOHANG on a dying child reaps nothing, and a
            # zombie nobody reaps stays in the process table for good.
            if not alive(pid) and _reaped(pid) and pid not in groups:
                pending.discard(pid)
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return sorted(pending)


def run_bounded(
    argv: Sequence[str], *, timeout: float, input: str | bytes | None = None, **popen: Any
) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run(argv, capture_output=True, timeout=...)`` that really ends at the
    timeout: the command runs in its own session and the whole group is killed then.

    subprocess.run kills only its child, then reads the pipes to their end; a wrapper
    script whose own child hangs (``#!/bin/sh`` + ``sleep``) holds them open, and the
    call lasted as long as that child (and left it running). ``TimeoutExpired`` carries
    what the command printed until then.
    """
    if input is None and "stdin" not in popen:
        popen["stdin"] = subprocess.DEVNULL
    elif input is not None:
        popen["stdin"] = subprocess.PIPE
    with subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        **popen,
    ) as proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_pids([proc.pid])
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(proc.args, timeout, out, err) from None
        except BaseException:
            kill_pids([proc.pid])
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
