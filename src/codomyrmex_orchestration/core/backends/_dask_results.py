"""Results of the Dask backend's steps, fetched in batches: one ``gather`` for every step that finished
since the last one, instead of a client round trip per step.

A finished Dask future's value stays on its worker until the client asks for it; asking per step (what
``Future.result()`` does) costs a round trip through the scheduler for each, after a hop through
Dask's callback thread to learn the step finished. Here one thread, ``codomyrmex-dask-results``,
waits for finished futures (``distributed.as_completed``), gathers the values of all that finished in
one call and wakes each step's dispatch slot. Anything else (an error, a cancellation, a value lost
with its worker) is left to the slot, which then asks its own future as before.

State: ``_lock`` guards ``_waiting`` (future key -> the slot's :class:`Outcome`), ``_thread`` and
``_closed``; ``_has_work`` (on that lock) wakes the thread when a future is tracked or on close.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from distributed import Client, Future, as_completed

__all__ = ["Outcome", "ResultCollector"]


class Outcome:
    """What the collector found for one future; ``wake`` is the slot's event (also set on cancel)."""

    __slots__ = ("has_value", "value", "wake")

    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake
        self.has_value = False
        self.value: Any = None


class ResultCollector:
    """Wakes each tracked future's slot when it finishes, with its value when it could be gathered."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._finished: as_completed = as_completed()
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)
        self._waiting: dict[str, Outcome] = {}
        self._thread: threading.Thread | None = None
        self._closed = False

    def track(self, future: Future[Any], outcome: Outcome) -> None:
        """Set ``outcome.wake`` once ``future`` is finished (with its value in ``outcome``, if gathered)."""
        with self._lock:
            if self._thread is None:
                self._closed = False  # tracked again after close(): a backend may outlive a scheduler
                self._thread = threading.Thread(
                    target=self._collect, name="codomyrmex-dask-results", daemon=True
                )
                self._thread.start()
            self._waiting[str(future.key)] = outcome
            # Added while holding the lock: a key in _waiting is always in _finished until collected,
            # so the thread never finds work announced but nothing to wait for.
            self._finished.add(future)
            self._has_work.notify()

    def forget(self, future: Future[Any]) -> None:
        """The slot stopped waiting (cancelled, timed out): nothing to deliver when it finishes."""
        with self._lock:
            self._waiting.pop(str(future.key), None)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread once the futures in flight have finished (the scheduler cancels them first).

        A later :meth:`track` starts a new one: the scheduler closes its backend on shutdown, and a
        backend built on a caller's client may serve another scheduler after that.
        """
        with self._lock:
            self._closed = True
            self._has_work.notify()
            thread = self._thread
        if thread is None:
            return
        thread.join(timeout)
        with self._lock:
            if self._thread is thread and not thread.is_alive():
                self._thread = None

    def _collect(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._has_work.wait()
                if not self._waiting:
                    return  # closed, and nothing left to deliver
            try:
                batch = self._finished.next_batch(block=True)
            except StopIteration:
                # Nothing in flight: a slot still listed can only be answered by its own future.
                with self._lock:
                    stranded, self._waiting = list(self._waiting.values()), {}
                for outcome in stranded:
                    outcome.wake.set()
                continue
            self._deliver(batch)

    def _deliver(self, batch: Sequence[Future[Any]]) -> None:
        with self._lock:
            owned = [(f, self._waiting.pop(str(f.key))) for f in batch if str(f.key) in self._waiting]
        done = [(f, outcome) for f, outcome in owned if f.status == "finished"]
        if done:
            try:
                values = self._client.gather([f for f, _ in done], errors="raise")
            except Exception:  # a value lost with its worker: each slot then asks its own future
                values = None
            if values is not None:
                for (_, outcome), value in zip(done, values, strict=True):
                    outcome.value = value
                    outcome.has_value = True
        for _, outcome in owned:
            outcome.wake.set()
