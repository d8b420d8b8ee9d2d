"""Errors that teach (issue 19, item 5): a misspelt name gets the closest known one, and validation
catches at definition time what used to fail only at run time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from codomyrmex_orchestration._suggest import closest
from codomyrmex_orchestration.core.engine import OrchestrationEngine
from codomyrmex_orchestration.errors import DAGValidationError, InvalidInputError, WorkflowNotFoundError


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[OrchestrationEngine]:
    the_engine = OrchestrationEngine(state_dir=tmp_path / "state", config_dir=None, durable=False)
    yield the_engine
    the_engine.shutdown()


def echo(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "module": "core", "action": "echo", "parameters": {"message": name}, **extra}


def test_a_misspelt_step_field_is_refused_with_the_field_it_meant(engine: OrchestrationEngine) -> None:
    steps = [echo("a"), echo("b", depends_on=["a"])]
    with pytest.raises(InvalidInputError) as info:
        engine.workflow_manager.create_workflow({"name": "typo", "steps": steps})
    message = str(info.value)
    assert "unknown field 'steps.1.depends_on'" in message
    assert "did you mean 'dependencies'?" in message


def test_step_resources_are_checked_against_the_machines_capacities_at_validation(
    engine: OrchestrationEngine,
) -> None:
    cpus = engine.resource_manager.get_total_usage()
    assert cpus  # the machine was probed
    too_much = echo("heavy", resources={"compute": 999_999})
    unknown = echo("odd", resources={"quantum": 1})
    with pytest.raises(DAGValidationError) as info:
        engine.workflow_manager.validate_workflow(
            {"name": "hungry", "steps": [echo("fine"), too_much, unknown]}
        )
    problems = info.value.problems
    assert any(p.startswith("step 'heavy': resources:") for p in problems), problems
    assert any(p.startswith("step 'odd': resources:") for p in problems), problems
    assert not any("'fine'" in p for p in problems)
    # what fits validates
    modest = {"name": "modest", "steps": [echo("ok", resources={"compute": 1})]}
    engine.workflow_manager.validate_workflow(modest)


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        ({"lock": 0.5}, "resources.lock: 'lock' (lock) is held in whole units: use exactly 1, got 0.5"),
        ({"compute": 10**309}, "resources.compute: an integer of 310 digits is too large; use a number"),
        ({"memory": "1e400GB"}, "resources.memory: '1e400GB' is not a finite size; use a number"),
    ],
    ids=["half-a-lock", "beyond-a-float", "infinite-size"],
)
def test_step_resources_no_allocation_could_take_are_problems_at_validation(
    engine: OrchestrationEngine, resources: dict[str, Any], expected: str
) -> None:
    spec = {"name": "w", "steps": [echo("a", resources=resources)]}
    with pytest.raises(DAGValidationError) as info:
        engine.workflow_manager.validate_workflow(spec)
    [problem] = info.value.problems
    assert problem.startswith(f"step 'a': {expected}")  # the field as the step names it
    with pytest.raises(DAGValidationError):
        engine.workflow_manager.create_workflow(spec)


def test_an_unknown_workflow_name_suggests_the_closest_known_one(engine: OrchestrationEngine) -> None:
    engine.workflow_manager.create_workflow({"name": "greet_and_collect", "steps": [echo("a")]})
    with pytest.raises(WorkflowNotFoundError, match="did you mean 'greet_and_collect'"):
        engine.execute_workflow("greet_and_colect")


@pytest.mark.parametrize(
    ("action", "parameters", "field"),
    [
        ("sleep", {"secs": 2}, "parameters.secs"),
        ("echo", {"message": "a", "mesage": "b"}, "parameters.mesage"),
        ("sleep", {"seconds": -1}, "parameters.seconds"),
    ],
    ids=["misspelt-name", "extra-misspelt-name", "bad-literal"],
)
def test_a_single_task_is_refused_before_it_runs_with_the_problem_a_workflow_step_would_have(
    engine: OrchestrationEngine, action: str, parameters: dict[str, Any], field: str
) -> None:
    call = {"module": "core", "action": action, "parameters": parameters}
    with pytest.raises(DAGValidationError) as as_step:
        engine.workflow_manager.validate_workflow({"name": "w", "steps": [{"name": "a", **call}]})
    [problem] = as_step.value.problems
    with pytest.raises(InvalidInputError) as as_task:
        engine.execute_task({"name": "t", **call})
    assert as_task.value.field == field
    assert as_task.value.reason in problem  # the same words, without the step's name
    with pytest.raises(InvalidInputError):
        engine.start_task({"name": "t", **call})
    assert engine.task_orchestrator.list_tasks() == []  # nothing was queued


def test_a_single_task_passes_a_value_that_looks_like_a_template_as_it_is(
    engine: OrchestrationEngine,
) -> None:
    task = engine.execute_task(
        {"name": "t", "module": "core", "action": "echo", "parameters": {"message": "{{steps.x.output}}"}}
    )
    assert task.status.value == "completed" and task.result == "{{steps.x.output}}"


@pytest.mark.parametrize(
    ("module", "action", "written", "meant"),
    [
        ("shell", "run", "cmd", "command"),  # closer in letters to 'cwd'
        ("shell", "run", "args", "command"),
        ("shell", "run", "stdin", "input"),
        ("core", "sleep", "duration", "seconds"),
        ("http", "request", "endpoint", "url"),
    ],
)
def test_a_parameter_written_under_a_common_alias_suggests_the_name_it_stands_for(
    engine: OrchestrationEngine, module: str, action: str, written: str, meant: str
) -> None:
    step = {"name": "a", "module": module, "action": action, "parameters": {written: "x"}}
    with pytest.raises(DAGValidationError) as info:
        engine.workflow_manager.validate_workflow({"name": "w", "steps": [step]})
    assert f"does not accept parameter {written!r} (did you mean {meant!r}?)" in info.value.problems[0]


def test_a_name_that_differs_only_in_case_is_suggested_as_itself_not_as_an_alias() -> None:
    assert closest("Name", ["name", "workflow"]) == "name"
    assert closest("name", ["workflow"]) == "workflow"
    assert closest("cmd", ["cwd", "shell"]) == "cwd"  # an alias not known here: spelling decides
