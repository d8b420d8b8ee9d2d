"""A small MCP server over stdio for the tests of ``mcp.call``: run as a script, it serves

- ``echo(message, count=1)``: structured content ``{"message", "count", "pid"}``;
- ``shout(text)``: the text upper-cased, as text content only;
- ``fail(reason)``: a result with ``isError`` and ``reason`` as its message;
- ``wait(seconds)``: sleeps, then returns ``{"slept": seconds}`` (timeouts and cancellation).

Every call appends the tool's name as one line to the file named by ``ECHO_CALLS_FILE`` (when set), so a
test can count the calls a workflow made (:func:`calls`) across restarts of the server. Use
:func:`entry` for its ``config/mcp_servers.json`` entry, and :func:`gone` to wait for a server process
(its pid is in every ``echo`` output) to have exited.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
CALLS_ENV = "ECHO_CALLS_FILE"


def entry(calls_file: Path | None = None, **extra: Any) -> dict[str, Any]:
    """The ``mcpServers`` entry that starts this server with the tests' Python."""
    env = {CALLS_ENV: str(calls_file)} if calls_file is not None else {}
    return {"command": sys.executable, "args": [str(SCRIPT)], "env": env, **extra}


def calls(calls_file: Path, tool: str | None = None) -> int:
    """How many calls (of ``tool``, or of any tool) the server recorded in ``calls_file``."""
    if not calls_file.exists():
        return 0
    lines = calls_file.read_text(encoding="utf-8").splitlines()
    return sum(1 for line in lines if tool is None or line == tool)


def gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether process ``pid`` has exited, and been reaped by its parent, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        exited, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    if not exited:
        return False
    # Reaping happens in another process (or on another event loop) and sends us nothing to wait on:
    # a bounded look at /proc.
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.01)
    return True


def _count(tool: str) -> None:
    path = os.environ.get(CALLS_ENV)
    if not path:
        return
    # One short write with O_APPEND: concurrent calls never interleave within a line.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{tool}\n".encode())
    finally:
        os.close(fd)


def main() -> None:
    import anyio
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer("echo")

    @server.tool()
    def echo(message: str, count: int = 1) -> dict[str, Any]:
        """Return the message, the count and this server's process id."""
        _count("echo")
        return {"message": message, "count": count, "pid": os.getpid()}

    @server.tool(structured_output=False)
    def shout(text: str) -> str:
        """Return the text upper-cased."""
        _count("shout")
        return text.upper()

    @server.tool()
    def fail(reason: str) -> str:
        """Fail with the reason."""
        _count("fail")
        raise ToolError(reason)

    @server.tool()
    async def wait(seconds: float) -> dict[str, Any]:
        """Sleep, then return."""
        _count("wait")
        await anyio.sleep(seconds)
        return {"slept": seconds}

    server.run("stdio")


if __name__ == "__main__":
    main()
