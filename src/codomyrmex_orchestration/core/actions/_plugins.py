"""Third-party actions from entry points of group ``codomyrmex_orchestration.actions``.

Each entry point loads to a callable taking the registry, an :class:`ActionDefinition`, or an iterable
of definitions. A plugin registers into a staging registry first, so a broken plugin (import error,
exception, a name clash with an existing action) is logged and skipped as a whole, never half-applied.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

import structlog

from codomyrmex_orchestration.core.actions._registry import ActionDefinition, ActionRegistry
from codomyrmex_orchestration.logs import ensure_stderr_default

__all__ = ["ENTRY_POINT_GROUP", "load_plugins"]

ENTRY_POINT_GROUP = "codomyrmex_orchestration.actions"


def _stage(entry_point: EntryPoint, target: ActionRegistry) -> list[ActionDefinition]:
    loaded = entry_point.load()
    staging = ActionRegistry(allow_code_execution=target.allow_code_execution)
    if isinstance(loaded, ActionDefinition):
        staging.register(loaded)
    elif callable(loaded):
        loaded(staging)
    elif isinstance(loaded, Iterable) and not isinstance(loaded, str | bytes):
        for item in loaded:
            if not isinstance(item, ActionDefinition):
                raise TypeError(f"the iterable holds a {type(item).__name__}, not an ActionDefinition")
            staging.register(item)
    else:
        raise TypeError(
            f"loaded a {type(loaded).__name__}; expected a callable taking the registry, "
            "an ActionDefinition or an iterable of them"
        )
    definitions = list(staging.definitions())
    clashes = sorted(d.qualified_name for d in definitions if d.qualified_name in target)
    if clashes:
        raise ValueError(f"actions already registered: {', '.join(clashes)}")
    return definitions


def load_plugins(registry: ActionRegistry, *, group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Register the actions of every entry point in ``group``; return the names of plugins loaded.

    A plugin that fails is logged to stderr with its name and the reason, and skipped.
    """
    ensure_stderr_default()
    log = structlog.get_logger("codomyrmex_orchestration.actions.plugins")
    loaded: list[str] = []
    for entry_point in entry_points(group=group):
        try:
            definitions = _stage(entry_point, registry)
            for definition in definitions:
                registry.register(definition)
        except Exception as exc:  # a plugin is third-party code: any failure skips it, never the server
            log.warning(
                "action plugin skipped",
                plugin=entry_point.name,
                value=entry_point.value,
                error=f"{type(exc).__name__}: {exc}",
            )
            continue
        log.debug(
            "action plugin loaded",
            plugin=entry_point.name,
            actions=[d.qualified_name for d in definitions],
        )
        loaded.append(entry_point.name)
    return loaded
