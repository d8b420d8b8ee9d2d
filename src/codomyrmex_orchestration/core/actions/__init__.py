"""Actions: what a step does. ``create_registry()`` returns a registry with the built-ins and plugins."""

from __future__ import annotations

import importlib

from codomyrmex_orchestration.core.actions import _plugins
from codomyrmex_orchestration.core.actions._params import (
    ParameterReaders,
    get_bool,
    get_number,
    get_str,
    get_str_map,
)
from codomyrmex_orchestration.core.actions._plugins import ENTRY_POINT_GROUP, load_plugins
from codomyrmex_orchestration.core.actions._registry import (
    ActionContext,
    ActionDefinition,
    ActionFunc,
    ActionRegistry,
    CancelEvent,
    SubWorkflowRunner,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "ActionContext",
    "ActionDefinition",
    "ActionFunc",
    "ActionRegistry",
    "CancelEvent",
    "ParameterReaders",
    "SubWorkflowRunner",
    "create_registry",
    "get_bool",
    "get_number",
    "get_str",
    "get_str_map",
    "load_plugins",
]

# The built-in action modules, imported by the first create_registry(), not with this package: their
# imports (httpx for http, subprocess plumbing for shell and python) are not needed to describe the
# server's tools or to read ActionContext, which is what most importers of this package want.
_BUILT_IN = ("core", "shell", "python", "http", "workflow")


def create_registry(*, allow_code_execution: bool = True, load_plugins: bool = True) -> ActionRegistry:
    """A registry holding every built-in action (and entry-point plugins when ``load_plugins``).

    Args:
        allow_code_execution: when False, ``shell.run`` and ``python.call`` (and any plugin action
            flagged ``executes_code``) are refused with ``ActionRefusedError``.
        load_plugins: load entry points of group ``codomyrmex_orchestration.actions``; a broken
            plugin is logged and skipped.
    """
    registry = ActionRegistry(allow_code_execution=allow_code_execution)
    for name in _BUILT_IN:
        importlib.import_module(f"{__name__}.{name}").register(registry)
    if load_plugins:
        # The parameter shadows the function of the same name here.
        _plugins.load_plugins(registry)
    return registry
