"""What connected clients hear as the core moves: run and step log messages, resource updates and list
changes, carried from core threads onto the event loop.

:class:`NotificationHub` owns the peers (one per initialized 2025-era connection: its log level, its
resource subscriptions, its outgoing queue and the task that drains it; and one per 2026-era request
that asked for log messages, while it runs), the run each peer started, the engine it listens to, and
the 2026-07-28 subscription bus (``subscriptions/listen`` streams).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.connection import Connection, allowed_log_levels
from mcp.server.lowlevel import Server
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
)
from mcp_types import LOG_LEVEL_META_KEY, LoggingLevel
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from codomyrmex_orchestration.logs import get_logger
from codomyrmex_orchestration.server import _logging, _subscriptions
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools, _call_soon

__all__ = ["NotificationHub", "Peer", "connection_of"]

log = get_logger("codomyrmex_orchestration.server")

_NO_PEER: contextlib.nullcontext[None] = contextlib.nullcontext(None)

# How long a request's answer waits for its queued log messages to be sent (the client reads its stream).
_DRAIN_SECONDS = 5.0

# How many notifications may wait for one client before newer ones are dropped (a client that stops
# reading its stream must not grow the server's memory; notifications are advisory).
_PEER_QUEUE = 1024

Outgoing = tuple[str, dict[str, Any] | None]


def connection_of(ctx: Any) -> Connection:
    """The per-client ``Connection`` behind a request context.

    The low-level ``ServerRequestContext`` of mcp 2.3 carries the connection only inside its per-request
    ``ServerSession`` (``Context.connection``, the public accessor, is not built by the server's runner
    yet: the SDK's "L54" context rework). It is the one handle that lives as long as the client, holds
    the standalone channel notifications travel on, and tears down with the client.
    """
    connection = getattr(ctx.session, "_connection", None)
    if not isinstance(connection, Connection):
        raise TypeError("this mcp version's request context carries no Connection")
    return connection


Notify = Callable[[str, dict[str, Any] | None], Awaitable[None]]


@dataclass(eq=False)
class Peer:
    """Where notifications can reach a client: an initialized 2025-era connection (its standalone
    channel), or one 2026-era request that asked for log messages (its own response stream, while it
    lasts)."""

    connection: Connection
    token: anyio.lowlevel.EventLoopToken
    outbox: MemoryObjectSendStream[Outgoing]
    notify: Notify
    # Guarded by the hub's lock: the minimum level of run/step log messages (None: none sent) and the
    # resource URIs subscribed to.
    level: LoggingLevel | None = None
    subscriptions: set[str] = field(default_factory=set)
    # Set when the pump has sent everything queued (a request's peer waits for it before answering).
    drained: anyio.Event = field(default_factory=anyio.Event)


@dataclass(eq=False)
class _Loop:
    """One entry of the server's lifespan: the task group the pumps of its connections run in."""

    tasks: anyio.abc.TaskGroup
    token: anyio.lowlevel.EventLoopToken
    bus_outbox: MemoryObjectSendStream[ServerEvent]


class _ObservedBus(InMemorySubscriptionBus):
    """The in-process bus, knowing whether any listen stream is open (no stream: nothing to publish)."""

    def __init__(self) -> None:
        super().__init__()
        # Listen streams open. Changed on the event loop only; read by core threads without a lock, where
        # a stale count only means an event for a stream opening at that instant is not published to it.
        self.listening = 0

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        unsubscribe = super().subscribe(listener)
        self.listening += 1
        done = False

        def once() -> None:
            nonlocal done
            if not done:
                done = True
                self.listening -= 1
                unsubscribe()

        return once


# The peer whose request is running in this context: set around a tool call, read by the engine
# listener on the thread that starts a run (anyio's worker threads run in a copy of the caller's context).
_calling_peer: ContextVar[Peer | None] = ContextVar("codomyrmex_calling_peer", default=None)


class NotificationHub:
    """Delivers core events to the clients that asked for them.

    Args:
        tools: the server's tools; the hub listens to their engine once it exists (:meth:`watch_engine`).
    """

    def __init__(self, tools: OrchestrationMCPTools) -> None:
        self._tools = tools
        self.bus = _ObservedBus()
        self._lock = threading.Lock()
        # Guarded by _lock: connected peers by connection, the peer that started each running run, the
        # lifespan entries open (the first carries the bus), the engine listened to.
        self._peers: dict[Connection, Peer] = {}
        self._requests: set[Peer] = set()  # 2026-era requests that asked for log messages, while they run
        self._owners: dict[str, Peer] = {}
        self._loops: list[_Loop] = []
        self._engine: Any = None

    # -- lifecycle

    @contextlib.asynccontextmanager
    async def lifespan(self, server: Any) -> AsyncIterator[_Loop]:
        """The server's lifespan: a task group for the connections' pumps, cancelled at the end."""
        sender, receiver = anyio.create_memory_object_stream[ServerEvent](_PEER_QUEUE)
        async with anyio.create_task_group() as tg:
            loop = _Loop(tg, anyio.lowlevel.current_token(), sender)
            tg.start_soon(self._publish_events, receiver)
            with self._lock:
                self._loops.append(loop)
            try:
                yield loop
            finally:
                with self._lock:
                    self._loops.remove(loop)
                sender.close()
                tg.cancel_scope.cancel()

    def join(self, ctx: Any) -> Peer | None:
        """Register the request's connection as a peer (2025-era connections only); idempotent."""
        loop = ctx.lifespan_context
        connection = connection_of(ctx)
        if not isinstance(loop, _Loop) or connection.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return None  # 2026-07-28: each request is its own connection; events go through the bus
        with self._lock:
            peer = self._peers.get(connection)
            if peer is not None:
                return peer
            outbox, inbox = anyio.create_memory_object_stream[Outgoing](_PEER_QUEUE)
            peer = Peer(connection, loop.token, outbox, connection.notify)
            self._peers[connection] = peer
        connection.exit_stack.callback(self._leave, peer)
        loop.tasks.start_soon(self._pump, peer, inbox)
        return peer

    def peer(self, ctx: Any) -> Peer | None:
        """The registered peer of the request's connection, if any."""
        with self._lock:
            return self._peers.get(connection_of(ctx))

    def request_logs(self, ctx: Any) -> contextlib.AbstractAsyncContextManager[Peer | None]:
        """For a 2026-07-28 request whose ``_meta`` asks for log messages (the era's per-request opt-in,
        in place of ``logging/setLevel``): a peer that sends the log messages of the runs the request
        starts on the request's own stream, at or above the level asked for, until the request ends.
        Everything queued is sent before the block exits (before the response). ``None`` otherwise."""
        meta = ctx.meta
        if not meta or LOG_LEVEL_META_KEY not in meta:
            return _NO_PEER  # the usual call: no generator to build
        return self._request_logs(ctx)

    @contextlib.asynccontextmanager
    async def _request_logs(self, ctx: Any) -> AsyncIterator[Peer | None]:
        loop = ctx.lifespan_context
        levels = allowed_log_levels(ctx.protocol_version, ctx.meta)
        if not isinstance(loop, _Loop) or ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS or not levels:
            yield None
            return
        session, request_id = ctx.session, ctx.request_id

        async def notify(method: str, params: dict[str, Any] | None) -> None:
            message = types.LoggingMessageNotificationParams.model_validate(params)
            notification = types.LoggingMessageNotification(params=message)
            await session.send_notification(notification, related_request_id=request_id)

        outbox, inbox = anyio.create_memory_object_stream[Outgoing](_PEER_QUEUE)
        minimum = next(level for level in _logging.LEVELS if level in levels)
        peer = Peer(connection_of(ctx), loop.token, outbox, notify, level=minimum)
        with self._lock:
            self._requests.add(peer)
        loop.tasks.start_soon(self._pump, peer, inbox)
        try:
            yield peer
        finally:
            self._leave(peer)
            with anyio.move_on_after(_DRAIN_SECONDS, shield=True):
                await peer.drained.wait()

    def _leave(self, peer: Peer) -> None:
        with self._lock:
            if self._peers.get(peer.connection) is peer:
                del self._peers[peer.connection]
            self._requests.discard(peer)
            for run_id in [r for r, owner in self._owners.items() if owner is peer]:
                del self._owners[run_id]
        peer.outbox.close()

    @staticmethod
    async def _pump(peer: Peer, inbox: MemoryObjectReceiveStream[Outgoing]) -> None:
        try:
            async with inbox:
                async for method, params in inbox:
                    try:
                        await peer.notify(method, params)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        return  # the client or its request is gone: notifications are advisory
                    except Exception as exc:  # one bad notification must not end the server's task group
                        log.warning("notification.failed", method=method, error=str(exc))
        finally:
            peer.drained.set()

    async def _publish_events(self, inbox: MemoryObjectReceiveStream[ServerEvent]) -> None:
        async with inbox:
            async for event in inbox:
                await self.bus.publish(event)

    def install(self, server: Server[Any]) -> None:
        """Serve ``logging/setLevel`` and register each client at ``notifications/initialized``.

        Registered by method rather than ``Server(on_set_logging_level=...)``, which warns that the
        capability is deprecated at 2026-07-28: it is, and the SDK does not route it on that era's wire,
        but 2025-11-25 clients (the conformance suite, the Inspector) use it.
        """

        async def on_set_level(ctx: Any, params: types.SetLevelRequestParams) -> types.EmptyResult:
            peer = self.join(ctx)
            if peer is not None:
                self.set_level(peer, params.level)
            self.watch_engine()
            return types.EmptyResult()

        async def on_initialized(ctx: Any, params: types.NotificationParams) -> None:
            self.join(ctx)

        server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, on_set_level)
        server.add_notification_handler("notifications/initialized", types.NotificationParams, on_initialized)

    def owner(self, run_id: str) -> Peer | None:
        """The peer that started the active run ``run_id``, while it is connected."""
        with self._lock:
            return self._owners.get(run_id)

    # -- settings per peer

    def set_level(self, peer: Peer, level: LoggingLevel) -> None:
        with self._lock:
            peer.level = level

    def subscribe(self, peer: Peer, uri: str, *, limit: int) -> bool:
        """Subscribe ``peer`` to ``uri``; False (nothing changes) when it holds ``limit`` others."""
        with self._lock:
            if uri not in peer.subscriptions and len(peer.subscriptions) >= limit:
                return False
            peer.subscriptions.add(uri)
            return True

    def unsubscribe(self, peer: Peer, uri: str) -> None:
        with self._lock:
            peer.subscriptions.discard(uri)

    @staticmethod
    def calling(peer: Peer | None) -> contextlib.AbstractContextManager[None]:
        """Runs started inside this block belong to ``peer`` (their log messages go to it)."""
        return _Calling(peer)

    # -- the engine

    def watch_engine(self) -> None:
        """Listen to the tools' engine if it has started and is not listened to yet (cheap to repeat)."""
        if not self._tools.engine_started:
            return
        engine = self._tools.engine
        if engine is self._engine:  # every call after the first: no lock (checked again under it below)
            return
        with self._lock:
            if engine is self._engine:
                return
            self._engine = engine
        engine.workflow_manager.add_listener(self._on_event)
        # Whatever happened before the hub listened (the call that started the engine) may have
        # changed the lists: say so once.
        self._changed(_subscriptions.LIST_URIS, lists_changed=True)

    def projects_changed(self, name: str | None) -> None:
        """A project was created (the core has no project events: the server reports its own)."""
        self._changed(_subscriptions.project_uris(name), lists_changed=True)

    def _on_event(self, event: str, payload: dict[str, Any]) -> None:
        """The workflow manager's listener: on core threads, short, never blocking."""
        run_id = payload.get("run_id")
        if run_id is not None:
            self._run_event(event, run_id, payload)
        uris, lists_changed = _subscriptions.changed_by(event, payload)
        if uris or lists_changed:
            self._changed(uris, lists_changed=lists_changed)

    def _run_event(self, event: str, run_id: str, payload: dict[str, Any]) -> None:
        with self._lock:
            if event == "run.started":
                starter = _calling_peer.get()
                if starter is not None and (starter.connection in self._peers or starter in self._requests):
                    self._owners[run_id] = starter
            owner = self._owners.pop(run_id, None) if event in _logging.RUN_ENDS else self._owners.get(run_id)
            level = owner.level if owner is not None else None
        if owner is None or level is None:
            return
        message = _logging.message_for(event, payload)
        if message is not None and _logging.at_least(message["level"], level):
            self._send(owner, "notifications/message", message)

    def _changed(self, uris: Iterable[str], *, lists_changed: bool) -> None:
        uris = tuple(uris)
        with self._lock:
            peers = list(self._peers.values())
            wanted = [(p, [u for u in uris if u in p.subscriptions]) for p in peers]
            bus_loop = self._loops[0] if self._loops and self.bus.listening else None
        for peer, matched in wanted:
            for uri in matched:
                self._send(peer, "notifications/resources/updated", {"uri": uri})
            if lists_changed:
                self._send(peer, "notifications/resources/list_changed", None)
        if bus_loop is not None:
            # One loop carries the bus: a server serves its clients from one event loop.
            events: list[ServerEvent] = [ResourceUpdated(uri=u) for u in uris]
            if lists_changed:
                events.append(ResourcesListChanged())
            for ev in events:
                _call_soon(bus_loop.token, _offer(bus_loop.bus_outbox, ev))

    @staticmethod
    def _send(peer: Peer, method: str, params: dict[str, Any] | None) -> None:
        _call_soon(peer.token, _offer(peer.outbox, (method, params)))


class _Calling:
    """The block of :meth:`NotificationHub.calling` (a class, not a generator: it wraps every tool call)."""

    __slots__ = ("_peer", "_reset")

    def __init__(self, peer: Peer | None) -> None:
        self._peer = peer

    def __enter__(self) -> None:
        self._reset = _calling_peer.set(self._peer)

    def __exit__(self, *exc_info: object) -> None:
        _calling_peer.reset(self._reset)


def _offer(outbox: MemoryObjectSendStream[Any], item: Any) -> Callable[[], None]:
    """A callback for the outbox's loop that queues ``item`` without waiting (dropped when full)."""

    def put() -> None:
        try:
            outbox.send_nowait(item)
        except anyio.WouldBlock:
            log.warning("notification.dropped", reason="the client is not reading its notifications")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return  # the client is gone

    return put
