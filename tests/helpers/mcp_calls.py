"""Tool calls through an MCP ``Client`` with a bounded wait: the raw result, or the structured content of
one that must succeed."""

from __future__ import annotations

from typing import Any

import anyio
from mcp import Client

WAIT = 30


async def call(client: Client, name: str, args: dict[str, Any]) -> Any:
    with anyio.fail_after(WAIT):
        return await client.call_tool(name, args)


async def ok(client: Client, name: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await call(client, name, args)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content
