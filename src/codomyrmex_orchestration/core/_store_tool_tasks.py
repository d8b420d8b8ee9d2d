"""The durable records of tool calls run as MCP tasks (``server/_tasks.py``): the ``tool_tasks`` table of
a ``SqliteStore`` and its in-memory twin. A record is a JSON object with ``task_id``, ``owner``,
``created_at`` and ``expires_at`` (``None``: kept until deleted), plus whatever the server keeps in it.

:class:`SqliteToolTasks` runs its SQL on the store's writer connection (few writes, each durable at once)
and owns no state; :class:`MemoryToolTasks` owns its dict (``_lock``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Protocol, TypeVar

from ._store_schema import rollback_quietly

__all__ = ["MemoryToolTasks", "SqliteToolTasks", "ToolTaskStore"]

_T = TypeVar("_T")
Record = dict[str, Any]
#: Where a page starts: the ``(created_at, task_id)`` of the previous page's last record.
After = tuple[float, str] | None


class ToolTaskStore(Protocol):
    def save(self, record: Mapping[str, Any]) -> None: ...
    def get(self, task_id: str) -> Record | None: ...
    def page(self, owner: str, *, after: After = None, limit: int = 100) -> list[Record]: ...
    def delete_expired(self, now: float) -> list[str]: ...


class SqliteToolTasks:
    """The ``tool_tasks`` table, through ``call`` (the writer's: after what is pending, on its connection).

    Args:
        call: runs a function on the writer connection and returns its result (``GroupCommitWriter.call``).
    """

    def __init__(self, call: Callable[[Callable[[sqlite3.Connection], Any]], Any]) -> None:
        self._call = call

    def save(self, record: Mapping[str, Any]) -> None:
        """Insert or replace ``record``; on disk when this returns."""
        self._call(partial(_save, record=dict(record)))

    def get(self, task_id: str) -> Record | None:
        row = self._call(
            lambda conn: conn.execute(
                "SELECT record FROM tool_tasks WHERE task_id = ?", (task_id,)
            ).fetchone()
        )
        return json.loads(row[0]) if row is not None else None

    def page(self, owner: str, *, after: After = None, limit: int = 100) -> list[Record]:
        """``owner``'s records, oldest first, after ``after``."""
        start = after if after is not None else (float("-inf"), "")
        rows = self._call(
            lambda conn: conn.execute(
                "SELECT record FROM tool_tasks WHERE owner = ? AND (created_at, task_id) > (?, ?) "
                "ORDER BY created_at, task_id LIMIT ?",
                (owner, start[0], start[1], limit),
            ).fetchall()
        )
        return [json.loads(raw) for (raw,) in rows]

    def delete_expired(self, now: float) -> list[str]:
        """Delete the records whose time to live ended by ``now``; their ids."""
        return list(self._call(partial(_delete_expired, now=now)))


def _save(conn: sqlite3.Connection, record: Record) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "INSERT INTO tool_tasks (task_id, owner, record, created_at, expires_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (task_id) DO UPDATE SET owner = excluded.owner, record = excluded.record, "
            "expires_at = excluded.expires_at",
            (
                record["task_id"],
                record["owner"],
                json.dumps(record, ensure_ascii=False),
                record["created_at"],
                record.get("expires_at"),
            ),
        )
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)
        raise


def _delete_expired(conn: sqlite3.Connection, now: float) -> list[str]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        ids = [
            task_id
            for (task_id,) in conn.execute(
                "SELECT task_id FROM tool_tasks WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
            ).fetchall()
        ]
        conn.executemany("DELETE FROM tool_tasks WHERE task_id = ?", [(task_id,) for task_id in ids])
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)
        raise
    return ids


class MemoryToolTasks:
    """The same records in a dict, for a ``MemoryStore`` (gone with the process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _records (dict operations only)
        self._records: dict[str, str] = {}  # task id -> the record's JSON (a copy no caller can change)

    def save(self, record: Mapping[str, Any]) -> None:
        raw = json.dumps(dict(record))
        with self._lock:
            self._records[record["task_id"]] = raw

    def get(self, task_id: str) -> Record | None:
        with self._lock:
            raw = self._records.get(task_id)
        return json.loads(raw) if raw is not None else None

    def page(self, owner: str, *, after: After = None, limit: int = 100) -> list[Record]:
        with self._lock:
            raws = list(self._records.values())
        start = after if after is not None else (float("-inf"), "")
        mine = [
            r
            for r in map(json.loads, raws)
            if r["owner"] == owner and (r["created_at"], r["task_id"]) > start
        ]
        mine.sort(key=lambda r: (r["created_at"], r["task_id"]))
        return mine[:limit]

    def delete_expired(self, now: float) -> list[str]:
        with self._lock:
            expired = [
                task_id
                for task_id, raw in self._records.items()
                if (expires := json.loads(raw).get("expires_at")) is not None and expires <= now
            ]
            for task_id in expired:
                del self._records[task_id]
        return expired
