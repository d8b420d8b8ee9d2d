"""The table of active runs: every run that has started and not yet ended, and the resume claims.

:class:`ActiveRuns` owns the run id -> :class:`RunState` table and the set of run ids a resume has
claimed but not yet started, both under one lock held for set operations only (``_settled`` waits on
it for a claimed run to start or its resume to give up); and a count of the transitions of its runs
(under ``_changed``), which :meth:`ActiveRuns.wait_quiet` waits on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from codomyrmex_orchestration.core._workflow_quiet import busy_steps
from codomyrmex_orchestration.core._workflow_run import RunState
from codomyrmex_orchestration.errors import InvalidStateError

__all__ = ["ActiveRuns"]


class ActiveRuns:
    """Active runs by id. A run enters when it starts and leaves once its final record is saved, so a
    reader that misses it here finds it final in the store."""

    __slots__ = ("_changed", "_claimed", "_lock", "_quiet_waiters", "_runs", "_settled", "_transitions")

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _runs and _claimed
        # Notified when a run enters or a claim goes: what get_starting waits for.
        self._settled = threading.Condition(self._lock)
        self._runs: dict[str, RunState] = {}
        self._claimed: set[str] = set()
        # Taken under a run's lock (its transitions), never around one: wait_quiet reads runs without it.
        self._changed = threading.Condition(threading.Lock())
        self._transitions = 0
        # While anyone waits in wait_quiet (under _lock): runs report their transitions, else they pay
        # nothing for it.
        self._quiet_waiters = 0

    def add(self, run: RunState) -> None:
        with self._lock:
            self._runs[run.run_id] = run
            if self._quiet_waiters:
                run.on_change = self._bump
            if run.run_id in self._claimed:
                self._settled.notify_all()

    def remove(self, run_id: str) -> None:
        with self._lock:
            self._runs.pop(run_id, None)
        self._bump()

    def _bump(self) -> None:
        with self._changed:
            self._transitions += 1
            self._changed.notify_all()

    def wait_quiet(self, run_id: str, timeout: float | None) -> list[str]:
        """Wait up to ``timeout`` seconds (``None``: no limit) until run ``run_id`` has nothing to do
        but wait for answers (or ended); the steps still busy then (empty: quiet)."""
        with self._lock:
            self._quiet_waiters += 1
            for run in self._runs.values():  # its sub-runs too: their transitions change the answer
                run.on_change = self._bump
        try:
            return self._wait_quiet(run_id, timeout)
        finally:
            with self._lock:
                self._quiet_waiters -= 1
                if not self._quiet_waiters:
                    for run in self._runs.values():
                        run.on_change = None

    def _wait_quiet(self, run_id: str, timeout: float | None) -> list[str]:
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._changed:
                seen = self._transitions
            run = self.get(run_id)
            busy = busy_steps(run, self._children) if run is not None else []
            left = None if end is None else end - time.monotonic()
            if not busy or (left is not None and left <= 0):
                return busy
            with self._changed:
                if self._transitions == seen:  # no transition since the reading: wait for one
                    self._changed.wait(left)

    def _children(self, run_id: str) -> list[RunState]:
        with self._lock:
            return [r for r in self._runs.values() if r.record.parent_run_id == run_id]

    def get(self, run_id: str) -> RunState | None:
        with self._lock:
            return self._runs.get(run_id)

    def get_starting(self, run_id: str, timeout: float) -> RunState | None:
        """The active run ``run_id``, as :meth:`get`; but while a resume has claimed it and not started
        it yet, wait up to ``timeout`` seconds for that resume to start it or give up: a cancel arriving
        then must meet the run the resume starts, not the ended record it is about to replace."""
        with self._settled:
            self._settled.wait_for(lambda: run_id in self._runs or run_id not in self._claimed, timeout)
            return self._runs.get(run_id)

    def __contains__(self, run_id: object) -> bool:
        with self._lock:
            return run_id in self._runs

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._runs)

    def runs(self) -> list[RunState]:
        with self._lock:
            return list(self._runs.values())

    def parent_of(self, run_id: str) -> str | None:
        """The parent run id of an active run (None: top-level, or not active)."""
        with self._lock:
            run = self._runs.get(run_id)
            return run.record.parent_run_id if run is not None else None

    @contextmanager
    def claim(self, run_id: str) -> Iterator[None]:
        """Hold ``run_id`` for one resume: while held, and while the resumed run is active, every other
        claim of it fails.

        Raises:
            InvalidStateError: the run is active or claimed by another resume.
        """
        with self._lock:
            if run_id in self._runs or run_id in self._claimed:
                raise InvalidStateError("run", run_id, "running", "wait for it or cancel it before resuming")
            self._claimed.add(run_id)
        try:
            yield
        finally:
            with self._lock:
                self._claimed.discard(run_id)
                self._settled.notify_all()
