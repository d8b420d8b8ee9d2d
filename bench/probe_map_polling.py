"""A big map run followed by a polling client, and what another client's calls wait meanwhile (the soak
tester's probe, over streamable HTTP against a running server).

Client A runs one map step of ``items`` ``core.echo`` items and follows it: ``poll``, ``get_workflow_run``
every second while it runs; ``list``, ``list_workflow_runs`` (limit 1) every 0.5 s; ``wait``, one
``execute_workflow`` that waits (no polling: the reference). Client B calls ``list_workflows`` in a loop
the whole time. Printed: the run's time as A saw it (a poller sees the end up to one pause late), and
B's latencies while idle (2 s before the run) and while the run goes (p50, p99, max).

    codomyrmex-orchestration serve --transport streamable-http --port 18931 &
    .venv/bin/python bench/probe_map_polling.py 18931 20000 poll
"""

from __future__ import annotations

import sys
import time

import anyio
from mcp import Client


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def probe(port: int, items: int, mode: str) -> str:
    url = f"http://127.0.0.1:{port}/mcp"
    async with Client(url, read_timeout_seconds=300) as a, Client(url, read_timeout_seconds=300) as b:
        step = {"name": "m", "module": "core", "action": "echo", "parameters": {"message": "{{index}}"}}
        await a.call_tool(
            "create_workflow",
            {"name": "h3", "overwrite": True, "steps": [{**step, "for_each": list(range(items))}]},
        )
        latencies: list[float] = []
        done = anyio.Event()

        async def other_client() -> None:
            while not done.is_set():
                start = time.monotonic()
                await b.call_tool("list_workflows", {})
                latencies.append(time.monotonic() - start)

        async with anyio.create_task_group() as tg:
            tg.start_soon(other_client)
            await anyio.sleep(2)
            idle = len(latencies)
            start = time.monotonic()
            if mode == "wait":
                await a.call_tool("execute_workflow", {"workflow_name": "h3"})
            else:
                started = await a.call_tool("execute_workflow", {"workflow_name": "h3", "wait": False})
                run_id = (started.structured_content or {})["run_id"]
                while await _running(a, mode, run_id):  # noqa: ASYNC110  a polling client is what is measured
                    await anyio.sleep(1 if mode == "poll" else 0.5)
            took = time.monotonic() - start
            done.set()
    busy, before = latencies[idle:], latencies[:idle]
    return (
        f"{mode}: run {took:.1f}s idle p99={_pct(before, 0.99) * 1000:.0f}ms; busy n={len(busy)} "
        f"p50={_pct(busy, 0.5) * 1000:.0f}ms p99={_pct(busy, 0.99) * 1000:.0f}ms max={max(busy) * 1000:.0f}ms"
    )


async def _running(client: Client, mode: str, run_id: str) -> bool:
    if mode == "poll":
        shown = await client.call_tool("get_workflow_run", {"run_id": run_id})
        return (shown.structured_content or {}).get("status") == "running"
    listed = await client.call_tool("list_workflow_runs", {"workflow_name": "h3", "limit": 1})
    return (listed.structured_content or {})["runs"][0]["status"] == "running"


def main() -> None:
    port, items, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    if mode not in ("poll", "list", "wait"):
        raise SystemExit(f"mode: poll, list or wait, not {mode!r}")
    print(anyio.run(probe, port, items, mode))


if __name__ == "__main__":
    main()
