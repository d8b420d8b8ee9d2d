"""Retention for the SQLite store, in two parts. The byte budget's part runs with every commit that
adds bytes: it measures the bytes used and, over the budget, evicts cached outputs, then the oldest
finished work: finished runs (with their spill folders and the definition versions only they referred
to), closed sessions and task spill files. Workflow definitions and open sessions count but are never
evicted: new ones are refused instead (``check_budget``). The housekeeping runs at most once a
second (or when a full flush asks): the run limit (finished runs, each kept at least ``grace`` seconds
after its last save), unreferenced definition versions, the event limit and expired step-cache entries,
in bounded passes.

It owns the limits, when the next housekeeping pass is due, the spill folders of deleted runs until they
are removed, and the last measure of the bytes used. Passes run only on whichever thread holds the
store's commit lock; the bytes-used snapshot other threads read is guarded by ``_usage_lock``. The task
spill files are the exception: worker threads add them (``note_task_spill``) and delete the oldest to
make room for a new spill (``make_room``), and the writer's scans of the folder replace the list; all of
it under ``_task_lock``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..logs import get_logger
from ._limits import _safe as spill_folder_name  # the folder name the output limiter writes to
from ._step_cache import evict_oldest_entry, trim_expired
from ._store_batch import DELETE, Batch
from ._store_codec import grace_cutoff
from ._store_health import sqlite_reason
from ._store_pages import chunk_pages, free_pages, give_back
from ._store_schema import FINISHED_STATUSES, RUN_TALLIES, wal_limit_for

__all__ = [
    "DELETED_VERSIONS",
    "Retention",
    "Usage",
    "finished_runs",
    "forget_workflow",
    "oldest_finished_runs",
    "stored_runs",
]

#: Retention deletes at most this many rows per pass, so one pass never stalls the writer for long.
_CHUNK = 5_000
#: Runs deleted at a time while evicting by bytes: each deletion is measured, so none goes needlessly.
_BYTES_STEP = 1
#: Selects the marks of deleted workflows in the tallies: ``deleted/<name>`` -> the newest version the
#: name had when it was deleted (SqliteStore.delete_workflow). Its versions up to that one go once no
#: stored run refers to them, the newest too (a registered name keeps its newest).
DELETED_VERSIONS = "key > 'deleted/' AND key < 'deleted0'"
_DELETED_AT = len("deleted/") + 1  # where the name starts in such a key (substr() counts from 1)
#: The spill files of tasks outside runs (``<spill_dir>/tasks``) are measured at most this often.
_TASK_SPILL_EVERY = 1.0

_log = get_logger("codomyrmex_orchestration.store")


@dataclass(frozen=True)
class Usage:
    """Bytes the state takes, as of the last retention pass."""

    # run records, step results, the run spill files they report, cached step outputs, workflow
    # definitions and their kept versions, sessions
    stored: int
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
    """Keeps at most ``runs`` finished runs and ``events`` events, and (with ``max_bytes``) the bytes
    under it.

    Args:
        path: the database file, for messages.
        runs, events: the most finished runs and events kept (both go oldest first). Unfinished runs
            (running, waiting for input) do not count and are never deleted.
        grace: seconds a finished run is kept after its last save whatever the run limit (a run that
            just ended is read by whoever waited for it); the byte budget does not wait for it.
        max_bytes: the byte budget (``None``: none); see :class:`Usage` for what counts.
        spill_dir: where step outputs are spilled (``<spill_dir>/<run_id>/``, ``<spill_dir>/tasks/``).
        wal_reserve: bytes kept aside for the write-ahead log.
        every: seconds between housekeeping passes (a full flush asks for one sooner).
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
        every: float = 1.0,
        grace: float = 0.0,
    ) -> None:
        self.path = path
        self.runs = runs
        self.events = events
        self.grace = grace
        self.max_bytes = max_bytes
        self.spill_dir = spill_dir
        # The WAL lives in the state directory too. Its live size swings with every commit (and with
        # retention's own deletions), so the budget keeps its cap aside instead of chasing it.
        self.wal_reserve = wal_reserve
        self.every = every  # seconds between housekeeping passes, unless a full flush asks for one
        self._dirty = True  # something may be over a limit: the first housekeeping pass checks
        self._last = 0.0  # time.monotonic() of the last housekeeping pass
        # The bytes used, as last measured from the tallies, and at most how many bytes the commits
        # since then added: their sum bounds the bytes used from above without a query per commit.
        self._measured = 0
        self._unmeasured = 0
        self._measure = True  # the next budget check measures (the bound is unknown)
        self._budget_due = True  # the next commit checks the budget (set by worker threads too)
        self._doomed: list[str] = []  # run ids deleted in the open transaction: their spill folders go
        self._chunk = 0  # free pages given back per pass (and kept for reuse), once the page size is read
        # Task spill files arrive from worker threads (note_task_spill) as well as from scans on the
        # writer: _task_lock guards the list and its byte total.
        self._task_lock = threading.Lock()
        self._task_files: list[tuple[float, int, str]] = []  # (mtime, size, path), oldest first
        self._task_bytes = 0
        # Room promised to task spills being written (make_room(reserve=True)), until each lands
        # (note_task_spill) or fails (release_room): concurrent spills cannot all claim the same room.
        self._reserved = 0
        self._task_scanned = -_TASK_SPILL_EVERY
        self._usage_lock = threading.Lock()  # guards _stored
        self._stored = 0  # the bytes used as of the last commit, or an upper bound of them

    @property
    def usage(self) -> Usage:
        task_bytes = self._task_total()
        with self._usage_lock:
            return Usage(self._stored, task_bytes, self.max_bytes, self.wal_reserve)

    def make_room(
        self, nbytes: int, *, reserve: bool = False, evict: Callable[[], None] | None = None
    ) -> bool:
        """Make room for a spill file of ``nbytes`` now, on the caller's thread, by deleting the oldest
        task spill files; False when that is not enough (finished runs go at the writer's next pass).

        With ``reserve`` the room found is held for the caller until :meth:`note_task_spill` counts
        the file or :meth:`release_room` gives the room back, so spills checked at the same time on
        several workers never count the same free bytes twice. With ``evict`` (a retention pass on the
        writer, waited for), when that is not enough the bytes are held during the pass, so that it
        evicts the oldest finished runs until they fit as well."""
        if self.max_bytes is None:
            return True
        stored = self.usage.stored + self.wal_reserve
        with self._task_lock:
            while self._task_files and stored + self._task_bytes + self._reserved + nbytes > self.max_bytes:
                _, size, name = self._task_files.pop(0)
                self._task_bytes -= size
                _unlink_quietly(name)
            fits = stored + self._task_bytes + self._reserved + nbytes <= self.max_bytes
            if (fits and reserve) or (not fits and evict is not None and nbytes <= self.max_bytes):
                self._reserved += nbytes
        if fits or evict is None or nbytes > self.max_bytes:
            return fits
        try:
            evict()
        except BaseException:
            self.release_room(nbytes)
            raise
        fits = not self.usage.over
        if not (fits and reserve):
            self.release_room(nbytes)
        return fits

    def release_room(self, nbytes: int) -> None:
        """Give back room reserved by :meth:`make_room` for a spill that was not written."""
        if self.max_bytes is None:
            return
        with self._task_lock:
            self._reserved = max(0, self._reserved - nbytes)

    def note_task_spill(self, path: str, nbytes: int, *, reserved: bool = False) -> None:
        """A task's output was just spilled to ``path``: count it at once, not at the next scan (its
        reservation, when ``reserved``, becomes the file's count)."""
        with self._task_lock:
            if reserved and self.max_bytes is not None:
                self._reserved = max(0, self._reserved - nbytes)
            if all(known != path for _, _, known in self._task_files):  # a scan may have seen it already
                self._task_files.append((time.time(), nbytes, path))
                self._task_bytes += nbytes
        self._budget_due = True  # finished runs may have to go at the next commit

    def note_added(self, nbytes: int | None) -> None:
        """Rows are being committed: the next housekeeping pass has work to check. ``nbytes``: at most
        how many bytes they add to the bytes used (0: none that count; None: unknown, measure them)."""
        self._dirty = True
        if nbytes is None:
            self._measure = self._budget_due = True
        elif nbytes:
            self._unmeasured += nbytes
            self._budget_due = True

    def due(self, *, forced: bool) -> bool:
        """A housekeeping pass is due (it includes the budget's part)."""
        return self._dirty and (forced or time.monotonic() - self._last >= self.every)

    def housekeeping_in(self) -> float | None:
        """Seconds until a housekeeping pass is due, None when there is nothing for one to check (read
        without the commit lock by the idle writer: a hint of when to wake, checked again by due())."""
        if not self._dirty:
            return None
        return max(0.0, self._last + self.every - time.monotonic())

    def budget_due(self) -> bool:
        """The budget's part is due: bytes were added (or task spill files noted) since the last check."""
        return self._budget_due

    def run(self, conn: sqlite3.Connection) -> None:
        """A housekeeping pass and the budget's part, inside the caller's open transaction (in a
        savepoint: a failure is logged, rolled back alone and retried later, never fatal to the caller's
        writes). Call :meth:`after_commit` once the transaction has committed."""
        self._last = time.monotonic()
        self._dirty = False
        self._guarded(conn, self._housekeeping)

    def keep_budget(self, conn: sqlite3.Connection) -> None:
        """The budget's part alone, inside the caller's open transaction: publish the bytes used and,
        over the budget, evict (in a savepoint, as :meth:`run`). Call :meth:`after_commit` after it.

        The bytes used are measured (a read of the tallies) only when the upper bound kept since the
        last measure could be over the budget, or has grown past a 64th of it; otherwise the bound is
        what the spill path and check_budget see: never less than the bytes used."""
        self._budget_due = False
        bound = self._measured + self._unmeasured
        limit = self.max_bytes
        if limit is not None and not self._measure:
            self._measure = self._unmeasured > limit >> 6 or self._over(bound, limit)
        if self._measure:
            bound = self._measured_now(conn)
            if limit is not None and self._over(bound, limit):
                self._guarded(conn, self._trim_bytes)
                return
        with self._usage_lock:
            self._stored = bound

    def _over(self, stored: int, limit: int) -> bool:
        return stored + self._task_total() + self.wal_reserve > limit

    def _housekeeping(self, conn: sqlite3.Connection) -> None:
        self._trim_runs(conn)
        self._trim_versions(conn)
        self._trim_events(conn)
        if trim_expired(conn, time.time(), _CHUNK) >= _CHUNK:
            self._dirty = True  # more expired entries: the next pass goes on
        if self.max_bytes is not None:
            self._trim_bytes(conn)

    def _guarded(self, conn: sqlite3.Connection, trim: Callable[[sqlite3.Connection], None]) -> None:
        self._budget_due = False
        conn.execute("SAVEPOINT retention")
        try:
            trim(conn)
            stored = self._measured_now(conn)
            conn.execute("RELEASE retention")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK TO retention")
            conn.execute("RELEASE retention")
            self._doomed.clear()
            _log.warning("state_store_retention_failed", path=self.path, error=sqlite_reason(exc))
            self._dirty = True  # the next housekeeping pass tries again
            self._measure = True  # and the bytes the rolled-back pass measured are measured again
            return
        with self._usage_lock:
            self._stored = stored
        self._give_back(conn)

    def _give_back(self, conn: sqlite3.Connection) -> None:
        """Give the pages deleted rows freed back to the file system, a chunk per pass (in a savepoint
        of its own: a failure is logged and retried by the next pass, the trim it follows stays)."""
        if not self._chunk:
            self._chunk = chunk_pages(conn, self.wal_reserve or wal_limit_for(None))
        if free_pages(conn) <= self._chunk:
            return  # a few free pages are reused by the next writes
        conn.execute("SAVEPOINT give_back")
        try:
            left = give_back(conn, self._chunk)
            conn.execute("RELEASE give_back")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK TO give_back")
            conn.execute("RELEASE give_back")
            _log.warning("state_store_vacuum_failed", path=self.path, error=sqlite_reason(exc))
            left = self._chunk + 1
        if left > self._chunk:
            self._dirty = True  # the next housekeeping pass gives back the next chunk

    def _measured_now(self, conn: sqlite3.Connection) -> int:
        self._measured = stored_bytes(conn)
        self._unmeasured = 0
        self._measure = False
        return self._measured

    def _task_total(self) -> int:
        with self._task_lock:
            return self._task_bytes + self._reserved

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
        # A deleted workflow's versions (up to its newest when it was deleted: see DELETED_VERSIONS) go,
        # the newest too, once no stored run refers to them; then the mark goes.
        conn.execute(
            "DELETE FROM workflow_versions WHERE rowid IN (SELECT v.rowid FROM tallies t "
            f"JOIN workflow_versions v ON v.name = substr(t.key, {_DELETED_AT}) AND v.version <= t.n "
            f"WHERE {DELETED_VERSIONS} AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.workflow_name = v.name "
            "AND r.workflow_version = v.version) LIMIT ?)",
            (_CHUNK,),
        )
        conn.execute(
            f"DELETE FROM tallies WHERE {DELETED_VERSIONS} AND NOT EXISTS (SELECT 1 FROM workflow_versions v "
            f"WHERE v.name = substr(tallies.key, {_DELETED_AT}) AND v.version <= tallies.n)"
        )

    def _trim_runs(self, conn: sqlite3.Connection) -> None:
        # Every query here reads a tally row or walks an index from its oldest end: a pass costs the
        # same on an empty store and a full one. Only finished runs count: unfinished ones cannot be
        # deleted, so counting them would make the runs that just finished go in their place.
        runs = finished_runs(conn)
        excess = min(runs - self.runs, _CHUNK)
        if excess > 0:
            saved_before = grace_cutoff(runs, self.runs, self.grace)
            deleted = self._delete_oldest_runs(conn, excess, saved_before=saved_before)
            if runs - self.runs > deleted:
                self._dirty = True  # more to delete, or runs still in their grace: the next pass looks

    def _delete_oldest_runs(
        self,
        conn: sqlite3.Connection,
        count: int,
        *,
        versions: bool = False,
        saved_before: float | None = None,
    ) -> int:
        ids = [run_id for _, run_id in oldest_finished_runs(conn, count, saved_before=saved_before)]
        pinned = _versions_of(conn, ids) if versions else []
        conn.executemany("DELETE FROM runs WHERE run_id = ?", [(i,) for i in ids])
        # Evicting by bytes, the definition versions only these runs referred to go with them (they
        # count too): else the pass would evict more runs than it needs to while they wait for
        # housekeeping's _trim_versions.
        conn.executemany(
            "DELETE FROM workflow_versions WHERE name = ?1 AND version = ?2 "
            "AND version < (SELECT max(version) FROM workflow_versions w WHERE w.name = ?1) "
            "AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.workflow_name = ?1 AND r.workflow_version = ?2)",
            pinned,
        )
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
        """Delete the oldest finished work (runs, closed sessions, task spill files), oldest first, until
        under budget."""
        assert self.max_bytes is not None
        self._scan_task_spill()
        deleted = 0
        while True:
            with self._task_lock:
                task_bytes = self._task_bytes + self._reserved
            if stored_bytes(conn) + task_bytes + self.wal_reserve <= self.max_bytes:
                break
            if deleted >= _CHUNK:
                self._dirty = True  # the next pass goes on
                break
            if evict_oldest_entry(conn):  # a cached output can be computed again; history cannot
                deleted += 1
                continue
            oldest_run = next(iter(oldest_finished_runs(conn, 1)), None)
            session = oldest_closed_session(conn)
            oldest = min((found for found in (oldest_run, session) if found is not None), default=None)
            with self._task_lock:
                task_first = bool(self._task_files) and (oldest is None or self._task_files[0][0] < oldest[0])
                if task_first:  # deleted under the lock, as make_room does: a scan sees it gone
                    _, size, name = self._task_files.pop(0)
                    self._task_bytes -= size
                    _unlink_quietly(name)
            if task_first:
                deleted += 1
            elif oldest is None:
                break  # nothing finished is left to delete: the budget cannot be met
            elif oldest is session:
                conn.execute("DELETE FROM sessions WHERE id = ?", (oldest[1],))
                deleted += 1
            else:
                deleted += self._delete_oldest_runs(conn, _BYTES_STEP, versions=True)

    def _scan_task_spill(self) -> None:
        if self.spill_dir is None or time.monotonic() - self._task_scanned < _TASK_SPILL_EVERY:
            return
        self._task_scanned = time.monotonic()
        # The folder is listed under the lock: a spill noted (note_task_spill) between the listing and
        # the new list replacing the old would otherwise be forgotten until the next scan, and the
        # bytes it takes would not count against the budget meanwhile.
        with self._task_lock:
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
            self._task_files = files
            self._task_bytes = sum(size for _, size, _ in files)


def oldest_finished_runs(
    conn: sqlite3.Connection, count: int, *, saved_before: float | None = None
) -> list[tuple[float, str]]:
    """The ``count`` oldest finished runs as ``(created_at, run_id)``, oldest first: the oldest
    ``count`` of each finished status, one range of ``runs_by_status`` each, merged. (Python orders
    ``(float, str)`` pairs as SQLite orders ``created_at, run_id``: UTF-8 keeps code point order.)

    With ``saved_before`` (a ``time.time()``), each status's range stops at its first run saved since
    then, so the walk stays as short as the runs it returns (those behind such a run wait for it)."""
    found: list[tuple[float, str]] = []
    for status in FINISHED_STATUSES:
        rows = conn.execute(
            "SELECT created_at, run_id, updated_at FROM runs INDEXED BY runs_by_status WHERE status = ? "
            "ORDER BY created_at, run_id LIMIT ?",
            (status, count),
        )
        for created_at, run_id, updated_at in rows:
            if saved_before is not None and updated_at > saved_before:
                break
            found.append((created_at, run_id))
        rows.close()  # a range left at a run in its grace: its statement is not left open
    found.sort()
    return found[:count]


def oldest_closed_session(conn: sqlite3.Connection) -> tuple[float, str] | None:
    """The closed (or expired) session closed first, as ``(updated_at, id)``, or None."""
    row = conn.execute(
        "SELECT updated_at, id FROM sessions INDEXED BY sessions_closed WHERE status <> 'active' "
        "ORDER BY updated_at, id LIMIT 1"
    ).fetchone()
    return (float(row[0]), str(row[1])) if row else None


def _versions_of(conn: sqlite3.Connection, run_ids: list[str]) -> list[tuple[str, int]]:
    """The (workflow name, definition version) each of ``run_ids`` started with, where it has one."""
    pinned = set()
    for run_id in run_ids:
        row = conn.execute(
            "SELECT workflow_name, workflow_version FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        if row is not None and row[1] is not None:
            pinned.add((str(row[0]), int(row[1])))
    return sorted(pinned)


def stored_runs(conn: sqlite3.Connection) -> int:
    """Runs stored, from the tallies (one index range, no count over the runs table)."""
    row = conn.execute(f"SELECT coalesce(sum(n), 0) FROM tallies WHERE {RUN_TALLIES}").fetchone()
    return int(row[0])


def stored_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of run records, step results, run spill files, cached outputs, definitions and sessions,
    from the tallies."""
    row = conn.execute("SELECT n FROM tallies WHERE key = 'bytes'").fetchone()
    return int(row[0]) if row else 0


def finished_runs(conn: sqlite3.Connection) -> int:
    """Finished runs stored (the ones the run limit counts), from the tallies."""
    keys = ", ".join(f"'runs/{status}'" for status in FINISHED_STATUSES)
    row = conn.execute(f"SELECT coalesce(sum(n), 0) FROM tallies WHERE key IN ({keys})").fetchone()
    return int(row[0])


def forget_workflow(batch: Batch, *, name: str, versions_upto: int | None) -> None:
    """Delete definition ``name`` in ``batch`` and, with ``versions_upto``, mark its versions up to that
    one (``deleted/<name>``, see DELETED_VERSIONS): housekeeping drops each once no run refers to it."""
    batch.workflows[name] = DELETE
    if versions_upto is not None:
        batch.statements.append(
            (
                "INSERT INTO tallies (key, n) VALUES ('deleted/' || ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET n = max(n, excluded.n)",
                (name, versions_upto),
            )
        )


def _unlink_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass  # gone already: nothing left to free
