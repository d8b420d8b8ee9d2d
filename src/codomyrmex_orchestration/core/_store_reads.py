"""The SQLite store's reads: every query that builds records, rows or counts from the committed file.

It owns the reader connection and the lock that serialises its use; before each read it lets the
writer commit what is pending (read-your-writes). A record built from several queries (a run's row and
its steps) reads them in one transaction: one committed state, never half of a commit between them.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any

from ..errors import StateStoreError
from ._limits import _safe
from ._store_codec import build_run, event_dict, parse_cursor, window
from ._store_health import Damage, sqlite_reason
from ._store_items import windowed_steps
from ._store_retention import DELETED_VERSIONS
from ._store_schema import close_quietly
from .models import ItemWindow, RunRecord, TaskStatus, WorkflowSpec, WorkflowStatus

#: The folder name the output limiter gives a run id that is no safe file name (``_limits._safe``).
_DIGEST_NAME = re.compile(r"x[0-9a-f]{32}")

__all__ = ["RunReads", "StoreReader"]

#: Tables whose row counts stats() reports.
TABLES = ("workflows", "runs", "steps", "sessions", "projects", "allocations", "events", "step_cache")


class StoreReader:
    """Queries on the reader connection.

    Args:
        conn: the ``query_only`` connection (the reader owns it from now on and closes it).
        path: the database file, for messages.
        sync: called before each read; returns once what was written before is committed.
        damage: where a read that finds the file damaged says so (the store's health reads it).
    """

    def __init__(
        self, conn: sqlite3.Connection, path: str, sync: Callable[[], None], damage: Damage | None = None
    ) -> None:
        self.path = path
        self._sync = sync
        self.damage = damage if damage is not None else Damage()
        self._conn = conn
        self._lock = threading.Lock()  # guards _conn: one read at a time on it

    def read(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        self._sync()
        with self._lock:
            return self._read_locked(sql, params)

    @contextmanager
    def snapshot(self) -> Iterator[Callable[..., list[Any]]]:
        """Yield a ``read`` whose queries all see one committed state (one read transaction): a run's
        row and its step rows read apart could straddle retention deleting the run, and build a
        finished run without its steps. The body must read through the yielded function only."""
        self._sync()
        with self._lock:
            self._read_locked("BEGIN")
            try:
                yield self._read_locked
            finally:
                # A read transaction: ending it loses nothing (and a failing file has its error raised).
                with suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")

    def _read_locked(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        try:
            return self._conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            self.damage.note(exc)
            raise StateStoreError(self.path, f"read failed: {sqlite_reason(exc)}") from exc

    def stored_folders(self, names: list[str]) -> set[str]:
        """Of spill folder names, those of stored runs: looked up by id, a chunk at a time (the output
        limiter names a folder after its run id, or a digest of an id that is no file name: those are
        matched by reading every id, a case our own uuid run ids never make)."""
        found: set[str] = set()
        for start in range(0, len(names), 500):
            chunk = names[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(r for (r,) in self.read(f"SELECT run_id FROM runs WHERE run_id IN ({marks})", chunk))
        if any(name not in found and _DIGEST_NAME.fullmatch(name) for name in names):
            digests = {_safe(run_id) for (run_id,) in self.read("SELECT run_id FROM runs")}
            found.update(name for name in names if name in digests)
        return found

    def probe_token(self) -> str | None:
        """The probe row's token as committed (no sync: health() wrote it through the writer)."""
        with self._lock:
            row = self._conn.execute("SELECT token FROM probe WHERE id = 1").fetchone()
        return None if row is None else str(row[0])

    def load_workflows(self) -> list[tuple[WorkflowSpec, str]]:
        rows = self.read("SELECT spec, source FROM workflows ORDER BY created_at, name")
        return [(WorkflowSpec.model_validate_json(spec), source) for spec, source in rows]

    def workflow_version(self, name: str, version: int) -> str | None:
        """The spec JSON of version ``version`` of ``name``, or None if it is not kept."""
        if not 0 < version < 2**63:  # outside SQLite's integers: no such version was ever stored
            return None
        rows = self.read("SELECT spec FROM workflow_versions WHERE name = ? AND version = ?", (name, version))
        return str(rows[0][0]) if rows else None

    def workflow_versions(self, name: str) -> list[int]:
        """The kept versions of ``name``, ascending."""
        rows = self.read("SELECT version FROM workflow_versions WHERE name = ? ORDER BY version", (name,))
        return [int(v) for (v,) in rows]

    def latest_workflow_versions(self) -> dict[str, tuple[int, str]]:
        """Each name's newest kept version and its digest; for a deleted name whose versions are still
        going (see DELETED_VERSIONS), the newest it had, digest "", if higher: numbers go on past it."""
        rows = self.read(
            "SELECT name, version, digest FROM workflow_versions v "
            "WHERE version = (SELECT max(version) FROM workflow_versions w WHERE w.name = v.name)"
        )
        latest = {str(n): (int(v), str(d)) for n, v, d in rows}
        for name, upto in self.read(f"SELECT substr(key, 9), n FROM tallies WHERE {DELETED_VERSIONS}"):
            if int(upto) > latest.get(str(name), (0, ""))[0]:
                latest[str(name)] = (int(upto), "")
        return latest

    def get_run(self, run_id: str, items: ItemWindow | None = None) -> RunRecord | None:
        """The run's record; with ``items``, each map step lists only that window of its items, and only
        their rows are decoded (``_store_items``)."""
        with self.snapshot() as read:
            rows = read("SELECT record FROM runs WHERE run_id = ?", (run_id,))
            if not rows:
                return None
            if items is not None:
                record = build_run(rows[0][0], ())
                record.steps = windowed_steps(read, run_id, items)
                return record
            steps = read("SELECT result FROM steps WHERE run_id = ? ORDER BY rowid", (run_id,))
        return build_run(rows[0][0], (s for (s,) in steps))

    def sub_runs(self, parent_run_id: str) -> list[RunRecord]:
        # Along runs_by_parent (migration 8), a partial index only sub-runs are written to: the parent's
        # sub-runs are found without reading the history, and a top-level run's start pays for no b-tree.
        rows = self.read(
            "SELECT record FROM runs WHERE parent_run_id = ? ORDER BY created_at, rowid", (parent_run_id,)
        )
        return [build_run(record, ()) for (record,) in rows]

    def list_runs(
        self,
        *,
        workflow_name: str | None = None,
        status: WorkflowStatus | None = None,
        limit: int = 100,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: str | None = None,
        steps: bool = True,
        parent_run_id: str | None = None,
    ) -> list[RunRecord]:
        """The runs as ``StateStore.list_runs`` lists them; ``steps=False``: their own rows alone (no
        step row is read)."""
        where: list[str] = []
        params: list[Any] = []
        if workflow_name is not None:
            where.append("workflow_name = ?")
            params.append(workflow_name)
        if status is not None:
            where.append("status = ?")
            params.append(WorkflowStatus(status).value)
        if parent_run_id is not None:
            where.append("parent_run_id = ?")
            params.append(parent_run_id)
        low, high = window(since, until)
        if low is not None:
            where.append("created_at >= ?")
            params.append(low)
        if high is not None:
            where.append("created_at < ?")
            params.append(high)
        if cursor is not None:
            where.append("(created_at, run_id) < (?, ?)")
            params.extend(parse_cursor(cursor))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        # Each run index ends in (created_at, run_id): the newest ``limit`` rows are read off its end.
        query = f"SELECT run_id, record FROM runs {clause} ORDER BY created_at DESC, run_id DESC LIMIT ?"
        if not steps:
            return [build_run(record, ()) for _, record in self.read(query, (*params, max(0, limit)))]
        with self.snapshot() as read:  # the runs listed and their steps: one committed state
            rows = read(query, (*params, max(0, limit)))
            found: dict[str, list[str]] = {run_id: [] for run_id, _ in rows}
            for chunk in _chunks(list(found), 500):
                marks = ",".join("?" * len(chunk))
                for run_id, result in read(
                    f"SELECT run_id, result FROM steps WHERE run_id IN ({marks}) ORDER BY rowid", chunk
                ):
                    found[run_id].append(result)
        return [build_run(record, found[run_id]) for run_id, record in rows]

    def step_tallies(self, run_ids: list[str]) -> dict[str, tuple[int, int]]:
        """``(finished, total)`` steps of each of ``run_ids`` that has step rows, from the rows' status
        column: no step is decoded, and a map step's item rows are no steps."""
        tallies: dict[str, tuple[int, int]] = {}
        ended = tuple(s.value for s in TaskStatus if s.is_terminal)
        for chunk in _chunks(run_ids, 500):
            rows = self.read(
                f"SELECT run_id, sum(status IN ({','.join('?' * len(ended))})), count(*) FROM steps "
                f"WHERE run_id IN ({','.join('?' * len(chunk))}) AND name NOT GLOB '*]' GROUP BY run_id",
                (*ended, *chunk),
            )
            tallies.update((run_id, (int(done), int(total))) for run_id, done, total in rows)
        return tallies

    def count_runs(self) -> dict[str, int]:
        rows = self.read(
            "SELECT substr(key, 6), n FROM tallies WHERE key > 'runs/' AND key < 'runs0' AND n > 0"
        )
        return {str(status): int(n) for status, n in rows}

    def count_rows(self) -> dict[str, int]:
        counts = {}
        for table in TABLES:
            if table == "runs":
                counts[table] = sum(self.count_runs().values())
            elif table == "steps":
                counts[table] = int(self.read("SELECT n FROM tallies WHERE key = 'steps'")[0][0])
            else:
                counts[table] = int(self.read(f"SELECT count(*) FROM {table}")[0][0])
        return counts

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        rows = self.read("SELECT data FROM sessions WHERE id = ?", (session_id,))
        return dict(json.loads(rows[0][0])) if rows else None

    def list_sessions(self, *, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` sessions (``None``: all) of ``status`` (``None``: any), oldest first."""
        where, args = ("WHERE status = ?", (status,)) if status is not None else ("", ())
        rows = self.read(
            f"SELECT data FROM sessions {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (*args, -1 if limit is None else limit),
        )
        return [dict(json.loads(data)) for (data,) in reversed(rows)]

    def get_project(self, name: str) -> dict[str, Any] | None:
        rows = self.read("SELECT data FROM projects WHERE name = ?", (name,))
        return dict(json.loads(rows[0][0])) if rows else None

    def list_projects(self) -> list[dict[str, Any]]:
        return [dict(json.loads(data)) for (data,) in self.read("SELECT data FROM projects ORDER BY name")]

    def list_allocations(self) -> list[dict[str, Any]]:
        rows = self.read("SELECT data FROM allocations ORDER BY created_at, rowid")
        return [dict(json.loads(data)) for (data,) in rows]

    def list_events(self, limit: int = 100, type: str | None = None) -> list[dict[str, Any]]:
        if type is None:
            rows = self.read(
                "SELECT id, ts, type, payload FROM events ORDER BY id DESC LIMIT ?", (max(0, limit),)
            )
        else:
            rows = self.read(
                "SELECT id, ts, type, payload FROM events WHERE type = ? ORDER BY id DESC LIMIT ?",
                (type, max(0, limit)),
            )
        return [event_dict(*row) for row in rows]

    def close(self) -> None:
        with self._lock:
            close_quietly(self._conn)


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class RunReads:
    """The run reads of a store that reads through a :class:`StoreReader` (its ``_reads``): the SQLite
    store's, and the read-only store's the CLI opens. See ``StateStore`` for each."""

    _reads: StoreReader

    def get_run(self, run_id: str, *, items: ItemWindow | None = None) -> RunRecord | None:
        return self._reads.get_run(run_id, items)

    def sub_runs(self, parent_run_id: str) -> list[RunRecord]:
        return self._reads.sub_runs(parent_run_id)

    def list_runs(
        self,
        *,
        workflow_name: str | None = None,
        status: WorkflowStatus | None = None,
        limit: int = 100,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: str | None = None,
        steps: bool = True,
        parent_run_id: str | None = None,
    ) -> list[RunRecord]:
        """Up to ``limit`` runs, newest first, filtered (``steps=False``: summaries, no step read).

        Raises:
            InvalidInputError: ``cursor`` is not one ``run_cursor`` made.
        """
        return self._reads.list_runs(
            workflow_name=workflow_name,
            status=status,
            limit=limit,
            since=since,
            until=until,
            cursor=cursor,
            steps=steps,
            parent_run_id=parent_run_id,
        )

    def count_runs(self) -> dict[str, int]:
        """Stored runs by status value: one aggregate query, no records built."""
        return self._reads.count_runs()

    def step_tallies(self, run_ids: list[str]) -> dict[str, tuple[int, int]]:
        """``(finished, total)`` steps of each of ``run_ids`` (a run without step rows is left out),
        counted from the rows' status alone: a listing's progress without decoding a step or map item
        (a map step's items count as its one step, as in its record)."""
        return self._reads.step_tallies(run_ids)
