"""``<state_dir>/server.json``: what the serving process tells other processes on its state directory —
its pid, where its run view is (HTTP), and its health verdict as it last changed — so that the CLI's
``show --open``, ``health`` and ``status`` can report on the server and not only on themselves.

State owned: the file and the fields this process wrote to it (guarded by ``_lock``). The file is
written whole to a temporary file and renamed over, so a reader never sees half of it, and removed at
exit if it is still this process's. Imports no ``mcp``: the CLI reads it.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from codomyrmex_orchestration.logs import get_logger

__all__ = ["SERVER_FILE", "ServerRecord", "read_record"]

SERVER_FILE = "server.json"

log = get_logger("codomyrmex_orchestration.server")


class ServerRecord:
    """This process's ``server.json`` in ``state_dir``; :meth:`update` merges fields into it."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / SERVER_FILE
        self._fields: dict[str, Any] = {"pid": os.getpid()}
        self._lock = threading.Lock()
        self._written = False
        self._warned = False

    def update(self, **fields: Any) -> None:
        """Write ``fields`` (with those written before). Never raises: a state directory that cannot
        be written is reported by health; the failure is logged once."""
        with self._lock:
            self._fields.update(fields)
            try:
                if not self._written:  # later, a directory deleted under the server stays deleted
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(".json.tmp")
                tmp.write_text(json.dumps(self._fields), encoding="utf-8")
                tmp.replace(self.path)
                self._written = True
            except OSError as exc:
                if not self._warned:
                    self._warned = True
                    log.warning("server.record_failed", path=str(self.path), error=exc.strerror or str(exc))

    def remove(self) -> None:
        """Remove the file if it is still this process's (another server may have taken the directory)."""
        with self._lock:
            if not self._written:
                return
            record = _read(self.path)
            if record is not None and record.get("pid") == os.getpid():
                try:
                    self.path.unlink()
                except OSError:
                    pass


def _read(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_record(state_dir: Path) -> dict[str, Any] | None:
    """The record of a live server of ``state_dir``, or ``None`` (none written, or its process is gone)."""
    record = _read(state_dir / SERVER_FILE)
    if record is None:
        return None
    try:
        os.kill(int(record["pid"]), 0)  # signal 0: is it alive?
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record
