"""The ``paths`` subcommand: where state, workflows, projects, templates and the samples live."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from codomyrmex_orchestration.config import ENV_PREFIX, Settings

__all__ = ["add_paths_parser", "cmd_paths"]

_NOTES = {
    "data_dir": "holds the seven below unless each is set",
    "state_dir": "runs, sessions, workflows created through the tools",
    "state_db": "the SQLite state store",
    "config_dir": "your workflow JSON files, loaded at start",
    "projects_dir": "projects made by create_project",
    "templates_dir": "your project/doc templates (optional)",
    "mcp_servers_file": 'the MCP servers mcp.call steps may call, as {"mcpServers": ...} (optional)',
    "secrets_file": "workflow secrets for {{secrets.NAME}}: a JSON object, mode 0600 (optional)",
    "samples_dir": "the shipped sample workflows (read-only)",
}


def add_paths_parser(sub: Any, common: Any) -> None:
    paths = sub.add_parser(
        "paths",
        help="print where state, workflows, projects and templates live (and which setting moves each)",
        description="Every path comes from a setting (flag or CODOMYRMEX_* variable); unset ones sit in "
        "the per-user data directory, so the server finds the same state from any working directory.",
    )
    common(paths)
    paths.add_argument("--json", action="store_true", help="print the paths as a JSON object")


def cmd_paths(args: argparse.Namespace, settings: Settings) -> int:
    paths = settings.paths()
    if args.json:
        sys.stdout.write(json.dumps({name: str(path) for name, path in paths.items()}, indent=2) + "\n")
        return 0
    width = max(map(len, paths))
    for name, path in paths.items():
        exists = "" if path.exists() else "  (not created yet)"
        variable = "" if name in ("state_db", "samples_dir") else f"  [{ENV_PREFIX}{name.upper()}]"
        # A path added to Settings.paths() without a note here still prints (with its variable).
        note = f"{_NOTES.get(name, '')}{variable}".strip()
        sys.stdout.write(f"{name:<{width}}  {path}{exists}\n")
        if note:
            sys.stdout.write(f"{'':<{width}}  {note}\n")
    return 0
