"""The result pipeline: every successful return value of a task or workflow step passes through it once,
on the worker thread, before it becomes a record, a store row or a tool result.

Secrets are redacted first (see :mod:`codomyrmex_orchestration._redact`; a workflow secret a step echoes
back becomes ``[secret:NAME]``); text JSON cannot carry (a lone surrogate: a file name that is not UTF-8)
fails the attempt, naming where it is; then the output cap applies
(see :class:`~codomyrmex_orchestration.core._limits.OutputLimiter`): a spilled file holds the redacted
value. The pipeline owns no state of its own; the limiter counts what it truncated.

Before it, an *action*'s return value must be a JSON value (:func:`json_output`, at each place an action
is called): anything else (a set, bytes, a datetime, an object) fails the step, since redaction walks
JSON values only and the store would write such a value in its own way (a set as a list, secret and all).
A plain callable given to the scheduler (``ParallelExecutor``) may return any Python value.
"""

from __future__ import annotations

from typing import Any

from codomyrmex_orchestration._redact import redact
from codomyrmex_orchestration._text import lone_surrogate_at
from codomyrmex_orchestration.core._limits import OutputLimiter
from codomyrmex_orchestration.errors import StepFailedError

__all__ = ["ResultPipeline", "json_output"]

#: Values that hold no text, and containers that hold none when empty (most steps' outputs: ``None``, a
#: number, ``{}``): neither redaction nor the text check has anything to look at.
_HOLD_NO_TEXT = frozenset({int, float, bool})
_CONTAINERS = frozenset({dict, list, tuple})


class ResultPipeline:
    """Redact, refuse text JSON cannot carry, then cap.

    Args:
        output_limit: the cap on an output's size (too-large outputs become a truncation marker,
            optionally spilled to a file); ``None``: no cap.
    """

    __slots__ = ("output_limit",)

    def __init__(self, output_limit: OutputLimiter | None = None) -> None:
        self.output_limit = output_limit

    def __call__(self, value: Any, run_id: str | None, step_name: str | None, task_id: str) -> Any:
        """``value`` as it may be recorded: redacted and within the cap. Every attempt calls it: called
        with keywords, an instance's ``__call__`` costs CPython a dict of them (about 0.25 µs)."""
        if value is None:
            return None
        kind = type(value)
        if kind not in _HOLD_NO_TEXT and (kind not in _CONTAINERS or value):
            value = redact(value)
            if type(value) is str:
                if not value.isascii():  # a flag of the string: most text is decided without a scan
                    _refuse_lone_surrogates(value, step_name or task_id)
            else:
                _refuse_lone_surrogates(value, step_name or task_id)
        if self.output_limit is not None:
            value = self.output_limit(value, run_id, step_name, task_id)
        return value


def _refuse_lone_surrogates(value: Any, name: str) -> None:
    """Raise when ``value`` holds text no store or client can take (it would be refused when recorded)."""
    found = lone_surrogate_at(value)
    if found is None:
        return
    where, text = found
    raise StepFailedError(
        name,
        f"its output{where} holds text that is not valid UTF-8 ({text}: a lone surrogate, what Python makes "
        "of bytes it cannot decode, e.g. a file name from os.listdir); JSON cannot carry it. Return text "
        "decoded with errors='replace' (name.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace')) "
        "or the bytes as hex or base64",
        error_type="UnicodeEncodeError",
    )


#: What JSON holds (``bool`` is an ``int``; enums of ``str`` or ``int`` are written as their values).
_JSON_SCALARS = (str, int, float)


def json_output(value: Any, name: str) -> Any:
    """``value``, the return value of an action run as step or task ``name``, when it is a JSON value.

    Raises:
        StepFailedError: ``value`` holds something else; the message names where and what is accepted.
    """
    of = type(value)
    if value is None or of in _HOLD_NO_TEXT or of is str or (of in _CONTAINERS and not value):
        return value  # most outputs: nothing inside to look at
    found = _not_json_at(value) if _holds_non_json(value) else None
    if found is None:
        return value
    where, kind = found
    raise StepFailedError(
        name,
        f"its output{where} is a {kind}, which JSON cannot hold; an action returns JSON values only: dict "
        "(keys str, int, float, bool or None), list, tuple, str, int, float, bool or None (convert it: "
        "list(a_set), a_datetime.isoformat(), bytes as hex or base64)",
        error_type="TypeError",
    )


def _is_key(key: Any) -> bool:
    return key is None or isinstance(key, _JSON_SCALARS)


def _holds_non_json(value: Any) -> bool:
    """The cheap pass: no path is built (a stack, so deep nesting costs no recursion)."""
    stack = [value]
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        if item is None or isinstance(item, _JSON_SCALARS):
            continue
        if isinstance(item, dict):
            if not all(map(_is_key, item)):
                return True
            extend(item.values())
        elif isinstance(item, list | tuple):
            extend(item)
        else:
            return True
    return False


def _not_json_at(value: Any) -> tuple[str, str] | None:
    """Where the first value JSON cannot hold is (``.key[2]``, empty for ``value`` itself), and its type."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if item is None or isinstance(item, _JSON_SCALARS):
            continue
        if isinstance(item, dict):
            for key in item:
                if not _is_key(key):
                    return f"{path} (a key)", type(key).__name__
            stack.extend((f"{path}.{key}", inner) for key, inner in reversed(item.items()))
        elif isinstance(item, list | tuple):
            stack.extend((f"{path}[{i}]", inner) for i, inner in reversed(list(enumerate(item))))
        else:
            return path, type(item).__name__
    return None
