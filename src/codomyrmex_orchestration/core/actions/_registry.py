"""The action registry: ``module.action`` names mapped to the callables that do a step's work."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from codomyrmex_orchestration.errors import (
    ActionRefusedError,
    AlreadyExistsError,
    InvalidInputError,
    StepCancelledError,
    UnknownActionError,
)

__all__ = [
    "ActionContext",
    "ActionDefinition",
    "ActionFunc",
    "ActionRegistry",
    "CancelEvent",
    "SubWorkflowRunner",
]


class SubWorkflowRunner(Protocol):
    """Runs a registered workflow as a child of the current run and returns its outputs."""

    def __call__(self, name: str, parameters: dict[str, Any], *, ctx: ActionContext) -> dict[str, Any]: ...


_EVENT_SETUP = threading.Lock()


class CancelEvent(threading.Event):
    """The cancellation flag of one attempt: a ``threading.Event`` that also runs callbacks when set.

    Callbacks let a waiter react to cancellation without a thread parked on ``wait()`` (a
    sub-workflow step cancels its child run, a subprocess action kills its process group). The
    condition behind ``wait()`` is built on first use: every attempt gets an event, few are ever
    waited on, and building a ``Condition`` up front was the scheduler's largest per-task cost.
    """

    def __init__(self) -> None:  # deliberately not calling Event.__init__: no Condition yet
        self._flag = False
        self._lazy_cond: threading.Condition | None = None
        self._callbacks: list[Callable[[], None]] | None = None

    def _at_fork_reinit(self) -> None:
        self._lazy_cond = None

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with _EVENT_SETUP:
            first = not self._flag
            self._flag = True
            cond = self._lazy_cond
            callbacks, self._callbacks = self._callbacks, None
        if cond is not None:
            with cond:
                cond.notify_all()
        if first and callbacks:
            for fn in callbacks:
                try:
                    fn()
                except Exception:
                    structlog.get_logger("codomyrmex_orchestration.action").exception(
                        "cancel callback failed"
                    )

    def clear(self) -> None:
        with _EVENT_SETUP:
            self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        with _EVENT_SETUP:
            if self._flag:
                return True
            cond = self._lazy_cond
            if cond is None:
                cond = self._lazy_cond = threading.Condition(threading.Lock())
        with cond:
            return cond.wait_for(lambda: self._flag, timeout)

    def add_callback(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Run ``fn`` once when the event is set (at once if it already is). Returns a remover."""
        with _EVENT_SETUP:
            already = self._flag
            if not already:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
        if already:
            fn()

        def remove() -> None:
            with _EVENT_SETUP:
                if self._callbacks is not None and fn in self._callbacks:
                    self._callbacks.remove(fn)

        return remove


@dataclass(slots=True)
class ActionContext:
    """What an action gets besides its parameters.

    Attributes:
        step_name: the step (or task) name.
        run_id: the workflow run id, or ``None`` for a single task.
        task_id: the scheduler's id for this attempt's task.
        attempt: 1 for the first attempt, 2 for the first retry, ...
        cancel_event: set when the step is cancelled or timed out; long actions must watch it.
        deadline: ``time.monotonic()`` value after which the step is timed out, or ``None``.
        logger: a structlog logger bound with run/step ids.
        run_workflow: runs a sub-workflow (set by the WorkflowManager), or ``None``.
        block_hook: set by the scheduler; see :meth:`blocking`.
        depth: sub-workflow nesting depth of the current run (0 for a top-level run).
        extras: free-form data for plugins.
    """

    step_name: str
    run_id: str | None = None
    task_id: str | None = None
    attempt: int = 1
    cancel_event: threading.Event = field(default_factory=CancelEvent)
    deadline: float | None = None
    logger: Any = None
    run_workflow: SubWorkflowRunner | None = None
    depth: int = 0
    extras: dict[str, Any] = field(default_factory=dict)
    block_hook: Callable[[], AbstractContextManager[None]] | None = None

    def __post_init__(self) -> None:
        if self.logger is None:
            self.logger = structlog.get_logger("codomyrmex_orchestration.action").bind(
                step=self.step_name, run_id=self.run_id
            )

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check_cancelled(self) -> None:
        """Raise :class:`StepCancelledError` if the step was cancelled or timed out."""
        if self.cancel_event.is_set():
            raise StepCancelledError(self.step_name)

    def remaining(self) -> float | None:
        """Seconds left before the deadline (``None`` when there is none; never negative)."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def on_cancel(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Run ``fn`` when the step is cancelled or times out. Returns a function that unregisters it.

        Works with any ``threading.Event``; callbacks need a :class:`CancelEvent` (the default).
        """
        event = self.cancel_event
        if isinstance(event, CancelEvent):
            return event.add_callback(fn)
        if event.is_set():
            fn()
        return lambda: None

    def blocking(self) -> AbstractContextManager[None]:
        """Wrap a wait on other scheduled work (e.g. a sub-workflow): the scheduler lends the pool
        another worker meanwhile, so nested work cannot deadlock a full pool."""
        return self.block_hook() if self.block_hook is not None else nullcontext()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking early on cancellation. Returns True if cancelled."""
        return self.cancel_event.wait(max(0.0, seconds))


ActionFunc = Callable[[dict[str, Any], ActionContext], Any]


@dataclass(frozen=True, slots=True)
class ActionDefinition:
    """A registered action and what a catalogue shows of it.

    Attributes:
        module, action: the two halves of the step's ``module.action``.
        func: ``func(parameters, ctx) -> a JSON value`` (dict, list, tuple, str, int, float, bool or
            None; anything else fails the step, naming where it is); raising fails the step.
        description: one line for catalogues and the MCP ``list_actions`` tool.
        parameters: name -> short description of each accepted parameter. The names are enforced: a
            step or task passing another is refused before it runs (naming the accepted ones); empty, or
            holding ``"*"``, accepts any name. Values are not checked here (``check`` does that).
        output: what the action returns.
        executes_code: True for actions that run arbitrary code (``shell.run``, ``python.call``);
            these are refused when the registry's ``allow_code_execution`` is off.
        network: True for actions that reach the network (``http.request``).
        check: ``check(parameters) -> problems``: the definition-time check of one step's parameters
            (``validate_workflow``; no I/O); each problem is a sentence naming the parameter, and
            templated values are checked when the step runs.
        probe: ``probe(parameters) -> problems``: a check that may reach outside (e.g. ask another MCP
            server for its tools); only ``validate_workflow`` runs it.
        instant: True for an action that returns at once and never blocks: pure Python on its
            parameters, no I/O, no sleeping, no waiting on other work (``core.echo``, ``core.set``). The
            scheduler does not wake another worker for the work queued behind it: the worker running it
            is back for that work within microseconds, and on CPython extra workers would only take
            turns at the interpreter and contend for the scheduler's lock (see ``_worker_pool``).
    """

    module: str
    action: str
    func: ActionFunc
    description: str = ""
    parameters: dict[str, str] = field(default_factory=dict)
    output: str = ""
    executes_code: bool = False
    network: bool = False
    check: Callable[[Mapping[str, Any]], list[str]] | None = None
    probe: Callable[[dict[str, Any]], list[str]] | None = None
    instant: bool = False

    @property
    def qualified_name(self) -> str:
        return f"{self.module}.{self.action}"

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.qualified_name,
            "module": self.module,
            "action": self.action,
            "description": self.description,
            "parameters": dict(self.parameters),
            "output": self.output,
            "executes_code": self.executes_code,
            "network": self.network,
        }


class ActionRegistry:
    """Thread-safe map of ``module.action`` -> :class:`ActionDefinition`.

    It also holds the services actions share (e.g. the connections of ``mcp.call``), by name, and
    closes them with :meth:`close` when the engine shuts down.

    Args:
        allow_code_execution: when False, actions flagged ``executes_code`` are refused at
            validation and at run time with :class:`ActionRefusedError`.
    """

    def __init__(self, *, allow_code_execution: bool = True) -> None:
        self._actions: dict[tuple[str, str], ActionDefinition] = {}
        self._services: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.allow_code_execution = allow_code_execution

    def attach(self, name: str, service: Any) -> None:
        """Keep ``service`` under ``name`` for the actions and tools that use it; :meth:`close` calls its
        ``close()``."""
        with self._lock:
            self._services[name] = service

    def service(self, name: str) -> Any:
        """The service attached under ``name``, or ``None``."""
        with self._lock:
            return self._services.get(name)

    def close(self) -> None:
        """Close every attached service (each one even if another fails; failures are logged)."""
        with self._lock:
            services = list(self._services.values())
        for service in services:
            try:
                service.close()
            except Exception:
                structlog.get_logger("codomyrmex_orchestration.action").exception("closing a service failed")

    def register(self, definition: ActionDefinition, *, replace: bool = False) -> None:
        """Add ``definition``; steps name it as ``module`` + ``action``.

        Raises:
            InvalidInputError: ``module`` or ``action`` is not a non-empty string (an action's holding a
                ``'.'``), or ``func`` is not callable.
            AlreadyExistsError: the name is taken and ``replace`` is False.
        """
        _check_definition(definition)
        key = (definition.module, definition.action)
        with self._lock:
            if key in self._actions and not replace:
                raise AlreadyExistsError(
                    "action",
                    definition.qualified_name,
                    "register(definition, replace=True) replaces it, or choose another module or action name",
                )
            self._actions[key] = definition

    def action(
        self,
        module: str,
        action: str,
        *,
        description: str = "",
        parameters: dict[str, str] | None = None,
        output: str = "",
        executes_code: bool = False,
        network: bool = False,
        check: Callable[[Mapping[str, Any]], list[str]] | None = None,
        probe: Callable[[dict[str, Any]], list[str]] | None = None,
        instant: bool = False,
    ) -> Callable[[ActionFunc], ActionFunc]:
        """Decorator form of :meth:`register`; the arguments are :class:`ActionDefinition`'s fields."""

        def decorate(func: ActionFunc) -> ActionFunc:
            self.register(
                ActionDefinition(
                    module=module,
                    action=action,
                    func=func,
                    description=description,
                    parameters=dict(parameters or {}),
                    output=output,
                    executes_code=executes_code,
                    network=network,
                    check=check,
                    probe=probe,
                    instant=instant,
                )
            )
            return func

        return decorate

    def unregister(self, module: str, action: str) -> None:
        with self._lock:
            self._actions.pop((module, action), None)

    def known(self) -> list[str]:
        with self._lock:
            return sorted(f"{m}.{a}" for m, a in self._actions)

    def __contains__(self, qualified: object) -> bool:
        if not isinstance(qualified, str) or "." not in qualified:
            return False
        module, _, action = qualified.rpartition(".")
        return (module, action) in self._actions  # one dict lookup: atomic, no lock (see get)

    def get(self, module: str, action: str, *, check_allowed: bool = True) -> ActionDefinition:
        """Return the definition or raise.

        Raises:
            UnknownActionError: not registered (the message lists every known action).
            ActionRefusedError: registered but refused by configuration.
        """
        # No lock for one dict lookup (atomic): every step of every run passes here, on the threads
        # that submit steps, and a lock here was the most contended one among workers (0.7 blocking
        # acquisitions per step in a 4-worker grid). The lock orders writers and multi-step reads.
        definition = self._actions.get((module, action))
        if definition is None:
            raise UnknownActionError(module, action, self.known())
        if check_allowed and definition.executes_code and not self.allow_code_execution:
            raise ActionRefusedError(
                module,
                action,
                "it executes arbitrary code and code execution is disabled on this server "
                "(enable with --allow-shell / CODOMYRMEX_ALLOW_SHELL=1)",
            )
        return definition

    def probe(self, steps: Iterable[Any]) -> list[str]:
        """The problems the actions' ``probe`` checks find in ``steps`` (objects with ``name``,
        ``module``, ``action`` and ``parameters``), each prefixed with its step's name. The probe of an
        action this registry refuses is not run (it may start code: ``mcp.call`` asks a server)."""
        problems: list[str] = []
        for step in steps:
            definition = self._actions.get((step.module, step.action))
            if definition is None or (definition.executes_code and not self.allow_code_execution):
                continue
            if definition.probe is not None:
                problems.extend(f"step {step.name!r}: {p}" for p in definition.probe(step.parameters))
        return problems

    def catalogue(self) -> list[dict[str, Any]]:
        with self._lock:
            defs = sorted(self._actions.values(), key=lambda d: d.qualified_name)
        return [d.describe() for d in defs]

    def definitions(self) -> Iterable[ActionDefinition]:
        with self._lock:
            return list(self._actions.values())


def _check_definition(definition: ActionDefinition) -> None:
    for field_name in ("module", "action"):
        value = getattr(definition, field_name)
        if not isinstance(value, str) or not value.strip():
            raise InvalidInputError(field_name, f"must be a non-empty string, got {value!r}")
    if "." in definition.action:
        raise InvalidInputError(
            "action",
            f"{definition.action!r} holds a '.'; a step names it as module + action, so no '.' in the action "
            f"(the module may hold one: {definition.module}.{definition.action.replace('.', '_')})",
        )
    if not callable(definition.func):
        raise InvalidInputError(
            f"{definition.qualified_name}.func",
            "must be a callable func(parameters, ctx) returning a JSON value, "
            f"got a {type(definition.func).__name__}",
        )
