"""'Did you mean ...?': the known name a misspelt one meant (actions, parameters, steps, fields): a
common alias first (``cmd`` -> ``command``), else the closest in spelling, for error messages a person or
a language model can act on. Owns no state."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["closest", "did_you_mean"]

#: How alike (difflib's ratio, 0-1) a known name must be to be suggested: 'comand' -> 'command' (0.92),
#: 'ecko' -> 'echo' (0.75), 'depends_on' -> 'dependencies' (0.64); unrelated names stay unsuggested.
CUTOFF = 0.6


#: Names people write for one they mean, tried before spelling, in order: the first one known wins
#: (``cmd`` is ``shell.run``'s ``command``, not ``cwd``, which it is closer to in letters). Mostly the
#: built-in actions' parameters, as other tools and libraries call them.
ALIASES: dict[str, tuple[str, ...]] = {
    "cmd": ("command",),
    "args": ("command", "parameters"),
    "argv": ("args", "command"),
    "script": ("command",),
    "exec": ("command",),
    "dir": ("cwd",),
    "directory": ("cwd",),
    "workdir": ("cwd",),
    "working_dir": ("cwd",),
    "environment": ("env",),
    "stdin": ("input",),
    "uri": ("url",),
    "href": ("url",),
    "link": ("url",),
    "endpoint": ("url",),
    "verb": ("method",),
    "data": ("body", "json"),
    "payload": ("json", "body"),
    "query": ("params",),
    "secs": ("seconds",),
    "sec": ("seconds",),
    "duration": ("seconds",),
    "delay": ("seconds",),
    "time": ("seconds",),
    "wait": ("seconds",),
    "msg": ("message",),
    "text": ("message",),
    "prompt": ("message",),
    "question": ("message",),
    "func": ("function",),
    "fn": ("function",),
    "callable": ("function",),
    "params": ("parameters",),
    "arguments": ("parameters", "args"),
    "inputs": ("parameters",),
    "name": ("workflow",),
    "workflow_name": ("workflow",),
    "needs": ("dependencies",),
    "after": ("dependencies",),
    "depends": ("dependencies",),
    "requires": ("dependencies",),
    "when": ("run_if",),
    "if": ("run_if",),
    "condition": ("run_if",),
    "retries": ("max_retries",),
}


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name ``name`` means, or None when none is close enough (case-insensitive): the one it
    is a common alias of (:data:`ALIASES`) if known, else the closest in spelling."""
    by_lower: dict[str, str] = {}
    for candidate in known:
        by_lower.setdefault(candidate.lower(), candidate)
    lower = name.lower()
    if lower in by_lower:  # only the case differs
        return by_lower[lower]
    for alias in ALIASES.get(lower, ()):
        if alias in by_lower:
            return by_lower[alias]
    matches = difflib.get_close_matches(lower, list(by_lower), n=1, cutoff=CUTOFF)
    return by_lower[matches[0]] if matches else None


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest known name, or ``""``."""
    match = closest(name, known)
    return f" (did you mean {match!r}?)" if match is not None and match != name else ""
