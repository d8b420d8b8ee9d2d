"""Sub-workflow runs (``workflow.run``): starting a child run from a step, taking over the one an earlier
attempt of a resumed run left, and bounding how many there are.

:class:`SubRuns` owns the count of sub-runs started under each active top-level run, the sub-runs
each resumed run's earlier attempts left, by the step that started them (taken over at most once), and
the sub-run failures not yet read by the step above (so that a failure eight levels down is told once,
with its chain, instead of nested once per level).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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
#: A failure's chain of workflows shows at most this many names (the first and the last ones).
_SHOWN_CHAIN = 6


@dataclass(frozen=True, slots=True)
class _Failure:
    """Why a step's sub-run did not complete, as far down as the failure began."""

    step: str  # the step whose sub-run failed
    chain: tuple[str, ...]  # the workflows from that sub-run down to the run where it began
    run_id: str  # that run
    status: str  # its status
    error: str | None  # its error

    def reason(self, run_id: str) -> str:
        """The step's failure, the sub-run it started being ``run_id``: the cause once, not nested."""
        name = self.chain[0]
        if len(self.chain) == 1:
            return f"sub-workflow {name!r} (run {run_id}) {self.status}: {self.error}"
        chain = list(self.chain)
        if len(chain) > _SHOWN_CHAIN:
            chain[_SHOWN_CHAIN // 2 : -2] = [f"... ({len(self.chain) - _SHOWN_CHAIN // 2 - 2} more)"]
        return (
            f"sub-workflow {name!r} (run {run_id}) {self.status} {len(self.chain) - 1} levels down "
            f"({' -> '.join(chain)}), in run {self.run_id}: {self.error}"
        )


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
        # top-level run id -> sub-run id -> the failure of one of its steps, until the step above reads it
        self._failures: dict[str, dict[str, _Failure]] = {}

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
            self._failures.pop(run_id, None)

    def _root(self, run_id: str | None) -> str | None:
        """The top-level run ``run_id`` is under (itself, if it is one)."""
        root = run_id
        while root is not None and (parent := self._active.parent_of(root)) is not None:
            root = parent
        return root

    def _count(self, parent_run_id: str | None) -> None:
        """Bound the sub-runs under one top-level run: depth alone lets a workflow whose steps each
        run it again multiply (10 steps, 8 levels: 10**8 runs)."""
        root = self._root(parent_run_id)
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
            raise StepFailedError(ctx.step_name, self._failed(name, record, ctx).reason(record.run_id))
        return {"run_id": record.run_id, "outputs": record.outputs()}

    def _failed(self, name: str, record: RunRecord, ctx: ActionContext) -> _Failure:
        """The failure of step ``ctx.step_name``, whose sub-run ``record`` of ``name`` did not complete:
        when that run failed only because its own sub-run did, the failure below with one more level;
        kept for the step above while this run is itself a sub-run."""
        root = self._root(ctx.run_id)
        with self._lock:
            below = self._failures.get(root, {}).pop(record.run_id, None) if root is not None else None
        if below is not None and record.failed_steps == [below.step]:
            failure = _Failure(ctx.step_name, (name, *below.chain), below.run_id, below.status, below.error)
        else:
            failure = _Failure(ctx.step_name, (name,), record.run_id, record.status.value, record.error)
        if root is not None and ctx.run_id is not None and ctx.run_id != root:
            with self._lock:
                self._failures.setdefault(root, {})[ctx.run_id] = failure
        return failure

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
