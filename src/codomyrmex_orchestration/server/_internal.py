"""Unexpected failures of a request handler: the SDK answers them with JSON-RPC code 0 and the
exception's own text (paths, attribute names); :func:`install` adds the middleware that logs them with a
reference id and answers -32603 with that id only, as a tool's internal error is answered. Holds no
state.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from codomyrmex_orchestration.logs import get_logger

__all__ = ["install"]

log = get_logger("codomyrmex_orchestration.server")


def install(server: Server[Any]) -> None:
    """Answer any exception a request's handlers raise, other than the protocol errors they mean to
    (``MCPError``, and the params ``ValidationError`` the SDK answers -32602), with an internal error
    naming a reference that the log has; outermost of the server's own middleware, so it sees theirs."""

    async def reported(ctx: Any, call_next: Callable[[Any], Any]) -> Any:
        try:
            return await call_next(ctx)
        except (MCPError, ValidationError):
            raise
        except Exception as exc:
            if ctx.request_id is None:  # a notification: nothing to answer, the SDK logs it
                raise
            ref = uuid.uuid4().hex[:12]
            log.error("request.internal_error", method=ctx.method, ref=ref, exc_info=exc)
            raise MCPError(
                code=types.INTERNAL_ERROR,
                message=f"internal error (ref {ref}); the server logged the details",
                data={"ref": ref},
            ) from None

    server.middleware.append(reported)
