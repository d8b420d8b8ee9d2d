"""Step functions for the CLI's Ctrl-C tests, called through python.call by ``cli.main`` in the test's
own process, so the test shares their events: it learns when the step runs and times its SIGINTs."""

from __future__ import annotations

import signal
import threading

from codomyrmex_orchestration.core.actions import ActionContext

#: Set when a step below starts.
STARTED = threading.Event()
#: Set by the test once ``cli.main`` has returned.
RETURNED = threading.Event()


def wait_for_cancel(seconds: float, ctx: ActionContext) -> bool:
    """Say the step started, then wait up to ``seconds`` for its cancellation (True if it came)."""
    STARTED.set()
    return ctx.cancel_event.wait(seconds)


def ctrl_c_again_while_cancelled(seconds: float, ctx: ActionContext) -> bool:
    """As :func:`wait_for_cancel`; as the step is cancelled, on the thread cancelling it, a second Ctrl-C
    (SIGINT to the main thread), and a cancel on another thread than the main one is held there until
    ``cli.main`` has returned: the second Ctrl-C lands while the first one's cancel is being processed."""

    def again() -> None:
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
        if threading.current_thread() is not threading.main_thread():
            RETURNED.wait(seconds)

    ctx.cancel_event.add_callback(again)
    return wait_for_cancel(seconds, ctx)
