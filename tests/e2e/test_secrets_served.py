"""A secret from the secrets file, through the real server: the step gets it, and neither the results,
nor the state directory, nor the server's debug logs hold it; the cached second run calls nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.helpers.served import served

SECRET = "file-secret-7a6b5c4d3e2f"


@pytest.mark.timeout(120)
def test_a_served_secret_never_reaches_results_state_or_logs_and_the_cache_answers_the_second_run(
    tmp_path: Path,
) -> None:
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"API_TOKEN": SECRET}))
    secrets.chmod(0o600)
    workflow = {
        "name": "uses_secret",
        "steps": [
            {
                "name": "say",
                "module": "core",
                "action": "echo",
                "parameters": {"message": "Bearer {{secrets.API_TOKEN}}"},
                "cache": {"ttl_seconds": 600},
            }
        ],
    }
    env = {"CODOMYRMEX_SECRETS_FILE": str(secrets)}
    with served(tmp_path / "server", ["--log-level", "debug"], env) as server:

        async def drive() -> list[dict[str, Any]]:
            async with Client(server.url) as client:
                run = {"workflow_name": "uses_secret"}
                results = [
                    await client.call_tool("create_workflow", workflow),
                    await client.call_tool("execute_workflow", run),
                    await client.call_tool("execute_workflow", run),
                    await client.call_tool("get_workflow", {"name": "uses_secret"}),
                ]
            assert not any(r.is_error for r in results), [r.content for r in results]
            return [r.structured_content for r in results]

        created, first, second, shown = anyio.run(drive)
        state = server.state_dir
    assert first["steps"]["say"]["output"] == "Bearer [secret:API_TOKEN]"
    assert (first["steps"]["say"]["cached"], second["steps"]["say"]["cached"]) == (False, True)
    assert shown["steps"][0]["parameters"]["message"] == "Bearer {{secrets.API_TOKEN}}"
    assert SECRET not in json.dumps([created, first, second, shown])
    stored = b"".join(p.read_bytes() for p in state.rglob("*") if p.is_file())
    assert b"[secret:API_TOKEN]" in stored and SECRET.encode() not in stored
    logs = server.logs()
    assert logs and SECRET not in logs
