"""How pydantic's validation errors read to a person or a language model: union labels taken out of field
paths, the failed alternatives of one field merged into one sentence, class names replaced by the shape
expected. Serves :func:`codomyrmex_orchestration.errors.validation_problems`; owns no state.

pydantic locates an error inside a union at the member it tried, by that member's name:
``steps.0.resources.compute.float``, ``.int``, ``.str`` for ``float | int | str``. Those names are not
fields; an agent reading ``compute.float`` would take it for one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["Problem", "describe", "union_problems"]

#: pydantic-core's names of the validators of builtin types, as it puts them in a location.
_SCALAR_LABELS = frozenset(
    {
        "any",
        "bool",
        "bytes",
        "callable",
        "complex",
        "date",
        "datetime",
        "decimal",
        "float",
        "int",
        "none",
        "str",
        "time",
        "timedelta",
        "url",
        "multi-host-url",
        "uuid",
    }
)
#: ``list[any]``, ``dict[str,any]``, ``literal['a','b']``, ``function-after[check(), int]``, ...
_GENERIC_LABEL = re.compile(r"^[a-z][a-z-]*\[.*\]$", re.DOTALL)
#: A model's class name (``StepCacheSpec``): a label only beside a builtin one, since a key of an open
#: object (a resource named ``Gpu``) looks the same.
_CLASS_LABEL = re.compile(r"^[A-Z][A-Za-z0-9_]*[a-z][A-Za-z0-9_]*$")

#: The shape an error type asks for, in words.
_SHAPES = {
    "float_type": "a number",
    "float_parsing": "a number",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "string_type": "a string",
    "bytes_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "dataclass_type": "an object",
    "none_required": "null",
}
#: Strict scalar fields (a workflow's numbers and booleans, every tool argument): what each expects, and
#: the JSON types a value given in quotes would have to be to fit it (``"5"`` for a number: write 5).
_STRICT_SCALARS: dict[str, tuple[str, tuple[type, ...]]] = {
    "float_type": ("a number", (int, float)),
    "int_type": ("a whole number", (int,)),
    "bool_type": ("true or false", (bool,)),
}
#: Most characters of a wrong value quoted back.
_QUOTED_CHARS = 40
#: The error types whose message names a class.
_CLASS_NAMING = frozenset({"model_type", "model_attributes_type", "dataclass_type"})
#: What pydantic puts before the message of an error a validator raised.
_PREFIXES = ("Value error, ", "Assertion failed, ")


class Problem:
    """One problem to report: its field path (union labels dropped), the errors it stands for, and
    whether they are the failed members of one union."""

    def __init__(self, loc: tuple[Any, ...], path: tuple[Any, ...], errors: list[Mapping[str, Any]]) -> None:
        self.loc = loc  #: as pydantic gave it, labels included (for ``accepted_at``)
        self.path = path
        self.errors = errors

    @property
    def error(self) -> Mapping[str, Any]:
        return self.errors[0]


def _builtin_label(part: Any) -> bool:
    return isinstance(part, str) and (part in _SCALAR_LABELS or bool(_GENERIC_LABEL.match(part)))


def _labels(locs: Sequence[tuple[Any, ...]], known: frozenset[str]) -> set[tuple[Any, ...]]:
    """The locations whose next part is a union member's name: a failed union reports every member, so
    two or more parts follow there, all names of validators (at least one of a builtin type), no field.
    Keys of an open object named like types (``{"str": [1], "int": [1]}``) are told apart by what follows
    them: typing flattens a union of unions, so a member's name is never followed by other members'."""
    following: dict[tuple[Any, ...], set[Any]] = {}
    for loc in locs:
        for i in range(len(loc)):
            following.setdefault(loc[:i], set()).add(loc[i])
    candidates = {
        prefix
        for prefix, parts in following.items()
        if len(parts) >= 2
        and any(_builtin_label(p) for p in parts)
        and all(
            isinstance(p, str) and p not in known and (_builtin_label(p) or _CLASS_LABEL.match(p))
            for p in parts
        )
    }
    return {
        prefix
        for prefix in candidates
        if not any((*prefix, part) in candidates for part in following[prefix])
    }


def union_problems(errors: Sequence[Mapping[str, Any]], known: frozenset[str]) -> list[Problem]:
    """The errors as problems, in order: union labels dropped from each location and the errors of one
    union's members at the same field merged into one problem."""
    locs = [tuple(err.get("loc", ())) for err in errors]
    unions = _labels(locs, known)
    problems: list[Problem] = []
    merged: dict[tuple[Any, ...], Problem] = {}
    for err, loc in zip(errors, locs, strict=True):
        path = tuple(part for i, part in enumerate(loc) if loc[:i] not in unions)
        if len(path) == len(loc):
            problems.append(Problem(loc, path, [err]))
        elif path in merged:
            merged[path].errors.append(err)
        else:
            merged[path] = Problem(loc[: len(path)], path, [err])
            problems.append(merged[path])
    return problems


def _message(err: Mapping[str, Any]) -> str:
    msg = str(err.get("msg", "invalid value"))
    for prefix in _PREFIXES:
        msg = msg.removeprefix(prefix)
    return msg


def _given(value: Any) -> str:
    """A wrong value as the agent wrote it, in JSON words: ``the string "5"``, ``2.5``, ``true``."""
    if isinstance(value, str):
        text = json.dumps(value if len(value) <= _QUOTED_CHARS else value[:_QUOTED_CHARS] + "...")
        return f"the string {text}"
    if isinstance(value, bool) or value is None or isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "a list"
    return "an object" if isinstance(value, Mapping) else f"a {type(value).__name__}"


def _wrong_scalar(err: Mapping[str, Any]) -> str | None:
    """For a strict number or boolean given as another JSON type: what was expected, what was given, and
    the value to write when it is only quoted (``"5"``) or written as a float (``2.0`` for a count)."""
    wanted = _STRICT_SCALARS.get(str(err.get("type", "")))
    if wanted is None or "input" not in err:
        return None
    expected, fitting = wanted
    value = err["input"]
    hint = ""
    if isinstance(value, str) and len(value) <= _QUOTED_CHARS:
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        bool_ok = bool in fitting
        if isinstance(parsed, fitting) and (bool_ok or not isinstance(parsed, bool)):
            hint = f" (write {json.dumps(parsed)}, without the quotes)"
    elif isinstance(value, float) and int in fitting and float not in fitting and value.is_integer():
        hint = f" (write {int(value)})"
    return f"expected {expected}, got {_given(value)}{hint}"


def _shape(err: Mapping[str, Any], fields: Callable[[], Iterable[str] | None]) -> str | None:
    shape = _SHAPES.get(str(err.get("type", "")))
    if str(err.get("type")) in _CLASS_NAMING:
        names = list(fields() or ())
        if names:
            return f"an object with the fields {', '.join(names)}"
    return shape


def describe(problem: Problem, fields: Callable[[], Iterable[str] | None]) -> str:
    """What is wrong at ``problem.path``, in words: the shape expected (``fields()``: the fields of the
    object expected there, or None), or pydantic's message without its "Value error, " prefix."""
    if len(problem.errors) == 1:
        if (wrong := _wrong_scalar(problem.error)) is not None:
            return wrong
        if str(problem.error.get("type")) in _CLASS_NAMING:  # "... or instance of StepCacheSpec"
            return f"Input should be {_shape(problem.error, fields)}"
        return _message(problem.error)
    wanted: list[str] = []
    for err in problem.errors:
        text = _shape(err, fields) or _message(err).removeprefix("Input should be ")
        if text not in wanted:
            wanted.append(text)
    if "a number" in wanted and "an integer" in wanted:
        wanted.remove("an integer")
    listing = wanted[0] if len(wanted) == 1 else f"{', '.join(wanted[:-1])} or {wanted[-1]}"
    return f"Input should be {listing}"
