"""The lines ``serve`` prints to stderr once its HTTP port is bound: where it listens, whether auth and
code execution are on, and commands that work as printed (Inspector, Claude Code, health)."""

from __future__ import annotations

import shlex

from codomyrmex_orchestration import __version__
from codomyrmex_orchestration.config import Settings
from codomyrmex_orchestration.server._hardening import is_loopback

__all__ = ["http_banner", "reachable_host"]

#: The Inspector the printed command runs: major 2 has --header (and needs Node.js 22.19 or newer).
INSPECTOR = "@modelcontextprotocol/inspector@2"

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}


def reachable_host(host: str) -> str:
    """The host part of a URL that reaches a server bound to ``host`` from this machine: for a bind to
    every interface, the loopback address of its family (a wildcard is no address to connect to, and
    the Host check accepts loopback names); else ``host`` itself, bracketed when it is IPv6."""
    bare = host.strip("[]")
    if bare in _WILDCARDS:
        return _WILDCARDS[bare]
    return f"[{bare}]" if ":" in bare else bare


def _other_hosts(settings: Settings) -> str:
    """Which names a request may give this server in Host/Origin; another Host gets 421, another Origin
    403 (DNS-rebinding protection), and how to accept one more."""
    bound = settings.host.strip("[]")
    names = ["loopback", *([] if bound in _WILDCARDS else [reachable_host(bound)]), *settings.allowed_hosts]
    return (
        f"Host/Origin other than {', '.join(names)} get 421/403; "
        "accept one with --allowed-host NAME (CODOMYRMEX_ALLOWED_HOSTS)"
    )


def _auth_header(settings: Settings) -> str:
    """The ``Authorization`` header argument as a shell word that expands to the token (never the token)."""
    if settings.auth_token is not None:
        return '"Authorization: Bearer $CODOMYRMEX_AUTH_TOKEN"'
    assert settings.auth_token_file is not None
    return f'"Authorization: Bearer $(cat {shlex.quote(str(settings.auth_token_file.resolve()))})"'


def http_banner(settings: Settings, *, port: int, auth: bool, code_execution: bool) -> str:
    """The banner for a server bound to ``port`` (the real one: ``--port 0`` binds a free port)."""
    base = f"http://{reachable_host(settings.host)}:{port}"
    url = base + ("/sse" if settings.transport == "sse" else "/mcp")
    transport = "sse" if settings.transport == "sse" else "http"
    header = f" --header {_auth_header(settings)}" if auth else ""
    bound = settings.host.strip("[]")
    everywhere = f" (bound to {bound}: every interface)" if bound in _WILDCARDS else ""
    lines = [
        f"codomyrmex-orchestration {__version__}: serving MCP ({settings.transport}) at {url}{everywhere}",
        "  auth:            "
        + (
            "on: every request needs the bearer token"
            if auth
            else "off (loopback only; set CODOMYRMEX_AUTH_TOKEN)"
        ),
        *(
            [f"  other names:     {_other_hosts(settings)}"]
            if settings.allowed_hosts or not is_loopback(settings.host)
            else []
        ),
        "  code execution:  "
        + (
            "on: shell.run, python.call and mcp.call run"
            if code_execution
            else "off: shell.run, python.call and mcp.call are refused (allow with --allow-shell)"
        ),
        f"  state:           {settings.state_dir}  (all paths: codomyrmex-orchestration paths)",
        # Pinned: on a Node.js older than 22.19 an unpinned npx picks Inspector 0.15, which has no --header.
        f"  list the tools:  npx {INSPECTOR} --cli {url} --transport {transport} --method tools/list{header}",
        f"  Claude Code:     claude mcp add --transport {transport} orchestration {url}{header}",
        f"  health:          curl {base}/healthz",
    ]
    if auth and settings.auth_token is not None:
        lines.append("  (export CODOMYRMEX_AUTH_TOKEN in the shell you run these from)")
    return "\n".join(lines)
