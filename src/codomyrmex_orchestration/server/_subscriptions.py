"""Resource subscriptions: which ``orchestration://`` resources a core event changes, and the
``resources/subscribe`` / ``resources/unsubscribe`` handlers. Holds no state (the hub keeps each
client's subscriptions).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import mcp_types as types
from mcp.shared.exceptions import MCPError

if TYPE_CHECKING:
    from codomyrmex_orchestration.server._notifications import NotificationHub

__all__ = ["LIST_URIS", "SCHEME", "changed_by", "handlers", "project_uris", "run_uri"]

SCHEME: Final = "orchestration://"
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


def handlers(hub: NotificationHub) -> dict[str, Any]:
    """``on_subscribe_resource`` and ``on_unsubscribe_resource`` for the server.

    Any URI may be subscribed to, as the specification allows: one that names no resource of this server
    (or a run not started yet) is accepted and simply never changes.
    """

    async def on_subscribe(ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
        if not params.uri.strip():
            raise _invalid_uri(params.uri)
        peer = hub.join(ctx)
        if peer is not None:
            hub.subscribe(peer, str(params.uri))
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
