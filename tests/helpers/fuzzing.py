"""Hypothesis strategies for fuzzing the MCP tools: arguments generated from each tool's ``inputSchema``
(a small JSON-schema -> strategy translation) and then mutated the ways a confused model or a hostile
client would (wrong types, missing and extra fields, huge strings, deep nesting, unicode, nulls,
negative/NaN numbers, step lists with cycles, duplicates and unknown references)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

# A small pool of names, so generated calls refer to each other (create then execute/delete the same
# workflow, duplicate step names, dependencies that exist, cycles) instead of always missing.
NAMES = ("a", "b", "c", "wf", "wf.2", "x-y", "_")
STEP_NAMES = ("a", "b", "c", "d")
# Actions a generated step may name. No network action: the fuzzer must never send traffic anywhere.
# shell.run / python.call are only generated where the policy refuses them (network transport defaults).
ACTIONS = (
    ("core", "echo"),
    ("core", "set"),
    ("core", "fail"),
    ("core", "sleep"),
    ("workflow", "run"),
    ("shell", "run"),
    ("python", "call"),
    ("nope", "missing"),
)

HUGE = (
    "x" * 1_000_000,
    "é" * 200_000,
    "\U0001f41c" * 50_000,
    "{{steps.a.output}}" * 20_000,
    "{{params.p}}" * 20_000,
)
ODD_STRINGS = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "..",
    "../x",
    "/abs",
    "a/b",
    "C:\\x",
    "\u202e\u0645\u0631\u062d\u0628\u0627",
    "ﬁ",
    "\U0001f41c",
    "{{",
    "}}",
    "{{steps.",
    "{{steps.a.output.0.1.2}}",
    "{{params.}}",
    "$(id)",
    "'; DROP TABLE runs; --",
    "null",
    "NaN",
)
ODD_NUMBERS = (
    -1,
    0,
    -0.0,
    1e-320,
    2**63,
    2**64 + 1,
    -(2**63) - 1,
    10**40,
    math.nan,
    math.inf,
    -math.inf,
    1e308,
    -1e308,
)


def nested(depth: int, leaf: Any = 1) -> Any:
    """``depth`` levels of alternating lists and objects around ``leaf``."""
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def json_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
        st.sampled_from(ODD_STRINGS),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[1]]
    return schema


class SchemaStrategies:
    """Valid-by-schema argument strategies, steered by field name towards interesting values.

    ``known_ids`` is filled by the caller with ids the server returned (run, session, allocation, task
    ids), so later calls can refer to real objects.
    """

    def __init__(self, known_ids: dict[str, list[str]], *, code_actions: bool = True) -> None:
        self.known_ids = known_ids
        # Where code execution is allowed, generated steps must not run generated commands.
        self.actions = (
            ACTIONS if code_actions else tuple(a for a in ACTIONS if a[0] not in ("shell", "python"))
        )

    def _ids(self, kind: str) -> st.SearchStrategy[str]:
        return st.one_of(
            st.builds(
                lambda i: (
                    self.known_ids[kind][i % len(self.known_ids[kind])]
                    if self.known_ids[kind]
                    else "none-yet"
                ),
                st.integers(0, 10_000),
            ),
            st.text(min_size=1, max_size=12),
        )

    def steps(self) -> st.SearchStrategy[list[dict[str, Any]]]:
        """Step lists: duplicates, self/cyclic/unknown dependencies and references are all likely."""
        dep = st.one_of(st.sampled_from(STEP_NAMES), st.sampled_from(("zz", "", "a.b")))

        def step(
            pair: tuple[str, str],
            name: str,
            deps: list[str],
            params: dict[str, Any],
            ref: str | None,
            extra: dict[str, Any],
        ) -> dict[str, Any]:
            module, action = pair
            if (module, action) == ("core", "sleep"):
                params = {"seconds": params.get("seconds", 0.01)}
            elif (module, action) == ("core", "echo") and "message" not in params:
                params = {**params, "message": ref if ref is not None else "hi"}
            elif (module, action) == ("workflow", "run"):
                params = {"workflow": name if ref is None else "wf", **params}
            elif ref is not None:
                params = {**params, "v": ref}
            return {
                "name": name,
                "module": module,
                "action": action,
                "parameters": params,
                "dependencies": deps,
                **extra,
            }

        refs = st.one_of(
            st.none(),
            st.sampled_from((*STEP_NAMES, "zz")).map(lambda s: f"{{{{steps.{s}.output}}}}"),
            st.sampled_from(
                (
                    "{{params.p}}",
                    "{{params.missing}}",
                    "{{steps.a.status}}",
                    "x {{steps.b.output.k.0}} y",
                    "{{steps.a.output}}" * 50,
                )
            ),
        )
        extras = st.fixed_dictionaries(
            {},
            optional={
                "timeout": st.floats(0.01, 2),
                "max_retries": st.integers(0, 2),
                "retry_delay": st.floats(0, 0.01),
                "required": st.booleans(),
                "run_if": st.sampled_from(
                    (
                        "steps.a.output == 1",
                        "params.p > 0",
                        "import os",
                        "(((",
                        "steps.zz.status == 'completed'",
                    )
                ),
                "priority": st.integers(0, 4),
                "resources": st.dictionaries(
                    st.sampled_from(("compute", "memory", "gpu", "zz")),
                    st.one_of(st.integers(0, 4), st.sampled_from(("1MB", "x"))),
                    max_size=2,
                ),
            },
        )
        one = st.builds(
            step,
            st.sampled_from(self.actions),
            st.sampled_from(STEP_NAMES),
            st.lists(dep, max_size=3),
            st.dictionaries(
                st.sampled_from(("message", "seconds", "k", "workflow")),
                st.one_of(st.floats(0, 0.05), json_values(4)),
                max_size=2,
            ),
            refs,
            extras,
        )
        return st.lists(one, min_size=1, max_size=6)

    def for_field(
        self, name: str, schema: dict[str, Any], defs: dict[str, Any]
    ) -> st.SearchStrategy[Any] | None:
        """A steered strategy for well-known fields, or ``None`` to use the schema."""
        if name == "timeout_seconds":
            return st.floats(0.01, 0.3)
        if name in ("name", "workflow_name") and schema.get("pattern"):
            return st.one_of(
                st.sampled_from(NAMES), st.from_regex(re.compile(r"[A-Za-z0-9_.\-]{1,12}"), fullmatch=True)
            )
        if name == "name" and not schema.get("pattern"):
            return st.one_of(
                st.sampled_from((*NAMES, "../x", "/abs", "a/b", ".hidden", "a..b", "\x00")),
                st.text(min_size=1, max_size=20),
            )
        if name == "steps":
            return self.steps()
        if name == "run_id":
            return self._ids("run")
        if name == "session_id":
            return st.one_of(st.none(), self._ids("session")) if "anyOf" in schema else self._ids("session")
        if name == "allocation_id":
            return st.one_of(st.none(), self._ids("allocation"))
        if name == "requirements":
            return st.dictionaries(
                st.sampled_from(("compute", "cpu", "memory", "storage", "gpu", "zz")),
                st.one_of(st.integers(0, 8), st.floats(0, 4), st.sampled_from(("256MB", "1GB", "x", "-1"))),
                min_size=1,
                max_size=3,
            )
        if name == "ttl_seconds":
            return st.one_of(st.none(), st.floats(0.05, 60))
        if name == "dependencies" and schema.get("type") == "object":
            return st.dictionaries(
                st.sampled_from(STEP_NAMES),
                st.lists(st.sampled_from((*STEP_NAMES, "zz")), max_size=3),
                max_size=4,
            )
        if name == "parameters":
            return st.dictionaries(st.sampled_from(("p", "who", "q")), json_values(4), max_size=3)
        return None

    def from_schema(
        self, schema: dict[str, Any], defs: dict[str, Any], field: str = ""
    ) -> st.SearchStrategy[Any]:
        steered = self.for_field(field, schema, defs)
        if steered is not None:
            return steered
        schema = _resolve(schema, defs)
        if "anyOf" in schema:
            return st.one_of(*(self.from_schema(s, defs) for s in schema["anyOf"]))
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        kind = schema.get("type")
        if kind == "string":
            return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 30), 30))
        if kind == "integer":
            return st.integers(schema.get("minimum", -(2**31)), schema.get("maximum", 2**31))
        if kind == "number":
            low = schema.get("minimum", schema.get("exclusiveMinimum", -1e6))
            return st.floats(low, schema.get("maximum", 1e6), exclude_min="exclusiveMinimum" in schema)
        if kind == "boolean":
            return st.booleans()
        if kind == "null":
            return st.none()
        if kind == "array":
            items = self.from_schema(schema.get("items", {}), defs)
            return st.lists(items, min_size=schema.get("minItems", 0), max_size=4)
        if kind == "object" or "properties" in schema:
            props: dict[str, Any] = schema.get("properties", {})
            if props:
                required = set(schema.get("required", ()))
                return st.fixed_dictionaries(
                    {k: self.from_schema(v, defs, k) for k, v in props.items() if k in required},
                    optional={k: self.from_schema(v, defs, k) for k, v in props.items() if k not in required},
                )
            extra = schema.get("additionalProperties", True)
            if extra is False:
                return st.just({})
            values = json_values(4) if extra is True else self.from_schema(extra, defs)
            return st.dictionaries(
                st.text(max_size=10), values, min_size=schema.get("minProperties", 0), max_size=3
            )
        return json_values(4)


def wrong_values() -> st.SearchStrategy[Any]:
    """Values of any type, biased to the odd ones."""
    return st.one_of(
        st.sampled_from(ODD_NUMBERS),
        st.sampled_from(ODD_STRINGS),
        st.sampled_from(HUGE),
        st.integers(1, 200).map(nested),
        st.sampled_from((None, True, False, [], {}, [None], {"": None})),
        json_values(8),
    )


Mutation = Callable[[dict[str, Any]], dict[str, Any]]


@st.composite
def mutated(draw: st.DrawFn, valid: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``valid`` with 0-3 defects: a field dropped, an unknown one added, a value replaced by an odd one
    (at the top level or inside a step), or the steps list reshaped (cycle, duplicate, huge)."""
    args = dict(valid)
    props = list(schema.get("properties", {}))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(("drop", "extra", "replace", "replace", "step", "steps")))
        if kind == "drop" and args:
            args.pop(draw(st.sampled_from(sorted(args))))
        elif kind == "extra":
            args[
                draw(
                    st.one_of(
                        st.sampled_from(("__proto__", "", "x" * 300, "workflowName")), st.text(max_size=10)
                    )
                )
            ] = draw(wrong_values())
        elif kind == "replace" and props:
            args[draw(st.sampled_from(props))] = draw(wrong_values())
        elif kind == "step" and isinstance(args.get("steps"), list) and args["steps"]:
            steps = [dict(s) if isinstance(s, dict) else s for s in args["steps"]]
            i = draw(st.integers(0, len(steps) - 1))
            if isinstance(steps[i], dict):
                key = draw(
                    st.sampled_from(
                        (
                            "name",
                            "module",
                            "action",
                            "parameters",
                            "dependencies",
                            "timeout",
                            "max_retries",
                            "run_if",
                            "priority",
                            "resources",
                            "bogus",
                        )
                    )
                )
                steps[i][key] = draw(wrong_values())
            args["steps"] = steps
        elif kind == "steps":
            args["steps"] = draw(
                st.sampled_from(
                    (
                        [
                            {
                                "name": "a",
                                "module": "core",
                                "action": "echo",
                                "parameters": {"message": 1},
                                "dependencies": ["b"],
                            },
                            {
                                "name": "b",
                                "module": "core",
                                "action": "echo",
                                "parameters": {"message": 1},
                                "dependencies": ["a"],
                            },
                        ],
                        [
                            {
                                "name": "a",
                                "module": "core",
                                "action": "echo",
                                "parameters": {"message": 1},
                                "dependencies": ["a"],
                            }
                        ],
                        [{"name": "a", "module": "core", "action": "echo", "parameters": {"message": 1}}] * 3,
                        [
                            {
                                "name": "a",
                                "module": "core",
                                "action": "echo",
                                "parameters": {"message": "{{steps.a.output}}"},
                            }
                        ],
                        [
                            {
                                "name": f"s{i}",
                                "module": "core",
                                "action": "echo",
                                "parameters": {"message": i},
                                "dependencies": [f"s{i - 1}"] if i else [],
                            }
                            for i in range(2000)
                        ],
                        [
                            {
                                "name": f"s{i}",
                                "module": "core",
                                "action": "echo",
                                "parameters": {"message": 1},
                            }
                            for i in range(10_001)
                        ],
                        [],
                        [None, 1, "a"],
                    )
                )
            )
    return args
