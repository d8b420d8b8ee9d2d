"""The SQLite store's group-commit writer: the queue of pending writes, the thread that commits them in
batches, and the flushes that commit them now on the caller's thread.

It owns the pending batch, the pending event log rows, the queued calls, the write counters (enqueued,
committed, dropped), the writer failure, the writer connection and its thread.

A commit that fails for a reason that passes (a lock, a full disk: ``_store_stall``) keeps its writes:
they go back in front of the pending ones, in order, and the writer tries again with backoff while
flushes raise at once (what runs goes on in memory), up to ``MAX_WAITING`` writes; closing tries for
``CLOSE_RETRY`` seconds more. Any other failure (a damaged, replaced or read-only file) is permanent:
what is pending, and every later write, is dropped and counted.

Event log rows are kept apart from the state writes (runs, steps, ...): a partial flush (a step's
parents, a run's end) commits the state writes alone, and the event rows go with the writer's next
batch (within the flush interval) or with a full flush (``flush()``, a read). A run's commit then writes
its own rows only, not the event table's pages and index leaves as well.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from ..errors import StateStoreError
from ..logs import get_logger
from ._store_batch import Batch, bytes_bound, write_batch
from ._store_health import Damage, sqlite_reason
from ._store_retention import Retention
from ._store_schema import close_quietly, rollback_quietly
from ._store_stall import CLOSE_RETRY, MAX_WAITING, Stall, put_back, transient_cause

__all__ = ["GroupCommitWriter"]

#: A batch this large is committed at once instead of waiting for the flush interval.
_MAX_BATCH = 2_000
FLUSH_TIMEOUT = 30.0
CLOSE_TIMEOUT = 30.0

_log = get_logger("codomyrmex_orchestration.store")
_T = TypeVar("_T")


@dataclass
class _Call:
    """A function the writer runs on its connection after committing what was enqueued before it."""

    fn: Callable[[sqlite3.Connection], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


@dataclass(frozen=True)
class WriterState:
    """A consistent snapshot of the writer's counters, for health() and stats()."""

    pending: int
    dropped: int
    batches: int
    failure: str | None
    closed: bool
    stalled: str | None = None  # commits fail for a reason that passes; they are tried again


class _WriteQueue:
    """The callers' side of :class:`GroupCommitWriter`: the state below, enqueueing, flushes, calls.

    Args:
        conn: the writer connection (the writer owns it from now on and closes it).
        path: the database file, for messages.
        retention: its budget's part runs with each commit that adds bytes, its housekeeping on its
            own schedule or with a full flush; on the committing thread.
        flush_interval: seconds the writer waits to gather a batch before committing it.
        damage: where a commit or call that finds the file damaged says so (for health()).
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: str,
        retention: Retention,
        *,
        flush_interval: float,
        damage: Damage | None = None,
    ) -> None:
        self.path = path
        self.damage = damage if damage is not None else Damage()
        self.flush_interval = flush_interval
        self._retention = retention
        self._conn = conn

        # Guards everything below down to _retention_due; held for a few dict operations, never I/O.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the writer thread waits here for work
        self._done = threading.Condition(self._lock)  # flushers wait here for _committed to advance
        self._pending = Batch()  # state writes; its ``events`` stay empty (they are in _log)
        self._log: list[tuple[float, str, str]] = []  # event rows not yet taken by a commit
        self._calls: list[_Call] = []
        self._enqueued = 0  # state writes enqueued so far
        self._committed = 0  # state writes committed (or dropped with a failed batch) so far
        self._logged = 0  # event rows appended so far
        self._log_committed = 0  # event rows committed (or dropped) so far
        self._flush_wanted = False
        self._writer_idle = False  # the writer waits for work (not for its flush interval to pass)
        self._closing = False
        self._closed = False
        self._failure: str | None = None
        self._stall = Stall()  # a transient failure being retried
        self._give_up_at: float | None = None  # closing: when the retries stop (monotonic)
        self._dropped = 0
        self._batches = 0
        self._retention_due = False  # a full flush asked for a housekeeping pass

        # Held by whoever takes a batch from _pending and commits it (the writer, or a thread in
        # flush()), until _committed is updated: batches commit in order, one thread uses the writer
        # connection at a time. Lock order: _commit_lock, then _lock.
        self._commit_lock = threading.Lock()

    # ------------------------------------------------------------------ enqueueing

    def enqueue(self, put: Callable[[Batch], None]) -> None:
        """Apply ``put`` to the pending batch; never raises (a write after a failure is counted lost)."""
        with self._lock:
            if (self._failure is not None or self._closing or self._stall.reason) and self._lost_write():
                # Never raise into the worker that recorded a transition; the loss is counted and
                # reported by health() / stats() (and flush() raises while the writer is failed).
                return
            was_empty = self._pending.size == 0 and not self._log
            put(self._pending)
            self._pending.size += 1
            self._enqueued += 1
            self._wake_if_needed(was_empty, self._pending.size)

    def append_log(self, row: tuple[float, str, str]) -> None:
        """Append an event row; committed by the writer's next batch or a full flush; never raises."""
        with self._lock:
            if (self._failure is not None or self._closing or self._stall.reason) and self._lost_write():
                return
            was_empty = self._pending.size == 0 and not self._log
            self._log.append(row)
            self._logged += 1
            self._wake_if_needed(was_empty, len(self._log))

    def _lost_write(self) -> bool:
        """Whether a write now is lost (counted): the writer failed or is closing, or commits fail and
        ``MAX_WAITING`` writes wait already (caller holds _lock)."""
        if self._failure is None and not self._closing:
            waiting = self._enqueued - self._committed + self._logged - self._log_committed
            if waiting < MAX_WAITING:
                return False  # it waits behind the failing commit
            if self._stall.lose():
                _log.error(
                    "state_store_writes_lost",
                    path=self.path,
                    reason=self._stall.reason,
                    waiting=waiting,
                    what_happens=f"past {MAX_WAITING} waiting writes, new ones are lost (counted)",
                )
        self._dropped += 1
        return True

    def _wake_if_needed(self, was_empty: bool, size: int) -> None:
        # Only a writer idle-waiting for work needs waking: in its flush-interval wait it comes back by
        # itself, and waking it for each write would cost a thread switch per write. (Caller holds _lock.)
        if (was_empty and self._writer_idle) or size >= _MAX_BATCH:
            self._writer_idle = False  # one wake-up is enough
            self._work.notify()

    # ------------------------------------------------------------------ flushing

    def write_mark(self) -> int:
        return self._enqueued

    def flush(self, timeout: float = FLUSH_TIMEOUT, *, upto: int | None = None, wait: bool = True) -> None:
        """See :meth:`SqliteStore.flush`.

        A full flush (no ``upto``, waiting) commits the event log too and brings housekeeping up to
        date; a partial one (a step's parents, a run's end, the results a worker just saved) is on a
        run's path: it commits the state writes alone, the event rows and the housekeeping keep the
        writer's schedule (the byte budget's part runs with every commit anyway)."""
        if upto is not None and self._committed >= upto and self._failure is None:
            return  # committed already: the usual case when a step starts after its parents
        full = upto is None and wait
        with self._lock:
            target = self._enqueued if upto is None else upto
            log_target = self._logged if full else 0
        self._sync(timeout, target, log_target, wait=wait, housekeeping=full)

    def _sync(self, timeout: float, target: int, log_target: int, *, wait: bool, housekeeping: bool) -> None:
        """Commit the state writes up to ``target`` and event rows up to ``log_target`` (and, with
        ``housekeeping``, an owed housekeeping pass even when nothing else is pending)."""
        with self._lock:
            pending = not self._reached(target, log_target)
        pending = pending or (housekeeping and self._retention.due(forced=True))
        # Commit on this thread rather than wake the writer and wait to be woken in turn: a flush then
        # costs one commit and no thread handoffs. If another thread is mid-commit, our writes are
        # often in its batch; without ``wait`` they are left to the next commit.
        if pending and (
            self._commit_lock.acquire(timeout=timeout) if wait else self._commit_lock.acquire(blocking=False)
        ):
            try:
                self._commit_pending(target, log_target, housekeeping=housekeeping)
            finally:
                self._commit_lock.release()
        if not wait:
            return
        with self._lock:
            if not self._reached(target, log_target):
                self._flush_wanted = True
                self._retention_due = self._retention_due or housekeeping
                self._work.notify()
                deadline = time.monotonic() + timeout
                while not self._reached(target, log_target):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        _log.warning("state_store_flush_timeout", path=self.path, timeout=timeout)
                        raise StateStoreError(
                            self.path, f"the writer did not commit within {timeout:g} s (flush)"
                        )
                    self._done.wait(remaining)
            if self._failure is not None:
                raise StateStoreError(self.path, f"the writer has failed: {self._failure}")
            if self._stall.reason is not None and not self._counts_reached(target, log_target):
                self._stall.refused += 1  # logged once, when saving works again
                raise StateStoreError(self.path, f"the writer cannot save now: {self._stall.reason}")

    def _reached(self, target: int, log_target: int) -> bool:
        """The writes up to ``target`` and event rows up to ``log_target`` are committed, or the writer
        has failed (caller holds _lock)."""
        return (
            self._failure is not None
            or self._stall.reason is not None
            or self._counts_reached(target, log_target)
        )

    def _counts_reached(self, target: int, log_target: int) -> bool:
        return self._committed >= target and self._log_committed >= log_target

    def _commit_pending(self, target: int, log_target: int, *, housekeeping: bool) -> None:
        raise NotImplementedError  # the writer's side: GroupCommitWriter

    def sync_for_read(self) -> None:
        """Read-your-writes: wait until pending writes are committed (free when nothing is pending)."""
        with self._lock:
            if self._closed:
                raise StateStoreError(self.path, "the store is closed")
            if self._reached(self._enqueued, self._logged):
                return
            target, log_target = self._enqueued, self._logged
        try:
            # Visibility alone: the housekeeping keeps its schedule (a full flush() brings it forward).
            self._sync(FLUSH_TIMEOUT, target, log_target, wait=True, housekeeping=False)
        except StateStoreError:
            # A failed writer is reported by health() and flush(); reads serve what was committed.
            return

    def call(self, fn: Callable[[sqlite3.Connection], _T], timeout: float = FLUSH_TIMEOUT) -> _T:
        """Run ``fn`` on the writer connection, after what was enqueued before it is committed."""
        call = _Call(fn)
        with self._lock:
            if self._closed or self._closing:
                raise StateStoreError(self.path, "the store is closed")
            if self._failure is not None:
                raise StateStoreError(self.path, f"the writer has failed: {self._failure}")
            if self._stall.reason is not None:
                raise StateStoreError(self.path, f"the writer cannot save now: {self._stall.reason}")
            self._calls.append(call)
            self._work.notify()
        if not call.done.wait(timeout):
            raise StateStoreError(self.path, f"the writer did not answer within {timeout:g} s")
        if call.error is not None:
            self.damage.note(call.error)
            raise StateStoreError(self.path, sqlite_reason(call.error)) from call.error
        return cast(_T, call.result)

    def state(self) -> WriterState:
        with self._lock:
            return WriterState(
                pending=self._enqueued - self._committed + self._logged - self._log_committed,
                dropped=self._dropped,
                batches=self._batches,
                failure=self._failure,
                closed=self._closed or self._closing,
                stalled=self._stall.reason,
            )

    def saving_problem(self) -> str | None:
        """Why nothing can be saved now (a failed writer, or commits failing meanwhile), or None."""
        failure, stalled = self._failure, self._stall.reason  # read without the lock: a hint
        if failure is not None:
            return f"the writer has failed: {failure}"
        return f"the writer cannot save now: {stalled}" if stalled is not None else None


class GroupCommitWriter(_WriteQueue):
    """Queues writes and commits them in batches on one thread (or on a flushing caller's thread);
    this class is the committing side (the writer thread, commits, retries, closing). Arguments as
    :class:`_WriteQueue`'s."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: str,
        retention: Retention,
        *,
        flush_interval: float,
        damage: Damage | None = None,
        on_runs_committed: Callable[[Iterable[str]], None] | None = None,
    ) -> None:
        super().__init__(conn, path, retention, flush_interval=flush_interval, damage=damage)
        # Told the ids of the runs each commit wrote, once it has committed (the budget's admissions).
        self._on_runs_committed = on_runs_committed
        self._thread = threading.Thread(target=self._main, name="state-store-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the writer thread

    def _commit_pending(self, target: int, log_target: int, *, housekeeping: bool) -> None:
        """Commit the pending state writes (and the event rows, when ``log_target`` asks for any; and an
        owed housekeeping pass, with ``housekeeping``) unless another commit did meanwhile (caller holds
        _commit_lock)."""
        with self._lock:
            if self._failure is not None or self._closed or self._stall.reason is not None:
                return  # a failing commit is retried by the writer thread alone
            owed = not self._reached(target, log_target)
            if not owed and not (housekeeping and self._retention.due(forced=True)):
                return
            batch, self._pending = self._pending, Batch()
            batch_target, log_taken = self._enqueued, self._log_committed
            if log_target:
                batch.events, self._log = self._log, []
                batch.size += len(batch.events)
                log_taken = self._logged
        self._commit_taken(batch, batch_target, log_taken, [], housekeeping=housekeeping)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _main(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # the writer must record why it stopped, whatever it was
            self._fail(f"writer thread crashed: {type(exc).__name__}: {exc}")

    def _loop(self) -> None:
        while True:
            with self._lock:
                if self._stall.reason is not None:
                    if not self._wait_to_retry():
                        return
                elif self._pending.size == 0 and not self._log and not self._calls and not self._closing:
                    self._writer_idle = True
                    while self._writer_idle and not (self._calls or self._flush_wanted or self._closing):
                        # Housekeeping owed by earlier commits is not left waiting for the next write.
                        owed = self._retention.housekeeping_in()
                        if not self._work.wait(owed) and owed is not None:
                            break
                    self._writer_idle = False
                # Woken for work: wait out the flush interval even if a flush() on another thread has
                # committed that work meanwhile (it usually has, in a chain of steps). Going idle again
                # at once would have the next write wake this thread again: one wake-up per step.
                deadline = time.monotonic() + self.flush_interval
                while not (
                    self._flush_wanted
                    or self._calls
                    or self._closing
                    or self._pending.size >= _MAX_BATCH
                    or len(self._log) >= _MAX_BATCH
                ):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._work.wait(remaining)
                if self._failure is not None:  # a commit in flush() failed: nothing more is written
                    return
            with self._commit_lock:
                with self._lock:
                    batch, self._pending = self._pending, Batch()
                    batch.events, self._log = self._log, []
                    batch.size += len(batch.events)
                    calls, self._calls = self._calls, []
                    target, log_target = self._enqueued, self._logged
                    self._flush_wanted = False
                    closing = self._closing
                    retention_forced = self._retention_due
                    self._retention_due = False
                try:
                    committed = self._commit_taken(
                        batch, target, log_target, calls, housekeeping=retention_forced or closing
                    )
                except BaseException as exc:
                    _fail_calls(calls, exc)  # the callers taken with this batch learn why, now
                    raise
                if not committed:
                    if self._stall.reason is None:  # a permanent failure: nothing more is written
                        return
                    continue
                for call in calls:
                    try:
                        call.result = call.fn(self._conn)
                    except BaseException as exc:  # handed to the caller, who raises StateStoreError
                        call.error = exc
                    call.done.set()
            if closing:
                with self._lock:
                    if self._pending.size == 0 and not self._log and not self._calls:
                        return

    def _commit_taken(
        self, batch: Batch, target: int, log_target: int, calls: list[_Call], *, housekeeping: bool
    ) -> bool:
        """Commit a batch taken from ``_pending`` (and ``_log``) (caller holds ``_commit_lock``); False
        if that failed. ``target``, ``log_target``: the counts it brings the committed counts to.
        ``housekeeping``: run a housekeeping pass now if there is anything for it to check."""
        if (
            batch.runs
            or batch.steps
            or batch.statements
            or batch.events
            or batch.workflows
            or batch.workflow_versions
            or batch.sessions
        ):
            self._retention.note_added(bytes_bound(batch))
        tidy = self._retention.due(forced=housekeeping)
        budget = tidy or self._retention.budget_due()
        if batch.size or budget:
            try:
                self._commit(batch, tidy=tidy, budget=budget)
            except sqlite3.Error as exc:
                self.damage.note(exc)
                self._retention.after_commit(False)
                reason = f"commit of {batch.size} writes failed: {sqlite_reason(exc)}"
                cause = transient_cause(exc, self.path)
                if cause is None:
                    self._fail(reason, dropped=batch.size)
                    _fail_calls(calls, exc)
                else:
                    self._stalled(batch, reason, cause)
                    _fail_calls(calls, StateStoreError(self.path, f"the writer cannot save now: {reason}"))
                return False
            self._retention.after_commit(True)
            if batch.runs and self._on_runs_committed is not None:
                self._on_runs_committed(batch.runs.keys())
            if batch.size:
                self._batches += 1
        with self._lock:
            ended = None
            if self._stall.reason is not None:  # saving works again
                waited = target - self._committed + log_target - self._log_committed
                ended = self._stall.ended(waited)
            self._committed = target
            self._log_committed = log_target
            self._done.notify_all()
        if ended is not None:
            _log.warning("state_store_saving_again", path=self.path, **ended)
        return True

    def _stalled(self, batch: Batch, reason: str, cause: str) -> None:
        """A commit of ``batch`` failed for a reason that passes: its writes go back in front of those
        enqueued since, and the writer tries again after a backoff."""
        with self._lock:
            self._log[:0] = batch.events
            self._pending = put_back(batch, self._pending)
            waiting = self._enqueued - self._committed + self._logged - self._log_committed
            started = self._stall.failed(reason, cause, waiting)
            self._done.notify_all()  # flushes waiting for it raise now
            self._writer_idle = False
            self._work.notify()
        if started is not None:
            _log.error("state_store_cannot_save", path=self.path, **started)

    def _wait_to_retry(self) -> bool:
        """Wait out the backoff before the next attempt at a failing commit (closing: for at most
        ``CLOSE_RETRY`` seconds in all); False once closing has tried for that long: what waits is
        dropped (caller holds _lock)."""
        now = time.monotonic()
        until = now + self._stall.delay()
        closing = self._closing
        while not (self._closing and not closing):  # closing: one attempt at once
            if self._give_up_at is not None:
                until = min(until, self._give_up_at)
            remaining = until - time.monotonic()
            if remaining <= 0:
                break
            self._work.wait(remaining)
        if self._give_up_at is None or time.monotonic() < self._give_up_at:
            return True
        self._drop_all(f"closed while commits failed: {self._stall.reason}", 0)
        return False

    def _commit(self, batch: Batch, *, tidy: bool, budget: bool) -> None:
        """One transaction: the batch's writes, then a housekeeping pass (``tidy``, which includes the
        budget's part) or the budget's part alone (``budget``), so retention costs no commit of its own."""
        conn = self._conn
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            write_batch(conn, batch, now)
            if tidy:
                self._retention.run(conn)
            elif budget:
                self._retention.keep_budget(conn)
            conn.execute("COMMIT")
        except BaseException:
            rollback_quietly(conn)
            raise

    def run_retention(self) -> None:
        """A retention pass now, on the writer connection after what is pending (for check_budget)."""

        def retain(conn: sqlite3.Connection) -> None:
            self._retention.note_added(None)  # a full pass: checks every limit, measures the bytes
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._retention.run(conn)
                conn.execute("COMMIT")
            except BaseException:
                rollback_quietly(conn)
                self._retention.after_commit(False)
                raise
            self._retention.after_commit(True)

        self.call(retain)

    def _fail(self, reason: str, *, dropped: int = 0) -> None:
        _log.error("state_store_writer_failed", path=self.path, reason=reason)
        with self._lock:
            self._drop_all(reason, dropped)

    def _drop_all(self, reason: str, dropped: int) -> None:
        """Fail the writer for good: what is pending is dropped and counted (caller holds _lock)."""
        if self._failure is None:
            self._failure = reason
        self._stall.reason = None  # the failure is what health and flush report from now on
        self._dropped += dropped + self._pending.size + len(self._log)
        self._pending = Batch()
        self._log = []
        self._committed = self._enqueued  # nothing is pending any more: it was all dropped
        self._log_committed = self._logged
        calls, self._calls = self._calls, []
        self._done.notify_all()
        _fail_calls(calls, StateStoreError(self.path, reason))

    # ------------------------------------------------------------------ closing

    def close(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Commit what is pending, stop the thread (bounded wait) and close the connection.

        Returns:
            False if it was closed already, else True.
        """
        with self._lock:
            if self._closed:
                return False
            self._closing = True
            # A failing commit is tried for a while yet; the rest of the wait is for the last attempt.
            self._give_up_at = time.monotonic() + min(CLOSE_RETRY, timeout / 2)
            self._work.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            _log.error("state_store_writer_stuck", path=self.path, timeout=timeout)
        with self._lock:
            self._closed = True
            self._done.notify_all()
            # what was never committed: writes still pending, and those dropped after a failure
            lost = self._enqueued - self._committed + self._logged - self._log_committed + self._dropped
        if self._failure is not None or lost:
            _log.error("state_store_closed_with_loss", path=self.path, lost=lost, reason=self._failure)
        if not self._thread.is_alive():
            with self._commit_lock:  # a flush() committing on its own thread finishes first
                try:
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    pass  # a checkpoint is an optimisation; the WAL is replayed at the next open anyway
                close_quietly(self._conn)
        return True


def _fail_calls(calls: list[_Call], exc: BaseException) -> None:
    for call in calls:
        call.error = exc
        call.done.set()
