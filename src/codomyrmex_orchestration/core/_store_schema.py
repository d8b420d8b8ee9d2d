"""The SQLite file's schema: the numbered migrations, opening and checking the file, and SQLite helpers.

A migration that fails names itself and leaves the file as it was; an older file is not migrated while
another process serves its directory. No state of its own: it opens the two connections a store owns
(writer, reader) on a migrated file whose tables are checked (``_store_shape.py``).
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
import uuid
from pathlib import Path

from ..errors import StateStoreError
from ..logs import get_logger

__all__ = ["FINISHED_STATUSES", "MIGRATIONS", "RUN_TALLIES", "SCHEMA_VERSION", "open_database"]

_BUSY_TIMEOUT_MS = 5_000
_WAL_SIZE_LIMIT = 4 << 20


def wal_limit_for(max_bytes: int | None) -> int:
    """The WAL's size cap for a byte budget: 4 MiB, or a sixteenth of a smaller budget."""
    return _WAL_SIZE_LIMIT if max_bytes is None else max(64 << 10, min(_WAL_SIZE_LIMIT, max_bytes // 16))


_log = get_logger("codomyrmex_orchestration.store")

# Ordered migrations; migration i (1-based) brings PRAGMA user_version from i-1 to i. Never edit one
# that has shipped: append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE workflows (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        source TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        workflow_name TEXT NOT NULL,
        status TEXT NOT NULL,
        record TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        session_id TEXT,
        parent_run_id TEXT
    );
    CREATE INDEX runs_by_created ON runs (created_at);
    CREATE INDEX runs_by_workflow ON runs (workflow_name, created_at);
    CREATE INDEX runs_by_status ON runs (status, created_at);
    CREATE TABLE steps (
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        result TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (run_id, name)
    );
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        data TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE projects (
        name TEXT PRIMARY KEY,
        data TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE allocations (
        id TEXT PRIMARY KEY,
        data TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        type TEXT NOT NULL,
        payload TEXT NOT NULL
    );
    CREATE INDEX events_by_type ON events (type, id);
    CREATE TABLE probe (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        token TEXT NOT NULL,
        ts REAL NOT NULL
    );
    """,
    # 2: what per-run work must not count or scan. Run counts by status, the step count and the bytes
    # stored (records, step results and the spill files a step's output went to, which the step's
    # truncation marker reports as spill_bytes) are kept by triggers, so retention, count_runs() and the byte
    # budget read one row instead of counting the history. Run indexes end in run_id, the listing's
    # tie-break, so a filtered, time-windowed, paginated listing walks one index without sorting; the
    # partial index holds finished runs alone, oldest first, for retention.
    """
    ALTER TABLE steps ADD COLUMN spill_bytes INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE tallies (
        key TEXT PRIMARY KEY,
        n INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO tallies (key, n) SELECT 'runs/' || status, count(*) FROM runs GROUP BY status;
    INSERT INTO tallies (key, n) SELECT 'steps', count(*) FROM steps;
    INSERT INTO tallies (key, n)
        SELECT 'bytes', coalesce((SELECT sum(length(CAST(record AS BLOB))) FROM runs), 0)
            + coalesce((SELECT sum(length(CAST(result AS BLOB))) FROM steps), 0);
    CREATE TRIGGER runs_tally_insert AFTER INSERT ON runs BEGIN
        INSERT INTO tallies (key, n) VALUES ('runs/' || NEW.status, 1)
            ON CONFLICT (key) DO UPDATE SET n = n + 1;
        UPDATE tallies SET n = n + length(CAST(NEW.record AS BLOB)) WHERE key = 'bytes';
    END;
    CREATE TRIGGER runs_tally_update AFTER UPDATE OF status, record ON runs BEGIN
        UPDATE tallies SET n = n - 1 WHERE key = 'runs/' || OLD.status;
        INSERT INTO tallies (key, n) VALUES ('runs/' || NEW.status, 1)
            ON CONFLICT (key) DO UPDATE SET n = n + 1;
        UPDATE tallies SET n = n + length(CAST(NEW.record AS BLOB)) - length(CAST(OLD.record AS BLOB))
            WHERE key = 'bytes';
    END;
    CREATE TRIGGER runs_tally_delete AFTER DELETE ON runs BEGIN
        UPDATE tallies SET n = n - 1 WHERE key = 'runs/' || OLD.status;
        UPDATE tallies SET n = n - length(CAST(OLD.record AS BLOB)) WHERE key = 'bytes';
    END;
    CREATE TRIGGER steps_tally_insert AFTER INSERT ON steps BEGIN
        UPDATE tallies SET n = n + 1 WHERE key = 'steps';
        UPDATE tallies SET n = n + length(CAST(NEW.result AS BLOB)) + NEW.spill_bytes WHERE key = 'bytes';
    END;
    CREATE TRIGGER steps_tally_update AFTER UPDATE OF result, spill_bytes ON steps BEGIN
        UPDATE tallies
            SET n = n + length(CAST(NEW.result AS BLOB)) + NEW.spill_bytes
                - length(CAST(OLD.result AS BLOB)) - OLD.spill_bytes
            WHERE key = 'bytes';
    END;
    CREATE TRIGGER steps_tally_delete AFTER DELETE ON steps BEGIN
        UPDATE tallies SET n = n - 1 WHERE key = 'steps';
        UPDATE tallies SET n = n - length(CAST(OLD.result AS BLOB)) - OLD.spill_bytes WHERE key = 'bytes';
    END;
    DROP INDEX runs_by_created;
    DROP INDEX runs_by_workflow;
    DROP INDEX runs_by_status;
    CREATE INDEX runs_by_created ON runs (created_at, run_id);
    CREATE INDEX runs_by_workflow ON runs (workflow_name, created_at, run_id);
    CREATE INDEX runs_by_status ON runs (status, created_at, run_id);
    CREATE INDEX runs_finished ON runs (created_at, run_id)
        WHERE status IN ('cancelled', 'completed', 'failed', 'interrupted');
    """,
    # 3: definition versions, and the version each run started with (NULL for runs recorded before).
    """
    CREATE TABLE workflow_versions (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        digest TEXT NOT NULL,
        spec TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (name, version)
    );
    ALTER TABLE runs ADD COLUMN workflow_version INTEGER;
    CREATE INDEX runs_by_workflow_version ON runs (workflow_name, workflow_version);
    """,
    # 4: tool calls run as MCP tasks (server/_tasks.py): owner, the run or task followed, time to live.
    """
    CREATE TABLE IF NOT EXISTS tool_tasks (
        task_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        record TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL
    );
    CREATE INDEX IF NOT EXISTS tool_tasks_by_owner ON tool_tasks (owner, created_at, task_id);
    CREATE INDEX IF NOT EXISTS tool_tasks_by_expiry ON tool_tasks (expires_at) WHERE expires_at IS NOT NULL;
    """,
    # 5: the step cache (core/_step_cache.py): outputs by the hash of (definition version, action,
    # resolved parameters), never the parameters themselves. Their bytes count in the byte budget.
    """
    CREATE TABLE IF NOT EXISTS step_cache (
        key TEXT PRIMARY KEY,
        workflow_name TEXT NOT NULL,
        output TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS step_cache_by_expiry ON step_cache (expires_at);
    CREATE INDEX IF NOT EXISTS step_cache_by_age ON step_cache (created_at);
    CREATE TRIGGER IF NOT EXISTS step_cache_tally_insert AFTER INSERT ON step_cache BEGIN
        UPDATE tallies SET n = n + length(CAST(NEW.output AS BLOB)) + length(NEW.key) WHERE key = 'bytes';
    END;
    CREATE TRIGGER IF NOT EXISTS step_cache_tally_update AFTER UPDATE OF output ON step_cache BEGIN
        UPDATE tallies SET n = n + length(CAST(NEW.output AS BLOB)) - length(CAST(OLD.output AS BLOB))
            WHERE key = 'bytes';
    END;
    CREATE TRIGGER IF NOT EXISTS step_cache_tally_delete AFTER DELETE ON step_cache BEGIN
        UPDATE tallies SET n = n - length(CAST(OLD.output AS BLOB)) - length(OLD.key) WHERE key = 'bytes';
    END;
    """,
    # 6: retention finds the oldest finished runs along runs_by_status, one range per finished status
    # (FINISHED_STATUSES, merged), not in a partial index of its own: one b-tree fewer written per run.
    """
    DROP INDEX IF EXISTS runs_finished;
    """,
    # 7: workflow definitions (and their kept versions) and sessions count in the byte budget too, so
    # what a client can create is bounded by it. Their bytes are added to the tally once, here; closed
    # sessions are found oldest first by a partial index, for eviction by bytes.
    """
    UPDATE tallies SET n = n
        + coalesce((SELECT sum(length(CAST(spec AS BLOB))) FROM workflows), 0)
        + coalesce((SELECT sum(length(CAST(spec AS BLOB))) FROM workflow_versions), 0)
        + coalesce((SELECT sum(length(CAST(data AS BLOB))) FROM sessions), 0)
        WHERE key = 'bytes';
    CREATE TRIGGER IF NOT EXISTS workflows_tally_insert AFTER INSERT ON workflows BEGIN
        UPDATE tallies SET n = n + length(CAST(NEW.spec AS BLOB)) WHERE key = 'bytes';
    END;
    CREATE TRIGGER IF NOT EXISTS workflows_tally_update AFTER UPDATE OF spec ON workflows BEGIN
        UPDATE tallies SET n = n + length(CAST(NEW.spec AS BLOB)) - length(CAST(OLD.spec AS BLOB))
            WHERE key = 'bytes';
    END;
    CREATE TRIGGER IF NOT EXISTS workflows_tally_delete AFTER DELETE ON workflows BEGIN
        UPDATE tallies SET n = n - length(CAST(OLD.spec AS BLOB)) WHERE key = 'bytes';
    END;
    CREATE TRIGGER IF NOT EXISTS workflow_versions_tally_insert AFTER INSERT ON workflow_versions BEGIN
        UPDATE tallies SET n = n + length(CAST(NEW.spec AS BLOB)) WHERE key = 'bytes';
    END;
    CREATE TRIGGER IF NOT EXISTS workflow_versions_tally_delete AFTER DELETE ON workflow_versions BEGIN
        UPDATE tallies SET n = n - length(CAST(OLD.spec AS BLOB)) WHERE key = 'bytes';
    END;
    CREATE TRIGGER IF NOT EXISTS sessions_tally_insert AFTER INSERT ON sessions BEGIN
        UPDATE tallies SET n = n + length(CAST(NEW.data AS BLOB)) WHERE key = 'bytes';
    END;
    CREATE TRIGGER IF NOT EXISTS sessions_tally_update AFTER UPDATE OF data ON sessions BEGIN
        UPDATE tallies SET n = n + length(CAST(NEW.data AS BLOB)) - length(CAST(OLD.data AS BLOB))
            WHERE key = 'bytes';
    END;
    CREATE TRIGGER IF NOT EXISTS sessions_tally_delete AFTER DELETE ON sessions BEGIN
        UPDATE tallies SET n = n - length(CAST(OLD.data AS BLOB)) WHERE key = 'bytes';
    END;
    CREATE INDEX IF NOT EXISTS sessions_closed ON sessions (updated_at, id) WHERE status <> 'active';
    """,
    # 8: a run's sub-runs (list_runs' parent filter, which the run view polls, and sub_runs on a resume)
    # are found by their parent instead of by reading every run, newest first along the listing's order.
    # Partial: a top-level run (most of the history) is never written to it, so its start pays nothing.
    # Building it reads the runs table once, in the migration's write transaction: readers (WAL) go on.
    """
    CREATE INDEX IF NOT EXISTS runs_by_parent ON runs (parent_run_id, created_at, run_id)
        WHERE parent_run_id IS NOT NULL;
    """,
)
#: Selects the per-status run tallies (``runs/<status>``) by a range of their primary key.
RUN_TALLIES = "key > 'runs/' AND key < 'runs0'"
#: The statuses of finished runs (the ones retention may delete), each one range of ``runs_by_status``.
FINISHED_STATUSES = ("cancelled", "completed", "failed", "interrupted")
#: The schema version this code writes (``PRAGMA user_version``).
SCHEMA_VERSION = len(MIGRATIONS)


def open_database(
    path: Path, *, wal_limit: int = _WAL_SIZE_LIMIT
) -> tuple[sqlite3.Connection, sqlite3.Connection]:
    """Create ``path``'s directory if needed, open (or create) the file in WAL mode, migrate it to
    :data:`SCHEMA_VERSION` and check it can be written.

    Returns:
        ``(writer, reader)``: the connection for writes and a ``query_only`` one for reads.

    Raises:
        StateStoreError: the directory cannot be created or written, the file is not a database
            (corrupt), its schema is newer than this program, a migration of it fails (its schema history
            is not this program's), it lacks part of the current schema that cannot be created afresh,
            or it is older and another process serves its directory.
    """
    from ._store_health import sqlite_reason as damage_reason  # the reason, with advice for a damaged file
    from ._store_shape import check_shape  # it builds on this module's migrations

    where = str(path)
    parent = path.parent
    try:
        # Private when we make them: runs' parameters and outputs are the user's data, not the machine's.
        # A directory or file that exists keeps the mode its owner gave it.
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (parent, *parent.parents) if p.exists()), None)
        reason = (
            f"{blocker} is a file, not a directory"
            if blocker is not None and not blocker.is_dir()
            else os_reason(exc)
        )
        raise StateStoreError(where, f"cannot create the state directory {parent}: {reason}") from exc
    try:
        parent_is_dir = parent.is_dir()
        path_is_other = path.exists() and not path.is_file()
    except OSError as exc:  # Path.exists() raises for EACCES: a directory we cannot look into
        raise StateStoreError(where, f"cannot read the state directory {parent}: {os_reason(exc)}") from exc
    if not parent_is_dir:
        raise StateStoreError(where, f"{parent} exists but is not a directory")
    if path_is_other:
        raise StateStoreError(where, "exists but is not a regular file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StateStoreError(where, f"the state directory {parent} is not writable")
    try:
        _create_private(path)
    except OSError as exc:
        raise StateStoreError(where, f"cannot create the database file: {os_reason(exc)}") from exc
    writer: sqlite3.Connection | None = None
    reader: sqlite3.Connection | None = None
    try:
        writer = _connect(path)
        if int(writer.execute("PRAGMA user_version").fetchone()[0]) == 0:
            # A new file: pages freed by evicting runs are given back to the file system (retention
            # runs incremental_vacuum after evicting by bytes). It can only be set before any table.
            writer.execute("PRAGMA auto_vacuum=INCREMENTAL")
        mode = _wal_mode(writer)
        if str(mode).lower() != "wal":
            _log.warning("state_store_not_wal", path=where, journal_mode=mode)
        writer.execute("PRAGMA synchronous=NORMAL")
        # A checkpointed WAL is cut back to this size instead of keeping its largest size on disk, and
        # it is checkpointed once it holds that much: it sits in the state directory's byte budget too.
        writer.execute(f"PRAGMA journal_size_limit={wal_limit}")
        page = int(writer.execute("PRAGMA page_size").fetchone()[0])
        writer.execute(f"PRAGMA wal_autocheckpoint={max(16, wal_limit // page)}")
        _migrate(writer, path)
        check_shape(writer, path)  # the tables must be what the version says (one read on a sound file)
        probe(writer)  # fails now, with the path, if the file cannot be written
        reader = _connect(path)
        reader.execute("PRAGMA query_only=ON")
        reader.execute("SELECT 1 FROM runs LIMIT 1").fetchall()
    except StateStoreError:
        close_quietly(writer, reader)
        raise
    except sqlite3.Error as exc:
        close_quietly(writer, reader)
        raise StateStoreError(where, damage_reason(exc)) from exc
    return writer, reader


def _create_private(path: Path) -> None:
    """Create the database file readable by its owner only, unless it exists (SQLite gives its -wal and
    -shm files the database file's mode)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves; check_same_thread=False: the writer
    # connection is opened here and used by the writer thread, the reader is guarded by a lock.
    conn = sqlite3.connect(
        str(path),
        timeout=_BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
        check_same_thread=False,
    )
    conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _wal_mode(conn: sqlite3.Connection) -> str:
    """Switch a connection's database to WAL; the journal mode it is in after. SQLite does not call the
    busy handler for this switch: processes opening a new file at the same moment get "database is
    locked" at once while another one switches it, so it is tried again, up to the busy timeout."""
    deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
    pause = 0.001
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)  # a back-off between tries, not a wait for an event: there is none to wait on
        pause = min(pause * 2, 0.05)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    # The version is read inside each migration's write transaction: processes opening a new file at
    # the same moment (a server and a CLI run, two servers) each see the version the one before them
    # committed, so every migration is applied exactly once.
    first = True
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StateStoreError(
                    str(path),
                    f"schema version {version} is newer than this program supports ({SCHEMA_VERSION}); "
                    "use a newer codomyrmex-orchestration or another state directory",
                )
            if version == SCHEMA_VERSION:
                conn.execute("COMMIT")
                return
            if first and version > 0:  # a file some program already used (and may still be using)
                _refuse_under_a_server(path, version)
            first = False
            number = version + 1
            try:
                for statement in split_statements(MIGRATIONS[number - 1]):
                    conn.execute(statement)
            except sqlite3.OperationalError as exc:
                if not _SCHEMA_MISMATCH.search(str(exc)):
                    raise
                raise StateStoreError(str(path), _mismatch(version, number, exc)) from exc
            conn.execute(f"PRAGMA user_version={number}")
            conn.execute("COMMIT")
        except BaseException:
            rollback_quietly(conn)
            raise
        _log.info("state_store_migrated", path=str(path), schema_version=number)


#: What to do with a file whose schema history is not this program's (a migration of it failed, or it
#: lacks part of the schema its version stands for).
HISTORY_ADVICE = (
    "it was written by another build of codomyrmex-orchestration (one that numbered its migrations "
    "differently), or damaged or edited by hand. Use another state directory (--state-dir or "
    "CODOMYRMEX_STATE_DIR), or read what you need from it with the version that wrote it (runs --json, "
    "show --json) and move it away (with its -wal and -shm files) to start afresh"
)
# What SQLite says when a migration meets tables other than the ones the migrations before it made.
_SCHEMA_MISMATCH = re.compile(r"already exists|no such (table|index|column|trigger)|duplicate column")


def _mismatch(version: int, number: int, exc: sqlite3.Error) -> str:
    return (
        f"migration {number} of {SCHEMA_VERSION} failed ({exc}): the file says schema version {version} "
        "but its tables are not what this program's migrations up to that version make, so its schema "
        f"history does not match this program's. The file is left as it was; {HISTORY_ADVICE}"
    )


def _refuse_under_a_server(path: Path, version: int) -> None:
    """Refuse to migrate a file another process serves: a server of an older version reads the schema it
    knows (a migration may drop an index its queries name), and fails when it changes under it."""
    from ._serving_lock import serving_pid

    pid = serving_pid(path.parent)
    if pid is None or pid == os.getpid():  # our own server migrates the file it serves
        return
    raise StateStoreError(
        str(path),
        f"schema version {version} must be upgraded to {SCHEMA_VERSION}, but process {pid} serves this "
        "state directory, likely with an older codomyrmex-orchestration that reads the old schema: "
        "upgrading the file under it would break it. Stop that server (or the MCP client that started "
        "it), then run this again (a server of this version upgrades the file as it starts: if it was "
        "starting, try again)",
    )


def upgrade(path: Path) -> None:
    """Migrate (or repair) the file at ``path`` to the current schema, and close it: what a reader that
    never writes needs before it reads an older file. Nothing else is done to it (no retention).

    Raises:
        StateStoreError: as :func:`open_database`.
    """
    writer, reader = open_database(path)
    close_quietly(writer, reader)


def probe(conn: sqlite3.Connection) -> str:
    """Write a fresh token to the probe row and read it back, inside one transaction."""
    token = uuid.uuid4().hex
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "INSERT INTO probe (id, token, ts) VALUES (1, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET token = excluded.token, ts = excluded.ts",
            (token, time.time()),
        )
        row = conn.execute("SELECT token FROM probe WHERE id = 1").fetchone()
        if row is None or row[0] != token:
            raise sqlite3.DatabaseError("the probe row just written could not be read back")
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)
        raise
    return token


def split_statements(script: str) -> list[str]:
    """``script`` cut into statements; a trigger's body (``BEGIN ... END``) stays in one piece."""
    statements: list[str] = []
    current = ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \n;"):
                statements.append(current.strip())
            current = ""
    if current.strip(" \n;"):
        statements.append(current.strip())
    return statements


def inode(path: Path) -> tuple[int, int] | None:
    """The file's (device, inode), or None if it is gone: tells a replaced file from the one opened."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def sqlite_reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, sqlite3.DatabaseError) and "not a database" in text:
        return f"{text} (the file is corrupt or is not an SQLite database; move it away to start afresh)"
    return text


def os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def rollback_quietly(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # the original error is the one worth reporting


def close_quietly(*conns: sqlite3.Connection | None) -> None:
    for conn in conns:
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass  # closing after a failure; the failure is already reported
