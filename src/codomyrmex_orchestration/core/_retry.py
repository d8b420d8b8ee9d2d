"""The retry policy of a task: how many more attempts it gets after a failure or a timeout, and when.

A :class:`RetryPolicy` is immutable and owns no state; the attempt count lives on the task.
"""

from __future__ import annotations

from dataclasses import dataclass

from codomyrmex_orchestration.errors import InvalidInputError

__all__ = ["NO_RETRY", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_retries`` extra attempts; the n-th retry starts ``retry_delay * backoff**(n-1)`` s after the
    attempt before it ended.

    Raises:
        InvalidInputError: a negative ``max_retries`` or ``retry_delay``, or ``backoff`` below 1.
    """

    max_retries: int = 0
    retry_delay: float = 0.0
    backoff: float = 2.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise InvalidInputError("max_retries", f"must be 0 or more, got {self.max_retries}")
        if self.retry_delay < 0 or self.backoff < 1:
            raise InvalidInputError(
                "retry_delay",
                f"retry_delay must be >= 0 and backoff >= 1, got {self.retry_delay}, {self.backoff}",
            )

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


NO_RETRY = RetryPolicy()
