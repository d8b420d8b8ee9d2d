"""Small, dependency-free functions the sample workflows call through ``python.call``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["count_files", "health_report"]

_SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


def count_files(root: str = ".", suffixes: Sequence[str] = (".py",)) -> dict[str, Any]:
    """Count files and lines under ``root`` by suffix, skipping caches and virtual environments."""
    by_suffix: dict[str, dict[str, int]] = {s: {"files": 0, "lines": 0} for s in suffixes}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        for filename in filenames:
            suffix = Path(filename).suffix
            if suffix in by_suffix:
                by_suffix[suffix]["files"] += 1
                try:
                    with open(os.path.join(dirpath, filename), "rb") as handle:
                        by_suffix[suffix]["lines"] += sum(1 for _ in handle)
                except OSError:
                    continue
    return {"root": str(root), "by_suffix": by_suffix}


def health_report(python: str, files: dict[str, Any], dirty: str, todos: str) -> dict[str, Any]:
    """Fold the repository checks into one verdict with reasons."""
    dirty_files = [line for line in dirty.splitlines() if line.strip()]
    todo_lines = [line for line in todos.splitlines() if line.strip()]
    reasons = []
    if dirty_files:
        reasons.append(f"{len(dirty_files)} uncommitted change(s)")
    if len(todo_lines) > 50:
        reasons.append(f"{len(todo_lines)} TODO markers")
    return {
        "healthy": not reasons,
        "reasons": reasons,
        "python": python,
        "files": files,
        "uncommitted_changes": len(dirty_files),
        "todo_markers": len(todo_lines),
    }
