"""Test actions for resume tests: an action that fails the first time each run calls it."""

from __future__ import annotations

import threading
from typing import Any

from codomyrmex_orchestration.core.actions import ActionContext, ActionDefinition, ActionRegistry


def register_fails_once(registry: ActionRegistry, *, action: str = "fails_once") -> dict[str, int]:
    """Register ``test.<action>``: it raises in a run's first call and returns "ok" after, so the run
    ends FAILED and a resume completes it. Returns the calls made, by run id."""
    calls: dict[str, int] = {}
    lock = threading.Lock()

    def fails_once(params: dict[str, Any], ctx: ActionContext) -> str:
        with lock:
            calls[ctx.run_id] = calls.get(ctx.run_id, 0) + 1
            first = calls[ctx.run_id] == 1
        if first:
            raise RuntimeError("interrupted")
        return "ok"

    registry.register(ActionDefinition("test", action, fails_once))
    return calls
