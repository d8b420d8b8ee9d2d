"""Who the current call is for: an ambient value the server sets around each tool call (its MCP client),
read where work is queued so the scheduler can serve clients in turn within a priority level.

It owns one ``ContextVar``; the core never sets it, only reads it (``None``: nobody in particular).
"""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["calling_client"]

#: Set by the server around a tool call (``anyio.to_thread`` carries it onto the worker thread).
calling_client: ContextVar[str | None] = ContextVar("codomyrmex_calling_client", default=None)
