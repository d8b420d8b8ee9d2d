"""A commit of the SQLite store that failed for a reason that passes by itself (a lock another process
holds, a full disk): which sqlite errors those are, what to tell the operator, when to try again.

State owned: :class:`Stall`, one per writer, guarded by the writer's lock: the cause while commits
fail, since when, the attempts and the flushes refused since, and the writes lost past the bound.
Its log lines are returned to the writer, which logs them outside its lock: one when saving stops
(the cause and what to do), one when it works again (how long, how many writes waited).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from ._store_batch import Batch

__all__ = ["CLOSE_RETRY", "MAX_WAITING", "Stall", "put_back", "transient_cause"]

#: Writes (state writes and event rows) kept waiting behind a failing commit; past it a new write is
#: lost (counted). New runs are refused while commits fail, so only work in flight adds writes.
MAX_WAITING = 50_000
#: The first wait before a failed commit is tried again, doubled after each failure up to the last.
FIRST_RETRY = 0.1
MAX_RETRY = 2.0
#: How long closing keeps trying to commit what waits (a lock held by a backup passes in seconds).
CLOSE_RETRY = 5.0

# SQLite's primary result codes that pass by themselves, with what to do meanwhile. Every other code
# (CORRUPT, NOTADB, READONLY, CANTOPEN, PERM, a schema or SQL error) is permanent.
_BUSY, _LOCKED, _NOMEM, _IOERR, _FULL, _PROTOCOL = 5, 6, 7, 10, 13, 15
_LOCK_ADVICE = (
    "another process holds a lock on the database file (a sqlite3 shell, a backup, a CLI): find it "
    "with `fuser {path}` (or `lsof {path}`) and end its transaction"
)
_ADVICE = {
    _BUSY: _LOCK_ADVICE,
    _LOCKED: _LOCK_ADVICE,
    _FULL: "the disk holding {dir} is full: free space there",
    _IOERR: "an I/O error writing {path}: check the disk holding {dir} (full, failing or unmounted)",
    _PROTOCOL: "another process is changing the file's WAL mode: it passes by itself",
    _NOMEM: "the process is out of memory",
}
_BY_TEXT = {"database is locked": _LOCKED, "database or disk is full": _FULL, "disk I/O error": _IOERR}


def transient_cause(exc: sqlite3.Error, path: str) -> str | None:
    """What to do about ``exc`` if it passes by itself (the commit is tried again), else None."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else _BY_TEXT.get(str(exc))
    advice = _ADVICE.get(primary) if primary is not None else None
    return advice.format(path=path, dir=Path(path).parent) if advice is not None else None


def put_back(failed: Batch, newer: Batch) -> Batch:
    """``failed`` (a batch whose commit failed) with the writes enqueued since on top: a key saved again
    since keeps its newer value, statements keep their order; its event rows are taken out (the writer
    puts them back in front of its log)."""
    for f in fields(Batch):
        mine, theirs = getattr(failed, f.name), getattr(newer, f.name)
        if isinstance(mine, dict):
            mine.update(theirs)
        elif f.name == "statements":
            mine.extend(theirs)
    failed.size += newer.size - len(failed.events)
    failed.events = []
    return failed


class Stall:
    """The writer's transient failure; ``reason`` is None while commits succeed."""

    __slots__ = ("attempts", "lost", "reason", "refused", "since")

    def __init__(self) -> None:
        self.reason: str | None = None
        self.since = 0.0
        self.attempts = 0
        self.refused = 0  # flushes that raised meanwhile (a step's start, a run's end)
        self.lost = 0  # writes refused past MAX_WAITING meanwhile

    def failed(self, reason: str, cause: str, waiting: int) -> dict[str, Any] | None:
        """A commit failed transiently; the log line to write when saving has just stopped."""
        self.attempts += 1
        if self.reason is not None:
            self.reason = f"{reason}; {cause}"
            return None
        self.reason, self.since, self.refused, self.lost = f"{reason}; {cause}", time.monotonic(), 0, 0
        return {
            "reason": reason,
            "what_to_do": cause,
            "writes_waiting": waiting,
            "retry": f"every {FIRST_RETRY:g}-{MAX_RETRY:g} s; new runs are refused until a commit works",
        }

    def delay(self) -> float:
        backoff: float = FIRST_RETRY * 2.0 ** max(self.attempts - 1, 0)
        return min(backoff, MAX_RETRY)

    def lose(self) -> bool:
        """A write past MAX_WAITING is lost; True for the first one (log it)."""
        self.lost += 1
        return self.lost == 1

    def ended(self, waited: int) -> dict[str, Any]:
        """A commit worked again: the log line saying so (the stall is cleared)."""
        line = {
            "seconds": round(time.monotonic() - self.since, 3),
            "writes_waited": waited,
            "attempts": self.attempts,
            "flushes_refused": self.refused,
            "writes_lost": self.lost,
        }
        self.reason, self.attempts = None, 0
        return line
