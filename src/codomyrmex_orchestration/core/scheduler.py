"""TaskOrchestrator: the one priority queue and worker pool that every task and workflow step runs through.

Design, in short (the README's "Scheduler" section has the long form):

* One lock (``_lock``) guards all task state. Workers take work straight from five per-priority FIFO
  deques under that lock, so a task costs one handoff (submitter -> worker), like a raw
  ``ThreadPoolExecutor``. A worker that finishes a task records it and takes its next one in the same
  lock acquisition.
* The workers are our own daemon threads rather than a ``ThreadPoolExecutor``: a task that times out or
  is cancelled while its thread cannot be interrupted leaves that thread *abandoned*; we hand its slot to
  a replacement thread at once (a ``ThreadPoolExecutor`` cannot grow past a stuck thread) and the
  abandoned thread exits (or rejoins, if a slot is free) when its call finally returns.
* One daemon dispatcher thread owns the timers: attempt deadlines, retry delays and wake-ups after
  resources are released. It sleeps on a condition until the earliest timer; nothing polls.
* Callbacks and listeners run outside the lock; their exceptions are logged and swallowed.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

import structlog

from codomyrmex_orchestration._redact import redact
from codomyrmex_orchestration.core._limits import OutputLimiter
from codomyrmex_orchestration.core._locks import YieldingLock, yielding_condition
from codomyrmex_orchestration.core.actions import ActionContext, ActionRegistry, CancelEvent, create_registry
from codomyrmex_orchestration.core.backends import ActionCall, ExecutionBackend, LocalBackend
from codomyrmex_orchestration.core.models import ErrorInfo, TaskPriority, TaskRecord, TaskSpec, TaskStatus
from codomyrmex_orchestration.errors import (
    InvalidInputError,
    SchedulerShutdownError,
    StepCancelledError,
    StepTimeoutError,
    TaskNotFoundError,
    WaitTimeoutError,
)

__all__ = [
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_WAIT_TIMEOUT",
    "TASK_EVENTS",
    "ResourceAdmission",
    "TaskCallable",
    "TaskListener",
    "TaskOrchestrator",
    "TaskState",
]

#: Seconds ``wait``/``wait_all`` wait when given ``timeout=None``: no wait is ever unbounded.
DEFAULT_WAIT_TIMEOUT = 300.0
#: Seconds ``shutdown(wait=True)`` waits for outstanding work when given ``timeout=None``.
DEFAULT_SHUTDOWN_TIMEOUT = 300.0
#: Seconds ``shutdown`` gives each of its own threads to exit after the work is over.
_JOIN_GRACE = 5.0
#: Longest shutdown waits, in all, for threads abandoned in cancelled calls to return.
_ABANDONED_GRACE = 2.0

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
    "task.completed",
    "task.failed",
    "task.timed_out",
    "task.cancelled",
    "task.skipped",
)

_log = structlog.get_logger("codomyrmex_orchestration.scheduler")

_PRIORITIES = tuple(TaskPriority)
_FINAL_EVENT = {
    TaskStatus.COMPLETED: "task.completed",
    TaskStatus.FAILED: "task.failed",
    TaskStatus.TIMED_OUT: "task.timed_out",
    TaskStatus.CANCELLED: "task.cancelled",
    TaskStatus.SKIPPED: "task.skipped",
}
_FINAL = frozenset(_FINAL_EVENT)

#: Size of the timer heap above which stale entries are dropped.
_TIMER_COMPACT_AT = 1024

# Timer kinds in the dispatcher's heap.
_DEADLINE = 0
_RETRY = 1


class ResourceAdmission(Protocol):
    """What the scheduler needs from a resource manager (``ResourceManager`` implements it)."""

    def check_satisfiable(self, requirements: Mapping[str, Any]) -> None:
        """Raise ``InsufficientResourcesError`` if ``requirements`` exceed total capacity (+ burst)."""

    def try_acquire(self, requester_id: str, requirements: Mapping[str, Any]) -> object | None:
        """Allocate all of ``requirements`` at once and return a handle, or ``None`` if not now."""

    def release_handle(self, handle: object) -> None:
        """Release what ``try_acquire`` allocated."""

    def add_release_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from any thread, without locks of ours) whenever capacity is freed."""


class _LazyLogger:
    """An action's logger, bound with its ids only when the action first logs (most never do)."""

    __slots__ = ("_logger", "_task")

    def __init__(self, task: _Task) -> None:
        self._task = task  # its ids are read at the first log call
        self._logger: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._logger is None:  # two threads logging first at once bind twice, harmlessly
            task = self._task
            self._logger = structlog.get_logger("codomyrmex_orchestration.action").bind(
                step=task.step_name or task.name, run_id=task.run_id, task_id=task.id
            )
        return getattr(self._logger, name)


class _Worker:
    __slots__ = ("abandoned", "block_hook", "blocked", "thread")

    def __init__(self) -> None:
        self.abandoned = False
        # Inside ActionContext.blocking(): waiting on other scheduled work, not counted as live.
        self.blocked = False
        self.thread: threading.Thread | None = None
        #: ActionContext.block_hook for the tasks this worker runs (made once, not per task).
        self.block_hook: Callable[[], AbstractContextManager[None]] | None = None


class _Task:
    """Internal mutable state of one task; ``TaskRecord`` snapshots are built from it on demand."""

    __slots__ = (
        "attempts",
        "backoff",
        "cancel_event",
        "dependencies",
        "dependents",
        "done_event",
        "error",
        "finished_at",
        "fn",
        "id",
        "live_state",
        "max_retries",
        "mono_finished",
        "mono_started",
        "name",
        "on_done",
        "on_start",
        "priority",
        "resource_handle",
        "resources",
        "result",
        "retry_delay",
        "run_id",
        "settle_callbacks",
        "settled",
        "started_at",
        "status",
        "step_name",
        "submitted_at",
        "timeout",
        "unmet",
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
        max_retries: int,
        retry_delay: float,
        backoff: float,
        resources: Mapping[str, Any] | None,
        run_id: str | None,
        step_name: str | None,
        on_start: Callable[[Any], None] | None,
        on_done: Callable[[Any], None] | None,
        live_state: bool,
    ) -> None:
        self.id = task_id
        self.fn = fn
        self.name = name
        self.priority = priority
        self.dependencies = dependencies
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self.backoff = backoff
        self.resources = resources
        self.run_id = run_id
        self.step_name = step_name
        self.on_start = on_start
        self.on_done = on_done
        self.live_state = live_state
        self.status = TaskStatus.PENDING
        self.settled = False  # final and its callbacks have run: waiters may return
        self.attempts = 0
        self.result: Any = None
        self.error: ErrorInfo | None = None
        self.dependents: list[_Task] | None = None
        self.unmet = 0
        self.cancel_event: threading.Event | None = None
        self.done_event: threading.Event | None = None
        self.settle_callbacks: deque[TaskCallback] | None = None
        self.worker: _Worker | None = None
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

    def snapshot(self) -> TaskRecord:
        # Validating is cheaper than model_construct here (pydantic-core does it in Rust, ~2 µs).
        return TaskRecord(
            task_id=self.id,
            name=self.name,
            status=self.status,
            priority=self.priority,
            result=self.result,
            error=self.error,
            attempts=self.attempts,
            dependencies=self.dependencies,
            run_id=self.run_id,
            step_name=self.step_name,
            submitted_at=self.submitted_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            duration_seconds=self.duration_seconds,
        )


# Delivered after the lock is released: (task, event name, snapshot taken at the event, final?).
_Notice = tuple[_Task, str, TaskRecord | None, bool]


def _run_settle_callbacks(task: _Task, callbacks: deque[TaskCallback], record: TaskRecord | None) -> None:
    snapshot = record
    while True:
        try:
            callback = callbacks.popleft()  # atomic: a callback claimed here runs nowhere else
        except IndexError:
            return
        if snapshot is None:
            snapshot = task.snapshot()  # the task is final: its fields no longer change
        _safe(callback, "on_settled", task, snapshot)


class TaskOrchestrator:
    """The one scheduler: a 5-level priority queue, a worker pool and a timer thread.

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
        output_limit: applied to every successful return value on the worker thread, outside the lock
            (the cap on captured output: too-large outputs become a truncation marker); ``None``: none.
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
    ) -> None:
        if max_workers is None:
            import os

            max_workers = min(32, (os.cpu_count() or 1) + 4)
        if max_workers < 1:
            raise InvalidInputError("max_workers", f"must be at least 1, got {max_workers}")
        if max_finished < 0:
            raise InvalidInputError("max_finished", f"must be 0 or more, got {max_finished}")
        self.name = name
        self.max_workers = max_workers
        self.max_finished = max_finished
        self.max_abandoned = max_workers if max_abandoned is None else max(0, max_abandoned)
        self._registry = registry
        self._resources = resource_manager
        self.backend: ExecutionBackend = backend if backend is not None else LocalBackend()
        self._backend_open = True
        self.output_limit = output_limit

        self._lock = YieldingLock()  # every worker takes it at every task (see _locks)
        self._work = yielding_condition(self._lock)  # workers wait here for ready tasks
        self._ready: tuple[deque[_Task], ...] = tuple(deque() for _ in _PRIORITIES)
        self._tasks: dict[str, _Task] = {}
        self._finished_order: deque[str] = deque()
        self._active = 0  # tasks not yet final
        self._running = 0
        self._live = 0  # worker threads that own a slot
        self._idle = 0  # workers waiting on _work and not yet notified
        self._abandoned = 0
        self._blocked = 0
        self._workers: set[_Worker] = set()
        self._worker_seq = itertools.count(1)
        self._accepting = True
        self._closing = False
        self._all_done = threading.Event()
        self._all_done.set()
        self._listeners: tuple[TaskListener, ...] = ()
        self._self_serve = False
        # Per worker thread: set while it delivers the one notice of a task that just ended, with no
        # next task in hand, so the first task its callback submits (a workflow's next step) is popped
        # by this thread right after instead of waking another worker for it. Waking a thread costs
        # more than the rest of a short step (a third of the CPU of a 10,000-step chain, profiled).
        self._tls = threading.local()
        self._ids = itertools.count(1)
        self._id_prefix = f"t-{uuid.uuid4().hex[:8]}-"
        self._started_mono = time.monotonic()
        self._totals = dict.fromkeys(("submitted", "retried", *(s.value for s in _FINAL)), 0)

        # The dispatcher's own lock is a leaf: it is taken under _lock or under a resource
        # manager's lock, never the other way round.
        self._timer_lock = threading.Lock()
        self._timer_cond = threading.Condition(self._timer_lock)
        self._timers: list[tuple[float, int, int, _Task, int]] = []
        self._timer_seq = itertools.count()
        self._resources_freed = False
        self._dispatcher_stop = False
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name=f"{name}-dispatcher", daemon=True
        )
        self._dispatcher.start()
        if resource_manager is not None:
            resource_manager.add_release_listener(self._on_resources_released)

    # ------------------------------------------------------------------ submission

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
    ) -> str:
        """Queue ``fn(ctx)`` and return its task id.

        Args:
            fn: called on a worker thread with an :class:`ActionContext`; its return value is the result.
                May be ``None`` when ``action`` is given (the action is then looked up in the registry).
            name: a label for records and logs.
            priority: lower values run first; FIFO within a level.
            dependencies: task ids that must complete first; if one ends in any other way this task
                is SKIPPED.
            timeout: seconds per attempt; the attempt is then TIMED_OUT (its ``cancel_event`` set).
            max_retries: extra attempts after a failure or timeout.
            retry_delay, backoff: the n-th retry starts ``retry_delay * backoff**(n-1)`` s after the
                failure.
            resources: requirements held while an attempt runs (needs a ``resource_manager``).
            run_id, step_name: set when the task is a workflow step.
            on_start: called with a record snapshot when each attempt starts.
            on_done: called exactly once with the final record, after listeners.
            live_state: give ``on_start``/``on_done`` the task's live state (a :class:`TaskState`,
                to read inside the callback only) instead of a :class:`TaskRecord` snapshot: two
                pydantic models fewer per task, for internal callers such as the WorkflowManager.
            action: the same step described as action name + resolved parameters; the backend may run
                it elsewhere (a Dask worker) instead of calling ``fn`` here.

        Raises:
            SchedulerShutdownError: the scheduler no longer accepts work.
            TaskNotFoundError: a dependency id is unknown (or its record was already evicted).
            InvalidInputError: a bad timeout / retry setting.
            InsufficientResourcesError: ``resources`` can never be satisfied.
        """
        if timeout is not None and not timeout > 0:
            raise InvalidInputError("timeout", f"must be a positive number of seconds or null, got {timeout}")
        if max_retries < 0:
            raise InvalidInputError("max_retries", f"must be 0 or more, got {max_retries}")
        if retry_delay < 0 or backoff < 1:
            raise InvalidInputError(
                "retry_delay", f"retry_delay must be >= 0 and backoff >= 1, got {retry_delay}, {backoff}"
            )
        if type(priority) is not TaskPriority:
            priority = TaskPriority(priority)
        if resources:
            if self._resources is None:
                raise InvalidInputError(
                    "resources", "this scheduler has no resource manager, so tasks cannot require resources"
                )
            self._resources.check_satisfiable(resources)
        else:
            resources = None
        if action is not None:
            if fn is None:
                fn = self._action_callable(action)
            fn = self.backend.bind(fn, action, priority=priority, resources=resources)
        elif fn is None:
            raise InvalidInputError("fn", "give a callable, or an action (module, action, parameters)")
        task_id = f"{self._id_prefix}{next(self._ids)}"
        task = _Task(
            task_id,
            fn,
            name,
            priority,
            tuple(dependencies),  # () for most tasks: no list for the GC to track
            timeout,
            max_retries,
            retry_delay,
            backoff,
            resources,
            run_id,
            step_name,
            on_start,
            on_done,
            live_state,
        )
        notices: list[_Notice] = []
        with self._lock:
            if not self._accepting:
                raise SchedulerShutdownError()
            failed_dep: _Task | None = None
            held = False
            deps: list[_Task] = []
            for dep_id in task.dependencies:
                dep = self._tasks.get(dep_id)
                if dep is None:
                    raise TaskNotFoundError(dep_id)
                deps.append(dep)
            self._tasks[task_id] = task
            self._active += 1
            if self._active == 1:  # set only when _active drops to 0, under this same lock
                self._all_done.clear()
            self._totals["submitted"] += 1
            for dep in deps:
                if dep.status is TaskStatus.COMPLETED:
                    continue
                if dep.status in _FINAL:
                    failed_dep = dep
                    break
                task.unmet += 1
                if dep.dependents is None:
                    dep.dependents = []
                dep.dependents.append(task)
            if failed_dep is not None:
                for dep in deps:  # undo the registrations made before the failed one was found
                    if dep.dependents and task in dep.dependents:
                        dep.dependents.remove(task)
                self._skip_locked(task, failed_dep, notices)
            else:
                held = bool(self._listeners)
                if held:
                    # Hold the task (one extra unmet count) until "task.queued" is delivered, so that
                    # listeners never see a task start before they saw it queued.
                    task.unmet += 1
                    self._notice_locked(task, "task.queued", False, notices)
                elif task.unmet == 0:
                    self._enqueue_locked(task)
        if notices:
            self._deliver(notices)
            if held:
                with self._lock:
                    task.unmet -= 1
                    if task.unmet == 0 and task.status is TaskStatus.PENDING:
                        self._enqueue_locked(task)
        return task_id

    def submit_task(
        self,
        spec: TaskSpec,
        *,
        run_id: str | None = None,
        on_start: TaskCallback | None = None,
        on_done: TaskCallback | None = None,
    ) -> str:
        """Queue an action task: ``registry.get(spec.module, spec.action).func(spec.parameters, ctx)``.

        Raises:
            UnknownActionError, ActionRefusedError: at submission, from the registry.
            Everything :meth:`submit` raises.
        """
        if self._registry is None:
            self._registry = create_registry()
        # A worker's registry refuses what ours refuses.
        allow = self._registry.allow_code_execution
        call = ActionCall(spec.module, spec.action, dict(spec.parameters), allow_code_execution=allow)
        return self.submit(
            None,
            action=call,
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
        )

    def _action_callable(self, call: ActionCall) -> TaskCallable:
        """``registry.get(...).func(parameters, ctx)``; unknown or refused actions raise here."""
        if self._registry is None:
            self._registry = create_registry()
        func = self._registry.get(call.module, call.action).func
        parameters = dict(call.parameters)

        def run(ctx: ActionContext) -> Any:
            return func(parameters, ctx)

        return run

    # ------------------------------------------------------------------ queries

    def get_task(self, task_id: str) -> TaskRecord:
        """A snapshot of the task's record. Raises :class:`TaskNotFoundError` if unknown or evicted."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                raise TaskNotFoundError(task_id)
            return task.snapshot()

    def list_tasks(self, status: TaskStatus | None = None, limit: int = 100) -> list[TaskRecord]:
        """Up to ``limit`` records (most recently submitted first), optionally of one status."""
        with self._lock:
            out: list[TaskRecord] = []
            for task in reversed(self._tasks.values()):
                if status is None or task.status is status:
                    out.append(task.snapshot())
                    if len(out) >= limit:
                        break
            return out

    def started_attempts(self, task_ids: Iterable[str]) -> dict[str, tuple[int, datetime | None]]:
        """``(attempts, first start time)`` of each task in ``task_ids`` that has started (final or not).

        One lock acquisition for them all: how a workflow run shows its steps in flight.
        """
        out: dict[str, tuple[int, datetime | None]] = {}
        with self._lock:
            tasks = self._tasks
            for task_id in task_ids:
                task = tasks.get(task_id)
                if task is not None and task.attempts:
                    out[task_id] = (task.attempts, task.started_at)
        return out

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Submit many tasks without waking a worker for each: they are woken when the block ends.

        For a burst of submissions from one thread (a workflow's first wave of steps): each submit still
        takes the lock, but finds it free instead of fighting the workers it just woke for it, and the
        workers start on a full queue. Nests; tasks submitted by other threads meanwhile are unaffected.
        """
        tls = self._tls
        if getattr(tls, "deferred", None) is not None:
            yield
            return
        tls.deferred = 0
        try:
            yield
        finally:
            queued, tls.deferred = tls.deferred, None
            if queued:
                with self._lock:
                    for _ in range(min(queued, self.max_workers)):
                        self._signal_work_locked()

    def wait(self, task_id: str, timeout: float | None = DEFAULT_WAIT_TIMEOUT) -> TaskRecord:
        """Block until the task is final (and its callbacks have run) and return its record.

        Args:
            timeout: seconds; ``None`` means :data:`DEFAULT_WAIT_TIMEOUT` (waits are never unbounded).

        Raises:
            TaskNotFoundError: unknown id (or a finished record already evicted).
            WaitTimeoutError: the task is still not final after ``timeout`` (it goes on running).
        """
        return self.wait_all([task_id], timeout)[0]

    def on_settled(self, task_id: str, callback: TaskCallback) -> None:
        """Call ``callback(record)`` once the task is final and its own callbacks have run (just before
        :meth:`wait` returns), without a thread blocked on it: the way to hand the news to an event loop.

        It runs on the thread that settles the task (a worker), or at once on this thread if the task is
        already settled, so it must be quick and must not block; its exceptions are logged.

        Raises:
            TaskNotFoundError: unknown id (or a finished record already evicted).
        """
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                raise TaskNotFoundError(task_id)
            if task.settle_callbacks is None:
                task.settle_callbacks = deque()
            callbacks = task.settle_callbacks
            callbacks.append(callback)
        if task.settled:  # before or while registering: what the settling thread did not claim runs here
            _run_settle_callbacks(task, callbacks, None)

    def wait_all(
        self, task_ids: Iterable[str], timeout: float | None = DEFAULT_WAIT_TIMEOUT
    ) -> list[TaskRecord]:
        """Wait for every task in ``task_ids`` within one overall ``timeout``; records in the same order.

        The tasks are looked up once at the start, so records evicted while waiting are still returned.

        Raises:
            TaskNotFoundError: an unknown id.
            WaitTimeoutError: not all were final in time.
        """
        limit = DEFAULT_WAIT_TIMEOUT if timeout is None else max(0.0, timeout)
        deadline = time.monotonic() + limit
        pending: list[tuple[_Task, threading.Event]] = []
        with self._lock:
            tasks = []
            for task_id in task_ids:
                task = self._tasks.get(task_id)
                if task is None:
                    raise TaskNotFoundError(task_id)
                tasks.append(task)
                if not task.settled:
                    if task.done_event is None:
                        task.done_event = threading.Event()
                    pending.append((task, task.done_event))
        for task, event in pending:
            if task.settled:
                continue  # settled while the event was installed: its settler may not have seen it
            if not event.wait(max(0.0, deadline - time.monotonic())):
                what = f"task {task.id!r} ({task.name})"
                if len(tasks) > 1:
                    what += f" and {len(tasks) - 1} other task(s) waited on together"
                raise WaitTimeoutError(what, limit)
        with self._lock:
            return [task.snapshot() for task in tasks]

    def get_execution_stats(self) -> dict[str, Any]:
        """Counts per status and priority, queue depth, running, workers and totals since start."""
        with self._lock:
            by_status = dict.fromkeys((s.value for s in TaskStatus), 0)
            by_priority = dict.fromkeys((p.name.lower() for p in _PRIORITIES), 0)
            for task in self._tasks.values():
                by_status[task.status.value] += 1
                by_priority[task.priority.name.lower()] += 1
            queue_depth = {p.name.lower(): len(self._ready[p]) for p in _PRIORITIES}
            finished = sum(self._totals[s.value] for s in _FINAL)
            stats: dict[str, Any] = {
                "by_status": by_status,
                "by_priority": by_priority,
                "queue_depth": queue_depth,
                "queued": sum(queue_depth.values()),
                "running": self._running,
                "active": self._active,
                "workers": self._live,
                "idle_workers": self._idle,
                "max_workers": self.max_workers,
                "abandoned_threads": self._abandoned,
                "blocked_threads": self._blocked,
                "submitted_total": self._totals["submitted"],
                "finished_total": finished,
                "completed_total": self._totals[TaskStatus.COMPLETED.value],
                "failed_total": self._totals[TaskStatus.FAILED.value],
                "timed_out_total": self._totals[TaskStatus.TIMED_OUT.value],
                "cancelled_total": self._totals[TaskStatus.CANCELLED.value],
                "skipped_total": self._totals[TaskStatus.SKIPPED.value],
                "retried_total": self._totals["retried"],
                "records_kept": len(self._tasks),
                "uptime_seconds": time.monotonic() - self._started_mono,
            }
        stats["backend"] = self.backend.describe()  # outside the lock: a cluster answers over the network
        return stats

    def health(self) -> dict[str, Any]:
        """Liveness of the dispatcher and workers, whether work is accepted, and load figures."""
        with self._lock:
            workers_alive = sum(
                1 for w in self._workers if not w.abandoned and w.thread is not None and w.thread.is_alive()
            )
            health: dict[str, Any] = {
                "dispatcher_alive": self._dispatcher.is_alive(),
                "workers_alive": workers_alive,
                "workers": self._live,
                "max_workers": self.max_workers,
                "accepting": self._accepting,
                "queue_depth": sum(len(q) for q in self._ready),
                "running": self._running,
                "active": self._active,
                "abandoned": self._abandoned,
                "max_abandoned": self.max_abandoned,
            }
        health["backend"] = self.backend.describe()
        return health

    # ------------------------------------------------------------------ listeners

    def add_listener(self, fn: TaskListener) -> None:
        """Call ``fn(event, record)`` for every task event (see :data:`TASK_EVENTS`)."""
        with self._lock:
            self._listeners = (*self._listeners, fn)

    def remove_listener(self, fn: TaskListener) -> None:
        with self._lock:
            self._listeners = tuple(f for f in self._listeners if f != fn)

    # ------------------------------------------------------------------ cancellation

    def cancel_task(self, task_id: str, reason: str = "cancelled by request") -> bool:
        """Cancel a queued, waiting or running task; False if it is already final.

        A running task's ``cancel_event`` is set (cooperative actions stop, subprocess actions kill
        their process group) and its record is CANCELLED at once; a late return value is discarded.

        Raises:
            TaskNotFoundError: unknown id.
        """
        notices: list[_Notice] = []
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                raise TaskNotFoundError(task_id)
            if task.status in _FINAL:
                return False
            self._cancel_locked(task, reason, notices)
        self._deliver(notices)
        return True

    # ------------------------------------------------------------------ shutdown

    def shutdown(self, wait: bool = True, cancel_pending: bool = False, timeout: float | None = None) -> None:
        """Stop accepting work and let the threads end.

        Args:
            wait: block until outstanding work is final (bounded by ``timeout``) and the threads exited.
            cancel_pending: cancel tasks that have not started (queued, waiting for dependencies or a
                retry) instead of running them.
            timeout: seconds to wait for outstanding work (``None``: :data:`DEFAULT_SHUTDOWN_TIMEOUT`);
                whatever is still unfinished then is cancelled.
        """
        notices: list[_Notice] = []
        with self._lock:
            self._accepting = False
            self._closing = True
            if cancel_pending:
                for task in list(self._tasks.values()):
                    if task.status not in _FINAL and task.status is not TaskStatus.RUNNING:
                        self._cancel_locked(task, "scheduler shut down", notices)
            self._wake_all_locked()
        self._deliver(notices)
        if not wait:
            return
        limit = DEFAULT_SHUTDOWN_TIMEOUT if timeout is None else max(0.0, timeout)
        if not self._all_done.wait(limit):
            with self._lock:
                for task in list(self._tasks.values()):
                    if task.status not in _FINAL:
                        self._cancel_locked(task, f"scheduler shut down after waiting {limit:g} s", notices)
                self._wake_all_locked()
            self._deliver(notices)
        with self._lock:
            threads = [w.thread for w in self._workers if not w.abandoned and w.thread is not None]
            abandoned = [w.thread for w in self._workers if w.abandoned and w.thread is not None]
        for thread in [self._dispatcher, *threads]:
            if thread is not threading.current_thread():
                thread.join(_JOIN_GRACE)
        # Threads still inside cancelled or timed-out calls: a cooperative action (shell.run killing
        # its process group) gets a short, bounded grace to clean up before the process may exit;
        # one that ignores cancellation is left behind (daemon) and reported by health().
        deadline = time.monotonic() + min(limit, _ABANDONED_GRACE)
        for thread in abandoned:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        self._close_backend()

    def _close_backend(self) -> None:
        """Close the backend once, after the threads that use it are gone (``shutdown(wait=True)``)."""
        with self._lock:
            if not self._backend_open:
                return
            self._backend_open = False
        try:
            self.backend.close()
        except Exception:
            _log.exception("scheduler.backend_close_failed", scheduler=self.name, backend=self.backend.name)

    def __enter__(self) -> TaskOrchestrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)

    # ------------------------------------------------------------------ internals: queue and workers

    def _enqueue_locked(self, task: _Task) -> None:
        task.status = TaskStatus.READY
        self._ready[task.priority].append(task)
        tls = self._tls
        if getattr(tls, "deferred", None) is not None:
            tls.deferred += 1  # a batch: workers are woken once, when it ends
        elif self._self_serve:
            self._self_serve = False
        elif getattr(self._tls, "will_pop", False):
            self._tls.will_pop = False
        else:
            self._signal_work_locked()

    def _signal_work_locked(self) -> None:
        """Make sure one worker will look at the queue: wake an idle one or start one."""
        if self._idle > 0:
            self._idle -= 1
            self._work.notify()
        elif (
            self._live < self.max_workers
            and self._live + self._abandoned < self.max_workers + self.max_abandoned
        ):
            self._spawn_worker_locked()

    def _wake_all_locked(self) -> None:
        self._idle = 0
        self._work.notify_all()
        with self._timer_cond:
            self._timer_cond.notify()

    def _spawn_worker_locked(self) -> None:
        worker = _Worker()
        worker.block_hook = partial(self._blocking, worker)
        thread = threading.Thread(
            target=self._worker_loop,
            args=(worker,),
            name=f"{self.name}-worker-{next(self._worker_seq)}",
            daemon=True,
        )
        worker.thread = thread
        self._workers.add(worker)
        self._live += 1
        thread.start()

    def _pop_locked(self, notices: list[_Notice]) -> _Task | None:
        """The next admissible task, highest priority first, FIFO within a level.

        A level whose head waits for resources is passed over as a whole (later tasks of that level do
        not overtake its head), so a big task is not starved by a stream of small ones.
        """
        resources = self._resources
        for queue in self._ready:
            if not queue:
                continue
            task = queue[0]
            if task.resources is not None and resources is not None:
                try:
                    handle = resources.try_acquire(task.id, task.resources)
                except Exception as exc:
                    queue.popleft()
                    self._finish_locked(task, TaskStatus.FAILED, None, ErrorInfo.from_exception(exc), notices)
                    return self._pop_locked(notices)
                if handle is None:
                    continue
                task.resource_handle = handle
            return queue.popleft()
        return None

    def _start_locked(
        self, task: _Task, worker: _Worker, cancel_event: CancelEvent, stamp: datetime | None
    ) -> tuple[int, CancelEvent, float | None]:
        """Mark an attempt started; returns what its context needs, built after the lock is released.

        ``cancel_event`` and ``stamp`` (the wall-clock time, or ``None`` if it is stale) are made by
        the worker before it takes the lock: less time under the lock every worker waits on.
        """
        task.status = TaskStatus.RUNNING
        task.attempts += 1
        task.worker = worker
        now = time.monotonic()
        if task.mono_started is None:
            task.mono_started = now
            task.started_at = stamp or datetime.now(UTC)
        task.cancel_event = cancel_event  # set under the lock, so that a cancel from now on sets it
        deadline = None
        if task.timeout is not None:
            deadline = now + task.timeout
            self._add_timer_locked(deadline, _DEADLINE, task, task.attempts)
        self._running += 1
        return task.attempts, cancel_event, deadline

    def _context(
        self, task: _Task, worker: _Worker, attempt: int, cancel_event: CancelEvent, deadline: float | None
    ) -> ActionContext:
        # Outside the lock: every worker waits on it, and this is the largest object built per attempt.
        return ActionContext(
            step_name=task.step_name or task.name,
            run_id=task.run_id,
            task_id=task.id,
            attempt=attempt,
            cancel_event=cancel_event,
            deadline=deadline,
            logger=_LazyLogger(task),
            block_hook=worker.block_hook,
        )

    @contextmanager
    def _blocking(self, worker: _Worker) -> Iterator[None]:
        """While a task waits on other scheduled work, its slot goes to another worker.

        Without this, steps that wait for sub-workflows could fill the pool and wait forever for steps
        that no worker is left to run. The pool is back to ``max_workers`` once the extra worker idles.
        """
        with self._lock:
            entered = not worker.abandoned and not worker.blocked
            if entered:
                worker.blocked = True
                self._live -= 1
                self._blocked += 1
                if any(self._ready):
                    self._signal_work_locked()
        try:
            yield
        finally:
            if entered:
                with self._lock:
                    worker.blocked = False
                    self._blocked -= 1
                    if not worker.abandoned:
                        self._live += 1

    def _worker_loop(self, worker: _Worker) -> None:
        lock = self._lock
        tls = self._tls
        notices: list[_Notice] = []
        task: _Task | None = None
        result: Any = None
        error: BaseException | None = None
        spare_event: CancelEvent | None = None
        while True:
            leave = False
            want_start = False
            # Made before taking the lock: the finish time of the task just run (also the start time
            # of the next one, unless this worker waits for it) and the next attempt's cancel event.
            finished_at = datetime.now(UTC)
            stamp: datetime | None = finished_at
            mono = time.monotonic()
            if spare_event is None:
                spare_event = CancelEvent()
            with lock:
                if task is not None:
                    if worker.abandoned:
                        # The task was finalized (timed out / cancelled) while this thread was stuck in
                        # it and a replacement took the slot. Rejoin if a slot is free, else leave.
                        self._abandoned -= 1
                        if self._live >= self.max_workers or (self._closing and self._active == 0):
                            self._workers.discard(worker)
                            return
                        worker.abandoned = False
                        self._live += 1
                    else:
                        # This worker takes its next task right below, so a task this completion makes
                        # ready needs no other worker woken for it.
                        self._self_serve = True
                        self._end_attempt_locked(task, result, error, notices, finished_at, mono)
                        self._self_serve = False
                task = None
                if self._live > self.max_workers:
                    # A worker lent during a blocking section came back: shrink to max_workers.
                    self._live -= 1
                    self._workers.discard(worker)
                    leave = True
                    if any(self._ready):  # one may have been left for this worker (will_pop)
                        self._signal_work_locked()
                while not leave:
                    task = self._pop_locked(notices)
                    if task is not None or notices:
                        break
                    if self._closing and self._active == 0:
                        self._live -= 1
                        self._workers.discard(worker)
                        leave = True
                        break
                    self._idle += 1
                    self._work.wait()
                    stamp = None  # it waited: the time taken before is stale
                if task is not None:
                    started = self._start_locked(task, worker, spare_event, stamp)
                    spare_event = None
                    want_start = task.on_start is not None or bool(self._listeners)
            if notices:
                if task is None and not leave and len(notices) == 1:
                    tls.will_pop = True
                    try:
                        self._deliver(notices)
                    finally:
                        tls.will_pop = False
                else:
                    self._deliver(notices)
                notices = []
            if leave:
                return
            if task is None:
                continue
            if want_start:
                self._deliver_start(task)
            try:
                result = task.fn(self._context(task, worker, *started))
                if result is not None:
                    # Every output (tasks, workflow steps, any backend) passes here before it becomes a
                    # record, a store row or a tool result: secrets are redacted once, at the source,
                    # then the size cap applies (a spilled file holds the redacted value).
                    result = redact(result)
                    if self.output_limit is not None:
                        result = self.output_limit(
                            result, run_id=task.run_id, step_name=task.step_name, task_id=task.id
                        )
                error = None
            except BaseException as exc:  # a worker must survive anything an action raises
                result = None
                error = exc

    def _end_attempt_locked(
        self,
        task: _Task,
        result: Any,
        error: BaseException | None,
        notices: list[_Notice],
        finished_at: datetime,
        mono_finished: float,
    ) -> None:
        self._running -= 1
        task.worker = None
        if error is None:
            self._finish_locked(
                task, TaskStatus.COMPLETED, result, None, notices, at=(finished_at, mono_finished)
            )
            return
        # An action that stops at its own limit or at the step's deadline (shell.run, http.request)
        # raises StepTimeoutError: the attempt timed out, as when the deadline timer fires first.
        status = TaskStatus.TIMED_OUT if isinstance(error, StepTimeoutError) else TaskStatus.FAILED
        self._fail_or_retry_locked(task, status, ErrorInfo.from_exception(error), notices)

    def _fail_or_retry_locked(
        self, task: _Task, status: TaskStatus, error: ErrorInfo, notices: list[_Notice]
    ) -> None:
        if task.attempts <= task.max_retries and not self._closing:
            self._release_resources_locked(task)
            task.status = TaskStatus.PENDING
            task.error = error
            self._totals["retried"] += 1
            delay = task.retry_delay * task.backoff ** (task.attempts - 1)
            self._notice_locked(task, "task.retrying", False, notices)
            if delay > 0:
                self._add_timer_locked(time.monotonic() + delay, _RETRY, task, task.attempts)
            else:
                self._enqueue_locked(task)
            return
        self._finish_locked(task, status, None, error, notices)

    def _abandon_running_locked(self, task: _Task) -> None:
        """The running attempt of ``task`` is over for us; give its thread's slot to a new worker."""
        worker = task.worker
        task.worker = None
        self._running -= 1
        if task.cancel_event is not None:
            task.cancel_event.set()
        if worker is not None and not worker.abandoned:
            worker.abandoned = True
            if not worker.blocked:
                self._live -= 1
            self._abandoned += 1
            if self._abandoned > self.max_abandoned:
                _log.warning(
                    "scheduler.abandoned_threads_limit",
                    scheduler=self.name,
                    abandoned=self._abandoned,
                    limit=self.max_abandoned,
                )
            if any(self._ready):
                self._signal_work_locked()

    def _cancel_locked(self, task: _Task, reason: str, notices: list[_Notice]) -> None:
        status = task.status
        if status is TaskStatus.RUNNING:
            self._abandon_running_locked(task)
        elif status is TaskStatus.READY:
            try:
                self._ready[task.priority].remove(task)
            except ValueError:  # popped by a worker in this same instant cannot happen under the lock
                pass
        elif task.cancel_event is not None:
            task.cancel_event.set()
        error = ErrorInfo.from_exception(StepCancelledError(task.step_name or task.name, reason))
        self._finish_locked(task, TaskStatus.CANCELLED, None, error, notices)

    def _skip_locked(self, task: _Task, dep: _Task, notices: list[_Notice]) -> None:
        reason = f"skipped because its dependency {dep.id} ({dep.name!r}) ended {dep.status.value}"
        error = ErrorInfo(
            message=str(StepCancelledError(task.step_name or task.name, reason)), type="DependencyFailed"
        )
        self._finish_locked(task, TaskStatus.SKIPPED, None, error, notices)

    def _release_resources_locked(self, task: _Task) -> None:
        handle = task.resource_handle
        if handle is not None and self._resources is not None:
            task.resource_handle = None
            try:
                self._resources.release_handle(handle)
            except Exception:
                _log.exception("scheduler.release_failed", scheduler=self.name, task_id=task.id)

    def _finish_locked(
        self,
        task: _Task,
        status: TaskStatus,
        result: Any,
        error: ErrorInfo | None,
        notices: list[_Notice],
        at: tuple[datetime, float] | None = None,
    ) -> None:
        """Make ``task`` final, settle its dependents (iteratively: chains may be long).

        ``at``: when it finished (wall clock, monotonic), if taken before the lock; else now.
        """
        finished_at, mono_finished = at if at is not None else (datetime.now(UTC), time.monotonic())
        pending = [(task, status, result, error)]
        while pending:
            task, status, result, error = pending.pop()
            task.status = status
            task.result = result
            task.error = error
            task.finished_at = finished_at
            task.mono_finished = mono_finished
            task.fn = _noop  # drop references the callable holds (closures over large data)
            # The attempt's context keeps its own reference; a kept record need not (two objects
            # fewer per finished task for the garbage collector to scan).
            task.cancel_event = None
            self._release_resources_locked(task)
            self._active -= 1
            self._totals[status] += 1  # a StrEnum member finds its value's key
            self._finished_order.append(task.id)
            self._notice_locked(task, _FINAL_EVENT[status], True, notices)
            dependents = task.dependents
            task.dependents = None
            if dependents:
                for child in dependents:
                    if child.status in _FINAL:
                        continue
                    if status is TaskStatus.COMPLETED:
                        child.unmet -= 1
                        if child.unmet == 0:
                            self._enqueue_locked(child)
                    else:
                        reason = (
                            f"skipped because its dependency {task.id} ({task.name!r}) ended {status.value}"
                        )
                        msg = str(StepCancelledError(child.step_name or child.name, reason))
                        pending.append(
                            (child, TaskStatus.SKIPPED, None, ErrorInfo(message=msg, type="DependencyFailed"))
                        )
        self._evict_locked()
        if self._active == 0:
            self._all_done.set()
            if self._closing:
                self._wake_all_locked()

    def _evict_locked(self) -> None:
        order = self._finished_order
        tasks = self._tasks
        while len(order) > self.max_finished:
            task_id = order.popleft()
            task = tasks.get(task_id)
            if task is not None and task.status in _FINAL:
                del tasks[task_id]

    # ------------------------------------------------------------------ internals: notices

    def _deliver_start(self, task: _Task) -> None:
        listeners = self._listeners
        record = task.snapshot() if listeners or not task.live_state else None
        for listener in listeners:
            _safe(listener, "listener", task, "task.started", record)
        if task.on_start is not None:
            _safe(task.on_start, "on_start", task, task if task.live_state else record)

    def _notice_locked(self, task: _Task, event: str, final: bool, notices: list[_Notice]) -> None:
        listeners = self._listeners
        if (
            final
            and task.on_done is None
            and task.done_event is None
            and task.settle_callbacks is None
            and not listeners
        ):
            task.settled = True
            return
        if not final and not listeners:
            return
        wants_record = listeners or (task.on_done is not None and not task.live_state)
        record = task.snapshot() if wants_record else None
        notices.append((task, event, record, final))

    def _deliver(self, notices: list[_Notice]) -> None:
        """Run listeners, then ``on_done``, then release waiters — outside the lock, exceptions logged."""
        listeners = self._listeners
        for task, event, record, final in notices:
            if record is not None:
                for listener in listeners:
                    _safe(listener, "listener", task, event, record)
            if not final:
                continue
            on_done = task.on_done
            task.on_done = None  # exactly once, and drop the reference
            task.on_start = None
            if on_done is not None:
                _safe(on_done, "on_done", task, task if task.live_state else record)
            self._settle(task, record)

    @staticmethod
    def _settle(task: _Task, record: TaskRecord | None) -> None:
        """Mark a final task whose callbacks have run settled, and release whoever waits on it.

        Without the lock (one lock hand-off among workers fewer per task): wait_all and on_settled
        install their event or callback under the lock, then read ``settled`` again; this sets
        ``settled``, then reads what is installed. Each side writes before it reads, each step atomic,
        so at least one side sees the other. An event set twice is harmless, and callbacks are claimed
        one at a time with ``popleft``, so each runs exactly once, on whichever thread claims it.
        """
        task.settled = True
        if task.settle_callbacks:
            _run_settle_callbacks(task, task.settle_callbacks, record)
        done_event = task.done_event
        if done_event is not None:
            done_event.set()

    # ------------------------------------------------------------------ internals: dispatcher

    def _add_timer_locked(self, when: float, kind: int, task: _Task, attempt: int) -> None:
        with self._timer_cond:
            timers = self._timers
            if len(timers) > _TIMER_COMPACT_AT and len(timers) > 4 * self._active:
                # Deadlines of attempts that ended stay in the heap until due; drop them in bulk so
                # long timeouts on many short tasks cannot grow it without bound.
                timers[:] = [t for t in timers if t[3].attempts == t[4] and t[3].status not in _FINAL]
                heapq.heapify(timers)
            heapq.heappush(timers, (when, next(self._timer_seq), kind, task, attempt))
            if timers[0][3] is task:
                self._timer_cond.notify()

    def _on_resources_released(self) -> None:
        with self._timer_cond:
            self._resources_freed = True
            self._timer_cond.notify()

    def _dispatch_loop(self) -> None:
        timers = self._timers
        while True:
            with self._timer_cond:
                while True:
                    now = time.monotonic()
                    if (timers and timers[0][0] <= now) or self._resources_freed:
                        break
                    if self._closing and self._active == 0:
                        return
                    self._timer_cond.wait(timers[0][0] - now if timers else None)
                due = []
                while timers and timers[0][0] <= now:
                    due.append(heapq.heappop(timers))
                freed = self._resources_freed
                self._resources_freed = False
            notices: list[_Notice] = []
            with self._lock:
                for _, _, kind, task, attempt in due:
                    if task.attempts != attempt:
                        continue
                    if kind == _DEADLINE and task.status is TaskStatus.RUNNING:
                        self._abandon_running_locked(task)
                        error = StepTimeoutError(task.step_name or task.name, task.timeout or 0.0)
                        self._fail_or_retry_locked(
                            task, TaskStatus.TIMED_OUT, ErrorInfo.from_exception(error), notices
                        )
                    elif kind == _RETRY and task.status is TaskStatus.PENDING:
                        self._enqueue_locked(task)
                if freed and any(self._ready):
                    self._wake_all_locked()
                    self._spawn_to_capacity_locked()
            if notices:
                self._deliver(notices)

    def _spawn_to_capacity_locked(self) -> None:
        queued = sum(len(q) for q in self._ready)
        while queued > 0 and self._live < self.max_workers:
            self._spawn_worker_locked()
            queued -= 1


def _noop(ctx: ActionContext) -> None:
    return None


def _safe(fn: Callable[..., Any], kind: str, task: _Task, *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        _log.exception("scheduler.callback_failed", callback=kind, task_id=task.id, task=task.name)
