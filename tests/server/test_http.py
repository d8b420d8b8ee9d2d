"""SSE and streamable HTTP on a free loopback port: bearer auth, DNS-rebinding protection, /healthz."""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
import uvicorn
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import validate_mcp_param_headers

from codomyrmex_orchestration.cli import main
from codomyrmex_orchestration.config import Settings
from codomyrmex_orchestration.core.actions import ActionDefinition
from codomyrmex_orchestration.errors import InvalidInputError
from codomyrmex_orchestration.server._sse import SseSessions, deferred_stream_close
from codomyrmex_orchestration.server.app import (
    _header_schemas,
    build_http_app,
    build_server,
    check_network_settings,
    is_loopback,
)
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools
from tests.helpers.served import INITIALIZE

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-token-for-tests"
ROOT = Path(__file__).parents[2]
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@asynccontextmanager
async def serving(
    tools: OrchestrationMCPTools,
    transport: str,
    token: str | None,
    server: Server[Any] | None = None,
    **options: Any,
) -> AsyncIterator[str]:
    """Serve on a listening socket bound before uvicorn starts, so clients never race the startup."""
    server = server or build_server(tools)
    app = build_http_app(server, transport=transport, host="127.0.0.1", auth_token=token, **options)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    web = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on", access_log=False))
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: web.serve(sockets=[sock]))
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            web.should_exit = True
    sock.close()


async def test_streamable_http_serves_tools_with_the_token_and_refuses_without_it(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    with anyio.fail_after(20):
        async with serving(tools_without_engine, "streamable-http", TOKEN) as base:
            async with httpx.AsyncClient() as http:
                health = await http.get(f"{base}/healthz")
                anonymous = await http.post(f"{base}/mcp", json=INITIALIZE, headers=MCP_HEADERS)
                wrong = await http.post(
                    f"{base}/mcp", json=INITIALIZE, headers={**MCP_HEADERS, "Authorization": "Bearer nope"}
                )
            assert health.status_code == 200 and health.json()["status"] == "ok"
            assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Bearer")
            assert wrong.status_code == 401
            authed = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"})
            async with authed, Client(streamable_http_client(f"{base}/mcp", http_client=authed)) as client:
                tools = await client.list_tools()
                refused = await client.call_tool("list_workflows", {"extra": 1})
            assert len(tools.tools) == 24
            assert refused.is_error


async def test_streamable_http_refuses_a_foreign_host_or_origin(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    with anyio.fail_after(20):
        async with serving(tools_without_engine, "streamable-http", TOKEN) as base:
            auth = {**MCP_HEADERS, "Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient() as http:
                host = await http.post(
                    f"{base}/mcp", json=INITIALIZE, headers={**auth, "Host": "evil.example:8765"}
                )
                origin = await http.post(
                    f"{base}/mcp", json=INITIALIZE, headers={**auth, "Origin": "http://evil.example"}
                )
                local = await http.post(
                    f"{base}/mcp", json=INITIALIZE, headers={**auth, "Origin": "http://localhost:3000"}
                )
            assert host.status_code == 421
            assert origin.status_code == 403
            assert local.status_code == 200


async def test_healthz_refuses_a_foreign_host_or_origin_and_answers_probes_by_address(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    # A DNS-rebinding page could read /healthz (version, code execution, sessions open): it checked
    # neither Host nor Origin. Probes keep working: by loopback name, and by IP address (Kubernetes and
    # load balancers send the address they reach; a rebinding page's requests always carry its name).
    declared = re.search(
        r"^HEALTHCHECK .*\\\n\s*CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.MULTILINE
    )
    assert declared is not None
    healthcheck = json.loads(declared.group(1))
    with anyio.fail_after(30):
        async with (
            serving(tools_without_engine, "streamable-http", TOKEN) as base,
            httpx.AsyncClient() as http,
        ):
            port = base.rsplit(":", 1)[1]

            async def health(**headers: str) -> int:
                return (await http.get(f"{base}/healthz", headers=headers)).status_code

            answers = {
                "foreign host": await health(Host="attacker.example"),
                "foreign host and port": await health(Host=f"attacker.example:{port}"),
                "foreign origin": await health(Origin="http://attacker.example"),
                "look-alike origin": await health(Origin="http://127.0.0.1.attacker.example"),
                "address, foreign origin": await health(
                    Host="10.1.2.3:8765", Origin="http://attacker.example"
                ),
                "loopback": await health(),
                "localhost": await health(Host=f"localhost:{port}"),
                "ipv4 address": await health(Host="10.1.2.3:8765"),
                "ipv6 address": await health(Host="[fd00::5]:8765"),
                "local origin": await health(Origin=f"http://127.0.0.1:{port}"),
            }
            assert healthcheck[0] == "python"  # the image's; here, this interpreter
            command = [sys.executable, *(part.replace(":8765/", f":{port}/") for part in healthcheck[1:])]
            docker = await anyio.run_process(command, check=False)
    assert answers == {
        "foreign host": 421,
        "foreign host and port": 421,
        "foreign origin": 403,
        "look-alike origin": 403,
        "address, foreign origin": 403,
        "loopback": 200,
        "localhost": 200,
        "ipv4 address": 200,
        "ipv6 address": 200,
        "local origin": 200,
    }
    assert docker.returncode == 0, docker.stderr  # the Dockerfile's HEALTHCHECK, against this server


async def test_streamable_http_on_loopback_works_without_a_token(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    with anyio.fail_after(20):
        async with serving(tools_without_engine, "streamable-http", None) as base:
            async with Client(f"{base}/mcp") as client:
                assert len((await client.list_tools()).tools) == 24


async def test_a_tool_call_with_arguments_does_not_re_list_every_tool(tools: OrchestrationMCPTools) -> None:
    # The SDK checks Mcp-Param headers on streamable HTTP against the called tool's input schema; without
    # our schema lookup it would run (and serialise) the whole tools/list handler on every such call.
    server = build_server(tools)
    served: list[str] = []

    async def record(ctx: Any, call_next: Any) -> Any:
        served.append(ctx.method)
        return await call_next(ctx)

    server.middleware.append(record)
    echo = {"name": "e", "module": "core", "action": "echo", "parameters": {"message": "hi"}}
    with anyio.fail_after(30):
        async with serving(tools, "streamable-http", None, server) as base, Client(f"{base}/mcp") as client:
            await client.list_tools()
            for _ in range(5):
                result = await client.call_tool("execute_task", echo)
                assert not result.is_error and result.structured_content["result"] == "hi"
    assert served.count("tools/call") == 5
    assert served.count("tools/list") == 1  # the client's own listing, none per call
    assert server.get_tool_input_schema is not None
    # None of our tools declares an x-mcp-header: the lookup says "nothing to check" for every one.
    assert server.get_tool_input_schema("execute_task") is None
    assert server.get_tool_input_schema("no_such_tool") is None


def test_only_schemas_with_header_annotations_go_to_the_sdks_header_check(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    annotated = {"type": "object", "properties": {"region": {"type": "string", "x-mcp-header": "Region"}}}
    misplaced = {"type": "object", "properties": {"r": {"type": "object", "x-mcp-header": "R"}}}
    plain = {"type": "object", "properties": {"region": {"type": "string"}}}
    assert _header_schemas({"a": annotated, "m": misplaced, "p": plain}) == {"a": annotated}
    # Why answering None for the others loses nothing: the SDK's check passes such a schema whatever
    # the headers say, and rejects a mismatch only where an annotation declares the header.
    stray = {"mcp-param-region": "elsewhere"}
    assert validate_mcp_param_headers(plain, {"region": "eu"}, stray) is None
    assert validate_mcp_param_headers(misplaced, {"r": {}}, stray) is None
    assert validate_mcp_param_headers(annotated, {"region": "eu"}, stray) is not None
    for definition in tools_without_engine.get_tool_definitions():
        assert validate_mcp_param_headers(definition["inputSchema"], {}, stray) is None


async def test_sse_serves_tools_with_the_token_and_refuses_without_it(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    with anyio.fail_after(20):
        async with serving(tools_without_engine, "sse", TOKEN) as base:
            async with httpx.AsyncClient() as http:
                anonymous = await http.get(f"{base}/sse")
                post = await http.post(f"{base}/messages/?session_id=00", json=INITIALIZE)
                foreign = await http.get(
                    f"{base}/sse", headers={"Authorization": f"Bearer {TOKEN}", "Host": "evil.example"}
                )
                health = await http.get(f"{base}/healthz")
            assert anonymous.status_code == 401 and post.status_code == 401
            assert foreign.status_code == 421
            assert health.status_code == 200
            transport = sse_client(f"{base}/sse", headers={"Authorization": f"Bearer {TOKEN}"})
            async with Client(transport, mode="legacy") as client:
                tools = await client.list_tools()
                with pytest.raises(MCPError) as unknown:
                    await client.call_tool("frobnicate", {})
            assert len(tools.tools) == 24
            assert unknown.value.error.code == -32602


async def test_an_sse_stream_open_at_shutdown_ends_once_the_call_waiting_on_it_is_answered(
    tools: OrchestrationMCPTools,
) -> None:
    # serve()'s SSE shutdown without the signal: uvicorn stops, and the sessions are told to close. The
    # call's work is not cancelled here (serve cancels it too), so its answer comes a second later:
    # the stream must stay open for it, then end. sse-starlette, left to itself, ends every stream
    # within half a second of uvicorn's stop, the answer not on it ("Connection closed").
    workflow = {
        "name": "nap",
        "steps": [
            {"name": "quick", "module": "core", "action": "echo", "parameters": {"message": 1}},
            {"name": "nap", "module": "core", "action": "sleep", "parameters": {"seconds": 1.5},
             "dependencies": ["quick"]},
        ],
    }  # fmt: skip
    sessions = SseSessions()
    app = build_http_app(build_server(tools), transport="sse", sse_sessions=sessions)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    web = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on", access_log=False))
    started, stopped = anyio.Event(), anyio.Event()

    async def serve() -> None:
        await web.serve(sockets=[sock])
        stopped.set()

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        if not started.is_set():
            started.set()
            web.should_exit = True  # uvicorn stops accepting and waits for the open responses
            sessions.close_when_answered()

    with anyio.fail_after(30), deferred_stream_close():
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            async with Client(sse_client(f"http://127.0.0.1:{port}/sse"), mode="legacy") as client:
                assert not (await client.call_tool("create_workflow", workflow)).is_error
                await client.list_tools()
                answer = await client.call_tool(
                    "execute_workflow", {"workflow_name": "nap"}, progress_callback=on_progress
                )
                # Still connected: uvicorn stops once the session has ended the stream (it waits for
                # open responses without limit here).
                await stopped.wait()
    sock.close()
    assert started.is_set()
    assert not answer.is_error and answer.structured_content["status"] == "completed", answer


def test_a_non_loopback_bind_without_a_token_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CODOMYRMEX_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("CODOMYRMEX_AUTH_TOKEN_FILE", raising=False)
    with pytest.raises(InvalidInputError, match="needs a bearer token"):
        check_network_settings(Settings(transport="streamable-http", host="0.0.0.0"))
    code = main(["serve", "--transport", "streamable-http", "--host", "0.0.0.0", "--port", "0"])
    assert code == 2
    captured = capsys.readouterr()
    assert "CODOMYRMEX_AUTH_TOKEN" in captured.err and captured.out == ""


def test_the_token_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    from_file = Settings.from_env({"CODOMYRMEX_AUTH_TOKEN_FILE": str(token_file)}, host="0.0.0.0")
    assert check_network_settings(from_file) == TOKEN
    from_env = Settings.from_env({"CODOMYRMEX_AUTH_TOKEN": TOKEN}, host="10.1.2.3")
    assert check_network_settings(from_env) == TOKEN
    assert check_network_settings(Settings(host="127.0.0.1")) is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(InvalidInputError, match="empty"):
        check_network_settings(Settings(host="0.0.0.0", auth_token_file=tmp_path / "empty"))


def test_loopback_detection() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com"))


async def test_over_http_progress_arrives_and_a_cancelled_request_cancels_the_run(
    tools: OrchestrationMCPTools,
) -> None:
    workflow = {
        "name": "slow",
        "steps": [
            {"name": "quick", "module": "core", "action": "echo", "parameters": {"message": 1}},
            {
                "name": "nap",
                "module": "core",
                "action": "sleep",
                "parameters": {"seconds": 60},
                "dependencies": ["quick"],
            },
        ],
    }
    first_step_done = anyio.Event()
    seen: list[float] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        seen.append(done)
        first_step_done.set()

    with anyio.fail_after(30):
        async with serving(tools, "streamable-http", None) as base, Client(f"{base}/mcp") as client:
            assert not (await client.call_tool("create_workflow", workflow)).is_error
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: client.call_tool(
                        "execute_workflow", {"workflow_name": "slow"}, progress_callback=on_progress
                    )
                )
                await first_step_done.wait()
                runs = await client.call_tool("list_workflow_runs", {"status": "running"})
                run_id = runs.structured_content["runs"][0]["run_id"]
                tg.cancel_scope.cancel()  # the client sends notifications/cancelled
            manager = tools.engine.workflow_manager
            record = await anyio.to_thread.run_sync(manager.wait_run, run_id, 10.0)
    assert seen == [1.0]
    assert record.status.value == "cancelled"


# --------------------------------------------------------------------------- weak tokens, sessions


@pytest.mark.parametrize("token", [" ", "x", "\t\n  ", "fifteen-chars-x", "   short-padded   "])
def test_a_blank_or_short_token_is_refused_at_start_naming_the_setting(
    token: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weak = Settings.from_env({"CODOMYRMEX_AUTH_TOKEN": token}, transport="streamable-http", host="0.0.0.0")
    with pytest.raises(InvalidInputError, match="CODOMYRMEX_AUTH_TOKEN") as info:
        check_network_settings(weak)
    assert "at least 16 characters" in str(info.value)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    from_file = Settings(transport="streamable-http", host="0.0.0.0", auth_token_file=token_file)
    with pytest.raises(InvalidInputError, match=r"CODOMYRMEX_AUTH_TOKEN_FILE|empty"):
        check_network_settings(from_file)
    code = main(["serve", "--transport", "streamable-http", "--host", "0.0.0.0", "--port", "0",
                 "--auth-token-file", str(token_file)])  # fmt: skip
    assert code == 2
    assert "CODOMYRMEX_AUTH_TOKEN" in capsys.readouterr().err


async def _open_session(http: httpx.AsyncClient, base: str) -> httpx.Response:
    return await http.post(f"{base}/mcp", json=INITIALIZE, headers=MCP_HEADERS)


async def test_at_the_session_cap_the_longest_idle_session_makes_room_for_a_new_client(
    tools: OrchestrationMCPTools,
) -> None:
    # The attack: clients open sessions and never close them; once the cap is reached every new client
    # got 503 "Too many open sessions" until the SDK's 30-minute idle timeout, while /healthz said ok.
    with anyio.fail_after(30):
        async with (
            serving(tools, "streamable-http", None, max_sessions=3) as base,
            httpx.AsyncClient(timeout=10) as http,
        ):
            hoarded = []
            for _ in range(3):
                opened = await _open_session(http, base)
                assert opened.status_code == 200, opened.text
                hoarded.append(opened.headers["mcp-session-id"])
            health = (await http.get(f"{base}/healthz")).json()
            assert (health["sessions_open"], health["sessions_max"]) == (3, 3)
            assert health["session_idle_timeout_seconds"] == 300

            newcomer = await _open_session(http, base)
            assert newcomer.status_code == 200, newcomer.text
            ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
            oldest = await http.post(
                f"{base}/mcp", json=ping, headers={**MCP_HEADERS, "mcp-session-id": hoarded[0]}
            )
            assert oldest.status_code == 404  # the longest idle was closed
            for session in [*hoarded[1:], newcomer.headers["mcp-session-id"]]:
                kept = await http.post(
                    f"{base}/mcp", json=ping, headers={**MCP_HEADERS, "mcp-session-id": session}
                )
                assert kept.status_code == 200, kept.text
            health = (await http.get(f"{base}/healthz")).json()
            assert (health["sessions_open"], health["sessions_evicted"]) == (3, 1)

            # A real client still gets in after many more hoarded sessions.
            for _ in range(10):
                assert (await _open_session(http, base)).status_code == 200
            async with Client(streamable_http_client(f"{base}/mcp")) as client:
                assert len((await client.list_tools()).tools) == 24


async def _open_with_get_stream(
    http: httpx.AsyncClient, base: str, streams: AsyncExitStack
) -> tuple[str, httpx.Response]:
    """A session that holds its standalone GET stream open, as every SDK client does."""
    opened = await _open_session(http, base)
    assert opened.status_code == 200, opened.text
    session = opened.headers["mcp-session-id"]
    headers = {"mcp-session-id": session, "mcp-protocol-version": "2025-06-18"}
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert (await http.post(f"{base}/mcp", json=initialized, headers={**MCP_HEADERS, **headers})).is_success
    stream = await streams.enter_async_context(
        http.stream("GET", f"{base}/mcp", headers={"Accept": "text/event-stream", **headers})
    )
    assert stream.status_code == 200
    return session, stream


async def test_sessions_holding_their_get_stream_are_idle_and_the_longest_idle_makes_room_at_the_cap(
    tools: OrchestrationMCPTools,
) -> None:
    # Seen by a tester: a session with its GET stream open never counted as idle, so at the cap real SDK
    # clients (each holds one) were never closed and the fourth client got 503.
    with anyio.fail_after(30):
        async with (
            serving(tools, "streamable-http", None, max_sessions=3) as base,
            httpx.AsyncClient(timeout=10) as http,
            AsyncExitStack() as streams,
        ):
            held = [await _open_with_get_stream(http, base, streams) for _ in range(3)]
            ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
            later = {**MCP_HEADERS, "mcp-session-id": held[0][0]}
            assert (await http.post(f"{base}/mcp", json=ping, headers=later)).status_code == 200

            newcomer = await _open_session(http, base)
            assert newcomer.status_code == 200, newcomer.text
            # The longest idle since its last request is closed (the first used since), its stream ended.
            oldest = await http.post(
                f"{base}/mcp", json=ping, headers={**MCP_HEADERS, "mcp-session-id": held[1][0]}
            )
            assert oldest.status_code == 404
            async for _ in held[1][1].aiter_bytes():
                pass
            for session in (held[0][0], held[2][0]):
                kept = await http.post(
                    f"{base}/mcp", json=ping, headers={**MCP_HEADERS, "mcp-session-id": session}
                )
                assert kept.status_code == 200, kept.text
            assert (await http.get(f"{base}/healthz")).json()["sessions_evicted"] == 1


async def test_at_the_cap_with_every_session_busy_the_refusal_names_the_limit_and_its_setting(
    tools: OrchestrationMCPTools,
) -> None:
    started, release = threading.Event(), threading.Event()

    def hold(params: dict[str, Any], ctx: Any) -> str:
        started.set()
        release.wait(30)
        return "released"

    tools.engine.registry.register(ActionDefinition("test", "hold", hold))
    arguments = {"name": "hold", "module": "test", "action": "hold", "parameters": {}}
    call = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {"name": "execute_task", "arguments": arguments},
    }
    with anyio.fail_after(30):
        async with (
            serving(tools, "streamable-http", None, max_sessions=1) as base,
            httpx.AsyncClient(timeout=30) as http,
            AsyncExitStack() as streams,
            anyio.create_task_group() as tg,
        ):
            session, _ = await _open_with_get_stream(http, base, streams)
            headers = {**MCP_HEADERS, "mcp-session-id": session, "mcp-protocol-version": "2025-06-18"}
            tg.start_soon(partial(http.post, f"{base}/mcp", json=call, headers=headers))
            try:
                assert await anyio.to_thread.run_sync(started.wait, 10)  # the session has a call in flight
                refused = await _open_session(http, base)
            finally:
                release.set()
            assert refused.status_code == 503
            error = refused.json()["error"]
            assert error["code"] == -32603
            assert "1 are open" in error["message"] and "CODOMYRMEX_MAX_SESSIONS" in error["message"]
            assert "mcp-session-id" not in refused.headers


async def test_the_session_idle_timeout_is_a_setting_that_reaches_the_session_manager(
    tools: OrchestrationMCPTools,
) -> None:
    with anyio.fail_after(30):
        async with (
            serving(tools, "streamable-http", None, session_idle_timeout=42.5, max_sessions=7) as base,
            httpx.AsyncClient(timeout=10) as http,
        ):
            health = (await http.get(f"{base}/healthz")).json()
    assert health["session_idle_timeout_seconds"] == 42.5 and health["sessions_max"] == 7
    assert Settings().session_idle_timeout <= 600 < 1800


async def test_an_unexpected_failure_on_a_run_view_route_answers_500_with_a_reference_and_no_trace(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    from codomyrmex_orchestration.server._ui import _reported

    async def broken(request: Request) -> Any:
        raise RuntimeError("disk at /secret/path on fire")

    app = Starlette(routes=[Route("/ui/broken", endpoint=_reported(broken))])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://127.0.0.1") as http:
        answer = await http.get("/ui/broken")
    assert answer.status_code == 500
    ref = re.fullmatch(
        r"internal error \(ref ([0-9a-f]{12})\); the server logged the details", answer.json()["error"]
    )
    assert ref is not None, answer.text
    assert "/secret/path" not in answer.text and "Traceback" not in answer.text
    logged = capsys.readouterr().err
    assert ref.group(1) in logged and "disk at /secret/path on fire" in logged


async def test_a_request_whose_id_is_null_a_fraction_or_a_boolean_gets_400_invalid_request_not_202(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    # The SDK's parser reads such a request as a notification: it answered 202 and nothing else. MCP:
    # a request id MUST be a string or an integer. The answer has the shape of the SDK's own to a
    # malformed message (400, a JSON-RPC error with id null), on both eras' paths.
    bad_ids = [None, 1.5, 2.0, True]
    with anyio.fail_after(30):
        async with (
            serving(tools_without_engine, "streamable-http", None) as base,
            httpx.AsyncClient(timeout=10) as http,
        ):
            opened = await _open_session(http, base)
            session = {**MCP_HEADERS, "mcp-session-id": opened.headers["mcp-session-id"]}
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            assert (await http.post(f"{base}/mcp", json=initialized, headers=session)).status_code == 202
            modern = {**MCP_HEADERS, "mcp-protocol-version": "2026-07-28"}
            answers = {}
            for era, headers in (("2025", session), ("2026", modern)):
                for bad in bad_ids:
                    request = {"jsonrpc": "2.0", "id": bad, "method": "tools/list", "params": {}}
                    answers[era, json.dumps(bad)] = await http.post(
                        f"{base}/mcp", json=request, headers=headers
                    )
            escaped = b'{"jsonrpc": "2.0", "\\u0069d": null, "method": "tools/list"}'  # "id", escaped
            answers["2025", "escaped"] = await http.post(f"{base}/mcp", content=escaped, headers=session)
            opening = await http.post(f"{base}/mcp", json={**INITIALIZE, "id": None}, headers=MCP_HEADERS)
            malformed = await http.post(f"{base}/mcp", content=b'{"jsonrpc": "2.0"}', headers=session)
            # A good id, and a null "id" deeper in the request: served.
            good = {"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {"_meta": {"id": None}}}
            still = await http.post(f"{base}/mcp", json=good, headers=session)
            sessions_open = (await http.get(f"{base}/healthz")).json()["sessions_open"]
    for (era, shown), answer in [*answers.items(), (("2025", "null"), opening)]:
        assert answer.status_code == 400, (era, shown, answer.status_code, answer.text)
        assert answer.headers["content-type"] == malformed.headers["content-type"] == "application/json"
        body = answer.json()
        assert set(body) == set(malformed.json()) == {"jsonrpc", "id", "error"}
        assert body["id"] is None and body["error"]["code"] == -32600, (era, body)
        got = "null" if shown == "escaped" else shown
        assert f'"id" must be a string or an integer, got {got}' in body["error"]["message"], body
    assert malformed.status_code == 400
    # The session still serves (its answer comes as an SSE event).
    [event] = [json.loads(line[5:]) for line in still.text.splitlines() if line.startswith("data:")]
    assert still.status_code == 200 and event["id"] == 7 and len(event["result"]["tools"]) == 24
    assert sessions_open == 1  # the opening request with a null id opened no session


async def test_a_json_array_gets_400_invalid_request_saying_batches_are_not_supported_as_on_stdio(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    # A batch (or []) got 400 with -32602 and a 1,228-byte pydantic dump ("Validation error: 4
    # validation errors for union[JSONRPCRequest,..."); stdio answers -32600 saying batches are not
    # supported. Both transports now say the same.
    from codomyrmex_orchestration.server._request_ids import diagnose

    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    bodies = [b"[]", json.dumps([ping]).encode(), b" \r\n" + json.dumps([INITIALIZE, ping]).encode()]
    with anyio.fail_after(30):
        async with (
            serving(tools_without_engine, "streamable-http", None) as base,
            httpx.AsyncClient(timeout=10) as http,
        ):
            opened = await _open_session(http, base)
            initialize_2025_03 = json.loads(json.dumps(INITIALIZE))
            initialize_2025_03["params"]["protocolVersion"] = "2025-03-26"
            session_2025_03 = {**MCP_HEADERS, "mcp-protocol-version": "2025-03-26"}
            old = await http.post(f"{base}/mcp", json=initialize_2025_03, headers=MCP_HEADERS)
            assert '"protocolVersion":"2025-03-26"' in old.text, old.text
            eras = {
                "opening": MCP_HEADERS,
                "session": {**MCP_HEADERS, "mcp-session-id": opened.headers["mcp-session-id"]},
                "2025-03-26 session": {**session_2025_03, "mcp-session-id": old.headers["mcp-session-id"]},
                "2026": {**MCP_HEADERS, "mcp-protocol-version": "2026-07-28"},
            }
            answers = {
                (era, body): await http.post(f"{base}/mcp", content=body, headers=headers)
                for era, headers in eras.items()
                for body in bodies
            }
            sessions_open = (await http.get(f"{base}/healthz")).json()["sessions_open"]
    stdio = diagnose(b"[]")
    assert stdio is not None
    for (era, body), answer in answers.items():
        assert answer.status_code == 400, (era, body, answer.text)
        assert answer.headers["content-type"] == "application/json"
        expected = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": stdio[1]}}
        assert answer.json() == expected, (era, body, answer.text)
    # Honest for a 2025-03-26 client, whose version said servers MUST receive batches: this one does not
    # (nor does the SDK), and it says what to do instead.
    assert "this server does not support JSON-RPC batches" in stdio[1], stdio
    assert "MCP Python SDK" in stdio[1] and "one by one" in stdio[1], stdio
    assert sessions_open == 2  # none opened by a refused request


async def test_a_message_that_is_not_json_rpc_2_gets_400_invalid_request_in_one_line_as_on_stdio(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    # "jsonrpc": "1.0", no method, params an array: 400 with -32602 "Validation error: 6 validation
    # errors for union[JSONRPCRequest,..." and pydantic's URLs; JSON-RPC 2.0 says -32600 Invalid
    # Request, which stdio answers with one line naming the problem. HTTP now answers as stdio does.
    from codomyrmex_orchestration.server._request_ids import diagnose

    bodies = [
        json.dumps({"jsonrpc": "1.0", "id": 8, "method": "ping"}).encode(),
        json.dumps({"jsonrpc": "2.0", "id": 9}).encode(),
        json.dumps({"jsonrpc": "2.0", "id": 10, "method": "tools/list", "params": [1]}).encode(),
    ]
    with anyio.fail_after(30):
        async with (
            serving(tools_without_engine, "streamable-http", None) as base,
            httpx.AsyncClient(timeout=10) as http,
        ):
            opened = await _open_session(http, base)
            session = {**MCP_HEADERS, "mcp-session-id": opened.headers["mcp-session-id"]}
            eras = {
                "opening": MCP_HEADERS,
                "session": {**session, "mcp-protocol-version": "2025-06-18"},
                "2025-03-26 session": {**session, "mcp-protocol-version": "2025-03-26"},
            }
            answers = {
                (era, body): await http.post(f"{base}/mcp", content=body, headers=headers)
                for era, headers in eras.items()
                for body in bodies
            }
            ping = {"jsonrpc": "2.0", "id": 11, "method": "ping"}
            still = await http.post(f"{base}/mcp", json=ping, headers=eras["session"])
    for (era, body), answer in answers.items():
        stdio = diagnose(body)
        assert stdio is not None and stdio[0] == -32600, body
        assert answer.status_code == 400, (era, body, answer.text)
        assert answer.headers["content-type"] == "application/json"
        assert int(answer.headers["content-length"]) == len(answer.content)
        expected = {"jsonrpc": "2.0", "id": stdio[2], "error": {"code": -32600, "message": stdio[1]}}
        assert answer.json() == expected, (era, body, answer.text)
        assert "\n" not in stdio[1] and "pydantic" not in stdio[1] and len(stdio[1]) < 200, stdio
    assert {answer.json()["id"] for answer in answers.values()} == {8, 9, 10}
    [event] = [json.loads(line[5:]) for line in still.text.splitlines() if line.startswith("data:")]
    assert still.status_code == 200 and event == {"jsonrpc": "2.0", "id": 11, "result": {}}


async def test_a_request_refused_without_a_session_gets_no_session_id(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    # Every refused request without a session (a parse error, a request before initialize...) got 400
    # with a fresh Mcp-Session-Id, each time another, and sending it back got 404 "Session not found":
    # the SDK had discarded the session it opened for the request. Only a session that stays open
    # may be named.
    tools_list = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    with anyio.fail_after(30):
        async with (
            serving(tools_without_engine, "streamable-http", None) as base,
            httpx.AsyncClient(timeout=10) as http,
        ):
            refused = {
                "parse error": await http.post(f"{base}/mcp", content=b"{not json", headers=MCP_HEADERS),
                "not a message": await http.post(f"{base}/mcp", json={"jsonrpc": "2.0"}, headers=MCP_HEADERS),
                "before initialize": await http.post(f"{base}/mcp", json=tools_list, headers=MCP_HEADERS),
                "stream": await http.get(f"{base}/mcp", headers={"Accept": "text/event-stream"}),
                "delete": await http.delete(f"{base}/mcp", headers=MCP_HEADERS),
            }
            before = (await http.get(f"{base}/healthz")).json()["sessions_open"]
            opened = await _open_session(http, base)
            after = (await http.get(f"{base}/healthz")).json()["sessions_open"]
    for what, answer in refused.items():
        assert answer.status_code >= 400, (what, answer.status_code, answer.text)
        assert "mcp-session-id" not in answer.headers, (what, answer.status_code, answer.headers)
    assert before == 0
    assert opened.status_code == 200 and opened.headers["mcp-session-id"] and after == 1


async def test_a_5000_item_map_steps_record_reaches_an_sse_client_without_dropping_its_connection(
    tools: OrchestrationMCPTools,
) -> None:
    # The SDK's SSE client refuses an event over 1 MiB and then closes the connection: every run record
    # used to embed each item, several MB for 5,000.
    step = {"name": "m", "module": "core", "action": "echo", "parameters": {"message": "{{index}}"}}
    workflow = {"name": "bigmap", "steps": [{**step, "for_each": list(range(5000))}]}
    with anyio.fail_after(60):
        async with serving(tools, "sse", None) as base:
            async with Client(sse_client(f"{base}/sse"), mode="legacy") as client:
                assert not (await client.call_tool("create_workflow", workflow)).is_error
                run = await client.call_tool("execute_workflow", {"workflow_name": "bigmap"})
                assert not run.is_error and run.structured_content is not None
                run_id = run.structured_content["run_id"]
                again = await client.call_tool("get_workflow_run", {"run_id": run_id})
                resource = await client.read_resource(f"orchestration://runs/{run_id}")
                listed = await client.call_tool("list_workflows", {})  # the connection still serves
    assert run.structured_content["status"] == "completed"
    assert (
        again.structured_content is not None
        and again.structured_content["steps"]["m"]["items"]["total"] == 5000
    )
    assert '"total": 5000' in resource.contents[0].text  # type: ignore[union-attr]
    assert not listed.is_error


async def test_over_http_discover_and_an_unsupported_version_name_every_version_served(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    from tests.server.test_stdio import SERVED_VERSIONS, envelope

    def modern(version: str, method: str) -> dict[str, str]:
        return {**MCP_HEADERS, "mcp-protocol-version": version, "mcp-method": method}

    discover = {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": envelope("2026-07-28")}
    unsupported = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": envelope("1900-01-01")}
    with anyio.fail_after(30):
        async with (
            serving(tools_without_engine, "streamable-http", None) as base,
            httpx.AsyncClient(timeout=10) as http,
        ):
            discovered = await http.post(
                f"{base}/mcp", json=discover, headers=modern("2026-07-28", "server/discover")
            )
            refused = await http.post(
                f"{base}/mcp", json=unsupported, headers=modern("1900-01-01", "tools/list")
            )
            opened = await _open_session(http, base)  # and the handshake era is served, as listed
    [event] = [json.loads(line[5:]) for line in discovered.text.splitlines() if line.startswith("data:")] or [
        discovered.json()
    ]
    assert event["result"]["supportedVersions"] == SERVED_VERSIONS
    assert refused.status_code == 400 and refused.headers["content-length"] == str(len(refused.content))
    assert refused.json()["error"]["code"] == -32022
    assert refused.json()["error"]["data"] == {"supported": SERVED_VERSIONS, "requested": "1900-01-01"}
    assert opened.status_code == 200 and "mcp-session-id" in opened.headers


async def _sse_messages(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON-RPC messages of an SSE response body, as they arrive."""
    data: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            if data[0]:
                yield json.loads("\n".join(data))
            data = []


async def test_over_streamable_http_a_question_rides_the_waiting_calls_stream_without_a_get_stream(
    tools: OrchestrationMCPTools,
) -> None:
    # The GET stream is a MAY: a client that declared elicitation and never opened one got nothing, and
    # its execute_workflow blocked until its timeout (the question was sent where no stream carried it).
    gate = {
        "name": "gate",
        "steps": [
            {
                "name": "approve",
                "module": "core",
                "action": "approve",
                "parameters": {
                    "message": "Deploy?",
                    "schema": {"type": "object", "properties": {"note": {"type": "string"}}},
                },
            }
        ],
    }
    initialize = {
        **INITIALIZE,
        "params": {
            **INITIALIZE["params"],
            "protocolVersion": "2025-11-25",
            "capabilities": {"elicitation": {}},
        },
    }
    with anyio.fail_after(60):
        async with serving(tools, "streamable-http", None) as base, httpx.AsyncClient(timeout=60) as http:
            opened = await http.post(f"{base}/mcp", json=initialize, headers=MCP_HEADERS)
            headers = {
                **MCP_HEADERS,
                "mcp-session-id": opened.headers["mcp-session-id"],
                "mcp-protocol-version": "2025-11-25",
            }
            await http.post(
                f"{base}/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
            )
            created = {"name": "create_workflow", "arguments": gate}
            made = await http.post(
                f"{base}/mcp",
                json={"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": created},
                headers=headers,
            )
            assert made.status_code == 200, made.text
            execute = {
                "name": "execute_workflow",
                "arguments": {"workflow_name": "gate", "timeout_seconds": 20},
            }
            asked: list[dict[str, Any]] = []
            final: dict[str, Any] = {}
            call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": execute}
            async with http.stream("POST", f"{base}/mcp", json=call, headers=headers) as stream:
                async for message in _sse_messages(stream):
                    if message.get("method") == "elicitation/create":
                        asked.append(message["params"])
                        answer = {"action": "accept", "content": {"note": "ship it"}}
                        reply = {"jsonrpc": "2.0", "id": message["id"], "result": answer}
                        assert (
                            await http.post(f"{base}/mcp", json=reply, headers=headers)
                        ).status_code == 202
                    elif message.get("id") == 3:
                        final = message["result"]["structuredContent"]
                        break
    assert [q["message"] for q in asked] == ["Deploy?"]
    assert final["status"] == "completed", final
    assert final["steps"]["approve"]["output"] == {"action": "accept", "content": {"note": "ship it"}}


async def _read_value(client: Client, run_id: str, read: dict[str, Any]) -> Any:
    """The value a record's ``{"omitted": ...}`` marker stands for, read a page at a time."""
    pages: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = await client.call_tool("get_workflow_run", {**read, "run_id": run_id, "value_offset": offset})
        assert not page.is_error and page.structured_content is not None, page.content
        value = page.structured_content["value"]
        pages.append(value["json_text"])
        offset = value["next_offset"]
    return json.loads("".join(pages))


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_a_run_record_over_a_mib_reaches_the_sdk_client_and_its_large_values_read_in_pages(
    tools: OrchestrationMCPTools, transport: str
) -> None:
    # 600 KB and 700 KB outputs (under the 1 MiB output cap) and 700 KB of parameters: the record used to
    # be sent whole twice (text and structured content), over the SDK client's 1 MiB SSE event limit.
    steps = [
        {"name": "a", "module": "core", "action": "echo", "parameters": {"message": "x" * 600_000}},
        {"name": "b", "module": "core", "action": "echo", "parameters": {"message": "{{params.ys}}"}},
        {"name": "c", "module": "core", "action": "echo", "parameters": {"message": "small"}},
    ]
    with anyio.fail_after(60):
        async with serving(tools, transport, None) as base:
            connect = (
                streamable_http_client(f"{base}/mcp") if transport != "sse" else sse_client(f"{base}/sse")
            )
            async with Client(connect, mode="legacy") as client:
                assert not (
                    await client.call_tool("create_workflow", {"name": "big", "steps": steps})
                ).is_error
                params = {"ys": "y" * 700_000}
                run = await client.call_tool(
                    "execute_workflow", {"workflow_name": "big", "parameters": params}
                )
                assert not run.is_error and run.structured_content is not None, run.content
                run_id = run.structured_content["run_id"]
                again = await client.call_tool("get_workflow_run", {"run_id": run_id, "items_limit": 0})
                read_a = await _read_value(client, run_id, {"step": "a"})
                read_ys = await _read_value(client, run_id, {"parameter": "ys"})
                wrong = await client.call_tool("get_workflow_run", {"run_id": run_id, "step": "zz"})
    record = again.structured_content
    assert record is not None and record["status"] == "completed"
    assert record["steps"]["c"]["output"] == run.structured_content["steps"]["c"]["output"]
    assert record["steps"]["a"]["output"]["omitted"]["read"] == {"run_id": run_id, "step": "a"}
    assert record["steps"]["b"]["output"]["omitted"]["read"] == {"run_id": run_id, "step": "b"}
    assert record["parameters"]["ys"]["omitted"]["read"] == {"run_id": run_id, "parameter": "ys"}
    assert "get_workflow_run" in record["note"]
    assert len(json.dumps(record)) <= 256 * 1024
    text = again.content[0].text  # type: ignore[union-attr]
    assert len(text) < 64 * 1024 and json.loads(text)["steps"] == {
        "a": "completed",
        "b": "completed",
        "c": "completed",
    }
    assert "x" * 600_000 in json.dumps(read_a) and read_ys == "y" * 700_000
    assert (
        wrong.is_error and "step: run" in wrong.content[0].text and "'a', 'b', 'c'" in wrong.content[0].text
    )  # type: ignore[union-attr]


def test_a_throttled_address_signs_in_once_its_wait_is_over_and_tracked_addresses_stay_bounded() -> None:
    from codomyrmex_orchestration.server._ui_throttle import SignInThrottle

    now = [1000.0]
    throttle = SignInThrottle(free=2, first_wait=10, longest_wait=60, max_addresses=3, clock=lambda: now[0])
    assert [throttle.failed("10.0.0.1") for _ in range(4)] == [0, 0, 10, 20]
    assert throttle.retry_after("10.0.0.1") == 20
    now[0] += 20  # the window is over: the next try is taken (and a right one clears the count)
    assert throttle.retry_after("10.0.0.1") == 0
    throttle.succeeded("10.0.0.1")
    assert throttle.failed("10.0.0.1") == 0
    for n in range(50):  # many addresses: the oldest are forgotten, memory stays bounded
        throttle.failed(f"10.0.1.{n}")
    assert throttle.tracked() == 3
    assert throttle.failed("10.0.0.9") == 0 and throttle.tracked() == 3


def test_a_signed_out_cookie_stays_refused_after_a_restart_and_a_new_token_refuses_every_cookie(
    tmp_path: Path,
) -> None:
    from codomyrmex_orchestration.server._ui_sessions import UiSessions

    path = tmp_path / "ui_sign_outs.json"
    sessions = UiSessions(b"key-one", path=path)
    kept, ended = sessions.issue(), sessions.issue()
    assert sessions.valid(kept) and sessions.valid(ended)
    assert sessions.revoke(ended) and not sessions.valid(ended) and sessions.valid(kept)
    restarted = UiSessions(b"key-one", path=path)  # the server started again on the same state
    assert restarted.valid(kept) and not restarted.valid(ended)
    assert not UiSessions(b"key-two", path=path).valid(kept)  # another token
    assert not sessions.valid(kept + "0") and not sessions.revoke("forged.value.abc")


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_a_single_tasks_result_near_a_mib_reaches_the_sdk_client_and_reads_in_pages(
    tools: OrchestrationMCPTools, transport: str
) -> None:
    # A task's answer over 896 KiB was only the "too large" error: its result could never be read.
    message = 'é"\n' * 1000 + "z" * 930_000
    task = {"name": "big", "module": "core", "action": "echo", "parameters": {"message": message}}
    with anyio.fail_after(60):
        async with serving(tools, transport, None) as base:
            connect = (
                streamable_http_client(f"{base}/mcp") if transport != "sse" else sse_client(f"{base}/sse")
            )
            async with Client(connect, mode="legacy") as client:
                done = await client.call_tool("execute_task", task)
                assert not done.is_error and done.structured_content is not None, done.content
                answer = done.structured_content
                pages: list[str] = []
                offset: int | None = 0
                while offset is not None:
                    read = {**answer["result"]["omitted"]["read"], "value_offset": offset}
                    page = await client.call_tool("get_task", read)
                    assert not page.is_error and page.structured_content is not None, page.content
                    pages.append(page.structured_content["value"]["json_text"])
                    offset = page.structured_content["value"]["next_offset"]
                past = await client.call_tool("get_task", {**read, "value_offset": 10**7})
    assert answer["status"] == "completed" and len(json.dumps(answer)) <= 256 * 1024
    assert answer["result"]["omitted"]["read"] == {"task_id": answer["task_id"], "value_offset": 0}
    assert "get_task" in answer["note"] and len(done.content[0].text) < 64 * 1024  # type: ignore[union-attr]
    assert json.loads("".join(pages)) == message and len(pages) > 1
    assert past.is_error and "value_offset: 10000000 is past the end of result" in past.content[0].text  # type: ignore[union-attr]


async def test_an_unsupported_protocol_version_header_gets_400_naming_the_header_on_every_method(
    tools_without_engine: OrchestrationMCPTools,
) -> None:
    # A handshake-era client whose MCP-Protocol-Version header named no served version was told
    # "params._meta must be an object carrying ... envelope keys" (POST), and 405 Method Not Allowed on
    # GET and DELETE of its own session; the transports' MUST is 400 for an unsupported version.
    from tests.server.test_stdio import SERVED_VERSIONS

    with anyio.fail_after(30):
        async with (
            serving(tools_without_engine, "streamable-http", None) as base,
            httpx.AsyncClient(timeout=10) as http,
        ):
            opened = await _open_session(http, base)
            session = {"mcp-session-id": opened.headers["mcp-session-id"]}
            answers = {}
            for version in ("2030-01-01", "garbage"):
                bad = {**MCP_HEADERS, **session, "mcp-protocol-version": version}
                ping = {"jsonrpc": "2.0", "id": "p1", "method": "ping"}
                answers[version, "POST"] = await http.post(f"{base}/mcp", json=ping, headers=bad)
                answers[version, "GET"] = await http.get(f"{base}/mcp", headers=bad)
                answers[version, "DELETE"] = await http.delete(f"{base}/mcp", headers=bad)
            good = {**MCP_HEADERS, **session, "mcp-protocol-version": "2025-06-18"}
            still = await http.post(
                f"{base}/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "ping"}, headers=good
            )
    for (version, method), answer in answers.items():
        assert answer.status_code == 400, (version, method, answer.text)
        error = answer.json()["error"]
        assert error["code"] == -32022
        assert f"MCP-Protocol-Version header says {version!r}" in error["message"]
        assert error["data"] == {"supported": SERVED_VERSIONS, "requested": version}
        assert answer.json()["id"] == ("p1" if method == "POST" else None)
    assert still.status_code == 200 and '"result":{}' in still.text  # the session was not ended
