"""The stdio transport: the process's stdin and stdout as the MCP wire, read and written from the event loop.

Owns the two wire descriptors while serving. Malformed input is answered here as JSON-RPC 2.0 says
(-32700 parse error, -32600 invalid request, ``id`` null when none can be read) and logged once at
warning; a line longer than the limit is refused and discarded as it streams in, never buffered whole.
A UTF-8 byte order mark before a message is ignored. At EOF or a shutdown signal no further request is
read, and those received are answered (within ``SHUTDOWN_GRACE``) before the session ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import stat
from collections.abc import Callable
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage

from codomyrmex_orchestration.logs import get_logger
from codomyrmex_orchestration.server._request_ids import INVALID_REQUEST, PARSE_ERROR, diagnose, examine
from codomyrmex_orchestration.server._unanswered import SHUTDOWN_GRACE, Unanswered, Writing
from codomyrmex_orchestration.server._versions import naming_served
from codomyrmex_orchestration.server._wire import encoded_writes

__all__ = ["DEFAULT_MAX_LINE_BYTES", "INVALID_REQUEST", "PARSE_ERROR", "diagnose", "serve_stdio"]

log = get_logger("codomyrmex_orchestration.server")

#: Longest protocol line (one JSON-RPC message) accepted on stdin.
DEFAULT_MAX_LINE_BYTES = 32 * 1024 * 1024
_CHUNK = 1 << 16
_BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark


class StdinLines:
    """Protocol lines from the process's stdin, read only when readable, so a signal can cancel the wait.

    mcp's own stdin reader blocks a worker thread in ``read()``, which cancellation cannot interrupt;
    this one waits with ``anyio.wait_readable``. While serving, fd 0 points at the null device (so
    child processes never read the protocol) and the wire is read from a private duplicate. A line is
    found by scanning only the bytes that arrived since the last scan, so reading is linear in its
    length. Lines that are not valid messages are answered through ``stdout`` and never handed on;
    each valid one is shown to ``on_message`` before it is handed on.
    """

    def __init__(
        self,
        stdout: StdoutLines,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        on_message: Callable[[types.JSONRPCMessage], None] = lambda message: None,
    ) -> None:
        self._stdout = stdout
        self._on_message = on_message
        self._max = max_line_bytes
        self._fd = os.dup(0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        self._buffer = bytearray()  # bytes read and not yet handed out: lines start at self._start
        self._start = 0
        self._scanned = 0  # self._buffer[self._start:self._scanned] holds no newline
        self._discarding = False  # inside a line that was refused for its size
        self._eof = False
        # Regular files and some devices cannot be polled (epoll refuses them) but never block.
        self._pollable = not stat.S_ISREG(os.fstat(self._fd).st_mode)

    def close(self) -> None:
        os.dup2(self._fd, 0)
        os.close(self._fd)

    def __aiter__(self) -> StdinLines:
        return self

    async def __anext__(self) -> bytes:
        while True:
            line = await self._next_line()
            if line is None:
                raise StopAsyncIteration
            if line.startswith(_BOM):
                line = line[len(_BOM) :]  # RFC 8259: a parser may ignore it (some writers add one)
            if not line.strip():
                continue  # blank lines between messages are tolerated, like trailing whitespace
            examined = examine(line)
            if not isinstance(examined, tuple):
                self._on_message(examined)
                return line  # the SDK's reader validates bytes as well as text
            await self._refuse(*examined, size=len(line))

    async def _refuse(self, code: int, message: str, request_id: str | int | None, size: int) -> None:
        log.warning("stdio.malformed_message", code=code, error=message[:300], bytes=size, id=request_id)
        reply = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
        await self._stdout.write(json.dumps(reply) + "\n")

    async def _refuse_long(self, size: int) -> None:
        await self._refuse(
            INVALID_REQUEST,
            f"Invalid Request: a message longer than {self._max} bytes is refused and discarded "
            "(the limit is the setting stdio_max_line_bytes, CODOMYRMEX_STDIO_MAX_LINE_BYTES)",
            None,
            size=size,
        )

    async def _next_line(self) -> bytes | None:
        buffer = self._buffer
        while True:
            newline = buffer.find(b"\n", self._scanned)
            if newline >= 0:
                line = bytes(buffer[self._start : newline])
                self._start = self._scanned = newline + 1
                if self._discarding:
                    self._discarding = False
                    continue
                if len(line) > self._max:
                    await self._refuse_long(len(line))
                    continue
                return line
            if self._discarding:
                buffer.clear()
                self._start = 0
            elif len(buffer) - self._start > self._max:
                await self._refuse_long(len(buffer) - self._start)
                self._discarding = True
                buffer.clear()
                self._start = 0
            elif self._start:
                del buffer[: self._start]  # once per read, not per line: amortised linear
                self._start = 0
            self._scanned = len(buffer)
            if self._eof:
                if self._discarding or self._start >= len(buffer):
                    return None
                line = bytes(buffer[self._start :])
                buffer.clear()
                self._start = self._scanned = 0
                return line
            if self._pollable:
                try:
                    await anyio.wait_readable(self._fd)
                except OSError:
                    self._pollable = False
            chunk = os.read(self._fd, _CHUNK)
            self._eof = not chunk
            buffer += chunk


class StdoutLines:
    """The protocol's writing side, written from the event loop: no thread per message.

    mcp's own writer hands every message to a worker thread twice (``write``, then ``flush``), two
    thread hand-offs per reply. Here a message of up to ``PIPE_BUF`` bytes, the usual size, is written
    directly once the descriptor is writable: a pipe with room takes such a write whole and at once.
    A longer one, or what a socket or terminal did not take, is written by a worker thread, which may
    block without holding up the loop. Like the SDK, it serves the wire from a private duplicate while
    ``fd`` (stdout) points at stderr, so stray output of the process or its children never reaches the
    client; :meth:`close` points it back at the wire. A lock keeps the SDK's replies and the reader's
    error replies from interleaving.
    """

    def __init__(self, fd: int = 1) -> None:
        self._wire_fd = fd
        self._fd = os.dup(fd)
        os.dup2(2, fd)
        self._pollable = not stat.S_ISREG(os.fstat(self._fd).st_mode)
        self._lock = anyio.Lock()  # guards the wire: one message written at a time

    def close(self) -> None:
        os.dup2(self._fd, self._wire_fd)
        os.close(self._fd)

    async def write(self, text: str) -> None:
        data = text.encode("utf-8")
        async with self._lock:
            if len(data) <= select.PIPE_BUF and self._pollable:
                try:
                    await anyio.wait_writable(self._fd)
                except OSError:  # not pollable after all: the thread below writes it
                    self._pollable = False
                else:
                    data = data[os.write(self._fd, data) :]
            if data:
                await anyio.to_thread.run_sync(self._write_all, data)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:  # a client may hand us a non-blocking pipe: wait for room
                select.select([], [self._fd], [])

    async def flush(self) -> None:
        """Nothing is buffered: every ``write`` has reached the descriptor when it returns."""


class _NamingServed:
    """The SDK's side of ``stdout``: its refusal of a protocol version names every version served
    (:func:`~._versions.naming_served`)."""

    def __init__(self, stdout: StdoutLines) -> None:
        self._stdout = stdout

    async def write(self, text: str) -> None:
        await self._stdout.write(naming_served(text))

    async def flush(self) -> None:
        await self._stdout.flush()


class _UntilStopped:
    """The lines of stdin until EOF or :meth:`stop` (a shutdown signal); then, before the stream ends,
    the work is stopped (``on_stop``) and the requests already received get ``grace`` seconds to be
    answered. The end of the stream ends the SDK's session, which cancels every handler still running
    (each is answered "Connection closed"): ending it at once dropped the answers of the calls in flight.
    """

    def __init__(
        self, lines: StdinLines, unanswered: Unanswered, on_stop: Callable[[], None], grace: float
    ) -> None:
        self._lines = lines
        self._unanswered = unanswered
        self._on_stop = on_stop
        self._grace = grace
        self.stopping = anyio.Event()
        self._reading: anyio.CancelScope | None = None

    def stop(self) -> None:
        """Read no further (a line being read is dropped with its rest): those received are answered."""
        self.stopping.set()
        if self._reading is not None:
            self._reading.cancel()

    def __aiter__(self) -> _UntilStopped:
        return self

    async def __anext__(self) -> bytes:
        if not self.stopping.is_set():
            with anyio.CancelScope() as self._reading:
                try:
                    return await self._lines.__anext__()
                except StopAsyncIteration:
                    self.stopping.set()
                finally:
                    self._reading = None
        await self._drain()
        raise StopAsyncIteration

    async def _drain(self) -> None:
        self._on_stop()
        with anyio.move_on_after(self._grace) as waited:
            await self._unanswered.none_left()
        if waited.cancelled_caught:
            log.warning(
                "stdio.unanswered_at_shutdown",
                requests=len(self._unanswered),
                reason=f"not answered within {self._grace:g} s of the shutdown: answered 'Connection closed'",
            )


async def serve_stdio(
    server: Server[Any],
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    on_listening: Callable[[Callable[[], None]], None] = lambda stop: None,
    on_stop: Callable[[], None] = lambda: None,
    grace: float = SHUTDOWN_GRACE,
) -> None:
    """Run ``server`` on stdin/stdout until EOF, SIGINT, SIGTERM or SIGHUP (the terminal closed). Once
    the wire is read, ``on_listening`` gets a function another thread may call to stop serving at once.

    At EOF or the first signal, no further request is read; ``on_stop`` is called (on the event loop's
    thread: it must not block) to stop the work, so calls waiting on it are answered; the requests
    received get ``grace`` seconds to be answered, and their answers are written before the wire closes.
    SIGINT while stopping (Ctrl-C again) ends at once, as over HTTP.
    """
    stdout = StdoutLines()
    unanswered = Unanswered()
    # A request is noted before it is handed on, so none is in transit when the shutdown looks.
    lines = StdinLines(stdout, max_line_bytes, lambda message: unanswered.received(SessionMessage(message)))
    stdin = _UntilStopped(lines, unanswered, on_stop, grace)
    try:
        async with anyio.create_task_group() as tg:
            token = anyio.lowlevel.current_token()

            def stop() -> None:
                with contextlib.suppress(RuntimeError):  # the loop has already ended
                    anyio.from_thread.run_sync(tg.cancel_scope.cancel, token=token)

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
                    async for signum in signals:
                        log.info("server.signal", signal=signal.Signals(signum).name)
                        if not stdin.stopping.is_set():
                            stdin.stop()
                        elif signum == signal.SIGINT:
                            tg.cancel_scope.cancel()
                            return

            tg.start_soon(stop_on_signal)
            on_listening(stop)
            # Duck-typed: stdin is only iterated, stdout only written and flushed.
            sdk_out = _NamingServed(stdout)  # a refused protocol version names every version served
            async with stdio_server(stdin=stdin, stdout=sdk_out) as (read, sdk_write):  # type: ignore[arg-type]
                sdk_write.close()  # replies go through encoded_writes: one that cannot be encoded is answered
                async with encoded_writes(sdk_out) as write:
                    options = server.create_initialization_options()
                    await server.run(read, Writing(write, unanswered), options)
            tg.cancel_scope.cancel()
    except* (BrokenPipeError, ConnectionResetError):
        # The client closed its end of the wire: the session is over, like at EOF (not a server error).
        log.info("server.client_gone", reason="the client stopped reading the server's output")
    finally:
        stdout.close()
        lines.close()
