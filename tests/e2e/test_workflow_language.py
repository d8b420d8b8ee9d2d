"""The workflow language end to end, through the installed server: one workflow lists 50 items, maps
over them (``max_parallel: 8``) calling a second MCP server per item (``mcp.call``), asks a person
(``core.approve``, answered by the client's elicitation callback), uses a secret, and completes; its
state and logs never hold the secret, and a second run answered by the step cache calls the other server
no more. Then a kill -9 in the middle of a map: after the restart, ``resume_workflow_run`` calls only
the items that had not completed."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters

from tests.helpers import echo_mcp_server
from tests.helpers.mcp_calls import ok
from tests.helpers.served import served, server_env

pytestmark = pytest.mark.anyio

SECRET = "tok-5e1f-2c3b-4a59-8d77"
ITEMS = [f"file-{i:02d}.txt" for i in range(50)]
SCRIPT = Path(sys.executable).parent / "codomyrmex-orchestration"


def servers_file(root: Path, calls: Path) -> Path:
    path = root / "mcp_servers.json"
    path.write_text(json.dumps({"mcpServers": {"echo": echo_mcp_server.entry(calls)}}))
    return path


def pipeline(
    *, tool: str = "echo", arguments: dict[str, Any] | None = None, **map_fields: Any
) -> dict[str, Any]:
    each = {
        "name": "each",
        "module": "mcp",
        "action": "call",
        "dependencies": ["list"],
        "for_each": "{{steps.list.output.files}}",
        "parameters": {"server": "echo", "tool": tool, "arguments": arguments or {"message": "{{item}}"}},
        **map_fields,
    }
    return {
        "name": "pipeline",
        "steps": [
            {"name": "list", "module": "core", "action": "set", "parameters": {"files": ITEMS}},
            each,
            {
                "name": "approve",
                "module": "core",
                "action": "approve",
                "dependencies": ["each"],
                "parameters": {
                    "message": "Publish the 50 results?",
                    "schema": {
                        "type": "object",
                        "properties": {"note": {"type": "string"}},
                        "required": ["note"],
                    },
                },
            },
            {
                "name": "publish",
                "module": "core",
                "action": "echo",
                "dependencies": ["approve"],
                "parameters": {
                    "message": "token={{secrets.API_TOKEN}} note={{steps.approve.output.content.note}}"
                },
            },
        ],
    }


async def test_map_mcp_call_approval_secret_and_cache_over_stdio(tmp_path: Path) -> None:
    calls, log = tmp_path / "echo-calls", tmp_path / "server.log"
    env = server_env(tmp_path, {"CODOMYRMEX_SECRET_API_TOKEN": SECRET})
    env["CODOMYRMEX_MCP_SERVERS_FILE"] = str(servers_file(tmp_path, calls))
    # The server's stderr (its logs, at debug level) into a file the test reads afterwards.
    command = f'exec "{SCRIPT}" serve --log-level debug 2>>"{log}"'
    params = StdioServerParameters(command="/bin/sh", args=["-c", command], cwd=tmp_path, env=env)
    asked: list[types.ElicitRequestParams] = []

    async def accept(context: Any, request: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(request)
        return types.ElicitResult(action="accept", content={"note": "ship it"})

    with anyio.fail_after(120):
        async with Client(params, mode="legacy", elicitation_callback=accept) as client:
            await ok(client, "create_workflow", pipeline(max_parallel=8, cache={"ttl_seconds": 3600}))
            first = await ok(client, "execute_workflow", {"workflow_name": "pipeline", "timeout_seconds": 90})
            calls_after_first = echo_mcp_server.calls(calls, "echo")
            second = await ok(
                client, "execute_workflow", {"workflow_name": "pipeline", "timeout_seconds": 90}
            )
            calls_after_second = echo_mcp_server.calls(calls, "echo")

    assert first["status"] == "completed", first.get("error")
    each = first["steps"]["each"]
    assert [out["message"] for out in each["output"]] == ITEMS  # one call per item, outputs in item order
    assert each["items"]["total"] == 50 and each["items"]["counts"] == {"completed": 50}
    assert calls_after_first == 50
    assert len(asked) == 2 and asked[0].message == "Publish the 50 results?"
    assert first["steps"]["approve"]["output"] == {"action": "accept", "content": {"note": "ship it"}}
    assert first["steps"]["publish"]["output"] == "token=[secret:API_TOKEN] note=ship it"

    assert second["status"] == "completed", second.get("error")
    assert [out["message"] for out in second["steps"]["each"]["output"]] == ITEMS
    assert calls_after_second == calls_after_first  # every item answered by the cache: no mcp.call made

    state = b"".join(p.read_bytes() for p in (tmp_path / "state").rglob("*") if p.is_file())
    logs = log.read_bytes()
    assert b"[secret:API_TOKEN]" in state and SECRET.encode() not in state
    assert b"mcp.connected" in logs  # the logs were written, and are read here
    assert SECRET.encode() not in logs
    assert SECRET not in json.dumps([first, second])


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


async def test_after_kill_9_in_the_middle_of_a_map_resume_calls_only_the_items_not_completed(
    tmp_path: Path,
) -> None:
    calls = tmp_path / "echo-calls"
    env = {
        "CODOMYRMEX_SECRET_API_TOKEN": SECRET,
        "CODOMYRMEX_MCP_SERVERS_FILE": str(servers_file(tmp_path, calls)),
    }
    args = ["--allow-shell"]  # mcp.call starts processes: allowed over HTTP only when asked (loopback here)
    # Each item waits 50 ms in the echo server, two at a time: the map takes over a second, long enough to
    # kill the server in its middle.
    workflow = pipeline(tool="wait", arguments={"seconds": 0.05}, max_parallel=2)
    with served(tmp_path / "server", args, env) as server:
        async with Client(server.url, mode="legacy") as client:
            await ok(client, "create_workflow", workflow)
            started = await ok(client, "execute_workflow", {"workflow_name": "pipeline", "wait": False})
            deadline = time.monotonic() + 60
            while echo_mcp_server.calls(calls) < 10:  # a file another process appends to: a bounded poll
                assert time.monotonic() < deadline, "the map never got going"
                await anyio.sleep(0.01)
            echo_pids = children(server.proc.pid)
            server.proc.kill()  # kill -9 in the middle of the map
            server.proc.wait()
    # The echo server dies with its parent; once it is gone no call can be counted any more.
    assert echo_pids and all(echo_mcp_server.gone(pid) for pid in echo_pids)
    called_before = echo_mcp_server.calls(calls)
    assert 10 <= called_before < 50

    with served(tmp_path / "server", args, env) as server:
        async with Client(server.url, mode="legacy") as client:
            run_id = started["run_id"]
            interrupted = await ok(client, "get_workflow_run", {"run_id": run_id})
            kept = interrupted["steps"]["each"]["items"]["counts"].get("completed", 0)
            # The resumer declared no elicitation: the resumed run waits for its answer, and the call
            # returns as soon as it does; respond_to_run answers it and waits for the end.
            resumed = await ok(client, "resume_workflow_run", {"run_id": run_id})
            answer = {"run_id": run_id, "step": "approve", "action": "accept"}
            ended = await ok(client, "respond_to_run", {**answer, "content": {"note": "after the crash"}})

    assert interrupted["status"] == "interrupted"
    assert 0 < kept <= called_before
    assert resumed["status"] == "waiting_for_input"
    assert ended["status"] == "completed", ended.get("error")
    assert len(ended["steps"]["each"]["output"]) == 50
    # Every item that had completed before the kill kept its output: only the others were called again.
    assert echo_mcp_server.calls(calls) == called_before + (50 - kept)
    assert ended["steps"]["publish"]["output"] == "token=[secret:API_TOKEN] note=after the crash"
