"""Policy defaults pinned onto actions: values every call of a guarded action finds in ``ctx.extras``.

The server's transport policy (private addresses blocked for ``http.request``, the ``python.call``
module allow-list) and the CLI's settings both pin them here; a step's own parameters cannot lift them.
A backend that runs steps in other processes (Dask) sends :func:`pinned_extras` with each step, since a
worker's registry is its own. It owns no state beyond the wrapped definitions it registers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from codomyrmex_orchestration.core.actions._registry import ActionRegistry
from codomyrmex_orchestration.errors import UnknownActionError

__all__ = ["pin_extras", "pinned_extras"]


def pin_extras(registry: ActionRegistry, extras: Mapping[str, Any]) -> None:
    """Make every network or code-executing action of ``registry`` run with ``extras`` in ``ctx.extras``.

    Idempotent for the same ``extras``: a definition already wrapped with them is left as it is.
    """
    pinned = dict(extras)
    if not pinned:
        return
    for definition in registry.definitions():
        guarded_kind = definition.network or definition.executes_code
        if not guarded_kind or getattr(definition.func, "_policy_extras", None) == pinned:
            continue
        original = definition.func

        def guarded(params: dict[str, Any], ctx: Any, _original: Any = original) -> Any:
            ctx.extras.update(pinned)
            return _original(params, ctx)

        guarded._policy_extras = pinned  # type: ignore[attr-defined]  # marks the wrapper: idempotent
        registry.register(dataclasses.replace(definition, func=guarded), replace=True)


def pinned_extras(registry: ActionRegistry, module: str, action: str) -> Mapping[str, Any]:
    """The extras :func:`pin_extras` pinned on ``module.action`` of ``registry`` (empty: none pinned, or
    the action is not registered there)."""
    try:
        definition = registry.get(module, action, check_allowed=False)
    except UnknownActionError:
        return {}
    pinned: Mapping[str, Any] = getattr(definition.func, "_policy_extras", {})
    return pinned
