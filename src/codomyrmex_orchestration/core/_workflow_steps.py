"""A run's step definitions: the plan's steps and the steps added while the run goes, looked up by name
(an item's name gives its map step's definition).

:class:`RunSteps` owns the names of the run's steps in declaration order (added ones last) and each
step's :class:`~._workflow_plan.StepInfo` (the plan's, shared by every run of the definition, until a
step is added: then the run gets its own table). It is written under the run's lock
(:meth:`RunSteps.add`) and read without it, for steps already cleared to run (so added before they were
cleared); and the scheduler settings its steps are submitted with (``settings``).
"""

from __future__ import annotations

from codomyrmex_orchestration.core._task_factory import TaskSettings
from codomyrmex_orchestration.core._workflow_map import RunMaps
from codomyrmex_orchestration.core._workflow_plan import Plan, StepInfo
from codomyrmex_orchestration.core.models import StepSpec, TaskPriority
from codomyrmex_orchestration.core.templating import Condition

__all__ = ["RunSteps"]


class RunSteps:
    """The definitions of one run's steps.

    Args:
        plan: the pinned definition's plan.
        priority: the run's priority (a step without its own gets it).
        maps: the run's map steps (truthy once one expanded: until then no name is an item's).
    """

    __slots__ = ("_infos", "_own", "maps", "names", "priority", "settings")

    def __init__(self, plan: Plan, priority: TaskPriority, maps: RunMaps) -> None:
        self.priority = priority
        self.maps = maps
        # The run's checked scheduler settings by StepInfo.profile (most steps share one), filled by
        # whoever submits a step first. Read and written without a lock: a dict's get and set are atomic
        # in CPython, with the GIL or free-threaded, and two threads missing at once store equal values.
        self.settings: dict[tuple[object, ...], TaskSettings] = {}
        self.names: dict[str, None] = dict.fromkeys(plan.steps)
        self._infos = plan.steps  # the plan's own table, until a step is added
        self._own = False

    def add(self, step: StepSpec) -> None:
        """Take ``step`` (its name is new: the caller checked) as the run's last step."""
        parents = tuple(sorted(set(step.dependencies)))
        info, _ = StepInfo.digest(step, parents, self.names)
        if not self._own:
            self._infos, self._own = dict(self._infos), True
        self._infos[step.name] = info
        self.names[step.name] = None

    def info(self, name: str) -> StepInfo:
        """What the run needs of step ``name`` (an item's: its map step's)."""
        if self.maps.maps:
            name = self.maps.step_of(name)
        return self._infos[name]

    def spec_of(self, name: str) -> StepSpec:
        return self.info(name).spec

    def parents_of(self, name: str) -> tuple[str, ...]:
        return self.info(name).parents

    def priority_of(self, info: StepInfo) -> TaskPriority:
        return info.priority if info.priority is not None else self.priority

    def condition_of(self, name: str) -> tuple[Condition | None, bool]:
        """A step's parsed ``run_if`` and whether its parameters hold templates."""
        info = self._infos[name]
        return info.condition, info.templated
