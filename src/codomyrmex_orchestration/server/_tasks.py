"""MCP tasks (protocol 2025-11-25) over workflow runs and single tasks: a task-augmented ``tools/call``
answers at once with the task, ``tasks/get``, ``tasks/result``, ``tasks/list`` and ``tasks/cancel`` follow
it, and ``notifications/tasks/status`` tells the requesting client when its status changes. On 2026-07-28
the same tasks take the shape of the ``io.modelcontextprotocol/tasks`` extension (``resultType: "task"``,
``tasks/get`` carrying the result, ``tasks/cancel``) for a client that declares it. A client of an older
version is served no tasks (:func:`serves_tasks`).

A task follows a run (its id is the run id) or a single task (the scheduler's task id); while it is
working its status is read from that run or task, so ``get_workflow_run`` and the tasks API agree. Once it
ends (``completed``, ``failed``, ``cancelled``) it keeps that status and the result it ended with, as the
specification requires, even if its run is resumed later: ``tasks/get`` then says so, and the resumed run
is followed with ``get_workflow_run``, or as a task of its own (a resume called as a task gets a new task
id). The store keeps a record per task (``store.tool_tasks``: owner, time to live, the last status seen,
the result once ended), so a task answers after a restart. :class:`ToolTasks` owns the tasks this
process is following (the peer to notify, the last status sent) under ``_lock``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

import anyio
import anyio.to_thread
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS, is_version_at_least
from pydantic import BaseModel

from codomyrmex_orchestration.core.models import RunRecord
from codomyrmex_orchestration.errors import NotFoundError, OrchestrationError
from codomyrmex_orchestration.logs import get_logger
from codomyrmex_orchestration.server._notifications import NotificationHub, Peer
from codomyrmex_orchestration.server.tools import (
    OrchestrationMCPTools,
    _call_soon,
    _read_run,
    _run_handle,
    _task_result,
)

__all__ = [
    "CAPABILITY",
    "EXTENSION_ID",
    "LOCAL_OWNER",
    "OWNER_SCOPE_KEY",
    "RELATED_TASK",
    "TASK_TOOLS",
    "ToolTasks",
    "declare_task_support",
    "owner_of",
    "serves_tasks",
    "token_owner",
]

log = get_logger("codomyrmex_orchestration.server")

#: The tools a client may call as a task (``execution.taskSupport: "optional"``).
TASK_TOOLS = frozenset({"execute_workflow", "create_complex_workflow", "resume_workflow_run", "execute_task"})
_RUN_TOOLS = frozenset({"execute_workflow", "create_complex_workflow", "resume_workflow_run"})

#: What the server advertises on the 2025-era wire: tasks/list, tasks/cancel, task-augmented tools/call.
CAPABILITY = types.ServerTasksCapability(
    list=types.TasksListCapability(),
    cancel=types.TasksCancelCapability(),
    requests=types.ServerTasksRequestsCapability(
        tools=types.TasksToolsCapability(call=types.TasksCallCapability())
    ),
)

#: The protocol version that brought tasks (``capabilities.tasks``, ``tasks/*``); 2026-07-28 has them as
#: an extension, and the versions before have none.
TASKS_SINCE = "2025-11-25"

RELATED_TASK = "io.modelcontextprotocol/related-task"
#: The tasks extension of protocol 2026-07-28 (SEP-2663), advertised under ``capabilities.extensions``.
EXTENSION_ID = "io.modelcontextprotocol/tasks"

#: The owner of every task on a server without a token (see :func:`owner_of`).
LOCAL_OWNER = "local"
#: The ASGI scope key where the HTTP auth middleware leaves the verified token's :func:`token_owner`.
OWNER_SCOPE_KEY = "codomyrmex.task_owner"

#: Time to live when the client asks for none, and the most it may ask for (milliseconds from creation).
DEFAULT_TTL_MS = 24 * 3600 * 1000
MAX_TTL_MS = 7 * 24 * 3600 * 1000
#: How often a client should poll tasks/get (milliseconds).
POLL_INTERVAL_MS = 500
#: Tasks per tasks/list page.
PAGE_SIZE = 50
#: The longest tasks/result waits without reading its record again (seconds).
_WAIT_SLICE = 10.0
#: How long tasks/cancel waits for the cancelled work to stop (seconds).
_STOP_WAIT = 5.0
#: Expired records are deleted by the tasks/* requests, at most this often (seconds).
_SWEEP_EVERY = 30.0
#: The characters of a question a task's status message shows, and how many questions it names.
_QUESTION_CHARS = 120
_QUESTIONS_SHOWN = 3

Status = Literal["working", "input_required", "completed", "failed", "cancelled"]
_TERMINAL = frozenset({"completed", "failed", "cancelled"})
# The statuses of a run that ended (a resume starts from one of them).
_ENDED_RUN = frozenset({"completed", "failed", "cancelled", "interrupted"})
# Run statuses by their string values (a run waiting on a person is "waiting_for_input").
_RUN_STATUS: dict[str, Status] = {
    "pending": "working",
    "running": "working",
    "waiting_for_input": "input_required",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
    "interrupted": "failed",
}
_TASK_STATUS: dict[str, Status] = {
    "pending": "working",
    "ready": "working",
    "blocked": "working",
    "running": "working",
    "completed": "completed",
    "failed": "failed",
    "timed_out": "failed",
    "skipped": "failed",
    "cancelled": "cancelled",
}


def serves_tasks(version: str | None) -> bool:
    """Whether a client on protocol ``version`` is served tasks: 2025-11-25's own, or 2026-07-28's
    extension. Before 2025-11-25 there are none: the capability is not offered, ``tasks/*`` are unknown
    methods, and a ``task`` field on ``tools/call`` is ignored, as the specification requires of a
    receiver that does not declare the capability."""
    return version is not None and is_version_at_least(version, TASKS_SINCE)


def declare_task_support(tools: list[types.Tool]) -> list[types.Tool]:
    """``tools`` with ``execution.taskSupport: "optional"`` on the ones that may run as tasks."""
    optional = types.ToolExecution(task_support="optional")
    return [t.model_copy(update={"execution": optional}) if t.name in TASK_TOOLS else t for t in tools]


def token_owner(token: str) -> str:
    """The owner of the tasks created with bearer ``token``: a digest of the header as clients send it,
    ``Bearer <token>`` (the form the records of earlier versions, keyed on the raw header, mostly have)."""
    return "token-" + hashlib.sha256(f"Bearer {token}".encode()).hexdigest()[:32]


def owner_of(ctx: Any) -> str:
    """Who owns the tasks a request creates, and may read, await, cancel and list them: its
    authorization context. On HTTP with a token, the token :class:`~.app.BearerAuthMiddleware` verified
    (left in the request's ASGI scope, so a header spelled ``bearer`` or with more spaces is the same
    owner, and the same after a restart). Without a token there is none to bind a task to (stdio, or
    HTTP on loopback): every client of the server is one requestor, :data:`LOCAL_OWNER`, and a task id
    answers in any session and after a restart (an ``Authorization`` header nobody checks is ignored)."""
    scope = getattr(getattr(ctx, "request", None), "scope", None)
    owner = scope.get(OWNER_SCOPE_KEY) if isinstance(scope, Mapping) else None
    return owner if isinstance(owner, str) else LOCAL_OWNER


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def _wire(record: Mapping[str, Any]) -> dict[str, Any]:
    """The protocol's ``Task`` object for a record."""
    task: dict[str, Any] = {
        "taskId": record["task_id"],
        "status": record["status"],
        "createdAt": _iso(record["created_at"]),
        "lastUpdatedAt": _iso(record["updated_at"]),
        "ttl": record["ttl"],
        "pollInterval": POLL_INTERVAL_MS,
    }
    if record.get("message"):
        task["statusMessage"] = record["message"]
    return task


def _begun(record: Mapping[str, Any]) -> dict[str, Any]:
    """The task as a 2025-11-25 ``CreateTaskResult`` shows it: ``working``, as it was created (the spec:
    "Tasks MUST begin in the working status"), even when its work has already ended, failed to start or
    waits for a person by the time the answer leaves; ``tasks/get`` and ``notifications/tasks/status``
    tell where it stands now."""
    return {**record, "status": "working", "message": None, "updated_at": record["created_at"]}


def _wire_2026(record: Mapping[str, Any]) -> dict[str, Any]:
    """The tasks extension's ``Task`` (2026-07-28): ``ttlMs``/``pollIntervalMs``, and no
    ``input_required`` without input requests the client could answer (a person approves through
    the server's own tools), so a run waiting on one is ``working`` with a message naming the step, its
    question and respond_to_run (:func:`_waiting_message`)."""
    task = _wire(record)
    task["ttlMs"], task["pollIntervalMs"] = task.pop("ttl"), task.pop("pollInterval")
    if task["status"] == "input_required":
        task["status"] = "working"
    return task


def _detailed_2026(record: Mapping[str, Any], result: dict[str, Any] | None) -> dict[str, Any]:
    """The extension's ``DetailedTask``: a finished tool call is ``completed`` with its result, even an
    error result (``failed`` is for JSON-RPC errors: here, an interrupted run waiting to be resumed)."""
    task = _wire_2026(record)
    if record["status"] == "failed" and record.get("resumable"):
        return {**task, "error": {"code": types.INTERNAL_ERROR, "message": record["message"]}}
    if result is not None:
        return {**task, "status": "completed", "result": result}
    return task


def _declares_extension(ctx: Any) -> bool:
    capabilities = ctx.session.client_capabilities
    extensions = capabilities.extensions if capabilities is not None else None
    return extensions is not None and EXTENSION_ID in extensions


def _served(ctx: Any, method: str) -> None:
    if not serves_tasks(ctx.protocol_version):
        raise MCPError(
            code=types.METHOD_NOT_FOUND,
            message=f"{method} is not part of protocol {ctx.protocol_version} (tasks came with "
            f"{TASKS_SINCE}): follow a run with get_workflow_run",
            data=method,
        )


def _legacy_only(ctx: Any, method: str) -> None:
    _served(ctx, method)
    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        raise MCPError(
            code=types.METHOD_NOT_FOUND,
            message=f"{method} is not part of the tasks extension on {ctx.protocol_version}: poll tasks/get, "
            "whose answer carries the result once the task is completed",
            data=method,
        )


def _offered(initialized: Any) -> Any:
    """The ``initialize`` answer, without ``capabilities.tasks`` for a version before tasks (the SDK
    builds the answer's capabilities once, for every handshake version)."""
    if not isinstance(initialized, Mapping) or serves_tasks(initialized.get("protocolVersion")):
        return initialized
    capabilities = {k: v for k, v in initialized.get("capabilities", {}).items() if k != "tasks"}
    return {**initialized, "capabilities": capabilities}


async def _without_tasks(ctx: Any, call_next: Callable[[Any], Any]) -> Any:
    """A request on a version before tasks: ``tools/list`` without ``execution.taskSupport``, a
    ``tools/call`` without its ``task`` field (ignored, as the specification requires), the rest as is."""
    params = ctx.params
    if ctx.method == "tools/call" and isinstance(params, Mapping) and "task" in params:
        return await call_next(replace(ctx, params={k: v for k, v in params.items() if k != "task"}))
    answer = await call_next(ctx)
    if ctx.method == "tools/list" and isinstance(answer, Mapping) and "tools" in answer:
        tools = [{k: v for k, v in tool.items() if k != "execution"} for tool in answer["tools"]]
        return {**answer, "tools": tools}
    return answer


def _not_found(task_id: str) -> MCPError:
    return MCPError(
        code=types.INVALID_PARAMS, message=f"task {task_id!r} not found", data={"taskId": task_id}
    )


def _steps_message(run: RunRecord) -> str:
    """How many steps completed, and how many ended otherwise, by how: "1 of 2 steps completed, 1
    cancelled" (a step still pending or running is in the total only)."""
    ended = Counter(step.status.value for step in run.steps.values() if step.status.is_terminal)
    completed = ended.pop("completed", 0)
    others = "".join(f", {n} {status.replace('_', ' ')}" for status, n in sorted(ended.items()))
    return f"{completed} of {len(run.steps)} steps completed{others}"


def _waiting_message(run: RunRecord) -> str:
    """What a run waiting for a person waits on, and how to answer: "step 'approve' waits for a person:
    'Deploy?'; answer with respond_to_run (run_id '...')". Each question cut to :data:`_QUESTION_CHARS`,
    the first :data:`_QUESTIONS_SHOWN` named (get_workflow_run's pending_inputs lists them all)."""
    questions = run.pending_inputs
    if not questions:
        return _steps_message(run)
    parts = []
    for q in questions[:_QUESTIONS_SHOWN]:
        text = q.message if len(q.message) <= _QUESTION_CHARS else q.message[: _QUESTION_CHARS - 1] + "…"
        sub = f" of sub-run {q.run_id}" if q.run_id not in (None, run.run_id) else ""
        parts.append(f"step {q.step!r}{sub} waits for a person: {text!r}")
    if len(questions) > _QUESTIONS_SHOWN:
        parts.append(f"{len(questions) - _QUESTIONS_SHOWN} more questions wait")
    return (
        "; ".join(parts) + f"; answer with respond_to_run (run_id {run.run_id!r}; get_workflow_run lists "
        "pending_inputs with each question's schema)"
    )


def _moved_on(record: Mapping[str, Any], run: RunRecord) -> str | None:
    """What an ended run task adds to its message when its run's record is no longer the one the task
    ended with (the run was resumed since, or was still stopping when the task was cancelled), or None."""
    ended = (record.get("result") or {}).get("structuredContent") or {}
    finished = ended.get("finished_at")
    ended_at = datetime.fromisoformat(finished) if isinstance(finished, str) else None
    if (ended.get("status"), ended_at) == (run.status.value, run.finished_at):
        return None
    how = "was resumed" if ended.get("status") in _ENDED_RUN else "went on"
    return (
        f"the run {how} after this task ended (it is {run.status.value} now): follow it with "
        f"get_workflow_run (run_id {run.run_id!r}), or resume it as a task of its own"
    )


@dataclass(eq=False)
class _Live:
    """A task this process follows: whom to notify, on which loop, the status last announced, and the
    run or task it follows."""

    peer: Peer | None
    token: anyio.lowlevel.EventLoopToken
    spawn: Callable[..., Any]
    status: str
    target: str


class ToolTasks:
    """The tasks of one server: created by a middleware on ``tools/call``, served by the ``tasks/*``
    handlers :meth:`install` registers.

    Args:
        tools: the server's tools (their engine holds the runs, tasks and the store).
        hub: the notification hub (its peers reach the 2025-era clients).
    """

    def __init__(self, tools: OrchestrationMCPTools, hub: NotificationHub) -> None:
        self._tools = tools
        self._hub = hub
        self._lock = threading.Lock()
        # Guarded by _lock: the tasks this process follows (and their ids by the run or task each
        # follows), and the engine whose run events it hears.
        self._live: dict[str, _Live] = {}
        self._following: dict[str, set[str]] = {}
        self._engine: Any = None
        self._next_sweep = 0.0  # time.monotonic() of the next deletion of expired records

    def install(self, server: Server[Any]) -> None:
        """Wrap ``tools/call`` and serve ``tasks/get``, ``tasks/result``, ``tasks/list``, ``tasks/cancel``."""
        server.middleware.append(self._middleware)
        server.add_request_handler("tasks/get", types.GetTaskRequestParams, self._on_get)
        server.add_request_handler("tasks/result", types.GetTaskPayloadRequestParams, self._on_result)
        server.add_request_handler("tasks/list", types.PaginatedRequestParams, self._on_list)
        server.add_request_handler("tasks/cancel", types.CancelTaskRequestParams, self._on_cancel)
        server.add_request_handler("tasks/update", types.GetTaskRequestParams, self._on_update)
        server.extensions[EXTENSION_ID] = {}

    # -- creation

    async def _middleware(self, ctx: Any, call_next: Callable[[Any], Any]) -> Any:
        params = ctx.params
        if ctx.method == "initialize":
            return _offered(await call_next(ctx))
        if not serves_tasks(ctx.protocol_version):
            return await _without_tasks(ctx, call_next)
        if ctx.method != "tools/call" or not isinstance(params, Mapping):
            return await call_next(ctx)
        modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
        if modern:
            # 2026-07-28: the server decides; the long-work tools answer with a task to a client that
            # declares the tasks extension on the request.
            if params.get("name") not in TASK_TOOLS or not _declares_extension(ctx):
                return await call_next(ctx)
        elif params.get("task") is None:
            return await call_next(ctx)
        elif not isinstance(params["task"], Mapping):
            # What the SDK's own validation of TaskMetadata would say, had the call reached it.
            raise MCPError(
                code=types.INVALID_PARAMS,
                message=f"'task' must be an object (TaskMetadata, e.g. {{}} or {{\"ttl\": 60000}}), "
                f"got {json.dumps(params['task'])}",
                data={"field": "task"},
            )
        name = params.get("name")
        if name not in TASK_TOOLS:
            if name not in self._tools.tool_names():
                return await call_next(ctx)  # the call reports the unknown tool, as without a task
            raise MCPError(
                code=types.METHOD_NOT_FOUND,
                message=f"tool {name!r} cannot run as a task (its execution.taskSupport is forbidden): call "
                f"it without 'task'; these tools can: {', '.join(sorted(TASK_TOOLS))}",
                data={"tool": name},
            )
        try:
            ttl = self._ttl(params.get("task"))
        except ValueError as exc:
            raise MCPError(code=types.INVALID_PARAMS, message=str(exc), data={"field": "task.ttl"}) from None
        arguments = params.get("arguments")
        if isinstance(arguments, Mapping):
            # The call starts the work and answers with its handle; the task follows it from there on.
            arguments = {**arguments, "wait": False}
        plain = {key: value for key, value in params.items() if key != "task"}
        started = await call_next(replace(ctx, params={**plain, "arguments": arguments}))
        if modern and started.get("isError"):
            return started  # it did not start: the server makes no task of it (the extension's choice)
        record = await self._created(ctx, str(name), started, ttl)
        if modern:
            answer = {**_wire_2026(record), "resultType": "task"}
            return answer | ({"_meta": started["_meta"]} if started.get("_meta") else {})  # serverInfo
        return {"task": _wire(_begun(record))}

    @staticmethod
    def _ttl(task: Any) -> int:
        requested = task.get("ttl") if isinstance(task, Mapping) else None
        if requested is None:
            return DEFAULT_TTL_MS
        if not isinstance(requested, int) or isinstance(requested, bool) or requested <= 0:
            raise ValueError(f"task.ttl must be a positive number of milliseconds, got {requested!r}")
        return min(requested, MAX_TTL_MS)

    async def _created(self, ctx: Any, name: str, started: Mapping[str, Any], ttl: int) -> dict[str, Any]:
        structured = started.get("structuredContent")
        now = time.time()
        record: dict[str, Any] = {
            "owner": owner_of(ctx),
            "tool": name,
            "ttl": ttl,
            "created_at": now,
            "updated_at": now,
            "expires_at": now + ttl / 1000,
            "message": None,
            "result": None,
            "resumable": False,
        }
        if started.get("isError") or not isinstance(structured, Mapping):
            # It did not start: the task, working as it began, fails at once (a status change, so its
            # time is later than the creation's), and its result is the error the call returned.
            text = " ".join(c.get("text", "") for c in started.get("content", []) if isinstance(c, Mapping))
            record |= {"task_id": uuid.uuid4().hex, "kind": "none", "target": None, "status": "failed"}
            record |= {"message": text or None, "result": dict(started)}
            record["updated_at"] = max(time.time(), now + 1e-6)
        elif name in _RUN_TOOLS:
            record |= {"task_id": structured["run_id"], "kind": "run", "target": structured["run_id"]}
            record["status"] = "working"
        else:
            record |= {"task_id": structured["task_id"], "kind": "task", "target": structured["task_id"]}
            record["status"] = "working"
        record = await self._core(self._save_new, record)
        if record["kind"] != "none":
            self._follow(ctx, record)
            self._announce_soon(record["task_id"])  # it may have ended before it was followed
        return record

    def _save_new(self, record: dict[str, Any]) -> dict[str, Any]:
        store = self._store()
        previous = store.get(record["task_id"])
        if previous is not None:  # a resume of a run that has a task already
            previous = self._refresh(previous)
            if previous["status"] in _TERMINAL:
                # That task ended, and keeps how it ended: the resumed run is a task of its own.
                record["task_id"] = uuid.uuid4().hex
            else:  # it never ended (its run was resumed before it was seen to end): it goes on
                record["created_at"] = previous["created_at"]
                # The time to live counts from creation: the task lives the ttl asked for from now on.
                record["ttl"] = round((record["expires_at"] - record["created_at"]) * 1000)
        store.save(record)
        return self._refresh(record)

    def _follow(self, ctx: Any, record: Mapping[str, Any]) -> None:
        loop = ctx.lifespan_context
        spawn = getattr(getattr(loop, "tasks", None), "start_soon", None)
        if spawn is None:
            return  # no lifespan task group (a bare server): nobody to notify
        task_id, target = record["task_id"], record["target"]
        live = _Live(self._hub.peer(ctx), anyio.lowlevel.current_token(), spawn, "working", target)
        with self._lock:
            self._live[task_id] = live
            self._following.setdefault(target, set()).add(task_id)
            engine = self._tools.engine if self._tools.engine_started else None
            listen = engine is not None and engine is not self._engine
            if listen:
                self._engine = engine
        if engine is not None and listen:
            engine.workflow_manager.add_listener(self._on_run_event)
        if record["kind"] == "task":
            task_id = record["task_id"]
            engine = self._tools.engine
            engine.task_orchestrator.on_settled(task_id, lambda final: self._announce_soon(task_id))

    # -- status

    def _store(self) -> Any:
        return self._tools.engine.store.tool_tasks

    def _sweep(self) -> Any:
        """The store, after deleting the expired records (at most once per ``_SWEEP_EVERY``). Core thread."""
        store = self._store()
        now = time.monotonic()
        with self._lock:
            due = now >= self._next_sweep
            if due:
                self._next_sweep = now + _SWEEP_EVERY
        if due:
            store.delete_expired(time.time())
        return store

    def _refresh(self, record: dict[str, Any]) -> dict[str, Any]:
        """``record`` with the status of its run or task now; saved when that changed. A task that has
        ended keeps its status, message and result (a terminal status never changes). Core thread."""
        if record["kind"] == "none" or record["status"] in _TERMINAL:
            return record
        status, message, resumable, outcome = self._status_now(record)
        if (status, message, resumable) != (record["status"], record["message"], record.get("resumable")):
            record = {**record, "status": status, "message": message, "resumable": resumable}
            record["updated_at"] = time.time()
            if status in _TERMINAL:
                # What it ended with, read with its status: tasks/result returns it from now on, even
                # after the run is resumed (the run's record then changes, the task's does not).
                record["result"] = self._rendered(outcome, message)
            self._store().save(record)
        return record

    def _status_now(self, record: Mapping[str, Any]) -> tuple[str, str | None, bool, BaseModel | None]:
        """The status, message and resumability the task's run or task has now, and its outcome (the
        plain call's answer: None when the run or task is gone)."""
        engine = self._tools.engine
        if record["kind"] == "run":
            try:
                run = _read_run(engine.workflow_manager, record["target"])
            except NotFoundError:
                return "failed", "the run's record is gone (removed by retention)", False, None
            mapped = _RUN_STATUS.get(run.status.value, "working")
            outcome = _run_handle(run, None) if mapped in _TERMINAL else None
            if run.status.value == "interrupted":
                return (
                    "failed",
                    "the server stopped while the run was going on (it is interrupted): call "
                    f"resume_workflow_run with run_id {run.run_id!r} to continue from its completed steps, "
                    "then follow the run with get_workflow_run (or resume it as a task of its own)",
                    True,
                    outcome,
                )
            if mapped == "working":
                return mapped, _steps_message(run), False, None
            if mapped == "input_required":
                return mapped, _waiting_message(run), False, None
            return mapped, run.error if mapped == "failed" else _steps_message(run), False, outcome
        try:
            task = engine.task_orchestrator.get_task(record["target"])
        except NotFoundError:
            return (
                "failed",
                "the server restarted before the task ended (single tasks do not survive it)",
                False,
                None,
            )
        mapped = _TASK_STATUS.get(task.status.value, "working")
        message = task.error.message if mapped == "failed" and task.error else None
        return mapped, message, False, _task_result(task, None) if mapped in _TERMINAL else None

    def _rendered(self, outcome: BaseModel | None, message: str | None) -> dict[str, Any]:
        """``outcome`` as the ``CallToolResult`` the wire has; with none (the run or task is gone), an
        error result saying ``message``."""
        if outcome is None:
            result = types.CallToolResult(content=[types.TextContent(text=message or "")], is_error=True)
        else:
            rendered = self._tools._render(outcome)
            result = types.CallToolResult(
                content=[types.TextContent(text=rendered.text)],
                structured_content=rendered.structured,
                is_error=rendered.is_error,
            )
        return result.model_dump(by_alias=True, mode="json", exclude_none=True)

    def _final_result(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The ``CallToolResult`` the call would have returned without a task, as the wire has it: the
        one kept when the task ended (a record from before results were kept: read now)."""
        if record.get("result") is not None:
            return dict(record["result"])
        engine = self._tools.engine
        outcome: Any
        if record["kind"] == "run":
            outcome = _run_handle(_read_run(engine.workflow_manager, record["target"]), None)
        else:
            outcome = _task_result(engine.task_orchestrator.get_task(record["target"]), None)
        return self._rendered(outcome, None)

    def _with_news(self, record: dict[str, Any]) -> dict[str, Any]:
        """An ended run task as tasks/get shows it: its message says so if the run was resumed since."""
        if record["kind"] != "run" or record["status"] not in _TERMINAL:
            return record
        try:
            news = _moved_on(record, _read_run(self._tools.engine.workflow_manager, record["target"]))
        except NotFoundError:
            return record
        if news is None:
            return record
        return {**record, "message": f"{record['message']}; {news}" if record["message"] else news}

    def _on_run_event(self, event: str, payload: dict[str, Any]) -> None:
        """The workflow manager's listener (core threads, short): a followed run's status may change."""
        run_id = payload.get("run_id")
        # Run events only (a step's end changes no task status; reading the run at each one would cost
        # a snapshot per step), and whatever says a run waits for a person.
        if isinstance(run_id, str) and (event.startswith("run.") or "waiting" in event):
            with self._lock:
                task_ids = list(self._following.get(run_id, ()))
            for task_id in task_ids:
                self._announce_soon(task_id)

    def _announce_soon(self, task_id: str) -> None:
        with self._lock:
            live = self._live.get(task_id)
        if live is None:
            return

        def spawn() -> None:
            try:
                live.spawn(self._announce, task_id)
            except RuntimeError:  # the server's task group has closed: nobody left to tell
                return

        _call_soon(live.token, spawn)

    async def _announce(self, task_id: str) -> None:
        """Read the task's status; if it changed, tell the client that created it."""
        try:
            record = await self._core(self._load_refreshed, task_id)
        except Exception as exc:  # a store or engine gone away: the status is read again on tasks/get
            log.warning("task.status_failed", task_id=task_id, error=str(exc))
            return
        with self._lock:
            live = self._live.get(task_id)
            if live is None or record is None or record["status"] == live.status:
                return
            live.status = record["status"]
            if record["status"] in _TERMINAL:
                del self._live[task_id]
                following = self._following.get(live.target, set())
                following.discard(task_id)
                if not following:
                    self._following.pop(live.target, None)
        if live.peer is not None:
            params = _wire(record)
            await live.peer.connection.notify("notifications/tasks/status", params)

    def _load_refreshed(self, task_id: str) -> dict[str, Any] | None:
        record = self._store().get(task_id)
        return self._refresh(record) if record is not None else None

    # -- the tasks/* requests

    async def _core(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._tools._call_limiter)

    async def _owned(self, ctx: Any, task_id: str) -> dict[str, Any]:
        owner = owner_of(ctx)

        def load() -> dict[str, Any] | None:
            store = self._sweep()
            record = store.get(task_id)
            if record is None or record["owner"] != owner:
                return None
            return self._refresh(record)

        record: dict[str, Any] | None = await self._core(load)
        if record is None:
            raise _not_found(task_id)  # another client's task is not found either
        return record

    async def _on_get(self, ctx: Any, params: types.GetTaskRequestParams) -> dict[str, Any]:
        _served(ctx, "tasks/get")
        record = await self._core(self._with_news, await self._owned(ctx, params.task_id))
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            return _wire(record)
        finished = record["status"] in ("completed", "failed") and not record.get("resumable")
        result = await self._core(self._final_result, record) if finished else None
        return _detailed_2026(record, result)

    async def _on_update(self, ctx: Any, params: types.GetTaskRequestParams) -> dict[str, Any]:
        _served(ctx, "tasks/update")
        record = await self._owned(ctx, params.task_id)
        raise MCPError(
            code=types.INVALID_PARAMS,
            message=f"task {record['task_id']!r} asks for no input: a step waiting for a person is "
            "answered through this server's tools",
            data={"taskId": record["task_id"]},
        )

    async def _on_result(self, ctx: Any, params: types.GetTaskPayloadRequestParams) -> dict[str, Any]:
        _legacy_only(ctx, "tasks/result")
        record = await self._owned(ctx, params.task_id)
        if record["status"] not in _TERMINAL:
            # No thread waits: the run or task wakes this request when it ends. The record is read
            # again then, and at least once a slice (tasks/cancel or its time to live may end it first).
            token, ended = anyio.lowlevel.current_token(), anyio.Event()
            await self._core(self._on_end, record, partial(_call_soon, token, ended.set))
            while record["status"] not in _TERMINAL:
                with anyio.move_on_after(_WAIT_SLICE):
                    await ended.wait()
                if ended.is_set():  # it ended: the record says so now (else, from now on, a slice each)
                    ended = anyio.Event()
                record = await self._owned(ctx, params.task_id)
        try:
            result = await self._core(self._final_result, record)
        except OrchestrationError as exc:
            raise MCPError(code=types.INTERNAL_ERROR, message=f"the task's result is gone: {exc}") from None
        meta = dict(result.get("_meta") or {})
        meta[RELATED_TASK] = {"taskId": record["task_id"]}
        return {**result, "_meta": meta}

    def _on_end(self, record: Mapping[str, Any], callback: Callable[[], None]) -> None:
        """``callback()`` once the task's run or task ends (at once if it has, or is gone). Core thread."""
        engine, target = self._tools.engine, record["target"]
        try:
            if record["kind"] == "run":
                engine.workflow_manager.inputs.on_stop(target, lambda _: callback(), questions=False)
            else:
                engine.task_orchestrator.on_settled(target, lambda _: callback())
        except NotFoundError:
            callback()

    async def _on_list(self, ctx: Any, params: types.PaginatedRequestParams) -> dict[str, Any]:
        _legacy_only(ctx, "tasks/list")
        owner = owner_of(ctx)
        after = _read_cursor(params.cursor)

        def page() -> list[dict[str, Any]]:
            store = self._sweep()
            return [self._refresh(r) for r in store.page(owner, after=after, limit=PAGE_SIZE + 1)]

        records = await self._core(page)
        result: dict[str, Any] = {"tasks": [_wire(r) for r in records[:PAGE_SIZE]]}
        if len(records) > PAGE_SIZE:
            last = records[PAGE_SIZE - 1]
            result["nextCursor"] = _make_cursor(last["created_at"], last["task_id"])
        return result

    async def _on_cancel(self, ctx: Any, params: types.CancelTaskRequestParams) -> dict[str, Any]:
        _served(ctx, "tasks/cancel")
        record = await self._owned(ctx, params.task_id)
        if record["status"] in _TERMINAL:
            raise MCPError(
                code=types.INVALID_PARAMS,
                message=f"task {record['task_id']!r} is already {record['status']}: only a working or "
                "input_required task can be cancelled",
                data={"taskId": record["task_id"], "status": record["status"]},
            )
        # Cancelled, then a bounded wait for it to stop (so that tasks/result reads the final record)
        # that holds no thread: the run or task wakes this request when it has stopped.
        token, stopped = anyio.lowlevel.current_token(), anyio.Event()
        await self._core(self._stop, record, partial(_call_soon, token, stopped.set))
        with anyio.move_on_after(_STOP_WAIT):
            await stopped.wait()
        record = await self._core(self._cancelled, record)
        self._announce_soon(record["task_id"])
        # 2026-07-28: an empty acknowledgement (the status is read with tasks/get).
        return {} if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS else _wire(record)

    def _stop(self, record: Mapping[str, Any], callback: Callable[[], None]) -> None:
        """Cancel the task's run or task; ``callback()`` once it has stopped. Core thread."""
        engine, target = self._tools.engine, record["target"]
        if record["kind"] == "run":
            manager = engine.workflow_manager
            manager.request_cancel(target)
            manager.on_settled(target, lambda _: callback())
        else:
            engine.task_orchestrator.cancel_task(target, "cancelled by tasks/cancel")
            engine.task_orchestrator.on_settled(target, lambda _: callback())

    def _cancelled(self, record: dict[str, Any]) -> dict[str, Any]:
        """The task's record as cancelled, with the result its run or task has now, saved. Core thread."""
        message = "cancelled by tasks/cancel"
        record = {**record, "status": "cancelled", "message": message, "resumable": False}
        record["updated_at"] = time.time()
        try:  # what it ended with, kept (see _refresh)
            record["result"] = self._final_result({**record, "result": None})
        except NotFoundError:
            record["result"] = self._rendered(None, message)
        self._store().save(record)
        return record


def _make_cursor(created_at: float, task_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at!r} {task_id}".encode()).decode()


def _read_cursor(cursor: str | None) -> tuple[float, str] | None:
    if cursor is None:
        return None
    try:
        created, _, task_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition(" ")
        return float(created), task_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise MCPError(
            code=types.INVALID_PARAMS,
            message="invalid cursor: pass the nextCursor of a previous tasks/list answer",
            data={"cursor": cursor},
        ) from None
