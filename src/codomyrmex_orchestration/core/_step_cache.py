"""The step cache: the outputs of steps that opt in (``cache: {"ttl_seconds": N}``), reused without calling
the action by a later call with the same action, resolved parameters and definition version.

:class:`StepCache` is the runs' side (the key, what may be kept, the cached result); it owns no state.
The entries live in the store: :class:`SqliteCacheTable` (the ``step_cache`` table, written through the
store's group-commit writer, counted in its byte budget by triggers, trimmed by its retention) or
:class:`MemoryCacheTable` (a bounded dict, guarded by its ``_lock``). A key is a SHA-256 hash: resolved
parameters (secrets included) are hashed, never stored.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from codomyrmex_orchestration._redact import holds_secret
from codomyrmex_orchestration.core._limits import is_truncated
from codomyrmex_orchestration.core.models import StepResult, StepSpec, TaskStatus, utcnow
from codomyrmex_orchestration.errors import OrchestrationError

if TYPE_CHECKING:
    from codomyrmex_orchestration.core._store_batch import Batch
    from codomyrmex_orchestration.core._store_reads import StoreReader
    from codomyrmex_orchestration.core._store_writer import GroupCommitWriter
    from codomyrmex_orchestration.core._workflow_run import RunState

__all__ = [
    "MEMORY_CACHE_ENTRIES",
    "CacheTable",
    "MemoryCacheTable",
    "SqliteCacheTable",
    "StepCache",
    "cache_key",
    "evict_oldest_entry",
    "trim_expired",
]

_log = structlog.get_logger("codomyrmex_orchestration.workflows")

#: Entries a memory store keeps (the oldest written goes first); a durable store is bounded by bytes.
MEMORY_CACHE_ENTRIES = 10_000

_UPSERT = (
    "INSERT INTO step_cache (key, workflow_name, output, created_at, expires_at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET workflow_name = excluded.workflow_name, output = excluded.output, "
    "created_at = excluded.created_at, expires_at = excluded.expires_at"
)
_DELETE_EXPIRED = "DELETE FROM step_cache WHERE key = ? AND expires_at <= ?"


def cache_key(
    workflow: str, version: int, digest: str, module: str, action: str, params: Mapping[str, Any]
) -> str | None:
    """The hash naming a step call: definition (name, version, hash), action and resolved parameters;
    None when the parameters are not JSON (such a call is not cached)."""
    try:
        text = json.dumps(
            [workflow, version, digest, module, action, params],
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    except (TypeError, ValueError):
        return None
    return hashlib.sha256(text.encode()).hexdigest()


class CacheTable(Protocol):
    """Where a store keeps cached step outputs (JSON text) by key."""

    #: Wall-clock seconds (``time.time``) used for expiry; a test may set another clock.
    clock: Callable[[], float]

    def get(self, key: str) -> str | None:
        """The output JSON kept under ``key``, None when there is none or it expired."""
        ...

    def put(self, key: str, workflow_name: str, output: str, ttl_seconds: float) -> None:
        """Keep ``output`` under ``key`` for ``ttl_seconds`` (replacing what was there); never raises."""
        ...


class SqliteCacheTable:
    """The ``step_cache`` table of a :class:`~codomyrmex_orchestration.core.store.SqliteStore`.

    Writes are queued on the store's writer like every other write (a worker never waits for a commit);
    a read sees every write made before it. An expired entry found by a read is deleted then; the rest
    go at retention passes, and entries are the first thing evicted when the state is over its budget.
    """

    def __init__(
        self, writer: GroupCommitWriter, reads: StoreReader, clock: Callable[[], float] = time.time
    ) -> None:
        self._writer = writer
        self._reads = reads
        self.clock = clock

    def get(self, key: str) -> str | None:
        rows = self._reads.read("SELECT output, expires_at FROM step_cache WHERE key = ?", (key,))
        if not rows:
            return None
        output, expires_at = rows[0]
        now = self.clock()
        if expires_at <= now:
            self._writer.enqueue(lambda b: b.statements.append((_DELETE_EXPIRED, (key, now))))
            return None
        return str(output)

    def put(self, key: str, workflow_name: str, output: str, ttl_seconds: float) -> None:
        now = self.clock()
        row = (key, workflow_name, output, now, now + ttl_seconds)

        def put(b: Batch) -> None:
            b.statements.append((_UPSERT, row))

        self._writer.enqueue(put)


class MemoryCacheTable:
    """The step cache of a :class:`~codomyrmex_orchestration.core.store.MemoryStore`: at most
    ``max_entries`` entries (the oldest written goes first), expired ones dropped when read."""

    def __init__(
        self, max_entries: int = MEMORY_CACHE_ENTRIES, clock: Callable[[], float] = time.time
    ) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._lock = threading.Lock()  # guards _entries
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()  # key -> (output, expires_at)

    def get(self, key: str) -> str | None:
        now = self.clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[1] <= now:
                del self._entries[key]
                return None
            return entry[0]

    def put(self, key: str, workflow_name: str, output: str, ttl_seconds: float) -> None:
        expires_at = self.clock() + ttl_seconds
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = (output, expires_at)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class StepCache:
    """What runs ask of the step cache: the key of a step call, a cached result, keeping a fresh one.

    Args:
        table: the store's cache table.
    """

    __slots__ = ("table",)

    def __init__(self, table: CacheTable) -> None:
        self.table = table

    def lookup(
        self, run: RunState, name: str, step: StepSpec, params: Mapping[str, Any]
    ) -> tuple[str | None, StepResult | None]:
        """The cache key of step ``name``'s call (None: not cached; ``step`` is its spec, a map step's
        for an item) and, unless the run bypasses the cache (``use_cache`` false), its result from a
        kept entry: completed, ``cached``, no attempt."""
        if step.cache is None:
            return None, None
        plan = run.plan
        key = cache_key(run.record.workflow_name, plan.version, plan.digest, step.module, step.action, params)
        if key is None or not run.use_cache:
            return key, None
        try:
            kept = self.table.get(key)
        except OrchestrationError as exc:  # a store that cannot be read: run the step instead
            _log.warning("step cache read failed", step=step.name, error=str(exc))
            return key, None
        if kept is None:
            return key, None
        now = utcnow()
        result = StepResult(
            name=name,
            status=TaskStatus.COMPLETED,
            output=json.loads(kept),
            attempts=0,
            started_at=now,
            finished_at=now,
            duration_seconds=0.0,
            cached=True,
        )
        return key, result

    def keep(self, key: str, run: RunState, result: StepResult) -> None:
        """Keep a completed step's output under ``key``. Not kept: outputs that are not JSON, outputs cut
        by the output cap (their full text is in a spill file of that run), outputs holding a secret."""
        step = run.spec_of(result.name)
        if step.cache is None or result.status is not TaskStatus.COMPLETED or is_truncated(result.output):
            return
        try:
            text = json.dumps(result.output, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError):
            return
        if holds_secret(text):
            return
        self.table.put(key, run.record.workflow_name, text, step.cache.ttl_seconds)


def trim_expired(conn: sqlite3.Connection, now: float, limit: int) -> int:
    """Delete up to ``limit`` expired entries (retention, inside its transaction); how many went."""
    cursor = conn.execute(
        "DELETE FROM step_cache WHERE rowid IN "
        "(SELECT rowid FROM step_cache WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)",
        (now, limit),
    )
    return max(0, cursor.rowcount)


def evict_oldest_entry(conn: sqlite3.Connection) -> bool:
    """Delete the oldest written entry (retention over the byte budget); False when there is none."""
    cursor = conn.execute(
        "DELETE FROM step_cache WHERE rowid = (SELECT rowid FROM step_cache ORDER BY created_at LIMIT 1)"
    )
    return cursor.rowcount > 0
