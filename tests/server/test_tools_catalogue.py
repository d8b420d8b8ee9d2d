"""The tool catalogue and argument validation, which work without an engine."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError

from codomyrmex_orchestration.server._models import TaskResult
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools, ServerPolicy, _flatten_schema

TEN = {
    "execute_workflow",
    "create_workflow",
    "list_workflows",
    "create_project",
    "list_projects",
    "execute_task",
    "get_system_status",
    "get_health_status",
    "allocate_resources",
    "create_complex_workflow",
}
EXTRA = {
    "get_task",
    "get_workflow_run",
    "list_workflow_runs",
    "cancel_workflow_run",
    "resume_workflow_run",
    "respond_to_run",
    "get_workflow",
    "validate_workflow",
    "delete_workflow",
    "release_resources",
    "create_session",
    "close_session",
    "list_actions",
    "list_project_templates",
}
READ_ONLY = {
    "list_workflows",
    "list_projects",
    "get_system_status",
    "get_health_status",
    "get_task",
    "get_workflow_run",
    "list_workflow_runs",
    "get_workflow",
    "validate_workflow",
    "list_actions",
    "list_project_templates",
}


def test_the_catalogue_has_the_ten_tools_and_the_long_work_tools(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    names = [d["name"] for d in tools_without_engine.get_tool_definitions()]
    assert len(names) == len(set(names))
    assert set(names) == TEN | EXTRA


def test_every_definition_is_complete_and_written_for_a_model(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    for d in tools_without_engine.get_tool_definitions():
        assert set(d) == {"name", "title", "description", "inputSchema", "outputSchema", "annotations"}, d[
            "name"
        ]
        assert "Example:" in d["description"], d["name"]
        assert d["inputSchema"]["type"] == "object"
        assert d["inputSchema"]["additionalProperties"] is False, d["name"]
        assert d["outputSchema"]["type"] == "object"
        assert d["annotations"]["readOnlyHint"] is (d["name"] in READ_ONLY), d["name"]


def test_required_arguments_match_the_issue(tools_without_engine: OrchestrationMCPTools) -> None:
    schemas = {d["name"]: d["inputSchema"] for d in tools_without_engine.get_tool_definitions()}
    assert schemas["execute_workflow"]["required"] == ["workflow_name"]
    assert set(schemas["execute_workflow"]["properties"]) == {
        "workflow_name",
        "parameters",
        "session_id",
        "wait",
        "timeout_seconds",
        "use_cache",
    }
    assert sorted(schemas["create_workflow"]["required"]) == ["name", "steps"]
    assert sorted(schemas["allocate_resources"]["required"]) == ["requirements", "user_id"]
    ttl = next(t for t in schemas["allocate_resources"]["properties"]["ttl_seconds"]["anyOf"] if "type" in t)
    assert ttl["exclusiveMinimum"] == 0 and ttl["maximum"] == 31_536_000  # what the engine enforces, said
    assert sorted(schemas["create_complex_workflow"]["required"]) == ["name", "workflow_definition"]
    assert sorted(schemas["execute_task"]["required"]) == ["action", "module", "name"]
    assert "required" not in schemas["list_workflows"]
    assert schemas["execute_task"]["properties"]["priority"]["enum"] == [
        "critical",
        "high",
        "normal",
        "low",
        "background",
    ]


def test_an_unknown_argument_is_named_with_the_accepted_ones(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    result = tools_without_engine.execute_tool("execute_workflow", {"workflow_name": "w", "colour": "red"})
    assert result.is_error
    assert "unknown field 'colour'" in result.text
    assert "workflow_name, parameters, session_id, wait, timeout_seconds" in result.text


def test_a_missing_or_mistyped_argument_is_named(tools_without_engine: OrchestrationMCPTools) -> None:
    missing = tools_without_engine.execute_tool("create_workflow", {"name": "w"})
    assert missing.is_error and "missing required field 'steps'" in missing.text
    mistyped = tools_without_engine.execute_tool("execute_workflow", {"workflow_name": "w", "wait": "yes"})
    assert mistyped.is_error and "wait: " in mistyped.text and "expected true or false" in mistyped.text
    nested = tools_without_engine.execute_tool(
        "create_workflow", {"name": "w", "steps": [{"name": "a", "module": "core"}]}
    )
    assert nested.is_error and "'steps.0.action'" in nested.text


def test_an_unknown_tool_is_an_error_listing_the_tools(tools_without_engine: OrchestrationMCPTools) -> None:
    result = tools_without_engine.execute_tool("launch_rockets", {})
    assert result.is_error
    assert "unknown tool 'launch_rockets'" in result.text and "execute_workflow" in result.text


def test_an_unexpected_failure_is_reported_with_a_reference_and_no_details(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    result = tools_without_engine.execute_tool("list_workflows", {})
    assert result.is_error
    assert result.text.startswith("internal error (ref ")
    assert "/secret/path" not in result.text and "Traceback" not in result.text


def test_the_transport_decides_the_default_code_execution_policy() -> None:
    stdio = ServerPolicy.for_transport("stdio", None)
    assert stdio.allow_code_execution and not stdio.block_private_addresses
    http = ServerPolicy.for_transport("streamable-http", None)
    assert not http.allow_code_execution and http.action_extras == {"block_private_addresses": True}
    allowed = ServerPolicy.for_transport("sse", True)
    assert allowed.allow_code_execution and not allowed.block_private_addresses
    refused = ServerPolicy.for_transport("stdio", False)
    assert not refused.allow_code_execution


def test_the_tools_refuse_to_exist_without_the_mcp_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mcp", None)  # makes `import mcp` raise ImportError
    with pytest.raises(RuntimeError, match="'mcp' package is required"):
        OrchestrationMCPTools()


def test_output_schemas_are_flat_and_still_reject_what_the_models_reject(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    # Clients validate every structured result against these; references are where that time goes.
    definitions = {d["name"]: d for d in tools_without_engine.get_tool_definitions()}
    for name, d in definitions.items():
        text = json.dumps(d["outputSchema"])
        assert "$ref" not in text and "$defs" not in text, name
    task = Draft202012Validator(definitions["execute_task"]["outputSchema"])
    good = {"task_id": "t-1", "name": "e", "status": "completed", "result": [1], "attempts": 1}
    assert not list(task.iter_errors(good))
    assert not list(task.iter_errors({**good, "error": None, "note": None, "duration_seconds": None}))
    assert not list(task.iter_errors({**good, "error": {"message": "boom", "type": "ValueError"}}))
    for bad in (
        {**good, "error": "boom"},
        {**good, "error": {"message": "boom"}},  # the nested required field survived inlining
        {**good, "error": {"message": 1, "type": "X"}},
        {**good, "duration_seconds": "fast"},
        {**good, "note": 3},
        {**good, "surprise": 1},
    ):
        assert list(task.iter_errors(bad)), bad
        with pytest.raises(ValidationError):
            TaskResult.model_validate(bad)


def test_a_recursive_definition_stays_a_reference() -> None:
    class Node(BaseModel):
        label: str | None = None
        children: list[Node] = []

    flat = _flatten_schema(Node.model_json_schema(mode="serialization"))
    validator = Draft202012Validator(flat)
    assert not list(validator.iter_errors({"label": None, "children": [{"children": [{"label": "x"}]}]}))
    assert list(validator.iter_errors({"children": [{"children": [{"label": 3}]}]}))
    assert flat["properties"]["label"]["anyOf"] == [{"type": "string"}, {"type": "null"}]


_CONSTRAINTS = {"type", "anyOf", "oneOf", "allOf", "enum", "const", "$ref", "properties", "items", "not"}


def _portability_problems(node: Any, path: str) -> list[str]:
    """What a schema-portability check (the Inspector's) warns about: a list of types, and a schema for a
    value (property, item, additional property, branch) that accepts anything."""
    if not isinstance(node, dict):
        return []
    problems = [f"{path}: type list {node['type']}"] if isinstance(node.get("type"), list) else []
    if _CONSTRAINTS.isdisjoint(node):
        problems.append(f"{path}: accepts anything")
    for key, value in node.items():
        if key in ("properties", "patternProperties", "$defs"):
            for name, sub in value.items():
                problems += _portability_problems(sub, f"{path}/{key}/{name}")
        elif key in ("items", "additionalProperties", "not"):
            problems += _portability_problems(value, f"{path}/{key}")
        elif key in ("anyOf", "oneOf", "allOf"):
            for i, sub in enumerate(value):
                problems += _portability_problems(sub, f"{path}/{key}/{i}")
    return problems


def test_every_schema_is_portable_no_type_lists_and_nothing_that_accepts_anything(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    problems = [
        problem
        for d in tools_without_engine.get_tool_definitions()
        for kind in ("inputSchema", "outputSchema")
        for problem in _portability_problems(d[kind], f"{d['name']}.{kind}")
    ]
    assert problems == []
    # An arbitrary value (a task's result) is any JSON value, said explicitly, and still validates.
    task = Draft202012Validator(
        {d["name"]: d for d in tools_without_engine.get_tool_definitions()}["execute_task"]["outputSchema"]
    )
    base = {"task_id": "t-1", "name": "e", "status": "completed"}
    for value in ({"a": [1]}, [1, "x"], "text", 2.5, 3, True, None):
        assert not list(task.iter_errors({**base, "result": value})), value
