"""A new run's parameters: the caller's values merged over the workflow's defaults, refused when the
workflow neither declares nor uses a name given (a misspelt ``eror_rate`` must not leave the run on the
default of ``error_rate``) or when a ``{{params.x}}`` has no value. Owns no state."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from itertools import islice
from typing import Any

from codomyrmex_orchestration._suggest import did_you_mean
from codomyrmex_orchestration.core._numbers import shown
from codomyrmex_orchestration.core._workflow_plan import Plan
from codomyrmex_orchestration.errors import InvalidInputError

__all__ = ["run_parameters"]

#: A refusal names at most this many of the names given and of the names accepted.
_SHOWN = 20


def run_parameters(plan: Plan, given: Mapping[str, Any], *, check_names: bool = True) -> dict[str, Any]:
    """``given`` over the workflow's defaults, every name checked (``check_names=False``: a resumed
    run's values, checked when it started).

    A workflow accepts the names its ``parameters`` declare and those its steps use (``{{params.x}}``
    in parameters, ``for_each`` and ``run_if``): a step reads the run's parameters only through those
    references, so a name outside both would reach nothing.

    Raises:
        InvalidInputError: ``parameters.<name>``: a name the workflow neither declares nor uses (with
            the closest accepted one and the list), or a ``{{params.x}}`` that has no value.
    """
    spec = plan.spec
    if check_names and given:
        _refuse_unknown(spec.name, given, spec.parameters, {param for _step, param, _raw in plan.param_refs})
    params = {**spec.parameters, **given}
    for step_name, param, raw in plan.param_refs:
        if param not in params:
            raise InvalidInputError(
                f"parameters.{param}",
                f"required by step {step_name!r} ({{{{{raw}}}}}) and has no default; "
                f"given: {', '.join(sorted(params)) or '(none)'}",
            )
    return params


def _refuse_unknown(
    workflow: str, given: Mapping[str, Any], declared: Mapping[str, Any], used: set[str]
) -> None:
    unknown = [name for name in given if name not in declared and name not in used]
    if unknown:
        accepted = sorted(used.union(declared))
        what = ", ".join(f"{shown(name)}{did_you_mean(name, accepted)}" for name in islice(unknown, _SHOWN))
        if len(unknown) > _SHOWN:
            what += f", ... ({len(unknown)} in all)"
        plural = "s" if len(unknown) > 1 else ""
        raise InvalidInputError(
            f"parameters.{unknown[0]}",
            f"workflow {workflow!r} neither declares nor uses parameter{plural} {what}; "
            f"accepted parameters: {_listed(accepted)} (the workflow's 'parameters' and its steps' "
            "{{params.x}})",
        )


def _listed(names: Collection[str]) -> str:
    if not names:
        return "none (the workflow takes no parameters)"
    text = ", ".join(islice(names, _SHOWN))
    return text if len(names) <= _SHOWN else f"{text}, ... ({len(names)} in all)"
