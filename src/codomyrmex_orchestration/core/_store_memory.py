"""The in-memory state store: every table a dict of JSON snapshots, one lock, nothing survives the process.

It owns its runs (with a heap of finished ones for retention), workflows, sessions, projects,
allocations and a bounded deque of events.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import json
import threading
import time
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..config import DEFAULT_MAX_PARAMETERS_BYTES
from ._map_items import window_record
from ._step_cache import CacheTable, MemoryCacheTable
from ._store_codec import (
    ACTIVE_RUN,
    DEFAULT_RETENTION_EVENTS,
    DEFAULT_RETENTION_GRACE,
    DEFAULT_RETENTION_RUNS,
    STEPS_JSON,
    TERMINAL_RUN,
    build_run,
    check_limits,
    check_parameters,
    check_retention,
    dump_data,
    dump_run,
    dump_step,
    event_dict,
    grace_cutoff,
    interrupted,
    interrupted_step,
    parse_cursor,
    status_of,
    window,
)
from ._store_tool_tasks import MemoryToolTasks
from .models import ItemWindow, RunRecord, StepResult, TaskStatus, WorkflowSpec, WorkflowStatus, utcnow

__all__ = ["MemoryStore"]


@dataclass
class _MemRun:
    seq: int
    created: float
    workflow_name: str
    status: str
    record: str
    saved: float = 0.0  # time.time() of its last save: a finished run is kept retention_grace after it
    version: int | None = None  # the definition version the run refers to
    parent: str | None = None  # the run whose step started this one (workflow.run)
    # The steps of the last save_run that had any, as one JSON object (see STEPS_JSON), and the
    # others one by one (saved by save_step, or from an older batch): never the same step in both.
    batch: bytes | None = None
    batch_size: int = 0
    steps: dict[str, str] = field(default_factory=dict)

    def unbatch(self, keep_out: Container[str]) -> None:
        """Move the batch's steps not in ``keep_out`` to ``steps`` (rare: a run saved step by step
        after a batch, or saved again with steps)."""
        if self.batch is not None:
            for name, step in STEPS_JSON.validate_json(self.batch).items():
                if name not in keep_out:
                    self.steps[name] = dump_step(step)
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
        max_parameters_bytes: int = DEFAULT_MAX_PARAMETERS_BYTES,
        retention_grace: float = DEFAULT_RETENTION_GRACE,
    ) -> None:
        check_retention(retention_runs, retention_events, retention_grace)
        check_limits(None, max_parameters_bytes)
        self.max_parameters_bytes = max_parameters_bytes
        self.retention_runs = retention_runs
        self.retention_events = retention_events
        self.retention_grace = retention_grace
        # Guards every table below; held for dict operations only, never across I/O or decoding.
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._event_ids = itertools.count(1)
        self._workflows: dict[str, tuple[str, str]] = {}
        # Definition versions: (name, version) -> (digest, spec JSON), each name's newest version, and
        # how many kept runs refer to each (a version goes when it is neither newest nor referred to).
        self._versions: dict[tuple[str, int], tuple[str, str]] = {}
        self._newest: dict[str, int] = {}
        self._version_refs: collections.Counter[tuple[str, int]] = collections.Counter()
        # Deleted names -> their newest version then: versions up to it go once no run refers to them.
        self._deleted: dict[str, int] = {}
        self._runs: dict[str, _MemRun] = {}
        # Finished runs, oldest first, for retention: (created, seq, run_id). Entries of runs that were
        # saved unfinished again (resumed) or already trimmed are stale and skipped when popped.
        # Retention counts finished runs alone (_finished_count): unfinished ones cannot be trimmed.
        self._finished: list[tuple[float, int, str]] = []
        self._finished_count = 0
        self._sessions: dict[str, str] = {}
        self._projects: dict[str, str] = {}
        self._allocations: dict[str, str] = {}
        #: The records of tool calls run as MCP tasks (``server/_tasks.py``).
        self.tool_tasks = MemoryToolTasks()
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=retention_events)
        self.step_cache: CacheTable = MemoryCacheTable()  # its own lock
        self._closed = False

    # workflows
    def save_workflow(self, spec: WorkflowSpec, source: str) -> None:
        raw = spec.model_dump_json()
        with self._lock:
            self._workflows[spec.name] = (raw, source)

    def delete_workflow(self, name: str, versions_upto: int | None = None) -> None:
        with self._lock:
            self._workflows.pop(name, None)
            if versions_upto is not None:
                self._deleted[name] = max(versions_upto, self._deleted.get(name, 0))
                for key in [key for key in self._versions if key[0] == name and key[1] <= versions_upto]:
                    self._drop_version_if_unused(key)

    def load_workflows(self) -> list[tuple[WorkflowSpec, str]]:
        with self._lock:
            items = list(self._workflows.values())
        return [(WorkflowSpec.model_validate_json(raw), source) for raw, source in items]

    def save_workflow_version(self, name: str, version: int, digest: str, source: str) -> None:
        with self._lock:
            self._versions.setdefault((name, version), (digest, source))
            previous = self._newest.get(name)
            if previous is None or version > previous:
                self._newest[name] = version
                if previous is not None:
                    self._drop_version_if_unused((name, previous))

    def get_workflow_version(self, name: str, version: int) -> str | None:
        with self._lock:
            kept = self._versions.get((name, version))
        return kept[1] if kept is not None else None

    def workflow_versions(self, name: str) -> list[int]:
        with self._lock:
            return sorted(v for n, v in self._versions if n == name)

    def latest_workflow_versions(self) -> dict[str, tuple[int, str]]:
        with self._lock:
            latest = {name: (v, self._versions[(name, v)][0]) for name, v in self._newest.items()}
            for name, upto in self._deleted.items():  # numbers go on past a deleted name's versions
                if upto > latest.get(name, (0, ""))[0]:
                    latest[name] = (upto, "")
            return latest

    def _drop_version_if_unused(self, key: tuple[str, int]) -> None:
        name, version = key
        deleted = self._deleted.get(name, 0) >= version  # a deleted name's: its newest goes too
        if self._version_refs[key] > 0 or (self._newest.get(name) == version and not deleted):
            return
        self._versions.pop(key, None)
        self._version_refs.pop(key, None)
        if deleted:
            left = [v for n, v in self._versions if n == name]
            if self._newest.get(name) == version:
                if left:
                    self._newest[name] = max(left)
                else:
                    del self._newest[name]
            if not any(v <= self._deleted[name] for v in left):
                del self._deleted[name]

    # runs
    def save_run(self, record: RunRecord) -> None:
        raw = dump_run(record)
        # A non-JSON step output is stored as its repr, as dump_step does.
        batch = STEPS_JSON.dump_json(record.steps, fallback=repr) if record.steps else None
        with self._lock:
            run = self._runs.get(record.run_id)
            if run is None:
                run = _MemRun(next(self._seq), record.created_at.timestamp(), record.workflow_name, "", "")
                self._runs[record.run_id] = run
            self._finished_count += (record.status.value in TERMINAL_RUN) - (run.status in TERMINAL_RUN)
            run.status = record.status.value
            run.saved = time.time()
            run.workflow_name = record.workflow_name
            run.parent = record.parent_run_id
            run.record = raw
            if run.version != record.workflow_version:
                self._refer(run, None)
                run.version = record.workflow_version
                self._refer(run, 1)
            if batch is not None:
                run.unbatch(record.steps)
                if run.steps:
                    for name in record.steps:
                        run.steps.pop(name, None)
                run.batch, run.batch_size = batch, len(record.steps)
            if run.status in TERMINAL_RUN:
                heapq.heappush(self._finished, (run.created, run.seq, record.run_id))
            if self._finished_count > self.retention_runs:
                self._trim_runs()

    def save_step(self, run_id: str, step: StepResult) -> None:
        raw = dump_step(step)
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None:  # steps of an unknown (or trimmed) run are ignored, as in SqliteStore
                run.unbatch(())
                run.steps[step.name] = raw

    def _trim_runs(self) -> None:
        # A heap rather than sorting every run on each save: past retention, every new run trims one.
        # The oldest run still in its grace stops the trim (the runs behind it wait for it, as in
        # SqliteStore): a save costs the same however many runs have just finished.
        excess = self._finished_count - self.retention_runs
        finished = self._finished
        cutoff = grace_cutoff(self._finished_count, self.retention_runs, self.retention_grace)
        saved_before = float("inf") if cutoff is None else cutoff
        while excess > 0 and finished:
            _, seq, run_id = finished[0]
            run = self._runs.get(run_id)
            if run is None or run.seq != seq or run.status not in TERMINAL_RUN:
                heapq.heappop(finished)  # stale
                continue
            if run.saved > saved_before:
                break
            heapq.heappop(finished)
            del self._runs[run_id]
            self._finished_count -= 1
            self._refer(run, None)
            excess -= 1

    def _refer(self, run: _MemRun, delta: int | None) -> None:
        """Count ``run``'s reference to its definition version (``delta`` 1), or drop it (None)."""
        if run.version is None:
            return
        key = (run.workflow_name, run.version)
        if delta is not None:
            self._version_refs[key] += delta
            return
        self._version_refs[key] -= 1
        self._drop_version_if_unused(key)

    def get_run(self, run_id: str, *, items: ItemWindow | None = None) -> RunRecord | None:
        """The run's record (``items``: each map step's items cut to that window, after decoding them)."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                return None
            raw, batch, steps = run.record, run.batch, list(run.steps.values())
        record = build_run(raw, steps, batch)
        return record if items is None else window_record(record, items)

    def sub_runs(self, parent_run_id: str) -> list[RunRecord]:
        with self._lock:
            found = sorted(
                (r.created, r.seq, r.record) for r in self._runs.values() if r.parent == parent_run_id
            )
        return [build_run(raw, ()) for _, _, raw in found]

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
        wanted = WorkflowStatus(status).value if status is not None else None
        low, high = window(since, until)
        after = parse_cursor(cursor) if cursor is not None else None
        with self._lock:
            runs = [
                (r.created, run_id, r)
                for run_id, r in self._runs.items()
                if (workflow_name is None or r.workflow_name == workflow_name)
                and (wanted is None or r.status == wanted)
                and (parent_run_id is None or r.parent == parent_run_id)
                and (low is None or r.created >= low)
                and (high is None or r.created < high)
                and (after is None or (r.created, run_id) < after)
            ]
            newest = heapq.nlargest(max(0, limit), runs, key=lambda item: (item[0], item[1]))
            picked = [
                (r.record, list(r.steps.values()), r.batch) if steps else (r.record, [], None)  # summaries
                for _, _, r in newest
            ]
        return [build_run(raw, rows, batch) for raw, rows, batch in picked]

    def check_budget(
        self,
        parameters: Mapping[str, Any] | None = None,
        *,
        steps: int | None = None,
        run_id: str | None = None,
    ) -> None:
        """Refuse parameters over ``max_parameters_bytes``; memory has no byte budget (retention
        bounds it), so a run's ``steps`` do not matter and no room is held for ``run_id``."""
        check_parameters(parameters, self.max_parameters_bytes)

    def release_admission(self, run_id: str) -> None:
        """Nothing is held for a run here (see :meth:`check_budget`)."""

    def count_runs(self) -> dict[str, int]:
        """Stored runs by status value, without building a record."""
        counts: dict[str, int] = {}
        with self._lock:
            for run in self._runs.values():
                counts[run.status] = counts.get(run.status, 0) + 1
        return counts

    def recover(self) -> list[str]:
        """Mark every PENDING or RUNNING run INTERRUPTED, and its RUNNING steps and items; return their
        ids, oldest first."""
        with self._lock:
            found = sorted(
                ((r.created, r.seq, rid, r) for rid, r in self._runs.items() if r.status in ACTIVE_RUN),
                key=lambda item: (item[0], item[1]),
            )
            when = utcnow()
            for created, seq, rid, run in found:
                run.status = WorkflowStatus.INTERRUPTED.value
                run.saved = time.time()
                self._finished_count += 1
                run.record = interrupted(run.record)
                run.unbatch(())
                for name, raw in run.steps.items():
                    if StepResult.model_validate_json(raw).status is TaskStatus.RUNNING:
                        run.steps[name] = interrupted_step(raw, when)
                heapq.heappush(self._finished, (created, seq, rid))
        return [rid for _, _, rid, _ in found]

    # sessions, projects, allocations
    def save_session(self, session_id: str, data: Mapping[str, Any]) -> None:
        raw = dump_data(data)
        with self._lock:
            self._sessions[session_id] = raw

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        with self._lock:
            raw = self._sessions.get(session_id)
        return None if raw is None else dict(json.loads(raw))

    def list_sessions(self, *, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._sessions.values())
        decoded = [dict(json.loads(raw)) for raw in items]
        chosen = [d for d in decoded if status is None or status_of(d) == status]
        return chosen if limit is None else chosen[max(len(chosen) - limit, 0) :]

    def delete_session(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def save_project(self, name: str, data: Mapping[str, Any]) -> None:
        raw = dump_data(data)
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
        raw = dump_data(data)
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
        raw = dump_data(payload or {})
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
        return [event_dict(e["id"], e["ts"], e["type"], e["raw"]) for e in out]

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
