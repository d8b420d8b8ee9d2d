"""Map steps (``for_each``) through the real MCP Client: validation, the run record, and what teaches them."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from mcp import Client
from pydantic import BaseModel

from codomyrmex_orchestration.core.models import ItemResult, ItemWindow, TaskStatus, WorkflowStatus, trusted
from codomyrmex_orchestration.server.app import build_server
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools
from tests.helpers.mcp_calls import call, ok
from tests.server.conftest import make_engine

pytestmark = pytest.mark.anyio

EACH = {
    "name": "each",
    "parameters": {"names": ["ada", "bob", "cy"]},
    "steps": [
        {
            "name": "greet",
            "module": "core",
            "action": "echo",
            "for_each": "{{params.names}}",
            "max_parallel": 2,
            "parameters": {"message": "{{index}}:{{item}}"},
        },
        {"name": "all", "module": "core", "action": "set", "parameters": {"got": "{{steps.greet.output}}"}},
    ],
}


async def test_a_map_step_runs_per_item_and_get_workflow_run_shows_its_items(client: Client) -> None:
    await ok(client, "create_workflow", EACH)
    run = await ok(client, "execute_workflow", {"workflow_name": "each"})
    assert run["status"] == "completed"
    assert run["steps"]["all"]["output"] == {"got": ["0:ada", "1:bob", "2:cy"]}
    shown = await ok(client, "get_workflow_run", {"run_id": run["run_id"]})
    items = shown["steps"]["greet"]["items"]
    assert items["total"] == 3 and items["counts"] == {"completed": 3}
    assert [(i["index"], i["status"], i["output"]) for i in items["items"]] == [
        (0, "completed", "0:ada"),
        (1, "completed", "1:bob"),
        (2, "completed", "2:cy"),
    ]


async def test_validate_workflow_names_a_for_each_of_the_wrong_shape(client: Client) -> None:
    bad = {
        "name": "bad",
        "steps": [
            {
                "name": "a",
                "module": "core",
                "action": "echo",
                "for_each": "names",
                "parameters": {"message": 1},
            },
            {
                "name": "b",
                "module": "core",
                "action": "echo",
                "max_parallel": 3,
                "parameters": {"message": 2},
            },
        ],
    }
    report = await ok(client, "validate_workflow", bad)
    assert report["valid"] is False
    assert report["problems"] == [
        "step 'a' for_each: 'names' is neither a list nor one {{...}} reference naming a list, "
        "e.g. '{{steps.list.output.files}}' or '{{params.names}}'",
        "step 'b': max_parallel applies only to a step with for_each",
    ]
    zero = {**EACH, "steps": [{**EACH["steps"][0], "max_parallel": 0}]}
    refused = await call(client, "validate_workflow", zero)
    text = refused.content[0].text if refused.is_error else str(refused.structured_content)
    assert "max_parallel" in text and "greater than or equal to 1" in text


async def test_the_step_format_prompt_and_list_actions_teach_for_each(client: Client) -> None:
    prompt = await client.get_prompt("workflow_step_format")
    assert "for_each" in str(prompt.messages[0].content) and "{{item}}" in str(prompt.messages[0].content)
    described = {t.name: t.description or "" for t in (await client.list_tools()).tools}
    assert "for_each" in described["list_actions"] and "for_each" in described["create_workflow"]


def _big_map(n: int, *, broken_every: int | None = None) -> dict[str, Any]:
    """A workflow of one ``core.echo`` map step over ``n`` items; with ``broken_every``, every such item
    lacks the key the message reads, so it fails (the step is not required: the run completes)."""
    values = [
        {} if broken_every is not None and i % broken_every == broken_every - 1 else {"x": i}
        for i in range(n)
    ]
    step = {"name": "m", "module": "core", "action": "echo", "parameters": {"message": "{{item.x}}"}}
    return {"name": "big", "steps": [{**step, "for_each": values, "required": False}]}


async def test_a_big_map_steps_record_lists_one_page_of_items_and_pages_through_the_rest(
    client: Client,
) -> None:
    await ok(client, "create_workflow", _big_map(5000, broken_every=1000))
    started = await call(client, "execute_workflow", {"workflow_name": "big", "wait": False})
    assert len(started.content[0].text) < 64_000  # 5,000 items used to be 0.9 MB of text, and as much again
    finished = await call(client, "execute_workflow", {"workflow_name": "big"})
    run = finished.structured_content
    assert len(finished.content[0].text) < 64_000 and run["status"] == "completed"
    items = run["steps"]["m"]["items"]
    assert items["total"] == 5000 and items["counts"] == {"completed": 4995, "failed": 5}
    assert [i["index"] for i in items["items"]] == list(range(100))
    assert (items["offset"], items["matching"], items["next_offset"]) == (0, 5000, 100)
    # The step's output (every item's output in one list) is left out, and the note says how to page.
    assert items["output_omitted"] is True and run["steps"]["m"]["output"] is None
    assert "items_offset" in run["note"] and "items_status" in run["note"]

    last = await ok(client, "get_workflow_run", {"run_id": run["run_id"], "items_offset": 4990})
    page = last["steps"]["m"]["items"]
    assert [i["index"] for i in page["items"]] == list(range(4990, 5000)) and page["next_offset"] is None
    assert page["items"][-1]["status"] == "failed" and page["items"][0]["output"] == 4990

    failed = await ok(
        client, "get_workflow_run", {"run_id": run["run_id"], "items_status": ["failed"], "items_limit": 3}
    )
    page = failed["steps"]["m"]["items"]
    assert [i["index"] for i in page["items"]] == [999, 1999, 2999]
    assert "has no key 'x'" in page["items"][0]["error"]["message"]
    assert (page["matching"], page["next_offset"]) == (5, 3)

    resource = await client.read_resource(f"orchestration://runs/{run['run_id']}")
    assert len(resource.contents[0].text) < 64_000  # type: ignore[union-attr]


def test_execute_workflow_without_waiting_builds_only_the_items_its_answer_shows(
    tools: OrchestrationMCPTools,
) -> None:
    # The answer listed 100 items, but the record behind it was built with all 5,000 items first.
    step = {"name": "m", "module": "core", "action": "sleep", "parameters": {"seconds": 60}}
    slow = {"name": "slowmap", "steps": [{**step, "for_each": list(range(5000)), "max_parallel": 1}]}
    assert not tools.execute_tool("create_workflow", slow).is_error
    built = 0
    codes = (trusted.__code__, BaseModel.__init__.__code__)

    def count(frame: FrameType, event: str, arg: Any) -> None:  # each item built in this thread
        nonlocal built
        if event == "call" and frame.f_code in codes:
            made = frame.f_locals.get("model", type(frame.f_locals.get("self")))
            built += made is ItemResult

    sys.setprofile(count)  # the plain-Python door runs the tool, and the run's start, in this thread
    try:
        started = tools.execute_tool("execute_workflow", {"workflow_name": "slowmap", "wait": False})
    finally:
        sys.setprofile(None)
    assert started.structured is not None, started.text
    tools.engine.workflow_manager.cancel_run(started.structured["run_id"])
    items = started.structured["steps"]["m"]["items"]
    assert started.structured["status"] == "running" and items["total"] == 5000
    assert len(items["items"]) == 100 and built == 100


def test_resume_workflow_run_without_waiting_builds_only_the_items_its_answer_shows(
    tools: OrchestrationMCPTools,
) -> None:
    # The answer listed 100 items, but the resumed run's record behind it was built with all 5,000.
    step = {"name": "m", "module": "core", "action": "sleep", "parameters": {"seconds": 60}}
    slow = {"name": "slowmap", "steps": [{**step, "for_each": list(range(5000)), "max_parallel": 1}]}
    assert not tools.execute_tool("create_workflow", slow).is_error
    started = tools.execute_tool("execute_workflow", {"workflow_name": "slowmap", "wait": False})
    assert started.structured is not None, started.text
    run_id = started.structured["run_id"]
    assert tools.engine.workflow_manager.cancel_run(run_id).status.value == "cancelled"
    built = 0
    codes = (trusted.__code__, BaseModel.__init__.__code__)

    def count(frame: FrameType, event: str, arg: Any) -> None:  # each item built in this thread
        nonlocal built
        if event == "call" and frame.f_code in codes:
            made = frame.f_locals.get("model", type(frame.f_locals.get("self")))
            built += made is ItemResult

    sys.setprofile(count)  # the plain-Python door runs the tool, and the resume's start, in this thread
    try:
        resumed = tools.execute_tool("resume_workflow_run", {"run_id": run_id, "wait": False})
    finally:
        sys.setprofile(None)
    assert resumed.structured is not None, resumed.text
    tools.engine.workflow_manager.cancel_run(run_id)
    items = resumed.structured["steps"]["m"]["items"]
    assert resumed.structured["status"] == "running" and items["total"] == 5000
    assert len(items["items"]) == 100 and built == 100


def test_resume_workflow_run_without_waiting_builds_only_the_items_its_answer_shows_after_a_restart(
    tmp_path: Path,
) -> None:
    # A restarted engine continues each run that waited for an answer with resume_run(wait=False) and
    # throws the answer away, but that answer was built with every item of each running map step
    # (3,000 here), and the listing of the waiting runs read each whole (3,000 more). The map step's
    # items ask one at a time: the run waits on its first item's question, the map step running.
    gated = {
        "name": "gated",
        "parameters": {"xs": list(range(3000))},
        "steps": [
            {
                "name": "m",
                "module": "core",
                "action": "approve",
                "for_each": "{{params.xs}}",
                "max_parallel": 1,
                "parameters": {"message": "item {{item}}?"},
            }
        ],
    }

    def durable_tools() -> OrchestrationMCPTools:
        return OrchestrationMCPTools(
            engine_factory=lambda policy: make_engine(tmp_path, policy, durable=True)
        )

    first = durable_tools()
    try:
        assert not first.execute_tool("create_workflow", gated).is_error
        run_id = first.engine.workflow_manager.execute_workflow("gated", wait=False).run_id
        waiting = first.engine.workflow_manager.inputs.wait(run_id, 60)
        assert waiting.status is WorkflowStatus.WAITING_FOR_INPUT, waiting.status
    finally:
        first.close()

    second = durable_tools()
    built = 0
    codes = (trusted.__code__, BaseModel.__init__.__code__)

    def count(frame: FrameType, event: str, arg: Any) -> None:  # each item built in this thread
        nonlocal built
        if event == "call" and frame.f_code in codes:
            made = frame.f_locals.get("model", type(frame.f_locals.get("self")))
            built += made is ItemResult

    sys.setprofile(count)  # the engine is built, and continues the waiting run, in this thread
    try:
        manager = second.engine.workflow_manager
    finally:
        sys.setprofile(None)
    try:
        assert manager.is_active(run_id)
        record = manager.get_run(run_id, items=ItemWindow(limit=0))
        assert record.status is WorkflowStatus.WAITING_FOR_INPUT
        assert record.steps["m"].status is TaskStatus.RUNNING
        assert record.steps["m"].items is not None and record.steps["m"].items.total == 3000
        # The resume reads the run it continues whole, once: its items are what it continues.
        assert built == 3000
    finally:
        second.close()


async def test_a_small_map_steps_record_still_lists_every_item_and_its_output(client: Client) -> None:
    await ok(client, "create_workflow", _big_map(100))
    run = await ok(client, "execute_workflow", {"workflow_name": "big"})
    items = run["steps"]["m"]["items"]
    assert len(items["items"]) == 100 and items["next_offset"] is None and items["output_omitted"] is False
    assert run["steps"]["m"]["output"] == {"outputs": list(range(100)), "failed": []}
    assert run["note"] is None


async def test_get_workflow_run_refuses_a_page_argument_it_cannot_take(client: Client) -> None:
    await ok(client, "create_workflow", _big_map(3))
    run = await ok(client, "execute_workflow", {"workflow_name": "big"})
    for bad, named in (
        ({"items_limit": 5000}, "items_limit"),
        ({"items_offset": -1}, "items_offset"),
        ({"items_status": ["broken"]}, "items_status"),
    ):
        refused = await call(client, "get_workflow_run", {"run_id": run["run_id"], **bad})
        assert refused.is_error and named in refused.content[0].text, refused.content


@pytest.fixture
def durable_tools(tmp_path: Path) -> Iterator[OrchestrationMCPTools]:
    tools = OrchestrationMCPTools(engine_factory=lambda policy: make_engine(tmp_path, policy, durable=True))
    yield tools
    tools.close()


async def _stored_big_map(client: Client, tools: OrchestrationMCPTools, state_db: Path) -> str:
    """A finished run of a 3,000-item map (3 failed) in the durable store, every item row of which but
    those of items 1000-1009 is made undecodable in the file: a call that read one would fail."""
    await ok(client, "create_workflow", _big_map(3000, broken_every=1000))
    run = await ok(client, "execute_workflow", {"workflow_name": "big"})
    assert run["status"] == "completed"
    tools.engine.workflow_manager.store.flush()
    kept = [f"m[{i}]" for i in range(1000, 1010)]
    conn = sqlite3.connect(state_db)
    try:
        with conn:
            conn.execute(
                "UPDATE steps SET result = 'not JSON' WHERE run_id = ? AND name GLOB 'm[[]*' "
                f"AND name NOT IN ({','.join('?' * len(kept))})",
                (run["run_id"], *kept),
            )
    finally:
        conn.close()
    return str(run["run_id"])


async def test_list_workflow_runs_reads_no_step_row(
    durable_tools: OrchestrationMCPTools, tmp_path: Path
) -> None:
    async with Client(build_server(durable_tools)) as client:
        run_id = await _stored_big_map(client, durable_tools, tmp_path / "state" / "state.db")
        listed = await ok(client, "list_workflow_runs", {})  # summaries: they show no step
        assert [(r["run_id"], r["status"]) for r in listed["runs"]] == [(run_id, "completed")]


async def test_a_page_of_a_stored_map_reads_only_the_rows_of_its_items(
    durable_tools: OrchestrationMCPTools, tmp_path: Path
) -> None:
    async with Client(build_server(durable_tools)) as client:
        run_id = await _stored_big_map(client, durable_tools, tmp_path / "state" / "state.db")
        shown = await ok(
            client, "get_workflow_run", {"run_id": run_id, "items_offset": 1000, "items_limit": 10}
        )
        page = shown["steps"]["m"]["items"]
        assert [(i["index"], i["output"]) for i in page["items"]] == [(i, i) for i in range(1000, 1010)]
        assert page["counts"] == {"completed": 2997, "failed": 3} and page["next_offset"] == 1010
        assert shown["steps"]["m"]["output"] is None and page["output_omitted"] is True


async def test_the_128_kib_of_listed_items_are_shared_by_all_map_steps_of_a_record(client: Client) -> None:
    # Each map step's page used to stop at 128 KiB on its own: ten map steps made a record of 1.3 MB.
    step = {"module": "core", "action": "echo", "parameters": {"message": "{{item}}"}}
    items = ["z" * 60_000] * 3
    steps = [{**step, "name": "m1", "for_each": items}, {**step, "name": "m2", "for_each": items}]
    run = await client.call_tool(
        "create_complex_workflow", {"name": "twomaps", "workflow_definition": {"steps": steps}}
    )
    assert run.structured_content is not None, run.content
    pages = {name: run.structured_content["steps"][name]["items"] for name in ("m1", "m2")}
    assert [len(pages[n]["items"]) for n in ("m1", "m2")] == [2, 1]
    assert pages["m2"]["next_offset"] == 1 and pages["m2"]["output_omitted"]
