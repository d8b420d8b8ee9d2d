"""mcp.call against a real stdio MCP server (tests/helpers/echo_mcp_server.py), through the real engine
built by the composition module: the one scheduler, a real SQLite store, real subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from codomyrmex_orchestration.compose import build_engine
from codomyrmex_orchestration.config import Settings
from codomyrmex_orchestration.connectors._stderr import RATE_LINES, RATE_WINDOW, ServerStderr
from codomyrmex_orchestration.core._procs import proc_start_time, reap_orphans
from codomyrmex_orchestration.core.engine import OrchestrationEngine
from codomyrmex_orchestration.core.models import RunRecord, StepSpec, TaskStatus, WorkflowStatus
from codomyrmex_orchestration.errors import DAGValidationError
from tests.helpers import unruly_mcp_server
from tests.helpers.echo_mcp_server import calls, entry, gone

WAIT = 60.0


def write_servers(path: Path, servers: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"mcpServers": servers}), encoding="utf-8")
    return path


def settings_for(root: Path, servers_file: Path, **extra: Any) -> Settings:
    return Settings(data_dir=root, mcp_servers_file=servers_file, load_samples=False, max_workers=24, **extra)


@pytest.fixture
def calls_file(tmp_path: Path) -> Path:
    return tmp_path / "echo-calls.txt"


@pytest.fixture
def engine(tmp_path: Path, calls_file: Path) -> Iterator[OrchestrationEngine]:
    servers = write_servers(tmp_path / "config" / "mcp_servers.json", {"echo": entry(calls_file)})
    the_engine = build_engine(settings_for(tmp_path, servers))
    yield the_engine
    the_engine.shutdown()


def run(engine: OrchestrationEngine, name: str, steps: list[dict[str, Any]]) -> RunRecord:
    manager = engine.workflow_manager
    manager.create_workflow({"name": name, "steps": steps}, overwrite=True)
    return manager.execute_workflow(name, timeout=WAIT)


def echo_step(name: str, message: str = "hi", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "module": "mcp",
        "action": "call",
        "parameters": {"server": "echo", "tool": "echo", "arguments": {"message": message}},
        **extra,
    }


def call_step(name: str, tool: str, arguments: dict[str, Any], **extra: Any) -> dict[str, Any]:
    parameters = {"server": "echo", "tool": tool, "arguments": arguments}
    return {"name": name, "module": "mcp", "action": "call", "parameters": parameters, **extra}


# --------------------------------------------------------------------------- results


def test_a_step_gets_the_tools_structured_content_and_a_later_step_can_reference_it(
    engine: OrchestrationEngine, calls_file: Path
) -> None:
    record = run(
        engine,
        "structured",
        [
            echo_step("first", "hello"),
            call_step("second", "echo", {"message": "{{steps.first.output.message}} again"}),
        ],
    )
    assert record.status is WorkflowStatus.COMPLETED, record.steps
    first, second = record.steps["first"].output, record.steps["second"].output
    assert first["message"] == "hello" and first["count"] == 1
    assert second["message"] == "hello again"
    assert calls(calls_file, "echo") == 2


def test_text_content_becomes_a_text_field(engine: OrchestrationEngine) -> None:
    record = run(engine, "text", [call_step("loud", "shout", {"text": "quiet please"})])
    assert record.status is WorkflowStatus.COMPLETED, record.steps
    assert record.steps["loud"].output == {"text": "QUIET PLEASE"}


def test_a_tool_result_flagged_is_error_fails_the_step_with_the_servers_message(
    engine: OrchestrationEngine,
) -> None:
    record = run(engine, "failing", [call_step("bad", "fail", {"reason": "the disk is full"})])
    assert record.status is WorkflowStatus.FAILED
    error = record.steps["bad"].error
    assert error is not None
    assert "the disk is full" in error.message and "'echo'" in error.message


def test_a_tool_the_server_does_not_have_fails_the_step_naming_its_tools(engine: OrchestrationEngine) -> None:
    record = run(engine, "unknown-tool", [call_step("odd", "ecko", {"message": "x"})])
    assert record.status is WorkflowStatus.FAILED
    error = record.steps["odd"].error
    assert error is not None
    assert "ecko" in error.message


# --------------------------------------------------------------------------- connections


def test_twenty_concurrent_steps_share_one_connection_and_one_server_process(
    engine: OrchestrationEngine, calls_file: Path
) -> None:
    record = run(engine, "fan-out", [echo_step(f"s{i}", f"m{i}") for i in range(20)])
    assert record.status is WorkflowStatus.COMPLETED, record.steps
    pids = {step.output["pid"] for step in record.steps.values()}
    assert len(pids) == 1
    assert [record.steps[f"s{i}"].output["message"] for i in range(20)] == [f"m{i}" for i in range(20)]
    assert calls(calls_file, "echo") == 20


def test_a_killed_server_is_started_again_and_the_step_retried_on_the_new_one(
    engine: OrchestrationEngine, calls_file: Path
) -> None:
    before = run(engine, "first", [echo_step("one")]).steps["one"].output["pid"]
    os.kill(before, signal.SIGKILL)
    assert gone(before)
    record = run(engine, "after-kill", [echo_step("two", max_retries=1)])
    assert record.status is WorkflowStatus.COMPLETED, record.steps
    after = record.steps["two"].output["pid"]
    assert after != before
    # and the new connection is shared again
    assert run(engine, "again", [echo_step("three")]).steps["three"].output["pid"] == after


def test_the_step_timeout_stops_the_call_and_the_connection_serves_the_next_step(
    engine: OrchestrationEngine,
) -> None:
    pid = run(engine, "warm", [echo_step("warm")]).steps["warm"].output["pid"]
    started = time.monotonic()
    record = run(engine, "slow", [call_step("slow", "wait", {"seconds": 60}, timeout=1.0)])
    assert time.monotonic() - started < 30
    assert record.status is WorkflowStatus.FAILED
    error = record.steps["slow"].error
    assert error is not None and "timed out" in error.message
    assert run(engine, "after", [echo_step("after")]).steps["after"].output["pid"] == pid


def test_cancelling_a_run_returns_promptly_while_a_call_is_in_flight(engine: OrchestrationEngine) -> None:
    manager = engine.workflow_manager
    manager.create_workflow({"name": "cancel-me", "steps": [call_step("slow", "wait", {"seconds": 60})]})
    started_step = threading.Event()
    engine.register_event_handler("step.started", lambda _event, _payload: started_step.set())
    run_id = manager.start_workflow("cancel-me")
    assert started_step.wait(WAIT)
    began = time.monotonic()
    record = manager.cancel_run(run_id)
    assert time.monotonic() - began < 10
    assert record.status is WorkflowStatus.CANCELLED
    assert record.steps["slow"].status is TaskStatus.CANCELLED


def test_the_server_process_is_recorded_while_connected_and_stopped_with_the_engine(
    tmp_path: Path, calls_file: Path
) -> None:
    servers = write_servers(tmp_path / "servers.json", {"echo": entry(calls_file)})
    engine = build_engine(settings_for(tmp_path, servers))
    try:
        pid = run(engine, "one", [echo_step("one")]).steps["one"].output["pid"]
        records = [json.loads(p.read_text()) for p in (engine.state_dir / "procs").glob("*.json")]
        assert [r["pid"] for r in records] == [pid]
    finally:
        engine.shutdown()
    assert gone(pid)
    assert list((engine.state_dir / "procs").glob("*.json")) == []


def test_the_record_lets_a_restarted_engine_kill_a_server_a_crash_left(
    engine: OrchestrationEngine, calls_file: Path
) -> None:
    pid = run(engine, "one", [echo_step("one")]).steps["one"].output["pid"]
    # What a restarted engine does first (guard_processes): kill every recorded group still alive.
    assert reap_orphans(engine.state_dir / "procs") == [pid]
    assert gone(pid)
    record = run(engine, "two", [echo_step("two", max_retries=1)])
    assert record.status is WorkflowStatus.COMPLETED, record.steps


_CRASHING_OWNER = """
import json, os, sys
from pathlib import Path
from codomyrmex_orchestration.connectors import StdioServer
from codomyrmex_orchestration.connectors._connections import McpConnections
servers = {"echo": StdioServer.model_validate(json.loads(sys.argv[1]))}
result = McpConnections(servers).call_tool("echo", "echo", {"message": "x"}, timeout=60)
print(result.structured_content["pid"], flush=True)
os._exit(0)  # no shutdown: the process just ends
"""


def test_a_stdio_server_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    owner = subprocess.run(
        [sys.executable, "-c", _CRASHING_OWNER, json.dumps(entry(tmp_path / "calls.txt"))],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    )
    pid = int(owner.stdout.split()[-1])
    assert gone(pid)


def _wait_for_file(path: Path, timeout: float = WAIT) -> None:
    """Bounded wait for a file another process writes (nothing to block on across processes)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        threading.Event().wait(0.02)


def _alive(pid: int) -> bool:
    """Process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


_SECOND_ENGINE = """
import sys
from pathlib import Path
from codomyrmex_orchestration.compose import build_engine
from codomyrmex_orchestration.config import Settings
settings = Settings(data_dir=Path(sys.argv[1]), mcp_servers_file=Path(sys.argv[2]), load_samples=False)
build_engine(settings).shutdown()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups are recorded on Linux")
def test_a_second_engine_on_the_same_state_leaves_the_server_of_a_call_in_flight_alone(
    tmp_path: Path,
) -> None:
    servers = write_servers(tmp_path / "servers.json", {"unruly": unruly_mcp_server.entry()})
    engine = build_engine(settings_for(tmp_path, servers))
    release = tmp_path / "release"
    step = {"name": "held", "module": "mcp", "action": "call"}
    step["parameters"] = {"server": "unruly", "tool": "hold", "arguments": {"path": str(release)}}
    records: list[RunRecord] = []
    runner = threading.Thread(target=lambda: records.append(run(engine, "held", [step])))
    try:
        runner.start()
        _wait_for_file(Path(f"{release}.started"))
        [recorded] = [json.loads(p.read_text()) for p in (engine.state_dir / "procs").glob("*.json")]
        # Another process (a CLI `status`, a second `run`) opens an engine on the same state directory.
        second = subprocess.run(
            [sys.executable, "-c", _SECOND_ENGINE, str(tmp_path), str(servers)],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert second.returncode == 0, second.stderr
        assert "procs.orphan_killed" not in second.stderr
        assert _alive(recorded["pid"])
        release.touch()
        runner.join(WAIT)
    finally:
        release.touch()
        runner.join(WAIT)
        engine.shutdown()
    [record] = records
    assert record.status is WorkflowStatus.COMPLETED, record.steps
    assert record.steps["held"].output == {"pid": recorded["pid"]}


_DYING_OWNER = """
import json, os, sys
from pathlib import Path
from codomyrmex_orchestration.connectors import StdioServer
from codomyrmex_orchestration.connectors._connections import McpConnections
servers = {"unruly": StdioServer.model_validate(json.loads(sys.argv[1]))}
connections = McpConnections(servers, procs_dir=Path(sys.argv[2]))
result = connections.call_tool("unruly", "spawn", {}, timeout=60)
print(result.structured_content["child"], flush=True)
os._exit(0)  # no shutdown: the server dies of the parent-death signal, its helper lives on
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups are recorded on Linux")
def test_a_server_group_whose_engine_died_is_still_killed_by_the_next_engine(tmp_path: Path) -> None:
    procs = tmp_path / "procs"
    owner = subprocess.run(
        [sys.executable, "-c", _DYING_OWNER, json.dumps(unruly_mcp_server.entry()), str(procs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # the helper would hold a captured stderr open for its 300 s
        text=True,
        timeout=WAIT,
        check=True,
    )
    child = int(owner.stdout.split()[-1])
    try:
        [recorded] = [json.loads(p.read_text()) for p in procs.glob("*.json")]
        assert proc_start_time(recorded["owner_pid"]) != recorded["owner_start_time"]  # the owner is gone
        assert _alive(child)
        assert reap_orphans(procs) == [recorded["pid"]]
        assert gone(child)
        assert list(procs.glob("*.json")) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def unruly_step(name: str, tool: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    parameters = {"server": "unruly", "tool": tool, "arguments": arguments or {}}
    return {"name": name, "module": "mcp", "action": "call", "parameters": parameters}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups are recorded on Linux")
@pytest.mark.parametrize("durable", [True, False], ids=["durable", "in-memory"])
def test_what_a_stdio_server_started_in_its_group_is_stopped_when_its_connection_closes(
    tmp_path: Path, durable: bool
) -> None:
    servers = write_servers(tmp_path / "servers.json", {"unruly": unruly_mcp_server.entry()})
    engine = build_engine(settings_for(tmp_path, servers, durable=durable))
    child = None
    try:
        record = run(engine, "spawner", [unruly_step("spawn", "spawn")])
        assert record.status is WorkflowStatus.COMPLETED, record.steps
        child = record.steps["spawn"].output["child"]
        assert _alive(child)
    finally:
        engine.shutdown()
        if child is not None:
            assert gone(child), "the server's helper outlived the engine's shutdown"
    assert list((engine.state_dir / "procs").glob("*.json")) == []


_SECRET = "S3cr3tV4lu3XYZ"


def test_a_stdio_servers_stderr_is_logged_line_by_line_with_secrets_redacted(tmp_path: Path) -> None:
    write_servers(tmp_path / "config" / "mcp_servers.json", {"unruly": unruly_mcp_server.entry()})
    steps = [
        unruly_step("crash", "crash", {"message": "bad token {{secrets.TOK}}"}),  # a traceback on stderr
        unruly_step("unknown", "nosuch{{secrets.TOK}}"),  # the server logs the unknown name
        # a long line: the secret sits across the cut, still redacted
        unruly_step("long", "complain", {"text": "x" * 995 + "{{secrets.TOK}}" + "y" * 5000}),
    ]
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps({"name": "stderr", "steps": steps}), encoding="utf-8")
    env = {
        **os.environ,
        "CODOMYRMEX_DATA_DIR": str(tmp_path),
        "CODOMYRMEX_SECRET_TOK": _SECRET,
        "CODOMYRMEX_LOG_FORMAT": "json",
    }
    done = subprocess.run(
        [sys.executable, "-m", "codomyrmex_orchestration", "run", str(workflow), "--json"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=env,
        cwd=tmp_path,
    )
    assert json.loads(done.stdout)["status"] == "failed"  # crash and unknown fail; long completes
    assert "S3cr3t" not in done.stderr  # not even the part of it before a cut
    # Nothing of the server reaches our stderr raw: every line is one of our JSON log events.
    events = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    server_lines = [
        e["line"] for e in events if e["event"] == "mcp.server_stderr" and e["server"] == "unruly"
    ]
    assert any("ValueError: bad token [secret:TOK]" in line for line in server_lines), done.stderr
    assert any("nosuch[secret:TOK]" in line for line in server_lines), done.stderr
    [long] = [line for line in server_lines if "xxxxxxxxxx" in line]
    assert long == "x" * 995 + "[secr…[line cut: 6009 bytes]"


def test_stderr_lines_past_the_rate_cap_are_counted_not_logged() -> None:
    now = [0.0]
    lines = ServerStderr("noisy", clock=lambda: now[0])
    with structlog.testing.capture_logs() as logged:
        lines.feed(b"".join(b"line %d\n" % i for i in range(RATE_LINES + 30)))
        now[0] += RATE_WINDOW
        lines.feed(b"next window\nunterminated")
        lines.finish()
    events = [(e["event"], e.get("line"), e.get("lines")) for e in logged]
    assert events[:RATE_LINES] == [("mcp.server_stderr", f"line {i}", None) for i in range(RATE_LINES)]
    assert events[RATE_LINES:] == [
        ("mcp.server_stderr_dropped", None, 30),
        ("mcp.server_stderr", "next window", None),
        ("mcp.server_stderr", "unterminated", None),
    ]


# --------------------------------------------------------------------------- validation and configuration


def test_an_unknown_server_is_refused_at_creation_naming_the_configured_ones(
    engine: OrchestrationEngine,
) -> None:
    step = echo_step("x")
    step["parameters"]["server"] = "ecko"
    with pytest.raises(DAGValidationError) as info:
        engine.workflow_manager.create_workflow({"name": "bad", "steps": [step]})
    text = str(info.value)
    assert "unknown MCP server 'ecko'" in text and "did you mean 'echo'" in text
    assert "configured servers: echo" in text


def test_malformed_parameters_are_named_at_validation(engine: OrchestrationEngine) -> None:
    step = {"name": "x", "module": "mcp", "action": "call", "parameters": {"server": "echo", "arguments": 3}}
    with pytest.raises(DAGValidationError) as info:
        engine.workflow_manager.create_workflow({"name": "bad", "steps": [step]})
    problems = info.value.problems
    assert any("parameters.tool" in p for p in problems)
    assert any("parameters.arguments" in p for p in problems)


def test_a_malformed_servers_file_does_not_stop_the_engine_and_every_call_names_it(tmp_path: Path) -> None:
    servers = write_servers(tmp_path / "servers.json", {"echo": {"args": ["x"]}})
    engine = build_engine(settings_for(tmp_path, servers))
    try:
        with pytest.raises(DAGValidationError) as info:
            engine.workflow_manager.create_workflow({"name": "w", "steps": [echo_step("x")]})
        assert "mcpServers.echo.command" in str(info.value)
        assert str(info.value).count(str(servers)) == 1  # the file is named once, not once per layer
    finally:
        engine.shutdown()


def test_without_a_servers_file_the_message_says_where_to_add_them(tmp_path: Path) -> None:
    engine = build_engine(settings_for(tmp_path, tmp_path / "absent.json"))
    try:
        with pytest.raises(DAGValidationError, match="no servers are configured"):
            engine.workflow_manager.create_workflow({"name": "w", "steps": [echo_step("x")]})
    finally:
        engine.shutdown()


@pytest.mark.parametrize(
    ("server", "says"),
    [
        ({"command": "no-such-mcp-server-here"}, "command 'no-such-mcp-server-here' not found"),
        ({"url": "http://127.0.0.1:9/mcp"}, "cannot connect to MCP server 'other'"),
    ],
)
def test_a_server_that_cannot_be_reached_fails_the_step_saying_why(
    tmp_path: Path, server: dict[str, Any], says: str
) -> None:
    servers = write_servers(tmp_path / "servers.json", {"other": server})
    engine = build_engine(settings_for(tmp_path, servers))
    try:
        step = echo_step("x")
        step["parameters"]["server"] = "other"
        record = run(engine, "unreachable", [step])
    finally:
        engine.shutdown()
    assert record.status is WorkflowStatus.FAILED
    error = record.steps["x"].error
    assert error is not None and says in error.message, error.message


def test_mcp_call_runs_in_the_server_process_whatever_the_backend(
    tmp_path: Path, calls_file: Path, make_backend: Callable[..., Any]
) -> None:
    from codomyrmex_orchestration.core.backends import LOCAL_ONLY_ACTIONS

    servers = write_servers(tmp_path / "servers.json", {"echo": entry(calls_file)})
    engine = build_engine(
        settings_for(tmp_path, servers), backend=make_backend(local_actions=LOCAL_ONLY_ACTIONS)
    )
    try:
        record = run(engine, "anywhere", [echo_step("x", "here")])
    finally:
        engine.shutdown()
    assert record.status is WorkflowStatus.COMPLETED, record.steps
    assert record.steps["x"].output["message"] == "here"


def test_a_call_after_the_engine_shut_down_fails_and_starts_nothing(tmp_path: Path, calls_file: Path) -> None:
    from codomyrmex_orchestration.core.actions import ActionContext
    from codomyrmex_orchestration.errors import StepFailedError

    servers = write_servers(tmp_path / "servers.json", {"echo": entry(calls_file)})
    engine = build_engine(settings_for(tmp_path, servers))
    action = engine.registry.get("mcp", "call").func
    engine.shutdown()
    with pytest.raises(StepFailedError, match="engine is shutting down"):
        action(echo_step("late")["parameters"], ActionContext("late"))
    assert calls(calls_file) == 0  # and the leak check sees no connection thread


def test_a_map_step_calls_the_server_once_per_item_over_the_one_connection(
    engine: OrchestrationEngine, calls_file: Path
) -> None:
    step = call_step("each", "echo", {"message": "item {{item}}", "count": "{{index}}"})
    step.update(for_each=list(range(50)), max_parallel=8)
    record = run(engine, "mapped", [step])
    assert record.status is WorkflowStatus.COMPLETED, record.steps["each"]
    outputs = record.steps["each"].output
    assert [o["message"] for o in outputs] == [f"item {i}" for i in range(50)]
    assert [o["count"] for o in outputs] == list(range(50))
    assert len({o["pid"] for o in outputs}) == 1
    assert calls(calls_file, "echo") == 50


def test_with_code_execution_off_no_configured_server_is_started_or_connected_to(tmp_path: Path) -> None:
    import socket

    from codomyrmex_orchestration.connectors import mcp_catalogue
    from codomyrmex_orchestration.core.actions import ActionContext
    from codomyrmex_orchestration.errors import ActionRefusedError

    marker = tmp_path / "started"
    with socket.socket() as listener:  # an HTTP server's port: a connection would wait in its backlog
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/mcp"
        evil = {"command": "/bin/sh", "args": ["-c", f"echo started >> {marker}; sleep 1"]}
        servers = write_servers(tmp_path / "config" / "mcp_servers.json", {"evil": evil, "web": {"url": url}})
        engine = build_engine(settings_for(tmp_path, servers, allow_shell=False))
        try:
            listed = mcp_catalogue(engine.registry)  # names the servers: starts nothing
            assert [s["name"] for s in listed["mcp_servers"]] == ["evil", "web"]
            for server in ("evil", "web"):
                with pytest.raises(ActionRefusedError) as info:
                    mcp_catalogue(engine.registry, server)
                message = str(info.value)
                assert repr(server) in message, message
                assert "--allow-shell" in message and "CODOMYRMEX_ALLOW_SHELL" in message, message
                # The action itself, even taken from the registry without its policy check
                action = engine.registry.get("mcp", "call", check_allowed=False).func
                params = {"server": server, "tool": "x", "arguments": {}}
                with pytest.raises(ActionRefusedError, match="CODOMYRMEX_ALLOW_SHELL"):
                    action(params, ActionContext("call"))
                step = StepSpec(name="s", module="mcp", action="call", parameters=params)
                assert engine.registry.probe([step]) == []  # validate_workflow's tool checks
        finally:
            engine.shutdown()
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    assert not marker.exists()
