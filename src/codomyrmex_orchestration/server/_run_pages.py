"""A run record as tool results show it: each map step's items one page at a time (get_workflow_run's
``items_offset``, ``items_limit`` and ``items_status``), so a record stays small whatever its maps' size.

A 100,000-item map step's full record is megabytes (every item, and the step's output listing every
item's output again): too much for a model to read, over the SDK's 1 MiB limit of an SSE event, and
seconds of pydantic and JSON work that hold the GIL. A page costs what its items do: the core reads
and builds only the page's items (``WorkflowManager.get_run(run_id, items=...)``), and this module
shows them.

Values are capped the same way: a record whose JSON passes :data:`RECORD_CHARS` shows its largest step
outputs, item outputs and run parameters as ``{"omitted": ...}`` markers (:func:`fit_record`), and
get_workflow_run's ``step``/``item``/``parameter`` read one of them a page of its JSON text at a time
(:func:`value_page`), so every record of a run fits one SSE event of the SDK client (1 MiB). A single
task's answer (execute_task, get_task) is capped alike: its result becomes the same marker
(:func:`fit_task`), read with get_task's ``value_offset``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from codomyrmex_orchestration._redact import redact
from codomyrmex_orchestration.core.models import ItemResult, ItemWindow, MapItems, RunRecord
from codomyrmex_orchestration.errors import InvalidInputError
from codomyrmex_orchestration.server._models import DEFAULT_ITEMS_LIMIT, ValuePage

if TYPE_CHECKING:
    from codomyrmex_orchestration.core.workflows import WorkflowManager

__all__ = [
    "FIRST_PAGE",
    "PAGE_BYTES",
    "RECORD_CHARS",
    "VALUE_PAGE_CHARS",
    "fit_record",
    "fit_task",
    "paged_record",
    "text_page",
    "value_page",
]

#: A record's pages stop once their items reach this much JSON, all map steps together (each page lists
#: one item at least): outputs may be large.
PAGE_BYTES = 128 * 1024
#: A run record in a tool result is at most this many characters of JSON: past it, its largest values
#: become ``{"omitted": ...}`` markers (a quarter of the SDK client's 1 MiB SSE event).
RECORD_CHARS = 256 * 1024
#: A page of a value's JSON text (get_workflow_run's step or parameter): with a full record, still well
#: under 1 MiB on the wire at 4 bytes a character.
VALUE_PAGE_CHARS = 128 * 1024
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
    budget = PAGE_BYTES
    for name, items in maps:
        page, used = _page(items, window, budget)
        budget = max(budget - used, 0)
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


def _page(items: MapItems, window: ItemWindow, budget: int) -> tuple[dict[str, Any], int]:
    wanted = window.statuses
    if wanted is None:
        matching = items.total
    else:
        matching = sum(n for status, n in items.counts.items() if status in wanted)
    page: list[ItemResult] = []
    size = 0
    for item in items.items:
        size += len(item.model_dump_json())
        if page and size > budget:
            break
        page.append(item)
    offset = window.offset
    end = offset + len(page)
    page_fields = {
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
    return page_fields, size


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


def fit_record(data: dict[str, Any], chars: int) -> str | None:
    """Make ``data`` (a run record as JSON values, ``chars`` characters of JSON) at most
    :data:`RECORD_CHARS`: its largest values (run parameters, step outputs, the listed items' outputs)
    become ``{"omitted": {"json_length": n, "read": {...get_workflow_run arguments...}}}``, largest
    first, until it fits. Returns the sentence for the record's note, or None if nothing was left out.

    Only called for a record already over the budget: small records cost nothing here.
    """
    if chars <= RECORD_CHARS:
        return None
    run_id = data.get("run_id")
    places: list[tuple[dict[str, Any], str, dict[str, Any]]] = [
        (data["parameters"], name, {"parameter": name}) for name in data.get("parameters") or {}
    ]
    for name, step in (data.get("steps") or {}).items():
        places.append((step, "output", {"step": name}))
        listed = (step.get("items") or {}).get("items") or ()
        places.extend((item, "output", {"step": name, "item": item["index"]}) for item in listed)
    sized = [
        (len(json.dumps(where[key], ensure_ascii=False)), where, key, read)
        for where, key, read in places
        if isinstance(where[key], str | list | dict)
    ]
    sized.sort(key=lambda entry: entry[0], reverse=True)
    left_out = 0
    for length, where, key, read in sized:
        if chars <= RECORD_CHARS:
            break
        marker = {"omitted": {"json_length": length, "read": {"run_id": run_id, **read}}}
        where[key] = marker
        chars -= length - len(json.dumps(marker, ensure_ascii=False))
        left_out += 1
    if not left_out:
        return None
    return (
        f"{left_out} value(s) too large for one result (a record shows at most {RECORD_CHARS // 1024} KiB "
        'of JSON) are shown as {"omitted": {"json_length": ..., "read": {...}}}: read one with '
        "get_workflow_run and those arguments (step and item, or parameter), a page of its JSON text at "
        "a time (value_offset: the page's next_offset)"
    )


def fit_task(data: dict[str, Any], chars: int) -> str | None:
    """Make ``data`` (a single task's answer as JSON values, ``chars`` characters of JSON) at most
    :data:`RECORD_CHARS`: its ``result`` becomes ``{"omitted": {"json_length": n, "read": {"task_id":
    ..., "value_offset": 0}}}``, the get_task arguments that read it a page at a time. Returns the
    sentence for the answer's note, or None if nothing was left out.
    """
    if chars <= RECORD_CHARS or not isinstance(data.get("result"), str | list | dict):
        return None
    length = len(json.dumps(data["result"], ensure_ascii=False))
    read = {"task_id": data.get("task_id"), "value_offset": 0}
    data["result"] = {"omitted": {"json_length": length, "read": read}}
    return (
        f"the result is too large for one answer (an answer shows at most {RECORD_CHARS // 1024} KiB of "
        'JSON) and is shown as {"omitted": {"json_length": ..., "read": {...}}}: read it with get_task and '
        "those arguments, a page of its JSON text at a time (value_offset: the page's next_offset)"
    )


def value_page(
    manager: WorkflowManager,
    record: RunRecord,
    *,
    step: str | None,
    item: int | None,
    parameter: str | None,
    offset: int,
) -> ValuePage:
    """A page of :data:`VALUE_PAGE_CHARS` of the JSON text of one value of ``record``: step ``step``'s
    output (with ``item``: that item's), or run parameter ``parameter``.

    Raises:
        InvalidInputError: both or neither of step and parameter, an item without its step, a step,
            item or parameter the run does not have (those it has are named), or ``offset`` past the
            text's end.
    """
    if (step is None) == (parameter is None):
        raise InvalidInputError("step", "give step (and item, for a map step's item) or parameter, not both")
    if item is not None and step is None:
        raise InvalidInputError("item", "an item is one of a map step's: give its step too")
    value: Any
    if parameter is not None:
        if parameter not in record.parameters:
            known = ", ".join(map(repr, record.parameters)) or "none"
            raise InvalidInputError(
                "parameter", f"run {record.run_id} has no parameter {parameter!r}; it has {known}"
            )
        value, of = record.parameters[parameter], f"parameters.{parameter}"
    else:
        assert step is not None  # exactly one of step and parameter is given
        shown = record.steps.get(step)
        if shown is None:
            known = ", ".join(map(repr, record.steps)) or "none yet"
            raise InvalidInputError("step", f"run {record.run_id} has no step {step!r}; its steps: {known}")
        value, of = shown.output, f"steps.{step}.output"
        if item is not None:
            value, of = _item_output(manager, record, step, item), f"steps.{step}.items.{item}.output"
    return text_page(value, of, offset)


def text_page(value: Any, of: str, offset: int) -> ValuePage:
    """The page of :data:`VALUE_PAGE_CHARS` of ``value``'s JSON text (secrets redacted) that starts at
    character ``offset``; ``of`` names the value.

    Raises:
        InvalidInputError: ``offset`` (value_offset) past the text's end.
    """
    text = json.dumps(redact(value), ensure_ascii=False, default=str)
    if offset >= len(text):
        raise InvalidInputError(
            "value_offset", f"{offset} is past the end of {of}'s JSON text: give 0 to {len(text) - 1}"
        )
    end = min(offset + VALUE_PAGE_CHARS, len(text))
    return ValuePage(
        of=of,
        json_length=len(text),
        offset=offset,
        json_text=text[offset:end],
        next_offset=end if end < len(text) else None,
    )


def _item_output(manager: WorkflowManager, record: RunRecord, step: str, index: int) -> Any:
    items = record.steps[step].items
    if items is None:
        raise InvalidInputError(
            "item", f"step {step!r} is no map step with items (not yet expanded, or no for_each)"
        )
    if index >= items.total:
        raise InvalidInputError("item", f"step {step!r} has items 0 to {items.total - 1}; got {index}")
    read = manager.get_run(record.run_id, items=ItemWindow(offset=index, limit=1)).steps[step].items
    listed = read.items if read is not None else []
    if not listed or listed[0].index != index:
        raise InvalidInputError("item", f"step {step!r} has no item {index} recorded yet")
    return listed[0].output
