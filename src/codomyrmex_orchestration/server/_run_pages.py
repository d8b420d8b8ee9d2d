"""A run record as tool results show it: each map step's items one page at a time (get_workflow_run's
``items_offset``, ``items_limit`` and ``items_status``), so a record stays small whatever its maps' size.

A 100,000-item map step's full record is megabytes (every item, and the step's output listing every
item's output again): too much for a model to read, over the SDK's 1 MiB limit of an SSE event, and
seconds of pydantic and JSON work that hold the GIL. A page costs what its items do: the core reads
and builds only the page's items (``WorkflowManager.get_run(run_id, items=...)``), and this module
shows them.
"""

from __future__ import annotations

from typing import Any

from codomyrmex_orchestration.core.models import ItemResult, ItemWindow, MapItems, RunRecord
from codomyrmex_orchestration.server._models import DEFAULT_ITEMS_LIMIT

__all__ = ["FIRST_PAGE", "PAGE_BYTES", "paged_record"]

#: A page stops once its items reach this much JSON (it lists one item at least): outputs may be large.
PAGE_BYTES = 128 * 1024
#: The page every tool result shows unless get_workflow_run asks for another.
FIRST_PAGE = ItemWindow(limit=DEFAULT_ITEMS_LIMIT)
_FAILED = ("failed", "timed_out")


def paged_record(record: RunRecord, window: ItemWindow) -> tuple[dict[str, Any], list[str]]:
    """``record``, read with ``window`` (each map step lists that window of its items), as the fields of
    a ``RunHandle``: each map step's page says where it is, and stops past :data:`PAGE_BYTES`; a step
    whose page does not list every item leaves its output out. Also returns a sentence per such step,
    saying how to page.

    Only the page is copied: nothing else of the items is dumped, validated or rendered.
    """
    maps = [(name, step.items) for name, step in record.steps.items() if step.items is not None]
    if not maps:
        return record.model_dump(), []
    data = record.model_dump(exclude={"steps": {name: {"output", "items"} for name, _ in maps}})
    notes: list[str] = []
    for name, items in maps:
        page = _page(items, window)
        shown = data["steps"][name]
        shown["items"] = page
        shown["output"] = None if page["output_omitted"] else record.steps[name].output
        if page["output_omitted"]:
            notes.append(_note(name, items, page, window.statuses))
    if notes:
        notes.append(
            "page through the items with get_workflow_run's items_offset, items_limit and items_status "
            "(a paged step's output is left out: each item has its own)"
        )
    return data, notes


def _page(items: MapItems, window: ItemWindow) -> dict[str, Any]:
    wanted = window.statuses
    if wanted is None:
        matching = items.total
    else:
        matching = sum(n for status, n in items.counts.items() if status in wanted)
    page: list[ItemResult] = []
    size = 0
    for item in items.items:
        size += len(item.model_dump_json())
        if page and size > PAGE_BYTES:
            break
        page.append(item)
    offset = window.offset
    end = offset + len(page)
    return {
        "total": items.total,
        "counts": items.counts,
        "required": items.required,
        "items": page,
        "offset": offset,
        "matching": matching,
        # An empty page ends the list even where the counts promised more (they never should).
        "next_offset": end if page and end < matching else None,
        "output_omitted": not (offset == 0 and len(page) >= items.total),
    }


def _note(name: str, items: MapItems, page: dict[str, Any], wanted: frozenset[Any] | None) -> str:
    which = f"{'/'.join(sorted(wanted))} " if wanted is not None else ""
    shown = len(page["items"])
    text = f"map step {name!r} lists {shown} of its {page['matching']} {which}items"
    if shown:
        text += f" from items_offset {page['offset']}"
    if page["next_offset"] is not None:
        text += f" (next page: items_offset {page['next_offset']})"
    failed = sum(items.counts.get(status, 0) for status in _FAILED)
    if failed and wanted is None:
        text += f'; items_status ["failed", "timed_out"] lists its {failed} failed items'
    return text
