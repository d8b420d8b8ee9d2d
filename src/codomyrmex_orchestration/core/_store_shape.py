"""What a state file of the current schema holds, checked on every open: its tables (with their columns),
indexes and triggers against what a fresh file gets from the migrations, in one read of ``sqlite_master``.

``PRAGMA user_version`` says which migrations a file has had; its tables say what they did. The two
disagree in a file written by a build that numbered its migrations differently, or one damaged or edited by
hand: what it lacks is created when an idempotent (``IF NOT EXISTS``) migration statement can create it
afresh, and the file is refused, naming what it lacks, otherwise, instead of failing at the first statement
that needs the missing part.

State owned: the fresh schema's shape, built once per process in an in-memory database.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from pathlib import Path

from ..errors import StateStoreError
from ..logs import get_logger
from ._store_schema import HISTORY_ADVICE, MIGRATIONS, SCHEMA_VERSION, rollback_quietly, split_statements

__all__ = ["check_shape", "lacking"]

_log = get_logger("codomyrmex_orchestration.store")

#: One row per column of each table, one per index and trigger (column ''); SQLite's own objects left out.
_SHAPE = (
    "SELECT m.type, m.name, coalesce(p.name, '') FROM sqlite_master AS m "
    "LEFT JOIN pragma_table_info(m.name) AS p ON m.type = 'table' "
    "WHERE substr(m.name, 1, 7) <> 'sqlite_'"
)
_IDEMPOTENT = re.compile(r"\s*CREATE\s+(TABLE|INDEX|TRIGGER)\s+IF\s+NOT\s+EXISTS\b", re.IGNORECASE)

_Item = tuple[str, str, str]  # (type, name, column): column '' for a table itself, an index or a trigger


@functools.cache
def _fresh_shape() -> frozenset[_Item]:
    conn = _fresh_database()
    try:
        return frozenset(conn.execute(_SHAPE))
    finally:
        conn.close()


def _fresh_database() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(f"BEGIN; {''.join(MIGRATIONS)} COMMIT;")  # one transaction: ~4 ms, once a process
    return conn


def lacking(conn: sqlite3.Connection) -> list[_Item]:
    """What the file ``conn`` is open on lacks of the current schema (one read of ``sqlite_master``),
    sorted; empty for a file as the migrations leave it. Objects it holds beyond the schema are allowed."""
    return sorted(_fresh_shape().difference(conn.execute(_SHAPE)))


def check_shape(conn: sqlite3.Connection, path: Path) -> None:
    """Make sure the file at :data:`SCHEMA_VERSION` that ``conn`` (its writer) is open on holds the whole
    current schema: create what an idempotent migration statement can, in one transaction.

    Raises:
        StateStoreError: the file lacks something that cannot be created afresh (a table a plain
            ``CREATE TABLE`` made, a column, a trigger of a table that holds rows: its tallies would not
            count them); it is left as it was, and the message names what is missing and what to do.
    """
    if not lacking(conn):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        missing = lacking(conn)  # again under the write lock: another process may have repaired it
        created = _create(conn, missing)
        left = lacking(conn)
        if left:
            raise StateStoreError(
                str(path),
                f"the file says schema version {SCHEMA_VERSION} but lacks {_describe(left)}, which cannot "
                f"be created afresh; {HISTORY_ADVICE}",
            )
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)
        raise
    if created:
        _log.warning("state_store_repaired", path=str(path), created=created)


def _create(conn: sqlite3.Connection, missing: list[_Item]) -> list[str]:
    """Run the idempotent statement that creates each whole object ``missing`` names, in the order the
    migrations create them; the names of the objects created."""
    wanted = _whole(missing)
    if not wanted:
        return []
    created: list[str] = []
    for (kind, name), (statement, table) in _creators().items():
        if (kind, name) not in wanted or not _IDEMPOTENT.match(statement):
            continue
        try:
            if kind == "trigger" and conn.execute(f'SELECT 1 FROM "{table}" LIMIT 1').fetchone():
                continue  # the rows written without the trigger are not in the tallies it keeps
            conn.execute(statement)
        except sqlite3.OperationalError:
            continue  # e.g. an index on a column its table lacks, or on no table: named in the refusal
        created.append(f"{kind} {name}")
    return created


@functools.cache
def _creators() -> dict[tuple[str, str], tuple[str, str]]:
    """(type, name) -> (the last statement of the migrations that creates it, its table), in creation
    order; built when a file needs repairing, never on a sound file's open."""
    conn = sqlite3.connect(":memory:")
    try:
        creators: dict[tuple[str, str], tuple[str, str]] = {}
        listing = "SELECT type, name, tbl_name FROM sqlite_master WHERE substr(name, 1, 7) <> 'sqlite_'"
        before: set[tuple[str, str, str]] = set()
        for script in MIGRATIONS:
            for statement in split_statements(script):
                conn.execute(statement)
                now = set(conn.execute(listing))
                for kind, name, table in now - before:
                    creators.pop((kind, name), None)  # dropped and made again: the later statement counts
                    creators[(kind, name)] = (statement, table)
                before = now
        return creators
    finally:
        conn.close()


def _whole(items: list[_Item]) -> set[tuple[str, str]]:
    """The objects ``items`` lack whole: indexes and triggers, and tables none of whose columns exist."""
    columns: dict[str, set[str]] = {}
    for kind, name, column in _fresh_shape():
        if kind == "table":
            columns.setdefault(name, set()).add(column)
    gone: dict[str, set[str]] = {}
    for kind, name, column in items:
        if kind == "table":
            gone.setdefault(name, set()).add(column)
    whole = {(kind, name) for kind, name, _ in items if kind != "table"}
    return whole | {("table", name) for name, lost in gone.items() if lost >= columns[name]}


def _describe(items: list[_Item]) -> str:
    """``table t, index i, column runs.c``: whole objects by name, columns only of tables that exist."""
    whole = _whole(items)
    parts = [f"{kind} {name}" for kind, name in sorted(whole)]
    parts += [
        f"column {name}.{column}"
        for kind, name, column in items
        if kind == "table" and ("table", name) not in whole
    ]
    return ", ".join(parts)
