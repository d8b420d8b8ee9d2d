"""create_project through the real MCP Client never replaces a workflow it did not create."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from tests.helpers.mcp_calls import call, ok

pytestmark = pytest.mark.anyio

VICTIM_CHECK = {
    "name": "victim.check",
    "description": "someone else's workflow",
    "steps": [{"name": "mine", "module": "core", "action": "echo", "parameters": {"message": "keep me"}}],
}


async def test_create_project_refuses_a_taken_workflow_name_and_replaces_it_only_when_asked(
    client: Client, tmp_path: Path
) -> None:
    await ok(client, "create_workflow", VICTIM_CHECK)

    refused = await call(client, "create_project", {"name": "victim", "template": "custom"})
    assert refused.is_error
    message = refused.content[0].text
    assert "'victim.check' already exists" in message
    assert "another project name" in message and "overwrite_workflows" in message
    kept = await ok(client, "get_workflow", {"name": "victim.check"})
    assert [s["module"] for s in kept["steps"]] == ["core"]
    assert (await ok(client, "list_projects", {}))["count"] == 0
    assert not (tmp_path / "projects" / "victim").exists()

    replaced = await ok(
        client, "create_project", {"name": "victim", "template": "custom", "overwrite_workflows": True}
    )
    assert replaced["workflows"] == ["victim.check"]
    now = await ok(client, "get_workflow", {"name": "victim.check"})
    assert "core" not in {s["module"] for s in now["steps"]}
