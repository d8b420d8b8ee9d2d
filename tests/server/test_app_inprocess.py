"""The MCP server through the real MCP Client, in process; paths that never reach the engine."""

from __future__ import annotations

import json
import random
import re
from typing import Any, Literal

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, PaginatedRequestParams

from codomyrmex_orchestration.server._models import CreateWorkflowArgs
from codomyrmex_orchestration.server.app import build_server
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools

pytestmark = pytest.mark.anyio


def _text(result: Any) -> str:
    return str(result.content[0].text)


async def test_every_tool_definition_is_served_with_its_schemas(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    definitions = {d["name"]: d for d in tools_without_engine.get_tool_definitions()}
    async with Client(build_server(tools_without_engine)) as client:
        listed = (await client.list_tools()).tools
    assert {t.name for t in listed} == set(definitions)
    for tool in listed:
        d = definitions[tool.name]
        assert tool.input_schema == d["inputSchema"]
        assert tool.output_schema == d["outputSchema"]
        assert tool.title == d["title"]
        assert tool.annotations is not None
        assert tool.annotations.read_only_hint == d["annotations"]["readOnlyHint"]


async def test_invalid_arguments_are_an_error_result_naming_the_field(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    async with Client(build_server(tools_without_engine)) as client:
        result = await client.call_tool("execute_task", {"name": "t", "module": "core", "action": 3})
    assert result.is_error
    assert "action: Input should be a valid string" in _text(result)


async def test_an_unknown_tool_is_a_json_rpc_invalid_params_error_naming_the_tools(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    async with Client(build_server(tools_without_engine)) as client:
        with pytest.raises(MCPError) as caught:
            await client.call_tool("no_such_tool", {})
        # The server keeps serving, and a known tool's bad arguments stay an isError result.
        bad = await client.call_tool("execute_task", {"name": "t"})
        with pytest.raises(MCPError) as misspelt:
            await client.call_tool("list_workflow", {})
    assert "did you mean 'list_workflows'?" in misspelt.value.error.message
    assert caught.value.error.code == -32602
    assert "unknown tool 'no_such_tool'" in caught.value.error.message
    assert "execute_workflow" in caught.value.error.message
    assert bad.is_error and "missing required field" in _text(bad)


async def test_an_internal_error_has_a_reference_and_the_server_keeps_serving(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    async with Client(build_server(tools_without_engine)) as client:
        first = await client.call_tool("get_health_status", {})
        second = await client.call_tool("list_workflows", {})
        tools = await client.list_tools()
    refs = [re.fullmatch(r"internal error \(ref ([0-9a-f]{12})\).*", _text(r)) for r in (first, second)]  # type: ignore[union-attr]
    assert all(refs)
    assert refs[0] and refs[1] and refs[0].group(1) != refs[1].group(1)
    assert len(tools.tools) == 24


async def test_a_handler_failing_unexpectedly_is_an_internal_error_with_a_reference_not_its_text(
    tools_without_engine: OrchestrationMCPTools, capsys: pytest.CaptureFixture[str]
) -> None:
    # The SDK answered any exception outside a tool (as anyio < 4.11 raised for every call with a progress
    # token) with code 0 and the exception's own text.
    server = build_server(tools_without_engine)

    async def broken(ctx: Any, params: Any) -> Any:
        raise AttributeError("'Loop' at /secret/path has no attribute 'native_token'")

    server.add_request_handler("prompts/list", PaginatedRequestParams, broken)
    async with Client(server) as client:
        with pytest.raises(MCPError) as caught:
            await client.list_prompts()
        tools = await client.list_tools()  # the server keeps serving
    error = caught.value.error
    ref = re.fullmatch(r"internal error \(ref ([0-9a-f]{12})\); the server logged the details", error.message)
    assert error.code == INTERNAL_ERROR and ref is not None, error
    assert "/secret/path" not in str(error) and len(tools.tools) == 24
    logged = capsys.readouterr().err
    assert ref.group(1) in logged and "/secret/path has no attribute" in logged


async def test_the_prompt_teaches_the_step_format_with_a_valid_example(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    async with Client(build_server(tools_without_engine)) as client:
        prompts = (await client.list_prompts()).prompts
        assert [p.name for p in prompts] == ["workflow_step_format"]
        prompt = await client.get_prompt("workflow_step_format", {"goal": "check a repo"})
        with pytest.raises(MCPError):
            await client.get_prompt("nope")
    text = prompt.messages[0].content.text
    assert "{{steps.STEP.output}}" in text and "run_if" in text and "check a repo" in text
    example = json.loads(text[text.index("{\n") : text.index("\n}\n") + 2])
    CreateWorkflowArgs.model_validate(example)  # the example is a valid create_workflow call


#: How a text names a prompt: "the step_format prompt", "the prompt 'workflow_step_format'".
_PROMPT_MENTIONS = (re.compile(r"\b(\w+) prompt\b"), re.compile(r"""\bprompt ['"`](\w+)['"`]"""))


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _texts(item)]
    if isinstance(value, list):
        return [text for item in value for text in _texts(item)]
    return []


async def test_every_prompt_a_tool_description_or_schema_names_is_a_prompt_the_server_serves(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    async with Client(build_server(tools_without_engine)) as client:
        served = {p.name for p in (await client.list_prompts()).prompts}
        tools = (await client.list_tools()).tools
        texts = [client.instructions or ""]
        for tool in tools:
            texts += _texts(tool.model_dump(mode="json", exclude_none=True))
        found = {name for text in texts for pattern in _PROMPT_MENTIONS for name in pattern.findall(text)}
        named = {name for name in found if name.lower() not in {"the", "a", "this", "that"}}
        assert "workflow_step_format" in named  # the search finds the mentions there are
        assert named <= served, f"named but not served: {sorted(named - served)}; served: {sorted(served)}"
        for name in named:
            assert (await client.get_prompt(name)).messages


async def test_resources_list_the_collections_and_templates_even_without_an_engine(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    async with Client(build_server(tools_without_engine)) as client:
        resources = (await client.list_resources()).resources
        templates = (await client.list_resource_templates()).resource_templates
        with pytest.raises(MCPError, match="unknown scheme"):
            await client.read_resource("file:///etc/passwd")
        with pytest.raises(MCPError, match="internal error"):
            await client.read_resource("orchestration://workflows")
    assert {r.uri for r in resources} == {
        "orchestration://workflows",
        "orchestration://runs",
        "orchestration://projects",
        "orchestration://templates",
        "ui://codomyrmex-orchestration/run-view.html",  # the run view (MCP App): needs no engine either
    }
    assert {t.uri_template for t in templates} == {
        "orchestration://workflows/{name}",
        "orchestration://runs{?cursor,limit}",
        "orchestration://runs/{run_id}",
        "orchestration://projects/{name}",
        "orchestration://templates/{name}",
    }


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_cursor_given_to_a_list_of_one_page_is_refused_naming_it(
    tools_without_engine: OrchestrationMCPTools, mode: Literal["legacy", "auto"]
) -> None:
    # The pagination spec: an invalid cursor SHOULD be -32602. These lists are never paged, so no cursor
    # is one this server handed out.
    async with Client(build_server(tools_without_engine), mode=mode) as client:
        listings = {
            "tools/list": client.list_tools,
            "resources/list": client.list_resources,
            "resources/templates/list": client.list_resource_templates,
            "prompts/list": client.list_prompts,
        }
        for method, listing in listings.items():
            with pytest.raises(MCPError) as refused:
                await listing(cursor="not-a-cursor", cache_mode="bypass")
            error = refused.value.error
            assert error.code == -32602, (method, error)
            assert "'not-a-cursor'" in error.message and method in error.message, error.message
            assert error.data == {"cursor": "not-a-cursor"}
            await listing(cursor=None, cache_mode="bypass")  # and without one, the list


@pytest.mark.parametrize(("mode", "code"), [("legacy", -32002), ("auto", -32602)])
async def test_an_unknown_resource_is_not_found_with_the_code_of_the_negotiated_version(
    tools_without_engine: OrchestrationMCPTools, mode: Literal["legacy", "auto"], code: int
) -> None:
    # 2025-11-25 names -32002 "resource not found"; 2026-07-28 retired it for -32602 (SEP-2164).
    async with Client(build_server(tools_without_engine), mode=mode) as client:
        for uri in ("file:///etc/passwd", "orchestration://nothing"):
            with pytest.raises(MCPError) as missing:
                await client.read_resource(uri)
            assert missing.value.error.code == code, (client.protocol_version, missing.value.error)
            assert missing.value.error.data == {"uri": uri}


async def test_a_resource_uri_that_names_nothing_is_not_found_saying_what_it_may_name(
    tools: OrchestrationMCPTools,
) -> None:
    async with Client(build_server(tools), mode="legacy") as client:
        step = {"name": "a", "module": "core", "action": "echo", "parameters": {"message": 1}}
        created = await client.call_tool("create_workflow", {"name": "hello", "steps": [step]})
        assert not created.is_error, created
        missing: dict[str, Any] = {}
        for uri in (
            "ui://codomyrmex-orchestration/other.html",  # was "unknown scheme": ui:// is served
            "orchestration://workflows/",  # was the whole list, under this URI
            "orchestration://runs/",
            "orchestration://workflows/../runs",  # was "invalid arguments for tool 'get_workflow'"
            "orchestration://runs/" + "r" * 129,
            "file:///etc/passwd",
        ):
            with pytest.raises(MCPError) as refused:
                await client.read_resource(uri)
            missing[uri] = refused.value.error
        listed = await client.read_resource("orchestration://workflows")
    for uri, error in missing.items():
        assert error.code == -32002 and error.data == {"uri": uri}, (uri, error)
        assert "tool" not in error.message, (uri, error.message)
    assert "no such ui:// resource" in missing["ui://codomyrmex-orchestration/other.html"].message
    assert "ui://codomyrmex-orchestration/run-view.html" in missing["file:///etc/passwd"].message
    assert "unknown scheme" in missing["file:///etc/passwd"].message
    for kind in ("workflows", "runs"):
        message = missing[f"orchestration://{kind}/"].message
        assert "names no" in message and f"orchestration://{kind} for the list" in message, message
    slashed = missing["orchestration://workflows/../runs"].message
    assert "'../runs' is not a workflow name" in slashed and "letters, digits" in slashed, slashed
    assert "1 to 128 characters" in missing["orchestration://runs/" + "r" * 129].message
    assert "hello" in listed.contents[0].text  # the list itself, without the slash


async def test_the_list_of_runs_is_read_a_page_at_a_time_through_its_next_uri(
    tools: OrchestrationMCPTools,
) -> None:
    # Its next_cursor was one no read accepted: "runs?cursor=" was not found (-32002) and "runs/?cursor="
    # was "run '?cursor=...' not found".
    async with Client(build_server(tools), mode="legacy") as client:
        step = {"name": "a", "module": "core", "action": "echo", "parameters": {"message": 1}}
        created = await client.call_tool("create_workflow", {"name": "e", "steps": [step]})
        assert not created.is_error, created
        started = []
        for _ in range(5):
            run = await client.call_tool("execute_workflow", {"workflow_name": "e"})
            started.append((run.structured_content or {})["run_id"])
        first = json.loads((await client.read_resource("orchestration://runs?limit=2")).contents[0].text)
        pages, uri = [first], first["next_uri"]
        while uri is not None:
            assert uri.startswith("orchestration://runs?cursor=") and uri.endswith("&limit=2"), uri
            page = json.loads((await client.read_resource(uri)).contents[0].text)
            pages.append(page)
            uri = page["next_uri"]
        whole = json.loads((await client.read_resource("orchestration://runs")).contents[0].text)
        refused: dict[str, Any] = {}
        for bad in (
            "orchestration://runs?limit=0",
            "orchestration://runs?limit=501",
            "orchestration://runs?limit=many",
            "orchestration://runs?cursor=not-a-cursor",
            "orchestration://runs?page=2",
            "orchestration://workflows?limit=2",
        ):
            with pytest.raises(MCPError) as error:
                await client.read_resource(bad)
            refused[bad] = error.value.error
    assert [len(p["runs"]) for p in pages] == [2, 2, 1]
    assert [p["count"] for p in pages] == [2, 2, 1]
    assert [r["run_id"] for p in pages for r in p["runs"]] == started[::-1]  # newest first, each once
    assert "count is the number of runs on this page" in first["note"]
    assert "last page" in pages[-1]["note"] and pages[-1]["next_cursor"] is None
    assert whole["count"] == 5 and whole["next_uri"] is None
    for bad, error in refused.items():
        assert error.code == -32602 and error.data == {"uri": bad}, (bad, error)
    for bad in (
        "orchestration://runs?limit=0",
        "orchestration://runs?limit=501",
        "orchestration://runs?limit=many",
    ):
        assert "limit: a whole number of runs from 1 to 500" in refused[bad].message, refused[bad].message
    assert "cursor" in refused["orchestration://runs?cursor=not-a-cursor"].message
    assert "'page'" in refused["orchestration://runs?page=2"].message
    assert "takes no query" in refused["orchestration://workflows?limit=2"].message


# --------------------------------------------------------------------------- fuzz

_WRONG_BY_TYPE: dict[str, list[Any]] = {
    "string": [17, 2.5, True, [], {"a": 1}],
    "integer": ["3", 2.5, True, [], {}],
    "number": ["fast", True, [], {}, None],
    "boolean": ["yes", 1, 0, [], None],
    "object": ["x", 3, [1, 2], True],
    "array": ["x", 3, {"a": 1}, True],
}


def _types_of(schema: dict[str, Any], defs: dict[str, Any]) -> set[str]:
    if "$ref" in schema:
        return _types_of(defs[schema["$ref"].rsplit("/", 1)[1]], defs)
    if "anyOf" in schema:
        return set().union(*(_types_of(s, defs) for s in schema["anyOf"]))
    if "enum" in schema:
        return {"enum"}
    kind = schema.get("type")
    return {kind} if isinstance(kind, str) else set()


def _malformed(schema: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Arguments with at least one defect the schema forbids: unknown key, missing required, wrong type."""
    props: dict[str, Any] = schema.get("properties", {})
    defs = schema.get("$defs", {})
    required = list(schema.get("required", []))
    args: dict[str, Any] = {}
    for name in props:
        if rng.random() < 0.5:
            args[name] = rng.choice([None, "x", 1, 2.5, True, [], {}, {"k": [1]}])
    defects = ["unknown"] + (["missing"] if required else []) + (["wrong"] if props else [])
    defect = rng.choice(defects)
    if defect == "unknown":
        args[rng.choice(["colour", "__proto__", "workflowName", "", "x" * 300])] = rng.choice([1, "x", None])
    elif defect == "missing":
        args.pop(rng.choice(required), None)
    else:
        name = rng.choice(list(props))
        kinds = _types_of(props[name], defs)
        if "enum" in kinds:
            args[name] = rng.choice(["not-a-choice", 42, []])
        else:
            candidates = [
                v
                for kind, values in _WRONG_BY_TYPE.items()
                if kind not in kinds
                for v in values
                if not (v is None and "null" in kinds)
                and not (isinstance(v, int) and not isinstance(v, bool) and "number" in kinds)
            ]
            candidates = [
                v
                for v in candidates
                # A date-time field (list_workflow_runs' since/until) refuses a number too.
                if not any(isinstance(v, _PY[k]) and _exact(v, k) for k in kinds if k in _PY)
            ]
            args[name] = rng.choice(candidates)
    return args


_PY: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "object": dict,
    "array": list,
    "null": type(None),
}


def _exact(value: Any, kind: str) -> bool:
    if isinstance(value, bool):
        return kind == "boolean"
    return True


async def test_a_hundred_malformed_argument_sets_per_tool_are_refused_and_the_server_stays_healthy(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    rng = random.Random(20251125)
    definitions = tools_without_engine.get_tool_definitions()
    async with Client(build_server(tools_without_engine)) as client:
        for d in definitions:
            for _ in range(100):
                args = _malformed(d["inputSchema"], rng)
                with anyio.fail_after(5):
                    result = await client.call_tool(d["name"], args)
                assert result.is_error, (d["name"], args)
                text = _text(result)
                assert text.startswith(f"invalid arguments for tool {d['name']!r}"), (d["name"], args, text)
        assert len((await client.list_tools()).tools) == len(definitions)
        assert (await client.call_tool("list_actions", {"x": 1})).is_error


async def test_a_step_field_of_the_wrong_shape_is_named_by_its_path_and_the_shape_it_takes(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    step = {"name": "a", "module": "core", "action": "echo", "resources": {"compute": [1]}, "cache": 600}
    async with Client(build_server(tools_without_engine)) as client:
        result = await client.call_tool("create_workflow", {"name": "w", "steps": [step]})
    assert result.is_error
    assert _text(result) == (
        "invalid arguments for tool 'create_workflow': "
        "steps.0.resources.compute: Input should be a number or a string; "
        "steps.0.cache: Input should be an object with the fields ttl_seconds"
        "; not checked: the graph, reference and action checks (the server's engine has not started yet); "
        "validate_workflow runs them with the schema's checks"
    )


async def test_a_step_number_given_as_a_string_is_refused_as_a_tool_argument_of_that_type_would_be(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    steps = [
        {"name": "a", "module": "core", "action": "echo"},
        {"name": "b", "module": "core", "action": "echo", "timeout": "5", "required": "true"},
    ]
    async with Client(build_server(tools_without_engine)) as client:
        created = await client.call_tool("create_workflow", {"name": "w", "steps": steps})
        task = await client.call_tool(
            "execute_task", {"name": "t", "module": "core", "action": "echo", "timeout": "5"}
        )
    assert created.is_error and task.is_error
    assert _text(created) == (
        "invalid arguments for tool 'create_workflow': "
        'steps.1.timeout: expected a number, got the string "5" (write 5, without the quotes); '
        'steps.1.required: expected true or false, got the string "true" (write true, without the quotes)'
        "; not checked: the graph, reference and action checks (the server's engine has not started yet); "
        "validate_workflow runs them with the schema's checks"
    )
    assert _text(task).endswith(
        'timeout: expected a number, got the string "5" (write 5, without the quotes)'
    )


async def test_create_workflow_with_a_schema_problem_also_lists_the_graph_problems_of_the_steps_that_parse(
    tools: OrchestrationMCPTools,
) -> None:
    steps = [
        {"name": "a", "module": "core", "action": "set", "dependencies": ["c"]},
        {"name": "b", "module": "core", "action": "set", "depends_on": ["a"]},
        {"name": "c", "module": "core", "action": "set", "dependencies": ["a", "missing"]},
    ]
    async with Client(build_server(tools)) as client:
        assert not (await client.call_tool("list_workflows", {})).is_error  # the engine has started
        result = await client.call_tool("create_workflow", {"name": "several", "steps": steps})
        listed = await client.call_tool("list_workflows", {})
    assert result.is_error
    text = _text(result)
    assert text.startswith("invalid arguments for tool 'create_workflow': unknown field 'steps.1.depends_on'")
    assert "'missing'" in text and "a -> c -> a" in text, text
    assert text.endswith(
        "not checked: the graph, reference and action checks left out steps.1 ('b'), which the schema "
        "refused: they run once it accepts them"
    )
    assert listed.structured_content is not None and listed.structured_content["count"] == 0


async def test_create_workflow_with_a_schema_problem_says_the_graph_checks_wait_for_the_engine(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    steps = [{"name": "a", "module": "core", "action": "set", "depends_on": ["zz"]}]
    async with Client(build_server(tools_without_engine)) as client:
        result = await client.call_tool("create_workflow", {"name": "w", "steps": steps})
    assert result.is_error
    assert _text(result).endswith(
        "not checked: the graph, reference and action checks (the server's engine has not started yet); "
        "validate_workflow runs them with the schema's checks"
    )
