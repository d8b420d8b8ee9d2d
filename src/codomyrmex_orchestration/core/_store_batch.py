"""The SQLite store's pending batch: what a commit writes, and how it writes it.

No state of its own: :class:`Batch` holds the writes enqueued since the last commit (the writer owns
the pending one); :func:`write_batch` writes one inside an open transaction.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

from ._store_steps import STEP_RESULT, STEP_SPILL, write_steps

__all__ = ["DELETE", "Batch", "bytes_bound", "write_batch"]

DELETE = None  # marks a key deleted in a pending batch

_SQL_UPSERT_RUN = """
INSERT INTO runs (
    run_id, workflow_name, status, record, created_at, updated_at, session_id, parent_run_id, workflow_version
)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (run_id) DO UPDATE SET
    workflow_name = excluded.workflow_name, status = excluded.status, record = excluded.record,
    updated_at = excluded.updated_at, session_id = excluded.session_id,
    parent_run_id = excluded.parent_run_id, workflow_version = excluded.workflow_version
"""
_RUN_RECORD = 3  # the record JSON in a run row


@dataclass
class Batch:
    """Writes enqueued since the last commit; repeated saves of one key coalesce (last one wins)."""

    workflows: dict[str, tuple[str, str] | None] = field(default_factory=dict)
    #: (name, version) -> (digest, spec JSON); a version once written never changes.
    workflow_versions: dict[tuple[str, int], tuple[str, str]] = field(default_factory=dict)
    runs: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    steps: dict[tuple[str, str], tuple[Any, ...]] = field(default_factory=dict)
    sessions: dict[str, tuple[str, str] | None] = field(default_factory=dict)
    projects: dict[str, str | None] = field(default_factory=dict)
    allocations: dict[str, str | None] = field(default_factory=dict)
    #: Event log rows: the writer keeps them apart and adds them to the batches that take them.
    events: list[tuple[float, str, str]] = field(default_factory=list)
    #: Writes to other tables (the step cache), applied in order: (SQL, its parameters).
    statements: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    size: int = 0


def write_batch(conn: sqlite3.Connection, batch: Batch, now: float) -> None:
    """Write ``batch`` inside the caller's open transaction (``now``: the rows' timestamps)."""
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
    if batch.workflow_versions:
        conn.executemany(
            "INSERT OR IGNORE INTO workflow_versions (name, version, digest, spec, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            [(n, v, d, spec, now) for (n, v), (d, spec) in batch.workflow_versions.items()],
        )
    if batch.runs:
        conn.executemany(_SQL_UPSERT_RUN, batch.runs.values())
    if batch.steps:
        write_steps(conn, list(batch.steps.values()), batch.runs)
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
    for sql, params in batch.statements:
        conn.execute(sql, params)


def bytes_bound(batch: Batch) -> int | None:
    """At most how many bytes ``batch`` adds to the bytes the tallies count (run records, step results
    and spill files, definitions and their versions, sessions): a row's new size bounds its growth. None
    for cached outputs and deleted definitions or sessions: measured instead (rare, and what they free
    shows at once)."""
    if batch.statements:
        return None
    grown = 0
    for wf in batch.workflows.values():
        if wf is None:
            return None
        grown += _utf8_len(wf[0])
    for _, spec in batch.workflow_versions.values():
        grown += _utf8_len(spec)
    for session in batch.sessions.values():
        if session is None:
            return None
        grown += _utf8_len(session[0])
    for row in batch.runs.values():
        grown += _utf8_len(row[_RUN_RECORD])
    for row in batch.steps.values():
        grown += _utf8_len(row[STEP_RESULT]) + row[STEP_SPILL]
    return grown


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())
