"""The integrity of ``requestState`` (protocol 2026-07-28): the client echoes it back, so it is
attacker-controlled, and ours says which run a retry answers.

:func:`install` puts the SDK's ``RequestStateBoundary`` on the server: every state we hand out is sealed
(AES-GCM) with the call it answers (tool name and a digest of its arguments), and a retry's state is
verified before any handler sees it; a state that fails (made up, altered, another call's, expired) is
answered -32602 naming ``requestState``. The key is ``<state_dir>/request-state.key``, made on first
use, so a state outlives a restart as the run it names does; without a state directory it is this
process's alone. Owns no state beyond the key it reads.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.request_state import RequestStateBoundary, RequestStateSecurity
from mcp.shared.exceptions import MCPError

from codomyrmex_orchestration.core._workflow_input import MAX_TIMEOUT_SECONDS
from codomyrmex_orchestration.errors import StateStoreError

__all__ = ["KEY_FILE", "TTL_SECONDS", "install"]

KEY_FILE = "request-state.key"
#: As long as a question may wait: the person answering may take that long, and a replay of the call
#: within it can do nothing respond_to_run cannot (runs are shared); the state names one run, which
#: answers nothing once it no longer waits.
TTL_SECONDS = float(MAX_TIMEOUT_SECONDS)
#: The SDK's refusal (its message is fixed: "Invalid or expired requestState").
_REFUSED = {"reason": "invalid_request_state"}
_KEY_BYTES = 32


def install(server: Server[Any], name: str, state_dir: Path | None) -> None:
    """Seal and verify ``requestState`` on ``server`` (``name``: the audience a state is minted for).

    Raises:
        StateStoreError: the key file cannot be read or made in ``state_dir``.
    """
    keys = [_key(state_dir)] if state_dir is not None else [secrets.token_bytes(_KEY_BYTES)]
    security = RequestStateSecurity(keys=keys, ttl=TTL_SECONDS)
    # Outermost of ours, as MCPServer places it: tasks and params checks see the plaintext.
    server.middleware.extend([_explained, RequestStateBoundary(security, default_audience=name)])


async def _explained(ctx: Any, call_next: Callable[[Any], Any]) -> Any:
    """The SDK's refusal, with the field and what the server takes instead."""
    try:
        return await call_next(ctx)
    except MCPError as exc:
        if exc.error.code != types.INVALID_PARAMS or exc.error.data != _REFUSED:
            raise
        raise MCPError(
            code=types.INVALID_PARAMS,
            message="invalid requestState: not issued by this server for this call (this tool with these "
            "arguments), or expired; retry with the arguments and the requestState of the call that asked "
            "for input, or call without requestState (respond_to_run answers a run waiting for input)",
            data={**_REFUSED, "field": "requestState"},
        ) from None


def _key(state_dir: Path) -> bytes:
    """The key kept in ``state_dir``, made (owner-only) if there is none or it is unreadable as one. The
    serving lock makes this process the only one serving ``state_dir``, so the only one making it.

    Raises:
        StateStoreError: the key file cannot be read or written (the path and the reason named).
    """
    path = state_dir / KEY_FILE
    try:
        with contextlib.suppress(FileNotFoundError, ValueError):  # none yet, or not a key: a new one
            key = bytes.fromhex(path.read_text(encoding="ascii").strip())
            if len(key) >= _KEY_BYTES:
                return key
        state_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(_KEY_BYTES)
        # Written whole under another name, then put in place: a reader never sees half a key.
        temporary = state_dir / f".{KEY_FILE}.{os.getpid()}.tmp"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(key.hex())
            os.replace(temporary, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
    except OSError as exc:
        raise StateStoreError(str(path), f"cannot keep the requestState key: {exc.strerror or exc}") from None
    return key
