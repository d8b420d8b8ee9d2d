"""The start of a run: its first record and its state, built from a plan and handed to the driver.

Owns no state of its own: it reads the limits every run gets (``max_map_items``, the template budget)
and puts each new run into the table of active runs (``_workflow_active``) before the run driver
(``_workflow_dispatch``) queues its first steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from codomyrmex_orchestration.core._client import calling_client
from codomyrmex_orchestration.core._secrets import SecretSource
from codomyrmex_orchestration.core._workflow_active import ActiveRuns
from codomyrmex_orchestration.core._workflow_dispatch import RunDriver
from codomyrmex_orchestration.core._workflow_events import Listeners
from codomyrmex_orchestration.core._workflow_plan import Plan
from codomyrmex_orchestration.core._workflow_recorder import RunRecorder
from codomyrmex_orchestration.core._workflow_run import RunState, StepCallback, new_record
from codomyrmex_orchestration.core.models import RunRecord, TaskPriority
from codomyrmex_orchestration.core.scheduler import TaskOrchestrator

__all__ = ["RunStarter"]


class RunStarter:
    """Builds a run (record and state) and starts it; ``WorkflowManager``'s runs, sub-runs and resumes
    all begin here."""

    def __init__(
        self,
        *,
        orchestrator: TaskOrchestrator,
        recorder: RunRecorder,
        listeners: Listeners,
        active: ActiveRuns,
        driver: RunDriver,
        secrets: Callable[[], SecretSource],
        max_map_items: int,
        max_resolved_size: int,
        on_resume: Callable[[str, Plan], None],
        keep_version: Callable[[Plan], None] | None = None,
    ) -> None:
        self._orchestrator = orchestrator
        self._recorder = recorder
        self._listeners = listeners
        self._active = active
        self._driver = driver
        self._secrets = secrets  # the manager's current source: compose and the CLI replace it
        self.max_map_items = max_map_items
        self.max_resolved_size = max_resolved_size
        self._on_resume = on_resume  # a resumed run's steps take over the sub-runs its earlier attempts left
        self._keep_version = keep_version  # after the run's record is queued: see _version_pins

    def start(
        self,
        plan: Plan,
        parameters: Mapping[str, Any] | None,
        *,
        priority: TaskPriority = TaskPriority.NORMAL,
        session_id: str | None = None,
        on_step: StepCallback | None = None,
        depth: int = 0,
        parent_run_id: str | None = None,
        parent_step: str | None = None,
        previous: RunRecord | None = None,
        max_parallel: int | None = None,
        default_resources: Mapping[str, Any] | None = None,
        client: str | None = None,
        use_cache: bool = True,
        before_record: Callable[[str], object] | None = None,
    ) -> RunState:
        """A new run of ``plan`` (a resume when ``previous`` is given), active and started.

        ``before_record(run_id)`` is called once the run has its id, before anything of it is saved
        or started (e.g. the CLI's owner lock: held before a recovery can see the run); if it raises,
        the run is refused and nothing is left behind.

        Raises:
            LimitExceededError: the scheduler's queue is at its cap or the client's share of it (a sub-run
                is never refused so), the parameters are too large, or the state directory has no room.
        """
        client = client or session_id or calling_client.get()  # whom its steps are queued for
        if parent_run_id is None:  # the door of new work; a sub-run continues its parent's
            self._orchestrator.check_queue_room(client)
        # Who reads a run while it goes, besides snapshots: a durable store and on_step read its live
        # record (every row), and they and listeners hear each step start as it happens.
        live_readers = self._recorder.durable or on_step is not None
        record = new_record(
            plan,
            parameters,
            priority=priority,
            session_id=session_id,
            parent_run_id=parent_run_id,
            previous=previous,
            pending_rows=live_readers,
            parent_step=parent_step,
        )
        # Refuses work the state directory has no room for, the run's record (estimated) included, and
        # holds that room for the run until its record is committed.
        store = self._recorder.store
        store.check_budget(record.parameters, steps=len(plan.spec.steps), run_id=record.run_id)
        try:
            if before_record is not None:
                before_record(record.run_id)
            run = RunState(
                record,
                plan,
                priority=priority,
                depth=depth,
                on_step=on_step,
                max_parallel=max_parallel,
                default_resources=default_resources,
                save_step=self._recorder.step_saver,
                max_map_items=self.max_map_items,
                max_resolved_size=self.max_resolved_size,
                client=client,
                secrets=self._secrets().get,
                use_cache=use_cache,
                starts_from=None if live_readers or self._listeners else self._orchestrator.group_starts,
                save_run=self._recorder.store.save_run if self._recorder.durable else None,
            )
            parent = self._active.get(record.parent_run_id) if record.parent_run_id is not None else None
            if parent is not None and record.parent_step is not None:  # its questions are its parent's too
                run.parent = (parent, record.parent_step)
            if previous is not None:
                self._on_resume(run.run_id, plan)
            self._active.add(run)
            self._driver.start(run)  # queues the run's record first
        except BaseException:
            # Its start failed: the room goes back (a record already queued counts once committed).
            store.release_admission(record.run_id)
            raise
        if self._keep_version is not None:
            self._keep_version(plan)
        return run
