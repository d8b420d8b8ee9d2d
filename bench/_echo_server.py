"""A bare low-level MCP SDK server: the baseline for bench_mcp_roundtrip.

Its ``echo`` tool is the floor of the round-trip target: no output schema, a one-line text result. With
``--shaped FILE`` it also serves ``echo_shaped``, which declares the output schema in FILE and returns
the structured result in it (text: the same JSON), as a tool of ours does: the SDK's own cost of a
result of that shape (serialising it, and the client checking it against the schema), without our code.

Serves stdio by default, or streamable HTTP with ``--http PORT`` (the SDK's own app, on 127.0.0.1).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

TOOL = types.Tool(name="echo", input_schema={"type": "object", "properties": {"x": {}}})
TOOLS = {TOOL.name: TOOL}
SHAPED: dict[str, Any] = {}  # the structured result echo_shaped returns (with --shaped)


async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
    return types.ListToolsResult(tools=list(TOOLS.values()))


async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    if params.name == "echo_shaped":
        return types.CallToolResult(
            content=[types.TextContent(text=json.dumps(SHAPED, ensure_ascii=False))],
            structured_content=SHAPED,
        )
    return types.CallToolResult(content=[types.TextContent(text=str(params.arguments))])


def _input_schema(name: str) -> dict[str, Any] | None:
    tool = TOOLS.get(name)
    return None if tool is None else tool.input_schema


# The schema lookup spares the SDK's streamable HTTP path a tools/list walk per call; our server sets it
# too, so both sides of the comparison use the SDK at its fastest.
SERVER = Server("echo", on_list_tools=list_tools, on_call_tool=call_tool, get_tool_input_schema=_input_schema)


def _load_shaped(path: str) -> None:
    """``path``: JSON ``{"output_schema": ..., "result": ...}``."""
    with open(path, encoding="utf-8") as f:
        shaped = json.load(f)
    SHAPED.update(shaped["result"])
    TOOLS["echo_shaped"] = types.Tool(
        name="echo_shaped", input_schema=TOOL.input_schema, output_schema=shaped["output_schema"]
    )


async def main() -> None:
    async with stdio_server() as (read, write):
        await SERVER.run(read, write, SERVER.create_initialization_options())


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--shaped" in args:
        at = args.index("--shaped")
        _load_shaped(args[at + 1])
        del args[at : at + 2]
    if len(args) == 2 and args[0] == "--http":
        import uvicorn

        uvicorn.run(SERVER.streamable_http_app(), host="127.0.0.1", port=int(args[1]), log_level="warning")
    else:
        anyio.run(main)
