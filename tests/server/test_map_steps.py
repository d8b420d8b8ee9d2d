"""Map steps (``for_each``) through the real MCP Client: validation, the run record, and what teaches them."""

from __future__ import annotations

import pytest
from mcp import Client

from tests.helpers.mcp_calls import call, ok

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
