"""The real ``serve`` subprocess over streamable HTTP on loopback, driven as a hostile or careless client:
auth on every route, request limits, refused code execution and SSRF, project names that try to escape,
secrets that must not leak, clients that vanish mid-call, and a small load run."""

from __future__ import annotations

import contextlib
import json
import re
import resource
import selectors
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from codomyrmex_orchestration.core._project_lock import LOCK_FILE
from tests.helpers.load import run_load
from tests.helpers.served import INITIALIZE, SCRIPT, Served, served, server_env

pytestmark = pytest.mark.anyio

TOKEN = "tok-e2e-6f1d2c9a8b7e"
SECRET = "pw-e2e-0b3c5d7e9f"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json", **AUTH}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A network-default server: token required, code execution and private addresses refused."""
    with served(tmp_path_factory.mktemp("locked"), env={"CODOMYRMEX_AUTH_TOKEN": TOKEN}) as server:
        yield server


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``--allow-shell``, a token and a secret in the environment, debug logs."""
    env = {"CODOMYRMEX_AUTH_TOKEN": TOKEN, "SERVICE_PASSWORD": SECRET}
    root = tmp_path_factory.mktemp("open")
    (root / "outside").mkdir()
    (root / "projects").mkdir()
    (root / "projects" / "planted").symlink_to(root / "outside")
    with served(root, ["--allow-shell", "--log-level", "debug"], env) as server:
        yield server


def client(server: Served) -> Any:
    http = httpx2.AsyncClient(headers=AUTH, timeout=60)
    return http, Client(streamable_http_client(server.url, http_client=http))


async def call(server: Served, tool: str, args: dict[str, Any]) -> Any:
    http, mcp_client = client(server)
    async with http, mcp_client as c:
        with anyio.fail_after(60):
            return await c.call_tool(tool, args)


def text(result: Any) -> str:
    return str(result.content[0].text)


# --------------------------------------------------------------------------- auth and transport limits


def test_every_route_but_healthz_needs_the_token(locked: Served) -> None:
    from starlette.routing import Mount, Route

    from codomyrmex_orchestration.server.app import build_http_app, build_server
    from codomyrmex_orchestration.server.tools import OrchestrationMCPTools

    paths = {"/nope", "/mcp/", "/healthz/../mcp"}
    for transport in ("sse", "streamable-http"):
        app = build_http_app(build_server(OrchestrationMCPTools()), transport=transport, auth_token=None)
        paths |= {r.path for r in app.routes if isinstance(r, Route | Mount)}  # type: ignore[attr-defined]
    assert {"/healthz", "/mcp", "/sse", "/messages"} <= paths
    with httpx.Client(base_url=locked.base, timeout=10) as http:
        assert http.get("/healthz").status_code == 200
        for path in sorted(paths - {"/healthz"}):
            for method in ("GET", "POST", "DELETE"):
                response = http.request(
                    method, path, json=INITIALIZE, headers={"Accept": MCP_HEADERS["Accept"]}
                )
                assert response.status_code == 401, (method, path, response.status_code)
                wrong = http.request(
                    method, path, json=INITIALIZE, headers={"Authorization": "Bearer x" + TOKEN}
                )
                assert wrong.status_code == 401, (method, path)


def test_foreign_host_and_origin_are_refused_even_with_the_token(locked: Served) -> None:
    with httpx.Client(base_url=locked.base, timeout=10) as http:
        host = http.post("/mcp", json=INITIALIZE, headers={**MCP_HEADERS, "Host": "evil.example"})
        origin = http.post("/mcp", json=INITIALIZE, headers={**MCP_HEADERS, "Origin": "https://evil.example"})
        rebound = http.post(
            "/mcp", json=INITIALIZE, headers={**MCP_HEADERS, "Origin": "http://127.0.0.1.evil.example"}
        )
        fine = http.post("/mcp", json=INITIALIZE, headers=MCP_HEADERS)
    assert host.status_code == 421 and origin.status_code == 403 and rebound.status_code == 403
    assert fine.status_code == 200


def test_a_refused_host_or_origin_header_is_logged_shortened_not_whole(locked: Served) -> None:
    # The attack: /ui/login needs no token, and the SDK's refusal logged the whole header value at
    # warning: 1000 requests with a 15,000-character Origin grew stderr by 15 MB in 0.9 s.
    huge_origin = "http://" + "a" * 15000 + ".com"
    huge_host = "h" * 15000
    foreign = {**MCP_HEADERS, "Origin": huge_origin}
    before = locked.stderr_path.stat().st_size
    with httpx.Client(base_url=locked.base, timeout=10) as http:
        answers = [
            status
            for _ in range(40)
            for status in (
                http.get("/ui/login", headers={"Origin": huge_origin}).status_code,
                http.post("/ui/login", headers={"Host": huge_host}).status_code,
                http.post("/mcp", json=INITIALIZE, headers=foreign).status_code,
            )
        ]
    with locked.stderr_path.open("rb") as stderr:
        stderr.seek(before)
        logged = stderr.read().decode()
    assert answers == [403, 421, 403] * 40
    lines = [line for line in logged.splitlines() if re.search(r"Invalid (Origin|Host) header", line)]
    assert len(lines) == 120, logged[:2000]
    assert all(len(line) < 1000 for line in lines), max(lines, key=len)[:300]
    assert "Invalid Origin header: http://aaaa" in lines[0], lines[0]
    assert re.search(r"\.\.\. \(\d+ more characters\)$", lines[0]), lines[0]
    assert len(logged) < 120 * 1000 + 10_000  # was about 120 x 15,000


def test_oversized_and_absurdly_nested_bodies_are_refused_and_the_server_keeps_serving(
    locked: Served,
) -> None:
    big = json.dumps(
        {**INITIALIZE, "params": {**INITIALIZE["params"], "pad": "x" * (5 * 1024 * 1024)}}
    ).encode()

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming too
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    with httpx.Client(base_url=locked.base, timeout=30) as http:
        declared = http.post("/mcp", content=big, headers=MCP_HEADERS)
        streamed = http.post("/mcp", content=chunks(), headers=MCP_HEADERS)
        deep = http.post("/mcp", content=b"[" * 200_000 + b"]" * 200_000, headers=MCP_HEADERS)
        junk = http.post("/mcp", content=b"\xff\xfe{not json", headers=MCP_HEADERS)
        health = http.get("/healthz")
    assert declared.status_code == 413 and streamed.status_code == 413
    assert 400 <= deep.status_code < 500 and 400 <= junk.status_code < 500, (deep.text[:200], junk.text[:200])
    assert health.status_code == 200 and locked.proc.poll() is None


def _answer_to_an_unfinished_post(server: Served, path: str, head: str, chunks: int) -> bytes:
    """POST ``path`` with ``head`` (extra header lines), then ``chunks`` chunks of 64 KiB of a chunked
    body that never ends; the answer (a timeout if the server waits for the end)."""
    port = int(server.base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head}\r\n".encode())
        chunk = b"token=" + b"a" * (65536 - 6)
        for _ in range(chunks):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        answer = sock.recv(4096)
        head_end = answer.find(b"\r\n\r\n")
        length = re.search(rb"content-length: (\d+)", answer[:head_end], re.IGNORECASE)
        while length and len(answer) < head_end + 4 + int(length.group(1)):
            answer += sock.recv(4096)
        return answer


def test_a_body_over_the_run_views_limit_is_refused_with_413_before_it_is_read_to_the_end(
    locked: Served,
) -> None:
    form = "Content-Type: application/x-www-form-urlencoded\r\n"
    json_call = f"Content-Type: application/json\r\nAuthorization: Bearer {TOKEN}\r\n"
    streamed = "Transfer-Encoding: chunked\r\n"
    declared = "Content-Length: 1048576000\r\n"  # 1000 MiB announced, none of it sent
    # The sign-in form is open to anyone: it must not wait for (and buffer) a body without end.
    for path, head in [("/ui/login", form), ("/ui/api/call", json_call)]:
        for length, chunks in [(streamed, 4), (declared, 0)]:
            answer = _answer_to_an_unfinished_post(locked, path, head + length, chunks)
            assert answer.startswith(b"HTTP/1.1 413 "), (path, length, answer[:300])
            assert b"64 KiB" in answer, answer
    with httpx.Client(base_url=locked.base, timeout=10) as http:
        wrong = http.post("/ui/login", data={"token": "x" * 40})
        health = http.get("/healthz")
    assert wrong.status_code == 401 and "Wrong token" in wrong.text
    assert health.status_code == 200 and locked.proc.poll() is None


def test_absurdly_nested_json_to_the_run_views_api_gets_400_saying_so(locked: Served) -> None:
    deep_arguments = '{"a": ' * 5000 + "{}" + "}" * 5000
    deep_call = f'{{"name": "get_workflow_run", "arguments": {deep_arguments}}}'.encode()
    headers = {**AUTH, "Content-Type": "application/json"}
    with httpx.Client(base_url=locked.base, timeout=30) as http:
        answers = [
            http.post("/ui/api/call", content=body, headers=headers)
            for body in (b"[" * 30000 + b"]" * 30000, deep_call)
        ]
        health = http.get("/healthz")
    for answer in answers:
        assert answer.status_code == 400, answer.text[:300]
        assert "nested too deeply" in answer.json()["error"], answer.text[:300]
    assert health.status_code == 200 and "RecursionError" not in locked.logs()


def _closed_by_the_server(sock: socket.socket, start: float, within: float) -> tuple[bytes, float]:
    """What the server sent on ``sock`` before closing it, and how many seconds after ``start`` (a
    ``time.monotonic()``) it closed it; fails when it is still open ``within`` seconds after ``start``
    (a bounded wait on the socket, no sleep)."""
    received = b""
    while True:
        left = start + within - time.monotonic()
        if left <= 0:
            pytest.fail(f"the server kept the connection open for {within} s (got {received[:100]!r})")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return received, time.monotonic() - start
        received += chunk


def test_a_request_sent_in_part_or_not_at_all_is_closed_after_the_request_timeout(tmp_path: Path) -> None:
    # The attack: connections that send part of a request (or nothing) were never closed, and the token
    # check needs the whole head: anyone could hold connections until the server ran out of files.
    env = {"CODOMYRMEX_AUTH_TOKEN": TOKEN, "CODOMYRMEX_HTTP_REQUEST_TIMEOUT": "1"}
    with served(tmp_path, env=env) as server, contextlib.ExitStack() as sockets:
        port = int(server.base.rsplit(":", 1)[1])
        host = f"Host: 127.0.0.1:{port}\r\n"

        def connect(*parts: bytes) -> socket.socket:
            sock = sockets.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            for part in parts:
                sock.sendall(part)
            return sock

        silent = connect()
        half_head = connect(f"GET /mcp HTTP/1.1\r\n{host}".encode())
        form = "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
        half_body = connect(f"POST /ui/login HTTP/1.1\r\n{host}{form}token=".encode())
        # A refused request whose announced body never comes: the 401 is answered at once, and the body's
        # first bytes must not keep the connection open.
        answered = connect(f"POST /mcp HTTP/1.1\r\n{host}Content-Length: 1000000\r\n\r\n".encode())
        first = answered.recv(65536)
        answered.sendall(b"x" * 1000)
        start = time.monotonic()
        results = {
            name: _closed_by_the_server(sock, start, within=15)
            for name, sock in [
                ("silent", silent),
                ("half_head", half_head),
                ("half_body", half_body),
                ("answered", answered),
            ]
        }
        with httpx.Client(base_url=server.base, timeout=10) as http:
            health = http.get("/healthz")
            listed = http.post("/mcp", json=INITIALIZE, headers=MCP_HEADERS)
        logs = server.logs()
    assert first.startswith(b"HTTP/1.1 401 "), first[:200]
    for name, (_, after) in results.items():
        assert 0.5 <= after < 15, (name, after)
    assert results["silent"][0] == b""
    said, _ = results["half_head"]
    assert said.startswith(b"HTTP/1.1 408 ") and b"CODOMYRMEX_HTTP_REQUEST_TIMEOUT" in said, said
    assert health.status_code == 200 and listed.status_code == 200  # whole requests are served as ever
    dropped = [line for line in logs.splitlines() if "http.connections_dropped" in line]
    assert len(dropped) == 1, logs  # once, not a line per connection
    assert "timed_out=" in dropped[0] and "CODOMYRMEX_HTTP_REQUEST_TIMEOUT" in dropped[0], dropped


async def test_a_client_with_the_token_is_served_while_more_half_open_connections_than_the_cap_are_held(
    tmp_path: Path,
) -> None:
    # The attack: 20,000 connections that never finish their request exhausted the server's files, and
    # every client (with the token too) got "Empty reply from server". Here the server may open 256 files
    # and 400 such connections are held; the cap is 32.
    env = {"CODOMYRMEX_AUTH_TOKEN": TOKEN, "CODOMYRMEX_HTTP_MAX_CONNECTIONS": "32"}
    with served(tmp_path, env=env) as server:
        resource.prlimit(server.proc.pid, resource.RLIMIT_NOFILE, (256, 256))
        port = int(server.base.rsplit(":", 1)[1])
        with contextlib.ExitStack() as sockets:
            held = []
            for _ in range(400):
                sock = sockets.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
                sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
                held.append(sock)
            http, mcp_client = client(server)
            async with http, mcp_client as c:
                with anyio.fail_after(30):
                    listed = await c.list_tools()
                    result = await c.call_tool("list_workflows", {})
            async with httpx.AsyncClient(timeout=10) as plain:
                health = await plain.get(f"{server.base}/healthz")
            with selectors.DefaultSelector() as waiting:
                for sock in held:
                    waiting.register(sock, selectors.EVENT_READ)
                closed = 0
                deadline = time.monotonic() + 10  # the oldest are closed as newcomers arrive: already done
                while closed < 400 - 32 and time.monotonic() < deadline:
                    for key, _ in waiting.select(timeout=max(0.0, deadline - time.monotonic())):
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        waiting.unregister(sock)
                        try:
                            assert sock.recv(4096) == b""
                        except ConnectionResetError:
                            pass
                        closed += 1
        logs = server.logs()
    assert len(listed.tools) == 24 and not result.is_error, text(result)
    assert health.status_code == 200
    assert closed >= 400 - 32, closed
    dropped = [line for line in logs.splitlines() if "http.connections_dropped" in line]
    assert len(dropped) == 1, logs
    assert "over_cap=" in dropped[0] and "CODOMYRMEX_HTTP_MAX_CONNECTIONS" in dropped[0], dropped


def test_the_open_file_limit_is_raised_to_fit_the_connection_cap_or_the_cap_lowered_to_fit_it(
    tmp_path: Path,
) -> None:
    # Without room for its connections the cap would not protect the server: past its file limit it
    # accepts nobody. The default cap (2,048) needs 2,048 + 256 files.
    with served(tmp_path / "raised", open_files=(1024, 8192)) as server:
        limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
        raised = re.search(r"^Max open files\s+(\d+)\s+(\d+)", limits, re.MULTILINE)
        raised_logs = server.logs()
    with served(tmp_path / "lowered", open_files=(600, 600)) as server:
        lowered_logs = server.logs()
    assert raised is not None and raised.groups() == ("2304", "8192"), limits
    assert "max_connections_lowered" not in raised_logs
    [line] = [line for line in lowered_logs.splitlines() if "server.max_connections_lowered" in line]
    assert "max_connections=344" in line and "600 files" in line and "CODOMYRMEX_HTTP_MAX_CONNECTIONS" in line


# --------------------------------------------------------------------------- refused actions


async def test_shell_and_python_are_refused_over_http_by_default(locked: Served) -> None:
    shell = await call(
        locked,
        "execute_task",
        {"name": "t", "module": "shell", "action": "run", "parameters": {"command": ["id"]}},
    )
    python = await call(
        locked,
        "execute_task",
        {"name": "t", "module": "python", "action": "call", "parameters": {"function": "os.getcwd"}},
    )
    workflow = await call(
        locked,
        "create_workflow",
        {
            "name": "sneaky",
            "steps": [{"name": "a", "module": "shell", "action": "run", "parameters": {"command": "id"}}],
        },
    )
    for result in (shell, python, workflow):
        assert result.is_error and "refused" in text(result), text(result)
    assert "allow-shell" in text(shell) or "allow_shell" in text(shell).lower()


@pytest.fixture
def loopback_listener() -> Iterator[tuple[int, list[Any]]]:
    """A listener on 127.0.0.1 (and ::1 when available) that records every connection it accepts."""
    accepted: list[Any] = []
    sockets = []
    v4 = socket.create_server(("127.0.0.1", 0))
    port = v4.getsockname()[1]
    sockets.append(v4)
    try:
        sockets.append(socket.create_server(("::1", port), family=socket.AF_INET6))
    except OSError:
        pass
    stop = threading.Event()

    def accept(sock: socket.socket) -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, peer = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(peer)
            conn.close()

    threads = [threading.Thread(target=accept, args=(s,), daemon=True) for s in sockets]
    for t in threads:
        t.start()
    yield port, accepted
    stop.set()
    for t in threads:
        t.join(5)
    for s in sockets:
        s.close()


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "[::1]",
        "127.1",
        "0.0.0.0",
        "[::ffff:127.0.0.1]",
        "2130706433",
        "169.254.169.254",
        "10.0.0.1",
        "192.168.1.1",
        "[fe80::1]",
        "100.100.100.200",
        "100.64.0.1",
        "[2002:7f00:1::1]",
        "[64:ff9b::7f00:1]",
    ],
)
async def test_http_request_cannot_reach_internal_addresses_over_http(
    locked: Served, loopback_listener: tuple[int, list[Any]], host: str
) -> None:
    port, accepted = loopback_listener
    result = await call(
        locked,
        "execute_task",
        {
            "name": "ssrf",
            "module": "http",
            "action": "request",
            "parameters": {"url": f"http://{host}:{port}/latest/meta-data", "timeout": 2},
        },
    )
    record = result.structured_content or {}
    assert record.get("status") == "failed", text(result)
    assert "refused" in json.dumps(record.get("error")).lower(), record
    assert accepted == [], f"{host}: the server connected before refusing"


# --------------------------------------------------------------------------- projects and secrets


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "..", ".", "a\\b", "x\x00y", "planted", " planted"])
async def test_project_names_never_escape_the_projects_root(open_server: Served, name: str) -> None:
    root = open_server.state_dir.parent

    def projects() -> list[str]:  # the writers' lock file is no project
        return sorted(p.name for p in (root / "projects").iterdir() if p.name != LOCK_FILE)

    before = projects()
    result = await call(open_server, "create_project", {"name": name, "template": "custom"})
    assert result.is_error, text(result)
    assert list((root / "outside").iterdir()) == []
    assert not await anyio.Path(root / "x").exists() and not await anyio.Path("/abs").exists()
    assert projects() == before


async def test_secrets_never_reach_results_logs_or_the_state_db(open_server: Served) -> None:
    results = [
        await call(
            open_server,
            "execute_task",
            {"name": "env", "module": "shell", "action": "run", "parameters": {"command": ["env"]}},
        ),
        await call(
            open_server,
            "execute_task",
            {
                "name": "print",
                "module": "shell",
                "action": "run",
                "parameters": {"command": "printenv SERVICE_PASSWORD; printenv CODOMYRMEX_AUTH_TOKEN"},
            },
        ),
        await call(
            open_server,
            "execute_task",
            {
                "name": "fail",
                "module": "shell",
                "action": "run",
                "parameters": {"command": "echo $SERVICE_PASSWORD >&2; exit 3"},
            },
        ),
        await call(
            open_server,
            "execute_task",
            {
                "name": "py",
                "module": "python",
                "action": "call",
                "parameters": {"function": "os:getenv", "args": ["SERVICE_PASSWORD"]},
            },
        ),
        await call(
            open_server,
            "create_complex_workflow",
            {
                "name": "leak",
                "workflow_definition": {
                    "steps": [
                        {
                            "name": "env",
                            "module": "shell",
                            "action": "run",
                            "parameters": {"command": ["env"]},
                        },
                        {
                            "name": "echo",
                            "module": "core",
                            "action": "echo",
                            "parameters": {"message": "{{steps.env.output.stdout}}"},
                        },
                    ]
                },
            },
        ),
    ]
    unstructured = [text(r)[:500] for r in results if not r.structured_content]
    assert not unstructured, unstructured
    assert results[0].structured_content["status"] == "completed"
    shown = "\n".join(text(r) for r in results)
    assert "SERVICE_PASSWORD=" in shown and "[REDACTED]" in shown  # the variable is there, its value is not
    for secret in (SECRET, TOKEN):
        assert secret not in shown
        assert secret not in open_server.logs()
        for path in open_server.state_dir.glob("state.db*"):
            assert secret.encode() not in path.read_bytes(), path
    with sqlite3.connect(open_server.state_dir / "state.db") as db:
        dumped = "\n".join(db.iterdump())
    assert SECRET not in dumped and TOKEN not in dumped


# --------------------------------------------------------------------------- clients that vanish, load


async def test_a_client_disconnecting_mid_call_leaves_the_server_healthy_and_the_run_truthful(
    open_server: Served,
) -> None:
    workflow = {
        "name": "nap",
        "steps": [{"name": "nap", "module": "core", "action": "sleep", "parameters": {"seconds": 1}}],
    }
    assert not (await call(open_server, "create_workflow", {**workflow, "overwrite": True})).is_error
    async with anyio.create_task_group() as tg:  # the same concurrency as below, waited for: warm pools
        for _ in range(5):
            tg.start_soon(call, open_server, "execute_workflow", {"workflow_name": "nap"})
    threads_before = open_server.threads()

    async def vanish() -> None:
        async with httpx.AsyncClient(base_url=open_server.base, timeout=10) as http:
            init = await http.post("/mcp", json=INITIALIZE, headers=MCP_HEADERS)
            session = {
                **MCP_HEADERS,
                "mcp-session-id": init.headers["mcp-session-id"],
                "mcp-protocol-version": "2025-06-18",
            }
            await http.post(
                "/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session
            )
            request = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "execute_workflow", "arguments": {"workflow_name": "nap"}},
            }
            async with http.stream("POST", "/mcp", json=request, headers=session) as response:
                assert response.status_code == 200
            # leaving the block closes the connection before the result arrives

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(vanish)
    with anyio.fail_after(30):
        while True:
            runs = await call(open_server, "list_workflow_runs", {"workflow_name": "nap", "limit": 50})
            statuses = [r["status"] for r in runs.structured_content["runs"]]
            if len(statuses) == 10 and all(s in ("completed", "cancelled") for s in statuses):
                break
            await anyio.sleep(0.2)  # polling another process's state: no event crosses the process boundary
        health = await call(open_server, "get_health_status", {})
        while open_server.threads() > threads_before + 2:  # noqa: ASYNC110  # another process: no event to await
            await anyio.sleep(0.2)  # idle worker threads expire on their own schedule
    assert health.structured_content["overall_status"] == "healthy"
    assert open_server.proc.poll() is None


def test_a_small_load_run_has_no_errors_and_bounded_memory(tmp_path: Path) -> None:
    (report,) = run_load(tmp_path, clients=5, calls=20)
    assert report.errors == 0, report.error_samples
    assert report.calls == 100
    assert report.rss_after_kib < report.rss_before_kib + 64 * 1024


async def test_a_project_is_created_over_http_with_code_execution_refused(locked: Served) -> None:
    result = await call(locked, "create_project", {"name": "web_demo", "template": "web_application"})
    assert not result.is_error, text(result)
    data = result.structured_content or {}
    assert data["project_name"] == "web_demo"
    assert "README.md" in data["files_created"]
    refused = data["workflows_not_registered"]
    assert refused and all("refused" in reason for reason in refused.values())


# --------------------------------------------------------------------------- weak configuration


def test_a_weak_token_is_refused_before_the_server_listens(tmp_path: Path) -> None:
    for token in (" ", "x"):
        done = subprocess.run(
            [str(SCRIPT), "serve", "--transport", "streamable-http", "--host", "0.0.0.0", "--port", "0"],
            env=server_env(tmp_path, {"CODOMYRMEX_AUTH_TOKEN": token}),
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert "CODOMYRMEX_AUTH_TOKEN" in done.stderr and "at least 16 characters" in done.stderr


async def test_code_execution_off_loopback_warns_shows_in_health_and_honours_the_python_allow_list(
    tmp_path: Path,
) -> None:
    env = {"CODOMYRMEX_AUTH_TOKEN": TOKEN, "CODOMYRMEX_PYTHON_CALL_ALLOW": "json,os.path"}
    with served(tmp_path, ["--host", "0.0.0.0", "--allow-shell"], env) as server:
        async with httpx.AsyncClient(timeout=10) as http:
            health = (await http.get(f"{server.base}/healthz")).json()
        assert health["code_execution"] is True and health["code_execution_exposed"] is True
        assert "CODE EXECUTION IS ENABLED" in health["warnings"][0]
        status = await call(server, "get_health_status", {})
        details = (status.structured_content or {})["components"]["server"]["details"]
        assert details["code_execution_exposed"] is True

        def python(function: str, args: list[Any]) -> dict[str, Any]:
            step = {"name": "py", "module": "python", "action": "call"}
            return {**step, "parameters": {"function": function, "args": args}}

        evil = await call(server, "execute_task", python("builtins:eval", ["1 + 1"]))
        sneaky = await call(server, "execute_task", python("jsonx:loads", ["1"]))
        fine = await call(server, "execute_task", python("json:dumps", [[1, 2]]))
        logs = server.logs()
    for refused in (evil, sneaky):
        record = refused.structured_content or {}
        assert record.get("status") == "failed", text(refused)
        assert "allow-list" in json.dumps(record.get("error")), record
    assert (fine.structured_content or {}).get("result") == "[1, 2]", text(fine)
    warnings = [line for line in logs.splitlines() if "server.code_execution_exposed" in line]
    assert len(warnings) == 1 and "warn" in warnings[0].lower(), logs
    assert "! WARNING: CODE EXECUTION IS ENABLED ON A NETWORK ADDRESS (0.0.0.0)" in logs
