"""Start-up tidying of the spill folder (``<state_dir>/outputs``): what a process killed mid-spill or
mid-eviction left behind, which no run row refers to and the byte budget does not count.

Two kinds: a spill's temporary file (``.<step>.XXXX.tmp``, renamed into place once written), and the
folder of a run whose row is gone (retention deleted the row, the process died before the folder). Run
once, by ``SqliteStore.recover()``; its work is one listing of the folder plus one listing per run that
recovery just interrupted (only a process that died mid-run left a temporary file in a run's folder) and
of ``tasks/``. No state.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Collection
from functools import partial
from pathlib import Path

from ._limits import _safe as spill_folder_name  # the folder name the output limiter writes to
from ._run_owners import _DIR as OWNER_DIR  # where the run owners' locks are
from ._run_owners import owner_alive

__all__ = ["tidy_spills"]

#: While another live process may be spilling (a CLI ``run`` beside this one), what was touched this
#: recently is left: its run's row may not be committed yet.
GRACE_SECONDS = 600.0


def tidy_spills(
    spill_dir: Path,
    *,
    state_dir: Path,
    stored: Callable[[list[str]], Collection[str]],
    interrupted: Collection[str],
) -> tuple[int, int]:
    """Remove leftover temporary files and the spill folders of runs that have no row.

    A folder named after a run that a live process owns (``cli-runs/<run_id>.pid``) is left alone; while
    any live process owns a run, only what is older than :data:`GRACE_SECONDS` goes (a sub-run of that
    run may have spilled before its row was committed).

    Args:
        spill_dir: the spill folder.
        state_dir: the state directory (where the run owners' locks are).
        stored: given folder names, those that are stored runs' folders (kept); asked only about the
            folders there are, so a start with a big history and few spills reads few rows.
        interrupted: the runs recovery just marked INTERRUPTED (their folders' temporary files go).

    Returns:
        (temporary files removed, folders removed).
    """
    alive = partial(owner_alive, state_dir)
    cutoff = time.time() - GRACE_SECONDS if _any_owner_alive(state_dir, alive) else float("inf")
    files = folders = 0
    for name in ("tasks", *(spill_folder_name(run_id) for run_id in interrupted)):
        if name == "tasks" or not alive(name):
            files += _remove_temporary(spill_dir / name, cutoff)
    try:
        entries = list(os.scandir(spill_dir))
    except OSError:
        return files, folders  # nothing was ever spilled
    folders_there = [e for e in entries if e.name != "tasks" and e.is_dir(follow_symlinks=False)]
    keep = stored([e.name for e in folders_there]) if folders_there else ()
    for entry in folders_there:
        if entry.name in keep:
            continue
        try:
            recent = entry.stat(follow_symlinks=False).st_mtime >= cutoff
        except OSError:
            continue  # removed meanwhile
        if not recent and not alive(entry.name):
            shutil.rmtree(entry.path, ignore_errors=True)
            folders += 1
    return files, folders


def _any_owner_alive(state_dir: Path, alive: Callable[[str], bool]) -> bool:
    try:
        locks = list(os.scandir(state_dir / OWNER_DIR))
    except OSError:
        return False  # no CLI process ever ran a run here
    return any(lock.name.endswith(".pid") and alive(lock.name.removesuffix(".pid")) for lock in locks)


def _remove_temporary(folder: Path, cutoff: float) -> int:
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            continue  # renamed into place or removed meanwhile
    return removed
