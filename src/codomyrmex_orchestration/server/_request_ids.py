"""What a malformed JSON-RPC message is answered with, shared by the stdio and streamable-HTTP
transports: the rule for a request's ``id``, the refusal of a batch and :func:`diagnose` for the rest.

MCP: a request id MUST be a string or an integer, never null. The SDK's parser reads a message that
has a method and any other ``id`` (null, a boolean, a fraction, a list...) as a notification, which
gets no answer (HTTP 202 on streamable HTTP); both transports answer it -32600 Invalid Request instead.
A JSON array (a JSON-RPC batch) gets -32600 saying this server takes no batches, whatever the protocol
version (2025-03-26 said implementations MUST receive them; the MCP Python SDK's transports never did,
python-sdk#934, and 2025-06-18 removed them), and to send the messages one by one, where the SDK's HTTP
transport answered -32602 with pydantic's whole report. Any other message that is not JSON-RPC 2.0
(``"jsonrpc": "1.0"``, no method, ``params`` an array...) gets -32600 with one line naming the first
problem, never pydantic's report. Owns no state.
"""

from __future__ import annotations

import json
import re
from typing import Any

import mcp_types as types
from pydantic import ValidationError

__all__ = [
    "BATCH_REFUSED",
    "INVALID_REQUEST",
    "PARSE_ERROR",
    "body_id_problem",
    "body_problem",
    "diagnose",
    "id_problem",
]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
#: What both transports answer a batch (a JSON array) with, in every protocol version.
BATCH_REFUSED = (
    "Invalid Request: this server does not support JSON-RPC batches (nor does the MCP Python SDK it is "
    "built on), whatever the protocol version; send the messages one by one, each a JSON object"
)
_NOT_AN_OBJECT = "Invalid Request: a message must be one JSON object"

# What follows an "id" key whose value does not start like a string or an integer: null, true, false,
# [, {, or a number with a fraction or an exponent.
_NOT_STRING_OR_INTEGER = re.compile(rb'\s*:\s*(?:[^\s"\d-]|-?\d+[.eE])')


def _may_hold_bad_id(body: bytes) -> bool:
    """Whether ``body`` may hold an id that is not a string or an integer: it has an ``"id"`` key with
    such a value (at any depth), or a ``\\u`` escape (which could spell the key). Byte searches only,
    so the bodies that cannot (nearly every request and notification) are never parsed here."""
    if b"\\" in body and b"\\u" in body:  # a one-byte search first (memchr): most bodies have no backslash
        return True
    at = body.find(b'"id"')
    while at >= 0:
        if _NOT_STRING_OR_INTEGER.match(body, at + 4):
            return True
        at = body.find(b'"id"', at + 4)
    return False


def id_problem(message: Any) -> str | None:
    """The Invalid Request message for a parsed message that has a method and an ``id`` member that is
    neither a string nor an integer; ``None`` for any other message (a response or error with a null
    id included)."""
    if not isinstance(message, dict) or "method" not in message or "id" not in message:
        return None
    value = message["id"]
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return None
    return (
        f'Invalid Request: "id" must be a string or an integer, got {json.dumps(value)[:40]} '
        '(a notification has no "id" member)'
    )


def body_id_problem(body: bytes) -> str | None:
    """:func:`id_problem` for one message as raw JSON, parsed only when its bytes may hold such an id.
    ``None`` also for a body that is not JSON: the transport answers that."""
    if not _may_hold_bad_id(body):
        return None
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return id_problem(message)


def body_problem(body: bytes) -> str | None:
    """The Invalid Request message for one HTTP request body: a JSON array (:data:`BATCH_REFUSED`), or a
    request id that is not a string or an integer (:func:`body_id_problem`); ``None`` otherwise, also
    for a body that is not JSON (the transport answers that, -32700)."""
    if body.lstrip(b" \t\r\n")[:1] == b"[":
        try:
            batch = json.loads(body)
        except (ValueError, RecursionError):
            return None
        return BATCH_REFUSED if isinstance(batch, list) else None
    return body_id_problem(body)


def _request_id(text: bytes) -> str | int | None:
    """The ``id`` of a message that parses as a JSON object, for an error reply (null otherwise)."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if isinstance(message, dict):
        value = message.get("id")
        if isinstance(value, str | int) and not isinstance(value, bool):
            return value
    return None


#: An error to answer a message with: its code, its message and the request's id (when it has one).
Problem = tuple[int, str, str | int | None]


def diagnose(line: bytes) -> Problem | None:
    """``None`` when ``line`` (one stdio line or HTTP body) is a JSON-RPC message the SDK accepts, else
    ``(code, message, id)`` of the error to answer it with: -32700 for what is not JSON, -32600 with one
    line naming the first problem for the rest."""
    examined = examine(line)
    return examined if isinstance(examined, tuple) else None


def examine(line: bytes) -> types.JSONRPCMessage | Problem:
    """The message ``line`` holds, as the SDK will read it, or the error to answer it with (see
    :func:`diagnose`)."""
    try:
        message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    except ValidationError as exc:
        problem = exc.errors()[0]
    else:
        if isinstance(message, types.JSONRPCNotification):
            # Or a request whose id the SDK's parser refused (body_id_problem).
            refused = body_id_problem(line)
            if refused is not None:
                return INVALID_REQUEST, refused, None
        return message
    if problem["type"] == "json_invalid":
        # pydantic's parser also refuses valid JSON it cannot represent: ask the standard one.
        try:
            message = json.loads(line.decode("utf-8"))  # the wire is UTF-8: no guessing UTF-16 or -32
        except RecursionError:
            return INVALID_REQUEST, "Invalid Request: the message is nested too deeply", None
        except ValueError as err:
            return PARSE_ERROR, f"Parse error: not valid UTF-8 JSON ({err})", None
        if not isinstance(message, dict):
            return INVALID_REQUEST, BATCH_REFUSED if isinstance(message, list) else _NOT_AN_OBJECT, None
        return INVALID_REQUEST, f"Invalid Request: {problem['msg']}", _request_id(line)
    if line.lstrip().startswith(b"["):
        return INVALID_REQUEST, BATCH_REFUSED, None
    where = ".".join(str(p) for p in problem["loc"][1:])
    detail = f"{where}: {problem['msg']}" if where else problem["msg"]
    return (
        INVALID_REQUEST,
        'Invalid Request: not a JSON-RPC 2.0 message with "jsonrpc": "2.0" and a method, result or error '
        f"({detail})",
        _request_id(line),
    )
