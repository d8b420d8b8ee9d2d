"""A value's compact JSON text in bounded pieces, so that it can be measured, previewed or written to a
file without the whole text ever being held (the output cap and the template budget measure with it).

The pieces join to exactly what ``json.dumps(value, ensure_ascii=False, default=str,
separators=(",", ":"))`` writes, and fail as it fails (a circular structure, a key JSON cannot have).
A long string is encoded a slice at a time; the walk keeps an explicit stack, so deep nesting costs no
recursion. No state.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from json.encoder import encode_basestring  # the C escaper json.dumps uses with ensure_ascii=False
from typing import Any

__all__ = ["PIECE_CHARS", "json_chars", "json_pieces", "json_size_bound", "utf8_size"]

#: Pieces are about this many characters: small ones are joined up to it, long strings are escaped in
#: slices of it (a slice's escaped text is at most 6 times as long: ``\\u001f`` for a control character).
PIECE_CHARS = 64 * 1024
_INF = float("inf")
_END: Any = object()  # no more items; no value pending
#: What json.dumps(ensure_ascii=False, default=str, separators=(",", ":")) uses, made once.
_SMALL = json.JSONEncoder(ensure_ascii=False, default=str, separators=(",", ":"))
#: A JSON string escapes one character to at most 6 bytes (``\\u001f``); UTF-8 uses at most 4.
_MAX_BYTES_PER_CHAR = 6
#: Nesting beyond this is measured by serialising (as are circular structures, which then fail).
_MAX_BOUND_DEPTH = 16
#: The longest JSON text of a float (``-1.7976931348623157e+308``) is 24 characters.
_MAX_FLOAT_CHARS = 24


def _float_text(value: float) -> str:
    # json's spelling of floats (allow_nan, as json.dumps has by default)
    if value != value:
        return "NaN"
    if value == _INF:
        return "Infinity"
    if value == -_INF:
        return "-Infinity"
    return float.__repr__(value)


def _key_text(key: Any) -> str:
    """A dict key as json.dumps coerces it (before escaping)."""
    if isinstance(key, str):
        return key
    if isinstance(key, float):
        return _float_text(key)
    if key is True:
        return "true"
    if key is False:
        return "false"
    if key is None:
        return "null"
    if isinstance(key, int):
        return int.__repr__(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {key.__class__.__name__}")


def _long_string(text: str) -> Iterator[str]:
    # Escaping works character by character, so slices escape to the text's escaped form piece by piece.
    yield '"'
    for start in range(0, len(text), PIECE_CHARS):
        yield encode_basestring(text[start : start + PIECE_CHARS])[1:-1]
    yield '"'


def json_pieces(value: Any) -> Iterator[str]:
    """The compact JSON text of ``value``, in pieces of about :data:`PIECE_CHARS` characters.

    Raises:
        ValueError: ``value`` contains itself.
        TypeError: a dict key that is not a str, int, float, bool or None.
    """
    out: list[str] = []
    held = 0  # characters in out
    frames: list[tuple[Iterator[Any], bool, int]] = []  # (items left, is a dict, id) of open containers
    on_path: set[int] = set()
    first = True  # the next item is its container's first
    pending: Any = value
    while True:
        if pending is not _END:
            item, pending = pending, _END
            if isinstance(item, str):
                if len(item) > PIECE_CHARS:
                    if out:
                        yield "".join(out)
                        out.clear()
                        held = 0
                    yield from _long_string(item)
                    text = ""
                else:
                    text = encode_basestring(item)
            elif item is None:
                text = "null"
            elif item is True:
                text = "true"
            elif item is False:
                text = "false"
            elif isinstance(item, int):
                text = int.__repr__(item)
            elif isinstance(item, float):
                text = _float_text(item)
            elif isinstance(item, list | tuple | dict):
                is_dict = isinstance(item, dict)
                if not item:
                    text = "{}" if is_dict else "[]"
                else:
                    marker = id(item)
                    if marker in on_path:
                        raise ValueError("Circular reference detected")
                    on_path.add(marker)
                    frames.append((iter(item.items() if isinstance(item, dict) else item), is_dict, marker))
                    first = True
                    text = "{" if is_dict else "["
            else:
                pending = str(item)  # json.dumps(default=str)
                continue
            if text:
                out.append(text)
                held += len(text)
                if held >= PIECE_CHARS:
                    yield "".join(out)
                    out.clear()
                    held = 0
        if not frames:
            break
        items, is_dict, marker = frames[-1]
        entry = next(items, _END)
        if entry is _END:
            frames.pop()
            on_path.discard(marker)
            out.append("}" if is_dict else "]")
            held += 1
            first = False  # back in the parent, where this container was an item
            continue
        if not first:
            out.append(",")
            held += 1
        first = False
        if is_dict:
            key, pending = entry
            name = _key_text(key)
            if len(name) > PIECE_CHARS:
                if out:
                    yield "".join(out)
                    out.clear()
                    held = 0
                yield from _long_string(name)
                out.append(":")
                held += 1
            else:
                text = encode_basestring(name)
                out.append(text)
                out.append(":")
                held += len(text) + 1
        else:
            pending = entry
    if out:
        yield "".join(out)


def json_size_bound(value: Any, budget: int, depth: int = 0) -> int | None:
    """An upper bound on the UTF-8 bytes of ``value``'s JSON text if it is within ``budget``, else ``None``.

    Most values are small: bounding them without serialising saves the cap a serialisation on every
    step. ``None`` also means "cannot tell cheaply" (a type JSON encodes through ``default=str``, a
    non-string key, deep nesting): the caller then serialises to measure exactly.
    """
    kind = type(value)
    if kind is str:
        size = len(value) * _MAX_BYTES_PER_CHAR + 2
    elif value is None or kind is bool:
        size = 5
    elif kind is int:
        size = value.bit_length() // 3 + 2  # digits <= bits * log10(2) + 1, and a sign
    elif kind is float:
        size = _MAX_FLOAT_CHARS
    elif depth >= _MAX_BOUND_DEPTH:
        return None
    elif kind is dict:
        size = 2
        for key, item in value.items():
            if type(key) is not str:
                return None
            inner = json_size_bound(item, budget, depth + 1)
            if inner is None:
                return None
            size += len(key) * _MAX_BYTES_PER_CHAR + 4 + inner  # quotes, colon, comma
            if size > budget:
                return None
    elif kind is list or kind is tuple:
        size = 2
        for item in value:
            inner = json_size_bound(item, budget, depth + 1)
            if inner is None:
                return None
            size += inner + 1
            if size > budget:
                return None
    else:
        return None
    return size if size <= budget else None


def json_chars(value: Any, limit: int) -> int:
    """Characters of ``value``'s compact JSON text, counted until they pass ``limit`` (a result above
    ``limit`` means "more than ``limit``", not the exact size). Holds one piece at a time."""
    if json_size_bound(value, PIECE_CHARS) is not None:  # plainly small: one call of the C encoder
        return len(_SMALL.encode(value))
    total = 0
    for piece in json_pieces(value):
        total += len(piece)
        if total > limit:
            break
    return total


def utf8_size(piece: str) -> int:
    """Bytes of ``piece`` in UTF-8 (a lone surrogate counted as the 3 bytes it would take)."""
    return len(piece) if piece.isascii() else len(piece.encode("utf-8", "surrogatepass"))
