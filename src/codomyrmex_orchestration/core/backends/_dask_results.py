"""Results of the Dask backend's steps, fetched in batches: one ``gather`` for every step that finished
since the last one, instead of a client round trip per step.

A finished Dask future's value stays on its worker until the client asks for it; asking per step (what
``Future.result()`` does) costs a round trip through the scheduler for each, after a hop through
Dask's callback thread to learn the step finished. Here one task on the client's own event loop waits
for finished futures (``distributed.as_completed``, iterated asynchronously: its threaded iterator can
miss a wake-up and then sleeps 100 ms), gathers the values of all that finished in one call and wakes
each step's dispatch slot. Anything else (an error, a cancellation, a value lost with its worker) is
left to the slot, which then asks its own future as before.

State: everything below is touched on the client's event loop only (:meth:`track` is called there by
the submit batcher; :meth:`forget` and :meth:`close` hand their work to it): ``_waiting`` (future
key -> the slot's :class:`Outcome`), ``_finished``, ``_has_work``, ``_task`` and ``_closed``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from distributed import Client, Future, as_completed

__all__ = ["Outcome", "ResultCollector"]


class Outcome:
    """What the collector found for one future; ``wake`` is the slot's event (also set on cancel).
    ``error`` is set instead when the submission itself failed (the client refused it)."""

    __slots__ = ("error", "has_value", "value", "wake")

    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake
        self.has_value = False
        self.value: Any = None
        self.error: BaseException | None = None


class ResultCollector:
    """Wakes each tracked future's slot when it finishes, with its value when it could be gathered."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._finished: as_completed = as_completed(loop=client.loop)
        self._waiting: dict[str, Outcome] = {}
        self._has_work: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def track(self, future: Future[Any], outcome: Outcome) -> None:
        """On the client's event loop: set ``outcome.wake`` once ``future`` is finished (with its value
        in ``outcome``, if gathered)."""
        if self._task is None or self._task.done() or self._closed:
            # First use, or tracked again after close(): a backend may outlive a scheduler. A task told
            # to close may not have ended yet: it would end without delivering this one, so it is left
            # to end and a new one collects.
            self._closed = False
            self._has_work = asyncio.Event()
            self._task = asyncio.ensure_future(self._collect())
        self._waiting[str(future.key)] = outcome
        self._finished.add(future)
        assert self._has_work is not None
        self._has_work.set()

    def forget(self, future: Future[Any]) -> None:
        """From a slot that stopped waiting (cancelled, timed out): nothing to deliver for ``future``."""
        self._on_loop(self._waiting.pop, str(future.key), None)

    def close(self) -> None:
        """Let the collecting task end (it finishes delivering what is in flight first)."""
        self._on_loop(self._close)

    def _on_loop(self, fn: Any, *args: Any) -> None:
        loop = self._client.loop
        if loop is not None:  # a closed client has no loop, and nothing left to collect
            loop.add_callback(fn, *args)

    def _close(self) -> None:
        self._closed = True
        if self._has_work is not None:
            self._has_work.set()

    async def _collect(self) -> None:
        has_work = self._has_work  # this task's own: a newer task has another
        assert has_work is not None
        while not self._closed and self._has_work is has_work:
            if not self._waiting:
                has_work.clear()
                await has_work.wait()
                continue
            await self._deliver_next()

    async def _deliver_next(self) -> None:
        # Its own coroutine: a future left in a local of _collect, which waits for work, stayed referenced
        # and kept its task (and value) on the cluster until the next step finished.
        try:
            first = await self._finished.__anext__()
        except StopAsyncIteration:
            # Nothing in flight: a slot still listed can only be answered by its own future.
            stranded, self._waiting = list(self._waiting.values()), {}
            for outcome in stranded:
                outcome.wake.set()
            return
        await self._deliver([first, *self._finished.next_batch(block=False)])

    async def _deliver(self, batch: Sequence[Future[Any]]) -> None:
        owned = [(f, self._waiting.pop(str(f.key))) for f in batch if str(f.key) in self._waiting]
        done = [(f, outcome) for f, outcome in owned if f.status == "finished"]
        if done:
            try:
                values = await self._client.gather([f for f, _ in done], errors="raise", asynchronous=True)
            except Exception:  # a value lost with its worker: each slot then asks its own future
                values = None
            if values is not None:
                for (_, outcome), value in zip(done, values, strict=True):
                    outcome.value = value
                    outcome.has_value = True
        for _, outcome in owned:
            outcome.wake.set()
