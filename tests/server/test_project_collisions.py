"""create_project through the real MCP Client never replaces a workflow it did not create."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from codomyrmex_orchestration.server.app import build_server
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools

pytestmark = pytest.mark.anyio

VICTIM_CHECK = {
    "name": "victim.check",
    "description": "someone else's workflow",
    "steps": [{"name": "mine", "module": "core", "action": "echo", "parameters": {"message": "keep me"}}],
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


async def test_create_project_refuses_a_taken_workflow_name_and_replaces_it_only_when_asked(
    client: Client, tmp_path: Path
) -> None:
    await _ok(client, "create_workflow", VICTIM_CHECK)

    refused = await _call(client, "create_project", {"name": "victim", "template": "custom"})
    assert refused.is_error
    message = refused.content[0].text
    assert "'victim.check' already exists" in message
    assert "another project name" in message and "overwrite_workflows" in message
    kept = await _ok(client, "get_workflow", {"name": "victim.check"})
    assert [s["module"] for s in kept["steps"]] == ["core"]
    assert (await _ok(client, "list_projects", {}))["count"] == 0
    assert not (tmp_path / "projects" / "victim").exists()

    replaced = await _ok(
        client, "create_project", {"name": "victim", "template": "custom", "overwrite_workflows": True}
    )
    assert replaced["workflows"] == ["victim.check"]
    now = await _ok(client, "get_workflow", {"name": "victim.check"})
    assert "core" not in {s["module"] for s in now["steps"]}
