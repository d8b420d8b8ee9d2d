"""A module imported on its first attribute access: code that uses a module only inside functions called
after start-up (the tools' argument and result models) keeps its ``m.Name`` spelling without importing
the module before a cold server answers ``tools/list`` (issue 23).

State: each attribute read, cached on the proxy (the module's own objects). The import system imports
the module once, under its own lock, so threads racing to the first access get the same objects, and a
cached attribute is written with the same value by whichever thread writes it.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["LazyModule"]


class LazyModule:
    """``LazyModule("pkg.mod").Name`` is ``pkg.mod.Name``; ``pkg.mod`` is imported at the first such read."""

    def __init__(self, name: str) -> None:
        self._lazy_name = name

    def __getattr__(self, attribute: str) -> Any:
        # Called only for attributes not cached yet: later reads are plain instance attributes.
        value = getattr(importlib.import_module(self._lazy_name), attribute)
        setattr(self, attribute, value)
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self._lazy_name!r}>"
