"""create_project through the real MCP Client never replaces a workflow it did not create, and says how
long a name each template accepts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp import Client

from codomyrmex_orchestration.server.app import build_server
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools, ServerPolicy
from tests.helpers.mcp_calls import call, ok
from tests.server.conftest import make_engine

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


@pytest.fixture
def tools_without_code(tmp_path: Path) -> Iterator[OrchestrationMCPTools]:
    """Tools over a real engine that refuses code execution (the network transports' default)."""
    policy = ServerPolicy.for_transport("streamable-http", None)
    the_tools = OrchestrationMCPTools(engine_factory=lambda p: make_engine(tmp_path, p), policy=policy)
    yield the_tools
    the_tools.close()


async def test_the_longest_project_name_is_listed_per_template_and_named_by_the_refusal(
    tools_without_code: OrchestrationMCPTools, tmp_path: Path
) -> None:
    """The refusal used to say only that a workflow name 'would exceed 128 characters'."""
    async with Client(build_server(tools_without_code)) as client:
        templates = (await ok(client, "list_project_templates", {}))["templates"]
        longest = {t["name"]: t["max_project_name"] for t in templates}
        assert longest["custom"] == 128 - len(".check") and longest["ml_model"] == 109
        refused = await call(client, "create_project", {"name": "x" * 123, "template": "custom"})
        assert refused.is_error
        message = refused.content[0].text
        assert "at most 122 characters" in message and "'<project>.check'" in message, message
        assert not (tmp_path / "projects" / ("x" * 123)).exists()
        made = await ok(client, "create_project", {"name": "x" * 122, "template": "custom"})
        assert list(made["workflows_not_registered"]) == ["x" * 122 + ".check"]
