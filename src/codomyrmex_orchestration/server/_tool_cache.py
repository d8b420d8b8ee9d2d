"""The tool definitions, cached on disk between server starts: building them (every tool's pydantic
argument and result models, then their JSON schemas) is the largest cost of our own code before a cold
server can answer ``tools/list``, and they change only when the code does.

State: one JSON file per installation in the per-user cache directory, keyed like bytecode (every source
file's modification time and size, plus the Python, pydantic and package versions); any difference, an
unreadable or malformed file, or a tools object that is not the stock one means the definitions are
built as before (and the file rewritten when it can be).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import platformdirs
import pydantic

from codomyrmex_orchestration import __version__
from codomyrmex_orchestration.config import APP_NAME
from codomyrmex_orchestration.logs import get_logger
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools

__all__ = ["cache_file", "tool_definitions"]

log = get_logger("codomyrmex_orchestration.server")

#: The package's source tree: any change to a file in it invalidates the cache.
PACKAGE_DIR = Path(__file__).resolve().parent.parent


def cache_file(package_dir: Path = PACKAGE_DIR) -> Path:
    """Where the definitions of the installation at ``package_dir`` are cached (one file per install,
    so several checkouts or virtual environments never overwrite each other's)."""
    install = hashlib.sha256(str(package_dir).encode()).hexdigest()[:16]
    return platformdirs.user_cache_path(APP_NAME, appauthor=False) / f"tool-definitions-{install}.json"


def tool_definitions(
    tools: OrchestrationMCPTools, *, package_dir: Path = PACKAGE_DIR, path: Path | None = None
) -> list[dict[str, Any]]:
    """``tools.get_tool_definitions()``, read from the cache when it was written by the same code."""
    if type(tools) is not OrchestrationMCPTools:  # a subclass may define its tools elsewhere
        return tools.get_tool_definitions()
    path = path if path is not None else cache_file(package_dir)
    key = _key(package_dir)
    cached = _read(path, key)
    if cached is not None:
        return cached
    definitions = tools.get_tool_definitions()
    _write(path, key, definitions)
    return definitions


def _key(package_dir: Path) -> str:
    """Changes whenever a source file is added, removed or modified (the test bytecode uses: its
    modification time and size), and with the interpreter, pydantic (which writes the schemas) or the
    package version. The tools are the stock ones (see tool_definitions), so their names come with the
    source: reading them would build the tool table, which a cold start avoids."""
    files = []
    for folder, dirs, names in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(n for n in names if n.endswith(".py")):
            source = os.path.join(folder, name)
            stat = os.stat(source)
            files.append((os.path.relpath(source, package_dir), stat.st_mtime_ns, stat.st_size))
    parts = [sys.version, pydantic.VERSION, __version__, files]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _read(path: Path, key: str) -> list[dict[str, Any]] | None:
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("key") != key:
        return None
    definitions = document.get("definitions")
    if not isinstance(definitions, list) or not all(isinstance(d, dict) for d in definitions):
        return None
    return definitions


def _write(path: Path, key: str, definitions: list[dict[str, Any]]) -> None:
    """Atomically (a reader never sees half a file; concurrent starts each replace it whole)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump({"key": key, "definitions": definitions}, out, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:  # a read-only home or a full disk: the next start builds them again
        log.debug("tool_cache.not_written", path=str(path), error=str(exc))
