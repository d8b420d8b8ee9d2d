"""The engine's parts on their own: the event bus, the counters, the session registry and its TTLs on
the shared timer service, the complex-workflow document, and the Settings composition."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from codomyrmex_orchestration.compose import build_engine, engine_arguments
from codomyrmex_orchestration.config import Settings
from codomyrmex_orchestration.core._complex import complex_workflow_document
from codomyrmex_orchestration.core._events import EventBus
from codomyrmex_orchestration.core._metrics import EngineCounters
from codomyrmex_orchestration.core._sessions import (
    Session,
    SessionRegistry,
    SessionStatus,
    new_session,
)
from codomyrmex_orchestration.core.store import MemoryStore
from codomyrmex_orchestration.core.timers import TimerService
from codomyrmex_orchestration.errors import (
    InvalidInputError,
    InvalidStateError,
    LimitExceededError,
    SessionNotFoundError,
)

# --------------------------------------------------------------------------- the event bus


def test_the_bus_starts_no_thread_until_someone_listens_and_stops_it_on_close() -> None:
    failures: list[str] = []
    bus = EventBus(lambda event, exc: failures.append(str(exc)), name="bus-under-test")
    bus.publish("nobody.listens", {})
    assert not [t for t in threading.enumerate() if t.name == "bus-under-test"]
    assert bus.alive and bus.drain(None)
    heard: list[dict[str, Any]] = []
    bus.register("x", lambda event, payload: heard.append(payload))
    bus.register("*", lambda event, payload: 1 / 0)
    bus.publish("x", {"n": 1})
    assert bus.drain(timeout=None)
    assert heard == [{"n": 1}] and failures == ["division by zero"] and bus.delivered == 1
    bus.close(timeout=None)
    bus.close()  # idempotent
    assert not bus.alive
    bus.publish("x", {"n": 2})  # after close: dropped, never delivered
    assert heard == [{"n": 1}]


def test_unregistering_names_the_handler_and_event_it_had() -> None:
    bus = EventBus(lambda event, exc: None)

    def handler(event: str, payload: dict[str, Any]) -> None: ...

    assert not bus.unregister("x", handler)
    bus.register("x", handler)
    bus.register("x", handler)
    assert bus.has_handlers()
    assert bus.unregister("x", handler) and bus.unregister("x", handler)
    assert not bus.unregister("x", handler) and not bus.has_handlers()
    bus.close()


# --------------------------------------------------------------------------- the counters


def test_counters_count_steps_by_status_and_ended_runs_only() -> None:
    counters = EngineCounters(latency_window=2)
    for event in ("step.started", "step.completed", "step.completed", "run.started", "run.failed", "x.y"):
        counters.count_event(event)
    for seconds in (1.0, 2.0, 3.0):
        counters.add_step_duration(seconds)
    counters.record_error("store", OSError("disk full"))
    counters.record_error("store", "closed")
    snap = counters.snapshot()
    assert snap.step_events == {"started": 1, "completed": 2}
    assert snap.run_events == {"run.failed": 1}
    assert snap.step_durations == (2.0, 3.0)  # the most recent ones
    assert counters.errors("store") == (2, "closed") and counters.errors("events") == (0, None)
    snap.step_events["completed"] = 99  # a copy: the counters are untouched
    assert counters.snapshot().step_events["completed"] == 2


def test_counters_lose_nothing_when_many_threads_count_and_read_at_once() -> None:
    counters = EngineCounters()
    start = threading.Barrier(9)

    def count() -> None:
        start.wait()
        for _ in range(5_000):
            counters.count_event("step.completed")
            counters.add_step_duration(0.1)

    def read() -> None:
        start.wait()
        for _ in range(500):
            counters.snapshot()

    threads = [threading.Thread(target=count) for _ in range(8)] + [threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert counters.snapshot().step_events == {"completed": 40_000}


# --------------------------------------------------------------------------- sessions


@pytest.fixture
def timers() -> Iterator[TimerService]:
    service = TimerService(name="session-test-timers")
    yield service
    service.close()


def _session(**changes: Any) -> Session:
    fields: dict[str, Any] = {
        "user_id": "ann",
        "name": "",
        "description": "",
        "mode": "parallel",
        "max_parallel_tasks": 2,
        "max_parallel_workflows": 1,
        "timeout_seconds": 3600.0,
        "resource_requirements": None,
        "metadata": None,
    }
    fields.update(changes)
    return new_session(**fields)


def test_a_session_expires_on_the_shared_timers_and_is_closed_off_the_timer_thread(
    timers: TimerService,
) -> None:
    stopped: list[tuple[str, bool, str]] = []
    closed = threading.Event()

    def stop_work(session: Session, runs: Any, tasks: Any, cancel: bool) -> tuple[list[str], list[str]]:
        stopped.append((session.session_id, cancel, threading.current_thread().name))
        return [], []

    registry = SessionRegistry(
        store=MemoryStore(), timers=timers, stop_work=stop_work, on_closed=lambda s: closed.set()
    )
    session = _session(timeout_seconds=0.05)
    registry.add(session)
    assert closed.wait(5)
    assert stopped == [(session.session_id, True, stopped[0][2])]
    assert stopped[0][2].startswith("codomyrmex-sessions")  # not the timer thread: closing may block
    assert registry.get(session.session_id).status is SessionStatus.EXPIRED
    with pytest.raises(InvalidStateError, match="expired"), registry.holding(session.session_id):
        pass
    registry.close()


def test_using_a_session_restarts_its_ttl_and_closing_cancels_the_timer(timers: TimerService) -> None:
    registry = SessionRegistry(
        store=MemoryStore(),
        timers=timers,
        stop_work=lambda session, runs, tasks, cancel: ([], []),
        on_closed=lambda s: None,
    )
    session = _session(timeout_seconds=3600)
    registry.add(session)
    with registry.holding(session.session_id) as live:
        assert live is not None
        first = live.timer
        registry.touch(live)
        assert live.timer is not first and first is not None and first.cancelled
    assert timers.pending == 1
    closed = registry.close_session(session.session_id, SessionStatus.CLOSED, cancel_running=False)
    assert closed.status is SessionStatus.CLOSED and closed.closed_at is not None
    assert timers.pending == 0
    # Closing again returns the closed session with a note; an unknown id is named.
    again = registry.close_session(session.session_id, SessionStatus.CLOSED, cancel_running=True)
    assert again.model_dump(exclude={"note"}) == closed.model_dump(exclude={"note"})
    assert again.note is not None and "already closed" in again.note
    with pytest.raises(SessionNotFoundError):
        registry.close_session("nope", SessionStatus.CLOSED, cancel_running=False)
    registry.close()


def test_a_session_tracks_its_runs_and_tasks_and_applies_its_limits(timers: TimerService) -> None:
    registry = SessionRegistry(
        store=MemoryStore(),
        timers=timers,
        stop_work=lambda session, runs, tasks, cancel: ([], []),
        on_closed=lambda s: None,
    )
    session = _session(mode="sequential")
    registry.add(session)
    sid = session.session_id
    with registry.holding(sid) as live:
        assert live is not None
        assert live.run_options() == {"max_parallel": 1}
        registry.record_run(live, "r1", active=True)
        with pytest.raises(LimitExceededError, match="session_id"):
            live.run_options()
    registry.run_ended(sid, "r1")
    registry.record_task(sid, "t1", lambda: True)
    registry.record_task(sid, "t2", lambda: False)  # already over: not counted as running
    stored = registry.get(sid)
    assert stored.runs == ["r1"] and stored.tasks == ["t1", "t2"]
    with registry.holding(sid) as live:
        assert live is not None and live.active_runs == set() and live.active_tasks == {"t1"}
    assert [s.session_id for s in registry.list(SessionStatus.ACTIVE)] == [sid]
    registry.close()


def test_a_new_session_names_a_bad_mode_or_limit() -> None:
    with pytest.raises(InvalidInputError, match="mode") as bad_mode:
        _session(mode="chaotic")
    assert "sequential" in str(bad_mode.value)
    with pytest.raises(InvalidInputError) as bad_limit:
        _session(max_parallel_tasks=0)
    assert bad_limit.value.field == "max_parallel_tasks"


# --------------------------------------------------------------------------- complex workflows


def test_a_complex_definition_merges_its_dependencies_into_the_steps() -> None:
    document = complex_workflow_document(
        {
            "steps": [{"name": "a"}, {"name": "b", "dependencies": ["a"]}, {"name": "c"}],
            "dependencies": {"b": ["a", "c"], "c": ["a"]},
            "max_parallel": 2,
        },
        name="pipe",
    )
    assert document["name"] == "pipe" and document["max_parallel"] == 2
    assert [s["dependencies"] for s in document["steps"]] == [[], ["a", "c"], ["a"]]


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        ([], "workflow_definition"),
        ({"steps": []}, "workflow_definition.steps"),
        ({"steps": [{"name": "a"}], "dependencies": []}, "workflow_definition.dependencies"),
        ({"steps": [{"name": "a"}], "dependencies": {"z": ["a"]}}, "workflow_definition.dependencies.z"),
        ({"steps": [{"name": "a"}], "dependencies": {"a": "b"}}, "workflow_definition.dependencies.a"),
        ({"steps": [{"name": "a"}, 3]}, "workflow_definition.steps.1"),
    ],
)
def test_a_bad_complex_definition_names_the_field(definition: Any, field: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        complex_workflow_document(definition, name="w")
    assert caught.value.field == field


# --------------------------------------------------------------------------- composition


def test_build_engine_turns_settings_into_plain_arguments(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path / "s",
        config_dir=tmp_path / "c",
        projects_dir=tmp_path / "p",
        max_workers=3,
        allow_shell=False,
        durable=False,
    )
    arguments = engine_arguments(settings)
    assert arguments["max_workers"] == 3 and arguments["allow_code_execution"] is False
    engine = build_engine(settings, max_steps=5)
    try:
        assert engine.task_orchestrator.max_workers == 3
        assert engine.workflow_manager.max_steps == 5  # an override wins
        assert not engine.store.durable and not engine.registry.allow_code_execution
    finally:
        engine.shutdown()


def test_the_per_client_queue_share_is_read_from_its_variable_and_a_bad_one_is_refused_naming_it(
    tmp_path: Path,
) -> None:
    environ = {"CODOMYRMEX_MAX_QUEUED_TASKS": "10", "CODOMYRMEX_MAX_QUEUED_PER_CLIENT": "3"}
    settings = Settings.from_env(environ, state_dir=tmp_path / "s", durable=False)
    assert engine_arguments(settings)["max_queued_per_client"] == 3
    assert engine_arguments(Settings.from_env({}, durable=False))["max_queued_per_client"] is None
    with pytest.raises(InvalidInputError, match="CODOMYRMEX_MAX_QUEUED_PER_CLIENT"):
        Settings.from_env({"CODOMYRMEX_MAX_QUEUED_PER_CLIENT": "0"})
