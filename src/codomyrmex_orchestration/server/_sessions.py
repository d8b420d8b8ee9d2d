"""MCP sessions on streamable HTTP and what the server reports about itself beside the engine's health.

``SessionManager`` is the SDK's session manager with four changes: idle sessions expire after minutes
(a setting); at the session cap the session idle the longest (since its last request, whether or not it
holds its GET stream) is closed to let a new client in, so clients that open sessions and never close
them cannot lock everyone else out, and a refusal names the cap and its setting; a request whose ``id``
is not a string or an integer is answered 400 Invalid Request (``_request_ids``), not taken for a
notification, and so are a batch and a message that is not JSON-RPC 2.0 (as on stdio, one line, not
pydantic's report); a refused request that names no session gets no session
id (the SDK discards the session it opened for it). ``ServerStatus`` owns nothing but references: the
transport, the code-execution exposure and the session manager, read by ``/healthz`` and
``get_health_status``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types
from mcp.server.auth.middleware.bearer_auth import AuthorizationContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from codomyrmex_orchestration.config import DEFAULT_MAX_SESSIONS, DEFAULT_SESSION_IDLE_TIMEOUT
from codomyrmex_orchestration.logs import get_logger
from codomyrmex_orchestration.server._request_ids import INVALID_REQUEST, body_problem, diagnose
from codomyrmex_orchestration.server._versions import rewriting_400, send_naming_served, unsupported_header

__all__ = ["DEFAULT_MAX_SESSIONS", "DEFAULT_SESSION_IDLE_TIMEOUT", "ServerStatus", "SessionManager"]

log = get_logger("codomyrmex_orchestration.server")


class SessionManager(StreamableHTTPSessionManager):
    """``StreamableHTTPSessionManager`` that, at ``max_sessions``, closes the longest-idle session before
    admitting a new one (and refuses, 503 naming ``CODOMYRMEX_MAX_SESSIONS``, only when every open session
    has a request in flight).

    It reads the SDK's session table (``_server_instances``) and extends its admission step
    (``_admit_session``, called under the SDK's session-creation lock, so choosing and closing the
    victim and admitting the newcomer happen as one step). A session is idle while none of its POSTs is
    being served (the opening one included); it has been idle since the last of them ended. Its GET
    stream does not count: every SDK client holds one open for the session's life, and the SDK's own
    idle deadline, which counts it as a request in flight, made such sessions never idle. (That deadline
    still decides the idle *timeout*: a session holding its GET stream does not expire, but makes room
    at the cap.) ``_activity`` (event-loop state, no lock) holds each session's :class:`_Activity`.
    """

    def __init__(
        self,
        app: Server[Any],
        *,
        security_settings: TransportSecuritySettings | None = None,
        session_idle_timeout: float = DEFAULT_SESSION_IDLE_TIMEOUT,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
    ) -> None:
        super().__init__(
            app,
            security_settings=security_settings,
            session_idle_timeout=session_idle_timeout,
            max_sessions=max_sessions,
        )
        self.evicted = 0
        self._activity: dict[str, _Activity] = {}

    @property
    def open_sessions(self) -> int:
        return len(self._server_instances)

    async def _handle_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The SDK's, behind its body limit, which has read a POST's body whole and replays it as one
        message: a batch, or a request with an id that is not a string or an integer, is refused here
        (``_request_ids``), before the SDK's parser reads the id as a notification's or reports the
        array with pydantic's dump, in the shape of the SDK's answer to a malformed message.
        """
        version = _header(scope, b"mcp-protocol-version")
        if version is not None:
            opening_body = b""
            if scope.get("method") == "POST":
                opening = await receive()
                opening_body = opening.get("body", b"") if opening["type"] == "http.request" else b""
                receive = _replaying(opening, receive)
            refusal = unsupported_header(version.decode("latin-1"), opening_body)
            if refusal is not None:
                log.warning("http.unsupported_protocol_version", header=version[:40].decode("latin-1"))
                await Response(
                    json.dumps(refusal, separators=(",", ":")), status_code=400, media_type="application/json"
                )(scope, receive, send)
                return
        session = _header(scope, _SESSION_HEADER)
        if session is None:
            send = _no_session_id_on_refusal(send, self.max_sessions)
        if _routed_modern(scope):  # where the SDK refuses a version, naming its modern ones only
            send = send_naming_served(send)
        if scope.get("method") != "POST":
            await super()._handle_request(scope, receive, send)
            return
        first = await receive()
        problem = None
        if first["type"] == "http.request" and not first.get("more_body", False):
            problem = body_problem(first.get("body", b""))
        if problem is not None:
            log.warning("http.malformed_message", code=INVALID_REQUEST, error=problem)
            error = types.JSONRPCError(
                jsonrpc="2.0", id=None, error=types.ErrorData(code=INVALID_REQUEST, message=problem)
            )
            body = error.model_dump_json(by_alias=True, exclude_unset=True)
            await Response(body, status_code=400, media_type="application/json")(scope, receive, send)
            return
        if first["type"] == "http.request" and not first.get("more_body", False):
            send = _diagnosing(send, first.get("body", b""))
        pending: list[Message] = [first]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        activity = self._activity.get(session.decode("latin-1")) if session is not None else None
        if activity is None:
            await super()._handle_request(scope, replay, send)
            return
        activity.requests += 1
        try:
            await super()._handle_request(scope, replay, send)
        finally:
            activity.ended()

    def _admit_session(self, requestor: AuthorizationContext | None) -> StreamableHTTPServerTransport | None:
        if self.max_sessions is not None and len(self._server_instances) >= self.max_sessions:
            self._close_longest_idle()
        transport = super()._admit_session(requestor)
        if transport is not None and transport.mcp_session_id is not None:
            self._activity[transport.mcp_session_id] = _Activity(requests=1)  # its opening request
        return transport

    async def _serve_opening_request(
        self, http_transport: StreamableHTTPServerTransport, scope: Scope, receive: Receive, send: Send
    ) -> None:
        try:
            await super()._serve_opening_request(http_transport, scope, receive, send)
        finally:
            activity = self._activity.get(http_transport.mcp_session_id or "")
            if activity is not None:
                activity.ended()

    async def _discard_session(self, session_id: str, transport: StreamableHTTPServerTransport) -> None:
        self._activity.pop(session_id, None)
        await super()._discard_session(session_id, transport)

    def _close_longest_idle(self) -> None:
        oldest: tuple[float, str, StreamableHTTPServerTransport] | None = None
        for session_id, transport in self._server_instances.items():
            scope = transport.idle_scope
            activity = self._activity.get(session_id)
            if scope is None or scope.cancel_called or activity is None or activity.requests:
                continue  # serving a request, not started yet, or closing
            if oldest is None or activity.since < oldest[0]:
                oldest = (activity.since, session_id, transport)
        if oldest is None:
            return
        _, session_id, transport = oldest
        # Forgotten at once (its id answers 404 from now on); cancelling its idle scope ends the
        # session's server task, whose own clean-up terminates the transport (and ends its GET stream).
        self._server_instances.pop(session_id, None)
        self._session_owners.pop(session_id, None)
        self._activity.pop(session_id, None)
        assert transport.idle_scope is not None
        transport.idle_scope.cancel()
        self.evicted += 1
        log.warning(
            "server.session_evicted",
            reason=f"{self.max_sessions} sessions open (the cap): the longest-idle one made room",
            session=session_id[:8],
        )


@dataclass(slots=True)
class _Activity:
    """One session's POSTs being served, and since when (``time.monotonic()``) it has had none."""

    requests: int = 0
    since: float = field(default_factory=time.monotonic)

    def ended(self) -> None:
        self.requests -= 1
        if not self.requests:
            self.since = time.monotonic()


_SESSION_HEADER = b"mcp-session-id"


def _no_session_id_on_refusal(send: Send, max_sessions: int | None) -> Send:
    """``send`` for a request that names no session, dropping ``Mcp-Session-Id`` from an answer of 400
    or more: the SDK opens a session for such a request and discards it again when it is refused
    (``_serve_opening_request``), but its answer still named it, an id that then got 404. Its 503 (the
    session cap, the only 503 it sends) gets a body naming the cap and its setting."""
    refusal = b""  # once answering 503: the body that replaces the SDK's

    async def sending(message: Message) -> None:
        nonlocal refusal
        if message["type"] == "http.response.start" and message["status"] >= 400:
            headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != _SESSION_HEADER]
            if message["status"] == 503:
                refusal = _refusal(max_sessions).encode()
                headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(refusal)).encode()))
            message = {**message, "headers": headers}
        elif message["type"] == "http.response.body" and refusal:
            if message.get("more_body", False):
                return  # one body, sent with the last part of theirs
            message = {**message, "body": refusal}
        await send(message)

    return sending


def _refusal(max_sessions: int | None) -> str:
    message = (
        f"Too many open sessions: {max_sessions} are open (the cap, CODOMYRMEX_MAX_SESSIONS) and each has "
        "a request in flight, so none could be closed to make room; retry when a request ends, or raise "
        "CODOMYRMEX_MAX_SESSIONS"
    )
    error = types.JSONRPCError(
        jsonrpc="2.0", id=None, error=types.ErrorData(code=types.INTERNAL_ERROR, message=message)
    )
    return error.model_dump_json(by_alias=True, exclude_unset=True)


def _replaying(message: Message, receive: Receive) -> Receive:
    """``receive`` with ``message`` (read from it already) given back first."""
    pending = [message]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


def _diagnosing(send: Send, body: bytes) -> Send:
    """``send`` for a POST of ``body``, the SDK's refusal of a message that is not JSON-RPC 2.0 (400,
    -32602 and pydantic's report, "Validation error: 6 validation errors for union[...]") answered as
    stdio answers it: -32600 Invalid Request with one line naming the problem (``_request_ids.diagnose``).
    Only a refusal is read again: an accepted message costs nothing more."""

    def diagnosed(refused: bytes) -> bytes | None:
        if not _refused_as_invalid_params(refused):
            return None
        problem = diagnose(body)
        if problem is None or problem[0] != INVALID_REQUEST:
            return None
        code, text, request_id = problem
        log.warning("http.malformed_message", code=code, error=text[:300])
        error = types.JSONRPCError(
            jsonrpc="2.0", id=request_id, error=types.ErrorData(code=code, message=text)
        )
        return error.model_dump_json(by_alias=True, exclude_unset=True).encode()

    return rewriting_400(send, diagnosed)


def _refused_as_invalid_params(body: bytes) -> bool:
    """Whether ``body`` is the SDK's answer to a message its parser refused (-32602, "Validation error")."""
    try:
        error = json.loads(body).get("error") or {}
    except (ValueError, AttributeError):
        return False
    return error.get("code") == types.INVALID_PARAMS and str(error.get("message", "")).startswith(
        "Validation error"
    )


def _header(scope: Scope, name: bytes) -> Any:
    """The value of the request header ``name`` (lower case), as bytes, or None."""
    return next((v for k, v in scope.get("headers", ()) if k == name), None)


def _routed_modern(scope: Scope) -> bool:
    """Whether the SDK serves this request on its 2026-07-28 path: it has an ``MCP-Protocol-Version``
    header naming no handshake version (as the SDK's session manager routes)."""
    version = next((v for k, v in scope.get("headers", ()) if k == b"mcp-protocol-version"), None)
    return version is not None and version.decode("latin-1") not in HANDSHAKE_PROTOCOL_VERSIONS


@dataclass
class ServerStatus:
    """What ``/healthz`` and ``get_health_status`` report about the server itself."""

    transport: str
    code_execution: bool
    exposed: bool = False  # code execution enabled on a non-loopback bind
    sessions: SessionManager | None = None
    warnings: list[str] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "transport": self.transport,
            "code_execution": self.code_execution,
            "code_execution_exposed": self.exposed,
        }
        if self.sessions is not None:
            status["sessions_open"] = self.sessions.open_sessions
            status["sessions_max"] = self.sessions.max_sessions
            status["session_idle_timeout_seconds"] = self.sessions.session_idle_timeout
            status["sessions_evicted"] = self.sessions.evicted
        if self.warnings:
            status["warnings"] = list(self.warnings)
        return status

    def component(self) -> dict[str, Any]:
        """The ``server`` component of ``get_health_status``."""
        full = self.sessions is not None and self.sessions.open_sessions >= (
            self.sessions.max_sessions or math.inf
        )
        return {
            "status": "degraded" if full else "healthy",
            "critical": False,
            "details": self.snapshot(),
            "error_count": 0,
            "last_error": None,
        }
