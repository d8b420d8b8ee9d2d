"""The ``python`` module: ``python.call`` imports ``package.module:callable`` and calls it in the step's
worker thread (stopped cooperatively: a callable that accepts ``ctx`` can watch ``ctx.cancel_event``)."""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, NoReturn, cast

from codomyrmex_orchestration.core.actions._params import ParameterReaders, json_safe
from codomyrmex_orchestration.core.actions._registry import ActionContext, ActionDefinition, ActionRegistry
from codomyrmex_orchestration.errors import (
    ActionRefusedError,
    InvalidInputError,
    OrchestrationError,
    StepFailedError,
)

__all__ = ["PARAMETERS", "call", "register", "resolve_callable"]

PARAMETERS = {
    "function": '"package.module:callable" (dotted attributes allowed after the colon, e.g. '
    '"pkg.mod:Class.method") (required)',
    "args": "list of positional arguments (default [])",
    "kwargs": "object of keyword arguments (default {})",
}
_ACTION = "python.call"
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_FUNCTION_RE = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$")
_CONTEXT_NAMES = ("ctx", "context")


def resolve_callable(
    spec: object, step: str = "python.call", *, allow: tuple[str, ...] = ()
) -> Callable[..., Any]:
    """Import ``package.module:attr.path`` and return the callable.

    With ``allow`` (module prefixes: ``a.b`` allows ``a.b`` and ``a.b.c``, not ``a.bc``) the module must
    be inside one of them before it is imported, and the walk stays inside them: no name starting with
    ``_`` is followed, no module outside them is entered (``json:codecs`` is the ``codecs`` module), and
    the callable must be defined in an allowed module (its ``__module__``; ``os.path:join`` is defined in
    ``posixpath``, the module ``os.path`` names). Without ``allow`` anything importable is reached.

    Raises:
        InvalidInputError: ``spec`` is not of the form ``package.module:callable``.
        ActionRefusedError: ``allow`` is set and ``spec`` leaves it.
        StepFailedError: the module cannot be imported, the attribute is missing or not callable.
    """
    spec = _spec(spec)
    module_name, _, attr_path = spec.partition(":")
    if allow and not _inside(module_name, allow):
        # Checked before the import: importing a module runs its code.
        _refuse(spec, f"its module {module_name!r} is not in", allow)
    try:
        root: Any = importlib.import_module(module_name)
    except Exception as exc:
        # Any exception while importing (ImportError, SyntaxError, errors in module code) is the
        # step's failure, reported with the module and the reason.
        raise StepFailedError(
            step,
            f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}",
            error_type=type(exc).__name__,
        ) from None
    target, walked = root, module_name
    for part in attr_path.split("."):
        if allow and part.startswith("_"):
            _refuse(spec, f"it names {part!r}, and names starting with '_' are not followed under", allow)
        try:
            target = getattr(target, part)
        except AttributeError:
            raise StepFailedError(
                step, f"{walked!r} has no attribute {part!r} (function {spec!r})", error_type="AttributeError"
            ) from None
        walked = f"{walked}:{part}" if walked == module_name else f"{walked}.{part}"
        if (
            allow
            and isinstance(target, ModuleType)
            and target is not root
            and not _inside(target.__name__, allow)
        ):
            _refuse(spec, f"{walked} is the module {target.__name__!r}, which is not in", allow)
    if not callable(target):
        raise StepFailedError(
            step, f"{spec!r} is a {type(target).__name__}, not a callable", error_type="TypeError"
        )
    if allow:
        home = _defined_in(target)
        if home is None or not (_inside(home, allow) or sys.modules.get(home) is root):
            where = "in no module" if home is None else f"in the module {home!r}"
            _refuse(spec, f"it is defined {where}, which is not in", allow)
    return cast(Callable[..., Any], target)


def _spec(spec: object) -> str:
    if not isinstance(spec, str) or not _FUNCTION_RE.match(spec):
        raise InvalidInputError(
            "parameters.function",
            f'python.call needs \'function\' as "package.module:callable" (e.g. "json:dumps"), got {spec!r}',
        )
    return spec


def _args(params: Mapping[str, Any]) -> list[Any]:
    args = params.get("args")
    if args is None:
        return []
    if not isinstance(args, list):
        raise InvalidInputError("parameters.args", "python.call needs 'args' to be a list")
    return args


def _kwargs(params: Mapping[str, Any]) -> dict[str, Any]:
    kwargs = params.get("kwargs")
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise InvalidInputError("parameters.kwargs", "python.call needs 'kwargs' to be an object")
    return dict(kwargs)


#: Every rule of python.call's parameters, run when the step runs and on literal values at validation
#: (the function's form only: importing its module runs code, so that waits for the step, as does the
#: server's allow-list).
_READERS = ParameterReaders(
    _ACTION,
    PARAMETERS,
    args=(("args",), _args),
    kwargs=(("kwargs",), _kwargs),
    function=(("function",), lambda p: _spec(p.get("function"))),
)


def _inside(module: str, prefixes: tuple[str, ...]) -> bool:
    """``module`` is one of ``prefixes`` or inside one (``a.b``: ``a.b`` and ``a.b.c``, not ``a.bc``)."""
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def _defined_in(target: Any) -> str | None:
    """The name of the module that defines ``target`` (a class method of a built-in type has no
    ``__module__`` of its own: its class's), or ``None`` (a method of a built-in object)."""
    name = getattr(target, "__module__", None)
    owner = getattr(target, "__self__", None)
    if name is None and isinstance(owner, type):
        name = owner.__module__
    return name if isinstance(name, str) else None


def _refuse(spec: str, why: str, prefixes: tuple[str, ...]) -> NoReturn:
    raise ActionRefusedError(
        "python",
        "call",
        f"parameters.function {spec!r}: {why} this server's python.call allow-list ({', '.join(prefixes)}). "
        'Accepted: "module:callable" with the module inside an allowed one, reached through public names '
        "(no leading '_') and no other module, and the callable defined in an allowed module; the operator "
        "sets the list with CODOMYRMEX_PYTHON_CALL_ALLOW",
    )


def _context_keyword(func: Callable[..., Any]) -> str | None:
    """The name of a keyword parameter ``ctx``/``context`` of ``func``, if it has one."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # builtins without a signature
        return None
    for name in _CONTEXT_NAMES:
        param = signature.parameters.get(name)
        if param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            return name
    return None


def call(params: dict[str, Any], ctx: ActionContext) -> Any:
    """Call ``function(*args, **kwargs)`` (plus ``ctx=``/``context=`` when it accepts one).

    Returns:
        The callable's return value, as JSON would store it.

    Raises:
        InvalidInputError: a parameter is malformed.
        ActionRefusedError: ``ctx.extras["python_call_allow"]`` (module prefixes) is set and ``function``
            leaves it (see :func:`resolve_callable`).
        StepFailedError: import/lookup failure, the callable raised, or its result is not JSON-serialisable.
    """
    read = _READERS.read(params)
    args: list[Any] = read["args"]
    kwargs: dict[str, Any] = read["kwargs"]
    spec: str = read["function"]
    func = resolve_callable(spec, ctx.step_name, allow=tuple(ctx.extras.get("python_call_allow", ())))
    keyword = _context_keyword(func)
    if keyword is not None and keyword not in kwargs:
        kwargs[keyword] = ctx
    ctx.check_cancelled()
    try:
        result = func(*args, **kwargs)
    except OrchestrationError:
        raise
    except Exception as exc:
        raise StepFailedError(
            ctx.step_name, f"{spec} raised {type(exc).__name__}: {exc}", error_type=type(exc).__name__
        ) from exc
    try:
        return json_safe(result, f"the return value of {spec} ({type(result).__name__})")
    except TypeError as exc:
        raise StepFailedError(ctx.step_name, str(exc), error_type="TypeError") from None


def register(registry: ActionRegistry) -> None:
    """Add ``python.call`` to ``registry``."""
    registry.register(
        ActionDefinition(
            "python",
            "call",
            call,
            description="Import package.module:callable and call it with args/kwargs; a ctx or context "
            "keyword parameter receives the step's ActionContext.",
            parameters=dict(PARAMETERS),
            output="the callable's return value (must be JSON-serialisable)",
            executes_code=True,
            check=_READERS.check,
        )
    )
