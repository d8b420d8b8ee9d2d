"""Approval steps at the server: ``core.approve`` questions put to the client that started the run through
MCP elicitation (``respond_to_run``, in ``tools.py``, answers them by hand).

:class:`Approvals` owns the server's event loop entry it last saw (where elicitations run as tasks of the
server's lifespan) and the engine it installed its broker on. A question goes to the client by
``elicitation/create`` when that client is still connected on a 2025-era connection (server-initiated
requests are forbidden from 2026-07-28 on) and declared form elicitation; otherwise, or when the request
fails, it waits in the run for ``respond_to_run``.
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
from codomyrmex_orchestration.server._notifications import NotificationHub, Peer
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools, _call_soon

__all__ = ["Approvals"]

log = get_logger("codomyrmex_orchestration.server")


def _asks_forms(connection: Any) -> bool:
    """Whether the client on ``connection`` can be sent a form ``elicitation/create`` now."""
    capabilities = connection.client_capabilities
    elicitation = capabilities.elicitation if capabilities is not None else None
    if elicitation is None or (elicitation.form is None and elicitation.url is not None):
        return False  # no elicitation, or URL mode only
    modern = connection.protocol_version in MODERN_PROTOCOL_VERSIONS
    return bool(not modern and connection.has_standalone_channel)


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
        can be asked (False: the question waits for respond_to_run)."""
        peer, loop = self._hub.owner(run_id), self._loop
        if peer is None or loop is None or not _asks_forms(peer.connection):
            return False
        ask = partial(self._ask, inputs, peer, run_id, step, question)
        _call_soon(loop.token, lambda: loop.tasks.start_soon(ask))
        return True

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
