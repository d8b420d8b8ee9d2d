"""Cold start: spawn -> initialize -> tools/list answered, over stdio, against a bare low-level SDK server.

Desktop clients start the server at launch and per-project clients one per workspace, so this is the
first thing every user waits for. Each round spawns both servers once, interleaved (load spikes hit both
alike), with raw JSON-RPC lines on the pipes; the figure is the median over the rounds and the ratio of
the medians, with the range of the per-round ratios. Ours runs in a fresh empty state directory each
round, with a per-user cache directory of its own: the first round writes the cached tool definitions
(``server/_tool_cache.py``), as a server's first start ever does, and is also reported alone.

Both sides run from bytecode: the SDK's was compiled by pip at install, and ours is compiled here
first (``compileall``), as pip does for a regular install; an editable install under
PYTHONDONTWRITEBYTECODE=1 would otherwise compile our sources on every start (~0.1x of the ratio).

    .venv/bin/python bench/bench_cold_start.py [--rounds 9] [--json]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OURS = [str(Path(sys.executable).parent / "codomyrmex-orchestration"), "serve", "--transport", "stdio"]
BARE = [sys.executable, str(HERE / "_echo_server.py")]
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "bench", "version": "0"},
    },
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
LIST_TOOLS = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}


def _line(message: dict[str, Any]) -> bytes:
    return (json.dumps(message) + "\n").encode()


def spawn_to_tools(command: list[str], env: dict[str, str], cwd: str) -> float:
    """Seconds from spawning ``command`` to its tools/list answer (the process is killed after)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=cwd
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(_line(INITIALIZE))
        proc.stdin.flush()
        if b'"id":1' not in proc.stdout.readline().replace(b" ", b""):
            raise RuntimeError(f"{command[0]}: no initialize answer")
        proc.stdin.write(_line(INITIALIZED) + _line(LIST_TOOLS))
        proc.stdin.flush()
        answer = proc.stdout.readline()
        elapsed = time.perf_counter() - start
        if b'"tools"' not in answer:
            raise RuntimeError(f"{command[0]}: no tools/list answer: {answer[:200]!r}")
        return elapsed
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()


def run(rounds: int = 9) -> dict[str, Any]:
    import codomyrmex_orchestration

    compileall.compile_dir(Path(codomyrmex_orchestration.__file__).parent, quiet=1)
    ours: list[float] = []
    bare: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CODOMYRMEX_")}
        for round_no in range(rounds):
            state = Path(tmp) / f"r{round_no}"
            ours_env = {
                **env,
                "XDG_CACHE_HOME": str(Path(tmp) / "cache"),
                "CODOMYRMEX_STATE_DIR": str(state / "state"),
                "CODOMYRMEX_CONFIG_DIR": str(state / "config"),
                "CODOMYRMEX_PROJECTS_DIR": str(state / "projects"),
            }
            ours.append(spawn_to_tools(OURS, ours_env, tmp))
            bare.append(spawn_to_tools(BARE, env, tmp))
    ratios = sorted(o / b for o, b in zip(ours, bare, strict=True))
    ours_ms = statistics.median(ours) * 1000
    bare_ms = statistics.median(bare) * 1000
    return {
        "rounds": rounds,
        "ours_median_ms": round(ours_ms, 1),
        "bare_sdk_median_ms": round(bare_ms, 1),
        "ratio": round(ours_ms / bare_ms, 2),
        "round_ratio_range": [round(ratios[0], 2), round(ratios[-1], 2)],
        "first_start_ms": round(ours[0] * 1000, 1),
        "first_start_ratio": round(ours[0] / bare[0], 2),
        "load_average": round(os.getloadavg()[0], 2),
    }


def report(f: dict[str, Any]) -> str:
    return (
        "Cold start over stdio, spawn -> initialize -> tools/list "
        f"(median of {f['rounds']} interleaved rounds):\n"
        f"  ours {f['ours_median_ms']} ms, bare SDK server {f['bare_sdk_median_ms']} ms: {f['ratio']}x "
        f"(per-round {f['round_ratio_range'][0]}-{f['round_ratio_range'][1]}x)\n"
        f"  first start (no cached tool definitions yet): ours {f['first_start_ms']} ms, "
        f"{f['first_start_ratio']}x that round's bare server; load average {f['load_average']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    args = parser.parse_args()
    figures = run(args.rounds)
    print(json.dumps(figures) if args.json else report(figures))


if __name__ == "__main__":
    main()
