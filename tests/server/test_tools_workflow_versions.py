"""Definition versions through the real MCP Client: list_workflows and get_workflow show them, and
get_workflow fetches an older version a stored run still refers to."""

from __future__ import annotations

from typing import Any

import pytest
from mcp import Client

from tests.helpers.mcp_calls import call, ok

pytestmark = pytest.mark.anyio


def _workflow(message: str) -> dict[str, Any]:
    return {
        "name": "versioned",
        "steps": [{"name": "say", "module": "core", "action": "echo", "parameters": {"message": message}}],
    }


async def test_get_and_list_workflows_show_versions_and_fetch_one_a_run_refers_to(client: Client) -> None:
    await ok(client, "create_workflow", _workflow("first"))
    run = await ok(client, "execute_workflow", {"workflow_name": "versioned", "wait": True})
    assert run["status"] == "completed"
    await ok(client, "create_workflow", {**_workflow("second"), "overwrite": True})
    listed = await ok(client, "list_workflows", {})
    assert listed["workflows"][0]["version"] == 2 and listed["workflows"][0]["digest"]
    current = await ok(client, "get_workflow", {"name": "versioned"})
    assert current["version"] == 2 and current["steps"][0]["parameters"]["message"] == "second"
    old = await ok(client, "get_workflow", {"name": "versioned", "version": 1})
    assert old["version"] == 1 and old["steps"][0]["parameters"]["message"] == "first"
    assert old["digest"] != current["digest"]
    missing = await call(client, "get_workflow", {"name": "versioned", "version": 9})
    assert missing.is_error and "version 9" in missing.content[0].text
