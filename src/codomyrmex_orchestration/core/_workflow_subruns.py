"""Sub-workflow runs (``workflow.run``): starting a child run from a step and bounding how many there are.

:class:`SubRuns` owns the count of sub-runs started under each active top-level run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from codomyrmex_orchestration.core._workflow_run import RunState
from codomyrmex_orchestration.core.actions import ActionContext
from codomyrmex_orchestration.core.actions.workflow import (
    MAX_SUBWORKFLOW_DEPTH_SETTING,
    MAX_SUBWORKFLOW_RUNS_SETTING,
)
from codomyrmex_orchestration.core.models import WorkflowStatus
from codomyrmex_orchestration.errors import LimitExceededError, StepFailedError

__all__ = ["SubRuns"]

#: How long a cancelled child run may take to settle before its step gives up on it.
_CANCEL_WAIT = 10.0


class SubRuns:
    """Runs ``workflow.run`` steps as child runs that end with their step.

    Args:
        start_child: starts a run of (workflow name, parameters, depth, parent run id).
        cancel: cancels a run.
        parent_of: the parent run id of an active run (None: top-level, or not active).
        max_depth: deepest nesting.
        max_runs: most sub-runs under one top-level run, all levels together.
    """

    def __init__(
        self,
        *,
        start_child: Callable[[str, dict[str, Any], int, str | None], RunState],
        cancel: Callable[[RunState], None],
        parent_of: Callable[[str], str | None],
        max_depth: int,
        max_runs: int,
    ) -> None:
        self._start_child = start_child
        self._cancel = cancel
        self._parent_of = parent_of
        self.max_depth = max_depth
        self.max_runs = max_runs
        self._lock = threading.Lock()  # guards _counts
        self._counts: dict[str, int] = {}  # top-level run id -> sub-runs started under it

    def forget(self, run_id: str) -> None:
        """A run ended: its count goes (a no-op for a run that is not top-level)."""
        with self._lock:
            self._counts.pop(run_id, None)

    def _count(self, parent_run_id: str | None) -> None:
        """Bound the sub-runs under one top-level run: depth alone lets a workflow whose steps each
        run it again multiply (10 steps, 8 levels: 10**8 runs)."""
        root = parent_run_id
        while root is not None and (parent := self._parent_of(root)) is not None:
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
        child = self._start_child(name, parameters, ctx.depth + 1, ctx.run_id)
        wake = threading.Event()
        child.watch(wake.set)
        remove = ctx.on_cancel(wake.set)
        try:
            with ctx.blocking():
                wake.wait(ctx.remaining())
        finally:
            remove()
        if not child.done.is_set():
            self._cancel(child)
            child.done.wait(_CANCEL_WAIT)
            ctx.check_cancelled()
        record = child.snapshot()
        if record.status is not WorkflowStatus.COMPLETED:
            raise StepFailedError(
                ctx.step_name,
                f"sub-workflow {name!r} (run {record.run_id}) {record.status.value}: {record.error}",
            )
        return {"run_id": record.run_id, "outputs": record.outputs()}
