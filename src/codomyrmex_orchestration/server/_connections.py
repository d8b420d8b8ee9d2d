"""The HTTP connections the server holds, bounded before any request is read: the bearer token check
needs a request's whole head, so without these bounds anyone could hold connections (sending part of a
request, or nothing) until the process ran out of files.

A connection waiting for a request gets ``request_timeout`` seconds for its head (from the connection,
or from the first byte of a request on a kept-alive one) and may pause as long between two reads of a
body; then it is closed, with 408 when part of a request came. At most ``max_connections`` are open: a
newcomer past the cap closes the connection that has waited longest for its request, and is itself
refused only when every other connection is being served. :class:`ConnectionGuard` owns the open and
the waiting connections and the drop counts; uvicorn's protocol callbacks reach it on the event loop's
thread only, so it needs no lock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

from codomyrmex_orchestration.logs import get_logger

__all__ = ["NOTICE_INTERVAL", "RESERVED_FILES", "ConnectionGuard", "fit_to_file_limit", "protocol_class"]

log = get_logger("codomyrmex_orchestration.server")

#: Files kept for everything but client connections: the state store, logs, pipes to subprocesses,
#: outgoing connections of http.request and mcp.call steps.
RESERVED_FILES = 256
#: Seconds between two log lines about dropped connections; the first drop is logged at once.
NOTICE_INTERVAL = 60.0


class _Connection(Protocol):
    transport: asyncio.Transport


class _Waiting:
    """A connection waiting for (the rest of) a request: its deadline, and whether part of it came."""

    __slots__ = ("partial", "timer")

    def __init__(self) -> None:
        self.timer: asyncio.TimerHandle | None = None
        self.partial = False


class ConnectionGuard:
    """The request deadline and the connection cap (see the module's docstring).

    Args:
        request_timeout: seconds for a request's head, and the longest pause inside its body.
        max_connections: connections open at once.
        clock: seconds, monotonic (for the log lines' spacing).
    """

    def __init__(
        self, *, request_timeout: float, max_connections: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self._clock = clock
        self._open: set[_Connection] = set()
        self._waiting: dict[_Connection, _Waiting] = {}  # in the order they started waiting
        self._dropped = {"timed_out": 0, "over_cap": 0, "refused": 0}  # since the last log line
        self._quiet_until = 0.0
        text = (
            f"Request Timeout: the request did not arrive whole within {request_timeout:g} s "
            "(CODOMYRMEX_HTTP_REQUEST_TIMEOUT)\n"
        ).encode()
        self._timed_out = (
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(text), text)
        )

    def opened(self, conn: _Connection) -> None:
        """A new connection: it waits for its first request, and may push the longest waiting out."""
        self._open.add(conn)
        self.arriving(conn, restart=False)
        if len(self._open) <= self.max_connections:
            return
        longest = next(iter(self._waiting))
        self._drop(longest, "refused" if longest is conn else "over_cap")

    def idle(self, conn: _Connection) -> None:
        """Answered and kept alive: it waits for another request, with uvicorn's keep-alive timeout."""
        self._wait(conn)

    def arriving(self, conn: _Connection, *, restart: bool, partial: bool = False) -> None:
        """Waiting for a request's bytes: the deadline starts now if none runs (a head), or anew
        (``restart``: each read of a body). ``partial``: part of a request came (it gets a 408)."""
        waiting = self._wait(conn)
        waiting.partial = partial
        if waiting.timer is not None:
            if not restart:
                return
            waiting.timer.cancel()
        loop = asyncio.get_running_loop()
        waiting.timer = loop.call_later(self.request_timeout, self._expire, conn)

    def serving(self, conn: _Connection) -> None:
        """The request came whole: the application answers it, for as long as that takes."""
        self._forget_wait(conn)

    def closed(self, conn: _Connection) -> None:
        self._forget_wait(conn)
        self._open.discard(conn)

    def _wait(self, conn: _Connection) -> _Waiting:
        waiting = self._waiting.get(conn)
        if waiting is None:
            waiting = self._waiting[conn] = _Waiting()
        return waiting

    def _forget_wait(self, conn: _Connection) -> None:
        waiting = self._waiting.pop(conn, None)
        if waiting is not None and waiting.timer is not None:
            waiting.timer.cancel()

    def _expire(self, conn: _Connection) -> None:
        waiting = self._waiting.get(conn)
        if waiting is not None and waiting.partial and not conn.transport.is_closing():
            conn.transport.write(self._timed_out)
        self._drop(conn, "timed_out")

    def _drop(self, conn: _Connection, reason: str) -> None:
        self.closed(conn)
        conn.transport.close()
        self._dropped[reason] += 1
        now = self._clock()
        if now < self._quiet_until:
            return
        self._quiet_until = now + NOTICE_INTERVAL
        # Counts since the last line; at most one a minute, however many connections go.
        log.warning(
            "http.connections_dropped",
            **self._dropped,
            open=len(self._open),
            limits=f"CODOMYRMEX_HTTP_REQUEST_TIMEOUT={self.request_timeout:g}s "
            f"CODOMYRMEX_HTTP_MAX_CONNECTIONS={self.max_connections}",
        )
        self._dropped = dict.fromkeys(self._dropped, 0)


class _Guarded(asyncio.Protocol):
    """Put before uvicorn's HTTP protocol in a class's bases: reports the connection's state to the
    guard after each callback that can change it. The state is uvicorn's own: ``cycle`` (the request
    being served, ``None`` before the first) and its ``more_body`` and ``response_complete``."""

    _guard: ConnectionGuard
    transport: asyncio.Transport
    cycle: Any

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._guard.opened(self)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._report(received=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]  # uvicorn's protocol, next in the bases, has it
        self._report(received=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.closed(self)
        super().connection_lost(exc)

    def _report(self, *, received: bool) -> None:
        cycle = self.cycle
        if self.transport.is_closing():
            self._guard.closed(self)
        elif cycle is None or cycle.response_complete:
            # Between requests: bytes here start the next one (or are the rest of a body the application
            # answered without reading), silence is the kept-alive wait.
            if received:
                self._guard.arriving(self, restart=False, partial=True)
            else:
                self._guard.idle(self)
        elif cycle.more_body:
            self._guard.arriving(self, restart=received)
        else:
            self._guard.serving(self)


def protocol_class(guard: ConnectionGuard) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools, else h11) reporting to ``guard``: for ``uvicorn.Config(http=)``."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return type("GuardedHTTPProtocol", (_Guarded, AutoHTTPProtocol), {"_guard": guard})


def fit_to_file_limit(max_connections: int) -> int:
    """The connection cap the process's open-file limit allows: the soft limit is raised (up to the hard
    one) to ``max_connections`` plus :data:`RESERVED_FILES`; where that is not allowed, the cap is
    lowered to fit, with a warning naming both."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to fit
        return max_connections
    needed = max_connections + RESERVED_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # e.g. macOS refuses more than its OPEN_MAX
            pass
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return max_connections
    fitted = max(soft - RESERVED_FILES, soft // 2, 1)
    log.warning(
        "server.max_connections_lowered",
        max_connections=fitted,
        reason=f"the process may open {soft} files (ulimit -n); CODOMYRMEX_HTTP_MAX_CONNECTIONS="
        f"{max_connections} needs {needed}",
    )
    return fitted
