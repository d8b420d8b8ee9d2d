"""ParallelExecutor: the original's context-manager API for running plain callables, as a door into the
one scheduler (:class:`~codomyrmex_orchestration.core.scheduler.TaskOrchestrator`), not a second engine."""

from __future__ import annotations

import graphlib
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

from codomyrmex_orchestration.core._numbers import check_seconds, shown
from codomyrmex_orchestration.core.actions import ActionContext
from codomyrmex_orchestration.core.models import TaskRecord, TaskStatus
from codomyrmex_orchestration.core.scheduler import DEFAULT_WAIT_TIMEOUT, TaskOrchestrator
from codomyrmex_orchestration.core.timers import wait_limit
from codomyrmex_orchestration.errors import CycleDetectedError, InvalidInputError, WaitTimeoutError

__all__ = ["ExecutionResult", "ParallelExecutor"]

#: Seconds to let ``on_done`` callbacks of tasks cancelled at the overall timeout finish.
_SETTLE_GRACE = 5.0


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """The outcome of one callable run by :class:`ParallelExecutor`.

    Attributes:
        task_name: the key (or ``task_<index>`` for a sequence) the callable was given under.
        success: True only when the callable returned (status COMPLETED).
        result: its return value, or ``None``.
        error: why it did not complete (exception message, skip or timeout reason), or ``None``.
        error_type: the exception type name (``"StepTimeoutError"``, ``"DependencyFailed"``...), or ``None``.
        status: the final task status.
        duration: seconds it ran (0.0 when it never started).
    """

    task_name: str
    success: bool
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    status: TaskStatus = TaskStatus.COMPLETED
    duration: float = 0.0

    @property
    def execution_time(self) -> float:
        """The original's name for :attr:`duration`."""
        return self.duration

    @classmethod
    def from_record(cls, task_name: str, record: TaskRecord) -> ExecutionResult:
        return cls(
            task_name=task_name,
            success=record.status is TaskStatus.COMPLETED,
            result=record.result,
            error=record.error.message if record.error else None,
            error_type=record.error.type if record.error else None,
            status=record.status,
            duration=record.duration_seconds or 0.0,
        )


class ParallelExecutor:
    """Run callables in parallel, respecting dependencies between them, on the shared scheduler.

    Args:
        max_workers: workers of the executor's own scheduler (ignored when ``orchestrator`` is given).
        timeout: seconds for a whole :meth:`execute_tasks` / :meth:`execute_task_group` call; tasks not
            finished by then are cancelled and reported TIMED_OUT (default
            :data:`~codomyrmex_orchestration.core.scheduler.DEFAULT_WAIT_TIMEOUT`; ``None`` or inf: without
            limit).
        orchestrator: the scheduler to submit to; when ``None`` the executor creates one and shuts it
            down on :meth:`close` / context exit.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        orchestrator: TaskOrchestrator | None = None,
    ) -> None:
        self.timeout = check_seconds(timeout, "timeout", allow_zero=False, unlimited=True)
        self._owned = orchestrator is None
        self._orchestrator = orchestrator or TaskOrchestrator(max_workers, name="parallel-executor")
        self.max_workers = self._orchestrator.max_workers

    @property
    def orchestrator(self) -> TaskOrchestrator:
        return self._orchestrator

    def close(self) -> None:
        """Shut down the executor's own scheduler (a shared one is left running)."""
        if self._owned:
            # Its calls take no context, so one it gave up on cannot notice the cancellation: waiting
            # for such a call to return would only delay the exit (it is left behind, a daemon).
            self._orchestrator.shutdown(wait=True, cancel_pending=True, abandoned_grace=0.0)

    def __enter__(self) -> ParallelExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def execute_tasks(
        self,
        tasks: Mapping[str, Callable[[], Any]],
        dependencies: Mapping[str, Sequence[str]] | None = None,
    ) -> dict[str, ExecutionResult]:
        """Run every callable once its dependencies completed; return results by name.

        A task whose dependency did not complete is not run (SKIPPED).

        Raises:
            InvalidInputError: ``tasks`` is not a mapping of names (strings) to callables, or
                ``dependencies`` not one of names to lists of known task names (never one string).
            CycleDetectedError: the dependencies form a cycle (``.cycle`` has the path).
        """
        deps = _checked(tasks, dependencies)
        sorter = graphlib.TopologicalSorter(deps)
        try:
            order = list(sorter.static_order())
        except graphlib.CycleError as exc:
            cycle = [str(node) for node in reversed(exc.args[1])]  # graphlib lists it against the edges
            raise CycleDetectedError(cycle) from None

        records: dict[str, TaskRecord] = {}
        lock = threading.Lock()
        all_done = threading.Event()
        remaining = [len(order)]

        def on_done(record: TaskRecord) -> None:
            with lock:
                records[record.task_id] = record
                remaining[0] -= 1
                if remaining[0] == 0:
                    all_done.set()

        ids: dict[str, str] = {}
        orch = self._orchestrator
        try:
            for name in order:
                ids[name] = orch.submit(
                    _call(tasks[name]),
                    name=name,
                    dependencies=[ids[d] for d in deps[name]],
                    on_done=on_done,
                )
        except BaseException:
            for task_id in ids.values():
                orch.cancel_task(task_id, reason="the executor's batch could not be submitted")
            raise
        if not order:
            all_done.set()
        expired = not all_done.wait(wait_limit(self.timeout))  # None: without limit
        limit = self.timeout or 0.0
        if expired:
            reason = f"the executor's timeout of {limit:g} s expired"
            for task_id in ids.values():  # in dependency order: a dependent hears its dependency timed out
                orch.cancel_task(task_id, reason=reason, timed_out=True)
            # Every task is final now (cancel_task finalizes at once); on_done may still be running.
            if not all_done.wait(_SETTLE_GRACE):
                raise WaitTimeoutError("the executor's tasks", limit)
        return {name: ExecutionResult.from_record(name, records[ids[name]]) for name in tasks}

    @overload
    def execute_task_group(self, tasks: Mapping[str, Callable[[], Any]]) -> dict[str, ExecutionResult]: ...

    @overload
    def execute_task_group(self, tasks: Sequence[Callable[[], Any]]) -> list[ExecutionResult]: ...

    def execute_task_group(
        self, tasks: Sequence[Callable[[], Any]] | Mapping[str, Callable[[], Any]]
    ) -> list[ExecutionResult] | dict[str, ExecutionResult]:
        """Run independent callables in parallel: a list in gives a list out (names ``task_<i>``), a
        mapping in gives a dict out."""
        if isinstance(tasks, Mapping):
            return self.execute_tasks(tasks)
        if isinstance(tasks, str | bytes) or not isinstance(tasks, Iterable):
            raise InvalidInputError("tasks", f"must be a list of callables or a mapping, got {shown(tasks)}")
        named = {f"task_{i}": fn for i, fn in enumerate(tasks)}
        results = self.execute_tasks(named)
        return [results[name] for name in named]


def _checked(tasks: object, dependencies: object) -> dict[str, list[str]]:
    """Each task's dependencies, once ``tasks`` (names to callables) and ``dependencies`` (names to lists
    of names) are checked; a refusal names the argument and the key."""
    if not isinstance(tasks, Mapping):
        raise InvalidInputError(
            "tasks",
            f"must be a mapping of task names to callables (execute_task_group takes a list), "
            f"got {shown(tasks)}",
        )
    if dependencies is not None and not isinstance(dependencies, Mapping):
        raise InvalidInputError(
            "dependencies",
            f"must be a mapping of task names to lists of task names, got {shown(dependencies)}",
        )
    for name, fn in tasks.items():
        if not isinstance(name, str):  # the name of the task's record
            raise InvalidInputError("tasks", f"task names must be strings, got the key {name!r}")
        if not callable(fn):
            raise InvalidInputError(f"tasks.{name}", f"must be a callable taking no arguments, got {fn!r}")
    deps: dict[str, list[str]] = {name: [] for name in tasks}
    for name, wanted in (dependencies or {}).items():
        if name not in tasks:
            raise InvalidInputError(
                "dependencies", f"{name!r} has dependencies but is not a task; tasks: {sorted(tasks)}"
            )
        if isinstance(wanted, str | bytes) or not isinstance(wanted, Iterable):
            raise InvalidInputError(
                f"dependencies.{name}", f"must be a list of task names, got {shown(wanted)}"
            )
        deps[name] = wanted = list(wanted)
        unknown = [d for d in wanted if not isinstance(d, str) or d not in tasks]
        if unknown:
            raise InvalidInputError(
                f"dependencies.{name}", f"unknown task(s) {unknown}; tasks: {sorted(tasks)}"
            )
    return deps


def _call(fn: Callable[[], Any]) -> Callable[[ActionContext], Any]:
    def run(ctx: ActionContext) -> Any:
        return fn()

    return run
