"""Property-based fuzzing of every tool through the real MCP client (in process).

Arguments are generated from each tool's ``inputSchema`` and mutated (tests/helpers/fuzzing.py). The
budget is ``CODOMYRMEX_FUZZ_CALLS`` calls (a few hundred in ``make test``; ``make fuzz`` runs 10,000 and
prints the figures). After the calls the server must be healthy and its state consistent, in memory and
as reloaded from the state directory.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.shared.exceptions import MCPError

from codomyrmex_orchestration.core.engine import OrchestrationEngine
from codomyrmex_orchestration.core.projects import MANIFEST_FILE
from codomyrmex_orchestration.server.app import build_server
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools, ServerPolicy
from tests.helpers.fuzzing import SchemaStrategies, mutated
from tests.server.conftest import make_engine

FUZZ_CALLS = int(os.environ.get("CODOMYRMEX_FUZZ_CALLS", "300"))
INTERNAL = "internal error (ref"


def _engine(root: Path, policy: ServerPolicy) -> OrchestrationEngine:
    engine: OrchestrationEngine = make_engine(root, policy, durable=True)
    return engine


def report(line: str) -> None:
    """The figures ``make fuzz`` exists to show (pytest -s); in ``make test`` they stay captured."""
    print(line, file=sys.stderr)  # noqa: T201  # the fuzz run's output is its figures


def _harvest(structured: dict[str, Any] | None, known: dict[str, list[str]]) -> None:
    if not isinstance(structured, dict):
        return
    for key, kind in (("run_id", "run"), ("session_id", "session"), ("task_id", "task")):
        value = structured.get(key)
        if isinstance(value, str) and value not in known[kind][-50:]:
            known[kind].append(value)
    for allocation in structured.get("allocations") or []:
        if isinstance(allocation, dict):
            value = allocation.get("allocation_id") or allocation.get("id")
            if isinstance(value, str):
                known["allocation"].append(value)


def _text(result: Any) -> str:
    return str(result.content[0].text)


def _check_state(call: Any, root: Path) -> dict[str, Any]:
    """Health and consistency through the tools; returns what was seen."""
    health = call("get_health_status", {})
    assert not health.is_error, _text(health)
    assert health.structured_content["overall_status"] != "unhealthy", _text(health)

    listed = call("list_workflows", {})
    assert not listed.is_error, _text(listed)
    workflows = listed.structured_content["workflows"]
    for info in workflows:
        detail = call("get_workflow", {"name": info["name"]})
        assert not detail.is_error, (info["name"], _text(detail))
        steps = detail.structured_content["steps"]
        check = call("validate_workflow", {"name": info["name"], "steps": steps})
        assert check.structured_content["valid"], (info["name"], check.structured_content["problems"])

    projects = call("list_projects", {}).structured_content["projects"]
    for project in projects:
        folder = Path(project["path"])
        assert folder.is_dir() and (folder / MANIFEST_FILE).is_file(), project
        assert folder.resolve().is_relative_to((root / "projects").resolve()), project
    projects_root = root / "projects"
    if projects_root.is_dir():
        for folder in projects_root.iterdir():
            if folder.is_dir():
                assert (folder / MANIFEST_FILE).is_file(), (
                    f"{folder} has no manifest (a half-created project)"
                )
        assert {p.name for p in projects_root.iterdir() if p.is_dir()} == {
            Path(p["path"]).name for p in projects
        }

    runs = call("list_workflow_runs", {"limit": 500}).structured_content["runs"]
    for run in runs[:50]:
        record = call("get_workflow_run", {"run_id": run["run_id"]})
        assert not record.is_error, _text(record)
    return {"workflows": sorted(w["name"] for w in workflows), "projects": len(projects), "runs": len(runs)}


@pytest.mark.timeout(max(120, FUZZ_CALLS // 10))
@pytest.mark.parametrize("transport", ["streamable-http", "stdio"])
def test_fuzzed_calls_to_every_tool_get_well_formed_results_and_leave_consistent_state(
    tmp_path: Path, transport: str
) -> None:
    # streamable-http: code execution refused (generated steps may name shell.run / python.call);
    # stdio: allowed (projects can be created: every template's workflows run commands), never generated.
    policy = ServerPolicy.for_transport(transport, None)
    tools = OrchestrationMCPTools(engine_factory=lambda p: _engine(tmp_path, p), policy=policy)
    definitions = tools.get_tool_definitions()
    known: dict[str, list[str]] = {"run": [], "session": [], "allocation": [], "task": []}
    generator = SchemaStrategies(known, code_actions=not policy.allow_code_execution)
    per_tool = {
        d["name"]: (
            d["inputSchema"],
            generator.from_schema(d["inputSchema"], d["inputSchema"].get("$defs", {})),
        )
        for d in definitions
    }
    names = sorted(per_tool)
    calls: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    internal: list[tuple[str, str, str]] = []
    malformed: list[tuple[str, str]] = []
    slowest: list[tuple[float, str, str, str]] = []

    async def call_async(client: Client, name: str, args: dict[str, Any]) -> Any:
        with anyio.fail_after(60):
            return await client.call_tool(name, args)

    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(Client(build_server(tools))) as client,
    ):

        def call(name: str, args: dict[str, Any]) -> Any:
            return portal.call(call_async, client, name, args)

        @settings(
            max_examples=-(-FUZZ_CALLS // len(names)),
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            # Generation only: the server is stateful, so shrinking could not replay a failure faithfully;
            # failures are collected with their arguments and asserted after the run.
            phases=[Phase.generate],
        )
        @given(data=st.data())
        def one_call(name: str, data: st.DataObject) -> None:
            schema, strategy = per_tool[name]
            args = data.draw(strategy, label="valid")
            if data.draw(st.booleans(), label="mutate"):
                args = data.draw(mutated(args, schema), label="mutated")
            calls[name] += 1
            began = time.perf_counter()
            try:
                result = call(name, args)
            except MCPError as exc:
                malformed.append((name, f"protocol error: {exc}"))
                return
            well_formed = (
                isinstance(result.is_error, bool)
                and result.content
                and result.content[0].type == "text"
                and _text(result)
                and (result.is_error or isinstance(result.structured_content, dict))
            )
            if not well_formed:
                malformed.append((name, repr(result)[:300]))
                return
            took = time.perf_counter() - began
            slowest.append((took, name, repr(args)[:160], " ".join(_text(result)[:160].split())))
            slowest.sort(reverse=True)
            del slowest[3:]
            outcomes["error" if result.is_error else "ok"] += 1
            if INTERNAL in _text(result):
                internal.append((name, repr(args)[:400], _text(result)))
            elif not result.is_error:
                _harvest(result.structured_content, known)

        started = time.perf_counter()
        for name in names:  # every tool gets an equal share of the budget
            one_call(name)
        elapsed = time.perf_counter() - started
        seen = _check_state(call, tmp_path)

    tools.close()
    total = sum(calls.values())
    report(
        f"\nfuzz ({transport}): {total} calls in {elapsed:.1f} s ({total / elapsed:.0f} calls/s) "
        f"over {len(calls)} tools; "
        f"{outcomes['ok']} ok, {outcomes['error']} error results, {len(internal)} internal errors, "
        f"{len(malformed)} malformed; state: {len(seen['workflows'])} workflows, "
        f"{seen['projects']} projects, {seen['runs']} runs"
    )
    for took, name, args, text in slowest:
        report(f"  slowest: {took:.2f} s {name} {args} -> {text}")
    assert not internal, internal[:5]
    assert not malformed, malformed[:5]
    assert total >= FUZZ_CALLS and set(calls) == set(names), calls

    # What was persisted is what was served: reload the state directory in a fresh engine.
    reopened = OrchestrationMCPTools(engine_factory=lambda p: _engine(tmp_path, p), policy=policy)
    try:
        again = reopened.execute_tool("list_workflows", {})
        assert sorted(w["name"] for w in again.structured["workflows"]) == seen["workflows"]  # type: ignore[index]
    finally:
        reopened.close()


@pytest.mark.parametrize("tool", ["create_workflow", "validate_workflow"])
def test_a_workflow_over_the_step_limit_is_refused_with_the_limit_named(tmp_path: Path, tool: str) -> None:
    tools = OrchestrationMCPTools(engine_factory=lambda p: _engine(tmp_path, p))
    try:
        steps = [
            {"name": f"s{i}", "module": "core", "action": "echo", "parameters": {"message": i}}
            for i in range(10_001)
        ]
        result = tools.execute_tool(tool, {"name": "big", "steps": steps})
        listed = tools.execute_tool("list_workflows", {})
    finally:
        tools.close()
    text = result.text if result.is_error else str(result.structured)
    assert "10000" in text.replace(",", "").replace("_", ""), text
    assert listed.structured is not None and listed.structured["count"] == 0
