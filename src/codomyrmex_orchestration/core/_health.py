"""The engine's reports as pydantic models (health, metrics, system status) and the code that builds them.

It owns no state: each report is computed on demand from the engine's parts and its
:class:`~codomyrmex_orchestration.core._metrics.EngineCounters`. The models are the MCP tools' output
schemas too. Building a report never raises: a part that fails is reported, counted and named.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from codomyrmex_orchestration.core._uptime import process_uptime

if TYPE_CHECKING:
    from codomyrmex_orchestration.core.engine import OrchestrationEngine

__all__ = [
    "ComponentHealth",
    "HealthReport",
    "LatencySummary",
    "MetricsReport",
    "SessionSummary",
    "SystemStatus",
    "WorkflowSummary",
    "build_health",
    "build_metrics",
    "build_status",
]

HealthStatus = Literal["healthy", "degraded", "unhealthy"]


class _Report(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


class ComponentHealth(_Report):
    """One part's verdict; a ``critical`` part that is unhealthy makes the whole engine unhealthy."""

    status: HealthStatus
    critical: bool
    details: dict[str, Any] = Field(default_factory=dict, description="The part's own figures.")
    error_count: int = 0
    last_error: str | None = None


class HealthReport(_Report):
    """Per-component checks and an overall verdict."""

    overall_status: HealthStatus
    uptime_seconds: float
    components: dict[str, ComponentHealth]
    error_counts: dict[str, int]
    issues: list[str] = Field(description="One line per component that is not healthy.")
    pid: int


class LatencySummary(_Report):
    """Seconds per completed step, over the most recent steps."""

    count: int = 0
    mean: float | None = None
    p50: float | None = None
    p95: float | None = None


class MetricsReport(_Report):
    """Counters and latencies since the engine started (``error`` set if they could not be read)."""

    uptime_seconds: float = 0.0
    sessions_by_status: dict[str, int] = Field(default_factory=dict)
    workflows_registered: int = 0
    runs_by_status: dict[str, int] = Field(default_factory=dict)
    run_events: dict[str, int] = Field(default_factory=dict)
    steps_by_status: dict[str, int] = Field(default_factory=dict)
    tasks: dict[str, Any] = Field(default_factory=dict, description="The scheduler's figures.")
    queue_depth: dict[str, int] = Field(default_factory=dict)
    running: int = 0
    resources: dict[str, dict[str, Any]] = Field(default_factory=dict)
    step_latency_seconds: LatencySummary = Field(default_factory=LatencySummary)
    throughput_steps_per_second: float = 0.0
    error: str | None = None


class SessionSummary(_Report):
    active: int
    by_status: dict[str, int]


class WorkflowSummary(_Report):
    registered: int
    active_runs: int
    load_errors: list[dict[str, str]]


class SystemStatus(_Report):
    """Sessions, workflows, runs, queue by priority, resources and the executor."""

    overall_status: HealthStatus
    uptime_seconds: float
    sessions: SessionSummary
    workflows: WorkflowSummary
    runs: dict[str, int]
    steps: dict[str, int]
    queue: dict[str, int]
    executor: dict[str, Any]
    resources: dict[str, dict[str, Any]]
    step_latency_seconds: LatencySummary
    throughput_steps_per_second: float
    interrupted_runs: list[str]
    state_dir: str
    #: Bytes the state directory holds (run records, step results, spill files) and its budget
    #: (``CODOMYRMEX_STATE_MAX_BYTES``); None where the store does not measure (in memory).
    state_bytes_used: int | None = None
    state_max_bytes: int | None = None


# --------------------------------------------------------------------------- health

_Check = Callable[[], tuple[HealthStatus, dict[str, Any]]]


def build_health(engine: OrchestrationEngine) -> HealthReport:
    """Check every part of ``engine``. Never raises."""
    counters = engine.counters
    components: dict[str, ComponentHealth] = {}

    def check(name: str, critical: bool, fn: _Check) -> None:
        status: HealthStatus
        try:
            status, details = fn()
        except Exception as exc:
            counters.record_error(name, exc)
            status = "unhealthy" if critical else "degraded"
            details = {"reason": f"{type(exc).__name__}: {exc}"}
        count, last = counters.errors(name)
        components[name] = ComponentHealth(
            status=status, critical=critical, details=details, error_count=count, last_error=last
        )

    def scheduler() -> tuple[HealthStatus, dict[str, Any]]:
        health = dict(engine.task_orchestrator.health())
        # Workers start on demand, so none alive is fine while nothing waits for one.
        stalled = health.get("queue_depth", 0) > 0 and health.get("workers_alive", 0) == 0
        if not health.get("dispatcher_alive"):
            health["reason"] = "the scheduler's timer service is closed: no deadline or retry can fire"
        elif not health.get("accepting"):
            health["reason"] = "the scheduler is shut down and accepts no work"
        elif stalled and _slots_stuck(health):
            health["reason"] = _stuck_reason(health)
        elif stalled:
            health["reason"] = "work is queued but no worker thread is alive"
        elif health.get("backend", {}).get("reachable") is False:
            backend = health["backend"]
            health["reason"] = (
                f"the {backend['name']} backend's scheduler cannot be reached ({backend.get('status')}): "
                "steps sent to it fail (CODOMYRMEX_DASK_SCHEDULER)"
            )
        return ("unhealthy" if "reason" in health else "healthy"), health

    def store() -> tuple[HealthStatus, dict[str, Any]]:
        health = dict(engine.store.health())
        if not health.get("ok", False):
            counters.record_error("store", str(health.get("reason", "store check failed")))
        return ("healthy" if health.get("ok") else "unhealthy"), health

    def resources() -> tuple[HealthStatus, dict[str, Any]]:
        problems = engine.resource_manager.check_invariants()
        return ("healthy" if not problems else "unhealthy"), {"invariant_violations": problems}

    def workflows() -> tuple[HealthStatus, dict[str, Any]]:
        stats = engine.workflow_manager.stats()
        failed: list[dict[str, str]] = stats["load_errors"]
        if not failed:
            return "healthy", stats
        shown = "; ".join(f"{e['path']}: {e['reason']}" for e in failed[:3])
        more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
        stats["reason"] = f"{len(failed)} workflow config file(s) not loaded: {shown}{more}"
        return "degraded", stats

    def projects() -> tuple[HealthStatus, dict[str, Any]]:
        failed = engine.project_manager.template_errors()
        if not failed:
            return "healthy", {"template_errors": []}
        shown = "; ".join(f"{e['path']}: {e['reason']}" for e in failed[:3])
        more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
        reason = f"{len(failed)} project template file(s) not loaded: {shown}{more}"
        return "degraded", {"template_errors": failed, "reason": reason}

    def mcp_servers() -> tuple[HealthStatus, dict[str, Any]]:
        # The servers file of ``mcp.call`` (connectors/): read once as the registry is built; duck-typed,
        # since the core never imports the connectors (they import mcp).
        error = getattr(engine.registry.service("mcp"), "config_error", None)
        if not error:
            return "healthy", {"servers_file_error": None}
        reason = f"{error}; every mcp.call step fails until the file is fixed and the server restarted"
        return "degraded", {"servers_file_error": error, "reason": reason}

    def events() -> tuple[HealthStatus, dict[str, Any]]:
        alive = engine.events.alive
        failures, _ = counters.errors("events")
        return ("healthy" if alive else "unhealthy"), {
            "dispatcher_alive": alive,
            "delivered": engine.events.delivered,
            "handler_failures": failures,
        }

    def sessions() -> tuple[HealthStatus, dict[str, Any]]:
        alive = engine.sessions.alive
        return ("healthy" if alive else "degraded"), {
            "expiry_alive": alive,
            "active": engine.sessions.active_count(),
        }

    check("scheduler", True, scheduler)
    check("store", True, store)
    check("resources", True, resources)
    check("workflows", False, workflows)
    check("projects", False, projects)
    check("mcp_servers", False, mcp_servers)
    check("events", False, events)
    check("sessions", False, sessions)
    issues = [
        f"{name}: {c.details.get('reason') or c.last_error or c.status}"
        for name, c in components.items()
        if c.status != "healthy"
    ]
    overall: HealthStatus
    if any(c.status == "unhealthy" and c.critical for c in components.values()):
        overall = "unhealthy"
    elif issues:
        overall = "degraded"
    else:
        overall = "healthy"
    return HealthReport(
        overall_status=overall,
        uptime_seconds=process_uptime(),
        components=components,
        error_counts={name: c.error_count for name, c in components.items()},
        issues=issues,
        pid=os.getpid(),
    )


def _slots_stuck(health: dict[str, Any]) -> bool:
    """Every slot is held by a thread stuck in an abandoned call: past ``max_abandoned`` such threads
    are not replaced (their threads are alive, and not counted in ``workers_alive``)."""
    abandoned, cap = health.get("abandoned", 0), health.get("max_workers", 0) + health.get("max_abandoned", 0)
    return bool(health.get("abandoned_alive")) and abandoned >= cap


def _stuck_reason(health: dict[str, Any]) -> str:
    stuck: list[str] = health.get("abandoned_tasks", [])
    more = ", ..." if health["abandoned"] > min(3, len(stuck)) else ""
    return (
        f"all {health['max_workers']} worker slots are held by abandoned calls (max_abandoned "
        f"{health['max_abandoned']} reached; {health['abandoned']} abandoned: {', '.join(stuck[:3])}{more}); "
        "queued work starts when they return"
    )


# --------------------------------------------------------------------------- metrics


def _latency(durations: list[float]) -> LatencySummary:
    if not durations:
        return LatencySummary()

    def pct(p: float) -> float:
        return durations[min(len(durations) - 1, int(p * (len(durations) - 1) + 0.5))]

    return LatencySummary(
        count=len(durations), mean=sum(durations) / len(durations), p50=pct(0.5), p95=pct(0.95)
    )


def build_metrics(engine: OrchestrationEngine) -> MetricsReport:
    """Counters and latencies since start. Never raises (``error`` says what failed)."""
    try:
        counts = engine.counters.snapshot()
        uptime = max(time.monotonic() - engine.started_at, 1e-9)
        stats = engine.task_orchestrator.get_execution_stats()
        completed = counts.step_events.get("completed", 0)
        resource_manager = engine.resource_manager
        return MetricsReport(
            uptime_seconds=process_uptime(),  # the process's; throughput divides by the engine's
            sessions_by_status=engine.sessions.count_by_status(),
            workflows_registered=len(engine.workflow_manager.list_workflows()),
            # Counted in the store: building up to retention_runs records per status call made each
            # call slower as runs accumulated (found by the multi-round load test).
            runs_by_status=dict(engine.store.count_runs()),
            run_events=counts.run_events,
            steps_by_status=counts.step_events,
            tasks=stats,
            queue_depth=stats.get("queue_depth", {}),
            running=stats.get("running", 0),
            resources={r.id: resource_manager.get_usage(r.id) for r in resource_manager.list_resources()},
            step_latency_seconds=_latency(sorted(counts.step_durations)),
            throughput_steps_per_second=round(completed / uptime, 3),
        )
    except Exception as exc:
        engine.counters.record_error("metrics", exc)
        return MetricsReport(error=f"{type(exc).__name__}: {exc}")


def build_status(engine: OrchestrationEngine) -> SystemStatus:
    """The metrics and the health verdict in one report. Never raises."""
    metrics = build_metrics(engine)
    health = build_health(engine)
    workflows: dict[str, Any] = health.components["workflows"].details
    store: dict[str, Any] = health.components["store"].details if "store" in health.components else {}
    return SystemStatus(
        overall_status=health.overall_status,
        uptime_seconds=health.uptime_seconds,
        sessions=SessionSummary(active=engine.sessions.active_count(), by_status=metrics.sessions_by_status),
        workflows=WorkflowSummary(
            registered=metrics.workflows_registered,
            active_runs=int(workflows.get("active_runs", 0)),
            load_errors=list(workflows.get("load_errors", [])),
        ),
        runs=metrics.runs_by_status,
        steps=metrics.steps_by_status,
        queue=metrics.queue_depth,
        executor=metrics.tasks,
        resources=metrics.resources,
        step_latency_seconds=metrics.step_latency_seconds,
        throughput_steps_per_second=metrics.throughput_steps_per_second,
        interrupted_runs=list(engine.interrupted_runs),
        state_dir=str(engine.state_dir),
        state_bytes_used=store.get("bytes_used"),
        state_max_bytes=store.get("max_bytes"),
    )
