"""A stdio MCP server's stderr, read line by line into our log instead of inherited as is.

Inherited, the server's stderr reached ours raw (under ``serve`` over stdio, the host's log file):
unbounded, and with whatever the server printed, secrets passed to its tools included (a traceback
quoting an argument). Here every line becomes one ``mcp.server_stderr`` log event, which gets the
redaction every log line gets, cut to :data:`LINE_LIMIT` characters (redacted before the cut, so a
secret across it is still recognised), and at most :data:`RATE_LINES` lines per server every
:data:`RATE_WINDOW` seconds are logged; the lines over that are counted and reported as one
``mcp.server_stderr_dropped`` event.

State owned: the pipe of one server's stderr and the line being assembled, on the connections' loop.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TextIO

import anyio

from codomyrmex_orchestration._redact import cut_margin, redact_text
from codomyrmex_orchestration.logs import get_logger

__all__ = ["LINE_LIMIT", "RATE_LINES", "RATE_WINDOW", "ServerStderr", "stderr_into_log"]

log = get_logger("codomyrmex_orchestration.connectors")

#: Characters of one stderr line that are logged (the rest is replaced by a note of its length).
LINE_LIMIT = 1000
#: Lines of one server's stderr logged per :data:`RATE_WINDOW` (a traceback or two); the rest are counted.
RATE_LINES = 200
RATE_WINDOW = 10.0
#: Longest wait, once the server is stopped, for the rest of what it wrote.
_DRAIN_SECONDS = 1.0
_READ_CHUNK = 65536


class ServerStderr:
    """Turns the bytes of one server's stderr into capped, rate-limited log lines.

    Args:
        server: the server's name (on every line logged).
        clock: seconds, for the rate windows (a seam for tests).
    """

    def __init__(self, server: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.server = server
        self._clock = clock
        self._pending = bytearray()
        self._skipped = 0  # bytes of the current line past what is kept
        self._window_start = clock()
        self._logged = 0
        self._dropped = 0

    def feed(self, data: bytes) -> None:
        """Take ``data`` (any cut of the stream) and log the lines it completes."""
        keep = LINE_LIMIT * 4 + cut_margin()  # UTF-8: at most 4 bytes a character
        while data:
            end = data.find(b"\n")
            part, data = (data, b"") if end < 0 else (data[:end], data[end + 1 :])
            room = keep - len(self._pending)
            self._pending += part[: max(0, room)]
            self._skipped += max(0, len(part) - max(0, room))
            if end >= 0:
                self._line()

    def finish(self) -> None:
        """The stream ended: log an unterminated last line and what the rate cap dropped."""
        if self._pending or self._skipped:
            self._line()
        self._report_dropped()

    def _line(self) -> None:
        raw, skipped = bytes(self._pending), self._skipped
        self._pending.clear()
        self._skipped = 0
        now = self._clock()
        if now - self._window_start >= RATE_WINDOW:
            self._report_dropped()
            self._window_start, self._logged = now, 0
        if self._logged >= RATE_LINES:
            self._dropped += 1
            return
        self._logged += 1
        text = redact_text(raw.decode("utf-8", "replace").rstrip("\r"))  # before the cut: see _redact
        if len(text) > LINE_LIMIT or skipped:
            text = f"{text[:LINE_LIMIT]}…[line cut: {len(raw) + skipped} bytes]"
        # Warning: what a server writes to stderr is meant for a person (before, it reached ours raw, at
        # any log level); the CLI commands log warnings and up by default.
        log.warning("mcp.server_stderr", server=self.server, line=text)

    def _report_dropped(self) -> None:
        if self._dropped:
            log.warning(
                "mcp.server_stderr_dropped",
                server=self.server,
                lines=self._dropped,
                reason=f"more than {RATE_LINES} stderr lines in {RATE_WINDOW:g} s",
            )
            self._dropped = 0


@asynccontextmanager
async def stderr_into_log(server: str) -> AsyncIterator[TextIO]:
    """Yield the file a server's stderr is to be given (``stdio_client(errlog=...)``); what the server
    writes to it is logged by :class:`ServerStderr` until the block ends.

    Close the yielded file once the server has started (the child holds its own copy): the pipe ends
    when the server and everything it started have closed theirs. On leaving, the rest is read for at
    most :data:`_DRAIN_SECONDS`. On Windows (where the loop cannot wait on a pipe) the server writes to
    our stderr as before.
    """
    if sys.platform == "win32":
        with os.fdopen(os.dup(sys.stderr.fileno()), "w") as inherited:  # a copy: closing it is ours
            yield inherited
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    errlog = os.fdopen(write_fd, "w", encoding="utf-8")
    lines = ServerStderr(server)
    ended = anyio.Event()

    async def pump() -> None:
        try:
            while True:
                await anyio.wait_readable(read_fd)
                try:
                    data = os.read(read_fd, _READ_CHUNK)
                except BlockingIOError:
                    continue
                if not data:
                    return
                lines.feed(data)
        finally:
            ended.set()

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(pump)
            try:
                yield errlog
            finally:
                errlog.close()
                with anyio.CancelScope(shield=True), anyio.move_on_after(_DRAIN_SECONDS):
                    await ended.wait()
                tasks.cancel_scope.cancel()
    finally:
        errlog.close()
        os.close(read_fd)
        lines.finish()
