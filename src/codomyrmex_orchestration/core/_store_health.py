"""What makes the SQLite store unhealthy, and the check ``SqliteStore.health()`` runs: a damaged database
file is told from other SQLite failures (its reason says what to do, and the first damage a store has
met is remembered), then the writer, the file's identity and a probe row written and read back.

State owned: :class:`Damage`, one per store, behind its own lock (reads and commits note it on any
thread).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import StateStoreError
from ._store_schema import inode, probe

if TYPE_CHECKING:
    from ._store_reads import StoreReader
    from ._store_writer import GroupCommitWriter

__all__ = ["ADVICE", "Damage", "health_problem", "is_damage", "sqlite_reason"]

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


def health_problem(
    writer: GroupCommitWriter,
    reads: StoreReader,
    path: Path,
    opened: tuple[int, int] | None,
    *,
    timeout: float,
) -> str:
    """What is wrong with the store (``""``: nothing): closed, its writer failed, failing or stopped, its file
    damaged, removed or replaced (``opened``: the file's identity when it was opened), or a probe row
    written through the writer is not read back."""
    state = writer.state()
    if state.closed:
        return "the store is closed"
    if state.failure is not None:
        return f"the writer has failed: {state.failure}"
    if state.stalled is not None:
        return f"the writer cannot save now (retrying): {state.stalled}"
    damage = reads.damage.reason
    if damage is not None:
        return f"a read found the database file damaged: {damage}"
    if not writer.is_alive():
        return "the writer thread is not running"
    current = inode(path)
    if current != opened:
        return (
            "the database file was removed or replaced while open"
            if current is None
            else "the database file was replaced by another file while open"
        )
    try:
        token = writer.call(probe, timeout=timeout)
        read_back = reads.probe_token()
    except StateStoreError as exc:
        return exc.reason
    except sqlite3.Error as exc:
        reads.damage.note(exc)
        return f"read failed: {sqlite_reason(exc)}"
    if read_back != token:
        return "a probe row written was not read back"
    return ""
