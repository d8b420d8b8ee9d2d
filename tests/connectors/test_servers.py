"""config/mcp_servers.json: the clients' ``mcpServers`` shape, and errors that name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from codomyrmex_orchestration.connectors import HttpServer, StdioServer, load_servers
from codomyrmex_orchestration.connectors._servers import parse_servers
from codomyrmex_orchestration.errors import InvalidInputError


def test_stdio_and_http_entries_are_read_in_the_shape_clients_use() -> None:
    servers = parse_servers(
        {
            "mcpServers": {
                "files": {"command": "npx", "args": ["-y", "server-files"], "env": {"A": "1"}, "cwd": "/tmp"},
                "docs": {"type": "http", "url": "https://docs.example/mcp", "headers": {"X-Key": "k"}},
            }
        }
    )
    assert servers["files"] == StdioServer(
        command="npx", args=("-y", "server-files"), env={"A": "1"}, cwd="/tmp"
    )
    assert isinstance(servers["docs"], HttpServer) and servers["docs"].headers == {"X-Key": "k"}
    assert servers["docs"].describe() == {
        "transport": "streamable-http",
        "description": "",
        "url": "https://docs.example/mcp",
    }


@pytest.mark.parametrize(
    ("entry", "field", "says"),
    [
        ({"args": ["x"]}, "mcpServers.s.command", "an HTTP server 'url'"),
        ({"command": "x", "argv": []}, "mcpServers.s.argv", "did you mean 'args'"),
        ({"url": "ftp://host/mcp"}, "mcpServers.s.url", "http:// or https://"),
        ({"type": "sse", "url": "http://h/sse"}, "mcpServers.s.type", "streamable-HTTP"),
        ("npx server", "mcpServers.s", "must be an object"),
    ],
)
def test_a_malformed_entry_names_its_field_and_what_is_accepted(entry: Any, field: str, says: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_servers({"mcpServers": {"s": entry}})
    assert info.value.field == field
    assert says in str(info.value)


def test_a_file_without_mcp_servers_says_what_it_must_hold(tmp_path: Path) -> None:
    path = tmp_path / "mcp_servers.json"
    path.write_text('{"servers": {}}', encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r'"mcpServers"') as info:
        load_servers(path)
    assert str(path) in info.value.field


def test_a_file_that_is_not_json_is_named(tmp_path: Path) -> None:
    path = tmp_path / "mcp_servers.json"
    path.write_text("{mcpServers", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="is not valid JSON") as info:
        load_servers(path)
    assert info.value.field == str(path)


def test_no_file_means_no_servers(tmp_path: Path) -> None:
    assert load_servers(tmp_path / "absent.json") == {}


def test_the_format_reference_example_servers_file_and_step_are_valid(tmp_path: Path) -> None:
    """docs/WORKFLOWS.md's example ``mcp_servers.json`` reads, and its example step validates against it."""
    import json
    import re

    from codomyrmex_orchestration.compose import build_registry
    from codomyrmex_orchestration.config import Settings
    from codomyrmex_orchestration.core.dag import WorkflowDAG
    from codomyrmex_orchestration.core.models import StepSpec

    doc = (Path(__file__).resolve().parents[2] / "docs" / "WORKFLOWS.md").read_text(encoding="utf-8")
    section = doc.split("### Calling other MCP servers")[1]
    servers_json, step_json = re.findall(r"```json\n(.*?)\n```", section, re.DOTALL)[:2]
    servers_file = tmp_path / "mcp_servers.json"
    servers_file.write_text(servers_json, encoding="utf-8")
    assert sorted(load_servers(servers_file)) == ["docs", "files"]
    registry = build_registry(Settings(data_dir=tmp_path, mcp_servers_file=servers_file))
    try:
        dag = WorkflowDAG([StepSpec.model_validate(json.loads(step_json))], registry=registry)
        assert dag.problems() == []
    finally:
        registry.close()
