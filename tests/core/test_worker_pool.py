"""WorkerPool with real threads, driven by a minimal owner: slots, wake-ups, abandoned-thread
replacement and lending a slot. Coordination is by threading.Event, never by sleeping."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator

import pytest

from codomyrmex_orchestration.core._worker_pool import Worker, WorkerPool

WAIT = 10.0
Job = Callable[[Worker], None]


class Owner:
    """The smallest owner of a pool: a FIFO of jobs (each instant or not) under the pool's condition."""

    def __init__(self, max_workers: int, max_abandoned: int = 4) -> None:
        self.cond = threading.Condition()
        self.jobs: deque[tuple[Job, bool]] = deque()
        self.closing = False
        self.pool = WorkerPool(
            self.cond,
            self.work,
            lambda: (len(self.jobs), sum(instant for _, instant in self.jobs)),
            max_workers=max_workers,
            max_abandoned=max_abandoned,
            name="pooltest",
        )

    def submit(self, job: Job, instant: bool = False) -> None:
        with self.cond:
            self.jobs.append((job, instant))
            self.pool.ensure_workers_locked()

    def work(self, worker: Worker) -> None:
        while True:
            with self.cond:
                while True:
                    if self.pool.leave_if_surplus_locked(worker):
                        return
                    if self.jobs:
                        job, instant = self.jobs.popleft()
                        self.pool.task_started_locked(worker, instant)
                        break
                    if self.closing:
                        self.pool.leave_locked(worker)
                        return
                    self.pool.wait_idle_locked()
            job(worker)
            with self.cond:
                self.pool.call_returned_locked(worker)
                if worker.gone:
                    return

    def close(self) -> None:
        with self.cond:
            self.closing = self.pool.closing = True
            self.pool.wake_all_locked()
            threads = [w.thread for w in self.pool.workers if w.thread is not None]
        for thread in threads:
            thread.join(WAIT)


@pytest.fixture
def owners() -> Iterator[Callable[..., Owner]]:
    made: list[Owner] = []

    def make(max_workers: int, **kwargs: int) -> Owner:
        owner = Owner(max_workers, **kwargs)
        made.append(owner)
        return owner

    yield make
    for owner in made:
        owner.close()


def test_a_burst_starts_at_most_max_workers_threads_and_runs_every_job(owners: Callable[..., Owner]) -> None:
    owner = owners(3)
    lock = threading.Lock()
    running, peak, done = [0], [0], threading.Semaphore(0)
    gate = threading.Event()

    def job(worker: Worker) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        gate.wait(WAIT)
        with lock:
            running[0] -= 1
        done.release()

    for _ in range(20):
        owner.submit(job)
    gate.set()
    for _ in range(20):
        assert done.acquire(timeout=WAIT)
    assert peak[0] <= 3 and len(owner.pool.workers) == 3


def test_an_idle_worker_is_woken_for_new_work_instead_of_starting_another(
    owners: Callable[..., Owner],
) -> None:
    owner = owners(4)
    for _ in range(5):
        finished = threading.Event()
        owner.submit(lambda worker, finished=finished: finished.set())
        assert finished.wait(WAIT)
    assert len(owner.pool.workers) == 1  # one job at a time never needed a second thread


def test_an_abandoned_worker_is_replaced_and_leaves_when_its_call_returns(
    owners: Callable[..., Owner],
) -> None:
    owner = owners(1)
    stuck_started, unstick, after = threading.Event(), threading.Event(), threading.Event()
    stuck_worker: list[Worker] = []

    def stuck(worker: Worker) -> None:
        stuck_worker.append(worker)
        stuck_started.set()
        unstick.wait(WAIT)

    owner.submit(stuck)
    assert stuck_started.wait(WAIT)
    owner.submit(lambda worker: after.set())
    with owner.cond:
        assert owner.pool.abandon_locked(stuck_worker[0], stuck)  # its slot goes to a replacement at once
    assert after.wait(WAIT)
    unstick.set()
    thread = stuck_worker[0].thread
    assert thread is not None
    thread.join(WAIT)
    assert stuck_worker[0].gone and owner.pool.abandoned == 0 and owner.pool.live == 1


def test_a_worker_waiting_on_other_work_lends_its_slot(owners: Callable[..., Owner]) -> None:
    owner = owners(1)
    inner_done, outer_done = threading.Event(), threading.Event()

    def outer(worker: Worker) -> None:
        owner.submit(lambda w: inner_done.set())
        with owner.pool.lend_slot(worker):  # without it the only worker would wait for itself
            assert inner_done.wait(WAIT)
        outer_done.set()

    owner.submit(outer)
    assert outer_done.wait(WAIT)
    # the extra worker leaves once the lent slot is back: the pool returns to max_workers
    owner.submit(lambda worker: None)
    with owner.cond:
        assert owner.pool.blocked == 0 and owner.pool.live <= 2


def test_instant_jobs_need_one_worker_in_all_and_jobs_that_may_block_one_each(
    owners: Callable[..., Owner],
) -> None:
    owner = owners(4)
    threads: list[int] = []
    all_ran = threading.Event()

    def instant(worker: Worker) -> None:
        threads.append(threading.get_ident())
        if len(threads) == 100:
            all_ran.set()

    with owner.cond:  # queued in one go: the pool decides how many workers the whole queue needs
        owner.jobs.extend((instant, True) for _ in range(100))
        owner.pool.ensure_workers_locked()
        assert owner.pool.live == 1
    assert all_ran.wait(WAIT)
    assert len(set(threads)) == 1 and len(owner.pool.workers) == 1  # no second thread was needed

    together = threading.Barrier(3, timeout=WAIT)  # passes only when both jobs run at once
    owner.submit(lambda worker: together.wait())
    owner.submit(lambda worker: together.wait())
    together.wait()
