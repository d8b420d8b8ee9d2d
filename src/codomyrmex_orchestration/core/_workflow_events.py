"""The listeners of workflow events (``run.*``, ``step.*``, ``workflow.*``) and the event names.

:class:`Listeners` owns the listener list as an immutable tuple replaced on every change (copy on
write), so an emit iterates a snapshot while listeners are added or removed from other threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import structlog

from codomyrmex_orchestration.core.models import TaskStatus, WorkflowStatus

__all__ = ["RUN_EVENTS", "STEP_EVENTS", "Listeners", "RunListener"]

_log = structlog.get_logger("codomyrmex_orchestration.workflows")

RunListener = Callable[[str, dict[str, Any]], None]

#: The event of a final step status (any other final status: ``step.failed``).
STEP_EVENTS = {
    TaskStatus.COMPLETED: "step.completed",
    TaskStatus.SKIPPED: "step.skipped",
    TaskStatus.CANCELLED: "step.cancelled",
    TaskStatus.TIMED_OUT: "step.timed_out",
}
#: The event of a final run status (any other: ``run.failed``).
RUN_EVENTS = {WorkflowStatus.COMPLETED: "run.completed", WorkflowStatus.CANCELLED: "run.cancelled"}


class Listeners:
    """Callbacks ``fn(event, payload)``; one that raises is logged and the others still run."""

    __slots__ = ("_fns", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()  # orders the writers of _fns; readers take the tuple as it is
        self._fns: tuple[RunListener, ...] = ()

    def __bool__(self) -> bool:
        return bool(self._fns)

    def add(self, fn: RunListener) -> None:
        with self._lock:
            self._fns = (*self._fns, fn)

    def remove(self, fn: RunListener) -> None:
        """Remove ``fn`` (its first registration); nothing happens if it is not registered."""
        with self._lock:
            fns = list(self._fns)
            if fn in fns:
                fns.remove(fn)
                self._fns = tuple(fns)

    def emit(self, event: str, payload: dict[str, Any]) -> None:
        for fn in self._fns:  # one read of the attribute: a snapshot no add/remove changes
            try:
                fn(event, payload)
            except Exception:
                _log.exception("run listener failed", listener=repr(fn), run_event=event)
