"""A third-party client: the MCP Inspector CLI drives the installed console script over stdio and
streamable HTTP, and we assert on its JSON output. Skipped only when npx is not installed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

NPX = shutil.which("npx")
INSPECTOR = "@modelcontextprotocol/inspector@2.12.0"
SCRIPT = Path(sys.executable).parent / "codomyrmex-orchestration"
TOKEN = "inspector-e2e-token"
TEN = {
    "execute_workflow",
    "create_workflow",
    "list_workflows",
    "create_project",
    "list_projects",
    "execute_task",
    "get_system_status",
    "get_health_status",
    "allocate_resources",
    "create_complex_workflow",
}
STEPS = json.dumps([{"name": "a", "module": "core", "action": "echo", "parameters": {"message": 42}}])

pytestmark = pytest.mark.skipif(NPX is None, reason="npx (Node.js) is not installed")


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODOMYRMEX_")}
    env["CODOMYRMEX_STATE_DIR"] = str(tmp_path / "state")
    env["CODOMYRMEX_CONFIG_DIR"] = str(tmp_path / "config")
    env["CODOMYRMEX_PROJECTS_DIR"] = str(tmp_path / "projects")
    return env


def _data_dir_env(tmp_path: Path, target: list[str]) -> list[str]:
    """The Inspector starts a stdio server with only a default environment (PATH, HOME...), so unset
    paths would land in the real per-user data directory: hand it a private one."""
    return ["-e", f"CODOMYRMEX_DATA_DIR={tmp_path / 'data'}"] if target[0] == str(SCRIPT) else []


def inspector(tmp_path: Path, target: list[str], *args: str) -> dict[str, Any]:
    """Run the Inspector CLI once and return its JSON output (stdout)."""
    assert NPX is not None
    done = subprocess.run(
        [NPX, "-y", INSPECTOR, "--cli", *_data_dir_env(tmp_path, target), *target, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(tmp_path),
        timeout=180,
        check=False,
    )
    assert done.stdout.strip(), done.stderr
    return dict(json.loads(done.stdout))


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**_env(tmp_path), "CODOMYRMEX_AUTH_TOKEN": TOKEN}
    args = [str(SCRIPT), "serve", "--transport", "streamable-http", "--port", str(port)]
    with subprocess.Popen(
        args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd=tmp_path, env=env, text=True
    ) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "Application startup complete" in line:
                break
        try:
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
            proc.stderr.close()


def _tool_names(listing: dict[str, Any]) -> set[str]:
    return {tool["name"] for tool in listing["tools"]}


def test_the_inspector_lists_the_tools_over_stdio(tmp_path: Path) -> None:
    listing = inspector(tmp_path, [str(SCRIPT), "serve"], "--method", "tools/list")
    assert _tool_names(listing) >= TEN
    tool = next(t for t in listing["tools"] if t["name"] == "execute_workflow")
    assert tool["inputSchema"]["required"] == ["workflow_name"]
    assert tool["annotations"]["readOnlyHint"] is False


def test_the_inspector_lists_the_tools_over_streamable_http_with_a_token(
    tmp_path: Path, http_server: str
) -> None:
    listing = inspector(
        tmp_path,
        [http_server],
        "--transport",
        "http",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--method",
        "tools/list",
    )
    assert _tool_names(listing) >= TEN


def test_the_inspector_creates_and_executes_a_workflow_over_stdio(tmp_path: Path) -> None:
    target = [str(SCRIPT), "serve"]
    created = inspector(
        tmp_path,
        target,
        "--method",
        "tools/call",
        "--tool-name",
        "create_workflow",
        "--tool-arg",
        "name=e2e",
        f"steps={STEPS}",
    )
    assert created["structuredContent"]["workflow_name"] == "e2e", created
    run = inspector(
        tmp_path,
        target,
        "--method",
        "tools/call",
        "--tool-name",
        "execute_workflow",
        "--tool-arg",
        "workflow_name=e2e",
    )
    assert run["structuredContent"]["status"] == "completed", run
    assert run["structuredContent"]["steps"]["a"]["output"] == 42


def test_the_inspector_creates_and_executes_a_workflow_over_streamable_http(
    tmp_path: Path, http_server: str
) -> None:
    target = [http_server, "--transport", "http", "--header", f"Authorization: Bearer {TOKEN}"]
    created = inspector(
        tmp_path,
        target,
        "--method",
        "tools/call",
        "--tool-name",
        "create_workflow",
        "--tool-arg",
        "name=e2e",
        f"steps={STEPS}",
    )
    assert created["structuredContent"]["steps_count"] == 1, created
    run = inspector(
        tmp_path,
        target,
        "--method",
        "tools/call",
        "--tool-name",
        "execute_workflow",
        "--tool-arg",
        "workflow_name=e2e",
    )
    assert run["structuredContent"]["status"] == "completed", run
