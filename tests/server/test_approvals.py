"""Approval steps through the real MCP Client: elicitation to a client that supports it, the
waiting_for_input state and respond_to_run for one that does not, and a restart in between."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any, Literal

import anyio
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

from codomyrmex_orchestration.core.actions import ActionDefinition
from codomyrmex_orchestration.server._approvals import ASKS
from codomyrmex_orchestration.server.app import build_server
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools
from tests.helpers.mcp_calls import WAIT, call, ok
from tests.server.conftest import make_engine

pytestmark = pytest.mark.anyio

SCHEMA = {
    "type": "object",
    "properties": {"reason": {"type": "string", "minLength": 3}, "copies": {"type": "integer"}},
    "required": ["reason"],
}
GATED = {
    "name": "gated",
    "steps": [
        {"name": "plan", "module": "core", "action": "set", "parameters": {"files": 3}},
        {
            "name": "approve",
            "module": "core",
            "action": "approve",
            "parameters": {"message": "Delete {{steps.plan.output.files}} files?", "schema": SCHEMA},
        },
        {
            "name": "act",
            "module": "core",
            "action": "echo",
            "parameters": {"message": "{{steps.approve.output.content.reason}}"},
        },
    ],
}


def answering(
    action: Literal["accept", "decline", "cancel"], content: dict[str, Any] | None = None
) -> tuple[Any, list[types.ElicitRequestParams]]:
    """An elicitation callback that answers every question with ``action``, and the questions it got."""
    asked: list[types.ElicitRequestParams] = []

    async def callback(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        return types.ElicitResult(action=action, content=content)

    return callback, asked


async def waiting_run(client: Client, tools: OrchestrationMCPTools) -> str:
    """Start GATED without waiting and return its id once it waits for input (an event, no polling)."""
    await ok(client, "create_workflow", GATED)
    asked = threading.Event()
    manager = tools.engine.workflow_manager
    listener = lambda event, payload: asked.set() if event == "run.waiting_for_input" else None  # noqa: E731
    manager.add_listener(listener)
    try:
        started = await ok(client, "execute_workflow", {"workflow_name": "gated", "wait": False})
        assert await anyio.to_thread.run_sync(asked.wait, WAIT)
    finally:
        manager.remove_listener(listener)
    return str(started["run_id"])


async def test_a_client_with_elicitation_is_asked_and_its_acceptance_completes_the_run(
    tools: OrchestrationMCPTools,
) -> None:
    callback, asked = answering("accept", {"reason": "cleanup", "copies": 2})
    async with Client(build_server(tools), mode="legacy", elicitation_callback=callback) as client:
        await ok(client, "create_workflow", GATED)
        run = await ok(client, "execute_workflow", {"workflow_name": "gated"})
    assert run["status"] == "completed"
    assert run["steps"]["approve"]["output"] == {
        "action": "accept",
        "content": {"reason": "cleanup", "copies": 2},
    }
    assert run["steps"]["act"]["output"] == "cleanup"
    [question] = asked
    assert question.message == "Delete 3 files?"
    assert isinstance(question, types.ElicitRequestFormParams)
    assert question.requested_schema == SCHEMA


async def test_a_declining_client_fails_the_step_with_the_reason(tools: OrchestrationMCPTools) -> None:
    callback, asked = answering("decline")
    async with Client(build_server(tools), mode="legacy", elicitation_callback=callback) as client:
        await ok(client, "create_workflow", GATED)
        run = await ok(client, "execute_workflow", {"workflow_name": "gated"})
    assert len(asked) == 1
    assert run["status"] == "failed"
    assert run["steps"]["approve"]["status"] == "failed"
    assert "the approval was declined: Delete 3 files?" in run["steps"]["approve"]["error"]["message"]
    assert run["steps"]["act"]["status"] == "skipped"


async def test_without_elicitation_the_run_waits_and_respond_to_run_answers_it(
    client: Client, tools: OrchestrationMCPTools
) -> None:
    run_id = await waiting_run(client, tools)
    run = await ok(client, "get_workflow_run", {"run_id": run_id})
    assert run["status"] == "waiting_for_input"
    assert "respond_to_run" in run["note"]
    [question] = run["pending_inputs"]
    assert question["step"] == "approve"
    assert question["message"] == "Delete 3 files?"
    assert question["requested_schema"] == SCHEMA
    assert question["asked_at"] and question["deadline"] is None
    listed = await ok(client, "list_workflow_runs", {"status": "waiting_for_input"})
    assert [r["run_id"] for r in listed["runs"]] == [run_id]

    bad = await call(client, "respond_to_run", {"run_id": run_id, "step": "approve", "action": "accept"})
    assert bad.is_error
    assert "content.reason: required (a string)" in bad.content[0].text
    off = {
        "run_id": run_id,
        "step": "approve",
        "action": "accept",
        "content": {"reason": "ok", "copies": "2"},
    }
    bad = await call(client, "respond_to_run", off)
    assert bad.is_error
    assert "content.reason: at least 3 characters" in bad.content[0].text
    assert "content.copies: expected an integer, got str '2'" in bad.content[0].text
    wrong = await call(client, "respond_to_run", {"run_id": run_id, "step": "plan", "action": "accept"})
    assert wrong.is_error and "steps waiting for an answer: approve" in wrong.content[0].text
    assert (await ok(client, "get_workflow_run", {"run_id": run_id}))["status"] == "waiting_for_input"

    answer = {"run_id": run_id, "step": "approve", "action": "accept", "content": {"reason": "tidy"}}
    await ok(client, "respond_to_run", answer)
    with anyio.fail_after(WAIT):
        final = await anyio.to_thread.run_sync(tools.engine.workflow_manager.wait_run, run_id, WAIT)
    assert final.status.value == "completed"
    assert final.steps["act"].output == "tidy"


PARENT = {
    "name": "parent",
    "steps": [{"name": "sub", "module": "workflow", "action": "run", "parameters": {"workflow": "gated"}}],
}


async def test_a_client_with_elicitation_is_asked_the_question_of_its_run_s_sub_run(
    tools: OrchestrationMCPTools,
) -> None:
    callback, asked = answering("accept", {"reason": "from the child"})
    async with Client(build_server(tools), mode="legacy", elicitation_callback=callback) as client:
        await ok(client, "create_workflow", GATED)
        await ok(client, "create_workflow", PARENT)
        run = await ok(client, "execute_workflow", {"workflow_name": "parent"})
    assert run["status"] == "completed", run
    [question] = asked
    assert question.message == "Delete 3 files?"
    assert run["steps"]["sub"]["output"]["outputs"]


async def test_a_sub_run_s_question_ends_the_parent_s_wait_and_the_parent_s_id_answers_it(
    client: Client, tools: OrchestrationMCPTools
) -> None:
    await ok(client, "create_workflow", GATED)
    await ok(client, "create_workflow", PARENT)
    with anyio.fail_after(WAIT / 2):  # before the fix: the whole timeout, then "still running"
        run = await ok(client, "execute_workflow", {"workflow_name": "parent", "timeout_seconds": WAIT})
    assert run["status"] == "waiting_for_input"
    [question] = run["pending_inputs"]
    child_id = question["run_id"]
    assert child_id != run["run_id"] and question["step"] == "approve"
    assert f"step approve of sub-run {child_id}" in run["note"]
    wrong = await call(client, "respond_to_run", {"run_id": run["run_id"], "step": "sub", "action": "accept"})
    assert (
        wrong.is_error
        and f"steps waiting for an answer: approve (sub-run {child_id})" in wrong.content[0].text
    )

    answer = {"run_id": run["run_id"], "step": "approve", "action": "accept", "content": {"reason": "tidy"}}
    final = await ok(client, "respond_to_run", answer)
    assert final["status"] == "completed", final
    assert final["steps"]["sub"]["output"]["run_id"] == child_id


async def test_cancelling_a_waiting_answer_leaves_the_run_going(
    client: Client, tools: OrchestrationMCPTools
) -> None:
    # Whoever answers a question may not have started the run: dropping the wait for its end (the client
    # cancels the respond_to_run request) must not cancel it, as dropping execute_workflow's wait does.
    manager = tools.engine.workflow_manager
    act_started, release = threading.Event(), threading.Event()
    manager.add_listener(lambda event, payload: act_started.set() if payload.get("step") == "act" else None)
    slow = {**GATED, "name": "slow"}
    slow["steps"] = [*GATED["steps"][:2], {**GATED["steps"][2], "module": "test", "action": "hold"}]
    tools.engine.registry.register(
        ActionDefinition("test", "hold", lambda params, ctx: release.wait(WAIT) and params["message"])
    )
    await ok(client, "create_workflow", slow)
    asked, ended = threading.Event(), threading.Event()
    manager.add_listener(lambda event, payload: asked.set() if event == "run.waiting_for_input" else None)
    manager.add_listener(
        lambda event, payload: ended.set() if event in ("run.cancelled", "run.failed") else None
    )
    run_id = (await ok(client, "execute_workflow", {"workflow_name": "slow", "wait": False}))["run_id"]
    assert await anyio.to_thread.run_sync(asked.wait, WAIT)
    answer = {"run_id": run_id, "step": "approve", "action": "accept", "content": {"reason": "tidy"}}
    with anyio.move_on_after(WAIT) as scope:
        async with anyio.create_task_group() as tg:

            async def answer_and_wait() -> None:
                await client.call_tool("respond_to_run", answer)

            tg.start_soon(answer_and_wait)
            assert await anyio.to_thread.run_sync(act_started.wait, WAIT)  # the answer went in, it waits
            tg.cancel_scope.cancel()  # the client drops its request
    assert not scope.cancelled_caught
    try:
        # The server cancels (or, rightly, does not cancel) the run as it handles the client's
        # cancellation, which nothing tells the client about: give it a bounded moment to do the wrong thing.
        assert not await anyio.to_thread.run_sync(ended.wait, 1.0)
        assert (await ok(client, "get_workflow_run", {"run_id": run_id}))["status"] == "running"
    finally:
        release.set()
    with anyio.fail_after(WAIT):
        final = await anyio.to_thread.run_sync(manager.wait_run, run_id, WAIT)
    assert final.status.value == "completed"
    assert final.steps["act"].output == "tidy"


async def test_a_legacy_client_without_elicitation_is_not_asked(tools: OrchestrationMCPTools) -> None:
    async with Client(build_server(tools), mode="legacy") as client:
        run_id = await waiting_run(client, tools)
        await ok(client, "respond_to_run", {"run_id": run_id, "step": "approve", "action": "cancel"})
        run = await ok(client, "get_workflow_run", {"run_id": run_id})
    assert run["status"] in ("running", "failed")
    final = tools.engine.workflow_manager.wait_run(run_id, WAIT)
    assert final.steps["approve"].error is not None
    assert "dismissed (cancel)" in final.steps["approve"].error.message


async def test_a_waiting_run_is_answered_after_the_server_restarts(tmp_path: Path) -> None:
    def durable_tools() -> OrchestrationMCPTools:
        return OrchestrationMCPTools(
            engine_factory=lambda policy: make_engine(tmp_path, policy, durable=True)
        )

    first = durable_tools()
    try:
        async with Client(build_server(first)) as client:
            run_id = await waiting_run(client, first)
    finally:
        first.close()
    second = durable_tools()
    try:
        async with Client(build_server(second)) as client:
            run = await ok(client, "get_workflow_run", {"run_id": run_id})
            assert run["status"] == "waiting_for_input"
            assert [q["step"] for q in run["pending_inputs"]] == ["approve"]
            answer = {"run_id": run_id, "step": "approve", "action": "accept", "content": {"reason": "later"}}
            await ok(client, "respond_to_run", answer)
            final = await anyio.to_thread.run_sync(second.engine.workflow_manager.wait_run, run_id, WAIT)
        assert final.status.value == "completed"
        assert final.steps["act"].output == "later"
    finally:
        second.close()


async def test_runs_waiting_for_answers_never_push_out_runs_that_just_completed(tmp_path: Path) -> None:
    from codomyrmex_orchestration.core.engine import OrchestrationEngine
    from codomyrmex_orchestration.core.store import SqliteStore

    # More runs waiting for an answer than the run limit: each run that completes is still answered
    # with its record and found right after, and so is a waiting run, older than all, once answered.
    # Housekeeping at every commit: a run limit that would delete a run does so before it is read.
    def engine(policy: Any) -> Any:
        store = SqliteStore(tmp_path / "state" / "state.db", retention_runs=2, housekeeping_interval=0)
        return OrchestrationEngine(
            state_dir=tmp_path / "state",
            config_dir=None,
            projects_dir=tmp_path / "projects",
            templates_dir=tmp_path / "templates",
            max_workers=4,
            store=store,
        )

    tools = OrchestrationMCPTools(engine_factory=engine)
    try:
        async with Client(build_server(tools)) as client:
            await ok(client, "create_workflow", GATED)
            hello = [{"name": "greet", "module": "core", "action": "echo", "parameters": {"message": "hi"}}]
            await ok(client, "create_workflow", {"name": "hello", "steps": hello})
            waiting = [(await ok(client, "execute_workflow", {"workflow_name": "gated"})) for _ in range(3)]
            assert [run["status"] for run in waiting] == ["waiting_for_input"] * 3
            for _ in range(20):
                done = await ok(client, "execute_workflow", {"workflow_name": "hello"})
                assert done["status"] == "completed"
                read = await ok(client, "get_workflow_run", {"run_id": done["run_id"]})
                assert read["status"] == "completed" and read["steps"]["greet"]["output"] == "hi"
            oldest = waiting[0]["run_id"]
            answer = {"run_id": oldest, "step": "approve", "action": "accept", "content": {"reason": "late"}}
            assert (await ok(client, "respond_to_run", answer))["status"] == "completed"
            read = await ok(client, "get_workflow_run", {"run_id": oldest})
            assert read["status"] == "completed" and read["steps"]["act"]["output"] == "late"
            listed = await ok(client, "list_workflow_runs", {"status": "waiting_for_input"})
            assert sorted(r["run_id"] for r in listed["runs"]) == sorted(r["run_id"] for r in waiting[1:])
    finally:
        tools.close()


async def test_a_wait_ends_when_the_run_needs_a_person_and_the_answer_waits_for_the_end(
    client: Client,
) -> None:
    await ok(client, "create_workflow", GATED)
    with anyio.fail_after(WAIT):  # far less than the wait asked for: nobody else will answer
        run = await ok(client, "execute_workflow", {"workflow_name": "gated", "timeout_seconds": 600})
    assert run["status"] == "waiting_for_input"
    assert run["note"].startswith("the run is waiting for input (step approve)")
    answer = {"run_id": run["run_id"], "step": "approve", "action": "accept", "content": {"reason": "tidy"}}
    done = await ok(client, "respond_to_run", answer)
    assert done["status"] == "completed"
    assert done["steps"]["act"]["output"] == "tidy"
    assert done["pending_inputs"] == []


async def test_a_2026_client_with_elicitation_answers_through_the_retry_of_its_call(
    tools: OrchestrationMCPTools,
) -> None:
    callback, asked = answering("accept", {"reason": "by retry"})
    async with Client(build_server(tools), elicitation_callback=callback) as client:
        assert client.protocol_version == "2026-07-28"  # no server-initiated requests on this wire
        await ok(client, "create_workflow", GATED)
        run = await ok(client, "execute_workflow", {"workflow_name": "gated", "timeout_seconds": 600})
    assert run["status"] == "completed"
    assert run["steps"]["approve"]["output"] == {"action": "accept", "content": {"reason": "by retry"}}
    assert run["steps"]["act"]["output"] == "by retry"
    [question] = asked
    assert question.message == "Delete 3 files?"


async def test_a_2026_client_declining_by_retry_fails_the_step(tools: OrchestrationMCPTools) -> None:
    callback, asked = answering("decline")
    async with Client(build_server(tools), elicitation_callback=callback) as client:
        await ok(client, "create_workflow", GATED)
        run = await ok(client, "execute_workflow", {"workflow_name": "gated"})
    assert len(asked) == 1
    assert run["status"] == "failed"
    assert "the approval was declined" in run["steps"]["approve"]["error"]["message"]


#: A workflow that needs nobody: a forged retry must not start it either.
PLAIN = {
    "name": "plain",
    "steps": [{"name": "say", "module": "core", "action": "echo", "parameters": {"message": "hi"}}],
}
#: The answer a retry carries for GATED's question.
ANSWERS: dict[str, Any] = {"approve": types.ElicitResult(action="accept", content={"reason": "by retry"})}


async def refused_state(client: Client, name: str, arguments: dict[str, Any], state: str) -> str:
    """The message of the -32602 error the call with ``state`` gets (it must get one)."""
    with anyio.fail_after(WAIT), pytest.raises(MCPError) as refused:
        await client.call_tool(name, arguments, input_responses=ANSWERS, request_state=state)
    assert refused.value.error.code == types.INVALID_PARAMS
    assert "requestState" in refused.value.error.message
    assert refused.value.error.data["field"] == "requestState"
    return refused.value.error.message


async def test_a_made_up_request_state_is_refused_and_neither_answers_a_run_nor_starts_one(
    tools: OrchestrationMCPTools,
) -> None:
    callback, asked = answering("accept", {"reason": "forged"})
    async with Client(build_server(tools), elicitation_callback=callback) as client:
        await ok(client, "create_workflow", PLAIN)
        run_id = await waiting_run(client, tools)  # another client's run, waiting for respond_to_run
        forged = f"codomyrmex-approval:{run_id}"  # what the state looked like in plain text
        for state in (forged, f"{forged}x", "made up", ""):
            await refused_state(client, "execute_workflow", {"workflow_name": "plain"}, state)
        task = {"name": "x", "module": "core", "action": "echo", "parameters": {"message": 1}}
        await refused_state(client, "execute_task", task, forged)
        run = await ok(client, "get_workflow_run", {"run_id": run_id})
        listed = await ok(client, "list_workflow_runs", {})
    assert asked == []
    assert run["status"] == "waiting_for_input"
    assert [q["step"] for q in run["pending_inputs"]] == ["approve"]
    assert [r["run_id"] for r in listed["runs"]] == [run_id]


async def test_a_request_state_answers_only_the_retry_of_the_call_it_was_issued_for(
    tools: OrchestrationMCPTools,
) -> None:
    callback, _ = answering("accept")  # declares elicitation; the answers go in by hand
    async with Client(build_server(tools), elicitation_callback=callback) as client:
        await ok(client, "create_workflow", GATED)
        await ok(client, "create_workflow", PLAIN)
        arguments = {"workflow_name": "gated", "timeout_seconds": 600}
        with anyio.fail_after(WAIT):
            asked = await client.session.call_tool("execute_workflow", arguments, allow_input_required=True)
        assert isinstance(asked, types.InputRequiredResult)
        state = asked.request_state
        assert state is not None and list(asked.input_requests or {}) == ["approve"]
        for name, other in (
            ("execute_workflow", {"workflow_name": "plain"}),
            ("execute_workflow", {**arguments, "timeout_seconds": 5}),
            ("resume_workflow_run", {"run_id": "x"}),
            ("execute_task", {"name": "x", "module": "core", "action": "echo", "parameters": {"message": 1}}),
        ):
            await refused_state(client, name, other, state)
        listed = await ok(client, "list_workflow_runs", {})
        [waiting] = listed["runs"]
        assert waiting["status"] == "waiting_for_input"
        with anyio.fail_after(WAIT):
            done = await client.call_tool(
                "execute_workflow", arguments, input_responses=ANSWERS, request_state=state
            )
    assert not done.is_error, done.content
    assert done.structured_content is not None
    assert done.structured_content["run_id"] == waiting["run_id"]
    assert done.structured_content["status"] == "completed"
    assert done.structured_content["steps"]["act"]["output"] == "by retry"


async def test_a_request_state_issued_before_a_restart_answers_the_run_after_it(tmp_path: Path) -> None:
    callback, _ = answering("accept")

    def durable_client(tools: OrchestrationMCPTools) -> Client:
        server = build_server(tools, state_dir=tmp_path / "state")  # as serve builds it, durable
        return Client(server, elicitation_callback=callback)

    def durable_tools() -> OrchestrationMCPTools:
        return OrchestrationMCPTools(
            engine_factory=lambda policy: make_engine(tmp_path, policy, durable=True)
        )

    arguments = {"workflow_name": "gated", "timeout_seconds": 600}
    first = durable_tools()
    try:
        async with durable_client(first) as client:
            await ok(client, "create_workflow", GATED)
            with anyio.fail_after(WAIT):
                asked = await client.session.call_tool(
                    "execute_workflow", arguments, allow_input_required=True
                )
        assert isinstance(asked, types.InputRequiredResult)
    finally:
        first.close()
    key = tmp_path / "state" / "request-state.key"
    assert key.stat().st_mode & 0o777 == 0o600  # the owner's alone, like the secrets file
    second = durable_tools()
    try:
        async with durable_client(second) as client:
            state = asked.request_state
            with anyio.fail_after(WAIT):
                done = await client.call_tool(
                    "execute_workflow", arguments, input_responses=ANSWERS, request_state=state
                )
        assert not done.is_error, done.content
        assert done.structured_content is not None
        assert done.structured_content["status"] == "completed"
        assert done.structured_content["steps"]["act"]["output"] == "by retry"
    finally:
        second.close()


#: Asks who it is for; its last step echoes the answer's reason.
ASK = {
    "name": "ask",
    "parameters": {"who": "nobody"},
    "steps": [
        {
            "name": "approve",
            "module": "core",
            "action": "approve",
            "parameters": {"message": "Go for {{params.who}}?", "schema": SCHEMA},
        },
        {
            "name": "act",
            "module": "core",
            "action": "echo",
            "parameters": {"message": "{{steps.approve.output.content.reason}}"},
        },
    ],
}
#: Two sub-runs of ASK, whose questions have the same step name, and a question of the parent's own.
TWINS = {
    "name": "twins",
    "steps": [
        *({"name": name, "module": "workflow", "action": "run",
           "parameters": {"workflow": "ask", "parameters": {"who": name}}} for name in ("alpha", "beta")),
        {"name": "gate", "module": "core", "action": "approve", "parameters": {"message": "Open the gate?"}},
    ],
}  # fmt: skip


def answering_by_message() -> tuple[Any, list[str]]:
    """An elicitation callback that accepts each question with a reason naming it, and the messages."""
    asked: list[str] = []

    async def callback(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"reason": f"answer to {params.message}"})

    return callback, asked


async def test_a_2026_client_answers_two_sub_runs_asking_a_step_of_the_same_name_each_its_own(
    tools: OrchestrationMCPTools,
) -> None:
    # The input requests were keyed by step name: the two sub-runs' "approve" questions were one
    # request, whose answer, given through the parent's id, was refused as ambiguous.
    callback, asked = answering_by_message()
    async with Client(build_server(tools), elicitation_callback=callback) as client:
        await ok(client, "create_workflow", ASK)
        await ok(client, "create_workflow", TWINS)
        three = threading.Semaphore(0)
        manager = tools.engine.workflow_manager
        listener = lambda event, _: three.release() if event == "run.waiting_for_input" else None  # noqa: E731
        manager.add_listener(listener)
        try:
            started = await ok(client, "execute_workflow", {"workflow_name": "twins", "wait": False})
            for _ in range(3):  # every question waits: the answer to the gate finds the two others
                assert await anyio.to_thread.run_sync(three.acquire, True, WAIT)
        finally:
            manager.remove_listener(listener)
        gate = {"run_id": started["run_id"], "step": "gate", "action": "accept", "timeout_seconds": 600}
        run = await ok(client, "respond_to_run", gate)
    assert run["status"] == "completed", run
    assert sorted(asked) == ["Go for alpha?", "Go for beta?"]
    for name in ("alpha", "beta"):
        assert run["steps"][name]["output"]["outputs"]["act"] == f"answer to Go for {name}?", run["steps"]


#: A map step whose items are sub-runs of ASK, each asking its own question.
FANNED = {
    "name": "fanned",
    "steps": [
        {"name": "each", "module": "workflow", "action": "run", "for_each": ["alpha", "beta"],
         "parameters": {"workflow": "ask", "parameters": {"who": "{{item}}"}}},
    ],
}  # fmt: skip


async def test_the_items_of_a_sub_run_map_step_ask_their_parent_and_each_gets_its_own_answer(
    client: Client, tools: OrchestrationMCPTools
) -> None:
    await ok(client, "create_workflow", ASK)
    await ok(client, "create_workflow", FANNED)
    asked = threading.Semaphore(0)
    manager = tools.engine.workflow_manager
    listener = lambda event, _: asked.release() if event == "run.waiting_for_input" else None  # noqa: E731
    manager.add_listener(listener)
    try:
        started = await ok(client, "execute_workflow", {"workflow_name": "fanned", "wait": False})
        for _ in range(2):
            assert await anyio.to_thread.run_sync(asked.acquire, True, WAIT)
    finally:
        manager.remove_listener(listener)
    parent = started["run_id"]
    run = await ok(client, "get_workflow_run", {"run_id": parent})
    assert run["status"] == "waiting_for_input"
    by_message = {q["message"]: q for q in run["pending_inputs"]}
    assert sorted(by_message) == ["Go for alpha?", "Go for beta?"]
    assert {q["step"] for q in by_message.values()} == {"approve"}
    alpha, beta = by_message["Go for alpha?"]["run_id"], by_message["Go for beta?"]["run_id"]
    assert len({alpha, beta, parent}) == 3
    # By the parent's id, "approve" names two questions: refused, naming the sub-runs.
    both = await call(client, "respond_to_run", {"run_id": parent, "step": "approve", "action": "accept"})
    assert both.is_error and alpha in both.content[0].text and beta in both.content[0].text
    # One by its sub-run's id, then the other, the only one left, by the parent's.
    first = {
        "run_id": beta,
        "step": "approve",
        "action": "accept",
        "content": {"reason": "b-side"},
        "wait": False,
    }
    await ok(client, "respond_to_run", first)
    last = {"run_id": parent, "step": "approve", "action": "accept", "content": {"reason": "a-side"}}
    final = await ok(client, "respond_to_run", last)
    assert final["status"] == "completed", final
    outputs = [item["outputs"]["act"] for item in final["steps"]["each"]["output"]]
    assert outputs == ["a-side", "b-side"]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_client_with_elicitation_answers_each_item_of_a_sub_run_map_step(
    tools: OrchestrationMCPTools, mode: Any
) -> None:
    callback, asked = answering_by_message()
    async with Client(build_server(tools), mode=mode, elicitation_callback=callback) as client:
        await ok(client, "create_workflow", ASK)
        await ok(client, "create_workflow", FANNED)
        run = await ok(client, "execute_workflow", {"workflow_name": "fanned", "timeout_seconds": 600})
    assert run["status"] == "completed", run
    assert sorted(asked) == ["Go for alpha?", "Go for beta?"]
    outputs = [item["outputs"]["act"] for item in run["steps"]["each"]["output"]]
    assert outputs == ["answer to Go for alpha?", "answer to Go for beta?"]


async def test_a_2026_answer_that_does_not_fit_the_schema_is_asked_again_saying_why(
    tools: OrchestrationMCPTools,
) -> None:
    # MRTR (2026-07-28): an answer missing what is needed SHOULD get a new InputRequiredResult, not an
    # error; this one ended the call with isError "content.reason: expected a string, got int 7".
    asked: list[types.ElicitRequestParams] = []

    async def callback(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        content: dict[str, Any] = {"reason": 7} if len(asked) == 1 else {"reason": "fits now"}
        return types.ElicitResult(action="accept", content=content)

    async with Client(build_server(tools), elicitation_callback=callback) as client:
        await ok(client, "create_workflow", GATED)
        run = await ok(client, "execute_workflow", {"workflow_name": "gated", "timeout_seconds": 600})
    assert run["status"] == "completed" and run["steps"]["act"]["output"] == "fits now"
    first, again = asked
    assert first.message == "Delete 3 files?"
    assert again.message.startswith("Delete 3 files? (the previous answer was refused: "), again.message
    assert "content.reason: expected a string, got int 7" in again.message
    assert isinstance(again, types.ElicitRequestFormParams) and isinstance(
        first, types.ElicitRequestFormParams
    )
    assert again.requested_schema == first.requested_schema


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_over_stdio_the_sdk_clients_elicitation_callback_answers(tmp_path: Path, mode: Any) -> None:
    script = Path(sys.executable).parent / "codomyrmex-orchestration"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODOMYRMEX_")}
    env["CODOMYRMEX_STATE_DIR"] = str(tmp_path / "state")
    env["CODOMYRMEX_CONFIG_DIR"] = str(tmp_path / "config")
    env["CODOMYRMEX_PROJECTS_DIR"] = str(tmp_path / "projects")
    params = StdioServerParameters(command=str(script), args=["serve"], cwd=tmp_path, env=env)
    callback, asked = answering("accept", {"reason": "over stdio"})
    with anyio.fail_after(60):
        async with Client(params, mode=mode, elicitation_callback=callback) as client:
            await ok(client, "create_workflow", GATED)
            run = await ok(client, "execute_workflow", {"workflow_name": "gated"})
    assert len(asked) == 1
    assert run["status"] == "completed"
    assert run["steps"]["act"]["output"] == "over stdio"
    assert (tmp_path / "state" / "request-state.key").is_file()  # serve keeps its requestState key there


async def test_a_2025_answer_that_does_not_fit_the_schema_is_asked_again_saying_why(
    tools: OrchestrationMCPTools,
) -> None:
    # On 2025 the refused answer was dropped: one elicitation/create, then waiting_for_input with a note
    # that never said why (the reason went to the server log only).
    asked: list[types.ElicitRequestParams] = []

    async def callback(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        content: dict[str, Any] = {"reason": "x"} if len(asked) == 1 else {"reason": "fits now"}
        return types.ElicitResult(action="accept", content=content)

    async with Client(build_server(tools), mode="legacy", elicitation_callback=callback) as client:
        await ok(client, "create_workflow", GATED)
        run = await ok(client, "execute_workflow", {"workflow_name": "gated", "timeout_seconds": 600})
    assert run["status"] == "completed" and run["steps"]["act"]["output"] == "fits now", run
    first, again = asked
    assert first.message == "Delete 3 files?"
    assert again.message == (
        "Delete 3 files? (the previous answer was refused: content.reason: at least 3 characters)"
    )


async def test_a_2025_client_that_keeps_answering_off_the_schema_is_asked_a_bounded_number_of_times(
    tools: OrchestrationMCPTools,
) -> None:
    callback, asked = answering("accept", {"reason": "x"})
    async with Client(build_server(tools), mode="legacy", elicitation_callback=callback) as client:
        await ok(client, "create_workflow", GATED)
        run = await ok(client, "execute_workflow", {"workflow_name": "gated", "timeout_seconds": 600})
        assert len(asked) == ASKS
        assert run["status"] == "waiting_for_input"
        assert "'approve' were refused (content.reason: at least 3 characters)" in run["note"], run["note"]
        assert "respond_to_run" in run["note"]
        answered = await ok(
            client,
            "respond_to_run",
            {
                "run_id": run["run_id"],
                "step": "approve",
                "action": "accept",
                "content": {"reason": "by hand"},
            },
        )
    assert answered["status"] == "completed" and answered["steps"]["act"]["output"] == "by hand"
