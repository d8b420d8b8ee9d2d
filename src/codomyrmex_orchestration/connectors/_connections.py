"""Connections to the configured MCP servers, for the synchronous threads that run steps.

One event loop runs in a background thread (an anyio blocking portal, started with the first
connection); it holds one MCP ``Client`` per server, opened on first use and shared by every caller,
concurrent ones included. A connection that ends (the server exits, the stream breaks, a connect fails)
is replaced by a new one on the next call. Callers wait on concurrent futures without polling and leave
at once when their step is cancelled or reaches its deadline (the request is cancelled on the loop).

State owned: the portal and its thread, and the live link of each server, guarded by
``McpConnections._lock`` (a leaf lock for the threads of steps; code on the loop thread never takes it,
so handing the loop a task while holding it cannot deadlock).

A stdio server runs in its own process group, gets SIGKILL when our loop thread dies (Linux
parent-death signal), and is recorded under ``procs_dir`` while it runs (with our pid as its owner) so
that a restarted engine kills what a crash left behind (``core._procs``). When its connection closes,
what is left in its group (helpers it started) gets SIGTERM, then SIGKILL, before the record goes. Its
stderr is a pipe read into our log (``_stderr``), never inherited.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import CancelledError, Future
from contextlib import AbstractContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import httpx2
import mcp_types as types
from anyio.from_thread import BlockingPortal, start_blocking_portal
from mcp import Client, MCPError
from mcp.client.stdio import StdioServerParameters, get_default_environment, stdio_client
from mcp.client.streamable_http import streamable_http_client

from codomyrmex_orchestration.connectors._servers import HttpServer, ServerEntry, StdioServer
from codomyrmex_orchestration.connectors._stderr import stderr_into_log
from codomyrmex_orchestration.connectors._waits import CallCancelled, CallTimedOut, ConnectionLost, wait_for
from codomyrmex_orchestration.core._procs import owner_fields, stop_group
from codomyrmex_orchestration.core.actions.shell import KILL_GRACE_SECONDS
from codomyrmex_orchestration.logs import get_logger

__all__ = ["CONNECT_TIMEOUT", "McpConnections"]

log = get_logger("codomyrmex_orchestration.connectors")

#: Longest a connection may take to start (process start and handshake) before it is abandoned.
CONNECT_TIMEOUT = 30.0
#: Longest closing may wait for the connections to stop (each stdio server gets its SDK grace period).
_CLOSE_TIMEOUT = 10.0
_THREAD_NAME = "mcp-connections"

# Run before the server's command in the child (Linux): the parent-death signal (PR_SET_PDEATHSIG = 1,
# SIGKILL = 9; a libc without prctl goes without it), the check that the parent did not die before it
# was armed, the record of the process group, then exec.
_LAUNCHER = """\
import ctypes, json, os, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    os._exit(1)
record, about = sys.argv[2], sys.argv[3]
if record:
    stat = open('/proc/self/stat', 'rb').read()
    start = int(stat[stat.rfind(b')') + 2:].split()[19])
    with open(record + '.tmp', 'w') as f:
        f.write(json.dumps({**json.loads(about), 'pid': os.getpid(), 'start_time': start}))
    os.replace(record + '.tmp', record)
os.execvp(sys.argv[4], sys.argv[4:])
"""


class _WatchedRead:
    """The read stream of a transport, reporting its end: the server exited or the stream broke."""

    def __init__(self, inner: Any, lost: threading.Event) -> None:
        self._inner = inner
        self._lost = lost

    @property
    def last_context(self) -> Any:
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._lost.set()
            raise

    async def aclose(self) -> None:
        self._lost.set()
        await self._inner.aclose()

    def __aiter__(self) -> _WatchedRead:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> _WatchedRead:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


@dataclass(eq=False)
class _Link:
    """One connection: ``ready`` resolves to the client once the handshake is done."""

    server: str
    ready: Future[Client] = field(default_factory=Future)
    #: Set when the connection ended or failed; the next caller replaces it.
    lost: threading.Event = field(default_factory=threading.Event)
    #: The loop the connection lives on, and the task holding it open there.
    portal: BlockingPortal | None = None
    task: Future[None] | None = None
    #: The tools the server listed, fetched once per connection.
    tools: Future[list[types.Tool]] | None = None
    #: The process-group record of a stdio server, removed when the connection is closed.
    record: Path | None = None
    # Touched on the loop thread only. A connection is stopped by cancelling ``scope``, but never while
    # its transport is being set up (a process being spawned): cancelling asyncio's subprocess creation
    # half way leaks the process and its pipes. A stop asked for before the transport is up is carried
    # out as soon as it is (``stop_requested``).
    scope: anyio.CancelScope | None = None
    transport_up: bool = False
    stop_requested: bool = False

    def stop_on_loop(self) -> None:
        self.stop_requested = True
        if self.transport_up and self.scope is not None:
            self.scope.cancel()

    def usable(self) -> bool:
        if self.lost.is_set():
            return False
        if not self.ready.done():
            return True
        return not self.ready.cancelled() and self.ready.exception() is None


class McpConnections:
    """The connections to the servers of ``config/mcp_servers.json``, shared by every ``mcp.call``.

    Args:
        servers: name -> entry (see :func:`~codomyrmex_orchestration.connectors.load_servers`).
        procs_dir: where stdio servers' process groups are recorded while they run (``None``: in a
            private folder, where no restarted engine looks).
        connect_timeout: longest a connection may take to start.
    """

    def __init__(
        self,
        servers: Mapping[str, ServerEntry],
        *,
        procs_dir: Path | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.servers = dict(servers)
        self.procs_dir = procs_dir
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._portal: BlockingPortal | None = None
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._links: dict[str, _Link] = {}
        #: Links replaced while their connection may still be closing (close() waits for them).
        self._retired: list[_Link] = []
        self._closed = False
        #: The private records folder without ``procs_dir`` (created on first use, removed by close()).
        self._scratch: Path | None = None

    # ------------------------------------------------------------------ calls

    def call_tool(
        self,
        server: str,
        tool: str,
        arguments: dict[str, Any],
        *,
        timeout: float | None = None,
        on_cancel: Callable[[Callable[[], None]], Callable[[], None]] | None = None,
    ) -> types.CallToolResult:
        """Call ``tool`` on ``server`` and return its result (an ``isError`` result is returned too).

        Raises:
            KeyError: ``server`` is not configured.
            ConnectionLost: the connection could not be opened, or ended during the call.
            CallCancelled / CallTimedOut: ``on_cancel`` fired, or ``timeout`` passed, first.
            mcp.MCPError: the server answered with a protocol error (e.g. an unknown tool).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        link, client = self._client(server, deadline, on_cancel)
        call = self._run(link, client.call_tool, tool, arguments)
        try:
            return wait_for(call, timeout=_left(deadline), on_cancel=on_cancel)  # type: ignore[no-any-return]
        except (CallCancelled, CallTimedOut):
            raise
        except Exception as exc:
            if link.lost.is_set() or _is_closed(exc):
                link.lost.set()
                lost = f"the connection to MCP server {server!r} ended during the call"
                raise ConnectionLost(lost) from exc
            raise

    def list_tools(self, server: str, *, timeout: float | None = None) -> list[types.Tool]:
        """The tools ``server`` lists (fetched once per connection).

        Raises:
            KeyError, ConnectionLost, CallTimedOut: as for :meth:`call_tool`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        link, client = self._client(server, deadline, None)
        with self._lock:
            tools = link.tools
            if tools is None or tools.cancelled() or (tools.done() and tools.exception() is not None):
                tools = link.tools = self._run(link, _all_tools, client)
        try:
            return wait_for(tools, timeout=_left(deadline), on_cancel=None, owned=False)  # type: ignore[no-any-return]
        except CallTimedOut:
            raise
        except Exception as exc:
            link.lost.set()
            raise ConnectionLost(f"MCP server {server!r} did not list its tools: {_reason(exc)}") from exc

    def close(self) -> None:
        """Close every connection (stdio servers are stopped) and the loop thread. Calls after it fail
        with :class:`ConnectionLost` (a late one must not start a server nobody will stop)."""
        with self._lock:
            self._closed = True
            portal, portal_cm = self._portal, self._portal_cm
            links = list(self._links.values()) + self._retired
            self._portal = self._portal_cm = None
            self._links.clear()
            self._retired = []
            for link in links:
                self._stop_locked(link, portal)
            scratch, self._scratch = self._scratch, None
        if portal is not None and portal_cm is not None:
            for link in links:
                if link.task is not None:
                    with contextlib.suppress(Exception, CancelledError):
                        link.task.exception(timeout=_CLOSE_TIMEOUT)
            portal_cm.__exit__(None, None, None)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    # ------------------------------------------------------------------ the links

    def _client(
        self,
        server: str,
        deadline: float | None,
        on_cancel: Callable[[Callable[[], None]], Callable[[], None]] | None,
    ) -> tuple[_Link, Client]:
        entry = self.servers[server]  # KeyError: the caller names what exists
        link = self._link(server, entry)
        connect_deadline = time.monotonic() + self.connect_timeout
        limit = connect_deadline if deadline is None else min(deadline, connect_deadline)
        try:
            client = wait_for(link.ready, timeout=_left(limit), on_cancel=on_cancel, owned=False)
        except CallCancelled:
            raise
        except CallTimedOut:
            if deadline is not None and deadline <= connect_deadline:
                raise
            self._retire(link)
            raise ConnectionLost(
                f"MCP server {server!r} did not finish connecting within {self.connect_timeout:g} s"
            ) from None
        except Exception as exc:
            raise ConnectionLost(f"cannot connect to MCP server {server!r}: {_reason(exc)}") from exc
        return link, client

    def _link(self, server: str, entry: ServerEntry) -> _Link:
        with self._lock:
            link = self._links.get(server)
            if link is not None and link.usable():
                return link
            if link is not None:
                self._retire_locked(link)
            portal = self._portal_locked()
            link = _Link(server, portal=portal)
            if isinstance(entry, StdioServer) and sys.platform.startswith("linux"):
                link.record = self._records_locked() / f"mcp-{uuid.uuid4().hex}.json"
            link.task = portal.start_task_soon(self._hold, link, entry, name=f"mcp:{server}")
            self._links[server] = link
            return link

    def _retire(self, link: _Link) -> None:
        with self._lock:
            self._retire_locked(link)

    def _retire_locked(self, link: _Link) -> None:
        link.lost.set()
        if self._links.get(link.server) is link:
            del self._links[link.server]
        self._retired = [r for r in self._retired if r.task is not None and not r.task.done()]
        self._retired.append(link)
        self._stop_locked(link, self._portal)

    @staticmethod
    def _stop_locked(link: _Link, portal: BlockingPortal | None) -> None:
        if portal is not None and link.task is not None and not link.task.done():
            portal.start_task_soon(_stop, link)  # the loop closes the connection; nobody waits here

    def _records_locked(self) -> Path:
        """Where a stdio server's group is recorded: ``procs_dir``, else a private folder (the record
        is also how its leftovers are found when its connection closes)."""
        if self.procs_dir is not None:
            return self.procs_dir
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="codomyrmex-mcp-"))
        return self._scratch

    def _portal_locked(self) -> BlockingPortal:
        if self._closed:
            raise ConnectionLost("the MCP connections are closed: the engine is shutting down")
        if self._portal is None:
            cm = start_blocking_portal(name=_THREAD_NAME)
            self._portal = cm.__enter__()
            self._portal_cm = cm
        return self._portal

    @staticmethod
    def _run(link: _Link, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``fn(*args)`` on the loop of ``link``'s connection (its client lives there)."""
        assert link.portal is not None
        try:
            return link.portal.start_task_soon(fn, *args)
        except RuntimeError:  # that loop has stopped (close)
            raise ConnectionLost("the MCP connections were closed during the call") from None

    # ------------------------------------------------------------------ on the loop

    async def _hold(self, link: _Link, entry: ServerEntry) -> None:
        """Open the connection, publish it through ``link.ready``, keep it open until stopped."""
        try:
            with anyio.CancelScope() as link.scope:
                if link.stop_requested:
                    return
                async with AsyncExitStack() as stack:
                    transport = await stack.enter_async_context(_transport(entry, link, self.procs_dir))
                    info = types.Implementation(name="codomyrmex-orchestration", version="mcp.call")
                    client = await stack.enter_async_context(Client(transport, client_info=info))
                    link.ready.set_result(client)
                    log.info("mcp.connected", server=link.server, transport=entry.transport)
                    await anyio.sleep_forever()
        except Exception as exc:
            if not link.ready.done():
                link.ready.set_exception(exc)
            log.warning("mcp.connection_failed", server=link.server, error=_reason(exc))
        finally:
            link.lost.set()
            if not link.ready.done():
                link.ready.set_exception(ConnectionLost("the connection was closed before it was ready"))
            if link.record is not None:
                link.record.unlink(missing_ok=True)


async def _stop(link: _Link) -> None:
    link.stop_on_loop()


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _is_closed(exc: BaseException) -> bool:
    error = getattr(exc, "error", None)
    return getattr(error, "code", None) == types.CONNECTION_CLOSED


def _reason(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_reason(e) for e in exc.exceptions)
    if isinstance(exc, MCPError):
        return exc.error.message
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _all_tools(client: Client) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    for _ in range(100):  # a server whose cursor never ends cannot keep us here
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


@asynccontextmanager
async def _transport(entry: ServerEntry, link: _Link, procs_dir: Path | None) -> AsyncIterator[Any]:
    """The transport of ``entry`` as a ``Transport`` whose read stream reports its end to ``link``."""
    async with AsyncExitStack() as stack:
        if isinstance(entry, HttpServer):
            http = await stack.enter_async_context(
                httpx2.AsyncClient(headers=entry.headers, timeout=httpx2.Timeout(30.0, read=300.0))
            )
            read, write = await stack.enter_async_context(streamable_http_client(entry.url, http_client=http))
        else:
            parameters = _stdio_parameters(entry, link)
            errlog = await stack.enter_async_context(stderr_into_log(link.server))
            if link.record is not None:  # runs once the transport below has closed (the server stopped)
                stack.push_async_callback(_stop_leftovers, link)
            read, write = await stack.enter_async_context(stdio_client(parameters, errlog=errlog))
            errlog.close()  # the child has its own copy: the pipe ends when it and its helpers close theirs

        @asynccontextmanager
        async def streams() -> AsyncIterator[Any]:
            link.transport_up = True
            if link.stop_requested and link.scope is not None:
                link.scope.cancel()
            yield _WatchedRead(read, link.lost), write

        yield streams()


async def _stop_leftovers(link: _Link) -> None:
    """Once a stdio server has stopped: stop what it started in its process group (the SDK does only
    when the server itself must be killed), as ``shell.run`` does; its record is then removed."""
    assert link.record is not None
    try:
        record = json.loads(link.record.read_text(encoding="utf-8"))
        pid, start = int(record["pid"]), int(record["start_time"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # the launcher never got to write it: the server never ran
    with anyio.CancelScope(shield=True):  # bounded: the grace, then a bounded wait after SIGKILL
        left = await anyio.to_thread.run_sync(stop_group, pid, start, KILL_GRACE_SECONDS)
    if left:
        log.info("mcp.server_group_stopped", server=link.server, processes=left)


def _stdio_parameters(entry: StdioServer, link: _Link) -> StdioServerParameters:
    command, args = entry.command, list(entry.args)
    path = {**get_default_environment(), **entry.env}.get("PATH")
    if os.sep in command:  # a path, relative to the server's cwd
        found = os.access(os.path.join(entry.cwd or os.getcwd(), command), os.X_OK)
    else:
        found = shutil.which(command, path=path) is not None
    if not found:
        # Said here: behind the launcher the child would only exit, and the handshake see the pipe close.
        raise ConnectionLost(f"command {command!r} not found (PATH is {path!r})")
    if sys.platform.startswith("linux"):
        # The owner fields make an engine opening the same state directory leave this server alone
        # while we are alive (core._procs.reap_orphans); without them the record reads as a crash's.
        about = json.dumps({"server": link.server, "step": f"mcp server {link.server}", **owner_fields()})
        record = str(link.record) if link.record is not None else ""
        if link.record is not None:
            link.record.parent.mkdir(parents=True, exist_ok=True)
        args = ["-I", "-S", "-c", _LAUNCHER, str(os.getpid()), record, about, command, *args]
        command = sys.executable
    return StdioServerParameters(command=command, args=args, env=dict(entry.env) or None, cwd=entry.cwd)
