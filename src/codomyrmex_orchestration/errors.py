"""The exception tree of codomyrmex-orchestration.

Every error the package raises on purpose derives from :class:`OrchestrationError`; each subclass
carries its data as attributes and builds a message that is safe and useful to show a language model
(what was wrong, which field, what would be accepted). Builtins a caller would naturally catch are
mixed in (``ValueError``, ``LookupError``, ``TimeoutError``, ``PermissionError``)::

    OrchestrationError
    ├── InvalidInputError (ValueError)          .field, .reason
    │   ├── DAGValidationError                  .problems
    │   │   └── CycleDetectedError              .cycle
    │   ├── UnknownActionError                  .module, .action, .known
    │   │   └── ActionUnavailableError          .worker
    │   ├── TemplateError                       .path
    │   ├── InvalidNameError                    .kind, .name
    │   └── LimitExceededError                  .limit, .value
    ├── NotFoundError (LookupError)             .kind, .key
    │   ├── WorkflowNotFoundError               .version (one not kept), .kept
    │   ├── RunNotFoundError
    │   ├── TaskNotFoundError
    │   ├── SessionNotFoundError
    │   ├── ProjectNotFoundError
    │   └── ResourceNotFoundError
    ├── AlreadyExistsError (ValueError)         .kind, .key
    ├── ActionRefusedError (PermissionError)    .module, .action, .reason
    │   └── WorkflowRefusedError                .workflow, .step (a workflow using a refused action)
    ├── StepError                               .step
    │   ├── StepFailedError                     .error_type
    │   ├── StepTimeoutError (TimeoutError)     .timeout
    │   └── StepCancelledError
    ├── WaitTimeoutError (TimeoutError)         .what, .timeout, .state, .others
    ├── InsufficientResourcesError              .requested, .available
    ├── InvalidStateError                       .kind, .key, .state
    ├── SchedulerShutdownError (RuntimeError)
    ├── StateStoreError (OSError)               .path
    ├── SecretsFileError (PermissionError)      .path, .reason
    └── ProjectCreationError (OSError)          .name, .path, .reason
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

__all__ = [
    "ActionRefusedError",
    "ActionUnavailableError",
    "AlreadyExistsError",
    "CycleDetectedError",
    "DAGValidationError",
    "InsufficientResourcesError",
    "InvalidInputError",
    "InvalidNameError",
    "InvalidStateError",
    "LimitExceededError",
    "NotFoundError",
    "OrchestrationError",
    "ProjectCreationError",
    "ProjectNotFoundError",
    "ResourceNotFoundError",
    "RunNotFoundError",
    "SchedulerShutdownError",
    "SecretsFileError",
    "SessionNotFoundError",
    "StateStoreError",
    "StepCancelledError",
    "StepError",
    "StepFailedError",
    "StepTimeoutError",
    "TaskNotFoundError",
    "TemplateError",
    "UnknownActionError",
    "WaitTimeoutError",
    "WorkflowNotFoundError",
    "WorkflowRefusedError",
]


class OrchestrationError(Exception):
    """Root of every error raised on purpose by codomyrmex-orchestration. Never raised bare."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take other __init__ arguments than their message, so the default
        # ``cls(*args)`` would fail to unpickle; restore the instance from its state instead. Errors
        # cross process boundaries (Dask workers send them back with the step's failure).
        return (_restore_error, (type(self), self.message, dict(self.__dict__)))


def _restore_error(cls: type[OrchestrationError], message: str, state: dict[str, Any]) -> OrchestrationError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


# --------------------------------------------------------------------------- input


class InvalidInputError(OrchestrationError, ValueError):
    """An argument or document is malformed; ``field`` names where, ``reason`` says what is accepted."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)

    @classmethod
    def from_validation(
        cls,
        exc: Any,
        *,
        where: str = "",
        accepted: Iterable[str] | None = None,
        known_fields: Iterable[str] = (),
        accepted_at: Callable[[tuple[Any, ...]], Iterable[str] | None] | None = None,
    ) -> InvalidInputError:
        """The one formatter of pydantic ``ValidationError``s: field paths, what was wrong, what is accepted.

        Args:
            exc: a ``pydantic.ValidationError`` (typed loosely: this module does not import pydantic).
            where: a prefix for every field path (``"steps.0"``, ``"arguments"``), or "".
            accepted: the field names accepted where an unknown one was given, listed in its message.
            known_fields: every field name of the document (at any depth), for "did you mean" on an
                unknown one (``depends_on`` -> ``dependencies``); ``accepted`` is searched too.
            accepted_at: instead of ``accepted``, the field names accepted in the object an unknown field
                was found in, given that object's location (``("steps", 0)``); None: it cannot say.

        Returns:
            An error whose ``field`` is the first problem's path and whose message lists the first five
            problems, then how many more there were.
        """
        parts, fields = validation_problems(
            exc.errors(), where=where, accepted=accepted, known_fields=known_fields, accepted_at=accepted_at
        )
        if len(parts) > 5:
            parts[5:] = [f"and {len(parts) - 5} more"]
        error = InvalidInputError("", "; ".join(parts) or f"{where or 'input'} is invalid")
        error.field = fields[0] if fields else (where or "input")
        return error


def validation_problems(
    errors: Iterable[Mapping[str, Any]],
    *,
    where: str = "",
    accepted: Iterable[str] | None = None,
    known_fields: Iterable[str] = (),
    accepted_at: Callable[[tuple[Any, ...]], Iterable[str] | None] | None = None,
) -> tuple[list[str], list[str]]:
    """Each pydantic error (``ValidationError.errors()``) as one sentence, with the field paths.

    An unknown field lists what is accepted where it was found (``accepted_at``, else ``accepted``) and
    suggests the closest name; a missing one says so; any other says what is expected there. The members
    of a union pydantic tried are not part of a path (``compute``, not ``compute.float``): their failures
    are one problem naming every shape accepted ("a number or a string"); a class name reads as the
    object expected, with its fields where ``accepted_at`` knows them.
    """
    from codomyrmex_orchestration._suggest import did_you_mean
    from codomyrmex_orchestration._validation_text import describe, union_problems

    accepted_names = list(accepted) if accepted is not None else None
    known = list(known_fields)
    parts: list[str] = []
    fields: list[str] = []
    for problem in union_problems(list(errors), frozenset([*known, *(accepted_names or ())])):
        err, loc = problem.error, [str(p) for p in problem.path]
        path = ".".join([where, *loc] if where else loc) or "input"
        fields.append(path)
        kind = err.get("type", "")
        if kind == "extra_forbidden":
            names = accepted_names
            if accepted_at is not None:
                level = accepted_at(problem.loc[:-1])
                names = list(level) if level is not None else None
            suggestible = [*(names or ()), *known]
            hint = did_you_mean(loc[-1], suggestible) if loc and suggestible else ""
            accepted_text = f" (accepted: {', '.join(names)})" if names else ""
            parts.append(f"unknown field {path!r}{hint}{accepted_text}")
        elif kind == "missing":
            parts.append(f"missing required field {path!r}")
        else:
            at = problem.loc
            fields_there = partial(accepted_at, at) if accepted_at is not None else lambda: None
            parts.append(f"{path}: {describe(problem, fields_there)}")
    return parts, fields


class DAGValidationError(InvalidInputError):
    """A workflow graph is invalid. ``problems`` lists every problem found, not only the first."""

    def __init__(
        self, problems: Sequence[str], *, workflow: str | None = None, unchecked: Sequence[str] = ()
    ) -> None:
        self.problems = list(problems)
        self.workflow = workflow
        #: The checks that could not run, each with why (a step the schema refused is left out of them).
        self.unchecked = list(unchecked)
        where = f"workflow {workflow!r}" if workflow else "workflow"
        listing = "; ".join(self.problems)
        count = len(self.problems)
        reason = f"{count} problem{'s' if count != 1 else ''}: {listing}"
        if self.unchecked:
            reason += f" (not checked: {'; '.join(self.unchecked)})"
        super().__init__("steps", f"{where} is invalid, {reason}")


class CycleDetectedError(DAGValidationError):
    """The step graph has a cycle; ``cycle`` is the path, first node repeated at the end (in full: the
    message names at most :attr:`SHOWN_STEPS` of its steps)."""

    SHOWN_STEPS = 20

    def __init__(
        self,
        cycle: Sequence[str],
        *,
        problems: Sequence[str] | None = None,
        workflow: str | None = None,
    ) -> None:
        self.cycle = list(cycle)
        super().__init__(problems or [f"dependency cycle: {self.path_text(self.cycle)}"], workflow=workflow)

    @classmethod
    def path_text(cls, cycle: Sequence[str]) -> str:
        """``a -> b -> c -> a``; a long cycle shows its first :attr:`SHOWN_STEPS` steps and how many
        more there are (a 100,000-step ring made a 1 MB message)."""
        steps = len(cycle) - 1  # the first step closes the cycle again
        if steps <= cls.SHOWN_STEPS:
            return " -> ".join(cycle)
        shown = " -> ".join(cycle[: cls.SHOWN_STEPS])
        return f"{shown} -> ... ({steps - cls.SHOWN_STEPS} more steps, {steps} in the cycle) -> {cycle[0]}"


class UnknownActionError(InvalidInputError):
    """A step names a ``module.action`` that is not registered; ``known`` lists what exists."""

    def __init__(self, module: str, action: str, known: Iterable[str], *, field: str = "action") -> None:
        self.module = module
        self.action = action
        self.known = sorted(known)
        super().__init__(
            field,
            f"unknown action {module}.{action}; known actions: {', '.join(self.known) or '(none)'}",
        )


class ActionUnavailableError(UnknownActionError):
    """A step's action is not registered where the step runs (a Dask worker without its package)."""

    def __init__(self, module: str, action: str, known: Iterable[str], *, worker: str) -> None:
        self.worker = worker
        super().__init__(module, action, known, field="action")
        self.reason = (
            f"action {module}.{action} is not available on worker {worker}: install codomyrmex-orchestration "
            f"and the package that provides {module}.{action} on every worker (steps travel to workers by "
            f"action name); that worker knows: {', '.join(self.known) or '(none)'}"
        )
        self.message = f"action: {self.reason}"
        self.args = (self.message,)


class TemplateError(InvalidInputError):
    """A ``{{...}}`` reference or ``run_if`` condition cannot be parsed or resolved."""

    def __init__(self, path: str, reason: str, *, field: str = "parameters") -> None:
        self.path = path
        super().__init__(field, f"template {path!r}: {reason}")


class InvalidNameError(InvalidInputError):
    """A name (workflow, project, step) is not acceptable; the message says what is allowed."""

    def __init__(self, kind: str, name: object, rule: str, *, field: str = "name") -> None:
        self.kind = kind
        self.name = name
        shown = repr(name) if not isinstance(name, str) or len(name) <= 80 else repr(name[:77] + "...")
        super().__init__(field, f"invalid {kind} name {shown}: {rule}")


class LimitExceededError(InvalidInputError):
    """A configured limit (steps per workflow, nesting depth, sizes) would be exceeded.

    ``value`` is what the refused request would have made it; ``reason`` replaces the default wording
    ("<what> is <value>, above the limit of <limit>") where another says it better (a count of things
    already running).
    """

    def __init__(
        self, field: str, limit: int | float, value: int | float, what: str, *, reason: str | None = None
    ) -> None:
        self.limit = limit
        self.value = value
        super().__init__(field, reason or f"{what} is {value}, above the limit of {limit}")


# --------------------------------------------------------------------------- lookup


class NotFoundError(OrchestrationError, LookupError):
    """Something looked up by key does not exist."""

    kind = "object"

    def __init__(self, key: str, *, known: Iterable[str] | None = None) -> None:
        self.key = key
        message = f"{self.kind} {key!r} not found"
        if known is not None:
            from codomyrmex_orchestration._suggest import did_you_mean

            names = sorted(known)
            message += did_you_mean(key, names)
            shown = ", ".join(names[:50]) + (f", ... ({len(names)} in all)" if len(names) > 50 else "")
            message += f"; known: {shown or '(none)'}"
        super().__init__(message)


class WorkflowNotFoundError(NotFoundError):
    """No workflow ``key``; or, with ``version``, no kept version ``version`` of it (``kept`` lists the
    kept ones, ``current`` marks the registered one: None if the workflow was deleted)."""

    kind = "workflow"

    def __init__(
        self,
        key: str,
        *,
        known: Iterable[str] | None = None,
        version: int | None = None,
        kept: Sequence[int] = (),
        current: int | None = None,
    ) -> None:
        self.version, self.kept = version, list(kept)
        if version is None:
            super().__init__(key, known=known)
            return
        self.key = key
        listing = ", ".join(f"{v} (current)" if v == current else str(v) for v in kept) or "none"
        gone = "" if current is not None else " (the workflow was deleted: none is current)"
        OrchestrationError.__init__(
            self, f"workflow {key!r} has no version {version}; kept versions: {listing}{gone}"
        )


#: How ids look: a task's is ``t-`` + its scheduler instance's 8 hex digits + a count; a run's (and a
#: session's) is 32 hex digits.
_TASK_ID = re.compile(r"^(t-[0-9a-f]{8}-)[0-9]+$")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class _HintedNotFound(NotFoundError):
    def _hint(self, hint: str) -> None:
        if hint:
            self.message = f"{self.message}: {hint}"
            self.args = (self.message,)


class RunNotFoundError(_HintedNotFound):
    """No run ``key``; a task id given instead says which tool takes it."""

    kind = "run"

    def __init__(self, key: str, *, known: Iterable[str] | None = None) -> None:
        super().__init__(key, known=known)
        if _TASK_ID.match(key):
            self._hint("that is a task id (execute_task's); get_task takes it")


class TaskNotFoundError(_HintedNotFound):
    """No task ``key`` in this scheduler. ``instance``: this scheduler's id prefix (``t-1a2b3c4d-``), to
    tell an id of another (or an earlier) server instance (tasks are kept in memory only); ``kept``: how many
    finished tasks it keeps. A run id given instead says which tool takes it."""

    kind = "task"

    def __init__(
        self,
        key: str,
        *,
        known: Iterable[str] | None = None,
        instance: str | None = None,
        kept: int | None = None,
    ) -> None:
        super().__init__(key, known=known)
        task_id = _TASK_ID.match(key)
        if _RUN_ID.match(key):
            hint = "that is the shape of a run id (get_workflow_run takes it) or a session id, not a task id"
        elif task_id is None:
            hint = "task ids look like t-1a2b3c4d-7 (execute_task returns them)"
        elif instance is not None and task_id.group(1) != instance:
            hint = (
                f"it was made by another server instance (this one's task ids begin {instance}): single "
                "tasks are kept in memory only, by the server that ran them, and are lost when it restarts; "
                "workflow runs are kept (list_workflow_runs)"
            )
        elif kept is not None:
            hint = f"it may have ended and been dropped: the last {kept} finished tasks are kept"
        else:
            hint = ""
        self._hint(hint)


class SessionNotFoundError(NotFoundError):
    kind = "session"


class ProjectNotFoundError(NotFoundError):
    kind = "project"


class ResourceNotFoundError(NotFoundError):
    kind = "resource"


class AlreadyExistsError(OrchestrationError, ValueError):
    """Creating something whose key is taken; ``hint`` says how to replace it if that is allowed."""

    def __init__(self, kind: str, key: str, hint: str = "") -> None:
        self.kind = kind
        self.key = key
        super().__init__(f"{kind} {key!r} already exists" + (f"; {hint}" if hint else ""))


class InvalidStateError(OrchestrationError, ValueError):
    """An operation does not apply to an object in its current state (e.g. resuming a completed run)."""

    def __init__(self, kind: str, key: str, state: str, wanted: str) -> None:
        self.kind = kind
        self.key = key
        self.state = state
        super().__init__(f"{kind} {key!r} is {state}; {wanted}")


# --------------------------------------------------------------------------- execution


class ActionRefusedError(OrchestrationError, PermissionError):
    """An action is disabled by configuration (e.g. ``shell.run`` with ``allow_shell`` off)."""

    def __init__(self, module: str, action: str, reason: str) -> None:
        self.module = module
        self.action = action
        self.reason = reason
        super().__init__(f"action {module}.{action} is refused: {reason}")


class WorkflowRefusedError(ActionRefusedError):
    """A registered workflow uses an action the server's policy refuses (it is listed, not runnable)."""

    def __init__(self, workflow: str, step: str, refused: ActionRefusedError) -> None:
        self.workflow = workflow
        self.step = step
        self.module = refused.module
        self.action = refused.action
        self.reason = refused.reason
        OrchestrationError.__init__(
            self,
            f"workflow {workflow!r} is refused by policy: step {step!r} uses "
            f"{refused.module}.{refused.action}: {refused.reason}",
        )


class StepError(OrchestrationError):
    """A step or task did not complete."""

    def __init__(self, step: str, message: str) -> None:
        self.step = step
        super().__init__(message)


class StepFailedError(StepError):
    """A step raised or returned a failure; ``error_type`` is the original exception's type name."""

    def __init__(self, step: str, reason: str, *, error_type: str = "StepFailedError") -> None:
        self.reason = reason
        self.error_type = error_type
        super().__init__(step, f"step {step!r} failed: {reason}")


class StepTimeoutError(StepError, TimeoutError):
    """A step exceeded its ``timeout`` (seconds)."""

    def __init__(self, step: str, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(step, f"step {step!r} timed out after {timeout:g} s")


class StepCancelledError(StepError):
    """A step was cancelled before or while running."""

    def __init__(self, step: str, reason: str = "cancelled") -> None:
        self.reason = reason
        super().__init__(step, f"step {step!r} was cancelled: {reason}")


class WaitTimeoutError(OrchestrationError, TimeoutError):
    """A bounded wait ended before the awaited thing finished (the thing itself goes on); ``state`` says
    where it is (``"running"``, ``"queued"``, ``"waiting to retry"``...), ``others`` how many other
    tasks waited on together had not finished either."""

    def __init__(self, what: str, timeout: float, state: str = "running", others: int = 0) -> None:
        self.what = what
        self.timeout = timeout
        self.state = state
        self.others = others
        also = f"; {others} other task(s) waited on together did not finish either" if others else ""
        super().__init__(f"{what} did not finish within {timeout:g} s; it is still {state}{also}")


class InsufficientResourcesError(OrchestrationError):
    """An allocation cannot be satisfied; ``requested`` and ``available`` map resource -> amount."""

    def __init__(
        self,
        requested: Mapping[str, float],
        available: Mapping[str, float],
        reason: str = "",
    ) -> None:
        self.requested = dict(requested)
        self.available = dict(available)
        parts = ", ".join(
            f"{k}: requested {v:g}, available {self.available.get(k, 0):g}" for k, v in requested.items()
        )
        super().__init__(f"insufficient resources ({parts})" + (f"; {reason}" if reason else ""))


class SchedulerShutdownError(OrchestrationError, RuntimeError):
    """Work was submitted to a scheduler that is shutting down or shut down."""

    def __init__(self, message: str = "the task scheduler is shut down; no new work is accepted") -> None:
        super().__init__(message)


class StateStoreError(OrchestrationError, OSError):
    """The durable state store at ``path`` cannot be opened, read or written."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"state store {path}: {reason}")


class SecretsFileError(OrchestrationError, PermissionError):
    """The workflow secrets file at ``path`` is refused (readable by others, not a JSON object of
    strings, unreadable); the message names the path and what to fix, never a value."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"secrets file {path}: {reason}")


class ProjectCreationError(OrchestrationError, OSError):
    """A project folder could not be created at ``path``; what this call created was removed again."""

    def __init__(self, name: str, path: str, reason: str) -> None:
        self.name = name
        self.path = path
        self.reason = reason
        super().__init__(
            f"project {name!r} could not be created at {path}: {reason}; "
            "everything this attempt had created was removed"
        )


def error_info(exc: BaseException) -> dict[str, Any]:
    """Return ``{"message", "type"}`` describing ``exc`` for run records and tool results."""
    return {"message": str(exc) or type(exc).__name__, "type": type(exc).__name__}
