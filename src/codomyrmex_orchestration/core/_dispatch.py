"""The scheduler's dispatcher: it moves tasks through their states under one lock.

It owns ``lock`` (and the condition ``cond`` idle workers wait on) and, under it, the parts: the task
table, the ready queue, the worker pool, the notices the timer thread leaves for a worker to deliver,
the listeners, and whether the scheduler is closing. Each locked section collects what it leaves to do
into an :class:`~._task.Outbox` — cancel events to set, resource handles to release, listeners and
callbacks to run, waiters to release — done after the lock is released. A worker that finishes a task
records it and takes its next one in one lock acquisition. When the task has an ``on_done`` callback
(every workflow step has one), the worker first claims the outcome (:meth:`WorkerPool.claim`: from then on a
cancel or a deadline cannot end the task another way; it counts as seeking work, so the step ``on_done``
submits does not wake another worker) and delivers ``on_done`` without the lock, so that
recording the task, releasing its waiters and taking the next task still take one acquisition; the
tasks ``on_done`` submits with the outcome (``TaskOrchestrator.submit_batch(after=)``: a workflow's
next steps) are admitted in that same acquisition. Listeners
change that: with any, the task is recorded first, then they and ``on_done`` hear of it, then a second
acquisition releases its waiters and takes the next task.

One thing does run under the lock besides our own state: admission asks the resource manager for a
ready task's resources (``try_acquire``: non-blocking, it takes only the ledger's lock), and the ledger
tells its event listeners of the allocation there. Those listeners must be short and must not call
back into the scheduler.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

import structlog

from codomyrmex_orchestration.core._callbacks import safe_call
from codomyrmex_orchestration.core._queue_room import MAX_QUEUED_SETTING, QueueRoom
from codomyrmex_orchestration.core._ready_queue import ReadyQueue, ResourceAdmission
from codomyrmex_orchestration.core._results import ResultPipeline
from codomyrmex_orchestration.core._task import (
    FINAL,
    FINAL_EVENT,
    LazyLogger,
    Notice,
    Outbox,
    Outcome,
    Task,
    TaskGroup,
)
from codomyrmex_orchestration.core._task_table import TaskTable
from codomyrmex_orchestration.core._worker_pool import Worker, WorkerPool
from codomyrmex_orchestration.core.actions import ActionContext, CancelEvent
from codomyrmex_orchestration.core.models import ErrorInfo, TaskRecord, TaskStatus
from codomyrmex_orchestration.core.timers import Timer, TimerService
from codomyrmex_orchestration.errors import (
    OrchestrationError,
    SchedulerShutdownError,
    StepCancelledError,
    StepTimeoutError,
)

__all__ = ["MAX_QUEUED_SETTING", "Dispatcher"]

_log = structlog.get_logger("codomyrmex_orchestration.scheduler")

# The statuses every task passes, read once: on Python 3.11 each ``TaskStatus.X`` goes through the
# slow path of ``EnumType.__getattr__`` (about 0.2 µs; a step read a dozen).
_READY, _RUNNING, _COMPLETED = TaskStatus.READY, TaskStatus.RUNNING, TaskStatus.COMPLETED

#: How an attempt that raised ended: TIMED_OUT or FAILED, and the error as it is recorded.
_Failure = tuple[TaskStatus, ErrorInfo]
#: What an ended call hands back to the lock: (task, result, how it failed if it raised, finished at,
#: monotonic then, and the outcome already handed to ``on_done`` if the worker claimed it).
_Ended = tuple[Task, Any, _Failure | None, datetime, float, Outcome | None]
#: What a started attempt runs: (callable, on_start, its argument, attempt, cancel event, deadline, whether
#: its worker delivers ``on_done`` before recording the end).
_Started = tuple[
    Callable[[ActionContext], Any], Callable[[Any], None] | None, Any, int, CancelEvent, float | None, bool
]


class Dispatcher:
    """Tasks from submission to settlement: dependencies, queueing, workers, attempts, timeouts,
    retries, cancellation and the news of each (see the module docstring for what it owns)."""

    def __init__(
        self,
        *,
        max_workers: int,
        max_abandoned: int,
        max_finished: int,
        name: str,
        resources: ResourceAdmission | None,
        results: ResultPipeline,
        timers: TimerService,
        max_queued: int | None = None,
        max_queued_per_client: int | None = None,
    ) -> None:
        self.room = QueueRoom(max_queued, max_queued_per_client)  # the cap and clients' shares of it
        self._resources = resources
        self._results = results
        self._timers = timers
        self.lock = threading.Lock()  # guards everything below, and the parts' state
        self.cond = threading.Condition(self.lock)  # idle workers wait here
        self._quiet = threading.Condition(self.lock)  # shutdown waits here for no active task
        self.table = TaskTable(max_finished, self.room)
        self.queue: ReadyQueue[Task] = ReadyQueue(resources)
        self.pool = WorkerPool(
            self.cond,
            self._work,
            self._pending_locked,
            max_workers=max_workers,
            max_abandoned=max_abandoned,
            name=name,
        )
        self._backlog: list[Notice] = []  # from the timer thread, for a worker to deliver
        self.running = 0
        self.listeners: tuple[Callable[[str, TaskRecord], None], ...] = ()
        self.accepting = True
        self.closing = False
        if resources is not None:
            resources.add_release_listener(partial(_resources_released, self))

    # ------------------------------------------------------------------ entry points

    def add(self, tasks: Sequence[Task]) -> None:
        """Register new tasks, in order and in one lock acquisition: each is queued, held until its
        dependencies complete, or skipped. All or none: when one is refused, none is added.

        Raises:
            SchedulerShutdownError: not accepting work.
            TaskNotFoundError: a dependency id is unknown, evicted, or of a task of the same call.
            LimitExceededError: they would take the tasks waiting to start past ``max_queued``, or a
                client's past its share (:mod:`._queue_room`).
        """
        out = Outbox()
        with self.lock:
            held = self._admit_locked(tasks, out, strict=True)
        if out.notices or out.releases:
            self.deliver_here(out)
            self._release_held(held)

    def cancel(self, task_id: str, reason: str, timed_out: bool = False) -> bool:
        """Cancel a task that is not final (``timed_out``: it ends TIMED_OUT); False if it is, or if its
        call has returned (it ends as it returned)."""
        out = Outbox()
        with self.lock:
            task = self.table.require(task_id)
            if task.status in FINAL:
                return False
            cancelled = self._cancel_locked(task, reason, out, timed_out)
        self.deliver_here(out)
        return cancelled

    def cancel_group(self, group: TaskGroup, reason: str) -> None:
        """Cancel the tasks of ``group`` not final, and those submitted to it later (see ``add``)."""
        out = Outbox()
        with self.lock:
            group.cancelled, group.reason = True, reason
            for task in list(group.tasks):
                self._cancel_locked(task, reason, out)
        self.deliver_here(out)

    def close(self, cancel_reason: str | None, *, running_too: bool = False) -> None:
        """Refuse new work and let idle workers leave; with ``cancel_reason``, cancel the tasks not
        started yet (and the running ones too if ``running_too``)."""
        out = Outbox()
        with self.lock:
            self.accepting = False
            self.closing = self.pool.closing = True
            if cancel_reason is not None:
                for task in list(self.table.tasks.values()):
                    # checked each time: cancelling one task skips its dependents
                    if task.status not in FINAL and (running_too or task.status is not TaskStatus.RUNNING):
                        self._cancel_locked(task, cancel_reason, out)
            self.pool.wake_all_locked()
        self.deliver_here(out)

    def check_room(self, client: str | None) -> None:
        """Raise ``LimitExceededError`` if the cap, or ``client``'s share of it, is reached (the door of
        work accepted as a whole, whose tasks the cap then never refuses: see :meth:`_admit_locked`)."""
        with self.lock:
            self.room.check_door(self.table.active - self.running, client)

    def wait_quiet(self, timeout: float | None) -> bool:
        """After :meth:`close`: wait until no task is active; False if some still are."""
        with self.lock:
            return self._quiet.wait_for(lambda: self.table.active == 0, timeout)

    def _work(self, worker: Worker) -> None:
        """A worker thread: record the task it ran and take the next, deliver news, run; repeat."""
        ended: _Ended | None = None
        delivered: list[Task] = []
        while True:
            out = Outbox()
            started: tuple[Task, _Started] | None = None
            held: list[Task] | None = None
            with self.lock:
                if delivered:
                    _settle_locked(delivered, out)
                if ended is not None:
                    self._end_attempt_locked(worker, ended, out)
                    outcome = ended[5]
                    if outcome is not None and outcome.follow:  # what its on_done submitted
                        held = self._admit_locked(outcome.follow, out, strict=False)
                if not out.notices and not worker.gone:
                    task = self._next_task_locked(worker, out)
                    if task is not None:
                        started = task, self._start_locked(task, worker, out)
            if out.cancels or out.handles or out.releases:
                _release(out, self._resources)
            delivered = _deliver(out) if out.notices else []
            if held:
                self._release_held(held)
            if worker.gone:
                return
            # In a function, so that nothing of the attempt (its callable may reach a whole workflow
            # run) stays referenced here while this worker waits for its next task.
            ended = None if started is None else _attempt(self, worker, *started)

    def _admit_locked(self, tasks: Sequence[Task], out: Outbox, *, strict: bool) -> list[Task]:
        """Take new tasks into the table, their group and the queue (or hold them on their dependencies).
        ``strict`` (:meth:`add`): all or none, raising what refuses one; else (what a worker's task's
        ``on_done`` submitted, see :meth:`TaskOrchestrator.submit_batch`) a refused task fails and its
        ``on_done`` says why. The cap on queued tasks and clients' shares refuse new work only: a strict
        call, unless its tasks are all of an accepted group (a run's steps); what an ``on_done`` submits
        continues work already accepted. Returns the tasks held until listeners heard of them."""
        if strict and self.room.max_queued is not None:
            self.room.check_new(self.table.active - self.running, tasks)  # accepted, not final, not running
        accepted: list[tuple[Task, list[Task]]] = []
        for task in tasks:
            try:
                if not self.accepting:
                    raise SchedulerShutdownError()
                accepted.append((task, list(map(self.table.require, task.dependencies))))
            except OrchestrationError as exc:
                if strict:
                    raise
                self.table.add(task, [])
                self._finish_locked(task, TaskStatus.FAILED, None, ErrorInfo.from_exception(exc), out)
                continue
        # With listeners, a task is queued once "task.queued" was delivered: none sees it start first.
        held = bool(self.listeners)
        for task, its_deps in accepted:
            failed = self.table.add(task, its_deps)
            if failed is not None:
                self._finish_locked(task, TaskStatus.SKIPPED, None, _skip_error(task, failed), out)
                continue
            if task.group is not None:
                if task.group.cancelled:
                    self._cancel_locked(task, task.group.reason, out)
                    continue
                task.group.tasks.add(task)
            task.held = held
            if held:  # news for the listeners only
                self._notice_locked(task, "task.queued", False, out)
            if task.handed and not held:
                task.status = _READY
                self.queue.push(task)
        self.pool.ensure_workers_locked()  # once for the whole wave: at most one wake-up per worker
        return [task for task, _ in accepted] if held else []

    def _release_held(self, tasks: list[Task]) -> None:
        """Queue tasks held until their "task.queued" reached the listeners."""
        if not tasks:
            return
        with self.lock:
            for task in tasks:
                task.held = False
                if task.handed and task.status is TaskStatus.PENDING:
                    self._enqueue_locked(task)

    def _pending_locked(self) -> tuple[int, int]:
        """Work waiting for a worker (ready tasks, and notices from the timer thread to deliver) and, of
        that, the ready tasks that are instant (see ``WorkerPool``)."""
        queue = self.queue
        return queue.size + (1 if self._backlog else 0), queue.instant

    def _next_task_locked(self, worker: Worker, out: Outbox) -> Task | None:
        """The next task for ``worker``, waiting idle if there is none. ``None``: ``out`` holds work to
        do outside the lock first, or the worker left the pool (``worker.gone``)."""
        pool = self.pool
        while True:
            if self._backlog:
                out.notices, self._backlog = self._backlog, []
                out.listeners = self.listeners
                return None
            if pool.leave_if_surplus_locked(worker):
                return None
            refused: list[tuple[Task, Exception]] = []
            task = self.queue.pop(refused)
            for bad, exc in refused:
                self._finish_locked(bad, TaskStatus.FAILED, None, ErrorInfo.from_exception(exc), out)
            if task is not None:
                pool.task_started_locked(worker, task.instant)
                return task
            if out.notices or out.handles or out.releases:
                # Not idle with these undone: waiters to release, resources that a queued task may
                # be waiting for (their release wakes workers again).
                return None
            if self.closing and self.table.active == 0:
                pool.leave_locked(worker)
                return None
            pool.wait_idle_locked()

    def _start_locked(self, task: Task, worker: Worker, out: Outbox) -> _Started:
        """Mark an attempt started; listeners get "task.started" through ``out``. What the worker runs
        is read here, under the lock: a cancel may replace it at any time after."""
        task.status = _RUNNING
        task.attempts += 1
        task.worker = worker
        now = time.monotonic()
        if task.mono_started is None:
            task.mono_started = now
            task.started_at = datetime.now(UTC)
        cancel_event = CancelEvent()
        task.cancel_event = cancel_event  # set under the lock: a cancel from now on sets it
        deadline = None
        if task.timeout is not None:
            deadline = now + task.timeout
            task.timer = self._arm(deadline, partial(_deadline_passed, self, task, task.attempts))
        self.running += 1
        if task.session_id is not None:  # a client's share counts its tasks only
            self.room.count(task, -1)
        record = None
        if self.listeners or (task.on_start is not None and not task.live_state):
            record = task.snapshot()
        if self.listeners:  # news for them only: on_start is called by the worker
            self._notice_locked(task, "task.started", False, out, record)
        start_arg = task if task.live_state else record
        early = task.on_done is not None and not self.listeners
        return task.fn, task.on_start, start_arg, task.attempts, cancel_event, deadline, early

    def _end_attempt_locked(self, worker: Worker, ended: _Ended, out: Outbox) -> None:
        task, result, failure, finished_at, mono, outcome = ended
        if not self.pool.call_returned_locked(worker, outcome is not None, out.handles):
            return  # abandoned (timed out or cancelled): the task was finished without this result
        self.running -= 1
        if task.session_id is not None:  # a client's share counts its tasks only
            self.room.count(task, 1)  # waiting again until it ends or retries
        task.worker = None
        _cancel_timer(task)
        if outcome is not None:  # its worker claimed it and delivered on_done: final as delivered
            task.on_done = task.on_start = None
            self._finish_locked(task, outcome.status, result, outcome.error, out, at=(finished_at, mono))
            return
        if failure is None:
            self._finish_locked(task, _COMPLETED, result, None, out, at=(finished_at, mono))
        else:
            self._fail_or_retry_locked(task, *failure, out)

    # ------------------------------------------------------------------ state changes

    def _enqueue_locked(self, task: Task) -> None:
        task.status = _READY
        self.queue.push(task)
        self.pool.ensure_workers_locked()

    def _fail_or_retry_locked(self, task: Task, status: TaskStatus, error: ErrorInfo, out: Outbox) -> None:
        delay = task.retry.delay_after(task.attempts)
        if delay is None or self.closing:
            self._finish_locked(task, status, None, error, out)
            return
        _take_handle(task, out)
        task.status = TaskStatus.PENDING
        task.error = error
        self.table.count_retry()
        self._notice_locked(task, "task.retrying", False, out)
        if delay > 0:
            due = time.monotonic() + delay
            task.timer = self._arm(due, partial(_retry_due, self, task, task.attempts))
            if task.timer is None:  # no timer service left to wait with: retry now
                self._enqueue_locked(task)
        else:
            self._enqueue_locked(task)

    def _abandon_running_locked(self, task: Task, out: Outbox) -> bool:
        """The running attempt of ``task`` is over for us; its thread's slot goes to a new worker. False
        if its worker claimed the outcome first (the call returned): the task ends as its worker says."""
        worker = task.worker
        if worker is not None:
            # The call may still be inside what it was admitted for: the pool keeps that until it returns.
            if not self.pool.abandon_locked(worker, task, task.resource_handle):
                return False
            task.resource_handle = None
        task.worker = None
        self.running -= 1
        if task.session_id is not None:  # a client's share counts its tasks only
            self.room.count(task, 1)
        _cancel_timer(task)
        if task.cancel_event is not None:
            out.cancels.append(task.cancel_event)
        return True

    def _cancel_locked(self, task: Task, reason: str, out: Outbox, timed_out: bool = False) -> bool:
        """Cancel a task that is not final; False if it ends another way (its worker claimed the outcome)."""
        if task.status is TaskStatus.RUNNING:
            if not self._abandon_running_locked(task, out):
                return False
        elif task.status is TaskStatus.READY:
            self.queue.remove(task)
        _cancel_timer(task)  # a pending retry
        name = task.step_name or task.name
        error = ErrorInfo.from_exception(StepCancelledError(name, reason))
        if timed_out:  # a caller's own deadline passed (ParallelExecutor's timeout): dependents hear it too
            error = ErrorInfo(message=f"step {name!r} timed out: {reason}", type=StepTimeoutError.__name__)
        status = TaskStatus.TIMED_OUT if timed_out else TaskStatus.CANCELLED
        self._finish_locked(task, status, None, error, out)
        return True

    def _finish_locked(
        self,
        task: Task,
        status: TaskStatus,
        result: Any,
        error: ErrorInfo | None,
        out: Outbox,
        at: tuple[datetime, float] | None = None,
    ) -> None:
        """Make ``task`` final, skip what depended on it if it did not complete, queue what may start.

        ``at``: when it finished (wall clock, monotonic), if taken before the lock; else now.
        """
        finished_at, mono = at if at is not None else (datetime.now(UTC), time.monotonic())
        doomed = [] if status is _COMPLETED else self.table.cascade(task)
        _make_final(task, status, result, error, finished_at, mono, out)
        for child, parent in doomed:  # final before the graph hears of the parent: never started
            if child.status is TaskStatus.READY:
                self.queue.remove(child)
            _make_final(child, TaskStatus.SKIPPED, None, _skip_error(child, parent), finished_at, mono, out)
        ready = self.table.finished(task)
        self._notice_locked(task, FINAL_EVENT[status], True, out)
        for child, _ in doomed:
            ready += self.table.finished(child)
            self._notice_locked(child, FINAL_EVENT[TaskStatus.SKIPPED], True, out)
        for waiting in ready:
            if not waiting.held:
                self._enqueue_locked(waiting)
        if self.closing and self.table.active == 0:
            self.pool.wake_all_locked()
            self._quiet.notify_all()

    # ------------------------------------------------------------------ news

    def _notice_locked(
        self, task: Task, event: str, final: bool, out: Outbox, record: TaskRecord | None = None
    ) -> None:
        """Hand ``event`` to the listeners and, for a final one, to ``on_done`` and the waiters."""
        listeners = out.listeners = self.listeners
        if final and task.on_done is None and not listeners:
            _settle_locked([task], out)  # nothing to deliver first: waiters may go now
            return
        if not final and not listeners:
            return
        if record is None and (listeners or (final and task.on_done is not None and not task.live_state)):
            record = task.snapshot()
        out.notices.append((task, event, record, final))

    def deliver_here(self, out: Outbox) -> None:
        """On a thread that is not a worker: everything ``out`` holds, then settle what it finished."""
        _release(out, self._resources)
        delivered = _deliver(out)
        if delivered:
            settled = Outbox()
            with self.lock:
                _settle_locked(delivered, settled)
            _release(settled, self._resources)

    # ------------------------------------------------------------------ timers

    def _arm(self, when: float, callback: Callable[[], None]) -> Timer | None:
        """A timer on the shared service; ``None`` if it was closed before this scheduler (its owner
        should close it after): the attempt then has only the deadline its context carries."""
        try:
            return self._timers.call_at(when, callback)
        except RuntimeError:
            _log.error("scheduler.timer_service_closed", when=when)
            return None


# ---------------------------------------------------------------------- on the timer thread
# What the shared timers call back: the dispatcher's handlers for a deadline, a retry delay, freed
# resources (functions of the dispatcher, like the worker's attempt below).


def _deadline_passed(d: Dispatcher, task: Task, attempt: int) -> None:
    """The attempt ran out of time (unless it ended meanwhile)."""
    out = Outbox()
    with d.lock:
        if task.attempts != attempt or task.status is not TaskStatus.RUNNING:
            return
        if not d._abandon_running_locked(task, out):
            return  # the call returned in time; its worker is recording the end
        timeout = StepTimeoutError(task.step_name or task.name, task.timeout or 0.0)
        d._fail_or_retry_locked(task, TaskStatus.TIMED_OUT, ErrorInfo.from_exception(timeout), out)
        if out.notices:  # timer callbacks must not block: a worker runs listeners and on_done
            d._backlog.extend(out.notices)
            out.notices = []
            d.pool.ensure_workers_locked()
    _release(out, d._resources)


def _retry_due(d: Dispatcher, task: Task, attempt: int) -> None:
    """The retry delay is over."""
    with d.lock:
        if task.attempts == attempt and task.status is TaskStatus.PENDING:
            task.timer = None
            d._enqueue_locked(task)


def _resources_released(d: Dispatcher) -> None:
    """Capacity freed. A resource manager calls this from whichever thread released it, which may hold
    the dispatcher's lock (a release during admission), so the wake-up goes through the timer thread
    instead of taking the lock here."""
    try:
        d._timers.call_later(0.0, partial(_wake_for_resources, d))
    except RuntimeError:  # the timer service is closed: nothing is left to wake
        return


def _wake_for_resources(d: Dispatcher) -> None:
    with d.lock:
        d.pool.ensure_workers_locked()


def _attempt(d: Dispatcher, worker: Worker, task: Task, started: _Started) -> _Ended:
    """On ``worker``, without the lock: run the attempt of ``task`` that ``_start_locked`` started."""
    fn, on_start, start_arg, attempt, cancel_event, deadline, early = started
    if on_start is not None:
        safe_call(on_start, "on_start", task, start_arg)
    ctx = ActionContext(
        step_name=task.step_name or task.name,
        run_id=task.run_id,
        task_id=task.id,
        attempt=attempt,
        cancel_event=cancel_event,
        deadline=deadline,
        logger=LazyLogger(task),
        block_hook=worker.block_hook,
    )
    try:
        result = d._results(fn(ctx), task.run_id, task.step_name, task.id)
        failure = None
    except BaseException as exc:  # a worker must survive anything an action raises
        # Recorded, not kept: the exception's traceback reaches the frames of the call (and their
        # locals, a whole workflow run), and holding it would make a cycle with this frame.
        result, failure = None, _failure(exc)
    finished_at, mono = datetime.now(UTC), time.monotonic()
    outcome = _deliver_early(d, worker, task, result, failure, finished_at, mono) if early else None
    return task, result, failure, finished_at, mono, outcome


def _failure(error: BaseException) -> _Failure:
    """How an attempt that raised ``error`` ends: an action that stops at its own limit or at the step's
    deadline (shell.run, http.request) raises StepTimeoutError, and the attempt timed out, as when the
    deadline timer fires first; any other error fails it."""
    status = TaskStatus.TIMED_OUT if isinstance(error, StepTimeoutError) else TaskStatus.FAILED
    return status, ErrorInfo.from_exception(error)


def _deliver_early(
    d: Dispatcher,
    worker: Worker,
    task: Task,
    result: Any,
    failure: _Failure | None,
    finished_at: datetime,
    mono: float,
) -> Outcome | None:
    """On ``worker``, without the lock, once its call of ``task`` returned: if this was the task's last
    attempt, claim the outcome and deliver ``on_done``; returns what was delivered (None: the lock
    decides, as for a retry, or the task was given up on first). Its resources are released first: who
    hears of the end (a run that finishes with it, its waiters) finds them free."""
    status: TaskStatus
    info: ErrorInfo | None
    if failure is None:
        status, info = _COMPLETED, None
    elif task.retry.delay_after(task.attempts) is None:
        status, info = failure
    else:
        return None
    if not d.pool.claim(worker, task):
        return None
    handle = task.resource_handle  # the task's end is this worker's alone once claimed
    if handle is not None:
        task.resource_handle = None
        _release_handles((handle,), d._resources)
    outcome = Outcome(task, status, result, info, finished_at, mono)
    on_done = task.on_done  # read under the lock when the attempt started; nothing changes it after a claim
    if on_done is not None:
        safe_call(on_done, "on_done", task, outcome if task.live_state else task.snapshot(outcome))
    outcome.open = False  # what on_done submitted with it is in outcome.follow
    return outcome


def _settle_locked(tasks: list[Task], out: Outbox) -> None:
    """Under the lock: final tasks whose callbacks have run; their waiters and callbacks may go."""
    for task in tasks:
        task.settled = True
        if task.done_event is not None or task.settle_callbacks:
            out.releases.append((task, task.done_event, task.settle_callbacks or ()))
            # Nobody waits on a settled task any more: its kept record holds no waiter, callback or
            # what they reach (a server's future and loop), which the garbage collector would walk.
            task.done_event = task.settle_callbacks = None


def _make_final(
    task: Task,
    status: TaskStatus,
    result: Any,
    error: ErrorInfo | None,
    finished_at: datetime,
    mono: float,
    out: Outbox,
) -> None:
    task.status = status
    task.result = result
    task.error = error
    if task.group is not None:
        task.group.tasks.discard(task)
    task.finished_at = finished_at
    task.mono_finished = mono
    task.fn = _noop  # drop references the callable holds (closures over large data)
    # The attempt's context keeps its own reference; a kept record need not.
    task.cancel_event = None
    _take_handle(task, out)


def _take_handle(task: Task, out: Outbox) -> None:
    if task.resource_handle is not None:
        out.handles.append(task.resource_handle)
        task.resource_handle = None


def _cancel_timer(task: Task) -> None:
    if task.timer is not None:
        task.timer.cancel()
        task.timer = None


def _skip_error(task: Task, dep: Task) -> ErrorInfo:
    # Skipped, not cancelled: nobody asked for it; what it waited for did not complete. Names lead.
    name, dep_name, ended = task.step_name or task.name, dep.step_name or dep.name, dep.status.value
    message = f"step {name!r} was skipped: its dependency {dep_name!r} (task {dep.id}) ended {ended}"
    return ErrorInfo(message=message, type="DependencyFailed")


def _release(out: Outbox, resources: ResourceAdmission | None) -> None:
    """Outside the lock: set cancel events, release resource handles, release waiters."""
    for event in out.cancels:
        event.set()
    _release_handles(out.handles, resources)
    for task, done_event, callbacks in out.releases:
        if done_event is not None:
            done_event.set()
        if callbacks:
            record = task.snapshot()  # final: its fields no longer change
            for callback in callbacks:
                safe_call(callback, "on_settled", task, record)


def _release_handles(handles: Sequence[object], resources: ResourceAdmission | None) -> None:
    if resources is not None:
        for handle in handles:
            try:
                resources.release_handle(handle)
            except Exception:
                _log.exception("scheduler.release_failed")


def _deliver(out: Outbox) -> list[Task]:
    """Outside the lock: listeners, then each final task's ``on_done``; returns the final tasks."""
    finals: list[Task] = []
    for task, event, record, final in out.notices:
        if record is not None:
            for listener in out.listeners:
                safe_call(listener, "listener", task, event, record)
        if final:
            on_done, task.on_done, task.on_start = task.on_done, None, None
            if on_done is not None:
                safe_call(on_done, "on_done", task, task if task.live_state else record)
            finals.append(task)
    return finals


def _noop(ctx: ActionContext) -> None:
    return None
