"""The run state machine: one active workflow run, its step results and its dependency graph.

A :class:`RunState` owns, under its one ``lock``: the run's record (``record.steps`` holds the rows of
steps that have one: a result, a start, a map step's items; a step without a row is pending, and
snapshots and the final record show every step in declaration order, ``names``), the run's
:class:`~codomyrmex_orchestration.core.graph.DependencyGraph`, the steps whose failure propagates,
its ``max_parallel`` slots (:class:`~._workflow_slots.Slots`), and the cancelled and final flags; and
the scheduler's task group of its steps (``group``: cancelling the run cancels it). Every transition
happens under the lock and returns an :class:`Advance` saying what the caller must do outside it
(notify, submit to the scheduler, finish); step starts reach the record through a queue the next
holder of the lock applies (see ``_starts``). The one call out under the lock is ``save_step`` (the
recorder's enqueue to a durable store): a step's result is queued for the store before any step that
depends on it can be cleared to run, and a step's start is never queued after its end.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import structlog

from codomyrmex_orchestration._redact import redact
from codomyrmex_orchestration._text import readable
from codomyrmex_orchestration.config import DEFAULT_MAX_MAP_ITEMS, DEFAULT_MAX_RESOLVED_SIZE
from codomyrmex_orchestration.core._map_items import window_record, window_steps
from codomyrmex_orchestration.core._run_parameters import run_parameters
from codomyrmex_orchestration.core._task import FINAL, TaskGroup
from codomyrmex_orchestration.core._workflow_map import ItemEnd, RunMaps, carried, is_item
from codomyrmex_orchestration.core._workflow_plan import Plan, StepInfo
from codomyrmex_orchestration.core._workflow_slots import Slots
from codomyrmex_orchestration.core._workflow_steps import RunSteps
from codomyrmex_orchestration.core.models import (
    ErrorInfo,
    InputRequest,
    ItemWindow,
    RunRecord,
    StepResult,
    StepSpec,
    TaskPriority,
    TaskStatus,
    WorkflowStatus,
    utcnow,
)
from codomyrmex_orchestration.core.templating import (
    TemplateContext,
    resolve,
)
from codomyrmex_orchestration.errors import InvalidInputError, InvalidStateError, OrchestrationError

__all__ = ["FAILED", "Advance", "RunState", "StepCallback", "new_record"]

_log = structlog.get_logger("codomyrmex_orchestration.workflows")

StepCallback = Callable[[RunRecord, StepResult], None]
#: ``(attempts, first start)`` of the started tasks of a group not final, by step (the scheduler's
#: group_starts).
StartsReader = Callable[[TaskGroup], dict[str, tuple[int, datetime | None]]]

FAILED = frozenset({TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED})
_PENDING_VALUE = TaskStatus.PENDING.value
# The statuses every step passes, read once: on Python 3.11 each ``TaskStatus.X`` goes through the slow
# path of ``EnumType.__getattr__``.
_PENDING, _READY, _COMPLETED, _SKIPPED = (
    TaskStatus.PENDING,
    TaskStatus.READY,
    TaskStatus.COMPLETED,
    TaskStatus.SKIPPED,
)


def new_record(
    plan: Plan,
    parameters: Mapping[str, Any] | None,
    *,
    priority: TaskPriority,
    session_id: str | None,
    parent_run_id: str | None,
    previous: RunRecord | None,
    pending_rows: bool = False,
    parent_step: str | None = None,
) -> RunRecord:
    """The record a new run (or the resumption of ``previous``) starts with: the results ``previous``
    completed and the items its map steps kept; with ``pending_rows`` (a durable store, which saves every
    step at the start for recovery), a pending row for every other step too.

    Raises:
        InvalidInputError: a parameter name the workflow neither declares nor uses, or a
            ``{{params.x}}`` without a value (see :func:`~._run_parameters.run_parameters`).
    """
    spec = plan.spec
    if previous is not None:  # a resumed run keeps the values it was started with
        params = run_parameters(plan, previous.parameters, check_names=False)
    else:
        params = run_parameters(plan, parameters or {})
    kept = previous.steps if previous is not None else {}
    steps: dict[str, StepResult] = {}
    if kept or pending_rows:
        for n in plan.dag.steps:
            old = kept.get(n)
            if old is not None and old.status is TaskStatus.COMPLETED:
                steps[n] = old
            elif pending_rows or (old is not None and old.items is not None):
                steps[n] = carried(n, old)
    return RunRecord(
        run_id=previous.run_id if previous is not None else uuid.uuid4().hex,
        workflow_name=spec.name,
        status=WorkflowStatus.RUNNING,
        parameters=params,
        steps=steps,
        session_id=session_id,
        priority=priority,
        created_at=previous.created_at if previous is not None else utcnow(),
        started_at=utcnow(),
        parent_run_id=previous.parent_run_id if previous is not None else parent_run_id,
        parent_step=previous.parent_step if previous is not None else parent_step,
        workflow_version=plan.version or None,
        workflow_digest=plan.digest or None,
    )


class Advance:
    """What one transition asks of its caller, in this order: announce ``started`` (map steps whose
    items began: a map step is no task, so no task start announces it), record and announce ``settled``
    (final results), submit ``submit`` (steps cleared to run, with their resolved parameters), and
    finish the run if ``finished``."""

    __slots__ = ("finished", "settled", "started", "submit")

    def __init__(self) -> None:
        self.started: list[str] = []
        self.settled: list[StepResult] = []
        self.submit: list[tuple[str, dict[str, Any]]] = []
        self.finished = False


class _StepView(Mapping[str, tuple[str, Any]]):
    """A read-only view of a run's steps for template resolution (no per-step copies): every step of
    ``names``, pending unless ``steps`` has its row."""

    __slots__ = ("_names", "_steps")

    def __init__(self, steps: dict[str, StepResult], names: dict[str, None]) -> None:
        self._steps = steps
        self._names = names

    def __getitem__(self, key: str) -> tuple[str, Any]:
        result = self._steps.get(key)
        if result is None:
            if key not in self._names:
                raise KeyError(key)
            return _PENDING_VALUE, None
        return result.status.value, result.output

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class ConditionView:
    """What a ``run_if`` condition reads of a run: no secrets getter, and the run's parameters and a map
    step's item with every secret value redacted (steps' outputs are, when recorded). Whether a step runs
    is visible, so a condition comparing a secret with one guessed prefix after another would disclose
    it, also one that a parent run passed in as a parameter. The parameters are redacted once, when a
    condition first reads them (a secret in them was registered by the step that resolved it)."""

    __slots__ = ("_params", "_redacted")

    def __init__(self, params: Mapping[str, Any]) -> None:
        self._params = params
        self._redacted: Mapping[str, Any] | None = None  # racing threads would compute the same value

    def of(self, ctx: TemplateContext) -> TemplateContext:
        """``ctx`` as a condition may read it."""
        if self._redacted is None:
            self._redacted = redact(dict(self._params))
        item = None if ctx.item is None else (redact(ctx.item[0]), ctx.item[1])
        return TemplateContext(params=self._redacted, steps=ctx.steps, run=ctx.run, item=item)


class RunState:
    """One active run. Every field is guarded by ``lock`` except the immutable ones set in ``__init__``
    (``plan``, ``params``, ``priority``, ``depth``, ``on_step``, ``max_parallel``, ``default_resources``,
    ``saves_steps``, ``secrets``, ``conditions``, ``use_cache``, ``max_resolved_size``, ``done``,
    ``start_mono``, ``hears_starts``, ``starts_from``, ``definitions`` (its own lookups need no lock) and
    ``record.run_id``)."""

    def __init__(
        self,
        record: RunRecord,
        plan: Plan,
        *,
        priority: TaskPriority,
        depth: int,
        on_step: StepCallback | None,
        max_parallel: int | None,
        default_resources: Mapping[str, Any] | None,
        save_step: Callable[[str, StepResult], None] | None = None,
        client: str | None = None,
        secrets: Callable[[str], str] | None = None,
        use_cache: bool = True,
        max_map_items: int = DEFAULT_MAX_MAP_ITEMS,
        max_resolved_size: int = DEFAULT_MAX_RESOLVED_SIZE,
        starts_from: StartsReader | None = None,
        save_run: Callable[[RunRecord], None] | None = None,
    ) -> None:
        self.record = record
        # Where the starts of this run's steps are read when a snapshot needs them (the scheduler's
        # group_starts), if the steps do not report them (``hears_starts``): reporting each start
        # costs every step a callback and a queued row, which only listeners, ``on_step`` and a durable
        # store need at the moment it happens.
        self.starts_from = starts_from or _no_starts
        self.hears_starts = starts_from is None
        self.secrets = secrets  # a secret's value by name, looked up when a step using it is cleared
        self.use_cache = use_cache  # False: steps with a cache run anyway (their fresh output is kept)
        self.max_resolved_size = max_resolved_size  # what a step's references may put in (templating)
        self.client = client  # whom the steps are queued for (fair turns between clients)
        self._save_step = save_step
        self.saves_steps = save_step is not None  # a durable store: item rows are written one by one
        self._save_run = save_run  # saves the run row when its questions change (durable)
        self.waiting: dict[str, InputRequest] = {}  # steps parked on a question (core.approve), by step
        # The questions its sub-runs (and theirs) wait on, by the step that started each: the run waits
        # on them too. ``parent``: the run and step whose sub-run this is (set before it starts).
        self.sub_inputs: dict[str, list[InputRequest]] = {}
        self.parent: tuple[RunState, str] | None = None
        self.kept = False  # left waiting at shutdown: it never finishes in this process
        self.run_id = record.run_id
        self.plan = plan
        self.params = record.parameters
        self.conditions = ConditionView(record.parameters)  # what run_if reads: no secret in it
        self.priority = priority
        self.depth = depth
        self.on_step = on_step
        self.max_parallel = _parallel_limit(max_parallel, plan.spec.max_parallel)
        self.slots = Slots(self.max_parallel)  # cleared steps held for a slot, and those holding one
        self.default_resources = dict(default_resources) if default_resources else None
        self.start_mono = time.monotonic()
        self.done = threading.Event()  # set once the final record is saved
        self.lock = threading.Lock()
        self.final: RunRecord | None = None
        self.watchers: list[Callable[[], None]] = []
        self.on_change: Callable[[], None] | None = None  # after each transition (ActiveRuns.quiet)
        self.cancelled = False
        self.cancel_reason: str | None = None
        # The scheduler's tasks of its steps and items: cancelled together, and not kept once they end
        # (their results are the run's), so a big run never pushes single tasks out of the scheduler;
        # accepted: the queue's cap may refuse the run at its start (RunStarter), never a step of it.
        self.group = TaskGroup(keep_final=False, accepted=True)
        self.blocked: set[str] = set()  # required failures and the steps skipped because of them
        # Step starts reported by workers without the lock (deque appends are thread-safe), applied in
        # order by the next holder of the lock before it reads or changes a step: no lock per start.
        self._starts: deque[tuple[str, int, datetime | None]] = deque()
        self._finishing = False
        self.maps = RunMaps(self, max_map_items)  # the map steps expanded so far, and their items
        self.items = self.maps.maps  # truthy once a map step expanded: until then no name is an item's
        # The plan's steps and those added while the run goes; its lookups are the run's.
        self.definitions = RunSteps(plan, priority, self.maps)
        self.names = self.definitions.names  # every step of the run in declaration order, added ones last
        self.info = self.definitions.info
        self.spec_of = self.definitions.spec_of
        self.parents_of = self.definitions.parents_of
        self.priority_of = self.definitions.priority_of
        self.condition_of = self.definitions.condition_of
        self.graph = plan.graph.copy()  # the run's dependency engine (items and added steps join it)

    # ------------------------------------------------------------------ transitions

    def begin(self, workers: int = 1) -> Advance:
        """The first wave: steps with no dependencies (and kept results of a resumed run) settle.
        ``workers``: the scheduler's, so that a map step's waves keep each of them busy."""
        with self.lock:
            self.maps.wave = max(self.maps.wave, 2 * workers)
            return self._drain(Advance())

    def step_started(self, name: str, attempt: int, started_at: datetime | None) -> None:
        """Report that attempt ``attempt`` of ``name`` started: the record shows it running from the
        next transition or read on (at once for a durable store, which other processes read)."""
        self._starts.append((name, attempt, started_at))
        if self._save_step is not None:
            with self.lock:
                self._apply_starts()

    def step_finished(self, result: StepResult | ItemEnd, *, held_slot: bool) -> Advance:
        """Record a submitted step's (or item's) final result (``held_slot``: it counted against
        ``max_parallel``)."""
        advance = Advance()
        with self.lock:
            self._apply_starts(ending=result.name)
            if held_slot and self.max_parallel is not None:
                self.slots.release()
            if isinstance(result, ItemEnd) or self.status_of(result.name) not in FINAL:  # item: by index
                self._settle(result, advance, announce=True)
            return self._drain(advance)

    def await_input(
        self, question: InputRequest, save_run: Callable[[RunRecord], None] | None
    ) -> tuple[bool, Advance]:
        """Park the step ``question.step``, cleared to run and never submitted, on a question: it holds no
        worker and no ``max_parallel`` slot, and the run is WAITING_FOR_INPUT until every question is
        answered (:meth:`answer_input`); ``save_run`` saves the run row as its questions change. False
        (the step cancelled) when the run was cancelled meanwhile."""
        advance = Advance()
        with self.lock:
            self._save_run = self._save_run or save_run
            self._apply_starts()
            self.slots.release()
            if self.cancelled:
                self._settle(_cancelled(question.step), advance, announce=True)
                return False, self._drain(advance)
            name = question.step
            if is_item(name):  # an item's live state is a compact row of its map step
                self.maps.started(name, 1, utcnow())
            else:
                result = self._row(name)
                result.status, result.attempts, result.started_at = TaskStatus.RUNNING, 1, utcnow()
                self.save(result)
            self.waiting[question.step] = question
            self._inputs_changed()
            return True, self._drain(advance)

    def answer_input(self, result: StepResult) -> Advance | None:
        """Settle a parked step with the answer's ``result``; None if it is not waiting (any more)."""
        with self.lock:
            if result.name not in self.waiting:
                return None
            self._apply_starts()
            advance = Advance()
            self._settle(result, advance, announce=True)
            return self._drain(advance)

    def add_steps(self, steps: Sequence[StepSpec]) -> Advance:
        """Add steps to the running run, in order; each may depend on any step already in it (one that
        is done counts as satisfied at once). The base of map steps: one added step per item.

        Raises:
            InvalidStateError: the run has ended or is ending (nothing may join it any more).
            InvalidInputError: a step's name is taken, or a dependency names no step of the run.
        """
        advance = Advance()
        with self.lock:
            if self._finishing:
                raise InvalidStateError("run", self.run_id, "ending", "steps can be added only while it runs")
            for step in steps:
                known = self.names
                if step.name in known:
                    raise InvalidInputError(
                        "steps.name", f"step {step.name!r} is already in run {self.run_id}"
                    )
                self.graph.add(step.name, step.dependencies)
                self.definitions.add(step)
            return self._drain(advance)

    def status_of(self, name: str) -> TaskStatus:
        """A step's or an item's status (under the lock)."""
        if self.items and is_item(name):
            return self.maps.item_status(name)
        row = self.record.steps.get(name)
        return _PENDING if row is None else row.status

    def cancel(self, reason: str | None = None) -> Advance:
        """Cancel the run (``reason``: its error, "run cancelled" if None): what settled at once (the
        caller cancels its tasks: ``group``)."""
        advance = Advance()
        with self.lock:
            # Finishing: every step has settled, so there is nothing left to cancel; the run ends as
            # its steps did (a cancel arriving then made a run of completed steps CANCELLED).
            if self.cancelled or self._finishing or self.final is not None:
                return advance
            self.cancelled, self.cancel_reason = True, reason
            self._apply_starts()
            for name in self.slots.drop():
                self._settle(_cancelled(name), advance, announce=True)
            for name in list(self.waiting):
                self._settle(_cancelled(name), advance, announce=True)
            return self._drain(advance)

    def finish(self) -> RunRecord | None:
        """Build the final record (once; None on later calls) and hand the watchers to the caller."""
        with self.lock:
            if self.final is not None:
                return None
            record = self.record
            steps = _in_order(record.steps, self.names)
            failed = [n for n, s in steps.items() if s.status in FAILED and self.spec_of(n).required]
            if self.cancelled:
                record.status, record.error = WorkflowStatus.CANCELLED, self.cancel_reason or "run cancelled"
            elif failed:
                details = []
                for n in failed:
                    err = steps[n].error
                    details.append(f"{n} ({err.message if err else steps[n].status.value})")
                record.status, record.error = WorkflowStatus.FAILED, "failed steps: " + "; ".join(details)
            else:
                record.status, record.error = WorkflowStatus.COMPLETED, None
            record.failed_steps = failed
            record.finished_at = utcnow()
            record.duration_seconds = round(time.monotonic() - self.start_mono, 6)
            self.final = record.model_copy(update={"steps": steps})
            return self.final

    def take_watchers(self) -> list[Callable[[], None]]:
        with self.lock:
            watchers, self.watchers = self.watchers, []
        return watchers

    def watch(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` when the run ends (at once if it has)."""
        with self.lock:
            if self.final is None:
                self.watchers.append(fn)
                return
        fn()

    # ------------------------------------------------------------------ reading

    def snapshot(self, items: ItemWindow | None = None) -> RunRecord:
        """A copy of the record as it stands (final once the run ended); with ``items``, each map step
        lists only the items of that window, and a running one builds only those (under the lock)."""
        with self.lock:
            final = self.final
            if final is None:
                return self.record.model_copy(update={"steps": _live_steps(self, items)})
        return final.model_copy() if items is None else window_record(final, items)

    def summary(self) -> RunRecord:
        """A copy of the record's own fields as they stand, without its steps (``steps`` is empty)."""
        with self.lock:
            return (self.final or self.record).model_copy(update={"steps": {}})

    def count_steps(self, into: dict[str, int]) -> None:
        """Add this run's steps, by status, to ``into``."""
        with self.lock:
            self._apply_starts()
            running = _running(self)
            rows = self.record.steps
            for name in self.names:
                row = rows.get(name)
                status = row.status if row is not None else TaskStatus.PENDING
                if name in running:
                    status = TaskStatus.RUNNING
                into[status.value] = into.get(status.value, 0) + 1

    # ------------------------------------------------------------------ under the lock

    def _apply_starts(self, ending: str | None = None) -> None:
        steps = self.record.steps
        while self._starts:
            name, attempt, started_at = self._starts.popleft()
            if name == ending:  # its result replaces its row now, with the same attempts and start
                continue
            if self.items and is_item(name):
                self.maps.started(name, attempt, started_at)
                continue
            result = steps.get(name) or self._row(name)
            if result.status in FINAL:  # cancelled between the scheduler's start and now
                continue
            result.attempts = attempt
            result.started_at = result.started_at or started_at or utcnow()
            result.status = TaskStatus.RUNNING
            self.save(result)

    def _settle(self, result: StepResult | ItemEnd, advance: Advance, *, announce: bool) -> None:
        name = result.name
        if self.waiting and self.waiting.pop(name, None) is not None:
            self._inputs_changed()
        if self.items and is_item(name):
            self.maps.settle(result, advance)
            return
        assert isinstance(result, StepResult)  # an ItemEnd names an item
        self.record.steps[name] = result
        self.save(result)
        if result.status in FAILED and self.spec_of(name).required:
            self.blocked.add(name)
        elif result.status is _SKIPPED and any(up in self.blocked for up in self.parents_of(name)):
            self.blocked.add(name)
        self.graph.done(name)
        if announce:
            advance.settled.append(result)

    def sub_inputs_changed(self, step: str, questions: list[InputRequest]) -> None:
        """The sub-run of step ``step`` now waits on ``questions`` (its own and its sub-runs')."""
        with self.lock:
            if self.final is not None or (not questions and step not in self.sub_inputs):
                return
            if questions:
                self.sub_inputs[step] = questions
            else:
                del self.sub_inputs[step]
            self._inputs_changed()

    def _inputs_changed(self) -> None:
        record = self.record
        pending = list(self.waiting.values())
        for questions in self.sub_inputs.values():
            pending.extend(questions)
        record.pending_inputs = pending
        record.status = WorkflowStatus.WAITING_FOR_INPUT if pending else WorkflowStatus.RUNNING
        if self._save_run is not None:  # under the lock: a later save of the run is queued after this one
            self._save_run(record.model_copy(update={"steps": {}}))
        if self.parent is not None:  # this run's lock, then its parent's: run locks nest upwards only
            self.parent[0].sub_inputs_changed(self.parent[1], list(pending))

    def _drain(self, advance: Advance) -> Advance:
        """Decide every step the graph made ready, until none is left; fill ``advance``."""
        graph = self.graph
        steps = self.record.steps
        while True:
            if self.items:
                self.maps.pump(advance)
            ready = graph.get_ready()
            if not ready:
                break
            for name in ready:
                if self.items and is_item(name):
                    self.maps.ready(name, advance)  # decided when the graph hands it out
                    continue
                kept = steps.get(name)
                if kept is not None and kept.status is _COMPLETED:  # kept by a resume
                    graph.done(name)
                    continue
                info = self.info(name)
                status, reason, payload = _decide(self, name, info)
                if status is not _READY:
                    result = StepResult(name=name, status=status, skipped_reason=reason, error=payload)
                    self._settle(result, advance, announce=True)
                elif info.spec.for_each is not None:
                    self.maps.expand(name, payload, advance)
                else:
                    self.admit(name, payload, advance)
        if self.slots and not self.cancelled:  # every ready step decided: the highest priorities first
            self.slots.fill(advance.submit)
        if not graph.is_active() and not self._finishing and not self.kept:
            self._finishing = True
            advance.finished = True
        if self.on_change is not None:
            self.on_change()
        return advance

    def admit(self, name: str, params: dict[str, Any], advance: Advance) -> None:
        """A step (or item) cleared to run: submitted, or held for a slot under the run's ``max_parallel``
        (READY until it has one: :meth:`_drain` hands the slots out by priority)."""
        if self.max_parallel is None:
            advance.submit.append((name, params))
            return
        self.slots.hold(name, params, self.priority_of(self.info(name)))
        if not (self.items and is_item(name)):
            self.record.steps[name] = StepResult(name=name, status=TaskStatus.READY)

    def _row(self, name: str) -> StepResult:
        """The row of a step that has none yet (pending), added to the record."""
        row = self.record.steps[name] = StepResult(name=name)
        return row

    def save(self, result: StepResult) -> None:
        """Queue a step's (or an item's) row for a durable store; a row the store cannot encode is saved
        failed instead (see :func:`_unrecordable`), so that the step still settles and the run ends."""
        if self._save_step is not None:
            try:
                self._save_step(self.run_id, result)
            except Exception as exc:
                self._save_step(self.run_id, _unrecordable(self.run_id, result, exc))

    def settle(self, result: StepResult, advance: Advance) -> None:
        """A step's final result, announced (for the parts of the run: its map steps)."""
        self._settle(result, advance, announce=True)

    def template_context(self, item: tuple[Any, int] | None = None) -> TemplateContext:
        return TemplateContext(
            params=self.params,
            steps=_StepView(self.record.steps, self.names),
            run={"id": self.run_id, "workflow": self.record.workflow_name},
            item=item,
            secrets=self.secrets,
        )


def _parallel_limit(given: int | None, workflow: int | None) -> int | None:
    """The stricter of the caller's and the workflow's ``max_parallel`` (``None``: no limit)."""
    return min(given, workflow or given) if given is not None else workflow


def _running(run: RunState) -> dict[str, tuple[int, datetime | None]]:
    """The steps of ``run`` that started and have no result yet, with their attempts and first start, as
    the scheduler knows them (for a run whose steps do not report their starts; under the run's lock)."""
    if run.hears_starts:
        return {}
    return {n: start for n, start in run.starts_from(run.group).items() if not run.status_of(n).is_terminal}


def _live_steps(run: RunState, window: ItemWindow | None) -> dict[str, StepResult]:
    """A copy of every step's row as it stands (under the run's lock): with the starts the scheduler
    knows of, and each map step's items, all of them or those of ``window`` (a running map step's are
    built from its columns, only the window's)."""
    run._apply_starts()
    steps = _in_order(run.record.steps, run.names, copies=True)
    for name, (attempts, started_at) in _running(run).items():
        row = steps.get(name)
        if row is None:  # an item: its start goes to its map step's columns
            run.maps.started(name, attempts, started_at)
            continue
        row.status, row.attempts, row.started_at = TaskStatus.RUNNING, attempts, started_at
    if window is not None:  # the items a settled map step holds (a running one's are shown next)
        steps = window_steps(steps, window)
    run.maps.show(steps, window)
    return steps


def _in_order(
    rows: dict[str, StepResult], names: dict[str, None], *, copies: bool = False
) -> dict[str, StepResult]:
    """Every step's row in declaration order (``copies``: a copy of each row the run has); a new pending
    row for a step without one."""
    out: dict[str, StepResult] = {}
    for n in names:
        row = rows.get(n)
        out[n] = StepResult(name=n) if row is None else row.model_copy() if copies else row
    return out


def _no_starts(group: TaskGroup) -> dict[str, tuple[int, datetime | None]]:
    return {}


def _unrecordable(run_id: str, result: StepResult, exc: Exception) -> StepResult:
    """``result``, changed in place, as a step whose result could not be stored: FAILED (when it had
    ended) with an error saying why, its output dropped. In place, so that the run's record, what is
    announced and what its dependents see all agree with the store. Had the error gone up instead, the
    step would never have been marked done in the run's graph, and the run would have run for ever."""
    _log.error("step.unrecordable", run_id=run_id, step=result.name, error=f"{type(exc).__name__}: {exc}")
    reason = readable(f"its result could not be recorded ({type(exc).__name__}: {exc})")
    if result.status.is_terminal:
        result.status = TaskStatus.FAILED
    result.output = None
    result.error = ErrorInfo(message=f"step {result.name!r} failed: {reason}", type=type(exc).__name__)
    return result


def _cancelled(name: str) -> StepResult:
    return StepResult(name=name, status=TaskStatus.CANCELLED, skipped_reason="run cancelled")


def _decide(run: RunState, name: str, info: StepInfo) -> tuple[TaskStatus, str | None, Any]:
    """READY with resolved parameters, or the final status (and reason or error) of a step that will
    not run: cancelled, skipped (an upstream failure, an output its parameters read missing,
    ``run_if`` false) or failed (its templates do not resolve). A map step's payload is its list of
    items (its ``run_if`` and parameters are decided per item)."""
    step, condition = info.spec, info.condition
    if run.cancelled:
        return TaskStatus.CANCELLED, "run cancelled", None
    if run.blocked:
        for up in info.parents:
            if up in run.blocked:
                return TaskStatus.SKIPPED, f"upstream step {up!r} did not complete", None
    steps = run.record.steps
    for up in info.needs_output:
        row = steps.get(up)
        if row is None or row.status is not TaskStatus.COMPLETED:
            return TaskStatus.SKIPPED, f"uses the output of {up!r}, which did not complete", None
    if step.for_each is not None:
        return run.maps.items_of(name, step)
    if condition is None and not info.templated:
        return _READY, None, step.parameters
    ctx = run.template_context()
    try:
        if condition is not None and not condition.evaluate(run.conditions.of(ctx)):
            return TaskStatus.SKIPPED, f"run_if is false: {step.run_if}", None
        params = (
            resolve(step.parameters, ctx, max_size=run.max_resolved_size)
            if info.templated
            else step.parameters
        )
    except OrchestrationError as exc:
        return TaskStatus.FAILED, None, ErrorInfo.from_exception(exc)
    return _READY, None, params
