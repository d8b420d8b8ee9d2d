"""The tool definitions, cached on disk between server starts: building them (every tool's pydantic
argument and result models, then their JSON schemas) is the largest cost of our own code before a cold
server can answer ``tools/list``, and they change only when the code does.

State: one JSON file per installation in the per-user cache directory, keyed like bytecode (every source
file's modification time and size, plus the Python, pydantic and package versions); any difference, an
unreadable or malformed file, or a tools object that is not the stock one means the definitions are
built as before (and the file rewritten when it can be). Writing one removes the files of installations
that are gone; with no home to place the directory in, nothing is cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pydantic

from codomyrmex_orchestration import __version__
from codomyrmex_orchestration.config import per_user_dir
from codomyrmex_orchestration.logs import get_logger
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools

__all__ = ["cache_file", "tool_definitions"]

log = get_logger("codomyrmex_orchestration.server")

#: The package's source tree: any change to a file in it invalidates the cache.
PACKAGE_DIR = Path(__file__).resolve().parent.parent

_PREFIX = "tool-definitions-"


def cache_file(package_dir: Path = PACKAGE_DIR) -> Path | None:
    """Where the definitions of the installation at ``package_dir`` are cached (one file per install,
    so several checkouts or virtual environments never overwrite each other's); None when the per-user
    cache directory cannot be placed (no absolute home): the definitions are then built at each start."""
    folder = per_user_dir("cache")
    if folder is None:
        return None
    install = hashlib.sha256(str(package_dir).encode()).hexdigest()[:16]
    return folder / f"{_PREFIX}{install}.json"


def tool_definitions(
    tools: OrchestrationMCPTools, *, package_dir: Path = PACKAGE_DIR, path: Path | None = None
) -> list[dict[str, Any]]:
    """``tools.get_tool_definitions()``, read from the cache when it was written by the same code."""
    if type(tools) is not OrchestrationMCPTools:  # a subclass may define its tools elsewhere
        return tools.get_tool_definitions()
    path = path if path is not None else cache_file(package_dir)
    if path is None:
        return tools.get_tool_definitions()
    key = _key(package_dir)
    cached = _read(path, key)
    if cached is not None:
        return cached
    definitions = tools.get_tool_definitions()
    _write(path, key, package_dir, definitions)
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


def _write(path: Path, key: str, package_dir: Path, definitions: list[dict[str, Any]]) -> None:
    """Atomically (a reader never sees half a file; concurrent starts each replace it whole); then the
    files of installations that no longer exist are removed, so uninstalled ones do not pile up."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                document = {"key": key, "package_dir": str(package_dir), "definitions": definitions}
                json.dump(document, out, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:  # a read-only home or a full disk: the next start builds them again
        log.debug("tool_cache.not_written", path=str(path), error=str(exc))
        return
    _remove_stale(path)


def _remove_stale(kept: Path) -> None:
    """Remove the other cache files whose installation's folder is gone (or that do not say which it is:
    written before files named it, they would never be read again either)."""
    for other in kept.parent.glob(f"{_PREFIX}*.json"):
        if other == kept:
            continue
        try:
            document = json.loads(other.read_bytes())
        except OSError:  # another start removed it first, or it is not ours to read
            continue
        except ValueError:
            document = None
        owner = document.get("package_dir") if isinstance(document, dict) else None
        if isinstance(owner, str) and os.path.isdir(owner):
            continue
        with contextlib.suppress(OSError):  # another start removed it first
            other.unlink()
