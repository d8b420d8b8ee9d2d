"""JSON's meaning of ``==``, ``<`` and ``in`` for the values a ``run_if`` condition compares, where
Python's differs: a boolean is not a number (``true == 1`` is false, ``true > 0`` cannot be compared),
also inside lists and objects. No state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["json_contains", "json_equal", "json_less"]


def json_equal(left: Any, right: Any) -> bool:
    """Equal as JSON values: a boolean equals only a boolean; numbers by value (``1 == 1.0``); lists
    item by item and objects key by key, with the same rule."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left is right
    if isinstance(left, list | tuple) and isinstance(right, list | tuple):
        return len(left) == len(right) and all(json_equal(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    return bool(left == right)


def json_less(left: Any, right: Any) -> bool:
    """``left < right`` for numbers, strings and lists of them (compared item by item, as Python does).

    Raises:
        TypeError: the values have no order between them (a boolean against anything, null, a number
            against a string, objects).
    """
    if isinstance(left, bool) or isinstance(right, bool):
        raise TypeError("a boolean has no order")
    if isinstance(left, list | tuple) and isinstance(right, list | tuple):
        for a, b in zip(left, right, strict=False):
            if not json_equal(a, b):
                return json_less(a, b)
        return len(left) < len(right)
    return bool(left < right)


def json_contains(container: Any, item: Any) -> bool:
    """``item in container``: a list holds an item :func:`json_equal` to it; a string its substrings,
    an object its keys (as Python's ``in``).

    Raises:
        TypeError: ``container`` holds nothing (a number, null, a boolean), or a string is searched for
            something that is not a string.
    """
    if isinstance(container, list | tuple):
        return any(json_equal(item, member) for member in container)
    return item in container
