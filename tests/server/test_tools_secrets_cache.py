"""Secrets and the step cache through the MCP tools: a secret never comes back in a tool result,
validate_workflow names the secrets set nowhere, execute_workflow takes use_cache."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from mcp import Client

from codomyrmex_orchestration.core.actions import ActionContext, ActionDefinition
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools
from tests.helpers.mcp_calls import ok

pytestmark = pytest.mark.anyio

SECRET = "srv-secret-5f4e3d2c1b"


def workflow() -> dict[str, Any]:
    return {
        "name": "fetchy",
        "steps": [
            {
                "name": "count",
                "module": "test",
                "action": "count",
                "parameters": {"auth": "Bearer {{secrets.SERVICE_TOKEN}}"},
                "cache": {"ttl_seconds": 600},
            }
        ],
    }


async def test_a_secret_is_redacted_in_results_and_use_cache_false_calls_the_action_again(
    client: Client, tools: OrchestrationMCPTools, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODOMYRMEX_SECRET_SERVICE_TOKEN", SECRET)
    calls = []
    lock = threading.Lock()

    def count(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        with lock:
            calls.append(params["auth"])
            return {"echo": params["auth"], "call": len(calls)}

    tools.engine.registry.register(ActionDefinition("test", "count", count))
    await ok(client, "create_workflow", workflow())
    first = await ok(client, "execute_workflow", {"workflow_name": "fetchy"})
    second = await ok(client, "execute_workflow", {"workflow_name": "fetchy"})
    third = await ok(client, "execute_workflow", {"workflow_name": "fetchy", "use_cache": False})
    assert calls == [f"Bearer {SECRET}", f"Bearer {SECRET}"]  # the action got the value, twice
    assert first["steps"]["count"]["output"] == {"echo": "Bearer [secret:SERVICE_TOKEN]", "call": 1}
    assert second["steps"]["count"]["cached"] is True and second["steps"]["count"]["attempts"] == 0
    assert third["steps"]["count"]["cached"] is False and third["steps"]["count"]["output"]["call"] == 2
    shown = await ok(client, "get_workflow", {"name": "fetchy"})
    assert shown["steps"][0]["parameters"]["auth"] == "Bearer {{secrets.SERVICE_TOKEN}}"
    assert SECRET not in json.dumps([first, second, third, shown])


async def test_validate_workflow_names_secrets_set_nowhere(client: Client) -> None:
    document = workflow()
    document["steps"][0].update(
        module="core", action="echo", parameters={"message": "{{secrets.SERVICE_TOKEN}}"}
    )
    result = await ok(client, "validate_workflow", document)
    assert result["valid"] is True and result["missing_secrets"] == ["SERVICE_TOKEN"]
