"""One timer service for the whole engine: step timeouts, retry delays, burst expiries, session TTLs.

A :class:`TimerService` owns one daemon thread (started with the first timer, so an idle service costs
nothing) and a heap of pending :class:`Timer` entries, both guarded by ``_cond``. Callbacks run on that
thread, one at a time, in deadline order; they must be short and must not block: a callback that has real
work to do hands it to its owner's own thread or pool. A callback that raises is logged and the service
goes on.

Cancelling is O(1): the entry is marked and skipped when it reaches the top of the heap; the heap is
rebuilt without cancelled entries when they outnumber the live ones, so a pattern of "arm a timeout,
cancel it when the step ends" does not grow memory.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

from codomyrmex_orchestration.logs import get_logger

__all__ = ["Timer", "TimerService", "wait_limit"]

_log = get_logger("codomyrmex_orchestration.timers")

#: Below this many entries a heap full of cancelled timers is not worth rebuilding.
_COMPACT_MIN = 64


def wait_limit(timeout: float | None) -> float | None:
    """What ``Event.wait`` / ``Condition.wait`` can take for a wait of ``timeout`` seconds: ``None`` (no
    limit) for ``None``, infinity, NaN and anything beyond ``threading.TIMEOUT_MAX`` (about 292 years; a
    longer wait raises OverflowError), never below 0."""
    if timeout is None or not timeout <= threading.TIMEOUT_MAX:
        return None
    return max(0.0, timeout)


class Timer:
    """A pending call; :meth:`cancel` it to make sure it never runs."""

    __slots__ = ("_callback", "_cancelled", "_fired", "_seq", "_service", "when")

    def __init__(self, service: TimerService, when: float, seq: int, callback: Callable[[], None]) -> None:
        self.when = when
        self._seq = seq
        self._service = service
        self._callback = callback
        self._cancelled = False
        self._fired = False

    def __lt__(self, other: Timer) -> bool:
        return (self.when, self._seq) < (other.when, other._seq)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> bool:
        """Make sure the callback never runs.

        Returns:
            True if the timer had not fired yet (it now never will); False if it already fired or was
            already cancelled.
        """
        return self._service._cancel(self)


class TimerService:
    """Calls callbacks at deadlines of ``clock()`` on one shared daemon thread.

    Args:
        name: the thread's name (it shows in thread dumps and the tests' leak check).
        clock: the time source deadlines are measured in; ``time.monotonic`` unless a test passes another.
    """

    def __init__(
        self, *, name: str = "codomyrmex-timers", clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._name = name
        self._clock = clock
        self._cond = threading.Condition()  # guards everything below
        self._heap: list[Timer] = []
        self._live = 0
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        """Timers armed and neither fired nor cancelled."""
        with self._cond:
            return self._live

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` on the timer thread once ``clock()`` reaches ``when``.

        Raises:
            RuntimeError: the service is closed.
        """
        with self._cond:
            if self._closed:
                raise RuntimeError(f"timer service {self._name!r} is closed")
            timer = Timer(self, when, next(self._seq), callback)
            heapq.heappush(self._heap, timer)
            self._live += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            elif self._heap[0] is timer:
                self._cond.notify()  # the new timer is the earliest: the thread must wake sooner
            return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` on the timer thread ``delay`` seconds from now."""
        return self.call_at(self._clock() + max(0.0, delay), callback)

    def close(self, timeout: float | None = 5.0) -> None:
        """Drop every pending timer and stop the thread. Idempotent; never waits on itself."""
        with self._cond:
            self._closed = True
            for timer in self._heap:
                timer._cancelled = True
            self._heap.clear()
            self._live = 0
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _cancel(self, timer: Timer) -> bool:
        with self._cond:
            if timer._cancelled or timer._fired:
                return False
            timer._cancelled = True
            self._live -= 1
            if len(self._heap) > _COMPACT_MIN and self._live < len(self._heap) // 2:
                self._heap = [t for t in self._heap if not t._cancelled]
                heapq.heapify(self._heap)
            return True

    def _next_due(self) -> Timer | None:
        """Wait for the earliest live timer to come due and take it; None once closed."""
        with self._cond:
            while not self._closed:
                while self._heap and self._heap[0]._cancelled:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                delay = self._heap[0].when - self._clock()
                if delay > 0:
                    self._cond.wait(min(delay, threading.TIMEOUT_MAX))  # a farther one: wait again
                    continue
                timer = heapq.heappop(self._heap)
                timer._fired = True
                self._live -= 1
                return timer
            return None

    def _loop(self) -> None:
        while (timer := self._next_due()) is not None:
            try:
                timer._callback()
            except Exception:
                _log.exception("timer callback failed", service=self._name)
