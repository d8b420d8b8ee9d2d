"""TimerService: callbacks at deadlines on one thread, cancellation, a fake clock, and closing."""

from __future__ import annotations

import threading

import pytest

from codomyrmex_orchestration.core.timers import TimerService

WAIT = 5.0


class FakeClock:
    """A clock the test moves; the service re-reads it whenever its condition wakes."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_timers_fire_in_deadline_order_not_in_the_order_they_were_armed() -> None:
    timers = TimerService()
    fired: list[str] = []
    done = threading.Event()
    try:
        base = timers._clock()
        timers.call_at(base + 0.06, lambda: (fired.append("late"), done.set()))
        timers.call_at(base + 0.02, lambda: fired.append("early"))
        timers.call_at(base + 0.04, lambda: fired.append("middle"))
        assert done.wait(WAIT)
        assert fired == ["early", "middle", "late"]
        assert timers.pending == 0
    finally:
        timers.close()


def test_a_cancelled_timer_never_runs_and_cancel_says_whether_it_stopped_it() -> None:
    clock = FakeClock()
    timers = TimerService(clock=clock)
    fired: list[str] = []
    last = threading.Event()
    try:
        cancelled = timers.call_at(1.0, lambda: fired.append("cancelled"))
        timers.call_at(2.0, lambda: (fired.append("kept"), last.set()))
        assert timers.pending == 2
        assert cancelled.cancel() is True
        assert cancelled.cancel() is False
        assert timers.pending == 1
        clock.now = 3.0
        timers.call_at(0.0, lambda: None)  # arming an earlier timer wakes the thread to re-read the clock
        assert last.wait(WAIT)
        assert fired == ["kept"]
    finally:
        timers.close()


def test_a_timer_whose_deadline_is_not_reached_does_not_fire() -> None:
    clock = FakeClock()
    timers = TimerService(clock=clock)
    fired = threading.Event()
    probe = threading.Event()
    try:
        timer = timers.call_at(10.0, fired.set)
        timers.call_at(0.0, probe.set)
        assert probe.wait(WAIT)  # the thread ran and looked at the clock
        assert not fired.is_set() and timers.pending == 1
        assert timer.cancel() is True
    finally:
        timers.close()


def test_a_callback_that_raises_does_not_stop_the_service() -> None:
    timers = TimerService()
    after = threading.Event()

    def boom() -> None:
        raise RuntimeError("callback failure")

    try:
        timers.call_later(0, boom)
        timers.call_later(0, after.set)
        assert after.wait(WAIT)
    finally:
        timers.close()


def test_a_timer_too_far_away_for_a_thread_to_wait_on_does_not_stop_the_service() -> None:
    timers = TimerService()
    near = threading.Event()
    try:
        far = timers.call_later(1e10, lambda: None)  # beyond threading.TIMEOUT_MAX (about 292 years)
        timers.call_later(float("inf"), lambda: None)
        timers.call_later(0.01, near.set)
        assert near.wait(WAIT), "the timer thread died waiting for the far timer"
        assert far.cancel() is True
    finally:
        timers.close()


def test_many_armed_then_cancelled_timers_do_not_accumulate() -> None:
    clock = FakeClock()
    timers = TimerService(clock=clock)
    try:
        for i in range(10_000):
            timers.call_at(100.0 + i, lambda: None).cancel()
        assert timers.pending == 0
        assert len(timers._heap) < 200
    finally:
        timers.close()


def test_close_drops_pending_timers_stops_the_thread_and_refuses_new_ones() -> None:
    timers = TimerService(name="test-timers")
    fired = threading.Event()
    timers.call_later(3600, fired.set)
    thread = timers._thread
    assert thread is not None and thread.is_alive() and thread.daemon
    timers.close()
    timers.close()  # idempotent
    assert not thread.is_alive()
    assert not fired.is_set() and timers.pending == 0
    with pytest.raises(RuntimeError, match="closed"):
        timers.call_later(0, fired.set)


def test_an_unused_service_starts_no_thread() -> None:
    before = threading.active_count()
    timers = TimerService()
    assert timers._thread is None and threading.active_count() == before
    timers.close()


def test_a_callback_may_arm_and_cancel_timers_and_close_the_service_itself() -> None:
    timers = TimerService()
    chain = threading.Event()
    closed = threading.Event()

    def first() -> None:
        timers.call_later(0, second)

    def second() -> None:
        chain.set()
        timers.close()  # from the timer thread: must not join itself
        closed.set()

    timers.call_later(0, first)
    assert chain.wait(WAIT) and closed.wait(WAIT)
    assert timers.closed
