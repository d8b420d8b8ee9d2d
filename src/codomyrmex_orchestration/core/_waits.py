"""Waiting for tasks: a thread blocks on a task's done event, or a callback is kept to run when the task
settles (final and its own callbacks run). Both live on the task, under the dispatcher's lock; this module
owns no state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from codomyrmex_orchestration.core._callbacks import safe_call
from codomyrmex_orchestration.core._dispatch import Dispatcher
from codomyrmex_orchestration.core._numbers import check_seconds
from codomyrmex_orchestration.core._task import Task
from codomyrmex_orchestration.core.models import TaskRecord, TaskStatus
from codomyrmex_orchestration.core.timers import wait_limit
from codomyrmex_orchestration.errors import WaitTimeoutError

__all__ = ["on_settled", "wait_all"]


def wait_all(d: Dispatcher, task_ids: Iterable[str], timeout: float | None) -> list[TaskRecord]:
    """Block until every task of ``task_ids`` settled, within one overall ``timeout`` (``None`` or inf:
    without limit; negative or NaN: ``InvalidInputError``); their records in the same order (see
    ``TaskOrchestrator.wait_all``)."""
    limit = wait_limit(check_seconds(timeout, "timeout", allow_zero=True, unlimited=True))
    deadline = None if limit is None else time.monotonic() + limit
    pending: list[tuple[Task, threading.Event]] = []
    with d.lock:
        tasks = [d.table.require(task_id) for task_id in task_ids]
        for task in tasks:
            if not task.settled:
                if task.done_event is None:
                    task.done_event = threading.Event()
                pending.append((task, task.done_event))
    for task, event in pending:
        if not event.wait(None if deadline is None else max(0.0, deadline - time.monotonic())):
            others = sum(1 for other, done in pending if other is not task and not done.is_set())
            with d.lock:
                state = _where(task)
            raise WaitTimeoutError(f"task {task.id!r} ({task.name})", limit or 0.0, state, others)
    with d.lock:
        return [task.snapshot() for task in tasks]


def _where(task: Task) -> str:
    """Where a task that has not settled is, for a wait's timeout message."""
    if task.status is TaskStatus.READY:
        return "queued"
    if task.status is TaskStatus.PENDING:
        return "waiting to retry" if task.attempts else "waiting for its dependencies"
    if task.status is TaskStatus.RUNNING:
        return "running"
    return f"delivering its result (it ended {task.status.value})"  # final, its callbacks still running


def on_settled(d: Dispatcher, task_id: str, callback: Callable[[TaskRecord], None]) -> None:
    """Call ``callback(record)`` once the task settles, or at once if it has (see
    ``TaskOrchestrator.on_settled``)."""
    with d.lock:
        task = d.table.require(task_id)
        if not task.settled:
            if task.settle_callbacks is None:
                task.settle_callbacks = []
            task.settle_callbacks.append(callback)
            return
    safe_call(callback, "on_settled", task, task.snapshot())  # final: its fields no longer change
