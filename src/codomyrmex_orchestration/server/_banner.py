"""The lines ``serve`` prints to stderr once its HTTP port is bound: where it listens, whether auth and
code execution are on, and commands that work as printed (Inspector, Claude Code, health)."""

from __future__ import annotations

import shlex

from codomyrmex_orchestration import __version__
from codomyrmex_orchestration.config import Settings

__all__ = ["http_banner"]


def _auth_header(settings: Settings) -> str:
    """The ``Authorization`` header argument as a shell word that expands to the token (never the token)."""
    if settings.auth_token is not None:
        return '"Authorization: Bearer $CODOMYRMEX_AUTH_TOKEN"'
    assert settings.auth_token_file is not None
    return f'"Authorization: Bearer $(cat {shlex.quote(str(settings.auth_token_file.resolve()))})"'


def http_banner(settings: Settings, *, port: int, auth: bool, code_execution: bool) -> str:
    """The banner for a server bound to ``port`` (the real one: ``--port 0`` binds a free port)."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    base = f"http://{host}:{port}"
    url = base + ("/sse" if settings.transport == "sse" else "/mcp")
    transport = "sse" if settings.transport == "sse" else "http"
    header = f" --header {_auth_header(settings)}" if auth else ""
    lines = [
        f"codomyrmex-orchestration {__version__}: serving MCP ({settings.transport}) at {url}",
        "  auth:            "
        + (
            "on: every request needs the bearer token"
            if auth
            else "off (loopback only; set CODOMYRMEX_AUTH_TOKEN)"
        ),
        "  code execution:  "
        + (
            "on: shell.run, python.call and mcp.call run"
            if code_execution
            else "off: shell.run, python.call and mcp.call are refused (allow with --allow-shell)"
        ),
        f"  state:           {settings.state_dir}  (all paths: codomyrmex-orchestration paths)",
        f"  list the tools:  npx @modelcontextprotocol/inspector --cli {url} --transport {transport}"
        f" --method tools/list{header}",
        f"  Claude Code:     claude mcp add --transport {transport} orchestration {url}{header}",
        f"  health:          curl {base}/healthz",
    ]
    if auth and settings.auth_token is not None:
        lines.append("  (export CODOMYRMEX_AUTH_TOKEN in the shell you run these from)")
    return "\n".join(lines)
