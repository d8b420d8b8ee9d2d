"""The README's worked examples run in order through the real server (in-process MCP client), and its
tool table and counts match the server's, so the user guide stays true."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from codomyrmex_orchestration.config import Settings
from codomyrmex_orchestration.server.app import build_server
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools, ServerPolicy

pytestmark = pytest.mark.anyio

README = Path(__file__).resolve().parents[2] / "README.md"
_CALL = re.compile(r"<!-- call -->\n```json\n(.*?)\n```\n```json\n(.*?)\n```", re.DOTALL)


def readme_calls() -> list[tuple[dict[str, Any], Any]]:
    """Each ``<!-- call -->``: the call (tool and arguments) and the result it shows."""
    return [(json.loads(call), json.loads(shown)) for call, shown in _CALL.findall(README.read_text())]


def _substitute(value: Any, ids: dict[str, Any]) -> Any:
    if isinstance(value, str) and value.startswith("$"):
        return ids[value]
    if isinstance(value, dict):
        return {k: _substitute(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, ids) for v in value]
    return value


def _matches(shown: Any, actual: Any, ids: dict[str, Any], where: str = "result") -> None:
    """``shown`` is part of ``actual``: its keys with equal values, lists item by item; ``"..."`` is any
    value; ``"$name"`` binds a value the first time and must equal it afterwards."""
    if shown == "...":
        return
    if isinstance(shown, str) and shown.startswith("$"):
        assert ids.setdefault(shown, actual) == actual, f"{where}: {actual!r} is not {shown} ({ids[shown]!r})"
        return
    if isinstance(shown, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        for key, value in shown.items():
            assert key in actual, f"{where}: no key {key!r} (keys: {sorted(actual)})"
            _matches(value, actual[key], ids, f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(actual, list) and len(actual) == len(shown), f"{where}: {actual!r}"
        for i, (s, a) in enumerate(zip(shown, actual, strict=True)):
            _matches(s, a, ids, f"{where}[{i}]")
    else:
        assert shown == actual, f"{where}: the README shows {shown!r}, the server returns {actual!r}"


@pytest.fixture
def readme_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OrchestrationMCPTools]:
    """A stdio-policy server as a desktop client starts it: default settings, a private data dir, and
    the secret example 4 uses."""
    from codomyrmex_orchestration.compose import build_engine

    monkeypatch.setenv("CODOMYRMEX_SECRET_DEPLOY_TOKEN", "readme-deploy-token-1234")
    settings = Settings(data_dir=tmp_path / "data", durable=False)
    tools = OrchestrationMCPTools(
        engine_factory=lambda policy: build_engine(
            settings, allow_code_execution=policy.allow_code_execution
        ),
        policy=ServerPolicy.for_transport("stdio", None),
    )
    yield tools
    tools.close()


def test_the_readme_shows_four_worked_examples_of_real_calls() -> None:
    calls = readme_calls()
    assert len(calls) >= 9
    assert README.read_text().count("\n### ") >= 4 and "## Four worked examples" in README.read_text()


async def test_every_worked_example_in_the_readme_gives_the_result_it_shows(
    readme_tools: OrchestrationMCPTools,
) -> None:
    ids: dict[str, Any] = {}
    with anyio.fail_after(120):
        async with Client(build_server(readme_tools)) as client:
            for call, shown in readme_calls():
                result = await client.call_tool(call["tool"], _substitute(call["arguments"], ids))
                assert not result.is_error, (call, result.content)
                _matches(shown, result.structured_content, ids, call["tool"])


async def test_the_readme_tool_table_and_counts_match_the_server(readme_tools: OrchestrationMCPTools) -> None:
    text = README.read_text()
    table = re.findall(r"^\| `([a-z_]+)` \| ", text.split("## Tools at a glance")[1].split("\n## ")[0], re.M)
    async with Client(build_server(readme_tools)) as client:
        tools = [t.name for t in (await client.list_tools()).tools]
        actions = (await client.call_tool("list_actions", {})).structured_content
        templates = (await client.call_tool("list_project_templates", {})).structured_content
    assert sorted(table) == sorted(tools)
    assert f"\n{len(tools)} tools." in text
    assert actions is not None and templates is not None
    assert f"the {actions['count']} actions a step can run" in text
    assert f"the {templates['count']} packaged project templates" in text
    for action in actions["actions"]:
        assert f"`{action['name']}`" in text, action["name"]


def test_the_readme_is_a_guide_of_at_most_500_lines() -> None:
    assert len(README.read_text().splitlines()) <= 500


def test_the_readme_limits_table_states_the_http_body_limits_the_server_enforces() -> None:
    from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE

    from codomyrmex_orchestration.server import _ui

    text = README.read_text()
    limits = text[text.index("## Limits a client can meet") : text.index("## Where state lives")]
    rows = [line for line in limits.splitlines() if "request body" in line]
    assert len(rows) == 1, "the limits table has no row for the HTTP request body"
    assert f"{DEFAULT_MAX_REQUEST_BODY_SIZE // 2**20} MiB" in rows[0] and "`/mcp`" in rows[0]
    assert f"{_ui._MAX_BODY // 1024} KiB" in rows[0] and "`/ui/api/call`" in rows[0]


def test_the_readme_state_layout_lists_every_file_the_engine_reads_from_the_data_dir(tmp_path: Path) -> None:
    from codomyrmex_orchestration.config import DEFAULT_CONFIG_DIR
    from codomyrmex_orchestration.core.engine import _resources_file

    text = README.read_text()
    layout = text[text.index("## Where state lives") : text.index("## Configuration")]
    config_dir = tmp_path / DEFAULT_CONFIG_DIR
    config_dir.mkdir(parents=True)
    resources = tmp_path / "config" / "resources.json"
    resources.write_text("{}", encoding="utf-8")
    assert _resources_file(config_dir) == resources  # where the engine looks for it
    assert "\n  config/resources.json " in layout
