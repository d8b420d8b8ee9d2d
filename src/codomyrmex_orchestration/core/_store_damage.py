"""Telling a damaged database file from other SQLite failures: the reason shown for any failure, with
what to do when the file is damaged, and the first damage a store has met (its health reports it).

State owned: :class:`Damage`, one per store, behind its own lock (reads and commits note it on any
thread).
"""

from __future__ import annotations

import sqlite3
import threading

__all__ = ["ADVICE", "Damage", "is_damage", "sqlite_reason"]

#: SQLite's primary result codes for a damaged file and for a file that is not a database.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
ADVICE = (
    "the file is damaged or is not an SQLite database; move it away (with its -wal and -shm files) "
    "to start afresh"
)


def is_damage(exc: BaseException) -> bool:
    """Whether ``exc`` says the database file is damaged (malformed, or not a database at all)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc)
    return "malformed" in text or "not a database" in text


def sqlite_reason(exc: BaseException) -> str:
    """``exc``'s message, with :data:`ADVICE` when it says the file is damaged."""
    text = str(exc) or type(exc).__name__
    return f"{text} ({ADVICE})" if is_damage(exc) else text


class Damage:
    """The first damage a store met, as a reason; once set, the store's health() is not ok."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _reason
        self._reason: str | None = None

    def note(self, exc: BaseException) -> None:
        """Remember ``exc`` if it is the first sign of damage."""
        if is_damage(exc):
            with self._lock:
                if self._reason is None:
                    self._reason = sqlite_reason(exc)

    @property
    def reason(self) -> str | None:
        with self._lock:
            return self._reason
