"""A run's ``max_parallel`` slots: how many of its steps (and items) hold one, and the steps cleared to run
that wait for one, handed out highest priority first, then in the order they were cleared.

:class:`Slots` belongs to its run's :class:`~codomyrmex_orchestration.core._workflow_run.RunState` and is
guarded by that run's lock.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any

from codomyrmex_orchestration.core.models import TaskPriority

__all__ = ["Slots"]


class Slots:
    """The slots of one run: at most ``limit`` of its steps in flight (``None``: no limit, none held).

    Under a limit every step cleared to run is held (:meth:`hold`) and the run hands the free slots out
    (:meth:`fill`) once it has decided every step its graph made ready, so that of the steps ready at
    once the one of highest priority starts first: the order the scheduler's queue keeps, which it
    could not apply to steps one slot lets through one at a time (a sequential session runs each
    workflow with ``max_parallel`` 1).
    """

    __slots__ = ("_held", "_order", "in_flight", "limit")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.in_flight = 0  # steps handed a slot and not final (counted only under a limit)
        self._held: list[tuple[int, int, str, dict[str, Any]]] = []  # (priority, order, name, params)
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, name: str, params: dict[str, Any], priority: TaskPriority) -> None:
        """Hold step (or item) ``name``, cleared to run with ``params``, until :meth:`fill` gives it one."""
        heapq.heappush(self._held, (priority.value, next(self._order), name, params))

    def release(self) -> None:
        """A step that held a slot ended (or parked on a question, holding no worker)."""
        if self.limit is not None:
            self.in_flight -= 1

    def fill(self, submit: list[tuple[str, dict[str, Any]]]) -> None:
        """Give the free slots to the held steps, highest priority first, appending them to ``submit``."""
        held, limit = self._held, self.limit
        while held and limit is not None and self.in_flight < limit:
            self.in_flight += 1
            _, _, name, params = heapq.heappop(held)
            submit.append((name, params))

    def drop(self) -> list[str]:
        """Forget every held step (the run was cancelled): their names, in the order they would have run."""
        names = [entry[2] for entry in sorted(self._held)]
        self._held.clear()
        return names
