"""YieldingLock: a Lock's contract (exclusion, non-blocking and timed acquires, conditions), real threads."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import pytest

from codomyrmex_orchestration.core._locks import YieldingLock, yielding_condition


@pytest.fixture
def frequent_switches() -> Iterator[None]:
    # Threads switch every microsecond instead of every 5 ms, so unprotected read-modify-write
    # sequences do interleave: the exclusion test below loses increments without a working lock.
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def _hammer(lock: YieldingLock | None, counter: list[int], rounds: int, start: threading.Barrier) -> None:
    start.wait(10)
    for _ in range(rounds):
        if lock is not None:
            lock.acquire()
        value = counter[0]
        for _ in range(20):  # a few bytecodes between the read and the write
            pass
        counter[0] = value + 1
        if lock is not None:
            lock.release()


def _run_hammer(lock: YieldingLock | None, threads: int = 6, rounds: int = 3000) -> int:
    counter = [0]
    start = threading.Barrier(threads)
    workers = [
        threading.Thread(target=_hammer, args=(lock, counter, rounds, start), daemon=True)
        for _ in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert not w.is_alive()
    return counter[0]


@pytest.mark.usefixtures("frequent_switches")
def test_no_increment_is_lost_under_contention() -> None:
    # The same hammer without a lock loses increments: proof that the threads really interleave here.
    assert _run_hammer(None) < 6 * 3000
    assert _run_hammer(YieldingLock()) == 6 * 3000


def _hold(lock: YieldingLock, held: threading.Event, release: threading.Event) -> None:
    with lock:
        held.set()
        release.wait(10)


def test_acquire_while_another_thread_holds_it() -> None:
    lock = YieldingLock()
    held, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold, args=(lock, held, release), daemon=True)
    holder.start()
    try:
        assert held.wait(10)
        assert lock.locked()
        assert lock.acquire(False) is False
        assert lock.acquire(timeout=0) is False
        # The holder waits on an event, not on the GIL: the tries run out and the acquire blocks,
        # then gives up at its timeout.
        started = time.monotonic()
        assert lock.acquire(timeout=0.05) is False
        assert time.monotonic() - started >= 0.05
        # A blocking acquire returns once the holder lets go.
        got = threading.Event()

        def take() -> None:
            with lock:
                got.set()

        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        assert not got.wait(0.05)
        release.set()
        assert got.wait(10)
        taker.join(10)
    finally:
        release.set()
        holder.join(10)
    assert not lock.locked()
    assert lock.acquire(False) is True
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()  # releasing an unlocked lock is an error, as with threading.Lock


def test_condition_over_it_waits_notifies_and_times_out() -> None:
    lock = YieldingLock()
    cond = yielding_condition(lock)
    items: list[int] = []
    with cond:
        assert cond.wait(0.01) is False  # nobody notifies: a timed wait returns False
        assert lock.locked()  # and holds the lock again
    with pytest.raises(RuntimeError):
        cond.notify()  # only the lock's holder may notify

    def produce() -> None:
        for i in range(100):
            with cond:
                items.append(i)
                cond.notify()

    producer = threading.Thread(target=produce, daemon=True)
    with cond:
        producer.start()
        assert cond.wait_for(lambda: len(items) == 100, timeout=10)
    producer.join(10)
    assert items == list(range(100))
