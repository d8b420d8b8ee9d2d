"""The SQLite store's windowed read of a run's steps: each step's own row, and of a map step only the
item rows of one window (:class:`~.models.ItemWindow`), its counts from the rows' status column. A page
of a 100,000-item run decodes the page's rows, not 100,000 (the whole read, ``build_run``, folds every
item row into its map step).

No state: functions over the reader's ``read``. Item rows are named ``<step>[<index>]`` and a step
name holds no bracket, so the rows of map step ``m`` are the names from ``m[`` up to ``m\\`` (the
character after ``[``) on the steps' primary key; an item without a row never started (pending).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ._map_items import as_item, map_output, split_item, window_items
from .models import ItemWindow, StepResult, TaskStatus

__all__ = ["windowed_steps"]

#: The reader's query: rows of ``sql`` with ``params``.
Read = Callable[[str, Iterable[Any]], list[Any]]

_OWN_ROWS = "SELECT result FROM steps WHERE run_id = ? AND name NOT GLOB '*]' ORDER BY rowid"
_RANGE = "run_id = ? AND name >= ? AND name < ?"
# The item's index is the name's digits after "<step>[": CAST reads them and stops at the "]".
_TALLY = (
    f"SELECT status, count(*), max(CAST(substr(name, ?) AS INTEGER)) FROM steps WHERE {_RANGE} "
    "GROUP BY status"
)
_CHUNK = 500  # names per IN (...) query, well under SQLite's limit of bound parameters


def windowed_steps(read: Read, run_id: str, window: ItemWindow) -> dict[str, StepResult]:
    """The steps of run ``run_id`` in the order of their rows, each map step's items cut to ``window``
    as ``window_steps`` cuts a whole record (its output only when the window lists every item)."""
    steps: dict[str, StepResult] = {}
    for (raw,) in read(_OWN_ROWS, (run_id,)):
        step = StepResult.model_validate_json(raw)
        steps[step.name] = step
    for step in steps.values():
        if step.items is not None:
            _window_map(read, run_id, step, window)
    return steps


def _window_map(read: Read, run_id: str, step: StepResult, window: ItemWindow) -> None:
    """Fill map step ``step`` (its own row, read) with its counts and the window's items, in place."""
    items = step.items
    assert items is not None
    name = step.name
    span = (run_id, f"{name}[", f"{name}\\")
    tally = read(_TALLY, (len(name) + 2, *span))
    if tally:
        extent = max(items.total, max(int(top) for _, _, top in tally) + 1)
        found = {str(status): int(n) for status, n, _ in tally}
        missing = extent - sum(found.values())
        if missing:
            found[TaskStatus.PENDING.value] = found.get(TaskStatus.PENDING.value, 0) + missing
        counts = {s.value: found[s.value] for s in TaskStatus if s.value in found}
        indexes = _indexes(read, span, extent, missing, window)
        rows = _rows(read, run_id, name, indexes)
        page = [as_item(i, rows.get(i)) for i in indexes]
        whole = window.offset == 0 and len(page) == extent
        step.items = items.model_copy(update={"counts": counts, "items": page})
    else:  # none of its items has a row: the step's own row shows them, as the whole read does
        step.items = window_items(items, window)
        whole = window.offset == 0 and len(step.items.items) == len(items.items)
    if not whole:
        step.output = None
    elif step.status is TaskStatus.COMPLETED and step.output is None:
        step.output = map_output(step.items.items, required=items.required)


def _indexes(
    read: Read, span: tuple[str, str, str], extent: int, missing: int, window: ItemWindow
) -> list[int]:
    """The indexes of the items the window lists, in order (``missing``: items without a row)."""
    start, end, wanted = window.offset, window.offset + window.limit, window.statuses
    if wanted is None:
        return list(range(start, min(end, extent)))
    marks = ",".join("?" * len(wanted))
    statuses = [s.value for s in wanted]
    chosen = [
        split_item(n)[1]
        for (n,) in read(f"SELECT name FROM steps WHERE {_RANGE} AND status IN ({marks})", (*span, *statuses))
    ]
    if missing and TaskStatus.PENDING in wanted:  # the items that never started are pending too
        present = {split_item(n)[1] for (n,) in read(f"SELECT name FROM steps WHERE {_RANGE}", span)}
        chosen.extend(i for i in range(extent) if i not in present)
    chosen.sort()
    return chosen[start:end]


def _rows(read: Read, run_id: str, name: str, indexes: list[int]) -> dict[int, StepResult]:
    """The stored rows of the items ``indexes`` of map step ``name``, by index (an item without one is
    not there)."""
    rows: dict[int, StepResult] = {}
    for at in range(0, len(indexes), _CHUNK):
        names = [f"{name}[{i}]" for i in indexes[at : at + _CHUNK]]
        marks = ",".join("?" * len(names))
        for (raw,) in read(
            f"SELECT result FROM steps WHERE run_id = ? AND name IN ({marks})", (run_id, *names)
        ):
            row = StepResult.model_validate_json(raw)
            rows[split_item(row.name)[1]] = row
    return rows
