"""WorkflowManager: definitions, config loading and runs through the real scheduler and actions."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from codomyrmex_orchestration.core._run_owners import Claim, RunOwnership, owner_of
from codomyrmex_orchestration.core.actions import (
    ActionContext,
    ActionDefinition,
    ActionRegistry,
    create_registry,
)
from codomyrmex_orchestration.core.models import RunRecord, TaskStatus, WorkflowStatus
from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
from codomyrmex_orchestration.core.store import MemoryStore, SqliteStore
from codomyrmex_orchestration.core.workflows import WorkflowManager
from codomyrmex_orchestration.errors import (
    AlreadyExistsError,
    CycleDetectedError,
    DAGValidationError,
    InvalidInputError,
    InvalidStateError,
    LimitExceededError,
    WorkflowNotFoundError,
    WorkflowRefusedError,
)
from codomyrmex_orchestration.samples import SAMPLES_DIR, sample_names
from tests.helpers.failing_actions import register_fails_once

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def registry() -> ActionRegistry:
    return create_registry(load_plugins=False)


@pytest.fixture
def orchestrator(registry: ActionRegistry, make_backend: Callable[..., Any]) -> Iterator[TaskOrchestrator]:
    orch = TaskOrchestrator(4, registry=registry, backend=make_backend())
    yield orch
    orch.shutdown(wait=True, cancel_pending=True, timeout=10)


@pytest.fixture
def manager(orchestrator: TaskOrchestrator, registry: ActionRegistry) -> WorkflowManager:
    return WorkflowManager(orchestrator=orchestrator, registry=registry, config_dir=None)


def step(name: str, module: str = "core", action: str = "set", **kw: Any) -> dict[str, Any]:
    return {"name": name, "module": module, "action": action, **kw}


def test_outputs_flow_through_templates_keeping_their_types(manager: WorkflowManager) -> None:
    manager.create_workflow(
        "flow",
        [
            step("a", parameters={"items": [1, 2, 3], "meta": {"k": "v"}, "n": 7}),
            step(
                "b",
                parameters={
                    "items": "{{steps.a.output.items}}",
                    "n": "{{a.output.n}}",
                    "text": "n={{steps.a.output.n}} k={{steps.a.output.meta.k}}",
                },
            ),
        ],
    )
    record = manager.execute_workflow("flow", timeout=10)
    assert record.status is WorkflowStatus.COMPLETED
    assert record.steps["b"].output == {"items": [1, 2, 3], "n": 7, "text": "n=7 k=v"}


def test_failure_skips_dependents_completes_independent_branch_and_fails_the_run(
    manager: WorkflowManager,
) -> None:
    manager.create_workflow(
        "branches",
        [
            step("bad", action="fail", parameters={"message": "disk on fire"}),
            step("after_bad", dependencies=["bad"]),
            step("after_after", dependencies=["after_bad"]),
            step("good", parameters={"ok": True}),
            step("after_good", dependencies=["good"]),
        ],
    )
    record = manager.execute_workflow("branches", timeout=10)
    assert record.status is WorkflowStatus.FAILED
    assert record.failed_steps == ["bad"]
    assert record.error is not None and "bad" in record.error and "disk on fire" in record.error
    assert record.steps["after_bad"].status is TaskStatus.SKIPPED
    assert record.steps["after_after"].status is TaskStatus.SKIPPED
    assert record.steps["good"].status is TaskStatus.COMPLETED
    assert record.steps["after_good"].status is TaskStatus.COMPLETED
    assert record.steps["bad"].error is not None and record.steps["bad"].error.type == "StepFailedError"


def test_non_required_failure_lets_the_run_succeed_and_skips_only_steps_using_its_output(
    manager: WorkflowManager,
) -> None:
    manager.create_workflow(
        "optional",
        [
            step("maybe", action="fail", required=False),
            step("independent", dependencies=["maybe"], parameters={"x": 1}),
            step("uses_it", parameters={"x": "{{steps.maybe.output}}"}),
            step("checks_status", parameters={"s": "{{steps.maybe.status}}"}),
        ],
    )
    record = manager.execute_workflow("optional", timeout=10)
    assert record.status is WorkflowStatus.COMPLETED
    assert record.steps["maybe"].status is TaskStatus.FAILED
    assert record.steps["independent"].status is TaskStatus.COMPLETED
    assert record.steps["uses_it"].status is TaskStatus.SKIPPED
    assert record.steps["checks_status"].output == {"s": "failed"}


def test_run_if_reading_a_skipped_steps_output_is_evaluated_and_a_guard_decides(
    manager: WorkflowManager,
) -> None:
    # The condition runs after `s` (an inferred edge) and reads its output as null; only the parameters
    # that use the output skip the step, and only an operand that reads into the null fails it.
    manager.create_workflow(
        "guarded",
        [
            step("s", action="echo", run_if="1 == 2", parameters={"message": {"n": 5}}),
            step(
                "fallback",
                action="echo",
                run_if="steps.s.status == 'skipped' or steps.s.output.n > 1",
                parameters={"message": "fb"},
            ),
            step("is_null", action="echo", run_if="steps.s.output == null", parameters={"message": 1}),
            step(
                "guarded_off",
                action="echo",
                run_if="steps.s.status == 'completed' and steps.s.output.n > 1",
                parameters={"message": 1},
            ),
            step(
                "unguarded",
                action="echo",
                run_if="steps.s.output.n > 1",
                required=False,
                parameters={"message": 1},
            ),
            step("uses_it", action="echo", parameters={"message": "{{steps.s.output.n}}"}),
        ],
    )
    record = manager.execute_workflow("guarded", timeout=10)
    steps = record.steps
    assert steps["s"].status is TaskStatus.SKIPPED
    assert (steps["fallback"].output, steps["is_null"].output) == ("fb", 1)
    assert manager.describe_workflow("guarded").inferred_dependencies["fallback"] == ["s"]
    assert steps["guarded_off"].status is TaskStatus.SKIPPED
    assert (
        steps["guarded_off"].skipped_reason
        == "run_if is false: steps.s.status == 'completed' and steps.s.output.n > 1"
    )
    assert steps["unguarded"].status is TaskStatus.FAILED and steps["unguarded"].error is not None
    assert "steps.s.output is null (the step is skipped)" in steps["unguarded"].error.message
    assert steps["uses_it"].status is TaskStatus.SKIPPED
    assert steps["uses_it"].skipped_reason == "uses the output of 's', which did not complete"
    assert record.status is WorkflowStatus.COMPLETED  # the failing step is not required


def test_run_if_false_skips_the_step_and_true_runs_it(manager: WorkflowManager) -> None:
    manager.create_workflow(
        "cond",
        [
            step("count", parameters={"n": 5}),
            step("big", action="echo", run_if="{{steps.count.output.n}} > 10", parameters={"message": "big"}),
            step(
                "small",
                action="echo",
                run_if="steps.count.output.n <= 10 and not false",
                parameters={"message": "small"},
            ),
        ],
    )
    record = manager.execute_workflow("cond", timeout=10)
    assert record.status is WorkflowStatus.COMPLETED
    assert record.steps["big"].status is TaskStatus.SKIPPED
    assert record.steps["small"].output == "small"


def test_parameters_default_and_override_and_missing_ones_are_named(manager: WorkflowManager) -> None:
    manager.create_workflow(
        {
            "name": "p",
            "parameters": {"who": "world"},
            "steps": [step("s", action="echo", parameters={"message": "hi {{params.who}} {{params.n}}"})],
        }
    )
    with pytest.raises(InvalidInputError, match=r"parameters\.n"):
        manager.execute_workflow("p")
    record = manager.execute_workflow("p", {"n": 3}, timeout=10)
    assert record.steps["s"].output == "hi world 3"


def test_a_parameter_name_the_workflow_neither_declares_nor_uses_is_refused_before_the_run_is_recorded(
    manager: WorkflowManager,
) -> None:
    manager.create_workflow(
        {
            "name": "rates",
            "parameters": {"error_rate": 0.07, "spare": 1},  # declared, used by no step: accepted
            "steps": [
                step("s", action="echo", parameters={"message": "{{params.error_rate}}"}),
                step("t", action="echo", parameters={"message": 1}, run_if="params.threshold > 0"),
            ],
        }
    )
    with pytest.raises(InvalidInputError) as info:
        manager.execute_workflow("rates", {"eror_rate": 0.9, "threshold": 1})
    assert info.value.field == "parameters.eror_rate"
    assert "neither declares nor uses parameter 'eror_rate' (did you mean 'error_rate'?)" in info.value.reason
    assert "accepted parameters: error_rate, spare, threshold" in info.value.reason
    with pytest.raises(InvalidInputError, match=r"parameters 'x', 'y'; accepted"):
        manager.start_workflow("rates", {"x": 1, "y": 2, "threshold": 1})
    assert manager.list_runs() == []  # nothing was recorded
    run = manager.execute_workflow("rates", {"error_rate": 0.5, "spare": 2, "threshold": 1}, timeout=10)
    assert run.status is WorkflowStatus.COMPLETED and run.steps["s"].output == 0.5


def test_a_sub_workflow_given_a_parameter_it_does_not_take_fails_its_step_naming_it(
    manager: WorkflowManager,
) -> None:
    manager.create_workflow("child", [step("c", action="echo", parameters={"message": "{{params.x}}"})])
    call = {"workflow": "child", "parameters": {"x": 1, "xx": 2}}
    manager.create_workflow("parent", [step("sub", module="workflow", action="run", parameters=call)])
    record = manager.execute_workflow("parent", timeout=10)
    assert record.status is WorkflowStatus.FAILED
    error = record.steps["sub"].error
    assert error is not None and "parameters.xx: workflow 'child' neither declares nor uses" in error.message
    assert [r.workflow_name for r in manager.list_runs()] == ["parent"]  # no child run was recorded


def test_retries_are_counted_in_attempts(manager: WorkflowManager, registry: ActionRegistry) -> None:
    calls: list[int] = []

    def flaky(params: dict[str, Any], ctx: ActionContext) -> int:
        calls.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RuntimeError(f"attempt {ctx.attempt} fails")
        return ctx.attempt

    registry.register(ActionDefinition("test", "flaky", flaky))
    manager.create_workflow(
        "retry", [step("f", module="test", action="flaky", max_retries=3, retry_delay=0.01)]
    )
    record = manager.execute_workflow("retry", timeout=10)
    assert record.status is WorkflowStatus.COMPLETED
    assert record.steps["f"].attempts == 3
    assert calls == [1, 2, 3]


def test_max_parallel_bounds_concurrent_steps(manager: WorkflowManager, registry: ActionRegistry) -> None:
    lock = threading.Lock()
    running = [0]
    peak = [0]

    def track(params: dict[str, Any], ctx: ActionContext) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        ctx.wait(0.02)
        with lock:
            running[0] -= 1

    registry.register(ActionDefinition("test", "track", track))
    manager.create_workflow(
        {
            "name": "mp",
            "max_parallel": 2,
            "steps": [step(f"s{i}", module="test", action="track") for i in range(8)],
        }
    )
    record = manager.execute_workflow("mp", timeout=10)
    assert record.status is WorkflowStatus.COMPLETED
    assert peak[0] <= 2


def test_cancel_run_stops_running_and_pending_steps(manager: WorkflowManager) -> None:
    manager.create_workflow(
        "long",
        [step("sleep", action="sleep", parameters={"seconds": 30}), step("after", dependencies=["sleep"])],
    )
    started = threading.Event()
    record = manager.execute_workflow(
        "long", wait=False, on_step=lambda run, s: started.set() if s.status is TaskStatus.RUNNING else None
    )
    assert started.wait(5)
    final = manager.cancel_run(record.run_id)
    assert final.status is WorkflowStatus.CANCELLED
    assert final.steps["sleep"].status is TaskStatus.CANCELLED
    assert final.steps["after"].status in {TaskStatus.CANCELLED, TaskStatus.SKIPPED}
    with pytest.raises(InvalidStateError):
        manager.cancel_run(record.run_id)


def test_a_cancel_arriving_after_every_step_completed_leaves_the_run_completed(
    manager: WorkflowManager,
) -> None:
    # Lined up: the last step has completed (on_step hears it) and the run is not final yet; another
    # thread cancels it then. There is nothing left to cancel: the run must end COMPLETED, not
    # CANCELLED with every step completed.
    manager.create_workflow("one", [step("a", action="echo", parameters={"message": "x"})])
    asked: list[RunRecord] = []

    def cancel_now(run: RunRecord, result: Any) -> None:
        if result.status is TaskStatus.COMPLETED:
            racer = threading.Thread(target=lambda: asked.append(manager.request_cancel(run.run_id)))
            racer.start()
            racer.join(10)

    final = manager.execute_workflow("one", on_step=cancel_now, timeout=10)
    assert [r.status for r in asked] == [WorkflowStatus.RUNNING]  # the cancel met the run still going
    assert final.status is WorkflowStatus.COMPLETED, final.error
    assert final.steps["a"].status is TaskStatus.COMPLETED
    assert manager.get_run(final.run_id).status is WorkflowStatus.COMPLETED


class _PausingStore(MemoryStore):
    """A real MemoryStore whose ``sub_runs`` (read by a resume of a parent run alone, after the resume
    has claimed the run and before it starts it) says so and waits for ``go``."""

    def __init__(self) -> None:
        super().__init__()
        self.resuming, self.go = threading.Event(), threading.Event()

    def sub_runs(self, parent_run_id: str) -> list[RunRecord]:
        self.resuming.set()
        self.go.wait(10)
        return super().sub_runs(parent_run_id)


def test_a_cancel_arriving_while_a_resume_starts_the_run_cancels_the_resumed_run(
    orchestrator: TaskOrchestrator, registry: ActionRegistry
) -> None:
    # Lined up: a resume has claimed the cancelled run and not started it yet; a cancel arrives then.
    # Before, the cancel read the old record and answered "run is cancelled; only a running run can be
    # cancelled" while the resume went on to run the workflow to its end.
    store = _PausingStore()
    manager = WorkflowManager(orchestrator=orchestrator, registry=registry, store=store, config_dir=None)
    manager.create_workflow("sleeper", [step("z", action="sleep", parameters={"seconds": 30})])
    manager.create_workflow(
        "outer", [step("sub", module="workflow", action="run", parameters={"workflow": "sleeper"})]
    )
    started = threading.Event()
    record = manager.execute_workflow(
        "outer", wait=False, on_step=lambda run, s: started.set() if s.status is TaskStatus.RUNNING else None
    )
    assert started.wait(10)
    assert manager.cancel_run(record.run_id).status is WorkflowStatus.CANCELLED
    resumed: list[RunRecord] = []
    resumer = threading.Thread(target=lambda: resumed.append(manager.resume_run(record.run_id, timeout=20)))
    resumer.start()
    try:
        assert store.resuming.wait(10)
        store.go.set()  # the resume goes on as the cancel arrives
        answer = manager.cancel_run(record.run_id)
    finally:
        store.go.set()
        resumer.join(30)
    assert answer.status is WorkflowStatus.CANCELLED, answer.error
    assert [r.status for r in resumed] == [WorkflowStatus.CANCELLED]
    assert manager.get_run(record.run_id).status is WorkflowStatus.CANCELLED


def test_wait_timeout_returns_the_running_record_and_the_run_goes_on(manager: WorkflowManager) -> None:
    manager.create_workflow("slow", [step("gate", action="sleep", parameters={"seconds": 0.3})])
    record = manager.execute_workflow("slow", timeout=0.01)
    assert record.status is WorkflowStatus.RUNNING
    final = manager.wait_run(record.run_id, timeout=10)
    assert final.status is WorkflowStatus.COMPLETED
    assert manager.get_run(record.run_id).status is WorkflowStatus.COMPLETED


def test_sub_workflow_runs_as_a_child_and_returns_outputs(manager: WorkflowManager) -> None:
    manager.create_workflow("child", [step("c", action="echo", parameters={"message": "{{params.x}}"})])
    manager.create_workflow(
        "parent",
        [
            step(
                "sub",
                module="workflow",
                action="run",
                parameters={"workflow": "child", "parameters": {"x": 41}},
            )
        ],
    )
    record = manager.execute_workflow("parent", timeout=10)
    assert record.status is WorkflowStatus.COMPLETED
    output = record.steps["sub"].output
    assert output["outputs"] == {"c": 41}
    assert manager.get_run(output["run_id"]).parent_run_id == record.run_id


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "sqlite"])
def test_resuming_a_failed_parent_resumes_each_item_s_sub_run_in_place(
    orchestrator: TaskOrchestrator, registry: ActionRegistry, tmp_path: Path, durable: bool
) -> None:
    store = SqliteStore(tmp_path / "state.db") if durable else MemoryStore()
    manager = WorkflowManager(orchestrator=orchestrator, registry=registry, store=store, config_dir=None)
    marks, marker = tmp_path / "marks", tmp_path / "fixed"
    marks.mkdir()
    record = {"function": "tests.helpers.durable_steps:record", "args": [str(marks), "prep", 0]}
    manager.create_workflow(
        "checked",
        [
            step("prep", module="python", action="call", parameters=record),
            step("check", module="shell", action="run", dependencies=["prep"],
                 parameters={"command": ["test", "-f", str(marker)]}),
            step("echo", action="echo", dependencies=["check"], parameters={"message": "{{params.n}}"}),
        ],
        parameters={"n": 0},
    )  # fmt: skip
    manager.create_workflow(
        "fan",
        [
            step("subs", module="workflow", action="run", for_each=[1, 2],
                 parameters={"workflow": "checked", "parameters": {"n": "{{item}}"}}),
        ],
    )  # fmt: skip
    try:
        failed = manager.execute_workflow("fan", timeout=30)
        assert failed.status is WorkflowStatus.FAILED
        children = {r.parameters["n"]: r.run_id for r in manager.list_runs(workflow_name="checked")}
        assert set(children) == {1, 2}

        marker.touch()
        final = manager.resume_run(failed.run_id, timeout=30)
        assert final.status is WorkflowStatus.COMPLETED, final.error
        outputs = final.steps["subs"].output
        # Each item took over its own sub-run: same ids, its own parameters, `prep` not run again.
        assert [o["run_id"] for o in outputs] == [children[1], children[2]]
        assert [o["outputs"]["echo"] for o in outputs] == [1, 2]
        assert len(list(marks.iterdir())) == 2
        runs = manager.list_runs(workflow_name="checked")
        assert sorted(r.run_id for r in runs) == sorted(children.values())
        assert {r.status for r in runs} == {WorkflowStatus.COMPLETED}
        assert {r.parameters["n"]: r.parent_step for r in runs} == {1: "subs[0]", 2: "subs[1]"}
    finally:
        store.close()


def test_duplicate_names_are_refused_unless_overwrite(manager: WorkflowManager) -> None:
    manager.create_workflow("dup", [step("a")])
    with pytest.raises(AlreadyExistsError, match="overwrite"):
        manager.create_workflow("dup", [step("a")])
    manager.create_workflow("dup", [step("b")], overwrite=True)
    assert [s.name for s in manager.get_workflow("dup").steps] == ["b"]


def test_invalid_workflows_are_rejected_with_every_problem(manager: WorkflowManager) -> None:
    with pytest.raises(CycleDetectedError) as info:
        manager.create_workflow(
            "bad",
            [
                step("a", dependencies=["b"]),
                step("b", dependencies=["a"]),
                step("c", module="nope", action="x"),
            ],
        )
    assert "nope.x" in str(info.value)
    with pytest.raises(WorkflowNotFoundError):
        manager.execute_workflow("bad")


def test_validation_lists_every_schema_problem_with_the_problems_of_the_steps_that_parse(
    manager: WorkflowManager,
) -> None:
    steps = [
        step("a", action="echo", paramters={"message": 1}, timeout=-1),  # two schema problems
        step(
            "b",
            action="echo",
            parameters={"message": "{{steps.zz.output}} {{a.output}}"},
            dependencies=["b", "a"],
        ),
        step("c", action="nope"),
    ]
    with pytest.raises(DAGValidationError) as info:
        manager.validate_workflow({"name": "v", "steps": steps})
    problems = info.value.problems
    assert problems[:2] == ["steps.0.timeout: Input should be greater than 0", problems[1]]
    assert problems[1].startswith("unknown field 'steps.0.paramters' (did you mean 'parameters'?)")
    assert problems[2:4] == [
        "step 'b' depends on itself",
        "step 'b' references unknown step 'zz' in '{{steps.zz.output}}'; known steps: 'b', 'c', 'a'",
    ]  # and 'b' using step 'a', which did not parse, is no second problem
    assert problems[4].startswith("step 'c': action: unknown action core.nope; known actions: ")
    assert len(problems) == 5
    assert manager.list_workflows() == []


def test_a_workflow_that_runs_itself_directly_or_through_registered_ones_is_invalid_naming_the_path(
    manager: WorkflowManager,
) -> None:
    def run(name: str, target: str, **kw: Any) -> dict[str, Any]:
        return step(name, module="workflow", action="run", parameters={"workflow": target}, **kw)

    with pytest.raises(DAGValidationError) as info:
        manager.validate_workflow({"name": "loop", "steps": [run("a", "loop")]})
    assert info.value.problems == [
        "step 'a' runs workflow 'loop', itself, with no run_if to stop it: every run would start sub-runs "
        "of it down to the nesting limit (CODOMYRMEX_MAX_SUBWORKFLOW_DEPTH) and fail there; run another "
        "workflow, or give the step a run_if that ends the recursion"
    ]
    manager.create_workflow("other", [run("x", "third")])  # 'third' and 'loop' need not exist yet
    manager.create_workflow("third", [run("y", "loop")])
    with pytest.raises(DAGValidationError) as info:
        manager.create_workflow("loop", [run("a", "other"), step("b")])
    (problem,) = info.value.problems
    assert problem.startswith("step 'a' runs workflow 'other', which runs 'loop' again: ")
    assert "loop -> other -> third -> loop; every run would start sub-runs" in problem
    # A guard that can end the recursion, or a name chosen at run time, is the author's to bound.
    guarded = run("a", "other", run_if="{{params.more}}")
    assert manager.validate_workflow({"name": "loop", "steps": [guarded]}).steps_count == 1
    chosen = step("a", module="workflow", action="run", parameters={"workflow": "{{params.w}}"})
    manager.create_workflow({"name": "loop", "steps": [chosen], "parameters": {"w": "loop"}})


def test_config_dir_loads_good_files_and_reports_bad_ones(
    tmp_path: Path, orchestrator: TaskOrchestrator, registry: ActionRegistry
) -> None:
    (tmp_path / "good.json").write_text(json.dumps({"name": "good", "steps": [step("a")]}))
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "cyclic.json").write_text(
        json.dumps({"name": "cyc", "steps": [step("a", dependencies=["a"])]})
    )
    manager = WorkflowManager(orchestrator=orchestrator, registry=registry, config_dir=tmp_path)
    assert [w.name for w in manager.list_workflows()] == ["good"]
    assert manager.list_workflows()[0].source == "config"
    reasons = dict(manager.load_errors)
    assert set(reasons) == {str(tmp_path / "broken.json"), str(tmp_path / "cyclic.json")}
    assert "a" in reasons[str(tmp_path / "cyclic.json")]


@pytest.mark.parametrize("allow_code_execution", [True, False])
def test_shipped_sample_workflows_run_to_completion_with_or_without_code_execution(
    allow_code_execution: bool, orchestrator: TaskOrchestrator
) -> None:
    registry = create_registry(allow_code_execution=allow_code_execution, load_plugins=False)
    manager = WorkflowManager(
        orchestrator=orchestrator, registry=registry, config_dir=None, sample_dir=SAMPLES_DIR
    )
    assert manager.load_errors == [] and manager.refused_workflows() == {}
    assert {w.name for w in manager.list_workflows()} == set(sample_names())
    assert {w.source for w in manager.list_workflows()} == {"sample"}
    fan = manager.execute_workflow("fan_out_join", timeout=60)
    assert fan.status is WorkflowStatus.COMPLETED, fan.error
    assert fan.steps["alert"].status is TaskStatus.COMPLETED
    assert fan.steps["all_clear"].status is TaskStatus.SKIPPED
    report = manager.execute_workflow("service_report", timeout=60)
    assert report.status is WorkflowStatus.COMPLETED, report.error
    assert report.steps["report"].output["services"] == [
        "checkout: p95 180 ms, error rate 0.07",
        "search: p95 180 ms, error rate 0.01",
    ]


def test_a_workflow_the_policy_refuses_is_listed_with_its_reason_and_refused_by_name(
    orchestrator: TaskOrchestrator, tmp_path: Path
) -> None:
    (tmp_path / "needs_code.json").write_text(
        json.dumps(
            {
                "name": "needs_code",
                "steps": [
                    step("py", module="python", action="call", parameters={"function": "platform:system"})
                ],
            }
        )
    )
    registry = create_registry(allow_code_execution=False, load_plugins=False)
    manager = WorkflowManager(orchestrator=orchestrator, registry=registry, config_dir=tmp_path)
    assert manager.load_errors == []
    (info,) = manager.list_workflows()
    assert info.name == "needs_code" and info.refused is not None
    assert "CODOMYRMEX_ALLOW_SHELL" in info.refused
    assert manager.stats()["refused_by_policy"] == {"needs_code": info.refused}
    with pytest.raises(WorkflowRefusedError, match=r"^workflow 'needs_code' is refused by policy: step 'py'"):
        manager.execute_workflow("needs_code", timeout=10)
    assert manager.get_workflow("needs_code").name == "needs_code"
    assert manager.delete_workflow("needs_code") and manager.list_workflows() == []


def test_invalid_spec_errors_name_the_field(manager: WorkflowManager) -> None:
    with pytest.raises(InvalidInputError, match=r"steps\.0\.timeout"):
        manager.create_workflow({"name": "t", "steps": [step("a", timeout=-1)]})
    with pytest.raises(DAGValidationError, match="unknown"):
        manager.create_workflow({"name": "t", "steps": [step("a", dependencies=["ghost"])]})


def test_nested_sub_workflows_do_not_deadlock_a_one_worker_pool(
    registry: ActionRegistry, make_backend: Callable[..., Any]
) -> None:
    orch = TaskOrchestrator(1, registry=registry, backend=make_backend())
    try:
        manager = WorkflowManager(orchestrator=orch, registry=registry, config_dir=None)
        manager.create_workflow("leaf", [step("x", action="echo", parameters={"message": 1})])
        manager.create_workflow(
            "middle", [step("m", module="workflow", action="run", parameters={"workflow": "leaf"})]
        )
        manager.create_workflow(
            "top",
            [
                step(f"t{i}", module="workflow", action="run", parameters={"workflow": "middle"})
                for i in range(3)
            ],
        )
        record = manager.execute_workflow("top", timeout=20)
        assert record.status is WorkflowStatus.COMPLETED, record.error
        assert orch.get_execution_stats()["blocked_threads"] == 0
    finally:
        orch.shutdown(wait=True, timeout=10)


def test_cancelling_a_parent_run_cancels_its_running_sub_workflow(manager: WorkflowManager) -> None:
    manager.create_workflow("sleeper", [step("z", action="sleep", parameters={"seconds": 30})])
    manager.create_workflow(
        "outer", [step("sub", module="workflow", action="run", parameters={"workflow": "sleeper"})]
    )
    child_started = threading.Event()
    manager.add_listener(
        lambda event, payload: (
            child_started.set() if event == "step.started" and payload["step"] == "z" else None
        )
    )
    record = manager.execute_workflow("outer", wait=False)
    assert child_started.wait(5)
    final = manager.cancel_run(record.run_id)
    assert final.status is WorkflowStatus.CANCELLED
    children = [r for r in manager.list_runs(workflow_name="sleeper") if r.parent_run_id == record.run_id]
    assert len(children) == 1
    child = manager.wait_run(children[0].run_id, timeout=5)
    assert child.status is WorkflowStatus.CANCELLED


def test_a_sub_workflow_step_past_its_timeout_is_timed_out_and_its_child_hears_why(
    manager: WorkflowManager, registry: ActionRegistry
) -> None:
    # The child's step ends only when it is cancelled; the parent step's deadline is both the scheduler's
    # timer and the step's own wait, and whichever sees it first, the step is timed out (before the fix, a
    # few runs in ten ended failed with the child's "run cancelled").
    def block(params: dict[str, Any], ctx: ActionContext) -> None:
        ctx.cancel_event.wait(30)

    registry.register(ActionDefinition("test", "block", block))
    manager.create_workflow("blocker", [step("b", module="test", action="block")])
    manager.create_workflow(
        "outer",
        [step("sub", module="workflow", action="run", timeout=0.05, parameters={"workflow": "blocker"})],
    )
    for _ in range(20):
        record = manager.execute_workflow("outer", timeout=20)
        sub = record.steps["sub"]
        assert sub.status is TaskStatus.TIMED_OUT, sub.error
        assert sub.error is not None and "timed out after 0.05 s" in sub.error.message
        assert "cancelled" not in sub.error.message
        [child] = [r for r in manager.list_runs(workflow_name="blocker") if r.parent_run_id == record.run_id]
        child = manager.wait_run(child.run_id, timeout=10)
        assert child.status is WorkflowStatus.CANCELLED
        assert child.error == (
            f"run cancelled: its parent step 'sub' (run {record.run_id}) timed out after 0.05 s"
        )


def test_a_step_starts_only_once_its_parents_results_are_committed_to_disk(
    orchestrator: TaskOrchestrator, registry: ActionRegistry, tmp_path: Path
) -> None:
    # The writer would wait an hour before committing on its own: whatever a step sees on disk when it
    # starts was committed because it was about to start.
    path = tmp_path / "state.db"
    store = SqliteStore(path, flush_interval=3600)
    manager = WorkflowManager(orchestrator=orchestrator, registry=registry, store=store, config_dir=None)
    seen: dict[str, list[tuple[str, str]]] = {}

    def look(params: dict[str, Any], ctx: ActionContext) -> None:
        conn = sqlite3.connect(path)  # another connection: only committed rows
        try:
            rows = conn.execute("SELECT name, status FROM steps WHERE run_id = ?", (ctx.run_id,))
            seen[ctx.step_name] = sorted(rows.fetchall())
        finally:
            conn.close()

    registry.register(ActionDefinition("test", "look", look))
    manager.create_workflow(
        "diamond",
        [
            step("a", module="test", action="look"),
            step("b", module="test", action="look", dependencies=["a"]),
            step("c", module="test", action="look", dependencies=["a"]),
            step("d", module="test", action="look", dependencies=["b", "c"]),
        ],
    )
    try:
        record = manager.execute_workflow("diamond", timeout=10)
    finally:
        store.close()
    assert record.status is WorkflowStatus.COMPLETED
    for name, parents in {"b": ["a"], "c": ["a"], "d": ["b", "c"]}.items():
        committed = dict(seen[name])
        assert all(committed.get(p) == "completed" for p in parents), (name, seen[name])


@pytest.mark.parametrize("on_step", [False, True], ids=["lazy", "on_step"])
def test_a_step_held_back_by_max_parallel_reads_ready_then_running(
    manager: WorkflowManager, registry: ActionRegistry, on_step: bool
) -> None:
    gates = {"one": threading.Event(), "two": threading.Event()}
    entered = {"one": threading.Event(), "two": threading.Event()}

    def gate(params: dict[str, Any], ctx: ActionContext) -> str:
        entered[params["gate"]].set()
        assert gates[params["gate"]].wait(10)
        return str(params["gate"])

    registry.register(ActionDefinition("test", "gate", gate))
    manager.create_workflow(
        {
            "name": "one-at-a-time",
            "max_parallel": 1,
            "steps": [
                step("one", module="test", action="gate", parameters={"gate": "one"}),
                step("two", module="test", action="gate", parameters={"gate": "two"}),
            ],
        }
    )
    run_id = manager.execute_workflow(
        "one-at-a-time", wait=False, on_step=(lambda r, s: None) if on_step else None
    ).run_id
    try:
        assert entered["one"].wait(10)
        live = manager.get_run(run_id).steps
        assert (live["one"].status, live["two"].status) == (TaskStatus.RUNNING, TaskStatus.READY)
        gates["one"].set()
        assert entered["two"].wait(10)
        live = manager.get_run(run_id).steps
        assert live["two"].status is TaskStatus.RUNNING and live["two"].attempts == 1
    finally:
        for event in gates.values():
            event.set()
    final = manager.wait_run(run_id, 10)
    assert final.outputs() == {"one": "one", "two": "two"}


def test_start_workflow_returns_the_run_id_of_a_run_that_goes_on(
    manager: WorkflowManager, registry: ActionRegistry
) -> None:
    release = threading.Event()
    registry.register(ActionDefinition("test", "gate", lambda params, ctx: release.wait(10)))
    manager.create_workflow("gated", [step("g", module="test", action="gate")])
    run_id = manager.start_workflow("gated", session_id="s1")
    try:
        assert manager.is_active(run_id)
        live = manager.get_run(run_id)
        assert live.status is WorkflowStatus.RUNNING and live.session_id == "s1" and list(live.steps) == ["g"]
    finally:
        release.set()
    assert manager.wait_run(run_id, 10).status is WorkflowStatus.COMPLETED
    assert not manager.is_active(run_id)
    assert not manager.is_active("no-such-run")
    with pytest.raises(WorkflowNotFoundError):
        manager.start_workflow("no-such-workflow")


def test_before_record_sees_the_new_run_id_before_anything_of_the_run_is_saved_and_can_refuse_it(
    orchestrator: TaskOrchestrator, registry: ActionRegistry, tmp_path: Path
) -> None:
    store = SqliteStore(tmp_path / "state.db")
    manager = WorkflowManager(orchestrator=orchestrator, registry=registry, store=store, config_dir=None)
    manager.create_workflow("one", [step("a", parameters={"x": 1})])
    saved_before: dict[str, bool] = {}

    def look(run_id: str) -> None:
        saved_before[run_id] = store.get_run(run_id) is not None  # reads wait for pending writes

    def refuse(run_id: str) -> None:
        saved_before[run_id] = store.get_run(run_id) is not None
        raise InvalidStateError("run", run_id, "unowned", "a lock this test refuses to give")

    try:
        run_id = manager.start_workflow("one", before_record=look)
        assert manager.wait_run(run_id, 10).status is WorkflowStatus.COMPLETED
        with pytest.raises(InvalidStateError):
            manager.start_workflow("one", before_record=refuse)
        [refused] = set(saved_before) - {run_id}
        assert saved_before == {run_id: False, refused: False}
        assert manager.active_run_ids() == [] and store.get_run(refused) is None  # nothing left of it
        assert [r.run_id for r in manager.list_runs()] == [run_id]
    finally:
        store.close()


@pytest.mark.parametrize("mode", ["memory", "memory+on_step", "sqlite"])
def test_a_run_lists_every_step_in_declaration_order_live_and_final(
    orchestrator: TaskOrchestrator, registry: ActionRegistry, tmp_path: Path, mode: str
) -> None:
    # Steps enter the live record as they start or end unless a durable store or an on_step callback
    # reads it while the run goes (then every step has a placeholder from the start): either way a
    # reader sees every step, in the order the workflow declares them, not in the order they ran.
    store = SqliteStore(tmp_path / "state.db") if mode == "sqlite" else MemoryStore()
    manager = WorkflowManager(orchestrator=orchestrator, registry=registry, store=store, config_dir=None)
    entered, release = threading.Event(), threading.Event()
    seen: list[str] = []

    def hold(params: dict[str, Any], ctx: ActionContext) -> str:
        entered.set()
        assert release.wait(10)
        if params.get("fail"):
            raise RuntimeError("failed late")
        return "held"

    def fail(params: dict[str, Any], ctx: ActionContext) -> None:
        raise RuntimeError("failed early")

    registry.register(ActionDefinition("test", "hold", hold))
    registry.register(ActionDefinition("test", "fail", fail))
    manager.create_workflow(
        "ordered",
        [
            step("held", module="test", action="hold"),
            step("quick", parameters={"v": 1}),
            step("after_held", dependencies=["held"]),
            step("bad_late", module="test", action="hold", parameters={"fail": True}),
            step("after_quick", parameters={"v": "{{steps.quick.output.v}}"}),
            step("bad_early", module="test", action="fail"),
        ],
    )
    declared = ["held", "quick", "after_held", "bad_late", "after_quick", "bad_early"]
    on_step = (lambda record, result: seen.append(result.name)) if mode == "memory+on_step" else None
    # A step's event is heard once its result is in the run's record.
    ended = {name: threading.Event() for name in ("quick", "bad_early", "after_quick")}

    def heard(event: str, data: dict[str, Any]) -> None:
        if event in ("step.completed", "step.failed") and data["step"] in ended:
            ended[data["step"]].set()

    manager.add_listener(heard)
    run = manager.execute_workflow("ordered", wait=False, on_step=on_step)
    try:
        assert entered.wait(10)
        assert all(event.wait(10) for event in ended.values())
        live = manager.get_run(run.run_id)
        assert list(live.steps) == declared
        assert live.steps["quick"].status is TaskStatus.COMPLETED
        assert live.steps["after_held"].status is TaskStatus.PENDING
        assert live.steps["after_held"].name == "after_held"
        held = live.steps["held"]  # in flight: running, with its attempt and start time
        assert held.status is TaskStatus.RUNNING and held.attempts == 1 and held.started_at is not None
    finally:
        release.set()
    final = manager.wait_run(run.run_id, 10)
    assert final.status is WorkflowStatus.FAILED
    assert list(final.steps) == declared
    assert final.steps["after_quick"].output == {"v": 1}
    # Failed steps in declaration order too, though bad_early failed first.
    assert final.failed_steps == ["bad_late", "bad_early"]
    assert final.error == "failed steps: bad_late (failed late); bad_early (failed early)"
    stored = store.get_run(run.run_id)
    assert stored is not None and list(stored.steps) == declared
    if on_step is not None:
        assert set(seen) == set(declared)
    store.close()


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "sqlite"])
def test_steps_in_flight_are_saved_only_to_a_durable_store_and_always_shown_live(
    orchestrator: TaskOrchestrator, registry: ActionRegistry, tmp_path: Path, durable: bool
) -> None:
    store = SqliteStore(tmp_path / "state.db") if durable else MemoryStore()
    manager = WorkflowManager(orchestrator=orchestrator, registry=registry, store=store, config_dir=None)
    entered, release = threading.Event(), threading.Event()

    def hold(params: dict[str, Any], ctx: ActionContext) -> str:
        entered.set()
        release.wait(10)
        return "done"

    registry.register(ActionDefinition("test", "hold", hold))
    manager.create_workflow("held", [step("h", module="test", action="hold")])
    run = manager.execute_workflow("held", wait=False)
    try:
        assert entered.wait(10)
        assert manager.get_run(run.run_id).steps["h"].status is TaskStatus.RUNNING  # live, from memory
        stored = store.get_run(run.run_id)
        assert stored is not None
        # Recovery after a crash needs the in-flight step; a store that dies with the process gets the
        # steps once, when the run ends (until then the run is served from memory).
        if durable:
            assert stored.steps["h"].status is TaskStatus.RUNNING
        else:
            assert stored.status is WorkflowStatus.RUNNING and stored.steps == {}
    finally:
        release.set()
    final = manager.wait_run(run.run_id, 10)
    assert final.status is WorkflowStatus.COMPLETED
    outcome = store.get_run(run.run_id)
    assert outcome is not None and outcome.steps["h"].output == "done"
    store.close()


def test_a_listener_removing_itself_while_an_event_is_delivered_makes_no_other_listener_miss_it(
    manager: WorkflowManager,
) -> None:
    heard: list[str] = []

    def once(event: str, payload: dict[str, Any]) -> None:
        heard.append("once")
        manager.remove_listener(once)

    manager.add_listener(once)
    manager.add_listener(lambda event, payload: heard.append("second"))
    manager.add_listener(lambda event, payload: heard.append("third"))
    manager.create_workflow("heard", [step("a")])
    assert heard == ["once", "second", "third"]
    manager.create_workflow("heard_again", [step("a")])
    assert heard[3:] == ["second", "third"]


def test_stats_count_the_unfinished_steps_of_an_in_memory_run(
    manager: WorkflowManager, registry: ActionRegistry
) -> None:
    started, release = threading.Event(), threading.Event()

    def hold(params: dict[str, Any], ctx: ActionContext) -> None:
        started.set()
        assert release.wait(10)

    registry.register(ActionDefinition("test", "hold", hold))
    manager.create_workflow(
        "counted",
        [
            step("a", module="test", action="hold"),
            step("b", dependencies=["a"]),
            step("c", dependencies=["b"]),
        ],
    )
    run_id = manager.start_workflow("counted")
    assert started.wait(10)
    assert manager.stats()["active_steps_by_status"] == {"running": 1, "pending": 2}
    release.set()
    assert manager.wait_run(run_id, None).status is WorkflowStatus.COMPLETED
    assert manager.stats()["active_steps_by_status"] == {}


# None, and timeouts longer than a thread can wait (threading.TIMEOUT_MAX), all mean: no limit.
@pytest.mark.parametrize("timeout", [None, 1e10, float("inf")])
def test_timeout_none_waits_without_limit_in_execute_wait_and_resume(
    manager: WorkflowManager, registry: ActionRegistry, timeout: float | None
) -> None:
    started, release = threading.Event(), threading.Event()
    fail_first = [True]

    def gated(params: dict[str, Any], ctx: ActionContext) -> str:
        if fail_first[0]:
            fail_first[0] = False
            raise RuntimeError("first attempt fails")
        started.set()
        assert release.wait(10)
        return "done"

    registry.register(ActionDefinition("test", "gated", gated))
    manager.create_workflow("unbounded", [step("g", module="test", action="gated")])
    failed = manager.execute_workflow("unbounded", timeout=timeout)
    assert failed.status is WorkflowStatus.FAILED
    opener = threading.Thread(target=lambda: started.wait(10) and release.set())
    opener.start()
    resumed = manager.resume_run(failed.run_id, timeout=timeout)
    opener.join(10)
    assert resumed.status is WorkflowStatus.COMPLETED and resumed.steps["g"].output == "done"
    assert manager.wait_run(failed.run_id, timeout).status is WorkflowStatus.COMPLETED


def test_two_threads_resuming_one_run_start_exactly_one_run_and_the_other_gets_a_clear_error(
    orchestrator: TaskOrchestrator, registry: ActionRegistry, tmp_path: Path
) -> None:
    store = SqliteStore(tmp_path / "state")
    manager = WorkflowManager(orchestrator=orchestrator, registry=registry, store=store, config_dir=None)
    calls = register_fails_once(registry, action="once_failing")
    manager.create_workflow("contended", [step("s", module="test", action="once_failing")])
    # The race is a matter of timing: many rounds, each of which must come out right.
    for _ in range(20):
        failed = manager.execute_workflow("contended", timeout=10)
        assert failed.status is WorkflowStatus.FAILED
        barrier = threading.Barrier(2)
        outcomes: list[object] = []

        def resume(
            run_id: str = failed.run_id,
            barrier: threading.Barrier = barrier,
            outcomes: list[object] = outcomes,
        ) -> None:
            barrier.wait(10)
            try:
                outcomes.append(manager.resume_run(run_id, timeout=10))
            except InvalidStateError as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=resume) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        errors = [o for o in outcomes if isinstance(o, InvalidStateError)]
        assert len(outcomes) == 2 and len(errors) == 1, outcomes
        assert failed.run_id in str(errors[0])
        assert manager.wait_run(failed.run_id, 10).status is WorkflowStatus.COMPLETED
        assert calls[failed.run_id] == 2  # the failed run's call and one resumed run's
    store.close()


def test_a_run_that_a_cli_process_left_or_owns_through_its_top_run_is_not_cancelled_here_saying_why(
    orchestrator: TaskOrchestrator, registry: ActionRegistry, tmp_path: Path
) -> None:
    store = SqliteStore(tmp_path / "state.db")
    try:
        _refuses_what_a_cli_process_owns(orchestrator, registry, store, tmp_path)
    finally:
        store.close()


def _refuses_what_a_cli_process_owns(
    orchestrator: TaskOrchestrator, registry: ActionRegistry, store: SqliteStore, state_dir: Path
) -> None:
    manager = WorkflowManager(orchestrator=orchestrator, registry=registry, store=store, config_dir=None)
    running = WorkflowStatus.RUNNING
    store.save_run(RunRecord(run_id="left", workflow_name="w", status=running))
    store.save_run(RunRecord(run_id="top", workflow_name="w", status=running))
    store.save_run(RunRecord(run_id="child", workflow_name="w", status=running, parent_run_id="top"))
    store.flush()
    with RunOwnership(state_dir, "left", keep_file=True):
        pass  # the CLI process that ran it is gone, its lock file is left
    with pytest.raises(InvalidStateError, match="marked running by a CLI process that is gone") as gone:
        manager.cancel_run("left")
    assert "nothing runs it any more" in str(gone.value) and "resume it" in str(gone.value)
    with RunOwnership(state_dir, "top"):  # a CLI `run` of the top-level run, as its lock says
        for attempt in (manager.cancel_run, manager.resume_run):
            with pytest.raises(InvalidStateError, match=f"part of run top, which CLI process {os.getpid()}"):
                attempt("child")
    child = store.get_run("child")
    assert child is not None and child.status is running  # neither cancelled nor resumed here


def test_a_claim_reads_a_lock_file_as_a_gone_cli_s_only_if_it_still_is_one_when_the_lock_is_taken(
    tmp_path: Path,
) -> None:
    """A resume finds the lock file a dead CLI left; before it locks it, another resume (a server's)
    locks it, starts the run and removes the file: what the first then locks is new, not left over."""
    with RunOwnership(tmp_path, "r", keep_file=True):
        pass  # the CLI process that ran it is gone, its lock file is left
    late = Claim(tmp_path, "r")  # a CLI resume, about to take the lock
    with Claim(tmp_path, "r") as first:  # the server's resume takes it first
        assert first.stale
        first.started()
    assert not owner_of(tmp_path, "r").exists  # the run is the server's now
    with late:
        assert not late.stale  # so it is not one a gone CLI left running: not resumed again
    assert not owner_of(tmp_path, "r").exists


def test_a_run_whose_first_wave_is_wider_than_the_queue_cap_runs_every_step_and_item(
    registry: ActionRegistry,
) -> None:
    # The cap refuses a run at its start, when the queue is full; a run it accepted is carried through,
    # however many of its steps become ready at once: validate_workflow called it valid.
    orch = TaskOrchestrator(1, registry=registry, max_queued=3)
    try:
        manager = WorkflowManager(orchestrator=orch, registry=registry, config_dir=None)
        steps = [step(f"s{i}") for i in range(5)]
        steps.append(step("m", action="echo", parameters={"message": "{{item}}"}, for_each=list(range(10))))
        manager.create_workflow("wide", steps)
        record = manager.execute_workflow("wide", timeout=10)
    finally:
        orch.shutdown(wait=True, cancel_pending=True, timeout=10)
    assert record.status is WorkflowStatus.COMPLETED, record.failed_steps
    assert len(record.steps["m"].output) == 10


def test_a_backlog_queued_after_a_run_started_never_fails_its_next_steps_and_new_runs_are_refused(
    registry: ActionRegistry,
) -> None:
    orch = TaskOrchestrator(1, registry=registry, max_queued=3)
    gate, holding = threading.Event(), threading.Event()

    def hold(params: dict[str, Any], ctx: ActionContext) -> bool:
        holding.set()
        return gate.wait(10)

    registry.register(ActionDefinition("test", "hold", hold))
    try:
        manager = WorkflowManager(orchestrator=orch, registry=registry, config_dir=None)
        first = step("first", module="test", action="hold")
        then = [step(f"then{i}", dependencies=["first"]) for i in range(5)]
        manager.create_workflow("mine", [first, *then])
        run_id = manager.execute_workflow("mine", wait=False).run_id
        assert holding.wait(10)  # the run's first step holds the one worker: its next steps wait on it
        backlog = [orch.submit(lambda ctx: None, name=f"b{i}") for i in range(3)]  # another client's
        with pytest.raises(LimitExceededError, match="CODOMYRMEX_MAX_QUEUED_TASKS"):
            orch.submit(lambda ctx: None, name="one too many")
        with pytest.raises(LimitExceededError, match="CODOMYRMEX_MAX_QUEUED_TASKS") as refused:
            manager.execute_workflow("mine", wait=False)  # a new run: refused at its door
        assert refused.value.limit == 3
        assert [r.run_id for r in manager.list_runs()] == [run_id]  # the refused run left nothing
        gate.set()  # the first step ends: its five dependents join the full queue
        record = manager.wait_run(run_id, timeout=10)
        assert all(r.status is TaskStatus.COMPLETED for r in orch.wait_all(backlog, timeout=10))
    finally:
        gate.set()
        orch.shutdown(wait=True, cancel_pending=True, timeout=10)
    assert record.status is WorkflowStatus.COMPLETED, {n: r.error for n, r in record.steps.items()}
    assert all(r.status is TaskStatus.COMPLETED for r in record.steps.values())


def test_a_running_step_shows_in_snapshots_and_stats_when_nobody_listens_to_starts(
    manager: WorkflowManager, registry: ActionRegistry
) -> None:
    entered, release = threading.Event(), threading.Event()

    def hold(params: dict[str, Any], ctx: ActionContext) -> str:
        entered.set()
        assert release.wait(10)
        return "done"

    registry.register(ActionDefinition("test", "hold", hold))
    manager.create_workflow("held", [step("a", module="test", action="hold"), step("b", dependencies=["a"])])
    run_id = manager.execute_workflow("held", wait=False).run_id
    try:
        assert entered.wait(10)
        shown = manager.get_run(run_id).steps
        assert (shown["a"].status, shown["a"].attempts) == (TaskStatus.RUNNING, 1)
        assert shown["a"].started_at is not None and shown["b"].status is TaskStatus.PENDING
        assert manager.stats()["active_steps_by_status"] == {"running": 1, "pending": 1}
    finally:
        release.set()
    record = manager.wait_run(run_id, timeout=10)
    assert record.status is WorkflowStatus.COMPLETED and record.steps["a"].attempts == 1


def test_records_list_steps_in_declaration_order_whatever_order_they_ran_in(manager: WorkflowManager) -> None:
    manager.create_workflow(
        "backwards", [step("c", dependencies=["b"]), step("b", dependencies=["a"]), step("a"), step("d")]
    )
    run_id = manager.execute_workflow("backwards", wait=False).run_id
    shown = list(manager.get_run(run_id).steps)  # pending, running or done: every step, in order
    record = manager.wait_run(run_id, timeout=10)
    assert shown == list(record.steps) == ["c", "b", "a", "d"]
    assert record.steps["c"].finished_at >= record.steps["a"].finished_at  # type: ignore[operator]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        (
            "timeout",
            "5",
            'steps.1.timeout: expected a number, got the string "5" (write 5, without the quotes)',
        ),
        ("max_retries", "2", 'steps.1.max_retries: expected a whole number, got the string "2" (write 2, '),
        ("max_retries", 2.0, "steps.1.max_retries: expected a whole number, got 2.0 (write 2)"),
        ("retry_delay", "1", 'steps.1.retry_delay: expected a number, got the string "1"'),
        ("backoff", "2", 'steps.1.backoff: expected a number, got the string "2"'),
        ("required", "true", 'steps.1.required: expected true or false, got the string "true" (write true,'),
        ("required", 1, "steps.1.required: expected true or false, got 1"),
        ("max_parallel", "4", 'steps.1.max_parallel: expected a whole number, got the string "4"'),
        ("cache", {"ttl_seconds": "60"}, 'steps.1.cache.ttl_seconds: expected a number, got the string "60"'),
        ("priority", "3", "steps.1.priority: expected one of critical, high, normal, low, background or a"),
    ],
)
def test_a_step_number_or_boolean_given_as_another_json_type_is_refused_naming_the_step_and_field(
    manager: WorkflowManager, tmp_path: Path, field: str, value: Any, expected: str
) -> None:
    extra = {"for_each": [1, 2]} if field == "max_parallel" else {}
    document = {"name": "typed", "steps": [step("a"), step("b", **{field: value}, **extra)]}
    with pytest.raises(InvalidInputError) as created:
        manager.create_workflow(document)
    assert expected in str(created.value)
    with pytest.raises(DAGValidationError) as validated:
        manager.validate_workflow(document)
    assert validated.value.problems[0].startswith(expected)
    (tmp_path / "typed.json").write_text(json.dumps(document))
    assert manager.load_config_dir(tmp_path) == []
    ((_, reason),) = manager.load_errors
    assert expected in reason
    assert manager.list_workflows() == []


def test_a_definition_of_json_numbers_and_booleans_loads_as_written_and_again_from_the_store(
    orchestrator: TaskOrchestrator, registry: ActionRegistry, tmp_path: Path
) -> None:
    # Ints stand for floats (timeout 5), as in the tools' arguments; the store writes them back as numbers.
    fields = {
        "timeout": 5,
        "max_retries": 2,
        "retry_delay": 0,
        "backoff": 1,
        "required": False,
        "priority": 3,
    }
    document = {
        "name": "typed",
        "max_parallel": 2,
        "steps": [step("a", **fields, cache={"ttl_seconds": 60}), step("b", priority="high")],
    }
    store = SqliteStore(tmp_path / "state.db")
    try:
        first = WorkflowManager(orchestrator=orchestrator, registry=registry, config_dir=None, store=store)
        created = first.create_workflow(document)
        assert created.steps[0].timeout == 5.0 and created.steps[0].required is False
    finally:
        store.close()
    reopened = SqliteStore(tmp_path / "state.db")
    try:
        again = WorkflowManager(orchestrator=orchestrator, registry=registry, config_dir=None, store=reopened)
        assert again.get_workflow("typed") == created
        assert again.workflow_source("typed") == "api"
    finally:
        reopened.close()


def test_two_workflows_running_each_other_created_at_the_same_moment_are_refused_once(
    registry: ActionRegistry,
) -> None:
    # No run starts: one backend is enough (the race is between definitions).
    orchestrator = TaskOrchestrator(2, registry=registry)
    manager = WorkflowManager(orchestrator=orchestrator, registry=registry, config_dir=None)
    try:
        _create_pairs_together(manager)
    finally:
        orchestrator.shutdown(wait=True, cancel_pending=True, timeout=10)


def _create_pairs_together(manager: WorkflowManager) -> None:
    # Steps enough that checking one takes several of the interpreter's thread switches: each check
    # of the pair runs while the other's is under way, as two clients' calls would.
    filler = [step(f"s{i}", dependencies=[f"s{i - 1}"] if i else []) for i in range(300)]

    def runs(name: str, target: str) -> dict[str, Any]:
        go = step("go", module="workflow", action="run", parameters={"workflow": target})
        return {"name": name, "steps": [go, *filler]}

    for attempt in range(50):  # each round a fresh pair, both released together
        first, second = f"a{attempt}", f"b{attempt}"
        barrier = threading.Barrier(2, timeout=10)
        refused: list[DAGValidationError] = []

        def create(
            document: dict[str, Any],
            barrier: threading.Barrier = barrier,
            refused: list[DAGValidationError] = refused,
        ) -> None:
            barrier.wait()
            try:
                manager.create_workflow(document)
            except DAGValidationError as exc:
                refused.append(exc)

        threads = [
            threading.Thread(target=create, args=(runs(first, second),)),
            threading.Thread(target=create, args=(runs(second, first),)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert not any(t.is_alive() for t in threads)
        registered = {w.name for w in manager.list_workflows()} & {first, second}
        assert len(refused) == 1 and len(registered) == 1, (attempt, registered, refused)
        (problem,) = refused[0].problems
        loser = refused[0].workflow
        winner = second if loser == first else first
        assert problem.startswith(
            f"step 'go' runs workflow {winner!r}, which runs {loser!r} again: "
            f"{loser} -> {winner} -> {loser}; every run would start sub-runs"
        )


def test_create_lists_the_schema_problems_with_the_graph_problems_and_what_it_could_not_check(
    manager: WorkflowManager,
) -> None:
    steps = [
        step("a", dependencies=["c"]),
        step("b", depends_on=["a"]),  # a schema problem: b is left out of the graph checks
        step("c", dependencies=["a", "missing"]),
    ]
    with pytest.raises(DAGValidationError) as created:
        manager.create_workflow({"name": "several", "steps": steps})
    problems = created.value.problems
    assert problems[0].startswith("unknown field 'steps.1.depends_on' (did you mean 'dependencies'?)")
    assert any("'missing'" in p for p in problems[1:]), problems
    assert any("cycle" in p and "a -> c -> a" in p for p in problems[1:]), problems
    assert created.value.unchecked == [
        "the graph, reference and action checks left out steps.1 ('b'), which the schema refused: they run "
        "once it accepts them"
    ]
    assert "(not checked: the graph, reference and action checks left out steps.1 ('b')" in str(created.value)
    # The name-and-steps form, and a replacement (overwrite), report the same way; nothing is registered.
    with pytest.raises(DAGValidationError) as replaced:
        manager.create_workflow("several", steps, overwrite=True)
    assert replaced.value.problems == problems
    assert manager.list_workflows() == []
