"""The engine's event bus: delivers ``(event, payload)`` to registered handlers on one daemon thread.

It owns the handler table (an immutable snapshot replaced whole under ``_lock``, so publishing and
delivery read it without a lock and a handler may register or unregister handlers, itself included,
while events are delivered), the delivery queue, the delivery thread (started with the first
handler) and the count of events published but not yet delivered (``_idle``).
:class:`Publisher` is the engine's one way to announce an event: counted, logged in the store, delivered.
:data:`ENGINE_EVENTS` names every event it publishes: a handler registered for another name would never
be called, so the engine's bus refuses one.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Collection, Mapping
from types import MappingProxyType
from typing import Any

from codomyrmex_orchestration._suggest import did_you_mean
from codomyrmex_orchestration.core._metrics import EngineCounters
from codomyrmex_orchestration.core._workflow_events import RUN_EVENTS, STEP_EVENTS
from codomyrmex_orchestration.core.models import TaskStatus
from codomyrmex_orchestration.core.store import EngineStateStore
from codomyrmex_orchestration.errors import InvalidInputError, OrchestrationError
from codomyrmex_orchestration.logs import get_logger

__all__ = ["ENGINE_EVENTS", "EventBus", "EventHandler", "Publisher"]

_log = get_logger("codomyrmex_orchestration.engine")

EventHandler = Callable[[str, dict[str, Any]], None]
"""``handler(event, payload)``; ``"*"`` registers for every event."""

_EMPTY: Mapping[str, tuple[EventHandler, ...]] = MappingProxyType({})

#: Every event the engine publishes (ENGINE.md lists them with their payloads' meaning).
ENGINE_EVENTS: frozenset[str] = frozenset(
    {
        "session.created",
        "session.closed",
        "workflow.created",
        "workflow.deleted",
        "run.started",
        "run.failed",
        "run.interrupted",
        "run.waiting_for_input",
        "run.input_received",
        *RUN_EVENTS.values(),
        "step.started",
        "step.retried",
        "step.failed",
        *STEP_EVENTS.values(),
        *(f"task.{status.value}" for status in TaskStatus if status.is_terminal),
        "resource.allocated",
        "resource.released",
        "resource.exhausted",
    }
)


class EventBus:
    """Delivers events to handlers on one daemon thread, off the hot path.

    Args:
        on_error: called (on the delivery thread) with the event and the exception when a handler
            raises; the handler's failure never reaches the publisher.
        name: the delivery thread's name.
        events: the names a handler may be registered for, besides ``"*"`` (``None``: any).
    """

    def __init__(
        self,
        on_error: Callable[[str, BaseException], None],
        *,
        name: str = "codomyrmex-events",
        events: Collection[str] | None = None,
    ) -> None:
        self._on_error = on_error
        self._name = name
        self._events = events
        # _lock guards replacing _handlers (the snapshot itself is never mutated) and _thread/_closed.
        self._lock = threading.Lock()
        self._handlers: Mapping[str, tuple[EventHandler, ...]] = _EMPTY
        self._thread: threading.Thread | None = None
        self._closed = False
        self._queue: queue.SimpleQueue[tuple[str, dict[str, Any]] | None] = queue.SimpleQueue()
        # _idle guards _pending and delivered.
        self._idle = threading.Condition()
        self._pending = 0
        self.delivered = 0

    def register(self, event: str, handler: EventHandler) -> None:
        """Call ``handler(event, payload)`` for each ``event`` published (``"*"``: every one).

        Raises:
            InvalidInputError: ``event`` is none of the names this bus publishes (the message lists them).
        """
        if self._events is not None and event != "*" and event not in self._events:
            raise InvalidInputError(
                "event",
                f"{event!r} is not an event the engine publishes{did_you_mean(str(event), self._events)} "
                f"(no patterns); accepted: '*', {', '.join(sorted(self._events))}",
            )
        with self._lock:
            table = dict(self._handlers)
            table[event] = (*table.get(event, ()), handler)
            self._handlers = MappingProxyType(table)
            # Started with the first handler, not the first event: publishing stays a queue put.
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()

    def unregister(self, event: str, handler: EventHandler) -> bool:
        """Forget one registration of ``handler`` for ``event``; False if there was none."""
        with self._lock:
            handlers = list(self._handlers.get(event, ()))
            if handler not in handlers:
                return False
            handlers.remove(handler)
            table = dict(self._handlers)
            if handlers:
                table[event] = tuple(handlers)
            else:
                del table[event]
            self._handlers = MappingProxyType(table)
            return True

    def has_handlers(self) -> bool:
        return bool(self._handlers)

    def publish(self, event: str, payload: dict[str, Any]) -> None:
        handlers = self._handlers  # one snapshot: never mutated, only replaced
        if event not in handlers and "*" not in handlers:
            # Nobody listens (the usual case): waking the delivery thread for nothing would cost a
            # thread switch per task and per step. A handler registered later sees later events.
            return
        with self._lock:
            if self._closed or self._thread is None:
                return
            with self._idle:
                self._pending += 1
            self._queue.put((event, payload))

    def drain(self, timeout: float | None = 5.0) -> bool:
        """Wait until every published event was delivered (``timeout=None``: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            event, payload = item
            handlers = self._handlers
            for handler in (*handlers.get(event, ()), *handlers.get("*", ())):
                try:
                    handler(event, payload)
                except Exception as exc:
                    self._on_error(event, exc)
            with self._idle:
                self._pending -= 1
                self.delivered += 1
                self._idle.notify_all()

    @property
    def alive(self) -> bool:
        """True while events can be delivered (before the first one the thread is not needed yet)."""
        with self._lock:
            thread, closed = self._thread, self._closed
        return not closed and (thread is None or thread.is_alive())

    def close(self, timeout: float | None = 5.0) -> None:
        """Deliver what was published, then stop the thread (``timeout=None``: no limit). Idempotent."""
        self.drain(timeout)
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)


class Publisher:
    """Counts an event, appends it to the store's event log and hands it to the bus.

    ``step.started`` is counted and delivered but not logged (one row per step start would double the
    log for nothing a reader needs). A store that fails is counted, never raised to the publisher.
    """

    def __init__(self, *, store: EngineStateStore, counters: EngineCounters) -> None:
        self._store = store
        self._counters = counters
        self.bus = EventBus(self._handler_failed, events=ENGINE_EVENTS)

    def publish(self, event: str, payload: dict[str, Any]) -> None:
        self._counters.count_event(event, cached=payload.get("cached") is True)
        if not event.startswith("step.started"):
            try:
                self._store.append_event(event, payload)
            except OrchestrationError as exc:
                self._counters.record_error("store", exc)
        self.bus.publish(event, payload)

    def _handler_failed(self, event: str, exc: BaseException) -> None:
        self._counters.record_error("events", exc)
        _log.warning("event handler failed", event_name=event, error=str(exc), error_type=type(exc).__name__)
