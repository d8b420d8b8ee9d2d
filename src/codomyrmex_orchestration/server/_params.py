"""Requests whose params do not validate: the SDK answers them -32602 "Invalid request parameters" with
empty ``data``; :func:`install` adds the middleware that answers with the field and what it takes, as tool
arguments are answered. Holds no state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args, get_origin

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from mcp_types import methods
from pydantic import BaseModel, ValidationError

from codomyrmex_orchestration.errors import InvalidInputError

__all__ = ["install"]


def install(server: Server[Any]) -> None:
    """Explain the params a request is refused for; innermost of the server's middleware, so it sees the
    request as the SDK's own validation does (after ``ToolTasks`` has taken ``task`` off a call)."""

    async def explained(ctx: Any, call_next: Callable[[Any], Any]) -> Any:
        try:
            return await call_next(ctx)
        except ValidationError:
            problem = _params_problem(server, ctx.method, ctx.protocol_version, ctx.params)
            if problem is None:
                raise  # not the params (a handler's own model): the SDK's answer stands
            raise problem from None

    server.middleware.append(explained)


def _params_problem(server: Server[Any], method: str, version: str, params: Any) -> MCPError | None:
    """The error naming what is wrong with ``params`` of ``method``, validated as the SDK validates them
    (the handler's params model, absent params as ``{}``; the specification's request shape); None if
    they are valid."""
    entry = server.get_request_handler(method)
    model: type[BaseModel] | None = entry.params_type if entry is not None else None
    try:
        if model is not None:
            try:
                model.model_validate({} if params is None else params, by_name=False)
            except ValidationError as exc:
                return _error(method, InvalidInputError.from_validation(exc, where="params"), exc, model)
        if method in methods.SPEC_CLIENT_METHODS:
            methods.validate_client_request(method, version, params)  # locations start with "params"
    except ValidationError as exc:
        return _error(method, InvalidInputError.from_validation(exc), exc, model)
    except KeyError:  # a method this version does not define: the SDK says so, not this
        return None
    return None


def _error(
    method: str, problem: InvalidInputError, exc: ValidationError, model: type[BaseModel] | None
) -> MCPError:
    reason = problem.reason
    errors = exc.errors()
    kind, loc = (errors[0]["type"], errors[0]["loc"]) if errors else ("", ())
    choices = _choices(model, str(loc[-1])) if model is not None and loc else ()
    if kind == "missing" and choices:  # pydantic lists the values only for a wrong one
        reason += f" (one of {', '.join(repr(c) for c in choices)})"
    return MCPError(
        code=types.INVALID_PARAMS,
        message=f"invalid {method} params: {reason}",
        data={"method": method, "field": problem.field},
    )


def _choices(model: type[BaseModel], name: str) -> tuple[Any, ...]:
    """The values a ``Literal`` field of ``model`` (by name or alias) takes, or ()."""
    for field_name, field in model.model_fields.items():
        if name in (field_name, field.alias) and get_origin(field.annotation) is Literal:
            return get_args(field.annotation)
    return ()
