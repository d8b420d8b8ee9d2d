"""A map step's items as a record holds them: their names, the step's output made from them, the compact
form a durable store keeps and its folding back, and windows (one page of them, :class:`ItemWindow`).

No state: functions from records to records. A window of a record whose items are all built costs a
shallow copy of the page; the live run and the SQLite store build only the page's items themselves
(``MapState.view``, ``_store_items``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .models import ItemResult, ItemWindow, MapItems, RunRecord, StepResult, TaskStatus

__all__ = [
    "FAILED_ITEM",
    "as_item",
    "fold_items",
    "is_item",
    "item_name",
    "map_output",
    "positions",
    "split_item",
    "stored_form",
    "window_items",
    "window_record",
    "window_steps",
]

#: The statuses of an item that failed: a required map step fails with them, a step that is not
#: required lists them in its output's ``failed``.
FAILED_ITEM = frozenset({TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED})
_ITEM_FIELDS = ("status", "output", "error", "attempts", "started_at", "finished_at", "duration_seconds")


def item_name(step: str, index: int) -> str:
    """The graph node (and stored row) of item ``index`` of map step ``step``."""
    return f"{step}[{index}]"


def is_item(name: str) -> bool:
    """Whether ``name`` is an item node (step names cannot end with ``]``)."""
    return name.endswith("]")


def split_item(name: str) -> tuple[str, int]:
    """``("step", index)`` from an item node's name."""
    step, _, rest = name.rpartition("[")
    return step, int(rest[:-1])


def map_output(items: Sequence[ItemResult], *, required: bool) -> Any:
    """A map step's output: the completed items' outputs in item order (a skipped item has none).

    A step with ``required: false`` lets items fail: its output is then always
    ``{"outputs": [...], "failed": [{"index": i, "status": "failed", "error": "..."}]}``, so its
    shape depends on the definition, never on how a run went.
    """
    outputs = [i.output for i in items if i.status is TaskStatus.COMPLETED]
    if required:
        return outputs
    failed = [
        {"index": i.index, "status": i.status.value, "error": i.error.message if i.error else None}
        for i in items
        if i.status in FAILED_ITEM
    ]
    return {"outputs": outputs, "failed": failed}


def as_item(index: int, row: StepResult | None) -> ItemResult:
    """Item ``index`` from its stored row (None: it has none, so it never started: pending)."""
    if row is None:
        return ItemResult(index=index)
    fields = {f: getattr(row, f) for f in _ITEM_FIELDS}
    return ItemResult(index=index, skipped_reason=row.skipped_reason, **fields)


def stored_form(step: StepResult) -> StepResult:
    """What a durable store keeps of a map step's own row: its items and output live in item rows."""
    if step.items is None:
        return step
    return step.model_copy(update={"output": None, "items": step.items.model_copy(update={"items": []})})


def fold_items(steps: Mapping[str, StepResult]) -> dict[str, StepResult]:
    """A run's stored rows back into steps: item rows become their map step's ``items``, and a
    completed map step's output is rebuilt from them."""
    folded: dict[str, StepResult] = {}
    rows: dict[str, dict[int, StepResult]] = {}
    for name, step in steps.items():
        if is_item(name):
            base, index = split_item(name)
            rows.setdefault(base, {})[index] = step
        else:
            folded[name] = step
    for name, step in folded.items():
        if step.items is None:
            continue
        found = rows.get(name, {})
        if found:
            items = [as_item(i, found.get(i)) for i in range(max(step.items.total, max(found) + 1))]
            counts: dict[str, int] = {}
            for item in items:
                counts[item.status.value] = counts.get(item.status.value, 0) + 1
            step.items = step.items.model_copy(update={"items": items, "counts": counts})
        if step.status is TaskStatus.COMPLETED and step.output is None:
            step.output = map_output(step.items.items, required=step.items.required)
    return folded


# --------------------------------------------------------------------------- windows


def positions(statuses: Sequence[TaskStatus], window: ItemWindow) -> list[int]:
    """The indexes of the items ``window`` lists, in order, given every item's status (a map's column)."""
    start, end, wanted = window.offset, window.offset + window.limit, window.statuses
    if wanted is None:
        return list(range(start, min(end, len(statuses))))
    return list(itertools.islice((i for i, s in enumerate(statuses) if s in wanted), start, end))


def window_items(items: MapItems, window: ItemWindow) -> MapItems:
    """``items`` (every item built) with only the window's items listed; the counts unchanged."""
    listed: Iterable[ItemResult] = items.items
    start, end, wanted = window.offset, window.offset + window.limit, window.statuses
    if wanted is not None:
        listed = (i for i in items.items if i.status in wanted)
    return items.model_copy(update={"items": list(itertools.islice(listed, start, end))})


def window_steps(steps: Mapping[str, StepResult], window: ItemWindow) -> dict[str, StepResult]:
    """``steps`` with each map step's items cut to ``window``: a step whose window does not list every
    item leaves its output out (None: it is every item's output again); the other steps as they are."""
    shown = dict(steps)
    for name, step in steps.items():
        items = step.items
        if items is not None:
            page = window_items(items, window)
            whole = window.offset == 0 and len(page.items) == len(items.items)
            shown[name] = step.model_copy(update={"items": page, "output": step.output if whole else None})
    return shown


def window_record(record: RunRecord, window: ItemWindow) -> RunRecord:
    """``record`` with each map step's items cut to ``window`` (see :func:`window_steps`): a shallow
    copy, ``record`` is left as it is."""
    return record.model_copy(update={"steps": window_steps(record.steps, window)})
