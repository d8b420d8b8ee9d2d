"""``completion/complete``: suggestions for the arguments of the server's resource templates and prompts
(workflow names, run ids, project names, project template names), read through the tools. No state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any, Final

import mcp_types as types
from mcp.shared.exceptions import MCPError

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
    "template": ("list_project_templates", {}, "templates", "type"),
}

# What each argument of each resource template names. The one prompt's argument ("goal") is free text.
_RESOURCE_ARGUMENTS: Final[dict[tuple[str, str], str]] = {
    ("orchestration://workflows/{name}", "name"): "workflow",
    ("orchestration://runs/{run_id}", "run_id"): "run",
    ("orchestration://projects/{name}", "name"): "project",
    ("orchestration://templates/{name}", "name"): "template",
}


_TEMPLATES: Final = tuple(dict.fromkeys(uri for uri, _ in _RESOURCE_ARGUMENTS))


def _kind(ref: types.ResourceTemplateReference | types.PromptReference, argument: str) -> str | None:
    if isinstance(ref, types.ResourceTemplateReference):
        return _RESOURCE_ARGUMENTS.get((ref.uri, argument))
    return None


def _check_ref(
    ref: types.ResourceTemplateReference | types.PromptReference, prompts: Collection[str]
) -> None:
    """Refuse a prompt or resource template this server does not have (the specification: an invalid
    prompt name SHOULD be -32602; a template the same, as for ``prompts/get`` and ``resources/read``)."""
    if isinstance(ref, types.PromptReference):
        if ref.name not in prompts:
            raise MCPError(
                code=types.INVALID_PARAMS,
                message=f"unknown prompt {ref.name!r}; available: {', '.join(prompts)}",
                data={"ref": {"type": "ref/prompt", "name": ref.name}},
            )
    elif ref.uri not in _TEMPLATES:
        raise MCPError(
            code=types.INVALID_PARAMS,
            message=f"unknown resource template {ref.uri!r}; available: {', '.join(_TEMPLATES)}",
            data={"ref": {"type": "ref/resource", "uri": ref.uri}},
        )


def rank(candidates: list[str], typed: str) -> list[str]:
    """Candidates starting with ``typed`` (case-insensitively) first, then those containing it; each
    group in its original order (runs come newest first), without duplicates."""
    needle = typed.casefold()
    unique = list(dict.fromkeys(c for c in candidates if c))
    prefix = [c for c in unique if c.casefold().startswith(needle)]
    inside = [c for c in unique if needle in c.casefold() and not c.casefold().startswith(needle)]
    return prefix + inside


def completion_handler(
    tools: OrchestrationMCPTools, prompts: Collection[str], before: Callable[[], None] = lambda: None
) -> Callable[[Any, types.CompleteRequestParams], Awaitable[types.CompleteResult]]:
    """The server's ``on_completion`` for its resource templates and ``prompts`` (their names); ``before``
    runs first (the hub's engine watch)."""

    async def on_completion(ctx: Any, params: types.CompleteRequestParams) -> types.CompleteResult:
        _check_ref(params.ref, prompts)
        before()
        kind = _kind(params.ref, params.argument.name)
        if kind is None:
            # An argument that names nothing this server lists (free text such as the prompt's goal):
            # no suggestions, which is a valid answer.
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
