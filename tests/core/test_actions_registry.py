"""create_registry(): every built-in is registered and documented, code execution can be refused, and
entry-point plugins from a real (tmp_path) distribution load while broken ones are skipped."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from codomyrmex_orchestration.core.actions import (
    ENTRY_POINT_GROUP,
    ActionContext,
    ActionDefinition,
    create_registry,
    load_plugins,
)
from codomyrmex_orchestration.errors import (
    ActionRefusedError,
    AlreadyExistsError,
    InvalidInputError,
    UnknownActionError,
)

BUILT_INS = [
    "core.approve",
    "core.echo",
    "core.fail",
    "core.set",
    "core.sleep",
    "http.request",
    "python.call",
    "shell.run",
    "workflow.run",
]


def test_every_built_in_action_is_registered_and_documented() -> None:
    registry = create_registry(load_plugins=False)
    assert registry.known() == BUILT_INS
    for entry in registry.catalogue():
        assert entry["description"], entry["name"]
        assert entry["parameters"], entry["name"]
        assert entry["output"], entry["name"]


def test_code_executing_actions_are_refused_when_code_execution_is_off() -> None:
    registry = create_registry(allow_code_execution=False, load_plugins=False)
    for module, action in (("shell", "run"), ("python", "call")):
        with pytest.raises(ActionRefusedError, match="code execution is disabled"):
            registry.get(module, action)
    for name in ("core.echo", "http.request", "workflow.run"):
        module, _, action = name.partition(".")
        assert registry.get(module, action).qualified_name == name


def test_an_unknown_action_lists_the_known_ones() -> None:
    with pytest.raises(UnknownActionError) as info:
        create_registry(load_plugins=False).get("shell", "exec")
    assert info.value.known == BUILT_INS


# ----------------------------------------------------------------------------- plugins

PLUGIN_MODULE = textwrap.dedent(
    """
    from codomyrmex_orchestration.core.actions import ActionDefinition

    def _double(params, ctx):
        return params["n"] * 2

    def register(registry):
        registry.register(ActionDefinition("math", "double", _double, description="n * 2",
                                           parameters={"n": "number"}, output="number"))

    SINGLE = ActionDefinition("text", "upper", lambda p, c: p["s"].upper(), description="upper",
                              parameters={"s": "string"}, output="string")
    MANY = [
        ActionDefinition("many", "one", lambda p, c: 1, description="1", parameters={}, output="1"),
        ActionDefinition("many", "two", lambda p, c: 2, description="2", parameters={}, output="2"),
    ]

    def explode(registry):
        registry.register(ActionDefinition("half", "applied", _double))
        raise RuntimeError("plugin bug")

    def clash(registry):
        registry.register(ActionDefinition("core", "echo", _double))

    NUMBER = 42
    """
)

ENTRY_POINTS = f"""
[{ENTRY_POINT_GROUP}]
callable = cdx_plugin_good:register
definition = cdx_plugin_good:SINGLE
many = cdx_plugin_good:MANY
missing_module = cdx_plugin_missing:register
raises = cdx_plugin_good:explode
clash = cdx_plugin_good:clash
wrong_type = cdx_plugin_good:NUMBER
"""


@pytest.fixture
def plugin_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    site = tmp_path / "site"
    dist_info = site / "cdx_test_plugins-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: cdx-test-plugins\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(ENTRY_POINTS)
    (site / "cdx_plugin_good.py").write_text(PLUGIN_MODULE)
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("cdx_plugin_good", None)


def test_plugins_of_every_accepted_shape_are_loaded(plugin_distribution: Path) -> None:
    registry = create_registry(load_plugins=True)
    assert {"math.double", "text.upper", "many.one", "many.two"} <= set(registry.known())
    assert registry.get("math", "double").func({"n": 21}, ActionContext("s")) == 42
    assert registry.get("text", "upper").func({"s": "ab"}, ActionContext("s")) == "AB"


def test_broken_plugins_are_logged_by_name_and_skipped_whole(plugin_distribution: Path) -> None:
    registry = create_registry(load_plugins=False)
    with capture_logs() as logs:
        loaded = load_plugins(registry)
    assert sorted(loaded) == ["callable", "definition", "many"]
    skipped = {entry["plugin"]: entry["error"] for entry in logs if entry["event"] == "action plugin skipped"}
    assert set(skipped) == {"missing_module", "raises", "clash", "wrong_type"}
    assert "cdx_plugin_missing" in skipped["missing_module"]
    assert "plugin bug" in skipped["raises"]
    assert "already registered: core.echo" in skipped["clash"]
    assert "int" in skipped["wrong_type"]
    # A plugin that raised half-way registered nothing.
    assert "half.applied" not in registry


def test_a_plugin_cannot_replace_a_built_in(plugin_distribution: Path) -> None:
    registry = create_registry(load_plugins=True)
    assert registry.get("core", "echo").func({"message": "hi"}, ActionContext("s")) == "hi"


def test_without_load_plugins_no_plugin_is_loaded(plugin_distribution: Path) -> None:
    assert create_registry(load_plugins=False).known() == BUILT_INS


def _triple(params: dict[str, Any], ctx: ActionContext) -> int:
    return int(params["n"]) * 3


def _halve(params: dict[str, Any], ctx: ActionContext) -> float:
    return float(params["n"]) / 2


def test_registering_a_taken_name_says_how_to_replace_it() -> None:
    registry = create_registry(load_plugins=False)
    registry.register(ActionDefinition("mine", "triple", _triple))
    with pytest.raises(AlreadyExistsError, match=r"action 'mine.triple' already exists; .*replace=True"):
        registry.register(ActionDefinition("mine", "triple", _halve))
    registry.register(ActionDefinition("mine", "triple", _halve), replace=True)
    assert registry.get("mine", "triple").func is _halve


def test_an_action_that_cannot_be_called_or_named_is_refused_when_registered() -> None:
    registry = create_registry(load_plugins=False)
    with pytest.raises(
        InvalidInputError, match=r"^mine\.bad\.func: must be a callable func\(parameters, ctx\)"
    ):
        registry.register(ActionDefinition("mine", "bad", 42))  # type: ignore[arg-type]  # the mistake tested
    with pytest.raises(
        InvalidInputError, match=r"^action: .*a step names it as module \+ action, so no '\.'"
    ):
        registry.register(ActionDefinition("mine", "v1.run", _triple))
    with pytest.raises(InvalidInputError, match=r"^module: must be a non-empty string"):
        registry.register(ActionDefinition("", "run", _triple))
    assert not any(name.startswith("mine.") for name in registry.known())


def test_the_decorator_takes_every_field_a_definition_has() -> None:
    registry = create_registry(load_plugins=False)

    def check(params: Mapping[str, Any]) -> list[str]:
        return [] if "n" in params else ["parameters.n is required"]

    registry.action("mine", "triple", parameters={"n": "a number"}, check=check, instant=True)(_triple)
    definition = registry.get("mine", "triple")
    assert definition.instant and definition.check is check and definition.probe is None
