"""Builds the scheduler's tasks: checks the settings the tasks of one submission share (timeout, retry
policy, priority, resources), binds an action to the backend, and numbers the task ids.

It owns the id counter and the action registry (created on first need when none was given); the
scheduler (:mod:`.scheduler`) queues what it builds.
"""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from codomyrmex_orchestration.core._numbers import check_count, check_seconds, shown
from codomyrmex_orchestration.core._results import json_output
from codomyrmex_orchestration.core._retry import RetryPolicy
from codomyrmex_orchestration.core._store_codec import check_parameters
from codomyrmex_orchestration.core._task import Task, TaskGroup
from codomyrmex_orchestration.core.actions import (
    ActionContext,
    ActionDefinition,
    ActionRegistry,
    create_registry,
)
from codomyrmex_orchestration.core.actions._policy import pinned_extras
from codomyrmex_orchestration.core.backends import ActionCall, ExecutionBackend
from codomyrmex_orchestration.core.models import TaskPriority, TaskSpec, parse_priority
from codomyrmex_orchestration.errors import InvalidInputError

if TYPE_CHECKING:
    from codomyrmex_orchestration.core.scheduler import StateCallback, TaskCallable, TaskCallback

__all__ = ["TaskCall", "TaskFactory", "TaskSettings", "check_task_parameters"]


class TaskSettings(NamedTuple):
    """What tasks share, checked (:meth:`TaskOrchestrator.settings`): one value serves any number of
    submissions (a run builds one per distinct step setting, not one per step)."""

    priority: TaskPriority
    timeout: float | None
    retry: RetryPolicy
    resources: Mapping[str, Any] | None
    run_id: str | None
    live_state: bool
    session_id: str | None
    group: TaskGroup | None


class TaskCall(NamedTuple):
    """What differs between the tasks of one :meth:`TaskOrchestrator.submit_many` call (the
    arguments of :meth:`TaskOrchestrator.submit` of the same names)."""

    fn: TaskCallable | None
    name: str
    step_name: str | None = None
    on_start: TaskCallback | StateCallback | None = None
    on_done: TaskCallback | StateCallback | None = None
    action: ActionCall | None = None
    dependencies: Sequence[str] = ()
    instant: bool = False


class TaskFactory:
    """Checked settings and new :class:`Task` objects for one scheduler.

    Args:
        registry: the action registry (``None``: ``create_registry()`` at the first action task).
        backend: binds an action task's callable to where it runs.
        check_resources: raises unless requirements could ever be granted (the scheduler's check).
        max_parameters_bytes: the most bytes of JSON an action task's parameters may take (``None``: no
            limit); a queued task keeps them in memory until it runs.
    """

    def __init__(
        self,
        registry: ActionRegistry | None,
        backend: ExecutionBackend,
        check_resources: Callable[[Mapping[str, Any]], None],
        max_parameters_bytes: int | None = None,
    ) -> None:
        if max_parameters_bytes is not None:
            check_count(max_parameters_bytes, "max_parameters_bytes", at_least=1)
        self.max_parameters_bytes = max_parameters_bytes
        self._registry = registry
        self._backend = backend
        self._check_resources = check_resources
        self._ids = itertools.count(1)
        self._id_prefix = f"t-{uuid.uuid4().hex[:8]}-"

    @property
    def id_prefix(self) -> str:
        """What the ids of its tasks begin with (``t-`` and 8 hex digits of this instance, ``-``)."""
        return self._id_prefix

    def registry(self) -> ActionRegistry:
        if self._registry is None:
            self._registry = create_registry()
        return self._registry

    def action_call(self, spec: TaskSpec) -> ActionCall:
        """The checked action call of a single task (``TaskOrchestrator.submit_task``): its parameters'
        size (before anything reads them), then what validating the same step would refuse.

        Raises:
            LimitExceededError: the parameters' JSON is over ``max_parameters_bytes`` (naming
                ``CODOMYRMEX_MAX_PARAMETERS_BYTES``).
            UnknownActionError, ActionRefusedError, InvalidInputError: see :func:`check_task_parameters`.
        """
        if self.max_parameters_bytes is not None:  # about 1 µs for a few short values (pydantic_core)
            check_parameters(spec.parameters, self.max_parameters_bytes, what="the task's parameters")
        registry = self.registry()
        check_task_parameters(registry.get(spec.module, spec.action), spec.parameters)
        allow = registry.allow_code_execution  # a worker's registry refuses what ours does
        return ActionCall(spec.module, spec.action, dict(spec.parameters), allow_code_execution=allow)

    def settings(
        self,
        priority: TaskPriority,
        timeout: float | None,
        max_retries: int,
        retry_delay: float,
        backoff: float,
        resources: Mapping[str, Any] | None,
        run_id: str | None,
        live_state: bool,
        session_id: str | None,
        group: TaskGroup | None = None,
    ) -> TaskSettings:
        """The settings tasks share, checked (see :meth:`TaskOrchestrator.submit`)."""
        if run_id is not None and not isinstance(run_id, str):
            raise _not_text("run_id", run_id)
        if session_id is not None and not isinstance(session_id, str):  # a key of the ready queue
            raise _not_text("session_id", session_id)
        if timeout is not None and not ((type(timeout) is float or type(timeout) is int) and timeout > 0):
            # not a plain positive number (inf is one: without limit): refused, or a numeric string read
            timeout = check_seconds(timeout, "timeout", allow_zero=False, unlimited=True)
        retry = RetryPolicy.of(max_retries, retry_delay, backoff)
        if type(priority) is not TaskPriority:
            priority = _priority(priority)
        if resources:
            self._check_resources(resources)
        return TaskSettings(
            priority, timeout, retry, resources or None, run_id, live_state, session_id, group
        )

    def task(
        self,
        fn: TaskCallable | None,
        name: str,
        step_name: str | None,
        on_start: TaskCallback | StateCallback | None,
        on_done: TaskCallback | StateCallback | None,
        action: ActionCall | None,
        dependencies: Sequence[str],
        instant: bool,
        settings: TaskSettings,
    ) -> Task:
        """A new task with the next id (not queued yet). ``instant``: its callable returns at once and
        never blocks (an action task is instant when its action is); never so on a backend that runs
        the action elsewhere, since the worker then waits for it."""
        if not isinstance(name, str):  # every record of the task carries it
            raise InvalidInputError("name", f"must be a string, got {shown(name)}")
        if step_name is not None and not isinstance(step_name, str):
            raise _not_text("step_name", step_name)
        priority, timeout, retry, resources, run_id, live_state, session_id, group = settings
        if action is not None:
            if fn is None:
                definition = self.registry().get(action.module, action.action)
                fn, instant = _action_callable(definition, action), definition.instant
            if self._backend.remote:
                # A worker looks the action up in a registry of its own, without the policy pinned on
                # ours (the python.call allow-list, the private-address guard): the call carries it.
                pinned = pinned_extras(self.registry(), action.module, action.action)
                if pinned:
                    action = dataclasses.replace(action, extras={**action.extras, **pinned})
            fn = self._backend.bind(fn, action, priority=priority, resources=resources)
            instant = instant and not self._backend.remote
        elif fn is None:
            raise InvalidInputError("fn", "give a callable, or an action (module, action, parameters)")
        elif not callable(fn):
            raise InvalidInputError("fn", f"must be a callable taking an ActionContext, got {shown(fn)}")
        deps = _task_ids(dependencies) if dependencies else ()
        task_id = f"{self._id_prefix}{next(self._ids)}"
        run = (run_id, step_name, on_start, on_done, live_state, session_id, group, instant)
        return Task(task_id, fn, name, priority, deps, timeout, retry, resources, *run)


def check_task_parameters(definition: ActionDefinition, parameters: Mapping[str, Any]) -> None:
    """Refuse what validating the same call as a workflow step would refuse, before the task is queued:
    a parameter name the action does not declare (worded as for a workflow step: ``dag.unknown_parameters``;
    a task's values are passed as they are, never read as templates) and a malformed literal value (the
    action's ``check``).

    Raises:
        InvalidInputError: naming ``parameters.<name>`` and what the action accepts.
    """
    accepted = definition.parameters
    unknown = sorted(parameters.keys() - accepted.keys()) if accepted and "*" not in accepted else []
    if unknown:
        # Imported here: the DAG module (and networkx) comes with the first task refused, not with the
        # scheduler.
        from codomyrmex_orchestration.core.dag import unknown_parameters

        qualified = f"{definition.module}.{definition.action}"
        raise InvalidInputError(f"parameters.{unknown[0]}", unknown_parameters(qualified, unknown, accepted))
    problems = definition.check(parameters) if definition.check is not None else []
    if problems:  # each one reads "parameters.<name>: what is wrong" (an InvalidInputError's text)
        field, sep, reason = problems[0].partition(": ")
        if not sep or not field.startswith("parameters"):
            field, reason = "parameters", problems[0]
        raise InvalidInputError(field, "; ".join([reason, *problems[1:]]))


def _priority(value: object) -> TaskPriority:
    try:
        return parse_priority(value)
    except ValueError:
        raise InvalidInputError(
            "priority",
            f"{shown(value)} is not a priority; use critical, high, normal, low or background (or 0-4)",
        ) from None


def _task_ids(value: object) -> tuple[str, ...]:
    """Dependencies: a list (or another iterable) of task ids; one string is refused, not read as ids of
    one character each."""
    if type(value) is list:
        value = tuple(value)
    elif type(value) is not tuple:
        if isinstance(value, str | bytes) or not isinstance(value, Iterable):
            raise _not_ids(value)
        value = tuple(value)
    for task_id in value:
        if not isinstance(task_id, str):
            raise _not_ids(value)
    return value


def _not_ids(value: object) -> InvalidInputError:
    return InvalidInputError("dependencies", f"must be a list of task ids (strings), got {shown(value)}")


def _not_text(field: str, value: object) -> InvalidInputError:
    return InvalidInputError(field, f"must be a string or None, got {shown(value)}")


def _action_callable(definition: ActionDefinition, call: ActionCall) -> TaskCallable:
    """``definition.func(parameters, ctx)`` (the registry refused unknown or refused actions already)."""
    func = definition.func
    parameters = dict(call.parameters)

    def run(ctx: ActionContext) -> Any:
        return json_output(func(parameters, ctx), ctx.step_name)

    return run
