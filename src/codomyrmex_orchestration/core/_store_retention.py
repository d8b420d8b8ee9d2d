"""Retention for the SQLite store: deletes the oldest finished runs (with their steps) and the oldest
events past their limits, and definition versions no run refers to, in bounded passes on the writer's
connection.

It owns the limits and when the next pass is due; it runs only on whichever thread holds the store's
commit lock, so its state needs no lock of its own.
"""

from __future__ import annotations

import sqlite3
import time

from ..logs import get_logger
from ._store_codec import TERMINAL_RUN
from ._store_schema import rollback_quietly, sqlite_reason

__all__ = ["Retention"]

#: Retention deletes at most this many rows per pass, so one pass never stalls the writer for long.
_CHUNK = 5_000
#: Retention runs at most this often (seconds) unless a flush asks for it.
_EVERY = 1.0

_log = get_logger("codomyrmex_orchestration.store")


class Retention:
    """Keeps at most ``runs`` runs (finished ones deleted oldest first) and ``events`` events."""

    def __init__(self, path: str, *, runs: int, events: int) -> None:
        self.path = path
        self.runs = runs
        self.events = events
        self._dirty = False  # runs or events were added since the last pass
        self._last = 0.0  # time.monotonic() of the last pass

    def note_added(self) -> None:
        """Runs or events were committed: the next pass has work to check."""
        self._dirty = True

    def maybe_run(self, conn: sqlite3.Connection, *, forced: bool) -> None:
        """A pass if something was added and (``forced`` or) the last pass is old enough; never raises
        an SQLite error (a failed pass is logged and retried later)."""
        if not self._dirty:
            return
        now = time.monotonic()
        if not forced and now - self._last < _EVERY:
            return
        self._last = now
        self._dirty = False
        try:
            self._run(conn)
        except sqlite3.Error as exc:
            # Retention is housekeeping: a failure is logged and retried later, never fatal.
            _log.warning("state_store_retention_failed", path=self.path, error=sqlite_reason(exc))
            self._dirty = True

    def _run(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            runs = int(conn.execute("SELECT count(*) FROM runs").fetchone()[0])
            excess = min(runs - self.runs, _CHUNK)
            if excess > 0:
                marks = ",".join("?" * len(TERMINAL_RUN))
                conn.execute(
                    f"DELETE FROM runs WHERE run_id IN (SELECT run_id FROM runs WHERE status IN ({marks}) "
                    "ORDER BY created_at, rowid LIMIT ?)",
                    (*TERMINAL_RUN, excess),
                )
                if runs - self.runs > _CHUNK:
                    self._dirty = True
            # A definition version is kept while it is its name's newest or a run refers to it.
            conn.execute(
                "DELETE FROM workflow_versions WHERE rowid IN (SELECT v.rowid FROM workflow_versions v "
                "WHERE v.version < (SELECT max(version) FROM workflow_versions w WHERE w.name = v.name) "
                "AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.workflow_name = v.name "
                "AND r.workflow_version = v.version) LIMIT ?)",
                (_CHUNK,),
            )
            # Event ids are contiguous except where retention deleted the oldest, so max(id) bounds it.
            row = conn.execute("SELECT min(id), max(id) FROM events").fetchone()
            if row[1] is not None:
                cut = min(row[1] - self.events, row[0] + _CHUNK - 1)
                if cut >= row[0]:
                    conn.execute("DELETE FROM events WHERE id <= ?", (cut,))
                    if row[1] - self.events > cut:
                        self._dirty = True
            conn.execute("COMMIT")
        except BaseException:
            rollback_quietly(conn)
            raise
