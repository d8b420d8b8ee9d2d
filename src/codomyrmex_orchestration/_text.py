"""Text that JSON cannot carry: the lone surrogates Python makes of bytes it cannot decode (file names from
``os.listdir``, ``sys.argv``, environment variables: the ``surrogateescape`` error handler).

UTF-8 cannot encode them, so pydantic's serializer and every strict JSON parser refuse them. Values the
engine makes (step outputs, parameters) are refused where they enter, naming where the text is
(:func:`lone_surrogate_at`); text shown to a person or a client (paths, messages) is made
:func:`readable`. No state.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["holds_lone_surrogate", "lone_surrogate_at", "readable", "readable_value"]

_SURROGATE = re.compile("[\ud800-\udfff]")
#: Characters of the offending text an error quotes.
_QUOTED = 60


def holds_lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate."""
    # isascii() reads a flag of the string: most text is decided without a scan.
    return not text.isascii() and _SURROGATE.search(text) is not None


def readable(text: str) -> str:
    """``text`` as UTF-8 can carry it: bytes that were decoded with ``surrogateescape`` are decoded again
    as UTF-8 (under a C locale, ``ü`` given as UTF-8 bytes reads as ``ü`` again), and those that are not
    UTF-8, or any other lone surrogate, become U+FFFD. ``text`` itself when it has none."""
    if not holds_lone_surrogate(text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate surrogateescape never makes
        return _SURROGATE.sub("\ufffd", text)


def readable_value(value: Any) -> Any:
    """A JSON-like ``value`` with every string (keys too) made :func:`readable`; other values as they are."""
    kind = type(value)
    if kind is str:
        return readable(value)
    if kind is dict:
        return {readable(k) if type(k) is str else k: readable_value(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [readable_value(v) for v in value]
    return value


def lone_surrogate_at(value: Any) -> tuple[str, str] | None:
    """Where in a JSON-like ``value`` (dicts, lists, tuples, strings; keys too) the first text holding a
    lone surrogate is, as ``(path, quoted text)`` (path like ``[0]`` or ``.files[2]``, empty for
    ``value`` itself; the text ``repr``-quoted and cut), or ``None`` when there is none."""
    kind = type(value)
    if kind is str:
        return ("", _quote(value)) if holds_lone_surrogate(value) else None
    if (kind is not dict and kind is not list and kind is not tuple) or not _any_surrogate(value):
        return None
    return _locate(value)


def _any_surrogate(value: Any) -> bool:
    """The cheap pass every output takes: no path is built (a stack, so deep nesting costs no recursion)."""
    stack = [value]
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is str:
            if not item.isascii() and _SURROGATE.search(item) is not None:
                return True
        elif kind is dict:
            for key in item:
                if type(key) is str and not key.isascii() and _SURROGATE.search(key) is not None:
                    return True
            extend(item.values())
        elif kind is list or kind is tuple:
            extend(item)
    return False


def _locate(value: Any) -> tuple[str, str] | None:
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        kind = type(item)
        if kind is str:
            if holds_lone_surrogate(item):
                return path, _quote(item)
        elif kind is dict:
            for key in item:
                if type(key) is str and holds_lone_surrogate(key):
                    return f"{path} (a key)", _quote(key)
            stack.extend((f"{path}.{key}", inner) for key, inner in reversed(item.items()))
        elif kind is list or kind is tuple:
            stack.extend((f"{path}[{i}]", inner) for i, inner in reversed(list(enumerate(item))))
    return None


def _quote(text: str) -> str:
    quoted = repr(text)  # repr escapes surrogates: the quote itself is plain text
    return quoted if len(quoted) <= _QUOTED else quoted[: _QUOTED - 4] + "...'"
