"""Secret redaction, in one place: values of secret-looking environment variables and registered secrets
(the bearer token) become ``[REDACTED]`` wherever they would leave the process or reach disk; workflow
secrets (``{{secrets.NAME}}``: ``CODOMYRMEX_SECRET_NAME`` or the secrets file) become ``[secret:NAME]``.

A variable is secret when its name contains TOKEN, SECRET, PASSWORD, PASSWD, CREDENTIAL or KEY (any
case) and its value has at least :data:`MIN_SECRET_LENGTH` characters (shorter values such as ``1`` would
redact ordinary text). Applied to action outputs and errors before they are recorded (so run records,
the state store and tool results never hold them), to tool results, and to every log line. It matches
exact values: a command that transforms a secret (base64, reversal) is not caught; not passing secrets to
untrusted steps is the real protection.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MIN_NAMED_SECRET_LENGTH",
    "MIN_SECRET_LENGTH",
    "REDACTED",
    "SECRET_ENV_PREFIX",
    "holds_secret",
    "is_secret_name",
    "redact",
    "redact_text",
    "register_secret",
    "secret_marker",
]

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 8
#: A workflow secret is declared as one, so it is redacted from this length on (shorter ones are refused
#: where they are resolved: a 3-character value would redact ordinary text and still leak).
MIN_NAMED_SECRET_LENGTH = 4
#: ``CODOMYRMEX_SECRET_<NAME>`` holds the workflow secret ``NAME``.
SECRET_ENV_PREFIX = "CODOMYRMEX_SECRET_"
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|KEY", re.IGNORECASE)

_lock = threading.Lock()
_registered: dict[str, str] = {}  # value -> what replaces it

#: (secret value, what replaces it), longest value first.
Secrets = list[tuple[str, str]]


def secret_marker(name: str) -> str:
    """What replaces the value of the workflow secret ``name``: ``[secret:NAME]``."""
    return f"[secret:{name}]"


def is_secret_name(name: str) -> bool:
    """True for environment variable names whose values are treated as secrets."""
    return bool(_SECRET_NAME.search(name))


def register_secret(value: str | None, name: str | None = None) -> None:
    """Treat ``value`` as a secret from now on (e.g. the bearer token read from a file); with ``name``, a
    workflow secret, replaced by ``[secret:NAME]`` (from :data:`MIN_NAMED_SECRET_LENGTH` characters)."""
    global _generation
    least = MIN_SECRET_LENGTH if name is None else MIN_NAMED_SECRET_LENGTH
    if value and len(value) >= least:
        marker = REDACTED if name is None else secret_marker(name)
        with _lock:
            if _registered.get(value) != marker:
                _registered[value] = marker
                _generation += 1


def _compute(env: Mapping[str, str]) -> tuple[tuple[tuple[str, str], ...], Secrets]:
    """The secret-named variables of ``env`` (all of them, whatever their length) and the secret values
    with what replaces each."""
    named = tuple((k, v) for k, v in env.items() if is_secret_name(k))
    values: dict[str, str] = {}
    for key, value in named:
        if key.startswith(SECRET_ENV_PREFIX) and len(value) >= MIN_NAMED_SECRET_LENGTH:
            values[value] = secret_marker(key[len(SECRET_ENV_PREFIX) :])
        elif len(value) >= MIN_SECRET_LENGTH:
            values.setdefault(value, REDACTED)
    with _lock:
        values.update(_registered)
    # Longest first, so a secret containing another is replaced whole.
    return named, sorted(values.items(), key=lambda item: len(item[0]), reverse=True)


class _Cached:
    """The secret values worked out from one state of the environment, and how to tell it changed."""

    __slots__ = ("count", "generation", "named", "values")

    def __init__(self, count: int, generation: int, named: tuple[tuple[str, str], ...], values: Secrets):
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


def _secrets(environ: Mapping[str, str] | None = None) -> Secrets:
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


def redact_text(text: str, secrets: Secrets | None = None) -> str:
    """``text`` with every secret value replaced by :data:`REDACTED` (``[secret:NAME]`` for a workflow
    secret)."""
    for secret, marker in _secrets() if secrets is None else secrets:
        if secret in text:
            text = text.replace(secret, marker)
    return text


def holds_secret(text: str) -> bool:
    """Whether ``text`` contains a secret value as it is, or as JSON writes it inside a string."""
    for secret, _marker in _secrets():
        if secret in text or _json_form(secret) in text:
            return True
    return False


def _json_form(secret: str) -> str:
    return json.dumps(secret, ensure_ascii=False)[1:-1]


def redact(value: Any, secrets: Secrets | None = None) -> Any:
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


def _walk(value: Any, secrets: Secrets) -> Any:
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, Mapping):
        return {_walk(k, secrets): _walk(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_walk(v, secrets) for v in value)
    return value
