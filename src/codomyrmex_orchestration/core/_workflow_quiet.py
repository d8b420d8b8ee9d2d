"""Whether a run waiting for input can still do anything without the answer.

:func:`busy_steps` reads a run (and its active sub-runs) under their locks and names the steps that are
cleared to run, queued or running and not parked on a question: while there are any, the run goes on
without an answer. A step that runs a sub-run counts as quiet when the sub-run waits and is quiet itself.
"""

from __future__ import annotations

from collections.abc import Callable

from codomyrmex_orchestration.core._workflow_run import RunState

__all__ = ["busy_steps"]

_HANDED_OUT = "handed out"


def busy_steps(run: RunState, children_of: Callable[[str], list[RunState]]) -> list[str]:
    """The steps of ``run`` that go on without an answer (empty: only questions hold it, or it ended).
    ``children_of(run_id)``: the active sub-runs of a run."""
    children = {c.record.parent_step: c for c in children_of(run.run_id)}
    with run.lock:
        if run.final is not None:
            return []
        graph, waiting, maps = run.graph, run.waiting, run.maps.maps
        handed = [n for n in graph if n not in waiting and n not in maps and graph.state(n) == _HANDED_OUT]
    busy = []
    for name in handed:
        child = children.get(name)
        if child is not None and child.waiting and not busy_steps(child, children_of):
            continue
        busy.append(name)
    return busy
