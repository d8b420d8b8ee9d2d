"""``{{...}}`` references in step parameters and ``run_if`` conditions, resolved without evaluating code.

A step's parameters may name workflow parameters (``{{params.p}}``), earlier steps' outputs and statuses
(``{{steps.s.output.key}}``, ``{{steps.s.status}}``, the short form ``{{s.output}}``), the run
(``{{run.id}}``), secrets (``{{secrets.NAME}}``, looked up when the step is cleared to run; see
``_secrets``) and, in a map step (one with ``for_each``), the current item (``{{item}}``,
``{{item.key}}``) and its position (``{{index}}``). A ``run_if`` condition is a small expression over
the same references, parsed with :mod:`ast` and evaluated by walking a whitelist of node types —
nothing is ever passed to ``eval``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from codomyrmex_orchestration.config import DEFAULT_MAX_RESOLVED_SIZE
from codomyrmex_orchestration.errors import TemplateError

from ._json_compare import json_contains, json_equal, json_less
from ._template_budget import Budget as _Budget
from ._template_budget import to_text as _to_text
from .models import MAX_PARAMETER_NESTING

__all__ = [
    "MAX_RESOLVED_SIZE",
    "SECRET_NAME_PATTERN",
    "Condition",
    "Reference",
    "Template",
    "TemplateContext",
    "find_references",
    "lookup",
    "parse_condition",
    "referenced_steps",
    "resolve",
    "scan_references",
]

#: Upper bound (characters) on what :func:`resolve` puts into one value: embedded text and the JSON size
#: of each whole-value reference; larger -> TemplateError. The default of ``CODOMYRMEX_MAX_RESOLVED_SIZE``,
#: which runs pass as ``max_size``.
MAX_RESOLVED_SIZE = DEFAULT_MAX_RESOLVED_SIZE
#: Parameters nested deeper than this are refused (keeps :func:`resolve` far from the recursion limit):
#: the one limit a definition's parameters are validated against.
MAX_NESTING = MAX_PARAMETER_NESTING

_ROOTS = ("params", "steps", "run", "secrets")
#: A secret's name: what follows ``secrets.`` and ``CODOMYRMEX_SECRET_`` (exactly, case included).
SECRET_NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]{0,127}"
_SECRET_NAME_RE = re.compile(SECRET_NAME_PATTERN)
#: The roots a map step's item brings: ``item`` (with a path into it) and ``index``.
ITEM_ROOTS = ("item", "index")
_STEP_ATTRS = ("output", "status")
# Any {{ ... }}; what is inside decides whether it is a reference (see _looks_like_reference).
_BRACES_RE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
# A dotted path made of name characters. Text in braces that is not such a path (``{{.Names}}``,
# ``{{ index .x "y" }}`` — Go templates in shell commands) is left as literal text.
_PATH_RE = re.compile(r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]*)*")
_WORD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_GRAMMAR = (
    "conditions accept comparisons (== != < <= > >= in, not in), and/or/not, parentheses, "
    "literals (numbers, strings, true/false/null, lists) and references such as "
    "steps.<step>.output.<key>, steps.<step>.status, params.<name>, item, item.<key>, index or {{...}}"
)


@dataclass(frozen=True)
class Reference:
    """One ``{{...}}`` reference (or a bare reference inside a ``run_if`` condition).

    Attributes:
        raw: the text inside the braces, stripped.
        root: ``"params"``, ``"steps"``, ``"run"``, ``"secrets"``, ``"item"`` or ``"index"``.
        step: the step name when ``root == "steps"``, else ``None``.
        attr: ``"output"``/``"status"`` (steps), the run field (``"id"``), the parameter or secret name.
        path: keys and list indices after ``output`` (steps), after the parameter name (params) or
            after ``item``.
    """

    raw: str
    root: str
    step: str | None
    attr: str | None
    path: tuple[str, ...] = ()


@dataclass
class TemplateContext:
    """What references resolve against.

    Attributes:
        params: the run's parameters (defaults merged with the caller's values).
        steps: step name -> ``(status value, output)`` for the steps that have a result.
        run: run fields, at least ``{"id": run_id}``.
        secrets: a secret's value by name (raises TemplateError when it is not set); ``None``: secrets
            cannot be used here.
        item: the current item of a map step, as ``(item, index)``; ``None`` outside one.
    """

    params: Mapping[str, Any] = field(default_factory=dict)
    steps: Mapping[str, tuple[str, Any]] = field(default_factory=dict)
    run: Mapping[str, Any] = field(default_factory=dict)
    secrets: Callable[[str], str] | None = None
    item: tuple[Any, int] | None = None


# --------------------------------------------------------------------------- parsing references


def _as_set(known_steps: Collection[str]) -> Collection[str]:
    if isinstance(known_steps, AbstractSet | Mapping):
        return known_steps
    return frozenset(known_steps)


def _looks_like_reference(text: str) -> bool:
    return _PATH_RE.fullmatch(text) is not None


def _match_step(segments: list[str], known: Collection[str]) -> int | None:
    """Index of the ``output``/``status`` segment after the longest known step name, or None."""
    # Step names may contain '.', so try the longest prefix first; set lookups keep this O(segments).
    for i in range(len(segments) - 1, 0, -1):
        if segments[i] in _STEP_ATTRS and ".".join(segments[:i]) in known:
            return i
    return None


def _step_reference(raw: str, segments: list[str], i: int, field: str) -> Reference:
    step = ".".join(segments[:i])
    attr = segments[i]
    path = tuple(segments[i + 1 :])
    if attr == "status" and path:
        raise TemplateError(
            raw, f"steps.{step}.status is a string and has no keys; drop '.{'.'.join(path)}'", field=field
        )
    return Reference(raw=raw, root="steps", step=step, attr=attr, path=path)


def _parse_reference(raw: str, known: Collection[str], field: str = "parameters") -> Reference:
    """Parse the text of one reference. Raises TemplateError naming the reference and the accepted forms."""
    segments = raw.split(".")
    if any(not s for s in segments):
        raise TemplateError(raw, "empty segment (two dots in a row, or a leading/trailing dot)", field=field)
    head = segments[0]
    if head == "item" and (len(segments) == 1 or segments[1] not in _STEP_ATTRS or head not in known):
        return Reference(raw=raw, root="item", step=None, attr=None, path=tuple(segments[1:]))
    if head == "index" and len(segments) == 1:
        return Reference(raw=raw, root="index", step=None, attr=None)
    if head == "params" and len(segments) >= 2:
        return Reference(raw=raw, root="params", step=None, attr=segments[1], path=tuple(segments[2:]))
    if head == "run" and len(segments) >= 2:
        return Reference(raw=raw, root="run", step=None, attr=segments[1], path=tuple(segments[2:]))
    if head == "secrets" and len(segments) >= 2:
        if len(segments) > 2 or not _SECRET_NAME_RE.fullmatch(segments[1]):
            raise TemplateError(
                raw, "a secret is secrets.<NAME>: letters, digits and '_', nothing after it", field=field
            )
        return Reference(raw=raw, root="secrets", step=None, attr=segments[1])
    if head == "steps" and len(segments) >= 3:
        rest = segments[1:]
        i = _match_step(rest, known)
        if i is None:
            # Unknown step: take the first output/status segment, so the DAG can say which step is unknown.
            i = next((j for j in range(1, len(rest)) if rest[j] in _STEP_ATTRS), None)
        if i is not None:
            return _step_reference(raw, rest, i, field)
        raise TemplateError(
            raw, "a step reference is steps.<step>.output[.<key>...] or steps.<step>.status", field=field
        )
    i = _match_step(segments, known)
    if i is not None:  # the short form {{<step>.output...}}
        return _step_reference(raw, segments, i, field)
    if head in _ROOTS:
        raise TemplateError(
            raw,
            f"incomplete reference; use params.<name>, run.id, secrets.<NAME> or steps.<step>.output / "
            f".status ({head})",
            field=field,
        )
    if len(segments) >= 2 and segments[1] in _STEP_ATTRS:
        shown = ", ".join(sorted(known)[:20]) or "(none)"
        raise TemplateError(raw, f"unknown step {head!r}; known steps: {shown}", field=field)
    raise TemplateError(
        raw,
        "references start with params., steps., run., secrets., item or <step>.output (a known step "
        "name), or are index",
        field=field,
    )


def _template_strings(value: Any) -> Iterator[str]:
    """Every string inside ``value`` that contains ``{{`` (dict keys excluded), in document order."""
    stack = [value]
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        # Exact type checks first: this runs for every step of every workflow validated.
        kind = type(item)
        if kind is str or isinstance(item, str):
            if "{{" in item:
                yield item
        elif kind is dict:
            extend(reversed(item.values()))
        elif kind is list or kind is tuple:
            extend(reversed(item))
        elif isinstance(item, Mapping):
            extend(reversed(list(item.values())))
        elif isinstance(item, list | tuple):
            extend(reversed(item))


def scan_references(
    value: Any, known_steps: Collection[str] = ()
) -> tuple[list[Reference], list[TemplateError]]:
    """Like :func:`find_references` but never raises: returns the references and every error found."""
    known = _as_set(known_steps)
    refs: list[Reference] = []
    errors: list[TemplateError] = []
    for text in _template_strings(value):
        for match in _BRACES_RE.finditer(text):
            raw = match.group(1)
            if not _looks_like_reference(raw):
                continue
            try:
                refs.append(_parse_reference(raw, known))
            except TemplateError as exc:
                errors.append(exc)
    return refs, errors


def find_references(value: Any, known_steps: Collection[str] = ()) -> list[Reference]:
    """Every ``{{...}}`` reference in ``value`` (walks dicts, lists and strings), in document order.

    Args:
        value: a parameter value or a whole parameters dict.
        known_steps: the workflow's step names; needed to read the short form ``{{<step>.output}}``
            and step names that contain dots.

    Raises:
        TemplateError: a ``{{...}}`` that looks like a reference but is not one (the first found).
    """
    refs, errors = scan_references(value, known_steps)
    if errors:
        raise errors[0]
    return refs


def referenced_steps(value: Any, known_steps: Collection[str]) -> set[str]:
    """Names of the steps whose output or status ``value`` references."""
    return {r.step for r in find_references(value, known_steps) if r.step is not None}


# --------------------------------------------------------------------------- resolving


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        keys = sorted(str(k) for k in value)
        return "an object with keys: " + (
            ", ".join(keys[:30]) + (", ..." if len(keys) > 30 else "") or "(none)"
        )
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} items"
    return f"a {type(value).__name__}"


def _walk(base: Any, path: tuple[str, ...], prefix: str, raw: str, field: str) -> Any:
    current = base
    walked = prefix
    for key in path:
        if isinstance(current, Mapping):
            if key not in current:
                raise TemplateError(
                    raw, f"{walked} has no key {key!r}; it is {_describe(current)}", field=field
                )
            current = current[key]
        elif isinstance(current, list | tuple):
            if not key.lstrip("-").isdigit():
                raise TemplateError(
                    raw, f"{walked} is {_describe(current)}; index it with a number, not {key!r}", field=field
                )
            index = int(key)
            if not -len(current) <= index < len(current):
                raise TemplateError(
                    raw, f"{walked} is {_describe(current)}; index {index} is out of range", field=field
                )
            current = current[index]
        else:
            raise TemplateError(raw, f"{walked} is {_describe(current)} and has no key {key!r}", field=field)
        walked = f"{walked}.{key}"
    return current


def lookup(ref: Reference, ctx: TemplateContext, *, field: str = "parameters") -> Any:
    """The value ``ref`` names in ``ctx``. Raises TemplateError naming the missing step, key or parameter."""
    if ref.root == "params":
        assert ref.attr is not None
        if ref.attr not in ctx.params:
            known = ", ".join(sorted(ctx.params)) or "(none)"
            raise TemplateError(
                ref.raw, f"no workflow parameter {ref.attr!r}; parameters given: {known}", field=field
            )
        return _walk(ctx.params[ref.attr], ref.path, f"params.{ref.attr}", ref.raw, field)
    if ref.root in ITEM_ROOTS:
        if ctx.item is None:
            raise TemplateError(ref.raw, "item and index exist only in a step with for_each", field=field)
        value, index = ctx.item
        return index if ref.root == "index" else _walk(value, ref.path, "item", ref.raw, field)
    if ref.root == "run":
        assert ref.attr is not None
        if ref.attr not in ctx.run:
            known = ", ".join(f"run.{k}" for k in sorted(ctx.run)) or "(none)"
            raise TemplateError(ref.raw, f"unknown run field {ref.attr!r}; available: {known}", field=field)
        return _walk(ctx.run[ref.attr], ref.path, f"run.{ref.attr}", ref.raw, field)
    if ref.root == "secrets":
        assert ref.attr is not None
        if ctx.secrets is None:
            raise TemplateError(ref.raw, "secrets are available only in workflow steps", field=field)
        return ctx.secrets(ref.attr)
    assert ref.step is not None
    if ref.step not in ctx.steps:
        raise TemplateError(
            ref.raw, f"step {ref.step!r} has no result in this run (unknown or not finished)", field=field
        )
    status, output = ctx.steps[ref.step]
    if ref.attr == "status":
        return str(status)
    if ref.path and output is None:
        raise TemplateError(ref.raw, f"steps.{ref.step}.output is null (the step is {status})", field=field)
    return _walk(output, ref.path, f"steps.{ref.step}.output", ref.raw, field)


#: A parsed value: called with a context and the size budget, it builds the resolved value.
_Build = Callable[[TemplateContext, _Budget], Any]


def _compile_string(text: str, known: Collection[str]) -> _Build:
    found = _BRACES_RE.finditer(text) if "{{" in text else ()
    matches = [m for m in found if _looks_like_reference(m.group(1))]
    if not matches:
        return lambda ctx, budget: text
    if len(matches) == 1 and matches[0].span() == (0, len(text)):
        ref = _parse_reference(matches[0].group(1), known)
        if ref.root in ITEM_ROOTS and not ref.path:  # a map step's {{item}} / {{index}}: once per item
            at = ITEM_ROOTS.index(ref.root)

            def item(ctx: TemplateContext, budget: _Budget) -> Any:
                value = lookup(ref, ctx) if ctx.item is None else ctx.item[at]  # None: lookup explains
                return budget.charge(value, ref.raw, keep=False)  # another value for each item

            return item
        # A shared value, not a copy, but charged for its size: a large output referenced many times
        # cannot hand an action (and its output, and a spill) many times the budget.
        keep = ref.root not in ITEM_ROOTS
        return lambda ctx, budget: budget.charge(lookup(ref, ctx), ref.raw, keep=keep)
    pieces: list[tuple[str, str, Reference]] = []  # (literal before, reference text, reference)
    last = 0
    for m in matches:
        pieces.append((text[last : m.start()], m.group(1), _parse_reference(m.group(1), known)))
        last = m.end()
    tail = text[last:]

    def build(ctx: TemplateContext, budget: _Budget) -> str:
        out: list[str] = []
        for literal, raw, ref in pieces:
            budget.take(len(literal), raw)
            out.append(literal)
            out.append(_to_text(lookup(ref, ctx), budget, raw))
        out.append(tail)
        return "".join(out)

    return build


def _compile(value: Any, known: Collection[str], depth: int) -> _Build:
    if depth > MAX_NESTING:
        raise TemplateError("parameters", f"nested deeper than {MAX_NESTING} levels")
    if isinstance(value, str):
        return _compile_string(value, known)
    if isinstance(value, Mapping):
        fields = [(k, _compile(v, known, depth + 1)) for k, v in value.items()]
        return lambda ctx, budget: {k: part(ctx, budget) for k, part in fields}
    if isinstance(value, list | tuple):
        parts = [_compile(v, known, depth + 1) for v in value]
        return lambda ctx, budget: [part(ctx, budget) for part in parts]
    return lambda ctx, budget: value


class Template:
    """A value whose references are parsed once, to be resolved against many contexts (a map step's
    parameters, once per item): :meth:`resolve` gives what :func:`resolve` gives for the value.

    Raises:
        TemplateError: a malformed reference, or nesting deeper than ``MAX_NESTING``.
    """

    __slots__ = ("_build", "_sizes")

    def __init__(self, value: Any, known: Collection[str]) -> None:
        self._build = _compile(value, _as_set(known), 0)
        # The JSON sizes of the values its whole-value references passed: measured once, not per item.
        self._sizes: dict[int, tuple[Any, int]] = {}

    def resolve(self, ctx: TemplateContext, *, max_size: int = MAX_RESOLVED_SIZE) -> Any:
        """The value with every reference replaced by what it names in ``ctx`` (see :func:`resolve`)."""
        return self._build(ctx, _Budget(max_size, self._sizes))


def resolve(value: Any, ctx: TemplateContext, *, max_size: int = MAX_RESOLVED_SIZE) -> Any:
    """``value`` with every reference replaced by what it names in ``ctx``.

    A string that is exactly one reference becomes the referenced value itself (dict, list, number,
    ...); references inside a longer string are stringified (strings as is, everything else as JSON).
    Dicts and lists are rebuilt, so the result never shares containers with ``value``.

    Args:
        value: a parameter value or a whole parameters dict.
        ctx: params, step results and run fields to resolve against.
        max_size: bound on the characters the references put in: the text of embedded references
            and the JSON size of each value a whole-value reference passes.

    Raises:
        TemplateError: a missing parameter, step or key (the message names the path), a malformed
            reference, or more than ``max_size`` characters put in (naming the budget).
    """
    return Template(value, ctx.steps).resolve(ctx, max_size=max_size)


# --------------------------------------------------------------------------- run_if conditions

_COMPARE_OPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn)
_NAMED_CONSTANTS: dict[str, Any] = {
    "true": True,
    "false": False,
    "null": None,
    "True": True,
    "False": False,
    "None": None,
}
_OP_SYMBOLS: dict[type[ast.cmpop], str] = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
}
_PLACEHOLDER = "__ref{}__"
_PLACEHOLDER_RE = re.compile(r"__ref(\d+)__")
#: Conditions nested deeper than this (parentheses, ``not``) are refused; evaluation recurses.
MAX_CONDITION_DEPTH = 64


def _reject(text: str, what: str) -> TemplateError:
    return TemplateError(text, f"{what} is not allowed; {_GRAMMAR}", field="run_if")


def _substitute(text: str, known: Collection[str]) -> tuple[str, list[Reference]]:
    """Replace braced and bare references by placeholder names, leaving string literals untouched."""
    out: list[str] = []
    refs: list[Reference] = []
    index: dict[Reference, int] = {}

    def placeholder(ref: Reference) -> str:
        if ref not in index:
            index[ref] = len(refs)
            refs.append(ref)
        return _PLACEHOLDER.format(index[ref])

    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in "'\"":
            j = i + 1
            while j < n and text[j] != ch:
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
        elif text.startswith("{{", i):
            end = text.find("}}", i + 2)
            if end < 0:
                raise TemplateError(text, "'{{' without a closing '}}'", field="run_if")
            raw = text[i + 2 : end].strip()
            if not _looks_like_reference(raw):
                raise TemplateError(raw, f"not a reference; {_GRAMMAR}", field="run_if")
            out.append(f" {placeholder(_parse_reference(raw, known, 'run_if'))} ")
            i = end + 2
        elif ch in _WORD_CHARS and ch != "." and (i == 0 or text[i - 1] not in _WORD_CHARS):
            j = i
            while j < n and text[j] in _WORD_CHARS:
                j += 1
            word = text[i:j]
            if _PLACEHOLDER_RE.fullmatch(word):
                raise _reject(text, f"the name {word!r}")
            head = word.split(".", 1)[0]
            is_ref = (
                word in ITEM_ROOTS
                or head == "item"
                or ("." in word and (head in _ROOTS or _match_step(word.split("."), known) is not None))
            )
            out.append(placeholder(_parse_reference(word, known, "run_if")) if is_ref else word)
            i = j
        else:
            out.append(ch)
            i += 1
    return "".join(out), refs


def _check(node: ast.AST, text: str, n_refs: int) -> None:
    """Raise TemplateError unless every node of the tree is on the whitelist."""
    stack: list[tuple[ast.AST, int]] = [(node, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_CONDITION_DEPTH:
            raise TemplateError(text, f"nested deeper than {MAX_CONDITION_DEPTH} levels", field="run_if")
        children: list[ast.AST] = []
        if isinstance(item, ast.Expression):
            children.append(item.body)
        elif isinstance(item, ast.BoolOp):
            children.extend(item.values)
        elif isinstance(item, ast.UnaryOp):
            if isinstance(item.op, ast.Not):
                children.append(item.operand)
            elif (
                isinstance(item.op, ast.USub | ast.UAdd)
                and isinstance(item.operand, ast.Constant)
                and type(item.operand.value) in (int, float)
            ):
                pass
            else:
                raise _reject(text, "this unary operator")
        elif isinstance(item, ast.Compare):
            for op in item.ops:
                if not isinstance(op, _COMPARE_OPS):
                    raise _reject(text, f"the comparison operator {type(op).__name__}")
            children.append(item.left)
            children.extend(item.comparators)
        elif isinstance(item, ast.Constant):
            if item.value is not None and type(item.value) not in (str, int, float, bool):
                raise _reject(text, f"the literal {item.value!r}")
        elif isinstance(item, ast.Name):
            if item.id in _NAMED_CONSTANTS:
                continue
            placeholder = _PLACEHOLDER_RE.fullmatch(item.id)
            if placeholder is None or int(placeholder.group(1)) >= n_refs:
                raise _reject(text, f"the name {item.id!r}")
        elif isinstance(item, ast.List | ast.Tuple):
            children.extend(item.elts)
        elif isinstance(item, ast.Call):
            raise _reject(text, "a function call")
        elif isinstance(item, ast.Attribute):
            raise _reject(text, f"attribute access (.{item.attr})")
        elif isinstance(item, ast.Subscript):
            raise _reject(text, "subscripting with [...] (write steps.<step>.output.<key>.<index>)")
        else:
            raise _reject(text, f"{type(item).__name__} syntax")
        stack.extend((child, depth + 1) for child in children)


class Condition:
    """A parsed ``run_if`` condition; build one with :func:`parse_condition`.

    Attributes:
        text: the condition as written.
        references: the references it uses, each once, in order of appearance.
    """

    def __init__(self, text: str, references: list[Reference], tree: ast.Expression) -> None:
        self.text = text
        self.references = references
        self._tree = tree

    def __repr__(self) -> str:
        return f"Condition({self.text!r})"

    def evaluate(self, ctx: TemplateContext) -> bool:
        """True when the condition holds for ``ctx``.

        Raises:
            TemplateError: a reference cannot be resolved, or values cannot be compared
                (e.g. ``null > 3``); the message names the condition.
        """
        values: dict[int, Any] = {}

        def ref_value(i: int) -> Any:
            if i not in values:
                values[i] = lookup(self.references[i], ctx, field="run_if")
            return values[i]

        def ev(node: ast.AST) -> Any:
            if isinstance(node, ast.BoolOp):
                if isinstance(node.op, ast.And):
                    result: Any = True
                    for v in node.values:
                        result = ev(v)
                        if not result:
                            return result
                    return result
                result = False
                for v in node.values:
                    result = ev(v)
                    if result:
                        return result
                return result
            if isinstance(node, ast.UnaryOp):
                operand = ev(node.operand)
                if isinstance(node.op, ast.Not):
                    return not operand
                return -operand if isinstance(node.op, ast.USub) else operand
            if isinstance(node, ast.Compare):
                left = ev(node.left)
                for op, comparator in zip(node.ops, node.comparators, strict=True):
                    right = ev(comparator)
                    if not _compare(op, left, right, self.text):
                        return False
                    left = right
                return True
            if isinstance(node, ast.Constant):
                return node.value
            if isinstance(node, ast.Name):
                if node.id in _NAMED_CONSTANTS:
                    return _NAMED_CONSTANTS[node.id]
                return ref_value(int(node.id[5:-2]))
            if isinstance(node, ast.List | ast.Tuple):
                return [ev(e) for e in node.elts]
            raise _reject(self.text, f"{type(node).__name__} syntax")  # unreachable after _check

        return bool(ev(self._tree.body))


def _compare(op: ast.cmpop, left: Any, right: Any, text: str) -> bool:
    """``left op right`` as JSON means it (``_json_compare``: a boolean is not a number)."""
    try:
        if isinstance(op, ast.Eq | ast.NotEq):
            return json_equal(left, right) is isinstance(op, ast.Eq)
        if isinstance(op, ast.Lt | ast.GtE):
            return json_less(left, right) is isinstance(op, ast.Lt)
        if isinstance(op, ast.Gt | ast.LtE):
            return json_less(right, left) is isinstance(op, ast.Gt)
        return json_contains(right, left) is isinstance(op, ast.In)
    except TypeError:
        raise TemplateError(
            text,
            f"cannot compare {_describe(left)} {_OP_SYMBOLS[type(op)]} {_describe(right)}",
            field="run_if",
        ) from None


def parse_condition(text: str, known_steps: Collection[str] = ()) -> Condition:
    """Parse a ``run_if`` condition.

    Args:
        text: e.g. ``"steps.check.output.count > 3 and params.mode == 'full'"``.
        known_steps: the workflow's step names (for the short form and dotted step names).

    Raises:
        TemplateError: bad syntax or anything outside the grammar (calls, attributes, names, ...).
    """
    if not isinstance(text, str) or not text.strip():
        raise TemplateError(str(text), f"empty condition; {_GRAMMAR}", field="run_if")
    substituted, refs = _substitute(text, _as_set(known_steps))
    try:
        tree = ast.parse(substituted.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        detail = exc.msg if isinstance(exc, SyntaxError) else type(exc).__name__
        raise TemplateError(text, f"cannot parse ({detail}); {_GRAMMAR}", field="run_if") from None
    _check(tree, text, len(refs))
    return Condition(text, refs, tree)
