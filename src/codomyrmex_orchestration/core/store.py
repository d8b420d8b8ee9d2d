"""Durable state: the ``StateStore`` contract, an in-memory store and the SQLite store under ``.workflows/``.

The SQLite store queues every write for one writer thread that group-commits, so a worker thread
recording a step transition pays a serialisation and a dict insert; only a thread that asks for
durability now (``flush()``) commits, on its own thread.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import pydantic_core
from pydantic import TypeAdapter

from ..errors import StateStoreError
from ..logs import get_logger
from ._locks import YieldingLock, yielding_condition
from .models import RunRecord, StepResult, WorkflowSpec, WorkflowStatus

__all__ = [
    "DEFAULT_FLUSH_INTERVAL",
    "DEFAULT_RETENTION_EVENTS",
    "DEFAULT_RETENTION_RUNS",
    "SCHEMA_VERSION",
    "EngineStateStore",
    "MemoryStore",
    "SqliteStore",
    "StateStore",
]

DEFAULT_RETENTION_RUNS = 10_000
DEFAULT_RETENTION_EVENTS = 100_000
DEFAULT_FLUSH_INTERVAL = 0.05
#: A batch this large is committed at once instead of waiting for the flush interval.
_MAX_BATCH = 2_000
#: Retention deletes at most this many rows per pass, so one pass never stalls the writer for long.
_RETENTION_CHUNK = 5_000
#: Retention runs at most this often (seconds) unless a flush asks for it.
_RETENTION_EVERY = 1.0
_BUSY_TIMEOUT_MS = 5_000
_FLUSH_TIMEOUT = 30.0
_CLOSE_TIMEOUT = 30.0
_INTERRUPTED_REASON = "the process stopped while this run was in progress"

_ACTIVE_RUN = (WorkflowStatus.PENDING.value, WorkflowStatus.RUNNING.value)
_TERMINAL_RUN = tuple(s.value for s in WorkflowStatus if s.is_terminal)

_log = get_logger("codomyrmex_orchestration.store")
_T = TypeVar("_T")


# --------------------------------------------------------------------------- contracts


class StateStore(Protocol):
    """What the WorkflowManager needs: workflows created through the API, runs and step results."""

    # True when what is saved outlives the process: the manager then saves every step as it is
    # created, starts and finishes, so that after a crash recovery knows what was done and what was in
    # flight. A store that dies with the process gets a run's row when it starts and its whole record,
    # steps included, when it ends (while it runs, it is read from the manager itself).
    durable: bool

    def save_workflow(self, spec: WorkflowSpec, source: str) -> None: ...
    def delete_workflow(self, name: str) -> None: ...
    def load_workflows(self) -> list[tuple[WorkflowSpec, str]]: ...
    def save_run(self, record: RunRecord) -> None: ...
    def save_step(self, run_id: str, step: StepResult) -> None: ...
    def get_run(self, run_id: str) -> RunRecord | None: ...
    def list_runs(
        self,
        *,
        workflow_name: str | None = None,
        status: WorkflowStatus | None = None,
        limit: int = 100,
    ) -> list[RunRecord]: ...
    def count_runs(self) -> dict[str, int]: ...
    # A mark of the writes saved so far, for flush(upto=...) later.
    def write_mark(self) -> int: ...
    # Block until the writes saved before ``upto`` (a write_mark(); default: now) are durable; with
    # wait=False, commit now if that needs no waiting for another thread's commit, else return.
    def flush(self, *, upto: int | None = None, wait: bool = True) -> None: ...
    def close(self) -> None: ...


class EngineStateStore(StateStore, Protocol):
    """What the OrchestrationEngine needs on top: sessions, projects, allocations, events, health."""

    def save_session(self, session_id: str, data: Mapping[str, Any]) -> None: ...
    def get_session(self, session_id: str) -> dict[str, Any] | None: ...
    def list_sessions(self, *, status: str | None = None) -> list[dict[str, Any]]: ...
    def delete_session(self, session_id: str) -> None: ...
    def save_project(self, name: str, data: Mapping[str, Any]) -> None: ...
    def get_project(self, name: str) -> dict[str, Any] | None: ...
    def list_projects(self) -> list[dict[str, Any]]: ...
    def delete_project(self, name: str) -> None: ...
    def save_allocation(self, allocation_id: str, data: Mapping[str, Any]) -> None: ...
    def delete_allocation(self, allocation_id: str) -> None: ...
    def list_allocations(self) -> list[dict[str, Any]]: ...
    def append_event(self, type: str, payload: Mapping[str, Any] | None = None) -> None: ...
    def list_events(self, limit: int = 100, type: str | None = None) -> list[dict[str, Any]]: ...
    def recover(self) -> list[str]: ...
    def health(self) -> dict[str, Any]: ...
    def stats(self) -> dict[str, Any]: ...


# --------------------------------------------------------------------------- serialisation helpers


def _dump_step(step: StepResult) -> str:
    # A non-JSON step output is stored as its repr rather than breaking the run that produced it.
    return step.model_dump_json(fallback=repr)


#: A run's steps as one JSON object, encoded in one call: 1.5 µs per step against 2.4 for a
#: model_dump_json per step (10,000 steps), and decoded in one call too.
_STEPS_JSON: TypeAdapter[dict[str, StepResult]] = TypeAdapter(dict[str, StepResult])


def _dump_run(record: RunRecord) -> str:
    return record.model_dump_json(exclude={"steps"}, fallback=repr)


def _dump_data(data: Mapping[str, Any]) -> str:
    # pydantic-core's encoder: 0.5 µs for a step event's payload against 4 µs for json.dumps (the
    # engine logs one per step); datetimes come out in ISO 8601, anything else unknown as its str.
    return pydantic_core.to_json(dict(data), fallback=str).decode()


def _status_of(data: Mapping[str, Any]) -> str:
    status = data.get("status", "")
    return str(getattr(status, "value", status))


def _build_run(record_json: str, steps_json: Iterable[str], batch: bytes | None = None) -> RunRecord:
    """The record from its JSON, its steps from ``batch`` (one object), then ``steps_json`` (one each)."""
    data = json.loads(record_json)
    steps = _STEPS_JSON.validate_json(batch) if batch is not None else {}
    for raw in steps_json:
        step = StepResult.model_validate_json(raw)
        steps[step.name] = step
    data["steps"] = {}
    record = RunRecord.model_validate(data)
    record.steps = steps
    return record


def _interrupted(record_json: str) -> str:
    data = json.loads(record_json)
    data["status"] = WorkflowStatus.INTERRUPTED.value
    data["error"] = data.get("error") or _INTERRUPTED_REASON
    return json.dumps(data, separators=(",", ":"))


# --------------------------------------------------------------------------- in memory


@dataclass
class _MemRun:
    seq: int
    created: float
    workflow_name: str
    status: str
    record: str
    # The steps of the last save_run that had any, as one JSON object (see _STEPS_JSON), and the
    # others one by one (saved by save_step, or from an older batch): never the same step in both.
    batch: bytes | None = None
    batch_size: int = 0
    steps: dict[str, str] = field(default_factory=dict)

    def unbatch(self, keep_out: Container[str]) -> None:
        """Move the batch's steps not in ``keep_out`` to ``steps`` (rare: a run saved step by step
        after a batch, or saved again with steps)."""
        if self.batch is not None:
            for name, step in _STEPS_JSON.validate_json(self.batch).items():
                if name not in keep_out:
                    self.steps[name] = _dump_step(step)
            self.batch, self.batch_size = None, 0


class MemoryStore:
    """An in-memory :class:`EngineStateStore`: thread-safe, bounded by the same retention limits.

    Records are kept as JSON snapshots, as the SQLite store keeps them, so mutating an object after
    saving it does not change what was saved. Nothing survives the process.
    """

    durable = False

    def __init__(
        self,
        *,
        retention_runs: int = DEFAULT_RETENTION_RUNS,
        retention_events: int = DEFAULT_RETENTION_EVENTS,
    ) -> None:
        _check_retention(retention_runs, retention_events)
        self.retention_runs = retention_runs
        self.retention_events = retention_events
        self._lock = YieldingLock()  # short sections, taken by workers (see _locks)
        self._seq = itertools.count()
        self._event_ids = itertools.count(1)
        self._workflows: dict[str, tuple[str, str]] = {}
        self._runs: dict[str, _MemRun] = {}
        # Finished runs, oldest first, for retention: (created, seq, run_id). Entries of runs that were
        # saved unfinished again (resumed) or already trimmed are stale and skipped when popped.
        self._finished: list[tuple[float, int, str]] = []
        self._sessions: dict[str, str] = {}
        self._projects: dict[str, str] = {}
        self._allocations: dict[str, str] = {}
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=retention_events)
        self._closed = False

    # workflows
    def save_workflow(self, spec: WorkflowSpec, source: str) -> None:
        raw = spec.model_dump_json()
        with self._lock:
            self._workflows[spec.name] = (raw, source)

    def delete_workflow(self, name: str) -> None:
        with self._lock:
            self._workflows.pop(name, None)

    def load_workflows(self) -> list[tuple[WorkflowSpec, str]]:
        with self._lock:
            items = list(self._workflows.values())
        return [(WorkflowSpec.model_validate_json(raw), source) for raw, source in items]

    # runs
    def save_run(self, record: RunRecord) -> None:
        raw = _dump_run(record)
        # A non-JSON step output is stored as its repr, as _dump_step does.
        batch = _STEPS_JSON.dump_json(record.steps, fallback=repr) if record.steps else None
        with self._lock:
            run = self._runs.get(record.run_id)
            if run is None:
                run = _MemRun(next(self._seq), record.created_at.timestamp(), record.workflow_name, "", "")
                self._runs[record.run_id] = run
            run.status = record.status.value
            run.workflow_name = record.workflow_name
            run.record = raw
            if batch is not None:
                run.unbatch(record.steps)
                if run.steps:
                    for name in record.steps:
                        run.steps.pop(name, None)
                run.batch, run.batch_size = batch, len(record.steps)
            if run.status in _TERMINAL_RUN:
                heapq.heappush(self._finished, (run.created, run.seq, record.run_id))
            if len(self._runs) > self.retention_runs:
                self._trim_runs()

    def save_step(self, run_id: str, step: StepResult) -> None:
        raw = _dump_step(step)
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None:  # steps of an unknown (or trimmed) run are ignored, as in SqliteStore
                run.unbatch(())
                run.steps[step.name] = raw

    def _trim_runs(self) -> None:
        # A heap rather than sorting every run on each save: past retention, every new run trims one.
        excess = len(self._runs) - self.retention_runs
        finished = self._finished
        while excess > 0 and finished:
            _, seq, run_id = heapq.heappop(finished)
            run = self._runs.get(run_id)
            if run is not None and run.seq == seq and run.status in _TERMINAL_RUN:
                del self._runs[run_id]
                excess -= 1

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                return None
            raw, batch, steps = run.record, run.batch, list(run.steps.values())
        return _build_run(raw, steps, batch)

    def list_runs(
        self,
        *,
        workflow_name: str | None = None,
        status: WorkflowStatus | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        wanted = WorkflowStatus(status).value if status is not None else None
        with self._lock:
            runs = [
                r
                for r in self._runs.values()
                if (workflow_name is None or r.workflow_name == workflow_name)
                and (wanted is None or r.status == wanted)
            ]
            runs.sort(key=lambda r: (r.created, r.seq), reverse=True)
            picked = [(r.record, list(r.steps.values()), r.batch) for r in runs[: max(0, limit)]]
        return [_build_run(raw, steps, batch) for raw, steps, batch in picked]

    def count_runs(self) -> dict[str, int]:
        """Stored runs by status value, without building a record."""
        counts: dict[str, int] = {}
        with self._lock:
            for run in self._runs.values():
                counts[run.status] = counts.get(run.status, 0) + 1
        return counts

    def recover(self) -> list[str]:
        """Mark every PENDING or RUNNING run INTERRUPTED; return their ids, oldest first."""
        with self._lock:
            found = sorted(
                ((r.created, r.seq, rid, r) for rid, r in self._runs.items() if r.status in _ACTIVE_RUN),
                key=lambda item: (item[0], item[1]),
            )
            for created, seq, rid, run in found:
                run.status = WorkflowStatus.INTERRUPTED.value
                run.record = _interrupted(run.record)
                heapq.heappush(self._finished, (created, seq, rid))
        return [rid for _, _, rid, _ in found]

    # sessions, projects, allocations
    def save_session(self, session_id: str, data: Mapping[str, Any]) -> None:
        raw = _dump_data(data)
        with self._lock:
            self._sessions[session_id] = raw

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        with self._lock:
            raw = self._sessions.get(session_id)
        return None if raw is None else dict(json.loads(raw))

    def list_sessions(self, *, status: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._sessions.values())
        decoded = [dict(json.loads(raw)) for raw in items]
        return [d for d in decoded if status is None or _status_of(d) == status]

    def delete_session(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def save_project(self, name: str, data: Mapping[str, Any]) -> None:
        raw = _dump_data(data)
        with self._lock:
            self._projects[name] = raw

    def get_project(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            raw = self._projects.get(name)
        return None if raw is None else dict(json.loads(raw))

    def list_projects(self) -> list[dict[str, Any]]:
        with self._lock:
            items = [self._projects[k] for k in sorted(self._projects)]
        return [dict(json.loads(raw)) for raw in items]

    def delete_project(self, name: str) -> None:
        with self._lock:
            self._projects.pop(name, None)

    def save_allocation(self, allocation_id: str, data: Mapping[str, Any]) -> None:
        raw = _dump_data(data)
        with self._lock:
            self._allocations[allocation_id] = raw

    def delete_allocation(self, allocation_id: str) -> None:
        with self._lock:
            self._allocations.pop(allocation_id, None)

    def list_allocations(self) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._allocations.values())
        return [dict(json.loads(raw)) for raw in items]

    # events
    def append_event(self, type: str, payload: Mapping[str, Any] | None = None) -> None:
        raw = _dump_data(payload or {})
        with self._lock:
            self._events.append({"id": next(self._event_ids), "ts": time.time(), "type": type, "raw": raw})

    def list_events(self, limit: int = 100, type: str | None = None) -> list[dict[str, Any]]:
        """The most recent ``limit`` events (of ``type`` if given), newest first."""
        out: list[dict[str, Any]] = []
        with self._lock:
            for event in reversed(self._events):
                if len(out) >= limit:
                    break
                if type is None or event["type"] == type:
                    out.append(event)
        return [_event_dict(e["id"], e["ts"], e["type"], e["raw"]) for e in out]

    # lifecycle
    def write_mark(self) -> int:
        return 0

    def flush(self, *, upto: int | None = None, wait: bool = True) -> None:
        """Nothing to flush: every save is visible as soon as it returns."""

    def close(self) -> None:
        self._closed = True

    def health(self) -> dict[str, Any]:
        return {"ok": True, "reason": "in memory", "kind": "memory", "path": None, "last_error": None}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "kind": "memory",
                "path": None,
                "rows": {
                    "workflows": len(self._workflows),
                    "runs": len(self._runs),
                    "steps": sum(r.batch_size + len(r.steps) for r in self._runs.values()),
                    "sessions": len(self._sessions),
                    "projects": len(self._projects),
                    "allocations": len(self._allocations),
                    "events": len(self._events),
                },
                "file_bytes": 0,
                "pending_writes": 0,
            }


def _event_dict(event_id: int, ts: float, type: str, raw: str) -> dict[str, Any]:
    return {"id": event_id, "ts": ts, "type": type, "payload": json.loads(raw)}


def _check_retention(runs: int, events: int) -> None:
    from ..errors import InvalidInputError

    if runs < 1:
        raise InvalidInputError("retention_runs", f"must be at least 1, got {runs}")
    if events < 1:
        raise InvalidInputError("retention_events", f"must be at least 1, got {events}")


# --------------------------------------------------------------------------- SQLite

# Ordered migrations; migration i (1-based) brings PRAGMA user_version from i-1 to i. Never edit one
# that has shipped: append a new one.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE workflows (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        source TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        workflow_name TEXT NOT NULL,
        status TEXT NOT NULL,
        record TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        session_id TEXT,
        parent_run_id TEXT
    );
    CREATE INDEX runs_by_created ON runs (created_at);
    CREATE INDEX runs_by_workflow ON runs (workflow_name, created_at);
    CREATE INDEX runs_by_status ON runs (status, created_at);
    CREATE TABLE steps (
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        result TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (run_id, name)
    );
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        data TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE projects (
        name TEXT PRIMARY KEY,
        data TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE allocations (
        id TEXT PRIMARY KEY,
        data TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        type TEXT NOT NULL,
        payload TEXT NOT NULL
    );
    CREATE INDEX events_by_type ON events (type, id);
    CREATE TABLE probe (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        token TEXT NOT NULL,
        ts REAL NOT NULL
    );
    """,
)
#: The schema version this code writes (``PRAGMA user_version``).
SCHEMA_VERSION = len(_MIGRATIONS)

_DELETE = None  # marks a key deleted in a pending batch

_SQL_UPSERT_RUN = """
INSERT INTO runs (run_id, workflow_name, status, record, created_at, updated_at, session_id, parent_run_id)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (run_id) DO UPDATE SET
    workflow_name = excluded.workflow_name, status = excluded.status, record = excluded.record,
    updated_at = excluded.updated_at, session_id = excluded.session_id,
    parent_run_id = excluded.parent_run_id
"""
# Steps of a run that does not exist (never saved, or trimmed by retention) are dropped instead of
# failing the whole batch on the foreign key.
_SQL_UPSERT_STEP = """
INSERT INTO steps (run_id, name, status, result, updated_at)
SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM runs WHERE run_id = ?)
ON CONFLICT (run_id, name) DO UPDATE SET
    status = excluded.status, result = excluded.result, updated_at = excluded.updated_at
"""


@dataclass
class _Batch:
    """Writes enqueued since the last commit; repeated saves of one key coalesce (last one wins)."""

    workflows: dict[str, tuple[str, str] | None] = field(default_factory=dict)
    runs: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    steps: dict[tuple[str, str], tuple[Any, ...]] = field(default_factory=dict)
    sessions: dict[str, tuple[str, str] | None] = field(default_factory=dict)
    projects: dict[str, str | None] = field(default_factory=dict)
    allocations: dict[str, str | None] = field(default_factory=dict)
    events: list[tuple[float, str, str]] = field(default_factory=list)
    size: int = 0


@dataclass
class _Call:
    """A function the writer runs on its connection after committing what was enqueued before it."""

    fn: Callable[[sqlite3.Connection], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class SqliteStore:
    """The durable :class:`EngineStateStore`: one SQLite file (WAL), written by one group-committing thread.

    Writes (``save_*``, ``delete_*``, ``append_event``) serialise their argument on the calling thread,
    enqueue it and return; repeated saves of the same run, step, session, ... coalesce. The writer
    commits a batch every ``flush_interval`` seconds, or at once when the batch is large; :meth:`flush`
    commits what is pending on the calling thread (no round trip through the writer). Reads see every
    write made before them (read-your-writes): a read first waits for pending writes to be committed,
    which costs nothing when the queue is empty. We chose this over
    an in-memory overlay because filtered, ordered listings (``list_runs``) would otherwise have to merge
    two sources; reads are rare next to writes (the WorkflowManager keeps live runs in memory).

    Durability: ``synchronous=NORMAL`` in WAL mode survives a process crash for every committed batch;
    a ``kill -9`` loses at most the writes not yet committed (at most ``flush_interval`` seconds of
    them). :meth:`flush` returns only when everything enqueued before it is committed. A power loss may
    additionally lose the last committed transactions (NORMAL does not fsync each commit).

    If the writer fails (disk full, file made read-only), the failure is recorded: :meth:`health`
    reports it, :meth:`flush` raises :class:`StateStoreError`, later writes are dropped and counted,
    reads keep serving what was committed. Nothing raises into the thread that called ``save_*``.

    Args:
        path: the database file (the engine passes ``<state_dir>/state.db``); its directory is created.
        retention_runs: finished runs kept (oldest finished ones are deleted, with their steps).
        retention_events: events kept (oldest deleted).
        flush_interval: seconds the writer waits to gather a batch before committing it.

    Raises:
        StateStoreError: the directory cannot be created or written, the file is not a database
            (corrupt), or its schema is newer than this program.
    """

    durable = True

    def __init__(
        self,
        path: Path | str,
        *,
        retention_runs: int = DEFAULT_RETENTION_RUNS,
        retention_events: int = DEFAULT_RETENTION_EVENTS,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
    ) -> None:
        _check_retention(retention_runs, retention_events)
        if flush_interval < 0:
            from ..errors import InvalidInputError

            raise InvalidInputError("flush_interval", f"must be >= 0 seconds, got {flush_interval}")
        self.path = Path(path).absolute()
        self.retention_runs = retention_runs
        self.retention_events = retention_events
        self.flush_interval = flush_interval

        # Taken by every worker at every step (save_step), held for a few list operations: a
        # YieldingLock (no lock convoys). The commit lock below is held across I/O: a threading.Lock.
        self._lock = YieldingLock()
        self._work = yielding_condition(self._lock)  # the writer waits here
        self._done = yielding_condition(self._lock)  # flushers wait here
        self._pending = _Batch()
        self._calls: list[_Call] = []
        self._enqueued = 0  # writes enqueued so far
        self._committed = 0  # writes committed (or dropped with a failed batch) so far
        self._flush_wanted = False
        self._writer_idle = False  # the writer waits for work (not for its flush interval to pass)
        self._closing = False
        self._closed = False
        self._failure: str | None = None
        self._dropped = 0
        self._batches = 0
        self._retention_due = False  # a flush asked for a retention pass
        self._retention_dirty = False  # writer-only: runs/events were added since the last pass
        self._last_retention = 0.0

        # Held by whoever takes a batch from _pending and commits it (the writer, or a thread in
        # flush()), until _committed is updated: batches commit in order, one thread uses the writer
        # connection at a time. Lock order: _commit_lock, then _lock.
        self._commit_lock = threading.Lock()
        self._writer_conn, self._reader_conn = self._open()
        self._read_lock = threading.Lock()
        self._inode = _inode(self.path)
        self._thread = threading.Thread(target=self._writer_main, name="state-store-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ opening

    def _open(self) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        where = str(self.path)
        parent = self.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            blocker = next((p for p in (parent, *parent.parents) if p.exists()), None)
            reason = (
                f"{blocker} is a file, not a directory"
                if blocker is not None and not blocker.is_dir()
                else _os_reason(exc)
            )
            raise StateStoreError(where, f"cannot create the state directory {parent}: {reason}") from exc
        if not parent.is_dir():
            raise StateStoreError(where, f"{parent} exists but is not a directory")
        if self.path.exists() and not self.path.is_file():
            raise StateStoreError(where, "exists but is not a regular file")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise StateStoreError(where, f"the state directory {parent} is not writable")
        writer: sqlite3.Connection | None = None
        reader: sqlite3.Connection | None = None
        try:
            writer = self._connect()
            mode = writer.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                _log.warning("state_store_not_wal", path=where, journal_mode=mode)
            writer.execute("PRAGMA synchronous=NORMAL")
            self._migrate(writer)
            _probe(writer)  # fails now, with the path, if the file cannot be written
            reader = self._connect()
            reader.execute("PRAGMA query_only=ON")
            reader.execute("SELECT count(*) FROM runs").fetchone()
        except StateStoreError:
            _close_quietly(writer, reader)
            raise
        except sqlite3.Error as exc:
            _close_quietly(writer, reader)
            raise StateStoreError(where, _sqlite_reason(exc)) from exc
        return writer, reader

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves; check_same_thread=False: the writer
        # connection is opened here and used by the writer thread, the reader is guarded by a lock.
        conn = sqlite3.connect(
            str(self.path),
            timeout=_BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StateStoreError(
                str(self.path),
                f"schema version {version} is newer than this program supports ({SCHEMA_VERSION}); "
                "use a newer codomyrmex-orchestration or another state directory",
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(_MIGRATIONS[number - 1]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            _log.info("state_store_migrated", path=str(self.path), schema_version=number)

    # ------------------------------------------------------------------ enqueueing

    def _enqueue(self, put: Callable[[_Batch], None]) -> None:
        with self._lock:
            if self._failure is not None or self._closing:
                # Never raise into the worker that recorded a transition; the loss is counted and
                # reported by health() / stats() (and flush() raises while the writer is failed).
                self._dropped += 1
                return
            was_empty = self._pending.size == 0
            put(self._pending)
            self._pending.size += 1
            self._enqueued += 1
            # Only a writer idle-waiting for work needs waking: in its flush-interval wait it comes back
            # by itself, and waking it for each write would cost a thread switch per write.
            if (was_empty and self._writer_idle) or self._pending.size >= _MAX_BATCH:
                self._writer_idle = False  # one wake-up is enough
                self._work.notify()

    def save_workflow(self, spec: WorkflowSpec, source: str) -> None:
        row = (spec.model_dump_json(), source)
        self._enqueue(lambda b: b.workflows.__setitem__(spec.name, row))

    def delete_workflow(self, name: str) -> None:
        self._enqueue(lambda b: b.workflows.__setitem__(name, _DELETE))

    def save_run(self, record: RunRecord) -> None:
        now = time.time()
        row = (
            record.run_id,
            record.workflow_name,
            record.status.value,
            _dump_run(record),
            record.created_at.timestamp(),
            now,
            record.session_id,
            record.parent_run_id,
        )
        steps = [
            ((record.run_id, name), (record.run_id, name, s.status.value, _dump_step(s), now, record.run_id))
            for name, s in record.steps.items()
        ]

        def put(b: _Batch) -> None:
            b.runs[record.run_id] = row
            b.steps.update(steps)

        self._enqueue(put)

    def save_step(self, run_id: str, step: StepResult) -> None:
        row = (run_id, step.name, step.status.value, _dump_step(step), time.time(), run_id)
        self._enqueue(lambda b: b.steps.__setitem__((run_id, step.name), row))

    def save_session(self, session_id: str, data: Mapping[str, Any]) -> None:
        row = (_dump_data(data), _status_of(data))
        self._enqueue(lambda b: b.sessions.__setitem__(session_id, row))

    def delete_session(self, session_id: str) -> None:
        self._enqueue(lambda b: b.sessions.__setitem__(session_id, _DELETE))

    def save_project(self, name: str, data: Mapping[str, Any]) -> None:
        raw = _dump_data(data)
        self._enqueue(lambda b: b.projects.__setitem__(name, raw))

    def delete_project(self, name: str) -> None:
        self._enqueue(lambda b: b.projects.__setitem__(name, _DELETE))

    def save_allocation(self, allocation_id: str, data: Mapping[str, Any]) -> None:
        raw = _dump_data(data)
        self._enqueue(lambda b: b.allocations.__setitem__(allocation_id, raw))

    def delete_allocation(self, allocation_id: str) -> None:
        self._enqueue(lambda b: b.allocations.__setitem__(allocation_id, _DELETE))

    def append_event(self, type: str, payload: Mapping[str, Any] | None = None) -> None:
        row = (time.time(), type, _dump_data(payload or {}))
        self._enqueue(lambda b: b.events.append(row))

    # ------------------------------------------------------------------ flushing

    def write_mark(self) -> int:
        """A mark of the writes enqueued so far: ``flush(upto=mark)`` waits for those alone."""
        return self._enqueued

    def flush(self, timeout: float = _FLUSH_TIMEOUT, *, upto: int | None = None, wait: bool = True) -> None:
        """Block until every write enqueued before this call (or before ``upto``, a
        :meth:`write_mark`) is committed.

        With ``wait=False``: commit now on this thread unless another thread is committing already, and
        never wait; what that commit did not take is committed by the next flush or by the writer.

        Raises:
            StateStoreError: the writer has failed (the reason is in the message), or did not commit
                within ``timeout`` seconds.
        """
        if upto is not None and self._committed >= upto and self._failure is None:
            return  # committed already: the usual case when a step starts after its parents
        with self._lock:
            target = self._enqueued if upto is None else upto
            pending = self._committed < target and self._failure is None
        # Commit on this thread rather than wake the writer and wait to be woken in turn: a flush then
        # costs one commit and no thread handoffs. If another thread is mid-commit, our writes are
        # often in its batch; without ``wait`` they are left to the next commit.
        if pending and (
            self._commit_lock.acquire(timeout=timeout) if wait else self._commit_lock.acquire(blocking=False)
        ):
            try:
                self._commit_pending(target)
            finally:
                self._commit_lock.release()
        if not wait:
            return
        with self._lock:
            if self._committed < target and self._failure is None:
                self._flush_wanted = True
                self._retention_due = True
                self._work.notify()
                deadline = time.monotonic() + timeout
                while self._committed < target and self._failure is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise StateStoreError(
                            str(self.path), f"the writer did not commit within {timeout:g} s (flush)"
                        )
                    self._done.wait(remaining)
            if self._failure is not None:
                raise StateStoreError(str(self.path), f"the writer has failed: {self._failure}")

    def _commit_pending(self, target: int) -> None:
        """Commit what is pending unless ``target`` was reached meanwhile (caller holds _commit_lock)."""
        with self._lock:
            mine = self._committed < target and self._failure is None and not self._closed
            if mine:
                batch, self._pending = self._pending, _Batch()
                batch_target = self._enqueued
        if mine:
            self._commit_taken(batch, batch_target, [], forced_retention=True)

    def _sync_for_read(self) -> None:
        """Read-your-writes: wait until pending writes are committed (free when nothing is pending)."""
        with self._lock:
            if self._closed:
                raise StateStoreError(str(self.path), "the store is closed")
            if self._committed >= self._enqueued or self._failure is not None:
                return
        try:
            self.flush()
        except StateStoreError:
            # A failed writer is reported by health() and flush(); reads serve what was committed.
            return

    def _call_in_writer(self, fn: Callable[[sqlite3.Connection], _T], timeout: float = _FLUSH_TIMEOUT) -> _T:
        call = _Call(fn)
        with self._lock:
            if self._closed or self._closing:
                raise StateStoreError(str(self.path), "the store is closed")
            if self._failure is not None:
                raise StateStoreError(str(self.path), f"the writer has failed: {self._failure}")
            self._calls.append(call)
            self._work.notify()
        if not call.done.wait(timeout):
            raise StateStoreError(str(self.path), f"the writer did not answer within {timeout:g} s")
        if call.error is not None:
            raise StateStoreError(str(self.path), _sqlite_reason(call.error)) from call.error
        return cast(_T, call.result)

    # ------------------------------------------------------------------ the writer thread

    def _writer_main(self) -> None:
        try:
            self._writer_loop()
        except BaseException as exc:  # the writer must record why it stopped, whatever it was
            self._fail(f"writer thread crashed: {type(exc).__name__}: {exc}")

    def _writer_loop(self) -> None:
        while True:
            with self._lock:
                if self._pending.size == 0 and not self._calls and not self._closing:
                    self._writer_idle = True
                    while self._writer_idle and not (self._calls or self._flush_wanted or self._closing):
                        self._work.wait()
                    self._writer_idle = False
                # Woken for work: wait out the flush interval even if a flush() on another thread has
                # committed that work meanwhile (it usually has, in a chain of steps). Going idle again
                # at once would have the next write wake this thread again: one wake-up per step.
                deadline = time.monotonic() + self.flush_interval
                while not (
                    self._flush_wanted or self._calls or self._closing or self._pending.size >= _MAX_BATCH
                ):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._work.wait(remaining)
                if self._failure is not None:  # a commit in flush() failed: nothing more is written
                    return
            with self._commit_lock:
                with self._lock:
                    batch, self._pending = self._pending, _Batch()
                    calls, self._calls = self._calls, []
                    target = self._enqueued
                    self._flush_wanted = False
                    closing = self._closing
                    retention_forced = self._retention_due
                    self._retention_due = False
                if not self._commit_taken(batch, target, calls, forced_retention=retention_forced or closing):
                    return
                for call in calls:
                    try:
                        call.result = call.fn(self._writer_conn)
                    except BaseException as exc:  # handed to the caller, who raises StateStoreError
                        call.error = exc
                    call.done.set()
            if closing:
                with self._lock:
                    if self._pending.size == 0 and not self._calls:
                        return

    def _commit_taken(
        self, batch: _Batch, target: int, calls: list[_Call], *, forced_retention: bool
    ) -> bool:
        """Commit a batch taken from ``_pending`` (caller holds ``_commit_lock``); False if that failed."""
        if batch.size:
            try:
                self._commit(batch)
            except sqlite3.Error as exc:
                self._fail(f"commit of {batch.size} writes failed: {_sqlite_reason(exc)}", dropped=batch.size)
                _fail_calls(calls, exc)
                return False
            self._batches += 1
        self._maybe_retain(forced=forced_retention)
        with self._lock:
            self._committed = target
            self._done.notify_all()
        return True

    def _commit(self, batch: _Batch) -> None:
        conn = self._writer_conn
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for name, wf in batch.workflows.items():
                if wf is None:
                    conn.execute("DELETE FROM workflows WHERE name = ?", (name,))
                else:
                    conn.execute(
                        "INSERT INTO workflows (name, spec, source, created_at, updated_at) "
                        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                        "spec = excluded.spec, source = excluded.source, updated_at = excluded.updated_at",
                        (name, wf[0], wf[1], now, now),
                    )
            if batch.runs:
                conn.executemany(_SQL_UPSERT_RUN, batch.runs.values())
            if batch.steps:
                conn.executemany(_SQL_UPSERT_STEP, batch.steps.values())
            for sid, session in batch.sessions.items():
                if session is None:
                    conn.execute("DELETE FROM sessions WHERE id = ?", (sid,))
                else:
                    conn.execute(
                        "INSERT INTO sessions (id, data, status, created_at, updated_at) "
                        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET data = excluded.data, "
                        "status = excluded.status, updated_at = excluded.updated_at",
                        (sid, session[0], session[1], now, now),
                    )
            for pname, pdata in batch.projects.items():
                if pdata is None:
                    conn.execute("DELETE FROM projects WHERE name = ?", (pname,))
                else:
                    conn.execute(
                        "INSERT INTO projects (name, data, created_at, updated_at) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (name) DO UPDATE SET data = excluded.data, "
                        "updated_at = excluded.updated_at",
                        (pname, pdata, now, now),
                    )
            for aid, adata in batch.allocations.items():
                if adata is None:
                    conn.execute("DELETE FROM allocations WHERE id = ?", (aid,))
                else:
                    conn.execute(
                        "INSERT INTO allocations (id, data, created_at) VALUES (?, ?, ?) "
                        "ON CONFLICT (id) DO UPDATE SET data = excluded.data",
                        (aid, adata, now),
                    )
            if batch.events:
                conn.executemany("INSERT INTO events (ts, type, payload) VALUES (?, ?, ?)", batch.events)
            conn.execute("COMMIT")
        except BaseException:
            _rollback_quietly(conn)
            raise
        if batch.runs or batch.events:
            self._retention_dirty = True

    def _maybe_retain(self, *, forced: bool) -> None:
        if not self._retention_dirty:
            return
        now = time.monotonic()
        if not forced and now - self._last_retention < _RETENTION_EVERY:
            return
        self._last_retention = now
        self._retention_dirty = False
        try:
            self._retain()
        except sqlite3.Error as exc:
            # Retention is housekeeping: a failure is logged and retried later, never fatal.
            _log.warning("state_store_retention_failed", path=str(self.path), error=_sqlite_reason(exc))
            self._retention_dirty = True

    def _retain(self) -> None:
        conn = self._writer_conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            runs = int(conn.execute("SELECT count(*) FROM runs").fetchone()[0])
            excess = min(runs - self.retention_runs, _RETENTION_CHUNK)
            if excess > 0:
                marks = ",".join("?" * len(_TERMINAL_RUN))
                conn.execute(
                    f"DELETE FROM runs WHERE run_id IN (SELECT run_id FROM runs WHERE status IN ({marks}) "
                    "ORDER BY created_at, rowid LIMIT ?)",
                    (*_TERMINAL_RUN, excess),
                )
                if runs - self.retention_runs > _RETENTION_CHUNK:
                    self._retention_dirty = True
            # Event ids are contiguous except where retention deleted the oldest, so max(id) bounds it.
            row = conn.execute("SELECT min(id), max(id) FROM events").fetchone()
            if row[1] is not None:
                cut = min(row[1] - self.retention_events, row[0] + _RETENTION_CHUNK - 1)
                if cut >= row[0]:
                    conn.execute("DELETE FROM events WHERE id <= ?", (cut,))
                    if row[1] - self.retention_events > cut:
                        self._retention_dirty = True
            conn.execute("COMMIT")
        except BaseException:
            _rollback_quietly(conn)
            raise

    def _fail(self, reason: str, *, dropped: int = 0) -> None:
        _log.error("state_store_writer_failed", path=str(self.path), reason=reason)
        with self._lock:
            if self._failure is None:
                self._failure = reason
            self._dropped += dropped + self._pending.size
            self._pending = _Batch()
            self._committed = self._enqueued  # nothing is pending any more: it was all dropped
            calls, self._calls = self._calls, []
            self._done.notify_all()
        _fail_calls(calls, StateStoreError(str(self.path), reason))

    # ------------------------------------------------------------------ reads

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        self._sync_for_read()
        try:
            with self._read_lock:
                return self._reader_conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise StateStoreError(str(self.path), f"read failed: {_sqlite_reason(exc)}") from exc

    def load_workflows(self) -> list[tuple[WorkflowSpec, str]]:
        rows = self._read("SELECT spec, source FROM workflows ORDER BY created_at, name")
        return [(WorkflowSpec.model_validate_json(spec), source) for spec, source in rows]

    def get_run(self, run_id: str) -> RunRecord | None:
        rows = self._read("SELECT record FROM runs WHERE run_id = ?", (run_id,))
        if not rows:
            return None
        steps = self._read("SELECT result FROM steps WHERE run_id = ? ORDER BY rowid", (run_id,))
        return _build_run(rows[0][0], (s for (s,) in steps))

    def list_runs(
        self,
        *,
        workflow_name: str | None = None,
        status: WorkflowStatus | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        where, params = [], []
        if workflow_name is not None:
            where.append("workflow_name = ?")
            params.append(workflow_name)
        if status is not None:
            where.append("status = ?")
            params.append(WorkflowStatus(status).value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._read(
            f"SELECT run_id, record FROM runs {clause} ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (*params, max(0, limit)),
        )
        if not rows:
            return []
        steps: dict[str, list[str]] = {run_id: [] for run_id, _ in rows}
        for chunk in _chunks(list(steps), 500):
            marks = ",".join("?" * len(chunk))
            for run_id, result in self._read(
                f"SELECT run_id, result FROM steps WHERE run_id IN ({marks}) ORDER BY rowid", chunk
            ):
                steps[run_id].append(result)
        return [_build_run(record, steps[run_id]) for run_id, record in rows]

    def count_runs(self) -> dict[str, int]:
        """Stored runs by status value: one aggregate query, no records built."""
        return {
            str(status): int(n)
            for status, n in self._read("SELECT status, COUNT(*) FROM runs GROUP BY status")
        }

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        rows = self._read("SELECT data FROM sessions WHERE id = ?", (session_id,))
        return dict(json.loads(rows[0][0])) if rows else None

    def list_sessions(self, *, status: str | None = None) -> list[dict[str, Any]]:
        if status is None:
            rows = self._read("SELECT data FROM sessions ORDER BY created_at, rowid")
        else:
            rows = self._read(
                "SELECT data FROM sessions WHERE status = ? ORDER BY created_at, rowid", (status,)
            )
        return [dict(json.loads(data)) for (data,) in rows]

    def get_project(self, name: str) -> dict[str, Any] | None:
        rows = self._read("SELECT data FROM projects WHERE name = ?", (name,))
        return dict(json.loads(rows[0][0])) if rows else None

    def list_projects(self) -> list[dict[str, Any]]:
        return [dict(json.loads(data)) for (data,) in self._read("SELECT data FROM projects ORDER BY name")]

    def list_allocations(self) -> list[dict[str, Any]]:
        rows = self._read("SELECT data FROM allocations ORDER BY created_at, rowid")
        return [dict(json.loads(data)) for (data,) in rows]

    def list_events(self, limit: int = 100, type: str | None = None) -> list[dict[str, Any]]:
        """The most recent ``limit`` events (of ``type`` if given), newest first."""
        if type is None:
            rows = self._read(
                "SELECT id, ts, type, payload FROM events ORDER BY id DESC LIMIT ?", (max(0, limit),)
            )
        else:
            rows = self._read(
                "SELECT id, ts, type, payload FROM events WHERE type = ? ORDER BY id DESC LIMIT ?",
                (type, max(0, limit)),
            )
        return [_event_dict(*row) for row in rows]

    # ------------------------------------------------------------------ recovery, health, stats

    def recover(self) -> list[str]:
        """Mark every PENDING or RUNNING run INTERRUPTED (the process that ran it is gone).

        The engine calls this once at start, before it runs anything; it is never implicit, so a
        second process opening the same file (e.g. ``status`` from the CLI) does not interrupt the runs
        of a live server. Steps are left as they were, so a resume can tell completed ones from the rest.

        Returns:
            The ids of the runs marked, oldest first.
        """
        self.flush()

        def mark(conn: sqlite3.Connection) -> list[str]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = conn.execute(
                    "SELECT run_id, record FROM runs WHERE status IN (?, ?) ORDER BY created_at, rowid",
                    _ACTIVE_RUN,
                ).fetchall()
                now = time.time()
                conn.executemany(
                    "UPDATE runs SET status = ?, record = ?, updated_at = ? WHERE run_id = ?",
                    [(WorkflowStatus.INTERRUPTED.value, _interrupted(rec), now, rid) for rid, rec in rows],
                )
                conn.execute("COMMIT")
            except BaseException:
                _rollback_quietly(conn)
                raise
            return [rid for rid, _ in rows]

        ids = self._call_in_writer(mark)
        if ids:
            _log.warning("state_store_runs_interrupted", path=str(self.path), run_ids=ids)
        return ids

    def health(self, timeout: float = 5.0) -> dict[str, Any]:
        """A real check: the file is still there, a probe row is written and read back in a transaction.

        Returns:
            ``{"ok": bool, "reason": str, "kind": "sqlite", "path", "last_error", "pending_writes",
            "dropped_writes"}``; never raises.
        """
        with self._lock:
            failure, pending, dropped = self._failure, self._enqueued - self._committed, self._dropped
            closed = self._closed or self._closing
        report: dict[str, Any] = {
            "ok": False,
            "reason": "",
            "kind": "sqlite",
            "path": str(self.path),
            "last_error": failure,
            "pending_writes": pending,
            "dropped_writes": dropped,
        }
        if closed:
            report["reason"] = "the store is closed"
            return report
        if failure is not None:
            report["reason"] = f"the writer has failed: {failure}"
            return report
        if not self._thread.is_alive():
            report["reason"] = "the writer thread is not running"
            return report
        current = _inode(self.path)
        if current != self._inode:
            report["reason"] = (
                "the database file was removed or replaced while open"
                if current is None
                else "the database file was replaced by another file while open"
            )
            return report
        try:
            token = self._call_in_writer(_probe, timeout=timeout)
            with self._read_lock:
                row = self._reader_conn.execute("SELECT token FROM probe WHERE id = 1").fetchone()
        except StateStoreError as exc:
            report["reason"] = exc.reason
            return report
        except sqlite3.Error as exc:
            report["reason"] = f"read failed: {_sqlite_reason(exc)}"
            return report
        if row is None or row[0] != token:
            report["reason"] = "a probe row written was not read back"
            return report
        report["ok"] = True
        report["reason"] = "readable and writable"
        return report

    def stats(self) -> dict[str, Any]:
        """Row counts per table, file sizes and writer counters; never raises."""
        rows: dict[str, int] = {}
        tables = ("workflows", "runs", "steps", "sessions", "projects", "allocations", "events")
        try:
            for table in tables:
                rows[table] = int(self._read(f"SELECT count(*) FROM {table}")[0][0])
        except StateStoreError as exc:
            rows = {}
            _log.warning("state_store_stats_failed", path=str(self.path), error=exc.reason)
        sizes = {}
        for suffix in ("", "-wal", "-shm"):
            try:
                sizes[suffix] = os.path.getsize(f"{self.path}{suffix}")
            except OSError:
                sizes[suffix] = 0
        with self._lock:
            return {
                "kind": "sqlite",
                "path": str(self.path),
                "schema_version": SCHEMA_VERSION,
                "rows": rows,
                "file_bytes": sizes[""],
                "wal_bytes": sizes["-wal"],
                "pending_writes": self._enqueued - self._committed,
                "dropped_writes": self._dropped,
                "batches_committed": self._batches,
                "last_error": self._failure,
            }

    # ------------------------------------------------------------------ closing

    def close(self, timeout: float = _CLOSE_TIMEOUT) -> None:
        """Commit what is pending, stop the writer (bounded wait) and close the file. Idempotent.

        A writer failure was already reported by health() and flush(); close logs it and does not raise,
        so shutting the engine down always completes.
        """
        with self._lock:
            if self._closed:
                return
            self._closing = True
            self._work.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            _log.error("state_store_writer_stuck", path=str(self.path), timeout=timeout)
        with self._lock:
            self._closed = True
            self._done.notify_all()
            lost = self._enqueued - self._committed
        if self._failure is not None or lost:
            _log.error("state_store_closed_with_loss", path=str(self.path), lost=lost, reason=self._failure)
        if not self._thread.is_alive():
            with self._commit_lock:  # a flush() committing on its own thread finishes first
                try:
                    self._writer_conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    pass  # a checkpoint is an optimisation; the WAL is replayed at the next open anyway
                _close_quietly(self._writer_conn)
        with self._read_lock:
            _close_quietly(self._reader_conn)

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- SQLite helpers


def _probe(conn: sqlite3.Connection) -> str:
    """Write a fresh token to the probe row and read it back, inside one transaction."""
    token = uuid.uuid4().hex
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "INSERT INTO probe (id, token, ts) VALUES (1, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET token = excluded.token, ts = excluded.ts",
            (token, time.time()),
        )
        row = conn.execute("SELECT token FROM probe WHERE id = 1").fetchone()
        if row is None or row[0] != token:
            raise sqlite3.DatabaseError("the probe row just written could not be read back")
        conn.execute("COMMIT")
    except BaseException:
        _rollback_quietly(conn)
        raise
    return token


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _sqlite_reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, sqlite3.DatabaseError) and "not a database" in text:
        return f"{text} (the file is corrupt or is not an SQLite database; move it away to start afresh)"
    return text


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _rollback_quietly(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # the original error is the one worth reporting


def _close_quietly(*conns: sqlite3.Connection | None) -> None:
    for conn in conns:
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass  # closing after a failure; the failure is already reported


def _fail_calls(calls: list[_Call], exc: BaseException) -> None:
    for call in calls:
        call.error = exc
        call.done.set()
