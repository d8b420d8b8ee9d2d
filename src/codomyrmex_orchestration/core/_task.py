"""The scheduler's record of one task (:class:`Task`) and the :class:`Outbox` of what a locked section
leaves to do once the scheduler's lock is released.

A :class:`Task` is owned by its scheduler and guarded by the scheduler's lock, except where a field says
otherwise; :class:`~codomyrmex_orchestration.core.models.TaskRecord` snapshots are built from it on demand.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError

from codomyrmex_orchestration.core._retry import RetryPolicy
from codomyrmex_orchestration.core.models import ErrorInfo, TaskPriority, TaskRecord, TaskStatus

if TYPE_CHECKING:
    from codomyrmex_orchestration.core._worker_pool import Worker
    from codomyrmex_orchestration.core.actions import ActionContext
    from codomyrmex_orchestration.core.timers import Timer

__all__ = ["FINAL", "FINAL_EVENT", "LazyLogger", "Notice", "Outbox", "Outcome", "Task", "TaskGroup"]

FINAL_EVENT = {
    TaskStatus.COMPLETED: "task.completed",
    TaskStatus.FAILED: "task.failed",
    TaskStatus.TIMED_OUT: "task.timed_out",
    TaskStatus.CANCELLED: "task.cancelled",
    TaskStatus.SKIPPED: "task.skipped",
}
FINAL = frozenset(FINAL_EVENT)
_PENDING = TaskStatus.PENDING  # read once: TaskStatus.X is slow on Python 3.11 (see _dispatch)

TaskCallable = Callable[["ActionContext"], Any]

_log = structlog.get_logger("codomyrmex_orchestration.scheduler")


class Task:
    """The mutable state of one task, from submission until it is evicted from the task table."""

    __slots__ = (
        "attempts",
        "cancel_event",
        "dependencies",
        "done_event",
        "error",
        "finished_at",
        "fn",
        "group",
        "handed",
        "held",
        "id",
        "instant",
        "live_state",
        "mono_finished",
        "mono_started",
        "name",
        "on_done",
        "on_start",
        "priority",
        "resource_handle",
        "resources",
        "result",
        "retry",
        "run_id",
        "session_id",
        "settle_callbacks",
        "settled",
        "started_at",
        "status",
        "step_name",
        "submitted_at",
        "timeout",
        "timer",
        "worker",
    )

    def __init__(
        self,
        task_id: str,
        fn: TaskCallable,
        name: str,
        priority: TaskPriority,
        dependencies: tuple[str, ...],
        timeout: float | None,
        retry: RetryPolicy,
        resources: Mapping[str, Any] | None,
        run_id: str | None,
        step_name: str | None,
        on_start: Callable[[Any], None] | None,
        on_done: Callable[[Any], None] | None,
        live_state: bool,
        session_id: str | None = None,
        group: TaskGroup | None = None,
        instant: bool = False,
    ) -> None:
        self.id = task_id
        self.instant = instant  # its call returns at once and never blocks (ActionDefinition.instant)
        self.group = group
        self.fn = fn
        self.name = name
        self.priority = priority
        self.dependencies = dependencies
        self.timeout = timeout
        self.retry = retry
        self.resources = resources
        self.run_id = run_id
        self.step_name = step_name
        self.session_id = session_id
        self.on_start = on_start
        self.on_done = on_done
        self.live_state = live_state
        self.status = _PENDING
        self.handed = False  # its dependency graph node came out of get_ready(): it may be queued
        self.held = False  # not queued before its "task.queued" notice reached the listeners
        self.settled = False  # final and its callbacks have run: waiters may return
        self.attempts = 0
        self.result: Any = None
        self.error: ErrorInfo | None = None
        self.cancel_event: threading.Event | None = None
        self.done_event: threading.Event | None = None
        self.settle_callbacks: list[Callable[[TaskRecord], None]] | None = None
        self.worker: Worker | None = None
        self.timer: Timer | None = None  # the running attempt's deadline, or the pending retry
        self.resource_handle: object | None = None
        self.submitted_at = datetime.now(UTC)
        self.started_at: datetime | None = None
        self.finished_at: datetime | None = None
        self.mono_started: float | None = None
        self.mono_finished: float | None = None

    @property
    def task_id(self) -> str:
        return self.id

    @property
    def duration_seconds(self) -> float | None:
        if self.mono_started is not None and self.mono_finished is not None:
            return self.mono_finished - self.mono_started
        return None

    def snapshot(self, outcome: Outcome | None = None) -> TaskRecord:
        """A record of the task as it stands, or as ``outcome`` ends it (handed to ``on_done`` before the
        scheduler records the end)."""
        # Validating is cheaper than model_construct here (pydantic-core does it in Rust, ~2 µs).
        state: Task | Outcome = self if outcome is None else outcome
        fields = {
            "task_id": self.id,
            "name": self.name,
            "status": state.status,
            "priority": self.priority,
            "result": state.result,
            "error": state.error,
            "attempts": state.attempts,
            "dependencies": self.dependencies,
            "run_id": self.run_id,
            "step_name": self.step_name,
            "submitted_at": self.submitted_at,
            "started_at": state.started_at,
            "finished_at": state.finished_at,
            "duration_seconds": state.duration_seconds,
        }
        try:
            return TaskRecord(**fields)
        except ValidationError:
            # Fields that got past the submission checks (a hand-made ``TaskSettings``): a record that
            # cannot be validated must not kill the thread settling the task nor leave it RUNNING.
            _log.error("scheduler.invalid_task_fields", task_id=self.id, name=repr(self.name)[:80])
            return TaskRecord.model_construct(**{**fields, "dependencies": list(self.dependencies)})

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.name!r} {self.status.value}>"


class TaskGroup:
    """Tasks that are cancelled together (a workflow run's steps): once the group is cancelled, its
    tasks not final are cancelled and any task submitted to it later ends CANCELLED as it arrives.
    Guarded by the scheduler's lock; its owner only creates it and hands it to submissions."""

    __slots__ = ("accepted", "cancelled", "keep_final", "reason", "tasks")

    def __init__(self, *, keep_final: bool = True, accepted: bool = False) -> None:
        self.tasks: set[Task] = set()  # its tasks queued, waiting or running (not final)
        self.cancelled = False
        self.reason = ""
        # False: its tasks are forgotten as they end (their owner keeps what they ended with, as a
        # run keeps its steps' results), so they never take a place in the finished-task retention.
        self.keep_final = keep_final
        # True: its tasks are work accepted as a whole (a run, whose start checked the queue's room,
        # ``TaskOrchestrator.check_queue_room``): the queue's cap counts them but never refuses one.
        self.accepted = accepted


class Outcome:
    """A task's final state as its worker hands it to ``on_done`` before the scheduler records it (the
    fields of :class:`~codomyrmex_orchestration.core.scheduler.TaskState`); see ``Dispatcher._work``."""

    __slots__ = (
        "attempts",
        "duration_seconds",
        "error",
        "finished_at",
        "follow",
        "open",
        "result",
        "started_at",
        "status",
        "task_id",
        "thread",
    )

    def __init__(
        self,
        task: Task,
        status: TaskStatus,
        result: Any,
        error: ErrorInfo | None,
        finished_at: datetime,
        mono: float,
    ) -> None:
        # The task's fields read here do not change while its worker runs it.
        self.task_id = task.id
        self.status = status
        self.result = result
        self.error = error
        self.attempts = task.attempts
        self.started_at = task.started_at
        self.finished_at = finished_at
        self.duration_seconds = mono - task.mono_started if task.mono_started is not None else None
        # Tasks its on_done submits on this thread with it (``submit_batch(after=)``), queued by the
        # worker as it records this end: open while on_done runs.
        self.follow: list[Task] = []
        self.open = True
        self.thread = threading.get_ident()


#: An event to hand to listeners and callbacks: (task, event name, snapshot taken at the event, final?).
Notice = tuple[Task, str, TaskRecord | None, bool]


class Outbox:
    """What one locked section of the scheduler leaves for after the lock is released.

    Resource handles are released outside the lock because a resource manager calls its release
    listeners (the scheduler among them) synchronously; listeners and callbacks are user code.
    """

    __slots__ = ("cancels", "handles", "listeners", "notices", "releases")

    def __init__(self) -> None:
        self.notices: list[Notice] = []
        self.handles: list[object] = []
        # Cancel events to set: they run callbacks (kill a process group, cancel a child run) that may
        # call back into the scheduler.
        self.cancels: list[threading.Event] = []
        # Settled tasks with the waiter event to set and the on_settled callbacks to run (taken off the
        # task under the lock).
        self.releases: list[tuple[Task, threading.Event | None, Sequence[Callable[[TaskRecord], None]]]] = []
        self.listeners: tuple[Callable[[str, TaskRecord], None], ...] = ()


class LazyLogger:
    """An action's logger, bound with its ids only when the action first logs (most never do)."""

    __slots__ = ("_logger", "_task")

    def __init__(self, task: Task) -> None:
        self._task = task  # its ids never change
        self._logger: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._logger is None:  # two threads logging first at once bind twice, harmlessly
            task = self._task
            self._logger = structlog.get_logger("codomyrmex_orchestration.action").bind(
                step=task.step_name or task.name, run_id=task.run_id, task_id=task.id
            )
        return getattr(self._logger, name)
