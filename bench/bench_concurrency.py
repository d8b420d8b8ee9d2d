"""Benchmark 5: N concurrent MCP clients over streamable HTTP calling ``execute_task`` (core.echo).

Our server runs as a real subprocess (``codomyrmex-orchestration serve --transport streamable-http`` on a
free loopback port, state in a temporary directory); N = 1, 10, 50 clients, each with its own session,
call ``execute_task`` (``wait`` true) ``--calls`` times at once. Prints calls/s, p50/p99 latency and
errors per N.

    .venv/bin/python bench/bench_concurrency.py [--calls 20] [--clients 1,10,50] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

SCRIPT = Path(sys.executable).parent / "codomyrmex-orchestration"
ARGS = {"name": "bench", "module": "core", "action": "echo", "parameters": {"message": "hi"}, "wait": True}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _client(url: str, calls: int, latencies: list[float], errors: list[str]) -> None:
    try:
        async with Client(url) as client:
            for _ in range(calls):
                start = time.perf_counter()
                try:
                    result = await client.call_tool("execute_task", ARGS)
                    if result.is_error:
                        errors.append(str(result.content)[:200])
                        continue
                except Exception as exc:  # a benchmark counts failures instead of stopping at the first
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    continue
                latencies.append(time.perf_counter() - start)
    except Exception as exc:  # connecting failed: every call of this client counts as an error
        errors.extend([f"connect: {type(exc).__name__}: {exc}"[:200]] * calls)


async def _level(url: str, clients: int, calls: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(clients):
            tg.start_soon(_client, url, calls, latencies, errors)
    elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(p: float) -> float:
        return (
            round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e3, 2) if latencies else 0.0
        )

    return {
        "clients": clients,
        "calls": clients * calls,
        "ok": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "calls_per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)  # polling a port that is not open yet; nothing to wait on instead
    raise RuntimeError(f"the server did not listen on port {port} within {timeout:g} s")


def run(calls: int = 20, levels: tuple[int, ...] = (1, 10, 50)) -> dict[str, Any]:
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CODOMYRMEX_")}
        env.update(CODOMYRMEX_LOG_LEVEL="warning")
        proc = subprocess.Popen(
            [
                str(SCRIPT),
                "serve",
                "--transport",
                "streamable-http",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--state-dir",
                f"{tmp}/state",
                "--config-dir",
                f"{tmp}/config",
                "--projects-dir",
                f"{tmp}/p",
            ],
            cwd=tmp,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_listening(port, proc)
            url = f"http://127.0.0.1:{port}/mcp"
            anyio.run(_level, url, 1, 5)  # warm-up
            results = [anyio.run(_level, url, n, calls) for n in levels]
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    return {"calls_per_client": calls, "levels": results}


def report(f: dict[str, Any]) -> str:
    lines = [
        f"Concurrency: execute_task (core.echo) over streamable HTTP, {f['calls_per_client']} calls/client"
    ]
    lines.append(f"  {'clients':>7} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for lv in f["levels"]:
        lines.append(
            f"  {lv['clients']:7d} {lv['calls_per_second']:9.1f} {lv['p50_ms']:8.2f} {lv['p99_ms']:8.2f}"
            f" {lv['errors']:7d}"
        )
        if lv["first_error"]:
            lines.append(f"    first error: {lv['first_error']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--clients", default="1,10,50")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = run(args.calls, tuple(int(n) for n in args.clients.split(",")))
    print(json.dumps(figures) if args.json else report(figures))


if __name__ == "__main__":
    main()
