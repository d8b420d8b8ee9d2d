"""The engine's lifecycle edges: its arguments checked before anything is opened, and its parts closed
newest first, at shutdown or when a construction failed half-way.

It owns no state: :func:`check_arguments` reads the arguments, :func:`close_parts` the parts the engine
has set (all of them after a construction, those set so far when its ``__init__`` raised).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from codomyrmex_orchestration.errors import InvalidInputError, TaskNotFoundError

if TYPE_CHECKING:
    from codomyrmex_orchestration.core.engine import OrchestrationEngine
    from codomyrmex_orchestration.core.scheduler import TaskOrchestrator

__all__ = ["check_arguments", "close_parts"]

_log = structlog.get_logger("codomyrmex_orchestration.engine")

#: Integer arguments -> (smallest accepted, whether ``None`` is accepted: no limit).
_INTEGERS: dict[str, tuple[int, bool]] = {
    "max_workers": (1, False),
    "max_queued_tasks": (1, True),
    "max_queued_per_client": (1, True),
    "max_steps": (1, False),
    "max_workflows": (1, False),
    "max_open_sessions": (1, False),
    "max_map_items": (1, False),
    "max_resolved_size": (1, False),
    "max_output_bytes": (1, True),
    "max_subworkflow_depth": (0, False),
    "max_subworkflow_runs": (0, False),
    "retention_runs": (1, False),
    "retention_events": (1, False),
    "state_max_bytes": (1, True),
    "max_parameters_bytes": (1, False),
}

#: Folder arguments -> whether ``None`` is accepted.
_FOLDERS: dict[str, bool] = {
    "state_dir": False,
    "config_dir": True,
    "projects_dir": False,
    "templates_dir": True,
    "sample_dir": True,
}


def check_arguments(arguments: Mapping[str, Any]) -> None:
    """Check the engine's limits and folders, each named as the caller passed it.

    Raises:
        InvalidInputError: the first argument out of range or of the wrong type; ``field`` is its name.
    """
    for name, (smallest, nullable) in _INTEGERS.items():
        value = arguments.get(name)
        if value is None and nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
            accepted = f"an integer >= {smallest}" + (" or None (no limit)" if nullable else "")
            raise InvalidInputError(name, f"must be {accepted}, got {value!r}")
    for name, nullable in _FOLDERS.items():
        value = arguments.get(name)
        if value is None and nullable:
            continue
        if not isinstance(value, str | os.PathLike):
            accepted = "a folder path (str or pathlib.Path)" + (" or None" if nullable else "")
            raise InvalidInputError(name, f"must be {accepted}, got {value!r}")


def close_parts(
    engine: OrchestrationEngine,
    *,
    cancel_running: bool = True,
    timeout: float | None = 10.0,
    keep: Iterable[object] = (),
) -> None:
    """Cancel running work (it stays resumable), stop the threads and close the store, newest part
    first; a part the engine has not set (its construction failed before it) is skipped.

    Every stage runs even if an earlier one fails (a broken store, a stuck backend): shutdown is what a
    SIGTERM handler calls, and it must leave nothing running behind it. A failure is logged and counted.

    Args:
        timeout: bounds each wait for threads and work (``None``: the parts' own defaults).
        keep: parts not to close: what a caller gave a construction that failed (a store, a registry)
            is still the caller's. Timers given to the engine are never closed here.
    """
    parts = vars(engine)
    kept = list(keep)
    stages: list[tuple[str, str, Callable[[Any], object]]] = [
        ("sessions", "sessions", lambda s: s.close(timeout)),
        ("workflows", "workflow_manager", lambda w: w.shutdown(cancel_running=cancel_running)),
        ("tasks", "task_orchestrator", lambda o: _cancel_unfinished(o) if cancel_running else None),
        (
            "scheduler",
            "task_orchestrator",
            lambda o: o.shutdown(wait=True, cancel_pending=True, timeout=timeout),
        ),
        ("actions", "registry", lambda r: r.close()),  # services the actions share (MCP connections)
        ("resources", "resource_manager", lambda r: r.shutdown()),
        ("events", "events", lambda e: e.close(timeout)),
        ("timers", "timers", lambda t: t.close(timeout) if parts.get("_owns_timers") else None),
        ("store", "store", lambda s: s.close()),
    ]
    for component, attribute, close in stages:
        part = parts.get(attribute)
        if part is None or any(part is k for k in kept):
            continue
        try:
            close(part)
        except Exception as exc:
            counters = parts.get("counters")
            if counters is not None:
                counters.record_error(component, exc)
            _log.error("shutdown stage failed", component=component, error=f"{type(exc).__name__}: {exc}")


def _cancel_unfinished(orchestrator: TaskOrchestrator) -> None:
    # One listing, then a cancel for each task not final yet: cancel_task handles whatever state a task
    # has reached by then. (Listing RUNNING, then READY, missed a task that started in between, and
    # shutdown then waited its whole timeout for it.)
    # A task that ends after the listing may be gone by its cancel (a workflow step's record is dropped
    # as it ends, and finished records are evicted): it needs no cancelling.
    for task in orchestrator.list_tasks(limit=1_000_000):
        if not task.status.is_terminal:
            with contextlib.suppress(TaskNotFoundError):
                orchestrator.cancel_task(task.task_id, "the engine is shutting down")
