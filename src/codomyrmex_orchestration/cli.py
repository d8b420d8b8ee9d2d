"""The command line: argv -> Settings -> logging -> a subcommand."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from codomyrmex_orchestration import __version__
from codomyrmex_orchestration.config import Settings
from codomyrmex_orchestration.errors import OrchestrationError
from codomyrmex_orchestration.logs import configure_logging

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codomyrmex-orchestration",
        description="Run workflows as DAGs of real actions, and serve them to agents over MCP.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error", "critical"])
    parser.add_argument("--state-dir", help="state directory (default .workflows)")
    parser.add_argument("--config-dir", help="workflow JSON directory (default config/workflows/production)")
    parser.add_argument("--projects-dir", help="projects root (default projects)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_serve_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {
        name: getattr(args, name, None) for name in ("log_level", "state_dir", "config_dir", "projects_dir")
    }
    if args.command == "serve":
        overrides.update(_serve_overrides(args))
    try:
        settings = Settings.from_env(os.environ, **overrides)
    except OrchestrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "serve":
        return _cmd_serve(args, settings)
    parser.print_help(sys.stderr)
    return 2


# --------------------------------------------------------------------------- serve


def _add_serve_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="serve the MCP tools over stdio (default), SSE or streamable HTTP",
        description="Serve the MCP server. Every flag also reads a CODOMYRMEX_* variable "
        "(e.g. --port <- CODOMYRMEX_PORT); flags win.",
    )
    hide = argparse.SUPPRESS  # absent flags must not overwrite values given before the subcommand
    serve.add_argument("--transport", choices=["stdio", "sse", "streamable-http"], default=hide)
    serve.add_argument("--host", default=hide, help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=hide, help="port (default 8765)")
    serve.add_argument("--state-dir", default=hide, help="state directory (default .workflows)")
    serve.add_argument("--config-dir", default=hide, help="workflow JSON directory")
    serve.add_argument("--projects-dir", default=hide, help="projects root (default projects)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error", "critical"], default=hide)
    serve.add_argument(
        "--allow-shell",
        action=argparse.BooleanOptionalAction,
        default=hide,
        help="allow shell.run/python.call (default: allowed on stdio, refused on network transports)",
    )
    serve.add_argument(
        "--auth-token-file", default=hide, help="file with the bearer token (or set CODOMYRMEX_AUTH_TOKEN)"
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=hide,
        dest="allowed_hosts",
        help="a Host/Origin name accepted besides loopback (repeatable)",
    )


def _serve_overrides(args: argparse.Namespace) -> dict[str, object]:
    names = ("transport", "host", "port", "allow_shell", "auth_token_file", "allowed_hosts")
    values: dict[str, object] = {name: getattr(args, name, None) for name in names}
    if getattr(args, "allowed_hosts", None) is not None:
        values["allowed_hosts"] = tuple(args.allowed_hosts)
    return values


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from codomyrmex_orchestration.server.app import serve

    try:
        return serve(settings)
    except OrchestrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
