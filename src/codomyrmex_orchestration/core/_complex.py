"""Complex workflows: check a ``{"steps": [...], "dependencies": {step: [steps]}}`` definition and turn
it into one workflow document (each dependencies entry merged into its step's own list). Stateless.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from codomyrmex_orchestration.errors import InvalidInputError

__all__ = ["complex_workflow_document"]

_FIELD = "workflow_definition"


def complex_workflow_document(definition: Mapping[str, Any], *, name: str) -> dict[str, Any]:
    """The workflow document ``definition`` describes, named ``name``.

    Raises:
        InvalidInputError: the definition is not an object, has no steps, or its dependencies map names
            a step that does not exist or is not a list of step names (the field is named).
    """
    if not isinstance(definition, Mapping):
        raise InvalidInputError(_FIELD, "expected an object with 'steps' and 'dependencies'")
    steps = definition.get("steps")
    if not isinstance(steps, list) or not steps:
        raise InvalidInputError(f"{_FIELD}.steps", "a non-empty list of step objects is required")
    deps = definition.get("dependencies")
    if deps is None:
        deps = {}
    if not isinstance(deps, Mapping):  # an empty list too: it is not "no dependencies", it is malformed
        raise InvalidInputError(f"{_FIELD}.dependencies", "expected an object: step -> [steps]")
    names = {s.get("name") for s in steps if isinstance(s, Mapping)}
    for key, value in deps.items():
        if key not in names:
            raise InvalidInputError(
                f"{_FIELD}.dependencies.{key}", f"no step named {key!r}; steps: {sorted(map(str, names))}"
            )
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidInputError(f"{_FIELD}.dependencies.{key}", "expected a list of step names")
    merged = []
    for index, raw in enumerate(steps):
        if not isinstance(raw, Mapping):
            raise InvalidInputError(f"{_FIELD}.steps.{index}", "expected a step object")
        step = dict(raw)
        extra = deps.get(step.get("name"), [])
        step["dependencies"] = list(dict.fromkeys([*step.get("dependencies", []), *extra]))
        merged.append(step)
    document: dict[str, Any] = {
        "name": name,
        "description": str(definition.get("description", "")),
        "steps": merged,
        "parameters": dict(definition.get("parameters") or {}),
    }
    for name in ("max_parallel", "version"):  # the workflow format's other fields, when given
        if definition.get(name) is not None:
            document[name] = definition[name]
    return document
