"""Secret redaction, in one place: values of secret-looking environment variables and registered secrets
(the bearer token) become ``[REDACTED]`` wherever they would leave the process or reach disk; workflow
secrets (``{{secrets.NAME}}``: ``CODOMYRMEX_SECRET_NAME`` or the secrets file) become ``[secret:NAME]``.

A variable is secret when its name contains TOKEN, SECRET, PASSWORD, PASSWD, CREDENTIAL or KEY (any
case) and its value has at least :data:`MIN_SECRET_LENGTH` characters (shorter values such as ``1`` would
redact ordinary text). Applied to action outputs and errors before they are recorded (so run records,
the state store and tool results never hold them), to tool results, and to every log line.

What is matched is a secret's value in the forms libraries put it in without being asked to: in any
case (a URL's host comes back lowercased), with any of its characters percent-encoded (``quote``,
``quote_plus``, httpx's normalised paths: ``%40`` or ``@``, ``%20`` or ``+``, hex in either case), JSON-
or ``repr``-escaped, and base64-encoded (standard or URL-safe alphabet, at any offset of a longer encoded
text such as HTTP Basic credentials; the few characters at the edges that also encode the neighbouring
bytes stay). A command that transforms a secret on purpose (reverses it, hashes it) is not caught; not
passing secrets to untrusted steps is the real protection.

A part of a secret is never redacted on its own: that would tell whoever can put text through redaction
(``core.echo``) whether the text ends with the start of a secret, one guessed character after another.
Instead, code that cuts a text to a size redacts before it cuts (:func:`redact_text` then slice; for a
stream, :class:`~codomyrmex_orchestration.core.actions._params.CappedBuffer` keeps
:func:`cut_margin` bytes beyond its limit, so a secret across the cut is seen whole and replaced).
"""

from __future__ import annotations

import base64
import functools
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
    "cut_margin",
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
    """``text`` with every secret value, in any of the forms the module docstring lists, replaced by
    :data:`REDACTED` (``[secret:NAME]`` for a workflow secret)."""
    for secret, marker in _secrets() if secrets is None else secrets:
        text = _matcher(secret).sub(marker.replace("\\", "\\\\"), text)
    return text


def holds_secret(text: str) -> bool:
    """Whether ``text`` contains a secret value, in any of the forms :func:`redact_text` replaces."""
    return any(_matcher(secret).search(text) for secret, _marker in _secrets())


def cut_margin() -> int:
    """Bytes a text must run on past a cut for any secret that starts before the cut to end within it:
    the longest form of a secret (UTF-8 bytes) less one; 0 without secrets."""
    return max((_longest_form(secret) - 1 for secret, _marker in _secrets()), default=0)


def _char_forms(char: str) -> list[str]:
    """``char`` as it is, percent-encoded (its UTF-8 bytes), JSON-escaped (ASCII or not), ``repr``-escaped,
    and ``+`` for a space (``quote_plus``)."""
    forms = [char]
    for form in (
        "".join(f"%{b:02X}" for b in char.encode("utf-8")),
        json.dumps(char)[1:-1],
        json.dumps(char, ensure_ascii=False)[1:-1],
        repr(char)[1:-1],
        "+" if char == " " else char,
    ):
        if form not in forms:
            forms.append(form)
    return forms


def _base64_forms(secret: str) -> list[str]:
    """The characters of the base64 encoding of ``secret`` that depend on its bytes alone, for each of the
    three offsets it can have in a longer encoded text, in both alphabets."""
    data = secret.encode("utf-8")
    forms: list[str] = []
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + data).decode("ascii")
        fragment = encoded[-(-8 * offset // 6) : 8 * (offset + len(data)) // 6]
        if len(fragment) >= MIN_NAMED_SECRET_LENGTH:
            for form in (fragment, fragment.replace("+", "-").replace("/", "_")):
                if form not in forms:
                    forms.append(form)
    return forms


@functools.lru_cache(maxsize=1024)
def _matcher(secret: str) -> re.Pattern[str]:
    """One pattern for every form of ``secret``: case-insensitive characters with their encodings, or a
    base64 fragment (case counts there)."""
    chars = "".join(
        re.escape(forms[0]) if len(forms) == 1 else "(?:" + "|".join(map(re.escape, forms)) + ")"
        for forms in map(_char_forms, secret)
    )
    encoded = "".join(f"|(?-i:{re.escape(form)})" for form in _base64_forms(secret))
    return re.compile(chars + encoded, re.IGNORECASE)


@functools.lru_cache(maxsize=1024)
def _longest_form(secret: str) -> int:
    return sum(max(len(form.encode("utf-8")) for form in _char_forms(char)) for char in secret)


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
