"""The run state machine (RunState) on its own: transitions driven by hand, then steps added to a live run."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from codomyrmex_orchestration.core._workflow_registry import DefinitionRegistry
from codomyrmex_orchestration.core._workflow_run import RunState, new_record
from codomyrmex_orchestration.core.actions import (
    ActionContext,
    ActionDefinition,
    ActionRegistry,
    create_registry,
)
from codomyrmex_orchestration.core.models import (
    RunRecord,
    StepResult,
    StepSpec,
    TaskPriority,
    TaskRecord,
    TaskSpec,
    TaskStatus,
    WorkflowStatus,
)
from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
from codomyrmex_orchestration.core.store import MemoryStore
from codomyrmex_orchestration.core.workflows import WorkflowManager
from codomyrmex_orchestration.errors import InvalidInputError, InvalidStateError


@pytest.fixture
def registry() -> ActionRegistry:
    return create_registry(load_plugins=False)


def step(name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "module": "core", "action": "set", **kw}


def make_run(
    registry: ActionRegistry,
    steps: list[dict[str, Any]],
    *,
    max_parallel: int | None = None,
    previous: RunRecord | None = None,
) -> RunState:
    definitions = DefinitionRegistry(registry=registry, store=MemoryStore(), max_steps=100)
    plan = definitions.check(definitions.coerce({"name": "w", "steps": steps}))
    record = new_record(
        plan, {}, priority=TaskPriority.NORMAL, session_id=None, parent_run_id=None, previous=previous
    )
    return RunState(
        record,
        plan,
        priority=TaskPriority.NORMAL,
        depth=0,
        on_step=None,
        max_parallel=max_parallel,
        default_resources=None,
    )


def ok(name: str, output: Any = None) -> StepResult:
    return StepResult(name=name, status=TaskStatus.COMPLETED, output=output)


def test_a_step_is_cleared_only_when_its_dependencies_are_settled(registry: ActionRegistry) -> None:
    run = make_run(registry, [step("a"), step("b"), step("c", dependencies=["a", "b"])])
    first = run.begin()
    assert [n for n, _ in first.submit] == ["a", "b"] and not first.finished
    assert run.step_finished(ok("a"), held_slot=True).submit == []
    then = run.step_finished(ok("b"), held_slot=True)
    assert [n for n, _ in then.submit] == ["c"]
    last = run.step_finished(ok("c"), held_slot=True)
    assert last.finished
    final = run.finish()
    assert final is not None and final.status is WorkflowStatus.COMPLETED
    assert run.finish() is None  # once


def test_a_required_failure_skips_its_descendants_in_one_transition_and_fails_the_run(
    registry: ActionRegistry,
) -> None:
    run = make_run(registry, [step("a"), step("b", dependencies=["a"]), step("c", dependencies=["b"])])
    run.begin()
    failed = StepResult(name="a", status=TaskStatus.FAILED)
    advance = run.step_finished(failed, held_slot=True)
    assert [(r.name, r.status) for r in advance.settled] == [
        ("a", TaskStatus.FAILED),
        ("b", TaskStatus.SKIPPED),
        ("c", TaskStatus.SKIPPED),
    ]
    assert advance.finished and advance.submit == []
    final = run.finish()
    assert final is not None and final.status is WorkflowStatus.FAILED and final.failed_steps == ["a"]


def test_an_optional_failure_runs_dependents_but_skips_steps_reading_its_output(
    registry: ActionRegistry,
) -> None:
    run = make_run(
        registry,
        [
            step("maybe", required=False),
            step("after", dependencies=["maybe"]),
            step("reads", parameters={"x": "{{steps.maybe.output}}"}),
            step("gated", run_if="steps.maybe.status == 'failed'", dependencies=["maybe"]),
        ],
    )
    run.begin()
    advance = run.step_finished(StepResult(name="maybe", status=TaskStatus.FAILED), held_slot=True)
    assert sorted(n for n, _ in advance.submit) == ["after", "gated"]
    assert [(r.name, r.status) for r in advance.settled][1:] == [("reads", TaskStatus.SKIPPED)]


def test_run_if_false_settles_the_step_as_skipped_with_the_condition(registry: ActionRegistry) -> None:
    run = make_run(registry, [step("n", parameters={"v": 1}), step("big", run_if="{{steps.n.output.v}} > 5")])
    run.begin()
    advance = run.step_finished(ok("n", {"v": 1}), held_slot=True)
    (skipped,) = [r for r in advance.settled if r.name == "big"]
    assert skipped.status is TaskStatus.SKIPPED and skipped.skipped_reason is not None
    assert "run_if is false" in skipped.skipped_reason


def test_max_parallel_holds_cleared_steps_as_ready_and_releases_one_per_finished_step(
    registry: ActionRegistry,
) -> None:
    run = make_run(registry, [step(f"s{i}") for i in range(4)], max_parallel=2)
    first = run.begin()
    assert [n for n, _ in first.submit] == ["s0", "s1"]
    assert run.snapshot().steps["s2"].status is TaskStatus.READY
    released = run.step_finished(ok("s0"), held_slot=True)
    assert [n for n, _ in released.submit] == ["s2"]


def test_max_parallel_hands_a_free_slot_to_the_highest_priority_of_the_held_steps(
    registry: ActionRegistry,
) -> None:
    run = make_run(
        registry,
        [step("low", priority="low"), step("high", priority="high"), step("normal"), step("urgent")],
        max_parallel=1,
    )
    # All four ready at once: "high" first; "normal" and "urgent" share the run's priority (normal), so
    # they keep the order they were cleared in; "low" last, however early it was declared.
    assert [n for n, _ in run.begin().submit] == ["high"]
    assert [n for n, _ in run.step_finished(ok("high"), held_slot=True).submit] == ["normal"]
    assert [n for n, _ in run.step_finished(ok("normal"), held_slot=True).submit] == ["urgent"]
    assert [n for n, _ in run.step_finished(ok("urgent"), held_slot=True).submit] == ["low"]


def test_a_resumed_run_clears_only_the_steps_its_previous_run_did_not_complete(
    registry: ActionRegistry,
) -> None:
    steps = [step("a"), step("b", dependencies=["a"]), step("c", dependencies=["b"])]
    previous = make_run(registry, steps).record.model_copy(
        update={"steps": {"a": ok("a", 1), "b": StepResult(name="b", status=TaskStatus.FAILED)}}
    )
    run = make_run(registry, steps, previous=previous)
    first = run.begin()
    assert [n for n, _ in first.submit] == ["b"]
    assert run.snapshot().steps["a"].output == 1


def test_cancel_settles_held_steps_and_the_rest_as_they_become_ready(registry: ActionRegistry) -> None:
    run = make_run(registry, [step("a"), step("b"), step("c", dependencies=["a"])], max_parallel=1)
    run.begin()
    advance = run.cancel()  # the running "a" is its scheduler task's to cancel (the run's group)
    assert [(r.name, r.status) for r in advance.settled] == [("b", TaskStatus.CANCELLED)]
    after = run.step_finished(StepResult(name="a", status=TaskStatus.CANCELLED), held_slot=True)
    assert [(r.name, r.status) for r in after.settled][-1] == ("c", TaskStatus.CANCELLED)
    assert after.finished


def test_stats_count_every_unfinished_step_of_a_run(registry: ActionRegistry) -> None:
    run = make_run(registry, [step("a"), step("b", dependencies=["a"]), step("c", dependencies=["b"])])
    run.begin()
    run.step_started("a", 1, None)
    counts: dict[str, int] = {}
    run.count_steps(counts)
    assert counts == {"running": 1, "pending": 2}


def test_steps_cannot_be_added_to_a_run_that_is_ending_nor_under_a_taken_name(
    registry: ActionRegistry,
) -> None:
    run = make_run(registry, [step("a")])
    run.begin()
    with pytest.raises(InvalidInputError, match="already"):
        run.add_steps([StepSpec(name="a", module="core", action="set")])
    with pytest.raises(InvalidInputError, match="nope"):
        run.add_steps([StepSpec(name="x", module="core", action="set", dependencies=["nope"])])
    assert run.step_finished(ok("a"), held_slot=True).finished
    with pytest.raises(InvalidStateError):
        run.add_steps([StepSpec(name="y", module="core", action="set")])


# --------------------------------------------------------------------------- a live run grows


@pytest.fixture
def manager(registry: ActionRegistry) -> Iterator[WorkflowManager]:
    orch = TaskOrchestrator(4, registry=registry)
    yield WorkflowManager(orchestrator=orch, registry=registry, config_dir=None)
    orch.shutdown(wait=True, cancel_pending=True, timeout=10)


def test_steps_added_to_a_running_run_are_scheduled_in_dependency_order_with_the_others(
    manager: WorkflowManager, registry: ActionRegistry
) -> None:
    """The base map steps build on: nodes join the run's dependency graph while it runs."""
    order: list[str] = []
    order_lock = threading.Lock()
    release = threading.Event()

    def note(params: dict[str, Any], ctx: ActionContext) -> str:
        if params.get("hold"):
            assert release.wait(10)
        with order_lock:
            order.append(ctx.step_name)
        return str(ctx.step_name)

    registry.register(ActionDefinition("test", "note", note))

    def noted(name: str, **kw: Any) -> dict[str, Any]:
        return {"name": name, "module": "test", "action": "note", **kw}

    manager.create_workflow(
        "grows",
        [
            noted("expand", parameters={"hold": True}),
            noted("static_after", dependencies=["expand"]),
        ],
    )
    run_id = manager.start_workflow("grows")
    run = manager._active.get(run_id)
    assert run is not None

    def added(name: str, deps: list[str]) -> StepSpec:
        seen = {"seen": f"{{{{steps.{deps[-1]}.output}}}}"}
        return StepSpec(name=name, module="test", action="note", dependencies=deps, parameters=seen)

    # While "expand" runs: items that depend on it, a chain among them, and a join over them.
    manager._driver.add_steps(
        run,
        [
            added("item0", ["expand"]),
            added("item1", ["expand"]),
            added("item2", ["item1"]),
            added("join", ["item0", "item2"]),
        ],
    )
    assert manager.get_run(run_id).steps["item2"].status is TaskStatus.PENDING
    release.set()
    final = manager.wait_run(run_id, timeout=10)
    assert final.status is WorkflowStatus.COMPLETED, final.error
    assert list(final.steps) == ["expand", "static_after", "item0", "item1", "item2", "join"]
    assert final.steps["item2"].output == "item2"
    position = {name: i for i, name in enumerate(order)}
    assert position["expand"] < min(position["item0"], position["item1"], position["static_after"])
    assert position["item1"] < position["item2"] < position["join"]
    assert position["item0"] < position["join"]


def test_each_step_is_queued_with_its_own_settings_though_steps_alike_share_them(
    manager: WorkflowManager,
) -> None:
    steps = [
        step("a1"),
        step("urgent", priority="high", max_retries=2),
        step("a2", dependencies=["a1"]),
        step("late", priority="low", dependencies=["urgent"]),
        step("slow", timeout=30, dependencies=["a2"]),
        step("a3", dependencies=["slow", "late"]),
    ]
    manager.create_workflow({"name": "mixed", "steps": steps})
    queued: dict[str | None, TaskPriority] = {}  # a run's tasks are not kept once they end: heard as queued

    def heard(event: str, record: TaskRecord) -> None:
        if event == "task.queued":
            queued[record.step_name] = record.priority

    manager.orchestrator.add_listener(heard)
    run = manager.execute_workflow("mixed", timeout=30)
    assert run.status is WorkflowStatus.COMPLETED, run.error
    assert queued == {
        "a1": TaskPriority.NORMAL,
        "urgent": TaskPriority.HIGH,
        "a2": TaskPriority.NORMAL,
        "late": TaskPriority.LOW,
        "slow": TaskPriority.NORMAL,
        "a3": TaskPriority.NORMAL,
    }


def test_a_run_s_tasks_are_forgotten_as_they_end_so_a_big_run_keeps_no_single_task_from_its_caller(
    registry: ActionRegistry,
) -> None:
    # The scheduler keeps the newest max_finished finished tasks for get_task; a run keeps its steps' and
    # items' results in its own record, so their tasks must not take those places: a 40-step run after
    # a single task leaves that task's record where its caller can read it.
    orch = TaskOrchestrator(2, registry=registry, max_finished=3)
    try:
        manager = WorkflowManager(orchestrator=orch, registry=registry, config_dir=None)
        single = orch.submit_task(
            TaskSpec(name="mine", module="core", action="echo", parameters={"message": 1})
        )
        assert orch.wait(single, 10).status is TaskStatus.COMPLETED
        steps = [step(f"s{i}", dependencies=[f"s{i - 1}"] if i else []) for i in range(20)]
        steps.append(
            {
                **step("each", action="echo"),
                "parameters": {"message": "{{item}}"},
                "for_each": list(range(20)),
            }
        )
        manager.create_workflow({"name": "big", "steps": steps})
        run = manager.execute_workflow("big", timeout=30)
        assert run.status is WorkflowStatus.COMPLETED, run.error
        assert run.steps["s19"].status is TaskStatus.COMPLETED and run.steps["each"].output == list(range(20))
        record = orch.get_task(single)
        assert (record.name, record.result) == ("mine", 1)
        assert [t.task_id for t in orch.list_tasks()] == [single]  # none of the run's 40 tasks is kept
        stats = orch.get_execution_stats()
        assert stats["completed_total"] == 41 and stats["records_kept"] == 1
    finally:
        orch.shutdown(wait=True, cancel_pending=True, timeout=10)
