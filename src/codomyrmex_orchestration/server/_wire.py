"""The stdio session's outgoing messages, encoded one at a time: a message that cannot be encoded never
stops the server. Owns no state beyond the stream it serves.

The SDK's writer encodes each message in the task that writes them all, so one message holding text JSON
cannot carry (a lone surrogate: a path that is not UTF-8) ended that task and the server with it, every
other client request unanswered. Here a reply that cannot be encoded becomes an error reply to its request
(with a reference the log repeats), and any other message is sent with such text shown replaced.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectSendStream
from mcp.shared.message import SessionMessage
from pydantic_core import PydanticSerializationError

from codomyrmex_orchestration._text import readable_value
from codomyrmex_orchestration.logs import get_logger

__all__ = ["encode_message", "encoded_writes"]

log = get_logger("codomyrmex_orchestration.server")


class _Lines(Protocol):
    async def write(self, text: str) -> None: ...


def encode_message(message: types.JSONRPCMessage) -> str | None:
    """``message`` as one line of JSON; for one that cannot be encoded, the error reply to its request
    (a response) or the message with text JSON cannot carry replaced (else None: it is not sent)."""
    try:
        return message.model_dump_json(by_alias=True, exclude_unset=True)
    except PydanticSerializationError as exc:
        ref = uuid.uuid4().hex[:12]
        log.error("stdio.unencodable_message", ref=ref, kind=type(message).__name__, error=str(exc))
        if isinstance(message, types.JSONRPCResponse | types.JSONRPCError) and message.id is not None:
            error = types.ErrorData(
                code=types.INTERNAL_ERROR,
                message=f"internal error (ref {ref}): the reply holds text that is not valid UTF-8, which "
                "JSON cannot carry; the server logged the details",
            )
            reply = types.JSONRPCError(jsonrpc="2.0", id=message.id, error=error)
            return reply.model_dump_json(by_alias=True, exclude_unset=True)
        try:
            data: Any = readable_value(message.model_dump(mode="json", by_alias=True, exclude_unset=True))
            return json.dumps(data, ensure_ascii=False)
        except Exception:  # not a matter of text: nothing of it can be sent
            log.exception("stdio.message_dropped", ref=ref, kind=type(message).__name__)
            return None


@asynccontextmanager
async def encoded_writes(stdout: _Lines) -> AsyncIterator[MemoryObjectSendStream[SessionMessage]]:
    """The stream a server session writes to, each message written to ``stdout`` through
    :func:`encode_message`; on exit, what was sent is written before it returns."""
    send, receive = anyio.create_memory_object_stream[SessionMessage](0)

    async def write_all() -> None:
        async with receive:
            async for item in receive:
                line = encode_message(item.message)
                if line is not None:
                    await stdout.write(line + "\n")

    async with anyio.create_task_group() as tg:
        tg.start_soon(write_all)
        async with send:
            yield send
