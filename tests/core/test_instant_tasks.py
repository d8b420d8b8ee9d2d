"""Instant tasks (``ActionDefinition.instant``: the call returns at once and never blocks): the scheduler
runs the instant work queued behind one on the worker already running it instead of waking others, and
still gives work that may block a worker of its own. Real threads and the real scheduler; coordination
by events and bounded waits."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from codomyrmex_orchestration.core._task import Task
from codomyrmex_orchestration.core.actions import (
    ActionContext,
    ActionDefinition,
    ActionRegistry,
    create_registry,
)
from codomyrmex_orchestration.core.backends import ActionCall, LocalBackend
from codomyrmex_orchestration.core.models import (
    TaskPriority,
    TaskRecord,
    TaskSpec,
    TaskStatus,
    WorkflowStatus,
)
from codomyrmex_orchestration.core.scheduler import TaskCallable, TaskOrchestrator
from codomyrmex_orchestration.core.store import MemoryStore, SqliteStore
from codomyrmex_orchestration.core.workflows import WorkflowManager

WAIT = 10.0


@pytest.fixture
def registry() -> ActionRegistry:
    return create_registry(load_plugins=False)


@pytest.fixture
def make_orch(registry: ActionRegistry) -> Iterator[Any]:
    made: list[TaskOrchestrator] = []

    def make(max_workers: int = 4, **kwargs: Any) -> TaskOrchestrator:
        orch = TaskOrchestrator(max_workers, registry=registry, **kwargs)
        made.append(orch)
        return orch

    yield make
    for orch in made:
        orch.shutdown(wait=True, cancel_pending=True, timeout=5)


def echo(orch: TaskOrchestrator, i: int) -> str:
    return orch.submit_task(
        TaskSpec(name=f"echo-{i}", module="core", action="echo", parameters={"message": i})
    )


def test_the_core_actions_that_return_at_once_are_declared_instant(registry: ActionRegistry) -> None:
    instant = {d.qualified_name for d in registry.definitions() if d.instant}
    assert instant == {"core.echo", "core.set", "core.fail"}  # not core.sleep, shell, http, workflow.run


def test_a_burst_of_instant_tasks_is_run_by_one_worker(make_orch: Any) -> None:
    orch = make_orch(4)
    ids = [echo(orch, i) for i in range(300)]
    assert [orch.wait(task_id, WAIT).result for task_id in ids] == list(range(300))
    assert orch.health()["workers_alive"] == 1


def test_tasks_that_may_block_still_get_a_worker_each(make_orch: Any) -> None:
    orch = make_orch(4)
    together = threading.Barrier(4, timeout=WAIT)  # passes only if all four run at once

    def meet(ctx: ActionContext) -> int:
        return together.wait()

    ids = [orch.submit(meet, name=f"meet-{i}") for i in range(4)]
    assert sorted(orch.wait(task_id, WAIT).result for task_id in ids) == [0, 1, 2, 3]
    assert orch.health()["workers_alive"] == 4


def test_instant_work_behind_a_blocked_worker_gets_a_worker(make_orch: Any) -> None:
    orch = make_orch(2)
    started, release = threading.Event(), threading.Event()

    def hold(ctx: ActionContext) -> str:
        started.set()
        release.wait(WAIT)
        return "released"

    held = orch.submit(hold, name="hold")
    assert started.wait(WAIT)
    ids = [echo(orch, i) for i in range(50)]
    assert [orch.wait(task_id, WAIT).status for task_id in ids] == [TaskStatus.COMPLETED] * 50
    assert orch.get_task(held).status is TaskStatus.RUNNING  # the echoes did not wait for it
    release.set()
    assert orch.wait(held, WAIT).result == "released"


@pytest.fixture
def stuck(
    make_orch: Any, registry: ActionRegistry
) -> Iterator[tuple[TaskOrchestrator, threading.Event, threading.Event]]:
    """A one-worker scheduler with ``test.stuck``, an action declared instant that blocks after all (a
    wrong declaration) until ``release`` is set, for longer than the tests wait for anything: work that
    waited for it to return would fail them. Yields (scheduler, started, release); released at the end."""
    started, release = threading.Event(), threading.Event()

    def stuck(params: dict[str, Any], ctx: ActionContext) -> str:
        started.set()
        if params.get("lend"):
            with ctx.blocking():  # it says it waits on other scheduled work
                release.wait(3 * WAIT)
        else:
            release.wait(3 * WAIT)
        return "unstuck"

    registry.register(ActionDefinition("test", "stuck", stuck, instant=True))
    yield make_orch(1), started, release
    release.set()


def test_an_instant_task_timed_out_does_not_hold_up_the_instant_work_behind_it(stuck: Any) -> None:
    orch, started, _ = stuck
    task = orch.submit(None, action=ActionCall("test", "stuck", {}), name="stuck", timeout=0.2)
    assert started.wait(WAIT)
    ids = [echo(orch, i) for i in range(20)]  # queued behind the worker inside the stuck call
    # Its deadline gives its slot to a new worker, which runs them while the stuck call goes on.
    assert [orch.wait(task_id, WAIT).status for task_id in ids] == [TaskStatus.COMPLETED] * 20
    assert orch.wait(task, WAIT).status is TaskStatus.TIMED_OUT


def test_an_instant_task_that_blocks_on_other_work_lends_its_slot(stuck: Any) -> None:
    orch, started, release = stuck
    waiting = orch.submit_task(
        TaskSpec(name="waits", module="test", action="stuck", parameters={"lend": True})
    )
    assert started.wait(WAIT)
    # The only slot is lent while the instant task waits: the echo behind it gets a worker.
    assert orch.wait(echo(orch, 1), WAIT).result == 1
    release.set()
    assert orch.wait(waiting, WAIT).result == "unstuck"


class ElsewhereBackend(LocalBackend):
    """A backend that says it runs actions in another process (as Dask does): a worker then waits for
    each call, so no task on it is instant. It runs them here, which is all this test needs."""

    name = "elsewhere"
    remote = True

    def bind(
        self,
        fn: TaskCallable,
        call: ActionCall,
        *,
        priority: TaskPriority,
        resources: Mapping[str, Any] | None,
    ) -> TaskCallable:
        return lambda ctx: fn(ctx)


def test_no_task_is_instant_on_a_backend_that_runs_actions_elsewhere(make_orch: Any) -> None:
    call = ActionCall("core", "echo", {"message": "hi"})
    for backend, instant in ((LocalBackend(), True), (ElsewhereBackend(), False)):
        orch = make_orch(2, backend=backend)
        batch: list[Task] = []
        orch.submit(None, action=call, name="echo", batch=batch)
        assert batch[0].instant is instant
        orch.submit_batch(batch)
        assert orch.wait(batch[0].id, WAIT).result == "hi"


def test_a_workflow_of_instant_steps_runs_on_one_worker(make_orch: Any, registry: ActionRegistry) -> None:
    orch = make_orch(4)
    manager = WorkflowManager(orchestrator=orch, registry=registry, config_dir=None)
    steps = [{"name": f"s{i}", "module": "core", "action": "set", "parameters": {"i": i}} for i in range(200)]
    steps += [
        {
            "name": "last",
            "module": "core",
            "action": "echo",
            "parameters": {"message": "{{steps.s199.output.i}}"},
            "dependencies": ["s0", "s199"],
        }
    ]
    manager.create_workflow("wide", steps)
    run = manager.execute_workflow("wide", timeout=WAIT)
    assert run.status is WorkflowStatus.COMPLETED and run.steps["last"].output == 199
    assert orch.health()["workers_alive"] == 1


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "sqlite"])
def test_a_durable_step_that_waits_for_its_parents_commit_is_not_instant(
    make_orch: Any, registry: ActionRegistry, tmp_path: Path, durable: bool
) -> None:
    # With the durable store a step with parents waits at its start until their results are committed:
    # a wait, so not instant. Items of a map step follow the same rule as steps.
    orch = make_orch(2)
    store = SqliteStore(tmp_path / "state.db") if durable else MemoryStore()
    manager = WorkflowManager(orchestrator=orch, registry=registry, store=store, config_dir=None)
    manager.create_workflow(
        "mixed",
        [
            {"name": "root", "module": "core", "action": "set", "parameters": {"n": 1}},
            {
                "name": "child",
                "module": "core",
                "action": "echo",
                "parameters": {"message": 2},
                "dependencies": ["root"],
            },
            {
                "name": "items",
                "module": "core",
                "action": "echo",
                "parameters": {"message": "{{item}}"},
                "for_each": [1, 2, 3],
                "dependencies": ["root"],
            },
            {"name": "nap", "module": "core", "action": "sleep", "parameters": {"seconds": 0}},
        ],
    )
    # Which tasks were instant is not part of any record: read from each task as it starts (a run's
    # tasks are forgotten once they end).
    instant: dict[str | None, bool] = {}

    def started(event: str, record: TaskRecord) -> None:
        if event == "task.started":
            with orch._d.lock:
                instant[record.step_name] = orch._d.table.tasks[record.task_id].instant

    orch.add_listener(started)
    try:
        assert manager.execute_workflow("mixed", timeout=WAIT).status is WorkflowStatus.COMPLETED
    finally:
        store.close()
    assert instant == {
        "root": True,
        "child": not durable,
        "items[0]": not durable,
        "items[1]": not durable,
        "items[2]": not durable,
        "nap": False,  # core.sleep may block
    }
