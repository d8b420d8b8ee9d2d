"""OrchestrationEngine: sessions and their limits, events, health, metrics and the singletons."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from codomyrmex_orchestration.core import engine as engine_mod
from codomyrmex_orchestration.core.actions import ActionContext, ActionDefinition
from codomyrmex_orchestration.core.engine import (
    OrchestrationEngine,
    OrchestrationMode,
    SessionStatus,
    configure_engine,
    get_orchestration_engine,
    get_project_manager,
    get_resource_manager,
    get_task_orchestrator,
    get_workflow_manager,
    reset_engine,
)
from codomyrmex_orchestration.core.models import TaskSpec, TaskStatus, WorkflowStatus
from codomyrmex_orchestration.errors import InvalidStateError, LimitExceededError, SessionNotFoundError


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[OrchestrationEngine]:
    eng = OrchestrationEngine(
        state_dir=tmp_path / "state",
        config_dir=None,
        projects_dir=tmp_path / "projects",
        templates_dir=None,
        max_workers=4,
    )
    gates: dict[str, threading.Event] = {}
    eng.extras = gates  # type: ignore[attr-defined]  # test-only handle for the gate action below

    def gate(params: dict[str, Any], ctx: ActionContext) -> str:
        event = gates.setdefault(params["name"], threading.Event())
        while not event.wait(0.05):
            ctx.check_cancelled()
        return params["name"]

    eng.registry.register(ActionDefinition("test", "gate", gate))
    yield eng
    for event in gates.values():
        event.set()
    eng.shutdown()


def _gate(engine: OrchestrationEngine, name: str) -> threading.Event:
    gates: dict[str, threading.Event] = engine.extras  # type: ignore[attr-defined]
    return gates.setdefault(name, threading.Event())


def _gated_workflow(engine: OrchestrationEngine, name: str, gate: str, width: int = 1) -> None:
    engine.workflow_manager.create_workflow(
        name,
        [
            {"name": f"g{i}", "module": "test", "action": "gate", "parameters": {"name": gate}}
            for i in range(width)
        ],
        overwrite=True,
    )


def test_a_session_refuses_more_workflows_than_its_limit_until_one_ends(engine: OrchestrationEngine) -> None:
    sid = engine.create_session("ann", max_parallel_workflows=1)
    _gated_workflow(engine, "held", "hold")
    first = engine.execute_workflow("held", session_id=sid, wait=False)
    with pytest.raises(LimitExceededError, match="session_id"):
        engine.execute_workflow("held", session_id=sid, wait=False)
    _gate(engine, "hold").set()
    assert engine.workflow_manager.wait_run(first.run_id, 10).status is WorkflowStatus.COMPLETED
    assert engine.drain_events()
    second = engine.execute_workflow("held", session_id=sid, timeout=10)
    assert second.status is WorkflowStatus.COMPLETED
    assert engine.get_session(sid).runs == [first.run_id, second.run_id]


def test_a_sequential_session_runs_one_step_at_a_time(engine: OrchestrationEngine) -> None:
    lock = threading.Lock()
    now = [0]
    peak = [0]

    def track(params: dict[str, Any], ctx: ActionContext) -> None:
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        ctx.wait(0.01)
        with lock:
            now[0] -= 1

    engine.registry.register(ActionDefinition("test", "track", track))
    engine.workflow_manager.create_workflow(
        "wide", [{"name": f"s{i}", "module": "test", "action": "track"} for i in range(6)]
    )
    sid = engine.create_session(mode=OrchestrationMode.SEQUENTIAL)
    assert engine.execute_workflow("wide", session_id=sid, timeout=10).status is WorkflowStatus.COMPLETED
    assert peak[0] == 1
    peak[0] = 0
    assert engine.execute_workflow("wide", timeout=10).status is WorkflowStatus.COMPLETED
    assert peak[0] > 1


def test_a_session_refuses_tasks_beyond_its_limit(engine: OrchestrationEngine) -> None:
    sid = engine.create_session(max_parallel_tasks=1)
    spec = TaskSpec(name="held", module="test", action="gate", parameters={"name": "t"})
    first = engine.execute_task(spec, session_id=sid, wait=False)
    with pytest.raises(LimitExceededError):
        engine.execute_task(spec, session_id=sid, wait=False)
    _gate(engine, "t").set()
    assert engine.task_orchestrator.wait(first.task_id, 10).status is TaskStatus.COMPLETED


def test_closing_a_session_releases_its_allocations_and_cancels_work_when_asked(
    engine: OrchestrationEngine,
) -> None:
    sid = engine.create_session(resource_requirements={"compute": 1})
    assert engine.resource_manager.get_usage("compute")["allocated"] == 1
    _gated_workflow(engine, "held", "never")
    run = engine.execute_workflow("held", session_id=sid, wait=False)
    closed = engine.close_session(sid, cancel_running=True)
    assert closed.status is SessionStatus.CLOSED
    assert engine.resource_manager.get_usage("compute")["allocated"] == 0
    assert engine.workflow_manager.wait_run(run.run_id, 10).status is WorkflowStatus.CANCELLED
    with pytest.raises(InvalidStateError):
        engine.execute_workflow("held", session_id=sid)
    assert engine.get_session(sid).runs == [run.run_id]
    with pytest.raises(SessionNotFoundError):
        engine.get_session("nope")


def test_sessions_expire_after_their_timeout(engine: OrchestrationEngine) -> None:
    expired = threading.Event()
    engine.register_event_handler(
        "session.closed", lambda event, payload: expired.set() if payload["status"] == "expired" else None
    )
    sid = engine.create_session(timeout_seconds=0.2)
    assert expired.wait(5)
    assert engine.get_session(sid).status is SessionStatus.EXPIRED


def test_a_failing_event_handler_never_breaks_a_run(engine: OrchestrationEngine) -> None:
    seen: list[str] = []

    def broken(event: str, payload: dict[str, Any]) -> None:
        raise RuntimeError("handler bug")

    engine.register_event_handler("*", broken)
    engine.register_event_handler("run.completed", lambda event, payload: seen.append(payload["run_id"]))
    engine.workflow_manager.create_workflow("ok", [{"name": "a", "module": "core", "action": "set"}])
    record = engine.execute_workflow("ok", timeout=10)
    assert record.status is WorkflowStatus.COMPLETED
    assert engine.drain_events()
    assert seen == [record.run_id]
    health = engine.health_check()
    assert health["components"]["events"]["error_count"] > 0
    assert "handler bug" in (health["components"]["events"]["last_error"] or "")


def test_breaking_the_store_makes_health_unhealthy_with_the_reason(engine: OrchestrationEngine) -> None:
    assert engine.health_check()["overall_status"] == "healthy"
    db = engine.state_dir / "state.db"
    db.unlink()
    health = engine.health_check()
    assert health["overall_status"] == "unhealthy"
    assert health["components"]["store"]["status"] == "unhealthy"
    assert any(issue.startswith("store:") for issue in health["issues"])


def test_complex_workflow_merges_the_dependency_map_and_reports_success(engine: OrchestrationEngine) -> None:
    record = engine.execute_complex_workflow(
        {
            "steps": [
                {"name": "a", "module": "core", "action": "set", "parameters": {"n": 2}},
                {"name": "b", "module": "core", "action": "echo", "parameters": {"message": "after a"}},
            ],
            "dependencies": {"b": ["a"]},
        },
        name="complex",
        timeout=10,
    )
    assert record.status is WorkflowStatus.COMPLETED
    assert engine.workflow_manager.describe_workflow("complex").execution_levels == [["a"], ["b"]]
    failed = engine.execute_complex_workflow(
        {"steps": [{"name": "x", "module": "core", "action": "fail"}]}, name="complex2", timeout=10
    )
    assert failed.status is WorkflowStatus.FAILED


def test_metrics_and_status_count_runs_steps_and_latency(engine: OrchestrationEngine) -> None:
    engine.workflow_manager.create_workflow(
        "m", [{"name": f"s{i}", "module": "core", "action": "set"} for i in range(5)]
    )
    engine.execute_workflow("m", timeout=10)
    assert engine.drain_events()
    metrics = engine.get_metrics()
    assert metrics["runs_by_status"]["completed"] == 1
    assert metrics["steps_by_status"]["completed"] == 5
    assert metrics["step_latency_seconds"]["count"] == 5
    assert metrics["step_latency_seconds"]["p95"] is not None
    status = engine.get_system_status()
    assert status["workflows"]["registered"] == 1
    assert set(status["queue"]) >= {"CRITICAL", "NORMAL", "BACKGROUND"} or status["queue"]
    assert "compute" in status["resources"]


def test_singletons_are_one_engine_created_once_under_concurrency(tmp_path: Path) -> None:
    reset_engine()
    try:
        from codomyrmex_orchestration.config import Settings

        configure_engine(
            Settings(
                state_dir=tmp_path / "s",
                config_dir=tmp_path / "c",
                projects_dir=tmp_path / "p",
                max_workers=2,
            )
        )
        seen: list[OrchestrationEngine] = []
        threads = [
            threading.Thread(target=lambda: seen.append(get_orchestration_engine())) for _ in range(20)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len({id(e) for e in seen}) == 1
        eng = seen[0]
        assert get_workflow_manager() is eng.workflow_manager
        assert get_task_orchestrator() is eng.task_orchestrator
        assert get_resource_manager() is eng.resource_manager
        assert get_project_manager() is eng.project_manager
    finally:
        reset_engine()
    assert engine_mod._engine is None
