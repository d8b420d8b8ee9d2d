"""The MCP servers ``mcp.call`` may call: ``config/mcp_servers.json`` read into validated entries.

The file has the ``mcpServers`` shape MCP clients use: a stdio server is ``command`` / ``args`` / ``env``
/ ``cwd``, a streamable-HTTP server is ``url`` / ``headers``. It owns no state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from codomyrmex_orchestration.errors import InvalidInputError

__all__ = ["HttpServer", "ServerEntry", "StdioServer", "load_servers", "parse_servers"]


class StdioServer(BaseModel):
    """A server started as a subprocess and spoken to over its stdin and stdout."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["stdio"] = "stdio"
    description: str = ""
    command: str = Field(min_length=1)
    args: tuple[str, ...] = ()
    #: Added to a minimal inherited environment (HOME, LOGNAME, PATH, SHELL, TERM, USER).
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None

    @property
    def transport(self) -> str:
        return "stdio"

    def describe(self) -> dict[str, Any]:
        """What ``list_actions`` shows: never the environment (it may hold credentials)."""
        return {"transport": "stdio", "description": self.description, "command": self.command}


class HttpServer(BaseModel):
    """A server reached over streamable HTTP."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["http", "streamable-http", "streamableHttp"] = "http"
    description: str = ""
    url: str
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL of the server's MCP endpoint")
        return value

    @property
    def transport(self) -> str:
        return "streamable-http"

    def describe(self) -> dict[str, Any]:
        """What ``list_actions`` shows: never the headers (they may hold credentials)."""
        return {"transport": "streamable-http", "description": self.description, "url": self.url}


ServerEntry = StdioServer | HttpServer


def _entry(name: str, raw: Any) -> ServerEntry:
    where = f"mcpServers.{name}"
    if not isinstance(raw, Mapping):
        raise InvalidInputError(
            where, "must be an object with command/args/env/cwd (stdio) or url/headers (HTTP)"
        )
    kind = raw.get("type")
    if kind == "sse":
        raise InvalidInputError(
            f"{where}.type", "the SSE transport is not supported; use the server's streamable-HTTP URL"
        )
    model: type[StdioServer] | type[HttpServer] = HttpServer if "url" in raw else StdioServer
    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        problem = InvalidInputError.from_validation(exc, where=where, accepted=list(model.model_fields))
        if "url" in raw or "command" in raw:
            raise problem from None
        hinted = InvalidInputError("", f"{problem} (a stdio server needs 'command', an HTTP server 'url')")
        hinted.field = problem.field
        raise hinted from None


def parse_servers(document: Any) -> dict[str, ServerEntry]:
    """The servers of a ``{"mcpServers": {name: entry}}`` document.

    Raises:
        InvalidInputError: the document or an entry is malformed (the field is named, e.g.
            ``mcpServers.echo.command``).
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("mcpServers"), Mapping):
        raise InvalidInputError("mcpServers", 'the file must hold {"mcpServers": {"<name>": {...}}}')
    servers = document["mcpServers"]
    return {str(name): _entry(str(name), raw) for name, raw in servers.items()}


def load_servers(path: Path) -> dict[str, ServerEntry]:
    """The servers configured in ``path``; none when the file does not exist.

    Raises:
        InvalidInputError: the file is not JSON or an entry is malformed (the file and field are named).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise InvalidInputError(str(path), f"cannot be read: {exc.strerror or exc}") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise InvalidInputError(str(path), f"is not valid JSON: {exc}") from None
    try:
        return parse_servers(document)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{path}: {exc.field}", exc.reason) from None
