"""The ``mcp`` module: ``mcp.call`` calls a tool of another MCP server configured in
``config/mcp_servers.json``, through the shared connections of :class:`McpConnections`.

The output is the tool's structured content when it returns some, else ``{"text": ...}`` (its text
blocks joined with newlines, plus ``"content"``: its other blocks, if any). A result flagged
``isError`` fails the step with the server's message. It owns no state beyond the registration.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from codomyrmex_orchestration._suggest import did_you_mean
from codomyrmex_orchestration.connectors._servers import ServerEntry, StdioServer, load_servers
from codomyrmex_orchestration.connectors._waits import CallCancelled, CallTimedOut, ConnectionLost
from codomyrmex_orchestration.core.actions import ActionContext, ActionDefinition, ActionRegistry
from codomyrmex_orchestration.core.actions._params import ParameterReaders
from codomyrmex_orchestration.errors import (
    ActionRefusedError,
    InvalidInputError,
    InvalidStateError,
    OrchestrationError,
    StepCancelledError,
    StepFailedError,
    StepTimeoutError,
)
from codomyrmex_orchestration.logs import get_logger

if TYPE_CHECKING:
    import mcp_types as types

    from codomyrmex_orchestration.connectors._connections import McpConnections

__all__ = ["PARAMETERS", "SERVICE", "McpCall", "mcp_catalogue", "register"]

log = get_logger("codomyrmex_orchestration.connectors")

#: The name the connections are attached under in the action registry (``registry.service``).
SERVICE = "mcp"
#: Longest ``validate_workflow`` waits for a server to list its tools before skipping its checks.
PROBE_TIMEOUT = 10.0
_MAX_SCHEMA_PROBLEMS = 5
_ACTION = "mcp.call"
_NEEDS_SERVER = "mcp.call needs 'server', the name of a configured MCP server"

PARAMETERS = {
    "server": "name of a server in config/mcp_servers.json (list_actions shows them) (required)",
    "tool": "name of the tool to call on that server (list_actions with server shows them) (required)",
    "arguments": "object of the tool's arguments, checked against its input schema (default {})",
}


def _templated(value: Any) -> bool:
    """True when ``value`` holds a ``{{...}}`` reference anywhere (resolved only when the step runs)."""
    if isinstance(value, str):
        return "{{" in value
    if isinstance(value, Mapping):
        return any(_templated(v) for v in value.values())
    if isinstance(value, list):
        return any(_templated(v) for v in value)
    return False


class McpCall:
    """``mcp.call`` over one set of connections: the action, its checks and its catalogue entry.

    The connections (and the ``mcp`` SDK) are loaded with the first call or tool listing: registering
    the action and checking steps cost a command-line run nothing. While ``code_execution()`` is False
    nothing reaches a server: no command is started and no URL connected to (calls, tool listings and
    ``validate_workflow``'s tool checks alike), since a server's tools are its own code.

    Args:
        servers: name -> entry of the configured servers.
        servers_file: where the servers were read from (named in messages).
        procs_dir: where stdio servers' process groups are recorded while they run.
        config_error: why the servers file could not be used (``servers`` is then empty).
        code_execution: whether code execution is allowed now (the registry's setting); default: yes.
    """

    def __init__(
        self,
        servers: Mapping[str, ServerEntry],
        servers_file: Path | None = None,
        *,
        procs_dir: Path | None = None,
        config_error: str | None = None,
        code_execution: Callable[[], bool] = lambda: True,
    ) -> None:
        self.servers = dict(servers)
        self._code_execution = code_execution
        self.servers_file = servers_file
        self.procs_dir = procs_dir
        self.config_error = config_error
        self._lock = threading.Lock()
        self._connections: McpConnections | None = None  # built on first use, under _lock
        self._closed = False  # under _lock
        #: Every rule of mcp.call's parameters, run when the step runs and on literal values at validation.
        self._readers = ParameterReaders(
            _ACTION,
            PARAMETERS,
            server=(("server",), self._configured_server),
            tool=(("tool",), _tool),
            arguments=(("arguments",), _arguments),
        )

    @property
    def connections(self) -> McpConnections:
        """The connections, built on first use.

        Raises:
            ConnectionLost: :meth:`close` was called (the engine is shutting down).
        """
        with self._lock:
            if self._closed:
                raise ConnectionLost("the MCP connections are closed: the engine is shutting down")
            if self._connections is None:
                from codomyrmex_orchestration.connectors._connections import McpConnections

                self._connections = McpConnections(self.servers, procs_dir=self.procs_dir)
            return self._connections

    def _open(self, server: str) -> McpConnections:
        """The connections, to use ``server`` (configured); refused while code execution is off.

        Raises:
            ActionRefusedError: code execution is off (the message names the setting that allows it).
            ConnectionLost: the engine is shutting down.
        """
        if not self._code_execution():
            entry = self.servers[server]
            reaching = (
                f"would start its command {entry.command!r}"
                if isinstance(entry, StdioServer)
                else f"would connect to {entry.url}"
            )
            raise ActionRefusedError(
                "mcp",
                "call",
                f"using MCP server {server!r} (calling or listing its tools) {reaching}, and code execution "
                "is disabled on this server (enable with --allow-shell / CODOMYRMEX_ALLOW_SHELL=1)",
            )
        return self.connections

    # ------------------------------------------------------------------ messages

    def _where(self) -> str:
        return str(self.servers_file) if self.servers_file is not None else "config/mcp_servers.json"

    def _unknown_server(self, server: str) -> str:
        if self.config_error:
            return f"no MCP server can be used: {self.config_error}"
        names = sorted(self.servers)
        if not names:
            return f"unknown MCP server {server!r}: no servers are configured (add them to {self._where()})"
        return (
            f"unknown MCP server {server!r}{did_you_mean(server, names)}; configured servers: "
            f"{', '.join(names)} (in {self._where()})"
        )

    # ------------------------------------------------------------------ the action

    def __call__(self, params: dict[str, Any], ctx: ActionContext) -> Any:
        """Call the tool; see :data:`PARAMETERS`.

        Raises:
            InvalidInputError: a parameter is malformed, or the server is not configured.
            ActionRefusedError: code execution is off (the registry refuses the action before this).
            StepFailedError: the server cannot be reached, the connection ended during the call, the
                server refused the call (e.g. an unknown tool), or the tool returned ``isError``.
            StepCancelledError / StepTimeoutError: cancelled, or the step deadline passed.
        """
        from mcp import MCPError

        read = self._readers.read(params)
        server: str = read["server"]
        tool: str = read["tool"]
        arguments: dict[str, Any] = read["arguments"]
        ctx.check_cancelled()
        started = time.monotonic()
        remaining = ctx.remaining()
        try:
            result = self._open(server).call_tool(
                server, tool, arguments, timeout=remaining, on_cancel=ctx.on_cancel
            )
        except CallCancelled:
            raise StepCancelledError(ctx.step_name, f"cancelled during {_ACTION} {server}.{tool}") from None
        except CallTimedOut:
            raise StepTimeoutError(ctx.step_name, round(remaining or time.monotonic() - started, 3)) from None
        except ConnectionLost as exc:
            raise StepFailedError(
                ctx.step_name,
                f"{exc}; it is opened again on the next call (max_retries retries the step)",
                error_type="McpConnectionError",
            ) from None
        except MCPError as exc:
            raise StepFailedError(
                ctx.step_name,
                f"MCP server {server!r} refused the call of {tool!r}: {exc.error.message}"
                + self._tool_hint(server, tool),
                error_type="McpError",
            ) from None
        if result.is_error:
            message = _text(result.content) or "(the tool gave no message)"
            failed = f"tool {tool!r} of MCP server {server!r} failed: {message}" + self._tool_hint(
                server, tool
            )
            raise StepFailedError(ctx.step_name, failed, error_type="McpToolError")
        return _output(result)

    def _tool_hint(self, server: str, tool: str) -> str:
        """``; its tools: ...`` when ``tool`` is not among the server's tools (best effort)."""
        try:
            names = [t.name for t in self._open(server).list_tools(server, timeout=PROBE_TIMEOUT)]
        except Exception:  # only a hint: the call's own error is what the step reports
            return ""
        if tool in names:
            return ""
        return f"; it has no tool {tool!r}{did_you_mean(tool, names)}, its tools: {', '.join(sorted(names))}"

    # ------------------------------------------------------------------ validation

    def check(self, params: Mapping[str, Any]) -> list[str]:
        """Quick checks (no I/O): the parameters' readers on their literal values (types, and that the
        server is configured)."""
        return self._readers.check(params)

    def _configured_server(self, params: Mapping[str, Any]) -> str:
        server = _server(params)
        if server not in self.servers:
            raise InvalidInputError("parameters.server", self._unknown_server(server))
        return server

    def probe(self, params: dict[str, Any]) -> list[str]:
        """When the server can be reached: the tool exists and the arguments fit its input schema.

        References (``{{...}}``) are not checked: they are resolved only when the step runs.
        """
        server, tool, arguments = params.get("server"), params.get("tool"), params.get("arguments", {})
        if not isinstance(server, str) or server not in self.servers:
            return []
        if not isinstance(tool, str) or _templated(tool):
            return []
        try:
            tools = {t.name: t for t in self._open(server).list_tools(server, timeout=PROBE_TIMEOUT)}
        except (ConnectionLost, CallTimedOut, OrchestrationError) as exc:
            log.info("mcp.probe_skipped", server=server, reason=str(exc))
            return []
        if tool not in tools:
            return [
                f"parameters.tool: MCP server {server!r} has no tool {tool!r}{did_you_mean(tool, tools)}; "
                f"its tools: {', '.join(sorted(tools)) or 'none'}"
            ]
        if not isinstance(arguments, dict):
            return []
        return _schema_problems(tools[tool].input_schema, arguments)

    # ------------------------------------------------------------------ the catalogue

    def describe_servers(self) -> list[dict[str, Any]]:
        """Each configured server: name, transport, description and command or URL (never env/headers)."""
        servers = sorted(self.servers.items())
        return [{"name": name, **entry.describe()} for name, entry in servers]

    def tools(self, server: str, *, timeout: float = PROBE_TIMEOUT) -> list[dict[str, Any]]:
        """The tools ``server`` lists, each with its input schema (connecting to it if needed).

        Raises:
            InvalidInputError: the server is not configured.
            ActionRefusedError: code execution is off: nothing is started or connected to.
            InvalidStateError: it cannot be reached or does not answer within ``timeout``.
        """
        if server not in self.servers:
            raise InvalidInputError("server", self._unknown_server(server))
        try:
            listed = self._open(server).list_tools(server, timeout=timeout)
        except (ConnectionLost, CallTimedOut) as exc:
            reason = str(exc) or f"it did not list its tools within {timeout:g} s"
            wanted = f"{reason} (its entry is in {self._where()})"
            raise InvalidStateError("MCP server", server, "unreachable", wanted) from None
        return [
            {"name": t.name, "description": t.description or "", "input_schema": t.input_schema}
            for t in sorted(listed, key=lambda t: t.name)
        ]

    def close(self) -> None:
        """Close the connections for good (the engine is shutting down)."""
        with self._lock:
            self._closed = True
            connections = self._connections
        if connections is not None:
            connections.close()


def _server(params: Mapping[str, Any]) -> str:
    server = params.get("server")
    if not isinstance(server, str) or not server:
        raise InvalidInputError("parameters.server", _NEEDS_SERVER)
    return server


def _tool(params: Mapping[str, Any]) -> str:
    tool = params.get("tool")
    if not isinstance(tool, str) or not tool:
        raise InvalidInputError("parameters.tool", "mcp.call needs 'tool', the name of a tool of that server")
    return tool


def _arguments(params: Mapping[str, Any]) -> dict[str, Any]:
    arguments = params.get("arguments", {})
    if not isinstance(arguments, dict):
        got = type(arguments).__name__
        raise InvalidInputError("parameters.arguments", f"mcp.call needs 'arguments' as an object, got {got}")
    return arguments


def _schema_problems(schema: dict[str, Any], arguments: dict[str, Any]) -> list[str]:
    import jsonschema

    try:
        validator = jsonschema.validators.validator_for(schema)(schema)
        errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
    except jsonschema.SchemaError:
        return []  # the server's schema is broken: nothing we can check against
    problems = []
    for error in errors:
        if _templated(error.instance):
            continue
        path = "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in error.absolute_path)
        problems.append(f"parameters.arguments{path}: {error.message}")
    if len(problems) > _MAX_SCHEMA_PROBLEMS:
        problems = [*problems[:_MAX_SCHEMA_PROBLEMS], f"and {len(problems) - _MAX_SCHEMA_PROBLEMS} more"]
    return problems


def _text(content: list[types.ContentBlock]) -> str:
    import mcp_types as types

    return "\n".join(block.text for block in content if isinstance(block, types.TextContent))


def _output(result: types.CallToolResult) -> Any:
    import mcp_types as types

    if result.structured_content is not None:
        return result.structured_content
    output: dict[str, Any] = {"text": _text(result.content)}
    others = [b for b in result.content if not isinstance(b, types.TextContent)]
    if others:
        output["content"] = [b.model_dump(mode="json", by_alias=True, exclude_none=True) for b in others]
    return output


def register(registry: ActionRegistry, servers_file: Path, *, procs_dir: Path | None = None) -> McpCall:
    """Add ``mcp.call`` to ``registry`` with connections to the servers of ``servers_file`` (none when it
    does not exist), attached as the registry's ``"mcp"`` service (closed with it).

    A malformed file does not stop the engine: it is logged, and every ``mcp.call`` reports it.
    """
    try:
        servers, error = load_servers(servers_file), None
    except InvalidInputError as exc:
        servers, error = {}, str(exc)  # load_servers names the file (and the field) already
        log.error("mcp.servers_file_invalid", path=str(servers_file), error=str(exc))
    call = McpCall(
        servers,
        servers_file,
        procs_dir=procs_dir,
        config_error=error,
        code_execution=lambda: registry.allow_code_execution,
    )
    registry.register(
        ActionDefinition(
            "mcp",
            "call",
            call,
            description="Call a tool of another MCP server configured in config/mcp_servers.json "
            "(list_actions lists the servers; with server, that server's tools and their input schemas).",
            parameters=dict(PARAMETERS),
            output="the tool's structured content when it returns some, else "
            '{"text": its text blocks joined with newlines} (plus "content": its other blocks, if any); '
            "isError fails the step",
            executes_code=True,
            check=call.check,
            probe=call.probe,
        ),
        replace=True,
    )
    registry.attach(SERVICE, call)
    return call


def mcp_catalogue(registry: ActionRegistry, server: str | None = None) -> dict[str, Any]:
    """What ``list_actions`` adds for ``mcp.call``: the configured servers (``mcp_servers``), why the
    servers file cannot be used (``mcp_servers_error``), and with ``server`` that server's ``tools``.

    Raises:
        InvalidInputError: ``server`` is not configured (the configured ones are named).
        ActionRefusedError: code execution is off on ``registry``: ``server`` is not started.
        InvalidStateError: ``server`` cannot be reached.
    """
    call = registry.service(SERVICE)
    if not isinstance(call, McpCall):
        if server is not None:
            raise InvalidInputError("server", "no MCP servers are configured on this server")
        return {}
    found: dict[str, Any] = {"mcp_servers": call.describe_servers()}
    found["mcp_servers_error"] = call.config_error
    if server is not None:
        found["tools"] = call.tools(server)
    return found
