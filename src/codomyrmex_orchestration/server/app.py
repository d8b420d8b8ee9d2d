"""The MCP server: a low-level ``mcp.server.Server`` that auto-registers every tool, plus resources, one
prompt, and the stdio / SSE / streamable-HTTP transports with bearer auth and DNS-rebinding protection."""

from __future__ import annotations

import contextlib
import errno
import hmac
import importlib.util
import ipaddress
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
import anyio.to_thread
import mcp_types as types
from mcp.server.apps import client_supports_apps
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.subscriptions import ListenHandler
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.shared.inbound import find_invalid_x_mcp_header, x_mcp_header_map
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from codomyrmex_orchestration import __version__
from codomyrmex_orchestration._redact import register_secret
from codomyrmex_orchestration._suggest import did_you_mean
from codomyrmex_orchestration.config import Settings
from codomyrmex_orchestration.core._client import calling_client
from codomyrmex_orchestration.core._serving_lock import ServingLock
from codomyrmex_orchestration.errors import InvalidInputError, OrchestrationError
from codomyrmex_orchestration.logs import announce, get_logger
from codomyrmex_orchestration.server import _internal, _params, _request_state, _subscriptions, _ui, _versions
from codomyrmex_orchestration.server._approvals import Approvals
from codomyrmex_orchestration.server._banner import http_banner, reachable_host
from codomyrmex_orchestration.server._completion import completion_handler
from codomyrmex_orchestration.server._connections import ConnectionGuard, fit_to_file_limit, protocol_class
from codomyrmex_orchestration.server._hardening import check_token, exposure_warning, is_loopback
from codomyrmex_orchestration.server._health_watch import HealthWatch
from codomyrmex_orchestration.server._notifications import NotificationHub, connection_of
from codomyrmex_orchestration.server._resource_uris import (
    RUNS_PAGE_TEMPLATE,
    key_problem,
    runs_body,
    runs_query,
    scheme_problem,
)
from codomyrmex_orchestration.server._server_record import ServerRecord
from codomyrmex_orchestration.server._sessions import (
    DEFAULT_MAX_SESSIONS,
    DEFAULT_SESSION_IDLE_TIMEOUT,
    ServerStatus,
    SessionManager,
)
from codomyrmex_orchestration.server._sse import SseSessions, deferred_stream_close
from codomyrmex_orchestration.server._stdio import StdinLines as _StdinLines  # noqa: F401  # re-exported
from codomyrmex_orchestration.server._stdio import StdoutLines as _StdoutLines  # noqa: F401  # re-exported
from codomyrmex_orchestration.server._stdio import serve_stdio as _serve_stdio
from codomyrmex_orchestration.server._tasks import CAPABILITY as TASKS_CAPABILITY
from codomyrmex_orchestration.server._tasks import (
    OWNER_SCOPE_KEY,
    ToolTasks,
    declare_task_support,
    serves_tasks,
    token_owner,
)
from codomyrmex_orchestration.server._tool_cache import tool_definitions
from codomyrmex_orchestration.server._unanswered import SHUTDOWN_GRACE
from codomyrmex_orchestration.server.tools import (
    EngineFactory,
    OrchestrationMCPTools,
    ServerPolicy,
    jsonable,
)

__all__ = [
    "SERVER_NAME",
    "BearerAuthMiddleware",
    "build_http_app",
    "build_server",
    "check_network_settings",
    "is_loopback",
    "serve",
    "transport_security",
]

SERVER_NAME = "codomyrmex-orchestration"
URI_SCHEME = "orchestration://"
PROMPT_NAME = "workflow_step_format"

log = get_logger("codomyrmex_orchestration.server")

_INSTRUCTIONS = (
    "Runs workflows as DAGs of real actions. Typical use: list_actions to see what steps can do, "
    "create_workflow (or validate_workflow first), execute_workflow, then get_workflow_run to follow a run "
    "that is still running. The prompt 'workflow_step_format' explains the step format."
)

_STEP_FORMAT = """\
A workflow is a named DAG of steps. Each step runs one action, `module.action`, with JSON parameters.

Step fields:
- name (required): unique in the workflow; letters, digits, '-', '_', '.'.
- module, action (required): e.g. core.echo, core.sleep, core.set (call list_actions for all of them).
- parameters: JSON object passed to the action. Strings may contain references:
    {{params.NAME}}                  a workflow parameter (defaults in the workflow's "parameters")
    {{steps.STEP.output}}            another step's output; {{steps.STEP.output.key.0}} digs into it
    {{steps.STEP.status}}            completed / failed / skipped ...
    {{secrets.NAME}}                 a secret set on the server (never stored; outputs show [secret:NAME])
  A string that is exactly one reference keeps the value's type. A reference adds the dependency.
- dependencies: names of steps that must finish first (in addition to inferred ones).
- run_if: a condition such as "steps.check.output.count > 0 and params.mode == 'full'"; false -> skipped.
- timeout (seconds), max_retries, retry_delay (seconds, doubles each retry), required (default true:
  a failing required step fails the run), priority (critical/high/normal/low/background),
  resources (e.g. {"compute": 1, "memory": "256MB"}).
- for_each: run the step once per item of a list, either literal ([1, 2, 3]) or one reference
  ("{{steps.ls.output.files}}"). {{item}} (also {{item.key}}) and {{index}} are available in its
  parameters and run_if; max_parallel bounds the items in flight. Its output is the list of the item
  outputs in order (skipped items left out); with required: false, failing items do not fail it and
  its output is {"outputs": [...], "failed": [{"index": i, "status": ..., "error": ...}]}.
  Example: {"name": "sizes", "module": "core", "action": "echo", "for_each": "{{steps.ls.output.files}}",
  "max_parallel": 8, "parameters": {"message": "{{index}}: {{item}}"}}
- cache: {"ttl_seconds": 600} reuses, for that long, the output of an earlier call of the same action with
  the same resolved parameters in the same workflow version: the action is not called, the step shows
  "cached": true and 0 attempts. execute_workflow with "use_cache": false runs it anyway.

A step can wait for a person: core.approve with parameters {"message": "Deploy?", "schema": {"type":
"object", "properties": {"note": {"type": "string"}}, "required": ["note"]}, "timeout_seconds": 3600}
(schema and timeout optional; the schema is flat: string, number, integer or boolean properties). The
client is asked (elicitation) or the run is waiting_for_input, its question in pending_inputs, until
respond_to_run answers; later steps read {{steps.STEP.output.content.note}}. Decline, cancel or the
timeout fail the step.

Steps whose dependencies are met run in parallel. Example for create_workflow:

{
  "name": "greet_and_collect",
  "description": "Greets, waits a moment, then collects both results",
  "parameters": {"who": "world"},
  "steps": [
    {"name": "greet", "module": "core", "action": "echo", "parameters": {"message": "hello {{params.who}}"}},
    {"name": "pause", "module": "core", "action": "sleep", "parameters": {"seconds": 1}, "timeout": 10},
    {"name": "collect", "module": "core", "action": "set",
     "parameters": {"greeting": "{{steps.greet.output}}", "slept": "{{steps.pause.output.slept}}"},
     "max_retries": 1}
  ]
}

Then call execute_workflow {"workflow_name": "greet_and_collect", "parameters": {"who": "you"}}.
"greet" and "pause" run at the same time; "collect" runs after both.

A step can call a tool of another MCP server configured on this server: action mcp.call with
{"server", "tool", "arguments"}. list_actions lists the servers (mcp_servers); list_actions
{"server": "NAME"} lists that server's tools with their input schemas. The output is the tool's
structured content, else {"text": its text}; a tool error fails the step. For example:
    {"name": "search", "module": "mcp", "action": "call", "timeout": 60, "max_retries": 1,
     "parameters": {"server": "docs", "tool": "search", "arguments": {"query": "{{params.topic}}"}}}
A secret and the cache in one step (the server sets CODOMYRMEX_SECRET_API_TOKEN or its secrets file):
  {"name": "items", "module": "http", "action": "request", "cache": {"ttl_seconds": 600},
   "parameters": {"url": "https://api.example.com/items",
                  "headers": {"Authorization": "Bearer {{secrets.API_TOKEN}}"}}}
validate_workflow lists the secrets that are set nowhere in "missing_secrets".
"""


# --------------------------------------------------------------------------- the MCP server


def _mcp_tool(definition: dict[str, Any]) -> types.Tool:
    annotations = definition["annotations"]
    return types.Tool(
        name=definition["name"],
        title=definition["title"],
        description=definition["description"],
        input_schema=definition["inputSchema"],
        output_schema=definition["outputSchema"],
        annotations=types.ToolAnnotations(
            title=annotations["title"],
            read_only_hint=annotations["readOnlyHint"],
            destructive_hint=annotations["destructiveHint"],
            idempotent_hint=annotations["idempotentHint"],
            open_world_hint=annotations["openWorldHint"],
        ),
    )


def _text_resource(uri: str, value: Any) -> types.ReadResourceResult:
    text = json.dumps(jsonable(value), indent=2, ensure_ascii=False)
    return types.ReadResourceResult(
        contents=[types.TextResourceContents(uri=uri, mime_type="application/json", text=text)]
    )


def _resource_not_found(ctx: Any, uri: str, reason: str) -> Exception:
    from mcp.shared.exceptions import MCPError

    # -32002 is "resource not found" up to 2025-11-25; 2026-07-28 retired it for -32602 (SEP-2164).
    code = types.INVALID_PARAMS if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS else -32002
    return MCPError(code=code, message=f"resource {uri!r}: {reason}", data={"uri": uri})


_KNOWN_RESOURCES = "workflows[/name], runs[/run_id], runs?cursor=&limit=, projects[/name], templates[/name]"


def _invalid_query(uri: str, reason: str) -> Exception:
    from mcp.shared.exceptions import MCPError

    # -32602: the resource exists; what the read asks of it does not fit.
    return MCPError(code=types.INVALID_PARAMS, message=f"resource {uri!r}: {reason}", data={"uri": uri})


def _runs_page(ctx: Any, uri: str, kind: str, query: str) -> dict[str, Any]:
    """The list_workflow_runs arguments of a read of ``uri``, a collection ``kind`` with a query."""
    if kind not in ("workflows", "runs", "projects", "templates"):
        raise _resource_not_found(ctx, uri, "known resources: " + _KNOWN_RESOURCES)
    if kind != "runs":
        raise _invalid_query(uri, f"{URI_SCHEME}{kind} takes no query: only {URI_SCHEME}runs is paged")
    page, problem = runs_query(query)
    if problem is not None:
        raise _invalid_query(uri, problem)
    return page


def _one_page(method: str, params: Any) -> None:
    """Refuse a cursor: this server's lists are never paged, so no cursor is one it handed out (the
    pagination spec: an invalid cursor SHOULD be -32602)."""
    cursor = getattr(params, "cursor", None)
    if cursor is not None:
        from mcp.shared.exceptions import MCPError

        raise MCPError(
            code=types.INVALID_PARAMS,
            message=f"invalid cursor {cursor!r}: {method} answers in one page and hands out no cursor; "
            "call it without one",
            data={"cursor": cursor},
        )


def _header_schemas(input_schemas: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The input schemas the SDK's ``Mcp-Param-*`` header check can reject a call with: those carrying
    valid ``x-mcp-header`` annotations. For any other schema the check walks the whole schema twice per
    ``tools/call`` (~20 µs for ``execute_task``) to find nothing to compare; a lookup answering ``None``
    (nothing declared) gives the same verdict without the walk."""
    return {
        name: schema
        for name, schema in input_schemas.items()
        if find_invalid_x_mcp_header(schema) is None and x_mcp_header_map(schema)
    }


# Tools that start runs: the hub must listen to the engine before such a call starts its first run.
_RUN_TOOLS = frozenset(
    {"execute_workflow", "create_complex_workflow", "resume_workflow_run", "respond_to_run"}
)


class _OrchestrationServer(Server[Any]):
    """The low-level server, announcing ``resources.listChanged`` to 2025-era clients (the SDK derives
    every other capability from the handlers registered; this flag it takes only from the caller)."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> Any:
        return super().create_initialization_options(
            notification_options or NotificationOptions(resources_changed=True),
            experimental_capabilities,
            extensions,
        )

    def get_capabilities(self, *args: Any, **kwargs: Any) -> types.ServerCapabilities:
        capabilities = super().get_capabilities(*args, **kwargs)
        version = kwargs.get("protocol_version")
        # None: the initialize answer, built once for every handshake version (ToolTasks drops the
        # capability from it for the versions before tasks). 2026-07-28 has tasks as an extension.
        if version is None or (serves_tasks(version) and version not in MODERN_PROTOCOL_VERSIONS):
            capabilities.tasks = TASKS_CAPABILITY
        return capabilities


def _client_key(ctx: Any) -> str:
    """Whom a tool call is for, for fair queueing. On the 2025 protocol, its connection: one per stdio
    client or streamable-HTTP session. On 2026-07-28 each request stands alone (no session), so requests
    are grouped by the client's name and version from the request's envelope."""
    try:
        connection = connection_of(ctx)
    except TypeError:
        return "client-anonymous"
    if connection.protocol_version >= _STATELESS_SINCE:  # dates compare as strings
        info = connection.client_params.client_info if connection.client_params is not None else None
        return f"client-{info.name}/{info.version}" if info is not None else "client-anonymous"
    return f"connection-{id(connection):x}"


#: The first protocol version without sessions: every request carries its own envelope.
_STATELESS_SINCE = "2026-07-28"


def build_server(
    tools: OrchestrationMCPTools | None = None,
    *,
    engine_factory: EngineFactory | None = None,
    policy: ServerPolicy | None = None,
    state_dir: Path | None = None,
) -> Server[Any]:
    """The low-level MCP server over ``tools`` (built from ``engine_factory``/``policy`` when omitted).

    Every definition from ``tools.get_tool_definitions()`` becomes a tool; calls go to
    ``tools.execute_tool_async`` with the request's progress channel. ``state_dir`` keeps the key that
    seals ``requestState`` (a durable server's: its states outlive a restart as its runs do); without
    it the key is this process's alone.

    Raises:
        StateStoreError: the key cannot be read or made in ``state_dir``.
    """
    if tools is None:
        tools = OrchestrationMCPTools(engine_factory=engine_factory, policy=policy)
    the_tools = tools
    listed = declare_task_support([_mcp_tool(d) for d in tool_definitions(the_tools)])
    input_schemas: dict[str, Mapping[str, Any]] = {tool.name: tool.input_schema for tool in listed}
    hub = NotificationHub(the_tools)
    approvals = Approvals(the_tools, hub)  # core.approve questions, asked by elicitation
    ui_meta = {"ui": {"resourceUri": _ui.UI_RESOURCE_URI}}
    listed_with_ui = [
        tool.model_copy(update={"meta": {**(tool.meta or {}), **ui_meta}})
        if tool.name in _ui.UI_TOOLS
        else tool
        for tool in listed
    ]

    async def on_list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        _one_page("tools/list", params)
        # Only a client that negotiated MCP Apps is pointed at the run view; results are the same for all.
        return types.ListToolsResult(tools=listed_with_ui if client_supports_apps(ctx) else listed)

    async def on_call_tool(
        ctx: Any, params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        if params.name not in input_schemas:
            from mcp.shared.exceptions import MCPError

            # The specification: an unknown tool is a protocol error (-32602, invalid params); isError
            # results are for a known tool's argument and execution errors.
            raise MCPError(
                code=types.INVALID_PARAMS,
                message=f"unknown tool {params.name!r}{did_you_mean(params.name, input_schemas)}; "
                f"available tools: {', '.join(input_schemas)}",
                data={"tool": params.name},
            )

        async def progress(done: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(done, total, message)

        peer = hub.peer(ctx)
        if params.name in _RUN_TOOLS and not the_tools.engine_started:
            # A failure to start is reported by the call itself, just below.
            with contextlib.suppress(Exception):
                await core(lambda: the_tools.engine)
        hub.watch_engine()
        approvals.watch(ctx)
        client = calling_client.set(_client_key(ctx))
        try:
            async with hub.request_logs(ctx) as request_peer:
                with hub.calling(peer or request_peer), approvals.waiting(ctx, params):
                    result = await approvals.answered(params) or await the_tools.execute_tool_async(
                        params.name, params.arguments, progress=progress
                    )
        finally:
            calling_client.reset(client)
        result = approvals.noted(result)  # why a question is no longer put to the client, if it is not
        hub.watch_engine()
        if params.name == "create_project" and not result.is_error:
            hub.projects_changed((result.structured or {}).get("project_name"))
        asked = approvals.input_required(ctx, params, result)  # a 2026-07-28 client answers and retries
        if asked is not None:
            return asked
        return types.CallToolResult(
            content=[types.TextContent(text=result.text)],
            structured_content=result.structured,
            is_error=result.is_error,
        )

    async def core(fn: Callable[[], Any]) -> Any:
        return await anyio.to_thread.run_sync(fn, limiter=the_tools._call_limiter)

    async def on_list_resources(ctx: Any, params: Any) -> types.ListResourcesResult:
        _one_page("resources/list", params)
        hub.watch_engine()
        resources = [
            types.Resource(
                uri=f"{URI_SCHEME}{kind}",
                name=kind,
                title=f"All {kind}",
                description=f"JSON list of {kind}",
                mime_type="application/json",
            )
            for kind in ("workflows", "runs", "projects", "templates")
        ]
        resources.append(
            types.Resource(
                uri=_ui.UI_RESOURCE_URI,
                name="run-view",
                title="Run view",
                description="The workflow run view (an MCP App): the DAG, each step coloured by status",
                mime_type=_ui.APP_MIME_TYPE,
                meta=_ui.APP_META,
            )
        )
        try:
            infos = await core(lambda: the_tools.engine.workflow_manager.list_workflows())
        except Exception as exc:
            log.warning("resources.list_failed", error=str(exc))
            infos = []
        resources.extend(
            types.Resource(
                uri=f"{URI_SCHEME}workflows/{info.name}",
                name=f"workflow {info.name}",
                description=info.description or None,
                mime_type="application/json",
            )
            for info in infos
        )
        return types.ListResourcesResult(resources=resources)

    resource_templates = [
        types.ResourceTemplate(
            uri_template=f"{URI_SCHEME}workflows/{{name}}",
            name="workflow",
            description="A workflow definition with its execution levels and Mermaid diagram",
            mime_type="application/json",
        ),
        types.ResourceTemplate(
            uri_template=f"{URI_SCHEME}runs{RUNS_PAGE_TEMPLATE}",
            name="runs-page",
            description="A page of runs, newest first: cursor is a page's next_cursor, limit 1 to 500",
            mime_type="application/json",
        ),
        types.ResourceTemplate(
            uri_template=f"{URI_SCHEME}runs/{{run_id}}",
            name="run",
            description="A workflow run record",
            mime_type="application/json",
        ),
        types.ResourceTemplate(
            uri_template=f"{URI_SCHEME}projects/{{name}}",
            name="project",
            description="A project's manifest",
            mime_type="application/json",
        ),
        types.ResourceTemplate(
            uri_template=f"{URI_SCHEME}templates/{{name}}",
            name="template",
            description="A project template (what create_project with it creates)",
            mime_type="application/json",
        ),
    ]

    async def on_list_resource_templates(ctx: Any, params: Any) -> types.ListResourceTemplatesResult:
        _one_page("resources/templates/list", params)
        return types.ListResourceTemplatesResult(resource_templates=resource_templates)

    async def on_read_resource(ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        uri = str(params.uri)
        if uri == _ui.UI_RESOURCE_URI:
            contents = types.TextResourceContents(
                uri=uri, mime_type=_ui.APP_MIME_TYPE, meta=_ui.APP_META, text=_ui.app_html()
            )
            return types.ReadResourceResult(contents=[contents])
        if not uri.startswith(URI_SCHEME):
            raise _resource_not_found(ctx, uri, scheme_problem(uri, URI_SCHEME, _ui.UI_RESOURCE_URI))
        kind, slash, key = uri[len(URI_SCHEME) :].partition("/")
        kind, queried, query = kind.partition("?") if not slash else (kind, "", "")
        page = _runs_page(ctx, uri, kind, query) if queried else None  # orchestration://runs?cursor=&limit=
        key = unquote(key)
        if slash and (problem := key_problem(URI_SCHEME, kind, key)) is not None:
            raise _resource_not_found(ctx, uri, problem)
        tool, args = {
            ("workflows", False): ("list_workflows", {}),
            ("workflows", True): ("get_workflow", {"name": key}),
            ("runs", False): ("list_workflow_runs", {}),
            ("runs", True): ("get_workflow_run", {"run_id": key}),
            ("projects", False): ("list_projects", {}),
            ("templates", False): ("list_project_templates", {}),
        }.get((kind, bool(key)), (None, {}))
        hub.watch_engine()
        if kind in ("projects", "templates") and key:
            list_tool, items_key, key_field = {
                "projects": ("list_projects", "projects", "name"),
                "templates": ("list_project_templates", "templates", "name"),
            }[kind]
            listed_items = await the_tools.execute_tool_async(list_tool, {})
            items = (listed_items.structured or {}).get(items_key, [])
            match = [p for p in items if p.get(key_field) == key]
            if not match:
                raise _resource_not_found(
                    ctx, uri, listed_items.text if listed_items.is_error else f"no such {kind[:-1]}"
                )
            return _text_resource(uri, match[0])
        if tool is None:
            raise _resource_not_found(
                ctx,
                uri,
                "known resources: " + _KNOWN_RESOURCES,
            )
        result = await the_tools.execute_tool_async(tool, page or args)
        if result.is_error:
            raise _invalid_query(uri, result.text) if page else _resource_not_found(ctx, uri, result.text)
        if tool == "list_workflow_runs":
            return _text_resource(
                uri, runs_body(URI_SCHEME, result.structured or {}, (page or {}).get("limit"))
            )
        return _text_resource(uri, result.structured)

    async def on_list_prompts(ctx: Any, params: Any) -> types.ListPromptsResult:
        _one_page("prompts/list", params)
        return types.ListPromptsResult(
            prompts=[
                types.Prompt(
                    name=PROMPT_NAME,
                    title="How to write workflow steps",
                    description="The step format (fields, {{...}} references, run_if), with an example.",
                    arguments=[
                        types.PromptArgument(
                            name="goal", description="What the workflow should do (optional)", required=False
                        )
                    ],
                )
            ]
        )

    async def on_get_prompt(ctx: Any, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        if params.name != PROMPT_NAME:
            from mcp.shared.exceptions import MCPError

            raise MCPError(code=-32602, message=f"unknown prompt {params.name!r}; available: {PROMPT_NAME}")
        goal = (params.arguments or {}).get("goal", "").strip()
        text = _STEP_FORMAT + (f"\nWrite a workflow for this goal: {goal}\n" if goal else "")
        return types.GetPromptResult(
            description="The workflow step format",
            messages=[types.PromptMessage(role="user", content=types.TextContent(text=text))],
        )

    server: Server[Any] = _OrchestrationServer(
        SERVER_NAME,
        version=__version__,
        title="Codomyrmex orchestration",
        instructions=_INSTRUCTIONS,
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
        on_list_resources=on_list_resources,
        on_list_resource_templates=on_list_resource_templates,
        on_read_resource=on_read_resource,
        on_list_prompts=on_list_prompts,
        on_get_prompt=on_get_prompt,
        on_completion=completion_handler(
            the_tools,
            hub.watch_engine,
            resources=(
                *(t.uri_template for t in resource_templates),
                *(f"{URI_SCHEME}{kind}" for kind in ("workflows", "runs", "projects", "templates")),
                _ui.UI_RESOURCE_URI,
            ),
        ),
        # 2025-era resources/subscribe, and the 2026-07-28 subscriptions/listen streams over the hub's bus.
        **_subscriptions.handlers(hub),
        on_subscriptions_listen=ListenHandler(hub.bus),
        lifespan=hub.lifespan,
        # Without this lookup the SDK's streamable HTTP path (protocol 2026-07-28) re-runs and re-serialises
        # the whole tools/list on every tools/call that carries arguments, to check Mcp-Param headers:
        # ~1.3 ms a call for our 24 tools. The schemas never change after start, so a dict lookup is exact.
        get_tool_input_schema=_header_schemas(input_schemas).get,
    )
    server.extensions[_ui.EXTENSION_ID] = {}  # MCP Apps: the run view resource above
    _internal.install(server)  # first, outermost: an unexpected failure answered -32603 with a reference
    _request_state.install(server, SERVER_NAME, state_dir)  # then requestState verified, before any handler
    hub.install(server)  # logging/setLevel and the peer registration at notifications/initialized
    ToolTasks(the_tools, hub).install(server)  # MCP tasks: task-augmented tools/call and tasks/*
    _versions.install(server)  # server/discover lists the handshake versions served too
    _params.install(server)  # last, innermost: malformed params answered with the field and its values
    return server


# --------------------------------------------------------------------------- HTTP: auth and rebinding


def transport_security(host: str, allowed_hosts: Sequence[str] = ()) -> TransportSecuritySettings:
    """DNS-rebinding protection: only loopback names, the bind host and ``allowed_hosts`` may appear in
    ``Host``/``Origin`` (any port)."""
    names = ["127.0.0.1", "localhost", "[::1]"]
    if host not in ("0.0.0.0", "::", "") and not is_loopback(host):
        names.append(f"[{host}]" if ":" in host else host)
    names.extend(h for h in allowed_hosts if h)
    hosts: list[str] = []
    origins: list[str] = []
    for name in dict.fromkeys(names):
        hosts += [name, f"{name}:*"]
        origins += [f"{scheme}://{name}{port}" for scheme in ("http", "https") for port in ("", ":*")]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


class _ProbeGuard(TransportSecurityMiddleware):
    """The Host/Origin checks of every route, for ``/healthz``, which also answers an IP address as Host:
    health probes (Kubernetes, load balancers) send the address they reach, and a DNS-rebinding page
    cannot send one (a browser's Host is the page's own name)."""

    def _validate_host(self, host: str | None) -> bool:
        return _is_ip_address(host) or super()._validate_host(host)


def _is_ip_address(host: str | None) -> bool:
    """Whether a Host header names an IP address (``10.0.0.5``, ``10.0.0.5:8765``, ``[fd00::5]:8765``)."""
    try:
        name = urlsplit(f"//{host}").hostname if host else None
        return name is not None and ipaddress.ip_address(name) is not None
    except ValueError:
        return False


class BearerAuthMiddleware:
    """Require ``Authorization: Bearer <token>`` on every HTTP route except ``open_paths``."""

    def __init__(
        self,
        app: ASGIApp,
        token: str,
        open_paths: Sequence[str] = ("/healthz", "/ui/login"),
        ui: _ui.UiAccess | None = None,
    ) -> None:
        self.app = app
        self._token = token.encode()
        self._owner = token_owner(token)
        self._open = frozenset(open_paths)
        self._ui = ui

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._open:
            await self.app(scope, receive, send)
            return
        if self._ui is not None and _ui.ui_path(scope["path"]):
            # a browser cannot send the header on a page load: the run view also takes its cookie
            if self._ui.cookie_ok(scope) or self._bearer_ok(scope):
                await self.app(scope, receive, send)
            else:
                await self._ui.login_page()(scope, receive, send)
            return
        if not self._bearer_ok(scope):
            response = JSONResponse(
                {"error": "unauthorized", "error_description": "a valid bearer token is required"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="codomyrmex-orchestration"'},
            )
            await response(scope, receive, send)
            return
        # The verified token owns the request's MCP tasks (server/_tasks.py owner_of), not the header's text.
        scope[OWNER_SCOPE_KEY] = self._owner
        await self.app(scope, receive, send)

    def _bearer_ok(self, scope: Scope) -> bool:
        header = b""
        for key, value in scope.get("headers", []):
            if key == b"authorization":
                header = value
                break
        scheme, _, presented = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(presented.strip(), self._token)


def build_http_app(
    server: Server[Any],
    *,
    transport: str,
    host: str = "127.0.0.1",
    auth_token: str | None = None,
    allowed_hosts: Sequence[str] = (),
    tools: OrchestrationMCPTools | None = None,
    ui_access: _ui.UiAccess | None = None,
    status: ServerStatus | None = None,
    session_idle_timeout: float = DEFAULT_SESSION_IDLE_TIMEOUT,
    max_sessions: int = DEFAULT_MAX_SESSIONS,
    sse_sessions: SseSessions | None = None,
    health: HealthWatch | None = None,
) -> ASGIApp:
    """A Starlette app serving ``transport`` ("sse": /sse + /messages/; "streamable-http": /mcp) and an
    open ``GET /healthz`` (Host/Origin checked, an IP address as Host taken), wrapped in bearer auth when
    ``auth_token`` is set. With ``tools``, the read-only
    run view is served at ``/ui/`` too (same token, or its cookie; same Host/Origin checks).
    Streamable-HTTP sessions expire after ``session_idle_timeout`` seconds idle; at ``max_sessions`` the
    longest-idle one is closed for a new client. ``/healthz`` reports ``status`` (sessions open and the
    cap, code-execution exposure) and, with ``health``, the engine's verdict as last checked
    (``starting``, ``healthy``, ``degraded``; ``unhealthy`` answers 503; without it ``ok``: the app only
    knows that it answers). SSE sessions are served by ``sse_sessions`` (``serve`` closes them at
    shutdown)."""
    security = transport_security(host, allowed_hosts)
    ui_access = ui_access or _ui.UiAccess(auth_token)
    status = status or ServerStatus(transport=transport, code_execution=False)

    probe_guard = _ProbeGuard(security)

    async def healthz(request: Request) -> Response:
        if refused := await probe_guard.validate_request(request):
            return refused
        # The verdict as last checked (never checked here: a check may wait for a lock a run holds).
        verdict = health.verdict() if health is not None else {"status": "ok"}
        verdict_status = verdict.pop("status")
        return JSONResponse(
            {
                "status": verdict_status,
                "server": SERVER_NAME,
                "version": __version__,
                **status.snapshot(),
                **verdict,
            },
            status_code=503 if verdict_status == "unhealthy" else 200,
        )

    routes: list[Route | Mount] = [Route("/healthz", endpoint=healthz, methods=["GET"])]
    if tools is not None:
        routes += _ui.ui_routes(tools, ui_access, security)
    lifespan: Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]] | None = None
    if transport == "sse":
        sse = SseServerTransport("/messages/", security_settings=security)
        sessions = sse_sessions or SseSessions()
        routes += [
            Route("/sse", endpoint=sessions.endpoint(server, sse), methods=["GET"]),
            Mount("/messages/", app=sse.handle_post_message),
        ]
    elif transport == "streamable-http":
        manager = SessionManager(
            app=server,
            security_settings=security,
            session_idle_timeout=session_idle_timeout,
            max_sessions=max_sessions,
        )
        status.sessions = manager
        # First: Starlette tries routes in order, and every MCP request would otherwise be matched
        # against /healthz and each /ui/ route before reaching its own.
        routes.insert(0, Route("/mcp", endpoint=StreamableHTTPASGIApp(manager)))

        @contextlib.asynccontextmanager
        async def run_manager(app: Starlette) -> AsyncIterator[None]:
            async with manager.run():
                yield

        lifespan = run_manager
    else:
        raise InvalidInputError("transport", f"{transport!r} is not an HTTP transport (sse, streamable-http)")
    app: ASGIApp = Starlette(routes=routes, lifespan=lifespan)
    if auth_token:
        app = BearerAuthMiddleware(app, auth_token, ui=ui_access if tools is not None else None)
    return app


def check_network_settings(settings: Settings) -> str | None:
    """The bearer token to require, or ``None``; refuses a non-loopback bind without one.

    Raises:
        InvalidInputError: binding to a non-loopback address with no token configured, or a token that
            is only whitespace or shorter than 16 characters.
    """
    token = settings.auth_token.get_secret_value() if settings.auth_token is not None else ""
    if token:
        token = check_token(token, "CODOMYRMEX_AUTH_TOKEN")
    if settings.auth_token_file is not None and not token:
        try:
            token = settings.auth_token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InvalidInputError(
                "CODOMYRMEX_AUTH_TOKEN_FILE",
                f"cannot read {settings.auth_token_file}: {exc.strerror or exc}; give a file holding the "
                "bearer token (or set CODOMYRMEX_AUTH_TOKEN)",
            ) from None
        if not token:
            raise InvalidInputError("CODOMYRMEX_AUTH_TOKEN_FILE", f"{settings.auth_token_file} is empty")
        token = check_token(token, f"CODOMYRMEX_AUTH_TOKEN_FILE ({settings.auth_token_file})")
    if not token and not is_loopback(settings.host):
        raise InvalidInputError(
            "CODOMYRMEX_AUTH_TOKEN",
            f"serving on {settings.host} (not loopback) needs a bearer token: set CODOMYRMEX_AUTH_TOKEN "
            "or pass --auth-token-file",
        )
    return token or None


# --------------------------------------------------------------------------- running


async def _serve_http(
    app: ASGIApp,
    host: str,
    port: int,
    on_bound: Callable[[int], None] = lambda port: None,
    on_signal: Callable[[], None] = lambda: None,
    guard: ConnectionGuard | None = None,
    on_listening: Callable[[Callable[[], None]], None] = lambda stop: None,
) -> None:
    import uvicorn

    class _Server(uvicorn.Server):
        """uvicorn, minus re-raising the signal after its graceful shutdown: we still have the engine to
        shut down, and a clean stop should exit 0. The first SIGINT/SIGTERM/SIGHUP also calls
        ``on_signal`` (on the event loop's thread: it must not block). Once bound, ``on_listening`` gets
        a function any thread may call to stop the server as a signal would."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            first = not self.should_exit
            super().handle_exit(sig, frame)
            if first:
                log.info("server.signal", signal=signal.Signals(sig).name)
                on_signal()

        def request_exit(self) -> None:
            self.should_exit = True  # uvicorn's main loop polls it every 0.1 s

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            # SIGHUP: the terminal the server was started from closed; stop as on SIGTERM (not die at once).
            handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)  # exits the process if the port cannot be bound
            if self.started:
                on_bound(self.servers[0].sockets[0].getsockname()[1] if self.servers else port)
                on_listening(self.request_exit)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
        # Connections waiting for a request are bounded in time and number (server/_connections.py).
        http=protocol_class(guard) if guard is not None else "auto",
        # No WebSocket routes: an upgrade would also hand the connection to a protocol the guard never sees.
        ws="none",
    )
    # On SIGINT/SIGTERM uvicorn stops accepting, finishes responses (for at most the grace period: then
    # it cancels what is still open) and runs the lifespan exit.
    await _Server(config).serve()


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port another process listens on, naming it, before anything starts (uvicorn would log
    a line and exit 3, a code the command line documents for something else). Binds and closes a probe
    socket per address ``host`` resolves to, as the server will bind them; port 0 is always free.

    Raises:
        InvalidInputError: the port is taken (or the address cannot be bound).
    """
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise InvalidInputError("host", f"{host!r} does not resolve ({exc.strerror or exc})") from None
    for family, kind, proto, _name, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            # As the server binds: a port in TIME_WAIT is free, an IPv6 socket takes IPv6 only.
            if os.name == "posix":
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                why = (
                    "is in use by another process"
                    if exc.errno == errno.EADDRINUSE
                    else f"cannot be bound: {exc}"
                )
                raise InvalidInputError(
                    "port",
                    f"port {port} on {host} {why}; choose another with --port or CODOMYRMEX_PORT "
                    "(0 picks a free one)",
                ) from None


def _loop_options() -> dict[str, Any]:
    """uvloop when it is installed (a dependency): less event-loop time per message."""
    return {"use_uvloop": importlib.util.find_spec("uvloop") is not None}


def serve(settings: Settings, *, engine_factory: EngineFactory | None = None) -> int:
    """Serve MCP on ``settings.transport`` until EOF (stdio) or SIGINT/SIGTERM/SIGHUP; returns an exit
    code: 0, or 1 when the state store closed with writes it could not save. The engine is built in the
    background as soon as the transport listens (recovery runs then).

    Raises:
        InvalidInputError: unsafe network settings (non-loopback bind without a token).
        StateStoreError: another server serves the state directory (its pid named); or the engine found
            its state unusable as it started (a file that is not an SQLite database, a schema newer than
            the program): the server stopped serving at once.
    """
    transport = settings.transport
    token = check_network_settings(settings) if transport != "stdio" else None
    if transport != "stdio":
        _check_port_free(settings.host, settings.port)
    if transport == "stdio" and (sys.stdin is None or sys.stdout is None):
        # Python found fd 0 or 1 closed at start-up; a file opened since may hold that number, and the
        # transport would read or divert it.
        raise InvalidInputError(
            "transport",
            "stdio needs the process's stdin and stdout open (the client's pipes); one of them is closed",
        )
    with contextlib.ExitStack() as held:
        if settings.durable:
            # One server per state directory, held from before anything of it is opened until the
            # engine has flushed at exit (core/_serving_lock.py).
            held.enter_context(ServingLock(settings.state_dir))
        return _serve(settings, token, engine_factory)


def _serve(settings: Settings, token: str | None, engine_factory: EngineFactory | None) -> int:
    transport = settings.transport
    register_secret(token)  # read from a file, it is in no environment variable: redact it explicitly
    policy = ServerPolicy.for_transport(
        transport, settings.allow_shell, settings.http_allow, settings.python_call_allow
    )
    factory = engine_factory or _settings_engine_factory(settings)
    tools = OrchestrationMCPTools(engine_factory=factory, policy=policy)
    server = build_server(tools, state_dir=settings.state_dir if settings.durable else None)
    stopping: list[threading.Thread] = []  # the thread cancelling the work at the first signal (or EOF)
    status = _server_status(settings, policy)
    tools.server_status = status.component
    # One server per durable state directory (server.lock): only its verdict goes in server.json.
    record = ServerRecord(settings.state_dir)
    health = HealthWatch(tools, record=record if settings.durable else None)
    tools.health_observer = health.observe
    log.info(
        "server.start",
        transport=transport,
        code_execution=policy.allow_code_execution,
        auth=bool(token),
        **({"url": _url(settings)} if transport != "stdio" else {}),
    )

    def stop_work(sse_sessions: SseSessions | None = None) -> None:
        """The runs and tasks stop now, so calls waiting on them get them; on the event loop's thread."""
        stop = threading.Thread(
            target=_stop_work, args=(tools, sse_sessions), name="codomyrmex-stop", daemon=True
        )
        stopping.append(stop)
        stop.start()

    try:
        if transport == "stdio":
            anyio.run(
                _serve_stdio,
                server,
                settings.stdio_max_line_bytes,
                health.start,
                stop_work,
                SHUTDOWN_GRACE,
                backend_options=_loop_options(),
            )
        else:
            sign_outs = settings.state_dir / "ui_sign_outs.json" if settings.durable else None
            ui_access = _ui.UiAccess(token, sign_outs=sign_outs)
            sse_sessions = SseSessions() if transport == "sse" else None
            app = build_http_app(
                server,
                transport=transport,
                host=settings.host,
                auth_token=token,
                allowed_hosts=settings.allowed_hosts,
                tools=tools,
                ui_access=ui_access,
                status=status,
                health=health,
                session_idle_timeout=settings.session_idle_timeout,
                max_sessions=settings.max_sessions,
                sse_sessions=sse_sessions,
            )

            def on_bound(port: int) -> None:  # the banner, only once the port is ours
                code = policy.allow_code_execution
                banner = http_banner(settings, port=port, auth=bool(token), code_execution=code)
                announce("server.banner", banner, settings.log_format)
                _print_ui_link(_base_url(settings.host, port), ui_access, settings.log_format)
                record.update(ui=f"{_base_url(settings.host, port)}/ui/")

            def on_signal() -> None:
                stop_work(sse_sessions)

            guard = ConnectionGuard(
                request_timeout=settings.http_request_timeout,
                max_connections=fit_to_file_limit(settings.http_max_connections),
            )
            # SSE answers on each client's event stream: the sessions end the streams, once answered.
            with deferred_stream_close() if sse_sessions is not None else contextlib.nullcontext():
                anyio.run(
                    _serve_http,
                    app,
                    settings.host,
                    settings.port,
                    on_bound,
                    on_signal,
                    guard,
                    health.start,
                    backend_options=_loop_options(),
                )
    except KeyboardInterrupt:
        pass
    finally:
        for thread in stopping:
            thread.join()  # bounded: cancelling waits at most the engine's own cancel timeouts
        health.stop()  # a build under way ends first: the engine shut down below is whole
        record.remove()
        store = tools.engine.store if tools.engine_started else None
        try:
            if engine_factory is not None:
                tools.close()
            elif tools.engine_started:
                from codomyrmex_orchestration.compose import reset_engine

                tools.cancel_running_tasks()
                reset_engine()  # the process-wide engine: cancel running work, flush, forget it
        except OrchestrationError as exc:
            log.warning("server.shutdown_failed", error=str(exc))
        log.info("server.stop", transport=transport)
    if health.fatal is not None:
        raise health.fatal  # logged as it happened; the command line says it again and exits 2
    lost = getattr(store, "lost_writes", 0)  # a SqliteStore closed while its commits kept failing
    if lost:
        log.error(
            "server.lost_writes",
            lost=lost,
            reason="the state store could not save these writes before the server stopped (a lock held "
            "by another process or a full disk): the runs they belong to may be missing or out of date",
        )
        return 1
    return 0


def _stop_work(tools: OrchestrationMCPTools, sse_sessions: SseSessions | None = None) -> None:
    """Cancel the server's running tasks and runs (left resumable) before the transport closes: a
    client waiting on one gets its final record instead of holding the server's exit for as long as the
    work would take. The engine itself is shut down once the transport has closed. SSE sessions end
    their event streams once their requests are answered (streamable HTTP answers each request on its
    own response, which uvicorn lets finish)."""
    if sse_sessions is not None:
        sse_sessions.close_when_answered()
    try:
        if tools.engine_started:
            tools.cancel_running_tasks()
            tools.engine.workflow_manager.shutdown(cancel_running=True)
    except Exception as exc:  # the shutdown that follows still runs; say why this one could not
        log.warning("server.stop_work_failed", error=f"{type(exc).__name__}: {exc}")


def _server_status(settings: Settings, policy: ServerPolicy) -> ServerStatus:
    """The server's own status; warns on stderr when code execution is exposed beyond loopback."""
    status = ServerStatus(transport=settings.transport, code_execution=policy.allow_code_execution)
    warning = exposure_warning(
        settings.transport, settings.host, policy.allow_code_execution, is_loopback(settings.host)
    )
    if warning is not None:
        status.exposed = True
        status.warnings.append(warning)
        log.warning("server.code_execution_exposed", warning=warning)
        # Also as a banner, whatever the log level: the person starting the server must see it.
        rule = "!" * 78
        announce("server.warning", f"{rule}\n! WARNING: {warning}\n{rule}", settings.log_format)
    return status


def _base_url(host: str, port: int) -> str:
    """Where this machine reaches a server bound to ``host``: a wildcard bind is reached on loopback."""
    return f"http://{reachable_host(host)}:{port}"


def _print_ui_link(base: str, access: _ui.UiAccess, log_format: str) -> None:
    """Tell the person starting the server where the run view is (stderr: never the protocol)."""
    link = f"{base}/ui/"
    if access.required:
        code = access.one_time_code()
        link = f"{base}/ui/login?code={code}  (a one-time sign-in link)"
    announce("server.run_view", f"run view: {link}", log_format)


def _url(settings: Settings) -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    path = "/sse" if settings.transport == "sse" else "/mcp"
    return f"http://{host}:{settings.port}{path}"


def _settings_engine_factory(settings: Settings) -> EngineFactory:
    def make(policy: ServerPolicy) -> Any:
        from codomyrmex_orchestration.compose import configure_engine

        return configure_engine(settings.model_copy(update={"allow_shell": policy.allow_code_execution}))

    return make
