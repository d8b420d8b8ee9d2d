"""The SSE transport's sessions: each serves one client on its event stream (``GET /sse``) and, at
shutdown, ends that stream only once every request the client sent on it has its answer on it.

Streamable HTTP answers each request on that request's own response, which uvicorn lets finish during
its shutdown grace; SSE answers every request on the one long event stream. sse-starlette, which writes
the stream, ends it within half a second of uvicorn beginning to stop, whether or not the answers of
the calls waiting on work the signal cancels are on it: ``deferred_stream_close`` turns that off while
``serve`` runs, and ``SseSessions.close_when_answered`` (at the signal) makes each session end its own
stream instead. Owns the loop event that starts the close; each session notes the ids of its requests
still unanswered (``_unanswered``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
from mcp.server.lowlevel import Server
from mcp.server.sse import SseServerTransport
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.message import SessionMessage
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from codomyrmex_orchestration.server._unanswered import Reading, Unanswered, Writing
from codomyrmex_orchestration.server.tools import _call_soon

__all__ = ["SseSessions", "deferred_stream_close"]

_Incoming = SessionMessage | Exception


@contextlib.contextmanager
def deferred_stream_close() -> Iterator[None]:
    """While the block runs, a shutdown signal does not make sse-starlette end the open event streams
    (it would, at its next look at uvicorn, within half a second): the sessions end them once answered.
    Process-wide (sse-starlette keeps one switch), so only ``serve`` uses it; restored on exit."""
    from sse_starlette.sse import AppStatus

    was = AppStatus.enable_automatic_graceful_drain
    AppStatus.enable_automatic_graceful_drain = False  # what its disable_automatic_graceful_drain() does
    try:
        yield
    finally:
        AppStatus.enable_automatic_graceful_drain = was


class _Sent(Response):
    """What ``GET /sse`` returns: ``connect_sse`` has already sent the whole response (the event stream,
    or a refusal), and a second one would make uvicorn log "Unexpected ASGI message" with a traceback."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        return None


class SseSessions:
    """The sessions of an SSE server: ``endpoint`` serves each client of its event stream;
    ``close_when_answered`` ends them all, each once its requests are answered (at once if none is
    waiting)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the three below: the stop thread meets the event loop
        self._closing = False
        self._close: anyio.Event | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None

    def close_when_answered(self) -> None:
        """Start the close of every session, open or to come. From any thread (not a signal handler: it
        takes a lock); does not wait."""
        with self._lock:
            self._closing = True
            close, token = self._close, self._token
        if close is not None and token is not None:
            _call_soon(token, close.set)

    def endpoint(
        self, server: Server[Any], transport: SseServerTransport
    ) -> Callable[[Request], Awaitable[Response]]:
        """The ``GET /sse`` endpoint: ``server`` over a new session of ``transport``."""

        async def handle(request: Request) -> Response:
            try:
                async with transport.connect_sse(request.scope, request.receive, request._send) as streams:
                    await self._serve(server, *streams)
            except ValueError:
                pass  # connect_sse already answered a refused request (bad Host/Origin)
            return _Sent()

        return handle

    async def _serve(
        self, server: Server[Any], read: ReadStream[_Incoming], write: WriteStream[SessionMessage]
    ) -> None:
        unanswered = Unanswered()
        close = self._close_event()
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                options = server.create_initialization_options()
                await server.run(Reading(read, unanswered), Writing(write, unanswered), options)
                tg.cancel_scope.cancel()  # the client has gone: nothing left to wait for

            tg.start_soon(run)
            await close.wait()
            await unanswered.none_left()
            # The server stops; its write stream closes, and the event stream writes what it was given
            # and ends (connect_sse then forgets the session).
            tg.cancel_scope.cancel()

    def _close_event(self) -> anyio.Event:
        with self._lock:
            if self._close is None:
                self._close, self._token = anyio.Event(), anyio.lowlevel.current_token()
                if self._closing:
                    self._close.set()
            return self._close
