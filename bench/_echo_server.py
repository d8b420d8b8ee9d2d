"""A bare low-level MCP SDK server with one echo tool: the baseline for bench_mcp_roundtrip.

Serves stdio by default, or streamable HTTP with ``--http PORT`` (the SDK's own app, on 127.0.0.1).
"""

from __future__ import annotations

import sys
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

TOOL = types.Tool(name="echo", input_schema={"type": "object", "properties": {"x": {}}})


async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[TOOL])


async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=str(params.arguments))])


# The schema lookup spares the SDK's streamable HTTP path a tools/list walk per call; our server sets it
# too, so both sides of the comparison use the SDK at its fastest.
SERVER = Server(
    "echo",
    on_list_tools=list_tools,
    on_call_tool=call_tool,
    get_tool_input_schema=lambda name: TOOL.input_schema if name == TOOL.name else None,
)


async def main() -> None:
    async with stdio_server() as (read, write):
        await SERVER.run(read, write, SERVER.create_initialization_options())


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        import uvicorn

        uvicorn.run(
            SERVER.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning"
        )
    else:
        anyio.run(main)
