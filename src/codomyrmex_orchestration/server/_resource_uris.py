"""Why a resource URI names nothing this server serves, said in the URI's own terms (the scheme, the
collection, what a name may hold) rather than by the tool a read goes through. Holds no state."""

from __future__ import annotations

import re

from codomyrmex_orchestration.core.models import NAME_PATTERN

__all__ = ["key_problem", "scheme_problem"]

_NAME_RE = re.compile(NAME_PATTERN)
# The collections whose items are named (a run is named by its run_id, of 1 to 128 characters).
_NAMED = frozenset({"workflows", "projects", "templates"})
_MAX_RUN_ID = 128


def scheme_problem(uri: str, scheme: str, ui_uri: str) -> str:
    """Why ``uri``, neither the run view ``ui_uri`` nor under ``scheme``, is not found."""
    ui_scheme = ui_uri.split("//", 1)[0] + "//"
    if uri.startswith(ui_scheme):
        return f"no such {ui_scheme} resource; the one this server serves is {ui_uri} (the run view)"
    return f"unknown scheme; resources start with {scheme}, and the run view is {ui_uri}"


def key_problem(scheme: str, kind: str, key: str) -> str | None:
    """Why ``{scheme}{kind}/{key}`` (``key`` unquoted) names no item of the collection ``kind``, or None
    when it may name one (whether it does is the collection's answer)."""
    if kind != "runs" and kind not in _NAMED:
        return None  # not a collection: the caller lists the known ones
    if not key:
        return (
            f"names no {kind[:-1]}: put its {'run_id' if kind == 'runs' else 'name'} after "
            f"'{kind}/', or read {scheme}{kind} for the list"
        )
    if kind == "runs":
        if len(key) > _MAX_RUN_ID:
            return f"not a run_id: a run_id is 1 to {_MAX_RUN_ID} characters, got {len(key)}"
        return None
    if not _NAME_RE.match(key):
        return (
            f"{key!r} is not a {kind[:-1]} name: a name is 1 to 128 characters, each one of letters, "
            "digits, '_', '.' and '-'"
        )
    return None
