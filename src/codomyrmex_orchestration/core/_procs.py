"""Records of the process groups that running steps started, so none outlives a crash of the engine.

Each running ``shell.run`` child and stdio MCP server has one small JSON file under ``state_dir/procs/``
(its pid = process group id, and its start time from ``/proc``; the pid and start time of the process
that started it, :func:`owner_fields`), written when it starts and removed once its group is killed
and reaped. After a crash the files of the
dead engine remain: :func:`guard_processes`, called when an engine opens the state directory and before
any run can be resumed, kills every recorded group that is still alive (the start time must match, so a
recycled pid is never killed) and whose starting process is gone (another live process — a CLI ``run``,
a server — sharing the state directory keeps its steps), waits for its members to exit and removes the
records. On Linux the child also gets a parent-death signal, so it
dies with the server; the records catch what that signal cannot reach (its own children).

State owned: the files of ``procs/``; nothing in memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from codomyrmex_orchestration.logs import get_logger

__all__ = [
    "PROCS_KEY",
    "guard_processes",
    "owner_fields",
    "parent_death_signal",
    "proc_start_time",
    "reap_orphans",
    "record_group",
    "stop_group",
]

log = get_logger("codomyrmex_orchestration.procs")

#: ``ActionContext.extras`` key under which ``shell.run`` finds the records directory.
PROCS_KEY = "procs_dir"
#: Longest wait for the members of a killed group to exit.
_EXIT_WAIT = 5.0
_PR_SET_PDEATHSIG = 1


def proc_start_time(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot, field 22 of ``/proc/<pid>/stat``), or
    ``None`` when there is no such process (or no ``/proc``)."""
    fields = _stat(pid)
    return int(fields[19]) if fields is not None else None


def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/<pid>/stat`` (state first); the command name may hold spaces and ')'."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2 :].decode("ascii", "replace").split()


def parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when the thread that started it dies (Linux
    ``prctl(PR_SET_PDEATHSIG)``), or ``None`` elsewhere. The thread that starts a step's child waits for
    that child, so it outlives the child unless the whole process dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: no locks, no allocation-heavy work
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return preexec


def owner_fields() -> dict[str, Any]:
    """The fields that name this process as the starter of a recorded group (``owner_pid`` and
    ``owner_start_time``). Every record carries them: an engine opening the state directory leaves a
    group alone while its owner is alive (:func:`reap_orphans`), and takes a record without them for a
    crash's leftover."""
    return {"owner_pid": os.getpid(), "owner_start_time": proc_start_time(os.getpid())}


@contextlib.contextmanager
def record_group(directory: Path | str | None, pid: int, **about: Any) -> Iterator[None]:
    """Keep a record of process group ``pid`` (its leader's pid) in ``directory`` while the block runs.

    The record is written before the block and removed after it: the caller kills and reaps the group
    inside the block. With ``directory`` ``None`` nothing is recorded.
    """
    if directory is None:
        yield
        return
    start = proc_start_time(pid)
    if start is None:  # already gone, or no /proc: nothing a later recovery could verify
        yield
        return
    folder = Path(directory)
    path = folder / f"{pid}-{start}.json"
    owner = owner_fields()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(
            json.dumps({"pid": pid, "start_time": start, **owner, **about}), encoding="utf-8"
        )
        os.replace(temporary, path)
    except OSError as exc:
        log.warning("procs.record_failed", path=str(path), error=str(exc))
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _members(pgid: int, since: int) -> list[int]:
    """Live (non-zombie) processes of group ``pgid`` started at or after ``since``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        # fields: 0 state, 1 ppid, 2 pgrp, ..., 19 starttime
        if fields is None or fields[0] in ("Z", "X") or int(fields[2]) != pgid or int(fields[19]) < since:
            continue
        found.append(int(entry.name))
    return found


def _wait_gone(pids: list[int], timeout: float) -> None:
    """Wait (bounded) until every pid has exited, with pidfds where the kernel has them."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            continue  # already gone, or no pidfd: SIGKILL is not ignorable, it dies shortly
        try:
            select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        finally:
            os.close(fd)


def stop_group(pid: int, start: int, grace: float) -> int:
    """Stop what is left of process group ``pid`` (its leader started at ``start``, ``/proc`` clock
    ticks): SIGTERM, SIGKILL to what remains after ``grace`` seconds, then a bounded wait for the
    members to exit. Returns how many processes were left. A group whose id a new process has taken
    (the leader's pid alive with another start time) is left alone."""
    leader_start = proc_start_time(pid)
    if leader_start is not None and leader_start != start:
        return 0
    members = _members(pid, start)
    if not members:
        return 0
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    _wait_gone(members, grace)
    rest = _members(pid, start)
    if rest:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        _wait_gone(rest, _EXIT_WAIT)
    return len(members)


def reap_orphans(directory: Path | str) -> list[int]:
    """Kill every process group recorded in ``directory`` that is still alive, wait for its members to
    exit, and remove the records. Returns the pids of the groups killed.

    A record is honoured only while it can still name the same group: its leader alive with the recorded
    start time, or (the leader gone) members left in a group whose id no new process has taken. A record
    whose starting process is another one still alive (same pid and start time) is left alone: that
    process runs the step and removes the record itself.
    """
    folder = Path(directory)
    if not folder.is_dir():
        return []
    killed: list[int] = []
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            pid, start = int(record["pid"]), int(record["start_time"])
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("procs.record_unreadable", path=str(path))
            path.unlink(missing_ok=True)
            continue
        if _owner_alive(record):
            continue
        leader_start = proc_start_time(pid)
        if leader_start is not None and leader_start != start:
            members: list[int] = []  # the pid was recycled: a new group owns that id now
        else:
            members = _members(pid, start)
        if members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            _wait_gone(members, _EXIT_WAIT)
            killed.append(pid)
            log.warning(
                "procs.orphan_killed",
                pgid=pid,
                processes=len(members),
                run_id=record.get("run_id"),
                step=record.get("step"),
                reason="a step's process group outlived the engine that started it (crash); killed before "
                "any resume can start the step again",
            )
        path.unlink(missing_ok=True)
    for stray in folder.glob("*.tmp"):
        stray.unlink(missing_ok=True)
    return killed


def _owner_alive(record: dict[str, Any]) -> bool:
    """The process that started the recorded group is another process, alive (not a recycled pid)."""
    owner, started = record.get("owner_pid"), record.get("owner_start_time")
    if not isinstance(owner, int) or not isinstance(started, int) or owner == os.getpid():
        return False
    return proc_start_time(owner) == started


def guard_processes(registry: Any, directory: Path | str) -> list[int]:
    """At engine start: kill the groups a crashed engine left (:func:`reap_orphans`), then make every
    code-executing action of ``registry`` record its process groups in ``directory``. Idempotent."""
    killed = reap_orphans(directory) if sys.platform.startswith("linux") else []
    target = str(directory)
    for definition in registry.definitions():
        if not definition.executes_code or getattr(definition.func, "_procs_dir", None) == target:
            continue
        original = definition.func

        def recorded(params: dict[str, Any], ctx: Any, _original: Any = original) -> Any:
            ctx.extras.setdefault(PROCS_KEY, target)
            return _original(params, ctx)

        recorded._procs_dir = target  # type: ignore[attr-defined]  # marks the wrapper: idempotent
        registry.register(replace(definition, func=recorded), replace=True)
    return killed
