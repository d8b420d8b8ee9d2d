"""Approval steps at the server: ``core.approve`` questions put to the client that started the run through
MCP elicitation (``respond_to_run``, in ``tools.py``, answers them by hand).

:class:`Approvals` owns the server's event loop entry it last saw (where elicitations run as tasks of the
server's lifespan) and the engine it installed its broker on. Two ways to ask, by protocol era:

- 2025: a client still connected that declared form elicitation gets ``elicitation/create`` on its
  connection as soon as the question is asked (the broker); its answer settles the step.
- 2026-07-28 (no server-initiated requests): a call that waits on the run (``execute_workflow``,
  ``create_complex_workflow``, ``resume_workflow_run``, ``respond_to_run``) from a client that declared
  elicitation and finds it waiting for input returns an ``InputRequiredResult`` carrying the questions;
  the client's retry of that call carries the answers (:meth:`Approvals.answered`) and waits on.

Otherwise, or when asking fails, the question waits in the run for ``respond_to_run``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import anyio
import mcp_types as types
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from codomyrmex_orchestration.core._workflow_input import InputDesk
from codomyrmex_orchestration.core.models import InputRequest
from codomyrmex_orchestration.errors import OrchestrationError
from codomyrmex_orchestration.logs import get_logger
from codomyrmex_orchestration.server._notifications import NotificationHub, Peer, connection_of
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools, ToolResult, _call_soon

__all__ = ["Approvals"]

log = get_logger("codomyrmex_orchestration.server")

# Marks a call's request_state as ours: the run whose questions the retry answers follows it. Sealed with
# the call it was issued for (_request_state.py), so a retry's state reaching a handler is one we issued.
_STATE = "codomyrmex-approval:"
# Between a sub-run's id and its step in the key of the sub-run's question.
_SUB_RUN = "/"
# The calls that wait on a run and may end with it waiting for input.
_WAITING_TOOLS = frozenset(
    {"execute_workflow", "create_complex_workflow", "resume_workflow_run", "respond_to_run"}
)


def _key(run_id: str, question: dict[str, Any]) -> str:
    """The input request key of a question of run ``run_id`` (``pending_inputs`` entry): its step, or
    for a sub-run's question ``<sub-run id>/<step>`` (a step name never holds a slash)."""
    asker = question.get("run_id")
    return question["step"] if asker in (None, run_id) else f"{asker}{_SUB_RUN}{question['step']}"


def _takes_forms(connection: Any) -> bool:
    """Whether the client on ``connection`` declared form elicitation (an empty declaration means form)."""
    capabilities = connection.client_capabilities
    elicitation = capabilities.elicitation if capabilities is not None else None
    return elicitation is not None and not (elicitation.form is None and elicitation.url is not None)


def _answer_of(response: Any) -> tuple[str, dict[str, Any] | None]:
    """The action and content of one input response (an ``ElicitResult``, whatever model it parsed as)."""
    data = response.model_dump() if hasattr(response, "model_dump") else dict(response)
    return str(data.get("action", "")), data.get("content")


def _asks_forms(connection: Any) -> bool:
    """Whether the client on ``connection`` can be sent a form ``elicitation/create`` now (2025 era)."""
    modern = connection.protocol_version in MODERN_PROTOCOL_VERSIONS
    return bool(_takes_forms(connection) and not modern and connection.has_standalone_channel)


class Approvals:
    """Puts ``core.approve`` questions to the clients that started their runs.

    Args:
        tools: the server's tools (their engine, once started, gets the broker; their call limiter runs the
            answer into the core).
        hub: the notification hub, which knows the peer that started each run.
    """

    def __init__(self, tools: OrchestrationMCPTools, hub: NotificationHub) -> None:
        self._tools = tools
        self._hub = hub
        # Written on the event loop, read by core threads (a reference swap): the lifespan entry elicitations
        # run in, and the engine whose broker is installed.
        self._loop: Any = None
        self._engine: Any = None

    def watch(self, ctx: Any) -> None:
        """On each tool call (event loop): note the server's loop, install the broker on a started engine."""
        loop = ctx.lifespan_context
        if hasattr(loop, "tasks") and hasattr(loop, "token"):
            self._loop = loop
        if self._tools.engine_started and self._tools.engine is not self._engine:
            engine = self._engine = self._tools.engine
            engine.workflow_manager.inputs.broker = partial(self._broker, engine.workflow_manager.inputs)

    def _broker(
        self, inputs: InputDesk, run_id: str, step: str, question: InputRequest, client: str | None
    ) -> bool:
        """On a core thread, at once: schedule the elicitation if the run's starter is still connected and
        can be asked (False: the question waits for respond_to_run). A sub-run's question goes to whoever
        started its top-level run."""
        peer, loop = self._hub.owner(run_id) or self._hub.owner(inputs.root_of(run_id)), self._loop
        if peer is None or loop is None or not _asks_forms(peer.connection):
            return False
        ask = partial(self._ask, inputs, peer, run_id, step, question)
        _call_soon(loop.token, lambda: loop.tasks.start_soon(ask))
        return True

    async def answered(self, params: types.CallToolRequestParams) -> ToolResult | None:
        """For the retry of a call we answered with our questions: apply its answers to the run, then wait
        on the run like ``respond_to_run``. None for any other call."""
        state = params.request_state
        if not state or not state.startswith(_STATE):
            return None
        run_id = state[len(_STATE) :]
        answers = list((params.input_responses or {}).items())
        timeout = (params.arguments or {}).get("timeout_seconds")
        if not answers:
            return await self._tools.execute_tool_async("get_workflow_run", {"run_id": run_id})
        for key, response in answers:
            action, content = _answer_of(response)
            # Each question answered where it is asked (a sub-run's by its own id: the parent's would
            # find two sub-runs asking a step of one name), then the wait is on the run the call follows.
            asker, _, step = key.rpartition(_SUB_RUN)
            arguments: dict[str, Any] = {
                "run_id": asker or run_id,
                "step": step,
                "action": action,
                "wait": False,
            }
            if content is not None:
                arguments["content"] = content
            result = await self._tools.execute_tool_async("respond_to_run", arguments)
            if result.is_error:
                return await self._asked_again(run_id, step, result, params)
        if isinstance(timeout, int | float) and not isinstance(timeout, bool):
            return await self._tools.await_run(run_id, timeout)
        return await self._tools.await_run(run_id)

    async def _asked_again(
        self, run_id: str, step: str, refused: ToolResult, params: types.CallToolRequestParams
    ) -> ToolResult:
        """After ``refused`` (the answer to ``step`` did not fit its schema, or named no action), the run
        with that question still open and its message saying why, so that :meth:`input_required` asks it
        again (MRTR: missing information SHOULD be asked for again, not answered with an error). The
        refusal itself when the question is no longer open or the call will not ask (``wait: false``)."""
        run = await self._tools.execute_tool_async("get_workflow_run", {"run_id": run_id})
        record = run.structured or {}
        pending = record.get("pending_inputs") or []
        waits = (params.arguments or {}).get("wait", True) is not False
        if run.is_error or not waits or not any(q.get("step") == step for q in pending):
            return refused
        why = f" (the previous answer was refused: {refused.text})"
        pending = [{**q, "message": q["message"] + why} if q.get("step") == step else q for q in pending]
        return ToolResult(text=run.text, structured={**record, "pending_inputs": pending})

    def input_required(
        self, ctx: Any, params: types.CallToolRequestParams, result: ToolResult
    ) -> types.InputRequiredResult | None:
        """The questions of the run ``result`` shows waiting for input, for a 2026-07-28 client that takes
        them (it answers and retries the call); None when the result goes back as it is."""
        record = result.structured or {}
        pending = record.get("pending_inputs")
        if (
            params.name not in _WAITING_TOOLS
            or result.is_error
            or record.get("status") != "waiting_for_input"
            or not pending
            or (params.arguments or {}).get("wait", True) is False
            or not _takes_forms(connection := connection_of(ctx))
            or connection.protocol_version not in MODERN_PROTOCOL_VERSIONS
        ):
            return None
        run_id = record["run_id"]
        requests: dict[str, types.InputRequest] = {
            _key(run_id, q): types.ElicitRequest(
                params=types.ElicitRequestFormParams(
                    message=q["message"],
                    requested_schema=q["requested_schema"] or {"type": "object", "properties": {}},
                )
            )
            for q in pending
        }
        return types.InputRequiredResult(input_requests=requests, request_state=f"{_STATE}{run_id}")

    async def _ask(
        self, inputs: InputDesk, peer: Peer, run_id: str, step: str, question: InputRequest
    ) -> None:
        connection = peer.connection
        schema = question.requested_schema or {"type": "object", "properties": {}}
        request = types.ElicitRequest(
            params=types.ElicitRequestFormParams(message=question.message, requested_schema=schema)
        )
        try:
            result = await connection.send_request(request)
        except Exception as exc:  # gone, refused or an error answer: the question waits for respond_to_run
            log.info("approval.elicitation_failed", run_id=run_id, step=step, error=str(exc))
            await anyio.to_thread.run_sync(inputs.unattended, run_id, step, limiter=self._tools._call_limiter)
            return
        content = result.content if result.action == "accept" else None
        respond = partial(inputs.respond, run_id, step, result.action, content)
        try:
            await anyio.to_thread.run_sync(respond, limiter=self._tools._call_limiter)
        except OrchestrationError as exc:  # answered meanwhile, the run ended, or content off the schema
            log.info("approval.answer_refused", run_id=run_id, step=step, error=str(exc))
            await anyio.to_thread.run_sync(inputs.unattended, run_id, step, limiter=self._tools._call_limiter)
