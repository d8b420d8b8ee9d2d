"""The ``paths`` subcommand: where state, workflows, projects, templates and the samples live."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from codomyrmex_orchestration.config import ENV_PREFIX, Settings, per_user_dir

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
    "cache_dir": "the tool definitions, cached between starts (safe to delete)",
}
#: Paths no CODOMYRMEX_* setting moves, with the variable that does (or none).
_VARIABLES = {"state_db": "", "samples_dir": "", "cache_dir": "  [XDG_CACHE_HOME]"}


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
    paths: dict[str, Path | None] = {**settings.paths(), "cache_dir": per_user_dir("cache")}
    if args.json:
        listed = {name: None if path is None else str(path) for name, path in paths.items()}
        sys.stdout.write(json.dumps(listed, indent=2) + "\n")
        return 0
    width = max(map(len, paths))
    for name, path in paths.items():
        if path is None:  # the cache, with no home to place it in
            sys.stdout.write(f"{name:<{width}}  (none: no absolute HOME, so nothing is cached)\n")
            sys.stdout.write(f"{'':<{width}}  {_NOTES[name]}{_VARIABLES[name]}\n")
            continue
        exists = "" if path.exists() else "  (not created yet)"
        variable = _VARIABLES.get(name, f"  [{ENV_PREFIX}{name.upper()}]")
        # A path added to Settings.paths() without a note here still prints (with its variable).
        note = f"{_NOTES.get(name, '')}{variable}".strip()
        sys.stdout.write(f"{name:<{width}}  {path}{exists}\n")
        if note:
            sys.stdout.write(f"{'':<{width}}  {note}\n")
    return 0
