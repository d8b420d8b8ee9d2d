"""The ``workflow`` module: ``workflow.run`` runs another registered workflow as a sub-run, through the
runner the WorkflowManager puts on the context."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from codomyrmex_orchestration.config import DEFAULT_MAX_SUBWORKFLOW_DEPTH
from codomyrmex_orchestration.core.actions._params import ParameterReaders, get_str
from codomyrmex_orchestration.core.actions._registry import ActionContext, ActionDefinition, ActionRegistry
from codomyrmex_orchestration.errors import InvalidInputError, LimitExceededError, StepFailedError

__all__ = [
    "MAX_SUBWORKFLOW_DEPTH_SETTING",
    "MAX_SUBWORKFLOW_RUNS_SETTING",
    "PARAMETERS",
    "register",
    "run",
]

#: The settings that move the sub-workflow limits, named by their refusals.
MAX_SUBWORKFLOW_DEPTH_SETTING = "CODOMYRMEX_MAX_SUBWORKFLOW_DEPTH"
MAX_SUBWORKFLOW_RUNS_SETTING = "CODOMYRMEX_MAX_SUBWORKFLOW_RUNS"

PARAMETERS = {
    "workflow": "name of a registered workflow (required)",
    "parameters": "object of parameters for the sub-run (default {})",
}
_ACTION = "workflow.run"


def _sub_params(params: Mapping[str, Any]) -> dict[str, Any]:
    sub_params = params.get("parameters") or {}
    if not isinstance(sub_params, Mapping):
        raise InvalidInputError("parameters.parameters", "workflow.run needs 'parameters' to be an object")
    return dict(sub_params)


#: Every rule of workflow.run's parameters, run when the step runs and on literal values at validation.
_READERS = ParameterReaders(
    _ACTION,
    PARAMETERS,
    workflow=(("workflow",), lambda p: get_str(p, "workflow", _ACTION, required=True)),
    parameters=(("parameters",), _sub_params),
)


def run(params: dict[str, Any], ctx: ActionContext) -> Any:
    """Run ``params["workflow"]`` with ``params["parameters"]`` and return the sub-run's outputs.

    Raises:
        InvalidInputError: a parameter is malformed.
        LimitExceededError: the sub-run would nest deeper than ``ctx.extras["max_depth"]`` (default 8).
        StepFailedError: not a workflow step (a single task: no runner on the context).
    """
    read = _READERS.read(params)
    name: str = read["workflow"]
    sub_params: dict[str, Any] = read["parameters"]
    max_depth = ctx.extras.get("max_depth", DEFAULT_MAX_SUBWORKFLOW_DEPTH)
    if ctx.depth + 1 > max_depth:
        raise LimitExceededError(
            MAX_SUBWORKFLOW_DEPTH_SETTING,
            max_depth,
            ctx.depth + 1,
            f"the sub-workflow nesting depth for {name!r}",
        )
    if ctx.run_workflow is None:  # a single task (execute_task): there is no run to start a sub-run in
        raise StepFailedError(
            ctx.step_name,
            "workflow.run starts a sub-run of the run it is a step of, so it runs only as a workflow step, "
            f"not as a single task: run workflow {name!r} with execute_workflow instead",
        )
    ctx.check_cancelled()
    return ctx.run_workflow(name, sub_params, ctx=ctx)


def register(registry: ActionRegistry) -> None:
    """Add ``workflow.run`` to ``registry``."""
    registry.register(
        ActionDefinition(
            "workflow",
            "run",
            run,
            description="Run another registered workflow as a sub-run (nesting limited by max_depth) and "
            "return its outputs. Only as a workflow step: to run a workflow alone, use execute_workflow.",
            parameters=dict(PARAMETERS),
            output="the sub-run's outputs (an object)",
            check=_READERS.check,
        )
    )
