"""Resource subscriptions: which ``orchestration://`` resources a core event changes, and the
``resources/subscribe`` / ``resources/unsubscribe`` handlers, which bound what a client may keep: URIs at
most :data:`MAX_URI_CHARS` long, at most :data:`MAX_SUBSCRIPTIONS` per client. Any URI is accepted (the
MCP conformance suite subscribes to one of its own): one this server never changes is never notified.
Holds no state (the hub keeps each client's subscriptions).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import mcp_types as types
from mcp.shared.exceptions import MCPError

if TYPE_CHECKING:
    from codomyrmex_orchestration.server._notifications import NotificationHub

__all__ = [
    "LIST_URIS",
    "MAX_SUBSCRIPTIONS",
    "MAX_URI_CHARS",
    "SCHEME",
    "changed_by",
    "handlers",
    "project_uris",
    "run_uri",
]

SCHEME: Final = "orchestration://"
#: The longest URI a client may subscribe to (a run's, its id quoted, is far shorter).
MAX_URI_CHARS: Final = 2048
#: The most resources one client may be subscribed to at once.
MAX_SUBSCRIPTIONS: Final = 1000
LIST_URIS: Final = (f"{SCHEME}workflows", f"{SCHEME}runs", f"{SCHEME}projects")

_RUN_BOUNDS: Final = frozenset({"run.started", "run.completed", "run.failed", "run.cancelled"})
_WORKFLOW_CHANGES: Final = frozenset({"workflow.created", "workflow.deleted"})


def run_uri(run_id: str) -> str:
    return f"{SCHEME}runs/{quote(run_id, safe='')}"


def project_uris(name: str | None) -> tuple[str, ...]:
    return (f"{SCHEME}projects", *((f"{SCHEME}projects/{quote(name, safe='')}",) if name else ()))


def changed_by(event: str, payload: dict[str, Any]) -> tuple[tuple[str, ...], bool]:
    """The resource URIs ``event`` changes, and whether it changes the resource list.

    A run's resource changes with every run and step event; the list of runs when a run starts or ends;
    a workflow's resource, the list of workflows and the resource list (one entry per workflow) when a
    workflow is created, replaced or deleted.
    """
    run_id = payload.get("run_id")
    if isinstance(run_id, str) and event.startswith(("run.", "step.")):
        own = run_uri(run_id)
        return ((own, f"{SCHEME}runs") if event in _RUN_BOUNDS else (own,)), False
    if event in _WORKFLOW_CHANGES:
        name = payload.get("workflow_name")
        named = (f"{SCHEME}workflows/{quote(name, safe='')}",) if isinstance(name, str) else ()
        return (f"{SCHEME}workflows", *named), True
    return (), False


def _invalid_uri(uri: str) -> MCPError:
    # -32602: the request's params are wrong (an empty or blank URI names nothing to watch).
    return MCPError(code=types.INVALID_PARAMS, message=f"resource uri {uri!r}: a non-empty URI is required")


def _refused(uri: str, reason: str) -> MCPError:
    # -32602: the request's params are wrong; the URI shown cut short (it may be megabytes).
    shown = uri if len(uri) <= 120 else f"{uri[:100]}... ({len(uri)} characters)"
    return MCPError(
        code=types.INVALID_PARAMS, message=f"resource uri {shown!r}: {reason}", data={"uri": shown}
    )


def _check(uri: str) -> None:
    """Refuse a URI that is blank, too long, or a page of runs (the list changes as a whole)."""
    if not uri.strip():
        raise _invalid_uri(uri)
    if len(uri) > MAX_URI_CHARS:
        raise _refused(uri, f"at most {MAX_URI_CHARS} characters may be subscribed to")
    if "?" in uri and uri.startswith(f"{SCHEME}runs?"):
        raise _refused(uri, f"a page is not a resource of its own: subscribe to {SCHEME}runs")


def handlers(hub: NotificationHub) -> dict[str, Any]:
    """``on_subscribe_resource`` and ``on_unsubscribe_resource`` for the server.

    A URI may be subscribed to before what it names exists (a run not started yet): it changes once it
    does. One longer than :data:`MAX_URI_CHARS`, or more than :data:`MAX_SUBSCRIPTIONS` per client, is
    refused.
    """

    async def on_subscribe(ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
        uri = str(params.uri)
        _check(uri)
        peer = hub.join(ctx)
        if peer is not None and not hub.subscribe(peer, uri, limit=MAX_SUBSCRIPTIONS):
            raise _refused(
                uri,
                f"this client is subscribed to {MAX_SUBSCRIPTIONS} resources, the most one client may be: "
                "unsubscribe from one first",
            )
        hub.watch_engine()
        return types.EmptyResult()

    async def on_unsubscribe(ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        if not params.uri.strip():
            raise _invalid_uri(params.uri)
        peer = hub.peer(ctx)
        if peer is not None:
            hub.unsubscribe(peer, str(params.uri))
        return types.EmptyResult()

    return {"on_subscribe_resource": on_subscribe, "on_unsubscribe_resource": on_unsubscribe}
