"""The installed console script over stdio: a real MCP client, protocol-only stdout, clean SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client

from codomyrmex_orchestration.server.app import _StdoutLines
from tests.helpers.served import INITIALIZE, reap, served

pytestmark = pytest.mark.anyio

SCRIPT = Path(sys.executable).parent / "codomyrmex-orchestration"


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODOMYRMEX_")}
    env["CODOMYRMEX_STATE_DIR"] = str(tmp_path / "state")
    env["CODOMYRMEX_CONFIG_DIR"] = str(tmp_path / "config")
    env["CODOMYRMEX_PROJECTS_DIR"] = str(tmp_path / "projects")
    return env


async def test_the_console_script_serves_the_tools_over_stdio(tmp_path: Path) -> None:
    assert SCRIPT.exists(), "the package must be installed (make venv)"
    params = StdioServerParameters(command=str(SCRIPT), args=["serve"], cwd=tmp_path, env=_env(tmp_path))
    with anyio.fail_after(30):
        async with Client(params) as client:
            tools = await client.list_tools()
            invalid = await client.call_tool("execute_workflow", {"workflow_name": 7})
            prompt = await client.get_prompt("workflow_step_format")
            info = client.server_info
    assert len(tools.tools) == 24
    assert info is not None and info.name == "codomyrmex-orchestration"
    assert invalid.is_error and "workflow_name: " in str(invalid.content[0].text)
    assert prompt.messages


async def test_a_log_level_in_capitals_from_the_environment_is_accepted(tmp_path: Path) -> None:
    env = {**_env(tmp_path), "CODOMYRMEX_LOG_LEVEL": "WARNING"}
    params = StdioServerParameters(command=str(SCRIPT), args=["serve"], cwd=tmp_path, env=env)
    with anyio.fail_after(30):
        async with Client(params) as client:
            tools = await client.list_tools()
    assert len(tools.tools) == 24


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_stdout_carries_only_protocol_and_sigterm_stops_the_server_cleanly(
    tmp_path: Path, signum: signal.Signals
) -> None:
    proc = subprocess.Popen(
        [str(SCRIPT), "serve", "--log-level", "debug"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=_env(tmp_path),
        text=True,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(INITIALIZE) + "\n")
        proc.stdin.flush()
        reply = json.loads(proc.stdout.readline())
        assert reply["id"] == 1 and reply["result"]["serverInfo"]["name"] == "codomyrmex-orchestration"
        proc.send_signal(signum)
        code = proc.wait(timeout=15)
        rest = proc.stdout.read()
        assert proc.stderr is not None
        errors = proc.stderr.read()
    finally:
        reap(proc)
    assert code == 0, errors
    assert all(json.loads(line) for line in rest.splitlines() if line.strip())
    assert "server.start" in errors and "server.stop" in errors
    assert f"signal={signum.name}" in errors


def test_the_http_server_process_answers_healthz_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    import socket

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [str(SCRIPT), "serve", "--transport", "streamable-http", "--port", str(port)]
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=_env(tmp_path), text=True
    ) as proc:
        try:
            assert proc.stderr is not None and proc.stdout is not None
            seen = []
            for line in proc.stderr:
                seen.append(line)
                if "Uvicorn running" in line or "Application startup complete" in line:
                    break
            health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=15)
            errors = "".join(seen) + proc.stderr.read()
            out = proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()
    assert health.status_code == 200
    assert code == 0, errors
    assert out == ""
    assert f"http://127.0.0.1:{port}/mcp" in errors and "server.stop" in errors


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
async def test_sigterm_cancels_the_run_an_http_client_waits_on_answers_it_and_the_server_exits_promptly(
    tmp_path: Path, signum: signal.Signals
) -> None:
    # As on stdio: the signal cancels the running work (left resumable) rather than waiting for it; the
    # client waiting on the run gets its final record. SIGHUP (the terminal closed) too: before, it
    # killed the process at once (exit 129, no log line, the waiting client cut off, the run interrupted).
    workflow = {
        "name": "slow",
        "steps": [
            {"name": "quick", "module": "core", "action": "echo", "parameters": {"message": 1}},
            {"name": "nap", "module": "core", "action": "sleep", "parameters": {"seconds": 60},
             "dependencies": ["quick"]},
        ],
    }  # fmt: skip
    first_step_done = anyio.Event()
    answers: list[Any] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        first_step_done.set()

    with served(tmp_path) as server:
        async with Client(server.url) as client:
            assert not (await client.call_tool("create_workflow", workflow)).is_error

            async def execute() -> None:
                arguments = {"workflow_name": "slow", "timeout_seconds": 120}
                answer = await client.call_tool("execute_workflow", arguments, progress_callback=on_progress)
                answers.append(answer)

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(execute)
                    await first_step_done.wait()
                    server.proc.send_signal(signum)
                    signalled = time.monotonic()
                # The task group has waited for the call: before, it waited out the step's minute.
            answered = time.monotonic() - signalled
        code = await anyio.to_thread.run_sync(lambda: server.proc.wait(timeout=10))
        exited = time.monotonic() - signalled
    [answer] = answers
    assert not answer.is_error and answer.structured_content["status"] == "cancelled", answer
    assert answered < 5, answered
    assert code == 0 and exited < 10, exited
    assert "server.stop" in server.logs() and f"signal={signum.name}" in server.logs()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_shutdown_signal_answers_every_sse_client_waiting_on_a_run_before_its_stream_closes(
    tmp_path: Path, signum: signal.Signals
) -> None:
    # As over streamable HTTP: each client waiting on a run gets its record, cancelled, on its own event
    # stream, and the stream then ends. Before, sse-starlette ended every stream within half a second of
    # the signal whether or not its answer was on it, and uvicorn logged a traceback per stream
    # ("Unexpected ASGI message 'http.response.start' sent, after response already completed").
    # A client listening for changes is answered only when its stream ends: it must not hold the exit
    # until uvicorn's grace runs out ("Cancel 1 running task(s), timeout graceful shutdown exceeded").
    workflow = {
        "name": "slow",
        "steps": [
            {"name": "quick", "module": "core", "action": "echo", "parameters": {"message": 1}},
            {"name": "nap", "module": "core", "action": "sleep", "parameters": {"seconds": 60},
             "dependencies": ["quick"]},
        ],
    }  # fmt: skip
    clients = 3
    started = [anyio.Event() for _ in range(clients)]
    listening = anyio.Event()
    answers: dict[int, Any] = {}
    all_answered = anyio.Event()  # the clients stay connected until then, as an agent's client would

    with served(tmp_path, transport="sse") as server:

        def answered(i: int, answer: Any) -> None:
            answers[i] = answer
            if len(answers) == clients:
                all_answered.set()

        async def wait_on_a_run(i: int) -> None:
            async def on_progress(done: float, total: float | None, message: str | None) -> None:
                started[i].set()

            try:
                async with Client(sse_client(server.url), mode="legacy") as client:
                    # The SDK's client checks a result against the tool's output schema, listing the
                    # tools first if it has not: a request the stopping server could not take.
                    await client.list_tools()
                    arguments = {"workflow_name": "slow", "timeout_seconds": 120}
                    answer = await client.call_tool(
                        "execute_workflow", arguments, progress_callback=on_progress
                    )
                    answered(i, answer)
                    await all_answered.wait()
            except Exception as exc:  # what the client saw instead of its answer
                answered(i, exc)

        async def listen() -> None:
            with contextlib.suppress(Exception):  # the subscription ends with the session, abruptly
                async with Client(sse_client(server.url)) as client:
                    async with client.listen(tools_list_changed=True) as subscription:
                        listening.set()
                        async for _event in subscription:
                            pass

        async with Client(sse_client(server.url), mode="legacy") as setup:
            assert not (await setup.call_tool("create_workflow", workflow)).is_error
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(listen)
                for i in range(clients):
                    tg.start_soon(wait_on_a_run, i)
                await listening.wait()
                for event in started:
                    await event.wait()
                server.proc.send_signal(signum)
        code = await anyio.to_thread.run_sync(lambda: server.proc.wait(timeout=10))
    statuses = [
        answer.structured_content["status"] if not isinstance(answer, Exception) else repr(answer)
        for answer in (answers[i] for i in range(clients))
    ]
    assert statuses == ["cancelled"] * clients, statuses
    assert code == 0
    logs = server.logs()
    assert "Traceback" not in logs and "Exception in ASGI application" not in logs, logs
    assert "graceful shutdown exceeded" not in logs, logs
    assert "server.stop" in logs


_SLOW = {
    "name": "slow",
    "steps": [
        {"name": "quick", "module": "core", "action": "echo", "parameters": {"message": 1}},
        {"name": "nap", "module": "core", "action": "sleep", "parameters": {"seconds": 60},
         "dependencies": ["quick"]},
    ],
}  # fmt: skip


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_shutdown_signal_on_stdio_answers_the_call_waiting_on_a_run_with_its_cancelled_record(
    tmp_path: Path, signum: signal.Signals
) -> None:
    # As over HTTP: the signal cancels the run (left resumable), and the call waiting on it is answered
    # before the wire closes. Before, the signal cancelled the session at once: the call never got an
    # answer (the client saw its connection close).
    from codomyrmex_orchestration.core._serving_lock import serving_pid

    first_step_done = anyio.Event()
    answers: list[Any] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        first_step_done.set()

    params = StdioServerParameters(command=str(SCRIPT), args=["serve"], cwd=tmp_path, env=_env(tmp_path))
    with anyio.fail_after(30):
        async with Client(params) as client:
            assert not (await client.call_tool("create_workflow", _SLOW)).is_error
            pid = serving_pid(tmp_path / "state")
            assert pid is not None

            async def execute() -> None:
                arguments = {"workflow_name": "slow", "timeout_seconds": 120}
                answer = await client.call_tool("execute_workflow", arguments, progress_callback=on_progress)
                answers.append(answer)

            async with anyio.create_task_group() as tg:
                tg.start_soon(execute)
                await first_step_done.wait()
                os.kill(pid, signum)
    [answer] = answers
    assert not answer.is_error and answer.structured_content["status"] == "cancelled", answer
    assert answer.structured_content["steps"]["quick"]["status"] == "completed", answer


def test_at_eof_on_stdio_every_request_received_is_answered_and_the_waiting_run_is_cancelled(
    tmp_path: Path,
) -> None:
    # The client sends its last requests and closes stdin: each is answered before the server exits,
    # and the call waiting on a run gets the run's record, cancelled. Before, EOF ended the session at
    # once: the waiting call got "Connection closed" and calls that had taken effect (a workflow
    # saved) got no answer, or that same error.
    proc = _stdio_server(tmp_path)
    try:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        logs = _Lines(proc.stderr)

        def call(request_id: int, name: str, arguments: dict[str, Any], **meta: Any) -> None:
            params: dict[str, Any] = {"name": name, "arguments": arguments}
            if meta:
                params["_meta"] = meta
            message = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
            proc.stdin.write(json.dumps(message) + "\n")  # type: ignore[union-attr]

        def read_until(done: Any) -> list[dict[str, Any]]:
            seen = []
            for line in proc.stdout:  # type: ignore[union-attr]  # ends at EOF: bounded by the exit
                seen.append(json.loads(line))
                if done(seen[-1]):
                    break
            return seen

        call(2, "create_workflow", _SLOW)
        proc.stdin.flush()
        assert any(m.get("id") == 2 for m in read_until(lambda m: m.get("id") == 2))
        call(3, "execute_workflow", {"workflow_name": "slow", "timeout_seconds": 120}, progressToken="run")
        proc.stdin.flush()
        read_until(lambda m: m.get("method") == "notifications/progress")  # the run has started
        last = range(10, 20)
        for request_id in last:
            call(request_id, "create_workflow", {**_SLOW, "name": f"w{request_id}"})
        proc.stdin.close()
        rest = [line for line in proc.stdout if line.strip()]
        code = proc.wait(timeout=30)
    finally:
        reap(proc)
    answers = {m["id"]: m for m in map(json.loads, rest) if "id" in m}
    assert code == 0, logs.text()
    assert "result" in answers[3], answers.get(3)
    assert answers[3]["result"]["structuredContent"]["status"] == "cancelled", answers[3]
    unanswered = [i for i in last if "result" not in answers.get(i, {})]
    assert not unanswered, (unanswered, [answers.get(i) for i in unanswered])


def test_a_client_that_stops_reading_ends_the_session_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [str(SCRIPT), "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=_env(tmp_path),
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(json.dumps(INITIALIZE).encode() + b"\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["id"] == 1
        proc.stdout.close()  # gone for good, while stdin stays open: the next reply finds no reader
        for message in (
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        ):
            proc.stdin.write(json.dumps(message).encode() + b"\n")
        proc.stdin.flush()
        code = proc.wait(timeout=15)
        errors = proc.stderr.read().decode()
    finally:
        reap(proc)
    assert code == 0, errors
    assert "server.client_gone" in errors and "internal error" not in errors


@pytest.mark.parametrize("closed", [">&-", "<&-"])
def test_serving_stdio_with_a_closed_stdin_or_stdout_is_refused_with_a_clear_error(
    tmp_path: Path, closed: str
) -> None:
    done = subprocess.run(
        ["sh", "-c", f'exec "{SCRIPT}" serve {closed}'],
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
        env=_env(tmp_path),
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert "stdio needs the process's stdin and stdout open" in done.stderr
    assert "internal error" not in done.stderr


def test_a_dask_scheduler_nobody_answers_is_a_clear_error_and_the_server_still_exits_at_eof(
    tmp_path: Path,
) -> None:
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    env = {**_env(tmp_path), "CODOMYRMEX_EXECUTOR": "dask", "CODOMYRMEX_DASK_SCHEDULER": address}
    env["DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT"] = "2s"  # Dask's own knob: no 30 s wait per call
    proc = subprocess.Popen(
        [str(SCRIPT), "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=env,
        text=True,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        call = {"name": "list_workflows", "arguments": {}}
        for message in (
            INITIALIZE,
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call},
        ):
            proc.stdin.write(json.dumps(message) + "\n")
        proc.stdin.flush()
        replies = [json.loads(proc.stdout.readline()) for _ in range(2)]
        proc.stdin.close()  # the client is gone: the server must end although its engine never started
        code = proc.wait(timeout=30)
        errors = proc.stderr.read()
    finally:
        reap(proc)
    result = replies[1]["result"]
    text = result["content"][0]["text"]
    assert result["isError"] and text.startswith("CODOMYRMEX_DASK_SCHEDULER: cannot connect"), text
    assert repr(address) in text and "internal error" not in errors
    assert code == 0, errors


def test_serving_with_a_malformed_dask_scheduler_address_is_refused_naming_the_variable(
    tmp_path: Path,
) -> None:
    env = {**_env(tmp_path), "CODOMYRMEX_EXECUTOR": "dask", "CODOMYRMEX_DASK_SCHEDULER": "notaurl"}
    command = [str(SCRIPT), "serve"]
    done = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, cwd=tmp_path, env=env, text=True, timeout=30
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: CODOMYRMEX_DASK_SCHEDULER: 'notaurl' is not the address"), (
        done.stderr
    )


def _read_exactly(fd: int, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.read(fd, min(size, 65536))
        assert chunk, "the pipe closed early"
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


async def test_stdout_lines_write_whole_messages_and_divert_stray_output(tmp_path: Path) -> None:
    stray = tmp_path / "stray"
    read_end, write_end = os.pipe()
    saved_stderr = os.dup(2)
    stray_fd = os.open(stray, os.O_WRONLY | os.O_CREAT)
    os.dup2(stray_fd, 2)  # the diverted fd points at stderr: a file here, to read back
    try:
        wire = _StdoutLines(write_end)
        try:
            os.write(write_end, b"stray output\n")  # as a print() or a child would, on fd "1"
            small = json.dumps({"id": 1, "text": "é" * 100}) + "\n"
            large = json.dumps({"id": 2, "text": "x" * 100_000}) + "\n"  # > PIPE_BUF, > the pipe's buffer
            await wire.write(small)
            await wire.flush()
            assert _read_exactly(read_end, len(small.encode())) == small.encode()
            received: list[bytes] = []
            reader = threading.Thread(target=lambda: received.append(_read_exactly(read_end, len(large))))
            reader.start()
            with anyio.fail_after(30):
                await wire.write(large)
            reader.join(30)
            assert received == [large.encode()]
        finally:
            wire.close()
        os.write(write_end, b"after\n")  # close() gave the descriptor back to the wire
        assert os.read(read_end, 100) == b"after\n"
    finally:
        os.dup2(saved_stderr, 2)
        for fd in (saved_stderr, stray_fd, read_end, write_end):
            os.close(fd)
    assert stray.read_bytes() == b"stray output\n"


@pytest.mark.parametrize("non_blocking", [False, True], ids=["blocking", "non-blocking"])
async def test_a_long_write_to_a_full_pipe_leaves_the_event_loop_free(non_blocking: bool) -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, not non_blocking)  # some clients hand their child a non-blocking pipe
    wire = _StdoutLines(write_end)
    message = "y" * 300_000 + "\n"  # several times the pipe's buffer: the writer must wait for the reader
    checked = threading.Event()
    received: list[bytes] = []

    def drain() -> None:
        checked.wait(20)  # drains once the loop has looked (or, if the loop is stuck, after 20 s anyway)
        received.append(_read_exactly(read_end, len(message)))

    reader = threading.Thread(target=drain)
    reader.start()
    written = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:

            async def write() -> None:
                await wire.write(message)
                written.set()

            tg.start_soon(write)
            await anyio.wait_all_tasks_blocked()
            loop_was_free = not written.is_set()  # reached while the pipe is full and nobody reads
            checked.set()
            with anyio.fail_after(30):
                await written.wait()
        reader.join(30)
    finally:
        checked.set()
        wire.close()
        os.close(read_end)
        os.close(write_end)
    assert loop_was_free
    assert received == [message.encode()]


# --------------------------------------------------------------------------- malformed input on the wire


class _Wire:
    """A real ``serve`` subprocess fed raw bytes; replies are read by a thread into a queue, so a reply
    that never comes fails the test after a bounded wait instead of hanging it."""

    def __init__(self, tmp_path: Path, env: dict[str, str] | None = None, *, initialize: bool = True) -> None:
        import queue

        self.stderr_path = tmp_path / "stderr.log"
        with self.stderr_path.open("wb") as stderr:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [str(SCRIPT), "serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=tmp_path,
                env={**_env(tmp_path), **(env or {})},
            )
        self.replies: queue.Queue[dict[str, object]] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if initialize:  # else a fresh process, whose first request decides its protocol era
            self.send(json.dumps(INITIALIZE).encode())
            self.initialized = self.reply()  # the answer to INITIALIZE (protocol 2025-06-18)
            assert self.initialized["id"] == 1

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.replies.put(json.loads(line))

    def send(self, raw: bytes, newline: bool = True) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(raw + (b"\n" if newline else b""))
        self.proc.stdin.flush()

    def reply(self) -> dict[str, object]:
        return self.replies.get(timeout=20)

    def request(self, request_id: int, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a request and return the answer to it (notifications in between are passed over)."""
        message = {"jsonrpc": "2.0", "id": request_id, "method": method}
        self.send(json.dumps(message | ({"params": params} if params is not None else {})).encode())
        while True:
            reply = self.reply()
            if reply.get("id") == request_id:
                return dict(reply)

    def close(self) -> str:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            assert self.proc.wait(timeout=20) == 0
        finally:
            reap(self.proc)
            self.reader.join(5)
        return self.stderr_path.read_text()


def test_malformed_lines_get_json_rpc_errors_and_the_server_keeps_serving(tmp_path: Path) -> None:
    deep = b'{"jsonrpc": "2.0", "id": 8, "method": "ping", "params": {"a": ' + b"[" * 100_000 + b"]" * 100_000
    cases: list[tuple[bytes, int, object]] = [
        (b"this is not json", -32700, None),
        (b'{"jsonrpc": "2.0", "id": 2, "method": "ping"', -32700, None),
        (b"\xff\xfe{}", -32700, None),
        (b'[{"jsonrpc": "2.0", "id": 3, "method": "ping"}]', -32600, None),
        (b'{"jsonrpc": "1.0", "id": 4, "method": "ping"}', -32600, 4),
        (b'{"jsonrpc": "2.0", "id": 5}', -32600, 5),
        (b'{"jsonrpc": "2.0", "id": "six", "method": "ping", "params": {"x": "\\ud800"}}', -32600, "six"),
        (b"42", -32600, None),
        (deep + b"}}", -32600, None),
    ]
    wire = _Wire(tmp_path)
    try:
        for raw, code, request_id in cases:
            wire.send(raw)
            reply = wire.reply()
            assert reply["jsonrpc"] == "2.0" and reply["id"] == request_id, (raw[:60], reply)
            error = reply["error"]
            assert isinstance(error, dict) and error["code"] == code, (raw[:60], reply)
        wire.send(b'{"jsonrpc": "2.0", "id": 99, "method": "ping"}')
        assert wire.reply() == {"jsonrpc": "2.0", "id": 99, "result": {}}
    finally:
        errors = wire.close()
    warnings = [line for line in errors.splitlines() if "stdio.malformed_message" in line]
    assert len(warnings) == len(cases), errors
    assert all("warn" in line.lower() for line in warnings), warnings


def test_a_line_above_the_limit_is_refused_and_discarded_not_buffered(tmp_path: Path) -> None:
    wire = _Wire(tmp_path, {"CODOMYRMEX_STDIO_MAX_LINE_BYTES": "65536"})
    try:
        for _ in range(64):  # 4 MiB of one line, in pieces, no newline yet
            wire.send(b"x" * 65536, newline=False)
        reply = wire.reply()  # refused while it streams in, before its end arrives
        error = reply["error"]
        assert reply["id"] is None and isinstance(error, dict) and error["code"] == -32600
        assert "CODOMYRMEX_STDIO_MAX_LINE_BYTES" in str(error["message"])
        wire.send(b"x" * 65536)  # the rest of the same line, then a good message
        wire.send(b'{"jsonrpc": "2.0", "id": 7, "method": "ping"}')
        assert wire.reply() == {"jsonrpc": "2.0", "id": 7, "result": {}}
        assert wire.replies.empty()
    finally:
        errors = wire.close()
    assert errors.count("stdio.malformed_message") == 1, errors


def test_a_long_valid_line_is_read_whole(tmp_path: Path) -> None:
    wire = _Wire(tmp_path)
    try:
        big = {"jsonrpc": "2.0", "id": 9, "method": "ping", "params": {"_meta": {"pad": "y" * 20_000_000}}}
        wire.send(json.dumps(big).encode())
        assert wire.reply() == {"jsonrpc": "2.0", "id": 9, "result": {}}
    finally:
        wire.close()


def test_a_request_whose_id_is_not_a_string_or_an_integer_is_an_invalid_request(tmp_path: Path) -> None:
    # MCP: a request id is a string or an integer, never null; the SDK would read these as notifications
    # and drop them, leaving the client waiting for an answer that never comes.
    ids = ["null", "true", "1.5", "1.0", "1e2", "[1]", '{"n": 1}']
    keys = ['"id": ', '"id"  :\tnull, "x": ', '"\\u0069d": ']  # spaced, or spelled with an escape
    lines = [f'{{"jsonrpc": "2.0", {keys[0]}{raw_id}, "method": "ping"}}' for raw_id in ids]
    lines += [f'{{"jsonrpc": "2.0", {key}null, "method": "ping"}}' for key in keys[1:]]
    wire = _Wire(tmp_path)
    try:
        for line in lines:
            wire.send(line.encode())
            reply = wire.reply()
            error = reply["error"]
            assert reply["id"] is None and isinstance(error, dict), (line, reply)
            assert error["code"] == -32600 and '"id"' in str(error["message"]), (line, reply)
        # A notification whose parameters hold an "id" is a notification: no answer (the next reply is
        # the ping's, written after anything said about the line before it).
        wire.send(b'{"jsonrpc": "2.0", "method": "notifications/x", "params": {"id": null}}')
        wire.send(b'{"jsonrpc": "2.0", "id": 0, "method": "ping"}')
        assert wire.reply() == {"jsonrpc": "2.0", "id": 0, "result": {}}
    finally:
        errors = wire.close()
    assert errors.count("stdio.malformed_message") == len(lines), errors


def test_a_byte_order_mark_before_a_message_is_ignored_and_other_encodings_are_parse_errors(
    tmp_path: Path,
) -> None:
    # RFC 8259 lets a parser ignore a byte order mark; the wire is UTF-8, so UTF-16 is not JSON to it.
    utf16 = b"\xff\xfe" + '{"jsonrpc": "2.0", "id": 3, "method": "ping"}'.encode("utf-16-le")
    wire = _Wire(tmp_path)
    try:
        wire.send(b'\xef\xbb\xbf{"jsonrpc": "2.0", "id": "bom", "method": "ping"}')
        assert wire.reply() == {"jsonrpc": "2.0", "id": "bom", "result": {}}
        wire.send(utf16)
        reply = wire.reply()
        error = reply["error"]
        assert reply["id"] is None and isinstance(error, dict), reply
        assert error["code"] == -32700 and str(error["message"]).startswith("Parse error"), reply
        wire.send(b'{"jsonrpc": "2.0", "id": 4, "method": "ping"}')
        assert wire.reply() == {"jsonrpc": "2.0", "id": 4, "result": {}}
    finally:
        wire.close()


# --------------------------------------------------------------------------- text that is not UTF-8


def _not_utf8_env(data_dir: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODOMYRMEX_")}
    return {**env, "CODOMYRMEX_DATA_DIR": data_dir, **extra}


async def test_paths_and_names_that_are_not_utf8_are_shown_replaced_and_the_server_keeps_serving(
    tmp_path: Path,
) -> None:
    """A data folder and a template's file named with bytes that are not UTF-8 (the OS hands them over as
    lone surrogates) made the server's reply unencodable: the stdio server exited ("internal error
    (ExceptionGroup ...)") and every later call got "Connection closed"."""
    data = tmp_path / os.fsdecode(b"lat\xe9")
    templates = data / "config" / "templates" / "projects"
    (templates / "mine" / "files").mkdir(parents=True)
    (templates / "mine.json").write_text(json.dumps({"name": "mine", "type": "custom"}), encoding="utf-8")
    (templates / "mine" / "files" / os.fsdecode(b"caf\xe9.txt")).write_text("hi", encoding="utf-8")
    params = StdioServerParameters(
        command=str(SCRIPT), args=["serve"], cwd=tmp_path, env=_not_utf8_env(str(data))
    )
    with anyio.fail_after(60):
        async with Client(params) as client:
            status = await client.call_tool("get_system_status", {})
            health = await client.call_tool("get_health_status", {})
            listed = await client.call_tool("list_project_templates", {})
            tools = await client.list_tools()  # the server still serves
    assert not status.is_error and not health.is_error and not listed.is_error
    assert status.structured_content is not None
    assert "lat\ufffd" in json.dumps(status.structured_content, ensure_ascii=False)
    assert "lat\ufffd" in str(health.content[0].text)
    assert listed.structured_content is not None
    mine = next(t for t in listed.structured_content["templates"] if t["name"] == "mine")
    assert mine["files"] == ["caf\ufffd.txt"]
    assert len(tools.tools) == 24


async def test_under_a_c_locale_a_utf8_data_folder_reads_right_and_create_project_explains_the_path(
    tmp_path: Path,
) -> None:
    """With LC_ALL=C and UTF-8 mode off, Python decodes the UTF-8 bytes of ``ü`` to lone surrogates:
    get_system_status killed the server and create_project was an internal error."""
    data = str(tmp_path / "data ü c")
    env = _not_utf8_env(data, LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    params = StdioServerParameters(command=str(SCRIPT), args=["serve"], cwd=tmp_path, env=env)
    with anyio.fail_after(60):
        async with Client(params) as client:
            status = await client.call_tool("get_system_status", {})
            created = await client.call_tool("create_project", {"name": "p1", "template": "ai_analysis"})
            projects = await client.call_tool("list_projects", {})
    assert not status.is_error and "data ü c" in str(status.content[0].text)
    assert created.is_error
    message = str(created.content[0].text)
    assert "internal error" not in message
    assert "parameters.project_path" in message and "not valid UTF-8" in message and "PYTHONUTF8=1" in message
    assert projects.structured_content is not None and projects.structured_content["count"] == 0


async def test_a_message_that_cannot_be_encoded_becomes_an_error_reply_and_the_writer_goes_on() -> None:
    """The general guard behind the fixes above: the SDK's writer died on the first message holding a lone
    surrogate, and the stdio server with it. Now a reply becomes an error reply to its request, a
    notification is sent with the text replaced, and the messages after them are written."""
    import mcp_types as types
    from mcp.shared.message import SessionMessage

    from codomyrmex_orchestration.server._wire import encoded_writes

    bad = types.JSONRPCResponse(jsonrpc="2.0", id=7, result={"path": "/tmp/lat\udce9"})
    note = types.JSONRPCNotification(
        jsonrpc="2.0", method="notifications/message", params={"data": "caf\udce9"}
    )
    good = types.JSONRPCResponse(jsonrpc="2.0", id=8, result={"ok": True})
    read_end, write_end = os.pipe()
    wire = _StdoutLines(write_end)  # the real wire writer, on a pipe
    try:
        with anyio.fail_after(30):
            async with encoded_writes(wire) as write:
                for message in (bad, note, good):
                    await write.send(SessionMessage(message))
    finally:
        wire.close()
        os.close(write_end)
    with os.fdopen(read_end, "rb") as wire_out:
        lines = [json.loads(line) for line in wire_out.read().splitlines()]
    error, notified, answered = lines
    assert error["id"] == 7 and error["error"]["code"] == types.INTERNAL_ERROR
    assert "not valid UTF-8" in error["error"]["message"] and "ref " in error["error"]["message"]
    assert notified["params"]["data"] == "caf\ufffd"
    assert answered == {"jsonrpc": "2.0", "id": 8, "result": {"ok": True}}


#: Every protocol version the server serves, newest first (the spec's example for a server of both eras
#: lists "2026-07-28", "2025-11-25"): 2026-07-28 per request, the others by the initialize handshake.
SERVED_VERSIONS = ["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"]


def envelope(version: str) -> dict[str, Any]:
    """A 2026-07-28 request's ``params._meta`` claiming protocol ``version``."""
    return {
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": version,
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"},
            "io.modelcontextprotocol/clientCapabilities": {},
        }
    }


def test_discover_and_an_unsupported_version_name_every_version_served_newest_first(tmp_path: Path) -> None:
    # They named 2026-07-28 only, while initialize with 2025-11-25 (and older) is served too.
    wire = _Wire(tmp_path, initialize=False)
    try:
        discovered = wire.request(1, "server/discover", envelope("2026-07-28"))
        refused = wire.request(2, "tools/list", envelope("1900-01-01"))
    finally:
        wire.close()
    assert discovered["result"]["supportedVersions"] == SERVED_VERSIONS
    assert refused["error"]["code"] == -32022
    assert refused["error"]["data"] == {"supported": SERVED_VERSIONS, "requested": "1900-01-01"}
    for version in SERVED_VERSIONS[1:]:  # served indeed: each one a fresh process's handshake takes
        legacy = _Wire(tmp_path, initialize=False)
        try:
            opened = {
                "protocolVersion": version,
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            }
            answer = legacy.request(1, "initialize", opened)
        finally:
            legacy.close()
        assert answer["result"]["protocolVersion"] == version


def test_a_request_before_initialize_is_told_what_each_protocol_era_needs_first(tmp_path: Path) -> None:
    # It got -32602 "Invalid request parameters" with data "", naming nothing.
    wire = _Wire(tmp_path, initialize=False)
    try:
        early = [wire.request(1, "tools/list", {}), wire.request(2, "resources/list")]
        pong = wire.request(3, "ping")  # the one request the handshake does not gate
        opened = wire.request(4, "initialize", INITIALIZE["params"])
        wire.send(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}')
        listed = wire.request(5, "tools/list", {})
    finally:
        wire.close()
    for answer, method in zip(early, ("tools/list", "resources/list"), strict=True):
        error = answer["error"]
        assert error["code"] == -32602 and error["data"] == {"method": method}, error
        message = error["message"]
        assert message.startswith(f"{method} before initialize"), message
        assert "send initialize first" in message and "2025-11-25" in message, message
        assert "2026-07-28" in message and "'io.modelcontextprotocol/protocolVersion'" in message, message
    assert pong["result"] == {} and opened["result"]["protocolVersion"] == "2025-06-18"
    assert len(listed["result"]["tools"]) == 24


async def test_over_stdio_a_map_items_large_output_is_a_marker_read_a_page_at_a_time(tmp_path: Path) -> None:
    step = {"name": "m", "module": "core", "action": "echo", "parameters": {"message": "{{item}}"}}
    workflow = {"name": "bigitems", "steps": [{**step, "for_each": ["p" * 300_000, "q" * 300_000]}]}
    params = StdioServerParameters(command=str(SCRIPT), args=["serve"], cwd=tmp_path, env=_env(tmp_path))
    with anyio.fail_after(60):
        async with Client(params) as client:
            assert not (await client.call_tool("create_workflow", workflow)).is_error
            run = await client.call_tool("execute_workflow", {"workflow_name": "bigitems"})
            assert run.structured_content is not None, run.content
            pages: list[str] = []
            offset: int | None = 0
            while offset is not None:
                args = {
                    "run_id": run.structured_content["run_id"],
                    "step": "m",
                    "item": 0,
                    "value_offset": offset,
                }
                page = await client.call_tool("get_workflow_run", args)
                assert page.structured_content is not None, page.content
                pages.append(page.structured_content["value"]["json_text"])
                offset = page.structured_content["value"]["next_offset"]
            past = await client.call_tool("get_workflow_run", {**args, "item": 2})
    items = run.structured_content["steps"]["m"]["items"]
    assert (
        run.structured_content["status"] == "completed"
        and len(json.dumps(run.structured_content)) <= 256 * 1024
    )
    assert items["items"][0]["output"]["omitted"]["read"]["item"] == 0 and items["next_offset"] == 1
    assert "p" * 300_000 in "".join(pages) and len(pages) == 3
    assert past.is_error and "item: step 'm' has items 0 to 1; got 2" in past.content[0].text  # type: ignore[union-attr]


# ------------------------------------------------------------------ the engine, built as the server listens


class _Lines:
    """A process's stderr read by a thread; :meth:`wait_for` waits (bounded) for a line holding a word."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, word: str, timeout: float = 30) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: any(word in line for line in self.lines), timeout)

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "".join(self.lines)


def _stdio_server(tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [str(SCRIPT), "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=tmp_path, env=env or _env(tmp_path), text=True,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    for message in (INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"}):
        proc.stdin.write(json.dumps(message) + "\n")
    proc.stdin.flush()
    return proc


def test_a_state_file_that_is_not_a_database_stops_the_server_at_start_with_exit_2_and_one_error_line(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "state.db").write_bytes(os.urandom(8192))
    proc = _stdio_server(tmp_path)
    try:
        assert proc.stderr is not None
        # No tool call, and the client stays connected: before, the server served on (every call failing,
        # nothing logged) until its client went, then exited 0.
        code = proc.wait(timeout=30)
        errors = proc.stderr.read()
    finally:
        reap(proc)
    assert code == 2, errors
    [logged] = [line for line in errors.splitlines() if "server.start_failed" in line]
    assert "file is not a database" in logged and "move it away" in logged and "exit 2" in logged
    assert errors.splitlines()[-1].startswith(
        f"error: state store {state / 'state.db'}: file is not a database"
    )
    assert "Traceback" not in errors and "internal error" not in errors


def test_a_run_left_running_by_a_crashed_server_is_interrupted_as_the_next_server_starts_before_any_call(
    tmp_path: Path,
) -> None:
    from codomyrmex_orchestration.core.models import RunRecord, WorkflowStatus
    from codomyrmex_orchestration.core.store import SqliteStore

    store = SqliteStore(tmp_path / "state" / "state.db")  # as a server killed mid-run left it
    store.save_run(RunRecord(run_id="left-running", workflow_name="slow", status=WorkflowStatus.RUNNING))
    store.flush()
    store.close()
    proc = _stdio_server(tmp_path)
    try:
        assert proc.stderr is not None
        logs = _Lines(proc.stderr)
        built = logs.wait_for("server.health")  # the first verdict: recovery has run before it
        shown = subprocess.run(
            [str(SCRIPT), "show", "left-running", "--json"],
            capture_output=True, text=True, cwd=tmp_path, env=_env(tmp_path), timeout=60,
        )  # fmt: skip
        proc.stdin.close()  # type: ignore[union-attr]
        code = proc.wait(timeout=30)
    finally:
        reap(proc)
    assert json.loads(shown.stdout)["status"] == "interrupted", (shown.stdout, logs.text())
    assert built and code == 0, logs.text()


def test_healthz_reports_the_engine_verdict_and_answers_503_when_a_critical_part_is_unhealthy(
    tmp_path: Path,
) -> None:
    import shutil

    import httpx

    with served(tmp_path) as server:

        async def health_status() -> dict[str, Any]:
            async with Client(server.url) as client:
                result = await client.call_tool("get_health_status", {})
            assert result.structured_content is not None
            return result.structured_content

        assert anyio.run(health_status)["overall_status"] == "healthy"
        healthy = httpx.get(f"{server.base}/healthz", timeout=10)
        shutil.rmtree(server.state_dir)  # the state directory deleted under the running server
        assert anyio.run(health_status)["overall_status"] == "unhealthy"
        unhealthy = httpx.get(f"{server.base}/healthz", timeout=10)
    assert healthy.status_code == 200, healthy.text
    assert healthy.json()["status"] == "healthy" and healthy.json()["issues"] == []
    assert unhealthy.status_code == 503, unhealthy.text
    body = unhealthy.json()
    assert body["status"] == "unhealthy" and body["server"] == "codomyrmex-orchestration"
    assert [issue for issue in body["issues"] if issue.startswith("store: ")], body


def test_a_server_stopping_with_writes_it_could_not_save_says_so_and_exits_1(tmp_path: Path) -> None:
    # Another process holds the database's write lock through the server's whole shutdown: the writes
    # queued meanwhile are never saved. Before, the server logged it at warning level and exited 0.
    import sqlite3

    proc = _stdio_server(tmp_path)
    holder = None
    try:
        assert proc.stdin is not None and proc.stderr is not None
        logs = _Lines(proc.stderr)
        assert logs.wait_for("server.health"), logs.text()  # the engine and its store are open
        holder = sqlite3.connect(tmp_path / "state" / "state.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        step = {"name": "s", "module": "core", "action": "echo", "parameters": {"message": "hi"}}
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "create_workflow", "arguments": {"name": "held", "steps": [step]}},
        }
        proc.stdin.write(json.dumps(call) + "\n")
        proc.stdin.flush()
        assert logs.wait_for("state_store_cannot_save", timeout=60), logs.text()
        proc.stdin.close()
        code = proc.wait(timeout=60)
    finally:
        if holder is not None:
            holder.close()
        reap(proc)
    errors = logs.text()
    assert code == 1, errors
    [lost] = [line for line in errors.splitlines() if "server.lost_writes" in line]
    assert "could not save" in lost
