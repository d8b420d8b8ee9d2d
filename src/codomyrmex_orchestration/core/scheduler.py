"""TaskOrchestrator: the one scheduler every task and workflow step runs through, composed of named parts.

* :mod:`._dispatch` — moves tasks through their states under one lock (the worker loop, attempts,
  timeouts, retries, cancellation, callbacks and waiters);
* :mod:`._task_table` — every task by id, retention, the dependency graph and the skip cascade;
* :mod:`._ready_queue` — ready tasks by priority and session turn, resource admission;
* :mod:`._worker_pool` — the worker threads, abandoned-thread replacement, lending a slot;
* :mod:`._task_factory` — checked submission settings, action binding, task ids;
* :mod:`._waits` — threads and callbacks waiting for tasks to settle;
* :mod:`._retry` — when a failed attempt is tried again;
* :mod:`._results` — secret redaction and the output cap on every return value;
* :mod:`.timers` — the shared timer service: attempt deadlines and retry delays.

This module is the public face: validation, submission, queries, waits and shutdown.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

import structlog

from codomyrmex_orchestration.core._dispatch import Dispatcher
from codomyrmex_orchestration.core._limits import OutputLimiter
from codomyrmex_orchestration.core._numbers import check_count, check_seconds, shown
from codomyrmex_orchestration.core._ready_queue import ResourceAdmission
from codomyrmex_orchestration.core._results import ResultPipeline
from codomyrmex_orchestration.core._task import FINAL_EVENT, Outcome, Task, TaskGroup
from codomyrmex_orchestration.core._task_factory import (
    TaskCall,
    TaskFactory,
    TaskSettings,
)
from codomyrmex_orchestration.core._waits import on_settled, wait_all
from codomyrmex_orchestration.core.actions import ActionContext, ActionRegistry
from codomyrmex_orchestration.core.backends import ActionCall, ExecutionBackend, LocalBackend
from codomyrmex_orchestration.core.models import ErrorInfo, TaskPriority, TaskRecord, TaskSpec, TaskStatus
from codomyrmex_orchestration.core.timers import TimerService, wait_limit
from codomyrmex_orchestration.errors import InvalidInputError

__all__ = [
    "DEFAULT_ABANDONED_GRACE",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_WAIT_TIMEOUT",
    "TASK_EVENTS",
    "ResourceAdmission",
    "TaskCall",
    "TaskCallable",
    "TaskGroup",
    "TaskListener",
    "TaskOrchestrator",
    "TaskSettings",
    "TaskState",
]

#: Seconds ``wait``/``wait_all`` wait unless told otherwise (``timeout=None``: without limit, as in
#: every API of the package).
DEFAULT_WAIT_TIMEOUT = 300.0
#: Seconds ``shutdown(wait=True)`` takes at most unless told otherwise.
DEFAULT_SHUTDOWN_TIMEOUT = 300.0
#: Seconds ``shutdown`` gives its own threads, in all, to exit after the work is over.
_JOIN_GRACE = 5.0
#: Longest ``shutdown`` waits by default, in all, for threads abandoned in cancelled calls to return.
DEFAULT_ABANDONED_GRACE = 2.0
#: The reason ``cancel_task`` gives unless told otherwise.
_BY_REQUEST = "cancelled by request"

TaskCallable = Callable[[ActionContext], Any]
TaskListener = Callable[[str, TaskRecord], None]
TaskCallback = Callable[[TaskRecord], None]


class TaskState(Protocol):
    """The fields of a task that ``on_start``/``on_done`` callbacks read: a :class:`TaskRecord` has them,
    and so does the scheduler's live internal state handed to callbacks submitted with
    ``live_state=True`` (read it inside the callback only: it is not a snapshot)."""

    @property
    def task_id(self) -> str: ...
    @property
    def status(self) -> TaskStatus: ...
    @property
    def result(self) -> Any: ...
    @property
    def error(self) -> ErrorInfo | None: ...
    @property
    def attempts(self) -> int: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def finished_at(self) -> datetime | None: ...
    @property
    def duration_seconds(self) -> float | None: ...


StateCallback = Callable[[TaskState], None]


TASK_EVENTS = (
    "task.queued",
    "task.started",
    "task.retrying",
    *FINAL_EVENT.values(),
)

_log = structlog.get_logger("codomyrmex_orchestration.scheduler")


class TaskOrchestrator:
    """The one scheduler: a 5-level priority queue, a worker pool and shared timers.

    Args:
        max_workers: the number of tasks that may run at once (default ``min(32, cpu_count + 4)``).
        registry: the action registry used by :meth:`submit_task` (default: ``create_registry()``).
        resource_manager: admission control consulted before each attempt (see
            :class:`ResourceAdmission`); ``None`` admits every task.
        max_finished: finished records kept for :meth:`get_task`; the oldest are evicted beyond it.
        name: a prefix for thread names and log lines.
        max_abandoned: the most threads left running abandoned tasks that are replaced by new workers
            (default ``max_workers``); beyond it a stuck thread keeps its slot until it returns.
        backend: where action tasks (those submitted with an :class:`ActionCall`) run; default
            :class:`LocalBackend` (these worker threads). With a remote backend the worker threads are
            dispatch slots, so ``max_workers`` bounds the steps in flight on the cluster. The scheduler
            owns the backend: :meth:`shutdown` closes it.
        output_limit: the cap on captured output (see :mod:`._results`); ``None``: none.
        timers: the timer service for deadlines and retry delays; when ``None`` the scheduler makes its
            own and closes it on shutdown (a given one is left open).
        max_queued: the most tasks accepted and not yet started (queued, waiting for dependencies or
            a retry); beyond it :meth:`submit` raises ``LimitExceededError``, except for the tasks of an
            accepted :class:`TaskGroup` (see :meth:`check_queue_room`). ``None``: no cap.
        max_queued_per_client: a client's share of them (see :mod:`._queue_room`; ``None``: 3/4 of it).
        max_parameters_bytes: the most bytes of JSON an action task's parameters may take
            (:meth:`submit_task`; ``CODOMYRMEX_MAX_PARAMETERS_BYTES``, as a run's). ``None``: no limit.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        registry: ActionRegistry | None = None,
        resource_manager: ResourceAdmission | None = None,
        max_finished: int = 10_000,
        name: str = "orchestrator",
        max_abandoned: int | None = None,
        backend: ExecutionBackend | None = None,
        output_limit: OutputLimiter | None = None,
        timers: TimerService | None = None,
        max_queued: int | None = None,
        max_parameters_bytes: int | None = None,
        max_queued_per_client: int | None = None,
    ) -> None:
        max_workers, max_abandoned = _checked_sizes(max_workers, max_queued, max_finished, max_abandoned)
        self.name = name
        self.max_workers = max_workers
        self._resources = resource_manager
        self.backend: ExecutionBackend = backend if backend is not None else LocalBackend()
        self._factory = TaskFactory(registry, self.backend, self.check_resources, max_parameters_bytes)
        self._own_timers = timers is None
        self._timers = timers if timers is not None else TimerService(name=f"{name}-timers")
        self._d = Dispatcher(
            max_workers=max_workers,
            max_abandoned=max_abandoned,
            max_finished=max_finished,
            name=name,
            resources=resource_manager,
            results=ResultPipeline(output_limit),
            timers=self._timers,
            max_queued=max_queued,
            max_queued_per_client=max_queued_per_client,
        )
        self._d.table.id_prefix = self._factory.id_prefix  # to tell an id of an earlier instance
        self._backend_lock = threading.Lock()  # guards _backend_open
        self._backend_open = True
        self._started_mono = time.monotonic()

    @property
    def max_finished(self) -> int:
        return self._d.table.max_finished

    @property
    def max_abandoned(self) -> int:
        return self._d.pool.max_abandoned

    @property
    def timers(self) -> TimerService:
        """The timer service deadlines are armed on (the engine's shared one, when it gave one)."""
        return self._timers

    # ------------------------------------------------------------------ submission

    def settings(
        self,
        *,
        priority: TaskPriority = TaskPriority.NORMAL,
        timeout: float | None = None,
        max_retries: int = 0,
        retry_delay: float = 0.0,
        backoff: float = 2.0,
        resources: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        live_state: bool = False,
        session_id: str | None = None,
        group: TaskGroup | None = None,
    ) -> TaskSettings:
        """Checked settings for any number of submissions (``submit(settings=)``, :meth:`submit_many`);
        the arguments are :meth:`submit`'s of the same names.

        Raises:
            InvalidInputError: a bad priority, timeout or retry setting, an id that is not a string.
            InsufficientResourcesError: ``resources`` can never be satisfied.
        """
        return self._factory.settings(
            priority,
            timeout,
            max_retries,
            retry_delay,
            backoff,
            resources,
            run_id,
            live_state,
            session_id,
            group,
        )

    def submit(
        self,
        fn: TaskCallable | None,
        *,
        name: str,
        priority: TaskPriority = TaskPriority.NORMAL,
        dependencies: Sequence[str] = (),
        timeout: float | None = None,
        max_retries: int = 0,
        retry_delay: float = 0.0,
        backoff: float = 2.0,
        resources: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        step_name: str | None = None,
        on_start: TaskCallback | StateCallback | None = None,
        on_done: TaskCallback | StateCallback | None = None,
        action: ActionCall | None = None,
        live_state: bool = False,
        session_id: str | None = None,
        batch: list[Task] | None = None,
        group: TaskGroup | None = None,
        settings: TaskSettings | None = None,
        instant: bool = False,
    ) -> str:
        """Queue ``fn(ctx)`` and return its task id.

        Args:
            fn: called on a worker thread with an :class:`ActionContext`; its return value is the result.
                May be ``None`` when ``action`` is given (the action is then looked up in the registry).
            name: a label for records and logs.
            priority: lower values run first (a name such as ``"high"`` too); within a level sessions
                take turns, FIFO within a session.
            dependencies: task ids that must complete first; if one ends in any other way this task
                is SKIPPED. A completed one counts at once while its record is kept (see ``max_finished``).
            timeout: seconds per attempt (inf: no limit); the attempt is then TIMED_OUT (its
                ``cancel_event`` set).
            max_retries, retry_delay, backoff: see :class:`~._retry.RetryPolicy` (a step's ranges).
            resources: requirements held while an attempt runs (needs a ``resource_manager``).
            run_id, step_name: set when the task is a workflow step.
            on_start: called with a record snapshot when each attempt starts.
            on_done: called exactly once with the final record, after listeners, on the thread that
                finished the task, before it takes other work: keep it short.
            action: the same step described as action name + resolved parameters; the backend may run
                it elsewhere (a Dask worker) instead of calling ``fn`` here.
            live_state: give ``on_start``/``on_done`` the live :class:`TaskState` (to read inside the
                callback only) instead of a :class:`TaskRecord` snapshot.
            session_id: the client session the task belongs to (fairness between sessions).
            batch: build the task and append it here instead of queueing it; :meth:`submit_batch` queues
                the tasks of a batch together (a workflow's wave of steps).
            group: the :class:`TaskGroup` it is cancelled with (see :meth:`cancel_group`).
            settings: from :meth:`settings`, checked once for many tasks; given, the arguments it holds
                (``priority`` to ``backoff``, ``resources``, ``run_id`` ... ``group``) are not read.
            instant: ``fn`` returns at once and never blocks (as ``ActionDefinition.instant``; without
                ``fn``, the action's definition says).

        Raises:
            SchedulerShutdownError: the scheduler no longer accepts work.
            TaskNotFoundError: a dependency id is unknown (or its record was already evicted).
            InvalidInputError: an argument of the wrong type or out of range (the message names it).
            InsufficientResourcesError: ``resources`` can never be satisfied.
            LimitExceededError: ``max_queued`` tasks, or the client's share, are already waiting to start.
        """
        if settings is None:
            settings = self._factory.settings(
                priority,
                timeout,
                max_retries,
                retry_delay,
                backoff,
                resources,
                run_id,
                live_state,
                session_id,
                group,
            )
        task = self._factory.task(
            fn, name, step_name, on_start, on_done, action, dependencies, instant, settings
        )
        if batch is not None:
            batch.append(task)
        else:
            self._d.add((task,))
        return task.id

    def submit_batch(self, batch: Sequence[Task], after: TaskState | None = None) -> None:
        """Queue the tasks :meth:`submit` built into ``batch``, in order, in one acquisition of the
        scheduler's lock. All or none: when one is refused (shutdown, ``max_queued``, an unknown
        dependency; it raises what :meth:`submit` raises), none is queued. ``after``: the state an
        ``on_done`` was given, called from that ``on_done``: the worker delivering it queues the batch
        as it records that task's end (no lock taken here), and a refused task fails instead."""
        if type(after) is Outcome and after.open and after.thread == threading.get_ident():
            after.follow.extend(batch)  # its worker admits them (Dispatcher._admit_locked)
        else:
            self._d.add(batch)

    def submit_many(self, calls: Sequence[TaskCall], settings: TaskSettings | None = None) -> list[str]:
        """Queue tasks that share their ``settings`` (from :meth:`settings`; default: its defaults), in
        order, in one acquisition of the scheduler's lock (a map step's wave of items); returns their
        ids. All or none: when one is refused (it raises what :meth:`submit` raises), none is queued.
        Tasks may depend on earlier calls' tasks only."""
        settings = settings if settings is not None else self.settings()
        tasks = [self._factory.task(*call, settings) for call in calls]
        self._d.add(tasks)
        return [task.id for task in tasks]

    def submit_task(
        self,
        spec: TaskSpec,
        *,
        run_id: str | None = None,
        on_start: TaskCallback | None = None,
        on_done: TaskCallback | None = None,
        session_id: str | None = None,
    ) -> str:
        """Queue an action task: ``registry.get(spec.module, spec.action).func(spec.parameters, ctx)``.

        Raises:
            UnknownActionError, ActionRefusedError, InvalidInputError: at submission (as a step's would be).
            LimitExceededError: the parameters' JSON is over ``max_parameters_bytes``.
            Everything :meth:`submit` raises.
        """
        return self.submit(
            None,
            action=self._factory.action_call(spec),
            name=spec.name,
            priority=spec.priority,
            dependencies=spec.dependencies,
            timeout=spec.timeout,
            max_retries=spec.max_retries,
            retry_delay=spec.retry_delay,
            backoff=spec.backoff,
            resources=spec.resources or None,
            run_id=run_id,
            on_start=on_start,
            on_done=on_done,
            session_id=session_id,
        )

    def check_queue_room(self, client: str | None = None) -> None:
        """Raise ``LimitExceededError`` if ``max_queued`` tasks, or ``client``'s share, already wait to
        start: the door of work accepted as a whole, a run, whose steps (a group created ``accepted``)
        the cap then never refuses, however many become ready at once."""
        self._d.check_room(client)

    def check_resources(self, requirements: Mapping[str, Any]) -> None:
        """Raise unless ``requirements`` could ever be granted here (``InsufficientResourcesError`` past
        a capacity, ``InvalidInputError`` / ``ResourceNotFoundError`` for a bad key or amount)."""
        if self._resources is None:
            raise InvalidInputError(
                "resources", "this scheduler has no resource manager, so tasks cannot require resources"
            )
        self._resources.check_satisfiable(requirements)

    # ------------------------------------------------------------------ queries and waits

    def get_task(self, task_id: str) -> TaskRecord:
        """A snapshot of the task's record. Raises :class:`TaskNotFoundError` if unknown or evicted."""
        with self._d.lock:
            return self._d.table.require(task_id).snapshot()

    def list_tasks(self, status: TaskStatus | str | None = None, limit: int = 100) -> list[TaskRecord]:
        """Up to ``limit`` records (most recently submitted first), optionally of one ``status`` (a
        :class:`TaskStatus` or its value: ``"completed"``).

        Raises:
            InvalidInputError: an unknown ``status`` (the message lists them), or ``limit`` below 1.
        """
        wanted = None if status is None else _task_status(status)
        limit = check_count(limit, "limit", at_least=1)
        with self._d.lock:
            return self._d.table.records(wanted, limit)

    def group_starts(self, group: TaskGroup) -> dict[str, tuple[int, datetime | None]]:
        """``(attempts, first start time)`` of the tasks of ``group`` that started and are not final, by
        step name (or name)."""
        with self._d.lock:
            return {t.step_name or t.name: (t.attempts, t.started_at) for t in group.tasks if t.attempts}

    def wait(self, task_id: str, timeout: float | None = DEFAULT_WAIT_TIMEOUT) -> TaskRecord:
        """Block until the task is final (and its callbacks have run) and return its record: what
        :meth:`wait_all` does for one task, with the same ``timeout`` and errors."""
        return self.wait_all([task_id], timeout)[0]

    def wait_all(
        self, task_ids: Iterable[str], timeout: float | None = DEFAULT_WAIT_TIMEOUT
    ) -> list[TaskRecord]:
        """Wait for every task in ``task_ids`` within one overall ``timeout``; records in the same order.

        The tasks are looked up once at the start, so records evicted while waiting are still returned.

        Args:
            timeout: seconds, 0 or more (default :data:`DEFAULT_WAIT_TIMEOUT`); ``None`` or inf: no limit.

        Raises:
            TaskNotFoundError: an unknown id (or a finished record already evicted).
            WaitTimeoutError: not all were final in time (they go on running).
            InvalidInputError: a negative or NaN ``timeout``.
        """
        return wait_all(self._d, task_ids, timeout)

    def on_settled(self, task_id: str, callback: TaskCallback) -> None:
        """Call ``callback(record)`` once the task is final and its own callbacks have run (just before
        :meth:`wait` returns), without a thread blocked on it: the way to hand the news to an event loop.

        It runs on the thread that settles the task, or at once on this thread if the task is already
        settled, so it must be quick and must not block; its exceptions are logged.

        Raises:
            TaskNotFoundError: unknown id (or a finished record already evicted).
        """
        on_settled(self._d, task_id, callback)

    def get_execution_stats(self) -> dict[str, Any]:
        """Counts per status and priority, queue depth, running, workers and totals since start."""
        stats = _execution_stats(self._d, self.max_workers, time.monotonic() - self._started_mono)
        stats["backend"] = self.backend.describe()  # outside the lock: a cluster answers over the network
        return stats

    def health(self) -> dict[str, Any]:
        """Liveness of the timers and workers, whether work is accepted, load figures, stuck tasks."""
        health = _health(self._d, timers_alive=not self._timers.closed)
        health["abandoned_tasks"] = _stuck_tasks(self._d)
        health["backend"] = self.backend.describe()
        return health

    # ------------------------------------------------------------------ listeners and cancellation

    def add_listener(self, fn: TaskListener) -> None:
        """Call ``fn(event, record)`` for every task event (see :data:`TASK_EVENTS`)."""
        with self._d.lock:
            self._d.listeners = (*self._d.listeners, fn)

    def remove_listener(self, fn: TaskListener) -> None:
        with self._d.lock:
            self._d.listeners = tuple(f for f in self._d.listeners if f != fn)

    def cancel_task(self, task_id: str, reason: str = _BY_REQUEST, *, timed_out: bool = False) -> bool:
        """Cancel a queued, waiting or running task; False if it is already final.

        A running task's ``cancel_event`` is set (cooperative actions stop, subprocess actions kill
        their process group) and its record is CANCELLED at once; a late return value is discarded.
        ``timed_out``: a caller's deadline passed: TIMED_OUT instead (``StepTimeoutError``, ``reason``).

        Raises:
            TaskNotFoundError: unknown id.
        """
        return self._d.cancel(task_id, reason, timed_out)

    def cancel_group(self, group: TaskGroup, reason: str) -> None:
        """Cancel every task of ``group`` that is not final, and every task submitted to it from now on
        (it ends CANCELLED as it arrives). A task whose call has returned ends as it returned."""
        self._d.cancel_group(group, reason)

    # ------------------------------------------------------------------ shutdown

    def shutdown(
        self,
        wait: bool = True,
        cancel_pending: bool = False,
        timeout: float | None = DEFAULT_SHUTDOWN_TIMEOUT,
        *,
        abandoned_grace: float = DEFAULT_ABANDONED_GRACE,
    ) -> None:
        """Stop accepting work and let the threads end.

        Args:
            wait: block until outstanding work is final and the threads exited, within ``timeout``.
            cancel_pending: cancel tasks that have not started (queued, waiting for dependencies or a
                retry) instead of running them.
            timeout: seconds the whole shutdown takes at most (default :data:`DEFAULT_SHUTDOWN_TIMEOUT`;
                ``None``: no limit); the work unfinished then is cancelled, the threads get what is left.
            abandoned_grace: of ``timeout``, seconds for threads in abandoned calls to return (0: none).
        """
        grace = check_seconds(abandoned_grace, "abandoned_grace", allow_zero=True, unlimited=True) or 0.0
        self._d.close("scheduler shut down" if cancel_pending else None)
        if wait:
            _wait_out(self._d, self._timers if self._own_timers else None, wait_limit(timeout), grace)
            _close_backend(self)

    def __enter__(self) -> TaskOrchestrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)


def _health(d: Dispatcher, *, timers_alive: bool) -> dict[str, Any]:
    """The dispatcher's liveness and load figures (``timers_alive``: the timer service is open)."""
    with d.lock:
        timers_alive = timers_alive and not d.closing
        return {
            "timers_alive": timers_alive,
            "dispatcher_alive": timers_alive,  # the name before the shared timer service
            **d.pool.figures_locked(),
            "accepting": d.accepting,
            "queue_depth": len(d.queue),
            "running": d.running,
            "active": d.table.active,
        }


def _execution_stats(d: Dispatcher, max_workers: int, uptime: float) -> dict[str, Any]:
    with d.lock:
        return {
            **d.table.counts(),
            "queue_depth": d.queue.depths(),
            "queued": len(d.queue),
            "running": d.running,
            "active": d.table.active,
            "workers": d.pool.live,
            "idle_workers": d.pool.idle,
            "max_workers": max_workers,
            "abandoned_threads": d.pool.abandoned,
            "blocked_threads": d.pool.blocked,
            "uptime_seconds": uptime,
        }


def _close_backend(orch: TaskOrchestrator) -> None:
    """Close the backend once, after the threads that use it are gone (``shutdown(wait=True)``)."""
    with orch._backend_lock:
        if not orch._backend_open:
            return
        orch._backend_open = False
    try:
        orch.backend.close()
    except Exception:
        _log.exception("scheduler.backend_close_failed", scheduler=orch.name, backend=orch.backend.name)


def _wait_out(d: Dispatcher, own_timers: TimerService | None, limit: float | None, grace: float) -> None:
    """``shutdown``'s wait: for the work, then the threads, then the scheduler's own timer service, all
    within one deadline ``limit`` seconds away (``None``: none), as a caller's timeout promises."""
    deadline = math.inf if limit is None else time.monotonic() + limit
    if not d.wait_quiet(limit):
        d.close(f"scheduler shut down after waiting {limit:g} s", running_too=True)
    # The workers get what is left of it, up to _JOIN_GRACE; threads in abandoned calls up to the grace.
    now = time.monotonic()
    d.pool.join(min(deadline, now + _JOIN_GRACE), min(deadline, now + grace))
    if own_timers is not None:
        own_timers.close(max(0.0, min(deadline, time.monotonic() + _JOIN_GRACE) - time.monotonic()))


def _stuck_tasks(d: Dispatcher) -> list[str]:
    """Up to 10 of the tasks whose abandoned calls still hold a thread, by name and id."""
    with d.lock:
        stuck = d.pool.stuck_locked(10)
    return [f"{t.name!r} ({t.id})" for t in stuck if isinstance(t, Task)]


def _task_status(value: object) -> TaskStatus:
    """A :class:`TaskStatus` from itself or its value (in any case)."""
    if isinstance(value, str):
        try:
            return TaskStatus(value.lower())
        except ValueError:
            pass
    raise InvalidInputError(
        "status", f"{shown(value)} is not a task status; use one of {', '.join(TaskStatus)}"
    )


def _checked_sizes(
    max_workers: int | None, max_queued: int | None, max_finished: int, max_abandoned: int | None
) -> tuple[int, int]:
    """``max_workers`` and ``max_abandoned`` (their defaults for ``None``), once the scheduler's sizes
    are checked: whole numbers, ``max_queued`` (``None``: no cap) and ``max_workers`` at least 1."""
    if max_workers is None:
        max_workers = min(32, (os.cpu_count() or 1) + 4)
    check_count(max_workers, "max_workers", at_least=1)
    if max_queued is not None:
        check_count(max_queued, "max_queued", at_least=1)
    check_count(max_finished, "max_finished", at_least=0)
    if max_abandoned is None:
        return max_workers, max_workers
    return max_workers, check_count(max_abandoned, "max_abandoned", at_least=0)
