"""Actions: what a step does. ``create_registry()`` returns a registry with the built-ins and plugins."""

from __future__ import annotations

from codomyrmex_orchestration.core.actions import core as _core
from codomyrmex_orchestration.core.actions._registry import (
    ActionContext,
    ActionDefinition,
    ActionFunc,
    ActionRegistry,
    CancelEvent,
    SubWorkflowRunner,
)

__all__ = [
    "ActionContext",
    "ActionDefinition",
    "ActionFunc",
    "ActionRegistry",
    "CancelEvent",
    "SubWorkflowRunner",
    "create_registry",
]


def create_registry(*, allow_code_execution: bool = True, load_plugins: bool = True) -> ActionRegistry:
    """A registry holding every built-in action (and entry-point plugins when ``load_plugins``)."""
    registry = ActionRegistry(allow_code_execution=allow_code_execution)
    _core.register(registry)
    return registry
