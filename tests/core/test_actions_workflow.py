"""workflow.run hands the sub-run to the runner the workflow manager puts on the context."""

from __future__ import annotations

from typing import Any

import pytest

from codomyrmex_orchestration.core.actions import ActionContext, create_registry
from codomyrmex_orchestration.errors import InvalidInputError, LimitExceededError, StepFailedError

RUN = create_registry(load_plugins=False).get("workflow", "run").func


class Runner:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], ActionContext]] = []

    def __call__(self, name: str, parameters: dict[str, Any], *, ctx: ActionContext) -> dict[str, Any]:
        self.calls.append((name, parameters, ctx))
        return {"total": sum(parameters.get("numbers", []))}


def test_the_runner_is_called_with_name_parameters_and_context_and_its_outputs_returned() -> None:
    runner = Runner()
    ctx = ActionContext("child", run_id="parent-run", run_workflow=runner, depth=1)
    out = RUN({"workflow": "summing", "parameters": {"numbers": [1, 2, 3]}}, ctx)
    assert out == {"total": 6}
    assert runner.calls == [("summing", {"numbers": [1, 2, 3]}, ctx)]


def test_outside_a_workflow_it_fails_saying_it_runs_only_as_a_step() -> None:
    with pytest.raises(StepFailedError, match=r"runs only as a workflow step.*'x' with execute_workflow"):
        RUN({"workflow": "x"}, ActionContext("child"))


def test_nesting_beyond_max_depth_is_refused_before_the_runner_is_called() -> None:
    runner = Runner()
    ctx = ActionContext("child", run_workflow=runner, depth=2, extras={"max_depth": 2})
    with pytest.raises(
        LimitExceededError, match=r"^CODOMYRMEX_MAX_SUBWORKFLOW_DEPTH: the sub-workflow nesting depth"
    ):
        RUN({"workflow": "x"}, ctx)
    assert runner.calls == []
    RUN({"workflow": "x"}, ActionContext("child", run_workflow=runner, depth=1, extras={"max_depth": 2}))
    assert len(runner.calls) == 1


@pytest.mark.parametrize(
    ("params", "field"),
    [({}, "parameters.workflow"), ({"workflow": "x", "parameters": [1]}, "parameters.parameters")],
)
def test_malformed_parameters_name_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        RUN(params, ActionContext("child", run_workflow=Runner()))
    assert info.value.field == field
