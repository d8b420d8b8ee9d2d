"""ReadyQueue: priority levels, session turns within a level, resource admission without starvation."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from codomyrmex_orchestration.core._ready_queue import ReadyQueue
from codomyrmex_orchestration.core.models import TaskPriority


@dataclass(eq=False)
class Item:
    id: str
    priority: TaskPriority = TaskPriority.NORMAL
    session_id: str | None = None
    resources: Mapping[str, Any] | None = None
    resource_handle: object | None = field(default=None)
    instant: bool = False


class Units:
    """A real ResourceAdmission over one pool of ``units``; ``fail`` makes try_acquire raise."""

    def __init__(self, capacity: int, fail: bool = False) -> None:
        self.free = capacity
        self.fail = fail

    def check_satisfiable(self, requirements: Mapping[str, Any]) -> None:
        return None

    def try_acquire(self, requester_id: str, requirements: Mapping[str, Any]) -> object | None:
        if self.fail:
            raise RuntimeError("admission broke")
        wanted = int(requirements["units"])
        if wanted > self.free:
            return None
        self.free -= wanted
        return wanted

    def release_handle(self, handle: object) -> None:
        assert isinstance(handle, int)
        self.free += handle

    def add_release_listener(self, callback: Callable[[], None]) -> None:
        return None


def drain(queue: ReadyQueue[Item]) -> list[str]:
    out = []
    while (item := queue.pop([])) is not None:
        out.append(item.id)
    return out


def test_higher_priorities_leave_first_and_one_level_is_fifo() -> None:
    queue: ReadyQueue[Item] = ReadyQueue()
    for name, priority in [
        ("n1", TaskPriority.NORMAL),
        ("b1", TaskPriority.BACKGROUND),
        ("c1", TaskPriority.CRITICAL),
        ("n2", TaskPriority.NORMAL),
    ]:
        queue.push(Item(name, priority))
    assert len(queue) == 4 and queue.depths()["normal"] == 2
    assert drain(queue) == ["c1", "n1", "n2", "b1"]
    assert len(queue) == 0


def test_sessions_of_one_level_take_turns_so_a_backlog_does_not_delay_another_session() -> None:
    queue: ReadyQueue[Item] = ReadyQueue()
    for i in range(1000):
        queue.push(Item(f"a{i}", session_id="flood"))
    queue.push(Item("b0", session_id="other"))
    queue.push(Item("b1", session_id="other"))
    order = drain(queue)
    assert order[:4] == ["a0", "b0", "a1", "b1"]
    assert order[4:] == [f"a{i}" for i in range(2, 1000)]  # each session stays FIFO


def test_a_level_waiting_for_resources_keeps_its_order_and_lower_levels_still_start() -> None:
    units = Units(2)
    queue: ReadyQueue[Item] = ReadyQueue(units)
    queue.push(Item("big", resources={"units": 3}))
    queue.push(Item("small", resources={"units": 1}))  # behind the big one: must not overtake it
    queue.push(Item("low", TaskPriority.LOW))
    low = queue.pop([])
    assert low is not None and low.id == "low"
    assert queue.pop([]) is None and len(queue) == 2
    units.free = 3
    big = queue.pop([])
    assert big is not None and big.id == "big" and big.resource_handle == 3


def test_a_task_whose_admission_raises_is_taken_out_and_reported() -> None:
    queue: ReadyQueue[Item] = ReadyQueue(Units(1, fail=True))
    queue.push(Item("bad", resources={"units": 1}))
    queue.push(Item("plain"))
    refused: list[tuple[Item, Exception]] = []
    assert queue.pop(refused) is not None
    assert [(item.id, str(exc)) for item, exc in refused] == [("bad", "admission broke")]
    assert len(queue) == 0


def test_a_removed_task_never_leaves_the_queue_and_removing_twice_says_so() -> None:
    queue: ReadyQueue[Item] = ReadyQueue()
    keep, gone = Item("keep", session_id="s"), Item("gone", session_id="t")
    queue.push(keep)
    queue.push(gone)
    assert queue.remove(gone) and not queue.remove(gone)
    assert drain(queue) == ["keep"]


@pytest.mark.parametrize("priority", list(TaskPriority))
def test_every_priority_level_has_a_depth(priority: TaskPriority) -> None:
    queue: ReadyQueue[Item] = ReadyQueue()
    queue.push(Item("x", priority))
    assert queue.depths()[priority.name.lower()] == 1


def test_the_queue_counts_its_instant_tasks_through_every_way_out() -> None:
    units = Units(1)
    queue: ReadyQueue[Item] = ReadyQueue(units)
    kept, removed = Item("kept", instant=True), Item("removed", instant=True)
    for item in (kept, Item("plain"), removed, Item("big", instant=True, resources={"units": 2})):
        queue.push(item)
    assert (len(queue), queue.instant) == (4, 3)
    assert queue.remove(removed) and not queue.remove(removed)
    assert (len(queue), queue.instant) == (3, 2)
    assert queue.pop([]) is kept
    assert (len(queue), queue.instant) == (2, 1)
    assert queue.pop([]) is not None  # "plain"; "big" waits for units it can never have
    assert queue.pop([]) is None and (len(queue), queue.instant) == (1, 1)
    assert queue.remove(queue._levels[TaskPriority.NORMAL].head())
    assert (len(queue), queue.instant) == (0, 0)
