"""MCP tasks from the Python SDK's ``Client``, which has no helpers for them.

Protocol 2025-11-25: a task-augmented ``tools/call`` as a raw request (its answer, a ``CreateTaskResult``,
is not the ``CallToolResult`` the Client's ``call_tool`` validates against), ``tasks/*`` through
``send_request`` with the SDK's own request types, and a notification binding that collects
``notifications/tasks/status``. Protocol 2026-07-28: the tasks extension as a client extension whose
result claim resolves a task handle into the tool's result."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import anyio
import mcp_types as types
from mcp import Client
from mcp.client.extension import ClaimContext, ClientExtension, NotificationBinding, ResultClaim

WAIT = 30


async def call_as_task(
    client: Client, name: str, arguments: dict[str, Any], *, ttl: int | None = None
) -> dict[str, Any]:
    """``tools/call`` with ``task``; the ``task`` object of the answer."""
    task: dict[str, Any] = {} if ttl is None else {"ttl": ttl}
    params = {"name": name, "arguments": arguments, "task": task}
    # The SDK's public send_request validates a tools/call answer as a CallToolResult, which a
    # CreateTaskResult is not: the raw request goes through the session's dispatcher.
    dispatcher = client.session._dispatcher
    with anyio.fail_after(WAIT):
        answer = await dispatcher.send_raw_request("tools/call", params, {})
    types.CreateTaskResult.model_validate(answer)
    task_object: dict[str, Any] = answer["task"]
    return task_object


async def get_task(client: Client, task_id: str) -> types.GetTaskResult:
    request = types.GetTaskRequest(params=types.GetTaskRequestParams(task_id=task_id))
    with anyio.fail_after(WAIT):
        return await client.session.send_request(request, types.GetTaskResult)


async def task_result(client: Client, task_id: str, wait: float = WAIT) -> types.CallToolResult:
    request = types.GetTaskPayloadRequest(params=types.GetTaskPayloadRequestParams(task_id=task_id))
    with anyio.fail_after(wait):
        return await client.session.send_request(request, types.CallToolResult)


async def list_tasks(client: Client, cursor: str | None = None) -> types.ListTasksResult:
    request = types.ListTasksRequest(params=types.PaginatedRequestParams(cursor=cursor))
    with anyio.fail_after(WAIT):
        return await client.session.send_request(request, types.ListTasksResult)


async def cancel_task(client: Client, task_id: str) -> types.CancelTaskResult:
    request = types.CancelTaskRequest(params=types.CancelTaskRequestParams(task_id=task_id))
    with anyio.fail_after(WAIT):
        return await client.session.send_request(request, types.CancelTaskResult)


class TaskStatuses(ClientExtension):
    """Collects ``notifications/tasks/status`` (a 2025-11-25 notification the Client does not route by
    itself: it reaches a binding), with a bounded wait for one that matches."""

    identifier = "dev.codomyrmex.tests/task-status"

    def __init__(self) -> None:
        self.seen: list[types.TaskStatusNotificationParams] = []
        self._arrived = anyio.Event()

    def notifications(self) -> Sequence[NotificationBinding[Any]]:
        return [
            NotificationBinding(
                method="notifications/tasks/status",
                params_type=types.TaskStatusNotificationParams,
                handler=self._on_status,
            )
        ]

    async def _on_status(self, params: types.TaskStatusNotificationParams) -> None:
        self.seen.append(params)
        self._arrived.set()

    async def expect(self, task_id: str, status: str) -> types.TaskStatusNotificationParams:
        with anyio.fail_after(WAIT):
            while True:
                for params in self.seen:
                    if params.task_id == task_id and params.status == status:
                        return params
                self._arrived = anyio.Event()
                await self._arrived.wait()


# --------------------------------------------------------------------------- 2026-07-28: the extension


class TaskHandle(types.Result):
    """The tasks extension's ``CreateTaskResult`` (``resultType: "task"``), which the SDK does not type."""

    result_type: Literal["task"] = "task"  # type: ignore[assignment]  # the claim's discriminator
    task_id: str
    status: str
    status_message: str | None = None
    created_at: str
    last_updated_at: str
    ttl_ms: int | None
    poll_interval_ms: int | None = None


class DetailedTask(types.Result):
    """The extension's ``tasks/get`` answer: the task, with its result once completed."""

    task_id: str
    status: str
    status_message: str | None = None
    ttl_ms: int | None
    poll_interval_ms: int | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class TasksExtension(ClientExtension):
    """A client of the tasks extension (``io.modelcontextprotocol/tasks``) through the SDK's own seams:
    declared on every request, it claims ``resultType: "task"`` answers of ``tools/call`` and resolves
    them by polling ``tasks/get`` at the server's ``pollIntervalMs`` (the extension has no blocking
    request: polling is its protocol), so ``call_tool`` returns the tool's result as usual."""

    identifier = "io.modelcontextprotocol/tasks"

    def __init__(self) -> None:
        self.handles: list[TaskHandle] = []
        self.polled: list[DetailedTask] = []

    def claims(self) -> Sequence[ResultClaim[Any]]:
        return [ResultClaim(result_type="task", model=TaskHandle, resolve=self._resolve)]

    async def _resolve(self, handle: TaskHandle, ctx: ClaimContext) -> types.CallToolResult:
        self.handles.append(handle)
        with anyio.fail_after(WAIT):
            while True:
                detail = await get_detailed(ctx.session, handle.task_id)
                self.polled.append(detail)
                if detail.result is not None:
                    return types.CallToolResult.model_validate(detail.result)
                if detail.status != "working":
                    raise RuntimeError(f"task {handle.task_id} ended {detail.status}: {detail.error}")
                await anyio.sleep((detail.poll_interval_ms or 500) / 1000)


async def get_detailed(session: Any, task_id: str) -> DetailedTask:
    request = types.GetTaskRequest(params=types.GetTaskRequestParams(task_id=task_id))
    with anyio.fail_after(WAIT):
        detail: DetailedTask = await session.send_request(request, DetailedTask)
    return detail
