"""Queued work through the real server: a cap on what may wait, and clients served in turn (issue 18.5).

The attack: one client queued 10,000 ``execute_task`` calls with ``wait: false``; all were accepted, and
a task from another client waited behind every one of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp_types import Implementation

from codomyrmex_orchestration.core.engine import OrchestrationEngine
from codomyrmex_orchestration.server.app import build_server
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools

pytestmark = pytest.mark.anyio

BACKLOG = 40


def one_worker_engine(root: Path, max_queued: int, per_client: int | None = None) -> OrchestrationEngine:
    return OrchestrationEngine(
        state_dir=root / "state",
        config_dir=None,
        projects_dir=root / "projects",
        templates_dir=root / "templates",
        max_workers=1,
        max_queued_tasks=max_queued,
        **({} if per_client is None else {"max_queued_per_client": per_client}),
        durable=False,
    )


@pytest.fixture
def make_tools(tmp_path: Path) -> Iterator[Any]:
    made: list[OrchestrationMCPTools] = []

    def make(max_queued: int, per_client: int | None = None) -> OrchestrationMCPTools:
        tools = OrchestrationMCPTools(
            engine_factory=lambda policy: one_worker_engine(tmp_path, max_queued, per_client)
        )
        made.append(tools)
        return tools

    yield make
    for tools in made:
        tools.close()


def gate_task(gate: Path) -> dict[str, Any]:
    command = f"while [ ! -e {gate} ]; do sleep 0.02; done"
    return {
        "name": "gate",
        "module": "shell",
        "action": "run",
        "parameters": {"command": command, "shell": True},
        "wait": False,
    }


def echo(name: str) -> dict[str, Any]:
    return {"name": name, "module": "core", "action": "echo", "parameters": {"message": name}, "wait": False}


async def test_another_clients_task_is_not_starved_by_one_clients_backlog(
    make_tools: Any, tmp_path: Path
) -> None:
    server = build_server(make_tools(max_queued=1000))
    gate = tmp_path / "gate"
    # Two clients by name: on protocol 2026-07-28 (what Client speaks in process) requests carry no
    # session, and the server tells clients apart by the name in each request's envelope.
    greedy_client = Client(server, client_info=Implementation(name="greedy", version="1"))
    polite_client = Client(server, client_info=Implementation(name="polite", version="1"))
    async with greedy_client as greedy, polite_client as polite:
        blocked = await greedy.call_tool("execute_task", gate_task(gate))
        assert not blocked.is_error, blocked.content
        backlog = []
        for i in range(BACKLOG):
            queued = await greedy.call_tool("execute_task", echo(f"greedy-{i}"))
            backlog.append(queued.structured_content["task_id"])
        mine = (await polite.call_tool("execute_task", echo("polite"))).structured_content["task_id"]
        gate.touch()  # the one worker is free: the queue drains in the order the scheduler picks
        done = await polite.call_tool("get_task", {"task_id": backlog[-1], "wait_seconds": 30})
        assert done.structured_content["status"] == "completed"
        started = {}
        for task_id in [*backlog, mine]:
            record = (await polite.call_tool("get_task", {"task_id": task_id})).structured_content
            started[task_id] = record["started_at"]
    order = sorted(started, key=lambda t: started[t])
    # clients take turns: the polite client's one task starts second, not after the whole backlog
    assert order.index(mine) <= 1, f"the other client's task started at position {order.index(mine)}"


async def test_past_the_queue_cap_new_tasks_are_refused_naming_the_setting(
    make_tools: Any, tmp_path: Path
) -> None:
    server = build_server(make_tools(max_queued=5, per_client=5))  # the cap itself, not a share of it
    gate = tmp_path / "gate"
    async with Client(server) as client:
        assert not (await client.call_tool("execute_task", gate_task(gate))).is_error
        accepted = [await client.call_tool("execute_task", echo(f"t{i}")) for i in range(5)]
        assert not any(result.is_error for result in accepted)
        refused = await client.call_tool("execute_task", echo("one-too-many"))
        assert refused.is_error
        text = refused.content[0].text
        assert "CODOMYRMEX_MAX_QUEUED_TASKS" in text and "5" in text
        gate.touch()
        last = accepted[-1].structured_content["task_id"]
        done = await client.call_tool("get_task", {"task_id": last, "wait_seconds": 30})
        assert done.structured_content["status"] == "completed"
        again = await client.call_tool("execute_task", echo("after-the-backlog"))
        assert not again.is_error  # the cap counts waiting work, not work ever accepted


async def test_another_clients_backlog_never_fails_a_run_accepted_before_it_and_new_runs_are_refused(
    make_tools: Any, tmp_path: Path
) -> None:
    tools = make_tools(max_queued=5, per_client=5)
    server = build_server(tools)
    gate = tmp_path / "gate"
    first = {key: value for key, value in gate_task(gate).items() if key != "wait"}
    then = [
        {
            "name": f"then{i}",
            "module": "core",
            "action": "echo",
            "parameters": {"message": i},
            "dependencies": ["gate"],
        }
        for i in range(8)
    ]
    a_client = Client(server, client_info=Implementation(name="a", version="1"))
    b_client = Client(server, client_info=Implementation(name="b", version="1"))
    async with a_client as a, b_client as b:
        created = await a.call_tool("create_workflow", {"name": "mine", "steps": [first, *then]})
        assert not created.is_error, created.content
        started = await a.call_tool("execute_workflow", {"workflow_name": "mine", "wait": False})
        assert not started.is_error, started.content
        run_id = started.structured_content["run_id"]
        queued = [await b.call_tool("execute_task", echo(f"b{i}")) for i in range(5)]  # the gate runs
        assert not any(result.is_error for result in queued)
        refused = await b.call_tool("execute_task", echo("one-too-many"))
        assert refused.is_error and "CODOMYRMEX_MAX_QUEUED_TASKS" in refused.content[0].text
        refused_run = await b.call_tool("execute_workflow", {"workflow_name": "mine", "wait": False})
        assert refused_run.is_error and "CODOMYRMEX_MAX_QUEUED_TASKS" in refused_run.content[0].text
        gate.touch()  # the run's first step ends: its eight next steps join the full queue
        record = await anyio.to_thread.run_sync(tools.engine.workflow_manager.wait_run, run_id, 30)
    assert record.status.value == "completed", {name: r.error for name, r in record.steps.items()}


ONLY = {"name": "only", "module": "core", "action": "echo", "parameters": {"message": "only"}}


async def test_one_client_filling_its_share_leaves_room_for_another_clients_task_and_run(
    make_tools: Any, tmp_path: Path
) -> None:
    # cap 8: a client's share is 6. Before shares, client a queued 8 and b's task and run were refused.
    tools = make_tools(max_queued=8)
    server = build_server(tools)
    gate = tmp_path / "gate"
    a_client = Client(server, client_info=Implementation(name="a", version="1"))
    b_client = Client(server, client_info=Implementation(name="b", version="1"))
    async with a_client as a, b_client as b:
        created = await b.call_tool("create_workflow", {"name": "one", "steps": [ONLY]})
        assert not created.is_error, created.content
        assert not (await a.call_tool("execute_task", gate_task(gate))).is_error  # holds the one worker
        queued = [await a.call_tool("execute_task", echo(f"a{i}")) for i in range(6)]
        assert not any(result.is_error for result in queued), [r.content for r in queued]
        refused = await a.call_tool("execute_task", echo("a6"))
        assert refused.is_error
        text = refused.content[0].text
        assert "'client-a/1' has 6 tasks waiting" in text and "share of the queue is 6" in text
        assert "CODOMYRMEX_MAX_QUEUED_PER_CLIENT" in text and "wait for its queued tasks" in text
        refused_run = await a.call_tool("execute_workflow", {"workflow_name": "one", "wait": False})
        assert refused_run.is_error and "max_queued_per_client" in refused_run.content[0].text
        mine = await b.call_tool("execute_task", echo("b0"))
        assert not mine.is_error, mine.content  # b's task is accepted while a holds its share
        run = await b.call_tool("execute_workflow", {"workflow_name": "one", "wait": False})
        assert not run.is_error, run.content  # and so is b's run
        gate.touch()
        done = await b.call_tool(
            "get_task", {"task_id": mine.structured_content["task_id"], "wait_seconds": 30}
        )
        assert done.structured_content["status"] == "completed"
        run_id = run.structured_content["run_id"]
        record = await anyio.to_thread.run_sync(tools.engine.workflow_manager.wait_run, run_id, 30)
    assert record.status.value == "completed"


async def test_execute_task_refuses_parameters_over_the_byte_limit_naming_the_setting(tmp_path: Path) -> None:
    def engine(policy: Any) -> OrchestrationEngine:
        return OrchestrationEngine(
            state_dir=tmp_path / "state",
            config_dir=None,
            projects_dir=tmp_path / "projects",
            templates_dir=tmp_path / "templates",
            max_workers=1,
            max_parameters_bytes=1024,
            durable=False,
        )

    tools = OrchestrationMCPTools(engine_factory=engine)
    try:
        async with Client(build_server(tools)) as client:
            big = {**echo("big"), "parameters": {"message": "z" * 2000}}
            refused = await client.call_tool("execute_task", big)
            assert refused.is_error
            text = refused.content[0].text
            assert "CODOMYRMEX_MAX_PARAMETERS_BYTES" in text and "1024" in text and "parameters" in text
            fits = await client.call_tool("execute_task", {**echo("fits"), "wait": True})
            assert not fits.is_error and fits.structured_content["status"] == "completed"
    finally:
        tools.close()
