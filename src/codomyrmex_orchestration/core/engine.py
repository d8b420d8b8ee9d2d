"""OrchestrationEngine: owns the scheduler, resources, workflows, projects, the store and the timers, and
composes the session registry, the event bus, the counters and the reports on top of them.

The parts live in their own modules: sessions and their TTLs in ``_sessions``, the event bus in
``_events``, the counters in ``_metrics``, the health/metrics/status reports in ``_health``, the
complex-workflow definition in ``_complex``. Building an engine from ``Settings`` and the process-wide
singletons live outside ``core`` in :mod:`codomyrmex_orchestration.compose`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from codomyrmex_orchestration.config import (
    DEFAULT_CONFIG_DIR,
    DEFAULT_MAX_MAP_ITEMS,
    DEFAULT_MAX_OPEN_SESSIONS,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MAX_QUEUED_TASKS,
    DEFAULT_MAX_RESOLVED_SIZE,
    DEFAULT_MAX_STEPS,
    DEFAULT_MAX_SUBWORKFLOW_DEPTH,
    DEFAULT_MAX_SUBWORKFLOW_RUNS,
    DEFAULT_MAX_WORKERS,
    DEFAULT_MAX_WORKFLOWS,
    DEFAULT_PROJECTS_DIR,
    DEFAULT_STATE_DIR,
    DEFAULT_TEMPLATES_DIR,
)
from codomyrmex_orchestration.core._allocations import UserAllocations
from codomyrmex_orchestration.core._complex import complex_workflow_document
from codomyrmex_orchestration.core._engine_lifecycle import check_arguments, close_parts
from codomyrmex_orchestration.core._events import EventHandler, Publisher
from codomyrmex_orchestration.core._health import (
    HealthReport,
    MetricsReport,
    SystemStatus,
    build_health,
    build_metrics,
    build_status,
)
from codomyrmex_orchestration.core._limits import OutputLimiter
from codomyrmex_orchestration.core._metrics import EngineCounters
from codomyrmex_orchestration.core._procs import guard_processes
from codomyrmex_orchestration.core._run_answers import run_answer
from codomyrmex_orchestration.core._session_runs import SessionWork, stop_session_work
from codomyrmex_orchestration.core._sessions import (
    ClosedSession,
    OrchestrationMode,
    Session,
    SessionRegistry,
    SessionStatus,
    new_session,
)
from codomyrmex_orchestration.core.actions import ActionRegistry, create_registry
from codomyrmex_orchestration.core.backends import ExecutionBackend
from codomyrmex_orchestration.core.models import ItemWindow, RunRecord, TaskPriority, TaskRecord, TaskSpec
from codomyrmex_orchestration.core.projects import ProjectManager
from codomyrmex_orchestration.core.resources import Allocation, ResourceManager
from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
from codomyrmex_orchestration.core.store import (
    DEFAULT_MAX_PARAMETERS_BYTES,
    DEFAULT_RETENTION_EVENTS,
    DEFAULT_RETENTION_RUNS,
    DEFAULT_STATE_MAX_BYTES,
    EngineStateStore,
    MemoryStore,
    SqliteStore,
)
from codomyrmex_orchestration.core.timers import TimerService, wait_limit
from codomyrmex_orchestration.core.workflows import StepCallback, WorkflowManager
from codomyrmex_orchestration.errors import (
    InvalidInputError,
)

__all__ = [
    "EventHandler",
    "OrchestrationEngine",
    "OrchestrationMode",
    "Session",
    "SessionStatus",
    "build_resource_manager",
]

_log = structlog.get_logger("codomyrmex_orchestration.engine")


def _default_store(
    state_dir: Path,
    durable: bool,
    *,
    retention_runs: int,
    retention_events: int,
    max_bytes: int | None,
    max_parameters_bytes: int,
) -> EngineStateStore:
    if durable:
        return SqliteStore(
            state_dir / "state.db",
            retention_runs=retention_runs,
            retention_events=retention_events,
            max_bytes=max_bytes,
            max_parameters_bytes=max_parameters_bytes,
        )
    return MemoryStore(
        retention_runs=retention_runs,
        retention_events=retention_events,
        max_parameters_bytes=max_parameters_bytes,
    )


def _resources_file(config_dir: Path | str | None) -> Path | None:
    """``resources.json`` beside the ``config/`` tree holding ``config_dir``, if there is one."""
    path = Path(config_dir).parent.parent / "resources.json" if config_dir else None
    return path if path is not None and path.is_file() else None


def build_resource_manager(
    *,
    state_dir: Path | str = DEFAULT_STATE_DIR,
    config_dir: Path | str | None = DEFAULT_CONFIG_DIR,
    max_workers: int = DEFAULT_MAX_WORKERS,
    durable: bool = True,
    resources_config: Mapping[str, Any] | None = None,
    timers: TimerService | None = None,
) -> ResourceManager:
    """The resource manager an engine built with these arguments has (so that a command checking steps'
    ``resources`` without an engine grants what a run would): the machine's capacities, storage where
    the state lives, ``resources.json`` beside the config tree, then ``resources_config``."""
    return ResourceManager(
        state_dir=Path(state_dir) if durable else None,
        worker_threads=max_workers,
        config=resources_config,
        config_path=_resources_file(config_dir),
        timers=timers,
    )


def _output_limiter(
    max_bytes: int | None, store: EngineStateStore, state_dir: Path, spill: bool
) -> OutputLimiter | None:
    """The one cap on step and task outputs; spills go under ``state_dir/outputs`` within the store's
    byte budget (durable mode)."""
    if max_bytes is None:
        return None
    budget = store if isinstance(store, SqliteStore) else None
    return OutputLimiter(max_bytes, spill_dir=state_dir / "outputs" if spill else None, budget=budget)


def _task_spec(spec: TaskSpec | Mapping[str, Any]) -> TaskSpec:
    if isinstance(spec, TaskSpec):
        return spec
    try:
        return TaskSpec.model_validate(spec)
    except ValidationError as exc:
        raise InvalidInputError.from_validation(exc) from None


class OrchestrationEngine:
    """The control plane: one instance each of the registry, scheduler, resources, workflows,
    projects, store and timer service, plus sessions, events, health and metrics.

    Args:
        state_dir: where ``state.db`` lives (durable mode).
        config_dir: workflow JSON loaded at start.
        sample_dir: sample workflow JSON loaded before ``config_dir`` (``None``: none).
        projects_dir, templates_dir: root for projects; overrides for project and doc templates.
        max_workers: the scheduler's worker threads.
        max_queued_tasks: most tasks and steps accepted and not started (``None``: no cap).
        max_queued_per_client: most of those one client may have (``None``: 3/4 of the cap).
        max_workflows, max_open_sessions: most workflows registered, sessions open, at once.
        max_steps, max_map_items: most steps a workflow, items one map step (``for_each``), may have.
        max_resolved_size: most characters a step's references may put into its parameters.
        max_output_bytes: most bytes of JSON a step's (or task's) output may take; larger outputs are
            replaced by a truncation marker (``None``: no cap).
        max_subworkflow_depth, max_subworkflow_runs: deepest ``workflow.run`` nesting, most sub-runs per run.
        spill_outputs: write truncated outputs in full under ``state_dir/outputs/`` (durable mode).
        allow_code_execution: allow ``shell.run`` / ``python.call``.
        durable: keep state in SQLite under ``state_dir`` (else in memory).
        resources_config: overrides for resource capacities.
        registry: the action registry (a fresh one when ``None``).
        store: the state store (built from ``durable`` and the retention limits when ``None``).
        backend: where ready steps run (``None``: the scheduler's threads; see ``backends.create_backend``).
        timers: the timer service to share (one is made, and closed on shutdown, when ``None``).
        retention_runs, retention_events: most finished runs and events the store keeps.
        state_max_bytes, max_parameters_bytes: byte budgets of the state, of a run's or a task's parameters.
        recover: at start, mark the store's PENDING/RUNNING runs INTERRUPTED and continue those waiting
            for input; only for the process that owns the state directory (the CLI, beside a server, not).
    """

    def __init__(
        self,
        *,
        state_dir: Path | str = DEFAULT_STATE_DIR,
        config_dir: Path | str | None = DEFAULT_CONFIG_DIR,
        projects_dir: Path | str = DEFAULT_PROJECTS_DIR,
        templates_dir: Path | str | None = DEFAULT_TEMPLATES_DIR,
        max_workers: int = DEFAULT_MAX_WORKERS,
        max_queued_tasks: int | None = DEFAULT_MAX_QUEUED_TASKS,
        max_queued_per_client: int | None = None,
        sample_dir: Path | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
        max_workflows: int = DEFAULT_MAX_WORKFLOWS,
        max_open_sessions: int = DEFAULT_MAX_OPEN_SESSIONS,
        max_map_items: int = DEFAULT_MAX_MAP_ITEMS,
        max_resolved_size: int = DEFAULT_MAX_RESOLVED_SIZE,
        max_output_bytes: int | None = DEFAULT_MAX_OUTPUT_BYTES,
        max_subworkflow_depth: int = DEFAULT_MAX_SUBWORKFLOW_DEPTH,
        max_subworkflow_runs: int = DEFAULT_MAX_SUBWORKFLOW_RUNS,
        spill_outputs: bool = True,
        allow_code_execution: bool = True,
        durable: bool = True,
        resources_config: Mapping[str, Any] | None = None,
        registry: ActionRegistry | None = None,
        store: EngineStateStore | None = None,
        backend: ExecutionBackend | None = None,
        timers: TimerService | None = None,
        retention_runs: int = DEFAULT_RETENTION_RUNS,
        retention_events: int = DEFAULT_RETENTION_EVENTS,
        state_max_bytes: int | None = DEFAULT_STATE_MAX_BYTES,
        max_parameters_bytes: int = DEFAULT_MAX_PARAMETERS_BYTES,
        recover: bool = True,
    ) -> None:
        check_arguments(locals())  # before anything opens, so each is named as it was passed
        try:
            self.started_at = time.monotonic()
            self.state_dir = Path(state_dir)
            self.counters = EngineCounters()
            self._owns_timers = timers is None
            self.timers = timers if timers is not None else TimerService()
            self.store: EngineStateStore = store or _default_store(
                self.state_dir,
                durable,
                retention_runs=retention_runs,
                retention_events=retention_events,
                max_bytes=state_max_bytes,
                max_parameters_bytes=max_parameters_bytes,
            )
            self._publisher = Publisher(store=self.store, counters=self.counters)
            self._publish = self._publisher.publish
            self.events = self._publisher.bus
            self.interrupted_runs: list[str] = self.store.recover() if recover else []
            self.registry = registry or create_registry(allow_code_execution=allow_code_execution)
            if durable:  # before any resume can start a step again: kill the groups a crash left running
                guard_processes(self.registry, self.state_dir / "procs")
            self.resource_manager = build_resource_manager(
                state_dir=self.state_dir,
                config_dir=config_dir,
                max_workers=max_workers,
                durable=durable,
                resources_config=resources_config,
                timers=self.timers,
            )
            self.output_limiter = _output_limiter(
                max_output_bytes, self.store, self.state_dir, durable and spill_outputs
            )
            self.task_orchestrator = TaskOrchestrator(
                max_workers,
                registry=self.registry,
                resource_manager=self.resource_manager,
                backend=backend,
                output_limit=self.output_limiter,
                timers=self.timers,
                max_queued=max_queued_tasks,
                max_queued_per_client=max_queued_per_client,
                max_parameters_bytes=max_parameters_bytes,
            )
            self.workflow_manager = WorkflowManager(
                orchestrator=self.task_orchestrator,
                registry=self.registry,
                store=self.store,
                config_dir=config_dir,
                sample_dir=sample_dir,
                max_steps=max_steps,
                max_workflows=max_workflows,
                max_map_items=max_map_items,
                max_resolved_size=max_resolved_size,
                max_subworkflow_depth=max_subworkflow_depth,
                max_subworkflow_runs=max_subworkflow_runs,
                max_output_bytes=max_output_bytes,
            )
            self.sessions = SessionRegistry(
                store=self.store,
                timers=self.timers,
                stop_work=partial(
                    stop_session_work, self.workflow_manager, self.task_orchestrator, self.resource_manager
                ),
                on_closed=partial(_announce_closed, self),
                max_open=max_open_sessions,
            )
            self._session_work = SessionWork(
                self.sessions, self.workflow_manager, self.task_orchestrator, self._publish
            )
            # sessions the last process left open
            for session_id in self.sessions.recover() if recover else []:
                self._publish(
                    "session.closed", {"session_id": session_id, "status": SessionStatus.CLOSED.value}
                )
            templates = Path(templates_dir) if templates_dir is not None else None
            self.project_manager = ProjectManager(
                projects_dir,
                templates_dir=templates,
                workflow_manager=self.workflow_manager,
                store=self.store,
            )
            self.project_manager.register_allowed_workflows() if recover else None  # those refused before
            self.workflow_manager.add_listener(self._on_workflow_event)
            self.allocations = UserAllocations(
                resources=self.resource_manager,
                store=self.store,
                sessions=self.sessions,
                counters=self.counters,
            )
            self.resource_manager.add_listener(self._on_resource_event)
            self.allocations.restore()
            for run_id in self.interrupted_runs:
                self._publish("run.interrupted", {"run_id": run_id})
            self.workflow_manager.inputs.reload() if recover else None  # continue the runs waiting for input
        except BaseException:  # nothing may outlive a failed construction: no thread, no open file
            close_parts(self, keep=(store, registry))  # what the caller gave is still the caller's
            raise

    # ------------------------------------------------------------------ events

    def register_event_handler(self, event: str, handler: EventHandler) -> None:
        """Call ``handler(event, payload)`` for ``event`` (``"*"`` for all), on the event thread.

        ``event`` not in ``_events.ENGINE_EVENTS``: ``InvalidInputError`` listing them. A handler that raises
        is logged and counted; it never breaks a run; it may register or unregister handlers while it runs.
        """
        self.events.register(event, handler)

    def unregister_event_handler(self, event: str, handler: EventHandler) -> bool:
        return self.events.unregister(event, handler)

    def drain_events(self, timeout: float | None = 5.0) -> bool:
        """Wait until handlers have seen every event published so far (``timeout=None``: no limit)."""
        return self.events.drain(timeout)

    def _on_workflow_event(self, event: str, payload: dict[str, Any]) -> None:
        if event == "step.completed" and payload.get("duration_seconds") is not None:
            self.counters.add_step_duration(payload["duration_seconds"])
        if event in {"run.completed", "run.failed", "run.cancelled"}:
            session_id = payload.get("session_id")
            if session_id:  # unless a resume started the run again since (it keeps its slot)
                self.sessions.run_ended(session_id, payload["run_id"], self.workflow_manager.is_active)
        self._publish(event, payload)

    # ------------------------------------------------------------------ resources

    def allocate_resources(
        self,
        requester_id: str,
        requirements: Mapping[str, Any],
        *,
        ttl: float | None = None,
        timeout: float | None = 0.0,
        session_id: str | None = None,
    ) -> list[Allocation]:
        """Reserve resources for a user (all or nothing); persisted, so they survive a restart.

        With ``session_id`` the allocations are still the requester's (``release_resources`` of the
        requester frees them) and are also released when that session closes.
        ``timeout`` is how long to wait for capacity: 0 (the default) not at all, ``None`` without limit.

        Raises:
            InsufficientResourcesError: not enough capacity (says what was requested and available).
            ResourceNotFoundError / InvalidInputError: an unknown key or a bad amount (named).
        """
        return self.allocations.allocate(
            requester_id, requirements, ttl=ttl, timeout=timeout, session_id=session_id
        )

    def release_resources(self, *, allocation_id: str | None = None, requester_id: str | None = None) -> int:
        """Release one allocation by id, or every allocation of a requester. Returns how many."""
        return self.allocations.release(allocation_id=allocation_id, requester_id=requester_id)

    def _on_resource_event(self, event: str, payload: dict[str, Any]) -> None:
        if event == "resource.released":
            self.allocations.released(str(payload.get("allocation_id")))
        self._publish(event, payload)

    # ------------------------------------------------------------------ sessions

    def create_session(
        self,
        user_id: str = "anonymous",
        name: str = "",
        description: str = "",
        mode: OrchestrationMode | str = OrchestrationMode.PARALLEL,
        max_parallel_tasks: int = 10,
        max_parallel_workflows: int = 5,
        timeout_seconds: float | None = 3600.0,
        resource_requirements: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Open a session and return its id. RESOURCE_AWARE sessions reserve their requirements now.

        ``timeout_seconds`` is how long the session may stay unused before it expires (``None``: never).

        Raises:
            InvalidInputError: a limit, the timeout (at most 365 days) or the mode is out of range (named).
            LimitExceededError: ``max_open_sessions`` are open, or the state's byte budget is spent.
            InsufficientResourcesError: the requirements cannot be reserved.
        """
        session = new_session(
            user_id=user_id,
            name=name,
            description=description,
            mode=mode,
            max_parallel_tasks=max_parallel_tasks,
            max_parallel_workflows=max_parallel_workflows,
            timeout_seconds=timeout_seconds,
            resource_requirements=resource_requirements,
            metadata=metadata,
        )
        self.sessions.check_room()
        requester = f"session:{session.session_id}"
        if session.resource_requirements:
            allocated = self.resource_manager.allocate_resources(requester, session.resource_requirements)
            session.allocations = [a.allocation_id for a in allocated]
        try:
            self.sessions.add(session)
        except BaseException:  # the cap was reached meanwhile: give back what was reserved for it
            self.resource_manager.deallocate_resources(requester)
            raise
        self._publish("session.created", {"session_id": session.session_id, "user_id": user_id})
        return session.session_id

    def get_session(self, session_id: str) -> Session:
        """A copy of a session, open or closed.

        Raises:
            SessionNotFoundError: unknown id.
        """
        return self.sessions.get(session_id)

    def list_sessions(self, status: SessionStatus | str | None = None) -> list[Session]:
        return self.sessions.list(SessionStatus(status) if status is not None else None)

    def close_session(self, session_id: str, *, cancel_running: bool = False) -> ClosedSession:
        """Close a session: release its allocations, optionally cancel its running work; its
        history is kept. Closing a closed session again (one a restart closed too) returns it with a
        ``note``; with ``cancel_running`` it cancels the runs and tasks it still runs. The answer lists
        what this close cancelled.

        Raises:
            SessionNotFoundError: unknown id.
        """
        return self.sessions.close_session(session_id, SessionStatus.CLOSED, cancel_running=cancel_running)

    # ------------------------------------------------------------------ execution

    def execute_workflow(
        self,
        name: str,
        *,
        parameters: Mapping[str, Any] | None = None,
        session_id: str | None = None,
        wait: bool = True,
        timeout: float | None = None,
        priority: TaskPriority | None = None,
        on_step: StepCallback | None = None,
        use_cache: bool = True,
        items: ItemWindow | None = None,
    ) -> RunRecord:
        """Run a registered workflow, within a session's limits and mode when one is given.

        With ``wait`` it waits up to ``timeout`` seconds (``None``: until the run ends) and returns the
        record as it stands then (``items``: each map step lists only this window of its items, the only
        ones built). ``use_cache=False``: cached steps run anyway (and refresh the cache)."""
        options: dict[str, Any] = {"priority": priority or TaskPriority.NORMAL, "use_cache": use_cache}
        run_id = self._session_work.start(name, parameters, session_id=session_id, on_step=on_step, **options)
        return run_answer(self.workflow_manager, run_id, wait=wait, timeout=timeout, items=items)

    def execute_complex_workflow(
        self,
        definition: Mapping[str, Any],
        *,
        name: str,
        parameters: Mapping[str, Any] | None = None,
        session_id: str | None = None,
        wait: bool = True,
        timeout: float | None = None,
        on_step: StepCallback | None = None,
        use_cache: bool = True,
        overwrite: bool = False,
        items: ItemWindow | None = None,
    ) -> RunRecord:
        """Register a workflow from ``{"steps": [...], "dependencies": {step: [steps]}}`` (merged into the
        steps' own lists) and run it like :meth:`execute_workflow` (``wait``, ``use_cache``, ``items``). Under
        a taken name the same content runs again; other content needs ``overwrite`` (AlreadyExistsError)."""
        document = complex_workflow_document(definition, name=name)
        self.workflow_manager.create_workflow(document, overwrite=overwrite, reuse=True)
        waits: dict[str, Any] = {"wait": wait, "timeout": timeout, "on_step": on_step, "use_cache": use_cache}
        return self.execute_workflow(name, parameters=parameters, session_id=session_id, items=items, **waits)

    def execute_task(
        self,
        spec: TaskSpec | Mapping[str, Any],
        *,
        session_id: str | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> TaskRecord:
        """Submit one action as a task (through the same scheduler) and optionally wait for it.

        With ``wait`` it waits up to ``timeout`` seconds (``None``: until the task is final) and returns
        the record as it stands then.
        """
        task_id = self.start_task(spec, session_id=session_id)
        if not wait:
            return self.task_orchestrator.get_task(task_id)
        return _wait_task(self.task_orchestrator, task_id, timeout)

    def start_task(self, spec: TaskSpec | Mapping[str, Any], *, session_id: str | None = None) -> str:
        """Submit one action as a task like ``execute_task(wait=False)``, returning only its task id.
        It is queued for the session, else the calling client (clients take turns within a priority)."""
        return self._session_work.start_task(_task_spec(spec), session_id=session_id)

    def resume_run(
        self,
        run_id: str,
        *,
        wait: bool = True,
        timeout: float | None = None,
        on_step: StepCallback | None = None,
        items: ItemWindow | None = None,
    ) -> RunRecord:
        """Re-execute the unfinished steps of an interrupted, failed or cancelled run (``wait``, ``items``
        as :meth:`execute_workflow`), in its open session (its limits and mode), else outside any session."""
        self._session_work.resume(run_id, on_step=on_step)
        return run_answer(self.workflow_manager, run_id, wait=wait, timeout=timeout, items=items)

    # ------------------------------------------------------------------ health and metrics

    def health_check(self) -> HealthReport:
        """Per-component checks and an overall verdict: healthy, degraded or unhealthy. Never raises."""
        return build_health(self)

    def get_metrics(self) -> MetricsReport:
        """Counters and latencies since start. Never raises."""
        return build_metrics(self)

    def get_system_status(self) -> SystemStatus:
        """Sessions, workflows, runs, queue by priority, resources and the executor. Never raises."""
        return build_status(self)

    # ------------------------------------------------------------------ lifecycle

    def shutdown(self, *, cancel_running: bool = True, timeout: float | None = 10.0) -> None:
        """Cancel running work (it stays resumable), stop threads and flush the store. Never raises: a
        stage that fails is logged and counted, and the others still run.

        ``timeout`` bounds each wait for threads and work to finish (``None``: no limit of the engine's
        own; the scheduler then applies its default).
        """
        close_parts(self, cancel_running=cancel_running, timeout=timeout)


def _wait_task(orchestrator: TaskOrchestrator, task_id: str, timeout: float | None) -> TaskRecord:
    """The task's record once final, or as it stands after ``timeout`` seconds (``None``: no limit)."""
    settled = threading.Event()
    final: list[TaskRecord] = []

    def deliver(record: TaskRecord) -> None:
        final.append(record)
        settled.set()

    orchestrator.on_settled(task_id, deliver)
    if settled.wait(wait_limit(timeout)):
        return final[0]
    return orchestrator.get_task(task_id)


def _announce_closed(engine: OrchestrationEngine, session: Session) -> None:
    engine._publish("session.closed", {"session_id": session.session_id, "status": session.status.value})
