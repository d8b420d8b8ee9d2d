"""The engine's work inside sessions: runs started and resumed and tasks submitted under a session's
limits and mode, and the work and resources a closing session stops. It owns no state: the sessions' is
the :class:`~codomyrmex_orchestration.core._sessions.SessionRegistry`'s, the runs' the workflow
manager's, the tasks' the scheduler's.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from codomyrmex_orchestration.core._client import calling_client
from codomyrmex_orchestration.core._sessions import Session, SessionRegistry
from codomyrmex_orchestration.core.models import ItemWindow, TaskRecord, TaskSpec, WorkflowStatus
from codomyrmex_orchestration.core.resources import ResourceManager
from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
from codomyrmex_orchestration.core.workflows import StepCallback, WorkflowManager
from codomyrmex_orchestration.errors import OrchestrationError

__all__ = ["SessionWork", "stop_session_work"]

#: A run read for its own fields: no map step item is built.
_NO_ITEMS = ItemWindow(limit=0)

Publish = Callable[[str, dict[str, Any]], None]


class SessionWork:
    """Runs and tasks started within sessions (see the module's docstring); ``publish`` announces the
    tasks' ends."""

    def __init__(
        self, sessions: SessionRegistry, workflows: WorkflowManager, tasks: TaskOrchestrator, publish: Publish
    ) -> None:
        self._sessions = sessions
        self._workflows = workflows
        self._tasks = tasks
        self._publish = publish

    def start(
        self, name: str, parameters: Mapping[str, Any] | None, *, session_id: str | None, **options: Any
    ) -> str:
        """Start a run of ``name`` within the open session ``session_id`` (its limit, its mode's options;
        ``None``: no session); the run id.

        Raises:
            SessionNotFoundError / InvalidStateError: an unknown or closed session.
            LimitExceededError: the session runs as many workflows as it may.
        """
        sessions, workflows = self._sessions, self._workflows
        with sessions.holding(session_id) as live:
            if live is not None:
                options.update(live.run_options())
                sessions.touch(live)
            # The run id alone: a record of a run just started lists every step (built for nothing when
            # the caller waits for the final one).
            run_id = workflows.start_workflow(name, parameters, session_id=session_id, **options)
            if live is not None:
                sessions.record_run(live, run_id, active=workflows.is_active(run_id))
        return run_id

    def resume(self, run_id: str, *, on_step: StepCallback | None) -> None:
        """Resume ``run_id`` (without waiting) in its session when that is still open here, under the
        session's limit and mode like a new run; a run whose session has closed (or is unknown) resumes
        outside any session, its ``session_id`` cleared. No record is built (as in :meth:`start`): the
        caller reads the one it shows.

        Raises:
            RunNotFoundError / InvalidStateError: as ``WorkflowManager.resume_run``.
            LimitExceededError: the run's open session runs as many workflows as it may.
        """
        sessions, workflows = self._sessions, self._workflows
        session_id = workflows.get_run(run_id, items=_NO_ITEMS).session_id
        with sessions.holding_if_open(session_id) as live:
            options: dict[str, Any] = {"session_id": None}
            if live is not None:
                options["session_id"] = session_id
                # A run the session still counts takes its own slot: either it runs (and the resume is
                # refused as such) or the end of its last attempt is still being reported.
                if run_id not in live.active_runs:
                    options.update(live.run_options())
                sessions.touch(live)
            workflows.resume_run(run_id, wait=False, on_step=on_step, items=_NO_ITEMS, **options)
            if live is not None:
                sessions.record_run(live, run_id, active=workflows.is_active(run_id))

    def start_task(self, spec: TaskSpec, *, session_id: str | None) -> str:
        """Submit ``spec`` within the open session ``session_id`` (its limit, its mode's resources;
        ``None``: no session), queued for the session, else the calling client (clients take turns
        within a priority); the task id. Its end is announced and frees its slot in the session.

        Raises:
            SessionNotFoundError / InvalidStateError: an unknown or closed session.
            LimitExceededError: the session runs as many tasks as it may.
        """
        sessions, tasks = self._sessions, self._tasks
        with sessions.holding(session_id) as live:
            if live is not None:
                spec = live.task_spec(spec)
                sessions.touch(live)
        on_done = _task_done(self._publish, sessions, session_id)
        task_id = tasks.submit_task(spec, on_done=on_done, session_id=session_id or calling_client.get())
        if session_id is not None:
            get = tasks.get_task
            sessions.record_task(session_id, task_id, lambda: not get(task_id).status.is_terminal)
        return task_id


def _task_done(
    publish: Publish, sessions: SessionRegistry, session_id: str | None
) -> Callable[[TaskRecord], None]:
    """A task's ``on_done``: announce how it ended and free its session slot."""

    def done(record: TaskRecord) -> None:
        publish(
            f"task.{record.status.value}",
            {"task_id": record.task_id, "name": record.name, "session_id": session_id},
        )
        if session_id is not None:
            sessions.task_ended(session_id, record.task_id)

    return done


def stop_session_work(
    workflows: WorkflowManager,
    tasks: TaskOrchestrator,
    resources: ResourceManager,
    session: Session,
    run_ids: Collection[str],
    task_ids: Collection[str],
    cancel_running: bool,
) -> tuple[list[str], list[str]]:
    """Release a closing session's resources and, with ``cancel_running``, cancel those of ``run_ids``
    still running as the session's and those of ``task_ids`` not final; the ids cancelled."""
    session_id = session.session_id
    cancelled_runs: list[str] = []
    cancelled_tasks: list[str] = []
    if cancel_running:
        for run_id in run_ids:
            if not workflows.is_active(run_id):
                continue  # ended
            if workflows.get_run(run_id, items=_NO_ITEMS).session_id != session_id:
                continue  # resumed outside the session since
            try:
                record = workflows.cancel_run(run_id)
            except OrchestrationError:
                continue  # ended meanwhile
            if record.status.is_terminal and record.status is not WorkflowStatus.CANCELLED:
                continue  # its steps had all settled: it ended as they did, the cancel changed nothing
            cancelled_runs.append(run_id)
        for task_id in task_ids:
            try:
                if tasks.cancel_task(task_id, f"session {session_id} closed"):
                    cancelled_tasks.append(task_id)
            except OrchestrationError:
                continue  # forgotten since
    for allocation_id in session.allocations:  # its users' allocations made in it, and its own
        resources.release(allocation_id)
    resources.deallocate_resources(f"session:{session_id}")
    return cancelled_runs, cancelled_tasks
