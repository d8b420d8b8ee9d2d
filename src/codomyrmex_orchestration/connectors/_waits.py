"""Waiting, from a step's thread, for work handed to the connections' event loop: the outcomes a caller
can meet besides the result. It imports nothing of ``mcp``, so the action can be registered (and its
parameters checked) without loading the SDK. It owns no state."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["CallCancelled", "CallTimedOut", "ConnectionLost", "wait_for"]


class ConnectionLost(Exception):
    """The connection to a server failed or ended; the next call opens a new one."""


class CallCancelled(Exception):
    """The caller's cancellation event was set while it waited."""


class CallTimedOut(Exception):
    """The caller's deadline passed while it waited."""


def wait_for(
    future: Future[Any],
    *,
    timeout: float | None,
    on_cancel: Callable[[Callable[[], None]], Callable[[], None]] | None,
    owned: bool = True,
) -> Any:
    """``future``'s result, waiting at most ``timeout`` seconds and no longer than until ``on_cancel``
    fires. On cancellation or timeout an ``owned`` future is cancelled (its task on the loop with it);
    a shared one (a connection others wait for too) is left alone.

    Raises:
        CallCancelled / CallTimedOut: the wait ended first.
        whatever the future raised.
    """
    woken = threading.Event()
    cancelled = threading.Event()
    future.add_done_callback(lambda _f: woken.set())

    def cancel() -> None:  # the timer thread runs it: only set events here
        cancelled.set()
        woken.set()

    remove = on_cancel(cancel) if on_cancel is not None else (lambda: None)
    try:
        woken.wait(timeout)
    finally:
        remove()
    if future.done() and not future.cancelled():
        return future.result()
    if owned:
        future.cancel()
    if cancelled.is_set():
        raise CallCancelled
    raise CallTimedOut
