"""A run's step definitions: the plan's steps and the steps added while the run goes, looked up by name
(an item's name gives its map step's definition).

:class:`RunSteps` owns the names of the run's steps in declaration order (added ones last) and what it
pre-digests of each added step, as :class:`~._workflow_plan.Plan` does for declared ones. It is written
under the run's lock (:meth:`RunSteps.add`) and read without it, for steps already cleared to run (so
added before they were cleared).
"""

from __future__ import annotations

from collections.abc import Collection

from codomyrmex_orchestration.core._workflow_map import RunMaps
from codomyrmex_orchestration.core._workflow_plan import Plan
from codomyrmex_orchestration.core.models import StepSpec, TaskPriority
from codomyrmex_orchestration.core.templating import Condition, find_references, parse_condition

__all__ = ["RunSteps", "StepDigest"]

#: What deciding a step needs: its spec, its parents, the steps whose outputs it reads, its parsed
#: ``run_if`` and whether its parameters hold templates.
StepDigest = tuple[StepSpec, tuple[str, ...], tuple[str, ...], Condition | None, bool]


class RunSteps:
    """The definitions of one run's steps.

    Args:
        plan: the pinned definition's plan.
        priority: the run's priority (a step without its own gets it).
        maps: the run's map steps (truthy once one expanded: until then no name is an item's).
    """

    __slots__ = ("_added", "maps", "names", "plan", "priority")

    def __init__(self, plan: Plan, priority: TaskPriority, maps: RunMaps) -> None:
        self.plan = plan
        self.priority = priority
        self.maps = maps
        self.names: dict[str, None] = dict.fromkeys(plan.dag.steps)
        self._added: dict[str, _AddedStep] = {}

    def add(self, step: StepSpec) -> None:
        """Take ``step`` (its name is new: the caller checked) as the run's last step."""
        self._added[step.name] = _AddedStep(step, self.names)
        self.names[step.name] = None

    def spec_of(self, name: str) -> StepSpec:
        if self.maps.maps:
            name = self.maps.step_of(name)  # an item runs its map step's spec
        added = self._added.get(name)
        return added.spec if added is not None else self.plan.dag.steps[name]

    def parents_of(self, name: str) -> tuple[str, ...]:
        if self.maps.maps:
            name = self.maps.step_of(name)
        added = self._added.get(name)
        return added.parents if added is not None else self.plan.parents[name]

    def priority_of(self, name: str) -> TaskPriority:
        if self.maps.maps:
            name = self.maps.step_of(name)
        added = self._added.get(name)
        if added is not None:
            return added.spec.priority if "priority" in added.spec.model_fields_set else self.priority
        return self.plan.priorities.get(name, self.priority)

    def condition_of(self, name: str) -> tuple[Condition | None, bool]:
        """A step's parsed ``run_if`` and whether its parameters hold templates."""
        added = self._added.get(name)
        if added is None:
            return self.plan.conditions.get(name), name in self.plan.templated
        return added.condition, added.templated

    def digest(self, name: str) -> StepDigest:
        added = self._added.get(name)
        if added is None:
            plan = self.plan
            return (
                plan.dag.steps[name],
                plan.parents[name],
                plan.needs_output[name],
                plan.conditions.get(name),
                name in plan.templated,
            )
        return added.spec, added.parents, added.needs_output, added.condition, added.templated


class _AddedStep:
    """What :meth:`RunSteps.add` pre-digests of a step, as :class:`Plan` does for declared ones."""

    __slots__ = ("condition", "needs_output", "parents", "spec", "templated")

    def __init__(self, spec: StepSpec, known: Collection[str]) -> None:
        self.spec = spec
        self.parents = tuple(sorted(set(spec.dependencies)))
        refs = find_references(spec.parameters, known)
        self.templated = bool(refs)
        if spec.for_each is not None:  # a map step: the list it reads is an input too
            refs = [*refs, *find_references(spec.for_each, known)]
        self.condition: Condition | None = None
        if spec.run_if:
            self.condition = parse_condition(spec.run_if, known)
            refs = [*refs, *self.condition.references]
        self.needs_output = tuple(
            sorted({r.step for r in refs if r.root == "steps" and r.attr == "output" and r.step})
        )
