"""``completion/complete``: suggestions for the arguments of the server's resource templates and prompts
(workflow names, run ids, project names, project template names), read through the tools. A reference to
a resource or template the server does not have is -32602 naming the ones it has (the specification:
servers SHOULD return errors for invalid references), not an empty list that looks like "nothing
matches". A prompt it does not have still gets an empty list: the MCP conformance suite's
``completion-complete`` scenario, which CI runs, asks about a fixture prompt of its own and expects an
answer (docs/TOOLS.md). No state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import mcp_types as types
from mcp.shared.exceptions import MCPError

from codomyrmex_orchestration._suggest import did_you_mean
from codomyrmex_orchestration.logs import get_logger
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools

__all__ = ["MAX_VALUES", "completion_handler", "rank"]

log = get_logger("codomyrmex_orchestration.server")

MAX_VALUES: Final = 100
"""The specification's cap on values in one completion result."""

# (tool to call, its arguments, the list in its result, the field of each item) per kind of value.
_SOURCES: Final[dict[str, tuple[str, dict[str, Any], str, str]]] = {
    "workflow": ("list_workflows", {}, "workflows", "name"),
    "run": ("list_workflow_runs", {"limit": 500}, "runs", "run_id"),
    "project": ("list_projects", {}, "projects", "name"),
    # A template's name, what create_project's ``template`` takes (a custom template's differs from its type).
    "template": ("list_project_templates", {}, "templates", "name"),
}

# What each argument of each resource template names. The one prompt's argument ("goal") is free text.
_RESOURCE_ARGUMENTS: Final[dict[tuple[str, str], str]] = {
    ("orchestration://workflows/{name}", "name"): "workflow",
    ("orchestration://runs/{run_id}", "run_id"): "run",
    ("orchestration://projects/{name}", "name"): "project",
    ("orchestration://templates/{name}", "name"): "template",
}


def _kind(ref: types.ResourceTemplateReference | types.PromptReference, argument: str) -> str | None:
    if isinstance(ref, types.ResourceTemplateReference):
        return _RESOURCE_ARGUMENTS.get((ref.uri, argument))
    return None


def rank(candidates: list[str], typed: str) -> list[str]:
    """Candidates starting with ``typed`` (case-insensitively) first, then those containing it; each
    group in its original order (runs come newest first), without duplicates."""
    needle = typed.casefold()
    unique = list(dict.fromkeys(c for c in candidates if c))
    prefix = [c for c in unique if c.casefold().startswith(needle)]
    inside = [c for c in unique if needle in c.casefold() and not c.casefold().startswith(needle)]
    return prefix + inside


def _unknown_resource(uri: str, known: list[str]) -> MCPError:
    return MCPError(
        code=types.INVALID_PARAMS,
        message=f"completion/complete: unknown resource {uri!r}{did_you_mean(uri, known)}; "
        f"available: {', '.join(known)}",
        data={"uri": uri},
    )


def completion_handler(
    tools: OrchestrationMCPTools,
    before: Callable[[], None] = lambda: None,
    *,
    resources: Iterable[str] = (),
) -> Callable[[Any, types.CompleteRequestParams], Awaitable[types.CompleteResult]]:
    """The server's ``on_completion``; ``before`` runs first (the hub's engine watch). ``resources``: the
    resource URIs and URI templates served (a reference to any other is refused, -32602)."""
    resource_uris = list(resources)

    async def on_completion(ctx: Any, params: types.CompleteRequestParams) -> types.CompleteResult:
        before()
        ref = params.ref
        if isinstance(ref, types.ResourceTemplateReference) and ref.uri not in resource_uris:
            raise _unknown_resource(ref.uri, resource_uris)
        kind = _kind(params.ref, params.argument.name)
        if kind is None:
            # An argument that names nothing this server lists (free text such as the prompt's goal, an
            # argument a served template does not have, any prompt's): no suggestions, a valid answer.
            return types.CompleteResult(completion=types.Completion(values=[], total=0, has_more=False))
        tool, arguments, key, item_field = _SOURCES[kind]
        result = await tools.execute_tool_async(tool, arguments)
        if result.is_error:
            log.info("completion.unavailable", kind=kind, error=result.text)
            items: list[Any] = []
        else:
            items = (result.structured or {}).get(key, [])
        candidates = [str(item.get(item_field, "")) for item in items if isinstance(item, dict)]
        values = rank(candidates, params.argument.value)
        return types.CompleteResult(
            completion=types.Completion(
                values=values[:MAX_VALUES], total=len(values), has_more=len(values) > MAX_VALUES
            )
        )

    return on_completion
