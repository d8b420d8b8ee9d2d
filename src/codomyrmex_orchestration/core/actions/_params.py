"""Parameter checking shared by the built-in actions: each error names ``parameters.<name>`` and says
what would be accepted, so a language model can correct the step without reading our source."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from codomyrmex_orchestration._redact import cut_margin, redact_text
from codomyrmex_orchestration._suggest import did_you_mean
from codomyrmex_orchestration.config import DEFAULT_MAX_OUTPUT_BYTES
from codomyrmex_orchestration.core.actions._registry import ActionContext
from codomyrmex_orchestration.errors import InvalidInputError

__all__ = [
    "MAX_OUTPUT_BYTES_LIMIT",
    "CappedBuffer",
    "ParameterReaders",
    "check_known",
    "get_bool",
    "get_max_output_bytes",
    "get_number",
    "get_str",
    "get_str_map",
    "json_safe",
    "literal_check",
    "output_cap",
]

#: Upper bound for any ``max_output_bytes`` parameter: outputs live in memory and in the state store.
MAX_OUTPUT_BYTES_LIMIT = 64 * 1024 * 1024


def _field(name: str) -> str:
    return f"parameters.{name}"


def literal_check(
    *checks: tuple[tuple[str, ...], Callable[[Mapping[str, Any]], object]],
) -> Callable[[Mapping[str, Any]], list[str]]:
    """An ``ActionDefinition.check`` built from the action's own readers of its parameters: each
    ``(names, read)`` runs ``read(parameters)`` (raising :class:`InvalidInputError`) when a step is
    defined, so that ``validate_workflow`` reports what the step would fail with, unless one of
    ``names`` holds a template (its value is known only when the step runs)."""

    def check(params: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        for names, read in checks:
            if any(_templated(params.get(name)) for name in names):
                continue
            try:
                read(params)
            except InvalidInputError as exc:
                problems.append(str(exc))
        return problems

    return check


def _templated(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


#: Reads (and checks) some of an action's parameters, raising :class:`InvalidInputError`.
Reader = Callable[[Mapping[str, Any]], Any]


class ParameterReaders:
    """An action's readers of its parameters, the one list of its parameter rules: :meth:`read` runs
    them all when the step runs, and :attr:`check` (its ``ActionDefinition.check``) runs the same ones
    on a step's literal parameters when a workflow is validated (see :func:`literal_check`), so that
    nothing the step would refuse is left to be found when it runs.

    Args:
        action: ``module.action``, named in messages.
        accepted: the parameter names and their descriptions (unknown names are refused).
        readers: ``key=(names, read)``: ``read(parameters)`` gives the value :meth:`read` returns under
            ``key``; ``names`` are the parameters whose values it judges (a template in one of them
            leaves the reader to the step's run). A reader must not look outside its parameters (no
            files, no server setting): what depends on those is checked by the action when it runs.
    """

    def __init__(self, action: str, accepted: Mapping[str, str], **readers: tuple[tuple[str, ...], Reader]):
        self.action = action
        self.accepted = accepted
        self._readers = readers
        self.check = literal_check(*readers.values())

    def read(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Every reader's value by its key, after refusing unknown names.

        Raises:
            InvalidInputError: the first parameter that is unknown or malformed.
        """
        check_known(params, self.accepted, self.action)
        return {key: read(params) for key, (_names, read) in self._readers.items()}


def check_known(params: Mapping[str, Any], accepted: Mapping[str, str], action: str) -> None:
    """Reject parameter names ``action`` does not know (a misspelt ``comand`` must not be ignored)."""
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise InvalidInputError(
            _field(unknown[0]),
            f"{action} does not accept {', '.join(repr(u) + did_you_mean(u, accepted) for u in unknown)}; "
            f"accepted parameters: {', '.join(sorted(accepted))}",
        )


def get_bool(params: Mapping[str, Any], name: str, default: bool, action: str) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise InvalidInputError(_field(name), f"{action} needs '{name}' to be true or false, got {value!r}")
    return value


def get_number(
    params: Mapping[str, Any],
    name: str,
    default: float | None,
    action: str,
    *,
    minimum: float = 0.0,
    maximum: float = 86_400.0,
    exclusive_minimum: bool = True,
) -> float | None:
    """A number in ``(minimum, maximum]`` (or ``[minimum, maximum]``), or ``default`` when absent/null."""
    value = params.get(name)
    if value is None:
        return default
    low_ok = isinstance(value, int | float) and (value > minimum if exclusive_minimum else value >= minimum)
    if isinstance(value, bool) or not low_ok or value > maximum:
        bound = "above" if exclusive_minimum else "at least"
        raise InvalidInputError(
            _field(name),
            f"{action} needs '{name}' to be a number {bound} {minimum:g} and at most {maximum:g}",
        )
    return float(value)


def get_str(
    params: Mapping[str, Any], name: str, action: str, *, required: bool = False, default: str | None = None
) -> str | None:
    value = params.get(name)
    if value is None:
        if required:
            raise InvalidInputError(_field(name), f"{action} needs '{name}', a non-empty string")
        return default
    if not isinstance(value, str) or (required and not value):
        raise InvalidInputError(_field(name), f"{action} needs '{name}' to be a non-empty string")
    return value


def get_str_map(params: Mapping[str, Any], name: str, action: str) -> dict[str, str]:
    """An object of string keys to string (or number) values; numbers are converted to text."""
    value = params.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInputError(_field(name), f"{action} needs '{name}' to be an object of string values")
    result: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or isinstance(item, bool) or not isinstance(item, str | int | float):
            raise InvalidInputError(
                f"{_field(name)}.{key}",
                f"{action} needs every value of '{name}' to be a string or a number, got {item!r}",
            )
        result[key] = str(item)
    return result


def get_max_output_bytes(params: Mapping[str, Any], action: str) -> int | None:
    """The step's ``max_output_bytes``, or None when it gives none (see :func:`output_cap`)."""
    value = params.get("max_output_bytes")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_OUTPUT_BYTES_LIMIT:
        raise InvalidInputError(
            "parameters.max_output_bytes",
            f"{action} needs 'max_output_bytes' to be an integer from 0 to {MAX_OUTPUT_BYTES_LIMIT}",
        )
    return value


def output_cap(given: int | None, ctx: ActionContext) -> int:
    """The step's ``max_output_bytes``, else ``ctx.extras``' (the server's setting), else 1 MiB."""
    if given is not None:
        return given
    fallback: int = ctx.extras.get("max_output_bytes", DEFAULT_MAX_OUTPUT_BYTES)
    return fallback


class CappedBuffer:
    """Keeps the first ``limit`` bytes written and counts the rest, so a chatty command cannot
    exhaust memory.

    It holds a few bytes more than ``limit`` (the redaction's :func:`cut_margin`, 0 without secrets): a
    secret that starts before the cut is seen whole, replaced, and only then is the text cut, so a cut
    never leaves the start of a secret readable.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._room = limit + cut_margin()  # the secrets a step can see are registered before it runs
        self._data = bytearray()
        self._total = 0
        self.dropped = 0  # bytes written beyond ``limit``

    def add(self, chunk: bytes) -> None:
        room = self._room - len(self._data)
        if room > 0:
            self._data += chunk[:room]
        self._total += len(chunk)
        self.dropped = max(0, self._total - self.limit)

    @property
    def full(self) -> bool:
        return len(self._data) >= self.limit

    @property
    def filled(self) -> bool:
        """Whether it holds all it will keep: reading more would only count dropped bytes."""
        return len(self._data) >= self._room and self.dropped > 0

    def raw(self) -> bytes:
        """The first ``limit`` bytes as they came (for a body that was not cut: all of it)."""
        return bytes(self._data[: self.limit])

    def head(self) -> str:
        """The first ``limit`` bytes as UTF-8 text (invalid bytes replaced); when bytes were dropped,
        secrets are redacted before the cut (see the class docstring)."""
        if not self.dropped:
            return self._data.decode("utf-8", errors="replace")
        text = redact_text(self._data.decode("utf-8", errors="replace"))
        return text.encode("utf-8")[: self.limit].decode("utf-8", errors="replace")

    def text(self) -> str:
        """UTF-8 text (invalid bytes replaced), with a marker when bytes were dropped."""
        text = self.head()
        if self.dropped:
            text += f"\n…[truncated {self.dropped} bytes]"
        return text


def json_safe(value: Any, what: str) -> Any:
    """Return ``value`` as it will be stored (a JSON round trip), or raise ``TypeError`` naming ``what``."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} is not JSON-serialisable ({exc})") from None
