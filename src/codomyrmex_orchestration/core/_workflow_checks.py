"""Every problem of a workflow document at once, for the validation doors (the tool, the CLI, Python).

The schema's problems come first, every one of them; then the graph, reference and action checks run over
the steps that did parse, and a workflow that runs itself through other registered workflows is named
with its path. Only :func:`register` registers: the same checks, then the definition, its loops through
other workflows checked again as it goes in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from codomyrmex_orchestration.core._workflow_plan import Plan
from codomyrmex_orchestration.core._workflow_registry import Definition, DefinitionRegistry
from codomyrmex_orchestration.core.dag import ENDLESS, sub_workflow_of
from codomyrmex_orchestration.core.models import WORKFLOW_FIELD_NAMES, StepSpec, WorkflowSpec
from codomyrmex_orchestration.errors import (
    CycleDetectedError,
    DAGValidationError,
    InvalidInputError,
    LimitExceededError,
    validation_problems,
)

__all__ = ["check_document", "graph_problems", "register", "run_cycles"]


def check_document(definitions: DefinitionRegistry, document: WorkflowSpec | Mapping[str, Any]) -> Plan:
    """Validate ``document`` (a spec or a JSON object) as ``definitions`` would register it.

    Returns:
        Its plan, when it is valid.

    Raises:
        LimitExceededError: more steps than the registry allows (nothing else is checked then).
        DAGValidationError: every problem at once: the schema's (each step parsed on its own), then the
            graph's, the references', the actions' and the limits' over the steps that parsed, then
            cycles through registered workflows (``CycleDetectedError`` when the steps form a cycle).
    """
    try:
        spec = definitions.coerce(document)
    except LimitExceededError:
        raise
    except InvalidInputError:
        if not isinstance(document, Mapping):
            raise
        problems, unchecked = _partial_problems(definitions, document)
        name = document.get("name")
        workflow = name if isinstance(name, str) else None
        raise DAGValidationError(problems, workflow=workflow, unchecked=unchecked) from None
    loops = run_cycles(spec, definitions)
    try:
        plan = definitions.check(spec)
    except CycleDetectedError as exc:
        raise CycleDetectedError(exc.cycle, problems=exc.problems + loops, workflow=spec.name) from None
    except DAGValidationError as exc:
        raise DAGValidationError(exc.problems + loops, workflow=spec.name) from None
    if loops:
        raise DAGValidationError(loops, workflow=spec.name)
    return plan


#: What the checks beyond the schema are, as a note on those that could not run names them.
_GRAPH_CHECKS = "the graph, reference and action checks"


def register(
    definitions: DefinitionRegistry,
    document: WorkflowSpec | Mapping[str, Any],
    overwrite: bool,
    *,
    source: str,
    reuse: bool,
) -> tuple[Definition, bool]:
    """Check ``document`` as :func:`check_document` does, then register it (see
    ``DefinitionRegistry.create``). The loops through registered workflows are checked again with the
    registry's writers held off: two workflows running each other, created at the same moment, would
    otherwise each pass against a registry without the other.

    Raises:
        What :func:`check_document` and ``DefinitionRegistry.create`` raise.
    """
    plan = check_document(definitions, document)
    return definitions.create(
        plan.spec,
        overwrite=overwrite,
        source=source,
        reuse=reuse,
        plan=plan,
        loops=lambda spec: run_cycles(spec, definitions),
    )


def _partial_problems(
    definitions: DefinitionRegistry, document: Mapping[str, Any]
) -> tuple[list[str], list[str]]:
    """The problems of a document the schema refuses: every schema problem, then those of
    :func:`graph_problems`; and what those checks had to leave out, with why."""
    try:
        WorkflowSpec.model_validate(document)
    except ValidationError as exc:
        problems, _ = validation_problems(exc.errors(), known_fields=WORKFLOW_FIELD_NAMES)
    else:  # coerce refused it for another reason than the schema
        problems = []
    more, unchecked = graph_problems(definitions, document)
    return problems + more, unchecked


def graph_problems(
    definitions: DefinitionRegistry, document: Mapping[str, Any]
) -> tuple[list[str], list[str]]:
    """The checks of a valid workflow over the steps of ``document`` that parse (a step that does not is
    the schema's to name), cycles through registered workflows included: the problems they find, and
    what they could not check, with why."""
    steps = document.get("steps")
    if not isinstance(steps, list):
        return [], [f"{_GRAPH_CHECKS} did not run: 'steps' is not a list of steps"]
    parsed: list[StepSpec] = []
    unparsed: set[str] = set()
    left_out: list[str] = []
    for index, item in enumerate(steps):
        try:
            parsed.append(item if isinstance(item, StepSpec) else StepSpec.model_validate(item))
        except ValidationError:
            name = item.get("name") if isinstance(item, Mapping) else None
            if isinstance(name, str):
                unparsed.add(name)
            left_out.append(f"steps.{index}" + (f" ({name!r})" if isinstance(name, str) else ""))
    if not parsed:
        return [], [f"{_GRAPH_CHECKS} did not run: no step passed the schema"]
    unchecked = [
        f"{_GRAPH_CHECKS} left out {', '.join(left_out)}, which the schema refused: they run once it "
        "accepts them"
    ]
    name, parameters = document.get("name"), document.get("parameters")
    # Unchecked: only its steps, name and parameters are read, each as far as it is valid.
    partial = WorkflowSpec.model_construct(
        name=name if isinstance(name, str) else "",
        steps=parsed,
        parameters=parameters if isinstance(parameters, dict) else {},
    )
    problems: list[str] = []
    try:
        definitions.check(partial, unparsed=unparsed)
    except DAGValidationError as exc:
        problems += exc.problems
    except LimitExceededError as exc:  # too many steps: the graph is not built
        return [], [f"{_GRAPH_CHECKS} did not run: {exc}"]
    return problems + run_cycles(partial, definitions), unchecked if left_out else []


def run_cycles(spec: WorkflowSpec, definitions: DefinitionRegistry) -> list[str]:
    """Steps of ``spec`` that run it again through other registered workflows, each named with the path
    (``loop -> other -> loop``). Only ``workflow.run`` steps with a literal workflow and no ``run_if``
    count (see :func:`~codomyrmex_orchestration.core.dag.sub_workflow_of`); a step running ``spec``
    itself is the graph check's."""
    runs: dict[str, set[str]] = {}  # workflow -> the workflows its steps always run

    def targets(name: str) -> set[str]:
        if name not in runs:
            try:
                steps = definitions.spec_at(name, None).steps
            except LookupError:  # not registered (yet): it runs nothing
                steps = []
            runs[name] = {t for s in steps if (t := sub_workflow_of(s)) is not None}
        return runs[name]

    runs[spec.name] = set()  # the definition checked replaces the registered one of its name
    problems: list[str] = []
    for step in spec.steps:
        first = sub_workflow_of(step)
        if first is None or first == spec.name:
            continue
        path = _path_back(first, spec.name, targets)
        if path is not None:
            problems.append(
                f"step {step.name!r} runs workflow {first!r}, which runs {spec.name!r} again: "
                f"{' -> '.join([spec.name, *path])}; {ENDLESS}"
            )
    return problems


def _path_back(start: str, goal: str, targets: Callable[[str], set[str]]) -> list[str] | None:
    """The shortest path of workflow names from ``start`` to ``goal`` (both included), or None."""
    parent: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for name in frontier:
            for target in sorted(targets(name)):
                if target == goal:
                    path = [name]
                    while (up := parent[path[-1]]) is not None:
                        path.append(up)
                    return [*reversed(path), goal]
                if target not in parent:
                    parent[target] = name
                    following.append(target)
        frontier = following
    return None
