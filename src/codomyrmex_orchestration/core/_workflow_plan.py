"""What a run needs from a validated workflow definition, computed once per definition version.

A :class:`Plan` is immutable once built and shared by every run of that version; it owns no lock.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from codomyrmex_orchestration.core._secrets import SecretSource, secret_names
from codomyrmex_orchestration.core.dag import WorkflowDAG
from codomyrmex_orchestration.core.models import TaskPriority, WorkflowSpec
from codomyrmex_orchestration.core.templating import Condition, find_references, parse_condition

__all__ = ["Plan", "WorkflowValidation"]


class WorkflowValidation(BaseModel):
    """What validating a workflow tells: its shape, inferred edges and a Mermaid diagram."""

    name: str
    steps_count: int
    execution_levels: list[list[str]]
    inferred_dependencies: dict[str, list[str]]
    mermaid: str
    #: Secrets the steps use that are set nowhere yet (by name; a step using one fails when it starts).
    missing_secrets: list[str] = Field(default_factory=list)


class Plan:
    """A validated definition, pre-digested for runs: parents, conditions, template references.

    Attributes:
        spec: the definition.
        dag: its validated graph (explicit and inferred dependencies).
        version: the definition's version number (0 for a definition never registered).
        digest: the content hash of the definition.
        parents: each step's dependencies, sorted (the order skip reasons are reported in).
        priorities: a step's own priority, where it sets one (else the run's priority applies).
        conditions: each step's parsed ``run_if``.
        templated: steps whose parameters hold templates.
        needs_output: the steps whose output each step reads (it is skipped if one did not complete).
        param_refs: (step, parameter name, raw reference) for every ``{{params.x}}``.
        secret_names: the names of the secrets the steps use (``{{secrets.NAME}}``).
    """

    __slots__ = (
        "conditions",
        "dag",
        "digest",
        "needs_output",
        "param_refs",
        "parents",
        "priorities",
        "secret_names",
        "spec",
        "templated",
        "version",
    )

    def __init__(self, spec: WorkflowSpec, dag: WorkflowDAG, *, version: int = 0, digest: str = "") -> None:
        self.spec = spec
        self.dag = dag
        self.version = version
        self.digest = digest
        self.parents: dict[str, tuple[str, ...]] = {
            name: tuple(sorted(dag.dependencies_of(name))) for name in dag.steps
        }
        known = dag.steps.keys()
        self.priorities: dict[str, TaskPriority] = {
            name: step.priority for name, step in dag.steps.items() if "priority" in step.model_fields_set
        }
        self.conditions: dict[str, Condition] = {}
        self.templated: set[str] = set()
        self.needs_output: dict[str, tuple[str, ...]] = {}
        self.param_refs: list[tuple[str, str, str]] = []
        self.secret_names: set[str] = set()
        for name, step in dag.steps.items():
            refs = find_references(step.parameters, known)
            if refs:
                self.templated.add(name)
            if step.for_each is not None:  # a map step: the list it reads is an input too
                refs = [*refs, *find_references(step.for_each, known)]
            if step.run_if:
                condition = parse_condition(step.run_if, known)
                self.conditions[name] = condition
                refs = [*refs, *condition.references]
            self.needs_output[name] = tuple(
                sorted({r.step for r in refs if r.root == "steps" and r.attr == "output" and r.step})
            )
            self.param_refs.extend((name, str(r.attr), r.raw) for r in refs if r.root == "params")
            self.secret_names |= secret_names(refs)

    def describe(self, secrets: SecretSource | None = None) -> WorkflowValidation:
        """The validation report; with ``secrets``, naming the secrets the steps use that it lacks."""
        return WorkflowValidation(
            missing_secrets=secrets.missing(self.secret_names) if secrets is not None else [],
            name=self.spec.name,
            steps_count=len(self.spec.steps),
            execution_levels=self.dag.execution_levels(),
            inferred_dependencies={k: sorted(v) for k, v in self.dag.inferred_dependencies.items() if v},
            mermaid=self.dag.to_mermaid(),
        )
