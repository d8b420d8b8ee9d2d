"""Steps sent to the Dask cluster in batches: every step that became ready while the client's event loop
was busy is submitted from that loop in one pass.

``Client.submit`` from a dispatch slot's thread hands each message to the client's event loop with a
cross-thread wake-up (a write to the loop's self-pipe, then a read), and tracking the future costs a
second one; with many small steps those wake-ups were a fifth of the process's samples. Here a slot
queues its :class:`Submission`; the first one queued schedules one :meth:`SubmitBatcher._flush` on the
loop, which submits everything queued by then and hands each future to the result collector.

State: ``_lock`` guards ``_queue`` and each queued submission's ``future`` and ``abandoned``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from distributed import Client, Future
from distributed.client import ClosedClientError

from codomyrmex_orchestration.core.backends._dask_results import Outcome, ResultCollector

__all__ = ["Submission", "SubmitBatcher"]

#: Client states in which a submission reaches the scheduler (``connecting``: once reconnected, or
#: cancelled when the client gives up; either way the slot hears of it).
_SENDING = frozenset({"running", "connecting", "newly-created"})


@dataclass(slots=True, eq=False)
class Submission:
    """One attempt waiting to be submitted; ``future`` is set once it is (on the loop)."""

    fn: Callable[..., Any]
    argument: Any
    key: str
    priority: int
    resources: Mapping[str, float] | None
    outcome: Outcome
    future: Future[Any] | None = None
    abandoned: bool = False
    reason: str = field(default="")


class SubmitBatcher:
    """Submits queued attempts from the client's event loop, all that are queued at each pass."""

    def __init__(self, client: Client, results: ResultCollector) -> None:
        self._client = client
        self._results = results
        self._lock = threading.Lock()
        self._queue: list[Submission] = []

    def submit(self, submission: Submission) -> None:
        """Queue ``submission``; its outcome's event is set when it finishes (see ResultCollector)."""
        with self._lock:
            first = not self._queue
            self._queue.append(submission)
        if first:
            loop = self._client.loop
            if loop is None:  # a closed client of its own loop: nothing will ever submit
                self._flush()
            else:
                loop.add_callback(self._flush)

    def abandon(self, submission: Submission, reason: str) -> Future[Any] | None:
        """The slot stops waiting: a submission not sent yet never will be; returns the future if sent."""
        with self._lock:
            submission.abandoned = True
            submission.reason = reason
            return submission.future

    def _flush(self) -> None:
        """On the client's event loop: submit what is queued (Client.submit's own hand-off to the loop
        is then a plain call_soon, and the batch leaves in one message)."""
        with self._lock:
            batch, self._queue = self._queue, []
        for sub in batch:
            with self._lock:
                if sub.abandoned:
                    continue
            try:
                if self._client.status not in _SENDING:
                    # A closing client drops what it is given without a word: refuse it here.
                    raise ClosedClientError(f"the client is {self._client.status}")
                future = self._client.submit(
                    sub.fn,
                    sub.argument,
                    key=sub.key,
                    priority=sub.priority,
                    resources=sub.resources,
                    pure=False,
                )
            except Exception as exc:  # ClosedClientError: each slot must hear it, or it waits forever
                sub.outcome.error = exc
                sub.outcome.wake.set()
                continue
            with self._lock:
                sub.future = future
                abandoned = sub.abandoned
            if abandoned:
                # Cancelled while being submitted, so the slot saw no future to cancel: dropping the
                # only reference releases the key, and the scheduler cancels a task nobody wants.
                continue
            self._results.track(future, sub.outcome)
