"""Steps that wait for a person: ``core.approve`` questions, their answers and deadlines, and the waiting
runs a restart brings back.

A question lives in its run (``RunState.waiting``, under the run's lock) and in the run record
(``pending_inputs``, saved with the run row); a waiting step is never a scheduler task, so it holds no
worker thread. :class:`InputDesk` owns the rest, under ``_lock`` (with ``_changed`` for waiters): the
deadline timer of each question asked, the questions nobody is being asked (no client is prompted: they
wait for respond_to_run, and :meth:`InputDesk.wait` and :meth:`InputDesk.on_stop` return on them),
the callbacks waiting for that, and the questions of waiting runs read back from the store at start
(until their runs ask them again). Its ``broker`` is the hook the server installs to put a question to the
client that started the run (MCP elicitation); without one, or when that client cannot be asked, the
question waits for :meth:`InputDesk.respond`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from datetime import date, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

import structlog

from codomyrmex_orchestration._redact import redact, redact_text
from codomyrmex_orchestration.core._asked_clock import AskedClock
from codomyrmex_orchestration.core._workflow_events import Listeners
from codomyrmex_orchestration.core.models import (
    ErrorInfo,
    InputRequest,
    ItemWindow,
    RunRecord,
    StepResult,
    TaskPriority,
    TaskStatus,
    WorkflowStatus,
    utcnow,
)
from codomyrmex_orchestration.errors import (
    InvalidInputError,
    InvalidStateError,
    OrchestrationError,
    StepFailedError,
)

if TYPE_CHECKING:
    from codomyrmex_orchestration.core._workflow_active import ActiveRuns
    from codomyrmex_orchestration.core._workflow_dispatch import RunDriver
    from codomyrmex_orchestration.core._workflow_run import Advance, RunState
    from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
    from codomyrmex_orchestration.core.timers import Timer
    from codomyrmex_orchestration.core.workflows import WorkflowManager

__all__ = [
    "ACTIONS",
    "APPROVE",
    "Broker",
    "InputDesk",
    "Question",
    "check_answer",
    "parse_question",
    "question_problems",
]

_log = structlog.get_logger("codomyrmex_orchestration.workflows")

#: The action whose steps wait for an answer instead of running.
APPROVE = ("core", "approve")
#: The answers a question takes (MCP elicitation's actions).
ACTIONS = ("accept", "decline", "cancel")
#: The most JSON an answer's content may take: it becomes the step's output, kept in the store.
MAX_CONTENT_BYTES = 64 * 1024
_TIMEOUT = "timeout"  # the deadline's answer (not one a person can give)
#: The longest a question may wait (``timeout_seconds``): 30 days.
MAX_TIMEOUT_SECONDS = 30 * 86_400

#: ``broker(run_id, step, question, client)``: put ``question`` to ``client`` (the key of the MCP client
#: the run's steps are queued for, or None); it must return at once, True when a client is being asked
#: (the answer comes back through :meth:`InputDesk.respond`, or :meth:`InputDesk.unattended` says the
#: asking failed), False when nobody is (the question waits for respond_to_run).
Broker = Callable[[str, str, InputRequest, "str | None"], bool]

# What MCP elicitation's requestedSchema allows: a flat object of primitive properties.
_COMMON = frozenset({"type", "title", "description", "default"})
_PROPERTY_KEYS = {
    "string": _COMMON | {"minLength", "maxLength", "format", "enum", "enumNames"},
    "number": _COMMON | {"minimum", "maximum"},
    "integer": _COMMON | {"minimum", "maximum"},
    "boolean": _COMMON,
}
_SCHEMA_KEYS = frozenset({"type", "properties", "required", "title", "description", "$schema"})
_FORMATS = ("email", "uri", "date", "date-time")


class Question(NamedTuple):
    """A ``core.approve`` step's parameters, checked."""

    message: str
    schema: dict[str, Any] | None
    timeout: float | None


def parse_question(params: Mapping[str, Any]) -> Question:
    """The question a ``core.approve`` step asks.

    Raises:
        InvalidInputError: naming the parameter (``parameters.schema.properties.x.type``) and what is
            accepted.
    """
    message = params.get("message")
    if not isinstance(message, str) or not message.strip():
        raise InvalidInputError(
            "parameters.message", "core.approve needs a 'message': the question, a string"
        )
    schema = params.get("schema")
    if schema is not None:
        schema = _check_schema(schema)
    timeout = params.get("timeout_seconds")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_TIMEOUT_SECONDS
    ):
        raise InvalidInputError(
            "parameters.timeout_seconds",
            f"a number of seconds above 0 and at most {MAX_TIMEOUT_SECONDS} (30 days), or null to wait "
            f"without limit; got {timeout!r}",
        )
    return Question(message, schema, float(timeout) if timeout is not None else None)


def question_problems(params: Mapping[str, Any]) -> list[str]:
    """What is wrong with a ``core.approve`` step's literal parameters (templated ones are checked when the
    step runs): the definition-time check of ``validate_workflow``."""
    literal = {k: v for k, v in params.items() if not _templated(v)}
    if _templated(params.get("message")):
        literal["message"] = "(templated)"
    try:
        parse_question(literal)
    except InvalidInputError as exc:
        return [str(exc)]
    return []


def _templated(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def _check_schema(schema: Any) -> dict[str, Any]:
    where = "parameters.schema"
    accepted = (
        'a flat object schema, e.g. {"type": "object", "properties": {"reason": {"type": "string"}}, '
        '"required": ["reason"]}: properties of type string (optionally with enum or format), number, '
        "integer or boolean, no nesting (what MCP elicitation can ask)"
    )
    if not isinstance(schema, Mapping):
        raise InvalidInputError(where, f"expected {accepted}; got {type(schema).__name__}")
    extra = sorted(set(schema) - _SCHEMA_KEYS)
    if extra:
        raise InvalidInputError(
            f"{where}.{extra[0]}", f"not allowed; a schema takes {', '.join(sorted(_SCHEMA_KEYS))}"
        )
    if schema.get("type") != "object":
        raise InvalidInputError(f"{where}.type", f'must be "object": {accepted}')
    properties = schema.get("properties")
    if not isinstance(properties, Mapping) or not properties:
        raise InvalidInputError(
            f"{where}.properties", f"must be an object of at least one property: {accepted}"
        )
    for name, prop in properties.items():
        _check_property(f"{where}.properties.{name}", prop)
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise InvalidInputError(f"{where}.required", "must be a list of property names")
    unknown = [r for r in required if r not in properties]
    if unknown:
        raise InvalidInputError(
            f"{where}.required",
            f"names {unknown[0]!r}, which is not a property; properties: {', '.join(properties)}",
        )
    return dict(schema)


def _check_property(where: str, prop: Any) -> None:
    if not isinstance(prop, Mapping):
        raise InvalidInputError(where, 'must be an object such as {"type": "string"}')
    kind = prop.get("type")
    if kind not in _PROPERTY_KEYS:
        raise InvalidInputError(
            f"{where}.type",
            f"{kind!r} is not accepted; one of string, number, integer, boolean (no objects or arrays: "
            "MCP elicitation asks for flat values)",
        )
    extra = sorted(set(prop) - _PROPERTY_KEYS[kind])
    if extra:
        raise InvalidInputError(
            f"{where}.{extra[0]}",
            f"not allowed for a {kind}; accepted: {', '.join(sorted(_PROPERTY_KEYS[kind]))}",
        )
    enum = prop.get("enum")
    if enum is not None and (
        not isinstance(enum, list) or not enum or not all(isinstance(e, str) for e in enum)
    ):
        raise InvalidInputError(f"{where}.enum", "must be a non-empty list of strings")
    names = prop.get("enumNames")
    if names is not None and (not isinstance(names, list) or enum is None or len(names) != len(enum)):
        raise InvalidInputError(f"{where}.enumNames", "must be a list of strings, one per enum value")
    if "format" in prop and prop["format"] not in _FORMATS:
        raise InvalidInputError(f"{where}.format", f"{prop['format']!r} is not one of {', '.join(_FORMATS)}")
    for key in ("minLength", "maxLength"):
        if key in prop and (isinstance(prop[key], bool) or not isinstance(prop[key], int) or prop[key] < 0):
            raise InvalidInputError(f"{where}.{key}", "must be a whole number >= 0")
    for key in ("minimum", "maximum"):
        if key in prop and (isinstance(prop[key], bool) or not isinstance(prop[key], int | float)):
            raise InvalidInputError(f"{where}.{key}", "must be a number")


def check_answer(schema: Mapping[str, Any] | None, content: Mapping[str, Any] | None) -> dict[str, Any]:
    """The content of an accepting answer, checked against the question's schema.

    Raises:
        InvalidInputError: naming each field (``content.reason``) that is missing, unknown or does not fit.
    """
    content = dict(content or {})
    size = len(json.dumps(content, default=str))
    if size > MAX_CONTENT_BYTES:
        raise InvalidInputError("content", f"{size} bytes of JSON; at most {MAX_CONTENT_BYTES} are accepted")
    if schema is None:
        if content:
            raise InvalidInputError(
                "content", "this question asks for no content: accept, decline or cancel only"
            )
        return content
    properties: Mapping[str, Any] = schema["properties"]
    problems = [
        (f"content.{name}", f"not a field of the question; fields: {', '.join(properties)}")
        for name in content
        if name not in properties
    ]
    problems.extend(
        (f"content.{name}", f"required ({_describe(properties[name])})")
        for name in schema.get("required", [])
        if name not in content
    )
    for name, value in content.items():
        if name in properties:
            reason = _misfit(properties[name], value)
            if reason:
                problems.append((f"content.{name}", reason))
    if len(problems) == 1:
        raise InvalidInputError(*problems[0])
    if problems:
        raise InvalidInputError("content", "; ".join(f"{field}: {reason}" for field, reason in problems))
    return content


def _describe(prop: Mapping[str, Any]) -> str:
    if "enum" in prop:
        return "one of " + ", ".join(repr(e) for e in prop["enum"])
    kind = str(prop["type"])
    text = ("an " if kind == "integer" else "a ") + kind
    if "format" in prop:
        text += f" ({prop['format']})"
    return text


def _misfit(prop: Mapping[str, Any], value: Any) -> str | None:
    """Why ``value`` does not fit ``prop`` (None when it does)."""
    kind = prop["type"]
    fits = {
        "string": isinstance(value, str),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
    }[kind]
    if not fits:
        return f"expected {_describe(prop)}, got {type(value).__name__} {value!r}"
    if "enum" in prop and value not in prop["enum"]:
        return f"{value!r} is not {_describe(prop)}"
    if kind == "string":
        if len(value) < prop.get("minLength", 0):
            return f"at least {prop['minLength']} characters"
        if "maxLength" in prop and len(value) > prop["maxLength"]:
            return f"at most {prop['maxLength']} characters"
        if "format" in prop and not _formatted(prop["format"], value):
            return f"{value!r} is not a valid {prop['format']}"
    elif "minimum" in prop and value < prop["minimum"]:
        return f"at least {prop['minimum']}"
    elif "maximum" in prop and value > prop["maximum"]:
        return f"at most {prop['maximum']}"
    return None


def _formatted(fmt: str, value: str) -> bool:
    try:
        if fmt == "date":
            date.fromisoformat(value)
        elif fmt == "date-time":
            datetime.fromisoformat(value)
    except ValueError:
        return False
    if fmt == "email":
        local, _, domain = value.partition("@")
        return bool(local) and "." in domain
    if fmt == "uri":
        scheme, sep, rest = value.partition(":")
        return bool(scheme.isalpha() and sep and rest)
    return True


def _shutdown_reason(run_id: str, *, durable: bool) -> str:
    """The error of a run cancelled because the engine running it shut down."""
    why = "cancelled because the server (or program) running it shut down"
    if not durable:
        return f"{why}; its state was in memory only, so it cannot be resumed"
    return (
        f"{why}; resume_workflow_run continues it from its completed steps "
        f"(from a shell: codomyrmex-orchestration resume {run_id})"
    )


def _outcome(
    step: str, question: InputRequest, action: str, content: dict[str, Any], clock: AskedClock, run_id: str
) -> StepResult:
    """The step result an answer (or the deadline, ``_TIMEOUT``) makes; ``clock`` says how long it waited."""
    now = utcnow()
    if action == "accept":
        status, output, error = TaskStatus.COMPLETED, {"action": action, "content": content}, None
    elif action == _TIMEOUT:
        assert question.deadline is not None
        waited = (question.deadline - question.asked_at).total_seconds()
        status, output = TaskStatus.TIMED_OUT, None
        error = ErrorInfo(
            message=f"step {step!r} timed out after {waited:g} s without an answer to: {question.message}",
            type="StepTimeoutError",
        )
    else:
        reason = "the approval was declined" if action == "decline" else "the question was dismissed (cancel)"
        status, output = TaskStatus.FAILED, {"action": action}
        error = ErrorInfo.from_exception(StepFailedError(step, f"{reason}: {question.message}"))
    return StepResult(
        name=step,
        status=status,
        output=output,
        error=error,
        attempts=1,
        started_at=question.asked_at,
        finished_at=now,
        duration_seconds=clock.waited(run_id, question, now),
    )


class InputDesk:
    """Asks the questions of ``core.approve`` steps and settles them with their answers.

    Args:
        runs: the workflow manager: its store (where waiting runs are read back from at start), a run's
            record (``get_run``) and ``resume_run``, which continues a waiting run after a restart.
        driver: the runs' driver; the desk takes its ``core.approve`` steps (``driver.ask``).
        active: the active runs (an answer finds its run there).
        orchestrator: the scheduler: its timers arm deadlines, and an expired deadline is settled on one of
            its workers (a timer callback must not run listeners or submit steps).
        listeners: who hears ``run.waiting_for_input`` and ``run.input_received``.
    """

    def __init__(
        self,
        runs: WorkflowManager,
        driver: RunDriver,
        active: ActiveRuns,
        orchestrator: TaskOrchestrator,
        listeners: Listeners,
    ) -> None:
        self._runs = runs
        self._driver = driver
        self._active = active
        self._orchestrator = orchestrator
        self._listeners = listeners
        self.broker: Broker | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified when a question or a run settles
        # Guarded by _lock: each asked question's deadline timer, the questions nobody is being asked, the
        # runs wait() is watching (and those of them that ended), the questions of reloaded runs, and the
        # on_stop() callbacks not called yet.
        self._timers: dict[tuple[str, str], Timer] = {}
        self._unattended: set[tuple[str, str]] = set()
        self._watched: dict[str, int] = {}  # run id -> calls of wait() on it
        self._ended: set[str] = set()  # watched runs that ended
        self._restored: dict[tuple[str, str], InputRequest] = {}
        self._on_stop: dict[str, list[Callable[[], None]]] = {}  # run id -> on_stop() callbacks to call
        self._clock = AskedClock()  # how long each question asked here waited (its own lock)
        driver.ask = self.ask

    # ------------------------------------------------------------------ asking

    def ask(self, run: RunState, name: str, params: dict[str, Any]) -> Advance:
        """Park the ``core.approve`` step ``name``, cleared to run with ``params``, on its question (a
        reloaded run asks the question it had, with its time and deadline)."""
        try:
            question = parse_question(params)
        except InvalidInputError as exc:
            failed = StepResult(name=name, status=TaskStatus.FAILED, error=ErrorInfo.from_exception(exc))
            failed.finished_at = utcnow()
            return run.step_finished(failed, held_slot=True)
        with self._lock:
            kept = self._restored.pop((run.run_id, name), None)
        if kept is not None:
            request = kept if kept.run_id is not None else kept.model_copy(update={"run_id": run.run_id})
        else:
            asked_at = utcnow()
            deadline = asked_at + timedelta(seconds=question.timeout) if question.timeout else None
            request = InputRequest(  # shown to the client and a person: a secret in it is redacted
                step=name,
                message=redact_text(question.message),
                requested_schema=redact(question.schema),
                asked_at=asked_at,
                deadline=deadline,
                run_id=run.run_id,
            )
            self._clock.asked(run.run_id, request)
        store = self._runs.store
        parked, advance = run.await_input(request, store.save_run if store.durable else None)
        if not parked:
            return advance
        run.watch(partial(self.forget, run.run_id))  # its deadlines go with it
        if request.deadline is not None:
            self._arm(run.run_id, name, request.deadline)
        self._listeners.emit(
            "run.waiting_for_input",
            {
                "run_id": run.run_id,
                "workflow_name": run.record.workflow_name,
                "session_id": run.record.session_id,
                "step": name,
                "message": request.message,
                "requested_schema": request.requested_schema,
                "deadline": request.deadline.isoformat() if request.deadline is not None else None,
            },
        )
        broker, asking = self.broker, False
        if broker is not None:
            try:
                asking = broker(run.run_id, name, request, run.client)
            except Exception:  # the question still waits for respond_to_run
                _log.exception("input broker failed", run_id=run.run_id, step=name)
        if not asking:
            self.unattended(run.run_id, name)
        return advance

    def unattended(self, run_id: str, step: str) -> None:
        """Nobody is being asked the question of ``step`` (any more): it waits for respond_to_run, and
        :meth:`wait` returns on it."""
        run = self._active.get(run_id)
        if run is None:
            return
        callbacks: list[Callable[[], None]] = []
        with run.lock:  # the run's lock, then ours: a question answered meanwhile is not marked
            if step in run.waiting:
                with self._changed:
                    self._unattended.add((run_id, step))
                    self._changed.notify_all()
                    # A sub-run's question is its parents' too: their on_stop callers stop waiting.
                    callbacks = [c for r in self._lineage(run_id) for c in self._on_stop.pop(r, [])]
        for callback in callbacks:
            callback()

    def wait(self, run_id: str, timeout: float | None) -> RunRecord:
        """Wait up to ``timeout`` seconds for run ``run_id`` to end or to wait on a question nobody is being
        asked (a person must call respond_to_run); the record as it stands then. Raises RunNotFoundError."""
        run = self._active.get(run_id)
        if run is None:
            return self._runs.get_run(run_id)
        unattended, ended, under = self._unattended, self._ended, self._under
        with self._changed:
            self._watched[run_id] = self._watched.get(run_id, 0) + 1
        run.watch(partial(self.forget, run_id))  # wakes this wait when the run ends
        try:
            if run_id in self._active:  # else it ended before it was watched: forget() did not mark it
                with self._changed:
                    self._changed.wait_for(
                        lambda: run_id in ended or any(under(key[0], run_id) for key in unattended), timeout
                    )
        finally:
            with self._changed:
                self._watched[run_id] -= 1
                if not self._watched[run_id]:
                    del self._watched[run_id]
                    ended.discard(run_id)
        return run.snapshot()

    def on_stop(self, run_id: str, callback: Callable[[RunRecord], None], *, questions: bool = True) -> None:
        """Call ``callback(record)`` once, with the record as it stands then, when run ``run_id`` ends or
        (with ``questions``) waits on a question nobody is being asked (its own or a sub-run's): what
        :meth:`wait` waits for, with no thread blocked. At once if it has (the caller's thread); else on
        the thread that ends the run or marks the question. Raises RunNotFoundError."""
        run = self._active.get(run_id)
        if run is None:
            callback(self._runs.get_run(run_id))
            return

        def call() -> None:
            try:
                callback(run.snapshot())
            except Exception:
                _log.exception("on_stop callback failed", run_id=run_id)

        if not questions:
            run.watch(call)
            return
        with self._changed:
            asked = any(self._under(key[0], run_id) for key in self._unattended)
            if not asked:
                self._on_stop.setdefault(run_id, []).append(call)
        if asked:
            call()
        else:  # its end calls what a question has not (one watcher per call: a run has few waiters)
            run.watch(partial(self._stopped, run_id))

    def _stopped(self, run_id: str) -> None:
        with self._changed:
            callbacks = self._on_stop.pop(run_id, [])
        for callback in callbacks:
            callback()

    def _under(self, run_id: str, top: str) -> bool:
        """Whether active run ``run_id`` is ``top`` or one of its sub-runs (at any depth)."""
        at: str | None = run_id
        while at is not None and at != top:
            at = self._active.parent_of(at)
        return at is not None

    def _lineage(self, run_id: str) -> list[str]:
        """Active run ``run_id`` and the runs above it, nearest first."""
        lineage = [run_id]
        while (parent := self._active.parent_of(lineage[-1])) is not None and parent not in lineage:
            lineage.append(parent)
        return lineage

    def root_of(self, run_id: str) -> str:
        """The top-level run that active run ``run_id`` is a sub-run of (itself if it is top-level):
        whose client a question of a sub-run is put to."""
        while (parent := self._active.parent_of(run_id)) is not None:
            run_id = parent
        return run_id

    def _arm(self, run_id: str, step: str, deadline: datetime) -> None:
        delay = (deadline - utcnow()).total_seconds()
        timer = self._orchestrator.timers.call_later(delay, lambda: self._expired(run_id, step))
        with self._lock:
            self._timers[(run_id, step)] = timer

    def _expired(self, run_id: str, step: str) -> None:
        """On the timer thread: hand the settling to a worker (it submits steps and runs listeners)."""
        try:
            self._orchestrator.submit(
                lambda ctx: self._time_out(run_id, step),
                name=f"answer-deadline.{step}",
                priority=TaskPriority.CRITICAL,
            )
        except OrchestrationError as exc:  # shutting down: the run stays waiting in the store
            _log.warning("answer deadline not settled", run_id=run_id, step=step, error=str(exc))

    def _time_out(self, run_id: str, step: str) -> None:
        try:
            self._answer(run_id, step, _TIMEOUT, None)
        except OrchestrationError:
            pass  # answered (or the run ended) between the deadline and now

    # ------------------------------------------------------------------ answering

    def respond(
        self, run_id: str, step: str, action: str, content: Mapping[str, Any] | None = None
    ) -> RunRecord:
        """Answer the question step ``step`` of run ``run_id`` waits on: ``accept`` (with ``content``
        fitting the question's schema) completes the step with ``{"action": "accept", "content": {...}}``;
        ``decline`` and ``cancel`` fail it, naming the answer.

        Returns:
            The run's record after the answer (dependent steps may already be running).

        Raises:
            RunNotFoundError: unknown run id.
            InvalidStateError: the run or step is not waiting for an answer (the message lists the steps
                that are).
            InvalidInputError: an unknown action, or content that does not fit the schema (each field
                named); nothing changes.
        """
        if action not in ACTIONS:
            raise InvalidInputError("action", f"{action!r} is not one of {', '.join(ACTIONS)}")
        if content is not None and not isinstance(content, Mapping):
            raise InvalidInputError(
                "content", f"an object of the question's fields; got {type(content).__name__}"
            )
        return self._answer(run_id, step, action, content)

    def _answer(self, run_id: str, step: str, action: str, content: Mapping[str, Any] | None) -> RunRecord:
        run = self._active.get(run_id)
        if run is None:
            record = self._runs.get_run(run_id)
            raise InvalidStateError(
                "run", run_id, record.status.value, "only a run waiting for input can be answered"
            )
        with run.lock:
            question = run.waiting.get(step)
            waiting = sorted(run.waiting)
            known = step in run.names
            asked_below = [q for qs in run.sub_inputs.values() for q in qs if q.run_id]
            waiting += [f"{q.step} (sub-run {q.run_id})" for q in asked_below]
            below = [q for q in asked_below if q.step == step]
        if question is None and len(below) == 1:  # a sub-run's question, named by its step
            assert below[0].run_id is not None
            self._answer(below[0].run_id, step, action, content)
            return run.snapshot()
        if question is None and len(below) > 1:
            runs = ", ".join(f"run {q.run_id}" for q in below)
            raise InvalidInputError(
                "step", f"{step!r} is asked by several sub-runs ({runs}): give the one to answer as run_id"
            )
        if question is None:
            state = "not waiting for an answer" if known else f"not a step of run {run_id}"
            raise InvalidStateError(
                "step", step, state, f"steps waiting for an answer: {', '.join(waiting) or 'none'}"
            )
        checked = check_answer(question.requested_schema, content) if action == "accept" else {}
        advance = run.answer_input(_outcome(step, question, action, checked, self._clock, run_id))
        if advance is None:  # another answer (or the deadline) settled it meanwhile
            raise InvalidStateError("step", step, "answered already", "each question takes one answer")
        with self._changed:
            timer = self._timers.pop((run_id, step), None)
            self._unattended.discard((run_id, step))
        if timer is not None:
            timer.cancel()
        self._listeners.emit(
            "run.input_received",
            {"run_id": run_id, "workflow_name": run.record.workflow_name, "step": step, "action": action},
        )
        self._driver.apply(run, advance)
        return run.snapshot()

    # ------------------------------------------------------------------ lifetime

    def cancel_at_shutdown(self, run: RunState) -> None:
        """Cancel an active run at shutdown, unless it waits for input and its store is durable: that one
        stays waiting, and the next start continues it (:meth:`reload`). The run's error says why, and,
        in a durable store, that a resume continues it (a cancelled run is resumable)."""
        durable = self._runs.store.durable
        with run.lock:  # waiting on a question of its own or of a sub-run
            kept = run.kept = durable and bool(run.waiting or run.sub_inputs)
        if not kept:
            self._driver.cancel(run, _shutdown_reason(run.run_id, durable=durable))

    def forget(self, run_id: str) -> None:
        """The run ended (and left the active runs): drop its deadlines, wake its waiters."""
        with self._changed:
            keys = [k for k in self._timers if k[0] == run_id]
            timers = [self._timers.pop(k) for k in keys]
            self._unattended.difference_update([k for k in self._unattended if k[0] == run_id])
            if run_id in self._watched:
                self._ended.add(run_id)
            self._changed.notify_all()
        for timer in timers:
            timer.cancel()
        self._clock.forget(run_id)

    def reload(self) -> list[str]:
        """At start, in the one process that owns the state directory: continue every stored run that was
        waiting for input. Its completed steps keep their outputs, its questions are asked again with
        their original time and deadline (one past its deadline fails at once), and steps that were
        running elsewhere in the run when the process stopped run again, as a resume would run them.
        They are listed without steps, and resumed with answers that build no map item (neither is read).

        Returns:
            The ids of the runs continued.
        """
        store = self._runs.store
        if not store.durable:
            return []
        records = store.list_runs(status=WorkflowStatus.WAITING_FOR_INPUT, limit=100_000, steps=False)
        waiting = {r.run_id for r in records}
        continued = []
        for record in records:
            if record.parent_run_id in waiting:  # its parent continues it in place, in its step
                continue
            # Its sub-runs' questions too (their runs are asked again once the parent's steps resume them).
            keys = [(q.run_id or record.run_id, q.step) for q in record.pending_inputs]
            with self._lock:
                self._restored.update(zip(keys, record.pending_inputs, strict=True))
            try:
                self._runs.resume_run(record.run_id, wait=False, items=ItemWindow(limit=0))
            except OrchestrationError as exc:
                _log.warning("waiting run not continued", run_id=record.run_id, error=str(exc))
                continue
            finally:
                with self._lock:  # a sub-run's are taken when asked: its parent's step starts it later
                    for key in keys:
                        if key[0] == record.run_id:
                            self._restored.pop(key, None)
            continued.append(record.run_id)
        return continued
