"""OrchestrationEngine: owns the scheduler, resources, workflows, projects and the store, and adds
sessions, events, health and metrics on top. The ``get_*()`` singletons all return its parts.
"""

from __future__ import annotations

import enum
import os
import queue
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, Field, ValidationError

from codomyrmex_orchestration.config import (
    DEFAULT_CONFIG_DIR,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MAX_STEPS,
    DEFAULT_MAX_SUBWORKFLOW_DEPTH,
    DEFAULT_MAX_SUBWORKFLOW_RUNS,
    DEFAULT_MAX_WORKERS,
    DEFAULT_PROJECTS_DIR,
    DEFAULT_STATE_DIR,
    DEFAULT_TEMPLATES_DIR,
    Settings,
)
from codomyrmex_orchestration.core._limits import OutputLimiter
from codomyrmex_orchestration.core._procs import guard_processes
from codomyrmex_orchestration.core.actions import ActionRegistry, create_registry
from codomyrmex_orchestration.core.backends import ExecutionBackend, create_backend
from codomyrmex_orchestration.core.models import (
    RunRecord,
    TaskPriority,
    TaskRecord,
    TaskSpec,
    utcnow,
)
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
from codomyrmex_orchestration.core.workflows import StepCallback, WorkflowManager
from codomyrmex_orchestration.errors import (
    InvalidInputError,
    InvalidStateError,
    LimitExceededError,
    OrchestrationError,
    SessionNotFoundError,
    WaitTimeoutError,
)

__all__ = [
    "EventHandler",
    "OrchestrationEngine",
    "OrchestrationMode",
    "Session",
    "SessionStatus",
    "configure_engine",
    "get_orchestration_engine",
    "get_project_manager",
    "get_resource_manager",
    "get_task_orchestrator",
    "get_workflow_manager",
    "reset_engine",
]

_log = structlog.get_logger("codomyrmex_orchestration.engine")

EventHandler = Callable[[str, dict[str, Any]], None]


class OrchestrationMode(enum.StrEnum):
    """How a session's work is run.

    SEQUENTIAL: one workflow at a time, one step at a time. PARALLEL: steps run as their
    dependencies allow. PRIORITY: the caller's priority is honoured (otherwise runs use NORMAL).
    RESOURCE_AWARE: every step is admitted by the ResourceManager (``{"compute": 1}`` when it
    declares nothing), and the session's own requirements are reserved while it is open.
    """

    SEQUENTIAL = "sequential"
    PARALLEL = "parallel"
    PRIORITY = "priority"
    RESOURCE_AWARE = "resource_aware"


class SessionStatus(enum.StrEnum):
    ACTIVE = "active"
    CLOSED = "closed"
    EXPIRED = "expired"


class Session(BaseModel):
    """A unit of agent work with its own limits; its history outlives it."""

    session_id: str
    user_id: str = "anonymous"
    name: str = ""
    description: str = ""
    mode: OrchestrationMode = OrchestrationMode.PARALLEL
    max_parallel_tasks: int = Field(default=10, ge=1, le=10_000)
    max_parallel_workflows: int = Field(default=5, ge=1, le=1_000)
    timeout_seconds: float | None = Field(default=3600.0, gt=0)
    resource_requirements: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    status: SessionStatus = SessionStatus.ACTIVE
    created_at: Any = Field(default_factory=utcnow)
    closed_at: Any = None
    runs: list[str] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list)
    allocations: list[str] = Field(default_factory=list)


class _LiveSession:
    __slots__ = ("active_runs", "active_tasks", "deadline", "session")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.active_runs: set[str] = set()
        self.active_tasks: set[str] = set()
        self.deadline = (
            time.monotonic() + session.timeout_seconds if session.timeout_seconds is not None else None
        )


class _EventBus:
    """Delivers events to handlers on one daemon thread, off the hot path."""

    def __init__(self, on_error: Callable[[str, BaseException], None]) -> None:
        self._handlers: dict[str, list[EventHandler]] = {}
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[str, dict[str, Any]] | None] = queue.SimpleQueue()
        self._on_error = on_error
        self.delivered = 0
        self._idle = threading.Condition()
        self._pending = 0
        self._thread = threading.Thread(target=self._loop, name="codomyrmex-events", daemon=True)
        self._thread.start()

    def register(self, event: str, handler: EventHandler) -> None:
        with self._lock:
            self._handlers.setdefault(event, []).append(handler)

    def unregister(self, event: str, handler: EventHandler) -> bool:
        with self._lock:
            handlers = self._handlers.get(event, [])
            if handler in handlers:
                handlers.remove(handler)
                return True
            return False

    def has_handlers(self) -> bool:
        with self._lock:
            return any(self._handlers.values())

    def publish(self, event: str, payload: dict[str, Any]) -> None:
        handlers = self._handlers
        if not handlers.get(event) and not handlers.get("*"):
            # Nobody listens (the usual case): waking the delivery thread for nothing would cost a
            # thread switch per task and per step. A handler registered later sees later events.
            return
        with self._idle:
            self._pending += 1
        self._queue.put((event, payload))

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until every published event was delivered (for orderly shutdown and tests)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            event, payload = item
            with self._lock:
                handlers = [*self._handlers.get(event, ()), *self._handlers.get("*", ())]
            for handler in handlers:
                try:
                    handler(event, payload)
                except Exception as exc:
                    self._on_error(event, exc)
            with self._idle:
                self._pending -= 1
                self.delivered += 1
                self._idle.notify_all()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float = 5.0) -> None:
        self.drain(timeout)
        self._queue.put(None)
        self._thread.join(timeout)


class OrchestrationEngine:
    """The control plane: one instance each of the registry, scheduler, resources, workflows,
    projects and store, plus sessions, events, health and metrics.

    Args:
        state_dir: where ``state.db`` lives (durable mode).
        config_dir: workflow JSON loaded at start.
        projects_dir: root for projects.
        templates_dir: overrides for project and doc templates.
        max_workers: the scheduler's worker threads.
        allow_code_execution: allow ``shell.run`` / ``python.call``.
        durable: keep state in SQLite under ``state_dir`` (else in memory).
        resources_config: overrides for resource capacities.
        retention_runs, retention_events: most finished runs and events the store keeps.
        state_max_bytes, max_parameters_bytes: the state directory's byte budget and the most bytes a
            run's parameters may take (see :class:`SqliteStore`).
        backend: where ready steps run (the scheduler's own threads when ``None``; see
            :func:`~codomyrmex_orchestration.core.backends.create_backend`).
        max_steps: most steps a workflow may have.
        max_output_bytes: most bytes of JSON a step's (or task's) output may take; larger outputs are
            replaced by a truncation marker (``None``: no cap).
        max_subworkflow_depth: deepest nesting of ``workflow.run``.
        max_subworkflow_runs: most sub-workflow runs under one top-level run.
        spill_outputs: write truncated outputs in full under ``state_dir/outputs/`` (durable mode).
        recover: at start, mark the store's PENDING/RUNNING runs INTERRUPTED (``store.recover()``).
            Right for the one process that owns the state directory (the server); a process that
            shares it with a live owner (the CLI's ``status``, ``health``, ``run``) passes False so
            it never declares another process's runs dead.
    """

    def __init__(
        self,
        *,
        state_dir: Path | str = DEFAULT_STATE_DIR,
        config_dir: Path | str | None = DEFAULT_CONFIG_DIR,
        projects_dir: Path | str = DEFAULT_PROJECTS_DIR,
        templates_dir: Path | str | None = DEFAULT_TEMPLATES_DIR,
        max_workers: int = DEFAULT_MAX_WORKERS,
        max_steps: int = DEFAULT_MAX_STEPS,
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
        retention_runs: int = DEFAULT_RETENTION_RUNS,
        retention_events: int = DEFAULT_RETENTION_EVENTS,
        state_max_bytes: int | None = DEFAULT_STATE_MAX_BYTES,
        max_parameters_bytes: int = DEFAULT_MAX_PARAMETERS_BYTES,
        recover: bool = True,
    ) -> None:
        self.started_at = time.monotonic()
        self.state_dir = Path(state_dir)
        self._lock = threading.RLock()
        self._errors: Counter[str] = Counter()
        self._last_error: dict[str, str] = {}
        self._events = _EventBus(self._handler_failed)
        self._step_durations: deque[float] = deque(maxlen=10_000)
        self._step_counts: Counter[str] = Counter()
        self._run_counts: Counter[str] = Counter()
        self._sessions: dict[str, _LiveSession] = {}
        self._closed_sessions: dict[str, Session] = {}
        self._session_cond = threading.Condition(self._lock)
        self._stopping = False

        if store is None:
            store = (
                SqliteStore(
                    self.state_dir / "state.db",
                    retention_runs=retention_runs,
                    retention_events=retention_events,
                    max_bytes=state_max_bytes,
                    max_parameters_bytes=max_parameters_bytes,
                )
                if durable
                else MemoryStore(
                    retention_runs=retention_runs,
                    retention_events=retention_events,
                    max_parameters_bytes=max_parameters_bytes,
                )
            )
        self.store: EngineStateStore = store
        self.interrupted_runs: list[str] = self.store.recover() if recover else []

        self.registry = (
            registry if registry is not None else create_registry(allow_code_execution=allow_code_execution)
        )
        if durable:  # before any resume can start a step again: kill the groups a crash left running
            guard_processes(self.registry, self.state_dir / "procs")
        resources_path = Path(config_dir).parent.parent / "resources.json" if config_dir else None
        self.resource_manager = ResourceManager(
            state_dir=self.state_dir if durable else None,
            worker_threads=max_workers,
            config=resources_config,
            config_path=resources_path if resources_path is not None and resources_path.is_file() else None,
        )
        self.output_limiter: OutputLimiter | None = None
        if max_output_bytes is not None:
            spill_dir = self.state_dir / "outputs" if durable and spill_outputs else None
            self.output_limiter = OutputLimiter(max_output_bytes, spill_dir=spill_dir)
        self.task_orchestrator = TaskOrchestrator(
            max_workers,
            registry=self.registry,
            resource_manager=self.resource_manager,
            backend=backend,
            output_limit=self.output_limiter,
        )
        self.workflow_manager = WorkflowManager(
            orchestrator=self.task_orchestrator,
            registry=self.registry,
            store=self.store,
            config_dir=config_dir,
            max_steps=max_steps,
            max_subworkflow_depth=max_subworkflow_depth,
            max_subworkflow_runs=max_subworkflow_runs,
            max_output_bytes=max_output_bytes,
        )
        self.project_manager = ProjectManager(
            Path(projects_dir),
            templates_dir=Path(templates_dir) if templates_dir is not None else None,
            workflow_manager=self.workflow_manager,
            store=self.store,
        )
        self.workflow_manager.add_listener(self._on_workflow_event)
        self._explicit_allocations: set[str] = set()
        self.resource_manager.add_listener(self._on_resource_event)
        self._restore_allocations()
        self._reaper = threading.Thread(target=self._reap_sessions, name="codomyrmex-sessions", daemon=True)
        self._reaper.start()
        for run_id in self.interrupted_runs:
            self._publish("run.interrupted", {"run_id": run_id})

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> OrchestrationEngine:
        """An engine configured from :class:`Settings` (``overrides`` win)."""
        kwargs: dict[str, Any] = {
            "state_dir": settings.state_dir,
            "config_dir": settings.config_dir,
            "projects_dir": settings.projects_dir,
            "templates_dir": settings.templates_dir,
            "max_workers": settings.max_workers,
            "max_steps": settings.max_steps,
            "max_output_bytes": settings.max_output_bytes,
            "max_subworkflow_depth": settings.max_subworkflow_depth,
            "max_subworkflow_runs": settings.max_subworkflow_runs,
            "spill_outputs": settings.spill_outputs,
            "allow_code_execution": settings.allow_shell is not False,
            "durable": settings.durable,
            "retention_runs": settings.retention_runs,
            "retention_events": settings.retention_events,
            "state_max_bytes": settings.state_max_bytes,
            "max_parameters_bytes": settings.max_parameters_bytes,
        }
        kwargs.update(overrides)
        if "backend" not in kwargs and settings.executor != "local":
            kwargs["backend"] = create_backend(
                settings.executor,
                dask_scheduler=settings.dask_scheduler,
                dask_n_workers=settings.dask_n_workers,
                dask_processes=settings.dask_processes,
                dask_worker_resources=settings.dask_worker_resources,
                dask_resource_map=settings.dask_resource_map,
                dask_worker_saturation=settings.dask_worker_saturation,
            )
        return cls(**kwargs)

    # ------------------------------------------------------------------ events

    def register_event_handler(self, event: str, handler: EventHandler) -> None:
        """Call ``handler(event, payload)`` for ``event`` (``"*"`` for all), on the event thread.

        A handler that raises is logged and counted; it never breaks a run.
        """
        self._events.register(event, handler)

    def unregister_event_handler(self, event: str, handler: EventHandler) -> bool:
        return self._events.unregister(event, handler)

    def _publish(self, event: str, payload: dict[str, Any]) -> None:
        if event.startswith("step."):
            self._step_counts[event] += 1
        elif event.startswith("run.") and event != "run.started":
            self._run_counts[event] += 1
        if not event.startswith("step.started"):
            try:
                self.store.append_event(event, payload)
            except OrchestrationError as exc:
                self._record_error("store", exc)
        self._events.publish(event, payload)

    def drain_events(self, timeout: float = 5.0) -> bool:
        """Wait until handlers have seen every event published so far."""
        return self._events.drain(timeout)

    def _handler_failed(self, event: str, exc: BaseException) -> None:
        self._record_error("events", exc)
        _log.warning("event handler failed", event_name=event, error=str(exc), error_type=type(exc).__name__)

    def _record_error(self, component: str, exc: BaseException | str) -> None:
        with self._lock:
            self._errors[component] += 1
            self._last_error[component] = str(exc) if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"

    def _on_workflow_event(self, event: str, payload: dict[str, Any]) -> None:
        if event == "step.completed" and payload.get("duration_seconds") is not None:
            self._step_durations.append(payload["duration_seconds"])
        if event in {"run.completed", "run.failed", "run.cancelled"}:
            session_id = payload.get("session_id")
            if session_id:
                with self._lock:
                    live = self._sessions.get(session_id)
                    if live is not None:
                        live.active_runs.discard(payload["run_id"])
                        self._session_cond.notify_all()
        self._publish(event, payload)

    # ------------------------------------------------------------------ resources

    def allocate_resources(
        self,
        requester_id: str,
        requirements: Mapping[str, Any],
        *,
        ttl: float | None = None,
        timeout: float | None = None,
        session_id: str | None = None,
    ) -> list[Allocation]:
        """Reserve resources for a user (all or nothing); persisted, so they survive a restart.

        With ``session_id`` the allocations belong to that session and are released when it closes.

        Raises:
            InsufficientResourcesError: not enough capacity (says what was requested and available).
            ResourceNotFoundError / InvalidInputError: an unknown key or a bad amount (named).
        """
        requester = requester_id
        if session_id is not None:
            with self._lock:
                self._live_session(session_id)
            requester = f"session:{session_id}"
        allocations = self.resource_manager.allocate_resources(
            requester, requirements, ttl=ttl, timeout=timeout
        )
        with self._lock:
            self._explicit_allocations.update(a.allocation_id for a in allocations)
            if session_id is not None and session_id in self._sessions:
                self._sessions[session_id].session.allocations.extend(a.allocation_id for a in allocations)
        for allocation in allocations:
            data = {**allocation.model_dump(mode="json"), "user_id": requester_id, "session_id": session_id}
            self.store.save_allocation(allocation.allocation_id, data)
        return allocations

    def release_resources(self, *, allocation_id: str | None = None, requester_id: str | None = None) -> int:
        """Release one allocation by id, or every allocation of a requester. Returns how many."""
        if allocation_id is None and requester_id is None:
            raise InvalidInputError("allocation_id", "give an allocation_id or a requester_id (user_id)")
        if allocation_id is not None:
            return 1 if self.resource_manager.release(allocation_id) else 0
        assert requester_id is not None
        return self.resource_manager.deallocate_resources(requester_id)

    def _on_resource_event(self, event: str, payload: dict[str, Any]) -> None:
        if event == "resource.released":
            allocation_id = payload.get("allocation_id")
            with self._lock:
                explicit = allocation_id in self._explicit_allocations
                self._explicit_allocations.discard(allocation_id)
            if explicit:
                self.store.delete_allocation(str(allocation_id))
        self._publish(event, payload)

    def _restore_allocations(self) -> None:
        """Re-grant the user allocations a previous process held (those not expired)."""
        now = utcnow()
        for data in self.store.list_allocations():
            old_id = str(data.get("allocation_id"))
            self.store.delete_allocation(old_id)
            expires = data.get("expires_at")
            ttl = None
            if expires:
                ttl = (datetime.fromisoformat(str(expires)) - now).total_seconds()
                if ttl <= 0:
                    continue
            if data.get("session_id"):
                continue  # sessions do not outlive their process
            try:
                self.allocate_resources(
                    str(data.get("user_id") or data.get("requester_id")),
                    {str(data["resource_id"]): data["amount"]},
                    ttl=ttl,
                )
            except OrchestrationError as exc:
                self._record_error("resources", exc)
                _log.warning("could not restore an allocation", allocation_id=old_id, error=str(exc))

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

        Raises:
            InvalidInputError: a limit or the mode is out of range (named).
            InsufficientResourcesError: the requirements cannot be reserved.
        """
        try:
            session = Session(
                session_id=uuid.uuid4().hex,
                user_id=user_id,
                name=name,
                description=description,
                mode=OrchestrationMode(mode) if isinstance(mode, str) else mode,
                max_parallel_tasks=max_parallel_tasks,
                max_parallel_workflows=max_parallel_workflows,
                timeout_seconds=timeout_seconds,
                resource_requirements=dict(resource_requirements or {}),
                metadata=dict(metadata or {}),
            )
        except ValueError as exc:
            if isinstance(exc, ValidationError):
                err = exc.errors()[0]
                raise InvalidInputError(".".join(map(str, err["loc"])), err["msg"]) from None
            raise InvalidInputError(
                "mode", f"{mode!r} is not one of {', '.join(m.value for m in OrchestrationMode)}"
            ) from None
        if session.resource_requirements:
            allocations = self.resource_manager.allocate_resources(
                f"session:{session.session_id}", session.resource_requirements
            )
            session.allocations = [a.allocation_id for a in allocations]
        with self._lock:
            self._sessions[session.session_id] = _LiveSession(session)
            self._session_cond.notify_all()
        self._save_session(session)
        self._publish("session.created", {"session_id": session.session_id, "user_id": user_id})
        return session.session_id

    def _save_session(self, session: Session) -> None:
        self.store.save_session(session.session_id, session.model_dump(mode="json"))

    def get_session(self, session_id: str) -> Session:
        with self._lock:
            live = self._sessions.get(session_id)
            if live is not None:
                return live.session.model_copy(deep=True)
            closed = self._closed_sessions.get(session_id)
            if closed is not None:
                return closed.model_copy(deep=True)
        data = self.store.get_session(session_id)
        if data is None:
            raise SessionNotFoundError(session_id)
        return Session.model_validate(data)

    def list_sessions(self, status: SessionStatus | str | None = None) -> list[Session]:
        with self._lock:
            sessions = [live.session.model_copy(deep=True) for live in self._sessions.values()]
            sessions += [s.model_copy(deep=True) for s in self._closed_sessions.values()]
        if status is not None:
            sessions = [s for s in sessions if s.status == SessionStatus(status)]
        return sorted(sessions, key=lambda s: s.created_at)

    def close_session(self, session_id: str, *, cancel_running: bool = False) -> Session:
        """Close a session: release its allocations, optionally cancel its running work; its
        history is kept.

        Raises:
            SessionNotFoundError: unknown id.
        """
        return self._close(session_id, SessionStatus.CLOSED, cancel_running)

    def _close(self, session_id: str, status: SessionStatus, cancel_running: bool) -> Session:
        with self._lock:
            live = self._sessions.pop(session_id, None)
            if live is None:
                if session_id in self._closed_sessions:
                    return self._closed_sessions[session_id].model_copy(deep=True)
                raise SessionNotFoundError(session_id, known=self._sessions)
            runs, tasks = list(live.active_runs), list(live.active_tasks)
        if cancel_running:
            for run_id in runs:
                try:
                    self.workflow_manager.cancel_run(run_id)
                except OrchestrationError:
                    pass
            for task_id in tasks:
                self.task_orchestrator.cancel_task(task_id, f"session {session_id} closed")
        self.resource_manager.deallocate_resources(f"session:{session_id}")
        session = live.session
        session.status = status
        session.closed_at = utcnow()
        with self._lock:
            self._closed_sessions[session_id] = session
            while len(self._closed_sessions) > 10_000:
                self._closed_sessions.pop(next(iter(self._closed_sessions)))
        self._save_session(session)
        self._publish("session.closed", {"session_id": session_id, "status": status.value})
        return session.model_copy(deep=True)

    def _reap_sessions(self) -> None:
        """Expire sessions past their timeout; sleeps on a condition until the next deadline."""
        with self._lock:
            while not self._stopping:
                now = time.monotonic()
                expired = [
                    sid for sid, live in self._sessions.items() if live.deadline and live.deadline <= now
                ]
                if expired:
                    self._lock.release()
                    try:
                        for sid in expired:
                            try:
                                self._close(sid, SessionStatus.EXPIRED, cancel_running=True)
                            except OrchestrationError as exc:
                                self._record_error("sessions", exc)
                    finally:
                        self._lock.acquire()
                    continue
                deadlines = [live.deadline for live in self._sessions.values() if live.deadline]
                wait = min(deadlines) - now if deadlines else None
                self._session_cond.wait(wait)

    def _live_session(self, session_id: str) -> _LiveSession:
        live = self._sessions.get(session_id)
        if live is None:
            if session_id in self._closed_sessions:
                status = self._closed_sessions[session_id].status.value
                raise InvalidStateError(
                    "session", session_id, status, "open a new session with create_session"
                )
            raise SessionNotFoundError(session_id)
        return live

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
    ) -> RunRecord:
        """Run a registered workflow, within a session's limits and mode when one is given."""
        kwargs: dict[str, Any] = {"priority": priority or TaskPriority.NORMAL}
        with self._lock:
            live = self._live_session(session_id) if session_id else None
            if live is not None:
                session = live.session
                limit = 1 if session.mode is OrchestrationMode.SEQUENTIAL else session.max_parallel_workflows
                if len(live.active_runs) >= limit:
                    raise LimitExceededError(
                        "session_id",
                        limit,
                        len(live.active_runs) + 1,
                        f"session {session_id} ({session.mode.value}) running workflows",
                    )
                if session.mode is OrchestrationMode.SEQUENTIAL:
                    kwargs["max_parallel"] = 1
                elif session.mode is OrchestrationMode.RESOURCE_AWARE:
                    kwargs["default_resources"] = {"compute": 1}
                if session.mode is not OrchestrationMode.PRIORITY:
                    kwargs["priority"] = TaskPriority.NORMAL if priority is None else priority
                live.deadline = (
                    time.monotonic() + session.timeout_seconds if session.timeout_seconds else None
                )
            # The run id alone: a record of a run just started lists every step (built for nothing
            # when the caller waits for the final one).
            run_id = self.workflow_manager.start_workflow(
                name, parameters, session_id=session_id, on_step=on_step, **kwargs
            )
            if live is not None and self.workflow_manager.is_active(run_id):
                live.active_runs.add(run_id)
                live.session.runs.append(run_id)
        if live is not None:
            self._save_session(live.session)
        if not wait:
            return self.workflow_manager.get_run(run_id)
        return self.workflow_manager.wait_run(run_id, timeout)

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
    ) -> RunRecord:
        """Register a workflow from ``{"steps": [...], "dependencies": {step: [steps]}}`` and run it.

        The record's status says whether it succeeded; ``dependencies`` entries are merged into the
        steps' own lists.
        """
        if not isinstance(definition, Mapping):
            raise InvalidInputError(
                "workflow_definition", "expected an object with 'steps' and 'dependencies'"
            )
        steps = definition.get("steps")
        if not isinstance(steps, list) or not steps:
            raise InvalidInputError(
                "workflow_definition.steps", "a non-empty list of step objects is required"
            )
        deps = definition.get("dependencies") or {}
        if not isinstance(deps, Mapping):
            raise InvalidInputError("workflow_definition.dependencies", "expected an object: step -> [steps]")
        names = {s.get("name") for s in steps if isinstance(s, Mapping)}
        for key, value in deps.items():
            if key not in names:
                raise InvalidInputError(
                    f"workflow_definition.dependencies.{key}",
                    f"no step named {key!r}; steps: {sorted(map(str, names))}",
                )
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InvalidInputError(
                    f"workflow_definition.dependencies.{key}", "expected a list of step names"
                )
        merged = []
        for index, raw in enumerate(steps):
            if not isinstance(raw, Mapping):
                raise InvalidInputError(f"workflow_definition.steps.{index}", "expected a step object")
            step = dict(raw)
            extra = deps.get(step.get("name"), [])
            step["dependencies"] = list(dict.fromkeys([*step.get("dependencies", []), *extra]))
            merged.append(step)
        document = {
            "name": name,
            "description": str(definition.get("description", "")),
            "steps": merged,
            "parameters": dict(definition.get("parameters") or {}),
        }
        if definition.get("max_parallel") is not None:
            document["max_parallel"] = definition["max_parallel"]
        self.workflow_manager.create_workflow(document, overwrite=True)
        return self.execute_workflow(
            name, parameters=parameters, session_id=session_id, wait=wait, timeout=timeout, on_step=on_step
        )

    def execute_task(
        self,
        spec: TaskSpec | Mapping[str, Any],
        *,
        session_id: str | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> TaskRecord:
        """Submit one action as a task (through the same scheduler) and optionally wait for it."""
        task_id = self.start_task(spec, session_id=session_id)
        if not wait:
            return self.task_orchestrator.get_task(task_id)
        try:
            return self.task_orchestrator.wait(task_id, timeout)
        except WaitTimeoutError:
            return self.task_orchestrator.get_task(task_id)

    def start_task(self, spec: TaskSpec | Mapping[str, Any], *, session_id: str | None = None) -> str:
        """Submit one action as a task like ``execute_task(wait=False)``, returning only its task id."""
        if not isinstance(spec, TaskSpec):
            try:
                spec = TaskSpec.model_validate(spec)
            except ValidationError as exc:
                err = exc.errors()[0]
                raise InvalidInputError(".".join(map(str, err["loc"])), err["msg"]) from None
        with self._lock:
            live = self._live_session(session_id) if session_id else None
            if live is not None:
                if len(live.active_tasks) >= live.session.max_parallel_tasks:
                    raise LimitExceededError(
                        "session_id",
                        live.session.max_parallel_tasks,
                        len(live.active_tasks) + 1,
                        f"session {session_id} running tasks",
                    )
                if live.session.mode is OrchestrationMode.RESOURCE_AWARE and not spec.resources:
                    spec = spec.model_copy(update={"resources": {"compute": 1}})

        def done(record: TaskRecord) -> None:
            self._publish(
                f"task.{record.status.value}",
                {"task_id": record.task_id, "name": record.name, "session_id": session_id},
            )
            if live is not None:
                with self._lock:
                    live.active_tasks.discard(record.task_id)

        task_id = self.task_orchestrator.submit_task(spec, on_done=done)
        if live is not None:
            with self._lock:
                record_now = self.task_orchestrator.get_task(task_id)
                if not record_now.status.is_terminal:
                    live.active_tasks.add(task_id)
                live.session.tasks.append(task_id)
            self._save_session(live.session)
        return task_id

    def resume_run(
        self,
        run_id: str,
        *,
        wait: bool = True,
        timeout: float | None = None,
        on_step: StepCallback | None = None,
    ) -> RunRecord:
        """Re-execute the unfinished steps of an interrupted, failed or cancelled run."""
        return self.workflow_manager.resume_run(run_id, wait=wait, timeout=timeout, on_step=on_step)

    # ------------------------------------------------------------------ health and metrics

    def health_check(self) -> dict[str, Any]:
        """Per-component checks and an overall verdict: healthy, degraded or unhealthy. Never raises."""
        components: dict[str, dict[str, Any]] = {}

        def check(name: str, critical: bool, fn: Callable[[], tuple[str, dict[str, Any]]]) -> None:
            try:
                status, details = fn()
            except Exception as exc:
                self._record_error(name, exc)
                status, details = (
                    ("unhealthy" if critical else "degraded"),
                    {"reason": f"{type(exc).__name__}: {exc}"},
                )
            with self._lock:
                components[name] = {
                    "status": status,
                    "critical": critical,
                    "details": details,
                    "error_count": self._errors.get(name, 0),
                    "last_error": self._last_error.get(name),
                }

        def scheduler() -> tuple[str, dict[str, Any]]:
            health = self.task_orchestrator.health()
            # Workers start on demand, so none alive is fine while nothing waits for one.
            stalled = health.get("queue_depth", 0) > 0 and health.get("workers_alive", 0) == 0
            if not health.get("dispatcher_alive"):
                health["reason"] = "the dispatcher thread is dead"
            elif not health.get("accepting"):
                health["reason"] = "the scheduler is shut down and accepts no work"
            elif stalled:
                health["reason"] = "work is queued but no worker thread is alive"
            return ("unhealthy" if "reason" in health else "healthy"), health

        def store() -> tuple[str, dict[str, Any]]:
            health = self.store.health()
            if not health.get("ok", False):
                self._record_error("store", str(health.get("reason", "store check failed")))
            return ("healthy" if health.get("ok") else "unhealthy"), health

        def resources() -> tuple[str, dict[str, Any]]:
            problems = self.resource_manager.check_invariants()
            return ("healthy" if not problems else "unhealthy"), {"invariant_violations": problems}

        def workflows() -> tuple[str, dict[str, Any]]:
            stats = self.workflow_manager.stats()
            return ("degraded" if stats["load_errors"] else "healthy"), stats

        def events() -> tuple[str, dict[str, Any]]:
            alive = self._events.alive
            with self._lock:
                failures = self._errors.get("events", 0)
            return ("healthy" if alive else "unhealthy"), {
                "dispatcher_alive": alive,
                "delivered": self._events.delivered,
                "handler_failures": failures,
            }

        def sessions() -> tuple[str, dict[str, Any]]:
            return ("healthy" if self._reaper.is_alive() else "degraded"), {
                "reaper_alive": self._reaper.is_alive(),
                "active": len(self._sessions),
            }

        check("scheduler", True, scheduler)
        check("store", True, store)
        check("resources", True, resources)
        check("workflows", False, workflows)
        check("events", False, events)
        check("sessions", False, sessions)
        issues = [
            f"{name}: {c['details'].get('reason') or c['last_error'] or c['status']}"
            for name, c in components.items()
            if c["status"] != "healthy"
        ]
        if any(c["status"] == "unhealthy" and c["critical"] for c in components.values()):
            overall = "unhealthy"
        elif issues:
            overall = "degraded"
        else:
            overall = "healthy"
        return {
            "overall_status": overall,
            "uptime_seconds": round(time.monotonic() - self.started_at, 3),
            "components": components,
            "error_counts": {name: c["error_count"] for name, c in components.items()},
            "issues": issues,
            "pid": os.getpid(),
        }

    def get_metrics(self) -> dict[str, Any]:
        """Counters and latencies since start. Never raises."""
        try:
            durations = sorted(self._step_durations)
            uptime = max(time.monotonic() - self.started_at, 1e-9)
            stats = self.task_orchestrator.get_execution_stats()
            completed = self._step_counts.get("step.completed", 0)

            def pct(p: float) -> float | None:
                if not durations:
                    return None
                return durations[min(len(durations) - 1, int(p * (len(durations) - 1) + 0.5))]

            # Counted in the store: building up to retention_runs records per status call made each
            # call slower as runs accumulated (found by the multi-round load test).
            runs_by_status: Counter[str] = Counter(self.store.count_runs())
            return {
                "uptime_seconds": round(uptime, 3),
                "sessions_by_status": dict(Counter(s.status.value for s in self.list_sessions())),
                "workflows_registered": len(self.workflow_manager.list_workflows()),
                "runs_by_status": dict(runs_by_status),
                "run_events": dict(self._run_counts),
                "steps_by_status": {k.removeprefix("step."): v for k, v in self._step_counts.items()},
                "tasks": stats,
                "queue_depth": stats.get("queue_depth", {}),
                "running": stats.get("running", 0),
                "resources": {
                    r.id: self.resource_manager.get_usage(r.id)
                    for r in self.resource_manager.list_resources()
                },
                "step_latency_seconds": {
                    "count": len(durations),
                    "mean": (sum(durations) / len(durations)) if durations else None,
                    "p50": pct(0.5),
                    "p95": pct(0.95),
                },
                "throughput_steps_per_second": round(completed / uptime, 3),
            }
        except Exception as exc:
            self._record_error("metrics", exc)
            return {"error": f"{type(exc).__name__}: {exc}"}

    def get_system_status(self) -> dict[str, Any]:
        """Sessions, workflows, runs, queue by priority, resources and the executor. Never raises."""
        metrics = self.get_metrics()
        health = self.health_check()
        return {
            "overall_status": health["overall_status"],
            "uptime_seconds": health["uptime_seconds"],
            "sessions": {
                "active": len(self._sessions),
                "by_status": metrics.get("sessions_by_status", {}),
            },
            "workflows": {
                "registered": metrics.get("workflows_registered"),
                "active_runs": len(self.workflow_manager.active_run_ids()),
                "load_errors": self.workflow_manager.stats()["load_errors"],
            },
            "runs": metrics.get("runs_by_status", {}),
            "steps": metrics.get("steps_by_status", {}),
            "queue": metrics.get("queue_depth", {}),
            "executor": metrics.get("tasks", {}),
            "resources": metrics.get("resources", {}),
            "step_latency_seconds": metrics.get("step_latency_seconds"),
            "throughput_steps_per_second": metrics.get("throughput_steps_per_second"),
            "interrupted_runs": list(self.interrupted_runs),
            "state_dir": str(self.state_dir),
        }

    # ------------------------------------------------------------------ lifecycle

    def _cancel_tasks(self) -> None:
        # One listing, then a cancel for each task not final yet: cancel_task handles whatever state
        # a task has reached by then. (Listing RUNNING, then READY, missed a task that started in
        # between, and shutdown then waited its whole timeout for it.)
        for task in self.task_orchestrator.list_tasks(limit=1_000_000):
            if not task.status.is_terminal:
                self.task_orchestrator.cancel_task(task.task_id, "the engine is shutting down")

    def shutdown(self, *, cancel_running: bool = True, timeout: float = 10.0) -> None:
        """Cancel running work (it stays resumable), stop threads and flush the store."""
        with self._lock:
            self._stopping = True
            self._session_cond.notify_all()
        # Every stage runs even if an earlier one fails (a broken store, a stuck backend): shutdown is
        # what a SIGTERM handler calls, and it must leave nothing running behind it.
        stages: list[tuple[str, Callable[[], object]]] = [
            ("workflows", lambda: self.workflow_manager.shutdown(cancel_running=cancel_running)),
            ("tasks", lambda: self._cancel_tasks() if cancel_running else None),
            (
                "scheduler",
                lambda: self.task_orchestrator.shutdown(wait=True, cancel_pending=True, timeout=timeout),
            ),
            ("resources", self.resource_manager.shutdown),
            ("events", lambda: self._events.close(timeout)),
            ("sessions", lambda: self._reaper.join(timeout)),
            ("store", self.store.close),
        ]
        for component, stage in stages:
            try:
                stage()
            except Exception as exc:
                self._record_error(component, exc)
                _log.error("shutdown stage failed", component=component, error=f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------- singletons

_engine: OrchestrationEngine | None = None
_engine_lock = threading.Lock()


def configure_engine(settings: Settings | None = None, **overrides: Any) -> OrchestrationEngine:
    """Create the process-wide engine from ``settings`` (replacing none: call :func:`reset_engine`
    first to rebuild). Returns the existing engine if one is already configured.
    """
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = OrchestrationEngine.from_settings(settings or Settings(), **overrides)
        return _engine


def get_orchestration_engine() -> OrchestrationEngine:
    """The process-wide engine (created with default settings on first use)."""
    engine = _engine
    return engine if engine is not None else configure_engine()


def get_workflow_manager() -> WorkflowManager:
    return get_orchestration_engine().workflow_manager


def get_task_orchestrator() -> TaskOrchestrator:
    return get_orchestration_engine().task_orchestrator


def get_resource_manager() -> ResourceManager:
    return get_orchestration_engine().resource_manager


def get_project_manager() -> ProjectManager:
    return get_orchestration_engine().project_manager


def reset_engine() -> None:
    """Shut the process-wide engine down and forget it (tests, reconfiguration)."""
    global _engine
    with _engine_lock:
        engine, _engine = _engine, None
    if engine is not None:
        engine.shutdown()
