"""How the SQLite store writes step rows: the row's layout, and which statement each row takes.

No state. A step row is ``(status, result, updated_at, spill_bytes, run_id, name)``. Most rows can be
written by a statement cheaper than the general upsert, which checks that the run exists: the steps of
a run whose own row is written in the same transaction (a run that starts, or a short run that starts
and ends between two commits) need no check; a run's placeholders saved apart from its row are new
rows, a later save of one of its steps updates a row that is there. A batch that does not fit that
guess goes through the upsert.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Container, Sequence
from typing import Any

from ._workflow_map import is_item

__all__ = ["STEP_NAME", "STEP_RESULT", "STEP_SPILL", "write_steps"]

STEP_STATUS, STEP_RESULT, STEP_SPILL, STEP_RUN, STEP_NAME = 0, 1, 3, 4, 5

# Steps of a run that does not exist (never saved, or trimmed by retention) are dropped instead of
# failing the whole batch on the foreign key.
_UPSERT = """
INSERT INTO steps (run_id, name, status, result, updated_at, spill_bytes)
SELECT ?5, ?6, ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM runs WHERE run_id = ?5)
ON CONFLICT (run_id, name) DO UPDATE SET
    status = excluded.status, result = excluded.result, updated_at = excluded.updated_at,
    spill_bytes = excluded.spill_bytes
"""
# For the steps of a run written earlier in the same transaction: the insert's cost when the row is
# new (about half the upsert's, with the tallies' triggers), an update's when it is there (a resume).
_UPSERT_OWN_RUN = """
INSERT INTO steps (run_id, name, status, result, updated_at, spill_bytes) VALUES (?5, ?6, ?1, ?2, ?3, ?4)
ON CONFLICT (run_id, name) DO UPDATE SET
    status = excluded.status, result = excluded.result, updated_at = excluded.updated_at,
    spill_bytes = excluded.spill_bytes
"""
# About half the upsert's cost per row (callgrind, with the tallies' triggers).
_INSERT = """
INSERT INTO steps (run_id, name, status, result, updated_at, spill_bytes) VALUES (?5, ?6, ?1, ?2, ?3, ?4)
"""
# About two thirds of the upsert's cost per row.
_UPDATE = """
UPDATE steps SET status = ?1, result = ?2, updated_at = ?3, spill_bytes = ?4 WHERE run_id = ?5 AND name = ?6
"""
_PENDING = "pending"


def write_steps(
    conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]], runs_written: Container[str] = ()
) -> None:
    """Write ``rows`` inside the caller's open transaction. New rows are added in the order given: a
    run's steps are read back in the order of their rows.

    The rows of the runs in ``runs_written`` (their rows were written earlier in this transaction)
    take the upsert without the check that the run exists. Of the others, a batch with pending rows
    (a run's placeholders saved apart from its row) is inserted, in a savepoint; if a row is there
    already or its run is not, the batch goes through the upsert instead. Otherwise a run's own steps
    are updated (if one is not found, the batch goes through the upsert: the others are written
    again, unchanged) and a map step's item rows, first saved when the item starts, go through the
    upsert.
    """
    if runs_written:
        own = [row for row in rows if row[STEP_RUN] in runs_written]
        if own:
            conn.executemany(_UPSERT_OWN_RUN, own)
            if len(own) == len(rows):
                return
            rows = [row for row in rows if row[STEP_RUN] not in runs_written]
    if any(row[STEP_STATUS] == _PENDING for row in rows):
        conn.execute("SAVEPOINT step_rows")
        try:
            conn.executemany(_INSERT, rows)
            inserted = True
        except sqlite3.IntegrityError:
            conn.execute("ROLLBACK TO step_rows")
            inserted = False
        conn.execute("RELEASE step_rows")
        if not inserted:
            conn.executemany(_UPSERT, rows)
        return
    known = [row for row in rows if not is_item(row[STEP_NAME])]
    if known and conn.executemany(_UPDATE, known).rowcount < len(known):
        conn.executemany(_UPSERT, rows)
    elif len(known) < len(rows):
        conn.executemany(_UPSERT, [row for row in rows if is_item(row[STEP_NAME])])
