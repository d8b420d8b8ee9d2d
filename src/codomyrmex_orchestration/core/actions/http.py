"""The ``http`` module: ``http.request`` with httpx. The request runs in a helper thread so that the step
ends promptly on cancellation or deadline even while a connect or read is blocked. Where internal
addresses are blocked, redirects are followed here, hop by hop, each connecting only to the address the
guard (``_netguard``) checked."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx

from codomyrmex_orchestration._redact import redact_text
from codomyrmex_orchestration.core.actions._netguard import AddressGuard
from codomyrmex_orchestration.core.actions._params import (
    CappedBuffer,
    ParameterReaders,
    get_bool,
    get_max_output_bytes,
    get_number,
    get_str,
    get_str_map,
    output_cap,
)
from codomyrmex_orchestration.core.actions._registry import ActionContext, ActionDefinition, ActionRegistry
from codomyrmex_orchestration.errors import (
    InvalidInputError,
    OrchestrationError,
    StepCancelledError,
    StepFailedError,
    StepTimeoutError,
)

__all__ = ["DEFAULT_TIMEOUT", "MAX_REDIRECTS", "METHODS", "PARAMETERS", "register", "request"]

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
#: Most redirects followed (httpx's default).
MAX_REDIRECTS = 20


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


def _method(params: Mapping[str, Any]) -> str:
    method = (get_str(params, "method", _ACTION) or "GET").upper()
    if method not in METHODS:
        raise InvalidInputError("parameters.method", f"http.request accepts methods {', '.join(METHODS)}")
    return method


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


def _one_body(params: Mapping[str, Any]) -> None:
    if "json" in params and "body" in params:
        raise InvalidInputError("parameters.body", "give either 'json' or 'body', not both")


def _payload(params: Mapping[str, Any]) -> dict[str, Any]:
    """The request options that carry the body (``json`` or ``content``), if any (``_one_body`` has
    refused both)."""
    if "json" in params:
        return {"json": params["json"]}
    if "body" in params:
        body = params["body"]
        if not isinstance(body, str):
            raise InvalidInputError("parameters.body", "http.request needs 'body' to be a string")
        return {"content": body.encode("utf-8")}
    return {}


#: Every rule of http.request's parameters, run when the step runs and on literal values at validation.
_READERS = ParameterReaders(
    _ACTION,
    PARAMETERS,
    method=(("method",), _method),
    url=(("url",), _url),
    headers=(("headers",), lambda p: get_str_map(p, "headers", _ACTION)),
    query=(("params",), _query),
    one_body=((), _one_body),  # whatever json and body hold, both is wrong
    payload=(("body",), _payload),
    timeout=(("timeout",), lambda p: get_number(p, "timeout", DEFAULT_TIMEOUT, _ACTION, maximum=3600.0)),
    check=(("check",), lambda p: get_bool(p, "check", True, _ACTION)),
    follow_redirects=(("follow_redirects",), lambda p: get_bool(p, "follow_redirects", False, _ACTION)),
    max_output_bytes=(("max_output_bytes",), lambda p: get_max_output_bytes(p, _ACTION)),
)


def _text(buffer: CappedBuffer, cap: int) -> str:
    text = buffer.head()
    if buffer.dropped:
        text += f"\n…[truncated: the body is longer than {cap} bytes]"
    return text


def _pin(request: httpx.Request, guard: AddressGuard) -> None:
    """Point ``request`` at the address ``guard`` checked for its host, keeping the name where it
    matters: the ``Host`` header (set when the request was built) and, for https, the TLS server name
    that is sent (SNI) and that the certificate is verified against."""
    host = request.url.host
    port = request.url.port or (443 if request.url.scheme == "https" else 80)
    address = guard.address_for(host, port)
    if request.url.scheme == "https":
        request.extensions["sni_hostname"] = host
    request.url = request.url.copy_with(host=address)


def _next_hop(
    response: httpx.Response, url: httpx.URL, method: str, options: dict[str, Any]
) -> tuple[httpx.URL, str, dict[str, Any]]:
    """Where a redirect leads, with the method and options the next request uses (httpx's rules: 303,
    and 301/302 after a POST, become a GET without a body; credentials do not cross to another origin)."""
    target = url.join(response.headers["location"])
    if target.scheme not in ("http", "https") or not target.host:
        raise StepFailedError(
            _ACTION, f"redirect to {target} is not an http(s) URL", error_type="UnsupportedProtocol"
        )
    options = dict(options)
    if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
        method = "GET" if method != "HEAD" else method
        options.pop("json", None)
        options.pop("content", None)
    if (target.scheme, target.host, target.port) != (url.scheme, url.host, url.port):
        options["headers"] = {
            k: v for k, v in options["headers"].items() if k.lower() not in ("authorization", "cookie")
        }
    options.pop("params", None)  # the query is already part of the redirect target
    return target, method, options


def _perform(
    method: str,
    url: httpx.URL,
    options: dict[str, Any],
    timeout: float,
    follow_redirects: bool,
    guard: AddressGuard | None,
    cap: int,
    abandon: threading.Event,
) -> dict[str, Any] | None:
    # With a guard, every hop is resolved and checked by it and connects to the checked address; the
    # environment's proxies are ignored (a proxy would make the connection for us, unchecked).
    with httpx.Client(
        timeout=httpx.Timeout(timeout), follow_redirects=False, trust_env=guard is None
    ) as client:
        for _hop in range(MAX_REDIRECTS + 1):
            outgoing = client.build_request(method, url, **options)
            if guard is not None:
                _pin(outgoing, guard)
            response = client.send(outgoing, stream=True)
            try:
                if not (follow_redirects and response.has_redirect_location):
                    return _read(response, cap, abandon)
            finally:
                response.close()
            url, method, options = _next_hop(response, url, method, options)
            if abandon.is_set():
                return None
        raise StepFailedError(
            _ACTION, f"more than {MAX_REDIRECTS} redirects from {url}", error_type="TooManyRedirects"
        )


def _read(response: httpx.Response, cap: int, abandon: threading.Event) -> dict[str, Any] | None:
    body = CappedBuffer(cap)
    for chunk in response.iter_bytes():
        if abandon.is_set():
            return None
        body.add(chunk)
        if body.filled:
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
        ActionRefusedError: ``ctx.extras["block_private_addresses"]`` is set and the host (of any hop)
            is or resolves to an address that is not globally routable and not in
            ``ctx.extras["http_allow"]`` (host names or CIDRs); ``ctx.extras["resolver"]`` replaces
            ``socket.getaddrinfo`` for the one look-up per hop.
        StepFailedError: the request failed, or the status is not 2xx while ``check`` is true.
        StepCancelledError / StepTimeoutError: cancelled, or the timeout / step deadline passed.
    """
    read = _READERS.read(params)
    method: str = read["method"]
    url: httpx.URL = read["url"]
    # Messages show the URL as the step wrote it: httpx's form lowercases the host and percent-encodes
    # the path, which hid a secret in it from redaction (now caught too) and is not what the user wrote.
    written = params["url"]
    options: dict[str, Any] = {"headers": read["headers"], **read["payload"]}
    if read["query"]:  # an empty mapping would replace the URL's own query
        options["params"] = read["query"]
    timeout: float = read["timeout"] or DEFAULT_TIMEOUT
    remaining = ctx.remaining()
    if remaining is not None:
        if remaining <= 0:
            raise StepTimeoutError(ctx.step_name, 0.0)
        timeout = min(timeout, remaining)
    check: bool = read["check"]
    follow_redirects: bool = read["follow_redirects"]
    cap = output_cap(read["max_output_bytes"], ctx)
    guard = (
        AddressGuard(ctx.extras.get("http_allow", ()), resolver=ctx.extras.get("resolver"))
        if ctx.extras.get("block_private_addresses", False)
        else None
    )
    ctx.check_cancelled()

    outcome: dict[str, Any] = {}
    done = threading.Event()
    abandon = threading.Event()

    def work() -> None:
        try:
            outcome["value"] = _perform(method, url, options, timeout, follow_redirects, guard, cap, abandon)
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
            raise StepCancelledError(ctx.step_name, f"cancelled during {method} {written}")
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
            f"{method} {written} failed: {type(error).__name__}: {error}",
            error_type=type(error).__name__,
        ) from error
    if error is not None:
        raise error
    result: dict[str, Any] | None = outcome.get("value")
    if result is None:  # abandoned; only reachable if cancellation raced completion
        raise StepCancelledError(ctx.step_name, f"cancelled during {method} {written}")
    reason = result.pop("reason", "")
    if check and not 200 <= result["status"] < 300:
        shown = result.get("text")
        if shown is None:
            shown = json.dumps(result.get("json"))
        tail = redact_text(shown)[:_BODY_TAIL]  # redacted before the cut: no secret is left half-shown
        raise StepFailedError(
            ctx.step_name,
            f"{method} {written} returned HTTP {result['status']} {reason}".rstrip()
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
            check=_READERS.check,
        )
    )
