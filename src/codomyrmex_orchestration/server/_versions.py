"""The protocol versions this server serves, and the answers that name them: ``server/discover``'s
``supportedVersions`` and an ``UnsupportedProtocolVersionError``'s ``data.supported``, which the SDK
builds from its modern versions only although the server also serves the handshake era; and the answer
to a request sent before ``initialize``, which says what each era needs first. Holds no state.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from mcp_types.jsonrpc import UNSUPPORTED_PROTOCOL_VERSION
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from codomyrmex_orchestration.server._notifications import connection_of

if TYPE_CHECKING:  # the stdio wire imports this module too, without the HTTP stack
    from starlette.types import Message, Send

__all__ = [
    "SERVED_VERSIONS",
    "install",
    "naming_served",
    "rewriting_400",
    "send_naming_served",
    "unsupported_header",
]

#: Every version served, newest first, as the specification's example for a server of both eras lists
#: them: 2026-07-28 with each request's envelope, the others through the ``initialize`` handshake.
SERVED_VERSIONS: tuple[str, ...] = (
    *reversed(MODERN_PROTOCOL_VERSIONS),
    *reversed(HANDSHAKE_PROTOCOL_VERSIONS),
)

# The requests the SDK serves before initialize (the handshake itself, and ping).
_UNGATED = frozenset({"initialize", "ping"})
# What a 2026-07-28 request's envelope must carry (the SDK's ladder refuses it without either).
_ENVELOPE_KEYS = (types.PROTOCOL_VERSION_META_KEY, types.CLIENT_CAPABILITIES_META_KEY)

# How an UnsupportedProtocolVersionError's code reads in the SDK's compact JSON: only an outbound
# message holding it is parsed again (every other one is passed on untouched).
_MARK = f'"code":{UNSUPPORTED_PROTOCOL_VERSION}'


def install(server: Server[Any]) -> None:
    """Answer ``server/discover`` as the SDK does, listing :data:`SERVED_VERSIONS`, and a request
    before ``initialize`` naming what comes first (:func:`_before_initialize`)."""
    server.middleware.append(partial(_before_initialize, server))
    entry = server.get_request_handler("server/discover")
    assert entry is not None, "the SDK serves server/discover"
    default = entry.handler

    async def on_discover(ctx: Any, params: BaseModel) -> BaseModel | dict[str, Any] | None:
        result = await default(ctx, params)
        assert isinstance(result, types.DiscoverResult), result
        return result.model_copy(update={"supported_versions": list(SERVED_VERSIONS)})

    server.add_request_handler("server/discover", entry.params_type, on_discover)


async def _before_initialize(server: Server[Any], ctx: Any, call_next: Callable[[Any], Any]) -> Any:
    """A request the SDK refuses because the connection has not been initialized, refused naming what
    either era needs first (the SDK says -32602 "Invalid request parameters" with empty data). The code
    stays: a client keys its fallback to no particular one, and the SDK's is this."""
    try:
        connection = connection_of(ctx)
    except TypeError:
        return await call_next(ctx)
    method = ctx.method
    gated = method not in _UNGATED and server.get_request_handler(method) is not None
    if not gated or connection.initialize_accepted:  # an unknown method stays -32601, as in the SDK
        return await call_next(ctx)
    raise MCPError(
        code=types.INVALID_PARAMS,
        message=f"{method} before initialize: this server speaks two protocol eras. On 2025-11-25 (or "
        "earlier) send initialize first, then notifications/initialized; on 2026-07-28 every request, "
        "from a connection's first one, carries params._meta with "
        f"{', '.join(repr(key) for key in _ENVELOPE_KEYS)}",
        data={"method": method},
    )


def unsupported_header(version: str, body: bytes) -> dict[str, Any] | None:
    """The error answering an HTTP request whose ``MCP-Protocol-Version`` header names a version this
    server never serves (``body``: the request's, for its id); None for a served one.

    The transports' MUST: "If the server receives a request with an invalid or unsupported
    MCP-Protocol-Version, it MUST respond with 400 Bad Request". The SDK routes every such header to its
    2026-07-28 path, whose answer to a handshake-era request (no ``params._meta`` envelope) spoke of
    envelope keys, not of the header, and whose GET and DELETE answered 405 as if the session could not
    be streamed or ended. The code and data are those of the SDK's UnsupportedProtocolVersionError.
    """
    if version in SERVED_VERSIONS:
        return None
    try:
        request = json.loads(body) if body else None
    except (ValueError, RecursionError):
        request = None
    request_id = request.get("id") if isinstance(request, dict) else None
    if not (
        isinstance(request_id, str) or (isinstance(request_id, int) and not isinstance(request_id, bool))
    ):
        request_id = None
    served = ", ".join(SERVED_VERSIONS)
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {
            "code": UNSUPPORTED_PROTOCOL_VERSION,
            "message": "Unsupported protocol version: the MCP-Protocol-Version header says "
            f"{version[:40]!r}; this server serves {served}. On a session send the version initialize "
            "negotiated; on 2026-07-28 send the version of each request's params._meta",
            "data": {"supported": list(SERVED_VERSIONS), "requested": version},
        },
    }


def _renamed(message: Any) -> dict[str, Any] | None:
    """``message`` naming :data:`SERVED_VERSIONS` when it is an UnsupportedProtocolVersionError for a
    version this server never serves; None otherwise (a refused ``initialize`` on a stdio process that
    opened on 2026-07-28 names a served version: its "supported" is what that process still takes)."""
    error = message.get("error") if isinstance(message, Mapping) else None
    if not isinstance(error, Mapping):
        return None
    data = error.get("data")
    if (
        not isinstance(data, Mapping)
        or error.get("code") != UNSUPPORTED_PROTOCOL_VERSION
        or not isinstance(data.get("supported"), list)
        or data.get("requested") in SERVED_VERSIONS
    ):
        return None
    return {**message, "error": {**error, "data": {**data, "supported": list(SERVED_VERSIONS)}}}


def _named(text: str) -> str | None:
    """One outbound JSON-RPC message as text, naming every served version, if it refuses a version it
    names too few of; None when it stays as it is."""
    if _MARK not in text:
        return None
    message = text.rstrip()
    try:
        renamed = _renamed(json.loads(message))
    except ValueError:
        return None
    # The line end the message came with stays (stdio frames each message with one).
    return None if renamed is None else json.dumps(renamed, separators=(",", ":")) + text[len(message) :]


def naming_served(text: str) -> str:
    """One outbound JSON-RPC message as text, naming every served version if it refuses a version."""
    named = _named(text)
    return text if named is None else named


def send_naming_served(send: Send) -> Send:
    """``send`` for an HTTP exchange, its ``400`` answer naming every served version if it refuses a
    version."""

    def named(body: bytes) -> bytes | None:
        text = _named(body.decode("utf-8", "replace"))
        return None if text is None else text.encode()

    return rewriting_400(send, named)


def rewriting_400(send: Send, rewrite: Callable[[bytes], bytes | None]) -> Send:
    """``send`` for an HTTP exchange whose ``400`` answer, when it is one body, is replaced by what
    ``rewrite`` makes of it (None: left as it is; its ``content-length`` is set again). Any other answer
    passes untouched: only a refusal is read."""
    held: list[Message] = []

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start" and message.get("status") == 400:
            held.append(message)  # until its body shows what it refuses
            return
        if held and message["type"] == "http.response.body":
            start = held.pop()
            body = bytes(message.get("body", b""))
            encoded = None if message.get("more_body") else rewrite(body)
            if encoded is not None:
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                start = {**start, "headers": [*headers, (b"content-length", str(len(encoded)).encode())]}
                message = {**message, "body": encoded}
            await send(start)
        await send(message)

    return sending
