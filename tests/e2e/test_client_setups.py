"""Each client set-up in the README, done the way it says: its install commands run into fresh temporary
environments (one install per method, shared by the snippets that use it), then the client's command is
started over stdio from an empty folder elsewhere and a real MCP client lists the tools.

``/path/to/codomyrmex-orchestration`` in the README stands for this checkout and
``/home/me/.venvs/codomyrmex`` for a temporary virtualenv; nothing else is changed. uv comes from the dev
extras (``.venv/bin/uv``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CHECKOUT = "/path/to/codomyrmex-orchestration"
VENV = "/home/me/.venvs/codomyrmex"
DEV_BIN = Path(sys.executable).parent  # uv and uvx live here (dev extras)
EXPECTED_TOOLS = {"execute_workflow", "create_workflow", "list_workflows", "get_health_status"}


def _blocks(kind: str) -> dict[str, str]:
    """``<!-- kind: name -->`` followed by a fenced block: name -> the block's text."""
    pattern = rf"<!-- {kind}: ([a-z-]+) -->\n```[a-z]*\n(.*?)\n```"
    return dict(re.findall(pattern, README.read_text(), re.DOTALL))


@dataclass
class Setup:
    """Where the README's commands run: a temporary home for the venv and uv's tool folders."""

    root: Path
    env: dict[str, str]

    def text(self, snippet: str) -> str:
        return snippet.replace(CHECKOUT, str(ROOT)).replace(VENV, str(self.root / "venv"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """Run every install block of the README once (module scope: the snippets share the installs)."""
    if shutil.which("uv", path=str(DEV_BIN)) is None:
        pytest.skip("uv is not installed (pip install -e '.[dev]')")
    root = tmp_path_factory.mktemp("client-setups")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODOMYRMEX_", "VIRTUAL_ENV", "UV_"))}
    env.update(
        PATH=os.pathsep.join([str(root / "bin"), str(DEV_BIN), env.get("PATH", "")]),
        UV_TOOL_DIR=str(root / "uv-tools"),  # where `uv tool install` puts the tool's environment
        UV_TOOL_BIN_DIR=str(root / "bin"),  # and its command (~/.local/bin by default)
        UV_PYTHON=sys.executable,  # any Python 3.11+ would do; this one is installed for sure
        UV_PYTHON_DOWNLOADS="never",
        XDG_DATA_HOME=str(root / "data"),  # the server's per-user data directory
    )
    the_setup = Setup(root, env)
    installs = _blocks("install")
    assert set(installs) == {"uv-tool", "venv"}
    for name, block in installs.items():
        for line in the_setup.text(block).splitlines():
            argv = shlex.split(line)
            argv[0] = shutil.which(argv[0], path=env["PATH"]) or argv[0]
            done = subprocess.run(argv, env=env, cwd=root, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"{name}: {line}\n{done.stderr[-3000:]}"
    yield the_setup


def _client_command(name: str, block: str) -> list[str]:
    """The command a client runs, from its README snippet (a JSON config or a `claude mcp add` line)."""
    if name == "claude-code":
        argv = shlex.split(block)
        assert argv[:3] == ["claude", "mcp", "add"] and "--" in argv, block
        return argv[argv.index("--") + 1 :]
    config = json.loads(block)
    (server,) = (config.get("mcpServers") or config["servers"]).values()
    assert server.get("type", "stdio") == "stdio"
    return [server["command"], *server["args"]]


def test_the_readme_has_a_set_up_for_each_client() -> None:
    assert set(_blocks("client")) == {"claude-desktop", "claude-code", "vscode", "cursor"}


@pytest.mark.parametrize("client", ["claude-desktop", "claude-code", "vscode", "cursor"])
async def test_each_client_snippet_starts_a_server_that_lists_its_tools_from_another_folder(
    client: str, setup: Setup, tmp_path: Path
) -> None:
    command = _client_command(client, setup.text(_blocks("client")[client]))
    executable = shutil.which(command[0], path=setup.env["PATH"])
    assert executable is not None, f"{client}: {command[0]} is not on the PATH the set-up gives"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    params = StdioServerParameters(command=executable, args=command[1:], cwd=elsewhere, env=setup.env)
    with anyio.fail_after(120):  # uvx may build the checkout on its first start
        async with Client(params) as session:
            tools = {tool.name for tool in (await session.list_tools()).tools}
            listed = (await session.call_tool("list_workflows", {})).structured_content
    assert tools >= EXPECTED_TOOLS
    assert listed is not None and {w["name"] for w in listed["workflows"]} >= {
        "fan_out_join",
        "service_report",
    }
    assert list(elsewhere.iterdir()) == []  # state went to the data directory, not the working folder
