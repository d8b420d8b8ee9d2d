"""TaskTable: dependencies through the shared DependencyGraph, the skip cascade, retention."""

from __future__ import annotations

from codomyrmex_orchestration.core._retry import NO_RETRY
from codomyrmex_orchestration.core._task import Task
from codomyrmex_orchestration.core._task_table import TaskTable
from codomyrmex_orchestration.core.models import TaskPriority, TaskStatus


def make(name: str, *deps: Task) -> Task:
    return Task(
        name, lambda ctx: None, name, TaskPriority.NORMAL, tuple(d.id for d in deps),
        None, NO_RETRY, None, None, None, None, None, False,
    )  # fmt: skip


def finish(table: TaskTable, task: Task, status: TaskStatus = TaskStatus.COMPLETED) -> list[Task]:
    task.status = status
    return table.finished(task)


def test_tasks_added_while_others_run_are_handed_out_in_dependency_order() -> None:
    table = TaskTable(max_finished=100)
    a = make("a")
    assert table.add(a, []) is None and a.handed  # no dependency: it may start at once
    b, c = make("b", a), make("c", a)
    table.add(b, [a])
    table.add(c, [a])
    assert not b.handed and not c.handed  # a is still running
    d = make("d", b, c)
    table.add(d, [b, c])
    assert finish(table, a) == [b, c]
    assert finish(table, b) == []
    assert finish(table, c) == [d] and d.handed


def test_a_dependency_already_completed_counts_and_one_already_failed_is_returned() -> None:
    table = TaskTable(max_finished=100)
    ok, bad = make("ok"), make("bad")
    for task in (ok, bad):
        table.add(task, [])
    finish(table, ok)
    finish(table, bad, TaskStatus.FAILED)
    after_ok = make("after_ok", ok)
    assert table.add(after_ok, [ok]) is None and after_ok.handed
    assert table.add(make("after_bad", bad), [bad]) is bad


def test_the_skip_cascade_reaches_every_unfinished_task_downstream_with_its_failed_parent() -> None:
    table = TaskTable(max_finished=100)
    root, other = make("root"), make("other")
    table.add(root, [])
    table.add(other, [])
    child = make("child", root, other)
    grandchild = make("grandchild", child)
    table.add(child, [root, other])
    table.add(grandchild, [child])
    assert [(c.id, p.id) for c, p in table.cascade(root)] == [("child", "root"), ("grandchild", "child")]
    assert table.cascade(grandchild) == []


def test_a_task_finished_while_it_waited_is_never_handed_out() -> None:
    table = TaskTable(max_finished=100)
    first = make("first")
    table.add(first, [])
    waiting = make("waiting", first)
    table.add(waiting, [first])
    finish(table, waiting, TaskStatus.CANCELLED)  # cancelled before its dependency finished
    assert finish(table, first) == []
    assert not waiting.handed and table.active == 0


def test_only_the_newest_finished_tasks_are_kept_and_counted_by_status() -> None:
    table = TaskTable(max_finished=2)
    tasks = [make(f"t{i}") for i in range(4)]
    for task in tasks:
        table.add(task, [])
    for task in tasks:
        finish(table, task)
    assert list(table.tasks) == ["t2", "t3"]
    counts = table.counts()
    assert counts["completed_total"] == 4 and counts["records_kept"] == 2
    assert counts["by_status"]["completed"] == 2 and counts["by_priority"]["normal"] == 2
