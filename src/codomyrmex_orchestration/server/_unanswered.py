"""The requests a session has received and not yet answered, noted as they pass its streams: a stopping
server answers them (within :data:`SHUTDOWN_GRACE`) before it closes the session's wire, on every
transport that carries several requests on one stream (SSE's event stream, stdio's stdout). Owns, per
session, the ids still unanswered; touched on the event loop only.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

import anyio
import mcp_types as types
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.message import SessionMessage

__all__ = ["SHUTDOWN_GRACE", "Reading", "Unanswered", "Writing"]

#: Seconds a stopping server gives the requests it has received to be answered (its runs and tasks are
#: cancelled at the signal, so calls waiting on them answer at once); then it closes what is still open.
SHUTDOWN_GRACE = 2

_Incoming = SessionMessage | Exception
_LISTEN = "subscriptions/listen"


class Unanswered:
    """The ids of the requests one session has received and not yet answered: an answer counts once it
    has been handed to the writer of the wire, which then writes it before it ends."""

    def __init__(self) -> None:
        self._ids: set[types.RequestId] = set()
        self._emptied: anyio.Event | None = None

    def __len__(self) -> int:
        return len(self._ids)

    def received(self, item: _Incoming) -> None:
        if not isinstance(item, SessionMessage):
            return
        message = item.message
        if isinstance(message, types.JSONRPCRequest):
            # A subscription stream is answered only when it ends: it does not hold the session open.
            if message.method != _LISTEN:
                self._ids.add(message.id)
        elif isinstance(message, types.JSONRPCNotification) and message.method == "notifications/cancelled":
            # A request the client cancelled is never answered (the specification). The id is the
            # client's JSON, not validated yet: only a string or an integer can name a request.
            request_id = (message.params or {}).get("requestId")
            if isinstance(request_id, str | int) and not isinstance(request_id, bool):
                self._settle(request_id)

    def sent(self, item: SessionMessage) -> None:
        message = item.message
        if isinstance(message, types.JSONRPCResponse | types.JSONRPCError) and message.id is not None:
            self._settle(message.id)

    def _settle(self, request_id: types.RequestId) -> None:
        if request_id in self._ids:
            self._ids.discard(request_id)
            if not self._ids and self._emptied is not None:
                self._emptied.set()

    async def none_left(self) -> None:
        while self._ids:
            self._emptied = anyio.Event()
            await self._emptied.wait()


class _Noting:
    """A stream of the session wrapped to note what passes (:class:`Unanswered`); closing it closes the
    stream it wraps."""

    def __init__(self, inner: Any, unanswered: Unanswered) -> None:
        self._inner = inner
        self._unanswered = unanswered

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class Reading(_Noting):
    """The session's read stream, noting each request as the server takes it."""

    _inner: ReadStream[_Incoming]

    @property
    def last_context(self) -> Any:
        # The SDK reads the sender's context (its contextvars) from the stream it was given.
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> _Incoming:
        item = await self._inner.receive()
        self._unanswered.received(item)
        return item

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> _Incoming:
        item = await self._inner.__anext__()
        self._unanswered.received(item)
        return item


class Writing(_Noting):
    """The session's write stream, noting each answer once the writer of the wire has taken it."""

    _inner: WriteStream[SessionMessage]

    async def send(self, item: SessionMessage, /) -> None:
        await self._inner.send(item)
        self._unanswered.sent(item)
