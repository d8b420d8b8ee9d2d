"""Map steps: a step with ``for_each`` runs its action once per item of a list.

:class:`RunMaps` holds the map steps one run has expanded and carries out their items' transitions;
a :class:`MapState` is one expansion: the items, each item's result and the indices waiting for a slot
under the step's ``max_parallel``. Both belong to their run's
:class:`~codomyrmex_orchestration.core._workflow_run.RunState` and are guarded by that run's lock.
Items are nodes of the run's dependency graph named ``<step>[<index>]`` (a step name cannot hold
brackets); they share the step's spec (nothing is copied per item) and go through the one scheduler
like steps.

The rest of the module is stateless: the static checks of ``for_each``, the map step's output, and
the compact stored form. A durable store keeps one row per item (status, output, timing; the row of
the map step itself holds neither items nor output) and :func:`fold_items` rebuilds the map step's
result from those rows when a run is read back.
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from codomyrmex_orchestration.core.models import (
    ErrorInfo,
    ItemResult,
    MapItems,
    StepResult,
    StepSpec,
    TaskStatus,
    utcnow,
)
from codomyrmex_orchestration.core.templating import Template, TemplateContext, resolve
from codomyrmex_orchestration.errors import InvalidInputError, LimitExceededError, OrchestrationError

if TYPE_CHECKING:
    from codomyrmex_orchestration.core._workflow_run import Advance, RunState
    from codomyrmex_orchestration.core.scheduler import TaskState

__all__ = [
    "FOR_EACH_LABEL",
    "MAX_MAP_ITEMS_SETTING",
    "WAVE",
    "ItemEnd",
    "MapState",
    "RunMaps",
    "carried",
    "fold_items",
    "is_item",
    "item_name",
    "map_output",
    "map_problems",
    "resolve_for_each",
    "split_item",
    "stored_form",
]

MAX_MAP_ITEMS_SETTING = "CODOMYRMEX_MAX_MAP_ITEMS"
#: How a definition's graph marks a map step (a run's graph adds the item count).
FOR_EACH_LABEL = "for each"
#: Items of a map step without ``max_parallel`` in the scheduler at once, at most, unless the scheduler
#: has more than half as many workers (see ``MapState.room`` and ``RunMaps.wave``).
WAVE = 128
#: Failed items named in a map step's error, at most.
_ERRORS_SHOWN = 5
_ITEM_FIELDS = ("status", "output", "error", "attempts", "started_at", "finished_at", "duration_seconds")
_ROW_FIELDS = (*_ITEM_FIELDS, "skipped_reason")
_ALL_ITEM_FIELDS = set(ItemResult.model_fields)
_new_item = ItemResult.__new__
# What model_construct sets a model's attributes with (BaseModel.__setattr__ would validate).
_set = object.__setattr__


def item_name(step: str, index: int) -> str:
    """The graph node (and stored row) of item ``index`` of map step ``step``."""
    return f"{step}[{index}]"


def is_item(name: str) -> bool:
    """Whether ``name`` is an item node (step names cannot end with ``]``)."""
    return name.endswith("]")


def split_item(name: str) -> tuple[str, int]:
    """``("step", index)`` from an item node's name."""
    step, _, rest = name.rpartition("[")
    return step, int(rest[:-1])


# --------------------------------------------------------------------------- static checks


def map_problems(name: str, step: StepSpec) -> list[str]:
    """What is wrong with ``step``'s ``for_each`` / ``max_parallel`` as written (no run needed)."""
    problems: list[str] = []
    for_each = step.for_each
    if for_each is None:
        problems.append(f"step {name!r}: max_parallel applies only to a step with for_each")
    elif isinstance(for_each, str):
        text = for_each.strip()
        if not (text.startswith("{{") and text.endswith("}}") and text.count("{{") == 1):
            problems.append(
                f"step {name!r} for_each: {for_each[:80]!r} is neither a list nor one {{{{...}}}} reference "
                "naming a list, e.g. '{{steps.list.output.files}}' or '{{params.names}}'"
            )
    return problems


def resolve_for_each(name: str, step: StepSpec, ctx: TemplateContext, limit: int) -> list[Any]:
    """The items of map step ``name`` in this run.

    Raises:
        TemplateError: the reference does not resolve.
        InvalidInputError: it resolves to something other than a list.
        LimitExceededError: more items than ``limit`` (``CODOMYRMEX_MAX_MAP_ITEMS``).
    """
    for_each = step.for_each
    values = resolve(for_each, ctx)  # a literal list's items may hold references too
    if not isinstance(values, list):
        kind = "null" if values is None else type(values).__name__
        raise InvalidInputError("for_each", f"step {name!r}: {for_each!r} is a {kind}, not a list")
    if len(values) > limit:
        raise LimitExceededError(
            MAX_MAP_ITEMS_SETTING, limit, len(values), f"the number of items of map step {name!r}"
        )
    return values


# --------------------------------------------------------------------------- one expansion


class ItemEnd(NamedTuple):
    """A scheduled item's end as the scheduler reports it: the item's node and its task's live state,
    read inside the scheduler's ``on_done`` only. It settles into the item's compact row directly (no
    ``StepResult`` per item, unless a durable store keeps the row)."""

    name: str
    state: TaskState


class _ItemRow:
    """An item's live state in a running map step: what its status, timings and output need, in slots
    (about 100 bytes where a ``StepResult`` model costs over a kilobyte: a 100,000-item map holds one
    per item until its step ends). Pydantic rows are made from it only where one leaves the run: the
    durable store's item rows, and the ``ItemResult`` views."""

    __slots__ = _ROW_FIELDS

    def __init__(self) -> None:
        self.status = TaskStatus.PENDING
        self.output: Any = None
        self.error: ErrorInfo | None = None
        self.attempts = 0
        self.started_at: datetime | None = None
        self.finished_at: datetime | None = None
        self.duration_seconds: float | None = None
        self.skipped_reason: str | None = None

    @classmethod
    def of(cls, source: StepResult | ItemResult) -> _ItemRow:
        row = cls()
        for field in _ROW_FIELDS:
            setattr(row, field, getattr(source, field))
        return row

    def end(self, state: TaskState) -> None:
        """Take the final fields of the item's task."""
        self.status = state.status
        self.output = state.result if state.status is TaskStatus.COMPLETED else None
        self.error = state.error
        self.attempts = state.attempts
        self.started_at = state.started_at
        self.finished_at = state.finished_at or utcnow()
        self.duration_seconds = state.duration_seconds
        self.skipped_reason = None

    def step_result(self, name: str) -> StepResult:
        """The row as a durable store keeps it (named ``<step>[<index>]``)."""
        return StepResult(name=name, **{f: getattr(self, f) for f in _ROW_FIELDS})

    def item(self, index: int) -> ItemResult:
        """The row as the run record shows it. Built unvalidated (the fields are typed already), as
        ``model_construct`` builds a model but without its per-field search for aliases and defaults
        (a 100,000-item map builds 100,000 of these at its end), and sharing one fields-set that
        names every field: a set of its own costs each item 728 bytes, more than the rest of the
        model, and adding a field name to this one changes nothing."""
        item = _new_item(ItemResult)
        fields = {
            "index": index,
            "status": self.status,
            "output": self.output,
            "error": self.error,
            "attempts": self.attempts,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_seconds": self.duration_seconds,
            "skipped_reason": self.skipped_reason,
        }
        _set(item, "__dict__", fields)
        _set(item, "__pydantic_fields_set__", _ALL_ITEM_FIELDS)
        _set(item, "__pydantic_extra__", None)
        _set(item, "__pydantic_private__", None)
        return item


class MapState:
    """One map step expanded in a run: its items and their results (guarded by the run's lock).

    Attributes:
        name: the map step.
        spec: its spec, shared by every item.
        values: the items.
        results: each item's live state (a compact :class:`_ItemRow`), ``None`` until it has one.
        pending: indices cleared by the graph, waiting for a slot under ``limit``.
        slots: indices decided and not final (each holds one of ``limit``'s slots).
        limit: the step's ``max_parallel`` (``None``: no bound of its own).
        wave: without ``limit``, the most items in the scheduler at once.
        left: items not final yet.
        started_at: when the step was expanded.
        context: what its items' templates resolve against (its ``item`` set per item), once needed.
        template: its parameters parsed once for every item (``parsed``); ``None`` when they do not
            parse (each item then resolves them itself, and fails with the error).
    """

    __slots__ = (
        "context",
        "left",
        "limit",
        "name",
        "parsed",
        "pending",
        "results",
        "slots",
        "spec",
        "start_mono",
        "started_at",
        "template",
        "values",
        "wave",
    )

    def __init__(
        self, name: str, spec: StepSpec, values: list[Any], carried: MapItems | None, wave: int = WAVE
    ) -> None:
        self.name = name
        self.spec = spec
        self.values = values
        self.results: list[_ItemRow | None] = [None] * len(values)
        if carried is not None and carried.total == len(values):  # a resume keeps completed items
            for kept in carried.items:
                if kept.status is TaskStatus.COMPLETED and 0 <= kept.index < len(values):
                    self.results[kept.index] = _ItemRow.of(kept)
        self.pending: deque[int] = deque()
        self.slots: set[int] = set()
        self.limit = spec.max_parallel
        self.wave = wave
        self.left = sum(1 for r in self.results if r is None)
        self.started_at = utcnow()
        self.start_mono = time.monotonic()
        self.context: TemplateContext | None = None
        self.template: Template | None = None
        self.parsed = False

    def parameters(self, ctx: TemplateContext) -> Any:
        """The step's parameters resolved for the item in ``ctx``, parsed on the first call only."""
        if not self.parsed:
            self.parsed = True
            try:
                self.template = Template(self.spec.parameters, ctx.steps)
            except OrchestrationError:
                self.template = None
        if self.template is None:
            return resolve(self.spec.parameters, ctx)
        return self.template.resolve(ctx)

    def to_run(self) -> Iterator[int]:
        """The indices that have no kept result."""
        return (i for i, r in enumerate(self.results) if r is None)

    def room(self) -> int:
        """How many pending items may be decided now. Under ``max_parallel``: one per free slot. Without
        it: items go to the scheduler in waves of ``wave``, the next once half of one has finished, so
        a 100,000-item map keeps about ``wave`` scheduler tasks alive, not one per item (the workers run
        a few at a time whatever the queue holds). An item's task, its call and its parameters live
        from its wave's submission to its end: in small waves they die young, which spares the
        collector (they would otherwise outlive a generation-1 collection and add to the full ones)."""
        held = len(self.slots)
        if self.limit is not None:
            return self.limit - held
        wave = self.wave
        return wave - held if held <= wave // 2 else 0

    def settle(self, index: int, result: StepResult | ItemEnd) -> bool:
        """Record item ``index``'s final result; True when it was the last one."""
        previous = self.results[index]
        if previous is None or not previous.status.is_terminal:
            self.left -= 1
        if isinstance(result, ItemEnd):
            self.live(index).end(result.state)
        else:
            self.results[index] = _ItemRow.of(result)
        self.slots.discard(index)
        return self.left == 0

    def live(self, index: int) -> _ItemRow:
        """The item's row, made on its first start."""
        row = self.results[index]
        if row is None:
            row = self.results[index] = _ItemRow()
        return row

    def view(self) -> MapItems:
        """The items as the run record shows them."""
        items = [ItemResult(index=i) if r is None else r.item(i) for i, r in enumerate(self.results)]
        counts: dict[str, int] = {}
        for item in items:
            counts[item.status.value] = counts.get(item.status.value, 0) + 1
        return MapItems(total=len(items), counts=counts, required=self.spec.required, items=items)

    def result(self, *, cancelled: bool) -> StepResult:
        """The map step's final result, once every item is final."""
        view = self.view()
        failed = [i for i in view.items if i.status in _FAILED]
        status, output, error = TaskStatus.COMPLETED, map_output(view.items, required=view.required), None
        if cancelled:
            status, output = TaskStatus.CANCELLED, None
        elif failed and view.required:
            shown = "; ".join(
                f"[{i.index}] {i.error.message if i.error else i.status.value}"
                for i in failed[:_ERRORS_SHOWN]
            )
            more = f"; and {len(failed) - _ERRORS_SHOWN} more" if len(failed) > _ERRORS_SHOWN else ""
            message = f"{len(failed)} of {view.total} items failed: {shown}{more}"
            status, output, error = TaskStatus.FAILED, None, ErrorInfo(message=message, type="MapItemsFailed")
        return StepResult(
            name=self.name,
            status=status,
            output=output,
            error=error,
            attempts=max((i.attempts for i in view.items), default=0),
            started_at=self.started_at,
            finished_at=utcnow(),
            duration_seconds=round(time.monotonic() - self.start_mono, 6),
            items=view,
        )


_FAILED = frozenset({TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED})


class RunMaps:
    """The map steps one run has expanded, and the transitions of their items. Every method but
    :meth:`step_of` runs under the run's lock, called by the run's own transitions."""

    __slots__ = ("limit", "maps", "run", "wave")

    def __init__(self, run: RunState, limit: int) -> None:
        # A weak back-reference: the run owns its maps, and a cycle between them would keep every
        # finished run (its record, its graph) alive until the garbage collector's next full pass.
        self.run = cast("RunState", weakref.proxy(run))
        self.limit = limit  # most items per map step
        self.maps: dict[str, MapState] = {}
        # Without max_parallel, the items of a map step in the scheduler at once: WAVE, or twice the
        # scheduler's workers if that is more, so that every worker has an item to take (RunState.begin).
        self.wave = WAVE

    def __bool__(self) -> bool:
        return bool(self.maps)

    @staticmethod
    def step_of(name: str) -> str:
        """The step an item belongs to (a step's own name for a step). Needs no lock."""
        return name[: name.rindex("[")] if name.endswith("]") else name  # split_item without the int

    def item_status(self, name: str) -> TaskStatus:
        step, index = split_item(name)
        result = self.maps[step].results[index]
        return result.status if result is not None else TaskStatus.PENDING

    def started(self, name: str, attempt: int, started_at: datetime | None) -> None:
        """Attempt ``attempt`` of item ``name`` started (as ``RunState._apply_starts`` for a step)."""
        step, index = split_item(name)
        row = self.maps[step].live(index)
        if row.status.is_terminal:  # cancelled between the scheduler's start and now
            return
        row.attempts = attempt
        row.started_at = row.started_at or started_at or utcnow()
        row.status = TaskStatus.RUNNING
        if self.run.saves_steps:
            self.run.save(row.step_result(name))

    def items_of(self, name: str, step: StepSpec) -> tuple[TaskStatus, str | None, Any]:
        """A map step cleared by the graph: READY with its items, or FAILED (why in the error)."""
        try:
            values = resolve_for_each(name, step, self.run.template_context(), self.limit)
            return TaskStatus.READY, None, values
        except OrchestrationError as exc:
            return TaskStatus.FAILED, None, ErrorInfo.from_exception(exc)

    def expand(self, name: str, values: list[Any], advance: Advance) -> None:
        """Add one graph node per item still to run; the step ends when its last item does."""
        run = self.run
        spec = run.spec_of(name)
        state = self.maps[name] = MapState(name, spec, values, run.record.steps[name].items, self.wave)
        row = StepResult(
            name=name,
            status=TaskStatus.RUNNING,
            started_at=state.started_at,
            items=MapItems(total=len(values), required=spec.required),
        )
        run.record.steps[name] = row
        run.save(row)
        if state.left == 0:  # an empty list, or every item kept by a resume
            run.settle(state.result(cancelled=run.cancelled), advance)
            return
        for index in state.to_run():
            run.graph.add(item_name(name, index))

    def ready(self, name: str) -> None:
        step, index = split_item(name)
        self.maps[step].pending.append(index)

    def pump(self, advance: Advance) -> None:
        """Decide the items that have a slot under their step's ``max_parallel`` (all of them once the
        run is cancelled: they settle at once)."""
        run = self.run
        for state in self.maps.values():
            pending = state.pending
            for _ in range(len(pending) if run.cancelled else min(len(pending), state.room())):
                index = pending.popleft()
                node = item_name(state.name, index)
                status, reason, payload = self._decide(state, index)
                if status is TaskStatus.READY:
                    state.slots.add(index)
                    run.admit(node, payload, advance)
                else:
                    result = StepResult(name=node, status=status, skipped_reason=reason, error=payload)
                    result.finished_at = utcnow()
                    self.settle(result, advance)

    def settle(self, result: StepResult | ItemEnd, advance: Advance) -> None:
        """An item's final result: saved as its own row; its step settles with the last one."""
        run = self.run
        name = result.name
        step, index = split_item(name)
        state = self.maps[step]
        last = state.settle(index, result)
        run.task_ids.pop(name, None)  # only cancel reads it: 100,000 entries kept for nothing
        if isinstance(result, StepResult):
            run.save(result)
        elif run.saves_steps:
            run.save(state.live(index).step_result(name))
        run.graph.done(name)
        if last:
            run.settle(state.result(cancelled=run.cancelled), advance)

    def show(self, steps: dict[str, StepResult]) -> None:
        """Put the live items of running map steps into a snapshot's ``steps``."""
        for name, state in self.maps.items():
            if not steps[name].status.is_terminal:
                steps[name] = steps[name].model_copy(update={"items": state.view()})

    def _decide(self, state: MapState, index: int) -> tuple[TaskStatus, str | None, Any]:
        """READY with the item's parameters, or why it will not run (as ``RunState._decide``)."""
        run = self.run
        if run.cancelled:
            return TaskStatus.CANCELLED, "run cancelled", None
        condition, templated = run.condition_of(state.name)
        spec = state.spec
        if condition is None and not templated:
            return TaskStatus.READY, None, spec.parameters
        ctx = state.context
        if ctx is None:  # one per map step: the run's steps are a live view, the item changes
            ctx = state.context = run.template_context()
        ctx.item = (state.values[index], index)
        try:
            if condition is not None and not condition.evaluate(ctx):
                return TaskStatus.SKIPPED, f"run_if is false: {spec.run_if}", None
            return TaskStatus.READY, None, state.parameters(ctx) if templated else spec.parameters
        except OrchestrationError as exc:
            return TaskStatus.FAILED, None, ErrorInfo.from_exception(exc)


def carried(name: str, previous: StepResult | None) -> StepResult:
    """The placeholder a resumed run starts a step with: a map step keeps its items (the completed
    ones are not run again)."""
    if previous is not None and previous.items is not None:
        return StepResult(name=name, items=previous.items)
    return StepResult(name=name)


def _as_item(index: int, row: StepResult | None) -> ItemResult:
    if row is None:
        return ItemResult(index=index)
    fields = {f: getattr(row, f) for f in _ITEM_FIELDS}
    return ItemResult(index=index, skipped_reason=row.skipped_reason, **fields)


# --------------------------------------------------------------------------- output and storage


def map_output(items: Sequence[ItemResult], *, required: bool) -> Any:
    """A map step's output: the completed items' outputs in item order (a skipped item has none).

    A step with ``required: false`` lets items fail: its output is then always
    ``{"outputs": [...], "failed": [{"index": i, "status": "failed", "error": "..."}]}``, so its
    shape depends on the definition, never on how a run went.
    """
    outputs = [i.output for i in items if i.status is TaskStatus.COMPLETED]
    if required:
        return outputs
    failed = [
        {"index": i.index, "status": i.status.value, "error": i.error.message if i.error else None}
        for i in items
        if i.status in _FAILED
    ]
    return {"outputs": outputs, "failed": failed}


def stored_form(step: StepResult) -> StepResult:
    """What a durable store keeps of a map step's own row: its items and output live in item rows."""
    if step.items is None:
        return step
    return step.model_copy(update={"output": None, "items": step.items.model_copy(update={"items": []})})


def fold_items(steps: Mapping[str, StepResult]) -> dict[str, StepResult]:
    """A run's stored rows back into steps: item rows become their map step's ``items``, and a
    completed map step's output is rebuilt from them."""
    folded: dict[str, StepResult] = {}
    rows: dict[str, dict[int, StepResult]] = {}
    for name, step in steps.items():
        if is_item(name):
            base, index = split_item(name)
            rows.setdefault(base, {})[index] = step
        else:
            folded[name] = step
    for name, step in folded.items():
        if step.items is None:
            continue
        found = rows.get(name, {})
        if found:
            items = [_as_item(i, found.get(i)) for i in range(max(step.items.total, max(found) + 1))]
            counts: dict[str, int] = {}
            for item in items:
                counts[item.status.value] = counts.get(item.status.value, 0) + 1
            step.items = step.items.model_copy(update={"items": items, "counts": counts})
        if step.status is TaskStatus.COMPLETED and step.output is None:
            step.output = map_output(step.items.items, required=step.items.required)
    return folded
