"""python.call imports a real module from disk and calls it with args, kwargs and the step context."""

from __future__ import annotations

import os
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from codomyrmex_orchestration.core.actions import ActionContext, create_registry
from codomyrmex_orchestration.errors import (
    ActionRefusedError,
    InvalidInputError,
    StepCancelledError,
    StepFailedError,
)

CALL = create_registry(load_plugins=False).get("python", "call").func
MODULE = "cdx_python_call_helpers"


@pytest.fixture
def helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / f"{MODULE}.py").write_text(
        textwrap.dedent(
            """
            def add(a, b=0, *, scale=1):
                return (a + b) * scale

            def who(*, ctx):
                return {"step": ctx.step_name, "run": ctx.run_id, "attempt": ctx.attempt}

            def waits(context, seconds, started=None):
                if started is not None:
                    started.set()
                return "cancelled" if context.wait(seconds) else "finished"

            def pair():
                return (1, 2)

            def unserialisable():
                return object()

            def boom():
                raise KeyError("missing thing")

            class Tools:
                @staticmethod
                def shout(text):
                    return text.upper()

                @classmethod
                def name(cls):
                    return cls.__name__

                def _hidden(self):
                    return "hidden"

            TOOLS = Tools()

            from subprocess import check_output
            from json import dumps as dump_json

            NOT_CALLABLE = 3
            """
        )
    )
    (tmp_path / "cdx_python_call_broken.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield MODULE
    for name in (MODULE, "cdx_python_call_broken"):
        sys.modules.pop(name, None)


def call(params: dict[str, Any], ctx: ActionContext | None = None) -> Any:
    return CALL(params, ctx or ActionContext("step"))


def test_args_and_kwargs_are_passed_and_the_return_value_is_the_output(helpers: str) -> None:
    assert call({"function": f"{helpers}:add", "args": [2], "kwargs": {"b": 3, "scale": 10}}) == 50


def test_a_standard_library_function_can_be_called() -> None:
    assert call({"function": "json:dumps", "args": [{"b": 1, "a": 2}], "kwargs": {"sort_keys": True}}) == (
        '{"a": 2, "b": 1}'
    )


def test_a_ctx_keyword_receives_the_action_context(helpers: str) -> None:
    ctx = ActionContext("fetch", run_id="run-1", attempt=2)
    assert call({"function": f"{helpers}:who"}, ctx) == {"step": "fetch", "run": "run-1", "attempt": 2}


def test_a_context_parameter_lets_the_callable_watch_cancellation(helpers: str) -> None:
    ctx = ActionContext("waiting")
    ctx.cancel_event.set()
    # Cancelled before the call: the callable is not even started.
    with pytest.raises(StepCancelledError):
        call({"function": f"{helpers}:waits", "args": [30]}, ctx)
    ctx2 = ActionContext("waiting")
    started = threading.Event()
    outcome: list[Any] = []
    worker = threading.Thread(
        target=lambda: outcome.append(
            call({"function": f"{helpers}:waits", "kwargs": {"seconds": 30, "started": started}}, ctx2)
        )
    )
    worker.start()
    assert started.wait(5)
    ctx2.cancel_event.set()
    worker.join(5)
    assert outcome == ["cancelled"]


def test_dotted_attributes_after_the_colon_are_followed(helpers: str) -> None:
    assert call({"function": f"{helpers}:Tools.shout", "args": ["hi"]}) == "HI"


def test_the_output_is_what_json_would_store(helpers: str) -> None:
    assert call({"function": f"{helpers}:pair"}) == [1, 2]


def test_a_non_serialisable_return_value_fails_the_step_saying_so(helpers: str) -> None:
    with pytest.raises(StepFailedError, match="not JSON-serialisable"):
        call({"function": f"{helpers}:unserialisable"})


def test_an_exception_in_the_callable_fails_the_step_with_its_type(helpers: str) -> None:
    with pytest.raises(StepFailedError) as info:
        call({"function": f"{helpers}:boom"})
    assert info.value.error_type == "KeyError"
    assert "missing thing" in str(info.value)


def test_an_import_error_names_the_module_and_the_reason(helpers: str) -> None:
    with pytest.raises(StepFailedError) as info:
        call({"function": "cdx_python_call_broken:anything"})
    assert "cdx_python_call_broken" in str(info.value)
    assert "no_such_dependency_xyz" in str(info.value)
    with pytest.raises(StepFailedError, match="no_such_module_at_all"):
        call({"function": "no_such_module_at_all:f"})


def test_a_missing_or_non_callable_attribute_fails_the_step(helpers: str) -> None:
    with pytest.raises(StepFailedError, match="'nope'"):
        call({"function": f"{helpers}:nope"})
    with pytest.raises(StepFailedError, match="not a callable"):
        call({"function": f"{helpers}:NOT_CALLABLE"})


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"function": "json.dumps"}, "parameters.function"),
        ({"function": "json:dumps", "args": "x"}, "parameters.args"),
        ({"function": "json:dumps", "kwargs": [1]}, "parameters.kwargs"),
        ({"function": "json:dumps", "kw": {}}, "parameters.kw"),
    ],
)
def test_malformed_parameters_name_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        call(params)
    assert info.value.field == field


def test_the_module_allow_list_refuses_everything_outside_its_prefixes() -> None:
    ctx = ActionContext("call", extras={"python_call_allow": ("json", "os.path")})
    assert CALL({"function": "json:dumps", "args": [[1]]}, ctx) == "[1]"
    assert CALL({"function": "os.path:basename", "args": ["/a/b"]}, ctx) == "b"
    for refused in ("builtins:eval", "jsonx:loads", "os:system", "subprocess:run"):
        with pytest.raises(ActionRefusedError, match="allow-list"):
            CALL({"function": refused, "args": ["1"]}, ctx)


def test_the_allow_list_cannot_be_left_through_modules_the_allowed_one_imports(tmp_path: Path) -> None:
    ctx = ActionContext("call", extras={"python_call_allow": ("json",)})
    marker = tmp_path / "ran"
    escapes = [
        ("json:codecs.builtins.exec", [f"with open({str(marker)!r}, 'w') as f: f.write('x')"]),
        ("json:codecs.builtins.eval", ["__import__('os').getuid()"]),
        ("json:decoder.re.enum.sys.modules.get", ["os"]),
        ("json.decoder:re.functools.reduce", []),
        ("json:codecs.lookup", ["utf-8"]),
    ]
    for function, args in escapes:
        with pytest.raises(ActionRefusedError) as info:
            CALL({"function": function, "args": args}, ctx)
        message = str(info.value)
        assert "parameters.function" in message and "CODOMYRMEX_PYTHON_CALL_ALLOW" in message, message
        assert "module" in message and "json" in message, message
    assert not marker.exists()


def test_under_the_allow_list_only_public_callables_its_modules_define_can_be_called(
    helpers: str,
) -> None:
    ctx = ActionContext("call", extras={"python_call_allow": (helpers,)})
    for function, reason in (
        (f"{helpers}:check_output", "'subprocess'"),  # imported into the allowed module: not its own
        (f"{helpers}:dump_json", "'json'"),
        (f"{helpers}:Tools._hidden", "'_'"),
        (f"{helpers}:Tools.shout.__globals__.get", "'_'"),
        (f"{helpers}:__builtins__.get", "'_'"),
    ):
        with pytest.raises(ActionRefusedError) as info:
            CALL({"function": function, "args": [["true"]]}, ctx)
        assert "parameters.function" in str(info.value) and reason in str(info.value), str(info.value)
    # What the allowed module defines itself stays callable, through classes and instances too.
    assert CALL({"function": f"{helpers}:add", "args": [1, 2]}, ctx) == 3
    assert CALL({"function": f"{helpers}:Tools.shout", "args": ["hi"]}, ctx) == "HI"
    assert CALL({"function": f"{helpers}:Tools.name"}, ctx) == "Tools"
    assert CALL({"function": f"{helpers}:TOOLS.shout", "args": ["x"]}, ctx) == "X"
    # A submodule of an allowed module, and os.path (posixpath or ntpath: what the prefix imports).
    ctx = ActionContext("call", extras={"python_call_allow": ("json", "os.path")})
    assert CALL({"function": "json:decoder.py_scanstring", "args": ['"ab"', 1]}, ctx) == ["ab", 4]
    assert CALL({"function": "os.path:join", "args": ["a", "b"]}, ctx) == os.path.join("a", "b")
    with pytest.raises(ActionRefusedError, match="'os'"):
        CALL({"function": "os:path.join", "args": ["a", "b"]}, ctx)
