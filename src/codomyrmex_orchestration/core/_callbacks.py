"""Calling the code the scheduler hands news to (listeners, ``on_start``, ``on_done``, ``on_settled``):
whatever it raises is logged, never propagated, so a callback cannot kill the worker thread that
delivers it nor leave the task it reports on unsettled. Owns no state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from codomyrmex_orchestration.core._task import Task

__all__ = ["safe_call"]

_log = structlog.get_logger("codomyrmex_orchestration.scheduler")


def safe_call(fn: Callable[..., Any], kind: str, task: Task, *args: Any) -> None:
    """``fn(*args)``, logging what it raises, ``SystemExit`` and other ``BaseException`` included (a
    worker survives them as it survives an action's); only Ctrl-C on the main thread goes on up."""
    try:
        fn(*args)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
            raise
        _log.exception("scheduler.callback_failed", callback=kind, task_id=task.id, task=task.name)
