"""A bounded load test over streamable HTTP on loopback: N concurrent MCP clients x M tool calls against
the real ``serve`` subprocess, mixing reads, single tasks and workflow runs.

``make load`` runs ``python -m tests.helpers.load --clients 50 --calls 200`` and prints the figures;
``tests/e2e/test_load.py`` runs a small version.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

from tests.helpers.served import Served, served

WORKFLOW = {
    "name": "load_small",
    "description": "two echoes and a set",
    "steps": [
        {"name": "a", "module": "core", "action": "echo", "parameters": {"message": 1}},
        {"name": "b", "module": "core", "action": "echo", "parameters": {"message": 2}},
        {
            "name": "c",
            "module": "core",
            "action": "set",
            "parameters": {"a": "{{steps.a.output}}", "b": "{{steps.b.output}}"},
        },
    ],
}
# (weight, tool, arguments): reads, single tasks and workflow runs.
MIX: list[tuple[int, str, dict[str, Any]]] = [
    (3, "list_workflows", {}),
    (2, "get_system_status", {}),
    (3, "execute_task", {"name": "t", "module": "core", "action": "echo", "parameters": {"message": "hi"}}),
    (2, "execute_workflow", {"workflow_name": "load_small"}),
]


@dataclass
class LoadReport:
    clients: int
    calls_per_client: int
    calls: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    throughput: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    rss_before_kib: int = 0
    rss_after_kib: int = 0
    threads_before: int = 0
    threads_after: int = 0
    by_tool: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"load: {self.clients} clients x {self.calls_per_client} calls = {self.calls} calls in "
            f"{self.seconds:.1f} s: {self.throughput:.0f} calls/s, p50 {self.p50_ms:.1f} ms, "
            f"p99 {self.p99_ms:.1f} ms, max {self.max_ms:.0f} ms, errors {self.errors}; server RSS "
            f"{self.rss_before_kib / 1024:.1f} -> {self.rss_after_kib / 1024:.1f} MiB, threads "
            f"{self.threads_before} -> {self.threads_after}"
        )


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def drive(server: Served, clients: int, calls: int, seed: int = 7) -> LoadReport:
    report = LoadReport(clients=clients, calls_per_client=calls)
    async with Client(server.url) as setup:
        created = await setup.call_tool("create_workflow", {**WORKFLOW, "overwrite": True})
        assert not created.is_error, created.content
        await setup.call_tool("get_system_status", {})  # warm up the engine before the first reading
    report.rss_before_kib = server.rss_kib()
    report.threads_before = server.threads()
    latencies: list[float] = []
    weights = [w for w, _, _ in MIX]

    async def one_client(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        async with Client(server.url) as client:
            for _ in range(calls):
                _, tool, args = rng.choices(MIX, weights)[0]
                began = time.perf_counter()
                try:
                    with anyio.fail_after(60):
                        result = await client.call_tool(tool, args)
                    failed = result.is_error or (
                        tool.startswith("execute_")
                        and (result.structured_content or {}).get("status") != "completed"
                    )
                    detail = str(result.content[0].text)[:200] if failed else ""
                except Exception as exc:
                    failed, detail = True, f"{type(exc).__name__}: {exc}"
                latencies.append(time.perf_counter() - began)
                report.by_tool[tool] = report.by_tool.get(tool, 0) + 1
                if failed:
                    report.errors += 1
                    if len(report.error_samples) < 5:
                        report.error_samples.append(f"{tool}: {detail}")

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(clients):
            tg.start_soon(one_client, i)
    report.seconds = time.perf_counter() - started
    report.calls = len(latencies)
    report.throughput = report.calls / report.seconds
    report.p50_ms = _percentile(latencies, 0.50) * 1000
    report.p99_ms = _percentile(latencies, 0.99) * 1000
    report.max_ms = max(latencies) * 1000
    report.rss_after_kib = server.rss_kib()
    report.threads_after = server.threads()
    return report


def run_load(root: Path, clients: int, calls: int, rounds: int = 1) -> list[LoadReport]:
    """``rounds`` load rounds against one server process: the RSS after each round shows whether
    memory levels off (bounded) or keeps climbing (a leak)."""
    with served(root) as server:
        reports = [anyio.run(drive, server, clients, calls, 7 + n) for n in range(rounds)]
        health = anyio.run(_health, server)
    assert health == "healthy", health
    return reports


async def _health(server: Served) -> str:
    async with Client(server.url) as client:
        result = await client.call_tool("get_health_status", {})
    return str((result.structured_content or {}).get("overall_status"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1, help="rounds against the same server process")
    parser.add_argument("--json", action="store_true", help="print the report as JSON too")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="codomyrmex-load-") as tmp:
        reports = run_load(Path(tmp), options.clients, options.calls, options.rounds)
    for number, report in enumerate(reports, 1):
        print(f"round {number}: {report.summary()}")  # noqa: T201  # the figures are this command's output
        if options.json:
            print(json.dumps(asdict(report), indent=2))  # noqa: T201  # same
        for sample in report.error_samples:
            print(f"  error: {sample}")  # noqa: T201  # same
    return 1 if any(r.errors for r in reports) else 0


if __name__ == "__main__":
    raise SystemExit(main())
