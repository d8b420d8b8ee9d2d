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
    parser.add_argument("commands", nargs="*", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(
            os.environ,
            log_level=args.log_level,
            state_dir=args.state_dir,
            config_dir=args.config_dir,
            projects_dir=args.projects_dir,
        )
    except OrchestrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    parser.print_help(sys.stderr)
    return 2
