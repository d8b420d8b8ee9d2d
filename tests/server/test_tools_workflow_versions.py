"""Definition versions through the real MCP Client: list_workflows and get_workflow show them, and
get_workflow fetches an older version a stored run still refers to."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from mcp import Client

from codomyrmex_orchestration.server.app import build_server
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools

pytestmark = pytest.mark.anyio


def _workflow(message: str) -> dict[str, Any]:
    return {
        "name": "versioned",
        "steps": [{"name": "say", "module": "core", "action": "echo", "parameters": {"message": message}}],
    }


@pytest.fixture
async def client(tools: OrchestrationMCPTools) -> AsyncIterator[Client]:
    async with Client(build_server(tools)) as the_client:
        yield the_client


async def _call(client: Client, name: str, args: dict[str, Any]) -> Any:
    with anyio.fail_after(30):
        return await client.call_tool(name, args)


async def _ok(client: Client, name: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await _call(client, name, args)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def test_get_and_list_workflows_show_versions_and_fetch_one_a_run_refers_to(client: Client) -> None:
    await _ok(client, "create_workflow", _workflow("first"))
    run = await _ok(client, "execute_workflow", {"workflow_name": "versioned", "wait": True})
    assert run["status"] == "completed"
    await _ok(client, "create_workflow", {**_workflow("second"), "overwrite": True})
    listed = await _ok(client, "list_workflows", {})
    assert listed["workflows"][0]["version"] == 2 and listed["workflows"][0]["digest"]
    current = await _ok(client, "get_workflow", {"name": "versioned"})
    assert current["version"] == 2 and current["steps"][0]["parameters"]["message"] == "second"
    old = await _ok(client, "get_workflow", {"name": "versioned", "version": 1})
    assert old["version"] == 1 and old["steps"][0]["parameters"]["message"] == "first"
    assert old["digest"] != current["digest"]
    missing = await _call(client, "get_workflow", {"name": "versioned", "version": 9})
    assert missing.is_error and "version 9" in missing.content[0].text
