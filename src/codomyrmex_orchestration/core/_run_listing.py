"""A listing of runs: the store's page of a query merged with the live runs it does not have yet.

Owns no state: :class:`RunQuery` is the filters of one listing, :func:`merged_listing` reads the store's
page and puts the live runs that belong in it in their place.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

from codomyrmex_orchestration.core._store_codec import parse_cursor

if TYPE_CHECKING:
    from codomyrmex_orchestration.core.models import RunRecord, WorkflowStatus
    from codomyrmex_orchestration.core.store import StateStore

__all__ = ["RunQuery", "merged_listing"]


class RunQuery(NamedTuple):
    """A run listing's filters: the store applies them to its rows, :meth:`matches` to a live run."""

    workflow_name: str | None = None
    status: WorkflowStatus | None = None
    since: datetime | None = None
    until: datetime | None = None
    #: Only the sub-runs started by the steps of this run (``workflow.run``).
    parent_run_id: str | None = None

    def matches(self, run: RunRecord, after: tuple[float, str] | None) -> bool:
        """True when ``run`` passes every filter and comes after the cursor ``after`` (older runs)."""
        return (
            (self.workflow_name is None or run.workflow_name == self.workflow_name)
            and (self.status is None or run.status is self.status)
            and (self.since is None or run.created_at >= self.since)
            and (self.until is None or run.created_at < self.until)
            and (self.parent_run_id is None or run.parent_run_id == self.parent_run_id)
            and (after is None or (run.created_at.timestamp(), run.run_id) < after)
        )


def merged_listing(
    store: StateStore,
    query: RunQuery,
    live: list[RunRecord],
    *,
    limit: int,
    cursor: str | None,
    steps: bool,
) -> list[RunRecord]:
    """The store's page of ``query`` with the ``live`` runs that belong in it, in the store's order
    (newest ``(created_at, run_id)`` first); a live record replaces its stored copy.

    Raises:
        InvalidInputError: ``cursor`` is not one ``run_cursor`` made.
    """
    stored = store.list_runs(**query._asdict(), limit=limit, cursor=cursor, steps=steps)
    after = parse_cursor(cursor) if cursor is not None else None
    records = {r.run_id: r for r in stored}
    records.update((run.run_id, run) for run in live if query.matches(run, after))
    ordered = sorted(records.values(), key=lambda r: (r.created_at.timestamp(), r.run_id), reverse=True)
    return ordered[:limit]
