"""The MCP adapter: the only package that imports ``mcp`` and ``anyio``."""

from __future__ import annotations

from codomyrmex_orchestration.server.app import build_http_app, build_server, serve
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools, ServerPolicy, ToolResult

__all__ = ["OrchestrationMCPTools", "ServerPolicy", "ToolResult", "build_http_app", "build_server", "serve"]
