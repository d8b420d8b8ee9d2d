"""Every workflow, task, project and action tool through the real MCP Client, over the real core."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from codomyrmex_orchestration.core.models import TaskRecord, TaskStatus, WorkflowSpec
from codomyrmex_orchestration.server.app import build_server
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools
from tests.server.conftest import make_engine

pytestmark = pytest.mark.anyio

HELLO = {
    "name": "hello",
    "description": "greets",
    "parameters": {"who": "world"},
    "steps": [
        {"name": "greet", "module": "core", "action": "echo", "parameters": {"message": "hi {{params.who}}"}},
        {
            "name": "shape",
            "module": "core",
            "action": "set",
            "parameters": {"text": "{{steps.greet.output}}"},
        },
    ],
}
SLOW = {
    "name": "slow",
    "steps": [
        {"name": "quick", "module": "core", "action": "echo", "parameters": {"message": 1}},
        {
            "name": "nap",
            "module": "core",
            "action": "sleep",
            "parameters": {"seconds": 60},
            "dependencies": ["quick"],
        },
    ],
}


def _text(result: Any) -> str:
    return str(result.content[0].text)


async def _ok(client: Client, name: str, args: dict[str, Any]) -> dict[str, Any]:
    with anyio.fail_after(30):
        result = await client.call_tool(name, args)
    assert not result.is_error, _text(result)
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def _error(client: Client, name: str, args: dict[str, Any]) -> str:
    with anyio.fail_after(30):
        result = await client.call_tool(name, args)
    assert result.is_error, result.structured_content
    return _text(result)


async def test_create_workflow_reports_levels_inferred_edges_and_mermaid(client: Client) -> None:
    created = await _ok(client, "create_workflow", HELLO)
    assert created["workflow_name"] == "hello" and created["steps_count"] == 2
    assert created["execution_levels"] == [["greet"], ["shape"]]
    assert created["inferred_dependencies"] == {"shape": ["greet"]}
    assert created["mermaid"].startswith("graph TD")
    again = await _error(client, "create_workflow", HELLO)
    assert "already exists" in again and "overwrite" in again
    assert (await _ok(client, "create_workflow", {**HELLO, "overwrite": True}))["steps_count"] == 2


async def test_list_get_and_delete_workflows(client: Client) -> None:
    await _ok(client, "create_workflow", HELLO)
    listed = await _ok(client, "list_workflows", {})
    assert listed["count"] == 1 and listed["workflows"][0]["name"] == "hello"
    assert listed["workflows"][0]["source"] == "api"
    detail = await _ok(client, "get_workflow", {"name": "hello"})
    assert [s["name"] for s in detail["steps"]] == ["greet", "shape"] and "greet" in detail["mermaid"]
    assert (await _ok(client, "delete_workflow", {"name": "hello"}))["deleted"] is True
    assert (await _ok(client, "delete_workflow", {"name": "hello"}))["deleted"] is False
    assert "workflow 'hello' not found" in await _error(client, "get_workflow", {"name": "hello"})


async def test_validate_workflow_returns_every_problem_without_registering(client: Client) -> None:
    cyclic = {
        "name": "loop",
        "steps": [
            {
                "name": "a",
                "module": "core",
                "action": "echo",
                "parameters": {"message": 1},
                "dependencies": ["b"],
            },
            {"name": "b", "module": "core", "action": "nope", "dependencies": ["a"]},
        ],
    }
    report = await _ok(client, "validate_workflow", cyclic)
    assert report["valid"] is False
    joined = " ".join(report["problems"])
    assert "cycle" in joined and "core.nope" in joined
    good = await _ok(client, "validate_workflow", {"name": "ok", "steps": HELLO["steps"]})
    assert good["valid"] is True and good["execution_levels"] == [["greet"], ["shape"]]
    assert (await _ok(client, "list_workflows", {}))["count"] == 0


async def test_validate_workflow_lists_schema_problems_with_every_other_problem_at_once(
    client: Client,
) -> None:
    steps = [
        {"name": "a", "module": "core", "action": "echo", "paramters": {"message": 1}},
        {
            "name": "b",
            "module": "core",
            "action": "echo",
            "parameters": {"message": "{{steps.zz.output}}"},
            "dependencies": ["b", "a"],
        },
        {"name": "c", "module": "core", "action": "nope"},
    ]
    report = await _ok(client, "validate_workflow", {"name": "v", "steps": steps})
    assert report["valid"] is False
    problems = report["problems"]
    assert problems[0] == "unknown field 'steps.0.paramters' (did you mean 'parameters'?)"
    assert problems[1:3] == [
        "step 'b' depends on itself",
        "step 'b' references unknown step 'zz' in '{{steps.zz.output}}'; known steps: 'b', 'c', 'a'",
    ]
    assert problems[3].startswith("step 'c': action: unknown action core.nope")
    assert len(problems) == 4
    loop = [{"name": "a", "module": "workflow", "action": "run", "parameters": {"workflow": "loop"}}]
    report = await _ok(client, "validate_workflow", {"name": "loop", "steps": loop})
    assert report["valid"] is False
    assert report["problems"][0].startswith("step 'a' runs workflow 'loop', itself")


async def test_the_workflow_tools_take_every_field_of_the_workflow_format_and_get_workflow_shows_them(
    client: Client,
) -> None:
    step = {"name": "a", "module": "core", "action": "echo", "parameters": {"message": 1}}
    fields = {"description": "d", "parameters": {"p": 1}, "max_parallel": 2, "version": "2.1"}
    assert set(WorkflowSpec.model_fields) == {"name", "steps", *fields}  # the whole format
    checked = await _ok(client, "validate_workflow", {"name": "w", "steps": [step], **fields})
    assert checked["valid"] is True, checked
    await _ok(client, "create_workflow", {"name": "w", "steps": [step], **fields})
    detail = await _ok(client, "get_workflow", {"name": "w"})
    assert (detail["max_parallel"], detail["version_label"], detail["version"]) == (2, "2.1", 1)
    assert (detail["description"], detail["parameters"]) == ("d", {"p": 1})
    # Out of the format's bounds: a problem for validate_workflow, refused by create_workflow.
    bad = {"name": "w2", "steps": [step], "max_parallel": 0}
    assert "max_parallel" in " ".join((await _ok(client, "validate_workflow", bad))["problems"])
    assert "max_parallel" in await _error(client, "create_workflow", bad)

    definition = {"steps": [step], **fields, "max_parallel": 1}
    run = await _ok(client, "create_complex_workflow", {"name": "cx", "workflow_definition": definition})
    assert run["status"] == "completed" and run["parameters"] == {"p": 1}
    detail = await _ok(client, "get_workflow", {"name": "cx"})
    assert (detail["max_parallel"], detail["version_label"], detail["description"]) == (1, "2.1", "d")


async def test_an_unknown_step_field_lists_the_step_fields_and_the_one_it_meant(client: Client) -> None:
    step = {"name": "a", "module": "core", "action": "echo", "parameters": {"message": 1}}
    typo = await _error(client, "create_workflow", {"name": "w", "steps": [{**step, "depends_on": []}]})
    assert "unknown field 'steps.0.depends_on' (did you mean 'dependencies'?)" in typo
    accepted = typo.split("(accepted: ")[1].rstrip(")").split(", ")
    assert {"name", "module", "action", "dependencies", "max_retries", "for_each"} <= set(accepted)
    assert "overwrite" not in accepted  # a tool argument, not a step field
    complex_typo = await _error(
        client,
        "create_complex_workflow",
        {"name": "w", "workflow_definition": {"steps": [{**step, "retries": 2}], "dependency": {}}},
    )
    assert "unknown field 'workflow_definition.steps.0.retries' (did you mean 'max_retries'?)" in complex_typo
    assert (
        "unknown field 'workflow_definition.dependency' (did you mean 'dependencies'?) (accepted: steps, "
        in (complex_typo)
    )
    top = await _error(client, "create_workflow", {"name": "w", "steps": [step], "overwrit": True})
    assert "unknown field 'overwrit' (did you mean 'overwrite'?) (accepted: name, steps, " in top


async def test_execute_workflow_returns_the_run_record_with_outputs(client: Client) -> None:
    await _ok(client, "create_workflow", HELLO)
    run = await _ok(client, "execute_workflow", {"workflow_name": "hello", "parameters": {"who": "you"}})
    assert run["status"] == "completed" and run["note"] is None
    assert run["steps"]["greet"]["output"] == "hi you"
    assert run["steps"]["shape"]["output"] == {"text": "hi you"}
    assert run["steps"]["greet"]["attempts"] == 1 and run["duration_seconds"] is not None
    fetched = await _ok(client, "get_workflow_run", {"run_id": run["run_id"]})
    assert fetched["status"] == "completed"
    runs = await _ok(client, "list_workflow_runs", {"workflow_name": "hello"})
    assert [r["run_id"] for r in runs["runs"]] == [run["run_id"]]


async def test_a_run_given_a_parameter_name_its_workflow_does_not_take_is_refused_naming_the_field(
    client: Client,
) -> None:
    await _ok(client, "create_workflow", HELLO)
    refused = await _error(
        client, "execute_workflow", {"workflow_name": "hello", "parameters": {"woh": "you"}}
    )
    assert refused.startswith("parameters.woh: workflow 'hello' neither declares nor uses parameter 'woh'")
    assert "(did you mean 'who'?); accepted parameters: who" in refused
    complex_call = {
        "name": "c",
        "workflow_definition": {"steps": HELLO["steps"]},
        "parameters": {"woh": "you"},
    }
    assert "(did you mean 'who'?)" in await _error(client, "create_complex_workflow", complex_call)
    assert (await _ok(client, "list_workflow_runs", {}))["count"] == 0  # nothing was recorded


async def test_a_failed_run_is_a_record_and_an_unknown_workflow_is_an_error(client: Client) -> None:
    failing = {
        "name": "bad",
        "steps": [{"name": "boom", "module": "core", "action": "fail", "parameters": {"message": "no"}}],
    }
    await _ok(client, "create_workflow", failing)
    run = await _ok(client, "execute_workflow", {"workflow_name": "bad"})
    assert run["status"] == "failed" and run["failed_steps"] == ["boom"]
    assert "no" in run["steps"]["boom"]["error"]["message"]
    missing = await _error(client, "execute_workflow", {"workflow_name": "nope"})
    assert "workflow 'nope' not found" in missing and "bad" in missing
    assert "run 'r-x' not found" in await _error(client, "get_workflow_run", {"run_id": "r-x"})


async def test_a_long_run_does_not_block_other_calls_reports_progress_and_is_cancelled_with_the_request(
    client: Client,
) -> None:
    await _ok(client, "create_workflow", SLOW)
    first_step_done = anyio.Event()
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))
        first_step_done.set()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: client.call_tool(
                    "execute_workflow",
                    {"workflow_name": "slow", "timeout_seconds": 50},
                    progress_callback=on_progress,
                )
            )
            await first_step_done.wait()
            with anyio.fail_after(3):  # the event loop and the quick-call threads are free
                listed = await _ok(client, "list_workflows", {})
            assert listed["count"] == 1
            runs = await _ok(client, "list_workflow_runs", {"status": "running"})
            assert runs["count"] == 1
            run_id = runs["runs"][0]["run_id"]
            tg.cancel_scope.cancel()  # the client abandons the request
        # The cancelled handler cancels the run (shielded) before it lets the cancellation through.
        run = await _ok(client, "get_workflow_run", {"run_id": run_id})
    assert progress[0] == (1.0, 2.0, "step quick completed")
    assert run["status"] == "cancelled" and run["steps"]["nap"]["status"] == "cancelled"


async def test_progress_counts_every_ended_step_of_the_total_and_a_resume_counts_the_kept_ones(
    client: Client,
) -> None:
    chain = [
        {"name": f"s{i}", "module": "core", "action": "echo", "parameters": {"message": i}} for i in range(6)
    ]
    for i in range(1, 6):
        chain[i]["dependencies"] = [f"s{i - 1}"]
    chain[5] = {"name": "s5", "module": "core", "action": "fail", "parameters": {"message": "no"}}
    chain[5]["dependencies"] = ["s4"]
    await _ok(client, "create_workflow", {"name": "six", "steps": chain})
    seen: list[tuple[float, float | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        seen.append((done, total))

    with anyio.fail_after(20):
        result = await client.call_tool(
            "execute_workflow", {"workflow_name": "six"}, progress_callback=on_progress
        )
    run = result.structured_content
    assert isinstance(run, dict) and run["status"] == "failed"
    # A chain ends one step at a time: every count from 1 to 6, each of 6.
    assert seen == [(float(n), 6.0) for n in range(1, 7)]
    seen.clear()
    with anyio.fail_after(20):
        await client.call_tool(
            "resume_workflow_run", {"run_id": run["run_id"]}, progress_callback=on_progress
        )
    assert seen == [(6.0, 6.0)]  # five completed steps kept, the failed one ran again


async def test_waiting_stops_at_the_timeout_and_returns_the_running_handle(client: Client) -> None:
    await _ok(client, "create_workflow", SLOW)
    with anyio.fail_after(10):
        run = await _ok(client, "execute_workflow", {"workflow_name": "slow", "timeout_seconds": 0.3})
    assert run["status"] == "running"
    assert "get_workflow_run" in run["note"] and run["run_id"] in run["note"]
    cancelled = await _ok(client, "cancel_workflow_run", {"run_id": run["run_id"]})
    assert cancelled["status"] == "cancelled"
    again = await _error(client, "cancel_workflow_run", {"run_id": run["run_id"]})
    assert "cancelled" in again


async def test_wait_false_returns_the_handle_at_once(client: Client) -> None:
    await _ok(client, "create_workflow", SLOW)
    with anyio.fail_after(5):
        run = await _ok(client, "execute_workflow", {"workflow_name": "slow", "wait": False})
    assert run["status"] in ("pending", "running")
    await _ok(client, "cancel_workflow_run", {"run_id": run["run_id"]})


async def test_resume_reruns_what_did_not_complete(client: Client) -> None:
    await _ok(client, "create_workflow", HELLO)
    done = await _ok(client, "execute_workflow", {"workflow_name": "hello"})
    assert "nothing to resume" in await _error(client, "resume_workflow_run", {"run_id": done["run_id"]})
    await _ok(client, "create_workflow", SLOW)
    slow = await _ok(client, "execute_workflow", {"workflow_name": "slow", "wait": False})
    await _ok(client, "cancel_workflow_run", {"run_id": slow["run_id"]})
    resumed = await _ok(client, "resume_workflow_run", {"run_id": slow["run_id"], "timeout_seconds": 0.2})
    assert resumed["status"] == "running" and resumed["steps"]["quick"]["status"] == "completed"
    await _ok(client, "cancel_workflow_run", {"run_id": resumed["run_id"]})


async def test_create_complex_workflow_registers_and_runs_with_the_dependency_map(client: Client) -> None:
    definition = {
        "steps": [
            {"name": "a", "module": "core", "action": "echo", "parameters": {"message": 1}},
            {"name": "b", "module": "core", "action": "echo", "parameters": {"message": 2}},
        ],
        "dependencies": {"b": ["a"]},
    }
    run = await _ok(
        client, "create_complex_workflow", {"name": "pipeline", "workflow_definition": definition}
    )
    assert run["status"] == "completed"
    assert run["steps"]["a"]["finished_at"] <= run["steps"]["b"]["started_at"]
    detail = await _ok(client, "get_workflow", {"name": "pipeline"})
    assert detail["execution_levels"] == [["a"], ["b"]]


async def test_create_complex_workflow_refuses_a_name_taken_by_other_steps_unless_told_to_overwrite(
    client: Client,
) -> None:
    keep = {"name": "keep", "module": "core", "action": "echo", "parameters": {"message": "important"}}
    await _ok(client, "create_workflow", {"name": "mine", "steps": [keep]})
    other = {"steps": [{"name": "x", "module": "core", "action": "echo", "parameters": {"message": "other"}}]}
    refused = await _error(client, "create_complex_workflow", {"name": "mine", "workflow_definition": other})
    assert "'mine' already exists" in refused and "overwrite=true" in refused
    kept = await _ok(client, "get_workflow", {"name": "mine"})
    assert kept["version"] == 1 and [s["name"] for s in kept["steps"]] == ["keep"]
    # The same steps again are the same workflow: they just run again, under the same version.
    same = {"steps": [keep]}
    for _ in range(2):
        run = await _ok(client, "create_complex_workflow", {"name": "mine", "workflow_definition": same})
        assert run["status"] == "completed" and run["workflow_version"] == 1
    replaced = await _ok(
        client, "create_complex_workflow", {"name": "mine", "workflow_definition": other, "overwrite": True}
    )
    assert replaced["workflow_version"] == 2 and list(replaced["steps"]) == ["x"]


async def test_execute_task_runs_one_action_through_the_scheduler(client: Client) -> None:
    task = await _ok(
        client,
        "execute_task",
        {"name": "t", "module": "core", "action": "echo", "parameters": {"message": [1, 2]}},
    )
    assert task["status"] == "completed" and task["result"] == [1, 2] and task["attempts"] == 1
    failed = await _ok(client, "execute_task", {"name": "f", "module": "core", "action": "fail"})
    assert failed["status"] == "failed" and failed["error"]["type"]
    unknown = await _error(client, "execute_task", {"name": "u", "module": "core", "action": "nope"})
    assert "unknown action core.nope" in unknown and "core.echo" in unknown
    pending = await _ok(
        client,
        "execute_task",
        {
            "name": "s",
            "module": "core",
            "action": "sleep",
            "parameters": {"seconds": 60},
            "timeout_seconds": 0.2,
        },
    )
    assert pending["status"] == "running" and pending["note"]


async def test_execute_task_refuses_a_misspelt_parameter_before_anything_runs(client: Client) -> None:
    nap = {"name": "t", "module": "core", "action": "sleep", "parameters": {"secs": 2}}
    refused = await _error(client, "execute_task", nap)
    assert "parameters.secs: core.sleep does not accept parameter 'secs' (did you mean 'seconds'?)" in refused
    echo = {"name": "t", "module": "core", "action": "echo", "parameters": {"message": "a", "mesage": "b"}}
    assert "(did you mean 'message'?)" in await _error(client, "execute_task", echo)


async def test_execute_task_stops_an_attempt_at_its_timeout_apart_from_the_wait(client: Client) -> None:
    nap = {"name": "nap", "module": "core", "action": "sleep", "parameters": {"seconds": 60}}
    task = await _ok(client, "execute_task", {**nap, "timeout": 0.2, "timeout_seconds": 30})
    assert task["status"] == "timed_out" and task["attempts"] == 1
    assert "timed out after 0.2 s" in task["error"]["message"]
    bad = await _error(client, "execute_task", {**nap, "timeout": 0})
    assert "timeout" in bad and "greater than 0" in bad


async def test_execute_task_retries_with_its_delay_and_backoff(client: Client) -> None:
    failing = {"name": "f", "module": "core", "action": "fail"}
    task = await _ok(
        client, "execute_task", {**failing, "max_retries": 2, "retry_delay": 0.2, "backoff": 3.0}
    )
    assert task["status"] == "failed" and task["attempts"] == 3
    assert task["duration_seconds"] >= 0.2 + 0.2 * 3  # the retries waited 0.2 s, then 0.6 s
    nap = {"name": "nap", "module": "core", "action": "sleep", "parameters": {"seconds": 60}}
    timed_out = await _ok(client, "execute_task", {**nap, "timeout": 0.1, "max_retries": 1})
    assert timed_out["status"] == "timed_out" and timed_out["attempts"] == 2
    too_many = await _error(client, "execute_task", {**failing, "max_retries": 101})
    assert "max_retries" in too_many


async def test_execute_task_in_a_session_counts_against_its_limit_and_closes_with_it(client: Client) -> None:
    session_id = (await _ok(client, "create_session", {"max_parallel_tasks": 1}))["session_id"]
    nap = {"name": "nap", "module": "core", "action": "sleep", "parameters": {"seconds": 60}, "wait": False}
    first = await _ok(client, "execute_task", {**nap, "session_id": session_id})
    refused = await _error(client, "execute_task", {**nap, "session_id": session_id})
    assert f"session {session_id} has 1 task running or queued already; the limit is 1" in refused
    assert (await _ok(client, "execute_task", nap))["status"] in ("pending", "ready", "running")  # no session
    closed = await _ok(client, "close_session", {"session_id": session_id, "cancel_running": True})
    assert closed["cancelled_tasks"] == [first["task_id"]] and closed["tasks"] == [first["task_id"]]
    final = await _ok(client, "get_task", {"task_id": first["task_id"], "wait_seconds": 10})
    assert final["status"] == "cancelled"
    gone = await _error(client, "execute_task", {**nap, "session_id": session_id})
    assert "create_session" in gone


async def test_execute_task_of_workflow_run_says_it_runs_only_as_a_step_and_points_to_execute_workflow(
    client: Client,
) -> None:
    task = await _ok(
        client,
        "execute_task",
        {"name": "sub", "module": "workflow", "action": "run", "parameters": {"workflow": "fan_out_join"}},
    )
    assert task["status"] == "failed"
    message = task["error"]["message"]
    assert "runs only as a workflow step" in message and "manager" not in message
    assert "execute_workflow" in message and "'fan_out_join'" in message


async def test_long_tasks_wait_without_threads_and_are_cancelled_with_their_request(
    client: Client, tools: OrchestrationMCPTools
) -> None:
    await _ok(
        client,
        "execute_task",
        {"name": "warm", "module": "core", "action": "echo", "parameters": {"message": 1}},
    )  # engine up
    orchestrator = tools.engine.task_orchestrator
    started: list[str] = []
    all_started = threading.Event()

    def on_event(event: str, record: TaskRecord) -> None:
        if event == "task.started" and record.name == "nap":
            started.append(record.task_id)
            if len(started) == 6:
                all_started.set()

    orchestrator.add_listener(on_event)
    nap = {"name": "nap", "module": "core", "action": "sleep", "parameters": {"seconds": 60}}
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(lambda: client.call_tool("execute_task", {**nap, "timeout_seconds": 50}))
            assert await anyio.to_thread.run_sync(all_started.wait, 10)
            # Six calls are waiting for their tasks, and not one of them holds a thread to do so.
            assert tools._call_limiter.borrowed_tokens == 0
            with anyio.fail_after(3):
                assert (await _ok(client, "list_workflows", {}))["count"] == 0
            tg.cancel_scope.cancel()  # the client abandons the six requests
        finals = await anyio.to_thread.run_sync(orchestrator.wait_all, started, 10)
    assert [record.status for record in finals] == [TaskStatus.CANCELLED] * 6


async def test_get_task_waits_without_a_thread_and_an_abandoned_wait_leaves_the_task_running(
    client: Client, tools: OrchestrationMCPTools
) -> None:
    nap = {"name": "nap", "module": "core", "action": "sleep", "parameters": {"seconds": 60}, "wait": False}
    ids = [(await _ok(client, "execute_task", nap))["task_id"] for _ in range(3)]
    orchestrator = tools.engine.task_orchestrator
    results: dict[str, Any] = {}
    first_done = anyio.Event()

    async def follow(task_id: str) -> None:
        results[task_id] = await _ok(client, "get_task", {"task_id": task_id, "wait_seconds": 50})
        if task_id == ids[0]:
            first_done.set()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for task_id in ids:
                tg.start_soon(follow, task_id)
            await anyio.wait_all_tasks_blocked()
            # Three calls wait for running tasks, and not one of them holds a thread to do so.
            assert tools._call_limiter.borrowed_tokens == 0
            orchestrator.cancel_task(ids[0], "ended by the test")
            await first_done.wait()  # the wait ends with the task
            tg.cancel_scope.cancel()  # the client abandons the other two waits
    assert results[ids[0]]["status"] == "cancelled" and results[ids[0]]["note"] is None
    # Giving up a wait is not cancelling the task.
    assert not any(orchestrator.get_task(t).status.is_terminal for t in ids[1:])
    for task_id in ids[1:]:
        orchestrator.cancel_task(task_id, "cleanup")
    with anyio.fail_after(10):
        quick = await _ok(client, "get_task", {"task_id": ids[1], "wait_seconds": 0.2})
    assert quick["status"] == "cancelled"


async def test_get_task_pages_a_result_once_the_task_has_ended_also_after_waiting_for_it(
    client: Client, tools: OrchestrationMCPTools
) -> None:
    nap = {"name": "nap", "module": "core", "action": "sleep", "parameters": {"seconds": 60}, "wait": False}
    ids = [(await _ok(client, "execute_task", nap))["task_id"] for _ in range(2)]
    early = await _ok(client, "get_task", {"task_id": ids[0], "value_offset": 0})
    assert early["value"] is None and "read in pages (value_offset) once it has ended" in early["note"]
    answers: dict[str, Any] = {}

    async def follow(task_id: str, offset: int) -> None:
        with anyio.fail_after(30):
            answers[task_id] = await client.call_tool(
                "get_task", {"task_id": task_id, "wait_seconds": 50, "value_offset": offset}
            )

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow, ids[0], 0)
            tg.start_soon(follow, ids[1], 99)
            await anyio.wait_all_tasks_blocked()  # both wait for their task's end
            for task_id in ids:
                tools.engine.task_orchestrator.cancel_task(task_id, "ended by the test")
    paged = answers[ids[0]].structured_content
    assert paged is not None and paged["status"] == "cancelled"
    assert paged["value"] == {
        "of": "result",
        "json_length": 4,
        "offset": 0,
        "json_text": "null",
        "next_offset": None,
    }
    # An offset past the end, known only once the task has ended, is the waiting call's error.
    assert answers[ids[1]].is_error
    assert _text(answers[ids[1]]) == "value_offset: 99 is past the end of result's JSON text: give 0 to 3"


async def test_list_workflows_answers_while_every_call_thread_is_busy(
    client: Client, tools: OrchestrationMCPTools
) -> None:
    await _ok(client, "create_workflow", HELLO)  # the engine is up
    limiter = tools._call_limiter
    holders = [object() for _ in range(int(limiter.total_tokens))]
    for holder in holders:  # as if every call thread were stuck in a slow tool
        await limiter.acquire_on_behalf_of(holder)
    try:
        with anyio.fail_after(5):
            listed = await _ok(client, "list_workflows", {})
        assert [w["name"] for w in listed["workflows"]] == [HELLO["name"]]
    finally:
        for holder in holders:
            limiter.release_on_behalf_of(holder)


async def test_list_actions_shows_what_this_server_allows(
    client: Client, tools: OrchestrationMCPTools
) -> None:
    actions = await _ok(client, "list_actions", {})
    by_name = {a["name"]: a for a in actions["actions"]}
    assert by_name["core.echo"]["allowed"] is True
    assert by_name["shell.run"]["executes_code"] is True
    assert by_name["shell.run"]["allowed"] is tools.policy.allow_code_execution


async def test_projects_are_created_from_templates_and_listed(client: Client) -> None:
    templates = await _ok(client, "list_project_templates", {})
    assert {t["type"] for t in templates["templates"]} >= {"ai_analysis", "data_pipeline", "research"}
    project = await _ok(
        client,
        "create_project",
        {"name": "demo", "template": "data_pipeline", "description": "d", "owner": "me"},
    )
    assert project["project_name"] == "demo" and project["project_type"] == "data_pipeline"
    assert project["project_path"].endswith("demo")
    assert "project.json" in project["files_created"] and "README.md" in project["files_created"]
    assert all(w.startswith("demo.") for w in project["workflows"])
    listed = await _ok(client, "list_projects", {"type": "data_pipeline"})
    assert [p["name"] for p in listed["projects"]] == ["demo"]
    assert (await _ok(client, "list_projects", {"type": "research"}))["count"] == 0
    taken = await _error(client, "create_project", {"name": "demo"})
    # Each refusal names what the caller can do through the tools, never a Python-only argument.
    assert "already exists" in taken and "orchestration://projects/demo" in taken
    assert "list_projects" in taken and "get_project" not in taken
    assert "../x" in await _error(client, "create_project", {"name": "../x"})
    root = Path(project["project_path"]).parent
    (root / "somebodys").mkdir()
    folder = await _error(client, "create_project", {"name": "somebodys"})
    assert "not made by create_project" in folder and "choose another project name" in folder
    (root / "a_file").write_text("not a folder", encoding="utf-8")
    file = await _error(client, "create_project", {"name": "a_file"})
    assert "file" in file and "choose another project name" in file
    assert "exist_ok" not in folder + file


async def test_create_project_takes_any_template_the_server_knows_and_names_the_known_ones(
    client: Client, tmp_path: Path
) -> None:
    custom = tmp_path / "templates" / "projects"  # the engine's templates_dir (conftest.make_engine)
    custom.mkdir(parents=True)
    blog = {"type": "documentation", "description": "my blog", "directory_structure": {"posts": "Posts"}}
    (custom / "blog.json").write_text(json.dumps(blog), encoding="utf-8")
    listed = await _ok(client, "list_project_templates", {})
    assert "blog" in {t["name"] for t in listed["templates"]} and listed["count"] == 8
    project = await _ok(client, "create_project", {"name": "myblog", "template": "blog"})
    assert project["template_used"] == "blog" and project["project_type"] == "documentation"
    assert (Path(project["project_path"]) / "posts").is_dir()
    typo = await _error(client, "create_project", {"name": "x", "template": "blgo"})
    assert "template: 'blgo' is not a template (did you mean 'blog'?)" in typo
    assert "ai_analysis" in typo and "blog" in typo.split("available: ")[1]
    schema = next(t for t in (await client.list_tools()).tools if t.name == "create_project").input_schema
    template = schema["properties"]["template"]
    assert template["type"] == "string" and "enum" not in template
    assert "data_pipeline" in template["description"] and "list_project_templates" in template["description"]


async def test_a_template_writes_literal_braces_as_four_and_the_error_for_two_says_so(
    client: Client, tmp_path: Path
) -> None:
    custom = tmp_path / "templates" / "projects"  # the engine's templates_dir (conftest.make_engine)
    custom.mkdir(parents=True)
    vue = {"type": "custom", "files": {"src/App.vue": "<p>{{{{ message }}}}</p><!-- {{project_name}} -->\n"}}
    (custom / "vue.json").write_text(json.dumps(vue), encoding="utf-8")
    gha = {"type": "custom", "files": {"ci.yml": "env:\n  TOKEN: ${{ secrets.TOKEN }}\n"}}
    (custom / "gha.json").write_text(json.dumps(gha), encoding="utf-8")

    project = await _ok(client, "create_project", {"name": "web", "template": "vue"})
    app = Path(project["project_path"]) / "src" / "App.vue"
    assert app.read_text(encoding="utf-8") == "<p>{{ message }}</p><!-- web -->\n"
    refused = await _error(client, "create_project", {"name": "ci", "template": "gha"})
    assert "ci.yml" in refused and "write {{{{ secrets.TOKEN }}}}" in refused and "?}}" not in refused


async def test_resources_expose_workflows_runs_and_projects(client: Client) -> None:
    await _ok(client, "create_workflow", HELLO)
    run = await _ok(client, "execute_workflow", {"workflow_name": "hello"})
    await _ok(client, "create_project", {"name": "demo", "template": "research"})
    uris = {r.uri for r in (await client.list_resources()).resources}
    assert "orchestration://workflows/hello" in uris
    workflow = await client.read_resource("orchestration://workflows/hello")
    assert '"mermaid"' in workflow.contents[0].text  # type: ignore[union-attr]
    record = await client.read_resource(f"orchestration://runs/{run['run_id']}")
    assert '"completed"' in record.contents[0].text  # type: ignore[union-attr]
    project = await client.read_resource("orchestration://projects/demo")
    assert '"research"' in project.contents[0].text  # type: ignore[union-attr]
    runs = await client.read_resource("orchestration://runs")
    assert run["run_id"] in runs.contents[0].text  # type: ignore[union-attr]


def test_execute_tool_works_from_plain_python(tools: OrchestrationMCPTools) -> None:
    created = tools.execute_tool("create_workflow", HELLO)
    assert not created.is_error and created.structured is not None
    run = tools.execute_tool("execute_workflow", {"workflow_name": "hello"})
    assert run.structured is not None and run.structured["status"] == "completed"
    assert '"status": "completed"' in run.text


async def test_network_transports_refuse_code_execution_by_default(tmp_path: Any) -> None:
    from codomyrmex_orchestration.server.tools import ServerPolicy

    from .conftest import make_engine

    policy = ServerPolicy.for_transport("streamable-http", None)
    tools = OrchestrationMCPTools(engine_factory=lambda p: make_engine(tmp_path, p), policy=policy)
    try:
        async with Client(build_server(tools)) as client:
            shell = {
                "name": "sh",
                "steps": [
                    {"name": "ls", "module": "shell", "action": "run", "parameters": {"command": ["ls"]}}
                ],
            }
            refused = await _error(client, "create_workflow", shell)
            task = await _error(
                client,
                "execute_task",
                {"name": "py", "module": "python", "action": "call", "parameters": {"function": "os:getcwd"}},
            )
            actions = await _ok(client, "list_actions", {})
            probe = {
                "name": "ssrf",
                "module": "http",
                "action": "request",
                "parameters": {"url": "http://127.0.0.1:9/"},
            }
            ssrf = await _ok(client, "execute_task", probe)
    finally:
        tools.close()
    assert "shell.run" in refused and "refused" in refused
    assert "python.call" in task and "refused" in task
    assert {a["name"]: a["allowed"] for a in actions["actions"]}["shell.run"] is False
    assert ssrf["status"] == "failed" and ssrf["error"]["type"] == "ActionRefusedError", ssrf


async def test_list_workflow_runs_filters_by_time_window_and_pages_with_a_cursor(client: Client) -> None:
    await _ok(
        client,
        "create_workflow",
        {
            "name": "tick",
            "steps": [{"name": "a", "module": "core", "action": "echo", "parameters": {"message": 1}}],
        },
    )
    ran = [(await _ok(client, "execute_workflow", {"workflow_name": "tick"}))["run_id"] for _ in range(5)]
    first = await _ok(client, "list_workflow_runs", {"workflow_name": "tick", "limit": 2})
    second = await _ok(
        client, "list_workflow_runs", {"workflow_name": "tick", "limit": 2, "cursor": first["next_cursor"]}
    )
    third = await _ok(
        client, "list_workflow_runs", {"workflow_name": "tick", "limit": 2, "cursor": second["next_cursor"]}
    )
    paged = [r["run_id"] for page in (first, second, third) for r in page["runs"]]
    assert paged == list(reversed(ran))  # newest first, each run once
    assert third["next_cursor"] is None and third["count"] == 1
    created = sorted(r["created_at"] for page in (first, second, third) for r in page["runs"])
    window = await _ok(client, "list_workflow_runs", {"since": created[1], "until": created[3]})
    assert {r["created_at"] for r in window["runs"]} == {created[1], created[2]}  # since inclusive, until not
    future = await _ok(client, "list_workflow_runs", {"since": "2999-01-01T00:00:00"})
    assert future["runs"] == []
    bad = await client.call_tool("list_workflow_runs", {"cursor": "not-a-cursor"})
    assert bad.is_error and "cursor" in bad.content[0].text


async def test_a_time_window_reads_iso_8601_and_refuses_what_it_would_misread(client: Client) -> None:
    tick = {"name": "a", "module": "core", "action": "echo", "parameters": {"message": 1}}
    await _ok(client, "create_workflow", {"name": "tick", "steps": [tick]})
    run_id = (await _ok(client, "execute_workflow", {"workflow_name": "tick"}))["run_id"]
    created = datetime.fromisoformat((await _ok(client, "list_workflow_runs", {}))["runs"][0]["created_at"])
    today, tomorrow = created.strftime("%Y%m%d"), (created + timedelta(days=1)).strftime("%Y%m%d")
    # ISO 8601's basic format is ISO 8601: 20261208 is that day, not 20,261,208 s after 1970.
    for since, until in [(today, tomorrow), (today + "T000000Z", tomorrow + "T000000Z")]:
        window = await _ok(client, "list_workflow_runs", {"since": since, "until": until})
        assert [r["run_id"] for r in window["runs"]] == [run_id]
    later = await _ok(client, "list_workflow_runs", {"since": tomorrow})
    assert later["runs"] == []
    for wrong in [int(today), created.timestamp(), "yesterday", "2026-12-08T24:00:00Z"]:
        text = await _error(client, "list_workflow_runs", {"since": wrong})
        assert "since" in text and "ISO 8601" in text and "2026-12-08T09:30:00Z" in text, text
    backwards = await _error(client, "list_workflow_runs", {"since": tomorrow, "until": today})
    assert "until" in backwards and "is before since" in backwards, backwards


async def test_a_run_listed_shows_its_times_as_its_record_does(client: Client) -> None:
    tick = {"name": "a", "module": "core", "action": "echo", "parameters": {"message": 1}}
    await _ok(client, "create_workflow", {"name": "tick", "steps": [tick]})
    record = await _ok(client, "execute_workflow", {"workflow_name": "tick"})
    run = await _ok(client, "get_workflow_run", {"run_id": record["run_id"]})
    listed = (await _ok(client, "list_workflow_runs", {}))["runs"][0]
    # One spelling of one instant: a client may compare them, or pass one back as since.
    assert (listed["created_at"], listed["finished_at"]) == (run["created_at"], run["finished_at"])
    assert listed["created_at"].endswith("Z")


async def test_a_full_last_page_of_runs_has_no_cursor_to_an_empty_page(client: Client) -> None:
    tick = {"name": "a", "module": "core", "action": "echo", "parameters": {"message": 1}}
    await _ok(client, "create_workflow", {"name": "tick", "steps": [tick]})
    for _ in range(4):
        await _ok(client, "execute_workflow", {"workflow_name": "tick"})
    whole = await _ok(client, "list_workflow_runs", {"limit": 4})
    assert whole["count"] == 4 and whole["next_cursor"] is None
    first = await _ok(client, "list_workflow_runs", {"limit": 2})
    assert first["count"] == 2 and first["next_cursor"] is not None
    last = await _ok(client, "list_workflow_runs", {"limit": 2, "cursor": first["next_cursor"]})
    assert last["count"] == 2 and last["next_cursor"] is None


async def test_a_wait_counts_from_the_calls_arrival_even_while_every_call_thread_is_busy(
    client: Client, tools: OrchestrationMCPTools
) -> None:
    sleep = {"name": "n", "module": "core", "action": "sleep", "parameters": {"seconds": 60}}
    nap = {"name": "nap", "steps": [sleep]}
    await _ok(client, "create_workflow", nap)
    limiter = tools._call_limiter
    holders = [object() for _ in range(int(limiter.total_tokens))]
    for holder in holders:  # as if every call thread were stuck in a slow tool
        await limiter.acquire_on_behalf_of(holder)
    answers: list[tuple[float, dict[str, Any]]] = []

    async def call() -> None:
        handle = await _ok(client, "execute_workflow", {"workflow_name": "nap", "timeout_seconds": 3})
        answers.append((time.monotonic(), handle))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await anyio.sleep(3.5)  # the call's whole wait passes while no thread can start its run
            released = time.monotonic()
            for holder in holders:
                limiter.release_on_behalf_of(holder)
            holders = []
    finally:
        for holder in holders:
            limiter.release_on_behalf_of(holder)
    [(returned, handle)] = answers
    # It started the run as soon as a thread was free and, its time being up, answered at once.
    assert handle["status"] in ("pending", "running") and "still" in handle["note"]
    assert returned - released < 1.5
    await _ok(client, "cancel_workflow_run", {"run_id": handle["run_id"]})


async def test_an_id_of_the_wrong_kind_or_of_another_server_instance_says_why_it_is_not_found(
    client: Client, tmp_path: Path
) -> None:
    # Was "task '...' not found" alone, for a run id, and for a task of the server before a restart.
    other = OrchestrationMCPTools(engine_factory=lambda policy: make_engine(tmp_path / "other", policy))
    try:
        async with Client(build_server(other)) as before_restart:
            echo = {"name": "t", "module": "core", "action": "echo", "parameters": {"message": 1}}
            old_task = (await _ok(before_restart, "execute_task", echo))["task_id"]
    finally:
        other.close()
    lost = await _error(client, "get_task", {"task_id": old_task})
    assert lost.startswith(f"task {old_task!r} not found: it was made by another server instance")
    assert "single tasks are kept in memory only" in lost
    echo = {"name": "t", "module": "core", "action": "echo", "parameters": {"message": 1}}
    depends = await _error(client, "execute_task", {**echo, "dependencies": [old_task]})
    assert "single tasks are kept in memory only" in depends

    await _ok(client, "create_workflow", HELLO)
    run_id = (await _ok(client, "execute_workflow", {"workflow_name": "hello"}))["run_id"]
    assert "get_workflow_run takes it" in await _error(client, "get_task", {"task_id": run_id})
    task_id = (await _ok(client, "execute_task", echo))["task_id"]
    assert (await _error(client, "get_workflow_run", {"run_id": task_id})) == (
        f"run {task_id!r} not found: that is a task id (execute_task's); get_task takes it"
    )


async def test_a_delete_or_release_of_nothing_is_no_error_but_its_note_says_so_and_names_a_close_one(
    client: Client,
) -> None:
    # Was {"deleted": false} and {"released": 0} alone, as if the call had done what was asked.
    await _ok(client, "create_workflow", HELLO)
    missed = await _ok(client, "delete_workflow", {"name": "helo"})
    assert missed["deleted"] is False
    assert missed["note"] == (
        "no workflow 'helo' is registered (did you mean 'hello'?): nothing was deleted; known: hello"
    )
    held = await _ok(client, "allocate_resources", {"user_id": "agent-1", "requirements": {"compute": 1}})
    allocation = held["allocations"][0]["allocation_id"]
    nothing = await _ok(client, "release_resources", {"allocation_id": allocation + "x"})
    assert nothing["released"] == 0
    assert nothing["note"].startswith(
        f"no allocation {allocation + 'x'!r} is held (did you mean {allocation!r}?)"
    )
    nobody = await _ok(client, "release_resources", {"user_id": "agent-2"})
    assert (
        nobody["note"] == "user 'agent-2' holds no allocation (did you mean 'agent-1'?): nothing was released"
    )
    released = await _ok(client, "release_resources", {"allocation_id": allocation})
    assert released["released"] == 1 and released["note"] is None


async def test_deleting_a_sample_says_it_returns_on_restart_and_which_workflows_call_it(
    tmp_path: Path,
) -> None:
    from codomyrmex_orchestration.core.engine import OrchestrationEngine
    from codomyrmex_orchestration.samples import SAMPLES_DIR

    tools = OrchestrationMCPTools(
        engine_factory=lambda policy: OrchestrationEngine(
            state_dir=tmp_path / "state", config_dir=None, projects_dir=tmp_path / "projects",
            templates_dir=None, sample_dir=SAMPLES_DIR, durable=False,
        )
    )  # fmt: skip
    try:
        async with Client(build_server(tools)) as client:
            gone = await _ok(client, "delete_workflow", {"name": "fan_out_join"})
            assert gone["deleted"] is True
            assert gone["note"] == (
                "it is a shipped sample: the server registers it again when it restarts, unless samples are "
                "turned off (CODOMYRMEX_LOAD_SAMPLES=0); these workflows call it (workflow.run) and now fail "
                "at that step: service_report"
            )
            again = await _ok(client, "delete_workflow", {"name": "fan_out_join"})  # idempotent
            assert again["deleted"] is False and "nothing was deleted" in again["note"]
    finally:
        tools.close()
