"""The scheduler's task table: every task by id, how long finished ones are kept, and the dependencies
between tasks.

It owns the tasks dict (live tasks and the newest ``max_finished`` finished ones), the counts since
start, and the :class:`~codomyrmex_orchestration.core.graph.DependencyGraph` of tasks: a task is ready
when the graph hands it out; the skip cascade (a task whose dependency ended without completing is
SKIPPED, and so on downstream) is worked out here from the graph's edges and the tasks' outcomes. It
tells the queue's room (:mod:`._queue_room`) of each task that joins or ends. Not thread-safe: the
scheduler guards it with its lock.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from codomyrmex_orchestration.core._queue_room import QueueRoom
from codomyrmex_orchestration.core._task import FINAL, Task
from codomyrmex_orchestration.core.graph import DependencyGraph
from codomyrmex_orchestration.core.models import TaskPriority, TaskRecord, TaskStatus
from codomyrmex_orchestration.errors import TaskNotFoundError

__all__ = ["TaskTable"]


class TaskTable:
    """Tasks by id, their dependency graph, retention and totals.

    Args:
        max_finished: finished tasks kept for lookups; the oldest are forgotten beyond it.
        room: counts each client's tasks not final (``None``: a room without cap or shares).
    """

    def __init__(
        self, max_finished: int, room: QueueRoom | None = None, id_prefix: str | None = None
    ) -> None:
        self.max_finished = max_finished
        self.room = room if room is not None else QueueRoom(None)
        self.id_prefix = id_prefix  # of the ids of its tasks (an unknown id of another is explained)
        self.tasks: dict[str, Task] = {}
        self._finished_order: deque[str] = deque()
        self._graph: DependencyGraph[Task] = DependencyGraph()
        self._graph.prepare()  # tasks join a running graph as they are submitted
        self.active = 0  # tasks not final
        self.totals = dict.fromkeys(("submitted", "retried", *(s.value for s in FINAL)), 0)

    def get(self, task_id: str) -> Task | None:
        return self.tasks.get(task_id)

    def require(self, task_id: str) -> Task:
        """The task, or :class:`TaskNotFoundError` if it is unknown or was evicted."""
        task = self.tasks.get(task_id)
        if task is None:
            raise TaskNotFoundError(task_id, instance=self.id_prefix, kept=self.max_finished)
        return task

    def add(self, task: Task, dependencies: list[Task]) -> Task | None:
        """Register a new task that may start once ``dependencies`` completed; ``task.handed`` is set
        when it may start at once.

        A task joins the graph only when it waits for another or another waits for it: most tasks do
        neither, and cost the graph nothing.

        Returns:
            A dependency that already ended without completing (the task is to be skipped at once),
            else ``None``.
        """
        self.tasks[task.id] = task
        self.active += 1
        if task.session_id is not None:  # a client's share counts its tasks only
            self.room.count(task, 1)
        self.totals["submitted"] += 1
        if not dependencies:  # most tasks
            task.handed = True
            return None
        waiting_for: list[Task] = []
        for dep in dependencies:
            if dep.status in FINAL:
                if dep.status is not TaskStatus.COMPLETED:
                    return dep
            else:
                waiting_for.append(dep)
        if not waiting_for:
            task.handed = True
            return None
        graph = self._graph
        for dep in waiting_for:
            if dep not in graph:
                # Handed out already (queued, running or waiting for a retry): it joins as a node the
                # graph hands out at once, so that its done() releases this task.
                graph.add(dep)
                graph.get_ready()
        graph.add(task, waiting_for)
        return None

    def _take_ready(self) -> list[Task]:
        """Tasks whose dependencies have all completed, each returned once (then ``handed``)."""
        graph = self._graph
        out: list[Task] = []
        while ready := graph.get_ready():
            for task in ready:
                if task.status in FINAL:  # cancelled or skipped while it waited: nothing to start
                    graph.done(task)
                    self._forget_if_evicted(task)
                else:
                    task.handed = True
                    out.append(task)
        return out

    def cascade(self, task: Task) -> list[tuple[Task, Task]]:
        """The skip cascade of ``task``, which ended without completing: (dependent, the dependency it
        waited for that ended) for every task downstream that is not final yet, nearest first."""
        graph = self._graph
        if task not in graph:
            return []
        doomed: list[tuple[Task, Task]] = []
        seen = {task}
        todo = deque([task])
        while todo:
            parent = todo.popleft()
            for child in graph.dependents(parent):
                if child not in seen and child.status not in FINAL:
                    seen.add(child)
                    doomed.append((child, parent))
                    todo.append(child)
        return doomed

    def finished(self, task: Task) -> list[Task]:
        """``task`` just became final: count it and forget the oldest records.

        Returns:
            The tasks that may start now because it was the last thing they waited for.
        """
        self.active -= 1
        if task.session_id is not None:  # a client's share counts its tasks only
            self.room.count(task, -1)
        self.totals[task.status] += 1  # a StrEnum member finds its value's key
        ready: list[Task] = []
        in_graph = task in self._graph  # most tasks never join it (see add)
        if task.handed and in_graph:
            self._graph.done(task)
            ready = self._take_ready()
        if task.group is not None and not task.group.keep_final:
            del self.tasks[task.id]  # its owner keeps its outcome (see TaskGroup.keep_final)
            if in_graph:
                self._forget_if_evicted(task)
            return ready
        order = self._finished_order
        order.append(task.id)
        while len(order) > self.max_finished:
            old = self.tasks.get(order.popleft())
            if old is not None and old.status in FINAL:
                del self.tasks[old.id]
                self._forget_if_evicted(old)
        return ready

    def _forget_if_evicted(self, task: Task) -> None:
        """Drop a finished task's graph node once it is done there and gone from the table."""
        graph = self._graph
        if task in graph and self.tasks.get(task.id) is not task and graph.is_done(task):
            graph.discard(task)

    def counts(self) -> dict[str, Any]:
        """Kept tasks by status and by priority, and the totals since start."""
        by_status = dict.fromkeys((s.value for s in TaskStatus), 0)
        by_priority = dict.fromkeys((p.name.lower() for p in TaskPriority), 0)
        for task in self.tasks.values():
            by_status[task.status.value] += 1
            by_priority[task.priority.name.lower()] += 1
        totals = self.totals
        return {
            "by_status": by_status,
            "by_priority": by_priority,
            "submitted_total": totals["submitted"],
            "finished_total": sum(totals[s.value] for s in FINAL),
            **{f"{s.value}_total": totals[s.value] for s in FINAL},
            "retried_total": totals["retried"],
            "records_kept": len(self.tasks),
        }

    def records(self, status: TaskStatus | None, limit: int) -> list[TaskRecord]:
        """Snapshots of up to ``limit`` kept tasks, the most recently submitted first; of ``status`` only,
        if given."""
        out: list[TaskRecord] = []
        for task in reversed(self.tasks.values()):
            if status is None or task.status is status:
                out.append(task.snapshot())
                if len(out) >= limit:
                    break
        return out

    def count_retry(self) -> None:
        self.totals["retried"] += 1
