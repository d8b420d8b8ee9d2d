"""Secret redaction, in one place: values of secret-looking environment variables and registered secrets
(the bearer token) become ``[REDACTED]`` wherever they would leave the process or reach disk.

A variable is secret when its name contains TOKEN, SECRET, PASSWORD, PASSWD, CREDENTIAL or KEY (any
case) and its value has at least :data:`MIN_SECRET_LENGTH` characters (shorter values such as ``1`` would
redact ordinary text). Applied to action outputs and errors before they are recorded (so run records,
the state store and tool results never hold them), to tool results, and to every log line. It matches
exact values: a command that transforms a secret (base64, reversal) is not caught; not passing secrets to
untrusted steps is the real protection.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from typing import Any

__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "is_secret_name", "redact", "redact_text", "register_secret"]

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 8
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|KEY", re.IGNORECASE)

_lock = threading.Lock()
_registered: set[str] = set()


def is_secret_name(name: str) -> bool:
    """True for environment variable names whose values are treated as secrets."""
    return bool(_SECRET_NAME.search(name))


def register_secret(value: str | None) -> None:
    """Treat ``value`` as a secret from now on (e.g. the bearer token read from a file)."""
    global _generation
    if value and len(value) >= MIN_SECRET_LENGTH:
        with _lock:
            _registered.add(value)
            _generation += 1


def _compute(env: Mapping[str, str]) -> tuple[tuple[tuple[str, str], ...], list[str]]:
    """The secret-named variables of ``env`` (all of them, whatever their length) and the secret values."""
    named = tuple((k, v) for k, v in env.items() if is_secret_name(k))
    values = {v for _, v in named if len(v) >= MIN_SECRET_LENGTH}
    with _lock:
        values |= _registered
    # Longest first, so a secret containing another is replaced whole.
    return named, sorted(values, key=len, reverse=True)


class _Cached:
    """The secret values worked out from one state of the environment, and how to tell it changed."""

    __slots__ = ("count", "generation", "named", "values")

    def __init__(self, count: int, generation: int, named: tuple[tuple[str, str], ...], values: list[str]):
        self.count = count  # len(os.environ) then: catches a variable added or removed
        self.generation = generation  # of the registered secrets
        self.named = named  # every secret-named variable and its value: catches a secret changed
        self.values = values

    def still_valid(self) -> bool:
        if self.count != len(os.environ) or self.generation != _generation:
            return False
        get = os.environ.get
        return all(get(name) == value for name, value in self.named)


_cache: _Cached | None = None
_generation = 0


def _secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """The secret values now: recomputed only when the environment or the registered set changed.

    Every task output and log line passes through here, so the scan of the environment (a regex per
    variable) is cached. The check is public API only and cheap: the number of variables, and the
    value of each secret-named variable. It misses one change, seen at the next call that changes the
    count: a non-secret variable removed and a secret one added between two calls.
    """
    global _cache
    if environ is not None:
        return _compute(environ)[1]
    cached = _cache
    if cached is not None and cached.still_valid():
        return cached.values
    generation = _generation
    count = len(os.environ)
    named, values = _compute(os.environ)
    _cache = _Cached(count, generation, named, values)
    return values


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    """``text`` with every secret value replaced by :data:`REDACTED`."""
    for secret in _secrets() if secrets is None else secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact(value: Any, secrets: list[str] | None = None) -> Any:
    """``value`` (a JSON-like structure) with secrets replaced in every string, keys included; values
    without secrets are returned as they are (the same object)."""
    if _holds_no_text(value):
        return value
    found = _secrets() if secrets is None else secrets
    if not found:
        return value
    return _walk(value, found)


def _holds_no_text(value: Any) -> bool:
    """True for values that cannot hold a secret: scalars other than strings, empty containers. Most
    step outputs are such (``None``, a number, ``{}``); they skip the lookup of the secret values."""
    kind = type(value)
    return value is None or kind in _SCALARS or (kind in _CONTAINERS and not value)


_SCALARS = frozenset({bool, int, float})
_CONTAINERS = frozenset({dict, list, tuple, str})


def _walk(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, Mapping):
        return {_walk(k, secrets): _walk(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_walk(v, secrets) for v in value)
    return value
