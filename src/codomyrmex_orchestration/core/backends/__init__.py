"""Execution backends: where the scheduler's ready steps run (``local`` threads or a ``dask`` cluster).

The :class:`~codomyrmex_orchestration.core.scheduler.TaskOrchestrator` keeps ordering, priorities,
dependencies, resource admission, timeouts, retries and state; a backend only decides how one attempt of
an *action* step is executed. A step is described to the backend as an :class:`ActionCall` (the action's
name and its resolved, picklable parameters), never as a closure, so a backend may run it in another
process. Only :mod:`codomyrmex_orchestration.core.backends.dask` (with its ``_dask_client``,
``_dask_submit`` and ``_dask_results``) imports Dask, and only when selected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from codomyrmex_orchestration.config import Executor
from codomyrmex_orchestration.core.actions import ActionContext
from codomyrmex_orchestration.core.models import TaskPriority
from codomyrmex_orchestration.errors import InvalidInputError

__all__ = [
    "EXECUTORS",
    "LOCAL_ONLY_ACTIONS",
    "ActionCall",
    "ExecutionBackend",
    "Executor",
    "LocalBackend",
    "create_backend",
    "parse_pairs",
]

EXECUTORS: tuple[Executor, ...] = ("local", "dask")

#: Actions that need the server process itself and therefore always run on the scheduler's threads:
#: ``workflow.run`` starts a child run through the WorkflowManager, which only exists there; ``mcp.call``
#: uses the server's shared connections to the other MCP servers (and its registry alone has it).
LOCAL_ONLY_ACTIONS: frozenset[str] = frozenset({"workflow.run", "mcp.call"})

StepCallable = Callable[[ActionContext], Any]


@dataclass(frozen=True, slots=True)
class ActionCall:
    """A step as it travels to a worker: the action's name, its resolved parameters, context fields.

    Everything here must be picklable (JSON-like parameters are). Per-attempt fields (attempt, task
    id, time left before the deadline) are taken from the attempt's :class:`ActionContext` when it runs.

    Attributes:
        module, action: the two halves of ``module.action``; the worker looks them up in its own
            ``create_registry()``.
        parameters: the resolved parameters (templates already substituted).
        depth: sub-workflow nesting depth of the run the step belongs to.
        extras: free-form context data for plugins (``ActionContext.extras``).
        allow_code_execution: the submitting registry's setting; the worker's registry honours it.
    """

    module: str
    action: str
    parameters: Mapping[str, Any]
    depth: int = 0
    extras: Mapping[str, Any] = field(default_factory=dict)
    allow_code_execution: bool = True

    @property
    def qualified_name(self) -> str:
        return f"{self.module}.{self.action}"


class ExecutionBackend(Protocol):
    """What the scheduler needs from a backend.

    ``bind`` is called once per submitted action task, on the submitting thread; the callable it returns
    runs on a scheduler worker thread for every attempt and blocks until the attempt's result is known.
    It must return promptly once ``ctx.cancel_event`` is set (the scheduler sets it on cancellation and
    on timeout) and should then stop the remote work.
    """

    name: str
    #: True when ``bind`` may send a step elsewhere: callers then describe each step as an
    #: :class:`ActionCall` (a backend that always runs ``fn`` in-process needs none).
    remote: bool

    def bind(
        self,
        fn: StepCallable,
        call: ActionCall,
        *,
        priority: TaskPriority,
        resources: Mapping[str, Any] | None,
    ) -> StepCallable:
        """Return what a worker thread calls for each attempt: ``fn`` itself to run in-process."""
        ...

    def describe(self) -> dict[str, Any]:
        """Name, and for a cluster its scheduler address, workers and threads (for health and stats)."""
        ...

    def close(self) -> None:
        """Release what the backend started (clients, clusters). Called by the scheduler's shutdown."""
        ...


class LocalBackend:
    """The default: every attempt runs on the scheduler's own worker threads, in this process."""

    name = "local"
    remote = False

    def bind(
        self,
        fn: StepCallable,
        call: ActionCall,
        *,
        priority: TaskPriority,
        resources: Mapping[str, Any] | None,
    ) -> StepCallable:
        return fn

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    def close(self) -> None:
        return None


def parse_pairs(
    entries: Mapping[str, Any] | tuple[str, ...] | list[str] | None, field_name: str
) -> dict[str, str]:
    """``("gpu=GPU", "memory=MEMORY")`` (the form environment variables give) as a dict.

    Raises:
        InvalidInputError: an entry is not ``name=value``.
    """
    if entries is None:
        return {}
    if isinstance(entries, Mapping):
        return {str(k): str(v) for k, v in entries.items()}
    out: dict[str, str] = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise InvalidInputError(field_name, f"expected entries of the form name=value, got {entry!r}")
        out[name.strip()] = value.strip()
    return out


def create_backend(
    executor: Executor = "local",
    *,
    dask_scheduler: str | None = None,
    dask_n_workers: int | None = None,
    dask_processes: bool = True,
    dask_worker_resources: Mapping[str, Any] | tuple[str, ...] | None = None,
    dask_resource_map: Mapping[str, Any] | tuple[str, ...] | None = None,
    dask_worker_saturation: float | None = None,
) -> ExecutionBackend:
    """Build the backend named by ``executor`` (the ``executor`` / ``dask_*`` settings).

    Args:
        executor: ``"local"`` (the scheduler's threads) or ``"dask"``.
        dask_scheduler: ``tcp://host:8786`` of a running Dask scheduler; ``None`` starts a LocalCluster.
        dask_n_workers, dask_processes: the LocalCluster's workers and whether they are processes.
        dask_worker_resources: resources each LocalCluster worker declares (``{"GPU": 1}``).
        dask_resource_map: our resource name -> Dask resource name; a step's requirement on a mapped
            resource is also passed to Dask so the step only lands on workers that declare it.
        dask_worker_saturation: ``distributed.scheduler.worker-saturation`` for the LocalCluster
            (``None`` keeps Dask's default; ``inf`` sends every ready step to a worker at once).

    Raises:
        InvalidInputError: unknown executor, malformed pairs, or ``dask`` without the ``dask`` extra.
    """
    if executor == "local":
        return LocalBackend()
    if executor != "dask":
        raise InvalidInputError("executor", f"must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    try:
        from codomyrmex_orchestration.core.backends.dask import DaskBackend
    except ImportError as exc:
        raise InvalidInputError(
            "executor",
            f"the dask executor needs Dask distributed ({exc.name or exc}): "
            "pip install 'codomyrmex-orchestration[dask]'",
        ) from None
    worker_resources = {
        k: float(v) for k, v in parse_pairs(dask_worker_resources, "dask_worker_resources").items()
    }
    return DaskBackend(
        address=dask_scheduler,
        n_workers=dask_n_workers,
        processes=dask_processes,
        worker_resources=worker_resources or None,
        resource_map=parse_pairs(dask_resource_map, "dask_resource_map"),
        worker_saturation=dask_worker_saturation,
    )
