"""Why a resource URI names nothing this server serves, said in the URI's own terms (the scheme, the
collection, what a name may hold) rather than by the tool a read goes through; and the page of runs a
``orchestration://runs?cursor=...&limit=...`` read asks for. Holds no state."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, unquote

from codomyrmex_orchestration.core.models import NAME_PATTERN

__all__ = ["RUNS_PAGE_TEMPLATE", "key_problem", "runs_body", "runs_query", "scheme_problem", "uri_problem"]

#: The query a read of the list of runs takes (RFC 6570), after ``{scheme}runs``.
RUNS_PAGE_TEMPLATE = "{?cursor,limit}"
_RUNS_QUERY = ("cursor", "limit")

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


def _limit_bounds() -> tuple[int, int]:
    """The bounds list_workflow_runs puts on ``limit`` (read from its arguments, so both stay one)."""
    from codomyrmex_orchestration.server._models import ListRunsArgs  # with the first read of a page

    low, high = 1, 500
    for rule in ListRunsArgs.model_fields["limit"].metadata:
        low = getattr(rule, "ge", low)
        high = getattr(rule, "le", high)
    return low, high


def runs_query(query: str) -> tuple[dict[str, Any], str | None]:
    """The list_workflow_runs arguments of ``{scheme}runs?{query}`` (``cursor``: a page's
    ``next_cursor``, ``limit``: runs per page), or why the query is not one."""
    low, high = _limit_bounds()
    arguments: dict[str, Any] = {}
    for pair in filter(None, query.split("&")):
        name, equals, value = pair.partition("=")
        if name not in _RUNS_QUERY:
            return {}, f"unknown query parameter {name!r}: the list of runs takes cursor and limit"
        if name in arguments:
            return {}, f"query parameter {name!r} given twice: give it once"
        if not equals or not value:
            return {}, f"query parameter {name!r} has no value"
        value = unquote(value)
        if name == "limit":
            if not value.isdigit() or not low <= int(value) <= high:
                return {}, f"limit: a whole number of runs from {low} to {high}, got {value[:40]!r}"
            arguments[name] = int(value)
        else:
            arguments[name] = value
    return arguments, None


def runs_body(scheme: str, listed: dict[str, Any], limit: int | None) -> dict[str, Any]:
    """What a read of the list of runs shows: list_workflow_runs' page, the URI of the next page
    (``next_uri``, with the same ``limit``) while one follows, and a note saying what ``count`` counts."""
    cursor = listed.get("next_cursor")
    next_uri = None
    if cursor:
        next_uri = f"{scheme}runs?cursor={quote(cursor, safe='')}" + (f"&limit={limit}" if limit else "")
    note = "count is the number of runs on this page (newest first), not a total" + (
        "; read next_uri for the next page" if next_uri else "; this is the last page"
    )
    return {**listed, "next_uri": next_uri, "note": note}


def uri_problem(uri: str, scheme: str, ui_uri: str) -> str | None:
    """Why ``uri`` names nothing this server serves or could serve later (its scheme, its collection,
    the shape of its key: never whether the item exists), or None."""
    if uri == ui_uri:
        return None
    if not uri.startswith(scheme):
        return scheme_problem(uri, scheme, ui_uri)
    path, qmark, query = uri[len(scheme) :].partition("?")
    kind, slash, key = path.partition("/")
    if kind != "runs" and kind not in _NAMED:
        return "known resources: workflows[/name], runs[/run_id], projects[/name], templates[/name]"
    if qmark and not slash:
        if kind != "runs":
            return f"{scheme}{kind} takes no query: only {scheme}runs is read a page at a time"
        return runs_query(query)[1]
    return key_problem(scheme, kind, unquote(key)) if slash else None
