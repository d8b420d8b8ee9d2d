"""Tool-call round trips against a bare SDK echo tool, same run: stdio and streamable HTTP.

Our server (``list_workflows`` and ``execute_task`` of ``core.echo``) and a bare low-level SDK server
with one echo tool run as real subprocesses, driven by the mcp Client. The bare server also serves
``echo_shaped``: a result of ``execute_task``'s shape under its output schema (see ``_echo_server``),
so ``execute_task`` reads against two floors: the bare echo (the target's) and what the SDK itself
spends on a result of that shape (``x shaped``: what our server adds over it). Each round runs ``calls`` calls
of every case back to back (the order rotates from round to round); a case's ratio is the median over
the rounds of its mean against the bare tool's mean *in the same round*, so that the machine's drift
between rounds cancels out (on the shared 2-core VM the bare tool alone moves by tens of percent). The
range of those per-round ratios is printed beside it; mean, p50 and p99 come from every call. A
benchmark, not a test.

Our stdio transport reads and writes the pipe from the event loop (``server.app._StdinLines`` and
``_StdoutLines``) where the bare server uses the SDK's ``stdio_server`` (a worker thread per read, two
per reply): part of the stdio ratio is that transport, not the tools.

    .venv/bin/python bench/bench_mcp_roundtrip.py [--calls 50] [--rounds 20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
from mcp import Client, StdioServerParameters

HERE = Path(__file__).resolve().parent
SCRIPT = Path(sys.executable).parent / "codomyrmex-orchestration"
ECHO_TASK = {"name": "e", "module": "core", "action": "echo", "parameters": {"message": 1}}


def _write_shaped(path: Path) -> None:
    """The output schema of ``execute_task`` and a result as it returns for ``ECHO_TASK``."""
    from datetime import UTC, datetime

    from codomyrmex_orchestration.server._models import TaskResult
    from codomyrmex_orchestration.server.tools import OrchestrationMCPTools

    definitions = OrchestrationMCPTools().get_tool_definitions()
    schema = next(d["outputSchema"] for d in definitions if d["name"] == "execute_task")
    now = datetime.now(UTC)
    result = TaskResult(
        task_id="t-0a1b2c3d-1",
        name="e",
        status="completed",
        result=1,
        attempts=1,
        started_at=now,
        finished_at=now,
        duration_seconds=3.5e-05,
    )
    path.write_text(json.dumps({"output_schema": schema, "result": result.model_dump(mode="json")}))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _http_server(args: list[str], env: dict[str, str], cwd: str) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen([*args, str(port)], env=env, cwd=cwd, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:  # readiness: the port answers (bounded)
            try:
                httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"server {args} did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)


async def _round(client: Client, tool: str, args: dict[str, Any], calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        result = await client.call_tool(tool, args)
        times.append(time.perf_counter() - start)
        assert not result.is_error, result
    return times


def _stats(times: list[float]) -> tuple[float, float, float]:
    ordered = sorted(times)
    mean = sum(ordered) / len(ordered)
    return mean, ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


Rounds = list[dict[str, list[float]]]  # per round: case label -> the round's call times


async def _compare(ours: Client, bare: Client, calls: int, rounds: int) -> Rounds:
    cases = [
        ("bare echo", bare, "echo", {"x": 1}),
        ("bare shaped", bare, "echo_shaped", {"x": 1}),
        ("list_workflows", ours, "list_workflows", {}),
        ("execute_task", ours, "execute_task", ECHO_TASK),
    ]
    for _label, client, tool, args in cases:
        await _round(client, tool, args, 20)  # warm: engine built, caches filled
    measured: Rounds = []
    for index in range(rounds):
        shift = index % len(cases)  # no case always runs first, or always right after another
        times = {}
        for label, client, tool, args in cases[shift:] + cases[:shift]:
            times[label] = await _round(client, tool, args, calls)
        measured.append(times)
    return measured


def _median_ratio(measured: Rounds, label: str, floor: str) -> list[float]:
    """Per round, the ratio of means (same round, same number of calls), sorted."""
    return sorted(sum(times[label]) / sum(times[floor]) for times in measured)


def _report(transport: str, measured: Rounds) -> None:
    for label in ("bare echo", "bare shaped", "list_workflows", "execute_task"):
        mean, p50, p99 = _stats([t for times in measured for t in times[label]])
        ratios = _median_ratio(measured, label, "bare echo")
        shaped = (
            f"  x shaped {statistics.median(_median_ratio(measured, label, 'bare shaped')):5.2f}"
            if label == "execute_task"
            else ""
        )
        print(
            f"{transport:<6} {label:<16} mean {mean * 1e6:7.0f} µs  p50 {p50 * 1e6:7.0f} µs  "
            f"p99 {p99 * 1e6:7.0f} µs  ratio {statistics.median(ratios):5.2f}  "
            f"(rounds {ratios[0]:.2f}-{ratios[-1]:.2f}){shaped}"
        )


@contextlib.asynccontextmanager
async def _clients(ours: Any, bare: Any) -> AsyncIterator[tuple[Client, Client]]:
    async with Client(ours) as our_client, Client(bare) as bare_client:
        yield our_client, bare_client


async def main(calls: int, rounds: int, transport: str = "both") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CODOMYRMEX_")}
        env.update(
            CODOMYRMEX_STATE_DIR=f"{tmp}/state",
            CODOMYRMEX_CONFIG_DIR=f"{tmp}/config",
            CODOMYRMEX_LOG_LEVEL="warning",
        )
        shaped = Path(tmp) / "shaped.json"
        _write_shaped(shaped)
        bare_args = [str(HERE / "_echo_server.py"), "--shaped", str(shaped)]
        ours = StdioServerParameters(command=str(SCRIPT), args=["serve"], cwd=tmp, env=env)
        bare = StdioServerParameters(command=sys.executable, args=bare_args, cwd=tmp)
        stdio: Rounds | None = None
        http: Rounds | None = None
        if transport in ("both", "stdio"):
            async with _clients(ours, bare) as (our_client, bare_client):
                stdio = await _compare(our_client, bare_client, calls, rounds)
        if transport == "stdio":
            _print(calls, rounds, stdio, http)
            return
        http_env = {**env, "CODOMYRMEX_STATE_DIR": f"{tmp}/state-http"}
        our_args = [str(SCRIPT), "serve", "--transport", "streamable-http", "--port"]
        with (
            _http_server(our_args, http_env, tmp) as our_url,
            _http_server([sys.executable, *bare_args, "--http"], env, tmp) as bare_url,
        ):
            async with _clients(our_url, bare_url) as (our_client, bare_client):
                http = await _compare(our_client, bare_client, calls, rounds)
    _print(calls, rounds, stdio, http)


def _print(calls: int, rounds: int, stdio: Rounds | None, http: Rounds | None) -> None:
    print(f"calls per round: {calls}, rounds: {rounds} (ratio: median of same-round ratios)")
    if stdio is not None:
        _report("stdio", stdio)
    if http is not None:
        _report("http", http)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--transport", choices=("both", "stdio", "http"), default="both")
    ns = parser.parse_args()
    anyio.run(main, ns.calls, ns.rounds, ns.transport)
