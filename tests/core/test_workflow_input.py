"""Approval steps (core.approve) through the real engine, scheduler and SQLite store: questions, answers,
deadlines, restarts, and no worker held while a run waits."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from codomyrmex_orchestration.core._asked_clock import AskedClock
from codomyrmex_orchestration.core._workflow_input import check_answer, parse_question
from codomyrmex_orchestration.core.engine import OrchestrationEngine
from codomyrmex_orchestration.core.models import InputRequest, TaskStatus, WorkflowStatus, utcnow
from codomyrmex_orchestration.core.store import SqliteStore
from codomyrmex_orchestration.errors import (
    DAGValidationError,
    InvalidInputError,
    InvalidStateError,
    RunNotFoundError,
)

WAIT = 30.0
SCHEMA = {
    "type": "object",
    "properties": {
        "reason": {"type": "string", "minLength": 3},
        "copies": {"type": "integer", "minimum": 1},
        "color": {"type": "string", "enum": ["red", "blue"]},
    },
    "required": ["reason"],
}


def engine_at(root: Path, *, max_workers: int = 4) -> OrchestrationEngine:
    return OrchestrationEngine(
        state_dir=root / "state",
        config_dir=None,
        projects_dir=root / "projects",
        templates_dir=None,
        max_workers=max_workers,
    )


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[OrchestrationEngine]:
    the_engine = engine_at(tmp_path)
    yield the_engine
    the_engine.shutdown()


def approval_workflow(name: str = "gated", **ask: Any) -> dict[str, Any]:
    return {
        "name": name,
        "steps": [
            {"name": "plan", "module": "core", "action": "set", "parameters": {"files": 3}},
            {
                "name": "ask",
                "module": "core",
                "action": "approve",
                "dependencies": ["plan"],
                "parameters": {"message": "Delete {{steps.plan.output.files}} files?", **ask},
            },
            {
                "name": "act",
                "module": "core",
                "action": "echo",
                "parameters": {"message": "{{steps.ask.output.content}}"},
            },
        ],
    }


def wait_for_status(engine: OrchestrationEngine, run_id: str, status: WorkflowStatus) -> Any:
    """The run once it reaches ``status`` (bounded: events, no sleeps)."""
    reached = threading.Event()

    def listen(event: str, payload: dict[str, Any]) -> None:
        if payload.get("run_id") == run_id:
            reached.set()

    manager = engine.workflow_manager
    manager.add_listener(listen)
    try:
        for _ in range(100):
            record = manager.get_run(run_id)
            if record.status is status:
                return record
            reached.wait(1.0)
            reached.clear()
    finally:
        manager.remove_listener(listen)
    raise AssertionError(f"run {run_id} never reached {status.value}: {manager.get_run(run_id).status}")


def start_waiting(engine: OrchestrationEngine, **ask: Any) -> str:
    engine.workflow_manager.create_workflow(approval_workflow(**ask))
    run_id = engine.workflow_manager.start_workflow("gated")
    wait_for_status(engine, run_id, WorkflowStatus.WAITING_FOR_INPUT)
    return run_id


def test_a_waiting_run_shows_its_question_and_an_accepting_answer_completes_it(
    engine: OrchestrationEngine,
) -> None:
    run_id = start_waiting(engine, schema=SCHEMA)
    record = engine.workflow_manager.get_run(run_id)
    assert record.steps["plan"].status is TaskStatus.COMPLETED
    assert record.steps["ask"].status is TaskStatus.RUNNING
    assert record.steps["act"].status is TaskStatus.PENDING
    [question] = record.pending_inputs
    assert question.step == "ask"
    assert question.message == "Delete 3 files?"  # templates resolved
    assert question.requested_schema == SCHEMA
    assert question.deadline is None

    engine.workflow_manager.inputs.respond(run_id, "ask", "accept", {"reason": "cleanup", "copies": 2})
    final = engine.workflow_manager.wait_run(run_id, WAIT)
    assert final.status is WorkflowStatus.COMPLETED
    assert final.steps["ask"].output == {"action": "accept", "content": {"reason": "cleanup", "copies": 2}}
    assert final.steps["act"].output == {"reason": "cleanup", "copies": 2}
    assert final.pending_inputs == []


def test_a_decline_fails_the_step_with_the_reason_and_skips_what_depends_on_it(
    engine: OrchestrationEngine,
) -> None:
    run_id = start_waiting(engine)
    engine.workflow_manager.inputs.respond(run_id, "ask", "decline")
    final = engine.workflow_manager.wait_run(run_id, WAIT)
    assert final.status is WorkflowStatus.FAILED
    assert final.steps["ask"].status is TaskStatus.FAILED
    assert final.steps["ask"].error is not None
    assert "the approval was declined: Delete 3 files?" in final.steps["ask"].error.message
    assert final.steps["act"].status is TaskStatus.SKIPPED
    assert final.error is not None and "declined" in final.error


def test_content_that_does_not_fit_the_schema_names_each_field_and_changes_nothing(
    engine: OrchestrationEngine,
) -> None:
    run_id = start_waiting(engine, schema=SCHEMA)
    inputs = engine.workflow_manager.inputs
    with pytest.raises(InvalidInputError) as missing:
        inputs.respond(run_id, "ask", "accept", {"copies": 2})
    assert missing.value.field == "content.reason"
    assert "required" in str(missing.value)
    with pytest.raises(InvalidInputError) as several:
        inputs.respond(run_id, "ask", "accept", {"reason": "ok", "colour": "red", "copies": True})
    message = str(several.value)
    assert "content.reason: at least 3 characters" in message
    assert "content.colour: not a field of the question; fields: reason, copies, color" in message
    assert "content.copies: expected an integer, got bool True" in message
    with pytest.raises(InvalidInputError, match="'green' is not one of 'red', 'blue'"):
        inputs.respond(run_id, "ask", "accept", {"reason": "fine", "color": "green"})
    with pytest.raises(InvalidInputError, match="not one of accept, decline, cancel"):
        inputs.respond(run_id, "ask", "maybe")
    with pytest.raises(InvalidStateError, match="steps waiting for an answer: ask"):
        inputs.respond(run_id, "plan", "accept")
    record = engine.workflow_manager.get_run(run_id)
    assert record.status is WorkflowStatus.WAITING_FOR_INPUT
    assert [q.step for q in record.pending_inputs] == ["ask"]

    inputs.respond(run_id, "ask", "cancel")
    final = engine.workflow_manager.wait_run(run_id, WAIT)
    assert final.status is WorkflowStatus.FAILED
    assert final.steps["ask"].error is not None
    assert "dismissed (cancel)" in final.steps["ask"].error.message
    with pytest.raises(InvalidStateError, match="only a run waiting for input can be answered"):
        inputs.respond(run_id, "ask", "accept")


def test_an_unanswered_question_fails_its_step_at_its_deadline(engine: OrchestrationEngine) -> None:
    run_id = start_waiting(engine, timeout_seconds=0.2)
    question = engine.workflow_manager.get_run(run_id).pending_inputs[0]
    assert question.deadline is not None
    final = wait_for_status(engine, run_id, WorkflowStatus.FAILED)
    assert final.steps["ask"].status is TaskStatus.TIMED_OUT
    assert final.steps["ask"].error is not None
    assert "without an answer to: Delete 3 files?" in final.steps["ask"].error.message
    assert final.steps["act"].status is TaskStatus.SKIPPED


def test_a_waiting_run_holds_no_worker_thread(tmp_path: Path) -> None:
    engine = engine_at(tmp_path, max_workers=1)
    try:
        run_id = start_waiting(engine)
        echo = {"name": "hi", "module": "core", "action": "echo", "parameters": {"message": 1}}
        engine.workflow_manager.create_workflow({"name": "other", "steps": [echo]})
        other = engine.workflow_manager.execute_workflow("other", timeout=WAIT)
        assert other.status is WorkflowStatus.COMPLETED  # the one worker was free
        assert engine.workflow_manager.get_run(run_id).status is WorkflowStatus.WAITING_FOR_INPUT
        engine.workflow_manager.inputs.respond(run_id, "ask", "accept")
        assert engine.workflow_manager.wait_run(run_id, WAIT).status is WorkflowStatus.COMPLETED
    finally:
        engine.shutdown()


def test_a_waiting_run_survives_a_restart_and_its_answer_continues_it(tmp_path: Path) -> None:
    first = engine_at(tmp_path)
    try:
        run_id = start_waiting(first, schema=SCHEMA, timeout_seconds=3600)
        asked = first.workflow_manager.get_run(run_id).pending_inputs[0]
    finally:
        first.shutdown()

    second = engine_at(tmp_path)
    try:
        record = second.workflow_manager.get_run(run_id)
        assert record.status is WorkflowStatus.WAITING_FOR_INPUT
        assert second.workflow_manager.is_active(run_id)
        assert record.pending_inputs == [asked]  # the same question, time and deadline
        assert record.steps["plan"].status is TaskStatus.COMPLETED
        second.workflow_manager.inputs.respond(run_id, "ask", "accept", {"reason": "after restart"})
        final = second.workflow_manager.wait_run(run_id, WAIT)
        assert final.status is WorkflowStatus.COMPLETED
        assert final.steps["act"].output == {"reason": "after restart"}
    finally:
        second.shutdown()
    third = engine_at(tmp_path)  # what was stored: the completed run
    try:
        assert third.workflow_manager.get_run(run_id).status is WorkflowStatus.COMPLETED
        assert not third.workflow_manager.is_active(run_id)
    finally:
        third.shutdown()


def test_cancelling_a_waiting_run_cancels_its_question(engine: OrchestrationEngine) -> None:
    run_id = start_waiting(engine)
    final = engine.workflow_manager.cancel_run(run_id)
    assert final.status is WorkflowStatus.CANCELLED
    assert final.steps["ask"].status is TaskStatus.CANCELLED
    assert final.pending_inputs == []


def test_on_stop_calls_back_when_the_run_waits_on_a_question_nobody_is_asked_or_else_when_it_ends(
    engine: OrchestrationEngine,
) -> None:
    manager = engine.workflow_manager
    manager.create_workflow(approval_workflow())
    run_id = manager.start_workflow("gated")
    stopped: list[Any] = []
    ended: list[Any] = []
    calls = threading.Semaphore(0)

    def on(into: list[Any]) -> Any:
        return lambda record: (into.append(record), calls.release())

    manager.inputs.on_stop(run_id, on(stopped))  # before or after the question is asked: either way
    manager.inputs.on_stop(run_id, on(ended), questions=False)
    assert calls.acquire(timeout=WAIT)
    [asked] = stopped
    assert asked.status is WorkflowStatus.WAITING_FOR_INPUT and asked.pending_inputs[0].step == "ask"
    assert ended == []
    manager.inputs.on_stop(run_id, on(stopped))  # it waits already: at once
    assert calls.acquire(timeout=0) and stopped[1].status is WorkflowStatus.WAITING_FOR_INPUT
    manager.inputs.respond(run_id, "ask", "accept")
    assert calls.acquire(timeout=WAIT)
    assert [record.status for record in ended] == [WorkflowStatus.COMPLETED]
    manager.inputs.on_stop(run_id, on(ended), questions=False)  # ended: at once, once each
    assert calls.acquire(timeout=0) and not calls.acquire(timeout=0)
    assert [record.status for record in ended] == [WorkflowStatus.COMPLETED] * 2 and len(stopped) == 2
    with pytest.raises(RunNotFoundError):
        manager.inputs.on_stop("no-such-run", on(ended))


def test_the_broker_hears_each_question_with_the_client_of_the_run(engine: OrchestrationEngine) -> None:
    asked: list[tuple[str, str, InputRequest, str | None]] = []

    def broker(run_id: str, step: str, question: InputRequest, client: str | None) -> None:
        asked.append((run_id, step, question, client))
        engine.workflow_manager.inputs.respond(run_id, step, "accept")  # an answer at once is fine too

    engine.workflow_manager.inputs.broker = broker
    engine.workflow_manager.create_workflow(approval_workflow())
    final = engine.workflow_manager.execute_workflow("gated", session_id="s-1", timeout=WAIT)
    assert final.status is WorkflowStatus.COMPLETED
    [(run_id, step, question, client)] = asked
    assert (run_id, step, question.message, client) == (final.run_id, "ask", "Delete 3 files?", "s-1")


def test_validation_names_what_is_wrong_with_an_approval_step(engine: OrchestrationEngine) -> None:
    manager = engine.workflow_manager

    def problems(**ask: Any) -> str:
        with pytest.raises(DAGValidationError) as caught:
            manager.validate_workflow(approval_workflow(**ask))
        return str(caught.value)

    nested = {"type": "object", "properties": {"who": {"type": "object"}}}
    assert "parameters.schema.properties.who.type: 'object' is not accepted" in problems(schema=nested)
    assert 'parameters.schema.type: must be "object"' in problems(schema={"type": "string"})
    bad_required = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}
    assert "names 'b', which is not a property" in problems(schema=bad_required)
    assert "parameters.timeout_seconds" in problems(timeout_seconds=-1)
    assert "does not accept parameter 'timeout'" in problems(timeout=5)
    # Templated values are checked when the step runs.
    assert manager.validate_workflow(approval_workflow(schema="{{params.schema}}")) is not None


def test_a_question_and_its_answers_check_like_the_schema_says() -> None:
    assert parse_question({"message": "ok?"}) == ("ok?", None, None)
    with pytest.raises(InvalidInputError, match=r"parameters\.message"):
        parse_question({"message": " "})
    assert check_answer(None, None) == {}
    with pytest.raises(InvalidInputError, match="asks for no content"):
        check_answer(None, {"x": 1})
    dated = {"type": "object", "properties": {"on": {"type": "string", "format": "date"}}}
    assert check_answer(dated, {"on": "2026-12-07"}) == {"on": "2026-12-07"}
    with pytest.raises(InvalidInputError, match="not a valid date"):
        check_answer(dated, {"on": "tomorrow"})


def test_a_reloaded_question_keeps_its_deadline(tmp_path: Path) -> None:
    first = engine_at(tmp_path)
    try:
        run_id = start_waiting(first, timeout_seconds=0.5)
        asked = first.workflow_manager.get_run(run_id).pending_inputs[0]
    finally:
        first.shutdown()
    second = engine_at(tmp_path)
    try:
        final = wait_for_status(second, run_id, WorkflowStatus.FAILED)  # the deadline re-armed, not reset
        assert final.steps["ask"].status is TaskStatus.TIMED_OUT
        assert final.steps["ask"].started_at == asked.asked_at
        assert final.steps["plan"].status is TaskStatus.COMPLETED
    finally:
        second.shutdown()


def test_an_answered_question_waited_no_negative_time_when_the_wall_clock_stepped_back(
    tmp_path: Path,
) -> None:
    first = engine_at(tmp_path)
    try:
        run_id = start_waiting(first)
    finally:
        first.shutdown()
    # The wall clock stepped back an hour (an NTP correction) between the question and the restart: its
    # asked_at is now an hour ahead of the clock, and only wall time spans the two processes.
    store = SqliteStore(tmp_path / "state" / "state.db")
    try:
        record = store.get_run(run_id)
        assert record is not None
        question = record.pending_inputs[0]
        question.asked_at += timedelta(hours=1)
        store.save_run(record)
    finally:
        store.close()
    second = engine_at(tmp_path)
    try:
        wait_for_status(second, run_id, WorkflowStatus.WAITING_FOR_INPUT)
        second.workflow_manager.inputs.respond(run_id, "ask", "accept")
        step = second.workflow_manager.wait_run(run_id, WAIT).steps["ask"]
        assert step.status is TaskStatus.COMPLETED
        assert step.duration_seconds == 0.0  # not -3600: what it waited is unknown, never negative
    finally:
        second.shutdown()


def test_a_question_asked_here_counts_its_wait_on_the_monotonic_clock() -> None:
    clock = AskedClock()
    # Asked now by this process; the wall clock has since stepped back an hour, or forward a day.
    for step in (timedelta(hours=1), -timedelta(days=1)):
        question = InputRequest(step="ask", message="ok?", asked_at=utcnow() + step)
        clock.asked("r1", question)
        assert 0.0 <= clock.waited("r1", question, utcnow()) < 60.0
    # One asked by an earlier process (not here): the wall clock's difference, never below zero.
    ahead = InputRequest(step="ask", message="ok?", asked_at=utcnow() + timedelta(hours=1))
    assert clock.waited("r1", ahead, utcnow()) == 0.0


def test_an_answer_too_large_or_not_an_object_is_refused_and_the_question_stays(
    engine: OrchestrationEngine,
) -> None:
    run_id = start_waiting(engine, schema=SCHEMA)
    inputs = engine.workflow_manager.inputs
    with pytest.raises(InvalidInputError, match="at most 65536 are accepted"):
        inputs.respond(run_id, "ask", "accept", {"reason": "x" * 70_000})
    with pytest.raises(InvalidInputError, match="an object of the question's fields; got list"):
        inputs.respond(run_id, "ask", "accept", ["reason"])  # type: ignore[arg-type]  # what a caller might pass
    with pytest.raises(InvalidInputError, match="not one of accept, decline, cancel"):
        inputs.respond(run_id, "ask", "timeout")  # only the deadline times a question out
    assert engine.workflow_manager.get_run(run_id).status is WorkflowStatus.WAITING_FOR_INPUT


def test_an_approval_map_asks_once_per_item_and_collects_the_answers(engine: OrchestrationEngine) -> None:
    manager = engine.workflow_manager
    manager.create_workflow(
        {
            "name": "per_file",
            "steps": [
                {
                    "name": "ask",
                    "module": "core",
                    "action": "approve",
                    "for_each": ["a.txt", "b.txt"],
                    "parameters": {"message": "Delete {{item}}?"},
                }
            ],
        }
    )
    asked: list[str] = []
    both = threading.Event()

    def listen(event: str, payload: dict[str, Any]) -> None:
        if event == "run.waiting_for_input":
            asked.append(payload["step"])
            if len(asked) == 2:
                both.set()

    manager.add_listener(listen)
    run_id = manager.start_workflow("per_file")
    assert both.wait(WAIT)
    record = manager.get_run(run_id)
    assert record.status is WorkflowStatus.WAITING_FOR_INPUT
    assert {(q.step, q.message) for q in record.pending_inputs} == {
        ("ask[0]", "Delete a.txt?"),
        ("ask[1]", "Delete b.txt?"),
    }
    manager.inputs.respond(run_id, "ask[1]", "accept")
    manager.inputs.respond(run_id, "ask[0]", "accept")
    final = manager.wait_run(run_id, WAIT)
    assert final.status is WorkflowStatus.COMPLETED
    assert final.steps["ask"].output == [{"action": "accept", "content": {}}] * 2


def parent_of_approval(engine: OrchestrationEngine) -> str:
    """A parent run whose step `sub` runs `gated` (which asks), started and waiting for input."""
    manager = engine.workflow_manager
    manager.create_workflow(approval_workflow())
    manager.create_workflow(
        {
            "name": "parent",
            "steps": [
                {"name": "sub", "module": "workflow", "action": "run", "parameters": {"workflow": "gated"}},
                {
                    "name": "after",
                    "module": "core",
                    "action": "echo",
                    "parameters": {"message": "{{steps.sub.output.outputs}}"},
                },
            ],
        }
    )
    run_id = manager.start_workflow("parent")
    wait_for_status(engine, run_id, WorkflowStatus.WAITING_FOR_INPUT)
    return run_id


def child_of(engine: OrchestrationEngine, run_id: str) -> str:
    [child] = [
        r for r in engine.workflow_manager.list_runs(workflow_name="gated") if r.parent_run_id == run_id
    ]
    return child.run_id


def test_a_question_of_a_sub_run_is_its_parent_s_question_and_the_parent_s_id_answers_it(
    engine: OrchestrationEngine,
) -> None:
    manager = engine.workflow_manager
    run_id = parent_of_approval(engine)
    child_id = child_of(engine, run_id)
    # The wait on the parent ends at once: nobody is being asked the question of its sub-run.
    record = manager.inputs.wait(run_id, WAIT)
    assert record.status is WorkflowStatus.WAITING_FOR_INPUT
    [question] = record.pending_inputs
    assert (question.run_id, question.step, question.message) == (child_id, "ask", "Delete 3 files?")
    assert manager.get_run(child_id).pending_inputs == [question]
    with pytest.raises(InvalidStateError, match=rf"steps waiting for an answer: ask \(sub-run {child_id}\)"):
        manager.inputs.respond(run_id, "nope", "accept")

    manager.inputs.respond(run_id, "ask", "accept")  # the parent's id and the child's step
    final = manager.wait_run(run_id, WAIT)
    assert final.status is WorkflowStatus.COMPLETED, final.error
    assert final.pending_inputs == []
    assert final.steps["sub"].output["run_id"] == child_id
    assert manager.get_run(child_id).steps["ask"].output == {"action": "accept", "content": {}}


def test_the_child_s_id_answers_its_question_and_a_decline_fails_the_parent_step(
    engine: OrchestrationEngine,
) -> None:
    manager = engine.workflow_manager
    run_id = parent_of_approval(engine)
    manager.inputs.respond(child_of(engine, run_id), "ask", "decline")
    final = manager.wait_run(run_id, WAIT)
    assert final.status is WorkflowStatus.FAILED
    assert final.steps["sub"].status is TaskStatus.FAILED
    assert final.pending_inputs == []


def test_the_broker_is_asked_a_sub_run_s_question_with_the_client_of_the_top_level_run(
    engine: OrchestrationEngine,
) -> None:
    asked: list[tuple[str, str, str | None, str]] = []
    manager = engine.workflow_manager

    def broker(run_id: str, step: str, question: InputRequest, client: str | None) -> bool:
        asked.append((run_id, step, client, manager.inputs.root_of(run_id)))
        return True  # being asked: the wait on the parent does not end on it

    manager.inputs.broker = broker
    run_id = parent_of_approval(engine)
    assert manager.inputs.wait(run_id, 0.05).status is WorkflowStatus.WAITING_FOR_INPUT
    assert asked == [(child_of(engine, run_id), "ask", None, run_id)]
    [(child_id, step, _, _)] = asked
    manager.inputs.respond(child_id, step, "accept")
    assert manager.wait_run(run_id, WAIT).status is WorkflowStatus.COMPLETED


def test_a_parent_waiting_on_its_sub_run_s_question_survives_a_restart(tmp_path: Path) -> None:
    first = engine_at(tmp_path)
    try:
        run_id = parent_of_approval(first)
        child_id = child_of(first, run_id)
        [asked] = first.workflow_manager.get_run(run_id).pending_inputs
    finally:
        first.shutdown()

    second = engine_at(tmp_path)
    try:
        manager = second.workflow_manager
        assert manager.is_active(run_id)
        record = manager.inputs.wait(run_id, WAIT)  # its step takes over the same sub-run, which asks again
        assert record.status is WorkflowStatus.WAITING_FOR_INPUT
        assert record.pending_inputs == [asked]
        manager.inputs.respond(run_id, "ask", "accept")
        final = manager.wait_run(run_id, WAIT)
        assert final.status is WorkflowStatus.COMPLETED, final.error
        assert final.steps["sub"].output["run_id"] == child_id
        assert [r.run_id for r in manager.list_runs(workflow_name="gated")] == [child_id]
    finally:
        second.shutdown()


def test_a_run_cancelled_at_shutdown_says_why_and_how_to_continue_it_and_a_resume_continues_it(
    tmp_path: Path,
) -> None:
    # Was "run cancelled" alone, read after a restart with nothing saying the server had stopped.
    steps = [
        {"name": "first", "module": "core", "action": "echo", "parameters": {"message": "kept"}},
        {
            "name": "s",
            "module": "core",
            "action": "sleep",
            "parameters": {"seconds": 600},
            "dependencies": ["first"],
        },
    ]
    started = threading.Event()
    first = engine_at(tmp_path)
    try:
        first.workflow_manager.create_workflow({"name": "slow", "steps": steps})
        first.workflow_manager.add_listener(
            lambda event, payload: (
                started.set() if event == "step.started" and payload["step"] == "s" else None
            )
        )
        run_id = first.workflow_manager.execute_workflow("slow", wait=False).run_id
        assert started.wait(WAIT)
    finally:
        first.shutdown()

    second = engine_at(tmp_path)
    try:
        manager = second.workflow_manager
        record = manager.get_run(run_id)
        assert record.status is WorkflowStatus.CANCELLED
        assert record.error == (
            "cancelled because the server (or program) running it shut down; resume_workflow_run continues "
            f"it from its completed steps (from a shell: codomyrmex-orchestration resume {run_id})"
        )
        step_error = record.steps["s"].error
        assert step_error is not None and "shut down" in step_error.message
        resumed = manager.resume_run(run_id, wait=False)  # what the error promises
        assert resumed.status is WorkflowStatus.RUNNING
        assert resumed.steps["first"].output == "kept"
        assert manager.cancel_run(run_id).status is WorkflowStatus.CANCELLED
    finally:
        second.shutdown()
