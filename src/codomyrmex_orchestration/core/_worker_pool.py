"""The worker pool: the scheduler's daemon threads and the counts of what each is doing.

It owns the threads and one invariant, kept in :meth:`WorkerPool.ensure_workers_locked` alone: *every
piece of pending work has a worker on its way to it* (as far as ``max_workers`` allows), where pending
*instant* work (tasks whose call returns at once and never blocks) needs one worker in all. A worker is
*seeking* from when it is started, woken or returns from a task until it starts its next task or waits
idle; pending work beyond the seeking workers wakes an idle worker or starts a new one. A worker that
just finished a task counts as seeking while it delivers that task's callbacks, so the task a callback
submits (a workflow's next step) is taken by that worker without waking another; one that claimed its
task's outcome without the lock (:meth:`WorkerPool.claim`) counts as ``returning``, to the same effect.

A worker inside an instant task counts as on its way to the instant work (it is back within
microseconds), so a thousand instant steps are run by one worker while the others sleep. More workers
could not run them sooner on CPython, where they would take turns at the interpreter, and contending
for the owner's lock with several µs of bookkeeping each, they fall into a lock convoy that costs about
twice the CPU per task (docs/PERFORMANCE.md, "Seventh session"). Work that may block still gets a
worker each.

Two situations free a slot while its thread is still busy: a task abandoned by the scheduler (timed out
or cancelled while its call cannot be interrupted) and a task waiting on other scheduled work
(:meth:`WorkerPool.lend_slot`). A replacement worker takes the slot; the busy thread leaves or rejoins
when its call returns. Not thread-safe by itself: every ``*_locked`` method needs the condition's lock.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial

import structlog

__all__ = ["Worker", "WorkerPool"]

_log = structlog.get_logger("codomyrmex_orchestration.scheduler")


class Worker:
    """One worker thread's state (guarded by the pool's lock, except ``gone``, read by its own thread, and
    ``claimed``, guarded by the pool's claims lock; ``abandoned`` is written holding both locks)."""

    __slots__ = (
        "abandoned",
        "block_hook",
        "blocked",
        "claimed",
        "gone",
        "held",
        "instant",
        "stuck_on",
        "thread",
    )

    def __init__(self) -> None:
        self.claimed: object | None = None  # the last task whose outcome it kept (WorkerPool.claim)
        self.abandoned = False  # its task was given up on; its slot went to another worker
        # What its abandoned call still holds (the task's resource admission): the call may still be
        # using it, so it is handed back only when the call returns (see call_returned_locked).
        self.held: object | None = None
        self.stuck_on: object | None = None  # the task of its abandoned call, for health to name
        self.blocked = False  # inside lend_slot(): waiting on other scheduled work, slot lent
        self.gone = False  # left the pool: its thread returns
        self.instant = False  # inside the call of an instant task
        self.thread: threading.Thread | None = None
        #: ActionContext.block_hook for the tasks this worker runs (made once, not per task).
        self.block_hook: Callable[[], AbstractContextManager[None]] | None = None


class WorkerPool:
    """Daemon worker threads, at most ``max_workers`` of them holding a slot.

    Args:
        cond: the owner's condition; its lock guards the pool, idle workers wait on it.
        target: each thread's body, called with its :class:`Worker`.
        pending: how many pieces of work wait for a worker now, and how many of those are instant
            (called with the lock held, each time the invariant is checked: twice per task).
        max_workers: slots.
        max_abandoned: threads stuck in abandoned tasks that are replaced; beyond it a stuck thread
            keeps its slot until its call returns.
        name: prefix of the thread names.
    """

    def __init__(
        self,
        cond: threading.Condition,
        target: Callable[[Worker], None],
        pending: Callable[[], tuple[int, int]],
        *,
        max_workers: int,
        max_abandoned: int,
        name: str,
    ) -> None:
        self._cond = cond
        self._target = target
        self._pending = pending
        self.max_workers = max_workers
        self.max_abandoned = max_abandoned
        self._name = name
        self._seq = itertools.count(1)
        self.workers: set[Worker] = set()
        self.live = 0  # workers holding a slot
        self.idle = 0  # waiting on the condition, not yet woken
        self.seeking = 0  # on their way to the ready queue (see the module docstring)
        self.abandoned = 0
        self.blocked = 0
        self.instant = 0  # workers inside an instant task's call
        self.closing = False
        # Claims (see claim()) are made without the pool's lock; this small lock guards them: each worker's
        # ``claimed``, its ``abandoned`` flag's changes, and ``returning``.
        self._claims = threading.Lock()
        self.returning = 0  # workers that claimed their call's outcome and are not back under the lock yet

    # ------------------------------------------------------------------ the invariant

    def ensure_workers_locked(self) -> None:
        """Wake or start workers until every pending piece of work has a seeking worker, instant work
        one in all (capacity allowing). Call after work is added, after a worker starts a task and after
        a slot frees up."""
        needed, instant = self._pending()
        if instant:  # one worker serves all of it: a seeking one, or one inside an instant call already
            needed -= instant if self.instant else instant - 1
        if needed <= self.seeking:
            return
        with self._claims:
            returning = self.returning  # each will take a piece of work without being woken
        while needed > self.seeking + returning:
            if self.idle > 0:
                self.idle -= 1
                self.seeking += 1
                self._cond.notify()
            elif self.live < self.max_workers and (
                self.live + self.abandoned < self.max_workers + self.max_abandoned
            ):
                self._spawn_locked()
            else:
                return

    def wake_all_locked(self) -> None:
        """Every idle worker looks at the queue again (resources freed, shutting down)."""
        self.seeking += self.idle
        self.idle = 0
        self._cond.notify_all()

    # ------------------------------------------------------------------ a worker's transitions

    def wait_idle_locked(self) -> None:
        """The calling worker found nothing to do: wait until woken (it is then seeking again)."""
        self.seeking -= 1
        self.idle += 1
        self._cond.wait()

    def task_started_locked(self, worker: Worker, instant: bool = False) -> None:
        """The calling worker starts a task (``instant``: one whose call returns at once)."""
        self.seeking -= 1
        if instant:
            worker.instant = True
            self.instant += 1
        self.ensure_workers_locked()  # the work it leaves behind may need another worker now

    def claim(self, worker: Worker, task: object) -> bool:
        """On ``worker``'s own thread once its call of ``task`` returned, without the pool's lock: keep the
        outcome, so that the scheduler can no longer time the task out or cancel it (see
        :meth:`abandon_locked`), unless it gave up on the task first (False). The worker then counts as
        seeking work (``returning``) until :meth:`call_returned_locked`."""
        with self._claims:
            if worker.abandoned:
                return False
            worker.claimed = task
            self.returning += 1
            return True

    def call_returned_locked(
        self, worker: Worker, claimed: bool = False, freed: list[object] | None = None
    ) -> bool:
        """The calling worker's task call returned (``claimed``: and it claimed the outcome). False: its
        task was abandoned meanwhile (the outcome is void; what the call held, if anything, is appended
        to ``freed`` for the owner to release); the worker then rejoins if a slot is free, else leaves
        (``gone``)."""
        if claimed:
            with self._claims:
                self.returning -= 1
        self._instant_over_locked(worker)
        if not worker.abandoned:
            self.seeking += 1
            return True
        self.abandoned -= 1
        worker.stuck_on = None
        if worker.held is not None and freed is not None:
            freed.append(worker.held)
            worker.held = None
        if self.live >= self.max_workers or self.closing:
            self._discard_locked(worker)
        else:
            with self._claims:
                worker.abandoned = False
            self.live += 1
            self.seeking += 1
        return False

    def leave_if_surplus_locked(self, worker: Worker) -> bool:
        """A lent slot came back and the pool is above ``max_workers``: the calling worker leaves."""
        if self.live <= self.max_workers:
            return False
        self.leave_locked(worker)
        self.ensure_workers_locked()  # it may have been counted for pending work
        return True

    def leave_locked(self, worker: Worker) -> None:
        self.live -= 1
        self.seeking -= 1
        self._discard_locked(worker)

    def abandon_locked(self, worker: Worker, task: object, held: object | None = None) -> bool:
        """Give up on ``task``, which ``worker`` runs: its slot goes to a replacement worker at once, and
        ``held`` (what the call holds, its resource admission) stays taken until the call returns.
        False if the worker already claimed the task's outcome (its call returned: see :meth:`claim`)."""
        with self._claims:
            if worker.claimed is task:
                return False
            if worker.abandoned:
                return True
            worker.abandoned = True
        worker.held = held
        worker.stuck_on = task
        if not worker.blocked:
            self.live -= 1
        self._instant_over_locked(worker)
        self.abandoned += 1
        if self.abandoned > self.max_abandoned:
            _log.warning(
                "scheduler.abandoned_threads_limit",
                scheduler=self._name,
                abandoned=self.abandoned,
                limit=self.max_abandoned,
            )
        self.ensure_workers_locked()
        return True

    @contextmanager
    def lend_slot(self, worker: Worker) -> Iterator[None]:
        """While the task on ``worker`` waits on other scheduled work, its slot goes to another worker.

        Without this, steps that wait for sub-workflows could fill the pool and wait forever for steps
        that no worker is left to run. The pool is back to ``max_workers`` once the extra worker idles.
        """
        with self._cond:
            entered = not worker.abandoned and not worker.blocked
            if entered:
                self._instant_over_locked(worker)  # it blocks after all: no longer on its way to work
                worker.blocked = True
                self.live -= 1
                self.blocked += 1
                self.ensure_workers_locked()
        try:
            yield
        finally:
            if entered:
                with self._cond:
                    worker.blocked = False
                    self.blocked -= 1
                    if not worker.abandoned:
                        self.live += 1

    def _instant_over_locked(self, worker: Worker) -> None:
        if worker.instant:
            worker.instant = False
            self.instant -= 1

    # ------------------------------------------------------------------ threads

    def _spawn_locked(self) -> None:
        worker = Worker()
        worker.block_hook = partial(self.lend_slot, worker)
        thread = threading.Thread(
            target=self._target, args=(worker,), name=f"{self._name}-worker-{next(self._seq)}", daemon=True
        )
        worker.thread = thread
        self.workers.add(worker)
        self.live += 1
        self.seeking += 1
        thread.start()

    def _discard_locked(self, worker: Worker) -> None:
        worker.gone = True
        self.workers.discard(worker)

    def join(self, until: float, abandoned_until: float) -> None:
        """Wait for the workers' threads to exit until ``until`` (a ``time.monotonic()`` value), then
        for the threads still inside abandoned calls until ``abandoned_until``: a cooperative action
        (shell.run killing its process group) gets a short, bounded grace to clean up before the process
        may exit; one that ignores cancellation is left behind (daemon) and reported by health. The
        calling thread is not waited for."""
        with self._cond:
            threads = self.threads_locked(abandoned=False)
            abandoned = self.threads_locked(abandoned=True)
        me = threading.current_thread()
        for thread in threads:
            if thread is not me:
                thread.join(max(0.0, until - time.monotonic()))
        for thread in abandoned:
            if thread is not me:
                thread.join(max(0.0, abandoned_until - time.monotonic()))

    def threads_locked(self, *, abandoned: bool) -> list[threading.Thread]:
        """The threads of the workers holding a slot, or of those left in abandoned calls."""
        return [w.thread for w in self.workers if w.abandoned is abandoned and w.thread is not None]

    def stuck_locked(self, limit: int) -> list[object]:
        """Up to ``limit`` of the tasks whose abandoned calls still hold a thread."""
        stuck = (w.stuck_on for w in self.workers if w.abandoned and w.stuck_on is not None)
        return list(itertools.islice(stuck, limit))

    def figures_locked(self) -> dict[str, int]:
        """Threads alive holding a slot (``workers_alive``: threads inside abandoned calls are not
        counted there, but in ``abandoned_alive``), slots held and their cap, abandoned threads, their
        cap, and how many of them still hold their task's resources."""
        return {
            "workers_alive": sum(1 for t in self.threads_locked(abandoned=False) if t.is_alive()),
            "workers": self.live,
            "max_workers": self.max_workers,
            "abandoned": self.abandoned,
            "abandoned_alive": sum(1 for t in self.threads_locked(abandoned=True) if t.is_alive()),
            "max_abandoned": self.max_abandoned,
            "abandoned_holding_resources": sum(1 for w in self.workers if w.held is not None),
        }
