"""What the engine answers when it starts (or resumes) a run: its record at once, or once the run ends
or the wait runs out, with each map step's items cut to a window when the caller shows only one (a tool
result shows its first page), and then, for a running run, only that window's items built. Owns no
state: the runs are the workflow manager's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from codomyrmex_orchestration.core._map_items import window_record

if TYPE_CHECKING:
    from codomyrmex_orchestration.core.models import ItemWindow, RunRecord
    from codomyrmex_orchestration.core.workflows import WorkflowManager

__all__ = ["run_answer"]


def run_answer(
    workflows: WorkflowManager, run_id: str, *, wait: bool, timeout: float | None, items: ItemWindow | None
) -> RunRecord:
    """Run ``run_id``'s record now, or with ``wait`` after waiting up to ``timeout`` seconds (``None``:
    until it ends); with ``items``, each map step lists only that window of its items (a 100,000-item
    map just started builds only those: the record's build costs what the answer shows).

    Raises:
        RunNotFoundError: unknown run id.
    """
    if not wait:
        return workflows.get_run(run_id, items=items)
    record = workflows.wait_run(run_id, timeout)
    return record if items is None else window_record(record, items)
