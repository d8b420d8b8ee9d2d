"""What the scheduler runs for a run's steps and items: :class:`RunCall` calls the action with the run's
context (a step's call in ``_workflow_dispatch`` and an item's share it); :class:`ItemCall` carries an
item's map step and index from its submission to its end, so its start and end reach the item's
columns without a name to parse; :func:`item_calls` builds the calls of a row of items of one map step.

Stateless: the item's state is its map step's (:class:`~._workflow_map.MapState`), guarded by the run's
lock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from codomyrmex_orchestration.core._results import json_output
from codomyrmex_orchestration.core._workflow_map import ItemEnd, MapState, split_item
from codomyrmex_orchestration.core.scheduler import TaskCall

if TYPE_CHECKING:
    from codomyrmex_orchestration.core._workflow_dispatch import RunDriver
    from codomyrmex_orchestration.core._workflow_run import RunState
    from codomyrmex_orchestration.core.actions import ActionContext
    from codomyrmex_orchestration.core.backends import ActionCall
    from codomyrmex_orchestration.core.scheduler import TaskState

__all__ = ["ItemCall", "RunCall", "item_calls"]


class RunCall:
    """The callable the scheduler runs for one step or item of a run: the action, called with the run's
    context (the sub-run starter, the depth, the driver's extras). Subclasses add the start/done
    callbacks (one object per queued call instead of three closures)."""

    __slots__ = ("cache_key", "driver", "func", "mark", "name", "params", "run")

    def __init__(
        self,
        driver: RunDriver,
        run: RunState,
        name: str,
        func: Callable[[dict[str, Any], ActionContext], Any],
        params: dict[str, Any],
        mark: int | None,
        cache_key: str | None = None,
    ) -> None:
        self.driver = driver
        self.run = run
        self.name = name
        self.func = func
        self.params = params
        self.mark = mark  # the store's write mark when it was cleared to run (its parents saved)
        self.cache_key = cache_key  # the step cache's key of this call (None: not cached; items never are)

    def __call__(self, ctx: ActionContext) -> Any:
        ctx.run_workflow = self.driver.run_child
        ctx.depth = self.run.depth
        for key, value in self.driver.extras.items():
            ctx.extras.setdefault(key, value)
        return json_output(self.func(self.params, ctx), self.name)


class ItemCall(RunCall):
    """One submitted item: its call and start/done callbacks, with its map step and index."""

    __slots__ = ("index", "map")

    def __init__(
        self,
        driver: RunDriver,
        run: RunState,
        state: MapState,
        index: int,
        name: str,
        func: Callable[[dict[str, Any], ActionContext], Any],
        params: dict[str, Any],
        mark: int | None,
    ) -> None:
        super().__init__(driver, run, name, func, params, mark)
        self.map = state
        self.index = index

    def started(self, state: TaskState) -> None:
        if self.mark is not None:
            self.driver.recorder.step_starting(self.mark)
        # Items are shown in their map step's record, not announced one by one.
        self.run.maps.item_started(self.map, self.index, state.attempts, state.started_at)

    def done(self, state: TaskState) -> None:
        run = self.run
        advance = run.step_finished(ItemEnd(self.map, self.index, self.name, state), held_slot=True)
        if advance.submit or advance.settled or advance.finished:  # most ends leave nothing to do
            self.driver.apply(run, advance)


def item_calls(
    driver: RunDriver,
    run: RunState,
    entries: Sequence[tuple[str, dict[str, Any]]],
    func: Callable[[dict[str, Any], ActionContext], Any],
    mark: int | None,
    action: Callable[[dict[str, Any]], ActionCall] | None,
    instant: bool = False,
) -> list[TaskCall]:
    """The scheduler calls of a row of items of one map step (``action``: the item as an action call,
    for a backend that runs it elsewhere; ``instant``: their calls return at once, see
    ``ActionDefinition.instant``)."""
    state = run.maps.maps[split_item(entries[0][0])[0]]
    calls: list[TaskCall] = []
    label = f"{run.record.workflow_name}."
    for name, params in entries:
        index = int(name[name.rindex("[") + 1 : -1])
        call = ItemCall(driver, run, state, index, name, func, params, mark)
        on_start = call.started if run.hears_starts else None  # else a snapshot asks the scheduler
        calls.append(
            TaskCall(
                call, label + name, name, on_start, call.done, action(params) if action else None, (), instant
            )
        )
    return calls
