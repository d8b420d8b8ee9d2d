"""The size budget of one resolution of a step's parameters (see :mod:`.templating`): every reference
is charged for what it puts in — the text an embedded reference adds, the JSON size of the value a
whole-value reference passes — so resolving can never hand an action more than the budget, however
often one large value is referenced.

A :class:`Budget` lives for one resolution; the sizes of the values it measured may be kept by the
template (``sizes``) for its next resolutions, as a map step's parameters resolve once per item.
"""

from __future__ import annotations

import json
from typing import Any

from codomyrmex_orchestration.errors import TemplateError

from ._json_text import json_chars

__all__ = ["BUDGET_NAME", "Budget", "to_text"]

#: How the refusal names the budget: the setting that sets it.
BUDGET_NAME = "the template expansion budget (CODOMYRMEX_MAX_RESOLVED_SIZE)"


class Budget:
    """Characters one resolution may still put in.

    Args:
        limit: the budget, in characters.
        sizes: JSON sizes measured before, by the value's ``id`` (with the value, so the id stays its
            own); filled as values are measured. Only the values of references that name the same
            object each time (steps, parameters) are kept.
    """

    __slots__ = ("left", "limit", "sizes")

    def __init__(self, limit: int, sizes: dict[int, tuple[Any, int]] | None = None) -> None:
        self.limit = limit
        self.left = limit
        self.sizes = sizes if sizes is not None else {}

    def take(self, n: int, raw: str) -> None:
        self.left -= n
        if self.left < 0:
            raise TemplateError(
                raw,
                f"the resolved parameters would exceed {self.limit} characters, {BUDGET_NAME}; "
                "reference a smaller value or a part of it, or raise the setting",
            )

    def charge(self, value: Any, raw: str, *, keep: bool = True) -> Any:
        """Charge a whole-value reference for ``value``'s JSON size and return ``value``. Strings and
        numbers cost what their length says; other values are measured a piece at a time, never
        beyond what is left (``keep``: remember the size for the template's next resolutions)."""
        kind = type(value)
        if kind is str:
            self.take(len(value), raw)
        elif value is None or kind is bool:
            self.take(5, raw)
        elif kind is int:
            self.take(value.bit_length() // 3 + 2, raw)  # digits <= bits * log10(2) + 1, and a sign
        elif kind is float:
            self.take(24, raw)  # the longest float text: -1.7976931348623157e+308
        else:
            known = self.sizes.get(id(value))
            if known is not None and known[0] is value:
                size = known[1]
            else:
                size = json_chars(value, max(self.left, 0))
                if keep and size <= self.left:  # counted to the end: the exact size
                    self.sizes[id(value)] = (value, size)
            self.take(size, raw)
        return value


def to_text(value: Any, budget: Budget, raw: str) -> str:
    """``value`` as text embedded in a string: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        budget.take(len(value), raw)
        return value
    # JSON for everything else (true/false/null, numbers, objects, lists); iterencode lets a huge
    # value fail the budget before the whole string exists.
    parts: list[str] = []
    for chunk in json.JSONEncoder(ensure_ascii=False, default=str).iterencode(value):
        budget.take(len(chunk), raw)
        parts.append(chunk)
    return "".join(parts)
