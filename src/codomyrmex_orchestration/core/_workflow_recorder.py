"""The run recorder: what of a run is written to the state store, and when it is flushed.

It holds the store and whether the store survives the process (and the runs below). The rules,
for a durable store (SQLite): a run is saved with every step (pending placeholders included) when it
starts, so an interrupted run lists every step; a step is saved when it starts and when it ends; a
step's result is committed before anything that depends on it starts (each dependent takes the store's
write mark when it is cleared to run and flushes up to it when it starts), so after a kill -9, resume
never re-runs a step whose dependents already ran; a map item whose action does work (not instant)
commits every write made before it starts, so resume never re-runs an item that completed before a later
one started; the final record is saved (the run row alone: its
steps are saved already) and flushed. A store that dies with the process gets the run once, at the end.

It owns the finished runs whose final record the store could not commit yet (it is failing, or retrying a
commit): :meth:`RunRecorder.unsaved` serves them until the store has committed up to their mark, so a run
that ended is never "not found" meanwhile. A flush that fails is not logged here: the store logs when
saving stops and when it works again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

from codomyrmex_orchestration.core._map_items import window_record
from codomyrmex_orchestration.core.models import ItemWindow, RunRecord, StepResult, TaskStatus
from codomyrmex_orchestration.core.store import StateStore
from codomyrmex_orchestration.errors import OrchestrationError

__all__ = ["RunRecorder"]

_log = structlog.get_logger("codomyrmex_orchestration.workflows")

#: The write mark of an item whose action does work: it flushes every write made before it starts.
EVERY_WRITE = -1


class RunRecorder:
    """Writes runs to ``store`` following the rules in this module's docstring."""

    __slots__ = ("_lock", "_unsaved", "durable", "store")

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.durable = store.durable
        self._lock = threading.Lock()  # guards _unsaved
        self._unsaved: dict[str, tuple[int, RunRecord]] = {}  # run id -> (write mark, final record)

    def run_started(self, record: RunRecord) -> None:
        # Pending steps matter only to a durable store (recovery); any other gets them at the end.
        self.store.save_run(record if self.durable else record.model_copy(update={"steps": {}}))

    def write_mark(self, has_parents: bool) -> int | None:
        """The mark a step cleared to run flushes up to when it starts (None: nothing to wait for)."""
        return self.store.write_mark() if self.durable and has_parents else None

    def item_mark(self, has_parents: bool, instant: bool) -> int | None:
        """The mark an item cleared to run flushes up to when it starts: for an action that does work,
        :data:`EVERY_WRITE` (the items that completed before it starts, however long it was queued);
        an instant action's item (pure: run again after a crash, it does nothing twice) waits for its
        map step's parents alone, as a step does."""
        if self.durable and not instant:
            return EVERY_WRITE
        return self.write_mark(has_parents)

    @property
    def step_saver(self) -> Callable[[str, StepResult], None] | None:
        """What a run calls, under its lock, with each step start and result (None: a store that keeps
        only outcomes, given at the end; live runs are read from memory)."""
        return self.store.save_step if self.durable else None

    def step_starting(self, mark: int | None) -> None:
        """Before a step's action runs: its parents' results are committed (for an item's
        :data:`EVERY_WRITE`, every write made until now)."""
        if mark is not None:
            self.flush(upto=self.store.write_mark() if mark == EVERY_WRITE else mark)

    def steps_settled(self, results: list[StepResult], *, made_ready: bool) -> None:
        """Final step results (saved by the run already); ``made_ready``: they cleared steps to run."""
        if self.durable and made_ready and any(r.status is TaskStatus.COMPLETED for r in results):
            # Committed at once unless another worker is committing: that one commit serves them all,
            # and no worker waits for another's (the dependents wait at their start, on their mark).
            self.flush(wait=False)

    def run_finished(self, final: RunRecord) -> None:
        # A durable store has every step's final result already: save_run upserts the run row alone.
        self.store.save_run(final.model_copy(update={"steps": {}}) if self.durable else final)
        # Up to the final record, not a full flush: the run's own writes (and all before them) are
        # committed when this returns; the event log and the housekeeping keep the writer's schedule.
        mark = self.store.write_mark()
        if not self._flushed(upto=mark):  # read from here until the store has it
            with self._lock:
                self._unsaved[final.run_id] = (mark, final)

    def unsaved(self, run_id: str | None = None) -> list[RunRecord]:
        """The finished runs (``run_id``'s alone, if given) the store has not committed yet."""
        if not self._unsaved:  # the usual case: nothing to check
            return []
        with self._lock:
            waiting = [(rid, entry) for rid, entry in self._unsaved.items() if run_id in (None, rid)]
        records = []
        for rid, (mark, final) in waiting:
            if self._flushed(upto=mark):  # at once: committed already, or raises while saving fails
                with self._lock:
                    self._unsaved.pop(rid, None)
            else:
                records.append(final)
        return records

    def unsaved_run(self, run_id: str, items: ItemWindow | None = None) -> RunRecord | None:
        """Run ``run_id``'s final record if it ended and the store has not committed it yet; with
        ``items``, each map step lists only that window of its items."""
        for final in self.unsaved(run_id):
            return final.model_copy() if items is None else window_record(final, items)
        return None

    def flush(self, upto: int | None = None, *, wait: bool = True) -> None:
        """Flush as ``store.flush`` does, never raising (see :meth:`_flushed`)."""
        self._flushed(upto, wait=wait)

    def _flushed(self, upto: int | None = None, *, wait: bool = True) -> bool:
        """Flush as ``store.flush`` does; False if it raised. The run goes on in memory; the store logs
        and health reports why (losing durability must not also lose the run)."""
        try:
            self.store.flush(upto=upto, wait=wait)
        except OrchestrationError as exc:
            _log.debug("state store flush failed", error=str(exc))
            return False
        return True
