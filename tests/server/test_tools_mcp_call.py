"""mcp.call through the MCP tools (the real Client, in process): list_actions shows the configured
servers and a server's tools, validate_workflow checks tools and arguments against the real echo
server, and network transports refuse it unless code execution is allowed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from codomyrmex_orchestration.compose import build_engine
from codomyrmex_orchestration.config import Settings
from codomyrmex_orchestration.server.app import build_server
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools, ServerPolicy
from tests.helpers.echo_mcp_server import calls, entry
from tests.helpers.mcp_calls import call, ok

pytestmark = pytest.mark.anyio


def mcp_tools(root: Path, policy: ServerPolicy, servers: dict[str, Any]) -> OrchestrationMCPTools:
    servers_file = root / "config" / "mcp_servers.json"
    servers_file.parent.mkdir(parents=True, exist_ok=True)
    servers_file.write_text(json.dumps({"mcpServers": servers}), encoding="utf-8")
    settings = Settings(data_dir=root, mcp_servers_file=servers_file, load_samples=False, durable=False)

    def factory(policy: ServerPolicy) -> Any:
        return build_engine(settings.model_copy(update={"allow_shell": policy.allow_code_execution}))

    return OrchestrationMCPTools(engine_factory=factory, policy=policy)


@pytest.fixture
def calls_file(tmp_path: Path) -> Path:
    return tmp_path / "calls.txt"


@pytest.fixture
def stdio_tools(tmp_path: Path, calls_file: Path) -> Iterator[OrchestrationMCPTools]:
    servers = {"echo": entry(calls_file, description="echoes"), "docs": {"url": "http://127.0.0.1:9/mcp"}}
    the_tools = mcp_tools(tmp_path, ServerPolicy.for_transport("stdio", None), servers)
    yield the_tools
    the_tools.close()


@pytest.fixture
async def mcp_client(stdio_tools: OrchestrationMCPTools) -> AsyncIterator[Client]:
    async with Client(build_server(stdio_tools)) as the_client:
        yield the_client


def step(tool: str, arguments: Any, server: str = "echo") -> dict[str, Any]:
    parameters = {"server": server, "tool": tool, "arguments": arguments}
    return {"name": "call", "module": "mcp", "action": "call", "parameters": parameters}


async def test_list_actions_shows_the_configured_servers_without_their_environment(
    mcp_client: Client,
) -> None:
    listed = await ok(mcp_client, "list_actions", {})
    assert "mcp.call" in [a["name"] for a in listed["actions"]]
    servers = {s["name"]: s for s in listed["mcp_servers"]}
    assert sorted(servers) == ["docs", "echo"]
    assert servers["echo"]["transport"] == "stdio" and servers["echo"]["description"] == "echoes"
    assert servers["docs"]["transport"] == "streamable-http"
    assert servers["docs"]["url"] == "http://127.0.0.1:9/mcp"
    assert "env" not in servers["echo"] and "ECHO_CALLS_FILE" not in json.dumps(listed)
    assert "tools" not in listed or listed["tools"] is None


async def test_list_actions_with_a_server_lists_its_tools_and_input_schemas(mcp_client: Client) -> None:
    listed = await ok(mcp_client, "list_actions", {"server": "echo"})
    tools = {t["name"]: t for t in listed["tools"]}
    assert sorted(tools) == ["echo", "fail", "shout", "wait"]
    schema = tools["echo"]["input_schema"]
    assert schema["required"] == ["message"] and schema["properties"]["count"]["type"] == "integer"


async def test_list_actions_with_an_unknown_server_names_the_configured_ones(mcp_client: Client) -> None:
    result = await call(mcp_client, "list_actions", {"server": "ecko"})
    assert result.is_error
    text = result.content[0].text
    assert "unknown MCP server 'ecko'" in text and "configured servers: docs, echo" in text


async def test_validate_names_a_tool_the_server_does_not_have_and_lists_its_tools(mcp_client: Client) -> None:
    checked = await ok(mcp_client, "validate_workflow", {"name": "w", "steps": [step("ecko", {})]})
    assert checked["valid"] is False
    [problem] = checked["problems"]
    assert "has no tool 'ecko'" in problem and "did you mean 'echo'" in problem
    assert "its tools: echo, fail, shout, wait" in problem


async def test_validate_checks_the_arguments_against_the_tools_input_schema(mcp_client: Client) -> None:
    checked = await ok(
        mcp_client, "validate_workflow", {"name": "w", "steps": [step("echo", {"count": "three"})]}
    )
    assert checked["valid"] is False
    problems = " | ".join(checked["problems"])
    assert "parameters.arguments: 'message' is a required property" in problems
    assert "parameters.arguments.count: 'three' is not of type 'integer'" in problems


async def test_validate_accepts_references_where_the_schema_wants_other_types(
    mcp_client: Client, calls_file: Path
) -> None:
    steps = [
        {"name": "first", "module": "core", "action": "echo", "parameters": {"message": "3"}},
        step("echo", {"message": "{{steps.first.output.message}}", "count": "{{params.n}}"}),
    ]
    checked = await ok(mcp_client, "validate_workflow", {"name": "w", "steps": steps, "parameters": {"n": 2}})
    assert checked["valid"] is True, checked["problems"]
    assert calls(calls_file) == 0  # listing tools is not calling one


async def test_validate_skips_the_tool_checks_of_a_server_it_cannot_reach(mcp_client: Client) -> None:
    checked = await ok(
        mcp_client, "validate_workflow", {"name": "w", "steps": [step("anything", {}, "docs")]}
    )
    assert checked["valid"] is True, checked["problems"]


async def test_a_workflow_run_through_the_tools_calls_the_server(
    mcp_client: Client, calls_file: Path
) -> None:
    await ok(mcp_client, "create_workflow", {"name": "w", "steps": [step("echo", {"message": "hey"})]})
    run = await ok(mcp_client, "execute_workflow", {"workflow_name": "w"})
    assert run["status"] == "completed"
    assert run["steps"]["call"]["output"]["message"] == "hey"
    assert calls(calls_file, "echo") == 1


@pytest.mark.parametrize(("allow_shell", "refused"), [(None, True), (True, False)])
async def test_on_a_network_transport_mcp_call_is_refused_unless_code_execution_is_allowed(
    tmp_path: Path, calls_file: Path, allow_shell: bool | None, refused: bool
) -> None:
    policy = ServerPolicy.for_transport("streamable-http", allow_shell)
    the_tools = mcp_tools(tmp_path, policy, {"echo": entry(calls_file)})
    try:
        async with Client(build_server(the_tools)) as client:
            checked = await ok(
                client, "validate_workflow", {"name": "w", "steps": [step("echo", {"message": "x"})]}
            )
            listed = await ok(client, "list_actions", {})
            tools = await call(client, "list_actions", {"server": "echo"})
            task = await call(
                client,
                "execute_task",
                {
                    "name": "call",
                    "module": "mcp",
                    "action": "call",
                    "parameters": step("echo", {"message": "x"})["parameters"],
                },
            )
    finally:
        the_tools.close()
    [info] = [a for a in listed["actions"] if a["name"] == "mcp.call"]
    assert info["allowed"] is not refused
    assert checked["valid"] is not refused
    if refused:
        assert "code execution is disabled" in " ".join(checked["problems"])
        assert tools.is_error and "CODOMYRMEX_ALLOW_SHELL" in tools.content[0].text  # nothing started
        assert calls(calls_file) == 0
    else:
        assert not tools.is_error and tools.structured_content["tools"], tools.content
        assert not task.is_error, task.content
        assert task.structured_content["result"]["message"] == "x"
        assert calls(calls_file, "echo") == 1


async def test_list_actions_with_a_server_it_cannot_reach_says_so(mcp_client: Client) -> None:
    result = await call(mcp_client, "list_actions", {"server": "docs"})
    assert result.is_error
    text = result.content[0].text
    assert "MCP server 'docs' is unreachable" in text and "mcp_servers.json" in text
