"""The rule for a JSON-RPC request's ``id``, shared by the stdio and streamable-HTTP transports, and
streamable HTTP's refusal of a batch.

MCP: a request id MUST be a string or an integer, never null. The SDK's parser reads a message that
has a method and any other ``id`` (null, a boolean, a fraction, a list...) as a notification, which
gets no answer (HTTP 202 on streamable HTTP); both transports answer it -32600 Invalid Request instead.
A JSON array (a JSON-RPC batch, which MCP no longer has) gets -32600 saying so, where the SDK's HTTP
transport answered -32602 with pydantic's whole report. Owns no state.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["BATCH_REFUSED", "INVALID_REQUEST", "body_id_problem", "body_problem", "id_problem"]

INVALID_REQUEST = -32600
#: What stdio answers a batch (or any message that is not one JSON object) with; HTTP answers a batch so.
BATCH_REFUSED = "Invalid Request: a message must be one JSON object (batches are not supported)"

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
