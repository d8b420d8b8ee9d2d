"""Failed sign-ins to the run view, counted per client address: past a few, that address waits, longer
after each further failure, before the sign-in form takes its next try (429 with Retry-After)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["SignInThrottle"]

#: Wrong tries an address may make before it has to wait.
FREE_FAILURES = 5
#: The first wait (seconds), doubled by each further failure up to :data:`LONGEST_WAIT`.
FIRST_WAIT = 1.0
LONGEST_WAIT = 300.0
#: Addresses tracked at once: at the cap the one that failed longest ago is forgotten for a newcomer.
MAX_ADDRESSES = 10_000


class SignInThrottle:
    """Per client address, failed sign-ins (a wrong token or one-time code) and until when it must wait.

    An address may fail :data:`FREE_FAILURES` times; each further failure makes it wait
    :data:`FIRST_WAIT` seconds, doubling up to :data:`LONGEST_WAIT`. While it waits, every try from it,
    right or wrong, is refused (:meth:`retry_after`); a success clears it, and so does staying quiet for
    :data:`LONGEST_WAIT` after the wait. Owns ``_failures`` (address -> count, waited until, last
    failure; oldest failure first), guarded by ``_lock`` and bounded by ``max_addresses``.

    Args:
        clock: monotonic seconds (a seam for tests).
    """

    def __init__(
        self,
        *,
        free: int = FREE_FAILURES,
        first_wait: float = FIRST_WAIT,
        longest_wait: float = LONGEST_WAIT,
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free = free
        self._first = first_wait
        self._longest = longest_wait
        self._max = max_addresses
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, tuple[int, float, float]] = OrderedDict()

    def retry_after(self, address: str) -> float:
        """Seconds ``address`` must still wait before it may try again (0: it may try now)."""
        with self._lock:
            entry = self._current(address)
            return max(entry[1] - self._clock(), 0.0) if entry is not None else 0.0

    def failed(self, address: str) -> float:
        """Count a failed sign-in of ``address``; returns the wait it now has (0 while still free)."""
        now = self._clock()
        with self._lock:
            entry = self._current(address)
            count = (entry[0] if entry is not None else 0) + 1
            over = count - self.free
            wait = min(self._first * 2 ** min(over - 1, 30), self._longest) if over > 0 else 0.0
            self._failures.pop(address, None)
            self._failures[address] = (count, now + wait, now)
            while len(self._failures) > self._max:
                self._failures.popitem(last=False)
            return wait

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)

    def tracked(self) -> int:
        """How many addresses are remembered (at most ``max_addresses``)."""
        with self._lock:
            return len(self._failures)

    def _current(self, address: str) -> tuple[int, float, float] | None:
        entry = self._failures.get(address)
        if entry is not None and self._clock() - max(entry[1], entry[2]) > self._longest:
            del self._failures[address]  # quiet long enough: a fresh start
            return None
        return entry
