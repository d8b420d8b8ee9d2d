"""The installed console script over stdio: a real MCP client, protocol-only stdout, clean SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

pytestmark = pytest.mark.anyio

SCRIPT = Path(sys.executable).parent / "codomyrmex-orchestration"


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODOMYRMEX_")}
    env["CODOMYRMEX_STATE_DIR"] = str(tmp_path / "state")
    env["CODOMYRMEX_CONFIG_DIR"] = str(tmp_path / "config")
    env["CODOMYRMEX_PROJECTS_DIR"] = str(tmp_path / "projects")
    return env


async def test_the_console_script_serves_the_tools_over_stdio(tmp_path: Path) -> None:
    assert SCRIPT.exists(), "the package must be installed (make venv)"
    params = StdioServerParameters(command=str(SCRIPT), args=["serve"], cwd=tmp_path, env=_env(tmp_path))
    with anyio.fail_after(30):
        async with Client(params) as client:
            tools = await client.list_tools()
            invalid = await client.call_tool("execute_workflow", {"workflow_name": 7})
            prompt = await client.get_prompt("workflow_step_format")
            info = client.server_info
    assert len(tools.tools) == 23
    assert info is not None and info.name == "codomyrmex-orchestration"
    assert invalid.is_error and "argument 'workflow_name'" in str(invalid.content[0].text)
    assert prompt.messages


def test_stdout_carries_only_protocol_and_sigterm_stops_the_server_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [str(SCRIPT), "serve", "--log-level", "debug"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=_env(tmp_path),
        text=True,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        request = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"},
            },
        }
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        reply = json.loads(proc.stdout.readline())
        assert reply["id"] == 1 and reply["result"]["serverInfo"]["name"] == "codomyrmex-orchestration"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        rest = proc.stdout.read()
        assert proc.stderr is not None
        errors = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert code == 0, errors
    assert all(json.loads(line) for line in rest.splitlines() if line.strip())
    assert "server.start" in errors and "server.stop" in errors


def test_the_http_server_process_answers_healthz_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    import socket

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [str(SCRIPT), "serve", "--transport", "streamable-http", "--port", str(port)]
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=_env(tmp_path), text=True
    ) as proc:
        try:
            assert proc.stderr is not None and proc.stdout is not None
            seen = []
            for line in proc.stderr:
                seen.append(line)
                if "Uvicorn running" in line or "Application startup complete" in line:
                    break
            health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=15)
            errors = "".join(seen) + proc.stderr.read()
            out = proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()
    assert health.status_code == 200
    assert code == 0, errors
    assert out == ""
    assert f"http://127.0.0.1:{port}/mcp" in errors and "server.stop" in errors
