"""The ready queue: tasks whose dependencies are met, waiting for a worker, in the order they will start.

It owns the queued tasks: five priority levels, served strictly in order; within a level, one FIFO per
session served round robin, so one client queueing a thousand tasks cannot make another client's task
wait behind all of them. A task that needs resources starts only once the
:class:`ResourceAdmission` grants all of them at once; while the task at the front of a level waits
for resources, no later task of that level overtakes it (a big task is not starved by small ones).
It also counts the queued tasks that are instant (their call returns at once), for the worker pool.

Not thread-safe: the scheduler guards it with its lock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from codomyrmex_orchestration.core.models import TaskPriority

__all__ = ["Queueable", "ReadyQueue", "ResourceAdmission"]

_PRIORITIES = tuple(TaskPriority)


class ResourceAdmission(Protocol):
    """What the scheduler needs from a resource manager (``ResourceManager`` implements it)."""

    def check_satisfiable(self, requirements: Mapping[str, Any]) -> None:
        """Raise ``InsufficientResourcesError`` if ``requirements`` exceed total capacity (+ burst)."""

    def try_acquire(self, requester_id: str, requirements: Mapping[str, Any]) -> object | None:
        """Allocate all of ``requirements`` at once and return a handle, or ``None`` if not now."""

    def release_handle(self, handle: object) -> None:
        """Release what ``try_acquire`` allocated."""

    def add_release_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from any thread, without locks of ours) whenever capacity is freed."""


class Queueable(Protocol):
    """What the queue reads and writes on a task."""

    @property
    def id(self) -> str: ...
    @property
    def priority(self) -> TaskPriority: ...
    @property
    def session_id(self) -> str | None: ...
    @property
    def resources(self) -> Mapping[str, Any] | None: ...
    @property
    def instant(self) -> bool: ...

    resource_handle: object | None


T = TypeVar("T", bound=Queueable)


class _Level(Generic[T]):
    """One priority level: a FIFO per session and the order in which sessions take turns."""

    __slots__ = ("by_session", "turns")

    def __init__(self) -> None:
        self.by_session: dict[Hashable, deque[T]] = {}
        self.turns: deque[Hashable] = deque()  # sessions with queued tasks; the first goes next

    def push(self, task: T) -> None:
        key = task.session_id
        fifo = self.by_session.get(key)
        if fifo is None:
            self.by_session[key] = fifo = deque()
            self.turns.append(key)
        fifo.append(task)

    def head(self) -> T:
        return self.by_session[self.turns[0]][0]

    def pop_head(self) -> T:
        key = self.turns[0]
        fifo = self.by_session[key]
        task = fifo.popleft()
        if fifo:
            self.turns.rotate(-1)  # this session had its turn
        else:
            self.turns.popleft()
            del self.by_session[key]
        return task

    def remove(self, task: T) -> bool:
        key = task.session_id
        fifo = self.by_session.get(key)
        if fifo is None:
            return False
        try:
            fifo.remove(task)
        except ValueError:
            return False
        if not fifo:
            self.turns.remove(key)
            del self.by_session[key]
        return True


class ReadyQueue(Generic[T]):
    """Ready tasks by priority, then session turn, then submission order.

    Args:
        admission: consulted before a task that needs resources leaves the queue; ``None`` admits all.
    """

    __slots__ = ("_admission", "_levels", "instant", "size")

    def __init__(self, admission: ResourceAdmission | None = None) -> None:
        self._admission = admission
        self._levels: tuple[_Level[T], ...] = tuple(_Level() for _ in _PRIORITIES)
        self.size = 0  # how many tasks are queued (read as an attribute on the worker's path)
        self.instant = 0  # how many of the queued tasks are instant

    def __len__(self) -> int:
        return self.size

    def push(self, task: T) -> None:
        self._levels[task.priority].push(task)
        self.size += 1
        self.instant += task.instant

    def remove(self, task: T) -> bool:
        """Take ``task`` out (it was cancelled); False if it is not queued."""
        removed = self._levels[task.priority].remove(task)
        if removed:
            self.size -= 1
            self.instant -= task.instant
        return removed

    def pop(self, refused: list[tuple[T, Exception]]) -> T | None:
        """The next task that may start now, its resources (if any) acquired into ``resource_handle``.

        Args:
            refused: tasks whose admission raised are taken out and appended here with the error.

        Returns:
            ``None`` when nothing is queued or every non-empty level waits for resources.
        """
        admission = self._admission
        for level in self._levels:
            while level.turns:
                task = level.head()
                if task.resources is not None and admission is not None:
                    try:
                        handle = admission.try_acquire(task.id, task.resources)
                    except Exception as exc:
                        level.pop_head()
                        self.size -= 1
                        self.instant -= task.instant
                        refused.append((task, exc))
                        continue
                    if handle is None:
                        break  # this level waits for its head; a lower level may still start
                    task.resource_handle = handle
                self.size -= 1
                self.instant -= task.instant
                return level.pop_head()
        return None

    def depths(self) -> dict[str, int]:
        """Queued tasks per priority level, by lower-case level name."""
        return {
            p.name.lower(): sum(len(f) for f in level.by_session.values())
            for p, level in zip(_PRIORITIES, self._levels, strict=True)
        }
