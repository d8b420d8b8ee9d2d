"""'Did you mean ...?': the closest known name to a misspelt one (actions, parameters, steps), for error
messages a person or a language model can act on. Owns no state."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["closest", "did_you_mean"]

#: How alike (difflib's ratio, 0-1) a known name must be to be suggested: 'comand' -> 'command' (0.92),
#: 'ecko' -> 'echo' (0.75), 'depends_on' -> 'dependencies' (0.64); unrelated names stay unsuggested.
CUTOFF = 0.6


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name most like ``name``, or None when none is close enough (case-insensitive)."""
    by_lower: dict[str, str] = {}
    for candidate in known:
        by_lower.setdefault(candidate.lower(), candidate)
    matches = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=CUTOFF)
    return by_lower[matches[0]] if matches else None


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest known name, or ``""``."""
    match = closest(name, known)
    return f" (did you mean {match!r}?)" if match is not None and match != name else ""
