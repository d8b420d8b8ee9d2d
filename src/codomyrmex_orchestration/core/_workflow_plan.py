"""What a run needs from a validated workflow definition, computed once per definition version.

A :class:`Plan` is immutable once built and shared by every run of that version; it owns no lock.
"""

from __future__ import annotations

from collections.abc import Collection

from pydantic import BaseModel, Field

from codomyrmex_orchestration.core._secrets import SecretSource, secret_names
from codomyrmex_orchestration.core.dag import WorkflowDAG
from codomyrmex_orchestration.core.graph import DependencyGraph
from codomyrmex_orchestration.core.models import StepSpec, TaskPriority, WorkflowSpec
from codomyrmex_orchestration.core.templating import Condition, Reference, find_references, parse_condition

__all__ = ["Plan", "StepInfo", "WorkflowValidation"]


class WorkflowValidation(BaseModel):
    """What validating a workflow tells: its shape, inferred edges and a Mermaid diagram."""

    name: str
    steps_count: int
    execution_levels: list[list[str]]
    inferred_dependencies: dict[str, list[str]]
    mermaid: str
    #: Secrets the steps use that are set nowhere yet (by name; a step using one fails when it starts).
    missing_secrets: list[str] = Field(default_factory=list)


class StepInfo:
    """What a run needs of one step, digested once: its spec, its dependencies (sorted: the order skip
    reasons are reported in), its own priority (None: the run's applies), its parsed ``run_if``, whether
    its parameters hold templates, the steps whose output its parameters or ``for_each`` read (it is
    skipped if one did not complete; its ``run_if`` is evaluated instead, reading such an output as
    null, so that a guard on the step's status can decide), and its scheduling ``profile``. Immutable
    once built."""

    __slots__ = ("condition", "needs_output", "parents", "priority", "profile", "spec", "templated")

    def __init__(self, spec: StepSpec, parents: tuple[str, ...], refs: list[Reference]) -> None:
        self.spec = spec
        self.parents = parents
        self.priority: TaskPriority | None = spec.priority if "priority" in spec.model_fields_set else None
        # What the step's scheduler settings depend on besides its run: steps with equal profiles share
        # one checked TaskSettings in a run (RunSteps.settings).
        self.profile = (
            self.priority,
            spec.timeout,
            spec.max_retries,
            spec.retry_delay,
            spec.backoff,
            tuple(spec.resources.items()),
        )
        self.templated = bool(refs)
        self.condition: Condition | None = None
        self.needs_output: tuple[str, ...] = ()

    @classmethod
    def digest(
        cls, spec: StepSpec, parents: tuple[str, ...], known: Collection[str]
    ) -> tuple[StepInfo, list[Reference]]:
        """The step's info and every reference it makes (``known``: the step names it may refer to)."""
        refs = find_references(spec.parameters, known)
        info = cls(spec, parents, refs)
        if spec.for_each is not None:  # a map step: the list it reads is an input too
            refs = [*refs, *find_references(spec.for_each, known)]
        info.needs_output = tuple(
            sorted({r.step for r in refs if r.root == "steps" and r.attr == "output" and r.step})
        )
        if spec.run_if:  # its references are parents (inferred edges) but not needed outputs
            info.condition = parse_condition(spec.run_if, known)
            refs = [*refs, *info.condition.references]
        return info, refs


class Plan:
    """A validated definition, pre-digested for runs.

    Attributes:
        spec: the definition.
        dag: its validated graph (explicit and inferred dependencies).
        version: the definition's version number (0 for a definition never registered).
        digest: the content hash of the definition.
        steps: each step's :class:`StepInfo`, in declaration order.
        graph: the steps' dependency graph, prepared: each run starts from a copy (call ``copy()`` on
            it only; it is never run itself).
        param_refs: (step, parameter name, raw reference) for every ``{{params.x}}``.
        secret_names: the names of the secrets the steps use (``{{secrets.NAME}}``).
    """

    __slots__ = ("dag", "digest", "graph", "param_refs", "secret_names", "spec", "steps", "version")

    def __init__(self, spec: WorkflowSpec, dag: WorkflowDAG, *, version: int = 0, digest: str = "") -> None:
        self.spec = spec
        self.dag = dag
        self.version = version
        self.digest = digest
        known = dag.steps.keys()
        self.steps: dict[str, StepInfo] = {}
        self.param_refs: list[tuple[str, str, str]] = []
        self.secret_names: set[str] = set()
        for name, step in dag.steps.items():
            parents = tuple(sorted(dag.dependencies_of(name)))
            self.steps[name], refs = StepInfo.digest(step, parents, known)
            self.param_refs.extend((name, str(r.attr), r.raw) for r in refs if r.root == "params")
            self.secret_names |= secret_names(refs)
        self.graph: DependencyGraph[str] = DependencyGraph()
        for name, info in self.steps.items():
            self.graph.add(name, info.parents)
        self.graph.prepare()
        self.graph.freeze()

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
