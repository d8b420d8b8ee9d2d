"""Sub-workflow runs (``workflow.run``): starting a child run from a step, taking over the one an earlier
attempt of a resumed run left, and bounding how many there are.

:class:`SubRuns` owns the count of sub-runs started under each active top-level run, and the sub-runs
each resumed run's earlier attempts left, by the step that started them (taken over at most once).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from codomyrmex_orchestration.core._workflow_active import ActiveRuns
from codomyrmex_orchestration.core._workflow_plan import Plan
from codomyrmex_orchestration.core._workflow_registry import DefinitionRegistry
from codomyrmex_orchestration.core._workflow_run import RunState
from codomyrmex_orchestration.core.actions import ActionContext
from codomyrmex_orchestration.core.actions.workflow import (
    MAX_SUBWORKFLOW_DEPTH_SETTING,
    MAX_SUBWORKFLOW_RUNS_SETTING,
)
from codomyrmex_orchestration.core.models import RunRecord, TaskPriority, WorkflowStatus
from codomyrmex_orchestration.core.store import StateStore
from codomyrmex_orchestration.errors import (
    InvalidStateError,
    LimitExceededError,
    StepFailedError,
    StepTimeoutError,
)

__all__ = ["SubRuns"]

#: How long a cancelled child run may take to settle before its step gives up on it.
_CANCEL_WAIT = 10.0
_SUB_RUN = ("workflow", "run")


class SubRuns:
    """Runs ``workflow.run`` steps as child runs that end with their step.

    A step of a resumed run takes over the sub-run the run's earlier attempt started for it (the newest,
    when retries started several) instead of starting another: its record when it completed, else that
    run resumed (its completed steps kept, with the definition version it started with). Only a sub-run
    of the same workflow and the same parameters is taken over; any other step gets a new one.

    Args:
        start_run: the workflow manager's run starter: (plan, parameters, **options) -> the run.
        cancel: cancels a run, with the reason its record gives.
        active: the active runs (a parent's client and cache choice; a resume's claim).
        definitions: the definitions a new sub-run starts with, and a taken-over one's version.
        store: where a resumed run's earlier sub-runs are found.
        max_depth: deepest nesting.
        max_runs: most sub-runs under one top-level run, all levels together.
    """

    def __init__(
        self,
        *,
        start_run: Callable[..., RunState],
        cancel: Callable[[RunState, str | None], None],
        active: ActiveRuns,
        definitions: DefinitionRegistry,
        store: StateStore,
        max_depth: int,
        max_runs: int,
    ) -> None:
        self._start_run = start_run
        self._cancel = cancel
        self._active = active
        self._definitions = definitions
        self._store = store
        self.max_depth = max_depth
        self.max_runs = max_runs
        self._lock = threading.Lock()  # guards _counts and _left
        self._counts: dict[str, int] = {}  # top-level run id -> sub-runs started under it
        self._left: dict[str, dict[str, str]] = {}  # resumed run id -> its step -> the sub-run left

    def resuming(self, run_id: str, plan: Plan) -> None:
        """Run ``run_id`` is resumed with ``plan`` (before it starts): note the sub-runs its earlier
        attempts left, for its steps to take over."""
        if not any((s.module, s.action) == _SUB_RUN for s in plan.spec.steps):
            return
        left = {r.parent_step: r.run_id for r in self._store.sub_runs(run_id) if r.parent_step is not None}
        if left:  # oldest first: the newest of a step's sub-runs wins
            with self._lock:
                self._left[run_id] = left

    def forget(self, run_id: str) -> None:
        """A run ended: its count and the sub-runs left to it go (a no-op for a run that has none)."""
        with self._lock:
            self._counts.pop(run_id, None)
            self._left.pop(run_id, None)

    def _count(self, parent_run_id: str | None) -> None:
        """Bound the sub-runs under one top-level run: depth alone lets a workflow whose steps each
        run it again multiply (10 steps, 8 levels: 10**8 runs)."""
        root = parent_run_id
        while root is not None and (parent := self._active.parent_of(root)) is not None:
            root = parent
        if root is None:
            return
        with self._lock:
            count = self._counts.get(root, 0) + 1
            if count > self.max_runs:
                raise LimitExceededError(
                    MAX_SUBWORKFLOW_RUNS_SETTING,
                    self.max_runs,
                    count,
                    f"the number of sub-workflow runs under run {root}",
                )
            self._counts[root] = count

    def run_child(self, name: str, parameters: dict[str, Any], *, ctx: ActionContext) -> dict[str, Any]:
        """``workflow.run``: a sub-run that ends with its step (cancelled when the step is)."""
        if ctx.depth + 1 > self.max_depth:
            raise LimitExceededError(
                MAX_SUBWORKFLOW_DEPTH_SETTING, self.max_depth, ctx.depth + 1, "the sub-workflow depth"
            )
        self._count(ctx.run_id)
        timeout = self._timeout_of(ctx)  # now: once the scheduler times the step out, its run may end
        child = self._start(name, parameters, ctx)
        if isinstance(child, RunRecord):  # taken over, completed already
            return {"run_id": child.run_id, "outputs": child.outputs()}
        wake = threading.Event()
        child.watch(wake.set)
        remove = ctx.on_cancel(wake.set)
        try:
            with ctx.blocking():
                wake.wait(ctx.remaining())
        finally:
            remove()
        if not child.done.is_set() and child.kept:  # left waiting at shutdown: its parent resumes it
            ctx.check_cancelled()
        if not child.done.is_set():
            # The step's deadline (whether its own wait or the scheduler's timer saw it first) makes it
            # timed out, never failed with the child's "cancelled": the child hears why it stops.
            timed_out = ctx.deadline is not None and time.monotonic() >= ctx.deadline
            why = f"timed out after {timeout:g} s" if timed_out else "was cancelled"
            self._cancel(child, f"run cancelled: its parent step {ctx.step_name!r} (run {ctx.run_id}) {why}")
            child.done.wait(_CANCEL_WAIT)
            if timed_out:
                raise StepTimeoutError(ctx.step_name, timeout)
            ctx.check_cancelled()
        record = child.snapshot()
        if record.status is not WorkflowStatus.COMPLETED:
            raise StepFailedError(
                ctx.step_name,
                f"sub-workflow {name!r} (run {record.run_id}) {record.status.value}: {record.error}",
            )
        return {"run_id": record.run_id, "outputs": record.outputs()}

    def _timeout_of(self, ctx: ActionContext) -> float:
        """The ``timeout`` of the step ``ctx`` runs (what its deadline was set from)."""
        parent = self._active.get(ctx.run_id) if ctx.run_id is not None else None
        timeout = parent.spec_of(ctx.step_name).timeout if parent is not None else None
        return float(timeout) if timeout is not None else 0.0

    def _start(self, name: str, parameters: dict[str, Any], ctx: ActionContext) -> RunState | RunRecord:
        """The sub-run of step ``ctx.step_name``: the one left to it taken over, or a new one."""
        parent = self._active.get(ctx.run_id) if ctx.run_id is not None else None
        options: dict[str, Any] = {
            "priority": TaskPriority.NORMAL,
            "depth": ctx.depth + 1,
            "parent_run_id": ctx.run_id,
            "parent_step": ctx.step_name,
            "client": parent.client if parent is not None else None,  # the parent's turn
            "use_cache": parent.use_cache if parent is not None else True,
        }
        earlier = self._earlier(name, parameters, ctx)
        if earlier is not None:
            record, plan = earlier
            if record.status is WorkflowStatus.COMPLETED:
                return record
            try:
                with self._active.claim(record.run_id):
                    return self._start_run(plan, None, previous=record, **options)
            except InvalidStateError:
                pass  # active here (resumed on its own, or still settling): the step gets a new one
        return self._start_run(self._definitions.plan(name), parameters, **options)

    def _earlier(
        self, name: str, parameters: dict[str, Any], ctx: ActionContext
    ) -> tuple[RunRecord, Plan] | None:
        """The sub-run left to step ``ctx.step_name`` of a resumed run, and the plan of the definition
        version it started with, if it runs ``name`` with these ``parameters`` (taken: asked once)."""
        with self._lock:
            left = self._left.get(ctx.run_id) if ctx.run_id is not None else None
            run_id = left.pop(ctx.step_name, None) if left else None
        if run_id is None:
            return None
        record = self._store.get_run(run_id)
        if record is None or record.workflow_name != name:
            return None
        plan = self._definitions.pinned_plan(name, record.workflow_version, record.workflow_digest)
        # The parameters it started with: its definition's defaults and what its step gave it then.
        if plan is None or {**plan.spec.parameters, **parameters} != record.parameters:
            return None
        return record, plan
