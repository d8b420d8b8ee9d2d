"""Connections from this server to other MCP servers: the ``mcp.call`` action and what it shares.

The only package besides ``server/`` that imports ``mcp`` and ``anyio`` (``_connections``, loaded with the
first call): ``core`` never does. The composition module (``compose``) registers ``mcp.call`` into each
engine's action registry.
"""

from __future__ import annotations

from codomyrmex_orchestration.connectors._servers import HttpServer, ServerEntry, StdioServer, load_servers
from codomyrmex_orchestration.connectors.mcp_call import SERVICE, McpCall, mcp_catalogue, register

__all__ = [
    "SERVICE",
    "HttpServer",
    "McpCall",
    "ServerEntry",
    "StdioServer",
    "load_servers",
    "mcp_catalogue",
    "register",
]
