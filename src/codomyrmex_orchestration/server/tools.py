"""OrchestrationMCPTools: the MCP tools as data (definitions) plus one dispatcher into the core.

Each tool is one :class:`_Tool` entry: pydantic argument and result models (which generate the
``inputSchema``/``outputSchema`` and validate calls), annotations, a description written for a language
model, and a synchronous ``run`` that calls the engine. :meth:`OrchestrationMCPTools.execute_tool` runs a
tool from plain Python; :meth:`OrchestrationMCPTools.execute_tool_async` is what the MCP server awaits: it
runs the core in worker threads on a dedicated capacity limiter, waits for long work without a thread,
relays progress, stops waiting at the timeout and cancels the run when the request is cancelled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import importlib
import itertools
import json
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import anyio.to_thread
from pydantic import BaseModel, ValidationError

from codomyrmex_orchestration._redact import redact, redact_text
from codomyrmex_orchestration._text import holds_lone_surrogate, readable, readable_value
from codomyrmex_orchestration.core.models import (
    ItemWindow,
    RunRecord,
    StepResult,
    TaskPriority,
    TaskRecord,
    TaskSpec,
    TaskStatus,
    WorkflowSpec,
    WorkflowStatus,
)
from codomyrmex_orchestration.errors import (
    DAGValidationError,
    InvalidInputError,
    OrchestrationError,
    WaitTimeoutError,
)
from codomyrmex_orchestration.logs import get_logger
from codomyrmex_orchestration.server._lazy import LazyModule

if TYPE_CHECKING:
    from codomyrmex_orchestration.core._health import HealthReport
    from codomyrmex_orchestration.core.actions import ActionRegistry
    from codomyrmex_orchestration.core.engine import OrchestrationEngine
    from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
    from codomyrmex_orchestration.core.workflows import WorkflowManager, WorkflowValidation
    from codomyrmex_orchestration.server import _models as m
else:
    # The argument and result models (44 pydantic classes, ~0.03x of a cold start): imported with the
    # first call, not to list the tools (their definitions are cached: see _tool_cache).
    m = LazyModule("codomyrmex_orchestration.server._models")

__all__ = [
    "EngineFactory",
    "OrchestrationMCPTools",
    "ProgressReporter",
    "ServerPolicy",
    "ToolResult",
]

log = get_logger("codomyrmex_orchestration.server")

ProgressReporter = Callable[[float, float | None, str | None], Awaitable[None]]
"""``await report(progress, total, message)``: relays progress to the client."""


@dataclass(frozen=True)
class ServerPolicy:
    """What the transport allows: code-executing actions, and private addresses for ``http.request``.

    ``for_transport`` applies the default: on stdio (a local client that could run code anyway) both are
    allowed; on network transports both are refused unless the settings allow them explicitly.
    """

    allow_code_execution: bool = True
    block_private_addresses: bool = False
    transport: str = "stdio"
    #: Internal hosts / CIDRs ``http.request`` may reach although private addresses are blocked.
    http_allow: tuple[str, ...] = ()
    #: Module prefixes ``python.call`` may import from; empty: any.
    python_call_allow: tuple[str, ...] = ()

    @classmethod
    def for_transport(
        cls,
        transport: str,
        allow_shell: bool | None,
        http_allow: tuple[str, ...] = (),
        python_call_allow: tuple[str, ...] = (),
    ) -> ServerPolicy:
        network = transport != "stdio"
        allowed = (not network) if allow_shell is None else allow_shell
        return cls(
            allow_code_execution=allowed,
            block_private_addresses=network and not allowed,
            transport=transport,
            http_allow=http_allow,
            python_call_allow=python_call_allow,
        )

    @property
    def action_extras(self) -> dict[str, Any]:
        """Values every action's ``ctx.extras`` should carry under this policy."""
        extras: dict[str, Any] = {}
        if self.block_private_addresses:
            extras["block_private_addresses"] = True
            if self.http_allow:
                extras["http_allow"] = self.http_allow
        if self.python_call_allow:
            extras["python_call_allow"] = self.python_call_allow
        return extras


EngineFactory = Callable[[ServerPolicy], "OrchestrationEngine"]
"""Builds (or returns the shared) ``OrchestrationEngine`` for a policy; called on first use."""


@dataclass(frozen=True)
class ToolResult:
    """What a tool call returns: ``structured`` (the JSON object) and ``text`` (for models that read text)."""

    text: str
    structured: dict[str, Any] | None = None
    is_error: bool = False

    @classmethod
    def error(cls, message: str) -> ToolResult:
        return cls(text=message, is_error=True)


# --------------------------------------------------------------------------- internals


@dataclass
class _Call:
    """Per-call context handed to a tool's ``run``: a thread-safe progress callback or ``None``."""

    progress: Callable[[float, float | None, str | None], None] | None = None


@dataclass
class _Pending:
    """A started piece of long work: ``wait(timeout)`` blocks up to ``timeout`` and returns the result as
    it stands (the plain-Python door); ``cancel()`` stops the work (called when the client cancels the
    request).

    The server waits without a thread: ``subscribe(deliver)`` arranges ``deliver(result)`` from whichever
    thread finishes the work (or at once if it is over), and ``unfinished(waited)`` is the handle as it
    stands when the wait runs out. With ``in_thread`` those two take locks held across the store (a run's),
    so each runs as a quick call in a worker thread instead of on the event loop.
    """

    wait: Callable[[float], BaseModel]
    cancel: Callable[[], None]
    timeout: float
    subscribe: Callable[[Callable[[BaseModel], None]], None]
    unfinished: Callable[[float], BaseModel]
    in_thread: bool = False
    #: Completes the answer once it is in hand, on the caller's side (it may raise a tool error, which a
    #: callback on the thread that settles the work could not report): get_task's page of the result.
    finish: Callable[[BaseModel], BaseModel] | None = None

    def finished(self, result: BaseModel) -> BaseModel:
        return result if self.finish is None else self.finish(result)


_Outcome = BaseModel | _Pending
"""What a tool's body returns: its result, or a handle on long work to wait for."""

RunFn = Callable[["OrchestrationMCPTools", Any, _Call], _Outcome]


@dataclass(frozen=True)
class _Tool:
    name: str
    title: str
    description: str
    args: type[BaseModel]
    result: type[BaseModel]
    run: RunFn
    read_only: bool = False
    destructive: bool = False
    idempotent: bool = False
    open_world: bool = False
    # Sends progress notifications (through ``_Call.progress``) as the work goes on.
    reports_progress: bool = False
    # ``run`` takes no lock a run can hold across I/O or a wait, so once the engine exists the async
    # path calls it on the event loop instead of paying a worker-thread round trip. Audited: list_workflows
    # takes WorkflowManager._lock (dict operations only; runs never hold it across the store or a step);
    # execute_task and get_task take the scheduler's lock (in-memory transitions only: callbacks, actions
    # and admission waits run outside it) and, without a session, no session lock; their waits are a
    # ``_Pending`` delivered by on_settled. Anything taking a run's lock, the store or a session's lock
    # (get_workflow_run, create_session, execute_workflow...) runs in a worker thread. A function of the
    # arguments decides per call (execute_task with a session_id takes the session's lock).
    starts_on_loop: bool | Callable[[Any], bool] = False

    def on_loop(self, args: BaseModel) -> bool:
        return self.starts_on_loop(args) if callable(self.starts_on_loop) else self.starts_on_loop

    def definition(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "inputSchema": _schema(self.args, "validation"),
            "outputSchema": _schema(self.result, "serialization"),
            "annotations": {
                "title": self.title,
                "readOnlyHint": self.read_only,
                "destructiveHint": self.destructive,
                "idempotentHint": self.idempotent,
                "openWorldHint": self.open_world,
            },
        }


def _schema(model: type[BaseModel], mode: Any) -> dict[str, Any]:
    schema = model.model_json_schema(mode=mode)
    schema.pop("title", None)
    schema.setdefault("type", "object")
    if mode == "serialization":
        schema = _flatten_schema(schema)
    return schema


# Keywords that constrain a value; a schema with none of them accepts anything.
_CONSTRAINING = frozenset(
    {"type", "enum", "const", "anyOf", "oneOf", "allOf", "not", "$ref", "if", "properties", "items"}
)

# Any JSON value, spelt out. Only where the value really is arbitrary JSON (an action's output, a task's
# result, a health issue's details): a schema without a type is what portability checks (the Inspector's)
# warn about, and clients generating types from it get nothing; this says the same thing explicitly.
_ANY_JSON: dict[str, Any] = {
    "anyOf": [{"type": t} for t in ("object", "array", "string", "number", "boolean", "null")]
}


def _flatten_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The same schema without indirection and in its most portable form: ``$ref`` to ``$defs``
    inlined (unless recursive), and every schema that accepted anything given explicit types.

    Clients check every structured result against the tool's output schema (the SDK's Client does, with
    jsonschema); references are where much of that time goes, and shorter schemas read better for models.
    A nullable value stays ``anyOf: [{...}, {type: null}]`` as pydantic writes it: ``type: [T, "null"]``
    is shorter to check but not understood by every client (the Inspector warns about each one).
    """
    defs: dict[str, Any] = schema.get("$defs", {})
    kept: set[str] = set()

    def walk(node: Any, expanding: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [walk(item, expanding) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref.removeprefix("#/$defs/")
            if name in expanding or name not in defs:
                kept.add(name)
                return dict(node)
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            inlined = walk(defs[name], (*expanding, name))
            inlined.pop("title", None)
            return {**inlined, **walk(siblings, expanding)}
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "$defs":
                continue
            if key in ("properties", "patternProperties") and isinstance(value, dict):
                out[key] = {name: _typed(walk(sub, expanding)) for name, sub in value.items()}
            elif key in ("items", "additionalProperties") and isinstance(value, dict):
                out[key] = _typed(walk(value, expanding))
            else:
                out[key] = walk(value, expanding)
        return out

    flat: dict[str, Any] = walk(schema, ())
    if kept:  # a recursive definition stays a reference: keep the definitions it may reach
        flat["$defs"] = defs
    return flat


def _typed(schema: Any) -> Any:
    """``schema``, or an explicit any-JSON-value schema (keeping its annotations) if it accepted anything."""
    if isinstance(schema, dict) and _CONSTRAINING.isdisjoint(schema):
        return {**schema, **_ANY_JSON}
    return schema


def jsonable(value: Any) -> Any:
    """Convert engine return values (pydantic models, dataclasses, enums, paths) to JSON values."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if kind is dict:
        return {k if type(k) is str else str(k): jsonable(v) for k, v in value.items()}
    if kind is list:
        return [jsonable(v) for v in value]
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", fallback=str)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _invalid_arguments(
    tool: str, exc: ValidationError, args: type[BaseModel], also: Sequence[str] = ()
) -> InvalidInputError:
    """``also``: what other checks found in the same arguments (create_workflow's graph checks)."""
    # An unknown field is answered with the fields accepted where it is (a step's, not the tool's).
    problem = InvalidInputError.from_validation(exc, accepted_at=lambda at: m.fields_at(args, at) or None)
    takes = "" if args.model_fields else " (it takes no arguments)"
    reason = "; ".join([problem.reason, *also])
    error = InvalidInputError("", f"invalid arguments for tool {tool!r}{takes}: {reason}")
    error.field = problem.field
    return error


def _run_handle(record: RunRecord, waited: float | None, page: ItemWindow | None = None) -> m.RunHandle:
    """The record as a tool result: each map step's items one page. ``page``: the window ``record`` was
    read with (get_workflow_run's); None: the first page, cut here (nothing to cut in a record read with
    ``FIRST_PAGE``, as :func:`_read_run` reads)."""
    from codomyrmex_orchestration.core._map_items import window_record
    from codomyrmex_orchestration.server._run_pages import FIRST_PAGE, paged_record  # with the first run

    if page is None:
        page = FIRST_PAGE
        record = window_record(record, page)
    data, paged = paged_record(record, page)
    handle = m.RunHandle.model_validate(data)
    notes: list[str] = []
    if record.pending_inputs:
        steps = ", ".join(
            q.step + (f" of sub-run {q.run_id}" if q.run_id not in (None, record.run_id) else "")
            for q in record.pending_inputs
        )
        notes.append(f"the run is waiting for input (step {steps}): read pending_inputs, then respond_to_run")
    elif not record.status.is_terminal:
        notes.append(
            f"the run is still {record.status.value}"
            + (f" after waiting {waited:g} s" if waited else "")
            + f"; call get_workflow_run with run_id {record.run_id!r} to follow it, "
            "or cancel_workflow_run to stop it"
        )
    handle.note = "; ".join(notes + paged) or None
    return handle


#: A result's text is its whole JSON up to this many characters; a larger result's text is a summary (the
#: record is in the structured content once, not twice: the SDK client refuses SSE events over 1 MiB).
FULL_TEXT_CHARS = 64 * 1024
#: The most bytes of JSON a tool result's structured content may be; a larger one is an error saying so.
MAX_RESULT_BYTES = 896 * 1024
_SUMMARY_VALUE_CHARS = 2048
_SUMMARY_STEPS = 200


def _large_result(result: BaseModel, structured: dict[str, Any], text: str) -> ToolResult:
    """A result of more than :data:`FULL_TEXT_CHARS`: a run record cut to its budget, shown with a summary
    text; anything still over :data:`MAX_RESULT_BYTES` (no client could read it) an error saying so."""
    if isinstance(result, m.RunHandle | m.TaskResult):
        from codomyrmex_orchestration.server._run_pages import fit_record, fit_task

        fit = fit_record if isinstance(result, m.RunHandle) else fit_task
        if (left_out := fit(structured, len(text))) is not None:
            structured["note"] = "; ".join(filter(None, (structured.get("note"), left_out)))
            text = json.dumps(structured, ensure_ascii=False)
    size = len(text) if len(text) * 4 <= MAX_RESULT_BYTES else len(text.encode())
    if size > MAX_RESULT_BYTES:
        return ToolResult.error(
            f"the result is {size} bytes of JSON, more than the {MAX_RESULT_BYTES // 1024} KiB a tool "
            "result may be (MCP clients refuse larger messages): ask for less (get_workflow_run's "
            "items_limit; a large output is read in pages: a workflow step's with get_workflow_run's "
            "step, a task's result with get_task's value_offset)"
        )
    brief: dict[str, Any] = {
        key: value
        for key, value in structured.items()
        if len(json.dumps(value, ensure_ascii=False, default=str)) <= _SUMMARY_VALUE_CHARS or key == "note"
    }
    steps = structured.get("steps")
    if isinstance(steps, dict) and len(steps) <= _SUMMARY_STEPS:
        brief["steps"] = {name: step.get("status") for name, step in steps.items() if isinstance(step, dict)}
    brief["summary"] = (
        f"this text is a summary: the whole result ({len(text)} characters of JSON) is the structured content"
    )
    return ToolResult(text=json.dumps(brief, ensure_ascii=False), structured=structured)


def _read_run(manager: WorkflowManager, run_id: str) -> RunRecord:
    """Run ``run_id``'s record with the first page of each map step's items, the only ones read and built
    (what :func:`_run_handle` shows). Raises RunNotFoundError."""
    from codomyrmex_orchestration.server._run_pages import FIRST_PAGE

    return manager.get_run(run_id, items=FIRST_PAGE)


def _step_progress(call: _Call, already_done: int = 0) -> Callable[[RunRecord, StepResult], None] | None:
    """An on_step callback reporting "n of total steps ended" (``already_done``: kept by a resume)."""
    report = call.progress
    if report is None:
        return None
    # Each step ends once; next() on a count is atomic, so worker threads need no lock. (Counting the
    # ended steps in the record at each step made a 10,000-step run 50 million status checks.)
    ended = itertools.count(already_done + 1)

    def on_step(record: RunRecord, step: StepResult) -> None:
        # Only final transitions: progress must increase with every notification.
        if step.status.is_terminal:
            # The live record given to on_step has every step from the start: its size is the total.
            report(
                float(next(ended)), float(len(record.steps)) or None, f"step {step.name} {step.status.value}"
            )

    return on_step


# --------------------------------------------------------------------------- the tools' bodies


def _run_pending(
    tools: OrchestrationMCPTools, record: RunRecord, wait: bool, timeout: float, *, owns_run: bool = True
) -> _Outcome:
    """The run handle now, or a wait for it: until the run ends, or waits on a person (respond_to_run).
    ``owns_run``: the call started the run (or resumed it), so cancelling the call cancels the run; an
    answer to its question (respond_to_run) only waits on it."""
    if not wait or record.status.is_terminal:
        return _run_handle(record, None)
    run_id = record.run_id
    manager = tools.engine.workflow_manager

    def wait_for(seconds: float) -> BaseModel:
        return _run_handle(manager.inputs.wait(run_id, seconds), seconds)

    def subscribe(deliver: Callable[[BaseModel], None]) -> None:
        manager.inputs.on_stop(run_id, lambda now: deliver(_run_handle(now, None)))

    def unfinished(waited: float) -> BaseModel:
        return _run_handle(_read_run(manager, run_id), waited)

    def cancel() -> None:
        if owns_run:
            manager.cancel_run(run_id)

    return _Pending(wait_for, cancel, timeout, subscribe, unfinished, in_thread=True)


def _execute_workflow(tools: OrchestrationMCPTools, a: m.ExecuteWorkflowArgs, call: _Call) -> _Outcome:
    from codomyrmex_orchestration.server._run_pages import FIRST_PAGE  # with the first run

    # Read with the first page of each map step's items, the only ones built: what _run_handle shows.
    record = tools.engine.execute_workflow(
        a.workflow_name,
        parameters=a.parameters,
        session_id=a.session_id,
        wait=False,
        on_step=_step_progress(call),
        use_cache=a.use_cache,
        items=FIRST_PAGE,
    )
    return _run_pending(tools, record, a.wait, a.timeout_seconds)


def _create_complex_workflow(
    tools: OrchestrationMCPTools, a: m.CreateComplexWorkflowArgs, call: _Call
) -> _Outcome:
    from codomyrmex_orchestration.server._run_pages import FIRST_PAGE  # with the first run

    definition = a.workflow_definition.model_dump(mode="json", exclude_defaults=False)
    record = tools.engine.execute_complex_workflow(
        definition,
        name=a.name,
        parameters=a.parameters,
        session_id=a.session_id,
        wait=False,
        on_step=_step_progress(call),
        use_cache=a.use_cache,
        overwrite=a.overwrite,
        items=FIRST_PAGE,
    )
    return _run_pending(tools, record, a.wait, a.timeout_seconds)


def _resume_run(tools: OrchestrationMCPTools, a: m.ResumeRunArgs, call: _Call) -> _Outcome:
    from codomyrmex_orchestration.server._run_pages import FIRST_PAGE  # with the first run

    engine = tools.engine
    # The steps a resume keeps (its completed ones) count as ended from the first notification on.
    steps = engine.workflow_manager.get_run(a.run_id, items=ItemWindow(limit=0)).steps.values()
    kept = sum(1 for s in steps if s.status is TaskStatus.COMPLETED)
    # Through the engine: a run of an open session resumes within its limits and is closed with it.
    # Read with the first page of each map step's items, the only ones built: what _run_handle shows.
    record = engine.resume_run(a.run_id, wait=False, on_step=_step_progress(call, kept), items=FIRST_PAGE)
    return _run_pending(tools, record, a.wait, a.timeout_seconds)


def _validation_fields(validation: WorkflowValidation) -> dict[str, Any]:
    return validation.model_dump(exclude={"name", "missing_secrets"})


def _create_workflow(tools: OrchestrationMCPTools, a: m.CreateWorkflowArgs, call: _Call) -> _Outcome:
    manager = tools.engine.workflow_manager
    spec = WorkflowSpec(**{name: getattr(a, name) for name in WorkflowSpec.model_fields})
    created = manager.create_workflow(spec, overwrite=a.overwrite, source="api")
    validation = manager.validate_workflow(created)
    return m.CreateWorkflowResult(workflow_name=created.name, **_validation_fields(validation))


def _list_workflows(tools: OrchestrationMCPTools, a: m.NoArgs, call: _Call) -> _Outcome:
    infos = tools.engine.workflow_manager.list_workflows()
    return m.WorkflowListResult(workflows=infos, count=len(infos))


def _get_workflow(tools: OrchestrationMCPTools, a: m.GetWorkflowArgs, call: _Call) -> _Outcome:
    manager = tools.engine.workflow_manager
    spec = manager.get_workflow(a.name, a.version)
    validation = manager.describe_workflow(a.name, a.version)
    version, digest = manager.workflow_version(a.name, a.version)
    return m.WorkflowDetail(
        name=spec.name,
        version=version,
        digest=digest,
        description=spec.description,
        steps=spec.steps,
        parameters=spec.parameters,
        max_parallel=spec.max_parallel,
        version_label=spec.version,
        **_validation_fields(validation),
    )


def _validate_workflow(tools: OrchestrationMCPTools, a: m.ValidateWorkflowArgs, call: _Call) -> _Outcome:
    document = {name: getattr(a, name) for name in WorkflowSpec.model_fields}
    try:  # every problem at once: the schema's, and the other checks over the steps that parse
        validation = tools.engine.workflow_manager.validate_workflow(document)
    except DAGValidationError as exc:
        return m.ValidationResult(valid=False, workflow_name=a.name, problems=exc.problems)
    except InvalidInputError as exc:
        return m.ValidationResult(valid=False, workflow_name=a.name, problems=[str(exc)])
    spec = WorkflowSpec.model_validate(document)  # valid: it parsed above
    # Checks that reach outside (mcp.call: the server's tools and their input schemas)
    problems = tools.engine.registry.probe(spec.steps)
    return m.ValidationResult(
        valid=not problems,
        workflow_name=a.name,
        missing_secrets=validation.missing_secrets,
        **{**_validation_fields(validation), "problems": problems},
    )


def _delete_workflow(tools: OrchestrationMCPTools, a: m.WorkflowNameArgs, call: _Call) -> _Outcome:
    from codomyrmex_orchestration.core._workflow_deletion import delete_with_note

    # A name that matched nothing is no error (a repeat delete is fine), but the note says so.
    deleted, note = delete_with_note(tools.engine.workflow_manager, a.name)
    return m.DeleteResult(workflow_name=a.name, deleted=deleted, note=note)


def _get_run(tools: OrchestrationMCPTools, a: m.GetRunArgs, call: _Call) -> _Outcome:
    page = ItemWindow(a.items_offset, a.items_limit, a.items_status)
    manager = tools.engine.workflow_manager
    record = manager.get_run(a.run_id, items=page)
    handle = _run_handle(record, None, page)
    if a.step is not None or a.parameter is not None or a.item is not None:
        from codomyrmex_orchestration.server._run_pages import value_page

        handle.value = value_page(
            manager, record, step=a.step, item=a.item, parameter=a.parameter, offset=a.value_offset
        )
    return handle


def _list_runs(tools: OrchestrationMCPTools, a: m.ListRunsArgs, call: _Call) -> _Outcome:
    status = WorkflowStatus(a.status) if a.status else None
    found = tools.engine.workflow_manager.list_runs(
        workflow_name=a.workflow_name,
        status=status,
        limit=a.limit + 1,  # one more than the page: a cursor only when another run follows
        since=_aware(a.since),
        until=_aware(a.until),
        cursor=a.cursor,
        steps=False,  # a summary shows none: no step or item row is read
        parent_run_id=a.parent_run_id,
    )
    records = found[: a.limit]
    runs = [
        m.RunSummary(
            run_id=r.run_id,
            workflow_name=r.workflow_name,
            status=r.status.value,
            created_at=_utc_text(r.created_at),
            finished_at=_utc_text(r.finished_at) if r.finished_at is not None else None,
            duration_seconds=r.duration_seconds,
            failed_steps=r.failed_steps,
            parent_run_id=r.parent_run_id,
            parent_step=r.parent_step,
        )
        for r in records
    ]
    from codomyrmex_orchestration.core._store_codec import run_cursor  # not needed to list the tools

    next_cursor = run_cursor(records[-1]) if len(found) > a.limit else None
    return m.RunListResult(runs=runs, count=len(runs), next_cursor=next_cursor)


def _utc_text(moment: datetime) -> str:
    """``moment`` spelt as a run record spells it (pydantic's JSON: UTC as ``Z``), so a run's times read
    the same in a listing and in its record."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _aware(moment: datetime | None) -> datetime | None:
    """A time without a zone is read as UTC (every record is)."""
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def _respond(tools: OrchestrationMCPTools, a: m.RespondArgs, call: _Call) -> _Outcome:
    record = tools.engine.workflow_manager.inputs.respond(a.run_id, a.step, a.action, a.content)
    # Whoever answers may not be who started the run: dropping the wait leaves the run going.
    return _run_pending(tools, record, a.wait, a.timeout_seconds, owns_run=False)


def _cancel_run(tools: OrchestrationMCPTools, a: m.RunIdArgs, call: _Call) -> _Outcome:
    """Cancel, then wait for the run to settle as ``WorkflowManager.cancel_run`` does (the record then,
    or as it stands after its wait), holding no thread: many cancels waiting on a run that is slow to
    stop (a stopped CLI process) must not block other calls."""
    from codomyrmex_orchestration.core.workflows import CANCEL_WAIT  # the engine has loaded it

    manager, run_id = tools.engine.workflow_manager, a.run_id
    record = manager.request_cancel(run_id)
    if record.status.is_terminal:
        return _run_handle(record, None)

    def wait_for(seconds: float) -> BaseModel:
        settled = threading.Event()
        manager.on_settled(run_id, lambda now: settled.set())
        settled.wait(seconds)
        return _run_handle(_read_run(manager, run_id), None)

    def subscribe(deliver: Callable[[BaseModel], None]) -> None:
        manager.on_settled(run_id, lambda now: deliver(_run_handle(now, None)))

    def unfinished(waited: float) -> BaseModel:
        return _run_handle(_read_run(manager, run_id), None)

    # Cancelling the request leaves the cancellation asked for: there is nothing more to stop.
    return _Pending(wait_for, lambda: None, CANCEL_WAIT, subscribe, unfinished, in_thread=True)


def _task_result(record: TaskRecord, waited: float | None) -> m.TaskResult:
    result = m.TaskResult(
        task_id=record.task_id,
        name=record.name,
        status=record.status.value,
        result=record.result,
        error=record.error,
        attempts=record.attempts,
        started_at=record.started_at,
        finished_at=record.finished_at,
        duration_seconds=record.duration_seconds,
    )
    if result.status in ("pending", "ready", "running", "blocked"):
        result.note = (
            f"the task is still {result.status}"
            + (f" after waiting {waited:g} s" if waited else "")
            + f"; it goes on in the background: call get_task with task_id {result.task_id!r} to follow it"
        )
    return result


def _get_task(tools: OrchestrationMCPTools, a: m.TaskIdArgs, call: _Call) -> _Outcome:
    orchestrator = tools.engine.task_orchestrator
    task_id = a.task_id
    record = orchestrator.get_task(task_id)  # an unknown id fails now, before any wait
    finish = None if a.value_offset is None else functools.partial(_result_page, offset=a.value_offset)
    if a.wait_seconds <= 0 or record.status.is_terminal:
        result = _task_result(record, None)
        return result if finish is None else finish(result)
    # Not this call's task: cancelling the call leaves it running.
    return _pending_task(orchestrator, task_id, a.wait_seconds, cancel=lambda: None, finish=finish)


def _result_page(result: BaseModel, offset: int) -> BaseModel:
    """``result`` (a task's answer) with the page of its result's JSON text from ``offset`` once the task
    has ended; a task still going says when it can be read.

    Raises:
        InvalidInputError: ``offset`` (value_offset) past the text's end.
    """
    assert isinstance(result, m.TaskResult)  # get_task's answers are
    if not TaskStatus(result.status).is_terminal:
        result.note = f"{result.note}; its result is read in pages (value_offset) once it has ended"
        return result
    from codomyrmex_orchestration.server._run_pages import text_page

    result.value = text_page(result.result, "result", offset)
    return result


def _execute_task(tools: OrchestrationMCPTools, a: m.ExecuteTaskArgs, call: _Call) -> _Outcome:
    spec = TaskSpec(
        name=a.name,
        module=a.module,
        action=a.action,
        parameters=a.parameters,
        priority=TaskPriority[a.priority.upper()],
        dependencies=a.dependencies,
        resources=a.resources,
        timeout=a.timeout,
        max_retries=a.max_retries,
        retry_delay=a.retry_delay,
        backoff=a.backoff,
    )
    engine = tools.engine
    orchestrator = engine.task_orchestrator
    # The id alone while the call waits: the task's record is built once, when it is final (a task
    # that is already final is delivered at once by on_settled). Queued for the session, else for the
    # calling client (core._client).
    task_id = engine.start_task(spec, session_id=a.session_id)
    tools._remember_task(task_id)
    if not a.wait:
        return _task_result(orchestrator.get_task(task_id), None)

    def cancel() -> None:
        orchestrator.cancel_task(task_id, "the client cancelled the request")

    return _pending_task(orchestrator, task_id, a.timeout_seconds, cancel=cancel)


def _pending_task(
    orchestrator: TaskOrchestrator,
    task_id: str,
    timeout: float,
    *,
    cancel: Callable[[], None],
    finish: Callable[[BaseModel], BaseModel] | None = None,
) -> _Pending:
    """A wait of up to ``timeout`` for a task's final record: without a thread on the server's loop
    (``on_settled`` delivers it), blocking the caller in plain Python; ``cancel`` runs if the client
    cancels the request; ``finish`` completes the answer (see :class:`_Pending`)."""

    def wait_for(seconds: float) -> BaseModel:
        try:
            return _task_result(orchestrator.wait(task_id, seconds), None)
        except WaitTimeoutError:
            return _task_result(orchestrator.get_task(task_id), seconds)

    def subscribe(deliver: Callable[[BaseModel], None]) -> None:
        orchestrator.on_settled(task_id, lambda final: deliver(_task_result(final, None)))

    def unfinished(waited: float) -> BaseModel:
        return _task_result(orchestrator.get_task(task_id), waited)

    return _Pending(wait_for, cancel, timeout, subscribe, unfinished, finish=finish)


def _get_system_status(tools: OrchestrationMCPTools, a: m.NoArgs, call: _Call) -> _Outcome:
    return tools.engine.get_system_status()


def _get_health_status(tools: OrchestrationMCPTools, a: m.NoArgs, call: _Call) -> _Outcome:
    health = tools.engine.health_check()
    if tools.health_observer is not None:  # the serving process's verdict (/healthz, server.json)
        tools.health_observer(health)
    if tools.server_status is not None:  # the server's own component: sessions, code-execution exposure
        from codomyrmex_orchestration.core._health import ComponentHealth

        health.components["server"] = ComponentHealth.model_validate(tools.server_status())
    return health


def _allocate_resources(tools: OrchestrationMCPTools, a: m.AllocateResourcesArgs, call: _Call) -> _Outcome:
    allocations = tools.engine.allocate_resources(
        a.user_id, dict(a.requirements), ttl=a.ttl_seconds, session_id=a.session_id
    )
    return m.AllocationResult(user_id=a.user_id, allocations=allocations, session_id=a.session_id)


def _release_resources(tools: OrchestrationMCPTools, a: m.ReleaseResourcesArgs, call: _Call) -> _Outcome:
    if (a.allocation_id is None) == (a.user_id is None):
        raise InvalidInputError("allocation_id", "give exactly one of allocation_id or user_id")
    released = tools.engine.release_resources(allocation_id=a.allocation_id, requester_id=a.user_id)
    # Nothing released is no error (a repeat release is fine), but the note says why.
    note = (
        tools.engine.allocations.nothing_released(allocation_id=a.allocation_id, requester_id=a.user_id)
        if not released
        else None
    )
    return m.ReleaseResult(released=released, allocation_id=a.allocation_id, user_id=a.user_id, note=note)


def _create_project(tools: OrchestrationMCPTools, a: m.CreateProjectArgs, call: _Call) -> _Outcome:
    project = tools.engine.project_manager.create_project(
        a.name,
        template=a.template,
        description=a.description,
        owner=a.owner,
        overwrite_workflows=a.overwrite_workflows,
    )
    path = Path(project.path)
    files = sorted(str(f.relative_to(path)) for f in path.rglob("*") if f.is_file()) if path.is_dir() else []
    return m.ProjectResult(
        project_name=project.name,
        project_type=project.type.value,
        project_path=project.path,
        template_used=project.template,
        status=project.status.value,
        description=project.description,
        owner=project.owner,
        version=project.version,
        created_at=project.created_at,
        files_created=files[:_MAX_LISTED_FILES],
        workflows=project.workflows,
        workflows_not_registered=project.workflows_not_registered,
    )


_MAX_LISTED_FILES = 500


def _list_projects(tools: OrchestrationMCPTools, a: m.ListProjectsArgs, call: _Call) -> _Outcome:
    projects = [
        m.ProjectInfo(
            name=p.name,
            type=p.type.value,
            status=p.status.value,
            path=p.path,
            description=p.description,
            created_at=p.created_at,
        )
        for p in tools.engine.project_manager.list_projects(status=a.status, type=a.type)
    ]
    return m.ProjectListResult(projects=projects, count=len(projects))


def _list_project_templates(tools: OrchestrationMCPTools, a: m.NoArgs, call: _Call) -> _Outcome:
    templates = tools.engine.project_manager.list_templates()
    return m.TemplateListResult(templates=templates, count=len(templates))


def _create_session(tools: OrchestrationMCPTools, a: m.CreateSessionArgs, call: _Call) -> _Outcome:
    engine = tools.engine
    session_id = engine.create_session(**a.model_dump(exclude_none=True))
    return m.SessionResult.model_validate(engine.get_session(session_id).model_dump())


def _close_session(tools: OrchestrationMCPTools, a: m.CloseSessionArgs, call: _Call) -> _Outcome:
    session = tools.engine.close_session(a.session_id, cancel_running=a.cancel_running)
    return m.CloseSessionResult.model_validate(session.model_dump())


def _list_actions(tools: OrchestrationMCPTools, a: m.ListActionsArgs, call: _Call) -> _Outcome:
    registry = tools.engine.registry
    actions = [
        m.ActionInfo(**d, allowed=not d["executes_code"] or registry.allow_code_execution)
        for d in registry.catalogue()
    ]
    from codomyrmex_orchestration.connectors import mcp_catalogue  # not needed to list the tools

    return m.ActionListResult(actions=actions, count=len(actions), **mcp_catalogue(registry, a.server))


# --------------------------------------------------------------------------- the catalogue

_STEP_HELP = (
    "Each step: {name, module, action, parameters?, dependencies?, timeout?, max_retries?, retry_delay?, "
    "run_if?, required?, priority?, resources?, for_each?, max_parallel?, cache?}. Reference earlier "
    "output with '{{steps.<step>.output.<key>}}' and workflow parameters with '{{params.<name>}}' (such "
    "references also add the dependency), secrets with '{{secrets.<NAME>}}' (never stored or shown). A "
    "step with for_each (a list, or e.g. '{{steps.ls.output.files}}') runs once per item with '{{item}}' "
    "and '{{index}}'; its output is the list of item outputs. "
    'cache: {"ttl_seconds": 600} reuses the output of an identical earlier call. '
    "Call list_actions for the available module.action pairs."
)


def _build_tools() -> tuple[_Tool, ...]:
    from codomyrmex_orchestration.core._health import HealthReport, SystemStatus

    return (
        _Tool(
            "execute_workflow",
            "Execute a workflow",
            "Run a registered workflow and return its run record: run_id, status and each step's status, "
            "output, error, attempts and timings. Waits up to timeout_seconds (default 50); if the run is "
            "still going it returns the handle with status 'running' - follow it with get_workflow_run. "
            "Use wait=false to start it and return at once. Sends progress notifications as steps finish. "
            'Example: {"workflow_name": "hello", "parameters": {"who": "world"}}',
            m.ExecuteWorkflowArgs,
            m.RunHandle,
            _execute_workflow,
            open_world=True,
            reports_progress=True,
        ),
        _Tool(
            "create_workflow",
            "Create a workflow",
            "Register (and persist) a workflow: a DAG of steps, each running one module.action. Returns the "
            "execution levels (steps that run in parallel), dependencies inferred from templates and a "
            "Mermaid diagram. Refuses an existing name unless overwrite=true. " + _STEP_HELP + " Example: "
            '{"name": "hello", "steps": [{"name": "greet", "module": "core", "action": "echo", '
            '"parameters": {"message": "hi {{params.who}}"}}, {"name": "shout", "module": "core", '
            '"action": "set", "parameters": {"text": "{{steps.greet.output}}"}}], "parameters": {"who": '
            '"you"}}',
            m.CreateWorkflowArgs,
            m.CreateWorkflowResult,
            _create_workflow,
        ),
        _Tool(
            "list_workflows",
            "List workflows",
            "List every registered workflow with its description, number of steps and source (sample: "
            "shipped "
            "with the server; config: loaded from the config directory; api: created through this server); "
            "'refused' says why this server's policy will not run one, and which setting allows it. Example: "
            "{}",
            m.NoArgs,
            m.WorkflowListResult,
            _list_workflows,
            read_only=True,
            idempotent=True,
            starts_on_loop=True,
        ),
        _Tool(
            "create_project",
            "Create a project",
            "Scaffold a project folder from a template (the packaged ai_analysis, web_application, "
            "data_pipeline, ml_model, documentation, research, custom, or your own: list_project_templates "
            "lists them) with its documentation, and register the workflows the template provides. Returns "
            "the path, files created, workflow names and those not registered (and why). Example: "
            '{"name": "churn_study", "template": "data_pipeline", "description": "Monthly churn analysis"}',
            m.CreateProjectArgs,
            m.ProjectResult,
            _create_project,
        ),
        _Tool(
            "list_projects",
            "List projects",
            "List projects (name, type, status, path, created_at), optionally filtered by status or type. "
            'Example: {"type": "research"}',
            m.ListProjectsArgs,
            m.ProjectListResult,
            _list_projects,
            read_only=True,
            idempotent=True,
        ),
        _Tool(
            "execute_task",
            "Execute one task",
            "Run a single module.action through the scheduler (with priority, dependencies on other task "
            "ids, resources, a timeout per attempt, retries with a delay and backoff, optionally in a "
            "session) and return task_id, status, result or error. Waits up to timeout_seconds (the wait, "
            "not the task's timeout) unless wait=false. Example: "
            '{"name": "nap", "module": "core", "action": "sleep", "parameters": {"seconds": 1}, '
            '"priority": "high", "timeout": 5, "max_retries": 1}',
            m.ExecuteTaskArgs,
            m.TaskResult,
            _execute_task,
            open_world=True,
            starts_on_loop=lambda a: a.session_id is None,  # a session's lock is not taken on the loop
        ),
        _Tool(
            "get_system_status",
            "System status",
            "The engine's aggregated status: sessions, workflows, runs by status, queue depth per priority, "
            "resource usage and executor figures. Example: {}",
            m.NoArgs,
            SystemStatus,
            _get_system_status,
            read_only=True,
        ),
        _Tool(
            "get_health_status",
            "Health status",
            "Health of every component (scheduler threads, worker pool, state store, resources): "
            "overall_status healthy/degraded/unhealthy, uptime_seconds, per-component status, error counts "
            "and "
            "issues. Example: {}",
            m.NoArgs,
            HealthReport,
            _get_health_status,
            read_only=True,
        ),
        _Tool(
            "allocate_resources",
            "Allocate resources",
            "Reserve resources for a user, all or nothing; returns the allocations with their ids (release "
            "them with release_resources, or give ttl_seconds; with session_id they are the user's still and "
            "are also released when that session closes). Fails with what was requested and what is "
            'available. Example: {"user_id": "agent-1", "requirements": {"compute": 2, "memory": "512MB"}, '
            '"ttl_seconds": 600}',
            m.AllocateResourcesArgs,
            m.AllocationResult,
            _allocate_resources,
        ),
        _Tool(
            "create_complex_workflow",
            "Create and run a workflow",
            "Register a workflow from steps plus a dependencies map (step -> steps it waits for) and run it "
            "at once; returns the run record like execute_workflow. The same definition under the same name "
            "just runs again; a different one refuses an existing name unless overwrite=true. "
            + _STEP_HELP
            + " Example: "
            '{"name": "pipeline", "workflow_definition": {"steps": [{"name": "a", "module": "core", '
            '"action": "echo", "parameters": {"message": 1}}, {"name": "b", "module": "core", "action": '
            '"echo", "parameters": {"message": 2}}], "dependencies": {"b": ["a"]}}}',
            m.CreateComplexWorkflowArgs,
            m.RunHandle,
            _create_complex_workflow,
            open_world=True,
            reports_progress=True,
        ),
        _Tool(
            "get_workflow_run",
            "Get a run",
            "The current record of a workflow run (status, each step's status, output and error). Use it to "
            "follow a run returned with status running. A map step (for_each) shows its item counts by "
            "status and one page of its items: page with items_offset/items_limit, or list only some "
            'with items_status, e.g. ["failed"]. A value shown as {"omitted": ...} (the record is capped at '
            "256 KiB) is read with the arguments in its read, a page of its JSON text at a time "
            '(value_offset). Example: {"run_id": "<run_id>"}',
            m.GetRunArgs,
            m.RunHandle,
            _get_run,
            read_only=True,
        ),
        _Tool(
            "get_task",
            "Get a task",
            "The current record of a single task started by execute_task (status, result, error, attempts), "
            "optionally waiting up to wait_seconds for it to finish. Use it to follow a task returned while "
            'still running. A result shown as {"omitted": ...} (an answer is capped at 256 KiB) is read '
            "with the arguments in its read, a page of its JSON text at a time (value_offset). "
            'Example: {"task_id": "<task_id>", "wait_seconds": 10}',
            m.TaskIdArgs,
            m.TaskResult,
            _get_task,
            read_only=True,
            starts_on_loop=True,
        ),
        _Tool(
            "list_workflow_runs",
            "List runs",
            "Recent runs, newest first, optionally for one workflow or status. "
            'Example: {"workflow_name": "hello", "status": "failed", "limit": 10}',
            m.ListRunsArgs,
            m.RunListResult,
            _list_runs,
            read_only=True,
        ),
        _Tool(
            "cancel_workflow_run",
            "Cancel a run",
            "Cancel a running workflow run: running steps are asked to stop, pending ones are cancelled. "
            'Returns the run record. Example: {"run_id": "<run_id>"}',
            m.RunIdArgs,
            m.RunHandle,
            _cancel_run,
            destructive=True,
            idempotent=True,
        ),
        _Tool(
            "respond_to_run",
            "Answer a run's question",
            "Answer the question of a run waiting for input (a core.approve step; get_workflow_run lists "
            "them "
            "in pending_inputs with their schema): accept with content fitting the schema completes the "
            "step, "
            "decline or cancel fail it. Then waits like execute_workflow (until the run ends or waits for "
            "input "
            "again; cancelling this call drops only the wait, not the run) and returns the run record. "
            'Example: {"run_id": "<run_id>", '
            '"step": "approve", "action": "accept", "content": {"reason": "looks good"}}',
            m.RespondArgs,
            m.RunHandle,
            _respond,
        ),
        _Tool(
            "resume_workflow_run",
            "Resume a run",
            "Resume an interrupted or failed run: completed steps keep their outputs, the rest run again. "
            "A run of an open session resumes in it (within its limits; closing it cancels the run); a run "
            "whose session has closed (close_session, expiry or a server restart) resumes outside any "
            'session, its session_id cleared. Waits like execute_workflow. Example: {"run_id": "<run_id>"}',
            m.ResumeRunArgs,
            m.RunHandle,
            _resume_run,
            open_world=True,
            reports_progress=True,
        ),
        _Tool(
            "get_workflow",
            "Get a workflow",
            "A registered workflow's definition, version, execution levels, inferred dependencies and "
            "Mermaid "
            'diagram; `version` fetches an older one a stored run still refers to. Example: {"name": '
            '"hello"}',
            m.GetWorkflowArgs,
            m.WorkflowDetail,
            _get_workflow,
            read_only=True,
            idempotent=True,
        ),
        _Tool(
            "validate_workflow",
            "Validate a workflow",
            "Check a workflow definition without registering it: returns valid, every problem found at once "
            "(misspelt or missing fields in any step, cycles, unknown actions, missing dependencies, bad "
            "templates, a workflow.run step that runs its own workflow; for mcp.call steps an unknown server "
            "and, when the server can be reached, an unknown tool or arguments its input schema refuses), "
            "the execution levels and a Mermaid diagram. "
            'Example: {"name": "draft", "steps": [{"name": "a", "module": "core", "action": "echo", '
            '"parameters": {"message": "x"}}]}',
            m.ValidateWorkflowArgs,
            m.ValidationResult,
            _validate_workflow,
            read_only=True,
            idempotent=True,
        ),
        _Tool(
            "delete_workflow",
            "Delete a workflow",
            'Remove a registered workflow (its past runs are kept). Example: {"name": "draft"}',
            m.WorkflowNameArgs,
            m.DeleteResult,
            _delete_workflow,
            destructive=True,
            idempotent=True,
        ),
        _Tool(
            "release_resources",
            "Release resources",
            "Release one allocation (allocation_id) or every allocation a user holds (user_id). "
            'Example: {"allocation_id": "<allocation_id>"}',
            m.ReleaseResourcesArgs,
            m.ReleaseResult,
            _release_resources,
            destructive=True,
            idempotent=True,
        ),
        _Tool(
            "create_session",
            "Create a session",
            "Open a session that groups runs and tasks under limits (max parallel tasks/workflows, mode, "
            'timeout); pass its session_id to execute_workflow. Example: {"user_id": "agent-1", '
            '"name": "nightly", "max_parallel_workflows": 2}',
            m.CreateSessionArgs,
            m.SessionResult,
            _create_session,
        ),
        _Tool(
            "close_session",
            "Close a session",
            "Close a session, release its allocations and optionally cancel its running work; its history is "
            "kept. cancelled_runs/cancelled_tasks list what the call cancelled. A session already closed "
            "(also by a server restart) is returned as it is with a note; with cancel_running its work still "
            'running is cancelled. Example: {"session_id": "<session_id>", "cancel_running": true}',
            m.CloseSessionArgs,
            m.CloseSessionResult,
            _close_session,
            destructive=True,
            idempotent=True,
        ),
        _Tool(
            "list_actions",
            "List actions",
            "Every module.action a step can run, with its parameters, output, and whether it is allowed on "
            "this server (code-executing actions may be disabled), and the MCP servers mcp.call can call "
            "(with server, also that server's tools and their input schemas). Any action can run once per "
            'item of a list: give its step for_each (and max_parallel), e.g. "for_each": '
            '"{{steps.ls.output.files}}" with "{{item}}" in its parameters. Any step\'s parameters may also '
            'use "{{secrets.NAME}}" (a secret set on the server, redacted from every output), and any step '
            "may "
            'set "cache": {"ttl_seconds": 600} to reuse an identical call\'s output. Example: {} or '
            '{"server": "docs"}',
            m.ListActionsArgs,
            m.ActionListResult,
            _list_actions,
            read_only=True,
            idempotent=True,
        ),
        _Tool(
            "list_project_templates",
            "List project templates",
            "The project templates create_project accepts, what each one creates, and the longest project "
            "name each accepts (max_project_name). Example: {}",
            m.NoArgs,
            m.TemplateListResult,
            _list_project_templates,
            read_only=True,
            idempotent=True,
        ),
    )


#: The tools by name, built by the first call that needs them (a server answers ``tools/list`` from the
#: cached definitions without them); guarded by ``_table_lock``.
_table: dict[str, _Tool] | None = None
_table_lock = threading.Lock()


def _tool_table() -> dict[str, _Tool]:
    global _table
    with _table_lock:
        if _table is None:
            _table = {t.name: t for t in _build_tools()}
        return _table


# --------------------------------------------------------------------------- the public class


def _import_mcp() -> None:
    try:
        importlib.import_module("mcp")
    except ImportError as exc:
        raise RuntimeError(
            "the 'mcp' package is required for the MCP server; install codomyrmex-orchestration with its "
            "dependencies (pip install codomyrmex-orchestration)"
        ) from exc


class OrchestrationMCPTools:
    """The MCP tools over one engine.

    Args:
        engine: an ``OrchestrationEngine`` to use; or
        engine_factory: builds one on first use from the policy (the default uses the shared singleton
            configured from ``Settings``).
        policy: what the transport allows (code execution, private addresses).
        call_threads: worker threads for quick core calls (a dedicated ``CapacityLimiter``). Waits for
            long work take none: the work wakes the event loop when it ends.

    Raises:
        RuntimeError: the ``mcp`` package cannot be imported (no fallback: the server would be fake).
    """

    _MAX_TRACKED_TASKS = 10_000

    def __init__(
        self,
        engine: OrchestrationEngine | None = None,
        *,
        engine_factory: EngineFactory | None = None,
        policy: ServerPolicy | None = None,
        call_threads: int = 16,
    ) -> None:
        _import_mcp()
        self.policy = policy or ServerPolicy()
        self._engine = engine
        self._engine_factory = engine_factory
        self._engine_lock = threading.Lock()
        # The newest ids only: appending past the cap drops the oldest (no list shifted per call).
        self._tasks: deque[str] = deque(maxlen=self._MAX_TRACKED_TASKS)
        self._call_limiter = anyio.CapacityLimiter(call_threads)
        #: Reports the server's own health component (set by ``server.app.serve``).
        self.server_status: Callable[[], dict[str, Any]] | None = None
        #: Told each fresh health report (set by ``server.app.serve``: its health watch).
        self.health_observer: Callable[[HealthReport], None] | None = None

    # -- engine

    @property
    def engine(self) -> OrchestrationEngine:
        """The engine, built by the factory on first use (thread-safe)."""
        engine = self._engine
        if engine is None:
            with self._engine_lock:
                engine = self._engine
                if engine is None:
                    factory = self._engine_factory or default_engine_factory
                    engine = factory(self.policy)
                    apply_policy(engine.registry, self.policy)
                    self._engine = engine
        return engine

    @property
    def engine_started(self) -> bool:
        return self._engine is not None

    def _remember_task(self, task_id: str) -> None:
        with self._engine_lock:
            self._tasks.append(task_id)

    def cancel_running_tasks(self, reason: str = "the server is shutting down") -> int:
        """Cancel the single tasks this server started that are still running; returns how many.

        Workflow runs are cancelled (and stay resumable) by the engine's shutdown; single tasks are not.
        """
        with self._engine_lock:
            engine, task_ids = self._engine, self._tasks
            self._tasks = deque(maxlen=self._MAX_TRACKED_TASKS)
        if engine is None:
            return 0
        cancelled = 0
        for task_id in task_ids:
            try:
                cancelled += bool(engine.task_orchestrator.cancel_task(task_id, reason))
            except OrchestrationError:
                continue  # finished and evicted meanwhile
        return cancelled

    def close(self) -> None:
        """Cancel this server's running tasks and shut the engine down if this object built it."""
        self.cancel_running_tasks()
        with self._engine_lock:
            engine, self._engine = self._engine, None
        if engine is not None and self._engine_factory is not None:
            engine.shutdown()

    # -- catalogue

    @property
    def _tools(self) -> dict[str, _Tool]:
        return _tool_table()

    def tool_names(self) -> list[str]:
        return list(self._tools)

    def get_tool_definitions(self) -> list[dict[str, Any]]:
        """Per tool: name, title, description, inputSchema, outputSchema and annotations."""
        return [t.definition() for t in self._tools.values()]

    # -- calls

    def _prepare(self, name: str, arguments: Mapping[str, Any] | None) -> tuple[_Tool, BaseModel]:
        tool = self._tools.get(name)
        if tool is None:
            raise InvalidInputError(
                "name", f"unknown tool {name!r}; available tools: {', '.join(self._tools)}"
            )
        if arguments is not None and not isinstance(arguments, Mapping):
            raise InvalidInputError(
                "arguments", f"arguments must be a JSON object, not {type(arguments).__name__}"
            )
        try:
            return tool, tool.args.model_validate(dict(arguments or {}))
        except ValidationError as exc:
            also = self._workflow_problems(arguments or {}) if name == "create_workflow" else []
            raise _invalid_arguments(name, exc, tool.args, also) from None

    def _workflow_problems(self, arguments: Mapping[str, Any]) -> list[str]:
        """For a create_workflow call the schema refuses: what the graph, reference and action checks
        find over the steps that parse, as validate_workflow lists them, and what they could not check.
        Argument validation never starts the engine (it may be what fails): before it has started they
        are named as not run."""
        if not self.engine_started:
            return [
                "not checked: the graph, reference and action checks (the server's engine has not started "
                "yet); validate_workflow runs them with the schema's checks"
            ]
        from codomyrmex_orchestration.core._workflow_checks import graph_problems

        document = {key: value for key, value in arguments.items() if key in WorkflowSpec.model_fields}
        problems, unchecked = graph_problems(self.engine.workflow_manager.definitions, document)
        return problems + [f"not checked: {note}" for note in unchecked]

    @staticmethod
    def _render(result: BaseModel) -> ToolResult:
        # pydantic's JSON mode already gives JSON values (``fallback`` stringifies what it cannot), so no
        # second walk; the text is the same JSON on one line (the C encoder: indenting is pure Python).
        structured = redact(result.model_dump(mode="json", fallback=str))
        text = json.dumps(structured, ensure_ascii=False)
        if holds_lone_surrogate(text):
            # A path or file name the OS gave as bytes that are not UTF-8 (a data folder, a template's
            # file): shown with those bytes replaced, as no client could decode the reply otherwise.
            structured = readable_value(structured)
            text = json.dumps(structured, ensure_ascii=False)
        if len(text) > FULL_TEXT_CHARS:
            return _large_result(result, structured, text)
        return ToolResult(text=text, structured=structured)

    @staticmethod
    def _failure(name: str, exc: BaseException) -> ToolResult:
        if isinstance(exc, OrchestrationError):
            return ToolResult.error(readable(redact_text(str(exc))))
        ref = uuid.uuid4().hex[:12]
        log.error("tool.internal_error", tool=name, ref=ref, exc_info=exc)
        return ToolResult.error(f"internal error (ref {ref}); the server logged the details")

    def execute_tool(self, name: str, arguments: Mapping[str, Any] | None = None) -> ToolResult:
        """Validate ``arguments``, run tool ``name`` and return its result (never raises for tool errors).

        Long tools wait up to their ``timeout_seconds`` in the calling thread. Usable from plain Python.
        """
        try:
            tool, args = self._prepare(name, arguments)
            outcome = tool.run(self, args, _Call())
            if isinstance(outcome, _Pending):
                outcome = outcome.finished(outcome.wait(outcome.timeout))
            return self._render(outcome)
        except Exception as exc:
            return self._failure(name, exc)

    async def execute_tool_async(
        self,
        name: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        progress: ProgressReporter | None = None,
    ) -> ToolResult:
        """The server's door: like :meth:`execute_tool`, but the core runs off the event loop.

        A tool's body runs in a worker thread, except a tool that only submits work (``execute_task``),
        which is started on the loop once the engine exists; waits for scheduled work take no thread at
        all. Progress from core threads reaches ``progress`` through the event loop; when the awaiting
        task is cancelled (the client cancelled the request) the run or task is cancelled before
        re-raising. A wait's ``timeout_seconds`` counts from the call's arrival here, however long the
        call then waited for a worker thread to start the work.
        """
        arrived = time.monotonic()
        try:
            tool, args = self._prepare(name, arguments)
        except Exception as exc:
            return self._failure(name, exc)
        if progress is not None and tool.reports_progress:
            return await self._call_with_progress(name, tool, args, progress, arrived)
        try:
            if self.engine_started and tool.on_loop(args):
                outcome = tool.run(self, args, _Call())
            else:
                outcome = await anyio.to_thread.run_sync(
                    tool.run, self, args, _Call(), limiter=self._call_limiter
                )
            if isinstance(outcome, _Pending):
                outcome = await self._await_pending(outcome, arrived)
            return self._render(outcome)
        except Exception as exc:
            return self._failure(name, exc)

    async def await_run(self, run_id: str, timeout_seconds: float | None = None) -> ToolResult:
        """The handle of run ``run_id`` once it ends or waits on a person nobody is asking, waited for as
        ``respond_to_run`` waits after its answer (no thread; dropping the wait leaves the run going):
        for a call that has answered the run's questions some other way. ``timeout_seconds``: the
        tools' default when None."""
        arrived = time.monotonic()
        try:
            if timeout_seconds is None:
                timeout_seconds = m.DEFAULT_WAIT_SECONDS
            if not 0 < timeout_seconds <= m.MAX_WAIT_SECONDS:
                raise InvalidInputError(
                    "timeout_seconds", f"a number of seconds above 0 and at most {m.MAX_WAIT_SECONDS:g}"
                )
            manager = self.engine.workflow_manager
            record = await anyio.to_thread.run_sync(_read_run, manager, run_id, limiter=self._call_limiter)
            outcome = _run_pending(self, record, True, timeout_seconds, owns_run=False)
            if isinstance(outcome, _Pending):
                outcome = await self._await_pending(outcome, arrived)
            return self._render(outcome)
        except Exception as exc:
            return self._failure("respond_to_run", exc)

    async def _call_with_progress(
        self, name: str, tool: _Tool, args: BaseModel, progress: ProgressReporter, arrived: float
    ) -> ToolResult:
        token = anyio.lowlevel.current_token()
        sender, receiver = anyio.create_memory_object_stream[tuple[float, float | None, str | None]](math.inf)

        def report(done: float, total: float | None, message: str | None) -> None:
            def send() -> None:
                try:
                    sender.send_nowait((done, total, message))
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return  # the call is over: progress is optional

            _call_soon(token, send)

        async def pump() -> None:
            last = -math.inf
            async with receiver:
                async for done, total, message in receiver:
                    # Steps finishing together may queue out of order; progress must only increase.
                    if done > last:
                        last = done
                        try:
                            await progress(done, total, message)
                        except Exception as exc:  # a client gone away must not fail the call
                            log.debug("tool.progress_failed", tool=name, error=str(exc))

        outcome: Any = None
        failure: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            try:
                outcome = await anyio.to_thread.run_sync(
                    tool.run, self, args, _Call(progress=report), limiter=self._call_limiter
                )
                if isinstance(outcome, _Pending):
                    outcome = await self._await_pending(outcome, arrived)
            except Exception as exc:
                failure = exc
            finally:
                sender.close()
        if failure is not None:
            return self._failure(name, failure)
        try:
            return self._render(outcome)
        except Exception as exc:
            return self._failure(name, exc)

    async def _await_pending(self, pending: _Pending, arrived: float) -> BaseModel:
        """The result of ``pending`` once delivered, or as it stands at ``arrived`` (the call's
        ``time.monotonic()``) plus its timeout. No thread waits: a full pool cannot delay the deadline."""
        try:
            return pending.finished(await self._await_delivery(pending, arrived + pending.timeout))
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                try:
                    await anyio.to_thread.run_sync(pending.cancel, limiter=self._call_limiter)
                except Exception as exc:  # best effort: the request is gone
                    log.warning("tool.cancel_failed", error=str(exc))
            raise

    async def _await_delivery(self, pending: _Pending, deadline: float) -> BaseModel:
        """Wait on the loop for the work to deliver its result until ``deadline``: one wake-up."""
        try:
            # asyncio's own loop, not anyio's token for it: the token costs two running-loop lookups per
            # call, each a getpid() system call on Python 3.11.
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (trio): anyio's event and token
            result = await self._await_on_anyio(pending, deadline)
        else:
            result = await self._await_on_asyncio(loop, pending, deadline)
        if result is not None:
            return result
        if pending.in_thread:
            limiter = self._call_limiter
            return await anyio.to_thread.run_sync(pending.unfinished, pending.timeout, limiter=limiter)
        return pending.unfinished(pending.timeout)

    async def _subscribe(self, pending: _Pending, deliver: Callable[[BaseModel], None]) -> None:
        if pending.in_thread:
            await anyio.to_thread.run_sync(pending.subscribe, deliver, limiter=self._call_limiter)
        else:
            pending.subscribe(deliver)

    async def _await_on_asyncio(
        self, loop: asyncio.AbstractEventLoop, pending: _Pending, deadline: float
    ) -> BaseModel | None:
        """The wait with asyncio's own future and timer: the same wait for a fraction of the loop's work
        of an anyio Event inside a cancel scope (the server's loop does it at every call). A cancelled
        request cancels the await like any other (the caller cancels the work)."""
        arrived: asyncio.Future[BaseModel | None] = loop.create_future()

        def settle(result: BaseModel | None) -> None:
            if not arrived.done():
                arrived.set_result(result)

        def deliver(result: BaseModel) -> None:  # on the thread that finished the work
            try:
                loop.call_soon_threadsafe(settle, result)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return

        await self._subscribe(pending, deliver)
        # A timer, not a cancel scope: the wait's limit (asyncio's clock is time.monotonic()).
        timer = loop.call_later(max(0.0, deadline - time.monotonic()), settle, None)
        try:
            return await arrived
        finally:
            timer.cancel()

    async def _await_on_anyio(self, pending: _Pending, deadline: float) -> BaseModel | None:
        token = anyio.lowlevel.current_token()
        arrived = anyio.Event()
        delivered: list[BaseModel] = []

        def deliver(result: BaseModel) -> None:  # on the thread that finished the work
            delivered.append(result)
            _call_soon(token, arrived.set)

        await self._subscribe(pending, deliver)
        with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
            await arrived.wait()
        return delivered[0] if delivered else None


def _call_soon(token: anyio.lowlevel.EventLoopToken, fn: Callable[[], None]) -> None:
    """Run ``fn`` on the token's event loop soon, from any thread, without waiting for it (anyio's
    ``from_thread.run_sync`` would hold the calling worker until the loop got round to it)."""
    native: Any = token.native_token
    try:
        if isinstance(native, asyncio.AbstractEventLoop):
            native.call_soon_threadsafe(fn)
        else:  # trio's TrioToken
            native.run_sync_soon(fn)
    except RuntimeError:  # the loop is closed (trio: RunFinishedError): nobody is waiting any more
        return


def apply_policy(registry: ActionRegistry, policy: ServerPolicy) -> None:
    """Make every network or code-executing action of ``registry`` run with the policy's ``ctx.extras``
    defaults (e.g. ``block_private_addresses`` for ``http.request`` on network transports,
    ``python_call_allow`` for ``python.call``); a step cannot lift them."""
    from codomyrmex_orchestration.core.actions._policy import pin_extras  # with the engine, not at start

    pin_extras(registry, policy.action_extras)


def default_engine_factory(policy: ServerPolicy) -> OrchestrationEngine:
    """The process-wide engine (``configure_engine`` sets it up; see ``server.app.serve``)."""
    from codomyrmex_orchestration.compose import get_orchestration_engine

    return get_orchestration_engine()
