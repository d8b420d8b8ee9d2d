"""ParallelExecutor over the real scheduler: parallelism, dependencies, failures, timeouts, validation."""

from __future__ import annotations

import inspect
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from codomyrmex_orchestration.core.executor import ExecutionResult, ParallelExecutor
from codomyrmex_orchestration.core.models import TaskStatus
from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
from codomyrmex_orchestration.errors import CycleDetectedError, InvalidInputError

WAIT = 10.0


def test_independent_tasks_run_in_parallel() -> None:
    a_ready, b_ready = threading.Event(), threading.Event()

    def a() -> str:
        a_ready.set()
        assert b_ready.wait(WAIT), "b never ran alongside a"
        return "a"

    def b() -> str:
        b_ready.set()
        assert a_ready.wait(WAIT), "a never ran alongside b"
        return "b"

    with ParallelExecutor(max_workers=2, timeout=WAIT) as executor:
        results = executor.execute_tasks({"a": a, "b": b})
    assert {name: r.result for name, r in results.items()} == {"a": "a", "b": "b"}
    assert all(r.success and r.status is TaskStatus.COMPLETED for r in results.values())


def test_dependents_of_a_failed_task_do_not_run() -> None:
    ran: list[str] = []

    def boom() -> None:
        raise ValueError("bad input")

    def child() -> None:
        ran.append("child")

    def independent() -> str:
        ran.append("independent")
        return "fine"

    with ParallelExecutor(max_workers=2) as executor:
        results = executor.execute_tasks(
            {"boom": boom, "child": child, "grandchild": child, "independent": independent},
            dependencies={"child": ["boom"], "grandchild": ["child"]},
        )
    assert ran == ["independent"]
    assert results["boom"].status is TaskStatus.FAILED and results["boom"].error == "bad input"
    assert results["boom"].error_type == "ValueError" and not results["boom"].success
    assert results["child"].status is TaskStatus.SKIPPED and "boom" in (results["child"].error or "")
    assert results["grandchild"].status is TaskStatus.SKIPPED
    assert results["independent"].success and results["independent"].result == "fine"


def test_dependencies_order_execution() -> None:
    order: list[str] = []
    with ParallelExecutor(max_workers=4) as executor:
        results = executor.execute_tasks(
            {name: (lambda n=name: order.append(n)) for name in ("c", "b", "a")},
            dependencies={"c": ["b"], "b": ["a"]},
        )
    assert order == ["a", "b", "c"]
    assert all(r.success for r in results.values())


def test_the_overall_timeout_stops_waiting_and_reports_unfinished_tasks_as_timed_out() -> None:
    release = threading.Event()

    def stuck() -> str:
        release.wait(WAIT)
        return "late"

    start = time.monotonic()
    with ParallelExecutor(max_workers=2, timeout=0.2) as executor:
        results = executor.execute_tasks({"stuck": stuck, "quick": lambda: 1}, {})
        release.set()
    assert time.monotonic() - start < 5
    assert results["quick"].success
    assert results["stuck"].status is TaskStatus.TIMED_OUT and not results["stuck"].success
    assert "0.2" in (results["stuck"].error or "")


def test_a_task_stopped_by_the_timeout_and_its_dependent_tell_the_same_story() -> None:
    """The task was reported TIMED_OUT while its dependent said it "ended cancelled", naming it by a
    scheduler id first."""
    release = threading.Event()
    try:
        with ParallelExecutor(max_workers=2, timeout=0.2) as executor:
            results = executor.execute_tasks(
                {"slow": lambda: release.wait(WAIT), "after": lambda: 4}, {"after": ["slow"]}
            )
            records = {r.name: r for r in executor.orchestrator.list_tasks()}
    finally:
        release.set()
    slow, after = results["slow"], results["after"]
    assert (slow.status, slow.error_type) == (TaskStatus.TIMED_OUT, "StepTimeoutError")
    assert slow.error == "step 'slow' timed out: the executor's timeout of 0.2 s expired"
    assert records["slow"].status is TaskStatus.TIMED_OUT  # the scheduler's record says the same
    assert (after.status, after.error_type) == (TaskStatus.SKIPPED, "DependencyFailed")
    assert re.fullmatch(
        r"step 'after' was skipped: its dependency 'slow' \(task t-\w+-\d+\) ended timed_out",
        after.error or "",
    ), after.error


def test_leaving_the_block_does_not_wait_for_the_calls_the_timeout_gave_up_on() -> None:
    """The executor's exit shut its scheduler down with the default grace, so it waited 2 s more for a
    call it had already reported TIMED_OUT (and that, taking no context, could never notice)."""
    release = threading.Event()
    try:
        with ParallelExecutor(max_workers=1, timeout=0.2) as executor:
            results = executor.execute_tasks({"deaf": lambda: release.wait(WAIT)})
            returned = time.monotonic()
        exited = time.monotonic()
    finally:
        release.set()
    assert results["deaf"].status is TaskStatus.TIMED_OUT
    assert exited - returned < 1.0, f"the block's exit took {exited - returned:.2f} s"


def test_a_task_group_list_gives_results_in_order() -> None:
    with ParallelExecutor(max_workers=3) as executor:
        results = executor.execute_task_group([lambda i=i: i * i for i in range(5)])
        as_dict = executor.execute_task_group({"x": lambda: "x"})
    assert [r.result for r in results] == [0, 1, 4, 9, 16]
    assert [r.task_name for r in results] == [f"task_{i}" for i in range(5)]
    assert as_dict["x"].result == "x"
    assert all(r.execution_time == r.duration >= 0 for r in results)


def test_an_unknown_dependency_name_is_invalid_input() -> None:
    with ParallelExecutor(max_workers=1) as executor, pytest.raises(InvalidInputError, match="nope"):
        executor.execute_tasks({"a": lambda: 1}, {"a": ["nope"]})


def test_a_task_name_that_is_not_a_string_is_refused_naming_tasks_and_the_key() -> None:
    start = time.monotonic()
    with ParallelExecutor(max_workers=2, timeout=3) as executor:
        with pytest.raises(InvalidInputError, match=r"^tasks: task names must be strings, got the key 1$"):
            executor.execute_tasks({1: lambda: "one", 2: lambda: "two"})  # type: ignore[dict-item]  # on purpose
        assert executor.execute_tasks({"ok": lambda: "fine"})["ok"].result == "fine"
        assert executor.orchestrator.health()["workers_alive"] >= 1
    assert time.monotonic() - start < 3


@pytest.mark.parametrize(
    ("tasks", "dependencies", "field"),
    [
        (None, None, "tasks"),
        ([lambda: 1], None, "tasks"),
        ({"a": lambda: 1}, ["a"], "dependencies"),
        ({"a": lambda: 1}, {"a": None}, "dependencies.a"),
        ({"a": lambda: 1, "b": lambda: 2, "c": lambda: 3}, {"a": "bc"}, "dependencies.a"),
    ],
)
def test_tasks_and_dependencies_of_the_wrong_shape_are_refused_naming_the_key(
    tasks: Any, dependencies: Any, field: str
) -> None:
    with ParallelExecutor(max_workers=1) as executor:
        with pytest.raises(InvalidInputError, match=rf"^{re.escape(field)}: "):
            executor.execute_tasks(tasks, dependencies)
        assert executor.orchestrator.get_execution_stats()["submitted_total"] == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_workers": "2"}, "max_workers"),
        ({"timeout": "soon"}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_bad_executor_settings_are_refused_naming_them(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInputError, match=rf"^{field}: "):
        ParallelExecutor(**kwargs)


def test_a_dependency_cycle_is_reported_with_its_path() -> None:
    with ParallelExecutor(max_workers=1) as executor, pytest.raises(CycleDetectedError) as info:
        executor.execute_tasks({"a": lambda: 1, "b": lambda: 2, "c": lambda: 3}, {"a": ["b"], "b": ["a"]})
    assert info.value.cycle[0] == info.value.cycle[-1]
    assert set(info.value.cycle) == {"a", "b"}


def test_an_executor_given_a_scheduler_uses_it_and_leaves_it_running() -> None:
    with TaskOrchestrator(2, name="shared") as orch:
        with ParallelExecutor(orchestrator=orch) as executor:
            results = executor.execute_task_group([lambda: "via shared"])
        assert results == [
            ExecutionResult(
                task_name="task_0",
                success=True,
                result="via shared",
                status=TaskStatus.COMPLETED,
                duration=results[0].duration,
            )
        ]
        assert orch.health()["accepting"]
        assert orch.get_execution_stats()["completed_total"] == 1


def test_an_executor_shuts_its_own_scheduler_down_on_exit() -> None:
    with ParallelExecutor(max_workers=2) as executor:
        executor.execute_task_group([lambda: None, lambda: None])
    assert not executor.orchestrator.health()["accepting"]
    assert not [t for t in threading.enumerate() if t.name.startswith("parallel-executor-")]


def test_the_engine_guide_states_the_executors_real_defaults() -> None:
    """ENGINE.md showed timeout=None while the default is 300 s (None means no limit)."""
    guide = (Path(__file__).parents[2] / "docs" / "ENGINE.md").read_text(encoding="utf-8")
    shown = re.search(r"`ParallelExecutor\(([^)]*)\)`", guide)
    assert shown is not None, "ENGINE.md no longer shows the ParallelExecutor signature"
    documented = dict(part.strip().split("=") for part in shown.group(1).split(","))
    real = {name: repr(p.default) for name, p in inspect.signature(ParallelExecutor).parameters.items()}
    assert documented == real
