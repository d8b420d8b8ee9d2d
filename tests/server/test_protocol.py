"""The rest of the protocol through the real MCP Client, in process: logging/setLevel with run and step
events, completion/complete, resource subscriptions and list changes (2025-11-25's resources/subscribe
and 2026-07-28's subscriptions/listen).

2025-era tests use ``mode="legacy"`` (the initialize handshake) and the Client's helpers for
``logging/setLevel`` and ``resources/subscribe``, which the SDK marks deprecated as of 2026-07-28: the
warning is expected there, and those tests exercise the 2025 wire on purpose.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourcesListChanged, ResourceUpdated

from codomyrmex_orchestration.server._logging import LEVELS
from codomyrmex_orchestration.server._subscriptions import MAX_SUBSCRIPTIONS, MAX_URI_CHARS
from codomyrmex_orchestration.server.app import build_server
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools

pytestmark = [
    pytest.mark.anyio,
    # The 2025-11-25 helpers (set_logging_level, subscribe_resource) warn that 2026-07-28 removed them.
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

WAIT = 20  # seconds: the bound on every wait for a notification


class Inbox:
    """The notifications one client received, with a bounded wait for the next one that matches."""

    def __init__(self) -> None:
        self.seen: list[types.ServerNotification] = []
        self._arrived = anyio.Event()

    async def __call__(self, message: Any) -> None:
        if isinstance(message, Exception):
            raise message
        self.seen.append(message)
        self._arrived.set()

    def of(self, kind: type[Any]) -> list[Any]:
        return [n for n in self.seen if isinstance(n, kind)]

    async def expect(self, kind: type[Any], matches: Callable[[Any], bool] = lambda n: True) -> Any:
        with anyio.fail_after(WAIT):
            while True:
                found = [n for n in self.of(kind) if matches(n)]
                if found:
                    return found[0]
                self._arrived = anyio.Event()
                await self._arrived.wait()

    def logged(self) -> list[dict[str, Any]]:
        return [
            {"level": n.params.level, **n.params.data}
            for n in self.of(types.LoggingMessageNotification)
            if n.params.logger == "codomyrmex.runs"
        ]

    def updated(self) -> list[str]:
        return [n.params.uri for n in self.of(types.ResourceUpdatedNotification)]


@asynccontextmanager
async def legacy_client(server: Any) -> AsyncIterator[tuple[Client, Inbox]]:
    inbox = Inbox()
    async with Client(server, mode="legacy", message_handler=inbox) as client:
        yield client, inbox


async def call(client: Client, name: str, args: dict[str, Any]) -> dict[str, Any]:
    with anyio.fail_after(WAIT):
        result = await client.call_tool(name, args)
    assert not result.is_error, result.content[0].text
    return dict(result.structured_content or {})


def arg(name: str, value: str) -> dict[str, str]:
    return {"name": name, "value": value}


ECHO = {"name": "say", "module": "core", "action": "echo", "parameters": {"message": "hi"}}
NAP = {"name": "nap", "module": "core", "action": "sleep", "parameters": {"seconds": 60}}


async def test_a_2025_client_is_offered_logging_completions_and_resource_subscriptions(
    tools: OrchestrationMCPTools,
) -> None:
    async with legacy_client(build_server(tools)) as (client, _):
        capabilities = client.server_capabilities
        assert client.protocol_version == "2025-11-25"
    assert capabilities.logging is not None and capabilities.completions is not None
    assert capabilities.resources is not None
    assert capabilities.resources.subscribe and capabilities.resources.list_changed


async def test_run_and_step_events_reach_the_client_that_started_the_run_at_its_level(
    tools: OrchestrationMCPTools,
) -> None:
    server = build_server(tools)
    async with legacy_client(server) as (client, inbox), legacy_client(server) as (other, elsewhere):
        await client.set_logging_level("info")
        await other.set_logging_level("debug")
        await call(client, "create_workflow", {"name": "hello", "steps": [ECHO]})
        run = await call(client, "execute_workflow", {"workflow_name": "hello", "wait": True})
        assert run["status"] == "completed"
        await inbox.expect(
            types.LoggingMessageNotification, lambda n: n.params.data.get("event") == "run.completed"
        )
        # Only info and above: the step's start is debug.
        assert [(m["event"], m["level"]) for m in inbox.logged()] == [
            ("run.started", "info"),
            ("step.completed", "info"),
            ("run.completed", "notice"),
        ]
        assert {m["run_id"] for m in inbox.logged()} == {run["run_id"]}
        assert inbox.logged()[1]["step"] == "say"

        # The other client's own run reaches it at debug; the first client's never did.
        await call(other, "execute_workflow", {"workflow_name": "hello", "wait": True})
        await elsewhere.expect(
            types.LoggingMessageNotification, lambda n: n.params.data.get("event") == "run.completed"
        )
        events = [m["event"] for m in elsewhere.logged()]
        assert events == ["run.started", "step.started", "step.completed", "run.completed"]
        assert run["run_id"] not in {m["run_id"] for m in elsewhere.logged()}


async def test_raising_the_level_filters_and_without_set_level_nothing_is_logged(
    tools: OrchestrationMCPTools,
) -> None:
    async with legacy_client(build_server(tools)) as (client, inbox):
        await call(client, "create_workflow", {"name": "broken", "steps": [{**ECHO, "action": "fail"}]})
        quiet = await call(client, "execute_workflow", {"workflow_name": "broken", "wait": True})
        await client.set_logging_level("error")
        loud = await call(client, "execute_workflow", {"workflow_name": "broken", "wait": True})
        await inbox.expect(
            types.LoggingMessageNotification, lambda n: n.params.data.get("event") == "run.failed"
        )
    assert quiet["status"] == loud["status"] == "failed"
    assert [(m["event"], m["level"], m["run_id"]) for m in inbox.logged()] == [
        ("step.failed", "error", loud["run_id"]),
        ("run.failed", "error", loud["run_id"]),
    ]


async def test_a_subscribed_run_is_updated_as_it_moves_and_an_unsubscribed_resource_is_not(
    tools: OrchestrationMCPTools,
) -> None:
    async with legacy_client(build_server(tools)) as (client, inbox):
        await client.set_logging_level("info")
        await call(client, "create_workflow", {"name": "slow", "steps": [NAP]})
        run = await call(client, "execute_workflow", {"workflow_name": "slow", "wait": False})
        uri = f"orchestration://runs/{run['run_id']}"
        # The list of runs changes only when a run starts or ends: nothing can touch it in between.
        for subscribed in (uri, "orchestration://runs", "orchestration://workflows"):
            await client.subscribe_resource(subscribed)
        await client.unsubscribe_resource("orchestration://runs")
        await call(client, "cancel_workflow_run", {"run_id": run["run_id"]})
        await inbox.expect(
            types.LoggingMessageNotification, lambda n: n.params.data.get("event") == "run.cancelled"
        )
        # One queue per client, in event order: once a later change has arrived, the run's last has.
        await call(client, "create_workflow", {"name": "marker", "steps": [ECHO]})
        await inbox.expect(
            types.ResourceUpdatedNotification, lambda n: n.params.uri == "orchestration://workflows"
        )
        record = await client.read_resource(uri)
    assert uri in inbox.updated()
    assert "orchestration://runs" not in inbox.updated()
    assert '"cancelled"' in record.contents[0].text


async def test_subscriptions_are_refused_past_a_uri_length_and_a_count_per_client(
    tools: OrchestrationMCPTools,
) -> None:
    # Any URI of any size was kept, without a bound: 100 subscriptions of 1 MB URIs that named nothing
    # grew the server by 100 MB.
    refused: list[Any] = []
    async with legacy_client(build_server(tools)) as (client, _):
        for uri in ("orchestration://runs/" + "x" * 1_000_000, "orchestration://runs?limit=5"):
            with pytest.raises(MCPError) as caught, anyio.fail_after(WAIT):
                await client.subscribe_resource(uri)
            refused.append(caught.value.error)
        with anyio.fail_after(120):
            for n in range(MAX_SUBSCRIPTIONS):
                await client.subscribe_resource(f"orchestration://runs/run-{n}")
            with pytest.raises(MCPError) as full:
                await client.subscribe_resource("orchestration://workflows")
            await client.subscribe_resource("orchestration://runs/run-0")  # one it holds: no change
            await client.unsubscribe_resource("orchestration://runs/run-0")
            await client.subscribe_resource("orchestration://workflows")  # room again
    huge, page = refused
    assert huge.code == types.INVALID_PARAMS and f"at most {MAX_URI_CHARS} characters" in huge.message
    assert len(huge.message) < 300 and "(1000021 characters)" in huge.message
    assert page.code == types.INVALID_PARAMS and "subscribe to orchestration://runs" in page.message
    assert full.value.error.code == types.INVALID_PARAMS
    assert f"subscribed to {MAX_SUBSCRIPTIONS} resources" in full.value.error.message


async def test_workflow_and_project_changes_update_the_lists_for_every_client(
    tools: OrchestrationMCPTools,
) -> None:
    server = build_server(tools)
    async with legacy_client(server) as (client, inbox), legacy_client(server) as (_, watcher):
        # Starting the engine (this call) is announced once: whatever it loaded changed the lists.
        await call(client, "list_workflows", {})
        await client.subscribe_resource("orchestration://workflows/hello")
        await client.subscribe_resource("orchestration://projects")
        await call(client, "create_workflow", {"name": "hello", "steps": [ECHO]})
        await inbox.expect(
            types.ResourceUpdatedNotification, lambda n: n.params.uri == "orchestration://workflows/hello"
        )
        await watcher.expect(
            types.ResourceListChangedNotification,
            lambda n: len(watcher.of(types.ResourceListChangedNotification)) >= 2,
        )
        await call(client, "delete_workflow", {"name": "hello"})
        await inbox.expect(
            types.ResourceUpdatedNotification,
            lambda n: inbox.updated().count("orchestration://workflows/hello") >= 2,
        )
        project = await call(client, "create_project", {"name": "demo", "template": "ai_analysis"})
        await inbox.expect(
            types.ResourceUpdatedNotification, lambda n: n.params.uri == "orchestration://projects"
        )
    assert project["project_name"] == "demo"


async def test_completion_suggests_workflows_runs_projects_and_templates_by_what_was_typed(
    tools: OrchestrationMCPTools,
) -> None:
    def ref(uri: str) -> types.ResourceTemplateReference:
        return types.ResourceTemplateReference(uri=uri)

    async with Client(build_server(tools)) as client:
        for name in ("greet", "grind", "aggregate"):
            await call(client, "create_workflow", {"name": name, "steps": [ECHO]})
        run = await call(client, "execute_workflow", {"workflow_name": "greet", "wait": True})
        await call(client, "create_project", {"name": "demo", "template": "ai_analysis"})
        with anyio.fail_after(WAIT):
            workflows = await client.complete(ref("orchestration://workflows/{name}"), arg("name", "gr"))
            everything = await client.complete(ref("orchestration://workflows/{name}"), arg("name", ""))
            runs = await client.complete(
                ref("orchestration://runs/{run_id}"), arg("run_id", run["run_id"][:6])
            )
            projects = await client.complete(ref("orchestration://projects/{name}"), arg("name", "DE"))
            templates = await client.complete(ref("orchestration://templates/{name}"), arg("name", "ai"))
            free_text = await client.complete(
                types.PromptReference(name="workflow_step_format"), {"name": "goal", "value": "x"}
            )
            unknown = await client.complete(types.PromptReference(name="nope"), arg("a", ""))
    # Names starting with what was typed first (case-insensitively), then names containing it.
    assert set(workflows.completion.values[:2]) == {"greet", "grind"}
    assert workflows.completion.values[2:] == ["aggregate"]
    # Everything when nothing is typed (the project's template added its own workflows too).
    assert {"greet", "grind", "aggregate"} <= set(everything.completion.values)
    assert everything.completion.total == len(everything.completion.values)
    assert not everything.completion.has_more
    assert runs.completion.values[0] == run["run_id"]
    assert projects.completion.values == ["demo"]
    assert templates.completion.values[0] == "ai_analysis"
    assert free_text.completion.values == unknown.completion.values == []


async def test_completion_for_a_resource_the_server_does_not_have_is_invalid_params(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    # completion/complete for a resource template the server does not have answered an empty list (as
    # if nothing matched) while resources/read answers an error; the specification: servers SHOULD
    # return errors for invalid references. A prompt it does not have still gets an empty list: the
    # MCP conformance suite's completion-complete scenario (run in CI) asks about a fixture prompt.
    refs = [
        types.ResourceTemplateReference(uri="orchestration://workflow/{name}"),
        types.ResourceTemplateReference(uri="nope://x/{y}"),
    ]
    refused: list[types.ErrorData] = []
    async with Client(build_server(tools_without_engine)) as client:
        for ref in refs:
            with pytest.raises(MCPError) as caught, anyio.fail_after(WAIT):
                await client.complete(ref, arg("name", ""))
            refused.append(caught.value.error)
        with anyio.fail_after(WAIT):  # what the server has still completes, and any prompt
            listed = types.ResourceTemplateReference(uri="orchestration://workflows")
            page = await client.complete(listed, arg("a", ""))
            fixture = await client.complete(
                types.PromptReference(name="test_prompt_with_arguments"), arg("a", "")
            )
    assert [error.code for error in refused] == [types.INVALID_PARAMS] * 2
    template, foreign = (error.message for error in refused)
    assert "unknown resource 'orchestration://workflow/{name}'" in template, template
    assert "did you mean 'orchestration://workflows/{name}'" in template, template
    for message in (template, foreign):
        assert "orchestration://runs/{run_id}" in message and "orchestration://templates/{name}" in message
    assert [error.data for error in refused] == [{"uri": ref.uri} for ref in refs]
    assert page.completion.values == fixture.completion.values == []


async def test_completion_of_a_template_suggests_the_names_create_project_and_the_resource_accept(
    tools: OrchestrationMCPTools, tmp_path: Path
) -> None:
    # A custom template whose name is not its type (conftest.make_engine's templates_dir).
    custom = tmp_path / "templates" / "projects"
    custom.mkdir(parents=True)
    blog = {"type": "documentation", "description": "my blog", "directory_structure": {"posts": "Posts"}}
    (custom / "blog.json").write_text(json.dumps(blog), encoding="utf-8")
    template = types.ResourceTemplateReference(uri="orchestration://templates/{name}")
    async with Client(build_server(tools)) as client:
        listed = await call(client, "list_project_templates", {})
        with anyio.fail_after(WAIT):
            typed = await client.complete(template, arg("name", "bl"))
            every = await client.complete(template, arg("name", ""))
            read = {}
            for value in every.completion.values:
                shown = await client.read_resource(f"orchestration://templates/{value}")
                read[value] = json.loads(shown.contents[0].text)  # type: ignore[union-attr]  # JSON text
        chosen = typed.completion.values[0]
        created = await call(client, "create_project", {"name": "myblog", "template": chosen})
    assert typed.completion.values == ["blog"]
    assert every.completion.values == [t["name"] for t in listed["templates"]]
    assert {value: shown["name"] for value, shown in read.items()} == {v: v for v in every.completion.values}
    assert read["blog"]["description"] == "my blog"
    assert created["template_used"] == "blog"


async def test_completion_ranks_a_match_inside_the_name_after_those_starting_with_it(
    tools: OrchestrationMCPTools,
) -> None:
    async with Client(build_server(tools)) as client:
        for name in ("collect_greetings", "greet", "regret"):
            await call(client, "create_workflow", {"name": name, "steps": [ECHO]})
        with anyio.fail_after(WAIT):
            found = await client.complete(
                types.ResourceTemplateReference(uri="orchestration://workflows/{name}"), arg("name", "greet")
            )
    assert found.completion.values == ["greet", "collect_greetings"]


async def test_a_2026_client_hears_of_changes_through_its_listen_stream(tools: OrchestrationMCPTools) -> None:
    async with Client(build_server(tools)) as client:
        assert client.protocol_version == "2026-07-28"
        await call(client, "create_workflow", {"name": "slow", "steps": [NAP]})
        run = await call(client, "execute_workflow", {"workflow_name": "slow", "wait": False})
        uri = f"orchestration://runs/{run['run_id']}"
        async with client.listen(resources_list_changed=True, resource_subscriptions=[uri]) as stream:
            await call(client, "cancel_workflow_run", {"run_id": run["run_id"]})
            with anyio.fail_after(WAIT):
                updated = await anext(aiter(stream))
            await call(client, "create_workflow", {"name": "another", "steps": [ECHO]})
            with anyio.fail_after(WAIT):
                changed = [event async for event in _until(stream, ResourcesListChanged)]
    assert updated == ResourceUpdated(uri=uri)
    assert isinstance(changed[-1], ResourcesListChanged)


async def _until(stream: Any, kind: type[Any]) -> AsyncIterator[Any]:
    async for event in stream:
        yield event
        if isinstance(event, kind):
            return


async def test_a_2026_request_that_asks_for_log_messages_gets_those_of_the_run_it_starts(
    tools: OrchestrationMCPTools,
) -> None:
    server = build_server(tools)
    inbox, silent = Inbox(), Inbox()
    async with (
        Client(server, log_level="info", message_handler=inbox) as client,
        Client(server, message_handler=silent) as quiet,
    ):
        assert client.protocol_version == "2026-07-28"
        await call(client, "create_workflow", {"name": "hello", "steps": [ECHO]})
        run = await call(client, "execute_workflow", {"workflow_name": "hello", "wait": True})
        await call(quiet, "execute_workflow", {"workflow_name": "hello", "wait": True})
    # On the request's own stream, sent before its answer; the run's end may come after the answer,
    # when the request (and so the stream) is over.
    assert [(m["event"], m["level"]) for m in inbox.logged()][:2] == [
        ("run.started", "info"),
        ("step.completed", "info"),
    ]
    assert {m["run_id"] for m in inbox.logged()} == {run["run_id"]}
    assert silent.logged() == []


async def test_malformed_params_are_refused_naming_the_field_and_what_it_takes(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    asked = {
        "logging/setLevel": [{"level": "verbose"}, {}],
        "resources/subscribe": [{}],
        "tasks/get": [{"taskId": 7}],
    }
    refused: list[tuple[str, Any]] = []
    async with legacy_client(build_server(tools_without_engine)) as (client, _):
        dispatcher = client.session._dispatcher  # raw: the Client's own helpers validate before sending
        for method, attempts in asked.items():
            for params in attempts:
                with pytest.raises(MCPError) as caught, anyio.fail_after(WAIT):
                    await dispatcher.send_raw_request(method, params, {})
                refused.append((method, caught.value.error))
    assert {error.code for _, error in refused} == {types.INVALID_PARAMS}
    assert [(method, error.data["field"]) for method, error in refused] == [
        ("logging/setLevel", "params.level"),
        ("logging/setLevel", "params.level"),
        ("resources/subscribe", "params.uri"),
        ("tasks/get", "params.taskId"),
    ]
    wrong, missing, no_uri, not_text = (error.message for _, error in refused)
    for message in (wrong, missing):  # the levels a client may pick, whether it sent a wrong one or none
        assert message.startswith("invalid logging/setLevel params: ") and all(lv in message for lv in LEVELS)
    assert "missing required field 'params.level'" in missing and "'params.uri'" in no_uri
    assert "params.taskId" in not_text and "string" in not_text
