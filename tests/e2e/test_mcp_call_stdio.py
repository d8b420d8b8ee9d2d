"""The installed server over stdio, driven by the SDK client, runs a workflow whose steps call a second
MCP server (the echo server) through mcp.call; when the client goes, both servers are gone."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

from tests.helpers.echo_mcp_server import calls, entry, gone

pytestmark = pytest.mark.anyio

SCRIPT = Path(sys.executable).parent / "codomyrmex-orchestration"


async def test_a_workflow_served_over_stdio_calls_another_mcp_server_per_step(tmp_path: Path) -> None:
    calls_file = tmp_path / "calls.txt"
    servers_file = tmp_path / "mcp_servers.json"
    servers_file.write_text(json.dumps({"mcpServers": {"echo": entry(calls_file)}}), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODOMYRMEX_")}
    env.update(CODOMYRMEX_DATA_DIR=str(tmp_path / "data"), CODOMYRMEX_MCP_SERVERS_FILE=str(servers_file))
    steps = [
        {
            "name": f"s{i}",
            "module": "mcp",
            "action": "call",
            "parameters": {"server": "echo", "tool": "echo", "arguments": {"message": f"item {i}"}},
        }
        for i in range(5)
    ]
    params = StdioServerParameters(command=str(SCRIPT), args=["serve"], cwd=tmp_path, env=env)
    with anyio.fail_after(90):
        async with Client(params) as client:
            listed = await client.call_tool("list_actions", {"server": "echo"})
            await client.call_tool("create_workflow", {"name": "per_item", "steps": steps})
            result = await client.call_tool("execute_workflow", {"workflow_name": "per_item"})
    assert listed.structured_content is not None
    assert [t["name"] for t in listed.structured_content["tools"]] == ["echo", "fail", "shout", "wait"]
    run = result.structured_content
    assert run is not None and run["status"] == "completed", result.content
    assert [run["steps"][f"s{i}"]["output"]["message"] for i in range(5)] == [f"item {i}" for i in range(5)]
    assert calls(calls_file, "echo") == 5
    [pid] = {step["output"]["pid"] for step in run["steps"].values()}
    assert gone(pid)
