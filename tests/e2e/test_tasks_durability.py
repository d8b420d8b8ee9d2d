"""A workflow run as an MCP task survives kill -9: the real server over streamable HTTP (the task belongs
to the bearer token, which a client reconnecting after the restart presents again), killed while a step
of the run is in flight, restarted on the same state directory, resumed. The original task id answers
throughout (failed once the run is interrupted, and failed it stays), the resume is a task of its own
following the same run, and the steps completed before the crash do not run again."""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.helpers.durable_steps import executions
from tests.helpers.mcp_calls import ok
from tests.helpers.mcp_tasks import call_as_task, get_task, task_result
from tests.helpers.served import served

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "tasks-survive-kill-9-token"
BEFORE, AFTER = 5, 4  # steps before the gate, steps after it


def workflow(marks: Path, fifo: Path) -> dict[str, Any]:
    def call(name: str, function: str, args: list[Any], after: str | None) -> dict[str, Any]:
        step = {"name": name, "module": "python", "action": "call"}
        step["parameters"] = {"function": f"tests.helpers.durable_steps:{function}", "args": args}
        return {**step, **({"dependencies": [after]} if after else {})}

    steps, previous = [], None
    for i in range(BEFORE + 1 + AFTER):
        name = "gate" if i == BEFORE else f"s{i}"
        args = [str(marks), str(fifo)] if name == "gate" else [str(marks), name, i]
        steps.append(call(name, "gate" if name == "gate" else "record", args, previous))
        previous = name
    return {"name": "crashable", "steps": steps}


@asynccontextmanager
async def client_of(url: str) -> AsyncIterator[Client]:
    authed = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"})
    async with authed, Client(streamable_http_client(url, http_client=authed), mode="legacy") as client:
        yield client


async def test_a_task_answers_after_kill_9_and_a_restart_and_resuming_it_reruns_no_completed_step(
    tmp_path: Path,
) -> None:
    marks, fifo = tmp_path / "marks", tmp_path / "gate.fifo"
    marks.mkdir()
    os.mkfifo(fifo)
    env = {
        "CODOMYRMEX_AUTH_TOKEN": TOKEN,
        "CODOMYRMEX_PYTHON_CALL_ALLOW": "tests.helpers.durable_steps",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),  # this checkout's code
    }
    args = ["--allow-shell"]  # python.call over HTTP (loopback only here)
    writer: list[Any] = []
    gate_open = threading.Event()

    def hold_the_gate() -> None:
        # Opening the FIFO for writing returns once the gate step opens it for reading: the step is in
        # flight, and it blocks until this end writes or closes, which it never does before the kill.
        writer.append(open(fifo, "wb"))  # closed after the kill, below
        gate_open.set()

    holder = threading.Thread(target=hold_the_gate, daemon=True)
    holder.start()
    with served(tmp_path / "server", args, env) as server:
        async with client_of(server.url) as client:
            await ok(client, "create_workflow", workflow(marks, fifo))
            task = await call_as_task(client, "execute_workflow", {"workflow_name": "crashable"})
            assert await anyio.to_thread.run_sync(gate_open.wait, 60), "the gate step never started"
            before = await get_task(client, task["taskId"])
            server.proc.kill()  # kill -9, with the gate step in flight
            server.proc.wait()
    writer[0].close()
    fifo.unlink()  # the gate passes from now on
    ran_before = executions(str(marks))

    with served(tmp_path / "server", args, env) as server:
        async with client_of(server.url) as client:
            interrupted = await get_task(client, task["taskId"])
            resumed = await call_as_task(client, "resume_workflow_run", {"run_id": task["taskId"]})
            result = await task_result(client, resumed["taskId"], wait=60)
            ended = await get_task(client, resumed["taskId"])
            original = await get_task(client, task["taskId"])
    ran = executions(str(marks))

    total = BEFORE + 1 + AFTER
    assert before.status == "working" and before.status_message == f"{BEFORE} of {total} steps completed"
    assert interrupted.status == "failed"
    assert interrupted.status_message is not None and "resume_workflow_run" in interrupted.status_message
    # A task of its own for the same run; the four steps left may already be done when the call answers.
    assert resumed["taskId"] != task["taskId"] and resumed["status"] in ("working", "completed")
    assert ended.status == "completed" and (result.structured_content or {})["status"] == "completed"
    assert (result.structured_content or {})["run_id"] == task["taskId"]
    # The task that was interrupted ended failed and stays so (a terminal status never changes), saying
    # where its run went.
    assert original.status == "failed" and original.created_at == before.created_at
    assert original.status_message is not None and "resumed after this task ended" in original.status_message
    assert {f"s{i}" for i in range(BEFORE)} <= set(ran_before)
    assert {step: n for step, n in ran.items() if step != "gate" and n != 1} == {}, ran
    assert len(ran) == BEFORE + 1 + AFTER
