"""The retry policy of a task: how many more attempts it gets after a failure or a timeout, and when.

A :class:`RetryPolicy` is immutable and owns no state; the attempt count lives on the task.
"""

from __future__ import annotations

from dataclasses import dataclass

from codomyrmex_orchestration.core._numbers import check_count, parse_number, shown
from codomyrmex_orchestration.core.models import MAX_BACKOFF, MAX_RETRIES, MAX_RETRY_DELAY
from codomyrmex_orchestration.errors import InvalidInputError

__all__ = ["NO_RETRY", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_retries`` extra attempts; the n-th retry starts ``retry_delay * backoff**(n-1)`` s after the
    attempt before it ended.

    Raises:
        InvalidInputError: a setting outside a workflow step's ranges (``max_retries`` a whole number
            from 0 to 100, ``retry_delay`` 0 to 3600 seconds, ``backoff`` 1 to 10), which keep every
            delay finite.
    """

    max_retries: int = 0
    retry_delay: float = 0.0
    backoff: float = 2.0

    def __post_init__(self) -> None:
        check_count(self.max_retries, "max_retries", at_least=0, at_most=MAX_RETRIES)
        # Numbers as floats: a numeric string is accepted as everywhere seconds are.
        delay = _within(self.retry_delay, "retry_delay", 0, MAX_RETRY_DELAY, "seconds")
        object.__setattr__(self, "retry_delay", delay)
        object.__setattr__(self, "backoff", _within(self.backoff, "backoff", 1, MAX_BACKOFF, "a number"))

    @classmethod
    def of(cls, max_retries: int = 0, retry_delay: float = 0.0, backoff: float = 2.0) -> RetryPolicy:
        """The policy for these settings; the common "no retries" is one shared object."""
        if max_retries == 0 and retry_delay == 0.0 and backoff == 2.0:
            return NO_RETRY
        return cls(max_retries, retry_delay, backoff)

    def delay_after(self, attempts: int) -> float | None:
        """Seconds to wait before the next attempt once ``attempts`` attempts have ended without
        success, or ``None`` when the retries are used up."""
        if attempts > self.max_retries:
            return None
        return self.retry_delay * self.backoff ** (attempts - 1)


def _within(value: object, name: str, low: float, high: float, what: str) -> float:
    accepted = f"{what} from {low:g} to {high:g}"
    number = parse_number(value, field=name, accepted=accepted)
    if not low <= number <= high:
        raise InvalidInputError(name, f"{shown(value)} is out of range; use {accepted}")
    return number


NO_RETRY = RetryPolicy()
