"""Map steps: a step with ``for_each`` runs its action once per item of a list.

:class:`RunMaps` holds the map steps one run has expanded and carries out their items' transitions;
a :class:`MapState` is one expansion: the items, their live state in columns and the cursor of those
waiting for a slot under the step's ``max_parallel`` or wave. Both belong to their run's
:class:`~codomyrmex_orchestration.core._workflow_run.RunState` and are guarded by that run's lock.
Items are nodes of the run's dependency graph named ``<step>[<index>]`` (a step name cannot hold
brackets), added as slots open and forgotten once done (see :class:`RunMaps`); they share the step's
spec (nothing is copied per item) and go through the one scheduler like steps.

The rest of the module is stateless: the static checks of ``for_each``. A map step's output, the
compact form a durable store keeps (one row per item) and its folding back, and pages of items are
``_map_items``'s.
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from collections.abc import Collection, Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from codomyrmex_orchestration.core._map_items import (
    FAILED_ITEM,
    is_item,
    item_name,
    map_output,
    positions,
    split_item,
)
from codomyrmex_orchestration.core.models import (
    ErrorInfo,
    ItemResult,
    ItemWindow,
    MapItems,
    StepResult,
    StepSpec,
    TaskStatus,
    trusted,
    utcnow,
)
from codomyrmex_orchestration.core.templating import Condition, Template, TemplateContext, resolve
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
    "is_item",
    "item_name",
    "map_problems",
    "resolve_for_each",
    "split_item",
    "too_many_items",
]

MAX_MAP_ITEMS_SETTING = "CODOMYRMEX_MAX_MAP_ITEMS"
#: How a definition's graph marks a map step (a run's graph adds the item count).
FOR_EACH_LABEL = "for each"
#: Items of a map step without ``max_parallel`` in the scheduler at once, at most, unless the scheduler
#: has more than half as many workers (see ``MapState.room`` and ``RunMaps.wave``).
WAVE = 128
#: Failed items named in a map step's error, at most.
_ERRORS_SHOWN = 5
_ALL_ITEM_FIELDS = set(ItemResult.model_fields)


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


def resolve_for_each(name: str, step: StepSpec, ctx: TemplateContext, limit: int, max_size: int) -> list[Any]:
    """The items of map step ``name`` in this run (``max_size``: the template expansion budget).

    Raises:
        TemplateError: the reference does not resolve.
        InvalidInputError: it resolves to something other than a list.
        LimitExceededError: more items than ``limit`` (``CODOMYRMEX_MAX_MAP_ITEMS``).
    """
    for_each = step.for_each
    values = resolve(for_each, ctx, max_size=max_size)  # a literal list's items may hold references too
    if not isinstance(values, list):
        kind = "null" if values is None else type(values).__name__
        raise InvalidInputError("for_each", f"step {name!r}: {for_each!r} is a {kind}, not a list")
    if len(values) > limit:
        raise too_many_items(name, len(values), limit)
    return values


def too_many_items(name: str, count: int, limit: int) -> LimitExceededError:
    """The refusal of map step ``name`` with ``count`` items, over ``limit``: in a run as its list resolves,
    and for a literal list when the definition is validated."""
    what = f"the number of items of map step {name!r}"
    return LimitExceededError(MAX_MAP_ITEMS_SETTING, limit, count, what)


# --------------------------------------------------------------------------- one expansion


class ItemEnd(NamedTuple):
    """A scheduled item's end as the scheduler reports it: its map step, its index (``position``: a
    tuple's ``index`` is a method), its node and its task's live state, read inside the scheduler's
    ``on_done`` only. It settles into the item's columns directly (no ``StepResult`` per item, unless a
    durable store keeps the row)."""

    map: MapState
    position: int
    name: str
    state: TaskState


class MapState:
    """One map step expanded in a run: its items and their results (guarded by the run's lock).

    An item's live state is kept in columns, one list per field indexed by the item (``status``,
    ``output``, ``attempts``, ``started``, ``finished``, ``duration``; errors and skip reasons in dicts
    by index, as few items have one): about 50 bytes an item, and no object per item for the garbage
    collector to walk, where a ``StepResult`` model costs over a kilobyte. Pydantic rows are made from
    the columns only where one leaves the run: the durable store's item rows, and the ``ItemResult``
    views.

    Attributes:
        name: the map step.
        spec: its spec, shared by every item.
        values: the items.
        status, output, attempts, started, finished, duration, errors, reasons: the columns.
        next: items before it are in the graph or done, or were kept by a resume.
        undecided: items not in the graph yet (they wait for a slot under ``limit`` or ``wave``).
        held: items in the graph and not final (each holds one of ``limit``'s slots).
        limit: the step's ``max_parallel`` (``None``: no bound of its own).
        wave: without ``limit``, the most items in the scheduler at once.
        left: items not final yet.
        from_cache: items answered from the step cache (all of them: the step says it is ``cached``).
        started_at: when the step was expanded.
        context: what its items' templates resolve against (its ``item`` set per item), once needed.
        condition, templated: its parsed ``run_if``, and whether its parameters hold templates.
        template: its parameters parsed once for every item; ``None`` when they do not parse (each
            item then resolves them itself, and fails with the error) or hold no template.
    """

    __slots__ = (
        "attempts",
        "condition",
        "context",
        "duration",
        "errors",
        "finished",
        "from_cache",
        "held",
        "left",
        "limit",
        "name",
        "next",
        "output",
        "reasons",
        "spec",
        "start_mono",
        "started",
        "started_at",
        "status",
        "template",
        "templated",
        "undecided",
        "values",
        "wave",
    )

    def __init__(
        self, name: str, spec: StepSpec, values: list[Any], carried: MapItems | None, wave: int = WAVE
    ) -> None:
        self.name = name
        self.spec = spec
        self.values = values
        n = len(values)
        self.status: list[TaskStatus] = [_PENDING] * n
        self.output: list[Any] = [None] * n
        self.attempts: list[int] = [0] * n
        self.started: list[datetime | None] = [None] * n
        self.finished: list[datetime | None] = [None] * n
        self.duration: list[float | None] = [None] * n
        self.errors: dict[int, ErrorInfo] = {}
        self.reasons: dict[int, str] = {}
        kept = 0
        if carried is not None and carried.total == n:  # a resume keeps completed items
            for item in carried.items:
                if item.status is TaskStatus.COMPLETED and 0 <= item.index < n:
                    kept += self.status[item.index] is _PENDING
                    self._take(item.index, item)
        self.next = 0
        self.undecided = self.left = n - kept
        self.held = 0
        self.from_cache = 0
        self.limit = spec.max_parallel
        self.wave = wave
        self.started_at = utcnow()
        self.start_mono = time.monotonic()
        self.context: TemplateContext | None = None
        self.condition: Condition | None = None
        self.templated = False
        self.template: Template | None = None

    def parse(self, condition: Condition | None, templated: bool, known: Collection[str]) -> None:
        """Take the step's parsed ``run_if``, and parse its parameters once for every item if they hold
        templates (``known``: the run's step names)."""
        self.condition, self.templated = condition, templated
        if not templated:
            return
        try:
            self.template = Template(self.spec.parameters, known)
        except OrchestrationError:
            self.template = None

    def take(self, n: int) -> list[int]:
        """The next ``n`` items to add to the graph, in index order (items kept by a resume are passed
        over)."""
        taken: list[int] = []
        index, status = self.next, self.status
        for _ in range(n):
            while status[index] is not _PENDING:
                index += 1
            taken.append(index)
            index += 1
        self.next = index
        self.undecided -= n
        return taken

    def room(self) -> int:
        """How many more items may join the graph now. Under ``max_parallel``: one per free slot. Without
        it: items go to the scheduler in waves of ``wave``, the next once half of one has finished, so
        a 100,000-item map keeps about ``wave`` scheduler tasks alive, not one per item (the workers run
        a few at a time whatever the queue holds). An item's task, its call and its parameters live
        from its wave's submission to its end: in small waves they die young, which spares the
        collector (they would otherwise outlive a generation-1 collection and add to the full ones)."""
        held = self.held
        if self.limit is not None:
            return self.limit - held
        wave = self.wave
        return wave - held if held <= wave // 2 else 0

    def start(self, index: int, attempt: int, started_at: datetime | None) -> bool:
        """Attempt ``attempt`` of item ``index`` started; False if the item is final already (cancelled
        between the scheduler's start and now)."""
        status = self.status[index]
        if status is not _PENDING and status is not _RUNNING and status is not _READY:
            return False
        self.attempts[index] = attempt
        self.started[index] = self.started[index] or started_at or utcnow()
        self.status[index] = _RUNNING
        return True

    def end(self, index: int, state: TaskState) -> bool | None:
        """Item ``index`` ended with its task's final fields: True when it was the last one, None when
        the item was final already (cancelled between its task's end and now: the end is ignored)."""
        status = self.status[index]
        if status is not _PENDING and status is not _RUNNING and status is not _READY:
            return None
        status = self.status[index] = state.status
        self.output[index] = state.result if status is _COMPLETED else None
        error = state.error
        if error is not None:
            self.errors[index] = error
        self.attempts[index] = state.attempts
        self.started[index] = state.started_at
        self.finished[index] = state.finished_at or utcnow()
        self.duration[index] = state.duration_seconds
        self.left -= 1
        self.held -= 1
        return self.left == 0

    def settle(self, index: int, result: StepResult, *, held: bool = True) -> bool:
        """Record item ``index``'s final result; True when it was the last one."""
        self._take(index, result)
        self.from_cache += result.cached
        self.left -= 1
        self.held -= held  # an item that never had a node held no slot
        return self.left == 0

    def _take(self, index: int, source: StepResult | ItemResult) -> None:
        self.status[index] = source.status
        self.output[index] = source.output
        self.attempts[index] = source.attempts
        self.started[index] = source.started_at
        self.finished[index] = source.finished_at
        self.duration[index] = source.duration_seconds
        if source.error is not None:
            self.errors[index] = source.error
        if source.skipped_reason is not None:
            self.reasons[index] = source.skipped_reason

    def step_result(self, index: int) -> StepResult:
        """Item ``index`` as a durable store keeps it (named ``<step>[<index>]``)."""
        return StepResult(
            name=item_name(self.name, index),
            status=self.status[index],
            output=self.output[index],
            error=self.errors.get(index),
            attempts=self.attempts[index],
            started_at=self.started[index],
            finished_at=self.finished[index],
            duration_seconds=self.duration[index],
            skipped_reason=self.reasons.get(index),
        )

    def items(self, indexes: Sequence[int] | None = None) -> list[ItemResult]:
        """Every item (or those of ``indexes``) as the run record shows it, built unvalidated (the fields
        are typed already; a 100,000-item map builds 100,000 of these at its end) with one shared
        fields-set (see :func:`~codomyrmex_orchestration.core.models.trusted`: a set of its own costs
        each item 728 bytes)."""
        errors, reasons = self.errors, self.reasons
        columns: Iterable[tuple[int, TaskStatus, Any, int, datetime | None, datetime | None, float | None]]
        if indexes is None:
            columns = zip(
                range(len(self.status)),
                self.status,
                self.output,
                self.attempts,
                self.started,
                self.finished,
                self.duration,
                strict=True,
            )
        else:
            status, output, attempts = self.status, self.output, self.attempts
            started, finished, duration = self.started, self.finished, self.duration
            columns = (
                (i, status[i], output[i], attempts[i], started[i], finished[i], duration[i]) for i in indexes
            )
        out: list[ItemResult] = []
        for index, status_, output_, attempts_, started_, finished_, duration_ in columns:
            fields = {
                "index": index,
                "status": status_,
                "output": output_,
                "error": errors.get(index) if errors else None,
                "attempts": attempts_,
                "started_at": started_,
                "finished_at": finished_,
                "duration_seconds": duration_,
                "skipped_reason": reasons.get(index) if reasons else None,
            }
            out.append(trusted(ItemResult, fields, _ALL_ITEM_FIELDS))
        return out

    def counts(self) -> dict[str, int]:
        """Items by status (list.count compares by identity first: no hashing of the enum per item)."""
        status = self.status
        found = {s.value: status.count(s) for s in TaskStatus}
        return {k: n for k, n in found.items() if n}

    def view(self, window: ItemWindow | None = None) -> MapItems:
        """The items as the run record shows them: every one, or only those of ``window`` (the counts
        cover every item either way)."""
        listed = self.items() if window is None else self.items(positions(self.status, window))
        return MapItems(
            total=len(self.status), counts=self.counts(), required=self.spec.required, items=listed
        )

    def result(self, *, cancelled: bool) -> StepResult:
        """The map step's final result, once every item is final."""
        view = self.view()
        status, output, error = TaskStatus.COMPLETED, None, None
        if cancelled:
            status = TaskStatus.CANCELLED
        elif view.required and any(s.value in view.counts for s in _FAILED):
            failed = [i for i, s in enumerate(self.status) if s in _FAILED]
            shown = "; ".join(
                f"[{i}] {self.errors[i].message if i in self.errors else self.status[i].value}"
                for i in failed[:_ERRORS_SHOWN]
            )
            more = f"; and {len(failed) - _ERRORS_SHOWN} more" if len(failed) > _ERRORS_SHOWN else ""
            message = f"{len(failed)} of {view.total} items failed: {shown}{more}"
            status, error = TaskStatus.FAILED, ErrorInfo(message=message, type="MapItemsFailed")
        elif view.required:  # the outputs straight from the columns (map_output reads the models)
            output = [o for o, s in zip(self.output, self.status, strict=True) if s is _COMPLETED]
        else:
            output = map_output(view.items, required=False)
        return StepResult(
            name=self.name,
            status=status,
            output=output,
            error=error,
            attempts=max(self.attempts, default=0),
            started_at=self.started_at,
            finished_at=utcnow(),
            duration_seconds=round(time.monotonic() - self.start_mono, 6),
            items=view,
            cached=not cancelled and 0 < self.from_cache == view.total,
        )


_PENDING, _READY, _RUNNING = TaskStatus.PENDING, TaskStatus.READY, TaskStatus.RUNNING  # not final
_COMPLETED = TaskStatus.COMPLETED
_FAILED = FAILED_ITEM


class RunMaps:
    """The map steps one run has expanded, and the transitions of their items. Every method but
    :meth:`step_of` and :meth:`item_started` runs under the run's lock, called by the run's own
    transitions.

    Items join the run's dependency graph as slots open (:meth:`pump`: a wave or ``max_parallel`` at a
    time, in index order, not all 100,000 at the expansion), are decided when the graph hands them out
    (:meth:`ready`), and are forgotten by the graph once done: it holds the items in flight, not every
    item of the map. The step's own node is done when its last item is final."""

    __slots__ = ("limit", "maps", "run", "starts", "wave")

    def __init__(self, run: RunState, limit: int) -> None:
        # A weak back-reference: the run owns its maps, and a cycle between them would keep every
        # finished run (its record, its graph) alive until the garbage collector's next full pass.
        self.run = cast("RunState", weakref.proxy(run))
        self.limit = limit  # most items per map step
        self.maps: dict[str, MapState] = {}
        # Without max_parallel, the items of a map step in the scheduler at once: WAVE, or twice the
        # scheduler's workers if that is more, so that every worker has an item to take (RunState.begin).
        self.wave = WAVE
        # Item starts reported by workers without the lock (deque appends are thread-safe), applied in
        # order under the run's lock before an item's state is read or ended (apply_starts), as the
        # run does for steps: at most the items in flight wait here.
        self.starts: deque[tuple[MapState, int, int, datetime | None]] = deque()

    def __bool__(self) -> bool:
        return bool(self.maps)

    @staticmethod
    def step_of(name: str) -> str:
        """The step an item belongs to (a step's own name for a step). Needs no lock."""
        return name[: name.rindex("[")] if name.endswith("]") else name  # split_item without the int

    def item_status(self, name: str) -> TaskStatus:
        self.apply_starts()
        step, index = split_item(name)
        return self.maps[step].status[index]

    def item_started(self, state: MapState, index: int, attempt: int, started_at: datetime | None) -> None:
        """Report (without the lock) that an item's attempt started: the record shows it from the next
        transition or read on (at once for a durable store, which other processes read)."""
        self.starts.append((state, index, attempt, started_at))
        if self.run.saves_steps:
            with self.run.lock:
                self.apply_starts()

    def apply_starts(self) -> None:
        """Apply the item starts reported so far (under the lock; a start after its item's end is
        dropped)."""
        starts = self.starts
        saves = self.run.saves_steps
        while starts:
            state, index, attempt, started_at = starts.popleft()
            if state.start(index, attempt, started_at) and saves:
                self.run.save(state.step_result(index))

    def started(self, name: str, attempt: int, started_at: datetime | None) -> None:
        """Attempt ``attempt`` of item ``name`` started (as ``RunState._apply_starts`` for a step)."""
        step, index = split_item(name)
        state = self.maps[step]
        if state.start(index, attempt, started_at) and self.run.saves_steps:
            self.run.save(state.step_result(index))

    def items_of(self, name: str, step: StepSpec) -> tuple[TaskStatus, str | None, Any]:
        """A map step cleared by the graph: READY with its items, or FAILED (why in the error)."""
        try:
            ctx = replace(self.run.template_context(), secrets=None)  # no secrets: dag refuses them
            values = resolve_for_each(name, step, ctx, self.limit, self.run.max_resolved_size)
            return TaskStatus.READY, None, values
        except OrchestrationError as exc:
            return TaskStatus.FAILED, None, ErrorInfo.from_exception(exc)

    def expand(self, name: str, values: list[Any], advance: Advance) -> None:
        """Start the map step: its items still to run are decided as slots allow (:meth:`pump`); the
        step ends when its last item does."""
        run = self.run
        spec = run.spec_of(name)
        kept = run.record.steps.get(name)  # a resumed map step keeps its items
        items = kept.items if kept is not None else None
        state = self.maps[name] = MapState(name, spec, values, items, self.wave)
        row = StepResult(
            name=name,
            status=TaskStatus.RUNNING,
            started_at=state.started_at,
            items=MapItems(total=len(values), required=spec.required),
        )
        run.record.steps[name] = row
        run.save(row)
        advance.started.append(name)  # the step runs from now on, once, whatever its items do
        state.parse(*run.condition_of(name), run.names)
        if state.left == 0:  # an empty list, or every item kept by a resume
            run.settle(state.result(cancelled=run.cancelled), advance)

    def pump(self, advance: Advance) -> None:
        """Add to the graph the items that have a slot under their step's ``max_parallel`` or wave;
        once the run is cancelled, the items not in it settle at once, without a node."""
        run = self.run
        for state in self.maps.values():
            if not state.undecided:
                continue
            if run.cancelled:
                for index in state.take(state.undecided):
                    result = StepResult(
                        name=item_name(state.name, index),
                        status=TaskStatus.CANCELLED,
                        skipped_reason="run cancelled",
                        finished_at=utcnow(),
                    )
                    self._settle(state, index, result, advance, None)
                continue
            n = min(state.undecided, state.room())
            if n > 0:
                state.held += n
                add, prefix = run.graph.add, state.name + "["
                for index in state.take(n):
                    add(f"{prefix}{index}]")

    def ready(self, name: str, advance: Advance) -> None:
        """Item ``name`` handed out by the graph: submitted (through the run's ``admit``), or settled
        when it will not run."""
        step, index = split_item(name)
        state = self.maps[step]
        status, reason, payload = self._decide(state, index)
        if status is TaskStatus.READY:
            self.run.admit(name, payload, advance)
            return
        result = StepResult(name=name, status=status, skipped_reason=reason, error=payload)
        result.finished_at = utcnow()
        self._settle(state, index, result, advance, name)

    def settle(self, result: StepResult | ItemEnd, advance: Advance) -> None:
        """An item's final result: a scheduled item's end, or a result given as a step's (submission
        refused, question answered, cached, cancelled in the run's queue); saved as its own row. Its
        step settles with the last one."""
        if isinstance(result, ItemEnd):
            self._finished(result, advance)
            return
        step, index = split_item(result.name)
        self._settle(self.maps[step], index, result, advance, result.name)

    def _finished(self, end: ItemEnd, advance: Advance) -> None:
        """A scheduled item's end (unless the item is final already: cancelled meanwhile)."""
        self.apply_starts()
        state, index = end.map, end.position
        last = state.end(index, end.state)
        if last is None:
            return
        run = self.run
        if run.saves_steps:
            run.save(state.step_result(index))
        run.graph.done(end.name, forget=True)  # the graph holds the items in flight, not all of them
        if last:
            run.settle(state.result(cancelled=run.cancelled), advance)

    def show(self, steps: dict[str, StepResult], window: ItemWindow | None = None) -> None:
        """Put the live items of running map steps into a snapshot's ``steps`` (those of ``window``)."""
        self.apply_starts()
        for name, state in self.maps.items():
            if not steps[name].status.is_terminal:
                steps[name] = steps[name].model_copy(update={"items": state.view(window)})

    def _settle(
        self, state: MapState, index: int, result: StepResult, advance: Advance, node: str | None
    ) -> None:
        """Settle an item from a step's result; ``node``: its graph node (None: it never had one)."""
        run = self.run
        last = state.settle(index, result, held=node is not None)
        run.save(result)
        if node is not None:
            run.graph.done(node, forget=True)
        if last:
            run.settle(state.result(cancelled=run.cancelled), advance)

    def _decide(self, state: MapState, index: int) -> tuple[TaskStatus, str | None, Any]:
        """READY with the item's parameters, or why it will not run (as ``RunState._decide``)."""
        run = self.run
        if run.cancelled:
            return TaskStatus.CANCELLED, "run cancelled", None
        condition, templated, spec = state.condition, state.templated, state.spec
        if condition is None and not templated:
            return TaskStatus.READY, None, spec.parameters
        ctx = state.context
        if ctx is None:  # one per map step: the run's steps are a live view, the item changes
            ctx = state.context = run.template_context()
        ctx.item = (state.values[index], index)
        try:
            if condition is not None and not condition.evaluate(run.conditions.of(ctx)):
                return TaskStatus.SKIPPED, f"run_if is false: {spec.run_if}", None
            if not templated:
                return TaskStatus.READY, None, spec.parameters
            template, budget = state.template, run.max_resolved_size
            return (
                TaskStatus.READY,
                None,
                template.resolve(ctx, max_size=budget)
                if template
                else resolve(spec.parameters, ctx, max_size=budget),
            )
        except OrchestrationError as exc:
            return TaskStatus.FAILED, None, ErrorInfo.from_exception(exc)


def carried(name: str, previous: StepResult | None) -> StepResult:
    """The placeholder a resumed run starts a step with: a map step keeps its items (the completed
    ones are not run again)."""
    if previous is not None and previous.items is not None:
        return StepResult(name=name, items=previous.items)
    return StepResult(name=name)
