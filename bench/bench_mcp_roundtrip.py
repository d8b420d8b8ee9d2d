"""Tool-call round trip over stdio: our ``list_workflows`` against a bare SDK echo tool, same run.

Both servers are real subprocesses driven by the mcp Client; rounds are interleaved and the best round
of each is kept. Prints µs per call and the ratio (ours / bare). A benchmark, not a test.

    .venv/bin/python bench/bench_mcp_roundtrip.py [--calls 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

HERE = Path(__file__).resolve().parent
SCRIPT = Path(sys.executable).parent / "codomyrmex-orchestration"


async def _round(client: Client, tool: str, args: dict[str, Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        result = await client.call_tool(tool, args)
        assert not result.is_error, result
    return (time.perf_counter() - start) / calls


async def main(calls: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CODOMYRMEX_")}
        env.update(
            CODOMYRMEX_STATE_DIR=f"{tmp}/state",
            CODOMYRMEX_CONFIG_DIR=f"{tmp}/config",
            CODOMYRMEX_LOG_LEVEL="warning",
        )
        ours = StdioServerParameters(command=str(SCRIPT), args=["serve"], cwd=tmp, env=env)
        bare = StdioServerParameters(command=sys.executable, args=[str(HERE / "_echo_server.py")], cwd=tmp)
        async with Client(ours) as our_client, Client(bare) as bare_client:
            await _round(our_client, "list_workflows", {}, 20)  # warm: engine built, caches filled
            await _round(bare_client, "echo", {"x": 1}, 20)
            best_ours = best_bare = float("inf")
            for _ in range(rounds):
                best_ours = min(best_ours, await _round(our_client, "list_workflows", {}, calls))
                best_bare = min(best_bare, await _round(bare_client, "echo", {"x": 1}, calls))
    print(f"calls per round: {calls}, rounds: {rounds} (best round kept)")
    print(f"bare SDK echo over stdio:        {best_bare * 1e6:8.0f} µs/call")
    print(f"our list_workflows over stdio:   {best_ours * 1e6:8.0f} µs/call")
    print(f"ratio (ours / bare):             {best_ours / best_bare:8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    ns = parser.parse_args()
    anyio.run(main, ns.calls, ns.rounds)
