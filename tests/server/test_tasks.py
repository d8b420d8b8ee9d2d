"""MCP tasks through the real Python SDK Client, in process, on the 2025-11-25 wire: task-augmented
tools/call, tasks/get, tasks/result, tasks/list, tasks/cancel and notifications/tasks/status."""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from codomyrmex_orchestration.core.actions import ActionContext, ActionDefinition, ActionRegistry
from codomyrmex_orchestration.errors import StepCancelledError
from codomyrmex_orchestration.server._tasks import EXTENSION_ID
from codomyrmex_orchestration.server.app import build_server
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools
from tests.helpers.failing_actions import register_fails_once
from tests.helpers.mcp_calls import ok
from tests.helpers.mcp_tasks import (
    TaskHandle,
    TasksExtension,
    TaskStatuses,
    call_as_task,
    cancel_task,
    get_detailed,
    get_task,
    list_tasks,
    task_result,
)
from tests.server.conftest import make_engine
from tests.server.test_http import TOKEN, serving
from tests.server.test_stdio import _Wire

pytestmark = pytest.mark.anyio

RELATED = "io.modelcontextprotocol/related-task"
TASK_TOOLS = {"execute_workflow", "create_complex_workflow", "resume_workflow_run", "execute_task"}


def chain(steps: int) -> dict[str, Any]:
    """A workflow of ``steps`` echo steps, each after the one before."""
    listed = [
        {
            "name": f"s{i:02d}",
            "module": "core",
            "action": "echo",
            "parameters": {"message": f"step {i}"},
            **({"dependencies": [f"s{i - 1:02d}"]} if i else {}),
        }
        for i in range(steps)
    ]
    return {"name": f"chain{steps}", "steps": listed}


#: A quick step, then one held until the run is cancelled the first time it runs (test.held_once).
HELD = {
    "name": "held",
    "steps": [
        {"name": "quick", "module": "core", "action": "echo", "parameters": {"message": 1}},
        {"name": "hold", "module": "test", "action": "held_once", "dependencies": ["quick"]},
    ],
}
#: A quick step, then one that fails the first time a run calls it (test.fails_once).
FLAKY = {
    "name": "flaky",
    "steps": [
        {"name": "quick", "module": "core", "action": "echo", "parameters": {"message": 1}},
        {"name": "gate", "module": "test", "action": "fails_once", "dependencies": ["quick"]},
    ],
}


def register_held_once(registry: ActionRegistry) -> threading.Event:
    """Register ``test.held_once``: its first call waits until cancelled, later calls return at once.
    Returns an event set when the first call has started."""
    started = threading.Event()
    calls = [0]
    lock = threading.Lock()

    def held_once(params: dict[str, Any], ctx: ActionContext) -> str:
        with lock:
            calls[0] += 1
            first = calls[0] == 1
        if not first:
            return "through"
        started.set()
        ctx.wait(60)  # wakes at once when the run is cancelled
        raise StepCancelledError(ctx.step_name, "held until cancelled")

    registry.register(ActionDefinition("test", "held_once", held_once))
    return started


@asynccontextmanager
async def legacy(tools: OrchestrationMCPTools) -> AsyncIterator[tuple[Client, TaskStatuses]]:
    statuses = TaskStatuses()
    async with Client(build_server(tools), mode="legacy", extensions=[statuses]) as client:
        yield client, statuses


def without_ids(handle: dict[str, Any]) -> dict[str, Any]:
    """A run handle without what differs between two runs of one workflow (id and times)."""
    volatile = {"run_id", "started_at", "finished_at", "created_at", "updated_at", "duration_seconds"}
    steps = {
        name: {k: v for k, v in step.items() if k not in volatile}
        for name, step in (handle.get("steps") or {}).items()
    }
    return {**{k: v for k, v in handle.items() if k not in volatile}, "steps": steps}


async def test_a_2025_client_is_offered_tasks_on_the_run_tools_and_a_2026_client_is_not(
    tools: OrchestrationMCPTools,
) -> None:
    async with legacy(tools) as (client, _):
        capabilities = client.server_capabilities
        listed = await client.list_tools()
    assert capabilities.tasks is not None
    assert capabilities.tasks.list is not None and capabilities.tasks.cancel is not None
    assert capabilities.tasks.requests is not None and capabilities.tasks.requests.tools is not None
    assert capabilities.tasks.requests.tools.call is not None
    optional = {t.name for t in listed.tools if t.execution and t.execution.task_support == "optional"}
    assert optional == TASK_TOOLS
    async with Client(build_server(tools)) as modern:
        assert modern.protocol_version == "2026-07-28"
        assert modern.server_capabilities.tasks is None
        assert all(t.execution is None for t in (await modern.list_tools()).tools)


def test_a_2025_06_18_client_is_offered_no_tasks_and_a_task_field_from_it_is_ignored(tmp_path: Path) -> None:
    # Tasks came with 2025-11-25. The spec: a receiver that does not declare the capability processes the
    # request normally, ignoring any task-augmentation metadata; its clients follow runs by their handles.
    wire = _Wire(tmp_path)  # the real server over stdio, initialized with protocol 2025-06-18
    try:
        initialized = wire.initialized["result"]
        assert isinstance(initialized, dict) and initialized["protocolVersion"] == "2025-06-18"
        assert "tasks" not in initialized["capabilities"]
        wire.send(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}')
        listed = wire.request(2, "tools/list")["result"]["tools"]
        assert len(listed) == 24 and not [tool["name"] for tool in listed if "execution" in tool]
        wire.request(3, "tools/call", {"name": "create_workflow", "arguments": chain(1)})
        handles = [
            wire.request(
                request_id,
                "tools/call",
                {"name": "execute_workflow", "arguments": {"workflow_name": "chain1"}, "task": task},
            )["result"]
            for request_id, task in ((4, {"ttl": 60_000}), (5, "x"))
        ]
        refused = [wire.request(6, "tasks/list", {}), wire.request(7, "tasks/get", {"taskId": "t"})]
    finally:
        wire.close()
    for handle in handles:  # the plain call's answer: the run, finished
        assert "task" not in handle and handle["structuredContent"]["status"] == "completed", handle
    assert [answer["error"]["code"] for answer in refused] == [-32601, -32601]


async def test_a_workflow_run_as_a_task_answers_at_once_and_ends_with_the_result_of_the_plain_call(
    tools: OrchestrationMCPTools,
) -> None:
    async with legacy(tools) as (client, statuses):
        await ok(client, "create_workflow", chain(20))
        plain = await ok(client, "execute_workflow", {"workflow_name": "chain20"})
        task = await call_as_task(client, "execute_workflow", {"workflow_name": "chain20"}, ttl=60_000)
        assert task["status"] in ("working", "completed")
        assert task["ttl"] == 60_000 and task["pollInterval"] > 0
        task_id = task["taskId"]
        ended = await statuses.expect(task_id, "completed")
        result = await task_result(client, task_id)
        got = await get_task(client, task_id)
        run = await ok(client, "get_workflow_run", {"run_id": task_id})
    assert ended.status_message == "20 of 20 steps completed"
    assert got.status == "completed" and got.task_id == task_id
    assert not result.is_error
    assert result.meta is not None and result.meta[RELATED] == {"taskId": task_id}
    structured = result.structured_content or {}
    assert structured["run_id"] == task_id and run["status"] == "completed"
    assert plain["status"] == "completed"
    assert without_ids(structured) == without_ids(plain)


async def test_tasks_cancel_ends_the_run_as_cancelled_and_stops_its_subprocess_within_a_second(
    tools: OrchestrationMCPTools, tmp_path: Path
) -> None:
    fifo = tmp_path / "pid.fifo"
    os.mkfifo(fifo)
    script = f"echo $$ > {fifo}; exec sleep 60"
    held = {
        "name": "held",
        "steps": [
            {
                "name": "wait",
                "module": "shell",
                "action": "run",
                "parameters": {"command": ["sh", "-c", script]},
            }
        ],
    }
    async with legacy(tools) as (client, statuses):
        await ok(client, "create_workflow", held)
        task = await call_as_task(client, "execute_workflow", {"workflow_name": "held"})
        with anyio.fail_after(30):
            pid = int(await anyio.to_thread.run_sync(fifo.read_text))  # the step's process is running
        process = os.pidfd_open(pid)
        try:
            working = await get_task(client, task["taskId"])
            cancelled = await cancel_task(client, task["taskId"])
            # The shell's process ends within a second of the cancel (its pidfd turns readable).
            gone, _, _ = select.select([process], [], [], 1.0)
        finally:
            os.close(process)
        await statuses.expect(task["taskId"], "cancelled")
        after = await get_task(client, task["taskId"])
        result = await task_result(client, task["taskId"])
        run = await ok(client, "get_workflow_run", {"run_id": task["taskId"]})
        with pytest.raises(MCPError) as again:
            await cancel_task(client, task["taskId"])
    assert working.status == "working" and working.status_message == "0 of 1 steps completed"
    assert cancelled.status == "cancelled" and after.status == "cancelled"
    assert gone == [process], "the step's subprocess outlived the cancel by more than a second"
    assert run["status"] == "cancelled"
    assert (result.structured_content or {})["status"] == "cancelled"
    assert again.value.error.code == types.INVALID_PARAMS and "already cancelled" in again.value.error.message


async def test_tasks_list_shows_the_clients_tasks_oldest_first_a_page_at_a_time(
    tools: OrchestrationMCPTools,
) -> None:
    async with legacy(tools) as (client, _):
        await ok(client, "create_workflow", chain(1))
        created = [
            (await call_as_task(client, "execute_workflow", {"workflow_name": "chain1"}))["taskId"]
            for _ in range(55)
        ]
        first = await list_tasks(client)
        assert first.next_cursor is not None
        second = await list_tasks(client, first.next_cursor)
        with pytest.raises(MCPError) as bad:
            await list_tasks(client, "not-a-cursor")
    listed = [t.task_id for t in first.tasks] + [t.task_id for t in second.tasks]
    assert listed == created and len(first.tasks) == 50 and second.next_cursor is None
    assert bad.value.error.code == types.INVALID_PARAMS and "cursor" in bad.value.error.message


async def test_a_single_task_runs_as_a_task_with_the_result_of_the_plain_call(
    tools: OrchestrationMCPTools,
) -> None:
    echo = {"name": "hello", "module": "core", "action": "echo", "parameters": {"message": "hi"}}
    async with legacy(tools) as (client, statuses):
        plain = await ok(client, "execute_task", echo)
        task = await call_as_task(client, "execute_task", echo)
        await statuses.expect(task["taskId"], "completed")
        result = await task_result(client, task["taskId"])
        got = await get_task(client, task["taskId"])
    assert got.status == "completed"
    structured = result.structured_content or {}
    assert structured["task_id"] == task["taskId"] and structured["result"] == plain["result"] == "hi"
    volatile = {"task_id", "started_at", "finished_at", "duration_seconds"}
    assert {k: v for k, v in structured.items() if k not in volatile} == {
        k: v for k, v in plain.items() if k not in volatile
    }


async def test_a_call_that_cannot_start_is_a_task_that_fails_at_once_with_the_plain_calls_error(
    tools: OrchestrationMCPTools,
) -> None:
    async with legacy(tools) as (client, _):
        plain = await client.call_tool("execute_workflow", {"workflow_name": "nowhere"})
        task = await call_as_task(client, "execute_workflow", {"workflow_name": "nowhere"})
        got = await get_task(client, task["taskId"])
        result = await task_result(client, task["taskId"])
    assert plain.is_error and result.is_error
    # Every task begins working (the spec); it has failed by the first tasks/get, later than it began.
    assert task["status"] == "working" and "statusMessage" not in task
    assert got.status == "failed" and "nowhere" in (got.status_message or "")
    assert got.created_at == task["createdAt"]
    assert datetime.fromisoformat(got.last_updated_at) > datetime.fromisoformat(got.created_at)
    assert result.content == plain.content


async def test_a_task_s_create_answer_says_working_even_when_its_work_ended_or_waits_already(
    tools: OrchestrationMCPTools,
) -> None:
    from tests.server.test_approvals import GATED

    echo = {"name": "hello", "module": "core", "action": "echo", "parameters": {"message": "hi"}}
    async with legacy(tools) as (client, statuses):
        await ok(client, "create_workflow", GATED)
        # Done or waiting for a person (before the answer, most times): the answer still says working,
        # and the status it has moved on to reaches the client by notification and tasks/get.
        tasks = [await call_as_task(client, "execute_task", echo, ttl=60_000) for _ in range(3)]
        gated = await call_as_task(client, "execute_workflow", {"workflow_name": "gated"})
        for task in tasks:
            await statuses.expect(task["taskId"], "completed")
        await statuses.expect(gated["taskId"], "input_required")
        polled = [await get_task(client, task["taskId"]) for task in [*tasks, gated]]
    assert [task["status"] for task in [*tasks, gated]] == ["working"] * 4
    assert all(task["createdAt"] == task["lastUpdatedAt"] for task in [*tasks, gated])
    assert [got.status for got in polled] == ["completed"] * 3 + ["input_required"]


async def test_a_tool_without_task_support_called_as_a_task_is_refused_and_unknown_tasks_are_not_found(
    tools: OrchestrationMCPTools,
) -> None:
    async with legacy(tools) as (client, _):
        with pytest.raises(MCPError) as refused:
            await call_as_task(client, "list_workflows", {})
        with pytest.raises(MCPError) as unknown_tool:
            await call_as_task(client, "frobnicate", {})
        with pytest.raises(MCPError) as missing:
            await get_task(client, "no-such-task")
        with pytest.raises(MCPError) as bad_ttl:
            await call_as_task(client, "execute_workflow", {"workflow_name": "x"}, ttl=-5)
    assert (
        refused.value.error.code == types.METHOD_NOT_FOUND
        and "execute_workflow" in refused.value.error.message
    )
    assert unknown_tool.value.error.code == types.INVALID_PARAMS
    assert missing.value.error.code == types.INVALID_PARAMS and "not found" in missing.value.error.message
    assert bad_ttl.value.error.code == types.INVALID_PARAMS and "ttl" in bad_ttl.value.error.message


async def test_a_task_field_that_is_not_an_object_is_refused_naming_it_and_starts_nothing(
    tools: OrchestrationMCPTools,
) -> None:
    async with legacy(tools) as (client, _):
        await ok(client, "create_workflow", chain(1))
        dispatcher = client.session._dispatcher
        for task in ("x", [], 5, False):
            params = {"name": "execute_workflow", "arguments": {"workflow_name": "chain1"}, "task": task}
            with pytest.raises(MCPError) as refused, anyio.fail_after(30):
                await dispatcher.send_raw_request("tools/call", params, {})
            error = refused.value.error
            assert error.code == types.INVALID_PARAMS and "'task'" in error.message, (task, error)
            assert "object" in error.message and error.data == {"field": "task"}, (task, error)
        listed = await list_tasks(client)
        runs = await ok(client, "list_workflow_runs", {})
    assert listed.tasks == [] and runs["runs"] == []


async def test_without_a_token_a_task_id_answers_in_any_session_after_its_own_ended_and_after_a_restart(
    tmp_path: Path,
) -> None:
    # No token, no authorization context (the spec's tasks page): every client of the server is one
    # requestor, so a task is reached by its id from any session, and tasks/list shows the server's tasks.
    # An Authorization header that nothing checks changes nothing.
    tools = OrchestrationMCPTools(engine_factory=lambda policy: make_engine(tmp_path, policy, durable=True))
    stray = httpx2.AsyncClient(headers={"Authorization": "Bearer left-over-from-elsewhere"})
    try:
        async with serving(tools, "streamable-http", None) as base:
            async with Client(streamable_http_client(f"{base}/mcp"), mode="legacy") as creator:
                await ok(creator, "create_workflow", chain(2))
                task_id = (await call_as_task(creator, "execute_workflow", {"workflow_name": "chain2"}))[
                    "taskId"
                ]
            # The creating session has ended (the client closed it).
            async with (
                stray,
                Client(streamable_http_client(f"{base}/mcp"), mode="legacy") as other,
                Client(streamable_http_client(f"{base}/mcp", http_client=stray), mode="legacy") as headed,
            ):
                result = await task_result(other, task_id)
                assert (await get_task(headed, task_id)).status == "completed"
                listed = [[t.task_id for t in (await list_tasks(c)).tasks] for c in (other, headed)]
    finally:
        tools.close()
    assert (result.structured_content or {})["status"] == "completed"
    assert listed == [[task_id], [task_id]]
    restarted = OrchestrationMCPTools(
        engine_factory=lambda policy: make_engine(tmp_path, policy, durable=True)
    )
    try:
        async with serving(restarted, "streamable-http", None) as base:
            async with Client(streamable_http_client(f"{base}/mcp"), mode="legacy") as later:
                assert (await get_task(later, task_id)).status == "completed"
                again = await task_result(later, task_id)
    finally:
        restarted.close()
    assert again.structured_content == result.structured_content


async def test_with_a_token_a_task_belongs_to_the_verified_token_however_the_header_spells_it(
    tools: OrchestrationMCPTools,
) -> None:
    async with serving(tools, "streamable-http", TOKEN) as base:

        def client_with(header: str) -> tuple[httpx2.AsyncClient, Client]:
            http = httpx2.AsyncClient(headers={"Authorization": header})
            return http, Client(streamable_http_client(f"{base}/mcp", http_client=http), mode="legacy")

        first_http, first = client_with(f"Bearer {TOKEN}")
        async with first_http, first:
            await ok(first, "create_workflow", chain(2))
            task_id = (await call_as_task(first, "execute_workflow", {"workflow_name": "chain2"}))["taskId"]
        # Another session, the scheme in lower case and more spaces: the same token, so the same owner.
        second_http, second = client_with(f"bearer   {TOKEN}")
        async with second_http, second:
            assert (await task_result(second, task_id)).structured_content is not None
            assert [t.task_id for t in (await list_tasks(second)).tasks] == [task_id]
    # The token's tasks are not the local ones: a client without the token (over a pipe) gets "not found".
    async with legacy(tools) as (local, _):
        for request in (get_task, task_result, cancel_task):
            with pytest.raises(MCPError) as hidden:
                await request(local, task_id)
            assert "not found" in hidden.value.error.message
        assert (await list_tasks(local)).tasks == []


async def test_an_expired_task_is_removed_with_its_record(tools: OrchestrationMCPTools) -> None:
    async with legacy(tools) as (client, _):
        await ok(client, "create_workflow", chain(1))
        task = await call_as_task(client, "execute_workflow", {"workflow_name": "chain1"}, ttl=60_000)
        await task_result(client, task["taskId"])
        store = tools.engine.store.tool_tasks
        # Past its time to live: the next sweep deletes it (a record, not the run: run history stays).
        assert await anyio.to_thread.run_sync(store.delete_expired, time.time() + 61) == [task["taskId"]]
        with pytest.raises(MCPError):
            await get_task(client, task["taskId"])
        assert (await ok(client, "get_workflow_run", {"run_id": task["taskId"]}))["status"] == "completed"


def test_the_sdk_still_leaves_tasks_to_the_server_the_way_server_tasks_expects() -> None:
    """What ``server/_tasks.py`` relies on in mcp 2.3: if the SDK starts dispatching tasks itself, this
    fails, and the module should move onto what the SDK then offers."""
    from mcp.server.lowlevel import Server
    from mcp_types.methods import SPEC_CLIENT_METHODS, serialize_server_result
    from pydantic import ValidationError

    # tasks/* are not spec methods to the SDK: add_request_handler serves them, unchecked by its surfaces.
    assert not {m for m in SPEC_CLIENT_METHODS if m.startswith("tasks/")}
    # A tools/call handler's answer is sieved as a CallToolResult, which a CreateTaskResult is not: hence
    # a middleware (whose short-circuited answer the runner sends as it is) answers task-augmented calls.
    task = {"taskId": "t", "status": "working", "createdAt": "x", "lastUpdatedAt": "x", "ttl": None}
    with pytest.raises(ValidationError):
        serialize_server_result("tools/call", "2025-11-25", {"task": task})

    # The SDK derives no tasks capability from handlers: the server adds it.
    async def never_called(ctx: Any, params: types.GetTaskRequestParams) -> dict[str, Any]:
        raise AssertionError("not called")

    plain = Server("plain")
    plain.add_request_handler("tasks/get", types.GetTaskRequestParams, never_called)
    assert plain.get_capabilities().tasks is None


async def test_on_2026_07_28_a_client_of_the_tasks_extension_gets_a_task_it_polls_to_the_plain_result(
    tools: OrchestrationMCPTools,
) -> None:
    extension = TasksExtension()
    async with Client(build_server(tools), extensions=[extension]) as client:
        assert client.protocol_version == "2026-07-28"
        assert EXTENSION_ID in (client.server_capabilities.extensions or {})
        await ok(client, "create_workflow", chain(20))  # not long work: an ordinary answer
        result = await client.call_tool("execute_workflow", {"workflow_name": "chain20"})
        unknown = await client.call_tool("execute_workflow", {"workflow_name": "nowhere"})  # no task
        with pytest.raises(MCPError) as no_list:
            await list_tasks(client)
    async with Client(build_server(tools)) as plain_client:  # no extension: no task, as before
        plain = await ok(plain_client, "execute_workflow", {"workflow_name": "chain20"})
    (handle,) = extension.handles
    assert handle.status in ("working", "completed")  # 20 echoes may be done before it answers
    assert handle.ttl_ms is not None and handle.poll_interval_ms
    assert extension.polled[-1].status == "completed"
    assert extension.polled[-1].status_message == "20 of 20 steps completed"
    structured = result.structured_content or {}
    assert structured["run_id"] == handle.task_id
    assert without_ids(structured) == without_ids(plain)
    assert no_list.value.error.code == types.METHOD_NOT_FOUND
    assert unknown.is_error and "nowhere" in str(unknown.content)


async def test_on_2026_07_28_a_cancelled_task_reads_cancelled(tools: OrchestrationMCPTools) -> None:
    nap = {"name": "nap", "module": "core", "action": "sleep", "parameters": {"seconds": 60}}
    async with Client(build_server(tools), extensions=[TasksExtension()]) as client:
        await ok(client, "create_workflow", {"name": "naps", "steps": [nap]})
        answer = await client.session.call_tool(
            "execute_workflow", {"workflow_name": "naps"}, allow_claimed=True
        )
        assert isinstance(answer, TaskHandle)
        cancel = types.CancelTaskRequest(params=types.CancelTaskRequestParams(task_id=answer.task_id))
        with anyio.fail_after(30):
            acknowledged = await client.session.send_request(cancel, types.EmptyResult)
        detail = await get_detailed(client.session, answer.task_id)
        run = await ok(client, "get_workflow_run", {"run_id": answer.task_id})
    assert acknowledged.model_dump(exclude_none=True, exclude={"meta"}) == {"result_type": "complete"}
    assert detail.status == "cancelled" and detail.result is None
    assert run["status"] == "cancelled"


async def test_a_task_whose_run_waits_for_a_person_is_input_required_until_respond_to_run_answers(
    tools: OrchestrationMCPTools,
) -> None:
    from tests.server.test_approvals import GATED

    async with legacy(tools) as (client, statuses):  # a client without elicitation: nobody is asked
        await ok(client, "create_workflow", GATED)
        task = await call_as_task(client, "execute_workflow", {"workflow_name": "gated"})
        task_id = task["taskId"]
        waiting = await statuses.expect(task_id, "input_required")
        polled = await get_task(client, task_id)
        answer = {"run_id": task_id, "step": "approve", "action": "accept", "content": {"reason": "fine"}}
        await ok(client, "respond_to_run", answer)
        ended = await statuses.expect(task_id, "completed")
        result = await task_result(client, task_id)
    assert waiting.status == "input_required" and polled.status == "input_required"
    assert ended.status == "completed"
    assert (result.structured_content or {})["steps"]["act"]["output"] == "fine"


async def test_the_status_message_counts_the_steps_by_how_they_ended(tools: OrchestrationMCPTools) -> None:
    started = register_held_once(tools.engine.registry)
    async with legacy(tools) as (client, statuses):
        await ok(client, "create_workflow", HELD)
        task_id = (await call_as_task(client, "execute_workflow", {"workflow_name": "held"}))["taskId"]
        assert await anyio.to_thread.run_sync(started.wait, 30), "the held step never started"
        working = await get_task(client, task_id)
        await ok(client, "cancel_workflow_run", {"run_id": task_id})
        ended = await statuses.expect(task_id, "cancelled")
        got = await get_task(client, task_id)
    assert working.status == "working" and working.status_message == "1 of 2 steps completed"
    assert ended.status_message == got.status_message == "1 of 2 steps completed, 1 cancelled"


async def test_a_cancelled_task_stays_as_it_ended_when_its_run_is_resumed_and_says_so(
    tools: OrchestrationMCPTools,
) -> None:
    started = register_held_once(tools.engine.registry)
    async with legacy(tools) as (client, _):
        await ok(client, "create_workflow", HELD)
        task_id = (await call_as_task(client, "execute_workflow", {"workflow_name": "held"}))["taskId"]
        assert await anyio.to_thread.run_sync(started.wait, 30), "the held step never started"
        cancelled = await cancel_task(client, task_id)
        ended = await get_task(client, task_id)
        before = await task_result(client, task_id)
        resumed = await ok(client, "resume_workflow_run", {"run_id": task_id})  # waits for its end
        after = await get_task(client, task_id)
        result = await task_result(client, task_id)
        run = await ok(client, "get_workflow_run", {"run_id": task_id})
    assert cancelled.status == "cancelled" and (before.structured_content or {})["status"] == "cancelled"
    assert ended.status_message == "cancelled by tasks/cancel"  # nothing to add while the run is as it was
    assert resumed["status"] == run["status"] == "completed"
    # The task ended cancelled, and stays so (a terminal status never changes), with what it ended with;
    # its message says where the run went since.
    assert after.status == "cancelled"
    assert result.structured_content == before.structured_content
    assert after.status_message is not None
    assert "resumed after this task ended" in after.status_message
    assert "completed" in after.status_message and "get_workflow_run" in after.status_message


async def test_a_failed_run_resumed_as_a_task_is_a_new_task_and_the_failed_one_stays_failed(
    tools: OrchestrationMCPTools,
) -> None:
    register_fails_once(tools.engine.registry)
    async with legacy(tools) as (client, statuses):
        await ok(client, "create_workflow", FLAKY)
        task_id = (await call_as_task(client, "execute_workflow", {"workflow_name": "flaky"}))["taskId"]
        await statuses.expect(task_id, "failed")
        failed = await task_result(client, task_id)
        resumed = await call_as_task(client, "resume_workflow_run", {"run_id": task_id})
        await statuses.expect(resumed["taskId"], "completed")
        completed = await task_result(client, resumed["taskId"])
        old = await get_task(client, task_id)
        old_result = await task_result(client, task_id)
        run = await ok(client, "get_workflow_run", {"run_id": task_id})
        listed = [t.task_id for t in (await list_tasks(client)).tasks]
    assert resumed["taskId"] != task_id and listed == [task_id, resumed["taskId"]]
    assert (completed.structured_content or {})["run_id"] == task_id
    assert (completed.structured_content or {})["status"] == run["status"] == "completed"
    assert old.status == "failed" and old_result.structured_content == failed.structured_content
    assert (failed.structured_content or {})["status"] == "failed"
    assert old.status_message is not None and "resumed after this task ended" in old.status_message


#: One step waiting for a person (nobody is asked: the legacy client has no elicitation).
GATE = {
    "name": "gate",
    "steps": [{"name": "approve", "module": "core", "action": "approve", "parameters": {"message": "go?"}}],
}
NAP = {
    "name": "nap",
    "steps": [{"name": "nap", "module": "core", "action": "sleep", "parameters": {"seconds": 60}}],
}


async def test_waits_hold_no_thread_so_each_returns_by_its_deadline_however_many_are_waiting(
    tools: OrchestrationMCPTools,
) -> None:
    # More tasks/result waits than the 64 threads waits once shared: a wait queued for a thread
    # started its own timeout only once it had one (here, after a 10 s slice of tasks/result).
    blocked, timeout = 70, 1.0
    async with legacy(tools) as (client, _):
        await ok(client, "create_workflow", GATE)
        await ok(client, "create_workflow", NAP)
        gates = [
            (await call_as_task(client, "execute_workflow", {"workflow_name": "gate"}))["taskId"]
            for _ in range(blocked)
        ]
        results: dict[str, types.CallToolResult] = {}
        returned: list[tuple[float, dict[str, Any]]] = []

        async def collect(task_id: str) -> None:
            results[task_id] = await task_result(client, task_id, wait=60)

        args = {"workflow_name": "nap", "timeout_seconds": timeout}

        async def nap() -> None:
            start = time.monotonic()
            handle = await ok(client, "execute_workflow", args)
            returned.append((time.monotonic() - start, handle))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for task_id in gates:
                    tg.start_soon(collect, task_id)
                await anyio.wait_all_tasks_blocked()
                async with anyio.create_task_group() as naps:
                    for _ in range(4):
                        naps.start_soon(nap)
                # Seventy results are awaited, and not one of them holds a thread to do so.
                assert tools._call_limiter.borrowed_tokens == 0
                for run_id in [handle["run_id"] for _, handle in returned] + gates:
                    await ok(client, "cancel_workflow_run", {"run_id": run_id})
    # Each returned by its deadline (a generous margin: this is no timing benchmark), still running.
    assert [status for _, handle in returned for status in [handle["status"]]] == ["running"] * 4
    assert max(took for took, _ in returned) < timeout + 4, returned
    # Every tasks/result answered when its run ended.
    assert sorted(results) == sorted(gates)
    assert {(r.structured_content or {})["status"] for r in results.values()} == {"cancelled"}


async def test_on_2026_07_28_a_task_waiting_for_a_person_says_which_step_asks_what_and_how_to_answer(
    tools: OrchestrationMCPTools,
) -> None:
    # It polled as "working" with "1 of 2 steps completed" until the approval's deadline: nothing said
    # a person was awaited, while get_workflow_run said waiting_for_input.
    question = "Deploy to production? " + "Details follow. " * 20
    ask = {
        "name": "asks",
        "steps": [
            {"name": "plan", "module": "core", "action": "set", "parameters": {"files": 3}},
            {"name": "approve", "module": "core", "action": "approve", "parameters": {"message": question}},
        ],
    }
    waiting = threading.Event()
    manager = tools.engine.workflow_manager
    manager.add_listener(lambda event, payload: waiting.set() if event == "run.waiting_for_input" else None)
    async with Client(build_server(tools), extensions=[TasksExtension()]) as client:
        await ok(client, "create_workflow", ask)
        answer = await client.session.call_tool(
            "execute_workflow", {"workflow_name": "asks"}, allow_claimed=True
        )
        assert isinstance(answer, TaskHandle)
        assert await anyio.to_thread.run_sync(waiting.wait, 30)
        detail = await get_detailed(client.session, answer.task_id)
        await ok(client, "respond_to_run", {"run_id": answer.task_id, "step": "approve", "action": "accept"})
    assert detail.status == "working"
    message = detail.status_message or ""
    assert message.startswith("step 'approve' waits for a person: 'Deploy to production? Details follow."), (
        message
    )
    assert "…'" in message and question not in message  # the question cut short
    assert f"answer with respond_to_run (run_id {answer.task_id!r}" in message
    assert len(message) < 300
