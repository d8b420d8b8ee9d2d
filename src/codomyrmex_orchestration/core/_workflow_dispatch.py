"""The bridge between runs and the scheduler: submits the steps a run clears, turns the scheduler's start
and done callbacks into run transitions, and finishes runs.

:class:`RunDriver` owns no run state (each :class:`RunState` owns its own); it holds the collaborators
a transition needs: the scheduler, the action registry, the recorder and the listeners.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import structlog

from codomyrmex_orchestration.core._step_cache import StepCache
from codomyrmex_orchestration.core._task import Task
from codomyrmex_orchestration.core._workflow_events import RUN_EVENTS, STEP_EVENTS, Listeners
from codomyrmex_orchestration.core._workflow_input import APPROVE
from codomyrmex_orchestration.core._workflow_items import RunCall, item_calls
from codomyrmex_orchestration.core._workflow_map import is_item
from codomyrmex_orchestration.core._workflow_plan import StepInfo
from codomyrmex_orchestration.core._workflow_recorder import RunRecorder
from codomyrmex_orchestration.core._workflow_run import Advance, RunState
from codomyrmex_orchestration.core.actions import ActionDefinition, ActionRegistry
from codomyrmex_orchestration.core.backends import ActionCall
from codomyrmex_orchestration.core.models import (
    ErrorInfo,
    RunRecord,
    StepResult,
    StepSpec,
    TaskStatus,
    trusted,
    utcnow,
)
from codomyrmex_orchestration.core.scheduler import TaskOrchestrator, TaskSettings, TaskState
from codomyrmex_orchestration.errors import OrchestrationError

__all__ = ["RunDriver"]

_log = structlog.get_logger("codomyrmex_orchestration.workflows")

ChildRunner = Callable[..., dict[str, Any]]
#: The fields-set every step result built from a task's end shares (see models.trusted).
_ALL_STEP_FIELDS = set(StepResult.model_fields)
_COMPLETED = TaskStatus.COMPLETED  # read once: TaskStatus.X is slow on Python 3.11 (see _dispatch)


class _StepCall(RunCall):
    """One submitted step: the callable the scheduler runs and its start/done callbacks in one object
    (one object per queued step instead of three closures: thousands of queued steps stay cheap)."""

    __slots__ = ()

    def started(self, state: TaskState) -> None:
        self.driver.step_started(self, state)

    def done(self, state: TaskState) -> None:
        self.driver.step_done(self, state)


class RunDriver:
    """Moves runs forward through the one scheduler.

    Args:
        orchestrator: the scheduler every step goes through.
        registry: where each step's action is found.
        recorder: what is written to the store, and when.
        listeners: who hears ``step.*`` and ``run.*`` events.
        extras: values every step's :class:`ActionContext` gets in ``extras``.
        run_child: ``workflow.run``'s sub-run starter, put on every step's context.
        on_finished: called with a run's final record once it is saved, before its waiters wake.
    """

    def __init__(
        self,
        *,
        orchestrator: TaskOrchestrator,
        registry: ActionRegistry,
        recorder: RunRecorder,
        listeners: Listeners,
        extras: dict[str, Any],
        run_child: ChildRunner,
        on_finished: Callable[[RunRecord], None],
    ) -> None:
        self.orchestrator = orchestrator
        self.registry = registry
        self.recorder = recorder
        self.listeners = listeners
        self.extras = extras
        self.run_child = run_child
        self._on_finished = on_finished
        self._remote = orchestrator.backend.remote  # steps also travel as ActionCalls
        self.cache = StepCache(recorder.store.step_cache)
        # Parks a core.approve step on its question instead of submitting it (the InputDesk's ask).
        self.ask: Callable[[RunState, str, dict[str, Any]], Advance] | None = None

    def start(self, run: RunState) -> None:
        """Save the new run and dispatch its first wave."""
        self.recorder.run_started(run.record)
        if self.listeners:
            self.listeners.emit(
                "run.started",
                {
                    "run_id": run.run_id,
                    "workflow_name": run.record.workflow_name,
                    "session_id": run.record.session_id,
                },
            )
        self.apply(run, run.begin(self.orchestrator.max_workers))

    def add_steps(self, run: RunState, steps: Sequence[StepSpec]) -> None:
        """Add steps to a running run (see :meth:`RunState.add_steps`) and dispatch those ready."""
        self.apply(run, run.add_steps(steps))

    def cancel(self, run: RunState, reason: str | None = None) -> None:
        """Cancel a run: queued steps never start, running ones are stopped (``reason``: the run's
        error, "run cancelled" if None)."""
        advance = run.cancel(reason)
        # After the run's own flag: a step it clears from now on is decided CANCELLED, and a task of it
        # the scheduler receives from now on (submitted by a transition just before) ends CANCELLED.
        self.orchestrator.cancel_group(run.group, reason or "run cancelled")
        self.apply(run, advance)

    def apply(self, run: RunState, advance: Advance, after: TaskState | None = None) -> None:
        """Carry out what transitions asked for (iteratively: a failed submission is one more).
        ``after``: the state of the task whose ``on_done`` this is; its worker queues the new steps."""
        work = [advance]
        for adv in work:  # a failed submission appends one more
            if adv.started and self.listeners:
                for name in adv.started:
                    self.listeners.emit("step.started", {"run_id": run.run_id, "step": name, "attempt": 1})
            if adv.settled:
                self.recorder.steps_settled(adv.settled, made_ready=bool(adv.submit))
                for result in adv.settled:
                    self._announce(run, result)
            batch: list[Task] = []  # the wave's steps, queued together (one scheduler lock acquisition)
            wave = adv.submit
            i = 0
            while i < len(wave):
                name = wave[i][0]
                if not (run.items and is_item(name)):
                    outcome = self._submit(run, name, wave[i][1], batch)
                    if outcome is not None:
                        work.append(outcome)
                    i += 1
                    continue
                # A map step's items come in a row: one submission for the row.
                end, row = i + 1, name[: name.rindex("[") + 1]  # "<step>[" begins its items' names only
                while end < len(wave) and wave[end][0].startswith(row):
                    end += 1
                self._submit_items(run, wave[i:end], work)
                i = end
            if batch:
                self._queue(run, batch, work, after)
            if adv.finished:
                self._finish(run)

    def _submit(
        self, run: RunState, name: str, params: dict[str, Any], batch: list[Task] | None = None
    ) -> Advance | None:
        """Submit the step (``batch``: build its task into it, for :meth:`_queue`, instead of queueing
        it at once); what settled if it did not become a task (refused, cached, asking a question)."""
        info = run.info(name)
        step = info.spec
        if self.ask is not None and (step.module, step.action) == APPROVE:
            return self.ask(run, name, params)
        cache_key = None
        if step.cache is not None:
            cache_key, cached = self.cache.lookup(run, name, step, params)
            if cached is not None:  # no attempt: the output of an identical earlier call
                return run.step_finished(cached, held_slot=True)
        try:
            definition = self.registry.get(step.module, step.action)
            if run.items and is_item(name):
                mark = self.recorder.item_mark(bool(info.parents), definition.instant)
            else:
                mark = self.recorder.write_mark(bool(info.parents))
            call = _StepCall(self, run, name, definition.func, params, mark, cache_key)
            self.orchestrator.submit(
                call,
                action=self._action(run, step, params) if self._remote else None,
                name=f"{run.record.workflow_name}.{name}",
                step_name=name,
                # on_start, not the callable: a remote backend runs the action elsewhere, not ``call``.
                on_start=call.started if run.hears_starts else None,
                on_done=call.done,
                batch=batch,
                settings=self._settings(run, info),
                instant=_instant(definition, mark),
            )
        except OrchestrationError as exc:
            return self._refused(run, name, exc)
        return None

    def _settings(self, run: RunState, info: StepInfo) -> TaskSettings:
        """The scheduler settings step ``info`` is submitted with, checked once per run for all the
        steps that share them (see :func:`_settings_args`)."""
        memo = run.definitions.settings
        found = memo.get(info.profile)
        if found is None:  # the step's settings are refused here (the step fails), before any task
            found = memo[info.profile] = self.orchestrator.settings(**_settings_args(run, info))
        return found

    def _refused(self, run: RunState, name: str, exc: OrchestrationError) -> Advance:
        """A step the scheduler would not take fails with the reason."""
        result = StepResult(name=name, status=TaskStatus.FAILED, error=ErrorInfo.from_exception(exc))
        return run.step_finished(result, held_slot=True)

    def _queue(self, run: RunState, batch: list[Task], work: list[Advance], after: TaskState | None) -> None:
        """Queue a wave's steps together. Refused as a whole (a shutdown; the queue's cap never refuses a
        run's steps), they go one by one: those that fit are queued, the others fail (what that settles
        goes to ``work``)."""
        try:
            self.orchestrator.submit_batch(batch, after)
        except OrchestrationError:
            for task in batch:
                try:
                    self.orchestrator.submit_batch((task,))
                except OrchestrationError as exc:
                    work.append(self._refused(run, task.step_name or task.name, exc))

    def _submit_items(
        self,
        run: RunState,
        entries: Sequence[tuple[str, dict[str, Any]]],
        work: list[Advance],
    ) -> None:
        """Submit a row of items of one map step in one call to the scheduler (one lock acquisition);
        what settles at once goes to ``work``. Items asking
        a question or using the step cache, and a row the scheduler refuses (a shutdown), go one by
        one as steps do."""
        first = entries[0][0]
        info = run.info(first)
        step = info.spec
        if (self.ask is not None and (step.module, step.action) == APPROVE) or step.cache is not None:
            self._one_by_one(run, entries, work)
            return
        try:
            definition = self.registry.get(step.module, step.action)
        except OrchestrationError as exc:
            for name, _ in entries:
                work.append(self._refused(run, name, exc))
            return
        mark = self.recorder.item_mark(bool(info.parents), definition.instant)
        action = partial(self._action, run, step) if self._remote else None
        calls = item_calls(self, run, entries, definition.func, mark, action, _instant(definition, mark))
        try:
            self.orchestrator.submit_many(calls, self._settings(run, info))
        except OrchestrationError:  # all or none was refused: as many as fit, one by one
            self._one_by_one(run, entries, work)

    def _one_by_one(
        self,
        run: RunState,
        entries: Sequence[tuple[str, dict[str, Any]]],
        work: list[Advance],
    ) -> None:
        """Submit ``entries`` one at a time; what settles at once goes to ``work``."""
        for name, params in entries:
            outcome = self._submit(run, name, params)
            if outcome is not None:
                work.append(outcome)

    def _action(self, run: RunState, step: StepSpec, params: dict[str, Any]) -> ActionCall:
        """The step by name, for backends that run it in another process (workflow.run, which needs this
        manager, is kept local by them); the local backend needs none."""
        return ActionCall(
            step.module,
            step.action,
            params,
            depth=run.depth,
            extras=self.extras,
            allow_code_execution=self.registry.allow_code_execution,
        )

    def step_started(self, call: _StepCall, state: TaskState) -> None:
        run = call.run
        if call.mark is not None:
            self.recorder.step_starting(call.mark)
        run.step_started(call.name, state.attempts, state.started_at)
        if run.items and is_item(call.name):  # shown in their map step's record, not announced one by one
            return
        if self.listeners:
            event = "step.retried" if state.attempts > 1 else "step.started"
            self.listeners.emit(event, {"run_id": run.run_id, "step": call.name, "attempt": state.attempts})
        if run.on_step is not None:
            started = StepResult(
                name=call.name,
                status=TaskStatus.RUNNING,
                attempts=state.attempts,
                started_at=state.started_at,
            )
            self._notify(run, started)

    def step_done(self, call: _StepCall, state: TaskState) -> None:
        # The scheduler's own values, typed already: not validated again (see models.trusted).
        status = state.status
        fields = {
            "name": call.name,
            "status": status,
            "output": state.result if status is _COMPLETED else None,
            "error": state.error,
            "attempts": state.attempts,
            "started_at": state.started_at,
            "finished_at": state.finished_at or utcnow(),
            "duration_seconds": state.duration_seconds,
            "skipped_reason": None,
            "cached": False,
            "items": None,
        }
        result = trusted(StepResult, fields, _ALL_STEP_FIELDS)
        if call.cache_key is not None:
            self.cache.keep(call.cache_key, call.run, result)
        self.apply(call.run, call.run.step_finished(result, held_slot=True), state)

    def _announce(self, run: RunState, result: StepResult) -> None:
        if self.listeners:
            payload = {
                "run_id": run.run_id,
                "step": result.name,
                "status": result.status.value,
                "duration_seconds": result.duration_seconds,
            }
            if result.cached:  # served from the step cache: no attempt, never started
                payload["cached"] = True
            self.listeners.emit(STEP_EVENTS.get(result.status, "step.failed"), payload)
        if run.on_step is not None:
            self._notify(run, result)

    def _notify(self, run: RunState, result: StepResult) -> None:
        if run.on_step is None:
            return
        try:
            run.on_step(run.record, result)
        except Exception:
            _log.exception("on_step callback failed", run_id=run.run_id, step=result.name)

    def _finish(self, run: RunState) -> None:
        final = run.finish()
        if final is None:
            return
        self.recorder.run_finished(final)
        self._on_finished(final)
        run.done.set()
        for fn in run.take_watchers():
            fn()
        self.listeners.emit(
            RUN_EVENTS.get(final.status, "run.failed"),
            {
                "run_id": final.run_id,
                "workflow_name": final.workflow_name,
                "session_id": final.session_id,
                "status": final.status.value,
                "failed_steps": final.failed_steps,
                "duration_seconds": final.duration_seconds,
            },
        )


def _instant(definition: ActionDefinition, mark: int | None) -> bool:
    """Whether a step's (or item's) task is instant: its action is, and its start does not wait for its
    parents' results to be committed (``mark``: see ``RunRecorder.write_mark``)."""
    return definition.instant and mark is None


def _settings_args(run: RunState, info: StepInfo) -> dict[str, Any]:
    """The scheduler settings a step (or a row of a map step's items) is submitted with: its priority,
    timeout, retry policy and resources, the run and the client it is queued for; live state, as both
    callbacks copy the few fields they need at once."""
    step = info.spec
    return {
        "priority": run.priority_of(info),
        "timeout": step.timeout,
        "max_retries": step.max_retries,
        "retry_delay": step.retry_delay,
        "backoff": step.backoff,
        "resources": step.resources or run.default_resources,
        "run_id": run.run_id,
        "session_id": run.client,
        "live_state": True,
        "group": run.group,
    }
