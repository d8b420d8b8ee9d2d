"""Retention for the SQLite store: deletes the oldest finished runs (with their steps and spill folders)
past the run limit or the byte budget, and the oldest events past theirs, in bounded passes; expired
step-cache entries go at every pass, and cached outputs are the first thing evicted over the budget.

It owns the limits, when the next pass is due, the spill folders of deleted runs until they are
removed, and the last measure of the bytes used. Passes run only on whichever thread holds the
store's commit lock; the bytes-used snapshot other threads read is guarded by ``_usage_lock``. The task
spill files are the exception: worker threads add them (``note_task_spill``) and delete the oldest to
make room for a new spill (``make_room``, file deletions under ``_task_lock``), as the writer's scans do.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..logs import get_logger
from ._limits import _safe as spill_folder_name  # the folder name the output limiter writes to
from ._step_cache import evict_oldest_entry, trim_expired
from ._store_schema import FINISHED_RUNS, RUN_TALLIES, sqlite_reason

__all__ = ["Retention", "Usage", "stored_runs"]

#: Retention deletes at most this many rows per pass, so one pass never stalls the writer for long.
_CHUNK = 5_000
#: Runs deleted at a time while evicting by bytes: each deletion is measured, so none goes needlessly.
_BYTES_STEP = 1
#: Retention runs at most this often (seconds) unless a flush asks for it.
_EVERY = 1.0
#: The spill files of tasks outside runs (``<spill_dir>/tasks``) are measured at most this often.
_TASK_SPILL_EVERY = 1.0

_log = get_logger("codomyrmex_orchestration.store")


@dataclass(frozen=True)
class Usage:
    """Bytes the state takes, as of the last retention pass."""

    stored: int  # run records, step results, the run spill files they report, cached step outputs
    task_spill: int  # files under <spill_dir>/tasks
    max_bytes: int | None
    wal: int = 0  # room kept for the database's write-ahead log: its size cap (see wal_limit_for)

    @property
    def total(self) -> int:
        return self.stored + self.task_spill + self.wal

    @property
    def over(self) -> bool:
        return self.max_bytes is not None and self.total > self.max_bytes


class Retention:
    """Keeps at most ``runs`` runs and ``events`` events, and (with ``max_bytes``) the bytes under it.

    Args:
        path: the database file, for messages.
        runs, events: the most runs and events kept (finished runs and events go oldest first).
        max_bytes: the byte budget (``None``: none); see :class:`Usage` for what counts.
        spill_dir: where step outputs are spilled (``<spill_dir>/<run_id>/``, ``<spill_dir>/tasks/``).
    """

    def __init__(
        self,
        path: str,
        *,
        runs: int,
        events: int,
        max_bytes: int | None = None,
        spill_dir: Path | None = None,
        wal_reserve: int = 0,
    ) -> None:
        self.path = path
        self.runs = runs
        self.events = events
        self.max_bytes = max_bytes
        self.spill_dir = spill_dir
        # The WAL lives in the state directory too. Its live size swings with every commit (and with
        # retention's own deletions), so the budget keeps its cap aside instead of chasing it.
        self.wal_reserve = wal_reserve
        self._dirty = True  # something may be over a limit: the first pass checks
        self._last = 0.0  # time.monotonic() of the last pass
        self._doomed: list[str] = []  # run ids deleted in the open transaction: their spill folders go
        # Task spill files arrive from worker threads (note_task_spill) as well as from scans on the
        # writer: _task_lock guards the list and its byte total.
        self._task_lock = threading.Lock()
        self._task_files: list[tuple[float, int, str]] = []  # (mtime, size, path), oldest first
        self._task_bytes = 0
        self._task_scanned = -_TASK_SPILL_EVERY
        self._usage_lock = threading.Lock()  # guards _usage
        self._usage = Usage(0, 0, max_bytes, wal_reserve)

    @property
    def usage(self) -> Usage:
        with self._usage_lock:
            return self._usage

    def make_room(self, nbytes: int) -> bool:
        """Make room for a spill file of ``nbytes`` now, on the caller's thread, by deleting the oldest
        task spill files; False when that is not enough (finished runs go at the writer's next pass)."""
        if self.max_bytes is None:
            return True
        stored = self.usage.stored + self.wal_reserve
        with self._task_lock:
            while self._task_files and stored + self._task_bytes + nbytes > self.max_bytes:
                _, size, name = self._task_files.pop(0)
                self._task_bytes -= size
                _unlink_quietly(name)
            task_bytes = self._task_bytes
        self._set_task_usage(task_bytes)
        return stored + task_bytes + nbytes <= self.max_bytes

    def note_task_spill(self, path: str, nbytes: int) -> None:
        """A task's output was just spilled to ``path``: count it at once, not at the next scan."""
        with self._task_lock:
            if all(known != path for _, _, known in self._task_files):  # a scan may have seen it already
                self._task_files.append((time.time(), nbytes, path))
                self._task_bytes += nbytes
            task_bytes = self._task_bytes
        self._set_task_usage(task_bytes)
        self._dirty = True

    def _set_task_usage(self, task_bytes: int) -> None:
        with self._usage_lock:
            self._usage = Usage(self._usage.stored, task_bytes, self.max_bytes, self.wal_reserve)

    def note_added(self) -> None:
        """Runs, steps or events are being committed: the next pass has work to check."""
        self._dirty = True

    def due(self, *, forced: bool) -> bool:
        return self._dirty and (forced or time.monotonic() - self._last >= _EVERY)

    def run(self, conn: sqlite3.Connection) -> None:
        """One pass inside the caller's open transaction (in a savepoint: a failure is logged, rolled
        back alone and retried later, never fatal to the caller's writes). Call :meth:`after_commit`
        once the transaction has committed."""
        self._last = time.monotonic()
        self._dirty = False
        conn.execute("SAVEPOINT retention")
        try:
            self._trim_runs(conn)
            self._trim_versions(conn)
            self._trim_events(conn)
            if trim_expired(conn, time.time(), _CHUNK) >= _CHUNK:
                self._dirty = True  # more expired entries: the next pass goes on
            if self.max_bytes is not None:
                self._trim_bytes(conn)
            stored = stored_bytes(conn)
            conn.execute("RELEASE retention")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK TO retention")
            conn.execute("RELEASE retention")
            self._doomed.clear()
            _log.warning("state_store_retention_failed", path=self.path, error=sqlite_reason(exc))
            self._dirty = True
            return
        with self._task_lock:
            task_bytes = self._task_bytes
        with self._usage_lock:
            self._usage = Usage(stored, task_bytes, self.max_bytes, self.wal_reserve)

    def after_commit(self, committed: bool) -> None:
        """Remove the spill folders of the runs the committed pass deleted (kept if it rolled back)."""
        doomed, self._doomed = self._doomed, []
        if committed and self.spill_dir is not None:
            for run_id in doomed:
                folder = self.spill_dir / spill_folder_name(run_id)
                if folder.is_dir():
                    shutil.rmtree(folder, ignore_errors=True)

    # ------------------------------------------------------------------ the limits

    @staticmethod
    def _trim_versions(conn: sqlite3.Connection) -> None:
        # A definition version is kept while it is its name's newest or a stored run refers to it (the
        # versions table is small: one row per version still referred to, the index finds the runs).
        conn.execute(
            "DELETE FROM workflow_versions WHERE rowid IN (SELECT v.rowid FROM workflow_versions v "
            "WHERE v.version < (SELECT max(version) FROM workflow_versions w WHERE w.name = v.name) "
            "AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.workflow_name = v.name "
            "AND r.workflow_version = v.version) LIMIT ?)",
            (_CHUNK,),
        )

    def _trim_runs(self, conn: sqlite3.Connection) -> None:
        # Every query here reads a tally row or walks an index from its oldest end: a pass costs the
        # same on an empty store and a full one.
        runs = stored_runs(conn)
        excess = min(runs - self.runs, _CHUNK)
        if excess > 0:
            self._delete_oldest_runs(conn, excess)
            if runs - self.runs > _CHUNK:
                self._dirty = True

    def _delete_oldest_runs(self, conn: sqlite3.Connection, count: int) -> int:
        ids = [
            run_id
            for (run_id,) in conn.execute(
                f"SELECT run_id FROM runs INDEXED BY runs_finished WHERE {FINISHED_RUNS} "
                "ORDER BY created_at, run_id LIMIT ?",
                (count,),
            )
        ]
        conn.executemany("DELETE FROM runs WHERE run_id = ?", [(i,) for i in ids])
        if self.spill_dir is not None:
            self._doomed.extend(ids)
        return len(ids)

    def _trim_events(self, conn: sqlite3.Connection) -> None:
        # Event ids are contiguous except where retention deleted the oldest, so max(id) bounds it.
        # Two subqueries: SQLite answers min() or max() alone from the index, both together by a scan.
        first, last = conn.execute(
            "SELECT (SELECT min(id) FROM events), (SELECT max(id) FROM events)"
        ).fetchone()
        if last is not None:
            cut = min(last - self.events, first + _CHUNK - 1)
            if cut >= first:
                conn.execute("DELETE FROM events WHERE id <= ?", (cut,))
                if last - self.events > cut:
                    self._dirty = True

    def _trim_bytes(self, conn: sqlite3.Connection) -> None:
        """Delete the oldest finished work (runs, task spill files), oldest first, until under budget."""
        assert self.max_bytes is not None
        self._scan_task_spill()
        deleted = 0
        while True:
            with self._task_lock:
                task_bytes = self._task_bytes
            if stored_bytes(conn) + task_bytes + self.wal_reserve <= self.max_bytes:
                break
            if deleted >= _CHUNK:
                self._dirty = True  # the next pass goes on
                break
            if evict_oldest_entry(conn):  # a cached output can be computed again; history cannot
                deleted += 1
                continue
            oldest_run = conn.execute(
                f"SELECT created_at FROM runs INDEXED BY runs_finished WHERE {FINISHED_RUNS} "
                "ORDER BY created_at, run_id LIMIT 1"
            ).fetchone()
            with self._task_lock:
                task_first = bool(self._task_files) and (
                    oldest_run is None or self._task_files[0][0] < oldest_run[0]
                )
                if task_first:
                    _, size, name = self._task_files.pop(0)
                    self._task_bytes -= size
            if task_first:
                _unlink_quietly(name)
                deleted += 1
            elif oldest_run is not None:
                deleted += self._delete_oldest_runs(conn, _BYTES_STEP)
            else:
                break  # nothing finished is left to delete: the budget cannot be met
        if deleted:
            # Give the freed pages back to the file system (a no-op on a file without auto_vacuum).
            conn.execute("PRAGMA incremental_vacuum").fetchall()

    def _scan_task_spill(self) -> None:
        if self.spill_dir is None or time.monotonic() - self._task_scanned < _TASK_SPILL_EVERY:
            return
        self._task_scanned = time.monotonic()
        files: list[tuple[float, int, str]] = []
        try:
            with os.scandir(self.spill_dir / "tasks") as entries:
                for entry in entries:
                    try:
                        # a name starting with "." is a spill still being written (the limiter's
                        # temporary file): counted once it lands, by note_task_spill
                        if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                            st = entry.stat(follow_symlinks=False)
                            files.append((st.st_mtime, st.st_size, entry.path))
                    except OSError:
                        continue  # removed meanwhile
        except OSError:
            pass  # no task has spilled yet
        files.sort()
        with self._task_lock:
            self._task_files = files
            self._task_bytes = sum(size for _, size, _ in files)


def stored_runs(conn: sqlite3.Connection) -> int:
    """Runs stored, from the tallies (one index range, no count over the runs table)."""
    row = conn.execute(f"SELECT coalesce(sum(n), 0) FROM tallies WHERE {RUN_TALLIES}").fetchone()
    return int(row[0])


def stored_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of run records, step results, run spill files and cached outputs, from the tallies."""
    row = conn.execute("SELECT n FROM tallies WHERE key = 'bytes'").fetchone()
    return int(row[0]) if row else 0


def _unlink_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass  # gone already: nothing left to free
