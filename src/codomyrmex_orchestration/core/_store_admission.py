"""Admission to the SQLite store's byte budget: the room held for runs admitted but not yet saved.

A new run's record (estimated by ``run_estimate``) is reserved as the run is admitted
(``SqliteStore.check_budget(run_id=)``) and counted with the bytes used until the commit that writes the
run's first record (the writer reports it: :meth:`Admissions.committed`, after the commit has published
the bytes it added) or until the admission fails (:meth:`Admissions.release`). Runs admitted at the same
instant then cannot all count the same free room. It owns the reservations and their total, under
``_lock``; the check and the reservation happen under it together.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from ._store_codec import refuse_over_budget
from ._store_retention import Retention

__all__ = ["Admissions"]


class Admissions:
    """The byte budget's admission check for new runs, with the room each admitted run holds.

    Args:
        retention: whose bytes-used snapshot (:attr:`Retention.usage`) the check counts the
            reservations with.
    """

    def __init__(self, retention: Retention) -> None:
        self._retention = retention
        self._lock = threading.Lock()  # guards _held and _total
        self._held: dict[str, int] = {}  # run id -> bytes reserved for its first record
        self._total = 0

    @property
    def reserved(self) -> int:
        """Bytes held for runs admitted whose first record is not committed yet."""
        with self._lock:
            return self._total

    def admit(self, adding: int, run_id: str | None, *, evict: Callable[[], None]) -> None:
        """Admit new work adding ``adding`` bytes (a run's estimated record; 0: work that only needs the
        state under its budget), holding them for ``run_id`` if given. When it does not fit, ``evict``
        (a retention pass, waited for) makes what room it can before the check is made again.

        Raises:
            LimitExceededError: the bytes used, the room held for other admitted runs and ``adding``
                are over the budget even after ``evict``.
        """
        if self._take(adding, run_id) is None:
            return
        evict()
        refused = self._take(adding, run_id)
        if refused is not None:
            used, limit, held = refused
            raise refuse_over_budget(used, limit, adding, held=held)

    def _take(self, adding: int, run_id: str | None) -> tuple[int, int, int] | None:
        """Reserve ``adding`` for ``run_id`` if it fits (None), else ``(used, limit, held)``."""
        with self._lock:
            # Read under the lock: a commit publishes the bytes it added before it releases the run's
            # reservation (under this lock), so a check never misses both.
            usage = self._retention.usage
            if usage.max_bytes is None:
                return None
            used = usage.total + self._total + adding
            if used > usage.max_bytes:
                return used, usage.max_bytes, self._total
            if run_id is not None and adding:
                self._held[run_id] = self._held.get(run_id, 0) + adding
                self._total += adding
            return None

    def release(self, run_id: str) -> None:
        """Give back what ``run_id`` holds (its admission failed, or its record is committed)."""
        with self._lock:
            self._total -= self._held.pop(run_id, 0)

    def committed(self, run_ids: Iterable[str]) -> None:
        """The records of ``run_ids`` were committed and their bytes counted: they hold nothing more."""
        with self._lock:
            if self._held:
                for run_id in run_ids:
                    self._total -= self._held.pop(run_id, 0)
