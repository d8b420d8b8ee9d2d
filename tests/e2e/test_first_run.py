"""A first run as a new user makes it: the console script served over stdio from a folder it cannot
use and over streamable HTTP as ``make run`` serves it, with default paths (a private data directory
stands in for the user's)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.helpers.served import INITIALIZE, free_port, reap

pytestmark = pytest.mark.anyio

SCRIPT = Path(sys.executable).parent / "codomyrmex-orchestration"
NPX = shutil.which("npx")
INSPECTOR = "@modelcontextprotocol/inspector@2.12.0"  # the version tests/e2e/test_inspector.py pins
TOKEN = "first-run-token-of-some-length"
NEEDS_CODE = '{"name": "needs_code", "steps": [{"name": "py", "module": "python", "action": "call",'
NEEDS_CODE += ' "parameters": {"function": "platform:system"}}]}'


def _env(data: Path, **extra: str) -> dict[str, str]:
    """Default settings, as a desktop client starts the server: no CODOMYRMEX_* paths at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODOMYRMEX_")}
    env["XDG_DATA_HOME"] = str(data)
    env.update(extra)
    return env


def _data_dir(data: Path) -> Path:
    return data / "codomyrmex-orchestration"


async def test_a_stdio_server_started_in_a_read_only_folder_lists_and_runs_the_samples_and_leaves_it_empty(
    tmp_path: Path,
) -> None:
    cwd = tmp_path / "read-only"
    cwd.mkdir()
    cwd.chmod(0o555)
    params = StdioServerParameters(command=str(SCRIPT), args=["serve"], cwd=cwd, env=_env(tmp_path / "xdg"))
    with anyio.fail_after(60):
        async with Client(params) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            listed = (await client.call_tool("list_workflows", {})).structured_content
            run = await client.call_tool("execute_workflow", {"workflow_name": "service_report"})
            status = (await client.call_tool("get_system_status", {})).structured_content
    assert {"execute_workflow", "list_workflows", "get_health_status"} <= tools
    assert listed is not None and {w["name"] for w in listed["workflows"]} == {
        "fan_out_join",
        "service_report",
    }
    assert not run.is_error and run.structured_content is not None, run.content
    assert run.structured_content["status"] == "completed"
    assert status is not None and status["state_dir"] == str(_data_dir(tmp_path / "xdg") / ".workflows")
    assert list(cwd.iterdir()) == []
    assert (_data_dir(tmp_path / "xdg") / ".workflows" / "state.db").is_file()


@contextmanager
def _make_run(tmp_path: Path, *args: str, **env: str) -> Iterator[tuple[str, str, float]]:
    """``serve`` as ``make run`` starts it; yields the URL, the banner and the seconds from start to it."""
    port = free_port()
    command = [str(SCRIPT), "serve", "--transport", "streamable-http", "--host", "127.0.0.1"]
    started = time.monotonic()
    proc = subprocess.Popen(
        [*command, "--port", str(port), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=_env(tmp_path / "xdg", **env),
    )
    drain: threading.Thread | None = None
    try:
        assert proc.stderr is not None
        lines: list[str] = []
        for line in proc.stderr:  # the banner's last line ends the wait (or EOF if it never comes)
            lines.append(line)
            if line.lstrip().startswith("health:"):
                break
        else:
            pytest.fail("no banner: " + "".join(lines))
        banner = "".join(lines[next(i for i, x in enumerate(lines) if "serving MCP" in x) :])
        seconds = time.monotonic() - started
        # Keep reading the logs, so a full pipe never blocks the server.
        drain = threading.Thread(target=lines.extend, args=(proc.stderr,), daemon=True)
        drain.start()
        yield f"http://127.0.0.1:{port}/mcp", banner, seconds
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        finally:
            if drain is not None:
                drain.join(timeout=10)
            reap(proc)


async def _call(url: str, calls: list[tuple[str, dict[str, Any]]], token: str | None = None) -> list[Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    results = []
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            for name, arguments in calls:
                results.append(await client.call_tool(name, arguments))
    return results


async def test_make_run_serves_a_healthy_server_whose_samples_run_with_code_execution_off(
    tmp_path: Path,
) -> None:
    config = _data_dir(tmp_path / "xdg") / "config" / "workflows" / "production"
    config.mkdir(parents=True)
    (config / "needs_code.json").write_text(NEEDS_CODE)
    with _make_run(tmp_path) as (url, banner, seconds_to_banner):
        with anyio.fail_after(120):
            health, fan, report, listed, refused = await _call(
                url,
                [
                    ("get_health_status", {}),
                    ("execute_workflow", {"workflow_name": "fan_out_join"}),
                    ("execute_workflow", {"workflow_name": "service_report"}),
                    ("list_workflows", {}),
                    ("execute_workflow", {"workflow_name": "needs_code"}),
                ],
            )
    assert f"serving MCP (streamable-http) at {url}" in banner
    assert "auth:            off" in banner and "code execution:  off" in banner
    assert f"npx @modelcontextprotocol/inspector@2 --cli {url} --transport http --method tools/list" in banner
    assert health.structured_content["overall_status"] == "healthy", health.structured_content["issues"]
    # Uptime counts from the process start, not from the engine the first tool call created.
    assert health.structured_content["uptime_seconds"] >= seconds_to_banner * 0.9
    assert fan.structured_content["status"] == report.structured_content["status"] == "completed"
    needs_code = next(w for w in listed.structured_content["workflows"] if w["name"] == "needs_code")
    assert "code execution is disabled" in needs_code["refused"]
    assert refused.is_error
    message = refused.content[0].text
    assert "workflow 'needs_code' is refused by policy" in message and "CODOMYRMEX_ALLOW_SHELL" in message
    assert "not found" not in message


def test_a_busy_port_fails_the_start_without_printing_a_banner(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        done = subprocess.run(
            [str(SCRIPT), "serve", "--transport", "streamable-http", "--port", str(port)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=_env(tmp_path / "xdg"),
            timeout=60,
        )
    assert done.returncode == 2  # the documented code for a setting that cannot be used (not uvicorn's 3)
    assert (
        f"error: port: port {port} on 127.0.0.1 is in use by another process; choose another with --port "
        "or CODOMYRMEX_PORT (0 picks a free one)"
    ) in done.stderr
    assert "serving MCP" not in done.stderr


@pytest.mark.skipif(NPX is None, reason="npx (Node.js) is not installed")
def test_the_banner_inspector_command_works_as_printed_with_a_token_and_runs_both_samples(
    tmp_path: Path,
) -> None:
    with _make_run(tmp_path, CODOMYRMEX_AUTH_TOKEN=TOKEN) as (_url, banner, _seconds):
        assert "auth:            on" in banner
        (command,) = re.findall(r"list the tools:\s+(.*)", banner)
        assert '--header "Authorization: Bearer $CODOMYRMEX_AUTH_TOKEN"' in command
        # Pinned to the major the tests run (an unpinned npx on Node.js < 22.19 got 0.15: no --header).
        assert command.startswith("npx @modelcontextprotocol/inspector@2 --cli "), command
        assert INSPECTOR.startswith("@modelcontextprotocol/inspector@2.")
        command = command.replace("npx @modelcontextprotocol/inspector@2 ", f"npx -y {INSPECTOR} ", 1)
        listed = _shell(command, tmp_path)
        # Both samples run to completed through the Inspector over HTTP (code execution is off).
        runs = [
            json.loads(
                _shell(
                    command.replace(
                        "--method tools/list",
                        f"--method tools/call --tool-name execute_workflow --tool-arg workflow_name={sample}",
                    ),
                    tmp_path,
                )
            )
            for sample in ("fan_out_join", "service_report")
        ]
    assert '"execute_workflow"' in listed
    assert [run["structuredContent"]["status"] for run in runs] == ["completed", "completed"]


def _shell(command: str, tmp_path: Path) -> str:
    """Run ``command`` as printed, in a shell that has the token exported; its stdout."""
    shell = shutil.which("bash") or "/bin/sh"
    done = subprocess.run(
        [shell, "-c", command],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(tmp_path / "xdg", CODOMYRMEX_AUTH_TOKEN=TOKEN),
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_cli_paths_and_status_name_the_state_directory_the_server_uses(tmp_path: Path) -> None:
    env = _env(tmp_path / "xdg")
    paths = subprocess.run(
        [str(SCRIPT), "paths", "--json"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60
    )
    status = subprocess.run(
        [str(SCRIPT), "status", "--json"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60
    )
    state_dir = str(_data_dir(tmp_path / "xdg") / ".workflows")
    assert json.loads(paths.stdout)["state_dir"] == state_dir
    report = json.loads(status.stdout)
    assert report["state_dir"] == state_dir and report["overall_status"] == "healthy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xdg"]


def test_empty_settings_are_unset_so_nothing_lands_in_the_working_folder(tmp_path: Path) -> None:
    # As a client's config with "CODOMYRMEX_DATA_DIR": "" passes them: each empty value is the default.
    empty = ("DATA_DIR", "STATE_DIR", "CONFIG_DIR", "PROJECTS_DIR", "MAX_WORKERS", "DURABLE", "LOG_LEVEL")
    env = _env(tmp_path / "xdg", **{f"CODOMYRMEX_{name}": "" for name in empty})
    run = subprocess.run(
        [str(SCRIPT), "run", "fan_out_join", "--json"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""  # the commands' default log level, not the setting's "info"
    paths = subprocess.run(
        [str(SCRIPT), "paths", "--json"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60
    )
    state_dir = _data_dir(tmp_path / "xdg") / ".workflows"
    assert json.loads(paths.stdout)["state_dir"] == str(state_dir)
    assert (state_dir / "state.db").exists()  # durable: the run was recorded there
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xdg"]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("bind", ["0.0.0.0", "::"])
def test_bound_to_every_interface_the_banner_prints_urls_that_work_and_how_to_allow_other_names(
    tmp_path: Path, bind: str
) -> None:
    if bind == "::" and not _ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    import httpx

    headers = {"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {TOKEN}"}
    with _make_run(tmp_path, "--host", bind, CODOMYRMEX_AUTH_TOKEN=TOKEN) as (_url, banner, _seconds):
        (served,) = re.findall(r"serving MCP \(streamable-http\) at (\S+)", banner)
        (inspector,) = re.findall(r"list the tools:\s+npx \S+ --cli (\S+)", banner)
        (claude,) = re.findall(r"Claude Code:\s+claude mcp add --transport http orchestration (\S+)", banner)
        (health,) = re.findall(r"health:\s+curl (\S+)", banner)
        assert served == inspector == claude, banner
        answers = [
            httpx.post(served, json=INITIALIZE, headers=headers, timeout=10),
            httpx.get(health, timeout=10),
        ]
        foreign = httpx.post(served, json=INITIALIZE, headers={**headers, "Host": "evil.example"}, timeout=10)
    assert [a.status_code for a in answers] == [200, 200], (banner, [a.text[:200] for a in answers])
    assert foreign.status_code == 421  # still no other Host by default
    assert "--allowed-host" in banner and "CODOMYRMEX_ALLOWED_HOSTS" in banner, banner


def test_an_allowed_host_is_named_in_the_banner_and_accepted(tmp_path: Path) -> None:
    import httpx

    args = ("--host", "0.0.0.0", "--allowed-host", "orchestration.internal")
    with _make_run(tmp_path, *args, CODOMYRMEX_AUTH_TOKEN=TOKEN) as (_url, banner, _seconds):
        (health,) = re.findall(r"health:\s+curl (\S+)", banner)
        named = httpx.get(health.replace("/healthz", "/ui/login"), headers={"Host": "orchestration.internal"})
        other = httpx.get(health.replace("/healthz", "/ui/login"), headers={"Host": "evil.example"})
    assert "orchestration.internal" in banner, banner
    assert named.status_code == 200 and other.status_code == 421


@pytest.fixture(scope="module")
def oldest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The console script of this checkout installed with the oldest version of each dependency that
    pyproject allows (uv's ``--resolution lowest-direct``), as a user with old packages gets it."""
    uv = shutil.which("uv", path=str(SCRIPT.parent))
    if uv is None:
        pytest.skip("uv is not installed (pip install -e '.[dev]')")
    venv = tmp_path_factory.mktemp("oldest") / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_"))}
    for argv in (
        [uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
        [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
         "--resolution", "lowest-direct", str(Path(__file__).resolve().parents[2])],
    ):  # fmt: skip
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    return venv / "bin" / "codomyrmex-orchestration"


async def test_with_the_oldest_dependencies_allowed_a_workflow_call_reports_its_progress(
    oldest: Path, tmp_path: Path
) -> None:
    # anyio before 4.11 has no EventLoopToken.native_token: the call failed and no progress arrived.
    progress: list[float] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    params = StdioServerParameters(
        command=str(oldest), args=["serve"], cwd=tmp_path, env=_env(tmp_path / "xdg")
    )
    with anyio.fail_after(60):
        async with Client(params) as client:
            run = await client.call_tool(
                "execute_workflow", {"workflow_name": "fan_out_join"}, progress_callback=on_progress
            )
    assert not run.is_error, run.content
    assert run.structured_content is not None and run.structured_content["status"] == "completed"
    assert progress, "no progress notification arrived"


def _homeless(tmp_path: Path, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    """The console script as a uid with no password entry and no HOME (a container's ``--user 54321``),
    in a user namespace of its own (``unshare``), so the test needs no second account."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "--user", "--map-user=54321", "true"]).returncode:
        pytest.skip("unshare cannot make a user namespace here")
    environ = {k: v for k, v in _env(tmp_path / "xdg", **env).items() if not k.startswith(("HOME", "XDG_"))}
    return subprocess.run(
        [unshare, "--user", "--map-user=54321", "--map-group=54321", str(SCRIPT), *args],
        input=stdin, capture_output=True, text=True, cwd=tmp_path, env=environ, timeout=60,
    )  # fmt: skip


def test_without_a_home_serve_starts_with_a_data_dir_and_the_cli_says_what_to_set(tmp_path: Path) -> None:
    # Before: the tool-definition cache's folder raised at start (exit 1, no reply) even with
    # CODOMYRMEX_DATA_DIR set, and without it every command printed a traceback.
    data = tmp_path / "data"
    listed = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    served = _homeless(
        tmp_path, "serve", stdin=json.dumps(INITIALIZE) + "\n" + listed + "\n", CODOMYRMEX_DATA_DIR=str(data)
    )
    assert served.returncode == 0, served.stderr
    replies = [json.loads(line) for line in served.stdout.splitlines()]
    assert [r["id"] for r in replies] == [1, 2] and len(replies[1]["result"]["tools"]) == 24, served.stdout
    paths = json.loads(_homeless(tmp_path, "paths", "--json", CODOMYRMEX_DATA_DIR=str(data)).stdout)
    assert paths["data_dir"] == str(data) and paths["cache_dir"] is None
    for command in (["paths"], ["status"], ["run", "fan_out_join"]):
        refused = _homeless(tmp_path, *command)
        assert refused.returncode == 2, (command, refused.stderr)
        (line,) = refused.stderr.splitlines()
        assert line.startswith("error: CODOMYRMEX_DATA_DIR: ") and "absolute path" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_with_the_oldest_dependencies_allowed_a_relative_xdg_data_home_is_ignored(
    oldest: Path, tmp_path: Path
) -> None:
    # platformdirs 4.10 and before honour a relative XDG_DATA_HOME: state landed in the working folder.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = _env(tmp_path / "unused", XDG_DATA_HOME="relative", HOME=str(tmp_path / "home"))
    run = subprocess.run(
        [str(oldest), "run", "fan_out_join", "--json"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert list(cwd.iterdir()) == []
    assert (tmp_path / "home" / ".local" / "share" / "codomyrmex-orchestration" / ".workflows").is_dir()


def test_with_json_logs_every_line_serve_writes_to_stderr_is_one_json_object(tmp_path: Path) -> None:
    # The Dockerfile's setting. Before: uvicorn's and mcp's lines, and the banner, were plain text.
    port = free_port()
    proc = subprocess.Popen(
        [str(SCRIPT), "serve", "--transport", "streamable-http", "--port", str(port), "--log-level", "info"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env=_env(tmp_path / "xdg", CODOMYRMEX_LOG_FORMAT="json"),
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:  # up to the run view's link, the banner's last line
            lines.append(line)
            if "run view:" in line:
                break
        assert httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        lines += proc.stderr.readlines()
    finally:
        reap(proc)
    records = [json.loads(line) for line in lines]
    assert all(isinstance(r, dict) and {"event", "level", "timestamp"} <= r.keys() for r in records), lines
    events = {r["event"] for r in records}
    assert {"server.banner", "server.run_view", "server.stop"} <= events, events
    assert any(r.get("logger", "").startswith("uvicorn") for r in records), records
    (banner,) = (r["text"] for r in records if r["event"] == "server.banner")
    assert f"http://127.0.0.1:{port}/mcp" in banner
