"""How long a ``core.approve`` question waited for its answer: the step's ``duration_seconds``.

A question asked by this process is timed on the monotonic clock, so a step of the wall clock (an NTP
correction, a resumed laptop, ``date -s``) while it waits makes its duration neither negative nor days
long; one asked before a restart has only the wall clock to span the two processes, never below zero.
:class:`AskedClock` owns the monotonic time of each question asked here, under ``_lock``, until it is
answered or its run ends.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime

from codomyrmex_orchestration.core.models import InputRequest

__all__ = ["AskedClock"]


class AskedClock:
    """When each question this process asked was asked, on the monotonic clock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (run id, step, asked_at) -> time.monotonic() then; asked_at tells a question asked again apart.
        self._asked: dict[tuple[str, str, datetime], float] = {}

    def asked(self, run_id: str, question: InputRequest) -> None:
        """Run ``run_id`` asked ``question`` just now."""
        with self._lock:
            self._asked[(run_id, question.step, question.asked_at)] = time.monotonic()

    def waited(self, run_id: str, question: InputRequest, now: datetime) -> float:
        """Seconds ``question`` of run ``run_id`` waited until ``now`` (the wall time of its answer or
        deadline), to the microsecond: monotonic when this process asked it, else the wall clock's
        difference, at least 0. The question is forgotten: it has its answer."""
        with self._lock:
            began = self._asked.pop((run_id, question.step, question.asked_at), None)
        if began is not None:
            return round(time.monotonic() - began, 6)
        return round(max(0.0, (now - question.asked_at).total_seconds()), 6)

    def forget(self, run_id: str) -> None:
        """Run ``run_id`` ended: its unanswered questions are asked no more."""
        with self._lock:
            for key in [k for k in self._asked if k[0] == run_id]:
                del self._asked[key]
