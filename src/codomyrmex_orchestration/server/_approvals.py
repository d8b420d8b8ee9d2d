"""Approval steps at the server: ``core.approve`` questions put to the client that started the run through
MCP elicitation (``respond_to_run``, in ``tools.py``, answers them by hand).

:class:`Approvals` owns the server's event loop entry it last saw (where elicitations run as tasks of the
server's lifespan), the engine it installed its broker on, and under ``_lock`` the 2025-era calls waiting
on runs (per connection) and why the answers to a question no longer asked were refused. Two ways to
ask, by protocol era:

- 2025: a client still connected that declared form elicitation gets ``elicitation/create`` as soon as
  the question is asked (the broker): related to a call of its that waits on a run, so that on
  streamable HTTP it rides that call's POST stream; with no such call, on the connection's own channel
  where it always has one (stdio, SSE; a streamable HTTP session's needs a GET stream the server cannot
  see, so there it is not asked). Each request has a deadline; an answer that does not fit the
  schema is asked again with the reason, up to :data:`ASKS` times. Its answer settles the step.
- 2026-07-28 (no server-initiated requests): a call that waits on the run (``execute_workflow``,
  ``create_complex_workflow``, ``resume_workflow_run``, ``respond_to_run``) from a client that declared
  elicitation and finds it waiting for input returns an ``InputRequiredResult`` carrying the questions;
  the client's retry of that call carries the answers (:meth:`Approvals.answered`) and waits on.

Otherwise, or when asking fails, the question waits in the run for ``respond_to_run``.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import mcp_types as types
from mcp.shared.message import ServerMessageMetadata
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from codomyrmex_orchestration.core._workflow_input import InputDesk
from codomyrmex_orchestration.core.models import InputRequest
from codomyrmex_orchestration.errors import InvalidInputError, OrchestrationError
from codomyrmex_orchestration.logs import get_logger
from codomyrmex_orchestration.server._notifications import NotificationHub, Peer, connection_of
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools, ToolResult, _call_soon

__all__ = ["ASKS", "ASK_SECONDS", "Approvals"]

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
#: How often one question is put to a 2025-era client whose answers do not fit its schema; then it waits
#: for respond_to_run, and the run's note says why.
ASKS = 3
#: The longest one ``elicitation/create`` waits for its answer (seconds); a question with an earlier
#: deadline waits until that deadline. Then the question waits for respond_to_run.
ASK_SECONDS = 600.0
# Refusal reasons kept for the notes of results (the oldest forgotten past this many).
_REFUSALS_KEPT = 256


@dataclass(eq=False)
class _WaitingCall:
    """A 2025-era call that waits on a run: the request a question can be sent related to."""

    session: Any
    request_id: Any


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
    """Whether the client on ``connection`` takes form ``elicitation/create`` requests (2025 era)."""
    return _takes_forms(connection) and connection.protocol_version not in MODERN_PROTOCOL_VERSIONS


def _own_channel(connection: Any) -> bool:
    """Whether a request sent on ``connection``'s standalone channel reaches its client: on stdio and
    SSE (no session id) it is the connection itself; a streamable HTTP session's needs a GET stream the
    client may never open, and the SDK drops what it cannot carry without a word."""
    return bool(connection.has_standalone_channel and connection.session_id is None)


def _ask_seconds(question: InputRequest) -> float:
    """How long one ``elicitation/create`` for ``question`` waits: up to its deadline, at most
    :data:`ASK_SECONDS`."""
    if question.deadline is None:
        return ASK_SECONDS
    left = question.deadline.timestamp() - time.time()
    return min(ASK_SECONDS, max(left, 1.0))


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
        self._lock = threading.Lock()
        # Guarded by _lock: the waiting calls of each 2025-era connection (newest last), and why the last
        # answers a client gave to a question were refused, by (run_id, step), once it is no longer asked.
        self._waiting: dict[Any, list[_WaitingCall]] = {}
        self._refusals: OrderedDict[tuple[str, str], str] = OrderedDict()

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
        if self._waiting_call(peer.connection) is None and not _own_channel(peer.connection):
            return False  # no stream to ask on: the question waits for respond_to_run
        with self._lock:  # a question asked anew: a refusal of an earlier asking no longer says why
            self._refusals.pop((run_id, step), None)
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

    def waiting(
        self, ctx: Any, params: types.CallToolRequestParams
    ) -> contextlib.AbstractContextManager[None]:
        """Around a tool call (event loop): while a 2025-era call that waits on a run goes on, questions
        for its client are sent related to it (on streamable HTTP they ride its POST stream)."""
        if params.name not in _WAITING_TOOLS or (params.arguments or {}).get("wait", True) is False:
            return contextlib.nullcontext()
        try:
            connection = connection_of(ctx)
        except TypeError:
            return contextlib.nullcontext()
        if not _asks_forms(connection):
            return contextlib.nullcontext()
        return self._waiting_on(connection, _WaitingCall(ctx.session, ctx.request_id))

    @contextlib.contextmanager
    def _waiting_on(self, connection: Any, call: _WaitingCall) -> Iterator[None]:
        with self._lock:
            self._waiting.setdefault(connection, []).append(call)
        try:
            yield
        finally:
            with self._lock:
                calls = self._waiting.get(connection, [])
                calls.remove(call)
                if not calls:
                    self._waiting.pop(connection, None)

    def _waiting_call(self, connection: Any) -> _WaitingCall | None:
        """The newest call of ``connection`` waiting on a run that can still carry a request, if any."""
        with self._lock:
            calls = list(self._waiting.get(connection, ()))
        return next((c for c in reversed(calls) if c.session.can_send_request), None)

    def noted(self, result: ToolResult) -> ToolResult:
        """``result``, its note saying why a question it shows waiting was no longer put to the client
        (its answers did not fit the schema): the client's reason to answer with respond_to_run."""
        record = result.structured
        if not self._refusals or result.is_error or not record or not record.get("pending_inputs"):
            return result
        run_id = record.get("run_id")
        with self._lock:
            why = [
                f"the client's answers to step {q['step']!r} were refused ({reason}): answer it with "
                "respond_to_run"
                for q in record["pending_inputs"]
                if (reason := self._refusals.get((str(q.get("run_id") or run_id), q["step"]))) is not None
            ]
        if not why:
            return result
        note = "; ".join([*why, *([record["note"]] if record.get("note") else [])])
        structured = {**record, "note": note}
        return ToolResult(text=json.dumps(structured, ensure_ascii=False), structured=structured)

    async def _ask(
        self, inputs: InputDesk, peer: Peer, run_id: str, step: str, question: InputRequest
    ) -> None:
        """Put ``question`` to ``peer`` until an answer fits it (at most :data:`ASKS` times); a question
        nobody can be asked any more waits for respond_to_run."""
        schema = question.requested_schema or {"type": "object", "properties": {}}
        core = self._tools._call_limiter
        message, refused = question.message, None
        for _ in range(ASKS):
            try:
                result = await self._send(peer, message, schema, _ask_seconds(question))
            except Exception as exc:  # gone, refused, an error answer or no answer in time
                log.info("approval.elicitation_failed", run_id=run_id, step=step, error=str(exc) or repr(exc))
                break
            content = result.content if result.action == "accept" else None
            respond = partial(inputs.respond, run_id, step, result.action, content)
            try:
                await anyio.to_thread.run_sync(respond, limiter=core)
                return
            except InvalidInputError as exc:  # content off the schema: asked again, saying why
                log.info("approval.answer_refused", run_id=run_id, step=step, error=str(exc))
                refused = str(exc)
                message = f"{question.message} (the previous answer was refused: {refused})"
            except OrchestrationError as exc:  # answered meanwhile, or the run ended
                log.info("approval.answer_refused", run_id=run_id, step=step, error=str(exc))
                return
        if refused is not None:
            with self._lock:
                self._refusals[(run_id, step)] = refused
                while len(self._refusals) > _REFUSALS_KEPT:
                    self._refusals.popitem(last=False)
        await anyio.to_thread.run_sync(inputs.unattended, run_id, step, limiter=core)

    async def _send(self, peer: Peer, message: str, schema: dict[str, Any], seconds: float) -> Any:
        """One ``elicitation/create`` to ``peer``: related to a call of its waiting on a run if there is
        one, else on its connection's own channel (RuntimeError when it has none that reaches it)."""
        request = types.ElicitRequest(
            params=types.ElicitRequestFormParams(message=message, requested_schema=schema)
        )
        call = self._waiting_call(peer.connection)
        if call is not None:
            related = ServerMessageMetadata(related_request_id=call.request_id)
            return await call.session.send_request(
                request, types.ElicitResult, request_read_timeout_seconds=seconds, metadata=related
            )
        if not _own_channel(peer.connection):
            raise RuntimeError("no stream to ask on: the client has no call waiting on a run")
        return await peer.connection.send_request(request, opts={"timeout": seconds})
