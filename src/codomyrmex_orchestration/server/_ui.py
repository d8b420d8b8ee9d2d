"""The run view: one read-only page of workflows and runs, at ``/ui/`` in a browser and as an MCP App.

The page (``ui/run_view.html``, package data, no libraries) draws a workflow's DAG by dependency level,
each step coloured by status, and follows a run until it ends. It reads only through four read-only
tools (:data:`READ_TOOLS`): in a browser through ``POST /ui/api/call``, inside an MCP host through the
host's bridge (``tools/call`` over postMessage). This module owns the page's HTTP routes and who may see
them (:class:`UiAccess`: the bearer token, or a cookie derived from it, or a one-time login link).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import html
import json
import math
import secrets
import threading
import uuid
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from codomyrmex_orchestration.logs import get_logger
from codomyrmex_orchestration.server._hardening import is_loopback
from codomyrmex_orchestration.server._server_record import read_record
from codomyrmex_orchestration.server._ui_sessions import UiSessions
from codomyrmex_orchestration.server._ui_throttle import SignInThrottle

if TYPE_CHECKING:
    from starlette.types import Scope

    from codomyrmex_orchestration.server.tools import OrchestrationMCPTools

__all__ = [
    "APP_META",
    "APP_MIME_TYPE",
    "COOKIE_NAME",
    "EXTENSION_ID",
    "READ_TOOLS",
    "UI_RESOURCE_URI",
    "UI_TOOLS",
    "UiAccess",
    "app_html",
    "ui_routes",
]

#: The MCP App resource the linked tools point at (``_meta.ui.resourceUri``).
UI_RESOURCE_URI = "ui://codomyrmex-orchestration/run-view.html"
#: The resource's ``_meta`` (MCP Apps ``UIResourceMeta``). No ``csp``: the page loads nothing from anywhere,
#: so the host's restrictive default (inline script and style, ``data:`` images, no connections) is all it
#: needs. A border, stated because hosts' defaults differ (the specification recommends saying): the view
#: has no frame of its own.
APP_META: dict[str, Any] = {"ui": {"prefersBorder": True}}
#: Tools whose results the view can show: a run (execute, get) or a definition (create).
UI_TOOLS = ("execute_workflow", "get_workflow_run", "create_workflow")
#: The only tools the page may call: it is a view, never a way to change anything.
READ_TOOLS = frozenset({"list_workflows", "get_workflow", "list_workflow_runs", "get_workflow_run"})
#: The start of the run view cookie's name (the rest is per server: :attr:`UiAccess.cookie_name`).
COOKIE_NAME = "codomyrmex_ui"
log = get_logger("codomyrmex_orchestration.server")
_MODE_MARK = '/*MODE*/"app"'
_SIGN_OUT_MARK = '<form id="sign-out" hidden'
_MAX_BODY = 64 * 1024
_TOO_LARGE = f"Request body too large: the run view takes at most {_MAX_BODY // 1024} KiB"
_TOO_DEEP = 'the body is JSON nested too deeply to read; expected {"name": <tool>, "arguments": {...}}'
_NEEDS_TOKEN = "This page needs the server's bearer token."
_REALM = 'Bearer realm="codomyrmex-orchestration"'
_NOT_FRAMED = {"X-Frame-Options": "DENY"}  # for browsers that predate CSP's frame-ancestors
_PAGE_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", **_NOT_FRAMED}
# The sign-in page: one script of its own (a nonce), its own inline style, a form posting to this server,
# never framed. Not Referrer-Policy: no-referrer: a form posted under it carries "Origin: null", which the
# check refuses.
_LOGIN_HEADERS = {"Cache-Control": "no-store", **_NOT_FRAMED, "WWW-Authenticate": _REALM}


def _login_csp(nonce: str) -> str:
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    )


@functools.cache
def _page() -> str:
    return resources.files(__package__).joinpath("ui/run_view.html").read_text(encoding="utf-8")


def app_html() -> str:
    """The page as an MCP App: it waits for the host's tool result and reads through the host bridge."""
    return _page()


def _browser_page(nonce: str, *, signed_in: bool) -> str:
    page = _page().replace(_MODE_MARK, '"browser"', 1).replace("<script>", f'<script nonce="{nonce}">', 1)
    # Only a server with a token has a sign-in to end: its page shows the sign-out button.
    return page.replace(_SIGN_OUT_MARK, '<form id="sign-out"', 1) if signed_in else page


def _csp(nonce: str) -> str:
    return (
        "default-src 'none'; "
        f"script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


_LOGIN_FORM = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in · run view</title>
<style>body{{font:14px system-ui,sans-serif;margin:40px auto;max-width:420px;color:#1f2937}}
input{{width:100%;padding:6px;margin:8px 0}}.error{{color:#dc2626}}</style></head><body>
<h1>codomyrmex-orchestration</h1><p>{message}</p>
<form method="post" action="/ui/login"><label>Bearer token
<input type="password" name="token" autocomplete="current-password" autofocus></label>
<button type="submit">Sign in</button></form>
<script nonce="{nonce}">if (location.hash) document.forms[0].action = "/ui/login" + location.hash;</script>
</body></html>"""
# The script keeps the address's #fragment (the run a link named) through sign-in: the browser never sends
# a fragment, but it posts to the action's URL and carries that URL's fragment over the 303 to /ui/ (a
# redirect whose Location has none inherits it), so the server never reads or redirects to it.


class UiAccess:
    """Who may read ``/ui/``: the bearer token (header), a sign-in's cookie, or a one-time login code.

    Each sign-in's cookie names a session of its own, signed with a key derived from the token
    (:class:`UiSessions`), so it never carries the token itself, stops working when the token changes,
    and stops working when signed out (:meth:`sign_out`). Its name (:attr:`cookie_name`) is derived from
    the token too: browsers keep cookies per host, not per port, and two servers on one host (or two
    containers behind one) must not overwrite each other's sign-in; servers sharing a token accept each
    other's cookies. One-time codes are kept in memory (guarded by ``_lock``) and spent on use; failed
    sign-ins are counted per client address (:attr:`throttle`).

    Args:
        token: the server's bearer token, or None when the server runs without auth (loopback only).
        sign_outs: the file that keeps sign-outs across restarts (None: in memory only).
    """

    def __init__(self, token: str | None, *, sign_outs: Path | None = None) -> None:
        self.token = token
        key = hmac.new(token.encode(), b"codomyrmex-ui-session", hashlib.sha256).digest() if token else None
        self._sessions = UiSessions(key, path=sign_outs) if key is not None else None
        self.throttle = SignInThrottle()
        tag = (
            hmac.new(token.encode(), b"codomyrmex-ui-cookie-name", hashlib.sha256).hexdigest()
            if token
            else ""
        )
        self.cookie_name = f"{COOKIE_NAME}_{tag[:12]}" if tag else COOKIE_NAME
        self._lock = threading.Lock()
        self._codes: set[str] = set()

    @property
    def required(self) -> bool:
        return self.token is not None

    def one_time_code(self) -> str:
        """A code for ``/ui/login?code=...`` that signs a browser in once (printed in the banner)."""
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._codes.add(code)
        return code

    def redeem(self, code: str) -> bool:
        with self._lock:
            for known in self._codes:
                if hmac.compare_digest(known.encode(), code.encode()):
                    self._codes.discard(known)
                    return True
        return False

    def token_ok(self, presented: str) -> bool:
        return self.token is None or hmac.compare_digest(presented.strip().encode(), self.token.encode())

    def _cookies(self, scope: Scope) -> list[str]:
        """The values of this server's UI cookies the request carries."""
        found = []
        for key, value in scope.get("headers", []):
            if key != b"cookie":
                continue
            for part in value.decode("latin-1").split(";"):
                name, _, content = part.strip().partition("=")
                if name == self.cookie_name:
                    found.append(content)
        return found

    def cookie_ok(self, scope: Scope) -> bool:
        """True when the request carries a valid sign-in cookie of this server (or no auth is required)."""
        sessions = self._sessions
        return sessions is None or any(sessions.valid(value) for value in self._cookies(scope))

    def sign_out(self, request: Request) -> Response:
        """Revoke the request's sign-in (its cookie is refused from now on) and go to the sign-in form."""
        if self._sessions is None:
            return RedirectResponse("/ui/", status_code=303)
        for value in self._cookies(request.scope):
            self._sessions.revoke(value)
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(self.cookie_name, path="/ui", httponly=True, samesite="strict")
        return response

    def signed_in(self, request: Request, target: str = "/ui/") -> Response:
        response = RedirectResponse(target, status_code=303)
        if self._sessions is not None:
            # Secure where the browser will send it back: HTTPS, or plain HTTP to a loopback name (which
            # browsers treat as a secure context); over plain HTTP to another host a Secure cookie is
            # dropped and the sign-in would loop.
            secure = request.url.scheme == "https" or is_loopback(request.url.hostname or "")
            response.set_cookie(
                self.cookie_name,
                self._sessions.issue(),
                path="/ui",
                httponly=True,
                secure=secure,
                samesite="strict",
            )
        return response

    def login_page(
        self, message: str = _NEEDS_TOKEN, status: int = 401, headers: dict[str, str] | None = None
    ) -> Response:
        nonce = secrets.token_urlsafe(16)
        return HTMLResponse(
            _LOGIN_FORM.format(message=html.escape(message), nonce=nonce),
            status_code=status,
            headers={**_LOGIN_HEADERS, "Content-Security-Policy": _login_csp(nonce), **(headers or {})},
        )

    def refused(self, address: str, message: str) -> Response:
        """A failed sign-in from ``address``: counted, and said (with the wait it now has, if any)."""
        wait = self.throttle.failed(address)
        return self.too_many(wait, message) if wait else self.login_page(message)

    def too_many(self, wait: float, first: str = "") -> Response:
        """429: ``address`` failed too often and must wait ``wait`` seconds (Retry-After)."""
        seconds = max(math.ceil(wait), 1)
        message = (
            f"{first + ' ' if first else ''}Too many failed sign-ins from this address "
            f"(more than {self.throttle.free}): try again in {seconds} s; each further failure doubles the "
            "wait."
        )
        return self.login_page(message, status=429, headers={"Retry-After": str(seconds)})


def ui_routes(
    tools: OrchestrationMCPTools, access: UiAccess, security: TransportSecuritySettings
) -> list[Route]:
    """The ``/ui/`` routes. Auth is the caller's middleware (see ``BearerAuthMiddleware``); the
    Host/Origin checks (DNS rebinding) are here, the same settings as ``/mcp``: 421 / 403."""
    guard = TransportSecurityMiddleware(security)

    async def page(request: Request) -> Response:
        if refused := await guard.validate_request(request):
            return refused
        nonce = secrets.token_urlsafe(16)
        return HTMLResponse(
            _browser_page(nonce, signed_in=access.required),
            headers={"Content-Security-Policy": _csp(nonce), **_PAGE_HEADERS},
        )

    async def login(request: Request) -> Response:
        if refused := await guard.validate_request(request):
            return refused
        if not access.required:
            return RedirectResponse("/ui/", status_code=303)
        code = request.query_params.get("code") if request.method == "GET" else None
        if request.method == "GET" and code is None:
            return access.login_page(status=200)
        # While an address waits, a wrong try (and any code: one is never checked then) counts again, so
        # the wait goes on growing; the right token is refused without counting.
        address = request.client.host if request.client is not None else ""
        waiting = access.throttle.retry_after(address)
        if code is not None:
            if not waiting and access.redeem(code):
                access.throttle.succeeded(address)
                return access.signed_in(request)
            return access.refused(
                address, "" if waiting else "That sign-in link was used already or is not valid."
            )
        body = await _bounded_body(request)
        if body is None:
            return PlainTextResponse(f"{_TOO_LARGE}; the sign-in form sends far less", status_code=413)
        token = parse_qs(body.decode("utf-8", errors="replace")).get("token", [""])[0]
        if token and access.token_ok(token):
            if waiting:
                return access.too_many(waiting)
            access.throttle.succeeded(address)
            return access.signed_in(request)
        return access.refused(address, "Wrong token.")

    async def logout(request: Request) -> Response:
        if refused := await guard.validate_request(request):
            return refused
        return access.sign_out(request)

    async def call(request: Request) -> Response:
        if refused := await guard.validate_request(request, is_post=True):
            return refused
        raw = await _bounded_body(request)
        if raw is None:
            return JSONResponse(
                {"error": f"{_TOO_LARGE}; a call to a read tool needs far less"}, status_code=413
            )
        try:
            body = json.loads(raw or b"{}")
            name, arguments = body["name"], body.get("arguments") or {}
            if not isinstance(name, str) or not isinstance(arguments, dict):
                raise TypeError
        except RecursionError:
            return JSONResponse({"error": _TOO_DEEP, "tools": sorted(READ_TOOLS)}, status_code=400)
        except (ValueError, KeyError, TypeError):
            return JSONResponse(
                {"error": 'expected {"name": <tool>, "arguments": {...}}', "tools": sorted(READ_TOOLS)},
                status_code=400,
            )
        if name not in READ_TOOLS:
            refusal = f"the run view only reads; {name!r} is not one of {sorted(READ_TOOLS)}"
            return JSONResponse({"error": refusal}, status_code=403)
        result = await tools.execute_tool_async(name, arguments)
        return JSONResponse(_call_result(result), headers={"Cache-Control": "no-store"})

    return [
        Route("/ui", endpoint=lambda request: RedirectResponse("/ui/", status_code=307)),
        Route("/ui/", endpoint=_reported(page), methods=["GET"]),
        Route("/ui/login", endpoint=_reported(login), methods=["GET", "POST"]),
        Route("/ui/logout", endpoint=_reported(logout), methods=["POST"]),
        Route("/ui/api/call", endpoint=_reported(call), methods=["POST"]),
    ]


def _reported(endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """``endpoint``, answering an unexpected failure as every route of the server does: logged with a
    reference id, which the client gets (never a stack trace)."""

    @functools.wraps(endpoint)
    async def answer(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        except Exception as exc:
            ref = uuid.uuid4().hex[:12]
            log.error("ui.internal_error", path=request.url.path, ref=ref, exc_info=exc)
            message = f"internal error (ref {ref}); the server logged the details"
            return JSONResponse({"error": message}, status_code=500)

    return answer


async def _bounded_body(request: Request) -> bytes | None:
    """The request's body, or None when it is over ``_MAX_BODY``: declared so, or once that much has
    arrived. It never reads past the limit, so a body without end costs nothing (the sign-in form is
    open to anyone)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > _MAX_BODY:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_BODY:
            return None
    return bytes(body)


def _call_result(result: Any) -> dict[str, Any]:
    """A ``CallToolResult``-shaped dict, the same shape the MCP App receives through its host."""
    return {
        "isError": result.is_error,
        "content": [{"type": "text", "text": result.text}],
        "structuredContent": result.structured,
    }


def served_ui(state_dir: Path) -> str | None:
    """The run view's base URL of a server running on ``state_dir``, or None (none recorded, or its
    process is gone)."""
    record = read_record(state_dir)
    ui = record.get("ui") if record is not None else None
    return ui if isinstance(ui, str) else None


def ui_path(path: str) -> bool:
    """True for the run view's paths (they accept the UI cookie in place of the bearer header)."""
    return path == "/ui" or path.startswith("/ui/")
