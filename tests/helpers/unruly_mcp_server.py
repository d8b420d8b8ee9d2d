"""A stdio MCP server that does what a careless one does, for the tests of ``mcp.call``'s process and
stderr handling: run as a script, it serves

- ``hold(path)``: writes ``"holding"`` to the file ``path + ".started"``, then waits (at most 60 s)
  until ``path`` exists and returns ``{"pid": <its pid>}`` (a call kept in flight as long as a test
  needs);
- ``spawn()``: starts ``sleep 300`` in its process group and returns ``{"child": <its pid>}``;
- ``complain(text)``: writes ``text`` and a newline to its stderr, returns ``{"pid": <its pid>}``;
- ``crash(message)``: raises ``ValueError(message)``, which the SDK logs with a traceback on stderr.

Use :func:`entry` for its ``config/mcp_servers.json`` entry.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()


def entry(**extra: Any) -> dict[str, Any]:
    """The ``mcpServers`` entry that starts this server with the tests' Python."""
    return {"command": sys.executable, "args": [str(SCRIPT)], **extra}


def main() -> None:
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("unruly")

    @server.tool()
    def hold(path: str) -> dict[str, Any]:
        """Wait until the file ``path`` exists (in a worker thread of the SDK; bounded)."""
        Path(path + ".started").write_text("holding", encoding="utf-8")
        deadline = time.monotonic() + 60
        while not Path(path).exists() and time.monotonic() < deadline:
            threading.Event().wait(0.02)  # another process creates the file: nothing to block on
        return {"pid": os.getpid()}

    @server.tool()
    def spawn() -> dict[str, Any]:
        """Start a helper process that outlives the call."""
        child = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        return {"child": child.pid}

    @server.tool()
    def complain(text: str) -> dict[str, Any]:
        """Write ``text`` to stderr."""
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
        return {"pid": os.getpid()}

    @server.tool()
    def crash(message: str) -> str:
        """Raise an unexpected exception."""
        raise ValueError(message)

    server.run("stdio")


if __name__ == "__main__":
    main()
