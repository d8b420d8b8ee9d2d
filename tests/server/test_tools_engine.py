"""Tools that need the whole engine (sessions, resources, health, status) and the console script's
default engine; written against docs/ARCHITECTURE.md."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from codomyrmex_orchestration.core.engine import OrchestrationEngine
from codomyrmex_orchestration.core.store import MemoryStore
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools

pytest.importorskip(
    "codomyrmex_orchestration.core.engine",
    reason="core/engine.py (issue 3) has not landed on this branch yet",
)

pytestmark = pytest.mark.anyio


async def _call(client: Client, name: str, args: dict[str, Any]) -> Any:
    with anyio.fail_after(30):
        return await client.call_tool(name, args)


async def test_health_and_status_describe_the_engine(client: Client) -> None:
    health = await _call(client, "get_health_status", {})
    assert not health.is_error
    assert health.structured_content["overall_status"] in ("healthy", "degraded", "unhealthy")
    assert health.structured_content["uptime_seconds"] >= 0
    status = await _call(client, "get_system_status", {})
    assert not status.is_error and status.structured_content


async def test_resources_are_allocated_released_and_refused_with_figures(client: Client) -> None:
    granted = await _call(client, "allocate_resources", {"user_id": "agent", "requirements": {"compute": 1}})
    assert not granted.is_error, granted.content[0].text
    allocations = granted.structured_content["allocations"]
    assert allocations
    allocation_id = next(v for k, v in allocations[0].items() if k in ("allocation_id", "id"))
    released = await _call(client, "release_resources", {"allocation_id": allocation_id})
    assert not released.is_error and released.structured_content["released"] == 1
    refused = await _call(
        client, "allocate_resources", {"user_id": "agent", "requirements": {"compute": 10**9}}
    )
    assert refused.is_error
    assert "requested" in refused.content[0].text and "available" in refused.content[0].text
    held = await _call(client, "allocate_resources", {"user_id": "h", "requirements": {"database": 10}})
    assert not held.is_error, held.content[0].text
    busy = await _call(client, "allocate_resources", {"user_id": "x", "requirements": {"database": 1}})
    # What the caller can do through the tools: the tool takes no timeout to wait with.
    assert busy.is_error and "retry later, or free some: release_resources" in busy.content[0].text
    assert "timeout" not in busy.content[0].text
    both = await _call(client, "release_resources", {"allocation_id": "a", "user_id": "b"})
    assert both.is_error and "exactly one" in both.content[0].text


async def test_sessions_group_runs_and_close(client: Client) -> None:
    opened = await _call(client, "create_session", {"user_id": "agent", "name": "nightly"})
    assert not opened.is_error, opened.content[0].text
    session_id = opened.structured_content["session_id"]
    workflow = {
        "name": "w",
        "steps": [{"name": "a", "module": "core", "action": "echo", "parameters": {"message": 1}}],
    }
    assert not (await _call(client, "create_workflow", workflow)).is_error
    run = await _call(client, "execute_workflow", {"workflow_name": "w", "session_id": session_id})
    assert run.structured_content["session_id"] == session_id
    closed = await _call(client, "close_session", {"session_id": session_id})
    assert not closed.is_error and closed.structured_content["closed"] is True
    unknown = await _call(client, "close_session", {"session_id": "nope"})
    assert unknown.is_error and "not found" in unknown.content[0].text


async def test_a_session_timeout_past_365_days_is_refused_naming_the_field(client: Client) -> None:
    refused = await _call(client, "create_session", {"timeout_seconds": 1e308})
    assert refused.is_error and "timeout_seconds" in refused.content[0].text
    accepted = await _call(client, "create_session", {"timeout_seconds": 365 * 24 * 3600})
    assert not accepted.is_error, accepted.content[0].text


async def test_the_console_script_runs_a_workflow_over_stdio_with_its_own_engine(tmp_path: Path) -> None:
    import os
    import sys

    script = Path(sys.executable).parent / "codomyrmex-orchestration"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODOMYRMEX_")}
    env.update(CODOMYRMEX_STATE_DIR=str(tmp_path / "state"), CODOMYRMEX_CONFIG_DIR=str(tmp_path / "config"))
    params = StdioServerParameters(command=str(script), args=["serve"], cwd=tmp_path, env=env)
    workflow = {
        "name": "w",
        "steps": [{"name": "a", "module": "core", "action": "echo", "parameters": {"message": 7}}],
    }
    with anyio.fail_after(60):
        async with Client(params) as client:
            created = await client.call_tool("create_workflow", workflow)
            run = await client.call_tool("execute_workflow", {"workflow_name": "w"})
    assert not created.is_error, created.content[0].text
    assert run.structured_content["status"] == "completed"
    assert run.structured_content["steps"]["a"]["output"] == 7


def test_a_task_returned_while_running_is_followed_with_get_task(tmp_path: Path) -> None:
    engine = OrchestrationEngine(
        state_dir=tmp_path / "s", config_dir=None, projects_dir=tmp_path / "p", templates_dir=None
    )
    tools = OrchestrationMCPTools(engine)
    try:
        started = tools.execute_tool(
            "execute_task",
            {
                "name": "nap",
                "module": "core",
                "action": "sleep",
                "parameters": {"seconds": 0.3},
                "wait": False,
            },
        )
        assert not started.is_error, started.text
        task_id = started.structured["task_id"]
        assert started.structured["status"] in {"pending", "ready", "running"}
        assert "get_task" in started.structured.get("note", "")
        final = tools.execute_tool("get_task", {"task_id": task_id, "wait_seconds": 10})
        assert not final.is_error, final.text
        assert final.structured["status"] == "completed"
        assert final.structured["result"] == {"slept": 0.3}
        missing = tools.execute_tool("get_task", {"task_id": "nope"})
        assert missing.is_error and "nope" in missing.text
    finally:
        tools.close()
        engine.shutdown()


def test_the_server_cancels_the_newest_tasks_it_started_up_to_its_cap_when_it_closes(tmp_path: Path) -> None:
    class FewTracked(OrchestrationMCPTools):
        _MAX_TRACKED_TASKS = 2  # the newest ids only: each start drops the oldest beyond the cap

    engine = OrchestrationEngine(
        state_dir=tmp_path / "s", config_dir=None, projects_dir=tmp_path / "p", templates_dir=None
    )
    tools = FewTracked(engine)
    nap = {"module": "core", "action": "sleep", "parameters": {"seconds": 30}, "wait": False}
    try:
        ids = []
        for name in ("first", "second", "third"):
            started = tools.execute_tool("execute_task", {"name": name, **nap})
            assert not started.is_error, started.text
            ids.append(started.structured["task_id"])
        assert tools.cancel_running_tasks() == 2
        assert tools.cancel_running_tasks() == 0  # forgotten once cancelled
        orchestrator = engine.task_orchestrator
        assert [orchestrator.wait(i, 10).status.value for i in ids[1:]] == ["cancelled", "cancelled"]
        assert orchestrator.get_task(ids[0]).status.value in {"pending", "ready", "running"}
        orchestrator.cancel_task(ids[0], "test over")
    finally:
        tools.close()
        engine.shutdown()


class _SlowRunStore(MemoryStore):
    """A store whose first save of a session's run blocks until ``release`` is set: a run start stuck in
    I/O while it holds the session's lock."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked = threading.Event()
        self.release = threading.Event()

    def save_run(self, record: Any) -> None:
        if record.session_id is not None and not self.release.is_set():
            self.blocked.set()
            self.release.wait(30)
        super().save_run(record)


async def test_the_on_loop_tools_never_wait_for_a_session_whose_run_is_stuck_starting(
    tmp_path: Path,
) -> None:
    store = _SlowRunStore()
    engine = OrchestrationEngine(
        state_dir=tmp_path / "s",
        config_dir=None,
        projects_dir=tmp_path / "p",
        templates_dir=None,
        store=store,
    )
    engine.workflow_manager.create_workflow("w", [{"name": "a", "module": "core", "action": "set"}])
    tools = OrchestrationMCPTools(engine)
    session_id = engine.create_session()
    starter = threading.Thread(target=lambda: engine.execute_workflow("w", session_id=session_id, wait=False))
    try:
        starter.start()
        assert store.blocked.wait(10)  # the session's lock is held across the store write now
        with anyio.fail_after(10):  # the loop itself must stay free: these run on it
            listed = await tools.execute_tool_async("list_workflows", {})
            task = await tools.execute_tool_async(
                "execute_task",
                {"name": "t", "module": "core", "action": "echo", "parameters": {"message": 1}},
            )
            followed = await tools.execute_tool_async("get_task", {"task_id": task.structured["task_id"]})
        assert listed.structured["count"] == 1
        assert task.structured["status"] == "completed" and followed.structured["result"] == 1
    finally:
        store.release.set()
        starter.join(10)
        tools.close()
        engine.shutdown()


async def test_a_resumed_run_counts_against_its_session_and_closes_with_it(client: Client) -> None:
    nap = {"name": "s", "module": "core", "action": "sleep", "parameters": {"seconds": 30}}
    assert not (await _call(client, "create_workflow", {"name": "nap", "steps": [nap]})).is_error
    opened = await _call(client, "create_session", {"max_parallel_workflows": 1})
    session_id = opened.structured_content["session_id"]
    started = await _call(
        client, "execute_workflow", {"workflow_name": "nap", "session_id": session_id, "wait": False}
    )
    run_id = started.structured_content["run_id"]
    assert not (await _call(client, "cancel_workflow_run", {"run_id": run_id})).is_error
    resumed = await _call(client, "resume_workflow_run", {"run_id": run_id, "wait": False})
    assert not resumed.is_error, resumed.content[0].text
    assert resumed.structured_content["session_id"] == session_id
    refused = await _call(
        client, "execute_workflow", {"workflow_name": "nap", "session_id": session_id, "wait": False}
    )
    assert refused.is_error and "session_id" in refused.content[0].text
    closed = await _call(client, "close_session", {"session_id": session_id, "cancel_running": True})
    assert not closed.is_error, closed.content[0].text
    assert closed.structured_content["cancelled_runs"] == [run_id]
    final = await _call(client, "get_workflow_run", {"run_id": run_id})
    assert final.structured_content["status"] == "cancelled"


async def test_sessions_a_restart_closed_still_answer_with_their_record(tmp_path: Path) -> None:
    from codomyrmex_orchestration.server.app import build_server

    def engine() -> OrchestrationEngine:
        return OrchestrationEngine(
            state_dir=tmp_path / "s", config_dir=None, projects_dir=tmp_path / "p", templates_dir=None
        )

    first = engine()
    tools = OrchestrationMCPTools(first)
    try:
        async with Client(build_server(tools)) as client:
            left_open = (await _call(client, "create_session", {"user_id": "x"})).structured_content[
                "session_id"
            ]
            closed = (await _call(client, "create_session", {"user_id": "y"})).structured_content[
                "session_id"
            ]
            assert not (await _call(client, "close_session", {"session_id": closed})).is_error
    finally:
        tools.close()
        first.shutdown()
    second = engine()
    tools = OrchestrationMCPTools(second)
    try:
        async with Client(build_server(tools)) as client:
            status = await _call(client, "get_system_status", {})
            assert status.structured_content["sessions"] == {"active": 0, "by_status": {"closed": 2}}
            answer = await _call(client, "close_session", {"session_id": left_open})
            assert not answer.is_error, answer.content[0].text
            assert answer.structured_content["status"] == "closed"
            assert "restart" in answer.structured_content["note"]
            assert "restart" in answer.structured_content["closed_reason"]
            again = await _call(client, "close_session", {"session_id": closed})
            assert not again.is_error and again.structured_content["status"] == "closed"
            refused = await _call(
                client, "execute_workflow", {"workflow_name": "nope", "session_id": closed, "wait": False}
            )
            assert refused.is_error and "is closed" in refused.content[0].text
    finally:
        tools.close()
        second.shutdown()


def _triple(params: dict[str, Any], ctx: Any) -> int:
    return int(params["n"]) * 3


async def test_an_action_registered_on_the_engine_runs_in_a_workflow_over_the_client(
    tools: OrchestrationMCPTools, client: Client
) -> None:
    """ARCHITECTURE.md's 'an action of your own without packaging it': registered on the running engine,
    listed, validated by its declared parameters and run as a step, all through the public MCP client."""
    from codomyrmex_orchestration.core.actions import ActionDefinition

    tools.engine.registry.register(
        ActionDefinition("mine", "triple", _triple, description="n * 3", parameters={"n": "a number"})
    )
    listed = await _call(client, "list_actions", {})
    assert "mine.triple" in [a["name"] for a in listed.structured_content["actions"]]
    steps = [
        {"name": "a", "module": "mine", "action": "triple", "parameters": {"n": 2}},
        {"name": "b", "module": "mine", "action": "triple", "parameters": {"n": "{{steps.a.output}}"}},
    ]
    misspelt = await _call(
        client, "create_workflow", {"name": "x3", "steps": [{**steps[0], "parameters": {"m": 2}}]}
    )
    assert (
        misspelt.is_error
        and "does not accept parameter 'm'; accepted parameters: n" in misspelt.content[0].text
    )
    created = await _call(client, "create_workflow", {"name": "x3", "steps": steps})
    assert not created.is_error, created.content[0].text
    run = await _call(client, "execute_workflow", {"workflow_name": "x3"})
    assert not run.is_error, run.content[0].text
    assert run.structured_content["steps"]["b"]["output"] == 18
