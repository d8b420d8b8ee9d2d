"""Durable state: the ``StateStore`` contracts, and their two implementations' public faces.

:class:`MemoryStore` keeps everything in dicts (``_store_memory``). :class:`SqliteStore` is one SQLite
file under ``.workflows/`` composed of parts, each owning its state: the schema and migrations
(``_store_schema``), the group-commit writer (``_store_writer``), retention (``_store_retention``) and
the reads (``_store_reads``). A worker thread recording a step transition pays a serialisation and a
dict insert; only a thread that asks for durability now (``flush()``) commits, on its own thread.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from ..config import DEFAULT_MAX_PARAMETERS_BYTES, DEFAULT_STATE_MAX_BYTES
from ..errors import StateStoreError
from ..logs import get_logger
from ._run_owners import owner_alive
from ._step_cache import CacheTable, MemoryCacheTable, SqliteCacheTable
from ._store_admission import Admissions
from ._store_batch import DELETE, Batch
from ._store_codec import (
    ACTIVE_RUN,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_HOUSEKEEPING_INTERVAL,
    DEFAULT_RETENTION_EVENTS,
    DEFAULT_RETENTION_GRACE,
    DEFAULT_RETENTION_RUNS,
    check_intervals,
    check_limits,
    check_parameters,
    check_retention,
    dump_data,
    dump_run,
    dump_step,
    interrupted,
    interrupted_step,
    run_cursor,
    run_estimate,
    spill_bytes,
    status_of,
)
from ._store_health import Damage, health_problem
from ._store_memory import MemoryStore
from ._store_orphans import tidy_spills
from ._store_pages import give_back_for
from ._store_reads import RunReads, StoreReader
from ._store_retention import Retention, forget_workflow
from ._store_schema import (
    SCHEMA_VERSION,
    inode,
    open_database,
    rollback_quietly,
    wal_limit_for,
)
from ._store_tool_tasks import MemoryToolTasks, SqliteToolTasks, ToolTaskStore
from ._store_writer import CLOSE_TIMEOUT, FLUSH_TIMEOUT, GroupCommitWriter
from .models import ItemWindow, RunRecord, StepResult, TaskStatus, WorkflowSpec, WorkflowStatus, utcnow

# CacheTable, ToolTaskStore and their memory forms are here for whoever writes a store of their own:
# EngineStateStore's step_cache and tool_tasks are typed by them.
__all__ = [
    "DEFAULT_FLUSH_INTERVAL",
    "DEFAULT_MAX_PARAMETERS_BYTES",
    "DEFAULT_RETENTION_EVENTS",
    "DEFAULT_RETENTION_GRACE",
    "DEFAULT_RETENTION_RUNS",
    "DEFAULT_STATE_MAX_BYTES",
    "SCHEMA_VERSION",
    "CacheTable",
    "EngineStateStore",
    "MemoryCacheTable",
    "MemoryStore",
    "MemoryToolTasks",
    "SqliteStore",
    "StateStore",
    "ToolTaskStore",
    "run_cursor",
]

_log = get_logger("codomyrmex_orchestration.store")

#: At most this long at open giving back free pages (measured: 50-100 MB a second); the rest
#: goes a chunk per housekeeping pass.
_OPEN_GIVE_BACK_SECONDS = 1.0


# --------------------------------------------------------------------------- contracts


class StateStore(Protocol):
    """What the WorkflowManager needs: workflows created through the API, runs and step results."""

    # True when what is saved outlives the process: the manager then saves every step as it is
    # created, starts and finishes, so that after a crash recovery knows what was done and what was in
    # flight. A store that dies with the process gets a run's row when it starts and its whole record,
    # steps included, when it ends (while it runs, it is read from the manager itself).
    durable: bool
    # Cached step outputs (core/_step_cache.py), counted in the byte budget where there is one.
    step_cache: CacheTable
    # The most bytes of JSON a run's parameters may take (check_budget refuses more; definitions' default
    # parameters are held to it as they are validated).
    max_parameters_bytes: int

    def save_workflow(self, spec: WorkflowSpec, source: str) -> None: ...
    # With ``versions_upto``: the name's versions up to that one go too, once no stored run refers to one.
    def delete_workflow(self, name: str, versions_upto: int | None = None) -> None: ...
    def load_workflows(self) -> list[tuple[WorkflowSpec, str]]: ...
    # Definition versions: kept while they are the newest of their name or a stored run refers to one
    # (RunRecord.workflow_version); a (name, version) once saved never changes.
    def save_workflow_version(self, name: str, version: int, digest: str, source: str) -> None: ...
    def get_workflow_version(self, name: str, version: int) -> str | None: ...
    def workflow_versions(self, name: str) -> list[int]: ...  # the kept versions of ``name``, ascending
    def latest_workflow_versions(self) -> dict[str, tuple[int, str]]: ...
    def save_run(self, record: RunRecord) -> None: ...
    def save_step(self, run_id: str, step: StepResult) -> None: ...
    # ``items``: each map step lists only that window of its items (see ItemWindow), all when None.
    def get_run(self, run_id: str, *, items: ItemWindow | None = None) -> RunRecord | None: ...
    # The runs started by the steps of run ``parent_run_id`` (workflow.run), oldest first, without steps.
    def sub_runs(self, parent_run_id: str) -> list[RunRecord]: ...
    # Newest first (created_at, then run_id, descending). ``since``/``until``: a [since, until) window
    # on created_at; ``cursor``: run_cursor() of the last run of the previous page; ``steps=False``:
    # summaries, the runs' own fields alone (``steps`` empty: no step is read); ``parent_run_id``: only the
    # sub-runs started by that run's steps.
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
    ) -> list[RunRecord]: ...
    def count_runs(self) -> dict[str, int]: ...
    # Refuse (LimitExceededError) a new run whose parameters are too large or that the state has no
    # room for; the run start path calls it before saving the run.
    # With ``run_id``, the run's estimated record is held until it is committed (or released).
    def check_budget(
        self,
        parameters: Mapping[str, Any] | None = None,
        *,
        steps: int | None = None,
        run_id: str | None = None,
    ) -> None: ...
    def release_admission(self, run_id: str) -> None: ...  # the run's start failed: its room goes back
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
    # The newest ``limit`` (``None``: all), oldest first.
    def list_sessions(
        self, *, status: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]: ...
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
    @property
    def tool_tasks(self) -> ToolTaskStore: ...
    def health(self) -> dict[str, Any]: ...
    def stats(self) -> dict[str, Any]: ...


class SqliteStore(RunReads):
    """The durable :class:`EngineStateStore`: one SQLite file (WAL), written by one group-committing thread.

    Writes (``save_*``, ``delete_*``, ``append_event``) serialise their argument on the calling thread,
    enqueue it and return; repeated saves of the same run, step, session, ... coalesce. The writer
    commits a batch every ``flush_interval`` seconds, or at once when the batch is large; :meth:`flush`
    commits what is pending on the calling thread (no round trip through the writer). Reads see every
    write made before them (read-your-writes): a read first waits for pending writes to be committed,
    which costs nothing when the queue is empty. We chose this over an in-memory overlay because filtered,
    ordered listings (``list_runs``) would otherwise have to merge two sources; reads are rare next to
    writes (the WorkflowManager keeps live runs in memory).

    Durability: ``synchronous=NORMAL`` in WAL mode survives a process crash for every committed batch;
    a ``kill -9`` loses at most the writes not yet committed (at most ``flush_interval`` seconds of
    them). :meth:`flush` returns only when everything enqueued before it is committed; a partial flush
    (``upto=``, or ``wait=False``: a step's or a run's path) commits the state writes alone and leaves
    the event log (:meth:`append_event`) to the writer's next batch. A power loss may additionally lose
    the last committed transactions (NORMAL does not fsync each commit).

    If a commit fails for a reason that passes (a lock another process holds, a full disk), its writes
    are kept and committed again with backoff (``_store_stall``): meanwhile :meth:`health` reports it,
    :meth:`flush` raises, :meth:`check_budget` refuses new work, later writes wait (up to a bound) and
    reads serve what was committed. If the writer fails for good (a damaged or read-only file), the
    failure is recorded: :meth:`health` reports it, :meth:`flush` raises :class:`StateStoreError`, later
    writes are dropped and counted (:attr:`lost_writes`). Nothing raises into the thread that called
    ``save_*``.

    Args:
        path: the database file (the engine passes ``<state_dir>/state.db``); its directory is created.
        retention_runs: finished runs kept (oldest finished ones are deleted, with their steps); runs not
            finished (running, waiting for input) do not count and are never deleted.
        retention_grace: seconds a finished run is kept after its last save whatever ``retention_runs``.
        retention_events: events kept (oldest deleted).
        flush_interval: seconds the writer waits to gather a batch before committing it.
        max_bytes: the byte budget (``None``: none): run records, step results, spill files and cached
            step outputs together. Past it, cached outputs go first, then the oldest finished runs with
            their spill folders (and the oldest spill files of tasks outside runs), and
            :meth:`check_budget` refuses new work while it cannot be met.
        max_parameters_bytes: the most bytes of JSON a run's parameters may take (:meth:`check_budget`).
        spill_dir: where step outputs are spilled (default: ``outputs`` beside the database file, as
            the engine lays it out).
        housekeeping_interval: seconds between trims to the run and event limits (the budget: every commit).

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
        max_bytes: int | None = DEFAULT_STATE_MAX_BYTES,
        max_parameters_bytes: int = DEFAULT_MAX_PARAMETERS_BYTES,
        spill_dir: Path | str | None = None,
        housekeeping_interval: float = DEFAULT_HOUSEKEEPING_INTERVAL,
        retention_grace: float = DEFAULT_RETENTION_GRACE,
    ) -> None:
        check_retention(retention_runs, retention_events, retention_grace)
        check_limits(max_bytes, max_parameters_bytes)
        check_intervals(flush_interval=flush_interval, housekeeping_interval=housekeeping_interval)
        self.path = Path(path).absolute()
        self.max_parameters_bytes = max_parameters_bytes
        where = str(self.path)
        self._retention = Retention(
            where,
            runs=retention_runs,
            events=retention_events,
            max_bytes=max_bytes,
            spill_dir=Path(spill_dir) if spill_dir is not None else self.path.parent / "outputs",
            wal_reserve=wal_limit_for(max_bytes) if max_bytes is not None else 0,
            every=housekeeping_interval,
            grace=retention_grace,
        )
        writer_conn, reader_conn = open_database(self.path, wal_limit=wal_limit_for(max_bytes))
        self._inode = inode(self.path)
        # The first sign of a damaged file any read or commit meets: health() is not ok from then on.
        self._damage = Damage()
        self._admissions = Admissions(self._retention)
        self._writer = GroupCommitWriter(
            writer_conn,
            where,
            self._retention,
            flush_interval=flush_interval,
            damage=self._damage,
            on_runs_committed=self._admissions.committed,
        )
        self._reads = StoreReader(reader_conn, where, self._writer.sync_for_read, self._damage)
        self.step_cache: CacheTable = SqliteCacheTable(self._writer, self._reads)
        #: The records of tool calls run as MCP tasks (``server/_tasks.py``).
        self.tool_tasks = SqliteToolTasks(self._writer.call)
        # Measure the bytes used and apply limits lowered since the last start (no scan of the history),
        # then give back the pages that freed (and any a previous process left free), for a bounded time:
        # the housekeeping passes give back the rest a chunk at a time.
        self._writer.run_retention()
        wal_bytes = wal_limit_for(max_bytes)
        self._writer.call(partial(give_back_for, wal_bytes=wal_bytes, seconds=_OPEN_GIVE_BACK_SECONDS))

    @property
    def retention_runs(self) -> int:
        return self._retention.runs

    @property
    def retention_events(self) -> int:
        return self._retention.events

    @property
    def flush_interval(self) -> float:
        return self._writer.flush_interval

    @property
    def max_bytes(self) -> int | None:
        return self._retention.max_bytes

    def check_budget(
        self,
        parameters: Mapping[str, Any] | None = None,
        *,
        steps: int | None = None,
        run_id: str | None = None,
    ) -> None:
        """Refuse new work the state directory has no room for; call it before a run starts.

        Args:
            parameters: the new run's parameters, checked against ``max_parameters_bytes``.
            steps: a new run's step count: its record (estimated, :func:`run_estimate`) must fit too, so
                a run is refused before it would take the bytes used past the budget.
            run_id: the new run's id: its estimate is held until its first record is committed (or
                :meth:`release_admission`), so runs admitted at once cannot all count the same room.

        Raises:
            LimitExceededError: the parameters are too large, or the bytes used (with the new run's) are
                over ``max_bytes`` even after evicting every finished run (naming the budget and setting).
            StateStoreError: nothing can be saved now (the cause, and what to do, in the message).
        """
        if (problem := self._writer.saving_problem()) is not None:
            raise StateStoreError(str(self.path), f"new work is refused while {problem}")
        size = check_parameters(parameters, self.max_parameters_bytes)
        adding = 0 if steps is None else run_estimate(size, steps)
        self._admissions.admit(adding, run_id, evict=self._writer.run_retention)

    def release_admission(self, run_id: str) -> None:
        """Give back the room :meth:`check_budget` held for ``run_id``, whose start failed."""
        self._admissions.release(run_id)

    def make_room_for_spill(self, nbytes: int, *, reserve: bool = False, evict_runs: bool = False) -> bool:
        """See :meth:`Retention.make_room`: room for a spill of ``nbytes`` (``reserve``: held for it;
        ``evict_runs``: the writer evicts finished runs now if need be, raising StateStoreError if it
        cannot)."""
        evict = self._writer.run_retention if evict_runs else None
        return self._retention.make_room(nbytes, reserve=reserve, evict=evict)

    def release_spill_room(self, nbytes: int) -> None:
        self._retention.release_room(nbytes)

    def note_task_spill(self, path: Path, nbytes: int, *, reserved: bool = False) -> None:
        """A task's output (outside any run) was spilled to ``path``: it counts against the budget now."""
        self._retention.note_task_spill(str(path), nbytes, reserved=reserved)

    # ------------------------------------------------------------------ writes (queued)

    def save_workflow(self, spec: WorkflowSpec, source: str) -> None:
        row = (spec.model_dump_json(), source)
        self._writer.enqueue(lambda b: b.workflows.__setitem__(spec.name, row))

    def delete_workflow(self, name: str, versions_upto: int | None = None) -> None:
        """Forget ``name``; with ``versions_upto``, its versions up to it once no run refers to one."""
        self._writer.enqueue(partial(forget_workflow, name=name, versions_upto=versions_upto))

    def save_workflow_version(self, name: str, version: int, digest: str, source: str) -> None:
        """Keep version ``version`` of workflow ``name`` (its spec JSON ``source``); no-op if kept."""
        self._writer.enqueue(lambda b: b.workflow_versions.__setitem__((name, version), (digest, source)))

    def save_run(self, record: RunRecord) -> None:
        now = time.time()
        row = (
            record.run_id,
            record.workflow_name,
            record.status.value,
            dump_run(record),
            record.created_at.timestamp(),
            now,
            record.session_id,
            record.parent_run_id,
            record.workflow_version,
        )
        steps = [
            (
                (record.run_id, name),
                (s.status.value, dump_step(s), now, spill_bytes(s), record.run_id, name),
            )
            for name, s in record.steps.items()
        ]

        def put(b: Batch) -> None:
            b.runs[record.run_id] = row
            b.steps.update(steps)

        self._writer.enqueue(put)

    def save_step(self, run_id: str, step: StepResult) -> None:
        row = (step.status.value, dump_step(step), time.time(), spill_bytes(step), run_id, step.name)
        self._writer.enqueue(lambda b: b.steps.__setitem__((run_id, step.name), row))

    def save_session(self, session_id: str, data: Mapping[str, Any]) -> None:
        row = (dump_data(data), status_of(data))
        self._writer.enqueue(lambda b: b.sessions.__setitem__(session_id, row))

    def delete_session(self, session_id: str) -> None:
        self._writer.enqueue(lambda b: b.sessions.__setitem__(session_id, DELETE))

    def save_project(self, name: str, data: Mapping[str, Any]) -> None:
        raw = dump_data(data)
        self._writer.enqueue(lambda b: b.projects.__setitem__(name, raw))

    def delete_project(self, name: str) -> None:
        self._writer.enqueue(lambda b: b.projects.__setitem__(name, DELETE))

    def save_allocation(self, allocation_id: str, data: Mapping[str, Any]) -> None:
        raw = dump_data(data)
        self._writer.enqueue(lambda b: b.allocations.__setitem__(allocation_id, raw))

    def delete_allocation(self, allocation_id: str) -> None:
        self._writer.enqueue(lambda b: b.allocations.__setitem__(allocation_id, DELETE))

    def append_event(self, type: str, payload: Mapping[str, Any] | None = None) -> None:
        self._writer.append_log((time.time(), type, dump_data(payload or {})))

    # ------------------------------------------------------------------ flushing

    def write_mark(self) -> int:
        """A mark of the writes enqueued so far: ``flush(upto=mark)`` waits for those alone."""
        return self._writer.write_mark()

    def flush(self, timeout: float = FLUSH_TIMEOUT, *, upto: int | None = None, wait: bool = True) -> None:
        """Block until every write enqueued before this call (or before ``upto``, a
        :meth:`write_mark`) is committed.

        With ``wait=False``: commit now on this thread unless another thread is committing already, and
        never wait; what that commit did not take is committed by the next flush or by the writer.

        Raises:
            StateStoreError: the writer has failed (the reason is in the message), or did not commit
                within ``timeout`` seconds.
        """
        self._writer.flush(timeout, upto=upto, wait=wait)

    # ------------------------------------------------------------------ reads

    def load_workflows(self) -> list[tuple[WorkflowSpec, str]]:
        return self._reads.load_workflows()

    def get_workflow_version(self, name: str, version: int) -> str | None:
        return self._reads.workflow_version(name, version)

    def workflow_versions(self, name: str) -> list[int]:
        return self._reads.workflow_versions(name)

    def latest_workflow_versions(self) -> dict[str, tuple[int, str]]:
        return self._reads.latest_workflow_versions()

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        return self._reads.get_session(session_id)

    def list_sessions(self, *, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        return self._reads.list_sessions(status=status, limit=limit)

    def get_project(self, name: str) -> dict[str, Any] | None:
        return self._reads.get_project(name)

    def list_projects(self) -> list[dict[str, Any]]:
        return self._reads.list_projects()

    def list_allocations(self) -> list[dict[str, Any]]:
        return self._reads.list_allocations()

    def list_events(self, limit: int = 100, type: str | None = None) -> list[dict[str, Any]]:
        """The most recent ``limit`` events (of ``type`` if given), newest first."""
        return self._reads.list_events(limit, type)

    # ------------------------------------------------------------------ recovery, health, stats

    def recover(self) -> list[str]:
        """Mark every PENDING or RUNNING run INTERRUPTED (its process is gone), except those whose
        ``_run_owners`` lock (beside this file) a live process holds: a CLI ``run`` or ``resume``.

        Called once by the engine at start, never implicitly (a ``status`` opening the file must not
        interrupt a live server's runs). Its RUNNING steps and items become INTERRUPTED (finished now, an
        error saying why); the others stay as they were, so a resume sees the completed ones. Then what
        dead processes left in the spill folder goes: temporary files of half-written spills, folders of
        runs whose rows are gone (``_store_orphans``).

        Returns:
            The ids of the runs marked, oldest first.
        """
        self.flush()
        ids = self._writer.call(partial(_mark_interrupted, owned=partial(owner_alive, self.path.parent)))
        if ids:
            _log.warning("state_store_runs_interrupted", path=str(self.path), run_ids=ids)
        spill_dir = self._retention.spill_dir
        if spill_dir is not None:
            try:
                files, folders = tidy_spills(
                    spill_dir, state_dir=self.path.parent, stored=self._reads.stored_folders, interrupted=ids
                )
            except StateStoreError as exc:  # the spill folder is tidied at a later start
                _log.warning("state_store_spills_not_tidied", path=str(self.path), error=exc.reason)
                return ids
            if files or folders:
                _log.info("state_store_spills_tidied", path=str(spill_dir), files=files, folders=folders)
        return ids

    def health(self, timeout: float = 5.0) -> dict[str, Any]:
        """A real check: the file is still there, a probe row is written and read back in a transaction.

        Returns:
            ``{"ok": bool, "reason": str, "kind": "sqlite", "path", "last_error", "pending_writes",
            "dropped_writes", "bytes_used", "max_bytes", "spill_bytes_tasks"}``; never raises. Being
            over the byte budget is not unhealthy: new work is refused, what runs goes on.
        """
        state = self._writer.state()
        report: dict[str, Any] = {
            "ok": False,
            "reason": "",
            "kind": "sqlite",
            "path": str(self.path),
            "last_error": state.failure or state.stalled,
            "pending_writes": state.pending,
            "dropped_writes": state.dropped,
            **self._bytes_report(),
        }
        report["reason"] = health_problem(self._writer, self._reads, self.path, self._inode, timeout=timeout)
        if not report["reason"]:
            report["ok"] = True
            report["reason"] = "readable and writable"
        return report

    def stats(self) -> dict[str, Any]:
        """Row counts per table, file sizes and writer counters; never raises."""
        try:
            rows = self._reads.count_rows()
        except StateStoreError as exc:
            rows = {}
            _log.warning("state_store_stats_failed", path=str(self.path), error=exc.reason)
        sizes = {}
        for suffix in ("", "-wal", "-shm"):
            try:
                sizes[suffix] = os.path.getsize(f"{self.path}{suffix}")
            except OSError:
                sizes[suffix] = 0
        state = self._writer.state()
        return {
            "kind": "sqlite",
            "path": str(self.path),
            "schema_version": SCHEMA_VERSION,
            "rows": rows,
            "file_bytes": sizes[""],
            "wal_bytes": sizes["-wal"],
            "pending_writes": state.pending,
            "dropped_writes": state.dropped,
            "batches_committed": state.batches,
            "last_error": state.failure or state.stalled,
            **self._bytes_report(),
        }

    def _bytes_report(self) -> dict[str, Any]:
        usage = self._retention.usage
        return {
            "bytes_used": usage.total,
            "max_bytes": usage.max_bytes,
            "spill_bytes_tasks": usage.task_spill,
        }

    @property
    def lost_writes(self) -> int:
        """Writes never committed and never to be: dropped by a failed writer, or by closing while
        commits failed (for an exit status: non-zero once the store has closed with any)."""
        return self._writer.state().dropped

    # ------------------------------------------------------------------ closing

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Commit what is pending, stop the writer (bounded wait) and close the file. Idempotent.

        A writer failure was already reported by health() and flush(); close logs it and does not raise,
        so shutting the engine down always completes.
        """
        if self._writer.close(timeout):
            self._reads.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _mark_interrupted(conn: sqlite3.Connection, owned: Callable[[str], bool]) -> list[str]:
    """On the writer connection: every PENDING or RUNNING run becomes INTERRUPTED, except those ``owned``
    by a live process and their sub-workflow runs, and so do its RUNNING steps and items; the ids marked,
    oldest first."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        active = conn.execute(
            "SELECT run_id, record, parent_run_id FROM runs WHERE status IN (?, ?) "
            "ORDER BY created_at, rowid",
            ACTIVE_RUN,
        ).fetchall()
        kept: set[str] = set()
        rows = []
        for rid, rec, parent in active:  # a parent was created before its children
            if parent in kept or owned(rid):
                kept.add(rid)
            else:
                rows.append((rid, rec))
        now = time.time()
        conn.executemany(
            "UPDATE runs SET status = ?, record = ?, updated_at = ? WHERE run_id = ?",
            [(WorkflowStatus.INTERRUPTED.value, interrupted(rec), now, rid) for rid, rec in rows],
        )
        when, steps = utcnow(), []
        for rid, _ in rows:  # a few rows each: at most the steps and items in flight when it died
            for name, result in conn.execute(
                "SELECT name, result FROM steps WHERE run_id = ? AND status = ?",
                (rid, TaskStatus.RUNNING.value),
            ):
                steps.append((TaskStatus.INTERRUPTED.value, interrupted_step(result, when), now, rid, name))
        conn.executemany(
            "UPDATE steps SET status = ?, result = ?, updated_at = ? WHERE run_id = ? AND name = ?", steps
        )
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)
        raise
    return [rid for rid, _ in rows]
