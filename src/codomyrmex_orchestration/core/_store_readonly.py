"""The state store opened for reading alone, as the CLI's ``runs``, ``show`` and ``cancel`` open it: no
writer thread, no retention, no probe row, so it reads a state directory it may not write (a read-only
mount, another user's files) and never changes what it reads.

State owned: its reader connection (through :class:`StoreReader`).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

from ..errors import StateStoreError
from ._store_health import sqlite_reason
from ._store_reads import RunReads, StoreReader
from ._store_schema import SCHEMA_VERSION, close_quietly, upgrade
from ._store_shape import lacking

__all__ = ["ReadOnlyStore", "recorded"]


def recorded(path: Path) -> bool:
    """Whether a database file is there to read at ``path``; False when nothing was recorded yet.

    Raises:
        StateStoreError: the state directory or the file is something else (a file, a directory), or
            cannot be looked into (its permissions).
    """
    where = str(path)
    try:
        if path.parent.exists() and not path.parent.is_dir():
            raise StateStoreError(where, f"{path.parent} exists but is not a directory")
        if not path.exists():
            return False
        if not path.is_file():
            raise StateStoreError(where, "exists but is not a regular file")
    except StateStoreError:
        raise
    except OSError as exc:  # Path.exists() raises for EACCES: the directory cannot be looked into
        reason = exc.strerror or str(exc)
        raise StateStoreError(where, f"cannot read the state directory {path.parent}: {reason}") from exc
    return True


class ReadOnlyStore(RunReads):
    """The runs of the store at ``path`` (a file :func:`recorded` found), read and never written.

    A file of an older schema, or one of the current schema that lacks part of it, is migrated (or
    repaired) first, as a writer opens it but with nothing else done to it: no retention, so a file kept
    under larger limits than the defaults loses nothing (it needs write access, as any upgrade does, and
    is refused while another process serves the directory).

    Raises:
        StateStoreError: the file cannot be opened or read (its reason names what to do), or its schema
            is newer than this program, or an older one cannot be migrated (or repaired).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).absolute()
        where = str(self.path)
        conn = _connect(self.path)
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version < SCHEMA_VERSION or (version == SCHEMA_VERSION and lacking(conn)):
                close_quietly(conn)
                _upgrade(self.path, version)
                conn = _connect(self.path)
            elif version > SCHEMA_VERSION:
                raise StateStoreError(
                    where,
                    f"schema version {version} is newer than this program supports ({SCHEMA_VERSION}); "
                    "use a newer codomyrmex-orchestration or another state directory",
                )
        except sqlite3.Error as exc:
            close_quietly(conn)
            raise StateStoreError(where, sqlite_reason(exc)) from exc
        except BaseException:
            close_quietly(conn)
            raise
        self._reads = StoreReader(conn, where, lambda: None)  # nothing of ours to wait for

    def close(self) -> None:
        self._reads.close()

    def __enter__(self) -> ReadOnlyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _connect(path: Path) -> sqlite3.Connection:
    """A read-only connection: ``mode=ro``; on a directory it cannot write, where SQLite cannot create
    the WAL's shared-memory file, ``immutable`` as long as no WAL holds commits the file lacks."""
    where = str(path)
    uri = f"file:{quote(str(path))}?mode=ro"
    try:
        conn = _open(uri)
    except sqlite3.Error as exc:
        if os.access(path.parent, os.W_OK) or _wal_holds_commits(path):
            raise StateStoreError(where, f"cannot open it for reading: {sqlite_reason(exc)}") from exc
        try:
            conn = _open(f"{uri}&immutable=1")
        except sqlite3.Error as again:
            raise StateStoreError(where, f"cannot open it for reading: {sqlite_reason(again)}") from again
    return conn


def _wal_holds_commits(path: Path) -> bool:
    try:
        return os.stat(f"{path}-wal").st_size > 0
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: do not read the file without what its WAL may hold


def _open(uri: str) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # reads the header and schema now
    except BaseException:
        close_quietly(conn)
        raise
    return conn


def _upgrade(path: Path, version: int) -> None:
    try:
        upgrade(path)
    except StateStoreError as exc:
        if version < SCHEMA_VERSION:
            reason = f"schema version {version} must be upgraded to {SCHEMA_VERSION} first: {exc.reason}"
        else:
            reason = f"the file must be repaired first: {exc.reason}"
        raise StateStoreError(str(path), reason) from exc
