"""Room in the scheduler's queue: the cap on work waiting to start, and each client's share of it.

It owns the count of waiting tasks per client (accepted, not final, not running: what the cap counts,
by the client a task is queued for, its ``session_id``) and the rule that decides a client's share, so
that one client cannot fill the whole cap while others want room. Guarded by the scheduler's lock: the
task table counts a task in as it joins and out as it ends, the dispatcher out as an attempt starts and
back in as one stops without ending the task (a retry). Work without a client (a program embedding the
engine, the CLI) counts against the cap only.

A client's share is the per-client limit (``max_per_client``; default three quarters of the cap, so a
lone client gets most of the queue and a newcomer still finds room) or, while several clients have
tasks waiting, the cap divided among them, whichever is smaller (never below 1). Like the cap, the
share refuses at the door only: a new task or run, never a task of an accepted group (a run's steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from codomyrmex_orchestration.core._numbers import check_count
from codomyrmex_orchestration.errors import LimitExceededError

if TYPE_CHECKING:
    from codomyrmex_orchestration.core._task import Task

__all__ = ["MAX_QUEUED_PER_CLIENT_SETTING", "MAX_QUEUED_SETTING", "QueueRoom", "default_share"]

#: The setting named when the cap on queued tasks refuses a submission.
MAX_QUEUED_SETTING = "CODOMYRMEX_MAX_QUEUED_TASKS"
#: The setting named when a client's share of that cap refuses one.
MAX_QUEUED_PER_CLIENT_SETTING = "CODOMYRMEX_MAX_QUEUED_PER_CLIENT"


def default_share(max_queued: int) -> int:
    """A client's share of the cap when none is configured: three quarters of it (at least 1)."""
    return max(1, max_queued * 3 // 4)


class QueueRoom:
    """The cap on waiting tasks and each client's share of it (see the module docstring).

    Args:
        max_queued: the most tasks waiting to start, all clients together (``None``: no cap).
        max_per_client: the most one client may have waiting (``None``: :func:`default_share` of the
            cap; with no cap, no share either). Above the cap it is the cap.
    """

    __slots__ = ("max_per_client", "max_queued", "waiting")

    def __init__(self, max_queued: int | None, max_per_client: int | None = None) -> None:
        if max_per_client is not None:
            check_count(max_per_client, "max_queued_per_client", at_least=1)
        elif max_queued is not None:
            max_per_client = default_share(max_queued)
        self.max_queued = max_queued
        self.max_per_client = max_per_client
        self.waiting: dict[str, int] = {}  # client -> its tasks waiting to start (none kept at 0)

    def count(self, task: Task, delta: int) -> None:
        """``task`` starts (-1) or stops (+1) waiting: joined, started, ended, back for a retry."""
        client = task.session_id
        if client is None or self.max_per_client is None:
            return
        held = self.waiting.get(client, 0) + delta
        if held > 0:
            self.waiting[client] = held
        else:
            self.waiting.pop(client, None)

    def share(self, client: str) -> int:
        """How many tasks ``client`` may have waiting now (its limit, or the cap divided among the
        clients with tasks waiting, ``client`` among them, whichever is smaller)."""
        limit = self.max_per_client
        assert limit is not None  # only asked when shares are kept
        if self.max_queued is None:
            return limit
        clients = len(self.waiting) + (client not in self.waiting)
        return min(limit, max(1, self.max_queued // clients))

    def check_new(self, waiting: int, tasks: Sequence[Task]) -> None:
        """Raise unless new ``tasks`` fit beside the ``waiting`` ones: the cap, then each client's
        share. Tasks all of an accepted group (a run's steps) are never refused."""
        cap = self.max_queued
        if cap is None or all(t.group is not None and t.group.accepted for t in tasks):
            return
        if waiting + len(tasks) > cap:
            raise queue_full(cap, waiting + len(tasks))
        if self.max_per_client is None:
            return
        new: dict[str, int] = {}
        for task in tasks:
            if task.session_id is not None:
                new[task.session_id] = new.get(task.session_id, 0) + 1
        for client, count in new.items():
            self._check_client(client, count)

    def check_door(self, waiting: int, client: str | None) -> None:
        """Raise if a new run (for ``client``) would find no room: the cap, or the client's share,
        already reached. Its steps are then never refused (its group is accepted)."""
        cap = self.max_queued
        if cap is not None and waiting >= cap:
            raise queue_full(cap, waiting + 1)
        if client is not None and self.max_per_client is not None:
            self._check_client(client, 1)

    def _check_client(self, client: str, adding: int) -> None:
        held = self.waiting.get(client, 0)
        share = self.share(client)
        if held + adding <= share:
            return
        limit = self.max_per_client
        if self.max_queued is not None and share < (limit or 0):
            clients = len(self.waiting) + (client not in self.waiting)
            cap = f"the {MAX_QUEUED_SETTING} cap of {self.max_queued}"
            why = f"{cap} shared among the {clients} clients with tasks waiting"
        else:
            why = f"{MAX_QUEUED_PER_CLIENT_SETTING} is {limit}"
        reason = (
            f"client {client!r} has {held} tasks waiting to start and its share of the queue is {share} "
            f"({why}), so {adding} more would be too many: wait for its queued tasks to start or "
            f"finish (get_task with wait_seconds), cancel some, or raise {MAX_QUEUED_PER_CLIENT_SETTING}"
        )
        raise LimitExceededError(
            "max_queued_per_client", share, held + adding, "the client's tasks waiting", reason=reason
        )


def queue_full(max_queued: int, waiting: int) -> LimitExceededError:
    """The refusal of the cap itself."""
    what = f"the number of tasks waiting to start, with these (setting {MAX_QUEUED_SETTING}),"
    return LimitExceededError("max_queued", max_queued, waiting, what)
