"""The ``http`` module: ``http.request`` with httpx. The request runs in a helper thread so that the step
ends promptly on cancellation or deadline even while a connect or read is blocked."""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx

from codomyrmex_orchestration.core.actions._params import (
    CappedBuffer,
    check_known,
    get_bool,
    get_max_output_bytes,
    get_number,
    get_str,
    get_str_map,
)
from codomyrmex_orchestration.core.actions._registry import ActionContext, ActionDefinition, ActionRegistry
from codomyrmex_orchestration.errors import (
    ActionRefusedError,
    InvalidInputError,
    OrchestrationError,
    StepCancelledError,
    StepFailedError,
    StepTimeoutError,
)

__all__ = ["DEFAULT_TIMEOUT", "METHODS", "PARAMETERS", "register", "request"]

DEFAULT_TIMEOUT = 30.0
METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
PARAMETERS = {
    "method": f"one of {', '.join(METHODS)} (default GET)",
    "url": "http:// or https:// URL (required)",
    "headers": "object of header name -> value",
    "params": "object of query parameters (values: string, number, boolean or a list of them)",
    "json": "any JSON value sent as the request body (not with body)",
    "body": "string sent as the request body (not with json)",
    "timeout": f"seconds for the whole request (default {DEFAULT_TIMEOUT:g}; never beyond the step deadline)",
    "check": "boolean, fail the step when the status is not 2xx (default true)",
    "follow_redirects": "boolean (default false)",
    "max_output_bytes": "integer, bytes of the response body kept (default 1048576)",
}
_ACTION = "http.request"
_SLICE = 0.05
_BODY_TAIL = 500


def _query(params: Mapping[str, Any]) -> dict[str, Any]:
    value = params.get("params")
    if value is None:
        return {}
    scalar = str | int | float | bool
    if isinstance(value, Mapping) and all(
        isinstance(k, str)
        and (isinstance(v, scalar) or (isinstance(v, list) and all(isinstance(i, scalar) for i in v)))
        for k, v in value.items()
    ):
        return dict(value)
    raise InvalidInputError(
        "parameters.params",
        "http.request needs 'params' to be an object whose values are strings, numbers, booleans "
        "or lists of them",
    )


def _url(params: Mapping[str, Any]) -> httpx.URL:
    raw = get_str(params, "url", _ACTION, required=True)
    try:
        url = httpx.URL(raw or "")
    except httpx.InvalidURL as exc:
        raise InvalidInputError("parameters.url", f"not a valid URL ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidInputError(
            "parameters.url", f"http.request accepts only http:// and https:// URLs with a host, got {raw!r}"
        )
    return url


def _is_internal(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )


def refuse_internal_hosts(request: httpx.Request) -> None:
    """httpx request hook: refuse a request (or redirect) whose host resolves to a loopback, link-local,
    private or otherwise non-public address.

    Raises:
        ActionRefusedError: the host is internal.
        httpx.ConnectError: the host cannot be resolved.
    """
    host = request.url.host
    port = request.url.port or (443 if request.url.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise StepFailedError(
            _ACTION, f"cannot resolve host {host!r}: {exc}", error_type="ConnectError"
        ) from None
    for info in infos:
        address = str(info[4][0])
        if _is_internal(address):
            raise ActionRefusedError(
                "http",
                "request",
                f"host {host!r} resolves to {address}, a loopback/link-local/private address, and "
                "requests to internal addresses are blocked on this server",
            )


def _text(buffer: CappedBuffer, cap: int) -> str:
    text = buffer.raw().decode("utf-8", errors="replace")
    if buffer.dropped:
        text += f"\n…[truncated: the body is longer than {cap} bytes]"
    return text


def _perform(
    method: str,
    url: httpx.URL,
    options: dict[str, Any],
    timeout: float,
    follow_redirects: bool,
    block_internal: bool,
    cap: int,
    abandon: threading.Event,
) -> dict[str, Any] | None:
    hooks: dict[str, list[Any]] = {"request": [refuse_internal_hosts]} if block_internal else {}
    with (
        httpx.Client(
            timeout=httpx.Timeout(timeout), follow_redirects=follow_redirects, event_hooks=hooks
        ) as client,
        client.stream(method, url, **options) as response,
    ):
        body = CappedBuffer(cap)
        for chunk in response.iter_bytes():
            if abandon.is_set():
                return None
            body.add(chunk)
            if body.dropped:
                break
        result: dict[str, Any] = {"status": response.status_code, "headers": dict(response.headers.items())}
        content_type = response.headers.get("content-type", "").lower()
        if "json" in content_type and not body.dropped and body.raw():
            try:
                result["json"] = json.loads(body.raw())
                return result
            except ValueError:
                pass
        result["text"] = _text(body, cap)
        result["reason"] = response.reason_phrase
        return result


def request(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Send one HTTP request; see :data:`PARAMETERS`.

    Returns:
        ``{"status", "headers", "json"}`` when the response is JSON, else ``{"status", "headers", "text"}``.

    Raises:
        InvalidInputError: a parameter is malformed.
        ActionRefusedError: ``ctx.extras["block_private_addresses"]`` is set and the host is internal.
        StepFailedError: the request failed, or the status is not 2xx while ``check`` is true.
        StepCancelledError / StepTimeoutError: cancelled, or the timeout / step deadline passed.
    """
    check_known(params, PARAMETERS, _ACTION)
    method = (get_str(params, "method", _ACTION) or "GET").upper()
    if method not in METHODS:
        raise InvalidInputError("parameters.method", f"http.request accepts methods {', '.join(METHODS)}")
    url = _url(params)
    options: dict[str, Any] = {"headers": get_str_map(params, "headers", _ACTION), "params": _query(params)}
    if "json" in params and "body" in params:
        raise InvalidInputError("parameters.body", "give either 'json' or 'body', not both")
    if "json" in params:
        options["json"] = params["json"]
    elif "body" in params:
        body = params["body"]
        if not isinstance(body, str):
            raise InvalidInputError("parameters.body", "http.request needs 'body' to be a string")
        options["content"] = body.encode("utf-8")
    timeout = get_number(params, "timeout", DEFAULT_TIMEOUT, _ACTION, maximum=3600.0) or DEFAULT_TIMEOUT
    remaining = ctx.remaining()
    if remaining is not None:
        if remaining <= 0:
            raise StepTimeoutError(ctx.step_name, 0.0)
        timeout = min(timeout, remaining)
    check = get_bool(params, "check", True, _ACTION)
    follow_redirects = get_bool(params, "follow_redirects", False, _ACTION)
    cap = get_max_output_bytes(params, ctx, _ACTION)
    block_internal = bool(ctx.extras.get("block_private_addresses", False))
    ctx.check_cancelled()

    outcome: dict[str, Any] = {}
    done = threading.Event()
    abandon = threading.Event()

    def work() -> None:
        try:
            outcome["value"] = _perform(
                method, url, options, timeout, follow_redirects, block_internal, cap, abandon
            )
        except BaseException as exc:  # handed to the step's thread, which raises or reports it
            outcome["error"] = exc
        finally:
            done.set()

    # A daemon thread: if the step is cancelled while httpx is blocked, the step returns at once and
    # this thread ends by itself within `timeout` (every httpx operation is bounded by it).
    worker = threading.Thread(target=work, name=f"http.request:{ctx.step_name}", daemon=True)
    worker.start()
    end = time.monotonic() + timeout
    while not done.wait(min(_SLICE, max(0.0, end - time.monotonic()))):
        if ctx.cancel_event.is_set():
            abandon.set()
            raise StepCancelledError(ctx.step_name, f"cancelled during {method} {url}")
        if time.monotonic() >= end:
            abandon.set()
            raise StepTimeoutError(ctx.step_name, round(timeout, 3))

    error = outcome.get("error")
    if isinstance(error, OrchestrationError):
        raise error
    if isinstance(error, httpx.TimeoutException):
        raise StepTimeoutError(ctx.step_name, round(timeout, 3)) from error
    if isinstance(error, httpx.HTTPError):
        raise StepFailedError(
            ctx.step_name,
            f"{method} {url} failed: {type(error).__name__}: {error}",
            error_type=type(error).__name__,
        ) from error
    if error is not None:
        raise error
    result: dict[str, Any] | None = outcome.get("value")
    if result is None:  # abandoned; only reachable if cancellation raced completion
        raise StepCancelledError(ctx.step_name, f"cancelled during {method} {url}")
    reason = result.pop("reason", "")
    if check and not 200 <= result["status"] < 300:
        shown = result.get("text")
        if shown is None:
            shown = json.dumps(result.get("json"))
        tail = shown[:_BODY_TAIL]
        raise StepFailedError(
            ctx.step_name,
            f"{method} {url} returned HTTP {result['status']} {reason}".rstrip()
            + (f"; body starts with: {tail}" if tail else "")
            + " (set check: false to get non-2xx responses as output)",
            error_type="HTTPStatusError",
        )
    return result


def register(registry: ActionRegistry) -> None:
    """Add ``http.request`` to ``registry``."""
    registry.register(
        ActionDefinition(
            "http",
            "request",
            request,
            description="Send an HTTP request with httpx; non-2xx fails unless check is false. When the "
            "server sets block_private_addresses, internal hosts are refused.",
            parameters=dict(PARAMETERS),
            output='{"status": int, "headers": object, "json": value} for JSON responses, else '
            '{"status", "headers", "text"} (text capped at max_output_bytes)',
            network=True,
        )
    )
